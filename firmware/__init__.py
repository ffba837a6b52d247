"""emu's firmware: the BIOS ROM, the demo disk's boot sector and test ROMs, as package data.

The NASM sources sit beside the binaries built from them (``python -m firmware.build``);
users need no assembler, since the built ``*.bin`` files are committed.
"""

from __future__ import annotations

import pathlib
from importlib import resources


def path(name: str) -> pathlib.Path:
    """The filesystem path of the package data file ``name`` (e.g. ``"bios.bin"``)."""
    resource = resources.files(__name__).joinpath(name)
    if not resource.is_file():
        raise FileNotFoundError(f"firmware file {name!r} is not in the firmware package")
    return pathlib.Path(str(resource))
