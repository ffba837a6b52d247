"""The ``emu`` pytest plugin: run guest code on disk images of every format, in emu or QEMU.

Registered as the ``pytest11`` entry point ``emu``, so any project that installs emu
gets these fixtures:

``disk_image``
    A factory making a disk image in the test's own temporary folder:
    ``disk_image("vdi", "16M", content={0: boot_sector})``.  Formats are the
    variants in :data:`DISK_FORMATS` (``raw``, ``vdi``, ``vpc``, ``vpc-fixed``,
    ``vmdk``, ``vhdx``).
``disk_format``
    Parametrized over every variant (narrow it with ``--emu-formats raw,vdi``):
    ``def test_x(disk_image, disk_format): disk_image(disk_format, "16M")``.
``emu_machine``
    A factory booting a machine on disks and returning a :class:`GuestRun` with
    the debug-exit code (0 = the guest wrote 0 to port 0xF4), the serial and
    debug-console transcripts, and the disk contents.  ``engine="qemu"`` runs the
    same firmware and disks in ``qemu-system-i386 -M pc`` for comparison.
``nasm``
    Assembles NASM source to bytes: ``nasm(source_or_path)``, ``nasm.boot_sector(code)``
    (512 bytes with the signature) and ``nasm.guest_program(code)`` (a multi-sector
    program on the firmware/tests/_guest.asm frame).  The test skips with a reason
    when nasm is absent, and fails under ``CI=true``.

Every artifact lives under the test's ``tmp_path``, so the plugin is safe under
pytest-xdist: each worker and test gets its own images and machines.  Machines run
as ``python -m emu run`` subprocesses, so a guest that wedges the emulator costs one
test, not the session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

import pytest

import disks
import firmware
from devices.geometry import bios_translation
from devices.geometry import drive_geometry as ata_drive_geometry

IN_CI = os.environ.get("CI") == "true"
SEABIOS = Path("/usr/share/seabios/bios.bin")
SECTOR = 512

# Format variant -> (driver format name, create options).  Names are qemu-img's.
DISK_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    "raw": ("raw", {}),
    "vdi": ("vdi", {}),
    "vpc": ("vpc", {}),
    "vpc-fixed": ("vpc", {"subformat": "fixed"}),
    "vmdk": ("vmdk", {}),
    "vhdx": ("vhdx", {}),
}

# Exit codes a GuestRun reports besides the guest's own debug-exit value.
EXIT_TIMEOUT = 124
EXIT_ENGINE_FAILED = 126

# QEMU's isa-debug-exit makes the process exit with (value << 1) | 1.
QEMU_DEBUG_EXIT = ["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]


def skip_or_fail(message: str) -> NoReturn:
    """A host tool the test needs is missing: skip locally, but fail under CI=true."""
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def need_tool(name: str) -> str:
    """Path of a host tool; skip the test when absent, but fail under CI=true."""
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name!r} is not installed (Debian package needed; .ci/run installs it)")
    return path


# ---------------------------------------------------------------- disk images

@dataclass(frozen=True)
class DiskImage:
    """An image file made by the ``disk_image`` factory."""

    path: Path
    variant: str

    @property
    def format(self) -> str:
        """The driver's (qemu-img) format name."""
        return DISK_FORMATS[self.variant][0]

    def contents(self) -> bytes:
        """Every byte of the virtual disk, as the guest sees it."""
        with disks.open(self.path, format=self.format, readonly=True) as image:
            return image.read(0, image.size)

    def read(self, offset: int, length: int) -> bytes:
        with disks.open(self.path, format=self.format, readonly=True) as image:
            return image.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        with disks.open(self.path, format=self.format) as image:
            image.write(offset, data)

    def to_raw(self, target: Path) -> Path:
        """A raw copy of the virtual disk (what QEMU is given for a fair comparison)."""
        with disks.open(self.path, format=self.format, readonly=True) as image, \
                open(target, "wb") as out:
            out.truncate(image.size)
            chunk = 1 << 20
            for offset in range(0, image.size, chunk):
                data = image.read(offset, min(chunk, image.size - offset))
                if data.count(0) != len(data):
                    out.seek(offset)
                    out.write(data)
        return target

    def geometry(self) -> tuple[disks.Geometry, str]:
        """The drive geometry and CMOS translation emu uses (so QEMU can be given the same)."""
        with disks.open(self.path, format=self.format, readonly=True) as image:
            return drive_geometry(image)


TRANSLATION_NAMES = {0: "none", 1: "lba", 2: "large", 3: "rechs"}  # QEMU's bios-chs-trans


def drive_geometry(image: disks.Image) -> tuple[disks.Geometry, str]:
    """The ATA drive geometry (IDENTIFY words 1/3/6) and BIOS translation emu uses."""
    return ata_drive_geometry(image), TRANSLATION_NAMES[int(bios_translation(image))]


Content = bytes | Mapping[int, bytes] | Path | None


def make_disk_image(folder: Path, variant: str = "raw", size: int | str = "16M", *,
                    content: Content = None, name: str | None = None,
                    **options: Any) -> DiskImage:
    """Create an image of ``variant`` and fill it: bytes at offset 0, ``{offset: bytes}``,
    or a raw file's contents."""
    if variant not in DISK_FORMATS:
        raise ValueError(f"unknown disk format {variant!r} (known: {', '.join(DISK_FORMATS)})")
    fmt, defaults = DISK_FORMATS[variant]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"disk-{variant}.{_suffix(fmt)}")
    with disks.create(path, fmt, size, **{**defaults, **options}) as image:
        for offset, data in _content_pieces(content):
            image.write(offset, data)
    return DiskImage(path, variant)


def _suffix(fmt: str) -> str:
    return {"vpc": "vhd"}.get(fmt, fmt)


def _content_pieces(content: Content) -> Iterable[tuple[int, bytes]]:
    if content is None:
        return
    if isinstance(content, bytes):
        yield 0, content
    elif isinstance(content, Path):
        with open(content, "rb") as source:
            offset = 0
            while chunk := source.read(1 << 20):
                if chunk.count(0) != len(chunk):
                    yield offset, chunk
                offset += len(chunk)
    else:
        yield from sorted(content.items())


# ---------------------------------------------------------------- machines

@dataclass
class GuestRun:
    """What one machine run produced."""

    engine: str
    exit_code: int
    serial: str
    debugcon: str
    disks: list[DiskImage]
    command: list[str] = field(default_factory=list)
    stderr: str = ""

    @cached_property
    def disk(self) -> bytes:
        """The first disk's contents after the run."""
        return self.disks[0].contents()

    def __str__(self) -> str:
        return (f"{self.engine} exit {self.exit_code}\n--- debugcon\n{self.debugcon}"
                f"\n--- serial\n{self.serial}\n--- stderr\n{self.stderr[-2000:]}")


def need_seabios() -> Path:
    """Debian's SeaBIOS ROM; skip the test when absent, but fail under CI=true."""
    if not SEABIOS.exists():
        skip_or_fail(f"{SEABIOS} is missing (Debian package seabios; .ci/run installs it)")
    return SEABIOS


def resolve_bios(bios: str | Path | None) -> Path | None:
    """``None`` = the engine's default (emu's built-in BIOS); ``"seabios"``; ``"ours"``; a path."""
    if bios is None:
        return None
    if bios == "seabios":
        return need_seabios()
    if bios == "ours":
        return firmware_file("bios.bin")
    if isinstance(bios, str) and "/" not in bios and not Path(bios).exists():
        return firmware_file(bios)
    return Path(bios)


def firmware_file(name: str) -> Path:
    """A ROM or program shipped in the ``firmware`` package."""
    return Path(firmware.path(name))


def run_machine(folder: Path, *disk_images: DiskImage | None, engine: str = "emu",
                bios: str | Path | None = None, timeout: float = 60.0,
                memory: str = "64M", readonly: bool = False,
                extra_args: Sequence[str] = (), icount: bool = True) -> GuestRun:
    """Boot ``disk_images`` under ``engine`` and wait for the end.

    ``icount`` (emu only): the deterministic mode, so a test sees the same run every
    time (the default); False passes ``--fast`` (JIT speed on wall time, experimental:
    see emu.machine's theory of operation).

    Disks attach in the order primary master, primary slave, secondary master,
    secondary slave; ``None`` leaves a position empty.  The run's ``disks`` are the
    attached ones, in that order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    run_id = len(list(folder.glob("run-*")))
    work = folder / f"run-{run_id}-{engine}"
    work.mkdir()
    serial, debugcon = work / "serial.txt", work / "debugcon.txt"
    rom = resolve_bios(bios)
    if engine == "emu":
        argv = [sys.executable, "-m", "emu", "run", "--memory", memory,
                "--serial", f"file:{serial}", "--debugcon", f"file:{debugcon}",
                "--timeout", str(timeout)]
        argv.append("--icount" if icount else "--fast")
        if rom is not None:
            argv += ["--bios", str(rom)]
        for index, image in enumerate(disk_images):
            if image is None:
                continue
            spec = f"{image.path},format={image.format},bus={index // 2},unit={index % 2}"
            argv += ["--disk", spec + (",readonly=on" if readonly else "")]
        used = [image for image in disk_images if image is not None]
    elif engine == "qemu":
        argv, used = _qemu_argv(work, disk_images, rom, memory, serial, debugcon)
    else:
        raise ValueError(f"unknown engine {engine!r} (emu or qemu)")
    argv += list(extra_args)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30,
                              env=env, stdin=subprocess.DEVNULL)
        code, stderr = _exit_code(engine, proc.returncode, proc.stderr), proc.stderr
    except subprocess.TimeoutExpired as expired:
        code = EXIT_TIMEOUT
        stderr = (expired.stderr or b"").decode(errors="replace") \
            if isinstance(expired.stderr, bytes) else (expired.stderr or "")
    return GuestRun(engine, code, _text(serial), _text(debugcon), used, argv, stderr)


def _qemu_argv(work: Path, disk_images: Sequence[DiskImage | None], rom: Path | None,
               memory: str,
               serial: Path, debugcon: Path) -> tuple[list[str], list[DiskImage]]:
    qemu = need_tool("qemu-system-i386")
    if rom is None:
        rom = firmware_file("bios.bin")
    # emu's debug console listens on 0xE9 and 0x402 (where SeaBIOS logs): QEMU gets both,
    # into one file, so the transcripts compare.
    argv = [qemu, "-M", "pc", "-nodefaults", "-display", "none", "-no-reboot",
            "-m", memory, "-bios", str(rom), "-serial", f"file:{serial}",
            "-chardev", f"file,id=debugcon,path={debugcon},mux=on",
            "-device", "isa-debugcon,iobase=0xe9,chardev=debugcon",
            "-device", "isa-debugcon,iobase=0x402,chardev=debugcon", *QEMU_DEBUG_EXIT]
    used = []
    for index, image in enumerate(disk_images):
        if image is None:
            continue
        # QEMU gets a raw copy with the geometry emu's drive uses, so both guests see the
        # same disk; the copy is what we compare afterwards.
        raw = DiskImage(image.to_raw(work / f"disk{index}.raw"), "raw")
        geometry, translation = image.geometry()
        argv += ["-drive", f"file={raw.path},format=raw,if=none,id=disk{index}",
                 "-device", f"ide-hd,drive=disk{index},bus=ide.{index // 2},unit={index % 2},"
                 f"cyls={geometry.cylinders},heads={geometry.heads},secs={geometry.sectors},"
                 f"bios-chs-trans={translation}"]
        used.append(raw)
    return argv, used


def _exit_code(engine: str, returncode: int, stderr: str) -> int:
    if engine == "emu":
        return returncode
    if returncode == 0:      # -no-reboot: the guest reset the machine (emu's code 0 too)
        return 0
    if returncode == 1 and "qemu-system" in stderr:
        return EXIT_ENGINE_FAILED  # QEMU's own failures exit 1, like a guest's value 0
    if returncode > 0 and returncode & 1:
        return returncode >> 1
    return EXIT_ENGINE_FAILED


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


# ---------------------------------------------------------------- NASM

class Assembler:
    """Assembles NASM source into flat binaries in a private folder."""

    def __init__(self, folder: Path, include_dirs: Sequence[Path] = ()) -> None:
        self.folder = folder
        self.include_dirs = list(include_dirs)
        self._count = 0

    def __call__(self, source: str | Path, *, defines: Mapping[str, object] | None = None
                 ) -> bytes:
        nasm = need_tool("nasm")
        self.folder.mkdir(parents=True, exist_ok=True)
        self._count += 1
        if isinstance(source, Path):
            source_path = source
            includes = [source.parent, *self.include_dirs]
        else:
            source_path = self.folder / f"program{self._count}.asm"
            source_path.write_text(source)
            includes = list(self.include_dirs)
        output = self.folder / f"program{self._count}.bin"
        argv = [nasm, "-f", "bin", "-o", str(output)]
        argv += [f"-I{directory}/" for directory in includes]
        argv += [f"-D{key}={value}" for key, value in (defines or {}).items()]
        proc = subprocess.run([*argv, str(source_path)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(f"nasm failed on {source_path}:\n{proc.stderr}")
        return output.read_bytes()

    def guest_program(self, body: str) -> bytes:
        """A guest test program on the firmware/tests/_guest.asm frame: ``body`` runs after
        the BIOS boots it, with PRINT, CHECK, CHECK_EQ, PASS and the INT 13h helpers."""
        return self(f'%include "_guest.asm"\n{body}\nGUEST_END\n')

    def boot_sector(self, source: str) -> bytes:
        """A 512-byte boot sector from 16-bit code loaded at 0000:7C00 (signature added)."""
        code = self(f"bits 16\norg 0x7C00\n{source}\n")
        if len(code) > SECTOR - 2:
            raise AssertionError(f"boot sector code is {len(code)} bytes (at most 510)")
        return code.ljust(SECTOR - 2, b"\0") + b"\x55\xaa"


# ---------------------------------------------------------------- fixtures

def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("emu")
    group.addoption("--emu-formats", default=None,
                    help="comma-separated disk formats for disk_format "
                         f"(default: all of {', '.join(DISK_FORMATS)})")


def selected_formats(config: pytest.Config) -> list[str]:
    option = config.getoption("--emu-formats", default=None)
    if not option:
        return list(DISK_FORMATS)
    chosen = [name.strip() for name in str(option).split(",") if name.strip()]
    unknown = [name for name in chosen if name not in DISK_FORMATS]
    if unknown:
        raise pytest.UsageError(f"--emu-formats: unknown {', '.join(unknown)}")
    return chosen


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "disk_format" in metafunc.fixturenames and not _parametrized(metafunc, "disk_format"):
        metafunc.parametrize("disk_format", selected_formats(metafunc.config))


def _parametrized(metafunc: pytest.Metafunc, name: str) -> bool:
    """Whether the test parametrizes ``name`` itself (then the plugin leaves it alone)."""
    for marker in metafunc.definition.iter_markers("parametrize"):
        names = marker.args[0]
        if isinstance(names, str):
            names = [part.strip() for part in names.split(",")]
        if name in names:
            return True
    return False


@pytest.fixture
def disk_image(tmp_path: Path) -> Callable[..., DiskImage]:
    """Factory: ``disk_image(variant="raw", size="16M", content=..., name=..., **options)``."""
    def factory(variant: str = "raw", size: int | str = "16M", **kwargs: Any) -> DiskImage:
        return make_disk_image(tmp_path / "disks", variant, size, **kwargs)
    return factory


@pytest.fixture
def emu_machine(tmp_path: Path) -> Callable[..., GuestRun]:
    """Factory: ``emu_machine(*disk_images, engine="emu", bios=None, timeout=60)``."""
    def factory(*disk_images: DiskImage | None, **kwargs: Any) -> GuestRun:
        return run_machine(tmp_path / "machines", *disk_images, **kwargs)
    return factory


@pytest.fixture
def nasm(tmp_path: Path) -> Assembler:
    """Assembler for guest programs; includes resolve in firmware/tests."""
    return Assembler(tmp_path / "nasm", [Path(__file__).resolve().parent.parent
                                         / "firmware" / "tests"])
