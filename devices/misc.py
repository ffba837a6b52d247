"""Small PC ports: debug exit, debug console, POST code, A20 and reset, a minimal 8042.

Theory of operation
-------------------
* Debug exit (0xF4, the port QEMU users give ``isa-debug-exit``): a write asks
  the machine to stop with the written value as its exit status.  (QEMU itself
  exits with ``(value << 1) | 1``; emu exits with the value, so 0 is success.)
* Debug console (0xE9 Bochs/QEMU, 0x402 SeaBIOS's log port): bytes written are
  appended to a transcript and handed to a sink; reads return 0xE9, the value
  QEMU's ``-debugcon`` answers so firmware can detect it.
* POST code (0x80): the last byte written is kept (firmware also writes here
  only to waste a microsecond).
* System control port A (0x92): bit 1 gates A20, writing bit 0 = 1 resets the CPU.
* Reset control register (0xCF9, byte access only; the PCI host owns the dword
  at 0xCF8): writing bit 2 with bit 1 (hard) or alone (soft) resets the machine.
* 8042 keyboard controller (0x60 data, 0x64 status/command), minimal: no real
  keyboard or mouse behind it, but the controller self test (0xAA -> 0x55),
  interface tests, command byte, output port (bit 0 = reset line, bit 1 = A20;
  command 0xD1), pulse reset (0xFE..0xF0 with bit 0 clear), and a keyboard that
  ACKs commands (reset answers 0xFA 0xAA, identify 0xFA 0xAB 0x83) so firmware
  probes see a healthy controller and never wait on a full input buffer.
  Replies raise IRQ 1 when the command byte enables it.  The auxiliary (mouse)
  port is absent: bytes sent to it get no answer, which drivers treat as
  "no mouse".

Every effect on the rest of the machine (stop, reset, A20) goes out through a
callback given at construction, keeping these sans-IO.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

from .interfaces import IrqLine, NullIrq

DEBUG_EXIT_PORT = 0xF4
DEBUGCON_PORTS = (0xE9, 0x402)
DEBUGCON_READBACK = 0xE9
POST_PORT = 0x80
PORT_A = 0x92
RESET_CONTROL_PORT = 0xCF9
KBC_DATA_PORT = 0x60
KBC_COMMAND_PORT = 0x64

PORT_A_RESET = 0x01
PORT_A_A20 = 0x02
RCR_RESET = 0x04
RCR_HARD = 0x02


class DebugExit:
    """Port 0xF4: the guest's way to end the run with an exit status."""

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self.on_exit = on_exit
        self.value: int | None = None

    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(DEBUG_EXIT_PORT, 4)]

    def read(self, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def write(self, port: int, size: int, value: int) -> None:
        self.value = value
        self.on_exit(value)


class DebugConsole:
    """Ports 0xE9 and 0x402: write-only byte console."""

    def __init__(self, sink: Callable[[bytes], None] | None = None,
                 ports: tuple[int, ...] = DEBUGCON_PORTS) -> None:
        self.sink = sink
        self.ports = ports
        self.transcript = bytearray()

    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(port, 1) for port in self.ports]

    def read(self, port: int, size: int) -> int:
        return DEBUGCON_READBACK

    def write(self, port: int, size: int, value: int) -> None:
        data = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        self.transcript += data
        if self.sink is not None:
            self.sink(data)


class PostCode:
    """Port 0x80: the last POST code written."""

    def __init__(self) -> None:
        self.value = 0

    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(POST_PORT, 1)]

    def read(self, port: int, size: int) -> int:
        return self.value

    def write(self, port: int, size: int, value: int) -> None:
        self.value = value & 0xFF


class SystemControlPortA:
    """Port 0x92: fast A20 gate and fast reset."""

    def __init__(self, on_reset: Callable[[str], None],
                 on_a20: Callable[[bool], None] | None = None) -> None:
        self.on_reset = on_reset
        self.on_a20 = on_a20
        self.value = PORT_A_A20

    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(PORT_A, 1)]

    def read(self, port: int, size: int) -> int:
        return self.value

    def write(self, port: int, size: int, value: int) -> None:
        previous = self.value
        self.value = value & ~PORT_A_RESET & 0xFF
        if (value ^ previous) & PORT_A_A20 and self.on_a20 is not None:
            self.on_a20(bool(value & PORT_A_A20))
        if value & PORT_A_RESET:
            self.on_reset("port 0x92 fast reset")


class ResetControl:
    """PIIX reset control register at 0xCF9 (byte accesses only)."""

    def __init__(self, on_reset: Callable[[str], None]) -> None:
        self.on_reset = on_reset
        self.value = 0

    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(RESET_CONTROL_PORT, 1)]

    def read(self, port: int, size: int) -> int:
        return self.value

    def write(self, port: int, size: int, value: int) -> None:
        self.value = value & RCR_HARD
        if value & RCR_RESET:
            kind = "hard" if value & RCR_HARD else "soft"
            self.on_reset(f"port 0xCF9 {kind} reset")


# --- 8042 ------------------------------------------------------------------
STATUS_OUTPUT_FULL = 0x01
STATUS_SYSTEM = 0x04
STATUS_COMMAND = 0x08
STATUS_UNLOCKED = 0x10
STATUS_AUX_DATA = 0x20

COMMAND_BYTE_KBD_IRQ = 0x01
COMMAND_BYTE_AUX_IRQ = 0x02
COMMAND_BYTE_SYSTEM = 0x04
COMMAND_BYTE_KBD_DISABLED = 0x10
COMMAND_BYTE_AUX_DISABLED = 0x20
COMMAND_BYTE_DEFAULT = 0x45  # IRQ 1 on, system flag, scancode translation

OUTPUT_PORT_RESET = 0x01  # active low: 0 holds the CPU in reset
OUTPUT_PORT_A20 = 0x02
OUTPUT_PORT_DEFAULT = 0xCF

KBD_ACK = 0xFA
KBD_SELF_TEST_OK = 0xAA
KBD_ID = (0xAB, 0x83)

# Keyboard commands (data port, no controller command pending) -> reply bytes;
# commands that take a parameter byte are listed in KBD_COMMANDS_WITH_ARGUMENT.
KBD_REPLIES: dict[int, tuple[int, ...]] = {
    0xFF: (KBD_ACK, KBD_SELF_TEST_OK),  # reset + BAT
    0xF2: (KBD_ACK, *KBD_ID),           # identify
    0xEE: (0xEE,),                      # echo
}
KBD_COMMANDS_WITH_ARGUMENT = frozenset({0xED, 0xF0, 0xF3})


class Kbc8042:
    """A minimal i8042 keyboard controller (see module docstring)."""

    def __init__(self, on_reset: Callable[[str], None],
                 on_a20: Callable[[bool], None] | None = None,
                 irq1: IrqLine | None = None, irq12: IrqLine | None = None) -> None:
        self.on_reset = on_reset
        self.on_a20 = on_a20
        self.irq1 = irq1 or NullIrq()
        self.irq12 = irq12 or NullIrq()
        self.reset()

    def reset(self) -> None:
        self.output: deque[tuple[int, bool]] = deque()  # (byte, from aux)
        self.command_byte = COMMAND_BYTE_DEFAULT
        self.output_port = OUTPUT_PORT_DEFAULT
        self.pending_command: int | None = None  # controller command awaiting data
        self.kbd_argument_for: int | None = None
        self.last_was_command = False
        self.last_output = 0
        self._update_irqs()

    # --- PortDevice --------------------------------------------------------
    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(KBC_DATA_PORT, 1), (KBC_COMMAND_PORT, 1)]

    def read(self, port: int, size: int) -> int:
        if port == KBC_COMMAND_PORT:
            return self.status()
        if not self.output:
            return self.last_output  # the output register keeps its last byte
        value, _ = self.output.popleft()
        self.last_output = value
        self._update_irqs()
        return value

    def write(self, port: int, size: int, value: int) -> None:
        value &= 0xFF
        if port == KBC_COMMAND_PORT:
            self.last_was_command = True
            self._controller_command(value)
        else:
            self.last_was_command = False
            self._data(value)

    def status(self) -> int:
        status = STATUS_UNLOCKED
        if self.command_byte & COMMAND_BYTE_SYSTEM:
            status |= STATUS_SYSTEM
        if self.last_was_command:
            status |= STATUS_COMMAND
        if self.output:
            status |= STATUS_OUTPUT_FULL
            if self.output[0][1]:
                status |= STATUS_AUX_DATA
        return status

    # --- internals -------------------------------------------------------
    def _reply(self, *values: int, aux: bool = False) -> None:
        self.output.extend((value, aux) for value in values)
        self._update_irqs()

    def _update_irqs(self) -> None:
        head_aux = self.output[0][1] if self.output else None
        self.irq1.set(head_aux is False and bool(self.command_byte & COMMAND_BYTE_KBD_IRQ))
        self.irq12.set(head_aux is True and bool(self.command_byte & COMMAND_BYTE_AUX_IRQ))

    def _set_output_port(self, value: int) -> None:
        previous = self.output_port
        self.output_port = value
        if (value ^ previous) & OUTPUT_PORT_A20 and self.on_a20 is not None:
            self.on_a20(bool(value & OUTPUT_PORT_A20))
        if not value & OUTPUT_PORT_RESET:
            self.on_reset("8042 output port reset line")

    def _controller_command(self, command: int) -> None:
        self.pending_command = None
        if command == 0x20:
            self._reply(self.command_byte)
        elif command in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self.pending_command = command  # the data byte follows on port 0x60
        elif command == 0xAA:
            self.command_byte |= COMMAND_BYTE_SYSTEM
            self._reply(0x55)
        elif command in (0xAB, 0xA9):
            self._reply(0x00)  # interface test passed
        elif command == 0xA7:
            self.command_byte |= COMMAND_BYTE_AUX_DISABLED
        elif command == 0xA8:
            self.command_byte &= ~COMMAND_BYTE_AUX_DISABLED
        elif command == 0xAD:
            self.command_byte |= COMMAND_BYTE_KBD_DISABLED
        elif command == 0xAE:
            self.command_byte &= ~COMMAND_BYTE_KBD_DISABLED
        elif command == 0xC0:
            self._reply(0xFF)  # input port
        elif command == 0xD0:
            self._reply(self.output_port)
        elif command == 0xDD:
            self._set_output_port(self.output_port & ~OUTPUT_PORT_A20)
        elif command == 0xDF:
            self._set_output_port(self.output_port | OUTPUT_PORT_A20)
        elif 0xF0 <= command <= 0xFF:
            if not command & OUTPUT_PORT_RESET:  # pulse output lines: bit 0 = reset
                self.on_reset("8042 pulse reset")
        # other commands (read RAM, test lines, ...) are ignored

    def _data(self, value: int) -> None:
        command, self.pending_command = self.pending_command, None
        if command == 0x60:
            self.command_byte = value
            self._update_irqs()
        elif command == 0xD1:
            self._set_output_port(value)
        elif command == 0xD2:
            self._reply(value)
        elif command == 0xD3:
            self._reply(value, aux=True)
        elif command == 0xD4:
            pass  # no mouse behind the auxiliary port: no answer
        else:
            self._keyboard(value)

    def _keyboard(self, value: int) -> None:
        if self.kbd_argument_for is not None:
            self.kbd_argument_for = None
            self._reply(KBD_ACK)
            return
        self.command_byte &= ~COMMAND_BYTE_KBD_DISABLED  # writing to the keyboard enables it
        if value in KBD_COMMANDS_WITH_ARGUMENT:
            self.kbd_argument_for = value
        self._reply(*KBD_REPLIES.get(value, (KBD_ACK,)))
