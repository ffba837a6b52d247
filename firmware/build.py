"""Assemble the firmware with NASM: ``python -m firmware.build [--check] [--out DIR]``.

Each program is one NASM source assembled as a flat binary beside it (``bios.asm`` ->
``bios.bin``).  NASM's flat output holds no timestamps or paths, so the same sources
always give the same bytes; ``--check`` rebuilds into a temporary directory and fails
(exit 1) when a committed binary differs from what its source builds to.  CI runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FIRMWARE_DIR = Path(__file__).resolve().parent

# program -> expected binary size (None: any).  The BIOS and test ROMs are 64 KiB images
# mapped at F0000h; the demo program is one boot sector.
PROGRAMS: dict[str, int | None] = {
    "bios": 0x10000,
    "demo": 512,
    "atatest": 0x10000,
    "atapitest": 0x10000,
}


class BuildError(Exception):
    """NASM is missing or rejected a source, or a binary has the wrong size."""


def nasm() -> str:
    found = shutil.which("nasm")
    if found is None:
        raise BuildError("nasm is not installed (Debian: apt-get install nasm)")
    return found


def sources() -> dict[str, Path]:
    """The programs whose sources are present, by name."""
    return {name: FIRMWARE_DIR / f"{name}.asm" for name in PROGRAMS
            if (FIRMWARE_DIR / f"{name}.asm").is_file()}


def assemble(name: str, source: Path, out_dir: Path) -> Path:
    """Assemble one program; the binary is replaced only once NASM succeeded."""
    output = out_dir / f"{name}.bin"
    partial = out_dir / f".{name}.bin.partial"
    # -I makes %include resolve beside the source whatever the working directory is
    proc = subprocess.run(
        [nasm(), "-f", "bin", "-w+all", "-I", f"{source.parent}/", "-o", str(partial),
         str(source)],
        capture_output=True, text=True, cwd=source.parent)
    if proc.returncode != 0:
        partial.unlink(missing_ok=True)
        raise BuildError(f"nasm failed on {source.name}:\n{proc.stderr}")
    expected = PROGRAMS[name]
    size = partial.stat().st_size
    if expected is not None and size != expected:
        partial.unlink()
        raise BuildError(f"{output.name} would be {size} bytes, expected {expected}")
    partial.replace(output)
    return output


def build(out_dir: Path = FIRMWARE_DIR, names: list[str] | None = None) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = sources()
    if names:
        unknown = sorted(set(names) - set(wanted))
        if unknown:
            raise BuildError(f"unknown program(s) {', '.join(unknown)} (known: "
                             f"{', '.join(wanted)})")
        wanted = {name: wanted[name] for name in names}
    return [assemble(name, source, out_dir) for name, source in wanted.items()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def check(names: list[str] | None = None) -> list[str]:
    """Rebuild into a temporary directory; the problems found (empty when all match)."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="emu-firmware-") as tmp:
        for built in build(Path(tmp), names):
            committed = FIRMWARE_DIR / built.name
            if not committed.is_file():
                problems.append(f"{built.name}: not built (run python -m firmware.build)")
            elif committed.read_bytes() != built.read_bytes():
                problems.append(f"{built.name}: committed {digest(committed)} differs from "
                                f"the source's {digest(built)} (run python -m firmware.build)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m firmware.build", description=__doc__)
    parser.add_argument("--check", action="store_true",
                        help="fail when a committed binary differs from its source's build")
    parser.add_argument("--out", type=Path, default=FIRMWARE_DIR,
                        help="directory for the binaries (default: the firmware package)")
    parser.add_argument("programs", nargs="*", metavar="PROGRAM",
                        help=f"programs to build (default: all of {', '.join(PROGRAMS)})")
    args = parser.parse_args(argv)
    try:
        if args.check:
            problems = check(args.programs)
            for problem in problems:
                print(problem, file=sys.stderr)
            if not problems:
                print("firmware binaries match their sources")
            return 1 if problems else 0
        for output in build(args.out, args.programs):
            print(f"{output}  {digest(output)}")
    except BuildError as error:
        print(f"firmware.build: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
