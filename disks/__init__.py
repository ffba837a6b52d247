"""emu's disk-image layer: one interface over raw, VDI, VHD, VMDK and VHDX images.

Use :func:`open`, :func:`create` (:func:`creating` to fill an image before it
replaces its target) and :func:`probe`; every image is a :class:`Image`.  Errors
are :class:`ImageError` subclasses naming the file and field.  Every file is
locked in QEMU's scheme (:mod:`disks.locking`), and files an image names lie in
its chain's folders unless allowed (:mod:`disks.paths`).  Format modules
register their drivers in :mod:`disks.registry` when imported; the registry
imports them on first use (``disks.vdi`` and friends also load on attribute
access), so a run that names its formats loads only those.
"""

import importlib
from types import ModuleType

from .errors import (
    BackingChainError,
    CorruptImageError,
    ImageError,
    ImageIOError,
    ImageLockedError,
    ImageWarning,
    InvalidOptionError,
    MissingBackingError,
    OutOfRangeError,
    PathNotAllowedError,
    ReadOnlyImageError,
    UnknownFormatError,
    UnsupportedImageError,
)
from .image import CheckReport, Extent, Geometry, Image, RunKind
from .registry import create, creating, driver_for, formats, open, probe

__all__ = [
    "BackingChainError", "CheckReport", "CorruptImageError", "Extent", "Geometry", "Image",
    "ImageError", "ImageIOError", "ImageLockedError", "ImageWarning", "InvalidOptionError",
    "MissingBackingError", "OutOfRangeError", "PathNotAllowedError", "ReadOnlyImageError",
    "RunKind", "UnknownFormatError", "UnsupportedImageError", "create", "creating",
    "driver_for", "formats", "open", "probe",
]


def __getattr__(name: str) -> ModuleType:
    """``disks.vdi`` etc. without an explicit import (the modules load lazily)."""
    if name in _DRIVER_MODULE_NAMES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_DRIVER_MODULE_NAMES = ("raw", "vdi", "vhdx", "vmdk", "vpc")
