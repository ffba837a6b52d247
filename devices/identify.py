"""Pieces shared by the IDENTIFY data of ATA and ATAPI drives (ATA/ATAPI-6 clause 8.15-8.16)."""

from __future__ import annotations

import struct

FIRMWARE_REVISION = "0.1.0"
INTEGRITY_SIGNATURE = 0xA5       # word 255 low byte; the high byte makes the sum zero


def ata_string(text: str, length: int) -> bytes:
    """An IDENTIFY string: space padded, two characters per word, first in the high byte."""
    raw = text.encode("ascii", "replace")[:length].ljust(length, b" ")
    swapped = bytearray(length)
    swapped[0::2] = raw[1::2]
    swapped[1::2] = raw[0::2]
    return bytes(swapped)


def identify_block(words: list[int], *, serial: str, model: str) -> bytes:
    """512 bytes from 256 words, with serial (words 10-19), firmware (23-26), model
    (27-46) and the integrity word (255: all bytes sum to zero)."""
    data = bytearray(struct.pack("<256H", *words))
    data[20:40] = ata_string(serial, 20)
    data[46:54] = ata_string(FIRMWARE_REVISION, 8)
    data[54:94] = ata_string(model, 40)
    data[510] = INTEGRITY_SIGNATURE
    data[511] = -sum(data[:511]) & 0xFF
    return bytes(data)
