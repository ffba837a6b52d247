"""The APIC interrupt message and the bus that routes it between APICs.

Theory of operation
-------------------
On a P6/Pentium 4 class PC the I/O APIC and the processors' local APICs talk
through interrupt *messages* (the 3-wire APIC bus of the 82093AA, later the
system bus; Intel SDM vol. 3A section 10.6 / 11.6 in newer editions, "Issuing
Interprocessor Interrupts", and 10.12 for message formats).  A message carries
a vector, a delivery mode (fixed, lowest priority, SMI, NMI, INIT, start-up,
ExtINT), a destination and destination mode (physical APIC ID, or a logical
mask matched against each local APIC's LDR/DFR), and a trigger mode (level
triggered interrupts need an EOI message back to the I/O APIC).

:class:`ApicBus` is that fabric as a plain object: the I/O APIC (and a local
APIC's ICR) hand it an :class:`InterruptMessage`; it offers the message to
every local APIC whose destination matches (for lowest-priority delivery, to
the matching one with the lowest task priority, SDM 10.6.2.4), and it carries
a local APIC's EOI for a level-triggered vector back to every I/O APIC
(the "EOI broadcast", SDM 10.8.5).  Arbitration and bus timing are not
modelled: a message arrives at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol


class DeliveryMode(IntEnum):
    """Bits 10:8 of a redirection entry (82093AA 3.2.4), LVT entry or ICR (SDM fig. 10-8, 10-12)."""

    FIXED = 0b000
    LOWEST_PRIORITY = 0b001
    SMI = 0b010
    NMI = 0b100
    INIT = 0b101
    STARTUP = 0b110
    EXTINT = 0b111


DELIVERY_MODES = frozenset(int(mode) for mode in DeliveryMode)  # 011 is reserved
PHYSICAL_BROADCAST = 0xFF  # xAPIC physical destination meaning "every local APIC"


@dataclass(frozen=True)
class InterruptMessage:
    """One interrupt message on the APIC bus."""

    vector: int
    delivery_mode: DeliveryMode = DeliveryMode.FIXED
    destination: int = 0
    logical: bool = False          # destination mode: False physical, True logical
    level_triggered: bool = False  # trigger mode; level asks for an EOI broadcast


class MessageTarget(Protocol):
    """What the bus needs from a local APIC."""

    def matches(self, destination: int, logical: bool) -> bool: ...

    def arbitration_priority(self) -> int: ...

    def accept(self, message: InterruptMessage) -> None: ...


class EoiListener(Protocol):
    """What the bus needs from an I/O APIC."""

    def end_of_interrupt(self, vector: int) -> None: ...


class ApicBus:
    """Routes interrupt messages to local APICs and EOIs back to I/O APICs."""

    def __init__(self) -> None:
        self.local_apics: list[MessageTarget] = []
        self.io_apics: list[EoiListener] = []

    def attach_local(self, lapic: MessageTarget) -> None:
        self.local_apics.append(lapic)

    def attach_io(self, ioapic: EoiListener) -> None:
        self.io_apics.append(ioapic)

    def targets(self, message: InterruptMessage) -> list[MessageTarget]:
        matching = [lapic for lapic in self.local_apics
                    if lapic.matches(message.destination, message.logical)]
        if message.delivery_mode == DeliveryMode.LOWEST_PRIORITY and matching:
            return [min(matching, key=lambda lapic: lapic.arbitration_priority())]
        return matching

    def deliver(self, message: InterruptMessage) -> int:
        """Hand ``message`` to its destinations; returns how many accepted it."""
        targets = self.targets(message)
        for lapic in targets:
            lapic.accept(message)
        return len(targets)

    def broadcast_eoi(self, vector: int) -> None:
        for ioapic in self.io_apics:
            ioapic.end_of_interrupt(vector)
