//! CPU identity for per-CPU data.
//!
//! In user space a "CPU" is an id. Each thread gets one the first time it asks, drawn
//! round-robin from `0..nr_cpu_ids()`, so up to `nr_cpu_ids()` concurrently started threads get
//! distinct ids (the usual benchmark and runner case). A thread may also pin itself with
//! [`set_this_cpu`] to ANY id, including one at or above `nr_cpu_ids()`: a per-CPU structure
//! built for `n` CPUs maps id `c` to its slot `c % n` (so an instance configured for more
//! CPUs than the machine has can still be driven from threads pinned to each of them, and one
//! configured for fewer folds the extra ids onto its slots). Per-CPU data is always reached
//! through a lock or atomics, never assumed exclusive: a thread that shares its slot with
//! another, or moves, is slower, never wrong.
//!
//! # Simulated CPU counts
//!
//! [`nr_cpu_ids`] is the machine's available parallelism unless the environment variable
//! `KVMALLOC_NR_CPUS` holds a positive integer (at most [`MAX_NR_CPU_IDS`]), read once at first
//! use. The test suite runs under `KVMALLOC_NR_CPUS=1`, `16` and `64` besides the real count
//! (`scripts/test-all.sh`), so that every default derived from the CPU count (shards, purge
//! workers, `lazy_max_pages`, per-CPU caches, the TLB model) is exercised with threads
//! outnumbering CPUs and CPUs outnumbering threads. A single instance can also be built for a
//! given count regardless of the machine (`KvaConfig::nr_cpus` in `vmalloc`).

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The largest CPU count [`nr_cpu_ids`] accepts from `KVMALLOC_NR_CPUS`: the platform's
/// [`MAX_NR_CPUS`](crate::platform::MAX_NR_CPUS) (8192, x86_64 Linux's largest
/// `CONFIG_NR_CPUS`, and why the crates have a bound at all).
pub const MAX_NR_CPU_IDS: usize = crate::platform::MAX_NR_CPUS;

/// The environment variable that overrides [`nr_cpu_ids`].
pub const NR_CPUS_ENV: &str = "KVMALLOC_NR_CPUS";

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

/// Parse a `KVMALLOC_NR_CPUS` value: a positive integer up to [`MAX_NR_CPU_IDS`].
fn parse_nr_cpus(v: &str) -> Option<usize> {
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|&n| (1..=MAX_NR_CPU_IDS).contains(&n))
}

/// Number of CPUs: `KVMALLOC_NR_CPUS` if it holds a valid count (a positive integer up to
/// [`MAX_NR_CPU_IDS`]; any other value is ignored), else the machine's available parallelism
/// (at least 1). Fixed at first use. Under loom it is 2 (models pin their threads with
/// [`set_this_cpu`]).
pub fn nr_cpu_ids() -> usize {
    *NR_CPU_IDS.get_or_init(|| {
        if cfg!(feature = "loom") {
            return 2;
        }
        if let Some(n) = std::env::var(NR_CPUS_ENV)
            .ok()
            .and_then(|v| parse_nr_cpus(&v))
        {
            return n;
        }
        std::thread::available_parallelism().map_or(1, |n| n.get())
    })
}

/// The calling thread's CPU id: the one pinned with [`set_this_cpu`], else one drawn
/// round-robin from `0..nr_cpu_ids()` at the thread's first call (under loom: 0).
#[inline]
pub fn this_cpu() -> usize {
    // The fast path (one thread-local load) inlines; the first call's draw stays out of line.
    let v = THIS_CPU.with(Cell::get);
    if v != usize::MAX {
        return v;
    }
    draw_this_cpu()
}

/// [`this_cpu`]'s first call on a thread: draw its id and keep it.
#[cold]
#[inline(never)]
fn draw_this_cpu() -> usize {
    // Under loom every model thread starts on CPU 0 unless it pins itself: ids drawn from
    // a global counter would differ between executions and make the model
    // nondeterministic.
    let slot = if cfg!(feature = "loom") {
        0
    } else {
        NEXT_SLOT.fetch_add(1, Ordering::Relaxed) % nr_cpu_ids()
    };
    THIS_CPU.with(|c| c.set(slot));
    slot
}

/// Pin the calling thread to CPU id `cpu`, exactly as given (no wrapping: a structure built
/// for `n` CPUs uses slot `cpu % n`). `usize::MAX` unpins: the next [`this_cpu`] draws an id
/// again.
pub fn set_this_cpu(cpu: usize) {
    THIS_CPU.with(|c| c.set(cpu));
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn drawn_id_is_stable_and_in_range() {
        std::thread::spawn(|| {
            let a = this_cpu();
            assert!(a < nr_cpu_ids());
            assert_eq!(a, this_cpu());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn pinning_keeps_the_id_and_unpinning_draws_again() {
        std::thread::spawn(|| {
            set_this_cpu(nr_cpu_ids() + 1);
            assert_eq!(this_cpu(), nr_cpu_ids() + 1);
            set_this_cpu(3);
            assert_eq!(this_cpu(), 3);
            set_this_cpu(usize::MAX);
            assert!(this_cpu() < nr_cpu_ids());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn nr_cpus_override_parsing() {
        assert_eq!(parse_nr_cpus("16"), Some(16));
        assert_eq!(parse_nr_cpus(" 64\n"), Some(64));
        assert_eq!(parse_nr_cpus("1"), Some(1));
        assert_eq!(parse_nr_cpus("0"), None);
        assert_eq!(parse_nr_cpus("-2"), None);
        assert_eq!(parse_nr_cpus("many"), None);
        assert_eq!(parse_nr_cpus("8193"), None);
        assert_eq!(parse_nr_cpus("8192"), Some(8192));
    }

    #[test]
    fn nr_cpu_ids_follows_the_environment() {
        // The value is fixed at first use; whatever it is, it agrees with the variable.
        match std::env::var(NR_CPUS_ENV)
            .ok()
            .and_then(|v| parse_nr_cpus(&v))
        {
            Some(n) => assert_eq!(nr_cpu_ids(), n),
            None => assert_eq!(
                nr_cpu_ids(),
                std::thread::available_parallelism().map_or(1, |n| n.get())
            ),
        }
    }
}
