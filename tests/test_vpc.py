"""VHD (vpc): qemu-img/qemu-io and libvhdi as oracles, a bytearray model, samples, crafted files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import tracemalloc
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import need_tool
from hypothesis import given, settings
from hypothesis import strategies as st
from model import apply, ops
from oracles import qemu_img, qemu_img_info, qemu_io, qemu_to_raw

import disks
from disks import vpc

KiB = 1 << 10
MiB = 1 << 20

# qemu-io writes: scattered, some crossing 2 MiB block boundaries, one at the very end.
SCATTERED = [
    (0, 4 * KiB, 0x11),
    (2 * MiB - 512, 1024, 0x22),
    (5 * MiB + 12 * KiB, 2 * MiB + 8 * KiB, 0x33),
    (9 * MiB + 512 * KiB, 64 * KiB, 0x44),
    (12 * MiB - 8 * KiB, 8 * KiB, 0x55),
]
DISK = 12 * MiB


def fill(size: int, writes: list[tuple[int, int, int]]) -> bytearray:
    model = bytearray(size)
    for offset, length, byte in writes:
        model[offset:offset + length] = bytes([byte]) * length
    return model


def footer_at_end(path: Path) -> vpc.Footer:
    data = path.read_bytes()
    return vpc.Footer.unpack(data[-512:])


def dynamic_header(path: Path) -> vpc.DynamicHeader:
    with open(path, "rb") as f:
        f.seek(512)
        return vpc.DynamicHeader.unpack(f.read(1024))


def poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def bat_entry(path: Path, block: int) -> int:
    header = dynamic_header(path)
    with open(path, "rb") as f:
        f.seek(header.table_offset + 4 * block)
        return int.from_bytes(f.read(4), "big")


def bitmap_bits(path: Path, block: int) -> list[int]:
    """Indexes of the sectors whose bitmap bit is set in ``block``."""
    header = dynamic_header(path)
    bitmap_size = vpc.round_up(header.block_size // 512 // 8, 512)
    with open(path, "rb") as f:
        f.seek(bat_entry(path, block) * 512)
        raw = f.read(bitmap_size)
    return [i for i in range(header.block_size // 512) if raw[i // 8] & (0x80 >> (i % 8))]


def read_all_quietly(path: Path, **kwargs: object) -> bytes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vpc.VpcWarning)
        with disks.open(path, readonly=True, **kwargs) as image:  # type: ignore[arg-type]
            return image.read(0, image.size)


# --- qemu-img as oracle: fixed and dynamic ----------------------------------------

@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
@pytest.mark.parametrize("force_size", ["on", "off"])
def test_reads_qemu_images_like_qemu(tmp_path: Path, subformat: str, force_size: str) -> None:
    image = tmp_path / "q.vhd"
    size = DISK + 3 * 512  # not a CHS multiple: force_size decides the visible size
    qemu_img("create", "-q", "-f", "vpc", "-o", f"subformat={subformat},force_size={force_size}",
             image, str(size))
    visible = qemu_img_info(image, "vpc")["virtual-size"]
    assert (visible == size) == (force_size == "on")
    writes = [(o, n, b) for o, n, b in SCATTERED if o + n <= visible]
    qemu_io(image, "vpc", *(f"write -P {b:#x} {o} {n}" for o, n, b in writes),
            f"write -P 0x66 {visible - 1024} 1024")
    expected = qemu_to_raw(image, "vpc", tmp_path / "q.raw")
    assert disks.probe(image) == "vpc"  # fixed ones too, without -f (qemu says raw)
    with disks.open(image, readonly=True) as ours:
        assert ours.size == visible
        assert ours.read(0, ours.size) == expected
        assert ours.check().clean


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_qemu_reads_what_we_write_into_its_images(tmp_path: Path, subformat: str) -> None:
    image = tmp_path / "q.vhd"
    qemu_img("create", "-q", "-f", "vpc", "-o", f"subformat={subformat},force_size=on",
             image, str(DISK))
    qemu_io(image, "vpc", "write -P 0x10 1M 3M")
    writes = [(1000, 3000, 0x21), (2 * MiB - 100, 200, 0x22), (7 * MiB + 3, 5 * MiB - 3, 0x23)]
    with disks.open(image, format="vpc") as ours:
        for offset, length, byte in writes:
            ours.write(offset, bytes([byte]) * length)
    expected = fill(DISK, [(MiB, 3 * MiB, 0x10), *writes])
    assert qemu_to_raw(image, "vpc", tmp_path / "q.raw") == expected
    assert read_all_quietly(image) == expected


def qemu_check_passes(image: Path) -> None:
    """qemu-img 7.2 has no vpc checker: exit 63 'does not support checks' is its pass."""
    proc = qemu_img("check", "-f", "vpc", image, check=False)
    assert proc.returncode == 0 or (proc.returncode == 63
                                    and "does not support checks" in proc.stderr), proc.stderr


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_qemu_reads_our_images(tmp_path: Path, subformat: str) -> None:
    image = tmp_path / "e.vhd"
    size = DISK + 512  # exact size, not a CHS multiple
    writes = [*SCATTERED, (1000, 3000, 0x77), (size - 700, 700, 0x78)]
    with disks.create(image, "vpc", size, subformat=subformat) as ours:
        for offset, length, byte in writes:
            ours.write(offset, bytes([byte]) * length)
    expected = fill(size, writes)
    raw = tmp_path / "expected.raw"
    raw.write_bytes(expected)
    assert qemu_img_info(image, "vpc")["virtual-size"] == size
    assert qemu_to_raw(image, "vpc", tmp_path / "q.raw") == expected
    assert qemu_img("compare", "-f", "vpc", "-F", "raw", image, raw, check=False).returncode == 0
    qemu_check_passes(image)
    assert "Disk type" in subprocess.run([need_tool("vhdiinfo"), image], capture_output=True,
                                         text=True, check=True).stdout


def test_create_geometry_follows_the_spec_algorithm(tmp_path: Path) -> None:
    # worked by hand from the spec's CHS calculation (appendix)
    known = {10 * MiB: (301, 4, 17), 1 << 30: (2080, 16, 63), 40 << 30: (20560, 16, 255),
             200 << 30: (65535, 16, 255)}
    for size, chs in known.items():
        with disks.create(tmp_path / "e.vhd", "vpc", size) as image:
            assert image.geometry == disks.Geometry(*chs), size
            assert image.size == footer_at_end(tmp_path / "e.vhd").current_size == size


def test_rounded_geometry_matches_qemu(tmp_path: Path) -> None:
    for size in (10 * MiB + 512, 1 << 30, (40 << 30) + 7 * 512):
        theirs, ours = tmp_path / "q.vhd", tmp_path / "e.vhd"
        qemu_img("create", "-q", "-f", "vpc", "-o", "force_size=off", theirs, str(size))
        disks.create(ours, "vpc", size, force_size="off").close()
        assert footer_at_end(ours).geometry == footer_at_end(theirs).geometry, size
        assert footer_at_end(ours).current_size == footer_at_end(theirs).current_size


def test_force_size_off_rounds_to_chs_like_qemu(tmp_path: Path) -> None:
    size = 10 * MiB + 512
    theirs, ours = tmp_path / "q.vhd", tmp_path / "e.vhd"
    qemu_img("create", "-q", "-f", "vpc", theirs, str(size))
    with disks.create(ours, "vpc", size, force_size="off") as image:
        assert image.geometry is not None
        assert image.size == image.geometry.sector_count * 512 >= size
        assert image.size == qemu_img_info(theirs, "vpc")["virtual-size"]


def test_emu_img_cli_creates_a_differencing_chain(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from emu import img
    base, child = str(tmp_path / "base.vhd"), str(tmp_path / "child.vhd")
    assert img.main(["create", "-f", "vhd", "-o", "subformat=fixed,force_size=off", base,
                     "10M"]) == 0
    assert img.main(["create", "-f", "vpc", "-b", base, child]) == 0
    capsys.readouterr()
    assert img.main(["info", "--output", "json", child]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "vpc" and info["backing-filename"] == "base.vhd"
    assert info["format-specific"]["data"]["subformat"] == "differencing"
    assert info["cluster-size"] == 2 * MiB
    assert info["virtual-size"] == qemu_img_info(Path(base), "vpc")["virtual-size"] > 10 * MiB
    assert img.main(["check", child]) == 0


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_convert_from_raw_copies_in_the_kernel_and_qemu_agrees(tmp_path: Path,
                                                                subformat: str) -> None:
    from emu import img
    source = tmp_path / "source.raw"
    content = fill(DISK, [*SCATTERED, (3 * MiB + 100, 5000, 0x31)])
    source.write_bytes(content)
    target = tmp_path / "out.vhd"
    assert img.main(["convert", "-f", "raw", "-O", "vpc", "-o", f"subformat={subformat}",
                     str(source), str(target)]) == 0
    assert qemu_img("compare", "-f", "vpc", "-F", "raw", target, source,
                    check=False).returncode == 0
    with disks.open(target) as image:  # and byte-granular host copies over every case
        image.copy_from_host(2 * MiB - 700, 1400, image.file, 0)
        image.copy_from_host(10 * MiB + 512, 4096, image.file, 0)
        content[2 * MiB - 700:2 * MiB + 700] = image.file.pread(1400, 0)
        content[10 * MiB + 512:10 * MiB + 4608] = image.file.pread(4096, 0)
        assert image.read(0, DISK) == content
        assert not image.check().corruptions
    assert qemu_to_raw(target, "vpc", tmp_path / "q.raw") == content


# --- samples ---------------------------------------------------------------------

def test_virtual_pc_sample_size_from_chs_and_all_zero(sample) -> None:  # type: ignore[no-untyped-def]
    path = sample("virtualpc-dynamic.vhd")
    with disks.open(path, readonly=True) as image:
        assert image.size == 136_363_130_880
        assert image.geometry == disks.Geometry(65278, 16, 255)
        assert footer_at_end(path).current_size > image.size
        extents = list(image.map())
        assert sum(e.length for e in extents) == image.size
        for extent in extents:
            if extent.kind is disks.RunKind.DATA:
                assert image.read(extent.offset, extent.length) == bytes(extent.length)
        assert all(e.kind is not disks.RunKind.DATA for e in extents)
        assert image.read(image.size - 4096, 4096) == bytes(4096)
        assert image.check().clean


def test_writes_into_the_virtual_pc_sample_read_back_in_qemu(sample) -> None:  # type: ignore[no-untyped-def]
    path = sample("virtualpc-dynamic.vhd")
    with disks.open(path) as image:
        last = image.size - 4096
        image.write(MiB + 100, b"\x5a" * 4096)
        image.write(last, b"\xa5" * 4096)
        assert image.check().clean
    qemu_io(path, "vpc", f"read -P 0x5a {MiB + 100} 4096", f"read -P 0xa5 {last} 4096",
            f"read -P 0 {MiB + 4196} 4096", "read -P 0 0 1M")


def test_fuzzed_afl5_refused_cleanly(sample) -> None:  # type: ignore[no-untyped-def]
    path = sample("afl5.img")
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", vpc.VpcWarning)
            with pytest.raises(disks.CorruptImageError):
                disks.open(path, readonly=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB


def test_absurd_max_table_entries_refused_before_allocation(tmp_path: Path) -> None:
    path = tmp_path / "e.vhd"
    disks.create(path, "vpc", 4 * MiB).close()
    header = replace(dynamic_header(path), max_table_entries=0x40000001, block_size=512)
    poke(path, 512, header.pack())
    tracemalloc.start()
    try:
        with pytest.raises(disks.CorruptImageError) as info:
            disks.open(path, readonly=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.field in ("max_table_entries", "table_offset")
    assert peak < 8 * MiB


@pytest.mark.parametrize("field, change", [
    ("table_offset", {"table_offset": 512}),              # BAT over the dynamic header
    ("table_offset", {"table_offset": 1 << 40}),          # BAT far past the end of file
    ("block_size", {"block_size": 3 * MiB}),              # not a power of two
    ("max_table_entries", {"max_table_entries": 1}),      # too few blocks for the size
])
def test_crafted_dynamic_headers_refused(tmp_path: Path, field: str,
                                         change: dict[str, int]) -> None:
    path = tmp_path / "e.vhd"
    disks.create(path, "vpc", 4 * MiB).close()
    poke(path, 512, replace(dynamic_header(path), **change).pack())  # type: ignore[arg-type]
    with pytest.raises(disks.CorruptImageError) as info:
        disks.open(path, readonly=True)
    assert info.value.field == field


def test_oversized_disk_refused(tmp_path: Path) -> None:
    with pytest.raises(disks.InvalidOptionError):
        disks.create(tmp_path / "big.vhd", "vpc", (2040 << 30) + 512)
    with disks.create(tmp_path / "max.vhd", "vpc", 2040 << 30) as image:
        assert image.size == 2040 << 30
    with pytest.raises(disks.InvalidOptionError) as info:  # a 16 GiB BAT
        disks.create(tmp_path / "tiny-blocks.vhd", "vpc", 2040 << 30, block_size="512")
    assert info.value.field == "block_size"


# --- checksums and footer copies --------------------------------------------------

def test_damaged_end_footer_falls_back_to_head_copy(tmp_path: Path) -> None:
    path = tmp_path / "e.vhd"
    with disks.create(path, "vpc", 4 * MiB) as image:
        image.write(MiB, b"\x5a" * 4096)
    size = path.stat().st_size
    poke(path, size - 512 + 40, b"\xff")  # original_size: checksum now wrong
    with pytest.warns(vpc.VpcWarning, match="damaged"):
        with disks.open(path, readonly=True) as image:
            assert image.read(MiB, 4096) == b"\x5a" * 4096
            report = image.check()
            assert report.corruptions and not report.clean
    with pytest.warns(vpc.VpcWarning, match="damaged"):
        with disks.open(path) as image:   # a writer restores the end footer at once
            assert image.read(MiB, 4096) == b"\x5a" * 4096
            assert image.check().clean
    with warnings.catch_warnings():
        warnings.simplefilter("error", vpc.VpcWarning)
        with disks.open(path, readonly=True) as image:
            assert image.read(MiB, 4096) == b"\x5a" * 4096


def test_footer_copies_disagreeing_reported(tmp_path: Path) -> None:
    path = tmp_path / "e.vhd"
    disks.create(path, "vpc", 4 * MiB).close()
    head = replace(footer_at_end(path), timestamp=12345)
    poke(path, 0, head.pack())
    with disks.open(path, readonly=True) as image:
        assert any("disagree" in c for c in image.check().corruptions)


def test_bad_checksums_are_errors(tmp_path: Path) -> None:
    dynamic, fixed = tmp_path / "d.vhd", tmp_path / "f.vhd"
    disks.create(dynamic, "vpc", 4 * MiB).close()
    disks.create(fixed, "vpc", 4 * MiB, subformat="fixed").close()
    poke(fixed, 4 * MiB + 48, b"\x01")  # current_size
    with pytest.raises(disks.CorruptImageError, match="checksum"):
        disks.open(fixed, format="vpc", readonly=True)
    poke(dynamic, 512 + 28, b"\x00\x00\x00\x09")  # max_table_entries
    with pytest.raises(disks.CorruptImageError, match="checksum") as info:
        disks.open(dynamic, readonly=True)
    assert info.value.field == "dynamic_header"
    size = dynamic.stat().st_size
    poke(dynamic, 512 + 28, b"\x00\x00\x00\x02")
    poke(dynamic, 8, b"\x07")
    poke(dynamic, size - 512 + 8, b"\x07")
    with pytest.raises(disks.CorruptImageError, match="footer"):
        disks.open(dynamic, format="vpc", readonly=True)


# --- bitmaps ------------------------------------------------------------------------

def make_parent(path: Path, size: int = 6 * MiB) -> bytes:
    pattern = bytes(range(3, 259, 7)) * (size // 37) + bytes(size % 37)
    with disks.create(path, "vpc", size, block_size=str(MiB)) as parent:
        parent.write(0, pattern)
    return pattern


def test_bitmap_exact_in_differencing_disk(tmp_path: Path) -> None:
    parent_data = make_parent(tmp_path / "p.vhd")
    child = tmp_path / "c.vhd"
    with disks.create(child, "vpc", backing=tmp_path / "p.vhd") as image:
        image.write(2 * MiB + 5 * 512, b"\xc1" * 512)
        image.write(4 * MiB + 100, b"\xc2" * 10)  # part of one sector
    assert bitmap_bits(child, 1) == [5]
    assert bitmap_bits(child, 2) == [0]
    expected = bytearray(parent_data)
    expected[2 * MiB + 5 * 512:2 * MiB + 6 * 512] = b"\xc1" * 512
    expected[4 * MiB + 100:4 * MiB + 110] = b"\xc2" * 10
    assert read_all_quietly(child) == expected


def test_bitmap_exact_in_dynamic_disk_and_rest_reads_zero(tmp_path: Path) -> None:
    path = tmp_path / "e.vhd"
    with disks.create(path, "vpc", 4 * MiB) as image:
        image.write(3 * 512 + 7, b"\xee" * 100)
        assert image.read(0, 2 * MiB) == bytes(3 * 512 + 7) + b"\xee" * 100 \
            + bytes(2 * MiB - 3 * 512 - 107)
    assert bitmap_bits(path, 0) == [3]


# --- differencing disks --------------------------------------------------------------

LIBVHDI_READ = """
import sys, pyvhdi
image = pyvhdi.file(); image.open(sys.argv[1])
if len(sys.argv) > 3:
    parent = pyvhdi.file(); parent.open(sys.argv[3]); image.set_parent(parent)
open(sys.argv[2], "wb").write(image.read_buffer_at_offset(image.get_media_size(), 0))
"""


def libvhdi_read(path: Path, out: Path, parent: Path | None = None) -> bytes:
    """The disk as libvhdi (python3-libvhdi, run by the system Python) reads it."""
    need_tool("vhdiinfo")
    probe = subprocess.run(["/usr/bin/python3", "-c", "import pyvhdi"], capture_output=True)
    if probe.returncode:
        if os.environ.get("CI") == "true":
            pytest.fail("python3-libvhdi is not installed (.ci/run must install it)")
        pytest.skip("python3-libvhdi (pyvhdi) is not installed")
    extra = [str(parent)] if parent is not None else []
    subprocess.run(["/usr/bin/python3", "-c", LIBVHDI_READ, str(path), str(out), *extra],
                   check=True)
    return out.read_bytes()


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
def test_libvhdi_reads_our_images(tmp_path: Path, subformat: str) -> None:
    path = tmp_path / "e.vhd"
    writes = [(1000, 777, 0x61), (3 * MiB, 5000, 0x62), (5000, 10, 0x63)]
    with disks.create(path, "vpc", 8 * MiB, subformat=subformat) as image:
        for offset, length, byte in writes:
            image.write(offset, bytes([byte]) * length)
    assert libvhdi_read(path, tmp_path / "l.raw") == fill(8 * MiB, writes)


def test_libvhdi_reads_our_differencing_child(tmp_path: Path) -> None:
    parent, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    make_parent(parent)
    # 4 KiB-aligned writes: libvhdi 20210425 misreads clear bits that follow a set bit in
    # the same bitmap byte (it tests "byte >> (7 - bit)" without masking to one bit, so
    # it returns the child's zeros instead of parent data there).
    writes = [(8 * KiB, 4 * KiB, 0xA1), (MiB - 4 * KiB, 12 * KiB, 0xA2),
              (3 * MiB + 64 * KiB, 256 * KiB, 0xA3), (6 * MiB - 4 * KiB, 4 * KiB, 0xA4)]
    with disks.create(child, "vpc", backing=parent) as image:
        for offset, length, byte in writes:
            image.write(offset, bytes([byte]) * length)
    ours = read_all_quietly(child)
    info = subprocess.run([need_tool("vhdiinfo"), child], capture_output=True, text=True,
                          check=True).stdout
    assert "Differential" in info and "p.vhd" in info
    assert libvhdi_read(child, tmp_path / "l.raw", parent) == ours


def test_parent_found_through_relative_locator_after_move(tmp_path: Path) -> None:
    parent_data = make_parent(tmp_path / "p.vhd")
    with disks.create(tmp_path / "c.vhd", "vpc", backing=tmp_path / "p.vhd") as image:
        image.write(0, b"\x99" * 512)
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.move(tmp_path / "p.vhd", moved / "p.vhd")
    shutil.move(tmp_path / "c.vhd", moved / "c.vhd")
    assert read_all_quietly(moved / "c.vhd") == b"\x99" * 512 + parent_data[512:]
    header = dynamic_header(moved / "c.vhd")
    codes = [loc.platform_code for loc in header.locators if loc.used]
    assert codes == [b"W2ru", b"W2ku"]
    assert header.parent_name == "p.vhd"


def rewrite_locators(child: Path, entries: list[tuple[bytes, bytes]]) -> None:
    """Replace the child's parent locators by ``entries`` (code, data), data at the file end."""
    header = dynamic_header(child)
    size = child.stat().st_size
    footer = child.read_bytes()[-512:]
    locators, offset = [], size - 512
    with open(child, "r+b") as f:
        for code, data in entries:
            space = vpc.round_up(len(data), 512)
            f.seek(offset)
            f.write(data.ljust(space, b"\0"))
            locators.append(vpc.ParentLocator(code, space, len(data), 0, offset))
            offset += space
        f.write(footer)
    locators += [vpc.EMPTY_LOCATOR] * (8 - len(locators))
    poke(child, 512, replace(header, locators=tuple(locators),
                             parent_unicode_name=bytes(512)).pack())


@pytest.mark.parametrize("kind", ["MacX", "W2ku", "W2ru-windows-separators"])
def test_parent_found_through_each_locator_kind(tmp_path: Path, kind: str) -> None:
    (tmp_path / "sub").mkdir()
    parent_data = make_parent(tmp_path / "sub" / "p.vhd")
    child = tmp_path / "c.vhd"
    disks.create(child, "vpc", backing=tmp_path / "sub" / "p.vhd").close()
    absolute = str(tmp_path / "sub" / "p.vhd")
    entry = {
        "MacX": (b"MacX", ("file://" + absolute.replace(" ", "%20")).encode()),
        "W2ku": (b"W2ku", absolute.encode("utf-16-le")),
        "W2ru-windows-separators": (b"W2ru", ".\\sub\\p.vhd".encode("utf-16-le")),
    }[kind]
    rewrite_locators(child, [(b"W2ku", "C:\\nowhere\\p.vhd".encode("utf-16-le")), entry])
    assert read_all_quietly(child) == parent_data
    with disks.open(child, readonly=True) as image:
        assert image.check().clean


def test_missing_or_wrong_parent_is_an_error(tmp_path: Path) -> None:
    make_parent(tmp_path / "p.vhd")
    disks.create(tmp_path / "c.vhd", "vpc", backing=tmp_path / "p.vhd").close()
    shutil.move(tmp_path / "p.vhd", tmp_path / "old.vhd")
    with pytest.raises(disks.MissingBackingError):
        disks.open(tmp_path / "c.vhd", readonly=True)
    make_parent(tmp_path / "p.vhd")  # same name and size, another unique ID
    with pytest.raises(disks.BackingChainError, match="unique ID"):
        disks.open(tmp_path / "c.vhd", readonly=True)


def test_parent_timestamp_mismatch_warns(tmp_path: Path) -> None:
    make_parent(tmp_path / "p.vhd")
    disks.create(tmp_path / "c.vhd", "vpc", backing=tmp_path / "p.vhd").close()
    header = replace(dynamic_header(tmp_path / "c.vhd"), parent_timestamp=1)
    poke(tmp_path / "c.vhd", 512, header.pack())
    with pytest.warns(vpc.VpcWarning, match="timestamp"):
        disks.open(tmp_path / "c.vhd", readonly=True).close()


def test_differencing_discard_reads_zeros_not_parent(tmp_path: Path) -> None:
    parent_data = make_parent(tmp_path / "p.vhd")
    with disks.create(tmp_path / "c.vhd", "vpc", backing=tmp_path / "p.vhd") as image:
        image.discard(MiB, 2 * MiB + 100)
        assert image.read(0, image.size) == parent_data[:MiB] + bytes(2 * MiB + 100) \
            + parent_data[3 * MiB + 100:]


# --- discard, check, crash order ----------------------------------------------------------

def test_discard_frees_whole_blocks_and_zeroes_partial(tmp_path: Path) -> None:
    path = tmp_path / "e.vhd"
    with disks.create(path, "vpc", 8 * MiB, block_size="1M") as image:
        image.write(0, b"\x11" * 8 * MiB)
        size_full = path.stat().st_size
        image.discard(MiB + 512, 3 * MiB - 512)  # partial block 1, whole blocks 2-3
        image.discard(7 * MiB, MiB)  # the last block: the file shrinks
        assert image.read(0, 8 * MiB) == b"\x11" * (MiB + 512) + bytes(3 * MiB - 512) \
            + b"\x11" * 3 * MiB + bytes(MiB)
        report = image.check()
        assert not report.corruptions and report.leaks  # blocks 2-3 left holes
    assert [bat_entry(path, b) == vpc.UNUSED_ENTRY for b in range(8)] == \
        [False, False, True, True, False, False, False, True]
    assert path.stat().st_size < size_full
    qemu_to_raw(path, "vpc", tmp_path / "q.raw")
    assert (tmp_path / "q.raw").read_bytes() == read_all_quietly(path)
    with disks.open(path) as image:
        image.discard(0, 8 * MiB)  # everything: the leaked holes go with the tail
        assert image.check().clean
        assert image.read(0, 8 * MiB) == bytes(8 * MiB)
    assert path.stat().st_size == 512 + 1024 + 512 + 512  # footer copy, header, BAT, footer


def test_check_finds_bat_beyond_eof_and_overlaps(tmp_path: Path) -> None:
    path = tmp_path / "e.vhd"
    with disks.create(path, "vpc", 8 * MiB, block_size="1M") as image:
        image.write(0, b"\x11" * 2 * MiB)
    header = dynamic_header(path)
    poke(path, header.table_offset + 4 * 2, (1 << 24).to_bytes(4, "big"))  # 8 GiB: past EOF
    poke(path, header.table_offset + 4 * 3, bat_entry(path, 0).to_bytes(4, "big"))
    with disks.open(path, readonly=True) as image:
        report = image.check()
        assert any("past the footer" in c for c in report.corruptions)
        assert any("overlaps block" in c for c in report.corruptions)
        with pytest.raises(disks.CorruptImageError):
            image.read(2 * MiB, 512)


class CrashAfter(Exception):
    pass


@pytest.mark.parametrize("writes_before_crash", [0, 1, 2, 3])
@pytest.mark.parametrize("layout", ["dynamic", "differencing", "differencing-clear-bits"])
def test_crash_during_allocation_leaves_a_usable_image(tmp_path: Path, layout: str,
                                                       writes_before_crash: int) -> None:
    path = tmp_path / "e.vhd"
    below = bytes(8 * MiB)
    if layout == "dynamic":
        disks.create(path, "vpc", 8 * MiB).close()
    else:
        below = make_parent(tmp_path / "p.vhd", 8 * MiB)
        disks.create(path, "vpc", backing=tmp_path / "p.vhd").close()
    with disks.open(path) as image:
        image.write(0, b"\x42" * 4096)
        if layout == "differencing-clear-bits":
            image.write(4 * MiB + 64 * KiB, b"\x42" * 4096)  # block 2 exists, bits clear
    image = disks.open(path)
    real_pwrite = image.file.pwrite
    count = 0

    def pwrite(data: bytes | bytearray | memoryview, offset: int) -> None:
        nonlocal count
        if count == writes_before_crash:
            raise CrashAfter
        count += 1
        real_pwrite(data, offset)

    image.file.pwrite = pwrite  # type: ignore[method-assign]  # cut the write stream
    try:
        image.write(4 * MiB, b"\x43" * 8192)  # data, bitmap, BAT entry, footer
    except CrashAfter:
        pass
    image.file.close()
    old = below[4 * MiB:4 * MiB + 8192]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", vpc.VpcWarning)
        with disks.open(path) as reopened:
            assert reopened.read(0, 4096) == b"\x42" * 4096
            assert reopened.read(4 * MiB, 8192) in (old, b"\x43" * 8192)
            reopened.check(repair=True)
            assert not reopened.check().corruptions
            reopened.write(6 * MiB, b"\x44" * 512)
        assert read_all_quietly(path)[6 * MiB:6 * MiB + 512] == b"\x44" * 512


def test_differencing_data_is_durable_before_it_is_published(tmp_path: Path) -> None:
    make_parent(tmp_path / "p.vhd")
    child = tmp_path / "c.vhd"
    with disks.create(child, "vpc", backing=tmp_path / "p.vhd") as image:
        image.write(0, b"\x01" * 512)  # block 0 allocated, one bit set
        image.flush()                   # and published
        events: list[tuple[str, int]] = []
        real_pwrite, real_sync = image.file.pwrite, image.file.sync

        def pwrite(data: bytes | bytearray | memoryview, offset: int) -> None:
            events.append(("write", offset))
            real_pwrite(data, offset)

        def sync() -> None:
            events.append(("sync", 0))
            real_sync()

        image.file.pwrite = pwrite  # type: ignore[method-assign]
        image.file.sync = sync  # type: ignore[method-assign]
        image.write(2048, b"\x02" * 512)       # a clear bit in an allocated block
        image.write(2 * MiB + 512, b"\x03" * 512)  # a new block
    header = dynamic_header(child)
    bat_area = range(header.table_offset, header.table_offset + 4 * header.max_table_entries)
    bitmap_0 = bat_entry(child, 0) * 512
    kinds = []
    for kind, offset in events:
        if kind == "sync":
            kinds.append("sync")
        elif offset in bat_area:
            kinds.append("bat")
        elif offset == bitmap_0:
            kinds.append("bits")
        else:
            kinds.append("write")
    assert "bits" in kinds and "bat" in kinds
    for i, kind in enumerate(kinds):  # a sync lies between any data and what publishes it
        if kind in ("bits", "bat"):
            last_data = max(j for j in range(i) if kinds[j] == "write")
            assert "sync" in kinds[last_data:i], kinds


def test_unpublished_bits_survive_bitmap_cache_eviction(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vpc, "BITMAP_CACHE_BLOCKS", 2)
    path = tmp_path / "e.vhd"
    with disks.create(path, "vpc", 4 * MiB, block_size="512K") as image:
        for block in range(8):
            image.write(block * 512 * KiB, b"\x01" * 512)
        image.write(0, b"\x02" * 4 * MiB)
    assert read_all_quietly(path) == b"\x02" * 4 * MiB
    assert all(len(bitmap_bits(path, block)) == 1024 for block in range(8))


# --- property tests against a bytearray model -----------------------------------------

SMALL = 3 * MiB + 512 * 3
PARENT_PATTERN = (bytes(range(1, 256)) * (SMALL // 255 + 1))[:SMALL]


@settings(max_examples=40, deadline=None)
@given(sequence=ops(SMALL), subformat=st.sampled_from(["fixed", "dynamic"]))
def test_model_fixed_and_dynamic(sequence: list[tuple[str, int, int, int]],
                                 subformat: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.vhd"
        with disks.create(path, "vpc", SMALL, subformat=subformat,
                          block_size="512K") as image:
            model = bytearray(SMALL)
            apply(image, model, sequence)
            assert not image.check().corruptions
        with disks.open(path, readonly=True) as image:
            assert image.read(0, SMALL) == bytes(model)


@settings(max_examples=30, deadline=None)
@given(sequence=ops(SMALL))
def test_model_differencing(sequence: list[tuple[str, int, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        parent, child = Path(folder) / "p.vhd", Path(folder) / "c.vhd"
        pattern = PARENT_PATTERN
        with disks.create(parent, "vpc", SMALL, block_size="512K") as image:
            image.write(512 * KiB, pattern[512 * KiB:2 * MiB])
        model = bytearray(SMALL)
        model[512 * KiB:2 * MiB] = pattern[512 * KiB:2 * MiB]
        with disks.create(child, "vpc", backing=parent, block_size="512K") as image:
            apply(image, model, sequence)
            assert not image.check().corruptions
        assert read_all_quietly(child) == bytes(model)
