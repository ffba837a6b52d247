"""The PC: a Unicorn x86 CPU, memory, the port bus and the devices, and the run loop.

Theory of operation
-------------------
**CPU and reset.**  Unicorn's 32-bit engine is opened and put into real mode by
hand (CR0.PE = 0, real-mode segments); the 16-bit engine would misplace EIP
whenever it resumes in protected mode.  Execution starts at F000:FFF0 (linear
0xFFFF0, the ROM's reset vector through its alias below 1 MiB; a real CPU starts
at 0xFFFFFFF0 with a hidden CS base of 0xFFFF0000 and sees the same bytes).

**Memory.**  RAM from 0 to ``memory``, a host buffer Unicorn maps directly
(:class:`PhysicalMemory`): DMA and fast string I/O copy into it without going
through Unicorn and then drop any translated code for the range.  The firmware
image (up to 256 KiB) is mapped read-only at 4 GiB - size, and its last 128 KiB
(all of it if smaller) are copied into RAM just below 1 MiB, as QEMU's
``isa-bios`` alias.  That copy is *shadow RAM that is always writable*: SeaBIOS
unlocks it through the i440FX PAM registers and copies itself from the high
alias, which then changes nothing.  The VGA window 0xA0000-0xBFFFF is plain RAM too.  Accesses to
unmapped addresses (above RAM, chipset MMIO such as an HPET probe) get a
scratch page filled with 0xFF, like a floating bus; executing there is a fault.

**Slices and the clock.**  The CPU runs in slices; between slices the machine
lets the timers (PIT, RTC) raise their IRQs, polls terminal input and delivers
a pending hardware interrupt when IF=1.  Port I/O goes straight to the devices
from Unicorn's IN/OUT hooks; when an access makes an interrupt deliverable the
slice is cut short so it is taken right after the current instruction.  While
an IRQ waits for IF=1 slices are short, so it is taken soon after an STI.  There
are two ways to bound a slice, as QEMU has two clocks:

* *Fast* (``emu run --fast``, like QEMU without ``-icount``): no instruction
  count, so no Python and no per-instruction callback on the hot path -- the
  guest runs at Unicorn's JIT speed.  A slice ends by Unicorn's C-level timeout
  (``emu_start``'s ``timeout``: a thread inside Unicorn that calls
  ``uc_emu_stop``, so the GIL that :class:`~emu.fastuc.FastUc` keeps during
  ``emu_start`` does not get in its way) at the next timer deadline, at most
  :data:`SLICE_MAX_US`.  Time is :class:`~emu.clock.WallClock`: host time, so
  PIT and RTC interrupts arrive on time and a kernel's delay calibration and
  jiffies agree with the TSC.  Instructions are not counted (the report says
  so) and runs are not repeatable.  **Known defect, so not the default:** with
  slices ended asynchronously (this timer, or Unicorn's own ``timeout``, both call
  ``uc_emu_stop`` from another thread) some guests see corrupted state -- the
  BIOS random-read test (tests/test_bios_disks.py) fails with 50 us slices and
  passes with slices no timer ends, and SYSLINUX sometimes reports "Load error".
  The cause inside Unicorn is not found yet.
* *Deterministic* (the default of ``emu run``, of :class:`Machine` and of the
  pytest plugin, so tests repeat exactly; ``--max-instructions`` and ``--trace``
  require it): a slice is :data:`SLICE_INSTRUCTIONS` instructions
  counted by Unicorn (its ``count`` option inserts a C callback before every
  instruction: over ten times slower than the fast mode).  The instructions a
  slice really executed are read from Unicorn's counter
  (:meth:`FastUc.executed`), so a slice cut short by a hook, HLT or an exception
  is charged what ran, not the whole slice.  Time is
  :class:`~emu.clock.VirtualClock`, derived from instructions and port accesses
  only: same inputs, same trace, same disk.

In both modes RDTSC reads the same clock (1 GHz) and HLT with nothing to do
jumps the clock to the next timer deadline.  A CPU that ends
:data:`STALL_SLICES` slices in a row at one address without executing anything
has stopped advancing: the run ends with a report.

**Interrupts.**  See :mod:`emu.x86`: software INTs and exceptions come in
through ``UC_HOOK_INTR`` (#UD through the invalid-instruction hook) and are
vectored by hand through the IVT or IDT, with privilege changes through the
TSS, the architectural error codes and the double/triple-fault rules; hardware
IRQs are acknowledged at the PIC and vectored the same way, at slice ends,
after a port access that made one deliverable, and before a software INT
issued with IF=1 (the INT is re-executed after the handler's IRET).  STI's
one-instruction shadow is respected at slice ends.  Every guest memory access
the machine makes for the CPU (descriptor tables, stack frames, code peeks,
fast string I/O, trace, report) goes through :func:`emu.x86.translate`.

**Not modelled.**  The A20 gate (always enabled; ports 0x92 and the 8042 keep
the bit), PAM read/write steering (see Memory), SMM, APIC/IOAPIC (hidden from
CPUID), task gates, virtual-8086 mode and rings 1-2 (see :mod:`emu.x86`).

**HLT.**  Unicorn stops at HLT with EIP past it, indistinguishable from a slice
ending by count after any instruction whose last byte is 0xF4.  The machine
resolves this with a code hook on each address seen before such a stop: the
hook fires only when the byte there is executed as an instruction, i.e. a
HLT.  The first time an address is seen a stop with IF=1 is taken as HLT (a
harmless idle skip if wrong) and one with IF=0 as HLT only in the ``cli; hlt``
idiom; later stops there are exact.  An address whose hook stays silent through a
few such stops is proven a tail byte and unwatched (every code hook costs a check
per executed instruction; at most :data:`MAX_HLT_SITES` are watched).  That is
``--icount`` only.  In fast mode any ``UC_HOOK_CODE`` makes Unicorn stop
restoring EIP at the exits and port hooks of translated blocks (it assumes the
code hooks keep it current), so there a stop is a HLT when the slice returned
well before its timer, no hook stopped it and the byte before EIP is 0xF4 (with
IF=0: in the ``cli; hlt`` idiom or the second such stop in a row).  A HLT
with IF=1 waits: the clock jumps to the next timer deadline and the interrupt is
delivered (when the serial port is an interactive terminal the wait is paced to
wall time instead, so a boot menu's countdown leaves time to press a key).  With
IF=0, or with no timer armed, nothing can wake the CPU and the machine stops.

**Port I/O cost.**  IN/OUT hooks are called straight from C with the GIL kept
through ``emu_start`` (:class:`~emu.fastuc.FastUc`).  A port's first accesses
classify it; once it is known to carry no string I/O it is *plain*: one table
lookup reaches the function serving it (the port bus's per-port handlers), with
the access counted and kept for the stop report as the bus does.  Remaps and
reboots forget the classification.  READ DMA lands in RAM straight from the
image (:meth:`PhysicalMemory.ram_window`).  Device writes to RAM drop translated
code by *physical* address (:meth:`FastUc.remove_cache_physical`).

**Fast string I/O.**  A ``rep insw/insd/outsw/...`` on a
:class:`~devices.interfaces.StringPortDevice` is moved in one step from the
first item's hook: the rest of the burst goes through ``read_string`` /
``write_string`` and guest memory in one block (with paging on, the part of the
burst inside the first item's page), and (E)CX and (E)DI/(E)SI are
set so that the CPU's own bookkeeping for the first item ends the instruction
exactly where the slow path would.  The hook reads the instruction at CS:EIP:
Unicorn restores EIP from the translated block before an IN/OUT hook -- except
when any ``UC_HOOK_CODE`` exists, which is why fast mode never installs one.
"""

from __future__ import annotations

import ctypes
import enum
import mmap
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unicorn import (
    UC_ARCH_X86,
    UC_HOOK_CODE,
    UC_HOOK_INSN,
    UC_HOOK_INSN_INVALID,
    UC_HOOK_INTR,
    UC_HOOK_MEM_FETCH_UNMAPPED,
    UC_HOOK_MEM_READ_UNMAPPED,
    UC_HOOK_MEM_WRITE_UNMAPPED,
    UC_MODE_32,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    UC_PROT_WRITE,
    Uc,
    UcError,
)
from unicorn import x86_const as X

import disks
from devices import geometry as disk_geometry
from devices.ata import AtaChannel, AtaDrive
from devices.busmaster import BusMasterIde
from devices.cmos import DEFAULT_START, Cmos, CmosLayout
from devices.interfaces import PortDevice, StringPortDevice
from devices.misc import (
    DebugConsole,
    DebugExit,
    Kbc8042,
    PostCode,
    ResetControl,
    SystemControlPortA,
)
from devices.pci import PciHost
from devices.pic import PicPair
from devices.pit import Pit, SystemControlPortB
from devices.uart import COM1, COM2, Uart16550
from disks import Image as DiskImage

from . import x86
from .clock import NS_PER_INSTRUCTION, NS_PER_PORT_ACCESS, VirtualClock, WallClock
from .console import CharBackend, open_backend
from .fastuc import FastUc
from .portbus import MASKS as PORT_MASKS
from .portbus import PortBus

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
PAGE = 4 * KiB
SLICE_INSTRUCTIONS = 50_000      # --icount: instructions per slice
IRQ_WAIT_INSTRUCTIONS = 2_000    # --icount: slice while an IRQ waits for IF=1
SLICE_MAX_US = 10_000            # fast mode: longest slice (wall time)
SLICE_MIN_US = 50                # fast mode: shortest slice (the timer thread's grain)
IRQ_WAIT_US = 50                 # fast mode: slice while an IRQ waits for IF=1
STALL_SLICES = 1_000             # slices in a row that end at once at one address: stuck
RESET_CS, RESET_IP = 0xF000, 0xFFF0
ISA_BIOS_MAX = 128 * KiB
BIOS_MAX = 256 * KiB
BIOS_MIN = 4 * KiB
MEMORY_MIN = 1 * MiB
MEMORY_MAX = 3 * GiB + 512 * MiB
SCRATCH_PAGES_MAX = 256
INPUT_POLL_SLICES = 16
EXCEPTION_STORM = 10_000       # back-to-back exceptions at one address = a hung CPU
IDE_CHANNELS = ((0x1F0, 0x3F6, 14), (0x170, 0x376, 15))
CLI = 0xFA
HLT = 0xF4
STI = 0xFB
POP_SS = 0x17
MOV_SREG = 0x8E               # mov Sreg, r/m16
MODRM_REG_SS = 0x10           # ModRM reg field 2 = SS
INPUT_WAIT_S = 0.05
MAX_IDLE_NS = 60 * 1_000_000_000  # a virtual minute halted while timers fire into masks
UD_VECTOR = 6
MISSING: Any = object()
STRING_IO_REGISTERS = (X.UC_X86_REG_CR0, X.UC_X86_REG_EFLAGS, X.UC_X86_REG_CS,
                       X.UC_X86_REG_EIP, X.UC_X86_REG_ECX, X.UC_X86_REG_EDI, X.UC_X86_REG_ESI,
                       X.UC_X86_REG_ES, X.UC_X86_REG_DS)
MAX_HLT_SITES = 32            # watched possible-HLT addresses (each costs every instruction)
HLT_SITE_PROOF = 3            # stops at a watched address without its hook firing: not a HLT
STRING_PORT_GIVE_UP = 64      # plain IN/OUTs on a port before the fast path stops looking


def _floating_read(port: int, size: int) -> int:
    return 0xFFFF_FFFF          # an unclaimed port: all ones (masked to the size)


def _ignored_write(port: int, size: int, value: int) -> None:
    pass                        # an unclaimed port ignores writes


class StopReason(enum.Enum):
    DEBUG_EXIT = "debug-exit"
    RESET = "reset"
    HALTED = "halted"
    CPU_FAULT = "cpu-fault"
    TIMEOUT = "timeout"
    INSTRUCTION_BUDGET = "instruction-budget"
    USER_QUIT = "user-quit"
    INTERNAL_ERROR = "internal-error"


# Exit status of `emu run` for each way a run can end (debug exit: the value written).
EXIT_RESET = 0
EXIT_INTERNAL_ERROR = 121
EXIT_USER_QUIT = 123
EXIT_TIMEOUT = 124
EXIT_HALTED = 125
EXIT_CPU_FAULT = 126
EXIT_INSTRUCTION_BUDGET = 127
EXIT_CODES = {
    StopReason.RESET: EXIT_RESET,
    StopReason.INTERNAL_ERROR: EXIT_INTERNAL_ERROR,
    StopReason.USER_QUIT: EXIT_USER_QUIT,
    StopReason.TIMEOUT: EXIT_TIMEOUT,
    StopReason.HALTED: EXIT_HALTED,
    StopReason.CPU_FAULT: EXIT_CPU_FAULT,
    StopReason.INSTRUCTION_BUDGET: EXIT_INSTRUCTION_BUDGET,
}


class MachineConfigError(Exception):
    """A bad machine option (memory size, BIOS file, disk spec): one line for the user."""


@dataclass(frozen=True)
class DiskSpec:
    """One ``--disk`` option."""

    path: str
    format: str | None = None
    bus: int | None = None
    unit: int | None = None
    readonly: bool = False
    snapshot: bool = False

    @classmethod
    def parse(cls, text: str) -> DiskSpec:
        path, *options = text.split(",")
        if not path:
            raise MachineConfigError(f"--disk {text!r}: no file name")
        values: dict[str, Any] = {}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or key not in ("format", "bus", "unit", "readonly", "snapshot"):
                raise MachineConfigError(f"--disk {text!r}: unknown option {option!r}")
            try:
                if key in ("bus", "unit"):
                    number = int(value)
                    if number not in (0, 1):
                        raise ValueError
                    values[key] = number
                elif key in ("readonly", "snapshot"):
                    values[key] = disks.image.parse_bool(value)
                else:
                    values[key] = value
            except ValueError:
                raise MachineConfigError(f"--disk {text!r}: bad value for {key}") from None
        return cls(path, **values)


@dataclass
class RunResult:
    exit_code: int
    reason: StopReason
    detail: str
    serial: bytes
    debugcon: bytes
    virtual_ns: int
    instructions: int
    report: str = ""

    @property
    def serial_text(self) -> str:
        return self.serial.decode("latin-1")

    @property
    def debugcon_text(self) -> str:
        return self.debugcon.decode("latin-1")


@dataclass
class _HltSite:
    """A code hook watching an address that might hold a HLT (see module docstring)."""

    hook: int
    fired: bool = False
    silent_stops: int = 0


@dataclass
class _Stop:
    reason: StopReason
    detail: str
    exit_code: int


def parse_memory_size(value: int | str) -> int:
    try:
        size = disks.image.parse_size(value)
    except ValueError:
        raise MachineConfigError(f"--memory {value!r} is not a size") from None
    if not MEMORY_MIN <= size <= MEMORY_MAX or size % PAGE:
        raise MachineConfigError(
            f"--memory {value}: must be a multiple of 4 KiB between 1M and 3584M")
    return size


def load_bios(bios: str | Path | bytes | None) -> bytes:
    if bios is None:
        import firmware
        try:
            bios = firmware.path("bios.bin")
        except FileNotFoundError:
            bios = None
        if bios is None or not Path(bios).exists():
            raise MachineConfigError("the built-in BIOS firmware/bios.bin is missing "
                                     "(build it with python -m firmware.build)")
    if isinstance(bios, bytes):
        image = bios
    else:
        try:
            image = Path(bios).read_bytes()
        except OSError as error:
            raise MachineConfigError(f"--bios {bios}: {error.strerror}") from None
    if not BIOS_MIN <= len(image) <= BIOS_MAX or len(image) % PAGE:
        raise MachineConfigError(
            f"BIOS image is {len(image)} bytes: must be a multiple of 4 KiB up to 256 KiB")
    return image


class PhysicalMemory:
    """Guest RAM: a host buffer Unicorn maps directly (devices.interfaces.GuestMemory).

    Devices and the machine's fast paths copy into and out of the buffer without
    going through Unicorn; a write then drops any translated code for the range,
    so code loaded by DMA or string I/O runs as loaded.  Addresses beyond RAM read
    as a floating bus (0xFF) and ignore writes.
    """

    def __init__(self, uc: Any, ram_size: int) -> None:
        self.uc = uc
        self.ram_size = ram_size
        self.buffer = mmap.mmap(-1, ram_size)
        self.view = memoryview(self.buffer)
        self._anchor = ctypes.c_char.from_buffer(self.buffer)
        uc.mem_map_ptr(0, ram_size, UC_PROT_ALL, ctypes.addressof(self._anchor))

    def read(self, address: int, length: int) -> bytes:
        inside = max(0, min(length, self.ram_size - address))
        data = bytes(self.view[address:address + inside]) if inside else b""
        return data + b"\xff" * (length - inside)

    def write(self, address: int, data: bytes | bytearray | memoryview) -> None:
        inside = max(0, min(len(data), self.ram_size - address))
        if inside:
            self.view[address:address + inside] = memoryview(data).cast("B")[:inside]
            self.uc.remove_cache_physical(address, address + inside)

    def ram_window(self, address: int, length: int) -> memoryview | None:
        """A writable view of RAM for a DMA engine; call :meth:`written` after storing."""
        if 0 <= address and address + length <= self.ram_size:
            return self.view[address:address + length]
        return None

    def written(self, address: int, length: int) -> None:
        """Stored into a :meth:`ram_window`: drop translated code for the range."""
        if length:
            self.uc.remove_cache_physical(address, address + length)

    def byte(self, address: int) -> int:
        """One byte, for the machine's peeks at code (0xFF outside RAM)."""
        return self.view[address] if 0 <= address < self.ram_size else \
            int(self.uc.mem_read(address, 1)[0])

    def peek(self, address: int, length: int) -> bytes:
        """Bytes at a physical address (RAM or ROM)."""
        if 0 <= address and address + length <= self.ram_size:
            return bytes(self.view[address:address + length])
        return bytes(self.uc.mem_read(address, length))



class Machine:
    """A PC built from ``emu run`` options; :meth:`run` boots it until it stops."""

    def __init__(self, *, bios: str | Path | bytes | None = None, memory: int | str = "128M",
                 disks: Sequence[str | DiskSpec] = (), serial: str = "null",
                 debugcon: str = "null", snapshot: bool = False, timeout: float | None = None,
                 trace: str | Path | None = None, reboot: bool = False,
                 max_instructions: int | None = None,
                 rtc_start: Any = DEFAULT_START, serial_input: bytes = b"",
                 icount: bool = True) -> None:
        """``icount``: deterministic instruction-counted mode (``emu run --icount``);
        False runs guest code at JIT speed on wall time (``emu run``'s default)."""
        self.ram_size = parse_memory_size(memory)
        # Deterministic, instruction-counted execution (see "Slices and the clock");
        # an instruction budget and a trace need counted instructions.
        self.icount = icount or max_instructions is not None or trace is not None
        self.bios = load_bios(bios)
        self.timeout = timeout
        self.reboot = reboot
        self.max_instructions = max_instructions
        self.rtc_start = rtc_start
        self.disk_specs = [spec if isinstance(spec, DiskSpec) else DiskSpec.parse(spec)
                           for spec in disks]
        self.snapshot = snapshot
        self.images: list[tuple[int, int, DiskImage]] = []
        self._temporary_dirs: list[str] = []
        self._stop: _Stop | None = None
        self.instructions = 0
        self.slices = 0
        self.hlt_sites: dict[int, _HltSite] = {}   # watched addresses of a possible HLT
        self.not_hlt_sites: set[int] = set()        # 0xF4 bytes proven not to be HLTs
        self.hlt_fired: int | None = None
        self.scratch_pages = 0
        self.exception_streak: tuple[tuple[int, int] | None, int] = (None, 0)
        self.stall: tuple[int, int] = (-1, 0)      # (address, slices) ending at once there
        self.cut_short = False                      # a hook stopped the running slice
        self.slice_wall_s = 0.0                     # fast mode: wall time in emu_start
        self.slice_timeout_us = 0                   # fast mode: the slice's timer
        self.last_hlt_stop = -1                     # fast mode: last HLT stop with IF=0
        self.reboot_requested: str | None = None
        self.deadline: float | None = None
        self.wall_start = 0.0
        self.fast_string_io = True  # tests turn it off to compare with the slow path
        # per port: misses so far, -1 once string I/O was seen, GIVE_UP = never look
        self.string_port_misses: dict[int, int] = {}
        self.string_devices: dict[int, StringPortDevice] = {}  # ports with misses < GIVE_UP
        # ports past classification with no string I/O: the bus function serving them
        self.plain_readers: dict[int, Callable[[int, int], int]] = {}
        self.plain_writers: dict[int, Callable[[int, int, int], None]] = {}
        self.decoded_string_io: dict[tuple[bytes, bool], x86.StringIo | None] = {}
        self.pending_serial_input = bytearray(serial_input)
        self.trace_path = Path(trace) if trace is not None else None
        self.tracer: Any = None
        self.serial_backend: CharBackend = open_backend(serial, interactive=True)
        self.debugcon_backend: CharBackend = open_backend(debugcon)
        try:
            self._open_disks()
            self.uc = self._make_cpu()
            self.memory = PhysicalMemory(self.uc, self.ram_size)  # maps RAM at 0
            self._build_devices()
            self._install_hooks()
            self._power_on()
        except BaseException:
            self.close()
            raise

    # --- construction -----------------------------------------------------
    def _open_disks(self) -> None:
        taken: set[tuple[int, int]] = set()
        free = [(0, 0), (0, 1), (1, 0), (1, 1)]
        for spec in self.disk_specs:
            if spec.bus is not None and spec.unit is not None:
                slot = (spec.bus, spec.unit)
            else:
                candidates = [s for s in free if s not in taken
                              and (spec.bus is None or s[0] == spec.bus)
                              and (spec.unit is None or s[1] == spec.unit)]
                if not candidates:
                    raise MachineConfigError(f"--disk {spec.path}: no free IDE position")
                slot = candidates[0]
            if slot in taken:
                raise MachineConfigError(
                    f"--disk {spec.path}: bus {slot[0]} unit {slot[1]} is already in use")
            taken.add(slot)
            snapshot = spec.snapshot or self.snapshot
            try:
                image = disks.open(spec.path, format=spec.format,
                                   readonly=spec.readonly or snapshot)
            except disks.ImageError as error:
                text = str(error)  # image errors already name their file
                prefix = "--disk: " if spec.path in text else f"--disk {spec.path}: "
                raise MachineConfigError(prefix + text) from None
            except OSError as error:
                raise MachineConfigError(f"--disk {spec.path}: {error.strerror}") from None
            if snapshot:
                from disks.overlay import OverlayImage
                folder = tempfile.mkdtemp(prefix="emu-snapshot-")
                self._temporary_dirs.append(folder)
                image = OverlayImage(image, os.path.join(folder, "overlay"))
            self.images.append((slot[0], slot[1], image))

    def _make_cpu(self) -> FastUc:
        uc = FastUc(UC_ARCH_X86, UC_MODE_32)
        high = (1 << 32) - len(self.bios)
        uc.mem_map(high, len(self.bios), UC_PROT_ALL)
        uc.mem_write(high, self.bios)
        uc.mem_protect(high, len(self.bios), UC_PROT_READ | UC_PROT_EXEC)
        return uc

    def _build_devices(self) -> None:
        clock = self.clock = VirtualClock() if self.icount else WallClock()
        bus = self.bus = PortBus()
        pic = self.pic = PicPair()
        self.pit = Pit(clock, pic.irq_line(0))
        self.port_b = SystemControlPortB(self.pit)
        self.cmos = Cmos(clock, pic.irq_line(8), start=self.rtc_start)
        self.com1 = Uart16550(COM1[0], pic.irq_line(COM1[1]), self.serial_backend.write)
        self.com2 = Uart16550(COM2[0], pic.irq_line(COM2[1]))
        self.debug_exit = DebugExit(self._on_debug_exit)
        self.debugcon = DebugConsole(self.debugcon_backend.write)
        self.post = PostCode()
        self.port_a = SystemControlPortA(self._on_reset)
        self.reset_control = ResetControl(self._on_reset)
        self.kbc = Kbc8042(self._on_reset, irq1=pic.irq_line(1), irq12=pic.irq_line(12))
        self.channels = [AtaChannel(command, control, pic.irq_line(irq))
                         for command, control, irq in IDE_CHANNELS]
        for bus_index, unit, image in self.images:
            self.channels[bus_index].attach(unit, AtaDrive(image))
        self.busmaster = BusMasterIde(self.channels, self.memory)
        self.pci = PciHost(self.busmaster, self._on_pci_remap)
        devices: list[PortDevice] = [
            pic, self.pit, self.port_b, self.cmos, self.com1, self.com2, self.debug_exit,
            self.debugcon, self.post, self.port_a, self.kbc, *self.channels, self.pci]
        for device in devices:
            bus.attach(device)
        bus.attach(self.busmaster)
        bus.attach_byte_overlay(self.reset_control)
        self.timers = (self.pit, self.cmos)
        self._fill_cmos()

    def _fill_cmos(self) -> None:
        layout = CmosLayout(self.cmos)
        layout.memory(self.ram_size)
        layout.equipment()
        for bus_index, unit, image in self.images:
            # As QEMU and Bochs: the drive's own geometry in the type-47 tables, and the
            # translation the BIOS should apply on top of it in 0x39.
            drive = disk_geometry.drive_geometry(image)
            layout.disk(bus_index * 2 + unit, drive.cylinders, drive.heads, drive.sectors,
                        int(disk_geometry.bios_translation(image)))
        layout.boot_order()
        layout.checksum()

    def _on_pci_remap(self) -> None:
        self.bus.remap(self.busmaster)
        self._forget_port_classes()

    def _install_hooks(self) -> None:
        uc = self.uc
        uc.hook_port_io_raw(self._on_in, self._on_out)
        uc.hook_add(UC_HOOK_INSN, self._on_cpuid, None, 1, 0, X.UC_X86_INS_CPUID)
        uc.hook_rdtsc(self._tsc)
        uc.hook_add(UC_HOOK_INTR, self._on_interrupt)
        uc.hook_add(UC_HOOK_INSN_INVALID, self._on_invalid_instruction)
        uc.hook_add(UC_HOOK_MEM_READ_UNMAPPED | UC_HOOK_MEM_WRITE_UNMAPPED,
                    self._on_unmapped)
        uc.hook_add(UC_HOOK_MEM_FETCH_UNMAPPED, self._on_fetch_unmapped)
        if self.trace_path is not None:
            from .trace import Tracer
            self.tracer = Tracer(self.trace_path)
            uc.hook_add(UC_HOOK_CODE, self.tracer.on_instruction)
            self.bus.tracer = self.tracer.on_port

    def _power_on(self) -> None:
        """CPU reset state, shadow copy of the BIOS, devices at power-on."""
        uc = self.uc
        isa_size = min(len(self.bios), ISA_BIOS_MAX)
        self.memory.write(MiB - isa_size, self.bios[-isa_size:])
        uc.reg_write(X.UC_X86_REG_CR0, 0x6000_0010)  # CD NW ET, real mode
        uc.reg_write(X.UC_X86_REG_CR3, 0)
        uc.reg_write(X.UC_X86_REG_CR4, 0)
        uc.reg_write(X.UC_X86_REG_EFLAGS, 0x2)
        for name in ("ds", "es", "ss", "fs", "gs"):
            uc.reg_write(x86.SEGMENT_REGISTERS[name], 0)
        uc.reg_write(X.UC_X86_REG_GDTR, (0, 0, 0xFFFF, 0))
        uc.reg_write(X.UC_X86_REG_IDTR, (0, 0, 0x3FF, 0))
        for register in (X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX,
                         X.UC_X86_REG_ESI, X.UC_X86_REG_EDI, X.UC_X86_REG_EBP,
                         X.UC_X86_REG_ESP):
            uc.reg_write(register, 0)
        uc.reg_write(X.UC_X86_REG_EDX, 0x0633)  # family/model/stepping, as CPUID leaf 1
        uc.reg_write(X.UC_X86_REG_CS, RESET_CS)
        uc.reg_write(X.UC_X86_REG_EIP, RESET_IP)

    def _reboot(self) -> None:
        self._power_on()
        self.pic.reset()
        self.pit.reset()
        self.port_b.reset()
        self.com1.reset()
        self.com2.reset()
        self.kbc.reset()
        for channel in self.channels:
            channel.reset()
        self.busmaster.reset()
        self.pci.reset()
        self.bus.remap(self.busmaster)
        self._forget_port_classes()

    # --- device callbacks ---------------------------------------------------
    def _request_stop(self, reason: StopReason, detail: str, exit_code: int | None = None) -> None:
        if self._stop is None:
            self._stop = _Stop(reason, detail,
                               EXIT_CODES[reason] if exit_code is None else exit_code)
        self.uc.emu_stop()

    def _stop_slice(self) -> None:
        """End the running slice early (from a hook), the instruction completed."""
        self.cut_short = True
        self.uc.emu_stop()

    def _on_debug_exit(self, value: int) -> None:
        self._request_stop(StopReason.DEBUG_EXIT, f"guest wrote {value:#x} to port 0xF4",
                           value & 0xFF)

    def _on_reset(self, why: str) -> None:
        if self.reboot:
            self.reboot_requested = why
            self._stop_slice()
        else:
            self._request_stop(StopReason.RESET, why)

    # --- Unicorn hooks --------------------------------------------------------
    def _after_io(self) -> None:
        """An access may have made an interrupt deliverable: cut the slice short."""
        self.pic.changed = False
        if self.pic.interrupt_pending and self.uc.reg_read(X.UC_X86_REG_EFLAGS) & x86.FLAG_IF:
            self._stop_slice()

    def _classify_port(self, port: int, size: int) -> int:
        """First access to a port: could a ``rep ins/outs`` there take the fast path?
        Returns its miss count (GIVE_UP: never look)."""
        device = self.bus.owner(port, size)
        if self.fast_string_io and isinstance(device, StringPortDevice):
            self.string_devices[port] = device
            misses = 0
        else:
            misses = STRING_PORT_GIVE_UP
        self.string_port_misses[port] = misses
        return misses

    # IN/OUT come straight from C (FastUc.hook_port_io_raw).  A port known to be plain
    # (no string I/O worth looking for, no byte overlay) goes through one table lookup
    # to the function serving it, with the bus's bookkeeping inline; anything raised
    # is handed to Unicorn, which ends the run with it.
    def _on_in(self, _handle: int, port: int, size: int, _user: int = 0) -> int:
        try:
            self.clock.ns += NS_PER_PORT_ACCESS
            reader = self.plain_readers.get(port)
            if reader is None:
                value = self._in_unclassified(port, size)
            else:
                value = reader(port, size) & PORT_MASKS[size]
                bus = self.bus
                bus.accesses += 1
                bus.recent.append(("in", port, size, value))
                if bus.tracer is not None:
                    bus.tracer("in", port, size, value)
            if self.pic.changed:
                self._after_io()
            return value
        except BaseException as error:  # noqa: BLE001 (re-raised by emu_start)
            self.uc.fail(error)
            return 0

    def _on_out(self, _handle: int, port: int, size: int, value: int, _user: int = 0
                ) -> None:
        try:
            self.clock.ns += NS_PER_PORT_ACCESS
            writer = self.plain_writers.get(port)
            if writer is None:
                self._out_unclassified(port, size, value)
            else:
                value &= PORT_MASKS[size]
                bus = self.bus
                bus.accesses += 1
                bus.recent.append(("out", port, size, value))
                if bus.tracer is not None:
                    bus.tracer("out", port, size, value)
                writer(port, size, value)
            if self.pic.changed:
                self._after_io()
        except BaseException as error:  # noqa: BLE001 (re-raised by emu_start)
            self.uc.fail(error)

    def _in_unclassified(self, port: int, size: int) -> int:
        misses = self.string_port_misses.get(port)
        if misses is None:
            misses = self._classify_port(port, size)
        if misses < STRING_PORT_GIVE_UP:
            value = self._fast_string_io(port, size, self.string_devices[port], None)
            if value is not None:
                return value
        else:
            self._make_plain(port)
        return self.bus.read(port, size)

    def _out_unclassified(self, port: int, size: int, value: int) -> None:
        misses = self.string_port_misses.get(port)
        if misses is None:
            misses = self._classify_port(port, size)
        if misses < STRING_PORT_GIVE_UP:
            if self._fast_string_io(port, size, self.string_devices[port], value) is not None:
                return
        else:
            self._make_plain(port)
        self.bus.write(port, size, value)

    def _make_plain(self, port: int) -> None:
        """From now on the port's accesses take the one-lookup path (see _on_in)."""
        bus = self.bus
        if port not in bus.byte_overlays:  # else byte and wide accesses differ
            self.plain_readers[port] = bus.wide_readers.get(port, _floating_read)
            self.plain_writers[port] = bus.wide_writers.get(port, _ignored_write)

    def _forget_port_classes(self) -> None:
        """Port ownership changed: classify every port afresh."""
        self.string_port_misses.clear()
        self.string_devices.clear()
        self.plain_readers.clear()
        self.plain_writers.clear()

    def _on_cpuid(self, uc: Uc, _: Any) -> int:
        eax, ebx, ecx, edx = x86.cpuid(uc.reg_read(X.UC_X86_REG_EAX) & 0xFFFF_FFFF)
        uc.reg_write(X.UC_X86_REG_EAX, eax)
        uc.reg_write(X.UC_X86_REG_EBX, ebx)
        uc.reg_write(X.UC_X86_REG_ECX, ecx)
        uc.reg_write(X.UC_X86_REG_EDX, edx)
        return 1  # skip Unicorn's own CPUID

    def _tsc(self) -> int:
        """RDTSC from the machine's clock (x86.TSC_HZ): consistent with PIT and RTC."""
        return self.clock.now_ns() * x86.TSC_HZ // 1_000_000_000

    def _on_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int,
                     _: Any) -> bool:
        if self.scratch_pages >= SCRATCH_PAGES_MAX:
            return False
        first = address & ~(PAGE - 1)
        last = (address + size - 1) & ~(PAGE - 1)
        for page in range(first, last + PAGE, PAGE):
            try:
                uc.mem_map(page, PAGE, UC_PROT_READ | UC_PROT_WRITE)
                uc.mem_write(page, b"\xff" * PAGE)
                self.scratch_pages += 1
            except UcError:
                pass  # already mapped (the access straddled a mapped page)
        return True

    def _on_fetch_unmapped(self, uc: Uc, access: int, address: int, size: int, value: int,
                           _: Any) -> bool:
        self._request_stop(StopReason.CPU_FAULT,
                           f"instruction fetch from unmapped address {address:#x}")
        return False

    def _on_hlt_site(self, uc: Uc, address: int, size: int, _: Any) -> None:
        self.hlt_fired = address

    def _on_interrupt(self, uc: Uc, vector: int, _: Any) -> None:
        if not self.icount:
            # The delivery writes EIP.  Unicorn then believes the user keeps EIP in sync
            # until the run ends, and a later stop in the same run would leave EIP at
            # the start of the translated block it stopped in: end the slice here.
            self._stop_slice()
        try:
            self._interrupt(vector)
        except x86.TripleFault as error:
            if self._idt_is_empty():
                # "lidt with limit 0, then fault": the classic deliberate reset.
                self._on_reset(f"triple fault with an empty IDT ({error})")
            else:
                self._cpu_fault(f"triple fault: {error}")
        except x86.DeliveryError as error:
            self._cpu_fault(f"not modelled: {error}")
        except UcError as error:
            self._cpu_fault(f"interrupt {vector:#x} delivery failed ({error})")

    def _on_invalid_instruction(self, uc: Uc, _: Any) -> bool:
        """Unicorn reports #UD here rather than as an interrupt: vector it (INT 6)."""
        self._on_interrupt(uc, UD_VECTOR, None)
        return True

    def _interrupt(self, vector: int) -> None:
        uc = self.uc
        pc = x86.linear_pc(uc)
        before = self._peek_code(pc - 2, 2) if pc >= 2 else b""
        software = (before[-2:] == bytes((0xCD, vector))
                    or (vector == 3 and before[-1:] == b"\xcc")
                    or (vector == 4 and before[-1:] == b"\xce"))
        icebp = vector == 1 and before[-1:] == b"\xf1"
        if self.tracer is not None:
            self.tracer.note(f"{'int' if software or icebp else 'exception'} {vector:#04x} "
                             f"at {pc:#x}")
        if software or icebp:
            self.exception_streak = (None, 0)
            length = 2 if before[-2:] == bytes((0xCD, vector)) else 1
            if self._irq_before_software_int(pc - length):
                # The pending IRQ comes first; its IRET returns to the INT instruction.
                uc.reg_write(X.UC_X86_REG_EIP, uc.reg_read(X.UC_X86_REG_EIP) - length)
                self._deliver_irq()
                return
            x86.deliver_interrupt(uc, vector, software=software)
            return
        # A CPU exception: EIP is the faulting instruction.  Unicorn's error code, and
        # the exception in flight cleared (else the next one arrives as #DF).
        unicorn_error_code = uc.exception_taken()
        where, count = self.exception_streak
        count = count + 1 if where == (pc, vector) else 1
        self.exception_streak = ((pc, vector), count)
        if count >= EXCEPTION_STORM:
            self._cpu_fault(f"{x86.EXCEPTION_NAMES.get(vector, vector)} repeats forever "
                            f"at {pc:#x}")
            return
        error_code = unicorn_error_code
        if error_code is None and vector == x86.Vector.PF:
            error_code = x86.page_fault_error_code(uc, uc.reg_read(X.UC_X86_REG_CR2),
                                                   x86.current_privilege(uc))
        x86.deliver_exception(uc, vector, error_code)

    def _idt_is_empty(self) -> bool:
        return bool(self.uc.reg_read(X.UC_X86_REG_IDTR)[2] == 0)

    def _cpu_fault(self, detail: str) -> None:
        if self.reboot:
            self._on_reset(detail)
        else:
            self._request_stop(StopReason.CPU_FAULT, detail)

    # --- fast string I/O ---------------------------------------------------------
    def _fast_string_io(self, port: int, size: int, device: Any, out_value: int | None
                        ) -> int | None:
        """Move a whole ``rep ins``/``rep outs`` burst; None when not applicable."""
        uc = self.uc
        cr0, eflags, cs, eip, ecx, edi, esi, es, ds = uc.reg_read_many(STRING_IO_REGISTERS)
        paging = bool(cr0 & x86.CR0_PG)
        protected = bool(cr0 & x86.CR0_PE) and not eflags & x86.FLAG_VM
        if protected:
            code_segment = x86.segment(uc, "cs", protected)
            code_base, code_32 = code_segment.base, code_segment.big
        else:
            code_base, code_32 = cs << 4, False
        pc = (code_base + eip) & 0xFFFF_FFFF
        if paging:
            paged_code = x86.peek_linear(uc, pc, 15)
            if paged_code is None:
                return None
            code = paged_code
        elif pc + 15 <= self.ram_size:
            code = bytes(self.memory.view[pc:pc + 15])
        else:
            try:
                code = self.memory.peek(pc, 15)
            except UcError:
                return None  # the instruction straddles the end of mapped memory
        key = (code, code_32)
        decoded = self.decoded_string_io.get(key, MISSING)
        if decoded is MISSING:
            decoded = self.decoded_string_io[key] = x86.decode_rep_string_io(code, code_32)
        if decoded is None or decoded.is_input != (out_value is None):
            misses = self.string_port_misses
            if misses.get(port, 0) >= 0:  # a status/command port gives up after a while
                misses[port] = misses.get(port, 0) + 1
            return None
        self.string_port_misses[port] = -1  # seen string I/O here: always look
        mask = 0xFFFF_FFFF if decoded.address_32 else 0xFFFF
        count = ecx & mask
        if count < 2:
            return None
        index_register = X.UC_X86_REG_EDI if decoded.is_input else X.UC_X86_REG_ESI
        full_index = edi if decoded.is_input else esi
        index = full_index & mask
        backwards = bool(eflags & x86.FLAG_DF)
        # Never let the burst wrap the index register: the slow path handles the rest.
        room = index // size + 1 if backwards else (mask + 1 - index) // size
        if room < count:
            count = room
        if count < 2:
            return None
        if protected or decoded.segment_name not in ("es", "ds"):
            base = x86.segment(uc, decoded.segment_name, protected).base
        else:
            base = (es if decoded.segment_name == "es" else ds) << 4
        # With paging the burst stays inside the page of its first item (the CPU
        # does the rest, and the next item's hook comes back here); ``base`` becomes
        # the physical base of that page's mapping.
        if paging:
            linear = (base + index) & 0xFFFF_FFFF
            offset = linear & (PAGE - 1)
            if offset + size > PAGE:
                return None
            room = offset // size + 1 if backwards else (PAGE - offset) // size
            count = min(count, room)
            if count < 2:
                return None
            try:
                frame = x86.translate(uc, linear - offset, write=decoded.is_input,
                                      user=protected and cs & 3 == 3)
            except x86.GuestFault:
                return None  # the CPU raises the #PF itself
            base = (base + frame - (linear - offset)) & 0xFFFF_FFFF
        lowest = index - (count - 1) * size if backwards else index
        start = (base + lowest) & 0xFFFF_FFFF
        if start + count * size > self.ram_size:
            return None
        step = -size if backwards else size
        by_cpu = 1  # the CPU stores item 1, the hook's return value, itself
        if decoded.is_input:
            data = device.read_string(port, size, count)
            moved = len(data) // size
            if moved == 0:
                return None
            bus = self.bus
            bus.accesses += moved
            bus.recent.append(("ins", port, size, moved))
            if bus.tracer is not None:
                bus.tracer("ins", port, size, moved)
            if moved > by_cpu:
                # The items the CPU does not store go straight into RAM (the range was
                # checked above).
                length = (moved - by_cpu) * size
                rest = data[by_cpu * size:moved * size]
                if backwards:
                    items = [rest[i:i + size] for i in range(0, length, size)]
                    self.memory.write((base + index - (moved - 1) * size) & 0xFFFF_FFFF,
                                      b"".join(reversed(items)))
                else:
                    address = (base + index + by_cpu * size) & 0xFFFF_FFFF
                    self.memory.view[address:address + length] = memoryview(rest)
                    self.memory.written(address, length)
            result = int.from_bytes(data[:size], "little")
        else:
            raw = self.memory.read(start, count * size)
            if backwards:
                items = [raw[i:i + size] for i in range(0, len(raw), size)]
                items.reverse()
                raw = b"".join(items)
            moved = device.write_string(port, size, raw)
            if moved == 0:
                return None
            self._record_string_io("outs", port, size, moved)
            result = out_value if out_value is not None else 0
        skipped = moved - by_cpu
        if skipped:
            uc.reg_write_pair(index_register,
                              (full_index & ~mask) | ((index + skipped * step) & mask),
                              X.UC_X86_REG_ECX, (ecx & ~mask) | ((ecx - skipped) & mask))
        return result

    def _record_string_io(self, kind: str, port: int, size: int, items: int) -> None:
        self.bus.accesses += items
        self.bus.recent.append((kind, port, size, items))
        if self.bus.tracer is not None:
            self.bus.tracer(kind, port, size, items)

    # --- the run loop -----------------------------------------------------------
    def run(self) -> RunResult:
        self.wall_start = time.monotonic()
        self.deadline = None if self.timeout is None else self.wall_start + self.timeout
        uc = self.uc
        try:
            while self._stop is None:
                if self._timed_out():
                    break
                if self.max_instructions is not None and self.instructions >= self.max_instructions:
                    self._request_stop(StopReason.INSTRUCTION_BUDGET,
                                       f"{self.instructions} instructions executed")
                    break
                if self.slices % INPUT_POLL_SLICES == 0:
                    self._poll_input()
                    if self._stop is not None:
                        break
                self.slices += 1
                self.hlt_fired = None
                self.cut_short = False
                start_pc = uc.reg_read(X.UC_X86_REG_EIP)
                try:
                    executed = self._run_slice(start_pc)
                except UcError as error:
                    if self._stop is None and self.reboot_requested is None:
                        self._cpu_fault(f"{error} at {x86.linear_pc(uc):#x}")
                    continue
                if self._stop is not None:
                    break
                if self.reboot_requested is not None:
                    self.reboot_requested = None
                    self._reboot()
                    continue
                try:
                    pc = x86.linear_pc(uc)
                except (UcError, x86.DeliveryError):
                    pc = 0
                halted = self._halted(pc)
                if self._stalled(pc, executed, halted):
                    self._cpu_fault(f"the CPU stopped advancing at {pc:#x} (slices end at "
                                    "once without executing anything)")
                    break
                self._service_interrupts(halted, pc)
        except Exception:
            self._request_stop(StopReason.INTERNAL_ERROR, traceback.format_exc())
        return self._result()

    def _run_slice(self, start: int) -> int | None:
        """Run the CPU for one slice from EIP ``start``; the instructions it executed
        (None in fast mode, where nothing counts them).  ``until`` is ignored (FastUc
        runs on an empty exits list)."""
        uc = self.uc
        waiting_irq = self.pic.interrupt_pending  # IF was 0: come back soon to retry
        if not self.icount:
            timeout_us = self.slice_timeout_us = self._slice_timeout_us(waiting_irq)
            began = time.monotonic()
            uc.run_for(start, timeout_us)
            self.slice_wall_s = time.monotonic() - began
            return None
        budget = IRQ_WAIT_INSTRUCTIONS if waiting_irq else SLICE_INSTRUCTIONS
        if self.max_instructions is not None:
            budget = max(1, min(budget, self.max_instructions - self.instructions))
        clock = self.clock
        assert isinstance(clock, VirtualClock)
        counted = uc.counts_instructions
        clock.in_slice = uc.executed if counted else None
        try:
            uc.emu_start(start, 0, 0, budget)
        finally:
            clock.in_slice = None
        counter = uc.executed()
        if not counted:
            executed = budget  # the counter is unreadable: charge the whole slice
        elif counter > budget or self.cut_short:
            # Stopped at the next instruction's count hook (budget reached, or a hook
            # asked for the stop): that instruction was counted but did not run.
            executed = min(budget, max(0, counter - 1))
        else:
            executed = counter  # HLT, exception or fault: all counted ones ran
        self.instructions += executed
        clock.advance(executed * NS_PER_INSTRUCTION)
        return executed

    def _slice_timeout_us(self, waiting_irq: bool) -> int:
        """Fast mode: the slice ends by wall time at the next timer deadline."""
        if waiting_irq:
            return IRQ_WAIT_US
        now = self.clock.now_ns()
        deadlines = [d for d in (t.next_deadline_ns() for t in self.timers) if d is not None]
        if not deadlines:
            return SLICE_MAX_US
        return max(SLICE_MIN_US, min(SLICE_MAX_US, (min(deadlines) - now) // 1000))

    def _stalled(self, pc: int, executed: int | None, halted: bool) -> bool:
        """Has the CPU ended :data:`STALL_SLICES` slices in a row at ``pc`` at once,
        executing nothing?  (A CPU that no longer advances would loop here forever.)"""
        if executed is None:
            at_once = self.slice_wall_s * 1e6 < SLICE_MIN_US / 2 and not self.cut_short
        else:
            at_once = executed == 0
        if halted or not at_once:
            self.stall = (-1, 0)
            return False
        where, count = self.stall
        count = count + 1 if where == pc else 1
        self.stall = (pc, count)
        return count >= STALL_SLICES

    def _peek_code(self, linear: int, length: int) -> bytes:
        """Bytes at a linear address through the page tables (b"" where unmapped)."""
        try:
            if not self.uc.reg_read(X.UC_X86_REG_CR0) & x86.CR0_PG:
                return self.memory.peek(linear, length)
            return x86.peek_linear(self.uc, linear, length) or b""
        except UcError:
            return b""

    def _code_byte(self, linear: int) -> int:
        """The byte at a linear address (-1 where unmapped)."""
        data = self._peek_code(linear, 1)
        return data[0] if data else -1

    def _halted(self, pc: int) -> bool:
        """Did the slice end at a HLT?  (see module docstring)"""
        uc = self.uc
        if not self.icount:
            return self._halted_fast(pc)
        try:
            if pc == 0 or self._code_byte(pc - 1) != HLT:
                return False
            site = pc - 1
            if site in self.not_hlt_sites:
                return False
            watch = self.hlt_sites.get(site)
            if watch is not None:
                if self.hlt_fired == site:
                    watch.fired = True
                    return True
                watch.silent_stops += 1
                if not watch.fired and watch.silent_stops >= HLT_SITE_PROOF:
                    # The byte is the tail of another instruction: stop watching it (every
                    # code hook costs a check on every instruction executed).
                    uc.hook_del(watch.hook)
                    del self.hlt_sites[site]
                    self.not_hlt_sites.add(site)
                return False
            if len(self.hlt_sites) < MAX_HLT_SITES:
                hook = uc.hook_add(UC_HOOK_CODE, self._on_hlt_site, None, site, site)
                uc.remove_cache(site, site + 1)  # blocks translated before the hook skip it
                self.hlt_sites[site] = _HltSite(hook)
            if uc.reg_read(X.UC_X86_REG_EFLAGS) & x86.FLAG_IF:
                return True
            return pc >= 2 and self._code_byte(pc - 2) == CLI
        except UcError:
            return False

    def _halted_fast(self, pc: int) -> bool:
        """Fast mode has no code hooks (see "HLT"): a slice that returned before its
        timer, not stopped by a hook, right after a 0xF4 byte stopped at a HLT."""
        if self.cut_short or self.slice_wall_s * 1e6 >= self.slice_timeout_us * 0.9:
            return False
        if pc == 0 or self._code_byte(pc - 1) != HLT:
            return False
        if self.uc.reg_read(X.UC_X86_REG_EFLAGS) & x86.FLAG_IF:
            return True
        # IF=0: the "cli; hlt" idiom, or the same stop twice in a row.
        repeated, self.last_hlt_stop = self.last_hlt_stop == pc, pc
        return repeated or (pc >= 2 and self._code_byte(pc - 2) == CLI)

    def _service_interrupts(self, halted: bool, pc: int) -> None:
        uc = self.uc
        for timer in self.timers:
            timer.update()
        interrupts_on = bool(uc.reg_read(X.UC_X86_REG_EFLAGS) & x86.FLAG_IF)
        if halted:
            if not interrupts_on:
                self._request_stop(StopReason.HALTED, "HLT with interrupts disabled")
                return
            idle_since = self.clock.now_ns()
            while not self.pic.interrupt_pending:
                deadlines = [d for d in (t.next_deadline_ns() for t in self.timers)
                             if d is not None]
                if deadlines and self.clock.now_ns() - idle_since > MAX_IDLE_NS:
                    self._request_stop(StopReason.HALTED, "HLT: timers run but every "
                                       "interrupt that could wake the CPU is masked")
                    return
                if deadlines:
                    if self._timed_out():
                        return
                    target = min(deadlines)
                    if self.serial_backend.interactive:
                        # Someone is typing: idle in real time, so the guest's timeouts
                        # (a boot menu) last as long for them as on a real machine.
                        ahead_ns = target - int((time.monotonic() - self.wall_start) * 1e9)
                        if ahead_ns > 0:
                            self.serial_backend.wait_input(min(ahead_ns / 1e9, INPUT_WAIT_S))
                            self._poll_input()
                            if self._stop is not None:
                                return
                            continue
                    self.clock.advance_to(target)
                    for timer in self.timers:
                        timer.update()
                elif self.serial_backend.interactive:
                    # Only the terminal can wake this CPU: wait for a key (wall time).
                    self.serial_backend.wait_input(INPUT_WAIT_S)
                    self._poll_input()
                    if self._stop is not None or self._timed_out():
                        return
                else:
                    self._request_stop(StopReason.HALTED,
                                       "HLT with no interrupt source armed")
                    return
        elif self._after_sti(pc):
            return  # STI's one-instruction interrupt shadow: take it after the next slice
        if interrupts_on and self.pic.interrupt_pending:
            self._deliver_irq()

    def _deliver_irq(self) -> None:
        """INTA at the PIC and vector the CPU to the answer."""
        self.pic.changed = False
        vector = self.pic.acknowledge()
        if self.tracer is not None:
            self.tracer.note(f"irq vector {vector:#04x} at {x86.linear_pc(self.uc):#x} "
                             f"time {self.clock.now_ns()}")
        try:
            x86.deliver_interrupt(self.uc, vector)
        except x86.TripleFault as error:
            self._cpu_fault(f"triple fault: IRQ vector {vector:#x}: {error}")
        except x86.DeliveryError as error:
            self._cpu_fault(f"not modelled: IRQ vector {vector:#x}: {error}")

    def _irq_before_software_int(self, int_address: int) -> bool:
        """Should a pending hardware interrupt be taken before this INT n?

        Slices end at arbitrary points, so code that enables interrupts just for a
        BIOS call (boot loaders in their real-mode trampolines) would rarely see a
        slice end with IF=1.  A CPU takes a pending interrupt as soon as IF=1, so at
        least before the INT (unless the INT sits in STI's one-instruction shadow).
        """
        if not self.uc.reg_read(X.UC_X86_REG_EFLAGS) & x86.FLAG_IF:
            return False
        for timer in self.timers:
            timer.update()
        if not self.pic.interrupt_pending:
            return False
        return int_address < 1 or self._code_byte(int_address - 1) != STI

    def _after_sti(self, pc: int) -> bool:
        """Did the slice end in an interrupt shadow: right after STI, MOV SS or POP SS
        (interrupts stay blocked for one instruction, so that ``mov ss; mov sp``
        is never split by one)?"""
        try:
            before = self._peek_code(pc - 2, 2) if pc >= 2 else b""
        except UcError:
            return False
        if len(before) < 2:
            return False
        mov_ss = before[0] == MOV_SREG and (before[1] & 0x38) == MODRM_REG_SS \
            and before[1] >= 0xC0
        return before[1] in (STI, POP_SS) or mov_ss

    def _timed_out(self) -> bool:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self._request_stop(StopReason.TIMEOUT,
                               f"--timeout {self.timeout:g} s of wall time elapsed")
            return True
        return False

    def _poll_input(self) -> None:
        typed = self.serial_backend.read_input()
        if self.serial_backend.quit_requested:
            self._request_stop(StopReason.USER_QUIT, "Ctrl-A x pressed")
            return
        self.pending_serial_input += typed
        if self.pending_serial_input:
            taken = self.com1.feed(bytes(self.pending_serial_input))
            del self.pending_serial_input[:taken]

    def feed_serial(self, data: bytes) -> None:
        """Queue bytes for COM1's receiver (as if typed at the terminal)."""
        self.pending_serial_input += data

    def _result(self) -> RunResult:
        from .report import stop_report

        stop = self._stop or _Stop(StopReason.INTERNAL_ERROR, "no stop reason", 121)
        report = ""
        if stop.reason not in (StopReason.DEBUG_EXIT, StopReason.RESET, StopReason.USER_QUIT):
            report = stop_report(self, stop.reason.value, stop.detail)
        return RunResult(stop.exit_code, stop.reason, stop.detail, bytes(self.com1.transcript),
                         bytes(self.debugcon.transcript), self.clock.now_ns(),
                         self.instructions, report)

    def close(self) -> None:
        uc = getattr(self, "uc", None)
        if uc is not None:
            uc.close_timer()
        for _, _, image in getattr(self, "images", []):
            try:
                image.close()
            except disks.ImageError:
                pass
        for backend in (getattr(self, "serial_backend", None),
                        getattr(self, "debugcon_backend", None)):
            if backend is not None:
                backend.close()
        tracer = getattr(self, "tracer", None)
        if tracer is not None:
            tracer.close()
            self.tracer = None
        for folder in self._temporary_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        self._temporary_dirs = []

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_machine(**options: Any) -> RunResult:
    """Build, run and close a machine (convenience for tests)."""
    with Machine(**options) as machine:
        return machine.run()

