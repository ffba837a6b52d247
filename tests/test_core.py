"""The disk layer's core: registry, option parsing, range checks, locking, coalescing,
backing chains, map(), the host file and the in-kernel copy path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import disks
from disks import image as core
from disks import registry
from disks.hostfile import HostFile, is_zero, zero_fill

MiB = 1 << 20


# --- option and size parsing -------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    (512, 512), ("512", 512), ("64K", 64 << 10), ("1M", MiB), ("2G", 2 << 30),
    ("1T", 1 << 40), ("1.5G", 3 << 29), ("10b", 10), ("0", 0),
])
def test_parse_size(text: object, value: int) -> None:
    assert core.parse_size(text) == value


@pytest.mark.parametrize("text", ["", "x", "1Q", "-1", "1.3", True, -5])
def test_parse_size_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        core.parse_size(text)


def test_parse_bool_and_choice() -> None:
    assert core.parse_bool("on") is True and core.parse_bool("off") is False
    assert core.parse_bool(True) is True
    with pytest.raises(ValueError):
        core.parse_bool("maybe")
    pick = core.choice("fixed", "dynamic")
    assert pick("fixed") == "fixed"
    with pytest.raises(ValueError):
        pick("other")


# --- registry -------------------------------------------------------------------------------

def test_registry_names_and_aliases() -> None:
    assert {"raw", "vdi"} <= set(disks.formats())
    assert disks.driver_for("raw").format_name == "raw"
    with pytest.raises(disks.UnknownFormatError) as caught:
        disks.driver_for("qcow7")
    assert caught.value.field == "format"


def test_create_rejects_unknown_options_and_missing_size(tmp_path: Path) -> None:
    with pytest.raises(disks.InvalidOptionError) as caught:
        disks.create(tmp_path / "a.vdi", "vdi", "1M", colour="blue")
    assert caught.value.field == "colour" and "known:" in str(caught.value)
    with pytest.raises(disks.InvalidOptionError) as caught:
        disks.create(tmp_path / "a.vdi", "vdi", "1M", static="perhaps")
    assert caught.value.field == "static"
    with pytest.raises(disks.InvalidOptionError):
        disks.create(tmp_path / "b.vdi", "vdi")
    with pytest.raises(disks.InvalidOptionError):
        disks.create(tmp_path / "c.raw", "raw", "lots")
    with pytest.raises(disks.InvalidOptionError):
        disks.create(tmp_path / "d.raw", "raw", "1M", backing=tmp_path / "x")


def test_errors_name_the_file_and_field(tmp_path: Path) -> None:
    error = disks.CorruptImageError(tmp_path / "f.vdi", "is wrong", field="block_size")
    assert str(error) == f"{tmp_path / 'f.vdi'}: block_size: is wrong"
    assert isinstance(error, disks.ImageError)
    assert issubclass(disks.MissingBackingError, disks.BackingChainError)


def test_open_missing_file_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(disks.ImageIOError):
        disks.open(tmp_path / "nothing.vdi")


# --- ranges, read-only, closed --------------------------------------------------------------

def test_range_and_mode_checks(tmp_path: Path) -> None:
    with disks.create(tmp_path / "r.raw", "raw", 4096) as img:
        with pytest.raises(disks.OutOfRangeError):
            img.read(4000, 200)
        with pytest.raises(disks.OutOfRangeError):
            img.write(-1, b"x")
        assert img.read(4096, 0) == b""
    with disks.open(tmp_path / "r.raw", readonly=True) as img:
        with pytest.raises(disks.ReadOnlyImageError):
            img.write(0, b"x")
        with pytest.raises(disks.ReadOnlyImageError):
            img.discard(0, 512)
        with pytest.raises(disks.ReadOnlyImageError):
            img.check(repair=True)
    with pytest.raises(disks.ImageError, match="closed"):
        img.read(0, 1)


def test_readinto_fills_caller_buffer(tmp_path: Path) -> None:
    with disks.create(tmp_path / "v.vdi", "vdi", "3M") as img:
        img.write(MiB - 3, b"abcdef")
        buffer = bytearray(10)
        assert img.readinto(MiB - 5, memoryview(buffer)) == 10
        assert bytes(buffer) == b"\0\0abcdef\0\0"


# --- locking ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["raw", "vdi"])
def test_second_writer_gets_locked_error(tmp_path: Path, fmt: str) -> None:
    path = tmp_path / f"l.{fmt}"
    with disks.create(path, fmt, "1M"):
        with pytest.raises(disks.ImageLockedError, match="in use"):
            disks.open(path)
        with pytest.raises(disks.ImageLockedError):
            disks.create(path, fmt, "1M")
        with pytest.raises(disks.ImageLockedError):   # a reader refuses a writer's image
            disks.open(path, readonly=True)
        with disks.open(path, readonly=True, force_share=True):
            pass
    with disks.open(path):  # released on close
        pass


# --- coalescing: one system call for a contiguous stretch -------------------------------------

class CountingFile(HostFile):
    """A HostFile that counts positional reads and writes (the syscalls the core makes)."""

    reads = 0
    writes = 0

    def preadinto(self, view, offset, *, zero_past_eof=True):  # type: ignore[no-untyped-def]
        self.reads += 1
        return super().preadinto(view, offset, zero_past_eof=zero_past_eof)

    def pwritev(self, buffers, offset):  # type: ignore[no-untyped-def]
        self.writes += 1
        super().pwritev(buffers, offset)


def counting(img: disks.Image) -> CountingFile:
    counter = CountingFile(img.path, writable=not img.readonly)
    img.file.close()
    img.file = counter
    return counter


def test_read_over_contiguous_vdi_blocks_is_one_preadv(tmp_path: Path) -> None:
    path = tmp_path / "c.vdi"
    with disks.create(path, "vdi", "16M", block_size="64K") as img:
        img.write(0, b"\x01" * (16 * MiB))    # 256 blocks in slot order
    with disks.open(path) as img:
        counter = counting(img)
        assert img.read(12345, 10 * MiB) == b"\x01" * (10 * MiB)
        assert counter.reads == 1
        img.write(777, b"\x02" * (8 * MiB))   # over allocated blocks: one pwritev too
        assert counter.writes == 1


def test_read_over_scattered_vdi_blocks_coalesces_runs(tmp_path: Path) -> None:
    path = tmp_path / "s.vdi"
    with disks.create(path, "vdi", "8M") as img:
        for block in (0, 1, 2, 5, 6, 7):      # two stretches of contiguous slots
            img.write(block * MiB, bytes([block + 1]) * MiB)
    with disks.open(path, readonly=True) as img:
        counter = counting(img)
        data = img.read(0, 8 * MiB)
        assert counter.reads == 2
        assert data[3 * MiB:5 * MiB] == bytes(2 * MiB)


def test_raw_read_is_one_preadv(tmp_path: Path) -> None:
    path = tmp_path / "r.raw"
    disks.create(path, "raw", "8M").close()
    with disks.open(path, readonly=True) as img:
        counter = counting(img)
        img.read(1, 8 * MiB - 2)
        assert counter.reads == 1


# --- backing chains ----------------------------------------------------------------------------

def chain(tmp_path: Path, length: int) -> list[Path]:
    paths = [tmp_path / "layer0.vdi"]
    with disks.create(paths[0], "vdi", "4M") as img:
        img.write(0, b"\x10" * 4096)
    for n in range(1, length):
        paths.append(tmp_path / f"layer{n}.vdi")
        with disks.create(paths[n], "vdi", backing=paths[n - 1]) as img:
            img.write(n * MiB, bytes([0x10 + n]) * 4096)  # one block per layer
    return paths


def test_chain_reads_fall_through_and_map_reports_depth(tmp_path: Path) -> None:
    paths = chain(tmp_path, 4)
    with disks.open(paths[-1], readonly=True) as img:
        assert [Path(node.path).name for node in img.chain()] == \
            ["layer3.vdi", "layer2.vdi", "layer1.vdi", "layer0.vdi"]
        for n in range(4):
            assert img.read(n * MiB, 4096) == bytes([0x10 + n]) * 4096
        extents = list(img.map())
        assert sum(e.length for e in extents) == img.size
        assert [e.depth for e in extents if e.kind is disks.RunKind.DATA] == [3, 2, 1, 0]
        ends = [e.offset + e.length for e in extents]
        assert [e.offset for e in extents[1:]] == ends[:-1]


def test_over_deep_chain_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = chain(tmp_path, 4)
    monkeypatch.setattr(registry, "MAX_CHAIN_DEPTH", 2)
    with pytest.raises(disks.BackingChainError, match="deeper"):
        disks.open(paths[-1], readonly=True)
    with disks.open(paths[1], readonly=True):
        pass


def test_explicit_backing_that_loops_is_refused(tmp_path: Path) -> None:
    paths = chain(tmp_path, 2)
    with pytest.raises(disks.BackingChainError, match="loop"):
        disks.open(paths[1], readonly=True, backing=paths[1])


def test_parent_smaller_than_child_reads_zeros_beyond(tmp_path: Path) -> None:
    parent = tmp_path / "p.vdi"
    with disks.create(parent, "vdi", "1M") as img:
        img.write(0, b"\x07" * MiB)
    child = tmp_path / "c.vdi"
    disks.create(child, "vdi", "3M", backing=parent).close()
    with disks.open(child, readonly=True) as img:
        assert img.read(MiB - 1, 2) == b"\x07\x00"
        zero_tail = [e for e in img.map() if e.offset >= MiB]
        assert all(e.kind is not disks.RunKind.DATA for e in zero_tail)


# --- host file ------------------------------------------------------------------------------

def test_is_zero_and_zero_fill() -> None:
    assert is_zero(bytes(3 * MiB)) and is_zero(b"")
    assert not is_zero(bytes(2 * MiB) + b"\x01")
    buffer = bytearray(b"\xff" * (MiB + 7))
    zero_fill(memoryview(buffer))
    assert buffer == bytes(MiB + 7)


def test_hostfile_reads_past_eof_as_zeros_and_copies_ranges(tmp_path: Path) -> None:
    source = HostFile(tmp_path / "s", writable=True, create=True)
    target = HostFile(tmp_path / "t", writable=True, create=True)
    try:
        source.pwrite(b"0123456789", 0)
        buffer = bytearray(b"x" * 16)
        assert source.preadinto(memoryview(buffer), 4) == 6
        assert bytes(buffer) == b"456789" + bytes(10)
        target.copy_range(source, 2, 12, 100)      # 4 bytes past the source's end
        assert target.pread(12, 100) == b"23456789" + bytes(4)
        with source.mapped(0, 10) as mapping:
            assert mapping is not None
            region, base = mapping
            assert region[base:base + 10] == b"0123456789"
        with source.mapped(5, 10) as mapping:
            assert mapping is None               # would reach past the end of the file
    finally:
        source.close()
        target.close()


@pytest.mark.parametrize("fmt", ["raw", "vdi"])
def test_copy_from_host_equals_write(tmp_path: Path, fmt: str) -> None:
    payload = os.urandom(5 * MiB)
    source_path = tmp_path / "payload"
    source_path.write_bytes(payload)
    source = HostFile(source_path, writable=False)
    try:
        with disks.create(tmp_path / f"a.{fmt}", fmt, "8M") as by_copy, \
                disks.create(tmp_path / f"b.{fmt}", fmt, "8M") as by_write:
            for offset, length, at in [(0, MiB, 0), (MiB + 100, 1000, 7),
                                       (2 * MiB, 3 * MiB, MiB), (6 * MiB - 10, 20, 3)]:
                by_copy.copy_from_host(offset, length, source, at)
                by_write.write(offset, payload[at:at + length])
            assert by_copy.read(0, 8 * MiB) == by_write.read(0, 8 * MiB)
            assert not by_copy.check().corruptions
    finally:
        source.close()


def test_host_range(tmp_path: Path) -> None:
    with disks.create(tmp_path / "h.vdi", "vdi", "4M") as img:
        img.write(0, b"\x01" * (2 * MiB))
        img.write(3 * MiB, b"\x01" * MiB)
        start = img.host_range(0, 2 * MiB)
        assert start is not None and img.host_range(100, 10) == start + 100
        assert img.host_range(MiB, 2 * MiB) is None   # reaches an unallocated block
        assert img.host_range(MiB, MiB + 1) is None


def test_check_report_and_info_basics(tmp_path: Path) -> None:
    report = core.CheckReport("f", "raw")
    assert report.clean
    report.leak("l")
    assert not report.clean and report.leaks == ["l"]
    with disks.create(tmp_path / "i.vdi", "vdi", "2M") as img:
        facts = img.info()
    assert facts["format"] == "vdi" and facts["virtual-size"] == 2 * MiB
    assert facts["cluster-size"] == MiB
    assert facts["format-specific"]["type"] == "vdi"


def test_flush_without_sync_still_writes_metadata(tmp_path: Path) -> None:
    path = tmp_path / "f.vdi"
    img = disks.create(path, "vdi", "2M")
    img.write(0, b"\x05" * 10)
    img.close(sync=False)
    with disks.open(path, readonly=True) as again:
        assert again.read(0, 10) == b"\x05" * 10


def test_long_copy_range_is_split_and_complete(tmp_path: Path) -> None:
    payload = os.urandom(5 * MiB + 123)
    (tmp_path / "s").write_bytes(payload)
    source = HostFile(tmp_path / "s", writable=False)
    target = HostFile(tmp_path / "t", writable=True, create=True)
    try:
        target.copy_range(source, 7, len(payload) - 7 + 5000, 11)   # runs 5000 past the end
        assert target.pread(len(payload) + 5000, 11) == payload[7:] + bytes(5000)
    finally:
        source.close()
        target.close()


def test_drivers_load_on_first_use(tmp_path: Path) -> None:
    script = (
        "import sys, disks\n"
        "assert not [m for m in ('disks.vdi', 'disks.vmdk') if m in sys.modules]\n"
        f"disks.create({str(tmp_path / 'x.vdi')!r}, 'vdi', '1M').close()\n"
        "assert 'disks.vdi' in sys.modules and 'disks.vmdk' not in sys.modules\n"
        "assert disks.driver_for('vhd').format_name == 'vpc'\n"
        f"assert disks.probe({str(tmp_path / 'x.vdi')!r}) == 'vdi'\n"
        "assert 'disks.vmdk' in sys.modules and disks.vmdk.__name__ == 'disks.vmdk'\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
