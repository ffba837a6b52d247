"""Whole runs with faults: the I/O log, plan files on the command line, a full host disk
under each werror policy, and a power cut that leaves the image as a crash would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import need_tool
from guests import HEX_OUTPUT
from test_fault_guests import GUEST, tagged_disk

import disks
from devices.ata import DF, ERROR_IDNF, ERROR_UNC
from emu.machine import EXIT_IO_ERROR, EXIT_POWER_CUT, Machine, StopReason
from emu.pytest_plugin import firmware_file

SECTOR = 512
PLAN = """\
[[errors]]
kind = "unc"
lba = 4
[[errors]]
kind = "idnf"
lba = [6, 7]
[[errors]]
kind = "write"
lba = 8
[[errors]]
kind = "unc"
lba = 10
times = 2
"""


def emu_run(*argv: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emu", "run", *argv], capture_output=True,
                          text=True, timeout=120, cwd=cwd, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


@pytest.fixture
def guest_disk(tmp_path: Path, nasm) -> Path:
    return tagged_disk(tmp_path, nasm.boot_sector(GUEST % HEX_OUTPUT))


def test_io_log_records_every_command_with_its_outcome(tmp_path: Path, guest_disk: Path) -> None:
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    log = tmp_path / "io.jsonl"
    proc = emu_run("--disk", f"{guest_disk},format=raw,faults={plan}", "--io-log", str(log),
                   "-serial", "null", "-debugcon", f"file:{tmp_path / 'dbg.txt'}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""                      # injected faults are not host errors
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert all(entry["drive"] == 0 for entry in entries)
    times = [entry["time_ns"] for entry in entries]
    assert times == sorted(times) and times[-1] > 0
    # The BIOS's own probe comes first (IDENTIFY), then the boot sector's load.
    assert entries[0]["command"] == "IDENTIFY DEVICE" and entries[0]["result"] == "ok"
    transfers = [(e["opcode"], e["lba"], e["count"], e["result"], e["error"], e.get("error_lba"))
                 for e in entries if e["lba"] is not None]
    assert transfers == [
        (0x20, 0, 1, "ok", 0, None),                          # INT 19h loads the boot sector
        (0x20, 2, 4, "error", ERROR_UNC, 4),
        (0x20, 6, 1, "error", ERROR_IDNF, 6),
        (0x30, 8, 1, "error", 0x04, 8),
        (0x20, 10, 1, "error", ERROR_UNC, 10),
        (0x20, 10, 1, "error", ERROR_UNC, 10),
        (0x20, 10, 1, "ok", 0, None)]
    write = next(e for e in entries if e["opcode"] == 0x30)
    assert write["status"] & DF and write["command"] == "WRITE SECTORS"


# emu run with every image write failing as on a full file system (os.pwritev: ENOSPC).
ENOSPC_WRAPPER = """
import errno, os, sys
def full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
os.pwritev = full
from emu.run import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("policy, exit_code, outcome, ah", [
    ("enospc", EXIT_IO_ERROR, "stopped", None),      # QEMU's default
    ("stop", EXIT_IO_ERROR, "stopped", None),
    ("report", 0, "reported to the guest", "03"),
    ("ignore", 0, "ignored", "00"),
])
def test_full_host_disk_prints_one_line_whatever_the_policy(
        tmp_path: Path, guest_disk: Path, policy: str, exit_code: int, outcome: str,
        ah: str | None) -> None:
    debugcon = tmp_path / "dbg.txt"
    proc = subprocess.run(
        [sys.executable, "-c", ENOSPC_WRAPPER, "--disk",
         f"{guest_disk},format=raw,werror={policy}", "-serial", "null",
         "-debugcon", f"file:{debugcon}", "--timeout", "60"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == exit_code, proc.stderr
    write_error = (f"{guest_disk}: write at {8 * SECTOR}: No space left on device")
    assert proc.stderr == (f"emu: drive 0: write at LBA 8 failed: {write_error} "
                           f"(werror={policy}: {outcome})\n")
    lines = debugcon.read_text().splitlines()
    if ah is None:
        assert len(lines) == 2                       # the run stopped inside the write
    else:
        assert lines[2].startswith(ah)


WRITER = r"""
    xor ax, ax
    mov ds, ax
    mov es, ax
    cld
    mov [drive], dl
    mov bx, 1
.next:
    mov di, 0x8000
    mov al, bl
    mov cx, 512
    rep stosb                   ; sector n is filled with the byte n
    mov [dap_lba], bx
    mov word [dap + 2], 1       ; a failed call leaves the count it managed (0) here
    mov si, dap
    mov ax, 0x4300
    mov dl, [drive]
    int 0x13
    inc bx
    cmp bx, 6
    jb .next
    xor al, al
    out 0xF4, al
    cli
    hlt
drive: db 0
dap: db 16, 0
    dw 1, 0x8000, 0
dap_lba: dq 0
"""


@pytest.mark.parametrize("fmt", ["raw", "vdi", "vpc", "vmdk", "vhdx"])
def test_power_cut_keeps_exactly_the_writes_before_it(tmp_path: Path, nasm, fmt: str) -> None:
    path = tmp_path / f"disk.{fmt}"
    with disks.create(path, fmt, 8 << 20) as image:
        image.write(0, nasm.boot_sector(WRITER))
    with Machine(bios=firmware_file("bios.bin"), disks=[f"{path},format={fmt}"],
                 timeout=60) as machine:
        # The drive's write cache off: every completed write is durable (with the cache
        # on, unflushed writes may be lost).
        machine.drive(0).write_cache = False
        machine.drive(0).faults.power_cut(after_writes=3)
        result = machine.run()
    assert result.reason is StopReason.POWER_CUT and result.exit_code == EXIT_POWER_CUT
    assert result.messages == [f"drive 0 ({path}): power cut after write 3 (fault plan)"]
    with disks.open(path, format=fmt, readonly=True) as image:
        sectors = [image.read(lba * SECTOR, SECTOR) for lba in range(1, 6)]
    # Writes 1 and 2 completed (durable: no write cache); the cut came while write 3 was
    # in flight, so it may be there or not, as after a real power loss.
    assert sectors[:2] == [bytes([1]) * SECTOR, bytes([2]) * SECTOR]
    assert sectors[2] in (bytes([3]) * SECTOR, bytes(SECTOR))
    assert sectors[3:] == [bytes(SECTOR)] * 2
    if fmt == "raw":                                 # written in place: nothing to lose
        assert sectors[2] == bytes([3]) * SECTOR
    if fmt == "raw":
        return
    qemu_img = need_tool("qemu-img")
    copy = tmp_path / "qemu.raw"                     # what QEMU reads in the image
    subprocess.run([qemu_img, "convert", "-f", fmt, "-O", "raw", str(path), str(copy)],
                   check=True, capture_output=True)
    seen_by_qemu = copy.read_bytes()[SECTOR:6 * SECTOR]
    if fmt == "vpc":
        # QEMU ignores a VHD's sector bitmaps: the in-flight sector 3 may be in its block
        # but not yet marked present, which emu (reading the bitmap) shows as unwritten.
        seen_by_qemu = seen_by_qemu[:2 * SECTOR] + sectors[2] + seen_by_qemu[3 * SECTOR:]
    assert seen_by_qemu == b"".join(sectors)
    if fmt != "vpc":                                 # qemu-img has no check for vpc
        check = subprocess.run([qemu_img, "check", "-f", fmt, str(path)],
                               capture_output=True, text=True)
        assert check.returncode in (0, 3), check.stdout + check.stderr   # leaks allowed


def test_power_cut_from_a_plan_file_on_the_command_line(tmp_path: Path, nasm) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(nasm.boot_sector(WRITER) + bytes(8 << 20))
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"power_cut_after_writes": 2}))
    log = tmp_path / "io.jsonl"
    proc = emu_run("--disk", f"{disk},format=raw,faults={plan}", "-serial", "null",
                   "--io-log", str(log), cwd=tmp_path)
    assert proc.returncode == EXIT_POWER_CUT
    assert proc.stderr == f"emu: drive 0 ({disk}): power cut after write 2 (fault plan)\n"
    writes = [json.loads(line) for line in log.read_text().splitlines()
              if json.loads(line)["opcode"] == 0x30]
    assert [(entry["lba"], entry["result"]) for entry in writes] == [(1, "ok"), (2, "power-cut")]
    data = disk.read_bytes()
    assert data[SECTOR:3 * SECTOR] == bytes([1]) * SECTOR + bytes([2]) * SECTOR
    assert data[3 * SECTOR:4 * SECTOR] == bytes(SECTOR)


def test_python_api_one_liner(tmp_path: Path, guest_disk: Path) -> None:
    """The pytest way: ``machine.drive(0).faults.unreadable(lba)`` and run."""
    with Machine(disks=[f"{guest_disk},format=raw"], timeout=60) as machine:
        machine.drive(0).faults.unreadable(6)
        result = machine.run()
    lines: list[Any] = result.debugcon_text.splitlines()
    assert lines[1] == "10100;"                      # AH=10h (UNC), CF=1, nothing read


def test_repeated_host_errors_print_once_then_a_count(tmp_path: Path, nasm,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(nasm.boot_sector(WRITER) + bytes(1 << 20))
    printed: list[str] = []
    with Machine(bios=firmware_file("bios.bin"), disks=[f"{disk},format=raw,werror=report"],
                 timeout=60, message_hook=printed.append) as machine:
        def full(*args: object) -> int:
            raise OSError(28, os.strerror(28))
        monkeypatch.setattr(os, "pwritev", full)
        result = machine.run()
        monkeypatch.undo()
    assert result.exit_code == 0                       # report: the guest saw the errors
    assert printed == result.messages == [
        f"drive 0: write at LBA 1 failed: {disk}: write at {SECTOR}: {os.strerror(28)} "
        "(werror=report: reported to the guest)",
        "drive 0: 4 more write errors after the first (werror=report)"]


def test_plugin_fixture_takes_a_plan_in_every_format(nasm, disk_image, disk_format,
                                                     emu_machine) -> None:
    """The README's way, with a fault: ``emu_machine(image, faults={0: plan})``."""
    boot = nasm.boot_sector(GUEST % HEX_OUTPUT)
    image = disk_image(disk_format, "8M",
                       content={0: boot, **{lba * SECTOR: bytes([0x40 + lba]) * SECTOR
                                            for lba in range(1, 12)}})
    run = emu_machine(image, faults={0: {"errors": [{"kind": "unc", "lba": [3, 4]}]}})
    assert run.exit_code == 0, str(run)
    assert run.debugcon.splitlines()[0] == "10101;B\0\0"      # LBA 2 arrived, then UNC at 3
    failed = [entry for entry in run.io_log if entry["result"] == "error"]
    assert [(entry["lba"], entry["error_lba"]) for entry in failed] == [(2, 3)]
