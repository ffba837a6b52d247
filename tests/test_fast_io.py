"""The machine's fast I/O paths behave exactly like the plain ones.

READ DMA straight into guest RAM (a memory that lends views) against the copying
path, the bus-master's one-step dword PRD pointer write against four byte writes,
the port bus's merged byte-owner table, and a device exception raised inside an
IN/OUT hook called straight from C still ending the run as an internal error.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ata import attach, make_disk

import disks
from devices.busmaster import BusMasterIde, DirectGuestMemory
from devices.interfaces import BytearrayMemory
from emu.machine import Machine, StopReason
from emu.portbus import PortBus

BM = 0xC000
COMMAND, STATUS, TABLE = BM, BM + 2, BM + 4
START, TO_MEMORY = 0x01, 0x08
ACTIVE, INTERRUPT = 0x01, 0x04
EOT = 0x80000000
PRD_TABLE = 0x1000
MEMORY = 1 << 20


class WindowMemory(BytearrayMemory):
    """A bytearray memory that lends views of itself, recording what was written."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.written_ranges: list[tuple[int, int]] = []

    def ram_window(self, address: int, length: int) -> memoryview | None:
        if 0 <= address and address + length <= len(self.data):
            return memoryview(self.data)[address:address + length]
        return None

    def written(self, address: int, length: int) -> None:
        self.written_ranges.append((address, length))


def transfer(image: disks.Image, memory: BytearrayMemory, entries: list[tuple[int, int]],
             lba: int, count: int) -> tuple[int, bytes]:
    """READ DMA of ``count`` sectors at ``lba`` through a table of ``entries``: the
    engine status afterwards and the whole of memory."""
    host = attach(image)
    busmaster = BusMasterIde([host.channel], memory)
    busmaster.base = BM
    raw = b"".join(struct.pack("<II", address, (size & 0xFFFF)
                               | (EOT if index == len(entries) - 1 else 0))
                   for index, (address, size) in enumerate(entries))
    memory.write(PRD_TABLE, raw)
    busmaster.write(TABLE, 4, PRD_TABLE)
    host.command(0xC8, count=count, lba=lba)
    busmaster.write(COMMAND, 1, START | TO_MEMORY)
    return busmaster.read(STATUS, 1), bytes(memory.data)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[disks.Image]:
    image = make_disk(tmp_path / "disk.raw")
    yield image
    image.close()


def test_window_memory_is_direct() -> None:
    assert isinstance(WindowMemory(16), DirectGuestMemory)
    assert not isinstance(BytearrayMemory(16), DirectGuestMemory)


def test_adjacent_entries_are_one_read(disk: disks.Image) -> None:
    entries = [(0x20000, 0x10000), (0x30000, 0x8000), (0x50000, 0x8000)]   # 256 sectors
    memory = WindowMemory(MEMORY)
    status, direct = transfer(disk, memory, entries, 1, 256)
    _, copied = transfer(disk, BytearrayMemory(MEMORY), entries, 1, 256)
    assert status & (ACTIVE | INTERRUPT) == INTERRUPT
    assert direct == copied
    assert memory.written_ranges == [(0x20000, 0x18000), (0x50000, 0x8000)]


def test_entries_beyond_memory_take_the_copying_path(disk: disks.Image) -> None:
    entries = [(0x10000, 0x400), (MEMORY - 0x200, 0x400)]   # the second straddles the end
    memory = WindowMemory(MEMORY)
    status, direct = transfer(disk, memory, entries, 3, 4)
    _, copied = transfer(disk, BytearrayMemory(MEMORY), entries, 3, 4)
    assert status & (ACTIVE | INTERRUPT) == INTERRUPT
    assert direct == copied
    assert memory.written_ranges == [(0x10000, 0x400)]


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 16), min_size=1, max_size=6),
       gaps=st.lists(st.sampled_from([0, 0, 0x200, 0x1000]), min_size=6, max_size=6),
       lba=st.integers(0, 200), short=st.booleans())
def test_direct_equals_copying(disk: disks.Image, sizes: list[int], gaps: list[int],
                               lba: int, short: bool) -> None:
    """Random tables (some entries adjacent, a table shorter than the command or
    longer): the same status and the same memory on both paths."""
    entries, address = [], 0x20000
    for sectors, gap in zip(sizes, gaps, strict=False):
        entries.append((address, sectors * 512))
        address += sectors * 512 + gap
    total = sum(sizes)
    count = total + 3 if short else max(1, total - 2)
    direct_status, direct = transfer(disk, WindowMemory(MEMORY), entries, lba, count)
    copied_status, copied = transfer(disk, BytearrayMemory(MEMORY), entries, lba, count)
    assert direct_status == copied_status
    assert direct == copied


def test_dword_prd_pointer_write_equals_byte_writes(disk: disks.Image) -> None:
    wide = BusMasterIde([attach(disk).channel], BytearrayMemory(16))
    narrow = BusMasterIde([attach(disk).channel], BytearrayMemory(16))
    wide.base = narrow.base = BM
    for value in (0x12345677, 0xFFFFFFFF, 0):
        wide.write(TABLE, 4, value)
        for byte in range(4):
            narrow.write(TABLE + byte, 1, value >> (8 * byte) & 0xFF)
        assert wide.read(TABLE, 4) == narrow.read(TABLE, 4) == value & 0xFFFFFFFC
    wide.write(TABLE + 2, 2, 0xABCD)                       # a word inside it still works
    assert wide.read(TABLE, 4) == 0xABCD0000
    wide.base = None
    assert wide.read(TABLE, 1) == 0xFF                     # unmapped: no register answers


class Recorder:
    def __init__(self, ports: list[tuple[int, int]]) -> None:
        self.ports = ports
        self.seen: list[tuple[int, int, int]] = []

    def io_ports(self) -> list[tuple[int, int]]:
        return self.ports

    def read(self, port: int, size: int) -> int:
        return 0x1234_5678

    def write(self, port: int, size: int, value: int) -> None:
        self.seen.append((port, size, value))


def test_bus_byte_owners_follow_attach_overlay_and_remap() -> None:
    bus = PortBus()
    host, overlay, moving = Recorder([(0xCF8, 8)]), Recorder([(0xCF9, 1)]), Recorder([])
    bus.attach(host)
    bus.attach_byte_overlay(overlay)
    bus.write(0xCF9, 1, 0x1FF)
    bus.write(0xCF8, 4, 0x8000_0000)
    assert overlay.seen == [(0xCF9, 1, 0xFF)]
    assert host.seen == [(0xCF8, 4, 0x8000_0000)]
    assert bus.read(0xCF9, 2) == 0x5678 and bus.read(0xCF9, 1) == 0x78
    bus.attach(moving)
    moving.ports = [(0xD000, 4)]
    bus.remap(moving)
    bus.write(0xD001, 1, 7)
    assert moving.seen == [(0xD001, 1, 7)]
    moving.ports = []
    bus.remap(moving)
    assert bus.read(0xD001, 1) == 0xFF                     # gone from the byte table too


def test_device_exception_in_a_port_hook_is_an_internal_error(tmp_path: Path) -> None:
    rom = bytearray(b"\x90" * 4096)
    # at F000:FFF0 (offset 0xFF0 of a 4 KiB ROM): mov dx, 0x1F7 ; in al, dx ; hlt
    rom[0xFF0:0xFF6] = bytes((0xBA, 0xF7, 0x01, 0xEC, 0xF4, 0xF4))
    image = make_disk(tmp_path / "disk.raw")
    image.close()
    with Machine(bios=bytes(rom), disks=[f"{tmp_path / 'disk.raw'},format=raw"]) as machine:
        def broken(port: int, size: int) -> int:
            raise RuntimeError("device exploded")
        machine.channels[0]._reads[0x1F7] = broken
        machine.bus.remap(machine.channels[0])   # the bus picks up the new handler
        result = machine.run()
    assert result.reason is StopReason.INTERNAL_ERROR
    assert "device exploded" in result.detail
