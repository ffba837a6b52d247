"""Crash-consistency harness: record a workload's file I/O, replay crash states, check each.

Theory of operation
-------------------
Every driver does its file I/O through :class:`disks.hostfile.HostFile`.  A
:class:`Recorder` wraps that class's write, resize, copy and fsync calls for the
files of one folder and keeps them, in order, as a journal of :class:`Op`.  A
workload (:data:`WORKLOAD`: allocating, straddling, in-place, far-away and
whole-block writes, a discard, flushes, a close) runs on one image of each format
and child type (:data:`VARIANTS`), while a model of the guest disk keeps what each
request wrote and where in the journal each flush returned.

A crash state is the folder's files as some subset of the journal left them.
Three models say which subsets a power cut can leave:

* ``prefix``: the writes up to any syscall, none after (an ordered disk);
* ``torn``: a prefix plus part of the next write, cut at a 512-byte sector
  boundary of the host file (the head persisted, or the tail).  Drives write a
  sector atomically, so byte-granular tears are not modelled.  A write that
  extends its file is cut at 4 KiB page boundaries only: the file system grows
  the file as pages reach the disk (ext4 and XFS update the on-disk size after
  the data of an append is written), so an append never leaves part of a page;
* ``reorder``: a drive cache that reorders: everything each file held at its
  last completed fsync, plus ANY subset of the writes issued since (all subsets
  when few, a seeded sample when many).

Each state is written into a scratch folder and checked: emu opens it and its
``check()`` finds no corruption (leaks allowed); every guest sector reads either
the contents acknowledged by the last completed flush or what a later request
wrote there (old or new, never anything else); the bytes outside the requests
read as before; a read-write open and close (the recovery a user's next run
does) keeps all that.  Where QEMU reads the format, ``qemu-img check`` must
find no corruption and ``qemu-img convert`` must read the same bytes as emu.

``python tests/crashmodel.py [--full] [variant ...]`` runs the harness outside
pytest and prints the states tried per variant and model; ``--full`` is the
exhaustive run (every sector tear, many more reorder subsets).
"""

from __future__ import annotations

import itertools
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import disks
from disks.hostfile import HostFile

SECTOR = 512
PAGE = 4096
TMPFS = "/dev/shm"
KiB = 1024
MiB = 1024 * KiB


# --- recording -------------------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    """One recorded call: ``write`` (offset, data), ``truncate`` (size) or ``sync``."""

    kind: str
    name: str            # file name inside the recorded folder
    offset: int = 0      # write offset, or truncate size
    data: bytes = b""


class Recorder:
    """Patches HostFile so every write/resize/fsync of a file under ``folder`` is logged."""

    def __init__(self, folder: Path) -> None:
        self.folder = os.path.abspath(folder)
        self.journal: list[Op] = []
        self._saved: dict[str, Any] = {}

    def _name(self, file: HostFile) -> str | None:
        path = os.path.abspath(file.path)
        if os.path.dirname(path) != self.folder:
            return None
        return os.path.basename(path)

    def __enter__(self) -> Recorder:
        recorder = self
        real = {name: getattr(HostFile, name) for name in
                ("pwritev", "truncate", "sync", "copy_range")}
        self._saved = real

        def pwritev(file: HostFile, buffers: Sequence[Any], offset: int) -> None:
            name = recorder._name(file)
            if name is not None:
                data = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)
                recorder.journal.append(Op("write", name, offset, data))
            real["pwritev"](file, buffers, offset)

        def truncate(file: HostFile, size: int) -> None:
            name = recorder._name(file)
            if name is not None:
                recorder.journal.append(Op("truncate", name, size))
            real["truncate"](file, size)

        def sync(file: HostFile) -> None:
            real["sync"](file)
            name = recorder._name(file)
            if name is not None:  # logged once durable: a cut before it loses nothing more
                recorder.journal.append(Op("sync", name))

        def copy_range(file: HostFile, source: HostFile, source_offset: int, length: int,
                       offset: int) -> None:
            data = bytearray(length)
            source.preadinto(memoryview(data), source_offset)
            pwritev(file, [data], offset)

        for name, function in (("pwritev", pwritev), ("truncate", truncate), ("sync", sync),
                               ("copy_range", copy_range)):
            setattr(HostFile, name, function)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, function in self._saved.items():
            setattr(HostFile, name, function)


# --- the workload and the guest model ----------------------------------------------------

@dataclass(frozen=True)
class Variant:
    """One format / subformat / child type under test."""

    name: str
    format: str
    size: int
    unit: int                               # the allocation unit the workload aims at
    options: dict[str, Any] = field(default_factory=dict)
    parent: tuple[str, dict[str, Any]] | None = None   # (format, options) of a parent
    qemu_format: str | None = None          # None: qemu does not read it
    qemu_checks: bool = False               # qemu-img check supports the format


VARIANTS: list[Variant] = [
    Variant("raw", "raw", 4 * MiB, 64 * KiB, qemu_format="raw"),
    Variant("vdi", "vdi", 8 * MiB, MiB, qemu_format="vdi", qemu_checks=True),
    Variant("vdi-static", "vdi", 8 * MiB, MiB, {"static": True}, qemu_format="vdi",
            qemu_checks=True),
    Variant("vdi-child", "vdi", 8 * MiB, MiB, parent=("vdi", {})),
    Variant("vpc-fixed", "vpc", 4 * MiB, 64 * KiB, {"subformat": "fixed"}, qemu_format="vpc"),
    Variant("vpc-dynamic", "vpc", 16 * MiB, 2 * MiB, qemu_format="vpc"),
    Variant("vpc-child", "vpc", 16 * MiB, 2 * MiB, parent=("vpc", {})),  # qemu: no parent
    Variant("vmdk-sparse", "vmdk", 40 * MiB, 64 * KiB, qemu_format="vmdk", qemu_checks=True),
    Variant("vmdk-stream", "vmdk", 40 * MiB, 64 * KiB, {"subformat": "streamOptimized"},
            qemu_format="vmdk", qemu_checks=True),
    Variant("vmdk-2gb-sparse", "vmdk", 40 * MiB, 64 * KiB,
            {"subformat": "twoGbMaxExtentSparse"}, qemu_format="vmdk", qemu_checks=True),
    Variant("vmdk-flat", "vmdk", 4 * MiB, 64 * KiB, {"subformat": "monolithicFlat"},
            qemu_format="vmdk", qemu_checks=True),
    Variant("vmdk-child", "vmdk", 40 * MiB, 64 * KiB, parent=("vmdk", {}),
            qemu_format="vmdk", qemu_checks=True),
    Variant("vhdx-dynamic", "vhdx", 16 * MiB, MiB, {"block_size": "1M"},
            qemu_format="vhdx", qemu_checks=True),
    Variant("vhdx-fixed", "vhdx", 8 * MiB, MiB, {"subformat": "fixed", "block_size": "1M"},
            qemu_format="vhdx", qemu_checks=True),
    Variant("vhdx-child", "vhdx", 16 * MiB, MiB, {"block_size": "1M"},
            parent=("vhdx", {"block_size": "1M"})),  # qemu reads no VHDX children
]
VARIANTS_BY_NAME = {v.name: v for v in VARIANTS}


def pattern(seed: int, length: int) -> bytes:
    """Distinct, recognisable bytes: every 4-byte word names the seed and its position."""
    words = ((seed << 24) ^ i for i in range(-(-length // 4)))
    return b"".join(w.to_bytes(4, "little") for w in words)[:length]


def workload(size: int, u: int) -> list[tuple[str, int, int]]:
    """The requests, as (kind, offset, length): kind write, discard or flush."""
    return [
        ("write", 100, 3000),                  # allocates unit 0, unaligned
        ("flush", 0, 0),
        ("write", 2 * u - SECTOR, 8 * SECTOR),  # straddles units 1 and 2: two allocations
        ("write", 200, 1000),                  # in place, in an allocated unit
        ("flush", 0, 0),
        ("write", size - u + 7 * SECTOR, SECTOR),  # far away (a new table in VMDK)
        ("discard", u, u),                     # the whole unit 1
        ("flush", 0, 0),
        ("write", 3 * u, u),                   # a whole unit
        ("write", 100, 100),                   # in place again; close() flushes it
    ]


@dataclass
class Request:
    offset: int
    data: bytes
    start: int     # journal length when the request began


@dataclass
class Recording:
    """A recorded workload: the folder's files before it, its journal and its model."""

    variant: Variant
    folder: Path
    image_name: str
    base: dict[str, bytes]          # every file of the folder before the workload
    below: bytes                    # what the disk read before the workload
    journal: list[Op]
    requests: list[Request]
    acks: list[tuple[int, int]]     # (journal length when a flush returned, requests done)

    def durable_requests(self, crash: int) -> int:
        """How many requests a completed flush acknowledged before journal index ``crash``."""
        return max([done for at, done in self.acks if at <= crash], default=0)


def record(variant: Variant, folder: Path) -> Recording:
    """Create the variant's image(s) in ``folder`` and run the workload under a Recorder."""
    folder.mkdir(parents=True, exist_ok=True)
    image_path = folder / f"disk.{variant.format}"
    if variant.parent is not None:
        parent_format, parent_options = variant.parent
        parent_path = folder / f"base.{parent_format}"
        with disks.create(parent_path, parent_format, variant.size, **parent_options) as parent:
            parent.write(0, pattern(99, variant.size))
        disks.create(image_path, variant.format, backing=parent_path,
                     **variant.options).close()
    else:
        disks.create(image_path, variant.format, variant.size, **variant.options).close()
    with disks.open(image_path, readonly=True) as image:
        below = image.read(0, image.size)
    base = {p.name: p.read_bytes() for p in folder.iterdir()}
    requests: list[Request] = []
    acks: list[tuple[int, int]] = []
    with Recorder(folder) as recorder:
        image = disks.open(image_path)
        for seq, (kind, offset, length) in enumerate(workload(variant.size, variant.unit)):
            start = len(recorder.journal)
            if kind == "flush":
                image.flush()
                acks.append((len(recorder.journal), len(requests)))
            elif kind == "write":
                data = pattern(seq + 1, length)
                image.write(offset, data)
                requests.append(Request(offset, data, start))
            else:
                image.discard(offset, length)
                requests.append(Request(offset, bytes(length), start))
        image.close()
        acks.append((len(recorder.journal), len(requests)))
    return Recording(variant, folder, image_path.name, base, below, recorder.journal,
                     requests, acks)


# --- crash states ------------------------------------------------------------------------

@dataclass(frozen=True)
class CrashState:
    """The ops a crash left on disk (applied in journal order) and where it struck."""

    model: str
    label: str
    ops: tuple[Op, ...]
    crash: int      # journal index of the crash: flushes that returned before it count


def prefix_states(rec: Recording) -> Iterator[CrashState]:
    """A cut after every call."""
    for count in range(len(rec.journal) + 1):
        yield CrashState("prefix", f"after {count}", tuple(rec.journal[:count]), count)


def torn_states(rec: Recording, per_write: int | None) -> Iterator[CrashState]:
    """Every write of two or more host sectors, cut at sector boundaries inside it: the
    head persisted, or the tail.  ``per_write`` bounds the boundaries tried per write
    (first, last and an even spread); None tries them all."""
    sizes = {name: len(data) for name, data in rec.base.items()}
    for index, op in enumerate(rec.journal):
        size = sizes.get(op.name, 0)
        if op.kind == "truncate":
            sizes[op.name] = op.offset
        if op.kind != "write":
            continue
        end = op.offset + len(op.data)
        sizes[op.name] = max(size, end)
        unit = PAGE if end > size else SECTOR
        first = (op.offset // unit + 1) * unit
        bounds = list(range(first, end, unit))
        if per_write is not None and len(bounds) > per_write:
            step = (len(bounds) - 1) / (per_write - 1)
            bounds = sorted({bounds[round(i * step)] for i in range(per_write)})
        done = tuple(rec.journal[:index])
        for bound in bounds:
            cut = bound - op.offset
            head = Op("write", op.name, op.offset, op.data[:cut])
            tail = Op("write", op.name, bound, op.data[cut:])
            yield CrashState("torn", f"op {index} head {cut}", done + (head,), index)
            yield CrashState("torn", f"op {index} tail {cut}", done + (tail,), index)


def reorder_states(rec: Recording, enumerate_up_to: int, samples: int,
                   seed: int = 1) -> Iterator[CrashState]:
    """Before every fsync (and at the end): each file's ops up to its last fsync, plus
    every subset of the later ones (a seeded sample of ``samples`` when there are more
    than ``enumerate_up_to``)."""
    rng = random.Random(seed)
    points = [i for i, op in enumerate(rec.journal) if op.kind == "sync"] + [len(rec.journal)]
    for crash in points:
        ops = rec.journal[:crash]
        last_sync = {op.name: i for i, op in enumerate(ops) if op.kind == "sync"}
        pending = [i for i, op in enumerate(ops)
                   if op.kind != "sync" and i > last_sync.get(op.name, -1)]
        durable = [i for i, op in enumerate(ops)
                   if op.kind != "sync" and i <= last_sync.get(op.name, -1)]
        if len(pending) <= 1:
            continue  # nothing to reorder: the prefix model has these
        if len(pending) <= enumerate_up_to:
            subsets: Iterator[tuple[int, ...]] = itertools.chain.from_iterable(
                itertools.combinations(pending, k) for k in range(len(pending) + 1))
        else:
            picks = {tuple(pending), ()}
            picks |= {tuple(i for i in pending if i != skip) for skip in pending}
            while len(picks) < samples:
                picks.add(tuple(i for i in pending if rng.random() < 0.5))
            subsets = iter(sorted(picks))
        for subset in subsets:
            kept = sorted(durable + list(subset))
            label = f"before {crash} keep {len(subset)}/{len(pending)}"
            yield CrashState("reorder", label, tuple(ops[i] for i in kept), crash)


# --- checking ----------------------------------------------------------------------------

def materialize(rec: Recording, state: CrashState, out: Path) -> None:
    """Write the folder as ``state`` leaves it into ``out`` (same file names)."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    contents = {name: bytearray(data) for name, data in rec.base.items()}
    for op in state.ops:
        content = contents.setdefault(op.name, bytearray())
        if op.kind == "write":
            end = op.offset + len(op.data)
            if len(content) < end:
                content.extend(bytes(end - len(content)))
            content[op.offset:end] = op.data
        elif op.kind == "truncate":
            if op.offset < len(content):
                del content[op.offset:]
            else:
                content.extend(bytes(op.offset - len(content)))
    for name, content in contents.items():
        _write_sparse(out / name, content)


def _write_sparse(path: Path, content: bytearray) -> None:
    chunk = 64 * KiB
    zero = bytes(chunk)
    with open(path, "wb") as f:
        view = memoryview(content)
        for at in range(0, len(content), chunk):
            piece = view[at:at + chunk]
            if piece != zero[:len(piece)]:
                f.seek(at)
                f.write(piece)
        f.truncate(len(content))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed")
    return path


def _qemu_img(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_tool("qemu-img"), *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def check_state(rec: Recording, state: CrashState, folder: Path, *,
                qemu: bool = True) -> list[str]:
    """Everything wrong with one crash state (empty: it is sound)."""
    materialize(rec, state, folder)
    path = folder / rec.image_name
    problems: list[str] = []
    try:
        with disks.open(path, readonly=True) as image:
            report = image.check()
            content = image.read(0, image.size)
    except disks.ImageError as exc:
        return [f"emu cannot open: {exc}"]
    corruptions = [c for c in report.corruptions if not _recoverable(c)]
    if corruptions:
        problems.append(f"emu check: {corruptions[:3]}")
    problems += _content_problems(rec, state, content)
    orphans = False
    if qemu and rec.variant.qemu_format is not None:
        found = _qemu_problems(rec, path, content)
        orphans = bool(found) and all(_vdi_orphan_slots(p) for p in found)
        if not orphans:
            problems += found
    try:  # what the next run does: open for writing, replay/repair, close
        disks.open(path).close()
        with disks.open(path, readonly=True) as image:
            report = image.check()
            again = image.read(0, image.size)
    except disks.ImageError as exc:
        return [*problems, f"emu read-write open: {exc}"]
    if report.corruptions:
        problems.append(f"emu check after a read-write open: {report.corruptions[:3]}")
    if again != content:
        problems.append("a read-write open and close changed the contents")
    if orphans:  # emu's read-write open trimmed the count: QEMU must agree now
        problems += _qemu_problems(rec, path, content)
    return problems


def _recoverable(corruption: str) -> bool:
    """A state emu's check reports that the next read-write open recovers by design:
    a VHDX log not yet replayed (the log exists for exactly that)."""
    return "not yet replayed" in corruption


def _vdi_orphan_slots(problem: str) -> bool:
    """QEMU's VDI check calls every difference between the header's blocks_allocated
    and the slots the map uses an error.  A count AHEAD of the map is a reservation a
    crash kept before the map entries (orphan slots: a leak, QEMU's next allocation
    takes a fresh slot); VDI keeps the two in different sectors, so no write order
    avoids that moment.  A count behind the map is a real error and is not excused."""
    import re
    lines = [line for line in problem.split("\n") if line.startswith("ERROR")]
    if not problem.startswith("qemu-img check exit 2") or not lines:
        return False
    for line in lines:
        match = re.fullmatch(r"ERROR: allocated blocks mismatch, is (\d+), should be (\d+)",
                             line.strip())
        if match is None or int(match[1]) >= int(match[2]):
            return False
    return True


def _qemu_problems(rec: Recording, path: Path, content: bytes) -> list[str]:
    fmt = rec.variant.qemu_format
    assert fmt is not None
    problems: list[str] = []
    target = path
    if fmt == "vhdx":  # an unreplayed log: qemu replays it (check -r) on a copy
        info = _qemu_img("info", "-f", fmt, path)
        if info.returncode != 0 and "log" in info.stderr.lower():
            target = path.with_name("qemu-replayed." + fmt)
            shutil.copyfile(path, target)
            fixed = _qemu_img("check", "-r", "all", "-f", fmt, target)
            if fixed.returncode not in (0, 3):
                problems.append(f"qemu-img check -r all exit {fixed.returncode}: "
                                f"{(fixed.stdout + fixed.stderr).strip()[:200]}")
    if rec.variant.qemu_checks:
        checked = _qemu_img("check", "-f", fmt, target)
        if checked.returncode not in (0, 3):
            problems.append(f"qemu-img check exit {checked.returncode}: "
                            f"{(checked.stdout + checked.stderr).strip()[:300]}")
    raw = path.with_name("qemu.raw")
    converted = _qemu_img("convert", "-f", fmt, "-O", "raw", target, raw)
    if converted.returncode != 0:
        problems.append(f"qemu-img convert exit {converted.returncode}: "
                        f"{converted.stderr.strip()[:200]}")
    elif raw.read_bytes() != content:
        problems.append("qemu reads other contents than emu")
    for extra in (raw, path.with_name("qemu-replayed." + fmt)):
        extra.unlink(missing_ok=True)
    return problems


def _content_problems(rec: Recording, state: CrashState, content: bytes) -> list[str]:
    """Every sector reads as the acknowledged contents or as after some later request;
    failing that, every byte of it is the acknowledged one or one a later request wrote
    there (two sub-sector writes persisted out of order).  Nothing else."""
    durable = rec.durable_requests(state.crash)
    model = bytearray(rec.below)
    for request in rec.requests[:durable]:
        model[request.offset:request.offset + len(request.data)] = request.data
    if content == model:
        return []
    later = [r for r in rec.requests[durable:] if r.start <= state.crash]
    states = [bytes(model)]
    for request in later:
        model[request.offset:request.offset + len(request.data)] = request.data
        states.append(bytes(model))
    problems = []
    for at in range(0, len(content), SECTOR):
        sector = content[at:at + SECTOR]
        if any(sector == s[at:at + SECTOR] for s in states):
            continue
        for i in range(at, at + len(sector)):
            if content[i] != states[0][i] and not any(
                    r.offset <= i < r.offset + len(r.data) and r.data[i - r.offset] == content[i]
                    for r in later):
                problems.append(f"byte {i} reads neither acknowledged nor later data")
                break
        if len(problems) >= 3:
            break
    return problems


# --- running -----------------------------------------------------------------------------

MODELS: dict[str, Callable[[Recording, bool], Iterator[CrashState]]] = {
    "prefix": lambda rec, full: prefix_states(rec),
    "torn": lambda rec, full: torn_states(rec, None if full else 2),
    "reorder": lambda rec, full: reorder_states(rec, 10 if full else 5,
                                                2000 if full else 16),
}


def run_variant(variant: Variant, work: Path, *, full: bool = False,
                models: Sequence[str] = tuple(MODELS), qemu: bool = True,
                qemu_every: int = 1) -> dict[str, tuple[int, list[str]]]:
    """Record the workload on ``variant`` and check every crash state of ``models``.

    Returns, per model, the number of states tried and the failures found.
    ``qemu_every`` runs the qemu oracle on every n-th state of a model only.
    """
    with _scratch(work) as scratch:
        return _run(variant, scratch, full=full, models=models, qemu=qemu,
                    qemu_every=qemu_every)


@contextmanager
def _scratch(work: Path) -> Iterator[Path]:
    """A folder in memory (tmpfs) when the host has one: the states are rewritten and
    fsynced hundreds of times, which on a disk costs more than all the checking."""
    if os.path.isdir(TMPFS) and os.access(TMPFS, os.W_OK):
        folder = Path(tempfile.mkdtemp(prefix="emu-crash-", dir=TMPFS))
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    else:
        yield work


def _run(variant: Variant, work: Path, *, full: bool, models: Sequence[str], qemu: bool,
         qemu_every: int) -> dict[str, tuple[int, list[str]]]:
    rec = record(variant, work / "recorded")
    results: dict[str, tuple[int, list[str]]] = {}
    seen: set[tuple[tuple[str, int, int, int], ...]] = set()
    for model in models:
        tried = 0
        failures: list[str] = []
        for state in MODELS[model](rec, full):
            key = tuple((op.name, op.offset, len(op.data), hash(op.data)) for op in state.ops
                        if op.kind != "sync")
            if key in seen and model != "prefix":
                continue  # the same bytes on disk as a state already checked
            seen.add(key)
            problems = check_state(rec, state, work / "state",
                                   qemu=qemu and tried % qemu_every == 0)
            tried += 1
            if problems:
                text = "; ".join(problems).replace("\n", " ")
                failures.append(f"{variant.name} {model} {state.label}: {text}")
        results[model] = (tried, failures)
    return results


def main(argv: list[str]) -> int:
    full = "--full" in argv
    names = [a for a in argv if not a.startswith("--")] or list(VARIANTS_BY_NAME)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="emu-crash-") as tmp:
        for name in names:
            results = run_variant(VARIANTS_BY_NAME[name], Path(tmp) / name, full=full)
            for model, (tried, failures) in results.items():
                print(f"{name:18} {model:8} {tried:6} states  {len(failures)} failures")
                for failure in failures[:5]:
                    print("   ", failure)
                failed += len(failures)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main(sys.argv[1:]))
