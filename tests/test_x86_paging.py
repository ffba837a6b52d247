"""emu.x86's page walk on hand-built page tables (a stand-in for Unicorn's registers and
physical memory): 32-bit paging with 4 KiB and 4 MiB pages, PAE with 2 MiB pages and
NX, the U/S and R/W checks (CR0.WP), the #PF error codes, Accessed and Dirty bits.
Under a real CPU the same rules are compared with QEMU in test_x86_protection.py."""

from __future__ import annotations

import struct

import pytest
from unicorn import x86_const as X

from emu import x86

P, RW, US, A, D, PS = 0x1, 0x2, 0x4, 0x20, 0x40, 0x80
XD = 1 << 63


class FakeCpu:
    """Control registers, EFER and a sparse physical memory."""

    def __init__(self, cr0: int, cr3: int, cr4: int, efer: int = 0) -> None:
        self.registers = {X.UC_X86_REG_CR0: cr0, X.UC_X86_REG_CR3: cr3, X.UC_X86_REG_CR4: cr4}
        self.efer = efer
        self.memory = bytearray(0x400000)

    def reg_read(self, register: int) -> int:
        return self.registers[register]

    def msr_read(self, msr: int) -> int:
        assert msr == x86.EFER_MSR
        return self.efer

    def mem_read(self, address: int, size: int) -> bytes:
        return bytes(self.memory[address:address + size])

    def mem_write(self, address: int, data: bytes) -> None:
        self.memory[address:address + len(data)] = data

    def put32(self, address: int, value: int) -> None:
        struct.pack_into("<I", self.memory, address, value)

    def put64(self, address: int, value: int) -> None:
        struct.pack_into("<Q", self.memory, address, value)

    def get32(self, address: int) -> int:
        return int(struct.unpack_from("<I", self.memory, address)[0])


PG_WP = x86.CR0_PG | x86.CR0_WP | x86.CR0_PE


def legacy_cpu(wp: bool = True) -> FakeCpu:
    cpu = FakeCpu(PG_WP if wp else x86.CR0_PG | x86.CR0_PE, 0x1000, x86.CR4_PSE)
    cpu.put32(0x1000, 0x2000 | P | RW | US)                 # 0-4 MiB through the PT at 2000h
    cpu.put32(0x1004, 0x00000000 | P | RW | PS)             # 4-8 MiB: 4 MiB page at 0
    cpu.put32(0x2000 + 0x10 * 4, 0x30000 | P | RW | US)     # 10000h: user, writable
    cpu.put32(0x2000 + 0x11 * 4, 0x31000 | P | US)          # 11000h: user, read-only
    cpu.put32(0x2000 + 0x12 * 4, 0x32000 | P | RW)          # 12000h: supervisor
    return cpu


def test_legacy_translation_and_accessed_dirty_bits() -> None:
    cpu = legacy_cpu()
    assert x86.translate(cpu, 0x10123) == 0x30123
    assert cpu.get32(0x1000) & A and cpu.get32(0x2040) & A
    assert not cpu.get32(0x2040) & D
    assert x86.translate(cpu, 0x10123, write=True, user=True) == 0x30123
    assert cpu.get32(0x2040) & D
    assert x86.translate(cpu, 0x456789) == 0x056789          # the 4 MiB page


@pytest.mark.parametrize(("linear", "write", "user", "error_code"), [
    (0x13000, False, False, 0),                               # not present, read
    (0x13000, True, True, x86.PF_WRITE | x86.PF_USER),        # not present, user write
    (0x12000, False, True, x86.PF_PRESENT | x86.PF_USER),     # supervisor page from ring 3
    (0x11000, True, True, x86.PF_PRESENT | x86.PF_WRITE | x86.PF_USER),
    (0x11000, True, False, x86.PF_PRESENT | x86.PF_WRITE),    # WP=1: ring 0 too
])
def test_legacy_page_faults(linear: int, write: bool, user: bool, error_code: int) -> None:
    cpu = legacy_cpu()
    with pytest.raises(x86.GuestFault) as fault:
        x86.translate(cpu, linear + 4, write=write, user=user)
    assert fault.value.vector == x86.Vector.PF
    assert fault.value.error_code == error_code
    assert fault.value.cr2 == linear + 4


def test_supervisor_writes_read_only_pages_when_wp_is_clear() -> None:
    assert x86.translate(legacy_cpu(wp=False), 0x11008, write=True) == 0x31008


def test_pae_two_megabyte_pages_and_nx() -> None:
    cpu = FakeCpu(PG_WP, 0x1000, x86.CR4_PAE, efer=x86.EFER_NXE)
    cpu.put64(0x1000, 0x2000 | P)                             # PDPTE 0
    cpu.put64(0x2000, 0x3000 | P | RW | US)                   # 0-2 MiB through the PT
    cpu.put64(0x2008, 0x200000 | P | RW | PS | XD)            # 2-4 MiB: 2 MiB page, no execute
    cpu.put64(0x3000 + 5 * 8, 0x5000 | P | US)                # 5000h: user, read-only
    assert x86.translate(cpu, 0x5010, user=True) == 0x5010
    assert x86.translate(cpu, 0x212345) == 0x212345
    with pytest.raises(x86.GuestFault) as fault:
        x86.translate(cpu, 0x212345, fetch=True)
    assert fault.value.error_code == x86.PF_PRESENT | x86.PF_FETCH
    with pytest.raises(x86.GuestFault) as fault:
        x86.translate(cpu, 0x5010, write=True, user=True)
    assert fault.value.error_code == x86.PF_PRESENT | x86.PF_WRITE | x86.PF_USER


def test_error_code_recomputed_from_a_walk() -> None:
    """The fallback when Unicorn's saved context cannot be read."""
    cpu = legacy_cpu()
    assert x86.page_fault_error_code(cpu, 0x13000, 3) == x86.PF_USER
    assert x86.page_fault_error_code(cpu, 0x12000, 3) == x86.PF_PRESENT | x86.PF_USER
    assert x86.page_fault_error_code(cpu, 0x11000, 0) == x86.PF_PRESENT | x86.PF_WRITE


def test_double_fault_table() -> None:
    """SDM table 6-5."""
    assert x86._becomes_double_fault(x86.Vector.GP, x86.Vector.NP)
    assert x86._becomes_double_fault(x86.Vector.PF, x86.Vector.PF)
    assert x86._becomes_double_fault(x86.Vector.PF, x86.Vector.GP)
    assert not x86._becomes_double_fault(x86.Vector.GP, x86.Vector.PF)
    assert not x86._becomes_double_fault(x86.Vector.UD, x86.Vector.GP)
