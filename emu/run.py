"""``emu run``: boot the emulated PC.

Exit status
-----------
* the value the guest wrote to the debug-exit port 0xF4 (so 0 = success; QEMU's
  ``isa-debug-exit`` exits with ``(value << 1) | 1`` for the same write);
* 0 when the guest resets the machine (port 0x92, 0xCF9, the 8042, or the
  deliberate triple fault: an exception with an empty IDT) and ``--reboot`` was
  not given;
* 1 when the machine cannot be built (bad disk, image error, missing BIOS), 2 for
  a usage error;
* 121 internal error, 123 quit from the terminal (Ctrl-A x), 124 ``--timeout``
  expired, 125 halted (HLT with interrupts off, or with nothing armed to wake
  it), 126 triple fault (an exception the IDT cannot deliver) / fetch from
  unmapped memory,
  127 instruction budget (``--max-instructions``) exhausted.

These codes are :data:`emu.machine.EXIT_CODES`.  An abnormal stop prints a
one-screen report (registers, instruction, last ports) on stderr.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

USAGE_ERROR = 2
SETUP_ERROR = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emu run", description="Boot the emulated PC (Unicorn x86, IDE disks on images).")
    parser.add_argument("--disk", action="append", default=[], metavar="FILE[,OPTIONS]",
                        help="IDE disk: FILE[,format=F][,bus=0|1][,unit=0|1][,readonly=on]"
                             "[,snapshot=on]; repeatable (default: the built-in demo disk)")
    parser.add_argument("--bios", metavar="ROM", help="firmware image (default: built-in BIOS)")
    parser.add_argument("--memory", default="128M",
                        help="RAM size, up to 3584M (default 128M, as QEMU)")
    parser.add_argument("--serial", default="stdio", metavar="stdio|file:PATH|null",
                        help="COM1 back end (default stdio; Ctrl-A x quits)")
    parser.add_argument("--debugcon", default="null", metavar="stdio|file:PATH|null",
                        help="ports 0xE9/0x402 debug console back end (default null)")
    parser.add_argument("--snapshot", action="store_true",
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
    parser.add_argument("--reboot", action="store_true",
                        help="on guest reset or triple fault, restart instead of exiting")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) and USAGE_ERROR
    from .console import ChardevError
    from .machine import Machine, MachineConfigError

    with tempfile.TemporaryDirectory(prefix="emu-run-") as scratch:
        disks = list(args.disk)
        if not disks:
            from firmware.demo import make_demo_disk
            demo = Path(scratch) / "demo.vhd"
            make_demo_disk(demo)
            disks = [f"{demo},snapshot=on"]
        try:
            machine = Machine(bios=args.bios, memory=args.memory, disks=disks,
                              serial=args.serial, debugcon=args.debugcon,
                              snapshot=args.snapshot, timeout=args.timeout, trace=args.trace,
                              reboot=args.reboot, max_instructions=args.max_instructions,
                              icount=args.icount or not args.fast)
        except (MachineConfigError, ChardevError) as error:
            print(f"emu run: {error}", file=sys.stderr)
            return SETUP_ERROR
        with machine:
            result = machine.run()
        if result.report:
            sys.stderr.write(("\r\n" if args.serial == "stdio" else "") + result.report)
        return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
