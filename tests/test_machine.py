"""The machine end to end with tiny NASM ROMs: modes, interrupts, HLT, exits, determinism."""

from __future__ import annotations

import hashlib
from pathlib import Path

from test_machine_roms import PIC_INIT, PIT_10MS, PRINT16, build_rom

from emu.machine import (
    EXIT_CPU_FAULT,
    EXIT_HALTED,
    EXIT_INSTRUCTION_BUDGET,
    Machine,
    StopReason,
    run_machine,
)
from emu.run import main as run_main

STACK_SETUP = """
    cli
    xor ax, ax
    mov ds, ax
    mov ss, ax
    mov sp, 0x7000
"""

# The PICs at their real-mode (BIOS) vectors: IRQ 0-7 -> INT 08h-0Fh, IRQ 8-15 -> INT 70h-77h.
PIC_AT_BIOS_VECTORS = PIC_INIT.format(master_base=0x08, slave_base=0x70)

# INT 21h -> handler21 and the timer's INT 08h -> tick (labels the program defines).
HOOK_INT21_AND_TICK = """
    mov word [0x21*4], handler21
    mov word [0x21*4+2], 0xF000
    mov word [0x08*4], tick
    mov word [0x08*4+2], 0xF000
"""

# Wait until COM1 has received a byte (line status bit 0) and read it into AL; DX = 3F8h.
READ_COM1 = """
.poll:
    mov dx, 0x3FD
    in al, dx
    test al, 1
    jz .poll
    mov dx, 0x3F8
    in al, dx
"""

# Load the program's GDT (code at 08h, data at 10h) and enter 32-bit protected mode at
# pm32 with DS = 10h.
ENTER_PM32 = """
    o32 lgdt [cs:gdtr]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp dword 0x08:LIN(pm32)
bits 32
pm32:
    mov ax, 0x10
    mov ds, ax
"""

IRQ_AND_HLT = STACK_SETUP + HOOK_INT21_AND_TICK + """    mov si, hello
    call print
    int 0x21
""" + PIC_AT_BIOS_VECTORS + PIT_10MS + """
    sti
.wait:
    hlt
    cmp word [0x500], 3
    jb .wait
    mov si, ticked
    call print
    mov al, 0x2A
    out 0xF4, al
    cli
    hlt
handler21:
    push si
    mov si, int21
    call print
    pop si
    iret
tick:
    push ax
    inc word [0x500]
    mov al, 0x20
    out 0x20, al
    pop ax
    iret
hello: db "hello", 10, 0
int21: db "int21", 10, 0
ticked: db "3 ticks", 10, 0
""" + PRINT16


def test_debug_exit_irq_hlt_and_software_int(tmp_path: Path) -> None:
    result = run_machine(bios=build_rom(tmp_path, IRQ_AND_HLT), timeout=60)
    assert result.reason is StopReason.DEBUG_EXIT
    assert result.exit_code == 0x2A
    assert result.debugcon_text == "hello\nint21\n3 ticks\n"
    # three 10 ms PIT periods passed in virtual time, and HLT skipped most of it
    assert 30_000_000 <= result.virtual_ns < 40_000_000


def test_cli_exit_status_and_debugcon_file(tmp_path: Path) -> None:
    rom = build_rom(tmp_path, IRQ_AND_HLT)
    log = tmp_path / "debugcon.txt"
    status = run_main(["--bios", str(rom), "--serial", "null", "--debugcon", f"file:{log}",
                       "--timeout", "60"])
    assert status == 0x2A
    assert log.read_text() == "hello\nint21\n3 ticks\n"


def test_bad_disk_is_one_line_and_nonzero(tmp_path: Path, capsys) -> None:
    rom = build_rom(tmp_path, STACK_SETUP + "    hlt\n")
    status = run_main(["--bios", str(rom), "--serial", "null",
                       "--disk", str(tmp_path / "missing.vdi")])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and "missing.vdi" in err


def test_halt_with_interrupts_off_stops_with_report(tmp_path: Path) -> None:
    body = STACK_SETUP + "    mov eax, 0x12345678\n    cli\n    hlt\n"
    result = run_machine(bios=build_rom(tmp_path, body), timeout=60)
    assert result.reason is StopReason.HALTED
    assert result.exit_code == EXIT_HALTED
    assert "eax=12345678" in result.report
    assert "mode=real" in result.report


def test_instruction_budget(tmp_path: Path) -> None:
    result = run_machine(bios=build_rom(tmp_path, ".spin: jmp .spin\n"), max_instructions=50_000)
    assert result.exit_code == EXIT_INSTRUCTION_BUDGET
    assert result.instructions >= 50_000


def test_reset_via_port_92_exits_zero(tmp_path: Path) -> None:
    body = STACK_SETUP + "    mov al, 1\n    out 0x92, al\n    jmp $\n"
    result = run_machine(bios=build_rom(tmp_path, body), timeout=60)
    assert result.reason is StopReason.RESET
    assert result.exit_code == 0


def test_reboot_restarts_at_reset_vector(tmp_path: Path) -> None:
    # First boot counts in CMOS scratch RAM (which survives reset), resets via 0xCF9;
    # the second boot sees the count and exits with it.
    body = STACK_SETUP + """
    mov al, 0x50
    out 0x70, al
    in al, 0x71
    inc al
    mov bl, al
    mov al, 0x50
    out 0x70, al
    mov al, bl
    out 0x71, al
    cmp bl, 2
    je .done
    mov al, 0x06
    mov dx, 0xCF9
    out dx, al
    jmp $
.done:
    mov al, bl
    out 0xF4, al
"""
    result = run_machine(bios=build_rom(tmp_path, body), timeout=60, reboot=True)
    assert result.reason is StopReason.DEBUG_EXIT
    assert result.exit_code == 2


GDT_AND_MODES = STACK_SETUP + """
    mov word [0x21*4], real_int21
    mov word [0x21*4+2], 0xF000""" + ENTER_PM32 + """    mov es, ax
    mov ss, ax
    mov esp, 0x9000
    ; IDT at 0x1000: vector 0x30 (software) and 0x20 (IRQ 0)
    mov eax, LIN(pm_int30)
    mov ebx, 0x30
    call set_gate
    mov eax, LIN(pm_irq0)
    mov ebx, 0x20
    call set_gate
    lidt [LIN(idtr)]
    mov esi, LIN(msg_pm)
    call print32
    mov eax, 0xCAFE
    int 0x30
    cmp eax, 0xBEEF
    jne fail32
""" + PIC_INIT.format(master_base=0x20, slave_base=0x28) + PIT_10MS + """
    sti
.wait:
    hlt
    cmp dword [0x504], 2
    jb .wait
    cli
    mov esi, LIN(msg_irq)
    call print32
    ; back to real mode through a 16-bit code segment
    jmp 0x18:pm16
fail32:
    mov al, 0x77
    out 0xF4, al
    hlt
set_gate:
    mov [0x1000 + ebx*8], ax
    mov word [0x1000 + ebx*8 + 2], 0x08
    mov word [0x1000 + ebx*8 + 4], 0x8E00
    shr eax, 16
    mov [0x1000 + ebx*8 + 6], ax
    ret
print32:
    lodsb
    test al, al
    jz .done
    out 0xE9, al
    jmp print32
.done:
    ret
pm_int30:
    mov eax, 0xBEEF
    iretd
pm_irq0:
    push eax
    inc dword [0x504]
    mov al, 0x20
    out 0x20, al
    pop eax
    iretd
bits 16
pm16:
    mov ax, 0x20
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov eax, cr0
    and al, 0xFE
    mov cr0, eax
    jmp 0xF000:real_again
real_again:
    xor ax, ax
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov sp, 0x7000
    o32 lidt [cs:ivt]
    int 0x21
    mov si, msg_real
    call print
    mov al, 0
    out 0xF4, al
    hlt
real_int21:
    push si
    mov si, msg_int21
    call print
    pop si
    iret
align 8
gdt:
    dq 0
    dq 0x00CF9A000000FFFF   ; 0x08 flat 32-bit code
    dq 0x00CF92000000FFFF   ; 0x10 flat 32-bit data
    dq 0x00009A0F0000FFFF   ; 0x18 16-bit code, base 0xF0000
    dq 0x000092000000FFFF   ; 0x20 16-bit data, base 0
gdtr:
    dw gdtr - gdt - 1
    dd LIN(gdt)
idtr:
    dw 0x7FF
    dd 0x1000
ivt:
    dw 0x3FF
    dd 0
msg_pm: db "protected", 10, 0
msg_irq: db "pm irq", 10, 0
msg_int21: db "real int21", 10, 0
msg_real: db "real again", 10, 0
""" + PRINT16


def test_real_protected_real_with_interrupts_in_both_modes(tmp_path: Path) -> None:
    result = run_machine(bios=build_rom(tmp_path, GDT_AND_MODES), timeout=60)
    assert result.debugcon_text == "protected\npm irq\nreal int21\nreal again\n", result.report
    assert result.exit_code == 0


PM_FAULT = STACK_SETUP + """
    o32 lgdt [cs:gdtr]
    o32 lidt [cs:idtr]
    mov eax, cr0
    or al, 1
    mov cr0, eax
    jmp dword 0x08:LIN(pm32)
bits 32
pm32:
    ud2
bits 16
align 8
gdt:
    dq 0
    dq 0x00CF9A000000FFFF
gdtr:
    dw gdtr - gdt - 1
    dd LIN(gdt)
idtr:
    dw {idt_limit}
    dd 0x1000                 ; RAM: all zeros, so every gate is "not present"
"""


def test_triple_fault_report(tmp_path: Path) -> None:
    result = run_machine(bios=build_rom(tmp_path, PM_FAULT.format(idt_limit=0x7FF)), timeout=60)
    assert result.reason is StopReason.CPU_FAULT
    assert result.exit_code == EXIT_CPU_FAULT
    assert "triple fault" in result.report
    assert "#UD" in result.report
    assert "ud2" in result.report  # the faulting instruction, disassembled
    assert "mode=protected" in result.report


def test_deliberate_triple_fault_is_a_reset(tmp_path: Path) -> None:
    result = run_machine(bios=build_rom(tmp_path, PM_FAULT.format(idt_limit=0)), timeout=60)
    assert result.reason is StopReason.RESET
    assert result.exit_code == 0


def test_unicorn_exceptions_in_real_mode_go_through_the_ivt(tmp_path: Path) -> None:
    body = STACK_SETUP + """
    mov word [6*4], ud_handler
    mov word [6*4+2], 0xF000
    ud2
    mov al, 0x55
    out 0xF4, al
ud_handler:
    mov al, 0x06
    out 0xF4, al
"""
    result = run_machine(bios=build_rom(tmp_path, body), timeout=60)
    assert result.exit_code == 6


def test_cpuid_shows_tsc_without_apic_and_rdtsc_follows_the_virtual_clock(
        tmp_path: Path) -> None:
    body = STACK_SETUP + """
    mov eax, 1
    cpuid
    test edx, 0x10        ; TSC
    jz .bad
    test edx, 0x200       ; APIC
    jnz .bad
    test edx, 0x1         ; FPU
    jz .bad
    xor eax, eax
    cpuid
    cmp ebx, 0x756E6547   ; "Genu"
    jne .bad
    rdtsc
    mov esi, eax
    mov ecx, 1000
.spin:
    loop .spin
    rdtsc
    sub eax, esi          ; nanoseconds of virtual time for the loop
    mov dx, 0xE9
    mov cx, 4
.digits:                  ; the difference as 4 bytes, low first
    out dx, al
    shr eax, 8
    loop .digits
    mov al, 0
    out 0xF4, al
.bad:
    mov al, 1
    out 0xF4, al
"""
    rom = build_rom(tmp_path, body)
    results = [run_machine(bios=rom, timeout=60) for _ in range(2)]
    assert results[0].exit_code == 0
    elapsed = int.from_bytes(results[0].debugcon, "little")
    # mov, mov, 1000 LOOPs, rdtsc at 10 ns each (1 GHz TSC): the virtual clock, exactly.
    assert elapsed == (2 + 1000 + 1) * 10
    assert results[1].debugcon == results[0].debugcon


def test_same_inputs_same_trace(tmp_path: Path) -> None:
    rom = build_rom(tmp_path, IRQ_AND_HLT)
    digests = []
    for run in range(2):
        trace = tmp_path / f"trace{run}.txt"
        result = run_machine(bios=rom, timeout=60, trace=trace)
        assert result.exit_code == 0x2A
        text = trace.read_bytes()
        assert b"out 0xe9" in text.lower() or b"io out 0x00e9" in text
        digests.append((hashlib.sha256(text).hexdigest(), result.virtual_ns))
    assert digests[0] == digests[1]


def test_unmapped_reads_see_a_floating_bus(tmp_path: Path) -> None:
    body = STACK_SETUP + ENTER_PM32 + """
    mov eax, [0xFED00000]     ; an HPET probe on a machine without one
    cmp eax, 0xFFFFFFFF
    jne .bad
    mov al, 0
    out 0xF4, al
.bad:
    mov al, 1
    out 0xF4, al
bits 16
align 8
gdt:
    dq 0
    dq 0x00CF9A000000FFFF
    dq 0x00CF92000000FFFF
gdtr:
    dw gdtr - gdt - 1
    dd LIN(gdt)
"""
    assert run_machine(bios=build_rom(tmp_path, body), timeout=60).exit_code == 0


def test_serial_output_and_input(tmp_path: Path) -> None:
    body = STACK_SETUP + """
    mov dx, 0x3F8
    mov al, 'A'
    out dx, al
""" + READ_COM1 + """    out 0xF4, al
"""
    with Machine(bios=build_rom(tmp_path, body), timeout=60, serial_input=b"z") as machine:
        result = machine.run()
    assert result.serial == b"A"
    assert result.exit_code == ord("z")


def test_terminal_raw_mode_echo_and_ctrl_a_x(tmp_path: Path) -> None:
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    body = STACK_SETUP + READ_COM1 + """    inc al
    out dx, al
    jmp .poll
"""
    rom = build_rom(tmp_path, body)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "emu", "run", "--bios", str(rom),
                             "--serial", "stdio", "--timeout", "60"],
                            stdin=terminal, stdout=terminal, stderr=subprocess.PIPE)
    try:
        import termios
        deadline = time.monotonic() + 30
        while termios.tcgetattr(terminal)[3] & termios.ECHO:  # wait for raw mode
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        os.write(controller, b"HAL")
        echoed = b""
        deadline = time.monotonic() + 30
        while len(echoed) < 3 and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 1)
            if ready:
                echoed += os.read(controller, 64)
        assert echoed == b"IBM"
        os.write(controller, b"\x01x")
        assert proc.wait(timeout=30) == 123
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)
        os.close(terminal)


def test_halt_with_every_interrupt_masked_stops(tmp_path: Path) -> None:
    body = STACK_SETUP + PIC_AT_BIOS_VECTORS + PIT_10MS + """
    mov al, 0xFF
    out 0x21, al          ; the PIT runs, but IRQ 0 is masked
    sti
    hlt
    jmp $
"""
    result = run_machine(bios=build_rom(tmp_path, body), timeout=120)
    assert result.reason is StopReason.HALTED
    assert "masked" in result.detail


def test_pending_irq_is_taken_before_a_software_int_when_if_is_set(tmp_path: Path) -> None:
    body = STACK_SETUP + HOOK_INT21_AND_TICK + PIC_AT_BIOS_VECTORS + PIT_10MS + """
    mov ecx, 700000           ; spin with IF=0 past the first PIT period (~14 ms)
.spin:
    dec ecx
    jnz .spin
    sti
    nop
    int 0x21                  ; IRQ 0 is pending: it must run before the handler
    cli
    mov al, [0x502]
    out 0xF4, al
tick:
    inc word [0x500]
    push ax
    mov al, 0x20
    out 0x20, al
    pop ax
    iret
handler21:
    push ax
    mov al, [0x500]
    mov [0x502], al           ; ticks seen when INT 21h started
    pop ax
    iret
"""
    result = run_machine(bios=build_rom(tmp_path, body), timeout=60)
    assert result.exit_code == 1, result.report


def test_a_device_bug_stops_the_run_as_an_internal_error(tmp_path: Path) -> None:
    class Broken:
        def io_ports(self):
            return [(0x500, 1)]

        def read(self, port: int, size: int) -> int:
            raise RuntimeError("device exploded")

        def write(self, port: int, size: int, value: int) -> None:
            pass

    body = STACK_SETUP + "    mov dx, 0x500\n    in al, dx\n    mov al, 0\n    out 0xF4, al\n"
    with Machine(bios=build_rom(tmp_path, body), timeout=60) as machine:
        machine.bus.attach(Broken())
        result = machine.run()
    assert result.reason is StopReason.INTERNAL_ERROR
    assert result.exit_code == 121
    assert "device exploded" in result.report


def test_f4_tail_bytes_at_slice_ends_are_not_taken_for_hlt(tmp_path: Path) -> None:
    # With IF=0 a HLT would end the run (125).  Slices end after every instruction of this
    # 3-instruction loop in turn, including after "mov al, 0xF4" (B0 F4), whose last byte
    # reads as HLT: the machine must find out that no HLT executed there.
    body = STACK_SETUP + """
    mov ecx, 1000000
.loop:
    mov al, 0xF4
    dec ecx
    jnz .loop
    mov al, 7
    out 0xF4, al
"""
    with Machine(bios=build_rom(tmp_path, body), timeout=60) as machine:
        result = machine.run()
        assert result.exit_code == 7, result.report
        assert machine.not_hlt_sites          # proven, and no longer watched
        assert not machine.hlt_sites


def test_serial_stdio_reads_piped_input(tmp_path: Path) -> None:
    import subprocess
    import sys

    body = STACK_SETUP + READ_COM1 + """    out 0xF4, al
"""
    rom = build_rom(tmp_path, body)
    proc = subprocess.run([sys.executable, "-m", "emu", "run", "--bios", str(rom),
                           "--serial", "stdio", "--timeout", "60"],
                          input=b"Q", capture_output=True, timeout=120)
    assert proc.returncode == ord("Q"), proc.stderr.decode()


def test_real_mode_lidt_limit_zero_then_int3_resets(tmp_path: Path) -> None:
    body = STACK_SETUP + """
    o32 lidt [cs:null_idt]
    int3
    mov al, 9
    out 0xF4, al
null_idt:
    dw 0
    dd 0
"""
    result = run_machine(bios=build_rom(tmp_path, body), timeout=60)
    assert result.reason is StopReason.RESET
    assert result.exit_code == 0


def test_rtc_periodic_irq8_through_the_slave_pic_wakes_hlt(tmp_path: Path) -> None:
    body = STACK_SETUP + """
    mov word [0x70*4], rtc_irq
    mov word [0x70*4+2], 0xF000
""" + PIC_AT_BIOS_VECTORS + """
    mov al, 0xFB              ; master: only the cascade (IRQ 2)
    out 0x21, al
    mov al, 0xFE              ; slave: only IRQ 8
    out 0xA1, al
    mov al, 0x0A
    out 0x70, al
    mov al, 0x26              ; 1024 Hz
    out 0x71, al
    mov al, 0x0B
    out 0x70, al
    mov al, 0x42              ; periodic interrupt enable, 24-hour
    out 0x71, al
    sti
.wait:
    hlt
    cmp word [0x500], 8
    jb .wait
    cli
    mov al, [0x500]
    out 0xF4, al
rtc_irq:
    push ax
    inc word [0x500]
    mov al, 0x0C
    out 0x70, al
    in al, 0x71               ; acknowledge at the RTC
    mov al, 0x20
    out 0xA0, al
    out 0x20, al
    pop ax
    iret
"""
    result = run_machine(bios=build_rom(tmp_path, body), timeout=60)
    assert result.exit_code == 8, result.report
    assert 7_000_000 <= result.virtual_ns < 9_000_000   # eight 1/1024 s periods
