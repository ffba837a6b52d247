"""VirtualBox VDI: against qemu-img/qemu-io as the oracle, a bytearray model, and crafted files."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model import apply, ops
from oracles import qemu_img, qemu_img_info, qemu_io, qemu_to_raw

import disks
from disks import vdi
from disks.hostfile import HostFile
from emu.img import main as emu_img_main

MiB = 1 << 20
KiB = 1 << 10

# Scattered writes, several crossing 1 MiB block boundaries, one in the short last block.
SCATTERED = [
    (0, 4 * KiB, 0x11),
    (MiB - 512, 1024, 0x22),            # straddles blocks 0 and 1
    (3 * MiB + 12 * KiB, 2 * MiB + 8 * KiB, 0x33),  # covers block 4 whole
    (7 * MiB - 4 * KiB, 8 * KiB, 0x44),
    (9 * MiB + 512 * KiB, 512 * KiB - 512, 0x55),
    (10 * MiB + 100 * KiB, 4 * KiB, 0x66),
]
DISK = 10 * MiB + 256 * KiB               # the eleventh block is short


def expected_bytes(size: int, writes: list[tuple[int, int, int]]) -> bytearray:
    model = bytearray(size)
    for offset, length, fill in writes:
        model[offset:offset + length] = bytes([fill]) * length
    return model


def write_raw(path: Path, data: bytes | bytearray) -> Path:
    path.write_bytes(bytes(data))
    return path


def header_of(path: Path) -> vdi.VdiHeader:
    return vdi.VdiHeader.unpack(path.read_bytes()[:512])


def patch_header(path: Path, **changes: object) -> None:
    from dataclasses import replace
    header = replace(header_of(path), **changes)  # type: ignore[arg-type]
    with open(path, "r+b") as f:
        f.write(header.pack())


def set_map_entry(path: Path, block: int, entry: int) -> None:
    header = header_of(path)
    with open(path, "r+b") as f:
        f.seek(header.offset_bmap + 4 * block)
        f.write(struct.pack("<I", entry))


# --- qemu-img / qemu-io as the oracle ------------------------------------------------

@pytest.mark.parametrize("static", ["off", "on"])
def test_reads_qemu_written_image_like_qemu(tmp_path: Path, static: str) -> None:
    image = tmp_path / "q.vdi"
    qemu_img("create", "-f", "vdi", "-o", f"static={static}", image, str(DISK))
    qemu_io(image, "vdi", *(f"write -P {fill} {off} {length}"
                            for off, length, fill in SCATTERED))
    oracle = qemu_to_raw(image, "vdi", tmp_path / "q.raw")
    with disks.open(image, readonly=True) as img:
        assert disks.probe(image) == "vdi"
        assert img.size == DISK
        assert img.read(0, img.size) == oracle
        assert oracle == expected_bytes(DISK, SCATTERED)
        assert img.check().clean
        kinds = {e.kind for e in img.map()}
    assert disks.RunKind.DATA in kinds
    if static == "off":
        assert disks.RunKind.UNALLOCATED in kinds


@pytest.mark.parametrize("static", [False, True])
def test_emu_written_image_passes_qemu_check_and_compare(tmp_path: Path, static: bool) -> None:
    image = tmp_path / "e.vdi"
    with disks.create(image, "vdi", DISK, static=static) as img:
        for offset, length, fill in SCATTERED:
            img.write(offset, bytes([fill]) * length)
        img.write(8 * MiB, bytes(MiB))            # an all-zero whole block
    expected = write_raw(tmp_path / "expected.raw", expected_bytes(DISK, SCATTERED))
    qemu_img("check", "-f", "vdi", image)
    qemu_img("compare", "-f", "vdi", "-F", "raw", image, expected)
    info = qemu_img_info(image, "vdi")
    assert info["virtual-size"] == DISK
    # qemu-io reads what we wrote
    off, length, fill = SCATTERED[2]
    qemu_io(image, "vdi", f"read -P {fill} {off} {length}")
    if not static:
        with disks.open(image, readonly=True) as img:
            assert img.info()["format-specific"]["data"]["blocks-allocated"] == 9


def test_qemu_reads_emu_image_after_qemu_and_emu_both_write(tmp_path: Path) -> None:
    image = tmp_path / "mix.vdi"
    with disks.create(image, "vdi", "8M") as img:
        img.write(MiB + 100, b"\xaa" * 5000)
    qemu_io(image, "vdi", "write -P 0xbb 2M 1M", "write -P 0xcc 6143k 2k")
    with disks.open(image) as img:
        img.write(6 * MiB, b"\xdd" * 512)
        img.discard(2 * MiB, MiB)
    expected = bytearray(8 * MiB)
    expected[MiB + 100:MiB + 5100] = b"\xaa" * 5000
    expected[6143 * KiB:6145 * KiB] = b"\xcc" * 2048
    expected[6 * MiB:6 * MiB + 512] = b"\xdd" * 512
    qemu_img("check", "-f", "vdi", image)
    qemu_img("compare", "-f", "vdi", "-F", "raw", image,
             write_raw(tmp_path / "x.raw", expected))


def test_create_defaults_match_virtualbox_layout(tmp_path: Path) -> None:
    image = tmp_path / "d.vdi"
    disks.create(image, "vdi", "100M").close()
    header = header_of(image)
    assert image.read_bytes().startswith(b"<<< Oracle VM VirtualBox Disk Image >>>\n")
    assert (header.signature, header.version, header.header_size) == (0xBEDA107F, 0x00010001,
                                                                      400)
    assert header.image_type == 1 and header.block_size == MiB and header.block_extra == 0
    assert header.blocks_in_image == 100 and header.blocks_allocated == 0
    assert header.offset_bmap % MiB == 0 and header.offset_data % MiB == 0
    assert header.uuid_image != bytes(16) and header.uuid_modification != bytes(16)
    assert os.path.getsize(image) == header.offset_data
    disks.create(tmp_path / "s.vdi", "vdi", "3M", static="on").close()
    static = header_of(tmp_path / "s.vdi")
    assert static.image_type == 2 and static.blocks_allocated == 3
    assert os.path.getsize(tmp_path / "s.vdi") == static.offset_data + 3 * MiB
    qemu_img("check", "-f", "vdi", tmp_path / "s.vdi")


def test_zero_whole_block_writes_do_not_allocate(tmp_path: Path) -> None:
    with disks.create(tmp_path / "z.vdi", "vdi", "4M") as img:
        img.write(0, bytes(2 * MiB))
        img.write(2 * MiB + 7, bytes(1000))     # partial zeros over an empty block: no-op too
        assert img.info()["format-specific"]["data"]["blocks-allocated"] == 0
        img.write(3 * MiB, b"x")
        assert img.info()["format-specific"]["data"]["blocks-allocated"] == 1


# --- property test against a bytearray model -----------------------------------------

@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block_size=st.sampled_from([512, 4096, 64 * KiB]), static=st.booleans(),
       sequence=ops(300 * KiB, max_len=80 * KiB))
def test_random_io_matches_model(tmp_path: Path, block_size: int, static: bool,
                                 sequence: list[tuple[str, int, int, int]]) -> None:
    path = tmp_path / "m.vdi"
    size = 300 * KiB + 512
    model = bytearray(size)
    with disks.create(path, "vdi", size, block_size=block_size, static=static) as img:
        apply(img, model, [(v, o, min(n, size - o), f) for v, o, n, f in sequence])
        assert not img.check().corruptions
    with disks.open(path, readonly=True) as img:
        assert img.read(0, size) == bytes(model)
        assert img.check().clean


def test_model_with_one_mib_blocks_and_qemu_check(tmp_path: Path) -> None:
    path = tmp_path / "big.vdi"
    size = 6 * MiB
    model = bytearray(size)
    sequence = [("write", MiB - 10, 2 * MiB + 20, 0x61), ("discard", MiB, MiB, 0),
                ("write", 4 * MiB + 5, 100, 0x62), ("discard", 0, 3 * MiB + 1, 0),
                ("write", 5 * MiB, MiB, 0x63), ("read", 0, size, 0)]
    with disks.create(path, "vdi", size) as img:
        apply(img, model, sequence)
    qemu_img("check", "-f", "vdi", path)
    qemu_img("compare", "-f", "vdi", "-F", "raw", path, write_raw(tmp_path / "m.raw", model))


# --- layouts emu did not write: block_extra, odd offsets, geometry ---------------------

def craft(path: Path, *, size: int, block_size: int, block_extra: int, entries: list[int],
          offset_bmap: int = 512, offset_data: int | None = None, image_type: int = 1,
          geometry: tuple[int, int, int] = (0, 0, 0), fill: bytes = b"") -> vdi.VdiHeader:
    """Write a VDI by hand: blocks in slot order filled with their slot number + 1."""
    blocks = -(-size // block_size)
    if offset_data is None:
        offset_data = offset_bmap + 4 * blocks + 1536   # deliberately not block aligned
    allocated = sum(1 for e in entries if e < vdi.BLOCK_ZERO)
    header = vdi.VdiHeader(
        file_info=b"<<< Sun xVM VirtualBox Disk Image >>>\n", signature=vdi.SIGNATURE,
        version=vdi.VERSION_1_1, header_size=400, image_type=image_type, image_flags=0,
        description=b"crafted", offset_bmap=offset_bmap, offset_data=offset_data,
        cylinders=geometry[0], heads=geometry[1], sectors=geometry[2], sector_size=512,
        unused1=0, disk_size=size, block_size=block_size, block_extra=block_extra,
        blocks_in_image=blocks, blocks_allocated=allocated, uuid_image=os.urandom(16),
        uuid_modification=os.urandom(16), uuid_parent=bytes(16),
        uuid_parent_modification=bytes(16))
    with open(path, "wb") as f:
        f.write(header.pack())
        f.seek(offset_bmap)
        f.write(struct.pack(f"<{blocks}I", *entries))
        for slot in range(allocated):
            f.seek(offset_data + slot * (block_extra + block_size))
            f.write(b"\xee" * block_extra)       # private data: never part of the disk
            f.write(fill or bytes([slot + 1]) * block_size)
    return header


@pytest.mark.parametrize("block_size,block_extra", [(4096, 512), (2 * MiB, 4096), (512, 0)])
def test_reads_block_extra_and_unaligned_data_offset(tmp_path: Path, block_size: int,
                                                     block_extra: int) -> None:
    path = tmp_path / "extra.vdi"
    entries = [1, vdi.BLOCK_FREE, 0, vdi.BLOCK_ZERO, 2]
    size = 5 * block_size
    craft(path, size=size, block_size=block_size, block_extra=block_extra, entries=entries)
    expected = (bytes([2]) * block_size + bytes(block_size) + bytes([1]) * block_size
                + bytes(block_size) + bytes([3]) * block_size)
    with disks.open(path) as img:
        assert img.read(0, size) == expected
        assert img.check().clean
        img.write(block_size - 1, b"\x77\x78")       # crosses into the free block
        img.discard(4 * block_size, block_size)      # the last block: slot 2 released
        expected = bytearray(expected)
        expected[block_size - 1:block_size + 1] = b"\x77\x78"
        expected[4 * block_size:] = bytes(block_size)
        assert img.read(0, size) == expected
        assert img.check().clean
    with disks.open(path, readonly=True) as img:
        assert img.read(0, size) == expected


def test_geometry_comes_from_legacy_chs(tmp_path: Path) -> None:
    path = tmp_path / "g.vdi"
    craft(path, size=MiB, block_size=MiB, block_extra=0, entries=[vdi.BLOCK_FREE],
          geometry=(2, 16, 63))
    with disks.open(path, readonly=True) as img:
        assert img.geometry == disks.Geometry(2, 16, 63)
    disks.create(tmp_path / "n.vdi", "vdi", "1M").close()
    with disks.open(tmp_path / "n.vdi", readonly=True) as img:
        assert img.geometry is None


def test_reads_qemu_384_byte_header(tmp_path: Path) -> None:
    image = tmp_path / "q.vdi"
    qemu_img("create", "-f", "vdi", image, "2M")
    assert header_of(image).header_size == 384
    with disks.open(image) as img:
        img.write(0, b"hello")
    assert header_of(image).header_size == 384
    qemu_io(image, "vdi", "read -P 0x68 0 1")
    qemu_img("check", "-f", "vdi", image)


# --- discard ---------------------------------------------------------------------------

def test_discard_marks_whole_blocks_and_keeps_slots_dense(tmp_path: Path) -> None:
    path = tmp_path / "d.vdi"
    with disks.create(path, "vdi", "4M") as img:
        for block in range(4):
            img.write(block * MiB, bytes([0x10 + block]) * MiB)
        img.discard(MiB - 512, MiB + 1024)  # block 1 whole, edges of blocks 0 and 2 partial
        block_map = list(img.block_map)
        assert block_map[1] == vdi.BLOCK_ZERO
        assert sorted(e for e in block_map if e < vdi.BLOCK_ZERO) == [0, 1, 2]
        assert img.read(MiB - 512, MiB + 1024) == bytes(MiB + 1024)
        assert img.read(3 * MiB, MiB) == b"\x13" * MiB
    header = header_of(path)
    assert header.blocks_allocated == 3
    assert os.path.getsize(path) == header.offset_data + 3 * MiB
    expected = bytearray(b"".join(bytes([0x10 + b]) * MiB for b in range(4)))
    expected[MiB - 512:2 * MiB + 512] = bytes(MiB + 1024)
    qemu_img("check", "-f", "vdi", path)
    qemu_img("compare", "-f", "vdi", "-F", "raw", path, write_raw(tmp_path / "d.raw", expected))


def test_discard_in_static_image_keeps_blocks(tmp_path: Path) -> None:
    path = tmp_path / "s.vdi"
    with disks.create(path, "vdi", "2M", static=True) as img:
        img.write(0, b"\x01" * (2 * MiB))
        img.discard(0, MiB)
        assert img.read(0, MiB) == bytes(MiB)
    assert header_of(path).blocks_allocated == 2
    qemu_img("check", "-f", "vdi", path)


# --- crash-safe allocation order --------------------------------------------------------

class RecordingFile(HostFile):
    """A HostFile that logs every write (offset, length) in order."""

    log: list[tuple[str, int, int]]

    def pwritev(self, buffers, offset):  # type: ignore[no-untyped-def]
        length = sum(len(memoryview(b).cast("B")) for b in buffers)
        self.log.append(("write", offset, length))
        super().pwritev(buffers, offset)

    def sync(self) -> None:
        self.log.append(("sync", 0, 0))
        super().sync()


def test_allocation_writes_data_and_count_then_a_barrier_then_the_map_entry(
        tmp_path: Path) -> None:
    path = tmp_path / "c.vdi"
    disks.create(path, "vdi", "4M").close()
    header = header_of(path)
    with disks.open(path) as img:
        recording = RecordingFile(path, writable=True)
        recording.log = []
        img.file.close()
        img.file = recording
        img.write(2 * MiB + 100, b"\x42" * 200)
        img.flush()                             # map entries wait for the flush
        log = list(recording.log)
    data_at = [i for i, (_, off, _n) in enumerate(log) if off >= header.offset_data]
    map_at = [i for i, (_, off, n) in enumerate(log)
              if off == header.offset_bmap + 4 * 2 and n == 4]
    count_at = [i for i, (_, off, n) in enumerate(log) if off == 0x184 and n == 4]
    syncs = [i for i, (kind, _, _n) in enumerate(log) if kind == "sync"]
    assert data_at and map_at and count_at
    assert max(max(data_at), count_at[0]) < syncs[0] < map_at[0]


def test_crash_between_count_and_map_entry_is_a_leak_trimmed_on_open(tmp_path: Path) -> None:
    path = tmp_path / "c.vdi"
    with disks.create(path, "vdi", "4M") as img:
        img.write(0, b"\x01" * MiB)
    patch_header(path, blocks_allocated=2)  # a reservation whose map entry was lost
    with disks.open(path, readonly=True) as img:
        report = img.check()
        assert not report.corruptions and report.leaks
    assert qemu_img("check", "-f", "vdi", path, check=False).returncode == 2  # qemu: mismatch
    disks.open(path).close()                # a writable open trims the count
    assert header_of(path).blocks_allocated == 1
    qemu_img("check", "-f", "vdi", path)


def test_crash_between_map_entry_and_count_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "c.vdi"
    with disks.create(path, "vdi", "4M") as img:
        img.write(0, b"\x01" * MiB)
        img.write(MiB, b"\x02" * MiB)
    # the state a crash leaves after the map entry of block 1, before the header count
    patch_header(path, blocks_allocated=1)
    with disks.open(path, readonly=True) as img:
        report = img.check()
        assert report.corruptions and "blocks_allocated" in report.corruptions[0]
        assert img.read(MiB, MiB) == b"\x02" * MiB
    assert qemu_img("check", "-f", "vdi", path, check=False).returncode == 2  # qemu agrees
    with disks.open(path) as img:          # a writable open finishes the allocation
        img.write(2 * MiB, b"\x03" * MiB)  # takes a fresh slot, not block 1's
        assert img.read(MiB, MiB) == b"\x02" * MiB
        assert img.check().clean
    qemu_img("check", "-f", "vdi", path)


def test_crash_after_data_before_map_entry_leaks_only(tmp_path: Path) -> None:
    path = tmp_path / "c.vdi"
    disks.create(path, "vdi", "4M").close()
    header = header_of(path)
    with open(path, "r+b") as f:           # an orphan data block with no map entry
        f.seek(header.offset_data)
        f.write(b"\x09" * MiB)
    with disks.open(path, readonly=True) as img:
        report = img.check()
        assert not report.corruptions and report.leaks
        assert img.read(0, 4 * MiB) == bytes(4 * MiB)
    with disks.open(path) as img:
        img.write(MiB, b"\x05" * 10)       # reuses the orphan slot, rewriting all of it
        assert img.read(MiB, MiB) == b"\x05" * 10 + bytes(MiB - 10)
        assert img.check().clean


def test_check_reports_duplicates_and_out_of_range_entries(tmp_path: Path) -> None:
    path = tmp_path / "bad.vdi"
    with disks.create(path, "vdi", "4M", static=True) as img:
        img.write(0, b"\x01" * (4 * MiB))
    set_map_entry(path, 3, 1)                  # slot 1 used twice, slot 3 leaked
    with disks.open(path, readonly=True) as img:
        report = img.check()
    assert any("also used by block 1" in m for m in report.corruptions)
    assert qemu_img("check", "-f", "vdi", path, check=False).returncode == 2
    path2 = tmp_path / "wild.vdi"
    craft(path2, size=4 * 4096, block_size=4096, block_extra=0,
          entries=[0, 1, 2, vdi.BLOCK_FREE])
    with open(path2, "ab") as f:
        f.write(bytes(64 * 4096))
    set_map_entry(path2, 3, 40)                  # inside the file, beyond blocks_in_image
    with disks.open(path2, readonly=True) as img:
        report = img.check()
    assert any("beyond blocks_in_image" in m for m in report.corruptions)


def test_check_repair_fixes_count_and_trailing_leak(tmp_path: Path) -> None:
    path = tmp_path / "r.vdi"
    with disks.create(path, "vdi", "4M") as img:
        img.write(0, b"\x01" * 2 * MiB)
    patch_header(path, blocks_allocated=3)       # one slot counted but never used
    os.truncate(path, os.path.getsize(path) + MiB)  # and space after it
    with disks.open(path, readonly=True) as img:
        report = img.check()
        assert report.leaks and not report.corruptions
    with disks.open(path) as img:                # the open trims the count, repair the file
        report = img.check(repair=True)
        assert report.repaired and report.clean
    assert header_of(path).blocks_allocated == 2
    qemu_img("check", "-f", "vdi", path)


# --- differencing images -------------------------------------------------------------------

def make_parent(path: Path) -> bytearray:
    model = bytearray(5 * MiB)
    with disks.create(path, "vdi", len(model)) as img:
        for offset, length, fill in [(0, 3 * MiB, 0xA0), (3 * MiB + 4096, 8192, 0xA1),
                                     (4 * MiB + 512, 1000, 0xA2)]:
            img.write(offset, bytes([fill]) * length)
            model[offset:offset + length] = bytes([fill]) * length
    return model


def test_child_reads_parent_overlaid_with_child_writes(tmp_path: Path) -> None:
    parent = tmp_path / "base.vdi"
    model = make_parent(parent)
    disks.create(tmp_path / "other.vdi", "vdi", "1M").close()   # a decoy in the folder
    child = tmp_path / "snap.vdi"
    with disks.create(child, "vdi", backing=parent) as img:
        assert img.size == len(model)
        for verb, offset, length, fill in [("write", MiB - 100, 200, 0xC0),
                                           ("write", 2 * MiB, MiB, 0),        # hides parent
                                           ("discard", 0, 4096, 0),
                                           ("write", 3 * MiB + 4000, 300, 0xC1)]:
            if verb == "write":
                img.write(offset, bytes([fill]) * length)
            else:
                img.discard(offset, length)
            model[offset:offset + length] = bytes([fill]) * length
        assert img.read(0, len(model)) == model
    child_header, parent_header = header_of(child), header_of(parent)
    assert child_header.image_type == 4
    assert child_header.uuid_parent == parent_header.uuid_image
    assert child_header.uuid_parent_modification == parent_header.uuid_modification
    with disks.open(child, readonly=True) as img:   # parent found by UUID among .vdi files
        assert img.backing is not None and Path(img.backing.path).name == "base.vdi"
        assert img.read(0, len(model)) == model
        assert img.info()["backing-filename"].endswith("base.vdi")
        depths = {e.depth for e in img.map()}
        assert depths == {0, 1}
        assert img.check().clean


def test_missing_parent_is_an_error_not_zeros(tmp_path: Path) -> None:
    parent = tmp_path / "base.vdi"
    make_parent(parent)
    child = tmp_path / "snap.vdi"
    disks.create(child, "vdi", backing=parent).close()
    parent.rename(tmp_path / "base.moved")
    with pytest.raises(disks.MissingBackingError) as caught:
        disks.open(child, readonly=True)
    assert str(child) in str(caught.value)
    # an explicit backing path works again
    with disks.open(child, readonly=True, backing=tmp_path / "base.moved") as img:
        assert img.read(0, 1) == b"\xa0"


def test_wrong_explicit_parent_is_refused(tmp_path: Path) -> None:
    parent = tmp_path / "base.vdi"
    make_parent(parent)
    child = tmp_path / "snap.vdi"
    disks.create(child, "vdi", backing=parent).close()
    stranger = tmp_path / "stranger.vdi"
    disks.create(stranger, "vdi", "4M").close()
    with pytest.raises(disks.BackingChainError, match="UUID"):
        disks.open(child, readonly=True, backing=stranger)


def test_parent_cycle_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.vdi", tmp_path / "b.vdi"
    disks.create(a, "vdi", "1M").close()
    disks.create(b, "vdi", backing=a).close()
    patch_header(a, image_type=4, uuid_parent=header_of(b).uuid_image)
    with pytest.raises(disks.BackingChainError, match="loop"):
        disks.open(b, readonly=True)


def test_emu_img_create_with_backing(tmp_path: Path) -> None:
    parent = tmp_path / "base.vdi"
    model = make_parent(parent)
    child = tmp_path / "child.vdi"
    proc = run_emu_img("create", "-f", "vdi", "-b", str(parent), str(child))
    assert proc.returncode == 0, proc.stderr
    proc = run_emu_img("compare", str(child), str(write_raw(tmp_path / "p.raw", model)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run_emu_img("convert", "-O", "raw", str(child), str(tmp_path / "flat.raw"))
    assert proc.returncode == 0 and (tmp_path / "flat.raw").read_bytes() == model


# --- hostile input ------------------------------------------------------------------------

def run_emu_img(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emu", "img", *args], capture_output=True,
                          text=True, timeout=120)


def good_image(tmp_path: Path) -> Path:
    path = tmp_path / "victim.vdi"
    with disks.create(path, "vdi", "4M") as img:
        img.write(0, b"\x01" * MiB)
    return path


BAD_HEADERS = {
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:300]), disks.CorruptImageError,
                  "header"),
    "bad signature": (lambda p: patch_header(p, signature=0x12345678), disks.CorruptImageError,
                      "signature"),
    "version 2.0": (lambda p: patch_header(p, version=0x00020000), disks.UnsupportedImageError,
                    "version"),
    "undo image": (lambda p: patch_header(p, image_type=3), disks.UnsupportedImageError,
                   "image_type"),
    "block size 3000": (lambda p: patch_header(p, block_size=3000), disks.CorruptImageError,
                        "block_size"),
    "huge blocks_in_image": (lambda p: patch_header(p, blocks_in_image=0x3FFFFFF0,
                                                    disk_size=1 << 40),
                             disks.CorruptImageError, "blocks_in_image"),
    "too many blocks": (lambda p: patch_header(p, blocks_in_image=0xFFFFFFF0),
                        disks.CorruptImageError, "blocks_in_image"),
    "disk beyond blocks": (lambda p: patch_header(p, disk_size=1 << 50),
                           disks.CorruptImageError, "disk_size"),
    "data over map": (lambda p: patch_header(p, offset_data=600), disks.CorruptImageError,
                      "offset_data"),
    "allocated > blocks": (lambda p: patch_header(p, blocks_allocated=99),
                           disks.CorruptImageError, "blocks_allocated"),
    "entry past EOF": (lambda p: set_map_entry(p, 2, 1000), disks.CorruptImageError,
                       "block_map[2]"),
    "sector size 4096": (lambda p: patch_header(p, sector_size=4096),
                         disks.UnsupportedImageError, "sector_size"),
}


@pytest.mark.parametrize("case", sorted(BAD_HEADERS))
def test_bad_input_gives_typed_error_and_one_cli_line(tmp_path: Path, case: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    damage, error, field = BAD_HEADERS[case]
    path = good_image(tmp_path)
    damage(path)
    with pytest.raises(error) as caught:
        disks.open(path, format="vdi", readonly=True)
    assert caught.value.field == field or field in str(caught.value)
    assert str(path) in str(caught.value)
    for verb in ("info", "check", "map", "convert"):
        extra = [str(tmp_path / "out.raw")] if verb == "convert" else []
        assert emu_img_main([verb, "-f", "vdi", str(path), *extra]) == 1  # raises nothing
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and err.startswith("emu img: "), err
    proc = run_emu_img("info", "-f", "vdi", str(path))   # and as a process: no traceback
    assert proc.returncode == 1 and "Traceback" not in proc.stderr


def test_probe_and_variants_of_pre_header(tmp_path: Path) -> None:
    path = tmp_path / "v.vdi"
    craft(path, size=4096, block_size=4096, block_extra=0, entries=[vdi.BLOCK_FREE])
    assert disks.probe(path) == "vdi"
    assert disks.probe(good_image(tmp_path)) == "vdi"
    plain = tmp_path / "plain.img"
    plain.write_bytes(bytes(4096))
    assert disks.probe(plain) == "raw"


def test_second_writer_is_locked_out(tmp_path: Path) -> None:
    path = good_image(tmp_path)
    with disks.open(path):
        with pytest.raises(disks.ImageLockedError):
            disks.open(path)
        with disks.open(path, readonly=True, force_share=True) as reader:
            assert reader.read(0, 1) == b"\x01"


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(st.tuples(st.integers(0, 0x1D7), st.integers(0, 255)),
                          min_size=1, max_size=8),
       map_entries=st.lists(st.sampled_from([0, 1, 2, 3, 7, 0x7FFFFFFF, vdi.BLOCK_ZERO,
                                             vdi.BLOCK_FREE]), min_size=4, max_size=4))
def test_garbled_headers_give_only_typed_errors(tmp_path: Path, mutations: list[tuple[int, int]],
                                                map_entries: list[int]) -> None:
    path = tmp_path / "fuzz.vdi"
    craft(path, size=4 * 4096, block_size=4096, block_extra=0,
          entries=[0, 1, vdi.BLOCK_FREE, 2])
    raw = bytearray(path.read_bytes())
    for at, value in mutations:
        raw[at] = value
    raw[512:528] = struct.pack("<4I", *map_entries)
    path.write_bytes(bytes(raw))
    try:
        with disks.open(path, format="vdi") as img:
            assert img.size <= 1 << 62
            length = min(img.size, 1 << 20)
            img.read(0, length)
            img.check()
            img.info()
            if length:
                img.write(0, b"\x01" * min(length, 5000))
                img.discard(0, length)
    except disks.ImageError:
        pass


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(block_size=st.sampled_from([4096, 64 * KiB]),
       parent_ops=ops(200 * KiB, max_len=60 * KiB), child_ops=ops(200 * KiB, max_len=60 * KiB))
def test_differencing_random_io_matches_model(tmp_path: Path, block_size: int,
                                              parent_ops: list[tuple[str, int, int, int]],
                                              child_ops: list[tuple[str, int, int, int]]) -> None:
    for old in tmp_path.glob("*.vdi"):
        old.unlink()
    size = 200 * KiB
    model = bytearray(size)
    parent, child = tmp_path / "parent.vdi", tmp_path / "child.vdi"
    with disks.create(parent, "vdi", size, block_size=block_size) as img:
        apply(img, model, parent_ops)
    parent_bytes = bytes(model)
    with disks.create(child, "vdi", backing=parent, block_size=block_size // 2) as img:
        apply(img, model, child_ops)        # reads, writes, discards over the parent
        assert not img.check().corruptions
    with disks.open(child, readonly=True) as img:
        assert img.read(0, size) == bytes(model)
    with disks.open(parent, readonly=True) as img:
        assert img.read(0, size) == parent_bytes   # the parent is never written
