"""``emu run``: boot the emulated PC.

Exit status
-----------
* the value the guest wrote to the debug-exit port 0xF4 (so 0 = success; QEMU's
  ``isa-debug-exit`` exits with ``(value << 1) | 1`` for the same write);
* 0 when the guest resets the machine (port 0x92, 0xCF9, the 8042, or the
  deliberate triple fault: an exception with an empty IDT) and ``--reboot`` was
  not given;
* 1 when the machine cannot be built (bad disk, image error, missing BIOS), 2 for
  a usage error (a malformed option, ``--disk x,bus=3``);
* 119 a fault plan cut the power, 120 the BIOS found nothing to boot (its "No
  bootable device/disk" line ends the run), 122 stopped on a disk I/O error
  (``werror``/``rerror=stop``; ``werror=enospc``, the default, on a full host disk),
* 121 internal error, 123 quit (Ctrl-A x, the monitor's ``quit``, gdb's ``kill``),
  124 ``--timeout``
  expired, 125 halted (HLT with interrupts off, or with nothing armed to wake
  it), 126 triple fault (an exception the IDT cannot deliver) / fetch from
  unmapped memory,
  127 instruction budget (``--max-instructions``) exhausted.

These codes are :data:`emu.machine.EXIT_CODES`.  An abnormal stop prints a
one-screen report (registers, instruction, last ports) on stderr; every disk I/O
error prints one line there, whatever the policy.

QEMU's spellings are accepted for what emu has: ``-m`` (a bare number is MiB),
``-hda``..``-hdd``, ``-drive file=,format=,if=ide,index=,media=disk|cdrom,readonly=,
snapshot=,werror=,rerror=``, ``-bios``, ``-serial``, ``-debugcon``, ``-snapshot``,
``-no-reboot``, ``-nographic`` (accepted: the serial port is on the terminal by
default), ``-s``/``-S``/``-gdb`` (for the gdb stub) and ``--version``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

USAGE_ERROR = 2
SETUP_ERROR = 1
DRIVE_POSITIONS = 4                       # -hda .. -hdd, -drive index=0..3
GDB_DEFAULT = "tcp::1234"                 # QEMU's -s


class _Usage(Exception):
    """A malformed QEMU-style option: one line, exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emu run", description="Boot the emulated PC (Unicorn x86, IDE disks on images).")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--disk", action="append", default=[], metavar="FILE[,OPTIONS]",
                        help="IDE disk: FILE[,format=F][,bus=0|1][,unit=0|1][,readonly=on]"
                             "[,snapshot=on][,media=cdrom][,faults=PLAN]"
                             "[,werror=report|ignore|stop|enospc][,rerror=report|ignore|stop]; "
                             "repeatable (default: the built-in demo disk); media=cdrom makes an "
                             "ATAPI CD/DVD drive (an empty FILE: no disc)")
    parser.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                        help="let disk images name parents and extents in DIR too "
                             "(repeatable; by default only the folders of each image chain)")
    parser.add_argument("--cdrom", "-cdrom", metavar="FILE",
                        help="CD/DVD image (ISO 9660) in an ATAPI drive at the secondary master")
    parser.add_argument("--boot", "-boot", default="cd", metavar="[order=]LETTERS",
                        help="boot order, up to three of c (first hard disk), d (CD-ROM), "
                             "a (floppy), n (network), as QEMU (default cd)")
    parser.add_argument("--bios", "-bios", metavar="ROM",
                        help="firmware image (default: built-in BIOS)")
    parser.add_argument("--memory", "-m", default="128M",
                        help="RAM size, up to 3584M (default 128M as QEMU; -m 128 means 128 MiB "
                             "as in QEMU)")
    parser.add_argument("--serial", "-serial", default="stdio", metavar="stdio|file:PATH|null",
                        help="COM1 back end (default stdio; Ctrl-A x quits)")
    parser.add_argument("--debugcon", "-debugcon", default="null",
                        metavar="stdio|file:PATH|null",
                        help="ports 0xE9/0x402 debug console back end (default null)")
    parser.add_argument("--snapshot", "-snapshot", action="store_true",
                        help="write to temporary overlays; leave every image unmodified")
    parser.add_argument("--timeout", type=float, metavar="SEC",
                        help="stop after SEC seconds of wall time (exit 124)")
    parser.add_argument("--max-instructions", type=int, metavar="N",
                        help="stop after N instructions (exit 127; implies --icount)")
    parser.add_argument("--trace", metavar="FILE",
                        help="write an instruction and port trace (implies --icount)")
    parser.add_argument("--icount", action="store_true",
                        help="deterministic mode (the default): count instructions and "
                             "derive time from them; same inputs, same run")
    parser.add_argument("--fast", action="store_true",
                        help="EXPERIMENTAL: guest code at JIT speed on wall time, like QEMU "
                             "without -icount (about 10x faster, not repeatable; known to "
                             "corrupt some guests' disk reads, see emu.machine)")
    parser.add_argument("--io-log", metavar="FILE",
                        help="write one JSON line per ATA command (drive, opcode, LBA, count, "
                             "result, virtual time)")
    parser.add_argument("--reboot", action="store_true",
                        help="on guest reset or triple fault, restart instead of exiting")
    qemu = parser.add_argument_group("QEMU spellings")
    for index, name in enumerate(("-hda", "-hdb", "-hdc", "-hdd")):
        qemu.add_argument(name, dest=f"hd{index}", metavar="FILE",
                          help=f"disk at IDE position {index}" if index == 0 else argparse.SUPPRESS)
    qemu.add_argument("-drive", action="append", default=[], metavar="OPTIONS",
                      help="file=F[,format=][,if=ide][,index=0-3][,bus=][,unit=][,media=disk|cdrom]"
                           "[,readonly=][,snapshot=][,werror=][,rerror=][,faults=]")
    qemu.add_argument("-no-reboot", dest="no_reboot", action="store_true",
                      help="exit on guest reset (the default unless --reboot)")
    qemu.add_argument("-nographic", action="store_true",
                      help="accepted (there is no display; COM1 is on the terminal)")
    # The gdb stub (Machine options of branch `debug`): -s = -gdb tcp::1234, -S = stopped.
    qemu.add_argument("--gdb", "-gdb", metavar="tcp::PORT", help="gdb remote stub endpoint")
    qemu.add_argument("-s", dest="gdb_default", action="store_true",
                      help="shorthand for -gdb tcp::1234")
    qemu.add_argument("-S", dest="start_stopped", action="store_true",
                      help="do not start the CPU until the debugger says so")
    return parser


def _split_options(text: str) -> list[str]:
    """QEMU's option list: commas separate, a doubled comma is a literal one."""
    parts, current, index = [], [], 0
    while index < len(text):
        char = text[index]
        if char == ",":
            if text[index + 1:index + 2] == ",":
                current.append(",")
                index += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


# -drive key -> DiskSpec field (values checked by DiskSpec's own parsers).
DRIVE_KEYS = {"file": "path", "format": "format", "bus": "bus", "unit": "unit",
              "readonly": "readonly", "snapshot": "snapshot", "werror": "werror",
              "rerror": "rerror", "faults": "faults"}


def drive_to_disk(text: str) -> str:
    """``-drive file=F,if=ide,index=N,...`` as the equivalent ``--disk`` text."""
    fields: dict[str, str] = {}
    index: int | None = None
    for option in _split_options(text):
        key, sep, value = option.partition("=")
        if not sep:
            raise _Usage(f"-drive {text!r}: expected key=value, got {option!r}")
        if key == "if":
            if value != "ide":
                raise _Usage(f"-drive {text!r}: if={value}: only if=ide exists")
        elif key == "media":
            if value not in ("disk", "cdrom"):
                raise _Usage(f"-drive {text!r}: media={value}: must be disk or cdrom")
            if value != "disk":
                fields["media"] = value
        elif key == "index":
            if not value.isdigit() or int(value) >= DRIVE_POSITIONS:
                raise _Usage(f"-drive {text!r}: index={value}: must be 0-3")
            index = int(value)
        elif key in DRIVE_KEYS:
            fields[key] = value
        else:
            raise _Usage(f"-drive {text!r}: unknown option {key!r}")
    path = fields.pop("file", "")
    if not path:
        raise _Usage(f"-drive {text!r}: no file=")
    if "," in path:
        raise _Usage(f"-drive {text!r}: file names with commas are not supported")
    if index is not None:
        if "bus" in fields or "unit" in fields:
            raise _Usage(f"-drive {text!r}: index= and bus=/unit= together")
        fields["bus"], fields["unit"] = str(index // 2), str(index % 2)
    return ",".join([path, *(f"{key}={value}" for key, value in fields.items())])


def memory_size(value: str) -> str:
    """QEMU's -m: a bare number is MiB (``size=`` prefix allowed)."""
    value = value.removeprefix("size=")
    return value + "M" if value.isdigit() else value


def collect_disks(args: argparse.Namespace) -> list[str]:
    """Every disk option as --disk text; positioned ones (-hdX, index=) first, so that
    disks without a position fill the places left."""
    placed: list[str] = []
    for index in range(DRIVE_POSITIONS):
        path = getattr(args, f"hd{index}")
        if path is not None:
            if "," in path:
                raise _Usage(f"-hd{'abcd'[index]} {path!r}: file names with commas are not "
                             "supported")
            placed.append(f"{path},bus={index // 2},unit={index % 2}")
    others = list(args.disk)
    for text in args.drive:
        disk = drive_to_disk(text)
        (placed if ",bus=" in disk and ",unit=" in disk else others).append(disk)
    return placed + others


def debugger_options(args: argparse.Namespace) -> dict[str, Any]:
    """-s/-S/-gdb as Machine options (emu.gdbstub, emu.debugger)."""
    options: dict[str, Any] = {}
    if args.gdb or args.gdb_default:
        options["gdb"] = args.gdb or GDB_DEFAULT
    if args.start_stopped:
        options["start_stopped"] = True
    return options


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as package_version
    try:
        return package_version("emu")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and USAGE_ERROR
    if args.version:
        print(f"emu {version()} (QEMU-style machine on Unicorn)")
        return 0
    try:
        disk_texts = collect_disks(args)
        debug = debugger_options(args)
    except _Usage as error:
        print(f"emu run: {error}", file=sys.stderr)
        return USAGE_ERROR
    from .console import ChardevError
    from .machine import Machine, MachineConfigError, UsageError

    if args.serial == "none":             # QEMU's spelling of no serial port
        args.serial = "null"
    on_terminal = args.serial == "stdio"

    def message(line: str) -> None:
        # A raw terminal needs its own carriage return.
        print(("\r\n" if on_terminal else "") + f"emu: {line}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="emu-run-") as scratch:
        if not disk_texts and args.cdrom is None:
            from firmware.demo import make_demo_disk
            demo = Path(scratch) / "demo.vhd"
            make_demo_disk(demo)
            disk_texts = [f"{demo},snapshot=on"]
        try:
            machine = Machine(bios=args.bios, memory=memory_size(args.memory), disks=disk_texts,
                              serial=args.serial, debugcon=args.debugcon,
                              snapshot=args.snapshot, timeout=args.timeout, trace=args.trace,
                              reboot=args.reboot and not args.no_reboot,
                              max_instructions=args.max_instructions, io_log=args.io_log,
                              message_hook=message, allow_paths=args.allow_path,
                              cdrom=args.cdrom, boot=args.boot,
                              icount=args.icount or not args.fast, **debug)
        except UsageError as error:
            print(f"emu run: {error}", file=sys.stderr)
            return USAGE_ERROR
        except (MachineConfigError, ChardevError) as error:
            print(f"emu run: {error}", file=sys.stderr)
            return SETUP_ERROR
        if args.start_stopped and (machine.debugger is None or
                                   machine.debugger.front_end is None):
            machine.close()
            print("emu run: -S needs --gdb (or the monitor: --serial stdio on a terminal) "
                  "to start the CPU", file=sys.stderr)
            return USAGE_ERROR
        with machine:
            result = machine.run()
        if result.report:
            sys.stderr.write(("\r\n" if on_terminal else "") + result.report)
        return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
