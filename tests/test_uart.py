"""16550A UART by register pokes: transmit, receive, FIFO, loopback, interrupts."""

from __future__ import annotations

from devices.interfaces import NullIrq
from devices.uart import Uart16550

BASE = 0x3F8


def make() -> tuple[Uart16550, NullIrq, bytearray]:
    out = bytearray()
    irq = NullIrq()
    return Uart16550(BASE, irq, out.extend), irq, out


def test_transmit_goes_to_the_sink_and_thr_is_always_empty() -> None:
    uart, _, out = make()
    for byte in b"hi":
        uart.write(BASE, 1, byte)
    assert out == b"hi" and uart.transcript == b"hi"
    assert uart.read(BASE + 5, 1) & 0x60 == 0x60


def test_divisor_latch() -> None:
    uart, _, out = make()
    uart.write(BASE + 3, 1, 0x83)
    uart.write(BASE, 1, 0x01)
    uart.write(BASE + 1, 1, 0x00)
    assert uart.read(BASE, 1) == 0x01 and uart.read(BASE + 1, 1) == 0
    uart.write(BASE + 3, 1, 0x03)
    uart.write(BASE, 1, ord("x"))
    assert out == b"x" and uart.divisor == 1


def test_receive_with_fifo_and_overrun() -> None:
    uart, _, _ = make()
    assert uart.feed(b"ab") == 1          # 16450 mode: one byte holding register
    assert uart.read(BASE + 5, 1) & 0x03 == 0x03  # DR + OE
    assert uart.read(BASE, 1) == ord("a")
    uart.write(BASE + 2, 1, 0x07)         # enable and clear FIFOs
    assert uart.read(BASE + 2, 1) & 0xC0 == 0xC0
    assert uart.feed(bytes(range(20))) == 16
    assert bytes(uart.read(BASE, 1) for _ in range(16)) == bytes(range(16))
    assert not uart.read(BASE + 5, 1) & 0x01


def test_rx_and_thre_interrupts_need_out2() -> None:
    uart, irq, _ = make()
    uart.write(BASE + 1, 1, 0x01)         # RX data interrupt
    uart.feed(b"k")
    assert not irq.level                  # OUT2 clear: the card does not drive IRQ
    uart.write(BASE + 4, 1, 0x08)
    assert irq.level
    assert uart.read(BASE + 2, 1) & 0x0F == 0x04
    uart.read(BASE, 1)
    assert not irq.level
    uart.write(BASE + 1, 1, 0x02)         # THRE: raised at once, THR is empty
    assert irq.level
    assert uart.read(BASE + 2, 1) & 0x0F == 0x02
    assert not irq.level                  # reading IIR clears THRE
    uart.write(BASE, 1, 0x41)
    assert irq.level                      # the byte left: THR empty again


def test_loopback() -> None:
    uart, irq, out = make()
    uart.write(BASE + 4, 1, 0x10 | 0x0B)  # loop, OUT2, RTS, DTR
    uart.write(BASE, 1, 0x5A)
    assert out == b""
    assert uart.read(BASE, 1) == 0x5A
    assert uart.read(BASE + 6, 1) & 0xF0 == 0x10 | 0x20 | 0x80  # CTS DSR DCD, no RI
    assert not irq.level                  # loopback disconnects the IRQ line


def test_scratch_register() -> None:
    uart, _, _ = make()
    uart.write(BASE + 7, 1, 0xA5)
    assert uart.read(BASE + 7, 1) == 0xA5
