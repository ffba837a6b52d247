"""Independent implementations the tests compare against (qemu-img, qemu-io, libvhdi, libvmdk)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from conftest import need_tool


def run(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a tool, capturing text output; raise with its output when it fails."""
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def qemu_img(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run(need_tool("qemu-img"), *args, check=check)


def qemu_img_info(path: Path, fmt: str | None = None) -> dict[str, Any]:
    extra = ["-f", fmt] if fmt else []
    return json.loads(qemu_img("info", "--output", "json", *extra, path).stdout)


def qemu_io(path: Path, fmt: str, *commands: str) -> str:
    """Run qemu-io commands (e.g. 'write -P 0x41 0 64k') on an image; returns stdout."""
    argv: list[str | Path] = ["-f", fmt]
    for command in commands:
        argv += ["-c", command]
    proc = run(need_tool("qemu-io"), *argv, path)
    if "error" in proc.stdout.lower() or "failed" in proc.stdout.lower():
        raise AssertionError(f"qemu-io reported a failure: {proc.stdout}")
    return proc.stdout


def qemu_to_raw(path: Path, fmt: str, out: Path) -> bytes:
    """The image's contents as qemu-img sees them."""
    qemu_img("convert", "-f", fmt, "-O", "raw", path, out)
    return out.read_bytes()
