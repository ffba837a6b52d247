#!/usr/bin/env python3
"""Fuzz every image format: mutated images must give typed errors, bounded work, no lost writes.

Seeds are small healthy images of every format and child type that ``disks`` makes
itself (with data written in a few places), plus the real samples in
``../shared/fixtures``.  Input ``i`` of a format is derived from ``(format, seed, i)``
alone, so any reported input can be made again with ``--only FORMAT:I``.  Each input
is one seed with one to three mutations stacked:

* structure-aware: an integer field (1, 2, 4 or 8 bytes, in the format's byte
  order) in the seed's metadata -- headers, tables, descriptors, locators, logs:
  every byte of the file that is not guest data -- set to a boundary value (0, all
  ones, 2^k and neighbours, the file size, the old value +- 1, ...);
* VMDK descriptors: a number, extent kind, access or file name in the text replaced;
* byte-level: a few bytes of metadata flipped or randomised;
* truncation (at a sector, table or random boundary) or extension with zeros.

Every input is then opened (the format named, or probed), mapped, read, checked,
written (a whole grain-sized block and an unaligned sector), flushed, closed and
reopened read-only to read the writes back, inside a forked worker that runs under
RLIMIT_AS (memory), RLIMIT_FSIZE (file size) and a per-input RLIMIT_CPU; the parent
also kills a worker whose input runs too long on the wall clock.  Outcomes:

* ``untyped``: an exception other than :class:`disks.ImageError` (or a worker that died);
* ``hang``: the CPU or wall-clock limit was hit;
* ``grown``: the files grew by more than the writes can allocate (or hit RLIMIT_FSIZE);
* ``lost``: a write was acknowledged (write + flush + close returned) but reads back
  differently after reopening.

All four must stay 0.  A failing input is saved under ``--keep`` with a short report.

    .venv/bin/python bench/fuzz.py --count 100000 --workers 2          # every format
    .venv/bin/python bench/fuzz.py --formats vmdk --count 500 --seed 3
    .venv/bin/python bench/fuzz.py --only vmdk:1234 --verbose          # replay one input
"""

from __future__ import annotations

import argparse
import bz2
import json
import os
import random
import re
import resource
import selectors
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import disks  # noqa: E402

SECTOR = 512
MEMORY_LIMIT = 1 << 30          # RLIMIT_AS of a worker
FILE_LIMIT = 256 << 20          # RLIMIT_FSIZE of a worker (bigger than any seed + writes)
MAX_EXTENTS = 200_000           # map() entries looked at (a corrupt table may have many)
MAX_READ = 64 << 10             # bytes per read probe
GROWTH_SLACK = 1 << 20          # metadata a write may add beside its data blocks

# -- seeds ---------------------------------------------------------------------------------

@dataclass
class Seed:
    """One healthy image (one or more files) and where its metadata lies in the target file."""

    name: str
    format: str
    target: str                              # the file that is opened (and mostly mutated)
    files: dict[str, bytes]                  # every file of the image, by name
    metadata: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) in target
    hot: list[int] = field(default_factory=list)    # nonzero metadata sectors
    big_endian: bool = False
    weight: int = 10
    folder: Path | None = None               # where the seed's files lie (copied from there)
    extents: list[Seed] = field(default_factory=list)   # other binary files also mutated


# (name, format, create options, child of) -- a child seed is made over its parent
SEED_RECIPES: list[tuple[str, str, dict, str | None]] = [
    ("vdi-dynamic", "vdi", {}, None),
    ("vdi-static", "vdi", {"static": True}, None),
    ("vdi-child", "vdi", {}, "vdi-dynamic"),
    ("vpc-dynamic", "vpc", {"block_size": 512 << 10}, None),
    ("vpc-fixed", "vpc", {"subformat": "fixed"}, None),
    ("vpc-child", "vpc", {"block_size": 512 << 10}, "vpc-dynamic"),
    ("vmdk-sparse", "vmdk", {}, None),
    ("vmdk-zeroed", "vmdk", {"zeroed_grain": True}, None),
    ("vmdk-stream", "vmdk", {"subformat": "streamOptimized"}, None),
    ("vmdk-flat", "vmdk", {"subformat": "monolithicFlat"}, None),
    ("vmdk-split", "vmdk", {"subformat": "twoGbMaxExtentSparse"}, None),
    ("vmdk-vmfssparse", "vmdk", {"subformat": "vmfsSparse"}, None),
    ("vmdk-child", "vmdk", {}, "vmdk-sparse"),
    ("vhdx-dynamic", "vhdx", {"block_size": 1 << 20}, None),
    ("vhdx-fixed", "vhdx", {"subformat": "fixed"}, None),
    ("vhdx-child", "vhdx", {"block_size": 1 << 20}, "vhdx-dynamic"),
]
SEED_SIZE = 4 << 20
FIXTURE_SEEDS = [  # (fixture, format, weight)
    ("afl5.img", "vpc", 5), ("virtualpc-dynamic.vhd", "vpc", 5),
    ("afl9.vmdk", "vmdk", 5), ("iotest-version3.vmdk", "vmdk", 5),
    ("iotest-dirtylog-10G-4M.vhdx", "vhdx", 2),
]
FORMATS = ("vdi", "vpc", "vmdk", "vhdx")


def _fill(image: disks.Image, rng: random.Random) -> None:
    """Write a few recognisable stretches (so tables and bitmaps have entries)."""
    for offset, length in ((0, 4096), (1 << 20, 64 << 10), (image.size - 1536, 1024)):
        image.write(offset, bytes([rng.randrange(1, 256)]) * length)


def _metadata_ranges(path: str, fmt: str, size: int) -> list[tuple[int, int]]:
    """Every byte of ``path`` that is not guest data of the image opened from it."""
    data: list[tuple[int, int]] = []
    try:
        with disks.open(path, format=fmt, readonly=True) as image:
            for extent in image.map():
                if extent.depth == 0 and extent.host_offset is not None \
                        and extent.filename == image.path:
                    data.append((extent.host_offset, extent.length))
    except disks.ImageError:
        return [(0, size)]
    data.sort()
    ranges, pos = [], 0
    for start, length in data:
        if start > pos:
            ranges.append((pos, min(start, size) - pos))
        pos = max(pos, start + length)
    if pos < size:
        ranges.append((pos, size - pos))
    return [r for r in ranges if r[1] > 0] or [(0, size)]


def _hot_sectors(blob: bytes, ranges: list[tuple[int, int]]) -> list[int]:
    hot = []
    for start, length in ranges:
        for sector in range(start - start % SECTOR, start + length, SECTOR):
            if any(blob[sector:sector + SECTOR]):
                hot.append(sector)
    return hot


def _load_seed(name: str, fmt: str, folder: Path, target: str, weight: int) -> Seed:
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    blob = files[target]
    ranges = _metadata_ranges(str(folder / target), fmt, len(blob))
    seed = Seed(name, fmt, target, files, ranges, _hot_sectors(blob, ranges),
                big_endian=fmt == "vpc", weight=weight, folder=folder)
    for other, data in files.items():   # the sparse extents a descriptor file names
        if other != target and data[:4] in (b"KDMV", b"COWD") and not other.startswith("base"):
            whole = [(0, len(data))]
            seed.extents.append(Seed(other, fmt, other, {}, whole, _hot_sectors(data, whole)))
    return seed


def build_seeds(work: Path, formats: tuple[str, ...]) -> dict[str, list[Seed]]:
    """Make every seed image under ``work`` and load it into memory."""
    rng = random.Random(0)
    seeds: dict[str, list[Seed]] = {fmt: [] for fmt in formats}
    made: dict[str, Path] = {}
    for name, fmt, options, parent in SEED_RECIPES:
        if fmt not in formats:
            continue
        folder = work / name
        folder.mkdir()
        target = f"disk.{fmt}"
        if parent is not None:
            for item in made[parent].iterdir():
                shutil.copy(item, folder / ("base" + item.name[4:] if item.name.startswith("disk")
                                            else item.name))
            base = folder / f"base.{fmt}"
            image = disks.create(folder / target, fmt, backing=base, backing_format=fmt,
                                 **options)
        else:
            image = disks.create(folder / target, fmt, SEED_SIZE, **options)
        with image:
            _fill(image, rng)
        made[name] = folder
        seeds[fmt].append(_load_seed(name, fmt, folder, target, 10))
    fixtures = ROOT.parent / "shared" / "fixtures"
    for fixture, fmt, weight in FIXTURE_SEEDS:
        source = fixtures / f"{fixture}.bz2"
        if fmt not in formats or not source.exists():
            continue
        folder = work / fixture
        folder.mkdir()
        (folder / fixture).write_bytes(bz2.decompress(source.read_bytes()))
        seeds[fmt].append(_load_seed(fixture, fmt, folder, fixture, weight))
    return seeds


# -- mutations -----------------------------------------------------------------------------

def _interesting(rng: random.Random, width: int, old: int, file_size: int) -> int:
    bits = width * 8
    top = (1 << bits) - 1
    k = rng.randrange(bits)
    choices = [0, 1, top, top >> 1, (top >> 1) + 1, 1 << k, (1 << k) - 1, (1 << k) + 1,
               old + 1, old - 1, old * 2, old // 2, old << 9, old >> 9,
               file_size, file_size // SECTOR, file_size + SECTOR, file_size // SECTOR + 1,
               rng.randrange(top + 1), rng.randrange(256), old ^ (1 << k)]
    return rng.choice(choices) & top


def _pick_offset(rng: random.Random, seed: Seed, size: int, align: int) -> int:
    if seed.hot and rng.random() < 0.7:
        offset = rng.choice(seed.hot) + rng.randrange(SECTOR)
    else:
        start, length = rng.choice(seed.metadata)
        offset = start + rng.randrange(max(1, length))
    offset -= offset % align
    return min(offset, max(0, size - align))


def mutate_field(rng: random.Random, seed: Seed, blob: bytearray) -> str:
    width = rng.choice((1, 2, 4, 4, 4, 8, 8))
    offset = _pick_offset(rng, seed, len(blob), width if rng.random() < 0.8 else 1)
    if offset + width > len(blob):
        return "field: none"
    order = "big" if seed.big_endian else "little"
    if rng.random() < 0.1:
        order = "little" if order == "big" else "big"
    old = int.from_bytes(blob[offset:offset + width], order)
    new = _interesting(rng, width, old, len(blob))
    blob[offset:offset + width] = new.to_bytes(width, order)
    return f"field {offset}/{width} {order}: {old:#x} -> {new:#x}"


def mutate_bytes(rng: random.Random, seed: Seed, blob: bytearray) -> str:
    count = rng.choice((1, 1, 1, 2, 4, 8))
    done = []
    for _ in range(count):
        offset = _pick_offset(rng, seed, len(blob), 1)
        if offset >= len(blob):
            continue
        if rng.random() < 0.5:
            blob[offset] ^= 1 << rng.randrange(8)
        else:
            blob[offset] = rng.randrange(256)
        done.append(offset)
    return f"bytes at {done}"


def mutate_size(rng: random.Random, seed: Seed, blob: bytearray) -> str:
    old = len(blob)
    if rng.random() < 0.75:
        choices = [rng.randrange(old + 1), old - SECTOR, old - 1, old - rng.randrange(1, 4096),
                   rng.randrange(0, old + 1, SECTOR), SECTOR, 0]
        if seed.hot:
            choices.append(rng.choice(seed.hot) + SECTOR)
        new = max(0, min(old, rng.choice(choices)))
        del blob[new:]
    else:
        new = old + rng.choice((1, SECTOR, 4096, 1 << 16, rng.randrange(1, 1 << 20)))
        blob.extend(bytes(new - old))
    return f"size {old} -> {new}"


_NUMBER = re.compile(rb"\d+")
_WORDS = [b"SPARSE", b"FLAT", b"ZERO", b"VMFS", b"VMFSSPARSE", b"SESPARSE", b"RW", b"RDONLY",
          b"NOACCESS", b"monolithicSparse", b"streamOptimized", b"monolithicFlat",
          b"twoGbMaxExtentSparse", b"vmfsSparse", b"\"..\"", b"\".\"", b"\"/dev/zero\"",
          b"\"\"", b"\"disk.vmdk\"", b"\"base.vmdk\"", b"ffffffff", b"-1"]


def mutate_descriptor(rng: random.Random, seed: Seed, blob: bytearray) -> str:
    """Change a number, keyword or quoted name in VMDK descriptor text."""
    start = blob.find(b"# Disk DescriptorFile")
    if start < 0:
        return mutate_field(rng, seed, blob)
    end = blob.find(b"\0", start)
    end = len(blob) if end < 0 else end
    text = bytes(blob[start:end])
    tokens = [m.span() for m in _NUMBER.finditer(text)]
    tokens += [m.span() for m in re.finditer(rb"\"[^\"\n]*\"|[A-Za-z]+", text)]
    if not tokens:
        return "descriptor: none"
    a, b = rng.choice(tokens)
    old = text[a:b]
    if old.isdigit():
        new = str(_interesting(rng, 8, int(old), len(blob)) >> rng.choice((0, 0, 32, 40))).encode()
    else:
        new = rng.choice(_WORDS)
    text = text[:a] + new + text[b:]
    in_file = start > 0  # embedded: keep the text area's length
    if in_file:
        text = text[:end - start].ljust(end - start, b"\0")
    blob[start:end] = text
    return f"descriptor {old!r} -> {new!r}"


MUTATORS = [(mutate_field, 6), (mutate_bytes, 3), (mutate_size, 1)]


class Patched:
    """A large file's bytes with a few changed: what a mutator sees as a bytearray,
    without copying megabytes per input (page faults dominate on small VMs)."""

    def __init__(self, base: bytes) -> None:
        self.base = base
        self.size = len(base)
        self.changes: dict[int, int] = {}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, key: int | slice) -> int | bytes:
        if isinstance(key, int):
            if key in self.changes:
                return self.changes[key]
            return self.base[key] if key < len(self.base) else 0
        start, stop, _ = key.indices(self.size)
        out = bytearray(self.base[start:min(stop, len(self.base))].ljust(stop - start, b"\0"))
        for at in range(start, stop):
            if at in self.changes:
                out[at - start] = self.changes[at]
        return bytes(out)

    def __setitem__(self, key: int | slice, value: int | bytes) -> None:
        if isinstance(key, int):
            assert isinstance(value, int)
            self.changes[key] = value
            return
        start, stop, _ = key.indices(self.size)
        assert isinstance(value, (bytes, bytearray)) and len(value) == stop - start
        for n, byte in enumerate(value):
            self.changes[start + n] = byte

    def __delitem__(self, key: slice) -> None:
        assert key.stop is None and key.start is not None
        self.size = key.start
        self.changes = {k: v for k, v in self.changes.items() if k < self.size}

    def extend(self, zeros: bytes) -> None:
        self.size += len(zeros)

    def find(self, sub: bytes, start: int = 0) -> int:
        at = self.base.find(sub, start, self.size)
        return at

    def write(self, path: Path, source: Path) -> None:
        """The mutated file at ``path``: a kernel copy of the seed, then the changes."""
        shutil.copyfile(source, path)
        with open(path, "r+b") as out:
            out.truncate(self.size)
            for at, byte in sorted(self.changes.items()):
                out.seek(at)
                out.write(bytes([byte]))

    def materialize(self) -> bytes:
        return self[0:self.size]  # type: ignore[return-value]


BIG_FILE = 256 << 10   # files above this are mutated as Patched, below as bytearray


def make_input(fmt: str, seeds: list[Seed], run_seed: int, index: int
               ) -> tuple[Seed, dict[str, bytes | bytearray | Patched], list[str]]:
    """Input ``index``: a seed and its files with one to three mutations of one of them
    (the file opened, or a sparse extent it names); unchanged files are the seed's."""
    rng = random.Random(f"{fmt}:{run_seed}:{index}")
    seed = rng.choices(seeds, weights=[s.weight for s in seeds])[0]
    files: dict[str, bytes | bytearray | Patched] = dict(seed.files)
    mutators = list(MUTATORS)
    if fmt == "vmdk":
        mutators.append((mutate_descriptor, 3))
    victim = seed
    if seed.extents and rng.random() < 0.4:
        victim = rng.choice(seed.extents)
    descriptor_only = [n for n, b in seed.files.items() if n != seed.target
                       and b.startswith(b"# Disk DescriptorFile")]
    base = seed.files[victim.target]
    blob: bytearray | Patched = Patched(base) if len(base) > BIG_FILE else bytearray(base)
    notes = [] if victim is seed else [f"in {victim.target}"]
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        mutator = rng.choices([m for m, _ in mutators], weights=[w for _, w in mutators])[0]
        notes.append(mutator(rng, victim, blob))  # type: ignore[arg-type]
    files[victim.target] = blob
    if descriptor_only and rng.random() < 0.2:  # a separate descriptor beside the extent
        name = rng.choice(descriptor_only)
        text = bytearray(seed.files[name])
        other = Seed(name, fmt, name, {}, [(0, len(text))], [0])
        notes.append(name + ": " + mutate_descriptor(rng, other, text))
        files[name] = text
    return seed, files, notes


def write_input(seed: Seed, files: dict[str, bytes | bytearray | Patched], folder: Path) -> None:
    """Lay the input's files out in ``folder`` (kernel copies of unchanged seed files)."""
    assert seed.folder is not None
    for name, blob in files.items():
        if isinstance(blob, Patched):
            blob.write(folder / name, seed.folder / name)
        elif blob is seed.files.get(name) and name.startswith("base") \
                and seed.format != "vmdk":   # a descriptor could name it as an RW extent
            if not (folder / name).exists():   # a parent: only ever opened read-only
                try:
                    os.link(seed.folder / name, folder / name)
                except OSError:   # another file system (--keep)
                    shutil.copyfile(seed.folder / name, folder / name)
        elif blob is seed.files.get(name):
            shutil.copyfile(seed.folder / name, folder / name)
        else:
            (folder / name).write_bytes(blob)


# -- one input -----------------------------------------------------------------------------

class Grown(Exception):
    pass


class Lost(Exception):
    pass


def _tree_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def exercise(folder: Path, seed: Seed, rng: random.Random) -> str:
    """Open, map, read, check, write, flush, reopen and read back; the outcome's name."""
    path = folder / seed.target
    fmt = seed.format if rng.random() < 0.8 else None
    before = _tree_size(folder)
    try:
        image = disks.open(path, format=fmt)
    except disks.ImageError:
        return "refused"
    writes: list[tuple[int, bytes]] = []
    # two writes, each may allocate a block (and a table or bitmap block beside it)
    allowed = 2 * 2 * image.allocation_unit() + GROWTH_SLACK
    try:
        with image:
            size = image.size
            for count, _ in enumerate(image.map()):
                if count >= MAX_EXTENTS:
                    break
            probes = [0, max(0, size - MAX_READ)] + [rng.randrange(max(1, size)) for _ in range(2)]
            for offset in probes:
                image.read(offset, min(MAX_READ, size - offset))
            image.check()
            unit = max(SECTOR, min(image.allocation_unit(), 1 << 20))
            if size >= SECTOR:
                block = rng.randrange(max(1, size // unit)) * unit
                writes.append((block, bytes([rng.randrange(1, 256)]) * min(unit, size - block)))
                at = rng.randrange(size - SECTOR + 1)
                writes.append((at, bytes([rng.randrange(1, 256)]) * SECTOR))
            for offset, data in writes:
                image.write(offset, data)
            image.flush()
    except disks.ImageError as exc:
        if "File too large" in str(exc) and before + allowed <= FILE_LIMIT:
            raise Grown(f"hit RLIMIT_FSIZE: {exc}") from None
        return "typed"
    grown = _tree_size(folder) - before
    if writes and grown > allowed:
        raise Grown(f"files grew by {grown} bytes for writes allowed {allowed}")
    if not writes:
        return "ok"
    try:
        with disks.open(path, format=fmt, readonly=True) as again:
            for offset, data in _final_contents(writes):
                got = again.read(offset, len(data))
                if got != data:
                    first = next(i for i in range(len(data)) if got[i] != data[i])
                    raise Lost(f"write at {offset} reads back wrong from byte {first}")
    except disks.ImageError as exc:
        raise Lost(f"image written to is refused on reopen: {exc}") from None
    return "ok"


def _final_contents(writes: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The writes with later ones laid over earlier ones (what the disk must hold)."""
    out = []
    for i, (offset, data) in enumerate(writes):
        buf = bytearray(data)
        for later_offset, later in writes[i + 1:]:
            lo, hi = max(offset, later_offset), min(offset + len(data), later_offset + len(later))
            if lo < hi:
                buf[lo - offset:hi - offset] = later[lo - later_offset:hi - later_offset]
        out.append((offset, bytes(buf)))
    return out


def run_one(fmt: str, seeds: list[Seed], run_seed: int, index: int, folder: Path) -> dict:
    seed, files, notes = make_input(fmt, seeds, run_seed, index)
    for item in folder.iterdir():
        if item.name not in files:
            item.unlink()
    write_input(seed, files, folder)
    rng = random.Random(f"ops:{fmt}:{run_seed}:{index}")
    result = {"index": index, "seed": seed.name, "mutations": notes}
    try:
        result["outcome"] = exercise(folder, seed, rng)
    except Grown as exc:
        result.update(outcome="grown", detail=str(exc))
    except Lost as exc:
        result.update(outcome="lost", detail=str(exc))
    except BaseException as exc:  # noqa: B036 - the point is to see everything
        frames = traceback.extract_tb(exc.__traceback__)[-3:]
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}"
                            for f in reversed(frames))
        result.update(outcome="untyped",
                      detail=f"{type(exc).__name__}: {str(exc)[:200]} at {where}")
    return result


# -- workers -------------------------------------------------------------------------------

def _worker(fmt: str, seeds: list[Seed], run_seed: int, folder: Path, cpu_limit: float,
            tasks: int, results: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of death
    signal.signal(signal.SIGPROF, signal.SIG_DFL)   # the per-input CPU limit kills
    warnings.simplefilter("ignore")                 # damaged-copy warnings are expected
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    folder.mkdir(exist_ok=True)
    reader = os.fdopen(tasks, "r")
    writer = os.fdopen(results, "w", buffering=1)
    for line in reader:
        index = int(line)
        # CPU time of this input alone: SIGPROF (default action: terminate) after
        # cpu_limit seconds; RLIMIT_CPU is only a backstop (its clock drifts from
        # getrusage's over a long run, so it gets a wide margin)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        used = usage.ru_utime + usage.ru_stime
        resource.setrlimit(resource.RLIMIT_CPU,
                           (int(used + 3 * cpu_limit) + 60, resource.RLIM_INFINITY))
        signal.setitimer(signal.ITIMER_PROF, cpu_limit)
        result = run_one(fmt, seeds, run_seed, index, folder)
        signal.setitimer(signal.ITIMER_PROF, 0)
        result["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        writer.write(json.dumps(result) + "\n")
    os._exit(0)


@dataclass
class Worker:
    pid: int
    tasks: object
    results: object
    index: int | None = None
    started: float = 0.0
    buffer: str = ""


@dataclass
class Tally:
    tried: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    peak_rss_kib: int = 0
    failures: list[dict] = field(default_factory=list)

    def add(self, result: dict) -> None:
        self.tried += 1
        outcome = result["outcome"]
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        self.peak_rss_kib = max(self.peak_rss_kib, result.get("rss", 0))
        if outcome in FAILURES:
            self.failures.append(result)


FAILURES = ("untyped", "hang", "grown", "lost")


def fuzz_format(fmt: str, seeds: list[Seed], indices: range, *, run_seed: int, workers: int,
                scratch: Path, cpu_limit: float, wall_limit: float, deadline: float | None,
                progress: bool) -> Tally:
    tally = Tally()
    pending = iter(indices)
    selector = selectors.DefaultSelector()
    pool: list[Worker] = []
    parent_fds: set[int] = set()

    def spawn(slot: int) -> Worker:
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(task_w)
                os.close(result_r)
                for fd in parent_fds:  # another worker's pipe ends would hold its EOF back
                    os.close(fd)
                _worker(fmt, seeds, run_seed, scratch / f"{fmt}-{slot}", cpu_limit,
                        task_r, result_w)
            finally:
                os._exit(1)
        os.close(task_r)
        os.close(result_w)
        parent_fds.update((task_w, result_r))
        worker = Worker(pid, os.fdopen(task_w, "w", buffering=1), result_r)
        selector.register(result_r, selectors.EVENT_READ, worker)
        return worker

    def feed(worker: Worker) -> bool:
        if deadline is not None and time.monotonic() > deadline:
            return False
        index = next(pending, None)
        if index is None:
            return False
        worker.index, worker.started = index, time.monotonic()
        worker.tasks.write(f"{index}\n")
        return True

    def retire(worker: Worker, outcome: str | None) -> None:
        parent_fds.difference_update((worker.tasks.fileno(), worker.results))
        selector.unregister(worker.results)
        os.close(worker.results)
        worker.tasks.close()
        if outcome is not None:
            os.kill(worker.pid, signal.SIGKILL)
        _, status = os.waitpid(worker.pid, 0)
        if worker.index is not None:
            if outcome is None:
                sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
                outcome = "hang" if sig in (signal.SIGXCPU, signal.SIGPROF, signal.SIGKILL) \
                    else "untyped"
                detail = f"worker died (signal {sig}, status {status})"
            else:
                detail = f"still running after {wall_limit} s"
            tally.add({"index": worker.index, "outcome": outcome, "detail": detail,
                       "mutations": make_input(fmt, seeds, run_seed, worker.index)[2],
                       "seed": make_input(fmt, seeds, run_seed, worker.index)[0].name})

    for slot in range(workers):
        worker = spawn(slot)
        pool.append(worker)
        if not feed(worker):
            break
    last_report = time.monotonic()
    while any(w.index is not None for w in pool):
        for key, _ in selector.select(timeout=0.5):
            worker = key.data
            chunk = os.read(worker.results, 1 << 16).decode()
            if not chunk:
                slot = pool.index(worker)
                retire(worker, None)
                pool[slot] = spawn(slot)
                if not feed(pool[slot]):
                    pool[slot].index = None
                continue
            worker.buffer += chunk
            while "\n" in worker.buffer:
                line, worker.buffer = worker.buffer.split("\n", 1)
                tally.add(json.loads(line))
                worker.index = None
                feed(worker)
        now = time.monotonic()
        for slot, worker in enumerate(pool):
            if worker.index is not None and now - worker.started > wall_limit:
                retire(worker, "hang")
                pool[slot] = spawn(slot)
                if not feed(pool[slot]):
                    pool[slot].index = None
        if progress and now - last_report > 30:
            last_report = now
            print(f"  {fmt}: {tally.tried} tried, {_summary(tally)}", file=sys.stderr, flush=True)
    for worker in pool:
        worker.tasks.close()
        selector.unregister(worker.results)
        os.close(worker.results)
        os.waitpid(worker.pid, 0)
    return tally


def _summary(tally: Tally) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(tally.outcomes.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--count", type=int, default=1000, help="inputs per format")
    parser.add_argument("--start", type=int, default=0, help="first input index")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cpu-limit", type=float, default=10.0, help="CPU seconds per input")
    parser.add_argument("--wall-limit", type=float, default=60.0, help="wall seconds per input")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop each format after this long (counts are what was reached)")
    parser.add_argument("--only", help="FORMAT:INDEX: run one input in this process")
    parser.add_argument("--keep", type=Path, help="save failing inputs in this folder")
    parser.add_argument("--json", action="store_true", help="print the tallies as JSON")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="emu-fuzz-", dir=_scratch_root()) as tmp:
        work = Path(tmp)
        (work / "seeds").mkdir()
        formats = tuple(f for f in args.formats.split(",") if f)
        if args.only:
            fmt, index = args.only.split(":")
            seeds = build_seeds(work / "seeds", (fmt,))[fmt]
            folder = work / "one"
            folder.mkdir()
            result = run_one(fmt, seeds, args.seed, int(index), folder)
            print(json.dumps(result, indent=1))
            if args.keep:
                _keep(args.keep, fmt, result, *make_input(fmt, seeds, args.seed, int(index))[:2])
            return 0 if result["outcome"] not in FAILURES else 1
        seeds_by_format = build_seeds(work / "seeds", formats)
        report = {}
        failed = 0
        for fmt in formats:
            began = time.monotonic()
            deadline = began + args.minutes * 60 if args.minutes else None
            indices = range(args.start, args.start + args.count)
            tally = fuzz_format(fmt, seeds_by_format[fmt], indices, run_seed=args.seed,
                                workers=args.workers, scratch=work,
                                cpu_limit=args.cpu_limit, wall_limit=args.wall_limit,
                                deadline=deadline, progress=not args.json)
            elapsed = time.monotonic() - began
            counts = {name: tally.outcomes.get(name, 0) for name in FAILURES}
            report[fmt] = {"tried": tally.tried, **counts,
                           "peak_rss_mib": tally.peak_rss_kib // 1024,
                           "seconds": round(elapsed, 1), "outcomes": tally.outcomes,
                           "failures": tally.failures[:20]}
            failed += sum(counts.values())
            if args.keep:
                for result in tally.failures[:50]:
                    _keep(args.keep, fmt, result,
                          *make_input(fmt, seeds_by_format[fmt], args.seed, result["index"])[:2])
            if not args.json:
                print(f"{fmt:5} tried {tally.tried:7}  untyped {counts['untyped']}  hang "
                      f"{counts['hang']}  grown {counts['grown']}  lost {counts['lost']}  "
                      f"peak RSS {tally.peak_rss_kib // 1024} MiB  ({elapsed:.0f} s; "
                      f"{_summary(tally)})", flush=True)
                for result in tally.failures[:10 if args.verbose else 3]:
                    mutations = "; ".join(result["mutations"])[:200]
                    print(f"   {fmt}:{result['index']} {result['outcome']} [{result['seed']}] "
                          f"{result.get('detail', '')[:300]} | {mutations}")
        if args.json:
            print(json.dumps(report))
    return 1 if failed else 0


def _keep(folder: Path, fmt: str, result: dict, seed: Seed,
          files: dict[str, bytes | bytearray | Patched]) -> None:
    target = folder / f"{fmt}-{result['index']}"
    target.mkdir(parents=True, exist_ok=True)
    write_input(seed, files, target)
    (target / "REPORT.json").write_text(json.dumps(result, indent=1))


def _scratch_root() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


if __name__ == "__main__":
    sys.exit(main())
