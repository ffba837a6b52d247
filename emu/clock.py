"""The machine's two clocks: instruction-counted (deterministic) and wall time.

Devices (PIT, RTC) read time through ``now_ns()`` and never know which clock
they have; the run loop picks one when the machine is built (see the machine's
theory of operation, "Slices and the clock").

* :class:`VirtualClock` -- ``--icount``: virtual time is derived from what the
  guest did, never from the host: every executed instruction adds
  :data:`NS_PER_INSTRUCTION` (while a slice runs, the instructions executed so far
  in it count too, read from Unicorn's counter), every port access adds
  :data:`NS_PER_PORT_ACCESS` (a real ISA/PCI I/O cycle takes about that long, and
  a guest polling a timer port sees time pass), and HLT jumps straight to the next
  timer deadline.  The same guest and inputs see the same times, run to run.
* :class:`WallClock` -- the default for ``emu run``: the host's monotonic clock
  since power-on, like QEMU without ``-icount``, plus the time skipped while the
  CPU was halted (HLT with nothing to do jumps to the next timer deadline instead
  of sleeping) and the same per-port-access charge.  Guest time never runs
  backwards and never falls behind wall time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# A virtual CPU of 100 MIPS: close enough to what Unicorn sustains counted that the
# guest's own time (busy-wait countdowns, boot menus) does not stretch far beyond wall time.
NS_PER_INSTRUCTION = 10
NS_PER_PORT_ACCESS = 250


class VirtualClock:
    """Nanoseconds of virtual time since power-on (implements devices.interfaces.Clock)."""

    def __init__(self) -> None:
        self.ns = 0  # settled time: completed slices, port accesses, idle jumps
        # While a slice runs: the instructions executed in it so far (else None).
        self.in_slice: Callable[[], int] | None = None

    def now_ns(self) -> int:
        if self.in_slice is None:
            return self.ns
        return self.ns + self.in_slice() * NS_PER_INSTRUCTION

    def advance(self, ns: int) -> None:
        self.ns += ns

    def advance_to(self, ns: int) -> None:
        if ns > self.now_ns():
            self.ns = ns


class WallClock:
    """Host monotonic time since power-on plus skipped idle time (same interface)."""

    def __init__(self) -> None:
        self.origin = time.monotonic_ns()
        self.ns = 0  # skipped: idle jumps and port-access charges

    def now_ns(self) -> int:
        return time.monotonic_ns() - self.origin + self.ns

    def advance(self, ns: int) -> None:
        pass  # executed instructions take the wall time they took

    def advance_to(self, ns: int) -> None:
        now = self.now_ns()
        if ns > now:
            self.ns += ns - now
