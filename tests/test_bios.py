"""Our BIOS ROM: its layout, its reproducible build, the demo disk it boots, how it stops.

Boots run under QEMU (``qemu-system-i386 -M pc -bios firmware/bios.bin``) and under
``emu run``; the transcripts must agree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, need_tool
from guests import qemu_pc_argv

from emu.machine import EXIT_NO_BOOT
from emu.pytest_plugin import DiskImage, GuestRun
from firmware import build, path
from firmware.demo import DEMO_DISK_SIZE, demo_format, make_demo_disk

ROM_SIZE = 0x10000
RESET_VECTOR = 0xFFF0
BIOS_SEGMENT = 0xF000
DEMO_GREETING = "Hello from the emu demo disk."
DEMO_OK = "INT 13h: wrote LBA 1 (AH=43h), read it back (AH=02h): OK"
NO_BOOT = "No bootable device."


def rom() -> bytes:
    return path("bios.bin").read_bytes()


# ---------------------------------------------------------------- the ROM image

def test_rom_is_64k_with_reset_vector_date_and_model() -> None:
    image = rom()
    assert len(image) == ROM_SIZE
    # F000:FFF0: JMP F000:post
    assert image[RESET_VECTOR] == 0xEA
    target = int.from_bytes(image[RESET_VECTOR + 1:RESET_VECTOR + 3], "little")
    segment = int.from_bytes(image[RESET_VECTOR + 3:RESET_VECTOR + 5], "little")
    assert segment == BIOS_SEGMENT and target < RESET_VECTOR
    date = image[0xFFF5:0xFFFD].decode("ascii")
    month, day, year = date.split("/")
    assert 1 <= int(month) <= 12 and 1 <= int(day) <= 31 and len(year) == 2
    assert image[0xFFFE] == 0xFC          # model byte: AT


def test_path_finds_package_data() -> None:
    assert path("bios.bin").is_file()
    assert path("demo.bin").stat().st_size == 512
    with pytest.raises(FileNotFoundError):
        path("no-such-rom.bin")


def test_committed_binaries_match_their_sources() -> None:
    need_tool("nasm")
    proc = subprocess.run([sys.executable, "-m", "firmware.build", "--check", "bios", "demo"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_is_reproducible(tmp_path: Path) -> None:
    need_tool("nasm")
    first = build.build(tmp_path / "first", ["bios", "demo"])
    second = build.build(tmp_path / "second", ["bios", "demo"])
    for one, two in zip(first, second, strict=True):
        assert one.read_bytes() == two.read_bytes()
        assert one.read_bytes() == path(one.name).read_bytes()


def test_check_reports_a_stale_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    need_tool("nasm")
    copy = tmp_path / "firmware"
    copy.mkdir()
    for source in build.FIRMWARE_DIR.glob("*"):
        if source.suffix in (".asm", ".inc", ".bin"):
            (copy / source.name).write_bytes(source.read_bytes())
    stale = bytearray((copy / "demo.bin").read_bytes())
    stale[0] ^= 0xFF
    (copy / "demo.bin").write_bytes(bytes(stale))
    monkeypatch.setattr(build, "FIRMWARE_DIR", copy)
    problems = build.check(["bios", "demo"])
    assert len(problems) == 1 and problems[0].startswith("demo.bin")


# ---------------------------------------------------------------- booting

def boot(engine: str, emu_machine, *images: DiskImage, timeout: float = 60) -> GuestRun:
    return emu_machine(*images, engine=engine, bios="ours", timeout=timeout)


@pytest.mark.parametrize("engine", ["qemu", "emu"])
def test_demo_disk_boots(engine: str, emu_machine, tmp_path: Path) -> None:
    fmt = demo_format()
    target = tmp_path / "demo.img"
    assert make_demo_disk(target) == fmt
    variant = {"vpc": "vpc", "raw": "raw"}[fmt]
    run = boot(engine, emu_machine, DiskImage(target, variant))
    assert run.exit_code == 0, str(run)
    lines = run.serial.replace("\r", "").splitlines()
    assert lines == [DEMO_GREETING, DEMO_OK], str(run)
    # the sector the boot program wrote is in the image
    written = run.disks[0].read(512, 512)
    assert written == b"emu demo sector " * 32


def test_demo_disk_is_a_valid_vhd_for_qemu(tmp_path: Path) -> None:
    assert demo_format() == "vpc"
    target = tmp_path / "demo.vhd"
    make_demo_disk(target)
    qemu_img = need_tool("qemu-img")
    info = subprocess.run([qemu_img, "info", "--output", "json", str(target)],
                          capture_output=True, text=True, check=True).stdout
    assert '"format": "vpc"' in info
    raw = tmp_path / "demo.raw"
    subprocess.run([qemu_img, "convert", "-f", "vpc", "-O", "raw", str(target), str(raw)],
                   check=True)
    data = raw.read_bytes()
    assert data[:512] == path("demo.bin").read_bytes()
    assert abs(len(data) - DEMO_DISK_SIZE) < 1024 * 1024      # VHD sizes round to a CHS


def test_emu_run_without_disk_boots_the_demo(tmp_path: Path) -> None:
    serial = tmp_path / "serial.txt"
    proc = subprocess.run([sys.executable, "-m", "emu", "run", "--serial", f"file:{serial}",
                           "--timeout", "60"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    assert DEMO_OK in serial.read_text()


def test_no_bootable_disk_prints_and_stops_under_emu(emu_machine, disk_image) -> None:
    """The BIOS's line ends the run with its own status and one line, no register dump."""
    blank = disk_image("raw", "1M")
    run = boot("emu", emu_machine, blank)
    assert NO_BOOT in run.serial, str(run)
    assert run.exit_code == EXIT_NO_BOOT, str(run)
    assert run.stderr == f"emu: stopped: the BIOS found nothing to boot: {NO_BOOT}\n"


def test_no_bootable_disk_prints_under_qemu(disk_image, tmp_path: Path) -> None:
    """QEMU just sits in the halt: stop it after a few seconds and read COM1."""
    blank = disk_image("raw", "1M")
    serial = tmp_path / "serial.txt"
    argv = qemu_pc_argv(path("bios.bin"), "-serial", f"file:{serial}",
                        "-drive", f"file={blank.path},format=raw,if=ide", debug_exit=False)
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(argv, capture_output=True, timeout=5, stdin=subprocess.DEVNULL)
    assert serial.read_text().replace("\r", "").splitlines() == [NO_BOOT]


SECOND_DISK_BOOT = r"""
    xor ax, ax
    mov ds, ax
    mov al, dl                  ; the drive INT 19h booted
    add al, '0' - 0x80
    out 0xE9, al
    mov al, 10
    out 0xE9, al
    xor al, al
    out 0xF4, al
    cli
    hlt
"""


@pytest.mark.parametrize("engine", ["qemu", "emu"])
def test_int19_tries_every_disk(engine: str, emu_machine, disk_image, nasm) -> None:
    """The first disk has no 55AAh signature: the BIOS boots the second, with DL = 81h."""
    first = disk_image("raw", "1M", name="first.img")
    second = disk_image("raw", "1M", name="second.img",
                        content=nasm.boot_sector(SECOND_DISK_BOOT))
    run = boot(engine, emu_machine, first, second)
    assert run.exit_code == 0, str(run)
    assert run.debugcon == "1\n"


JUMP_TO_RESET_VECTOR = r"""
    mov si, message
.next:
    cs lodsb
    test al, al
    jz .reset
    out 0xE9, al
    jmp .next
.reset:
    jmp 0xF000:0xFFF0           ; how GRUB and SYSLINUX's reboot.c32 "reboot"
message: db "jumping to the reset vector", 10, 0
"""


@pytest.mark.parametrize("engine", ["qemu", "emu"])
def test_jump_to_reset_vector_resets_the_machine(engine: str, emu_machine, disk_image,
                                                 nasm) -> None:
    """A second POST resets the machine for real, which ends the run with status 0."""
    image = disk_image("raw", "1M", content=nasm.boot_sector(JUMP_TO_RESET_VECTOR))
    run = boot(engine, emu_machine, image, timeout=30)
    assert run.exit_code == 0, str(run)
    assert run.debugcon == "jumping to the reset vector\n", str(run)
