"""An IDE/ATA channel with up to two hard disks on ``disks.Image`` objects.

Theory of operation
-------------------
A real IDE channel is a cable with two drive positions (device 0 "master",
device 1 "slave") sharing one register file decode: the *command block*
(8 ports at 0x1F0 / 0x170) and the *control block* (one port at 0x3F6 / 0x376).
Each drive keeps its own copy of the task file, but every host write lands in
both copies; only the drive picked by the DEV bit of the Device register answers
reads and executes commands (ATA/ATAPI-6, clause 6 and 7).

Registers (offset from the command block): 0 data, 1 error (read) / features
(write), 2 sector count, 3 LBA low (sector number), 4 LBA mid (cylinder low),
5 LBA high (cylinder high), 6 device/head, 7 status (read) / command (write).
The control block reads the *alternate status* (status without clearing the
interrupt) and writes *device control*: nIEN (bit 1) masks INTRQ, SRST (bit 2)
resets both drives while set, HOB (bit 7) makes reads of the count and LBA
registers return the previous ("high order byte") write, which is how LBA48
addresses are read back.  Any command block write clears HOB.

The model is sans-IO and instantaneous: a command finishes, or reaches its
first data block, inside the port write that issues it, so BSY is only ever
seen while SRST is held.  Commands are rows of :data:`COMMANDS` (opcode ->
name, protocol, flags, handler), the shape of QEMU's ``ide_cmd_table``.  The
four protocols are those of ATA-6 clause 9:

* non-data: the result is posted and INTRQ asserted;
* PIO data-in: each DRQ block (one sector, or the SET MULTIPLE block size for
  the MULTIPLE commands) is made ready and INTRQ asserted; after the host has
  read the last block the drive goes idle *without* an interrupt;
* PIO data-out: the first DRQ block is requested without an interrupt; INTRQ
  follows every block the host has written, the last one with the final status;
* DMA: the drive posts DRQ and waits for the bus-master engine
  (:mod:`devices.busmaster`), which moves the data through the ``dma_*``
  methods; INTRQ at completion.

Data moves between the image and the host in big pieces: PIO reads are staged
``PIO_CHUNK_SECTORS`` at a time, ``read_string``/``write_string`` move a whole
DRQ block per call by slicing, PIO writes are gathered and written per chunk
(and on abort, so every sector the host completed reaches the image).

Addressing: CHS through the *current* translation (INITIALIZE DEVICE
PARAMETERS really changes it, IDENTIFY words 53-58 follow), LBA28 (count 0 =
256) and LBA48 (count 0 = 65536).  Out-of-range or untranslatable addresses
get IDNF, unknown commands ABRT, writes to a read-only image ABRT before any
data is accepted (a fixed ATA disk has no write-protect status; ABRT is what
hypervisors report for a read-only backend), reported image errors UNC (reads) or
ABRT (writes, flush, trim): no :class:`disks.ImageError` escapes to the machine.

Faults: each :class:`AtaDrive` carries a :class:`devices.faults.FaultPlan`,
consulted once per read/write command: the sectors before the first planned bad
one move (whole DRQ blocks, PIO or DMA), then ERR posts with UNC/IDNF/ABRT (DF
too for a write fault) and that LBA in the task file, INTRQ as usual.  A plan's
busy time holds BSY and INTRQ back on the ``clock``; its power cut freezes the
drive after the Nth write command stored its data.  A *host* error from the
image is decided by the drive's ``rerror``/``werror`` policy (QEMU's: report,
ignore, stop; enospc) and announced through :attr:`AtaChannel.host_error_hook`.

Hard disks abort PACKET and IDENTIFY PACKET DEVICE, which is how SeaBIOS's
probe tells them from ATAPI devices.  An :class:`~devices.atapi.AtapiDrive`
(the SCSI side of a CD/DVD-ROM) sits on a unit with its own ATA command set
(ATA/ATAPI-6 clause 8, :data:`ATAPI_COMMANDS`): ATAPI signature (0x14/0xEB)
after reset, IDENTIFY PACKET DEVICE, DEVICE RESET, and PACKET (ATA/ATAPI-6
9.10-9.11): the 12-byte packet is requested without an interrupt (interrupt
reason CoD); a PIO data phase is DRQ blocks of at most the byte count limit the
host wrote to LBA mid/high (made even when it cuts the transfer; 0 aborts a
command that moves data), each with INTRQ, the byte count posted in LBA
mid/high and the reason IO (to the host) or 0 (from the host); with the DMA bit
in features the data goes through the bus-master engine instead; the end is
status with reason IO|CoD, ERR and the sense key in the error register's high
nibble for CHECK CONDITION.

Not modelled: timing, the standby timer (SLEEP is treated as STANDBY),
overlapped and queued ATAPI commands, security, SMART, queued commands.
An empty channel reads 0 from every register and an absent device 1 reads 0
from status and error, so BIOS probes skip it (what QEMU does and SeaBIOS's
``ata_detect`` relies on).
"""

from __future__ import annotations

import enum
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from disks import Geometry, Image, ImageError

from .atapi import PACKET_BYTES as ATAPI_PACKET_BYTES
from .atapi import AtapiDrive, DataIn
from .faults import DEFAULT_RERROR, DEFAULT_WERROR, FaultPlan, MediaError, error_action
from .geometry import CHS_CAPACITY_LIMIT, drive_geometry
from .identify import FIRMWARE_REVISION
from .identify import ata_string as _ata_string
from .interfaces import Clock, IrqLine

SECTOR = 512
PIO_CHUNK_SECTORS = 256            # image reads/writes per PIO command, at most 128 KiB
MAX_MULTIPLE = 16                  # IDENTIFY word 47: largest SET MULTIPLE block
LBA28_LIMIT = 1 << 28
LBA48_LIMIT = 1 << 48
DSM_MAX_BLOCKS = 8                 # IDENTIFY word 105: 512-byte blocks of TRIM ranges
DSM_ENTRY = struct.Struct("<Q")    # bits 0-47 LBA, 48-63 sector count

# Command block register offsets.
REG_DATA = 0
REG_ERROR = 1        # read; features on write
REG_COUNT = 2
REG_LBA_LOW = 3
REG_LBA_MID = 4
REG_LBA_HIGH = 5
REG_DEVICE = 6
REG_STATUS = 7       # read; command on write

# Status register bits.
BSY = 0x80
DRDY = 0x40
DF = 0x20
DSC = 0x10
DRQ = 0x08
ERR = 0x01
STATUS_READY = DRDY | DSC
STATUS_DATA = DRDY | DSC | DRQ
STATUS_ERROR = DRDY | ERR        # what QEMU and real drives post with an error

# Error register bits.
ERROR_UNC = 0x40
ERROR_IDNF = 0x10
ERROR_ABRT = 0x04
DIAGNOSTIC_PASSED = 0x01         # device 0 passed; device 1 passed or absent
DIAGNOSTIC_DEVICE1_FAILED = 0x80

# Device control bits.
CTRL_NIEN = 0x02
CTRL_SRST = 0x04
CTRL_HOB = 0x80

# Device register bits.
DEVICE_LBA = 0x40
DEVICE_DEV = 0x10
DEVICE_HEAD = 0x0F
DEVICE_ALWAYS_ONE = 0xA0         # obsolete bits 7 and 5 read as one

# Signatures left in count / LBA low / LBA mid / LBA high after reset or diagnostics.
ATA_SIGNATURE = (0x01, 0x01, 0x00, 0x00)
ATAPI_SIGNATURE = (0x01, 0x01, 0x14, 0xEB)
ABSENT_SIGNATURE = (0x01, 0x01, 0xFF, 0xFF)

# ATAPI: the interrupt reason in the count register, the features bits of PACKET.
REASON_FROM_HOST = 0x00         # data flows from the host
REASON_COMMAND = 0x01           # CoD: the host is to send the packet
REASON_TO_HOST = 0x02           # IO: data flows to the host
REASON_STATUS = REASON_COMMAND | REASON_TO_HOST
PACKET_FEATURE_DMA = 0x01
ATAPI_MAX_BYTE_LIMIT = 0xFFFE   # a limit of FFFFh means FFFEh (ATA/ATAPI-6 9.10)

# CHECK POWER MODE answers.
POWER_ACTIVE = 0xFF
POWER_STANDBY = 0x00


class Protocol(enum.Enum):
    NON_DATA = "non-data"
    PIO_IN = "PIO data-in"
    PIO_OUT = "PIO data-out"
    DMA = "DMA"


class CommandFailed(Exception):
    """Raised inside a handler: end the command with ERR and this error register."""

    def __init__(self, error: int) -> None:
        super().__init__(f"error register {error:#04x}")
        self.error = error


class TaskFile:
    """One drive's copy of the task file, with the LBA48 high-order bytes."""

    __slots__ = ("feature", "hob_feature", "count", "hob_count", "lba_low", "hob_lba_low",
                 "lba_mid", "hob_lba_mid", "lba_high", "hob_lba_high", "device")

    def __init__(self) -> None:
        self.feature = self.hob_feature = 0
        self.count = self.hob_count = 0
        self.lba_low = self.hob_lba_low = 0
        self.lba_mid = self.hob_lba_mid = 0
        self.lba_high = self.hob_lba_high = 0
        self.device = DEVICE_ALWAYS_ONE

    def lba28(self) -> int:
        return ((self.device & DEVICE_HEAD) << 24 | self.lba_high << 16
                | self.lba_mid << 8 | self.lba_low)

    def lba48(self) -> int:
        return (self.hob_lba_high << 40 | self.hob_lba_mid << 32 | self.hob_lba_low << 24
                | self.lba_high << 16 | self.lba_mid << 8 | self.lba_low)

    def count28(self) -> int:
        return self.count or 256

    def count48(self) -> int:
        return (self.hob_count << 8 | self.count) or 65536

    def set_lba28(self, lba: int) -> None:
        self.lba_low, self.lba_mid, self.lba_high = lba & 0xFF, lba >> 8 & 0xFF, lba >> 16 & 0xFF
        self.device = (self.device & ~DEVICE_HEAD) | (lba >> 24 & DEVICE_HEAD)

    def set_lba48(self, lba: int) -> None:
        self.lba_low, self.lba_mid, self.lba_high = lba & 0xFF, lba >> 8 & 0xFF, lba >> 16 & 0xFF
        self.hob_lba_low = lba >> 24 & 0xFF
        self.hob_lba_mid = lba >> 32 & 0xFF
        self.hob_lba_high = lba >> 40 & 0xFF

    def set_chs(self, cylinder: int, head: int, sector: int) -> None:
        self.lba_low, self.lba_mid, self.lba_high = sector, cylinder & 0xFF, cylinder >> 8 & 0xFF
        self.device = (self.device & ~DEVICE_HEAD) | head

    def set_signature(self, signature: tuple[int, int, int, int], *,
                      keep_select: bool = False) -> None:
        """Post a reset signature; the head bits clear, DEV too unless ``keep_select``."""
        self.count, self.lba_low, self.lba_mid, self.lba_high = signature
        self.device = DEVICE_ALWAYS_ONE | (self.device & DEVICE_DEV if keep_select else 0)


# Task file registers written through ports 1-5: (current attribute, HOB attribute).
_SHIFTED_REGISTERS = {
    REG_ERROR: ("feature", "hob_feature"),
    REG_COUNT: ("count", "hob_count"),
    REG_LBA_LOW: ("lba_low", "hob_lba_low"),
    REG_LBA_MID: ("lba_mid", "hob_lba_mid"),
    REG_LBA_HIGH: ("lba_high", "hob_lba_high"),
}


class AtaDrive:
    """An ATA hard disk: the image, its identity and the settings commands change.

    ``geometry`` is the default CHS translation (IDENTIFY words 1/3/6);
    ``translation`` the current one (words 54-56), ``None`` after an
    INITIALIZE DEVICE PARAMETERS the drive cannot honour.
    """

    def __init__(self, image: Image, *, model: str = "EMU HARDDISK",
                 serial: str | None = None, faults: FaultPlan | None = None,
                 rerror: str = DEFAULT_RERROR, werror: str = DEFAULT_WERROR) -> None:
        self.image = image
        self.model = model
        self.faults = FaultPlan() if faults is None else faults
        self.rerror = rerror            # host read errors: report / ignore / stop
        self.werror = werror            # host write errors: report / ignore / stop / enospc
        if serial is None:
            name = os.path.basename(str(image.path)).encode()
            serial = f"EMU{zlib.crc32(name):08X}"
        self.serial = serial
        self.sectors = image.size // SECTOR
        self.geometry: Geometry = drive_geometry(image)
        self.power_on_defaults()

    def power_on_defaults(self) -> None:
        """The settings after power-on or hardware reset."""
        self.translation: Geometry | None = self.geometry
        self.multiple = MAX_MULTIPLE            # current READ/WRITE MULTIPLE block (0 = off)
        self.write_cache = True
        self.read_look_ahead = True
        self.pio_mode = 4
        self.mwdma_mode: int | None = None
        self.udma_mode: int | None = 5
        self.power = POWER_ACTIVE

    @property
    def readonly(self) -> bool:
        return self.image.readonly

    @property
    def supports_trim(self) -> bool:
        return not self.image.readonly

    @property
    def lba28_sectors(self) -> int:
        return min(self.sectors, LBA28_LIMIT - 1)

    def set_translation(self, heads: int, sectors_per_track: int) -> None:
        """INITIALIZE DEVICE PARAMETERS: a new CHS translation, or none if unusable."""
        usable = min(self.sectors, CHS_CAPACITY_LIMIT)
        if not 1 <= sectors_per_track <= 255 or not 1 <= heads <= 16:
            self.translation = None
            return
        cylinders = min(0xFFFF, usable // (heads * sectors_per_track))
        self.translation = (Geometry(cylinders, heads, sectors_per_track)
                            if cylinders else None)

    def identify(self, unit: int) -> bytes:
        """The 512-byte IDENTIFY DEVICE data (ATA/ATAPI-6 table 27, plus ACS-2 TRIM words)."""
        words = [0] * 256
        geometry = self.geometry
        words[0] = 0x0040                         # fixed ATA device
        words[1] = geometry.cylinders
        words[2] = 0xC837                         # no spin-up needed, IDENTIFY complete
        words[3] = geometry.heads
        words[6] = geometry.sectors
        words[47] = 0x8000 | MAX_MULTIPLE
        words[49] = 0x0F00                        # IORDY, IORDY disable, LBA, DMA
        words[50] = 0x4000
        words[51] = 0x0200                        # obsolete PIO timing mode 2
        words[53] = 0x0006                        # words 64-70 and 88 valid
        current = self.translation
        if current is not None:
            words[53] |= 0x0001
            capacity = current.sector_count
            words[54], words[55], words[56] = current.cylinders, current.heads, current.sectors
            words[57], words[58] = capacity & 0xFFFF, capacity >> 16
        words[59] = 0x0100 | self.multiple
        words[60], words[61] = self.lba28_sectors & 0xFFFF, self.lba28_sectors >> 16
        words[63] = 0x0007 | ((0x0100 << self.mwdma_mode) if self.mwdma_mode is not None else 0)
        words[64] = 0x0003                        # PIO modes 3 and 4
        words[65] = words[66] = words[67] = words[68] = 120
        trim = self.supports_trim
        if trim:
            words[69] = 0x4020                    # deterministic, zeroed read after TRIM
        words[80] = 0x01F0                        # ATA/ATAPI-4 .. ATA8-ACS
        look_ahead = 0x0040 if self.read_look_ahead else 0
        cache = 0x0020 if self.write_cache else 0
        words[82] = 0x4000 | 0x0400 | 0x0040 | 0x0020 | 0x0008   # NOP, HPA, look-ahead, cache, PM
        words[83] = 0x4000 | 0x2000 | 0x1000 | 0x0400            # FLUSH EXT, FLUSH, LBA48
        words[84] = 0x4000
        words[85] = 0x4000 | 0x0400 | look_ahead | cache | 0x0008
        words[86] = 0x2000 | 0x1000 | 0x0400
        words[87] = 0x4000
        words[88] = 0x003F | ((0x0100 << self.udma_mode) if self.udma_mode is not None else 0)
        words[93] = 0x600B if unit == 0 else 0x6300   # 80-wire cable; reset results
        for index in range(4):
            words[100 + index] = self.sectors >> (16 * index) & 0xFFFF
        if trim:
            words[105] = DSM_MAX_BLOCKS
            words[169] = 0x0001
        ratio = max(1, self.image.sector_size // SECTOR)
        words[106] = 0x4000
        if ratio > 1 and ratio & (ratio - 1) == 0:
            words[106] |= 0x2000 | (ratio.bit_length() - 1)
        data = bytearray(struct.pack("<256H", *words))
        data[20:40] = _ata_string(self.serial, 20)
        data[46:54] = _ata_string(FIRMWARE_REVISION, 8)
        data[54:94] = _ata_string(self.model, 40)
        data[510] = 0xA5
        data[511] = -sum(data[:511]) & 0xFF       # integrity word: all bytes sum to zero
        return bytes(data)


@dataclass(frozen=True, slots=True)
class AtaCommand:
    """One row of the command table."""

    opcode: int
    name: str
    protocol: Protocol
    handler: str             # AtaChannel method, called as handler(unit, command)
    lba48: bool = False      # 48-bit address and count (HOB registers)
    multiple: bool = False   # DRQ blocks of the SET MULTIPLE size
    write: bool = False      # changes the medium


@dataclass(slots=True)
class DmaRequest:
    """A DMA command waiting for (or in the middle of) bus-master transfers."""

    to_memory: bool          # device -> memory (READ DMA)
    offset: int              # byte offset on the disk (READ/WRITE); unused for TRIM
    length: int              # bytes the command moves in all
    first_lba: int
    sectors: int
    command: AtaCommand
    chs: bool
    done: int = 0
    trim_ranges: bytearray | None = None
    fault: MediaError | None = None   # injected: the transfer stops at ``good`` bytes
    good: int = -1                    # bytes before the failing sector (-1: all)
    packet: bytes | None = None      # an ATAPI command's data phase: its packet,
    data_in: DataIn | None = None    # the data for the host (to_memory),
    received: bytearray | None = None   # or the data from the host so far

    @property
    def remaining(self) -> int:
        return self.length - self.done

    def allowed(self, length: int) -> int:
        """How many of the next ``length`` bytes may move before an injected fault."""
        length = min(length, self.remaining)
        return length if self.fault is None else max(0, min(length, self.good - self.done))


class _PioTransfer:
    """The data phase of a PIO command: one staged chunk, the current DRQ block."""

    __slots__ = ("command", "writing", "first_lba", "sectors", "next_lba", "left",
                 "block_sectors", "buffer", "pos", "block_end", "chs", "flushed_lba",
                 "on_done", "fault", "fault_stop")

    def __init__(self, command: AtaCommand, first_lba: int, sectors: int,
                 block_sectors: int, chs: bool) -> None:
        self.command = command
        self.writing = command.protocol is Protocol.PIO_OUT
        self.first_lba = first_lba
        self.sectors = sectors
        self.next_lba = first_lba      # reads: next sector to stage; writes: next to store
        self.flushed_lba = first_lba
        self.left = sectors            # sectors the host has still to move
        self.block_sectors = block_sectors
        self.buffer: bytes | bytearray = b""
        self.pos = 0
        self.block_end = 0
        self.chs = chs
        self.on_done: Callable[[], None] | None = None   # a one-block transfer's continuation
        self.fault: MediaError | None = None   # injected: fails when the transfer reaches it
        self.fault_stop = first_lba + sectors   # reads: the first LBA not to be staged


class _Unit:
    """One drive position on the channel: its task file, status and data phase."""

    __slots__ = ("index", "drive", "regs", "status", "error", "pio", "dma", "stopped", "log")

    def __init__(self, index: int) -> None:
        self.index = index
        self.drive: AtaDrive | AtapiDrive | None = None
        self.regs = TaskFile()
        self.status = 0
        self.error = 0
        self.pio: _PioTransfer | None = None
        self.dma: DmaRequest | None = None
        self.stopped = False           # a host error's "stop" policy (or a power cut) froze it
        self.log: dict[str, Any] | None = None   # the command's I/O-log entry, until it ends


COMMAND_LIST = [
    AtaCommand(0x00, "NOP", Protocol.NON_DATA, "_cmd_abort"),
    AtaCommand(0x06, "DATA SET MANAGEMENT", Protocol.DMA, "_cmd_data_set_management",
               lba48=True, write=True),
    AtaCommand(0x08, "DEVICE RESET", Protocol.NON_DATA, "_cmd_abort"),
    *(AtaCommand(opcode, "RECALIBRATE", Protocol.NON_DATA, "_cmd_recalibrate")
      for opcode in range(0x10, 0x20)),
    AtaCommand(0x20, "READ SECTORS", Protocol.PIO_IN, "_cmd_transfer"),
    AtaCommand(0x21, "READ SECTORS WITHOUT RETRY", Protocol.PIO_IN, "_cmd_transfer"),
    AtaCommand(0x24, "READ SECTORS EXT", Protocol.PIO_IN, "_cmd_transfer", lba48=True),
    AtaCommand(0x25, "READ DMA EXT", Protocol.DMA, "_cmd_transfer", lba48=True),
    AtaCommand(0x27, "READ NATIVE MAX ADDRESS EXT", Protocol.NON_DATA, "_cmd_read_native_max",
               lba48=True),
    AtaCommand(0x29, "READ MULTIPLE EXT", Protocol.PIO_IN, "_cmd_transfer", lba48=True,
               multiple=True),
    AtaCommand(0x30, "WRITE SECTORS", Protocol.PIO_OUT, "_cmd_transfer", write=True),
    AtaCommand(0x31, "WRITE SECTORS WITHOUT RETRY", Protocol.PIO_OUT, "_cmd_transfer",
               write=True),
    AtaCommand(0x34, "WRITE SECTORS EXT", Protocol.PIO_OUT, "_cmd_transfer", lba48=True,
               write=True),
    AtaCommand(0x35, "WRITE DMA EXT", Protocol.DMA, "_cmd_transfer", lba48=True, write=True),
    AtaCommand(0x37, "SET MAX ADDRESS EXT", Protocol.NON_DATA, "_cmd_set_max", lba48=True),
    AtaCommand(0x39, "WRITE MULTIPLE EXT", Protocol.PIO_OUT, "_cmd_transfer", lba48=True,
               multiple=True, write=True),
    AtaCommand(0x3C, "WRITE VERIFY", Protocol.PIO_OUT, "_cmd_transfer", write=True),
    AtaCommand(0x40, "READ VERIFY SECTORS", Protocol.NON_DATA, "_cmd_verify"),
    AtaCommand(0x41, "READ VERIFY SECTORS WITHOUT RETRY", Protocol.NON_DATA, "_cmd_verify"),
    AtaCommand(0x42, "READ VERIFY SECTORS EXT", Protocol.NON_DATA, "_cmd_verify", lba48=True),
    *(AtaCommand(opcode, "SEEK", Protocol.NON_DATA, "_cmd_seek") for opcode in range(0x70, 0x80)),
    AtaCommand(0x90, "EXECUTE DEVICE DIAGNOSTIC", Protocol.NON_DATA, "_cmd_diagnostic"),
    AtaCommand(0x91, "INITIALIZE DEVICE PARAMETERS", Protocol.NON_DATA,
               "_cmd_initialize_parameters"),
    AtaCommand(0x94, "STANDBY IMMEDIATE", Protocol.NON_DATA, "_cmd_standby"),
    AtaCommand(0x95, "IDLE IMMEDIATE", Protocol.NON_DATA, "_cmd_idle"),
    AtaCommand(0x96, "STANDBY", Protocol.NON_DATA, "_cmd_standby"),
    AtaCommand(0x97, "IDLE", Protocol.NON_DATA, "_cmd_idle"),
    AtaCommand(0x98, "CHECK POWER MODE", Protocol.NON_DATA, "_cmd_check_power_mode"),
    AtaCommand(0x99, "SLEEP", Protocol.NON_DATA, "_cmd_standby"),
    AtaCommand(0xA0, "PACKET", Protocol.NON_DATA, "_cmd_abort"),
    AtaCommand(0xA1, "IDENTIFY PACKET DEVICE", Protocol.NON_DATA, "_cmd_abort"),
    AtaCommand(0xC4, "READ MULTIPLE", Protocol.PIO_IN, "_cmd_transfer", multiple=True),
    AtaCommand(0xC5, "WRITE MULTIPLE", Protocol.PIO_OUT, "_cmd_transfer", multiple=True,
               write=True),
    AtaCommand(0xC6, "SET MULTIPLE MODE", Protocol.NON_DATA, "_cmd_set_multiple"),
    AtaCommand(0xC8, "READ DMA", Protocol.DMA, "_cmd_transfer"),
    AtaCommand(0xC9, "READ DMA WITHOUT RETRY", Protocol.DMA, "_cmd_transfer"),
    AtaCommand(0xCA, "WRITE DMA", Protocol.DMA, "_cmd_transfer", write=True),
    AtaCommand(0xCB, "WRITE DMA WITHOUT RETRY", Protocol.DMA, "_cmd_transfer", write=True),
    AtaCommand(0xE0, "STANDBY IMMEDIATE", Protocol.NON_DATA, "_cmd_standby"),
    AtaCommand(0xE1, "IDLE IMMEDIATE", Protocol.NON_DATA, "_cmd_idle"),
    AtaCommand(0xE2, "STANDBY", Protocol.NON_DATA, "_cmd_standby"),
    AtaCommand(0xE3, "IDLE", Protocol.NON_DATA, "_cmd_idle"),
    AtaCommand(0xE5, "CHECK POWER MODE", Protocol.NON_DATA, "_cmd_check_power_mode"),
    AtaCommand(0xE6, "SLEEP", Protocol.NON_DATA, "_cmd_standby"),
    AtaCommand(0xE7, "FLUSH CACHE", Protocol.NON_DATA, "_cmd_flush"),
    AtaCommand(0xEA, "FLUSH CACHE EXT", Protocol.NON_DATA, "_cmd_flush"),
    AtaCommand(0xEC, "IDENTIFY DEVICE", Protocol.PIO_IN, "_cmd_identify"),
    AtaCommand(0xEF, "SET FEATURES", Protocol.NON_DATA, "_cmd_set_features"),
    AtaCommand(0xF8, "READ NATIVE MAX ADDRESS", Protocol.NON_DATA, "_cmd_read_native_max"),
    AtaCommand(0xF9, "SET MAX ADDRESS", Protocol.NON_DATA, "_cmd_set_max"),
]
COMMANDS: dict[int, AtaCommand] = {command.opcode: command for command in COMMAND_LIST}
UNKNOWN_COMMAND = AtaCommand(-1, "unknown", Protocol.NON_DATA, "_cmd_abort")

# An ATAPI device's own ATA command set (ATA/ATAPI-6 clause 8: the PACKET feature set).
ATAPI_COMMAND_LIST = [
    AtaCommand(0x00, "NOP", Protocol.NON_DATA, "_cmd_abort"),
    AtaCommand(0x08, "DEVICE RESET", Protocol.NON_DATA, "_atapi_device_reset"),
    AtaCommand(0x90, "EXECUTE DEVICE DIAGNOSTIC", Protocol.NON_DATA, "_cmd_diagnostic"),
    AtaCommand(0xA0, "PACKET", Protocol.PIO_OUT, "_atapi_packet"),
    AtaCommand(0xA1, "IDENTIFY PACKET DEVICE", Protocol.PIO_IN, "_atapi_identify"),
    AtaCommand(0xE0, "STANDBY IMMEDIATE", Protocol.NON_DATA, "_atapi_accept"),
    AtaCommand(0xE1, "IDLE IMMEDIATE", Protocol.NON_DATA, "_atapi_accept"),
    AtaCommand(0xE5, "CHECK POWER MODE", Protocol.NON_DATA, "_atapi_check_power_mode"),
    AtaCommand(0xE6, "SLEEP", Protocol.NON_DATA, "_atapi_accept"),
    AtaCommand(0xEC, "IDENTIFY DEVICE", Protocol.NON_DATA, "_atapi_refuse_identify"),
    AtaCommand(0xEF, "SET FEATURES", Protocol.NON_DATA, "_atapi_set_features"),
]
ATAPI_COMMANDS: dict[int, AtaCommand] = {command.opcode: command
                                         for command in ATAPI_COMMAND_LIST}

# SET FEATURES subcommands (features register) -> AtaChannel method.
SET_FEATURES = {
    0x02: "_feature_write_cache_on",
    0x82: "_feature_write_cache_off",
    0x03: "_feature_transfer_mode",
    0x55: "_feature_look_ahead_off",
    0xAA: "_feature_look_ahead_on",
    0x66: "_feature_accept",        # disable reverting to power-on defaults
    0xCC: "_feature_accept",        # enable reverting to power-on defaults
}

# SET FEATURES 03h count register: mode-class bits -> (attribute, highest mode).
TRANSFER_MODE_CLASSES = {
    0x08: ("pio_mode", 4),
    0x20: ("mwdma_mode", 2),
    0x40: ("udma_mode", 5),
}


class AtaChannel:
    """One IDE channel: command block at ``command_base``, control at ``control_base``.

    The bus-master engine attaches through :attr:`dma_ready_hook` (called when
    the selected drive posts a DMA request) and :attr:`interrupt_hook` (called
    whenever a drive asserts INTRQ, which sets the PIIX interrupt status bit).

    The machine listens through :attr:`command_hook` (``(unit, entry)`` once per
    command that ended: the I/O log), :attr:`host_error_hook` (``(unit, op, lba,
    error, action)`` for an image error, after the drive's rerror/werror policy
    chose the action) and :attr:`power_cut_hook` (``(unit)``: a fault plan cut the
    power).  With a ``clock``, a fault plan's busy time keeps BSY set and holds
    INTRQ back until the clock passes :attr:`busy_until` (:meth:`update`).
    """

    def __init__(self, command_base: int, control_base: int, irq: IrqLine,
                 clock: Clock | None = None) -> None:
        self.command_base = command_base
        self.control_base = control_base
        self.irq = irq
        self.clock = clock
        self.units = (_Unit(0), _Unit(1))
        self.selected = self.units[0]
        self.control = 0
        self.irq_pending = False
        self.busy_until = 0            # virtual ns; 0 = not busy
        self.irq_deferred = False      # INTRQ to assert when the busy time ends
        self.dma_ready_hook: Callable[[], None] | None = None
        self.interrupt_hook: Callable[[], None] | None = None
        self.command_hook: Callable[[int, dict[str, Any]], None] | None = None
        self.host_error_hook: Callable[[int, str, int, BaseException, str], None] | None = None
        self.power_cut_hook: Callable[[int], None] | None = None
        self._dma_buffer = bytearray()
        self._data_port = command_base + REG_DATA
        # Per-port handlers with the bus's own signatures (see :meth:`port_handlers`).
        self._reads: dict[int, Callable[[int, int], int]] = {
            command_base + REG_DATA: self._read_data,
            command_base + REG_ERROR: self._read_error,
            command_base + REG_COUNT:
                lambda port, size: self._read_shifted("count", "hob_count"),
            command_base + REG_LBA_LOW:
                lambda port, size: self._read_shifted("lba_low", "hob_lba_low"),
            command_base + REG_LBA_MID:
                lambda port, size: self._read_shifted("lba_mid", "hob_lba_mid"),
            command_base + REG_LBA_HIGH:
                lambda port, size: self._read_shifted("lba_high", "hob_lba_high"),
            command_base + REG_DEVICE: self._read_device,
            command_base + REG_STATUS: self._read_status,
            control_base: self._read_alt_status,
        }
        self._writes: dict[int, Callable[[int, int, int], None]] = {
            command_base + REG_DATA:
                lambda port, size, value: self._write_data(value.to_bytes(size, "little")),
            **{command_base + offset: self._task_file_writer(*names)
               for offset, names in _SHIFTED_REGISTERS.items()},
            command_base + REG_DEVICE:
                lambda port, size, value: self._write_device(value & 0xFF),
            command_base + REG_STATUS:
                lambda port, size, value: self._write_command(value & 0xFF),
            control_base: lambda port, size, value: self._write_control(value & 0xFF),
        }

    # --- wiring -------------------------------------------------------------
    def attach(self, unit: int, drive: AtaDrive | AtapiDrive) -> None:
        if unit not in (0, 1):
            raise ValueError(f"unit {unit} is not 0 (master) or 1 (slave)")
        self.units[unit].drive = drive
        self._reset_unit(self.units[unit])

    def io_ports(self) -> list[tuple[int, int]]:
        return [(self.command_base, 8), (self.control_base, 1)]

    def port_handlers(self) -> tuple[dict[int, Callable[[int, int], int]],
                                     dict[int, Callable[[int, int, int], None]]]:
        """Per-port read and write functions, each what :meth:`read`/:meth:`write` do
        for its port (the bus calls them directly; ports absent here: all ones/ignored)."""
        return self._reads, self._writes

    def reset(self) -> None:
        """Hardware reset (machine reset): every drive back to power-on settings."""
        for unit in self.units:
            if unit.drive is not None:
                unit.drive.power_on_defaults()
        self.control = 0
        self._software_reset_done()

    @property
    def _empty(self) -> bool:
        return self.units[0].drive is None and self.units[1].drive is None

    # --- busy time (fault plans) ------------------------------------------------
    def _still_busy(self) -> bool:
        """Is a command's busy time running?  Ends it (and raises INTRQ) once passed."""
        assert self.clock is not None
        if self.clock.now_ns() < self.busy_until:
            return True
        self.busy_until = 0
        if self.irq_deferred:
            self.irq_deferred = False
            self._assert_irq()
        return False

    def update(self) -> None:
        """Timer service: let a busy time that has passed raise its interrupt."""
        if self.busy_until:
            self._still_busy()

    def next_deadline_ns(self) -> int | None:
        """When a held-back interrupt is due (a HLT waits for it), else None."""
        return self.busy_until if self.busy_until and self.irq_deferred else None

    # --- interrupt line -----------------------------------------------------
    def _assert_irq(self) -> None:
        if self.busy_until and self._still_busy():
            self.irq_deferred = True
            return
        self.irq_pending = True
        if not self.control & CTRL_NIEN:
            self.irq.set(True)
            if self.interrupt_hook is not None:
                self.interrupt_hook()

    def _clear_irq(self) -> None:
        if self.irq_pending:
            self.irq_pending = False
            self.irq.set(False)

    # --- port reads ---------------------------------------------------------
    def read(self, port: int, size: int) -> int:
        handler = self._reads.get(port)
        if handler is None:
            return (1 << (8 * size)) - 1
        return handler(port, size)

    def _status_of(self, unit: _Unit) -> int:
        return unit.status if unit.drive is not None else 0

    def _read_status(self, port: int, size: int) -> int:
        if self.busy_until and self._still_busy():
            return BSY
        if self.irq_pending:
            self._clear_irq()
        unit = self.selected   # (no drive there, or none at all: 0)
        return unit.status if unit.drive is not None else 0

    def _read_alt_status(self, port: int, size: int) -> int:
        if self.busy_until and self._still_busy():
            return BSY
        unit = self.selected
        return unit.status if unit.drive is not None else 0

    def _read_error(self, port: int, size: int) -> int:
        unit = self.selected
        return unit.error if unit.drive is not None else 0

    def _read_shifted(self, current: str, high: str) -> int:
        if self._empty:
            return 0
        return getattr(self.selected.regs, high if self.control & CTRL_HOB else current)

    def _read_device(self, port: int, size: int) -> int:
        return 0 if self._empty else self.selected.regs.device

    def _read_data(self, port: int, size: int) -> int:
        pio = self.selected.pio
        if pio is None or pio.writing:
            return 0
        start = pio.pos
        end = min(start + size, pio.block_end)   # a wide read never spills into the next block
        value = int.from_bytes(pio.buffer[start:end], "little")
        pio.pos = end
        if end >= pio.block_end:
            self._pio_in_block_done(self.selected, pio)
        return value

    def read_string(self, port: int, size: int, count: int) -> bytes:
        if port == self._data_port:
            pio = self.selected.pio
            if pio is not None and not pio.writing:
                start = pio.pos
                items = min(count, (pio.block_end - start) // size) or 1
                end = min(start + items * size, pio.block_end)
                data = pio.buffer[start:end]
                pio.pos = end
                if end >= pio.block_end:
                    self._pio_in_block_done(self.selected, pio)
                return bytes(data).ljust(items * size, b"\0")
        return b"".join(self.read(port, size).to_bytes(size, "little") for _ in range(count))

    # --- port writes --------------------------------------------------------
    def write(self, port: int, size: int, value: int) -> None:
        handler = self._writes.get(port)
        if handler is not None:
            handler(port, size, value)

    def write_string(self, port: int, size: int, data: bytes | memoryview) -> int:
        count = len(data) // size
        if port != self._data_port:
            for index in range(count):
                self.write(port, size, int.from_bytes(data[index * size:(index + 1) * size],
                                                      "little"))
            return count
        pio = self.selected.pio
        if pio is None or not pio.writing:
            return count
        items = min(count, (pio.block_end - pio.pos) // size) or 1
        self._write_data(data[:items * size])
        return items

    def _busy(self) -> bool:
        return bool(self.control & CTRL_SRST)

    def _task_file_writer(self, current: str, high: str) -> Callable[[int, int, int], None]:
        """A port handler for one shifted register: the old value moves to its HOB copy."""
        task_files = [unit.regs for unit in self.units]

        def write(port: int, size: int, value: int) -> None:
            if self.control & CTRL_SRST:
                return
            self.control &= ~CTRL_HOB
            for regs in task_files:
                setattr(regs, high, getattr(regs, current))
                setattr(regs, current, value & 0xFF)
        return write

    def _write_device(self, value: int) -> None:
        if self._busy():
            return
        self.control &= ~CTRL_HOB
        for unit in self.units:
            unit.regs.device = value | DEVICE_ALWAYS_ONE
        self.selected = self.units[1 if value & DEVICE_DEV else 0]

    def _write_control(self, value: int) -> None:
        was_resetting = self.control & CTRL_SRST
        self.control = value
        if value & CTRL_SRST and not was_resetting:
            self._software_reset_begin()
        elif was_resetting and not value & CTRL_SRST:
            self._software_reset_done()
        if self.irq_pending:
            self.irq.set(not value & CTRL_NIEN)

    def _write_data(self, data: bytes | memoryview) -> None:
        unit = self.selected
        pio = unit.pio
        if pio is None or not pio.writing:
            return
        buffer = pio.buffer
        assert isinstance(buffer, bytearray)
        start = pio.pos
        end = min(start + len(data), pio.block_end)
        buffer[start:end] = data[:end - start]
        pio.pos = end
        if end >= pio.block_end:
            self._pio_out_block_done(unit, pio)

    # --- reset --------------------------------------------------------------
    def _software_reset_begin(self) -> None:
        for unit in self.units:
            self._abandon(unit)
            unit.status = BSY | DSC
        self._clear_irq()

    def _software_reset_done(self) -> None:
        """SRST released: signatures, diagnostic codes, device 0 selected (ATA-6 9.2)."""
        for unit in self.units:
            self._abandon(unit)
            self._reset_unit(unit)
        self.control &= ~CTRL_HOB
        self.selected = self.units[0]
        self.busy_until = 0
        self.irq_deferred = False
        self._clear_irq()

    def _reset_unit(self, unit: _Unit, *, keep_select: bool = False) -> None:
        unit.stopped = False
        if unit.drive is None:
            unit.regs.set_signature(ABSENT_SIGNATURE, keep_select=keep_select)
            unit.status = unit.error = 0
            return
        atapi = isinstance(unit.drive, AtapiDrive)
        unit.regs.set_signature(ATAPI_SIGNATURE if atapi else ATA_SIGNATURE,
                                keep_select=keep_select)
        unit.status = 0 if atapi else STATUS_READY   # ATAPI devices leave DRDY clear
        unit.error = DIAGNOSTIC_PASSED

    def _abandon(self, unit: _Unit) -> None:
        """Stop a data phase; sectors the host already wrote still reach the image."""
        pio = unit.pio
        if pio is not None and pio.writing and isinstance(unit.drive, AtaDrive) \
                and pio.command.handler == "_cmd_transfer":
            done = pio.sectors - pio.left - (pio.flushed_lba - pio.first_lba)
            if pio.fault is not None:
                done = min(done, pio.fault.lba - pio.flushed_lba)
            if done > 0 and not unit.drive.faults.powered_off:
                try:
                    unit.drive.image.write(pio.flushed_lba * SECTOR,
                                           memoryview(pio.buffer)[:done * SECTOR])
                except (ImageError, OSError):
                    pass  # the command is being abandoned: there is no one to tell
        unit.pio = None
        unit.dma = None

    # --- command dispatch ---------------------------------------------------
    def _write_command(self, opcode: int) -> None:
        if self._busy():
            return
        self.control &= ~CTRL_HOB
        unit = self.selected
        drive = unit.drive
        table = ATAPI_COMMANDS if isinstance(drive, AtapiDrive) else COMMANDS
        command = table.get(opcode, UNKNOWN_COMMAND)
        if drive is None and command.handler != "_cmd_diagnostic":
            return  # an absent device ignores commands
        if isinstance(drive, AtaDrive) and (unit.stopped or drive.faults.powered_off):
            return  # frozen by a "stop" policy, or without power: nothing answers
        self._clear_irq()
        self._abandon(unit)
        if isinstance(drive, AtaDrive):
            if drive.power != POWER_ACTIVE \
                    and command.handler in ("_cmd_transfer", "_cmd_verify"):
                drive.power = POWER_ACTIVE
            if drive.faults.busy_ns and self.clock is not None:
                self.busy_until = self.clock.now_ns() + drive.faults.busy_ns
        if self.command_hook is not None:
            unit.log = self._log_entry(unit, command)
        try:
            getattr(self, command.handler)(unit, command)
        except CommandFailed as failure:
            self._fail(unit, failure.error)

    def _fail(self, unit: _Unit, error: int, *, device_fault: bool = False) -> None:
        if unit.stopped:
            return
        unit.pio = None
        unit.dma = None
        unit.status = STATUS_ERROR | (DF if device_fault else 0)
        unit.error = error
        self._assert_irq()
        if unit.log is not None:
            self._log_end(unit)

    def _complete(self, unit: _Unit) -> None:
        if unit.stopped:
            return
        unit.status = STATUS_READY
        unit.error = 0
        self._assert_irq()
        if unit.log is not None:
            self._log_end(unit)

    # --- the I/O log ----------------------------------------------------------
    def _log_entry(self, unit: _Unit, command: AtaCommand) -> dict[str, Any]:
        """What the command asks for, read from the task file before it runs."""
        entry: dict[str, Any] = {
            "time_ns": self.clock.now_ns() if self.clock is not None else 0,
            "opcode": command.opcode if command.opcode >= 0 else unit.regs.feature,
            "command": command.name, "lba": None, "count": None}
        if command.handler in ("_cmd_transfer", "_cmd_verify") \
                and isinstance(unit.drive, AtaDrive):
            regs = unit.regs
            if command.lba48:
                entry["lba"], entry["count"] = regs.lba48(), regs.count48()
            elif regs.device & DEVICE_LBA:
                entry["lba"], entry["count"] = regs.lba28(), regs.count28()
            else:
                try:
                    entry["lba"] = self._chs_to_lba(unit.drive, regs)
                except CommandFailed:
                    pass
                entry["count"] = regs.count28()
        return entry

    def _log_end(self, unit: _Unit, result: str | None = None) -> None:
        """The command ended: hand its entry, with the outcome, to the log."""
        entry, unit.log = unit.log, None
        if entry is None or self.command_hook is None:
            return
        entry["result"] = result or ("error" if unit.status & ERR else "ok")
        entry["status"] = unit.status
        entry["error"] = unit.error if unit.status & ERR else 0   # meaningful only with ERR
        if unit.status & ERR and entry["lba"] is not None:
            regs = unit.regs
            lba48 = entry["opcode"] in COMMANDS and COMMANDS[entry["opcode"]].lba48
            entry["error_lba"] = regs.lba48() if lba48 else regs.lba28()
        self.command_hook(unit.index, entry)

    # --- host I/O errors and power cuts -------------------------------------------
    def _host_error(self, unit: _Unit, op: str, lba: int, error: BaseException) -> str:
        """An image read/write/flush failed: the drive's policy says what the guest sees.

        "report": the caller posts the error; "ignore": the caller carries on as if it
        worked; "stop": the drive freezes busy (the machine stops the run).
        """
        drive = self._drive(unit)
        action = error_action(drive.rerror if op == "read" else drive.werror, error)
        if action == "stop":
            self._freeze(unit, "stopped")
        if self.host_error_hook is not None:
            self.host_error_hook(unit.index, op, lba, error, action)
        return action

    def _freeze(self, unit: _Unit, result: str) -> None:
        unit.stopped = True
        unit.pio = None
        unit.dma = None
        unit.status = BSY | DRDY
        self._log_end(unit, result)

    def _stored_write(self, unit: _Unit) -> bool:
        """A write command's data is on the image: count it; False if the power went."""
        if not self._drive(unit).faults.count_write():
            return True
        self._freeze(unit, "power-cut")
        if self.power_cut_hook is not None:
            self.power_cut_hook(unit.index)
        return False

    @staticmethod
    def _drive(unit: _Unit) -> AtaDrive:
        assert isinstance(unit.drive, AtaDrive)
        return unit.drive

    # --- addressing ---------------------------------------------------------
    def _address(self, unit: _Unit, command: AtaCommand) -> tuple[int, int, bool]:
        """(first LBA, sector count, CHS?) from the task file; IDNF if unreachable."""
        drive = self._drive(unit)
        regs = unit.regs
        if command.lba48:
            lba, count, limit, chs = regs.lba48(), regs.count48(), drive.sectors, False
        elif regs.device & DEVICE_LBA:
            lba, count, limit, chs = regs.lba28(), regs.count28(), drive.lba28_sectors, False
        else:
            lba, count, chs = self._chs_to_lba(drive, regs), regs.count28(), True
            limit = drive.translation.sector_count if drive.translation else 0
            limit = min(limit, drive.sectors)
        if lba + count > limit:
            raise CommandFailed(ERROR_IDNF)
        return lba, count, chs

    @staticmethod
    def _chs_to_lba(drive: AtaDrive, regs: TaskFile) -> int:
        translation = drive.translation
        if translation is None:
            raise CommandFailed(ERROR_IDNF)
        cylinder = regs.lba_high << 8 | regs.lba_mid
        head = regs.device & DEVICE_HEAD
        sector = regs.lba_low
        if (not 1 <= sector <= translation.sectors or head >= translation.heads
                or cylinder >= translation.cylinders):
            raise CommandFailed(ERROR_IDNF)
        return (cylinder * translation.heads + head) * translation.sectors + sector - 1

    def _post_address(self, unit: _Unit, lba48: bool, chs: bool, lba: int) -> None:
        """Leave ``lba`` in the task file in the command's own addressing form."""
        regs = unit.regs
        translation = self._drive(unit).translation
        if chs and translation is not None:
            per_cylinder = translation.heads * translation.sectors
            cylinder, rest = divmod(lba, per_cylinder)
            head, sector = divmod(rest, translation.sectors)
            regs.set_chs(cylinder, head, sector + 1)
        elif lba48:
            regs.set_lba48(lba)
        else:
            regs.set_lba28(lba)

    def _fail_at(self, unit: _Unit, lba48: bool, chs: bool, lba: int, error: int) -> None:
        self._post_address(unit, lba48, chs, lba)
        self._fail(unit, error)

    def _fail_media(self, unit: _Unit, lba48: bool, chs: bool, fault: MediaError) -> None:
        """An injected media error: its LBA in the task file, its bits in the registers."""
        self._post_address(unit, lba48, chs, fault.lba)
        self._fail(unit, fault.error, device_fault=fault.device_fault)

    # --- read/write commands ------------------------------------------------
    def _cmd_transfer(self, unit: _Unit, command: AtaCommand) -> None:
        drive = self._drive(unit)
        if command.multiple and drive.multiple == 0:
            raise CommandFailed(ERROR_ABRT)
        if command.write and drive.readonly:
            raise CommandFailed(ERROR_ABRT)
        lba, count, chs = self._address(unit, command)
        fault = None
        if drive.faults.rules:
            fault = drive.faults.write_fault(lba, count) if command.write \
                else drive.faults.read_fault(lba, count)
        block = drive.multiple if command.multiple else 1
        if fault is not None and not command.write:
            # Reads: only whole DRQ blocks before the bad sector reach the host.
            good = (fault.lba - lba) // block * block
            if not good:
                self._fail_media(unit, command.lba48, chs, fault)
                return
        if command.protocol is Protocol.DMA:
            request = DmaRequest(
                to_memory=not command.write, offset=lba * SECTOR, length=count * SECTOR,
                first_lba=lba, sectors=count, command=command, chs=chs)
            if fault is not None:
                request.fault, request.good = fault, (fault.lba - lba) * SECTOR
            self._start_dma(unit, request)
            return
        pio = _PioTransfer(command, lba, count, block, chs)
        if fault is not None:
            pio.fault = fault
            pio.fault_stop = lba + (fault.lba - lba) // block * block
        unit.pio = pio
        if pio.writing:
            self._pio_out_next_block(unit, pio, interrupt=False)
        else:
            self._pio_in_next_block(unit, pio)

    def _pio_in_next_block(self, unit: _Unit, pio: _PioTransfer) -> None:
        if pio.pos >= len(pio.buffer):
            chunk = min(pio.left, max(pio.block_sectors,
                                      PIO_CHUNK_SECTORS // pio.block_sectors * pio.block_sectors),
                        pio.fault_stop - pio.next_lba)
            if pio.fault is not None and chunk <= 0:
                self._fail_media(unit, pio.command.lba48, pio.chs, pio.fault)
                return
            try:
                pio.buffer = self._drive(unit).image.read(pio.next_lba * SECTOR, chunk * SECTOR)
            except (ImageError, OSError) as error:
                action = self._host_error(unit, "read", pio.next_lba, error)
                if action == "report":
                    self._fail_at(unit, pio.command.lba48, pio.chs, pio.next_lba, ERROR_UNC)
                if action != "ignore":
                    return
                pio.buffer = bytes(chunk * SECTOR)
            pio.next_lba += chunk
            pio.pos = 0
        pio.block_end = pio.pos + min(pio.block_sectors, pio.left) * SECTOR
        unit.status = STATUS_DATA
        self._assert_irq()

    def _pio_in_block_done(self, unit: _Unit, pio: _PioTransfer) -> None:
        if pio.on_done is not None:
            unit.pio = None
            pio.on_done()
            return
        block = min(pio.block_sectors, pio.left)
        pio.left -= block
        if pio.left:
            self._pio_in_next_block(unit, pio)
            return
        unit.pio = None
        unit.status = STATUS_READY
        if pio.command.handler == "_cmd_transfer":
            self._post_address(unit, pio.command.lba48, pio.chs, pio.first_lba + pio.sectors - 1)
            unit.regs.count = unit.regs.hob_count = 0
        if unit.log is not None:
            self._log_end(unit)

    def _pio_out_next_block(self, unit: _Unit, pio: _PioTransfer, *, interrupt: bool) -> None:
        if pio.pos >= len(pio.buffer):
            chunk = min(pio.left, max(pio.block_sectors,
                                      PIO_CHUNK_SECTORS // pio.block_sectors * pio.block_sectors))
            pio.buffer = bytearray(chunk * SECTOR)
            pio.pos = 0
        pio.block_end = pio.pos + min(pio.block_sectors, pio.left) * SECTOR
        unit.status = STATUS_DATA
        if interrupt:
            self._assert_irq()

    def _pio_out_block_done(self, unit: _Unit, pio: _PioTransfer) -> None:
        if pio.on_done is not None:
            unit.pio = None
            pio.on_done()
            return
        pio.left -= min(pio.block_sectors, pio.left)
        drive = self._drive(unit)
        fault = pio.fault
        if fault is not None and pio.first_lba + pio.sectors - pio.left > fault.lba:
            # The block holding the bad sector arrived: what precedes it is stored.
            good = fault.lba - pio.flushed_lba
            if good > 0 and not self._pio_store(unit, pio, memoryview(pio.buffer)[:good * SECTOR]):
                return
            self._fail_media(unit, pio.command.lba48, pio.chs, fault)
            return
        if pio.pos >= len(pio.buffer):
            if not self._pio_store(unit, pio, pio.buffer):
                return
            pio.flushed_lba += len(pio.buffer) // SECTOR
        if pio.left:
            self._pio_out_next_block(unit, pio, interrupt=True)
            return
        unit.pio = None
        if not self._stored_write(unit):
            return
        if not drive.write_cache and not self._flush(drive):
            self._fail_at(unit, pio.command.lba48, pio.chs, pio.first_lba, ERROR_ABRT)
            return
        self._post_address(unit, pio.command.lba48, pio.chs, pio.first_lba + pio.sectors - 1)
        unit.regs.count = unit.regs.hob_count = 0
        self._complete(unit)

    def _pio_store(self, unit: _Unit, pio: _PioTransfer,
                   data: bytes | bytearray | memoryview) -> bool:
        """Write gathered PIO data at ``flushed_lba``; False if the command ended."""
        try:
            self._drive(unit).image.write(pio.flushed_lba * SECTOR, data)
        except (ImageError, OSError) as error:
            action = self._host_error(unit, "write", pio.flushed_lba, error)
            if action == "report":
                self._fail_at(unit, pio.command.lba48, pio.chs, pio.flushed_lba, ERROR_ABRT)
            return action == "ignore"
        return True

    def _flush(self, drive: AtaDrive) -> bool:
        """Flush the image; False: report ABRT (a planned failure or a host error)."""
        if drive.faults.flush_failures and drive.faults.flush_fault():
            return False
        try:
            drive.image.flush()
        except (ImageError, OSError) as error:
            unit = self.selected
            return self._host_error(unit, "flush", 0, error) == "ignore"
        return True

    def _cmd_verify(self, unit: _Unit, command: AtaCommand) -> None:
        lba, count, chs = self._address(unit, command)
        self._post_address(unit, command.lba48, chs, lba + count - 1)
        unit.regs.count = unit.regs.hob_count = 0
        self._complete(unit)

    # --- DMA (driven by the bus-master engine) -------------------------------
    def _start_dma(self, unit: _Unit, request: DmaRequest) -> None:
        unit.dma = request
        unit.status = STATUS_DATA
        if self.dma_ready_hook is not None:
            self.dma_ready_hook()

    @property
    def dma_request(self) -> DmaRequest | None:
        """The selected drive's DMA request waiting for data, if any."""
        return self.selected.dma

    def dma_read(self, length: int) -> memoryview:
        """Device -> memory: the next ``length`` bytes of the request (fewer on error).

        The view is into a buffer the next call reuses: copy it out before then.
        """
        unit = self.selected
        request = unit.dma
        if request is None or not request.to_memory:
            return memoryview(b"")
        length = request.allowed(length)
        if request.packet is not None:
            buffer = memoryview(bytearray(length))
            return buffer[:self._atapi_dma_in(unit, request, buffer)]
        if len(self._dma_buffer) < length:
            self._dma_buffer = bytearray(length)
        data = memoryview(self._dma_buffer)[:length]
        if not self._dma_read_image(unit, request, data):
            return memoryview(b"")
        return data

    def _dma_read_image(self, unit: _Unit, request: DmaRequest, window: memoryview) -> bool:
        """Read the request's next ``len(window)`` bytes; then complete or fail it."""
        try:
            self._drive(unit).image.readinto(request.offset + request.done, window)
        except (ImageError, OSError) as error:
            failed = request.first_lba + request.done // SECTOR
            action = self._host_error(unit, "read", failed, error)
            if action != "ignore":
                if action == "report":
                    self._fail_at(unit, request.command.lba48, request.chs, failed, ERROR_UNC)
                return False
            window[:] = bytes(len(window))
        request.done += len(window)
        if request.fault is not None and request.done >= request.good:
            self._fail_media(unit, request.command.lba48, request.chs, request.fault)
        elif not request.remaining:
            self._dma_done(unit, request)
        return True

    def dma_read_into(self, window: memoryview) -> int:
        """Device -> memory straight into ``window`` (guest RAM): the bytes moved, at
        most the request's remainder (0 on error; the window's content is then
        undefined, as a failed transfer leaves a real buffer)."""
        unit = self.selected
        request = unit.dma
        if request is None or not request.to_memory:
            return 0
        length = request.allowed(len(window))
        if request.packet is not None:
            return self._atapi_dma_in(unit, request, window[:length])
        return length if self._dma_read_image(unit, request, window[:length]) else 0

    def dma_write(self, data: bytes | bytearray | memoryview) -> None:
        """Memory -> device: the next bytes of the request."""
        unit = self.selected
        request = unit.dma
        if request is None or request.to_memory:
            return
        data = memoryview(data)[:request.remaining]
        if request.received is not None:
            self._atapi_dma_out(unit, request, data)
            return
        if request.trim_ranges is not None:
            request.trim_ranges += data
        else:
            stored = data[:request.allowed(len(data))]
            try:
                if stored:
                    self._drive(unit).image.write(request.offset + request.done, stored)
            except (ImageError, OSError) as error:
                failed = request.first_lba + request.done // SECTOR
                action = self._host_error(unit, "write", failed, error)
                if action != "ignore":
                    if action == "report":
                        self._fail_at(unit, request.command.lba48, request.chs, failed,
                                      ERROR_ABRT)
                    return
            if request.fault is not None and request.done + len(data) >= request.good:
                request.done = request.good
                self._fail_media(unit, request.command.lba48, request.chs, request.fault)
                return
        request.done += len(data)
        if not request.remaining:
            self._dma_done(unit, request)

    def _dma_done(self, unit: _Unit, request: DmaRequest) -> None:
        unit.dma = None
        drive = self._drive(unit)
        if request.trim_ranges is not None:
            self._trim(unit, request.trim_ranges)
            return
        if not request.to_memory:
            if not self._stored_write(unit):
                return
            if not drive.write_cache and not self._flush(drive):
                self._fail_at(unit, request.command.lba48, request.chs, request.first_lba,
                              ERROR_ABRT)
                return
        self._post_address(unit, request.command.lba48, request.chs,
                           request.first_lba + request.sectors - 1)
        unit.regs.count = unit.regs.hob_count = 0
        self._complete(unit)

    # --- DATA SET MANAGEMENT (TRIM) -----------------------------------------
    def _cmd_data_set_management(self, unit: _Unit, command: AtaCommand) -> None:
        drive = self._drive(unit)
        regs = unit.regs
        blocks = regs.hob_count << 8 | regs.count
        if not drive.supports_trim or not regs.feature & 0x01 or not blocks \
                or blocks > DSM_MAX_BLOCKS:
            raise CommandFailed(ERROR_ABRT)
        self._start_dma(unit, DmaRequest(
            to_memory=False, offset=0, length=blocks * SECTOR, first_lba=0, sectors=0,
            command=command, chs=False, trim_ranges=bytearray()))

    def _trim(self, unit: _Unit, ranges: bytearray) -> None:
        drive = self._drive(unit)
        extents = []
        for (entry,) in DSM_ENTRY.iter_unpack(ranges):
            lba, count = entry & (LBA48_LIMIT - 1), entry >> 48
            if not count:
                continue
            if lba + count > drive.sectors:
                self._fail(unit, ERROR_ABRT)
                return
            extents.append((lba, count))
        try:
            for lba, count in extents:
                drive.image.discard(lba * SECTOR, count * SECTOR)
        except (ImageError, OSError):
            self._fail(unit, ERROR_ABRT)
            return
        self._complete(unit)

    # --- non-data commands --------------------------------------------------
    def _cmd_abort(self, unit: _Unit, command: AtaCommand) -> None:
        raise CommandFailed(ERROR_ABRT)

    def _cmd_identify(self, unit: _Unit, command: AtaCommand) -> None:
        pio = _PioTransfer(command, 0, 1, 1, False)
        pio.buffer = self._drive(unit).identify(unit.index)
        unit.pio = pio
        self._pio_in_next_block(unit, pio)

    def _cmd_recalibrate(self, unit: _Unit, command: AtaCommand) -> None:
        regs = unit.regs
        regs.lba_mid = regs.lba_high = 0
        self._complete(unit)

    def _cmd_seek(self, unit: _Unit, command: AtaCommand) -> None:
        drive = self._drive(unit)
        regs = unit.regs
        if regs.device & DEVICE_LBA:
            if regs.lba28() >= drive.lba28_sectors:
                raise CommandFailed(ERROR_IDNF)
        elif self._chs_to_lba(drive, regs) >= drive.sectors:
            raise CommandFailed(ERROR_IDNF)
        self._complete(unit)

    def _cmd_diagnostic(self, unit: _Unit, command: AtaCommand) -> None:
        """Both devices run it whatever DEV says; device 0 reports for both."""
        for each in self.units:
            self._abandon(each)
            self._reset_unit(each)
        self.selected = self.units[0]
        master = self.units[0]
        if master.drive is None:
            master.status = 0
        self._assert_irq()
        if unit.log is not None:
            self._log_end(unit)

    def _cmd_initialize_parameters(self, unit: _Unit, command: AtaCommand) -> None:
        regs = unit.regs
        self._drive(unit).set_translation((regs.device & DEVICE_HEAD) + 1, regs.count)
        self._complete(unit)

    def _cmd_set_multiple(self, unit: _Unit, command: AtaCommand) -> None:
        count = unit.regs.count
        if count > MAX_MULTIPLE or count & (count - 1):
            raise CommandFailed(ERROR_ABRT)
        self._drive(unit).multiple = count
        self._complete(unit)

    def _cmd_flush(self, unit: _Unit, command: AtaCommand) -> None:
        if not self._flush(self._drive(unit)):
            raise CommandFailed(ERROR_ABRT)
        self._complete(unit)

    def _cmd_check_power_mode(self, unit: _Unit, command: AtaCommand) -> None:
        unit.regs.count = self._drive(unit).power
        self._complete(unit)

    def _cmd_standby(self, unit: _Unit, command: AtaCommand) -> None:
        self._drive(unit).power = POWER_STANDBY
        self._complete(unit)

    def _cmd_idle(self, unit: _Unit, command: AtaCommand) -> None:
        self._drive(unit).power = POWER_ACTIVE
        self._complete(unit)

    def _cmd_read_native_max(self, unit: _Unit, command: AtaCommand) -> None:
        drive = self._drive(unit)
        if command.lba48:
            unit.regs.set_lba48(drive.sectors - 1)
        else:
            unit.regs.set_lba28(drive.lba28_sectors - 1)
        self._complete(unit)

    def _cmd_set_max(self, unit: _Unit, command: AtaCommand) -> None:
        """Only the native maximum is accepted: no host protected area is ever set."""
        drive = self._drive(unit)
        regs = unit.regs
        requested = regs.lba48() if command.lba48 else regs.lba28()
        native = drive.sectors - 1 if command.lba48 else drive.lba28_sectors - 1
        if requested != native:
            raise CommandFailed(ERROR_ABRT)
        self._complete(unit)

    def _cmd_set_features(self, unit: _Unit, command: AtaCommand) -> None:
        handler = SET_FEATURES.get(unit.regs.feature)
        if handler is None:
            raise CommandFailed(ERROR_ABRT)
        getattr(self, handler)(self._drive(unit), unit.regs.count)
        self._complete(unit)

    # --- SET FEATURES subcommands --------------------------------------------
    def _feature_write_cache_on(self, drive: AtaDrive, count: int) -> None:
        drive.write_cache = True

    def _feature_write_cache_off(self, drive: AtaDrive, count: int) -> None:
        if not self._flush(drive):
            raise CommandFailed(ERROR_ABRT)
        drive.write_cache = False

    def _feature_look_ahead_on(self, drive: AtaDrive, count: int) -> None:
        drive.read_look_ahead = True

    def _feature_look_ahead_off(self, drive: AtaDrive, count: int) -> None:
        drive.read_look_ahead = False

    def _feature_accept(self, drive: AtaDrive, count: int) -> None:
        pass

    def _feature_transfer_mode(self, drive: AtaDrive, count: int) -> None:
        """Count 00h/01h: default PIO; 08h+n PIO n; 20h+n multiword DMA n; 40h+n UDMA n."""
        if count in (0x00, 0x01):
            drive.pio_mode = 4
            return
        mode_class = TRANSFER_MODE_CLASSES.get(count & 0xF8)
        if mode_class is None or count & 0x07 > mode_class[1]:
            raise CommandFailed(ERROR_ABRT)
        attribute = mode_class[0]
        if attribute != "pio_mode":  # one DMA mode is selected at a time (words 63/88)
            drive.mwdma_mode = drive.udma_mode = None
        setattr(drive, attribute, count & 0x07)

    # --- ATAPI (PACKET feature set) -------------------------------------------
    @staticmethod
    def _atapi(unit: _Unit) -> AtapiDrive:
        assert isinstance(unit.drive, AtapiDrive)
        return unit.drive

    def _atapi_identify(self, unit: _Unit, command: AtaCommand) -> None:
        pio = _PioTransfer(command, 0, 1, 1, False)
        pio.buffer = self._atapi(unit).identify_packet(unit.index)
        unit.pio = pio
        self._pio_in_next_block(unit, pio)

    def _atapi_refuse_identify(self, unit: _Unit, command: AtaCommand) -> None:
        """ATAPI devices abort IDENTIFY DEVICE and post their signature (ATA-6 8.15)."""
        unit.regs.set_signature(ATAPI_SIGNATURE, keep_select=True)
        raise CommandFailed(ERROR_ABRT)

    def _atapi_device_reset(self, unit: _Unit, command: AtaCommand) -> None:
        """DEVICE RESET: this device only, signature posted, no interrupt."""
        self._reset_unit(unit, keep_select=True)

    def _atapi_accept(self, unit: _Unit, command: AtaCommand) -> None:
        self._complete(unit)

    def _atapi_check_power_mode(self, unit: _Unit, command: AtaCommand) -> None:
        unit.regs.count = POWER_ACTIVE
        self._complete(unit)


    def _atapi_set_features(self, unit: _Unit, command: AtaCommand) -> None:
        regs = unit.regs
        if regs.feature != 0x03 or not self._atapi(unit).set_transfer_mode(regs.count):
            raise CommandFailed(ERROR_ABRT)
        self._complete(unit)

    def _atapi_packet(self, unit: _Unit, command: AtaCommand) -> None:
        """PACKET: request the 12 command bytes (no interrupt: IDENTIFY word 0 bits 6:5)."""
        regs = unit.regs
        dma = bool(regs.feature & PACKET_FEATURE_DMA)
        limit = regs.lba_high << 8 | regs.lba_mid
        pio = _PioTransfer(command, 0, 1, 1, False)
        pio.buffer = bytearray(ATAPI_PACKET_BYTES)
        pio.block_end = ATAPI_PACKET_BYTES
        pio.on_done = lambda: self._atapi_execute(unit, bytes(pio.buffer), limit, dma)
        unit.pio = pio
        regs.count = REASON_COMMAND
        unit.status = STATUS_DATA

    def _atapi_execute(self, unit: _Unit, packet: bytes, limit: int, dma: bool) -> None:
        if unit.log is not None:
            unit.log["packet"] = packet.hex()
        drive = self._atapi(unit)
        if not dma and not limit and drive.command(packet).transfers_data:
            self._atapi_status(unit, ERROR_ABRT)   # no byte count for the PIO data phase
            return
        reply = drive.execute(packet)
        if reply.sense is not None:
            self._atapi_status(unit, reply.sense.key << 4)
        elif not reply.transfers:
            self._atapi_status(unit, 0)
        elif dma:
            self._start_dma(unit, DmaRequest(
                to_memory=reply.data is not None, offset=0, length=reply.transfers,
                first_lba=0, sectors=0, command=ATAPI_COMMANDS[0xA0], chs=False,
                packet=packet, data_in=reply.data,
                received=None if reply.data is not None else bytearray()))
        elif reply.data is not None:
            self._atapi_pio_in(unit, reply.data, 0, limit)
        else:
            self._atapi_pio_out(unit, packet, bytearray(), reply.data_out, limit)

    @staticmethod
    def _atapi_block(remaining: int, limit: int) -> int:
        """The next DRQ block: all that is left, or the (even) byte count limit."""
        limit = min(limit, ATAPI_MAX_BYTE_LIMIT)
        return remaining if remaining <= limit else limit & ~1 or 2

    def _atapi_drq(self, unit: _Unit, pio: _PioTransfer, reason: int, size: int) -> None:
        unit.pio = pio
        regs = unit.regs
        regs.count = reason
        regs.lba_mid, regs.lba_high = size & 0xFF, size >> 8
        unit.status = STATUS_DATA
        self._assert_irq()

    def _atapi_pio_in(self, unit: _Unit, data: DataIn, position: int, limit: int) -> None:
        """PIO data-in: one DRQ block of the reply from ``position``, then the next."""
        remaining = data.length - position
        if not remaining:
            self._atapi_status(unit, 0)
            return
        size = self._atapi_block(remaining, limit)
        try:
            block = data.read(position, size)
        except (ImageError, OSError):
            self._atapi_read_failed(unit)
            return
        pio = _PioTransfer(ATAPI_COMMANDS[0xA0], 0, 1, 1, False)
        pio.writing = False
        pio.buffer = block
        pio.block_end = size
        pio.on_done = lambda: self._atapi_pio_in(unit, data, position + size, limit)
        self._atapi_drq(unit, pio, REASON_TO_HOST, size)

    def _atapi_pio_out(self, unit: _Unit, packet: bytes, received: bytearray, length: int,
                       limit: int) -> None:
        """PIO data-out: DRQ blocks the host fills until ``length`` bytes arrived."""
        remaining = length - len(received)
        if not remaining:
            self._atapi(unit).data_received(packet, bytes(received))
            self._atapi_status(unit, 0)
            return
        size = self._atapi_block(remaining, limit)
        pio = _PioTransfer(ATAPI_COMMANDS[0xA0], 0, 1, 1, False)
        pio.writing = True
        pio.buffer = bytearray(size)
        pio.block_end = size
        pio.on_done = lambda: self._atapi_pio_out(unit, packet, received + pio.buffer,
                                                  length, limit)
        self._atapi_drq(unit, pio, REASON_FROM_HOST, size)

    def _atapi_dma_in(self, unit: _Unit, request: DmaRequest, window: memoryview) -> int:
        """Device -> memory for an ATAPI DMA data-in: the bytes moved (0 on a read error)."""
        assert request.data_in is not None
        try:
            request.data_in.readinto(request.done, window)
        except (ImageError, OSError):
            self._atapi_read_failed(unit)
            return 0
        request.done += len(window)
        if not request.remaining:
            unit.dma = None
            self._atapi_status(unit, 0)
        return len(window)

    def _atapi_dma_out(self, unit: _Unit, request: DmaRequest, data: memoryview) -> None:
        assert request.received is not None and request.packet is not None
        request.received += data
        request.done += len(data)
        if not request.remaining:
            unit.dma = None
            self._atapi(unit).data_received(request.packet, bytes(request.received))
            self._atapi_status(unit, 0)

    def _atapi_read_failed(self, unit: _Unit) -> None:
        unit.pio = None
        unit.dma = None
        drive = self._atapi(unit)
        drive.read_failed()
        self._atapi_status(unit, drive.sense.key << 4)

    def _atapi_status(self, unit: _Unit, error: int) -> None:
        """The command's end: GOOD, or CHECK CONDITION (sense key in error bits 7:4)."""
        unit.regs.count = REASON_STATUS
        unit.status = STATUS_ERROR if error else STATUS_READY
        unit.error = error
        self._assert_irq()
        if unit.log is not None:
            self._log_end(unit)
