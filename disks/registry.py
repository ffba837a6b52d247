"""The table of format drivers: probing, opening (with backing chains) and creating.

Like QEMU's list of block drivers, every format module registers its driver class
here at import, and nothing outside the format module asks "which format is
this?" -- it asks the table.
"""

from __future__ import annotations

import importlib
import os
import random
import stat
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import (
    BackingChainError,
    ImageError,
    ImageIOError,
    InvalidOptionError,
    MissingBackingError,
    UnknownFormatError,
)
from .hostfile import HostFile
from .image import MAX_CHAIN_DEPTH, Image, ProbeInput, _identity
from .paths import PathPolicy
from .paths import refusal as paths_refusal

os_open = os.open  # this module's open() is the image opener

PROBE_HEAD = 64 * 1024
PROBE_TAIL = 512

_drivers: dict[str, type[Image]] = {}
_aliases: dict[str, str] = {}

# The modules that register drivers, by the format names and aliases they register,
# imported on first use (QEMU keeps the same kind of table for its loadable block
# drivers): naming a format loads one module; probing or listing loads them all.
DRIVER_MODULES: dict[str, str] = {
    "raw": "disks.raw", "img": "disks.raw",
    "vdi": "disks.vdi",
    "vpc": "disks.vpc", "vhd": "disks.vpc",
    "vmdk": "disks.vmdk",
    "vhdx": "disks.vhdx",
}


def load_drivers(name: str | None = None) -> None:
    """Import the module registering format ``name`` (every driver module if None)."""
    modules = sorted(set(DRIVER_MODULES.values())) if name is None else [DRIVER_MODULES[name]]
    for module in modules:
        importlib.import_module(module)


def register(driver: type[Image]) -> type[Image]:
    """Add a driver class to the table (usable as a class decorator)."""
    name = driver.format_name
    if not name or name in _drivers:
        raise ValueError(f"driver name {name!r} missing or registered twice")
    _drivers[name] = driver
    for alias in driver.aliases:
        _aliases[alias] = name
    return driver


def formats() -> list[str]:
    """Registered format names."""
    load_drivers()
    return sorted(_drivers)


def driver_for(name: str, path: str | None = None) -> type[Image]:
    """The driver class for a format name or alias."""
    if _aliases.get(name, name) not in _drivers:
        load_drivers(name if name in DRIVER_MODULES else None)
    canonical = _aliases.get(name, name)
    try:
        return _drivers[canonical]
    except KeyError:
        raise UnknownFormatError(path, f"unknown format {name!r} (known: {', '.join(formats())})",
                                 field="format") from None


def _probe_input(file: HostFile) -> ProbeInput:
    size = file.size()
    head = file.pread(min(PROBE_HEAD, size), 0)
    tail = file.pread(min(PROBE_TAIL, size), max(0, size - PROBE_TAIL))
    return ProbeInput(file.path, head, tail, size)


def probe(path: str | os.PathLike[str]) -> str:
    """Name of the format that recognises ``path`` best."""
    file = HostFile(path, writable=False, device=True)
    try:
        return _best_driver(_probe_input(file)).format_name
    finally:
        file.close()


def _best_driver(data: ProbeInput) -> type[Image]:
    load_drivers()
    scored = sorted(((drv.probe(data), drv.format_name, drv) for drv in _drivers.values()),
                    key=lambda item: (-item[0], item[1]))
    if not scored or scored[0][0] <= 0:
        raise UnknownFormatError(data.path, "no driver recognises this file")
    return scored[0][2]


def open(path: str | os.PathLike[str], *, format: str | None = None,  # noqa: A002
         readonly: bool = False, backing: str | os.PathLike[str] | None = None,
         options: Mapping[str, Any] | None = None, force_share: bool = False,
         allow_paths: Iterable[str | os.PathLike[str]] | None = None) -> Image:
    """Open an image and its backing chain.

    ``backing`` overrides the parent file the image names; ``options`` are
    driver-specific open options.  Every file is locked in QEMU's scheme
    (:mod:`disks.locking`); ``force_share`` (read-only only, qemu-img's ``-U``) opens
    an image another program writes.  Files the image names must lie in the folders
    of the chain or in ``allow_paths`` (:mod:`disks.paths`).
    """
    return _open(os.fspath(path), format, readonly,
                 os.fspath(backing) if backing is not None else None,
                 dict(options or {}), visited=(), depth=0,
                 locks=_Locks(force_share, PathPolicy.allowing(allow_paths)))


def open_layer(path: str | os.PathLike[str], format: str | None = None,  # noqa: A002
               *, force_share: bool = False,
               allow_paths: Iterable[str | os.PathLike[str]] | None = None) -> Image:
    """Open one image read-only without its parents: what it holds itself reads as
    stored, what it leaves to a parent reads as zeros (``map`` says unallocated).  For
    verbs that rewrite an image's own layer, even when its parent is missing."""
    file = HostFile(os.fspath(path), writable=False, device=True)
    try:
        file.lock(force_share=force_share)
        file.paths = PathPolicy.allowing(allow_paths).admit(file.path)
        driver = driver_for(format, file.path) if format else _best_driver(_probe_input(file))
        return driver.open_file(file, readonly=True, options={})
    except BaseException:
        file.close()
        raise


@dataclass(frozen=True)
class _Locks:
    """How one ``open`` call opens every file of the chain."""

    force_share: bool
    paths: PathPolicy


def _open(path: str, format: str | None, readonly: bool,  # noqa: A002
          backing: str | None, options: dict[str, Any], *,
          visited: tuple[tuple[int, int] | str, ...], depth: int, locks: _Locks) -> Image:
    # the image the user names may be a block device; files images name may not
    file = HostFile(path, writable=not readonly, device=depth == 0)
    image: Image | None = None
    try:
        file.lock(force_share=locks.force_share)
        paths = locks.paths.admit(path)
        file.paths = paths
        driver = driver_for(format, path) if format else _best_driver(_probe_input(file))
        image = driver.open_file(file, readonly=readonly, options=options)
        spec = image.backing_spec
        if backing is not None or spec is not None:
            image.backing = _open_parent(image, backing, options,
                                         visited=(*visited, _identity(path)), depth=depth + 1,
                                         locks=_Locks(locks.force_share, paths))
        return image
    except BaseException:
        if image is not None:  # its parent failed: release its extents' files and locks
            image.closed = True  # without writing anything
            for extra in image.files()[1:]:
                extra.close()
        file.close()
        raise


def _open_parent(child: Image, override: str | None, options: dict[str, Any], *,
                 visited: tuple[tuple[int, int] | str, ...], depth: int,
                 locks: _Locks) -> Image:
    spec = child.backing_spec
    if depth > MAX_CHAIN_DEPTH:
        raise BackingChainError(child.path, f"backing chain deeper than {MAX_CHAIN_DEPTH}")
    if override is not None:
        candidates: tuple[str, ...] = (override,)
    elif spec is not None:
        candidates = tuple(c for c in (spec.filename, *spec.candidates) if c)
    else:
        candidates = ()
    # a parent the user named is the user's choice; one the image names must lie in
    # the chain's folders (checked before the file is even looked at)
    allowed = candidates if override is not None else \
        tuple(c for c in candidates if locks.paths.permits(c))
    found = next((c for c in allowed if os.path.lexists(c)), None)
    if found is None:
        refused = next((c for c in candidates if c not in allowed and os.path.lexists(c)),
                       None)
        if refused is not None:
            raise paths_refusal(refused, image=child.path, field="backing")
        named = spec.display_name or spec.filename if spec else override
        looked = f" (looked for {', '.join(candidates)})" if candidates else ""
        raise MissingBackingError(child.path, f"parent image {named!r} not found{looked}",
                                  field="backing")
    if _identity(found) in visited:
        raise BackingChainError(child.path, f"backing chain loops back to {found}",
                                field="backing")
    fmt = spec.format if spec is not None and override is None else None
    parent = _open(found, fmt, True, None, options, visited=visited, depth=depth, locks=locks)
    try:
        if spec is not None and spec.validate is not None:
            spec.validate(parent)
    except BaseException:
        parent.close()
        raise
    return parent


def create(path: str | os.PathLike[str], format: str, size: int | str | None = None,  # noqa: A002
           *, backing: str | os.PathLike[str] | None = None, backing_format: str | None = None,
           allow_paths: Iterable[str | os.PathLike[str]] | None = None,
           **options: Any) -> Image:
    """Create an image (replacing ``path``) and return it open for writing.

    ``size`` may be omitted with ``backing``: the parent's size is used.  Option names
    are those of ``emu img create -o`` (``static``, ``subformat``, ``block_size`` ...);
    ``allow_paths`` is :func:`open`'s, for the parent's own chain.

    Nothing at ``path`` changes before every check has passed: the options, the size
    and the parent are validated first, an existing file is locked as a writer (an
    image in use is refused, as qemu-img refuses it), and the new image is built in a
    temporary file beside it that replaces it only once complete and synced.  A
    failed create leaves no file behind (and the old one whole).
    """
    driver, staged = _stage(os.fspath(path), format, size, backing, backing_format,
                            allow_paths, options)
    staged.commit()
    return open(path, format=driver.format_name,
                backing=os.fspath(staged.backing) if staged.backing is not None else None,
                allow_paths=allow_paths)


@contextmanager
def creating(path: str | os.PathLike[str], format: str,  # noqa: A002
             size: int | str | None = None, *, backing: str | os.PathLike[str] | None = None,
             backing_format: str | None = None,
             allow_paths: Iterable[str | os.PathLike[str]] | None = None,
             **options: Any) -> Iterator[Image]:
    """:func:`create` for an image filled before it may replace ``path`` (convert).

    The image is open for writing under a temporary name beside ``path`` (errors name
    ``path``); it takes ``path``'s place only when the block ends without an error,
    after a close (the caller may close it first, e.g. without a sync).  On an error
    the new files are removed and whatever was at ``path`` is left whole.
    """
    driver, staged = _stage(os.fspath(path), format, size, backing, backing_format,
                            allow_paths, options)
    try:
        image = open(staged.temp, format=driver.format_name,
                     backing=os.fspath(staged.backing) if staged.backing is not None else None,
                     allow_paths=allow_paths)
    except BaseException:
        staged.abort()
        raise
    image.path = image.file.path = staged.path
    try:
        yield image
        image.close()   # nothing to do when the caller closed it
    except BaseException:
        try:
            image.close(sync=False)
        except ImageError:
            pass  # the first error is the one to report
        staged.abort()
        raise
    staged.commit()


@dataclass
class _Staged:
    """A new image built under a temporary name beside its target, the old file locked."""

    path: str                     # as the caller named it
    target: str                   # what the rename replaces (symlinks resolved)
    temp: str
    old: HostFile | None          # what was there, locked as a writer until the end
    created: list[str]            # extents made beside it (removed on abort)
    backing: str | None

    def commit(self) -> None:
        try:
            os.replace(self.temp, self.target)
        except OSError as exc:
            self.abort()
            raise ImageIOError(self.path, f"cannot create: {exc.strerror}") from exc
        _sync_folder(os.path.dirname(self.target))
        self._release()

    def abort(self) -> None:
        for leftover in (self.temp, *self.created):
            _unlink_quietly(leftover)
        self._release()

    def _release(self) -> None:
        if self.old is not None:
            self.old.close()
            self.old = None


def _stage(path: str, format: str, size: int | str | None,  # noqa: A002
           backing: str | os.PathLike[str] | None, backing_format: str | None,
           allow_paths: Iterable[str | os.PathLike[str]] | None,
           options: dict[str, Any]) -> tuple[type[Image], _Staged]:
    """Validate everything, lock what is at ``path``, build the image beside it."""
    driver = driver_for(format, path)
    parsed = parse_options(driver, options, path)
    parent: Image | None = None
    parent_path: str | None = None
    if backing is not None:
        if not driver.supports_backing:
            raise InvalidOptionError(
                path, f"{driver.format_name} images cannot have a backing file", field="backing")
        parent_path = _resolve_backing_arg(os.fspath(backing), path)
        parent = open(parent_path, format=backing_format, readonly=True, allow_paths=allow_paths)
    try:
        if size is None:
            if parent is None:
                raise InvalidOptionError(path, "a size is needed without a backing file",
                                         field="size")
            byte_size = parent.size
        else:
            byte_size = _parse_size(size, path)
        staged = _build_beside(path, driver, byte_size, parsed, parent)
    finally:
        if parent is not None:
            parent.close()
    staged.backing = parent_path
    return driver, staged


def _build_beside(path: str, driver: type[Image], size: int, options: dict[str, Any],
                  parent: Image | None) -> _Staged:
    """Build the image in a temporary file beside ``path`` while holding the writer's
    lock on what is there (the rename is the caller's, through :class:`_Staged`)."""
    old: HostFile | None = None
    if os.path.exists(path):                     # a dangling symlink: create its target
        old = HostFile(path, writable=True)   # refuses a FIFO, a device, a directory
        try:
            old.lock()                          # refuses an image in use
        except BaseException:
            old.close()
            raise
    target = os.path.realpath(path)              # a symlink stays a symlink
    folder, name = os.path.split(target)
    staged = _Staged(path, target, "", old, [], None)
    try:
        staged.temp = _temporary_beside(folder, name, path)
        file = HostFile(staged.temp, writable=True, create=True)
        try:
            file.path = path                      # errors and derived names use the target's
            staged.created = file.created         # extents made for it
            driver.create_file(file, size, options, parent)
            file.sync()
            if old is not None:   # the new file keeps the old one's mode and owner
                _copy_mode_and_owner(old.fd, file.fd)
        finally:
            file.close()
    except OSError as exc:
        staged.abort()
        raise ImageIOError(path, f"cannot create: {exc.strerror}") from exc
    except BaseException:
        staged.abort()
        raise
    return staged


def _temporary_beside(folder: str, name: str, path: str) -> str:
    for _ in range(100):
        temp = os.path.join(folder, f".{name}.{os.getpid()}.{random.randrange(1 << 32):08x}~")
        try:
            fd = os_open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue
        except OSError as exc:
            raise ImageIOError(path, f"cannot create: {exc.strerror}") from exc
        os.close(fd)
        return temp
    raise ImageIOError(path, "cannot create a temporary file beside it")


def _copy_mode_and_owner(source_fd: int, target_fd: int) -> None:
    st = os.fstat(source_fd)
    os.fchmod(target_fd, stat.S_IMODE(st.st_mode))
    try:
        os.fchown(target_fd, st.st_uid, st.st_gid)
    except PermissionError:
        pass  # only root gives files away; an owner's own file keeps its owner anyway


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _sync_folder(folder: str) -> None:
    """Make the rename durable."""
    try:
        fd = os_open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _resolve_backing_arg(backing: str, image_path: str) -> str:
    """A relative ``-b`` name is taken from the working folder, else the new image's folder."""
    if os.path.isabs(backing) or os.path.exists(backing):
        return backing
    beside = os.path.join(os.path.dirname(os.path.abspath(image_path)), backing)
    return beside if os.path.exists(beside) else backing


def _parse_size(size: int | str, path: str) -> int:
    from .image import parse_size
    try:
        return parse_size(size)
    except ValueError as exc:
        raise InvalidOptionError(path, str(exc), field="size") from None


def parse_options(driver: type[Image], options: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Validate create options against the driver's table; fill defaults."""
    parsed: dict[str, Any] = {}
    for key, value in options.items():
        spec = driver.create_options.get(key)
        if spec is None:
            known = ", ".join(sorted(driver.create_options)) or "none"
            raise InvalidOptionError(path, f"unknown option for {driver.format_name} "
                                     f"(known: {known})", field=key)
        try:
            parsed[key] = spec.parse(value)
        except (ValueError, TypeError) as exc:
            raise InvalidOptionError(path, str(exc), field=key) from None
    for key, spec in driver.create_options.items():
        parsed.setdefault(key, spec.default)
    return parsed


__all__ = ["DRIVER_MODULES", "ImageError", "create", "creating", "driver_for", "formats",
           "load_drivers", "open", "open_layer", "parse_options", "probe", "register"]
