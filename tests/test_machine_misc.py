"""Small ports as plain state machines: debug exit/console, 0x92, 0xCF9, the 8042."""

from __future__ import annotations

from devices.interfaces import NullIrq
from devices.misc import (
    DebugConsole,
    DebugExit,
    Kbc8042,
    ResetControl,
    SystemControlPortA,
)


def test_debug_exit_reports_the_value() -> None:
    seen: list[int] = []
    device = DebugExit(seen.append)
    device.write(0xF4, 1, 3)
    assert seen == [3] and device.value == 3


def test_debug_console_transcript_and_readback() -> None:
    sink = bytearray()
    console = DebugConsole(sink.extend)
    for byte in b"ok\n":
        console.write(0x402, 1, byte)
    assert console.transcript == b"ok\n" == sink
    assert console.read(0xE9, 1) == 0xE9


def test_port_92_a20_and_fast_reset() -> None:
    resets: list[str] = []
    a20: list[bool] = []
    port = SystemControlPortA(resets.append, a20.append)
    port.write(0x92, 1, 0x00)
    assert a20 == [False] and port.read(0x92, 1) == 0
    port.write(0x92, 1, 0x03)
    assert a20 == [False, True] and resets and port.read(0x92, 1) == 0x02


def test_reset_control_needs_the_reset_bit() -> None:
    resets: list[str] = []
    rcr = ResetControl(resets.append)
    rcr.write(0xCF9, 1, 0x02)
    assert not resets
    rcr.write(0xCF9, 1, 0x06)
    assert resets == ["port 0xCF9 hard reset"]


def kbc() -> tuple[Kbc8042, list[str], NullIrq]:
    resets: list[str] = []
    irq = NullIrq()
    return Kbc8042(resets.append, irq1=irq), resets, irq


def test_8042_self_test_and_command_byte() -> None:
    controller, _, _ = kbc()
    controller.write(0x64, 1, 0xAA)
    assert controller.read(0x64, 1) & 0x01
    assert controller.read(0x60, 1) == 0x55
    assert not controller.read(0x64, 1) & 0x01
    controller.write(0x64, 1, 0x60)
    controller.write(0x60, 1, 0x00)
    controller.write(0x64, 1, 0x20)
    assert controller.read(0x60, 1) == 0x00


def test_8042_keyboard_reset_and_identify() -> None:
    controller, _, irq = kbc()
    controller.write(0x60, 1, 0xFF)
    assert irq.level  # the command byte enables IRQ 1 by default
    assert [controller.read(0x60, 1) for _ in range(2)] == [0xFA, 0xAA]
    assert not irq.level
    controller.write(0x60, 1, 0xF2)
    assert [controller.read(0x60, 1) for _ in range(3)] == [0xFA, 0xAB, 0x83]
    controller.write(0x60, 1, 0xED)   # set LEDs: ACK, then the argument is ACKed
    controller.write(0x60, 1, 0x02)
    assert [controller.read(0x60, 1) for _ in range(2)] == [0xFA, 0xFA]
    assert controller.read(0x60, 1) == 0xFA  # empty: the output register keeps its byte


def test_8042_reset_and_a20_through_the_output_port() -> None:
    controller, resets, _ = kbc()
    controller.write(0x64, 1, 0xD1)
    controller.write(0x60, 1, 0xDD)   # A20 off, reset line high
    assert not resets
    controller.write(0x64, 1, 0xD0)
    assert controller.read(0x60, 1) == 0xDD
    controller.write(0x64, 1, 0xFE)   # pulse reset
    assert resets == ["8042 pulse reset"]


class Latch:
    def __init__(self, ports: list[tuple[int, int]]) -> None:
        self.ports = ports
        self.value = 0

    def io_ports(self) -> list[tuple[int, int]]:
        return self.ports

    def read(self, port: int, size: int) -> int:
        return self.value

    def write(self, port: int, size: int, value: int) -> None:
        self.value = value


def test_port_bus_dispatch_overlay_conflicts_and_remap() -> None:
    import pytest

    from emu.portbus import PortBus, PortConflictError

    bus = PortBus()
    wide, byte = Latch([(0xCF8, 1)]), Latch([(0xCF9, 1)])
    bus.attach(wide)
    bus.attach_byte_overlay(byte)
    assert bus.read(0x1234, 2) == 0xFFFF               # nobody there: floating bus
    bus.write(0xCF8, 4, 0x8000_0000)
    bus.write(0xCF9, 1, 0x06)
    assert wide.value == 0x8000_0000 and byte.value == 0x06
    assert bus.read(0xCF8, 4) == 0x8000_0000
    with pytest.raises(PortConflictError):
        bus.attach(Latch([(0xCF8, 4)]))
    movable = Latch([(0xC000, 16)])
    bus.attach(movable)
    movable.ports = [(0xCF0, 16)]                      # the guest moves it over 0xCF8
    bus.remap(movable)
    assert bus.owner(0xCF8, 4) is wide and bus.owner(0xCF0, 1) is movable
    assert bus.owner(0xC000, 1) is None
    assert bus.recent[-1][:2] == ("in", 0xCF8)
