"""VMware virtual disks (VMDK): descriptors, flat, sparse, stream-optimized and COWD extents.

Theory of operation
-------------------
A VMDK disk is a *descriptor* (a small text file, or text embedded in a sparse
extent) listing *extents* that lie back to back in the virtual disk (VMware's
"Virtual Disk Format 1.1", section 2).  Each extent line says its access (RW,
RDONLY, NOACCESS), its length in sectors, its kind and, but for ZERO extents, a
file name (plus a start sector for FLAT extents).  The kinds are:

* FLAT / VMFS: the bytes lie in the named file from a sector offset on;
* ZERO: reads as zeros, takes no file (it still takes its place in the disk);
* SPARSE: a hosted sparse extent ("KDMV" header, section 3): a grain directory
  (GD) of uint32 sector numbers of grain tables (GTs), each GT holding
  ``numGTEsPerGT`` uint32 sector numbers of grains.  GTE 0 is "not here" (the
  parent answers), GTE 1 a zeroed grain (written only when the header has the
  zeroed-grain flag).  A redundant GD/GT set (RGD) mirrors the first and is kept
  in step;
* SPARSE with the compressed + markers flags: streamOptimized (section 4).
  Grains are deflate streams behind a 12-byte grain marker (lba, size); GTs and
  the GD sit behind 512-byte markers, usually at the end, with a footer (a copy
  of the header whose ``gdOffset`` is filled in) and an end-of-stream marker;
  the header's ``gdOffset`` is then ``GD_AT_END``;
* VMFSSPARSE, and the older VMDK3 files: a "COWD" sparse extent with its own
  2048-byte header and 4096-entry grain tables.

The driver turns the extent list into the core's runs: data in *this* file maps
to plain data runs (the core reads and writes those itself, coalescing grains
that are contiguous on the host); data in another file or compressed is a
``special`` run the driver serves.  Writes that need allocation land in
:meth:`VmdkImage._write_unallocated`: a grain is written at the end of the file
first, with a new GT pair where the GD entry was empty and the redundant GT and GD
entries; the primary GT and GD entries follow at the next flush, after a barrier
(fsync; the in-memory tables serve reads meanwhile and are never evicted).  A
crash, whatever subset of those writes it keeps, therefore leaks space (or leaves
the redundant copy ahead, which ``check()`` reports as a leak) but never
publishes a pointer to unwritten data.
Grain entries that point into the metadata area are refused, never written
through.  Stream-optimized extents open for writing only append compressed
grains, where the footer was, after a copy of the footer has been made durable
past them; a flush appends the tables and a directory the same way and then
points the footer at them (see "stream-optimized writing" below).  A stream
without a footer is read by walking its markers.

Descriptor text is kept line by line: keys we change (CID, parentCID) are
rewritten in place, unknown keys and comments survive.  The CID changes once per
writable open, on the first write, when hosted sparse headers also get their
``uncleanShutdown`` byte set (cleared at a clean close, as VMware does).
Extent and parent file names are resolved in the descriptor's folder; the core's
path policy (:mod:`disks.paths`) decides whether they may be opened.
"""

from __future__ import annotations

import os
import random
import re
import stat
import struct
import sys
import zlib
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import (
    BackingChainError,
    CorruptImageError,
    ImageError,
    InvalidOptionError,
    ReadOnlyImageError,
    UnsupportedImageError,
)
from .hostfile import HostFile, is_zero
from .image import (
    BackingSpec,
    CheckReport,
    Geometry,
    Image,
    OptionSpec,
    ProbeInput,
    Run,
    RunKind,
    choice,
    parse_bool,
)
from .registry import register

SECTOR = 512
KDMV_MAGIC = b"KDMV"
COWD_MAGIC = b"COWD"
SESPARSE_MAGIC = struct.pack("<Q", 0xCAFEBABE)   # ESXi 6.5+ seSparse extent, constant header
GD_AT_END = 0xFFFFFFFFFFFFFFFF
NO_PARENT_CID = 0xFFFFFFFF
GTE_ZEROED = 1  # a GT entry meaning "this grain reads as zeros" (with FLAG_ZEROED_GTE)

# Sparse extent header flags (spec section 3, "flags").
FLAG_VALID_NEWLINE = 1 << 0
FLAG_REDUNDANT_GT = 1 << 1
FLAG_ZEROED_GTE = 1 << 2
FLAG_COMPRESSED = 1 << 16
FLAG_MARKERS = 1 << 17
KNOWN_FLAGS = (FLAG_VALID_NEWLINE | FLAG_REDUNDANT_GT | FLAG_ZEROED_GTE | FLAG_COMPRESSED
               | FLAG_MARKERS)
COMPRESS_NONE = 0
COMPRESS_DEFLATE = 1

# Stream-optimized marker types (spec section 4).
MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3
STREAM_TAIL = 3 * 512   # footer marker, footer, end-of-stream marker
PAGE = 4096             # a stream's tail never straddles one of these
STREAM_RESERVE = 1 << 20   # room for grains kept before a stream's tail

# Sanity limits, checked before anything is allocated from a header.
MAX_GRAIN_SECTORS = 1 << 17            # 64 MiB grains (VMware uses 64 KiB)
MAX_GTES_PER_GT = 1 << 14
MAX_DESCRIPTOR_BYTES = 1 << 20
MAX_CAPACITY_SECTORS = 1 << 42         # 2 PiB
MAX_EXTENTS = 4096
GT_CACHE_TABLES = 256                  # bounded LRU of grain tables per extent
DEFAULT_GRAIN_SECTORS = 128            # 64 KiB, as VMware and qemu-img create
DEFAULT_GTES_PER_GT = 512
DEFAULT_DESCRIPTOR_SECTORS = 20
TWO_GB_EXTENT_BYTES = 2047 << 20       # largest piece of a twoGbMaxExtent* disk
COWD_GTES_PER_GT = 4096
COWD_HEADER_BYTES = 2048
STREAM_COMPRESS_LEVEL = 6
STREAM_READ_WINDOW = 1 << 20           # bytes read at once when inflating stream grains
CHECK_READ = 4 << 20                   # bytes of grain tables check() reads at once
_LITTLE = sys.byteorder == "little"

# The "KDMV" hosted sparse extent header (spec section 3, SparseExtentHeader).
SPARSE_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
UNCLEAN_SHUTDOWN_OFFSET = struct.calcsize("<4sIIQQQQIQQQ")
# A stream marker: value (numSectors or lba), size, type; grain markers stop after size.
MARKER = struct.Struct("<QII")
GRAIN_MARKER = struct.Struct("<QI")
# The "COWD" header (ESX sparse extent / VMDK3), fixed part; the rest is names and padding.
COWD_HEADER = struct.Struct("<4sIIIIIII")
COWD_ROOT_GEOMETRY = struct.Struct("<III")
COWD_UNCLEAN_OFFSET = 32 + 1028 + 4 + 60 + 512 + 4 + 8


def _u32_table(data: bytes | bytearray, count: int) -> array[int]:
    table = array("I")
    table.frombytes(bytes(data[:count * 4]).ljust(count * 4, b"\0"))
    if not _LITTLE:
        table.byteswap()
    return table


def _table_bytes(table: array[int]) -> bytes:
    if _LITTLE:
        return table.tobytes()
    copy = array("I", table)
    copy.byteswap()
    return copy.tobytes()


IOV_BATCH = 512  # buffers per pwritev (well under the kernel's IOV_MAX of 1024)


def _pwritev(file: HostFile, buffers: list[Any], offset: int) -> None:
    """``file.pwritev`` for any number of buffers."""
    for first in range(0, len(buffers), IOV_BATCH):
        batch = buffers[first:first + IOV_BATCH]
        file.pwritev(batch, offset)
        offset += sum(len(b) for b in batch)


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _ceil_div(value: int, unit: int) -> int:
    return -(-value // unit)


# ---------------------------------------------------------------------------
# Descriptor
# ---------------------------------------------------------------------------

ACCESS_MODES = ("RW", "RDONLY", "NOACCESS")
EXTENT_TYPES = ("FLAT", "SPARSE", "ZERO", "VMFS", "VMFSSPARSE", "VMFSRDM", "VMFSRAW")
_EXTENT_LINE = re.compile(
    r"""^(?P<access>RW|RDONLY|NOACCESS)\s+(?P<sectors>\d{1,20})\s+(?P<type>[A-Za-z]+)
        (?:\s+"(?P<name>[^"]*)"(?:\s+(?P<offset>\d{1,20}))?)?\s*$""", re.X)
_KEY_LINE = re.compile(r"""^(?P<key>[A-Za-z0-9_.]+)\s*=\s*(?P<value>.*?)\s*$""")


@dataclass
class ExtentLine:
    access: str
    sectors: int
    type: str
    filename: str | None = None
    offset: int = 0

    def render(self) -> str:
        if self.filename is None:
            return f"{self.access} {self.sectors} {self.type}"
        text = f'{self.access} {self.sectors} {self.type} "{self.filename}"'
        if self.type == "FLAT" or self.offset:
            text += f" {self.offset}"
        return text


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if value.startswith('"'):
        return value[1:]
    return value


@dataclass
class Descriptor:
    """A descriptor kept as its lines, so unknown keys and comments survive a rewrite."""

    lines: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)   # lower-cased key -> unquoted
    extents: list[ExtentLine] = field(default_factory=list)
    newline: str = "\n"

    @classmethod
    def parse(cls, text: str, path: str) -> Descriptor:
        newline = "\r\n" if "\r\n" in text else "\n"
        desc = cls(newline=newline)
        for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            desc.lines.append(raw)
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            match = _EXTENT_LINE.match(line)
            if match:
                if len(desc.extents) >= MAX_EXTENTS:
                    raise UnsupportedImageError(path, f"more than {MAX_EXTENTS} extents",
                                                field="extent")
                kind = match["type"].upper()
                if kind == "SESPARSE":
                    raise UnsupportedImageError(path, "seSparse extents (ESXi) are not "
                                                "supported", field="extent")
                if kind not in EXTENT_TYPES:
                    raise UnsupportedImageError(path, f"unknown extent type {kind!r}",
                                                field="extent")
                name = match["name"]
                sectors, offset = int(match["sectors"]), int(match["offset"] or 0)
                if sectors > MAX_CAPACITY_SECTORS or offset > MAX_CAPACITY_SECTORS:
                    raise UnsupportedImageError(path, f"extent of {sectors} sectors at sector "
                                                f"{offset} is beyond the {MAX_CAPACITY_SECTORS}"
                                                "-sector limit", field="extent")
                if kind != "ZERO" and name is None:
                    raise CorruptImageError(path, f"extent line without a file name: {line!r}",
                                            field="extent")
                desc.extents.append(ExtentLine(match["access"], sectors, kind, name, offset))
                continue
            match = _KEY_LINE.match(line)
            if match:
                desc.values[match["key"].lower()] = _unquote(match["value"])
        while desc.lines and not desc.lines[-1].strip():
            desc.lines.pop()
        return desc

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key.lower(), default)

    def get_hex(self, key: str, path: str) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        try:
            return int(value, 16) & 0xFFFFFFFF
        except ValueError:
            raise CorruptImageError(path, f"not a hex number: {value!r}", field=key) from None

    def set(self, key: str, value: str, *, quoted: bool = False) -> None:
        """Change ``key`` in place (keeping its line), or add it after the header keys."""
        shown = f'"{value}"' if quoted else value
        self.values[key.lower()] = value
        for index, raw in enumerate(self.lines):
            match = _KEY_LINE.match(raw.strip())
            if match and match["key"].lower() == key.lower():
                spaced = " = " if re.search(r"\s=", raw) else "="
                self.lines[index] = f"{match['key']}{spaced}{shown}"
                return
        anchor = next((i for i, raw in enumerate(self.lines)
                       if raw.strip().lower().startswith("createtype")), len(self.lines) - 1)
        self.lines.insert(anchor + 1, f"{key}={shown}")

    def render(self) -> str:
        return self.newline.join(self.lines) + self.newline


def _new_cid() -> int:
    while True:
        cid = random.getrandbits(32)
        if cid not in (0, NO_PARENT_CID):
            return cid


def _number_text(value: Any) -> str:
    """A decimal number for a descriptor value (nothing that could break the text)."""
    text = str(value).strip()
    if not text.isdigit() or len(text) > 10:
        raise ValueError(f"{value!r} is not a decimal number")
    return text


def render_descriptor(*, cid: int, parent_cid: int, create_type: str,
                      extents: list[ExtentLine], parent_hint: str | None,
                      hwversion: str, geometry: Geometry, adapter: str,
                      tools_version: str) -> str:
    lines = ["# Disk DescriptorFile", "version=1", f"CID={cid:08x}",
             f"parentCID={parent_cid:08x}", f'createType="{create_type}"']
    if parent_hint is not None:
        lines.append(f'parentFileNameHint="{parent_hint}"')
    lines += ["", "# Extent description", *(e.render() for e in extents), "",
              "# The Disk Data Base", "#DDB", "",
              f'ddb.virtualHWVersion = "{hwversion}"',
              f'ddb.geometry.cylinders = "{geometry.cylinders}"',
              f'ddb.geometry.heads = "{geometry.heads}"',
              f'ddb.geometry.sectors = "{geometry.sectors}"',
              f'ddb.adapterType = "{adapter}"',
              f'ddb.toolsVersion = "{tools_version}"']
    return "\n".join(lines) + "\n"


def resolve_path(name: str, folder: str, path: str, *, what: str) -> str:
    """A file named in a descriptor, as a host path (relative names from the descriptor's
    folder).  Whether it may be opened is the core's path policy (:mod:`disks.paths`)."""
    if "\0" in name or not name:
        raise CorruptImageError(path, f"bad {what} name {name!r}", field=what)
    return os.path.normpath(os.path.join(folder, name))


# ---------------------------------------------------------------------------
# On-disk headers
# ---------------------------------------------------------------------------

@dataclass
class SparseHeader:
    """The KDMV header (spec section 3); also the stream footer's payload."""

    version: int = 1
    flags: int = FLAG_VALID_NEWLINE | FLAG_REDUNDANT_GT
    capacity: int = 0              # sectors
    grain_sectors: int = DEFAULT_GRAIN_SECTORS
    descriptor_offset: int = 0     # sectors
    descriptor_sectors: int = 0
    gtes_per_gt: int = DEFAULT_GTES_PER_GT
    rgd_offset: int = 0            # sectors
    gd_offset: int = 0             # sectors, or GD_AT_END
    overhead: int = 0              # sectors
    unclean_shutdown: int = 0
    newline_chars: bytes = b"\n \r\n"
    compress_algorithm: int = COMPRESS_NONE

    @classmethod
    def unpack(cls, data: bytes, path: str) -> SparseHeader:
        if len(data) < SPARSE_HEADER.size:
            raise CorruptImageError(path, "sparse extent header is truncated", field="header")
        (magic, version, flags, capacity, grain, desc_off, desc_size, gtes, rgd, gd, overhead,
         unclean, newline, compress) = SPARSE_HEADER.unpack_from(data)
        if magic != KDMV_MAGIC:
            raise CorruptImageError(path, f"bad magic {magic!r}", field="magicNumber")
        return cls(version, flags, capacity, grain, desc_off, desc_size, gtes, rgd, gd, overhead,
                   unclean, newline, compress)

    def pack(self) -> bytes:
        return SPARSE_HEADER.pack(
            KDMV_MAGIC, self.version, self.flags, self.capacity, self.grain_sectors,
            self.descriptor_offset, self.descriptor_sectors, self.gtes_per_gt, self.rgd_offset,
            self.gd_offset, self.overhead, self.unclean_shutdown, self.newline_chars,
            self.compress_algorithm).ljust(SECTOR, b"\0")

    @property
    def stream(self) -> bool:
        return bool(self.flags & FLAG_COMPRESSED) or bool(self.flags & FLAG_MARKERS)

    @property
    def gd_entries(self) -> int:
        return _ceil_div(self.capacity, self.grain_sectors * self.gtes_per_gt)

    def validate(self, path: str, file_size: int) -> None:
        """Everything a later allocation or seek depends on, before anything is allocated."""
        if self.version not in (1, 2, 3):
            raise UnsupportedImageError(path, f"version {self.version} is not supported",
                                        field="version")
        if self.flags & FLAG_VALID_NEWLINE and self.newline_chars != b"\n \r\n":
            raise CorruptImageError(path, "newline check characters are damaged "
                                    "(file was transferred in text mode?)", field="newlineChars")
        grain = self.grain_sectors
        if grain < 1 or grain > MAX_GRAIN_SECTORS or grain & (grain - 1):
            raise CorruptImageError(path, f"grain size {grain} sectors is not a power of two "
                                    f"up to {MAX_GRAIN_SECTORS}", field="grainSize")
        if not 1 <= self.gtes_per_gt <= MAX_GTES_PER_GT:
            raise CorruptImageError(path, f"{self.gtes_per_gt} entries per grain table",
                                    field="numGTEsPerGT")
        if self.capacity > MAX_CAPACITY_SECTORS:
            raise UnsupportedImageError(path, f"capacity {self.capacity} sectors is too large",
                                        field="capacity")
        if self.stream and self.compress_algorithm not in (COMPRESS_NONE, COMPRESS_DEFLATE):
            raise UnsupportedImageError(path, f"compression {self.compress_algorithm}",
                                        field="compressAlgorithm")
        if self.flags & FLAG_COMPRESSED and self.compress_algorithm != COMPRESS_DEFLATE:
            raise UnsupportedImageError(path, "compressed grains without deflate",
                                        field="compressAlgorithm")
        if self.flags & ~KNOWN_FLAGS:
            raise UnsupportedImageError(path, f"flags {self.flags:#x} hold bits this driver "
                                        f"does not know ({self.flags & ~KNOWN_FLAGS:#x})",
                                        field="flags")
        if self.descriptor_offset:
            end = (self.descriptor_offset + self.descriptor_sectors) * SECTOR
            if self.descriptor_sectors * SECTOR > MAX_DESCRIPTOR_BYTES or end > file_size:
                raise CorruptImageError(path, "embedded descriptor lies outside the file or is "
                                        "too large", field="descriptorSize")
            self._validate_descriptor_area(path)

    def _validate_descriptor_area(self, path: str) -> None:
        """The embedded descriptor is rewritten in place (a new CID on the first write):
        it must lie after the header and before the grain directories and the first
        grain, or that rewrite would wipe tables (spec 3: descriptor, RGD, GD, GTs, then
        grains from ``overHead`` on)."""
        start, end = self.descriptor_offset, self.descriptor_offset + self.descriptor_sectors
        gd_sectors = _ceil_div(self.gd_entries * 4, SECTOR)
        tables = [self.gd_offset]
        if self.flags & FLAG_REDUNDANT_GT:
            tables.append(self.rgd_offset)
        if start < 1:
            raise CorruptImageError(path, "embedded descriptor overlaps the header",
                                    field="descriptorOffset")
        for offset in tables:
            if offset not in (0, GD_AT_END) and offset < end and start < offset + gd_sectors:
                raise CorruptImageError(path, f"embedded descriptor (sectors {start}..{end}) "
                                        f"overlaps the grain directory at sector {offset}",
                                        field="descriptorSize")
        if self.overhead and end > self.overhead:
            raise CorruptImageError(path, f"embedded descriptor (sectors {start}..{end}) runs "
                                    f"past overHead {self.overhead}, where grains start",
                                    field="descriptorSize")


@dataclass
class CowdHeader:
    """The COWD header of ESX sparse extents and VMDK3 disks."""

    version: int
    flags: int
    capacity: int          # sectors
    grain_sectors: int
    gd_offset: int         # sectors
    gd_entries: int
    free_sector: int
    geometry: tuple[int, int, int]
    raw: bytearray

    @classmethod
    def unpack(cls, data: bytes, path: str) -> CowdHeader:
        if len(data) < COWD_HEADER_BYTES:
            raise CorruptImageError(path, "COWD header is truncated", field="header")
        (magic, version, flags, capacity, grain, gd_off, gd_entries,
         free) = COWD_HEADER.unpack_from(data)
        if magic != COWD_MAGIC:
            raise CorruptImageError(path, f"bad magic {magic!r}", field="magicNumber")
        geometry = COWD_ROOT_GEOMETRY.unpack_from(data, COWD_HEADER.size)
        return cls(version, flags, capacity, grain, gd_off, gd_entries, free, geometry,
                   bytearray(data[:COWD_HEADER_BYTES]))

    def pack(self) -> bytes:
        COWD_HEADER.pack_into(self.raw, 0, COWD_MAGIC, self.version, self.flags, self.capacity,
                              self.grain_sectors, self.gd_offset, self.gd_entries,
                              self.free_sector)
        return bytes(self.raw)

    def validate(self, path: str, file_size: int) -> None:
        if self.version not in (1, 3):
            raise UnsupportedImageError(path, f"COWD version {self.version}", field="version")
        grain = self.grain_sectors
        if grain < 1 or grain > MAX_GRAIN_SECTORS or grain & (grain - 1):
            raise CorruptImageError(path, f"grain size {grain} sectors", field="grainSize")
        needed = _ceil_div(self.capacity, grain * COWD_GTES_PER_GT)
        if self.gd_entries < needed:
            raise CorruptImageError(path, f"{self.gd_entries} directory entries cannot cover "
                                    f"{self.capacity} sectors", field="numGDEntries")
        if (self.gd_offset + _ceil_div(needed * 4, SECTOR)) * SECTOR > file_size \
                or self.gd_offset < COWD_HEADER_BYTES // SECTOR:
            raise CorruptImageError(path, "grain directory lies outside the file",
                                    field="gdOffset")


# ---------------------------------------------------------------------------
# Extents
# ---------------------------------------------------------------------------

ReadBelow = Callable[[int, memoryview], None]   # (extent-relative offset, out)
Piece = tuple[int, int, RunKind, int | None, bool]   # (rel offset, length, kind, host, special)


class Extent:
    """One piece of the virtual disk, ``sectors`` long, starting at guest byte ``start``."""

    has_parent = False  # partial grains are completed from the parent, else zeros

    def __init__(self, line: ExtentLine, file: HostFile | None, filename: str | None) -> None:
        self.line = line
        self.file = file
        self.filename = filename
        self.start = 0
        self.length = line.sectors * SECTOR

    @property
    def writable(self) -> bool:
        return self.line.access == "RW"

    def map(self, rel: int, length: int) -> Iterator[Piece]:
        """(rel offset, length, kind, host offset, special) pieces covering the range."""
        raise NotImplementedError

    def read_special(self, rel: int, host: int | None, out: memoryview) -> None:
        """Plain data that lives in another file than the descriptor's."""
        assert self.file is not None and host is not None
        self.file.preadinto(out, host)

    def write_allocating(self, rel: int, data: memoryview, below: ReadBelow) -> None:
        raise ReadOnlyImageError(self.filename, "extent cannot be written")

    def flush(self) -> None:
        """Write cached metadata out."""

    def check(self, report: CheckReport) -> None:
        """Add problems to ``report``."""

    def info(self) -> dict[str, Any]:
        facts: dict[str, Any] = {"filename": self.filename or "", "virtual-size": self.length,
                                 "access": self.line.access, "type": self.line.type}
        return facts

    def close(self, owner: HostFile) -> None:
        if self.file is not None and self.file is not owner:
            self.file.close()


class ZeroExtent(Extent):
    """A ZERO extent: reads as zeros, holds no file, keeps its place in the disk."""

    def map(self, rel: int, length: int) -> Iterator[Piece]:
        yield rel, length, RunKind.ZERO, None, False

    def write_allocating(self, rel: int, data: memoryview, below: ReadBelow) -> None:
        if not is_zero(data):
            raise ReadOnlyImageError(self.filename, "cannot store data in a ZERO extent",
                                     field="extent")


class FlatExtent(Extent):
    """FLAT and VMFS extents: the bytes lie in one file from a sector offset on."""

    def __init__(self, line: ExtentLine, file: HostFile | None, filename: str | None) -> None:
        super().__init__(line, file, filename)
        assert file is not None
        end = line.offset * SECTOR + self.length
        if file.writable and stat.S_ISREG(os.fstat(file.fd).st_mode) and file.size() < end:
            # the tools that make flat extents make them whole; a short one (a damaged
            # descriptor offset, most likely) would have a write extend it by gigabytes
            raise CorruptImageError(filename, f"flat extent file holds {file.size()} bytes, "
                                    f"the descriptor places the extent up to byte {end} "
                                    "(open read-only to read it)", field="extent")

    def map(self, rel: int, length: int) -> Iterator[Piece]:
        yield rel, length, RunKind.DATA, self.line.offset * SECTOR + rel, False

    def block_status(self, rel: int, length: int) -> Iterator[Piece]:
        """Like map, but holes of the host file show as zeros (as qemu-img map does)."""
        assert self.file is not None
        base = self.line.offset * SECTOR
        pos, end = base + rel, base + rel + length
        while pos < end:
            data = self.file.seek_data(pos)
            if data is None or data >= end:
                yield pos - base, end - pos, RunKind.ZERO, None, False
                return
            if data > pos:
                yield pos - base, data - pos, RunKind.ZERO, None, False
            hole = min(self.file.seek_hole(data), end)
            yield data - base, hole - data, RunKind.DATA, data, False
            pos = hole

    def write_allocating(self, rel: int, data: memoryview, below: ReadBelow) -> None:
        assert self.file is not None
        self.file.pwrite(data, self.line.offset * SECTOR + rel)

    def check(self, report: CheckReport) -> None:
        assert self.file is not None
        end = self.line.offset * SECTOR + self.length
        if self.file.size() < end:
            report.leak(f"{self.filename}: flat extent file is shorter ({self.file.size()} "
                        f"bytes) than the {end} bytes the descriptor names (reads as zeros)")


class GrainTables:
    """Grain directory + grain tables of one sparse extent, with a bounded LRU of tables.

    ``gd`` (and ``rgd``) are held whole (their size was checked against the file);
    tables are read on demand.  ``entries_per_gt`` entries of uint32 sectors each.
    """

    def __init__(self, file: HostFile, path: str, gd: array[int], rgd: array[int] | None,
                 entries_per_gt: int, *, keep_all: bool = False, grain_bytes: int = 0,
                 extent_bytes: int = 0, compressed: bool = True) -> None:
        self.file = file
        self.path = path
        self.gd = gd
        self.rgd = rgd
        self.entries_per_gt = entries_per_gt
        self.gt_bytes = entries_per_gt * 4
        self.cache: OrderedDict[int, array[int]] = OrderedDict()
        self.keep_all = keep_all   # stream writing: tables stay in memory until written out
        self.known_size = 0        # file size last seen (it only grows while open)
        # what a grain entry must leave room for before the end of the file: a whole
        # grain (the disk's last one may be short), or a compressed grain's marker
        self.grain_bytes = grain_bytes
        self.extent_bytes = extent_bytes
        self.compressed = compressed
        self.dirty: set[int] = set()   # tables with entries not yet on disk: never evicted

    def table(self, index: int) -> array[int] | None:
        """The grain table for GD entry ``index``, or None when the entry is empty."""
        cached = self.cache.get(index)
        if cached is not None:
            self.cache.move_to_end(index)
            return cached
        table = self.read_table(index)
        if table is None:
            return None
        copy = self.rgd[index] if self.rgd is not None else 0
        if copy and copy * SECTOR + self.gt_bytes > self.known_size:
            self.known_size = self.file.size()
            if copy * SECTOR + self.gt_bytes > self.known_size:  # its updates would go there
                raise CorruptImageError(self.path, f"redundant grain table {index} at sector "
                                        f"{copy} lies beyond the end of the file",
                                        field="rgdEntry")
        self._check_entries(index, table)
        self._remember(index, table)
        return table

    def _check_entries(self, index: int, table: array[int]) -> None:
        """Every grain must lie inside the file: a write into one past the end would grow
        the file by terabytes, and the next new grain (appended at the end) would land
        on top of one running past it."""
        need = GRAIN_MARKER.size if self.compressed else self.grain_bytes
        top = max(table)
        if top * SECTOR + need <= self.known_size:
            return
        self.known_size = self.file.size()
        if top * SECTOR + need <= self.known_size:
            return
        for slot, entry in enumerate(table):
            if entry <= GTE_ZEROED:
                continue
            start = (index * self.entries_per_gt + slot) * self.grain_bytes
            if not self.compressed:
                need = max(0, min(self.grain_bytes, self.extent_bytes - start))
            if entry * SECTOR + need > self.known_size:
                raise CorruptImageError(self.path, f"grain table {index} puts a grain at "
                                        f"sector {entry}, past the end of the "
                                        f"{self.known_size}-byte file", field="gtEntry")

    def read_table(self, index: int) -> array[int] | None:
        """The grain table as the file holds it, unchecked (for check(), which reports
        what :meth:`table` would refuse)."""
        sector = self.gd[index]
        if sector == 0:
            return None
        data = self.file.pread(self.gt_bytes, sector * SECTOR)
        if len(data) < self.gt_bytes:
            raise CorruptImageError(self.path, f"grain table {index} at sector {sector} lies "
                                    "beyond the end of the file", field="gdEntry")
        return _u32_table(data, self.entries_per_gt)

    def _remember(self, index: int, table: array[int]) -> None:
        self.cache[index] = table
        if not self.keep_all:
            for oldest in list(self.cache):
                if len(self.cache) <= GT_CACHE_TABLES:
                    break
                if oldest not in self.dirty and oldest != index:
                    del self.cache[oldest]

    def adopt(self, index: int, table: array[int]) -> None:
        self._remember(index, table)

    def entry(self, grain: int) -> int:
        table = self.table(grain // self.entries_per_gt)
        return 0 if table is None else table[grain % self.entries_per_gt]


def _walk_tables(tables: GrainTables, grain_bytes: int, rel: int, length: int, *,
                 compressed: bool, first_data_sector: int) -> Iterator[Piece]:
    """Pieces of a sparse extent's range; neighbours of one kind (and contiguous data on the
    host) are merged so the core reads and writes them in one call.  A grain entry pointing
    into the metadata area is refused (a write there would overwrite the tables)."""
    gtes = tables.entries_per_gt
    end = rel + length
    pos = rel
    p_start = p_len = 0
    p_kind: RunKind | None = None
    p_host: int | None = None
    p_special = False
    while pos < end:
        grain = pos // grain_bytes
        table = tables.table(grain // gtes)
        if table is None:
            span_end = min(end, (grain // gtes + 1) * gtes * grain_bytes)
            kind, host, special = RunKind.UNALLOCATED, None, False
        else:
            slot = grain % gtes
            entry = table[slot]
            span_end = min(end, (grain + 1) * grain_bytes)
            if entry == 0:
                kind, host, special = RunKind.UNALLOCATED, None, False
                if (slot == 0 or pos == rel) and not any(table[slot:]):
                    # the rest of this table is empty: one piece (preallocated tables)
                    span_end = min(end, (grain // gtes + 1) * gtes * grain_bytes)
            elif entry == GTE_ZEROED:
                kind, host, special = RunKind.ZERO, None, False
            elif entry < first_data_sector:
                raise CorruptImageError(tables.path, f"grain {grain} at sector {entry} lies in "
                                        "the metadata area", field="gtEntry")
            elif compressed:
                kind, host, special = RunKind.DATA, entry * SECTOR, True
            else:
                kind, host, special = RunKind.DATA, entry * SECTOR + pos - grain * grain_bytes, \
                    False
        step = span_end - pos
        if p_kind is kind and not special and not p_special and (
                host is None and p_host is None
                or host is not None and p_host is not None and p_host + p_len == host):
            p_len += step
        else:
            if p_kind is not None:
                yield p_start, p_len, p_kind, p_host, p_special
            p_start, p_len, p_kind, p_host, p_special = pos, step, kind, host, special
        pos = span_end
    if p_kind is not None:
        yield p_start, p_len, p_kind, p_host, p_special


class SparseExtent(Extent):
    """A hosted sparse (KDMV) extent, stream-optimized or not."""


    def __init__(self, line: ExtentLine, file: HostFile, filename: str,
                 header: SparseHeader, *, writable_file: bool) -> None:
        super().__init__(line, file, filename)
        self.file: HostFile = file
        self.filename: str = filename
        self.header = header
        self.grain_bytes = header.grain_sectors * SECTOR
        self.gtes = header.gtes_per_gt
        self.compressed = bool(header.flags & FLAG_COMPRESSED)
        self.markers = bool(header.flags & FLAG_MARKERS)
        self.zeroed_gte = bool(header.flags & FLAG_ZEROED_GTE)
        self.writable_file = writable_file
        # grains live past the header and, for hosted extents, past the overhead
        self.first_data_sector = max(1, header.overhead if not self.markers else 1)
        self.tables = self._load_directory()
        self.end = _round_up(file.size(), SECTOR)   # where the next grain goes
        self.stream_appending = False                # tables loaded, grains being appended
        self.tail_at = self.end                       # where a stream's footer marker is
        self.fill = self.end                          # where its next grain goes
        self.durable_gd: int | None = None           # the GD the on-disk footer names
        self.pending_gt: dict[int, tuple[int, int]] = {}  # GT -> entries [lo, hi) to write
        self.pending_gd: set[int] = set()            # GD entries to write (new tables)
        self.stream_dirty = False
        self._grain_cache: tuple[int, bytes] | None = None
        self._window: tuple[int, bytes] | None = None   # read-ahead of compressed grains

    # -- opening ----------------------------------------------------------
    def _load_directory(self) -> GrainTables:
        header, path = self.header, self.filename
        if header.gd_offset == GD_AT_END:
            return self._scan_markers()
        size = self.file.size()
        count = header.gd_entries
        gd_bytes = count * 4
        for name, offset in (("gdOffset", header.gd_offset), ("rgdOffset", header.rgd_offset)):
            if name == "rgdOffset" and not (header.flags & FLAG_REDUNDANT_GT):
                continue
            if offset == 0 and name == "gdOffset" and count:
                raise CorruptImageError(path, "no grain directory", field=name)
            if offset * SECTOR + gd_bytes > size:
                raise CorruptImageError(path, f"grain directory of {count} entries at sector "
                                        f"{offset} lies beyond the end of the file",
                                        field=name)
        gd = _u32_table(self.file.pread(gd_bytes, header.gd_offset * SECTOR), count)
        rgd = None
        if header.flags & FLAG_REDUNDANT_GT and header.rgd_offset:
            rgd = _u32_table(self.file.pread(gd_bytes, header.rgd_offset * SECTOR), count)
        # the entries themselves are checked as each table is loaded (a 64 TiB disk has
        # two million of them, and most runs touch a few)
        return GrainTables(self.file, path, gd, rgd, self.gtes, grain_bytes=self.grain_bytes,
                           extent_bytes=self.length,
                           compressed=self.compressed)

    def _scan_markers(self) -> GrainTables:
        """Rebuild the tables of a stream without footer from its grain markers (spec 4)."""
        header, path, file = self.header, self.filename, self.file
        size = file.size()
        count = header.gd_entries
        if count * 4 > size + (1 << 20):
            raise CorruptImageError(path, f"capacity {header.capacity} sectors is implausible "
                                    "for a stream this small", field="capacity")
        tables = GrainTables(file, path, array("I", bytes(count * 4)), None, self.gtes,
                             keep_all=True)
        pos = max(header.overhead, 1) * SECTOR
        while pos + MARKER.size <= size:
            value, data_size, marker_type = MARKER.unpack(file.pread(MARKER.size, pos))
            if data_size:   # a grain marker: lba, size, deflated grain
                grain, misaligned = divmod(value, header.grain_sectors)
                if misaligned or value >= header.capacity or data_size > 2 * self.grain_bytes:
                    raise CorruptImageError(path, f"grain marker at {pos} is damaged",
                                            field="grainMarker")
                index = grain // self.gtes
                table = tables.cache.get(index)
                if table is None:
                    table = array("I", bytes(self.gtes * 4))
                    tables.adopt(index, table)
                table[grain % self.gtes] = pos // SECTOR
                pos += _round_up(GRAIN_MARKER.size + data_size, SECTOR)
            elif marker_type == MARKER_EOS:
                break
            elif marker_type in (MARKER_GT, MARKER_GD, MARKER_FOOTER):
                pos += SECTOR + value * SECTOR
            else:
                raise CorruptImageError(path, f"unknown marker type {marker_type} at {pos}",
                                        field="marker")
        return tables

    # -- reading ----------------------------------------------------------
    def map(self, rel: int, length: int) -> Iterator[Piece]:
        return _walk_tables(self.tables, self.grain_bytes, rel, length,
                            compressed=self.compressed, first_data_sector=self.first_data_sector)

    def read_special(self, rel: int, host: int | None, out: memoryview) -> None:
        """Serve a piece of one compressed grain (``host`` is its marker's offset)."""
        assert host is not None
        if not self.compressed:
            self.file.preadinto(out, host)
            return
        grain = rel // self.grain_bytes
        data = self._grain(grain, host)
        within = rel - grain * self.grain_bytes
        out[:] = data[within:within + len(out)]

    def _fetch(self, host: int, length: int) -> memoryview:
        """``length`` bytes at ``host`` (fewer at end of file), from a read-ahead window:
        a stream's grains lie one after another, so one read serves many of them."""
        window = self._window
        if window is not None and window[0] <= host and \
                host + length <= window[0] + len(window[1]):
            return memoryview(window[1])[host - window[0]:host - window[0] + length]
        data = self.file.pread(max(length, STREAM_READ_WINDOW), host)
        self._window = (host, data)
        return memoryview(data)[:length]

    def _grain(self, grain: int, host: int) -> bytes:
        cached = self._grain_cache
        if cached is not None and cached[0] == host:
            return cached[1]
        path = self.filename
        # marker and deflated grain in one read (a grain rarely deflates to more than itself)
        blob = self._fetch(host, GRAIN_MARKER.size + self.grain_bytes + SECTOR)
        if len(blob) < GRAIN_MARKER.size:
            raise CorruptImageError(path, f"grain marker at {host} beyond end of file",
                                    field="grainMarker")
        lba, size = GRAIN_MARKER.unpack_from(blob)
        if lba != grain * self.header.grain_sectors:
            raise CorruptImageError(path, f"grain marker at {host} says sector {lba}, the grain "
                                    f"table says {grain * self.header.grain_sectors}",
                                    field="grainMarker")
        if size > 2 * self.grain_bytes + 4096:
            raise CorruptImageError(path, f"compressed grain at {host} of {size} bytes is "
                                    "implausible", field="grainMarker")
        if GRAIN_MARKER.size + size > len(blob):
            blob = self._fetch(host, GRAIN_MARKER.size + size)
            if GRAIN_MARKER.size + size > len(blob):
                raise CorruptImageError(path, f"compressed grain at {host} runs past the end "
                                        "of the file", field="grainMarker")
        packed = blob[GRAIN_MARKER.size:GRAIN_MARKER.size + size]
        try:
            inflater = zlib.decompressobj()
            data = inflater.decompress(packed, self.grain_bytes)
        except zlib.error as exc:
            raise CorruptImageError(path, f"compressed grain at {host}: {exc}",
                                    field="grain") from None
        if len(data) < self.grain_bytes:
            data = data.ljust(self.grain_bytes, b"\0")
        self._grain_cache = (host, data)
        return data

    # -- writing ----------------------------------------------------------
    def write_allocating(self, rel: int, data: memoryview, below: ReadBelow) -> None:
        """Store ``data`` over grains not held as plain data: allocate and publish."""
        if self.compressed:
            self._stream_write(rel, data, below)
            return
        grain_bytes = self.grain_bytes
        end = rel + len(data)
        first = rel // grain_bytes
        last = (end - 1) // grain_bytes
        # Whole grains, full contents, built first (parent bytes under partial grains).
        grains: list[tuple[int, memoryview | bytes | bytearray]] = []
        for grain in range(first, last + 1):
            g_start = grain * grain_bytes
            g_end = min(g_start + grain_bytes, self.length)
            lo, hi = max(rel, g_start), min(end, g_end)
            piece = data[lo - rel:hi - rel]
            entry = self.tables.entry(grain)
            if entry not in (0, GTE_ZEROED):
                # already plain data (a mixed run): write in place
                self.file.pwrite(piece, entry * SECTOR + lo - g_start)
                continue
            if lo == g_start and hi == g_end and g_end - g_start == grain_bytes:
                content: memoryview | bytes | bytearray = piece
            else:
                buffer = bytearray(grain_bytes)
                view = memoryview(buffer)
                if entry == 0:
                    below(g_start, view[:g_end - g_start])
                view[lo - g_start:hi - g_start] = piece
                content = buffer
            if is_zero(content):
                if entry == GTE_ZEROED or (entry == 0 and not self.has_parent):
                    continue
                if self.zeroed_gte:
                    grains.append((grain, b""))
                    continue
            grains.append((grain, content))
        if not grains:
            return
        # 1. data at the end of the file, in one write
        payload = [c for _, c in grains if len(c)]
        host = self.end
        if payload:
            _pwritev(self.file, payload, host)
        updates: dict[int, int] = {}
        for grain, content in grains:
            if len(content):
                updates[grain] = host // SECTOR
                host += grain_bytes
            else:
                updates[grain] = GTE_ZEROED
        self.end = host
        # 2. grain table entries (allocating tables where the GD entry is empty)
        self._publish(updates)

    def copy_allocating(self, rel: int, length: int, source: HostFile,
                        source_offset: int) -> bool:
        """Allocate whole grains for ``[rel, rel+length)`` and fill them from ``source`` in
        the kernel; False (nothing done) unless the range is whole, empty grains."""
        grain_bytes = self.grain_bytes
        if self.compressed or rel % grain_bytes or (
                length % grain_bytes and rel + length != self.length):
            return False
        first, count = rel // grain_bytes, _ceil_div(length, grain_bytes)
        if any(self.tables.entry(g) not in (0, GTE_ZEROED) for g in range(first, first + count)):
            return False
        host = self.end
        self.file.copy_range(source, source_offset, length, host)
        if length % grain_bytes:   # the disk's last, partial grain: pad it to a whole grain
            self.file.pwrite(bytes(grain_bytes - length % grain_bytes), host + length)
        self.end = host + count * grain_bytes
        self._publish({first + n: host // SECTOR + n * self.header.grain_sectors
                       for n in range(count)})
        return True

    def _publish(self, updates: dict[int, int]) -> None:
        """Point GT entries at grains whose data is written: ``updates`` {grain: sector}.

        Everything only a recovery would read goes out with the data: new tables (GT
        and redundant GT, with their entries), redundant GT and GD entries.  The primary
        GT and GD entries wait in memory for the next flush, which writes them after a
        barrier (:meth:`_publish_pending`).  Whatever subset of the writes a crash
        keeps, a primary entry is durable only after its grain, its table and its
        redundant copy: the redundant copy may be ahead (a leak), never behind.
        """
        gtes, tables = self.gtes, self.tables
        by_table: dict[int, list[int]] = {}
        for grain in sorted(updates):
            by_table.setdefault(grain // gtes, []).append(grain)
        for index, grains in by_table.items():
            table = tables.table(index)
            fresh = table is None
            if table is None:
                table = array("I", bytes(gtes * 4))
            for grain in grains:
                table[grain % gtes] = updates[grain]
            tables.dirty.add(index)
            if fresh:
                self._allocate_table(index, table)
                self.pending_gd.add(index)
                continue
            lo = grains[0] % gtes
            hi = grains[-1] % gtes + 1
            if tables.rgd is not None and tables.rgd[index]:
                self.file.pwrite(_table_bytes(table[lo:hi]),
                                 tables.rgd[index] * SECTOR + lo * 4)
            span = self.pending_gt.get(index, (lo, hi))
            self.pending_gt[index] = (min(span[0], lo), max(span[1], hi))
        if len(tables.dirty) >= GT_CACHE_TABLES:  # bound what the cache must hold
            self._publish_pending()

    def _publish_pending(self) -> None:
        """The barrier, then the primary GT and GD entries held since the last flush."""
        if not self.pending_gt and not self.pending_gd:
            return
        tables = self.tables
        self.file.sync()
        for index, (lo, hi) in sorted(self.pending_gt.items()):
            table = tables.table(index)
            assert table is not None
            self.file.pwrite(_table_bytes(table[lo:hi]), tables.gd[index] * SECTOR + lo * 4)
        for index in sorted(self.pending_gd):
            self.file.pwrite(struct.pack("<I", tables.gd[index]),
                             self.header.gd_offset * SECTOR + index * 4)
        self.pending_gt.clear()
        self.pending_gd.clear()
        tables.dirty.clear()

    def _allocate_table(self, index: int, table: array[int]) -> None:
        """A new GT (and redundant GT) at the end of the file and the RGD entry (the GD
        entry waits for the flush)."""
        tables, header = self.tables, self.header
        gt_span = _round_up(self.gtes * 4, SECTOR)
        content = _table_bytes(table).ljust(gt_span, b"\0")
        gt_sector = self.end // SECTOR
        copies = [content]
        if tables.rgd is not None:
            copies.append(content)
        _pwritev(self.file, copies, self.end)
        self.end += gt_span * len(copies)
        if tables.rgd is not None:
            tables.rgd[index] = gt_sector + gt_span // SECTOR
            self.file.pwrite(struct.pack("<I", tables.rgd[index]),
                             header.rgd_offset * SECTOR + index * 4)
        tables.gd[index] = gt_sector
        tables.adopt(index, table)

    # -- stream-optimized writing ----------------------------------------
    # A stream must end with a footer and an end-of-stream marker (the tail: readers
    # find the grain directory through it), so nothing is ever appended after it and
    # it is never overwritten before a successor is durable.  New grains go into a
    # gap kept before the tail (``fill`` .. ``tail_at``); when one does not fit, a copy
    # of the tail is first written STREAM_RESERVE further on and made durable (an
    # fsync per STREAM_RESERVE bytes of grains, not per write).  Until a flush the tail
    # names the old grain directory.  A flush writes the tables and a new directory at
    # ``fill``, makes them durable, writes a tail naming them right after, makes it
    # durable, and cuts the file there.  Whatever subset of these writes a crash keeps,
    # the file ends with a tail naming a directory whose tables and grains are on disk.
    def _stream_begin(self) -> None:
        """Load every table and find the tail before the first grain is appended."""
        if self.stream_appending:
            return
        tables = self.tables
        tables.keep_all = True
        tables.rgd = None   # streams keep no redundant tables; the old ones are dropped
        for index in range(len(tables.gd)):
            tables.table(index)
        self._window = None
        size = self.file.size()
        self.tail_at = _round_up(size, SECTOR)
        self.durable_gd = None
        if self.header.gd_offset != GD_AT_END and size >= STREAM_TAIL and \
                self._is_tail(self.file.pread(STREAM_TAIL, size - STREAM_TAIL)):
            self.tail_at = size - STREAM_TAIL
            self.durable_gd = self.header.gd_offset
        self.fill = self.end = self.tail_at
        self.stream_appending = True
        if self.durable_gd is None:
            # no footer to keep (an unfinished stream, or a directory named by the
            # header): write the tables and a footer as they are, before any grain
            self.stream_dirty = True
            self._stream_finish()

    @staticmethod
    def _is_tail(raw: bytes) -> bool:
        _, marker_size, marker_type = MARKER.unpack_from(raw, 0)
        _, eos_size, eos_type = MARKER.unpack_from(raw, 2 * SECTOR)
        return (marker_size, marker_type, eos_size, eos_type) == (0, MARKER_FOOTER, 0,
                                                                  MARKER_EOS) \
            and raw[SECTOR:SECTOR + 4] == KDMV_MAGIC

    def _tail_bytes(self, gd_sector: int) -> bytes:
        """Footer marker, footer naming the directory at ``gd_sector``, end-of-stream."""
        footer = _stream_header(self.header)
        footer.gd_offset = gd_sector
        return (MARKER.pack(1, 0, MARKER_FOOTER).ljust(SECTOR, b"\0") + footer.pack()
                + MARKER.pack(0, 0, MARKER_EOS).ljust(SECTOR, b"\0"))

    def _stream_append(self, payload: list[Any]) -> int:
        """Write ``payload`` (whole sectors) at ``fill``, before the tail; returns where.

        When it does not fit, the tail moves first (a durable copy further on), so
        the payload never overwrites the only tail."""
        at = self.fill
        length = sum(len(b) for b in payload)
        if at + length > self.tail_at:
            self._move_tail(at + length)
        _pwritev(self.file, payload, at)
        self.fill = self.end = at + length
        return at

    def _move_tail(self, end: int) -> None:
        """A durable copy of the tail past ``end`` and the reserve, page-aligned (the
        page cache writes an append back page by page, so it is never torn)."""
        assert self.durable_gd is not None
        tail_at = _round_up(end + STREAM_RESERVE, PAGE)
        self.file.pwrite(self._tail_bytes(self.durable_gd), tail_at)
        self.file.sync()
        self.tail_at = tail_at

    def _stream_write(self, rel: int, data: memoryview, below: ReadBelow) -> None:
        self._stream_begin()
        grain_bytes = self.grain_bytes
        end = rel + len(data)
        first, last = rel // grain_bytes, (end - 1) // grain_bytes
        contents: list[tuple[int, bytes | memoryview | bytearray]] = []
        for grain in range(first, last + 1):
            g_start = grain * grain_bytes
            g_end = min(g_start + grain_bytes, self.length)
            lo, hi = max(rel, g_start), min(end, g_end)
            piece = data[lo - rel:hi - rel]
            entry = self.tables.entry(grain)
            if lo == g_start and hi - lo == grain_bytes:
                content: bytes | memoryview | bytearray = piece
            else:
                buffer = bytearray(grain_bytes)
                view = memoryview(buffer)
                if entry == 0:
                    below(g_start, view[:g_end - g_start])
                elif entry != GTE_ZEROED:
                    view[:] = self._grain(grain, entry * SECTOR)
                view[lo - g_start:hi - g_start] = piece
                content = buffer
            if is_zero(content) and (entry == 0 and not self.has_parent
                                     or entry == GTE_ZEROED):
                continue
            contents.append((grain, content))
        if not contents:
            return
        packed = _compress_many([c for _, c in contents])
        buffers: list[bytes] = []
        offsets: dict[int, int] = {}   # grain -> offset in the payload
        length = 0
        for (grain, _), blob in zip(contents, packed, strict=True):
            marker = GRAIN_MARKER.pack(grain * self.header.grain_sectors, len(blob))
            total = GRAIN_MARKER.size + len(blob)
            pad = _round_up(total, SECTOR) - total
            buffers += [marker, blob, bytes(pad)] if pad else [marker, blob]
            offsets[grain] = length
            length += total + pad
        self._window = None
        at = self._stream_append(buffers)
        for grain, offset in offsets.items():
            index = grain // self.gtes
            table = self.tables.table(index)
            if table is None:
                table = array("I", bytes(self.gtes * 4))
                self.tables.adopt(index, table)
            table[grain % self.gtes] = (at + offset) // SECTOR
        self._grain_cache = None
        self.stream_dirty = True

    def _stream_finish(self) -> None:
        """Write the GTs and GD at ``fill``, make them durable, then the tail naming them
        right after, make it durable, and cut the file there."""
        if not self.stream_dirty:
            return
        tables, header = self.tables, self.header
        gt_span = _round_up(self.gtes * 4, SECTOR)
        gd_span = _round_up(len(tables.gd) * 4, SECTOR)
        used = [index for index in range(len(tables.gd))
                if (table := tables.cache.get(index)) is not None and any(table)]
        pos = self.fill
        payload: list[bytes] = []
        end = pos + len(used) * (SECTOR + gt_span) + SECTOR + gd_span
        if end % PAGE > PAGE - STREAM_TAIL:   # the new tail inside one page: pad before
            pad = PAGE - end % PAGE           # the tables (they end with GD, footer, EOS)
            payload.append(_padding_marker(pad))
            pos += pad
        gd = array("I", bytes(len(tables.gd) * 4))
        for index in used:
            payload.append(MARKER.pack(gt_span // SECTOR, 0, MARKER_GT).ljust(SECTOR, b"\0"))
            pos += SECTOR
            gd[index] = pos // SECTOR
            payload.append(_table_bytes(tables.cache[index]).ljust(gt_span, b"\0"))
            pos += gt_span
        payload += [MARKER.pack(gd_span // SECTOR, 0, MARKER_GD).ljust(SECTOR, b"\0"),
                    _table_bytes(gd).ljust(gd_span, b"\0")]
        gd_sector = pos // SECTOR + 1
        pos += SECTOR + gd_span
        self._window = None
        if self.durable_gd is None:   # nothing to keep: tables and tail in one go
            _pwritev(self.file, [*payload, self._tail_bytes(gd_sector)], self.fill)
        else:
            self._stream_append(payload)
            self.file.sync()          # the tables are durable before a tail names them
            if pos + STREAM_TAIL > self.tail_at:   # it would overlap the old tail
                self._move_tail(pos + STREAM_TAIL)
            self.file.pwrite(self._tail_bytes(gd_sector), pos)
            self.file.sync()          # the new tail is durable before the old one goes
        self.file.truncate(pos + STREAM_TAIL)
        self.fill = self.end = self.tail_at = pos
        self.durable_gd = gd_sector
        if header.gd_offset != GD_AT_END:   # e.g. a stream qemu-img wrote: GD in the header
            on_disk = SparseHeader.unpack(self.file.pread(SECTOR, 0), self.filename)
            if on_disk.gd_offset != GD_AT_END:
                self.file.sync()      # the footer is durable before the header defers to it
                self.file.pwrite(_stream_header(header).pack(), 0)
        self.stream_dirty = False
        tables.gd = gd

    def flush(self) -> None:
        if self.compressed and self.writable_file:
            self._stream_finish()
        elif self.writable_file:
            self._publish_pending()

    def mark_in_use(self, in_use: bool) -> None:
        """Set or clear the header's ``uncleanShutdown`` byte (hosted extents only: a
        stream's header is not rewritten in place)."""
        if self.markers or not self.writable_file:
            return
        self.header.unclean_shutdown = int(in_use)
        self.file.pwrite(bytes([int(in_use)]), UNCLEAN_SHUTDOWN_OFFSET)
        if not in_use:
            self.file.sync()

    # -- checking ---------------------------------------------------------
    def check(self, report: CheckReport) -> None:
        tables, path = self.tables, self.filename
        size = self.file.size()
        gt_span = _round_up(self.gtes * 4, SECTOR)
        grain_span = self.grain_bytes
        claimed: dict[int, str] = {}
        primary, redundant = self._table_reader(), self._table_reader()
        empty_table = bytes(self.gtes * 4)
        expected = _ceil_div(self.length, self.grain_bytes * self.gtes)
        if len(tables.gd) < expected:
            report.corrupt(f"{path}: grain directory has {len(tables.gd)} entries, "
                           f"{expected} needed")
        for index, gt_sector in enumerate(tables.gd):
            if tables.rgd is not None and bool(gt_sector) != bool(tables.rgd[index]):
                if gt_sector:
                    report.corrupt(f"{path}: GD entry {index} has a table, the redundant GD "
                                   "has none")
                else:   # an allocation interrupted before the primary GD entry
                    report.leak(f"{path}: redundant GD entry {index} names a table the GD "
                                "does not use")
            if not gt_sector:
                continue
            if gt_sector * SECTOR + gt_span > size:
                report.corrupt(f"{path}: grain table {index} at sector {gt_sector} "
                               "beyond end of file")
                continue
            cached = tables.cache.get(index)
            raw_table = primary(gt_sector) if cached is None else b""
            raw_copy = None
            if tables.rgd is not None and tables.rgd[index]:
                raw_copy = redundant(tables.rgd[index])
                if len(raw_copy) < self.gtes * 4:
                    report.corrupt(f"{path}: redundant grain table {index} beyond end of file")
                    raw_copy = None
            if cached is None and raw_table == empty_table and raw_copy in (None, raw_table):
                continue   # an empty table and its copy (most of a big, fresh disk)
            table = cached if cached is not None else _u32_table(raw_table, self.gtes)
            if raw_copy is not None:
                self._compare_redundant(report, index, table, _u32_table(raw_copy, self.gtes))
            if self.compressed:
                for slot, entry in enumerate(table):
                    if entry > GTE_ZEROED and entry * SECTOR + GRAIN_MARKER.size > size:
                        report.corrupt(f"{path}: compressed grain {index * self.gtes + slot} "
                                       f"at sector {entry} lies beyond the end of the file")
                continue
            for slot, entry in enumerate(table):
                if entry in (0, GTE_ZEROED):
                    continue
                grain = index * self.gtes + slot
                if grain * self.grain_bytes >= self.length:
                    report.corrupt(f"{path}: GT entry for grain {grain} lies past the capacity")
                    continue
                host = entry * SECTOR
                if entry < self.first_data_sector:
                    report.corrupt(f"{path}: grain {grain} at sector {entry} lies in the "
                                   "metadata area")
                    continue
                if host + grain_span > _round_up(size, SECTOR) and \
                        host + min(grain_span, self.length - grain * grain_span) > size:
                    report.corrupt(f"{path}: grain {grain} at sector {entry} lies beyond "
                                   "the end of the file")
                    continue
                key = entry // self.header.grain_sectors if entry % \
                    self.header.grain_sectors == 0 else entry
                if key in claimed:
                    report.corrupt(f"{path}: grain {grain} at sector {entry} overlaps "
                                   f"{claimed[key]}")
                else:
                    claimed[key] = f"grain {grain}"

    def _table_reader(self) -> Callable[[int], bytes]:
        """Reads of grain tables in file order, served from CHECK_READ-byte reads (tables
        made together lie back to back: a 64 TiB disk has two million of them)."""
        length = self.gtes * 4
        buffer = bytearray(max(CHECK_READ, length))   # one buffer, read into again and again
        window = [0, 0]   # file offset and length of what the buffer holds

        def read(sector: int) -> bytes:
            start = sector * SECTOR
            at, held = window
            if not (at <= start and start + length <= at + held):
                at, held = start, self.file.preadinto(memoryview(buffer), start,
                                                      zero_past_eof=False)
                window[:] = [at, held]
            return bytes(buffer[start - at:min(start - at + length, held)])
        return read

    def _compare_redundant(self, report: CheckReport, index: int, table: array[int],
                           redundant: array[int]) -> None:
        """Entries where the redundant copy is only ahead (primary 0 or zeroed) are an
        interrupted allocation: a leak.  Any other difference is a corruption."""
        if table == redundant:
            return
        for slot, (entry, copy) in enumerate(zip(table, redundant, strict=True)):
            if entry == copy:
                continue
            grain = index * self.gtes + slot
            if entry in (0, GTE_ZEROED):
                report.leak(f"{self.filename}: grain {grain} is only in the redundant table")
            else:
                report.corrupt(f"{self.filename}: grain table {index} and its redundant copy "
                               f"differ at grain {grain}")

    def info(self) -> dict[str, Any]:
        facts = super().info()
        facts.update({"cluster-size": self.grain_bytes, "compressed": self.compressed,
                      "version": self.header.version})
        return facts


class CowdExtent(Extent):
    """An ESX sparse / VMDK3 "COWD" extent: 4096-entry grain tables, no redundant copy."""

    def __init__(self, line: ExtentLine, file: HostFile, filename: str,
                 header: CowdHeader) -> None:
        super().__init__(line, file, filename)
        self.filename: str = filename
        self.file: HostFile = file
        self.header = header
        self.grain_bytes = header.grain_sectors * SECTOR
        count = header.gd_entries
        gd = _u32_table(file.pread(count * 4, header.gd_offset * SECTOR), count)
        limit = _ceil_div(file.size(), SECTOR)
        for index, sector in enumerate(gd):
            if sector and sector + COWD_GTES_PER_GT * 4 // SECTOR > limit:
                raise CorruptImageError(filename, f"grain table {index} at sector {sector} "
                                        "lies beyond the end of the file", field="gdEntry")
        self.tables = GrainTables(file, filename, gd, None, COWD_GTES_PER_GT,
                                  grain_bytes=self.grain_bytes, extent_bytes=self.length,
                                  compressed=False)
        self.first_data_sector = header.gd_offset + _ceil_div(count * 4, SECTOR)
        self.end = max(_round_up(file.size(), SECTOR), header.free_sector * SECTOR)

    def map(self, rel: int, length: int) -> Iterator[Piece]:
        return _walk_tables(self.tables, self.grain_bytes, rel, length, compressed=False,
                            first_data_sector=self.first_data_sector)

    def write_allocating(self, rel: int, data: memoryview, below: ReadBelow) -> None:
        """Grains at the free sector, then GT entries (new GTs), free sector, GD entries."""
        grain_bytes, tables = self.grain_bytes, self.tables
        end = rel + len(data)
        grains: list[tuple[int, memoryview | bytearray]] = []
        for grain in range(rel // grain_bytes, (end - 1) // grain_bytes + 1):
            g_start = grain * grain_bytes
            g_end = min(g_start + grain_bytes, self.length)
            lo, hi = max(rel, g_start), min(end, g_end)
            piece = data[lo - rel:hi - rel]
            entry = tables.entry(grain)
            if entry:
                self.file.pwrite(piece, entry * SECTOR + lo - g_start)
                continue
            if lo == g_start and hi - lo == grain_bytes:
                grains.append((grain, piece))
                continue
            buffer = bytearray(grain_bytes)
            view = memoryview(buffer)
            below(g_start, view[:g_end - g_start])
            view[lo - g_start:hi - g_start] = piece
            grains.append((grain, buffer))
        if not grains:
            return
        first_sector = self.end // SECTOR
        _pwritev(self.file, [content for _, content in grains], self.end)
        self.end += len(grains) * grain_bytes
        by_table: dict[int, list[tuple[int, int]]] = {}
        for number, (grain, _) in enumerate(grains):
            by_table.setdefault(grain // COWD_GTES_PER_GT, []).append(
                (grain % COWD_GTES_PER_GT, first_sector + number * self.header.grain_sectors))
        new_tables: list[int] = []
        for index, slots in by_table.items():
            table = tables.table(index)
            if table is None:
                table = array("I", bytes(COWD_GTES_PER_GT * 4))
                for slot, sector in slots:
                    table[slot] = sector
                tables.gd[index] = self.end // SECTOR
                self.file.pwrite(_table_bytes(table), self.end)
                self.end += COWD_GTES_PER_GT * 4
                tables.adopt(index, table)
                new_tables.append(index)
                continue
            for slot, sector in slots:
                table[slot] = sector
            lo, hi = slots[0][0], slots[-1][0] + 1
            self.file.pwrite(_table_bytes(table[lo:hi]), tables.gd[index] * SECTOR + lo * 4)
        self._save_free()
        for index in new_tables:
            self.file.pwrite(struct.pack("<I", tables.gd[index]),
                             self.header.gd_offset * SECTOR + index * 4)

    def _save_free(self) -> None:
        self.header.free_sector = self.end // SECTOR
        self.file.pwrite(self.header.pack()[:COWD_HEADER.size], 0)

    def check(self, report: CheckReport) -> None:
        size = self.file.size()
        seen: set[int] = set()
        for index, gt_sector in enumerate(self.tables.gd):
            if not gt_sector:
                continue
            table = self.tables.table(index)
            assert table is not None
            for slot, entry in enumerate(table):
                if not entry:
                    continue
                if entry * SECTOR + self.grain_bytes > _round_up(size, SECTOR):
                    report.corrupt(f"{self.filename}: grain {index * COWD_GTES_PER_GT + slot} "
                                   "lies beyond the end of the file")
                if entry in seen:
                    report.corrupt(f"{self.filename}: two grains share sector {entry}")
                seen.add(entry)

    def info(self) -> dict[str, Any]:
        facts = super().info()
        facts["cluster-size"] = self.grain_bytes
        return facts


SAMPLE_BYTES = 512          # three samples of a grain decide whether deflate is worth it
INCOMPRESSIBLE_RATIO = 0.95


def _compress_one(data: bytes | memoryview | bytearray) -> bytes:
    """Deflate one grain; a grain whose samples do not shrink is stored (deflate's level 0:
    a valid stream at memcpy speed, and no bigger than what level 6 makes of such data)."""
    view = memoryview(data)
    middle = len(view) // 2
    sample = b"".join((view[:SAMPLE_BYTES], view[middle:middle + SAMPLE_BYTES],
                       view[-SAMPLE_BYTES:]))
    if len(zlib.compress(sample, 1)) >= len(sample) * INCOMPRESSIBLE_RATIO:
        return zlib.compress(data, 0)
    return zlib.compress(data, STREAM_COMPRESS_LEVEL)


_POOL: ThreadPoolExecutor | None = None


def _compress_many(grains: list[bytes | memoryview | bytearray]) -> list[bytes]:
    """Deflate grains; zlib drops the GIL, so large batches use a small thread pool."""
    global _POOL
    if len(grains) < 4:
        return [_compress_one(g) for g in grains]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)),
                                   thread_name_prefix="vmdk-deflate")
    return list(_POOL.map(_compress_one, grains))


def _open_sparse_file(file: HostFile, line: ExtentLine, path: str, *,
                      writable: bool) -> Extent:
    """A SPARSE/VMFSSPARSE extent file: KDMV (hosted, stream) or COWD."""
    size = file.size()
    head = file.pread(COWD_HEADER_BYTES, 0)
    if head[:4] == KDMV_MAGIC:
        header = SparseHeader.unpack(head, path)
        header.validate(path, size)
        if header.gd_offset == GD_AT_END:
            try:
                header = _read_footer(file, header, path)
            except CorruptImageError:
                if not header.flags & FLAG_MARKERS:
                    raise
                # no usable footer (an unfinished stream): the markers are walked instead
        if header.capacity < line.sectors:
            raise CorruptImageError(path, f"sparse extent holds {header.capacity} sectors, "
                                    f"the descriptor says {line.sectors}", field="capacity")
        return SparseExtent(line, file, path, header, writable_file=writable)
    if head[:4] == COWD_MAGIC:
        cowd = CowdHeader.unpack(head, path)
        cowd.validate(path, size)
        if cowd.capacity < line.sectors:
            raise CorruptImageError(path, f"COWD extent holds {cowd.capacity} sectors, the "
                                    f"descriptor says {line.sectors}", field="numSectors")
        return CowdExtent(line, file, path, cowd)
    raise CorruptImageError(path, "sparse extent has neither KDMV nor COWD magic",
                            field="magicNumber")


def _read_footer(file: HostFile, header: SparseHeader, path: str) -> SparseHeader:
    """The footer of a stream whose header says GD_AT_END (spec section 4, footer)."""
    size = file.size()
    if size < 3 * SECTOR or size % SECTOR:
        raise CorruptImageError(path, "stream has no footer", field="gdOffset")
    tail = file.pread(3 * SECTOR, size - 3 * SECTOR)
    _, marker_size, marker_type = MARKER.unpack_from(tail, 0)
    _, eos_size, eos_type = MARKER.unpack_from(tail, 2 * SECTOR)
    if marker_size or marker_type != MARKER_FOOTER or eos_size or eos_type != MARKER_EOS:
        raise CorruptImageError(path, "grain directory is at the end but no footer and "
                                "end-of-stream marker close the file", field="footer")
    footer = SparseHeader.unpack(tail[SECTOR:2 * SECTOR], path)
    footer.validate(path, size)
    if footer.gd_offset in (0, GD_AT_END):
        raise CorruptImageError(path, "footer does not locate the grain directory",
                                field="gdOffset")
    if replace(footer, gd_offset=header.gd_offset, unclean_shutdown=header.unclean_shutdown,
               rgd_offset=header.rgd_offset) != header:
        raise CorruptImageError(path, "footer disagrees with the header", field="footer")
    footer.rgd_offset = 0
    footer.flags &= ~FLAG_REDUNDANT_GT
    return footer


# ---------------------------------------------------------------------------
# Creating
# ---------------------------------------------------------------------------

SUBFORMATS = ("monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat", "streamOptimized", "vmfs", "vmfsSparse")
ADAPTERS = ("ide", "buslogic", "lsilogic", "legacyESX")


def _geometry_for(size: int, adapter: str) -> Geometry:
    heads = 16 if adapter == "ide" else 255
    sectors = 63
    cylinders = min(size // SECTOR // (heads * sectors), 16383)
    return Geometry(cylinders, heads, sectors)


def _sparse_layout(capacity: int, *, descriptor_sectors: int, zeroed_grain: bool,
                   stream: bool) -> tuple[SparseHeader, int]:
    """A header for a new hosted sparse extent and the sector where its tables start."""
    grain = DEFAULT_GRAIN_SECTORS
    header = SparseHeader(capacity=capacity, grain_sectors=grain,
                          descriptor_offset=1 if descriptor_sectors else 0,
                          descriptor_sectors=descriptor_sectors)
    gd_entries = header.gd_entries
    gd_sectors = _ceil_div(gd_entries * 4, SECTOR)
    gt_sectors = _ceil_div(header.gtes_per_gt * 4, SECTOR)
    tables_start = 1 + descriptor_sectors
    if stream:
        header.version = 3
        header.flags = FLAG_VALID_NEWLINE | FLAG_COMPRESSED | FLAG_MARKERS
        header.compress_algorithm = COMPRESS_DEFLATE
        header.gd_offset = GD_AT_END
        header.overhead = _round_up(tables_start, grain)
        return header, tables_start
    header.version = 2 if zeroed_grain else 1
    header.flags = FLAG_VALID_NEWLINE | FLAG_REDUNDANT_GT | (FLAG_ZEROED_GTE if zeroed_grain
                                                             else 0)
    header.rgd_offset = tables_start
    header.gd_offset = tables_start + gd_sectors + gd_entries * gt_sectors
    header.overhead = _round_up(header.gd_offset + gd_sectors + gd_entries * gt_sectors, grain)
    return header, tables_start


def _write_sparse_extent(file: HostFile, capacity: int, descriptor: bytes | None, *,
                         zeroed_grain: bool, stream: bool) -> None:
    """Lay out an empty hosted sparse extent with every grain table preallocated."""
    desc_sectors = 0
    if descriptor is not None:
        desc_sectors = max(DEFAULT_DESCRIPTOR_SECTORS, _ceil_div(len(descriptor) + 1, SECTOR))
    header, _ = _sparse_layout(capacity, descriptor_sectors=desc_sectors,
                               zeroed_grain=zeroed_grain, stream=stream)
    file.truncate(0)
    file.pwrite(header.pack(), 0)
    if descriptor is not None:
        file.pwrite(descriptor.ljust(desc_sectors * SECTOR, b"\0"), SECTOR)
    if stream:
        file.truncate(header.overhead * SECTOR)
        empty_gd = array("I", bytes(header.gd_entries * 4))
        _pwritev(file, _stream_tail(header, empty_gd, header.overhead * SECTOR),
                 header.overhead * SECTOR)
        return
    gd_entries = header.gd_entries
    gd_sectors = _ceil_div(gd_entries * 4, SECTOR)
    gt_sectors = _ceil_div(header.gtes_per_gt * 4, SECTOR)
    for gd_sector in (header.rgd_offset, header.gd_offset):
        first_gt = gd_sector + gd_sectors
        gd = array("I", range(first_gt, first_gt + gd_entries * gt_sectors, gt_sectors))
        file.pwrite(_table_bytes(gd), gd_sector * SECTOR)
    file.truncate(header.overhead * SECTOR)


def _stream_header(header: SparseHeader) -> SparseHeader:
    """The header a stream starts with: GD at the end, no redundant tables."""
    copy = SparseHeader(**{**header.__dict__})
    copy.gd_offset = GD_AT_END
    copy.rgd_offset = 0
    copy.flags &= ~FLAG_REDUNDANT_GT
    return copy


def _padding_marker(length: int) -> bytes:
    """``length`` bytes (whole sectors) a reader walking the markers skips: an empty GT
    marker whose size covers them (zero sectors would read as an end-of-stream)."""
    return MARKER.pack(length // SECTOR - 1, 0, MARKER_GT).ljust(length, b"\0")


def _stream_tail(header: SparseHeader, gd: array[int], pos: int) -> list[bytes]:
    """GD marker, GD, footer marker, footer and end-of-stream marker, written at ``pos``."""
    gd_span = _round_up(len(gd) * 4, SECTOR)
    footer = _stream_header(header)
    footer.gd_offset = pos // SECTOR + 1
    return [MARKER.pack(gd_span // SECTOR, 0, MARKER_GD).ljust(SECTOR, b"\0"),
            _table_bytes(gd).ljust(gd_span, b"\0"),
            MARKER.pack(1, 0, MARKER_FOOTER).ljust(SECTOR, b"\0"),
            footer.pack(),
            MARKER.pack(0, 0, MARKER_EOS).ljust(SECTOR, b"\0")]


def _write_cowd_extent(file: HostFile, capacity: int) -> None:
    grain = 1  # ESX sparse (vmfsSparse) grains are one sector
    gd_entries = _ceil_div(capacity, grain * COWD_GTES_PER_GT)
    gd_offset = COWD_HEADER_BYTES // SECTOR
    free = gd_offset + _ceil_div(gd_entries * 4, SECTOR)
    header = CowdHeader(1, 3, capacity, grain, gd_offset, gd_entries, free, (0, 0, 0),
                        bytearray(COWD_HEADER_BYTES))
    raw = bytearray(header.pack())
    struct.pack_into("<I", raw, COWD_HEADER.size + 1024, 1)   # parent generation / root
    file.truncate(0)
    file.pwrite(raw, 0)
    file.truncate(free * SECTOR)


# ---------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------

_EXTENT_CLASS_FOR_TYPE: dict[str, type[Extent]] = {
    "FLAT": FlatExtent, "VMFS": FlatExtent, "VMFSRDM": FlatExtent, "VMFSRAW": FlatExtent,
    "ZERO": ZeroExtent,
}


@register
class VmdkImage(Image):
    format_name = "vmdk"
    supports_backing = True
    create_options = {
        "subformat": OptionSpec(choice(*SUBFORMATS), "monolithicSparse (default), "
                                "monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, "
                                "streamOptimized, vmfs, vmfsSparse", "monolithicSparse"),
        "adapter_type": OptionSpec(choice(*ADAPTERS), "ide (default), buslogic, lsilogic, "
                                   "legacyESX", "ide"),
        "hwversion": OptionSpec(_number_text, "ddb.virtualHWVersion (default 4)", "4"),
        "compat6": OptionSpec(parse_bool, "the same as hwversion=6 (qemu-img's old name)", False),
        "toolsversion": OptionSpec(_number_text, "ddb.toolsVersion (default 2147483647)",
                                   "2147483647"),
        "zeroed_grain": OptionSpec(parse_bool, "use zeroed-grain GT entries", False),
    }

    descriptor: Descriptor | None
    extents: list[Extent]
    embedded: SparseHeader | None     # header of the file holding the descriptor, if any
    cid_bumped: bool
    _starts: list[int]

    # -- probing and opening -----------------------------------------------
    @classmethod
    def probe(cls, data: ProbeInput) -> int:
        if data.head[:4] in (KDMV_MAGIC, COWD_MAGIC) or data.head[:8] == SESPARSE_MAGIC:
            return 100
        text = data.head[:4096]
        if b"createType" in text and (b"# Disk DescriptorFile" in text or b"version" in text):
            return 90
        return 0

    @classmethod
    def open_file(cls, file: HostFile, *, readonly: bool, options: dict[str, Any]) -> Image:
        image = cls(file, readonly=readonly)
        image.extents = []
        image.descriptor = None
        image.embedded = None
        image.cid_bumped = False
        try:
            image._open()
        except BaseException:
            for extent in image.extents:
                extent.close(file)
            raise
        return image

    def _open(self) -> None:
        file, path = self.file, self.path
        size = file.size()
        head = file.pread(min(size, COWD_HEADER_BYTES), 0)
        whole_disk_line = None
        if head[:4] == KDMV_MAGIC:
            header = SparseHeader.unpack(head, path)
            header.validate(path, size)
            if not (header.descriptor_offset and header.descriptor_sectors):
                # an extent of a disk whose descriptor is another file (qemu and libvmdk
                # refuse it too): alone it says nothing of the disk it belongs to
                raise CorruptImageError(path, "sparse extent without a descriptor: open the "
                                        "descriptor file that names it", field="descriptorOffset")
            text = file.pread(header.descriptor_sectors * SECTOR,
                              header.descriptor_offset * SECTOR)
            self.descriptor = Descriptor.parse(
                text.split(b"\0", 1)[0].decode("utf-8", "replace"), path)
            self.embedded = header
            whole_disk_line = ExtentLine("RW", header.capacity, "SPARSE",
                                         os.path.basename(path))
        elif head[:8] == SESPARSE_MAGIC:
            raise UnsupportedImageError(path, "an ESXi seSparse extent: this driver does not "
                                        "read seSparse", field="magicNumber")
        elif head[:4] == COWD_MAGIC:
            cowd = CowdHeader.unpack(head, path)
            cowd.validate(path, size)
            whole_disk_line = ExtentLine("RW", cowd.capacity, "VMFSSPARSE",
                                         os.path.basename(path))
            if all(cowd.geometry) and cowd.geometry[0] <= 0xFFFF:
                self.geometry = Geometry(*cowd.geometry)
        else:
            if size > MAX_DESCRIPTOR_BYTES:
                raise CorruptImageError(path, "not a sparse extent and too large for a "
                                        "descriptor", field="descriptor")
            text = file.pread(size, 0)
            if b"\0" in text:
                text = text.split(b"\0", 1)[0]
            self.descriptor = Descriptor.parse(text.decode("utf-8", "replace"), path)
            if not self.descriptor.extents:
                raise CorruptImageError(path, "descriptor lists no extents", field="extent")
        if whole_disk_line is not None:
            if self.descriptor is not None and len(self.descriptor.extents) == 1:
                whole_disk_line.access = self.descriptor.extents[0].access
            self.extents.append(_open_sparse_file(file, whole_disk_line, path,
                                                  writable=not self.readonly))
        else:
            assert self.descriptor is not None
            self._open_extents(self.descriptor)
        start = 0
        for extent in self.extents:
            extent.start = start
            start += extent.length
        self.size = start
        self._starts = [e.start for e in self.extents]
        if self.descriptor is not None:
            self._read_ddb(self.descriptor)
            self._parent_from_descriptor(self.descriptor)

    def _open_extents(self, desc: Descriptor) -> None:
        folder = os.path.dirname(os.path.abspath(self.path))
        for line in desc.extents:
            if line.type == "ZERO":
                self.extents.append(ZeroExtent(line, None, None))
                continue
            assert line.filename is not None
            host_path = resolve_path(line.filename, folder, self.path, what="extent")
            writable = not self.readonly and line.access == "RW"
            if os.path.realpath(host_path) == os.path.realpath(self.path):
                raise CorruptImageError(self.path, "descriptor names itself as an extent",
                                        field="extent")
            extent_file = self.file.open_related(host_path, writable=writable, what="extent")
            try:
                if line.type in ("SPARSE", "VMFSSPARSE"):
                    self.extents.append(_open_sparse_file(extent_file, line, host_path,
                                                          writable=writable))
                else:
                    self.extents.append(_EXTENT_CLASS_FOR_TYPE[line.type](line, extent_file,
                                                                          host_path))
            except BaseException:
                extent_file.close()
                raise

    def _read_ddb(self, desc: Descriptor) -> None:
        try:
            cylinders = int(desc.get("ddb.geometry.cylinders") or 0)
            heads = int(desc.get("ddb.geometry.heads") or 0)
            sectors = int(desc.get("ddb.geometry.sectors") or 0)
        except ValueError:
            return
        if cylinders > 0 and 0 < heads <= 255 and 0 < sectors <= 63:
            self.geometry = Geometry(cylinders, heads, sectors)

    def _parent_from_descriptor(self, desc: Descriptor) -> None:
        parent_cid = desc.get_hex("parentCID", self.path)
        hint = desc.get("parentFileNameHint")
        if parent_cid is None or parent_cid == NO_PARENT_CID or not hint:
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        child = self.path
        portable = hint.replace("\\", "/")   # hints written on Windows use backslashes
        parent_path = resolve_path(portable, folder, self.path, what="parentFileNameHint")
        shown = hint
        # A parent of that name beside the child is always safe to try (VMware on another
        # host wrote an absolute hint; the disks were then moved together).
        base_name = portable.rsplit("/", 1)[-1]
        beside = os.path.join(folder, base_name)
        candidates = (beside,) if base_name and beside != parent_path else ()

        def validate(parent: Image) -> None:
            own = getattr(parent, "cid", None)
            if own is None:
                return  # a parent of another format has no CID to compare
            if own != parent_cid:
                raise BackingChainError(child, f"parent {parent.path} has CID {own:08x}, this "
                                        f"image was made from CID {parent_cid:08x}",
                                        field="parentCID")

        self.backing_spec = BackingSpec(parent_path, None, candidates, validate=validate,
                                        display_name=shown)
        for extent in self.extents:
            extent.has_parent = True

    @property
    def cid(self) -> int | None:
        if self.descriptor is None:
            return None
        return self.descriptor.get_hex("CID", self.path)

    # -- mapping ---------------------------------------------------------------
    def _extent_at(self, offset: int) -> Extent:
        return self.extents[bisect_right(self._starts, offset) - 1]

    def _map(self, offset: int, length: int, *, precise: bool = False) -> Iterator[Run]:
        end = offset + length
        index = bisect_right(self._starts, offset) - 1
        while offset < end:
            extent = self.extents[index]
            rel = offset - extent.start
            step = min(end, extent.start + extent.length) - offset
            if step <= 0:
                index += 1
                continue
            foreign = extent.file is not self.file
            noaccess = extent.line.access == "NOACCESS"
            pieces = extent.block_status(rel, step) if precise and isinstance(
                extent, FlatExtent) else extent.map(rel, step)
            for piece_rel, piece_len, kind, host, special in pieces:
                guest = extent.start + piece_rel
                if noaccess:
                    yield Run(guest, piece_len, RunKind.DATA, host, True)
                elif kind is RunKind.DATA:
                    yield Run(guest, piece_len, kind, host, special or foreign)
                else:
                    yield Run(guest, piece_len, kind)
            offset += step
            index += 1

    def _block_status(self, offset: int, length: int) -> Iterator[Run]:
        return self._map(offset, length, precise=True)

    def _read_special(self, run: Run, out: memoryview) -> None:
        extent = self._extent_at(run.offset)
        if extent.line.access == "NOACCESS":
            raise ImageError(self.path, f"extent {extent.filename} is NOACCESS", field="extent")
        extent.read_special(run.offset - extent.start, run.host_offset, out)

    # Every public change first checks the extents' access and gives the disk a new
    # CID; the core's own write path stays in use underneath.
    def _begin_change(self, offset: int, length: int) -> None:
        for extent in self._extents_in(offset, length):
            if not extent.writable:
                raise ReadOnlyImageError(self.path, f"extent {extent.filename or 'ZERO'} is "
                                         f"{extent.line.access}", field="extent")
        self._bump_cid()

    def _copy_unallocated(self, run: Run, source: HostFile, source_offset: int) -> None:
        """Flat extents in other files, and whole fresh grains of a plain sparse extent,
        are copied in the kernel; anything else goes through a buffer."""
        extent = self._extent_at(run.offset)
        if isinstance(extent, FlatExtent) and run.kind is RunKind.DATA:
            assert extent.file is not None and run.host_offset is not None
            extent.file.copy_range(source, source_offset, run.length, run.host_offset)
            return
        if isinstance(extent, SparseExtent) and extent.copy_allocating(
                run.offset - extent.start, run.length, source, source_offset):
            return
        super()._copy_unallocated(run, source, source_offset)

    def _extents_in(self, offset: int, length: int) -> Iterator[Extent]:
        index = bisect_right(self._starts, offset) - 1
        while index < len(self.extents) and self.extents[index].start < offset + length:
            yield self.extents[index]
            index += 1

    def _write_unallocated(self, run: Run, data: memoryview) -> None:
        extent = self._extent_at(run.offset)
        rel = run.offset - extent.start

        def below(extent_rel: int, out: memoryview) -> None:
            self._read_below(extent.start + extent_rel, out)

        if run.kind is RunKind.DATA and isinstance(extent, FlatExtent):
            assert run.host_offset is not None and extent.file is not None
            extent.file.pwrite(data, run.host_offset)
            return
        extent.write_allocating(rel, data, below)

    # -- CID and descriptor write-back ----------------------------------------
    def _bump_cid(self) -> None:
        """Give the disk a new content ID, once per writable open (spec 2, CID), and mark
        the hosted sparse extents in use (``uncleanShutdown``, cleared again at close)."""
        if self.cid_bumped:
            return
        self.cid_bumped = True
        for extent in self.extents:
            if isinstance(extent, SparseExtent) and extent.writable:
                extent.mark_in_use(True)
        if self.descriptor is None:
            return
        self.descriptor.set("CID", f"{_new_cid():08x}")
        self._write_descriptor()

    def _write_descriptor(self) -> None:
        assert self.descriptor is not None
        text = self.descriptor.render().encode()
        if self.embedded is not None:
            room = self.embedded.descriptor_sectors * SECTOR
            if len(text) >= room:
                raise UnsupportedImageError(self.path, "descriptor outgrew its embedded space",
                                            field="descriptorSize")
            self.file.pwrite(text.ljust(room, b"\0"), self.embedded.descriptor_offset * SECTOR)
        else:
            self.file.pwrite(text, 0)
            self.file.truncate(len(text))

    # -- flush, check, info, close ---------------------------------------------
    def _flush_metadata(self) -> None:
        for extent in self.extents:
            if extent.writable and not self.readonly:
                extent.flush()
                if extent.file is not None and extent.file is not self.file:
                    extent.file.sync()

    def _check(self, report: CheckReport, repair: bool) -> None:
        for extent in self.extents:
            extent.check(report)
        if self.embedded is not None and self.embedded.unclean_shutdown:
            message = (f"{self.path}: uncleanShutdown is set (the last writer did not close "
                       "the disk; grains it was allocating may be unused)")
            if repair and not report.corruptions:
                self.embedded.unclean_shutdown = 0
                self.file.pwrite(b"\0", UNCLEAN_SHUTDOWN_OFFSET)
                report.repaired.append(message + ": cleared after a clean check")
            else:
                report.leak(message)

    def _info(self) -> dict[str, Any]:
        facts: dict[str, Any] = {}
        if self.descriptor is not None:
            desc = self.descriptor
            facts["cid"] = self.cid
            facts["parent-cid"] = desc.get_hex("parentCID", self.path)
            facts["create-type"] = desc.get("createType")
        facts["extents"] = [self._extent_info(e) for e in self.extents]
        if self.descriptor is not None:
            desc = self.descriptor
            for key, name in (("ddb.adapterType", "adapter-type"),
                              ("ddb.virtualHWVersion", "hwversion")):
                if desc.get(key) is not None:
                    facts[name] = desc.get(key)
        return facts

    def _extent_info(self, extent: Extent) -> dict[str, Any]:
        """An extent as ``qemu-img info`` shows it (its file named as the descriptor names
        it, beside the descriptor as the user named that; ``format`` is the extent type)."""
        facts = extent.info()
        name = extent.line.filename
        shown = os.path.join(os.path.dirname(self.path), name) if name else self.path
        ordered: dict[str, Any] = {"virtual-size": facts.pop("virtual-size"),
                                   "filename": shown}
        facts.pop("filename", None)
        if "cluster-size" in facts:
            ordered["cluster-size"] = facts.pop("cluster-size")
        ordered["format"] = facts.get("type", "")
        ordered.update(facts)
        return ordered

    def cluster_size(self) -> int | None:
        """The first extent's grain size, as qemu-img reports it (None: not sparse)."""
        first = self.extents[0] if self.extents else None
        return first.grain_bytes if isinstance(first, SparseExtent | CowdExtent) else None

    def _close(self) -> None:
        for extent in self.extents:
            if self.cid_bumped and isinstance(extent, SparseExtent) and extent.writable:
                extent.mark_in_use(False)
            extent.close(self.file)

    def files(self) -> list[HostFile]:
        extra = [e.file for e in self.extents if e.file is not None and e.file is not self.file]
        return [self.file, *extra]

    def allocation_unit(self) -> int:
        units = [e.grain_bytes for e in self.extents
                 if isinstance(e, SparseExtent | CowdExtent)]
        return max(units) if units else 1 << 20

    # -- creating ----------------------------------------------------------------
    @classmethod
    def create_file(cls, file: HostFile, size: int, options: dict[str, Any],
                    backing: Image | None) -> None:
        subformat = options.get("subformat") or "monolithicSparse"
        adapter = options.get("adapter_type") or "ide"
        hwversion = "6" if options.get("compat6") else str(options.get("hwversion") or "4")
        tools_version = str(options.get("toolsversion") or "2147483647")
        zeroed = bool(options.get("zeroed_grain"))
        path = file.path
        if size % SECTOR:
            raise InvalidOptionError(path, "size must be a multiple of 512", field="size")
        if size // SECTOR > MAX_CAPACITY_SECTORS:
            raise InvalidOptionError(path, "size is too large", field="size")
        if zeroed and subformat in ("monolithicFlat", "twoGbMaxExtentFlat", "vmfs"):
            raise InvalidOptionError(path, f"{subformat} images have no grains to zero",
                                     field="zeroed_grain")
        capacity = size // SECTOR
        parent_cid = NO_PARENT_CID
        hint = None
        if backing is not None:
            backing_cid = getattr(backing, "cid", None)
            if backing_cid is None:
                raise InvalidOptionError(path, f"the parent of a VMDK must be a VMDK with a "
                                         f"descriptor, not {backing.format_name}",
                                         field="backing")
            parent_cid = backing_cid
            hint = _parent_hint(backing.path, path)
            if subformat not in ("monolithicSparse", "twoGbMaxExtentSparse", "vmfsSparse",
                                 "streamOptimized"):
                raise InvalidOptionError(path, f"a {subformat} image cannot have a parent",
                                         field="backing")
        for name in (os.path.basename(path), hint or ""):
            if any(c in name for c in '"\r\n\0'):
                raise InvalidOptionError(path, f"file name {name!r} cannot be written into a "
                                         "descriptor", field="filename")
        geometry = _geometry_for(size, adapter)
        stem, suffix = os.path.splitext(os.path.basename(path))
        folder = os.path.dirname(os.path.abspath(path))
        cid = _new_cid()

        def descriptor(create_type: str, extents: list[ExtentLine]) -> bytes:
            return render_descriptor(cid=cid, parent_cid=parent_cid, create_type=create_type,
                                     extents=extents, parent_hint=hint, hwversion=hwversion,
                                     geometry=geometry, adapter=adapter,
                                     tools_version=tools_version).encode()

        if subformat in ("monolithicSparse", "streamOptimized"):
            line = ExtentLine("RW", capacity, "SPARSE", os.path.basename(path))
            _write_sparse_extent(file, capacity, descriptor(subformat, [line]),
                                 zeroed_grain=zeroed, stream=subformat == "streamOptimized")
            return
        pieces: list[tuple[str, int]] = []
        if subformat.startswith("twoGb"):
            letter = "s" if subformat.endswith("Sparse") else "f"
            piece_sectors = TWO_GB_EXTENT_BYTES // SECTOR
            for number, first in enumerate(range(0, max(capacity, 1), piece_sectors), 1):
                pieces.append((f"{stem}-{letter}{number:03d}{suffix}",
                               min(piece_sectors, capacity - first)))
        elif subformat == "vmfsSparse":
            pieces.append((f"{stem}-sparse{suffix}", capacity))
        else:
            pieces.append((f"{stem}-flat{suffix}", capacity))
        kind = {"monolithicFlat": "FLAT", "twoGbMaxExtentFlat": "FLAT", "vmfs": "VMFS",
                "twoGbMaxExtentSparse": "SPARSE", "vmfsSparse": "VMFSSPARSE"}[subformat]
        lines = [ExtentLine("RW", sectors, kind, name) for name, sectors in pieces]
        for name, sectors in pieces:
            extent_file = file.create_related(os.path.join(folder, name))
            try:
                if kind == "SPARSE":
                    _write_sparse_extent(extent_file, sectors, None, zeroed_grain=zeroed,
                                         stream=False)
                elif kind == "VMFSSPARSE":
                    _write_cowd_extent(extent_file, sectors)
                else:
                    extent_file.truncate(sectors * SECTOR)
                extent_file.sync()
            finally:
                extent_file.close()
        text = descriptor(subformat, lines)
        file.truncate(0)
        file.pwrite(text, 0)


def _parent_hint(parent_path: str, child_path: str) -> str:
    child_folder = os.path.dirname(os.path.abspath(child_path))
    parent_abs = os.path.abspath(parent_path)
    if os.path.dirname(parent_abs) == child_folder:
        return os.path.basename(parent_abs)
    relative = os.path.relpath(parent_abs, child_folder)
    return parent_abs if relative.startswith("..") else relative


__all__ = ["Descriptor", "ExtentLine", "SparseHeader", "VmdkImage"]
