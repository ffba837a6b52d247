"""The ATA channel driven by plain port reads and writes, the way real drivers do.

Sequences follow SeaBIOS's src/hw/ata.c (probe, reset, send_cmd, PIO transfer)
and ATA/ATAPI-6 protocols; data is checked against the raw image file itself.
"""

from __future__ import annotations

import os
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import disks
from devices.ata import (
    BSY,
    COMMANDS,
    DRDY,
    DRQ,
    ERR,
    ERROR_ABRT,
    ERROR_IDNF,
    ERROR_UNC,
    AtaChannel,
    AtaDrive,
    AtapiDrive,
    Protocol,
)
from devices.busmaster import BusMasterIde
from devices.geometry import (
    Translation,
    bios_translation,
    cmos_translation_byte,
    drive_geometry,
    guess_geometry,
    logical_geometry,
)
from devices.interfaces import BytearrayMemory, NullIrq

SECTOR = 512
BASE = 0x1F0
CONTROL = 0x3F6
BM_BASE = 0xC000

# Register ports (SeaBIOS names in comments).
DATA, ERROR, FEATURES, COUNT, LBA_LOW, LBA_MID, LBA_HIGH, DEVICE, STATUS, COMMAND = (
    BASE, BASE + 1, BASE + 1, BASE + 2, BASE + 3, BASE + 4, BASE + 5, BASE + 6, BASE + 7,
    BASE + 7)
NIEN, SRST, HOB, HD15 = 0x02, 0x04, 0x80, 0x08
DEV0, DEV1, LBA = 0xA0, 0xB0, 0x40


def pattern(lba: int, count: int = 1, seed: int = 0) -> bytes:
    """Distinct, recognisable contents for ``count`` sectors from ``lba``."""
    return b"".join(struct.pack("<Q", (lba + i) * 1000003 + seed + j) * 1
                    for i in range(count) for j in range(SECTOR // 8))


class Host:
    """A driver's view of one channel: outb/inb, plus helpers replaying command setup."""

    def __init__(self, channel: AtaChannel, irq: NullIrq) -> None:
        self.channel = channel
        self.irq = irq

    def outb(self, port: int, value: int) -> None:
        self.channel.write(port, 1, value)

    def inb(self, port: int) -> int:
        return self.channel.read(port, 1)

    def status(self) -> int:
        return self.inb(STATUS)

    def alt_status(self) -> int:
        return self.inb(CONTROL)

    def error(self) -> int:
        return self.inb(ERROR)

    def command(self, opcode: int, *, count: int = 1, lba: int = 0, device: int = DEV0 | LBA,
                feature: int = 0) -> None:
        """LBA28 / CHS register setup then the command (SeaBIOS send_cmd order)."""
        self.outb(DEVICE, device | (lba >> 24 & 0x0F))
        self.outb(FEATURES, feature)
        self.outb(COUNT, count & 0xFF)
        self.outb(LBA_LOW, lba & 0xFF)
        self.outb(LBA_MID, lba >> 8 & 0xFF)
        self.outb(LBA_HIGH, lba >> 16 & 0xFF)
        self.outb(COMMAND, opcode)

    def command48(self, opcode: int, *, count: int, lba: int, device: int = DEV0 | LBA,
                  feature: int = 0) -> None:
        """LBA48: high-order bytes first, then low (each write shifts into HOB)."""
        self.outb(DEVICE, device)
        for shift in (8, 0):
            self.outb(FEATURES, feature >> shift & 0xFF)
            self.outb(COUNT, count >> shift & 0xFF)
            self.outb(LBA_LOW, lba >> (shift * 3) & 0xFF)
            self.outb(LBA_MID, lba >> (shift * 3 + 8) & 0xFF)
            self.outb(LBA_HIGH, lba >> (shift * 3 + 16) & 0xFF)
        self.outb(COMMAND, opcode)

    def chs_command(self, opcode: int, *, cylinder: int, head: int, sector: int,
                    count: int = 1) -> None:
        self.outb(DEVICE, DEV0 | head)
        self.outb(COUNT, count & 0xFF)
        self.outb(LBA_LOW, sector)
        self.outb(LBA_MID, cylinder & 0xFF)
        self.outb(LBA_HIGH, cylinder >> 8)
        self.outb(COMMAND, opcode)

    def insw(self, words: int) -> bytes:
        pieces = []
        left = words
        while left:
            piece = self.channel.read_string(DATA, 2, left)
            pieces.append(piece)
            left -= len(piece) // 2
        return b"".join(pieces)

    def outsw(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            taken = self.channel.write_string(DATA, 2, view)
            view = view[taken * 2:]

    def read_blocks(self, sectors: int, block: int = 1) -> bytes:
        """SeaBIOS ata_pio_transfer, reading: a DRQ block, then wait and check status."""
        blocks = []
        left = sectors
        status = self.status()                           # ata_wait_data
        while left:
            assert status & (BSY | DRQ | ERR) == DRQ, f"status {status:#x}"
            step = min(block, left)
            blocks.append(self.insw(step * SECTOR // 2))
            left -= step
            self.alt_status()                            # pause_await_not_bsy
            status = self.status()
        assert status & (BSY | DRQ | ERR) == 0
        return b"".join(blocks)

    def write_blocks(self, data: bytes, block: int = 1) -> int:
        """SeaBIOS ata_pio_transfer, writing; returns the final status."""
        position = 0
        status = self.alt_status()
        while position < len(data):
            assert status & (BSY | DRQ | ERR) == DRQ, f"status {status:#x}"
            step = min(block * SECTOR, len(data) - position)
            self.outsw(data[position:position + step])
            position += step
            status = self.status()
        return status

    def identify(self) -> list[int]:
        self.command(0xEC, count=0, device=DEV0)
        return list(struct.unpack("<256H", self.read_blocks(1)))


def make_disk(path: Path, size: int = 8 << 20, *, fill: bool = True) -> disks.Image:
    image = disks.create(path, "raw", size)
    if fill:
        sectors = min(size // SECTOR, 256)
        image.write(0, pattern(0, sectors))
    return image


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[disks.Image]:
    image = make_disk(tmp_path / "disk.raw")
    yield image
    image.close()


def attach(image: disks.Image, unit: int = 0, **drive_options: object) -> Host:
    irq = NullIrq()
    channel = AtaChannel(BASE, CONTROL, irq)
    channel.attach(unit, AtaDrive(image, **drive_options))  # type: ignore[arg-type]
    return Host(channel, irq)


@pytest.fixture
def host(disk: disks.Image) -> Host:
    return attach(disk)


def file_bytes(image: disks.Image, lba: int, count: int) -> bytes:
    image.flush()
    with open(image.path, "rb") as file:
        file.seek(lba * SECTOR)
        return file.read(count * SECTOR).ljust(count * SECTOR, b"\0")


# --- the command table ------------------------------------------------------

def test_every_command_the_issue_lists_has_a_row() -> None:
    listed = [0xEC, 0x20, 0x21, 0x30, 0x31, 0x24, 0x34, 0xC4, 0xC5, 0x29, 0x39, 0xC6, 0x40,
              0x41, 0x42, 0x3C, 0x91, 0x10, 0x1F, 0x70, 0x7F, 0x90, 0xE7, 0xEA, 0xEF, 0xE5,
              0xE0, 0xE1, 0xE2, 0xE3, 0x94, 0x95, 0x96, 0x97, 0xF8, 0x27, 0xC8, 0xC9, 0xCA,
              0xCB, 0x25, 0x35, 0x06, 0x08, 0xA0, 0xA1]
    for opcode in listed:
        assert opcode in COMMANDS, hex(opcode)
    assert COMMANDS[0x25].protocol is Protocol.DMA and COMMANDS[0x25].lba48
    assert COMMANDS[0xC4].multiple and COMMANDS[0x39].write


# --- probe and reset, as SeaBIOS does them ------------------------------------

def await_not_busy(host: Host) -> int:
    for _ in range(10):
        status = host.status()
        if not status & BSY:
            return status
    pytest.fail("device stays busy")


def seabios_reset(host: Host, slave: bool) -> None:
    """SeaBIOS ata_reset: pulse SRST with nIEN, wait, select the device, wait for RDY."""
    host.outb(CONTROL, HD15 | NIEN | SRST)
    host.outb(CONTROL, HD15 | NIEN)
    await_not_busy(host)
    if slave:
        host.outb(DEVICE, DEV1)
        await_not_busy(host)
        assert host.inb(DEVICE) == DEV1
    else:
        host.outb(DEVICE, DEV0)
        host.status()              # await_rdy (times out when only device 1 is present)
    host.outb(CONTROL, HD15)


def seabios_pio_identify(host: Host, slave: bool, opcode: int) -> list[int] | None:
    """SeaBIOS send_ata_identity: ata_pio_cmd_data with nIEN set, then re-enabled."""
    host.outb(CONTROL, HD15 | NIEN)
    try:
        await_not_busy(host)
        host.command(opcode, count=0, device=DEV1 if slave else DEV0)
        status = await_not_busy(host)                    # ata_wait_data
        if status & ERR or not status & DRQ:
            return None
        data = host.insw(256)
        host.alt_status()
        status = await_not_busy(host)
        assert status & (BSY | DRQ | ERR) == 0
        return list(struct.unpack("<256H", data))
    finally:
        host.outb(CONTROL, HD15)


def seabios_detect(host: Host) -> dict[int, tuple[str, list[int]]]:
    """SeaBIOS ata_detect for one channel: ("ata" or "atapi", IDENTIFY words) per drive."""
    found = {}
    did_reset = False
    for slave in (False, True):
        await_not_busy(host)
        selector = DEV1 if slave else DEV0
        host.outb(DEVICE, selector)
        await_not_busy(host)
        host.outb(DEVICE, selector)
        device = host.inb(DEVICE)
        host.outb(COUNT, 0x55)
        host.outb(LBA_LOW, 0xAA)
        if (host.inb(COUNT), host.inb(LBA_LOW), device) != (0x55, 0xAA, selector):
            continue
        if not did_reset:
            seabios_reset(host, slave)
            did_reset = True
        packet_words = seabios_pio_identify(host, slave, 0xA1)
        if packet_words is not None:
            found[int(slave)] = ("atapi", packet_words)
            continue
        if not host.status():
            continue                                     # "Status not set"
        assert host.status() & DRDY
        words = seabios_pio_identify(host, slave, 0xEC)
        assert words is not None
        found[int(slave)] = ("ata", words)
        if not slave and words[93] & 0xDF61 == 0x4041:
            break                                        # device 0 answers for device 1
    assert not host.irq.level                            # no interrupt left pending
    return found


def test_seabios_probe_finds_the_master_and_skips_the_absent_slave(host: Host) -> None:
    found = seabios_detect(host)
    assert list(found) == [0]
    kind, words = found[0]
    assert kind == "ata"
    assert words[0] & 0x8000 == 0                          # ATA device
    assert words[60] | words[61] << 16 == (8 << 20) // SECTOR
    assert words[80] >> 4 & 1                              # "ATA-n" SeaBIOS prints


def test_seabios_probe_finds_master_and_slave(disk: disks.Image, tmp_path: Path) -> None:
    host = attach(disk)
    with make_disk(tmp_path / "slave.raw", 4 << 20) as slave_image:
        host.channel.attach(1, AtaDrive(slave_image))
        found = seabios_detect(host)
        assert [kind for kind, _ in found.values()] == ["ata", "ata"]
        assert found[1][1][60] == (4 << 20) // SECTOR


def test_empty_channel_fails_the_register_echo_test() -> None:
    host = Host(AtaChannel(0x170, 0x376, NullIrq()), NullIrq())
    host.outb(0x176, DEV0)
    host.outb(0x172, 0x55)
    host.outb(0x173, 0xAA)
    assert (host.inb(0x172), host.inb(0x173), host.inb(0x177), host.inb(0x376)) == (0, 0, 0, 0)


def test_slave_only_channel(disk: disks.Image) -> None:
    host = attach(disk, unit=1)
    assert list(seabios_detect(host)) == [1]
    host.outb(DEVICE, DEV0)
    assert host.status() == 0 and host.error() == 0


def test_srst_leaves_ata_signature_and_diagnostic_code(host: Host) -> None:
    host.command(0x20, count=4)                          # leave a transfer pending
    host.outb(CONTROL, SRST)
    assert host.alt_status() & BSY
    host.outb(COMMAND, 0xEC)                             # ignored while busy
    host.outb(CONTROL, 0)
    assert host.status() == DRDY | 0x10
    assert (host.inb(COUNT), host.inb(LBA_LOW), host.inb(LBA_MID), host.inb(LBA_HIGH)) == \
        (1, 1, 0, 0)
    assert host.error() == 0x01
    assert host.inb(DEVICE) & 0x10 == 0                  # device 0 selected
    assert host.channel.units[0].pio is None
    assert host.irq.raised == 1                          # only the READ's first block


def test_execute_device_diagnostic(disk: disks.Image, tmp_path: Path) -> None:
    host = attach(disk)
    with make_disk(tmp_path / "slave.raw") as slave_image:
        host.channel.attach(1, AtaDrive(slave_image))
        host.command(0x90, device=DEV1)                  # run by both, whatever DEV says
        assert host.irq.level
        assert host.status() & (BSY | DRQ | ERR) == 0
        assert host.error() == 0x01                      # device 0 reports for both
        assert (host.inb(COUNT), host.inb(LBA_LOW), host.inb(LBA_MID), host.inb(LBA_HIGH)) \
            == (1, 1, 0, 0)
        host.outb(DEVICE, DEV1)
        assert host.error() == 0x01


def test_packet_commands_and_device_reset_abort_on_a_disk(host: Host) -> None:
    for opcode in (0xA0, 0xA1, 0x08):
        host.command(opcode)
        assert host.status() == DRDY | ERR
        assert host.error() == ERROR_ABRT


# --- IDENTIFY ------------------------------------------------------------------

def ata_string(words: list[int], first: int, count: int) -> str:
    return b"".join(struct.pack(">H", word) for word in words[first:first + count]).decode()


def test_identify_words(disk: disks.Image) -> None:
    host = attach(disk, model="TEST MODEL", serial="SN-42")
    raw = b""
    host.command(0xEC, count=0, device=DEV0)
    raw = host.read_blocks(1)
    words = list(struct.unpack("<256H", raw))
    sectors = (8 << 20) // SECTOR
    assert sum(raw) % 256 == 0 and words[255] & 0xFF == 0xA5
    assert ata_string(words, 27, 20).rstrip() == "TEST MODEL"
    assert ata_string(words, 10, 10).rstrip() == "SN-42"
    assert ata_string(words, 23, 4).strip()
    assert (words[1], words[3], words[6]) == (16, 16, 63)   # 8 MiB: 16 x 16 x 63
    assert words[53] & 0x07 == 0x07
    assert (words[54], words[55], words[56]) == (16, 16, 63)
    assert words[57] | words[58] << 16 == 16 * 16 * 63
    assert words[47] == 0x8010 and words[59] == 0x0110
    assert words[49] & 0x0300 == 0x0300                      # LBA and DMA
    assert words[60] | words[61] << 16 == sectors
    assert sum(words[100 + i] << (16 * i) for i in range(4)) == sectors
    assert words[83] & 0x3400 == 0x3400 and words[86] & 0x3400 == 0x3400
    assert words[83] >> 14 == 1 and words[84] >> 14 == 1 and words[87] >> 14 == 1
    assert words[63] & 0x07 == 0x07 and words[88] & 0x3F == 0x3F
    assert bin(words[88] >> 8 | (words[63] >> 8 & 0x7)).count("1") == 1  # one mode selected
    assert words[64] == 0x0003
    assert words[169] & 1 and words[105] >= 1
    assert words[93] & 0x6000 == 0x6000


def test_identify_with_read_only_image_does_not_advertise_trim(tmp_path: Path) -> None:
    make_disk(tmp_path / "ro.raw").close()
    with disks.open(tmp_path / "ro.raw", readonly=True) as image:
        words = attach(image).identify()
        assert words[169] & 1 == 0


def test_identify_reflects_set_features(host: Host) -> None:
    host.command(0xEF, feature=0x82)                     # write cache off
    host.command(0xEF, feature=0x03, count=0x22)         # multiword DMA 2
    words = host.identify()
    assert words[85] & 0x20 == 0 and words[82] & 0x20
    assert words[63] >> 8 == 0x04 and words[88] >> 8 == 0
    host.command(0xEF, feature=0x03, count=0x44)         # UDMA 4
    host.command(0xEF, feature=0x02)
    words = host.identify()
    assert words[88] >> 8 == 0x10 and words[63] >> 8 == 0 and words[85] & 0x20
    host.command(0xEF, feature=0x03, count=0x46)         # UDMA 6 is not offered
    assert host.status() & ERR and host.error() == ERROR_ABRT
    host.command(0xEF, feature=0x77)                     # unknown subcommand
    assert host.error() == ERROR_ABRT


# --- LBA28 ----------------------------------------------------------------------

def test_lba28_read_sectors(host: Host, disk: disks.Image) -> None:
    host.command(0x20, count=3, lba=5)
    assert host.irq.raised == 1
    data = host.read_blocks(3)
    assert data == pattern(5, 3)
    assert host.irq.raised == 3                          # one per DRQ block, none at the end
    assert host.status() == DRDY | 0x10
    # the task file holds the last sector's address afterwards
    assert (host.inb(LBA_LOW), host.inb(LBA_MID), host.inb(LBA_HIGH)) == (7, 0, 0)


def test_lba28_write_sectors_reach_the_image(host: Host, disk: disks.Image) -> None:
    host.command(0x30, count=3, lba=300)
    assert host.irq.raised == 0                          # the first block: DRQ, no interrupt
    final = host.write_blocks(pattern(300, 3, seed=7))
    assert final & (BSY | DRQ | ERR) == 0 and final & DRDY
    assert host.irq.raised == 3                          # after every block
    assert file_bytes(disk, 300, 3) == pattern(300, 3, seed=7)


def test_word_and_dword_and_string_reads_agree(host: Host) -> None:
    host.command(0x20, count=2, lba=0)
    words = b"".join(host.channel.read(DATA, 2).to_bytes(2, "little") for _ in range(256))
    dwords = b"".join(host.channel.read(DATA, 4).to_bytes(4, "little") for _ in range(128))
    assert words + dwords == pattern(0, 2)


def test_string_transfer_stops_at_the_drq_block_end(host: Host) -> None:
    host.command(0x20, count=2, lba=0)
    first = host.channel.read_string(DATA, 2, 1000)
    assert len(first) == SECTOR
    assert host.channel.read_string(DATA, 2, 1000) == pattern(1)
    host.command(0x30, count=2, lba=10)
    assert host.channel.write_string(DATA, 4, bytes(4 * 1000)) == 128


def test_count_zero_means_256_sectors(host: Host, disk: disks.Image) -> None:
    host.command(0x20, count=0, lba=0)
    assert host.read_blocks(256) == file_bytes(disk, 0, 256)


def test_read_verify_and_seek(host: Host) -> None:
    host.command(0x40, count=10, lba=100)
    assert host.status() == DRDY | 0x10 and host.irq.level is False
    host.command(0x42 - 0x02 + 0x02, count=10, lba=(8 << 20) // SECTOR - 5)
    assert host.status() & ERR and host.error() == ERROR_IDNF
    host.command(0x70, lba=100)
    assert host.status() & (ERR | DRQ) == 0
    host.command(0x70, lba=(8 << 20) // SECTOR)
    assert host.error() == ERROR_IDNF


def test_write_verify(host: Host, disk: disks.Image) -> None:
    host.command(0x3C, count=1, lba=9)
    host.write_blocks(pattern(9, seed=3))
    assert file_bytes(disk, 9, 1) == pattern(9, seed=3)


# --- CHS ------------------------------------------------------------------------

def test_chs_with_default_translation(host: Host, disk: disks.Image) -> None:
    # 16 heads x 63 sectors: C/H/S 1/2/3 is LBA (1*16+2)*63+2
    lba = (1 * 16 + 2) * 63 + 2
    host.chs_command(0x30, cylinder=1, head=2, sector=3)
    host.write_blocks(pattern(lba, seed=1))
    assert file_bytes(disk, lba, 1) == pattern(lba, seed=1)
    host.chs_command(0x20, cylinder=1, head=2, sector=3)
    assert host.read_blocks(1) == pattern(lba, seed=1)


def test_initialize_device_parameters_changes_the_translation(host: Host,
                                                              disk: disks.Image) -> None:
    host.outb(DEVICE, DEV0 | (4 - 1))                    # 4 heads
    host.outb(COUNT, 17)                                 # 17 sectors per track
    host.outb(COMMAND, 0x91)
    assert host.irq.level
    assert host.status() & (ERR | DRQ) == 0
    words = host.identify()
    cylinders = (8 << 20) // SECTOR // (4 * 17)
    assert (words[1], words[3], words[6]) == (16, 16, 63)          # default unchanged
    assert (words[54], words[55], words[56]) == (cylinders, 4, 17)
    assert words[57] | words[58] << 16 == cylinders * 4 * 17
    lba = (5 * 4 + 3) * 17 + 16
    host.chs_command(0x30, cylinder=5, head=3, sector=17, count=2)   # crosses a track
    host.write_blocks(pattern(lba, 2, seed=9))
    assert file_bytes(disk, lba, 2) == pattern(lba, 2, seed=9)
    # last sector written is C/H/S 5/3/17 + 1 = 6/0/1
    assert (host.inb(LBA_LOW), host.inb(LBA_MID), host.inb(DEVICE) & 0x0F) == (1, 6, 0)
    host.chs_command(0x20, cylinder=0, head=4, sector=1)            # head beyond 4
    assert host.status() & ERR and host.error() == ERROR_IDNF
    host.chs_command(0x20, cylinder=0, head=0, sector=18)           # sector beyond 17
    assert host.error() == ERROR_IDNF
    host.chs_command(0x20, cylinder=0, head=0, sector=0)            # sectors count from 1
    assert host.error() == ERROR_IDNF
    host.chs_command(0x20, cylinder=cylinders, head=0, sector=1)
    assert host.error() == ERROR_IDNF


def test_unusable_translation_fails_chs_until_fixed(host: Host) -> None:
    host.outb(DEVICE, DEV0 | 15)
    host.outb(COUNT, 0)
    host.outb(COMMAND, 0x91)
    assert host.status() & ERR == 0
    assert host.identify()[53] & 1 == 0
    host.chs_command(0x20, cylinder=0, head=0, sector=1)
    assert host.error() == ERROR_IDNF
    host.command(0x20, lba=0)                            # LBA still works
    assert host.read_blocks(1) == pattern(0)


# --- LBA48 ----------------------------------------------------------------------

def test_lba48_registers_read_back_with_hob(host: Host) -> None:
    host.outb(COUNT, 0x12)
    host.outb(COUNT, 0x34)
    host.outb(LBA_HIGH, 0xAB)
    host.outb(LBA_HIGH, 0xCD)
    assert host.inb(COUNT) == 0x34 and host.inb(LBA_HIGH) == 0xCD
    host.outb(CONTROL, HOB)
    assert host.inb(COUNT) == 0x12 and host.inb(LBA_HIGH) == 0xAB
    host.outb(LBA_LOW, 0x01)                             # any register write clears HOB
    assert host.inb(COUNT) == 0x34


def test_lba48_beyond_28_bits(tmp_path: Path) -> None:
    size = (1 << 28) * SECTOR + (1 << 20)                # just over 128 GiB, sparse
    with make_disk(tmp_path / "big.raw", size, fill=False) as image:
        host = attach(image)
        words = host.identify()
        assert words[60] | words[61] << 16 == (1 << 28) - 1
        assert sum(words[100 + i] << (16 * i) for i in range(4)) == size // SECTOR
        lba = (1 << 28) + 100
        host.command48(0x34, count=2, lba=lba)
        host.write_blocks(pattern(lba, 2, seed=5))
        assert file_bytes(image, lba, 2) == pattern(lba, 2, seed=5)
        host.command48(0x24, count=2, lba=lba)
        assert host.read_blocks(2) == pattern(lba, 2, seed=5)
        last = lba + 1
        assert (host.inb(LBA_LOW), host.inb(LBA_MID), host.inb(LBA_HIGH)) == \
            (last & 0xFF, last >> 8 & 0xFF, last >> 16 & 0xFF)
        host.outb(CONTROL, HOB)
        assert (host.inb(LBA_LOW), host.inb(LBA_MID), host.inb(LBA_HIGH)) == \
            (last >> 24 & 0xFF, 0, 0)
        host.outb(CONTROL, 0)
        host.command(0x20, count=1, lba=(1 << 28) - 1)   # LBA28 stops short of 2^28 - 1
        assert host.error() == ERROR_IDNF
        host.command48(0x27, count=0, lba=0)
        native = size // SECTOR - 1
        host.outb(CONTROL, HOB)
        high = host.inb(LBA_LOW) | host.inb(LBA_MID) << 8 | host.inb(LBA_HIGH) << 16
        host.outb(CONTROL, 0)
        low = host.inb(LBA_LOW) | host.inb(LBA_MID) << 8 | host.inb(LBA_HIGH) << 16
        assert high << 24 | low == native
        host.command(0xF8, device=DEV0 | LBA)
        assert host.inb(LBA_LOW) | host.inb(LBA_MID) << 8 | host.inb(LBA_HIGH) << 16 \
            | (host.inb(DEVICE) & 0x0F) << 24 == (1 << 28) - 2


def test_lba48_count_zero_means_65536(tmp_path: Path) -> None:
    with make_disk(tmp_path / "d.raw", 40 << 20) as image:
        host = attach(image)
        host.command48(0x24, count=0, lba=0)
        data = host.read_blocks(65536)
        assert len(data) == 32 << 20 and data[:SECTOR * 256] == pattern(0, 256)
        host.command48(0x24, count=0, lba=(40 << 20) // SECTOR - 65535)
        assert host.error() == ERROR_IDNF


def test_read_native_max_address(host: Host) -> None:
    host.command(0xF8, device=DEV0 | LBA)
    assert host.status() & ERR == 0
    native = host.inb(LBA_LOW) | host.inb(LBA_MID) << 8 | host.inb(LBA_HIGH) << 16
    assert native == (8 << 20) // SECTOR - 1
    host.command(0xF9, lba=native)                       # setting the native max is a no-op
    assert host.status() & ERR == 0
    host.command(0xF9, lba=native - 10)                  # no host protected area
    assert host.error() == ERROR_ABRT


# --- multiple mode ----------------------------------------------------------------

def test_read_and_write_multiple(host: Host, disk: disks.Image) -> None:
    host.command(0xC6, count=4)
    assert host.status() & ERR == 0
    assert host.identify()[59] == 0x0104
    raised = host.irq.raised
    host.command(0xC4, count=10, lba=20)
    host.status()
    assert host.channel.read_string(DATA, 2, 10_000) == pattern(20, 4)   # one 4-sector block
    assert host.read_blocks(6, block=4) == pattern(24, 6)
    assert host.irq.raised == raised + 3                 # blocks of 4, 4 and 2 sectors
    host.command(0xC5, count=9, lba=50)
    status = host.write_blocks(pattern(50, 9, seed=2), block=4)
    assert status & (ERR | DRQ) == 0
    assert file_bytes(disk, 50, 9) == pattern(50, 9, seed=2)
    host.command48(0x39, count=5, lba=70)
    host.write_blocks(pattern(70, 5, seed=4), block=4)
    host.command48(0x29, count=5, lba=70)
    assert host.read_blocks(5, block=4) == pattern(70, 5, seed=4)


@pytest.mark.parametrize("count", [3, 32, 6])
def test_set_multiple_rejects_invalid_sizes(host: Host, count: int) -> None:
    host.command(0xC6, count=count)
    assert host.status() == DRDY | ERR and host.error() == ERROR_ABRT
    assert host.identify()[59] == 0x0110                 # unchanged


def test_read_multiple_with_multiple_disabled_aborts(host: Host) -> None:
    host.command(0xC6, count=0)
    assert host.status() & ERR == 0
    assert host.identify()[59] == 0x0100
    for opcode in (0xC4, 0xC5, 0x29, 0x39):
        host.command(opcode, count=1)
        assert host.status() == DRDY | ERR and host.error() == ERROR_ABRT


# --- errors and the interrupt line --------------------------------------------------

def test_unknown_command_aborts(host: Host) -> None:
    host.command(0xFE)
    assert host.irq.level
    assert host.alt_status() == DRDY | ERR
    assert host.irq.level                                # alternate status does not clear it
    assert host.status() == DRDY | ERR
    assert not host.irq.level                            # status does
    assert host.error() == ERROR_ABRT


def test_out_of_range_gets_idnf_and_no_data(host: Host) -> None:
    last = (8 << 20) // SECTOR - 1
    host.command(0x20, count=2, lba=last)
    assert host.status() == DRDY | ERR and host.error() == ERROR_IDNF
    assert host.channel.units[0].pio is None
    host.command(0x30, count=1, lba=last + 1)
    assert host.error() == ERROR_IDNF
    host.command(0x20, count=1, lba=last)                # the last sector itself is fine
    assert len(host.read_blocks(1)) == SECTOR


def test_nien_masks_the_irq_line(host: Host) -> None:
    host.outb(CONTROL, NIEN)
    host.command(0xE7)
    assert not host.irq.level and host.channel.irq_pending
    host.outb(CONTROL, 0)                                # unmasking shows the pending interrupt
    assert host.irq.level
    host.status()
    assert not host.irq.level


def test_writing_a_command_clears_a_pending_interrupt(host: Host) -> None:
    host.command(0xE7)
    assert host.irq.level
    host.command(0x30, count=1, lba=0)                   # PIO out: no interrupt for block 1
    assert not host.irq.level


def test_read_only_image_refuses_writes_like_a_protected_drive(tmp_path: Path) -> None:
    make_disk(tmp_path / "ro.raw").close()
    with disks.open(tmp_path / "ro.raw", readonly=True) as image:
        host = attach(image)
        for opcode in (0x30, 0x34, 0xC5, 0x3C, 0xCA):
            host.command(opcode, count=1, lba=0)
            assert host.status() == DRDY | ERR and host.error() == ERROR_ABRT
            assert host.channel.units[0].pio is None
        host.command(0x20, count=1, lba=3)
        assert host.read_blocks(1) == pattern(3)
        host.command(0xE7)
        assert host.status() & ERR == 0


def test_image_errors_become_unc_and_abrt(host: Host, disk: disks.Image,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise disks.ImageIOError(disk.path, "simulated I/O error")
    monkeypatch.setattr(disk, "read", broken)
    monkeypatch.setattr(disk, "readinto", broken)
    host.command(0x20, count=2, lba=33)
    assert host.status() == DRDY | ERR and host.error() == ERROR_UNC
    assert host.inb(LBA_LOW) == 33
    monkeypatch.setattr(disk, "write", broken)
    host.command(0x30, count=1, lba=0)
    status = host.write_blocks(pattern(0))
    assert status == DRDY | ERR and host.error() == ERROR_ABRT
    monkeypatch.setattr(disk, "flush", broken)
    host.command(0xE7)
    assert host.status() & ERR and host.error() == ERROR_ABRT


def test_absent_slave_ignores_commands(host: Host) -> None:
    host.command(0xEC, device=DEV1)
    assert host.status() == 0 and not host.irq.level
    host.outb(DEVICE, DEV0)
    assert host.status() == DRDY | 0x10


def test_abandoned_pio_write_keeps_completed_sectors(host: Host, disk: disks.Image) -> None:
    host.command(0x30, count=3, lba=100)
    host.outsw(pattern(100, 1, seed=8))
    host.outsw(pattern(101, 1, seed=8)[:100])            # half a sector, then SRST
    host.outb(CONTROL, SRST)
    host.outb(CONTROL, 0)
    assert file_bytes(disk, 100, 1) == pattern(100, 1, seed=8)
    assert file_bytes(disk, 101, 1) == pattern(101)


# --- flush, write cache, power ------------------------------------------------------

def test_flush_cache_and_write_through(host: Host, disk: disks.Image,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    flushes = []
    real_flush = disk.flush

    def counting_flush() -> None:
        flushes.append(1)
        real_flush()
    monkeypatch.setattr(disk, "flush", counting_flush)
    host.command(0xE7)
    host.command(0xEA)
    assert len(flushes) == 2 and host.status() & ERR == 0
    host.command(0x30, count=1, lba=0)
    host.write_blocks(pattern(0))
    assert len(flushes) == 2                             # write-back cache: no flush
    host.command(0xEF, feature=0x82)
    host.command(0x30, count=1, lba=0)
    host.write_blocks(pattern(0))
    assert len(flushes) == 4                             # disabling flushed, then write-through


def test_power_mode_commands(host: Host) -> None:
    host.command(0xE5)
    assert host.inb(COUNT) == 0xFF
    for standby in (0xE0, 0x94, 0xE2, 0x96):
        host.command(standby, count=0)
        host.command(0xE5)
        assert host.inb(COUNT) == 0x00 and host.status() & ERR == 0
        host.command(0xE1)
        host.command(0xE5)
        assert host.inb(COUNT) == 0xFF
    host.command(0xE0)
    host.command(0x20, count=1, lba=0)                   # media access spins the disk up
    host.read_blocks(1)
    host.command(0xE5)
    assert host.inb(COUNT) == 0xFF
    host.command(0x10)                                   # RECALIBRATE
    assert host.status() & ERR == 0


# --- a model-based check of PIO traffic ---------------------------------------------

operations = st.lists(st.tuples(st.sampled_from(["read", "write", "read48", "write48",
                                                 "readmul", "writemul"]),
                                st.integers(0, 2047), st.integers(1, 40), st.integers(0, 255)),
                      min_size=1, max_size=12)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_pio_traffic_matches_a_model(tmp_path: Path, ops: list[tuple[str, int, int, int]]) -> None:
    path = tmp_path / f"model-{os.getpid()}.raw"
    size = 2048 * SECTOR
    model = bytearray(size)
    with disks.create(path, "raw", size) as image:
        host = attach(image)
        host.command(0xC6, count=8)
        for kind, lba, count, seed in ops:
            fits = lba + count <= 2048
            block = 8 if kind.endswith("mul") else 1
            opcode = {"read": 0x20, "write": 0x30, "read48": 0x24, "write48": 0x34,
                      "readmul": 0xC4, "writemul": 0xC5}[kind]
            if kind.endswith("48"):
                host.command48(opcode, count=count, lba=lba)
            else:
                host.command(opcode, count=count, lba=lba)
            if not fits:
                assert host.status() & ERR and host.error() == ERROR_IDNF
                continue
            if kind.startswith("read"):
                assert host.read_blocks(count, block) == model[lba * SECTOR:(lba + count) * SECTOR]
            else:
                data = pattern(lba, count, seed)
                assert host.write_blocks(data, block) & (ERR | DRQ) == 0
                model[lba * SECTOR:(lba + count) * SECTOR] = data
        image.flush()
        assert path.read_bytes() == bytes(model)
    path.unlink()


# --- DMA through the bus-master engine (its own rules: tests/test_busmaster.py) ------

def test_dma_read_and_write_with_multi_entry_prd(host: Host, disk: disks.Image) -> None:
    memory = BytearrayMemory(1 << 20)
    busmaster = BusMasterIde([host.channel], memory)
    busmaster.base = BM_BASE
    table = struct.pack("<IIII", 0x10000, 1024, 0x20000, 0x80000000 | 1536)
    memory.write(0x1000, table)
    busmaster.write(BM_BASE + 4, 4, 0x1000)
    host.command(0xC8, count=5, lba=10)
    assert host.alt_status() & DRQ
    busmaster.write(BM_BASE, 1, 0x09)
    assert busmaster.read(BM_BASE + 2, 1) & 0x07 == 0x04  # interrupt, not active
    assert host.status() == DRDY | 0x10
    assert bytes(memory.data[0x10000:0x10400]) + bytes(memory.data[0x20000:0x20600]) \
        == pattern(10, 5)
    busmaster.write(BM_BASE, 1, 0x00)
    busmaster.write(BM_BASE + 2, 1, 0x04)
    memory.write(0x10000, pattern(600, 2, seed=1))
    memory.write(0x20000, pattern(602, 3, seed=1))
    busmaster.write(BM_BASE, 1, 0x01)                    # engine first, command second
    host.command48(0x35, count=5, lba=600)
    assert busmaster.read(BM_BASE + 2, 1) & 0x07 == 0x04
    assert host.status() & (ERR | DRQ) == 0
    assert file_bytes(disk, 600, 5) == pattern(600, 2, seed=1) + pattern(602, 3, seed=1)


def test_trim_discards_ranges(host: Host, disk: disks.Image) -> None:
    memory = BytearrayMemory(1 << 16)
    busmaster = BusMasterIde([host.channel], memory)
    busmaster.base = BM_BASE
    ranges = struct.pack("<QQQ", 10 | 4 << 48, 100 | 1 << 48, 0) + bytes(SECTOR - 24)
    memory.write(0x4000, ranges)
    memory.write(0x1000, struct.pack("<II", 0x4000, 0x80000000 | SECTOR))
    busmaster.write(BM_BASE + 4, 4, 0x1000)
    host.command48(0x06, count=1, lba=0, feature=0x01)
    busmaster.write(BM_BASE, 1, 0x01)
    assert host.status() & (ERR | DRQ) == 0 and busmaster.read(BM_BASE + 2, 1) & 0x04
    assert file_bytes(disk, 10, 4) == bytes(4 * SECTOR)
    assert file_bytes(disk, 100, 1) == bytes(SECTOR)
    assert file_bytes(disk, 9, 1) == pattern(9) and file_bytes(disk, 14, 1) == pattern(14)
    # a range past the end of the disk aborts, and nothing is discarded
    memory.write(0x4000, struct.pack("<QQ", 20 | 1 << 48, ((8 << 20) // SECTOR) | 1 << 48))
    busmaster.write(BM_BASE, 1, 0x00)
    host.command48(0x06, count=1, lba=0, feature=0x01)
    busmaster.write(BM_BASE, 1, 0x01)
    assert host.status() == DRDY | ERR and host.error() == ERROR_ABRT
    assert file_bytes(disk, 20, 1) == pattern(20)
    host.command48(0x06, count=1, lba=0, feature=0x00)   # only TRIM is supported
    assert host.error() == ERROR_ABRT


# --- geometry: what the drive reports and what the BIOS is told ---------------------

def mbr_with_partition(end_head: int, end_sector: int, sectors: int) -> bytes:
    """A boot sector whose one partition ends at head/sector ``end_head``/``end_sector``."""
    entry = struct.pack("<B3sB3sII", 0x80, bytes([1, 1, 0]), 0x83,
                        bytes([end_head, end_sector | 0xC0, 0xFF]), 63, sectors - 63)
    sector = bytearray(SECTOR)
    sector[446:446 + 16] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def test_geometry_from_a_vhd_footer_is_the_drive_geometry(tmp_path: Path) -> None:
    with disks.create(tmp_path / "d.vhd", "vpc", "8M") as image:
        footer = image.geometry
        assert footer is not None and footer.heads <= 16
        assert drive_geometry(image) == footer == logical_geometry(image)
        assert bios_translation(image) is Translation.NONE
        host = attach(image)
        words = host.identify()
        assert (words[1], words[3], words[6]) == (footer.cylinders, footer.heads, footer.sectors)
        cylinder, head, sector = 10, footer.heads - 1, footer.sectors
        lba = (cylinder * footer.heads + head) * footer.sectors + sector - 1
        host.chs_command(0x30, cylinder=cylinder, head=head, sector=sector)
        host.write_blocks(pattern(lba, seed=6))
        assert image.read(lba * SECTOR, SECTOR) == pattern(lba, seed=6)


def test_scsi_vmdk_geometry_is_translated(tmp_path: Path) -> None:
    with disks.create(tmp_path / "d.vmdk", "vmdk", "64M", adapter_type="lsilogic") as image:
        assert guess_geometry(image).heads == 255
        assert drive_geometry(image) == disks.Geometry(130, 16, 63)
        assert bios_translation(image) is Translation.LBA


def test_geometry_guessed_from_the_mbr(tmp_path: Path) -> None:
    sectors = (64 << 20) // SECTOR
    with make_disk(tmp_path / "a.raw", 64 << 20, fill=False) as image:
        image.write(0, mbr_with_partition(63, 32, sectors))            # 64 heads x 32
        assert guess_geometry(image) == disks.Geometry(sectors // (64 * 32), 64, 32)
        assert drive_geometry(image) == disks.Geometry(sectors // (16 * 63), 16, 63)
        assert bios_translation(image) is Translation.LBA
        assert logical_geometry(image) == disks.Geometry(sectors // (64 * 32), 64, 32)
    with make_disk(tmp_path / "b.raw", 64 << 20, fill=False) as image:
        image.write(0, mbr_with_partition(7, 32, sectors))             # 8 heads x 32
        assert drive_geometry(image) == disks.Geometry(sectors // (8 * 32), 8, 32)
        assert bios_translation(image) is Translation.NONE
        assert attach(image).identify()[3] == 8


def test_default_geometry_and_large_translation(tmp_path: Path) -> None:
    size = 600 << 20
    with make_disk(tmp_path / "c.raw", size, fill=False) as image:
        cylinders = size // SECTOR // (16 * 63)
        assert drive_geometry(image) == disks.Geometry(cylinders, 16, 63)
        assert bios_translation(image) is Translation.LARGE
        assert logical_geometry(image) == disks.Geometry(cylinders // 2, 32, 63)


def test_sfdisk_partitioned_big_disk(tmp_path: Path) -> None:
    """sfdisk (an independent partitioner) writes 255-head CHS: the BIOS must use LBA."""
    sfdisk = need_tool("sfdisk")
    path = tmp_path / "big.raw"
    make_disk(path, 10 << 30, fill=False).close()
    subprocess.run([sfdisk, "--quiet", str(path)], input=b",,83\n", check=True,
                   capture_output=True)
    with disks.open(path, format="raw") as image:
        assert guess_geometry(image).heads == 255 and guess_geometry(image).sectors == 63
        assert drive_geometry(image) == disks.Geometry(16383, 16, 63)
        assert bios_translation(image) is Translation.LBA


def test_cmos_translation_byte() -> None:
    assert cmos_translation_byte({0: Translation.LBA, 1: Translation.NONE,
                                  2: Translation.LARGE, 3: Translation.LBA}) == 0b01_10_00_01
    with pytest.raises(ValueError):
        cmos_translation_byte({4: Translation.LBA})


def test_a_dword_read_straddling_the_block_end_stays_in_its_block(host: Host) -> None:
    host.command(0x20, count=2, lba=0)
    host.insw(255)                                       # one word short of the block end
    last = host.channel.read(DATA, 4)                    # the last word, zero-extended
    assert last == int.from_bytes(pattern(0)[-2:], "little")
    assert host.insw(256) == pattern(1)                  # block 2 starts where it should


# --- an ATAPI device (empty CD-ROM) ------------------------------------------------------

def send_packet(host: Host, packet: bytes, *, limit: int = 0xFFFE) -> tuple[int, bytes]:
    """SeaBIOS ata_atapi_process_op: PACKET, the 12-byte CDB, then the data blocks."""
    host.outb(DEVICE, DEV1)
    host.outb(FEATURES, 0)
    host.outb(LBA_MID, limit & 0xFF)
    host.outb(LBA_HIGH, limit >> 8)
    host.outb(COMMAND, 0xA0)
    status = host.status()
    assert status & DRQ and host.inb(COUNT) == 0x01      # CoD: send the command packet
    host.outsw(packet.ljust(12, b"\0"))
    data = b""
    while True:
        status = host.status()
        if not status & DRQ:
            break
        assert host.inb(COUNT) == 0x02                   # IO: data to the host
        length = host.inb(LBA_MID) | host.inb(LBA_HIGH) << 8
        assert length <= limit
        data += host.insw(length // 2)
    assert host.inb(COUNT) == 0x03                       # status phase
    return status, data


@pytest.fixture
def cdrom_host(disk: disks.Image) -> Host:
    host = attach(disk)
    host.channel.attach(1, AtapiDrive())
    return host


def test_atapi_signature_after_reset_and_seabios_probe(cdrom_host: Host) -> None:
    host = cdrom_host
    host.outb(CONTROL, SRST)
    host.outb(CONTROL, 0)
    host.outb(DEVICE, DEV1)
    assert (host.inb(COUNT), host.inb(LBA_LOW), host.inb(LBA_MID), host.inb(LBA_HIGH)) == \
        (1, 1, 0x14, 0xEB)
    assert host.status() == 0                            # DRDY clear on an ATAPI device
    words = seabios_pio_identify(host, True, 0xA1)
    assert words is not None
    assert words[0] >> 14 == 2 and words[0] >> 8 & 0x1F == 0x05   # ATAPI, CD-ROM
    assert sum(struct.pack("<256H", *words)) % 256 == 0
    found = seabios_detect(host)
    assert found[0][0] == "ata" and found[1][0] == "atapi"


def test_atapi_refuses_identify_device_with_its_signature(cdrom_host: Host) -> None:
    host = cdrom_host
    host.outb(DEVICE, DEV1)
    host.outb(LBA_MID, 0)
    host.outb(COMMAND, 0xEC)
    assert host.status() == DRDY | ERR and host.error() == ERROR_ABRT
    assert (host.inb(LBA_MID), host.inb(LBA_HIGH)) == (0x14, 0xEB)


def test_atapi_packets_on_an_empty_tray(cdrom_host: Host) -> None:
    host = cdrom_host
    status, data = send_packet(host, bytes([0x00]))                # TEST UNIT READY
    assert status & ERR and host.error() >> 4 == 0x02 and data == b""
    status, data = send_packet(host, bytes([0x03, 0, 0, 0, 18]))   # REQUEST SENSE
    assert status & (ERR | DRQ) == 0
    assert data[0] == 0x70 and data[2] == 0x02 and (data[12], data[13]) == (0x3A, 0x00)
    status, data = send_packet(host, bytes([0x12, 0, 0, 0, 36]))   # INQUIRY
    assert status & ERR == 0 and len(data) == 36
    assert data[0] == 0x05 and data[1] & 0x80 and data[8:11] == b"EMU"
    status, data = send_packet(host, bytes([0x12, 0, 0, 0, 36]), limit=16)
    assert len(data) == 36                                         # in 16-byte DRQ blocks
    status, data = send_packet(host, bytes([0xFF]))                # not an MMC command
    assert status & ERR and host.error() >> 4 == 0x05


def test_atapi_device_reset(cdrom_host: Host) -> None:
    host = cdrom_host
    host.outb(DEVICE, DEV1)
    host.outb(COMMAND, 0x08)
    assert not host.irq.level
    assert (host.inb(LBA_MID), host.inb(LBA_HIGH)) == (0x14, 0xEB)
    assert host.inb(DEVICE) == DEV1                       # still the selected device
    host.outb(DEVICE, DEV0)
    host.outb(COMMAND, 0x08)                              # a hard disk aborts it
    assert host.error() == ERROR_ABRT


@pytest.mark.parametrize(("size", "expected"), [
    (200 * SECTOR, disks.Geometry(1, 3, 63)),
    (10 * SECTOR, disks.Geometry(1, 1, 10)),
    (16 * 63 * SECTOR, disks.Geometry(1, 16, 63)),
    (40 << 30, disks.Geometry(16383, 16, 63)),
])
def test_default_geometry_never_exceeds_the_disk(tmp_path: Path, size: int,
                                                 expected: disks.Geometry) -> None:
    with make_disk(tmp_path / "t.raw", size, fill=False) as image:
        assert drive_geometry(image) == expected
        words = attach(image).identify()
        assert words[57] | words[58] << 16 <= size // SECTOR
