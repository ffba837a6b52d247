"""x86 architecture rules the machine applies by hand on Unicorn's CPU.

Theory of operation
-------------------
Unicorn executes instructions (and walks the page tables for the guest's own
accesses) but leaves the rest of a PC's CPU plumbing to its user.  Everything of
that kind lives here, written after the Intel SDM's pseudo-code, so the run loop
never needs to know which mode the CPU is in.

* **Linear to physical** (SDM vol. 3A, 4.3 and 4.4).  Every access the machine
  makes on the guest's behalf -- IDT, GDT/LDT, TSS, interrupt stack frames, fast
  string I/O, the trace and the stop report -- goes through :func:`translate`:
  32-bit paging (4 KiB pages, 4 MiB pages with CR4.PSE) or PAE paging (4 KiB /
  2 MiB pages, NX with EFER.NXE), with the U/S, R/W (CR0.WP for supervisor
  writes) and XD checks, setting Accessed and Dirty as the CPU does.  A failed
  check raises :class:`GuestFault` #PF with CR2 and the P/W/U/I error code.
  ``uc.mem_read``/``mem_write`` themselves take *physical* addresses.
* **Interrupt and exception delivery** (SDM 6.12, "Exception and Interrupt
  Handling"; the INT n pseudo-code).  Unicorn never vectors anything: ``INT n``
  and CPU exceptions arrive in the machine's ``UC_HOOK_INTR`` hook, hardware
  interrupts do not exist in Unicorn at all.  :func:`deliver_event` does what the
  CPU would: real mode through the IVT; protected mode through an interrupt or
  trap gate with the checks in the SDM's order (IDT limit, gate type, DPL for
  software INTs, present bit, target code segment) and, into a more privileged
  non-conforming segment, the stack switch through the TSS (SS0:ESP0) and the
  5-word frame (SS, ESP, EFLAGS, CS, EIP [, error code]).  A check that fails
  raises the architectural fault (#GP/#NP/#TS/#SS/#PF with its error code, EXT
  set for events external to the program) and :func:`deliver_exception` applies
  the double-fault table (SDM table 6-5): a contributory fault or #PF while
  delivering a contributory one or #PF becomes #DF; a fault while delivering #DF
  is a triple fault (:class:`TripleFault`).
* **Privilege changes.**  Unicorn's register writes check segment loads against
  the current CPL, so a ring-3 CPU cannot be given a ring-0 SS directly.  The
  CPL lives in SS's cached DPL; :func:`_enter_ring0` clears CR0.PE for one
  register write (a real-mode SS load caches DPL 0, so CPL becomes 0), restores
  CR0 and then loads SS and CS properly from their descriptors.  Only ring 0 is
  reachable this way (every OS of interest runs its handlers there).  Returning
  to ring 3 is IRET, which Unicorn executes itself.
* **Error codes Unicorn hides.**  Unicorn sets CR2 for a #PF but does not pass
  the error code to the hook; the machine reads it from Unicorn's saved CPU
  context (:meth:`emu.fastuc.FastUc.exception_taken`).  Where that layout is not
  recognised, :func:`page_fault_error_code` recomputes a #PF's code from a walk
  of CR2 (P from the walk; W when the page was readable but not writable for the
  CPL; U from the CPL; for a not-present page the access kind is unknown and W
  is 0 -- an OS then maps the page for reading and the retried write faults again
  with P=1, W=1) and other exceptions get error code 0.
* **Not modelled** (a :class:`DeliveryError` naming it, which the machine turns
  into a one-screen report): task gates and hardware task switches,
  virtual-8086 mode, privilege changes into rings 1 and 2, 16-bit TSSs for a
  stack switch.
* **Segments.**  Unicorn reports selectors only.  A segment's base and size
  attributes are ``selector * 16`` / 16-bit in real mode, else read from the
  GDT or LDT descriptor (:func:`segment`).  Hidden descriptor caches that differ
  from the tables ("unreal mode" bases) are not visible.
* **CPUID** is answered from a fixed table (:data:`CPUID_LEAVES`) so guests see
  the same CPU on every host: a family-6 Intel with FPU, PSE, TSC, MSR, PAE, CX8,
  CMOV, MMX, FXSR, SSE, SSE2; no APIC, MTRR, SEP, PGE or long mode.  RDTSC is
  answered by the machine from the clock in use (1 GHz: the TSC counts
  nanoseconds of guest time).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from unicorn import x86_const as X

CR0_PE = 0x1
CR0_WP = 0x1_0000
CR0_PG = 0x8000_0000
CR4_PSE = 0x10
CR4_PAE = 0x20
EFER_MSR = 0xC000_0080
EFER_NXE = 0x800
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
TSS_32_TYPES = (0x9, 0xB)      # available / busy 32-bit TSS
TSS32_ESP0, TSS32_SS0 = 4, 8   # offsets in a 32-bit TSS

# Descriptor bits (high dword).
DESC_ACCESSED = 1 << 8
DESC_WRITABLE = 1 << 9         # data: writable; code: readable
DESC_CONFORMING = 1 << 10
DESC_CODE = 1 << 11
DESC_SYSTEM_S = 1 << 12        # 1: code/data, 0: system
DESC_PRESENT = 1 << 15
DESC_BIG = 1 << 22
DESC_GRANULAR = 1 << 23

# Page-table entry bits.
PTE_P, PTE_RW, PTE_US, PTE_A, PTE_D, PTE_PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
PTE_XD = 1 << 63
PAGE_SIZE = 4096


class Vector(enum.IntEnum):
    DE = 0
    DB = 1
    NMI = 2
    BP = 3
    OF = 4
    BR = 5
    UD = 6
    NM = 7
    DF = 8
    TS = 10
    NP = 11
    SS = 12
    GP = 13
    PF = 14
    MF = 16
    AC = 17
    MC = 18
    XM = 19


# CPU exceptions that push an error code in protected mode.
EXCEPTIONS_WITH_ERROR_CODE = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
CONTRIBUTORY = frozenset({Vector.DE, Vector.TS, Vector.NP, Vector.SS, Vector.GP})
EXCEPTION_NAMES = {
    0: "#DE divide error", 1: "#DB debug", 2: "NMI", 3: "#BP breakpoint", 4: "#OF overflow",
    5: "#BR bound range", 6: "#UD invalid opcode", 7: "#NM device not available",
    8: "#DF double fault", 10: "#TS invalid TSS", 11: "#NP segment not present",
    12: "#SS stack fault", 13: "#GP general protection", 14: "#PF page fault",
    16: "#MF x87 error", 17: "#AC alignment check", 18: "#MC machine check",
    19: "#XM SIMD error",
}

# #PF error code bits (SDM 4.7).
PF_PRESENT, PF_WRITE, PF_USER, PF_FETCH = 0x1, 0x2, 0x4, 0x10
# Selector error code: EXT (event external to the program), IDT (refers to a gate).
ERR_EXT, ERR_IDT = 0x1, 0x2

SEGMENT_REGISTERS = {"es": X.UC_X86_REG_ES, "cs": X.UC_X86_REG_CS, "ss": X.UC_X86_REG_SS,
                     "ds": X.UC_X86_REG_DS, "fs": X.UC_X86_REG_FS, "gs": X.UC_X86_REG_GS}

# CPUID: leaf -> (eax, ebx, ecx, edx).  Vendor "GenuineIntel", family 6 model 3.
_VENDOR = (0x756E6547, 0x6C65746E, 0x49656E69)  # "Genu", "ntel", "ineI" as EBX, ECX, EDX
CPUID_EDX_FPU, CPUID_EDX_PSE, CPUID_EDX_TSC, CPUID_EDX_MSR = 1 << 0, 1 << 3, 1 << 4, 1 << 5
CPUID_EDX_PAE, CPUID_EDX_CX8, CPUID_EDX_APIC, CPUID_EDX_CMOV = 1 << 6, 1 << 8, 1 << 9, 1 << 15
CPUID_EDX_MMX, CPUID_EDX_FXSR, CPUID_EDX_SSE, CPUID_EDX_SSE2 = 1 << 23, 1 << 24, 1 << 25, 1 << 26
CPUID_FEATURES_EDX = (CPUID_EDX_FPU | CPUID_EDX_PSE | CPUID_EDX_TSC | CPUID_EDX_MSR
                      | CPUID_EDX_PAE | CPUID_EDX_CX8 | CPUID_EDX_CMOV | CPUID_EDX_MMX
                      | CPUID_EDX_FXSR | CPUID_EDX_SSE | CPUID_EDX_SSE2)
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
TSC_HZ = 1_000_000_000         # RDTSC counts nanoseconds of the machine's clock


def cpuid(leaf: int) -> tuple[int, int, int, int]:
    if leaf in CPUID_LEAVES:
        return CPUID_LEAVES[leaf]
    if leaf < 0x8000_0000:
        return CPUID_LEAVES[1] if leaf <= 1 else (0, 0, 0, 0)
    return (0, 0, 0, 0)


class DeliveryError(Exception):
    """Something the CPU would do that is not modelled here (task gate, V86, ...)."""


class TripleFault(DeliveryError):
    """A fault while delivering a double fault: the CPU shuts down."""


class GuestFault(Exception):
    """An architectural exception raised while the machine acts for the guest."""

    def __init__(self, vector: int, error_code: int | None = None, cr2: int | None = None,
                 why: str = "") -> None:
        super().__init__(f"{EXCEPTION_NAMES.get(vector, hex(vector))}"
                         + (f"({error_code:#x})" if error_code is not None else "")
                         + (f": {why}" if why else ""))
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


# --- linear to physical (SDM vol. 3A, chapter 4) -------------------------------------
PAGING_REGISTERS = (X.UC_X86_REG_CR0, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4)


def _read_phys(uc: Any, address: int, size: int) -> int:
    return int.from_bytes(bytes(uc.mem_read(address, size)), "little")


def _write_phys(uc: Any, address: int, value: int, size: int) -> None:
    uc.mem_write(address, value.to_bytes(size, "little"))


def _nx_enabled(uc: Any) -> bool:
    try:
        return bool(uc.msr_read(EFER_MSR) & EFER_NXE)
    except Exception:  # noqa: BLE001 - a binding without MSR access: no NX
        return False


@dataclass(frozen=True)
class Walk:
    """The result of walking the page tables for one linear address."""

    physical: int | None       # None: not present at some level
    writable: bool = True
    user: bool = True
    executable: bool = True
    entries: tuple[tuple[int, int, int], ...] = ()  # (address, value, size) of each entry


def walk(uc: Any, linear: int) -> Walk:
    """Walk the current page tables for ``linear`` (no checks, no A/D updates)."""
    cr0, cr3, cr4 = uc.reg_read_many(PAGING_REGISTERS) if hasattr(uc, "reg_read_many") \
        else (uc.reg_read(r) for r in PAGING_REGISTERS)
    linear &= 0xFFFF_FFFF
    if not cr0 & CR0_PG:
        return Walk(linear)
    entries: list[tuple[int, int, int]] = []
    if cr4 & CR4_PAE:
        nx = _nx_enabled(uc)
        pdpte_address = (cr3 & 0xFFFF_FFE0) + ((linear >> 30) & 3) * 8
        pdpte = _read_phys(uc, pdpte_address, 8)
        if not pdpte & PTE_P:
            return Walk(None)
        table = pdpte & 0x000F_FFFF_FFFF_F000
        levels = ((21, 0x1FF, 8), (12, 0x1FF, 8))
        large_mask = 0x1F_FFFF
    else:
        nx = False
        table = cr3 & 0xFFFF_F000
        levels = ((22, 0x3FF, 4), (12, 0x3FF, 4))
        large_mask = 0x3F_FFFF if cr4 & CR4_PSE else 0
    writable = user = executable = True
    for depth, (shift, index_mask, size) in enumerate(levels):
        address = table + ((linear >> shift) & index_mask) * size
        entry = _read_phys(uc, address, size)
        if not entry & PTE_P:
            return Walk(None, writable, user, executable, tuple(entries))
        entries.append((address, entry, size))
        writable &= bool(entry & PTE_RW)
        user &= bool(entry & PTE_US)
        executable &= not (nx and entry & PTE_XD)
        if depth == 0 and entry & PTE_PS and large_mask:
            frame = entry & 0x000F_FFFF_FFE0_0000 if size == 8 else entry & 0xFFC0_0000
            return Walk(frame | (linear & large_mask), writable, user, executable,
                        tuple(entries))
        table = entry & (0x000F_FFFF_FFFF_F000 if size == 8 else 0xFFFF_F000)
    return Walk(table | (linear & 0xFFF), writable, user, executable, tuple(entries))


def translate(uc: Any, linear: int, *, write: bool = False, user: bool = False,
              fetch: bool = False) -> int:
    """Physical address of ``linear`` for an access of that kind (SDM 4.6 checks);
    sets Accessed (and Dirty for a write) like the CPU; raises #PF otherwise."""
    result = walk(uc, linear)
    if result.physical is not None and not result.entries:
        return result.physical  # paging off
    error = (PF_WRITE if write else 0) | (PF_USER if user else 0) | (PF_FETCH if fetch else 0)
    if result.physical is None:
        raise GuestFault(Vector.PF, error, linear & 0xFFFF_FFFF, "page not present")
    wp = bool(uc.reg_read(X.UC_X86_REG_CR0) & CR0_WP)
    if ((user and not result.user) or (write and not result.writable and (user or wp))
            or (fetch and not result.executable)):
        raise GuestFault(Vector.PF, error | PF_PRESENT, linear & 0xFFFF_FFFF,
                         "page protection")
    last = len(result.entries) - 1
    for depth, (address, entry, size) in enumerate(result.entries):
        wanted = entry | PTE_A | (PTE_D if write and depth == last else 0)
        if wanted != entry:
            _write_phys(uc, address, wanted, size)
    return result.physical


def page_fault_error_code(uc: Any, cr2: int, cpl: int) -> int:
    """The #PF error code for a fault Unicorn raised at CR2 (see module docstring)."""
    result = walk(uc, cr2)
    user = cpl == 3
    error = PF_USER if user else 0
    if result.physical is None:
        return error
    error |= PF_PRESENT
    if user and not result.user:
        return error
    if not result.writable:
        error |= PF_WRITE  # a readable page faulted: the access was a write
    elif not result.executable:
        error |= PF_FETCH
    return error


def read_linear(uc: Any, linear: int, size: int, *, user: bool = False) -> bytes:
    """``size`` bytes at a linear address (page by page)."""
    data = b""
    while size > 0:
        chunk = min(size, PAGE_SIZE - (linear & 0xFFF))
        data += bytes(uc.mem_read(translate(uc, linear, user=user), chunk))
        linear = (linear + chunk) & 0xFFFF_FFFF
        size -= chunk
    return data


def write_linear(uc: Any, linear: int, data: bytes, *, user: bool = False) -> None:
    """Store ``data`` at a linear address; every page is checked before any is written."""
    pieces = []
    offset = 0
    while offset < len(data):
        chunk = min(len(data) - offset, PAGE_SIZE - (linear & 0xFFF))
        pieces.append((translate(uc, linear, write=True, user=user), offset, chunk))
        linear = (linear + chunk) & 0xFFFF_FFFF
        offset += chunk
    for physical, start, chunk in pieces:
        uc.mem_write(physical, data[start:start + chunk])


def peek_linear(uc: Any, linear: int, size: int) -> bytes | None:
    """Bytes at a linear address for the trace and report: no checks, no A/D updates;
    None where a page is not mapped."""
    data = b""
    while size > 0:
        chunk = min(size, PAGE_SIZE - (linear & 0xFFF))
        physical = walk(uc, linear).physical
        if physical is None:
            return None
        data += bytes(uc.mem_read(physical, chunk))
        linear = (linear + chunk) & 0xFFFF_FFFF
        size -= chunk
    return data


# --- segments --------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    selector: int
    base: int
    limit: int
    big: bool          # D/B bit: 32-bit code / 32-bit stack pointer
    present: bool = True
    dpl: int = 0
    high: int = 0      # the descriptor's high dword (type bits)

    @property
    def is_code(self) -> bool:
        return bool(self.high & DESC_SYSTEM_S and self.high & DESC_CODE)

    @property
    def conforming(self) -> bool:
        return self.is_code and bool(self.high & DESC_CONFORMING)


def protected_mode(uc: Any) -> bool:
    return bool(uc.reg_read(X.UC_X86_REG_CR0) & CR0_PE) and not (
        uc.reg_read(X.UC_X86_REG_EFLAGS) & FLAG_VM)


def read_descriptor(uc: Any, selector: int, fault: int | None = None,
                    ext: int = 0) -> tuple[int, int]:
    """The two dwords of a GDT/LDT descriptor.  Beyond the table limit: the fault
    ``fault`` with the selector as error code if given, else a DeliveryError."""
    if selector & 4:
        _, table_base, table_limit, _ = uc.reg_read(X.UC_X86_REG_LDTR)
    else:
        _, table_base, table_limit, _ = uc.reg_read(X.UC_X86_REG_GDTR)
    offset = selector & ~7
    if offset + 7 > table_limit:
        if fault is not None:
            raise GuestFault(fault, (selector & 0xFFFC) | ext,
                             why=f"selector {selector:#06x} beyond the table limit")
        raise DeliveryError(f"selector {selector:#06x} is beyond the descriptor table limit")
    raw = read_linear(uc, table_base + offset, 8)
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
    if high & DESC_GRANULAR:
        limit = limit << 12 | 0xFFF
    return Segment(selector, base, limit, bool(high & DESC_BIG), bool(high & DESC_PRESENT),
                   (high >> 13) & 3, high)


def code_is_32bit(uc: Any) -> bool:
    return segment(uc, "cs").big


def current_privilege(uc: Any) -> int:
    """CPL: 0 in real mode, 3 in virtual-8086 mode, else CS's RPL."""
    if not uc.reg_read(X.UC_X86_REG_CR0) & CR0_PE:
        return 0
    if uc.reg_read(X.UC_X86_REG_EFLAGS) & FLAG_VM:
        return 3
    return int(uc.reg_read(X.UC_X86_REG_CS) & 3)


PC_REGISTERS = (X.UC_X86_REG_CR0, X.UC_X86_REG_EFLAGS, X.UC_X86_REG_CS, X.UC_X86_REG_EIP)


def linear_pc(uc: Any) -> int:
    """CS base + EIP."""
    if hasattr(uc, "reg_read_many"):
        cr0, eflags, cs, eip = uc.reg_read_many(PC_REGISTERS)
        if not cr0 & CR0_PE or eflags & FLAG_VM:
            return ((cs & 0xFFFF) << 4) + eip & 0xFFFF_FFFF
    return (segment(uc, "cs").base + uc.reg_read(X.UC_X86_REG_EIP)) & 0xFFFF_FFFF


def code_bytes(uc: Any, size: int = 16) -> bytes | None:
    """The bytes at CS:EIP through the page tables (None where unmapped)."""
    try:
        return peek_linear(uc, linear_pc(uc), size)
    except Exception:  # noqa: BLE001 - unmapped physical memory, bad CS descriptor
        return None


# --- interrupt and exception delivery (SDM 6.12, INT n pseudo-code) ------------------
def _push_frame(uc: Any, stack: Segment, esp: int, values: Sequence[int], width: int,
                user: bool) -> int:
    """Write ``values`` (first pushed first) below ``esp`` on ``stack``; the new ESP.
    Nothing is written unless every page is writable (a fault leaves memory alone)."""
    mask = 0xFFFF_FFFF if stack.big else 0xFFFF
    pointer = (esp - width * len(values)) & mask
    frame = b"".join((value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
                     for value in reversed(values))
    write_linear(uc, (stack.base + pointer) & 0xFFFF_FFFF, frame, user=user)
    return (esp & ~mask) | pointer


def _deliver_real_mode(uc: Any, vector: int) -> None:
    """Real mode (SDM 20.1.4): FLAGS, CS, IP on SS:SP; CS:IP from the IVT."""
    eflags, cs, eip, ss, esp = uc.reg_read_many(
        (X.UC_X86_REG_EFLAGS, X.UC_X86_REG_CS, X.UC_X86_REG_EIP, X.UC_X86_REG_SS,
         X.UC_X86_REG_ESP)) if hasattr(uc, "reg_read_many") else (
        uc.reg_read(X.UC_X86_REG_EFLAGS), uc.reg_read(X.UC_X86_REG_CS),
        uc.reg_read(X.UC_X86_REG_EIP), uc.reg_read(X.UC_X86_REG_SS),
        uc.reg_read(X.UC_X86_REG_ESP))
    # The IVT is wherever IDTR says (normally 0/0x3FF), and its limit holds -- "LIDT
    # with limit 0, then INT" is the classic way to reset a PC.
    _, ivt_base, ivt_limit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
    if vector * 4 + 3 > ivt_limit:
        raise TripleFault(f"vector {vector:#x} is beyond the real-mode IDTR limit "
                          f"{ivt_limit:#x}")
    new_esp = _push_frame(uc, Segment(ss, ss << 4, 0xFFFF, False), esp, (eflags, cs, eip), 2,
                          False)
    target = _read_phys(uc, ivt_base + vector * 4, 4)
    uc.reg_write(X.UC_X86_REG_ESP, new_esp)
    uc.reg_write(X.UC_X86_REG_EFLAGS, eflags & ~(FLAG_IF | FLAG_TF | FLAG_AC))
    uc.reg_write(X.UC_X86_REG_CS, target >> 16)
    uc.reg_write(X.UC_X86_REG_EIP, target & 0xFFFF)


def _enter_ring0(uc: Any, cr0: int, ss: int) -> None:
    """Make CPL 0 with SS = ``ss`` (see "Privilege changes" in the module docstring)."""
    uc.reg_write(X.UC_X86_REG_CR0, cr0 & ~CR0_PE)
    uc.reg_write(X.UC_X86_REG_SS, ss)    # real-mode load: cached DPL 0, so CPL 0
    uc.reg_write(X.UC_X86_REG_CR0, cr0)
    uc.reg_write(X.UC_X86_REG_SS, ss)    # the real descriptor, checked at CPL 0


def deliver_event(uc: Any, vector: int, *, error_code: int | None = None,
                  software: bool = False) -> None:
    """Vector the CPU to ``vector``; EIP must already be the return address.

    ``software``: an INT n / INT3 / INTO (gate DPL checked against CPL, EXT = 0).
    Raises :class:`GuestFault` when a check fails (the caller applies the
    double-fault rules), :class:`DeliveryError` for what is not modelled.
    """
    cr0 = uc.reg_read(X.UC_X86_REG_CR0)
    if not cr0 & CR0_PE:
        _deliver_real_mode(uc, vector)
        return
    eflags = uc.reg_read(X.UC_X86_REG_EFLAGS)
    if eflags & FLAG_VM:
        raise DeliveryError(f"vector {vector:#x} in virtual-8086 mode (not modelled)")
    ext = 0 if software else ERR_EXT
    gate_error = vector * 8 + ERR_IDT + ext
    cs, eip, ss, esp = (uc.reg_read(r) for r in (X.UC_X86_REG_CS, X.UC_X86_REG_EIP,
                                                 X.UC_X86_REG_SS, X.UC_X86_REG_ESP))
    cpl = cs & 3
    # The gate.
    _, idt_base, idt_limit, _ = uc.reg_read(X.UC_X86_REG_IDTR)
    if vector * 8 + 7 > idt_limit:
        raise GuestFault(Vector.GP, gate_error, why=f"vector {vector:#x} beyond the IDT limit")
    gate = int.from_bytes(read_linear(uc, idt_base + vector * 8, 8), "little")
    gate_type = (gate >> 40) & 0xF
    gate_dpl = (gate >> 45) & 3
    if gate_type not in (GATE_TASK, GATE_INTERRUPT_16, GATE_TRAP_16, GATE_INTERRUPT_32,
                         GATE_TRAP_32) or (gate >> 44) & 1:
        raise GuestFault(Vector.GP, gate_error, why=f"IDT entry {vector:#x} is not a gate")
    if software and gate_dpl < cpl:
        raise GuestFault(Vector.GP, gate_error,
                         why=f"INT {vector:#x} from CPL {cpl} through a DPL {gate_dpl} gate")
    if not gate >> 47 & 1:
        raise GuestFault(Vector.NP, gate_error, why=f"IDT gate {vector:#x} not present")
    if gate_type == GATE_TASK:
        raise DeliveryError(f"IDT gate {vector:#x} is a task gate (task switches are "
                            "not modelled)")
    # The target code segment.
    selector = (gate >> 16) & 0xFFFF
    offset = (gate & 0xFFFF) | ((gate >> 48) & 0xFFFF) << 16
    if selector & 0xFFFC == 0:
        raise GuestFault(Vector.GP, ext, why=f"IDT gate {vector:#x} has a null selector")
    code = descriptor_segment(selector, *read_descriptor(uc, selector, Vector.GP, ext))
    if not code.is_code or code.dpl > cpl:
        raise GuestFault(Vector.GP, (selector & 0xFFFC) | ext,
                         why=f"IDT gate {vector:#x} target {selector:#06x} is not a code "
                             f"segment reachable from CPL {cpl}")
    if not code.present:
        raise GuestFault(Vector.NP, (selector & 0xFFFC) | ext,
                         why=f"IDT gate {vector:#x} target {selector:#06x} not present")
    width = 4 if gate_type in GATES_32 else 2
    values = [eflags, cs, eip] + ([] if error_code is None else [error_code])
    new_cpl = cpl if code.conforming else code.dpl
    if new_cpl < cpl:
        # Inter-privilege: the new stack comes from the TSS (SDM 6.12.1, 7.2.1).
        if new_cpl != 0:
            raise DeliveryError(f"vector {vector:#x}: a change to ring {new_cpl} "
                                "(only ring 0 is modelled)")
        tr_selector, tss_base, tss_limit, tss_flags = uc.reg_read(X.UC_X86_REG_TR)
        if tr_selector & 0xFFFC == 0:
            raise GuestFault(Vector.TS, ext, why="no TSS loaded (TR is null)")
        tss_type = (tss_flags >> 8) & 0xF if tss_flags else 0x9
        if tss_type and tss_type not in TSS_32_TYPES:
            raise DeliveryError(f"vector {vector:#x}: stack switch through a 16-bit TSS "
                                "(not modelled)")
        if TSS32_SS0 + 3 > tss_limit:
            raise GuestFault(Vector.TS, (tr_selector & 0xFFFC) | ext, why="TSS too small")
        tss = read_linear(uc, tss_base, TSS32_SS0 + 4)
        new_esp = int.from_bytes(tss[TSS32_ESP0:TSS32_ESP0 + 4], "little")
        new_ss = int.from_bytes(tss[TSS32_SS0:TSS32_SS0 + 2], "little")
        if new_ss & 0xFFFC == 0:
            raise GuestFault(Vector.TS, ext, why="TSS SS0 is null")
        stack = descriptor_segment(new_ss, *read_descriptor(uc, new_ss, Vector.TS, ext))
        if (new_ss & 3 != new_cpl or stack.dpl != new_cpl or stack.is_code
                or not stack.high & DESC_WRITABLE or not stack.high & DESC_SYSTEM_S):
            raise GuestFault(Vector.TS, (new_ss & 0xFFFC) | ext, why="TSS SS0 is unusable")
        if not stack.present:
            raise GuestFault(Vector.SS, (new_ss & 0xFFFC) | ext, why="TSS SS0 not present")
        frame = [ss, esp, *values]
        pushed_esp = _push_frame(uc, stack, new_esp, frame, width, False)
        _enter_ring0(uc, cr0, new_ss)
    else:
        stack = segment(uc, "ss")
        pushed_esp = _push_frame(uc, stack, esp, values, width, cpl == 3)
    cleared = FLAG_TF | FLAG_NT | FLAG_RF | FLAG_VM
    if gate_type in INTERRUPT_GATES:
        cleared |= FLAG_IF
    uc.reg_write(X.UC_X86_REG_ESP, pushed_esp)
    uc.reg_write(X.UC_X86_REG_EFLAGS, eflags & ~cleared)
    uc.reg_write(X.UC_X86_REG_CS, (selector & ~3) | new_cpl)
    uc.reg_write(X.UC_X86_REG_EIP, offset if width == 4 else offset & 0xFFFF)


def deliver_interrupt(uc: Any, vector: int, *, error_code: int | None = None,
                      software: bool = False) -> None:
    """Deliver a hardware interrupt or software INT, faults in delivery included."""
    try:
        deliver_event(uc, vector, error_code=error_code, software=software)
    except GuestFault as fault:
        deliver_exception(uc, fault.vector, fault.error_code, cr2=fault.cr2,
                          first=vector if not software else None)


def _becomes_double_fault(first: int, second: int) -> bool:
    """SDM table 6-5: a contributory fault or #PF while delivering a contributory one,
    or either while delivering a #PF."""
    if first in CONTRIBUTORY:
        return second in CONTRIBUTORY
    if first == Vector.PF:
        return second in CONTRIBUTORY or second == Vector.PF
    return False


def deliver_exception(uc: Any, vector: int, error_code: int | None = None, *,
                      cr2: int | None = None, first: int | None = None) -> None:
    """Deliver a CPU exception (EIP = the faulting instruction), with the SDM's
    double- and triple-fault rules for faults met while delivering it."""
    pending = (vector, error_code, cr2)
    history = [] if first is None else [first]
    while True:
        vector, error_code, cr2 = pending
        if cr2 is not None:
            uc.reg_write(X.UC_X86_REG_CR2, cr2)
        if vector not in EXCEPTIONS_WITH_ERROR_CODE or not protected_mode(uc):
            error_code = None
        elif error_code is None:
            error_code = 0
        try:
            deliver_event(uc, vector, error_code=error_code)
            return
        except GuestFault as fault:
            history.append(vector)
            if vector == Vector.DF:
                raise TripleFault(f"{' -> '.join(EXCEPTION_NAMES.get(v, hex(v)) for v in history)}"
                                  f" -> {fault}") from None
            if _becomes_double_fault(vector, fault.vector):
                pending = (Vector.DF, 0, None)
            else:
                pending = (fault.vector, fault.error_code, fault.cr2)
            if len(history) > 8:
                raise TripleFault(f"exception loop: {fault}") from None


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
    item_size: int = 0  # bytes per item (1, 2 or 4)
    length: int = 0     # bytes of the instruction, prefixes included


def decode_rep_string_io(code: bytes, code_32: bool) -> StringIo | None:
    """Decode prefixes + opcode; None unless it is a REP INS/OUTS."""
    rep = False
    address_32 = code_32
    operand_32 = code_32
    segment_name = "ds"
    for position, byte in enumerate(code):
        if byte in PREFIX_REP:
            rep = True
        elif byte == PREFIX_ADDRESS_SIZE:
            address_32 = not code_32
        elif byte == PREFIX_OPERAND_SIZE:
            operand_32 = not code_32
        elif byte in SEGMENT_OVERRIDES:
            segment_name = SEGMENT_OVERRIDES[byte]
        elif byte in OTHER_PREFIXES:
            continue
        elif byte in OPCODES_INS or byte in OPCODES_OUTS:
            if not rep:
                return None
            size = 1 if byte in (OPCODES_INS[0], OPCODES_OUTS[0]) else (4 if operand_32 else 2)
            if byte in OPCODES_INS:
                return StringIo(True, address_32, "es", size, position + 1)
            return StringIo(False, address_32, segment_name, size, position + 1)
        else:
            return None
    return None
