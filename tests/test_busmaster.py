"""The PIIX bus-master engine: its registers, PRD tables and the datasheet's outcomes."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ata import CONTROL, DEV0, LBA, NIEN, SECTOR, Host, attach, file_bytes, make_disk, pattern

import disks
from devices.ata import DRDY, DRQ, ERR, ERROR_UNC, AtaChannel, AtaDrive
from devices.busmaster import BusMasterIde
from devices.interfaces import BytearrayMemory, NullIrq

BM = 0xC000
COMMAND, STATUS, TABLE = BM, BM + 2, BM + 4
START, TO_MEMORY = 0x01, 0x08
ACTIVE, ERROR, INTERRUPT = 0x01, 0x02, 0x04
EOT = 0x80000000
PRD_TABLE = 0x1000


class Rig:
    """A channel with a disk, guest memory and the engine at BM."""

    def __init__(self, image: disks.Image) -> None:
        self.host: Host = attach(image)
        self.memory = BytearrayMemory(4 << 20)
        self.busmaster = BusMasterIde([self.host.channel], self.memory)
        self.busmaster.base = BM

    def table(self, entries: list[tuple[int, int]], at: int = PRD_TABLE) -> None:
        """PRDs (address, byte count; 0x10000 is written as 0), EOT on the last."""
        raw = b"".join(struct.pack("<II", address, (count & 0xFFFF)
                                   | (EOT if index == len(entries) - 1 else 0))
                       for index, (address, count) in enumerate(entries))
        self.memory.write(at, raw)
        self.busmaster.write(TABLE, 4, at)

    def start(self, to_memory: bool = True) -> None:
        self.busmaster.write(COMMAND, 1, START | (TO_MEMORY if to_memory else 0))

    def stop(self) -> None:
        self.busmaster.write(COMMAND, 1, 0)

    def status(self) -> int:
        return self.busmaster.read(STATUS, 1)

    def clear(self) -> None:
        self.busmaster.write(STATUS, 1, INTERRUPT | ERROR)

    def gather(self, entries: list[tuple[int, int]]) -> bytes:
        return b"".join(bytes(self.memory.data[address:address + count])
                        for address, count in entries)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[disks.Image]:
    image = make_disk(tmp_path / "disk.raw")
    yield image
    image.close()


@pytest.fixture
def rig(disk: disks.Image) -> Rig:
    return Rig(disk)


def test_unmapped_engine_has_no_ports(disk: disks.Image) -> None:
    busmaster = BusMasterIde([attach(disk).channel], BytearrayMemory(16))
    assert busmaster.io_ports() == []
    busmaster.base = 0xD000
    assert busmaster.io_ports() == [(0xD000, 16)]


def test_register_semantics(rig: Rig) -> None:
    bm = rig.busmaster
    bm.write(TABLE, 4, 0x12345677)
    assert bm.read(TABLE, 4) == 0x12345674                 # dword aligned
    assert bm.read(TABLE + 2, 2) == 0x1234
    bm.write(STATUS, 1, 0x60 | ACTIVE)                     # DMA-capable bits stick, Active doesn't
    assert bm.read(STATUS, 1) == 0x60
    rig.start()
    assert bm.read(STATUS, 1) == 0x60 | ACTIVE
    assert bm.read(COMMAND, 1) == START | TO_MEMORY
    rig.host.command(0xE7)                                 # any INTRQ sets Interrupt
    assert bm.read(STATUS, 1) & INTERRUPT
    bm.write(STATUS, 1, 0x60)                              # writing 0 keeps it
    assert bm.read(STATUS, 1) & INTERRUPT
    bm.write(STATUS, 1, 0x60 | INTERRUPT)                  # write 1 to clear
    assert bm.read(STATUS, 1) == 0x60 | ACTIVE
    rig.stop()
    assert bm.read(STATUS, 1) == 0x60
    assert bm.read(BM + 8, 1) == 0xFF                      # no secondary channel wired


def test_table_and_transfer_of_equal_size(rig: Rig) -> None:
    entries = [(0x10000, 512), (0x30000, 1024), (0x50002, 1536)]
    rig.table(entries)
    rig.host.command(0xC8, count=6, lba=3)
    rig.start()
    assert rig.status() & (ACTIVE | INTERRUPT) == INTERRUPT
    assert rig.gather(entries) == pattern(3, 6)
    assert rig.host.status() & (DRQ | ERR) == 0


def test_zero_count_means_64_kib(rig: Rig, disk: disks.Image) -> None:
    rig.table([(0x100000, 0x10000), (0x200000, 0x10000)])
    rig.host.command(0xC8, count=256, lba=0)
    rig.start()
    assert rig.status() & (ACTIVE | INTERRUPT) == INTERRUPT
    assert bytes(rig.memory.data[0x100000:0x110000]) + \
        bytes(rig.memory.data[0x200000:0x210000]) == file_bytes(disk, 0, 256)


def test_long_table_keeps_active_until_stopped(rig: Rig) -> None:
    rig.table([(0x10000, 512), (0x20000, 1024), (0x30000, 2048)])
    rig.memory.write(0x30000, b"\xEE" * 2048)
    rig.host.command(0xC8, count=2, lba=7)
    rig.start()
    assert rig.status() & (ACTIVE | INTERRUPT) == ACTIVE | INTERRUPT
    assert rig.host.status() & (DRQ | ERR) == 0            # the drive is done
    assert rig.gather([(0x10000, 512), (0x20000, 512)]) == pattern(7, 2)
    assert bytes(rig.memory.data[0x20200:0x20400]) == bytes(512)
    assert bytes(rig.memory.data[0x30000:0x30800]) == b"\xEE" * 2048
    rig.stop()
    assert rig.status() & ACTIVE == 0


def test_short_table_leaves_the_drive_waiting(rig: Rig) -> None:
    rig.table([(0x10000, 1024)])
    rig.host.command(0xC8, count=3, lba=40)
    rig.start()
    assert rig.status() & (ACTIVE | INTERRUPT) == 0
    assert rig.host.alt_status() & DRQ                     # still in the data phase
    assert bytes(rig.memory.data[0x10000:0x10400]) == pattern(40, 2)
    rig.stop()
    rig.table([(0x40000, 512)], at=0x2000)                 # a new table continues the command
    rig.start()
    assert rig.status() & (ACTIVE | INTERRUPT) == INTERRUPT
    assert bytes(rig.memory.data[0x40000:0x40200]) == pattern(42)
    assert rig.host.status() & (DRQ | ERR) == 0


def test_entries_need_not_align_to_sectors(rig: Rig, disk: disks.Image) -> None:
    entries = [(0x10000, 300), (0x10400, 724), (0x11000, 2)]
    data = pattern(90, 2, seed=3)[:1026]
    position = 0
    for address, count in entries:
        rig.memory.write(address, data[position:position + count])
        position += count
    rig.table(entries)
    rig.host.command(0xCA, count=2, lba=90)
    rig.start(to_memory=False)
    # 1026 bytes of table for 1024 of transfer: long by one entry
    assert rig.status() & (ACTIVE | INTERRUPT) == ACTIVE | INTERRUPT
    assert file_bytes(disk, 90, 2) == data[:1024]


def test_command_issued_while_engine_is_running(rig: Rig) -> None:
    entries = [(0x10000, 1024)]
    rig.table(entries)
    rig.start()
    assert rig.status() == ACTIVE
    rig.host.command(0xC8, count=2, lba=11)
    assert rig.status() & (ACTIVE | INTERRUPT) == INTERRUPT
    assert rig.gather(entries) == pattern(11, 2)


def test_no_transfer_without_bus_master_enable(rig: Rig) -> None:
    rig.busmaster.set_bus_master_enabled(False)
    rig.table([(0x10000, 512)])
    rig.host.command(0xC8, count=1, lba=5)
    rig.start()
    assert rig.status() == ACTIVE and rig.host.alt_status() & DRQ
    rig.busmaster.set_bus_master_enabled(True)
    assert rig.status() == INTERRUPT
    assert bytes(rig.memory.data[0x10000:0x10200]) == pattern(5)


def test_nien_means_no_interrupt_status(rig: Rig) -> None:
    rig.host.outb(CONTROL, NIEN)
    rig.table([(0x10000, 512)])
    rig.host.command(0xC8, count=1, lba=5)
    rig.start()
    assert rig.status() & (ACTIVE | INTERRUPT) == 0        # INTRQ never asserted
    assert rig.host.status() & (DRQ | ERR) == 0


def test_image_error_during_dma(rig: Rig, disk: disks.Image,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise disks.ImageIOError(disk.path, "simulated")
    monkeypatch.setattr(disk, "read", broken)
    monkeypatch.setattr(disk, "readinto", broken)
    rig.table([(0x10000, 1024)])
    rig.host.command(0xC8, count=2, lba=5)
    rig.start()
    assert rig.status() & (ACTIVE | INTERRUPT) == INTERRUPT
    assert rig.host.status() == DRDY | ERR and rig.host.error() == ERROR_UNC


def test_secondary_channel_uses_the_upper_eight_ports(tmp_path: Path) -> None:
    with make_disk(tmp_path / "p.raw") as primary_image, \
            make_disk(tmp_path / "s.raw") as secondary_image:
        primary = AtaChannel(0x1F0, 0x3F6, NullIrq())
        primary.attach(0, AtaDrive(primary_image))
        secondary_irq = NullIrq()
        secondary = AtaChannel(0x170, 0x376, secondary_irq)
        secondary.attach(0, AtaDrive(secondary_image))
        memory = BytearrayMemory(1 << 20)
        busmaster = BusMasterIde([primary, secondary], memory)
        busmaster.base = BM
        memory.write(0x1000, struct.pack("<II", 0x8000, EOT | 512))
        busmaster.write(BM + 8 + 4, 4, 0x1000)
        for port, value in ((0x176, DEV0 | LBA), (0x172, 1), (0x173, 9), (0x174, 0),
                            (0x175, 0), (0x177, 0xC8)):
            secondary.write(port, 1, value)
        busmaster.write(BM + 8, 1, START | TO_MEMORY)
        assert busmaster.read(BM + 10, 1) & (ACTIVE | INTERRUPT) == INTERRUPT
        assert busmaster.read(STATUS, 1) == 0
        assert bytes(memory.data[0x8000:0x8200]) == pattern(9)
        assert secondary_irq.level


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.integers(1, 0x8000).map(lambda n: n * 2), min_size=1, max_size=12),
       lba=st.integers(0, 200), count=st.integers(1, 40), write=st.booleans())
def test_any_table_covering_the_transfer_moves_the_right_bytes(
        disk: disks.Image, sizes: list[int], lba: int, count: int, write: bool) -> None:
    rig = Rig(disk)
    length = count * SECTOR
    if sum(sizes) < length:
        sizes.append(length - sum(sizes))
    entries = []
    address = 0x10000
    for size in sizes:
        entries.append((address, size))
        address += size + 0x100
    rig.table([(a, s if s < 0x10000 else 0) for a, s in entries])
    stream = pattern(lba, count, seed=len(sizes))
    if write:
        position = 0
        for entry_address, size in entries:
            rig.memory.write(entry_address, stream[position:position + size])
            position += size
        rig.host.command(0xCA, count=count, lba=lba)
    else:
        rig.host.command(0xC8, count=count, lba=lba)
    rig.start(to_memory=not write)
    status = rig.status()
    assert status & INTERRUPT
    assert bool(status & ACTIVE) == (sum(sizes) > length)
    if write:
        assert file_bytes(disk, lba, count) == stream
    else:
        assert rig.gather(entries)[:length] == file_bytes(disk, lba, count)
