#!/usr/bin/env python3
"""Boot time to GRUB: from starting ``emu run`` to GRUB's marker on COM1, and QEMU's.

Builds the GRUB 2 test image of tests/bootimages.py (boot.img + core.img in the MBR gap,
modules on a FAT partition, a grub.cfg that echoes a marker, runs save_env and reboots)
with Debian's tools, then for each BIOS (ours and SeaBIOS) starts each engine with the
serial port on its stdout and timestamps the marker line as it arrives.  Both engines
boot the same raw image (a fresh copy per run) in the same run of this script; the
figure is the best of ``--repeat`` runs, the ratio emu/QEMU.

    .venv/bin/python bench/boot.py [--repeat 3] [--bios ours,seabios]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bootimages import GRUB_MARKER, build_grub  # noqa: E402

BIOSES = {"ours": ROOT / "firmware" / "bios.bin",
          "seabios": Path("/usr/share/seabios/bios.bin")}


def argv_for(engine: str, disk: Path, bios: Path) -> list[str]:
    if engine == "emu":
        return [sys.executable, "-m", "emu", "run", "--bios", str(bios),
                "--disk", f"{disk},format=raw", "--serial", "stdio", "--timeout", "300"]
    qemu = shutil.which("qemu-system-i386")
    if qemu is None:
        raise SystemExit("qemu-system-i386 is not installed (Debian: qemu-system-x86)")
    return [qemu, "-M", "pc", "-nodefaults", "-display", "none", "-no-reboot",
            "-bios", str(bios), "-drive", f"file={disk},format=raw,if=ide",
            "-serial", "stdio"]


def time_to_marker(engine: str, image: Path, bios: Path, work: Path) -> float:
    disk = work / f"{engine}.raw"
    shutil.copyfile(image, disk)
    start = time.perf_counter()
    seen = None
    output = b""
    with subprocess.Popen(argv_for(engine, disk, bios), stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            output += line
            if seen is None and GRUB_MARKER.encode() in line:
                seen = time.perf_counter() - start
    if seen is None:
        raise SystemExit(f"{engine} never printed {GRUB_MARKER!r}:\n"
                         f"{output.decode(errors='replace')[-2000:]}")
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bios", default="ours,seabios")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.bios.split(",") if name.strip()]
    with tempfile.TemporaryDirectory(prefix="boot-bench-") as folder:
        work = Path(folder)
        image = build_grub(work / "grub.raw")
        print(f"seconds from start to {GRUB_MARKER!r} on COM1 (best of {args.repeat})")
        print(f"{'bios':<10}{'emu':>10}{'qemu':>10}{'emu/qemu':>10}")
        for name in chosen:
            bios = BIOSES[name]
            if not bios.exists():
                print(f"{name:<10}  skipped: {bios} is missing")
                continue
            best = {engine: min(time_to_marker(engine, image, bios, work)
                                for _ in range(args.repeat)) for engine in ("emu", "qemu")}
            print(f"{name:<10}{best['emu']:>10.2f}{best['qemu']:>10.2f}"
                  f"{best['emu'] / best['qemu']:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
