"""``emu run``'s command line: QEMU's spellings map onto the Machine's options, malformed
options are usage errors (exit 2, one line), friendlier stops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import emu.machine
from emu import run
from emu.machine import EXIT_NO_BOOT, RunResult, StopReason


class FakeMachine:
    """Stands in for Machine: records its options, runs to a clean exit."""

    seen: dict[str, Any] = {}

    def __init__(self, **options: Any) -> None:
        FakeMachine.seen = options

    def __enter__(self) -> FakeMachine:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def run(self) -> RunResult:
        return RunResult(0, StopReason.DEBUG_EXIT, "", b"", b"", 0, 0)


class FakeDebugMachine(FakeMachine):
    def __init__(self, *, gdb: str | None = None, start_stopped: bool = False,
                 **options: Any) -> None:
        super().__init__(gdb=gdb, start_stopped=start_stopped, **options)
        # -S needs a front end to start the CPU: gdb's stub here
        self.debugger = SimpleNamespace(front_end="gdb") if gdb else None


def options_for(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                machine: type = FakeMachine) -> dict[str, Any]:
    monkeypatch.setattr(emu.machine, "Machine", machine)
    assert run.main(argv) == 0
    return FakeMachine.seen


@pytest.mark.parametrize("argv, expected", [
    (["-m", "128"], {"memory": "128M"}),
    (["-m", "1G"], {"memory": "1G"}),
    (["-m", "size=32"], {"memory": "32M"}),
    (["--memory", "64M"], {"memory": "64M"}),
    (["-hda", "a.vdi", "-hdd", "d.vhd"],
     {"disks": ["a.vdi,bus=0,unit=0", "d.vhd,bus=1,unit=1"]}),
    (["-drive", "file=a.img,format=vdi,if=ide,index=3,media=disk,readonly=on,snapshot=on,"
                "werror=stop,rerror=ignore"],
     {"disks": ["a.img,format=vdi,readonly=on,snapshot=on,werror=stop,rerror=ignore,"
                "bus=1,unit=1"]}),
    (["-drive", "file=b.img,bus=1,unit=0", "--disk", "c.img", "-hda", "a.img"],
     {"disks": ["a.img,bus=0,unit=0", "b.img,bus=1,unit=0", "c.img"]}),
    (["-drive", "file=b.img,faults=plan.toml,werror=report"],
     {"disks": ["b.img,faults=plan.toml,werror=report"]}),
    (["-bios", "rom.bin", "-serial", "file:com1.txt", "-debugcon", "stdio", "-snapshot",
      "-nographic"],
     {"bios": "rom.bin", "serial": "file:com1.txt", "debugcon": "stdio", "snapshot": True}),
    (["-serial", "none"], {"serial": "null"}),
    (["--reboot"], {"reboot": True}),
    (["--reboot", "-no-reboot"], {"reboot": False}),
    (["--io-log", "io.jsonl"], {"io_log": "io.jsonl"}),
    (["-cdrom", "cd.iso", "-boot", "d"], {"cdrom": "cd.iso", "boot": "d"}),
    (["-drive", "file=cd.iso,media=cdrom,index=2"],
     {"disks": ["cd.iso,media=cdrom,bus=1,unit=0"]}),
])
def test_qemu_spellings(argv: list[str], expected: dict[str, Any],
                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen = options_for(argv, monkeypatch)
    assert {key: seen[key] for key in expected} == expected


@pytest.mark.parametrize("argv, expected", [
    (["-s"], {"gdb": "tcp::1234", "start_stopped": False}),
    (["-s", "-S"], {"gdb": "tcp::1234", "start_stopped": True}),
    (["-gdb", "tcp::5555", "-S"], {"gdb": "tcp::5555", "start_stopped": True}),
    (["--gdb", "tcp:127.0.0.1:4444"], {"gdb": "tcp:127.0.0.1:4444"}),
])
def test_gdb_spellings_reach_the_debug_options(argv: list[str], expected: dict[str, Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen = options_for(argv, monkeypatch, FakeDebugMachine)
    assert {key: seen[key] for key in expected} == expected


@pytest.mark.parametrize("argv, message", [
    (["--disk", "x,bus=3"], "bad value for bus"),
    (["--disk", "x,werror=sometimes"], "bad value for werror"),
    (["--disk", "x,rerror=enospc"], "bad value for rerror"),
    (["--disk", "x,colour=red"], "unknown option 'colour=red'"),
    (["-drive", "file=x,if=scsi"], "if=scsi: only if=ide exists"),
    (["-drive", "file=x,index=4"], "index=4: must be 0-3"),
    (["-drive", "file=x,media=floppy"], "media=floppy: must be disk or cdrom"),
    (["-drive", "format=raw"], "no file="),
    (["-drive", "file=x,index=1,bus=0"], "index= and bus=/unit= together"),
    (["--memory", "12Q"], "is not a size"),
    (["--no-such-option"], ""),
])
def test_usage_errors_exit_2_with_one_line(argv: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main([*argv, "--serial", "null"]) == 2
    err = capsys.readouterr().err
    assert message in err
    if message:
        assert err.count("\n") == 1 and err.startswith("emu run: ")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("emu 0.1.0")


def emu_run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "emu", "run", *argv], capture_output=True,
                          text=True, timeout=120, cwd=cwd, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("bios, line", [
    ("ours", "No bootable device."),
    ("seabios", "No bootable device."),
])
def test_empty_disk_stops_with_the_bios_line(tmp_path: Path, bios: str, line: str) -> None:
    from emu.pytest_plugin import resolve_bios
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    proc = emu_run("-hda", str(empty), "-bios", str(resolve_bios(bios)), "-serial", "null",
                   "--timeout", "60", cwd=tmp_path)
    assert proc.returncode == EXIT_NO_BOOT
    assert proc.stderr == f"emu: stopped: the BIOS found nothing to boot: {line}\n"


def test_a_text_file_as_disk_is_warned_about(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("remember to buy milk\n" * 40)
    proc = emu_run("-hda", str(notes), "-serial", "null", "--timeout", "60", cwd=tmp_path)
    assert proc.returncode == EXIT_NO_BOOT
    warning, stop = proc.stderr.splitlines()
    assert warning == (f"emu: warning: {notes}: probed as raw, but it looks like a text file, "
                       "not a disk image (give format=raw to silence this)")
    assert stop.startswith("emu: stopped: the BIOS found nothing to boot")
    quiet = emu_run("--disk", f"{notes},format=raw", "-serial", "null", cwd=tmp_path)
    assert "warning" not in quiet.stderr


def test_a_bad_fault_plan_is_one_line_naming_the_field(tmp_path: Path) -> None:
    disk = tmp_path / "d.img"
    disk.write_bytes(bytes(1 << 20))
    plan = tmp_path / "plan.toml"
    plan.write_text('[[errors]]\nkind = "unc"\nlba = "ten"\n')
    proc = emu_run("--disk", f"{disk},faults={plan}", "-serial", "null", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr == (f"emu run: --disk {disk}: faults={plan}: errors[0].lba: "
                           "expected an integer >= 0, got 'ten'\n")
