//! CPU identity for per-CPU data.
//!
//! In user space a "CPU" is a slot index in `0..nr_cpu_ids()`. Each thread gets a slot the
//! first time it asks, round-robin, so up to `nr_cpu_ids()` concurrently started threads get
//! distinct slots (the usual benchmark and runner case). A thread may also pin itself with
//! [`set_this_cpu`]. Per-CPU data is always reached through a lock or atomics, never assumed
//! exclusive: a thread that shares its slot with another, or moves, is slower, never wrong.

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
static NR_CPU_IDS: OnceLock<usize> = OnceLock::new();

#[cfg(not(feature = "loom"))]
std::thread_local! {
    static THIS_CPU: Cell<usize> = const { Cell::new(usize::MAX) };
}
#[cfg(feature = "loom")]
loom::thread_local! {
    static THIS_CPU: Cell<usize> = Cell::new(usize::MAX);
}

/// Number of CPU slots: the machine's available parallelism (at least 1), fixed at first use.
/// Under loom it is 2 unless the environment sets otherwise through [`set_this_cpu`].
pub fn nr_cpu_ids() -> usize {
    *NR_CPU_IDS.get_or_init(|| {
        if cfg!(feature = "loom") {
            2
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    })
}

/// The calling thread's CPU slot, in `0..nr_cpu_ids()`.
#[inline]
pub fn this_cpu() -> usize {
    THIS_CPU.with(|c| {
        let v = c.get();
        if v != usize::MAX {
            return v;
        }
        // Under loom every model thread starts on slot 0 unless it pins itself: slot numbers
        // drawn from a global counter would differ between executions and make the model
        // nondeterministic.
        let slot = if cfg!(feature = "loom") {
            0
        } else {
            NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % nr_cpu_ids()
        };
        c.set(slot);
        slot
    })
}

/// Pin the calling thread to CPU slot `cpu % nr_cpu_ids()`.
pub fn set_this_cpu(cpu: usize) {
    let slot = cpu % nr_cpu_ids();
    THIS_CPU.with(|c| c.set(slot));
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn slot_is_stable_and_in_range() {
        let a = this_cpu();
        assert!(a < nr_cpu_ids());
        assert_eq!(a, this_cpu());
    }

    #[test]
    fn pinning_wraps_modulo_nr_cpu_ids() {
        std::thread::spawn(|| {
            set_this_cpu(nr_cpu_ids() + 1);
            assert_eq!(this_cpu(), 1 % nr_cpu_ids());
        })
        .join()
        .unwrap();
    }
}
