"""The PIIX4 ACPI power-management block: PM1 event/control, PM timer, GPE0, APM port.

Theory of operation
-------------------
(ACPI 6.4 section 4.8 "ACPI Hardware Features": 4.8.3.1 PM1 event registers,
4.8.3.2 PM1 control, 4.8.3.3 PM timer, 4.8.4.1 GPE0; Intel 82371AB PIIX4
datasheet, function 3.)  The FADT built by ``firmware/acpi.py`` points the OS at
this block, as QEMU's ``pc`` does:

* ``base + 0``: PM1 status (16-bit, write 1 to clear): TMR_STS (bit 0), GBL_STS
  (5), PWRBTN_STS (8), RTC_STS (10), WAK_STS (15);
* ``base + 2``: PM1 enable, the same bit positions;
* ``base + 4``: PM1 control: SCI_EN (bit 0), GBL_RLS (2), SLP_TYP (12:10),
  SLP_EN (13, write-only).  Writing SLP_EN with SLP_TYP 0 -- the ``\\_S5``
  value in the DSDT -- powers the machine off (:attr:`on_power_off`); other
  sleep types are refused (the DSDT offers no S1-S4);
* ``base + 8``: the PM timer, a 24-bit up-counter at 3.579545 MHz computed from
  the virtual :class:`~devices.interfaces.Clock`; TMR_STS sets each time bit 23
  toggles (every 2^23 ticks);
* GPE0 at 0xAFE0: status word (write 1 to clear) then enable word; nothing
  raises a GPE yet;
* APM control port 0xB2: writing the FADT's ACPI_ENABLE (0xF1) sets SCI_EN and
  ACPI_DISABLE (0xF0) clears it -- what QEMU's PIIX4 does instead of an SMI
  handler.  Port 0xB3 (APM status) is a scratch byte.

SCI is the level of (PM1 status & PM1 enable) or (GPE0 status & GPE0 enable),
driven on the IRQ line given (IRQ 9, level/active-high in the MADT).  The block's
base is the PIIX4 PMBA register (config 0x40 of function 00:01.3), which
firmware may move: :meth:`Piix4Pm.relocate`.  Not modelled: the PCI function
itself (``devices/pci.py``), SMI, suspend/resume, the power button.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .interfaces import Clock, IrqLine, NullIrq

PM_TIMER_HZ = 3_579_545
NS_PER_S = 1_000_000_000
PM_BLOCK_SIZE = 0x40
DEFAULT_BASE = 0x600
GPE0_BASE = 0xAFE0
GPE0_LENGTH = 4
APM_CONTROL_PORT = 0xB2
APM_STATUS_PORT = 0xB3
ACPI_ENABLE, ACPI_DISABLE = 0xF1, 0xF0

PM1_STATUS, PM1_ENABLE, PM1_CONTROL, PM_TIMER = 0x0, 0x2, 0x4, 0x8
TMR_STS = 1 << 0
PM1_ENABLE_BITS = TMR_STS | 1 << 5 | 1 << 8 | 1 << 10
SCI_EN = 1 << 0
SLP_TYP_SHIFT = 10
SLP_EN = 1 << 13
PM1_CONTROL_BITS = 0x1C07             # SCI_EN, BM_RLD, GBL_RLS, SLP_TYP (stored)
SLP_TYP_SOFT_OFF = 0                  # PIIX4 / QEMU: \_S5 = {0, 0, 0, 0}
TIMER_MASK = (1 << 24) - 1
TIMER_STATUS_PERIOD = 1 << 23         # TMR_STS sets when bit 23 toggles


def ticks_at(ns: int) -> int:
    return ns * PM_TIMER_HZ // NS_PER_S


def ns_of_tick(ticks: int) -> int:
    return -(-ticks * NS_PER_S // PM_TIMER_HZ)


class Piix4Pm:
    """PM1a event/control, the PM timer, GPE0 and the APM control port (sans-IO)."""

    def __init__(self, clock: Clock, sci: IrqLine | None = None,
                 on_power_off: Callable[[], None] | None = None, *,
                 base: int = DEFAULT_BASE) -> None:
        self.clock = clock
        self.sci = sci or NullIrq()
        self.on_power_off = on_power_off or (lambda: None)
        self.base = base
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.enable = 0
        self.control = 0
        self.gpe_status = 0
        self.gpe_enable = 0
        self.apm_status = 0
        self.timer_periods_seen = self._timer_periods()
        self.sci_level = False
        self.sci.set(False)

    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(self.base, PM_BLOCK_SIZE), (GPE0_BASE, GPE0_LENGTH), (APM_CONTROL_PORT, 2)]

    def relocate(self, base: int) -> None:
        """Firmware wrote a new PMBA; the machine re-registers :meth:`io_ports`."""
        self.base = base

    # --- time ------------------------------------------------------------------------
    def timer(self) -> int:
        return ticks_at(self.clock.now_ns()) & TIMER_MASK

    def _timer_periods(self) -> int:
        return ticks_at(self.clock.now_ns()) // TIMER_STATUS_PERIOD

    def next_deadline_ns(self) -> int | None:
        """When TMR_STS next sets, if it would raise SCI."""
        if not (self.enable & TMR_STS and self.control & SCI_EN) or self.status & TMR_STS:
            return None
        return ns_of_tick((self.timer_periods_seen + 1) * TIMER_STATUS_PERIOD)

    def update(self) -> None:
        periods = self._timer_periods()
        if periods != self.timer_periods_seen:
            self.timer_periods_seen = periods
            self.status |= TMR_STS
        self._update_sci()

    def _update_sci(self) -> None:
        level = bool(self.control & SCI_EN) and bool(
            self.status & self.enable or self.gpe_status & self.gpe_enable)
        if level != self.sci_level:
            self.sci_level = level
            self.sci.set(level)

    # --- ports ---------------------------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        self.update()
        if port == APM_CONTROL_PORT:
            return 0
        if port == APM_STATUS_PORT:
            return self.apm_status
        if GPE0_BASE <= port < GPE0_BASE + GPE0_LENGTH:
            value = self.gpe_status | self.gpe_enable << 16
            offset = port - GPE0_BASE
        else:
            offset = port - self.base
            if offset >= PM_TIMER:
                value, offset = self.timer(), offset - PM_TIMER
            else:
                value = self.status | self.enable << 16 | self.control << 32
        return (value >> 8 * offset) & ((1 << 8 * size) - 1)

    def write(self, port: int, size: int, value: int) -> None:
        self.update()
        if port == APM_CONTROL_PORT:
            self._apm_command(value & 0xFF)
        elif port == APM_STATUS_PORT:
            self.apm_status = value & 0xFF
        elif GPE0_BASE <= port < GPE0_BASE + GPE0_LENGTH:
            self._write_gpe(port - GPE0_BASE, size, value)
        else:
            self._write_pm1(port - self.base, size, value)
        self._update_sci()

    def _apm_command(self, command: int) -> None:
        if command == ACPI_ENABLE:
            self.control |= SCI_EN
        elif command == ACPI_DISABLE:
            self.control &= ~SCI_EN

    def _write_gpe(self, offset: int, size: int, value: int) -> None:
        for index in range(size):
            byte = value >> 8 * index & 0xFF
            where = offset + index
            if where < 2:
                self.gpe_status &= ~(byte << 8 * where)
            elif where < GPE0_LENGTH:
                shift = 8 * (where - 2)
                self.gpe_enable = self.gpe_enable & ~(0xFF << shift) | byte << shift

    def _write_pm1(self, offset: int, size: int, value: int) -> None:
        for index in range(size):
            byte = value >> 8 * index & 0xFF
            where = offset + index
            if where in (0, 1):
                self.status &= ~(byte << 8 * where)
            elif where in (2, 3):
                shift = 8 * (where - 2)
                self.enable = (self.enable & ~(0xFF << shift) | byte << shift) & PM1_ENABLE_BITS
            elif where in (4, 5):
                shift = 8 * (where - 4)
                self.control = (self.control & ~(0xFF << shift) | byte << shift)
                if where == 5 and byte << 8 & SLP_EN:
                    self._sleep((self.control >> SLP_TYP_SHIFT) & 7)
                self.control &= PM1_CONTROL_BITS

    def _sleep(self, sleep_type: int) -> None:
        if sleep_type == SLP_TYP_SOFT_OFF:
            self.on_power_off()
