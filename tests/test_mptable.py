"""MP spec 1.4 tables: layout, checksums and agreement with the MADT."""

from __future__ import annotations

import struct

import pytest

from firmware.acpi import AcpiConfig
from firmware.mptable import MpConfig, build


def parse(data: bytes, address: int) -> tuple[tuple, list[bytes]]:
    signature, table, length, revision, _, feature1, feature2 = struct.unpack_from(
        "<4sIBBBBB", data)
    assert (signature, length, revision, feature1, feature2) == (b"_MP_", 1, 4, 0, 0)
    assert sum(data[:16]) & 0xFF == 0
    start = table - address
    header = struct.unpack_from("<4sHBB8s12sIHHIHBB", data, start)
    assert header[0] == b"PCMP" and sum(data[start:start + header[1]]) & 0xFF == 0
    entries, offset = [], start + 44
    for _ in range(header[8]):
        size = 20 if data[offset] == 0 else 8
        entries.append(data[offset:offset + size])
        offset += size
    assert offset == start + header[1] == len(data)
    return header, entries


def test_layout_entries_and_checksums() -> None:
    data = build(MpConfig(AcpiConfig(cpus=2)), 0xF5BA0)
    header, entries = parse(data, 0xF5BA0)
    assert header[9] == 0xFEE00000
    assert [e[0] for e in entries] == [0, 0, 1, 1, 2] + [3] * 11 + [4, 4]
    assert [struct.unpack_from("<BBBB", e)[1:] for e in entries[:2]] == [(0, 0x14, 3),
                                                                        (1, 0x14, 1)]
    assert [e[2:8] for e in entries[2:4]] == [b"PCI   ", b"ISA   "]
    assert struct.unpack("<BBBBI", entries[4])[1:] == (0, 0x11, 1, 0xFEC00000)
    isa = {e[5]: e[7] for e in entries if e[0] == 3}
    assert isa == {0: 2, 1: 1, 3: 3, 4: 4, 6: 6, 7: 7, 8: 8, 12: 12, 13: 13, 14: 14, 15: 15}
    local = [struct.unpack("<BBHBBBB", e)[1:] for e in entries if e[0] == 4]
    assert local == [(3, 0, 1, 0, 0, 0), (1, 0, 1, 0, 0xFF, 1)]


def test_floating_pointer_must_be_aligned() -> None:
    with pytest.raises(ValueError, match="16-byte"):
        build(MpConfig(), 0xF5BA8)
