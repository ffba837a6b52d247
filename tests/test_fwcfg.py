"""fw_cfg read through plain port accesses and DMA, the way SeaBIOS's qemu_cfg_init does."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices.fwcfg import (
    DMA_CTL_ERROR,
    DMA_CTL_READ,
    DMA_CTL_SELECT,
    DMA_CTL_SKIP,
    DMA_CTL_WRITE,
    E820_RAM,
    KEY_FILE_DIR,
    KEY_ID,
    KEY_WRITE_CHANNEL,
    FwCfg,
    FwCfgError,
    pc_items,
)
from devices.interfaces import BytearrayMemory

PORT_CTL, PORT_DATA, PORT_DMA_HIGH, PORT_DMA_LOW = 0x510, 0x511, 0x514, 0x518


class SeabiosLikeReader:
    """Reads fw_cfg with outw/inb only, in the order SeaBIOS's paravirt.c does."""

    def __init__(self, device: FwCfg) -> None:
        self.device = device

    def outw(self, port: int, value: int) -> None:
        self.device.write(port, 2, value)

    def inb(self, port: int) -> int:
        return self.device.read(port, 1)

    def read_entry(self, key: int, length: int) -> bytes:
        self.outw(PORT_CTL, key)
        return self.read(length)

    def read(self, length: int) -> bytes:
        return bytes(self.inb(PORT_DATA) for _ in range(length))

    def detect(self) -> bool:
        self.outw(PORT_CTL, 0)
        return self.read(4) == b"QEMU"

    def legacy(self) -> dict[str, int]:
        numa = struct.unpack("<Q", self.read_entry(0x0D, 8))[0]
        (max_cpus,) = struct.unpack("<H", self.read_entry(0x0F, 2))
        (acpi_count,) = struct.unpack("<H", self.read_entry(0x8000, 2))
        (smbios_count,) = struct.unpack("<H", self.read_entry(0x8001, 2))
        irq0_override = self.read_entry(0x8002, 1)[0]
        return {"numa": numa, "max_cpus": max_cpus, "acpi": acpi_count,
                "smbios": smbios_count, "irq0_override": irq0_override}

    def files(self) -> dict[str, tuple[int, int]]:
        (count,) = struct.unpack(">I", self.read_entry(0x19, 4))
        found = {}
        for _ in range(count):
            size, select, _reserved, name = struct.unpack(">IHH56s", self.read(64))
            found[name.rstrip(b"\0").decode()] = (select, size)
        return found

    def load(self, name: str) -> bytes:
        select, size = self.files()[name]
        return self.read_entry(select, size)


def pc_device(memory: BytearrayMemory | None = None) -> FwCfg:
    device = FwCfg(memory)
    pc_items(device, ram_size=128 << 20, cpus=1)
    return device


def test_seabios_detection_and_legacy_items_through_ports() -> None:
    reader = SeabiosLikeReader(pc_device())
    assert reader.detect()
    (ident,) = struct.unpack("<I", reader.read_entry(KEY_ID, 4))
    assert ident == 0x01                                    # no memory given: no DMA
    assert reader.legacy() == {"numa": 0, "max_cpus": 1, "acpi": 0, "smbios": 0,
                               "irq0_override": 1}
    assert struct.unpack("<Q", reader.read_entry(0x03, 8))[0] == 128 << 20
    assert struct.unpack("<H", reader.read_entry(0x05, 2))[0] == 1


def test_file_directory_and_e820_through_ports() -> None:
    device = pc_device()
    device.add_file("etc/acpi/rsdp", b"RSD PTR " + bytes(12))
    device.add_file("bootorder", b"/pci@i0cf8/ide@1,1/drive@0/disk@0\0")
    reader = SeabiosLikeReader(device)
    files = reader.files()
    assert sorted(files) == ["bootorder", "etc/acpi/rsdp", "etc/e820"]
    assert [files[name][0] for name in sorted(files)] == [0x20, 0x21, 0x22]
    e820 = reader.load("etc/e820")
    assert struct.unpack("<QQI", e820) == (0, 128 << 20, E820_RAM)
    assert reader.load("etc/acpi/rsdp").startswith(b"RSD PTR ")


def test_reads_past_the_end_and_of_unknown_keys_are_zero() -> None:
    reader = SeabiosLikeReader(pc_device())
    assert reader.read_entry(0x00, 6) == b"QEMU\0\0"
    assert reader.read_entry(0x1234, 3) == b"\0\0\0"
    reader.outw(PORT_CTL, 0)
    reader.device.write(PORT_DATA, 1, 0x55)                 # data-port writes are ignored
    assert reader.read(4) == b"QEMU"


def test_large_ram_splits_e820_above_4g() -> None:
    device = FwCfg()
    pc_items(device, ram_size=4 << 30)
    data = SeabiosLikeReader(device).load("etc/e820")
    assert [struct.unpack_from("<QQI", data, i) for i in (0, 20)] == [
        (0, 0xE0000000, E820_RAM), (1 << 32, (4 << 30) - 0xE0000000, E820_RAM)]


def test_file_names_are_checked() -> None:
    device = FwCfg()
    with pytest.raises(FwCfgError, match="longer than 55"):
        device.add_file("x" * 56, b"")
    device.add_file("etc/a", b"")
    with pytest.raises(FwCfgError, match="twice"):
        device.add_file("etc/a", b"")


# --- DMA (docs/specs/fw_cfg.rst "DMA interface") ---------------------------------------

DESCRIPTOR = 0x1000
BUFFER = 0x2000


def dma(device: FwCfg, memory: BytearrayMemory, control: int, length: int,
        address: int = BUFFER) -> int:
    memory.write(DESCRIPTOR, struct.pack(">IIQ", control, length, address))
    # SeaBIOS: outl(cpu_to_be32(address), 0x518) -- the port sees the big-endian bytes.
    device.write(PORT_DMA_HIGH, 4, 0)
    device.write(PORT_DMA_LOW, 4, int.from_bytes(DESCRIPTOR.to_bytes(4, "big"), "little"))
    return struct.unpack(">I", memory.read(DESCRIPTOR, 4))[0]


def test_dma_signature_id_and_select_read() -> None:
    memory = BytearrayMemory(0x10000)
    device = pc_device(memory)
    signature = device.read(PORT_DMA_HIGH, 4).to_bytes(4, "little") + device.read(
        PORT_DMA_LOW, 4).to_bytes(4, "little")
    assert signature == b"QEMU CFG"
    assert SeabiosLikeReader(device).read_entry(KEY_ID, 4) == b"\x03\0\0\0"
    assert dma(device, memory, KEY_FILE_DIR << 16 | DMA_CTL_SELECT | DMA_CTL_READ, 4) == 0
    assert struct.unpack(">I", memory.read(BUFFER, 4)) == (1,)
    assert dma(device, memory, DMA_CTL_SKIP, 8 + 3) == 0       # a header and "etc"
    assert dma(device, memory, DMA_CTL_READ, 48) == 0
    assert memory.read(BUFFER, 8) == b"/e820\0\0\0"       # rest of "etc/e820"
    assert dma(device, memory, 0x00 << 16 | DMA_CTL_SELECT | DMA_CTL_READ, 8) == 0
    assert memory.read(BUFFER, 8) == b"QEMU\0\0\0\0"       # zero fill past the end


def test_dma_write_only_to_writable_items() -> None:
    memory = BytearrayMemory(0x10000)
    device = FwCfg(memory)
    key = device.add_file("etc/vmgenid_addr", bytes(8), writable=True)
    memory.write(BUFFER, b"\x11" * 8)
    control = (key | KEY_WRITE_CHANNEL) << 16 | DMA_CTL_SELECT | DMA_CTL_WRITE
    assert dma(device, memory, control, 8) == 0
    assert bytes(device.files["etc/vmgenid_addr"].data) == b"\x11" * 8
    assert dma(device, memory, 0x00 << 16 | DMA_CTL_SELECT | DMA_CTL_WRITE, 4) == DMA_CTL_ERROR
    assert SeabiosLikeReader(device).read_entry(0, 4) == b"QEMU"
    device.select(KEY_ID)
    device.write(PORT_DMA_HIGH, 4, 0)
    device.write(PORT_DMA_LOW, 4, int.from_bytes((0x20000).to_bytes(4, "big"), "little"))
    assert device.selector == KEY_ID                        # descriptor beyond RAM: ignored


@given(st.dictionaries(st.text("abcdefgh/-.", min_size=1, max_size=55),
                       st.binary(max_size=300), max_size=12))
def test_every_file_reads_back_through_the_directory(files: dict[str, bytes]) -> None:
    device = FwCfg()
    for name, data in files.items():
        device.add_file(name, data)
    reader = SeabiosLikeReader(device)
    directory = reader.files()
    assert sorted(directory) == sorted(files)
    for name, data in files.items():
        assert reader.load(name) == data
