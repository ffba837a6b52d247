"""MC146818 RTC/CMOS: clock registers on the virtual clock, interrupts, the BIOS layout."""

from __future__ import annotations

import datetime

from devices.cmos import Cmos, CmosLayout, Reg
from devices.interfaces import NullIrq

NS = 1_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns


def read(cmos: Cmos, index: int) -> int:
    cmos.write(0x70, 1, index)
    return cmos.read(0x71, 1)


def write(cmos: Cmos, index: int, value: int) -> None:
    cmos.write(0x70, 1, index)
    cmos.write(0x71, 1, value)


def make(start: datetime.datetime | None = None) -> tuple[Cmos, FakeClock, NullIrq]:
    clock, irq = FakeClock(), NullIrq()
    start = start or datetime.datetime(2024, 12, 31, 23, 59, 58, tzinfo=datetime.UTC)
    return Cmos(clock, irq, start=start), clock, irq


def test_bcd_clock_runs_on_virtual_time_and_rolls_the_year() -> None:
    cmos, clock, _ = make()
    assert [read(cmos, r) for r in (Reg.SECONDS, Reg.MINUTES, Reg.HOURS)] == [0x58, 0x59, 0x23]
    assert (read(cmos, Reg.DAY), read(cmos, Reg.MONTH), read(cmos, Reg.YEAR)) == (0x31, 0x12, 0x24)
    clock.ns = 3 * NS
    assert (read(cmos, Reg.SECONDS), read(cmos, Reg.YEAR), read(cmos, Reg.CENTURY)) == (1, 0x25,
                                                                                       0x20)
    assert read(cmos, Reg.WEEKDAY) == 4  # 2025-01-01 was a Wednesday (1 = Sunday)


def test_binary_and_12_hour_modes() -> None:
    cmos, _, _ = make(datetime.datetime(2024, 1, 1, 13, 5, 0, tzinfo=datetime.UTC))
    write(cmos, Reg.STATUS_B, 0x04)  # binary, 12-hour
    assert read(cmos, Reg.HOURS) == 0x80 | 1
    assert read(cmos, Reg.MINUTES) == 5


def test_setting_the_clock() -> None:
    cmos, clock, _ = make()
    write(cmos, Reg.STATUS_B, 0x82)  # SET
    write(cmos, Reg.HOURS, 0x07)
    write(cmos, Reg.MINUTES, 0x30)
    write(cmos, Reg.STATUS_B, 0x02)
    assert (read(cmos, Reg.HOURS), read(cmos, Reg.MINUTES)) == (0x07, 0x30)
    clock.ns = 60 * NS
    assert read(cmos, Reg.MINUTES) == 0x31


def test_update_in_progress_window() -> None:
    cmos, clock, _ = make()
    clock.ns = NS - 100_000
    assert read(cmos, Reg.STATUS_A) & 0x80
    clock.ns = NS + 100_000
    assert not read(cmos, Reg.STATUS_A) & 0x80
    assert read(cmos, Reg.STATUS_A) & 0x7F == 0x26


def test_periodic_interrupt_and_status_c() -> None:
    cmos, clock, irq = make()
    write(cmos, Reg.STATUS_A, 0x26)      # 1024 Hz
    write(cmos, Reg.STATUS_B, 0x42)      # PIE
    deadline = cmos.next_deadline_ns()
    assert deadline == NS // 1024
    clock.ns = deadline
    cmos.update()
    assert irq.level
    assert read(cmos, Reg.STATUS_C) & 0xC0 == 0xC0
    assert not irq.level                 # reading C acknowledges
    assert read(cmos, Reg.STATUS_C) == 0


def test_update_ended_interrupt() -> None:
    cmos, clock, irq = make()
    write(cmos, Reg.STATUS_B, 0x12)      # UIE
    assert cmos.next_deadline_ns() == NS
    clock.ns = NS
    cmos.update()
    assert irq.level and read(cmos, Reg.STATUS_C) & 0x90 == 0x90


def test_nmi_bit_is_not_part_of_the_index() -> None:
    cmos, _, _ = make()
    write(cmos, 0x40, 0x5A)
    cmos.write(0x70, 1, 0x80 | 0x40)
    assert cmos.read(0x71, 1) == 0x5A and cmos.nmi_disabled


def test_bios_layout_like_qemu() -> None:
    cmos, _, _ = make()
    layout = CmosLayout(cmos)
    layout.memory(64 << 20)
    layout.equipment()
    layout.disk(0, 1024, 16, 63, "lba")
    layout.disk(1, 20, 4, 17, "none")
    layout.disk(2, 100, 16, 63, "large")
    layout.boot_order()
    layout.checksum()
    ram = cmos.ram
    assert ram[0x15] | ram[0x16] << 8 == 640
    assert ram[0x17] | ram[0x18] << 8 == 63 * 1024
    assert ram[0x30] | ram[0x31] << 8 == 63 * 1024
    assert ram[0x34] | ram[0x35] << 8 == (48 << 20) // 65536
    assert ram[0x12] == 0xFF and ram[0x19] == 47 and ram[0x1A] == 47
    assert (ram[0x1B] | ram[0x1C] << 8, ram[0x1D], ram[0x23]) == (1024, 16, 63)
    assert ram[0x20] == 0xC8             # control byte: more than 8 heads
    assert (ram[0x24] | ram[0x25] << 8, ram[0x26], ram[0x2C]) == (20, 4, 17)
    assert ram[0x39] == 0b10_00_01       # ata0 master LBA, slave none, ata1 master LARGE
    assert ram[0x3D] & 0x0F == 2         # boot from the hard disk first
    assert ram[0x14] == 0x06
    total = sum(ram[0x10:0x2E])
    assert ram[0x2E] << 8 | ram[0x2F] == total
