"""The one error hierarchy of the disk layer.

Every error names the file it is about and, where one is to blame, the field
(header member, descriptor key, table entry) whose value was wrong, so a user
reading one line knows what to look at.
"""

from __future__ import annotations

import os


class ImageError(Exception):
    """Base of every error the disk layer raises on purpose."""

    def __init__(self, path: str | os.PathLike[str] | None, message: str,
                 *, field: str | None = None) -> None:
        self.path = os.fspath(path) if path is not None else None
        self.field = field
        self.reason = message
        parts = [p for p in (self.path, field) if p]
        super().__init__(": ".join([*parts, message]))


class CorruptImageError(ImageError):
    """The image's structures are inconsistent or point outside the file."""


class UnsupportedImageError(ImageError):
    """A valid image using a feature, version or size this layer does not handle."""


class UnknownFormatError(ImageError):
    """No registered driver recognises the file, or the format name is unknown."""


class ImageLockedError(ImageError):
    """Another writer holds the image (advisory lock)."""


class ReadOnlyImageError(ImageError):
    """A write, discard or repair was attempted on an image opened read-only."""


class OutOfRangeError(ImageError):
    """A read or write reaches beyond the virtual disk."""


class BackingChainError(ImageError):
    """The backing chain is broken: a cycle, too deep, or a parent that does not match."""


class MissingBackingError(BackingChainError):
    """The parent image a differencing image needs cannot be found."""


class PathNotAllowedError(ImageError):
    """An image names a file outside the folders the path policy allows (disks.paths)."""


class InvalidOptionError(ImageError):
    """A create option, size or format name given by the caller is not acceptable."""


class ImageIOError(ImageError):
    """The operating system refused an I/O operation on the image file."""


class ImageWarning(UserWarning):
    """Something was wrong but recoverable (a damaged copy of a redundant structure)."""
