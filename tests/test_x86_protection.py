"""x86 protection semantics with paging on, under emu and under qemu-system-i386.

One ROM (:data:`GUEST`) enters protected mode, turns on paging (4 KiB pages and
one 4 MiB page, CR0.WP) with a ring-3 code segment, a TSS and an IDT whose every
vector prints what arrived on the debug console (vector, error code, the
interrupted CS, CR2 for #PF, and for the timer IRQ whether it runs on the TSS's
ring-0 stack).  It then provokes, in order:

* ring 0: a read through the 4 MiB page; #PF reading and writing a not-present
  page; #PF writing a user read-only page with WP=1;
* ring 3 (entered by IRET): INT 80h through a DPL-3 trap gate; INT 81h through a
  DPL-0 gate (#GP with error code 81h*8+2); #PF reading a supervisor page,
  writing a read-only page and writing a not-present page (P/W/U bits); the
  timer IRQ taken while in ring 3 (stack switch through the TSS);
* ring 0 again: #GP whose gate is not present (#NP while delivering #GP:
  #DF), then the same with the #DF gate gone too: a triple fault.

The same ROM runs under QEMU (``-no-reboot``: the triple fault ends it; ``-cpu
qemu32,-apic`` as emu's CPU has no local APIC -- QEMU's, enabled at reset with
LINT0 masked, would keep the 8259's interrupts from the CPU) and
under emu (deterministic mode): the transcripts must be identical, and emu must
report the triple fault.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from guests import qemu_pc_argv
from test_machine_roms import build_rom

from emu.machine import EXIT_CPU_FAULT, StopReason, run_machine

GUEST = r"""
    cli
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7000
    mov si, gdt                 ; the GDT goes to RAM: LTR marks the TSS busy in it
    mov di, 0x800
    mov cx, gdt_end - gdt
    cs rep movsb
    o32 lgdt [cs:gdtr]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp dword 0x08:LIN(pm)

gdtr:
    dw gdt_end - gdt - 1
    dd 0x800
gdt:
    dq 0
    dq 0x00CF9A000000FFFF       ; 08h ring-0 code
    dq 0x00CF92000000FFFF       ; 10h ring-0 data
    dq 0x00CFFA000000FFFF       ; 18h ring-3 code
    dq 0x00CFF2000000FFFF       ; 20h ring-3 data
    dq 0x0000890009000067       ; 28h TSS at 900h
gdt_end:

idtr:
    dw 256 * 8 - 1
    dd 0x1000

bits 32
pm:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov esp, 0x7000
    ; PICs: IRQ 0-7 -> 20h-27h, 8-15 -> 28h-2Fh, all masked
    mov al, 0x11
    out 0x20, al
    out 0xA0, al
    mov al, 0x20
    out 0x21, al
    mov al, 0x28
    out 0xA1, al
    mov al, 4
    out 0x21, al
    mov al, 2
    out 0xA1, al
    mov al, 1
    out 0x21, al
    out 0xA1, al
    mov al, 0xFF
    out 0x21, al
    out 0xA1, al
    ; PIT channel 0: 100 Hz
    mov al, 0x34
    out 0x43, al
    mov al, 0x9C
    out 0x40, al
    mov al, 0x2E
    out 0x40, al
    ; IDT at 1000h: vector v -> stub v, ring-0 interrupt gates
    mov edi, 0x1000
    mov ebx, LIN(stubs)
    xor ecx, ecx
.gate:
    mov eax, ebx
    mov [edi], ax
    mov word [edi + 2], 0x08
    mov word [edi + 4], 0x8E00
    shr eax, 16
    mov [edi + 6], ax
    add ebx, STUB_SIZE
    add edi, 8
    inc ecx
    cmp ecx, 256
    jb .gate
    mov word [0x1000 + 0x80 * 8 + 4], 0xEF00   ; INT 80h: DPL-3 trap gate
    lidt [LIN(idtr)]
    ; TSS: SS0:ESP0 = 10h:6000h
    mov dword [0x900 + 4], 0x6000
    mov dword [0x900 + 8], 0x10
    mov ax, 0x28
    ltr ax
    ; page tables: PD at 10000h, PT at 11000h (0-4 MiB identity), 4-8 MiB -> 0 (4 MiB page)
    mov edi, 0x10000
    xor eax, eax
    mov ecx, 2048
    rep stosd
    mov dword [0x10000], 0x11000 | 7
    mov dword [0x10004], 0x00000000 | 0x83        ; 4 MiB, supervisor, writable
    mov edi, 0x11000
    mov eax, 3                                    ; present, writable, supervisor
    mov ecx, 1024
.pte:
    stosd
    add eax, 0x1000
    loop .pte
    mov edi, 0x11000 + (0xF0000 >> 12) * 4        ; the ROM: user, read-only
    mov ecx, 16
.rom:
    and dword [edi], ~2
    or dword [edi], 4
    add edi, 4
    loop .rom
    mov dword [0x11000 + 0x20 * 4], 0x20000 | 7   ; user data and stack
    mov dword [0x11000 + 0x21 * 4], 0             ; not present
    mov dword [0x11000 + 0x22 * 4], 0x22000 | 3   ; supervisor only
    mov dword [0x11000 + 0x23 * 4], 0x23000 | 5   ; user, read-only
    mov dword [0x5000], 0xCAFEBABE
    mov eax, 0x10000
    mov cr3, eax
    mov eax, cr4
    or eax, 0x10                                  ; PSE
    mov cr4, eax
    mov eax, cr0
    or eax, 0x80010000                            ; PG, WP
    mov cr0, eax
    jmp .paged
.paged:
    mov esi, LIN(msg_4m)
    call print
    mov eax, [0x405000]
    call hex32
    call newline
    mov dword [RESUME], LIN(.r1)
    mov eax, [0x21010]                            ; #PF 0
.r1:
    mov dword [RESUME], LIN(.r2)
    mov dword [0x21020], 1                        ; #PF 2
.r2:
    mov dword [RESUME], LIN(.r3)
    mov dword [0x23000], 1                        ; #PF 3 (WP)
.r3:
    ; to ring 3
    push dword 0x23
    push dword 0x20F00
    push dword 0x002
    push dword 0x1B
    push dword LIN(ring3)
    iret

ring3:
    mov ax, 0x23
    mov ds, ax
    mov es, ax
    xor eax, eax
    int 0x80                                      ; DPL-3 gate: allowed
    mov dword [RESUME], LIN(.u1)
    int 0x81                                      ; DPL-0 gate: #GP(40Ah)
.u1:
    mov dword [RESUME], LIN(.u2)
    mov eax, [0x22000]                            ; #PF 5
.u2:
    mov dword [RESUME], LIN(.u3)
    mov dword [0x23004], 1                        ; #PF 7
.u3:
    mov dword [RESUME], LIN(.u4)
    mov dword [0x21000], 1                        ; #PF 6
.u4:
    mov eax, 1
    int 0x80                                      ; unmask IRQ 0, IF=1 on return
.wait:
    cmp dword [FLAG], 0
    je .wait
    mov eax, 2
    int 0x80                                      ; on to the double fault

; --- the debug console ----------------------------------------------------------
print:
    lodsb
    test al, al
    jz .done
    out 0xE9, al
    jmp print
.done:
    ret
hex32:
    push ecx
    mov ecx, 8
.digit:
    rol eax, 4
    push eax
    and al, 15
    add al, '0'
    cmp al, '9'
    jbe .out
    add al, 7
.out:
    out 0xE9, al
    pop eax
    loop .digit
    pop ecx
    ret
newline:
    mov al, 10
    out 0xE9, al
    ret

; --- every vector ----------------------------------------------------------------
STUB_SIZE equ 16
    align STUB_SIZE, nop
stubs:
%assign v 0
%rep 256
    align STUB_SIZE, nop
%if !(v == 8 || (v >= 10 && v <= 14) || v == 17)
    push strict dword 0xFFFFFFFF    ; no error code: a marker in its place
%endif
    push strict dword v
    jmp near handler
%assign v v + 1
%endrep

handler:
    pushad
    mov ebp, esp                ; [ebp+32] vector, +36 error code, +40 EIP, +44 CS, +48 EFLAGS
    mov esi, LIN(msg_v)
    call print
    mov eax, [ebp + 32]
    shl eax, 24
    call hex32_2
    cmp dword [ebp + 36], 0xFFFFFFFF
    je .no_error
    mov esi, LIN(msg_e)
    call print
    mov eax, [ebp + 36]
    call hex32
.no_error:
    mov esi, LIN(msg_c)
    call print
    mov eax, [ebp + 44]
    shl eax, 16
    call hex32_4
    cmp dword [ebp + 32], 14
    jne .no_cr2
    mov esi, LIN(msg_a)
    call print
    mov eax, cr2
    call hex32
.no_cr2:
    mov eax, [ebp + 32]
    cmp eax, 0x20
    je .timer
    cmp eax, 0x80
    je .syscall
    call newline                ; a fault: resume where the test says
    mov eax, [RESUME]
    mov [ebp + 40], eax
.return:
    popad
    add esp, 8
    iret
.timer:
    mov esi, LIN(msg_k)         ; on the TSS's ring-0 stack?
    call print
    mov al, '0'
    cmp ebp, 0x5000
    jb .stack
    cmp ebp, 0x6000
    ja .stack
    mov al, '1'
.stack:
    out 0xE9, al
    call newline
    mov al, 0xFF
    out 0x21, al
    mov al, 0x20
    out 0x20, al
    mov dword [FLAG], 1
    jmp .return
.syscall:
    call newline
    mov eax, [ebp + 28]         ; the caller's EAX
    cmp eax, 1
    jne .not_irq
    mov al, 0xFE
    out 0x21, al
    or dword [ebp + 48], 0x200
    jmp .return
.not_irq:
    cmp eax, 2
    jne .return
    ; #GP with its gate gone: #NP while delivering #GP -> #DF
    and byte [0x1000 + 13 * 8 + 5], 0x7F
    mov dword [RESUME], LIN(.after_df)
    mov ax, 0x1234
    mov ds, ax
.after_df:
    mov ax, 0x10
    mov ds, ax
    mov esi, LIN(msg_tf)
    call print
    and byte [0x1000 + 8 * 8 + 5], 0x7F         ; and no #DF gate: triple fault
    mov ax, 0x1234
    mov ds, ax
    mov esi, LIN(msg_alive)
    call print
    hlt

hex32_2:                        ; the top 2 / 4 hex digits of EAX
    push ecx
    mov ecx, 2
    jmp hex32.digit
hex32_4:
    push ecx
    mov ecx, 4
    jmp hex32.digit

msg_4m: db "4M=", 0
msg_v: db "V=", 0
msg_e: db " E=", 0
msg_c: db " C=", 0
msg_a: db " A=", 0
msg_k: db " K=", 0
msg_tf: db "TF", 10, 0
msg_alive: db "still alive", 10, 0
FLAG equ 0x20000
RESUME equ 0x20004
bits 16                         ; the template's reset vector follows
"""

EXPECTED = """\
4M=CAFEBABE
V=0E E=00000000 C=0008 A=00021010
V=0E E=00000002 C=0008 A=00021020
V=0E E=00000003 C=0008 A=00023000
V=80 C=001B
V=0D E=0000040A C=001B
V=0E E=00000005 C=001B A=00022000
V=0E E=00000007 C=001B A=00023004
V=0E E=00000006 C=001B A=00021000
V=80 C=001B
V=20 C=001B K=1
V=80 C=001B
V=08 E=00000000 C=0008
TF
"""


def test_protection_and_paging_like_qemu(tmp_path: Path) -> None:
    rom = build_rom(tmp_path, GUEST)
    debugcon = tmp_path / "qemu-debugcon.txt"
    argv = qemu_pc_argv(rom, "-cpu", "qemu32,-apic", "-debugcon", f"file:{debugcon}",
                        debug_exit=False)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr  # -no-reboot: the triple fault ends QEMU
    qemu = debugcon.read_text(encoding="latin-1")
    assert qemu == EXPECTED

    result = run_machine(bios=rom, timeout=120)
    assert result.debugcon_text == qemu
    assert result.reason is StopReason.CPU_FAULT
    assert result.exit_code == EXIT_CPU_FAULT
    assert "triple fault" in result.detail
