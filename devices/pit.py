"""The Intel 8254 programmable interval timer (PIT) and the PC's port 0x61.

Theory of operation
-------------------
Three 16-bit down-counters are clocked at 1.193182 MHz.  Channel 0's OUT drives
IRQ 0 (the BIOS tick), channel 1 once refreshed DRAM, channel 2's OUT goes to
the speaker and is readable as bit 5 of port 0x61, whose bit 0 drives channel 2's
GATE.  Port 0x43 takes control words: select a channel, its access mode
(latch / low byte / high byte / low-then-high) and its counting mode; 0xC0-0xFF
is the read-back command, latching count and/or status of several channels.

Nothing ticks here.  A channel remembers the virtual time its count was loaded
(:class:`~devices.interfaces.Clock`), and its counter and OUT are computed from
the elapsed ticks when read, so the model is exact and costs nothing between
accesses.  The machine asks :meth:`Pit.next_deadline_ns` when the next IRQ 0
edge is due and calls :meth:`Pit.update` after advancing the clock; each rising
edge of channel 0's OUT is delivered as a pulse on the IRQ line (the 8259 is
edge-triggered for IRQ 0).  Several periods elapsed at once give one pulse, as
the 8259's single IRR bit would.

Counting modes: 0 (interrupt on terminal count), 2 (rate generator) and 3
(square wave) are modelled exactly as seen by software; 1 and 5 are treated as
0 started by the gate, 4 as 0 with a one-tick OUT pulse.  A count of 0 means
65536.  BCD counting is accepted and reported in the status byte, but counts
in binary.

Port 0x61 (system control port B): bit 0 channel 2 gate, bit 1 speaker data
(stored), bit 4 the DRAM refresh toggle that firmware polls to time short
delays (it flips every 15.085 us of virtual time), bit 5 channel 2 OUT.
"""

from __future__ import annotations

from collections.abc import Iterable

from .interfaces import Clock, IrqLine, NullIrq

PIT_HZ = 1_193_182
NS_PER_S = 1_000_000_000
COUNTER_PORT = 0x40
CONTROL_PORT = 0x43
PORT_B = 0x61
REFRESH_HALF_PERIOD_NS = 15_085

ACCESS_LATCH, ACCESS_LOW, ACCESS_HIGH, ACCESS_WORD = 0, 1, 2, 3
READBACK = 0xC0
READBACK_NO_COUNT = 0x20
READBACK_NO_STATUS = 0x10

PORT_B_GATE2 = 0x01
PORT_B_SPEAKER = 0x02
PORT_B_REFRESH = 0x10
PORT_B_OUT2 = 0x20
PORT_B_WRITABLE = PORT_B_GATE2 | PORT_B_SPEAKER | 0x0C


def ns_to_ticks(ns: int) -> int:
    return ns * PIT_HZ // NS_PER_S


def ticks_to_ns(ticks: int) -> int:
    """The first nanosecond at which ``ticks`` whole ticks have elapsed."""
    return -(-ticks * NS_PER_S // PIT_HZ)


class PitChannel:
    """One 8254 counter."""

    def __init__(self, index: int, clock: Clock) -> None:
        self.index = index
        self.clock = clock
        self.gate = index != 2  # channels 0 and 1 have GATE tied high
        self.reset()

    def reset(self) -> None:
        self.mode = 0
        self.access = ACCESS_WORD
        self.bcd = False
        self.reload = 0x10000
        self.counting = False      # a count has been written since the control word
        self.null_count = True
        self.start_ns = 0          # virtual time counting (re)started
        self.frozen_ticks = 0      # elapsed ticks while the gate is low
        self.write_low_next = True
        self.pending_low = 0
        self.read_low_next = True
        self.latched_bytes: list[int] = []
        self.latched_status: int | None = None

    # --- the counting model ----------------------------------------------
    def elapsed_ticks(self) -> int:
        if not self.counting:
            return 0
        if not self.gate:
            return self.frozen_ticks
        return ns_to_ticks(self.clock.now_ns() - self.start_ns)

    def counter(self) -> int:
        if not self.counting:
            return self.reload & 0xFFFF
        ticks = self.elapsed_ticks()
        period = self.reload
        if self.mode in (2, 3):
            phase = ticks % period
            if self.mode == 2:
                return (period - phase) & 0xFFFF
            half = (period + 1) // 2
            return (period - 2 * (phase % half)) & 0xFFFE
        return (period - ticks) & 0xFFFF

    def out(self) -> bool:
        if not self.counting:
            return self.mode != 0
        ticks = self.elapsed_ticks()
        period = self.reload
        if self.mode == 2:
            return ticks % period != period - 1
        if self.mode == 3:
            return ticks % period < (period + 1) // 2
        if self.mode == 4:
            return ticks != period
        return ticks >= period  # modes 0, 1, 5

    def next_rising_edge_ns(self, after_ns: int) -> int | None:
        """Virtual time of the first OUT rising edge strictly after ``after_ns``."""
        if not self.counting or not self.gate:
            return None
        period = self.reload
        ticks_then = ns_to_ticks(after_ns - self.start_ns) if after_ns >= self.start_ns else -1
        if self.mode in (2, 3):
            edge = (ticks_then // period + 1) * period
        elif self.mode in (0, 1, 5):
            edge = period
            if ticks_then >= edge:
                return None
        else:  # mode 4: OUT returns high one tick after terminal count
            edge = period + 1
            if ticks_then >= edge:
                return None
        return self.start_ns + ticks_to_ns(edge)

    def set_gate(self, level: bool) -> None:
        if level == self.gate:
            return
        if not level:
            self.frozen_ticks = self.elapsed_ticks()
        elif self.mode in (1, 2, 3, 5):
            self.start_ns = self.clock.now_ns()  # rising gate retriggers
        else:
            self.start_ns = self.clock.now_ns() - ticks_to_ns(self.frozen_ticks)
        self.gate = level

    # --- programming ------------------------------------------------------
    def control(self, access: int, mode: int, bcd: bool) -> None:
        self.access = access
        self.mode = mode if mode < 6 else mode - 4  # 6 and 7 alias 2 and 3
        self.bcd = bcd
        self.counting = False
        self.null_count = True
        self.write_low_next = True
        self.read_low_next = True
        self.latched_bytes = []

    def latch_count(self) -> None:
        if self.latched_bytes:
            return  # a second latch before the first is read is ignored
        value = self.counter()
        low, high = value & 0xFF, value >> 8
        self.latched_bytes = {ACCESS_LOW: [low], ACCESS_HIGH: [high]}.get(
            self.access, [low, high])

    def latch_status(self) -> None:
        if self.latched_status is None:
            self.latched_status = ((0x80 if self.out() else 0) | (0x40 if self.null_count else 0)
                                   | self.access << 4 | self.mode << 1 | int(self.bcd))

    def _load(self, count: int) -> None:
        self.reload = count or 0x10000
        self.counting = True
        self.null_count = False
        self.start_ns = self.clock.now_ns()
        self.frozen_ticks = 0

    def write(self, value: int) -> None:
        if self.access == ACCESS_LOW:
            self._load(value)
        elif self.access == ACCESS_HIGH:
            self._load(value << 8)
        elif self.write_low_next:
            self.pending_low = value
            self.write_low_next = False
        else:
            self.write_low_next = True
            self._load(self.pending_low | value << 8)

    def read(self) -> int:
        if self.latched_status is not None:
            status, self.latched_status = self.latched_status, None
            return status
        if self.latched_bytes:
            return self.latched_bytes.pop(0)
        value = self.counter()
        if self.access == ACCESS_LOW:
            return value & 0xFF
        if self.access == ACCESS_HIGH:
            return value >> 8
        low_now = self.read_low_next
        self.read_low_next = not low_now
        return value & 0xFF if low_now else value >> 8


class Pit:
    """The 8254 at ports 0x40-0x43 (channel 0 -> IRQ 0)."""

    def __init__(self, clock: Clock, irq0: IrqLine | None = None) -> None:
        self.clock = clock
        self.irq0 = irq0 or NullIrq()
        self.channels = [PitChannel(index, clock) for index in range(3)]
        self.last_update_ns = clock.now_ns()

    def reset(self) -> None:
        for channel in self.channels:
            channel.reset()
        self.last_update_ns = self.clock.now_ns()

    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(COUNTER_PORT, 4)]

    def read(self, port: int, size: int) -> int:
        if port == CONTROL_PORT:
            return 0xFF  # the control register is write-only
        return self.channels[port - COUNTER_PORT].read()

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port != CONTROL_PORT:
            self.update()
            self.channels[port - COUNTER_PORT].write(value)
            return
        if value & READBACK == READBACK:
            for index, channel in enumerate(self.channels):
                if value & (2 << index):
                    if not value & READBACK_NO_COUNT:
                        channel.latch_count()
                    if not value & READBACK_NO_STATUS:
                        channel.latch_status()
            return
        channel = self.channels[value >> 6]
        access = (value >> 4) & 3
        if access == ACCESS_LATCH:
            channel.latch_count()
        else:
            self.update()
            channel.control(access, (value >> 1) & 7, bool(value & 1))

    # --- time -------------------------------------------------------------
    def next_deadline_ns(self) -> int | None:
        return self.channels[0].next_rising_edge_ns(self.last_update_ns)

    def update(self) -> None:
        """Pulse IRQ 0 if channel 0's OUT rose since the last update."""
        now = self.clock.now_ns()
        edge = self.channels[0].next_rising_edge_ns(self.last_update_ns)
        self.last_update_ns = now
        if edge is not None and edge <= now:
            self.irq0.set(True)
            self.irq0.set(False)


class SystemControlPortB:
    """Port 0x61: channel 2 gate and output, speaker, DRAM refresh toggle."""

    def __init__(self, pit: Pit) -> None:
        self.pit = pit
        self.value = 0

    def reset(self) -> None:
        self.value = 0
        self.pit.channels[2].set_gate(False)

    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(PORT_B, 1)]

    def read(self, port: int, size: int) -> int:
        refresh = (self.pit.clock.now_ns() // REFRESH_HALF_PERIOD_NS) & 1
        out2 = self.pit.channels[2].out()
        return (self.value & PORT_B_WRITABLE) | (PORT_B_REFRESH if refresh else 0) | (
            PORT_B_OUT2 if out2 else 0)

    def write(self, port: int, size: int, value: int) -> None:
        self.value = value & PORT_B_WRITABLE
        self.pit.channels[2].set_gate(bool(value & PORT_B_GATE2))
