"""The machine's deterministic virtual clock.

Virtual time is derived from what the guest did, never from the host's clock:
every completed execution slice adds its instruction count times
:data:`NS_PER_INSTRUCTION`, every port access adds :data:`NS_PER_PORT_ACCESS`
(a real ISA/PCI I/O cycle takes about that long, and it lets a guest that
polls a timer port see time pass), and HLT jumps straight to the next timer
deadline.  The same guest and inputs therefore see the same times, run to run.
"""

from __future__ import annotations

# A virtual CPU of 100 MIPS: close enough to what Unicorn sustains that the guest's own
# time (busy-wait countdowns, boot menus) does not stretch far beyond wall time.
NS_PER_INSTRUCTION = 10
NS_PER_PORT_ACCESS = 250


class VirtualClock:
    """Nanoseconds of virtual time since power-on (implements devices.interfaces.Clock)."""

    def __init__(self) -> None:
        self.ns = 0

    def now_ns(self) -> int:
        return self.ns

    def advance(self, ns: int) -> None:
        self.ns += ns

    def advance_to(self, ns: int) -> None:
        if ns > self.ns:
            self.ns = ns
