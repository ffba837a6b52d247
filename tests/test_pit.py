"""8254 PIT and port 0x61 on a hand-driven clock."""

from __future__ import annotations

from devices.interfaces import NullIrq
from devices.pit import PIT_HZ, Pit, SystemControlPortB, ticks_to_ns


class FakeClock:
    def __init__(self) -> None:
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns


def setup(mode: int, count: int, channel: int = 0) -> tuple[Pit, FakeClock, NullIrq]:
    clock, irq = FakeClock(), NullIrq()
    pit = Pit(clock, irq)
    pit.write(0x43, 1, channel << 6 | 0x30 | mode << 1)  # lo/hi access
    pit.write(0x40 + channel, 1, count & 0xFF)
    pit.write(0x40 + channel, 1, count >> 8)
    return pit, clock, irq


def read_latched(pit: Pit, channel: int = 0) -> int:
    pit.write(0x43, 1, channel << 6)  # counter latch
    low = pit.read(0x40 + channel, 1)
    return low | pit.read(0x40 + channel, 1) << 8


def test_mode2_counts_down_and_reloads() -> None:
    pit, clock, irq = setup(2, 1000)
    assert read_latched(pit) == 1000
    clock.ns = ticks_to_ns(250)
    assert read_latched(pit) == 750
    clock.ns = ticks_to_ns(1250)
    assert read_latched(pit) == 750  # reloaded after 1000 ticks


def test_irq0_edges_on_the_virtual_clock() -> None:
    pit, clock, irq = setup(2, 11932)
    deadline = pit.next_deadline_ns()
    assert deadline == ticks_to_ns(11932)
    clock.ns = deadline - 1
    pit.update()
    assert irq.raised == 0
    clock.ns = deadline
    pit.update()
    assert irq.raised == 1
    assert pit.next_deadline_ns() == ticks_to_ns(2 * 11932)


def test_count_zero_means_65536_and_18_2_hz() -> None:
    pit, clock, irq = setup(3, 0)
    period_ns = pit.next_deadline_ns()
    assert abs(period_ns - 65536 * 1_000_000_000 / PIT_HZ) < 2


def test_mode0_one_shot() -> None:
    pit, clock, irq = setup(0, 100)
    clock.ns = ticks_to_ns(100)
    pit.update()
    assert irq.raised == 1
    assert pit.next_deadline_ns() is None  # OUT stays high until reprogrammed


def test_read_back_status_and_count() -> None:
    pit, clock, irq = setup(2, 500)
    clock.ns = ticks_to_ns(100)
    pit.write(0x43, 1, 0xC2)  # read back count + status of channel 0
    status = pit.read(0x40, 1)
    assert status & 0x3F == 0x34  # lo/hi access, mode 2, binary
    assert pit.read(0x40, 1) | pit.read(0x40, 1) << 8 == 400


def test_latch_freezes_value_until_read() -> None:
    pit, clock, irq = setup(2, 1000)
    pit.write(0x43, 1, 0x00)
    clock.ns = ticks_to_ns(300)
    assert pit.read(0x40, 1) | pit.read(0x40, 1) << 8 == 1000
    assert read_latched(pit) == 700


def test_low_byte_only_access() -> None:
    clock = FakeClock()
    pit = Pit(clock)
    pit.write(0x43, 1, 0x14)  # channel 0, low byte only, mode 2
    pit.write(0x40, 1, 200)
    clock.ns = ticks_to_ns(50)
    assert pit.read(0x40, 1) == 150


def test_channel2_gate_and_out_on_port_61() -> None:
    pit, clock, irq = setup(0, 100, channel=2)
    port_b = SystemControlPortB(pit)
    port_b.write(0x61, 1, 0x00)       # gate low: counting stops
    clock.ns = ticks_to_ns(500)
    assert not port_b.read(0x61, 1) & 0x20
    pit.write(0x43, 1, 0xB0)          # reprogram channel 2, mode 0
    pit.write(0x42, 1, 100)
    pit.write(0x42, 1, 0)
    port_b.write(0x61, 1, 0x01)       # gate high: count from here
    clock.ns += ticks_to_ns(99)
    assert not port_b.read(0x61, 1) & 0x20
    clock.ns += ticks_to_ns(2)
    assert port_b.read(0x61, 1) & 0x21 == 0x21


def test_refresh_toggle_flips_with_time() -> None:
    clock = FakeClock()
    port_b = SystemControlPortB(Pit(clock))
    seen = set()
    for step in range(8):
        clock.ns = step * 15_085
        seen.add(port_b.read(0x61, 1) & 0x10)
    assert seen == {0, 0x10}
