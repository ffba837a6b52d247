"""The host file under an image: positional I/O, durability and locking.

Every driver does all of its file I/O through a :class:`HostFile`, never through
``open()`` or ``os`` calls of its own.  That keeps four things in one place:
turning ``OSError`` into :class:`~disks.errors.ImageIOError` naming the file,
opening without blocking and only regular files (a FIFO named as an extent
must not hang the open), the locks in QEMU's scheme that keep writers apart
(:mod:`disks.locking`), and a seam where tests put a wrapper that records or
cuts off the stream of writes and syncs (crash tests).  Files an image names
(extents) are opened through :meth:`HostFile.open_related`, which applies the
path policy (:mod:`disks.paths`) and the same lock mode.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from . import locking
from .errors import ImageIOError, ImageLockedError, InvalidOptionError
from .paths import PathPolicy

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


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
          (stat.S_ISSOCK, "a socket"))


def _file_kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "a special file")


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


MAX_FILE_OFFSET = (1 << 63) - 1   # off_t: nothing lies beyond (reads there see zeros)


class HostFile:
    """An open file on the host, addressed by offset only."""

    def __init__(self, path: str | os.PathLike[str], *, writable: bool,
                 create: bool = False, device: bool = False) -> None:
        """Open ``path``: a regular file (or, with ``device``, a block device).

        The open never blocks (a FIFO or a terminal named as an image is refused,
        not waited on).  ``create`` makes the file if missing and empties it, but only
        after taking the writer's locks: a file another program uses is left whole.
        """
        self.path = os.fspath(path)
        self.writable = writable or create
        self.force_share = False
        self.paths: PathPolicy | None = None  # where files this one names may lie
        self.created: list[str] = []  # files create_related made (removed if a create fails)
        self._locked = False
        flags = os.O_RDWR if self.writable else os.O_RDONLY
        if create:
            flags |= os.O_CREAT
        flags |= getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)
        try:
            self.fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise ImageIOError(self.path, f"cannot open: {exc.strerror}") from exc
        self.closed = False
        self._mapped_size = 0  # file size last seen by mapped()
        try:
            mode = os.fstat(self.fd).st_mode
            if not (stat.S_ISREG(mode) or (device and stat.S_ISBLK(mode))):
                raise ImageIOError(self.path, f"is {_file_kind(mode)}, not a regular file")
            os.set_blocking(self.fd, True)
            if create:
                self.lock()
                self.truncate(0)
        except BaseException:
            self.close()
            raise

    def open_related(self, path: str, *, writable: bool, what: str) -> HostFile:
        """Open a file this one names (an extent): inside the allowed folders, a regular
        file, locked as this one is (the same force-share)."""
        paths = self.paths if self.paths is not None else PathPolicy().admit(self.path)
        paths.require(path, image=self.path, field=what)
        related = HostFile(path, writable=writable)
        try:
            related.paths = paths
            related.lock(force_share=self.force_share)
        except BaseException:
            related.close()
            raise
        return related

    def create_related(self, path: str) -> HostFile:
        """Create a file this one names while this one is being created (an extent),
        emptying an existing one only once locked; :attr:`created` lists the new ones
        so that a failed create can remove them."""
        existed = os.path.lexists(path)
        related = HostFile(path, writable=True, create=True)
        if not existed:
            self.created.append(path)
        return related

    # -- locking -----------------------------------------------------------
    def lock(self, *, force_share: bool = False) -> None:
        """Take QEMU's permission locks for this open (see :mod:`disks.locking`): a
        writer's when open for writing, a reader's otherwise; ``force_share`` (read-only
        opens only, qemu-img's ``-U``) lets writers in.  Fails with
        :class:`ImageLockedError` when another user's locks forbid the open."""
        if force_share and self.writable:
            raise InvalidOptionError(self.path, "force-share can only be used with "
                                     "read-only opens", field="force_share")
        held, shared = locking.permissions(writable=self.writable, force_share=force_share)
        try:
            if not locking.supported(self.fd):
                return  # the file system keeps no locks (as QEMU, carry on without)
            locking.take(self.fd, held, shared)
        except locking.LockConflict as exc:
            raise ImageLockedError(
                self.path, f"{exc} (the image is in use by another process)") from None
        except OSError as exc:
            raise ImageIOError(self.path, f"cannot lock: {exc.strerror}") from exc
        self.force_share = force_share
        self._locked = True

    @property
    def excludes_writers(self) -> bool:
        """True when no other (lock-honouring) writer can change the file meanwhile:
        this open is the writer, or holds a reader's lock without force-share."""
        return self._locked and (self.writable or not self.force_share)

    def unlock(self) -> None:
        """Drop this open's permission locks."""
        locking.release(self.fd)
        self._locked = False

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
            while done < total and offset + done <= MAX_FILE_OFFSET:
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
