; bios.asm -- emu's PC BIOS: a 64 KiB real-mode ROM at F000:0000.
;
; Theory of operation
; -------------------
; A PC BIOS prepares the machine for a boot sector and then serves it through
; software interrupts.  The CPU leaves reset at F000:FFF0, where a far jump
; enters POST (power-on self test), which here:
;
;   * clears the IVT and BDA, points all 256 vectors at an IRET, then installs
;     the real handlers from `vector_table`;
;   * programs the 8259 pair (IRQ 0-7 at 08h, IRQ 8-15 at 70h) and PIT channel 0
;     (mode 2, divisor 65536: IRQ 0 at 18.2 Hz counting BDA 46Ch, with the
;     midnight flag and an INT 1Ch chain);
;   * puts a local APIC, when CPUID reports one, in virtual-wire mode (LINT0
;     ExtINT, LINT1 NMI): after reset its LVT entries are masked, and an enabled
;     APIC with LINT0 masked keeps the 8259's interrupts from the CPU (QEMU);
;   * finds COM1/COM2 (a line-status register that does not float at FFh) and
;     sets them to 115200 8N1 (FIFOs left as they are: switching them on would
;     drop bytes that were typed ahead);
;   * fills the BDA (ports, equipment word, 639 KiB of base memory) and a 1 KiB
;     EBDA at 9FC0:0000 holding the private state (bios_layout.inc);
;   * builds the E820 memory map from the CMOS memory-size registers;
;   * probes both ATA channels (soft reset, register echo, IDENTIFY DEVICE) and
;     numbers up to four hard disks 80h-83h, with the BIOS geometry translation
;     that CMOS register 39h asks for (none / LBA-assisted / large / r-ECHS);
;   * finds the first ATAPI CD/DVD-ROM drive (bios_cdrom.inc);
;   * calls INT 19h, which tries the devices of the CMOS boot order: for the
;     hard disks, LBA 0 of each disk in turn to 0000:7C00, jumping to the
;     first one that ends in 55AAh with DL = its drive number; for the CD-ROM,
;     its El Torito image: no emulation (DL = E0h), a floppy (drive 00h) or a
;     hard disk (drive 80h, the real disks moved up).
;
; Boot loaders "reboot" by jumping to F000:FFF0 (GRUB, SYSLINUX's reboot.c32),
; which is not a machine reset.  POST leaves POST_MARKER in the EBDA; finding it
; on entry means such a jump, and POST then clears it and resets the machine
; for real (PIIX3 port CF9h, then port 92h, the 8042, a triple fault), as
; SeaBIOS does.  After that reset POST finds no marker and runs normally.
;
; Services: INT 10h text video (80x25 at B800h, every character written is also
; sent to COM1 until the guest takes the UART over), 11h, 12h, 13h (hard disks
; over ATA PIO, with the EDD 3.0 extensions; the CD-ROM as drive E0h with
; 2048-byte sectors, and 4Bh), 14h, 15h (E820/E801/88h memory,
; A20, 86h wait, 87h block move, C0h, APM "not present"), 16h (keys come from
; COM1), 1Ah (ticks and CMOS clock), 18h ("no bootable device": print and halt
; with interrupts off).
;
; Not modelled: floppy drives (INT 13h answers 01h "invalid" for DL < 80h, as
; SeaBIOS does without a floppy; an El Torito floppy image is drive 00h), DMA,
; graphics modes, the PS/2 keyboard, option ROMs, INT 15h 89h (switch to
; protected mode), PnP, ACPI.
; It needs a 386 (32-bit registers in real mode).
;
; Built by `python -m firmware.build` (nasm -f bin); the build is reproducible.

cpu 386
bits 16
org 0

%include "bios_layout.inc"

rom_start:
    db "emu BIOS", 0

; ====================================================================================
; POST
; ====================================================================================
post:
    cli
    cld
    mov ax, EBDA_SEG
    mov es, ax
    cmp dword [es:EBDA.post_marker], POST_MARKER
    jne .cold
    mov dword [es:EBDA.post_marker], 0
    jmp hard_reset
.cold:
    xor ax, ax
    mov ss, ax
    mov sp, POST_STACK
    mov ds, ax
    mov es, ax

    ; IVT + BDA (0000:0000-0000:04FF)
    xor di, di
    mov cx, 0x500 / 2
    rep stosw

    ; EBDA
    mov ax, EBDA_SEG
    mov es, ax
    xor di, di
    xor ax, ax
    mov cx, EBDA_KIB * 512
    rep stosw
    mov byte [es:EBDA.size_kib], EBDA_KIB

    mov ax, BDA_SEG
    mov fs, ax
    mov ax, EBDA_SEG
    mov gs, ax

    call setup_ivt
    call setup_pic
    call setup_virtual_wire
    call setup_pit
    call setup_bda
    call setup_serial
    call setup_video
    call setup_memory_map
    sti
    call setup_ticks_from_rtc
    call ata_detect
    call cd_detect
    call setup_disk_vectors

    mov si, msg_banner
    call print_screen
    mov dword [gs:EBDA.post_marker], POST_MARKER
    int 0x19
    int 0x18

; reset the machine, by every means a PC has
hard_reset:
    mov dx, PORT_RESET_CONTROL
    mov al, 0x02
    out dx, al
    mov al, 0x06
    out dx, al
    in al, PORT_SYSTEM_A
    and al, 0xFE
    out PORT_SYSTEM_A, al
    or al, 1
    out PORT_SYSTEM_A, al
    mov al, KBC_PULSE_RESET
    out PORT_KBC_COMMAND, al
    lidt [cs:null_idt]
    int3
    hlt
    jmp hard_reset

null_idt:
    dw 0
    dd 0

; ---- interrupt vectors --------------------------------------------------------------------
setup_ivt:
    xor ax, ax
    mov es, ax
    xor di, di
    mov cx, 256
.default:
    mov word [es:di], dummy_iret
    mov word [es:di + 2], BIOS_SEG
    add di, 4
    loop .default

    mov di, PIC1_VECTOR * 4
    mov cx, 8
.master:
    mov word [es:di], irq_master_eoi
    add di, 4
    loop .master

    mov di, PIC2_VECTOR * 4
    mov cx, 8
.slave:
    mov word [es:di], irq_slave_eoi
    add di, 4
    loop .slave

    mov si, vector_table
.install:
    mov bx, [cs:si]
    cmp bx, 0xFFFF
    je .done
    shl bx, 2
    mov ax, [cs:si + 2]
    mov [es:bx], ax
    add si, 4
    jmp .install
.done:
    ; data pointers, not code
    mov word [es:0x1D * 4], 0
    mov word [es:0x1D * 4 + 2], 0
    mov word [es:0x1F * 4], 0
    mov word [es:0x1F * 4 + 2], 0
    mov word [es:0x43 * 4], 0
    mov word [es:0x43 * 4 + 2], 0
    ret

vector_table:
    dw 0x08, int08_timer
    dw 0x10, int10_video
    dw 0x11, int11_equipment
    dw 0x12, int12_memory
    dw 0x13, int13_disk
    dw 0x14, int14_serial
    dw 0x15, int15_system
    dw 0x16, int16_keyboard
    dw 0x18, int18_no_boot
    dw 0x19, int19_boot
    dw 0x1A, int1a_clock
    dw PIC2_VECTOR + 6, irq14_ata
    dw PIC2_VECTOR + 7, irq15_ata
    dw 0xFFFF

; ---- local APIC in virtual-wire mode ---------------------------------------------------------
; The LVT registers are memory-mapped near 4 GiB: a flat data segment is loaded in a
; moment of protected mode (CS keeps its real-mode descriptor, interrupts are off).
cpu 686                         ; CPUID and RDMSR, used only once CPUID answered
setup_virtual_wire:
    pushfd
    pop eax
    mov ecx, eax
    xor eax, 1 << 21            ; CPUID exists when EFLAGS.ID can be toggled
    push eax
    popfd
    pushfd
    pop eax
    cmp eax, ecx
    je .done
    mov eax, 1
    cpuid
    test edx, CPUID_EDX_APIC
    jz .done
    test edx, CPUID_EDX_MSR
    jz .done
    mov ecx, MSR_APIC_BASE
    rdmsr
    test eax, APIC_BASE_ENABLE
    jz .done
    and eax, APIC_BASE_MASK
    mov ebx, eax
    push es
    lgdt [cs:flat_gdt_pointer]
    mov eax, cr0
    or al, CR0_PE
    mov cr0, eax
    mov ax, FLAT_DATA_SELECTOR
    mov es, ax
    mov dword [es:ebx + APIC_LVT_LINT0], APIC_LVT_EXTINT
    mov dword [es:ebx + APIC_LVT_LINT1], APIC_LVT_NMI
    mov eax, cr0
    and al, ~CR0_PE & 0xFF
    mov cr0, eax
    pop es
.done:
    ret
cpu 386

align 8
flat_gdt:
    dq 0                        ; null
    dq 0x00CF92000000FFFF       ; 08h: data, base 0, limit 4 GiB
flat_gdt_pointer:
    dw flat_gdt_pointer - flat_gdt - 1
    dd BIOS_SEG * 16 + flat_gdt

; ---- 8259 and 8254 ----------------------------------------------------------------------------
setup_pic:
    mov al, PIC_ICW1
    out PIC1_CMD, al
    out PIC2_CMD, al
    mov al, PIC1_VECTOR
    out PIC1_DATA, al
    mov al, PIC2_VECTOR
    out PIC2_DATA, al
    mov al, 0x04                ; ICW3: slave on IRQ 2
    out PIC1_DATA, al
    mov al, 0x02                ; ICW3: slave identity 2
    out PIC2_DATA, al
    mov al, 0x01                ; ICW4: 8086 mode
    out PIC1_DATA, al
    out PIC2_DATA, al
    mov al, PIC1_MASK
    out PIC1_DATA, al
    mov al, PIC2_MASK
    out PIC2_DATA, al
    ret

setup_pit:
    mov al, PIT_CH0_MODE2
    out PIT_CMD, al
    xor al, al
    out PIT_CH0, al
    out PIT_CH0, al
    ret

; ---- BDA -----------------------------------------------------------------------------------------
setup_bda:
    mov word [fs:BDA_EBDA_SEG], EBDA_SEG
    mov word [fs:BDA_MEMORY_KIB], CONVENTIONAL_KIB - EBDA_KIB
    mov word [fs:BDA_EQUIPMENT], EQUIP_FPU | EQUIP_VIDEO_80X25
    mov word [fs:BDA_KBD_HEAD], BDA_KBD_BUFFER
    mov word [fs:BDA_KBD_TAIL], BDA_KBD_BUFFER
    mov word [fs:BDA_KBD_START], BDA_KBD_BUFFER
    mov word [fs:BDA_KBD_END], BDA_KBD_BUFFER_END
    mov byte [fs:BDA_KBD_MODE], 0x10
    mov dword [fs:BDA_COM_TIMEOUTS], 0x01010101
    ret

; BDA tick count = seconds since midnight (from the CMOS clock) * PIT_HZ / 65536
setup_ticks_from_rtc:
    call rtc_wait_stable
    mov al, CMOS_HOURS
    call cmos_read_bcd
    movzx eax, al
    imul eax, eax, 60
    mov ebx, eax
    mov al, CMOS_MINUTES
    call cmos_read_bcd
    movzx eax, al
    add eax, ebx
    imul eax, eax, 60
    mov ebx, eax
    mov al, CMOS_SECONDS
    call cmos_read_bcd
    movzx eax, al
    add eax, ebx
    mov ecx, PIT_HZ
    mul ecx
    shrd eax, edx, 16
    cmp eax, TICKS_PER_DAY
    jb .store
    xor eax, eax
.store:
    cli
    mov [fs:BDA_TICKS], eax
    sti
    ret

; ---- serial ports ---------------------------------------------------------------------------------
setup_serial:
    mov si, com_candidates
    xor di, di                  ; BDA slot
.next:
    mov dx, [cs:si]
    test dx, dx
    jz .done
    add si, 2
    add dx, UART_LSR
    in al, dx
    sub dx, UART_LSR
    cmp al, 0xFF                ; floating bus: no UART
    je .next
    call uart_init_115200
    mov [fs:BDA_COM_PORTS + di], dx
    add di, 2
    jmp .next
.done:
    mov ax, di
    shr ax, 1
    shl ax, EQUIP_COM_SHIFT
    or [fs:BDA_EQUIPMENT], ax
    ret

com_candidates:
    dw 0x3F8, 0x2F8, 0

; DX = UART base
uart_init_115200:
    push ax
    push dx
    add dx, UART_IER
    xor al, al
    out dx, al
    add dx, UART_LCR - UART_IER
    mov al, UART_LCR_DLAB
    out dx, al
    sub dx, UART_LCR - UART_DLL
    mov al, UART_DIVISOR
    out dx, al
    inc dx                      ; DLM
    xor al, al
    out dx, al
    add dx, UART_LCR - UART_DLM
    mov al, UART_LCR_8N1
    out dx, al
    inc dx                      ; MCR
    mov al, UART_MCR_DTR_RTS
    out dx, al
    pop dx
    pop ax
    ret

; ---- memory map -------------------------------------------------------------------------------
; E820 entries: base memory, EBDA, BIOS ROM, extended memory below 4 GiB, the
; BIOS flash alias below 4 GiB, memory above 4 GiB.
setup_memory_map:
    mov di, EBDA.e820
    xor ebx, ebx
    mov ecx, (CONVENTIONAL_KIB - EBDA_KIB) * 1024
    mov dl, E820_RAM
    call e820_add_low
    mov ebx, (CONVENTIONAL_KIB - EBDA_KIB) * 1024
    mov ecx, EBDA_KIB * 1024
    mov dl, E820_RESERVED
    call e820_add_low
    mov ebx, BIOS_SEG * 16
    mov ecx, 0x10000
    mov dl, E820_RESERVED
    call e820_add_low
    call extended_memory_top    ; EAX = end of RAM below 4 GiB
    mov ebx, 0x100000
    mov ecx, eax
    sub ecx, ebx
    mov dl, E820_RAM
    call e820_add_low
    mov ebx, 0xFFFC0000
    mov ecx, 0x40000
    mov dl, E820_RESERVED
    call e820_add_low
    ; above 4 GiB: CMOS 5Bh-5Dh in 64 KiB units
    mov al, CMOS_MEM_4G + 2
    call cmos_read
    movzx eax, al
    shl eax, 16
    push eax
    mov al, CMOS_MEM_4G + 1
    call cmos_read
    mov ah, al
    mov al, CMOS_MEM_4G
    call cmos_read
    pop edx
    mov dx, ax                  ; EDX = 64 KiB units
    test edx, edx
    jz .done
    mov dword [gs:di], 0
    mov dword [gs:di + 4], 1    ; base 4 GiB
    mov eax, edx
    shl eax, 16
    shr edx, 16
    mov [gs:di + 8], eax        ; length = units << 16
    mov [gs:di + 12], edx
    mov dword [gs:di + 16], E820_RAM
    add di, E820_ENTRY
.done:
    mov ax, di
    sub ax, EBDA.e820
    xor dx, dx
    mov cx, E820_ENTRY
    div cx
    mov [gs:EBDA.e820_count], ax
    ret

; EBX = base, ECX = length, DL = type; appends at GS:DI (below 4 GiB)
e820_add_low:
    mov [gs:di], ebx
    mov dword [gs:di + 4], 0
    mov [gs:di + 8], ecx
    mov dword [gs:di + 12], 0
    movzx edx, dl
    mov [gs:di + 16], edx
    add di, E820_ENTRY
    ret

; EAX = first byte above the RAM that starts at 1 MiB (CMOS 34h/35h, else 30h/31h)
extended_memory_top:
    mov al, CMOS_MEM_16M + 1
    call cmos_read
    mov ah, al
    mov al, CMOS_MEM_16M
    call cmos_read
    test ax, ax
    jz .below_16m
    movzx eax, ax
    shl eax, 16
    add eax, 0x1000000
    ret
.below_16m:
    call extended_kib
    movzx eax, ax
    shl eax, 10
    add eax, 0x100000
    ret

; AX = KiB above 1 MiB (CMOS 30h/31h)
extended_kib:
    mov al, CMOS_EXT_KIB + 1
    call cmos_read
    mov ah, al
    mov al, CMOS_EXT_KIB
    call cmos_read
    ret

; ---- CMOS -------------------------------------------------------------------------------------
; AL = register -> AL = value
cmos_read:
    out CMOS_INDEX, al
    in al, CMOS_DATA
    ret

; AL = register, AH = value
cmos_write:
    out CMOS_INDEX, al
    mov al, ah
    out CMOS_DATA, al
    ret

; AL = register holding BCD -> AL = binary
cmos_read_bcd:
    call cmos_read
    push cx
    mov cl, al
    shr al, 4
    mov ch, 10
    mul ch
    and cl, 0x0F
    add al, cl
    pop cx
    ret

; wait (bounded) while the RTC update-in-progress bit is set
rtc_wait_stable:
    push cx
    mov cx, 0xFFFF
.poll:
    mov al, CMOS_STATUS_A
    call cmos_read
    test al, 0x80
    jz .done
    loop .poll
.done:
    pop cx
    ret

; ---- small handlers --------------------------------------------------------------------------------
dummy_iret:
    iret

irq_master_eoi:
    push ax
    mov al, PIC_EOI
    out PIC1_CMD, al
    pop ax
    iret

irq_slave_eoi:
    push ax
    mov al, PIC_EOI
    out PIC2_CMD, al
    out PIC1_CMD, al
    pop ax
    iret

; IRQ 14/15: reading the status register clears the drive's interrupt
irq14_ata:
    push ax
    push dx
    mov dx, 0x1F0 + ATA_STATUS
    jmp irq_ata_common
irq15_ata:
    push ax
    push dx
    mov dx, 0x170 + ATA_STATUS
irq_ata_common:
    in al, dx
    mov al, PIC_EOI
    out PIC2_CMD, al
    out PIC1_CMD, al
    pop dx
    pop ax
    iret

int08_timer:
    push ds
    push eax
    mov ax, BDA_SEG
    mov ds, ax
    mov eax, [BDA_TICKS]
    inc eax
    cmp eax, TICKS_PER_DAY
    jb .store
    xor eax, eax
    mov byte [BDA_MIDNIGHT], 1
.store:
    mov [BDA_TICKS], eax
    int 0x1C
    cli
    mov al, PIC_EOI
    out PIC1_CMD, al
    pop eax
    pop ds
    iret

int11_equipment:
    push ds
    mov ax, BDA_SEG
    mov ds, ax
    mov ax, [BDA_EQUIPMENT]
    pop ds
    iret

int12_memory:
    push ds
    mov ax, BDA_SEG
    mov ds, ax
    mov ax, [BDA_MEMORY_KIB]
    pop ds
    iret

; common exit of the ENTER_FRAME handlers
leave_frame:
    popad
    pop gs
    pop fs
    pop es
    pop ds
    iret

; ---- text output used by the BIOS itself ---------------------------------------------------------
; CS:SI = NUL-terminated string, written to the screen only
print_screen:
    push ax
.next:
    mov al, [cs:si]
    inc si
    test al, al
    jz .done
    call tty_screen
    jmp .next
.done:
    pop ax
    ret

; CS:SI = NUL-terminated string, written to the screen and COM1
print_both:
    push ax
.next:
    mov al, [cs:si]
    inc si
    test al, al
    jz .done
    call serial_putc
    call tty_screen
    jmp .next
.done:
    pop ax
    ret

msg_banner:     db "emu BIOS", 13, 10, 0
msg_no_boot:    db "No bootable device.", 13, 10, 0

%include "bios_video.inc"
%include "bios_disk.inc"
%include "bios_cdrom.inc"
%include "bios_services.inc"

; ====================================================================================
; fixed locations at the top of the ROM
; ====================================================================================
%if ($ - $$) > 0xFFF0
%error "BIOS code overflows into the reset vector"
%endif
    times 0xFFF0 - ($ - $$) db 0xFF
reset_vector:                   ; F000:FFF0
    jmp BIOS_SEG:post
bios_date:                      ; F000:FFF5
    db "11/22/26"
    db 0
model_byte:                     ; F000:FFFE
    db 0xFC
    db 0
