"""Character back ends for the serial port and the debug console: stdio, file:PATH, null.

``stdio`` for the serial port puts an interactive terminal in raw mode (so
keys reach the guest as typed) and keeps QEMU's escapes (Ctrl-A then a key):

====  =====================================================================
 h    print this help
 x    print a line and quit (``emu run`` exits 123)
 c    switch between the guest's console and the monitor (:mod:`emu.monitor`)
 ^A   send one Ctrl-A to the guest
====  =====================================================================

In monitor mode typed keys are echoed and edited locally (Backspace, Ctrl-U)
and each line goes to :attr:`CharBackend.monitor_handler` (the machine runs
it: input is read between slices, so at an instruction boundary); the guest
keeps running and its output still shows,
as in QEMU's multiplexed console.  Input is polled without blocking between
execution slices.  Every back end also keeps nothing itself: the devices keep
their own transcripts.
"""

from __future__ import annotations

import os
import select
import sys
from collections.abc import Callable
from typing import BinaryIO

ESCAPE = 0x01  # Ctrl-A
QUIT_KEY = ord("x")
HELP_KEY = ord("h")
MONITOR_KEY = ord("c")
ENTER_KEYS = (0x0D, 0x0A)
ERASE_KEYS = (0x08, 0x7F)
KILL_LINE_KEY = 0x15  # Ctrl-U
MONITOR_PROMPT = b"(emu) "
ESCAPE_HELP = (b"\r\nC-a h    print this help\r\n"
               b"C-a x    exit emulator\r\n"
               b"C-a c    switch between console and monitor\r\n"
               b"C-a C-a  sends C-a\r\n")
QUIT_LINE = b"\r\nemu: terminated (C-a x)\r\n"


class ChardevError(ValueError):
    pass


class CharBackend:
    """Where a device's output goes and where its input comes from."""

    quit_requested = False
    interactive = False  # input can arrive (a terminal), so a halted CPU may wait for it
    in_monitor = False
    # Called with each line typed at the monitor (the machine runs the command).
    monitor_handler: Callable[[str], None] | None = None

    def wait_input(self, seconds: float) -> None:
        """Block until input may be readable or ``seconds`` pass."""

    def prompt(self) -> None:
        """Show the monitor's prompt when the monitor has the console."""

    def toggle_monitor(self) -> None:
        """Switch the console between the guest and the monitor."""

    def write(self, data: bytes) -> None:
        pass

    def read_input(self) -> bytes:
        return b""

    def close(self) -> None:
        pass


class NullBackend(CharBackend):
    pass


class FileBackend(CharBackend):
    def __init__(self, path: str) -> None:
        try:
            self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed in close())
        except OSError as error:
            raise ChardevError(f"cannot open {path}: {error.strerror}") from None

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class StdioBackend(CharBackend):
    """stdout for output; with ``interactive``, stdin as input with Ctrl-A x to quit.

    A terminal is put in raw mode (keys go to the guest as typed) with output
    post-processing kept, as QEMU does, so a guest's bare LF still starts a new
    line; the previous mode is restored on close.  A pipe is read as it comes and
    dropped at end of file.
    """

    def __init__(self, interactive: bool) -> None:
        self.out = sys.stdout.buffer
        self.fd: int | None = None
        self.saved_mode: list | None = None  # type: ignore[type-arg]
        self.escape_pending = False
        self.in_monitor = False
        self.line = bytearray()          # the monitor line being typed
        if not interactive:
            return
        try:
            self.fd = sys.stdin.fileno()
        except (OSError, ValueError):
            return
        if os.isatty(self.fd):
            import termios
            import tty
            self.saved_mode = termios.tcgetattr(self.fd)
            tty.setraw(self.fd)
            mode = termios.tcgetattr(self.fd)
            mode[1] |= termios.OPOST | termios.ONLCR
            termios.tcsetattr(self.fd, termios.TCSANOW, mode)
            self.interactive = True

    def wait_input(self, seconds: float) -> None:
        if self.fd is not None:
            select.select([self.fd], [], [], seconds)

    def write(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()

    def read_input(self) -> bytes:
        if self.fd is None:
            return b""
        readable, _, _ = select.select([self.fd], [], [], 0)
        if not readable:
            return b""
        typed = os.read(self.fd, 256)
        if not typed:  # end of a piped input
            self.fd = None
            return b""
        forwarded = bytearray()
        for key in typed:
            if self.escape_pending:
                self.escape_pending = False
                if key == QUIT_KEY:
                    self.write(QUIT_LINE)
                    self.quit_requested = True
                    break
                if key == HELP_KEY:
                    self.write(ESCAPE_HELP)
                elif key == MONITOR_KEY:
                    self.toggle_monitor()
                elif key == ESCAPE:
                    self._typed(key, forwarded)
                # any other key after C-a is swallowed, as QEMU does
            elif key == ESCAPE:
                self.escape_pending = True
            else:
                self._typed(key, forwarded)
        return bytes(forwarded)

    def toggle_monitor(self) -> None:
        self.in_monitor = not self.in_monitor
        self.line.clear()
        self.write(b"\r\n" + MONITOR_PROMPT if self.in_monitor else b"\r\n")

    def prompt(self) -> None:
        if self.in_monitor:
            self.write(MONITOR_PROMPT)

    def _typed(self, key: int, forwarded: bytearray) -> None:
        if not self.in_monitor:
            forwarded.append(key)
        elif key in ENTER_KEYS:
            self.write(b"\r\n")
            line = self.line.decode("latin-1")
            self.line.clear()
            if self.monitor_handler is not None:
                self.monitor_handler(line)
            self.prompt()
        elif key in ERASE_KEYS:
            if self.line:
                self.line.pop()
                self.write(b"\b \b")
        elif key == KILL_LINE_KEY:
            self.write(b"\b \b" * len(self.line))
            self.line.clear()
        elif key >= 0x20:
            self.line.append(key)
            self.write(bytes((key,)))

    def close(self) -> None:
        if self.fd is not None and self.saved_mode is not None:
            import termios
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved_mode)
            self.saved_mode = None


def open_backend(spec: str, *, interactive: bool = False) -> CharBackend:
    """``stdio``, ``file:PATH`` or ``null``."""
    if spec == "null":
        return NullBackend()
    if spec == "stdio":
        return StdioBackend(interactive)
    if spec.startswith("file:") and len(spec) > 5:
        return FileBackend(spec[5:])
    raise ChardevError(f"{spec!r} is not stdio, file:PATH or null")
