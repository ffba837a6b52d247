"""Tiny NASM test ROMs for the machine tests (64 KiB images with a reset vector).

A helper module (no tests of its own), named test_machine_* to sit with its users.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import need_tool

ROM_TEMPLATE = """\
bits 16
org 0
%define LIN(x) ((x) + 0xF0000)
start:
{body}
times 0xFFF0 - ($ - $$) db 0xFF
    jmp 0xF000:start
times 0x10000 - ($ - $$) db 0xFF
"""

# Common 16-bit helpers: print the zero-terminated string at CS:SI to the debug console.
PRINT16 = """
print:
    cs lodsb
    test al, al
    jz .done
    out 0xE9, al
    jmp print
.done:
    ret
"""

PIC_INIT = """
    mov al, 0x11
    out 0x20, al
    out 0xA0, al
    mov al, {master_base}
    out 0x21, al
    mov al, {slave_base}
    out 0xA1, al
    mov al, 4
    out 0x21, al
    mov al, 2
    out 0xA1, al
    mov al, 1
    out 0x21, al
    out 0xA1, al
    mov al, 0xFE
    out 0x21, al
    mov al, 0xFF
    out 0xA1, al
"""

PIT_10MS = """
    mov al, 0x34
    out 0x43, al
    mov al, 0x9C
    out 0x40, al
    mov al, 0x2E
    out 0x40, al
"""


def build_rom(tmp_path: Path, body: str, name: str = "rom") -> Path:
    """Assemble ``body`` (code at F000:0000, entered from the reset vector)."""
    nasm = need_tool("nasm")
    source = tmp_path / f"{name}.asm"
    output = tmp_path / f"{name}.bin"
    source.write_text(ROM_TEMPLATE.format(body=body))
    proc = subprocess.run([nasm, "-f", "bin", "-o", str(output), str(source)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"nasm failed:\n{proc.stderr}")
    return output


def build_boot_sector(tmp_path: Path, body: str, name: str = "boot") -> bytes:
    """Assemble a 512-byte boot sector (org 0x7C00) ending in 55 AA."""
    nasm = need_tool("nasm")
    source = tmp_path / f"{name}.asm"
    output = tmp_path / f"{name}.bin"
    source.write_text(f"bits 16\norg 0x7C00\n{body}\ntimes 510 - ($ - $$) db 0\ndw 0xAA55\n")
    proc = subprocess.run([nasm, "-f", "bin", "-o", str(output), str(source)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"nasm failed:\n{proc.stderr}")
    return output.read_bytes()
