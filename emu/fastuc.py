"""Unicorn with cheap register and small-memory access for the hot paths.

The Python binding spends about 10 us per ``reg_read`` choosing a register
class; a port hook reads a dozen registers.  :class:`FastUc` calls the C
functions directly with one reused buffer for the plain integer registers
(general, EIP, EFLAGS, segment selectors, control registers) and for small
memory reads, and defers to the binding for everything else (descriptor-table
registers, wide registers).

**No "until" address.**  ``uc_emu_start(begin, until, ...)`` records ``until`` as
the exit address and, when the run ends, drops the translated block just below
it -- which means *translating* ``until - 1`` through the guest's page tables
(``get_page_addr_code``).  With paging on that walk can raise a page fault inside
Unicorn: CR2 and the pending exception are overwritten between slices and the
guest's next real #PF arrives wrong.  :class:`FastUc` therefore switches Unicorn
to its exits list (``UC_CTL_UC_USE_EXITS``) and leaves the list empty: ``until``
is ignored and nothing is translated at the end of a slice.

**Instructions executed.**  With ``count`` set Unicorn counts instructions in
``uc_struct.emu_counter`` but has no call to read it.  :func:`counter_offset`
finds the field once per process by running a NOP sled with known counts in a
scratch engine and looking for the word that followed them;
:meth:`FastUc.executed` then reads it in place (None when the layout was not
recognised: callers fall back to charging whole slices).

**The exception in flight.**  QEMU's CPU remembers the exception it is raising
(``env->old_exception``) to turn a second one into #DF and a third into a
shutdown, and forgets it when *it* delivers the exception.  Unicorn hands every
exception to the hook instead, so the memory is never cleared: the guest's next
#PF or #GP arrives as #DF and the one after that halts the CPU for good.  The
error code of an exception (``env->error_code``) is not exposed either.  Both
fields are found once per process in the saved CPU context
(:func:`context_offsets`: a #GP with a known selector error code in a scratch
engine); :meth:`FastUc.exception_taken` reads the error code and clears the
exception in flight (context save, patch, restore) after the machine has
delivered an exception itself.

**A stop timer without a thread per slice.**  ``emu_start``'s own ``timeout``
starts (and joins) a thread per call that polls every 2 us.  For slices that
often end early that costs more than the slice; :meth:`FastUc.run_for` instead
arms one POSIX timer (``timer_create`` with ``SIGEV_THREAD``, created once)
whose expiry calls ``uc_emu_stop(uc)`` directly from glibc's notification
thread -- the same call Unicorn's own timeout thread makes -- and disarms it when
the slice returns.  A timer firing between slices only sets a stop request that
the next ``emu_start`` clears.  Where ``timer_create`` is unavailable the
binding's timeout is used.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Callable, Sequence
from typing import Any

from unicorn import UC_HOOK_INSN, Uc, UcError
from unicorn import x86_const as X
from unicorn.unicorn_const import UC_CTL_TB_REMOVE_CACHE

try:  # the binding's loaded library and its x86 class (unicorn 2.1.x)
    from unicorn.unicorn_py3.arch.intel import UcIntel as _Base
    from unicorn.unicorn_py3.unicorn import uclib as _uclib
except ImportError:  # pragma: no cover - other binding layouts: stay on the slow path
    _Base = Uc  # type: ignore[misc,assignment]
    _uclib = None  # type: ignore[assignment]

FAST_REGISTERS = frozenset({
    X.UC_X86_REG_EAX, X.UC_X86_REG_EBX, X.UC_X86_REG_ECX, X.UC_X86_REG_EDX,
    X.UC_X86_REG_ESI, X.UC_X86_REG_EDI, X.UC_X86_REG_EBP, X.UC_X86_REG_ESP,
    X.UC_X86_REG_EIP, X.UC_X86_REG_EFLAGS, X.UC_X86_REG_CS, X.UC_X86_REG_DS,
    X.UC_X86_REG_ES, X.UC_X86_REG_SS, X.UC_X86_REG_FS, X.UC_X86_REG_GS,
    X.UC_X86_REG_CR0, X.UC_X86_REG_CR2, X.UC_X86_REG_CR3, X.UC_X86_REG_CR4,
})
TABLE_REGISTERS = frozenset({X.UC_X86_REG_GDTR, X.UC_X86_REG_IDTR, X.UC_X86_REG_LDTR,
                             X.UC_X86_REG_TR})
SMALL_READ = 64
UC_CTL_IO_WRITE = 1
# uc_ctl's request word: direction << 30 | argument count << 26 | control number
REMOVE_CACHE_REQUEST = UC_CTL_IO_WRITE << 30 | 2 << 26 | UC_CTL_TB_REMOVE_CACHE
UC_STRUCT_SCAN = 64 * 1024     # bytes of uc_struct searched for the instruction counter
CALIBRATION_COUNTS = (1000, 1234, 777)
CR0_PG = 0x8000_0000


# Direct prototypes (plain integers in, no per-call ctypes objects, the GIL kept over
# these short calls): about twice as cheap per call as the binding's plumbing.  uc_ctl
# is variadic; its two 64-bit arguments travel in integer registers exactly as a fixed
# prototype passes them.
_BATCH = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_int)
_PAIR = struct.Struct("<QQ")
_CTL_RANGE = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_uint64,
                              ctypes.c_uint64)
# uc_emu_start keeping the GIL (a PYFUNCTYPE prototype): every IN/OUT callback then
# finds it already held instead of taking it back from the releasing call (no other
# Python thread runs during a slice; slices are short).
_EMU_START = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint64,
                               ctypes.c_uint64, ctypes.c_uint64, ctypes.c_size_t)
if _uclib is not None:
    _reg_read_batch = _BATCH(("uc_reg_read_batch", _uclib))
    _reg_write_batch = _BATCH(("uc_reg_write_batch", _uclib))
    _ctl_range = _CTL_RANGE(("uc_ctl", _uclib))
    _emu_start = _EMU_START(("uc_emu_start", _uclib))

_PORT_IN_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32,
                                     ctypes.c_int, ctypes.c_void_p)
_INSN_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
_PORT_OUT_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                      ctypes.c_uint32, ctypes.c_void_p)


class _TableRegister(ctypes.Structure):
    """uc_x86_mmr: selector, base, limit, flags (as Unicorn lays it out)."""

    _fields_ = (("selector", ctypes.c_uint16), ("base", ctypes.c_uint64),
                ("limit", ctypes.c_uint32), ("flags", ctypes.c_uint32))


_counter_offset: int | None | bool = False  # False: not looked for yet


def counter_offset() -> int | None:
    """Byte offset of ``emu_counter`` in Unicorn's ``uc_struct`` (None if not found).

    A run stopped by ``count=N`` leaves the counter at N + 1 (the instruction whose
    count hook stopped it did not execute); three runs with different N must agree
    on exactly one such word.
    """
    global _counter_offset
    if _counter_offset is not False:
        return _counter_offset  # type: ignore[return-value]
    _counter_offset = None
    if _uclib is None:
        return None
    from unicorn import UC_ARCH_X86, UC_MODE_32
    scratch = Uc(UC_ARCH_X86, UC_MODE_32)
    scratch.mem_map(0, 0x10000)
    scratch.mem_write(0x1000, b"\x90" * 0x1000)  # NOPs
    scratch.ctl_exits_enabled(True)
    handle = int(getattr(scratch._uch, "value", 0) or 0)
    candidates: set[int] | None = None
    for count in CALIBRATION_COUNTS:
        scratch.emu_start(0x1000, 0, 0, count)
        if scratch.reg_read(X.UC_X86_REG_EIP) != 0x1000 + count:
            return None
        words = struct.unpack_from(f"<{UC_STRUCT_SCAN // 8}Q",
                                   ctypes.string_at(handle, UC_STRUCT_SCAN))
        found = {8 * i for i, word in enumerate(words) if word == count + 1}
        candidates = found if candidates is None else candidates & found
    if candidates is not None and len(candidates) == 1:
        _counter_offset = candidates.pop()
    return _counter_offset  # type: ignore[return-value]


# env->old_exception follows env->error_code by this many bytes (error_code,
# exception_is_int, exception_next_eip, dr[8], 4 breakpoint pointers); checked.
OLD_EXCEPTION_AFTER_ERROR_CODE = 4 + 4 + 8 + 8 * 8 + 4 * 8
CALIBRATION_SELECTORS = (0x1234, 0x2348)
GP_VECTOR = 13
_context_offsets: tuple[int, int] | None | bool = False


def context_offsets() -> tuple[int, int] | None:
    """Offsets of ``error_code`` and ``old_exception`` in a saved context (from the
    start of Unicorn's ``uc_context``), or None when the layout is not recognised."""
    global _context_offsets
    if _context_offsets is not False:
        return _context_offsets  # type: ignore[return-value]
    _context_offsets = None
    from unicorn import UC_ARCH_X86, UC_HOOK_INTR, UC_MODE_32
    scratch = Uc(UC_ARCH_X86, UC_MODE_32)
    scratch.mem_map(0, 0x10000)
    flat = 0xCF  # 4 KiB granular, 32-bit, limit 0xFFFFF
    gdt = (bytes(8) + struct.pack("<HHBBBB", 0xFFFF, 0, 0, 0x9A, flat, 0)
           + struct.pack("<HHBBBB", 0xFFFF, 0, 0, 0x92, flat, 0))
    scratch.mem_write(0x500, gdt)
    scratch.reg_write(X.UC_X86_REG_GDTR, (0, 0x500, len(gdt) - 1, 0))
    scratch.reg_write(X.UC_X86_REG_CR0, 0x11)
    scratch.reg_write(X.UC_X86_REG_CS, 0x08)
    scratch.reg_write(X.UC_X86_REG_SS, 0x10)
    scratch.reg_write(X.UC_X86_REG_ESP, 0x8000)
    seen: list[tuple[int, bytes]] = []
    context = scratch.context_save()
    size = context.size + 64

    def on_interrupt(uc: Any, vector: int, _: Any) -> None:
        uc.context_update(context)
        seen.append((vector, ctypes.string_at(context.context, size)))
        uc.emu_stop()

    scratch.hook_add(UC_HOOK_INTR, on_interrupt)
    found: set[int] | None = None
    for index, selector in enumerate(CALIBRATION_SELECTORS):
        # mov ax, selector; mov ds, ax (beyond the GDT limit: #GP(selector)); hlt -- each
        # at its own address (Unicorn does not retranslate code that mem_write changed)
        code = 0x1000 + 0x100 * index
        scratch.mem_write(code, b"\x66\xb8" + struct.pack("<H", selector) + b"\x8e\xd8\xf4")
        seen.clear()
        scratch.emu_start(code, 0, 0, 10)
        if len(seen) != 1 or seen[0][0] != GP_VECTOR:
            return None
        raw = seen[0][1]
        here = {offset for offset in range(0, len(raw) - OLD_EXCEPTION_AFTER_ERROR_CODE - 4, 4)
                if struct.unpack_from("<i", raw, offset)[0] == selector
                and struct.unpack_from("<i", raw, offset + OLD_EXCEPTION_AFTER_ERROR_CODE)[0]
                == GP_VECTOR}
        found = here if found is None else found & here
        if len(found) != 1:
            return None
        # Clear the exception in flight as the machine will: the next #GP must stay #GP.
        offset = next(iter(found)) + OLD_EXCEPTION_AFTER_ERROR_CODE
        ctypes.c_int.from_address(_context_address(context) + offset).value = -1
        scratch.context_restore(context)
    if found is not None and len(found) == 1:
        error_offset = found.pop()
        _context_offsets = (error_offset, error_offset + OLD_EXCEPTION_AFTER_ERROR_CODE)
    return _context_offsets  # type: ignore[return-value]


def _context_address(context: Any) -> int:
    pointer = context.context
    return int(getattr(pointer, "value", pointer) or 0)


SIGEV_THREAD = 2
CLOCK_MONOTONIC = 1


class _SigEvent(ctypes.Structure):
    """struct sigevent (glibc, 64 bytes) for SIGEV_THREAD."""

    _fields_ = (("value", ctypes.c_void_p), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("function", ctypes.c_void_p), ("attributes", ctypes.c_void_p),
                ("_pad", ctypes.c_byte * 32))


class _TimeSpec(ctypes.Structure):
    _fields_ = (("sec", ctypes.c_long), ("nsec", ctypes.c_long))


class _ITimerSpec(ctypes.Structure):
    _fields_ = (("interval", _TimeSpec), ("value", _TimeSpec))


class _StopTimer:
    """A POSIX timer that calls ``uc_emu_stop(handle)`` when it expires."""

    def __init__(self, handle: int) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._create = libc.timer_create
        self._settime = libc.timer_settime
        self._delete = libc.timer_delete
        self._timer = ctypes.c_void_p()
        event = _SigEvent()
        event.value = handle
        event.notify = SIGEV_THREAD
        event.function = ctypes.cast(_uclib.uc_emu_stop, ctypes.c_void_p).value
        if self._create(CLOCK_MONOTONIC, ctypes.byref(event), ctypes.byref(self._timer)):
            raise OSError(ctypes.get_errno(), "timer_create")
        self._spec = _ITimerSpec()
        self._spec_ref = ctypes.byref(self._spec)

    def arm(self, microseconds: int) -> None:
        self._spec.value.sec, self._spec.value.nsec = divmod(max(1, microseconds) * 1000,
                                                             1_000_000_000)
        self._settime(self._timer, 0, self._spec_ref, None)

    def disarm(self) -> None:
        self._spec.value.sec = self._spec.value.nsec = 0
        self._settime(self._timer, 0, self._spec_ref, None)

    def close(self) -> None:
        if self._timer.value is not None:
            self._delete(self._timer)
            self._timer = ctypes.c_void_p()


class FastUc(_Base):  # type: ignore[misc,valid-type]
    def __new__(cls, arch: int, mode: int) -> FastUc:
        # Uc.__new__ would pick the binding's own x86 class; keep this one.
        return object.__new__(cls)

    def __init__(self, arch: int, mode: int) -> None:
        super().__init__(arch, mode)
        self._value = ctypes.c_uint64()
        self._value_ref = ctypes.byref(self._value)
        self._small = ctypes.create_string_buffer(SMALL_READ)
        self._fast = _uclib is not None
        self._batches: dict[tuple[Any, ...], Any] = {}
        self._table = _TableRegister()
        self._direct_callbacks: list[Any] = []
        self._pairs: dict[tuple[int, int], Any] = {}
        self._table_ref = ctypes.byref(self._table)
        self.ctl_exits_enabled(True)  # "until" ignored: see the module docstring
        self._context: Any = None
        self._stop_timer: _StopTimer | None = None
        if self._fast:
            try:
                self._stop_timer = _StopTimer(int(self._uch.value or 0))
            except (OSError, AttributeError):
                self._stop_timer = None
        self._context_offsets = context_offsets()
        offset = counter_offset()
        self._counter = None if offset is None else ctypes.c_uint64.from_address(
            int(self._uch.value or 0) + offset)

    def exception_taken(self) -> int | None:
        """Call from the interrupt hook once an exception is handled: returns its error
        code and clears QEMU's exception in flight (see the module docstring).  None
        when the context layout is unknown (the error code is then unknown too)."""
        if self._context_offsets is None:
            return None
        if self._context is None:
            self._context = self.context_save()
        else:
            self.context_update(self._context)
        base = _context_address(self._context)
        error_offset, in_flight_offset = self._context_offsets
        error_code = ctypes.c_int.from_address(base + error_offset).value & 0xFFFF_FFFF
        ctypes.c_int.from_address(base + in_flight_offset).value = -1
        self.context_restore(self._context)
        return error_code

    @property
    def counts_instructions(self) -> bool:
        return self._counter is not None

    def executed(self) -> int:
        """Unicorn's instruction counter for the current/last ``count=`` run (see the
        module docstring for what it includes); 0 where it cannot be read."""
        return 0 if self._counter is None else int(self._counter.value)

    def emu_start(self, begin: int, until: int, timeout: int = 0, count: int = 0) -> None:
        """As the binding's, with the GIL kept through the run (see _EMU_START)."""
        if not self._fast:
            super().emu_start(begin, until, timeout, count)
            return
        self._hook_exception = None
        status = _emu_start(self._uch.value, begin, until, timeout, count)
        if status:
            raise UcError(status)
        if self._hook_exception is not None:
            raise self._hook_exception

    def run_for(self, begin: int, microseconds: int) -> None:
        """Run from ``begin`` until stopped, or for about ``microseconds`` of wall time
        (see "A stop timer" in the module docstring); no instruction count."""
        timer = self._stop_timer
        if timer is None:
            self.emu_start(begin, 0, microseconds, 0)
            return
        timer.arm(microseconds)
        try:
            self.emu_start(begin, 0, 0, 0)
        finally:
            timer.disarm()

    def close_timer(self) -> None:
        if self._stop_timer is not None:
            self._stop_timer.disarm()
            self._stop_timer.close()
            self._stop_timer = None

    def reg_read(self, reg_id: int, aux: Any = None) -> Any:
        if not self._fast or aux is not None or reg_id not in FAST_REGISTERS:
            if self._fast and aux is None and reg_id in TABLE_REGISTERS:
                table = self._table
                status = _uclib.uc_reg_read(self._uch, reg_id, self._table_ref)
                if status:
                    raise UcError(status)
                return (table.selector, table.base, table.limit, table.flags)
            return super().reg_read(reg_id, aux)
        self._value.value = 0
        status = _uclib.uc_reg_read(self._uch, reg_id, self._value_ref)
        if status:
            raise UcError(status)
        return self._value.value

    def reg_write(self, reg_id: int, value: Any) -> None:
        if not self._fast or reg_id not in FAST_REGISTERS or not isinstance(value, int):
            super().reg_write(reg_id, value)
            return
        self._value.value = value & 0xFFFF_FFFF_FFFF_FFFF
        status = _uclib.uc_reg_write(self._uch, reg_id, self._value_ref)
        if status:
            raise UcError(status)

    def reg_read_many(self, reg_ids: tuple[int, ...]) -> Sequence[int]:
        """Several plain integer registers in one call into Unicorn."""
        batch = self._batches.get(reg_ids)
        if batch is None:
            if not self._fast:
                return [super(FastUc, self).reg_read(reg) for reg in reg_ids]
            batch = self._batches[reg_ids] = self._read_batch(reg_ids)
        handle, ids, pointers, count, unpack, values, _ = batch
        # Each slot always receives the same register, so narrower registers (16-bit
        # selectors) leave the zeroed upper bytes of their slot alone: no clearing needed.
        status = _reg_read_batch(handle, ids, pointers, count)
        if status:
            raise UcError(status)
        return unpack(values)  # type: ignore[no-any-return]

    def _read_batch(self, reg_ids: tuple[int, ...]) -> tuple[Any, ...]:
        """A reusable read batch: the handle, the addresses of the id and pointer arrays,
        the count, an unpacker and the value buffer (and the arrays, kept alive)."""
        count = len(reg_ids)
        values = bytearray(8 * count)
        slots = (ctypes.c_char * len(values)).from_buffer(values)
        ids = (ctypes.c_int * count)(*reg_ids)
        pointers = (ctypes.c_void_p * count)(
            *(ctypes.addressof(slots) + 8 * i for i in range(count)))
        return (self._uch.value, ctypes.addressof(ids), ctypes.addressof(pointers), count,
                struct.Struct(f"<{count}Q").unpack_from, values, (slots, ids, pointers))

    def hook_port_io(self, on_in: Callable[[int, int], int],
                     on_out: Callable[[int, int, int], None]) -> None:
        """IN/OUT hooks as bare C callbacks: ``on_in(port, size)``, ``on_out(port, size,
        value)``.  Skips the binding's per-call layers; an exception stops emulation and
        is raised from ``emu_start`` as the binding does."""
        if not self._fast:
            self.hook_add(UC_HOOK_INSN, lambda uc, port, size, _: on_in(port, size),
                          None, 1, 0, X.UC_X86_INS_IN)
            self.hook_add(UC_HOOK_INSN,
                          lambda uc, port, size, value, _: on_out(port, size, value),
                          None, 1, 0, X.UC_X86_INS_OUT)
            return

        def port_in(handle: int, port: int, size: int, _: int) -> int:
            try:
                return on_in(port, size)
            except BaseException as error:  # noqa: BLE001 (re-raised by emu_start)
                self._fail(error)
                return 0

        def port_out(handle: int, port: int, size: int, value: int, _: int) -> None:
            try:
                on_out(port, size, value)
            except BaseException as error:  # noqa: BLE001 (re-raised by emu_start)
                self._fail(error)

        for kind, function in ((X.UC_X86_INS_IN, _PORT_IN_CALLBACK(port_in)),
                               (X.UC_X86_INS_OUT, _PORT_OUT_CALLBACK(port_out))):
            self._add_insn_hook(kind, function)

    def hook_port_io_raw(self, on_in: Callable[[int, int, int, int], int],
                         on_out: Callable[[int, int, int, int, int], None]) -> None:
        """IN/OUT hooks called straight from C with Unicorn's own arguments:
        ``on_in(handle, port, size, user)``, ``on_out(handle, port, size, value, user)``
        (one Python frame less per access than :meth:`hook_port_io`).  They must not
        raise: catch everything and hand it to :meth:`fail`."""
        if not self._fast:
            self.hook_port_io(lambda port, size: on_in(0, port, size, 0),
                              lambda port, size, value: on_out(0, port, size, value, 0))
            return
        for kind, function in ((X.UC_X86_INS_IN, _PORT_IN_CALLBACK(on_in)),
                               (X.UC_X86_INS_OUT, _PORT_OUT_CALLBACK(on_out))):
            self._add_insn_hook(kind, function)

    def hook_rdtsc(self, on_rdtsc: Callable[[], int]) -> None:
        """Answer RDTSC with ``on_rdtsc()`` (the binding has no wrapper for this hook;
        Unicorn's C callback returns 1 to skip its own RDTSC)."""
        def callback(handle: int, _: int) -> int:
            try:
                tsc = on_rdtsc()
                self.reg_write(X.UC_X86_REG_EAX, tsc & 0xFFFF_FFFF)
                self.reg_write(X.UC_X86_REG_EDX, (tsc >> 32) & 0xFFFF_FFFF)
            except BaseException as error:  # noqa: BLE001 (re-raised by emu_start)
                self._fail(error)
            return 1

        self._add_insn_hook(X.UC_X86_INS_RDTSC, _INSN_CALLBACK(callback))

    def _add_insn_hook(self, kind: int, function: Any) -> None:
        handle = ctypes.c_size_t()
        status = _uclib.uc_hook_add(self._uch, ctypes.byref(handle), UC_HOOK_INSN,
                                    ctypes.cast(function, ctypes.c_void_p),
                                    ctypes.c_void_p(0), ctypes.c_uint64(1),
                                    ctypes.c_uint64(0), ctypes.c_int(kind))
        if status:
            raise UcError(status)
        self._direct_callbacks.append(function)  # keep the thunk alive

    def fail(self, error: BaseException) -> None:
        """Stop emulation; ``emu_start`` raises ``error`` (from a hook that caught it)."""
        self._fail(error)

    def _fail(self, error: BaseException) -> None:
        if self._hook_exception is None:
            self._hook_exception = error  # type: ignore[assignment]
        self.emu_stop()

    def remove_cache(self, begin: int, end: int) -> None:
        """Drop translated code for ``[begin, end)`` (``ctl_remove_cache``, without the
        binding's per-call argument plumbing)."""
        if not self._fast:
            self.ctl_remove_cache(begin, end)
            return
        status = _ctl_range(self._uch.value, REMOVE_CACHE_REQUEST, begin, end)
        if status:
            raise UcError(status)

    def remove_cache_physical(self, begin: int, end: int) -> None:
        """Drop translated code for the *physical* range ``[begin, end)``.

        Unicorn's cache removal takes guest-virtual addresses and translates them
        through the page tables; with paging on, a device's write to physical
        memory would drop the wrong blocks (and the translation may fault inside
        Unicorn).  Paging is switched off around the call so the range is taken as
        physical; the CR0 writes flush the TLB, which the CPU refills.
        """
        cr0 = self.reg_read(X.UC_X86_REG_CR0)
        if not cr0 & CR0_PG:
            self.remove_cache(begin, end)
            return
        self.reg_write(X.UC_X86_REG_CR0, cr0 & ~CR0_PG)
        try:
            self.remove_cache(begin, end)
        finally:
            self.reg_write(X.UC_X86_REG_CR0, cr0)

    def reg_write_pair(self, first: int, first_value: int, second: int,
                       second_value: int) -> None:
        """Two plain integer registers in one call (the string I/O fast path's)."""
        if not self._fast:
            super().reg_write(first, first_value)
            super().reg_write(second, second_value)
            return
        key = (first, second)
        batch = self._pairs.get(key)
        if batch is None:
            batch = self._pairs[key] = self._read_batch(key)  # same layout for writing
        handle, ids, pointers, count, _, values, _ = batch
        _PAIR.pack_into(values, 0, first_value & 0xFFFF_FFFF_FFFF_FFFF,
                        second_value & 0xFFFF_FFFF_FFFF_FFFF)
        status = _reg_write_batch(handle, ids, pointers, count)
        if status:
            raise UcError(status)

    def reg_write_many(self, writes: tuple[tuple[int, int], ...]) -> None:
        """Several plain integer registers written in one call into Unicorn."""
        reg_ids = tuple(reg for reg, _ in writes)
        if not self._fast:
            for reg, value in writes:
                super().reg_write(reg, value)
            return
        key = ("write", *reg_ids)
        batch = self._batches.get(key)
        if batch is None:
            values = (ctypes.c_uint64 * len(reg_ids))()
            ids = (ctypes.c_int * len(reg_ids))(*reg_ids)
            pointers = (ctypes.c_void_p * len(reg_ids))(
                *(ctypes.addressof(values) + 8 * i for i in range(len(reg_ids))))
            batch = self._batches[key] = (ids, pointers, values)
        ids, pointers, values = batch
        for index, (_, value) in enumerate(writes):
            values[index] = value & 0xFFFF_FFFF_FFFF_FFFF
        status = _uclib.uc_reg_write_batch(self._uch, ids, pointers, len(reg_ids))
        if status:
            raise UcError(status)

    def mem_read(self, address: int, size: int) -> bytearray:
        if not self._fast or size > SMALL_READ:
            return super().mem_read(address, size)
        status = _uclib.uc_mem_read(self._uch, address, self._small, size)
        if status:
            raise UcError(status)
        return bytearray(self._small.raw[:size])
