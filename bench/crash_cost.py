#!/usr/bin/env python3
"""What the crash-safety barriers cost: random writes + flushes, before vs after vs QEMU.

For each format, the same request stream -- ``--writes`` 4 KiB writes at seeded
random offsets of a ``--size`` image (sequential 64 KiB writes for streamOptimized
VMDK, which QEMU writes only in order), a flush after every ``--flush-every`` -- runs

* with emu as it is ("after": barriers where the crash models need them),
* with emu's ``disks`` package as of ``--before`` (a git revision, default the commit
  before the barriers; exported to a temporary folder), and
* with ``qemu-io`` (one process, the same writes and flushes as ``-c`` commands).

Each runs ``--repeat`` times in its own process; the best wall-clock time is kept,
and for emu the number of fsync calls (a steadier figure than time on a shared
machine).  Prints the times and the ratios after/before and after/qemu-io.

    .venv/bin/python bench/crash_cost.py [--size 256M] [--writes 2000] [--flush-every 16]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "759759d"   # the last commit before the crash-consistency barriers

# name: (emu format, create options, qemu-io format, sequential)
CASES: dict[str, tuple[str, dict[str, str], str, bool]] = {
    "vdi": ("vdi", {}, "vdi", False),
    "vpc-dynamic": ("vpc", {}, "vpc", False),
    "vmdk-sparse": ("vmdk", {}, "vmdk", False),
    "vmdk-stream": ("vmdk", {"subformat": "streamOptimized"}, "vmdk", True),
    "vhdx-dynamic": ("vhdx", {"block_size": "1M"}, "vhdx", False),
}

CHILD = r"""
import json, os, sys, time
import disks
calls = [0]
real_fsync = os.fsync
def counting(fd):
    calls[0] += 1
    real_fsync(fd)
os.fsync = counting
path, fmt, options, requests, flush_every = json.loads(sys.argv[1])
disks.create(path, fmt, requests["size"], **options).close()
data = bytes(range(256)) * (requests["length"] // 256)
calls[0] = 0
start = time.perf_counter()
with disks.open(path) as image:
    for n, offset in enumerate(requests["offsets"], 1):
        image.write(offset, data)
        if n % flush_every == 0:
            image.flush()
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "fsyncs": calls[0], "module": disks.__file__}))
"""


def requests_for(size: int, writes: int, sequential: bool, seed: int = 1) -> dict:
    if sequential:
        length = 64 * 1024
        offsets = [i * length for i in range(min(writes, size // length))]
    else:
        length = 4096
        rng = random.Random(seed)
        offsets = [rng.randrange(size // length) * length for _ in range(writes)]
    return {"size": size, "length": length, "offsets": offsets}


def run_emu(tree: Path, work: Path, fmt: str, options: dict[str, str], requests: dict,
            flush_every: int) -> dict:
    path = work / f"emu.{fmt}"
    path.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", CHILD,
                          json.dumps([str(path), fmt, options, requests, flush_every])],
                         capture_output=True, text=True, env=env, cwd=tree, check=True)
    result = json.loads(out.stdout)
    assert Path(result["module"]).is_relative_to(tree), result["module"]
    return result


def run_qemu(work: Path, fmt: str, options: dict[str, str], requests: dict,
             flush_every: int) -> float:
    path = work / f"qemu.{fmt}"
    path.unlink(missing_ok=True)
    create = ["qemu-img", "create", "-q", "-f", fmt]
    for key, value in options.items():
        create += ["-o", f"{key}={value}"]
    subprocess.run([*create, str(path), str(requests["size"])], check=True)
    commands: list[str] = []
    for n, offset in enumerate(requests["offsets"], 1):
        commands += ["-c", f"write -q -P 0x5a {offset} {requests['length']}"]
        if n % flush_every == 0:
            commands += ["-c", "flush"]
    start = time.perf_counter()
    subprocess.run(["qemu-io", "-f", fmt, *commands, str(path)], check=True,
                   capture_output=True)
    return time.perf_counter() - start


def export_tree(revision: str, into: Path) -> Path:
    archive = into / "before.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), revision, "disks"],
                   check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "before", filter="data")
    return into / "before"


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1].upper()] if text[-1].isalpha() else int(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="256M")
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--flush-every", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--formats", default=",".join(CASES))
    args = parser.parse_args()
    size = parse_size(args.size)
    have_qemu = shutil.which("qemu-io") is not None
    print(f"{args.writes} writes, a flush every {args.flush_every}, {args.size} images "
          f"(best of {args.repeat}); before = {args.before}")
    print(f"{'format':14} {'before s':>9} {'after s':>9} {'qemu-io s':>9} "
          f"{'fsyncs b/a':>11} {'after/before':>12} {'after/qemu':>10}")
    with tempfile.TemporaryDirectory(prefix="emu-crash-cost-") as tmp:
        work = Path(tmp)
        before_tree = export_tree(args.before, work)
        for name in args.formats.split(","):
            fmt, options, qfmt, sequential = CASES[name]
            requests = requests_for(size, args.writes, sequential)
            before = min((run_emu(before_tree, work, fmt, options, requests,
                                  args.flush_every) for _ in range(args.repeat)),
                         key=lambda r: r["seconds"])
            after = min((run_emu(ROOT, work, fmt, options, requests, args.flush_every)
                         for _ in range(args.repeat)), key=lambda r: r["seconds"])
            qemu = min(run_qemu(work, qfmt, options, requests, args.flush_every)
                       for _ in range(args.repeat)) if have_qemu else float("nan")
            print(f"{name:14} {before['seconds']:9.3f} {after['seconds']:9.3f} {qemu:9.3f} "
                  f"{before['fsyncs']:>5}/{after['fsyncs']:<5} "
                  f"{after['seconds'] / before['seconds']:12.2f} "
                  f"{after['seconds'] / qemu:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
