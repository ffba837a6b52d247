"""``emu img`` verbs that change or measure whole images: resize, commit, rebase, amend,
measure, dd and bench.

Theory of operation
-------------------
Every verb works through the :class:`disks.Image` interface and the driver table;
none knows a format's allocation structures.  Verbs that change an image's layout
(resize, rebase, amend, and the emptying of a committed top image) *rewrite* it:
:func:`rewrite` builds a new image of the same format beside the old one
(:func:`disks.creating`), with the old one's layout options (:func:`layout_options`,
read back from ``info()``) plus the changes asked for, copies the old image's own
layer into it (its data runs, and its zero runs where a parent would show through),
and renames it over the old name only once complete.  A failed verb therefore
leaves the old file whole, and an interrupted one leaves at most a hidden
temporary beside it.  The price: a rewritten image gets new identifiers (UUIDs,
CID), so images that name it as their parent must be rebased onto it again (``-u``);
raw images are resized in place (a truncate, as qemu-img does).

``commit`` writes into its base in place, as qemu-img does, but only after every
check (chain, sizes, locks of both ends) has passed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import disks
from disks.hostfile import is_zero
from disks.image import Run, RunKind, parse_size
from disks.registry import open_layer, parse_options

COPY_CHUNK = 8 << 20
COMPARE_CHUNK = 64 << 10

# create option <- key of info()'s format-specific data, per format: what makes a
# rewritten image laid out like the old one
LAYOUT_KEYS: dict[str, dict[str, str]] = {
    "vdi": {"block_size": "block-size"},
    "vpc": {"subformat": "subformat", "block_size": "block-size"},
    "vmdk": {"subformat": "create-type", "adapter_type": "adapter-type",
             "hwversion": "hwversion"},
    "vhdx": {"subformat": "subformat", "block_size": "block-size", "log_size": "log-size",
             "logical_sector_size": "logical-sector-size",
             "physical_sector_size": "physical-sector-size"},
}


def layout_options(image: disks.Image) -> dict[str, Any]:
    """Create options that lay a new image out like ``image`` (format, block size ...)."""
    data = image.info().get("format-specific", {}).get("data", {})
    options: dict[str, Any] = {}
    for option, key in LAYOUT_KEYS.get(image.format_name, {}).items():
        value = data.get(key)
        if value is None or option not in type(image).create_options:
            continue
        if value == "differencing":
            continue  # a child's own kind follows from its parent
        options[option] = value
    if image.format_name == "vdi":
        options["static"] = data.get("image-type") == "static"
    if image.format_name == "vpc":
        options["force_size"] = True  # keep the size exactly
        if options.get("subformat") == "fixed":
            options.pop("block_size", None)
    return options


def own_runs(layer: disks.Image, length: int | None = None) -> Iterator[Run]:
    """The runs ``layer`` itself holds (data and zero; unallocated ones are skipped)."""
    length = layer.size if length is None else min(length, layer.size)
    for run in layer._map(0, length):  # noqa: SLF001 - the layer's own view, by design
        if run.kind is not RunKind.UNALLOCATED:
            yield run


def copy_layer(src: disks.Image, dst: disks.Image, *, keep_zeros: bool) -> None:
    """Copy the runs ``src`` itself holds into ``dst`` (zero runs too when ``keep_zeros``:
    they hide a parent's bytes)."""
    buffer = bytearray(COPY_CHUNK)
    for run in own_runs(src, dst.size):
        if run.kind is RunKind.ZERO:
            if keep_zeros:
                dst.write_zeroes(run.offset, run.length)
            continue
        pos, end = run.offset, run.offset + run.length
        while pos < end:
            step = min(COPY_CHUNK, end - pos)
            view = memoryview(buffer)[:step]
            src.readinto(pos, view)
            if keep_zeros or not is_zero(view):
                dst.write(pos, view)
            pos += step


def backing_of(image: disks.Image) -> tuple[str | None, str | None]:
    """The parent path and format a rewrite of ``image`` keeps."""
    if image.backing is None:
        return None, None
    return image.backing.path, image.backing.format_name


def rewrite(path: str, fmt: str | None, *, size: int | None = None,
            changes: dict[str, Any] | None = None,
            backing: tuple[str | None, str | None] | None = None,
            fill: Callable[[disks.Image, disks.Image], None] | None = None,
            allow_paths: list[str] | None = None) -> None:
    """Replace the image at ``path`` by a new one of the same format laid out alike, with
    ``size``/``changes``/``backing`` applied, filled by ``fill(old, new)`` (default: the
    old image's own layer).  The old file stays whole until the new one is complete."""
    old = open_layer(path, fmt, force_share=True, allow_paths=allow_paths)
    try:
        if len(old.files()) > 1:
            # its extent files would be created under their final names while still in
            # use: refuse before writing anything
            raise disks.UnsupportedImageError(
                path, "images stored in several files (VMDK extents) cannot be rewritten "
                "yet; convert it to a single-file subformat first", field="extents")
        options = layout_options(old)
        options.update(changes or {})
        parent, parent_fmt = backing if backing is not None else _stored_backing(old)
        new_size = old.size if size is None else size
        with disks.creating(path, old.format_name, new_size, backing=parent,
                            backing_format=parent_fmt, allow_paths=allow_paths,
                            **options) as new:
            if fill is not None:
                fill(old, new)
            else:
                copy_layer(old, new, keep_zeros=parent is not None)
    finally:
        old.close()


def _stored_backing(layer: disks.Image) -> tuple[str | None, str | None]:
    spec = layer.backing_spec
    if spec is None:
        return None, None
    candidates = [c for c in (spec.filename, *spec.candidates) if c and os.path.exists(c)]
    if not candidates:
        raise disks.MissingBackingError(layer.path, "its parent image "
                                        f"{spec.display_name or spec.filename!r} is not found",
                                        field="backing")
    return candidates[0], spec.format


# --- resize ----------------------------------------------------------------

def parse_resize(text: str, current: int, path: str) -> int:
    sign = text[:1] if text[:1] in "+-" else ""
    try:
        amount = parse_size(text[1:] if sign else text)
    except ValueError:
        raise disks.InvalidOptionError(path, f"invalid size {text!r}", field="size") from None
    new = current + amount if sign == "+" else current - amount if sign == "-" else amount
    if new <= 0 if sign == "-" else new < 0:
        raise disks.InvalidOptionError(path, "new size must be positive", field="size")
    return new


def cmd_resize(args: argparse.Namespace) -> int:
    with open_layer(args.filename, args.f, force_share=True) as probe:
        current, fmt = probe.size, probe.format_name
    new = parse_resize(args.size, current, args.filename)
    if new < current and not args.shrink:
        raise disks.InvalidOptionError(args.filename, "Use the --shrink option to perform a "
                                       "shrink operation", field="size")
    if fmt == "raw":
        with disks.open(args.filename, format="raw", allow_paths=args.allow_path) as image:
            image.file.truncate(new)  # in place, as qemu-img: raw has no metadata
    elif new != current:
        rewrite(args.filename, fmt, size=new, allow_paths=args.allow_path)
    if not args.q:
        print("Image resized.")
    return 0


# --- amend -----------------------------------------------------------------

def cmd_amend(args: argparse.Namespace) -> int:
    from emu.img import parse_o
    changes = parse_o(args.o)
    if not changes:
        raise disks.InvalidOptionError(args.filename, "no options given (-o)", field="o")
    with open_layer(args.filename, args.f, force_share=True) as probe:
        driver = type(probe)
        fmt = probe.format_name
    parsed = parse_options(driver, changes, args.filename)
    changes = {key: parsed[key] for key in changes}
    if "size" in changes:
        changes.pop("size")
    rewrite(args.filename, fmt, changes=changes, allow_paths=args.allow_path)
    return 0


# --- rebase ----------------------------------------------------------------

def cmd_rebase(args: argparse.Namespace) -> int:
    new_backing = args.b or None
    if args.u:
        # only the reference changes: the image's own layer is kept as it is
        rewrite(args.filename, args.f, backing=(new_backing, args.F),
                allow_paths=args.allow_path)
        return 0
    with disks.open(args.filename, format=args.f, readonly=True, force_share=True,
                    allow_paths=args.allow_path) as current:
        if new_backing is not None:
            _check_parent(new_backing, args.F, args.filename, args.allow_path)

        def fill(old: disks.Image, new: disks.Image) -> None:
            _safe_rebase_fill(current, new)

        rewrite(args.filename, current.format_name, backing=(new_backing, args.F),
                fill=fill, allow_paths=args.allow_path)
    return 0


def _check_parent(path: str, fmt: str | None, child: str, allow: list[str]) -> None:
    from disks.registry import _resolve_backing_arg
    with disks.open(_resolve_backing_arg(path, child), format=fmt, readonly=True,
                    force_share=True, allow_paths=allow):
        pass


def _safe_rebase_fill(current: disks.Image, new: disks.Image) -> None:
    """Make ``new`` (already on its new parent) read like ``current``: its own layer,
    plus every piece where the old chain and the new parent differ."""
    keep_zeros = new.backing is not None
    copy_layer(current, new, keep_zeros=keep_zeros)
    mine = bytearray(COMPARE_CHUNK)
    theirs = bytearray(COMPARE_CHUNK)
    for run in current._map(0, current.size):  # noqa: SLF001
        if run.kind is not RunKind.UNALLOCATED:
            continue
        pos, end = run.offset, run.offset + run.length
        while pos < end:
            step = min(COMPARE_CHUNK - pos % COMPARE_CHUNK, end - pos)
            a = memoryview(mine)[:step]
            current.readinto(pos, a)
            if new.backing is None:
                differs = not is_zero(a)
            else:
                b = memoryview(theirs)[:step]
                new.readinto(pos, b)
                differs = a != b
            if differs:
                new.write(pos, a)
            pos += step


# --- commit ----------------------------------------------------------------

def cmd_commit(args: argparse.Namespace) -> int:
    with disks.open(args.filename, format=args.f, readonly=True, force_share=True,
                    allow_paths=args.allow_path) as top:
        chain = top.chain()
        if len(chain) < 2:
            raise disks.InvalidOptionError(args.filename, "Image does not have a backing file",
                                           field="backing")
        depth = 1 if args.b is None else _find_in_chain(chain, args.b, args.filename)
        base_node = chain[depth]
        base_path, base_fmt = base_node.path, base_node.format_name
        drop = args.d or args.b is not None
        extents = [e for e in top.map() if e.depth < depth]
        size = top.size
        top_fmt = top.format_name
        top_options = layout_options(top)
        top_parent = _stored_backing(top)
        guard = None if drop else _writer_guard(args.filename)
        try:
            if base_node.size < size and base_fmt != "raw":
                raise disks.InvalidOptionError(
                    base_path, f"the base ({base_node.size} bytes) is smaller than the top "
                    f"image ({size} bytes): resize it first", field="size")
            with disks.open(base_path, format=base_fmt, allow_paths=args.allow_path) as base:
                if base.size < size:
                    base.file.truncate(size)
                    base.size = size
                _commit_extents(top, base, extents)
        finally:
            if guard is not None:
                guard.close()
    if not drop:
        # empty the top image: a fresh child of the same parent, laid out alike
        disks.create(args.filename, top_fmt, size, backing=top_parent[0],
                     backing_format=top_parent[1], allow_paths=args.allow_path,
                     **top_options).close()
    if not args.q:
        print("Image committed.")
    return 0


def _find_in_chain(chain: list[disks.Image], base: str, top: str) -> int:
    try:
        wanted = os.stat(base)
    except OSError:
        wanted = None
    for depth, node in enumerate(chain[1:], start=1):
        st = os.fstat(node.file.fd)
        if wanted is not None and (st.st_dev, st.st_ino) == (wanted.st_dev, wanted.st_ino):
            return depth
    raise disks.InvalidOptionError(top, f"Did not find '{base}' in the backing chain of "
                                   f"'{top}'", field="base")


def _writer_guard(path: str) -> disks.hostfile.HostFile:
    """Hold a writer's lock on ``path`` (refuses an image in use) until released."""
    from disks.hostfile import HostFile
    guard = HostFile(path, writable=True)
    try:
        guard.lock()
    except BaseException:
        guard.close()
        raise
    return guard


def _commit_extents(top: disks.Image, base: disks.Image, extents: list[disks.Extent]) -> None:
    buffer = bytearray(COPY_CHUNK)
    for extent in extents:
        if extent.kind is not RunKind.DATA:
            base.write_zeroes(extent.offset, extent.length)
            continue
        pos, end = extent.offset, extent.offset + extent.length
        while pos < end:
            step = min(COPY_CHUNK, end - pos)
            view = memoryview(buffer)[:step]
            top.readinto(pos, view)
            base.write(pos, view)
            pos += step


# --- measure ---------------------------------------------------------------

def cmd_measure(args: argparse.Namespace) -> int:
    from emu.img import parse_o
    if (args.size is None) == (args.filename is None):
        raise disks.InvalidOptionError(args.filename, "Either --size N or one filename must "
                                       "be specified.", field="size")
    fmt = args.O or "raw"
    options = parse_o(args.o)
    if args.filename is not None:
        with disks.open(args.filename, format=args.f, readonly=True,
                        force_share=args.U, allow_paths=args.allow_path) as src:
            size = src.size
            extents = [(e.offset, e.length) for e in src.map() if e.kind is RunKind.DATA]
    else:
        try:
            size = parse_size(args.size)
        except ValueError:
            raise disks.InvalidOptionError(None, f"invalid size {args.size!r}",
                                           field="size") from None
        extents = []
    required, full = measure(fmt, size, extents, options)
    if args.output == "json":
        print(json.dumps({"required": required, "fully-allocated": full}, indent=4))
    else:
        print(f"required size: {required}\nfully allocated size: {full}")
    return 0


def measure(fmt: str, size: int, extents: list[tuple[int, int]],
            options: dict[str, Any]) -> tuple[int, int]:
    """(required, fully allocated) bytes of a ``fmt`` image of ``size`` holding data at
    ``extents``.  Measured, not modelled: an empty image is made in a scratch folder,
    then one block is written, and the two file sizes give the fixed and per-block
    costs (raw: the size, as qemu-img says)."""
    import tempfile
    driver = disks.driver_for(fmt)
    if driver.format_name == "raw":
        return size, size
    with tempfile.TemporaryDirectory(prefix="emu-measure-") as scratch:
        target = os.path.join(scratch, "m")
        with disks.create(target, driver.format_name, size, **options) as image:
            unit = image.allocation_unit()
        empty = _folder_bytes(scratch)
        if size:
            with disks.open(target, format=driver.format_name) as image:
                image.write(0, b"\1")
            per_block = max(0, _folder_bytes(scratch) - empty)
        else:
            per_block = 0
    blocks = _blocks_touched(extents, unit)
    total = -(-size // unit)
    if per_block == 0:  # preallocated (fixed, flat): the empty image is already full
        return empty, empty
    return empty + blocks * per_block, empty + total * per_block


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def _blocks_touched(extents: list[tuple[int, int]], unit: int) -> int:
    count, last = 0, -1
    for offset, length in extents:
        first, end = offset // unit, (offset + length - 1) // unit
        first = max(first, last + 1)
        if end >= first:
            count += end - first + 1
            last = end
    return count


# --- dd --------------------------------------------------------------------

def cmd_dd(args: argparse.Namespace) -> int:
    ops: dict[str, str] = {}
    for word in args.operands:
        key, sep, value = word.partition("=")
        if not sep or key not in ("if", "of", "bs", "count", "skip"):
            raise disks.InvalidOptionError(None, f"unrecognized operand {word}", field=key)
        if key in ops:
            raise disks.InvalidOptionError(None, f"{key}= given twice", field=key)
        ops[key] = value
    if "if" not in ops or "of" not in ops:
        raise disks.InvalidOptionError(None, "Must specify both input and output files",
                                       field="if")
    numbers: dict[str, int] = {}
    for key, default in (("bs", 512), ("count", -1), ("skip", 0)):
        if key not in ops:
            numbers[key] = default
            continue
        try:
            numbers[key] = parse_size(ops[key])
        except ValueError:
            raise disks.InvalidOptionError(None, f"invalid number: '{ops[key]}'",
                                           field=key) from None
    bs = numbers["bs"]
    if bs == 0:
        raise disks.InvalidOptionError(None, "invalid number: '0'", field="bs")
    with disks.open(ops["if"], format=args.f, readonly=True, force_share=args.U,
                    allow_paths=args.allow_path) as src:
        # qemu-img's arithmetic (not GNU dd's): count= counts from the start of the
        # input, the skipped blocks included
        size = src.size
        if 0 <= numbers["count"] <= src.size // bs:
            size = numbers["count"] * bs
        start = numbers["skip"] * bs
        if start > size:
            raise disks.InvalidOptionError(ops["if"], "cannot skip to specified offset",
                                           field="skip")
        length = size - start
        buffer = bytearray(max(bs, min(COPY_CHUNK, length)) // bs * bs or bs)
        with disks.creating(ops["of"], args.O or "raw", length) as dst:
            pos = 0
            while pos < length:
                step = min(len(buffer), length - pos)
                view = memoryview(buffer)[:step]
                src.readinto(start + pos, view)
                if not is_zero(view):
                    dst.write(pos, view)
                pos += step
    return 0


# --- bench -----------------------------------------------------------------

def cmd_bench(args: argparse.Namespace) -> int:
    size = parse_size(args.s)
    step = parse_size(args.S) if args.S is not None else size
    offset = parse_size(args.o)
    writing = args.w
    with disks.open(args.filename, format=args.f, readonly=not writing,
                    force_share=not writing and args.U, allow_paths=args.allow_path) as image:
        if size <= 0 or size > image.size:
            raise disks.InvalidOptionError(args.filename, f"invalid buffer size {size}",
                                           field="s")
        kind = "write" if writing else "read"
        if not args.q:
            pattern = "random offsets" if args.random is not None else \
                f"starting at offset {offset}, step size {step}"
            print(f"Sending {args.c} {kind} requests, {size} bytes each, {args.d} in "
                  f"parallel ({pattern})")
            if writing and args.flush_interval:
                print(f"Sending flush every {args.flush_interval} requests")
        buffer = bytearray([args.pattern & 0xFF]) * size if writing else bytearray(size)
        view = memoryview(buffer)
        offsets = _bench_offsets(image.size, size, step, offset, args.c, args.random)
        started = time.perf_counter()
        for n, at in enumerate(offsets, start=1):
            if writing:
                image.write(at, view)
                if args.flush_interval and n % args.flush_interval == 0:
                    image.flush()
            else:
                image.readinto(at, view)
        if writing and not args.no_drain:
            image.flush()
        elapsed = time.perf_counter() - started
    if not args.q:
        print(f"Run completed in {elapsed:.3f} seconds.")
    return 0


def _bench_offsets(disk: int, size: int, step: int, start: int, count: int,
                   seed: int | None) -> Iterator[int]:
    if seed is not None:
        rng = random.Random(seed)
        slots = (disk - size) // size + 1
        for _ in range(count):
            yield rng.randrange(slots) * size
        return
    at = start
    for _ in range(count):
        if at + size > disk:
            at = 0  # wrap, as qemu-img bench does
        yield at
        at += step


# --- parser ----------------------------------------------------------------

def add_verbs(verbs: Any, add_open_options: Callable[..., None]) -> None:
    """Register this module's verbs on ``emu img``'s subparsers."""
    p = verbs.add_parser("resize", help="change the virtual size of an image")
    p.add_argument("-f")
    p.add_argument("-q", action="store_true")
    p.add_argument("--shrink", action="store_true", help="allow making the image smaller")
    p.add_argument("--preallocation", help="accepted for qemu-img compatibility (off only)",
                   choices=("off",))
    add_open_options(p, force_share=False)
    p.add_argument("filename")
    p.add_argument("size", help="[+|-]SIZE")
    p.set_defaults(run=cmd_resize)

    p = verbs.add_parser("commit", help="write an image's changes into its backing file")
    p.add_argument("-f")
    p.add_argument("-b", help="the chain member to commit into (implies -d)")
    p.add_argument("-d", action="store_true", help="do not empty the image afterwards")
    p.add_argument("-q", action="store_true")
    p.add_argument("-p", action="store_true", help="accepted (no progress shown)")
    p.add_argument("-t", help="accepted for qemu-img compatibility")
    add_open_options(p, force_share=False)
    p.add_argument("filename")
    p.set_defaults(run=cmd_commit)

    p = verbs.add_parser("rebase", help="change an image's backing file")
    p.add_argument("-f")
    p.add_argument("-b", required=True, help="new backing file ('' = none: flatten)")
    p.add_argument("-F", help="new backing file's format")
    p.add_argument("-u", action="store_true", help="unsafe: only change the reference")
    p.add_argument("-q", action="store_true")
    p.add_argument("-p", action="store_true", help="accepted (no progress shown)")
    add_open_options(p, force_share=False)
    p.add_argument("filename")
    p.set_defaults(run=cmd_rebase)

    p = verbs.add_parser("amend", help="change an image's format options")
    p.add_argument("-f")
    p.add_argument("-o", required=True)
    p.add_argument("-q", action="store_true")
    p.add_argument("-p", action="store_true", help="accepted (no progress shown)")
    add_open_options(p, force_share=False)
    p.add_argument("filename")
    p.set_defaults(run=cmd_amend)

    p = verbs.add_parser("measure", help="how large an image of a format would be")
    p.add_argument("-f")
    p.add_argument("-O")
    p.add_argument("-o")
    p.add_argument("--size")
    p.add_argument("--output", choices=("human", "json"), default="human")
    add_open_options(p)
    p.add_argument("filename", nargs="?")
    p.set_defaults(run=cmd_measure)

    p = verbs.add_parser("dd", help="copy part of an image, dd-style")
    p.add_argument("-f")
    p.add_argument("-O")
    add_open_options(p)
    p.add_argument("operands", nargs="+", help="if=IN of=OUT [bs=N] [count=N] [skip=N]")
    p.set_defaults(run=cmd_dd)

    p = verbs.add_parser("bench", help="time reads or writes through the disk layer")
    p.add_argument("-c", type=int, default=75000, help="number of requests")
    p.add_argument("-d", type=int, default=64, help="queue depth (accepted; requests are "
                   "issued one at a time)")
    p.add_argument("-f")
    p.add_argument("-n", action="store_true", help="accepted (native AIO)")
    p.add_argument("-i", help="accepted (AIO mode)")
    p.add_argument("-o", default="0", help="first offset")
    p.add_argument("-s", default="4096", help="request size")
    p.add_argument("-S", help="step between requests (default: the request size)")
    p.add_argument("-t", help="accepted (cache mode)")
    p.add_argument("-w", action="store_true", help="write instead of read")
    p.add_argument("-q", action="store_true")
    p.add_argument("--pattern", type=int, default=0, help="byte written")
    p.add_argument("--flush-interval", type=int, default=0)
    p.add_argument("--no-drain", action="store_true")
    p.add_argument("--random", type=int, metavar="SEED",
                   help="random request-size-aligned offsets from SEED (emu only)")
    add_open_options(p)
    p.add_argument("filename")
    p.set_defaults(run=cmd_bench)
