"""The human monitor (Ctrl-A c on the serial console): QEMU's commands for what emu has.

Theory of operation
-------------------
:class:`Monitor` turns one command line into text (``execute``); the console
collects lines (:mod:`emu.console`) and the machine runs them between slices,
so every command sees the CPU at an instruction boundary.  Commands are a table
(:data:`COMMANDS`) of name -> (method, help), with QEMU's spellings:

``info registers``, ``info block``, ``info status``, ``x /FMT ADDR`` (linear
address) and ``xp /FMT ADDR`` (physical) with QEMU's ``/Nfu`` (count, format
``x d u o c``, unit ``b h w g``), ``stop``, ``cont`` (``c``), ``system_reset``,
``eject [-f] DEV``, ``change DEV FILE``, ``quit`` (``q``), ``help``.

``stop`` pauses the machine through its :class:`~emu.debugger.Debugger`; the
monitor is then the debugger's front end and keeps serving the console until
``cont`` (unless gdb is the front end: then gdb decides when to resume).
``eject``/``change`` name a CD/DVD drive as QEMU does (``ide1-cd0``) and go
through :meth:`emu.machine.Machine.change_cdrom`.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from typing import TYPE_CHECKING

from unicorn import UcError

from . import x86
from .debugger import DebugError, Debugger, Pause

if TYPE_CHECKING:
    from .machine import Machine, RunResult

UNITS = {"b": 1, "h": 2, "w": 4, "g": 8}
FORMATS = ("x", "d", "u", "o", "c")
PER_LINE = {1: 8, 2: 8, 4: 4, 8: 2}
CHAR_ESCAPES = {0x27: "\\'", 0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r"}
MAX_ITEMS = 4096


class MonitorError(Exception):
    """A command the monitor cannot run: one line for the user."""


class Monitor:
    """Runs monitor commands on one machine; the debugger's front end while stopped."""

    def __init__(self, machine: Machine, write: Callable[[bytes], None]) -> None:
        self.machine = machine
        self.write = write
        self.resume = False

    # --- commands ----------------------------------------------------------------
    def execute(self, line: str) -> str:
        """The output of one command line (empty for silent commands)."""
        words = line.split()
        if not words:
            return ""
        name, arguments = words[0], line.strip()[len(words[0]):].strip()
        if name.startswith(("x/", "xp/")):
            name, _, rest = name.partition("/")
            arguments = "/" + rest + " " + arguments
        entry = COMMANDS.get(name)
        if entry is None:
            return f"unknown command: '{name}'\n"
        try:
            return entry[0](self, arguments)  # type: ignore[no-any-return]
        except (MonitorError, DebugError) as error:
            return f"{error}\n"

    def help(self, _: str) -> str:
        return "".join(f"{entry[1]}\n" for entry in COMMANDS.values() if entry[1])

    def info(self, what: str) -> str:
        topic = INFO.get(what.strip())
        if topic is None:
            raise MonitorError(f"info: unknown topic {what.strip()!r} "
                               f"(one of {', '.join(INFO)})")
        return topic(self)  # type: ignore[no-any-return]

    def info_registers(self) -> str:
        read = self.debugger.read_register
        uc = self.machine.uc
        lines = [" ".join(f"{n.upper()}={read(n):08x}" for n in ("eax", "ebx", "ecx", "edx")),
                 " ".join(f"{n.upper()}={read(n):08x}" for n in ("esi", "edi", "ebp", "esp")),
                 f"EIP={read('eip'):08x} EFL={read('eflags'):08x} "
                 f"[{'PE' if read('cr0') & x86.CR0_PE else 'real'}]"]
        for name in ("es", "cs", "ss", "ds", "fs", "gs"):
            try:
                segment = x86.segment(uc, name)
                lines.append(f"{name.upper():<3}={segment.selector:04x} {segment.base:08x} "
                             f"{segment.limit:08x}")
            except (x86.DeliveryError, UcError):
                lines.append(f"{name.upper():<3}={read(name):04x} (descriptor unreadable)")
        for name, register in (("GDT", "gdtr"), ("IDT", "idtr")):
            _, base, limit, _ = uc.reg_read(getattr(x86.X, f"UC_X86_REG_{register.upper()}"))
            lines.append(f"{name}=     {base:08x} {limit:08x}")
        lines.append(" ".join(f"CR{n}={read(f'cr{n}'):08x}" for n in (0, 2, 3, 4)))
        return "\n".join(lines) + "\n"

    def info_block(self) -> str:
        lines = []
        for bus, unit, image in self.machine.images:
            notes = []
            if image.format_name == "overlay":   # --snapshot: writes go to a temporary file
                image = image.backing or image
                notes.append("snapshot")
            notes.insert(0, image.format_name)
            if image.readonly and "snapshot" not in notes:
                notes.append("read-only")
            lines.append(f"ide{bus}-hd{unit}: {image.path} ({', '.join(notes)})")
        for name, media in self._media_devices():
            lines.append(f"{name}: {media}")
        return "\n".join(lines) + "\n" if lines else "no block devices\n"

    def info_status(self) -> str:
        paused = self.debugger_if_any() is not None and not self.resume and self.stopped
        return f"VM status: {'paused' if paused else 'running'}\n"

    def examine(self, arguments: str, *, physical: bool = False) -> str:
        count, form, size, address = self._parse_examine(arguments)
        data = self.debugger.read_memory(address, count * size, physical=physical)
        lines = []
        per_line = PER_LINE[size]
        width = 16 if physical else 8   # QEMU prints a physical address as 64-bit
        for first in range(0, count, per_line):
            items = []
            for index in range(first, min(count, first + per_line)):
                raw = data[index * size:(index + 1) * size]
                items.append(self._format(int.from_bytes(raw, "little"), form, size))
            lines.append(f"{(address + first * size) & 0xFFFF_FFFF:0{width}x}: "
                         f"{' '.join(items)}")
        return "\n".join(lines) + "\n"

    def examine_physical(self, arguments: str) -> str:
        return self.examine(arguments, physical=True)

    def stop(self, _: str) -> str:
        front_end = self.debugger.front_end
        if front_end is not None and front_end is not self:
            raise MonitorError("the CPU is under gdb's control: stop it from gdb")
        self.debugger.front_end = self
        self.debugger.interrupt("monitor stop")
        self.resume = False
        return ""

    def cont(self, _: str) -> str:
        self.resume = True
        return ""

    def system_reset(self, _: str) -> str:
        self.machine.system_reset()
        return ""

    def eject(self, arguments: str) -> str:
        words = arguments.split()
        force = "-f" in words
        names = [word for word in words if word != "-f"]
        if len(names) != 1:
            raise MonitorError("usage: eject [-f] DEVICE")
        self._change_medium(names[0], None, force)
        return ""

    def change(self, arguments: str) -> str:
        words = shlex.split(arguments)
        if len(words) < 2:
            raise MonitorError("usage: change DEVICE FILE")
        self._change_medium(words[0], words[1], False)
        return ""

    def quit(self, _: str) -> str:
        from .machine import StopReason
        self.machine._request_stop(StopReason.USER_QUIT, "quit from the monitor")
        return ""

    # --- FrontEnd: holding a machine stopped by ``stop`` (or -S) ----------------------
    stopped = False

    def poll(self, debugger: Debugger) -> None:
        pass

    def paused(self, debugger: Debugger, pause: Pause) -> None:
        machine = self.machine
        self.resume = False
        self.stopped = True
        self.write(f"\r\nemu: stopped ({pause.reason}); 'cont' resumes\r\n".encode())
        backend = machine.serial_backend
        if not backend.in_monitor:
            backend.toggle_monitor()
        else:
            backend.prompt()
        while not self.resume and machine._stop is None:
            backend.wait_input(0.05)
            machine._poll_input()
        self.stopped = False

    def finished(self, debugger: Debugger, result: RunResult) -> None:
        pass

    # --- helpers ---------------------------------------------------------------------
    @property
    def debugger(self) -> Debugger:
        return self.machine.debug()

    def debugger_if_any(self) -> Debugger | None:
        return self.machine.debugger

    def _media_devices(self) -> list[tuple[str, str]]:
        """QEMU's names for the CD/DVD drives (``ide1-cd0``) and what is in them."""
        return [(f"ide{bus}-cd{unit}", f"{medium.path} (cdrom)" if medium is not None
                 else "[not inserted] (cdrom)") for bus, unit, medium in self.machine.cdroms]

    def _cd_position(self, name: str) -> tuple[int, int]:
        for bus, unit, _ in self.machine.cdroms:
            if name == f"ide{bus}-cd{unit}":
                return bus, unit
        raise MonitorError(f"Device '{name}' not found (no removable media device)")

    def _change_medium(self, name: str, path: str | None, force: bool) -> None:
        from devices.atapi import MediumLockedError

        from .machine import MachineConfigError
        bus, unit = self._cd_position(name)
        try:
            self.machine.change_cdrom(path, bus=bus, unit=unit, force=force)
        except MediumLockedError:
            raise MonitorError(f"Device '{name}' is locked (the guest was asked to eject; "
                               "eject -f forces it)") from None
        except MachineConfigError as error:
            raise MonitorError(str(error)) from None

    def _parse_examine(self, arguments: str) -> tuple[int, str, int, int]:
        text = arguments.strip()
        count, form, size = 1, "x", 4
        if text.startswith("/"):
            spec, _, text = text[1:].partition(" ")
            digits = ""
            for char in spec:
                if char.isdigit():
                    digits += char
                elif char in UNITS:
                    size = UNITS[char]
                elif char in FORMATS:
                    form = char
                else:
                    raise MonitorError(f"invalid char in format: '{char}'")
            count = int(digits) if digits else 1
        if form == "c":
            size = 1
        if not 1 <= count <= MAX_ITEMS:
            raise MonitorError(f"count must be 1..{MAX_ITEMS}")
        return count, form, size, self._address(text.strip())

    def _address(self, text: str) -> int:
        if not text:
            raise MonitorError("missing address")
        if text.startswith("$"):
            name = text[1:]
            if name == "pc":
                return x86.linear_pc(self.machine.uc)
            return self.debugger.read_register(name)
        try:
            return int(text, 0) & 0xFFFF_FFFF
        except ValueError:
            raise MonitorError(f"bad address {text!r}") from None

    @staticmethod
    def _format(value: int, form: str, size: int) -> str:
        """One item as QEMU's ``x`` prints it (widths from the item size)."""
        bits = 8 * size
        if form == "x":
            return f"0x{value:0{size * 2}x}"
        if form == "o":
            return f"{'0' + format(value, 'o') if value else '0':>{(bits + 2) // 3}}"
        if form == "c":
            return "'" + CHAR_ESCAPES.get(value, chr(value) if 0x20 <= value < 0x7F
                                          else f"\\x{value:02x}") + "'"
        if form == "d" and size == 8 and value >> 63:
            value -= 1 << 64    # QEMU's d is signed only for 64-bit items
        return f"{value:>{(bits * 10 + 32) // 33}}"


INFO: dict[str, Callable[[Monitor], str]] = {
    "registers": Monitor.info_registers,
    "block": Monitor.info_block,
    "status": Monitor.info_status,
}

COMMANDS: dict[str, tuple[Callable[[Monitor, str], str], str]] = {
    "help": (Monitor.help, "help                 -- this list"),
    "info": (Monitor.info, "info registers|block|status"),
    "x": (Monitor.examine, "x /fmt addr          -- memory at a linear address (/Nfu)"),
    "xp": (Monitor.examine_physical, "xp /fmt addr         -- memory at a physical address"),
    "stop": (Monitor.stop, "stop                 -- pause the CPU"),
    "cont": (Monitor.cont, "cont|c               -- resume"),
    "c": (Monitor.cont, ""),
    "system_reset": (Monitor.system_reset, "system_reset         -- reset the machine"),
    "eject": (Monitor.eject, "eject [-f] DEVICE    -- eject removable media"),
    "change": (Monitor.change, "change DEVICE FILE   -- insert new media"),
    "quit": (Monitor.quit, "quit|q               -- quit emu"),
    "q": (Monitor.quit, ""),
}
