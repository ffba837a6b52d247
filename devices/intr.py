"""The PC's interrupt wiring: ISA lines to both the 8259 pair and the I/O APIC, and
the one question the CPU loop asks ("is INTR up, and which vector?").

Theory of operation
-------------------
On QEMU's ``pc`` (and on real PIIX/ICH boards) each ISA interrupt line reaches
both interrupt controllers: 8259 input *n* and I/O APIC pin *n*, except the PIT's
IRQ 0, which arrives on I/O APIC pin 2 (the MADT/MP "interrupt source override";
the 8259 cascade owns pin 2's ISA number).  :class:`IsaIrq` is that fan-out as
one :class:`~devices.interfaces.IrqLine`.  Which controller the guest uses is its
own choice: it masks the 8259 (OCW1) and unmasks redirection entries, or leaves
the I/O APIC masked, as it boots; nothing here switches modes.

The processor sees one INTR.  :class:`InterruptRouter` answers for it (SDM vol.
3A 10.1 / 10.8, MP spec 3.6.2 virtual-wire mode):

* a fixed interrupt the local APIC would present (IRR above PPR, APIC enabled)
  wins and is acknowledged by the local APIC;
* otherwise the 8259's INTR counts when it reaches the CPU: the local APIC is
  globally disabled, or its LINT0 is an unmasked ExtINT entry, or an ExtINT
  message came through the I/O APIC; the vector then comes from the 8259's INTA.

Not modelled: NMI delivery (``LocalApic.nmi_pending`` is for the CPU loop), SMI.
"""

from __future__ import annotations

from .interfaces import IrqLine
from .ioapic import IoApic
from .lapic import LocalApic
from .pic import PicPair

PIT_IRQ = 0
PIT_GSI = 2     # the override every PC firmware table publishes
ISA_IRQS = 16


class IsaIrq:
    """One ISA interrupt line wired to the 8259 pair and to the I/O APIC."""

    def __init__(self, pic: PicPair, ioapic: IoApic, irq: int) -> None:
        self.pic_line = pic.irq_line(irq)
        self.ioapic = ioapic
        self.gsi = PIT_GSI if irq == PIT_IRQ else irq

    def set(self, level: bool) -> None:
        self.pic_line.set(level)
        self.ioapic.set_irq(self.gsi, level)


class InterruptRouter:
    """The CPU's view of INTR for one processor."""

    def __init__(self, pic: PicPair, ioapic: IoApic, lapic: LocalApic) -> None:
        self.pic = pic
        self.ioapic = ioapic
        self.lapic = lapic

    def isa_line(self, irq: int) -> IrqLine:
        if not 0 <= irq < ISA_IRQS:
            raise ValueError(f"ISA IRQ {irq} does not exist")
        return IsaIrq(self.pic, self.ioapic, irq)

    def _pic_reaches_cpu(self) -> bool:
        return self.lapic.accepts_pic_interrupt() or self.lapic.extint_pending

    @property
    def interrupt_pending(self) -> bool:
        if self.lapic.interrupt_pending():
            return True
        return self._pic_reaches_cpu() and self.pic.interrupt_pending

    def acknowledge(self) -> int:
        """The INTA cycle: the vector the CPU takes (call only when pending)."""
        if self.lapic.interrupt_pending():
            return self.lapic.acknowledge()
        self.lapic.extint_pending = False
        return self.pic.acknowledge()
