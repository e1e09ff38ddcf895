//! Loom model of `Kva::purge` (`purge_vmap_area_lazy`) racing a drain of the deferred frees
//! (`vfree_atomic`'s list) on another thread: a purge worker's drain, here a plain thread
//! calling `drain_deferred`.
//!
//! The drain takes the deferred lists, then runs the frees with no lock held. Asserted: when
//! `purge()` returns, every deferred free queued before it has run and been purged: the area
//! is no longer live, nothing is lazy or pending, and the allocator's invariants hold. Found
//! by the sanitizer runs (docs/TESTING.md, "Sanitizers"): before the fix a purge that found
//! the lists empty because the other thread had just taken them returned at once.

#![cfg(feature = "loom")]

use loom::thread;
use loom_tests::{BOUND_2_THREADS, Tiny, alloc, assert_invariants, check, tiny_kva};

#[test]
fn purge_waits_for_a_drain_in_flight() {
    check("purge_waits_for_a_drain_in_flight", BOUND_2_THREADS, || {
        let shape = Tiny {
            pages: 4,
            shards: 1,
            lazy_max_pages: 64,
            pcpu_cache: false,
        };
        let (kva, _tlb) = tiny_kva(shape);
        let a = alloc(&kva, 2).unwrap();
        // `vfree_atomic(a)`: queued; the default handler removes it and frees it lazily.
        kva.defer(pagetable::VirtAddr::new_truncate(a));

        let drainer = {
            let kva = std::sync::Arc::clone(&kva);
            thread::spawn(move || kva.drain_deferred())
        };
        kva.purge();
        assert!(
            kva.find(pagetable::VirtAddr::new_truncate(a)).is_none(),
            "purge returned before the deferred free of {a:#x} ran"
        );
        let s = kva.stats();
        assert_eq!(
            (s.lazy_pages, s.pending),
            (0, 0),
            "purge returned before purging the deferred free: {s:?}"
        );
        let ran = drainer.join().unwrap();
        assert!(ran <= 1);
        assert_invariants(&kva);
    });
}
