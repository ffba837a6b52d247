; demo.asm -- the boot sector of emu's built-in demo disk (firmware/demo.py).
;
; Loaded by the BIOS at 0000:7C00 with DL = its drive.  It greets through INT
; 10h teletype (screen and, under emu's BIOS, COM1), checks for the INT 13h
; extensions, writes a pattern to LBA 1 with AH=43h, reads it back through the
; CHS interface (AH=02h, cylinder 0 head 0 sector 2) and compares, prints the
; outcome, and leaves through the debug-exit port F4h: 0 when everything
; worked, 1 otherwise (QEMU's isa-debug-exit turns value v into exit status
; 2v+1; emu run exits with v).  Without a debug-exit device it halts.

cpu 386
bits 16
org 0x7C00

DEBUG_EXIT      equ 0xF4
PATTERN_BUF     equ 0x8000
READ_BUF        equ 0x8200
DEMO_LBA        equ 1

start:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    sti
    cld
    mov [boot_drive], dl

    mov si, msg_hello
    call print

    mov ah, 0x41
    mov bx, 0x55AA
    mov dl, [boot_drive]
    int 0x13
    jc fail
    cmp bx, 0xAA55
    jne fail

    ; a sector of "emu demo sector " lines
    mov di, PATTERN_BUF
    mov cx, 512 / 16
.fill:
    mov si, pattern
    push cx
    mov cx, 16
    rep movsb
    pop cx
    loop .fill

    mov si, packet
    mov ah, 0x43
    xor al, al
    mov dl, [boot_drive]
    int 0x13
    jc fail

    mov ax, 0x0201
    mov cx, 0x0002              ; cylinder 0, sector 2 = LBA 1
    xor dh, dh
    mov dl, [boot_drive]
    mov bx, READ_BUF
    int 0x13
    jc fail

    mov si, PATTERN_BUF
    mov di, READ_BUF
    mov cx, 512 / 2
    repe cmpsw
    jne fail

    mov si, msg_ok
    call print
    xor al, al
    jmp leave

fail:
    mov si, msg_fail
    call print
    mov al, 1
leave:
    out DEBUG_EXIT, al
.halt:
    cli
    hlt
    jmp .halt

print:
    lodsb
    test al, al
    jz .done
    mov ah, 0x0E
    mov bx, 0x0007
    int 0x10
    jmp print
.done:
    ret

msg_hello:  db "Hello from the emu demo disk.", 13, 10, 0
msg_ok:     db "INT 13h: wrote LBA 1 (AH=43h), read it back (AH=02h): OK", 13, 10, 0
msg_fail:   db "INT 13h write/read-back FAILED", 13, 10, 0
pattern:    db "emu demo sector "

packet:                         ; INT 13h extensions disk address packet
    db 0x10, 0
    dw 1                        ; sectors
    dw PATTERN_BUF, 0           ; buffer offset, segment
    dq DEMO_LBA

boot_drive: db 0

    times 510 - ($ - $$) db 0
    dw 0xAA55
