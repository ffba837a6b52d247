"""Corrupt images give a typed error, bounded work and no lost writes (issue 10).

One test per class of damage the fuzzer (``bench/fuzz.py``) found, with the image made
by hand so the failure mode is plain; the fuzzer itself runs as a short deterministic
slice at the end.  The rule every test checks: a write never grows a file by more than
the blocks it allocates, and a write that returns is read back after reopening.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from oracles import qemu_img

import disks
from disks import vdi

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


def written_and_read_back(path: Path, offset: int, data: bytes, fmt: str) -> bool:
    """Write + flush + close, then reopen read-only: True when ``data`` reads back."""
    with disks.open(path, format=fmt) as image:
        image.write(offset, data)
        image.flush()
    with disks.open(path, format=fmt, readonly=True) as image:
        return image.read(offset, len(data)) == data


# --- VHD --------------------------------------------------------------------------------

def test_vhd_wild_bat_entry_without_end_footer_cannot_grow_the_file(tmp_path: Path) -> None:
    """The next block goes after the last *good* block: a BAT entry pointing 1 TiB away
    (with the end footer gone, so nothing bounds it) is a bad block, not the file end."""
    path = tmp_path / "d.vhd"
    with disks.create(path, "vpc", 8 * MiB, block_size=512 * 1024) as image:
        image.write(0, b"a" * 4096)
    data = bytearray(path.read_bytes())
    table_offset = struct.unpack_from(">Q", data, 512 + 16)[0]
    struct.pack_into(">I", data, table_offset + 4 * 3, 0x80000000)   # block 3 at 1 TiB
    data[-512:] = bytes(512)                                          # end footer gone
    path.write_bytes(bytes(data))
    before = path.stat().st_size
    with pytest.warns(disks.ImageWarning):
        image = disks.open(path)
    with image:
        with pytest.raises(disks.CorruptImageError, match="past the end"):
            image.read(3 * 512 * 1024, 512)
        image.write(5 * 512 * 1024, b"b" * 512)
    assert path.stat().st_size <= before + 512 * 1024 + 4096
    assert written_and_read_back(path, 6 * 512 * 1024, b"c" * 512, "vpc")


# --- VDI --------------------------------------------------------------------------------

def _vdi_with_entries(path: Path, entries: list[int], allocated: int | None = None,
                      size: int = 4 * MiB) -> None:
    with disks.create(path, "vdi", size) as image:
        for block in range(3):
            image.write(block * MiB, bytes([block + 1]) * MiB)
    data = bytearray(path.read_bytes())
    header = vdi.VdiHeader.unpack(bytes(data[:512]))
    struct.pack_into(f"<{len(entries)}I", data, header.offset_bmap, *entries)
    if allocated is not None:
        struct.pack_into("<I", data, vdi.VdiHeader.OFFSET_BLOCKS_ALLOCATED, allocated)
    path.write_bytes(bytes(data))


def test_vdi_blocks_sharing_a_slot_are_refused_for_writing(tmp_path: Path) -> None:
    path = tmp_path / "shared.vdi"
    _vdi_with_entries(path, [0, 1, 1, vdi.BLOCK_FREE])
    with pytest.raises(disks.CorruptImageError, match="share slot 1"):
        disks.open(path)
    with disks.open(path, readonly=True) as image:   # inspecting it stays possible
        assert any("also used by block" in c for c in image.check().corruptions)
    assert qemu_img("check", "-f", "vdi", path, check=False).returncode == 2


def test_vdi_count_past_the_file_does_not_push_new_blocks_away(tmp_path: Path) -> None:
    """blocks_allocated says 60 slots, the file holds 3: the next block is the 4th."""
    path = tmp_path / "count.vdi"
    _vdi_with_entries(path, [0, 1, 2, vdi.BLOCK_FREE], allocated=60, size=64 * MiB)
    before = path.stat().st_size
    assert written_and_read_back(path, 3 * MiB + 7, b"new", "vdi")
    assert path.stat().st_size == before + MiB


def test_vdi_counting_freed_slots_is_finished_before_new_blocks(tmp_path: Path) -> None:
    """Two blocks freed in the map but still counted (a discard cut short): a new block
    once became slot 5 of 4 (blocks_allocated > blocks_in_image), an image no reader
    opens again.  A writable open now finishes the discard first."""
    path = tmp_path / "full.vdi"
    _vdi_with_entries(path, [vdi.BLOCK_FREE, vdi.BLOCK_FREE, 2, vdi.BLOCK_FREE], allocated=4)
    with open(path, "ab") as f:
        f.truncate(path.stat().st_size + MiB)    # slot 3's space is there too
    with disks.open(path) as image:
        image.write(0, b"x" * 512)
        image.flush()
    header = vdi.VdiHeader.unpack(path.read_bytes()[:512])
    assert header.blocks_allocated <= header.blocks_in_image
    with disks.open(path, readonly=True) as image:
        assert image.read(2 * MiB, 1) == b"\x03"
        assert image.read(0, 512) == b"x" * 512
        assert image.check().clean


def test_vdi_discard_after_wild_entries_is_typed(tmp_path: Path) -> None:
    """Hypothesis seed 7 of test_garbled_headers: an entry past blocks_in_image made
    discard index past the slot table (IndexError); a writable open now refuses it."""
    path = tmp_path / "wild.vdi"
    _vdi_with_entries(path, [0, 1, 2, 3])
    data = bytearray(path.read_bytes())
    data.extend(bytes(MiB))                       # slot 3 inside the file ...
    struct.pack_into("<I", data, 0x180, 3)        # ... but blocks_in_image is 3
    path.write_bytes(bytes(data))
    with pytest.raises(disks.CorruptImageError):
        with disks.open(path) as image:
            image.discard(0, 4 * MiB)


# --- VMDK -------------------------------------------------------------------------------

def _sparse(path: Path, **options: object) -> bytearray:
    with disks.create(path, "vmdk", 8 * MiB, **options) as image:
        image.write(0, b"d" * 65536)
    return bytearray(path.read_bytes())


@pytest.mark.parametrize("sectors", [127, 255])
def test_vmdk_descriptor_over_the_tables_is_refused(tmp_path: Path, sectors: int) -> None:
    """descriptorSize 20 -> 127/255 made the CID rewrite wipe the grain directory: the
    write was acknowledged, then gone after reopening, and check() said clean."""
    path = tmp_path / "d.vmdk"
    data = _sparse(path)
    struct.pack_into("<Q", data, 36, sectors)
    path.write_bytes(bytes(data))
    with pytest.raises(disks.CorruptImageError, match="descriptor") as error:
        disks.open(path)
    assert error.value.field == "descriptorSize"


def test_vmdk_stream_footer_flags_must_match_the_header(tmp_path: Path) -> None:
    path = tmp_path / "s.vmdk"
    data = _sparse(path, subformat="streamOptimized")
    footer = len(data) - 1024
    assert data[footer:footer + 4] == b"KDMV"
    struct.pack_into("<I", data, footer + 8, 0xFF)
    path.write_bytes(bytes(data))
    with pytest.raises(disks.ImageError):
        disks.open(path)


@pytest.mark.parametrize("flags", [0xFF, 0x300FF, 0xFFFFFFFF])
def test_vmdk_unknown_header_flags_are_refused(tmp_path: Path, flags: int) -> None:
    path = tmp_path / "f.vmdk"
    data = _sparse(path, subformat="streamOptimized")
    struct.pack_into("<I", data, 8, flags)
    path.write_bytes(bytes(data))
    with pytest.raises(disks.UnsupportedImageError, match="flags"):
        disks.open(path)


def test_vmdk_grain_entry_past_the_file_is_refused_not_written(tmp_path: Path) -> None:
    path = tmp_path / "g.vmdk"
    data = _sparse(path)
    gd = struct.unpack_from("<Q", data, 56)[0]
    gt = struct.unpack_from("<I", data, gd * 512)[0]
    struct.pack_into("<I", data, gt * 512 + 4, 0xF0000000)   # grain 1 at ~1.9 TiB
    path.write_bytes(bytes(data))
    before = path.stat().st_size
    with disks.open(path) as image:
        with pytest.raises(disks.CorruptImageError, match="past the end") as error:
            image.write(65536, b"x" * 512)
    assert error.value.field == "gtEntry"
    assert path.stat().st_size == before
    with disks.open(path, readonly=True) as image:
        assert any("beyond" in c for c in image.check().corruptions)


def test_vmdk_stream_marker_of_absurd_size_grows_nothing(tmp_path: Path) -> None:
    """A grain marker claiming 4 GiB once made the stream writer truncate the file to
    where that grain would end.  The writer appends before the stream's tail and never
    sizes the file from old markers: the write costs what it stores, no more."""
    path = tmp_path / "m.vmdk"
    data = _sparse(path, subformat="streamOptimized")
    marker = data.find(struct.pack("<Q", 0), 512 * 128)   # the first grain's marker (lba 0)
    struct.pack_into("<I", data, marker + 8, 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    before = path.stat().st_size
    with disks.open(path) as image:
        image.write(3 * MiB, b"y" * MiB)
        image.flush()
    assert path.stat().st_size <= before + 2 * MiB        # the compressed grains and tables
    with disks.open(path, readonly=True) as image:
        assert image.read(3 * MiB, MiB) == b"y" * MiB


def test_vmdk_flat_extent_beyond_any_disk_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "flat.vmdk"
    disks.create(path, "vmdk", MiB, subformat="monolithicFlat").close()
    text = path.read_text().replace("RW 2048 FLAT", f"RW {2**64 - 512} FLAT")
    path.write_text(text)
    with pytest.raises(disks.UnsupportedImageError, match="limit"):
        disks.open(path)


def test_vmdk_flat_extent_moved_past_its_file_is_not_written(tmp_path: Path) -> None:
    """A damaged start sector (0 -> 8829732) made a write grow the flat file to 4.5 GB."""
    path = tmp_path / "moved.vmdk"
    disks.create(path, "vmdk", MiB, subformat="monolithicFlat").close()
    path.write_text(path.read_text().replace('"moved-flat.vmdk" 0', '"moved-flat.vmdk" 8829732'))
    with pytest.raises(disks.CorruptImageError, match="flat extent"):
        disks.open(path)
    with disks.open(path, readonly=True) as image:
        assert image.read(0, 512) == bytes(512)
    assert (tmp_path / "moved-flat.vmdk").stat().st_size == MiB


def test_vmdk_sparse_extent_without_descriptor_is_refused(tmp_path: Path) -> None:
    """qemu-img and libvmdk refuse it; it used to open as a 64 KiB disk and check clean."""
    disks.create(tmp_path / "split.vmdk", "vmdk", 4 * MiB,
                 subformat="twoGbMaxExtentSparse").close()
    extent = tmp_path / "split-s001.vmdk"
    with pytest.raises(disks.CorruptImageError, match="without a descriptor"):
        disks.open(extent)
    assert qemu_img("info", "-f", "vmdk", extent, check=False).returncode != 0


def test_bare_sesparse_extent_is_probed_as_vmdk_and_refused(tmp_path: Path) -> None:
    path = tmp_path / "x-sesparse.vmdk"
    path.write_bytes(struct.pack("<QQQQ", 0xCAFEBABE, 0x200000001, 2048, 8).ljust(MiB, b"\0"))
    assert disks.probe(path) == "vmdk"
    with pytest.raises(disks.UnsupportedImageError, match="seSparse"):
        disks.open(path, readonly=True)


def test_map_of_a_flat_extent_naming_a_folder_ends(tmp_path: Path) -> None:
    """SEEK_DATA on a folder fails with EINVAL; the fallback must still make progress."""
    path = tmp_path / "dot.vmdk"
    disks.create(path, "vmdk", MiB, subformat="monolithicFlat").close()
    path.write_text(path.read_text().replace('"dot-flat.vmdk"', '"."'))
    try:
        with disks.open(path, readonly=True) as image:
            assert sum(e.length for e in image.map()) == MiB
    except disks.ImageError:
        pass   # refusing a non-regular extent file is as good


# --- VHDX -------------------------------------------------------------------------------

def _vhdx_bat(path: Path) -> tuple[bytearray, int]:
    with disks.create(path, "vhdx", 8 * MiB, block_size="1M") as image:
        image.write(0, b"v" * MiB)
        bat_offset = image.bat_offset
    return bytearray(path.read_bytes()), bat_offset


def test_vhdx_partially_present_in_a_plain_image_checks_like_qemu(tmp_path: Path) -> None:
    path = tmp_path / "p.vhdx"
    data, bat = _vhdx_bat(path)
    entry = struct.unpack_from("<Q", data, bat)[0]
    struct.pack_into("<Q", data, bat + 8 * 7, entry & ~7 | 7)   # block 7: PARTIALLY_PRESENT
    path.write_bytes(bytes(data))
    assert qemu_img("check", "-f", "vhdx", path, check=False).returncode == 0
    with disks.open(path, readonly=True) as image:
        assert image.check().corruptions == []
        assert image.read(7 * MiB, 512) == bytes(512)


def test_vhdx_bat_offset_past_any_file_is_a_typed_error(tmp_path: Path) -> None:
    """A one-byte flip in a BAT entry's top byte put a block at 2^63+: preadv overflowed
    and convert died with a traceback.  qemu-img refuses the image; emu opens it
    read-only for check (which reports it) but refuses to read the missing block."""
    path = tmp_path / "o.vhdx"
    data, bat = _vhdx_bat(path)
    data[bat + 7] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(disks.CorruptImageError):
        disks.open(path)                      # a writer refuses blocks past the end
    with disks.open(path, readonly=True) as image:
        assert any("beyond" in c for c in image.check().corruptions)
        assert image.read(MiB, 4096) == bytes(4096)    # other blocks still read
        with pytest.raises(disks.CorruptImageError, match="past the end"):
            image.read(0, 4096)
    converted = subprocess.run([sys.executable, "-m", "emu", "img", "convert", "-O", "raw",
                                str(path), str(tmp_path / "o.raw")],
                               capture_output=True, text=True, cwd=ROOT)
    assert converted.returncode == 1 and "Traceback" not in converted.stderr
    assert len(converted.stderr.strip().splitlines()) == 1


def test_vhdx_block_over_the_headers_is_never_written(tmp_path: Path) -> None:
    """A BAT entry moved to offset 0: a write went through it over header 1."""
    path = tmp_path / "h.vhdx"
    data, bat = _vhdx_bat(path)
    struct.pack_into("<Q", data, bat, struct.unpack_from("<Q", data, bat)[0] & 7)
    path.write_bytes(bytes(data))
    with disks.open(path) as image, pytest.raises(disks.CorruptImageError, match="header"):
        image.write(0, b"w" * 4096)
    with disks.open(path, readonly=True) as image:
        assert any("overlaps the header section" in c for c in image.check().corruptions)


# --- the fuzzer, a short deterministic slice ----------------------------------------------

def test_fuzz_slice_finds_nothing() -> None:
    """A few hundred mutated inputs per format: no untyped error, hang, growth or loss."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "fuzz.py"), "--count", "60", "--seed", "0",
         "--json", "--workers", "2", "--wall-limit", "120"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    for fmt in ("vdi", "vpc", "vmdk", "vhdx"):
        tally = report[fmt]
        assert tally["tried"] == 60
        found = {k: tally[k] for k in ("untyped", "hang", "grown", "lost")}
        assert found == dict.fromkeys(found, 0), (fmt, tally["failures"][:3])
