"""emu's disk-image layer: one interface over raw, VDI, VHD, VMDK and VHDX images.

Use :func:`open`, :func:`create` and :func:`probe`; every image is a
:class:`Image`.  Errors are :class:`ImageError` subclasses naming the file and
field.  Format modules register their drivers in :mod:`disks.registry` when
imported below.
"""

from . import raw, vdi, vhdx, vmdk, vpc  # noqa: F401  (registers the drivers)
from .errors import (
    BackingChainError,
    CorruptImageError,
    ImageError,
    ImageIOError,
    ImageLockedError,
    InvalidOptionError,
    MissingBackingError,
    OutOfRangeError,
    ReadOnlyImageError,
    UnknownFormatError,
    UnsupportedImageError,
)
from .image import CheckReport, Extent, Geometry, Image, RunKind
from .registry import create, driver_for, formats, open, probe

__all__ = [
    "BackingChainError", "CheckReport", "CorruptImageError", "Extent", "Geometry", "Image",
    "ImageError", "ImageIOError", "ImageLockedError", "InvalidOptionError",
    "MissingBackingError", "OutOfRangeError", "ReadOnlyImageError", "RunKind",
    "UnknownFormatError", "UnsupportedImageError", "create", "driver_for", "formats", "open",
    "probe",
]
