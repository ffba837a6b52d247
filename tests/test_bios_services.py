"""Our BIOS's services as a guest sees them, under QEMU, emu and (for geometry) SeaBIOS.

The program is a boot sector that loads the rest of itself (CHS read, AH=02h) and then
calls BIOS services, printing one line per call on the debug console (port 0xE9):
``NAME cf=C ax=XXXX bx=XXXX cx=XXXX dx=XXXX`` with the registers the call returned,
plus a few lines of decoded results.  Values that depend on wall time (ticks, the
clock) are not printed, so two correct machines print the same transcript.  It ends
through the debug-exit port with 0.

The host puts a pattern at LBA 8..15 (byte i of LBA L = (L * 7 + i) & 0xFF) before
booting, so the program can check reads against it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from guests import qemu_pc_argv

from emu.pytest_plugin import DiskImage, GuestRun, firmware_file, need_seabios

PATTERN_LBA = 8
PATTERN_SECTORS = 8


def pattern(lba: int) -> bytes:
    return bytes((lba * 7 + i) & 0xFF for i in range(512))


def pattern_content() -> dict[int, bytes]:
    return {lba * 512: pattern(lba) for lba in range(PATTERN_LBA, PATTERN_LBA + PATTERN_SECTORS)}


LINE = re.compile(r"^(\S+)\s*(.*)$")


def parse(transcript: str) -> dict[str, str]:
    """NAME -> the rest of its line (the last line of a name wins)."""
    lines = {}
    for line in transcript.splitlines():
        match = LINE.match(line.strip())
        if match:
            lines[match.group(1)] = match.group(2)
    return lines


def fields(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


GUEST_SOURCE = r"""
cpu 386
bits 16
org 0x7C00

DBG         equ 0xE9
EXIT        equ 0xF4
PATTERN_LBA equ 8
BUF         equ 0x9000          ; 4 KiB buffers at 0000:9000 and 0000:A000
BUF2        equ 0xA000
EDD         equ 0xB000

%macro PUTS 1
    jmp %%after
%%text: db %1, 0
%%after:
    push si
    mov si, %%text
    call puts
    pop si
%endmacro

%macro INT13_DRIVE 0            ; INT 13h on the boot drive, then print the registers
    mov dl, [drive]
    int 0x13
    call dump
%endmacro

%macro INT13_PACKET 0           ; the same with DS:SI = the disk address packet
    mov dl, [drive]
    mov si, packet
    int 0x13
    call dump
%endmacro

%macro CHECK_PATTERN 2          ; print whether %2 sectors at DS:%1 hold the LBA 8.. pattern
    mov si, %1
    mov bx, PATTERN_LBA
    mov cx, %2
    call compare_pattern
    call print_same
%endmacro

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    sti
    cld
    mov [drive], dl
    mov ax, 0x0200 + PROGRAM_SECTORS
    mov cx, 0x0002
    xor dh, dh
    mov bx, 0x7E00
    int 0x13
    jc .failed
    jmp main
.failed:
    mov al, 2
    out EXIT, al
    cli
    hlt

drive: db 0
    times 510 - ($ - $$) db 0
    dw 0xAA55

; ---------------------------------------------------------------- helpers
puts:
    push ax
.next:
    lodsb
    test al, al
    jz .done
    out DBG, al
    jmp .next
.done:
    pop ax
    ret

newline:
    push ax
    mov al, 10
    out DBG, al
    pop ax
    ret

space:
    push ax
    mov al, ' '
    out DBG, al
    pop ax
    ret

hex4:                           ; low nibble of AL
    push ax
    and al, 0x0F
    add al, '0'
    cmp al, '9'
    jbe .digit
    add al, 'A' - '0' - 10
.digit:
    out DBG, al
    pop ax
    ret

hex8:
    push ax
    push ax
    shr al, 4
    call hex4
    pop ax
    call hex4
    pop ax
    ret

hex16:
    xchg al, ah
    call hex8
    xchg al, ah
    call hex8
    ret

hex32:
    ror eax, 16
    call hex16
    ror eax, 16
    call hex16
    ret

; prints " cf=C ax=.... bx=.... cx=.... dx=....\n" for the registers and flags it was called with
dump:
    pushf
    pusha
    mov bp, sp
    PUTS " cf="
    mov al, [bp + 16]
    and al, 1
    call hex4
    PUTS " ax="
    mov ax, [bp + 14]
    call hex16
    PUTS " bx="
    mov ax, [bp + 8]
    call hex16
    PUTS " cx="
    mov ax, [bp + 12]
    call hex16
    PUTS " dx="
    mov ax, [bp + 10]
    call hex16
    call newline
    popa
    popf
    ret

; fill CX sectors at ES:DI with the host's pattern for LBA starting at EBX... (pattern of LBA L)
; compare CX sectors at DS:SI with the pattern of LBA BX -> ZF
compare_pattern:
    push ax
    push cx
    push dx
.sector:
    xor dx, dx
.byte:
    mov al, bl
    mov ah, 7
    mul ah
    add al, dl
    cmp [si], al
    jne .done
    inc si
    inc dx
    cmp dx, 512
    jb .byte
    inc bx
    loop .sector
    cmp al, al
.done:
    pop dx
    pop cx
    pop ax
    ret

; DAP helpers: set the packet for AX sectors at LBA EBX (high dword 0) into ES:DI
set_packet:
    mov byte [packet], 16
    mov byte [packet + 1], 0
    mov [packet + 2], ax
    mov [packet + 4], di
    mov [packet + 6], es
    mov [packet + 8], ebx
    mov dword [packet + 12], 0
    ret

print_packet_count:
    PUTS "  count="
    mov ax, [packet + 2]
    call hex16
    call newline
    ret

packet: times 16 db 0
total_lo: dd 0
total_hi: dd 0

; ---------------------------------------------------------------- the calls
main:
    PUTS "41"
    mov ah, 0x41
    mov bx, 0x55AA
    INT13_DRIVE

    PUTS "08"
    mov ah, 0x08
    INT13_DRIVE
    mov [geometry_cx], cx
    mov [geometry_dh], dh

    PUTS "08b"
    mov ah, 0x08
    mov dl, 0x81
    int 0x13
    call dump

    PUTS "15"
    mov ah, 0x15
    INT13_DRIVE

    ; ---- 48h, full EDD 3.0 buffer
    mov di, EDD
    mov cx, 0x42
    mov al, 0xFF
    rep stosb
    mov word [EDD], 0x42
    PUTS "48"
    mov ah, 0x48
    mov dl, [drive]
    mov si, EDD
    int 0x13
    call dump
    PUTS "edd size="
    mov ax, [EDD]
    call hex16
    PUTS " flags="
    mov ax, [EDD + 2]
    call hex16
    PUTS " cyl="
    mov eax, [EDD + 4]
    call hex32
    PUTS " heads="
    mov eax, [EDD + 8]
    call hex32
    PUTS " spt="
    mov eax, [EDD + 12]
    call hex32
    PUTS " sectors="
    mov eax, [EDD + 20]
    call hex32
    mov eax, [EDD + 16]
    call hex32
    PUTS " bps="
    mov ax, [EDD + 24]
    call hex16
    PUTS " key="
    mov ax, [EDD + 30]
    call hex16
    PUTS " len="
    mov al, [EDD + 32]
    call hex8
    PUTS " host="
    mov si, EDD + 36
    mov cx, 3
.host:
    lodsb
    out DBG, al
    loop .host
    PUTS " iface="
    mov si, EDD + 40
    mov cx, 3
.iface:
    lodsb
    out DBG, al
    loop .iface
    PUTS " path="
    mov eax, [EDD + 48]
    call hex32
    PUTS " device="
    mov al, [EDD + 56]
    call hex8
    PUTS " sum="
    mov si, EDD + 30
    mov cx, 36
    xor ah, ah
.sum:
    lodsb
    add ah, al
    loop .sum
    mov al, ah
    call hex8
    ; the DPTE it points to
    push es
    les di, [EDD + 26]
    PUTS " dpte_port="
    mov ax, [es:di]
    call hex16
    PUTS " dpte_ctl="
    mov ax, [es:di + 2]
    call hex16
    PUTS " dpte_head="
    mov al, [es:di + 4]
    call hex8
    PUTS " dpte_irq="
    mov al, [es:di + 6]
    call hex8
    PUTS " dpte_options="
    mov ax, [es:di + 10]
    call hex16
    PUTS " dpte_sum="
    mov cx, 16
    xor ah, ah
.dpte_sum:
    add ah, [es:di]
    inc di
    loop .dpte_sum
    mov al, ah
    call hex8
    pop es
    call newline
    mov eax, [EDD + 16]
    mov [total_lo], eax
    mov eax, [EDD + 20]
    mov [total_hi], eax

    ; ---- 48h with a version 1 buffer, then a too small one
    mov di, EDD
    mov cx, 0x42
    mov al, 0xEE
    rep stosb
    mov word [EDD], 0x1A
    PUTS "48v1"
    mov ah, 0x48
    mov dl, [drive]
    mov si, EDD
    int 0x13
    call dump
    PUTS "edd1 size="
    mov ax, [EDD]
    call hex16
    PUTS " after="
    mov ax, [EDD + 0x1A]
    call hex16
    call newline
    mov word [EDD], 0x10
    PUTS "48tiny"
    mov ah, 0x48
    mov dl, [drive]
    mov si, EDD
    int 0x13
    call dump

    PUTS "00"
    mov ah, 0x00
    INT13_DRIVE
    PUTS "0D"
    mov ah, 0x0D
    INT13_DRIVE
    PUTS "10"
    mov ah, 0x10
    INT13_DRIVE
    PUTS "11"
    mov ah, 0x11
    INT13_DRIVE
    PUTS "14"
    mov ah, 0x14
    INT13_DRIVE
    PUTS "0C"
    mov ah, 0x0C
    mov cx, 0x0001
    xor dh, dh
    INT13_DRIVE
    PUTS "04"
    mov ax, 0x0403
    mov cx, 0x0001
    xor dh, dh
    INT13_DRIVE

    ; ---- reads
    PUTS "42mbr"
    mov ax, 1
    xor ebx, ebx
    mov di, BUF
    call set_packet
    mov ah, 0x42
    INT13_PACKET
    PUTS "mbr sig="
    mov ax, [BUF + 510]
    call hex16
    call newline

    PUTS "42pattern"
    mov ax, 8
    mov ebx, PATTERN_LBA
    mov di, BUF
    call set_packet
    mov ah, 0x42
    INT13_PACKET
    CHECK_PATTERN BUF, 8

    ; CHS: LBA 8 is cylinder 0, head 0, sector 9 (any geometry with >= 16 sectors per track)
    PUTS "02pattern"
    mov ax, 0x0203
    mov cx, 0x0009
    xor dh, dh
    mov dl, [drive]
    mov bx, BUF2
    int 0x13
    call dump
    CHECK_PATTERN BUF2, 3

    ; across a 64 KiB boundary: 1000:FE00 .. 1000:11FF+
    PUTS "42wrap"
    push es
    mov ax, 0x1000
    mov es, ax
    mov ax, 4
    mov ebx, PATTERN_LBA
    mov di, 0xFE00
    call set_packet
    pop es
    mov ah, 0x42
    INT13_PACKET
    push ds
    mov ax, 0x1FE0
    mov ds, ax
    xor si, si
    mov bx, PATTERN_LBA
    mov cx, 4
    call compare_pattern
    pop ds
    call print_same

    ; ---- writes: 43h to LBA 20..22 from the pattern read above, read back with 02h
    PUTS "43"
    mov ax, 3
    mov ebx, 20
    mov di, BUF
    call set_packet
    mov ax, 0x4300
    INT13_PACKET
    call print_packet_count
    PUTS "02back"
    mov ax, 0x0203
    mov cx, 21                  ; sector 21 = LBA 20
    xor dh, dh
    mov dl, [drive]
    mov bx, BUF2
    int 0x13
    call dump
    CHECK_PATTERN BUF2, 3
    ; 03h: write LBA 30 (sector 31) from BUF (pattern of LBA 8)
    PUTS "03"
    mov ax, 0x0301
    mov cx, 31
    xor dh, dh
    mov dl, [drive]
    mov bx, BUF
    int 0x13
    call dump

    ; ---- errors
    PUTS "42end"
    mov ax, 1
    mov ebx, [total_lo]
    mov di, BUF
    call set_packet
    mov ah, 0x42
    INT13_PACKET
    call print_packet_count
    PUTS "42straddle"
    mov ax, 2
    mov ebx, [total_lo]
    dec ebx
    mov di, BUF
    call set_packet
    mov ah, 0x42
    INT13_PACKET
    call print_packet_count
    PUTS "01"
    mov ah, 0x01
    INT13_DRIVE
    PUTS "bda status="
    push es
    mov ax, 0x40
    mov es, ax
    mov al, [es:0x74]
    call hex8
    PUTS " hdcount="
    mov al, [es:0x75]
    call hex8
    pop es
    call newline
    PUTS "42badpacket"
    mov ax, 1
    xor ebx, ebx
    mov di, BUF
    call set_packet
    mov byte [packet], 8
    mov ah, 0x42
    INT13_PACKET
    PUTS "02sector0"
    mov ax, 0x0201
    mov cx, 0x0000
    xor dh, dh
    mov dl, [drive]
    mov bx, BUF
    int 0x13
    call dump
    PUTS "02count0"
    mov ax, 0x0200
    mov cx, 0x0001
    xor dh, dh
    mov dl, [drive]
    mov bx, BUF
    int 0x13
    call dump
    PUTS "02head"
    mov ax, 0x0201
    mov cx, 0x0001
    mov dh, 0xFF
    mov dl, [drive]
    mov bx, BUF
    int 0x13
    call dump
    PUTS "99"
    mov ah, 0x99
    INT13_DRIVE
    PUTS "45"
    mov ax, 0x4500
    INT13_DRIVE
    PUTS "floppy08"
    mov ah, 0x08
    xor dl, dl
    int 0x13
    call dump
    PUTS "floppy00"
    mov ah, 0x00
    xor dl, dl
    int 0x13
    call dump
    PUTS "absent02"
    mov ax, 0x0201
    mov cx, 0x0001
    xor dh, dh
    mov dl, 0x85
    mov bx, BUF
    int 0x13
    call dump
    PUTS "41bad"
    mov ah, 0x41
    mov bx, 0x1234
    INT13_DRIVE
    PUTS "44"
    mov ax, 2
    mov ebx, 1
    mov di, BUF
    call set_packet
    mov ah, 0x44
    INT13_PACKET
    PUTS "47"
    mov ah, 0x47
    INT13_PACKET

    ; ---- other services
    PUTS "int11"
    int 0x11
    call dump
    PUTS "int12"
    int 0x12
    call dump
    PUTS "e801"
    mov ax, 0xE801
    int 0x15
    call dump
    PUTS "88"
    mov ah, 0x88
    int 0x15
    call dump
    xor ebx, ebx
.e820:
    mov eax, 0xE820
    mov edx, 0x534D4150
    mov ecx, 24
    mov di, BUF
    int 0x15
    jc .e820_done
    PUTS "e820_"
    mov al, bl
    call hex8
    PUTS " base="
    mov eax, [BUF + 4]
    call hex32
    mov eax, [BUF]
    call hex32
    PUTS " length="
    mov eax, [BUF + 12]
    call hex32
    mov eax, [BUF + 8]
    call hex32
    PUTS " type="
    mov eax, [BUF + 16]
    call hex32
    PUTS " ecx="
    mov al, cl
    call hex8
    call newline
    test ebx, ebx
    jnz .e820
.e820_done:
    PUTS "2403"
    mov ax, 0x2403
    int 0x15
    call dump
    PUTS "2401"
    mov ax, 0x2401
    int 0x15
    call dump
    PUTS "2402"
    mov ax, 0x2402
    int 0x15
    call dump
    PUTS "86"
    mov ah, 0x86
    xor cx, cx
    mov dx, 20000
    int 0x15
    call dump
    PUTS "5300"
    mov ax, 0x5300
    xor bx, bx
    int 0x15
    call dump
    PUTS "c0"
    push es
    mov ah, 0xC0
    int 0x15
    call dump
    PUTS "c0 model="
    mov al, [es:bx + 2]
    call hex8
    call newline
    pop es
    PUTS "1a00 cf="
    mov ah, 0x00
    int 0x1A
    pushf
    pop ax
    and ax, 1
    call hex4
    call newline
    PUTS "1a02 cf="
    mov ah, 0x02
    int 0x1A
    pushf
    pop ax
    and ax, 1
    call hex4
    call newline
    PUTS "1a04 cf="
    mov ah, 0x04
    int 0x1A
    pushf
    pop ax
    and ax, 1
    call hex4
    PUTS " century_bcd="
    mov al, ch
    shr al, 4
    cmp al, 2
    setbe al
    call hex4
    call newline
    xor bx, bx
    xor cx, cx
    xor dx, dx
    PUTS "10_0f"
    mov ah, 0x0F
    int 0x10
    call dump
    PUTS "10_12"
    mov ah, 0x12
    mov bl, 0x10
    int 0x10
    call dump
    PUTS "10_1a"
    mov ax, 0x1A00
    int 0x10
    call dump
    PUTS "10_02"
    mov ah, 0x02
    xor bh, bh
    mov dx, 0x0A05
    int 0x10
    mov ah, 0x03
    xor bh, bh
    int 0x10
    call dump
    PUTS "10_09"
    mov ax, 0x0941
    mov bx, 0x001E
    mov cx, 3
    int 0x10
    call dump
    PUTS "16_01"
    mov ah, 0x01
    int 0x16
    pushf
    pop ax
    shr ax, 6
    and al, 1
    PUTS " zf="
    call hex4
    call newline
    ; the last BIOS CHS address, and cylinder 513 (bit 9 of the cylinder in CL), head 1,
    ; sector 2: what is there (the host tags those sectors in the translation test)
    PUTS "chslast"
    mov cx, [geometry_cx]
    mov dh, [geometry_dh]
    call read_tag
    PUTS "chs513"
    mov cx, 0x0182
    mov dh, 1
    call read_tag
    PUTS "done"
    call newline
    xor al, al
    out EXIT, al
    cli
    hlt

; read CHS CX/DH into BUF; print the call and the first 8 bytes there
read_tag:
    mov dword [BUF], 0
    mov dword [BUF + 4], 0
    mov ax, 0x0201
    mov dl, [drive]
    mov bx, BUF
    int 0x13
    call dump
    PUTS "  tag="
    mov si, BUF
    mov cx, 8
.byte:
    lodsb
    cmp al, ' '
    ja .print
    mov al, '.'
.print:
    out DBG, al
    loop .byte
    call newline
    ret

geometry_cx: dw 0
geometry_dh: db 0

print_same:
    jne .differ
    PUTS "  data=same"
    call newline
    ret
.differ:
    PUTS "  data=DIFFERENT"
    call newline
    ret

program_end:
PROGRAM_SECTORS equ (program_end - $$ - 512 + 511) / 512
"""


# ---------------------------------------------------------------- tests

# What our BIOS answers on a 16 MiB disk (drive geometry 32/16/63, no translation) with
# 64 MiB of RAM, whatever the machine.
EXPECTED_16M = {
    "41": "cf=0 ax=3007 bx=AA55 cx=0005 dx=0080",       # EDD 3.0, 42h-44h/47h/48h + DPTE
    "08": "cf=0 ax=0000 bx=AA55 cx=1F3F dx=0F01",       # cylinders 0-31, 63 sectors, 16 heads
    "08b": "cf=1 ax=0100 bx=AA55 cx=1F3F dx=0F81",      # no drive 81h: 01h
    "15": "cf=0 ax=0300 bx=AA55 cx=0000 dx=7E00",       # fixed disk, 32*16*63 sectors
    "edd": ("size=0042 flags=0002 cyl=00000020 heads=00000010 spt=0000003F "
            "sectors=0000000000008000 bps=0200 key=BEDD len=24 host=PCI iface=ATA "
            "path=00010100 device=00 sum=00 dpte_port=01F0 dpte_ctl=03F6 dpte_head=E0 "
            "dpte_irq=0E dpte_options=0010 dpte_sum=00"),
    "edd1": "size=001A after=EEEE",                      # a v1 buffer is not overrun
    "48tiny": "cf=1 ax=01EE bx=AA55 cx=0000 dx=7E80",
    "04": "cf=0 ax=0003 bx=AA55 cx=0001 dx=0080",
    "mbr": "sig=AA55",
    "42pattern": "cf=0 ax=0008 bx=0008 cx=0001 dx=0080",
    "02pattern": "cf=0 ax=0003 bx=A000 cx=0009 dx=0080",
    "42wrap": "cf=0 ax=0004 bx=0008 cx=0003 dx=0080",
    "43": "cf=0 ax=0000 bx=0014 cx=0004 dx=0080",
    "02back": "cf=0 ax=0003 bx=A000 cx=0015 dx=0080",
    "03": "cf=0 ax=0001 bx=9000 cx=001F dx=0080",
    "42end": "cf=1 ax=0401 bx=8000 cx=001F dx=0080",     # past the end: 04h, nothing moved
    "42straddle": "cf=1 ax=0402 bx=7FFF cx=001F dx=0080",
    "01": "cf=1 ax=0400 bx=7FFF cx=001F dx=0080",        # last status
    "bda": "status=04 hdcount=01",
    "42badpacket": "cf=1 ax=0101 bx=0000 cx=001F dx=0080",
    "02sector0": "cf=1 ax=0100 bx=9000 cx=0000 dx=0080",
    "02count0": "cf=1 ax=0100 bx=9000 cx=0001 dx=0080",
    "02head": "cf=1 ax=0100 bx=9000 cx=0001 dx=FF80",
    "99": "cf=1 ax=0100 bx=9000 cx=0001 dx=FF80",
    "45": "cf=1 ax=0100 bx=9000 cx=0001 dx=FF80",
    "floppy08": "cf=1 ax=0100 bx=9000 cx=0001 dx=FF00",
    "floppy00": "cf=1 ax=0100 bx=9000 cx=0001 dx=FF00",
    "absent02": "cf=1 ax=0101 bx=9000 cx=0001 dx=0085",
    "41bad": "cf=1 ax=0101 bx=1234 cx=0001 dx=0080",
    "44": "cf=0 ax=0002 bx=0001 cx=0001 dx=0080",
    "47": "cf=0 ax=0002 bx=0001 cx=0001 dx=0080",
    "int12": "cf=0 ax=027F bx=0001 cx=0001 dx=0080",     # 639 KiB: 1 KiB of EBDA
    "e801": "cf=0 ax=3C00 bx=0300 cx=3C00 dx=0300",
    "88": "cf=0 ax=FC00 bx=0300 cx=3C00 dx=0300",
    "e820_01": "base=0000000000000000 length=000000000009FC00 type=00000001 ecx=14",
    "e820_02": "base=000000000009FC00 length=0000000000000400 type=00000002 ecx=14",
    "e820_03": "base=00000000000F0000 length=0000000000010000 type=00000002 ecx=14",
    "e820_04": "base=0000000000100000 length=0000000003F00000 type=00000001 ecx=14",
    "e820_00": "base=00000000FFFC0000 length=0000000000040000 type=00000002 ecx=14",
    "2403": "cf=0 ax=0003 bx=0003 cx=0014 dx=4150",
    "2401": "cf=0 ax=0001 bx=0003 cx=0014 dx=4150",
    "2402": "cf=0 ax=0001 bx=0003 cx=0014 dx=4150",
    "86": "cf=0 ax=0001 bx=0003 cx=0000 dx=4E20",
    "5300": "cf=1 ax=8600 bx=0000 cx=0000 dx=4E20",      # APM: not present
    "c0": "model=FC",
    "1a00": "cf=0",
    "1a02": "cf=0",
    "1a04": "cf=0 century_bcd=1",
    "10_0f": "cf=0 ax=5003 bx=0000 cx=0000 dx=0000",     # mode 3, 80 columns, page 0
    "10_12": "cf=0 ax=1203 bx=0003 cx=0009 dx=0000",
    "10_1a": "cf=0 ax=1A1A bx=0008 cx=0009 dx=0000",
    "10_02": "cf=0 ax=031A bx=0008 cx=0607 dx=0A05",
    "16_01": "zf=1",
}
DATA_CHECKS = 4          # "data=same" lines: 42h, 02h, 42h across 64 KiB, 02h after 43h


@pytest.fixture
def guest_disk(nasm, disk_image) -> DiskImage:
    program = nasm(GUEST_SOURCE)
    return disk_image("raw", "16M", content={0: program, **pattern_content()})


def check_transcript(run: GuestRun) -> dict[str, str]:
    assert run.exit_code == 0, str(run)
    lines = parse(run.debugcon)
    assert "done" in lines, str(run)
    mismatches = {name: (lines.get(name), expected) for name, expected in EXPECTED_16M.items()
                  if lines.get(name) != expected}
    assert not mismatches, f"{mismatches}\n{run}"
    assert run.debugcon.count("data=same") == DATA_CHECKS, run.debugcon
    assert "DIFFERENT" not in run.debugcon
    # int 11h: FPU, 80x25 colour, one serial port per UART the machine has
    equipment = int(fields(lines["int11"])["ax"], 16)
    assert equipment & 0xF1FF == 0x0022
    assert (equipment >> 9) & 7 >= 1
    return lines


def check_disk_writes(run: GuestRun) -> None:
    """43h wrote LBA 20..22 and 03h LBA 30 with the pattern of LBA 8..10 / LBA 8."""
    disk = run.disks[0]
    assert disk.read(20 * 512, 3 * 512) == b"".join(pattern(lba) for lba in (8, 9, 10))
    assert disk.read(30 * 512, 512) == pattern(8)


def test_services_under_qemu(guest_disk: DiskImage, emu_machine) -> None:
    run = emu_machine(guest_disk, engine="qemu", bios="ours", timeout=60)
    check_transcript(run)
    check_disk_writes(run)


def test_services_under_emu_match_qemu(guest_disk: DiskImage, emu_machine) -> None:
    qemu = emu_machine(guest_disk, engine="qemu", bios="ours", timeout=60)
    emu = emu_machine(guest_disk, bios="ours", timeout=120)
    check_transcript(emu)
    check_disk_writes(emu)

    def comparable(run: GuestRun) -> list[str]:
        return [line for line in run.debugcon.splitlines() if not line.startswith("int11")]
    assert comparable(emu) == comparable(qemu)


# ---------------------------------------------------------------- geometry translation

# (disk size in sectors, drive geometry, CMOS translation) as QEMU publishes them
TRANSLATION_CASES = [
    (32768, (32, 16, 63), "none"),
    (1228800, (1219, 16, 63), "none"),       # no translation: BIOS cylinders stop at 1024
    (1228800, (1219, 16, 63), "lba"),
    (1228800, (1219, 16, 63), "large"),
    (1228800, (1219, 16, 63), "rechs"),
    (8388608, (8322, 16, 63), "lba"),
    (8388608, (8322, 16, 63), "large"),
    (20971520, (16383, 16, 63), "lba"),      # past 1024 x 255 x 63: the 255-head ceiling
    (4194304, (4161, 16, 63), "rechs"),
]


def run_qemu(bios: Path, disk: Path, geometry: tuple[int, int, int], translation: str,
             work: Path) -> str:
    debugcon = work / f"debugcon-{bios.stem}-{translation}.txt"
    cylinders, heads, sectors = geometry
    argv = qemu_pc_argv(bios, "-m", "64M", "-debugcon", f"file:{debugcon}",
                        "-drive", f"file={disk},format=raw,if=none,id=disk0",
                        "-device", f"ide-hd,drive=disk0,bus=ide.0,unit=0,cyls={cylinders},"
                        f"heads={heads},secs={sectors},bios-chs-trans={translation}")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1, proc.stderr       # debug-exit value 0
    return debugcon.read_text()


def bios_chs(line: str) -> tuple[int, int, int]:
    """INT 13h AH=08h registers -> (last cylinder, heads, sectors per track)."""
    regs = fields(line)
    cx, dx = int(regs["cx"], 16), int(regs["dx"], 16)
    return ((cx >> 8) | ((cx & 0xC0) << 2), (dx >> 8) + 1, cx & 0x3F)


@pytest.mark.parametrize(("sectors", "geometry", "translation"), TRANSLATION_CASES)
def test_translation_agrees_with_seabios(nasm, tmp_path: Path, sectors: int,
                                         geometry: tuple[int, int, int],
                                         translation: str) -> None:
    """SeaBIOS reads the same CMOS translation: same heads and sectors per track, and a
    cylinder count one higher (SeaBIOS hides the last cylinder; we report them all)."""
    seabios = need_seabios()
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as image:
        image.truncate(sectors * 512)
        image.write(nasm(GUEST_SOURCE))
        for offset, data in pattern_content().items():
            image.seek(offset)
            image.write(data)
    ours = parse(run_qemu(firmware_file("bios.bin"), disk, geometry, translation, tmp_path))
    theirs = parse(run_qemu(seabios, disk, geometry, translation, tmp_path))
    our_cylinder, our_heads, our_sectors = bios_chs(ours["08"])
    their_cylinder, their_heads, their_sectors = bios_chs(theirs["08"])
    assert (our_heads, our_sectors) == (their_heads, their_sectors)
    assert our_cylinder == their_cylinder + 1
    assert our_cylinder + 1 <= 1024
    # 15h counts every BIOS-addressable sector; EDD gives the true capacity and geometry
    total = int(fields(ours["15"])["cx"], 16) << 16 | int(fields(ours["15"])["dx"], 16)
    assert total == (our_cylinder + 1) * our_heads * our_sectors <= sectors
    # CHS addresses reach the sectors the geometry says: tag them and boot again
    last = (our_cylinder + 1) * our_heads * our_sectors - 1
    tags = {last: b"LASTCHS!"}
    if our_cylinder >= 513:
        tags[(513 * our_heads + 1) * our_sectors + 1] = b"CYL513!!"
    with open(disk, "r+b") as image:
        for lba, tag in tags.items():
            image.seek(lba * 512)
            image.write(tag)
    tagged = run_qemu(firmware_file("bios.bin"), disk, geometry, translation, tmp_path)
    tagged_lines = tagged.splitlines()
    assert "  tag=LASTCHS!" in tagged_lines, tagged
    if our_cylinder >= 513:
        assert "  tag=CYL513!!" in tagged_lines, tagged
    edd = fields(ours["edd"])
    assert int(edd["sectors"], 16) == sectors
    assert (int(edd["cyl"], 16), int(edd["heads"], 16), int(edd["spt"], 16)) == geometry
    assert edd["flags"] == ("0002" if sectors <= 16383 * 16 * 63 else "0000")


def test_debugcon_is_quiet(guest_disk: DiskImage, emu_machine) -> None:
    """The BIOS itself prints nothing on the debug console: transcripts are the guest's."""
    run = emu_machine(guest_disk, engine="qemu", bios="ours", timeout=60)
    assert run.debugcon.splitlines()[0].startswith("41 ")


def test_memory_above_4g_under_qemu(guest_disk: DiskImage, emu_machine) -> None:
    """4.5 GiB: QEMU keeps 3 GiB below 4 GiB and reports the rest in CMOS 5Bh-5Dh."""
    run = emu_machine(guest_disk, engine="qemu", bios="ours", timeout=60, memory="4608M")
    assert run.exit_code == 0, str(run)
    lines = parse(run.debugcon)
    assert lines["e801"] == "cf=0 ax=3C00 bx=BF00 cx=3C00 dx=BF00"   # 15 MiB, 3 GiB - 16 MiB
    assert lines["88"].startswith("cf=0 ax=FFFF ")
    ram = [(fields(text)["base"], fields(text)["length"]) for name, text in lines.items()
           if name.startswith("e820_") and fields(text)["type"] == "00000001"]
    assert sorted(ram) == [("0000000000000000", "000000000009FC00"),
                           ("0000000000100000", "00000000BFF00000"),
                           ("0000000100000000", "0000000060000000")]


@pytest.mark.parametrize("memory", ["128M", "3G"])
def test_e820_follows_the_memory_size_like_qemu(guest_disk: DiskImage, emu_machine,
                                                memory: str) -> None:
    """128 MiB is the default, 3 GiB the largest --memory: the BIOS's E820 map (from the
    CMOS memory-size registers) covers exactly the RAM, under both engines."""
    qemu = emu_machine(guest_disk, engine="qemu", bios="ours", timeout=60, memory=memory)
    emu = emu_machine(guest_disk, bios="ours", timeout=120, memory=memory)

    def e820(run: GuestRun) -> list[str]:
        return [line for line in run.debugcon.splitlines() if line.startswith("e820")]
    extended = parse(emu.debugcon)["e820_04"]
    size = parse_size_text(memory)
    assert f"length={size - 0x100000:016X} type=00000001" in extended
    assert e820(emu) == e820(qemu)


def parse_size_text(text: str) -> int:
    return int(text[:-1]) << {"M": 20, "G": 30}[text[-1]]
