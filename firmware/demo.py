"""The built-in demo disk that ``emu run`` boots when no ``--disk`` is given.

Its boot sector (``demo.asm``) greets, writes LBA 1 through INT 13h AH=43h, reads it
back with AH=02h, prints the outcome and exits through the debug-exit port (0 = OK).
"""

from __future__ import annotations

import os

import disks

from . import path

DEMO_DISK_SIZE = 8 * 1024 * 1024
DEMO_FORMAT = "vpc"          # a dynamic VHD, the "demo disk in VHD format"
FALLBACK_FORMAT = "raw"


def demo_format() -> str:
    """The image format the demo disk is created in: VHD when its driver is registered."""
    return DEMO_FORMAT if DEMO_FORMAT in disks.formats() else FALLBACK_FORMAT


def make_demo_disk(target: str | os.PathLike[str]) -> str:
    """Create the demo disk at ``target`` (replacing it); returns the image format name."""
    boot_sector = path("demo.bin").read_bytes()
    fmt = demo_format()
    with disks.create(target, fmt, DEMO_DISK_SIZE) as image:
        image.write(0, boot_sector)
    return fmt
