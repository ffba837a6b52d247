"""The same ATA test ROM under QEMU and under emu, on a disk of every format.

firmware/atatest.asm drives the primary IDE channel directly (IDENTIFY, CHS / LBA28 /
LBA48 PIO, MULTIPLE, DMA, FLUSH, error cases) and prints a transcript on the debug
console.  QEMU (``qemu-system-i386 -M pc``) gets a raw copy of the image with the drive
geometry emu uses; emu gets the image itself.  The transcripts must be identical, the
disks byte-identical afterwards (emu's image read back with ``emu img convert -O raw``),
and both must agree with a model of the disk (tests/atatest_model.py) that predicts
every hash the ROM prints and the final contents.  QEMU's own drivers must also read
emu's image afterwards as the same bytes (``qemu-img compare``) and find it consistent
(``qemu-img check``).
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from atatest_model import replay
from oracles import qemu_img

import disks
from emu.pytest_plugin import DISK_FORMATS, DiskImage, GuestRun

ROOT = Path(__file__).resolve().parent.parent
ATATEST = ROOT / "firmware" / "atatest.bin"
DISK_SIZE = "40M"  # the ROM reads 65536 sectors (32 MiB) with one LBA48 DMA command


def seed_content(size: int) -> dict[int, bytes]:
    """Recognizable data in a few places; the rest stays unallocated (zero)."""
    rng = random.Random(6)
    pieces = {0: rng.randbytes(1 << 20)}
    for offset in (2000 * 512, 5000 * 512 - 1024, 8000 * 512, 20 << 20, size - (1 << 16)):
        pieces[offset] = rng.randbytes(1 << 16)
    return pieces


def emu_img_raw(image: DiskImage, target: Path) -> bytes:
    subprocess.run([sys.executable, "-m", "emu", "img", "convert", "-f", image.format,
                    "-O", "raw", str(image.path), str(target)], check=True,
                   capture_output=True)
    return target.read_bytes()


def check_transcript(run: GuestRun, before: bytes) -> bytearray:
    assert run.exit_code == 0, str(run)
    assert run.debugcon.startswith("ATATEST 1\n"), str(run)
    assert run.debugcon.rstrip().endswith("ATATEST done"), str(run)
    model = bytearray(before)
    problems = replay(run.debugcon, model)
    assert not problems, "\n".join(problems) + "\n" + run.debugcon
    return model


@pytest.fixture
def prepared(disk_image, disk_format: str):
    image = disk_image(disk_format, DISK_SIZE, content=seed_content(40 << 20))
    return image, image.contents()


def test_qemu_runs_the_rom_and_matches_the_model(disk_image, emu_machine) -> None:
    """The ROM itself is right: under QEMU its transcript agrees with the disk model."""
    image = disk_image("raw", DISK_SIZE, content=seed_content(40 << 20))
    before = image.contents()
    qemu = emu_machine(image, engine="qemu", bios=ATATEST, timeout=120)
    model = check_transcript(qemu, before)
    assert qemu.disk == bytes(model)


def test_emu_matches_qemu(prepared, emu_machine, tmp_path: Path) -> None:
    image, before = prepared
    qemu = emu_machine(image, engine="qemu", bios=ATATEST, timeout=120)
    emu = emu_machine(image, bios=ATATEST, timeout=120)
    assert emu.exit_code == 0, str(emu)
    assert emu.debugcon == qemu.debugcon
    model = check_transcript(emu, before)
    after = emu_img_raw(image, tmp_path / "emu-after.raw")
    assert after == qemu.disk
    assert after == bytes(model)
    if image.format not in ("raw", "vpc"):  # qemu-img cannot check these two
        check = qemu_img("check", "-f", image.format, image.path, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
    compare = qemu_img("compare", "-f", image.format, "-F", "raw", image.path,
                       qemu.disks[0].path, check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr


def test_every_format_is_registered() -> None:
    """The differential test covers every format: each has its driver."""
    missing = sorted({fmt for fmt, _ in DISK_FORMATS.values()} - set(disks.formats()))
    assert not missing


@pytest.mark.parametrize("variant", ["vdi", "vhdx"])
def test_snapshot_run_matches_qemu_and_leaves_the_image_alone(disk_image, emu_machine,
                                                              variant: str) -> None:
    """``emu run --snapshot``: the guest sees its writes (same transcript as QEMU's), the
    image file keeps its old contents."""
    image = disk_image(variant, DISK_SIZE, content=seed_content(40 << 20))
    before = image.contents()
    qemu = emu_machine(image, engine="qemu", bios=ATATEST, timeout=120)
    emu = emu_machine(image, bios=ATATEST, timeout=120, extra_args=["--snapshot"])
    assert emu.exit_code == 0, str(emu)
    assert emu.debugcon == qemu.debugcon
    assert image.contents() == before


# Where the disk under test sits (the ROM tests the last position with a device):
# the positions before it, None = empty, "dummy" = a small blank disk that must stay blank.
POSITIONS = {
    "primary slave": (["dummy"], "DRIVE 01F0 B0"),
    "secondary master": ([None, None], "DRIVE 0170 A0"),
    "secondary slave": ([None, None, "dummy"], "DRIVE 0170 B0"),
}


@pytest.mark.parametrize("position", POSITIONS)
def test_emu_matches_qemu_at_every_position(position: str, disk_image, emu_machine) -> None:
    """The same ROM on a slave and on the secondary channel (IRQ 15, bus-master base + 8)."""
    before_positions, drive_line = POSITIONS[position]
    image = disk_image("raw", DISK_SIZE, content=seed_content(40 << 20))
    before = image.contents()
    attached = [disk_image("raw", "1M", name=f"dummy{index}.img") if kind == "dummy" else None
                for index, kind in enumerate(before_positions)]
    qemu = emu_machine(*attached, image, engine="qemu", bios=ATATEST, timeout=120)
    emu = emu_machine(*attached, image, bios=ATATEST, timeout=120)
    assert drive_line in qemu.debugcon.splitlines(), str(qemu)
    assert emu.debugcon == qemu.debugcon
    model = check_transcript(emu, before)
    assert emu.disks[-1].contents() == qemu.disks[-1].contents() == bytes(model)
    for dummy in emu.disks[:-1]:
        assert dummy.contents() == bytes(1 << 20)
