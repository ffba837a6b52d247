"""Helpers shared by the tests that boot guests: QEMU command lines for a plain PC.

Most guest tests go through the emu pytest plugin (``emu_machine``, ``disk_image``,
``nasm``).  A few hand QEMU their files directly (a sparse 200 GiB raw disk, keys on
standard input, a chosen drive geometry); they build the command line here, so every
one of them starts the same machine: ``-M pc`` with no default devices, no display and
no reboot (a reset ends the run).
"""

from __future__ import annotations

from pathlib import Path

from conftest import need_tool

from emu.pytest_plugin import QEMU_DEBUG_EXIT

QEMU_PC = ["-M", "pc", "-nodefaults", "-display", "none", "-no-reboot"]


def qemu_pc_argv(bios: Path, *options: str, debug_exit: bool = True) -> list[str]:
    """``qemu-system-i386`` on ``bios`` plus ``options``; with ``debug_exit`` a write of V to
    port 0xF4 ends QEMU with status (V << 1) | 1.  Skips without QEMU, fails under CI."""
    qemu = need_tool("qemu-system-i386")
    argv = [qemu, *QEMU_PC, "-bios", str(bios), *options]
    return argv + QEMU_DEBUG_EXIT if debug_exit else argv


# Debug-console output for guests that define ``DBG`` (the debug port, E9h): ``hex8``
# prints AL and ``hex16`` prints AX as upper-case hex digits; both keep every register
# but AL.
HEX_OUTPUT = r"""
hex8:
    push ax
    shr al, 4
    call nibble
    pop ax
nibble:
    and al, 15
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 7
.out:
    out DBG, al
    ret

hex16:
    push ax
    xchg al, ah
    call hex8
    pop ax
    jmp hex8
"""
