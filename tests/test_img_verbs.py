"""`emu img` resize, commit, rebase, amend, measure, dd, bench and info details.

qemu-img is the oracle where it has the verb for the format (raw resize and measure,
dd, VMDK chains for commit and rebase); elsewhere a byte model of the disk is, and the
results are read back by qemu-img (``qemu-img compare`` against the model as a raw
file, ``qemu-img check`` clean, ``qemu-img info`` sizes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from oracles import qemu_img, qemu_img_info, qemu_io, qemu_to_raw

import disks
from emu.img import main

MiB = 1 << 20
FORMATS = ["raw", "vdi", "vpc", "vmdk", "vhdx"]
CHECKABLE = {"vdi", "vmdk", "vhdx"}  # qemu-img check supports these


def emu_img(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def make_image(path: Path, fmt: str, size: int, writes: list[tuple[int, int, int]],
               *extra: str) -> bytearray:
    """A qemu-img-made image with qemu-io's pattern writes; returns the byte model."""
    qemu_img("create", "-q", "-f", fmt, *extra, path, str(size))
    model = bytearray(qemu_img_info(path, fmt)["virtual-size"])  # vpc rounds up to CHS
    if writes:
        qemu_io(path, fmt, *(f"write -P {fill} {off} {length}" for off, length, fill in writes))
    for off, length, fill in writes:
        model[off:off + length] = bytes([fill]) * length
    return model


def assert_reads(path: Path, fmt: str, model: bytes | bytearray, tmp: Path) -> None:
    """qemu-img reads ``model`` from the image, finds it clean and of the model's size."""
    assert qemu_img_info(path, fmt)["virtual-size"] == len(model)
    if fmt in CHECKABLE:
        qemu_img("check", "-q", "-f", fmt, path)
    want = tmp / "want.raw"
    want.write_bytes(bytes(model))
    proc = qemu_img("compare", "-f", fmt, "-F", "raw", path, want, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


WRITES = [(1 * MiB, 3 * MiB, 0xAB), (60 * MiB, 4 * MiB, 0xCD), (7 * MiB + 512, 4096, 0x11)]


# --- resize ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_resize_grow_and_shrink(fmt: str, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / f"d.{fmt}"
    model = make_image(image, fmt, 64 * MiB, WRITES)
    code, out, _ = emu_img(capsys, "resize", image, "+64M")
    assert (code, out) == (0, "Image resized.\n")
    model += bytes(64 * MiB)  # "+64M" from the size as stored
    assert_reads(image, fmt, model, tmp_path)
    # shrinking needs --shrink; without it nothing changes and the exit status is 1
    before = image.read_bytes()
    code, out, err = emu_img(capsys, "resize", image, "-66M")
    assert code == 1 and out == "" and "--shrink" in err and err.count("\n") == 1
    assert image.read_bytes() == before
    code, out, _ = emu_img(capsys, "resize", "--shrink", "-f", fmt, image, "62M")
    assert code == 0
    assert_reads(image, fmt, model[:62 * MiB], tmp_path)


def test_resize_raw_matches_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ours, theirs = tmp_path / "a.raw", tmp_path / "b.raw"
    make_image(ours, "raw", 8 * MiB, [(0, MiB, 7)])
    make_image(theirs, "raw", 8 * MiB, [(0, MiB, 7)])
    for args in (["+3M"], ["--shrink", "5000K"], ["12M"]):
        code, out, _ = emu_img(capsys, "resize", *args[:-1], ours, args[-1])
        proc = qemu_img("resize", *args[:-1], "-f", "raw", theirs, args[-1])
        assert code == 0 and out == proc.stdout
        assert ours.read_bytes() == theirs.read_bytes()


def test_resize_refuses_multi_file_vmdk(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Rewriting an image of several files is not supported yet: refused, nothing changed."""
    image = tmp_path / "t.vmdk"
    make_image(image, "vmdk", 64 * MiB, WRITES[:1], "-o", "subformat=twoGbMaxExtentSparse")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    code, _, err = emu_img(capsys, "resize", image, "3G")
    assert code == 1 and "several files" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_resize_refuses_an_image_in_use(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "d.vdi"
    make_image(image, "vdi", 8 * MiB, [(0, MiB, 1)])
    before = image.read_bytes()
    with disks.open(image):
        code, _, err = emu_img(capsys, "resize", image, "16M")
    assert code == 1 and "in use" in err
    assert image.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.vdi"]  # no temporary left


def test_resize_bad_size_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "d.vpc"
    make_image(image, "vpc", 8 * MiB, [])
    before = image.read_bytes()
    for size in ("12Q", "-9M", "1000"):
        code, _, err = emu_img(capsys, "resize", "--shrink", image, size)
        assert code == 1 and err.count("\n") == 1, (size, err)
    assert image.read_bytes() == before


# --- commit ----------------------------------------------------------------------------------

def vmdk_chain(tmp: Path) -> tuple[Path, Path, Path, bytes]:
    base, mid, top = tmp / "base.vmdk", tmp / "mid.vmdk", tmp / "top.vmdk"
    make_image(base, "vmdk", 16 * MiB, [(0, 4 * MiB, 1)])
    qemu_img("create", "-q", "-f", "vmdk", "-b", base.name, "-F", "vmdk", mid)
    qemu_io(mid, "vmdk", "write -P 2 2M 4M")
    qemu_img("create", "-q", "-f", "vmdk", "-b", mid.name, "-F", "vmdk", top)
    qemu_io(top, "vmdk", "write -P 3 5M 2M", "write -z 0 1M", "write -P 4 15M 64k")
    return base, mid, top, qemu_to_raw(top, "vmdk", tmp / "top.raw")


def test_commit_vmdk_like_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, mid, top, content = vmdk_chain(tmp_path)
    code, out, _ = emu_img(capsys, "commit", top)
    assert (code, out) == (0, "Image committed.\n")
    assert_reads(mid, "vmdk", content, tmp_path)
    assert_reads(top, "vmdk", content, tmp_path)
    # the top image is empty again and still a child of mid
    rows = json.loads(qemu_img("map", "--output", "json", top).stdout)
    assert all(row["depth"] > 0 for row in rows if row["data"])
    assert qemu_img_info(top)["backing-filename"] == "mid.vmdk"


def test_commit_into_deeper_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, mid, top, content = vmdk_chain(tmp_path)
    theirs = tmp_path / "q"
    theirs.mkdir()
    for p in (base, mid, top):
        (theirs / p.name).write_bytes(p.read_bytes())
    code, out, _ = emu_img(capsys, "commit", "-b", base, top)
    assert (code, out) == (0, "Image committed.\n")
    qemu_img("commit", "-q", "-b", theirs / "base.vmdk", theirs / "top.vmdk")
    assert_reads(base, "vmdk", content, tmp_path)
    assert qemu_to_raw(base, "vmdk", tmp_path / "a.raw") == \
        qemu_to_raw(theirs / "base.vmdk", "vmdk", tmp_path / "b.raw")
    # -b implies -d: the top image keeps its own data, as qemu-img's does (the middle
    # image's parent CID no longer matches, in both: qemu-img's man page warns of it)
    assert top.stat().st_size == (theirs / "top.vmdk").stat().st_size


@pytest.mark.parametrize("fmt", ["vdi", "vpc", "vhdx"])
def test_commit_chains(fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """base <- mid <- top of VDI, VHD, VHDX: qemu-img cannot read these chains (no
    backing support for them); the model can, and qemu-img reads the base committed into."""
    base = tmp_path / f"base.{fmt}"
    model = make_image(base, fmt, 16 * MiB, [(0, 4 * MiB, 1)])
    parent = base
    for name, offset, fill in (("mid", 2 * MiB, 2), ("top", 9 * MiB, 4)):
        child = tmp_path / f"{name}.{fmt}"
        with disks.create(child, fmt, backing=parent) as image:
            image.write(offset, bytes([fill]) * MiB)
            model[offset:offset + MiB] = bytes([fill]) * MiB
        parent = child
    with disks.open(parent) as top:
        top.write_zeroes(0, 4096)  # a zero in the top layer hides the base's data
        model[0:4096] = bytes(4096)
    # default commit: into mid; the top is emptied but reads the same
    code, out, _ = emu_img(capsys, "commit", parent)
    assert (code, out) == (0, "Image committed.\n")
    with disks.open(parent, readonly=True) as image:
        assert image.read(0, image.size) == bytes(model)
        assert not [e for e in image.map() if e.depth == 0 and e.kind is disks.RunKind.DATA]
    with disks.open(tmp_path / f"mid.{fmt}", readonly=True) as image:
        assert image.read(0, image.size) == bytes(model)
    # commit -b: into the base, which qemu-img reads alone
    assert emu_img(capsys, "commit", "-q", "-b", base, tmp_path / f"mid.{fmt}")[:2] == (0, "")
    assert_reads(base, fmt, model, tmp_path)


def test_commit_refusals_change_nothing(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    base, mid, top, _ = vmdk_chain(tmp_path)
    files = {p: p.read_bytes() for p in (base, mid, top)}
    code, _, err = emu_img(capsys, "commit", base)           # no backing file
    assert code == 1 and err.count("\n") == 1
    code, _, err = emu_img(capsys, "commit", "-b", tmp_path / "top.raw", top)
    assert code == 1 and "backing chain" in err
    with disks.open(mid):                                    # the base is in use
        code, _, err = emu_img(capsys, "commit", top)
    assert code == 1 and "in use" in err
    assert {p: p.read_bytes() for p in files} == files


# --- rebase ----------------------------------------------------------------------------------

def test_rebase_safe_unsafe_and_flatten(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    base, mid, top, content = vmdk_chain(tmp_path)
    other = tmp_path / "other.vmdk"
    make_image(other, "vmdk", 16 * MiB, [(0, 16 * MiB, 9), (8 * MiB, 64 * 1024, 0)])
    saved = top.read_bytes()
    # safe: the content stays, the parent changes (qemu-img 7.2 cannot change a VMDK's
    # parent at all: "Operation not supported"; qemu-img reads the result)
    assert emu_img(capsys, "rebase", "-b", other.name, "-F", "vmdk", top)[:2] == (0, "")
    assert qemu_img_info(top)["backing-filename"] == "other.vmdk"
    assert_reads(top, "vmdk", content, tmp_path)
    # flatten
    top.write_bytes(saved)
    assert emu_img(capsys, "rebase", "-b", "", top)[0] == 0
    assert "backing-filename" not in qemu_img_info(top)
    assert_reads(top, "vmdk", content, tmp_path)
    # unsafe: only the reference changes, so the new parent shows through
    top.write_bytes(saved)
    assert emu_img(capsys, "rebase", "-u", "-b", other.name, "-F", "vmdk", top)[0] == 0
    model = bytearray(qemu_to_raw(other, "vmdk", tmp_path / "o.raw"))
    for offset, data in ((5 * MiB, b"\3" * 2 * MiB), (0, bytes(MiB)), (15 * MiB, b"\4" * 65536)):
        model[offset:offset + len(data)] = data   # the top layer's own writes
    assert_reads(top, "vmdk", model, tmp_path)


def test_rebase_unsafe_with_missing_parent(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    base, mid, top, _ = vmdk_chain(tmp_path)
    mid.rename(tmp_path / "moved.vmdk")
    code, _, _ = emu_img(capsys, "rebase", "-b", "moved.vmdk", top)
    assert code == 1                                 # safe mode needs the old chain
    assert emu_img(capsys, "rebase", "-u", "-b", "moved.vmdk", "-F", "vmdk", top)[0] == 0
    qemu_img("check", "-q", top)
    assert qemu_img_info(top)["backing-filename"] == "moved.vmdk"


def test_rebase_vpc_onto_another_parent(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.vpc", tmp_path / "b.vpc"
    model = make_image(a, "vpc", 8 * MiB, [(0, 2 * MiB, 5)])
    make_image(b, "vpc", 8 * MiB, [(MiB, 4 * MiB, 6)])
    child = tmp_path / "c.vpc"
    with disks.create(child, "vpc", backing=a) as image:
        image.write(6 * MiB, b"\x42" * MiB)
        model[6 * MiB:7 * MiB] = b"\x42" * MiB
    assert emu_img(capsys, "rebase", "-b", b, "-F", "vpc", child)[0] == 0
    with disks.open(child, readonly=True) as image:
        assert image.backing is not None and image.backing.path == str(b)
        assert image.read(0, image.size) == bytes(model)


# --- amend -----------------------------------------------------------------------------------

def test_amend_vmdk_adapter_and_hwversion(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "d.vmdk"
    model = make_image(image, "vmdk", 64 * MiB, WRITES)
    assert emu_img(capsys, "amend", "-o", "adapter_type=lsilogic,hwversion=6", image)[0] == 0
    text = image.read_bytes()[512:512 * 21]
    assert b'ddb.adapterType = "lsilogic"' in text and b'ddb.virtualHWVersion = "6"' in text
    assert_reads(image, "vmdk", model, tmp_path)
    before = image.read_bytes()
    code, _, err = emu_img(capsys, "amend", "-o", "adapter_type=floppy", image)
    assert code == 1 and err.count("\n") == 1 and image.read_bytes() == before


@pytest.mark.parametrize("fmt,option,key,value", [
    ("vdi", "static=on", "image-type", "static"),
    ("vhdx", "block_size=1M", "block-size", MiB),
    ("vpc", "subformat=fixed", "subformat", "fixed"),
])
def test_amend_other_formats(fmt: str, option: str, key: str, value: object, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / f"d.{fmt}"
    model = make_image(image, fmt, 64 * MiB, WRITES)
    assert emu_img(capsys, "amend", "-o", option, image)[0] == 0
    assert_reads(image, fmt, model, tmp_path)
    with disks.open(image, readonly=True) as opened:
        assert opened.info()["format-specific"]["data"][key] == value


# --- measure ---------------------------------------------------------------------------------

def test_measure_raw_matches_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "s.vdi"
    make_image(source, "vdi", 64 * MiB, WRITES)
    for args in (["--size", "1G"], [str(source)]):
        code, out, _ = emu_img(capsys, "measure", "-O", "raw", *args)
        assert code == 0 and out == qemu_img("measure", "-O", "raw", *args).stdout
        code, out, _ = emu_img(capsys, "measure", "--output", "json", "-O", "raw", *args)
        theirs = json.loads(qemu_img("measure", "--output", "json", "-O", "raw", *args).stdout)
        assert json.loads(out) == theirs


@pytest.mark.parametrize("fmt", ["vdi", "vpc", "vmdk", "vhdx"])
def test_measure_predicts_convert(fmt: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "s.raw"   # sparse, holding exactly WRITES (no zero-filled head)
    with source.open("wb") as f:
        f.truncate(64 * MiB)
        for offset, length, fill in WRITES:
            f.seek(offset)
            f.write(bytes([fill]) * length)
    code, out, _ = emu_img(capsys, "measure", "--output", "json", "-O", fmt, source)
    sizes = json.loads(out)
    target = tmp_path / f"t.{fmt}"
    assert emu_img(capsys, "convert", "-O", fmt, source, target)[0] == 0
    assert sizes["required"] == target.stat().st_size
    full = tmp_path / f"f.{fmt}"
    make_image(full, "raw", 64 * MiB, [(0, 64 * MiB, 1)])
    assert emu_img(capsys, "convert", "-O", fmt, full, target)[0] == 0
    assert sizes["fully-allocated"] == target.stat().st_size


# --- dd --------------------------------------------------------------------------------------

@pytest.mark.parametrize("operands", [["bs=1M", "skip=2", "count=5"], ["bs=64k", "count=3"],
                                      ["skip=9"], ["bs=4k"]])
def test_dd_matches_qemu(operands: list[str], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "s.vmdk"
    make_image(source, "vmdk", 16 * MiB, [(MiB, 3 * MiB, 0xAB), (9 * MiB, 4096, 1)])
    for out_fmt in ("raw", "vdi"):
        ours, theirs = tmp_path / f"o.{out_fmt}", tmp_path / f"q.{out_fmt}"
        code, out, _ = emu_img(capsys, "dd", "-O", out_fmt, f"if={source}", f"of={ours}",
                               *operands)
        proc = qemu_img("dd", "-O", out_fmt, f"if={source}", f"of={theirs}", *operands)
        assert code == 0 and out == proc.stdout
        assert qemu_to_raw(ours, out_fmt, tmp_path / "a.raw") == \
            qemu_to_raw(theirs, out_fmt, tmp_path / "b.raw")


def test_dd_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "s.raw"
    make_image(source, "raw", MiB, [])
    for operands in (["of=x"], [f"if={source}", "of=x", "bs=0"], [f"if={source}", "of=x",
                     "bs=1M", "skip=2"], [f"if={source}", "of=x", "bogus=1"]):
        code, _, err = emu_img(capsys, "dd", *operands)
        assert code == 1 and err.count("\n") == 1, operands
    assert not (Path.cwd() / "x").exists()


# --- bench -----------------------------------------------------------------------------------

def test_bench_reads_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "d.vhdx"
    make_image(image, "vhdx", 8 * MiB, [])
    code, out, _ = emu_img(capsys, "bench", "-c", "100", "-s", "64k", image)
    theirs = qemu_img("bench", "-c", "100", "-s", "64k", image).stdout
    assert code == 0 and out.splitlines()[0] == theirs.splitlines()[0]
    assert out.splitlines()[1].startswith("Run completed in ")
    code, out, _ = emu_img(capsys, "bench", "-w", "-c", "64", "-d", "4", "-s", "128k",
                           "--pattern", "90", image)
    assert code == 0 and "64 write requests, 131072 bytes each, 4 in parallel" in out
    qemu_io(image, "vhdx", "read -P 90 0 8M")            # 64 x 128k covers the disk
    code, out, _ = emu_img(capsys, "bench", "-w", "-q", "--random", "7", "-c", "10", image)
    assert code == 0 and out == ""
    qemu_img("check", "-q", image)


# --- info ------------------------------------------------------------------------------------

def test_info_vmdk_like_qemu(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    image = tmp_path / "t.vmdk"
    qemu_img("create", "-q", "-f", "vmdk", "-o", "subformat=twoGbMaxExtentSparse", image, "3G")
    monkeypatch.chdir(tmp_path)
    code, out, _ = emu_img(capsys, "info", "--output", "json", "t.vmdk")
    ours = json.loads(out)
    theirs = qemu_img_info(Path("t.vmdk"))
    assert ours["dirty-flag"] is theirs["dirty-flag"] is False
    assert ours["cluster-size"] == theirs["cluster-size"]
    data, want = ours["format-specific"]["data"], theirs["format-specific"]["data"]
    for key in ("cid", "parent-cid", "create-type"):
        assert data[key] == want[key]
    for mine, qemus in zip(data["extents"], want["extents"], strict=True):
        for key in qemus:
            assert mine[key] == qemus[key], key
    code, out, _ = emu_img(capsys, "info", "t.vmdk")
    human = qemu_img("info", "t.vmdk").stdout
    # every line of qemu-img's tree is there, in order; emu adds its extras (access,
    # type, ...) after them (the empty "format:" of qemu's monolithic extents aside)
    tree = human[human.index("Format specific information:"):].splitlines()
    lines = iter(out[out.index("Format specific information:"):].splitlines())
    for line in tree:
        assert any(mine == line for mine in lines), line


# --- create / convert: -o help, -q ----------------------------------------------------------

@pytest.mark.parametrize("verb", ["create", "convert"])
def test_option_help_lists_every_create_option(verb: str, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    flag = "-f" if verb == "create" else "-O"
    for fmt in FORMATS:
        code, out, _ = emu_img(capsys, verb, flag, fmt, "-o", "help")
        assert code == 0
        theirs = qemu_img(verb, flag, fmt, "-o", "help").stdout.splitlines()
        assert out.splitlines()[0] == theirs[0]
        assert any(line.startswith("  size=<size>            - ") for line in theirs)
        assert out.splitlines()[1].startswith("  size=<size>            - ")
        names = {line.split("=")[0].strip() for line in out.splitlines()[1:]}
        assert names == {"size", *disks.driver_for(fmt).create_options}


def test_quiet_create_and_convert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert emu_img(capsys, "create", "-q", "-f", "vdi", tmp_path / "a.vdi", "4M")[:2] == (0, "")
    assert emu_img(capsys, "convert", "-q", "-O", "vpc", tmp_path / "a.vdi",
                   tmp_path / "b.vpc")[:2] == (0, "")
    code, _, err = emu_img(capsys, "create", "-f", "vdi")
    assert code == 1 and err.count("\n") == 1
