; atapitest.asm -- a ROM that drives an ATAPI CD-ROM drive directly.
;
; Theory of operation
; -------------------
; Like atatest.asm, a 64 KiB "BIOS" image that runs in real mode with interrupts
; off and no BIOS services, so the same binary runs under `qemu-system-i386 -M pc
; -bios atapitest.bin -cdrom X` and `emu run --bios atapitest.bin --cdrom X`; it
; prints a transcript on the debug console (port 0xE9) and exits through the
; debug-exit port 0xF4 (0 done, 2 the drive does not answer, 3 no PIIX3 IDE).
;
; It gives the PIIX3 IDE function a bus-master base (BAR4 = C000h) and enables
; it, soft-resets the secondary channel and checks the drive at its master
; position: the ATAPI signature, IDENTIFY PACKET DEVICE (word 0 only: the rest
; is the drive's identity), IDENTIFY DEVICE refused with the signature.  Then a
; table of command packets (`tests:`), each sent with PACKET the way drivers do
; it -- in PIO with a byte count limit, or with the DMA bit through the bus
; master -- printing what two correct drives must agree on:
;
;   * the packet phase: DRQ and the interrupt reason (CoD) before the packet;
;   * PIO: the size of every DRQ block (run-length: "0800*3"), how many
;     interrupts the drive raised (the bus-master interrupt bit, read and
;     cleared after every block), the bytes moved;
;   * the end: status (BSY DRDY DF DRQ ERR; DSC and CORR masked), error register
;     when ERR, interrupt reason;
;   * the data: a hash (atatest's: h = rol32((h ^ dword) * 01000193h, 5) from
;     811C9DC5h over the bytes moved, zero-padded to a dword) when the bytes are
;     the disc's or fixed by MMC, or the first bytes in hex, or nothing when the
;     answer is the drive's own (INQUIRY strings, mode pages);
;   * after an error the test also prints REQUEST SENSE's key, ASC and ASCQ, so
;     each test starts with no sense pending.
;
; Where QEMU's drive departs from MMC the line prints less: READ TOC format 1
; (QEMU leaves the session descriptor's control and track fields zero) prints
; its header only, and a refused eject its sense without the qualifier (QEMU
; says 53h/00h, MMC's MEDIUM REMOVAL PREVENTED is 53h/02h).  READ TOC packets
; carry the format both in byte 2 (MMC) and in byte 9 bits 7-6 (SFF-8020i, the
; field QEMU reads).  A zero byte count limit is not tested: QEMU aborts without
; an interrupt, leaving the interrupt reason at CoD.
;
; Disc contents are the host's business: the transcript's hashes are checked
; against the image file.

cpu 386
bits 16
org 0

DEBUGCON        equ 0xE9
DEBUG_EXIT      equ 0xF4
PCI_ADDRESS     equ 0xCF8
PCI_DATA        equ 0xCFC
PIIX3_IDE_ID    equ 0x70108086
BM_BASE_PORT    equ 0xC000
BM_SECONDARY    equ 8

CMD_BASE        equ 0x170
CTL_BASE        equ 0x376
REG_DATA        equ CMD_BASE + 0
REG_ERROR       equ CMD_BASE + 1    ; features when written
REG_COUNT       equ CMD_BASE + 2    ; interrupt reason
REG_LBA_LOW     equ CMD_BASE + 3
REG_LBA_MID     equ CMD_BASE + 4    ; byte count, low
REG_LBA_HIGH    equ CMD_BASE + 5    ; byte count, high
REG_DEVICE      equ CMD_BASE + 6
REG_STATUS      equ CMD_BASE + 7    ; command when written
DEV_MASTER      equ 0xA0
CTL_SRST        equ 0x04

BM_COMMAND      equ 0
BM_STATUS       equ 2
BM_PRD_ADDRESS  equ 4
BM_START        equ 0x01
BM_TO_MEMORY    equ 0x08
BM_ACTIVE       equ 0x01
BM_INTERRUPT    equ 0x04
BM_CLEAR        equ 0x06            ; write-one-to-clear: error and interrupt

ST_BSY          equ 0x80
ST_DRQ          equ 0x08
ST_ERR          equ 0x01
STATUS_MASK     equ 0xE9            ; BSY DRDY DF DRQ ERR

ATA_PACKET      equ 0xA0
ATA_ID_PACKET   equ 0xA1
ATA_IDENTIFY    equ 0xEC
ATA_DEVICE_RESET equ 0x08

WAIT_LOOPS      equ 0x04000000
SCSI_REQUEST_SENSE equ 0x03
SENSE_BYTES     equ 18

; RAM (segment 0)
STACK_TOP       equ 0x7000
VAR             equ 0x0500
v_hash          equ VAR + 0x00      ; dword
v_bm_base       equ VAR + 0x04      ; word: the secondary channel's bus-master registers
v_total         equ VAR + 0x06      ; word: bytes moved
v_irqs          equ VAR + 0x08      ; word: interrupts seen
v_run_size      equ VAR + 0x0A      ; word: DRQ block size of the current run
v_run_count     equ VAR + 0x0C      ; word: blocks in the run
v_status        equ VAR + 0x0E      ; byte
v_error         equ VAR + 0x0F      ; byte
v_reason        equ VAR + 0x10      ; byte
v_flags         equ VAR + 0x12      ; word: the test's flags
v_sense_packet  equ VAR + 0x20      ; 12 bytes
PRD_TABLE       equ 0x1000
BUFFER_SEG      equ 0x2000          ; data lands at 0x20000 (PIO and DMA)

; test flags
T_DMA           equ 0x01            ; DMA data phase
T_HASH          equ 0x02            ; print the data's hash
T_DUMP          equ 0x04            ; print the first .dump bytes in hex
T_NO_ASCQ       equ 0x10            ; REQUEST SENSE after an error: without its qualifier

struc ptest
    .name:      resw 1
    .limit:     resw 1
    .flags:     resw 1
    .dump:      resw 1
    .dma_bytes: resw 1
    .packet:    resb 12
endstruc

; PTEST "name", byte count limit, flags, dump bytes, DMA bytes, packet (12 bytes)
%macro PTEST 17
    dw %%name
    dw %2, %3, %4, %5
    db %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17
    section .names
%%name: db %1, 0
    section .text
%endmacro

%macro PRINT 1
    push si
    mov si, %%text
    call puts
    pop si
    section .names
%%text: db %1, 0
    section .text
%endmacro

%macro PRINT_LINE 1
    PRINT {%1, 10}
%endmacro

section .text start=0
section .names follows=.text

section .text

start:
    cli
    cld
    xor ax, ax
    mov ss, ax
    mov sp, STACK_TOP
    mov ds, ax
    mov es, ax
    PRINT_LINE "ATAPITEST 1"
    call pci_setup
    call reset_channel
    call identify
    mov si, tests
.next:
    cmp word [cs:si + ptest.name], 0
    je .done
    call run_test
    add si, ptest_size
    jmp .next
.done:
    PRINT "DEVICE RESET"
    mov al, DEV_MASTER
    call select
    mov dx, REG_STATUS
    mov al, ATA_DEVICE_RESET
    out dx, al
    call wait_not_busy
    call print_signature
    PRINT_LINE "ATAPITEST done"
    xor al, al
    jmp exit

; ---------------------------------------------------------------- output
puts:
    push ax
    push dx
    push si
    mov dx, DEBUGCON
.loop:
    cs lodsb
    test al, al
    jz .end
    out dx, al
    jmp .loop
.end:
    pop si
    pop dx
    pop ax
    ret

putc:
    push dx
    mov dx, DEBUGCON
    out dx, al
    pop dx
    ret

hex32:
    push eax
    shr eax, 16
    call hex16
    pop eax
hex16:
    push ax
    mov al, ah
    call hex8
    pop ax
hex8:
    push ax
    shr al, 4
    call .nibble
    pop ax
    push ax
    call .nibble
    pop ax
    ret
.nibble:
    and al, 0x0F
    add al, '0'
    cmp al, '9'
    jbe .print
    add al, 'A' - '9' - 1
.print:
    jmp putc

exit:
    out DEBUG_EXIT, al
.halt:
    hlt
    jmp .halt

fatal_timeout:
    PRINT_LINE " TIMEOUT"
    mov al, 2
    jmp exit

; ---------------------------------------------------------------- PCI
pci_read32:
    push dx
    mov dx, PCI_ADDRESS
    out dx, eax
    mov dx, PCI_DATA
    in eax, dx
    pop dx
    ret

pci_write32:                        ; EAX = address, ECX = value
    push dx
    mov dx, PCI_ADDRESS
    out dx, eax
    mov dx, PCI_DATA
    xchg eax, ecx
    out dx, eax
    xchg eax, ecx
    pop dx
    ret

pci_setup:
    mov ebx, 0x80000000
.scan:
    mov eax, ebx
    call pci_read32
    cmp eax, PIIX3_IDE_ID
    je .found
    add ebx, 0x100
    cmp ebx, 0x80010000
    jb .scan
    PRINT_LINE "no PIIX3 IDE"
    mov al, 3
    jmp exit
.found:
    lea eax, [ebx + 0x20]           ; BAR4
    mov ecx, BM_BASE_PORT
    call pci_write32
    lea eax, [ebx + 0x40]           ; IDETIM: decode both channels
    mov ecx, 0x80008000
    call pci_write32
    lea eax, [ebx + 0x04]           ; I/O space and bus master
    call pci_read32
    mov ecx, eax
    or cx, 0x0005
    lea eax, [ebx + 0x04]
    call pci_write32
    mov word [v_bm_base], BM_BASE_PORT + BM_SECONDARY
    ret

; ---------------------------------------------------------------- ATA primitives
delay400:
    push ax
    push dx
    mov dx, CTL_BASE
    in al, dx
    in al, dx
    in al, dx
    in al, dx
    pop dx
    pop ax
    ret

; -> AL = alternate status with BSY clear
wait_not_busy:
    push ecx
    push dx
    mov ecx, WAIT_LOOPS
    mov dx, CTL_BASE
.poll:
    in al, dx
    test al, ST_BSY
    jz .ready
    dec ecx
    jnz .poll
    jmp fatal_timeout
.ready:
    pop dx
    pop ecx
    ret

select:                             ; AL = device register
    push dx
    mov dx, REG_DEVICE
    out dx, al
    pop dx
    call delay400
    jmp wait_not_busy

; status (clears INTRQ), error and interrupt reason into v_*
read_result:
    push ax
    push dx
    call wait_not_busy
    mov dx, REG_STATUS
    in al, dx
    mov [v_status], al
    mov dx, REG_ERROR
    in al, dx
    mov [v_error], al
    mov dx, REG_COUNT
    in al, dx
    mov [v_reason], al
    pop dx
    pop ax
    ret

print_status:
    push ax
    PRINT " st="
    mov al, [v_status]
    and al, STATUS_MASK
    call hex8
    test byte [v_status], ST_ERR
    jz .reason
    PRINT " er="
    mov al, [v_error]
    call hex8
.reason:
    PRINT " ir="
    mov al, [v_reason]
    call hex8
    pop ax
    ret

; " sig=CC LL MM HH st=XX": the signature registers and status
print_signature:
    push ax
    push dx
    PRINT " sig="
    mov dx, REG_COUNT
.next:
    in al, dx
    call hex8
    inc dx
    cmp dx, REG_LBA_HIGH
    ja .status
    mov al, ' '
    call putc
    jmp .next
.status:
    PRINT " st="
    mov dx, REG_STATUS
    in al, dx
    and al, STATUS_MASK
    call hex8
    mov al, 10
    call putc
    pop dx
    pop ax
    ret

; bus-master interrupt bit -> v_irqs, cleared
count_irq:
    push ax
    push dx
    mov dx, [v_bm_base]
    add dx, BM_STATUS
    in al, dx
    test al, BM_INTERRUPT
    jz .none
    inc word [v_irqs]
    mov al, BM_INTERRUPT
    out dx, al
.none:
    pop dx
    pop ax
    ret

reset_channel:
    PRINT "RESET"
    mov dx, CTL_BASE
    mov al, CTL_SRST
    out dx, al
    call delay400
    xor al, al
    out dx, al
    call delay400
    call wait_not_busy
    mov al, DEV_MASTER
    call select
    call print_signature
    ret

identify:
    PRINT "IDENTIFY PACKET DEVICE"
    mov al, DEV_MASTER
    call select
    mov dx, REG_STATUS
    mov al, ATA_ID_PACKET
    out dx, al
    call delay400
    call wait_not_busy
    mov dx, REG_STATUS
    in al, dx
    and al, STATUS_MASK
    PRINT " st="
    call hex8
    test al, ST_DRQ
    jz .done
    mov dx, REG_DATA
    in ax, dx
    PRINT " word0="
    call hex16
    mov cx, 255
.drain:
    in ax, dx
    loop .drain
    call read_result
    call print_status
.done:
    mov al, 10
    call putc
    PRINT "IDENTIFY DEVICE"
    mov dx, REG_STATUS
    mov al, ATA_IDENTIFY
    out dx, al
    call delay400
    call read_result
    call print_status
    call print_signature
    ret

; ---------------------------------------------------------------- one packet test (CS:SI)
run_test:
    push si
    mov bx, [cs:si + ptest.name]
    push si
    mov si, bx
    call puts
    pop si
    mov ax, [cs:si + ptest.flags]
    mov [v_flags], ax
    mov dword [v_hash], 0x811C9DC5
    mov word [v_total], 0
    mov word [v_irqs], 0
    mov word [v_run_size], 0
    mov word [v_run_count], 0
    ; clear the data buffer (32 KiB) so a short transfer hashes the same everywhere
    push es
    mov ax, BUFFER_SEG
    mov es, ax
    xor di, di
    xor ax, ax
    mov cx, 0x4000
    rep stosw
    pop es
    mov dx, [v_bm_base]             ; bus master stopped, flags cleared
    xor al, al
    out dx, al
    add dx, BM_STATUS
    mov al, BM_CLEAR
    out dx, al
    test word [v_flags], T_DMA
    jz .select
    call build_prd
.select:
    mov al, DEV_MASTER
    call select
    mov dx, REG_ERROR
    mov al, [v_flags]
    and al, T_DMA                   ; features bit 0: DMA
    out dx, al
    mov ax, [cs:si + ptest.limit]
    mov dx, REG_LBA_MID
    out dx, al
    inc dx
    mov al, ah
    out dx, al
    mov dx, REG_STATUS
    mov al, ATA_PACKET
    out dx, al
    call delay400
    call wait_not_busy
    PRINT " p="
    and al, STATUS_MASK
    call hex8
    mov dx, REG_COUNT
    in al, dx
    PRINT "/"
    call hex8
    call count_irq
    mov dx, CTL_BASE
    in al, dx
    test al, ST_DRQ
    jz .finish                      ; refused before the packet
    mov dx, REG_DATA
    push si
    add si, ptest.packet
    mov cx, 6
    cs rep outsw
    pop si
    test word [v_flags], T_DMA
    jnz .dma
.block:
    call delay400
    call wait_not_busy
    call count_irq
    mov dx, REG_STATUS
    in al, dx
    test al, ST_ERR
    jnz .finish
    test al, ST_DRQ
    jz .finish
    mov dx, REG_LBA_MID
    in al, dx
    mov cl, al
    inc dx
    in al, dx
    mov ch, al
    call note_block
    push es
    mov ax, BUFFER_SEG
    mov es, ax
    mov di, [v_total]
    add [v_total], cx
    inc cx
    shr cx, 1
    mov dx, REG_DATA
    rep insw
    pop es
    jmp .block
.dma:
    mov dx, [v_bm_base]
    mov al, BM_START | BM_TO_MEMORY
    out dx, al
    add dx, BM_STATUS
    mov ecx, WAIT_LOOPS
.dma_wait:
    in al, dx
    test al, BM_INTERRUPT
    jnz .dma_end
    test al, BM_ACTIVE
    jz .dma_end
    dec ecx
    jnz .dma_wait
    jmp fatal_timeout
.dma_end:
    PRINT " bm="
    and al, BM_ACTIVE | BM_INTERRUPT
    call hex8
    mov dx, [v_bm_base]
    xor al, al
    out dx, al
    mov ax, [cs:si + ptest.dma_bytes]
    mov [v_total], ax
    call count_irq
.finish:
    call flush_run
    call read_result
    call print_status
    cmp word [v_irqs], 0
    je .no_irq
    PRINT " i="
    mov ax, [v_irqs]
    call hex8
.no_irq:
    test word [v_flags], T_DMA
    jnz .data
    PRINT " n="
    mov ax, [v_total]
    call hex16
.data:
    test word [v_flags], T_HASH
    jz .dump
    call hash_data
    PRINT " h="
    mov eax, [v_hash]
    call hex32
.dump:
    test word [v_flags], T_DUMP
    jz .sense
    PRINT " d="
    push es
    mov ax, BUFFER_SEG
    mov es, ax
    xor di, di
    mov cx, [cs:si + ptest.dump]
.dump_byte:
    mov al, [es:di]
    call hex8
    inc di
    loop .dump_byte
    pop es
.sense:
    test byte [v_status], ST_ERR
    jz .end
    call request_sense
.end:
    mov al, 10
    call putc
    pop si
    ret

; CX = the size of one DRQ block: counted into the run-length output
note_block:
    cmp cx, [v_run_size]
    je .same
    call flush_run
    mov [v_run_size], cx
.same:
    inc word [v_run_count]
    ret

flush_run:
    cmp word [v_run_count], 0
    je .none
    PRINT " b="
    mov ax, [v_run_size]
    call hex16
    PRINT "*"
    mov ax, [v_run_count]
    call hex8
    mov word [v_run_count], 0
.none:
    ret

; hash v_total bytes at BUFFER_SEG:0 (zero-padded to whole dwords)
hash_data:
    push es
    mov ax, BUFFER_SEG
    mov es, ax
    mov cx, [v_total]
    add cx, 3
    shr cx, 2
    jcxz .done
    xor di, di
    mov eax, [v_hash]
.loop:
    xor eax, [es:di]
    imul eax, eax, 0x01000193
    rol eax, 5
    add di, 4
    loop .loop
    mov [v_hash], eax
.done:
    pop es
    ret

; one PRD entry: BUFFER_SEG:0, .dma_bytes bytes, end of table
build_prd:
    mov dword [PRD_TABLE], BUFFER_SEG * 16
    movzx eax, word [cs:si + ptest.dma_bytes]
    or eax, 0x80000000
    mov [PRD_TABLE + 4], eax
    mov dx, [v_bm_base]
    add dx, BM_PRD_ADDRESS
    mov eax, PRD_TABLE
    out dx, eax
    ret

; REQUEST SENSE in PIO: " sense=KK/AA/QQ"
request_sense:
    PRINT " sense="
    mov al, DEV_MASTER
    call select
    mov dx, REG_ERROR
    xor al, al
    out dx, al
    mov dx, REG_LBA_MID
    mov al, 18
    out dx, al
    inc dx
    xor al, al
    out dx, al
    mov dx, REG_STATUS
    mov al, ATA_PACKET
    out dx, al
    call delay400
    call wait_not_busy
    mov dword [v_sense_packet], SCSI_REQUEST_SENSE
    mov dword [v_sense_packet + 4], SENSE_BYTES    ; byte 4: allocation length
    mov dword [v_sense_packet + 8], 0
    push si
    mov si, v_sense_packet
    mov dx, REG_DATA
    mov cx, 6
    rep outsw
    pop si
    call delay400
    call wait_not_busy
    mov dx, REG_STATUS
    in al, dx
    test al, ST_DRQ
    jz .failed
    push es
    mov ax, BUFFER_SEG
    mov es, ax
    xor di, di
    mov dx, REG_DATA
    mov cx, 9
    rep insw
    mov al, [es:2]
    and al, 0x0F
    call hex8
    mov al, '/'
    call putc
    mov al, [es:12]
    call hex8
    test word [v_flags], T_NO_ASCQ
    jnz .sense_done
    mov al, '/'
    call putc
    mov al, [es:13]
    call hex8
.sense_done:
    pop es
    call read_result
    ret
.failed:
    PRINT "none"
    call read_result
    ret

; ---------------------------------------------------------------- the packets
READ10 equ 0x28
tests:
    PTEST "TEST UNIT READY", 0xFFFE, 0, 0, 0,  0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    PTEST "INQUIRY", 0xFFFE, T_DUMP, 2, 0,  0x12, 0, 0, 0, 36, 0, 0, 0, 0, 0, 0, 0
    PTEST "READ CAPACITY", 0xFFFE, T_DUMP, 8, 0,  0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    PTEST "READ10 0+1", 0xFFFE, T_HASH, 0, 0,  READ10, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0
    PTEST "READ10 16+8 bcl 800", 0x0800, T_HASH, 0, 0,  READ10, 0, 0, 0, 0, 16, 0, 0, 8, 0, 0, 0
    PTEST "READ10 5+3 bcl 1001", 0x1001, T_HASH, 0, 0,  READ10, 0, 0, 0, 0, 5, 0, 0, 3, 0, 0, 0
    PTEST "READ10 9+2 bcl 1000", 0x1000, T_HASH, 0, 0,  READ10, 0, 0, 0, 0, 9, 0, 0, 2, 0, 0, 0
    PTEST "READ10 9+2 bcl FFFF", 0xFFFF, T_HASH, 0, 0,  READ10, 0, 0, 0, 0, 9, 0, 0, 2, 0, 0, 0
    PTEST "READ10 3+0", 0xFFFE, T_HASH, 0, 0,  READ10, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0
    PTEST "READ10 last", 0xFFFE, T_HASH, 0, 0,  READ10, 0, 0, 0, 0x01, 0xFF, 0, 0, 1, 0, 0, 0
    PTEST "READ10 past end", 0xFFFE, 0, 0, 0,  READ10, 0, 0, 0, 0x02, 0x00, 0, 0, 1, 0, 0, 0
    PTEST "READ10 across end", 0xFFFE, 0, 0, 0,  READ10, 0, 0, 0, 0x01, 0xFE, 0, 0, 4, 0, 0, 0
    PTEST "READ12 100+4", 0xFFFE, T_HASH, 0, 0,  0xA8, 0, 0, 0, 0, 100, 0, 0, 0, 4, 0, 0
    PTEST "READ CD 7+2 user data", 0xFFFE, T_HASH, 0, 0,  0xBE, 0, 0, 0, 0, 7, 0, 0, 2, 0x10, 0, 0
    PTEST "READ TOC 0 LBA", 0xFFFE, T_DUMP, 20, 0,  0x43, 0, 0, 0, 0, 0, 0, 0x03, 0x24, 0, 0, 0
    PTEST "READ TOC 0 MSF", 0xFFFE, T_DUMP, 20, 0,  0x43, 2, 0, 0, 0, 0, 0, 0x03, 0x24, 0, 0, 0
    PTEST "READ TOC 0 lead-out", 0xFFFE, T_DUMP, 12, 0,  0x43, 0, 0, 0, 0, 0, 0xAA, 0x03, 0x24, 0, 0, 0
    PTEST "READ TOC 1", 0xFFFE, T_DUMP, 4, 0,  0x43, 0, 1, 0, 0, 0, 0, 0x03, 0x24, 0x40, 0, 0
    PTEST "READ TOC 1 MSF", 0xFFFE, T_DUMP, 4, 0,  0x43, 2, 1, 0, 0, 0, 0, 0x03, 0x24, 0x40, 0, 0
    PTEST "READ TOC 2", 0xFFFE, T_DUMP, 48, 0,  0x43, 2, 2, 0, 0, 0, 1, 0x03, 0x24, 0x80, 0, 0
    PTEST "READ TOC 0 alloc 4", 0xFFFE, T_DUMP, 4, 0,  0x43, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0
    PTEST "bad opcode", 0xFFFE, 0, 0, 0,  0xD8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    PTEST "SEEK 50", 0xFFFE, 0, 0, 0,  0x2B, 0, 0, 0, 0, 50, 0, 0, 0, 0, 0, 0
    PTEST "MODE SENSE 2A", 0xFFFE, 0, 0, 0,  0x5A, 0, 0x2A, 0, 0, 0, 0, 0, 0x80, 0, 0, 0
    PTEST "PREVENT", 0xFFFE, 0, 0, 0,  0x1E, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0
    PTEST "eject locked", 0xFFFE, T_NO_ASCQ, 0, 0,  0x1B, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0
    PTEST "ALLOW", 0xFFFE, 0, 0, 0,  0x1E, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    PTEST "SET CD SPEED", 0xFFFE, 0, 0, 0,  0xBB, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0
    PTEST "TUR bcl 0", 0x0000, 0, 0, 0,  0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    PTEST "DMA READ10 32+4", 0xFFFE, T_DMA | T_HASH, 0, 0x2000,  READ10, 0, 0, 0, 0, 32, 0, 0, 4, 0, 0, 0
    PTEST "DMA READ12 200+1", 0, T_DMA | T_HASH, 0, 0x0800,  0xA8, 0, 0, 0, 0, 200, 0, 0, 0, 1, 0, 0
    PTEST "DMA READ CAPACITY", 0xFFFE, T_DMA | T_DUMP, 8, 8,  0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    PTEST "DMA READ10 past end", 0xFFFE, T_DMA, 0, 0x0800,  READ10, 0, 0, 0, 0x02, 0x00, 0, 0, 1, 0, 0, 0
    PTEST "DMA TUR", 0xFFFE, T_DMA, 0, 0x0800,  0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    PTEST "eject", 0xFFFE, 0, 0, 0,  0x1B, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0
    PTEST "TUR tray open", 0xFFFE, 0, 0, 0,  0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    PTEST "load", 0xFFFE, 0, 0, 0,  0x1B, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0
    PTEST "TUR loaded", 0xFFFE, 0, 0, 0,  0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    PTEST "TUR again", 0xFFFE, 0, 0, 0,  0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
    PTEST "READ10 after load", 0xFFFE, T_HASH, 0, 0,  READ10, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0
    dw 0

; ---------------------------------------------------------------- reset vector
section .reset start=0xFFF0
reset:
    jmp 0xF000:start
    times 16 - ($ - $$) db 0
