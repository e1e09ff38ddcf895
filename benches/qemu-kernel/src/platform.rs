//! The kernel's implementation of the crates' platform interface
//! (`pagetable::platform::Platform`).
//!
//! * Locks: `pagetable`'s test-and-test-and-set [`RawSpinlock`], with interrupts left on.
//!   That is correct because no interrupt handler of this kernel takes a lock of the crates
//!   (or any lock: the shootdown handler flushes and acknowledges through atomics, the
//!   wake-up handler only signals end of interrupt), and it is necessary: a CPU spinning on a
//!   lock held by a CPU that waits for its shootdown acknowledgement must still take the IPI.
//! * The current CPU: the index in the GS-based per-CPU data ([`percpu::this_cpu`]).
//! * The CPU count: the number of CPUs the ACPI MADT lists (enabled ones, at most
//!   [`percpu::MAX_CPUS`]), fixed before the first lock or per-CPU array is made; the
//!   application processors come online later, so a slot may be unused for a while.
//! * `cond_resched`: nothing (no scheduler; long loops already release their locks).

use core::sync::atomic::{AtomicUsize, Ordering};

use pagetable::platform::{Platform, RawSpinlock};

use crate::percpu;

/// `nr_cpu_ids`: set once at boot from the MADT.
static NR_CPU_IDS: AtomicUsize = AtomicUsize::new(1);

/// Fix the CPU count (before any allocator or frame allocator is built).
pub fn set_nr_cpu_ids(n: usize) {
    NR_CPU_IDS.store(n.clamp(1, percpu::MAX_CPUS), Ordering::Relaxed);
}

/// The kernel, as the crates see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Kernel;

impl Platform for Kernel {
    type RawMutex = RawSpinlock;

    #[inline]
    fn this_cpu() -> usize {
        percpu::this_cpu()
    }

    #[inline]
    fn nr_cpu_ids() -> usize {
        NR_CPU_IDS.load(Ordering::Relaxed)
    }
}
