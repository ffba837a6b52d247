"""Fast ``rep ins``/``rep outs``: same memory, registers and device traffic as the slow path."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from test_machine_roms import build_rom

from emu.machine import Machine

PATTERN_PORT = 0x300
EARLY_STOP = 37  # the device ends each string call early, like an ATA DRQ block


class PatternDevice:
    """A StringPortDevice at 0x300: reads return a running counter, writes are recorded."""

    def __init__(self) -> None:
        self.counter = 0
        self.written = bytearray()
        self.string_calls = 0

    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(PATTERN_PORT, 4)]

    def read(self, port: int, size: int) -> int:
        value = 0
        for shift in range(size):
            value |= (self.counter * 7 + 3 & 0xFF) << (8 * shift)
            self.counter += 1
        return value

    def write(self, port: int, size: int, value: int) -> None:
        self.written += value.to_bytes(size, "little")

    def read_string(self, port: int, size: int, count: int) -> bytes:
        self.string_calls += 1
        return b"".join(self.read(port, size).to_bytes(size, "little")
                        for _ in range(min(count, EARLY_STOP)))

    def write_string(self, port: int, size: int, data: bytes | memoryview) -> int:
        self.string_calls += 1
        items = min(len(data) // size, EARLY_STOP)
        self.written += bytes(data[:items * size])
        return items


SAVE_REGS = """
    mov [bx], edi
    mov [bx+4], esi
    mov [bx+8], ecx
    pushfd
    pop eax
    mov [bx+12], eax
    add bx, 16
"""

GUEST = """
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7000
    mov bx, 0x600              ; register dumps go to 0x600, 16 bytes each
    mov dx, 0x300
    ; 1. 16-bit addressing, forwards, words
    mov ax, 0x2000
    mov es, ax
    mov edi, 0xABCD0010        ; upper half must survive 16-bit addressing
    mov ecx, 0x55550000 + 100
    cld
    rep insw
""" + SAVE_REGS + """
    ; 2. backwards (DF=1), bytes
    mov edi, 0x0400
    mov ecx, 90
    std
    rep insb
    cld
""" + SAVE_REGS + """
    ; 3. 32-bit addressing (a32 prefix) forwards, dwords
    mov ax, 0x3000
    mov es, ax
    mov edi, 0x8000
    mov ecx, 64
    a32 rep insd
""" + SAVE_REGS + """
    ; 4. 32-bit addressing backwards, words
    mov edi, 0x9000
    mov ecx, 77
    std
    a32 rep insw
    cld
""" + SAVE_REGS + """
    ; 5. rep outsw from DS:SI forwards, with a segment override
    mov ax, 0x2000
    mov fs, ax
    mov esi, 0x0010
    mov ecx, 100
    fs rep outsw
""" + SAVE_REGS + """
    ; 6. rep outsb backwards
    mov ax, 0x2000
    mov ds, ax
    mov esi, 0x0300
    mov ecx, 80
    std
    rep outsb
    cld
    xor ax, ax
    mov ds, ax
""" + SAVE_REGS + """
    ; 7. a burst that would wrap DI at 64 KiB: the rest is left to the slow path
    mov ax, 0x4000
    mov es, ax
    mov edi, 0xFFF0
    mov ecx, 20
    rep insw
""" + SAVE_REGS + """
    ; 8. rep with CX = 0 moves nothing
    xor ecx, ecx
    mov edi, 0x100
    rep insw
""" + SAVE_REGS + """
    mov al, 0
    out 0xF4, al
    hlt
"""


def run_guest(tmp_path: Path, fast: bool) -> tuple[bytes, PatternDevice]:
    rom = build_rom(tmp_path, GUEST, name=f"stringio-{fast}")
    device = PatternDevice()
    with Machine(bios=rom, timeout=60) as machine:
        machine.fast_string_io = fast
        machine.bus.attach(device)
        result = machine.run()
        assert result.exit_code == 0, result.report
        memory = bytes(machine.uc.mem_read(0, 0x50000))
    return memory, device


@pytest.fixture(scope="module")
def both_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[tuple[bytes, PatternDevice],
                                                                   tuple[bytes, PatternDevice]]:
    tmp_path = tmp_path_factory.mktemp("stringio")
    return run_guest(tmp_path, fast=True), run_guest(tmp_path, fast=False)


def test_fast_path_was_used(both_paths) -> None:
    (_, fast_device), (_, slow_device) = both_paths
    assert fast_device.string_calls > 8
    assert slow_device.string_calls == 0


def test_registers_after_each_burst_match_slow_path(both_paths) -> None:
    (fast_memory, _), (slow_memory, _) = both_paths
    dumps = slice(0x600, 0x600 + 16 * 8)
    assert fast_memory[dumps] == slow_memory[dumps]
    # spot-check the slow path's own answer for case 1: DI advanced by 200, CX low half 0
    edi = int.from_bytes(slow_memory[0x600:0x604], "little")
    ecx = int.from_bytes(slow_memory[0x608:0x60C], "little")
    assert edi == 0xABCD0010 + 200 and ecx == 0x55550000


def test_guest_memory_matches_slow_path(both_paths) -> None:
    (fast_memory, _), (slow_memory, _) = both_paths
    assert fast_memory == slow_memory


def test_device_saw_the_same_stream(both_paths) -> None:
    (_, fast_device), (_, slow_device) = both_paths
    assert fast_device.counter == slow_device.counter
    assert fast_device.written == slow_device.written
    assert len(fast_device.written) == 200 + 80
