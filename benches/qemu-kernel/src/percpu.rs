//! Per-CPU data, reached through the GS base as Linux does: each CPU's `IA32_GS_BASE` points
//! at its [`PerCpu`], whose first word is the CPU's index, so "which CPU am I" is one
//! `mov rax, gs:[0]`. Indices are dense (`0` is the boot CPU, then the application
//! processors in the order the MADT lists them), which is what `Platform::this_cpu` and the
//! crates' per-CPU arrays want.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use alloc::boxed::Box;
use pagetable::platform::RawSpinlock;
use pagetable::platform::lock_api::{Mutex, RawMutex};

use crate::cpu;

/// The most CPUs this kernel brings up.
pub const MAX_CPUS: usize = 64;

/// `IA32_GS_BASE`.
const MSR_GS_BASE: u32 = 0xc000_0101;

/// Work handed to a CPU by [`crate::smp::run_on`].
pub type Job = Box<dyn FnOnce() + Send>;

/// One CPU's data. `index` must stay the first field (read at `gs:[0]`).
#[repr(C)]
pub struct PerCpu {
    /// The CPU's index (constant).
    index: usize,
    /// Its local APIC id (set when it is brought up).
    pub apic_id: AtomicU32,
    /// Whether it runs the kernel (IDT loaded, interrupts on): shootdowns target it.
    pub online: AtomicBool,
    /// Whether it sits in the idle loop (a wake-up IPI gets it to look for work).
    pub idle: AtomicBool,
    /// The job [`crate::smp::run_on`] gave it, if it has not taken it yet.
    pub job: Mutex<RawSpinlock, Option<Job>>,
    /// Set when its last job returned.
    pub job_done: AtomicBool,
}

impl PerCpu {
    const fn new(index: usize) -> Self {
        Self {
            index,
            apic_id: AtomicU32::new(0),
            online: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            job: Mutex::const_new(<RawSpinlock as RawMutex>::INIT, None),
            job_done: AtomicBool::new(true),
        }
    }
}

const fn all() -> [PerCpu; MAX_CPUS] {
    let mut a = [const { PerCpu::new(0) }; MAX_CPUS];
    let mut i = 0;
    while i < MAX_CPUS {
        a[i].index = i;
        i += 1;
    }
    a
}

static CPUS: [PerCpu; MAX_CPUS] = all();

/// CPU `i`'s data.
pub fn cpu(i: usize) -> &'static PerCpu {
    &CPUS[i]
}

/// Point this CPU's GS base at the data of CPU `index` and record its APIC id. The first
/// thing each CPU does in Rust, before anything asks which CPU it is.
pub fn init_this_cpu(index: usize) {
    let pc = &CPUS[index];
    pc.apic_id.store(cpu::initial_apic_id(), Ordering::Relaxed);
    // SAFETY: IA32_GS_BASE exists on every x86_64 CPU; it now points at a static that lives
    // forever and whose first word is this CPU's index, which is all `this_cpu` reads.
    unsafe { cpu::wrmsr(MSR_GS_BASE, pc as *const PerCpu as u64) };
}

/// The calling CPU's index.
#[inline]
pub fn this_cpu() -> usize {
    let index: usize;
    // SAFETY: every CPU sets its GS base with `init_this_cpu` before running any code that
    // calls this; `gs:[0]` is then its `PerCpu::index`, a constant.
    unsafe {
        core::arch::asm!("mov {}, gs:[0]", out(reg) index, options(nostack, readonly, preserves_flags))
    };
    index
}
