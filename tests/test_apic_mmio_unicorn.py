"""The APIC register pages mapped into Unicorn with ``mmio_map``, as emu/machine.py will.

Guest code stores to and loads from 0xFEE00000 and 0xFEC00000; the callbacks see
offsets within each page and the access size, and hand them to the sans-IO devices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import need_tool
from oracles import run
from unicorn import UC_ARCH_X86, UC_MODE_32, Uc
from unicorn import x86_const as X

from devices.apicbus import ApicBus
from devices.ioapic import IOAPIC_BASE, IoApic
from devices.lapic import LAPIC_BASE, LocalApic

ORIGIN = 0x1000
SOURCE = f"""
bits 32
org {ORIGIN:#x}
    mov dword [{LAPIC_BASE + 0xF0:#x}], 0x1FF          ; SVR: software enable
    mov eax, [{LAPIC_BASE + 0x30:#x}]                  ; version
    mov dword [{IOAPIC_BASE:#x}], 0x10 + 2 * 14        ; IOREGSEL: pin 14 low dword
    mov dword [{IOAPIC_BASE + 0x10:#x}], 0x3E          ; IOWIN: vector 0x3E, unmasked
    mov dword [{IOAPIC_BASE:#x}], 0x01                 ; IOAPICVER
    mov ebx, [{IOAPIC_BASE + 0x10:#x}]
    movzx ecx, byte [{LAPIC_BASE + 0xF0:#x}]           ; a byte load of SVR
    hlt
"""


class Clock:
    def now_ns(self) -> int:
        return 0


def test_guest_programs_both_apics_through_mmio(tmp_path: Path) -> None:
    source = tmp_path / "apic.asm"
    source.write_text(SOURCE)
    run(need_tool("nasm"), "-f", "bin", "-o", tmp_path / "apic.bin", source)
    code = (tmp_path / "apic.bin").read_bytes()
    bus = ApicBus()
    lapic, ioapic = LocalApic(Clock(), bus), IoApic(bus)
    accesses: list[tuple[str, int, int]] = []

    def mapped(device: Any, name: str) -> tuple[Any, Any]:
        def read(_uc: Uc, offset: int, size: int, _user: Any) -> int:
            accesses.append((f"{name} read", offset, size))
            return device.read(offset, size)

        def write(_uc: Uc, offset: int, size: int, value: int, _user: Any) -> None:
            accesses.append((f"{name} write", offset, size))
            device.write(offset, size, value)

        return read, write

    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(ORIGIN, code)
    for base, device, name in ((LAPIC_BASE, lapic, "lapic"), (IOAPIC_BASE, ioapic, "ioapic")):
        read, write = mapped(device, name)
        uc.mmio_map(base, 0x1000, read, None, write, None)
    uc.emu_start(ORIGIN, ORIGIN + code.index(b"\xf4"))

    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x00050014
    assert uc.reg_read(X.UC_X86_REG_EBX) == 0x00170011
    assert uc.reg_read(X.UC_X86_REG_ECX) == 0xFF
    assert lapic.software_enabled
    assert accesses[:2] == [("lapic write", 0xF0, 4), ("lapic read", 0x30, 4)]
    assert accesses[-1] == ("lapic read", 0xF0, 1)
    ioapic.set_irq(14, True)
    assert lapic.interrupt_pending() and lapic.acknowledge() == 0x3E
