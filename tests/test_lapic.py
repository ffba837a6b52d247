"""Local APIC (xAPIC) driven by MMIO offsets the way Linux and SeaBIOS program it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from devices.apicbus import ApicBus, DeliveryMode, InterruptMessage
from devices.ioapic import IOREGSEL, IOWIN, IoApic
from devices.lapic import (
    LAPIC_BASE,
    REG_DFR,
    REG_EOI,
    REG_ESR,
    REG_ICR_HIGH,
    REG_ICR_LOW,
    REG_ID,
    REG_IRR,
    REG_ISR,
    REG_LDR,
    REG_LVT_ERROR,
    REG_LVT_LINT0,
    REG_LVT_LINT1,
    REG_LVT_TIMER,
    REG_PPR,
    REG_SVR,
    REG_TIMER_CURRENT,
    REG_TIMER_DIVIDE,
    REG_TIMER_INITIAL,
    REG_TMR,
    REG_TPR,
    REG_VERSION,
    LocalApic,
)

MASKED = 1 << 16
PERIODIC = 1 << 17


class FakeClock:
    def __init__(self) -> None:
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns


def enabled(apic_id: int = 0) -> tuple[LocalApic, FakeClock]:
    clock = FakeClock()
    lapic = LocalApic(clock, apic_id=apic_id)
    lapic.write(REG_SVR, 4, 0x1FF)   # software enable, spurious vector 0xFF
    return lapic, clock


def bit_array(lapic: LocalApic, base: int) -> int:
    return sum(lapic.read(base + 0x10 * i, 4) << 32 * i for i in range(8))


def test_reset_state() -> None:
    lapic = LocalApic(FakeClock(), apic_id=3)
    assert lapic.read(REG_ID, 4) == 3 << 24
    assert lapic.read(REG_VERSION, 4) == 0x00050014
    assert lapic.read(REG_SVR, 4) == 0xFF and not lapic.software_enabled
    assert lapic.read(REG_DFR, 4) == 0xFFFFFFFF
    assert lapic.read(REG_LVT_TIMER, 4) == MASKED
    assert lapic.read(REG_LVT_LINT0, 4) == 0x700          # BSP: virtual wire, as QEMU
    assert lapic.accepts_pic_interrupt()
    assert lapic.mmio_range() == (LAPIC_BASE, 0x1000)
    assert lapic.read(REG_ID + 3, 1) == 3                  # byte reads of a register


def test_software_disabled_apic_masks_lvt_and_presents_nothing() -> None:
    lapic, _ = enabled()
    lapic.write(REG_LVT_TIMER, 4, 0x40)
    lapic.write(REG_SVR, 4, 0x0FF)                         # software disable
    assert lapic.read(REG_LVT_TIMER, 4) == MASKED | 0x40
    lapic.write(REG_LVT_LINT0, 4, 0x700)                   # mask cannot be cleared
    assert lapic.read(REG_LVT_LINT0, 4) == MASKED | 0x700
    assert not lapic.accepts_pic_interrupt()
    lapic.raise_vector(0x40)
    assert not lapic.interrupt_pending()                    # held in IRR
    lapic.write(REG_SVR, 4, 0x1FF)
    assert lapic.interrupt_pending()


def test_highest_vector_wins_and_eoi_ends_the_highest_in_service() -> None:
    lapic, _ = enabled()
    for vector in (0x31, 0x62, 0x45):
        lapic.raise_vector(vector)
    assert bit_array(lapic, REG_IRR) == 1 << 0x31 | 1 << 0x62 | 1 << 0x45
    assert lapic.acknowledge() == 0x62
    assert lapic.read(REG_PPR, 4) == 0x60
    assert not lapic.interrupt_pending()                    # 0x45 is in a lower class
    lapic.raise_vector(0x71)
    assert lapic.acknowledge() == 0x71                      # nests above 0x62
    assert bit_array(lapic, REG_ISR) == 1 << 0x71 | 1 << 0x62
    lapic.write(REG_EOI, 4, 0)
    assert bit_array(lapic, REG_ISR) == 1 << 0x62
    lapic.write(REG_EOI, 4, 0)
    assert lapic.acknowledge() == 0x45
    lapic.write(REG_EOI, 4, 0)
    assert lapic.acknowledge() == 0x31


def test_same_class_waits_for_eoi() -> None:
    lapic, _ = enabled()
    lapic.raise_vector(0x52)
    assert lapic.acknowledge() == 0x52
    lapic.raise_vector(0x55)                                # same priority class 5
    assert not lapic.interrupt_pending()
    lapic.write(REG_EOI, 4, 0)
    assert lapic.acknowledge() == 0x55


def test_tpr_blocks_lower_classes_and_late_tpr_raise_gives_spurious() -> None:
    lapic, _ = enabled()
    lapic.write(REG_TPR, 4, 0x5F)
    lapic.raise_vector(0x50)
    assert not lapic.interrupt_pending()
    assert lapic.read(REG_PPR, 4) == 0x5F
    lapic.raise_vector(0x61)
    assert lapic.interrupt_pending()
    lapic.write(REG_TPR, 4, 0x70)                           # between INTR and INTA
    assert lapic.acknowledge() == 0xFF                      # spurious, ISR untouched
    assert bit_array(lapic, REG_ISR) == 0
    lapic.write(REG_TPR, 4, 0)
    assert lapic.acknowledge() == 0x61


def test_level_eoi_is_broadcast_to_the_io_apic() -> None:
    bus = ApicBus()
    clock = FakeClock()
    lapic = LocalApic(clock, bus)
    lapic.write(REG_SVR, 4, 0x1FF)
    ioapic = IoApic(bus)
    ioapic.write(IOREGSEL, 4, 0x10 + 2 * 11)
    ioapic.write(IOWIN, 4, 0x8000 | 0x4B)                   # level, fixed, dest 0
    ioapic.set_irq(11, True)
    assert bit_array(lapic, REG_TMR) == 1 << 0x4B
    assert lapic.acknowledge() == 0x4B
    ioapic.set_irq(11, False)
    lapic.write(REG_EOI, 4, 0)
    ioapic.write(IOREGSEL, 4, 0x10 + 2 * 11)
    assert not ioapic.read(IOWIN, 4) & 1 << 14             # remote IRR cleared by the EOI
    ioapic.set_irq(11, True)
    assert lapic.interrupt_pending()


def test_illegal_vectors_and_the_error_register() -> None:
    lapic, _ = enabled()
    lapic.write(REG_LVT_ERROR, 4, 0xFE)
    lapic.raise_vector(0x05)                                # receive illegal vector
    assert lapic.read(REG_ESR, 4) == 0                      # visible only after an ESR write
    lapic.write(REG_ESR, 4, 0)
    assert lapic.read(REG_ESR, 4) == 1 << 6
    assert lapic.acknowledge() == 0xFE                      # the LVT error vector
    lapic.write(REG_ICR_LOW, 4, 0x40000 | 0x03)             # self IPI with vector 3
    lapic.write(REG_ESR, 4, 0)
    assert lapic.read(REG_ESR, 4) == 1 << 5
    lapic.write(REG_ESR, 4, 0)
    assert lapic.read(REG_ESR, 4) == 0


def test_self_ipi_and_ipi_by_destination() -> None:
    lapic, _ = enabled(apic_id=2)
    lapic.write(REG_ICR_LOW, 4, 0x40000 | 0x90)             # shorthand self
    assert lapic.acknowledge() == 0x90
    lapic.write(REG_EOI, 4, 0)
    lapic.write(REG_ICR_HIGH, 4, 2 << 24)
    lapic.write(REG_ICR_LOW, 4, 0x91)                       # fixed, physical, dest 2
    assert lapic.acknowledge() == 0x91
    lapic.write(REG_EOI, 4, 0)
    lapic.write(REG_ICR_HIGH, 4, 5 << 24)
    lapic.write(REG_ICR_LOW, 4, 0x92)                       # nobody has ID 5
    assert not lapic.interrupt_pending()
    lapic.write(REG_ICR_LOW, 4, 0xC0000 | 0x93)             # all excluding self
    assert not lapic.interrupt_pending()
    lapic.write(REG_ICR_LOW, 4, 0x80000 | 0x400)            # NMI to all including self
    assert lapic.nmi_pending == 1
    assert lapic.read(REG_ICR_LOW, 4) == 0x80400            # delivery status reads idle


def test_logical_destinations_flat_and_cluster() -> None:
    lapic, _ = enabled()
    lapic.write(REG_LDR, 4, 0x04 << 24)
    assert lapic.matches(0x04, True) and lapic.matches(0x0C, True)
    assert not lapic.matches(0x03, True)
    lapic.write(REG_DFR, 4, 0x0FFFFFFF)                     # cluster model
    lapic.write(REG_LDR, 4, 0x21 << 24)                     # cluster 2, member bit 0
    assert lapic.matches(0x23, True) and not lapic.matches(0x13, True)
    assert lapic.matches(0xFF, True)
    assert lapic.read(REG_DFR, 4) == 0x0FFFFFFF


def test_lint_pins_and_messages() -> None:
    lapic, _ = enabled()
    lapic.write(REG_LVT_LINT0, 4, 0x8700)                   # ExtINT, level (SeaBIOS' value)
    lapic.write(REG_LVT_LINT1, 4, 0x8400)                   # NMI
    assert lapic.accepts_pic_interrupt()
    lapic.set_lint(1, True)
    assert lapic.nmi_pending == 1
    lapic.set_lint(0, True)
    assert lapic.extint_pending
    lapic.write(REG_LVT_LINT0, 4, 0x18700)
    assert not lapic.accepts_pic_interrupt()
    lapic.accept(InterruptMessage(0x00, DeliveryMode.INIT))
    assert lapic.init_received == 1
    lapic.apic_base = 0                                      # globally disabled: 8259 direct
    assert lapic.accepts_pic_interrupt()


def test_apic_base_msr_global_disable_resets_state() -> None:
    lapic, _ = enabled()
    lapic.raise_vector(0x40)
    lapic.write_apic_base_msr(LAPIC_BASE)                    # enable bit clear
    assert not lapic.global_enable and not lapic.interrupt_pending()
    assert lapic.apic_base & 0x100                           # BSP flag kept
    lapic.write_apic_base_msr(0xFED00000 | 0x800)
    assert lapic.mmio_range() == (0xFED00000, 0x1000)
    assert not lapic.software_enabled


# --- timer (SDM 10.5.4) --------------------------------------------------------------

def test_one_shot_counts_down_at_bus_clock_over_divider() -> None:
    lapic, clock = enabled()
    lapic.write(REG_TIMER_DIVIDE, 4, 0b0011)                # divide by 16
    lapic.write(REG_LVT_TIMER, 4, 0xEC)
    lapic.write(REG_TIMER_INITIAL, 4, 1000)
    assert lapic.read(REG_TIMER_CURRENT, 4) == 1000
    assert lapic.next_deadline_ns() == 16_000               # 1 GHz bus / 16 * 1000
    clock.ns = 8_000
    assert lapic.read(REG_TIMER_CURRENT, 4) == 500
    lapic.update()
    assert not lapic.interrupt_pending()
    clock.ns = 16_000
    lapic.update()
    assert lapic.read(REG_TIMER_CURRENT, 4) == 0
    assert lapic.acknowledge() == 0xEC
    assert lapic.next_deadline_ns() is None
    clock.ns = 100_000
    lapic.update()
    assert not lapic.interrupt_pending()                    # one-shot fires once


def test_periodic_reloads_and_coalesces_missed_periods() -> None:
    lapic, clock = enabled()
    lapic.write(REG_TIMER_DIVIDE, 4, 0b1011)                # divide by 1
    lapic.write(REG_LVT_TIMER, 4, PERIODIC | 0xEF)
    lapic.write(REG_TIMER_INITIAL, 4, 100)
    deadlines = []
    for _ in range(3):
        deadline = lapic.next_deadline_ns()
        assert deadline is not None
        deadlines.append(deadline)
        clock.ns = deadline
        lapic.update()
        assert lapic.acknowledge() == 0xEF
        lapic.write(REG_EOI, 4, 0)
    assert deadlines == [100, 200, 300]
    clock.ns = 350
    assert lapic.read(REG_TIMER_CURRENT, 4) == 50
    clock.ns = 1_000                                        # seven periods at once: one IRR bit
    lapic.update()
    assert lapic.acknowledge() == 0xEF
    assert not lapic.interrupt_pending()
    assert lapic.next_deadline_ns() == 1_100


def test_masked_timer_keeps_counting_without_interrupts_and_zero_stops_it() -> None:
    lapic, clock = enabled()
    lapic.write(REG_TIMER_DIVIDE, 4, 0b1011)
    lapic.write(REG_LVT_TIMER, 4, MASKED | PERIODIC | 0xEF)
    lapic.write(REG_TIMER_INITIAL, 4, 10)
    assert lapic.next_deadline_ns() is None
    clock.ns = 25
    lapic.update()
    assert not lapic.interrupt_pending()
    assert lapic.read(REG_TIMER_CURRENT, 4) == 5
    lapic.write(REG_TIMER_INITIAL, 4, 0)
    assert lapic.read(REG_TIMER_CURRENT, 4) == 0
    lapic.write(REG_LVT_TIMER, 4, PERIODIC | 0xEF)
    assert lapic.next_deadline_ns() is None


def test_divide_change_keeps_the_current_count() -> None:
    lapic, clock = enabled()
    lapic.write(REG_TIMER_DIVIDE, 4, 0b1011)                # by 1
    lapic.write(REG_LVT_TIMER, 4, 0xEC)
    lapic.write(REG_TIMER_INITIAL, 4, 1000)
    clock.ns = 400
    lapic.write(REG_TIMER_DIVIDE, 4, 0b0000)                # by 2
    assert lapic.read(REG_TIMER_DIVIDE, 4) == 0
    assert lapic.read(REG_TIMER_CURRENT, 4) == 600
    assert lapic.next_deadline_ns() == 400 + 1200


@given(st.sampled_from([0b0000, 0b0001, 0b0010, 0b0011, 0b1000, 0b1001, 0b1010, 0b1011]),
       st.integers(1, 5000), st.integers(0, 200_000))
def test_current_count_matches_the_definition(divide: int, initial: int, elapsed: int) -> None:
    divisor = {0: 2, 1: 4, 2: 8, 3: 16, 8: 32, 9: 64, 10: 128, 11: 1}[divide]
    lapic, clock = enabled()
    lapic.write(REG_TIMER_DIVIDE, 4, divide)
    lapic.write(REG_LVT_TIMER, 4, PERIODIC | 0xEF)
    lapic.write(REG_TIMER_INITIAL, 4, initial)
    clock.ns = elapsed
    ticks = elapsed // divisor
    assert lapic.read(REG_TIMER_CURRENT, 4) == initial - ticks % initial
    lapic.update()
    assert lapic.interrupt_pending() == (ticks >= initial)


def test_seabios_smp_scan_sequence_leaves_the_8259_path_open() -> None:
    """SeaBIOS smp_scan: enable via SVR, LINT0 ExtINT, LINT1 NMI, INIT + SIPI to others."""
    lapic = LocalApic(FakeClock())
    lapic.write(REG_SVR, 4, lapic.read(REG_SVR, 4) | 0x100)
    lapic.write(REG_LVT_LINT0, 4, 0x8700)
    lapic.write(REG_LVT_LINT1, 4, 0x8400)
    lapic.write(REG_ICR_LOW, 4, 0x000C4500)                 # INIT, all excluding self
    lapic.write(REG_ICR_LOW, 4, 0x000C4600 | 0x9F)          # start-up, all excluding self
    assert lapic.init_received == 0 and not lapic.interrupt_pending()
    assert lapic.accepts_pic_interrupt()
    lapic.write(REG_ESR, 4, 0)
    assert lapic.read(REG_ESR, 4) == 0
