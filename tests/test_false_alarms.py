"""Healthy images are not reported as damaged, and emu's images load in QEMU.

* a dynamic VHD laid out as Hyper-V lays it out (every block's data on a 4 KiB
  boundary, the padding before it unreferenced) checks clean;
* a VHDX with log entries not yet replayed is a state, not corruption (check -r
  replays it) -- covered with QEMU's dirty-log sample in test_vhdx;
* an empty (0-byte) VHDX made by emu opens in qemu-img, as qemu's own does.
"""

from __future__ import annotations

import struct
from pathlib import Path

from oracles import qemu_img, qemu_img_info, qemu_to_raw
from test_vhdx import libvhdi_read

import disks
from emu.img import main as img_main

MiB = 1 << 20
BLOCK = 2 * MiB
ALIGN = 4096


def hyperv_layout(source: Path, target: Path) -> None:
    """Copy a dynamic VHD moving each block so its data starts on a 4 KiB boundary with
    the bitmap in the sector before (7 sectors of padding before each block)."""
    data = source.read_bytes()
    footer = data[-512:]
    header_offset = struct.unpack_from(">Q", footer, 16)[0]
    table_offset = struct.unpack_from(">Q", data, header_offset + 16)[0]
    entries = struct.unpack_from(">I", data, header_offset + 28)[0]
    bitmap = 512
    bat = list(struct.unpack_from(f">{entries}I", data, table_offset))
    first = min(e for e in bat if e != 0xFFFFFFFF) * 512
    out = bytearray(data[:first])
    for index in sorted(range(entries), key=lambda i: bat[i]):
        if bat[index] == 0xFFFFFFFF:
            continue
        block = data[bat[index] * 512:bat[index] * 512 + bitmap + BLOCK]
        start = -(-(len(out) + bitmap) // ALIGN) * ALIGN - bitmap
        out += bytes(start - len(out))
        bat[index] = start // 512
        out += block
    struct.pack_into(f">{entries}I", out, table_offset, *bat)
    out += footer
    target.write_bytes(bytes(out))


def test_hyperv_block_padding_is_not_a_leak(tmp_path: Path, capsys) -> None:
    ours = tmp_path / "ours.vhd"
    with disks.create(ours, "vpc", 16 * MiB) as image:
        for block, fill in ((0, 1), (1, 2), (3, 3), (6, 4)):
            image.write(block * BLOCK + 4096, bytes([fill]) * 8192)
    hyperv = tmp_path / "hyperv.vhd"
    hyperv_layout(ours, hyperv)
    expected = qemu_to_raw(ours, "vpc", tmp_path / "ours.raw")
    assert qemu_to_raw(hyperv, "vpc", tmp_path / "hyperv.raw") == expected   # same disk
    assert libvhdi_read(tmp_path, hyperv) == expected
    with disks.open(hyperv, readonly=True) as image:
        assert image.read(0, image.size) == expected
        report = image.check()
        assert report.clean, report
    assert img_main(["check", str(hyperv)]) == 0
    assert "No errors" in capsys.readouterr().out


def test_gaps_that_align_nothing_are_still_leaks(tmp_path: Path) -> None:
    ours = tmp_path / "ours.vhd"
    with disks.create(ours, "vpc", 16 * MiB) as image:
        for block in (0, 1):
            image.write(block * BLOCK, b"x" * 512)
    data = bytearray(ours.read_bytes())
    header_offset = struct.unpack_from(">Q", data, len(data) - 512 + 16)[0]
    table_offset = struct.unpack_from(">Q", data, header_offset + 16)[0]
    second = struct.unpack_from(">I", data, table_offset + 4)[0]
    moved = second + 16          # 8 KiB further: a hole no alignment explains
    tail = data[second * 512:second * 512 + 512 + BLOCK]
    struct.pack_into(">I", data, table_offset + 4, moved)
    footer = data[-512:]
    del data[second * 512:]
    data += bytes(8192) + tail + footer
    ours.write_bytes(bytes(data))
    with disks.open(ours, readonly=True) as image:
        report = image.check()
        assert not report.corruptions and report.leaks
        assert image.read(BLOCK, 512) == b"x" * 512


def test_empty_vhdx_made_by_emu_opens_in_qemu(tmp_path: Path) -> None:
    for options in ({}, {"block_size": "32M"}, {"physical_sector_size": 512}):
        path = tmp_path / "empty.vhdx"
        with disks.create(path, "vhdx", 0, **options) as image:
            assert image.size == 0
        assert qemu_img_info(path, "vhdx")["virtual-size"] == 0
        qemu_img("check", "-f", "vhdx", path)
        assert path.stat().st_blocks * 512 < 8 * MiB      # the long BAT stays a sparse hole
        with disks.open(path, readonly=True) as image:
            assert image.check().clean
    ours = tmp_path / "ours.vhdx"
    with disks.create(ours, "vhdx", 0, subformat="fixed"):
        pass
    qemu_img("check", "-f", "vhdx", ours)
    assert qemu_img_info(ours, "vhdx")["virtual-size"] == 0
