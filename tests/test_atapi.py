"""The ATAPI CD/DVD-ROM drive driven through the IDE registers, as drivers do.

Packets are sent the way SeaBIOS's ata_atapi_process_op and Linux's libata do
(PACKET, the 12-byte CDB, DRQ blocks sized by the byte count the drive posts);
data is checked against the image file, structures against MMC-5/SPC-3 fields.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ata import (
    BM_BASE,
    COMMAND,
    COUNT,
    DEV1,
    DEVICE,
    ERR,
    ERROR,
    FEATURES,
    LBA_HIGH,
    LBA_MID,
    Host,
    send_packet,
)

import disks
from devices.ata import DRQ, ERROR_ABRT, AtaChannel
from devices.atapi import BLOCK, COMMANDS, AtapiDrive, MediumLockedError, lba_to_msf
from devices.busmaster import BusMasterIde
from devices.interfaces import BytearrayMemory, NullIrq

BLOCKS = 300
GOOD = 0


def block_pattern(lba: int) -> bytes:
    return struct.pack(">I", lba) * (BLOCK // 4)


def make_iso(path: Path, blocks: int = BLOCKS, tail: bytes = b"") -> Path:
    path.write_bytes(b"".join(block_pattern(lba) for lba in range(blocks)) + tail)
    return path


@pytest.fixture
def iso(tmp_path: Path) -> Iterator[disks.Image]:
    image = disks.open(make_iso(tmp_path / "cd.iso"), readonly=True)
    yield image
    image.close()


def cd_host(drive: AtapiDrive) -> Host:
    irq = NullIrq()
    channel = AtaChannel(0x1F0, 0x3F6, irq)
    channel.attach(1, drive)
    return Host(channel, irq)


@pytest.fixture
def host(iso: disks.Image) -> Host:
    return cd_host(AtapiDrive(iso))


def drive_of(host: Host) -> AtapiDrive:
    drive = host.channel.units[1].drive
    assert isinstance(drive, AtapiDrive)
    return drive


def sense(host: Host) -> tuple[int, int, int]:
    status, data = send_packet(host, bytes([0x03, 0, 0, 0, 18]))
    assert not status & ERR and data[0] == 0x70 and data[7] == 10
    return data[2] & 0x0F, data[12], data[13]


def result(host: Host, packet: bytes, limit: int = 0xFFFE) -> tuple[int, bytes]:
    """(sense key or 0, data) of one command."""
    status, data = send_packet(host, packet, limit=limit)
    return (host.error() >> 4 if status & ERR else GOOD), data


def read10(lba: int, count: int) -> bytes:
    return struct.pack(">BxIxHx", 0x28, lba, count)


# --- media ---------------------------------------------------------------------------------

def test_read_capacity_and_reads_return_the_image(host: Host) -> None:
    assert result(host, bytes([0x25])) == (GOOD, struct.pack(">II", BLOCKS - 1, BLOCK))
    assert result(host, read10(7, 3)) == \
        (GOOD, block_pattern(7) + block_pattern(8) + block_pattern(9))
    read12 = struct.pack(">BxIIxx", 0xA8, BLOCKS - 2, 2)
    assert result(host, read12) == (GOOD, block_pattern(BLOCKS - 2) + block_pattern(BLOCKS - 1))
    read_cd = bytes([0xBE, 0]) + struct.pack(">I", 5) + (2).to_bytes(3, "big") + b"\x10\0\0"
    assert result(host, read_cd) == (GOOD, block_pattern(5) + block_pattern(6))


def test_a_partial_last_block_is_not_addressable(tmp_path: Path) -> None:
    with disks.open(make_iso(tmp_path / "odd.iso", 10, tail=b"x" * 100), readonly=True) as image:
        host = cd_host(AtapiDrive(image))
        assert result(host, bytes([0x25]))[1] == struct.pack(">II", 9, BLOCK)
        assert result(host, read10(9, 2))[0] == 0x05
        assert sense(host) == (0x05, 0x21, 0x00)


def test_out_of_range_and_unknown_commands_are_illegal_requests(host: Host) -> None:
    assert result(host, read10(BLOCKS, 1)) == (0x05, b"")
    assert sense(host) == (0x05, 0x21, 0x00)                 # LBA out of range
    assert result(host, struct.pack(">BxI", 0x2B, BLOCKS))[0] == 0x05   # SEEK
    assert sense(host) == (0x05, 0x21, 0x00)
    assert result(host, bytes([0xD8]))[0] == 0x05             # not an MMC command
    assert sense(host) == (0x05, 0x20, 0x00)
    assert sense(host) == (0x00, 0x00, 0x00)                  # REQUEST SENSE consumed it
    assert result(host, read10(0, 0)) == (GOOD, b"")          # zero blocks: nothing moves


@pytest.mark.parametrize("limit", [0xFFFE, 0xFFFF, 2048, 2049, 1000, 6])
def test_drq_blocks_follow_the_byte_count_limit(host: Host, limit: int) -> None:
    host.outb(DEVICE, DEV1)
    host.outb(FEATURES, 0)
    host.outb(LBA_MID, limit & 0xFF)
    host.outb(LBA_HIGH, limit >> 8)
    host.outb(COMMAND, 0xA0)
    assert host.inb(COUNT) == 0x01 and not host.irq.level        # CoD, no interrupt yet
    host.outsw(read10(0, 40).ljust(12, b"\0"))
    total, sizes = 40 * BLOCK, []
    data = b""
    while host.status() & DRQ:
        assert host.irq.raised == len(sizes) + 1                 # INTRQ for every block
        assert host.inb(COUNT) == 0x02
        size = host.inb(LBA_MID) | host.inb(LBA_HIGH) << 8
        sizes.append(size)
        data += host.insw(size // 2)
    even = min(limit, 0xFFFE) & ~1
    assert sizes == [even] * (total // even) + ([total % even] if total % even else [])
    assert data == b"".join(block_pattern(lba) for lba in range(40))
    assert host.inb(COUNT) == 0x03 and not host.status() & ERR


def test_a_zero_byte_count_limit_aborts_data_commands_only(host: Host) -> None:
    host.outb(DEVICE, DEV1)
    for packet, aborted in ((bytes([0x25]), True), (bytes([0x00]), False)):
        host.outb(LBA_MID, 0)
        host.outb(LBA_HIGH, 0)
        host.outb(COMMAND, 0xA0)
        host.outsw(packet.ljust(12, b"\0"))
        status = host.status()
        assert bool(status & ERR) == aborted
        if aborted:
            assert host.inb(ERROR) == ERROR_ABRT


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lba=st.integers(0, BLOCKS - 1), count=st.integers(0, 20),
       limit=st.integers(2, 0xFFFF))
def test_any_read_moves_exactly_its_blocks(host: Host, lba: int, count: int,
                                           limit: int) -> None:
    key, data = result(host, read10(lba, count), limit=limit)
    if lba + count > BLOCKS:
        assert key == 0x05 and data == b""
        sense(host)
    else:
        assert key == GOOD
        assert data == b"".join(block_pattern(n) for n in range(lba, lba + count))


def test_dma_reads_land_in_memory(host: Host) -> None:
    memory = BytearrayMemory(1 << 20)
    busmaster = BusMasterIde([host.channel], memory)
    busmaster.base = BM_BASE
    prd = struct.pack("<II", 0x10000, 3 * BLOCK) + struct.pack("<II", 0x20000, 0x80000000 | BLOCK)
    memory.write(0x1000, prd)
    busmaster.write(BM_BASE + 4, 4, 0x1000)
    host.outb(DEVICE, DEV1)
    host.outb(FEATURES, 0x01)                                    # DMA data phase
    host.outb(COMMAND, 0xA0)
    host.outsw(read10(20, 4).ljust(12, b"\0"))
    assert host.status() & DRQ and not host.irq.raised           # waits for the engine
    busmaster.write(BM_BASE, 1, 0x09)                            # start, to memory
    assert busmaster.read(BM_BASE + 2, 1) & 0x07 == 0x04         # interrupt, done
    assert host.status() & (DRQ | ERR) == 0 and host.inb(COUNT) == 0x03
    assert memory.read(0x10000, 3 * BLOCK) == b"".join(block_pattern(n) for n in (20, 21, 22))
    assert memory.read(0x20000, BLOCK) == block_pattern(23)
    host.outb(FEATURES, 0x01)                                    # DMA, but CHECK CONDITION
    host.outb(COMMAND, 0xA0)
    host.outsw(read10(BLOCKS, 1).ljust(12, b"\0"))
    assert host.status() & ERR and host.error() >> 4 == 0x05
    assert host.channel.dma_request is None


class FailingImage:
    """An image whose reads fail from ``bad`` on (a medium error)."""

    def __init__(self, image: disks.Image, bad: int) -> None:
        self.image, self.bad, self.size = image, bad, image.size

    def read(self, offset: int, length: int) -> bytes:
        if offset + length > self.bad:
            raise disks.ImageError(None, "unreadable")
        return self.image.read(offset, length)

    def readinto(self, offset: int, view: memoryview) -> int:
        view[:] = self.read(offset, len(view))
        return len(view)


def test_an_image_error_is_a_medium_error(iso: disks.Image) -> None:
    host = cd_host(AtapiDrive(FailingImage(iso, 10 * BLOCK)))  # type: ignore[arg-type]
    assert result(host, read10(0, 2))[0] == GOOD
    key, data = result(host, read10(8, 4), limit=BLOCK)
    assert key == 0x03 and data == block_pattern(8) + block_pattern(9)
    assert sense(host) == (0x03, 0x11, 0x00)


# --- sense, media change, tray ------------------------------------------------------------

def test_an_empty_drive_is_not_ready() -> None:
    host = cd_host(AtapiDrive())
    for opcode in (0x00, 0x25, 0x28, 0x43, 0x51, 0xBE):
        assert result(host, bytes([opcode]))[0] == 0x02
        assert sense(host) == (0x02, 0x3A, 0x00)
    assert result(host, bytes([0x12, 0, 0, 0, 36]))[0] == GOOD   # INQUIRY needs no disc


def test_a_media_change_is_a_unit_attention_until_request_sense(host: Host,
                                                               tmp_path: Path) -> None:
    drive = drive_of(host)
    assert result(host, bytes([0x00]))[0] == GOOD
    new = disks.open(make_iso(tmp_path / "new.iso", 50), readonly=True)
    old = drive.change(new)
    assert old is not None
    old.close()
    for _ in range(2):                                         # stays pending
        assert result(host, bytes([0x00]))[0] == 0x06
    assert result(host, bytes([0x12, 0, 0, 0, 36]))[0] == GOOD
    assert sense(host) == (0x06, 0x28, 0x00)
    assert result(host, bytes([0x25])) == (GOOD, struct.pack(">II", 49, BLOCK))
    assert drive.eject() is new
    new.close()
    assert result(host, bytes([0x00]))[0] == 0x02


def event(host: Host) -> tuple[int, int]:
    """GET EVENT STATUS NOTIFICATION, polled, media class: (event code, media status)."""
    key, data = result(host, bytes([0x4A, 0x01, 0, 0, 0x10, 0, 0, 0, 8]))
    assert key == GOOD and data[2] == 0x04 and data[3] == 0x10
    return data[4], data[5]


def test_tray_lock_eject_and_events(host: Host) -> None:
    drive = drive_of(host)
    assert event(host) == (0, 0x02)                              # no event, medium present
    assert result(host, bytes([0x1E, 0, 0, 0, 1]))[0] == GOOD    # PREVENT removal
    assert result(host, bytes([0x1B, 0, 0, 0, 0x02]))[0] == 0x02  # eject refused
    assert sense(host) == (0x02, 0x53, 0x02)
    with pytest.raises(MediumLockedError):
        drive.eject()
    assert event(host) == (1, 0x02)                              # eject request
    assert result(host, bytes([0x1E, 0, 0, 0, 0]))[0] == GOOD    # ALLOW
    assert result(host, bytes([0x1B, 0, 0, 0, 0x02]))[0] == GOOD  # eject: tray opens
    assert event(host) == (3, 0x03)                              # removal, tray open
    assert result(host, bytes([0x00]))[0] == 0x02
    assert result(host, bytes([0xBD, 0, 0, 0, 0, 0, 0, 0, 0, 8]))[1][1] & 0x10   # door open
    assert result(host, bytes([0x1B, 0, 0, 0, 0x03]))[0] == GOOD  # load
    assert event(host) == (2, 0x02)
    assert result(host, bytes([0x00]))[0] == GOOD
    assert result(host, bytes([0x4A, 0, 0, 0, 0x10, 0, 0, 0, 8]))[0] == 0x05   # not polled


# --- structures -----------------------------------------------------------------------------

def test_read_toc_formats(host: Host) -> None:
    alloc = b"\xff\xff\0"
    key, toc = result(host, bytes([0x43, 0, 0, 0, 0, 0, 0]) + alloc)
    assert key == GOOD
    assert toc == struct.pack(">HBB", 18, 1, 1) + bytes([0, 0x14, 1, 0]) + struct.pack(">I", 0) \
        + bytes([0, 0x16, 0xAA, 0]) + struct.pack(">I", BLOCKS)
    key, toc = result(host, bytes([0x43, 0x02, 0, 0, 0, 0, 0]) + alloc)      # MSF
    assert toc[8:12] == bytes([0, 0, 2, 0]) and toc[16:20] == lba_to_msf(BLOCKS)
    assert lba_to_msf(BLOCKS) == bytes([0, 0, 6, 0])          # 300 + 150 frames = 6 s
    key, toc = result(host, bytes([0x43, 0, 0, 0, 0, 0, 0xAA]) + alloc)      # lead-out only
    assert toc[:2] == b"\0\x0a" and toc[6] == 0xAA
    key, sessions = result(host, bytes([0x43, 0, 1, 0, 0, 0, 0]) + alloc)
    assert sessions == struct.pack(">HBB", 10, 1, 1) + bytes([0, 0x14, 1, 0]) + bytes(4)
    key, raw = result(host, bytes([0x43, 0x02, 2, 0, 0, 0, 0]) + alloc)
    assert key == GOOD and struct.unpack(">H", raw[:2])[0] == len(raw) - 2 == 2 + 4 * 11
    points = {raw[4 + 11 * i + 3]: raw[4 + 11 * i + 8:4 + 11 * i + 11] for i in range(4)}
    assert points == {0xA0: bytes([1, 0, 0]), 0xA1: bytes([1, 0, 0]),
                      0xA2: lba_to_msf(BLOCKS)[1:], 1: bytes([0, 2, 0])}
    assert result(host, bytes([0x43, 0, 5, 0, 0, 0, 0]) + alloc)[0] == 0x05
    key, short = result(host, bytes([0x43, 0, 0, 0, 0, 0, 0, 0, 4]))          # allocation 4
    assert key == GOOD and len(short) == 4


def test_configuration_mode_pages_and_disc_information(host: Host) -> None:
    key, config = result(host, bytes([0x46, 0, 0, 0, 0, 0, 0, 0x01, 0]))
    assert key == GOOD
    assert struct.unpack(">I", config[:4])[0] == len(config) - 4
    assert struct.unpack(">H", config[6:8])[0] == 0x0008         # CD-ROM profile
    features, position = {}, 8
    while position < len(config):
        code, _, length = struct.unpack_from(">HBB", config, position)
        features[code] = config[position + 4:position + 4 + length]
        position += 4 + length
    assert {0x0000, 0x0001, 0x0003, 0x001E} <= set(features)
    assert struct.unpack(">I", features[0x0001][:4])[0] == 2      # ATAPI interface
    key, one = result(host, bytes([0x46, 2, 0, 0x03, 0, 0, 0, 0x01, 0]))
    assert struct.unpack(">H", one[8:10])[0] == 0x0003 and len(one) == 16
    key, page = result(host, bytes([0x5A, 0, 0x2A, 0, 0, 0, 0, 0x01, 0]))
    assert key == GOOD and page[8] == 0x2A and struct.unpack(">H", page[:2])[0] == len(page) - 2
    key, page = result(host, bytes([0x5A, 0, 0x01, 0, 0, 0, 0, 0x01, 0]))
    assert page[8:10] == bytes([0x01, 0x06])
    assert result(host, bytes([0x5A, 0, 0x3F, 0, 0, 0, 0, 0x01, 0]))[0] == GOOD
    assert result(host, bytes([0x5A, 0, 0x05, 0, 0, 0, 0, 0x01, 0]))[0] == 0x05
    assert result(host, bytes([0x5A, 0, 0xEA, 0, 0, 0, 0, 0x01, 0]))[0] == 0x05  # saved
    key, disc = result(host, bytes([0x51, 0, 0, 0, 0, 0, 0, 0, 34]))
    assert key == GOOD and disc[2] & 0x03 == 2 and disc[3] == 1   # complete disc, track 1
    key, track = result(host, bytes([0x52, 1, 0, 0, 0, 1, 0, 0, 36]))
    assert key == GOOD and struct.unpack(">I", track[24:28])[0] == BLOCKS
    assert result(host, bytes([0xBB, 0, 0xFF, 0xFF]))[0] == GOOD  # SET CD SPEED


def test_mode_select_takes_its_parameter_list(host: Host) -> None:
    host.outb(DEVICE, DEV1)
    host.outb(FEATURES, 0)
    host.outb(LBA_MID, 0xFE)
    host.outb(LBA_HIGH, 0xFF)
    host.outb(COMMAND, 0xA0)
    host.outsw(bytes([0x55, 0x10, 0, 0, 0, 0, 0, 0, 16, 0, 0, 0]))
    assert host.status() & DRQ and host.inb(COUNT) == 0x00       # data from the host
    assert host.inb(LBA_MID) == 16
    host.outsw(bytes(16))
    assert not host.status() & (DRQ | ERR) and host.inb(COUNT) == 0x03


def test_identify_packet_device_offers_dma_and_set_features_selects_it(host: Host) -> None:
    words = struct.unpack("<256H", host.channel.units[1].drive.identify_packet(1))  # type: ignore[union-attr]
    assert words[49] & 0x0100 and words[88] & 0x0007
    host.outb(DEVICE, DEV1)
    host.outb(FEATURES, 0x03)
    host.outb(COUNT, 0x22)                                       # multiword DMA 2
    host.outb(COMMAND, 0xEF)
    assert not host.status() & ERR
    words = struct.unpack("<256H", drive_of(host).identify_packet(1))
    assert words[63] & 0x0400 and not words[88] & 0xFF00
    host.outb(COUNT, 0x45)                                       # UDMA 5: not offered
    host.outb(COMMAND, 0xEF)
    assert host.status() & ERR and host.error() == ERROR_ABRT


def test_every_command_row_names_a_handler() -> None:
    drive = AtapiDrive()
    for command in COMMANDS.values():
        assert callable(getattr(drive, command.handler)), command.name


@pytest.mark.parametrize("fmt", ["vdi", "vpc", "vhdx", "vmdk"])
def test_any_image_format_can_hold_the_disc(tmp_path: Path, fmt: str) -> None:
    """The drive reads through the disks layer: a disc stored in a VDI/VHD/VHDX/VMDK."""
    path = tmp_path / f"cd.{fmt}"
    with disks.create(path, fmt, BLOCKS * BLOCK) as image:
        image.write(0, make_iso(tmp_path / "raw.iso").read_bytes())
    with disks.open(path, readonly=True) as image:
        host = cd_host(AtapiDrive(image))
        blocks = image.size // BLOCK                             # VHD rounds up to a CHS size
        assert result(host, bytes([0x25]))[1] == struct.pack(">II", blocks - 1, BLOCK)
        assert result(host, read10(BLOCKS - 3, 3)) == \
            (GOOD, b"".join(block_pattern(n) for n in range(BLOCKS - 3, BLOCKS)))
