"""emu's MADT, FADT and MP table against what QEMU's pc machine and SeaBIOS publish.

QEMU boots SeaBIOS with no disk; once SeaBIOS logs its boot attempt, the monitor saves
guest RAM and the tests walk QEMU's RSDP/RSDT and MP floating pointer in that dump.
"""

from __future__ import annotations

import struct
import subprocess
import time

import pytest
from conftest import need_tool

from firmware.acpi import AcpiConfig, build
from firmware.mptable import MpConfig
from firmware.mptable import build as build_mp

RAM = 32 << 20
BIOS_AREA = range(0xE0000, 0x100000, 16)
WAIT_LIMIT_S = 120          # a guard against a hung QEMU, not a measurement


@pytest.fixture(scope="module")
def qemu_ram(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    work = tmp_path_factory.mktemp("qemu-tables")
    log, dump = work / "seabios.log", work / "ram.bin"
    qemu = subprocess.Popen(
        [need_tool("qemu-system-x86_64"), "-M", "pc", "-m", str(RAM >> 20), "-nodefaults",
         "-display", "none", "-no-reboot", "-accel", "tcg", "-monitor", "stdio",
         "-chardev", f"file,id=log,path={log}", "-device",
         "isa-debugcon,iobase=0x402,chardev=log"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + WAIT_LIMIT_S
        while b"No bootable device" not in (log.read_bytes() if log.exists() else b""):
            assert time.monotonic() < deadline, "SeaBIOS never reached its boot attempt"
            time.sleep(0.05)
        qemu.communicate(f'pmemsave 0 {RAM} "{dump}"\nquit\n', timeout=WAIT_LIMIT_S)
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
    return dump.read_bytes()


def find(ram: bytes, signature: bytes) -> int:
    return next(a for a in BIOS_AREA if ram[a:a + len(signature)] == signature)


def acpi_table(ram: bytes, signature: bytes) -> bytes:
    rsdt = struct.unpack_from("<I", ram, find(ram, b"RSD PTR ") + 16)[0]
    count = (struct.unpack_from("<I", ram, rsdt + 4)[0] - 36) // 4
    for index in range(count):
        address = struct.unpack_from("<I", ram, rsdt + 36 + 4 * index)[0]
        if ram[address:address + 4] == signature:
            return ram[address:address + struct.unpack_from("<I", ram, address + 4)[0]]
    raise AssertionError(f"QEMU has no {signature!r} table")


def madt_entries(madt: bytes) -> list[bytes]:
    entries, offset = [], 44
    while offset < len(madt):
        entries.append(madt[offset:offset + madt[offset + 1]])
        offset += madt[offset + 1]
    return entries


def test_madt_body_equals_qemus(qemu_ram: bytes) -> None:
    ours = build(AcpiConfig(), 0x100000).table("APIC")
    theirs = acpi_table(qemu_ram, b"APIC")
    assert ours[36:44] == theirs[36:44]                      # LAPIC address, PCAT_COMPAT
    assert madt_entries(ours) == madt_entries(theirs)


def test_fadt_platform_fields_equal_qemus(qemu_ram: bytes) -> None:
    """QEMU's pc FADT is revision 1; the fields it has must agree with emu's revision 3."""
    ours = build(AcpiConfig(), 0x100000).table("FACP")
    theirs = acpi_table(qemu_ram, b"FACP")
    # SCI .. GPE1 block lengths, then century: offsets 46-95 and 108.
    assert ours[46:96] == theirs[46:96]
    assert ours[108] == theirs[108]
    flags_ours, flags_theirs = (struct.unpack_from("<I", t, 112)[0] for t in (ours, theirs))
    reset_reg_sup = 1 << 10
    assert flags_ours & ~reset_reg_sup == flags_theirs


def test_mp_table_isa_and_local_entries_equal_seabioses(qemu_ram: bytes) -> None:
    def entries(data: bytes, table: int) -> list[bytes]:
        count = struct.unpack_from("<H", data, table + 34)[0]
        found, offset = [], table + 44
        for _ in range(count):
            size = 20 if data[offset] == 0 else 8
            found.append(data[offset:offset + size])
            offset += size
        return found

    floating = find(qemu_ram, b"_MP_")
    theirs = entries(qemu_ram, struct.unpack_from("<I", qemu_ram, floating + 4)[0])
    ours_data = build_mp(MpConfig(), 0)
    ours = entries(ours_data, 16)

    def comparable(found: list[bytes]) -> list[bytes]:
        # processors carry CPUID values of the CPU model; PCI interrupt entries exist
        # only for QEMU's PCI devices with an INTx pin.
        return [e for e in found if e[0] in (1, 2, 4) or (e[0] == 3 and e[4] == 1)]

    assert comparable(ours) == comparable(theirs)
    assert qemu_ram[floating + 11] == ours_data[11]          # feature byte 1
    assert [e[:4] for e in ours if e[0] == 0] == [e[:4] for e in theirs if e[0] == 0]
