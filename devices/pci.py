"""PCI configuration mechanism #1 with the i440FX/PIIX3 functions of QEMU's ``pc``.

Theory of operation
-------------------
Configuration mechanism #1 (PCI Local Bus Specification 2.1, 3.7.4.1): a dword
written to port 0xCF8 selects enable (bit 31), bus (23:16), device (15:11),
function (10:8) and dword register (7:2); ports 0xCFC-0xCFF then read or write
that dword, any byte, word or dword inside it.  With the enable bit clear, or
for a function that does not exist, reads return all ones and writes vanish --
that is how firmware enumerates the bus.  Port 0xCF9 (reset control) sits in
the middle of the address register's dword but is a different register: it is
not claimed here (devices/misc.py owns it); only dword accesses reach 0xCF8.

Functions on bus 0, as in QEMU's ``-M pc``:

* 00:00.0 Intel 440FX host bridge (8086:1237, class 06/00/00).  Its DRAM and
  PAM registers 0x50-0x5F and SMRAM control 0x72 are stored; PAM changes are
  reported through ``on_pam`` so the machine can make 0xC0000-0xFFFFF shadow
  RAM writable or readable.
* 00:01.0 PIIX3 PCI-to-ISA bridge (8086:7000, class 06/01/00), header type
  0x80: a multi-function device, which tells firmware to probe 00:01.1.
  Its registers 0x40-0xFF are plain storage (PIRQ routing reads 0x80,
  disabled, after reset).
* 00:01.1 PIIX3 IDE (8086:7010, class 01/01/80: legacy-mode ports, bus-master
  capable).  The command register's I/O (bit 0) and bus-master (bit 2) bits
  are writable, BAR4 at 0x20 is a 16-byte I/O BAR (writing all ones reads back
  0xFFFFFFF1: the size probe), IDETIM/SIDETIM 0x40-0x44 ("IDE decode enable",
  bit 15 of each IDETIM, is stored; the legacy ports stay decoded either way,
  as firmware that never sets it expects), interrupt line 0x3C writable, pin
  0x3D zero (legacy IRQ 14/15).  A change of BAR4 or of those command bits
  reprograms the :class:`BusMasterIde` and calls ``on_remap`` so the machine
  re-registers its ports.

Not modelled: other buses, the PIIX3 USB and power-management functions,
memory-space decoding, PCI interrupts, bridge registers' side effects other
than PAM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .busmaster import BUSMASTER_PORTS, BusMasterIde

CONFIG_ADDRESS_PORT = 0xCF8
CONFIG_DATA_PORT = 0xCFC
CONFIG_DATA_PORTS = 4
CONFIG_ENABLE = 0x80000000
CONFIG_ADDRESS_MASK = 0x80FFFFFC
CONFIG_SPACE = 256
ALL_ONES = 0xFFFFFFFF

# Configuration header offsets.
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION = 0x08
CLASS_CODE = 0x09          # programming interface, subclass, class
HEADER_TYPE = 0x0E
BAR4 = 0x20
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D

COMMAND_IO = 0x0001
COMMAND_MEMORY = 0x0002
COMMAND_BUS_MASTER = 0x0004
STATUS_FAST_BACK_TO_BACK_DEVSEL_MEDIUM = 0x0280
HEADER_MULTIFUNCTION = 0x80
BAR_IO_SPACE = 0x01
BUSMASTER_BAR_MASK = ~(BUSMASTER_PORTS - 1) & ALL_ONES   # 0xFFFFFFF0
MAX_IO_PORT = 0xFFFF

HOST_BRIDGE_PAM = range(0x59, 0x60)
HOST_BRIDGE_SMRAM = 0x72
PIIX3_PIRQ_ROUTE = range(0x60, 0x64)
PIRQ_DISABLED = 0x80
PIIX3_IDETIM = range(0x40, 0x45)


@dataclass(frozen=True)
class PciAddress:
    bus: int
    device: int
    function: int


class PciFunction:
    """A 256-byte configuration space with a per-byte mask of writable bits."""

    def __init__(self, vendor: int, device: int, class_code: int, *, revision: int = 0,
                 header_type: int = 0) -> None:
        self.space = bytearray(CONFIG_SPACE)
        self.writable = bytearray(CONFIG_SPACE)
        self.put(VENDOR_ID, 2, vendor)
        self.put(DEVICE_ID, 2, device)
        self.put(REVISION, 1, revision)
        self.put(CLASS_CODE, 3, class_code)
        self.put(HEADER_TYPE, 1, header_type)
        self.allow(INTERRUPT_LINE, 1, 0xFF)
        self.on_write: Callable[[int, int], None] | None = None

    def put(self, offset: int, size: int, value: int) -> None:
        self.space[offset:offset + size] = value.to_bytes(size, "little")

    def get(self, offset: int, size: int) -> int:
        return int.from_bytes(self.space[offset:offset + size], "little")

    def allow(self, offset: int, size: int, mask: int) -> None:
        self.writable[offset:offset + size] = mask.to_bytes(size, "little")

    def read(self, offset: int, size: int) -> int:
        return self.get(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        for index in range(size):
            at = offset + index
            mask = self.writable[at]
            byte = value >> (8 * index) & 0xFF
            self.space[at] = (self.space[at] & ~mask) | (byte & mask)
        if self.on_write is not None:
            self.on_write(offset, size)


def _host_bridge() -> PciFunction:
    function = PciFunction(0x8086, 0x1237, 0x060000, revision=0x02)
    function.put(COMMAND, 2, COMMAND_MEMORY | COMMAND_BUS_MASTER)
    function.put(STATUS, 2, STATUS_FAST_BACK_TO_BACK_DEVSEL_MEDIUM)
    function.allow(0x50, 16, (1 << 128) - 1)      # PMCCFG, DRAM control/timing, PAM0-6
    function.allow(0x60, 8, (1 << 64) - 1)        # DRAM row boundaries
    function.allow(HOST_BRIDGE_SMRAM, 1, 0x78)    # SMRAM control (D_OPEN, D_CLS, D_LCK, G_SMRAME)
    function.put(HOST_BRIDGE_SMRAM, 1, 0x02)      # C_BASE_SEG: 0xA0000
    return function


def _isa_bridge() -> PciFunction:
    function = PciFunction(0x8086, 0x7000, 0x060100, header_type=HEADER_MULTIFUNCTION)
    function.put(COMMAND, 2, COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER)
    function.put(STATUS, 2, STATUS_FAST_BACK_TO_BACK_DEVSEL_MEDIUM)
    function.allow(0x40, CONFIG_SPACE - 0x40, (1 << (8 * (CONFIG_SPACE - 0x40))) - 1)
    for offset in PIIX3_PIRQ_ROUTE:
        function.put(offset, 1, PIRQ_DISABLED)
    return function


def _ide_function() -> PciFunction:
    function = PciFunction(0x8086, 0x7010, 0x010180)
    function.allow(COMMAND, 2, COMMAND_IO | COMMAND_BUS_MASTER)
    function.put(STATUS, 2, STATUS_FAST_BACK_TO_BACK_DEVSEL_MEDIUM)
    function.allow(0x0D, 1, 0xF0)                 # latency timer
    function.put(BAR4, 4, BAR_IO_SPACE)
    function.allow(BAR4, 4, BUSMASTER_BAR_MASK)
    function.allow(PIIX3_IDETIM.start, len(PIIX3_IDETIM), (1 << (8 * len(PIIX3_IDETIM))) - 1)
    return function


class PciHost:
    """Ports 0xCF8 (dword) and 0xCFC-0xCFF over bus 0's three functions."""

    def __init__(self, busmaster: BusMasterIde, on_remap: Callable[[], None], *,
                 on_pam: Callable[[], None] | None = None) -> None:
        self.busmaster = busmaster
        self.on_remap = on_remap
        self.on_pam = on_pam
        self.address = 0
        self.host_bridge = _host_bridge()
        self.isa_bridge = _isa_bridge()
        self.ide = _ide_function()
        self.functions: dict[PciAddress, PciFunction] = {
            PciAddress(0, 0, 0): self.host_bridge,
            PciAddress(0, 1, 0): self.isa_bridge,
            PciAddress(0, 1, 1): self.ide,
        }
        self.host_bridge.on_write = self._host_bridge_written
        self.ide.on_write = self._ide_written
        self._apply_ide(notify=False)

    def io_ports(self) -> list[tuple[int, int]]:
        return [(CONFIG_ADDRESS_PORT, 1), (CONFIG_DATA_PORT, CONFIG_DATA_PORTS)]

    @property
    def pam(self) -> bytes:
        """PAM0-PAM6 (host bridge 0x59-0x5F): shadow RAM read/write enables."""
        return bytes(self.host_bridge.space[HOST_BRIDGE_PAM.start:HOST_BRIDGE_PAM.stop])

    # --- ports --------------------------------------------------------------
    def _selected(self) -> tuple[PciFunction | None, int]:
        if not self.address & CONFIG_ENABLE:
            return None, 0
        where = PciAddress(self.address >> 16 & 0xFF, self.address >> 11 & 0x1F,
                           self.address >> 8 & 0x07)
        return self.functions.get(where), self.address & 0xFC

    def read(self, port: int, size: int) -> int:
        mask = (1 << (8 * size)) - 1
        if port == CONFIG_ADDRESS_PORT:
            return self.address if size == 4 else mask
        function, register = self._selected()
        if function is None:
            return mask
        offset = register + (port - CONFIG_DATA_PORT)
        size = min(size, CONFIG_SPACE - offset)
        return function.read(offset, size)

    def write(self, port: int, size: int, value: int) -> None:
        if port == CONFIG_ADDRESS_PORT:
            if size == 4:
                self.address = value & CONFIG_ADDRESS_MASK
            return
        function, register = self._selected()
        if function is None:
            return
        offset = register + (port - CONFIG_DATA_PORT)
        function.write(offset, min(size, CONFIG_SPACE - offset), value)

    # --- side effects -------------------------------------------------------
    def _host_bridge_written(self, offset: int, size: int) -> None:
        touched = range(offset, offset + size)
        if self.on_pam is not None and any(at in HOST_BRIDGE_PAM for at in touched):
            self.on_pam()

    def _ide_written(self, offset: int, size: int) -> None:
        touched = set(range(offset, offset + size))
        if touched & {COMMAND, COMMAND + 1, BAR4, BAR4 + 1, BAR4 + 2, BAR4 + 3}:
            self._apply_ide(notify=True)

    def _apply_ide(self, *, notify: bool) -> None:
        command = self.ide.get(COMMAND, 2)
        bar = self.ide.get(BAR4, 4) & BUSMASTER_BAR_MASK
        base = bar if command & COMMAND_IO and 0 < bar <= MAX_IO_PORT else None
        enabled = bool(command & COMMAND_BUS_MASTER)
        changed = (base != self.busmaster.base
                   or enabled != self.busmaster.bus_master_enabled)
        self.busmaster.base = base
        if enabled != self.busmaster.bus_master_enabled:
            self.busmaster.set_bus_master_enabled(enabled)
        if changed and notify:
            self.on_remap()

    def reset(self) -> None:
        """Machine reset: configuration back to power-on values, BAR unmapped."""
        self.address = 0
        for where, function in ((PciAddress(0, 0, 0), _host_bridge()),
                                (PciAddress(0, 1, 0), _isa_bridge()),
                                (PciAddress(0, 1, 1), _ide_function())):
            target = self.functions[where]
            target.space[:] = function.space
        self.busmaster.reset()
        self._apply_ide(notify=True)
        if self.on_pam is not None:
            self.on_pam()
