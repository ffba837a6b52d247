"""The emu pytest plugin as a user meets it: a test file run by plain pytest.

The example below is the README's; it is run here in a child pytest (the plugin
loads through its ``pytest11`` entry point) for two formats, under xdist, with the
format option, and without nasm (skips, or fails under CI=true).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import disks
from emu.pytest_plugin import DISK_FORMATS, make_disk_image

README_EXAMPLE = '''
def test_boot_sector_reads_its_disk(nasm, disk_image, disk_format, emu_machine):
    boot = nasm.boot_sector("""
        xor ax, ax
        mov ds, ax
        mov si, packet          ; INT 13h AH=42h: LBA 1 -> 0000:8000 (DL = boot drive)
        mov ah, 0x42
        int 0x13
        mov al, 1
        jc done                 ; exit status 1: the read failed
        mov al, [0x8000]
        out 0xE9, al            ; the sector's first byte -> debug console
        mov al, 0
    done:
        out 0xF4, al            ; debug exit: the run's exit code
        hlt
    packet: db 16, 0
        dw 1, 0x8000, 0
        dq 1
    """)
    image = disk_image(disk_format, "8M", content={0: boot, 512: b"E"})
    run = emu_machine(image)    # emu_machine(image, engine="qemu") runs it in QEMU
    assert run.exit_code == 0
    assert run.debugcon.endswith("E")
'''


def run_pytest(folder: Path, *args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    test_file = folder / "test_example.py"
    test_file.write_text(README_EXAMPLE)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rs", *args, str(test_file)], cwd=folder, capture_output=True,
                          text=True, env=env or dict(os.environ), timeout=600)


def test_readme_example_runs_for_chosen_formats(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, "--emu-formats", "raw,vdi", "-n", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_disk_format_covers_every_format_by_default(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, "--collect-only")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for variant in DISK_FORMATS:
        assert f"test_boot_sector_reads_its_disk[{variant}]" in proc.stdout


def test_unknown_format_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_pytest(tmp_path, "--emu-formats", "qcow2")
    assert proc.returncode != 0
    assert "qcow2" in proc.stdout + proc.stderr


@pytest.mark.parametrize("ci, outcome", [("", "skipped"), ("true", "failed")])
def test_missing_nasm_skips_or_fails_under_ci(tmp_path: Path, ci: str, outcome: str) -> None:
    empty = tmp_path / "no-tools"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "CI": ci}
    proc = run_pytest(tmp_path, "--emu-formats", "raw", env=env)
    assert f"1 {outcome}" in proc.stdout, proc.stdout + proc.stderr
    assert "nasm" in proc.stdout


def test_disk_image_holds_its_content_in_every_format(disk_image, disk_format: str) -> None:
    image = disk_image(disk_format, "4M", content={0: b"boot", 3 << 20: b"end"})
    data = image.contents()
    assert len(data) >= 4 << 20
    assert data[:4] == b"boot" and data[3 << 20:(3 << 20) + 3] == b"end"
    assert data.count(0) == len(data) - 7


def test_guest_program_frame_reports_checks(nasm, disk_image, emu_machine) -> None:
    program = nasm.guest_program("""
        mov ah, 0x15
        mov dl, [boot_drive]
        int 0x13
        CHECK_EQ ah, 3, "AH=15h says hard disk"
        mov ah, 0x41
        mov bx, 0x55AA
        mov dl, [boot_drive]
        int 0x13
        CHECK_EQ bx, 0x1234, "a check meant to fail"
        PASS
    """)
    run = emu_machine(disk_image("raw", "4M", content=program))
    assert run.exit_code == 2, str(run)
    assert "G: ok AH=15h says hard disk" in run.debugcon
    assert "G: FAIL a check meant to fail" in run.debugcon


def test_a_format_without_its_driver_is_an_error_not_a_skip(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setitem(DISK_FORMATS, "qcow2", ("qcow2", {}))
    with pytest.raises(disks.UnknownFormatError, match="unknown format 'qcow2'"):
        make_disk_image(tmp_path, "qcow2", "1M")


@pytest.mark.parametrize("disk_format", ["vhdx"])
def test_a_test_may_choose_its_own_formats(disk_image, disk_format: str) -> None:
    assert disk_image(disk_format, "4M").format == "vhdx"
