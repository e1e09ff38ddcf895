//! The interrupt descriptor table and the trap path.
//!
//! Stubs (in assembly below) push the vector (and a zero where the CPU pushes no error
//! code), save the caller-saved registers and call [`trap_dispatch`] with the frame. Vectors:
//! the 32 exceptions, [`TLB_VECTOR`] (shootdown request: flush, acknowledge), [`WAKE_VECTOR`]
//! (an idle CPU has work), [`SPURIOUS_VECTOR`] and the legacy PICs' spurious vectors. Every gate is an interrupt gate, so
//! handlers run with interrupts off. An exception is fatal (reported on the console, QEMU
//! exits with the fail status) except a page fault at [`probe_read`]'s load, which resumes
//! at its fixup: the kernel's `copy_from_kernel_nofault`, used to read through a virtual
//! address that may no longer be mapped.

use core::cell::UnsafeCell;

use crate::{apic, cpu, exit, percpu, serial, tlb};

/// The shootdown vector.
pub const TLB_VECTOR: u8 = 0xf0;
/// The wake-up vector.
pub const WAKE_VECTOR: u8 = 0xf1;
/// The local APIC's spurious vector.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// Where the masked legacy PICs deliver a spurious IRQ 7 and IRQ 15 (see
/// [`crate::apic::disable_legacy_pic`]): ignored.
const LEGACY_SPURIOUS: [u8; 2] = [0x27, 0x2f];

/// The vectors with a stub, in the order of `isr_table` below.
const VECTORS: [u8; 37] = {
    let mut v = [0u8; 37];
    let mut i = 0;
    while i < 32 {
        v[i] = i as u8;
        i += 1;
    }
    v[32] = TLB_VECTOR;
    v[33] = WAKE_VECTOR;
    v[34] = SPURIOUS_VECTOR;
    v[35] = LEGACY_SPURIOUS[0];
    v[36] = LEGACY_SPURIOUS[1];
    v
};

core::arch::global_asm!(
    r#"
    .section .text
    .macro ISR_NOERR n
isr_\n:
    push 0
    push \n
    jmp isr_common
    .endm
    .macro ISR_ERR n
isr_\n:
    push \n
    jmp isr_common
    .endm

    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31,240,241,255,39,47
    ISR_NOERR \n
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
    ISR_ERR \n
    .endr

isr_common:
    push rax
    push rcx
    push rdx
    push rsi
    push rdi
    push r8
    push r9
    push r10
    push r11
    mov rdi, rsp
    cld
    call trap_dispatch
    pop r11
    pop r10
    pop r9
    pop r8
    pop rdi
    pop rsi
    pop rdx
    pop rcx
    pop rax
    add rsp, 16
    iretq

    .global probe_read_u64
probe_read_u64:
    xor eax, eax
    .global probe_read_insn
probe_read_insn:
    mov rdx, [rdi]
    mov [rsi], rdx
    ret
    .global probe_read_fixup
probe_read_fixup:
    mov eax, 1
    ret

    .section .rodata
    .balign 8
    .global isr_table
isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31,240,241,255,39,47
    .quad isr_\n
    .endr
"#
);

unsafe extern "C" {
    static isr_table: [u64; 37];
    fn probe_read_u64(addr: u64, out: *mut u64) -> u32;
    static probe_read_insn: u8;
    static probe_read_fixup: u8;
}

/// What a stub saved, lowest address first.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rax: u64,
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// One IDT entry.
#[repr(C)]
#[derive(Clone, Copy)]
struct Gate {
    offset_low: u16,
    selector: u16,
    ist: u8,
    attributes: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl Gate {
    const MISSING: Gate = Gate {
        offset_low: 0,
        selector: 0,
        ist: 0,
        attributes: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    /// A present ring-0 64-bit interrupt gate to `handler` in the kernel code segment.
    fn interrupt(handler: u64) -> Gate {
        Gate {
            offset_low: handler as u16,
            selector: 0x08,
            ist: 0,
            attributes: 0x8e,
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

/// The IDT: written once by the boot CPU ([`init`]) before any CPU loads it, read-only after.
struct Idt(UnsafeCell<[Gate; 256]>);

// SAFETY: written only by `init`, on the boot CPU, before interrupts are enabled anywhere and
// before any other CPU runs; every later access is the CPUs' own reads through `lidt`.
unsafe impl Sync for Idt {}

static IDT: Idt = Idt(UnsafeCell::new([Gate::MISSING; 256]));

/// Fill the IDT (boot CPU, once, before [`load`]).
pub fn init() {
    // SAFETY: see `Idt`: nothing reads the table yet (no CPU has loaded it), so this is the
    // only reference. `isr_table` is a read-only table of the stub addresses.
    let (idt, table) = unsafe { (&mut *IDT.0.get(), &*core::ptr::addr_of!(isr_table)) };
    for (&v, &addr) in VECTORS.iter().zip(table) {
        idt[usize::from(v)] = Gate::interrupt(addr);
    }
}

/// Load the IDT on this CPU.
pub fn load() {
    #[repr(C, packed)]
    struct Pointer {
        limit: u16,
        base: u64,
    }
    let p = Pointer {
        limit: (core::mem::size_of::<[Gate; 256]>() - 1) as u16,
        base: IDT.0.get() as u64,
    };
    // SAFETY: the IDT is a static filled by `init` (called first by the boot CPU); every
    // gate in it points at a stub of this file.
    unsafe {
        core::arch::asm!("lidt [{}]", in(reg) &p, options(readonly, nostack, preserves_flags))
    };
}

/// Read the 8 bytes at `addr` if a translation exists for it (from the TLB or the page
/// tables), `None` if the read faults. Never panics.
pub fn probe_read(addr: u64) -> Option<u64> {
    let mut out = 0u64;
    // SAFETY: the routine loads from `addr` at `probe_read_insn`; a page fault there resumes
    // at `probe_read_fixup` (see `trap_dispatch`), so the load either succeeds or returns 1.
    // It writes only `out`. A successful read of memory someone else writes is a racy read
    // of plain bytes, which the callers (the stale-TLB test) treat as data only.
    let faulted = unsafe { probe_read_u64(addr, &mut out) };
    (faulted == 0).then_some(out)
}

/// The Rust side of every stub.
#[unsafe(no_mangle)]
extern "C" fn trap_dispatch(frame: &mut TrapFrame) {
    match frame.vector as u8 {
        TLB_VECTOR => {
            tlb::handle_shootdown();
            apic::eoi();
        }
        WAKE_VECTOR => apic::eoi(),
        SPURIOUS_VECTOR => {}
        v if LEGACY_SPURIOUS.contains(&v) => {}
        14 if frame.rip == core::ptr::addr_of!(probe_read_insn) as u64 => {
            frame.rip = core::ptr::addr_of!(probe_read_fixup) as u64;
        }
        _ => fatal(frame),
    }
}

fn fatal(frame: &TrapFrame) -> ! {
    serial::print_fatal(format_args!(
        "\nEXCEPTION {} error {:#x} on cpu {} at rip {:#x} (cr2 {:#x}, rsp {:#x})\n",
        frame.vector,
        frame.error,
        percpu::this_cpu(),
        frame.rip,
        cpu::read_cr2(),
        frame.rsp
    ));
    serial::print_fatal(format_args!("{frame:x?}\nresult: FAIL\n"));
    exit::exit(exit::FAIL)
}
