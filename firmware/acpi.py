"""ACPI tables for emu's PC (i440FX/PIIX, one I/O APIC), built as bytes in Python.

Theory of operation
-------------------
(ACPI specification 6.x chapter 5, "ACPI Software Programming Model"; section
numbers below are 6.4's.)  An OS finds the tables through the RSDP (5.2.5),
which it searches for on 16-byte boundaries in the BIOS area 0xE0000-0xFFFFF.
The RSDP points at the RSDT (32-bit pointers, 5.2.7) and, from revision 2, at
the XSDT (64-bit pointers, 5.2.8).  Both list the FADT (5.2.9) and the MADT
(5.2.12); the FADT points at the FACS (5.2.10, no checksum) and the DSDT
(5.2.11.1), whose AML body (chapter 20) describes the device tree.  Every
table but the FACS starts with the 36-byte header (5.2.6) and sums to zero
over its length; the RSDP has its own 20-byte checksum and, in revision 2, an
extended checksum over all 36 bytes.

The tables describe what QEMU's ``pc`` machine describes, so a guest sees the
same platform under emu and ``qemu-system-x86_64``:

* FADT revision 3: SCI on IRQ 9, the PIIX4 power-management block at
  ``pm_base`` (PM1a event +0, PM1a control +4, 24-bit PM timer +8), GPE0 at
  0xAFE0, SMI command port 0xB2 (enable 0xF1, disable 0xF0), the reset
  register (I/O port 0xCF9, value 0x06) flagged in ``RESET_REG_SUP``;
* MADT: one local APIC per CPU, the I/O APIC at 0xFEC00000 with GSI base 0,
  interrupt source overrides ISA IRQ 0 -> GSI 2 and IRQs 5, 9, 10, 11 as
  level/active-high (PCI-routed, as QEMU does), local APIC NMI on LINT1;
* DSDT: ``\\_SB.PCI0`` (PNP0A03, with the bus, I/O and memory windows in
  ``_CRS``), the PIIX3 ISA bridge (00:01.0) and IDE function (00:01.1, two
  channels), a processor device (ACPI0007) per CPU and ``\\_S5`` = 0 so a
  write of SLP_TYP 0 | SLP_EN to PM1a control powers off (PIIX4's encoding).

:func:`build` lays the tables out at a chosen physical address and returns
the bytes to place; :func:`loader_files` gives the same tables the way QEMU
hands them to SeaBIOS over fw_cfg: ``etc/acpi/tables``, ``etc/acpi/rsdp`` and
the ``etc/table-loader`` script (QEMU ``hw/acpi/bios-linker-loader.c``
format: 128-byte commands ALLOCATE, ADD_POINTER, ADD_CHECKSUM) that makes
SeaBIOS allocate, relocate and checksum them.  The AML is assembled by the
small encoder below (names, integers, strings, packages, buffers, scopes and
devices); nothing here executes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

# --- generic pieces -----------------------------------------------------------------

HEADER = struct.Struct("<4sIBB6s8sI4sI")    # 5.2.6: signature .. creator revision
HEADER_CHECKSUM_OFFSET = 9
GAS = struct.Struct("<BBBBQ")               # 5.2.3.2 generic address structure
GAS_IO, GAS_MEMORY = 1, 0
ACCESS_BYTE, ACCESS_WORD, ACCESS_DWORD = 1, 2, 3


def checksum_byte(data: bytes | bytearray) -> int:
    """The byte that makes ``data`` (with that byte counted as 0) sum to 0 mod 256."""
    return -sum(data) & 0xFF


def table(signature: bytes, revision: int, body: bytes, config: AcpiConfig) -> bytearray:
    """A complete, checksummed table: the 36-byte header followed by ``body``."""
    data = bytearray(HEADER.pack(signature, HEADER.size + len(body), revision, 0,
                                 config.oem_id, config.oem_table_id, config.oem_revision,
                                 config.creator_id, config.creator_revision) + body)
    data[HEADER_CHECKSUM_OFFSET] = checksum_byte(data)
    return data


def gas(space: int, bit_width: int, access: int, address: int) -> bytes:
    return GAS.pack(space, bit_width, 0, access, address)


# --- AML (ACPI 6.4 chapter 20) ---------------------------------------------------------

AML_ZERO, AML_ONE, AML_ONES = 0x00, 0x01, 0xFF
AML_BYTE, AML_WORD, AML_DWORD, AML_STRING, AML_QWORD = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
AML_NAME, AML_SCOPE, AML_BUFFER, AML_PACKAGE = 0x08, 0x10, 0x11, 0x12
AML_EXT, AML_DEVICE = 0x5B, 0x82
AML_ROOT, AML_DUAL_NAME, AML_MULTI_NAME = 0x5C, 0x2E, 0x2F


def pkg_length(content_length: int) -> bytes:
    """PkgLength (20.2.4): the encoded length counts its own bytes."""
    for extra in range(4):
        total = content_length + 1 + extra
        if extra == 0 and total < 0x40:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            return bytes([extra << 6 | total & 0xF]) + (total >> 4).to_bytes(extra, "little")
    raise ValueError("AML package longer than 2**28 bytes")


def name_string(path: str) -> bytes:
    """A NameString: optional root prefix, then 4-character segments padded with '_'."""
    prefix = b"\\" if path.startswith("\\") else b""
    segments = [seg.ljust(4, "_").encode() for seg in path.lstrip("\\").split(".")]
    if any(len(seg) != 4 for seg in segments):
        raise ValueError(f"AML name segment longer than 4 characters in {path!r}")
    if len(segments) == 1:
        return prefix + segments[0]
    if len(segments) == 2:
        return prefix + bytes([AML_DUAL_NAME]) + b"".join(segments)
    return prefix + bytes([AML_MULTI_NAME, len(segments)]) + b"".join(segments)


def integer(value: int) -> bytes:
    if value in (0, 1):
        return bytes([AML_ZERO if value == 0 else AML_ONE])
    for prefix, size in ((AML_BYTE, 1), (AML_WORD, 2), (AML_DWORD, 4), (AML_QWORD, 8)):
        if value < 1 << 8 * size:
            return bytes([prefix]) + value.to_bytes(size, "little")
    raise ValueError(f"AML integer {value:#x} does not fit 64 bits")


def string(text: str) -> bytes:
    return bytes([AML_STRING]) + text.encode("ascii") + b"\0"


def name(path: str, value: bytes) -> bytes:
    return bytes([AML_NAME]) + name_string(path) + value


def package(*elements: bytes) -> bytes:
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([AML_PACKAGE]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([AML_BUFFER]) + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([AML_SCOPE]) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([AML_EXT, AML_DEVICE]) + pkg_length(len(body)) + body


def eisa_id(text: str) -> bytes:
    """EisaId("PNP0A03"): three 5-bit letters and four hex digits, as a DWord (19.6.35)."""
    letters = (ord(text[0]) - 0x40) << 10 | (ord(text[1]) - 0x40) << 5 | (ord(text[2]) - 0x40)
    number = int(text[3:], 16)
    return integer(int.from_bytes(letters.to_bytes(2, "big") + number.to_bytes(2, "big"),
                                  "little"))


# Resource descriptors for _CRS (6.4): address-space descriptors and the end tag.
RESOURCE_MEMORY, RESOURCE_IO, RESOURCE_BUS = 0, 1, 2
ADDRESS_PRODUCER_FIXED = 0x0C        # general flags: producer, min and max fixed, positive decode
IO_ENTIRE_RANGE = 0x03
MEMORY_CACHEABLE_RW = 0x03


def word_space(kind: int, type_flags: int, minimum: int, maximum: int) -> bytes:
    body = struct.pack("<BBBHHHHH", kind, ADDRESS_PRODUCER_FIXED, type_flags, 0, minimum,
                       maximum, 0, maximum - minimum + 1)
    return struct.pack("<BH", 0x88, len(body)) + body


def dword_memory(minimum: int, maximum: int) -> bytes:
    body = struct.pack("<BBBIIIII", RESOURCE_MEMORY, ADDRESS_PRODUCER_FIXED,
                       MEMORY_CACHEABLE_RW, 0, minimum, maximum, 0, maximum - minimum + 1)
    return struct.pack("<BH", 0x87, len(body)) + body


def io_port(base: int, length: int) -> bytes:
    return struct.pack("<BBHHBB", 0x47, 1, base, base, 1, length)


END_TAG = bytes([0x79, 0x00])


# --- the platform -------------------------------------------------------------------------

@dataclass(frozen=True)
class IrqOverride:
    """MADT interrupt source override (5.2.12.5): ISA ``irq`` arrives on ``gsi``."""

    irq: int
    gsi: int
    flags: int = 0            # bits 1:0 polarity, 3:2 trigger; 0 = conforms to the bus


LEVEL_ACTIVE_HIGH = 0x000D    # polarity 01 (high), trigger 11 (level)


@dataclass(frozen=True)
class AcpiConfig:
    cpus: int = 1
    ram_below_4g: int = 128 << 20
    oem_id: bytes = b"EMU   "
    oem_table_id: bytes = b"EMUPC   "
    oem_revision: int = 1
    creator_id: bytes = b"EMU "
    creator_revision: int = 1
    lapic_address: int = 0xFEE00000
    ioapic_address: int = 0xFEC00000
    ioapic_id: int = 0                    # QEMU's MADT and SeaBIOS's MP table both say 0
    sci_irq: int = 9
    pm_base: int = 0x600
    gpe0_base: int = 0xAFE0
    smi_command: int = 0xB2
    reset_port: int = 0xCF9
    reset_value: int = 0x06
    overrides: tuple[IrqOverride, ...] = field(default_factory=lambda: (
        IrqOverride(0, 2),
        *(IrqOverride(irq, irq, LEVEL_ACTIVE_HIGH) for irq in (5, 9, 10, 11))))

    @property
    def pci_hole(self) -> tuple[int, int]:
        """The 32-bit PCI memory window: from the end of low RAM up to the I/O APIC."""
        return self.ram_below_4g, self.ioapic_address - 1


# FADT fixed-feature flags (table 5.10) and boot architecture flags (table 5.11).
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_SLP_BUTTON = 1 << 5
FADT_RTC_S4 = 1 << 7
FADT_RESET_REG_SUP = 1 << 10
FADT_USE_PLATFORM_CLOCK = 1 << 15
BOOT_ARCH_LEGACY_DEVICES = 1 << 0
BOOT_ARCH_8042 = 1 << 1
PM_PROFILE_UNSPECIFIED = 0
FADT_REVISION = 3
FADT_LENGTH = 244
PIIX4_ACPI_ENABLE, PIIX4_ACPI_DISABLE = 0xF1, 0xF0
PM1_EVT_LEN, PM1_CNT_LEN, PM_TMR_LEN, GPE0_LEN = 4, 2, 4, 4
PM1_CNT_OFFSET, PM_TMR_OFFSET = 4, 8
SLP_EN = 1 << 13
S5_SLP_TYP = 0                      # PIIX4: \_S5 is package {0, 0, 0, 0}

# Where build() puts pointers: (table, offset of the pointer, pointer size, target table).
# X_FIRMWARE_CTRL stays 0: it "must be zero" when FIRMWARE_CTRL is set (table 5.9);
# X_DSDT may repeat DSDT, and 64-bit OSPMs prefer it.
POINTERS = (
    ("FACP", 36, 4, "FACS"),
    ("FACP", 40, 4, "DSDT"),
    ("FACP", 140, 8, "DSDT"),
)


def fadt(config: AcpiConfig) -> bytearray:
    """FADT revision 3 with zero FACS/DSDT pointers (filled by :func:`_link`)."""
    pm = config.pm_base
    body = struct.pack(
        "<IIBBHIBBBBIIIIIIIIBBBBBBBBHHHHBBBBBHBI",
        0, 0, 0, PM_PROFILE_UNSPECIFIED, config.sci_irq, config.smi_command,
        PIIX4_ACPI_ENABLE, PIIX4_ACPI_DISABLE, 0, 0,
        pm, 0, pm + PM1_CNT_OFFSET, 0, 0, pm + PM_TMR_OFFSET, config.gpe0_base, 0,
        PM1_EVT_LEN, PM1_CNT_LEN, 0, PM_TMR_LEN, GPE0_LEN, 0, 0, 0,
        0xFFF, 0xFFF, 0, 0, 0, 0, 0, 0, 0x32,           # C2/C3 latencies > limits: unsupported
        BOOT_ARCH_LEGACY_DEVICES | BOOT_ARCH_8042, 0,
        FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_RTC_S4 | FADT_RESET_REG_SUP
        | FADT_USE_PLATFORM_CLOCK)
    body += gas(GAS_IO, 8, ACCESS_BYTE, config.reset_port) + bytes([config.reset_value])
    body += bytes(3)                                   # ARM boot flags, minor version
    body += bytes(16)                                  # X_FIRMWARE_CTRL, X_DSDT
    body += gas(GAS_IO, 8 * PM1_EVT_LEN, ACCESS_WORD, pm)
    body += bytes(GAS.size)
    body += gas(GAS_IO, 8 * PM1_CNT_LEN, ACCESS_WORD, pm + PM1_CNT_OFFSET)
    body += bytes(GAS.size) * 2
    body += gas(GAS_IO, 8 * PM_TMR_LEN, ACCESS_DWORD, pm + PM_TMR_OFFSET)
    body += gas(GAS_IO, 8 * GPE0_LEN, ACCESS_BYTE, config.gpe0_base)
    body += bytes(GAS.size)
    assert HEADER.size + len(body) == FADT_LENGTH
    return table(b"FACP", FADT_REVISION, body, config)


def facs() -> bytearray:
    """FACS (5.2.10): 64 bytes, no checksum, version 2."""
    return bytearray(struct.pack("<4sIIIIIQB31s", b"FACS", 64, 0, 0, 0, 0, 0, 2, bytes(31)))


MADT_PCAT_COMPAT = 1
MADT_LOCAL_APIC, MADT_IO_APIC, MADT_OVERRIDE, MADT_LAPIC_NMI = 0, 1, 2, 4
LAPIC_ENABLED = 1
NMI_ALL_PROCESSORS = 0xFF


def madt(config: AcpiConfig) -> bytearray:
    body = struct.pack("<II", config.lapic_address, MADT_PCAT_COMPAT)
    for cpu in range(config.cpus):
        body += struct.pack("<BBBBI", MADT_LOCAL_APIC, 8, cpu, cpu, LAPIC_ENABLED)
    body += struct.pack("<BBBBII", MADT_IO_APIC, 12, config.ioapic_id, 0,
                        config.ioapic_address, 0)
    for override in config.overrides:
        body += struct.pack("<BBBBIH", MADT_OVERRIDE, 10, 0, override.irq, override.gsi,
                            override.flags)
    body += struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, NMI_ALL_PROCESSORS, 0, 1)
    return table(b"APIC", 1, body, config)


PCI_VGA_WINDOW = (0xA0000, 0xBFFFF)
PIIX_ISA_ADR = 0x00010000     # device 1, function 0
PIIX_IDE_ADR = 0x00010001     # device 1, function 1


def dsdt_aml(config: AcpiConfig) -> bytes:
    hole_start, hole_end = config.pci_hole
    crs = (word_space(RESOURCE_BUS, 0, 0, 0xFF) + io_port(0xCF8, 8)
           + word_space(RESOURCE_IO, IO_ENTIRE_RANGE, 0x0000, 0x0CF7)
           + word_space(RESOURCE_IO, IO_ENTIRE_RANGE, 0x0D00, 0xFFFF)
           + dword_memory(*PCI_VGA_WINDOW) + dword_memory(hole_start, hole_end) + END_TAG)
    processors = [device(f"C{cpu:03X}", name("_HID", string("ACPI0007")),
                         name("_UID", integer(cpu))) for cpu in range(config.cpus)]
    return (
        scope("\\_SB",
              device("PCI0",
                     name("_HID", eisa_id("PNP0A03")),
                     name("_UID", integer(0)),
                     name("_CRS", buffer(crs)),
                     device("ISA", name("_ADR", integer(PIIX_ISA_ADR))),
                     device("IDE",
                            name("_ADR", integer(PIIX_IDE_ADR)),
                            device("PRIM", name("_ADR", integer(0))),
                            device("SECD", name("_ADR", integer(1))))),
              *processors)
        + name("\\_S5", package(*(integer(S5_SLP_TYP),) * 4)))


def dsdt(config: AcpiConfig) -> bytearray:
    # Revision 2: 64-bit AML integers (ACPI 2.0 and later).
    return table(b"DSDT", 2, dsdt_aml(config), config)


# --- layout -------------------------------------------------------------------------------

RSDP_V0 = struct.Struct("<8sB6sBI")          # 20 bytes
RSDP_V2 = struct.Struct("<8sB6sBIIQB3s")     # 36 bytes
RSDP_SIGNATURE = b"RSD PTR "
RSDP_ALIGN = 16
FACS_ALIGN = 64


def rsdp(config: AcpiConfig, rsdt_address: int, xsdt_address: int | None) -> bytearray:
    """RSDP revision 0 (20 bytes) or, with an XSDT, revision 2 (36 bytes)."""
    if xsdt_address is None:
        data = bytearray(RSDP_V0.pack(RSDP_SIGNATURE, 0, config.oem_id, 0, rsdt_address))
        data[8] = checksum_byte(data)
        return data
    data = bytearray(RSDP_V2.pack(RSDP_SIGNATURE, 0, config.oem_id, 2, rsdt_address,
                                  RSDP_V2.size, xsdt_address, 0, bytes(3)))
    data[8] = checksum_byte(data[:RSDP_V0.size])
    data[32] = checksum_byte(data)
    return data


@dataclass
class AcpiImage:
    """Tables laid out at ``base``: ``blob`` goes at ``base``, ``rsdp`` wherever the BIOS
    puts it (a 16-byte boundary in 0xE0000-0xFFFFF); ``offsets`` maps signatures to
    their offset in ``blob``; ``pointers`` lists (table, field offset, size, target)
    for the loader script."""

    base: int
    blob: bytearray
    rsdp: bytearray
    offsets: dict[str, int]
    pointers: list[tuple[str, int, int, str]]

    def table(self, signature: str) -> bytes:
        start = self.offsets[signature]
        length = 64 if signature == "FACS" else struct.unpack_from("<I", self.blob, start + 4)[0]
        return bytes(self.blob[start:start + length])


def build(config: AcpiConfig, base: int, *, xsdt: bool = True) -> AcpiImage:
    """Lay out FACS, DSDT, FADT, MADT, RSDT (and XSDT) at physical address ``base``."""
    tables: dict[str, bytearray] = {
        "FACS": facs(), "DSDT": dsdt(config), "FACP": fadt(config), "APIC": madt(config)}
    pointers = list(POINTERS)
    listed = ["FACP", "APIC"]
    blob = bytearray()
    offsets: dict[str, int] = {}

    def place(signature: str, data: bytearray) -> None:
        alignment = FACS_ALIGN if signature == "FACS" else 8
        blob.extend(bytes(-len(blob) % alignment))
        offsets[signature] = len(blob)
        blob.extend(data)

    for signature, data in tables.items():
        place(signature, data)
    rsdt = table(b"RSDT", 1, b"".join(struct.pack("<I", base + offsets[sig]) for sig in listed),
                 config)
    pointers += [("RSDT", HEADER.size + 4 * i, 4, sig) for i, sig in enumerate(listed)]
    place("RSDT", rsdt)
    xsdt_address = None
    if xsdt:
        place("XSDT", table(b"XSDT", 1, b"".join(
            struct.pack("<Q", base + offsets[sig]) for sig in listed), config))
        pointers += [("XSDT", HEADER.size + 8 * i, 8, sig) for i, sig in enumerate(listed)]
        xsdt_address = base + offsets["XSDT"]
    for signature, offset, size, target in POINTERS:
        _store(blob, offsets[signature] + offset, size, base + offsets[target])
    fadt_start = offsets["FACP"]                       # its pointers changed: re-checksum
    blob[fadt_start + HEADER_CHECKSUM_OFFSET] = 0
    blob[fadt_start + HEADER_CHECKSUM_OFFSET] = checksum_byte(
        blob[fadt_start:fadt_start + FADT_LENGTH])
    return AcpiImage(base, blob, rsdp(config, base + offsets["RSDT"], xsdt_address),
                     offsets, pointers)


def _store(blob: bytearray, offset: int, size: int, value: int) -> None:
    blob[offset:offset + size] = value.to_bytes(size, "little")


# --- QEMU's linker/loader script for SeaBIOS (hw/acpi/bios-linker-loader.c format) ---------

LOADER_ENTRY_SIZE = 128
LOADER_FILE_SIZE = 56
LOADER_ALLOCATE, LOADER_ADD_POINTER, LOADER_ADD_CHECKSUM = 1, 2, 3
ZONE_HIGH, ZONE_FSEG = 1, 2
TABLES_FILE = "etc/acpi/tables"
RSDP_FILE = "etc/acpi/rsdp"
LOADER_FILE = "etc/table-loader"


def _loader_entry(command: int, payload: bytes) -> bytes:
    return (struct.pack("<I", command) + payload).ljust(LOADER_ENTRY_SIZE, b"\0")


def _file_name(file: str) -> bytes:
    return file.encode().ljust(LOADER_FILE_SIZE, b"\0")


def allocate(file: str, align: int, zone: int) -> bytes:
    return _loader_entry(LOADER_ALLOCATE, _file_name(file) + struct.pack("<IB", align, zone))


def add_pointer(dest: str, src: str, offset: int, size: int) -> bytes:
    return _loader_entry(LOADER_ADD_POINTER,
                         _file_name(dest) + _file_name(src) + struct.pack("<IB", offset, size))


def add_checksum(file: str, offset: int, start: int, length: int) -> bytes:
    return _loader_entry(LOADER_ADD_CHECKSUM,
                         _file_name(file) + struct.pack("<III", offset, start, length))


def loader_files(config: AcpiConfig) -> dict[str, bytes]:
    """The fw_cfg files QEMU gives SeaBIOS: tables, RSDP and the loader script.

    The tables are built at base 0, so every pointer holds its target's offset in
    ``etc/acpi/tables``; ADD_POINTER adds the address SeaBIOS allocated, and
    ADD_CHECKSUM then corrects each table's checksum byte.
    """
    image = build(config, 0)
    script = [allocate(RSDP_FILE, RSDP_ALIGN, ZONE_FSEG),
              allocate(TABLES_FILE, FACS_ALIGN, ZONE_HIGH)]
    for signature, offset, size, _target in image.pointers:
        script.append(add_pointer(TABLES_FILE, TABLES_FILE,
                                  image.offsets[signature] + offset, size))
    for signature, start in image.offsets.items():
        if signature != "FACS":
            length = struct.unpack_from("<I", image.blob, start + 4)[0]
            script.append(add_checksum(TABLES_FILE, start + HEADER_CHECKSUM_OFFSET, start,
                                       length))
    script.append(add_pointer(RSDP_FILE, TABLES_FILE, 16, 4))          # RSDT address
    if len(image.rsdp) == RSDP_V2.size:
        script.append(add_pointer(RSDP_FILE, TABLES_FILE, 24, 8))      # XSDT address
        script.append(add_checksum(RSDP_FILE, 8, 0, RSDP_V0.size))
        script.append(add_checksum(RSDP_FILE, 32, 0, RSDP_V2.size))
    else:
        script.append(add_checksum(RSDP_FILE, 8, 0, RSDP_V0.size))
    return {TABLES_FILE: bytes(image.blob), RSDP_FILE: bytes(image.rsdp),
            LOADER_FILE: b"".join(script)}
