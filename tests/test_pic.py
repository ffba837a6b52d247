"""8259A pair driven by plain port writes, as BIOSes and kernels program it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from devices.pic import PRIORITY_ORDERS, Pic8259, PicPair


def initialised(master_base: int = 0x08, slave_base: int = 0x70, *, auto_eoi: bool = False,
                level: bool = False) -> PicPair:
    pic = PicPair()
    icw1 = 0x11 | (0x08 if level else 0)
    icw4 = 0x01 | (0x02 if auto_eoi else 0)
    for command, data, base, cascade in ((0x20, 0x21, master_base, 0x04),
                                          (0xA0, 0xA1, slave_base, 0x02)):
        pic.write(command, 1, icw1)
        pic.write(data, 1, base)
        pic.write(data, 1, cascade)
        pic.write(data, 1, icw4)
    return pic


def test_edge_request_is_acknowledged_with_the_vector_and_ended_by_eoi() -> None:
    pic = initialised()
    line = pic.irq_line(0)
    line.set(True)
    line.set(False)
    assert pic.interrupt_pending
    assert pic.acknowledge() == 0x08
    assert not pic.interrupt_pending
    pic.write(0x20, 1, 0x0B)          # OCW3: read ISR
    assert pic.read(0x20, 1) == 0x01
    pic.write(0x20, 1, 0x20)          # non-specific EOI
    assert pic.read(0x20, 1) == 0x00


def test_masked_requests_wait_in_irr() -> None:
    pic = initialised()
    pic.write(0x21, 1, 0x01)          # mask IRQ 0
    pic.irq_line(0).set(True)
    assert not pic.interrupt_pending
    pic.write(0x20, 1, 0x0A)          # OCW3: read IRR
    assert pic.read(0x20, 1) == 0x01
    assert pic.read(0x21, 1) == 0x01  # IMR
    pic.write(0x21, 1, 0x00)
    assert pic.interrupt_pending


def test_priority_and_nesting() -> None:
    pic = initialised()
    pic.irq_line(3).set(True)
    pic.irq_line(1).set(True)
    assert pic.acknowledge() == 0x09  # IRQ 1 beats IRQ 3
    assert not pic.interrupt_pending  # IRQ 3 is lower than the in-service IRQ 1
    pic.irq_line(0).set(True)
    assert pic.acknowledge() == 0x08  # but IRQ 0 nests
    pic.write(0x20, 1, 0x20)          # EOI ends IRQ 0 (the highest in service)
    pic.write(0x20, 1, 0x20)          # then IRQ 1
    assert pic.acknowledge() == 0x0B


def test_slave_cascade_and_specific_eoi() -> None:
    pic = initialised()
    pic.write(0x21, 1, 0x00)
    pic.write(0xA1, 1, 0x00)
    pic.irq_line(14).set(True)
    assert pic.interrupt_pending
    assert pic.acknowledge() == 0x76
    pic.write(0xA0, 1, 0x0B)
    assert pic.read(0xA0, 1) == 0x40
    pic.write(0x20, 1, 0x0B)
    assert pic.read(0x20, 1) == 0x04  # IRQ 2 in service on the master
    pic.write(0xA0, 1, 0x66)          # specific EOI for slave level 6
    pic.write(0x20, 1, 0x62)          # specific EOI for master level 2
    assert pic.read(0xA0, 1) == 0 and pic.read(0x20, 1) == 0


def test_level_triggered_via_elcr_follows_the_line() -> None:
    pic = initialised()
    pic.write(0x4D1, 1, 0xFF)
    assert pic.read(0x4D1, 1) == 0xDE  # IRQ 8 and 13 are always edge
    line = pic.irq_line(11)
    line.set(True)
    assert pic.interrupt_pending
    line.set(False)
    pic.write(0xA0, 1, 0x0A)
    assert pic.read(0xA0, 1) == 0     # a level request vanishes with its line...
    assert pic.acknowledge() == 0x77  # ...and the latched cascade yields the slave's IRQ 15


def test_level_triggered_master_line() -> None:
    pic = initialised()
    pic.write(0x4D0, 1, 0x20)
    line = pic.irq_line(5)
    line.set(True)
    assert pic.interrupt_pending
    line.set(False)
    assert not pic.interrupt_pending


def test_spurious_irq7_when_request_withdrawn() -> None:
    pic = initialised(level=True)
    pic.irq_line(5).set(True)
    assert pic.interrupt_pending
    pic.irq_line(5).set(False)
    assert pic.acknowledge() == 0x0F
    pic.write(0x20, 1, 0x0B)
    assert pic.read(0x20, 1) == 0     # spurious IRQ 7 sets no ISR bit


def test_auto_eoi_and_rotation() -> None:
    pic = initialised(auto_eoi=True)
    pic.irq_line(4).set(True)
    assert pic.acknowledge() == 0x0C
    pic.write(0x20, 1, 0x0B)
    assert pic.read(0x20, 1) == 0     # auto-EOI: nothing stays in service
    plain = initialised()
    plain.write(0x20, 1, 0xC4)        # set priority: IRQ 4 lowest, so IRQ 5 highest
    plain.irq_line(3).set(True)
    plain.irq_line(6).set(True)
    assert plain.acknowledge() == 0x0E


def test_poll_command() -> None:
    pic = initialised()
    pic.irq_line(6).set(True)
    pic.write(0x20, 1, 0x0C)          # OCW3 poll
    assert pic.read(0x20, 1) == 0x86
    pic.write(0x20, 1, 0x0B)
    assert pic.read(0x20, 1) == 0x40


def test_reinitialisation_clears_state() -> None:
    pic = initialised()
    pic.irq_line(1).set(True)
    pic.acknowledge()
    pic.write(0x21, 1, 0xFF)
    pic = initialised()
    assert pic.read(0x21, 1) == 0 and not pic.interrupt_pending


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 7),
       st.booleans())
def test_priority_resolution_matches_the_datasheet_walk(irr: int, imr: int, isr: int,
                                                       lowest: int, special_mask: bool) -> None:
    """The bit-rotation shortcut equals walking the levels from the highest priority."""
    chip = Pic8259("test", 0)
    chip.irr, chip.imr, chip.isr = irr, imr, isr
    chip.lowest_priority, chip.special_mask = lowest, special_mask
    expected = None
    for level in PRIORITY_ORDERS[lowest]:
        bit = 1 << level
        if isr & bit:
            if not special_mask:
                break
            continue
        if irr & ~imr & bit:
            expected = level
            break
    assert chip.pending_irq() == expected
