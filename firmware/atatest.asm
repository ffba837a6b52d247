; atatest.asm -- a ROM that drives the PC's IDE/ATA controller directly.
;
; Theory of operation
; -------------------
; This is a 64 KiB "BIOS" image: the CPU starts at F000:FFF0, jumps to `start`,
; and runs in real mode with interrupts off.  No BIOS services are used, so the
; same binary runs under `qemu-system-i386 -M pc -bios atatest.bin` (with
; `-device isa-debug-exit,iobase=0xf4,iosize=0x04 -debugcon file:T`) and under
; `emu run --bios atatest.bin --debugcon file:T`.
;
; It finds the PIIX3 IDE function on PCI (8086:7010) by configuration
; mechanism #1, gives it a bus-master I/O base (BAR4) and enables I/O and bus
; mastering, picks the drive under test -- the last of primary master, primary
; slave, secondary master, secondary slave whose status reads as a device -- and
; runs a table of ATA commands on it (`tests:` below): IDENTIFY, CHS / LBA28 /
; LBA48 PIO reads and writes, READ/WRITE MULTIPLE, READ/WRITE DMA with
; multi-entry, long and short PRD tables, READ VERIFY, FLUSH, power and
; diagnostic commands, INTRQ and nIEN, and error cases (out-of-range addresses
; and invalid commands).  Every line of the transcript it prints on the debug
; console (port 0xE9) holds only what two correct IDE implementations must
; agree on: status bits BSY/DRDY/DF/DRQ/ERR (DSC, CORR and IDX are obsolete and
; masked), error bytes, and a hash of the data moved.  Model, serial and
; firmware strings are checked for being printable ASCII, not printed.  For
; out-of-range addresses ATA says IDNF while QEMU reports ABRT, so those lines
; print "rejected" when either bit is set.
;
; Data written is a pattern the host can recompute: dword i of the sector at
; LBA L written with seed S is ((L * 128 + i) * 0x9E3779B1 + S) mod 2^32.
;
; Active after a rejected command: when the drive aborts a DMA command before
; moving data, a PIIX keeps the bus-master Active bit set (it clears only at the
; end of the PRD table or when the host clears Start) and QEMU clears it; those
; lines print the interrupt and error bits only.  A long PRD table leaves Active
; set in both; a short one ends with Active clear and no interrupt.
;
; Each addressed test prints "@LLLLLLLLLLLL+NNNNNNNN" (48-bit LBA and sector count,
; hex) so the host can recompute every hash from its model of the disk.
; The data hash folds dwords: h = 0x811C9DC5; h = rol32((h ^ d) * 0x01000193, 5).
;
; When LBA 0 of the disk starts with "ATABENCH", the ROM instead reads in bulk
; (dword at offset 8: sectors per method, a multiple of 256; byte at offset 12:
; methods, bit 0 PIO READ SECTORS, bit 1 READ MULTIPLE with 16-sector blocks,
; bit 2 READ DMA), 256 sectors per command, printing "BENCH <name> begin/end"
; lines; bench/guest_io.py times whole runs against a run that reads nothing.
;
; The ROM exits through the debug-exit port 0xF4: 0 when the run completed
; (the transcript says what happened), 2 when the disk does not answer (BSY or
; a DMA never ends), 3 when no PIIX3 IDE function is found, 4 when a bench-mode
; read fails.

cpu 386
bits 16
org 0

; ---------------------------------------------------------------- ports
DEBUGCON        equ 0xE9
DEBUG_EXIT      equ 0xF4
PCI_ADDRESS     equ 0xCF8
PCI_DATA        equ 0xCFC

; task-file registers, offsets from the channel's command block (0x1F0 / 0x170)
REG_DATA        equ 0
REG_ERROR       equ 1               ; features when written
REG_COUNT       equ 2
REG_LBA_LOW     equ 3
REG_LBA_MID     equ 4
REG_LBA_HIGH    equ 5
REG_DEVICE      equ 6
REG_STATUS      equ 7               ; command when written
; the control block (0x3F6 / 0x376) holds the alternate status / device control

; bus-master registers, offsets from BAR4
BM_COMMAND      equ 0
BM_STATUS       equ 2
BM_PRD_ADDRESS  equ 4
BM_START        equ 0x01
BM_TO_MEMORY    equ 0x08            ; direction: device -> memory (a read)
BM_ACTIVE       equ 0x01
BM_ERROR        equ 0x02
BM_INTERRUPT    equ 0x04

; status and error bits
ST_BSY          equ 0x80
ST_DRDY         equ 0x40
ST_DRQ          equ 0x08
ST_ERR          equ 0x01
STATUS_MASK     equ 0xE9            ; BSY DRDY DF DRQ ERR (DSC/CORR/IDX are obsolete)
ER_ABRT         equ 0x04
ER_IDNF         equ 0x10

DEV_MASTER      equ 0xA0
DEV_SLAVE       equ 0xB0
DEV_LBA         equ 0x40
CTL_NIEN        equ 0x02
CTL_SRST        equ 0x04
CTL_HOB         equ 0x80

PRIMARY_COMMAND     equ 0x1F0
PRIMARY_CONTROL     equ 0x3F6
SECONDARY_COMMAND   equ 0x170
SECONDARY_CONTROL   equ 0x376

PIIX3_IDE_ID    equ 0x70108086
BM_BASE_PORT    equ 0xC000
WAIT_LOOPS      equ 0x04000000

; ---------------------------------------------------------------- RAM layout (segment 0)
STACK_TOP       equ 0x7000
VAR             equ 0x0500
v_hash          equ VAR + 0x00      ; dword
v_capacity      equ VAR + 0x04      ; dword, LBA28 capacity (IDENTIFY 60-61)
v_heads         equ VAR + 0x08      ; word, current heads (IDENTIFY 55)
v_sectors       equ VAR + 0x0A      ; word, current sectors per track (IDENTIFY 56)
v_bm_base       equ VAR + 0x0C      ; word
v_remaining     equ VAR + 0x10      ; dword, sectors still to move
v_block         equ VAR + 0x14      ; word, sectors per DRQ block
v_status        equ VAR + 0x16      ; byte, final status
v_error         equ VAR + 0x17      ; byte, final error
v_bm_status     equ VAR + 0x18      ; byte
v_multiple      equ VAR + 0x1A      ; word, sectors per block for MULTIPLE commands
v_lba           equ VAR + 0x1C      ; dword, current command's LBA (low 32 bits)
v_lba_high      equ VAR + 0x20      ; word, LBA bits 32..47
v_count         equ VAR + 0x22      ; word, sector count register value
v_seed          equ VAR + 0x24      ; dword
v_pci_bdf       equ VAR + 0x28      ; dword, config address of the IDE function
v_moved         equ VAR + 0x2C      ; dword, sectors moved before an error
v_bench_total   equ VAR + 0x30      ; dword
v_test          equ VAR + 0x34      ; word, current test table entry
v_bench_mode    equ VAR + 0x36      ; byte, nonzero: move data without hashing
v_bench_left    equ VAR + 0x40      ; dword
v_bench_lba     equ VAR + 0x44      ; dword
v_bench_methods equ VAR + 0x48      ; byte: bit 0 PIO, bit 1 MULTIPLE, bit 2 DMA
v_bench_bit     equ VAR + 0x49      ; byte
v_irq           equ VAR + 0x4A      ; byte, BM_INTERRUPT when the command raised INTRQ
v_command_base  equ VAR + 0x4C      ; word, the drive under test's command block
v_control_base  equ VAR + 0x4E      ; word, ...its control block
v_device        equ VAR + 0x50      ; byte, DEV_MASTER or DEV_SLAVE
v_position      equ VAR + 0x52      ; word, entry of `positions` being tried
v_found         equ VAR + 0x54      ; word, the last entry with a device

PRD_TABLE       equ 0x1000          ; up to 512 entries (4 KiB), within one 64 KiB page
PIO_SEGMENT     equ 0x1000          ; PIO buffer at 0x10000
DMA_BUFFER      equ 0x20000         ; DMA buffers 0x20000..0x8FFFF
DMA_BUFFER_END  equ 0x90000
SCATTER_CHUNK   equ 1536            ; small DMA transfers use 1.5 KiB PRD entries...
SCATTER_GAP     equ 512             ; ...with gaps between them
SPARE_BUFFER    equ 0x1F000         ; the extra entry of a long PRD table
SPARE_BYTES     equ 2048

; ---------------------------------------------------------------- test table
; address modes
A_NONE          equ 0
A_LBA28         equ 1
A_LBA48         equ 2
A_CHS           equ 3
; protocols
P_NONE          equ 0               ; non-data
P_PIO_IN        equ 1
P_PIO_OUT       equ 2
P_DMA_IN        equ 3
P_DMA_OUT       equ 4
; flags
F_FROM_END      equ 0x01            ; LBA counts back from the capacity
F_REJECT        equ 0x02            ; out of range: print "rejected" for ABRT or IDNF
F_MULTIPLE      equ 0x04            ; DRQ blocks of v_multiple sectors
F_REGS          equ 0x08            ; print the LBA registers after the command
F_REGS_HOB      equ 0x10            ; ...and their HOB (previous) values
F_SIGNATURE     equ 0x20            ; print count and LBA registers (device signature)
F_COUNT_REG     equ 0x40            ; print the sector count register
F_NO_HASH       equ 0x80            ; data is model-specific (IDENTIFY): no hash
F_SETS_MULTIPLE equ 0x100           ; SET MULTIPLE MODE: on success, blocks are v_count sectors
F_IRQ           equ 0x200           ; print whether INTRQ rose (the bus-master interrupt bit)
F_NIEN          equ 0x400           ; run with nIEN set (the drive must not interrupt)
F_PRD_LONG      equ 0x800           ; DMA: the PRD table describes more than the transfer
F_PRD_SHORT     equ 0x1000          ; DMA: ...less (the result is read after an SRST)

struc test
    .name:      resw 1
    .opcode:    resb 1
    .address:   resb 1
    .protocol:  resb 1
    .features:  resb 1
    .flags:     resw 1
    .lba:       resd 1
    .lba_high:  resw 1
    .count:     resw 1
    .seed:      resd 1
endstruc

; TEST "name", opcode, address, protocol, features, flags, lba, lba_high, count, seed
%macro TEST 10
    dw %%name
    db %2, %3, %4, %5
    dw %6
    dd %7
    dw %8, %9
    dd %10
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

; ATA_DX REG: DX = that task-file register of the drive under test; CONTROL_DX: its
; alternate status / device control register
%macro ATA_DX 1
    mov dx, [v_command_base]
%if %1 != 0
    add dx, %1
%endif
%endmacro

%macro CONTROL_DX 0
    mov dx, [v_control_base]
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
    mov byte [v_bench_mode], 0
    PRINT_LINE "ATATEST 1"
    mov word [v_found], 0
    call pci_setup
    call find_drive
    call reset_channel
    call identify
    call check_bench
    mov si, tests
.next:
    cmp word [cs:si + test.name], 0
    je .done
    call run_test
    add si, test_size
    jmp .next
.done:
    call other_unit_probe
    PRINT_LINE "ATATEST done"
    xor al, al
    jmp exit

; ---------------------------------------------------------------- debug console
; puts: print the NUL-terminated string at CS:SI
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

; putc: print AL
putc:
    push dx
    mov dx, DEBUGCON
    out dx, al
    pop dx
    ret

; hex32 / hex16 / hex8: print EAX / AX / AL as hex digits
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

; dec16: print AX in decimal
dec16:
    pusha
    xor cx, cx
    mov bx, 10
.divide:
    xor dx, dx
    div bx
    push dx
    inc cx
    test ax, ax
    jnz .divide
.digit:
    pop ax
    add al, '0'
    call putc
    loop .digit
    popa
    ret

; exit with status AL through the debug-exit device
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
; pci_read32: EAX = config address -> EAX = dword
pci_read32:
    push dx
    mov dx, PCI_ADDRESS
    out dx, eax
    mov dx, PCI_DATA
    in eax, dx
    pop dx
    ret

; pci_write32: EAX = config address, ECX = value
pci_write32:
    push dx
    mov dx, PCI_ADDRESS
    out dx, eax
    mov dx, PCI_DATA
    xchg eax, ecx
    out dx, eax
    xchg eax, ecx
    pop dx
    ret

; pci_write16: EAX = config address (bit 1 selects the high word), CX = value
pci_write16:
    push dx
    push eax
    mov dx, ax
    and dx, 2
    add dx, PCI_DATA
    and al, 0xFC
    push dx
    mov dx, PCI_ADDRESS
    out dx, eax
    pop dx
    mov ax, cx
    out dx, ax
    pop eax
    pop dx
    ret

pci_setup:
    PRINT "PCI host "
    mov eax, 0x80000000
    call pci_read32
    call hex32
    PRINT " isa "
    mov eax, 0x80000800
    call pci_read32
    call hex32
    mov ebx, 0x80000000                 ; scan bus 0, every device and function
.scan:
    mov eax, ebx
    call pci_read32
    cmp eax, PIIX3_IDE_ID
    je .found
    add ebx, 0x100
    cmp ebx, 0x80010000
    jb .scan
    PRINT_LINE " no PIIX3 IDE"
    mov al, 3
    jmp exit
.found:
    mov [v_pci_bdf], ebx
    PRINT " ide "
    mov eax, ebx
    shr eax, 8
    call hex16                          ; bus/device/function as BBDF (0009 = 00:01.1)
    PRINT " class "
    lea eax, [ebx + 0x08]
    call pci_read32
    shr eax, 8                          ; class, subclass, programming interface
    call hex32
    ; size BAR4 the way a BIOS does: write all ones, read the mask back
    lea eax, [ebx + 0x20]
    mov ecx, 0xFFFFFFFF
    call pci_write32
    call pci_read32
    PRINT " bar4mask "
    call hex16                          ; bits 31:16 are reserved on a PIIX3
    lea eax, [ebx + 0x20]
    mov ecx, BM_BASE_PORT
    call pci_write32
    call pci_read32
    PRINT " bar4 "
    call hex16
    and ax, 0xFFFC
    mov [v_bm_base], ax
    ; IDE decode enable for both channels (IDETIM bit 15), as SeaBIOS does
    lea eax, [ebx + 0x40]
    mov cx, 0x8000
    call pci_write16
    lea eax, [ebx + 0x42]
    call pci_write16
    ; command register: I/O space and bus master
    lea eax, [ebx + 0x04]
    mov cx, 0x0005
    call pci_write16
    call pci_read32
    PRINT " cmd "
    call hex8                           ; low byte: I/O, memory, bus master bits
    mov al, 10
    call putc
    ret

; ---------------------------------------------------------------- ATA primitives
; delay400: read the alternate status four times (the ATA 400 ns settle)
delay400:
    push ax
    push dx
    CONTROL_DX
    in al, dx
    in al, dx
    in al, dx
    in al, dx
    pop dx
    pop ax
    ret

; wait_not_busy: poll the alternate status until BSY clears -> AL = status
wait_not_busy:
    push ecx
    push dx
    mov ecx, WAIT_LOOPS
    CONTROL_DX
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

; select: AL = device register value (with wait)
select:
    push dx
    ATA_DX REG_DEVICE
    out dx, al
    pop dx
    call delay400
    jmp wait_not_busy

; read_result: store the status (clears INTRQ) and the error register
read_result:
    push ax
    push dx
    call wait_not_busy
    ATA_DX REG_STATUS
    in al, dx
    mov [v_status], al
    ATA_DX REG_ERROR
    in al, dx
    mov [v_error], al
    pop dx
    pop ax
    ret

; print_status: " st=XX" (masked) and " er=XX" when ERR is set.  BX = flags
print_status:
    push ax
    PRINT " st="
    mov al, [v_status]
    and al, STATUS_MASK
    call hex8
    test byte [v_status], ST_ERR
    jz .done
    test bl, F_REJECT
    jz .raw_error
    test byte [v_error], ER_ABRT | ER_IDNF
    jz .raw_error
    PRINT " rejected"
    jmp .done
.raw_error:
    PRINT " er="
    mov al, [v_error]
    call hex8
.done:
    pop ax
    ret

; print_registers: " lba=HHMMLL" from the LBA registers (HOB ones first with F_REGS_HOB)
print_registers:
    push ax
    push dx
    test bl, F_REGS_HOB
    jz .current
    CONTROL_DX
    mov al, CTL_HOB
    out dx, al
    PRINT " hob="
    call .lba
    CONTROL_DX
    xor al, al
    out dx, al
.current:
    PRINT " lba="
    call .lba
    pop dx
    pop ax
    ret
.lba:
    ATA_DX REG_LBA_HIGH
    in al, dx
    call hex8
    ATA_DX REG_LBA_MID
    in al, dx
    call hex8
    ATA_DX REG_LBA_LOW
    in al, dx
    jmp hex8

; print_signature: " sig=CC LL MM HH" from count and LBA registers
print_signature:
    push ax
    push dx
    PRINT " er="
    ATA_DX REG_ERROR
    in al, dx
    call hex8
    PRINT " sig="
    ATA_DX REG_COUNT
    push cx
    mov cx, REG_LBA_HIGH - REG_COUNT + 1
.next:
    in al, dx
    call hex8
    inc dx
    dec cx
    jz .end
    mov al, ' '
    call putc
    jmp .next
.end:
    pop cx
    pop dx
    pop ax
    ret

; ---------------------------------------------------------------- hashing and patterns
; hash_buffer: fold CX dwords at ES:0 into v_hash
hash_buffer:
    cmp byte [v_bench_mode], 0
    jne .skip
    push eax
    push cx
    push si
    mov eax, [v_hash]
    xor si, si
.loop:
    xor eax, [es:si]
    imul eax, eax, 0x01000193
    rol eax, 5
    add si, 4
    loop .loop
    mov [v_hash], eax
    pop si
    pop cx
    pop eax
.skip:
    ret

hash_reset:
    mov dword [v_hash], 0x811C9DC5
    ret

print_hash:
    push eax
    PRINT " h="
    mov eax, [v_hash]
    call hex32
    pop eax
    ret

; fill_pattern: CX sectors at ES:DI for LBA EAX onward with seed [v_seed]
fill_pattern:
    pushad
    mov ebx, eax
    shl ebx, 7                          ; L * 128
    movzx ecx, cx
    shl ecx, 7                          ; dwords to write
.loop:
    mov eax, ebx
    imul eax, eax, -0x61C8864F       ; 0x9E3779B1
    add eax, [v_seed]
    stosd
    inc ebx
    loop .loop
    popad
    ret

; ---------------------------------------------------------------- task file
; load_taskfile: write features, count, address and device for the current test
; (entry at CS:SI; v_lba/v_lba_high/v_count already resolved)
load_taskfile:
    pushad
    mov al, [cs:si + test.address]
    cmp al, A_LBA48
    je .lba48
    cmp al, A_CHS
    je .chs
    cmp al, A_LBA28
    je .lba28
    ; non-data commands: count register only
    mov al, [v_device]
    call select
    ATA_DX REG_ERROR
    mov al, [cs:si + test.features]
    out dx, al
    ATA_DX REG_COUNT
    mov al, [v_count]
    out dx, al
    jmp .end
.lba28:
    mov eax, [v_lba]
    shr eax, 24
    and al, 0x0F
    or al, [v_device]
    or al, DEV_LBA
    call select
    mov eax, [v_lba]
    call .low_registers
    jmp .end
.lba48:
    mov al, [v_device]
    or al, DEV_LBA
    call select
    ; first the "previous" (HOB) bytes: count 15:8, LBA 31:24, 39:32, 47:40
    ATA_DX REG_ERROR
    xor al, al
    out dx, al
    ATA_DX REG_COUNT
    mov al, [v_count + 1]
    out dx, al
    ATA_DX REG_LBA_LOW
    mov al, [v_lba + 3]
    out dx, al
    ATA_DX REG_LBA_MID
    mov al, [v_lba_high]
    out dx, al
    ATA_DX REG_LBA_HIGH
    mov al, [v_lba_high + 1]
    out dx, al
    mov eax, [v_lba]
    call .low_registers
    jmp .end
.chs:
    ; C/H/S from the current translation: S = L mod spt + 1, H = (L / spt) mod heads
    mov eax, [v_lba]
    xor edx, edx
    movzx ecx, word [v_sectors]
    div ecx
    inc dl
    mov bl, dl                          ; sector
    xor edx, edx
    movzx ecx, word [v_heads]
    div ecx                             ; eax = cylinder, dl = head
    mov bh, al
    mov cl, ah                          ; cylinder high byte
    mov al, dl
    or al, [v_device]
    call select
    ATA_DX REG_ERROR
    mov al, [cs:si + test.features]
    out dx, al
    ATA_DX REG_COUNT
    mov al, [v_count]
    out dx, al
    ATA_DX REG_LBA_LOW
    mov al, bl
    out dx, al
    ATA_DX REG_LBA_MID
    mov al, bh
    out dx, al
    ATA_DX REG_LBA_HIGH
    mov al, cl
    out dx, al
.end:
    popad
    ret
; features, count 7:0, LBA 7:0, 15:8, 23:16 from EAX / v_count
.low_registers:
    push eax
    ATA_DX REG_ERROR
    mov al, [cs:si + test.features]
    out dx, al
    ATA_DX REG_COUNT
    mov al, [v_count]
    out dx, al
    pop eax
    ATA_DX REG_LBA_LOW
    out dx, al
    shr eax, 8
    ATA_DX REG_LBA_MID
    out dx, al
    shr eax, 8
    ATA_DX REG_LBA_HIGH
    out dx, al
    ret

; issue: write the command register from the test entry
issue:
    push ax
    push dx
    ATA_DX REG_STATUS
    mov al, [cs:si + test.opcode]
    out dx, al
    call delay400
    pop dx
    pop ax
    ret

; ---------------------------------------------------------------- PIO protocols
; pio_in: read v_remaining sectors in DRQ blocks of v_block sectors, hashing them
pio_in:
    push es
    mov ax, PIO_SEGMENT
    mov es, ax
.block:
    call wait_not_busy
    test al, ST_ERR
    jnz .end
    test al, ST_DRQ
    jz .end
    call block_words                    ; CX = words in this block
    xor di, di
    ATA_DX REG_DATA
    rep insw
    call block_words
    shr cx, 1
    call hash_buffer
    call block_done
    jnz .block
.end:
    call read_result
    pop es
    ret

; pio_out: write v_remaining sectors of pattern in DRQ blocks of v_block sectors
pio_out:
    push es
    mov ax, PIO_SEGMENT
    mov es, ax
.block:
    call wait_not_busy
    test al, ST_ERR
    jnz .end
    test al, ST_DRQ
    jz .end
    call block_words
    shr cx, 8                           ; sectors in this block
    xor di, di
    mov eax, [v_lba]
    add eax, [v_moved]
    call fill_pattern
    call block_words
    xor si, si
    ATA_DX REG_DATA                     ; (before DS moves to the buffer)
    push ds
    push es
    pop ds
    rep outsw
    pop ds
    mov si, [v_test]
    call block_words
    shr cx, 1
    call hash_buffer
    call block_done
    jnz .block
.end:
    call read_result
    pop es
    ret

; block_words: CX = 256 * min(v_block, v_remaining)
block_words:
    push eax
    movzx eax, word [v_block]
    cmp eax, [v_remaining]
    jbe .fits
    mov eax, [v_remaining]
.fits:
    shl ax, 8
    mov cx, ax
    pop eax
    ret

; block_done: account for the block just moved; ZF set when nothing remains
block_done:
    push eax
    push cx
    call block_words
    movzx eax, ch                       ; sectors in the block
    add [v_moved], eax
    sub [v_remaining], eax
    pop cx
    pop eax
    ret

; ---------------------------------------------------------------- DMA protocol
; build_prd: a PRD table for v_remaining sectors into DMA_BUFFER.  Transfers of
; up to 64 KiB use 1.5 KiB entries with 512-byte gaps (multi-entry, not
; sector-aligned); larger ones use 64 KiB entries (byte count 0 = 64 KiB) laid
; out one after the other up to DMA_BUFFER_END, then wrapping, and a last entry
; with the exact remainder, so the table always describes the exact transfer.
build_prd:
    pushad
    mov eax, [v_remaining]
    shl eax, 9                          ; bytes
    mov di, PRD_TABLE
    mov ebx, DMA_BUFFER
    cmp eax, 0x10000
    ja .large
.small:
    mov ecx, SCATTER_CHUNK
    cmp eax, ecx
    ja .small_entry
    mov ecx, eax
.small_entry:
    mov [di], ebx
    mov [di + 4], cx
    mov word [di + 6], 0
    add ebx, ecx
    add ebx, SCATTER_GAP
    add di, 8
    sub eax, ecx
    jnz .small
    jmp .end_of_table
.large:
    mov ecx, 0x10000
    cmp eax, ecx
    jae .large_entry
    mov ecx, eax
.large_entry:
    mov [di], ebx
    mov [di + 4], cx                    ; 0x10000 truncates to 0: 64 KiB
    mov word [di + 6], 0
    add ebx, 0x10000
    cmp ebx, DMA_BUFFER_END
    jb .large_next
    mov ebx, DMA_BUFFER
.large_next:
    add di, 8
    sub eax, ecx
    jnz .large
.end_of_table:
    mov si, [v_test]
    test word [cs:si + test.flags], F_PRD_LONG
    jz .not_long
    ; a long table: one more entry than the transfer needs (Active must stay set)
    mov dword [di], SPARE_BUFFER
    mov dword [di + 4], SPARE_BYTES
    add di, 8
.not_long:
    test word [cs:si + test.flags], F_PRD_SHORT
    jz .not_short
    sub di, 8                           ; a short table: the last entry left out
.not_short:
    or word [di - 2], 0x8000
    popad
    ret

; hash_prd: fold the bytes the PRD table describes, in table order, into v_hash
hash_prd:
    pushad
    push es
    mov bx, PRD_TABLE
.entry:
    mov eax, [bx]
    shr eax, 4                          ; PRD addresses here are 16-byte aligned
    mov es, ax
    movzx ecx, word [bx + 4]
    test cx, cx
    jnz .sized
    ; a 64 KiB entry: hash it in two 32 KiB halves
    mov cx, 0x2000
    call hash_buffer
    mov ax, es
    add ax, 0x800
    mov es, ax
    mov cx, 0x2000
    call hash_buffer
    jmp .following
.sized:
    shr cx, 2
    call hash_buffer
.following:
    test word [bx + 6], 0x8000
    jnz .end
    add bx, 8
    jmp .entry
.end:
    pop es
    popad
    ret

; fill_prd: write the pattern for v_lba.. into the buffers the PRD table describes
; (entries are sector multiples or, for scatter tables, 1.5 KiB = 3 sectors)
fill_prd:
    pushad
    push es
    mov bx, PRD_TABLE
    mov eax, [v_lba]
.entry:
    mov edx, [bx]
    shr edx, 4
    mov es, dx
    xor di, di
    movzx ecx, word [bx + 4]
    test cx, cx
    jnz .sized
    ; 64 KiB: 128 sectors in two halves of 64
    mov cx, 64
    call fill_pattern
    add eax, 64
    mov dx, es
    add dx, 0x800
    mov es, dx
    call fill_pattern
    add eax, 64
    jmp .following
.sized:
    shr cx, 9
    call fill_pattern
    add eax, ecx
.following:
    test word [bx + 6], 0x8000
    jnz .end
    add bx, 8
    jmp .entry
.end:
    pop es
    popad
    ret

; dma: run the current test's command as a bus-master transfer.  AL = BM_TO_MEMORY or 0
dma:
    mov bl, al                          ; direction
    call build_prd
    test bl, bl
    jnz .buffers_ready
    call fill_prd
.buffers_ready:
    mov dx, [v_bm_base]
    add dx, BM_COMMAND
    xor al, al
    out dx, al                          ; stop any previous transfer
    add dx, BM_STATUS - BM_COMMAND
    mov al, BM_ERROR | BM_INTERRUPT
    out dx, al                          ; write-one-to-clear
    add dx, BM_PRD_ADDRESS - BM_STATUS
    mov eax, PRD_TABLE
    out dx, eax
    mov dx, [v_bm_base]
    mov al, bl
    out dx, al                          ; direction, not started
    call load_taskfile
    call issue
    mov dx, [v_bm_base]
    mov al, bl
    or al, BM_START
    out dx, al
    ; wait for the interrupt bit (or the engine going idle without one)
    add dx, BM_STATUS
    mov ecx, WAIT_LOOPS
.poll:
    in al, dx
    test al, BM_INTERRUPT
    jnz .finished
    test al, BM_ACTIVE
    jz .finished
    dec ecx
    jnz .poll
    jmp fatal_timeout
.finished:
    in al, dx                           ; the status before stopping: Active still shows
    mov [v_bm_status], al
    mov dx, [v_bm_base]
    mov al, bl
    out dx, al                          ; clear the start bit
    mov si, [v_test]
    test word [cs:si + test.flags], F_PRD_SHORT
    jz .drive_result
    ; the drive still wants data that no PRD describes: recover with a software reset
    call soft_reset
    jmp .drive_done
.drive_result:
    call read_result
.drive_done:
    mov dx, [v_bm_base]
    add dx, BM_STATUS
    mov al, BM_ERROR | BM_INTERRUPT
    out dx, al
    ret

; ---------------------------------------------------------------- one test
; run_test: the test entry at CS:SI
run_test:
    mov [v_test], si
    push si
    mov si, [cs:si + test.name]
    call puts
    pop si
    call hash_reset
    ; resolve the address and the sector count
    mov eax, [cs:si + test.lba]
    test byte [cs:si + test.flags], F_FROM_END
    jz .absolute
    neg eax
    add eax, [v_capacity]
.absolute:
    mov [v_lba], eax
    mov ax, [cs:si + test.lba_high]
    mov [v_lba_high], ax
    mov ax, [cs:si + test.count]
    mov [v_count], ax
    movzx eax, ax
    test eax, eax
    jnz .counted
    mov eax, 256
    cmp byte [cs:si + test.address], A_LBA48
    jne .counted
    mov eax, 65536
.counted:
    mov [v_remaining], eax
    cmp byte [cs:si + test.address], A_NONE
    je .unaddressed
    PRINT " @"                          ; where and how much, so the host can predict hashes
    mov ax, [v_lba_high]
    call hex16
    mov eax, [v_lba]
    call hex32
    mov al, '+'
    call putc
    mov eax, [v_remaining]
    call hex32
.unaddressed:
    mov dword [v_moved], 0
    mov word [v_block], 1
    test byte [cs:si + test.flags], F_MULTIPLE
    jz .protocol
    mov ax, [v_multiple]
    mov [v_block], ax
.protocol:
    mov eax, [cs:si + test.seed]
    mov [v_seed], eax
    ; the bus-master status interrupt bit latches every rising edge of the channel's
    ; INTRQ (PIO commands too): clear it first to see whether this command raised it
    mov dx, [v_bm_base]
    add dx, BM_STATUS
    mov al, BM_INTERRUPT
    out dx, al
    test word [cs:si + test.flags], F_NIEN
    jz .interrupts_on
    CONTROL_DX
    mov al, CTL_NIEN
    out dx, al
.interrupts_on:
    movzx bx, byte [cs:si + test.protocol]
    shl bx, 1
    call [cs:bx + protocol_handlers]
    mov si, [v_test]
    mov bx, [cs:si + test.flags]
    test bx, F_IRQ
    jz .irq_checked
    mov dx, [v_bm_base]
    add dx, BM_STATUS
    in al, dx
    and al, BM_INTERRUPT
    mov [v_irq], al
    CONTROL_DX
    xor al, al
    out dx, al                          ; nIEN off again
.irq_checked:
    test bx, F_SETS_MULTIPLE
    jz .report
    test byte [v_status], ST_ERR
    jnz .report
    mov ax, [v_count]
    mov [v_multiple], ax
.report:
    call print_status
    test bx, F_IRQ
    jz .no_irq
    PRINT " irq="
    mov al, [v_irq]
    call hex8
.no_irq:
    cmp byte [cs:si + test.protocol], P_DMA_IN
    jb .no_bm
    PRINT " bm="
    mov al, [v_bm_status]
    and al, BM_ACTIVE | BM_ERROR | BM_INTERRUPT
    test bl, F_REJECT
    jz .bm_bits
    and al, ~BM_ACTIVE                  ; see "Active after a rejected command" above
.bm_bits:
    call hex8
.no_bm:
    cmp byte [cs:si + test.protocol], P_NONE
    je .no_hash
    test bl, F_NO_HASH
    jnz .no_hash
    test byte [v_status], ST_ERR
    jnz .no_hash
    call print_hash
.no_hash:
    test bl, F_REGS
    jz .no_regs
    call print_registers
.no_regs:
    test bl, F_COUNT_REG
    jz .no_count
    PRINT " count="
    ATA_DX REG_COUNT
    in al, dx
    call hex8
.no_count:
    test bl, F_SIGNATURE
    jz .no_signature
    call print_signature
.no_signature:
    mov al, 10
    call putc
    ret

protocol_handlers:
    dw do_non_data, do_pio_in, do_pio_out, do_dma_in, do_dma_out

do_non_data:
    call load_taskfile
    call issue
    jmp read_result

do_pio_in:
    call load_taskfile
    call issue
    jmp pio_in

do_pio_out:
    call load_taskfile
    call issue
    jmp pio_out

do_dma_in:
    mov al, BM_TO_MEMORY
    call dma
    jmp hash_prd

do_dma_out:
    xor al, al
    call dma
    jmp hash_prd

; ---------------------------------------------------------------- reset, identify, probe
; soft_reset: SRST pulse on the device control register, then the result registers
soft_reset:
    push ax
    push dx
    CONTROL_DX
    mov al, CTL_SRST
    out dx, al
    call delay400
    xor al, al
    out dx, al
    call delay400
    call wait_not_busy
    call read_result
    pop dx
    pop ax
    ret

reset_channel:
    PRINT "RESET"
    call soft_reset
    xor bl, bl
    call print_status
    call print_signature
    mov al, 10
    call putc
    ret

identify:
    mov si, identify_test
    call run_test
    push es
    mov ax, PIO_SEGMENT
    mov es, ax
    ; geometry and capacity the other tests use
    mov ax, [es:55 * 2]
    mov [v_heads], ax
    mov ax, [es:56 * 2]
    mov [v_sectors], ax
    mov eax, [es:60 * 2]
    mov [v_capacity], eax
    PRINT "IDENTIFY"
    mov bx, identify_words
.word:
    mov di, [cs:bx]
    cmp di, 0xFFFF
    je .strings
    PRINT " w"
    mov ax, di
    call dec16
    mov al, '='
    call putc
    shl di, 1
    mov ax, [es:di]
    and ax, [cs:bx + 2]
    call hex16
    add bx, 4
    jmp .word
.strings:
    ; serial (10-19), firmware (23-26), model (27-46): printable ASCII, model not blank
    PRINT " strings="
    mov di, 10 * 2
    mov cx, 10 * 2
    call .printable
    mov di, 23 * 2
    mov cx, 24 * 2
    call .printable
    mov di, 27 * 2
    mov cx, 20 * 2
    mov al, 'b'
.blank:
    cmp byte [es:di], ' '
    jne .not_blank
    inc di
    loop .blank
    call putc
    jmp .end
.not_blank:
    mov al, 'k'
    call putc
.end:
    mov al, 10
    call putc
    ; READ/WRITE MULTIPLE use 16 sectors per block when the drive allows it, else 8
    mov ax, [es:47 * 2]
    and ax, 0xFF
    mov word [v_multiple], 8
    cmp ax, 16
    jb .multiple_set
    mov word [v_multiple], 16
.multiple_set:
    pop es
    ret
.printable:
    mov al, 'o'
.char:
    mov ah, [es:di]
    cmp ah, 0x20
    jb .bad
    cmp ah, 0x7E
    ja .bad
    inc di
    loop .char
    jmp putc
.bad:
    mov al, '?'
    jmp putc

; the IDENTIFY words every correct ATA disk model must agree on, with masks
identify_words:
    dw 0, 0x8000                        ; ATA device
    dw 1, 0xFFFF                        ; default cylinders
    dw 3, 0xFFFF                        ; default heads
    dw 6, 0xFFFF                        ; default sectors per track
    dw 49, 0x0300                       ; LBA and DMA supported
    dw 53, 0x0001                       ; words 54-58 valid
    dw 54, 0xFFFF                       ; current cylinders
    dw 55, 0xFFFF                       ; current heads
    dw 56, 0xFFFF                       ; current sectors per track
    dw 57, 0xFFFF                       ; current capacity in sectors
    dw 58, 0xFFFF
    dw 60, 0xFFFF                       ; LBA28 capacity
    dw 61, 0xFFFF
    dw 83, 0xF400                       ; valid signature, LBA48, FLUSH CACHE (EXT)
    dw 86, 0x3400                       ; LBA48, FLUSH CACHE (EXT) enabled
    dw 100, 0xFFFF                      ; LBA48 capacity
    dw 101, 0xFFFF
    dw 102, 0xFFFF
    dw 103, 0xFFFF
    dw 0xFFFF

identify_test:
    TEST "IDENTIFY", 0xEC, A_NONE, P_PIO_IN, 0, F_NO_HASH, 0, 0, 1, 0

; other_unit_probe: the other device on the channel -- an absent one reads status 0,
; which SeaBIOS's probe relies on -- then the drive under test again
other_unit_probe:
    PRINT "OTHER UNIT"
    ATA_DX REG_DEVICE
    mov al, [v_device]
    xor al, DEV_MASTER ^ DEV_SLAVE
    out dx, al
    call delay400
    ATA_DX REG_STATUS
    in al, dx
    and al, STATUS_MASK
    PRINT " st="
    call hex8
    ATA_DX REG_DEVICE
    mov al, [v_device]
    out dx, al
    call delay400
    ATA_DX REG_STATUS
    in al, dx
    and al, STATUS_MASK
    PRINT " back st="
    call hex8
    mov al, 10
    jmp putc

; find_drive: the drive under test is the last position whose status reads as a
; device (not 00h/7Fh/FFh, what absent devices and channels read as); the
; bus-master registers of the secondary channel are 8 ports up
find_drive:
    mov word [v_position], positions
.try:
    mov bx, [v_position]
    mov ax, [cs:bx]
    test ax, ax
    jz .chosen
    mov [v_command_base], ax
    mov ax, [cs:bx + 2]
    mov [v_control_base], ax
    mov al, [cs:bx + 4]
    mov [v_device], al
    ATA_DX REG_DEVICE
    out dx, al
    call delay400
    ATA_DX REG_STATUS
    in al, dx
    cmp al, 0x00
    je .absent
    cmp al, 0x7F
    je .absent
    cmp al, 0xFF
    je .absent
    mov [v_found], bx
.absent:
    add word [v_position], 6
    jmp .try
.chosen:
    mov bx, [v_found]
    test bx, bx
    jnz .found
    PRINT_LINE "DRIVE none"
    mov al, 2
    jmp exit
.found:
    mov ax, [cs:bx]
    mov [v_command_base], ax
    mov ax, [cs:bx + 2]
    mov [v_control_base], ax
    mov al, [cs:bx + 4]
    mov [v_device], al
    PRINT "DRIVE "
    mov ax, [v_command_base]
    call hex16
    mov al, ' '
    call putc
    mov al, [v_device]
    call hex8
    mov al, 10
    call putc
    cmp word [v_command_base], SECONDARY_COMMAND
    jne .primary
    add word [v_bm_base], 8
.primary:
    ; select it and wait, so the tests start from a settled drive
    mov al, [v_device]
    jmp select

positions:
    dw PRIMARY_COMMAND, PRIMARY_CONTROL
    db DEV_MASTER, 0
    dw PRIMARY_COMMAND, PRIMARY_CONTROL
    db DEV_SLAVE, 0
    dw SECONDARY_COMMAND, SECONDARY_CONTROL
    db DEV_MASTER, 0
    dw SECONDARY_COMMAND, SECONDARY_CONTROL
    db DEV_SLAVE, 0
    dw 0

; ---------------------------------------------------------------- bench mode
check_bench:
    mov si, bench_probe
    call run_test
    push es
    mov ax, PIO_SEGMENT
    mov es, ax
    cmp dword [es:0], 'ATAB'
    jne .no
    cmp dword [es:4], 'ENCH'
    jne .no
    mov eax, [es:8]
    mov [v_bench_total], eax
    mov eax, [es:12]
    mov [v_bench_methods], eax
    pop es
    jmp bench
.no:
    pop es
    ret

bench_probe:
    TEST "PROBE", 0x20, A_LBA28, P_PIO_IN, 0, 0, 0, 0, 1, 0

; bench: read v_bench_total sectors with each method, 256 sectors per command
bench:
    ; SET MULTIPLE 16 first (quietly)
    mov si, bench_set_multiple
    call run_test
    mov word [v_multiple], 16
    mov byte [v_bench_mode], 1
    mov bx, bench_tests
    mov byte [v_bench_bit], 1
.method:
    mov si, [cs:bx]
    test si, si
    jz .done
    mov al, [v_bench_bit]
    shl byte [v_bench_bit], 1
    test [v_bench_methods], al
    jnz .measure
    add bx, 2
    jmp .method
.measure:
    PRINT "BENCH "
    push si
    mov si, [cs:si + test.name]
    call puts
    pop si
    PRINT_LINE " begin"
    mov eax, [v_bench_total]
    mov [v_bench_left], eax
    mov dword [v_bench_lba], 1
.command:
    push bx
    mov [v_test], si
    mov eax, [v_bench_lba]
    mov [v_lba], eax
    mov word [v_count], 0
    mov dword [v_remaining], 256
    mov dword [v_moved], 0
    mov word [v_block], 1
    test byte [cs:si + test.flags], F_MULTIPLE
    jz .go
    mov word [v_block], 16
.go:
    movzx bx, byte [cs:si + test.protocol]
    shl bx, 1
    call [cs:bx + protocol_handlers]
    pop bx
    mov si, [v_test]
    test byte [v_status], ST_ERR
    jnz .failed
    mov eax, [v_bench_lba]
    add eax, 256
    mov edx, eax
    add edx, 256
    cmp edx, [v_capacity]
    jbe .lba_ok
    mov eax, 1
.lba_ok:
    mov [v_bench_lba], eax
    sub dword [v_bench_left], 256
    ja .command
    PRINT "BENCH "
    push si
    mov si, [cs:si + test.name]
    call puts
    pop si
    PRINT_LINE " end"
    add bx, 2
    jmp .method
.failed:
    PRINT "BENCH failed"
    xor bl, bl
    call print_status
    mov al, 10
    call putc
    mov al, 4
    jmp exit
.done:
    PRINT_LINE "BENCH done"
    xor al, al
    jmp exit

bench_set_multiple:
    TEST "SETMULT16", 0xC6, A_NONE, P_NONE, 0, 0, 0, 0, 16, 0
bench_pio:
    TEST "pio", 0x20, A_LBA28, P_PIO_IN, 0, 0, 0, 0, 0, 0
bench_multiple:
    TEST "multiple", 0xC4, A_LBA28, P_PIO_IN, 0, F_MULTIPLE, 0, 0, 0, 0
bench_dma:
    TEST "dma", 0xC8, A_LBA28, P_DMA_IN, 0, 0, 0, 0, 0, 0
bench_tests:
    dw bench_pio, bench_multiple, bench_dma, 0

; ---------------------------------------------------------------- the test table
; LBAs are absolute unless F_FROM_END (then capacity - lba).  Disks are >= 16 MiB.
tests:
    TEST "R28 lba0", 0x20, A_LBA28, P_PIO_IN, 0, 0, 0, 0, 1, 0
    TEST "R28 count0=256", 0x20, A_LBA28, P_PIO_IN, 0, 0, 1, 0, 0, 0
    TEST "R28 last", 0x20, A_LBA28, P_PIO_IN, 0, F_FROM_END, 1, 0, 1, 0
    TEST "R28 noretry", 0x21, A_LBA28, P_PIO_IN, 0, 0, 77, 0, 3, 0
    TEST "RCHS", 0x20, A_CHS, P_PIO_IN, 0, 0, 5000, 0, 7, 0
    TEST "R48 count=0100", 0x24, A_LBA48, P_PIO_IN, 0, 0, 300, 0, 0x0100, 0
    TEST "R48 last", 0x24, A_LBA48, P_PIO_IN, 0, F_FROM_END, 2, 0, 2, 0
    TEST "SETMULT", 0xC6, A_NONE, P_NONE, 0, F_SETS_MULTIPLE, 0, 0, 8, 0
    ; (not IDENTIFY word 59: QEMU caches its IDENTIFY data, so it never shows the new setting)
    TEST "W28", 0x30, A_LBA28, P_PIO_OUT, 0, 0, 2000, 0, 5, 0x11111111
    TEST "W28 noretry", 0x31, A_LBA28, P_PIO_OUT, 0, 0, 2005, 0, 2, 0x12121212
    TEST "WCHS", 0x30, A_CHS, P_PIO_OUT, 0, 0, 3000, 0, 4, 0x22222222
    TEST "W48", 0x34, A_LBA48, P_PIO_OUT, 0, 0, 2100, 0, 10, 0x33333333
    TEST "W48 last", 0x34, A_LBA48, P_PIO_OUT, 0, F_FROM_END, 1, 0, 1, 0x44444444
    TEST "WMULT", 0xC5, A_LBA28, P_PIO_OUT, 0, F_MULTIPLE, 4000, 0, 20, 0x55555555
    TEST "WMULT48", 0x39, A_LBA48, P_PIO_OUT, 0, F_MULTIPLE, 4100, 0, 37, 0x66666666
    TEST "WDMA", 0xCA, A_LBA28, P_DMA_OUT, 0, 0, 5000, 0, 8, 0x77777777
    TEST "WDMA48 count=0100", 0x35, A_LBA48, P_DMA_OUT, 0, 0, 6000, 0, 0x0100, 0x88888888
    TEST "WDMA48 256 across", 0x35, A_LBA48, P_DMA_OUT, 0, 0, 8191, 0, 300, 0x99999999
    TEST "FLUSH", 0xE7, A_NONE, P_NONE, 0, 0, 0, 0, 0, 0
    TEST "FLUSH EXT", 0xEA, A_NONE, P_NONE, 0, 0, 0, 0, 0, 0
    ; read everything back with a different protocol than wrote it
    TEST "RDMA W28", 0xC8, A_LBA28, P_DMA_IN, 0, 0, 2000, 0, 7, 0
    TEST "RMULT WCHS", 0xC4, A_LBA28, P_PIO_IN, 0, F_MULTIPLE, 3000, 0, 4, 0
    TEST "RCHS W48", 0x20, A_CHS, P_PIO_IN, 0, 0, 2100, 0, 10, 0
    TEST "R28 W48 last", 0x20, A_LBA28, P_PIO_IN, 0, F_FROM_END, 1, 0, 1, 0
    TEST "RDMA48 WMULT", 0x25, A_LBA48, P_DMA_IN, 0, 0, 4000, 0, 20, 0
    TEST "RMULT48 WMULT48", 0x29, A_LBA48, P_PIO_IN, 0, F_MULTIPLE, 4100, 0, 37, 0
    TEST "R48 WDMA", 0x24, A_LBA48, P_PIO_IN, 0, 0, 5000, 0, 8, 0
    TEST "RMULT WDMA48", 0xC4, A_LBA28, P_PIO_IN, 0, F_MULTIPLE, 6000, 0, 0, 0
    TEST "RDMA48 across", 0x25, A_LBA48, P_DMA_IN, 0, 0, 8191, 0, 300, 0
    TEST "RDMA count0=256", 0xC8, A_LBA28, P_DMA_IN, 0, 0, 6000, 0, 0, 0
    TEST "RDMA48 count0=65536", 0x25, A_LBA48, P_DMA_IN, 0, F_NO_HASH, 0, 0, 0, 0
    TEST "WVERIFY", 0x3C, A_LBA28, P_PIO_OUT, 0, 0, 7000, 0, 3, 0xABCDEF01
    TEST "R28 WVERIFY", 0x20, A_LBA28, P_PIO_IN, 0, 0, 7000, 0, 3, 0
    TEST "VERIFY", 0x40, A_LBA28, P_NONE, 0, 0, 10, 0, 5, 0
    TEST "VERIFY EXT", 0x42, A_LBA48, P_NONE, 0, 0, 10, 0, 5, 0
    ; error cases
    TEST "R28 beyond", 0x20, A_LBA28, P_PIO_IN, 0, F_REJECT | F_FROM_END, 0, 0, 1, 0
    TEST "R48 beyond 2^32", 0x24, A_LBA48, P_PIO_IN, 0, F_REJECT, 0, 1, 1, 0
    TEST "W28 beyond", 0x30, A_LBA28, P_PIO_OUT, 0, F_REJECT | F_FROM_END, 0, 0, 1, 0xDEADBEEF
    TEST "RDMA beyond", 0xC8, A_LBA28, P_DMA_IN, 0, F_REJECT | F_FROM_END, 0, 0, 1, 0
    TEST "WDMA48 beyond", 0x35, A_LBA48, P_DMA_OUT, 0, F_REJECT, 0, 0x100, 1, 0xDEADBEEF
    TEST "bad opcode 01", 0x01, A_NONE, P_NONE, 0, 0, 0, 0, 0, 0
    TEST "bad opcode 0F", 0x0F, A_NONE, P_NONE, 0, 0, 0, 0, 0, 0
    TEST "SETMULT 3 (not a power of 2)", 0xC6, A_NONE, P_NONE, 0, F_SETS_MULTIPLE, 0, 0, 3, 0
    TEST "SETFEATURES bad", 0xEF, A_NONE, P_NONE, 0x00, 0, 0, 0, 0, 0
    ; non-data commands a BIOS uses
    TEST "SETFEATURES wcache on", 0xEF, A_NONE, P_NONE, 0x02, 0, 0, 0, 0, 0
    TEST "SETFEATURES udma2", 0xEF, A_NONE, P_NONE, 0x03, 0, 0, 0, 0x42, 0
    TEST "SETFEATURES wcache off", 0xEF, A_NONE, P_NONE, 0x82, 0, 0, 0, 0, 0
    TEST "SETFEATURES pio4", 0xEF, A_NONE, P_NONE, 0x03, 0, 0, 0, 0x0C, 0
    TEST "RECALIBRATE", 0x10, A_NONE, P_NONE, 0, 0, 0, 0, 0, 0
    TEST "SEEK", 0x70, A_LBA28, P_NONE, 0, 0, 1234, 0, 0, 0
    TEST "CHECK POWER", 0xE5, A_NONE, P_NONE, 0, F_COUNT_REG, 0, 0, 0, 0
    TEST "STANDBY IMMEDIATE", 0xE0, A_NONE, P_NONE, 0, 0, 0, 0, 0, 0
    TEST "IDLE", 0xE3, A_NONE, P_NONE, 0, 0, 0, 0, 0, 0
    TEST "STANDBY", 0xE2, A_NONE, P_NONE, 0, 0, 0, 0, 0, 0
    TEST "IDLE IMMEDIATE", 0xE1, A_NONE, P_NONE, 0, 0, 0, 0, 0, 0
    TEST "NATIVE MAX", 0xF8, A_LBA28, P_NONE, 0, F_REGS, 0, 0, 0, 0
    TEST "NATIVE MAX EXT", 0x27, A_LBA48, P_NONE, 0, F_REGS | F_REGS_HOB, 0, 0, 0, 0
    ; PRD tables longer (Active stays set) and shorter (no interrupt) than the transfer
    TEST "RDMA long PRD", 0xC8, A_LBA28, P_DMA_IN, 0, F_PRD_LONG | F_NO_HASH, 2000, 0, 4, 0
    TEST "RDMA short PRD", 0xC8, A_LBA28, P_DMA_IN, 0, F_PRD_SHORT | F_NO_HASH, 2000, 0, 8, 0
    TEST "R28 after short PRD", 0x20, A_LBA28, P_PIO_IN, 0, 0, 2000, 0, 2, 0
    ; INTRQ: raised at the end of a non-data command, a PIO read's and write's blocks and
    ; a DMA transfer (the "bm=04" of DMA lines); an error too; never while nIEN is set
    TEST "IRQ flush", 0xE7, A_NONE, P_NONE, 0, F_IRQ, 0, 0, 0, 0
    TEST "IRQ R28", 0x20, A_LBA28, P_PIO_IN, 0, F_IRQ, 2000, 0, 2, 0
    TEST "IRQ W28", 0x30, A_LBA28, P_PIO_OUT, 0, F_IRQ, 7100, 0, 2, 0x5A5A5A5A
    TEST "IRQ bad opcode", 0x01, A_NONE, P_NONE, 0, F_IRQ, 0, 0, 0, 0
    TEST "nIEN flush", 0xE7, A_NONE, P_NONE, 0, F_IRQ | F_NIEN, 0, 0, 0, 0
    TEST "nIEN R28", 0x20, A_LBA28, P_PIO_IN, 0, F_IRQ | F_NIEN, 2000, 0, 2, 0
    TEST "nIEN W28", 0x30, A_LBA28, P_PIO_OUT, 0, F_IRQ | F_NIEN, 7102, 0, 2, 0x5A5A5A5A
    TEST "DIAGNOSTIC", 0x90, A_NONE, P_NONE, 0, F_SIGNATURE, 0, 0, 0, 0
    TEST "R28 after diag", 0x20, A_LBA28, P_PIO_IN, 0, 0, 2000, 0, 5, 0
    dw 0

; ---------------------------------------------------------------- reset vector
section .reset start=0xFFF0
reset:
    jmp 0xF000:start
    times 16 - ($ - $$) db 0
