"""VHDX images (Hyper-V), after Microsoft's MS-VHDX specification v1.0.

Theory of operation
-------------------
A VHDX file is a sequence of 1 MiB-aligned regions::

    0        file type identifier ("vhdxfile" + creator string)
    64 KiB   header 1      } two copies; the valid one with the highest sequence
    128 KiB  header 2      } number is current (MS-VHDX 2.2.2)
    192 KiB  region table 1 } identical copies naming the BAT and metadata
    256 KiB  region table 2 } regions (2.2.3)
    1 MiB... the log, the metadata region, the BAT, payload and sector bitmap blocks

The *metadata region* holds a table of items (file parameters, virtual disk
size, logical/physical sector size, page 83 identifier, parent locator).  The
*BAT* maps each payload block (``block_size`` bytes of the virtual disk) to a
state and a 1 MiB-granular file offset; after every ``chunk_ratio`` payload
entries comes the entry of one 1 MiB *sector bitmap block*, which says, one bit
per logical sector, which sectors of a differencing disk this file holds.

Every update of metadata (BAT entries, sector bitmaps) goes through the *log*, a
circular buffer of 4 KiB sectors: an entry carries whole 4 KiB pages of new
metadata, is written and made durable, and only then are the pages written in
place.  A crash at any point leaves either an unfinished entry (ignored: its
checksum fails) or a complete one that the next open replays.  Payload data
goes into freshly allocated blocks, which are made durable before the log
entry that makes them reachable.

This driver batches metadata changes in memory and commits them as one log
entry (or several, each applied before the next) at ``flush()``; each entry's
``tail`` is itself, so the active sequence is always one entry.  Each writing
session uses a fresh LogGuid (set in the header before the first change and
cleared at close), and a new LogGuid is chosen instead of wrapping the log, so
older entries can never be mistaken for the active sequence.

A read-only open of an image whose log was not replayed replays it into an
in-memory overlay of 4 KiB pages; the file is not touched.  A read-write open
replays it in place.  The active sequence is searched highest head first with a
bounded number of steps, so a crafted log cannot stall an open.

Block states are read with the spec's meaning (2.5.1.1): NOT_PRESENT is the
parent's content in a differencing disk and "not allocated" (zeros) otherwise;
ZERO, UNMAPPED and UNDEFINED read as zeros; PARTIALLY_PRESENT consults the
sector bitmap.  A differencing write into a NOT_PRESENT block completes partial
sectors from the parent and sets bitmap bits; whole-block writes and writes into
ZERO/UNMAPPED blocks make the block FULLY_PRESENT.  ``discard`` turns whole
blocks UNMAPPED (ZERO in a differencing disk, hiding the parent) and zeroes the
partial ends; fixed disks keep every block and get zeros written.

Not modelled: resizing, the 0.95 draft's log, parents that are not VHDX (the only
locator type the spec defines), and reuse of space freed by discard.
"""

from __future__ import annotations

import bisect
import os
import struct
import sys
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import (
    BackingChainError,
    CorruptImageError,
    InvalidOptionError,
    UnsupportedImageError,
)
from .hostfile import HostFile, is_zero
from .image import (
    BackingSpec,
    CheckReport,
    Image,
    OptionSpec,
    ProbeInput,
    Run,
    RunKind,
    choice,
    parse_size,
)
from .registry import register

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

FILE_SIGNATURE = b"vhdxfile"
HEADER_OFFSETS = (64 * KiB, 128 * KiB)
HEADER_SIZE = 4 * KiB
REGION_TABLE_OFFSETS = (192 * KiB, 256 * KiB)
REGION_TABLE_SIZE = 64 * KiB
HEADER_SECTION_SIZE = 1 * MiB
METADATA_TABLE_SIZE = 64 * KiB
MAX_TABLE_ENTRIES = 2047
MAX_METADATA_ITEM = 1 * MiB
LOG_SECTOR = 4 * KiB
SECTORS_PER_BITMAP_BLOCK = 1 << 23
BITMAP_BLOCK_SIZE = 1 * MiB
MAX_VIRTUAL_SIZE = 64 * TiB
MIN_BLOCK_SIZE = 1 * MiB
MAX_BLOCK_SIZE = 256 * MiB
DEFAULT_BLOCK_SIZE = 32 * MiB
DEFAULT_LOG_SIZE = 1 * MiB
MAX_LOG_SIZE = 1 * GiB  # the spec allows up to 4 GiB; the whole log is read at replay
SECTOR_SIZES = (512, 4096)
CREATOR = "emu"


def _guid(text: str) -> bytes:
    """A GUID as MS-VHDX stores it (the mixed-endian Windows layout)."""
    return uuid.UUID(text).bytes_le


def guid_text(raw: bytes) -> str:
    return "{" + str(uuid.UUID(bytes_le=bytes(raw))).upper() + "}"


def new_guid() -> bytes:
    return uuid.uuid4().bytes_le


ZERO_GUID = bytes(16)

# Region table entries (2.2.3.2)
BAT_REGION = _guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = _guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
KNOWN_REGIONS = {BAT_REGION: "BAT", METADATA_REGION: "metadata"}

# Metadata items (2.6.2)
FILE_PARAMETERS = _guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = _guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE83_DATA = _guid("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE = _guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE = _guid("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = _guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
VHDX_PARENT_LOCATOR_TYPE = _guid("B04AEFB7-D19E-4A81-B789-25B8E9445913")
KNOWN_METADATA = {
    FILE_PARAMETERS: "file parameters", VIRTUAL_DISK_SIZE: "virtual disk size",
    PAGE83_DATA: "page 83 data", LOGICAL_SECTOR_SIZE: "logical sector size",
    PHYSICAL_SECTOR_SIZE: "physical sector size", PARENT_LOCATOR: "parent locator",
}
REQUIRED_METADATA = (FILE_PARAMETERS, VIRTUAL_DISK_SIZE, LOGICAL_SECTOR_SIZE,
                     PHYSICAL_SECTOR_SIZE)

META_IS_USER = 0x1
META_IS_VIRTUAL_DISK = 0x2
META_IS_REQUIRED = 0x4
PARAM_LEAVE_BLOCKS_ALLOCATED = 0x1
PARAM_HAS_PARENT = 0x2
REGION_REQUIRED = 0x1

# BAT entry states (2.5.1)
PAYLOAD_BLOCK_NOT_PRESENT = 0
PAYLOAD_BLOCK_UNDEFINED = 1
PAYLOAD_BLOCK_ZERO = 2
PAYLOAD_BLOCK_UNMAPPED = 3
PAYLOAD_BLOCK_UNMAPPED_V095 = 5  # the 0.95 draft's value; read like UNMAPPED
PAYLOAD_BLOCK_FULLY_PRESENT = 6
PAYLOAD_BLOCK_PARTIALLY_PRESENT = 7
SB_BLOCK_NOT_PRESENT = 0
SB_BLOCK_PRESENT = 6
BAT_STATE_MASK = 0x7
BAT_OFFSET_SHIFT = 20  # FileOffsetMB occupies bits 20..63

PAYLOAD_STATE_NAMES = {
    PAYLOAD_BLOCK_NOT_PRESENT: "NOT_PRESENT", PAYLOAD_BLOCK_UNDEFINED: "UNDEFINED",
    PAYLOAD_BLOCK_ZERO: "ZERO", PAYLOAD_BLOCK_UNMAPPED: "UNMAPPED",
    PAYLOAD_BLOCK_UNMAPPED_V095: "UNMAPPED(0.95)", PAYLOAD_BLOCK_FULLY_PRESENT: "FULLY_PRESENT",
    PAYLOAD_BLOCK_PARTIALLY_PRESENT: "PARTIALLY_PRESENT",
}
# States whose blocks hold no payload in the file, and how each reads (2.5.1.1):
# in a differencing disk NOT_PRESENT defers to the parent; the others read as
# zeros everywhere (UNDEFINED may return anything, zeros included).
UNBACKED_READS = {
    PAYLOAD_BLOCK_NOT_PRESENT: RunKind.UNALLOCATED,  # the parent's, or zeros without one
    PAYLOAD_BLOCK_UNDEFINED: RunKind.ZERO,
    PAYLOAD_BLOCK_ZERO: RunKind.ZERO,
    PAYLOAD_BLOCK_UNMAPPED: RunKind.ZERO,
    PAYLOAD_BLOCK_UNMAPPED_V095: RunKind.ZERO,
}

# --- on-disk structures, declared once ----------------------------------------
FILE_IDENTIFIER = struct.Struct("<8s512s")
HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
REGION_TABLE_HEADER = struct.Struct("<4sIII")
REGION_TABLE_ENTRY = struct.Struct("<16sQII")
METADATA_TABLE_HEADER = struct.Struct("<8sHH20x")
METADATA_TABLE_ENTRY = struct.Struct("<16sIII4x")
FILE_PARAMETERS_ITEM = struct.Struct("<II")
U64 = struct.Struct("<Q")
U32 = struct.Struct("<I")
PARENT_LOCATOR_HEADER = struct.Struct("<16sHH")
PARENT_LOCATOR_ENTRY = struct.Struct("<IIHH")
LOG_ENTRY_HEADER = struct.Struct("<4sIIIQII16sQQ")
LOG_DESCRIPTOR = struct.Struct("<4sIQQQ")
LOG_DATA_SECTOR = struct.Struct("<4sI4084sI")
CHECKSUM_AT = 4  # every checksummed structure keeps its CRC-32C at byte 4


def _crc32c(data: bytes) -> int:
    """CRC-32C; the crc32c package loads on first use (its import costs more than probing
    every format, and probing a file need not pay it)."""
    import crc32c
    return int(crc32c.crc32c(data))


def _with_checksum(buf: bytearray) -> bytes:
    buf[CHECKSUM_AT:CHECKSUM_AT + 4] = bytes(4)
    U32.pack_into(buf, CHECKSUM_AT, _crc32c(bytes(buf)))
    return bytes(buf)


def _checksum_ok(raw: bytes) -> bool:
    stored = U32.unpack_from(raw, CHECKSUM_AT)[0]
    work = bytearray(raw)
    work[CHECKSUM_AT:CHECKSUM_AT + 4] = bytes(4)
    return _crc32c(bytes(work)) == stored


def _align_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _is_pow2(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass(frozen=True)
class VhdxHeader:
    """One of the two 4 KiB headers (2.2.2)."""

    sequence_number: int
    file_write_guid: bytes
    data_write_guid: bytes
    log_guid: bytes
    log_version: int
    version: int
    log_length: int
    log_offset: int

    SIGNATURE = b"head"

    def pack(self) -> bytes:
        buf = bytearray(HEADER_SIZE)
        HEADER.pack_into(buf, 0, self.SIGNATURE, 0, self.sequence_number, self.file_write_guid,
                         self.data_write_guid, self.log_guid, self.log_version, self.version,
                         self.log_length, self.log_offset)
        return _with_checksum(buf)

    @classmethod
    def unpack(cls, raw: bytes) -> VhdxHeader | None:
        """The header in ``raw``, or None when its signature or checksum is wrong."""
        if len(raw) < HEADER_SIZE or raw[:4] != cls.SIGNATURE or not _checksum_ok(raw):
            return None
        (_, _, seq, fwg, dwg, lg, log_version, version, log_length,
         log_offset) = HEADER.unpack_from(raw)
        return cls(seq, fwg, dwg, lg, log_version, version, log_length, log_offset)


@dataclass(frozen=True)
class RegionEntry:
    guid: bytes
    file_offset: int
    length: int
    required: bool


def pack_region_table(entries: list[RegionEntry]) -> bytes:
    buf = bytearray(REGION_TABLE_SIZE)
    REGION_TABLE_HEADER.pack_into(buf, 0, b"regi", 0, len(entries), 0)
    for i, entry in enumerate(entries):
        REGION_TABLE_ENTRY.pack_into(buf, REGION_TABLE_HEADER.size + i * REGION_TABLE_ENTRY.size,
                                     entry.guid, entry.file_offset, entry.length,
                                     REGION_REQUIRED if entry.required else 0)
    return _with_checksum(buf)


def unpack_region_table(raw: bytes) -> list[RegionEntry] | None:
    """The region table in ``raw``, or None when its signature, checksum or count is wrong."""
    if len(raw) < REGION_TABLE_SIZE or raw[:4] != b"regi" or not _checksum_ok(raw):
        return None
    _, _, count, _ = REGION_TABLE_HEADER.unpack_from(raw)
    if count > MAX_TABLE_ENTRIES:
        return None
    entries = []
    for i in range(count):
        guid, offset, length, bits = REGION_TABLE_ENTRY.unpack_from(
            raw, REGION_TABLE_HEADER.size + i * REGION_TABLE_ENTRY.size)
        entries.append(RegionEntry(guid, offset, length, bool(bits & REGION_REQUIRED)))
    return entries


def pack_metadata_region(items: list[tuple[bytes, int, bytes]], length: int) -> bytes:
    """A metadata region holding ``(item_id, flags, payload)`` items after its table."""
    buf = bytearray(length)
    METADATA_TABLE_HEADER.pack_into(buf, 0, b"metadata", 0, len(items))
    at = METADATA_TABLE_SIZE
    for i, (item_id, flags, payload) in enumerate(items):
        METADATA_TABLE_ENTRY.pack_into(buf, METADATA_TABLE_HEADER.size
                                       + i * METADATA_TABLE_ENTRY.size,
                                       item_id, at, len(payload), flags)
        buf[at:at + len(payload)] = payload
        at = _align_up(at + len(payload), 4 * KiB)
    return bytes(buf)


# --- the log (2.3) ----------------------------------------------------------

@dataclass
class LogEntry:
    """One parsed, checksum-verified log entry."""

    position: int  # offset inside the log
    length: int
    tail: int
    sequence_number: int
    flushed_file_offset: int
    last_file_offset: int
    # (file offset, 4 KiB page) for data descriptors, (file offset, zero length) for zero ones
    writes: list[tuple[int, bytes | int]] = field(default_factory=list)


def _descriptor_sectors(count: int) -> int:
    return _align_up(LOG_ENTRY_HEADER.size + count * LOG_DESCRIPTOR.size, LOG_SECTOR) // LOG_SECTOR


def max_pages_per_entry(log_length: int) -> int:
    sectors = log_length // LOG_SECTOR
    count = max(0, sectors - 1)
    while count and _descriptor_sectors(count) + count > sectors:
        count -= 1
    return count


def build_log_entry(sequence_number: int, log_guid: bytes, tail: int, file_size: int,
                    pages: list[tuple[int, bytes]]) -> bytes:
    """A log entry writing each 4 KiB ``page`` at its file offset (2.3.1)."""
    header_sectors = _descriptor_sectors(len(pages))
    length = (header_sectors + len(pages)) * LOG_SECTOR
    buf = bytearray(length)
    LOG_ENTRY_HEADER.pack_into(buf, 0, b"loge", 0, length, tail, sequence_number, len(pages), 0,
                               log_guid, file_size, file_size)
    for i, (file_offset, page) in enumerate(pages):
        leading = U64.unpack_from(page, 0)[0]
        trailing = U32.unpack_from(page, LOG_SECTOR - 4)[0]
        LOG_DESCRIPTOR.pack_into(buf, LOG_ENTRY_HEADER.size + i * LOG_DESCRIPTOR.size, b"desc",
                                 trailing, leading, file_offset, sequence_number)
        LOG_DATA_SECTOR.pack_into(buf, (header_sectors + i) * LOG_SECTOR, b"data",
                                  sequence_number >> 32, page[8:LOG_SECTOR - 4],
                                  sequence_number & 0xFFFFFFFF)
    return _with_checksum(buf)


def parse_log_entry(log: bytes, position: int, log_guid: bytes) -> LogEntry | None:
    """The valid entry starting at ``position`` of the (circular) ``log``, else None."""
    size = len(log)

    def window(start: int, length: int) -> bytes:
        start %= size
        if start + length <= size:
            return log[start:start + length]
        return log[start:] + log[:start + length - size]

    head = log[position:position + LOG_ENTRY_HEADER.size]
    if len(head) < LOG_ENTRY_HEADER.size or head[:4] != b"loge":
        return None
    (_, _, length, tail, seq, count, _, guid, flushed,
     last) = LOG_ENTRY_HEADER.unpack_from(head)
    if (guid != log_guid or seq == 0 or length == 0 or length % LOG_SECTOR or length > size
            or tail % LOG_SECTOR or tail >= size
            or _descriptor_sectors(count) * LOG_SECTOR > length):
        return None
    raw = window(position, length)
    if not _checksum_ok(raw):
        return None
    entry = LogEntry(position, length, tail, seq, flushed, last)
    data_sector = _descriptor_sectors(count)
    for i in range(count):
        sig, trailing, leading_or_len, file_offset, desc_seq = LOG_DESCRIPTOR.unpack_from(
            raw, LOG_ENTRY_HEADER.size + i * LOG_DESCRIPTOR.size)
        if desc_seq != seq or file_offset % LOG_SECTOR:
            return None
        if sig == b"zero":
            if leading_or_len % LOG_SECTOR:
                return None
            entry.writes.append((file_offset, leading_or_len))
        elif sig == b"desc":
            at = data_sector * LOG_SECTOR
            if at + LOG_SECTOR > length:
                return None
            dsig, high, payload, low = LOG_DATA_SECTOR.unpack_from(raw, at)
            if dsig != b"data" or (high << 32 | low) != seq:
                return None
            entry.writes.append(
                (file_offset, U64.pack(leading_or_len) + payload + U32.pack(trailing)))
            data_sector += 1
        else:
            return None
    return entry


class LogTooTangledError(ValueError):
    """The log holds so many interlinked entries that finding its active sequence would
    take unbounded time (only a crafted log does this)."""


def find_active_sequence(log: bytes, log_guid: bytes) -> list[LogEntry]:
    """The entries of the active sequence, tail first (2.3.3), or [] when there is none.

    The active sequence ends at the valid entry with the highest sequence number whose
    ``tail`` leads, entry by entry with sequence numbers rising by one, back to it.
    """
    entries = {}
    for position in range(0, len(log), LOG_SECTOR):
        entry = parse_log_entry(log, position, log_guid)
        if entry is not None:
            entries[position] = entry
    budget = 8 * len(entries) + 4096
    for head in sorted(entries.values(), key=lambda e: -e.sequence_number):
        chain: list[LogEntry] = []
        node = entries.get(head.tail)
        while node is not None and node.sequence_number <= head.sequence_number:
            if chain and node.sequence_number != chain[-1].sequence_number + 1:
                break
            chain.append(node)
            budget -= 1
            if budget < 0:
                raise LogTooTangledError("too many interlinked log entries")
            if node is head:
                return chain
            node = entries.get((node.position + node.length) % len(log))
    return []


# --- the driver ---------------------------------------------------------------

def bat_entry_count(payload_blocks: int, chunk_ratio: int, differencing: bool) -> int:
    """BAT entries (2.5): payload entries with a sector bitmap entry after every
    ``chunk_ratio`` of them; a differencing disk has every chunk's bitmap entry."""
    if differencing:
        return -(-payload_blocks // chunk_ratio) * (chunk_ratio + 1)
    return payload_blocks + max(0, payload_blocks - 1) // chunk_ratio


def _parse_block_size(value: Any) -> int:
    size = parse_size(value)
    if not _is_pow2(size) or not MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block size {size} is not a power of two from 1 MiB to 256 MiB")
    return size


def _parse_log_size(value: Any) -> int:
    size = parse_size(value)
    if size < MiB or size % MiB or size > MAX_LOG_SIZE:
        raise ValueError(f"log size {size} is not a multiple of 1 MiB up to 1 GiB")
    return size


def _parse_sector_size(value: Any) -> int:
    size = parse_size(value)
    if size not in SECTOR_SIZES:
        raise ValueError(f"sector size {size} is not 512 or 4096")
    return size


@register
class VhdxImage(Image):
    format_name = "vhdx"
    supports_backing = True
    create_options = {
        "subformat": OptionSpec(choice("dynamic", "fixed"), "dynamic (default) or fixed",
                                "dynamic"),
        "block_size": OptionSpec(_parse_block_size, "payload block size, 1M..256M "
                                 "(default 32M; 1M for an empty disk)"),
        "log_size": OptionSpec(_parse_log_size, "log size, a multiple of 1M", DEFAULT_LOG_SIZE),
        "logical_sector_size": OptionSpec(_parse_sector_size, "512 or 4096", 512),
        "physical_sector_size": OptionSpec(_parse_sector_size, "512 or 4096", 4096),
    }

    # filled in by open_file
    header: VhdxHeader
    header_slot: int
    block_size: int
    logical_sector_size: int
    physical_sector_size: int
    leave_blocks_allocated: bool
    has_parent: bool
    page83: bytes
    chunk_ratio: int
    payload_blocks: int
    bat: array
    bat_offset: int
    bat_length: int
    metadata_offset: int
    metadata_length: int
    parent_locator: dict[str, str]
    region_tables_valid: tuple[bool, bool]
    headers_valid: tuple[bool, bool]

    def _setup(self) -> None:
        self._bitmaps: dict[int, bytearray] = {}
        self._dirty_bat_pages: set[int] = set()
        self._dirty_bitmap_pages: set[tuple[int, int]] = set()
        self._overlay: dict[int, bytes] = {}  # read-only replay: file page -> content
        self._overlay_keys: list[int] = []
        self._overlay_entries = 0
        self._replayed_size = 0  # the file size the in-memory replay implies
        self._replayed_entries = 0
        self._open_repairs: list[str] = []
        self._session = False
        self._log_head = 0
        self._log_sequence = 1
        self._file_end = 0
        self._data_limit = 0
        self._reserved: list[tuple[int, int, str]] = []

    # --- probing and creation ---------------------------------------------
    @classmethod
    def probe(cls, data: ProbeInput) -> int:
        return 100 if data.head[:8] == FILE_SIGNATURE else 0

    @classmethod
    def create_file(cls, file: HostFile, size: int, options: dict[str, Any],
                    backing: Image | None) -> None:
        # an empty disk gets the smallest blocks: QEMU wants its BAT region long (below)
        block_size = options["block_size"] or (MIN_BLOCK_SIZE if size == 0
                                               else DEFAULT_BLOCK_SIZE)
        log_size = options["log_size"]
        logical = options["logical_sector_size"]
        physical = options["physical_sector_size"]
        fixed = options["subformat"] == "fixed"
        size = _align_up(size, logical)  # the spec wants whole sectors; qemu rounds up too
        if size > MAX_VIRTUAL_SIZE:
            raise InvalidOptionError(file.path, f"{size} bytes is over the 64 TiB limit",
                                     field="size")
        parent_locator = None
        if backing is not None:
            if not isinstance(backing, VhdxImage):
                raise InvalidOptionError(file.path, "a VHDX parent must be a VHDX image "
                                         "(the only parent type the locator defines)",
                                         field="backing")
            if fixed:
                raise InvalidOptionError(file.path, "a differencing image cannot be fixed",
                                         field="subformat")
            if size != backing.size:
                raise InvalidOptionError(file.path, "a differencing image must have its "
                                         "parent's size", field="size")
            logical = backing.logical_sector_size
            parent_locator = _pack_parent_locator(backing, file.path)
        chunk_ratio = (SECTORS_PER_BITMAP_BLOCK * logical) // block_size
        payload_blocks = -(-size // block_size)
        bat_entries = bat_entry_count(payload_blocks, chunk_ratio, backing is not None)
        log_offset = HEADER_SECTION_SIZE
        metadata_offset = log_offset + log_size
        metadata_length = MiB
        bat_offset = metadata_offset + metadata_length
        region_entries = bat_entries
        if payload_blocks == 0 and backing is None:
            # QEMU counts the BAT of an empty disk with a 32-bit "blocks - 1" that wraps
            # (vhdx_calc_bat_entries) and refuses a BAT region shorter than that count:
            # size the region so (it stays a sparse run of zeros, NOT_PRESENT)
            region_entries = 0xFFFFFFFF >> (chunk_ratio.bit_length() - 1)
        bat_length = max(MiB, _align_up(region_entries * 8, MiB))
        data_offset = bat_offset + bat_length

        file.truncate(0)
        creator = CREATOR.encode("utf-16-le")
        file.pwrite(FILE_IDENTIFIER.pack(FILE_SIGNATURE, creator), 0)
        header = VhdxHeader(0, new_guid(), new_guid(), ZERO_GUID, 0, 1, log_size, log_offset)
        for slot, offset in enumerate(HEADER_OFFSETS):
            file.pwrite(replace(header, sequence_number=slot).pack(), offset)
        regions = [RegionEntry(BAT_REGION, bat_offset, bat_length, True),
                   RegionEntry(METADATA_REGION, metadata_offset, metadata_length, True)]
        for offset in REGION_TABLE_OFFSETS:
            file.pwrite(pack_region_table(regions), offset)
        params = PARAM_LEAVE_BLOCKS_ALLOCATED if fixed else 0
        if backing is not None:
            params = PARAM_HAS_PARENT
        disk = META_IS_VIRTUAL_DISK | META_IS_REQUIRED
        items = [
            (FILE_PARAMETERS, META_IS_REQUIRED, FILE_PARAMETERS_ITEM.pack(block_size, params)),
            (VIRTUAL_DISK_SIZE, disk, U64.pack(size)),
            (PAGE83_DATA, disk, new_guid()),
            (LOGICAL_SECTOR_SIZE, disk, U32.pack(logical)),
            (PHYSICAL_SECTOR_SIZE, disk, U32.pack(physical)),
        ]
        if parent_locator is not None:
            items.append((PARENT_LOCATOR, META_IS_REQUIRED, parent_locator))
        file.pwrite(pack_metadata_region(items, metadata_length), metadata_offset)

        end = data_offset
        if fixed:
            bat = array("Q", bytes(bat_entries * 8))
            for block in range(payload_blocks):
                bat[block + block // chunk_ratio] = end | PAYLOAD_BLOCK_FULLY_PRESENT
                end += block_size
            if sys.byteorder != "little":
                bat.byteswap()
            file.pwrite(bat.tobytes(), bat_offset)
        # the log, the rest of the BAT (all of it when dynamic: NOT_PRESENT is 0) are
        # zeros already; extend the file to its end so every region lies inside it
        file.truncate(end)
        if fixed:  # truly preallocate: write the zeros (a sparse hole is not a fixed disk)
            chunk = bytes(4 * MiB)
            for offset in range(data_offset, end, len(chunk)):
                file.pwrite(chunk[:min(len(chunk), end - offset)], offset)

    # --- opening --------------------------------------------------------------
    @classmethod
    def open_file(cls, file: HostFile, *, readonly: bool, options: dict[str, Any]) -> Image:
        image = cls(file, readonly=readonly)
        image._setup()
        image._load()
        return image

    def _corrupt(self, message: str, fld: str | None = None) -> CorruptImageError:
        return CorruptImageError(self.path, message, field=fld)

    def _load(self) -> None:
        file_size = self.file.size()
        if file_size < HEADER_SECTION_SIZE:
            raise self._corrupt(f"file is {file_size} bytes, shorter than the 1 MiB header "
                                "section")
        if self.file.pread(8, 0) != FILE_SIGNATURE:
            raise self._corrupt("no 'vhdxfile' signature", "file identifier")
        self._load_headers(file_size)
        self._load_regions(file_size)
        if self.header.log_guid != ZERO_GUID:
            self._replay_log(file_size)
            file_size = max(file_size, self.file.size())
        self._load_metadata()
        self._load_bat(file_size)
        used_end = self._highest_used(file_size)
        if not self.readonly and used_end > file_size:
            raise self._corrupt(f"BAT entries reach {used_end}, beyond the {file_size}-byte "
                                "file; open read-only to inspect it", "BAT")
        self._file_end = _align_up(max(file_size, used_end), MiB)
        # a read-only open keeps blocks past the end inspectable (check reports them);
        # reading one is refused, as qemu refuses the image: its data is not there
        self._data_limit = max(file_size, self._replayed_size)
        self._reserved = self._reserved_regions()
        if not self.readonly and not all(self.headers_valid):
            self._write_header()  # a header torn by a crash during an update: rewrite it
            self._open_repairs.append("rewrote the damaged header copy")

    def _load_headers(self, file_size: int) -> None:
        headers = [VhdxHeader.unpack(self.file.pread(HEADER_SIZE, offset))
                   for offset in HEADER_OFFSETS]
        self.headers_valid = (headers[0] is not None, headers[1] is not None)
        candidates = [(h.sequence_number, -slot, slot, h) for slot, h in enumerate(headers)
                      if h is not None]
        if not candidates:
            raise self._corrupt("neither header has a valid signature and checksum", "header")
        _, _, self.header_slot, header = max(candidates)
        if header.version != 1:
            raise UnsupportedImageError(self.path, f"version {header.version} (only 1 is known)",
                                        field="header.version")
        if header.log_version != 0:
            raise UnsupportedImageError(self.path, f"log version {header.log_version}",
                                        field="header.log_version")
        if (header.log_offset % MiB or header.log_length % MiB
                or header.log_offset < HEADER_SECTION_SIZE
                or header.log_offset + header.log_length > file_size):
            raise self._corrupt(f"log at {header.log_offset}+{header.log_length} is misaligned "
                                f"or outside the {file_size}-byte file", "header.log_offset")
        if header.log_length > MAX_LOG_SIZE:
            raise UnsupportedImageError(self.path, f"log of {header.log_length} bytes",
                                        field="header.log_length")
        self.header = header

    def _load_regions(self, file_size: int) -> None:
        tables = [unpack_region_table(self.file.pread(REGION_TABLE_SIZE, offset))
                  for offset in REGION_TABLE_OFFSETS]
        self.region_tables_valid = (tables[0] is not None, tables[1] is not None)
        table = tables[0] if tables[0] is not None else tables[1]
        if table is None:
            raise self._corrupt("neither region table has a valid signature and checksum",
                                "region table")
        found: dict[bytes, RegionEntry] = {}
        spans = [(0, HEADER_SECTION_SIZE, "header section")]
        if self.header.log_length:
            spans.append((self.header.log_offset, self.header.log_length, "log"))
        for entry in table:
            name = KNOWN_REGIONS.get(entry.guid)
            if name is None:
                if entry.required:
                    raise UnsupportedImageError(self.path, f"unknown required region "
                                                f"{guid_text(entry.guid)}", field="region table")
                continue
            if entry.guid in found:
                raise self._corrupt(f"{name} region listed twice", "region table")
            if (entry.file_offset % MiB or entry.length % MiB or entry.length == 0
                    or entry.file_offset + entry.length > file_size):
                raise self._corrupt(f"{name} region {entry.file_offset}+{entry.length} is "
                                    f"misaligned or outside the {file_size}-byte file",
                                    f"region table.{name}")
            for start, length, other in spans:
                if entry.file_offset < start + length and start < entry.file_offset + entry.length:
                    raise self._corrupt(f"{name} region overlaps the {other}",
                                        f"region table.{name}")
            spans.append((entry.file_offset, entry.length, name))
            found[entry.guid] = entry
        for guid, name in KNOWN_REGIONS.items():
            if guid not in found:
                raise self._corrupt(f"no {name} region", "region table")
        self.bat_offset, self.bat_length = found[BAT_REGION].file_offset, found[BAT_REGION].length
        self.metadata_offset = found[METADATA_REGION].file_offset
        self.metadata_length = found[METADATA_REGION].length

    def _load_metadata(self) -> None:
        table = self._read_host(self.metadata_offset, METADATA_TABLE_SIZE)
        signature, _, count = METADATA_TABLE_HEADER.unpack_from(table)
        if signature != b"metadata":
            raise self._corrupt("no 'metadata' signature", "metadata table")
        if count > MAX_TABLE_ENTRIES:
            raise self._corrupt(f"{count} entries (at most {MAX_TABLE_ENTRIES})",
                                "metadata table")
        items: dict[bytes, bytes] = {}
        for i in range(count):
            item_id, offset, length, flags = METADATA_TABLE_ENTRY.unpack_from(
                table, METADATA_TABLE_HEADER.size + i * METADATA_TABLE_ENTRY.size)
            name = KNOWN_METADATA.get(item_id)
            if flags & META_IS_USER:
                continue  # user metadata is the user's business
            if name is None:
                if flags & META_IS_REQUIRED:
                    raise UnsupportedImageError(self.path, f"unknown required metadata item "
                                                f"{guid_text(item_id)}", field="metadata table")
                continue
            if item_id in items:
                raise self._corrupt(f"{name} listed twice", "metadata table")
            if length and (offset < METADATA_TABLE_SIZE or length > MAX_METADATA_ITEM
                           or offset + length > self.metadata_length):
                raise self._corrupt(f"{name} item at {offset}+{length} lies outside the "
                                    "metadata region", f"metadata.{name}")
            items[item_id] = self._read_host(self.metadata_offset + offset, length)
        for item_id in REQUIRED_METADATA:
            if item_id not in items:
                raise self._corrupt(f"no {KNOWN_METADATA[item_id]} item", "metadata table")
        fixed_lengths = {FILE_PARAMETERS: 8, VIRTUAL_DISK_SIZE: 8, LOGICAL_SECTOR_SIZE: 4,
                         PHYSICAL_SECTOR_SIZE: 4, PAGE83_DATA: 16}
        for item_id, want in fixed_lengths.items():
            if item_id in items and len(items[item_id]) < want:
                raise self._corrupt(f"item is {len(items[item_id])} bytes, not {want}",
                                    f"metadata.{KNOWN_METADATA[item_id]}")
        block_size, params = FILE_PARAMETERS_ITEM.unpack_from(items[FILE_PARAMETERS])
        size = U64.unpack_from(items[VIRTUAL_DISK_SIZE])[0]
        logical = U32.unpack_from(items[LOGICAL_SECTOR_SIZE])[0]
        physical = U32.unpack_from(items[PHYSICAL_SECTOR_SIZE])[0]
        if not _is_pow2(block_size) or not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE:
            raise self._corrupt(f"block size {block_size} is not a power of two from 1 MiB to "
                                "256 MiB", "metadata.file parameters.block_size")
        if logical not in SECTOR_SIZES:
            raise self._corrupt(f"{logical} is not 512 or 4096", "metadata.logical sector size")
        if physical not in SECTOR_SIZES:
            raise self._corrupt(f"{physical} is not 512 or 4096", "metadata.physical sector size")
        if size > MAX_VIRTUAL_SIZE:
            raise UnsupportedImageError(self.path, f"virtual size {size} is over 64 TiB",
                                        field="metadata.virtual disk size")
        if size % logical:
            raise self._corrupt(f"virtual size {size} is not a multiple of the {logical}-byte "
                                "sector", "metadata.virtual disk size")
        self.block_size = block_size
        self.has_parent = bool(params & PARAM_HAS_PARENT)
        self.leave_blocks_allocated = bool(params & PARAM_LEAVE_BLOCKS_ALLOCATED) \
            and not self.has_parent
        self.size = size
        self.logical_sector_size = self.sector_size = logical
        self.physical_sector_size = physical
        self.page83 = items.get(PAGE83_DATA, ZERO_GUID)[:16]
        self.chunk_ratio = (SECTORS_PER_BITMAP_BLOCK * logical) // block_size
        self.payload_blocks = -(-size // block_size)
        self.parent_locator = {}
        if self.has_parent:
            if PARENT_LOCATOR not in items:
                raise self._corrupt("a differencing image without a parent locator",
                                    "metadata table")
            self.parent_locator = self._parse_parent_locator(items[PARENT_LOCATOR])
            self.backing_spec = self._backing_spec()

    def _parse_parent_locator(self, raw: bytes) -> dict[str, str]:
        fld = "metadata.parent locator"
        if len(raw) < PARENT_LOCATOR_HEADER.size:
            raise self._corrupt("item too short", fld)
        locator_type, _, count = PARENT_LOCATOR_HEADER.unpack_from(raw)
        if locator_type != VHDX_PARENT_LOCATOR_TYPE:
            raise UnsupportedImageError(self.path, f"parent locator type "
                                        f"{guid_text(locator_type)} (only VHDX parents are "
                                        "defined)", field=fld)
        if PARENT_LOCATOR_HEADER.size + count * PARENT_LOCATOR_ENTRY.size > len(raw):
            raise self._corrupt(f"{count} key/value entries do not fit the item", fld)
        pairs: dict[str, str] = {}
        for i in range(count):
            key_at, value_at, key_len, value_len = PARENT_LOCATOR_ENTRY.unpack_from(
                raw, PARENT_LOCATOR_HEADER.size + i * PARENT_LOCATOR_ENTRY.size)
            if key_at + key_len > len(raw) or value_at + value_len > len(raw) or not key_len:
                raise self._corrupt(f"entry {i} points outside the item", fld)
            try:
                key = raw[key_at:key_at + key_len].decode("utf-16-le")
                value = raw[value_at:value_at + value_len].decode("utf-16-le")
            except UnicodeDecodeError:
                raise self._corrupt(f"entry {i} is not UTF-16", fld) from None
            if key in pairs:
                raise self._corrupt(f"key {key!r} appears twice", fld)
            pairs[key] = value
        if "parent_linkage" not in pairs:
            raise self._corrupt("no parent_linkage key", fld)
        return pairs

    def _backing_spec(self) -> BackingSpec:
        here = os.path.dirname(os.path.abspath(self.path))
        candidates = []
        for key in ("relative_path", "volume_path", "absolute_win32_path"):
            value = self.parent_locator.get(key)
            if not value:
                continue
            if key == "relative_path":
                candidates.append(os.path.normpath(os.path.join(here, value.replace("\\", "/"))))
            elif value.startswith("/"):
                candidates.append(value)
            else:  # a Windows path: try its file name beside the child
                candidates.append(os.path.join(here, value.replace("\\", "/").rsplit("/", 1)[-1]))
        linkages = {self.parent_locator[k].upper() for k in ("parent_linkage", "parent_linkage2")
                    if k in self.parent_locator}
        display = self.parent_locator.get("relative_path") \
            or self.parent_locator.get("absolute_win32_path")

        def validate(parent: Image) -> None:
            if not isinstance(parent, VhdxImage):
                raise BackingChainError(self.path, f"parent {parent.path} is "
                                        f"{parent.format_name}, not VHDX", field="backing")
            linkage = guid_text(parent.header.data_write_guid)
            if linkage not in linkages:
                raise BackingChainError(self.path, f"parent {parent.path} has DataWriteGuid "
                                        f"{linkage}, the locator wants "
                                        f"{', '.join(sorted(linkages))}",
                                        field="parent_linkage")
            if parent.size != self.size or parent.logical_sector_size != self.sector_size:
                raise BackingChainError(self.path, f"parent {parent.path} differs in size or "
                                        "sector size", field="backing")

        return BackingSpec(candidates[0] if candidates else None, "vhdx",
                           tuple(candidates[1:]), validate, display)

    def _load_bat(self, file_size: int) -> None:
        entries = bat_entry_count(self.payload_blocks, self.chunk_ratio, self.has_parent)
        if entries * 8 > self.bat_length:
            # checked before reading: the BAT region lies inside the file, so a huge
            # virtual size with a small BAT is refused here (CVE-2014-0148 class)
            raise self._corrupt(f"{entries} BAT entries do not fit the {self.bat_length}-byte "
                                "BAT region", "region table.BAT")
        self.bat = array("Q", bytes(entries * 8))
        self._read_host_into(memoryview(self.bat).cast("B"), self.bat_offset)
        if sys.byteorder != "little":
            self.bat.byteswap()

    def _highest_used(self, file_size: int) -> int:
        """End of the last structure or block in use."""
        end = max(self.bat_offset + self.bat_length, self.metadata_offset + self.metadata_length,
                  self.header.log_offset + self.header.log_length)
        # fast path (a C-speed max over a BAT of millions of entries): when even the
        # largest raw entry, whatever its state, ends inside the file, so does every block
        if is_zero(memoryview(self.bat).cast("B")):  # a fresh dynamic image: memcmp speed
            return end
        top = (int(max(self.bat)) >> BAT_OFFSET_SHIFT << BAT_OFFSET_SHIFT) \
            + max(self.block_size, BITMAP_BLOCK_SIZE)
        if top <= file_size:
            return max(end, top)
        for index, entry in enumerate(self.bat):
            state = entry & BAT_STATE_MASK
            if state in (PAYLOAD_BLOCK_FULLY_PRESENT, PAYLOAD_BLOCK_PARTIALLY_PRESENT):
                length = BITMAP_BLOCK_SIZE if self._is_bitmap_index(index) else self.block_size
                end = max(end, (entry >> BAT_OFFSET_SHIFT << BAT_OFFSET_SHIFT) + length)
        return end

    def _is_bitmap_index(self, index: int) -> bool:
        return index % (self.chunk_ratio + 1) == self.chunk_ratio

    # --- the log ------------------------------------------------------------
    def _replay_log(self, file_size: int) -> None:
        header = self.header
        log = self.file.pread(header.log_length, header.log_offset)
        try:
            sequence = find_active_sequence(log, header.log_guid)
        except LogTooTangledError as exc:
            raise self._corrupt(str(exc), "log") from None
        if not sequence:
            if not self.readonly:
                self._write_header(log_guid=ZERO_GUID)
            return
        head = sequence[-1]
        if file_size < head.flushed_file_offset:
            raise self._corrupt(f"file is {file_size} bytes but the log was written when it "
                                f"held {head.flushed_file_offset}: data was lost", "log")
        writes = [w for entry in sequence for w in entry.writes]
        for file_offset, _ in writes:
            if file_offset < HEADER_SECTION_SIZE or file_offset > MAX_VIRTUAL_SIZE * 2:
                raise self._corrupt(f"log entry writes at {file_offset}", "log")
        if self.readonly:
            zero_page = bytes(LOG_SECTOR)
            pages = self._overlay
            for file_offset, content in writes:
                if isinstance(content, bytes):
                    pages[file_offset] = content
                    continue
                if len(pages) + content // LOG_SECTOR > 1 << 20:
                    raise UnsupportedImageError(self.path, "log zeroes too much to replay in "
                                                "memory; open read-write", field="log")
                for page in range(file_offset, file_offset + content, LOG_SECTOR):
                    pages[page] = zero_page
            self._overlay_keys = sorted(pages)
            self._overlay_entries = len(sequence)
            self._replayed_size = head.last_file_offset
            return
        for file_offset, content in writes:
            if isinstance(content, bytes):
                self.file.pwrite(content, file_offset)
            else:
                chunk = bytes(min(content, 4 * MiB))
                for at in range(file_offset, file_offset + content, len(chunk)):
                    self.file.pwrite(chunk[:min(len(chunk), file_offset + content - at)], at)
        if self.file.size() < head.last_file_offset:
            self.file.truncate(head.last_file_offset)
        self.file.sync()
        self._replayed_entries = len(sequence)
        self._write_header(file_write_guid=new_guid(), log_guid=ZERO_GUID)

    def _read_host(self, offset: int, length: int) -> bytes:
        """File bytes as they are after the log replay (in memory when read-only)."""
        buf = bytearray(length)
        self._read_host_into(memoryview(buf), offset)
        return bytes(buf)

    def _read_host_into(self, view: memoryview, offset: int) -> None:
        length = len(view)
        self.file.preadinto(view, offset)
        if self._overlay_keys:
            keys = self._overlay_keys
            first = bisect.bisect_left(keys, offset - LOG_SECTOR + 1)
            for page in keys[first:bisect.bisect_left(keys, offset + length)]:
                content = self._overlay[page]
                lo, hi = max(page, offset), min(page + LOG_SECTOR, offset + length)
                view[lo - offset:hi - offset] = content[lo - page:hi - page]

    def _overlaid(self, offset: int, length: int) -> bool:
        keys = self._overlay_keys
        if not keys:
            return False
        at = bisect.bisect_left(keys, offset - LOG_SECTOR + 1)
        return at < len(keys) and keys[at] < offset + length

    def _write_header(self, **changes: Any) -> None:
        """The header update procedure (2.2.2.1): write the non-current copy with the next
        sequence number, make it durable; then the same for the other copy."""
        for _ in range(2):
            new = replace(self.header, sequence_number=self.header.sequence_number + 1, **changes)
            slot = 1 - self.header_slot
            self.file.pwrite(new.pack(), HEADER_OFFSETS[slot])
            self.file.sync()
            self.header, self.header_slot = new, slot
            changes = {}
        self.headers_valid = (True, True)

    def _begin_modification(self) -> None:
        """Before the first change of a session: new FileWriteGuid, DataWriteGuid, LogGuid."""
        if self._session:
            return
        self._session = True
        self._write_header(file_write_guid=new_guid(), data_write_guid=new_guid(),
                           log_guid=new_guid())
        self._log_head = 0
        self._log_sequence = 1

    def _commit(self, pages: list[tuple[int, bytes]]) -> None:
        """Write ``pages`` through the log: entry, fsync, then in place."""
        per_entry = max_pages_per_entry(self.header.log_length)
        if per_entry == 0:
            raise UnsupportedImageError(self.path, "no log to write metadata through",
                                        field="header.log_length")
        self.file.sync()  # payload blocks are durable before an entry makes them visible
        for start in range(0, len(pages), per_entry):
            batch = pages[start:start + per_entry]
            if start:
                self.file.sync()  # the previous batch is in place before its entry is dropped
            entry_length = (_descriptor_sectors(len(batch)) + len(batch)) * LOG_SECTOR
            if self._log_head + entry_length > self.header.log_length:
                # a new LogGuid retires every older entry at once instead of wrapping
                self._write_header(log_guid=new_guid())
                self._log_head = 0
            entry = build_log_entry(self._log_sequence, self.header.log_guid, self._log_head,
                                    self.file.size(), batch)
            self.file.pwrite(entry, self.header.log_offset + self._log_head)
            self._log_head += len(entry)
            self._log_sequence += 1
            self.file.sync()
            for file_offset, page in batch:
                self.file.pwrite(page, file_offset)

    def _dirty_pages(self) -> list[tuple[int, bytes]]:
        pages = []
        per_page = LOG_SECTOR // 8
        for page in sorted(self._dirty_bat_pages):
            entries = self.bat[page * per_page:(page + 1) * per_page]
            content = entries.tobytes() if sys.byteorder == "little" else _swapped(entries)
            pages.append((self.bat_offset + page * LOG_SECTOR,
                          content + bytes(LOG_SECTOR - len(content))))
        for chunk, page in sorted(self._dirty_bitmap_pages):
            host = self._bat_host(self._bitmap_index(chunk))
            bitmap = self._bitmaps[chunk]
            pages.append((host + page * LOG_SECTOR,
                          bytes(bitmap[page * LOG_SECTOR:(page + 1) * LOG_SECTOR])))
        return pages

    def _flush_metadata(self) -> None:
        pages = self._dirty_pages()
        if pages:
            self._commit(pages)
            self._dirty_bat_pages.clear()
            self._dirty_bitmap_pages.clear()

    def _close(self) -> None:
        if self._session and not self.readonly:
            self.file.sync()  # the last entry's pages are in place (even after close(sync=False))
            self._write_header(log_guid=ZERO_GUID)  # ... before the log is declared empty
            self._session = False

    # --- BAT helpers ----------------------------------------------------------
    def _payload_index(self, block: int) -> int:
        return block + block // self.chunk_ratio

    def _bitmap_index(self, chunk: int) -> int:
        return chunk * (self.chunk_ratio + 1) + self.chunk_ratio

    def _bat_host(self, index: int) -> int:
        return int(self.bat[index]) >> BAT_OFFSET_SHIFT << BAT_OFFSET_SHIFT

    def _set_bat(self, index: int, value: int) -> None:
        self.bat[index] = value
        self._dirty_bat_pages.add(index * 8 // LOG_SECTOR)

    def _bitmap(self, chunk: int) -> bytearray:
        bitmap = self._bitmaps.get(chunk)
        if bitmap is None:
            entry = int(self.bat[self._bitmap_index(chunk)])
            if entry & BAT_STATE_MASK == SB_BLOCK_PRESENT:
                host = self._bat_host(self._bitmap_index(chunk))
                self._check_block_place(chunk, host, BITMAP_BLOCK_SIZE, "sector bitmap")
                bitmap = bytearray(self._read_host(host, BITMAP_BLOCK_SIZE))
            else:
                bitmap = bytearray(BITMAP_BLOCK_SIZE)
            self._bitmaps[chunk] = bitmap
        return bitmap

    def _allocate(self, length: int) -> int:
        """Space at the end of the file (1 MiB aligned), zero-filled by extending it."""
        host = self._file_end
        self._file_end = host + length
        self.file.truncate(self._file_end)
        self._data_limit = max(self._data_limit, self._file_end)
        return host

    def _sectors_in_block(self, block: int) -> tuple[int, int]:
        """(chunk, first bit of the block in the chunk's sector bitmap)."""
        chunk = block // self.chunk_ratio
        per_block = self.block_size // self.logical_sector_size
        return chunk, (block % self.chunk_ratio) * per_block

    # --- mapping --------------------------------------------------------------
    def _map(self, offset: int, length: int) -> Iterator[Run]:
        return self._runs(offset, length, mark_overlay=True)

    def _block_status(self, offset: int, length: int) -> Iterator[Run]:
        return self._runs(offset, length, mark_overlay=False)

    def _runs(self, offset: int, length: int, *, mark_overlay: bool) -> Iterator[Run]:
        end = offset + length
        pos = offset
        bs = self.block_size
        while pos < end:
            block = pos // bs
            block_start = block * bs
            stop = min(end, block_start + bs)
            entry = int(self.bat[self._payload_index(block)])
            state = entry & BAT_STATE_MASK
            host = entry >> BAT_OFFSET_SHIFT << BAT_OFFSET_SHIFT
            reads_file = state == PAYLOAD_BLOCK_FULLY_PRESENT or (
                state == PAYLOAD_BLOCK_PARTIALLY_PRESENT and self.has_parent)
            if reads_file:
                self._check_block_place(block, host)
            if state == PAYLOAD_BLOCK_FULLY_PRESENT:
                yield self._data_run(pos, stop - pos, host + pos - block_start, mark_overlay)
            elif state == PAYLOAD_BLOCK_PARTIALLY_PRESENT and self.has_parent:
                yield from self._partial_runs(block, pos, stop, host, mark_overlay)
            else:  # reserved values and a stray PARTIALLY_PRESENT read as zeros
                yield Run(pos, stop - pos, UNBACKED_READS.get(state, RunKind.ZERO))
            pos = stop

    def _check_block_place(self, block: int, host: int, length: int = 0,
                           what: str = "block") -> None:
        """A block this file holds must lie inside it and clear of its structures: a
        write through one over the headers or the BAT destroys the image (read-only
        opens keep such images open for check(), which reports them)."""
        end = host + (length or self.block_size)
        if end > self._data_limit:
            raise self._corrupt(f"{what} {block} at {host} runs past the end of the "
                                f"{self._data_limit}-byte file", "BAT")
        for start, size, name in self._reserved:
            if host < start + size and start < end:
                raise self._corrupt(f"{what} {block} at {host} overlaps the {name}", "BAT")

    def _data_run(self, offset: int, length: int, host: int, mark_overlay: bool) -> Run:
        special = mark_overlay and self._overlaid(host, length)
        return Run(offset, length, RunKind.DATA, host, special)

    def _partial_runs(self, block: int, pos: int, stop: int, host: int,
                      mark_overlay: bool) -> Iterator[Run]:
        sector = self.logical_sector_size
        block_start = block * self.block_size
        chunk, first_bit = self._sectors_in_block(block)
        per_block = self.block_size // sector
        bits = self._bitmap(chunk)[first_bit // 8:(first_bit + per_block) // 8]
        value = int.from_bytes(bits, "little")
        lo = (pos - block_start) // sector
        hi = -(-(stop - block_start) // sector)
        at = lo
        while at < hi:
            present = (value >> at) & 1
            rest = (~value if present else value) >> at
            nxt = hi if rest == 0 else min(hi, at + (rest & -rest).bit_length() - 1)
            run_start = max(pos, block_start + at * sector)
            run_stop = min(stop, block_start + nxt * sector)
            if present:
                yield self._data_run(run_start, run_stop - run_start,
                                     host + run_start - block_start, mark_overlay)
            else:
                yield Run(run_start, run_stop - run_start, RunKind.UNALLOCATED)
            at = nxt

    def _read_special(self, run: Run, out: memoryview) -> None:
        assert run.host_offset is not None
        out[:] = self._read_host(run.host_offset, run.length)

    # --- writing --------------------------------------------------------------
    # Every public change starts the session first (new write GUIDs and a LogGuid in
    # the header); the core's own write path then runs unchanged, so convert keeps its
    # kernel copies into allocated blocks.
    def _begin_change(self, offset: int, length: int) -> None:
        self._begin_modification()

    def _copy_unallocated(self, run: Run, source: HostFile, source_offset: int) -> None:
        """Fresh blocks of a non-differencing image are filled in the kernel."""
        if self.has_parent:
            super()._copy_unallocated(run, source, source_offset)
            return
        pos, end = run.offset, run.offset + run.length
        while pos < end:
            block = pos // self.block_size
            block_start = block * self.block_size
            step = min(end, block_start + self.block_size) - pos
            index = self._payload_index(block)
            entry = int(self.bat[index])
            if entry & BAT_STATE_MASK == PAYLOAD_BLOCK_FULLY_PRESENT:
                host = entry >> BAT_OFFSET_SHIFT << BAT_OFFSET_SHIFT
            else:
                host = self._allocate(self.block_size)
                self._set_bat(index, host | PAYLOAD_BLOCK_FULLY_PRESENT)
            self.file.copy_range(source, source_offset + pos - run.offset, step,
                                 host + pos - block_start)
            pos += step

    def _write_unallocated(self, run: Run, data: memoryview) -> None:
        pos, done = run.offset, 0
        while done < len(data):
            block = pos // self.block_size
            step = min(len(data) - done, (block + 1) * self.block_size - pos)
            self._write_block(block, pos, data[done:done + step])
            pos += step
            done += step

    def _write_block(self, block: int, pos: int, data: memoryview) -> None:
        index = self._payload_index(block)
        entry = int(self.bat[index])
        state = entry & BAT_STATE_MASK
        block_start = block * self.block_size
        if state == PAYLOAD_BLOCK_FULLY_PRESENT:
            self.file.pwrite(data, (entry >> BAT_OFFSET_SHIFT << BAT_OFFSET_SHIFT)
                             + pos - block_start)
            return
        if state == PAYLOAD_BLOCK_PARTIALLY_PRESENT and self.has_parent:
            self._write_sectors(block, entry >> BAT_OFFSET_SHIFT << BAT_OFFSET_SHIFT, pos, data)
            return
        shows_parent = self.has_parent and state == PAYLOAD_BLOCK_NOT_PRESENT
        if not shows_parent and is_zero(data):
            return  # the block reads as zeros already
        whole_block = pos == block_start \
            and pos + len(data) == min(block_start + self.block_size, self.size)
        reads_parent = shows_parent and not whole_block  # a whole block needs no bitmap
        host = self._allocate(self.block_size)
        if reads_parent:
            chunk, first_bit = self._sectors_in_block(block)
            if any(self._bitmap(chunk)[first_bit // 8:(first_bit + self.block_size
                                                       // self.logical_sector_size) // 8]):
                self._ensure_bitmap_block(chunk)  # stale bits from an older life of the block
                self._set_bits(chunk, first_bit,
                               first_bit + self.block_size // self.logical_sector_size, False)
            self._write_sectors(block, host, pos, data)
            self._set_bat(index, host | PAYLOAD_BLOCK_PARTIALLY_PRESENT)
        else:
            self.file.pwrite(data, host + pos - block_start)
            self._set_bat(index, host | PAYLOAD_BLOCK_FULLY_PRESENT)

    def _write_sectors(self, block: int, host: int, pos: int, data: memoryview) -> None:
        """Write into a differencing block, completing partial sectors from the parent,
        and mark the sectors present in the sector bitmap."""
        sector = self.logical_sector_size
        block_start = block * self.block_size
        lo = pos - (pos - block_start) % sector
        hi = _align_up(pos + len(data) - block_start, sector) + block_start
        if lo == pos and hi == pos + len(data):
            self.file.pwrite(data, host + lo - block_start)
        else:
            buf = bytearray(hi - lo)
            view = memoryview(buf)
            if pos > lo:
                self._read_below(lo, view[:pos - lo])
            if hi > pos + len(data):
                self._read_below(pos + len(data), view[pos + len(data) - lo:])
            view[pos - lo:pos - lo + len(data)] = data
            self.file.pwrite(buf, host + lo - block_start)
        chunk, first_bit = self._sectors_in_block(block)
        self._ensure_bitmap_block(chunk)
        self._set_bits(chunk, first_bit + (lo - block_start) // sector,
                       first_bit + (hi - block_start) // sector)

    def _ensure_bitmap_block(self, chunk: int) -> None:
        index = self._bitmap_index(chunk)
        if int(self.bat[index]) & BAT_STATE_MASK != SB_BLOCK_PRESENT:
            bitmap = self._bitmap(chunk)  # before the entry changes: reads as all clear
            host = self._allocate(BITMAP_BLOCK_SIZE)
            self._set_bat(index, host | SB_BLOCK_PRESENT)
            # the whole new bitmap goes through the log when it has bits set
            for page in range(0, BITMAP_BLOCK_SIZE // LOG_SECTOR):
                if any(bitmap[page * LOG_SECTOR:(page + 1) * LOG_SECTOR]):
                    self._dirty_bitmap_pages.add((chunk, page))

    def _set_bits(self, chunk: int, first: int, stop: int, value: bool = True) -> None:
        """Set (or clear) bits ``[first, stop)`` of a chunk's sector bitmap."""
        bitmap = self._bitmap(chunk)
        head_stop = min(stop, _align_up(first, 8))
        full_lo, full_hi = head_stop // 8, stop // 8
        loose = list(range(first, head_stop))
        if full_hi > full_lo:
            bitmap[full_lo:full_hi] = (b"\xff" if value else b"\x00") * (full_hi - full_lo)
        loose += range(max(head_stop, full_hi * 8), stop)
        for bit in loose:
            if value:
                bitmap[bit >> 3] |= 1 << (bit & 7)
            else:
                bitmap[bit >> 3] &= ~(1 << (bit & 7)) & 0xFF
        for page in range(first // 8 // LOG_SECTOR, (stop - 1) // 8 // LOG_SECTOR + 1):
            self._dirty_bitmap_pages.add((chunk, page))

    def _discard(self, offset: int, length: int) -> None:
        """Whole blocks become UNMAPPED (ZERO in a differencing disk, hiding the parent);
        the partial ends are written with zeros.  Fixed disks keep their blocks."""
        self._begin_modification()
        bs = self.block_size
        first = _align_up(offset, bs)
        last = (offset + length) // bs * bs
        if self.leave_blocks_allocated or first >= last:
            self.write_zeroes(offset, length)
            return
        if offset < first:
            self.write_zeroes(offset, first - offset)
        new_state = PAYLOAD_BLOCK_ZERO if self.has_parent else PAYLOAD_BLOCK_UNMAPPED
        for block in range(first // bs, last // bs):
            index = self._payload_index(block)
            if int(self.bat[index]) != new_state:
                self._set_bat(index, new_state)
        if last < offset + length:
            self.write_zeroes(last, offset + length - last)

    def allocation_unit(self) -> int:
        return self.block_size

    def cluster_size(self) -> int:
        return self.block_size

    # --- check and info ---------------------------------------------------------
    def _check(self, report: CheckReport, repair: bool) -> None:
        for slot, valid in enumerate(self.headers_valid):
            if not valid:
                if repair:
                    self._write_header()
                    report.repaired.append(f"rewrote header {slot + 1}")
                else:
                    report.corrupt(f"header {slot + 1} has a bad signature or checksum")
        report.repaired.extend(self._open_repairs)
        for slot, valid in enumerate(self.region_tables_valid):
            if valid:
                continue
            if repair and any(self.region_tables_valid):
                good = REGION_TABLE_OFFSETS[1 - slot]
                self.file.pwrite(self.file.pread(REGION_TABLE_SIZE, good),
                                 REGION_TABLE_OFFSETS[slot])
                self.file.sync()
                report.repaired.append(f"rewrote region table {slot + 1} from its copy")
            else:
                report.corrupt(f"region table {slot + 1} has a bad signature or checksum")
        if repair:
            self.region_tables_valid = (True, True) if any(self.region_tables_valid) \
                else self.region_tables_valid
        if self._overlay_entries:
            # a crash's normal state, not damage: read with the entries applied in memory,
            # written back by a writable open (check -r); qemu-img refuses to read it
            report.note(f"the log holds {self._overlay_entries} entries not yet replayed "
                        "(read as replayed; -r all replays them into the file)")
        if self._replayed_entries:
            report.repaired.append(f"replayed {self._replayed_entries} log entries at open")
        file_size = max(self.file.size(), self._replayed_size)
        reserved = self._reserved_regions()
        used: list[tuple[int, int, str]] = []
        for index, entry in enumerate(self.bat):
            entry = int(entry)
            state = entry & BAT_STATE_MASK
            host = entry >> BAT_OFFSET_SHIFT << BAT_OFFSET_SHIFT
            if self._is_bitmap_index(index):
                what = f"sector bitmap entry {index}"
                if state == SB_BLOCK_NOT_PRESENT:
                    continue
                if state != SB_BLOCK_PRESENT or not self.has_parent:
                    report.corrupt(f"{what}: state {state} is invalid here")
                    continue
                length = BITMAP_BLOCK_SIZE
            else:
                what = f"BAT entry {index}"
                if state in UNBACKED_READS:
                    continue
                if state not in PAYLOAD_STATE_NAMES:
                    report.corrupt(f"{what}: reserved state {state}")
                    continue
                if state == PAYLOAD_BLOCK_PARTIALLY_PRESENT and not self.has_parent:
                    # no sector bitmap entries here: the block reads as zeros, and the
                    # next write into it allocates afresh (qemu-img check is silent)
                    continue
                if state == PAYLOAD_BLOCK_PARTIALLY_PRESENT:
                    chunk = index // (self.chunk_ratio + 1)
                    sb_entry = int(self.bat[self._bitmap_index(chunk)])
                    if sb_entry & BAT_STATE_MASK != SB_BLOCK_PRESENT:
                        report.corrupt(f"{what}: PARTIALLY_PRESENT without a sector bitmap")
                length = self.block_size
            if host + length > file_size:
                report.corrupt(f"{what}: block at {host} ends beyond the {file_size}-byte file")
                continue
            used.append((host, length, what))
        used.sort()
        for start, length, what in used:
            for r_start, r_length, r_name in reserved:
                if start < r_start + r_length and r_start < start + length:
                    report.corrupt(f"{what}: block at {start} overlaps the {r_name}")
        for (a_start, a_len, a_what), (b_start, _, b_what) in zip(used, used[1:], strict=False):
            if b_start < a_start + a_len:
                report.corrupt(f"{a_what} and {b_what} overlap at {b_start}")

    def _reserved_regions(self) -> list[tuple[int, int, str]]:
        """(offset, length, name) of the structures no payload block may overlap."""
        return [(0, HEADER_SECTION_SIZE, "header section"),
                (self.header.log_offset, self.header.log_length, "log"),
                (self.metadata_offset, self.metadata_length, "metadata region"),
                (self.bat_offset, self.bat_length, "BAT")]

    def _info(self) -> dict[str, Any]:
        kind = "differencing" if self.has_parent else \
            "fixed" if self.leave_blocks_allocated else "dynamic"
        facts: dict[str, Any] = {
            "subformat": kind,
            "block-size": self.block_size,
            "log-size": self.header.log_length,
            "logical-sector-size": self.logical_sector_size,
            "physical-sector-size": self.physical_sector_size,
            "page83-id": guid_text(self.page83),
            "file-write-guid": guid_text(self.header.file_write_guid),
            "data-write-guid": guid_text(self.header.data_write_guid),
            "log-dirty": bool(self._overlay_entries),
        }
        if self.has_parent:
            facts["parent-locator"] = dict(self.parent_locator)
        return facts


def _swapped(bat: array) -> bytes:
    copy = array("Q", bat)
    copy.byteswap()
    return copy.tobytes()


def _pack_parent_locator(parent: VhdxImage, child_path: str) -> bytes:
    """A VHDX parent locator naming ``parent`` relatively and absolutely (2.6.2.6)."""
    parent_abs = os.path.abspath(parent.path)
    child_dir = os.path.dirname(os.path.abspath(child_path))
    relative = os.path.relpath(parent_abs, child_dir).replace("/", "\\")
    # lower case in braces, as Hyper-V writes it (libvhdi accepts only that form)
    pairs = [("parent_linkage", guid_text(parent.header.data_write_guid).lower()),
             ("relative_path", relative),
             ("absolute_win32_path", parent_abs)]
    head = PARENT_LOCATOR_HEADER.size + len(pairs) * PARENT_LOCATOR_ENTRY.size
    entries = bytearray()
    strings = bytearray()
    for key, value in pairs:
        key_raw, value_raw = key.encode("utf-16-le"), value.encode("utf-16-le")
        key_at = head + len(strings)
        strings += key_raw
        value_at = head + len(strings)
        strings += value_raw
        entries += PARENT_LOCATOR_ENTRY.pack(key_at, value_at, len(key_raw), len(value_raw))
    return (PARENT_LOCATOR_HEADER.pack(VHDX_PARENT_LOCATOR_TYPE, 0, len(pairs))
            + bytes(entries) + bytes(strings))
