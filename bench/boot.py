#!/usr/bin/env python3
"""Boot times: to GRUB's marker, and Debian's Linux to its ata_piix PASS, emu vs QEMU.

``grub``: the GRUB 2 test image of tests/bootimages.py (boot.img + core.img in the MBR gap,
modules on a FAT partition, a grub.cfg that echoes a marker, runs save_env and reboots);
the figure is the time from start to the marker on COM1.

``linux``: tests/linux_guest.py's four-drive set (Debian's i386 686 kernel from SYSLINUX,
a busybox initramfs whose /init reads and writes every drive through ata_piix); the figure
is the time from start to ``EMU-LINUX-PASS`` on COM1.

For each BIOS (ours and SeaBIOS) each engine starts with the serial port on its stdout and
the marker line is timestamped as it arrives.  Both engines boot the same raw images (a
fresh copy per run) in the same run of this script; the figure is the best of
``--repeat`` runs, the ratio emu/QEMU.

    .venv/bin/python bench/boot.py [--repeat 3] [--bios ours,seabios] [--guest grub,linux]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bootimages import GRUB_MARKER, build_grub  # noqa: E402
from linux_guest import PASS_MARKER, build_raw_set  # noqa: E402

BIOSES = {"ours": ROOT / "firmware" / "bios.bin",
          "seabios": Path("/usr/share/seabios/bios.bin")}
EMU_TIMEOUT = 1800


def build_grub_set(work: Path) -> list[Path]:
    return [build_grub(work / "grub.raw")]


def build_linux_set(work: Path) -> list[Path]:
    return build_raw_set(work / "linux", "686")


# guest name -> (drive-set builder, marker on COM1)
GUESTS: dict[str, tuple[Callable[[Path], list[Path]], str]] = {
    "grub": (build_grub_set, GRUB_MARKER),
    "linux": (build_linux_set, PASS_MARKER),
}


def argv_for(engine: str, disks: Sequence[Path], bios: Path) -> list[str]:
    if engine == "emu":
        argv = [sys.executable, "-m", "emu", "run", "--bios", str(bios), "--memory", "128M",
                "--serial", "stdio", "--timeout", str(EMU_TIMEOUT)]
        for index, disk in enumerate(disks):
            argv += ["--disk", f"{disk},format=raw,bus={index // 2},unit={index % 2}"]
        return argv
    qemu = shutil.which("qemu-system-i386")
    if qemu is None:
        raise SystemExit("qemu-system-i386 is not installed (Debian: qemu-system-x86)")
    argv = [qemu, "-M", "pc", "-m", "128M", "-nodefaults", "-display", "none", "-no-reboot",
            "-bios", str(bios), "-serial", "stdio"]
    for index, disk in enumerate(disks):
        argv += ["-drive", f"file={disk},format=raw,if=ide,index={index}"]
    return argv


def time_to_marker(engine: str, images: Sequence[Path], marker: str, bios: Path,
                   work: Path) -> float:
    """Seconds to ``marker``; infinity (and the console's end on stderr) if it never came."""
    disks = []
    for image in images:
        disk = work / f"{engine}-{image.name}"
        shutil.copyfile(image, disk)
        disks.append(disk)
    start = time.perf_counter()
    seen = None
    output = b""
    with subprocess.Popen(argv_for(engine, disks, bios), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            output += line
            if seen is None and marker.encode() in line:
                seen = time.perf_counter() - start
    if seen is None:
        print(f"{engine} never printed {marker!r}; its console ended:\n"
              f"{output.decode(errors='replace')[-1500:]}", file=sys.stderr)
        return float("inf")
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bios", default="ours,seabios")
    parser.add_argument("--guest", default="grub,linux", help="grub, linux or both")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.bios.split(",") if name.strip()]
    guests = [name.strip() for name in args.guest.split(",") if name.strip()]
    with tempfile.TemporaryDirectory(prefix="boot-bench-") as folder:
        work = Path(folder)
        for guest in guests:
            build, marker = GUESTS[guest]
            images = build(work)
            print(f"{guest}: seconds from start to {marker!r} on COM1 "
                  f"(best of {args.repeat})")
            print(f"{'bios':<10}{'emu':>10}{'qemu':>10}{'emu/qemu':>10}")
            for name in chosen:
                bios = BIOSES[name]
                if not bios.exists():
                    print(f"{name:<10}  skipped: {bios} is missing")
                    continue
                best = {engine: min(time_to_marker(engine, images, marker, bios, work)
                                    for _ in range(args.repeat)) for engine in ("emu", "qemu")}
                print(f"{name:<10}{best['emu']:>10.2f}{best['qemu']:>10.2f}"
                      f"{best['emu'] / best['qemu']:>9.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
