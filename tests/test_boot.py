"""Real boot loaders (SYSLINUX, GRUB 2) booted by emu from every image format.

The images are built with Debian's tools (tests/bootimages.py), converted to each
format with ``emu img convert``, booted with ``emu run`` under our BIOS and under
unmodified SeaBIOS, and the serial transcript is compared with QEMU's for the same
image and BIOS.  GRUB's ``save_env`` writes through INT 13h AH=43h: the new value must
be in the image file afterwards.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from bootimages import (
    GRUB_ENV_KEY,
    GRUB_MARKER,
    SYSLINUX_BANNER,
    build_grub,
    build_syslinux,
    grub_env,
)

from emu.pytest_plugin import DISK_FORMATS, DiskImage, GuestRun, selected_formats

BUILDERS = {"syslinux": build_syslinux, "grub": build_grub}
MARKERS = {"syslinux": f"Loading {SYSLINUX_BANNER}", "grub": GRUB_MARKER}
BIOSES = ("ours", "seabios")
TIMING = re.compile(r"\d+(\.\d+)?\s*(ms|s|sec|seconds)\b")


def normalized(serial: str) -> list[str]:
    """Transcript lines without carriage returns, blank lines or timing figures."""
    lines = (line.replace("\r", "").rstrip() for line in serial.split("\n"))
    return [TIMING.sub("<time>", line) for line in lines if line]


@pytest.fixture(scope="session")
def raw_boot_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One raw image per boot loader, built once per session (per xdist worker)."""
    folder = tmp_path_factory.mktemp("bootimages")
    return {name: build(folder / f"{name}.raw") for name, build in BUILDERS.items()}


def convert(raw: Path, variant: str, folder: Path) -> DiskImage:
    """``emu img convert`` the raw image to a format variant."""
    fmt, options = DISK_FORMATS[variant]
    target = folder / f"{raw.stem}-{variant}.img"
    argv = [sys.executable, "-m", "emu", "img", "convert", "-f", "raw", "-O", fmt]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    proc = subprocess.run([*argv, str(raw), str(target)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return DiskImage(target, variant)


def emu_img_to_raw(image: DiskImage, target: Path) -> Path:
    subprocess.run([sys.executable, "-m", "emu", "img", "convert", "-f", image.format,
                    "-O", "raw", str(image.path), str(target)], check=True, capture_output=True)
    return target


def assert_booted(run: GuestRun, loader: str) -> None:
    assert run.exit_code == 0, str(run)
    assert MARKERS[loader] in run.serial, str(run)


@pytest.mark.parametrize("bios", BIOSES)
@pytest.mark.parametrize("loader", sorted(BUILDERS))
def test_qemu_boots_the_raw_image(raw_boot_images, loader: str, bios: str, emu_machine,
                                  tmp_path: Path) -> None:
    """The images themselves are right: QEMU boots them to the marker and reboots."""
    image = DiskImage(raw_boot_images[loader], "raw")
    run = emu_machine(image, engine="qemu", bios=bios, timeout=60)
    assert_booted(run, loader)
    if loader == "grub":
        assert grub_env(run.disks[0].path).get(GRUB_ENV_KEY) == "first"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "boot_format" in metafunc.fixturenames:
        metafunc.parametrize("boot_format", selected_formats(metafunc.config))


@pytest.mark.parametrize("bios", BIOSES)
@pytest.mark.parametrize("loader", sorted(BUILDERS))
def test_emu_boots_like_qemu(raw_boot_images, loader: str, bios: str, boot_format: str,
                             emu_machine, tmp_path: Path) -> None:
    image = convert(raw_boot_images[loader], boot_format, tmp_path)
    if loader == "grub":
        assert GRUB_ENV_KEY not in grub_env(emu_img_to_raw(image, tmp_path / "before.raw"))
    qemu = emu_machine(image, engine="qemu", bios=bios, timeout=60)
    assert_booted(qemu, loader)
    emu = emu_machine(image, bios=bios, timeout=120)
    assert_booted(emu, loader)
    assert normalized(emu.serial) == normalized(qemu.serial)
    if loader == "grub":
        after = grub_env(emu_img_to_raw(image, tmp_path / "after.raw"))
        assert after.get(GRUB_ENV_KEY) == "first"
