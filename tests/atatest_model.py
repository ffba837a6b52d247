"""What firmware/atatest.asm must print and leave on the disk, computed from a model.

The ROM prints ``NAME @LLLLLLLLLLLL+NNNNNNNN st=SS [bm=BB] [h=HHHHHHHH]`` for every
addressed command.  Replaying those lines against a bytearray copy of the disk gives an
oracle independent of both QEMU and emu: a write's hash must be the hash of the pattern
it wrote, a read's hash the hash of what the model holds there, and the final disk must
equal the model.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

SECTOR = 512
MASK32 = 0xFFFFFFFF
HASH_SEED = 0x811C9DC5
HASH_PRIME = 0x01000193
PATTERN_MULTIPLIER = 0x9E3779B1
DMA_AREA = 0x70000  # the ROM's DMA buffers (0x20000..0x8FFFF): larger transfers wrap

LINE = re.compile(r"^(?P<name>.+?) @(?P<lba>[0-9A-F]{12})\+(?P<count>[0-9A-F]{8})"
                  r" st=(?P<status>[0-9A-F]{2})(?P<rest>.*)$")
WRITE_OPCODES_BY_NAME = re.compile(r"^W")  # the ROM names writes W28, WCHS, W48, WMULT, WDMA
SEEDS = {  # name -> pattern seed, as in the ROM's test table
    "W28": 0x11111111, "W28 noretry": 0x12121212, "WCHS": 0x22222222, "W48": 0x33333333,
    "W48 last": 0x44444444, "WMULT": 0x55555555, "WMULT48": 0x66666666,
    "WDMA": 0x77777777, "WDMA48 count=0100": 0x88888888, "WDMA48 256 across": 0x99999999,
    "WVERIFY": 0xABCDEF01, "IRQ W28": 0x5A5A5A5A, "nIEN W28": 0x5A5A5A5A,
    "W28 beyond": 0xDEADBEEF, "WDMA48 beyond": 0xDEADBEEF,
}


def rol32(value: int, bits: int) -> int:
    return ((value << bits) | (value >> (32 - bits))) & MASK32


def data_hash(data: bytes | bytearray | memoryview) -> int:
    value = HASH_SEED
    for (dword,) in struct.iter_unpack("<I", data):
        value = rol32(((value ^ dword) * HASH_PRIME) & MASK32, 5)
    return value


def pattern(lba: int, count: int, seed: int) -> bytes:
    first = lba * 128
    return struct.pack(f"<{count * 128}I", *(
        ((first + i) * PATTERN_MULTIPLIER + seed) & MASK32 for i in range(count * 128)))


@dataclass
class Step:
    name: str
    lba: int
    count: int
    status: int
    hash: int | None


def parse(transcript: str) -> list[Step]:
    steps = []
    for line in transcript.splitlines():
        match = LINE.match(line)
        if match is None:
            continue
        hashed = re.search(r" h=([0-9A-F]{8})", match["rest"])
        steps.append(Step(match["name"], int(match["lba"], 16), int(match["count"], 16),
                          int(match["status"], 16), int(hashed[1], 16) if hashed else None))
    return steps


def replay(transcript: str, disk: bytearray) -> list[str]:
    """Apply the transcript's writes to ``disk``; return every disagreement found."""
    problems = []
    steps = parse(transcript)
    if not steps:
        return ["no addressed commands in the transcript"]
    for step in steps:
        start, length = step.lba * SECTOR, step.count * SECTOR
        failed = bool(step.status & 0x01)
        if step.name in SEEDS:
            if failed:
                continue
            data = pattern(step.lba, step.count, SEEDS[step.name])
            disk[start:start + length] = data
        else:
            if failed or length > DMA_AREA:
                continue
            data = bytes(disk[start:start + length])
        if step.hash is not None and step.hash != data_hash(data):
            problems.append(f"{step.name}: hash {step.hash:08X}, model says "
                            f"{data_hash(data):08X}")
    return problems
