#!/usr/bin/env python3
"""Guest disk throughput: PIO READ SECTORS, READ MULTIPLE and READ DMA, emu vs QEMU.

The ATA test ROM (firmware/atatest.asm) has a bench mode: when LBA 0 of the disk starts
with ``ATABENCH`` it reads ``--size`` bytes with each method, 256 sectors per command
(PIO: one DRQ block per sector, ``rep insw``; MULTIPLE: 16-sector blocks; DMA: two 64 KiB
PRD entries), printing ``BENCH <method> begin`` / ``end`` on the debug console, and exits
through port 0xF4.  The console is the engine's stdout (both flush every write): this
script timestamps the marker lines as they arrive, so start-up is not counted.  Both
engines read the same raw disk (random data) in the same run; the median of
``--repeat`` runs (host-side timestamps are noisy both ways on a loaded machine).

    .venv/bin/python bench/guest_io.py [--size 32M] [--repeat 3] [--engines emu,qemu]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from disks.image import parse_size  # noqa: E402

ROM = ROOT / "firmware" / "atatest.bin"
SECTOR = 512
SECTORS_PER_COMMAND = 256
METHODS = {"PIO READ SECTORS": 1, "READ MULTIPLE": 2, "READ DMA": 4}
ROM_NAMES = {"PIO READ SECTORS": "pio", "READ MULTIPLE": "multiple", "READ DMA": "dma"}
QEMU_ISSUES_FIGURES = {"PIO READ SECTORS": 5.5, "READ MULTIPLE": 23.0, "READ DMA": 500.0}


def make_disk(path: Path, read_bytes: int) -> None:
    """A raw disk a little larger than what is read, random data after the header."""
    size = read_bytes + (4 << 20)
    with open(path, "wb") as disk:
        block = os.urandom(1 << 20)
        for _ in range(size >> 20):
            disk.write(block)


def set_request(path: Path, sectors: int, methods: int) -> None:
    with open(path, "r+b") as disk:
        disk.write(b"ATABENCH" + struct.pack("<II", sectors, methods))


def argv_for(engine: str, disk: Path) -> list[str]:
    """The engine's command line, with the debug console on stdout."""
    if engine == "emu":
        return [sys.executable, "-m", "emu", "run", "--bios", str(ROM),
                "--disk", f"{disk},format=raw", "--debugcon", "stdio",
                "--serial", "null", "--timeout", "600"]
    qemu = shutil.which("qemu-system-i386")
    if qemu is None:
        raise SystemExit("qemu-system-i386 is not installed (Debian: qemu-system-x86)")
    return [qemu, "-M", "pc", "-nodefaults", "-display", "none", "-no-reboot",
            "-bios", str(ROM), "-drive", f"file={disk},format=raw,if=ide",
            "-debugcon", "stdio", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]


def timed_run(engine: str, disk: Path) -> dict[str, float]:
    """Seconds between each method's "BENCH <name> begin" and "end" lines, as they arrive.

    The console is read unbuffered and each chunk timestamped; a method whose begin and
    end markers arrive in the same chunk (this reader was not scheduled in between) has
    no valid figure in this run.
    """
    begun: dict[str, float] = {}
    spans: dict[str, float] = {}
    pending = b""
    transcript: list[str] = []
    with subprocess.Popen(argv_for(engine, disk), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        descriptor = proc.stdout.fileno()
        while chunk := os.read(descriptor, 65536):
            now = time.perf_counter()
            pending += chunk
            *lines, pending = pending.split(b"\n")
            in_chunk = set()
            for raw in lines:
                line = raw.decode(errors="replace").rstrip()
                transcript.append(line)
                if not (line.startswith("BENCH ") and line.endswith((" begin", " end"))):
                    continue
                name, _, edge = line[len("BENCH "):].rpartition(" ")
                if edge == "begin":
                    begun[name] = now
                    in_chunk.add(name)
                elif name not in in_chunk:
                    spans[name] = now - begun[name]
        stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if "BENCH done" not in transcript:
        raise SystemExit(f"{engine} failed (exit {proc.returncode}):\n"
                         + "\n".join(transcript) + f"\n{stderr[-2000:]}")
    return spans


def measure(engine: str, disk: Path, repeat: int) -> dict[str, float]:
    """Seconds per method: the median of the valid figures of ``repeat`` runs."""
    runs = [timed_run(engine, disk) for _ in range(repeat)]
    result = {}
    for name in METHODS:
        figures = [run[ROM_NAMES[name]] for run in runs if ROM_NAMES[name] in run]
        if not figures:
            raise SystemExit(f"{engine}: no valid timing for {name}; try --repeat 5")
        result[name] = statistics.median(figures)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="32M", help="bytes read per method (default 32M)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per engine (median)")
    parser.add_argument("--engines", default="emu,qemu")
    args = parser.parse_args(argv)
    read_bytes = parse_size(args.size)
    unit = SECTORS_PER_COMMAND * SECTOR
    read_bytes = max(unit, read_bytes // unit * unit)
    sectors = read_bytes // SECTOR
    engines = [name.strip() for name in args.engines.split(",") if name.strip()]
    with tempfile.TemporaryDirectory(prefix="guest-io-") as folder:
        work = Path(folder)
        disk = work / "disk.raw"
        make_disk(disk, read_bytes)
        set_request(disk, sectors, sum(METHODS.values()))
        results = {engine: measure(engine, disk, args.repeat) for engine in engines}
    mib = read_bytes / 1e6
    print(f"guest reads of {read_bytes >> 20} MiB per method, timed between the ROM's "
          f"debug-console markers (median of {args.repeat})")
    header = f"{'method':<18}" + "".join(f"{engine + ' MB/s':>12}" for engine in engines)
    if {"emu", "qemu"} <= set(engines):
        header += f"{'emu/qemu':>10}"
    print(header)
    for name in METHODS:
        rates = {engine: mib / results[engine][name] for engine in engines}
        line = f"{name:<18}" + "".join(f"{rates[engine]:>12.1f}" for engine in engines)
        if {"emu", "qemu"} <= set(engines):
            line += f"{rates['emu'] / rates['qemu']:>9.2f}x"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
