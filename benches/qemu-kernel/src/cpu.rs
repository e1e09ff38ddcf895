//! The x86_64 instructions the kernel uses, each behind a small function.
//!
//! Everything that only reads state or only affects this CPU's view of the machine in a way
//! that cannot break memory safety (port I/O to the serial port and the PIT, `rdtsc`, `pause`,
//! `hlt`, TLB invalidation) is a safe function whose body argues why; what can break the
//! kernel's invariants (loading CR3, writing MSRs, enabling interrupts before the IDT exists)
//! is an `unsafe fn` whose caller argues.

use core::arch::asm;

/// `out dx, al`.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O touches no memory; the kernel only names ports of devices it owns
    // (COM1, the PIT, the legacy PICs, isa-debug-exit), where a write has no memory effect.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// `in al, dx`.
pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as for `outb`: reading a device register touches no memory.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// `out dx, eax`.
pub fn outl(port: u16, value: u32) {
    // SAFETY: as for `outb`.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}

/// The time-stamp counter.
#[inline]
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: `rdtsc` only reads the counter (CR4.TSD is clear: the kernel runs in ring 0).
    unsafe {
        asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// `cpuid` leaf `leaf`, subleaf 0: (eax, ebx, ecx, edx).
pub fn cpuid(leaf: u32) -> (u32, u32, u32, u32) {
    // `cpuid` exists on every x86_64 CPU and only reads identification registers.
    let r = core::arch::x86_64::__cpuid_count(leaf, 0);
    (r.eax, r.ebx, r.ecx, r.edx)
}

/// The initial APIC id of this CPU (CPUID leaf 1, EBX bits 31..24).
pub fn initial_apic_id() -> u32 {
    cpuid(1).1 >> 24
}

/// One step of a busy-wait.
#[inline]
pub fn pause() {
    core::hint::spin_loop();
}

/// Write a model-specific register.
///
/// # Safety
/// `msr` must exist and `value` must keep every invariant the kernel relies on (e.g. the GS
/// base must point at this CPU's per-CPU data).
pub unsafe fn wrmsr(msr: u32, value: u64) {
    // SAFETY: forwarded to the caller.
    unsafe {
        asm!("wrmsr", in("ecx") msr, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nostack, preserves_flags))
    };
}

/// The physical address of the current PML4 (CR3 without its flag bits).
pub fn read_cr3() -> u64 {
    let v: u64;
    // SAFETY: reading CR3 has no effect.
    unsafe { asm!("mov {}, cr3", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v & !0xfff
}

/// Load CR3: switch to the page tables rooted at physical `pml4` (flushing every non-global
/// translation of this CPU).
///
/// # Safety
/// The tables must map everything the kernel touches from here on (its image, stacks, heap,
/// the direct map) at the same addresses as before, and stay alive while loaded.
pub unsafe fn write_cr3(pml4: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("mov cr3, {}", in(reg) pml4, options(nostack, preserves_flags)) };
}

/// CR4.PGE: global pages.
pub const CR4_PGE: u64 = 1 << 7;

/// Read CR4.
pub fn read_cr4() -> u64 {
    let v: u64;
    // SAFETY: reading CR4 has no effect.
    unsafe { asm!("mov {}, cr4", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Write CR4.
///
/// # Safety
/// Only bits this kernel manages may change (PGE, toggled by the full TLB flush or enabled at
/// bring-up); paging mode bits (PAE, LA57) must stay as they are.
pub unsafe fn write_cr4(v: u64) {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("mov cr4, {}", in(reg) v, options(nostack, preserves_flags)) };
}

/// The faulting address of the last page fault.
pub fn read_cr2() -> u64 {
    let v: u64;
    // SAFETY: reading CR2 has no effect.
    unsafe { asm!("mov {}, cr2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Invalidate this CPU's translation of the page containing `va` (global or not).
#[inline]
pub fn invlpg(va: u64) {
    // SAFETY: `invlpg` only drops a cached translation; the next access walks the tables,
    // which is always correct. The operand is not dereferenced.
    unsafe { asm!("invlpg [{}]", in(reg) va, options(nostack, preserves_flags)) };
}

/// Invalidate every translation of this CPU, global ones included (toggling CR4.PGE, as
/// Linux's `native_flush_tlb_global` does; a CR3 reload would keep the global entries, and
/// every kernel mapping here is global). With PGE off, a CR3 reload.
pub fn flush_tlb_all_local() {
    let cr4 = read_cr4();
    if cr4 & CR4_PGE != 0 {
        // SAFETY: only PGE changes, and it is restored at once: clearing it invalidates
        // every translation, setting it again re-enables global pages.
        unsafe {
            write_cr4(cr4 & !CR4_PGE);
            write_cr4(cr4);
        }
    } else {
        // SAFETY: reloading the CR3 value already loaded changes no mapping.
        unsafe { write_cr3(read_cr3()) };
    }
}

/// Enable interrupts.
///
/// # Safety
/// The IDT must be loaded with a handler for every vector that can arrive.
pub unsafe fn enable_interrupts() {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("sti", options(nomem, nostack)) };
}

/// Disable interrupts on this CPU.
pub fn disable_interrupts() {
    // SAFETY: masking interrupts cannot break memory safety (it can only delay handlers).
    unsafe { asm!("cli", options(nomem, nostack)) };
}

/// Whether interrupts are enabled (RFLAGS.IF).
pub fn interrupts_enabled() -> bool {
    let flags: u64;
    // SAFETY: reads RFLAGS through the stack; no other effect.
    unsafe { asm!("pushfq", "pop {}", out(reg) flags, options(nomem, preserves_flags)) };
    flags & (1 << 9) != 0
}

/// Enable interrupts and halt until one arrives, atomically (`sti; hlt`: the one-instruction
/// interrupt shadow of `sti` means no interrupt is taken between the two, so a wake-up IPI
/// sent after the caller's last check always ends the halt).
///
/// # Safety
/// As for [`enable_interrupts`].
pub unsafe fn enable_interrupts_and_halt() {
    // SAFETY: forwarded to the caller.
    unsafe { asm!("sti", "hlt", options(nomem, nostack)) };
}

/// Halt this CPU for good with interrupts off.
pub fn halt_forever() -> ! {
    loop {
        disable_interrupts();
        // SAFETY: `hlt` with interrupts off stops the CPU until an NMI; nothing is touched.
        unsafe { asm!("hlt", options(nomem, nostack)) };
    }
}
