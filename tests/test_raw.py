"""Raw images: the file is the disk (against a bytearray model and qemu-img)."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from model import apply, ops
from oracles import qemu_img, qemu_img_info, qemu_io

import disks

KiB = 1 << 10
MiB = 1 << 20


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=ops(256 * KiB + 100, max_len=96 * KiB))
def test_random_io_matches_model(tmp_path: Path,
                                 sequence: list[tuple[str, int, int, int]]) -> None:
    path = tmp_path / "m.raw"
    size = 256 * KiB + 100
    model = bytearray(size)
    with disks.create(path, "raw", size) as img:
        apply(img, model, sequence)
    assert path.read_bytes() == model


def test_create_is_sparse_and_preallocation_writes(tmp_path: Path) -> None:
    sparse = tmp_path / "s.raw"
    disks.create(sparse, "raw", "8M").close()
    assert os.path.getsize(sparse) == 8 * MiB
    assert os.stat(sparse).st_blocks * 512 < MiB
    full = tmp_path / "f.raw"
    disks.create(full, "raw", "3M", preallocation="on").close()
    assert os.stat(full).st_blocks * 512 >= 3 * MiB
    assert qemu_img_info(full, "raw")["virtual-size"] == 3 * MiB


def test_anything_probes_as_raw_and_size_is_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"hello" * 1000)
    assert disks.probe(path) == "raw"
    with disks.open(path, readonly=True) as img:
        assert img.size == 5000 and img.read(0, 5) == b"hello"
        assert img.geometry is None and img.backing is None
        assert img.info()["format"] == "raw"


def test_map_reports_host_holes_as_zero(tmp_path: Path) -> None:
    path = tmp_path / "h.raw"
    with disks.create(path, "raw", "4M") as img:
        img.write(MiB, b"\x01" * MiB)
    with disks.open(path, readonly=True) as img:
        data = [(e.offset, e.length) for e in img.map() if e.kind is disks.RunKind.DATA]
    assert data == [(MiB, MiB)]
    expected = [e for e in qemu_map(path) if e["data"]]
    assert [(e["start"], e["length"]) for e in expected] == data


def qemu_map(path: Path) -> list[dict[str, object]]:
    import json
    return json.loads(qemu_img("map", "--output", "json", "-f", "raw", path).stdout)


def test_qemu_io_and_emu_agree(tmp_path: Path) -> None:
    path = tmp_path / "q.raw"
    disks.create(path, "raw", "2M").close()
    qemu_io(path, "raw", "write -P 0x5a 4095 2")
    with disks.open(path) as img:
        assert img.read(4094, 4) == b"\0\x5a\x5a\0"
        img.write(MiB, b"\x33" * 512)
        img.discard(4095, 1)
    qemu_io(path, "raw", "read -P 0x33 1M 512", "read -P 0 4095 1", "read -P 0x5a 4096 1")


def test_discard_reads_zeros(tmp_path: Path) -> None:
    with disks.create(tmp_path / "d.raw", "raw", "1M") as img:
        img.write(0, b"\xff" * MiB)
        img.discard(100, 5000)
        assert img.read(0, 6000) == b"\xff" * 100 + bytes(5000) + b"\xff" * 900
        assert img.check().clean
