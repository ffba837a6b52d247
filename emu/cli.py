"""The ``emu`` command: ``emu img ...`` (disk images) and ``emu run ...`` (the machine)."""

from __future__ import annotations

import sys
import warnings

USAGE = """usage: emu {img,run} ...

  emu img VERB ...   create, info, check, convert, map, compare disk images
  emu run [OPTIONS]  boot the emulated PC (see emu run --help)
"""


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str,
                      lineno: int, line: str | None = None) -> str:
    """Warnings on the command line read like its errors: one line, no source location."""
    return f"emu: warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = _one_line_warning
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 1
    verb, rest = args[0], args[1:]
    if verb == "img":
        from .img import main as img_main
        return img_main(rest)
    if verb == "run":
        from .run import main as run_main  # imports Unicorn only when a machine is wanted
        return run_main(rest)
    print(f"emu: unknown command {verb!r}\n{USAGE}", end="", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
