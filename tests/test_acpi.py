"""ACPI tables: checked by ACPICA's iasl (disassembly, checksum warnings, recompilation)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from conftest import need_tool
from oracles import run
from test_fwcfg import SeabiosLikeReader

from devices.fwcfg import FwCfg, pc_items
from devices.interfaces import BytearrayMemory
from firmware.acpi import (
    LOADER_FILE,
    RSDP_FILE,
    TABLES_FILE,
    AcpiConfig,
    AcpiImage,
    build,
    loader_files,
    name_string,
    pkg_length,
)

BASE = 0x07FF0000
# Header bytes iasl rewrites when it compiles: checksum (9), compiler ID and revision (28-35).
IASL_OWNED = {9, *range(28, 36)}


def iasl_roundtrip(data: bytes, work: Path, stem: str) -> tuple[str, bytes]:
    """Disassemble ``data`` with iasl, then compile the result without optimisations."""
    iasl = need_tool("iasl")
    binary = work / f"{stem}.dat"
    binary.write_bytes(data)
    disassembly = run(iasl, "-d", binary)
    assert "Incorrect checksum" not in disassembly.stdout + disassembly.stderr
    source = work / f"{stem}.dsl"
    text = source.read_text()
    assert "Incorrect" not in text and "Error" not in text
    compiled = run(iasl, "-oa", "-p", work / f"{stem}_rt", source)
    assert "0 Errors, 0 Warnings" in compiled.stdout
    return text, (work / f"{stem}_rt.aml").read_bytes()


def differing_bytes(ours: bytes, theirs: bytes) -> list[int]:
    assert len(ours) == len(theirs)
    return [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True))
            if a != b and i not in IASL_OWNED]


@pytest.fixture(scope="module")
def image() -> AcpiImage:
    return build(AcpiConfig(), BASE)


@pytest.mark.parametrize("signature", ["DSDT", "FACP", "APIC", "RSDT", "XSDT", "FACS"])
def test_iasl_disassembles_and_recompiles_every_table_to_the_same_bytes(
        image: AcpiImage, signature: str, tmp_path: Path) -> None:
    ours = image.table(signature)
    _, theirs = iasl_roundtrip(ours, tmp_path, signature.lower())
    assert differing_bytes(ours, theirs) == []
    if signature != "FACS":
        assert sum(ours) & 0xFF == 0


def test_rsdp_v2_equals_what_iasl_compiles_from_its_fields(image: AcpiImage,
                                                           tmp_path: Path) -> None:
    signature, _, oem, revision, rsdt, length, xsdt, _, _ = struct.unpack(
        "<8sB6sBIIQB3s", image.rsdp)
    assert (signature, revision, length) == (b"RSD PTR ", 2, 36)
    assert rsdt == BASE + image.offsets["RSDT"] and xsdt == BASE + image.offsets["XSDT"]
    source = tmp_path / "rsdp.asl"
    source.write_text(
        '[0008] Signature : "RSD PTR "\n[0001] Checksum : 00\n'
        f'[0006] Oem ID : "{oem.decode()}"\n[0001] Revision : 02\n'
        f"[0004] RSDT Address : {rsdt:08X}\n[0004] Length : 00000024\n"
        f"[0008] XSDT Address : {xsdt:016X}\n[0001] Extended Checksum : 00\n"
        "[0003] Reserved : 000000\n")
    run(need_tool("iasl"), source)
    assert (tmp_path / "rsdp.aml").read_bytes() == bytes(image.rsdp)


def test_rsdp_v0_without_xsdt() -> None:
    image = build(AcpiConfig(), BASE, xsdt=False)
    assert len(image.rsdp) == 20 and image.rsdp[15] == 0 and sum(image.rsdp) & 0xFF == 0
    assert "XSDT" not in image.offsets


def test_dsdt_describes_the_pci_root_the_piix_ide_and_s5(image: AcpiImage,
                                                          tmp_path: Path) -> None:
    text, _ = iasl_roundtrip(image.table("DSDT"), tmp_path, "dsdt")
    for expected in ('EisaId ("PNP0A03")', "Device (IDE)", "Name (_ADR, 0x00010001)",
                     "Device (PRIM)", "Device (SECD)", "Name (\\_S5, Package (0x04)",
                     '"ACPI0007"', "WordBusNumber", "0xFEBFFFFF"):
        assert expected in text


def test_fadt_fields(image: AcpiImage, tmp_path: Path) -> None:
    text, _ = iasl_roundtrip(image.table("FACP"), tmp_path, "facp")
    fields = {line.split(":")[0].split("]")[-1].strip(): line.split(":")[1].strip()
              for line in text.splitlines() if line.startswith("[") and ":" in line}
    assert fields["SCI Interrupt"] == "0009"
    assert fields["PM Timer Block Address"] == "00000608"
    assert fields["PM1A Control Block Address"] == "00000604"
    assert fields["Value to cause reset"] == "06"
    facs, dsdt = BASE + image.offsets["FACS"], BASE + image.offsets["DSDT"]
    assert f"FACS Address : {facs:08X}" in text and "FACS Address : 0000000000000000" in text
    assert f"DSDT Address : {dsdt:08X}" in text and f"DSDT Address : {dsdt:016X}" in text
    assert "Reset Register Supported (V2) : 1" in text
    assert "0000000000000CF9" in text


def test_madt_lists_cpus_ioapic_and_qemu_overrides(tmp_path: Path) -> None:
    image = build(AcpiConfig(cpus=2), BASE)
    madt = image.table("APIC")
    entries = []
    offset = 44
    while offset < len(madt):
        length = madt[offset + 1]
        entries.append(bytes(madt[offset:offset + length]))
        offset += length
    assert struct.unpack_from("<II", madt, 36) == (0xFEE00000, 1)
    assert [e[0] for e in entries] == [0, 0, 1, 2, 2, 2, 2, 2, 4]
    assert [struct.unpack("<BBBBI", e)[2:] for e in entries[:2]] == [(0, 0, 1), (1, 1, 1)]
    assert struct.unpack("<BBBBII", entries[2])[2:] == (0, 0, 0xFEC00000, 0)
    overrides = [struct.unpack("<BBBBIH", e)[3:] for e in entries[3:8]]
    assert overrides == [(0, 2, 0), (5, 5, 0xD), (9, 9, 0xD), (10, 10, 0xD), (11, 11, 0xD)]
    text, _ = iasl_roundtrip(madt, tmp_path, "apic")
    assert text.count("[Processor Local APIC]") == 2


def test_aml_encoders() -> None:
    assert pkg_length(0x3E) == bytes([0x3F])
    assert pkg_length(0x3F) == bytes([0x41, 0x04])          # 0x41 total, two bytes
    assert pkg_length(0x1000) == bytes([0x83, 0x00, 0x01])  # 0x1003 total
    assert name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    assert name_string("\\_SB.PCI0.IDE") == b"\\\x2f\x03_SB_PCI0IDE_"
    with pytest.raises(ValueError):
        name_string("TOOLONG")


# --- the fw_cfg linker/loader path (what SeaBIOS runs) -------------------------------------

def run_table_loader(files: dict[str, bytes], memory: BytearrayMemory,
                     addresses: dict[str, int]) -> None:
    """Execute etc/table-loader the way its format defines (QEMU bios-linker-loader)."""
    placed: dict[str, int] = {}
    script = files[LOADER_FILE]
    for start in range(0, len(script), 128):
        entry = script[start:start + 128]
        command = struct.unpack_from("<I", entry)[0]
        first = entry[4:60].rstrip(b"\0").decode()
        if command == 1:                                     # ALLOCATE
            align, zone = struct.unpack_from("<IB", entry, 60)
            assert addresses[first] % align == 0 and zone in (1, 2)
            placed[first] = addresses[first]
            memory.write(addresses[first], files[first])
        elif command == 2:                                   # ADD_POINTER
            source = entry[60:116].rstrip(b"\0").decode()
            offset, size = struct.unpack_from("<IB", entry, 116)
            where = placed[first] + offset
            value = int.from_bytes(memory.read(where, size), "little") + placed[source]
            memory.write(where, (value & ((1 << 8 * size) - 1)).to_bytes(size, "little"))
        elif command == 3:                                   # ADD_CHECKSUM
            offset, begin, length = struct.unpack_from("<III", entry, 60)
            region = memory.read(placed[first] + begin, length)
            where = placed[first] + offset
            memory.write(where, bytes([(memory.read(where, 1)[0] - sum(region)) & 0xFF]))
        else:
            raise AssertionError(f"unknown loader command {command}")


def test_loader_script_relocates_to_what_build_lays_out_directly() -> None:
    config = AcpiConfig()
    files = loader_files(config)
    memory = BytearrayMemory(BASE + 0x10000)
    rsdp_address = 0xF5A40
    run_table_loader(files, memory, {TABLES_FILE: BASE, RSDP_FILE: rsdp_address})
    direct = build(config, BASE)
    assert memory.read(BASE, len(direct.blob)) == bytes(direct.blob)
    assert memory.read(rsdp_address, 36) == bytes(direct.rsdp)
    assert len(files[LOADER_FILE]) % 128 == 0


def test_seabios_path_fw_cfg_files_to_an_rsdp_in_the_bios_area() -> None:
    """fw_cfg carries the loader files; running the script leaves an RSDP in 0xE0000-0xFFFFF."""
    device = FwCfg()
    pc_items(device, ram_size=BASE + 0x10000)
    for file, data in loader_files(AcpiConfig()).items():
        device.add_file(file, data)
    reader = SeabiosLikeReader(device)
    files = {name: reader.load(name) for name in (LOADER_FILE, RSDP_FILE, TABLES_FILE)}
    memory = BytearrayMemory(BASE + 0x10000)
    run_table_loader(files, memory, {TABLES_FILE: BASE, RSDP_FILE: 0xF5A40})
    rsdp = next(a for a in range(0xE0000, 0x100000, 16) if memory.read(a, 8) == b"RSD PTR ")
    rsdt = struct.unpack("<I", memory.read(rsdp + 16, 4))[0]
    header = memory.read(rsdt, 36)
    length = struct.unpack_from("<I", header, 4)[0]
    assert header[:4] == b"RSDT" and sum(memory.read(rsdt, length)) & 0xFF == 0
    signatures = [memory.read(struct.unpack_from("<I", memory.read(rsdt + 36 + 4 * i, 4))[0], 4)
                  for i in range((length - 36) // 4)]
    assert signatures == [b"FACP", b"APIC"]


def test_acpica_interpreter_loads_the_namespace_and_evaluates_s5_and_crs(
        image: AcpiImage, tmp_path: Path) -> None:
    """acpiexec runs ACPICA, the interpreter inside Linux, over DSDT + FADT + MADT.

    (Its built-in self-tests then poke a PM2 block and GPEs beyond 0x0F, which PIIX4 --
    like QEMU's pc -- does not have; those "Unexpected ..." lines are not about the tables.)
    """
    files = []
    for signature in ("DSDT", "FACP", "APIC"):
        files.append(tmp_path / f"{signature}.dat")
        files[-1].write_bytes(image.table(signature))
    output = run(need_tool("acpiexec"), "-b", "evaluate \\_S5; evaluate \\_SB.PCI0._CRS",
                 *files).stdout
    assert "ACPI: 1 ACPI AML tables successfully acquired and loaded" in output
    assert "Initialized GPE 00 to 0F [_GPE] 2 regs on interrupt 0x9 (SCI)" in output
    assert "Contains 4 Elements:" in output                  # \_S5
    assert "Length 6E =" in output                            # the _CRS buffer
    problems = [line for line in output.splitlines()
                if ("Error" in line or "Exception" in line or "Warning" in line)
                and "aetests" not in line]
    assert problems == []
