"""Booting CD images: ISOs made with Debian's tools, under emu and QEMU, with both BIOSes.

The images are built here: ``grub-mkrescue`` (GRUB's i386-pc El Torito image plus
xorriso) with a grub.cfg that prints a marker on COM1 and reboots, and ``xorriso -as
mkisofs`` with ISOLINUX, whose isolinux.cfg chain-loads a small boot file of ours
that prints a marker on COM1 and the debug console and exits through port F4h (so
ISOLINUX has read its own files from the ISO 9660 tree through INT 13h first).
Each boots under ``qemu-system-i386 -cdrom X -boot d`` and ``emu run --cdrom X
--boot d`` with SeaBIOS and with emu's BIOS; every run must reach the marker and
end the way QEMU's does.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest
from conftest import need_tool

from emu.machine import EXIT_NO_BOOT
from emu.pytest_plugin import Assembler

GRUB_MARKER = "GRUB-ISO-MARKER"
ISOLINUX_MARKER = "ISOLINUX-CHAIN-MARKER"
ISOLINUX_DIR = Path("/usr/lib/ISOLINUX")
SYSLINUX_MODULES = Path("/usr/lib/syslinux/modules/bios")
BIOSES = ["seabios", "ours"]
ENGINES = ["qemu", "emu"]
NO_BOOT = "No bootable device."
QEMU_HALT_WAIT = 5            # QEMU just sits in the BIOS's final halt: stop it after this


def no_boot(emu_machine, engine: str, cdrom: Path | str) -> None:
    """Our BIOS prints the line and halts (emu: stops with EXIT_NO_BOOT; QEMU: stopped by
    the timeout)."""
    timeout = QEMU_HALT_WAIT if engine == "qemu" else 60
    run = emu_machine(engine=engine, cdrom=cdrom, boot="d", timeout=timeout)
    assert run.serial.replace("\r", "").splitlines() == [NO_BOOT], str(run)
    if engine == "emu":
        assert run.exit_code == EXIT_NO_BOOT, str(run)

GRUB_CFG = f"""serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry "marker" {{
  echo {GRUB_MARKER}
  reboot
}}
"""

ISOLINUX_CFG = """SERIAL 0 115200
PROMPT 0
TIMEOUT 1
DEFAULT marker
LABEL marker
  KERNEL marker.bin
"""

# A CD boot file ISOLINUX loads at 0000:7C00: the marker on COM1 and port E9h, exit 0.
MARKER_BOOT = f"""bits 16
org 0x7C00
    cli
    xor ax, ax
    mov ds, ax
    mov si, message
.next:
    lodsb
    test al, al
    jz .done
    mov dx, 0x3F8
    out dx, al
    out 0xE9, al
    jmp .next
.done:
    xor al, al
    out 0xF4, al
    hlt
message: db "{ISOLINUX_MARKER}", 13, 10, 0
"""

# A boot sector that says which device booted: "disk" on the debug console, exit 0.
DISK_BOOT = r"""
    mov si, message
.next:
    cs lodsb
    test al, al
    jz .done
    out 0xE9, al
    jmp .next
.done:
    xor al, al
    out 0xF4, al
    hlt
message: db "disk", 10, 0
"""


# The boot sector of the El Torito images booted through emulation (a 1.44 MB floppy, a
# hard disk with one partition): it prints its drive, reads CHS 0/0/2 and 1/1/3 through
# INT 13h AH=02h, asks AH=4B01h for the emulation status and AH=08h for the geometry,
# reads LBA 0 of the first real hard disk (numbered after an emulated one), and exits 0.
EMULATED_BOOT = r"""bits 16
org 0x7C00
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    sti
    mov [drive], dl
    mov si, hello
    call print
    mov al, dl
    call hex8
    call newline
    ; CHS 0/0/2 and 1/1/3 (image sector 56)
    mov cx, 0x0002
    xor dh, dh
    call read_print
    mov cx, 0x0103
    mov dh, 1
    call read_print
    ; El Torito status
    mov ax, 0x4B01
    mov dl, [drive]
    mov si, spec
    mov byte [spec], 0
    int 0x13
    mov al, 'S'
    jc .nospec
    mov al, 'M'
.nospec:
    call putc
    mov al, [spec + 1]
    call hex8
    mov al, [spec + 2]
    call hex8
    call newline
    ; AH=08h (for a floppy it points ES:DI at the diskette parameters)
    push es
    mov ah, 0x08
    mov dl, [drive]
    int 0x13
    mov al, 'P'
    call putc
    mov al, bl
    call hex8
    mov al, ch
    call hex8
    mov al, cl
    call hex8
    mov al, dh
    call hex8
    mov al, dl
    call hex8
    call newline
    pop es
    ; the first real hard disk, numbered after the emulated drive
    mov ax, 0x0201
    mov bx, 0x8000
    mov cx, 0x0001
    xor dh, dh
    mov dl, OTHER_DISK
    int 0x13
    mov al, 'D'
    jnc .disk_ok
    mov al, 'E'
.disk_ok:
    call putc
    mov si, 0x8000
    mov cx, 8
.dc: lodsb
    call putc
    loop .dc
    call newline
    xor al, al
    out 0xF4, al
    cli
    hlt
read_print:
    mov ax, 0x0201
    mov bx, 0x8000
    mov dl, [drive]
    int 0x13
    mov al, 'R'
    jnc .ok
    mov al, 'E'
.ok:
    call putc
    mov si, 0x8000
    mov cx, 8
.c: lodsb
    call putc
    loop .c
newline:
    mov al, 10
putc:
    out 0xE9, al
    push dx
    mov dx, 0x3F8
    out dx, al
    pop dx
    ret
print:
    lodsb
    test al, al
    jz .d
    call putc
    jmp print
.d: ret
hex8:
    push ax
    shr al, 4
    call .n
    pop ax
.n: and al, 0x0F
    add al, '0'
    cmp al, '9'
    jbe putc
    add al, 7
    jmp putc
hello: db NAME, " DL=", 0
drive: db 0
spec: times 20 db 0
    times 510 - ($ - $$) db 0
    dw 0xAA55
"""
FLOPPY_BYTES = 1474560
DISK_IMAGE_SECTORS = 1024       # 32 cylinders, 2 heads, 16 sectors; one partition from LBA 16
REAL_DISK_MARK = b"REALDISK"
FLOPPY_TRANSCRIPT = ("FLOPPY-EMU DL=00\n"     # the emulated drive is 00h
                     "RSECTOR2!\nRSECT56!!\n"  # image sectors 1 and 56
                     "M0200\n"                 # media type 2 (1.44M), drive 00h
                     "P044F120101\n"           # type 4, cylinders 0-79, 18 sectors, 2 heads, 1
                     "DREALDISK\n")            # the real disk stays 80h
# Hard-disk emulation: the image is 80h and the real disk 81h.  AH=08h differs by BIOS as
# for real disks: SeaBIOS keeps the last cylinder back and counts the drives its way.
DISK_TRANSCRIPT = "HD-EMU DL=80\nRSECTOR2!\nRSECT50!!\nM0480\n{geometry}\nDREALDISK\n"
DISK_GEOMETRY = {"ours": "P001F100102", "seabios": "P001E100103"}

def run_tool(*argv: str | Path) -> None:
    proc = subprocess.run([str(part) for part in argv], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def grub_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tool("grub-mkrescue")
    need_tool("xorriso")
    root = tmp_path_factory.mktemp("grub")
    tree = root / "tree" / "boot" / "grub"
    tree.mkdir(parents=True)
    (tree / "grub.cfg").write_text(GRUB_CFG)
    iso = root / "grub.iso"
    run_tool("grub-mkrescue", "-o", iso, root / "tree")
    return iso


@pytest.fixture(scope="module")
def isolinux_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tool("xorriso")
    need_tool("nasm")
    if not (ISOLINUX_DIR / "isolinux.bin").exists():
        pytest.fail(f"{ISOLINUX_DIR}/isolinux.bin is missing (Debian package isolinux)")
    root = tmp_path_factory.mktemp("isolinux")
    tree = root / "tree" / "isolinux"
    tree.mkdir(parents=True)
    (tree / "isolinux.bin").write_bytes((ISOLINUX_DIR / "isolinux.bin").read_bytes())
    (tree / "ldlinux.c32").write_bytes((SYSLINUX_MODULES / "ldlinux.c32").read_bytes())
    (tree / "isolinux.cfg").write_text(ISOLINUX_CFG)
    (tree / "marker.bin").write_bytes(Assembler(root / "nasm")(MARKER_BOOT))
    iso = root / "isolinux.iso"
    run_tool("xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-o", iso,
             "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat", "-no-emul-boot",
             "-boot-load-size", "4", "-boot-info-table", root / "tree")
    return iso


@pytest.mark.parametrize("bios", BIOSES)
@pytest.mark.parametrize("engine", ENGINES)
def test_grub_rescue_iso_boots(grub_iso: Path, emu_machine, engine: str, bios: str) -> None:
    run = emu_machine(engine=engine, bios=bios, cdrom=grub_iso, boot="d", timeout=90)
    assert run.exit_code == 0, str(run)        # GRUB's reboot ends both engines' runs
    assert GRUB_MARKER in run.serial, str(run)


@pytest.mark.parametrize("bios", BIOSES)
@pytest.mark.parametrize("engine", ENGINES)
def test_isolinux_iso_boots(isolinux_iso: Path, emu_machine, engine: str, bios: str) -> None:
    run = emu_machine(engine=engine, bios=bios, cdrom=isolinux_iso, boot="d", timeout=90)
    assert run.exit_code == 0, str(run)
    assert run.debugcon.endswith(ISOLINUX_MARKER + "\n"), str(run)
    assert "ISOLINUX" in run.serial and ISOLINUX_MARKER in run.serial, str(run)


@pytest.mark.parametrize("bios", BIOSES)
@pytest.mark.parametrize("engine", ENGINES)
def test_boot_order_picks_disk_or_cd(isolinux_iso: Path, emu_machine, disk_image, nasm,
                                     engine: str, bios: str) -> None:
    """Both BIOSes follow the boot order QEMU's -boot and emu's --boot publish (SeaBIOS
    reads it from CMOS under emu, from fw_cfg under QEMU)."""
    disk = disk_image("raw", "1M", content=nasm.boot_sector(DISK_BOOT))
    from_disk = emu_machine(disk, engine=engine, bios=bios, cdrom=isolinux_iso, boot="c",
                            timeout=60)
    assert from_disk.exit_code == 0 and from_disk.debugcon.endswith("disk\n"), str(from_disk)
    assert ISOLINUX_MARKER not in from_disk.debugcon
    from_cd = emu_machine(disk, engine=engine, bios=bios, cdrom=isolinux_iso, boot="dc",
                          timeout=60)
    assert from_cd.exit_code == 0, str(from_cd)
    assert from_cd.debugcon.endswith(ISOLINUX_MARKER + "\n"), str(from_cd)


@pytest.mark.parametrize("engine", ENGINES)
def test_empty_drive_is_no_bootable_device(emu_machine, engine: str) -> None:
    no_boot(emu_machine, engine, "")


@pytest.mark.parametrize("engine", ENGINES)
def test_a_disc_without_el_torito_does_not_boot(tmp_path: Path, emu_machine,
                                                engine: str) -> None:
    need_tool("xorriso")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "readme.txt").write_text("data only\n")
    iso = tmp_path / "data.iso"
    run_tool("xorriso", "-as", "mkisofs", "-quiet", "-o", iso, tmp_path / "tree")
    no_boot(emu_machine, engine, iso)


@pytest.fixture(scope="module")
def floppy_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tool("xorriso")
    need_tool("nasm")
    root = tmp_path_factory.mktemp("floppy")
    image = bytearray(FLOPPY_BYTES)
    image[:512] = Assembler(root / "nasm")(
        EMULATED_BOOT, defines={"OTHER_DISK": 0x80, "NAME": '"FLOPPY-EMU"'})
    image[512:520] = b"SECTOR2!"
    image[56 * 512:56 * 512 + 8] = b"SECT56!!"
    (root / "tree").mkdir()
    (root / "tree" / "floppy.img").write_bytes(bytes(image))
    iso = root / "floppy.iso"
    run_tool("xorriso", "-as", "mkisofs", "-quiet", "-o", iso, "-b", "floppy.img",
             "-c", "boot.cat", root / "tree")
    return iso


@pytest.fixture(scope="module")
def disk_emulation_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_tool("xorriso")
    need_tool("nasm")
    root = tmp_path_factory.mktemp("harddisk")
    image = bytearray(DISK_IMAGE_SECTORS * 512)
    image[:512] = Assembler(root / "nasm")(
        EMULATED_BOOT, defines={"OTHER_DISK": 0x81, "NAME": '"HD-EMU"'})
    # partition 1: active, CHS 0/1/1 to 31/1/16, type 01h, LBA 16, 1008 sectors
    image[0x1BE:0x1CE] = bytes([0x80, 1, 1, 0, 0x01, 1, 16, 31]) + struct.pack("<II", 16, 1008)
    image[510:512] = b"\x55\xaa"
    image[512:520] = b"SECTOR2!"
    image[50 * 512:50 * 512 + 8] = b"SECT50!!"
    (root / "tree").mkdir()
    (root / "tree" / "disk.img").write_bytes(bytes(image))
    iso = root / "disk.iso"
    run_tool("xorriso", "-as", "mkisofs", "-quiet", "-o", iso, "-hard-disk-boot",
             "-b", "disk.img", "-c", "boot.cat", root / "tree")
    return iso


@pytest.fixture
def real_disk(disk_image):
    return disk_image("raw", "1M", content=REAL_DISK_MARK)


@pytest.mark.parametrize("bios", BIOSES)
@pytest.mark.parametrize("engine", ENGINES)
def test_floppy_emulation_iso_boots(floppy_iso: Path, real_disk, emu_machine, engine: str,
                                    bios: str) -> None:
    """A 1.44 MB El Torito floppy image: drive 00h, CHS reads, 4Bh status, 08h geometry."""
    run = emu_machine(real_disk, engine=engine, bios=bios, cdrom=floppy_iso, boot="d",
                      timeout=60)
    assert run.exit_code == 0, str(run)
    assert run.debugcon.endswith(FLOPPY_TRANSCRIPT), str(run)


@pytest.mark.parametrize("bios", BIOSES)
@pytest.mark.parametrize("engine", ENGINES)
def test_hard_disk_emulation_iso_boots(disk_emulation_iso: Path, real_disk, emu_machine,
                                       engine: str, bios: str) -> None:
    """An El Torito hard-disk image: drive 80h with its partition's geometry, the real
    disk moved to 81h."""
    run = emu_machine(real_disk, engine=engine, bios=bios, cdrom=disk_emulation_iso,
                      boot="d", timeout=60)
    assert run.exit_code == 0, str(run)
    expected = DISK_TRANSCRIPT.format(geometry=DISK_GEOMETRY[bios])
    assert run.debugcon.endswith(expected), str(run)
