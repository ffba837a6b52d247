"""The Intel MultiProcessor Specification 1.4 tables for emu's PC.

Theory of operation
-------------------
(MP spec 1.4, chapter 4.)  Before ACPI, an OS found processors and interrupt
routing through the *MP floating pointer structure* (4.1): 16 bytes
"_MP_" on a 16-byte boundary in the first KiB of the EBDA, the last KiB of
base memory, or the BIOS ROM area 0xF0000-0xFFFFF, pointing at the *MP
configuration table* (4.2): a 44-byte "PCMP" header followed by entries sorted
by type -- processors (20 bytes), buses, I/O APICs, I/O interrupt assignments
and local interrupt assignments (8 bytes each).  Both structures sum to zero;
the extended table (4.3) is empty.  Linux still reads it when ACPI is off
(``acpi=off``) and older loaders and kernels look for it.

The contents follow what SeaBIOS builds for QEMU's ``pc`` machine
(``src/fw/mptable.c``), so the two agree with the MADT in ``firmware/acpi.py``:
one PCI bus (0) and the ISA bus (1), the I/O APIC, ISA IRQs 0-15 on the INTIN
of the same number except IRQ 0 (INTIN 2, the override), the cascade (2) and
the IRQs PCI devices share (5, 9, 10, 11: a PCI interrupt entry per device
pin describes those; emu has no PCI INTx device yet, so there are none), and
local assignments ExtINT -> LINT0 of the bootstrap processor, NMI -> LINT1 of
every processor.  A QEMU test compares this with SeaBIOS's table.
Feature byte 2 bit 7 (IMCR present) stays clear: the PIC and APIC modes are
chosen by programming the APICs (virtual-wire mode, spec 3.6.2.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .acpi import LEVEL_ACTIVE_HIGH, AcpiConfig, checksum_byte

FLOATING = struct.Struct("<4sIBBBBB3s")   # 16 bytes: feature bytes 1, 2 and 3-5
FLOATING_SIGNATURE = b"_MP_"
SPEC_REVISION = 4                            # MP spec 1.4
HEADER = struct.Struct("<4sHBB8s12sIHHIHBB")
HEADER_SIGNATURE = b"PCMP"
HEADER_CHECKSUM_OFFSET = 7
FLOATING_CHECKSUM_OFFSET = 10

PROCESSOR = struct.Struct("<BBBBII8s")
BUS = struct.Struct("<BB6s")
IO_APIC = struct.Struct("<BBBBI")
INTERRUPT = struct.Struct("<BBHBBBB")       # type, interrupt type, flags, bus, irq, apic, pin
ENTRY_PROCESSOR, ENTRY_BUS, ENTRY_IO_APIC, ENTRY_IO_INTERRUPT, ENTRY_LOCAL_INTERRUPT = range(5)
CPU_ENABLED, CPU_BOOTSTRAP = 0x01, 0x02
IOAPIC_ENABLED = 0x01
INT_FIXED, INT_NMI, INT_SMI, INT_EXTINT = 0, 1, 2, 3
ALL_LOCAL_APICS = 0xFF
BOOTSTRAP_APIC_ID = 0
PCI_BUS, ISA_BUS = 0, 1
CASCADE_IRQ = 2
LAPIC_VERSION = 0x14
IOAPIC_VERSION = 0x11


@dataclass(frozen=True)
class MpConfig:
    acpi: AcpiConfig = field(default_factory=AcpiConfig)
    cpu_signature: int = 0x00000663          # CPUID.1:EAX family/model/stepping
    cpu_features: int = 0x00000201           # CPUID.1:EDX (FPU, APIC); the board sets both
    oem_id: bytes = b"EMU     "
    product_id: bytes = b"EMU PC      "


def config_table(config: MpConfig) -> bytes:
    acpi = config.acpi
    entries = [PROCESSOR.pack(ENTRY_PROCESSOR, cpu, LAPIC_VERSION,
                              CPU_ENABLED | (CPU_BOOTSTRAP if cpu == 0 else 0),
                              config.cpu_signature, config.cpu_features, bytes(8))
               for cpu in range(acpi.cpus)]
    entries += [BUS.pack(ENTRY_BUS, PCI_BUS, b"PCI   "), BUS.pack(ENTRY_BUS, ISA_BUS, b"ISA   ")]
    entries.append(IO_APIC.pack(ENTRY_IO_APIC, acpi.ioapic_id, IOAPIC_VERSION, IOAPIC_ENABLED,
                                acpi.ioapic_address))
    overrides = {o.irq: o for o in acpi.overrides}
    for irq in range(16):
        override = overrides.get(irq)
        if irq == CASCADE_IRQ or (override and override.flags == LEVEL_ACTIVE_HIGH):
            continue  # the cascade, and the IRQs PCI devices share (routed as PCI entries)
        pin = override.gsi if override else irq
        entries.append(INTERRUPT.pack(ENTRY_IO_INTERRUPT, INT_FIXED, 0, ISA_BUS, irq,
                                      acpi.ioapic_id, pin))
    entries.append(INTERRUPT.pack(ENTRY_LOCAL_INTERRUPT, INT_EXTINT, 0, ISA_BUS, 0,
                                  BOOTSTRAP_APIC_ID, 0))
    entries.append(INTERRUPT.pack(ENTRY_LOCAL_INTERRUPT, INT_NMI, 0, ISA_BUS, 0,
                                  ALL_LOCAL_APICS, 1))
    body = b"".join(entries)
    data = bytearray(HEADER.pack(HEADER_SIGNATURE, HEADER.size + len(body), SPEC_REVISION, 0,
                                 config.oem_id, config.product_id, 0, 0, len(entries),
                                 acpi.lapic_address, 0, 0, 0) + body)
    data[HEADER_CHECKSUM_OFFSET] = checksum_byte(data)
    return bytes(data)


def floating_pointer(table_address: int) -> bytes:
    data = bytearray(FLOATING.pack(FLOATING_SIGNATURE, table_address, FLOATING.size // 16,
                                   SPEC_REVISION, 0, 0, 0, bytes(3)))
    data[FLOATING_CHECKSUM_OFFSET] = checksum_byte(data)
    return bytes(data)


def build(config: MpConfig, address: int) -> bytes:
    """Floating pointer at ``address`` (16-byte aligned) with the table right after it."""
    if address % 16:
        raise ValueError(f"MP floating pointer address {address:#x} is not 16-byte aligned")
    return floating_pointer(address + FLOATING.size) + config_table(config)

