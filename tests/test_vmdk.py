"""The VMDK driver against qemu-img/qemu-io, libvmdk, python3-vmdkstream and VMware's samples."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import tracemalloc
from pathlib import Path

import pytest
from conftest import need_tool
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model import apply, ops
from oracles import qemu_img, qemu_img_info, qemu_io, run

import disks
from disks.image import RunKind
from disks.vmdk import VmdkImage

MiB = 1 << 20
GRAIN = 64 * 1024

QEMU_SUBFORMATS = ["monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse",
                   "twoGbMaxExtentFlat", "streamOptimized"]
ALL_SUBFORMATS = [*QEMU_SUBFORMATS, "vmfs", "vmfsSparse"]
# (offset, length, fill): unaligned, crossing grains, the 2 GiB extent seams, the last sector
SCATTERED = [(0, 4096, 0x11), (MiB + 512, 70000, 0x22), (33 * MiB - 1000, 3000, 0x33),
             (40 * MiB + 7, 1, 0x44), (63 * MiB, MiB, 0x55)]
BIG_SCATTERED = [*SCATTERED, ((2047 << 20) - 5000, 10000, 0x66),
                 ((2048 << 20) - 5000, 10000, 0x77), ((2 << 30) + 3 * MiB - 512, 512, 0x88)]
BIG_SIZE = (2 << 30) + 3 * MiB


def layout_for(subformat: str) -> tuple[int, list[tuple[int, int, int]]]:
    if subformat.startswith("twoGb"):
        return BIG_SIZE, BIG_SCATTERED
    return 64 * MiB, SCATTERED


def make_raw(path: Path, size: int, writes: list[tuple[int, int, int]]) -> Path:
    """The expected contents as a sparse raw file, written by plain Python."""
    with open(path, "wb") as raw:
        raw.truncate(size)
        for offset, length, fill in writes:
            raw.seek(offset)
            raw.write(bytes([fill]) * length)
    return path


def export_raw(image: disks.Image, path: Path) -> Path:
    """Our view of an image as a sparse raw file (only data extents are copied)."""
    with open(path, "wb") as raw:
        raw.truncate(image.size)
        for extent in image.map():
            if extent.kind is RunKind.DATA:
                pos = extent.offset
                while pos < extent.offset + extent.length:
                    step = min(4 * MiB, extent.offset + extent.length - pos)
                    raw.seek(pos)
                    raw.write(image.read(pos, step))
                    pos += step
    return path


def qemu_compare(a: Path, b: Path, fmt_a: str = "vmdk", fmt_b: str = "raw") -> None:
    qemu_img("compare", "-f", fmt_a, "-F", fmt_b, a, b)


def qemu_check_clean(path: Path) -> None:
    proc = qemu_img("check", "-f", "vmdk", path, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- qemu-img made the image: we read it, then write it, qemu-img checks -------------------

FLAT_SUBFORMATS = ("monolithicFlat", "twoGbMaxExtentFlat", "vmfs")


@pytest.mark.parametrize("zeroed", ["off", "on"])
@pytest.mark.parametrize("subformat", QEMU_SUBFORMATS)
def test_qemu_made_images_read_identically(tmp_path: Path, subformat: str, zeroed: str) -> None:
    if subformat in FLAT_SUBFORMATS and zeroed == "on":
        # flat images have no grains: qemu-img refuses, as we do
        proc = qemu_img("create", "-f", "vmdk", "-o", f"subformat={subformat},zeroed_grain=on",
                        tmp_path / "f.vmdk", "1M", check=False)
        assert proc.returncode != 0 and "zeroed grain" in proc.stderr
        return
    size, writes = layout_for(subformat)
    image_path = tmp_path / "q.vmdk"
    expected = make_raw(tmp_path / "expected.raw", size, writes)
    if subformat == "streamOptimized":
        # qemu-io cannot write a stream: qemu-io writes a raw, qemu-img converts it
        source = tmp_path / "source.raw"
        qemu_img("create", "-f", "raw", source, str(size))
        qemu_io(source, "raw", *(f"write -P {fill} {off} {n}" for off, n, fill in writes))
        qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o",
                 f"subformat={subformat},zeroed_grain={zeroed}", source, image_path)
    else:
        qemu_img("create", "-f", "vmdk", "-o", f"subformat={subformat},zeroed_grain={zeroed}",
                 image_path, str(size))
        qemu_io(image_path, "vmdk", *(f"write -P {fill} {off} {n}" for off, n, fill in writes))
    with disks.open(image_path, readonly=True) as image:
        assert image.size == size
        for offset, length, fill in writes:
            assert image.read(offset, length) == bytes([fill]) * length
        ours = export_raw(image, tmp_path / "ours.raw")
    qemu_compare(expected, ours, "raw", "raw")

    # now we write into qemu's image; qemu must still find it clean and right
    more = [(5 * MiB + 100, 200_000, 0x99), (size - 3 * GRAIN, GRAIN + 1, 0xAA)]
    with disks.open(image_path) as image:
        for offset, length, fill in more:
            image.write(offset, bytes([fill]) * length)
    make_raw(expected, size, writes + more)
    with disks.open(image_path, readonly=True) as image:
        assert image.check().clean
    qemu_check_clean(image_path)
    qemu_compare(image_path, expected)


# --- we made the image: qemu-img, qemu-io and libvmdk read it ------------------------------

@pytest.mark.parametrize("zeroed", [False, True])
@pytest.mark.parametrize("subformat", ALL_SUBFORMATS)
def test_our_images_pass_qemu_check_and_compare(tmp_path: Path, subformat: str,
                                                zeroed: bool) -> None:
    if subformat in FLAT_SUBFORMATS and zeroed:
        with pytest.raises(disks.InvalidOptionError):
            disks.create(tmp_path / "f.vmdk", "vmdk", MiB, subformat=subformat, zeroed_grain=True)
        return
    size, writes = layout_for(subformat)
    image_path = tmp_path / "ours.vmdk"
    with disks.create(image_path, "vmdk", size, subformat=subformat,
                      zeroed_grain=zeroed) as image:
        for offset, length, fill in writes:
            image.write(offset, bytes([fill]) * length)
        image.write_zeroes(0, 1024)   # a zero write over data, and over untouched grains
        image.write_zeroes(20 * MiB, 3 * GRAIN)
    expected = [(0, 1024, 0), *writes]
    expected_raw = make_raw(tmp_path / "expected.raw", size, [(o, n, f) for o, n, f in writes])
    with open(expected_raw, "r+b") as raw:
        raw.write(bytes(1024))
    with disks.open(image_path, readonly=True) as image:
        assert image.size == size
        for offset, length, fill in expected[1:]:
            want = bytes([fill]) * length
            if offset == 0:
                want = bytes(1024) + want[1024:]
            assert image.read(offset, length) == want
    info = qemu_img_info(image_path, "vmdk")
    assert info["virtual-size"] == size
    qemu_check_clean(image_path)
    qemu_compare(image_path, expected_raw)
    # what qemu-io writes into ours, we read (qemu cannot write streams, and its COWD
    # allocation overwrites the descriptor: a qemu bug, not a property of the image)
    if subformat not in ("streamOptimized", "vmfsSparse"):
        qemu_io(image_path, "vmdk", f"write -P 0xbb {7 * MiB + 3} 5000")
        with disks.open(image_path, readonly=True) as image:
            assert image.read(7 * MiB + 3, 5000) == b"\xbb" * 5000


@pytest.mark.parametrize("subformat", ["monolithicSparse", "monolithicFlat", "streamOptimized",
                                       "twoGbMaxExtentSparse", "vmfs"])
def test_libvmdk_reads_our_images(tmp_path: Path, subformat: str) -> None:
    vmdkinfo = need_tool("vmdkinfo")
    path = tmp_path / "ours.vmdk"
    with disks.create(path, "vmdk", 64 * MiB, subformat=subformat) as image:
        image.write(MiB, b"\x5a" * 100_000)
    proc = run(vmdkinfo, path)
    assert "67108864 bytes" in proc.stdout, proc.stdout


# --- stream-optimized: the true stream layout -------------------------------------------------

def _markers(path: Path) -> list[tuple[int, int, int]]:
    """Walk a stream file from its overhead: (sector, value, type or 'grain' as -1)."""
    data = path.read_bytes()
    overhead = struct.unpack_from("<Q", data, 64)[0]
    pos = overhead * 512
    found = []
    while pos < len(data):
        value, size = struct.unpack_from("<QI", data, pos)
        if size:
            found.append((pos // 512, value, -1))
            pos += -(-(12 + size) // 512) * 512
            continue
        kind = struct.unpack_from("<I", data, pos + 12)[0]
        found.append((pos // 512, value, kind))
        if kind == 0:
            break
        pos += 512 + value * 512
    return found


def test_stream_convert_produces_stream_layout(tmp_path: Path) -> None:
    raw = make_raw(tmp_path / "src.raw", 64 * MiB, SCATTERED)
    out = tmp_path / "stream.vmdk"
    with disks.open(raw, format="raw", readonly=True) as src, \
            disks.create(out, "vmdk", src.size, subformat="streamOptimized") as dst:
        for offset, length, fill in SCATTERED:
            dst.write(offset, bytes([fill]) * length)
    header = out.read_bytes()[:512]
    assert struct.unpack_from("<Q", header, 56)[0] == 0xFFFFFFFFFFFFFFFF   # gdOffset at end
    markers = _markers(out)
    kinds = [kind for _, _, kind in markers]
    grains = [value for _, value, kind in markers if kind == -1]
    assert grains == sorted(grains) and len(grains) >= 6   # compressed, in order
    assert kinds[-3:] == [2, 3, 0]                           # GD, footer, end of stream
    assert kinds.index(1) > kinds.index(-1)                  # tables after the grains
    qemu_check_clean(out)
    qemu_compare(out, raw)


def test_stream_append_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "stream.vmdk"
    with disks.create(path, "vmdk", 64 * MiB, subformat="streamOptimized") as image:
        image.write(0, b"\x01" * 3 * GRAIN)
    size_before = path.stat().st_size
    with disks.open(path) as image:
        image.write(GRAIN + 10, b"\x02" * 100)    # rewrite a piece of a compressed grain
        image.write(50 * MiB, b"\x03" * GRAIN)
    assert path.stat().st_size > size_before
    expected = make_raw(tmp_path / "expected.raw", 64 * MiB,
                        [(0, 3 * GRAIN, 1), (GRAIN + 10, 100, 2), (50 * MiB, GRAIN, 3)])
    qemu_check_clean(path)
    qemu_compare(path, expected)
    assert _markers(path)[-1][2] == 0


def test_vmdkstream_output_reads_correctly(tmp_path: Path) -> None:
    python3 = "/usr/bin/python3"
    if subprocess.run([python3, "-c", "import VMDKstream"], capture_output=True).returncode:
        need_tool("python3-vmdkstream (VMDKstream module)")
    raw = make_raw(tmp_path / "src.raw", 64 * MiB, SCATTERED)
    out = tmp_path / "vmdkstream.vmdk"
    run(python3, "-c", "import sys, VMDKstream; VMDKstream.convert_to_stream(sys.argv[1], "
        "sys.argv[2])", raw, out)
    with disks.open(out, readonly=True) as image:
        assert image.size == 64 * MiB
        assert image.info()["format-specific"]["data"]["create-type"] == "streamOptimized"
        for offset, length, fill in SCATTERED:
            assert image.read(offset, length) == bytes([fill]) * length
        assert export_raw(image, tmp_path / "ours.raw").read_bytes() == raw.read_bytes()


# --- sparse extents: grain tables allocated on demand ---------------------------------------

def test_write_where_grain_directory_entry_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "empty-gd.vmdk"
    qemu_img("create", "-f", "vmdk", path, str(64 * MiB))
    data = bytearray(path.read_bytes())
    header = bytes(data[:512])
    rgd, gd = struct.unpack_from("<QQ", data, 48)
    for table in (rgd, gd):   # empty GD entries 0 and 1 in both directories (tables unused)
        struct.pack_into("<II", data, table * 512, 0, 0)
    path.write_bytes(bytes(data))
    writes = [(100, 5000, 0x21), (32 * MiB - 10, 20, 0x22), (40 * MiB, GRAIN, 0x23)]
    with disks.open(path) as image:
        for offset, length, fill in writes:
            image.write(offset, bytes([fill]) * length)
        assert path.read_bytes()[72] == 1        # uncleanShutdown while open for writing
    with disks.open(path, readonly=True) as image:
        for offset, length, fill in writes:
            assert image.read(offset, length) == bytes([fill]) * length
        assert image.check().clean
    assert path.read_bytes()[:512] == header     # ... and cleared again at close
    qemu_check_clean(path)
    qemu_compare(path, make_raw(tmp_path / "expected.raw", 64 * MiB, writes))


def test_zeroed_grain_entries_read_as_zero(tmp_path: Path) -> None:
    path = tmp_path / "z.vmdk"
    qemu_img("create", "-f", "vmdk", "-o", "zeroed_grain=on", path, str(8 * MiB))
    qemu_io(path, "vmdk", "write -P 0x61 0 1M", "write -z 0 192k")
    with disks.open(path, readonly=True) as image:
        kinds = {e.kind for e in image.map(0, 3 * GRAIN)}
        assert kinds == {RunKind.ZERO}
        assert image.read(0, MiB) == bytes(192 * 1024) + b"\x61" * (MiB - 192 * 1024)


# --- descriptors ----------------------------------------------------------------------------

def test_zero_extent_between_flat_extents_keeps_its_place(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"\xaa" * MiB)
    (tmp_path / "b.bin").write_bytes(b"\x00" * 4096 + b"\xbb" * MiB)
    desc = tmp_path / "zero.vmdk"
    desc.write_text('# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
                    'createType="monolithicFlat"\n'
                    'RW 2048 FLAT "a.bin" 0\nRW 1024 ZERO\nRW 2048 FLAT "b.bin" 8\n')
    with disks.open(desc) as image:
        assert image.size == 5 * 512 * 1024
        layout = [(e.offset, e.length, e.kind) for e in image.map()]
        assert layout == [(0, MiB, RunKind.DATA), (MiB, 512 * 1024, RunKind.ZERO),
                          (MiB + 512 * 1024, MiB, RunKind.DATA)]
        assert image.read(MiB - 1, 3) == b"\xaa\x00\x00"
        assert image.read(MiB + 512 * 1024 - 1, 2) == b"\x00\xbb"
        image.write(MiB + 512 * 1024, b"\xcc" * 10)
        with pytest.raises(disks.ReadOnlyImageError):
            image.write(MiB + 10, b"x")
    assert (tmp_path / "b.bin").read_bytes()[4096:4106] == b"\xcc" * 10
    info = qemu_img_info(desc, "vmdk")   # qemu drops the ZERO extent: its size is short
    assert info["virtual-size"] <= 5 * 512 * 1024


def test_tolerant_descriptor_and_unknown_keys_kept(tmp_path: Path) -> None:
    (tmp_path / "d-flat.vmdk").write_bytes(bytes(MiB))
    desc = tmp_path / "d.vmdk"
    text = ('# Disk DescriptorFile\r\n  version = 1\r\nCID = "0badcafe"\r\nparentCID=ffffffff\r\n'
            'createType = "monolithicFlat"   \r\n# a comment\r\n\r\n'
            'RW   2048  FLAT   "d-flat.vmdk"   0\r\n'
            'ddb.geometry.cylinders = "2"\r\nddb.geometry.heads = "16"\r\n'
            'ddb.geometry.sectors = "63"\r\nddb.someVendorKey = "kept as is"\r\n')
    desc.write_bytes(text.encode())
    with disks.open(desc) as image:
        assert image.size == MiB
        assert image.geometry == disks.Geometry(2, 16, 63)
        image.write(0, b"1")
        first = _cid(desc)
        image.write(512, b"2")
        assert _cid(desc) == first != 0x0BADCAFE     # changed once per writable open
    with disks.open(desc) as image:
        image.write(0, b"3")
    assert _cid(desc) != first
    after = desc.read_bytes().decode()
    assert 'ddb.someVendorKey = "kept as is"' in after and "# a comment" in after
    assert "\r\n" in after   # (qemu-img itself rejects `createType = "..."` with spaces)


def _cid(path: Path) -> int:
    match = re.search(rb"CID\s*=\s*\"?([0-9a-fA-F]+)", path.read_bytes())
    assert match
    return int(match[1], 16)


@pytest.mark.parametrize("name", ["../outside-flat.vmdk", "/etc/passwd", "sub/../../x.vmdk"])
def test_extent_paths_escaping_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "disk"
    folder.mkdir()
    (tmp_path / "outside-flat.vmdk").write_bytes(bytes(MiB))
    desc = folder / "d.vmdk"
    desc.write_text(f'version=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
                    f'RW 8 FLAT "{name}" 0\n')
    with pytest.raises(disks.ImageError, match="allow-path"):
        disks.open(desc, readonly=True)
    if name == "../outside-flat.vmdk":
        with disks.open(desc, readonly=True, allow_paths=[tmp_path]) as image:
            assert image.read(0, 512) == bytes(512)


# --- parent chains ----------------------------------------------------------------------------

def test_parent_chain_and_cid_mismatch(tmp_path: Path) -> None:
    base = tmp_path / "base.vmdk"
    child = tmp_path / "child.vmdk"
    with disks.create(base, "vmdk", 16 * MiB) as image:
        image.write(0, b"\x10" * 3 * GRAIN)
    with disks.create(child, "vmdk", backing=base) as image:
        image.write(GRAIN + 100, b"\x20" * 100)      # partial grain: rest from the parent
    with disks.open(child, readonly=True) as image:
        assert image.read(0, 3 * GRAIN) == (b"\x10" * (GRAIN + 100) + b"\x20" * 100
                                             + b"\x10" * (2 * GRAIN - 200))
        assert [e.depth for e in image.map(0, 3 * GRAIN)] == [1, 0, 1]
    info = qemu_img_info(child, "vmdk")
    assert info["backing-filename"] == "base.vmdk"
    qemu_check_clean(child)
    expected = make_raw(tmp_path / "expected.raw", 16 * MiB,
                        [(0, 3 * GRAIN, 0x10), (GRAIN + 100, 100, 0x20)])
    qemu_compare(child, expected)
    with disks.open(base) as image:       # a write gives the parent a new CID
        image.write(10 * MiB, b"x")
    with pytest.raises(disks.BackingChainError, match="CID"):
        disks.open(child, readonly=True)
    (tmp_path / "base.vmdk").rename(tmp_path / "gone.vmdk")
    with pytest.raises(disks.MissingBackingError):
        disks.open(child, readonly=True)


def test_parent_hint_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "child"
    folder.mkdir()
    base = tmp_path / "base.vmdk"
    with disks.create(base, "vmdk", 4 * MiB) as image:
        image.write(0, b"p" * 512)
    child = folder / "c.vmdk"
    with disks.create(child, "vmdk", backing=base):
        pass
    with pytest.raises(disks.ImageError, match="allow-path"):
        disks.open(child, readonly=True)
    with disks.open(child, readonly=True, allow_paths=[tmp_path]) as image:
        assert image.read(0, 512) == b"p" * 512


# --- COWD / VMDK3 ----------------------------------------------------------------------------

def test_cowd_extent_opened_directly(tmp_path: Path) -> None:
    path = tmp_path / "cowd.vmdk"
    with disks.create(path, "vmdk", 8 * MiB, subformat="vmfsSparse") as image:
        image.write(3 * MiB + 5, b"c" * 3000)
    extent = tmp_path / "cowd-sparse.vmdk"
    assert extent.read_bytes()[:4] == b"COWD"
    assert disks.probe(extent) == "vmdk"
    with disks.open(extent) as image:
        assert image.size == 8 * MiB
        assert image.read(3 * MiB + 5, 3000) == b"c" * 3000
        image.write(7 * MiB, b"d" * 70000)
    with disks.open(path, readonly=True) as image:
        assert image.read(7 * MiB, 70000) == b"d" * 70000
        assert image.check().clean
    expected = make_raw(tmp_path / "e.raw", 8 * MiB, [(3 * MiB + 5, 3000, 0x63),
                                                       (7 * MiB, 70000, 0x64)])
    qemu_compare(path, expected)


# --- the VMware and fuzzer samples ------------------------------------------------------------

def test_vmware_stream_version3_sample(sample) -> None:  # type: ignore[no-untyped-def]
    path = sample("iotest-version3.vmdk")
    with disks.open(path, readonly=True) as image:
        assert image.size == 16 << 30
        for i in range(100):
            offset = i * 640 * 1024 + i * 512
            assert image.read(offset, 512) == bytes([0x30 + i % 10]) * 512
        extents = list(image.map())
        data = [e for e in extents if e.kind is RunKind.DATA]
        assert len(data) <= 200 and sum(e.length for e in data) <= 200 * GRAIN
        for i in range(100):                       # every written spot lies in a data grain
            offset = i * 640 * 1024 + i * 512
            assert any(e.offset <= offset < e.offset + e.length for e in data)
        holes = [e for e in extents if e.kind is not RunKind.DATA]
        assert sum(e.length for e in holes) + sum(e.length for e in data) == 16 << 30
        for hole in holes[:50] + holes[-3:]:       # everything else reads as zero
            assert image.read(hole.offset, min(hole.length, MiB)) == bytes(min(hole.length, MiB))
            tail = hole.offset + hole.length - 512
            assert image.read(tail, 512) == bytes(512)
        with pytest.raises(disks.ReadOnlyImageError):
            image.write(0, b"x")
        assert image.check().clean


def test_fuzzed_sample_refused_without_big_allocation(sample) -> None:  # type: ignore[no-untyped-def]
    path = sample("afl9.vmdk")
    tracemalloc.start()
    try:
        with pytest.raises(disks.ImageError):
            disks.open(path, readonly=True)
        # the same with the newline check characters repaired: refused for its tables
        data = bytearray(path.read_bytes())
        data[73:77] = b"\n \r\n"
        path.write_bytes(bytes(data))
        with pytest.raises(disks.ImageError):
            disks.open(path, readonly=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB


def test_check_finds_broken_tables(tmp_path: Path) -> None:
    path = tmp_path / "c.vmdk"
    with disks.create(path, "vmdk", 8 * MiB) as image:
        image.write(0, b"z" * 2 * GRAIN)
    data = bytearray(path.read_bytes())
    rgd, gd = struct.unpack_from("<QQ", data, 48)
    gt = struct.unpack_from("<I", data, gd * 512)[0]
    struct.pack_into("<I", data, gt * 512 + 4, struct.unpack_from("<I", data, gt * 512)[0])
    struct.pack_into("<I", data, gt * 512 + 8, 1 << 30)
    path.write_bytes(bytes(data))
    with disks.open(path, readonly=True) as image:
        report = image.check()
    text = "\n".join(report.corruptions)
    assert "redundant" in text and "overlaps" in text and "beyond" in text


def test_create_options_land_in_the_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "o.vmdk"
    with disks.create(path, "vmdk", 100 * MiB, adapter_type="lsilogic", hwversion="7"):
        pass
    with pytest.raises(disks.InvalidOptionError):
        disks.create(tmp_path / "x.vmdk", "vmdk", MiB, hwversion='4"\nRW 1 FLAT "/etc/passwd" 0')
    with pytest.raises(disks.InvalidOptionError):
        disks.create(tmp_path / 'quote".vmdk', "vmdk", MiB)
    with disks.open(path, readonly=True) as image:
        facts = image.info()["format-specific"]["data"]
        assert facts["adapter-type"] == "lsilogic" and facts["hwversion"] == "7"
        assert image.geometry is not None and image.geometry.heads == 255
    info = qemu_img_info(path, "vmdk")
    assert info["format-specific"]["data"]["create-type"] == "monolithicSparse"


# --- property tests against a bytearray model -------------------------------------------------

MODEL_SIZE = 2 * MiB + 3 * 512


@pytest.mark.parametrize("subformat", ["monolithicSparse", "monolithicFlat",
                                       "streamOptimized", "vmfsSparse",
                                       "twoGbMaxExtentSparse"])
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=ops(MODEL_SIZE), zeroed=st.booleans())
def test_model(tmp_path_factory: pytest.TempPathFactory, subformat: str,
               sequence: list[tuple[str, int, int, int]], zeroed: bool) -> None:
    folder = tmp_path_factory.mktemp("model")
    path = folder / "m.vmdk"
    model = bytearray(MODEL_SIZE)
    zeroed = zeroed and subformat != "monolithicFlat"
    with disks.create(path, "vmdk", MODEL_SIZE, subformat=subformat,
                      zeroed_grain=zeroed) as image:
        apply(image, model, sequence)
    with disks.open(path) as image:   # reopen: what was flushed is what reads back
        assert image.read(0, MODEL_SIZE) == bytes(model)
        apply(image, model, sequence[::-1])
    with disks.open(path, readonly=True) as image:
        assert image.read(0, MODEL_SIZE) == bytes(model)
        assert image.check().clean


def test_model_with_parent(tmp_path: Path) -> None:
    base, child = tmp_path / "b.vmdk", tmp_path / "c.vmdk"
    model = bytearray(os.urandom(1024)) * (MODEL_SIZE // 1024) + bytearray(MODEL_SIZE % 1024)
    with disks.create(base, "vmdk", MODEL_SIZE) as image:
        image.write(0, bytes(model))

    @settings(max_examples=20, deadline=None)
    @given(sequence=ops(MODEL_SIZE))
    def run_sequence(sequence: list[tuple[str, int, int, int]]) -> None:
        if child.exists():
            child.unlink()
        mine = bytearray(model)
        with disks.create(child, "vmdk", backing=base) as image:
            apply(image, mine, sequence)

    run_sequence()


def test_stream_without_footer_is_read_by_its_markers(tmp_path: Path) -> None:
    path = tmp_path / "unfinished.vmdk"
    with disks.create(path, "vmdk", 64 * MiB, subformat="streamOptimized") as image:
        for offset, length, fill in SCATTERED:
            image.write(offset, bytes([fill]) * length)
    with open(path, "r+b") as stream:       # cut off footer marker, footer and EOS
        stream.truncate(path.stat().st_size - 3 * 512)
    with disks.open(path, readonly=True) as image:
        for offset, length, fill in SCATTERED:
            assert image.read(offset, length) == bytes([fill]) * length
        expected = make_raw(tmp_path / "expected.raw", 64 * MiB, SCATTERED)
        assert export_raw(image, tmp_path / "ours.raw").read_bytes() == expected.read_bytes()
    with disks.open(path) as image:          # writing finishes the stream again
        image.write(0, b"\x01" * 512)
    assert _markers(path)[-1][2] == 0
    qemu_check_clean(path)


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized",
                                       "twoGbMaxExtentSparse"])
def test_emu_img_convert_to_vmdk(tmp_path: Path, subformat: str) -> None:
    from emu.img import main as emu_img

    source = make_raw(tmp_path / "src.raw", 64 * MiB + 512, SCATTERED)
    noise = os.urandom(3 * GRAIN + 100)       # incompressible grains (stored, not deflated)
    with open(source, "r+b") as raw:
        raw.seek(10 * MiB - 50)
        raw.write(noise)
        raw.seek(64 * MiB)
        raw.write(b"\xee" * 512)             # the disk's last, partial grain
    out = tmp_path / "out.vmdk"
    assert emu_img(["convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}",
                    str(source), str(out)]) == 0
    qemu_check_clean(out)
    qemu_compare(out, source)
    with disks.open(out, readonly=True) as image:
        assert image.read(10 * MiB - 50, len(noise)) == noise
        assert image.check().clean
    back = tmp_path / "back.raw"
    assert emu_img(["convert", "-f", "vmdk", "-O", "raw", str(out), str(back)]) == 0
    assert back.read_bytes() == source.read_bytes()


def test_crash_at_any_point_of_an_allocation_leaves_a_consistent_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every prefix of the writes that allocate a grain and its new grain table (the GD
    entry was empty) leaves an image that opens, reads old or new data, and checks clean."""
    path = tmp_path / "crash.vmdk"
    qemu_img("create", "-f", "vmdk", path, str(64 * MiB))
    data = bytearray(path.read_bytes())
    rgd, gd = struct.unpack_from("<QQ", data, 48)
    for table in (rgd, gd):
        struct.pack_into("<I", data, table * 512 + 4, 0)     # GD entry 1 (32..64 MiB) empty
    path.write_bytes(bytes(data))
    original = path.read_bytes()
    log: list[tuple[int, bytes]] = []
    real_pwritev = disks.hostfile.HostFile.pwritev

    def recording(self, buffers, offset):  # type: ignore[no-untyped-def]
        if self.path == str(path):
            log.append((offset, b"".join(bytes(memoryview(b).cast("B")) for b in buffers)))
        real_pwritev(self, buffers, offset)

    monkeypatch.setattr(disks.hostfile.HostFile, "pwritev", recording)
    with disks.open(path) as image:
        log.clear()                        # only the allocation, not the CID update
        assert isinstance(image, VmdkImage)
        image._bump_cid()
        log.clear()
        image.write(40 * MiB + 100, b"\x42" * 200)
        image.flush()                      # the GD entry waits for the flush
        steps = list(log)
    monkeypatch.undo()
    assert len(steps) >= 3                 # grain, new GT + RGT, RGD entry; GD entry
    for cut in range(len(steps) + 1):
        crashed = bytearray(original)
        for offset, chunk in steps[:cut]:
            crashed[len(crashed):offset + len(chunk)] = bytes(
                max(0, offset + len(chunk) - len(crashed)))
            crashed[offset:offset + len(chunk)] = chunk
        path.write_bytes(bytes(crashed))
        with disks.open(path, readonly=True) as image:
            got = image.read(40 * MiB, GRAIN)
            assert got in (bytes(GRAIN), bytes(100) + b"\x42" * 200 + bytes(GRAIN - 300)), cut
            assert not image.check().corruptions, cut
        assert qemu_img("check", "-f", "vmdk", path, check=False).returncode in (0, 3), cut


def test_grain_entry_into_the_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.vmdk"
    with disks.create(path, "vmdk", 8 * MiB):
        pass
    data = bytearray(path.read_bytes())
    gd = struct.unpack_from("<Q", data, 56)[0]
    gt = struct.unpack_from("<I", data, gd * 512)[0]
    rgd = struct.unpack_from("<Q", data, 48)[0]
    rgt = struct.unpack_from("<I", data, rgd * 512)[0]
    for table in (gt, rgt):
        struct.pack_into("<I", data, table * 512 + 8, 2)   # grain 2 -> the descriptor
    path.write_bytes(bytes(data))
    before = path.read_bytes()[:512 * 21]
    with disks.open(path) as image:
        with pytest.raises(disks.CorruptImageError):
            image.read(2 * GRAIN, 512)
        with pytest.raises(disks.CorruptImageError):
            image.write(2 * GRAIN, b"\xff" * 512)
        assert "metadata" in "\n".join(image.check().corruptions)
    after = path.read_bytes()[:512 * 21]
    assert after[:512] == before[:512] and b"\xff" not in after   # header and descriptor kept


@pytest.mark.parametrize("subformat", ["monolithicFlat", "twoGbMaxExtentFlat", "vmfsSparse"])
def test_emu_img_convert_to_descriptor_subformats(tmp_path: Path, subformat: str) -> None:
    from emu.img import main as emu_img

    source = make_raw(tmp_path / "src.raw", 64 * MiB, SCATTERED)
    out = tmp_path / "out.vmdk"
    assert emu_img(["convert", "-f", "raw", "-O", "vmdk", "-o", f"subformat={subformat}",
                    str(source), str(out)]) == 0
    qemu_check_clean(out)
    qemu_compare(out, source)


LIBVMDK_DUMP = """
import sys, pyvmdk
handle = pyvmdk.handle()
handle.open(sys.argv[1])
handle.open_extent_data_files()
size = handle.get_media_size()
with open(sys.argv[2], "wb") as out:
    while handle.get_offset() < size:
        out.write(handle.read_buffer(min(1 << 22, size - handle.get_offset())))
handle.close()
"""


@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized", "monolithicFlat",
                                       "twoGbMaxExtentSparse", "vmfs", "vmfsSparse"])
def test_libvmdk_reads_our_data(tmp_path: Path, subformat: str) -> None:
    """libvmdk (Debian python3-libvmdk) reads every byte of our images as we wrote them."""
    python3 = "/usr/bin/python3"
    if subprocess.run([python3, "-c", "import pyvmdk"], capture_output=True).returncode:
        need_tool("python3-libvmdk (pyvmdk module)")
    path = tmp_path / "ours.vmdk"
    noise = os.urandom(GRAIN + 7)
    with disks.create(path, "vmdk", 64 * MiB, subformat=subformat) as image:
        for offset, length, fill in SCATTERED:
            image.write(offset, bytes([fill]) * length)
        image.write(9 * MiB + 3, noise)
    expected = make_raw(tmp_path / "expected.raw", 64 * MiB, SCATTERED)
    with open(expected, "r+b") as raw:
        raw.seek(9 * MiB + 3)
        raw.write(noise)
    dumped = tmp_path / "libvmdk.raw"
    run(python3, "-c", LIBVMDK_DUMP, path, dumped)
    assert dumped.read_bytes() == expected.read_bytes()


def test_grain_table_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import disks.vmdk as vmdk

    monkeypatch.setattr(vmdk, "GT_CACHE_TABLES", 4)
    path = tmp_path / "lru.vmdk"
    with disks.create(path, "vmdk", 512 * MiB) as image:     # 16 grain tables
        for table in range(16):
            image.write(table * 32 * MiB, bytes([table + 1]) * 512)
    with disks.open(path, readonly=True) as image:
        assert isinstance(image, vmdk.VmdkImage)
        extent = image.extents[0]
        assert isinstance(extent, vmdk.SparseExtent)
        for table in range(16):
            assert image.read(table * 32 * MiB, 512) == bytes([table + 1]) * 512
            assert len(extent.tables.cache) <= 4
        assert sum(e.length for e in image.map() if e.kind is RunKind.DATA) == 16 * GRAIN


LIBVMDK_CHAIN = """
import sys, pyvmdk
parent = pyvmdk.handle()
parent.open(sys.argv[1])
parent.open_extent_data_files()
child = pyvmdk.handle()
child.open(sys.argv[2])
child.open_extent_data_files()
assert child.get_parent_content_identifier() == parent.get_content_identifier()
child.set_parent(parent)
sys.stdout.buffer.write(child.read_buffer(int(sys.argv[3])))
"""


def test_libvmdk_reads_our_parent_chain(tmp_path: Path) -> None:
    python3 = "/usr/bin/python3"
    if subprocess.run([python3, "-c", "import pyvmdk"], capture_output=True).returncode:
        need_tool("python3-libvmdk (pyvmdk module)")
    base, child = tmp_path / "base.vmdk", tmp_path / "child.vmdk"
    with disks.create(base, "vmdk", 8 * MiB) as image:
        image.write(0, b"\x10" * 4 * GRAIN)
    with disks.create(child, "vmdk", backing=base) as image:
        image.write(GRAIN + 100, b"\x20" * 100)
        image.write(3 * GRAIN, bytes(GRAIN))
    expected = bytearray(b"\x10" * 4 * GRAIN)
    expected[GRAIN + 100:GRAIN + 200] = b"\x20" * 100
    expected[3 * GRAIN:] = bytes(GRAIN)
    proc = subprocess.run([python3, "-c", LIBVMDK_CHAIN, base, child, str(4 * GRAIN)],
                          capture_output=True, check=True)
    assert proc.stdout == bytes(expected)


def test_extent_files_are_locked_for_one_writer(tmp_path: Path) -> None:
    path = tmp_path / "flat.vmdk"
    with disks.create(path, "vmdk", MiB, subformat="monolithicFlat"):
        other = tmp_path / "other.vmdk"       # a second descriptor naming the same extent
        other.write_text(path.read_text().replace("CID=", "# copy\nCID="))
        with pytest.raises(disks.ImageLockedError):
            disks.open(other)
        with disks.open(other, readonly=True, force_share=True) as reader:
            assert reader.read(0, 512) == bytes(512)


def test_unclean_shutdown_is_reported_and_repaired(tmp_path: Path) -> None:
    path = tmp_path / "u.vmdk"
    with disks.create(path, "vmdk", 4 * MiB) as image:
        image.write(0, b"u" * 512)
    data = bytearray(path.read_bytes())
    data[72] = 1                          # as a writer that died leaves it
    path.write_bytes(bytes(data))
    with disks.open(path, readonly=True) as image:
        report = image.check()
        assert not report.corruptions and any("uncleanShutdown" in m for m in report.leaks)
    with disks.open(path) as image:
        assert image.check(repair=True).repaired
    assert path.read_bytes()[72] == 0
    with disks.open(path, readonly=True) as image:
        assert image.check().clean


@pytest.mark.parametrize("hint", [r"C:\VMs\base.vmdk", "/elsewhere/base.vmdk"])
def test_parent_hint_from_another_host_found_beside_the_child(tmp_path: Path, hint: str) -> None:
    base, child = tmp_path / "base.vmdk", tmp_path / "child.vmdk"
    with disks.create(base, "vmdk", 4 * MiB) as image:
        image.write(0, b"b" * 512)
    with disks.create(child, "vmdk", backing=base):
        pass
    data = bytearray(child.read_bytes())
    area = bytes(data[512:21 * 512])                    # the embedded descriptor
    text = area.split(b"\0", 1)[0].replace(b'parentFileNameHint="base.vmdk"',
                                           f'parentFileNameHint="{hint}"'.encode())
    data[512:21 * 512] = text.ljust(len(area), b"\0")
    child.write_bytes(bytes(data))
    with disks.open(child, readonly=True) as image:
        assert image.read(0, 512) == b"b" * 512
        assert image.backing is not None and image.backing.path == str(base)


def test_rdonly_and_noaccess_extents_keep_their_place(tmp_path: Path) -> None:
    for name, fill in (("a.bin", b"a"), ("b.bin", b"b"), ("c.bin", b"c")):
        (tmp_path / name).write_bytes(fill * MiB)
    desc = tmp_path / "modes.vmdk"
    desc.write_text('version=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
                    'RW 2048 FLAT "a.bin" 0\nNOACCESS 2048 FLAT "b.bin" 0\n'
                    'RDONLY 2048 FLAT "c.bin" 0\n')
    with disks.open(desc) as image:
        assert image.size == 3 * MiB
        assert image.read(MiB - 1, 1) == b"a" and image.read(2 * MiB, 1) == b"c"
        with pytest.raises(disks.ImageError, match="NOACCESS"):
            image.read(MiB, 512)
        with pytest.raises(disks.ReadOnlyImageError):
            image.write(2 * MiB, b"x")
        image.write(0, b"x")
    assert (tmp_path / "c.bin").read_bytes() == b"c" * MiB
    assert (tmp_path / "a.bin").read_bytes()[:1] == b"x"
