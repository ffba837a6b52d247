"""Raw images: the file is the disk, byte for byte."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .hostfile import HostFile
from .image import Image, OptionSpec, ProbeInput, Run, RunKind, host_data_runs, parse_bool
from .registry import register


@register
class RawImage(Image):
    format_name = "raw"
    aliases = ("img",)
    create_options = {
        "preallocation": OptionSpec(parse_bool, "write zeros over the whole file at create",
                                    False),
    }

    @classmethod
    def probe(cls, data: ProbeInput) -> int:
        return 1  # anything can be a raw disk; every real format scores higher

    @classmethod
    def create_file(cls, file: HostFile, size: int, options: dict[str, Any],
                    backing: Image | None) -> None:
        if options.get("preallocation"):
            chunk = bytes(1 << 20)
            for offset in range(0, size, len(chunk)):
                file.pwrite(chunk[:min(len(chunk), size - offset)], offset)
        file.truncate(size)

    @classmethod
    def open_file(cls, file: HostFile, *, readonly: bool, options: dict[str, Any]) -> Image:
        image = cls(file, readonly=readonly)
        image.size = file.size()
        return image

    def _map(self, offset: int, length: int) -> Iterator[Run]:
        yield Run(offset, length, RunKind.DATA, offset)

    def _block_status(self, offset: int, length: int) -> Iterator[Run]:
        """Data where the host file system holds data, zero over its holes."""
        return host_data_runs(self.file, offset, length)

    def _discard(self, offset: int, length: int) -> None:
        self.write_zeroes(offset, length)

    def allocation_unit(self) -> int:
        return 4096
