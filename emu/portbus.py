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
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from devices.interfaces import PortDevice

RECENT_ACCESSES = 12
MASKS = (0, 0xFF, 0xFFFF, 0xFF_FFFF, 0xFFFF_FFFF)   # by access size in bytes
Tracer = Callable[[str, int, int, int], None]


class PortConflictError(Exception):
    pass


class PortBus:
    def __init__(self) -> None:
        self.devices: dict[int, PortDevice] = {}
        self.byte_overlays: dict[int, PortDevice] = {}
        # Byte accesses' owners: ``devices`` with the overlays on top (rebuilt on change).
        self.byte_owners: dict[int, PortDevice] = {}
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

    def owner(self, port: int, size: int) -> PortDevice | None:
        if size == 1 and port in self.byte_overlays:
            return self.byte_overlays[port]
        return self.devices.get(port)

    def read(self, port: int, size: int) -> int:
        device = (self.byte_owners if size == 1 else self.devices).get(port)
        value = MASKS[size] if device is None else device.read(port, size) & MASKS[size]
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
        device = (self.byte_owners if size == 1 else self.devices).get(port)
        if device is not None:
            device.write(port, size, value)
