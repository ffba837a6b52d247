"""The same ATAPI test ROM under QEMU and under emu, with a disc and with an empty drive.

firmware/atapitest.asm drives the CD-ROM drive at the secondary master directly:
signature, IDENTIFY PACKET DEVICE, then command packets in PIO (with byte count
limits that split the data into DRQ blocks) and DMA through the PIIX bus master, with
sense data after every CHECK CONDITION.  ``qemu-system-i386 -cdrom X`` and ``emu run
--cdrom X`` must print the same transcript, and every data hash the ROM prints for a
read must be the hash of the image file's bytes (the file is the oracle for the data).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from emu.pytest_plugin import GuestRun

ATAPITEST = "atapitest.bin"
DISC_BLOCKS = 512            # the ROM reads up to LBA 1FFh and expects 200h to be past the end
BLOCK = 2048

# ROM test name -> (first block, blocks) of the data it hashes.
READS = {
    "READ10 0+1": (0, 1),
    "READ10 16+8 bcl 800": (16, 8),
    "READ10 5+3 bcl 1001": (5, 3),
    "READ10 9+2 bcl 1000": (9, 2),
    "READ10 9+2 bcl FFFF": (9, 2),
    "READ10 last": (DISC_BLOCKS - 1, 1),
    "READ12 100+4": (100, 4),
    "READ CD 7+2 user data": (7, 2),
    "DMA READ10 32+4": (32, 4),
    "DMA READ12 200+1": (200, 1),
    "READ10 after load": (1, 1),
}


def rom_hash(data: bytes) -> str:
    """The ROM's hash: h = rol32((h ^ dword) * 01000193h, 5) from 811C9DC5h."""
    value = 0x811C9DC5
    data += bytes(-len(data) % 4)
    for (word,) in struct.iter_unpack("<I", data):
        value = ((value ^ word) * 0x01000193) & 0xFFFFFFFF
        value = ((value << 5) | (value >> 27)) & 0xFFFFFFFF
    return f"{value:08X}"


@pytest.fixture
def disc(tmp_path: Path) -> Path:
    """An image whose every block says which it is (and where in it each dword is)."""
    path = tmp_path / "disc.iso"
    path.write_bytes(b"".join(struct.pack("<HH", lba, index) for lba in range(DISC_BLOCKS)
                              for index in range(BLOCK // 4)))
    return path


def transcript(run: GuestRun) -> list[str]:
    assert run.exit_code == 0, str(run)
    lines = run.debugcon.splitlines()
    assert lines[0] == "ATAPITEST 1" and lines[-1] == "ATAPITEST done", str(run)
    return lines


def test_emu_matches_qemu_with_a_disc(disc: Path, emu_machine) -> None:
    qemu = transcript(emu_machine(engine="qemu", bios=ATAPITEST, cdrom=disc, timeout=60))
    emu = transcript(emu_machine(bios=ATAPITEST, cdrom=disc, timeout=120))
    assert emu == qemu
    data = disc.read_bytes()
    hashes = {}
    for line in emu:
        match = re.match(r"(.+?) p=.* h=([0-9A-F]{8})$", line)
        if match:
            hashes[match.group(1)] = match.group(2)
    assert set(READS) <= set(hashes)
    for name, (lba, count) in READS.items():
        assert hashes[name] == rom_hash(data[lba * BLOCK:(lba + count) * BLOCK]), name
    assert "READ CAPACITY p=48/01 b=0008*01 st=40 ir=03 i=02 n=0008 d=000001FF00000800" in emu
    assert any(line.startswith("READ10 past end") and line.endswith("sense=05/21/00")
               for line in emu)


def test_emu_matches_qemu_with_an_empty_drive(emu_machine) -> None:
    qemu = transcript(emu_machine(engine="qemu", bios=ATAPITEST, cdrom="", timeout=60))
    emu = transcript(emu_machine(bios=ATAPITEST, cdrom="", timeout=120))
    assert emu == qemu
    tur = next(line for line in emu if line.startswith("TEST UNIT READY"))
    assert tur.endswith("sense=02/3A/00")
