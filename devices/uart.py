"""The National Semiconductor 16550A UART (the PC's COM1 at 0x3F8/IRQ 4, COM2 at 0x2F8/IRQ 3).

Theory of operation
-------------------
Eight registers at ``base+0..7``; with LCR bit 7 (DLAB) set, offsets 0 and 1 are
the baud-rate divisor latch instead of RBR/THR and IER:

====  ==================  =========================================
 off   read                write
====  ==================  =========================================
 0     RBR receive         THR transmit
 1     IER                 IER (RX data, THR empty, line status, modem status)
 2     IIR (FIFO bits)     FCR (enable, clear RX/TX, trigger level)
 3     LCR                 LCR
 4     MCR                 MCR (DTR, RTS, OUT1, OUT2, loopback)
 5     LSR (DR, OE, THRE, TEMT)
 6     MSR (delta bits, CTS, DSR, RI, DCD)
 7     SCR scratch         SCR
====  ==================  =========================================

Transmission is instantaneous: a byte written to THR goes to the sink at once
and THR/TSR are empty again, so THRE and TEMT always read 1 (baud rates and
line settings are stored, not simulated).  In loopback (MCR bit 4) transmitted
bytes arrive in the receiver instead and the modem inputs mirror the modem
outputs.  Received bytes come from :meth:`Uart16550.feed` (the host terminal)
into a 16-byte FIFO (1 byte in 16450 mode); overflow sets OE.  A host that
holds more input than the receiver takes gives a ``refill(space) -> bytes``
source: when the guest reads RBR the receiver refills from it at once (as
QEMU's character back ends do when the UART can receive again), so pasted text
arrives as fast as the guest reads it instead of a byte per host poll.

Interrupts, highest priority first, as the IIR reports them: receiver line
status (OE), received data available, THR empty (raised when THR empties or
when the interrupt is enabled while THR is empty; cleared by reading IIR or
writing THR), modem status.  As on a PC's serial card the IRQ line is driven
only while MCR OUT2 is set.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from .interfaces import IrqLine, NullIrq

COM1 = (0x3F8, 4)
COM2 = (0x2F8, 3)
FIFO_SIZE = 16

IER_RX = 0x01
IER_THRE = 0x02
IER_LINE = 0x04
IER_MODEM = 0x08
IIR_NONE = 0x01
IIR_LINE = 0x06
IIR_RX = 0x04
IIR_THRE = 0x02
IIR_MODEM = 0x00
IIR_FIFO_ENABLED = 0xC0
FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
LCR_DLAB = 0x80
MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
LSR_DR = 0x01
LSR_OE = 0x02
LSR_THRE = 0x20
LSR_TEMT = 0x40
MSR_DCTS = 0x01
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_CONNECTED = MSR_CTS | MSR_DSR | MSR_DCD  # a terminal is attached


class Uart16550:
    def __init__(self, base: int = COM1[0], irq: IrqLine | None = None,
                 sink: Callable[[bytes], None] | None = None,
                 refill: Callable[[int], bytes] | None = None) -> None:
        self.base = base
        self.irq = irq or NullIrq()
        self.sink = sink
        self.refill = refill
        self.transcript = bytearray()
        self.reset()

    def reset(self) -> None:
        self.rx: deque[int] = deque()
        self.ier = 0
        self.lcr = 0x03
        self.mcr = 0
        self.scr = 0
        self.divisor = 12  # 9600 baud
        self.fifo_enabled = False
        self.fcr = 0
        self.overrun = False
        self.thre_pending = False
        self.msr_deltas = 0
        self._update_irq()

    # --- host side --------------------------------------------------------
    def feed(self, data: bytes) -> int:
        """Bytes typed at the terminal; returns how many fit the receiver."""
        taken = 0
        for byte in data:
            if not self._receive(byte):
                break
            taken += 1
        self._update_irq()
        return taken

    def rx_space(self) -> int:
        return (FIFO_SIZE if self.fifo_enabled else 1) - len(self.rx)

    def _receive(self, byte: int) -> bool:
        if self.rx_space() <= 0:
            self.overrun = True
            return False
        self.rx.append(byte)
        return True

    # --- PortDevice --------------------------------------------------------
    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(self.base, 8)]

    def read(self, port: int, size: int) -> int:
        offset = port - self.base
        dlab = self.lcr & LCR_DLAB
        if offset == 0:
            if dlab:
                return self.divisor & 0xFF
            value = self.rx.popleft() if self.rx else 0
            if self.refill is not None and not self.mcr & MCR_LOOP:
                for byte in self.refill(self.rx_space()):
                    self.rx.append(byte)
            self._update_irq()
            return value
        if offset == 1:
            return self.divisor >> 8 if dlab else self.ier
        if offset == 2:
            iir = self._interrupt_id()
            if iir == IIR_THRE:
                self.thre_pending = False
                self._update_irq()
            return iir | (IIR_FIFO_ENABLED if self.fifo_enabled else 0)
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:
            lsr = LSR_THRE | LSR_TEMT | (LSR_DR if self.rx else 0) | (LSR_OE if self.overrun else 0)
            self.overrun = False
            self._update_irq()
            return lsr
        if offset == 6:
            value = self._modem_inputs() | self.msr_deltas
            self.msr_deltas = 0
            self._update_irq()
            return value
        return self.scr

    def write(self, port: int, size: int, value: int) -> None:
        offset = port - self.base
        value &= 0xFF
        dlab = self.lcr & LCR_DLAB
        if offset == 0:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._transmit(value)
        elif offset == 1:
            if dlab:
                self.divisor = (self.divisor & 0xFF) | value << 8
            else:
                if value & IER_THRE and not self.ier & IER_THRE:
                    self.thre_pending = True  # THR is always empty here
                self.ier = value & 0x0F
        elif offset == 2:
            self.fcr = value
            self.fifo_enabled = bool(value & FCR_ENABLE)
            if value & FCR_CLEAR_RX or not self.fifo_enabled:
                self.rx.clear()
        elif offset == 3:
            self.lcr = value
        elif offset == 4:
            before = self._modem_inputs()
            self.mcr = value & 0x1F
            changed = before ^ self._modem_inputs()
            self.msr_deltas |= (changed >> 4) & 0x0F & ~(MSR_RI >> 4)
        elif offset == 7:
            self.scr = value
        self._update_irq()

    # --- internals -------------------------------------------------------
    def _transmit(self, value: int) -> None:
        if self.mcr & MCR_LOOP:
            self._receive(value)
        else:
            self.transcript.append(value)
            if self.sink is not None:
                self.sink(bytes((value,)))
        self.thre_pending = True  # the byte left at once: THR is empty again

    def _modem_inputs(self) -> int:
        if not self.mcr & MCR_LOOP:
            return MSR_CONNECTED
        mcr = self.mcr
        return ((MSR_CTS if mcr & MCR_RTS else 0) | (MSR_DSR if mcr & MCR_DTR else 0)
                | (MSR_RI if mcr & MCR_OUT1 else 0) | (MSR_DCD if mcr & MCR_OUT2 else 0))

    def _interrupt_id(self) -> int:
        if self.ier & IER_LINE and self.overrun:
            return IIR_LINE
        if self.ier & IER_RX and self.rx:
            return IIR_RX
        if self.ier & IER_THRE and self.thre_pending:
            return IIR_THRE
        if self.ier & IER_MODEM and self.msr_deltas:
            return IIR_MODEM
        return IIR_NONE

    def _update_irq(self) -> None:
        # OUT2 gates the card's IRQ driver; in loopback the line is disconnected.
        drive = bool(self.mcr & MCR_OUT2) and not self.mcr & MCR_LOOP
        self.irq.set(drive and self._interrupt_id() != IIR_NONE)
