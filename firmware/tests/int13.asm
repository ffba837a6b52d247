; int13.asm -- the BIOS disk services a boot loader uses, checked from the guest.
;
; INT 13h on the boot drive: 00 reset, 01 last status, 02/03/04 CHS read/write/verify
; with the geometry AH=08 reports, 08 parameters, 0C seek, 0D reset, 10 ready, 11
; recalibrate, 15 disk type, 41 EDD check, 42/43/44/47 extended read/write/verify/seek,
; 48 EDD parameters (sector count = the disk's; EDD 3.0 device path: PCI, ATA), errors
; for a read past the end, an unknown function, an absent drive and a floppy drive.  The host checks afterwards that
; LBA 300-302 and 310 hold what the guest wrote (the pattern XOR 0xFF).

%include "_guest.asm"

    PRINT "int13 start"
    ; the disk size the host wrote into the parameter sector
    mov eax, PARAMETER_LBA
    mov cx, 1
    call edd_read
    CHECK nc, "AH=42h reads the parameter sector"
    push es
    mov ax, BUFFER_SEGMENT
    mov es, ax
    mov eax, [es:0]
    pop es
    mov [disk_sectors], eax

    ; AH=08h: geometry and drive count
    mov ah, 0x08
    mov dl, [boot_drive]
    xor di, di
    push es
    int 0x13
    pop es
    CHECK nc, "AH=08h succeeds"
    CHECK_EQ dl, 1, "AH=08h counts one hard disk"
    mov al, cl
    and ax, 0x3F
    mov [sectors_per_track], ax
    movzx ax, dh
    inc ax
    mov [heads], ax
    mov al, cl
    shr al, 6
    mov ah, al
    mov al, ch
    inc ax
    mov [cylinders], ax
    cmp word [sectors_per_track], 0
    CHECK ne, "AH=08h reports sectors per track"
    ; C*H*S must not exceed the disk
    movzx eax, word [cylinders]
    movzx ecx, word [heads]
    imul eax, ecx
    movzx ecx, word [sectors_per_track]
    imul eax, ecx
    cmp eax, [disk_sectors]
    CHECK be, "AH=08h geometry fits in the disk"
    push ds
    xor ax, ax
    mov ds, ax
    mov al, [0x475]
    pop ds
    CHECK_EQ al, 1, "BDA 40:75 counts one hard disk"

    ; AH=15h: a hard disk and its size
    mov ah, 0x15
    mov dl, [boot_drive]
    int 0x13
    CHECK_EQ ah, 3, "AH=15h says hard disk"

    ; AH=41h: EDD present, with the extended disk access subset
    mov ah, 0x41
    mov bx, 0x55AA
    mov dl, [boot_drive]
    int 0x13
    CHECK nc, "AH=41h succeeds"
    CHECK_EQ bx, 0xAA55, "AH=41h answers AA55h"
    test cl, 1
    CHECK nz, "AH=41h has the extended access subset"

    ; AH=48h: the sector count is the disk's
    mov word [edd_params], 0x1A
    mov ah, 0x48
    mov dl, [boot_drive]
    mov si, edd_params
    int 0x13
    CHECK nc, "AH=48h succeeds"
    mov eax, [edd_params + 0x10]
    cmp eax, [disk_sectors]
    CHECK e, "AH=48h sector count equals the disk size"
    CHECK_EQ word [edd_params + 0x18], 512, "AH=48h bytes per sector"

    ; AH=42h: the pattern, in one call of 64 sectors
    mov eax, PATTERN_LBA
    mov cx, PATTERN_SECTORS
    call edd_read
    CHECK nc, "AH=42h reads 64 sectors"
    mov eax, PATTERN_LBA
    mov cx, PATTERN_SECTORS
    xor bl, bl
    call check_pattern
    CHECK nc, "AH=42h data is the pattern"

    ; AH=02h: CHS read of LBA 203..205 through AH=08h's geometry
    mov eax, PATTERN_LBA + 3
    call lba_to_chs
    mov ax, 0x0203                      ; read 3 sectors
    call chs_io
    CHECK nc, "AH=02h reads 3 sectors"
    mov eax, PATTERN_LBA + 3
    mov cx, 3
    xor bl, bl
    call check_pattern
    CHECK nc, "AH=02h data is the pattern"

    ; AH=43h then AH=42h: LBA 300..302
    mov eax, 300
    mov cx, 3
    mov bl, 0xFF
    call fill_pattern
    mov eax, 300
    mov cx, 3
    call edd_write
    CHECK nc, "AH=43h writes 3 sectors"
    call clear_buffer
    mov eax, 300
    mov cx, 3
    call edd_read
    CHECK nc, "AH=42h reads them back"
    mov eax, 300
    mov cx, 3
    mov bl, 0xFF
    call check_pattern
    CHECK nc, "AH=42h sees what AH=43h wrote"

    ; AH=03h then AH=02h: LBA 310
    mov eax, 310
    mov cx, 1
    mov bl, 0xFF
    call fill_pattern
    mov eax, 310
    call lba_to_chs
    mov ax, 0x0301
    call chs_io
    CHECK nc, "AH=03h writes a sector"
    call clear_buffer
    mov eax, 310
    mov cx, 1
    call edd_read
    CHECK nc, "AH=42h reads it back"
    mov eax, 310
    mov cx, 1
    mov bl, 0xFF
    call check_pattern
    CHECK nc, "AH=42h sees what AH=03h wrote"

    ; the calls that only have to succeed on a present, ready disk
    mov eax, PATTERN_LBA
    call lba_to_chs
    mov ax, 0x0402                      ; AH=04h verify 2 sectors
    call chs_io
    CHECK nc, "AH=04h verifies"
    mov eax, PATTERN_LBA
    call lba_to_chs
    mov ah, 0x0C
    call chs_io
    CHECK nc, "AH=0Ch seeks"
    mov ah, 0x0D
    mov dl, [boot_drive]
    int 0x13
    CHECK nc, "AH=0Dh resets"
    mov ah, 0x10
    mov dl, [boot_drive]
    int 0x13
    CHECK nc, "AH=10h says ready"
    mov ah, 0x11
    mov dl, [boot_drive]
    int 0x13
    CHECK nc, "AH=11h recalibrates"
    mov eax, PATTERN_LBA
    mov cx, 4
    mov byte [edd_function], 0x44
    call edd_call
    CHECK nc, "AH=44h verifies"
    mov eax, PATTERN_LBA + 10
    mov cx, 0
    mov byte [edd_function], 0x47
    call edd_call
    CHECK nc, "AH=47h seeks"

    ; AH=48h with an EDD 3.0 buffer: the device path names the PCI IDE channel
    mov word [edd_params], 0x42
    mov ah, 0x48
    mov dl, [boot_drive]
    mov si, edd_params
    int 0x13
    CHECK nc, "AH=48h (EDD 3.0 buffer) succeeds"
    cmp word [edd_params], 0x1E
    CHECK ae, "AH=48h returns at least the EDD 2.0 fields"
    cmp word [edd_params], 0x42
    jb .no_device_path
    CHECK_EQ word [edd_params + 0x1E], 0xBEDD, "AH=48h device path key BEDDh"
    CHECK_EQ dword [edd_params + 0x24], "PCI ", "AH=48h host bus is PCI"
    CHECK_EQ dword [edd_params + 0x28], "ATA ", "AH=48h interface is ATA"
.no_device_path:

    ; floppy calls: no floppy drive here
    mov ax, 0x0201
    mov cx, 0x0001
    xor dx, dx
    push es
    mov bx, BUFFER_SEGMENT
    mov es, bx
    xor bx, bx
    int 0x13
    pop es
    CHECK c, "AH=02h on floppy drive 0 fails"

    ; errors
    mov eax, [disk_sectors]
    mov cx, 1
    call edd_read
    CHECK c, "AH=42h past the end fails"
    mov ah, 0x01
    mov dl, [boot_drive]
    int 0x13
    test ah, ah
    CHECK nz, "AH=01h reports the failure"
    mov ah, 0x00
    mov dl, [boot_drive]
    int 0x13
    CHECK nc, "AH=00h resets"
    mov ah, 0x01
    mov dl, [boot_drive]
    int 0x13
    CHECK_EQ ah, 0, "AH=01h is clear after the reset"
    mov ah, 0x7F
    mov dl, [boot_drive]
    int 0x13
    CHECK c, "an unknown function fails"
    mov ah, 0x42
    mov dl, 0x81
    mov si, edd_packet
    int 0x13
    CHECK c, "AH=42h on an absent drive fails"
    PASS

; lba_to_chs: EAX = LBA -> CX, DH for AH=02h/03h (with AH=08h's geometry)
lba_to_chs:
    xor edx, edx
    movzx ecx, word [sectors_per_track]
    div ecx
    inc dx
    mov [chs_sector], dl
    xor edx, edx
    movzx ecx, word [heads]
    div ecx                             ; EAX = cylinder, DL = head
    mov dh, dl
    mov ch, al
    mov cl, ah
    shl cl, 6
    or cl, [chs_sector]
    ret

; chs_io: AX = function and count, CX/DH from lba_to_chs, buffer BUFFER_SEGMENT:0
chs_io:
    push es
    push bx
    mov bx, BUFFER_SEGMENT
    mov es, bx
    xor bx, bx
    mov dl, [boot_drive]
    int 0x13
    pop bx
    pop es
    ret

chs_sector: db 0
disk_sectors: dd 0
cylinders: dw 0
heads: dw 0
sectors_per_track: dw 0
edd_params: times 0x42 db 0

GUEST_END
