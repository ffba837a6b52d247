"""PIIX4 PM block driven by the port accesses Linux's ACPI core makes."""

from __future__ import annotations

from devices.acpipm import GPE0_BASE, PM_TIMER_HZ, Piix4Pm, ns_of_tick
from devices.interfaces import NullIrq

PM1_STS, PM1_EN, PM1_CNT, PM_TMR = 0x600, 0x602, 0x604, 0x608


class FakeClock:
    def __init__(self) -> None:
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns


def setup() -> tuple[Piix4Pm, FakeClock, NullIrq, list[str]]:
    clock, sci, events = FakeClock(), NullIrq(), []
    return Piix4Pm(clock, sci, lambda: events.append("off")), clock, sci, events


def test_pm_timer_counts_at_3_579545_mhz_and_wraps_at_24_bits() -> None:
    pm, clock, _, _ = setup()
    assert pm.read(PM_TMR, 4) == 0
    clock.ns = 1_000_000_000
    assert pm.read(PM_TMR, 4) == PM_TIMER_HZ
    clock.ns = ns_of_tick((1 << 24) + 5)
    assert pm.read(PM_TMR, 4) == 5


def test_acpi_enable_through_the_apm_port_sets_sci_en() -> None:
    pm, _, _, _ = setup()
    assert pm.read(PM1_CNT, 2) & 1 == 0
    pm.write(0xB2, 1, 0xF1)                                 # FADT ACPI_ENABLE
    assert pm.read(PM1_CNT, 2) & 1 == 1
    pm.write(0xB2, 1, 0xF0)
    assert pm.read(PM1_CNT, 2) & 1 == 0


def test_timer_status_raises_sci_when_enabled_and_clears_by_writing_one() -> None:
    pm, clock, sci, _ = setup()
    pm.write(0xB2, 1, 0xF1)
    pm.write(PM1_EN, 2, 0x0001)                             # TMR_EN
    deadline = pm.next_deadline_ns()
    assert deadline == ns_of_tick(1 << 23)
    clock.ns = deadline - 1
    pm.update()
    assert not sci.level
    clock.ns = deadline
    pm.update()
    assert sci.level and pm.read(PM1_STS, 2) & 1
    assert pm.next_deadline_ns() is None                    # pending until cleared
    pm.write(PM1_STS, 2, 0x0001)
    assert not sci.level and pm.read(PM1_STS, 2) == 0
    assert pm.next_deadline_ns() == ns_of_tick(2 << 23)


def test_slp_typ_0_with_slp_en_powers_off_and_other_types_do_not() -> None:
    pm, _, _, events = setup()
    pm.write(PM1_CNT, 2, 1 << 10 | 1 << 13)                 # S1/S3-style request: refused
    assert events == []
    pm.write(PM1_CNT, 2, 0 << 10 | 1 << 13 | 1)             # Linux acpi_enter_sleep_state(S5)
    assert events == ["off"]
    assert pm.read(PM1_CNT, 2) & 1 << 13 == 0               # SLP_EN reads 0


def test_gpe0_status_enable_and_relocation() -> None:
    pm, _, sci, _ = setup()
    pm.write(0xB2, 1, 0xF1)
    pm.write(GPE0_BASE + 2, 2, 0x0002)
    assert pm.read(GPE0_BASE, 4) == 0x0002_0000
    pm.gpe_status = 0x0002                                  # a device raised GPE 1
    pm.update()
    assert sci.level
    pm.write(GPE0_BASE, 1, 0x02)
    assert not sci.level
    pm.relocate(0xB000)
    assert (0xB000, 0x40) in list(pm.io_ports())
    assert pm.read(0xB004, 2) & 1 == 1
