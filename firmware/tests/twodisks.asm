; twodisks.asm -- the BIOS serves a second hard disk (primary slave) as drive 81h.
;
; Both disks carry the parameter sector (their own size) and the pattern; the second
; disk's pattern is XORed with 55h so a mix-up shows.  Checks: AH=08h and the BDA count
; two disks, AH=48h on 81h reports the second disk's size, AH=42h reads 81h's pattern
; and 80h's, AH=43h writes LBA 500-501 of 81h (the host checks: pattern XOR AAh),
; AH=02h with 81h's own geometry reads its pattern.

%include "_guest.asm"

SECOND_DRIVE    equ 0x81
SECOND_XOR      equ 0x55

    PRINT "twodisks start"
    mov ah, 0x08
    mov dl, [boot_drive]
    push es
    xor di, di
    int 0x13
    pop es
    CHECK nc, "AH=08h succeeds"
    CHECK_EQ dl, 2, "AH=08h counts two hard disks"
    push ds
    xor ax, ax
    mov ds, ax
    mov al, [0x475]
    pop ds
    CHECK_EQ al, 2, "BDA 40:75 counts two hard disks"

    mov byte [boot_drive], SECOND_DRIVE     ; the helpers now talk to drive 81h
    mov eax, PARAMETER_LBA
    mov cx, 1
    call edd_read
    CHECK nc, "AH=42h reads 81h's parameter sector"
    push es
    mov ax, BUFFER_SEGMENT
    mov es, ax
    mov eax, [es:0]
    pop es
    mov [second_sectors], eax
    mov word [edd_params], 0x1A
    mov ah, 0x48
    mov dl, SECOND_DRIVE
    mov si, edd_params
    int 0x13
    CHECK nc, "AH=48h on 81h succeeds"
    mov eax, [edd_params + 0x10]
    cmp eax, [second_sectors]
    CHECK e, "AH=48h on 81h reports the second disk's size"

    mov eax, PATTERN_LBA
    mov cx, 16
    call edd_read
    CHECK nc, "AH=42h reads 81h's pattern"
    mov eax, PATTERN_LBA
    mov cx, 16
    mov bl, SECOND_XOR
    call check_pattern
    CHECK nc, "81h's data is its own pattern"

    mov eax, 500
    mov cx, 2
    mov bl, 0xAA
    call fill_pattern
    mov eax, 500
    mov cx, 2
    call edd_write
    CHECK nc, "AH=43h writes 81h's LBA 500"

    ; CHS on 81h with its own geometry
    mov ah, 0x08
    mov dl, SECOND_DRIVE
    push es
    xor di, di
    int 0x13
    pop es
    CHECK nc, "AH=08h on 81h succeeds"
    and cl, 0x3F
    mov [spt], cl
    inc dh
    mov [heads], dh
    mov eax, PATTERN_LBA + 20           ; LBA -> CHS: S = L mod spt + 1, H, C
    xor edx, edx
    movzx ecx, byte [spt]
    div ecx
    inc dl
    mov [sector], dl
    xor edx, edx
    movzx ecx, byte [heads]
    div ecx
    mov dh, dl
    mov ch, al
    mov cl, ah
    shl cl, 6
    or cl, [sector]
    mov dl, SECOND_DRIVE
    mov ax, 0x0202
    push es
    mov bx, BUFFER_SEGMENT
    mov es, bx
    xor bx, bx
    int 0x13
    pop es
    CHECK nc, "AH=02h reads 81h by CHS"
    mov eax, PATTERN_LBA + 20
    mov cx, 2
    mov bl, SECOND_XOR
    call check_pattern
    CHECK nc, "AH=02h data is 81h's pattern"

    mov byte [boot_drive], 0x80
    mov eax, PATTERN_LBA
    mov cx, 4
    call edd_read
    CHECK nc, "AH=42h reads 80h again"
    mov eax, PATTERN_LBA
    mov cx, 4
    xor bl, bl
    call check_pattern
    CHECK nc, "80h's data is its own pattern"
    PASS

second_sectors: dd 0
spt: db 0
heads: db 0
sector: db 0
edd_params: times 0x1A db 0

GUEST_END
