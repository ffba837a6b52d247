#!/usr/bin/env python3
"""Time ``emu img convert`` against ``qemu-img convert`` in the same run.

Makes a half-random raw image (random bytes in half of its 1 MiB blocks, chosen by a
fixed seed; the rest zero and sparse), then for every case in :data:`CASES`:

* raw -> FMT: both tools convert the raw image;
* FMT -> raw: both tools convert the image qemu-img made (the same input for both).

Each timing is the best of ``--repeat`` runs of the whole command (interpreter start-up
included: it is what a user waits for), as wall-clock and as CPU seconds (the steadier
figure on a shared machine, where the clock also counts waiting for a core).  The
outputs are checked: emu's FMT image must read back (with qemu-img compare) as the raw
source, and both raw outputs must equal the source.  Prints a table with both times
and the ratios emu/qemu.

A new format plugs in by adding a row to CASES; rows whose driver is not registered
in ``disks`` are printed as skipped.

    .venv/bin/python bench/convert.py [--size 1G] [--formats vdi,vpc-dynamic] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import disks  # noqa: E402
from disks.image import parse_size  # noqa: E402

BLOCK = 1 << 20


@dataclass(frozen=True)
class Case:
    """One row: a target format and the create options both tools get."""

    name: str
    format: str            # qemu-img's format name (emu uses the same)
    options: str = ""      # -o for both tools
    suffix: str = ""


CASES: tuple[Case, ...] = (
    Case("vdi", "vdi", "", ".vdi"),
    Case("vdi-static", "vdi", "static=on", ".vdi"),
    Case("vpc-fixed", "vpc", "subformat=fixed", ".vhd"),
    Case("vpc-dynamic", "vpc", "subformat=dynamic", ".vhd"),
    Case("vmdk-sparse", "vmdk", "subformat=monolithicSparse", ".vmdk"),
    Case("vmdk-stream", "vmdk", "subformat=streamOptimized", ".vmdk"),
    Case("vhdx", "vhdx", "", ".vhdx"),
)


def make_source(path: Path, size: int, seed: int) -> None:
    """Random data in half the MiB blocks (a seeded choice), zeros (holes) elsewhere."""
    blocks = -(-size // BLOCK)
    chosen = sorted(random.Random(seed).sample(range(blocks), blocks // 2))
    rng = random.Random(seed + 1)
    with open(path, "wb") as f:
        f.truncate(size)
        for block in chosen:
            length = min(BLOCK, size - block * BLOCK)
            f.seek(block * BLOCK)
            f.write(rng.randbytes(length))


@dataclass(frozen=True)
class Timing:
    wall: float   # seconds on the clock
    cpu: float    # user + system seconds of the command and its threads


def timed(argv: Sequence[str | Path], repeat: int, cleanup: Path) -> Timing:
    """Best wall-clock and best CPU time over ``repeat`` runs.  On a shared machine the
    CPU time is the steadier figure: the wall clock also counts waiting for a core."""
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        cleanup.unlink(missing_ok=True)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(map(str, argv))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}{proc.stderr}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best_wall, best_cpu = min(best_wall, elapsed), min(best_cpu, cpu)
    return Timing(best_wall, best_cpu)


def row(case: str, direction: str, emu: Timing, qemu: Timing, verdict: str) -> str:
    return (f"{case:<13} {direction:<9} {emu.wall:7.2f} {qemu.wall:7.2f} "
            f"{emu.wall / qemu.wall:6.2f}   {emu.cpu:7.2f} {qemu.cpu:7.2f} "
            f"{emu.cpu / qemu.cpu:6.2f}  {verdict}")


def emu_convert(fmt_in: str, fmt_out: str, options: str, src: Path, dst: Path) -> list[str]:
    argv = [sys.executable, "-m", "emu", "img", "convert", "-f", fmt_in, "-O", fmt_out]
    return argv + (["-o", options] if options else []) + [str(src), str(dst)]


def qemu_convert(fmt_in: str, fmt_out: str, options: str, src: Path, dst: Path) -> list[str]:
    argv = ["qemu-img", "convert", "-f", fmt_in, "-O", fmt_out]
    return argv + (["-o", options] if options else []) + [str(src), str(dst)]


def same_content(a: Path, fmt_a: str, b: Path, fmt_b: str) -> bool:
    proc = subprocess.run(["qemu-img", "compare", "-f", fmt_a, "-F", fmt_b, str(a), str(b)],
                          capture_output=True, text=True)
    return proc.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="1G", help="virtual size of the test image (1G)")
    parser.add_argument("--formats", default=",".join(c.name for c in CASES),
                        help="comma-separated case names (default: all rows)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per timing; best is kept")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--workdir", help="folder for the images (default: a temporary one)")
    parser.add_argument("--no-verify", action="store_true", help="skip the output checks")
    args = parser.parse_args(argv)
    if shutil.which("qemu-img") is None:
        raise SystemExit("qemu-img is not installed (Debian package qemu-utils)")
    size = parse_size(args.size)
    wanted = [name.strip() for name in args.formats.split(",") if name.strip()]
    by_name = {case.name: case for case in CASES}
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise SystemExit(f"unknown case(s) {', '.join(unknown)}; rows: {', '.join(by_name)}")

    # time the program as installed (bytecode cached), not a recompile of its sources
    subprocess.run([sys.executable, "-m", "compileall", "-q", "disks", "emu"], cwd=ROOT,
                   check=True)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="emu-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    source = workdir / "source.raw"
    print(f"# {size} bytes, half random (seed {args.seed}), best of {args.repeat}; "
          f"workdir {workdir}")
    make_source(source, size, args.seed)
    registered = set(disks.formats())
    header = (f"{'case':<13} {'direction':<9} {'emu':>7} {'qemu':>7} {'ratio':>6}   "
              f"{'emu':>7} {'qemu':>7} {'ratio':>6}  check\n"
              f"{'':<13} {'':<9} {'wall-clock seconds':^22}   {'CPU seconds':^22}")
    print(header)
    print("-" * len(header.splitlines()[0]))
    try:
        for name in wanted:
            case = by_name[name]
            if case.format not in registered:
                print(f"{case.name:<13} skipped: driver not registered")
                continue
            emu_img = workdir / f"emu{case.suffix}"
            qemu_image = workdir / f"qemu{case.suffix}"
            t_emu = timed(emu_convert("raw", case.format, case.options, source, emu_img),
                          args.repeat, emu_img)
            t_qemu = timed(qemu_convert("raw", case.format, case.options, source, qemu_image),
                           args.repeat, qemu_image)
            verdict = "-" if args.no_verify else \
                ("ok" if same_content(emu_img, case.format, source, "raw") else "MISMATCH")
            print(row(case.name, "raw->fmt", t_emu, t_qemu, verdict), flush=True)
            emu_raw, qemu_raw = workdir / "emu-out.raw", workdir / "qemu-out.raw"
            t_emu = timed(emu_convert(case.format, "raw", "", qemu_image, emu_raw),
                          args.repeat, emu_raw)
            t_qemu = timed(qemu_convert(case.format, "raw", "", qemu_image, qemu_raw),
                           args.repeat, qemu_raw)
            verdict = "-" if args.no_verify else \
                ("ok" if same_content(emu_raw, "raw", source, "raw") else "MISMATCH")
            print(row(case.name, "fmt->raw", t_emu, t_qemu, verdict), flush=True)
            for path in (emu_img, qemu_image, emu_raw, qemu_raw):
                path.unlink(missing_ok=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            source.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
