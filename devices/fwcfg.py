"""QEMU's firmware configuration device (fw_cfg) at I/O ports 0x510-0x51B.

Theory of operation
-------------------
(QEMU ``docs/specs/fw_cfg.rst``; the keys are those of Linux's
``include/uapi/linux/qemu_fw_cfg.h``.)  fw_cfg hands the firmware a set of
read-only blobs chosen by a 16-bit *selector*:

* selector register, port 0x510, 16-bit little-endian write: selects an item
  and rewinds its data offset to 0.  Bit 14 asks for write access, bit 15
  picks the architecture-local keys (0x8000 ACPI tables, 0x8001 SMBIOS,
  0x8002 IRQ0 override, 0x8003 e820 reservations on x86);
* data register, port 0x511, byte reads: the next byte of the selected item;
  past its end (or for an unknown key) reads return 0;
* DMA address register, ports 0x514 (high dword) and 0x518 (low dword), both
  big-endian: writing the low half starts a transfer described by a 16-byte
  ``FWCfgDmaAccess`` in guest memory -- be32 control, be32 length, be64
  address.  Control bits: 0x01 error, 0x02 read, 0x04 skip, 0x08 select (key
  in bits 31:16), 0x10 write.  The device clears the control word when done
  (or leaves just the error bit).  Reads of the register return the signature
  "QEMU CFG"; ID bit 1 advertises DMA.

Key 0x00 returns "QEMU", 0x01 the interface ID, the numeric items (RAM size,
CPU counts, boot menu) are little-endian.  Named items ("files") take keys
from 0x20 up; key 0x19 is their directory: be32 count, then per file be32
size, be16 select, be16 reserved and a 56-byte NUL-padded name, sorted by
name.  :func:`pc_items` fills in what QEMU's ``pc`` machine offers and SeaBIOS
(``src/fw/paravirt.c``: ``qemu_cfg_init``, ``qemu_cfg_legacy``,
``qemu_cfg_e820``) reads: signature, ID, UUID, NUMA, boot menu, max CPUs, the
ACPI/SMBIOS legacy lists (empty), the IRQ0 override flag and ``etc/e820``
(QEMU's ``pc`` offers no ``etc/boot-cpus``: SeaBIOS then counts CPUs from CMOS
0x5F + 1).  ``tests/test_fwcfg_vs_qemu.py`` reads QEMU's own fw_cfg from a guest
ROM and compares.  ACPI tables for SeaBIOS arrive as the files
``etc/acpi/tables``, ``etc/acpi/rsdp`` and the loader script
``etc/table-loader`` (built in ``firmware/acpi.py``).

Writes through the data port are ignored, as in QEMU since 2.4; DMA writes
land only in items added as writable.  Not modelled: the MMIO variant (ARM),
kernel/initrd direct boot items.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

from .interfaces import GuestMemory

SELECTOR_PORT = 0x510
DATA_PORT = 0x511
DMA_PORT = 0x514            # 0x514 high dword, 0x518 low dword
DMA_PORT_LOW = 0x518

SIGNATURE = b"QEMU"
DMA_SIGNATURE = b"QEMU CFG"
ID_TRADITIONAL = 0x01
ID_DMA = 0x02

KEY_SIGNATURE = 0x00
KEY_ID = 0x01
KEY_UUID = 0x02
KEY_RAM_SIZE = 0x03
KEY_NOGRAPHIC = 0x04
KEY_NB_CPUS = 0x05
KEY_MACHINE_ID = 0x06
KEY_NUMA = 0x0D
KEY_BOOT_MENU = 0x0E
KEY_MAX_CPUS = 0x0F
KEY_FILE_DIR = 0x19
KEY_FILE_FIRST = 0x20
KEY_WRITE_CHANNEL = 0x4000
KEY_ARCH_LOCAL = 0x8000
KEY_ACPI_TABLES = KEY_ARCH_LOCAL + 0
KEY_SMBIOS_ENTRIES = KEY_ARCH_LOCAL + 1
KEY_IRQ0_OVERRIDE = KEY_ARCH_LOCAL + 2
KEY_E820_TABLE = KEY_ARCH_LOCAL + 3
KEY_MASK = 0xFFFF & ~KEY_WRITE_CHANNEL

DMA_CTL_ERROR = 0x01
DMA_CTL_READ = 0x02
DMA_CTL_SKIP = 0x04
DMA_CTL_SELECT = 0x08
DMA_CTL_WRITE = 0x10

FILE_NAME_SIZE = 56
FILE_ENTRY = struct.Struct(">IHH56s")       # size, select, reserved, name
DMA_ACCESS = struct.Struct(">IIQ")          # control, length, address
E820_ENTRY = struct.Struct("<QQI")          # address, length, type (QEMU's struct e820_entry)
E820_RAM, E820_RESERVED = 1, 2
BELOW_4G_RAM_MAX = 0xE0000000  # QEMU pc: RAM beyond this moves above 4 GiB


class FwCfgError(ValueError):
    """A configuration that cannot be offered (name too long, duplicate file)."""


@dataclass
class Item:
    data: bytearray
    writable: bool = False


class FwCfg:
    """The fw_cfg device (sans-IO): ports 0x510/0x511 and the DMA register 0x514-0x51B."""

    def __init__(self, memory: GuestMemory | None = None, *, dma: bool = True) -> None:
        self.memory = memory
        self.dma = dma and memory is not None
        self.items: dict[int, Item] = {}
        self.files: dict[str, Item] = {}
        self.add_item(KEY_SIGNATURE, SIGNATURE)
        self.add_item(KEY_ID, struct.pack("<I", ID_TRADITIONAL | (ID_DMA if self.dma else 0)))
        self._rebuild_directory()
        self.reset()

    def reset(self) -> None:
        self.selector = KEY_SIGNATURE
        self.offset = 0
        self.dma_high = 0

    def io_ports(self) -> Iterable[tuple[int, int]]:
        return [(SELECTOR_PORT, 2)] + ([(DMA_PORT, 8)] if self.dma else [])

    # --- contents -----------------------------------------------------------------
    def add_item(self, key: int, data: bytes, *, writable: bool = False) -> None:
        self.items[key & KEY_MASK] = Item(bytearray(data), writable)

    def add_file(self, name: str, data: bytes, *, writable: bool = False) -> int:
        """Offer ``data`` under ``name``; returns its selector key."""
        encoded = name.encode()
        if len(encoded) >= FILE_NAME_SIZE:
            raise FwCfgError(f"fw_cfg file name {name!r} is longer than 55 bytes")
        if name in self.files:
            raise FwCfgError(f"fw_cfg file {name!r} added twice")
        self.files[name] = Item(bytearray(data), writable)
        self._rebuild_directory()
        return self.file_key(name)

    def file_key(self, name: str) -> int:
        return KEY_FILE_FIRST + sorted(self.files).index(name)

    def _rebuild_directory(self) -> None:
        for key in [key for key in self.items if key >= KEY_FILE_FIRST and key < KEY_ARCH_LOCAL]:
            del self.items[key]
        directory = bytearray(struct.pack(">I", len(self.files)))
        for index, name in enumerate(sorted(self.files)):
            item = self.files[name]
            self.items[KEY_FILE_FIRST + index] = item
            directory += FILE_ENTRY.pack(len(item.data), KEY_FILE_FIRST + index, 0, name.encode())
        self.items[KEY_FILE_DIR] = Item(directory)

    def selected(self) -> Item | None:
        return self.items.get(self.selector & KEY_MASK)

    # --- the port interface -------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        if port == DATA_PORT:
            return int.from_bytes(self._take(size), "little")
        if DMA_PORT <= port < DMA_PORT + 8:
            start = port - DMA_PORT
            return int.from_bytes(DMA_SIGNATURE[start:start + size], "little")
        return 0  # the selector register is write-only

    def write(self, port: int, size: int, value: int) -> None:
        if port == SELECTOR_PORT and size >= 2:
            self.select(value & 0xFFFF)
        elif port == DMA_PORT and size == 4:
            self.dma_high = int.from_bytes(value.to_bytes(4, "little"), "big")
        elif port == DMA_PORT_LOW and size == 4:
            low = int.from_bytes(value.to_bytes(4, "little"), "big")
            self.run_dma(self.dma_high << 32 | low)
            self.dma_high = 0
        # Data-port writes are ignored (QEMU >= 2.4).

    def select(self, key: int) -> None:
        self.selector = key
        self.offset = 0

    def _take(self, length: int) -> bytes:
        item = self.selected()
        data = bytes(item.data[self.offset:self.offset + length]) if item else b""
        self.offset += length
        return data.ljust(length, b"\0")

    # --- DMA --------------------------------------------------------------------------
    def run_dma(self, descriptor_address: int) -> None:
        """Carry out the transfer whose FWCfgDmaAccess is at ``descriptor_address``."""
        if not self.dma or self.memory is None:
            return
        raw = self.memory.read(descriptor_address, DMA_ACCESS.size)
        if len(raw) != DMA_ACCESS.size:
            return  # descriptor outside guest memory: nothing to report it in
        control, length, address = DMA_ACCESS.unpack(raw)
        if control & DMA_CTL_SELECT:
            self.select(control >> 16)
        error = False
        if control & DMA_CTL_READ:
            self.memory.write(address, self._take(length))
        elif control & DMA_CTL_WRITE:
            error = not self._write_bytes(self.memory.read(address, length))
        elif control & DMA_CTL_SKIP:
            self.offset += length
        self.memory.write(descriptor_address, struct.pack(">I", DMA_CTL_ERROR if error else 0))

    def _write_bytes(self, data: bytes) -> bool:
        item = self.selected()
        if item is None or not item.writable or not self.selector & KEY_WRITE_CHANNEL:
            return False
        end = min(len(item.data), self.offset + len(data))
        item.data[self.offset:end] = data[:end - self.offset]
        self.offset += len(data)
        return True


def e820_table(entries: Iterable[tuple[int, int, int]]) -> bytes:
    """``etc/e820``: (address, length, type) records, QEMU's little-endian layout."""
    return b"".join(E820_ENTRY.pack(*entry) for entry in entries)


def pc_items(fw_cfg: FwCfg, *, ram_size: int, cpus: int = 1,
             e820: Iterable[tuple[int, int, int]] = (), boot_menu: bool = False) -> None:
    """Fill ``fw_cfg`` with the legacy items and files QEMU's ``pc`` offers SeaBIOS."""
    fw_cfg.add_item(KEY_UUID, bytes(16))
    fw_cfg.add_item(KEY_RAM_SIZE, struct.pack("<Q", ram_size))
    fw_cfg.add_item(KEY_NOGRAPHIC, struct.pack("<H", 0))
    fw_cfg.add_item(KEY_NB_CPUS, struct.pack("<H", cpus))
    fw_cfg.add_item(KEY_MAX_CPUS, struct.pack("<H", cpus))
    fw_cfg.add_item(KEY_BOOT_MENU, struct.pack("<H", int(boot_menu)))
    fw_cfg.add_item(KEY_NUMA, struct.pack("<Q", 0) + bytes(8 * cpus))  # no NUMA nodes
    fw_cfg.add_item(KEY_ACPI_TABLES, struct.pack("<H", 0))               # tables come as files
    fw_cfg.add_item(KEY_SMBIOS_ENTRIES, struct.pack("<H", 0))
    fw_cfg.add_item(KEY_IRQ0_OVERRIDE, struct.pack("<I", 1))             # PIT on GSI 2
    fw_cfg.add_item(KEY_E820_TABLE, struct.pack("<I", 0))                # etc/e820 has it all
    low = min(ram_size, BELOW_4G_RAM_MAX)
    e820 = list(e820) or [(0, low, E820_RAM)] + (
        [(1 << 32, ram_size - low, E820_RAM)] if ram_size > low else [])
    fw_cfg.add_file("etc/e820", e820_table(e820))
