; _guest.asm -- the frame every guest test program in firmware/tests is built on.
;
; A guest test program is a disk image's first sectors: the BIOS loads LBA 0 to
; 0000:7C00 and jumps to it with DL = the boot drive.  This file supplies that
; boot sector (it loads the rest of the program, up to 64 sectors, to 0000:7E00
; with INT 13h AH=42h) and a few helpers.  A program includes it first, puts its
; code right after the include (that is where the boot sector jumps) and ends
; with the GUEST_END macro.  Example: firmware/tests/int13.asm.
;
; Output goes to the debug console (port 0xE9); every line starts with "G: " so a
; test can pick the program's lines out of a transcript that may also hold the
; BIOS's own log.  The program ends through the debug-exit port 0xF4: PASS writes
; 0, a failed CHECK writes its 1-based number (and prints "G: FAIL ...").
;
; The host prepares a parameter sector at LBA 199 (dword 0: disk size in sectors)
; and a pattern at LBA 200..263: byte i of LBA L is (L * 31 + i) mod 256.

cpu 386
bits 16
org 0x7C00

DEBUGCON        equ 0xE9
DEBUG_EXIT      equ 0xF4
PARAMETER_LBA   equ 199
PATTERN_LBA     equ 200
PATTERN_SECTORS equ 64
BUFFER_SEGMENT  equ 0x1000             ; 64 KiB data buffer at 0x10000

%assign check_number 0

; PRINT "text": one line on the debug console, prefixed "G: "
%macro PRINT 1
    jmp %%after
%%text: db "G: ", %1, 10, 0
%%after:
    push si
    mov si, %%text
    call puts
    pop si
%endmacro

; CHECK cc, "what": passes when condition code cc holds (after cmp/test, or CF)
%macro CHECK 2
%assign check_number check_number + 1
    j%-1 %%failed
    PRINT {"ok ", %2}
    jmp %%done
%%failed:
    PRINT {"FAIL ", %2}
    mov al, check_number
    jmp exit
%%done:
%endmacro

%macro CHECK_EQ 3
    cmp %1, %2
    CHECK e, %3
%endmacro

%macro PASS 0
    PRINT "PASS"
    xor al, al
    jmp exit
%endmacro

%macro GUEST_END 0
guest_end:
    times (512 - ($ - $$) % 512) % 512 db 0
%endmacro

; ---------------------------------------------------------------- the boot sector
boot:
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7C00
    sti
    cld
    mov [boot_drive], dl
    mov si, load_packet
    mov ah, 0x42
    int 0x13
    jc .load_failed
    jmp helpers_end
.load_failed:
    mov si, load_failed_text
    call puts
    mov al, 0xFE
    jmp exit

load_packet:
    db 0x10, 0
    dw (guest_end - after_boot_sector + 511) / 512
    dw after_boot_sector, 0             ; to 0000:7E00
    dq 1
load_failed_text: db "G: FAIL loading the program with INT 13h AH=42h", 10, 0

; puts: print the NUL-terminated string at DS:SI
puts:
    push ax
    push dx
    push si
    mov dx, DEBUGCON
.next:
    lodsb
    test al, al
    jz .end
    out dx, al
    jmp .next
.end:
    pop si
    pop dx
    pop ax
    ret

; exit: end the run with status AL through the debug-exit device
exit:
    out DEBUG_EXIT, al
    cli
.halt:
    hlt
    jmp .halt

boot_drive: db 0x80

    times 510 - ($ - $$) db 0
    dw 0xAA55

; ---------------------------------------------------------------- helpers (LBA 1 on)
after_boot_sector:

; check_pattern: CX sectors at BUFFER_SEGMENT:0 hold the pattern from LBA EAX
; (byte i of LBA L is (L * 31 + i) mod 256), XORed with BL.  CF set on a mismatch.
check_pattern:
    pushad
    push es
    mov dx, BUFFER_SEGMENT
    mov es, dx
    xor di, di
.sector:
    mov dl, al
    imul dx, dx, 31                     ; DL = (L * 31) mod 256
    mov dh, dl                          ; the running byte value
    mov si, 512
.byte:
    mov ah, dh
    xor ah, bl
    cmp ah, [es:di]
    jne .mismatch
    inc dh
    inc di
    dec si
    jnz .byte
    inc eax
    loop .sector
    pop es
    popad
    clc
    ret
.mismatch:
    pop es
    popad
    stc
    ret

; clear_buffer: zero the 64 KiB at BUFFER_SEGMENT:0
clear_buffer:
    pusha
    push es
    mov ax, BUFFER_SEGMENT
    mov es, ax
    xor di, di
    xor ax, ax
    mov cx, 0x8000
    rep stosw
    pop es
    popa
    ret

; fill_pattern: CX sectors at BUFFER_SEGMENT:0 get the pattern from LBA EAX XOR BL
fill_pattern:
    pushad
    push es
    mov dx, BUFFER_SEGMENT
    mov es, dx
    xor di, di
.sector:
    mov dl, al
    imul dx, dx, 31
    mov dh, dl
    mov si, 512
.byte:
    mov ah, dh
    xor ah, bl
    mov [es:di], ah
    inc dh
    inc di
    dec si
    jnz .byte
    inc eax
    loop .sector
    pop es
    popad
    ret

; edd_read / edd_write: INT 13h AH=42h / 43h of CX sectors at LBA EAX to/from
; BUFFER_SEGMENT:0 on the boot drive.  Returns the BIOS's CF and AH.
edd_read:
    mov byte [edd_function], 0x42
    jmp edd_call
edd_write:
    mov byte [edd_function], 0x43
edd_call:
    mov [edd_packet + 2], cx
    mov word [edd_packet + 4], 0
    mov word [edd_packet + 6], BUFFER_SEGMENT
    mov [edd_packet + 8], eax
    mov dword [edd_packet + 12], 0
    push si
    push dx
    mov si, edd_packet
    mov ah, [edd_function]
    mov al, 0                           ; AH=43h: write without verify
    mov dl, [boot_drive]
    int 0x13
    pop dx
    pop si
    ret
edd_function: db 0
edd_packet: db 0x10, 0
    times 14 db 0

; print_value: "G: value XXXX" for AX
print_value:
    pusha
    mov si, value_prefix
    call puts
    mov cx, 4
    mov dx, DEBUGCON
    mov bx, ax
.digit:
    rol bx, 4
    mov al, bl
    and al, 0x0F
    add al, '0'
    cmp al, '9'
    jbe .print
    add al, 'A' - '9' - 1
.print:
    out dx, al
    loop .digit
    mov al, 10
    out dx, al
    popa
    ret
value_prefix: db "G: value ", 0

helpers_end:
