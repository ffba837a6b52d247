"""Booting CD images: ISOs made with Debian's tools, under emu and QEMU, with both BIOSes.

The images are built here: ``grub-mkrescue`` (GRUB's i386-pc El Torito image plus
xorriso) with a grub.cfg that prints a marker on COM1 and reboots, and ``xorriso -as
mkisofs`` with ISOLINUX, whose isolinux.cfg chain-loads a small boot file of ours
that prints a marker on COM1 and the debug console and exits through port F4h (so
ISOLINUX has read its own files from the ISO 9660 tree through INT 13h first).
Each boots under ``qemu-system-i386 -cdrom X -boot d`` and ``emu run --cdrom X
--boot d`` with SeaBIOS and with emu's BIOS; every run must reach the marker and
end the way QEMU's does.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import need_tool

from emu.pytest_plugin import Assembler

GRUB_MARKER = "GRUB-ISO-MARKER"
ISOLINUX_MARKER = "ISOLINUX-CHAIN-MARKER"
ISOLINUX_DIR = Path("/usr/lib/ISOLINUX")
SYSLINUX_MODULES = Path("/usr/lib/syslinux/modules/bios")
BIOSES = ["seabios", "ours"]
ENGINES = ["qemu", "emu"]
NO_BOOT = "No bootable device."
EMU_EXIT_HALTED = 125
QEMU_HALT_WAIT = 5            # QEMU just sits in the BIOS's final halt: stop it after this


def no_boot(emu_machine, engine: str, cdrom: Path | str) -> None:
    """Our BIOS prints the line and halts (emu: exit 125; QEMU: stopped by the timeout)."""
    timeout = QEMU_HALT_WAIT if engine == "qemu" else 60
    run = emu_machine(engine=engine, cdrom=cdrom, boot="d", timeout=timeout)
    assert run.serial.replace("\r", "").splitlines() == [NO_BOOT], str(run)
    if engine == "emu":
        assert run.exit_code == EMU_EXIT_HALTED, str(run)

GRUB_CFG = f"""serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry "marker" {{
  echo {GRUB_MARKER}
  reboot
}}
"""

ISOLINUX_CFG = """SERIAL 0 115200
PROMPT 0
TIMEOUT 1
DEFAULT marker
LABEL marker
  KERNEL marker.bin
"""

# A CD boot file ISOLINUX loads at 0000:7C00: the marker on COM1 and port E9h, exit 0.
MARKER_BOOT = f"""bits 16
org 0x7C00
    cli
    xor ax, ax
    mov ds, ax
    mov si, message
.next:
    lodsb
    test al, al
    jz .done
    mov dx, 0x3F8
    out dx, al
    out 0xE9, al
    jmp .next
.done:
    xor al, al
    out 0xF4, al
    hlt
message: db "{ISOLINUX_MARKER}", 13, 10, 0
"""

# A boot sector that says which device booted: "disk" on the debug console, exit 0.
DISK_BOOT = r"""
    mov si, message
.next:
    cs lodsb
    test al, al
    jz .done
    out 0xE9, al
    jmp .next
.done:
    xor al, al
    out 0xF4, al
    hlt
message: db "disk", 10, 0
"""


def run_tool(*argv: str | Path) -> None:
    proc = subprocess.run([str(part) for part in argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def grub_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tool("grub-mkrescue")
    need_tool("xorriso")
    root = tmp_path_factory.mktemp("grub")
    tree = root / "tree" / "boot" / "grub"
    tree.mkdir(parents=True)
    (tree / "grub.cfg").write_text(GRUB_CFG)
    iso = root / "grub.iso"
    run_tool("grub-mkrescue", "-o", iso, root / "tree")
    return iso


@pytest.fixture(scope="module")
def isolinux_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tool("xorriso")
    need_tool("nasm")
    if not (ISOLINUX_DIR / "isolinux.bin").exists():
        pytest.fail(f"{ISOLINUX_DIR}/isolinux.bin is missing (Debian package isolinux)")
    root = tmp_path_factory.mktemp("isolinux")
    tree = root / "tree" / "isolinux"
    tree.mkdir(parents=True)
    (tree / "isolinux.bin").write_bytes((ISOLINUX_DIR / "isolinux.bin").read_bytes())
    (tree / "ldlinux.c32").write_bytes((SYSLINUX_MODULES / "ldlinux.c32").read_bytes())
    (tree / "isolinux.cfg").write_text(ISOLINUX_CFG)
    (tree / "marker.bin").write_bytes(Assembler(root / "nasm")(MARKER_BOOT))
    iso = root / "isolinux.iso"
    run_tool("xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-o", iso,
             "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot",
             "-boot-load-size", "4", "-boot-info-table", root / "tree")
    return iso


@pytest.mark.parametrize("bios", BIOSES)
@pytest.mark.parametrize("engine", ENGINES)
def test_grub_rescue_iso_boots(grub_iso: Path, emu_machine, engine: str, bios: str) -> None:
    run = emu_machine(engine=engine, bios=bios, cdrom=grub_iso, boot="d", timeout=90)
    assert run.exit_code == 0, str(run)        # GRUB's reboot ends both engines' runs
    assert GRUB_MARKER in run.serial, str(run)


@pytest.mark.parametrize("bios", BIOSES)
@pytest.mark.parametrize("engine", ENGINES)
def test_isolinux_iso_boots(isolinux_iso: Path, emu_machine, engine: str, bios: str) -> None:
    run = emu_machine(engine=engine, bios=bios, cdrom=isolinux_iso, boot="d", timeout=90)
    assert run.exit_code == 0, str(run)
    assert run.debugcon.endswith(ISOLINUX_MARKER + "\n"), str(run)
    assert "ISOLINUX" in run.serial and ISOLINUX_MARKER in run.serial, str(run)


@pytest.mark.parametrize("engine", ENGINES)
def test_boot_order_picks_disk_or_cd(isolinux_iso: Path, emu_machine, disk_image, nasm,
                                     engine: str) -> None:
    """Our BIOS follows the CMOS boot order QEMU's -boot and emu's --boot write."""
    disk = disk_image("raw", "1M", content=nasm.boot_sector(DISK_BOOT))
    from_disk = emu_machine(disk, engine=engine, cdrom=isolinux_iso, boot="c", timeout=60)
    assert (from_disk.exit_code, from_disk.debugcon) == (0, "disk\n"), str(from_disk)
    from_cd = emu_machine(disk, engine=engine, cdrom=isolinux_iso, boot="dc", timeout=60)
    assert from_cd.exit_code == 0 and ISOLINUX_MARKER in from_cd.debugcon, str(from_cd)


@pytest.mark.parametrize("engine", ENGINES)
def test_empty_drive_is_no_bootable_device(emu_machine, engine: str) -> None:
    no_boot(emu_machine, engine, "")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_disc_without_el_torito_does_not_boot(tmp_path: Path, emu_machine,
                                                engine: str) -> None:
    need_tool("xorriso")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "readme.txt").write_text("data only\n")
    iso = tmp_path / "data.iso"
    run_tool("xorriso", "-as", "mkisofs", "-quiet", "-o", iso, tmp_path / "tree")
    no_boot(emu_machine, engine, iso)
