"""Files an image names (parents, extents) are confined to the chain's folders, in every format.

One policy (disks.paths) for every format: a parent or extent must lie (symlinks resolved)
in the folder of an image already in the chain, or in a folder the user allowed
(``allow_paths=`` / ``--allow-path``); special files (FIFOs, devices) are refused whatever
the policy, without hanging.  Each case is checked through disks.open and the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import disks
from emu.img import main as img_main

MiB = 1 << 20
PARENT_FORMATS = ["vpc", "vhdx", "vmdk"]   # formats naming their parent by path


def child_of(tmp_path: Path, fmt: str, parent: Path) -> Path:
    """A differencing image in tmp/img whose parent is ``parent`` (data b"p" at 0)."""
    (tmp_path / "img").mkdir(exist_ok=True)
    with disks.create(parent, fmt, 4 * MiB) as image:
        image.write(0, b"p" * 512)
    child = tmp_path / "img" / f"c.{fmt}"
    with disks.create(child, fmt, backing=parent):
        pass
    return child


def open_in_child(path: Path, **kwargs: object) -> str:
    """``disks.open`` in a separate process (a hang must fail the test, not stall the run):
    the error's class and message, or "opened"."""
    script = ("import sys, json, disks\n"
              "try:\n"
              "    disks.open(sys.argv[1], readonly=True, **json.loads(sys.argv[2])).close()\n"
              "    print('opened')\n"
              "except disks.ImageError as exc:\n"
              "    print(type(exc).__name__, exc)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(path), json.dumps(kwargs)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def assert_refused_one_line(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert img_main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--allow-path" in err


@pytest.mark.parametrize("fmt", PARENT_FORMATS)
def test_parent_in_another_folder_needs_allow_path(tmp_path: Path, fmt: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    child = child_of(tmp_path, fmt, tmp_path / "out" / f"p.{fmt}")   # "../out/p" and absolute
    with pytest.raises(disks.PathNotAllowedError, match="allow-path"):
        disks.open(child, readonly=True)
    assert_refused_one_line(child, capsys)
    with disks.open(child, readonly=True, allow_paths=[tmp_path / "out"]) as image:
        assert image.read(0, 512) == b"p" * 512
    assert img_main(["info", "--allow-path", str(tmp_path / "out"), str(child)]) == 0
    with disks.open(child, backing=tmp_path / "out" / f"p.{fmt}") as image:   # named by the user
        assert image.read(0, 512) == b"p" * 512


@pytest.mark.parametrize("fmt", PARENT_FORMATS)
def test_symlink_leaving_the_folder_is_refused(tmp_path: Path, fmt: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "img").mkdir()
    real = tmp_path / "out" / f"p.{fmt}"
    with disks.create(real, fmt, 4 * MiB) as image:
        image.write(0, b"p" * 512)
    link = tmp_path / "img" / f"p.{fmt}"
    link.symlink_to(real)
    child = tmp_path / "img" / f"c.{fmt}"
    with disks.create(child, fmt, backing=link):
        pass
    with pytest.raises(disks.PathNotAllowedError):
        disks.open(child, readonly=True)
    assert_refused_one_line(child, capsys)
    with disks.open(child, readonly=True, allow_paths=[tmp_path / "out"]) as image:
        assert image.read(0, 512) == b"p" * 512


@pytest.mark.parametrize("fmt", PARENT_FORMATS)
@pytest.mark.parametrize("target", ["/etc/passwd", "/dev/zero", "fifo"])
def test_parent_replaced_by_a_hostile_file(tmp_path: Path, fmt: str, target: str) -> None:
    parent = tmp_path / "img" / f"p.{fmt}"
    child = child_of(tmp_path, fmt, parent)
    parent.unlink()
    if target == "fifo":
        os.mkfifo(parent)
        expected = "ImageIOError"
        message = "FIFO"
    else:
        parent.symlink_to(target)
        expected = "PathNotAllowedError"
        message = "allow-path"
    outcome = open_in_child(child)
    assert outcome.startswith(expected) and message in outcome, outcome
    # allowing every folder still never reads a device or a FIFO as a disk
    if target != "/etc/passwd":
        outcome = open_in_child(child, allow_paths=["/"])
        assert outcome.startswith("ImageIOError"), outcome
        assert ("character device" if target == "/dev/zero" else "FIFO") in outcome


def test_vdi_parent_found_through_a_symlink_leaving_the_folder(tmp_path: Path) -> None:
    # VDI finds its parent by UUID among the .vdi files of its own folder
    (tmp_path / "out").mkdir()
    (tmp_path / "img").mkdir()
    parent = tmp_path / "img" / "p.vdi"
    child = child_of(tmp_path, "vdi", parent)
    parent.rename(tmp_path / "out" / "p.vdi")
    parent.symlink_to(tmp_path / "out" / "p.vdi")
    with pytest.raises(disks.PathNotAllowedError):
        disks.open(child, readonly=True)
    with disks.open(child, readonly=True, allow_paths=[tmp_path / "out"]) as image:
        assert image.read(0, 512) == b"p" * 512
    parent.unlink()
    os.mkfifo(tmp_path / "img" / "q.vdi")             # a FIFO among the candidates: skipped
    assert open_in_child(child).startswith("MissingBackingError")


@pytest.mark.parametrize("name", ["../out/x-flat.vmdk", "ABS/x-flat.vmdk", "link-flat.vmdk",
                                  "/etc/passwd", "/dev/zero", "fifo-flat.vmdk"])
def test_vmdk_extent_matrix(tmp_path: Path, name: str) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "img").mkdir()
    (tmp_path / "out" / "x-flat.vmdk").write_bytes(b"e" * MiB)
    (tmp_path / "img" / "link-flat.vmdk").symlink_to(tmp_path / "out" / "x-flat.vmdk")
    os.mkfifo(tmp_path / "img" / "fifo-flat.vmdk")
    name = name.replace("ABS", str(tmp_path / "out"))
    desc = tmp_path / "img" / "d.vmdk"
    desc.write_text('version=1\nCID=1\nparentCID=ffffffff\ncreateType="monolithicFlat"\n'
                    f'RW 8 FLAT "{name}" 0\n')
    outcome = open_in_child(desc)
    if name == "fifo-flat.vmdk":
        assert outcome.startswith("ImageIOError") and "FIFO" in outcome, outcome
        return
    assert outcome.startswith("PathNotAllowedError") and "allow-path" in outcome, outcome
    widened = open_in_child(desc, allow_paths=["/"])
    if name == "/dev/zero":
        assert widened.startswith("ImageIOError") and "character device" in widened
    else:
        assert widened == "opened"


def test_fifo_named_as_the_image_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "disk.vdi"
    os.mkfifo(fifo)
    outcome = open_in_child(fifo)
    assert outcome.startswith("ImageIOError") and "FIFO" in outcome, outcome
    proc = subprocess.run([sys.executable, "-m", "emu", "img", "info", str(fifo)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "FIFO" in proc.stderr


def test_emu_run_names_and_honours_allow_path(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    child = child_of(tmp_path, "vpc", tmp_path / "out" / "p.vpc")
    run = [sys.executable, "-m", "emu", "run", "--disk", f"{child},format=vpc",
           "--serial", "null", "--max-instructions", "1000"]
    refused = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "--allow-path" in refused.stderr
    allowed = subprocess.run([*run, "--allow-path", str(tmp_path / "out")],
                             capture_output=True, text=True, timeout=120)
    assert allowed.returncode == 127, allowed.stderr      # booted: the budget ran out


def test_create_on_a_parent_whose_chain_leaves_its_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "out").mkdir()
    middle = child_of(tmp_path, "vmdk", tmp_path / "out" / "p.vmdk")   # img/c.vmdk -> ../out
    top = tmp_path / "img" / "top.vmdk"
    assert img_main(["create", "-f", "vmdk", "-b", str(middle), str(top)]) == 1
    assert "--allow-path" in capsys.readouterr().err
    assert not top.exists()
    assert img_main(["create", "-f", "vmdk", "--allow-path", str(tmp_path / "out"),
                     "-b", str(middle), str(top)]) == 0
    with disks.open(top, readonly=True, allow_paths=[tmp_path / "out"]) as image:
        assert image.read(0, 512) == b"p" * 512


def test_a_refused_parent_leaves_no_file_locked(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "img").mkdir()
    flat = tmp_path / "img" / "c.vmdk"
    with disks.create(flat, "vmdk", 4 * MiB, subformat="monolithicFlat"):
        pass
    text = flat.read_text().replace('parentCID=ffffffff', 'parentCID=12345678\n'
                                    'parentFileNameHint="../out/p.vmdk"')
    flat.write_text(text)
    with disks.create(tmp_path / "out" / "p.vmdk", "vmdk", 4 * MiB):
        pass
    for _ in range(2):   # the extent opened before the parent was refused is released
        with pytest.raises(disks.PathNotAllowedError):
            disks.open(flat)
    with disks.open(tmp_path / "img" / "c-flat.vmdk", format="raw") as extent:
        assert extent.size == 4 * MiB
