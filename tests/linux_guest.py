"""A stock Debian i386 Linux as a guest: ata_piix reads and writes every attached drive.

Theory of operation
-------------------
Packages.  Debian's ``linux-image-686`` / ``linux-image-686-pae`` (metapackages; the
kernel package they depend on is fetched too) and ``busybox-static``, architecture i386,
come from the host's apt sources with ``apt-get download`` (no root, nothing installed;
the host needs ``dpkg --add-architecture i386`` and ``apt-get update``, as .ci/run does).
The ``.deb`` files are kept in :func:`cache_dir` (``$EMU_TEST_CACHE`` or the repository's
gitignored ``.cache/``), so CI downloads them once per run and a developer once.  Each
package is unpacked with ``dpkg-deb -x`` into a temporary folder, and only what the guest
needs (``vmlinuz``, the config, the dozen modules ata_piix and sd need) is kept, also in
the cache.  A file lock makes this safe under pytest-xdist.

Initramfs.  Written here: a cpio "newc" archive (:class:`Cpio`), gzip-compressed, with
the static busybox, the modules, the write patterns and ``/init`` (:func:`init_script`).
``/init`` mounts proc, sysfs and devtmpfs, loads the modules, waits for every expected
drive, names each ``ataN.0D`` from its sysfs path (libata's port and device number, so
the names do not depend on probe order), and per drive:

1. reads the host area (written by :func:`write_host_pattern` before boot) with
   ``iflag=direct`` and through the page cache, and compares MD5s with the expected;
2. writes its pattern over the guest area with ``oflag=direct conv=fsync`` (1 MiB,
   multi-sector DMA) and a few odd sectors through the page cache with ``conv=fsync``;
   drops the caches and reads both back: MD5s must match;
3. prints the kernel's ATA lines (``EMU-DMESG:``), fails on errors, timeouts or
   "lost interrupt", prints :data:`PASS_MARKER` or ``FAIL_MARKER: why`` on ttyS0 and
   ends with ``reboot -f`` (so the machine's exit status is 0 either way; the marker
   tells).  ``panic=-1`` turns a crash of ``/init`` into a reset too.

Disk.  A SYSLINUX disk (tests/bootimages.py) whose FAT partition ends at
:data:`DATA_OFFSET`; the data area after it holds the host area and the guest area.  The
other drives (primary slave, secondary master and slave) are blank disks of the same
size with their own host pattern.  :func:`boot_disks` converts the set to any format
with the disks API (``emu img convert``'s engine).

Symbols.  Debian's kernel package ships a placeholder System.map; ``python
tests/linux_guest.py kallsyms`` boots the kernel in QEMU with ``emu.kallsyms`` on its
command line: ``/init`` then copies ``/proc/kallsyms`` onto the disk, and the harness
saves it as ``System.map`` in the cache, to name the EIPs of an emu stop report.

Command line: ``python tests/linux_guest.py build OUT.raw [--flavour 686-pae]
[--verbose]`` builds a boot disk (``--verbose`` drops ``quiet``), ``qemu OUT.raw`` boots
it under qemu-system-i386.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bootimages import build_syslinux  # noqa: E402

from emu.pytest_plugin import DiskImage, make_disk_image, skip_or_fail  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
SECTOR = 512

DISK_SIZE = 32 * MIB
DATA_OFFSET = 24 * MIB                 # the boot partition ends here; the test area follows
HOST_AREA = (DATA_OFFSET, 1 * MIB)     # written by the host, read by the guest
GUEST_AREA = (DATA_OFFSET + 1 * MIB, 1 * MIB)   # written by the guest with O_DIRECT
SMALL_WRITE = (DATA_OFFSET + 2 * MIB + 3 * SECTOR, 5 * SECTOR)  # odd sectors, page cache
DIRECT_BLOCK = 64 << 10                # dd block size for the O_DIRECT transfers

# The drives the test attaches, in the order primary master, primary slave, secondary
# master, secondary slave, by libata's names.
DRIVES = ("ata1.00", "ata1.01", "ata2.00", "ata2.01")

PASS_MARKER = "EMU-LINUX-PASS"
FAIL_MARKER = "EMU-LINUX-FAIL"
DMESG_PREFIX = "EMU-DMESG: "
XFER_PREFIX = "EMU-XFER: "             # a drive's transfer mode as libata set it
KALLSYMS_OPTION = "emu.kallsyms"
# Kernel log lines that must not appear (libata's and the block layer's complaints).
ATA_TROUBLE = re.compile(r"error|timeout|timed out|lost interrupt|exception Emask|"
                         r"failed command|hard resetting|soft resetting|limiting speed",
                         re.IGNORECASE)

FLAVOURS = ("686", "686-pae")
BUSYBOX_PACKAGE = "busybox-static"
# Modules loaded in this order (each after what its modinfo ``depends=`` names); the
# generic crypto drivers first, so crc-t10dif and crc64-rocksoft find their algorithms.
ROOT_MODULES = ("crct10dif_generic", "crc64_rocksoft_generic", "ata_piix", "sd_mod")
# nokaslr: fixed addresses, so System.map names EIPs; panic=-1: a dying /init resets the
# machine.  cryptomgr.notests and noisapnp skip the crypto self-tests and the ISA PnP scan,
# three quarters of the kernel's own start-up work (under QEMU /init starts at 1.7 s
# instead of 6 s), nothing the disk test needs.  noapic: interrupts through the 8259 as on
# emu's board (which has no APIC); QEMU's IO-APIC timer check can fail on a loaded host
# ("IO-APIC + timer doesn't work!" panic).
KERNEL_CMDLINE = "console=ttyS0,115200 nokaslr panic=-1 cryptomgr.notests noisapnp noapic"


# ---------------------------------------------------------------- packages

def cache_dir() -> Path:
    """Where downloaded packages and extracted kernels are kept between runs."""
    folder = Path(os.environ.get("EMU_TEST_CACHE") or ROOT / ".cache") / "linux"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def cache_lock() -> Iterator[None]:
    """One process at a time fills the cache (pytest-xdist workers share it)."""
    with open(cache_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(*argv: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc.stdout


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        skip_or_fail(f"{tool!r} is not installed (Debian's apt/dpkg are needed)")


def download(package: str) -> Path:
    """The i386 ``.deb`` of ``package`` in the cache, fetched with ``apt-get download``."""
    debs = cache_dir() / "debs"
    debs.mkdir(exist_ok=True)
    cached = sorted(debs.glob(f"{package}_*_i386.deb"))
    if cached:
        return cached[-1]
    _need("apt-get")
    try:
        _run("apt-get", "download", f"{package}:i386", cwd=debs)
    except RuntimeError as error:
        skip_or_fail(f"apt-get download {package}:i386 failed (needs `dpkg "
                     f"--add-architecture i386` and `apt-get update`): {error}")
    cached = sorted(debs.glob(f"{package}_*_i386.deb"))
    if not cached:
        raise RuntimeError(f"apt-get download {package}:i386 left no .deb in {debs}")
    return cached[-1]


def deb_field(deb: Path, name: str) -> str:
    return _run("dpkg-deb", "-f", deb, name).strip()


def kernel_package(flavour: str) -> Path:
    """The kernel ``.deb`` that Debian's ``linux-image-FLAVOUR`` metapackage points at."""
    meta = download(f"linux-image-{flavour}")
    match = re.search(rf"(linux-image-[0-9][^\s,(]*-{re.escape(flavour)})\b",
                      deb_field(meta, "Depends"))
    if match is None:
        raise RuntimeError(f"{meta.name}: no kernel package in its Depends field")
    return download(match.group(1))


@dataclass(frozen=True)
class Kernel:
    """An unpacked Debian kernel: what the guest needs of it."""

    flavour: str
    release: str                       # uname -r, e.g. 6.1.0-57-686
    folder: Path

    @property
    def vmlinuz(self) -> Path:
        return self.folder / "vmlinuz"

    @property
    def modules(self) -> Path:
        return self.folder / "modules"

    @property
    def system_map(self) -> Path:
        """The kernel's symbols, once ``kallsyms`` has saved them (see the module doc)."""
        return self.folder / "System.map"

    def module_order(self) -> list[str]:
        """Module names in load order: :data:`ROOT_MODULES` after their dependencies."""
        order: list[str] = []

        def visit(name: str) -> None:
            if name in order:
                return
            for dependency in module_depends(self.modules / f"{name}.ko"):
                visit(dependency)
            order.append(name)

        for root in ROOT_MODULES:
            visit(root)
        return order


def module_depends(path: Path) -> list[str]:
    """The ``depends=`` list of a module's .modinfo section."""
    match = re.search(rb"\0depends=([A-Za-z0-9_,-]*)\0", path.read_bytes())
    if match is None:
        raise RuntimeError(f"{path}: no depends= in its modinfo")
    return [name.replace("-", "_") for name in match.group(1).decode().split(",") if name]


def _module_files(tree: Path) -> dict[str, Path]:
    """Every module of an unpacked kernel package, by the name modinfo uses."""
    return {path.stem.replace("-", "_"): path for path in tree.glob("lib/modules/*/kernel/**/*.ko")}


def kernel(flavour: str = "686") -> Kernel:
    """Debian's i386 kernel of ``flavour`` (686 or 686-pae), unpacked into the cache."""
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown kernel flavour {flavour!r} (one of {', '.join(FLAVOURS)})")
    with cache_lock():
        deb = kernel_package(flavour)
        release = deb.name.split("_")[0].removeprefix("linux-image-")
        folder = cache_dir() / f"kernel-{release}-{deb.name.split('_')[1]}"
        if not (folder / "vmlinuz").exists():
            _unpack_kernel(deb, release, folder)
    return Kernel(flavour, release, folder)


def _unpack_kernel(deb: Path, release: str, folder: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="emu-kernel-", dir=cache_dir()) as scratch:
        tree = Path(scratch) / "tree"
        _run("dpkg-deb", "-x", deb, tree)
        staging = Path(scratch) / "kernel"
        (staging / "modules").mkdir(parents=True)
        shutil.copyfile(tree / "boot" / f"vmlinuz-{release}", staging / "vmlinuz")
        shutil.copyfile(tree / "boot" / f"config-{release}", staging / "config")
        available = _module_files(tree)
        wanted = list(ROOT_MODULES)
        while wanted:
            name = wanted.pop().replace("-", "_")
            target = staging / "modules" / f"{name}.ko"
            if target.exists():
                continue
            if name not in available:
                raise RuntimeError(f"{deb.name}: module {name} is not in the package")
            shutil.copyfile(available[name], target)
            wanted += module_depends(target)
        staging.rename(folder)


def busybox() -> Path:
    """The static i386 busybox binary, unpacked into the cache."""
    with cache_lock():
        deb = download(BUSYBOX_PACKAGE)
        target = cache_dir() / f"busybox-{deb.name.split('_')[1].replace('%3a', '-')}"
        if not target.exists():
            with tempfile.TemporaryDirectory(prefix="emu-busybox-", dir=cache_dir()) as scratch:
                _run("dpkg-deb", "-x", deb, scratch)
                shutil.copyfile(Path(scratch) / "bin" / "busybox", target.with_suffix(".tmp"))
                target.with_suffix(".tmp").rename(target)
    return target


# ---------------------------------------------------------------- initramfs

NEWC_MAGIC = b"070701"
NEWC_TRAILER = "TRAILER!!!"


@dataclass
class Cpio:
    """A cpio archive in the SVR4 "newc" format, the one the kernel unpacks as initramfs.

    Each entry is a 110-byte ASCII header (magic and thirteen 8-digit hex fields), the
    NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes.
    """

    entries: list[bytes] = field(default_factory=list)

    def _add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0),
             nlink: int = 1) -> None:
        encoded = name.encode() + b"\0"
        fields = (len(self.entries) + 1, mode, 0, 0, nlink, 0, len(data), 0, 0,
                  rdev[0], rdev[1], len(encoded), 0)
        header = NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)
        entry = header + encoded
        entry += b"\0" * (-len(entry) % 4) + data
        self.entries.append(entry + b"\0" * (-len(entry) % 4))

    def directory(self, name: str) -> None:
        self._add(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._add(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def bytes(self) -> bytes:
        trailer = Cpio()
        trailer._add(NEWC_TRAILER, 0)
        return b"".join(self.entries) + trailer.entries[0]


def guest_pattern(drive: str) -> bytes:
    """What the guest writes over a drive's guest area: text lines naming drive and block."""
    lines = b"".join(b"%s guest block %06d emu ata_piix pattern\n" % (drive.encode(), n)
                     for n in range(GUEST_AREA[1] // 40 + 1))
    return lines[:GUEST_AREA[1]]


def small_pattern(drive: str) -> bytes:
    return (f"{drive} page-cache write ".encode() * SMALL_WRITE[1])[:SMALL_WRITE[1]]


def host_pattern(drive: str) -> bytes:
    """What the host writes into a drive's host area before boot (hash-chained bytes)."""
    seed = hashlib.sha256(f"emu host area {drive}".encode()).digest()
    blocks = []
    for index in range(HOST_AREA[1] // len(seed)):
        seed = hashlib.sha256(seed + index.to_bytes(4, "little")).digest()
        blocks.append(seed)
    return b"".join(blocks)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def init_script(modules: Sequence[str], drives: Sequence[str] = DRIVES) -> str:
    """The busybox shell script run as /init (see the module docstring)."""
    host_start, host_size = HOST_AREA
    guest_start, guest_size = GUEST_AREA
    small_start, small_size = SMALL_WRITE
    expected = " ".join(f"{drive}={md5(host_pattern(drive))}" for drive in drives)
    return f"""#!/bin/sh
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
FAILED=""
fail() {{ echo "EMU-LINUX: FAIL $*"; FAILED="$FAILED; $*"; }}
finish() {{
    dmesg | grep -E 'ata[0-9]|scsi|sd [0-9]|\\[sd[a-z]\\]|piix|ATA|lost interrupt' > /tmp/ata.log
    sed 's/^/{DMESG_PREFIX}/' /tmp/ata.log
    if grep -iqE '{ATA_TROUBLE.pattern}' /tmp/ata.log; then fail "ATA trouble in the kernel log"; fi
    if [ -z "$FAILED" ]; then echo {PASS_MARKER}; else echo "{FAIL_MARKER}:$FAILED"; fi
    sync
    reboot -f
}}
echo "EMU-LINUX: init on $(uname -r)"
# module.option=value words of the kernel command line (modprobe's job; insmod's here)
module_options() {{
    for word in $(cat /proc/cmdline); do
        case $word in $1.*=*) echo "${{word#$1.}}";; esac
    done
}}
for module in {' '.join(modules)}; do
    insmod /lib/modules/$module.ko $(module_options $module) || fail "insmod $module"
done
# libata's name of a block device: ataP.0D from its sysfs path (host, target 0:0:D).
drive_name() {{
    path=$(readlink -f /sys/block/$1)
    echo "$path" | sed -n \\
        's|.*/\\(ata[0-9]*\\)/host[0-9]*/target[0-9:]*/[0-9]*:[0-9]*:\\([0-9]*\\):.*|\\1.0\\2|p'
}}
find_drive() {{
    for block in /sys/block/sd*; do
        [ -e "$block" ] || continue
        dev=${{block##*/}}
        if [ "$(drive_name $dev)" = "$1" ]; then echo $dev; return; fi
    done
}}
if grep -q {KALLSYMS_OPTION} /proc/cmdline; then
    waited=0
    while [ ! -b /dev/sda ] && [ $waited -lt 300 ]; do sleep 0.1; waited=$((waited + 1)); done
    cat /proc/kallsyms | gzip > /kallsyms.gz
    echo "EMU-KALLSYMS: $(wc -c < /kallsyms.gz)"
    dd if=/kallsyms.gz of=/dev/sda bs=512 seek={DATA_OFFSET // SECTOR} conv=fsync 2>/dev/null
    finish
fi
# md5 of COUNT blocks of BS bytes from block SKIP of /dev/$dev; $4: more dd flags
area_md5() {{ dd if=/dev/$dev bs=$1 skip=$2 count=$3 $4 2>/dev/null | md5sum | cut -d' ' -f1; }}
file_md5() {{ md5sum < "$1" | cut -d' ' -f1; }}
expect() {{ [ "$2" = "$3" ] || fail "$drive: $1: md5 $2, want $3"; }}
for entry in {expected}; do
    drive=${{entry%%=*}}; want=${{entry#*=}}
    dev=""; waited=0
    while [ -z "$dev" ] && [ $waited -lt 600 ]; do
        dev=$(find_drive $drive)
        [ -n "$dev" ] && [ -b /dev/$dev ] && break
        dev=""; sleep 0.1; waited=$((waited + 1))
    done
    if [ -z "$dev" ]; then fail "$drive: no block device"; continue; fi
    port=${{drive%%.*}}; number=${{drive#*.}}
    echo "EMU-LINUX: $drive is /dev/$dev, $(cat /sys/block/$dev/size) sectors," \\
         "$(cat /sys/block/$dev/device/model)"
    echo "{XFER_PREFIX}$drive $(cat /sys/class/ata_device/dev${{port#ata}}.${{number#0}}/xfer_mode)"
    expect "host area, O_DIRECT read" \\
        "$(area_md5 {DIRECT_BLOCK} {host_start // DIRECT_BLOCK} {host_size // DIRECT_BLOCK} \\
           iflag=direct)" $want
    echo 3 > /proc/sys/vm/drop_caches
    expect "host area, page-cache read" \\
        "$(area_md5 4096 {host_start // 4096} {host_size // 4096})" $want
    dd if=/patterns/$drive.guest of=/dev/$dev bs={DIRECT_BLOCK} \\
        seek={guest_start // DIRECT_BLOCK} oflag=direct conv=fsync 2>/dev/null \\
        || fail "$drive: O_DIRECT write failed"
    dd if=/patterns/$drive.small of=/dev/$dev bs={SECTOR} seek={small_start // SECTOR} \\
        conv=fsync,notrunc 2>/dev/null || fail "$drive: page-cache write failed"
    sync
    echo 3 > /proc/sys/vm/drop_caches
    expect "O_DIRECT write read back" \\
        "$(area_md5 {DIRECT_BLOCK} {guest_start // DIRECT_BLOCK} {guest_size // DIRECT_BLOCK} \\
           iflag=direct)" "$(file_md5 /patterns/$drive.guest)"
    expect "page-cache write read back" \\
        "$(area_md5 {SECTOR} {small_start // SECTOR} {small_size // SECTOR})" \\
        "$(file_md5 /patterns/$drive.small)"
    echo "EMU-LINUX: $drive read/write checked"
done
finish
"""


def build_initramfs(target: Path, kernel_: Kernel, drives: Sequence[str] = DRIVES) -> Path:
    """A gzip-compressed newc initramfs with busybox, the modules and /init."""
    archive = Cpio()
    for folder in ("bin", "dev", "proc", "sys", "lib", "lib/modules", "patterns", "tmp"):
        archive.directory(folder)
    archive.char_device("dev/console", 5, 1)
    archive.char_device("dev/null", 1, 3, 0o666)
    archive.file("bin/busybox", busybox().read_bytes(), 0o755)
    archive.symlink("bin/sh", "busybox")
    modules = kernel_.module_order()
    for name in modules:
        archive.file(f"lib/modules/{name}.ko", (kernel_.modules / f"{name}.ko").read_bytes())
    for drive in drives:
        archive.file(f"patterns/{drive}.guest", guest_pattern(drive))
        archive.file(f"patterns/{drive}.small", small_pattern(drive))
    archive.file("init", init_script(modules, drives).encode(), 0o755)
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=9, mtime=0) as compressed:
        compressed.write(archive.bytes())
    target.write_bytes(buffer.getvalue())
    return target


# ---------------------------------------------------------------- disks

def syslinux_config(append: str) -> str:
    return f"""SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT linux
LABEL linux
  KERNEL vmlinuz
  INITRD initrd.gz
  APPEND {append}
"""


def kernel_cmdline(verbose: bool = False, extra: str = "") -> str:
    return " ".join(filter(None, (KERNEL_CMDLINE, "" if verbose else "quiet", extra)))


def write_host_pattern(path: Path, drive: str) -> None:
    with open(path, "r+b") as disk:
        disk.seek(HOST_AREA[0])
        disk.write(host_pattern(drive))


def build_boot_disk(path: Path, flavour: str = "686", *, verbose: bool = False,
                    extra_cmdline: str = "", drives: Sequence[str] = DRIVES) -> Path:
    """A raw SYSLINUX disk booting Debian's kernel with the test initramfs; the host area
    holds the first drive's pattern."""
    kernel_ = kernel(flavour)
    initrd = build_initramfs(path.parent / f"{path.stem}.initrd.gz", kernel_, drives)
    build_syslinux(path, syslinux_config(kernel_cmdline(verbose, extra_cmdline)),
                   {"vmlinuz": kernel_.vmlinuz, "initrd.gz": initrd}, modules=(),
                   disk_size=DISK_SIZE, partition_end=DATA_OFFSET)
    write_host_pattern(path, drives[0])
    return path


def build_data_disk(path: Path, drive: str) -> Path:
    """A blank raw disk with ``drive``'s host pattern."""
    with open(path, "wb") as disk:
        disk.truncate(DISK_SIZE)
    write_host_pattern(path, drive)
    return path


def build_raw_set(folder: Path, flavour: str = "686", **options: object) -> list[Path]:
    """Raw images for every drive in :data:`DRIVES` (the first boots)."""
    folder.mkdir(parents=True, exist_ok=True)
    boot = build_boot_disk(folder / "boot.raw", flavour, **options)  # type: ignore[arg-type]
    return [boot] + [build_data_disk(folder / f"{drive}.raw", drive) for drive in DRIVES[1:]]


def boot_disks(raw_set: Sequence[Path], variant: str, folder: Path) -> list[DiskImage]:
    """The raw set converted to a format variant (raw, vdi, vpc, vpc-fixed, vmdk, vhdx)."""
    return [make_disk_image(folder, variant, DISK_SIZE, content=raw,
                            name=f"{raw.stem}.{variant}") for raw in raw_set]


# ---------------------------------------------------------------- checking a run

@dataclass(frozen=True)
class Outcome:
    """What the serial console says about one boot."""

    passed: bool
    failures: list[str]
    dmesg: list[str]
    lines: list[str]
    xfer_modes: dict[str, str]         # drive -> libata's transfer mode (MWDMA2, PIO4, ...)

    @classmethod
    def parse(cls, serial: str) -> Outcome:
        lines = [line.rstrip("\r") for line in serial.split("\n")]
        dmesg = [line[len(DMESG_PREFIX):] for line in lines if line.startswith(DMESG_PREFIX)]
        failures = [line for line in lines if line.startswith((FAIL_MARKER, "EMU-LINUX: FAIL"))]
        modes = dict(line[len(XFER_PREFIX):].partition(" ")[::2] for line in lines
                     if line.startswith(XFER_PREFIX))
        return cls(PASS_MARKER in lines, failures, dmesg, lines, modes)

    def trouble(self) -> list[str]:
        """Kernel log lines reporting ATA errors, timeouts or lost interrupts."""
        return [line for line in self.dmesg if ATA_TROUBLE.search(line)]


def expected_contents(drive: str, original: bytes) -> bytes:
    """A drive's contents after a passing run: the original with the guest's writes."""
    data = bytearray(original)
    for (offset, size), pattern in ((GUEST_AREA, guest_pattern(drive)),
                                    (SMALL_WRITE, small_pattern(drive))):
        data[offset:offset + size] = pattern
    return bytes(data)


# ---------------------------------------------------------------- command line

def qemu_argv(disks: Sequence[Path], serial: Path, memory: str = "128M",
              bios: str | None = None) -> list[str]:
    argv = ["qemu-system-i386", "-M", "pc", "-m", memory, "-nodefaults", "-display", "none",
            "-no-reboot", "-serial", f"file:{serial}"]
    if bios:
        argv += ["-bios", bios]
    for index, disk in enumerate(disks):
        argv += ["-drive", f"file={disk},format=raw,if=ide,index={index}"]
    return argv


def save_kallsyms(flavour: str, work: Path) -> Path:
    """Boot ``flavour`` in QEMU with ``emu.kallsyms``: its /proc/kallsyms becomes the
    cached System.map."""
    kernel_ = kernel(flavour)
    boot = build_boot_disk(work / "kallsyms.raw", flavour, extra_cmdline=KALLSYMS_OPTION,
                           drives=DRIVES[:1])
    serial = work / "kallsyms.serial"
    _run(*qemu_argv([boot], serial), timeout=300)
    with open(boot, "rb") as disk:
        disk.seek(DATA_OFFSET)
        data = disk.read(HOST_AREA[1] * 8)
    # the gzip stream ends inside the area: decompressobj stops there (gzip.open would not)
    kernel_.system_map.write_bytes(zlib.decompressobj(wbits=31).decompress(data))
    return kernel_.system_map


def symbolize(system_map: Path, addresses: Sequence[int]) -> list[str]:
    """``name+0xoffset`` for each address, from a System.map (kallsyms) file."""
    import bisect
    table = sorted((int(address, 16), name) for address, _kind, name, *_ in
                   (line.split() for line in system_map.read_text().splitlines())
                   if int(address, 16))
    starts = [start for start, _ in table]
    names = []
    for address in addresses:
        index = bisect.bisect_right(starts, address) - 1
        names.append(f"{address:08x} {table[index][1]}+{address - starts[index]:#x}"
                     if index >= 0 else f"{address:08x} ?")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(description="Debian i386 Linux guest for emu's tests")
    verbs = parser.add_subparsers(dest="verb", required=True)
    build = verbs.add_parser("build", help="build the raw drive set into a folder")
    build.add_argument("folder", type=Path)
    build.add_argument("--flavour", default="686", choices=FLAVOURS)
    build.add_argument("--verbose", action="store_true", help="kernel without 'quiet'")
    build.add_argument("--append", default="", help="more kernel command line")
    symbols = verbs.add_parser("kallsyms", help="save the kernel's System.map via QEMU")
    symbols.add_argument("--flavour", default="686", choices=FLAVOURS)
    verbs.add_parser("fetch", help="download and unpack every package into the cache")
    names = verbs.add_parser("sym", help="name kernel addresses (after kallsyms)")
    names.add_argument("address", nargs="+", type=lambda text: int(text, 16))
    names.add_argument("--flavour", default="686", choices=FLAVOURS)
    args = parser.parse_args(argv)
    if args.verb == "fetch":
        for flavour in FLAVOURS:
            print(kernel(flavour).folder)
        print(busybox())
        return 0
    if args.verb == "sym":
        print("\n".join(symbolize(kernel(args.flavour).system_map, args.address)))
        return 0
    if args.verb == "build":
        for path in build_raw_set(args.folder, args.flavour, verbose=args.verbose,
                                  extra_cmdline=args.append):
            print(path)
    else:
        with tempfile.TemporaryDirectory(prefix="emu-kallsyms-") as work:
            print(save_kallsyms(args.flavour, Path(work)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
