"""Character back ends for the serial port and the debug console: stdio, file:PATH, null.

``stdio`` for the serial port puts an interactive terminal in raw mode (so
keys reach the guest as typed) and keeps QEMU's escape: Ctrl-A x quits,
Ctrl-A Ctrl-A sends one Ctrl-A.  Input is polled without blocking between
execution slices.  Every back end also keeps nothing itself: the devices keep
their own transcripts.
"""

from __future__ import annotations

import os
import select
import sys
from typing import BinaryIO

ESCAPE = 0x01  # Ctrl-A
QUIT_KEY = ord("x")


class ChardevError(ValueError):
    pass


class CharBackend:
    """Where a device's output goes and where its input comes from."""

    quit_requested = False
    interactive = False  # input can arrive (a terminal), so a halted CPU may wait for it

    def wait_input(self, seconds: float) -> None:
        """Block until input may be readable or ``seconds`` pass."""

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
                    self.quit_requested = True
                    break
                forwarded.append(key)
            elif key == ESCAPE:
                self.escape_pending = True
            else:
                forwarded.append(key)
        return bytes(forwarded)

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
