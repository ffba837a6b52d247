"""Facts about the Unicorn engine that the long-mode work (issue 15) builds on.

emu creates its CPU as UC_MODE_32 and lets the guest switch modes.  These tests pin down
that the same engine follows a guest from real mode into long mode by itself.  (Its API
then still offers only the 32-bit register view: reading UC_X86_REG_RAX or RIP from a
UC_MODE_32 engine prints a "deprecated ... no-op" warning in Unicorn 2.1 and will fail in
2.2 -- see /work/notes/apic-wiring.md section 5.)
"""

from __future__ import annotations

import struct
from pathlib import Path

from conftest import need_tool
from oracles import run
from unicorn import UC_ARCH_X86, UC_HOOK_CODE, UC_MODE_32, Uc
from unicorn import x86_const as X

EFER = 0xC0000080
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
ORIGIN = 0x1000
PML4, PDPT, PD = 0x10000, 0x11000, 0x12000

# Real mode -> PAE paging + EFER.LME -> a 64-bit code segment, the way boot loaders do it.
SOURCE = f"""
bits 16
org {ORIGIN:#x}
    cli
    lgdt [gdtr]
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, {PML4:#x}
    mov cr3, eax
    mov ecx, {EFER:#x}
    rdmsr
    or eax, {EFER_LME:#x}
    wrmsr
    mov eax, cr0
    or eax, 0x80000001
    mov cr0, eax
    jmp dword 0x08:long_entry
bits 64
long_entry:
    mov rax, 0x1122334455667788
    push rax
    pop rcx
    shr rcx, 32
    hlt
align 8
gdt: dq 0, 0x00209A0000000000, 0x0000920000000000
gdtr: dw 23
      dd gdt
"""


def test_a_mode_32_engine_follows_the_guest_into_long_mode(tmp_path: Path) -> None:
    source = tmp_path / "long.asm"
    source.write_text(SOURCE)
    run(need_tool("nasm"), "-f", "bin", "-o", tmp_path / "long.bin", source)
    code = (tmp_path / "long.bin").read_bytes()
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x200000)
    uc.mem_write(ORIGIN, code)
    for table, entry in ((PML4, PDPT | 3), (PDPT, PD | 3), (PD, 0x83)):   # 2 MiB identity
        uc.mem_write(table, struct.pack("<Q", entry))
    uc.reg_write(X.UC_X86_REG_CR0, 0x10)
    uc.reg_write(X.UC_X86_REG_CS, 0)
    uc.reg_write(X.UC_X86_REG_ESP, 0x8000)
    sizes: list[int] = []
    uc.hook_add(UC_HOOK_CODE, lambda _uc, _address, size, _user: sizes.append(size))
    assert code.count(b"\xf4") == 1
    hlt = ORIGIN + code.index(b"\xf4")
    uc.emu_start(ORIGIN, hlt, count=100)
    efer = uc.reg_read(X.UC_X86_REG_MSR, EFER)
    assert efer & (EFER_LME | EFER_LMA) == EFER_LME | EFER_LMA
    assert 10 in sizes                                    # the REX.W mov rax, imm64
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x55667788
    assert uc.reg_read(X.UC_X86_REG_ECX) == 0x11223344    # upper half, via the 64-bit stack
    assert uc.reg_read(X.UC_X86_REG_CS) == 0x08
