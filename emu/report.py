"""The one-screen report printed when a run ends abnormally.

Registers (control registers and CPL included), segment bases, the instruction
at CS:EIP (read through the page tables) disassembled with Capstone, and the
last port accesses: enough to see where and why a guest stopped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from capstone import CS_ARCH_X86, CS_MODE_16, CS_MODE_32, Cs
from unicorn import UcError
from unicorn import x86_const as X

from . import x86

if TYPE_CHECKING:
    from .machine import Machine

GENERAL_REGISTERS = (("eax", X.UC_X86_REG_EAX), ("ebx", X.UC_X86_REG_EBX),
                     ("ecx", X.UC_X86_REG_ECX), ("edx", X.UC_X86_REG_EDX),
                     ("esi", X.UC_X86_REG_ESI), ("edi", X.UC_X86_REG_EDI),
                     ("ebp", X.UC_X86_REG_EBP), ("esp", X.UC_X86_REG_ESP))


def disassemble(code: bytes, address: int, bits32: bool, count: int = 1) -> list[str]:
    engine = Cs(CS_ARCH_X86, CS_MODE_32 if bits32 else CS_MODE_16)
    lines = []
    for instruction in engine.disasm(code, address):
        lines.append(f"{instruction.address:08x}  {instruction.bytes.hex():<16} "
                     f"{instruction.mnemonic} {instruction.op_str}".rstrip())
        if len(lines) >= count:
            break
    return lines or [f"{address:08x}  {code[:8].hex()}  (undecodable)"]


def stop_report(machine: Machine, reason: str, detail: str) -> str:
    uc = machine.uc
    lines = [f"emu: stopped: {reason}: {detail.strip()}"]
    try:
        lines.append("  " + "  ".join(f"{name}={uc.reg_read(reg):08x}"
                                      for name, reg in GENERAL_REGISTERS[:4]))
        lines.append("  " + "  ".join(f"{name}={uc.reg_read(reg):08x}"
                                      for name, reg in GENERAL_REGISTERS[4:]))
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        eflags = uc.reg_read(X.UC_X86_REG_EFLAGS)
        cr0 = uc.reg_read(X.UC_X86_REG_CR0)
        cr2, cr3, cr4 = (uc.reg_read(r) for r in (X.UC_X86_REG_CR2, X.UC_X86_REG_CR3,
                                                  X.UC_X86_REG_CR4))
        mode = "real" if not cr0 & x86.CR0_PE else (
            "virtual-8086" if eflags & x86.FLAG_VM else "protected")
        if cr0 & x86.CR0_PG:
            mode += ", paging" + (" (PAE)" if cr4 & x86.CR4_PAE else "")
        lines.append(f"  eip={eip:08x}  eflags={eflags:08x}  cpl={x86.current_privilege(uc)}"
                     f"  mode={mode}")
        lines.append(f"  cr0={cr0:08x}  cr2={cr2:08x}  cr3={cr3:08x}  cr4={cr4:08x}")
        segments = []
        for name in ("cs", "ds", "es", "ss", "fs", "gs"):
            try:
                seg = x86.segment(uc, name)
                segments.append(f"{name}={seg.selector:04x}@{seg.base:x}")
            except (x86.DeliveryError, UcError):
                segments.append(f"{name}=?")
        lines.append("  " + "  ".join(segments))
        _, gdt_base, gdt_limit, _ = uc.reg_read(X.UC_X86_REG_GDTR)
        _, idt_base, idt_limit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
        counted = (f"instructions={machine.instructions}" if machine.icount
                   else "instructions not counted (fast mode; --icount counts them)")
        lines.append(f"  gdtr={gdt_base:08x}/{gdt_limit:04x}  idtr={idt_base:08x}/{idt_limit:04x}"
                     f"  time={machine.clock.now_ns()} ns  {counted}")
        code_segment = x86.segment(uc, "cs")
        pc = (code_segment.base + eip) & 0xFFFF_FFFF
        code = x86.code_bytes(uc, 16)
        if code is not None:
            lines += ["  at: " + line for line in disassemble(code, pc, code_segment.big)]
        else:
            lines.append(f"  at: {pc:08x}  (not mapped)")
    except (UcError, x86.DeliveryError) as error:
        lines.append(f"  (CPU state unreadable: {error})")
    lines.append(f"  POST code (port 0x80): {machine.post.value:#04x}")
    recent = list(machine.bus.recent)
    if recent:
        lines.append("  last ports: " + ", ".join(
            f"{kind} {port:#x}/{size}={value:#x}" for kind, port, size, value in recent))
    return "\n".join(lines) + "\n"
