"""VHD images (Virtual PC, Hyper-V generation 1): fixed, dynamic and differencing.

Theory of operation
-------------------
Every VHD ends with a 512-byte *footer* (cookie ``conectix``, big-endian fields,
checksum = one's complement of the byte sum with the checksum field zeroed).
Its ``disk_type`` says what lies before it (Virtual Hard Disk Image Format
Specification, "Hard Disk Footer Format"):

* **fixed** (2): the guest disk byte for byte, then the footer.
* **dynamic** (3): a copy of the footer at offset 0, a 1024-byte *dynamic
  header* (cookie ``cxsparse``, its own checksum) at ``data_offset``, the *block
  allocation table* (BAT: one big-endian sector number per block,
  ``0xFFFFFFFF`` = not allocated), then blocks, then the footer.  A block is a
  *sector bitmap* (one bit per sector, most significant bit first, padded to a
  512-byte multiple) followed by ``block_size`` bytes of data.  A sector whose
  bit is clear is not stored here: it reads as zeros.
* **differencing** (4): laid out like a dynamic disk; a sector whose bit is clear
  (or whose block is unallocated) comes from the *parent*, which the header names
  by its unique ID, its footer timestamp, a UTF-16BE file name and up to eight
  *parent locators* (W2ru/W2ku: relative/absolute UTF-16LE paths; MacX: a
  ``file://`` URL in UTF-8).

Rules this driver follows beyond the letter of the spec:

* The end footer is the primary copy.  When it is damaged (a crash while a block
  was being appended) the copy at offset 0 of a dynamic disk is used, with a
  :class:`VpcWarning`; a bad dynamic-header checksum is an error (no copy exists).
* Visible size: ``current_size``, except for images made by Virtual PC
  (creator ``vpc ``) and old QEMU (``qemu``), whose guests saw C*H*S sectors --
  the rule Hyper-V, Azure and QEMU follow.  An image at the maximum geometry
  (65535/16/255) keeps ``current_size`` since CHS cannot describe it.
* Allocation appends a block where the end footer was: first the footer at the
  new end of file and a barrier (fsync), then the block's data and bitmap over the
  old footer; new bits and BAT entries are published at the next flush, after a
  barrier (in a dynamic disk one is needed only for new BAT entries: a clear bit
  reads zeros and the data area of a clear-bit sector is zero on disk; in a
  differencing disk a set bit over lost data would hide the parent's sector).
  Whatever subset of these writes a crash keeps (a drive cache reorders them), the
  file ends with a footer and a BAT entry names only a block whose bitmap and data
  are on disk; what a crash cuts off is a leak.  Freeing the last blocks moves the
  footer back the same way: entries, barrier, footer, barrier, truncate.  A
  writable open rewrites a damaged end footer from the head copy.  The footer's
  contents never change on allocation, so the head copy stays in sync.
* Bitmaps are exact: only the bits of sectors actually written are set, and the
  rest of a partly written sector is filled from below (parent or zeros).
* Every offset and count read from the file is checked against the file size
  and :data:`MAX_DISK_SIZE` before anything is allocated from it.
"""

from __future__ import annotations

import os
import struct
import time
import uuid
import warnings
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from .errors import (
    BackingChainError,
    CorruptImageError,
    ImageWarning,
    InvalidOptionError,
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
    host_data_runs,
    parse_bool,
    parse_size,
)
from .registry import register

SECTOR = 512
MAX_DISK_SIZE = 2040 << 30  # the spec's limit (BAT entries are 32-bit sector numbers)
DEFAULT_BLOCK_SIZE = 2 << 20
MIN_BLOCK_SIZE = SECTOR
MAX_BLOCK_SIZE = 256 << 20
MAX_LOCATOR_BYTES = 64 << 10
MAX_TABLE_ENTRIES = 32 << 20  # a 128 MiB BAT: 2040 GiB in 64 KiB blocks
BITMAP_CACHE_BLOCKS = 4096
FIXED_ALLOCATION_UNIT = 4096  # a fixed VHD is raw: the host file system's block
DATA_ALIGNMENT = 4096  # Hyper-V puts every block's data on such a boundary (padding is no leak)
VHD_EPOCH = 946684800  # 2000-01-01T00:00:00Z as a Unix time
UNUSED_ENTRY = 0xFFFFFFFF
NO_DATA_OFFSET = 0xFFFFFFFFFFFFFFFF
FORMAT_VERSION = 0x00010000
REQUIRED_FEATURES = 0x00000002  # "reserved" bit the spec says must always be set
MAX_GEOMETRY = (65535, 16, 255)
SIZE_FROM_CHS_CREATORS = (b"vpc ", b"qemu")
# Readers choose the size rule by creator (QEMU takes C*H*S for any creator it does not
# know); Hyper-V's tag is the one every reader takes to mean "trust current_size".
OUR_CREATOR = b"win "
OUR_CREATOR_VERSION = 0x000A0000
HOST_OS_WINDOWS = b"Wi2k"

FOOTER_COOKIE = b"conectix"
HEADER_COOKIE = b"cxsparse"
FOOTER_SIZE = 512
HEADER_SIZE = 1024


class DiskType:
    FIXED = 2
    DYNAMIC = 3
    DIFFERENCING = 4


DISK_TYPE_NAMES = {DiskType.FIXED: "fixed", DiskType.DYNAMIC: "dynamic",
                   DiskType.DIFFERENCING: "differencing"}


class VpcWarning(ImageWarning):
    """A VHD was opened despite a recoverable problem (damaged footer copy, parent timestamp)."""


def vhd_checksum(raw: bytes | bytearray, checksum_offset: int) -> int:
    """One's complement of the byte sum, the checksum field counted as zeros."""
    total = sum(raw) - sum(raw[checksum_offset:checksum_offset + 4])
    return ~total & 0xFFFFFFFF


def round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


# --- on-disk structures -------------------------------------------------------

FOOTER_STRUCT = struct.Struct(">8sIIQI4sI4sQQHBBII16sB427s")
FOOTER_CHECKSUM_AT = 64


@dataclass(frozen=True)
class Footer:
    """The "Hard Disk Footer" (spec section 3)."""

    cookie: bytes
    features: int
    format_version: int
    data_offset: int
    timestamp: int
    creator_app: bytes
    creator_version: int
    creator_os: bytes
    original_size: int
    current_size: int
    cylinders: int
    heads: int
    sectors_per_track: int
    disk_type: int
    checksum: int
    unique_id: bytes
    saved_state: int
    reserved: bytes = bytes(427)

    @classmethod
    def unpack(cls, raw: bytes) -> Footer:
        return cls(*FOOTER_STRUCT.unpack(raw))

    def pack(self) -> bytes:
        body = FOOTER_STRUCT.pack(
            self.cookie, self.features, self.format_version, self.data_offset, self.timestamp,
            self.creator_app, self.creator_version, self.creator_os, self.original_size,
            self.current_size, self.cylinders, self.heads, self.sectors_per_track,
            self.disk_type, 0, self.unique_id, self.saved_state, self.reserved)
        checksum = vhd_checksum(body, FOOTER_CHECKSUM_AT)
        return body[:FOOTER_CHECKSUM_AT] + checksum.to_bytes(4, "big") \
            + body[FOOTER_CHECKSUM_AT + 4:]

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.cylinders, self.heads, self.sectors_per_track)

    def visible_size(self) -> int:
        """The guest-visible size (see the module docstring for the creator rule)."""
        chs = (self.cylinders, self.heads, self.sectors_per_track)
        if self.creator_app in SIZE_FROM_CHS_CREATORS and chs != MAX_GEOMETRY:
            return self.geometry.sector_count * SECTOR
        return self.current_size


def parse_footer(raw: bytes) -> tuple[Footer | None, str]:
    """The footer in ``raw``, or None and why it is not a valid one."""
    if len(raw) < FOOTER_SIZE or raw[:8] != FOOTER_COOKIE:
        return None, "no 'conectix' cookie"
    footer = Footer.unpack(raw[:FOOTER_SIZE])
    expected = vhd_checksum(raw[:FOOTER_SIZE], FOOTER_CHECKSUM_AT)
    if footer.checksum != expected:
        return None, f"checksum {footer.checksum:#010x} should be {expected:#010x}"
    return footer, ""


LOCATOR_STRUCT = struct.Struct(">4sIIIQ")
LOCATOR_COUNT = 8


@dataclass(frozen=True)
class ParentLocator:
    """One of the dynamic header's eight parent locator entries."""

    platform_code: bytes
    data_space: int  # the spec says sectors; Windows writes bytes: only used for layout checks
    data_length: int
    reserved: int
    data_offset: int

    @classmethod
    def unpack(cls, raw: bytes) -> ParentLocator:
        return cls(*LOCATOR_STRUCT.unpack(raw))

    def pack(self) -> bytes:
        return LOCATOR_STRUCT.pack(self.platform_code, self.data_space, self.data_length,
                                   self.reserved, self.data_offset)

    @property
    def used(self) -> bool:
        return self.platform_code != bytes(4)


EMPTY_LOCATOR = ParentLocator(bytes(4), 0, 0, 0, 0)

HEADER_STRUCT = struct.Struct(">8sQQIIII16sI4s512s192s256s")
HEADER_CHECKSUM_AT = 36


@dataclass(frozen=True)
class DynamicHeader:
    """The "Dynamic Disk Header" (spec section 4)."""

    cookie: bytes
    data_offset: int
    table_offset: int
    header_version: int
    max_table_entries: int
    block_size: int
    checksum: int
    parent_unique_id: bytes
    parent_timestamp: int
    reserved1: bytes
    parent_unicode_name: bytes  # UTF-16BE, NUL padded
    locators: tuple[ParentLocator, ...]
    reserved2: bytes = bytes(256)

    @classmethod
    def unpack(cls, raw: bytes) -> DynamicHeader:
        fields = list(HEADER_STRUCT.unpack(raw))
        table = fields[11]
        fields[11] = tuple(ParentLocator.unpack(table[i * LOCATOR_STRUCT.size:
                                                      (i + 1) * LOCATOR_STRUCT.size])
                           for i in range(LOCATOR_COUNT))
        return cls(*fields)

    def pack(self) -> bytes:
        locators = b"".join(loc.pack() for loc in self.locators)
        body = HEADER_STRUCT.pack(
            self.cookie, self.data_offset, self.table_offset, self.header_version,
            self.max_table_entries, self.block_size, 0, self.parent_unique_id,
            self.parent_timestamp, self.reserved1, self.parent_unicode_name, locators,
            self.reserved2)
        checksum = vhd_checksum(body, HEADER_CHECKSUM_AT)
        return body[:HEADER_CHECKSUM_AT] + checksum.to_bytes(4, "big") \
            + body[HEADER_CHECKSUM_AT + 4:]

    @property
    def parent_name(self) -> str:
        return self.parent_unicode_name.decode("utf-16-be", "replace").split("\0", 1)[0]


# --- geometry (spec appendix "CHS Calculation") ---------------------------------

def chs_for_sectors(total_sectors: int) -> tuple[int, int, int]:
    """Cylinders, heads and sectors per track for a disk of ``total_sectors``."""
    total = min(total_sectors, 65535 * 16 * 255)
    if total >= 65535 * 16 * 63:
        sectors, heads = 255, 16
        cylinder_times_heads = total // sectors
    else:
        sectors = 17
        cylinder_times_heads = total // sectors
        heads = max(4, (cylinder_times_heads + 1023) // 1024)
        if cylinder_times_heads >= heads * 1024 or heads > 16:
            sectors, heads = 31, 16
            cylinder_times_heads = total // sectors
        if cylinder_times_heads >= heads * 1024:
            sectors, heads = 63, 16
            cylinder_times_heads = total // sectors
    return cylinder_times_heads // heads, heads, sectors


def chs_covering(total_sectors: int) -> tuple[int, int, int]:
    """The smallest spec geometry holding at least ``total_sectors`` (Virtual PC rounding)."""
    for extra in range(0, 4096):
        chs = chs_for_sectors(total_sectors + extra)
        if chs == MAX_GEOMETRY or chs[0] * chs[1] * chs[2] >= total_sectors:
            return chs
    raise AssertionError("the CHS algorithm always converges")  # pragma: no cover


# --- sector bitmaps --------------------------------------------------------------
# In memory a bitmap is an int with sector i at bit i; on disk sector 0 is the most
# significant bit of byte 0.  Reversing the bits of every byte converts between them.

_REVERSED_BITS = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def bitmap_from_disk(raw: bytes) -> int:
    return int.from_bytes(raw.translate(_REVERSED_BITS), "little")


def bitmap_to_disk(bits: int, length: int) -> bytes:
    return bits.to_bytes(length, "little").translate(_REVERSED_BITS)


def bit_runs(bits: int, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """(first, end, is_set) for the runs of equal bits in ``[start, end)``."""
    pos = start
    while pos < end:
        rest = bits >> pos
        is_set = bool(rest & 1)
        flipped = ~rest if is_set else rest
        length = (flipped & -flipped).bit_length() - 1 if flipped else end - pos
        length = min(length, end - pos)
        yield pos, pos + length, is_set
        pos += length


def sector_mask(first: int, end: int) -> int:
    return ((1 << (end - first)) - 1) << first


# --- parent locators --------------------------------------------------------------

def _decode_utf16le(raw: bytes) -> str:
    return raw.decode("utf-16-le").split("\0", 1)[0]


def _decode_ascii(raw: bytes) -> str:
    return raw.decode("latin-1").split("\0", 1)[0]


def _decode_file_url(raw: bytes) -> str:
    text = raw.decode("utf-8").split("\0", 1)[0]
    if not text.startswith("file:"):
        raise ValueError("not a file URL")
    return unquote(urlparse(text).path)


# platform code -> (decoder, relative to the child's folder?), in the order tried
LOCATOR_PLATFORMS: dict[bytes, tuple[Any, bool]] = {
    b"W2ru": (_decode_utf16le, True),
    b"W2ku": (_decode_utf16le, False),
    b"MacX": (_decode_file_url, False),
    b"Mac ": (_decode_file_url, False),  # an alias record unless it happens to be a URL
    b"Wi2r": (_decode_ascii, True),
    b"Wi2k": (_decode_ascii, False),
}


def locator_to_host_path(text: str, relative: bool, child_dir: str) -> str | None:
    """A host path for a stored locator, None for a foreign absolute path (C:\\...)."""
    if len(text) >= 2 and text[1] == ":" and text[0].isalpha():
        return None
    path = text.replace("\\", "/") if os.sep == "/" else text
    if relative or not os.path.isabs(path):
        return os.path.normpath(os.path.join(child_dir, path))
    return path


# --- the driver -------------------------------------------------------------------

def _parse_block_size(value: Any) -> int:
    size = parse_size(value)
    if size < MIN_BLOCK_SIZE or size > MAX_BLOCK_SIZE or size & (size - 1):
        raise ValueError(f"block size {size} is not a power of two between "
                         f"{MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}")
    return size


def _vhd_now() -> int:
    return max(0, int(time.time()) - VHD_EPOCH) & 0xFFFFFFFF


def _new_footer(disk_type: int, size: int, chs: tuple[int, int, int], data_offset: int,
                creator: bytes = OUR_CREATOR) -> Footer:
    return Footer(FOOTER_COOKIE, REQUIRED_FEATURES, FORMAT_VERSION, data_offset, _vhd_now(),
                  creator, OUR_CREATOR_VERSION, HOST_OS_WINDOWS, size, size, *chs, disk_type,
                  0, uuid.uuid4().bytes, 0)


@register
class VpcImage(Image):
    format_name = "vpc"
    aliases = ("vhd",)
    supports_backing = True
    create_options = {
        "subformat": OptionSpec(choice("dynamic", "fixed"),
                                "dynamic (grows as written) or fixed (preallocated)", "dynamic"),
        "block_size": OptionSpec(_parse_block_size, "dynamic block size (default 2M)",
                                 DEFAULT_BLOCK_SIZE),
        "force_size": OptionSpec(parse_bool, "on: store the size exactly as asked; off: round "
                                 "it up to the CHS geometry like Virtual PC and qemu", True),
    }

    footer: Footer
    header: DynamicHeader | None
    bat: array[int]
    footer_offset: int
    block_size: int
    bitmap_size: int
    metadata: list[tuple[int, int, str]]  # (start, end, what) of the structures before blocks

    # --- probing and opening ----------------------------------------------------
    @classmethod
    def probe(cls, data: ProbeInput) -> int:
        for raw in (data.head[:FOOTER_SIZE], data.tail):
            footer, _ = parse_footer(raw)
            if footer is not None:
                return 100
        if data.head.startswith(FOOTER_COOKIE) or data.tail.startswith(FOOTER_COOKIE):
            return 60  # ours, though damaged: open() says exactly what is wrong
        return 0

    @classmethod
    def open_file(cls, file: HostFile, *, readonly: bool, options: dict[str, Any]) -> Image:
        image = cls(file, readonly=readonly)
        image._load()
        if not image.footer_at_end:  # said only once the image has opened: no noise on errors
            warnings.warn(f"{image.path}: footer at end of file is damaged "
                          f"({image.end_footer_problem}); using the copy at offset 0",
                          VpcWarning, stacklevel=3)
            if not readonly:  # a writer restores it at once, after the last block
                image.file.truncate(image.footer_offset)
                image.cut_tail_before_append = False
                image._write_end_footer()
                image.file.sync()
        return image

    def _load(self) -> None:
        file_size = self.file.size()
        if file_size < FOOTER_SIZE:
            raise CorruptImageError(self.path, f"{file_size}-byte file is too small for a VHD")
        self.file_size = file_size
        footer, self.footer_at_end = self._read_footer(file_size)
        self._validate_footer(footer)
        self.footer = footer
        self.geometry = footer.geometry
        self.size = footer.visible_size()
        self.header = None
        self.bat = array("I")
        self.bitmap_cache: dict[int, int] = {}
        self.bad_blocks: dict[int, str] = {}
        self.unpublished_entries: dict[int, int] = {}  # block -> BAT entry, see _write_from
        self.unpublished_bits: dict[int, tuple[int, int]] = {}  # block -> sectors [first, last)
        if footer.disk_type == DiskType.FIXED:
            self._load_fixed()
        else:
            self._load_dynamic()

    def _read_footer(self, file_size: int) -> tuple[Footer, bool]:
        end_raw = self.file.pread(FOOTER_SIZE, file_size - FOOTER_SIZE)
        footer, end_problem = parse_footer(end_raw)
        if footer is not None:
            return footer, True
        head, head_problem = parse_footer(self.file.pread(FOOTER_SIZE, 0))
        if head is not None and head.disk_type in (DiskType.DYNAMIC, DiskType.DIFFERENCING):
            self.end_footer_problem = end_problem
            return head, False
        problem = end_problem if end_raw.startswith(FOOTER_COOKIE) else head_problem
        raise CorruptImageError(self.path, f"no valid VHD footer: {problem}", field="footer")

    def _validate_footer(self, footer: Footer) -> None:
        if footer.disk_type not in DISK_TYPE_NAMES:
            raise UnsupportedImageError(self.path, f"disk type {footer.disk_type} is not fixed, "
                                        "dynamic or differencing", field="disk_type")
        if footer.format_version >> 16 != FORMAT_VERSION >> 16:
            raise UnsupportedImageError(self.path, f"file format version "
                                        f"{footer.format_version:#010x}", field="format_version")
        if footer.current_size % SECTOR:
            raise CorruptImageError(self.path, f"{footer.current_size} is not a whole number of "
                                    "sectors", field="current_size")
        if footer.visible_size() > MAX_DISK_SIZE:
            raise UnsupportedImageError(self.path, f"{footer.visible_size()} bytes exceeds the "
                                        f"VHD limit of {MAX_DISK_SIZE} (2040 GiB)",
                                        field="current_size")

    def _load_fixed(self) -> None:
        if not self.footer_at_end:  # pragma: no cover - _read_footer only falls back for dynamic
            raise CorruptImageError(self.path, "fixed VHD without an end footer", field="footer")
        self.footer_offset = self.file_size - FOOTER_SIZE
        if self.size > self.footer_offset:
            raise CorruptImageError(self.path, f"disk of {self.size} bytes does not fit in the "
                                    f"{self.footer_offset} bytes before the footer",
                                    field="current_size")
        self.block_size = self.bitmap_size = 0
        self.metadata = []
        self.cut_tail_before_append = False

    def _load_dynamic(self) -> None:
        footer, file_size = self.footer, self.file_size
        if footer.data_offset % SECTOR or footer.data_offset < FOOTER_SIZE \
                or footer.data_offset + HEADER_SIZE > file_size:
            raise CorruptImageError(self.path, f"dynamic header offset {footer.data_offset} is "
                                    f"outside the {file_size}-byte file", field="data_offset")
        raw = self.file.pread(HEADER_SIZE, footer.data_offset)
        if raw[:8] != HEADER_COOKIE:
            raise CorruptImageError(self.path, "dynamic header lacks its 'cxsparse' cookie",
                                    field="dynamic_header")
        header = DynamicHeader.unpack(raw)
        expected = vhd_checksum(raw, HEADER_CHECKSUM_AT)
        if header.checksum != expected:
            raise CorruptImageError(self.path, f"dynamic header checksum {header.checksum:#010x} "
                                    f"should be {expected:#010x}", field="dynamic_header")
        if header.header_version >> 16 != FORMAT_VERSION >> 16:
            raise UnsupportedImageError(self.path, f"dynamic header version "
                                        f"{header.header_version:#010x}", field="header_version")
        block_size = header.block_size
        if block_size < MIN_BLOCK_SIZE or block_size > MAX_BLOCK_SIZE \
                or block_size & (block_size - 1):
            raise CorruptImageError(self.path, f"block size {block_size} is not a power of two "
                                    f"between {MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}",
                                    field="block_size")
        entries = header.max_table_entries
        needed = -(-self.size // block_size)
        if entries < needed or entries > -(-MAX_DISK_SIZE // block_size):
            raise CorruptImageError(self.path, f"max_table_entries {entries} does not fit a "
                                    f"{self.size}-byte disk of {block_size}-byte blocks",
                                    field="max_table_entries")
        bat_bytes = entries * 4
        bat_limit = file_size - FOOTER_SIZE if self.footer_at_end else file_size
        if header.table_offset % SECTOR or header.table_offset < FOOTER_SIZE \
                or header.table_offset + bat_bytes > bat_limit:
            raise CorruptImageError(self.path, f"BAT of {bat_bytes} bytes at "
                                    f"{header.table_offset} is outside the {bat_limit} bytes "
                                    "before the footer", field="table_offset")
        if entries > MAX_TABLE_ENTRIES:
            raise UnsupportedImageError(self.path, f"{entries} BAT entries exceed the "
                                        f"{MAX_TABLE_ENTRIES} this driver keeps in memory "
                                        "(block size too small for the disk)",
                                        field="max_table_entries")
        if header.table_offset < footer.data_offset + HEADER_SIZE \
                and footer.data_offset < header.table_offset + bat_bytes:
            raise CorruptImageError(self.path, f"BAT at {header.table_offset} overlaps the "
                                    f"dynamic header at {footer.data_offset}",
                                    field="table_offset")
        self.header = header
        self.block_size = block_size
        self.bitmap_size = round_up(block_size // SECTOR // 8, SECTOR)
        self.metadata = [(0, FOOTER_SIZE, "footer copy"),
                         (footer.data_offset, footer.data_offset + HEADER_SIZE, "dynamic header"),
                         (header.table_offset, header.table_offset + round_up(bat_bytes, SECTOR),
                          "BAT")]
        if footer.disk_type == DiskType.DIFFERENCING:
            self.backing_spec = self._parent_spec(header)
        bat = array("I")
        bat.frombytes(self.file.pread(bat_bytes, header.table_offset))
        if bat.itemsize != 4:  # pragma: no cover - every supported platform has 32-bit "I"
            raise UnsupportedImageError(self.path, "platform lacks 32-bit unsigned arrays")
        if struct.pack("=I", 1) != struct.pack(">I", 1):
            bat.byteswap()
        self.bat = bat
        data_limit = file_size - FOOTER_SIZE if self.footer_at_end else None
        self.bad_blocks, last_block_end, _ = self._scan_blocks(data_limit)
        # Without a valid end footer, what follows the last referenced block is the debris
        # of an interrupted append: the next append (or a repair) cuts it off first, so a
        # new block never inherits stale bytes (readers that ignore bitmaps would see them).
        self.footer_offset = file_size - FOOTER_SIZE if self.footer_at_end else last_block_end
        self.cut_tail_before_append = not self.footer_at_end

    def _parent_spec(self, header: DynamicHeader) -> BackingSpec:
        child_dir = os.path.dirname(os.path.abspath(self.path))
        candidates: list[str] = []
        shown: str | None = header.parent_name or None
        locators = sorted((loc for loc in header.locators if loc.used),
                          key=lambda loc: list(LOCATOR_PLATFORMS).index(loc.platform_code)
                          if loc.platform_code in LOCATOR_PLATFORMS else len(LOCATOR_PLATFORMS))
        for locator in locators:
            platform = LOCATOR_PLATFORMS.get(locator.platform_code)
            if platform is None:
                continue
            if locator.data_length > MAX_LOCATOR_BYTES \
                    or locator.data_offset + locator.data_length > self.file_size:
                raise CorruptImageError(self.path, f"parent locator "
                                        f"{locator.platform_code.decode('latin-1')!r} of "
                                        f"{locator.data_length} bytes at {locator.data_offset} "
                                        f"is outside the {self.file_size}-byte file",
                                        field="parent_locator")
            self.metadata.append((locator.data_offset,
                                  locator.data_offset + round_up(locator.data_length, SECTOR),
                                  f"parent locator {locator.platform_code.decode('latin-1')}"))
            decode, relative = platform
            try:
                text = decode(self.file.pread(locator.data_length, locator.data_offset))
            except (UnicodeDecodeError, ValueError):
                continue
            shown = shown or text
            path = locator_to_host_path(text, relative, child_dir)
            if path and path not in candidates:
                candidates.append(path)
        if header.parent_name:  # last resort: the parent's file name, beside the child
            name = os.path.basename(header.parent_name.replace("\\", "/"))
            beside = os.path.join(child_dir, name)
            if name and beside not in candidates:
                candidates.append(beside)
        return BackingSpec(candidates[0] if candidates else None, "vpc", tuple(candidates[1:]),
                           self._validate_parent, shown)

    def _validate_parent(self, parent: Image) -> None:
        assert self.header is not None
        if not isinstance(parent, VpcImage):
            raise BackingChainError(self.path, f"parent {parent.path} is a {parent.format_name} "
                                    "image, not a VHD", field="parent")
        expected = self.header.parent_unique_id
        if expected != bytes(16) and parent.footer.unique_id != expected:
            raise BackingChainError(
                self.path, f"parent {parent.path} has unique ID "
                f"{uuid.UUID(bytes=parent.footer.unique_id)}, this disk was made from "
                f"{uuid.UUID(bytes=expected)}", field="parent_unique_id")
        if parent.footer.timestamp != self.header.parent_timestamp:
            # The unique ID is the identity check and it matched.  Writers disagree on
            # the timestamp (the parent footer's creation time or the parent file's
            # modification time), and copies and footer rewrites change it: warn only.
            warnings.warn(f"{self.path}: parent {parent.path} footer timestamp "
                          f"{parent.footer.timestamp} differs from the recorded "
                          f"{self.header.parent_timestamp}; it may have been modified",
                          VpcWarning, stacklevel=2)

    # --- creating -----------------------------------------------------------------
    @classmethod
    def create_file(cls, file: HostFile, size: int, options: dict[str, Any],
                    backing: Image | None) -> None:
        if backing is not None:
            cls._create_differencing(file, size, options, backing)
            return
        if size % SECTOR:
            raise InvalidOptionError(file.path, f"{size} is not a whole number of "
                                     f"{SECTOR}-byte sectors", field="size")
        if size > MAX_DISK_SIZE:
            raise InvalidOptionError(file.path, f"{size} bytes exceeds the VHD limit of "
                                     f"{MAX_DISK_SIZE} (2040 GiB)", field="size")
        if options.get("force_size", True):
            chs = chs_for_sectors(size // SECTOR)
        else:
            chs = chs_covering(size // SECTOR)
            if chs != MAX_GEOMETRY:
                size = chs[0] * chs[1] * chs[2] * SECTOR
        if options.get("subformat", "dynamic") == "fixed":
            footer = _new_footer(DiskType.FIXED, size, chs, NO_DATA_OFFSET)
            file.truncate(size)
            file.pwrite(footer.pack(), size)
            return
        footer = _new_footer(DiskType.DYNAMIC, size, chs, FOOTER_SIZE)
        cls._lay_out_dynamic(file, footer, options.get("block_size") or DEFAULT_BLOCK_SIZE,
                             parent=None)

    @classmethod
    def _create_differencing(cls, file: HostFile, size: int, options: dict[str, Any],
                             parent: Image) -> None:
        if not isinstance(parent, VpcImage):
            raise InvalidOptionError(file.path, f"a differencing VHD needs a VHD parent, "
                                     f"not {parent.format_name}", field="backing")
        if size != parent.size:
            raise InvalidOptionError(file.path, f"a differencing VHD has its parent's size "
                                     f"({parent.size}), not {size}", field="size")
        if options.get("subformat") == "fixed":
            raise InvalidOptionError(file.path, "a differencing VHD cannot be fixed",
                                     field="subformat")
        pf = parent.footer
        footer = _new_footer(DiskType.DIFFERENCING, parent.size,
                             (pf.cylinders, pf.heads, pf.sectors_per_track), FOOTER_SIZE)
        cls._lay_out_dynamic(file, footer, options.get("block_size") or DEFAULT_BLOCK_SIZE,
                             parent=parent)

    @classmethod
    def _lay_out_dynamic(cls, file: HostFile, footer: Footer, block_size: int,
                         parent: VpcImage | None) -> None:
        entries = -(-footer.current_size // block_size)
        if entries > MAX_TABLE_ENTRIES:
            raise InvalidOptionError(file.path, f"{entries} blocks of {block_size} bytes: more "
                                     f"than {MAX_TABLE_ENTRIES}; choose a larger block_size",
                                     field="block_size")
        table_offset = FOOTER_SIZE + HEADER_SIZE
        next_free = table_offset + round_up(entries * 4, SECTOR)
        locators: list[ParentLocator] = []
        locator_data: list[tuple[int, bytes]] = []
        parent_name = b""
        parent_id, parent_time = bytes(16), 0
        if parent is not None:
            parent_path = os.path.abspath(parent.path)
            child_dir = os.path.dirname(os.path.abspath(file.path))
            relative = ".\\" + os.path.relpath(parent_path, child_dir).replace(os.sep, "\\")
            for code, text in ((b"W2ru", relative), (b"W2ku", parent_path)):
                data = text.encode("utf-16-le")
                space = round_up(len(data), SECTOR)
                locators.append(ParentLocator(code, space, len(data), 0, next_free))
                locator_data.append((next_free, data))
                next_free += space
            parent_name = os.path.basename(parent_path).encode("utf-16-be")[:512]
            parent_id, parent_time = parent.footer.unique_id, parent.footer.timestamp
        locators += [EMPTY_LOCATOR] * (LOCATOR_COUNT - len(locators))
        header = DynamicHeader(HEADER_COOKIE, NO_DATA_OFFSET, table_offset, FORMAT_VERSION,
                               entries, block_size, 0, parent_id, parent_time, bytes(4),
                               parent_name.ljust(512, b"\0"), tuple(locators))
        footer_raw = footer.pack()
        file.truncate(0)
        file.pwrite(footer_raw, 0)
        file.pwrite(header.pack(), FOOTER_SIZE)
        file.pwrite(b"\xff" * round_up(entries * 4, SECTOR), table_offset)
        for offset, data in locator_data:
            file.pwrite(data, offset)
        file.pwrite(footer_raw, next_free)

    # --- mapping, reading and writing ----------------------------------------------
    @property
    def is_fixed(self) -> bool:
        return self.footer.disk_type == DiskType.FIXED

    def allocation_unit(self) -> int:
        return self.block_size or FIXED_ALLOCATION_UNIT

    def cluster_size(self) -> int | None:
        return self.block_size or None  # qemu-img shows the block size of dynamic disks only

    def _bitmap(self, block: int) -> int:
        bits = self.bitmap_cache.get(block)
        if bits is None:
            if len(self.bitmap_cache) >= BITMAP_CACHE_BLOCKS:  # keep only unpublished ones
                self.bitmap_cache = {b: self.bitmap_cache[b] for b in self.unpublished_bits}
            raw = self.file.pread(self.bitmap_size, self.bat[block] * SECTOR)
            bits = bitmap_from_disk(raw.ljust(self.bitmap_size, b"\0"))
            self.bitmap_cache[block] = bits
        return bits

    def _map(self, offset: int, length: int, *, whole_stretches: bool = False) -> Iterator[Run]:
        """Runs of at most one block each (writes allocate block by block); with
        ``whole_stretches`` a stretch of unused blocks is one run (map() of a big disk)."""
        if self.is_fixed:
            yield Run(offset, length, RunKind.DATA, offset)
            return
        end = offset + length
        block_size = self.block_size
        while offset < end:
            block, in_block = divmod(offset, block_size)
            piece = min(end - offset, block_size - in_block)
            entry = self.bat[block]
            if entry == UNUSED_ENTRY:
                last = block + 1
                last_block = (end - 1) // block_size if whole_stretches else block
                while last <= last_block and self.bat[last] == UNUSED_ENTRY:
                    last += 1
                piece = min(end, last * block_size) - offset
                yield Run(offset, piece, RunKind.UNALLOCATED)
                offset += piece
                continue
            if block in self.bad_blocks:
                raise CorruptImageError(self.path, self.bad_blocks[block], field="bat")
            data_start = entry * SECTOR + self.bitmap_size
            first = in_block // SECTOR
            last = -(-(in_block + piece) // SECTOR)
            for run_first, run_end, is_set in bit_runs(self._bitmap(block), first, last):
                lo = max(in_block, run_first * SECTOR)
                hi = min(in_block + piece, run_end * SECTOR)
                if is_set:
                    yield Run(offset + lo - in_block, hi - lo, RunKind.DATA, data_start + lo)
                else:
                    yield Run(offset + lo - in_block, hi - lo, RunKind.UNALLOCATED)
            offset += piece

    def _block_status(self, offset: int, length: int) -> Iterator[Run]:
        if not self.is_fixed:
            yield from self._map(offset, length, whole_stretches=True)
            return
        # a fixed VHD is raw: report the host file's holes as zeros
        yield from host_data_runs(self.file, offset, length)

    # A flush publishes the bitmap bits and BAT entries of every request since the last
    # one, after their data: a barrier first when there are new BAT entries, or any bits
    # in a differencing disk (a set bit over data that never reached the disk would hide
    # the parent's sector); in a dynamic disk a clear bit reads zeros and the data area of
    # a clear-bit sector is zero on disk, so either order reads old or new data.  Until
    # then the in-memory BAT and bitmaps serve reads.
    def _flush_metadata(self) -> None:
        self._publish()

    def _publish(self) -> None:
        entries, self.unpublished_entries = self.unpublished_entries, {}
        bits, self.unpublished_bits = self.unpublished_bits, {}
        if not entries and not bits:
            return
        if entries or self.footer.disk_type == DiskType.DIFFERENCING:
            self.file.sync()  # the barrier: blocks and data are durable before they show
        for block, (first, last) in bits.items():
            self._write_bits(block, first, last)
        for block, entry in entries.items():
            self._write_bat_entry(block, entry)

    def _write_unallocated(self, run: Run, data: memoryview) -> None:
        if self.backing is None and is_zero(data):
            return  # clear bits already read as zeros
        block, in_block = divmod(run.offset, self.block_size)
        first = in_block // SECTOR
        last = -(-(in_block + run.length) // SECTOR)
        aligned_start = block * self.block_size + first * SECTOR
        payload = self._whole_sectors(aligned_start, (last - first) * SECTOR,
                                      run.offset - aligned_start, data)
        self._store_sectors(block, first, last,
                            lambda host: self.file.pwrite(payload, host))

    def _copy_unallocated(self, run: Run, source: HostFile, source_offset: int) -> None:
        """Whole sectors go from the source file to their place in the kernel."""
        if run.offset % SECTOR or run.length % SECTOR:
            super()._copy_unallocated(run, source, source_offset)
            return
        block, in_block = divmod(run.offset, self.block_size)
        first = in_block // SECTOR
        self._store_sectors(block, first, first + run.length // SECTOR,
                            lambda host: self.file.copy_range(source, source_offset,
                                                              run.length, host))

    def _store_sectors(self, block: int, first: int, last: int,
                       write_data: Callable[[int], None]) -> None:
        """Put whole sectors ``[first, last)`` of a block in place (``write_data(host)``)
        and set their bits, allocating the block first if it has none."""
        mask = sector_mask(first, last)
        if self.bat[block] == UNUSED_ENTRY:
            self._allocate_block(block, first, write_data, mask)
            return
        host = self.bat[block] * SECTOR
        write_data(host + self.bitmap_size + first * SECTOR)
        self.bitmap_cache[block] = self._bitmap(block) | mask
        if block in self.unpublished_entries:
            self.file.pwrite(bitmap_to_disk(self.bitmap_cache[block], self.bitmap_size), host)
            return  # the block itself is not visible yet
        span = self.unpublished_bits.get(block, (first, last))
        self.unpublished_bits[block] = (min(span[0], first), max(span[1], last))

    def _whole_sectors(self, start: int, length: int, rel: int,
                       data: memoryview) -> bytes | bytearray | memoryview:
        """``data`` widened to whole sectors, the edges filled from the layer below."""
        if rel == 0 and len(data) == length:
            return data
        buffer = bytearray(length)
        view = memoryview(buffer)
        if rel:
            self._read_below(start, view[:SECTOR])
        if (rel + len(data)) % SECTOR:
            self._read_below(start + length - SECTOR, view[length - SECTOR:])
        view[rel:rel + len(data)] = data
        return buffer

    def _allocate_block(self, block: int, first: int, write_data: Callable[[int], None],
                        mask: int) -> None:
        """Append a block where the end footer was: data and bitmap now, entry at publish."""
        host = self.footer_offset
        if self.cut_tail_before_append:
            self.file.truncate(host)
            self.cut_tail_before_append = False
        # the footer moves first, and is durable before the block overwrites the old one:
        # whatever a crash keeps, the file ends with a footer (and covers the block)
        self.footer_offset = host + self.bitmap_size + self.block_size
        self._write_end_footer()
        self.file.sync()
        write_data(host + self.bitmap_size + first * SECTOR)
        self.file.pwrite(bitmap_to_disk(mask, self.bitmap_size), host)
        self.bat[block] = host // SECTOR
        self.bitmap_cache[block] = mask
        self.unpublished_entries[block] = host // SECTOR

    def _write_bits(self, block: int, first: int, last: int) -> None:
        """Write the bitmap bytes covering sectors ``[first, last)`` of a block."""
        byte_first, byte_end = first // 8, -(-last // 8)
        raw = bitmap_to_disk(self.bitmap_cache[block], self.bitmap_size)
        self.file.pwrite(raw[byte_first:byte_end], self.bat[block] * SECTOR + byte_first)

    def _write_bat_entry(self, block: int, entry: int) -> None:
        assert self.header is not None
        self.bat[block] = entry
        self.file.pwrite(entry.to_bytes(4, "big"), self.header.table_offset + 4 * block)

    def _write_end_footer(self) -> None:
        self.file.pwrite(self.footer.pack(), self.footer_offset)
        self.footer_at_end = True

    def _discard(self, offset: int, length: int) -> None:
        if self.is_fixed or self.footer.disk_type == DiskType.DIFFERENCING:
            # freeing a differencing block would expose the parent: write zeros instead
            self.write_zeroes(offset, length)
            return
        self._publish()  # entries on disk before any is freed
        end = offset + length
        freed_tail = False
        while offset < end:
            block, in_block = divmod(offset, self.block_size)
            piece = min(end - offset, self.block_size - in_block)
            whole = in_block == 0 and (piece == self.block_size
                                       or offset + piece == self.size)
            if self.bat[block] == UNUSED_ENTRY:
                pass
            elif whole and block not in self.bad_blocks:
                freed_tail |= self._free_block(block)
            else:
                self.write_zeroes(offset, piece)
            offset += piece
        if freed_tail:
            self._shrink_to_last_block()

    def _free_block(self, block: int) -> bool:
        """Drop a block from the BAT; True when it was the last one in the file."""
        host = self.bat[block] * SECTOR
        self._write_bat_entry(block, UNUSED_ENTRY)
        self.bitmap_cache.pop(block, None)
        return host + self.bitmap_size + self.block_size == self.footer_offset

    def _shrink_to_last_block(self) -> None:
        """Give the space after the last referenced block back to the host."""
        _, last_end, _ = self._scan_blocks(None)
        if last_end < self.footer_offset:
            self.file.sync()  # no BAT entry names the freed blocks before they are reused
            self.footer_offset = last_end
            self._write_end_footer()
            self.file.sync()  # the new footer is durable before the old one is cut off
            self.file.truncate(last_end + FOOTER_SIZE)

    # --- check and info -----------------------------------------------------------
    def _check(self, report: CheckReport, repair: bool) -> None:
        if self.is_fixed:
            return
        self._check_footers(report, repair)
        self._check_blocks(report)

    def _check_footers(self, report: CheckReport, repair: bool) -> None:
        head, head_problem = parse_footer(self.file.pread(FOOTER_SIZE, 0))
        file_size = self.file.size()
        end, end_problem = parse_footer(self.file.pread(FOOTER_SIZE, file_size - FOOTER_SIZE))
        problems = []
        if head is None:
            problems.append(f"footer copy at offset 0 is damaged: {head_problem}")
        if end is None:
            problems.append(f"footer at end of file is damaged: {end_problem}")
        elif head is not None and head.pack() != end.pack():
            problems.append("footer copies at offset 0 and at end of file disagree")
        if not problems:
            return
        if repair and not self.readonly:
            self.file.pwrite(self.footer.pack(), 0)
            self._write_end_footer()
            self.file.truncate(self.footer_offset + FOOTER_SIZE)
            self.cut_tail_before_append = False
            self.file.sync()
            report.repaired.extend(problems)
        else:
            for problem in problems:
                report.corrupt(problem)

    def _check_blocks(self, report: CheckReport) -> None:
        for message in self.bad_blocks.values():
            report.corrupt(message)
        _, _, leaked = self._scan_blocks(self.footer_offset)
        if leaked:
            report.leak(f"{leaked} bytes between blocks are not referenced by the BAT")

    def _scan_blocks(self, data_limit: int | None) -> tuple[dict[int, str], int, int]:
        """Blocks that cannot be trusted (why), the end of the last block, leaked bytes.

        A block is bad when it overlaps the metadata or another block, runs past
        ``data_limit`` (the footer), or (without a footer to bound it) has its bitmap
        outside the file: the next block is appended after the last good one, so a
        corrupt entry can never make a write grow the file by more than one block.
        Leaks are gaps between and after blocks; what precedes the first block is
        alignment padding, never a leak, and so is a gap shorter than
        ``DATA_ALIGNMENT`` that puts the next block's data on that boundary (Hyper-V
        starts every block's data on a 4 KiB boundary, bitmap just before).
        """
        bad: dict[int, str] = {}
        file_end = self.file.size()
        span = self.bitmap_size + self.block_size
        metadata_end = max(end for _, end, _ in self.metadata)
        blocks = sorted((entry * SECTOR, index) for index, entry in enumerate(self.bat)
                        if entry != UNUSED_ENTRY)
        last_end, previous_end, previous_index, leaked = metadata_end, 0, -1, 0
        for start, index in blocks:
            end = start + span
            if start < metadata_end and any(s < end and start < e for s, e, _ in self.metadata):
                bad[index] = f"block {index} at {start} overlaps the image metadata"
                continue
            if data_limit is not None and end > data_limit:
                bad[index] = f"block {index} at {start} runs past the footer at {data_limit}"
                continue
            if start + self.bitmap_size > file_end:
                bad[index] = f"block {index} at {start} is past the end of the " \
                             f"{file_end}-byte file"
                continue
            if start < previous_end:
                bad[index] = f"block {index} at {start} overlaps block {previous_index}"
                bad.setdefault(previous_index, f"block {previous_index} is overlapped by "
                               f"block {index}")
            elif previous_index >= 0 and not _alignment_padding(start - previous_end,
                                                                 start + self.bitmap_size):
                leaked += start - previous_end
            last_end = max(last_end, end)
            previous_end, previous_index = max(previous_end, end), index
        if blocks and data_limit is not None:
            leaked += max(0, data_limit - last_end)
        return bad, last_end, leaked

    def _info(self) -> dict[str, Any]:
        footer = self.footer
        facts: dict[str, Any] = {
            "subformat": DISK_TYPE_NAMES[footer.disk_type],
            "creator": footer.creator_app.decode("latin-1"),
            "current-size": footer.current_size,
            "unique-id": str(uuid.UUID(bytes=footer.unique_id)),
        }
        if self.header is not None:
            facts["block-size"] = self.block_size
            facts["max-table-entries"] = self.header.max_table_entries
        if footer.disk_type == DiskType.DIFFERENCING and self.header is not None:
            facts["parent-unique-id"] = str(uuid.UUID(bytes=self.header.parent_unique_id))
        return facts


def _alignment_padding(gap: int, data_start: int) -> bool:
    """Whether a gap before a block only aligns the block's data (Hyper-V's layout)."""
    return 0 < gap < DATA_ALIGNMENT and data_start % DATA_ALIGNMENT == 0


__all__ = ["DiskType", "DynamicHeader", "Footer", "ParentLocator", "VpcImage", "VpcWarning",
           "chs_for_sectors"]
