"""Locks QEMU understands: emu and qemu-io/qemu-img keep out of each other's way, both ways.

The oracle is QEMU itself: a qemu-io process holds an image (interactive, commands on a
pipe) while emu tries it, and qemu-io/qemu-img try an image emu holds (``disks.open``,
a ``Machine`` as ``emu run`` builds it, a second emu process).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import need_tool

import disks
from disks import locking
from emu.img import main as img_main

MiB = 1 << 20
FORMATS = ["raw", "vdi", "vpc", "vmdk", "vhdx"]
LOCK_REFUSED = "Failed to get"


def make(path: Path, fmt: str, size: int = 4 * MiB) -> Path:
    with disks.create(path, fmt, size) as image:
        image.write(0, b"\x5a" * 4096)
    return path


@contextmanager
def qemu_io_holding(path: Path, fmt: str, *, readonly: bool = False,
                    extra: tuple[str, ...] = ()) -> Iterator[subprocess.Popen[str]]:
    """A qemu-io process with ``path`` open (read-write unless ``readonly``) until exit."""
    argv = [need_tool("qemu-io"), "-f", fmt, *(["-r"] if readonly else []), *extra, str(path)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write("read 0 512\n")   # answered only once the image is open
        proc.stdin.flush()
        line = proc.stdout.readline()
        assert "read 512/512" in line, line
        yield proc
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


def qemu_io_try(path: Path, fmt: str, command: str,
                *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_tool("qemu-io"), "-f", fmt, *extra, "-c", command, str(path)],
                          capture_output=True, text=True, timeout=60)


def qemu_img_try(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([need_tool("qemu-img"), *map(str, argv)], capture_output=True,
                          text=True, timeout=60)


# --- the byte scheme ----------------------------------------------------------------------

def held_bytes(path: Path) -> set[int]:
    """Permission bytes some open file description locks on ``path`` (from /proc/locks)."""
    import os
    st = os.stat(path)
    found: set[int] = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "OFDLCK" not in fields:
            continue
        device_inode, start, end = fields[-3], fields[-2], fields[-1]
        if int(device_inode.rsplit(":", 1)[1]) != st.st_ino:
            continue
        found.update(range(int(start), int(end) + 1))
    return found


@pytest.mark.parametrize("readonly", [False, True])
def test_emu_locks_the_bytes_qemu_io_locks(tmp_path: Path, readonly: bool) -> None:
    ours, theirs = make(tmp_path / "ours.vdi", "vdi"), make(tmp_path / "theirs.vdi", "vdi")
    with disks.open(ours, readonly=readonly), qemu_io_holding(theirs, "vdi", readonly=readonly):
        assert held_bytes(ours) == held_bytes(theirs)
        assert held_bytes(ours) == ({100, 201, 203} if readonly else {100, 101, 103, 201, 203})
    assert held_bytes(ours) == set()


def test_flock_struct_round_trips_a_conflict(tmp_path: Path) -> None:
    import os
    path = tmp_path / "f"
    path.write_bytes(b"x")
    a, b = os.open(path, os.O_RDWR), os.open(path, os.O_RDWR)
    try:
        locking.apply(a, locking.Perm.WRITE, locking.PERM_ALL)
        locking.check(a, locking.Perm.WRITE, locking.PERM_ALL)       # own locks never conflict
        with pytest.raises(locking.LockConflict, match='shared "write"'):
            locking.check(b, locking.Perm(0), locking.PERM_ALL & ~locking.Perm.WRITE)
        locking.release(a)
        locking.check(b, locking.Perm(0), locking.PERM_ALL & ~locking.Perm.WRITE)
    finally:
        os.close(a)
        os.close(b)


# --- qemu-io holds, emu tries -------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_emu_refuses_an_image_qemu_io_writes(tmp_path: Path, fmt: str) -> None:
    path = make(tmp_path / f"busy.{fmt}", fmt)
    before = path.read_bytes()
    with qemu_io_holding(path, fmt):
        with pytest.raises(disks.ImageLockedError, match='"write" lock'):
            disks.open(path)
        with pytest.raises(disks.ImageLockedError, match='shared "write" lock'):
            disks.open(path, readonly=True)
        with disks.open(path, readonly=True, force_share=True) as image:   # -U
            assert image.read(0, 4096) == b"\x5a" * 4096
        with pytest.raises(disks.ImageLockedError):
            disks.create(path, fmt, 1 * MiB)
        assert path.read_bytes() == before          # nothing truncated or replaced
    with disks.open(path) as image:                  # free again once qemu-io exits
        assert image.read(0, 512) == b"\x5a" * 512


def test_emu_reads_beside_a_qemu_io_reader_but_does_not_write(tmp_path: Path) -> None:
    path = make(tmp_path / "shared.vdi", "vdi")
    with qemu_io_holding(path, "vdi", readonly=True):
        with disks.open(path, readonly=True) as image:
            assert image.read(0, 512) == b"\x5a" * 512
        with pytest.raises(disks.ImageLockedError, match='Failed to get "write" lock'):
            disks.open(path)


def test_emu_img_verbs_against_qemu_io(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make(tmp_path / "busy.vdi", "vdi")
    with qemu_io_holding(path, "vdi"):
        assert img_main(["info", str(path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and 'shared "write" lock' in err
        assert img_main(["info", "-U", str(path)]) == 0
        assert img_main(["check", "-U", str(path)]) == 0
        assert img_main(["map", "--force-share", str(path)]) == 0
        assert img_main(["compare", "-U", str(path), str(path)]) == 0
        assert img_main(["check", "-r", "all", "-U", str(path)]) == 1   # -U reads only
        assert img_main(["create", "-f", "vdi", str(path), "1M"]) == 1
        capsys.readouterr()


def test_emu_refuses_the_parent_qemu_io_writes_but_reads_it(tmp_path: Path) -> None:
    base = make(tmp_path / "base.vmdk", "vmdk")
    child = tmp_path / "child.vmdk"
    with disks.create(child, "vmdk", backing=base):
        pass
    with qemu_io_holding(child, "vmdk"):         # qemu locks the parent as a reader
        with disks.open(base, readonly=True) as image:
            assert image.read(0, 512) == b"\x5a" * 512
        with pytest.raises(disks.ImageLockedError):
            disks.open(base)
        with pytest.raises(disks.ImageLockedError):   # and the child as its writer
            disks.open(child, readonly=True)


# --- emu holds, qemu tries ----------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_qemu_refuses_an_image_emu_writes(tmp_path: Path, fmt: str) -> None:
    path = make(tmp_path / f"ours.{fmt}", fmt)
    with disks.open(path):
        refused = qemu_io_try(path, fmt, "write -P 0x11 0 512")
        assert refused.returncode == 1 and LOCK_REFUSED in refused.stdout + refused.stderr
        if fmt != "raw":   # qemu-img info shares writes of raw files (no metadata to break)
            refused = qemu_img_try("info", path)
            assert refused.returncode == 1 and 'shared "write" lock' in refused.stderr
        refused = qemu_img_try("convert", "-f", fmt, "-O", "raw", path, tmp_path / "copy.raw")
        assert refused.returncode == 1 and 'shared "write" lock' in refused.stderr
        assert qemu_img_try("info", "-U", path).returncode == 0
        assert qemu_io_try(path, fmt, "read -P 0x5a 0 512", "-r", "-U").returncode == 0
    assert qemu_io_try(path, fmt, "read -P 0x5a 0 512").returncode == 0   # released


def test_qemu_reads_beside_an_emu_reader_but_does_not_write(tmp_path: Path) -> None:
    path = make(tmp_path / "ours.vdi", "vdi")
    with disks.open(path, readonly=True):
        assert qemu_io_try(path, "vdi", "read -P 0x5a 0 512", "-r").returncode == 0
        assert qemu_img_try("check", path).returncode == 0
        refused = qemu_io_try(path, "vdi", "write 0 512")
        assert refused.returncode == 1 and LOCK_REFUSED in refused.stdout + refused.stderr


def test_qemu_may_read_what_emu_force_shares(tmp_path: Path) -> None:
    path = make(tmp_path / "ours.vdi", "vdi")
    with qemu_io_holding(path, "vdi"):
        with disks.open(path, readonly=True, force_share=True):
            pass   # -U publishes no "not shared" bytes: the writer stays alone and unhurt
    with disks.open(path, readonly=True, force_share=True):
        assert qemu_io_try(path, "vdi", "write -P 0x5a 0 512").returncode == 0


def test_qemu_refuses_to_write_the_parent_of_an_emu_writer(tmp_path: Path) -> None:
    base = make(tmp_path / "base.vmdk", "vmdk")
    child = tmp_path / "child.vmdk"
    with disks.create(child, "vmdk", backing=base):
        refused = qemu_io_try(base, "vmdk", "write 0 512")
        assert refused.returncode == 1 and LOCK_REFUSED in refused.stdout + refused.stderr
        assert qemu_io_try(base, "vmdk", "read -P 0x5a 0 512", "-r").returncode == 0


def test_qemu_refuses_the_extent_file_of_an_emu_writer(tmp_path: Path) -> None:
    path = tmp_path / "flat.vmdk"
    with disks.create(path, "vmdk", MiB, subformat="monolithicFlat"):
        extent = tmp_path / "flat-flat.vmdk"
        refused = qemu_io_try(extent, "raw", "write 0 512")
        assert refused.returncode == 1 and LOCK_REFUSED in refused.stdout + refused.stderr


def test_qemu_refuses_a_disk_of_a_running_machine(tmp_path: Path) -> None:
    from emu.machine import Machine
    path = make(tmp_path / "disk.vdi", "vdi")
    with Machine(disks=[f"{path},format=vdi"]):
        refused = qemu_io_try(path, "vdi", "write 0 512")
        assert refused.returncode == 1 and LOCK_REFUSED in refused.stdout + refused.stderr
    with Machine(disks=[f"{path},format=vdi,snapshot=on"]):   # the base is only read
        assert qemu_io_try(path, "vdi", "read -P 0x5a 0 512", "-r").returncode == 0
        refused = qemu_io_try(path, "vdi", "write 0 512")
        assert refused.returncode == 1


def test_a_second_emu_process_is_refused(tmp_path: Path) -> None:
    path = make(tmp_path / "ours.vdi", "vdi")
    script = ("import sys, disks\n"
              "try:\n    disks.open(sys.argv[1])\n"
              "except disks.ImageLockedError:\n    sys.exit(3)\n")
    with disks.open(path):
        assert subprocess.run([sys.executable, "-c", script, str(path)],
                              timeout=60).returncode == 3
    assert subprocess.run([sys.executable, "-c", script, str(path)], timeout=60).returncode == 0


def test_emu_run_refuses_a_disk_qemu_io_writes_in_one_line(tmp_path: Path) -> None:
    path = make(tmp_path / "busy.vdi", "vdi")
    with qemu_io_holding(path, "vdi"):
        proc = subprocess.run([sys.executable, "-m", "emu", "run", "--disk", f"{path}",
                               "--serial", "null", "--max-instructions", "1000"],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and 'Failed to get "write" lock' in proc.stderr
