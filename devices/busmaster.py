"""PIIX bus-master IDE: the DMA engine behind READ/WRITE DMA and TRIM.

Theory of operation
-------------------
The Intel 82371SB (PIIX3) IDE function has one bus-master engine per channel,
found through PCI BAR4 (16 I/O ports: primary at +0, secondary at +8).  Each
channel has three registers (82371SB datasheet, "Bus Master IDE I/O
Registers"):

* +0 command: bit 0 start/stop, bit 3 direction (1 = the engine writes memory,
  i.e. a READ DMA).  Setting start (0 -> 1) makes the engine walk the table
  from its beginning; clearing it stops the engine and drops Active.
* +2 status: bit 0 Active (read-only: set by start, cleared when the table is
  exhausted or the engine is stopped), bit 1 Error and bit 2 Interrupt (write 1
  to clear; Interrupt is set whenever the channel's drive asserts INTRQ), bits
  5/6 "drive 0/1 DMA capable" (plain read/write flags the BIOS sets).
* +4 descriptor table pointer (dword aligned, bits 1:0 read as zero).

The table is a list of 8-byte Physical Region Descriptors: a memory address
(bit 0 ignored), a byte count in the low 16 bits of the second dword (bit 0
ignored, 0 meaning 64 KiB) and end-of-table in bit 31.

The model moves a command's data the moment both sides are ready: when the
guest sets start while a drive waits with a DMA request, or when a drive posts
one while the engine is already started.  The PRDs are walked into segments
and the data is moved in groups of up to ``GROUP_BYTES``: one image access and
one guest-memory access per PRD entry, or, when the memory lends views of RAM
(:class:`DirectGuestMemory`, the machine's), one image read straight into RAM
per stretch of entries that are adjacent in memory.  The outcomes the datasheet tabulates:

* table and transfer the same size: the drive completes (INTRQ, so Interrupt
  = 1) and the engine reaches end-of-table, Active = 0;
* table longer than the transfer: the drive completes, Active stays 1 until
  the guest stops the engine; the rest of the table is kept and used if
  another DMA command arrives before the engine is restarted;
* table shorter: the covered bytes move, Active = 0, Interrupt stays 0 and the
  drive keeps waiting with DRQ -- restarting the engine with a new table
  continues the same command.

Not modelled: the direction bit (data always flows the way the command says,
as in QEMU), bus timing, PCI master aborts (the Error bit is never set by the
model; the guest may still clear it).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from .ata import AtaChannel
from .interfaces import GuestMemory

BUSMASTER_PORTS = 16
CHANNEL_STRIDE = 8
GROUP_BYTES = 4 << 20        # data moved per image access, at most

# Register offsets inside one channel's block of eight ports.
REG_COMMAND = 0
REG_STATUS = 2
REG_PRD_TABLE = 4            # .. 7

COMMAND_START = 0x01
COMMAND_TO_MEMORY = 0x08
COMMAND_WRITABLE = COMMAND_START | COMMAND_TO_MEMORY

STATUS_ACTIVE = 0x01
STATUS_ERROR = 0x02
STATUS_INTERRUPT = 0x04
STATUS_WRITE_ONE_TO_CLEAR = STATUS_ERROR | STATUS_INTERRUPT
STATUS_DMA_CAPABLE = 0x60    # drive 0 (bit 5) and drive 1 (bit 6)



@runtime_checkable
class DirectGuestMemory(GuestMemory, Protocol):
    """Guest memory that lends the engine a view of RAM, so a READ DMA lands there
    from the image without an intermediate copy."""

    def ram_window(self, address: int, length: int) -> memoryview | None:
        """A writable view of ``[address, address + length)`` if all of it is RAM."""
        ...

    def written(self, address: int, length: int) -> None:
        """The engine stored into a window: forget stale state (translated code)."""
        ...


PRD = struct.Struct("<II")   # physical address, byte count | end-of-table
PRD_END_OF_TABLE = 0x80000000
PRD_COUNT_MASK = 0xFFFE
PRD_ADDRESS_MASK = 0xFFFFFFFE
PRD_FULL_COUNT = 0x10000     # a count of 0 means 64 KiB


class _Engine:
    """One channel's bus-master registers and position in its PRD table."""

    def __init__(self, owner: BusMasterIde, channel: AtaChannel) -> None:
        self.owner = owner
        self.channel = channel
        self.command = 0
        self.status = 0
        self.prd_table = 0
        self._next_prd = 0                 # address of the next descriptor to load
        self._entry: tuple[int, int] | None = None   # (address, bytes) left in the current one
        self._entry_last = False
        self._exhausted = False
        channel.dma_ready_hook = self.run
        channel.interrupt_hook = self.drive_interrupt

    # --- registers ----------------------------------------------------------
    def read_byte(self, offset: int) -> int:
        if offset == REG_COMMAND:
            return self.command
        if offset == REG_STATUS:
            return self.status
        if REG_PRD_TABLE <= offset < REG_PRD_TABLE + 4:
            return self.prd_table >> (8 * (offset - REG_PRD_TABLE)) & 0xFF
        return 0

    def write_byte(self, offset: int, value: int) -> None:
        if offset == REG_COMMAND:
            self._write_command(value)
        elif offset == REG_STATUS:
            kept = self.status & ~(value & STATUS_WRITE_ONE_TO_CLEAR)
            self.status = (kept & ~STATUS_DMA_CAPABLE) | (value & STATUS_DMA_CAPABLE)
        elif REG_PRD_TABLE <= offset < REG_PRD_TABLE + 4:
            shift = 8 * (offset - REG_PRD_TABLE)
            table = (self.prd_table & ~(0xFF << shift)) | (value << shift)
            self.prd_table = table & 0xFFFFFFFC

    def _write_command(self, value: int) -> None:
        was_started = self.command & COMMAND_START
        self.command = value & COMMAND_WRITABLE
        if value & COMMAND_START and not was_started:
            self.status |= STATUS_ACTIVE
            self._next_prd = self.prd_table
            self._entry = None
            self._exhausted = False
            self.run()
        elif was_started and not value & COMMAND_START:
            self.status &= ~STATUS_ACTIVE

    def drive_interrupt(self) -> None:
        self.status |= STATUS_INTERRUPT

    # --- the transfer -------------------------------------------------------
    def _take(self, wanted: int) -> tuple[int, int] | None:
        """The next (address, length <= wanted) piece of the table, None at its end."""
        if self._entry is None:
            if self._exhausted:
                return None
            direct = self.owner.direct_memory
            window = None if direct is None else direct.ram_window(self._next_prd, PRD.size)
            if window is not None:
                address, flags = PRD.unpack_from(window)
            else:
                address, flags = PRD.unpack(self.owner.memory.read(self._next_prd, PRD.size))
            count = flags & PRD_COUNT_MASK or PRD_FULL_COUNT
            self._entry = (address & PRD_ADDRESS_MASK, count)
            self._entry_last = bool(flags & PRD_END_OF_TABLE)
            self._next_prd = (self._next_prd + PRD.size) & 0xFFFFFFFF
        address, left = self._entry
        length = min(left, wanted)
        if length == left:
            self._entry = None
            self._exhausted = self._entry_last
        else:
            self._entry = (address + length, left - length)
        return address, length

    def run(self) -> None:
        """Move data if the engine is started and the drive has a request waiting."""
        if not self.command & COMMAND_START or not self.status & STATUS_ACTIVE \
                or not self.owner.bus_master_enabled:
            return
        channel = self.channel
        request = channel.dma_request
        if request is None:
            return
        memory = self.owner.memory
        while channel.dma_request is request and request.remaining:
            segments: list[tuple[int, int]] = []
            group = 0
            wanted = min(GROUP_BYTES, request.remaining)
            while group < wanted:
                piece = self._take(wanted - group)
                if piece is None:
                    break
                segments.append(piece)
                group += piece[1]
            if not segments:
                break
            if request.to_memory and self.owner.direct_memory is not None:
                self._read_direct(self.owner.direct_memory, segments)
            elif request.to_memory:
                view = channel.dma_read(group)
                position = 0
                for address, length in segments:
                    if position >= len(view):
                        break
                    memory.write(address, view[position:position + length])
                    position += length
            else:
                channel.dma_write(b"".join(memory.read(address, length)
                                           for address, length in segments))
        if channel.dma_request is request:
            self.status &= ~STATUS_ACTIVE          # short table: the drive still waits
        elif request.remaining:
            self.status &= ~STATUS_ACTIVE          # the drive failed the command
        elif self._exhausted and self._entry is None:
            self.status &= ~STATUS_ACTIVE          # table and transfer ended together


    def _read_direct(self, memory: DirectGuestMemory, segments: list[tuple[int, int]]
                     ) -> None:
        """Device -> RAM for one group: each stretch of segments adjacent in memory is
        one image read straight into guest RAM (stops at the first short move)."""
        stretches: list[list[int]] = []
        for address, length in segments:
            if stretches and stretches[-1][0] + stretches[-1][1] == address:
                stretches[-1][1] += length
            else:
                stretches.append([address, length])
        channel = self.channel
        for address, length in stretches:
            window = memory.ram_window(address, length)
            if window is None:
                view = channel.dma_read(length)
                memory.write(address, view)
                moved = len(view)
            else:
                moved = channel.dma_read_into(window)
                if moved:
                    memory.written(address, moved)
            if moved < length:
                break


class BusMasterIde:
    """The PIIX bus-master register block for ``channels`` (primary, secondary)."""

    def __init__(self, channels: Sequence[AtaChannel], memory: GuestMemory) -> None:
        self.memory = memory
        self.direct_memory = memory if isinstance(memory, DirectGuestMemory) else None
        self.bus_master_enabled = True
        self.engines = [_Engine(self, channel) for channel in channels]
        self._registers: dict[int, tuple[_Engine, int]] = {}   # port -> (engine, offset)
        self.base = None

    @property
    def base(self) -> int | None:
        """The I/O base (PCI BAR4), None while unassigned."""
        return self._base

    @base.setter
    def base(self, base: int | None) -> None:
        self._base = base
        self._registers = {} if base is None else {
            base + index * CHANNEL_STRIDE + offset: (engine, offset)
            for index, engine in enumerate(self.engines) for offset in range(CHANNEL_STRIDE)}

    def io_ports(self) -> list[tuple[int, int]]:
        return [] if self.base is None else [(self.base, BUSMASTER_PORTS)]

    def set_bus_master_enabled(self, enabled: bool) -> None:
        """PCI command bit 2: without it the engines cannot reach memory."""
        self.bus_master_enabled = enabled
        if enabled:
            for engine in self.engines:
                engine.run()

    def reset(self) -> None:
        for engine in self.engines:
            engine.command = engine.status = engine.prd_table = 0
            engine._entry = None
            engine._exhausted = False

    def port_handlers(self) -> tuple[dict[int, Callable[[int, int], int]],
                                     dict[int, Callable[[int, int, int], None]]]:
        """Per-port read/write functions for the port bus (the same as :meth:`read` and
        :meth:`write` for that port; byte accesses skip the decoding)."""
        reads: dict[int, Callable[[int, int], int]] = {}
        writes: dict[int, Callable[[int, int, int], None]] = {}
        for port, (engine, offset) in self._registers.items():
            reads[port], writes[port] = self._port_functions(engine, offset)
        return reads, writes

    def _port_functions(self, engine: _Engine, offset: int
                        ) -> tuple[Callable[[int, int], int], Callable[[int, int, int], None]]:
        read_byte, write_byte, read, write = engine.read_byte, engine.write_byte, \
            self.read, self.write

        def read_port(port: int, size: int) -> int:
            return read_byte(offset) if size == 1 else read(port, size)

        def write_port(port: int, size: int, value: int) -> None:
            if size == 1:
                write_byte(offset, value & 0xFF)
            else:
                write(port, size, value)
        return read_port, write_port

    def _locate(self, port: int) -> tuple[_Engine | None, int]:
        return self._registers.get(port, (None, 0))

    def read(self, port: int, size: int) -> int:
        if size == 1:
            engine, offset = self._locate(port)
            return 0xFF if engine is None else engine.read_byte(offset)
        value = 0
        for byte in range(size):
            engine, offset = self._locate(port + byte)
            part = engine.read_byte(offset) if engine is not None else 0xFF
            value |= part << (8 * byte)
        return value

    def write(self, port: int, size: int, value: int) -> None:
        if size == 1:
            engine, offset = self._locate(port)
            if engine is not None:
                engine.write_byte(offset, value & 0xFF)
            return
        if size == 4:
            engine, offset = self._locate(port)
            if engine is not None and offset == REG_PRD_TABLE:
                engine.prd_table = value & 0xFFFFFFFC   # all four bytes of the pointer
                return
        # A wide access is its bytes in ascending port order, as the PIIX decodes it.
        for byte in range(size):
            engine, offset = self._locate(port + byte)
            if engine is not None:
                engine.write_byte(offset, value >> (8 * byte) & 0xFF)
