"""``emu img``: qemu-img's verbs, exit codes and output shapes over the disk layer.

This module imports no Unicorn: it is the disk layer's command line.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn

import disks
from disks.hostfile import HostFile, is_zero, zero_fill
from disks.image import Extent, RunKind

CONVERT_CHUNK = 8 << 20
READ_AHEAD = 2  # source pieces read ahead of the writer during convert
FIND_BELOW_UNIT = 64 << 10  # zero units smaller than this are searched for with find()
SMALL_UNIT = 64 << 10       # destinations allocating less at once are copied through ...
BUFFERED_CHUNK = 512 << 10  # ... a buffer this size (it stays in a CPU cache)
# qemu-img's cache modes; convert defaults to "unsafe" (no fsync at the end), as qemu-img does
CACHE_MODES = ("none", "writeback", "writethrough", "directsync", "unsafe")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CORRUPT = 2
EXIT_LEAKS = 3
COMPARE_DIFFERENT = 1
COMPARE_ERROR = 2
BROKEN_PIPE = 128 + 13  # what a shell reports for a process killed by SIGPIPE


def parse_o(text: str | None) -> dict[str, str]:
    """``-o k=v,k2=v2`` into a dict (``,,`` is a literal comma, as in qemu)."""
    out: dict[str, str] = {}
    if not text:
        return out
    items: list[str] = []
    current = ""
    i = 0
    while i < len(text):
        if text[i] == "," and text[i + 1:i + 2] == ",":
            current += ","
            i += 2
            continue
        if text[i] == ",":
            items.append(current)
            current = ""
        else:
            current += text[i]
        i += 1
    items.append(current)
    for item in filter(None, items):
        key, sep, value = item.partition("=")
        out[key.strip()] = value if sep else "on"
    return out


def human_size(n: int) -> str:
    for unit, shift in (("EiB", 60), ("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20),
                        ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.3g} {unit}" if value != int(value) else f"{int(value)} {unit}"
    return f"{n} B"


# --- verbs -----------------------------------------------------------------

def option_help(fmt: str) -> str:
    """``-o help``: the format's create options, laid out as qemu-img lists them."""
    driver = disks.driver_for(fmt)
    lines = [f"Supported {driver.format_name} options:",
             "  " + "size=<size>".ljust(22) + " - Virtual disk size"]
    for name, spec in sorted(driver.create_options.items()):
        kind = _OPTION_TYPES.get(getattr(spec.parse, "__name__", ""),
                                 "size" if name.endswith("_size") else "str")
        lines.append("  " + f"{name}=<{kind}>".ljust(22) + f" - {spec.help}")
    return "\n".join(lines)


_OPTION_TYPES = {"parse_bool": "bool (on/off)", "parse_size": "size"}


def _wants_help(args: argparse.Namespace, fmt: str) -> bool:
    if "help" not in parse_o(args.o) and args.o != "?":
        return False
    print(option_help(fmt))
    return True


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [name for name in names if getattr(args, name) is None]
    if missing:
        raise disks.InvalidOptionError(None, f"missing {' and '.join(missing)} (try "
                                       "'emu img --help')", field=missing[0])


def cmd_create(args: argparse.Namespace) -> int:
    fmt = args.f or "raw"
    if _wants_help(args, fmt):
        return EXIT_OK
    _need(args, "filename")
    options: dict[str, Any] = parse_o(args.o)
    size = None
    if args.size:
        try:
            size = disks.image.parse_size(args.size)
        except ValueError:
            raise disks.InvalidOptionError(
                args.filename, f"invalid size {args.size!r} (use a number of bytes with an "
                "optional k, M, G, T, P or E suffix)", field="size") from None
    if not args.q:
        print(f"Formatting '{args.filename}', fmt={fmt}"
              + (f" size={size}" if size is not None else ""), flush=True)
    image = disks.create(args.filename, fmt, size, backing=args.b,
                         backing_format=args.F, allow_paths=args.allow_path, **options)
    image.close()
    return EXIT_OK


def _open(args: argparse.Namespace, path: str, fmt: str | None, *,
          readonly: bool = True) -> disks.Image:
    """Open an image with the verb's ``-U`` and ``--allow-path`` options."""
    return disks.open(path, format=fmt, readonly=readonly,
                      force_share=readonly and getattr(args, "U", False),
                      allow_paths=args.allow_path)


def cmd_info(args: argparse.Namespace) -> int:
    with _open(args, args.filename, args.f) as image:
        chain = image.chain() if args.backing_chain else [image]
        infos = [node.info() for node in chain]
    for facts in infos:
        facts.setdefault("dirty-flag", False)  # no format here keeps qcow2's dirty bit
    if args.output == "json":
        print(json.dumps(infos if args.backing_chain else infos[0], indent=4))
        return EXIT_OK
    for n, facts in enumerate(infos):
        if n:
            print()
        print(f"image: {facts['filename']}")
        print(f"file format: {facts['format']}")
        print(f"virtual size: {human_size(facts['virtual-size'])} ({facts['virtual-size']} bytes)")
        print(f"disk size: {human_size(facts['actual-size'])}")
        if "cluster-size" in facts:
            print(f"cluster_size: {facts['cluster-size']}")
        if "backing-filename" in facts:
            print(f"backing file: {facts['backing-filename']}")
        if "backing-filename-format" in facts:
            print(f"backing file format: {facts['backing-filename-format']}")
        if "geometry" in facts:
            g = facts["geometry"]
            print(f"geometry: C/H/S {g['cylinders']}/{g['heads']}/{g['sectors']}")
        specific = facts.get("format-specific", {}).get("data")
        if specific:
            print("Format specific information:")
            _print_tree(specific, 4)
    return EXIT_OK


def _print_tree(value: Any, indent: int) -> None:
    """Nested facts as qemu-img's human ``info`` prints them: ``-`` in keys read as
    spaces, list items as ``[n]:``, nested values indented four more."""
    pad = " " * indent
    items = value.items() if isinstance(value, dict) else \
        ((f"[{n}]", item) for n, item in enumerate(value))
    for key, item in items:
        name = key.replace("-", " ")
        if isinstance(item, dict | list):
            print(f"{pad}{name}:")
            _print_tree(item, indent + 4)
        else:
            print(f"{pad}{name}: {_scalar(item)}")


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def cmd_check(args: argparse.Namespace) -> int:
    repair = args.r is not None
    if repair and args.U:
        raise disks.InvalidOptionError(args.filename, "-U (force-share) cannot be used with "
                                       "-r: a repair writes to the image")
    with _open(args, args.filename, args.f, readonly=not repair) as image:
        report = image.check(repair=repair)
    if args.output == "json":
        print(json.dumps({
            "filename": report.filename, "format": report.format,
            "check-errors": 0, "corruptions": len(report.corruptions),
            "leaks": len(report.leaks), "corruption-messages": report.corruptions,
            "leak-messages": report.leaks, "repaired": report.repaired,
            "notes": report.notes,
        }, indent=4))
    else:
        for message in report.repaired:
            print(f"Repaired: {message}")
        for message in report.notes:
            print(f"Note: {message}")
        for message in report.corruptions:
            print(f"ERROR {message}")
        for message in report.leaks:
            print(f"Leaked: {message}")
        if report.clean:
            print("No errors were found on the image.")
        else:
            if report.corruptions:
                print(f"\n{len(report.corruptions)} errors were found on the image.\n"
                      "Data may be corrupted, or further writes to the image may corrupt it.")
            if report.leaks:
                print(f"\n{len(report.leaks)} leaked clusters were found on the image.\n"
                      "This means waste of disk space, but no harm to data.")
    if report.corruptions:
        return EXIT_CORRUPT
    return EXIT_LEAKS if report.leaks else EXIT_OK


def data_extents(image: disks.Image) -> Iterator[Extent]:
    """Extents whose bytes may be non-zero (data anywhere in the chain)."""
    for extent in image.map():
        if extent.kind is RunKind.DATA:
            yield extent


def _copy_pieces(src: disks.Image, unit: int, chunk: int) -> Iterator[tuple[int, int]]:
    """(offset, length) pieces of ``src``'s data, each within one chunk-sized,
    unit-aligned window of the destination."""
    for extent in data_extents(src):
        pos, end = extent.offset, extent.offset + extent.length
        while pos < end:
            step = min(end - pos, chunk - (pos % unit))
            yield pos, step
            pos += step


def copy_image(src: disks.Image, dst: disks.Image,
               progress: Callable[[int, int], None] | None = None) -> None:
    """Copy every non-zero allocation unit of ``src`` into a fresh, zero ``dst``.

    Destinations with small allocation units (raw: 4 KiB) are copied through one
    cache-sized buffer.  For the others, pieces the source holds as one plain stretch
    of its own file are memory-mapped for the zero scan and copied in the kernel
    (``Image.copy_from_host``); pieces that must be read through the driver are read
    by a thread that keeps ``READ_AHEAD`` of them in flight while this one writes (the
    system calls release the GIL); ``src`` is used only by that thread once the pieces
    are listed.
    """
    unit = max(512, dst.allocation_unit())
    if unit < SMALL_UNIT:
        # A fine-grained destination needs every byte scanned for zero units; mapping
        # all those pages costs more than the kernel copy saves, and reading pieces
        # that fit a CPU cache then writing them from there is cheaper (measured).
        _copy_buffered(src, dst, unit, max(BUFFERED_CHUNK, unit) // unit * unit, progress)
        return
    chunk = max(CONVERT_CHUNK, unit) // unit * unit
    pieces = list(_copy_pieces(src, unit, chunk))
    # Mapping the source is safe only while no writer can shrink it: our own lock keeps
    # writers out unless it was opened with force-share (then every piece is read).
    if src.file.excludes_writers:
        hosts: list[int | None] = [src.host_range(pos, step) for pos, step in pieces]
    else:
        hosts = [None] * len(pieces)
    _copy_pieces_to(src, dst, pieces, hosts, unit, chunk, progress)


def _copy_buffered(src: disks.Image, dst: disks.Image, unit: int, chunk: int,
                   progress: Callable[[int, int], None] | None) -> None:
    """Read each piece into one cache-sized buffer and write its non-zero units
    (what lies in holes of the source's file is neither read nor scanned)."""
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    zero_unit = bytes(unit)
    for pos, step in _copy_pieces(src, unit, chunk):
        host = src.host_range(pos, step)
        segments = None if host is None else _host_data_segments(src.file, host, step)
        if segments is None or segments == [(0, step)]:
            src.readinto(pos, view[:step])
        elif not segments:
            continue  # all in a hole of the source's file: zeros, nothing to read
        else:
            assert host is not None
            zero_fill(view[:step])  # read only what the file holds as data
            for start, end in segments:
                src.file.preadinto(view[start:end], host + start)
        for start, end in _nonzero_stretches(buffer, 0, step, pos, unit, zero_unit, segments):
            dst.write(pos + start, view[start:end])
        if progress:
            progress(pos + step, src.size)
    if progress:
        progress(src.size, src.size)


def _copy_pieces_to(src: disks.Image, dst: disks.Image, pieces: list[tuple[int, int]],
                    hosts: list[int | None], unit: int, chunk: int,
                    progress: Callable[[int, int], None] | None) -> None:
    buffers: list[bytearray] = []  # made only if some piece must be read
    zero_unit = bytes(unit)
    total = src.size

    def fetch(index: int) -> bytearray | None:
        if hosts[index] is not None:
            return None  # copied from the mapped file instead
        pos, step = pieces[index]
        buffer = buffers[index % len(buffers)]
        src.readinto(pos, memoryview(buffer)[:step])
        return buffer

    def store(pos: int, step: int, host: int | None, buffer: bytearray | None) -> None:
        if host is not None and _copy_mapped(src, dst, pos, step, host, unit, zero_unit):
            return
        if buffer is None:  # the mapping failed: read it here
            buffer = bytearray(step)
            src.readinto(pos, memoryview(buffer))
        view = memoryview(buffer)
        for start, end in _nonzero_stretches(buffer, 0, step, pos, unit, zero_unit):
            dst.write(pos + start, view[start:end])

    if all(host is not None for host in hosts):
        # nothing to read ahead: a thread would only add GIL hand-offs
        for (pos, step), host in zip(pieces, hosts, strict=True):
            store(pos, step, host, None)
            if progress:
                progress(pos + step, total)
    else:
        buffers.extend(bytearray(chunk) for _ in range(READ_AHEAD + 1))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="emu-img-read") as reader:
            in_flight = deque(reader.submit(fetch, i)
                              for i in range(min(READ_AHEAD, len(pieces))))
            try:
                for index, (pos, step) in enumerate(pieces):
                    buffer = in_flight.popleft().result()
                    if index + READ_AHEAD < len(pieces):
                        in_flight.append(reader.submit(fetch, index + READ_AHEAD))
                    store(pos, step, hosts[index], buffer)
                    if progress:
                        progress(pos + step, total)
            finally:
                for future in in_flight:
                    future.cancel()
    if progress:
        progress(total, total)


def _copy_mapped(src: disks.Image, dst: disks.Image, pos: int, step: int, host: int,
                 unit: int, zero_unit: bytes) -> bool:
    """Copy a piece ``src`` holds at ``host`` in its file; False when it cannot be mapped.

    Holes of the host file read as zeros without being scanned (qemu-img asks the
    protocol layer the same question)."""
    segments = _host_data_segments(src.file, host, step)
    if not segments:
        return True  # all hole: nothing to write into a fresh destination
    with src.file.mapped(host, step) as mapping:
        if mapping is None:
            return False
        region, base = mapping
        for start, end in _nonzero_stretches(region, base, step, pos, unit, zero_unit,
                                             segments):
            dst.copy_from_host(pos + start, end - start, src.file, host + start)
    return True


def _host_data_segments(file: HostFile, host: int, length: int) -> list[tuple[int, int]]:
    """Ranges (relative to ``host``) of ``[host, host+length)`` the host file holds as data;
    everything else is a hole."""
    segments: list[tuple[int, int]] = []
    end = host + length
    at = host
    while at < end:
        data = file.seek_data(at)
        if data is None or data >= end:
            break
        hole = min(file.seek_hole(data), end)
        if hole <= data:  # the file system gave no answer: treat the rest as data
            hole = end
        segments.append((data - host, hole - host))
        at = hole
    return segments


def _nonzero_stretches(buffer: bytearray | mmap.mmap, base: int, length: int, offset: int,
                       unit: int, zero_unit: bytes,
                       segments: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """Ranges (relative to ``base``) of ``buffer[base:base+length]`` that must be written:
    everything but the destination allocation units (aligned to ``unit`` at disk
    ``offset``) that are all zero.  ``segments`` limits the scan to where data may be
    (the rest is known zero)."""
    suspects: list[tuple[int, int]] = []
    for start, end in segments if segments is not None else [(0, length)]:
        start = max(0, start - (offset + start) % unit)        # widen to whole units
        end = min(length, end + (unit - (offset + end) % unit) % unit)
        if suspects and start <= suspects[-1][1]:
            suspects[-1] = (suspects[-1][0], max(end, suspects[-1][1]))
        else:
            suspects.append((start, end))
    stretches: list[tuple[int, int]] = []
    with memoryview(buffer) as view:
        for start, end in suspects:
            for a, b in _scan_units(buffer, view, base + start, end - start, offset + start,
                                    unit, zero_unit):
                a, b = a - base, b - base
                if stretches and stretches[-1][1] == a:
                    stretches[-1] = (stretches[-1][0], b)
                else:
                    stretches.append((a, b))
    return stretches


def _scan_units(buffer: bytearray | mmap.mmap, view: memoryview, base: int, length: int,
                offset: int, unit: int, zero_unit: bytes) -> list[tuple[int, int]]:
    """Non-zero ranges (absolute indexes) of ``buffer[base:base+length]`` by whole units.

    Zero tests are ``zero_unit.startswith(view)`` (memcmp); ``view == bytes`` would
    compare element by element."""
    zeros: list[tuple[int, int]] = []

    def zero(start: int, end: int) -> None:
        if zeros and zeros[-1][1] == start:
            zeros[-1] = (zeros[-1][0], end)
        else:
            zeros.append((start, end))

    head = min(length, (unit - offset % unit) % unit)
    if head and zero_unit.startswith(view[base:base + head]):
        zero(0, head)
    tail = head + (length - head) // unit * unit
    if unit >= FIND_BELOW_UNIT:
        # few, large units: compare each (memcmp stops at the first non-zero byte)
        for start in range(head, tail, unit):
            if zero_unit.startswith(view[base + start:base + start + unit]):
                zero(start, start + unit)
    else:
        pos = head
        while pos < tail:
            hit = buffer.find(zero_unit, base + pos, base + tail)
            if hit < 0:
                break
            aligned = pos + -(-(hit - base - pos) // unit) * unit
            # zero units tend to come in runs: walk them without searching again
            while aligned + unit <= tail and \
                    zero_unit.startswith(view[base + aligned:base + aligned + unit]):
                zero(aligned, aligned + unit)
                aligned += unit
            pos = aligned + unit
    if tail < length and zero_unit.startswith(view[base + tail:base + length]):
        zero(tail, length)
    out: list[tuple[int, int]] = []
    at = 0
    for start, end in zeros:
        if start > at:
            out.append((base + at, base + start))
        at = end
    if at < length:
        out.append((base + at, base + length))
    return out


def cmd_convert(args: argparse.Namespace) -> int:
    out_fmt = args.O or "raw"
    if _wants_help(args, out_fmt):
        return EXIT_OK
    _need(args, "source", "target")
    options: dict[str, Any] = parse_o(args.o)

    def show(pos: int, total: int) -> None:
        pct = 100.0 * pos / total if total else 100.0
        print(f"    ({pct:.2f}/100%)", end="\r", file=sys.stdout, flush=True)

    with _open(args, args.source, args.f) as src:
        _refuse_same_file(src, args.target)
        # the copy takes the target's name only once complete: a failed convert leaves
        # whatever was there whole
        with disks.creating(args.target, out_fmt, src.size, **options) as dst:
            copy_image(src, dst, show if args.p else None)
            dst.close(sync=args.t != "unsafe")
    if args.p:
        print(f"    ({100.0:.2f}/100%)")
    return EXIT_OK


def _refuse_same_file(src: disks.Image, target: str) -> None:
    """A target that is a file of the source's chain (another name, a hard link, a
    symlink) would be emptied before it is read: refuse it, whatever the locks say
    (``-U`` lets qemu-img do it)."""
    try:
        target_stat = os.stat(target)
    except OSError:
        return  # not there yet (or unreadable: create reports that)
    for node in src.chain():
        for file in node.files():
            st = os.fstat(file.fd)
            if (st.st_dev, st.st_ino) == (target_stat.st_dev, target_stat.st_ino):
                raise disks.ImageLockedError(
                    target, f"is the same file as {file.path} of the source: converting an "
                    "image onto itself would destroy it")


def cmd_map(args: argparse.Namespace) -> int:
    with _open(args, args.filename, args.f) as image:
        extents = list(image.map())
    if args.output == "json":
        # qemu-img's shape: one object per line; every byte is "present" because map()
        # follows the chain to its bottom, where what no layer holds reads as zeros
        rows = []
        for e in extents:
            row: dict[str, Any] = {
                "start": e.offset, "length": e.length, "depth": e.depth, "present": True,
                "zero": e.kind is not RunKind.DATA, "data": e.kind is RunKind.DATA,
            }
            if e.host_offset is not None:
                row["offset"] = e.host_offset
            rows.append("{ " + json.dumps(row)[1:])
        print("[" + ",\n".join(rows) + "]")
        return EXIT_OK
    print(f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}File")
    for e in extents:
        if e.kind is RunKind.DATA and e.host_offset is not None:
            print(f"{_hex(e.offset):<16}{_hex(e.length):<16}{_hex(e.host_offset):<16}"
                  f"{e.filename}")
    return EXIT_OK


def _hex(n: int) -> str:
    """C's %#x: 0x-prefixed except for zero."""
    return f"{n:#x}" if n else "0"


def cmd_compare(args: argparse.Namespace) -> int:
    with _open(args, args.a, args.f) as a, _open(args, args.b, args.F) as b:
        if args.s and a.size != b.size:
            print("Strict mode: Image size mismatch!")
            return COMPARE_DIFFERENT
        common = min(a.size, b.size)
        mismatch = _first_difference(a, b, common)
        if mismatch is None and a.size != b.size:
            longer = a if a.size > b.size else b
            mismatch = _first_nonzero(longer, common, longer.size)
            if mismatch is None:
                print("Warning: Image size mismatch!")
        if mismatch is not None:
            print(f"Content mismatch at offset {mismatch}!")
            return COMPARE_DIFFERENT
    print("Images are identical.")
    return EXIT_OK


def _first_difference(a: disks.Image, b: disks.Image, length: int) -> int | None:
    chunk = CONVERT_CHUNK
    buf_a, buf_b = bytearray(chunk), bytearray(chunk)
    pos = 0
    while pos < length:
        step = min(chunk, length - pos)
        va, vb = memoryview(buf_a)[:step], memoryview(buf_b)[:step]
        a.readinto(pos, va)
        b.readinto(pos, vb)
        if va != vb:
            for sector in range(0, step, 512):
                if va[sector:sector + 512] != vb[sector:sector + 512]:
                    return pos + sector
        pos += step
    return None


def _first_nonzero(image: disks.Image, start: int, end: int) -> int | None:
    for extent in data_extents(image):
        lo, hi = max(extent.offset, start), min(extent.offset + extent.length, end)
        pos = lo
        while pos < hi:
            step = min(CONVERT_CHUNK, hi - pos)
            data = image.read(pos, step)
            if not is_zero(data):
                for sector in range(0, step, 512):
                    if not is_zero(data[sector:sector + 512]):
                        return pos + sector
            pos += step
    return None


class _Parser(argparse.ArgumentParser):
    """Usage errors read like qemu-img's: one line on stderr, exit status 1."""

    def error(self, message: str) -> NoReturn:
        print(f"emu img: {message} (try 'emu img --help')", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="emu img", description="Inspect, create and convert "
                     "disk images (qemu-img's verbs).")
    verbs = parser.add_subparsers(dest="verb", required=True)

    p = verbs.add_parser("create", help="create an image")
    p.add_argument("-f", help="format (raw, vdi, vpc/vhd, vmdk, vhdx)")
    p.add_argument("-o", help="format options k=v,...")
    p.add_argument("-b", help="backing (parent) image")
    p.add_argument("-F", help="backing image format")
    p.add_argument("-q", action="store_true", help="quiet: no Formatting line")
    _add_open_options(p, force_share=False)
    p.add_argument("filename", nargs="?")
    p.add_argument("size", nargs="?")
    p.set_defaults(run=cmd_create)

    p = verbs.add_parser("info", help="show facts about an image")
    p.add_argument("-f")
    _add_open_options(p)
    p.add_argument("--output", choices=("human", "json"), default="human")
    p.add_argument("--backing-chain", action="store_true")
    p.add_argument("filename")
    p.set_defaults(run=cmd_info)

    p = verbs.add_parser("check", help="check an image for consistency")
    p.add_argument("-f")
    _add_open_options(p)
    p.add_argument("-r", choices=("leaks", "all"), help="repair")
    p.add_argument("--output", choices=("human", "json"), default="human")
    p.add_argument("filename")
    p.set_defaults(run=cmd_check)

    p = verbs.add_parser("convert", help="copy an image into another format")
    p.add_argument("-f")
    _add_open_options(p)
    p.add_argument("-O")
    p.add_argument("-o")
    p.add_argument("-p", action="store_true", help="show progress")
    p.add_argument("-t", choices=CACHE_MODES, default="unsafe",
                   help="cache mode of the target: every mode but unsafe (the default, as in "
                   "qemu-img) makes it durable (fsync) before exiting")
    p.add_argument("-q", action="store_true", help="quiet (convert prints nothing without -p)")
    p.add_argument("source", nargs="?")
    p.add_argument("target", nargs="?")
    p.set_defaults(run=cmd_convert)

    p = verbs.add_parser("map", help="show how the image's bytes are stored")
    p.add_argument("-f")
    _add_open_options(p)
    p.add_argument("--output", choices=("human", "json"), default="human")
    p.add_argument("filename")
    p.set_defaults(run=cmd_map)

    p = verbs.add_parser("compare", help="compare the contents of two images")
    p.add_argument("-f")
    _add_open_options(p)
    p.add_argument("-F")
    p.add_argument("-s", action="store_true", help="strict: size mismatch is a difference")
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(run=cmd_compare)

    from emu.img_verbs import add_verbs
    add_verbs(verbs, _add_open_options)
    return parser


def _add_open_options(p: argparse.ArgumentParser, *, force_share: bool = True) -> None:
    if force_share:
        p.add_argument("-U", "--force-share", dest="U", action="store_true",
                       help="open read-only images even while another program writes them")
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                   help="let images name files (parents, extents) in DIR too (repeatable; "
                   "by default only the folders of the image chain)")


def main(argv: list[str] | None = None) -> int:
    """Run one verb; every failure is one line on stderr with qemu-img's exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["resize"] and len(argv) > 2 and argv[-1][:1] == "-" \
            and argv[-1][1:2].isdigit() and "--" not in argv:
        argv.insert(len(argv) - 1, "--")  # ``resize FILE -1G`` is a size, as in qemu-img
    args = build_parser().parse_args(argv)
    failed = COMPARE_ERROR if args.verb == "compare" else EXIT_ERROR
    try:
        status = int(args.run(args))
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except disks.ImageError as exc:
        print(f"emu img: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("emu img: interrupted", file=sys.stderr)
    except BrokenPipeError:
        # the reader went away (``emu img map x | head``): say nothing more, and exit
        # with the status a shell shows for qemu-img killed by SIGPIPE
        _silence_stdout()
        return BROKEN_PIPE
    except (OSError, MemoryError) as exc:
        print(f"emu img: {exc}", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - a bug must still read as one line
        print(f"emu img: internal error ({type(exc).__name__}: {exc}); please report it",
              file=sys.stderr)
    return failed


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass
