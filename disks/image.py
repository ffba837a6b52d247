"""The image interface every format honours, and the generic machinery behind it.

Theory of operation
-------------------
A format driver is a subclass of :class:`Image`.  It describes its layout to the
core through one primitive, :meth:`Image._map`, which splits a guest byte range
into :class:`Run` objects: *data* at a host offset in this file, *zero*, or
*unallocated* (the image does not hold it: the backing chain answers, or zeros
when there is no parent).  Everything else is generic and lives here once:

* ``read``/``readinto`` coalesce adjacent data runs whose host offsets are
  contiguous into one ``preadv``, fill zero runs, and descend into the parent for
  unallocated runs;
* ``write`` coalesces data runs the same way and hands every other run to the
  driver's :meth:`Image._write_unallocated`, which allocates (in the order that
  survives a crash) and writes;
* ``map`` merges runs into extents and follows the chain to say which layer
  holds each byte;
* backing chains: a driver names its parent with a :class:`BackingSpec`; the
  core opens it read-only, refuses cycles and over-deep chains, and lets the
  driver cross-check the parent (UUID, timestamp, CID) before use.

Drivers special to one format (compressed grains, in-memory log replay) mark a
run ``special`` and serve it in :meth:`Image._read_special`.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import (
    ImageError,
    InvalidOptionError,
    MissingBackingError,
    OutOfRangeError,
    ReadOnlyImageError,
)
from .hostfile import HostFile, zero_fill

MAX_CHAIN_DEPTH = 64


class RunKind(enum.Enum):
    DATA = "data"
    ZERO = "zero"
    UNALLOCATED = "unallocated"


@dataclass(frozen=True, slots=True)
class Run:
    """A piece of a guest range as one image layer stores it."""

    offset: int
    length: int
    kind: RunKind
    host_offset: int | None = None
    special: bool = False  # served by the driver's _read_special (e.g. compressed)


@dataclass(frozen=True, slots=True)
class Extent:
    """A stretch of the virtual disk as ``map()`` reports it across the whole chain."""

    offset: int
    length: int
    kind: RunKind
    depth: int  # 0 = this image, 1 = its parent, ...
    host_offset: int | None = None
    filename: str | None = None


@dataclass(frozen=True, slots=True)
class Geometry:
    cylinders: int
    heads: int
    sectors: int

    @property
    def sector_count(self) -> int:
        return self.cylinders * self.heads * self.sectors


@dataclass
class CheckReport:
    """What ``check()`` found: corruptions make an image unsafe, leaks only waste space."""

    filename: str
    format: str
    corruptions: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # states that are neither (a log to replay)

    @property
    def clean(self) -> bool:
        return not self.corruptions and not self.leaks

    def note(self, message: str) -> None:
        self.notes.append(message)

    def corrupt(self, message: str) -> None:
        self.corruptions.append(message)

    def leak(self, message: str) -> None:
        self.leaks.append(message)


@dataclass(frozen=True)
class BackingSpec:
    """How a differencing image names its parent.

    ``filename`` is the stored reference (already resolved to a host path by the
    driver where it can), ``candidates`` further paths to try in order, and
    ``validate`` raises :class:`BackingChainError` when an opened parent is not the
    one this child was made from.
    """

    filename: str | None
    format: str | None = None
    candidates: tuple[str, ...] = ()
    validate: Callable[[Image], None] | None = None
    display_name: str | None = None  # what info() shows as backing-filename


@dataclass(frozen=True)
class OptionSpec:
    """One create option: its parser and a line of help."""

    parse: Callable[[Any], Any]
    help: str
    default: Any = None


def parse_size(value: Any) -> int:
    """Accept ints and qemu-style sizes: 512, 64K, 1M, 2G, 1T, 1.5G, 10b."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"negative size: {value}")
        return value
    text = str(value).strip()
    units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
             "P": 1 << 50, "E": 1 << 60}
    suffix = text[-1:].upper() if text[-1:].isalpha() else ""
    number = text[:-1] if suffix else text
    if suffix.endswith("B") and len(text) > 1 and text[-2:-1].isalpha():
        suffix, number = text[-2:-1].upper(), text[:-2]
    try:
        scaled = float(number) * units[suffix] if "." in number else int(number) * units[suffix]
    except (ValueError, KeyError):
        raise ValueError(f"not a size: {value!r}") from None
    if scaled < 0 or int(scaled) != scaled:
        raise ValueError(f"not a whole number of bytes: {value!r}")
    return int(scaled)


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise ValueError(f"not on/off: {value!r}")


def choice(*names: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if str(value) not in names:
            raise ValueError(f"{value!r} is not one of {', '.join(names)}")
        return str(value)
    return parse


@dataclass(frozen=True)
class ProbeInput:
    """What a driver may look at to recognise its format."""

    path: str
    head: bytes  # the first PROBE_HEAD bytes (fewer for small files)
    tail: bytes  # the last 512 bytes (fewer for small files)
    size: int


class Image:
    """An open virtual disk.  Subclasses are format drivers (see module docstring)."""

    # --- filled in by each driver ----------------------------------------
    format_name: ClassVar[str] = ""
    aliases: ClassVar[tuple[str, ...]] = ()
    create_options: ClassVar[dict[str, OptionSpec]] = {}
    supports_backing: ClassVar[bool] = False

    size: int
    sector_size: int = 512
    geometry: Geometry | None = None
    backing: Image | None = None
    backing_spec: BackingSpec | None = None
    _change_depth: int = 0

    def __init__(self, file: HostFile, *, readonly: bool) -> None:
        self.file = file
        self.path = file.path
        self.readonly = readonly
        self.closed = False

    # --- driver hooks ------------------------------------------------------
    @classmethod
    def probe(cls, data: ProbeInput) -> int:
        """Score 0..100 for how surely ``data`` is this format."""
        return 0

    @classmethod
    def create_file(cls, file: HostFile, size: int, options: dict[str, Any],
                    backing: Image | None) -> None:
        """Lay out a new, empty image of ``size`` bytes in ``file``."""
        raise InvalidOptionError(file.path, f"creating {cls.format_name} images is not supported")

    @classmethod
    def open_file(cls, file: HostFile, *, readonly: bool, options: dict[str, Any]) -> Image:
        """Parse and validate the image in ``file``; set ``backing_spec`` when it has a parent."""
        raise NotImplementedError

    def _map(self, offset: int, length: int) -> Iterable[Run]:
        """Split ``[offset, offset+length)`` into consecutive runs (see module docstring)."""
        raise NotImplementedError

    def _block_status(self, offset: int, length: int) -> Iterable[Run]:
        """Runs as ``map()`` reports them; may be more precise (and slower) than ``_map``."""
        return self._map(offset, length)

    def _read_special(self, run: Run, out: memoryview) -> None:
        raise NotImplementedError

    def _write_unallocated(self, run: Run, data: memoryview) -> None:
        """Store ``data`` over a zero or unallocated run: allocate, write, publish."""
        raise ReadOnlyImageError(self.path, f"{self.format_name} driver cannot allocate")

    def _discard(self, offset: int, length: int) -> None:
        """Default discard: the range reads as zeros afterwards."""
        self.write_zeroes(offset, length)

    def _begin_change(self, offset: int, length: int) -> None:
        """Called once before each public change (write, write_zeroes, discard,
        copy_from_host) of a non-empty range: a driver's first-write duties (a new CID,
        new write GUIDs) and access checks go here."""

    def _end_change(self) -> None:
        """Called after each public change, also one that failed: publish what the
        request allocated (bitmaps, table entries) after its data."""

    def _flush_metadata(self) -> None:
        """Write out any cached metadata (before the fsync of ``flush``)."""

    def _check(self, report: CheckReport, repair: bool) -> None:
        """Add what is wrong with the image to ``report``."""

    def _info(self) -> dict[str, Any]:
        """Format-specific facts for ``info()``."""
        return {}

    def _close(self) -> None:
        """Release driver resources (after the final flush)."""

    def allocation_unit(self) -> int:
        """Bytes the driver allocates at once (cluster/block/grain size)."""
        return 1 << 20

    def cluster_size(self) -> int | None:
        """The format's cluster/block size as ``qemu-img info`` shows it (None: no such)."""
        return None

    # --- public interface ---------------------------------------------------
    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r} size={self.size}>"

    def _check_range(self, offset: int, length: int) -> None:
        if self.closed:
            raise ImageError(self.path, "image is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OutOfRangeError(
                self.path, f"range {offset}+{length} is outside the {self.size}-byte disk")

    def _check_writable(self) -> None:
        if self.readonly:
            raise ReadOnlyImageError(self.path, "image is open read-only")

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.readinto(offset, buf)
        return bytes(buf)

    def readinto(self, offset: int, buffer: bytearray | memoryview) -> int:
        """Fill ``buffer`` with the disk's bytes from ``offset``; returns its length."""
        view = memoryview(buffer).cast("B")
        self._check_range(offset, len(view))
        self._read_into(offset, view)
        return len(view)

    def _read_into(self, offset: int, view: memoryview) -> None:
        pending_host = pending_start = pending_len = 0
        for run in self._map(offset, len(view)):
            rel = run.offset - offset
            piece = view[rel:rel + run.length]
            if run.kind is RunKind.DATA and not run.special:
                assert run.host_offset is not None
                if pending_len and pending_host + pending_len == run.host_offset \
                        and pending_start + pending_len == rel:
                    pending_len += run.length
                    continue
                if pending_len:
                    self.file.preadinto(view[pending_start:pending_start + pending_len],
                                        pending_host)
                pending_host, pending_start, pending_len = run.host_offset, rel, run.length
                continue
            if run.kind is RunKind.ZERO:
                zero_fill(piece)
            elif run.kind is RunKind.UNALLOCATED:
                self._read_below(run.offset, piece)
            else:
                self._read_special(run, piece)
        if pending_len:
            self.file.preadinto(view[pending_start:pending_start + pending_len], pending_host)

    def _read_below(self, offset: int, out: memoryview) -> None:
        """Read what lies under this layer: the parent's bytes, or zeros."""
        parent = self.backing
        if parent is None or offset >= parent.size:
            zero_fill(out)
            return
        inside = min(len(out), parent.size - offset)
        parent._read_into(offset, out[:inside])
        if inside < len(out):
            zero_fill(out[inside:])

    @contextmanager
    def _changing(self, offset: int, length: int) -> Iterator[None]:
        """Frame one public change: checks, then the driver's begin/end hooks, once
        even when a change is made of others (a discard that writes zeros)."""
        self._check_writable()
        self._check_range(offset, length)
        if self._change_depth or not length:
            self._change_depth += 1
            try:
                yield
            finally:
                self._change_depth -= 1
            return
        self._begin_change(offset, length)
        self._change_depth += 1
        try:
            yield
        finally:
            self._change_depth -= 1
            self._end_change()

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        with self._changing(offset, len(view)):
            if len(view):
                self._write_from(offset, view)

    def _write_from(self, offset: int, view: memoryview) -> None:
        pending: list[memoryview] = []
        pending_host = pending_len = 0
        for run in list(self._map(offset, len(view))):
            rel = run.offset - offset
            piece = view[rel:rel + run.length]
            if run.kind is RunKind.DATA and not run.special:
                assert run.host_offset is not None
                if pending and pending_host + pending_len == run.host_offset:
                    pending.append(piece)
                    pending_len += run.length
                    continue
                if pending:
                    self.file.pwritev(pending, pending_host)
                pending, pending_host, pending_len = [piece], run.host_offset, run.length
                continue
            if pending:
                self.file.pwritev(pending, pending_host)
                pending, pending_len = [], 0
            self._write_unallocated(run, piece)
        if pending:
            self.file.pwritev(pending, pending_host)

    def host_range(self, offset: int, length: int) -> int | None:
        """Host offset of ``[offset, offset+length)`` when this image's own file holds it
        as one contiguous stretch of plain data; None otherwise."""
        self._check_range(offset, length)
        start: int | None = None
        expected = 0
        for run in self._map(offset, length):
            if run.kind is not RunKind.DATA or run.special or run.host_offset is None:
                return None
            if start is None:
                start, expected = run.host_offset, run.host_offset
            if run.host_offset != expected:
                return None
            expected += run.length
        return start

    def copy_from_host(self, offset: int, length: int, source: HostFile,
                       source_offset: int) -> None:
        """Write the ``length`` bytes at ``source_offset`` of ``source`` to ``offset``.

        Same result as ``write(offset, source.pread(...))``, but ranges this image
        already holds as plain data (and, where the driver can, fresh allocations) are
        copied in the kernel without passing through Python.  Used by convert.
        """
        with self._changing(offset, length):
            if type(self)._write_from is not Image._write_from:
                # the driver has its own write path (a log, a stream): feed it a buffer
                data = bytearray(length)
                source.preadinto(memoryview(data), source_offset)
                self._write_from(offset, memoryview(data))
                return
            for run in list(self._map(offset, length)):
                rel = run.offset - offset
                if run.kind is RunKind.DATA and not run.special:
                    assert run.host_offset is not None
                    self.file.copy_range(source, source_offset + rel, run.length,
                                         run.host_offset)
                else:
                    self._copy_unallocated(run, source, source_offset + rel)

    def _copy_unallocated(self, run: Run, source: HostFile, source_offset: int) -> None:
        """Store host bytes over a zero or unallocated run (default: through a buffer)."""
        data = bytearray(run.length)
        source.preadinto(memoryview(data), source_offset)
        self._write_unallocated(run, memoryview(data))

    def write_zeroes(self, offset: int, length: int) -> None:
        """Make ``[offset, offset+length)`` read as zeros."""
        with self._changing(offset, length):
            chunk = 1 << 20
            zeros = bytes(min(chunk, length))
            done = 0
            while done < length:
                step = min(chunk, length - done)
                self._write_from(offset + done, memoryview(zeros)[:step])
                done += step

    def discard(self, offset: int, length: int) -> None:
        """Tell the image ``[offset, offset+length)`` is no longer needed; it reads as zeros."""
        with self._changing(offset, length):
            if length:
                self._discard(offset, length)

    def flush(self, *, sync: bool = True) -> None:
        """Make every acknowledged write durable: metadata out, then fsync.

        ``sync=False`` writes the metadata out but leaves durability to the host's
        page cache (qemu-img convert's default ``-t unsafe``).
        """
        if self.readonly or self.closed:
            return
        self._flush_metadata()
        if sync:
            self.file.sync()

    def close(self, *, sync: bool = True) -> None:
        if self.closed:
            return
        try:
            if not self.readonly:
                self.flush(sync=sync)
            self._close()
        finally:
            self.closed = True
            self.file.close()
            if self.backing is not None:
                self.backing.close()

    def map(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        """Yield extents covering the range, saying which chain layer holds each byte."""
        if length is None:
            length = self.size - offset
        self._check_range(offset, length)
        pending: Extent | None = None
        for extent in self._map_chain(offset, length, 0):
            if pending is not None and _extends(pending, extent):
                host = pending.host_offset
                pending = Extent(pending.offset, pending.length + extent.length, pending.kind,
                                 pending.depth, host, pending.filename)
                continue
            if pending is not None:
                yield pending
            pending = extent
        if pending is not None:
            yield pending

    def _map_chain(self, offset: int, length: int, depth: int) -> Iterator[Extent]:
        for run in self._block_status(offset, length):
            if run.kind is RunKind.UNALLOCATED and self.backing is not None:
                parent = self.backing
                inside = max(0, min(run.length, parent.size - run.offset))
                if inside:
                    yield from parent._map_chain(run.offset, inside, depth + 1)
                if inside < run.length:
                    yield Extent(run.offset + inside, run.length - inside, RunKind.ZERO,
                                 depth, None, self.path)
                continue
            host = None if run.special else run.host_offset
            yield Extent(run.offset, run.length, run.kind, depth, host, self.path)

    def check(self, *, repair: bool = False) -> CheckReport:
        """Verify the image's structures; with ``repair`` fix what can be fixed safely."""
        if repair:
            self._check_writable()
        report = CheckReport(self.path, self.format_name)
        self._check(report, repair)
        return report

    def info(self) -> dict[str, Any]:
        """qemu-img-like facts about the image (the keys of ``qemu-img info --output json``)."""
        facts: dict[str, Any] = {
            "filename": self.path,
            "format": self.format_name,
            "virtual-size": self.size,
            "actual-size": _allocated_bytes(self.path),
            "sector-size": self.sector_size,
        }
        cluster = self.cluster_size()
        if cluster is not None:
            facts["cluster-size"] = cluster
        if self.geometry is not None:
            g = self.geometry
            facts["geometry"] = {"cylinders": g.cylinders, "heads": g.heads, "sectors": g.sectors}
        if self.backing_spec is not None:
            spec = self.backing_spec
            facts["backing-filename"] = spec.display_name or spec.filename
            if self.backing is not None:
                facts["full-backing-filename"] = self.backing.path
                facts["backing-filename-format"] = self.backing.format_name
        specific = self._info()
        if specific:
            facts["format-specific"] = {"type": self.format_name, "data": specific}
        return facts

    def files(self) -> list[HostFile]:
        """The host files this image (not its parents) is stored in."""
        return [self.file]

    def chain(self) -> list[Image]:
        """This image followed by its parents, nearest first."""
        out: list[Image] = []
        node: Image | None = self
        while node is not None:
            out.append(node)
            node = node.backing
        return out


def host_data_runs(file: HostFile, offset: int, length: int) -> Iterator[Run]:
    """Runs of a layout where guest offset = host offset (raw, fixed VHD): data where the
    host file system holds data, zero over its holes (SEEK_DATA / SEEK_HOLE)."""
    end = offset + length
    pos = offset
    while pos < end:
        data = file.seek_data(pos)
        if data is None or data >= end:
            yield Run(pos, end - pos, RunKind.ZERO)
            return
        if data > pos:
            yield Run(pos, data - pos, RunKind.ZERO)
        hole = min(file.seek_hole(data), end)
        yield Run(data, hole - data, RunKind.DATA, data)
        pos = hole


def _extends(a: Extent, b: Extent) -> bool:
    if a.kind is not b.kind or a.depth != b.depth or a.filename != b.filename:
        return False
    if a.offset + a.length != b.offset:
        return False
    if a.host_offset is None or b.host_offset is None:
        return a.host_offset is None and b.host_offset is None
    return a.host_offset + a.length == b.host_offset


def _allocated_bytes(path: str) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


def _identity(path: str) -> tuple[int, int] | str:
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except OSError:
        return os.path.realpath(path)


__all__ = [
    "BackingSpec", "CheckReport", "Extent", "Geometry", "Image", "MissingBackingError",
    "OptionSpec", "ProbeInput", "Run", "RunKind", "choice", "host_data_runs", "parse_bool",
    "parse_size",
]
