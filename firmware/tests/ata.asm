; ata.asm -- the guest drives the primary ATA channel itself, after the BIOS booted it.
;
; What an OS driver does behind the BIOS's back, interleaved with INT 13h so each side
; must see the other's writes: IDENTIFY capacity, LBA28 PIO read, LBA48 PIO write
; (read back with INT 13h AH=42h), INT 13h AH=43h write (read back with READ
; MULTIPLE), WRITE DMA and READ DMA through the PIIX3 bus-master function found on
; PCI.  The host checks LBA 400-403, 410-411 and 420-427 hold the pattern XOR 0xFF.

%include "_guest.asm"

ATA_DATA        equ 0x1F0
ATA_FEATURES    equ 0x1F1
ATA_COUNT       equ 0x1F2
ATA_LBA_LOW     equ 0x1F3
ATA_LBA_MID     equ 0x1F4
ATA_LBA_HIGH    equ 0x1F5
ATA_DEVICE      equ 0x1F6
ATA_COMMAND     equ 0x1F7
ATA_ALT_STATUS  equ 0x3F6
ST_BSY          equ 0x80
ST_DRQ          equ 0x08
ST_ERR          equ 0x01
PRD_TABLE       equ 0x0600
DMA_BUFFER      equ BUFFER_SEGMENT * 16

    PRINT "ata start"
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

    ; IDENTIFY DEVICE: capacity words 60-61
    cli
    mov al, 0xA0
    call select
    mov al, 0xEC
    call command
    mov cx, 1
    call pio_in
    CHECK nc, "IDENTIFY DEVICE transfers its data"
    push es
    mov ax, BUFFER_SEGMENT
    mov es, ax
    mov eax, [es:60 * 2]
    pop es
    cmp eax, [disk_sectors]
    CHECK e, "IDENTIFY words 60-61 equal the disk size"

    ; READ SECTORS (LBA28) of the pattern
    mov eax, PATTERN_LBA + 5
    mov cx, 4
    call lba28
    mov al, 0x20
    call command
    mov cx, 4
    call pio_in
    CHECK nc, "READ SECTORS succeeds"
    mov eax, PATTERN_LBA + 5
    mov cx, 4
    xor bl, bl
    call check_pattern
    CHECK nc, "READ SECTORS data is the pattern"

    ; WRITE SECTORS EXT (LBA48), read back through the BIOS
    mov eax, 400
    mov cx, 4
    mov bl, 0xFF
    call fill_pattern
    mov eax, 400
    mov cx, 4
    call lba48
    mov al, 0x34
    call command
    mov cx, 4
    call pio_out
    CHECK nc, "WRITE SECTORS EXT succeeds"
    sti
    call clear_buffer
    mov eax, 400
    mov cx, 4
    call edd_read
    CHECK nc, "AH=42h reads LBA 400"
    mov eax, 400
    mov cx, 4
    mov bl, 0xFF
    call check_pattern
    CHECK nc, "the BIOS sees the guest's ATA write"

    ; the BIOS writes, READ MULTIPLE reads back
    mov eax, 410
    mov cx, 2
    mov bl, 0xFF
    call fill_pattern
    mov eax, 410
    mov cx, 2
    call edd_write
    CHECK nc, "AH=43h writes LBA 410"
    call clear_buffer
    cli
    mov al, 0xA0
    call select
    mov dx, ATA_COUNT
    mov al, 2
    out dx, al
    mov al, 0xC6                        ; SET MULTIPLE MODE: 2 sectors per block
    call command
    call wait_ready
    test al, ST_ERR
    CHECK z, "SET MULTIPLE MODE 2 succeeds"
    mov eax, 410
    mov cx, 2
    call lba28
    mov al, 0xC4
    call command
    mov cx, 2
    mov word [block_sectors], 2
    call pio_in
    mov word [block_sectors], 1
    CHECK nc, "READ MULTIPLE succeeds"
    mov eax, 410
    mov cx, 2
    mov bl, 0xFF
    call check_pattern
    CHECK nc, "READ MULTIPLE sees the BIOS's write"

    ; bus-master DMA through the PIIX3 IDE function
    call find_busmaster
    CHECK nc, "PIIX3 IDE function found on PCI"
    mov eax, 420
    mov cx, 8
    mov bl, 0xFF
    call fill_pattern
    mov eax, 420
    mov cx, 8
    call lba28
    mov al, 0xCA
    call command
    xor al, al                          ; memory -> disk
    call dma
    CHECK nc, "WRITE DMA succeeds"
    sti
    call clear_buffer
    mov eax, 420
    mov cx, 8
    call edd_read
    CHECK nc, "AH=42h reads LBA 420"
    mov eax, 420
    mov cx, 8
    mov bl, 0xFF
    call check_pattern
    CHECK nc, "the BIOS sees the DMA write"
    call clear_buffer
    cli
    mov eax, PATTERN_LBA + 20
    mov cx, 8
    call lba28
    mov al, 0xC8
    call command
    mov al, 0x08                        ; disk -> memory
    call dma
    CHECK nc, "READ DMA succeeds"
    mov eax, PATTERN_LBA + 20
    mov cx, 8
    xor bl, bl
    call check_pattern
    CHECK nc, "READ DMA data is the pattern"
    sti
    ; the BIOS still works after all this
    mov eax, PATTERN_LBA
    mov cx, 2
    call edd_read
    CHECK nc, "AH=42h still works"
    PASS

; ---------------------------------------------------------------- ATA helpers
wait_ready:                             ; -> AL = status once BSY is clear
    push ecx
    push dx
    mov ecx, 0x4000000
    mov dx, ATA_ALT_STATUS
.poll:
    in al, dx
    test al, ST_BSY
    jz .done
    dec ecx
    jnz .poll
.done:
    pop dx
    pop ecx
    ret

select:                                 ; AL = device register
    push dx
    mov dx, ATA_DEVICE
    out dx, al
    mov dx, ATA_ALT_STATUS
    in al, dx
    in al, dx
    in al, dx
    in al, dx
    pop dx
    jmp wait_ready

command:                                ; AL = opcode
    push dx
    mov dx, ATA_COMMAND
    out dx, al
    mov dx, ATA_ALT_STATUS
    in al, dx
    in al, dx
    pop dx
    ret

lba28:                                  ; EAX = LBA, CX = count
    push eax
    push eax
    shr eax, 24
    and al, 0x0F
    or al, 0xE0
    call select
    pop eax
    jmp count_and_lba_low

lba48:                                  ; EAX = LBA (< 2^32), CX = count
    push eax
    push eax
    mov al, 0x40
    call select
    pop eax
    mov dx, ATA_COUNT
    push ax
    mov al, ch
    out dx, al                          ; count 15:8
    pop ax
    push eax
    shr eax, 24
    mov dx, ATA_LBA_LOW
    out dx, al                          ; LBA 31:24
    xor al, al
    inc dx
    out dx, al
    inc dx
    out dx, al
    pop eax
count_and_lba_low:                      ; EAX = LBA, CX = count; the caller's EAX on the stack
    mov dx, ATA_COUNT
    push ax
    mov al, cl
    out dx, al
    pop ax
    mov dx, ATA_LBA_LOW
    out dx, al
    shr eax, 8
    inc dx
    out dx, al
    shr eax, 8
    inc dx
    out dx, al
    pop eax
    ret

; pio_in / pio_out: CX sectors in DRQ blocks of [block_sectors] to/from BUFFER_SEGMENT:0.
; CF set when the drive reports an error or stops asking for data.
pio_in:
    pusha
    push es
    mov ax, BUFFER_SEGMENT
    mov es, ax
    xor di, di
    mov bx, cx
.block:
    call wait_ready
    test al, ST_ERR
    jnz .failed
    test al, ST_DRQ
    jz .failed
    mov cx, [block_sectors]
    cmp cx, bx
    jbe .sized
    mov cx, bx
.sized:
    sub bx, cx
    shl cx, 8
    mov dx, ATA_DATA
    rep insw
    test bx, bx
    jnz .block
    call wait_ready
    mov dx, ATA_COMMAND
    in al, dx
    test al, ST_ERR | ST_DRQ
    jnz .failed
    pop es
    popa
    clc
    ret
.failed:
    pop es
    popa
    stc
    ret

pio_out:
    pusha
    push ds
    mov ax, BUFFER_SEGMENT
    mov ds, ax
    xor si, si
    mov bx, cx
.block:
    call wait_ready
    test al, ST_ERR
    jnz .failed
    test al, ST_DRQ
    jz .failed
    mov cx, 256
    mov dx, ATA_DATA
    rep outsw
    dec bx
    jnz .block
    call wait_ready
    mov dx, ATA_COMMAND
    in al, dx
    test al, ST_ERR | ST_DRQ
    jnz .failed
    pop ds
    popa
    clc
    ret
.failed:
    pop ds
    popa
    stc
    ret

; find_busmaster: the PIIX3 IDE function's bus-master base -> [bm_base]; I/O and
; bus mastering enabled.  CF set when there is none.
find_busmaster:
    pushad
    mov ebx, 0x80000000
.scan:
    mov eax, ebx
    mov dx, 0xCF8
    out dx, eax
    mov dx, 0xCFC
    in eax, dx
    cmp eax, 0x70108086
    je .found
    add ebx, 0x100
    cmp ebx, 0x80010000
    jb .scan
    popad
    stc
    ret
.found:
    lea eax, [ebx + 0x20]
    mov dx, 0xCF8
    out dx, eax
    mov dx, 0xCFC
    in eax, dx
    and ax, 0xFFFC
    jnz .assigned
    mov eax, 0xC000                     ; the BIOS left BAR4 unassigned: take 0xC000
    out dx, eax
.assigned:
    mov [bm_base], ax
    lea eax, [ebx + 0x04]
    mov dx, 0xCF8
    out dx, eax
    mov dx, 0xCFC
    in ax, dx
    or ax, 0x0005                       ; I/O space, bus master
    out dx, ax
    popad
    clc
    ret

; dma: run the command just issued as a bus-master transfer of CX sectors at
; DMA_BUFFER, split over two PRD entries.  AL = 0x08 (to memory) or 0.  CF on error.
dma:
    pushad
    mov bl, al
    movzx eax, cx
    shl eax, 9
    shr eax, 1                          ; two halves (CX is even here)
    mov dword [PRD_TABLE], DMA_BUFFER
    mov [PRD_TABLE + 4], ax
    mov word [PRD_TABLE + 6], 0
    mov edx, DMA_BUFFER
    add edx, eax
    mov [PRD_TABLE + 8], edx
    mov [PRD_TABLE + 12], ax
    mov word [PRD_TABLE + 14], 0x8000
    mov dx, [bm_base]
    xor al, al
    out dx, al
    add dx, 2
    mov al, 0x06
    out dx, al                          ; clear interrupt and error
    add dx, 2
    mov eax, PRD_TABLE
    out dx, eax
    mov dx, [bm_base]
    mov al, bl
    or al, 1
    out dx, al                          ; start
    add dx, 2
    mov ecx, 0x4000000
.poll:
    in al, dx
    test al, 0x04
    jnz .finished
    test al, 0x01
    jz .finished
    dec ecx
    jnz .poll
.finished:
    mov ah, al
    mov dx, [bm_base]
    mov al, bl
    out dx, al                          ; stop
    add dx, 2
    mov al, 0x06
    out dx, al
    call wait_ready
    mov dx, ATA_COMMAND
    in al, dx
    test al, ST_ERR | ST_DRQ
    jnz .failed
    test ah, 0x02
    jnz .failed
    popad
    clc
    ret
.failed:
    popad
    stc
    ret

disk_sectors: dd 0
bm_base: dw 0
block_sectors: dw 1

GUEST_END
