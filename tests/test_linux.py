"""Debian's i386 Linux boots on emu and its ata_piix driver reads and writes every format.

The guest is tests/linux_guest.py's: Debian's stock kernel from a SYSLINUX disk, a busybox
initramfs whose /init finds the four drives (master and slave on both channels) through
ata_piix, reads what the host put there, writes with O_DIRECT and through the page cache
with fsync, reads that back, prints the kernel's ATA lines and a PASS/FAIL marker on ttyS0
and ends with ``reboot -f``.

The oracle is qemu-system-i386 -M pc running the same drive set (raw copies) once per
session: its run must pass, and every emu run must leave the same bytes on every drive
(read back with ``qemu-img convert``, an independent reader of each format) and, where
qemu-img can check the format, an image ``qemu-img check`` finds clean.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from linux_guest import (
    DISK_SIZE,
    DRIVES,
    PASS_MARKER,
    Cpio,
    Outcome,
    boot_disks,
    build_raw_set,
    expected_contents,
    kernel,
    module_depends,
)

from emu.pytest_plugin import DISK_FORMATS, DiskImage, GuestRun, need_tool, run_machine

MEMORY = "128M"
# Wall-time limit of one boot.  QEMU passes in ~10 s; emu's deterministic mode runs the
# ~4.5 G instructions to PASS in about 4 minutes of one core.  The limit bounds a stuck
# run so the suite stays inside CI's budget (override with EMU_LINUX_TIMEOUT).
EMU_TIMEOUT = float(os.environ.get("EMU_LINUX_TIMEOUT", "420"))
QEMU_TIMEOUT = 300.0
# qemu-img check supports these formats (raw and vpc have nothing to check).
CHECKABLE = {"vdi", "vmdk", "vhdx"}

# The guest as built: kernel flavour and transfer mode ("dma": what ata_piix picks, MWDMA2 on
# the PIIX3; "pio": libata.dma=0, PIO for every command).
GUEST_MODES = {"dma": "", "pio": "libata.dma=0"}
# libata's sysfs xfer_mode on QEMU's drives
TRANSFER_MODES = {"dma": "XFER_MW_DMA_2", "pio": "XFER_PIO_4"}


@dataclass(frozen=True)
class Boot:
    """One emu boot: the drive set's format variant, the BIOS, the guest."""

    variant: str
    bios: str = "ours"
    flavour: str = "686"
    mode: str = "dma"

    def __str__(self) -> str:
        return "-".join((self.variant, self.bios, self.flavour, self.mode))


# Every format with the built-in BIOS; SeaBIOS, the PAE kernel and PIO transfers on one
# format each (nine boots: about 20 minutes of CI on two cores).
EMU_BOOTS = [Boot(variant) for variant in DISK_FORMATS] + [
    Boot("vhdx", "seabios"),
    Boot("vdi", flavour="686-pae"),
    Boot("vmdk", mode="pio"),
]


@pytest.fixture(scope="session")
def raw_set(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], list[Path]]:
    """The raw drive set of a guest (flavour, mode), built on first use (once per xdist
    worker)."""
    folder = tmp_path_factory.mktemp("linux")

    @functools.cache
    def build(flavour: str, mode: str) -> list[Path]:
        return build_raw_set(folder / f"{flavour}-{mode}", flavour,
                             extra_cmdline=GUEST_MODES[mode])
    return build


@pytest.fixture(scope="session")
def qemu_reference(raw_set, tmp_path_factory: pytest.TempPathFactory
                   ) -> Callable[[str, str], GuestRun]:
    """A guest's drive set booted once under qemu-system-i386 with SeaBIOS."""
    folder = tmp_path_factory.mktemp("linux-qemu")

    @functools.cache
    def boot(flavour: str, mode: str) -> GuestRun:
        images = [DiskImage(path, "raw") for path in raw_set(flavour, mode)]
        return run_machine(folder / f"{flavour}-{mode}", *images, engine="qemu",
                           bios="seabios", memory=MEMORY, timeout=QEMU_TIMEOUT)
    return boot


def transcript(run: GuestRun, lines: int = 40) -> str:
    """The end of a run's console and emu's report, for assertion messages."""
    tail = "\n".join(run.serial.replace("\r", "").split("\n")[-lines:])
    return f"{run.engine} exit {run.exit_code}\n--- serial (end)\n{tail}\n" \
           f"--- stderr (end)\n{run.stderr[-3000:]}"


def assert_linux_passed(run: GuestRun) -> Outcome:
    """Exit status 0 after ``reboot -f``; ata_piix bound, every drive identified, the
    read/write checks passed, and the kernel log has no ATA errors or timeouts."""
    outcome = Outcome.parse(run.serial)
    assert any("ata_piix" in line and "scsi host" in line for line in outcome.dmesg), \
        "ata_piix did not bind\n" + transcript(run)
    for drive in DRIVES:
        assert any(line.split("] ", 1)[-1].startswith(f"{drive}: ATA-") for line in
                   outcome.dmesg), f"{drive} not identified\n" + transcript(run)
    assert outcome.trouble() == [], transcript(run)
    assert outcome.failures == [], transcript(run)
    assert outcome.passed, f"no {PASS_MARKER}\n" + transcript(run)
    assert run.exit_code == 0, transcript(run)
    return outcome


def qemu_img_contents(image: DiskImage, folder: Path) -> bytes:
    """The virtual disk as qemu-img reads it (an independent reader of every format)."""
    target = folder / f"{image.path.name}.qemu-img.raw"
    subprocess.run([need_tool("qemu-img"), "convert", "-f", image.format, "-O", "raw",
                    str(image.path), str(target)], check=True, capture_output=True)
    data = target.read_bytes()
    assert len(data) >= DISK_SIZE, f"{image.path}: qemu-img reads {len(data)} bytes"
    return data[:DISK_SIZE]


def test_cpio_reads_the_initramfs_writer(tmp_path: Path) -> None:
    """GNU cpio (the oracle) lists and extracts what Cpio writes: names, types, sizes,
    modes, device numbers and contents."""
    archive = Cpio()
    archive.directory("bin")
    archive.file("bin/tool", b"#!/bin/sh\necho odd-sized\n", 0o755)
    archive.file("empty", b"")
    archive.symlink("bin/sh", "tool")
    archive.char_device("console", 5, 1)
    (tmp_path / "initrd.cpio").write_bytes(archive.bytes())
    cpio = need_tool("cpio")
    listing = subprocess.run([cpio, "-itv", "--quiet", "-F", "initrd.cpio"], cwd=tmp_path,
                             capture_output=True, text=True, check=True).stdout.splitlines()
    fields = [line.split() for line in listing]
    assert [(f[0], f[-1]) for f in fields] == [
        ("drwxr-xr-x", "bin"), ("-rwxr-xr-x", "bin/tool"), ("-rw-r--r--", "empty"),
        ("lrwxrwxrwx", "tool"), ("crw-------", "console")]
    assert fields[3][-3:] == ["bin/sh", "->", "tool"]
    assert fields[4][4:6] == ["5,", "1"]
    extract = tmp_path / "tree"
    extract.mkdir()
    subprocess.run([cpio, "-id", "--quiet", "--no-absolute-filenames", "-F",
                    str(tmp_path / "initrd.cpio"), "bin/tool", "bin/sh", "empty"],
                   cwd=extract, check=True, capture_output=True)
    assert (extract / "bin/tool").read_bytes() == b"#!/bin/sh\necho odd-sized\n"
    assert (extract / "empty").read_bytes() == b""
    assert os.readlink(extract / "bin/sh") == "tool"


@pytest.mark.parametrize("flavour", ["686", "686-pae"])
def test_modules_load_after_their_dependencies(flavour: str) -> None:
    """The initramfs loads each module after every module its modinfo depends on."""
    debian = kernel(flavour)
    order = debian.module_order()
    for position, name in enumerate(order):
        assert set(module_depends(debian.modules / f"{name}.ko")) <= set(order[:position]), name
    assert {"libata", "scsi_mod", "ata_piix", "sd_mod"} <= set(order)


GUESTS = sorted({(boot.flavour, boot.mode) for boot in EMU_BOOTS})


@pytest.mark.parametrize(("flavour", "mode"), GUESTS, ids=[f"{f}-{m}" for f, m in GUESTS])
def test_qemu_passes_the_linux_guest(raw_set, qemu_reference, flavour: str, mode: str) -> None:
    """The guest itself is right: under QEMU it passes and leaves the expected bytes."""
    run = qemu_reference(flavour, mode)
    modes = set(assert_linux_passed(run).xfer_modes.values())
    assert modes == {TRANSFER_MODES[mode]}, run.serial
    for drive, path, disk in zip(DRIVES, raw_set(flavour, mode), run.disks, strict=True):
        assert disk.contents() == expected_contents(drive, path.read_bytes()), drive


@pytest.mark.parametrize("boot", EMU_BOOTS, ids=str)
def test_linux_ata_piix_on_emu(raw_set, qemu_reference, boot: Boot, tmp_path: Path) -> None:
    images = boot_disks(raw_set(boot.flavour, boot.mode), boot.variant, tmp_path / "disks")
    run = run_machine(tmp_path / "machines", *images, bios=boot.bios, memory=MEMORY,
                      timeout=EMU_TIMEOUT)
    assert_linux_passed(run)
    if boot.variant in CHECKABLE:
        for image in images:
            check = subprocess.run([need_tool("qemu-img"), "check", "-f", image.format,
                                    str(image.path)], capture_output=True, text=True)
            assert check.returncode == 0, f"{image.path.name}: {check.stdout}{check.stderr}"
    reference = qemu_reference(boot.flavour, boot.mode)
    assert Outcome.parse(run.serial).xfer_modes == assert_linux_passed(reference).xfer_modes
    for drive, image, qemu_disk in zip(DRIVES, images, reference.disks, strict=True):
        assert qemu_img_contents(image, tmp_path) == qemu_disk.contents(), \
            f"{drive}: emu left different bytes than qemu-system-i386"
