//! The local APIC (xAPIC, memory-mapped): this CPU's id, end of interrupt, and the
//! inter-processor interrupts the kernel sends (shootdowns, wake-ups, INIT and STARTUP).
//!
//! Its registers (physical `0xfee00000`) are reached through an `ioremap` of the vmalloc
//! range, uncached, as a driver would map them; every CPU's APIC answers at the same
//! address. Until [`init`] ran there is no APIC access: [`eoi`] does nothing and nobody
//! sends IPIs (one CPU runs).

use core::sync::atomic::{AtomicU64, Ordering};

use pagetable::PhysAddr;
use vmalloc::{PAGE_KERNEL_IO, Vmalloc};

use crate::platform::Kernel;

/// The xAPIC's physical base (the architectural default; `IA32_APIC_BASE` says the same
/// under QEMU).
const APIC_PHYS: u64 = 0xfee0_0000;

const EOI: u64 = 0xb0;
const SVR: u64 = 0xf0;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;

/// ICR delivery-status bit: the previous IPI is still being sent.
const ICR_PENDING: u32 = 1 << 12;
/// ICR level bit: assert.
const ICR_ASSERT: u32 = 1 << 14;
/// ICR delivery mode INIT.
const ICR_INIT: u32 = 0b101 << 8;
/// ICR delivery mode STARTUP.
const ICR_STARTUP: u32 = 0b110 << 8;

/// The registers' virtual address (0 until mapped).
static BASE: AtomicU64 = AtomicU64::new(0);

fn read(reg: u64) -> u32 {
    let base = BASE.load(Ordering::Relaxed);
    // SAFETY: `base` is the uncached ioremap of this CPU's APIC page (set by `init`, never
    // unmapped); `reg` is one of the 16-byte-aligned register offsets above, read as the
    // 32-bit access the APIC requires.
    unsafe { core::ptr::read_volatile((base + reg) as *const u32) }
}

fn write(reg: u64, value: u32) {
    let base = BASE.load(Ordering::Relaxed);
    // SAFETY: as for `read`; a write to these registers has no effect on memory.
    unsafe { core::ptr::write_volatile((base + reg) as *mut u32, value) };
}

/// Map the APIC (boot CPU, once, after vmalloc exists) and enable it on this CPU.
pub fn init(vm: &Vmalloc<Kernel>) {
    let va = vm
        .ioremap(PhysAddr::new(APIC_PHYS), 4096, PAGE_KERNEL_IO)
        .expect("ioremap of the local APIC");
    BASE.store(va.as_u64(), Ordering::Relaxed);
    enable_this_cpu();
}

/// Software-enable this CPU's APIC with the spurious vector.
pub fn enable_this_cpu() {
    write(SVR, 0x100 | u32::from(crate::interrupts::SPURIOUS_VECTOR));
}

/// Signal the end of the interrupt being handled (nothing before [`init`]).
pub fn eoi() {
    if BASE.load(Ordering::Relaxed) != 0 {
        write(EOI, 0);
    }
}

fn send(dest: u32, low: u32) {
    while read(ICR_LOW) & ICR_PENDING != 0 {
        core::hint::spin_loop();
    }
    write(ICR_HIGH, dest << 24);
    write(ICR_LOW, low);
    while read(ICR_LOW) & ICR_PENDING != 0 {
        core::hint::spin_loop();
    }
}

/// A fixed interrupt `vector` to the CPU whose APIC id is `dest`.
pub fn send_ipi(dest: u32, vector: u8) {
    send(dest, ICR_ASSERT | u32::from(vector));
}

/// INIT to `dest` (first step of starting an application processor).
pub fn send_init(dest: u32) {
    send(dest, ICR_ASSERT | ICR_INIT);
}

/// STARTUP to `dest`: it starts in real mode at physical `page << 12`.
pub fn send_startup(dest: u32, page: u8) {
    send(dest, ICR_ASSERT | ICR_STARTUP | u32::from(page));
}

/// Whether the APIC is mapped (IPIs can be sent).
pub fn ready() -> bool {
    BASE.load(Ordering::Relaxed) != 0
}

/// Silence the legacy 8259 PICs: remap their vectors away from the exceptions (the BIOS
/// leaves IRQ 0, the PIT, on vector 8) to 0x20..0x30, then mask every line. The kernel
/// takes interrupts from the local APIC only.
pub fn disable_legacy_pic() {
    use crate::cpu::outb;
    for (cmd, data, base, cascade) in [(0x20, 0x21, 0x20, 4), (0xa0, 0xa1, 0x28, 2)] {
        outb(cmd, 0x11); // ICW1: initialise, ICW4 follows
        outb(data, base); // ICW2: vector base
        outb(data, cascade); // ICW3: cascade wiring
        outb(data, 0x01); // ICW4: 8086 mode
        outb(data, 0xff); // mask everything
    }
}
