"""Bootable disk images built with Debian's own tools, without root or loop devices.

Both images are an MBR-partitioned raw disk with one FAT16 partition at 1 MiB, filled
with mtools (``-i disk@@offset``):

- :func:`build_syslinux`: SYSLINUX's ``mbr.bin``, ``syslinux --install --offset``, a
  ``syslinux.cfg`` that turns on the serial console, prints :data:`SYSLINUX_BANNER`
  (as the name of a missing kernel) and runs ``reboot.c32``.
- :func:`build_grub`: GRUB 2 i386-pc ``boot.img`` in the MBR, ``core.img`` (made by
  ``grub-mkimage`` with biosdisk, part_msdos and fat) in the gap after it, the modules
  on the FAT partition, and a ``grub.cfg`` that turns on the serial console, echoes
  :data:`GRUB_MARKER`, stores a value in ``/boot/grub/grubenv`` with ``save_env`` (a
  disk write through INT 13h AH=43h) and reboots.  :func:`grub_env` reads the stored
  value back out of any image.

Tools come from the Debian packages syslinux, syslinux-common, grub-pc-bin, grub-common,
mtools, dosfstools and fdisk; a missing one skips (fails under CI).
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from conftest import need_tool

MIB = 1 << 20
SECTOR = 512
PARTITION_START = 2048                     # sectors: 1 MiB, leaving the MBR gap for GRUB
DISK_SIZE = 32 * MIB
PARTITION_OFFSET = PARTITION_START * SECTOR
MBR_CODE_BYTES = 440                       # boot code before the disk signature and table

SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")
SYSLINUX_MODULES = Path("/usr/lib/syslinux/modules/bios")
GRUB_PLATFORM = Path("/usr/lib/grub/i386-pc")

SYSLINUX_BANNER = "EMU-SYSLINUX-BANNER"
GRUB_MARKER = "EMU-GRUB-MARKER"
GRUB_ENV_KEY = "emu_boot_token"

# SYSLINUX 6.04 sends SAY and DISPLAY text only to the screen, but its "Loading <name>..."
# line reaches the serial console: the banner is the name of a kernel that is not there,
# and ONERROR then reboots.
SYSLINUX_CFG = f"""SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT {SYSLINUX_BANNER}
ONERROR reboot.c32
"""

GRUB_CFG = f"""serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
terminfo serial dumb
echo {GRUB_MARKER}
set {GRUB_ENV_KEY}=@TOKEN@
save_env {GRUB_ENV_KEY}
echo saved {GRUB_ENV_KEY}
reboot
"""

GRUB_CORE_MODULES = ("biosdisk", "part_msdos", "fat")


def run(*argv: str | Path, stdin: str | None = None) -> str:
    proc = subprocess.run([str(a) for a in argv], input=stdin, capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def _partitioned_fat_disk(path: Path, label: str, disk_size: int = DISK_SIZE,
                          partition_end: int | None = None) -> str:
    """A raw disk with one bootable FAT16 partition from 1 MiB to ``partition_end`` (bytes;
    default the end of the disk); returns the mtools image spec."""
    for tool in ("sfdisk", "mkfs.fat", "mcopy"):
        need_tool(tool)
    with open(path, "wb") as disk:
        disk.truncate(disk_size)
    partition_size = (partition_end or disk_size) - PARTITION_OFFSET
    run("sfdisk", "--no-reread", "--no-tell-kernel", "-q", path,
        stdin=f"label: dos\nlabel-id: 0x454d5521\n"
              f"{PARTITION_START},{partition_size // SECTOR},6,*\n")
    partition_kib = partition_size // 1024
    run("mkfs.fat", "-F", "16", "-n", label, "-i", "454D5521", "--offset",
        str(PARTITION_START), "-h", str(PARTITION_START), path, str(partition_kib))
    return f"{path}@@{PARTITION_OFFSET}"


def _mcopy(image: str, source: Path, target: str) -> None:
    run("mcopy", "-o", "-i", image, source, f"::{target}")


def _put_mbr_code(path: Path, code: bytes) -> None:
    with open(path, "r+b") as disk:
        disk.write(code[:MBR_CODE_BYTES])


def build_syslinux(path: Path, config: str = SYSLINUX_CFG,
                   files: Mapping[str, Path] | None = None,
                   modules: Sequence[str] = ("reboot.c32", "libcom32.c32", "libutil.c32"),
                   disk_size: int = DISK_SIZE, partition_end: int | None = None) -> Path:
    """A SYSLINUX disk; by default one that prints SYSLINUX_BANNER on COM1 and reboots.

    ``config`` is the syslinux.cfg, ``files`` more files for the FAT partition (name on
    the partition -> host file), ``modules`` the COM32 modules copied from SYSLINUX.
    """
    need_tool("syslinux")
    image = _partitioned_fat_disk(path, "EMUSYSLNX", disk_size, partition_end)
    run("syslinux", "--install", "--offset", str(PARTITION_OFFSET), path)
    _put_mbr_code(path, SYSLINUX_MBR.read_bytes())
    config_file = path.parent / f"{path.name}.syslinux.cfg"
    config_file.write_text(config)
    _mcopy(image, config_file, "syslinux.cfg")
    for module in modules:
        _mcopy(image, SYSLINUX_MODULES / module, module)
    for name, source in (files or {}).items():
        _mcopy(image, source, name)
    return path


def build_grub(path: Path, token: str = "first") -> Path:
    """A GRUB 2 disk that echoes GRUB_MARKER, saves ``emu_boot_token=token`` and reboots."""
    for tool in ("grub-mkimage", "grub-editenv", "mmd"):
        need_tool(tool)
    image = _partitioned_fat_disk(path, "EMUGRUB")
    work = path.parent / f"{path.name}.grub"
    work.mkdir(exist_ok=True)
    core = work / "core.img"
    run("grub-mkimage", "-O", "i386-pc", "-d", GRUB_PLATFORM, "-o", core,
        "-p", "(hd0,msdos1)/boot/grub", *GRUB_CORE_MODULES)
    core_bytes = core.read_bytes()
    if SECTOR + len(core_bytes) > PARTITION_OFFSET:
        raise AssertionError(f"core.img is {len(core_bytes)} bytes: too big for the MBR gap")
    _put_mbr_code(path, (GRUB_PLATFORM / "boot.img").read_bytes())
    with open(path, "r+b") as disk:
        disk.seek(SECTOR)                  # boot.img's default kernel sector is LBA 1
        disk.write(core_bytes)
    run("mmd", "-i", image, "::boot", "::boot/grub", "::boot/grub/i386-pc")
    modules = sorted(GRUB_PLATFORM.glob("*.mod")) + sorted(GRUB_PLATFORM.glob("*.lst"))
    run("mcopy", "-o", "-i", image, *modules, "::boot/grub/i386-pc/")
    config = work / "grub.cfg"
    config.write_text(GRUB_CFG.replace("@TOKEN@", token))
    _mcopy(image, config, "boot/grub/grub.cfg")
    environment = work / "grubenv"
    environment.unlink(missing_ok=True)
    run("grub-editenv", environment, "create")
    _mcopy(image, environment, "boot/grub/grubenv")
    return path


def grub_env(raw_path: Path) -> dict[str, str]:
    """The variables in /boot/grub/grubenv of a raw GRUB disk built by build_grub."""
    text = run("mtype", "-i", f"{raw_path}@@{PARTITION_OFFSET}", "::boot/grub/grubenv")
    pairs = (line.split("=", 1) for line in text.splitlines()
             if "=" in line and not line.startswith("#"))
    return {key: value for key, value in pairs}
