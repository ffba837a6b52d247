"""The PC's pair of Intel 8259A programmable interrupt controllers (PIC).

Theory of operation
-------------------
Each 8259A has eight request inputs (IR0..IR7) and three 8-bit registers:

* IRR (interrupt request register): inputs asking for service.  In edge mode a
  rising edge sets the bit and it stays set until acknowledged; in level mode
  (8259A LTIM, or per line through the PIIX ELCR registers at 0x4D0/0x4D1) the
  bit follows the line;
* IMR (interrupt mask register, OCW1): masked requests are not forwarded;
* ISR (in-service register): requests acknowledged by the CPU and not yet
  ended by an EOI.

A request is forwarded to the CPU when it is unmasked and of higher priority
than everything in service (except in special mask mode, where only the
in-service level itself is blocked).  Priority is a rotation: ``lowest_priority``
names the lowest level, the one after it is the highest.  The CPU's INTA cycle
(:meth:`PicPair.acknowledge`) moves the winner from IRR to ISR (or, in
auto-EOI mode, just clears IRR) and returns ``ICW2 base + level``.  A request
that vanished between INT and INTA yields the spurious vector IR7 without
touching ISR.

The slave's INT output is wired to the master's IR2 (cascade): when the master
picks IR2 the slave supplies the vector.

Programming (ports 0x20/0x21 master, 0xA0/0xA1 slave):

* command port, bit 4 set: ICW1 (starts initialisation: clears IMR and ISR,
  resets rotation; bit 0 = ICW4 follows, bit 1 = single, bit 3 = level mode);
  then ICW2 (vector base), ICW3 (cascade, unless single) and ICW4 (bit 1
  auto-EOI) arrive on the data port;
* command port, bits 4:3 = 00: OCW2 (EOI, specific EOI, rotations, set
  priority); bits 4:3 = 01: OCW3 (read IRR/ISR select, poll, special mask);
* data port: OCW1 (IMR) once initialised; reads return IMR;
* command port reads return IRR or ISR as OCW3 selected, or the poll byte.

Not modelled: buffered mode, special fully nested mode, the 8080/8085 call
sequences (ICW4 bit 0 is accepted and ignored).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

MASTER_COMMAND_PORT = 0x20
SLAVE_COMMAND_PORT = 0xA0
ELCR_PORT = 0x4D0  # 0x4D0 master, 0x4D1 slave (PIIX edge/level control)
CASCADE_IRQ = 2
SPURIOUS_LEVEL = 7

# Bits of ICW1 / OCW2 / OCW3 as the datasheet names them.
ICW1_SELECT = 0x10
ICW1_IC4 = 0x01
ICW1_SINGLE = 0x02
ICW1_LTIM = 0x08
ICW4_AEOI = 0x02
OCW3_SELECT = 0x08
OCW3_RIS = 0x01
OCW3_RR = 0x02
OCW3_POLL = 0x04
OCW3_SMM = 0x20
OCW3_ESMM = 0x40

# Levels from highest to lowest priority, for each choice of the lowest-priority level.
PRIORITY_ORDERS = tuple(tuple((lowest + 1 + i) & 7 for i in range(8)) for lowest in range(8))

# ELCR bits that may be set: IRQ 0, 1, 2 (master) and 8, 13 (slave) are always edge.
ELCR_WRITABLE = (0xF8, 0xDE)


class Pic8259:
    """One 8259A (sans-IO); the pair wiring lives in :class:`PicPair`."""

    def __init__(self, name: str, elcr_mask: int) -> None:
        self.name = name
        self.elcr_mask = elcr_mask
        self.reset()

    def reset(self) -> None:
        self.irr = 0
        self.isr = 0
        self.imr = 0
        self.lines = 0            # current input levels
        self.vector_base = 0
        self.lowest_priority = 7  # rotation: level 0 is highest
        self.read_isr = False
        self.poll_pending = False
        self.special_mask = False
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.level_triggered = False  # ICW1 LTIM: every input level-sensitive
        self.elcr = 0
        self.init_step = 0        # 0 = operational; 2/3/4 = waiting for ICWn
        self.expect_icw3 = False
        self.expect_icw4 = False

    # --- input lines ------------------------------------------------------
    def _is_level(self, irq: int) -> bool:
        return self.level_triggered or bool(self.elcr & (1 << irq))

    def set_irq(self, irq: int, level: bool) -> None:
        bit = 1 << irq
        if self.level_triggered or self.elcr & bit:
            if level:
                self.irr |= bit
            else:
                self.irr &= ~bit
        elif level and not self.lines & bit:
            self.irr |= bit
        if level:
            self.lines |= bit
        else:
            self.lines &= ~bit

    # --- priority resolution ----------------------------------------------
    def _priority_order(self) -> tuple[int, ...]:
        return PRIORITY_ORDERS[self.lowest_priority]

    def _highest(self, bits: int) -> int | None:
        for level in self._priority_order():
            if bits & (1 << level):
                return level
        return None

    def pending_irq(self) -> int | None:
        """The level that would be forwarded to the CPU now, or None.

        Bits are rotated so that the highest-priority level is bit 0; the lowest set
        bit is then the most urgent request (or in-service level).
        """
        requests = self.irr & ~self.imr
        if not requests:
            return None
        first = (self.lowest_priority + 1) & 7
        if self.special_mask:  # in-service levels only block themselves
            requests &= ~self.isr
            if not requests:
                return None
        rotated = ((requests >> first) | (requests << (8 - first))) & 0xFF
        request_rank = (rotated & -rotated).bit_length() - 1
        if self.isr and not self.special_mask:
            in_service = ((self.isr >> first) | (self.isr << (8 - first))) & 0xFF
            if (in_service & -in_service).bit_length() - 1 <= request_rank:
                return None  # an equal or higher priority level is in service
        return (request_rank + first) & 7

    def acknowledge_level(self, level: int) -> None:
        """INTA for ``level``: IRR -> ISR (or just clear IRR in auto-EOI mode)."""
        bit = 1 << level
        if not self._is_level(level):
            self.irr &= ~bit
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.lowest_priority = level
        else:
            self.isr |= bit

    # --- port interface ---------------------------------------------------
    def write_command(self, value: int) -> None:
        if value & ICW1_SELECT:
            self._start_init(value)
        elif value & OCW3_SELECT:
            self._write_ocw3(value)
        else:
            self._write_ocw2(value)

    def write_data(self, value: int) -> None:
        if self.init_step == 2:
            self.vector_base = value & 0xF8
            self.init_step = 3 if self.expect_icw3 else (4 if self.expect_icw4 else 0)
        elif self.init_step == 3:
            self.init_step = 4 if self.expect_icw4 else 0  # cascade wiring is fixed
        elif self.init_step == 4:
            self.auto_eoi = bool(value & ICW4_AEOI)
            self.init_step = 0
        else:
            self.imr = value

    def read_command(self) -> int:
        if self.poll_pending:
            self.poll_pending = False
            level = self.pending_irq()
            if level is None:
                return 0
            self.acknowledge_level(level)
            return 0x80 | level
        return self.isr if self.read_isr else self.irr

    def read_data(self) -> int:
        return self.imr

    def _start_init(self, value: int) -> None:
        # Edge sense is reset: only lines held high in level mode stay requested.
        self.irr = self.lines if value & ICW1_LTIM else 0
        self.imr = 0
        self.isr = 0
        self.lowest_priority = 7
        self.special_mask = False
        self.read_isr = False
        self.poll_pending = False
        self.auto_eoi = False
        self.rotate_on_auto_eoi = False
        self.level_triggered = bool(value & ICW1_LTIM)
        self.expect_icw3 = not value & ICW1_SINGLE
        self.expect_icw4 = bool(value & ICW1_IC4)
        self.init_step = 2

    def _write_ocw2(self, value: int) -> None:
        operation = value >> 5
        level = value & 7
        in_service = self._highest(self.isr)
        if operation == 0b001:          # non-specific EOI
            if in_service is not None:
                self.isr &= ~(1 << in_service)
        elif operation == 0b101:        # rotate on non-specific EOI
            if in_service is not None:
                self.isr &= ~(1 << in_service)
                self.lowest_priority = in_service
        elif operation == 0b011:        # specific EOI
            self.isr &= ~(1 << level)
        elif operation == 0b111:        # rotate on specific EOI
            self.isr &= ~(1 << level)
            self.lowest_priority = level
        elif operation == 0b110:        # set priority
            self.lowest_priority = level
        elif operation == 0b100:
            self.rotate_on_auto_eoi = True
        elif operation == 0b000:
            self.rotate_on_auto_eoi = False
        # 0b010: no operation

    def _write_ocw3(self, value: int) -> None:
        if value & OCW3_POLL:
            self.poll_pending = True
        if value & OCW3_RR:
            self.read_isr = bool(value & OCW3_RIS)
        if value & OCW3_ESMM:
            self.special_mask = bool(value & OCW3_SMM)


@dataclass
class PicIrqLine:
    """An :class:`~devices.interfaces.IrqLine` into one input of the pair (IRQ 0..15)."""

    pair: PicPair
    irq: int

    def set(self, level: bool) -> None:
        self.pair.set_irq(self.irq, level)


class PicPair:
    """Master + slave 8259A as wired in a PC/AT, plus the PIIX ELCR registers."""

    def __init__(self) -> None:
        self.master = Pic8259("master", ELCR_WRITABLE[0])
        self.slave = Pic8259("slave", ELCR_WRITABLE[1])
        # The INT output the CPU sees changed; the machine may poll .interrupt_pending.
        self.changed = False

    def reset(self) -> None:
        self.master.reset()
        self.slave.reset()

    def irq_line(self, irq: int) -> PicIrqLine:
        if not 0 <= irq < 16 or irq == CASCADE_IRQ:
            raise ValueError(f"IRQ {irq} is not a wirable 8259 input")
        return PicIrqLine(self, irq)

    def set_irq(self, irq: int, level: bool) -> None:
        chip = self.master if irq < 8 else self.slave
        line = irq & 7
        if bool(chip.lines >> line & 1) == level:
            return  # no edge, no level change: nothing can move
        chip.set_irq(line, level)
        if chip is self.slave:
            self._update_cascade()
        self.changed = True

    def _update_cascade(self) -> None:
        """The slave's INT output drives the master's IR2 (kept current on every change)."""
        self.master.set_irq(CASCADE_IRQ, self.slave.pending_irq() is not None)

    @property
    def interrupt_pending(self) -> bool:
        """The master's INT output: the CPU should take an interrupt when IF=1."""
        return self.master.pending_irq() is not None

    def acknowledge(self) -> int:
        """The CPU's INTA cycle: returns the vector to deliver."""
        level = self.master.pending_irq()
        if level is None:  # request withdrawn: spurious IR7, ISR untouched
            return self.master.vector_base + SPURIOUS_LEVEL
        self.master.acknowledge_level(level)
        if level != CASCADE_IRQ:
            return self.master.vector_base + level
        slave_level = self.slave.pending_irq()
        if slave_level is None:
            return self.slave.vector_base + SPURIOUS_LEVEL
        self.slave.acknowledge_level(slave_level)
        self._update_cascade()
        return self.slave.vector_base + slave_level

    # --- PortDevice --------------------------------------------------------
    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(MASTER_COMMAND_PORT, 2), (SLAVE_COMMAND_PORT, 2), (ELCR_PORT, 2)]

    def _chip(self, port: int) -> Pic8259:
        return self.slave if port & 0x80 else self.master

    def read(self, port: int, size: int) -> int:
        if port in (ELCR_PORT, ELCR_PORT + 1):
            return (self.master.elcr if port == ELCR_PORT else self.slave.elcr)
        chip = self._chip(port)
        value = chip.read_data() if port & 1 else chip.read_command()
        self._update_cascade()
        return value

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port in (ELCR_PORT, ELCR_PORT + 1):
            chip = self.master if port == ELCR_PORT else self.slave
            chip.elcr = value & chip.elcr_mask
        else:
            chip = self._chip(port)
            if port & 1:
                chip.write_data(value)
            else:
                chip.write_command(value)
        self._update_cascade()
        self.changed = True
