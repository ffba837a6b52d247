"""The VHDX driver against qemu-img/qemu-io, libvhdi, QEMU's dirty-log sample, crash cuts
and a bytearray model."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model import apply, ops
from oracles import qemu_img, qemu_io, qemu_to_raw

import disks
from disks import vhdx
from disks.hostfile import HostFile

MiB = 1 << 20
GiB = 1 << 30


def pattern(seed: int, length: int) -> bytes:
    """Bytes that differ at every offset, so misplaced data shows."""
    unit = bytes((seed * 7 + i * 13) & 0xFF for i in range(251))
    return (unit * (length // len(unit) + 1))[:length]


def read_all(path: Path) -> bytes:
    with disks.open(path, readonly=True) as image:
        return image.read(0, image.size)


# --- qemu as the oracle ---------------------------------------------------------

QEMU_WRITES = [(0, 4096, 0x11), (1 * MiB - 512, 1024, 0x22), (3 * MiB + 12345 - 345, 70000, 0x33),
               (9 * MiB, 2 * MiB, 0x44), (40 * MiB - 4096, 8192, 0x55), (63 * MiB, MiB, 0x66)]


@pytest.mark.parametrize("subformat", ["dynamic", "fixed"])
@pytest.mark.parametrize("block_size", ["1M", "8M", "32M"])
def test_qemu_created_images_read_identically(tmp_path: Path, subformat: str,
                                              block_size: str) -> None:
    path = tmp_path / "q.vhdx"
    qemu_img("create", "-f", "vhdx", "-o", f"subformat={subformat},block_size={block_size}",
             path, "64M")
    qemu_io(path, "vhdx", *(f"write -P {fill} {off} {length}" for off, length, fill in QEMU_WRITES))
    expected = qemu_to_raw(path, "vhdx", tmp_path / "q.raw")
    assert read_all(path) == expected
    # and our writes to qemu's image stay readable by qemu
    with disks.open(path) as image:
        image.write(5 * MiB + 100, pattern(1, 3 * MiB))
        image.write(64 * MiB - 700, pattern(2, 700))
    qemu_img("check", path)
    mine = bytearray(expected)
    mine[5 * MiB + 100:8 * MiB + 100] = pattern(1, 3 * MiB)
    mine[64 * MiB - 700:] = pattern(2, 700)
    assert qemu_to_raw(path, "vhdx", tmp_path / "q2.raw") == bytes(mine)


@pytest.mark.parametrize("options", [
    {}, {"block_size": "1M"}, {"block_size": "256M"}, {"subformat": "fixed", "block_size": "2M"},
    {"log_size": "4M", "block_size": "1M"}, {"physical_sector_size": 512},
])
def test_our_images_pass_qemu_check_and_compare(tmp_path: Path, options: dict) -> None:
    path = tmp_path / "ours.vhdx"
    size = 48 * MiB
    model = bytearray(size)
    with disks.create(path, "vhdx", size, **options) as image:
        for i, (offset, length) in enumerate([(0, 512), (MiB - 100, 300), (7 * MiB, 5 * MiB),
                                              (31 * MiB + 4097, 70000), (size - 4096, 4096)]):
            data = pattern(i, length)
            image.write(offset, data)
            model[offset:offset + length] = data
    (tmp_path / "model.raw").write_bytes(model)
    qemu_img("check", path)
    compare = qemu_img("compare", "-f", "vhdx", "-F", "raw", path, tmp_path / "model.raw")
    assert compare.returncode == 0
    info = json.loads(qemu_img("info", "--output", "json", path).stdout)
    assert info["virtual-size"] == size
    assert read_all(path) == bytes(model)


def test_fixed_is_preallocated_and_fully_present(tmp_path: Path) -> None:
    path = tmp_path / "fixed.vhdx"
    with disks.create(path, "vhdx", 8 * MiB, subformat="fixed", block_size="1M") as image:
        assert isinstance(image, vhdx.VhdxImage)
        states = {image.bat[image._payload_index(b)] & 7 for b in range(8)}
        assert states == {vhdx.PAYLOAD_BLOCK_FULLY_PRESENT}
        assert image.info()["format-specific"]["data"]["subformat"] == "fixed"
    assert os.stat(path).st_blocks * 512 >= 8 * MiB  # the payload is really on disk


# --- libvhdi as the independent reader ------------------------------------------

LIBVHDI_READ = r"""
import sys, pyvhdi
image = pyvhdi.file()
image.open(sys.argv[1])
if len(sys.argv) > 3:
    parent = pyvhdi.file()
    parent.open(sys.argv[3])
    image.set_parent(parent)
with open(sys.argv[2], "wb") as out:
    out.write(image.read_buffer_at_offset(image.media_size, 0))
"""


def libvhdi_read(tmp_path: Path, path: Path, parent: Path | None = None) -> bytes:
    python = shutil.which("python3", path="/usr/bin") or "/usr/bin/python3"
    probe = subprocess.run([python, "-c", "import pyvhdi"], capture_output=True)
    if probe.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("pyvhdi (Debian python3-libvhdi) is not installed")
        pytest.skip("pyvhdi (Debian python3-libvhdi) is not installed")
    out = tmp_path / (path.name + ".libvhdi.raw")
    argv = [python, "-c", LIBVHDI_READ, str(path), str(out)] + ([str(parent)] if parent else [])
    subprocess.run(argv, check=True, capture_output=True, timeout=300)
    return out.read_bytes()


@pytest.mark.parametrize("options", [
    {"block_size": "1M"}, {"subformat": "fixed", "block_size": "1M"}, {},
    # qemu refuses 4096-byte logical sectors, so libvhdi is the oracle for them
    {"logical_sector_size": 4096, "block_size": "4M"},
])
def test_libvhdi_reads_dynamic_and_fixed(tmp_path: Path, options: dict) -> None:
    path = tmp_path / "l.vhdx"
    with disks.create(path, "vhdx", 24 * MiB, **options) as image:
        image.write(MiB - 10, pattern(3, 2 * MiB + 20))
        image.write(20 * MiB + 7, pattern(4, 1000))
        image.write(5 * MiB, pattern(5, 8 * MiB))
        image.discard(6 * MiB, 4 * MiB)  # whole blocks UNMAPPED (dynamic), zeros (fixed)
    ours = read_all(path)
    assert ours[6 * MiB:10 * MiB] == bytes(4 * MiB) and ours[5 * MiB:6 * MiB] != bytes(MiB)
    assert libvhdi_read(tmp_path, path) == ours


@pytest.mark.parametrize("sector", [512, 4096])
def test_libvhdi_reads_differencing(tmp_path: Path, sector: int) -> None:
    parent = tmp_path / "parent.vhdx"
    child = tmp_path / "child.vhdx"
    with disks.create(parent, "vhdx", 24 * MiB, block_size="1M",
                      logical_sector_size=sector) as image:
        image.write(0, pattern(5, 24 * MiB))
    with disks.create(child, "vhdx", backing=parent, block_size="2M") as image:
        image.write(1000, pattern(6, 5000))             # partial sectors, parent fills the rest
        image.write(3 * MiB + 512, pattern(7, 1536))     # sector-aligned, inside a block
        image.write(6 * MiB, pattern(8, 2 * MiB))        # a whole block
        image.write(23 * MiB + 1, pattern(9, 10))
    ours = read_all(child)
    expected = bytearray(pattern(5, 24 * MiB))
    for offset, data in [(1000, pattern(6, 5000)), (3 * MiB + 512, pattern(7, 1536)),
                         (6 * MiB, pattern(8, 2 * MiB)), (23 * MiB + 1, pattern(9, 10))]:
        expected[offset:offset + len(data)] = data
    assert ours == bytes(expected)
    assert libvhdi_read(tmp_path, child, parent) == ours


# --- QEMU's dirty-log sample ------------------------------------------------------

def test_dirty_log_replayed_in_memory_without_touching_the_file(sample) -> None:
    path = sample("iotest-dirtylog-10G-4M.vhdx")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    with disks.open(path, readonly=True) as image:
        assert image.size == 10 * GiB
        assert image.read(0, 18 * MiB) == b"\xa5" * (18 * MiB)
        assert image.info()["format-specific"]["data"]["log-dirty"] is True
        report = image.check()
        assert report.clean and "not yet replayed" in report.notes[0]   # a state, no damage
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_dirty_log_replayed_on_disk(sample) -> None:
    path = sample("iotest-dirtylog-10G-4M.vhdx")
    with disks.open(path) as image:
        assert image.read(0, 18 * MiB) == b"\xa5" * (18 * MiB)
        report = image.check(repair=True)
        assert report.repaired and not report.corruptions
    with disks.open(path, readonly=True) as image:
        assert image.info()["format-specific"]["data"]["log-dirty"] is False
        assert image.read(0, 18 * MiB) == b"\xa5" * (18 * MiB)
        assert image.check().clean
    qemu_img("check", path)
    assert "18 MiB" in qemu_io(path, "vhdx", "read -P 0xa5 0 18M")


def test_emu_img_check_repair_replays_the_log(sample) -> None:
    path = sample("iotest-dirtylog-10G-4M.vhdx")
    run = [sys.executable, "-m", "emu", "img", "check"]
    plain = subprocess.run([*run, str(path)], capture_output=True, text=True)
    assert plain.returncode == 0 and "Note: the log holds 1 entries" in plain.stdout
    fixed = subprocess.run([*run, "-r", "all", str(path)], capture_output=True, text=True)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "replayed" in fixed.stdout
    assert subprocess.run([*run, str(path)], capture_output=True).returncode == 0


# --- crash safety -------------------------------------------------------------------

class RecordingFile(HostFile):
    """A HostFile that logs every write, resize and fsync of one image file."""

    journal: list[tuple] = []
    target = ""

    def _record(self, *op: object) -> None:
        if os.path.abspath(self.path) == RecordingFile.target:
            RecordingFile.journal.append(op)

    def pwritev(self, buffers, offset: int) -> None:  # type: ignore[no-untyped-def]
        self._record("write", offset, b"".join(bytes(memoryview(b).cast("B")) for b in buffers))
        super().pwritev(buffers, offset)

    def truncate(self, size: int) -> None:
        self._record("truncate", size)
        super().truncate(size)

    def sync(self) -> None:
        self._record("sync")
        super().sync()


def replay_prefix(base: bytes, journal: list[tuple], count: int, out: Path) -> None:
    """The file as a crash after the first ``count`` recorded calls leaves it."""
    out.write_bytes(base)
    with open(out, "r+b") as f:
        for op in journal[:count]:
            if op[0] == "write":
                f.seek(op[1])
                f.write(op[2])
            elif op[0] == "truncate":
                f.truncate(op[1])


# (offset, length, fill): fill None writes a pattern, 0 discards
CRASH_OPS = [(100, 3000, None), (2 * MiB - 512, 4096, None), (5 * MiB, MiB, None),
             (12 * MiB + 1, 200, None), (700, 100, None), (9 * MiB, 512, None),
             (5 * MiB - 4096, 2 * MiB + 8192, 0), (5 * MiB + 4096, 4096, None)]


def run_crash_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, image_path: Path,
                   below: bytes, *, qemu_checks: bool = False) -> None:
    """Write, flushing after every other write; cut the op stream after every call.

    Each cut must open (replaying the log), pass check, and read, over every written
    range, the content of some state at or after the last completed flush.
    """
    base = image_path.read_bytes()
    RecordingFile.journal = []
    RecordingFile.target = os.path.abspath(image_path)
    monkeypatch.setattr(disks.registry, "HostFile", RecordingFile)
    states = [bytes(below)]                # the model after each write
    acked: list[tuple[int, int]] = []      # (journal length when a flush returned, state)
    model = bytearray(below)
    with disks.open(image_path) as image:
        for i, (offset, length, fill) in enumerate(CRASH_OPS):
            data = pattern(20 + i, length) if fill is None else bytes(length)
            if fill is None:
                image.write(offset, data)
            else:
                image.discard(offset, length)
            model[offset:offset + length] = data
            states.append(bytes(model))
            if i % 2:
                image.flush()
                acked.append((len(RecordingFile.journal), len(states) - 1))
    acked.append((len(RecordingFile.journal), len(states) - 1))  # close() flushes
    monkeypatch.undo()
    journal = RecordingFile.journal
    assert any(op[0] == "sync" for op in journal)
    cut = tmp_path / ("cut-" + image_path.name)
    with disks.open(image_path, readonly=True) as image:
        assert isinstance(image, vhdx.VhdxImage)
        log_start = image.header.log_offset
        log_end = log_start + image.header.log_length
    # cut after every call, and also in the middle of every log and header write
    cuts: list[tuple[int, list[tuple]]] = [(count, journal) for count in range(len(journal) + 1)]
    for index, op in enumerate(journal):
        if op[0] == "write" and (log_start <= op[1] < log_end or op[1] in vhdx.HEADER_OFFSETS):
            torn = [*journal[:index], ("write", op[1], op[2][:len(op[2]) // 2 + 1])]
            cuts.append((index, torn))
    replayed_checked = 0
    for count, ops_done in cuts:
        replay_prefix(base, ops_done, count if ops_done is journal else len(ops_done), cut)
        qemu_replayed = None
        if qemu_checks:
            with disks.open(cut, readonly=True) as dirty:
                needs_replay = dirty.info()["format-specific"]["data"]["log-dirty"]
            if needs_replay:  # let QEMU replay our log on a copy of the cut
                qemu_replayed = tmp_path / "qemu-replayed.vhdx"
                shutil.copyfile(cut, qemu_replayed)
                qemu_img("check", "-r", "all", qemu_replayed)
        disks.open(cut).close()  # a read-write open replays the log
        with disks.open(cut, readonly=True) as reopened:
            report = reopened.check()
            assert report.clean, (count, journal[count - 1][:2], report)
            content = reopened.read(0, reopened.size)
        if qemu_checks:  # and QEMU agrees the replayed file is sound
            qemu_img("check", cut)
        if qemu_replayed is not None:
            replayed_checked += 1
            assert qemu_to_raw(qemu_replayed, "vhdx", tmp_path / "q.raw") == content, count
        durable = max([state for at, state in acked if at <= count], default=0)
        for offset, length, _ in CRASH_OPS:
            piece = content[offset:offset + length]
            assert any(piece == states[j][offset:offset + length]
                       for j in range(durable, len(states))), (count, offset)
        untouched = bytearray(content)
        for offset, length, _ in CRASH_OPS:
            untouched[offset:offset + length] = below[offset:offset + length]
        assert bytes(untouched) == below, count
    assert replayed_checked or not qemu_checks


def test_crash_at_every_call_dynamic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "dyn.vhdx"
    disks.create(path, "vhdx", 16 * MiB, block_size="1M").close()
    run_crash_test(tmp_path, monkeypatch, path, bytes(16 * MiB), qemu_checks=True)


def test_crash_at_every_call_differencing(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    parent = tmp_path / "base.vhdx"
    with disks.create(parent, "vhdx", 16 * MiB, block_size="1M") as image:
        image.write(0, pattern(40, 16 * MiB))
    path = tmp_path / "diff.vhdx"
    disks.create(path, "vhdx", backing=parent, block_size="1M").close()
    run_crash_test(tmp_path, monkeypatch, path, pattern(40, 16 * MiB))


def test_crash_during_session_start_and_close_headers(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A torn header write (half a header) still opens from the other copy."""
    path = tmp_path / "h.vhdx"
    disks.create(path, "vhdx", 4 * MiB, block_size="1M").close()
    base = path.read_bytes()
    RecordingFile.journal = []
    RecordingFile.target = os.path.abspath(path)
    monkeypatch.setattr(disks.registry, "HostFile", RecordingFile)
    with disks.open(path) as image:
        image.write(0, b"x" * 512)
    monkeypatch.undo()
    header_writes = [i for i, op in enumerate(RecordingFile.journal)
                     if op[0] == "write" and op[1] in vhdx.HEADER_OFFSETS]
    assert len(header_writes) == 4
    for index in header_writes:
        torn = list(RecordingFile.journal[:index])
        op = RecordingFile.journal[index]
        torn.append(("write", op[1], op[2][:2048]))
        replay_prefix(base, torn, len(torn), tmp_path / "torn.vhdx")
        with disks.open(tmp_path / "torn.vhdx") as image:
            assert image.read(512, 512) == bytes(512)
        with disks.open(tmp_path / "torn.vhdx", readonly=True) as image:
            assert image.check().clean


# --- boundaries and the differencing machinery ------------------------------------

def test_reads_cross_block_and_chunk_boundaries(tmp_path: Path) -> None:
    # 512-byte sectors: a sector bitmap block covers 2^23 sectors = 4 GiB (one chunk)
    chunk = (1 << 23) * 512
    parent = tmp_path / "big-parent.vhdx"
    child = tmp_path / "big-child.vhdx"
    with disks.create(parent, "vhdx", 2 * chunk, block_size="1M") as image:
        image.write(chunk - 3 * MiB, pattern(50, 6 * MiB))
    with disks.create(child, "vhdx", backing=parent, block_size="1M") as image:
        image.write(chunk - MiB - 1000, pattern(51, 2000))       # crosses a block boundary
        image.write(chunk - 700, pattern(52, 1400))              # crosses the chunk boundary
        image.write(chunk + MiB - 512, pattern(53, 1024))
    expected = bytearray(pattern(50, 6 * MiB))
    base = chunk - 3 * MiB
    for offset, data in [(chunk - MiB - 1000, pattern(51, 2000)), (chunk - 700, pattern(52, 1400)),
                         (chunk + MiB - 512, pattern(53, 1024))]:
        expected[offset - base:offset - base + len(data)] = data
    with disks.open(child, readonly=True) as image:
        assert isinstance(image, vhdx.VhdxImage)
        assert image.chunk_ratio == 4096
        assert image.read(base, 6 * MiB) == bytes(expected)
        # odd-sized reads straddling both kinds of boundary
        for start in (chunk - 1, chunk - MiB - 1001, chunk - 4097, chunk + MiB - 513):
            got = image.read(start, 3000)
            assert got == bytes(expected[start - base:start - base + 3000])
        kinds = {e.depth for e in image.map(base, 6 * MiB)}
        assert kinds == {0, 1}
        assert image.check().clean


def test_map_reports_block_states(tmp_path: Path) -> None:
    path = tmp_path / "m.vhdx"
    with disks.create(path, "vhdx", 8 * MiB, block_size="1M") as image:
        image.write(2 * MiB, b"\1" * MiB)
        image.write(5 * MiB, b"\2" * MiB)
        image.discard(5 * MiB, MiB)
        extents = [(e.offset, e.length, e.kind) for e in image.map()]
    assert extents == [(0, 2 * MiB, disks.RunKind.UNALLOCATED), (2 * MiB, MiB, disks.RunKind.DATA),
                       (3 * MiB, 2 * MiB, disks.RunKind.UNALLOCATED),
                       (5 * MiB, MiB, disks.RunKind.ZERO),
                       (6 * MiB, 2 * MiB, disks.RunKind.UNALLOCATED)]
    with disks.open(path, readonly=True) as image:
        assert isinstance(image, vhdx.VhdxImage)
        assert image.bat[5] & 7 == vhdx.PAYLOAD_BLOCK_UNMAPPED
        assert image.read(5 * MiB, MiB) == bytes(MiB)
        ours = image.read(0, image.size)
    qemu_img("check", path)
    assert qemu_to_raw(path, "vhdx", tmp_path / "m.raw") == ours


def test_discard_in_differencing_hides_the_parent(tmp_path: Path) -> None:
    parent = tmp_path / "p.vhdx"
    with disks.create(parent, "vhdx", 4 * MiB, block_size="1M") as image:
        image.write(0, b"\x77" * (4 * MiB))
    child = tmp_path / "c.vhdx"
    with disks.create(child, "vhdx", backing=parent, block_size="1M") as image:
        image.discard(MiB - 512, 2 * MiB + 1024)
    with disks.open(child, readonly=True) as image:
        assert isinstance(image, vhdx.VhdxImage)
        assert image.bat[1] & 7 == vhdx.PAYLOAD_BLOCK_ZERO
        data = image.read(0, 4 * MiB)
    assert data == b"\x77" * (MiB - 512) + bytes(2 * MiB + 1024) + b"\x77" * (MiB - 512)


def test_parent_linkage_mismatch_and_missing_parent(tmp_path: Path) -> None:
    parent = tmp_path / "p.vhdx"
    disks.create(parent, "vhdx", 4 * MiB, block_size="1M").close()
    child = tmp_path / "c.vhdx"
    disks.create(child, "vhdx", backing=parent).close()
    with disks.open(parent) as image:  # a write changes the parent's DataWriteGuid
        image.write(0, b"changed")
    with pytest.raises(disks.BackingChainError, match="parent_linkage"):
        disks.open(child, readonly=True)
    parent.unlink()
    with pytest.raises(disks.MissingBackingError):
        disks.open(child, readonly=True)


def test_write_guids_change_on_first_write_only(tmp_path: Path) -> None:
    path = tmp_path / "g.vhdx"
    disks.create(path, "vhdx", 4 * MiB, block_size="1M").close()

    def guids() -> tuple[str, str]:
        with disks.open(path, readonly=True) as image:
            data = image.info()["format-specific"]["data"]
            return data["file-write-guid"], data["data-write-guid"]

    first = guids()
    disks.open(path).close()
    assert guids() == first  # opened for writing, nothing written
    with disks.open(path) as image:
        image.write(0, b"a")
        image.write(1, b"b")
    second = guids()
    assert second[0] != first[0] and second[1] != first[1]


def test_metadata_goes_through_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "log.vhdx"
    disks.create(path, "vhdx", 4 * MiB, block_size="1M").close()
    RecordingFile.journal = []
    RecordingFile.target = os.path.abspath(path)
    monkeypatch.setattr(disks.registry, "HostFile", RecordingFile)
    with disks.open(path) as image:
        assert isinstance(image, vhdx.VhdxImage)
        bat_offset, log_offset = image.bat_offset, image.header.log_offset
        image.write(MiB, b"q" * 4096)
    journal = RecordingFile.journal
    writes = [(i, op[1]) for i, op in enumerate(journal) if op[0] == "write"]
    data_at = next(i for i, off in writes if off >= bat_offset + MiB)
    log_at = next(i for i, off in writes if off == log_offset)
    bat_at = next(i for i, off in writes if off == bat_offset)
    assert data_at < log_at < bat_at
    assert any(op[0] == "sync" for op in journal[data_at:log_at])
    assert any(op[0] == "sync" for op in journal[log_at:bat_at])


# --- limits and corrupt structures ------------------------------------------------

def patch_metadata_item(path: Path, item: bytes, payload: bytes) -> None:
    with disks.open(path, readonly=True) as image:
        assert isinstance(image, vhdx.VhdxImage)
        table_at = image.metadata_offset
    with open(path, "r+b") as f:
        f.seek(table_at)
        table = f.read(vhdx.METADATA_TABLE_SIZE)
        _, _, count = vhdx.METADATA_TABLE_HEADER.unpack_from(table)
        for i in range(count):
            at = vhdx.METADATA_TABLE_HEADER.size + i * vhdx.METADATA_TABLE_ENTRY.size
            item_id, offset, _, _ = vhdx.METADATA_TABLE_ENTRY.unpack_from(table, at)
            if item_id == item:
                f.seek(table_at + offset)
                f.write(payload)
                return
    raise AssertionError("item not found")


@pytest.mark.parametrize("item,payload,error", [
    (vhdx.FILE_PARAMETERS, struct.pack("<II", 3 * MiB, 0), disks.CorruptImageError),
    (vhdx.FILE_PARAMETERS, struct.pack("<II", 512 * MiB, 0), disks.CorruptImageError),
    (vhdx.LOGICAL_SECTOR_SIZE, struct.pack("<I", 1024), disks.CorruptImageError),
    (vhdx.PHYSICAL_SECTOR_SIZE, struct.pack("<I", 0), disks.CorruptImageError),
    (vhdx.VIRTUAL_DISK_SIZE, struct.pack("<Q", 65 << 40), disks.UnsupportedImageError),
    # a huge disk whose BAT would not fit the BAT region (QEMU CVE-2014-0148 class)
    (vhdx.VIRTUAL_DISK_SIZE, struct.pack("<Q", 60 << 40), disks.CorruptImageError),
])
def test_limits_are_checked_before_allocation(tmp_path: Path, item: bytes, payload: bytes,
                                              error: type) -> None:
    path = tmp_path / "bad.vhdx"
    disks.create(path, "vhdx", 4 * MiB, block_size="1M").close()
    patch_metadata_item(path, item, payload)
    with pytest.raises(error):
        disks.open(path, readonly=True)


def test_unknown_required_region_and_metadata_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.vhdx"
    disks.create(path, "vhdx", 4 * MiB, block_size="1M").close()
    with disks.open(path, readonly=True) as image:
        assert isinstance(image, vhdx.VhdxImage)
        regions = [vhdx.RegionEntry(vhdx.BAT_REGION, image.bat_offset, image.bat_length, True),
                   vhdx.RegionEntry(vhdx.METADATA_REGION, image.metadata_offset,
                                    image.metadata_length, True)]
    unknown = vhdx.RegionEntry(b"\x42" * 16, 0, 0, True)
    with open(path, "r+b") as f:
        for offset in vhdx.REGION_TABLE_OFFSETS:
            f.seek(offset)
            f.write(vhdx.pack_region_table([*regions, unknown]))
    with pytest.raises(disks.UnsupportedImageError, match="unknown required region"):
        disks.open(path, readonly=True)
    with open(path, "r+b") as f:  # optional unknown regions are fine
        for offset in vhdx.REGION_TABLE_OFFSETS:
            f.seek(offset)
            f.write(vhdx.pack_region_table([*regions, vhdx.RegionEntry(b"\x42" * 16, 0, 0,
                                                                         False)]))
    disks.open(path, readonly=True).close()


def test_checksums_are_verified(tmp_path: Path) -> None:
    path = tmp_path / "c.vhdx"
    disks.create(path, "vhdx", 4 * MiB, block_size="1M").close()
    with open(path, "r+b") as f:
        f.seek(vhdx.REGION_TABLE_OFFSETS[0] + 100)
        f.write(b"\xff")
        f.seek(vhdx.HEADER_OFFSETS[0] + 200)
        f.write(b"\xff")
    with disks.open(path, readonly=True) as image:
        report = image.check()
    assert any("region table 1" in m for m in report.corruptions)
    assert any("header 1" in m for m in report.corruptions)
    with open(path, "r+b") as f:
        f.seek(vhdx.HEADER_OFFSETS[1] + 200)
        f.write(b"\xff")
    with pytest.raises(disks.CorruptImageError, match="header"):
        disks.open(path, readonly=True)


def test_check_finds_bat_entries_beyond_eof_and_overlapping(tmp_path: Path) -> None:
    path = tmp_path / "b.vhdx"
    with disks.create(path, "vhdx", 4 * MiB, block_size="1M") as image:
        image.write(0, b"x" * MiB)
        assert isinstance(image, vhdx.VhdxImage)
        bat_offset, first = image.bat_offset, int(image.bat[0])
    with open(path, "r+b") as f:
        f.seek(bat_offset + 8)
        f.write(struct.pack("<Q", first))                                   # overlaps block 0
        f.write(struct.pack("<Q", (1 << 40) | vhdx.PAYLOAD_BLOCK_FULLY_PRESENT))  # beyond EOF
    with disks.open(path, readonly=True) as image:
        report = image.check()
    assert any("overlap" in m for m in report.corruptions)
    assert any("beyond" in m for m in report.corruptions)
    assert qemu_img("check", path, check=False).returncode != 0


def test_probe_and_create_options(tmp_path: Path) -> None:
    path = tmp_path / "p.vhdx"
    disks.create(path, "vhdx", "1G").close()
    assert disks.probe(path) == "vhdx"
    with disks.open(path, readonly=True) as image:
        data = image.info()["format-specific"]["data"]
        assert data["block-size"] == 32 * MiB and data["subformat"] == "dynamic"
        assert image.allocation_unit() == 32 * MiB
    for bad in ({"block_size": "3M"}, {"block_size": "512M"}, {"logical_sector_size": "1024"},
                {"log_size": "1500K"}):
        with pytest.raises(disks.InvalidOptionError):
            disks.create(tmp_path / "bad.vhdx", "vhdx", "1G", **bad)
    with pytest.raises(disks.InvalidOptionError):
        disks.create(tmp_path / "huge.vhdx", "vhdx", (64 << 40) + 4096)
    with disks.create(tmp_path / "odd.vhdx", "vhdx", 1_000_000) as image:
        assert image.size == 1_000_448  # rounded up to whole sectors, as qemu-img does


# --- model-based property tests ------------------------------------------------------

@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=ops(6 * MiB, max_len=3 * MiB // 2))
def test_dynamic_matches_a_bytearray_model(tmp_path_factory: pytest.TempPathFactory,
                                           sequence: list) -> None:
    path = tmp_path_factory.mktemp("prop") / "d.vhdx"
    model = bytearray(6 * MiB)
    with disks.create(path, "vhdx", 6 * MiB, block_size="1M") as image:
        apply(image, model, sequence)
    assert read_all(path) == bytes(model)
    with disks.open(path, readonly=True) as image:
        assert image.check().clean


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=ops(6 * MiB, max_len=3 * MiB // 2), sector=st.sampled_from([512, 4096]))
def test_differencing_matches_a_bytearray_model(tmp_path_factory: pytest.TempPathFactory,
                                                sequence: list, sector: int) -> None:
    folder = tmp_path_factory.mktemp("propdiff")
    parent = folder / "p.vhdx"
    base = pattern(60, 6 * MiB)
    with disks.create(parent, "vhdx", 6 * MiB, block_size="1M",
                      logical_sector_size=sector) as image:
        image.write(0, base)
    model = bytearray(base)
    with disks.create(folder / "c.vhdx", "vhdx", backing=parent, block_size="1M") as image:
        apply(image, model, sequence)
    assert read_all(folder / "c.vhdx") == bytes(model)
    with disks.open(folder / "c.vhdx", readonly=True) as image:
        assert image.check().clean


def test_many_flushes_rotate_the_log(tmp_path: Path) -> None:
    """More entries than a 1 MiB log holds: a fresh LogGuid replaces wrapping."""
    path = tmp_path / "busy.vhdx"
    model = bytearray(300 * MiB)
    with disks.create(path, "vhdx", len(model), block_size="1M") as image:
        assert isinstance(image, vhdx.VhdxImage)
        first_guid = None
        for block in range(0, 300):
            image.write(block * MiB + block, bytes([block % 255 + 1]) * 700)
            model[block * MiB + block:block * MiB + block + 700] = bytes([block % 255 + 1]) * 700
            image.flush()
            first_guid = first_guid or image.header.log_guid
        assert image.header.log_guid != first_guid
    with disks.open(path, readonly=True) as image:
        assert image.check().clean
        for block in range(0, 300, 37):
            at = block * MiB
            assert image.read(at, MiB) == bytes(model[at:at + MiB])
    qemu_img("check", path)


def test_unknown_required_metadata_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.vhdx"
    disks.create(path, "vhdx", 4 * MiB, block_size="1M").close()
    with disks.open(path, readonly=True) as image:
        assert isinstance(image, vhdx.VhdxImage)
        table_at = image.metadata_offset
    with open(path, "r+b") as f:
        f.seek(table_at)
        table = bytearray(f.read(vhdx.METADATA_TABLE_SIZE))
        signature, _, count = vhdx.METADATA_TABLE_HEADER.unpack_from(table)
        at = vhdx.METADATA_TABLE_HEADER.size + count * vhdx.METADATA_TABLE_ENTRY.size
        vhdx.METADATA_TABLE_ENTRY.pack_into(table, at, b"\x17" * 16, 0, 0, vhdx.META_IS_USER)
        vhdx.METADATA_TABLE_HEADER.pack_into(table, 0, signature, 0, count + 1)
        f.seek(table_at)
        f.write(table)
    disks.open(path, readonly=True).close()  # unknown user metadata is ignored
    vhdx.METADATA_TABLE_ENTRY.pack_into(table, at, b"\x17" * 16, 0, 0, vhdx.META_IS_REQUIRED)
    with open(path, "r+b") as f:
        f.seek(table_at)
        f.write(table)
    with pytest.raises(disks.UnsupportedImageError, match="unknown required metadata"):
        disks.open(path, readonly=True)


def test_check_repairs_a_damaged_region_table_copy(tmp_path: Path) -> None:
    path = tmp_path / "rt.vhdx"
    disks.create(path, "vhdx", 4 * MiB, block_size="1M").close()
    with open(path, "r+b") as f:
        f.seek(vhdx.REGION_TABLE_OFFSETS[1] + 64)
        f.write(b"\x01")
    with disks.open(path) as image:
        report = image.check(repair=True)
        assert report.repaired and not report.corruptions
    with disks.open(path, readonly=True) as image:
        assert image.check().clean


def test_writable_open_refuses_bat_entries_beyond_eof(tmp_path: Path) -> None:
    path = tmp_path / "eof.vhdx"
    with disks.create(path, "vhdx", 4 * MiB, block_size="1M") as image:
        assert isinstance(image, vhdx.VhdxImage)
        bat_offset = image.bat_offset
    with open(path, "r+b") as f:
        f.seek(bat_offset + 16)
        f.write(struct.pack("<Q", (1 << 36) | vhdx.PAYLOAD_BLOCK_FULLY_PRESENT))
    with pytest.raises(disks.CorruptImageError, match="beyond"):
        disks.open(path)
    with disks.open(path, readonly=True) as image:  # still inspectable
        assert any("beyond" in m for m in image.check().corruptions)


def craft_log(path: Path, entries: list[bytes]) -> None:
    """Put ``entries`` back to back in the log and name a fresh LogGuid in both headers."""
    with disks.open(path, readonly=True) as image:
        assert isinstance(image, vhdx.VhdxImage)
        header, log_offset = image.header, image.header.log_offset
    with open(path, "r+b") as f:
        f.seek(log_offset)
        f.write(b"".join(entries))
        for slot, offset in enumerate(vhdx.HEADER_OFFSETS):
            f.seek(offset)
            f.write(vhdx.replace(header, sequence_number=header.sequence_number + 1 + slot,
                                 log_guid=LOG_GUID).pack())


LOG_GUID = bytes(range(16))


def zero_entry(sequence: int, tail: int, file_size: int, offset: int, length: int) -> bytes:
    buf = bytearray(vhdx.LOG_SECTOR)
    vhdx.LOG_ENTRY_HEADER.pack_into(buf, 0, b"loge", 0, vhdx.LOG_SECTOR, tail, sequence, 1, 0,
                                    LOG_GUID, file_size, file_size)
    vhdx.LOG_DESCRIPTOR.pack_into(buf, vhdx.LOG_ENTRY_HEADER.size, b"zero", 0, length, offset,
                                  sequence)
    return vhdx._with_checksum(buf)


def test_log_sequence_with_data_and_zero_descriptors(tmp_path: Path) -> None:
    """A three-entry sequence (tail = the first) rewriting payload pages: read-only opens
    serve the replayed pages from memory, read-write opens apply them."""
    path = tmp_path / "seq.vhdx"
    with disks.create(path, "vhdx", 4 * MiB, block_size="1M") as image:
        image.write(0, b"\x01" * (2 * MiB))
        assert isinstance(image, vhdx.VhdxImage)
        host = int(image.bat[0]) >> 20 << 20
    size = path.stat().st_size
    first = vhdx.build_log_entry(7, LOG_GUID, 0, size, [(host, b"\x02" * 4096),
                                                        (host + 8192, b"\x03" * 4096)])
    second = vhdx.build_log_entry(8, LOG_GUID, 0, size, [(host + 8192, b"\x04" * 4096)])
    third = zero_entry(9, 0, size, host + 16384, 8192)
    stale = vhdx.build_log_entry(3, LOG_GUID, 0, size, [(host, b"\x09" * 4096)])  # not in sequence
    craft_log(path, [first, second, third, stale])
    expected = bytearray(b"\x01" * (2 * MiB))
    expected[0:4096] = b"\x02" * 4096
    expected[8192:12288] = b"\x04" * 4096
    expected[16384:24576] = bytes(8192)
    before = path.read_bytes()
    with disks.open(path, readonly=True) as image:
        assert image.read(0, 2 * MiB) == bytes(expected)
        assert image.read(4000, 200) == bytes(expected[4000:4200])  # across an overlay page
    assert path.read_bytes() == before
    with disks.open(path) as image:
        assert image.read(0, 2 * MiB) == bytes(expected)
    with disks.open(path, readonly=True) as image:
        assert image.info()["format-specific"]["data"]["log-dirty"] is False
        assert image.read(0, 2 * MiB) == bytes(expected)
    qemu_img("check", path)


def test_log_entry_with_a_bad_checksum_is_not_replayed(tmp_path: Path) -> None:
    path = tmp_path / "torn-log.vhdx"
    with disks.create(path, "vhdx", 4 * MiB, block_size="1M") as image:
        image.write(0, b"\x01" * MiB)
        assert isinstance(image, vhdx.VhdxImage)
        host = int(image.bat[0]) >> 20 << 20
    size = path.stat().st_size
    good = vhdx.build_log_entry(1, LOG_GUID, 0, size, [(host, b"\x02" * 4096)])
    torn = bytearray(vhdx.build_log_entry(2, LOG_GUID, len(good), size,
                                          [(host, b"\x03" * 4096)]))
    torn[-100] ^= 0xFF
    craft_log(path, [good, bytes(torn)])
    with disks.open(path, readonly=True) as image:
        assert image.read(0, 4096) == b"\x02" * 4096


def test_log_written_when_the_file_was_longer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.vhdx"
    disks.create(path, "vhdx", 4 * MiB, block_size="1M").close()
    size = path.stat().st_size
    craft_log(path, [vhdx.build_log_entry(1, LOG_GUID, 0, size + 8 * MiB,
                                          [(size - 4096, bytes(4096))])])
    with pytest.raises(disks.CorruptImageError, match="log"):
        disks.open(path, readonly=True)


def test_one_commit_larger_than_a_log_entry(tmp_path: Path) -> None:
    """Sector bitmap pages of 300 chunks' worth of blocks: several entries in one flush."""
    parent = tmp_path / "wide-parent.vhdx"
    disks.create(parent, "vhdx", 8 * GiB, block_size="1M").close()
    child = tmp_path / "wide-child.vhdx"
    stride = 16 * MiB + MiB  # one bitmap page covers 16 MiB of 512-byte sectors
    offsets = list(range(0, 8 * GiB - MiB, stride))[:300]
    with disks.create(child, "vhdx", backing=parent, block_size="1M") as image:
        for i, offset in enumerate(offsets):
            image.write(offset + 512, bytes([i % 250 + 1]) * 512)
        assert isinstance(image, vhdx.VhdxImage)
        assert len(image._dirty_pages()) > vhdx.max_pages_per_entry(image.header.log_length)
    with disks.open(child, readonly=True) as image:
        for i, offset in enumerate(offsets):
            assert image.read(offset, 1536) == bytes(512) + bytes([i % 250 + 1]) * 512 \
                + bytes(512)
        assert image.check().clean


def test_qemu_replays_a_log_we_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut our write stream right after a log entry became durable and before its pages
    went in place: QEMU, an independent implementation, must replay our entry."""
    path = tmp_path / "ours-dirty.vhdx"
    disks.create(path, "vhdx", 16 * MiB, block_size="1M").close()
    base = path.read_bytes()
    RecordingFile.journal = []
    RecordingFile.target = os.path.abspath(path)
    monkeypatch.setattr(disks.registry, "HostFile", RecordingFile)
    with disks.open(path) as image:
        assert isinstance(image, vhdx.VhdxImage)
        log_offset, bat_offset = image.header.log_offset, image.bat_offset
        image.write(3 * MiB + 5, pattern(70, 2 * MiB))
        image.flush()
    monkeypatch.undo()
    journal = RecordingFile.journal
    log_write = next(i for i, op in enumerate(journal) if op[0] == "write" and op[1] == log_offset)
    assert journal[log_write + 1] == ("sync",)
    replay_prefix(base, journal, log_write + 2, path)
    with disks.open(path, readonly=True) as image:  # the BAT on disk is still empty ...
        assert image.info()["format-specific"]["data"]["log-dirty"] is True
    with open(path, "rb") as f:
        f.seek(bat_offset)
        assert not any(f.read(4096))
    qemu_img("check", "-r", "all", path)  # ... and a read-write open in QEMU replays the log
    expected = bytearray(16 * MiB)
    expected[3 * MiB + 5:5 * MiB + 5] = pattern(70, 2 * MiB)
    assert qemu_to_raw(path, "vhdx", tmp_path / "replayed.raw") == bytes(expected)
    assert read_all(path) == bytes(expected)


@pytest.mark.parametrize("options", ["", "subformat=fixed,block_size=1M"])
def test_emu_img_convert_to_and_from_vhdx(tmp_path: Path, options: str) -> None:
    source = tmp_path / "src.raw"
    with open(source, "wb") as f:
        f.truncate(40 * MiB)
        for i, offset in enumerate((0, 3 * MiB + 4096, 17 * MiB - 1000, 40 * MiB - 65536)):
            f.seek(offset)
            f.write(pattern(80 + i, 65536 if i == 3 else 3 * MiB))
    target = tmp_path / "out.vhdx"
    run = [sys.executable, "-m", "emu", "img", "convert", "-O", "vhdx"]
    if options:
        run += ["-o", options]
    subprocess.run([*run, str(source), str(target)], check=True, capture_output=True)
    qemu_img("check", target)
    assert qemu_img("compare", "-f", "vhdx", "-F", "raw", target, source).returncode == 0
    back = tmp_path / "back.raw"
    subprocess.run([sys.executable, "-m", "emu", "img", "convert", "-O", "raw", str(target),
                    str(back)], check=True, capture_output=True)
    assert back.read_bytes() == source.read_bytes()


def test_info_matches_qemu_img(tmp_path: Path) -> None:
    path = tmp_path / "info.vhdx"
    disks.create(path, "vhdx", 3 * GiB, block_size="8M").close()
    theirs = json.loads(qemu_img("info", "--output", "json", path).stdout)
    with disks.open(path, readonly=True) as image:
        ours = image.info()
    for key in ("virtual-size", "format", "cluster-size"):
        assert ours[key] == theirs[key], key


class ImageBytes(dict[str, bytes]):
    """Image files by name, shown by name only (Hypothesis prints a failing example's
    arguments, fixtures included: megabytes of image otherwise)."""

    def __repr__(self) -> str:
        return f"<images {', '.join(self)}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@pytest.fixture(scope="module")
def small_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("fuzz")
    with disks.create(folder / "parent.vhdx", "vhdx", 4 * MiB, block_size="1M") as image:
        image.write(0, pattern(90, 4 * MiB))
    with disks.create(folder / "child.vhdx", "vhdx", backing=folder / "parent.vhdx",
                      block_size="1M") as image:
        image.write(MiB - 512, pattern(91, 5000))
    return ImageBytes((name, (folder / name).read_bytes()) for name in ("parent.vhdx",
                                                                         "child.vhdx"))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(["parent.vhdx", "child.vhdx"]),
       flips=st.lists(st.tuples(st.integers(0, 6 * MiB), st.integers(1, 255)), min_size=1,
                      max_size=6),
       structure=st.sampled_from([0, 64 * 1024, 128 * 1024, 192 * 1024, 2 * MiB, 3 * MiB]))
def test_damaged_images_fail_cleanly(tmp_path_factory: pytest.TempPathFactory,
                                     small_images: dict[str, bytes], name: str,
                                     flips: list[tuple[int, int]], structure: int) -> None:
    """Flipped bytes (aimed near a structure) give a clean ImageError or a readable image."""
    folder = tmp_path_factory.mktemp("damaged")
    (folder / "parent.vhdx").write_bytes(small_images["parent.vhdx"])
    data = bytearray(small_images[name])
    for offset, value in flips:
        at = (structure + offset % 8192) if structure else offset
        if at < len(data):
            data[at] ^= value
    (folder / name).write_bytes(data)
    try:
        with disks.open(folder / name, readonly=True) as image:
            image.read(0, image.size)
            image.check()
            list(image.map())
    except disks.ImageError:
        pass


def test_three_level_chain(tmp_path: Path) -> None:
    """grandchild -> child -> base, each layer holding some sectors; libvhdi agrees."""
    base, child, grandchild = (tmp_path / n for n in ("base.vhdx", "mid.vhdx", "top.vhdx"))
    model = bytearray(pattern(100, 8 * MiB))
    with disks.create(base, "vhdx", 8 * MiB, block_size="1M") as image:
        image.write(0, model)
    layers = [(child, [(MiB - 300, 5000), (4 * MiB, MiB)]),
              (grandchild, [(MiB + 100, 700), (4 * MiB + 512, 512), (7 * MiB, 3)])]
    parent = base
    for seed, (path, writes) in enumerate(layers):
        with disks.create(path, "vhdx", backing=parent, block_size="2M") as image:
            for offset, length in writes:
                data = pattern(101 + seed * 10 + offset % 7, length)
                image.write(offset, data)
                model[offset:offset + length] = data
        parent = path
    with disks.open(grandchild, readonly=True) as image:
        assert len(image.chain()) == 3
        assert image.read(0, image.size) == bytes(model)
        assert {e.depth for e in image.map()} == {0, 1, 2}
    script = r"""
import sys, pyvhdi
files = []
for name in sys.argv[1:4]:
    f = pyvhdi.file()
    f.open(name)
    files.append(f)
files[1].set_parent(files[2])
files[0].set_parent(files[1])
with open(sys.argv[4], "wb") as out:
    out.write(files[0].read_buffer_at_offset(files[0].media_size, 0))
"""
    libvhdi_read(tmp_path, base)  # skips when pyvhdi is missing
    out = tmp_path / "chain.raw"
    subprocess.run(["/usr/bin/python3", "-c", script, str(grandchild), str(child), str(base),
                    str(out)], check=True, capture_output=True, timeout=300)
    assert out.read_bytes() == bytes(model)


def test_log_entry_wrapping_around_the_end_of_the_log(tmp_path: Path) -> None:
    path = tmp_path / "wrap.vhdx"
    with disks.create(path, "vhdx", 4 * MiB, block_size="1M") as image:
        image.write(0, b"\x01" * MiB)
        assert isinstance(image, vhdx.VhdxImage)
        host = int(image.bat[0]) >> 20 << 20
        log_length = image.header.log_length
    size = path.stat().st_size
    position = log_length - vhdx.LOG_SECTOR
    entry = vhdx.build_log_entry(5, LOG_GUID, position, size, [(host, b"\x0b" * 4096)])
    assert len(entry) == 2 * vhdx.LOG_SECTOR
    craft_log(path, [entry[vhdx.LOG_SECTOR:]])  # the entry's second half, at the log start
    with disks.open(path, readonly=True) as image:
        assert isinstance(image, vhdx.VhdxImage)
        log_offset = image.header.log_offset
    with open(path, "r+b") as f:
        f.seek(log_offset + position)
        f.write(entry[:vhdx.LOG_SECTOR])
    with disks.open(path, readonly=True) as image:
        assert image.read(0, 8192) == b"\x0b" * 4096 + b"\x01" * 4096
    with disks.open(path) as image:
        assert image.read(0, 8192) == b"\x0b" * 4096 + b"\x01" * 4096
    qemu_img("check", path)


def test_a_tangled_log_is_refused_in_bounded_time(tmp_path: Path) -> None:
    """128 chained entries and 128 heads whose tails lead into that chain but never back to
    them: a naive search walks 128 x 128 steps; the driver gives up with a clear error."""
    path = tmp_path / "tangled.vhdx"
    disks.create(path, "vhdx", 4 * MiB, block_size="1M").close()
    size = path.stat().st_size
    chain = [vhdx.build_log_entry(1 + i, LOG_GUID, 0, size, []) for i in range(128)]
    heads = [vhdx.build_log_entry(1000 + i, LOG_GUID, 0, size, []) for i in range(128)]
    craft_log(path, chain + heads)
    with pytest.raises(disks.CorruptImageError, match="log"):
        disks.open(path, readonly=True)
    plain = tmp_path / "chain-only.vhdx"
    disks.create(plain, "vhdx", 4 * MiB, block_size="1M").close()
    craft_log(plain, chain)  # the chain alone is a valid sequence (of empty entries)
    disks.open(plain, readonly=True).close()
