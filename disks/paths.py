"""Where the files an image names may lie: one policy for every format.

Theory of operation
-------------------
Images name other files: VMDK descriptors their extents and parent, VHD and
VHDX parent locators their parent, VDI its parent by UUID in its own folder.
An image received from someone else must not make emu open ``/etc/passwd``,
``/dev/zero`` or ``../../home/x`` on its behalf (it would then show, copy or
write that file as disk content).  So a file named *inside* an image is used
only when its real path (symlinks resolved) lies in the folder of the image
naming it or in the folder of an image already opened in the same chain.  The
user widens this with explicit folders: ``disks.open(..., allow_paths=[...])``
or ``--allow-path DIR`` on the command line (``/`` allows every path).  Files
the user names directly (the image, ``-b``) are the user's choice and are not
checked.  Special files are refused by :class:`~disks.hostfile.HostFile`
whatever the policy.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import PathNotAllowedError

OPTION_HINT = "allow its folder with --allow-path DIR (allow_paths= in disks.open)"


def _real_folder(path: str) -> str:
    return os.path.realpath(path)


@dataclass(frozen=True)
class PathPolicy:
    """The folders (real paths) files named by images may come from."""

    folders: tuple[str, ...] = ()

    @classmethod
    def allowing(cls, folders: Iterable[str | os.PathLike[str]] | None) -> PathPolicy:
        """The user's explicit folders (none by default)."""
        return cls(tuple(_real_folder(os.fspath(f)) for f in folders or ()))

    def admit(self, image_path: str) -> PathPolicy:
        """This policy plus the folder of an opened image (as named and as resolved)."""
        added = [os.path.dirname(os.path.realpath(image_path)),
                 _real_folder(os.path.dirname(os.path.abspath(image_path)))]
        folders = list(self.folders)
        folders.extend(f for f in added if f not in folders)
        return PathPolicy(tuple(folders))

    def permits(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(os.path.commonpath([folder, real]) == folder for folder in self.folders)

    def require(self, path: str, *, image: str, field: str) -> None:
        """Raise :class:`PathNotAllowedError` (naming the option) unless permitted."""
        if not self.permits(path):
            raise refusal(path, image=image, field=field)


def refusal(path: str, *, image: str, field: str) -> PathNotAllowedError:
    return PathNotAllowedError(
        image, f"{path!r} lies outside the folders of the image chain; {OPTION_HINT}",
        field=field)
