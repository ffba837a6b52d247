"""``--trace FILE``: every instruction (Capstone) and every port access, one per line.

Installed only when asked for: a Python hook per instruction costs about a
thousand times the instruction, so a normal run has none.  The format is
stable and deterministic (no host times), so two runs can be compared by hash.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from capstone import CS_ARCH_X86, CS_MODE_16, CS_MODE_32, Cs
from unicorn import x86_const as X

from . import x86


class Tracer:
    def __init__(self, path: Path) -> None:
        self.file = open(path, "w", buffering=1 << 20)  # noqa: SIM115 (closed in close())
        self.engines = {False: Cs(CS_ARCH_X86, CS_MODE_16), True: Cs(CS_ARCH_X86, CS_MODE_32)}

    def on_instruction(self, uc: Any, address: int, size: int, _: Any) -> None:
        code = x86.peek_linear(uc, address, size) or b""
        bits32 = x86.code_is_32bit(uc)
        text = "(undecodable)"
        for instruction in self.engines[bits32].disasm(code, address, 1):
            text = f"{instruction.mnemonic} {instruction.op_str}".rstrip()
        cs = uc.reg_read(X.UC_X86_REG_CS)
        eip = uc.reg_read(X.UC_X86_REG_EIP)
        self.file.write(f"{address:08x} {cs:04x}:{eip:08x} {code.hex():<16} {text}\n")

    def on_port(self, kind: str, port: int, size: int, value: int) -> None:
        if kind in ("ins", "outs"):
            self.file.write(f"io {kind} {port:#06x}/{size} x{value}\n")
        else:
            self.file.write(f"io {kind} {port:#06x}/{size} {value:#x}\n")

    def note(self, text: str) -> None:
        """A machine event (interrupt delivered, exception) between instructions."""
        self.file.write(f"-- {text}\n")

    def close(self) -> None:
        self.file.close()
