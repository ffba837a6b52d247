"""Disk geometry: what CHS shape an ATA drive reports, and what the BIOS is told.

Theory of operation
-------------------
Two geometries meet at an IDE disk:

* the **drive geometry** -- the default CHS translation an ATA drive reports in
  IDENTIFY DEVICE words 1/3/6 and uses for CHS commands until INITIALIZE DEVICE
  PARAMETERS changes it.  The task file has 4 head bits and a 16-bit cylinder,
  so ATA limits it to 16 heads and, in practice, 63 sectors and 16383 cylinders
  (ATA/ATAPI-6 annex on CHS: 16383 x 16 x 63 = 16,514,064 sectors);
* the **logical (BIOS) geometry** -- what INT 13h presents, published through
  CMOS.  For disks bigger than the drive geometry can describe the BIOS
  translates (LARGE/ECHS or LBA-assisted: 255 heads).

:func:`guess_geometry` answers the contract question "which geometry does this
disk have": the image's own (VHD footer, VMDK ddb, VDI header) when it is sane,
else the one the MBR partition table was written with (the heads and sectors of
a partition's end CHS, assuming it ends on a cylinder boundary -- the rule
QEMU's hd-geometry code and Bochs follow), else 16 heads x 63 sectors.
:func:`drive_geometry` turns it into a valid ATA drive geometry and
:func:`bios_translation` says which CMOS translation bridges the two (the two
bits per drive in CMOS 0x39, as QEMU and Bochs publish them).
"""

from __future__ import annotations

import enum
import struct

from disks import Geometry, Image, ImageError

SECTOR = 512
MAX_ATA_HEADS = 16
MAX_ATA_SECTORS = 63          # sectors per track in a drive's default translation
MAX_ATA_CYLINDERS = 16383     # word 1 stops here for disks of 8.4 GB and more
MAX_BIOS_HEADS = 255
MAX_BIOS_SECTORS = 63
MAX_BIOS_CYLINDERS = 1024
CHS_CAPACITY_LIMIT = MAX_ATA_CYLINDERS * MAX_ATA_HEADS * MAX_ATA_SECTORS  # 16,514,064

MBR_SIGNATURE_OFFSET = 510
MBR_SIGNATURE = b"\x55\xaa"
MBR_PARTITION_TABLE = 446
MBR_PARTITION = struct.Struct("<B3sB3sII")  # status, first CHS, type, last CHS, first LBA, count
MBR_PARTITIONS = 4


class Translation(enum.IntEnum):
    """The BIOS translation codes of CMOS register 0x39 (2 bits per drive)."""

    NONE = 0
    LBA = 1
    LARGE = 2
    RECHS = 3


CMOS_TRANSLATION_REGISTER = 0x39


def _sector_count(image: Image) -> int:
    return image.size // SECTOR


def _usable(geometry: Geometry | None, max_heads: int, max_sectors: int) -> bool:
    return (geometry is not None and geometry.cylinders >= 1
            and 1 <= geometry.heads <= max_heads and 1 <= geometry.sectors <= max_sectors)


def geometry_from_mbr(image: Image) -> Geometry | None:
    """The logical geometry an MBR partition table was laid out with, if it tells."""
    total = _sector_count(image)
    if total < 1:
        return None
    try:
        sector = image.read(0, SECTOR)
    except ImageError:
        return None
    if sector[MBR_SIGNATURE_OFFSET:MBR_SIGNATURE_OFFSET + 2] != MBR_SIGNATURE:
        return None
    for index in range(MBR_PARTITIONS):
        _status, _first, _kind, last_chs, _start, count = MBR_PARTITION.unpack_from(
            sector, MBR_PARTITION_TABLE + index * MBR_PARTITION.size)
        end_head = last_chs[0]
        end_sector = last_chs[1] & 0x3F
        if count == 0 or end_head == 0 or end_sector == 0:
            continue
        heads = end_head + 1
        cylinders = total // (heads * end_sector)
        if 1 <= cylinders <= MAX_ATA_CYLINDERS:
            return Geometry(cylinders, heads, end_sector)
    return None


def default_geometry(sectors: int) -> Geometry:
    """The standard 16-head, 63-sector shape for a disk of ``sectors`` sectors.

    A disk smaller than one such cylinder gets fewer heads (and, under one
    track, fewer sectors per track) so the CHS capacity never exceeds the disk.
    """
    per_cylinder = MAX_ATA_HEADS * MAX_ATA_SECTORS
    if sectors >= per_cylinder:
        cylinders = min(sectors // per_cylinder, MAX_ATA_CYLINDERS)
        return Geometry(cylinders, MAX_ATA_HEADS, MAX_ATA_SECTORS)
    per_track = min(MAX_ATA_SECTORS, max(1, sectors))
    heads = max(1, min(MAX_ATA_HEADS, sectors // per_track))
    return Geometry(1, heads, per_track)


def guess_geometry(image: Image) -> Geometry:
    """The disk's geometry: the image's, else the MBR's, else 16 heads x 63 sectors."""
    if _usable(image.geometry, MAX_BIOS_HEADS, MAX_BIOS_SECTORS):
        assert image.geometry is not None
        return image.geometry
    from_mbr = geometry_from_mbr(image)
    if from_mbr is not None:
        return from_mbr
    return default_geometry(_sector_count(image))


def drive_geometry(image: Image) -> Geometry:
    """The default CHS translation an ATA drive for ``image`` reports (words 1/3/6)."""
    sectors = _sector_count(image)
    guess = guess_geometry(image)
    if not _usable(guess, MAX_ATA_HEADS, MAX_ATA_SECTORS):
        return default_geometry(sectors)
    cylinders = min(guess.cylinders, MAX_ATA_CYLINDERS,
                    max(1, sectors // (guess.heads * guess.sectors)))
    return Geometry(max(1, cylinders), guess.heads, guess.sectors)


def bios_translation(image: Image) -> Translation:
    """How the BIOS should map INT 13h CHS onto the drive (CMOS 0x39 code).

    NONE when the logical geometry is the drive geometry; LBA when a guessed
    logical geometry has more than 16 heads (the disk was partitioned under an
    LBA-assisted BIOS); LARGE when the drive geometry has more than 1024
    cylinders but LARGE's head doubling still fits 255 heads; LBA otherwise.
    """
    drive = drive_geometry(image)
    logical = guess_geometry(image)
    if logical.heads > MAX_ATA_HEADS:
        return Translation.LBA
    if drive.cylinders <= MAX_BIOS_CYLINDERS:
        return Translation.NONE
    if drive.cylinders * drive.heads <= 131072:  # LARGE reaches 1024 x 128 heads
        return Translation.LARGE
    return Translation.LBA


def cmos_translation_byte(translations: dict[int, Translation]) -> int:
    """CMOS 0x39: two bits per drive, index = channel * 2 + unit (0..3)."""
    value = 0
    for index, translation in translations.items():
        if not 0 <= index < 4:
            raise ValueError(f"drive index {index} is not 0..3")
        value |= int(translation) << (index * 2)
    return value


def logical_geometry(image: Image) -> Geometry:
    """The INT 13h geometry the BIOS presents for ``image`` under its translation."""
    translation = bios_translation(image)
    drive = drive_geometry(image)
    sectors = _sector_count(image)
    if translation is Translation.NONE:
        return drive
    if translation is Translation.LARGE:
        cylinders, heads = drive.cylinders, drive.heads
        while cylinders > MAX_BIOS_CYLINDERS and heads * 2 <= MAX_BIOS_HEADS + 1:
            cylinders //= 2
            heads *= 2
        return Geometry(min(cylinders, MAX_BIOS_CYLINDERS), min(heads, MAX_BIOS_HEADS),
                        drive.sectors)
    guess = guess_geometry(image)
    if guess.heads > MAX_ATA_HEADS and guess.sectors <= MAX_BIOS_SECTORS:
        heads, per_track = guess.heads, guess.sectors
    else:
        per_track = MAX_BIOS_SECTORS
        heads = next((h for h in (16, 32, 64, 128)
                      if sectors // (h * per_track) <= MAX_BIOS_CYLINDERS), MAX_BIOS_HEADS)
    cylinders = min(MAX_BIOS_CYLINDERS, max(1, sectors // (heads * per_track)))
    return Geometry(cylinders, heads, per_track)
