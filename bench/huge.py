#!/usr/bin/env python3
"""Time ``emu img info/check/map`` on 64 TiB images against ``qemu-img`` in the same run.

qemu-img creates each image (empty: a fresh VDI has a 256 MiB block map, a fresh
monolithicSparse VMDK two million preallocated grain tables); then both tools run
``info``, ``check`` and ``map`` on the same file, each as a whole command (interpreter
start-up included: it is what a user waits for), best of ``--repeat`` runs (``map`` once:
qemu-img takes minutes over a 64 TiB VDI).  Printed per step: wall seconds of both
tools, the ratio emu/qemu, and emu's peak RSS against the on-disk size of the tables it
has to hold (goal: time within 2x qemu-img's, RSS within 2x the table).

    .venv/bin/python bench/huge.py [--size 64T] [--formats vdi,vmdk] [--folder /var/tmp]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EMU = [sys.executable, "-m", "emu", "img"]
STEPS = ("info", "check", "map")


def table_bytes(fmt: str, size: int) -> int:
    """What the image's tables take on disk: the block map, or GD + GTs (one copy)."""
    if fmt == "vdi":
        return 4 * -(-size // (1 << 20))
    grain_tables = -(-size // (512 * 65536))
    return 4 * grain_tables + 2048 * grain_tables


def timed(argv: list[str]) -> tuple[float, int, int]:
    """Wall seconds, exit status and peak RSS (KiB) of one command."""
    start = time.monotonic()
    child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - start, child.returncode, usage.ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="64T")
    parser.add_argument("--formats", default="vdi,vmdk")
    parser.add_argument("--folder", default=None, help="where the images go (sparse files)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        print("qemu-img is not installed")
        return 2
    from disks.image import parse_size
    size = parse_size(args.size)
    failed = False
    with tempfile.TemporaryDirectory(prefix="emu-huge-", dir=args.folder) as tmp:
        print(f"{'format':6} {'step':6} {'qemu-img s':>10} {'emu s':>8} {'ratio':>6} "
              f"{'emu RSS MiB':>11} {'table MiB':>9} {'RSS/table':>9}")
        for fmt in args.formats.split(","):
            path = os.path.join(tmp, f"huge.{fmt}")
            subprocess.run([qemu_img, "create", "-q", "-f", fmt, path, args.size], check=True)
            table = table_bytes(fmt, size)
            for step in STEPS:
                runs = 1 if step == "map" else args.repeat
                theirs, their_status, _ = min(timed([qemu_img, step, "-f", fmt, path])
                                              for _ in range(runs))
                ours, our_status, rss = min(timed([*EMU, step, "-f", fmt, path])
                                            for _ in range(runs))
                if our_status != their_status:
                    failed = True
                print(f"{fmt:6} {step:6} {theirs:10.2f} {ours:8.2f} {ours / theirs:6.2f} "
                      f"{rss / 1024:11.0f} {table / 2**20:9.0f} {rss * 1024 / table:9.2f}"
                      + ("" if our_status == their_status else
                         f"  exit {our_status}, qemu-img {their_status}"), flush=True)
            os.unlink(path)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
