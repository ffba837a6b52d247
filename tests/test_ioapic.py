"""82093AA I/O APIC driven through IOREGSEL/IOWIN as a kernel programs it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from devices.apicbus import ApicBus, DeliveryMode, InterruptMessage
from devices.ioapic import IOREGSEL, IOWIN, PINS, IoApic


class RecordingApic:
    """A local APIC stand-in that records what the bus hands it."""

    def __init__(self, apic_id: int = 0, tpr: int = 0) -> None:
        self.apic_id = apic_id
        self.tpr = tpr
        self.received: list[InterruptMessage] = []

    def matches(self, destination: int, logical: bool) -> bool:
        return destination in (0xFF, self.apic_id) if not logical else bool(destination & 1)

    def arbitration_priority(self) -> int:
        return self.tpr

    def accept(self, message: InterruptMessage) -> None:
        self.received.append(message)


def setup() -> tuple[IoApic, RecordingApic, ApicBus]:
    bus = ApicBus()
    cpu = RecordingApic()
    bus.attach_local(cpu)
    return IoApic(bus, apic_id=1), cpu, bus


def write_reg(ioapic: IoApic, index: int, value: int) -> None:
    ioapic.write(IOREGSEL, 4, index)
    ioapic.write(IOWIN, 4, value)


def read_reg(ioapic: IoApic, index: int) -> int:
    ioapic.write(IOREGSEL, 4, index)
    return ioapic.read(IOWIN, 4)


def route(ioapic: IoApic, pin: int, vector: int, *, level: bool = False, masked: bool = False,
          destination: int = 0, mode: int = 0) -> None:
    write_reg(ioapic, 0x11 + 2 * pin, destination << 24)
    write_reg(ioapic, 0x10 + 2 * pin,
              vector | mode << 8 | (1 << 15 if level else 0) | (1 << 16 if masked else 0))


def test_identification_registers() -> None:
    ioapic, _, _ = setup()
    assert read_reg(ioapic, 0) == 1 << 24
    assert read_reg(ioapic, 1) == 0x00170011          # 24 entries, version 0x11
    write_reg(ioapic, 0, 0x0F00_0000 | 0xFF)            # only bits 27:24 are kept
    assert read_reg(ioapic, 0) == 0x0F00_0000
    write_reg(ioapic, 1, 0)                            # version is read-only
    assert read_reg(ioapic, 1) == 0x00170011
    assert ioapic.read(IOREGSEL, 4) == 1
    assert read_reg(ioapic, 0x40) == 0                  # past the table


def test_entries_reset_masked_and_read_back_with_read_only_bits_kept() -> None:
    ioapic, cpu, _ = setup()
    for pin in range(PINS):
        assert read_reg(ioapic, 0x10 + 2 * pin) == 1 << 16
        assert read_reg(ioapic, 0x11 + 2 * pin) == 0
    write_reg(ioapic, 0x10 + 2 * 5, 0xFFFF_FFFF)        # level, masked, all writable bits
    assert read_reg(ioapic, 0x10 + 2 * 5) == 0x1AFFF    # delivery status, remote IRR read-only
    write_reg(ioapic, 0x11 + 2 * 5, 0xFFFF_FFFF)
    assert read_reg(ioapic, 0x11 + 2 * 5) == 0xFF00_0000
    assert cpu.received == []


def test_edge_pin_sends_one_message_per_rising_edge() -> None:
    ioapic, cpu, _ = setup()
    route(ioapic, 14, 0x3E, destination=0)
    line = ioapic.pin(14)
    line.set(True)
    line.set(True)
    line.set(False)
    line.set(True)
    assert cpu.received == [InterruptMessage(0x3E, DeliveryMode.FIXED, 0, False, False)] * 2


def test_edge_while_masked_is_held_until_unmasked() -> None:
    ioapic, cpu, _ = setup()
    route(ioapic, 1, 0x31, masked=True)
    ioapic.set_irq(1, True)
    ioapic.set_irq(1, False)
    assert cpu.received == []
    assert read_reg(ioapic, 0x12) & 1 << 12              # delivery status: pending
    route(ioapic, 1, 0x31)
    assert [m.vector for m in cpu.received] == [0x31]
    assert not read_reg(ioapic, 0x12) & 1 << 12


def test_level_pin_sets_remote_irr_and_resends_after_eoi_while_asserted() -> None:
    ioapic, cpu, bus = setup()
    route(ioapic, 10, 0x4A, level=True)
    ioapic.set_irq(10, True)
    assert len(cpu.received) == 1 and cpu.received[0].level_triggered
    assert read_reg(ioapic, 0x10 + 20) & 1 << 14         # remote IRR
    ioapic.set_irq(10, True)                             # no second message while in service
    assert len(cpu.received) == 1
    bus.broadcast_eoi(0x4B)                              # some other vector: nothing
    assert len(cpu.received) == 1
    bus.broadcast_eoi(0x4A)                              # still asserted: sent again
    assert len(cpu.received) == 2
    ioapic.set_irq(10, False)
    bus.broadcast_eoi(0x4A)
    assert len(cpu.received) == 2
    assert not read_reg(ioapic, 0x10 + 20) & 1 << 14


def test_masked_level_pin_is_sent_when_unmasked() -> None:
    ioapic, cpu, _ = setup()
    route(ioapic, 11, 0x4B, level=True, masked=True)
    ioapic.set_irq(11, True)
    assert cpu.received == []
    route(ioapic, 11, 0x4B, level=True)
    assert [m.vector for m in cpu.received] == [0x4B]


def test_message_fields_and_destination_routing() -> None:
    bus = ApicBus()
    cpu0, cpu1 = RecordingApic(0, tpr=0x20), RecordingApic(1, tpr=0x10)
    bus.attach_local(cpu0)
    bus.attach_local(cpu1)
    ioapic = IoApic(bus)
    route(ioapic, 3, 0x53, destination=1)
    ioapic.set_irq(3, True)
    assert cpu0.received == [] and [m.destination for m in cpu1.received] == [1]
    route(ioapic, 4, 0x54, destination=0xFF)             # physical broadcast
    ioapic.set_irq(4, True)
    assert [m.vector for m in cpu0.received] == [0x54]
    write_reg(ioapic, 0x11 + 10, 0xFF << 24)             # lowest priority to all: lowest TPR wins
    write_reg(ioapic, 0x10 + 10, 0x55 | 1 << 8 | 1 << 11)
    ioapic.set_irq(5, True)
    assert [m.vector for m in cpu1.received] == [0x53, 0x54, 0x55]
    assert cpu1.received[-1].logical
    assert cpu1.received[-1].delivery_mode == DeliveryMode.LOWEST_PRIORITY


def test_reserved_delivery_mode_sends_nothing() -> None:
    ioapic, cpu, _ = setup()
    route(ioapic, 2, 0x40, mode=0b011)
    ioapic.set_irq(2, True)
    assert cpu.received == []


@given(st.lists(st.tuples(st.integers(0, PINS - 1), st.booleans()), max_size=60))
def test_edge_messages_equal_rising_edges(events: list[tuple[int, bool]]) -> None:
    ioapic, cpu, _ = setup()
    for pin in range(PINS):
        route(ioapic, pin, 0x20 + pin)
    levels = [False] * PINS
    expected = []
    for pin, level in events:
        if level and not levels[pin]:
            expected.append(0x20 + pin)
        levels[pin] = level
        ioapic.set_irq(pin, level)
    assert [m.vector for m in cpu.received] == expected
