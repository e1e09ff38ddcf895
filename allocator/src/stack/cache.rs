//! The per-CPU caches of still-mapped thread stacks (see [`crate::stack`]): each CPU slot
//! has [`NR_CACHED_STACKS`] atomic words, 0 = empty, else the start of a cached stack area.
//! Taking is a swap, caching a compare-exchange; both `AcqRel`, no lock.

#[allow(unused_imports)]
use crate::prelude::*;
use core::fmt;

use crossbeam_utils::CachePadded;
use pagetable::platform::Platform;

use crate::sync::{AtomicU64, Ordering};

/// Stacks kept mapped per CPU for reuse: Linux's `NR_CACHED_STACKS` (`kernel/fork.c`).
///
/// Why 2: a CPU that ends a thread and starts another (the common churn) needs one; a
/// second absorbs a burst of one more, and each cached stack pins 16 KiB of memory and 24
/// KiB of VA per CPU that nobody else can use.
pub const NR_CACHED_STACKS: usize = 2;

/// The per-CPU stack caches of an instance.
pub(crate) struct StackCaches<P: Platform> {
    slots: Box<[CachePadded<[AtomicU64; NR_CACHED_STACKS]>]>,
    _platform: core::marker::PhantomData<fn() -> P>,
}

impl<P: Platform> fmt::Debug for StackCaches<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackCaches")
            .field("cpus", &self.slots.len())
            .field("cached", &self.count())
            .finish()
    }
}

impl<P: Platform> StackCaches<P> {
    /// Empty caches for `nr_cpus` CPU slots.
    pub(crate) fn new(nr_cpus: usize) -> Self {
        Self {
            slots: (0..nr_cpus.max(1))
                .map(|_| CachePadded::new(core::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            _platform: core::marker::PhantomData,
        }
    }

    /// The calling CPU's words.
    fn mine(&self) -> &[AtomicU64; NR_CACHED_STACKS] {
        &self.slots[P::this_cpu() % self.slots.len()]
    }

    /// Take a cached stack of this CPU (its area start), if any.
    pub(crate) fn take(&self) -> Option<u64> {
        self.mine().iter().find_map(|w| {
            // Skip empty words without an RMW.
            if w.load(Ordering::Relaxed) == 0 {
                return None;
            }
            match w.swap(0, Ordering::AcqRel) {
                0 => None,
                s => Some(s),
            }
        })
    }

    /// Cache the stack at `start` on this CPU; `false` if both words are taken.
    pub(crate) fn put(&self, start: u64) -> bool {
        self.mine().iter().any(|w| {
            w.compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Empty every word of every CPU, handing each cached stack (its area start) to `f`.
    pub(crate) fn drain(&self, mut f: impl FnMut(u64)) {
        for w in self.slots.iter().flat_map(|s| s.iter()) {
            match w.swap(0, Ordering::AcqRel) {
                0 => {}
                s => f(s),
            }
        }
    }

    /// Stacks cached on every CPU (a snapshot).
    pub(crate) fn count(&self) -> usize {
        self.slots
            .iter()
            .flat_map(|s| s.iter())
            .filter(|w| w.load(Ordering::Relaxed) != 0)
            .count()
    }
}

#[cfg(all(test, feature = "loom"))]
mod loom_tests {
    //! The per-CPU stack cache's race: threads of one CPU slot taking and caching stacks at
    //! once (two threads may share a slot: a preempted thread, or more threads than CPUs).
    //! Every interleaving hands each stack to exactly one taker and loses none.

    use super::*;
    use loom::thread;
    use pagetable::platform::StdPlatform;
    use std::sync::Arc;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        if b.preemption_bound.is_none() {
            b.preemption_bound = Some(3);
        }
        b.check(f);
    }

    #[test]
    fn take_and_put_on_one_slot_lose_nothing() {
        model(|| {
            let c = Arc::new(StackCaches::<StdPlatform>::new(1));
            assert!(c.put(0x1000));
            let taker = {
                let c = Arc::clone(&c);
                thread::spawn(move || c.take())
            };
            let putter = {
                let c = Arc::clone(&c);
                thread::spawn(move || c.put(0x2000))
            };
            let mine = c.take();
            let theirs = taker.join().unwrap();
            // One word was free when the putter came, or became free: it always fits.
            assert!(putter.join().unwrap());
            let mut seen: Vec<u64> = [mine, theirs].into_iter().flatten().collect();
            while let Some(s) = c.take() {
                seen.push(s);
            }
            seen.sort_unstable();
            assert_eq!(seen, vec![0x1000, 0x2000], "each stack exactly once");
        });
    }

    #[test]
    fn two_puts_into_the_last_free_word() {
        model(|| {
            let c = Arc::new(StackCaches::<StdPlatform>::new(1));
            assert!(c.put(0x1000));
            let other = {
                let c = Arc::clone(&c);
                thread::spawn(move || c.put(0x2000))
            };
            let mine = c.put(0x3000);
            let theirs = other.join().unwrap();
            assert!(mine ^ theirs, "exactly one fits");
            assert_eq!(c.count(), NR_CACHED_STACKS);
        });
    }
}
