"""INT 10h text output (screen cells and the COM1 mirror), the timer tick (INT 1Ah/1Ch) and
the INT 15h AH=87h block move.

The text buffer is checked under emu only: QEMU started with ``-nodefaults`` has no VGA,
so B800:0000 reads back nothing useful there.  The COM1 mirror and the timer are checked
under both.
"""

from __future__ import annotations

import pytest
from guests import HEX_OUTPUT

from emu.pytest_plugin import GuestRun

VIDEO_GUEST = r"""
DBG equ 0xE9
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7C00
    sti
    mov ax, 0x0003              ; mode 3, cleared
    int 0x10
    mov ax, 0x0E48              ; "Hi" by teletype at 0,0
    int 0x10
    mov ax, 0x0E69
    int 0x10
    mov ah, 0x03
    xor bh, bh
    int 0x10
    mov ax, dx
    call hex16_line             ; cursor: row 0, column 2
    mov dx, 0x050A              ; 09h: three 'X' in attribute 1Fh at 5,10
    call goto
    mov ax, 0x0958
    mov bx, 0x001F
    mov cx, 3
    int 0x10
    mov dx, 0x0000
    call cell                   ; 'H' 07h
    mov dx, 0x050A
    call cell                   ; 'X' 1Fh
    mov dx, 0x050C
    call cell                   ; 'X' 1Fh
    mov dx, 0x050D
    call cell                   ; blank
    ; 06h: scroll rows 4..5, columns 10..11 up one line, new line in attribute 20h
    mov ax, 0x0601
    mov bh, 0x20
    mov cx, 0x040A
    mov dx, 0x050B
    int 0x10
    mov dx, 0x040A
    call cell                   ; 'X' 1Fh moved up
    mov dx, 0x050A
    call cell                   ; ' ' 20h
    mov dx, 0x050C
    call cell                   ; outside the window: 'X' 1Fh
    ; 07h: scroll the same window down one line
    mov ax, 0x0701
    mov bh, 0x30
    mov cx, 0x040A
    mov dx, 0x050B
    int 0x10
    mov dx, 0x040A
    call cell                   ; ' ' 30h
    mov dx, 0x050A
    call cell                   ; 'X' 1Fh back
    ; teletype at the last cell wraps and scrolls the screen
    mov dx, 0x184F
    call goto
    mov ax, 0x0E5A
    int 0x10
    mov ah, 0x03
    xor bh, bh
    int 0x10
    mov ax, dx
    call hex16_line             ; cursor: row 24, column 0
    mov dx, 0x174F
    call cell                   ; 'Z' moved up to row 23
    mov dx, 0x040A
    call cell                   ; 'X' 1Fh (was at row 5)
    ; 13h: "ok" in attribute 4Eh at 2,3, cursor moved after it
    push es
    push cs
    pop es
    mov bp, string
    mov ax, 0x1301
    mov bx, 0x004E
    mov cx, 2
    mov dx, 0x0203
    int 0x10
    pop es
    mov ah, 0x03
    xor bh, bh
    int 0x10
    mov ax, dx
    call hex16_line             ; cursor: row 2, column 5
    mov dx, 0x0204
    call cell                   ; 'k' 4Eh
    ; INT 14h: COM1 status, then one byte straight to COM1
    mov ah, 0x03
    xor dx, dx
    int 0x14
    and ah, 0x60                ; transmitter empty and ready
    mov al, ah
    xor ah, ah
    call hex16_line
    mov ax, 0x0121
    xor dx, dx
    int 0x14
    xor al, al
    out 0xF4, al
    cli
    hlt

string: db "ok"

goto:
    mov ah, 0x02
    xor bh, bh
    int 0x10
    ret

cell:                           ; print the character and attribute at DX
    call goto
    mov ah, 0x08
    xor bh, bh
    int 0x10
hex16_line:                     ; AX in hex, then a newline
    call hex16
    mov al, 10
    out DBG, al
    ret
""" + HEX_OUTPUT

EXPECTED_CELLS = [
    "0002",
    "0748", "1F58", "1F58", "0720",
    "1F58", "2020", "1F58",
    "3020", "1F58",
    "1800", "075A", "1F58",
    "0205", "4E6B",
    "0060",
]

TIMER_GUEST = r"""
DBG equ 0xE9
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7C00
    mov word [0x1C * 4], user_tick      ; chain INT 1Ch
    mov word [0x1C * 4 + 2], 0
    sti
    mov ah, 0x00
    int 0x1A
    mov [before], dx
    mov ah, 0x86                        ; wait 0.5 s = about 9 ticks
    mov cx, 0x0007
    mov dx, 0xA120
    int 0x15
    mov ah, 0x00
    int 0x1A
    sub dx, [before]
    mov al, 'T'
    cmp dx, 7
    jb .slow
    cmp dx, 40
    ja .slow
    mov al, 't'
.slow:
    out DBG, al
    mov al, 'C'
    cmp word [user_ticks], 7
    jb .chain
    mov al, 'c'
.chain:
    out DBG, al
    mov al, 10
    out DBG, al
    xor al, al
    out 0xF4, al
    cli
    hlt

user_tick:
    inc word [cs:user_ticks]
    iret
user_ticks: dw 0
before: dw 0
"""


def boot(engine: str, nasm, disk_image, emu_machine, source: str) -> GuestRun:
    image = disk_image("raw", "1M", content=nasm.boot_sector(source))
    run = emu_machine(image, engine=engine, bios="ours", timeout=60)
    assert run.exit_code == 0, str(run)
    return run


@pytest.mark.parametrize("engine", ["qemu", "emu"])
def test_text_output_reaches_screen_and_com1(engine: str, nasm, disk_image,
                                             emu_machine) -> None:
    run = boot(engine, nasm, disk_image, emu_machine, VIDEO_GUEST)
    # every character written by 0Eh and 09h is mirrored on COM1, in order
    # (then 13h's "ok", and "!" sent with INT 14h)
    assert run.serial == "HiXXXZok!", str(run)
    lines = run.debugcon.splitlines()
    for index in (0, 10, 13, 15):                           # cursors and COM1 status
        assert lines[index] == EXPECTED_CELLS[index], str(run)
    if engine == "emu":
        assert lines == EXPECTED_CELLS, str(run)


@pytest.mark.parametrize("engine", ["qemu", "emu"])
def test_timer_ticks_and_int1c_chain(engine: str, nasm, disk_image, emu_machine) -> None:
    """IRQ 0 advances the BDA count at 18.2 Hz (seen through INT 1Ah) and calls INT 1Ch."""
    run = boot(engine, nasm, disk_image, emu_machine, TIMER_GUEST)
    assert run.debugcon == "tc\n", str(run)


BLOCK_MOVE_GUEST = r"""
DBG equ 0xE9
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    cld
    mov di, 0x8000              ; 1 KiB of pattern at 0x8000
    mov cx, 1024
    xor al, al
.fill:
    stosb
    add al, 37
    loop .fill
    mov eax, 0x8000             ; copy it to 2 MiB + 3 (above the A20 wrap)
    mov ebx, 0x200003
    call move
    mov eax, 0x200003           ; and back to 0x9000
    mov ebx, 0x9000
    call move
    mov si, 0x8000
    mov di, 0x9000
    mov cx, 1024
    repe cmpsb
    mov al, 'd'
    jne .report
    mov al, 'm'
.report:
    out DBG, al
    mov al, 10
    out DBG, al
    xor al, al
    out 0xF4, al
    cli
    hlt

; EAX = source, EBX = target (linear): 512 words with INT 15h AH=87h
move:
    mov [gdt + 0x10 + 2], ax    ; source base 0-15
    shr eax, 16
    mov [gdt + 0x10 + 4], al    ; base 16-23
    mov [gdt + 0x10 + 7], ah    ; base 24-31
    mov [gdt + 0x18 + 2], bx
    shr ebx, 16
    mov [gdt + 0x18 + 4], bl
    mov [gdt + 0x18 + 7], bh
    mov si, gdt
    mov cx, 512
    mov ah, 0x87
    int 0x15
    jc .failed
    test ah, ah
    jnz .failed
    ret
.failed:
    mov al, 'F'
    out DBG, al
    mov al, 1
    out 0xF4, al
    hlt

gdt:
    times 16 db 0
    dw 0xFFFF, 0                ; 10h: source, limit 64 KiB
    db 0, 0x93, 0, 0
    dw 0xFFFF, 0                ; 18h: destination
    db 0, 0x93, 0, 0
    times 16 db 0
"""


@pytest.mark.parametrize("engine", ["qemu", "emu"])
def test_block_move_copies_above_1m(engine: str, nasm, disk_image, emu_machine) -> None:
    """INT 15h AH=87h: to 2 MiB and back, through the caller's descriptors."""
    run = boot(engine, nasm, disk_image, emu_machine, BLOCK_MOVE_GUEST)
    assert run.debugcon == "m\n", str(run)


OWN_SERIAL_CONSOLE_GUEST = r"""
    mov ax, 0x0E61              ; mirrored on COM1
    int 0x10
    mov dx, 0x3FA               ; the guest turns the FIFOs on: a serial console of its own
    mov al, 0x07
    out dx, al
    mov ax, 0x0E62              ; on the screen only
    int 0x10
    mov dx, 0x3F8
    mov al, 'c'                 ; the guest's own output
    out dx, al
    xor al, al
    out 0xF4, al
    cli
    hlt
"""


@pytest.mark.parametrize("engine", ["qemu", "emu"])
def test_no_mirror_once_the_guest_drives_com1(engine: str, nasm, disk_image,
                                              emu_machine) -> None:
    """GRUB's and SYSLINUX's serial consoles would otherwise print everything twice."""
    run = boot(engine, nasm, disk_image, emu_machine, OWN_SERIAL_CONSOLE_GUEST)
    assert run.serial == "ac", str(run)
