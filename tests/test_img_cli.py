"""`emu img`: qemu-img's verbs, exit codes and output shapes (qemu-img as the oracle)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import qemu_img, qemu_img_info, qemu_io

import disks
from disks import vdi
from emu.img import _nonzero_stretches, main

MiB = 1 << 20


def emu_img(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def qemu_exit(*args: str | Path) -> int:
    return qemu_img(*args, check=False).returncode


def pattern_raw(path: Path, blocks: dict[int, int], size: int = 8 * MiB) -> Path:
    data = bytearray(size)
    for block, fill in blocks.items():
        data[block * MiB:(block + 1) * MiB] = bytes([fill]) * MiB
    path.write_bytes(bytes(data))
    return path


# --- create / info ---------------------------------------------------------------------------

def test_create_and_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "d.vdi"
    code, out, _ = emu_img(capsys, "create", "-f", "vdi", image, "8M")
    assert code == 0 and out == f"Formatting '{image}', fmt=vdi size={8 * MiB}\n"
    code, out, _ = emu_img(capsys, "info", "--output", "json", image)
    ours = json.loads(out)
    theirs = qemu_img_info(image)
    for key in ("virtual-size", "format", "cluster-size", "filename"):
        assert ours[key] == theirs[key], key
    code, out, _ = emu_img(capsys, "info", image)
    assert code == 0
    assert "virtual size: 8 MiB (8388608 bytes)" in out and "file format: vdi" in out
    code, out, _ = emu_img(capsys, "create", "-f", "vdi", "-o", "static=on", tmp_path / "s.vdi",
                           "2M")
    assert code == 0 and qemu_img_info(tmp_path / "s.vdi")["virtual-size"] == 2 * MiB


def test_create_with_backing_takes_parent_size(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    parent = tmp_path / "p.vdi"
    emu_img(capsys, "create", "-f", "vdi", parent, "3M")
    code, _, err = emu_img(capsys, "create", "-f", "vdi", "-b", parent, "-F", "vdi",
                           tmp_path / "c.vdi")
    assert code == 0, err
    code, out, _ = emu_img(capsys, "info", "--output", "json", "--backing-chain",
                           tmp_path / "c.vdi")
    chain = json.loads(out)
    assert [entry["virtual-size"] for entry in chain] == [3 * MiB, 3 * MiB]
    assert chain[0]["full-backing-filename"] == str(parent)


@pytest.mark.parametrize("argv", [
    ["create", "-f", "vdi", "-o", "colour=blue", "{tmp}/x.vdi", "1M"],
    ["create", "-f", "qcow9", "{tmp}/x.img", "1M"],
    ["create", "-f", "vdi", "{tmp}/x.vdi"],
    ["info", "{tmp}/missing.vdi"],
    ["convert", "-O", "nope", "{tmp}/src.raw", "{tmp}/dst"],
    ["check", "-f", "vdi", "{tmp}/src.raw"],
])
def test_errors_are_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    argv: list[str]) -> None:
    (tmp_path / "src.raw").write_bytes(bytes(4096))
    code, _, err = emu_img(capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith("emu img: ")


def test_cli_process_prints_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.vdi"
    bad.write_bytes(b"<<< Oracle VM VirtualBox Disk Image >>>\n".ljust(64, b"\0")
                    + struct.pack("<I", vdi.SIGNATURE) + bytes(20))
    proc = subprocess.run([sys.executable, "-m", "emu", "img", "info", str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert str(bad) in proc.stderr


# --- check ---------------------------------------------------------------------------------------

def damaged(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.vdi"
    with disks.create(path, "vdi", "4M") as img:
        img.write(0, b"\x01" * (3 * MiB))
    header = vdi.VdiHeader.unpack(path.read_bytes()[:512])
    with open(path, "r+b") as f:
        if kind == "corrupt":                      # block 2 reuses block 0's slot
            f.seek(header.offset_bmap + 8)
            f.write(struct.pack("<I", 0))
        elif kind == "leaky":                      # a slot's worth of space past the last
            f.truncate(header.offset_data + 4 * MiB)  # (an orphan count a writable open trims)
    return path


def test_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clean, corrupt, leaky = (damaged(tmp_path, k) for k in ("clean", "corrupt", "leaky"))
    code, out, _ = emu_img(capsys, "check", clean)
    assert code == 0 and "No errors were found on the image." in out
    assert qemu_exit("check", clean) == 0
    code, out, _ = emu_img(capsys, "check", corrupt)
    assert code == 2 and "ERROR" in out
    assert qemu_exit("check", corrupt) == 2
    code, out, _ = emu_img(capsys, "check", "--output", "json", leaky)
    report = json.loads(out)
    assert code == 3 and report["leaks"] >= 1 and report["corruptions"] == 0
    code, out, _ = emu_img(capsys, "check", "-r", "leaks", leaky)
    assert code == 0 and "Repaired" in out
    assert qemu_exit("check", leaky) == 0


# --- compare -------------------------------------------------------------------------------------

def test_compare_exit_codes_and_messages(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    raw = pattern_raw(tmp_path / "a.raw", {1: 0x11, 5: 0x55})
    image = tmp_path / "a.vdi"
    qemu_img("convert", "-O", "vdi", raw, image)
    code, out, _ = emu_img(capsys, "compare", image, raw)
    assert (code, out) == (0, "Images are identical.\n")
    other = pattern_raw(tmp_path / "b.raw", {1: 0x11, 5: 0x56})
    code, out, _ = emu_img(capsys, "compare", image, other)
    expected = qemu_img("compare", image, other, check=False)
    assert (code, out) == (expected.returncode, expected.stdout) == (1, out)
    code, _, err = emu_img(capsys, "compare", image, tmp_path / "missing.raw")
    assert code == 2 and err.startswith("emu img: ")
    longer = tmp_path / "long.raw"
    longer.write_bytes(raw.read_bytes() + bytes(MiB))
    code, out, _ = emu_img(capsys, "compare", raw, longer)
    assert code == 0 and "size mismatch" in out
    code, _, _ = emu_img(capsys, "compare", "-s", raw, longer)
    assert code == 1


# --- convert -------------------------------------------------------------------------------------

def test_convert_round_trip_is_sparse(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = pattern_raw(tmp_path / "src.raw", {0: 0x10, 3: 0x13, 4: 0x14, 7: 0x17})
    image = tmp_path / "out.vdi"
    code, out, _ = emu_img(capsys, "convert", "-p", "-f", "raw", "-O", "vdi", raw, image)
    assert code == 0 and "100.00/100%" in out
    qemu_img("check", image)
    qemu_img("compare", "-f", "vdi", "-F", "raw", image, raw)
    assert disks.open(image, readonly=True).info()["format-specific"]["data"][
        "blocks-allocated"] == 4
    back = tmp_path / "back.raw"
    code, _, _ = emu_img(capsys, "convert", "-O", "raw", image, back)
    assert code == 0 and back.read_bytes() == raw.read_bytes()
    assert os.stat(back).st_blocks * 512 <= 5 * MiB       # zeros stayed holes


def test_convert_static_and_unaligned_data(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "odd.raw"
    data = bytearray(3 * MiB + 4096)
    data[MiB - 7:MiB + 9] = b"\xee" * 16
    data[-1] = 1
    raw.write_bytes(bytes(data))
    image = tmp_path / "odd.vdi"
    code, _, err = emu_img(capsys, "convert", "-O", "vdi", "-o", "static=on", raw, image)
    assert code == 0, err
    qemu_img("check", image)
    qemu_img("compare", "-f", "vdi", "-F", "raw", image, raw)


@pytest.mark.parametrize("static", ["off", "on"])   # static: holes in the file under data
def test_convert_reads_qemu_image_like_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            static: str) -> None:
    image = tmp_path / "q.vdi"
    qemu_img("create", "-f", "vdi", "-o", f"static={static}", image, "6M")
    qemu_io(image, "vdi", "write -P 0x21 100k 1500k", "write -P 0x22 5M 4k")
    ours, theirs = tmp_path / "ours.raw", tmp_path / "theirs.raw"
    assert emu_img(capsys, "convert", "-O", "raw", image, ours)[0] == 0
    qemu_img("convert", "-O", "raw", image, theirs)
    assert ours.read_bytes() == theirs.read_bytes()


def test_convert_from_differencing_image_flattens(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    parent = tmp_path / "p.vdi"
    with disks.create(parent, "vdi", "4M") as img:
        img.write(0, b"\x01" * (2 * MiB))
    child = tmp_path / "c.vdi"
    with disks.create(child, "vdi", backing=parent) as img:
        img.write(MiB, b"\x02" * 10)
        img.write(3 * MiB, b"\x03" * 10)
    flat = tmp_path / "flat.vdi"
    assert emu_img(capsys, "convert", "-O", "vdi", child, flat)[0] == 0
    expected = bytearray(4 * MiB)
    expected[:2 * MiB] = b"\x01" * (2 * MiB)
    expected[MiB:MiB + 10] = b"\x02" * 10
    expected[3 * MiB:3 * MiB + 10] = b"\x03" * 10
    with disks.open(flat, readonly=True) as img:
        assert img.backing is None and img.read(0, 4 * MiB) == expected


# --- map ---------------------------------------------------------------------------------

def test_map_matches_qemu_img(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "m.vdi"
    qemu_img("create", "-f", "vdi", image, "8M")
    qemu_io(image, "vdi", "write -P 1 0 2M", "write -P 2 5M 1k", "write -P 3 7M 1M")
    for extra in ([], ["--output", "json"]):
        code, out, _ = emu_img(capsys, "map", *extra, image)
        assert code == 0
        assert out == qemu_img("map", *extra, image).stdout
    code, out, _ = emu_img(capsys, "map", "--output", "json", image)
    rows = json.loads(out)
    assert sum(row["length"] for row in rows) == 8 * MiB


def test_usage_errors_exit_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["frobnicate"])
    assert caught.value.code != 0
    with pytest.raises(SystemExit):
        main([])
    capsys.readouterr()


# --- the convert path's zero scan ------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(unit=st.sampled_from([512, 4096, 64 << 10]), offset=st.integers(0, 3 * 4096),
       length=st.integers(1, 300 << 10),
       blobs=st.lists(st.tuples(st.integers(0, 300 << 10), st.integers(1, 9000)), max_size=6),
       holes=st.booleans())
def test_nonzero_stretches_keep_every_nonzero_unit(unit: int, offset: int, length: int,
                                                   blobs: list[tuple[int, int]],
                                                   holes: bool) -> None:
    data = bytearray(length)
    for at, size in blobs:
        data[at:at + size] = b"\x01" * len(data[at:at + size])
    segments = None
    if holes:   # claim data only where the blobs are (the rest known zero)
        segments = sorted((min(at, length), min(at + size, length)) for at, size in blobs
                          if at < length)
        merged: list[tuple[int, int]] = []
        for a, b in segments:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        segments = merged
    stretches = _nonzero_stretches(data, 0, length, offset, unit, bytes(unit), segments)
    covered = bytearray(length)
    for a, b in stretches:
        assert 0 <= a < b <= length
        covered[a:b] = b"\x01" * (b - a)
    # every non-zero byte is written, and every unit left out is wholly zero
    for i in range(0, length):
        if data[i]:
            assert covered[i]
    pos = 0
    while pos < length:
        end = min(length, pos + unit - (offset + pos) % unit)
        if not any(covered[pos:end]):
            assert not any(data[pos:end])
        else:
            assert all(covered[pos:end])   # units are written whole
        pos = end


def test_convert_of_an_image_in_use_reads_instead_of_mapping(tmp_path: Path) -> None:
    from emu.img import copy_image
    source = tmp_path / "busy.raw"
    pattern_raw(source, {1: 0x42, 2: 0x43}, size=4 * MiB)
    expected = source.read_bytes()
    with disks.open(source, format="raw"):               # a writer holds the lock
        with disks.open(source, format="raw", readonly=True, force_share=True) as src:
            assert not src.file.excludes_writers
            with disks.create(tmp_path / "out.vdi", "vdi", src.size) as dst:
                copy_image(src, dst)
                assert dst.read(0, dst.size) == expected
    with disks.open(source, format="raw", readonly=True) as src:   # mapped, lock released
        with disks.create(tmp_path / "out2.vdi", "vdi", src.size) as dst:
            copy_image(src, dst)
            assert dst.read(0, dst.size) == expected
        assert src.file.excludes_writers
    with disks.open(source, format="raw"):              # and the lock was not kept
        pass
