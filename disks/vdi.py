"""VirtualBox VDI images: dynamic, static (fixed) and differencing.

Theory of operation
-------------------
A VDI file is a pre-header, a header, a block map and the data blocks::

    0                 pre-header: 64 bytes of text ("<<< Oracle VM VirtualBox Disk
                      Image >>>\\n"; older builds say Sun, innotek or QEMU), the
                      signature 0xBEDA107F and the version (1.1 = 0x00010001)
    72                header (VirtualBox's VDIHEADER1PLUS, 400 bytes; QEMU writes
                      the 384-byte VDIHEADER1 without the LCHS geometry)
    offset_bmap       block map: blocks_in_image little-endian u32 entries
    offset_data       block slots, each block_extra + block_size bytes

Block map entry ``i`` describes guest bytes ``[i*block_size, (i+1)*block_size)``:

* ``0xFFFFFFFF`` (free): the image does not hold the block; it reads as zeros,
  or from the parent in a differencing image;
* ``0xFFFFFFFE`` (zero, "discarded"): the block reads as zeros in every image;
* anything else is a slot number: the data lives at
  ``offset_data + slot * (block_extra + block_size) + block_extra``.

Slots ``0 .. blocks_allocated-1`` are in use; a new block always takes the slot
after the last one, at the end of the file.  Allocation is "reserve, write,
barrier, publish", so that any subset of the writes a crash keeps (a disk cache
reorders them) is sound: the data block and the header's ``blocks_allocated``
(the reservation) are written first, and the map entries only at the next flush,
after an fsync (:meth:`VdiImage._publish_entries`; the in-memory map serves reads
meanwhile, and one barrier covers every allocation since the last flush, as
QEMU's qcow2 orders its metadata cache).  A crash before that barrier
leaves the header count ahead of the map: an orphan slot, which is a leak (the
next allocation takes a fresh slot; a read-write open trims the count).  A count
behind the map, which would hand a used slot out again, never happens.  (QEMU's
check calls any count mismatch an error; the header and the map lie in different
sectors, so no write order avoids the moment between them.)

Discarding whole blocks marks them zero and, like VirtualBox, keeps the slots
dense: the zero entry is made durable, the last slot's data moves into the freed
one and is made durable, its map entry is re-pointed and made durable, then the
count drops and the file shrinks.

A differencing image (type 4) names its parent only by UUID: ``uuid_parent``
(VirtualBox's uuidLinkage) is the parent's ``uuid_image``, and
``uuid_parent_modification`` its ``uuid_modification`` at the time the child was
made.  The parent is looked for among the ``.vdi`` files beside the child (or
given explicitly).  QEMU names the four UUIDs uuid_image, uuid_last_snap,
uuid_link and uuid_parent.

Not modelled: the pre-1.1 (version 0) header, "undo" images (type 3), and the
modification-UUID refresh VirtualBox does on the first write after open.
"""

from __future__ import annotations

import os
import struct
import sys
import uuid
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from .errors import (
    BackingChainError,
    CorruptImageError,
    ImageError,
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
    parse_bool,
    parse_size,
)
from .registry import register

SIGNATURE = 0xBEDA107F
VERSION_1_1 = 0x00010001
FILE_INFO = b"<<< Oracle VM VirtualBox Disk Image >>>\n"
KNOWN_FILE_INFOS = (
    FILE_INFO,
    b"<<< Sun VirtualBox Disk Image >>>\n",
    b"<<< Sun xVM VirtualBox Disk Image >>>\n",
    b"<<< innotek VirtualBox Disk Image >>>\n",
    b"<<< InnoTek VirtualBox Disk Image >>>\n",
    b"<<< QEMU VM Virtual Disk Image >>>\n",
)

PRE_HEADER_SIZE = 72
HEADER_V1_SIZE = 384          # VDIHEADER1: everything up to uuid_parent_modification
HEADER_V1_PLUS_SIZE = 400     # VDIHEADER1PLUS: adds the LCHS geometry
MAX_HEADER_SIZE = 1 << 20

TYPE_NORMAL = 1               # dynamic
TYPE_FIXED = 2                # static
TYPE_UNDO = 3
TYPE_DIFF = 4                 # differencing (snapshot)
TYPE_NAMES = {TYPE_NORMAL: "dynamic", TYPE_FIXED: "static", TYPE_UNDO: "undo",
              TYPE_DIFF: "differencing"}

BLOCK_FREE = 0xFFFFFFFF       # not in this image: zeros, or the parent's data
BLOCK_ZERO = 0xFFFFFFFE       # discarded: zeros whatever the parent holds

SECTOR_SIZE = 512
DEFAULT_BLOCK_SIZE = 1 << 20
MIN_BLOCK_SIZE = SECTOR_SIZE
MAX_BLOCK_SIZE = 1 << 30
MAX_BLOCK_EXTRA = 1 << 30
MAX_BLOCKS = 0x3FFFFFFF       # map entries fit in u32 with the two markers to spare
DATA_ALIGN = 1 << 20          # VirtualBox aligns the map and the data area to 1 MiB
FILL_CHUNK = 4 << 20          # bound on buffers used to fill partial blocks
COPY_BLOCKS = 64              # whole blocks allocated by one in-kernel copy

_HOST_IS_LITTLE = sys.byteorder == "little"
_FREE_CHUNK = b"\xff" * (64 << 10)   # a stretch of free map entries, for a quick compare
_ZERO_CHUNK = struct.pack("=I", 0xFFFFFFFE) * (len(_FREE_CHUNK) // 4)   # ... of zero ones


@dataclass
class VdiHeader:
    """Pre-header and 1.1 header as stored (one layout, one pack/unpack pair)."""

    file_info: bytes
    signature: int
    version: int
    header_size: int
    image_type: int
    image_flags: int
    description: bytes
    offset_bmap: int
    offset_data: int
    cylinders: int            # legacy (physical) geometry
    heads: int
    sectors: int
    sector_size: int
    unused1: int
    disk_size: int
    block_size: int
    block_extra: int
    blocks_in_image: int
    blocks_allocated: int
    uuid_image: bytes
    uuid_modification: bytes
    uuid_parent: bytes
    uuid_parent_modification: bytes
    lchs_cylinders: int = 0   # logical geometry (header_size >= 400 only)
    lchs_heads: int = 0
    lchs_sectors: int = 0
    lchs_sector_size: int = SECTOR_SIZE

    LAYOUT: ClassVar[struct.Struct] = struct.Struct(
        "<64sIIIII256sIIIIIIIQIIII16s16s16s16sIIII")
    V1_FIELD_COUNT: ClassVar[int] = 23
    OFFSET_BLOCKS_ALLOCATED: ClassVar[int] = 0x184

    @classmethod
    def unpack(cls, raw: bytes) -> VdiHeader:
        values = cls.LAYOUT.unpack(raw.ljust(cls.LAYOUT.size, b"\0")[:cls.LAYOUT.size])
        header = cls(*values)
        if header.header_size < HEADER_V1_PLUS_SIZE:
            header = replace(header, lchs_cylinders=0, lchs_heads=0, lchs_sectors=0,
                             lchs_sector_size=SECTOR_SIZE)
        return header

    def pack(self) -> bytes:
        values = [getattr(self, f.name) for f in fields(self)]
        packed = self.LAYOUT.pack(*values)
        return packed[:PRE_HEADER_SIZE + max(self.header_size, HEADER_V1_SIZE)] \
            if self.header_size < HEADER_V1_PLUS_SIZE else packed

    @property
    def slot_size(self) -> int:
        return self.block_extra + self.block_size

    def validate(self, path: str, file_size: int) -> None:
        """Refuse anything inconsistent or too large before a byte is allocated for it."""
        def corrupt(field: str, message: str) -> CorruptImageError:
            return CorruptImageError(path, message, field=field)

        if self.signature != SIGNATURE:
            raise corrupt("signature", f"0x{self.signature:08x} is not the VDI signature "
                          f"0x{SIGNATURE:08x}")
        if self.version >> 16 != VERSION_1_1 >> 16:
            raise UnsupportedImageError(path, f"version {self.version >> 16}."
                                        f"{self.version & 0xFFFF} (only 1.x is supported)",
                                        field="version")
        if not HEADER_V1_SIZE <= self.header_size <= MAX_HEADER_SIZE:
            raise corrupt("header_size", f"{self.header_size} is not between "
                          f"{HEADER_V1_SIZE} and {MAX_HEADER_SIZE}")
        if file_size < PRE_HEADER_SIZE + self.header_size:
            raise corrupt("header_size", f"header of {self.header_size} bytes is cut off "
                          f"by the end of the {file_size}-byte file")
        if self.image_type not in (TYPE_NORMAL, TYPE_FIXED, TYPE_DIFF):
            name = TYPE_NAMES.get(self.image_type)
            if name:
                raise UnsupportedImageError(path, f"{name} images are not supported",
                                            field="image_type")
            raise corrupt("image_type", f"unknown image type {self.image_type}")
        if self.sector_size != SECTOR_SIZE:
            raise UnsupportedImageError(path, f"sector size {self.sector_size} (only "
                                        f"{SECTOR_SIZE} is supported)", field="sector_size")
        block = self.block_size
        if not MIN_BLOCK_SIZE <= block <= MAX_BLOCK_SIZE or block & (block - 1):
            raise corrupt("block_size", f"{block} is not a power of two between "
                          f"{MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}")
        if self.block_extra > MAX_BLOCK_EXTRA:
            raise corrupt("block_extra", f"{self.block_extra} is larger than "
                          f"{MAX_BLOCK_EXTRA}")
        if self.blocks_in_image > MAX_BLOCKS:
            raise corrupt("blocks_in_image", f"{self.blocks_in_image} is more than "
                          f"{MAX_BLOCKS} blocks")
        if self.disk_size > self.blocks_in_image * block:
            raise corrupt("disk_size", f"{self.disk_size} bytes do not fit in "
                          f"{self.blocks_in_image} blocks of {block} bytes")
        if self.blocks_allocated > self.blocks_in_image:
            raise corrupt("blocks_allocated", f"{self.blocks_allocated} is more than "
                          f"blocks_in_image {self.blocks_in_image}")
        map_end = self.offset_bmap + 4 * self.blocks_in_image
        if self.offset_bmap < PRE_HEADER_SIZE + self.header_size:
            raise corrupt("offset_bmap", f"{self.offset_bmap} overlaps the header")
        if map_end > file_size:
            raise corrupt("blocks_in_image", f"a map of {self.blocks_in_image} entries at "
                          f"{self.offset_bmap} runs past the end of the {file_size}-byte file")
        if self.offset_data < map_end:
            raise corrupt("offset_data", f"{self.offset_data} overlaps the block map "
                          f"ending at {map_end}")
        if self.offset_data > file_size + DATA_ALIGN:  # the first block would land far
            raise corrupt("offset_data", f"{self.offset_data} is past the end of the "  # away
                          f"{file_size}-byte file")

    def geometry(self) -> Geometry | None:
        if self.cylinders and self.heads and self.sectors:
            return Geometry(self.cylinders, self.heads, self.sectors)
        return None


def _uuid_text(raw: bytes) -> str:
    """VirtualBox stores RTUUIDs in the little-endian GUID layout."""
    return str(uuid.UUID(bytes_le=raw))


def _new_uuid() -> bytes:
    return uuid.uuid4().bytes_le


NULL_UUID = bytes(16)


def _align(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def _read_header(file: HostFile) -> VdiHeader:
    file_size = file.size()
    raw = file.pread(PRE_HEADER_SIZE + HEADER_V1_PLUS_SIZE, 0)
    if len(raw) < PRE_HEADER_SIZE + HEADER_V1_SIZE:
        raise CorruptImageError(file.path, f"the {file_size}-byte file is too short for a "
                                "VDI header", field="header")
    header = VdiHeader.unpack(raw)
    header.validate(file.path, file_size)
    return header


def _block_size_option(value: Any) -> int:
    size = parse_size(value)
    if not MIN_BLOCK_SIZE <= size <= MAX_BLOCK_SIZE or size & (size - 1):
        raise ValueError(f"block size {size} is not a power of two between "
                         f"{MIN_BLOCK_SIZE} and {MAX_BLOCK_SIZE}")
    return size


@register
class VdiImage(Image):
    """A VirtualBox disk image (see the module docstring for the layout)."""

    format_name = "vdi"
    create_options = {
        "static": OptionSpec(parse_bool, "preallocate every block (a fixed image)", False),
        "block_size": OptionSpec(_block_size_option, "bytes per block (a power of two)",
                                 DEFAULT_BLOCK_SIZE),
    }
    supports_backing = True

    header: VdiHeader
    block_map: array | memoryview   # u32 per block, host byte order
    slot_owner: array          # block index per slot (BLOCK_FREE when unreferenced)
    next_slot: int             # the slot the next allocation takes
    file_end: int              # size of the host file (only this writer changes it)

    # --- probing and creation --------------------------------------------
    @classmethod
    def probe(cls, data: ProbeInput) -> int:
        if len(data.head) < PRE_HEADER_SIZE:
            return 0
        signature, = struct.unpack_from("<I", data.head, 64)
        if signature != SIGNATURE:
            return 0
        return 100 if data.head.startswith(KNOWN_FILE_INFOS) else 90

    @classmethod
    def create_file(cls, file: HostFile, size: int, options: dict[str, Any],
                    backing: Image | None) -> None:
        block_size = options.get("block_size") or DEFAULT_BLOCK_SIZE
        static = bool(options.get("static"))
        disk_size = _align(size, SECTOR_SIZE)  # qemu-img rounds up to whole sectors too
        blocks = -(-disk_size // block_size)
        if blocks > MAX_BLOCKS:
            raise InvalidOptionError(file.path, f"{size} bytes need {blocks} blocks of "
                                     f"{block_size}; VDI allows {MAX_BLOCKS}", field="size")
        parent_uuid = parent_modification = NULL_UUID
        image_type = TYPE_FIXED if static else TYPE_NORMAL
        if backing is not None:
            if not isinstance(backing, VdiImage):
                raise InvalidOptionError(file.path, "a VDI differencing image links to its "
                                         "parent by UUID, so the parent must be a VDI image",
                                         field="backing")
            if static:
                raise InvalidOptionError(file.path, "a differencing image cannot be static",
                                         field="static")
            image_type = TYPE_DIFF
            parent_uuid = backing.header.uuid_image
            parent_modification = backing.header.uuid_modification
        offset_bmap = _align(PRE_HEADER_SIZE + HEADER_V1_PLUS_SIZE, DATA_ALIGN)
        offset_data = _align(offset_bmap + 4 * blocks, DATA_ALIGN)
        header = VdiHeader(
            file_info=FILE_INFO, signature=SIGNATURE, version=VERSION_1_1,
            header_size=HEADER_V1_PLUS_SIZE, image_type=image_type, image_flags=0,
            description=b"", offset_bmap=offset_bmap, offset_data=offset_data,
            cylinders=0, heads=0, sectors=0, sector_size=SECTOR_SIZE, unused1=0,
            disk_size=disk_size, block_size=block_size, block_extra=0,
            blocks_in_image=blocks, blocks_allocated=blocks if static else 0,
            uuid_image=_new_uuid(), uuid_modification=_new_uuid(),
            uuid_parent=parent_uuid, uuid_parent_modification=parent_modification)
        entries = array("I", range(blocks)) if static else array("I", [BLOCK_FREE]) * blocks
        if not _HOST_IS_LITTLE:
            entries.byteswap()
        end = offset_data + (blocks * block_size if static else 0)
        file.truncate(end)
        file.pwrite(entries.tobytes(), offset_bmap)
        file.pwrite(header.pack(), 0)

    # --- opening -------------------------------------------------------------
    @classmethod
    def open_file(cls, file: HostFile, *, readonly: bool, options: dict[str, Any]) -> Image:
        header = _read_header(file)
        image = cls(file, readonly=readonly)
        image.header = header
        image.size = header.disk_size
        image.geometry = header.geometry()
        image._load_block_map()
        if not readonly and header.image_type != TYPE_FIXED:
            image._recover_orphans()
        if header.uuid_parent != NULL_UUID or header.image_type == TYPE_DIFF:
            image.backing_spec = image._parent_spec()
        return image

    def _load_block_map(self) -> None:
        """Read the map and check every entry that names a slot against the file.

        A writable open also refuses entries a write would make worse (two blocks in
        one slot, slots beyond ``blocks_in_image``); read-only opens leave those for
        check() to report.  The next slot is the one after the last slot in use, or
        after ``blocks_allocated`` but never past the file's end: a wrong count must not
        make the next block land gigabytes after the data.
        """
        header = self.header
        # a 64 TiB image has a 256 MiB map: mapped copy-on-write (no read, held once)
        # where the host's byte order is the file's, else read and swapped
        mapped = self.file.private_copy(header.offset_bmap, 4 * header.blocks_in_image) \
            if _HOST_IS_LITTLE else None
        if mapped is not None:
            self.block_map = mapped.cast("I")
        else:
            block_map = array("I", bytes(4 * header.blocks_in_image))
            self.file.preadinto(memoryview(block_map).cast("B"), header.offset_bmap)
            if not _HOST_IS_LITTLE:
                block_map.byteswap()
            self.block_map = block_map
        file_size = self.file_end = self.file.size()
        slots_in_file = max(0, -(-(file_size - header.offset_data) // header.slot_size))
        owners: dict[int, int] = {}
        for block, entry in self._slot_entries():
            if self._slot_host(entry) >= file_size:
                raise CorruptImageError(
                    self.path, f"block {block} points at slot {entry}, past the end of the "
                    f"{file_size}-byte file", field=f"block_map[{block}]")
            if self.readonly:
                owners[entry] = block
                continue
            if entry >= header.blocks_in_image:
                raise CorruptImageError(
                    self.path, f"block {block} points at slot {entry}, beyond blocks_in_image "
                    f"{header.blocks_in_image} (emu img check shows the damage)",
                    field=f"block_map[{block}]")
            if entry in owners:
                raise CorruptImageError(
                    self.path, f"blocks {owners[entry]} and {block} share slot {entry} (a "
                    "write to one would change the other; emu img check shows the damage)",
                    field=f"block_map[{block}]")
            owners[entry] = block
        highest = max(owners, default=-1)
        self.used_slots = highest + 1
        self.next_slot = max(min(header.blocks_allocated, slots_in_file), highest + 1)
        self.unpublished: dict[int, int] = {}  # block -> map entry, written at the barrier
        self.recovered: list[str] = []   # what a writable open finished (reported by check -r)
        self.slot_owner = array("I", [BLOCK_FREE]) * self.next_slot
        for entry, block in owners.items():
            self.slot_owner[entry] = block

    def _slot_entries(self) -> Iterator[tuple[int, int]]:
        """(block, slot) for every map entry naming a slot, in block order.  Stretches
        of the map with no slot (free or zero blocks) are skipped at memcmp speed: a
        64 TiB image has 64 Mi entries, nearly all free."""
        block_map = self.block_map
        raw = memoryview(block_map).cast("B")
        step = len(_FREE_CHUNK) // 4
        for first in range(0, len(block_map), step):
            if _FREE_CHUNK.startswith(raw[4 * first:4 * (first + step)]):
                continue
            chunk = block_map[first:first + step]
            for n, entry in enumerate(chunk):
                if entry < BLOCK_ZERO:
                    yield first + n, entry

    def _recover_orphans(self) -> None:
        """Finish what a crash interrupted: free the reserved slots past the last used
        one, and fill slots no block uses (a discard cut short) from the end."""
        used = [entry for entry in self.block_map if entry < BLOCK_ZERO]
        if self.used_slots > self.header.blocks_in_image or len(set(used)) != len(used):
            return  # a wild or shared entry: check() reports it, nothing is moved
        if self.used_slots != self.header.blocks_allocated:
            self.recovered.append(f"blocks_allocated {self.header.blocks_allocated} set to "
                                  f"{self.used_slots} (slots reserved by an interrupted write)")
            self.next_slot = self.used_slots
            del self.slot_owner[self.used_slots:]
            self._set_blocks_allocated(self.used_slots)
        holes = [slot for slot, owner in enumerate(self.slot_owner) if owner == BLOCK_FREE]
        for slot in reversed(holes):
            if slot < self.next_slot:
                self._release_slot(slot)
        if holes:
            self.recovered.append(f"{len(holes)} unused slot(s) filled from the end "
                                  "(an interrupted discard)")

    def _parent_spec(self) -> BackingSpec:
        wanted = self.header.uuid_parent
        wanted_text = _uuid_text(wanted)
        found = _find_vdi_by_uuid(os.path.dirname(os.path.abspath(self.path)), wanted,
                                  exclude=self.path)

        def validate(parent: Image) -> None:
            if not isinstance(parent, VdiImage):
                raise BackingChainError(self.path, f"parent {parent.path} is "
                                        f"{parent.format_name}, not a VDI image",
                                        field="uuid_parent")
            if parent.header.uuid_image != wanted:
                raise BackingChainError(
                    self.path, f"parent {parent.path} has UUID "
                    f"{_uuid_text(parent.header.uuid_image)}, not {wanted_text}",
                    field="uuid_parent")

        return BackingSpec(found, "vdi", validate=validate,
                           display_name=None if found else f"{{{wanted_text}}}")

    # --- layout ---------------------------------------------------------------
    def _slot_host(self, slot: int) -> int:
        """Host offset of the data of ``slot`` (after its block_extra bytes)."""
        header = self.header
        return header.offset_data + slot * header.slot_size + header.block_extra

    def _map(self, offset: int, length: int) -> Iterator[Run]:
        block_size = self.header.block_size
        block_map = self.block_map
        end = offset + length
        pos = offset
        # one pending run, extended while blocks continue it (same kind, contiguous host)
        run_start = run_len = 0
        run_kind: RunKind | None = None
        run_host: int | None = None
        while pos < end:
            block, within = divmod(pos, block_size)
            step = min(block_size - within, end - pos)
            entry = block_map[block]
            if entry < BLOCK_ZERO:
                kind, host = RunKind.DATA, self._slot_host(entry) + within
            else:
                kind, host = (RunKind.UNALLOCATED if entry == BLOCK_FREE else RunKind.ZERO), None
                # a whole stretch of free (or zero) blocks at once
                stop = self._same_entries_end(block, entry, -(-end // block_size))
                step = min(end, stop * block_size) - pos
            if run_kind is kind and (host is None or run_host is not None
                                     and run_host + run_len == host):
                run_len += step
            else:
                if run_kind is not None:
                    yield Run(run_start, run_len, run_kind, run_host)
                run_start, run_len, run_kind, run_host = pos, step, kind, host
            pos += step
        if run_kind is not None:
            yield Run(run_start, run_len, run_kind, run_host)

    def _same_entries_end(self, block: int, entry: int, limit: int) -> int:
        """The first block after ``block`` (up to ``limit``) whose map entry is not
        ``entry`` (BLOCK_FREE or BLOCK_ZERO), compared a chunk of entries at a time."""
        block_map = self.block_map
        raw = memoryview(block_map).cast("B")
        pattern = _FREE_CHUNK if entry == BLOCK_FREE else _ZERO_CHUNK
        step = len(pattern) // 4
        at = block + 1
        while at < limit:
            count = min(step, limit - at)
            if pattern.startswith(raw[4 * at:4 * (at + count)]):
                at += count
                continue
            while at < limit and block_map[at] == entry:
                at += 1
            return at
        return limit

    def allocation_unit(self) -> int:
        return self.header.block_size

    def cluster_size(self) -> int:
        return self.header.block_size

    # --- writing ----------------------------------------------------------------
    def _write_unallocated(self, run: Run, data: memoryview) -> None:
        block_size = self.header.block_size
        pos = run.offset
        end = run.offset + run.length
        while pos < end:
            block, within = divmod(pos, block_size)
            step = min(block_size - within, end - pos)
            piece = data[pos - run.offset:pos - run.offset + step]
            self._store_in_block(block, within, piece, run.kind)
            pos += step

    def _store_in_block(self, block: int, within: int, piece: memoryview,
                        kind: RunKind) -> None:
        """Put ``piece`` at ``within`` of a block this image does not hold."""
        reads_zero = kind is RunKind.ZERO or self.backing is None
        if is_zero(piece):
            if reads_zero:
                return  # the block already reads as zeros
            if len(piece) == self.header.block_size:
                self._set_entry(block, BLOCK_ZERO)  # hide the parent's data, no allocation
                return
        self._allocate(block, within, piece, reads_zero)

    def _allocate(self, block: int, within: int, piece: memoryview, reads_zero: bool) -> None:
        header = self.header
        slot, fresh = self._claim_slot()
        data_host = self._slot_host(slot)
        block_guest = block * header.block_size
        # how much of the block the disk actually has (the last block may be short)
        block_len = min(header.block_size, self.size - block_guest)
        # 1. the data block: what lies below around the new bytes, then the new bytes
        self._fill(data_host, within, None if reads_zero else block_guest, fresh)
        self.file.pwrite(piece, data_host + within)
        tail = within + len(piece)
        self._fill(data_host + tail, block_len - tail,
                   None if reads_zero else block_guest + tail, fresh)
        self._publish(block, slot)

    def _copy_unallocated(self, run: Run, source: HostFile, source_offset: int) -> None:
        """Whole blocks are allocated by an in-kernel copy, a stretch of them at once
        when their slots are adjacent (no block_extra); partial ones through a buffer."""
        block_size = self.header.block_size
        pos, end = run.offset, run.offset + run.length
        while pos < end:
            block, within = divmod(pos, block_size)
            step = min(block_size - within, end - pos)
            at = source_offset + pos - run.offset
            if within or step < min(block_size, self.size - pos):
                data = bytearray(step)
                source.preadinto(memoryview(data), at)
                self._store_in_block(block, within, memoryview(data), run.kind)
                pos += step
                continue
            whole = (end - pos) // block_size or 1  # or the short last block alone
            count = min(whole, COPY_BLOCKS) if self.header.block_extra == 0 else 1
            first_slot, _fresh = self._claim_slot()
            count = min(count, self.header.blocks_in_image - first_slot)
            length = min(count * block_size, end - pos)
            # 1. the data of every block, 2. their map entries, 3. the header's count
            self.file.copy_range(source, at, length, self._slot_host(first_slot))
            self._publish_many(block, first_slot, count)
            pos += length

    def _publish_many(self, first_block: int, first_slot: int, count: int) -> None:
        """Map ``count`` consecutive blocks to consecutive slots whose data is written."""
        slot_end = self.header.offset_data + (first_slot + count) * self.header.slot_size
        if self.file_end < slot_end:
            self.file.truncate(slot_end)
            self.file_end = slot_end
        self.next_slot = first_slot + count
        if len(self.slot_owner) < self.next_slot:
            self.slot_owner.extend([BLOCK_FREE] * (self.next_slot - len(self.slot_owner)))
        for n in range(count):
            self.slot_owner[first_slot + n] = first_block + n
            self.block_map[first_block + n] = first_slot + n
            self.unpublished[first_block + n] = first_slot + n
        self._set_blocks_allocated(self.next_slot)  # the reservation; the map at the barrier

    def _flush_metadata(self) -> None:
        self._publish_entries()

    def _publish_entries(self) -> None:
        """Barrier, then the map entries of the blocks allocated since the last one."""
        if not self.unpublished:
            return
        self.file.sync()  # the data and the count are durable before a map entry is
        blocks = sorted(self.unpublished)
        self.unpublished.clear()
        start = 0
        for i in range(1, len(blocks) + 1):  # one write per run of adjacent entries
            if i == len(blocks) or blocks[i] != blocks[i - 1] + 1:
                run = array("I", (self.block_map[b] for b in blocks[start:i]))
                if not _HOST_IS_LITTLE:
                    run.byteswap()
                self.file.pwrite(run.tobytes(), self.header.offset_bmap + 4 * blocks[start])
                start = i
        self.used_slots = max(self.used_slots, self.next_slot)

    def _claim_slot(self) -> tuple[int, bool]:
        """The slot a new block takes, and whether it lies past the end of the file (so
        it reads as zeros without being written).  Zeros the block_extra area if not."""
        slot = self.next_slot
        if slot >= self.header.blocks_in_image:
            # only a damaged map gets here (every block has a slot, some unused): another
            # slot would make blocks_allocated exceed blocks_in_image, which no reader takes
            raise CorruptImageError(self.path, f"all {slot} block slots are taken, yet block "
                                    "map entries are free (emu img check shows the unused "
                                    "slots)", field="blocks_allocated")
        slot_start = self.header.offset_data + slot * self.header.slot_size
        fresh = slot_start >= self.file_end
        if not fresh and self.header.block_extra:
            self._fill(slot_start, self.header.block_extra, None)
        return slot, fresh

    def _publish(self, block: int, slot: int) -> None:
        """After the data: make the file cover the slot, count it; the entry follows."""
        self._publish_many(block, slot, 1)

    def _fill(self, host: int, length: int, guest: int | None, fresh: bool = False) -> None:
        """Write ``length`` bytes at ``host``: zeros (``guest`` None) or the parent's bytes."""
        if length <= 0 or (guest is None and fresh):
            return
        buffer = bytearray(min(length, FILL_CHUNK))
        done = 0
        while done < length:
            step = min(len(buffer), length - done)
            view = memoryview(buffer)[:step]
            if guest is None:
                view[:] = bytes(step)
            else:
                self._read_below(guest + done, view)
            self.file.pwrite(view, host + done)
            done += step

    def _set_entry(self, block: int, entry: int) -> None:
        self.block_map[block] = entry
        self.file.pwrite(struct.pack("<I", entry), self.header.offset_bmap + 4 * block)

    def _set_blocks_allocated(self, count: int) -> None:
        self.header.blocks_allocated = count
        self.file.pwrite(struct.pack("<I", count), VdiHeader.OFFSET_BLOCKS_ALLOCATED)

    # --- discard ------------------------------------------------------------------
    def _discard(self, offset: int, length: int) -> None:
        if self.header.image_type == TYPE_FIXED:
            self.write_zeroes(offset, length)  # a fixed image keeps every block
            return
        block_size = self.header.block_size
        end = offset + length
        first_whole = _align(offset, block_size)
        last_whole = end // block_size * block_size
        if end == self.size:
            last_whole = _align(end, block_size)  # the short last block counts as whole
        if first_whole >= last_whole:
            self.write_zeroes(offset, length)
            return
        if offset < first_whole:
            self.write_zeroes(offset, first_whole - offset)
        for block in range(first_whole // block_size, last_whole // block_size):
            self._discard_block(block)
        if min(last_whole, end) < end:
            self.write_zeroes(last_whole, end - last_whole)

    def _discard_block(self, block: int) -> None:
        entry = self.block_map[block]
        if entry == BLOCK_ZERO:
            return
        self._publish_entries()  # every entry on disk before slots move
        self._set_entry(block, BLOCK_ZERO)
        if entry < min(BLOCK_ZERO, len(self.slot_owner)) and self.slot_owner[entry] == block:
            self._release_slot(entry)   # (a duplicate entry may name a slot already gone)

    def _release_slot(self, slot: int) -> None:
        """Keep slots dense: move the last slot's block into ``slot``, then shrink.

        Each step is durable before the next: nothing points at ``slot`` before it is
        overwritten, its new data is there before the entry points at it, and the
        count drops only when no entry points past it."""
        header = self.header
        self.slot_owner[slot] = BLOCK_FREE
        last = self.next_slot - 1
        owner = self.slot_owner[last] if last >= 0 else BLOCK_FREE
        if slot != last:
            if owner == BLOCK_FREE or self.block_map[owner] != last:
                return  # the last slot is not cleanly owned: leave a leak for check()
            self.file.sync()
            self._copy_slot(last, slot)
            self.file.sync()
            self.slot_owner[slot] = owner
            self._set_entry(owner, slot)
        self.file.sync()
        self.slot_owner[last] = BLOCK_FREE
        self.next_slot = self.used_slots = last
        del self.slot_owner[last:]
        self._set_blocks_allocated(last)
        self.file_end = header.offset_data + last * header.slot_size
        self.file.truncate(self.file_end)

    def _copy_slot(self, source: int, target: int) -> None:
        slot_size = self.header.slot_size
        src = self.header.offset_data + source * slot_size
        dst = self.header.offset_data + target * slot_size
        buffer = bytearray(min(slot_size, FILL_CHUNK))
        done = 0
        while done < slot_size:
            step = min(len(buffer), slot_size - done)
            view = memoryview(buffer)[:step]
            self.file.preadinto(view, src + done)
            self.file.pwrite(view, dst + done)
            done += step

    # --- check and info -------------------------------------------------------------
    def _check(self, report: CheckReport, repair: bool) -> None:
        if repair:   # what the writable open already finished counts as repaired
            report.repaired.extend(self.recovered)
            self.recovered.clear()
        first_user, broken = self._audit(report)
        if not repair or broken or report.clean:
            return
        # Fixable: the count and trailing space.  Interior holes stay (moving data is
        # not a repair); duplicates and wild entries are left for a human.
        header = self.header
        used_end = max(first_user, default=-1) + 1
        self._set_blocks_allocated(used_end)
        self.next_slot = self.used_slots = used_end
        self.slot_owner = array("I", [BLOCK_FREE]) * used_end
        for slot, block in first_user.items():
            self.slot_owner[slot] = block
        self.file_end = header.offset_data + used_end * header.slot_size
        self.file.truncate(self.file_end)
        report.repaired.append(f"blocks_allocated set to {used_end} and the file trimmed "
                               "after the last used slot")
        report.corruptions.clear()
        report.leaks.clear()
        self._audit(report)

    def _audit(self, report: CheckReport) -> tuple[dict[int, int], bool]:
        """Report map problems; returns slot -> first block using it, and whether any
        problem needs more than a count fix."""
        header = self.header
        file_size = self.file.size()
        first_user: dict[int, int] = {}
        broken = False
        for block, entry in self._slot_entries():
            if entry >= header.blocks_in_image:
                report.corrupt(f"block {block}: map entry {entry} is beyond blocks_in_image "
                               f"{header.blocks_in_image}")
                broken = True
                continue
            if self._slot_host(entry) + header.block_size > file_size:
                report.corrupt(f"block {block}: slot {entry} runs past the end of the file")
                broken = True
            if entry in first_user:
                report.corrupt(f"block {block}: slot {entry} is also used by block "
                               f"{first_user[entry]}")
                broken = True
                continue
            first_user[entry] = block
        used_end = max(first_user, default=-1) + 1
        count = header.blocks_allocated
        if used_end > count:
            report.corrupt(f"blocks_allocated is {count} but the block map uses "
                           f"{used_end} slots (the next allocation would overwrite one)")
        for slot in range(max(count, used_end)):
            if slot not in first_user:
                report.leak(f"slot {slot} is inside the allocated area but no block uses it")
        data_end = header.offset_data + max(count, used_end) * header.slot_size
        if file_size > data_end:
            report.leak(f"{file_size - data_end} bytes after the last block slot are unused")
        return first_user, broken

    def _close(self) -> None:
        if isinstance(self.block_map, memoryview):
            self.block_map.release()   # unmaps it once no other view is left

    def _info(self) -> dict[str, Any]:
        header = self.header
        facts: dict[str, Any] = {
            "image-type": TYPE_NAMES.get(header.image_type, str(header.image_type)),
            "version": f"{header.version >> 16}.{header.version & 0xFFFF}",
            "block-size": header.block_size,
            "block-extra": header.block_extra,
            "blocks-in-image": header.blocks_in_image,
            "blocks-allocated": header.blocks_allocated,
            "uuid": _uuid_text(header.uuid_image),
            "modification-uuid": _uuid_text(header.uuid_modification),
        }
        if header.uuid_parent != NULL_UUID:
            facts["parent-uuid"] = _uuid_text(header.uuid_parent)
            facts["parent-modification-uuid"] = _uuid_text(header.uuid_parent_modification)
        if header.lchs_cylinders and header.lchs_heads and header.lchs_sectors:
            facts["lchs-geometry"] = (f"{header.lchs_cylinders}/{header.lchs_heads}/"
                                      f"{header.lchs_sectors}")
        return facts

    @property
    def uuid(self) -> str:
        return _uuid_text(self.header.uuid_image)


def _find_vdi_by_uuid(folder: str, wanted: bytes, *, exclude: str) -> str | None:
    """The ``.vdi`` file in ``folder`` whose ``uuid_image`` is ``wanted``, if any."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    excluded = os.path.realpath(exclude)
    for name in names:
        if not name.lower().endswith(".vdi"):
            continue
        path = os.path.join(folder, name)
        if os.path.realpath(path) == excluded or not os.path.isfile(path):
            continue
        try:
            file = HostFile(path, writable=False)
        except ImageError:
            continue
        try:
            raw = file.pread(PRE_HEADER_SIZE + HEADER_V1_SIZE, 0)
        except ImageError:
            continue
        finally:
            file.close()
        if len(raw) < PRE_HEADER_SIZE + HEADER_V1_SIZE:
            continue
        candidate = VdiHeader.unpack(raw)
        if candidate.signature == SIGNATURE and candidate.uuid_image == wanted:
            return path
    return None
