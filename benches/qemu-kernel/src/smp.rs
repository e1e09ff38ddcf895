//! Bringing up the application processors: INIT, STARTUP, STARTUP through the local APIC,
//! into a trampoline copied to [`TRAMPOLINE`] (real mode -> protected mode -> long mode on
//! the kernel's own page tables), onto a per-CPU stack vmalloc'd as Linux's `VMAP_STACK`
//! stacks are, then into [`ap_entry`]: per-CPU data, IDT, global pages, APIC,
//! interrupts on, and the idle loop. One CPU at a time: the trampoline's data (CR3, stack,
//! index) is shared.

use core::sync::atomic::Ordering;

use pagetable::PAGE_SIZE;
use vmalloc::Vmalloc;

use crate::boot::PAGE_OFFSET;
use crate::platform::Kernel;
use crate::{apic, cpu, interrupts, kprintln, percpu, sched, time};

/// Physical address of the trampoline (page 8: a STARTUP vector of 0x08).
pub const TRAMPOLINE: u64 = 0x8000;

/// Size of an application processor's stack.
pub const AP_STACK_BYTES: u64 = 64 << 10;

// The trampoline, assembled into the kernel image and copied to TRAMPOLINE at run time: every
// absolute address in it is `TRAMPOLINE + (label - ap_tramp_start)`. GDT selectors as the
// boot GDT's: 0x08 64-bit code, 0x10 data; 0x18 is 32-bit code for the protected-mode step.
core::arch::global_asm!(
    r#"
    .section .rodata.trampoline, "a"
    .balign 4096
    .global ap_tramp_start
ap_tramp_start:
    .code16
    cli
    cld
    xor %ax, %ax
    mov %ax, %ds
    lgdtl ({base} + tramp_gdt_ptr - ap_tramp_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x18, ${base} + tramp_pm - ap_tramp_start

    .code32
tramp_pm:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov %cr4, %eax              /* PAE */
    or $0x20, %eax
    mov %eax, %cr4
    mov ({base} + tramp_cr3 - ap_tramp_start), %eax
    mov %eax, %cr3
    mov $0xC0000080, %ecx       /* EFER: long mode, no-execute */
    rdmsr
    or $0x900, %eax
    wrmsr
    mov %cr0, %eax              /* paging, write protect */
    or $0x80010001, %eax
    mov %eax, %cr0
    ljmpl $0x08, ${base} + tramp_lm - ap_tramp_start

    .code64
tramp_lm:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov ({base} + tramp_stack - ap_tramp_start), %rsp
    mov ({base} + tramp_arg - ap_tramp_start), %rdi
    mov ({base} + tramp_entry - ap_tramp_start), %rax
    call *%rax
.Lap_hang:
    cli
    hlt
    jmp .Lap_hang

    .balign 8
tramp_gdt:
    .quad 0
    .quad 0x00af9a000000ffff    /* 0x08: 64-bit code */
    .quad 0x00cf92000000ffff    /* 0x10: data */
    .quad 0x00cf9a000000ffff    /* 0x18: 32-bit code */
tramp_gdt_end:
tramp_gdt_ptr:
    .word tramp_gdt_end - tramp_gdt - 1
    .long {base} + tramp_gdt - ap_tramp_start
    .balign 8
    .global tramp_cr3
tramp_cr3:
    .quad 0
    .global tramp_stack
tramp_stack:
    .quad 0
    .global tramp_arg
tramp_arg:
    .quad 0
    .global tramp_entry
tramp_entry:
    .quad 0
    .global ap_tramp_end
ap_tramp_end:
"#,
    base = const TRAMPOLINE,
    options(att_syntax)
);

unsafe extern "C" {
    static ap_tramp_start: u8;
    static ap_tramp_end: u8;
    static tramp_cr3: u8;
    static tramp_stack: u8;
    static tramp_arg: u8;
    static tramp_entry: u8;
    static boot_gdt_ptr: u8;
}

/// Offset of a trampoline symbol from its start.
fn offset(sym: *const u8) -> u64 {
    sym as u64 - core::ptr::addr_of!(ap_tramp_start) as u64
}

/// The trampoline's copy at [`TRAMPOLINE`], reached through the direct map.
fn tramp_ptr(off: u64) -> *mut u8 {
    (PAGE_OFFSET + TRAMPOLINE + off) as *mut u8
}

/// Copy the trampoline to low memory.
fn install_trampoline() {
    let start = core::ptr::addr_of!(ap_tramp_start);
    let len = offset(core::ptr::addr_of!(ap_tramp_end)) as usize;
    assert!(len as u64 <= PAGE_SIZE);
    // SAFETY: the source is the trampoline in the kernel image (read-only data); the target is
    // page 8 of RAM (the first region of the memory map, below the kernel image, used by
    // nothing else: the boot information it held was copied out at boot), mapped at
    // PAGE_OFFSET. The ranges do not overlap.
    unsafe { core::ptr::copy_nonoverlapping(start, tramp_ptr(0), len) };
}

/// Write one 64-bit slot of the trampoline's data.
fn set_slot(sym: *const u8, value: u64) {
    // SAFETY: the slot lies inside the copied trampoline page (an 8-aligned `.quad` of it);
    // no AP runs the trampoline while the boot CPU writes it (bring-up is one CPU at a time).
    unsafe { (tramp_ptr(offset(sym)) as *mut u64).write_volatile(value) };
}

/// Start every CPU of `apic_ids` (index `i + 1` for `apic_ids[i]`); returns how many are
/// online, the boot CPU included.
pub fn start_aps(vm: &Vmalloc<Kernel>, apic_ids: &[u32]) -> usize {
    install_trampoline();
    set_slot(core::ptr::addr_of!(tramp_cr3), cpu::read_cr3());
    set_slot(
        core::ptr::addr_of!(tramp_entry),
        ap_entry as extern "C" fn(u64) -> ! as usize as u64,
    );
    let mut online = 1;
    for (i, &apic_id) in apic_ids.iter().enumerate() {
        let index = i + 1;
        let stack = match vm.vmalloc(AP_STACK_BYTES) {
            Ok(s) => s,
            Err(e) => {
                kprintln!("smp: no stack for cpu {index}: {e}");
                break;
            }
        };
        set_slot(
            core::ptr::addr_of!(tramp_stack),
            stack.as_u64() + AP_STACK_BYTES,
        );
        set_slot(core::ptr::addr_of!(tramp_arg), index as u64);
        let pc = percpu::cpu(index);
        apic::send_init(apic_id);
        time::udelay(10_000);
        for _ in 0..2 {
            apic::send_startup(apic_id, (TRAMPOLINE >> 12) as u8);
            time::udelay(200);
            if pc.online.load(Ordering::Acquire) {
                break;
            }
        }
        // A liveness bound, not a speed check: emulated CPUs on a loaded host may take a while.
        let deadline = time::now_usec() + 10_000_000;
        while !pc.online.load(Ordering::Acquire) && time::now_usec() < deadline {
            cpu::pause();
        }
        if !pc.online.load(Ordering::Acquire) {
            kprintln!("smp: cpu {index} (apic {apic_id}) did not come up");
            let _ = vm.vfree(stack);
            break;
        }
        online += 1;
    }
    online
}

/// An application processor's first Rust code, on its own stack with the kernel's CR3.
extern "C" fn ap_entry(index: u64) -> ! {
    percpu::init_this_cpu(index as usize);
    // SAFETY: `boot_gdt_ptr` describes the boot GDT in the kernel image, whose selectors are
    // the ones the trampoline loaded (0x08 code, 0x10 data), so no segment reload is needed.
    unsafe {
        core::arch::asm!("lgdt [{}]", in(reg) core::ptr::addr_of!(boot_gdt_ptr), options(readonly, nostack, preserves_flags))
    };
    interrupts::load();
    // SAFETY: only PGE is added: every kernel mapping is global, as on the boot CPU.
    unsafe { cpu::write_cr4(cpu::read_cr4() | cpu::CR4_PGE) };
    apic::enable_this_cpu();
    percpu::cpu(index as usize)
        .online
        .store(true, Ordering::Release);
    // SAFETY: the IDT is loaded and the APIC enabled.
    unsafe { cpu::enable_interrupts() };
    sched::idle_loop()
}
