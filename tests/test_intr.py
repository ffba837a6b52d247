"""PIT and IDE interrupts through the 8259 pair or the I/O APIC, as a PC wires them."""

from __future__ import annotations

import pytest

from devices.apicbus import ApicBus
from devices.intr import InterruptRouter
from devices.ioapic import IOREGSEL, IOWIN, IoApic
from devices.lapic import REG_EOI, REG_LVT_LINT0, REG_SVR, LocalApic
from devices.pic import PicPair
from devices.pit import Pit, ticks_to_ns


class FakeClock:
    def __init__(self) -> None:
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns


def board() -> tuple[InterruptRouter, FakeClock, Pit]:
    clock = FakeClock()
    bus = ApicBus()
    pic, lapic = PicPair(), LocalApic(clock, bus)
    router = InterruptRouter(pic, IoApic(bus), lapic)
    for command, data, base, cascade in ((0x20, 0x21, 0x08, 0x04), (0xA0, 0xA1, 0x70, 0x02)):
        for port, value in ((command, 0x11), (data, base), (data, cascade), (data, 0x01)):
            pic.write(port, 1, value)
    pit = Pit(clock, router.isa_line(0))
    pit.write(0x43, 1, 0x34)               # channel 0, lo/hi, rate generator
    pit.write(0x40, 1, 100)
    pit.write(0x40, 1, 0)
    return router, clock, pit


def tick(clock: FakeClock, pit: Pit) -> None:
    clock.ns += ticks_to_ns(100)
    pit.update()


def program_pin(router: InterruptRouter, pin: int, low: int) -> None:
    router.ioapic.write(IOREGSEL, 4, 0x10 + 2 * pin)
    router.ioapic.write(IOWIN, 4, low)


def apic_mode(router: InterruptRouter) -> None:
    """What Linux does: mask the 8259s, enable the local APIC, close LINT0."""
    router.pic.write(0x21, 1, 0xFF)
    router.pic.write(0xA1, 1, 0xFF)
    router.lapic.write(REG_SVR, 4, 0x1FF)
    router.lapic.write(REG_LVT_LINT0, 4, 0x10700)


def test_pit_through_the_8259_before_any_apic_programming() -> None:
    router, clock, pit = board()
    assert not router.interrupt_pending
    tick(clock, pit)
    assert router.interrupt_pending
    assert router.acknowledge() == 0x08
    assert not router.interrupt_pending


def test_pit_through_the_io_apic_on_pin_2() -> None:
    router, clock, pit = board()
    apic_mode(router)
    program_pin(router, 2, 0x30)           # fixed, edge, physical destination 0
    tick(clock, pit)
    assert router.interrupt_pending
    assert router.acknowledge() == 0x30
    router.lapic.write(REG_EOI, 4, 0)
    assert not router.interrupt_pending
    assert not router.pic.interrupt_pending  # masked at the 8259


def test_ide_irq14_reaches_the_cpu_in_either_mode() -> None:
    router, _, _ = board()
    line = router.isa_line(14)
    line.set(True)
    assert router.acknowledge() == 0x76    # slave base 0x70 + 6
    line.set(False)
    router.pic.write(0xA0, 1, 0x20)
    router.pic.write(0x20, 1, 0x20)
    apic_mode(router)
    program_pin(router, 14, 0x3E)
    line.set(True)
    assert router.acknowledge() == 0x3E


def test_extint_message_from_the_io_apic_takes_the_8259_vector() -> None:
    router, clock, pit = board()
    router.lapic.write(REG_SVR, 4, 0x1FF)
    router.lapic.write(REG_LVT_LINT0, 4, 0x10700)   # LINT0 closed
    program_pin(router, 0, 0x700)          # pin 0: ExtINT (virtual wire through the I/O APIC)
    router.isa_line(1).set(True)           # keyboard: 8259 IR1, I/O APIC pin 1 masked
    assert not router.interrupt_pending
    router.ioapic.set_irq(0, True)         # the 8259's INTR on I/O APIC pin 0
    assert router.interrupt_pending
    assert router.acknowledge() == 0x09
    assert not router.lapic.extint_pending


def test_local_apic_vector_wins_over_the_8259() -> None:
    router, clock, pit = board()
    router.lapic.write(REG_SVR, 4, 0x1FF)  # LINT0 still ExtINT: both paths open
    tick(clock, pit)
    router.lapic.raise_vector(0xEC)        # e.g. the local timer
    assert router.acknowledge() == 0xEC
    assert router.acknowledge() == 0x08


def test_isa_lines_are_checked() -> None:
    router, _, _ = board()
    with pytest.raises(ValueError):
        router.isa_line(16)
