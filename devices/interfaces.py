"""The small interfaces a device model is handed, and the one it offers.

Devices are sans-IO state machines (the h11 style): the machine calls
``read(port, size)`` / ``write(port, size, value)``; a device reaches the rest of
the PC only through objects passed in at construction -- an :class:`IrqLine` to
raise, :class:`GuestMemory` for bus-master DMA, a :class:`Clock` for time.
Nothing here imports Unicorn, so each device is driven in tests by plain calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable


class IrqLine(Protocol):
    """One interrupt request line into the interrupt controller (level semantics)."""

    def set(self, level: bool) -> None: ...


class GuestMemory(Protocol):
    """Physical guest memory as a DMA engine sees it."""

    def read(self, address: int, length: int) -> bytes: ...

    def write(self, address: int, data: bytes | bytearray | memoryview) -> None: ...


class Clock(Protocol):
    """The machine's deterministic virtual clock."""

    def now_ns(self) -> int: ...


class Timer(Protocol):
    """A device with deadlines on the clock (PIT, RTC, a busy IDE channel)."""

    def update(self) -> None:
        """Raise whatever interrupts the clock's current time makes due."""

    def next_deadline_ns(self) -> int | None:
        """The next time something falls due (a halted CPU sleeps until then)."""


@runtime_checkable
class PortDevice(Protocol):
    """A device on the I/O port bus."""

    def io_ports(self) -> Iterable[tuple[int, int]]:
        """(first port, count) ranges this device answers."""
        ...

    def read(self, port: int, size: int) -> int: ...

    def write(self, port: int, size: int, value: int) -> None: ...


@runtime_checkable
class StringPortDevice(PortDevice, Protocol):
    """A device that can move a whole ``rep ins``/``rep outs`` burst in one call.

    The machine calls these for string I/O instead of one ``read``/``write`` per
    item; the device moves at most ``count`` items of ``size`` bytes and may stop
    early (end of a DRQ block), returning what it moved.  The guest-visible effect
    must equal ``count`` single calls.
    """

    def read_string(self, port: int, size: int, count: int) -> bytes: ...

    def write_string(self, port: int, size: int, data: bytes | memoryview) -> int:
        """Consume items from ``data``; returns how many items were taken."""
        ...


class NullIrq:
    """An IRQ line connected to nothing (for unit tests and unwired devices)."""

    def __init__(self) -> None:
        self.level = False
        self.raised = 0

    def set(self, level: bool) -> None:
        if level and not self.level:
            self.raised += 1
        self.level = level


class BytearrayMemory:
    """Guest memory backed by a bytearray (for unit tests)."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)

    def read(self, address: int, length: int) -> bytes:
        return bytes(self.data[address:address + length])

    def write(self, address: int, data: bytes | bytearray | memoryview) -> None:
        self.data[address:address + len(data)] = data
