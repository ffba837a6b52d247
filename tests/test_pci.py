"""PCI configuration mechanism #1 and the i440FX / PIIX3 functions, as firmware probes them."""

from __future__ import annotations

import pytest

from devices.busmaster import BusMasterIde
from devices.interfaces import BytearrayMemory
from devices.pci import PciHost

ADDRESS, DATA = 0xCF8, 0xCFC


class Firmware:
    """What a BIOS does with mechanism #1: select a dword, then access its bytes."""

    def __init__(self) -> None:
        self.busmaster = BusMasterIde([], BytearrayMemory(16))
        self.remaps: list[int | None] = []
        self.pam_changes = 0
        self.pci = PciHost(self.busmaster, lambda: self.remaps.append(self.busmaster.base),
                           on_pam=self._pam)

    def _pam(self) -> None:
        self.pam_changes += 1

    def select(self, device: int, function: int, offset: int, *, bus: int = 0) -> None:
        self.pci.write(ADDRESS, 4, 0x80000000 | bus << 16 | device << 11 | function << 8
                       | (offset & 0xFC))

    def read(self, device: int, function: int, offset: int, size: int, *, bus: int = 0) -> int:
        self.select(device, function, offset, bus=bus)
        return self.pci.read(DATA + (offset & 3), size)

    def write(self, device: int, function: int, offset: int, size: int, value: int) -> None:
        self.select(device, function, offset)
        self.pci.write(DATA + (offset & 3), size, value)


@pytest.fixture
def fw() -> Firmware:
    return Firmware()


def test_ports_leave_0xcf9_alone(fw: Firmware) -> None:
    assert fw.pci.io_ports() == [(0xCF8, 1), (0xCFC, 4)]


def test_address_register_reads_back(fw: Firmware) -> None:
    fw.pci.write(ADDRESS, 4, 0x80000A13)
    assert fw.pci.read(ADDRESS, 4) == 0x80000A10
    fw.pci.write(ADDRESS, 1, 0x00)                         # byte writes are not the register
    assert fw.pci.read(ADDRESS, 4) == 0x80000A10


@pytest.mark.parametrize(("device", "function", "ids", "class_code", "header"), [
    (0, 0, 0x12378086, 0x060000, 0x00),
    (1, 0, 0x70008086, 0x060100, 0x80),
    (1, 1, 0x70108086, 0x010180, 0x00),
])
def test_identity_of_each_function(fw: Firmware, device: int, function: int, ids: int,
                                   class_code: int, header: int) -> None:
    assert fw.read(device, function, 0x00, 4) == ids
    assert fw.read(device, function, 0x08, 4) >> 8 == class_code
    assert fw.read(device, function, 0x0E, 1) == header


def test_reads_of_any_size_inside_the_dword(fw: Firmware) -> None:
    assert fw.read(1, 1, 0x00, 2) == 0x8086
    assert fw.read(1, 1, 0x02, 2) == 0x7010
    assert fw.read(1, 1, 0x03, 1) == 0x70
    assert fw.read(1, 1, 0x09, 1) == 0x80                  # programming interface
    assert fw.read(1, 1, 0x0A, 2) == 0x0101


@pytest.mark.parametrize(("bus", "device", "function"), [(0, 1, 2), (0, 2, 0), (0, 0, 1),
                                                         (1, 0, 0), (0, 31, 7)])
def test_absent_functions_read_all_ones_and_ignore_writes(fw: Firmware, bus: int, device: int,
                                                           function: int) -> None:
    assert fw.read(device, function, 0, 4, bus=bus) == 0xFFFFFFFF
    assert fw.read(device, function, 2, 2, bus=bus) == 0xFFFF
    fw.select(device, function, 0x20, bus=bus)
    fw.pci.write(DATA, 4, 0x1234)
    assert fw.read(device, function, 0x20, 4, bus=bus) == 0xFFFFFFFF


def test_disabled_configuration_cycles_read_all_ones(fw: Firmware) -> None:
    fw.pci.write(ADDRESS, 4, 0x00000800)                   # enable bit clear
    assert fw.pci.read(DATA, 4) == 0xFFFFFFFF


def test_bar4_size_probe_and_programming(fw: Firmware) -> None:
    assert fw.read(1, 1, 0x20, 4) == 0x00000001           # I/O BAR, unassigned
    fw.write(1, 1, 0x20, 4, 0xFFFFFFFF)
    assert fw.read(1, 1, 0x20, 4) == 0xFFFFFFF1           # 16 bytes of I/O space
    fw.write(1, 1, 0x20, 4, 0xC001)
    assert fw.read(1, 1, 0x20, 4) == 0xC001
    assert fw.busmaster.base is None                       # I/O decoding still off
    assert fw.remaps == []
    fw.write(1, 1, 0x04, 2, 0x0005)                        # I/O space + bus master
    assert fw.read(1, 1, 0x04, 2) == 0x0005
    assert fw.busmaster.base == 0xC000 and fw.busmaster.bus_master_enabled
    assert fw.remaps == [0xC000]
    assert fw.busmaster.io_ports() == [(0xC000, 16)]
    fw.write(1, 1, 0x20, 2, 0xD000)                        # move it
    assert fw.remaps == [0xC000, 0xD000]
    fw.write(1, 1, 0x04, 2, 0x0000)
    assert fw.busmaster.base is None and not fw.busmaster.bus_master_enabled
    assert fw.remaps[-1] is None


def test_command_register_keeps_only_implemented_bits(fw: Firmware) -> None:
    fw.write(1, 1, 0x04, 2, 0xFFFF)
    assert fw.read(1, 1, 0x04, 2) == 0x0005
    assert fw.read(1, 1, 0x06, 2) == 0x0280               # status is read-only


def test_read_only_identity_registers(fw: Firmware) -> None:
    fw.write(1, 1, 0x00, 4, 0)
    fw.write(1, 1, 0x08, 4, 0)
    assert fw.read(1, 1, 0x00, 4) == 0x70108086
    assert fw.read(1, 1, 0x08, 4) >> 8 == 0x010180


def test_idetim_and_interrupt_registers(fw: Firmware) -> None:
    assert fw.read(1, 1, 0x40, 4) == 0
    fw.write(1, 1, 0x40, 2, 0x8000)                        # IDE decode enable, primary
    fw.write(1, 1, 0x42, 2, 0x8000)                        # and secondary (as SeaBIOS does)
    assert fw.read(1, 1, 0x40, 4) == 0x80008000
    fw.write(1, 1, 0x3C, 1, 14)
    assert fw.read(1, 1, 0x3C, 2) == 0x000E                # line 14, pin 0 (legacy IRQs)


def test_isa_bridge_pirq_routing_defaults_disabled(fw: Firmware) -> None:
    assert fw.read(1, 0, 0x60, 4) == 0x80808080
    fw.write(1, 0, 0x61, 1, 0x0B)
    assert fw.read(1, 0, 0x60, 4) == 0x80800B80


def test_pam_registers_reach_the_machine(fw: Firmware) -> None:
    assert fw.pci.pam == bytes(7)
    fw.write(0, 0, 0x59, 1, 0x30)                          # 0xF0000 segment: read/write RAM
    assert fw.pam_changes == 1
    assert fw.pci.pam[0] == 0x30
    fw.write(0, 0, 0x5A, 4, 0x33333333)
    assert fw.pci.pam == bytes([0x30, 0x33, 0x33, 0x33, 0x33, 0, 0])
    fw.write(0, 0, 0x50, 1, 0x00)                          # not PAM: no notification
    assert fw.pam_changes == 2


def test_reset_restores_power_on_state(fw: Firmware) -> None:
    fw.write(1, 1, 0x20, 4, 0xC001)
    fw.write(1, 1, 0x04, 2, 0x0005)
    fw.write(0, 0, 0x59, 1, 0x30)
    fw.pci.reset()
    assert fw.read(1, 1, 0x20, 4) == 1 and fw.read(1, 1, 0x04, 2) == 0
    assert fw.busmaster.base is None and fw.pci.pam == bytes(7)
