"""Guests the debugger tests share (gdb stub and in-process API): NASM boot-sector source."""

BOOT_SECTOR = """
start:
    mov ax, 0x1234
    mov bx, 0x5678
    inc cx
    mov [0x500], ax
    mov dx, [0x600]
    mov al, dl
    out 0xF4, al
    hlt
"""

# Protected mode with paging: identity map of the first 4 MiB plus linear 0x80000000
# -> physical 0x7000 (the page holding this code), then execution continues there.
PAGED_GUEST = """
    cli
    xor ax, ax
    mov ds, ax
    lgdt [gdtr]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp 0x08:pm
bits 32
pm:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov esp, 0x7000
    mov edi, 0x10000            ; page directory 0x10000, tables 0x11000 and 0x12000
    xor eax, eax
    mov ecx, 3 * 1024
    rep stosd
    mov dword [0x10000], 0x11003
    mov dword [0x10000 + (0x80000000 >> 22) * 4], 0x12003
    mov edi, 0x11000
    mov eax, 3
.fill:
    stosd
    add eax, 0x1000
    cmp edi, 0x12000
    jb .fill
    mov dword [0x12000], 0x7003
    mov eax, 0x10000
    mov cr3, eax
    mov eax, cr0
    or eax, 0x80000000
    mov cr0, eax
    mov eax, high - 0x7000 + 0x80000000
    jmp eax
high:
    mov eax, 0x11111111
    mov [data - 0x7000 + 0x80000000], eax
    mov ebx, [data]
    add ebx, [0x600]
    mov al, bl
    out 0xF4, al
    hlt
align 4
data: dd 0
gdt: dq 0
    dq 0x00CF9A000000FFFF
    dq 0x00CF92000000FFFF
gdtr: dw 23
    dd gdt
"""
