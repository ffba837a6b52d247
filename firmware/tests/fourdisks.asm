; fourdisks.asm -- four hard disks (both channels, master and slave) as drives 80h-83h.
;
; Disk n carries the parameter sector (its own size) and the pattern XOR (n * 11h).
; Checks: AH=08h and the BDA count four disks; for each of 81h-83h, AH=48h reports that
; disk's size, AH=42h reads its pattern, AH=43h writes LBA 500 with the pattern XOR
; (A0h + n) (the host checks every disk afterwards); AH=42h on 84h fails.

%include "_guest.asm"

    PRINT "fourdisks start"
    mov ah, 0x08
    mov dl, 0x80
    push es
    xor di, di
    int 0x13
    pop es
    CHECK nc, "AH=08h succeeds"
    CHECK_EQ dl, 4, "AH=08h counts four hard disks"
    push ds
    xor ax, ax
    mov ds, ax
    mov al, [0x475]
    pop ds
    CHECK_EQ al, 4, "BDA 40:75 counts four hard disks"

    mov byte [drive], 0x81
.drive:
    mov al, [drive]
    mov [boot_drive], al                ; the helpers talk to this drive
    mov eax, PARAMETER_LBA
    mov cx, 1
    call edd_read
    CHECK nc, "AH=42h reads the drive's parameter sector"
    push es
    mov ax, BUFFER_SEGMENT
    mov es, ax
    mov eax, [es:0]
    pop es
    mov [drive_sectors], eax
    mov word [edd_params], 0x1A
    mov ah, 0x48
    mov dl, [drive]
    mov si, edd_params
    int 0x13
    CHECK nc, "AH=48h succeeds"
    mov eax, [edd_params + 0x10]
    cmp eax, [drive_sectors]
    CHECK e, "AH=48h reports the drive's own size"
    mov eax, PATTERN_LBA
    mov cx, 8
    call edd_read
    CHECK nc, "AH=42h reads the pattern"
    mov bl, [drive]
    sub bl, 0x80
    imul bx, bx, 0x11                   ; BL = n * 11h
    mov eax, PATTERN_LBA
    mov cx, 8
    call check_pattern
    CHECK nc, "the data is this drive's pattern"
    mov bl, [drive]
    sub bl, 0x80
    add bl, 0xA0
    mov eax, 500
    mov cx, 1
    call fill_pattern
    mov eax, 500
    mov cx, 1
    call edd_write
    CHECK nc, "AH=43h writes LBA 500"
    inc byte [drive]
    cmp byte [drive], 0x84
    jb .drive

    mov byte [boot_drive], 0x84
    mov eax, PATTERN_LBA
    mov cx, 1
    call edd_read
    CHECK c, "AH=42h on 84h fails"
    PASS

drive: db 0
drive_sectors: dd 0
edd_params: times 0x1A db 0

GUEST_END
