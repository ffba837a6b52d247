"""The --snapshot overlay: writes land in a scratch file, reads fall through, base untouched."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import disks
from disks.overlay import CLUSTER_SIZE, OverlayImage

SIZE = 4 * CLUSTER_SIZE + 4096


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.vhd"
    with disks.create(path, "vpc", SIZE) as image:
        image.write(0, random.Random(1).randbytes(SIZE))
    return path


def test_reads_fall_through_and_writes_stay_in_the_overlay(tmp_path: Path, base: Path) -> None:
    before = base.read_bytes()
    with disks.open(base, readonly=True) as lower:
        original = lower.read(0, lower.size)
    overlay = OverlayImage(disks.open(base, readonly=True), tmp_path / "scratch")
    assert overlay.read(0, overlay.size) == original
    overlay.write(CLUSTER_SIZE - 10, b"X" * 20)   # straddles two clusters
    expected = bytearray(original)
    expected[CLUSTER_SIZE - 10:CLUSTER_SIZE + 10] = b"X" * 20
    assert overlay.read(0, overlay.size) == expected
    assert len(overlay.clusters) == 2
    overlay.discard(3 * CLUSTER_SIZE, 4096)
    expected[3 * CLUSTER_SIZE:3 * CLUSTER_SIZE + 4096] = bytes(4096)
    assert overlay.read(0, overlay.size) == expected
    overlay.flush()
    overlay.close()
    assert base.read_bytes() == before
    assert not (tmp_path / "scratch").exists()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, SIZE - 1), st.integers(1, 3 * CLUSTER_SIZE // 2),
                          st.integers(0, 255)), max_size=12))
def test_overlay_behaves_like_a_copy(tmp_path_factory: pytest.TempPathFactory,
                                     writes: list[tuple[int, int, int]]) -> None:
    folder = tmp_path_factory.mktemp("overlay")
    path = folder / "base.raw"
    content = random.Random(2).randbytes(SIZE)
    path.write_bytes(content)
    model = bytearray(content)
    with OverlayImage(disks.open(path, format="raw", readonly=True), folder / "o") as overlay:
        for offset, length, fill in writes:
            length = min(length, SIZE - offset)
            overlay.write(offset, bytes([fill]) * length)
            model[offset:offset + length] = bytes([fill]) * length
        assert overlay.read(0, SIZE) == model
    assert path.read_bytes() == content
