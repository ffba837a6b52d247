"""Stopping a running machine and looking inside: breakpoints, watchpoints, run-until.

Theory of operation
-------------------
The machine runs in slices (see :mod:`emu.machine`).  A :class:`Debugger` exists
only once something asks for it -- a breakpoint, a watchpoint, ``run_until``, the
gdb stub, the monitor's ``stop`` or ``-S`` -- and the run loop consults it at three
points, nowhere else:

* ``at_boundary()`` at the top of each slice: evaluates the run-until conditions
  that are checked between slices (instruction count, virtual time, serial
  text), lets a *front end* (the gdb stub, the monitor) hold a paused machine
  while it talks to its user, and answers True when the loop must return to an
  in-process caller (``Machine.run_until``);
* ``slice_budget(n)``: shortens the slice for a single step or an instruction
  target;
* ``after_slice()``: True when the slice was cut by the debugger (breakpoint,
  watchpoint, step, a port condition): the machine then skips HLT detection and
  interrupt delivery so the PC stays where the event left it, as a CPU under a
  debugger stops before taking the next interrupt.

**Breakpoints** are Unicorn code hooks bounded to their one address; Unicorn
calls code hooks with the *linear* PC (CS base + EIP, before paging), so a
breakpoint keeps working across real/protected mode switches and under paging
(QEMU's gdbstub matches the same address).  A hook calls ``emu_stop`` and the
CPU stops before executing the instruction.  Resuming at a breakpoint skips its
first hit.  Software (Z0) and hardware (Z1) breakpoints are the same thing here,
as in QEMU: guest memory is never patched.

**Watchpoints** are Unicorn memory hooks over their range.  Stopping inside a
memory hook would abandon the instruction half done (Unicorn writes the memory
but leaves EIP on the instruction), so the hook only records the hit and a code
hook over all addresses -- present only while a watchpoint exists -- stops
before the *next* instruction, where gdb and QEMU report a watchpoint.

Unicorn passes memory hooks the *physical* address once paging is on, so a
watchpoint's linear range is translated through the page tables when it is set
(a later remap of those pages is not followed) and hits are reported back as
linear addresses.

**Addresses.**  Everything a user names is a linear address.  Memory is read
through the page tables when CR0.PG is set (:func:`linear_to_physical`), then
from RAM or the ROM.

Not modelled: single-stepping a HLT does not wait for an interrupt (the step
ends after it, as if one had come at once).

No cost when not in use: without a debugger the run loop tests one attribute
per slice; code hooks exist only for the addresses asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from unicorn import UC_HOOK_CODE, UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UcError
from unicorn import x86_const as X

from . import x86

if TYPE_CHECKING:
    from .machine import Machine, RunResult

PAGE = 4096

# Registers by name: (Unicorn id, width in bytes).  The names are gdb's.
REGISTERS: dict[str, tuple[int, int]] = {
    "eax": (X.UC_X86_REG_EAX, 4), "ecx": (X.UC_X86_REG_ECX, 4),
    "edx": (X.UC_X86_REG_EDX, 4), "ebx": (X.UC_X86_REG_EBX, 4),
    "esp": (X.UC_X86_REG_ESP, 4), "ebp": (X.UC_X86_REG_EBP, 4),
    "esi": (X.UC_X86_REG_ESI, 4), "edi": (X.UC_X86_REG_EDI, 4),
    "eip": (X.UC_X86_REG_EIP, 4), "eflags": (X.UC_X86_REG_EFLAGS, 4),
    "cs": (X.UC_X86_REG_CS, 4), "ss": (X.UC_X86_REG_SS, 4),
    "ds": (X.UC_X86_REG_DS, 4), "es": (X.UC_X86_REG_ES, 4),
    "fs": (X.UC_X86_REG_FS, 4), "gs": (X.UC_X86_REG_GS, 4),
    "cr0": (X.UC_X86_REG_CR0, 4), "cr2": (X.UC_X86_REG_CR2, 4),
    "cr3": (X.UC_X86_REG_CR3, 4), "cr4": (X.UC_X86_REG_CR4, 4),
}
SEGMENT_NAMES = ("cs", "ss", "ds", "es", "fs", "gs")
WATCH_KINDS = {"w": UC_HOOK_MEM_WRITE, "r": UC_HOOK_MEM_READ,
               "a": UC_HOOK_MEM_READ | UC_HOOK_MEM_WRITE}


class DebugError(Exception):
    """A debugger request the machine cannot honour (unmapped address, bad register)."""


@dataclass
class Pause:
    """Why a run handed control back: a debugger event, or the machine's end.

    ``reason`` is one of ``breakpoint``, ``watchpoint``, ``step``, ``port``,
    ``serial``, ``instructions``, ``virtual-time``, ``interrupt`` (asked from
    outside: Ctrl-C, the monitor's ``stop``), ``start`` (``-S``) or ``exit`` (the
    machine stopped; ``result`` holds its :class:`~emu.machine.RunResult`).
    """

    reason: str
    detail: str = ""
    address: int | None = None        # the breakpoint's PC or the watched data address
    watch_kind: str | None = None     # "w", "r" or "a" for a watchpoint
    result: RunResult | None = None

    @property
    def exited(self) -> bool:
        return self.reason == "exit"


class FrontEnd(Protocol):
    """Who holds a paused machine (the gdb stub, the monitor)."""

    def poll(self, debugger: Debugger) -> None:
        """Between slices while running: may call ``debugger.interrupt()``."""

    def paused(self, debugger: Debugger, pause: Pause) -> None:
        """The machine stopped for ``pause``; return when it should run again."""

    def finished(self, debugger: Debugger, result: RunResult) -> None:
        """The machine stopped for good."""


@dataclass
class Conditions:
    """What ``Machine.run_until`` waits for (besides the machine's own stop)."""

    instructions: int | None = None      # absolute count (machine.instructions)
    virtual_ns: int | None = None        # absolute virtual time
    serial: bytes | None = None          # text in COM1's transcript from ``serial_from`` on
    serial_from: int = 0
    ports: frozenset[int] = frozenset()
    port_kinds: frozenset[str] = frozenset({"in", "out", "ins", "outs"})


@dataclass
class _Watch:
    address: int
    length: int
    kind: str
    hooks: list[int]      # one memory hook per physical piece


@dataclass
class _PortHit:
    kind: str
    port: int
    size: int
    value: int


def linear_to_physical(uc: Any, linear: int) -> int | None:
    """The CPU model's own page walk (:func:`emu.x86.walk`: no checks, no A/D updates);
    None when not present, identity when paging is off."""
    return x86.walk(uc, linear).physical


class Debugger:
    """Breakpoints, watchpoints and pause conditions of one machine (see module doc)."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.uc = machine.uc
        self.breakpoints: dict[int, int] = {}          # linear address -> hook
        self.temporary: set[int] = set()               # run_until's own breakpoints
        self.watches: list[_Watch] = []
        self.watch_stopper: int | None = None          # code hook present while watching
        self.watch_hit: tuple[int, str] | None = None  # (data address, kind) seen this insn
        self.skip_break_at: int | None = None          # resume at a breakpoint: skip it once
        self.resuming = False                          # the next slice leaves a pause
        self.paused_at: int | None = None              # PC of the last pause handed out
        self.event: Pause | None = None                # what cut the current slice short
        self.pending: Pause | None = None              # a pause to report at the boundary
        self.stepping = 0                              # instructions left to single-step
        self.conditions: Conditions | None = None
        self.front_end: FrontEnd | None = None
        self.port_tracer_saved: Any = None
        self.port_tracer_installed = False
        self.hooked_ports: dict[int, Any] = {}

    # --- the run loop's three calls ------------------------------------------
    def at_boundary(self) -> bool:
        """Top of a slice.  True: return from the run loop to the in-process caller."""
        machine = self.machine
        if self.paused_at is not None:
            # The caller ran on from a pause: a breakpoint at the PC was just reported.
            self.resuming = self.resuming or self.paused_at == self._pc()
            self.paused_at = None
        if self.pending is None and self.conditions is not None:
            self.pending = self._condition_met()
        if self.pending is None and self.front_end is not None:
            self.front_end.poll(self)
        while self.pending is not None:
            pause, self.pending = self.pending, None
            if self.front_end is None:
                self.pending = pause        # run_until reads it
                self.paused_at = self._pc()
                return True
            self.front_end.paused(self, pause)
            if machine._stop is not None:  # killed / quit while paused
                return True
            self.resuming = True
        if self.resuming:
            # Leaving a pause: a breakpoint at the PC was just reported, not to be hit again.
            self.resuming = False
            pc = self._pc()
            self.skip_break_at = pc if pc in self.breakpoints else None
        return False

    def poll_front_end(self) -> bool:
        """While the machine idles in a HLT: let the front end look for an interrupt
        request; True when a pause is pending (the machine then ends its wait)."""
        if self.pending is None and self.front_end is not None:
            self.front_end.poll(self)
        return self.pending is not None

    def slice_budget(self, budget: int) -> int:
        if self.stepping:
            return 1
        conditions = self.conditions
        if conditions is not None and conditions.instructions is not None:
            left = conditions.instructions - self.machine.instructions
            budget = max(1, min(budget, left))
        return budget

    def after_slice(self) -> bool:
        """Right after emu_start: True when the debugger cut the slice (keep the PC)."""
        machine = self.machine
        if self.stepping:
            self.stepping -= 1   # (the run loop counted the instruction)
            if self.event is None and not self.stepping:
                self.event = Pause("step", address=self._pc())
        if self.event is not None and self.event.reason == "serial-check":
            self.event = None
            found = self._condition_met()
            if found is None:
                return False  # not yet: an ordinary slice end (as one cut by an IRQ)
            self.event = found
        if self.event is None:
            return False
        if machine._stop is not None:
            self.event = None
            return False
        self.pending, self.event = self.event, None
        self.stepping = 0
        return True

    def finished(self, result: RunResult) -> None:
        """The machine stopped for good: tell the front end (gdb gets ``W``)."""
        if self.front_end is not None:
            self.front_end.finished(self, result)

    # --- what front ends and the Machine API call ----------------------------
    def interrupt(self, detail: str = "interrupted") -> None:
        """Pause at the next slice boundary (gdb's Ctrl-C, the monitor's ``stop``)."""
        if self.pending is None:
            self.pending = Pause("interrupt", detail, address=self._pc())

    def request_step(self, count: int = 1) -> None:
        self.stepping = count

    def add_breakpoint(self, linear: int, *, temporary: bool = False) -> None:
        linear &= 0xFFFF_FFFF
        if linear in self.breakpoints:
            if not temporary:
                self.temporary.discard(linear)
            return
        self.breakpoints[linear] = self.uc.hook_add(UC_HOOK_CODE, self._on_breakpoint, None,
                                                    linear, linear)
        if temporary:
            self.temporary.add(linear)
        self._drop_code(linear)

    def remove_breakpoint(self, linear: int) -> bool:
        hook = self.breakpoints.pop(linear & 0xFFFF_FFFF, None)
        if hook is None:
            return False
        self.uc.hook_del(hook)
        self.temporary.discard(linear)
        self._drop_code(linear)
        return True

    def add_watchpoint(self, linear: int, length: int, kind: str = "w") -> None:
        if kind not in WATCH_KINDS or length < 1:
            raise DebugError(f"bad watchpoint {kind!r} of {length} bytes")
        # Unicorn hands memory hooks the *physical* address when paging is on: hook the
        # physical pieces of the range as the page tables map it now.
        hooks = []
        for start, chunk in self._pages(linear, length):
            physical = linear_to_physical(self.uc, start)
            where = start if physical is None else physical
            hooks.append(self.uc.hook_add(WATCH_KINDS[kind], self._on_memory,
                                          (kind, start - where), where, where + chunk - 1))
        self.watches.append(_Watch(linear, length, kind, hooks))
        if self.watch_stopper is None:
            self.watch_stopper = self.uc.hook_add(UC_HOOK_CODE, self._on_instruction_watch,
                                                  None, 1, 0)
        self._drop_all_code()

    def remove_watchpoint(self, linear: int, length: int, kind: str = "w") -> bool:
        for watch in self.watches:
            if (watch.address, watch.length, watch.kind) == (linear, length, kind):
                for hook in watch.hooks:
                    self.uc.hook_del(hook)
                self.watches.remove(watch)
                break
        else:
            return False
        if not self.watches and self.watch_stopper is not None:
            self.uc.hook_del(self.watch_stopper)
            self.watch_stopper = None
            self._drop_all_code()
        return True

    def clear_all(self) -> None:
        for address in list(self.breakpoints):
            self.remove_breakpoint(address)
        for watch in list(self.watches):
            self.remove_watchpoint(watch.address, watch.length, watch.kind)

    def watch_ports(self, ports: Iterable[int], kinds: Iterable[str]) -> None:
        """Pause right after an access to one of ``ports`` (the bus tracer is chained);
        with a serial condition, COM1's transmitter is watched the same way."""
        assert self.conditions is not None
        self.conditions.ports = frozenset(ports)
        self.conditions.port_kinds = frozenset(kinds)
        bus = self.machine.bus
        if not self.port_tracer_installed:
            self.port_tracer_saved = bus.tracer
            bus.tracer = self._on_port
            self.port_tracer_installed = True

    def unwatch_ports(self) -> None:
        if self.port_tracer_installed:
            self.machine.bus.tracer = self.port_tracer_saved
            self.port_tracer_installed = False

    # --- registers and memory --------------------------------------------------
    def read_register(self, name: str) -> int:
        if name in REGISTERS:
            return int(self.uc.reg_read(REGISTERS[name][0]))
        if name == "fs_base":  # Unicorn shows FS's descriptor cache (not GS's)
            return int(self.uc.reg_read(X.UC_X86_REG_FS_BASE))
        if name.endswith("_base") and name[:-5] in SEGMENT_NAMES:
            try:
                return x86.segment(self.uc, name[:-5]).base
            except x86.DeliveryError:
                # Outside the descriptor table: loaded in real mode before the switch,
                # the usual reason; its cached base is then selector * 16.
                return int(self.uc.reg_read(x86.SEGMENT_REGISTERS[name[:-5]])) << 4
        raise DebugError(f"no register {name!r}")

    def write_register(self, name: str, value: int) -> None:
        if name not in REGISTERS:
            raise DebugError(f"no writable register {name!r}")
        reg, width = REGISTERS[name]
        self.uc.reg_write(reg, value & ((1 << (8 * width)) - 1))

    def read_memory(self, address: int, length: int, *, physical: bool = False) -> bytes:
        out = bytearray()
        for start, chunk in self._pages(address, length):
            where = start if physical else self._translate(start)
            out += self._read_physical(where, chunk)
        return bytes(out)

    def write_memory(self, address: int, data: bytes, *, physical: bool = False) -> None:
        done = 0
        for start, chunk in self._pages(address, len(data)):
            where = start if physical else self._translate(start)
            self._write_physical(where, data[done:done + chunk])
            done += chunk

    def _translate(self, linear: int) -> int:
        physical = linear_to_physical(self.uc, linear)
        if physical is None:
            raise DebugError(f"linear address {linear:#x} is not mapped")
        return physical

    @staticmethod
    def _pages(address: int, length: int) -> Iterable[tuple[int, int]]:
        while length > 0:
            chunk = min(length, PAGE - (address & (PAGE - 1)))
            yield address & 0xFFFF_FFFF, chunk
            address += chunk
            length -= chunk

    def _read_physical(self, address: int, length: int) -> bytes:
        memory = self.machine.memory
        if address + length <= memory.ram_size:
            return memory.read(address, length)
        try:
            return bytes(self.uc.mem_read(address, length))
        except UcError:
            raise DebugError(f"physical address {address:#x} is not mapped") from None

    def _write_physical(self, address: int, data: bytes) -> None:
        memory = self.machine.memory
        if address + len(data) <= memory.ram_size:
            memory.write(address, data)
            return
        try:
            self.uc.mem_write(address, data)
        except UcError:
            raise DebugError(f"physical address {address:#x} is not mapped") from None
        self.uc.remove_cache(address, address + len(data))

    # --- hooks ------------------------------------------------------------------
    def _on_breakpoint(self, uc: Any, address: int, size: int, _: Any) -> None:
        if self.skip_break_at == address:
            self.skip_break_at = None
            return
        self.skip_break_at = None
        if self.event is None:
            self.event = Pause("breakpoint", address=address)
        uc.emu_stop()

    def _on_memory(self, uc: Any, access: int, address: int, size: int, value: int,
                   piece: tuple[str, int]) -> None:
        if self.watch_hit is None:
            kind, to_linear = piece
            self.watch_hit = ((address + to_linear) & 0xFFFF_FFFF, kind)

    def _on_instruction_watch(self, uc: Any, address: int, size: int, _: Any) -> None:
        hit = self.watch_hit
        if hit is None:
            return
        self.watch_hit = None
        data_address, kind = hit
        if self.event is None:
            self.event = Pause("watchpoint", address=data_address, watch_kind=kind)
        self.skip_break_at = None
        uc.emu_stop()

    def _on_port(self, kind: str, port: int, size: int, value: int) -> None:
        if self.port_tracer_saved is not None:
            self.port_tracer_saved(kind, port, size, value)
        conditions = self.conditions
        if conditions is None or self.event is not None:
            return
        if port in conditions.ports and kind in conditions.port_kinds:
            self.event = Pause("port", f"{kind} {port:#x}/{size}={value:#x}", address=port)
            self.uc.emu_stop()
        elif conditions.serial is not None and port == self.machine.com1.base and \
                kind.startswith("out"):
            # The transcript grows after the tracer saw the access: decide at the
            # next slice boundary, which this stop makes immediate.
            self.event = Pause("serial-check")
            self.uc.emu_stop()

    def _condition_met(self) -> Pause | None:
        conditions = self.conditions
        machine = self.machine
        assert conditions is not None
        if conditions.instructions is not None and \
                machine.instructions >= conditions.instructions:
            return Pause("instructions", f"{machine.instructions} instructions")
        if conditions.virtual_ns is not None and machine.clock.ns >= conditions.virtual_ns:
            return Pause("virtual-time", f"{machine.clock.ns} ns")
        if conditions.serial is not None:
            transcript = machine.com1.transcript
            found = transcript.find(conditions.serial, conditions.serial_from)
            if found >= 0:
                return Pause("serial", conditions.serial.decode("latin-1"))
            conditions.serial_from = max(conditions.serial_from,
                                         len(transcript) - len(conditions.serial) + 1)
        return None

    # --- helpers -------------------------------------------------------------------
    def _pc(self) -> int:
        try:
            return x86.linear_pc(self.uc)
        except (UcError, x86.DeliveryError):
            return self.uc.reg_read(X.UC_X86_REG_EIP)  # type: ignore[no-any-return]

    def _drop_code(self, linear: int) -> None:
        """Translated blocks were made without (or with) the hook: translate again."""
        try:
            self.uc.remove_cache(linear, linear + 1)
        except UcError:
            self._drop_all_code()

    def _drop_all_code(self) -> None:
        self.uc.ctl_flush_tb()


@dataclass
class PortHook:
    """A test's handler in front of one port (``Machine.hook_port``).

    ``read(port, size)`` returns the value the guest reads, or None to let the
    device answer; ``write(port, size, value)`` returns True when it consumed the
    write, else the device gets it too.
    """

    port: int
    read_hook: Callable[[int, int], int | None] | None
    write_hook: Callable[[int, int, int], bool | None] | None
    device: Any = None

    def io_ports(self) -> list[tuple[int, int]]:
        return [(self.port, 1)]

    def read(self, port: int, size: int) -> int:
        if self.read_hook is not None:
            value = self.read_hook(port, size)
            if value is not None:
                return value
        return self.device.read(port, size) if self.device is not None else 0xFFFF_FFFF

    def write(self, port: int, size: int, value: int) -> None:
        if self.write_hook is not None and self.write_hook(port, size, value):
            return
        if self.device is not None:
            self.device.write(port, size, value)
