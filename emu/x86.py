"""What the machine must do by hand on Unicorn's x86 CPU: segments, interrupts, CPUID.

Theory of operation
-------------------
Unicorn runs instructions but leaves a PC's plumbing to its user:

* **Interrupts.**  Unicorn never vectors anything itself: a software ``INT n``
  and every CPU exception arrive in the ``UC_HOOK_INTR`` hook (for ``INT n`` with
  EIP already past the instruction), and hardware interrupts do not exist at
  all.  :func:`deliver_interrupt` does what the CPU would: in real mode push
  FLAGS, CS, IP on SS:SP, clear IF/TF/AC and load CS:IP from the IVT at
  ``IDTR.base + vector * 4`` (beyond IDTR.limit: a fault, as on a CPU); in
  protected mode read the IDT gate and, for 16/32-bit interrupt and trap gates
  into a ring-0 (same privilege) code segment, push EFLAGS, CS, EIP (and an
  error code, which Unicorn does not expose, so 0) and load CS:EIP, clearing IF
  for interrupt gates.  Task gates, privilege changes
  and virtual-8086 mode are not supported: :class:`DeliveryError` says why, and
  the machine stops with a triple-fault report.
* **Segments.**  Unicorn reports selectors only.  A segment's base and size
  attributes are ``selector * 16`` / 16-bit in real mode, else read from the
  GDT or LDT descriptor (:func:`segment`).  Hidden descriptor caches that differ
  from the tables ("unreal mode" bases) are not visible; unreal-mode *limits*
  need nothing here.
* **CPUID** is answered from a fixed table (:data:`CPUID_LEAVES`) so guests see
  the same CPU on every host: a family-6 Intel with FPU, PSE, CX8, CMOV, MMX,
  FXSR, SSE, SSE2 but *without* TSC (RDTSC would read the host's clock and break
  determinism), APIC, MTRR, PAE or long mode.

Physical and linear addresses are taken as equal: paging is not supported in
the places the machine reads guest memory itself (stack pushes, descriptor
tables, fast string I/O).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from unicorn import x86_const as X

CR0_PE = 0x1
CR0_PG = 0x8000_0000
FLAG_TF = 0x100
FLAG_IF = 0x200
FLAG_DF = 0x400
FLAG_NT = 0x4000
FLAG_RF = 0x1_0000
FLAG_VM = 0x2_0000
FLAG_AC = 0x4_0000

GATE_TASK = 0x5
GATE_INTERRUPT_16 = 0x6
GATE_TRAP_16 = 0x7
GATE_INTERRUPT_32 = 0xE
GATE_TRAP_32 = 0xF
INTERRUPT_GATES = (GATE_INTERRUPT_16, GATE_INTERRUPT_32)
GATES_32 = (GATE_INTERRUPT_32, GATE_TRAP_32)

# CPU exceptions that push an error code in protected mode.
EXCEPTIONS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
EXCEPTION_NAMES = {
    0: "#DE divide error", 1: "#DB debug", 2: "NMI", 3: "#BP breakpoint", 4: "#OF overflow",
    5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available",
    8: "#DF double fault", 10: "#TS invalid TSS", 11: "#NP segment not present",
    12: "#SS stack fault", 13: "#GP general protection", 14: "#PF page fault",
    16: "#MF x87 error", 17: "#AC alignment check", 18: "#MC machine check",
    19: "#XM SIMD error",
}

SEGMENT_REGISTERS = {"es": X.UC_X86_REG_ES, "cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS,
                     "ds": X.UC_X86_REG_DS, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS}

# CPUID: leaf -> (eax, ebx, ecx, edx).  Vendor "GenuineIntel", family 6 model 3.
_VENDOR = (0x756E6547, 0x6C65746E, 0x49656E69)  # "Genu", "ntel", "ineI" as EBX, ECX, EDX
CPUID_FEATURES_EDX = (1 << 0) | (1 << 3) | (1 << 5) | (1 << 8) | (1 << 15) | (1 << 23) | (
    1 << 24) | (1 << 25) | (1 << 26)  # FPU PSE MSR CX8 CMOV MMX FXSR SSE SSE2 (no TSC/APIC)
CPUID_LEAVES: dict[int, tuple[int, int, int, int]] = {
    0x0000_0000: (1, _VENDOR[0], _VENDOR[1], _VENDOR[2]),
    0x0000_0001: (0x0000_0633, 0x0000_0800, 0, CPUID_FEATURES_EDX),
    0x8000_0000: (0x8000_0004, 0, 0, 0),
    0x8000_0001: (0, 0, 0, 0),
    0x8000_0002: tuple(int.from_bytes(b"emu x86 on Unicorn  "[i:i + 4].ljust(4), "little")
                       for i in (0, 4, 8, 12)),  # type: ignore[dict-item]
    0x8000_0003: (0, 0, 0, 0),
    0x8000_0004: (0, 0, 0, 0),
}


def cpuid(leaf: int) -> tuple[int, int, int, int]:
    if leaf in CPUID_LEAVES:
        return CPUID_LEAVES[leaf]
    if leaf < 0x8000_0000:
        return CPUID_LEAVES[1] if leaf <= 1 else (0, 0, 0, 0)
    return (0, 0, 0, 0)


class DeliveryError(Exception):
    """An interrupt or exception the CPU could not deliver (a triple fault here)."""


@dataclass(frozen=True)
class Segment:
    selector: int
    base: int
    limit: int
    big: bool          # D/B bit: 32-bit code / 32-bit stack pointer
    present: bool = True
    dpl: int = 0


def protected_mode(uc: Any) -> bool:
    return bool(uc.reg_read(X.UC_X86_REG_CR0) & CR0_PE) and not (
        uc.reg_read(X.UC_X86_REG_EFLAGS) & FLAG_VM)


def read_descriptor(uc: Any, selector: int) -> tuple[int, int]:
    """The two dwords of a GDT/LDT descriptor."""
    if selector & 4:
        _, table_base, table_limit, _ = uc.reg_read(X.UC_X86_REG_LDTR)
    else:
        _, table_base, table_limit, _ = uc.reg_read(X.UC_X86_REG_GDTR)
    offset = selector & ~7
    if offset + 7 > table_limit:
        raise DeliveryError(f"selector {selector:#06x} is beyond the descriptor table limit")
    raw = bytes(uc.mem_read(table_base + offset, 8))
    return int.from_bytes(raw[:4], "little"), int.from_bytes(raw[4:], "little")


def segment(uc: Any, name: str, protected: bool | None = None) -> Segment:
    """Base and attributes of a segment register as the CPU uses them now."""
    selector = uc.reg_read(SEGMENT_REGISTERS[name])
    if not (protected_mode(uc) if protected is None else protected):
        return Segment(selector, selector << 4, 0xFFFF, False)
    if selector & ~3 == 0:
        return Segment(selector, 0, 0, False, present=False)
    low, high = read_descriptor(uc, selector)
    return descriptor_segment(selector, low, high)


def descriptor_segment(selector: int, low: int, high: int) -> Segment:
    base = (low >> 16) | (high & 0xFF) << 16 | (high & 0xFF00_0000)
    limit = (low & 0xFFFF) | (high & 0xF_0000)
    if high & (1 << 23):
        limit = limit << 12 | 0xFFF
    return Segment(selector, base, limit, bool(high & (1 << 22)), bool(high & (1 << 15)),
                   (high >> 13) & 3)


def code_is_32bit(uc: Any) -> bool:
    return segment(uc, "cs").big


PC_REGISTERS = (X.UC_X86_REG_CR0, X.UC_X86_REG_EFLAGS, X.UC_X86_REG_CS, X.UC_X86_REG_EIP)


def linear_pc(uc: Any) -> int:
    """CS base + EIP."""
    if hasattr(uc, "reg_read_many"):
        cr0, eflags, cs, eip = uc.reg_read_many(PC_REGISTERS)
        if not cr0 & CR0_PE or eflags & FLAG_VM:
            return ((cs & 0xFFFF) << 4) + eip & 0xFFFF_FFFF
    return (segment(uc, "cs").base + uc.reg_read(X.UC_X86_REG_EIP)) & 0xFFFF_FFFF


def _push(uc: Any, stack: Segment, values: list[int], width: int) -> None:
    """Push ``values`` (first pushed first) with ``width``-byte slots on SS."""
    esp = uc.reg_read(X.UC_X86_REG_ESP)
    mask = 0xFFFF_FFFF if stack.big else 0xFFFF
    pointer = esp & mask
    for value in values:
        pointer = (pointer - width) & mask
        uc.mem_write((stack.base + pointer) & 0xFFFF_FFFF,
                     (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little"))
    uc.reg_write(X.UC_X86_REG_ESP, (esp & ~mask) | pointer)


def deliver_interrupt(uc: Any, vector: int, *, error_code: int | None = None) -> None:
    """Vector the CPU through IVT or IDT; EIP must already be the return address."""
    eflags = uc.reg_read(X.UC_X86_REG_EFLAGS)
    cs = uc.reg_read(X.UC_X86_REG_CS)
    eip = uc.reg_read(X.UC_X86_REG_EIP)
    if not uc.reg_read(X.UC_X86_REG_CR0) & CR0_PE:
        # Real mode: the IVT is wherever IDTR says (normally 0/0x3FF), and its limit
        # holds -- "LIDT with limit 0, then INT" is the classic way to reset a PC.
        _, ivt_base, ivt_limit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
        if vector * 4 + 3 > ivt_limit:
            raise DeliveryError(f"vector {vector:#x} is beyond the real-mode IDTR limit "
                                f"{ivt_limit:#x}")
        ss = uc.reg_read(X.UC_X86_REG_SS)
        _push(uc, Segment(ss, ss << 4, 0xFFFF, False), [eflags, cs, eip], 2)
        target = int.from_bytes(bytes(uc.mem_read(ivt_base + vector * 4, 4)), "little")
        uc.reg_write(X.UC_X86_REG_EFLAGS, eflags & ~(FLAG_IF | FLAG_TF | FLAG_AC))
        uc.reg_write(X.UC_X86_REG_CS, target >> 16)
        uc.reg_write(X.UC_X86_REG_EIP, target & 0xFFFF)
        return
    if eflags & FLAG_VM:
        raise DeliveryError(f"vector {vector:#x} in virtual-8086 mode is not supported")
    _, idt_base, idt_limit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
    if vector * 8 + 7 > idt_limit:
        raise DeliveryError(f"vector {vector:#x} is beyond the IDT limit {idt_limit:#x}")
    gate = int.from_bytes(bytes(uc.mem_read(idt_base + vector * 8, 8)), "little")
    gate_type = (gate >> 40) & 0xF
    if not gate >> 47 & 1:
        raise DeliveryError(f"IDT gate {vector:#x} is not present")
    if gate_type == GATE_TASK:
        raise DeliveryError(f"IDT gate {vector:#x} is a task gate (not supported)")
    if gate_type not in (GATE_INTERRUPT_16, GATE_TRAP_16, GATE_INTERRUPT_32, GATE_TRAP_32):
        raise DeliveryError(f"IDT gate {vector:#x} has invalid type {gate_type:#x}")
    target_selector = (gate >> 16) & 0xFFFF
    offset = (gate & 0xFFFF) | ((gate >> 48) & 0xFFFF) << 16
    code = descriptor_segment(target_selector, *read_descriptor(uc, target_selector))
    if not code.present:
        raise DeliveryError(f"IDT gate {vector:#x} targets a not-present code segment")
    current_cpl = uc.reg_read(X.UC_X86_REG_CS) & 3
    if code.dpl < current_cpl:
        raise DeliveryError(f"vector {vector:#x} needs a privilege change (not supported)")
    width = 4 if gate_type in GATES_32 else 2
    values = [eflags, cs, eip]
    if error_code is not None:
        values.append(error_code)
    _push(uc, segment(uc, "ss"), values, width)
    cleared = FLAG_TF | FLAG_NT | FLAG_RF | FLAG_VM
    if gate_type in INTERRUPT_GATES:
        cleared |= FLAG_IF
    uc.reg_write(X.UC_X86_REG_EFLAGS, eflags & ~cleared)
    uc.reg_write(X.UC_X86_REG_CS, target_selector & ~3 | current_cpl)
    uc.reg_write(X.UC_X86_REG_EIP, offset if width == 4 else offset & 0xFFFF)


# --- string I/O instruction decoding --------------------------------------
PREFIX_REP = (0xF3, 0xF2)
PREFIX_OPERAND_SIZE = 0x66
PREFIX_ADDRESS_SIZE = 0x67
SEGMENT_OVERRIDES = {0x26: "es", 0x2E: "cs", 0x36: "ss", 0x3E: "ds", 0x64: "fs", 0x65: "gs"}
OTHER_PREFIXES = frozenset({0xF0})
OPCODES_INS = (0x6C, 0x6D)
OPCODES_OUTS = (0x6E, 0x6F)


@dataclass(frozen=True)
class StringIo:
    """A decoded ``rep ins``/``rep outs`` at the current EIP."""

    is_input: bool
    address_32: bool
    segment_name: str  # es for ins; ds or the override for outs


def decode_rep_string_io(code: bytes, code_32: bool) -> StringIo | None:
    """Decode prefixes + opcode; None unless it is a REP INS/OUTS."""
    rep = False
    address_32 = code_32
    segment_name = "ds"
    for byte in code:
        if byte in PREFIX_REP:
            rep = True
        elif byte == PREFIX_ADDRESS_SIZE:
            address_32 = not code_32
        elif byte in SEGMENT_OVERRIDES:
            segment_name = SEGMENT_OVERRIDES[byte]
        elif byte == PREFIX_OPERAND_SIZE or byte in OTHER_PREFIXES:
            continue
        elif byte in OPCODES_INS:
            return StringIo(True, address_32, "es") if rep else None
        elif byte in OPCODES_OUTS:
            return StringIo(False, address_32, segment_name) if rep else None
        else:
            return None
    return None
