"""A processor's local APIC in xAPIC mode: the register page at 0xFEE00000.

Theory of operation
-------------------
(Intel SDM vol. 3A chapter 10, "Advanced Programmable Interrupt Controller",
chapter 11 in editions from 2023 on; section numbers below are chapter 10's.)

Registers (10.4.1, table 10-1) are 32 bits wide at 16-byte aligned offsets
of a 4 KiB page; the machine maps the page at :data:`LAPIC_BASE` (the reset
value of IA32_APIC_BASE) and calls :meth:`LocalApic.read`/``write`` with the
offset.  The ones modelled: ID (0x20), version (0x30), TPR (0x80), APR (0x90,
reads 0), PPR (0xA0), EOI (0xB0), LDR (0xD0), DFR (0xE0), spurious-interrupt
vector register SVR (0xF0), the 256-bit ISR, TMR and IRR arrays (eight
registers each from 0x100, 0x180, 0x200), the error status register (0x280),
the ICR (0x300/0x310), the LVT (timer 0x320, thermal 0x330, performance 0x340,
LINT0 0x350, LINT1 0x360, error 0x370, CMCI 0x2F0) and the timer's initial
count (0x380), current count (0x390) and divide configuration (0x3E0).

Accepting and dispatching (10.8): a fixed interrupt sets its vector's IRR bit
(and TMR for level-triggered ones).  The processor-priority register is
PPR = TPR if TPR[7:4] >= ISRV[7:4], else ISRV[7:4] << 4, where ISRV is the
highest in-service vector (10.8.3.1).  The highest IRR vector is presented
to the CPU when its priority class (bits 7:4) is above PPR's.  The CPU's
acknowledge (:meth:`LocalApic.acknowledge`) moves it from IRR to ISR; if
nothing qualifies any more (TPR raised meanwhile) the spurious vector from
SVR is returned and ISR is untouched (10.9).  A write to EOI clears the
highest ISR bit; if that vector's TMR bit is set, the EOI is broadcast to the
I/O APICs (10.8.5).  Vectors 0-15 are illegal: receiving one sets ESR bit 6,
sending one through the ICR sets bit 5 (10.5.3); errors collect internally and
reach the ESR on the next ESR write, and an unmasked LVT error entry then
raises its vector.

Software enable (10.4.7.2): SVR bit 8 clear means software-disabled, the
reset state.  While disabled, every LVT entry's mask bit is forced set, and
no interrupt is presented to the CPU (IRR/ISR are kept).  IA32_APIC_BASE bit
11 (:attr:`LocalApic.global_enable`) turns the APIC off altogether: the 8259's
INTR then reaches the CPU directly.  With the APIC on, the 8259 path is LINT0
programmed as ExtINT and unmasked (virtual-wire mode, MP spec 3.6.2.2):
:meth:`LocalApic.accepts_pic_interrupt` says so, and the CPU then takes its
vector from the 8259's INTA.  As QEMU does, the bootstrap processor's LINT0
resets to ExtINT unmasked so the 8259 keeps working before firmware programs
the APIC; LINT1 (NMI) and ExtINT/NMI messages set :attr:`nmi_pending` /
:attr:`extint_pending` for the CPU loop to consume.

Timer (10.5.4): the count decrements at the APIC bus clock divided by the
divide configuration (bits 3,1:0 of 0x3E0 encode 2, 4, ..., 128, 1); it
starts when the initial count is written (0 stops it), raises the LVT timer
vector on reaching zero, and in periodic mode reloads.  Like ``devices.pit``
nothing ticks: the count is computed from the virtual
:class:`~devices.interfaces.Clock`, :meth:`LocalApic.next_deadline_ns` gives
the next expiry and :meth:`LocalApic.update` raises the interrupt after the
machine advanced the clock (several expiries at once give one IRR bit, as
the hardware's single IRR bit would).  The bus clock is 1 GHz, QEMU's choice.

Interprocessor interrupts (10.6): writing ICR low sends the message; the
self shorthand and fixed/NMI messages to this APIC's own ID are delivered
directly, others go through the :class:`~devices.apicbus.ApicBus`.  INIT and
start-up IPIs to other processors have nobody to start (one CPU).

Not modelled: x2APIC (MSR access), TSC-deadline timer mode, the thermal,
performance and CMCI sources (their LVT entries are plain storage), SMI,
lowest-priority focus processor rules beyond TPR, APIC bus arbitration.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .apicbus import DELIVERY_MODES, PHYSICAL_BROADCAST, ApicBus, DeliveryMode, InterruptMessage
from .interfaces import Clock

LAPIC_BASE = 0xFEE00000
LAPIC_MMIO_SIZE = 0x1000
APIC_BASE_MSR = 0x1B
APIC_BASE_BSP = 1 << 8
APIC_BASE_ENABLE = 1 << 11
APIC_BUS_HZ = 1_000_000_000
NS_PER_S = 1_000_000_000

VERSION = 0x14                  # a Pentium 4 / Xeon class integrated APIC
LVT_ENTRIES = 6                 # timer, thermal, performance, LINT0, LINT1, error

# Register offsets (SDM table 10-1).
REG_ID = 0x020
REG_VERSION = 0x030
REG_TPR = 0x080
REG_APR = 0x090
REG_PPR = 0x0A0
REG_EOI = 0x0B0
REG_RRD = 0x0C0
REG_LDR = 0x0D0
REG_DFR = 0x0E0
REG_SVR = 0x0F0
REG_ISR = 0x100
REG_TMR = 0x180
REG_IRR = 0x200
REG_ESR = 0x280
REG_LVT_CMCI = 0x2F0
REG_ICR_LOW = 0x300
REG_ICR_HIGH = 0x310
REG_LVT_TIMER = 0x320
REG_LVT_THERMAL = 0x330
REG_LVT_PERF = 0x340
REG_LVT_LINT0 = 0x350
REG_LVT_LINT1 = 0x360
REG_LVT_ERROR = 0x370
REG_TIMER_INITIAL = 0x380
REG_TIMER_CURRENT = 0x390
REG_TIMER_DIVIDE = 0x3E0

LVT_REGISTERS = (REG_LVT_TIMER, REG_LVT_THERMAL, REG_LVT_PERF, REG_LVT_LINT0, REG_LVT_LINT1,
                 REG_LVT_ERROR, REG_LVT_CMCI)
# Writable bits of each LVT entry (figure 10-8): vector, delivery mode, polarity,
# trigger mode, mask, timer mode.
LVT_WRITABLE = {
    REG_LVT_TIMER: 0x700FF,
    REG_LVT_THERMAL: 0x107FF,
    REG_LVT_PERF: 0x107FF,
    REG_LVT_LINT0: 0x1A7FF,
    REG_LVT_LINT1: 0x1A7FF,
    REG_LVT_ERROR: 0x100FF,
    REG_LVT_CMCI: 0x107FF,
}
LVT_MASKED = 1 << 16
LVT_LEVEL = 1 << 15
LVT_TIMER_MODE_SHIFT = 17
TIMER_ONE_SHOT, TIMER_PERIODIC, TIMER_TSC_DEADLINE = 0, 1, 2

SVR_ENABLE = 1 << 8
SVR_WRITABLE = 0x1FF            # vector and software enable (focus check/EOI suppression absent)
DFR_FLAT = 0xF
LDR_MASK = 0xFF << 24

# ESR bits (figure 10-9).
ESR_SEND_ILLEGAL_VECTOR = 1 << 5
ESR_RECEIVE_ILLEGAL_VECTOR = 1 << 6
ESR_ILLEGAL_REGISTER = 1 << 7

# ICR fields (figure 10-12).
ICR_VECTOR = 0xFF
ICR_DELIVERY_SHIFT = 8
ICR_LOGICAL = 1 << 11
ICR_LEVEL_ASSERT = 1 << 14
ICR_TRIGGER_LEVEL = 1 << 15
ICR_SHORTHAND_SHIFT = 18
ICR_LOW_WRITABLE = 0xCCFFF
SHORTHAND_NONE, SHORTHAND_SELF, SHORTHAND_ALL, SHORTHAND_OTHERS = 0, 1, 2, 3

# Divide configuration (figure 10-10): bits 3,1:0 -> divisor.
DIVIDE_BY = {0b000: 2, 0b001: 4, 0b010: 8, 0b011: 16, 0b100: 32, 0b101: 64, 0b110: 128,
             0b111: 1}
FIRST_LEGAL_VECTOR = 16


def divide_code(register: int) -> int:
    return (register & 3) | (register >> 1) & 4


class VectorSet:
    """One of the 256-bit ISR/TMR/IRR arrays, readable as eight 32-bit registers."""

    def __init__(self) -> None:
        self.bits = 0

    def __contains__(self, vector: int) -> bool:
        return bool(self.bits >> vector & 1)

    def add(self, vector: int) -> None:
        self.bits |= 1 << vector

    def discard(self, vector: int) -> None:
        self.bits &= ~(1 << vector)

    def highest(self) -> int | None:
        return self.bits.bit_length() - 1 if self.bits else None

    def register(self, index: int) -> int:
        return (self.bits >> 32 * index) & 0xFFFFFFFF


class LocalApic:
    """One xAPIC, offsets relative to :data:`LAPIC_BASE`."""

    def __init__(self, clock: Clock, bus: ApicBus | None = None, apic_id: int = 0, *,
                 bsp: bool = True, bus_hz: int = APIC_BUS_HZ) -> None:
        self.clock = clock
        self.bus = bus or ApicBus()
        self.reset_id = apic_id
        self.bsp = bsp
        self.bus_hz = bus_hz
        self.bus.attach_local(self)
        self.reads: dict[int, Callable[[], int]] = {
            REG_ID: lambda: self.id << 24,
            REG_VERSION: lambda: (LVT_ENTRIES - 1) << 16 | VERSION,
            REG_TPR: lambda: self.tpr,
            REG_APR: lambda: 0,
            REG_RRD: lambda: 0,   # remote read is not supported by xAPICs
            REG_PPR: self.ppr,
            REG_LDR: lambda: self.ldr,
            REG_DFR: lambda: self.dfr,
            REG_SVR: lambda: self.svr,
            REG_ESR: lambda: self.esr,
            REG_ICR_LOW: lambda: self.icr_low,
            REG_ICR_HIGH: lambda: self.icr_high,
            REG_TIMER_INITIAL: lambda: self.initial_count,
            REG_TIMER_CURRENT: self.current_count,
            REG_TIMER_DIVIDE: lambda: self.divide_config,
        }
        for name, base in (("isr", REG_ISR), ("tmr", REG_TMR), ("irr", REG_IRR)):
            for index in range(8):
                self.reads[base + 0x10 * index] = partial(self._read_array, name, index)
        for register in LVT_REGISTERS:
            self.reads[register] = partial(self.lvt_entry, register)
        self.writes: dict[int, Callable[[int], None]] = {
            REG_ID: self._write_id,
            REG_TPR: self._write_tpr,
            REG_EOI: lambda value: self.end_of_interrupt(),
            REG_LDR: self._write_ldr,
            REG_DFR: self._write_dfr,
            REG_SVR: self._write_svr,
            REG_ESR: self._write_esr,
            REG_ICR_LOW: self._write_icr_low,
            REG_ICR_HIGH: self._write_icr_high,
            REG_TIMER_INITIAL: self._write_initial_count,
            REG_TIMER_DIVIDE: self._write_divide,
        }
        for register in LVT_REGISTERS:
            self.writes[register] = partial(self._write_lvt, register)
        self.reset()

    def reset(self) -> None:
        """Power-on / INIT state (SDM 10.4.7.1)."""
        self.id = self.reset_id
        self.apic_base = LAPIC_BASE | APIC_BASE_ENABLE | (APIC_BASE_BSP if self.bsp else 0)
        self.tpr = 0
        self.ldr = 0
        self.dfr = 0xFFFFFFFF
        self.svr = 0xFF
        self.isr, self.tmr, self.irr = VectorSet(), VectorSet(), VectorSet()
        self.esr = 0
        self.pending_errors = 0
        self.icr_low = 0
        self.icr_high = 0
        self.lvt = dict.fromkeys(LVT_REGISTERS, LVT_MASKED)
        if self.bsp:  # QEMU: virtual-wire LINT0 so the 8259 works before firmware sets it up
            self.lvt[REG_LVT_LINT0] = DeliveryMode.EXTINT << 8
        self.initial_count = 0
        self.divide_config = 0
        self.timer_start_ns = 0
        self.timer_start_count = 0      # the count at timer_start_ns
        self.last_update_ns = self.clock.now_ns()
        self.nmi_pending = 0
        self.extint_pending = False
        self.init_received = 0

    def mmio_range(self) -> tuple[int, int]:
        return self.apic_base & ~0xFFF, LAPIC_MMIO_SIZE

    # --- state the CPU loop reads --------------------------------------------
    @property
    def global_enable(self) -> bool:
        return bool(self.apic_base & APIC_BASE_ENABLE)

    @property
    def software_enabled(self) -> bool:
        return bool(self.svr & SVR_ENABLE)

    def write_apic_base_msr(self, value: int) -> None:
        """WRMSR 0x1B: base address and global enable (BSP flag is read-only)."""
        self.apic_base = (value & ~(APIC_BASE_BSP | 0x6FF)) | (self.apic_base & APIC_BASE_BSP)
        if not self.global_enable:  # going globally off resets the APIC state (10.4.3)
            base = self.apic_base
            self.reset()
            self.apic_base = base

    def ppr(self) -> int:
        isrv = self.isr.highest() or 0
        return self.tpr if self.tpr & 0xF0 >= isrv & 0xF0 else isrv & 0xF0

    def arbitration_priority(self) -> int:
        return self.tpr

    def _deliverable(self) -> int | None:
        vector = self.irr.highest()
        if vector is None or vector & 0xF0 <= self.ppr() & 0xF0:
            return None
        return vector

    def interrupt_pending(self) -> bool:
        """Whether a fixed interrupt should be presented to the CPU (INTR)."""
        return (self.global_enable and self.software_enabled
                and self._deliverable() is not None)

    def accepts_pic_interrupt(self) -> bool:
        """Whether the 8259's INTR reaches the CPU: APIC off, or LINT0 is an open ExtINT."""
        if not self.global_enable:
            return True
        lint0 = self.lvt[REG_LVT_LINT0]
        return not lint0 & LVT_MASKED and (lint0 >> 8) & 7 == DeliveryMode.EXTINT

    def acknowledge(self) -> int:
        """The CPU's interrupt acknowledge: IRR -> ISR, or the spurious vector (10.9)."""
        vector = self._deliverable()
        if vector is None:
            return self.svr & 0xFF
        self.irr.discard(vector)
        self.isr.add(vector)
        return vector

    def end_of_interrupt(self) -> None:
        vector = self.isr.highest()
        if vector is None:
            return
        self.isr.discard(vector)
        if vector in self.tmr:
            self.bus.broadcast_eoi(vector)

    # --- the message side -------------------------------------------------------
    def matches(self, destination: int, logical: bool) -> bool:
        """Destination check (SDM 10.6.2): physical ID or the flat/cluster logical model."""
        if not logical:
            return destination in (PHYSICAL_BROADCAST, self.id)
        logical_id = self.ldr >> 24
        if self.dfr >> 28 == DFR_FLAT:
            return bool(destination & logical_id)
        if destination == PHYSICAL_BROADCAST:
            return True
        return (destination >> 4 == logical_id >> 4
                and bool(destination & logical_id & 0xF))

    def accept(self, message: InterruptMessage) -> None:
        mode = message.delivery_mode
        if mode == DeliveryMode.NMI:
            self.nmi_pending += 1
        elif mode == DeliveryMode.EXTINT:
            self.extint_pending = True
        elif mode == DeliveryMode.INIT:
            self.init_received += 1
        elif mode in (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY):
            self.raise_vector(message.vector, level=message.level_triggered)
        # SMI and start-up have no effect on a running single processor.

    def raise_vector(self, vector: int, *, level: bool = False) -> None:
        """Accept a fixed interrupt into IRR (10.8.4)."""
        if vector < FIRST_LEGAL_VECTOR:
            self._error(ESR_RECEIVE_ILLEGAL_VECTOR)
            return
        self.irr.add(vector)
        if level:
            self.tmr.add(vector)
        else:
            self.tmr.discard(vector)

    def _raise_lvt(self, register: int) -> None:
        entry = self.lvt[register]
        if entry & LVT_MASKED:
            return
        mode = (entry >> 8) & 7
        if mode == DeliveryMode.NMI:
            self.nmi_pending += 1
        elif mode == DeliveryMode.EXTINT:
            self.extint_pending = True
        elif mode == DeliveryMode.FIXED:
            self.raise_vector(entry & 0xFF, level=bool(entry & LVT_LEVEL))

    def set_lint(self, pin: int, level: bool) -> None:
        """An edge on LINT0/LINT1 (pin 0 or 1) from outside the processor."""
        if level:
            self._raise_lvt((REG_LVT_LINT0, REG_LVT_LINT1)[pin])

    def _error(self, bits: int) -> None:
        self.pending_errors |= bits
        self._raise_lvt(REG_LVT_ERROR)

    # --- MMIO ----------------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        reader = self.reads.get(offset & 0xFF0)
        if reader is None:
            if offset & 0xFF0 != REG_EOI:  # EOI is write-only but reads as 0 quietly
                self._error(ESR_ILLEGAL_REGISTER)
            return 0
        value = reader()
        return (value >> 8 * (offset & 3)) & ((1 << 8 * size) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        if offset & 0xF:
            return  # registers are written as aligned dwords only
        writer = self.writes.get(offset)
        if writer is None:
            if offset not in self.reads:
                self._error(ESR_ILLEGAL_REGISTER)
            return  # read-only registers ignore writes
        writer(value & 0xFFFFFFFF)

    def _read_array(self, name: str, index: int) -> int:
        array: VectorSet = getattr(self, name)
        return array.register(index)

    def lvt_entry(self, register: int) -> int:
        return self.lvt[register]

    def _write_id(self, value: int) -> None:
        self.id = value >> 24

    def _write_tpr(self, value: int) -> None:
        self.tpr = value & 0xFF

    def _write_ldr(self, value: int) -> None:
        self.ldr = value & LDR_MASK

    def _write_dfr(self, value: int) -> None:
        self.dfr = value | 0x0FFFFFFF

    def _write_svr(self, value: int) -> None:
        self.svr = value & SVR_WRITABLE
        if not self.software_enabled:
            for register in LVT_REGISTERS:
                self.lvt[register] |= LVT_MASKED

    def _write_esr(self, value: int) -> None:
        self.esr, self.pending_errors = self.pending_errors, 0

    def _write_lvt(self, register: int, value: int) -> None:
        value &= LVT_WRITABLE[register]
        if not self.software_enabled:
            value |= LVT_MASKED
        if register == REG_LVT_TIMER:
            self.update()
        self.lvt[register] = value

    def _write_icr_high(self, value: int) -> None:
        self.icr_high = value & 0xFF000000

    def _write_icr_low(self, value: int) -> None:
        self.icr_low = value & ICR_LOW_WRITABLE
        self.send_ipi()

    def send_ipi(self) -> None:
        """Send the message the ICR describes (10.6.1)."""
        icr = self.icr_low
        mode = (icr >> ICR_DELIVERY_SHIFT) & 7
        if mode not in DELIVERY_MODES:
            return
        delivery = DeliveryMode(mode)
        level = bool(icr & ICR_TRIGGER_LEVEL)
        if delivery == DeliveryMode.INIT and level and not icr & ICR_LEVEL_ASSERT:
            return  # INIT level de-assert: only re-synchronises arbitration IDs
        vector = icr & ICR_VECTOR
        if delivery in (DeliveryMode.FIXED, DeliveryMode.LOWEST_PRIORITY) and (
                vector < FIRST_LEGAL_VECTOR):
            self._error(ESR_SEND_ILLEGAL_VECTOR)
            return
        shorthand = (icr >> ICR_SHORTHAND_SHIFT) & 3
        message = InterruptMessage(vector, delivery, self.icr_high >> 24,
                                   bool(icr & ICR_LOGICAL), level)
        if shorthand == SHORTHAND_SELF:
            self.accept(message)
            return
        for target in self.bus.targets(message) if shorthand == SHORTHAND_NONE else (
                self.bus.local_apics):
            if target is self and shorthand == SHORTHAND_OTHERS:
                continue
            target.accept(message)

    # --- timer ----------------------------------------------------------------------
    def _timer_mode(self) -> int:
        return (self.lvt[REG_LVT_TIMER] >> LVT_TIMER_MODE_SHIFT) & 3

    def _divisor(self) -> int:
        return DIVIDE_BY[divide_code(self.divide_config)]

    def _ticks_since_start(self, now_ns: int) -> int:
        return (now_ns - self.timer_start_ns) * self.bus_hz // (NS_PER_S * self._divisor())

    def _ticks_to_ns(self, ticks: int) -> int:
        """The first nanosecond after the timer start at which ``ticks`` have elapsed."""
        return self.timer_start_ns + -(-ticks * NS_PER_S * self._divisor() // self.bus_hz)

    def current_count(self) -> int:
        if not self.initial_count:
            return 0
        ticks = self._ticks_since_start(self.clock.now_ns())
        if ticks < self.timer_start_count:
            return self.timer_start_count - ticks
        if self._timer_mode() != TIMER_PERIODIC:
            return 0
        phase = (ticks - self.timer_start_count) % self.initial_count
        return self.initial_count - phase

    def _expiry_after(self, after_ns: int) -> int | None:
        """Virtual time of the first expiry strictly after ``after_ns``."""
        if not self.initial_count:
            return None
        first = self.timer_start_count
        if after_ns < self.timer_start_ns:
            return self._ticks_to_ns(first)
        ticks = self._ticks_since_start(after_ns)
        if ticks < first:
            return self._ticks_to_ns(first)
        if self._timer_mode() != TIMER_PERIODIC:
            return None
        periods = (ticks - first) // self.initial_count + 1
        return self._ticks_to_ns(first + periods * self.initial_count)

    def next_deadline_ns(self) -> int | None:
        if self.lvt[REG_LVT_TIMER] & LVT_MASKED:
            return None
        return self._expiry_after(self.last_update_ns)

    def update(self) -> None:
        """Raise the timer vector if the count reached zero since the last update."""
        now = self.clock.now_ns()
        expiry = self._expiry_after(self.last_update_ns)
        self.last_update_ns = now
        if expiry is not None and expiry <= now:
            self._raise_lvt(REG_LVT_TIMER)

    def _restart_timer(self, count: int) -> None:
        self.timer_start_ns = self.clock.now_ns()
        self.timer_start_count = count
        self.last_update_ns = self.timer_start_ns

    def _write_initial_count(self, value: int) -> None:
        self.update()
        self.initial_count = value
        self._restart_timer(value)

    def _write_divide(self, value: int) -> None:
        self.update()
        count = self.current_count()
        self.divide_config = value & 0xB
        if self.initial_count:
            self._restart_timer(count)  # the count continues at the new rate
