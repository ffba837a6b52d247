"""The Intel 82093AA I/O APIC: 24 interrupt pins turned into APIC bus messages.

Theory of operation
-------------------
(82093AA datasheet, sections 3.0-3.2.)  The chip sits at physical address
0xFEC00000 and exposes two memory-mapped registers: IOREGSEL (offset 0x00, an
8-bit index) and IOWIN (offset 0x10, the 32-bit register the index selects).
Behind the window are IOAPICID (0x00, ID in bits 27:24), IOAPICVER (0x01,
version 0x11 and the highest redirection entry, 23, in bits 23:16), IOAPICARB
(0x02, arbitration ID, read-only) and the redirection table: entry *n* is the
64-bit register at indices 0x10 + 2n (low dword) and 0x11 + 2n (high dword).

A redirection entry (3.2.4) holds the vector (7:0), delivery mode (10:8),
destination mode (11), delivery status (12, read-only), pin polarity (13),
remote IRR (14, read-only), trigger mode (15: 1 = level), mask (16) and the
destination (63:56).  At reset every entry is masked.

Each pin is fed a logical level (asserted or not) through :meth:`IoApic.set_irq`
or an :class:`IoApicPin` line; the polarity bit is stored for software but
the model takes the input as already active-high, as QEMU does.

* Edge-triggered pin: an assertion edge sends one message.  An edge that
  arrives while the pin is masked is held and sent when it is unmasked
  (QEMU's behaviour; the datasheet leaves it undefined).
* Level-triggered pin: while the pin is asserted, unmasked and remote IRR is
  clear, one message is sent and remote IRR is set.  The local APIC's EOI for
  that vector comes back over the bus (:meth:`IoApic.end_of_interrupt`),
  clears remote IRR and, if the line is still asserted, sends again.

Messages go to an :class:`~devices.apicbus.ApicBus`; delivery is immediate, so
delivery status only reads 1 for a held (masked, pending) edge.  The MMIO
window is offered as offsets (:meth:`read`/:meth:`write`) relative to
:data:`IOAPIC_BASE`; the machine maps the page.  Not modelled: the 82093AA's
APIC-bus arbitration, the PCI-style EOI register of later versions (0x20).
"""

from __future__ import annotations

from .apicbus import DELIVERY_MODES, ApicBus, DeliveryMode, InterruptMessage

IOAPIC_BASE = 0xFEC00000
IOAPIC_MMIO_SIZE = 0x1000
IOREGSEL = 0x00
IOWIN = 0x10

PINS = 24
VERSION = 0x11

REG_ID = 0x00
REG_VERSION = 0x01
REG_ARBITRATION = 0x02
REG_REDIRECTION = 0x10

# Redirection entry fields (datasheet 3.2.4).
VECTOR_MASK = 0xFF
DELIVERY_MODE_SHIFT = 8
DEST_LOGICAL = 1 << 11
DELIVERY_STATUS = 1 << 12
POLARITY_LOW = 1 << 13
REMOTE_IRR = 1 << 14
TRIGGER_LEVEL = 1 << 15
MASKED = 1 << 16
DESTINATION_SHIFT = 56
READ_ONLY_BITS = DELIVERY_STATUS | REMOTE_IRR
WRITABLE_BITS = (0xFF << DESTINATION_SHIFT) | (0x1FFFF & ~READ_ONLY_BITS)
ID_MASK = 0x0F << 24


class IoApicPin:
    """One input pin as an :class:`~devices.interfaces.IrqLine`."""

    def __init__(self, ioapic: IoApic, pin: int) -> None:
        self.ioapic = ioapic
        self.pin = pin

    def set(self, level: bool) -> None:
        self.ioapic.set_irq(self.pin, level)


class IoApic:
    """An 82093AA with its MMIO window at offsets 0x00 (IOREGSEL) and 0x10 (IOWIN)."""

    def __init__(self, bus: ApicBus, apic_id: int = 0) -> None:
        self.bus = bus
        self.reset_id = apic_id
        bus.attach_io(self)
        self.reset()

    def reset(self) -> None:
        self.id = self.reset_id
        self.select = 0
        self.entries = [MASKED] * PINS
        self.levels = [False] * PINS
        self.held_edges = [False] * PINS

    def mmio_range(self) -> tuple[int, int]:
        return IOAPIC_BASE, IOAPIC_MMIO_SIZE

    def pin(self, pin: int) -> IoApicPin:
        return IoApicPin(self, pin)

    # --- MMIO window --------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        register = offset & ~3
        if register == IOREGSEL:
            value = self.select
        elif register == IOWIN:
            value = self.read_register(self.select)
        else:
            return 0
        return (value >> 8 * (offset & 3)) & ((1 << 8 * size) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == IOREGSEL:
            self.select = value & 0xFF
        elif offset == IOWIN:
            self.write_register(self.select, value & 0xFFFFFFFF)

    def read_register(self, index: int) -> int:
        if index == REG_ID:
            return self.id << 24
        if index == REG_VERSION:
            return (PINS - 1) << 16 | VERSION
        if index == REG_ARBITRATION:
            return self.id << 24
        entry = self._entry_index(index)
        if entry is None:
            return 0
        value = self.entries[entry] | (DELIVERY_STATUS if self.held_edges[entry] else 0)
        return (value >> 32 if index & 1 else value) & 0xFFFFFFFF

    def write_register(self, index: int, value: int) -> None:
        if index == REG_ID:
            self.id = (value & ID_MASK) >> 24
            return
        pin = self._entry_index(index)
        if pin is None:
            return  # version and arbitration are read-only; others do not exist
        old = self.entries[pin]
        shift = 32 if index & 1 else 0
        merged = (old & ~(0xFFFFFFFF << shift)) | (value << shift)
        self.entries[pin] = (merged & WRITABLE_BITS) | (old & READ_ONLY_BITS)
        if not self.entries[pin] & TRIGGER_LEVEL:
            self.entries[pin] &= ~REMOTE_IRR  # remote IRR is undefined for edge pins
        self._service(pin)

    @staticmethod
    def _entry_index(index: int) -> int | None:
        pin = (index - REG_REDIRECTION) >> 1
        return pin if index >= REG_REDIRECTION and pin < PINS else None

    # --- inputs and the APIC bus -------------------------------------------
    def set_irq(self, pin: int, level: bool) -> None:
        rising = level and not self.levels[pin]
        self.levels[pin] = level
        if rising and not self.entries[pin] & TRIGGER_LEVEL:
            self.held_edges[pin] = True
        self._service(pin)

    def end_of_interrupt(self, vector: int) -> None:
        """An EOI for ``vector`` came back from a local APIC (SDM 10.8.5)."""
        for pin, entry in enumerate(self.entries):
            if entry & REMOTE_IRR and entry & VECTOR_MASK == vector:
                self.entries[pin] = entry & ~REMOTE_IRR
                self._service(pin)

    def _service(self, pin: int) -> None:
        entry = self.entries[pin]
        if entry & MASKED or (entry >> DELIVERY_MODE_SHIFT) & 7 not in DELIVERY_MODES:
            return  # reserved delivery modes (011) send nothing
        if entry & TRIGGER_LEVEL:
            if not self.levels[pin] or entry & REMOTE_IRR:
                return
            self.entries[pin] = entry | REMOTE_IRR
        elif self.held_edges[pin]:
            self.held_edges[pin] = False
        else:
            return
        self.bus.deliver(self.message(pin))

    def message(self, pin: int) -> InterruptMessage:
        entry = self.entries[pin]
        return InterruptMessage(
            vector=entry & VECTOR_MASK,
            delivery_mode=DeliveryMode((entry >> DELIVERY_MODE_SHIFT) & 7),
            destination=entry >> DESTINATION_SHIFT,
            logical=bool(entry & DEST_LOGICAL),
            level_triggered=bool(entry & TRIGGER_LEVEL),
        )
