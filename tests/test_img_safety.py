"""Ordinary commands never destroy data: create and convert change nothing before every check
passed, and every failure of ``emu img`` is one line with qemu-img's exit code."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from oracles import qemu_img

import disks
from emu.img import main as img_main

MiB = 1 << 20


def image(path: Path, fmt: str = "vdi") -> Path:
    with disks.create(path, fmt, 4 * MiB) as img:
        img.write(0, b"\x5a" * 65536)
    return path


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("emu img: ") and "Traceback" not in err, err
    return err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --- create ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["raw", "vdi", "vpc", "vmdk", "vhdx"])
def test_create_over_an_image_in_use_changes_nothing(tmp_path: Path, fmt: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = image(tmp_path / f"busy.{fmt}", fmt)
    before = path.read_bytes()
    with disks.open(path):                                   # as `emu run --disk busy` does
        assert img_main(["create", "-f", fmt, str(path), "1M"]) == 1
        assert "in use" in one_line_error(capsys)
        assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("argv", [
    ["create", "-f", "vdi", "{p}", "1X"],                    # not a size
    ["create", "-f", "vdi", "{p}", "1E"],                    # too large for the format
    ["create", "-f", "vdi", "-o", "static=maybe", "{p}", "1M"],
    ["create", "-f", "vpc", "-b", "{missing}", "{p}"],
])
@pytest.mark.parametrize("exists", [False, True])
def test_failed_create_leaves_no_file_and_the_old_one_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], exists: bool) -> None:
    path = tmp_path / "x.img"
    if exists:
        image(path)
    before = path.read_bytes() if exists else None
    code = img_main([a.format(p=path, missing=tmp_path / "nope.vhd") for a in argv])
    assert code == 1
    one_line_error(capsys)
    assert (path.read_bytes() if path.exists() else None) == before
    assert leftovers(tmp_path) == []


def test_create_failing_halfway_keeps_the_old_image(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = image(tmp_path / "old.vdi")
    before = path.read_bytes()
    from disks.vdi import VdiImage
    real = VdiImage.create_file

    def full_disk(cls: type, file: disks.hostfile.HostFile, *args: object) -> None:
        real.__func__(cls, file, *args)   # type: ignore[attr-defined]
        raise disks.ImageIOError(file.path, "write: No space left on device")

    monkeypatch.setattr(VdiImage, "create_file", classmethod(full_disk))
    with pytest.raises(disks.ImageIOError, match="No space"):
        disks.create(path, "vdi", 8 * MiB)
    assert path.read_bytes() == before
    assert leftovers(tmp_path) == []


def test_create_through_a_symlink_keeps_the_link_and_the_mode(tmp_path: Path) -> None:
    real = image(tmp_path / "real.vdi")
    os.chmod(real, 0o600)
    owner = (1234, 1234) if os.geteuid() == 0 else (os.getuid(), os.getgid())
    os.chown(real, *owner)
    link = tmp_path / "link.vdi"
    link.symlink_to(real)
    with disks.create(link, "vdi", 2 * MiB):
        pass
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert stat.S_IMODE(real.stat().st_mode) == 0o600
    assert (real.stat().st_uid, real.stat().st_gid) == owner
    assert '"virtual-size": 2097152' in qemu_img("info", "--output=json", real).stdout
    qemu_img("check", "-f", "vdi", real)


# --- convert onto itself ---------------------------------------------------------------------

@pytest.mark.parametrize("force_share", [False, True])
@pytest.mark.parametrize("alias", ["same", "dot", "hardlink", "symlink"])
def test_convert_onto_itself_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        alias: str, force_share: bool) -> None:
    source = image(tmp_path / "same.vdi")
    before = source.read_bytes()
    target = {"same": source, "dot": tmp_path / "." / "same.vdi",
              "hardlink": tmp_path / "hard.vdi", "symlink": tmp_path / "soft.vdi"}[alias]
    if alias == "hardlink":
        os.link(source, target)
    elif alias == "symlink":
        target.symlink_to(source)
    argv = ["convert", *(["-U"] if force_share else []), "-O", "vdi", str(source), str(target)]
    assert img_main(argv) == 1          # qemu-img's code when its lock refuses the target
    one_line_error(capsys)
    assert source.read_bytes() == before
    qemu_img("check", "-f", "vdi", source)


def test_convert_onto_an_extent_of_the_source_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "flat.vmdk"
    with disks.create(source, "vmdk", MiB, subformat="monolithicFlat") as img:
        img.write(0, b"e" * 512)
    extent = tmp_path / "flat-flat.vmdk"
    before = extent.read_bytes()
    assert img_main(["convert", "-U", "-O", "raw", str(source), str(extent)]) == 1
    one_line_error(capsys)
    assert extent.read_bytes() == before


# --- one line, qemu-img's exit codes ---------------------------------------------------------

def test_map_into_a_closed_pipe_says_nothing(tmp_path: Path) -> None:
    path = tmp_path / "holes.raw"
    with open(path, "wb") as f:              # thousands of data extents: more than a pipe holds
        f.truncate(32 * MiB)
        for offset in range(0, 32 * MiB, 8192):
            f.seek(offset)
            f.write(b"d")
    proc = subprocess.Popen([sys.executable, "-m", "emu", "img", "map", "-f", "raw", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"Offset")
    proc.stdout.close()                      # `| head -1`
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and err == b""


def test_compare_with_an_image_that_fails_unexpectedly_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = image(tmp_path / "a.vdi"), image(tmp_path / "b.vdi")
    from disks.vdi import VdiImage

    def broken(self: VdiImage, offset: int, length: int) -> None:
        raise OverflowError("Python int too large to convert to C ssize_t")

    monkeypatch.setattr(VdiImage, "_map", broken)
    assert img_main(["compare", str(a), str(b)]) == 2
    assert "OverflowError" in one_line_error(capsys)
    assert img_main(["info", str(a)]) == 0                  # info needs no mapping
    capsys.readouterr()
    assert img_main(["map", str(a)]) == 1
    one_line_error(capsys)


def test_create_through_a_dangling_symlink_makes_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.vdi"
    link.symlink_to(tmp_path / "new.vdi")
    with disks.create(link, "vdi", MiB):
        pass
    assert link.is_symlink() and (tmp_path / "new.vdi").is_file()
    qemu_img("check", "-f", "vdi", link)


def test_create_refuses_to_replace_a_device_or_a_fifo(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "pipe.vdi"
    os.mkfifo(fifo)
    assert img_main(["create", "-f", "vdi", str(fifo), "1M"]) == 1
    assert "FIFO" in one_line_error(capsys)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    link = tmp_path / "null.vdi"
    link.symlink_to("/dev/null")
    assert img_main(["create", "-f", "vdi", str(link), "1M"]) == 1
    assert "character device" in one_line_error(capsys)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("argv", [["frobnicate"], [], ["info"], ["info", "--bogus", "x"],
                                  ["check", "-r", "some", "x"]])
def test_usage_errors_are_one_line_exit_1(capsys: pytest.CaptureFixture[str],
                                          argv: list[str]) -> None:
    with pytest.raises(SystemExit) as caught:      # as qemu-img: status 1
        img_main(argv)
    assert caught.value.code == 1
    one_line_error(capsys)


@pytest.mark.parametrize("argv", [["-f", "vmdk", "-o", "subformat=monolithicFlat"],
                                  ["-f", "vmdk", "-o", "subformat=twoGbMaxExtentFlat"],
                                  ["-f", "vdi", "-o", "static=on"],
                                  ["-f", "vhdx", "-o", "subformat=fixed"]])
@pytest.mark.parametrize("exists", [False, True])
def test_create_running_out_of_space_leaves_nothing_new(tmp_path: Path, argv: list[str],
                                                        exists: bool) -> None:
    import resource
    path = tmp_path / "x.img"
    if exists:
        image(path)
    before = sorted(p.name for p in tmp_path.iterdir()), path.read_bytes() if exists else None

    def small_disk() -> None:   # every write past 1 MiB fails (EFBIG), as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (MiB, MiB))

    proc = subprocess.run([sys.executable, "-m", "emu", "img", "create", *argv, str(path),
                           "64M"], capture_output=True, text=True, timeout=120,
                          preexec_fn=small_disk)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert (sorted(p.name for p in tmp_path.iterdir()),
            path.read_bytes() if exists else None) == before


@pytest.mark.parametrize("options", [["-O", "vdi"],
                                     ["-O", "vmdk", "-o", "subformat=monolithicFlat"]])
def test_convert_failing_midway_leaves_the_old_target_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        options: list[str]) -> None:
    import emu.img
    source, target = image(tmp_path / "src.vdi"), image(tmp_path / "old.img")
    before = target.read_bytes()
    real_copy = emu.img.copy_image

    def copy_then_fail(src: disks.Image, dst: disks.Image, progress: object = None) -> None:
        real_copy(src, dst)
        raise disks.ImageIOError(src.path, "read at 0: Input/output error")

    monkeypatch.setattr(emu.img, "copy_image", copy_then_fail)
    assert img_main(["convert", *options, str(source), str(target)]) == 1
    assert "Input/output error" in one_line_error(capsys)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.img", "src.vdi"]


@pytest.mark.parametrize("exists", [False, True])
def test_convert_running_out_of_space_leaves_nothing_new(tmp_path: Path, exists: bool) -> None:
    import resource
    source = tmp_path / "src.vdi"
    with disks.create(source, "vdi", 16 * MiB) as img:
        img.write(0, b"\x01" * (4 * MiB))
    target = tmp_path / "x.vhdx"
    if exists:
        image(target, "vhdx")
    before = sorted(p.name for p in tmp_path.iterdir()), target.read_bytes() if exists else None

    def small_disk() -> None:   # the empty image fits (4 MiB), the copied data does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (6 * MiB, 6 * MiB))

    proc = subprocess.run([sys.executable, "-m", "emu", "img", "convert", "-O", "vhdx",
                           "-o", "block_size=1M", str(source), str(target)],
                          capture_output=True, text=True, timeout=120, preexec_fn=small_disk)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "File too large" in proc.stderr and "cannot create" not in proc.stderr
    assert (sorted(p.name for p in tmp_path.iterdir()),
            target.read_bytes() if exists else None) == before
    if exists:
        qemu_img("check", "-f", "vhdx", target)
