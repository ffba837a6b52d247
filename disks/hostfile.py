"""The host file under an image: positional I/O, durability and locking.

Every driver does all of its file I/O through a :class:`HostFile`, never through
``open()`` or ``os`` calls of its own.  That keeps three things in one place:
turning ``OSError`` into :class:`~disks.errors.ImageIOError` naming the file,
the advisory lock that keeps two writers apart, and a seam where tests put a
wrapper that records or cuts off the stream of writes and syncs (crash tests).
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from .errors import ImageIOError, ImageLockedError

_ZERO_CHUNK = bytes(1 << 20)
NO_HOLE = (1 << 63) - 1   # seek_hole's answer when the file system cannot tell
COPY_PART = 1 << 20   # copy_range splits copies of at least two of these ...
COPY_THREADS = 4      # ... over this many threads
_copy_threads: list[Any] = []


def _copy_pool() -> Any:
    """The shared thread pool of copy_range (made on first use: most runs never copy)."""
    if not _copy_threads:
        from concurrent.futures import ThreadPoolExecutor
        _copy_threads.append(ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="emu-copy"))
    return _copy_threads[0]


def zero_fill(view: memoryview) -> None:
    """Set every byte of ``view`` to zero without allocating its size."""
    done = 0
    total = len(view)
    while done < total:
        step = min(total - done, len(_ZERO_CHUNK))
        view[done:done + step] = _ZERO_CHUNK[:step]
        done += step


def is_zero(data: bytes | bytearray | memoryview) -> bool:
    """True when every byte of ``data`` is zero (memcmp speed, no big allocation)."""
    view = memoryview(data).cast("B")
    done = 0
    total = len(view)
    while done < total:
        step = min(total - done, len(_ZERO_CHUNK))
        # bytes.startswith compares with memcmp; memoryview == bytes goes element
        # by element (about 70 MB/s)
        if not _ZERO_CHUNK.startswith(view[done:done + step]):
            return False
        done += step
    return True


class HostFile:
    """An open file on the host, addressed by offset only."""

    def __init__(self, path: str | os.PathLike[str], *, writable: bool,
                 create: bool = False) -> None:
        self.path = os.fspath(path)
        self.writable = writable
        flags = os.O_RDWR if writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT | os.O_TRUNC
        flags |= getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise ImageIOError(self.path, f"cannot open: {exc.strerror}") from exc
        self.closed = False
        self._mapped_size = 0  # file size last seen by mapped()

    # -- locking -----------------------------------------------------------
    def lock(self) -> None:
        """Take the writer's advisory lock, or fail with :class:`ImageLockedError`."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ImageLockedError(
                    self.path, "image is in use by another writer (advisory lock held)"
                ) from exc
            raise ImageIOError(self.path, f"cannot lock: {exc.strerror}") from exc

    def try_lock_shared(self) -> bool:
        """Take a reader's advisory lock if no writer holds the file (True when taken).

        For a read-only file only: on a file this process opened for writing the
        writer's lock is already held, and flock would turn it into a shared one."""
        if self.writable:
            raise ValueError("try_lock_shared is for read-only files")
        try:
            fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return False
        return True

    def unlock(self) -> None:
        try:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        except OSError as exc:
            raise ImageIOError(self.path, f"cannot unlock: {exc.strerror}") from exc

    # -- positional I/O ----------------------------------------------------
    def size(self) -> int:
        try:
            return os.fstat(self.fd).st_size
        except OSError as exc:
            raise ImageIOError(self.path, f"cannot stat: {exc.strerror}") from exc

    def pread(self, length: int, offset: int) -> bytes:
        """Read up to ``length`` bytes; fewer only at end of file."""
        buf = bytearray(length)
        got = self.preadinto(memoryview(buf), offset, zero_past_eof=False)
        return bytes(buf[:got])

    def preadinto(self, view: memoryview, offset: int, *, zero_past_eof: bool = True) -> int:
        """Fill ``view`` from ``offset``; bytes past end of file read as zero.

        Returns how many bytes came from the file.
        """
        total = len(view)
        done = 0
        try:
            while done < total:
                got = os.preadv(self.fd, [view[done:]], offset + done)
                if got == 0:
                    break
                done += got
        except OverflowError:
            pass  # an offset past the largest possible file: past its end, so zeros
        except OSError as exc:
            raise ImageIOError(self.path, f"read at {offset}: {exc.strerror}") from exc
        if done < total and zero_past_eof:
            zero_fill(view[done:])
        return done

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        self.pwritev([data], offset)

    def pwritev(self, buffers: Sequence[bytes | bytearray | memoryview], offset: int) -> None:
        """Write all of ``buffers`` back to back from ``offset``."""
        views = [memoryview(b).cast("B") for b in buffers]
        try:
            while views:
                done = os.pwritev(self.fd, views, offset)
                offset += done
                while views and done >= len(views[0]):
                    done -= len(views[0])
                    views.pop(0)
                if views and done:
                    views[0] = views[0][done:]
        except OverflowError:
            raise ImageIOError(self.path, f"write at {offset}: beyond the largest possible "
                               "file") from None
        except OSError as exc:
            raise ImageIOError(self.path, f"write at {offset}: {exc.strerror}") from exc

    def copy_range(self, source: HostFile, source_offset: int, length: int,
                   offset: int) -> None:
        """Copy ``length`` bytes at ``source_offset`` in ``source`` to ``offset`` here.

        In the kernel (``copy_file_range``) where it can, through a buffer where not.
        Long copies are split over a few threads (the kernel copies them in parallel,
        as qemu-img's parallel requests do); all of it is written when this returns.
        """
        if length < 2 * COPY_PART:
            self._copy_part(source, source_offset, length, offset)
            return
        parts = min(COPY_THREADS, length // COPY_PART)
        per_thread = -(-length // parts)
        part = -(-per_thread // 4096) * 4096  # page-aligned; at most `parts` pieces
        pieces = [(at, min(part, length - at)) for at in range(0, length, part)]
        pool = _copy_pool()
        futures = [pool.submit(self._copy_part, source, source_offset + at, size, offset + at)
                   for at, size in pieces]
        errors = [f.exception() for f in futures]  # waits for every part
        for error in errors:
            if error is not None:
                raise error

    def _copy_part(self, source: HostFile, source_offset: int, length: int,
                   offset: int) -> None:
        done = 0
        try:
            while done < length:
                got = os.copy_file_range(source.fd, self.fd, length - done,
                                         source_offset + done, offset + done)
                if got == 0:
                    break  # the source ends early: the rest reads as zeros below
                done += got
        except OverflowError:
            pass  # a source offset past any file: the rest reads as zeros below
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP,
                                 errno.EBADF):
                raise ImageIOError(self.path, f"copy to {offset + done}: {exc.strerror}") from exc
        if done < length:
            rest = bytearray(length - done)
            source.preadinto(memoryview(rest), source_offset + done)
            self.pwrite(rest, offset + done)

    @contextmanager
    def mapped(self, offset: int, length: int) -> Iterator[tuple[mmap.mmap, int] | None]:
        """A read-only memory map covering ``[offset, offset+length)``.

        Yields ``(map, index of offset in map)``, or None when the range is not wholly
        inside the file (mapping past the end would fault) or cannot be mapped.  The
        caller must keep writers from shrinking the file meanwhile (a lock).
        """
        if offset + length > self._mapped_size:  # fstat only when the range is not known
            self._mapped_size = self.size()          # to be inside the file
        if length <= 0 or offset < 0 or offset + length > self._mapped_size:
            yield None
            return
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            view = mmap.mmap(self.fd, offset + length - base, flags=mmap.MAP_SHARED,
                             prot=mmap.PROT_READ, offset=base)
        except (OSError, ValueError):
            yield None
            return
        try:
            yield view, offset - base
        finally:
            view.close()

    def private_copy(self, offset: int, length: int) -> memoryview | None:
        """A writable copy of ``[offset, offset+length)`` that costs nothing until used.

        A private (copy-on-write) memory map: pages are read from the page cache when
        first touched, and changes stay in this process (write them with pwrite too).
        A 256 MiB table loads in no time and is held once.  None when the range is not
        inside the file or cannot be mapped (the caller reads a copy instead).
        """
        if length <= 0 or offset < 0 or offset + length > self.size():
            return None
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        # The map keeps a descriptor of its own (mmap dups the one it is given) for as
        # long as it lives: it must not be one holding this file's locks, or the lock
        # would outlive close().  A fresh open of the same inode shares no lock.
        try:
            fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            view = mmap.mmap(fd, offset + length - base, flags=mmap.MAP_PRIVATE,
                             prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=base)
        except (OSError, ValueError, AttributeError):
            return None
        finally:
            os.close(fd)
        return memoryview(view)[offset - base:offset - base + length]

    def truncate(self, size: int) -> None:
        self._mapped_size = min(self._mapped_size, size)
        try:
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise ImageIOError(self.path, f"cannot resize to {size}: {exc.strerror}") from exc

    def sync(self) -> None:
        """Make everything written so far durable (fsync)."""
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise ImageIOError(self.path, f"fsync: {exc.strerror}") from exc

    def seek_data(self, offset: int) -> int | None:
        """Next offset holding data at or after ``offset`` (SEEK_DATA), None at EOF."""
        try:
            return os.lseek(self.fd, offset, os.SEEK_DATA)
        except OverflowError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return None
            return offset  # file system cannot tell: everything is data

    def seek_hole(self, offset: int) -> int:
        """Next hole at or after ``offset`` (SEEK_HOLE); past any range asked about when
        the file system cannot tell, as :meth:`seek_data` then calls everything data (a
        smaller answer would make a caller's scan stop making progress)."""
        try:
            return os.lseek(self.fd, offset, os.SEEK_HOLE)
        except (OSError, OverflowError):
            return NO_HOLE

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)
