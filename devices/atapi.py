"""An ATAPI CD/DVD-ROM drive: the SCSI (MMC/SPC) side, behind an IDE channel.

Theory of operation
-------------------
An ATAPI drive is a SCSI device carried over the ATA register file: the host
sends a 12-byte *command packet* with the ATA PACKET command, the data phase is
PIO (DRQ blocks whose size the drive chooses up to the host's *byte count
limit*) or DMA, and the outcome is GOOD or CHECK CONDITION with *sense data*
(key, additional sense code and qualifier) kept until the next REQUEST SENSE.
The ATA transport (PACKET, DRQ blocks, interrupt reason, bus-master DMA) lives
in :mod:`devices.ata`; this module is the logical unit: it turns a packet into
a :class:`Reply` -- data for the host, a request for data from the host, or a
sense triple -- and keeps the state those answers depend on.

Commands are rows of :data:`COMMANDS` (operation code -> name, flags, handler),
as QEMU's ``atapi_cmd_table``.  Before a handler runs, the table's flags apply
the checks every command shares, in the order of SPC-3 5.9 / MMC-5 4.1.6:

* a pending UNIT ATTENTION (06h/28h/00h, "medium may have changed", posted by
  a media change) fails every command not flagged ``allow_attention``
  (INQUIRY, REQUEST SENSE, GET CONFIGURATION, GET EVENT STATUS NOTIFICATION);
  it stays pending until REQUEST SENSE reports it, as QEMU's drive does (other
  sense is replaced by the next command's outcome; QEMU keeps it until REQUEST
  SENSE);
* commands flagged ``needs_medium`` fail with NOT READY, MEDIUM NOT PRESENT
  (02h/3Ah/00h) while the tray is open or empty;
* unknown operation codes get ILLEGAL REQUEST, INVALID COMMAND OPERATION CODE
  (05h/20h/00h); reads past the last block ILLEGAL REQUEST, LOGICAL BLOCK
  ADDRESS OUT OF RANGE (05h/21h/00h); bad fields 05h/24h/00h; an image that
  fails under a read MEDIUM ERROR, UNRECOVERED READ ERROR (03h/11h/00h).

Media: a :class:`disks.Image` read with 2048-byte blocks (ISO 9660 "Mode 1"
user data; a trailing partial block is not addressable), one data track in one
closed session.  Discs up to :data:`CD_MAX_BLOCKS` report the CD-ROM profile,
larger ones DVD-ROM.  The host side (the machine, a monitor) changes media with
:meth:`AtapiDrive.change` / :meth:`AtapiDrive.eject`: a change while the
guest has locked the tray (PREVENT ALLOW MEDIUM REMOVAL) is refused unless
forced and posts an eject-request event instead; every change is queued for GET
EVENT STATUS NOTIFICATION and an insertion posts the UNIT ATTENTION.

Not modelled: audio (PLAY, READ SUB-CHANNEL), raw or sub-channel sectors in
READ CD (only user data, or nothing), writing, DVD structures, multiple
sessions or tracks, timing (a drive is never "becoming ready").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from disks import Image

from .identify import FIRMWARE_REVISION, identify_block

BLOCK = 2048                       # CD/DVD user data per sector
PACKET_BYTES = 12
CD_MAX_BLOCKS = 360_000            # 80 minutes of Mode 1 sectors: beyond it, a DVD
MSF_LEAD_IN = 150                  # LBA 0 is 00:02:00 (two seconds of pre-gap)
FRAMES_PER_SECOND = 75
SECONDS_PER_MINUTE = 60
LEAD_OUT_TRACK = 0xAA
DATA_TRACK_CONTROL = 0x14          # ADR 1 (Q sub-channel position), control 4 (data)
LEAD_OUT_CONTROL = 0x16            # ... and copy permitted, as QEMU's lead-out entry
MAX_SPEED_KBS = 706                # 4x CD, what old drives report in the capabilities page
BUFFER_KIB = 512


class Sense(NamedTuple):
    """Fixed-format sense: key, additional sense code, qualifier (SPC-3 4.5)."""

    key: int
    asc: int
    ascq: int


NO_SENSE = Sense(0x00, 0x00, 0x00)
NOT_READY_NO_MEDIUM = Sense(0x02, 0x3A, 0x00)
MEDIUM_ERROR_READ = Sense(0x03, 0x11, 0x00)
ILLEGAL_OPCODE = Sense(0x05, 0x20, 0x00)
ILLEGAL_LBA = Sense(0x05, 0x21, 0x00)
ILLEGAL_FIELD = Sense(0x05, 0x24, 0x00)
ILLEGAL_SAVING = Sense(0x05, 0x39, 0x00)           # saving parameters not supported
# Medium removal prevented: NOT READY with a disc in the tray, else ILLEGAL REQUEST (QEMU's).
NOT_READY_REMOVAL_PREVENTED = Sense(0x02, 0x53, 0x02)
ILLEGAL_REMOVAL_PREVENTED = Sense(0x05, 0x53, 0x02)
UNIT_ATTENTION_CHANGED = Sense(0x06, 0x28, 0x00)   # not ready to ready, medium may have changed
UNIT_ATTENTION = 0x06

# MMC profiles (GET CONFIGURATION) and media event codes (GET EVENT STATUS NOTIFICATION).
PROFILE_NONE = 0x0000
PROFILE_CD_ROM = 0x0008
PROFILE_DVD_ROM = 0x0010
EVENT_NONE = 0
EVENT_EJECT_REQUEST = 1
EVENT_NEW_MEDIA = 2
EVENT_MEDIA_REMOVAL = 3
NOTIFY_MEDIA_CLASS = 0x10          # class 4 (media) in the request and supported masks
NOTIFY_MEDIA = 4
NOTIFY_NO_EVENT_AVAILABLE = 0x80

# MODE SENSE pages.
PAGE_ERROR_RECOVERY = 0x01
PAGE_CAPABILITIES = 0x2A
PAGE_ALL = 0x3F
PAGE_CONTROL_SAVED = 3
MEDIUM_TYPE_DATA = 0x01            # 120 mm CD-ROM data only
MEDIUM_TYPE_NONE = 0x70            # door closed, no disc


class ImageData:
    """Data-in read from the medium: ``length`` bytes from byte ``offset`` of ``image``."""

    def __init__(self, image: Image, offset: int, length: int) -> None:
        self.image = image
        self.offset = offset
        self.length = length

    def read(self, position: int, length: int) -> bytes:
        """Bytes ``[position, position + length)`` of the transfer (ImageError/OSError)."""
        return self.image.read(self.offset + position, length)

    def readinto(self, position: int, window: memoryview) -> None:
        self.image.readinto(self.offset + position, window)


class BufferData:
    """Data-in the drive composed itself (INQUIRY, TOC, sense, ...)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)

    def read(self, position: int, length: int) -> bytes:
        return self.data[position:position + length]

    def readinto(self, position: int, window: memoryview) -> None:
        window[:] = self.data[position:position + len(window)]


DataIn = ImageData | BufferData


@dataclass(frozen=True)
class Reply:
    """What a command packet comes to: data for the host, a data-out phase, or sense."""

    data: DataIn | None = None
    data_out: int = 0                  # bytes the host is to send (MODE SELECT)
    sense: Sense | None = None         # CHECK CONDITION

    @property
    def transfers(self) -> int:
        return self.data.length if self.data is not None else self.data_out


GOOD = Reply()


def _check(sense: Sense) -> Reply:
    return Reply(sense=sense)


def _data(data: bytes, allocation: int) -> Reply:
    """Data-in cut to the host's allocation length (SPC-3 4.3.4.6)."""
    return Reply(data=BufferData(data[:allocation])) if allocation and data else GOOD


@dataclass(frozen=True, slots=True)
class ScsiCommand:
    """One row of the packet command table."""

    opcode: int
    name: str
    handler: str                       # AtapiDrive method, handler(packet) -> Reply
    needs_medium: bool = False         # NOT READY without a readable disc
    allow_attention: bool = False      # runs despite a pending UNIT ATTENTION
    transfers_data: bool = True        # a PIO data phase needs a byte count limit


def lba_to_msf(lba: int) -> bytes:
    """The 4-byte MSF address field (reserved, minute, second, frame) of ``lba``."""
    frames = lba + MSF_LEAD_IN
    minute, rest = divmod(frames, FRAMES_PER_SECOND * SECONDS_PER_MINUTE)
    second, frame = divmod(rest, FRAMES_PER_SECOND)
    return bytes([0, minute & 0xFF, second, frame])


def _address(lba: int, msf: bool) -> bytes:
    return lba_to_msf(lba) if msf else struct.pack(">I", lba & 0xFFFFFFFF)


class AtapiDrive:
    """An ATAPI CD/DVD-ROM drive; ``image`` (2048-byte blocks) is the disc, None = empty.

    The host side calls :meth:`change` and :meth:`eject`; the IDE
    channel calls :meth:`execute` with each command packet.
    """

    def __init__(self, image: Image | None = None, *, model: str = "EMU DVD-ROM",
                 serial: str = "EMU-ATAPI") -> None:
        self.model = model
        self.serial = serial
        self.image: Image | None = image
        self.tray_open = False
        self.locked = False
        self.sense = NO_SENSE
        self.events: list[int] = []       # media events not yet reported (GESN): an
                                          # eject request first, the rest in order
        self.power_on_defaults()

    def power_on_defaults(self) -> None:
        """Transfer modes after power-on or hardware reset (IDENTIFY words 63/88)."""
        self.mwdma_mode: int | None = None
        self.udma_mode: int | None = 2
        self.locked = False

    # --- the medium (host side) --------------------------------------------
    @property
    def blocks(self) -> int:
        return self.image.size // BLOCK if self.image is not None else 0

    @property
    def medium_ready(self) -> bool:
        return self.image is not None and not self.tray_open

    def change(self, image: Image | None, *, force: bool = False) -> Image | None:
        """Take the medium out and put ``image`` in (None: leave the tray open and
        empty); returns the old medium, for the caller to close.

        While the guest holds the tray locked (PREVENT ALLOW MEDIUM REMOVAL) this
        only asks the guest to eject (an eject-request event) and raises
        :class:`MediumLockedError`, unless ``force``.
        """
        if self.locked and not force:
            self._post_event(EVENT_EJECT_REQUEST)
            raise MediumLockedError("the guest has locked the tray (force overrides it)")
        old, self.image = self.image, None
        self.locked = False
        self.tray_open = True
        if old is not None:
            self._post_event(EVENT_MEDIA_REMOVAL)
        if image is not None:
            self.image = image
            self.tray_open = False
            self.sense = UNIT_ATTENTION_CHANGED       # "medium may have changed"
            self._post_event(EVENT_NEW_MEDIA)
        return old

    def eject(self, *, force: bool = False) -> Image | None:
        """Open the tray and take the medium out (see :meth:`change`)."""
        return self.change(None, force=force)

    def _post_event(self, code: int) -> None:
        """Queue a media event once; a new medium supersedes its removal and back."""
        superseded = {EVENT_NEW_MEDIA: EVENT_MEDIA_REMOVAL, EVENT_MEDIA_REMOVAL: EVENT_NEW_MEDIA}
        self.events = [event for event in self.events
                       if event != code and event != superseded.get(code)]
        self.events.append(code)

    # --- identity -------------------------------------------------------------
    def identify_packet(self, unit: int) -> bytes:
        """IDENTIFY PACKET DEVICE data (ATA/ATAPI-6 table 30)."""
        words = [0] * 256
        words[0] = 0x85C0            # ATAPI, CD-ROM, removable, DRQ within 50 us, 12-byte packets
        words[49] = 0x0300           # LBA, DMA
        words[50] = 0x4000
        words[53] = 0x0006           # words 64-70 and 88 valid
        words[63] = 0x0007 | ((0x0100 << self.mwdma_mode) if self.mwdma_mode is not None else 0)
        words[64] = 0x0003           # PIO modes 3 and 4
        words[65] = words[66] = words[67] = words[68] = 120
        words[71], words[72] = 30, 30   # PACKET to bus release, SERVICE to BSY clear (ns)
        words[80] = 0x01F0
        words[82] = 0x4014           # NOP, PACKET, removable media
        words[83] = words[84] = words[87] = 0x4000
        words[85] = 0x4014
        words[88] = 0x0007 | ((0x0100 << self.udma_mode) if self.udma_mode is not None else 0)
        words[93] = 0x600B if unit == 0 else 0x6300
        return identify_block(words, serial=self.serial, model=self.model)

    def inquiry_data(self) -> bytes:
        """Standard INQUIRY data: a removable CD/DVD device (SPC-3 6.4.2)."""
        header = bytes([0x05, 0x80, 0x05, 0x32, 31, 0, 0, 0])
        return (header + b"EMU".ljust(8) + self.model.encode("ascii", "replace")[:16].ljust(16)
                + FIRMWARE_REVISION.encode()[:4].ljust(4))

    def set_transfer_mode(self, count: int) -> bool:
        """SET FEATURES 03h: PIO (00h/01h/08h+n), multiword DMA (20h+n), UDMA (40h+n)."""
        kind, mode = count & 0xF8, count & 0x07
        if count in (0x00, 0x01) or kind == 0x08 and mode <= 4:
            return True
        if kind == 0x20 and mode <= 2:
            self.mwdma_mode, self.udma_mode = mode, None
            return True
        if kind == 0x40 and mode <= 2:
            self.mwdma_mode, self.udma_mode = None, mode
            return True
        return False

    # --- command execution ------------------------------------------------------
    def command(self, packet: bytes) -> ScsiCommand:
        return COMMANDS.get(packet[0], UNKNOWN)

    def execute(self, packet: bytes) -> Reply:
        """Run one command packet; CHECK CONDITION replies also become the sense data."""
        command = self.command(packet)
        if self.sense.key == UNIT_ATTENTION and not command.allow_attention:
            return _check(self.sense)
        if command.needs_medium and not self.medium_ready:
            reply = _check(NOT_READY_NO_MEDIUM)
        else:
            reply = getattr(self, command.handler)(packet)
        if reply.sense is not None:
            self.sense = reply.sense
        elif not command.allow_attention:
            self.sense = NO_SENSE        # sense describes the last command (SPC-3 4.5.1)
        return reply

    def read_failed(self) -> None:
        """The channel could not read the medium during a data phase."""
        self.sense = MEDIUM_ERROR_READ

    def data_received(self, packet: bytes, data: bytes) -> None:
        """The host's data-out phase for ``packet`` (MODE SELECT: parameters accepted)."""

    # Handlers: packet -> Reply.
    def _invalid(self, packet: bytes) -> Reply:
        return _check(ILLEGAL_OPCODE)

    def _good(self, packet: bytes) -> Reply:
        return GOOD

    def _request_sense(self, packet: bytes) -> Reply:
        key, asc, ascq = self.sense
        self.sense = NO_SENSE
        sense = bytes([0x70, 0, key, 0, 0, 0, 0, 10, 0, 0, 0, 0, asc, ascq, 0, 0, 0, 0])
        return _data(sense, packet[4])

    def _inquiry(self, packet: bytes) -> Reply:
        if packet[1] & 0x01:                   # vital product data pages: not offered
            return _check(ILLEGAL_FIELD)
        return _data(self.inquiry_data(), packet[3] << 8 | packet[4])

    def _read_capacity(self, packet: bytes) -> Reply:
        return _data(struct.pack(">II", self.blocks - 1, BLOCK), 8)

    def _read_blocks(self, lba: int, count: int) -> Reply:
        assert self.image is not None
        if lba + count > self.blocks:
            return _check(ILLEGAL_LBA)
        if not count:
            return GOOD
        return Reply(data=ImageData(self.image, lba * BLOCK, count * BLOCK))

    def _read10(self, packet: bytes) -> Reply:
        lba, count = struct.unpack_from(">IxH", packet, 2)
        return self._read_blocks(lba, count)

    def _read12(self, packet: bytes) -> Reply:
        lba, count = struct.unpack_from(">II", packet, 2)
        return self._read_blocks(lba, count)

    def _read_cd(self, packet: bytes) -> Reply:
        """READ CD: user data of Mode 1 / any-type sectors; no headers, sync or sub-channel."""
        lba = struct.unpack_from(">I", packet, 2)[0]
        count = int.from_bytes(packet[6:9], "big")
        sector_type = packet[1] >> 2 & 0x07
        fields = packet[9] & 0xF8
        if sector_type not in (0, 2) or packet[10] & 0x07:
            return _check(ILLEGAL_FIELD)
        if fields == 0x00:
            return GOOD if lba + count <= self.blocks else _check(ILLEGAL_LBA)
        if fields != 0x10:
            return _check(ILLEGAL_FIELD)
        return self._read_blocks(lba, count)

    def _seek(self, packet: bytes) -> Reply:
        lba = struct.unpack_from(">I", packet, 2)[0]
        return GOOD if lba < self.blocks else _check(ILLEGAL_LBA)

    def _read_toc(self, packet: bytes) -> Reply:
        msf = bool(packet[1] & 0x02)
        form = packet[2] & 0x0F or packet[9] >> 6       # SFF-8020 kept the format in byte 9
        track = packet[6]
        allocation = packet[7] << 8 | packet[8]
        lead_out = self.blocks
        if form == 0:
            if track > 1 and track != LEAD_OUT_TRACK:
                return _check(ILLEGAL_FIELD)
            body = b""
            if track <= 1:
                body += bytes([0, DATA_TRACK_CONTROL, 1, 0]) + _address(0, msf)
            body += bytes([0, LEAD_OUT_CONTROL, LEAD_OUT_TRACK, 0]) + _address(lead_out, msf)
            toc = struct.pack(">HBB", len(body) + 2, 1, 1) + body
        elif form == 1:                                 # sessions: one, starting at track 1
            toc = struct.pack(">HBB", 10, 1, 1) + bytes([0, DATA_TRACK_CONTROL, 1, 0]) \
                + _address(0, msf)
        elif form == 2:                                 # raw TOC: points A0, A1, A2, track 1
            def entry(point: int, pmsf: bytes) -> bytes:
                return bytes([1, DATA_TRACK_CONTROL, 0, point, 0, 0, 0, 0]) + pmsf[1:]
            body = (entry(0xA0, bytes([0, 1, 0x00, 0]))          # first track, disc type CD-ROM
                    + entry(0xA1, bytes([0, 1, 0, 0]))           # last track
                    + entry(0xA2, lba_to_msf(lead_out))
                    + entry(1, lba_to_msf(0)))
            toc = struct.pack(">HBB", len(body) + 2, 1, 1) + body
        else:
            return _check(ILLEGAL_FIELD)
        return _data(toc, allocation)

    @property
    def profile(self) -> int:
        if not self.medium_ready:
            return PROFILE_NONE
        return PROFILE_CD_ROM if self.blocks <= CD_MAX_BLOCKS else PROFILE_DVD_ROM

    def _features(self) -> list[tuple[int, int, bytes]]:
        """(feature code, version/flags byte, additional data) of GET CONFIGURATION."""
        current = self.profile
        profiles = b"".join(struct.pack(">HBx", number, 1 if number == current else 0)
                            for number in (PROFILE_DVD_ROM, PROFILE_CD_ROM))
        removable = 0x29 | (0x04 if self.locked else 0)   # tray, eject, lock (state)
        return [
            (0x0000, 0x03, profiles),                          # profile list
            (0x0001, 0x0B, struct.pack(">IBxxx", 2, 0)),       # core: ATAPI
            (0x0002, 0x07, bytes([0x02, 0, 0, 0])),            # morphing: async events
            (0x0003, 0x03, bytes([removable, 0, 0, 0])),       # removable medium
            (0x0010, 0x03 if current else 0x02,                # random readable
             struct.pack(">IHBx", BLOCK, 1, 0)),
            (0x001E, 0x03 if current == PROFILE_CD_ROM else 0x02, bytes(4)),  # CD read
            (0x001F, 0x03 if current == PROFILE_DVD_ROM else 0x02, bytes(4)),  # DVD read
        ]

    def _get_configuration(self, packet: bytes) -> Reply:
        request = packet[1] & 0x03
        start = packet[2] << 8 | packet[3]
        allocation = packet[7] << 8 | packet[8]
        if request == 3:
            return _check(ILLEGAL_FIELD)
        body = b""
        for code, flags, extra in self._features():
            if code < start or request == 1 and not flags & 0x01 \
                    or request == 2 and code != start:
                continue
            body += struct.pack(">HBB", code, flags, len(extra)) + extra
        header = struct.pack(">IxxH", 4 + len(body), self.profile)
        return _data(header + body, allocation)

    def _get_event_status(self, packet: bytes) -> Reply:
        if not packet[1] & 0x01:                  # only polled operation is offered
            return _check(ILLEGAL_FIELD)
        allocation = packet[7] << 8 | packet[8]
        if not packet[4] & NOTIFY_MEDIA_CLASS:
            return _data(struct.pack(">HBB", 2, NOTIFY_NO_EVENT_AVAILABLE,
                                     NOTIFY_MEDIA_CLASS), allocation)
        event = EVENT_NONE
        if self.events:
            first = EVENT_EJECT_REQUEST if EVENT_EJECT_REQUEST in self.events else self.events[0]
            self.events.remove(first)
            event = first
        status = (0x02 if self.image is not None else 0) | (0x01 if self.tray_open else 0)
        return _data(struct.pack(">HBB", 6, NOTIFY_MEDIA, NOTIFY_MEDIA_CLASS)
                     + bytes([event, status, 0, 0]), allocation)

    def _mode_pages(self) -> dict[int, bytes]:
        locked = 0x02 if self.locked else 0
        capabilities = struct.pack(
            ">BBBBBBBBHHHHHHH", PAGE_CAPABILITIES, 0x14,
            0x3B, 0x00,                   # reads CD-R/RW, Method 2, DVD-ROM; writes nothing
            0x71, 0x00,                   # multi-session, Mode 2 Form 1/2, audio play
            0x29 | locked, 0x00,          # tray, eject, lock (state)
            MAX_SPEED_KBS, 0x00FF, BUFFER_KIB, MAX_SPEED_KBS, 0, 0, 0)
        return {
            PAGE_ERROR_RECOVERY: bytes([PAGE_ERROR_RECOVERY, 0x06, 0x00, 0x05, 0, 0, 0, 0]),
            PAGE_CAPABILITIES: capabilities,
        }

    def _mode_sense(self, packet: bytes) -> Reply:
        control, page = packet[2] >> 6, packet[2] & 0x3F
        allocation = packet[7] << 8 | packet[8]
        if control == PAGE_CONTROL_SAVED:
            return _check(ILLEGAL_SAVING)
        pages = self._mode_pages()
        if page == PAGE_ALL:
            body = b"".join(pages[number] for number in sorted(pages))
        elif page in pages:
            body = pages[page]
        else:
            return _check(ILLEGAL_FIELD)
        medium = MEDIUM_TYPE_DATA if self.medium_ready else MEDIUM_TYPE_NONE
        header = struct.pack(">HBxxxH", 6 + len(body), medium, 0)
        return _data(header + body, allocation)

    def _mode_select(self, packet: bytes) -> Reply:
        length = packet[7] << 8 | packet[8]
        return Reply(data_out=length) if length else GOOD

    def _start_stop(self, packet: bytes) -> Reply:
        load_eject, start = packet[4] & 0x02, packet[4] & 0x01
        if not load_eject:
            return GOOD
        if start:                                 # load: close the tray
            if self.tray_open:
                self.tray_open = False
                if self.image is not None:
                    self._post_event(EVENT_NEW_MEDIA)
            return GOOD
        if self.locked:
            return _check(NOT_READY_REMOVAL_PREVENTED if self.image is not None
                          else ILLEGAL_REMOVAL_PREVENTED)
        if not self.tray_open:                    # eject: the disc stays in the open tray
            self.tray_open = True
            if self.image is not None:
                self._post_event(EVENT_MEDIA_REMOVAL)
        return GOOD

    def _prevent_allow(self, packet: bytes) -> Reply:
        self.locked = bool(packet[4] & 0x01)
        return GOOD

    def _read_disc_information(self, packet: bytes) -> Reply:
        if packet[1] & 0x07:                      # only standard disc information
            return _check(ILLEGAL_FIELD)
        allocation = packet[7] << 8 | packet[8]
        info = bytearray(34)
        struct.pack_into(">H", info, 0, 32)
        info[2] = 0x0E                            # last session complete, disc finalized
        info[3] = info[4] = info[5] = info[6] = 1  # first track, sessions, tracks of last
        info[7] = 0x20                            # unrestricted use
        info[16:24] = b"\xff" * 8                 # no lead-in/lead-out for a new session
        return _data(bytes(info), allocation)

    def _read_track_information(self, packet: bytes) -> Reply:
        kind = packet[1] & 0x03
        number = struct.unpack_from(">I", packet, 2)[0]
        allocation = packet[7] << 8 | packet[8]
        valid = {0: number < self.blocks, 1: number in (1, 0xFF), 2: number == 1}
        if not valid.get(kind, False):
            return _check(ILLEGAL_FIELD)
        info = bytearray(36)
        struct.pack_into(">H", info, 0, 34)
        info[2] = info[3] = 1                     # track 1, session 1
        info[5] = 0x04                            # data track, uninterrupted
        info[6] = 0x01                            # data mode 1
        struct.pack_into(">I", info, 8, 0)        # start
        struct.pack_into(">I", info, 24, self.blocks)  # size
        struct.pack_into(">I", info, 28, max(0, self.blocks - 1))  # last recorded
        return _data(bytes(info), allocation)

    def _mechanism_status(self, packet: bytes) -> Reply:
        allocation = packet[8] << 8 | packet[9]
        status = bytes([0, 0x10 if self.tray_open else 0, 0, 0, 0, 0, 0, 0])
        return _data(status, allocation)


class MediumLockedError(Exception):
    """The host asked to change the medium while the guest holds the tray locked."""


REQUEST_SENSE = 0x03
COMMAND_LIST = [
    ScsiCommand(0x00, "TEST UNIT READY", "_good", needs_medium=True, transfers_data=False),
    ScsiCommand(REQUEST_SENSE, "REQUEST SENSE", "_request_sense", allow_attention=True),
    ScsiCommand(0x12, "INQUIRY", "_inquiry", allow_attention=True),
    ScsiCommand(0x1B, "START STOP UNIT", "_start_stop", transfers_data=False),
    ScsiCommand(0x1E, "PREVENT ALLOW MEDIUM REMOVAL", "_prevent_allow", transfers_data=False),
    ScsiCommand(0x25, "READ CAPACITY", "_read_capacity", needs_medium=True),
    ScsiCommand(0x28, "READ (10)", "_read10", needs_medium=True),
    ScsiCommand(0x2B, "SEEK (10)", "_seek", needs_medium=True, transfers_data=False),
    ScsiCommand(0x43, "READ TOC/PMA/ATIP", "_read_toc", needs_medium=True),
    ScsiCommand(0x46, "GET CONFIGURATION", "_get_configuration", allow_attention=True),
    ScsiCommand(0x4A, "GET EVENT STATUS NOTIFICATION", "_get_event_status",
                allow_attention=True),
    ScsiCommand(0x51, "READ DISC INFORMATION", "_read_disc_information", needs_medium=True),
    ScsiCommand(0x52, "READ TRACK INFORMATION", "_read_track_information",
                needs_medium=True),
    ScsiCommand(0x55, "MODE SELECT (10)", "_mode_select"),
    ScsiCommand(0x5A, "MODE SENSE (10)", "_mode_sense"),
    ScsiCommand(0xA8, "READ (12)", "_read12", needs_medium=True),
    ScsiCommand(0xBB, "SET CD SPEED", "_good", transfers_data=False),
    ScsiCommand(0xBD, "MECHANISM STATUS", "_mechanism_status"),
    ScsiCommand(0xBE, "READ CD", "_read_cd", needs_medium=True),
]
COMMANDS: dict[int, ScsiCommand] = {command.opcode: command for command in COMMAND_LIST}
UNKNOWN = ScsiCommand(-1, "unknown", "_invalid", transfers_data=False)

