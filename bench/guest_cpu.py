#!/usr/bin/env python3
"""Guest CPU speed: an ALU loop ROM under emu (both modes) and qemu-system-i386 (TCG).

The ROM enters 32-bit protected mode and runs ``--instructions`` instructions of an
add/xor/dec/jnz loop (4 instructions per iteration), then writes "END" on the debug
console and exits through port 0xF4.  Each engine runs the same ROM in the same run;
the wall time of the whole run (start-up included, which is small next to the loop
at the default size) is the median of ``--repeat`` runs, and the ratios to QEMU are
printed.  emu's modes: the default deterministic one (``--icount``: Unicorn's
per-instruction count callback) and ``--fast`` (no per-instruction callback; see
emu.machine's theory of operation for why it is not the default yet).

    .venv/bin/python bench/guest_cpu.py [--instructions 500M] [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from disks.image import parse_size  # noqa: E402

INSTRUCTIONS_PER_ITERATION = 4
ROM_SOURCE = """\
bits 16
org 0
start:
    cli
    o32 lgdt [cs:gdtr]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp dword 0x08:(pm + 0xF0000)
gdtr:
    dw 23
    dd gdt + 0xF0000
gdt:
    dq 0
    dq 0x00CF9A000000FFFF
    dq 0x00CF92000000FFFF
bits 32
pm:
    mov ax, 0x10
    mov ds, ax
    mov ss, ax
    mov ecx, {iterations}
    xor eax, eax
.loop:
    add eax, ecx
    xor ebx, eax
    dec ecx
    jnz .loop
    mov al, 'E'
    out 0xE9, al
    mov al, 'N'
    out 0xE9, al
    mov al, 'D'
    out 0xE9, al
    mov al, 0
    out 0xF4, al
bits 16
times 0xFFF0 - ($ - $$) db 0xFF
    jmp 0xF000:start
times 0x10000 - ($ - $$) db 0xFF
"""


def build_rom(folder: Path, instructions: int) -> Path:
    source = folder / "alu.asm"
    rom = folder / "alu.bin"
    source.write_text(ROM_SOURCE.format(iterations=instructions // INSTRUCTIONS_PER_ITERATION))
    subprocess.run(["nasm", "-f", "bin", "-o", str(rom), str(source)], check=True)
    return rom


def run(argv: list[str], console: Path) -> float:
    began = time.monotonic()
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=3600)
    elapsed = time.monotonic() - began
    text = console.read_text(encoding="latin-1") if console.exists() else ""
    if "END" not in text:
        raise SystemExit(f"{argv[0]}: the ROM did not finish ({text!r})")
    console.unlink()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instructions", default="500M")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    instructions = parse_size(args.instructions)
    qemu = shutil.which("qemu-system-i386")
    if qemu is None or shutil.which("nasm") is None:
        raise SystemExit("needs qemu-system-i386 and nasm")
    with tempfile.TemporaryDirectory(prefix="emu-bench-cpu-") as scratch:
        folder = Path(scratch)
        rom = build_rom(folder, instructions)
        console = folder / "console.txt"
        engines = {
            "qemu-system-i386 (TCG)": [qemu, "-M", "pc", "-nodefaults", "-display", "none",
                                       "-no-reboot", "-bios", str(rom),
                                       "-debugcon", f"file:{console}",
                                       "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
            "emu --fast": [sys.executable, "-m", "emu", "run", "--fast", "--bios", str(rom),
                           "--serial", "null", "--debugcon", f"file:{console}"],
            "emu (deterministic)": [sys.executable, "-m", "emu", "run", "--bios", str(rom),
                                    "--serial", "null", "--debugcon", f"file:{console}"],
        }
        times = {name: statistics.median(run(argv, console) for _ in range(args.repeat))
                 for name, argv in engines.items()}
    reference = times["qemu-system-i386 (TCG)"]
    print(f"ALU loop, {instructions / 1e6:.0f} M instructions, median of {args.repeat}")
    for name, seconds in times.items():
        print(f"  {name:<24} {seconds:7.2f} s  {instructions / seconds / 1e6:7.0f} M instr/s"
              f"  {seconds / reference:5.1f}x QEMU's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
