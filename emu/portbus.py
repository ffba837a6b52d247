"""The I/O port bus: 64 Ki ports, each owned by at most one device.

Ports are dispatched by a dict from port number to device; an access of 2 or
4 bytes goes to the device owning its first port (as on ISA/PCI, where a wide
cycle is claimed by one decoder).  Unclaimed ports read as all ones and ignore
writes, like a PC's floating bus.  ``byte_overlays`` hold devices that claim a
port for 1-byte accesses only, in front of a wider owner (the PIIX reset
control register at 0xCF9 inside the PCI host's 0xCF8-0xCFF).
:meth:`PortBus.remap` re-reads a device's ranges, for devices whose I/O base is
programmed by the guest (the PCI bus-master IDE BAR).

Every access is counted and the last few are kept for the stop report; a
tracer, when set, sees every access (``--trace``).

For speed the bus keeps, per port, the function that serves it: a device that
has ``port_handlers()`` (per-port read/write functions with the bus's own
signatures) is called through those, any other through its ``read``/``write``;
byte accesses have their own tables with the overlays on top.  The tables are
rebuilt whenever ownership changes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from devices.interfaces import PortDevice

RECENT_ACCESSES = 12
MASKS = (0, 0xFF, 0xFFFF, 0xFF_FFFF, 0xFFFF_FFFF)   # by access size in bytes
Tracer = Callable[[str, int, int, int], None]
Reader = Callable[[int, int], int]
Writer = Callable[[int, int, int], None]


class PortConflictError(Exception):
    pass


class PortBus:
    def __init__(self) -> None:
        self.devices: dict[int, PortDevice] = {}
        self.byte_overlays: dict[int, PortDevice] = {}
        # Byte accesses' owners: ``devices`` with the overlays on top (rebuilt on change).
        self.byte_owners: dict[int, PortDevice] = {}
        # The function serving each port: byte accesses, and 2/4-byte ones.
        self.byte_readers: dict[int, Reader] = {}
        self.byte_writers: dict[int, Writer] = {}
        self.wide_readers: dict[int, Reader] = {}
        self.wide_writers: dict[int, Writer] = {}
        self.recent: deque[tuple[str, int, int, int]] = deque(maxlen=RECENT_ACCESSES)
        self.accesses = 0
        self.tracer: Tracer | None = None

    def attach(self, device: PortDevice) -> None:
        for first, count in device.io_ports():
            for port in range(first, first + count):
                owner = self.devices.get(port)
                if owner is not None and owner is not device:
                    raise PortConflictError(
                        f"port {port:#x}: {type(device).__name__} collides with "
                        f"{type(owner).__name__}")
                self.devices[port] = device
        self._rebuild()

    def attach_byte_overlay(self, device: PortDevice) -> None:
        for first, count in device.io_ports():
            for port in range(first, first + count):
                self.byte_overlays[port] = device
        self._rebuild()

    def intercept(self, port: int, device: PortDevice) -> None:
        """Put ``device`` in front of ``port`` for accesses of every size (a test's hook,
        emu.machine.Machine.hook_port); it sees the previous owner itself."""
        self.devices[port] = device
        self.byte_overlays[port] = device
        self._rebuild()

    def detach(self, device: PortDevice) -> None:
        for port in [port for port, owner in self.devices.items() if owner is device]:
            del self.devices[port]
        self._rebuild()

    def remap(self, device: PortDevice) -> None:
        """Re-read a guest-programmed device's ranges; ports another device already
        owns stay with it (a BAR placed over legacy ports must not take them over)."""
        self.detach(device)
        for first, count in device.io_ports():
            for port in range(first, first + count):
                self.devices.setdefault(port, device)
        self._rebuild()

    def _rebuild(self) -> None:
        self.byte_owners = {**self.devices, **self.byte_overlays}
        self.wide_readers, self.wide_writers = self._handlers(self.devices)
        self.byte_readers, self.byte_writers = self._handlers(self.byte_owners)

    @staticmethod
    def _handlers(owners: dict[int, PortDevice]) -> tuple[dict[int, Reader],
                                                          dict[int, Writer]]:
        readers: dict[int, Reader] = {}
        writers: dict[int, Writer] = {}
        tables: dict[int, Any] = {}
        for port, device in owners.items():
            key = id(device)
            if key not in tables:
                offer = getattr(device, "port_handlers", None)
                tables[key] = offer() if offer is not None else ({}, {})
            port_reads, port_writes = tables[key]
            readers[port] = port_reads.get(port, device.read)
            writers[port] = port_writes.get(port, device.write)
        return readers, writers

    def owner(self, port: int, size: int) -> PortDevice | None:
        if size == 1 and port in self.byte_overlays:
            return self.byte_overlays[port]
        return self.devices.get(port)

    def read(self, port: int, size: int) -> int:
        reader = (self.byte_readers if size == 1 else self.wide_readers).get(port)
        value = MASKS[size] if reader is None else reader(port, size) & MASKS[size]
        self.accesses += 1
        self.recent.append(("in", port, size, value))
        if self.tracer is not None:
            self.tracer("in", port, size, value)
        return value

    def write(self, port: int, size: int, value: int) -> None:
        value &= MASKS[size]
        self.accesses += 1
        self.recent.append(("out", port, size, value))
        if self.tracer is not None:
            self.tracer("out", port, size, value)
        writer = (self.byte_writers if size == 1 else self.wide_writers).get(port)
        if writer is not None:
            writer(port, size, value)
