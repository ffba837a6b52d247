"""GDB's remote serial protocol over TCP: ``emu run --gdb tcp::PORT`` (``-s``, ``-S``).

Theory of operation
-------------------
The stub is a front end of the machine's :class:`~emu.debugger.Debugger`: the run
loop hands it control at slice boundaries only.  While the guest runs,
:meth:`GdbStub.poll` accepts a connection without blocking and looks for gdb's
interrupt byte (0x03, Ctrl-C); while the guest is paused, :meth:`GdbStub.paused`
sends the stop reply and serves packets until gdb resumes (``c``, ``s``,
``vCont``), detaches (``D``: breakpoints removed, the guest runs on, as QEMU) or
kills (``k``: the machine stops, exit status 123).  When the machine stops by
itself gdb gets ``W`` with the exit status.

Packets (``$data#checksum``, acknowledged with ``+`` until ``QStartNoAckMode``):
``qSupported``, ``qXfer:features:read`` (the target description below),
``?``, ``g``/``G``, ``p``/``P``, ``m``/``M``/``X``, ``Z0``-``Z4``/``z0``-``z4``,
``c``, ``s``, ``vCont``, ``D``, ``k``/``vKill``, ``qRcmd`` (gdb's ``monitor``
command runs a monitor command, :mod:`emu.monitor`), and the thread queries
answered for one CPU.  Anything else gets the empty reply ("not supported").

Registers follow QEMU's i386 target description, names, types and order:
general, EIP, EFLAGS, segment selectors and bases, CR0/CR2/CR3/CR4 (CR8, EFER
and KERNEL_GS_BASE read 0: no APIC, no long mode), x87, SSE -- so gdb's
``info registers`` reads the same against either.
The description names the architecture ``i8086`` when gdb connects to a CPU in
real mode (so ``x/i`` decodes 16-bit code; ``set architecture i386`` overrides
it) and ``i386`` otherwise.  Addresses in ``m``/``M``/``Z`` are linear, as in
QEMU's stub.
"""

from __future__ import annotations

import select
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from unicorn import UcError
from unicorn import x86_const as X

from . import x86
from .debugger import DebugError, Debugger, Pause

if TYPE_CHECKING:
    from .machine import RunResult

INTERRUPT_BYTE = 0x03
SIGINT = 2
SIGTRAP = 5
PACKET_SIZE = 0x4000
MAX_MEMORY_REPLY = (PACKET_SIZE - 16) // 2
WATCH_REPLY = {"w": "watch", "r": "rwatch", "a": "awatch"}
WATCH_TYPES = {2: "w", 3: "r", 4: "a"}   # Z2 write, Z3 read, Z4 access watchpoints


class GdbEndpointError(ValueError):
    """A ``--gdb`` value that is not ``tcp:[HOST]:PORT``, or a port that cannot be opened."""


@dataclass(frozen=True)
class Register:
    name: str
    bits: int
    type: str
    group: str = ""
    source: Any = None      # Unicorn id, or a callable key handled in _read_register


def _registers() -> list[Register]:
    """gdb's i386 registers in QEMU's order (so the ``g`` packet and ``info registers``
    read the same as against QEMU): general, EIP, EFLAGS, selectors, segment bases,
    control registers, x87, SSE."""
    def unicorn(name: str) -> int:
        return int(getattr(X, f"UC_X86_REG_{name.upper()}"))

    general = [Register(n, 32, t, source=unicorn(n))
               for n, t in (("eax", "int32"), ("ecx", "int32"), ("edx", "int32"),
                            ("ebx", "int32"), ("esp", "data_ptr"), ("ebp", "data_ptr"),
                            ("esi", "int32"), ("edi", "int32"), ("eip", "code_ptr"),
                            ("eflags", "i386_eflags"))]
    segments = [Register(n, 32, "int32", source=x86.SEGMENT_REGISTERS[n])
                for n in ("cs", "ss", "ds", "es", "fs", "gs")]
    system = [Register("fs_base", 32, "int32", source="fs_base"),
              Register("gs_base", 32, "int32", source="gs_base"),
              Register("k_gs_base", 32, "int32", source="zero"),   # no long mode
              Register("cr0", 32, "i386_cr0", source=X.UC_X86_REG_CR0),
              Register("cr2", 32, "int32", source=X.UC_X86_REG_CR2),
              Register("cr3", 32, "i386_cr3", source=X.UC_X86_REG_CR3),
              Register("cr4", 32, "i386_cr4", source=X.UC_X86_REG_CR4),
              Register("cr8", 32, "int32", source="zero"),         # no APIC
              Register("efer", 32, "i386_efer", source="zero")]    # no long mode, no NX
    x87 = [Register(f"st{i}", 80, "i387_ext", source=unicorn(f"fp{i}")) for i in range(8)]
    x87_control = [Register(n, 32, "int", "float", source=s) for n, s in (
        ("fctrl", X.UC_X86_REG_FPCW), ("fstat", X.UC_X86_REG_FPSW),
        ("ftag", X.UC_X86_REG_FPTAG), ("fiseg", X.UC_X86_REG_FCS),
        ("fioff", X.UC_X86_REG_FIP), ("foseg", X.UC_X86_REG_FDS),
        ("fooff", X.UC_X86_REG_FDP), ("fop", X.UC_X86_REG_FOP))]
    sse = [Register(f"xmm{i}", 128, "vec128", source=unicorn(f"xmm{i}")) for i in range(8)]
    return general + segments + system + x87 + x87_control + sse + [
        Register("mxcsr", 32, "i386_mxcsr", "vector", source=X.UC_X86_REG_MXCSR)]


REGISTERS = _registers()
REGISTER_NUMBERS = {register.name: number for number, register in enumerate(REGISTERS)}

# Flag registers' fields (Intel SDM vol. 1 3.4.3, 10.2.3; vol. 3 2.2.1, 2.5), listed in the
# order gdb shows them; unnamed fields are reserved bits.
Fields = tuple[tuple[str, int, int], ...]
FLAG_TYPES: dict[str, Fields] = {
    "i386_eflags": (("", 22, 31), ("ID", 21, 21), ("VIP", 20, 20), ("VIF", 19, 19),
                    ("AC", 18, 18), ("VM", 17, 17), ("RF", 16, 16), ("", 15, 15),
                    ("NT", 14, 14), ("IOPL", 12, 13), ("OF", 11, 11), ("DF", 10, 10),
                    ("IF", 9, 9), ("TF", 8, 8), ("SF", 7, 7), ("ZF", 6, 6), ("", 5, 5),
                    ("AF", 4, 4), ("", 3, 3), ("PF", 2, 2), ("", 1, 1), ("CF", 0, 0)),
    "i386_cr0": (("PG", 31, 31), ("CD", 30, 30), ("NW", 29, 29), ("AM", 18, 18),
                 ("WP", 16, 16), ("NE", 5, 5), ("ET", 4, 4), ("TS", 3, 3), ("EM", 2, 2),
                 ("MP", 1, 1), ("PE", 0, 0)),
    "i386_cr3": (("PDBR", 12, 31), ("PCID", 0, 11)),
    "i386_cr4": tuple((name, bit, bit) for name, bit in (
        ("LAM_SUP", 28), ("LASS", 27), ("UINTR", 25), ("PKS", 24), ("CET", 23), ("PKE", 22),
        ("SMAP", 21), ("SMEP", 20), ("KL", 19), ("OSXSAVE", 18), ("PCIDE", 17),
        ("FSGSBASE", 16), ("SMXE", 14), ("VMXE", 13), ("LA57", 12), ("UMIP", 11),
        ("OSXMMEXCPT", 10), ("OSFXSR", 9), ("PCE", 8), ("PGE", 7), ("MCE", 6), ("PAE", 5),
        ("PSE", 4), ("DE", 3), ("TSD", 2), ("PVI", 1), ("VME", 0))),
    "i386_efer": tuple((name, bit, bit) for name, bit in (
        ("TCE", 15), ("FFXSR", 14), ("LMSLE", 13), ("SVME", 12), ("NXE", 11), ("LMA", 10),
        ("LME", 8), ("SCE", 0))),
    "i386_mxcsr": tuple((name, bit, bit) for name, bit in (
        ("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5), ("DAZ", 6),
        ("IM", 7), ("DM", 8), ("ZM", 9), ("OM", 10), ("UM", 11), ("PM", 12), ("FZ", 15))),
}
VECTOR_TYPES = ('<vector id="v4f" type="ieee_single" count="4"/>'
                '<vector id="v2d" type="ieee_double" count="2"/>'
                '<vector id="v16i8" type="int8" count="16"/>'
                '<vector id="v8i16" type="int16" count="8"/>'
                '<vector id="v4i32" type="int32" count="4"/>'
                '<vector id="v2i64" type="int64" count="2"/>'
                '<union id="vec128"><field name="v4_float" type="v4f"/>'
                '<field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/>'
                '<field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/>'
                '<field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/>'
                '</union>')


def target_description(architecture: str) -> str:
    """The target.xml gdb reads through qXfer:features:read: one i386 core feature
    holding every register (as QEMU's), with the flag and vector types it uses."""
    parts = ['<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">',
             f"<target><architecture>{architecture}</architecture><osabi>none</osabi>",
             '<feature name="org.gnu.gdb.i386.core">', VECTOR_TYPES]
    for name, fields in FLAG_TYPES.items():
        parts.append(f'<flags id="{name}" size="4">' + "".join(
            f'<field name="{field}" start="{start}" end="{end}"/>'
            for field, start, end in fields) + "</flags>")
    for number, register in enumerate(REGISTERS):
        group = f' group="{register.group}"' if register.group else ""
        parts.append(f'<reg name="{register.name}" bitsize="{register.bits}" '
                     f'type="{register.type}" regnum="{number}"{group}/>')
    parts.append("</feature></target>")
    return "".join(parts)


def parse_endpoint(text: str) -> tuple[str, int]:
    """``tcp::PORT`` / ``tcp:HOST:PORT`` (QEMU's -gdb spelling) -> (host, port)."""
    kind, _, rest = text.partition(":")
    host, sep, port_text = rest.rpartition(":")
    if kind != "tcp" or not sep or not port_text.isdigit() or int(port_text) > 0xFFFF:
        raise GdbEndpointError(f"--gdb {text!r}: expected tcp::PORT or tcp:HOST:PORT")
    return host or "127.0.0.1", int(port_text)


def _checksum(data: bytes) -> int:
    return sum(data) & 0xFF


def _unescape(data: bytes) -> bytes:
    """Binary data of an X packet: 0x7D escapes the next byte (XOR 0x20)."""
    out = bytearray()
    escaped = False
    for byte in data:
        if escaped:
            out.append(byte ^ 0x20)
            escaped = False
        elif byte == 0x7D:
            escaped = True
        else:
            out.append(byte)
    return bytes(out)


class GdbStub:
    """One listening socket, at most one gdb connection (see module docstring)."""

    def __init__(self, endpoint: str) -> None:
        host, port = parse_endpoint(endpoint)
        try:
            self.server = socket.create_server((host, port), reuse_port=False)
        except OSError as error:
            raise GdbEndpointError(f"--gdb {endpoint}: {error.strerror}") from None
        self.server.setblocking(False)
        self.port = self.server.getsockname()[1]
        self.host = host
        self.connection: socket.socket | None = None
        self.buffer = bytearray()
        self.ack = True
        self.interrupt_seen = False
        self.announced = False
        self.last_pause = Pause("start")

    # --- FrontEnd -----------------------------------------------------------------
    def poll(self, debugger: Debugger) -> None:
        if self.connection is None:
            self._accept(block=False)
            if self.connection is not None:  # gdb attached to a running guest: stop it
                debugger.pending = Pause("attach", "gdb attached", address=debugger._pc())
            return
        readable, _, _ = select.select([self.connection], [], [], 0)
        if readable and not self._receive():
            self._disconnected(debugger)
            return
        if self.interrupt_seen:  # (possibly read along with the packet that resumed)
            self.interrupt_seen = False
            debugger.interrupt("gdb interrupt (Ctrl-C)")

    def paused(self, debugger: Debugger, pause: Pause) -> None:
        try:
            self._hold(debugger, pause)
        except OSError:  # gdb went away mid-conversation: the guest runs on
            self._disconnected(debugger)

    def _hold(self, debugger: Debugger, pause: Pause) -> None:
        if self.connection is None:
            self.announce()
            self._accept(block=True)
        elif pause.reason not in ("start", "attach"):  # gdb asks with '?'
            self._send(self._stop_reply(pause))
        self.last_pause = pause
        while self.connection is not None:
            packet = self._next_packet()
            if packet is None:
                self._disconnected(debugger)
                return
            if self._serve(debugger, packet):
                return

    def finished(self, debugger: Debugger, result: RunResult) -> None:
        if self.connection is not None:
            try:
                self._send(f"W{result.exit_code & 0xFF:02x}")
            except OSError:
                pass
        self.close()

    def close(self) -> None:
        for endpoint in (self.connection, self.server):
            if endpoint is not None:
                endpoint.close()
        self.connection = None

    def announce(self) -> None:
        if not self.announced:
            self.announced = True
            print(f"emu: gdb stub listening on {self.host}:{self.port}", file=sys.stderr,
                  flush=True)

    # --- connection -------------------------------------------------------------------
    def _accept(self, *, block: bool) -> None:
        self.server.setblocking(block)
        try:
            connection, _ = self.server.accept()
        except (BlockingIOError, InterruptedError):
            return
        finally:
            self.server.setblocking(False)
        connection.setblocking(True)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connection = connection
        self.buffer.clear()
        self.ack = True

    def _disconnected(self, debugger: Debugger) -> None:
        """gdb went away: forget its breakpoints and let the guest run on (as QEMU)."""
        if self.connection is not None:
            self.connection.close()
        self.connection = None
        debugger.clear_all()
        debugger.stepping = 0

    def _receive(self) -> bool:
        assert self.connection is not None
        try:
            data = self.connection.recv(65536)
        except OSError:
            return False
        if not data:
            return False
        if INTERRUPT_BYTE in data:
            data = self._take_interrupts(data)
        self.buffer += data
        return True

    def _take_interrupts(self, data: bytes) -> bytes:
        """Drop 0x03 bytes that arrive between packets (gdb's Ctrl-C); inside a packet
        (an X packet's binary data) 0x03 is data."""
        kept = bytearray()
        inside = self.buffer.rfind(b"$") > self.buffer.rfind(b"#")
        for byte in data:
            if byte == INTERRUPT_BYTE and not inside:
                self.interrupt_seen = True
                continue
            if byte == 0x24:   # '$'
                inside = True
            elif byte == 0x23:  # '#'
                inside = False
            kept.append(byte)
        return bytes(kept)

    def _next_packet(self) -> bytes | None:
        """The next well-formed packet (acknowledged); None when the connection closed."""
        while True:
            start = self.buffer.find(b"$")
            if start >= 0:
                end = self.buffer.find(b"#", start)
                if end >= 0 and len(self.buffer) >= end + 3:
                    data = bytes(self.buffer[start + 1:end])
                    checksum = bytes(self.buffer[end + 1:end + 3])
                    del self.buffer[:end + 3]
                    good = checksum.lower() == b"%02x" % _checksum(data)
                    if self.ack:
                        self._raw(b"+" if good else b"-")
                    if good:
                        return data
                    continue
            elif self.interrupt_seen:
                self.interrupt_seen = False   # already paused: nothing to interrupt
            if not self._receive():
                return None

    def _raw(self, data: bytes) -> None:
        assert self.connection is not None
        self.connection.sendall(data)

    def _send(self, reply: str | bytes) -> None:
        data = reply.encode("latin-1") if isinstance(reply, str) else reply
        self._raw(b"$" + data + b"#%02x" % _checksum(data))
        # The acknowledgement ('+') is skipped by _next_packet's search for '$'.

    # --- packets --------------------------------------------------------------------------
    def _serve(self, debugger: Debugger, packet: bytes) -> bool:
        """Answer one packet; True when the guest should run again."""
        text = packet.decode("latin-1")
        try:
            reply, resume = self._dispatch(debugger, text, packet)
        except DebugError:
            reply, resume = "E14", False   # EFAULT, as gdbserver
        except (ValueError, IndexError):
            reply, resume = "E01", False
        if reply is not None:
            self._send(reply)
        return resume

    def _dispatch(self, debugger: Debugger, text: str, packet: bytes
                  ) -> tuple[str | bytes | None, bool]:
        command = text[:1]
        if text.startswith("qSupported"):
            return (f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;"
                    "QStartNoAckMode+;vContSupported+", False)
        if text == "QStartNoAckMode":
            self._send("OK")
            self.ack = False
            return None, False
        if text.startswith("qXfer:features:read:target.xml:"):
            return self._xfer(debugger, text.rsplit(":", 1)[1]), False
        if text.startswith("qRcmd,"):   # gdb's "monitor CMD": the console monitor's commands
            command = bytes.fromhex(text[6:]).decode("latin-1")
            output = debugger.machine.monitor().execute(command)
            if output:
                self._send("O" + output.encode("latin-1", "replace").hex())
            return "OK", False
        if text == "?":
            return self._stop_reply(self.last_pause), False
        if text in ("qfThreadInfo",):
            return "m01", False
        if text == "qsThreadInfo":
            return "l", False
        if text == "qC":
            return "QC01", False
        if text.startswith("qAttached"):
            return "1", False
        if text.startswith("T"):
            return "OK", False   # the one thread is alive
        if command == "H":
            return "OK", False
        if text == "vCont?":
            return "vCont;c;C;s;S", False
        if text.startswith("vCont;"):
            return self._vcont(debugger, text[6:])
        if command in ("c", "C"):
            return None, True
        if command in ("s", "S"):
            debugger.request_step(1)
            return None, True
        if command == "g":
            return "".join(self._read_register(debugger, r) for r in REGISTERS), False
        if command == "G":
            self._write_registers(debugger, text[1:])
            return "OK", False
        if command == "p":
            number = int(text[1:], 16)
            if number >= len(REGISTERS):
                return "E00", False
            return self._read_register(debugger, REGISTERS[number]), False
        if command == "P":
            number_text, _, value = text[1:].partition("=")
            number = int(number_text, 16)
            if number >= len(REGISTERS):
                return "E00", False
            self._write_register(debugger, REGISTERS[number], bytes.fromhex(value))
            return "OK", False
        if command == "m":
            address, length = (int(part, 16) for part in text[1:].split(","))
            return debugger.read_memory(address, min(length, MAX_MEMORY_REPLY)).hex(), False
        if command == "M":
            where, _, data = text[1:].partition(":")
            address, length = (int(part, 16) for part in where.split(","))
            debugger.write_memory(address, bytes.fromhex(data)[:length])
            return "OK", False
        if command == "X":
            colon = packet.index(b":")
            address, length = (int(part, 16) for part in text[1:colon].split(","))
            if length:
                debugger.write_memory(address, _unescape(packet[colon + 1:])[:length])
            return "OK", False
        if command in ("Z", "z"):
            return self._breakpoint(debugger, command == "Z", text[1:]), False
        if command == "D":
            self._send("OK")
            self._disconnected(debugger)
            return None, True
        if command == "k" or text.startswith("vKill"):
            if command != "k":
                self._send("OK")
            self._kill(debugger)
            return None, True
        return "", False

    def _vcont(self, debugger: Debugger, actions: str) -> tuple[str | None, bool]:
        # One CPU: the first action that applies to it decides (s/S step, c/C continue).
        action = actions.split(";")[0].split(":")[0]
        if action[:1] in ("s", "S"):
            debugger.request_step(1)
            return None, True
        if action[:1] in ("c", "C"):
            return None, True
        return "", False

    def _xfer(self, debugger: Debugger, window: str) -> str:
        offset, length = (int(part, 16) for part in window.split(","))
        if not hasattr(self, "description"):
            real = not x86.protected_mode(debugger.uc)
            self.description = target_description("i8086" if real else "i386")
        chunk = self.description[offset:offset + length]
        more = offset + length < len(self.description)
        return ("m" if more else "l") + chunk

    def _breakpoint(self, debugger: Debugger, insert: bool, arguments: str) -> str:
        kind_text, address_text, size_text = arguments.split(",")[:3]
        kind = int(kind_text)
        address = int(address_text, 16)
        size = int(size_text.split(";")[0], 16)
        if kind in (0, 1):
            if insert:
                debugger.add_breakpoint(address)
            else:
                debugger.remove_breakpoint(address)
            return "OK"
        if kind in WATCH_TYPES:
            if insert:
                debugger.add_watchpoint(address, size, WATCH_TYPES[kind])
            else:
                debugger.remove_watchpoint(address, size, WATCH_TYPES[kind])
            return "OK"
        return ""

    def _stop_reply(self, pause: Pause) -> str:
        if pause.reason == "exit" and pause.result is not None:
            return f"W{pause.result.exit_code & 0xFF:02x}"
        signal = SIGINT if pause.reason == "interrupt" else SIGTRAP
        reply = f"T{signal:02x}thread:01;"
        if pause.reason == "watchpoint" and pause.address is not None:
            reply += f"{WATCH_REPLY[pause.watch_kind or 'w']}:{pause.address:x};"
        return reply

    def _kill(self, debugger: Debugger) -> None:
        from .machine import StopReason
        debugger.machine._request_stop(StopReason.USER_QUIT, "killed by gdb")
        if self.connection is not None:
            self.connection.close()
        self.connection = None

    # --- registers ------------------------------------------------------------------
    def _read_register(self, debugger: Debugger, register: Register) -> str:
        uc = debugger.uc
        size = register.bits // 8
        try:
            if register.source == "zero":
                value = 0
            elif isinstance(register.source, str):
                value = debugger.read_register(register.source)
            elif register.bits == 80:
                mantissa, exponent = uc.reg_read(register.source)
                value = mantissa | exponent << 64
            else:
                value = uc.reg_read(register.source)
        except (UcError, DebugError, x86.DeliveryError):
            return "xx" * size
        return (int(value) & ((1 << register.bits) - 1)).to_bytes(size, "little").hex()

    def _write_register(self, debugger: Debugger, register: Register, raw: bytes) -> None:
        if isinstance(register.source, str):
            return  # segment bases follow the selectors; not writable on their own
        value = int.from_bytes(raw, "little")
        uc = debugger.uc
        try:
            if register.bits == 80:
                uc.reg_write(register.source, (value & (1 << 64) - 1, value >> 64))
            elif register.name in ("cs", "ss", "ds", "es", "fs", "gs"):
                if uc.reg_read(register.source) != value & 0xFFFF:
                    uc.reg_write(register.source, value & 0xFFFF)
            else:
                uc.reg_write(register.source, value)
        except UcError as error:
            raise DebugError(f"{register.name}: {error}") from None

    def _write_registers(self, debugger: Debugger, hex_text: str) -> None:
        raw = bytes.fromhex(hex_text.replace("x", "0"))
        offset = 0
        for register in REGISTERS:
            size = register.bits // 8
            if offset + size > len(raw):
                break
            if register.bits <= 32 and register.source is not None:
                self._write_register(debugger, register, raw[offset:offset + size])
            offset += size
