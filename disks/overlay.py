"""A temporary copy-on-write overlay over any image (``emu run --snapshot``).

Theory of operation
-------------------
The overlay is an :class:`~disks.image.Image` whose ``backing`` is the real
image, opened read-only, so the real file is never written.  Its own file is a
scratch file holding whole clusters of :data:`CLUSTER_SIZE` bytes, appended in
the order they are first written; the cluster table (guest cluster -> host
offset) lives only in memory, because the overlay is thrown away when the
machine stops.  Reads of unwritten clusters fall through to the backing image
(the core's UNALLOCATED runs); the first write to a cluster copies the rest of
the cluster from below, then writes the new bytes.  Discard writes zeros into
the overlay (the base image must not change, and the overlay keeps no zero map).

It is not a registered format: nothing can open such a file again.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from .hostfile import HostFile
from .image import Image, Run, RunKind

CLUSTER_SIZE = 64 * 1024


class OverlayImage(Image):
    format_name = "overlay"

    def __init__(self, base: Image, scratch_path: str | os.PathLike[str]) -> None:
        super().__init__(HostFile(scratch_path, writable=True, create=True), readonly=False)
        self.backing = base
        self.size = base.size
        self.sector_size = base.sector_size
        self.geometry = base.geometry
        self.clusters: dict[int, int] = {}  # guest cluster index -> host offset
        self.host_end = 0

    def _map(self, offset: int, length: int) -> Iterator[Run]:
        end = offset + length
        position = offset
        while position < end:
            index, within = divmod(position, CLUSTER_SIZE)
            piece = min(CLUSTER_SIZE - within, end - position)
            host = self.clusters.get(index)
            if host is None:
                yield Run(position, piece, RunKind.UNALLOCATED)
            else:
                yield Run(position, piece, RunKind.DATA, host + within)
            position += piece

    def _write_unallocated(self, run: Run, data: memoryview) -> None:
        index, within = divmod(run.offset, CLUSTER_SIZE)
        cluster = bytearray(CLUSTER_SIZE)
        start = index * CLUSTER_SIZE
        inside = min(CLUSTER_SIZE, self.size - start)
        self._read_below(start, memoryview(cluster)[:inside])
        cluster[within:within + len(data)] = data
        host = self.host_end
        self.file.pwrite(cluster, host)
        self.host_end += CLUSTER_SIZE
        self.clusters[index] = host

    def _discard(self, offset: int, length: int) -> None:
        self.write_zeroes(offset, length)

    def _info(self) -> dict[str, Any]:
        return {"overlay-clusters": len(self.clusters)}

    def _close(self) -> None:
        try:
            os.unlink(self.file.path)
        except OSError:
            pass

    def flush(self, *, sync: bool = True) -> None:
        """Nothing to make durable: the overlay dies with the machine."""

    def allocation_unit(self) -> int:
        return CLUSTER_SIZE
