"""Image locks in QEMU's scheme, so emu and QEMU keep out of each other's way.

Theory of operation
-------------------
QEMU (block/file-posix.c) does not lock a whole image file.  Each user of a file
holds a set of *permissions* (consistent read, write, write-unchanged, resize:
bits 0..3, include/block/block.h) and a set of permissions it *shares* with
other users.  Both are published as shared open-file-description (OFD)
byte-range locks on single bytes of the file:

* byte ``100 + bit`` is locked while the user holds that permission;
* byte ``200 + bit`` is locked while the user does **not** share it.

Before using a file a user locks its own bytes, then tests (F_OFD_GETLK) that
no one else locks ``200 + bit`` for a permission it wants, nor ``100 + bit``
for a permission it refuses to share.  The locks are shared (read) locks, so
any number of users publish the same byte; only the test decides.  OFD locks
belong to the open file description: two opens in one process conflict like
two processes do, and closing the descriptor drops them.

What qemu-img/qemu-io take (seen in /proc/locks), and what emu takes alike:

=============  ===========================  ==========================
open           permissions (bytes 100+)     not shared (bytes 200+)
=============  ===========================  ==========================
read-write     consistent read, write,      write, resize
               resize
read-only      consistent read              write, resize
force-share    consistent read              none (``-U``, read-only only)
=============  ===========================  ==========================

So one writer excludes every other writer and every reader that did not ask
for force-share; any number of readers coexist.  Backing files are opened
read-only, which is exactly what QEMU takes on them.  One deliberate
difference: QEMU shares writes of *raw* files (no metadata to break), so two
qemu-io writers may share one; emu treats raw like every format (a second
writer of a raw disk still loses the guest's data).
"""

from __future__ import annotations

import enum
import errno
import fcntl
import struct

# Linux values; Python's fcntl module lacks them on some builds
F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)

LOCK_PERM_BASE = 100    # RAW_LOCK_PERM_BASE
LOCK_SHARED_BASE = 200  # RAW_LOCK_SHARED_BASE

# struct flock on 64-bit Linux: l_type, l_whence, (pad), l_start, l_len, l_pid, (pad)
_FLOCK = struct.Struct("@hhqqi4x")


class Perm(enum.IntFlag):
    """QEMU's BLK_PERM_* bits (the bit number is the offset from the lock base)."""

    CONSISTENT_READ = 0x01
    WRITE = 0x02
    WRITE_UNCHANGED = 0x04
    RESIZE = 0x08


PERM_ALL = Perm.CONSISTENT_READ | Perm.WRITE | Perm.WRITE_UNCHANGED | Perm.RESIZE
PERM_NAMES = {Perm.CONSISTENT_READ: "consistent read", Perm.WRITE: "write",
              Perm.WRITE_UNCHANGED: "write unchanged", Perm.RESIZE: "resize"}
_BITS = tuple((bit, index) for index, bit in enumerate(Perm))


class LockConflict(Exception):
    """Another user of the file holds or refuses a permission we need (QEMU's wording)."""


def permissions(*, writable: bool, force_share: bool) -> tuple[Perm, Perm]:
    """(held, shared) permissions of an emu open, as qemu-img takes them."""
    if writable:
        return Perm.CONSISTENT_READ | Perm.WRITE | Perm.RESIZE, \
            Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED
    if force_share:
        return Perm.CONSISTENT_READ, PERM_ALL
    return Perm.CONSISTENT_READ, Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED


def _flock(fd: int, command: int, lock_type: int, offset: int) -> int:
    packed = _FLOCK.pack(lock_type, 0, offset, 1, 0)  # l_pid must be 0 for OFD locks
    result = fcntl.fcntl(fd, command, packed)
    return int(_FLOCK.unpack(result[:_FLOCK.size])[0])


def _locked_by_other(fd: int, offset: int) -> bool:
    """Whether another open file description holds a lock on the byte at ``offset``."""
    return _flock(fd, F_OFD_GETLK, fcntl.F_WRLCK, offset) != fcntl.F_UNLCK


def apply(fd: int, held: Perm, shared: Perm) -> None:
    """Publish ``held``/``shared`` on ``fd``: lock the bytes they call for, unlock the rest."""
    for bit, index in _BITS:
        for offset, locked in ((LOCK_PERM_BASE + index, bit in held),
                               (LOCK_SHARED_BASE + index, bit not in shared)):
            _flock(fd, F_OFD_SETLK, fcntl.F_RDLCK if locked else fcntl.F_UNLCK, offset)


def check(fd: int, held: Perm, shared: Perm) -> None:
    """Raise :class:`LockConflict` when another user's locks forbid ``held``/``shared``."""
    for bit, index in _BITS:
        if bit in held and _locked_by_other(fd, LOCK_SHARED_BASE + index):
            raise LockConflict(f'Failed to get "{PERM_NAMES[bit]}" lock')
        if bit not in shared and _locked_by_other(fd, LOCK_PERM_BASE + index):
            raise LockConflict(f'Failed to get shared "{PERM_NAMES[bit]}" lock')


def take(fd: int, held: Perm, shared: Perm) -> None:
    """Apply then check (as QEMU does: a racing opener sees our bytes either way);
    on a conflict our bytes are released again before :class:`LockConflict` rises."""
    try:
        apply(fd, held, shared)
        check(fd, held, shared)
    except LockConflict:
        release(fd)
        raise
    except OSError as exc:
        release(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            raise LockConflict("Failed to lock byte range") from exc
        raise


def release(fd: int) -> None:
    """Drop every permission byte this open file description locks."""
    try:
        apply(fd, Perm(0), PERM_ALL)
    except OSError:
        pass


def supported(fd: int) -> bool:
    """Whether the file system takes OFD locks on ``fd`` (some network ones refuse)."""
    try:
        _locked_by_other(fd, LOCK_PERM_BASE)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return False
        raise
    return True
