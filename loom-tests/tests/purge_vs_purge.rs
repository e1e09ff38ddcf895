//! Loom models of purges racing purges: `free_lazy` calls that each cross the lazy threshold
//! and kick a purge (`try_lock` of the purge lock: a kick that finds a purge in progress
//! skips it), on a tiny synchronous-purge `Kva`.
//!
//! Asserted:
//!
//! * no two TLB flushes overlap in time (the [`StaleTlb`] hook panics otherwise): one purger
//!   at a time;
//! * after joining, before any further purge: every area is either purged or still on the lazy
//!   list, and the lazy counter says exactly how much is listed (`lazy_pages`, `pending`);
//!   `check_invariants` holds;
//! * after a final purge: the lazy counter is back to zero, every freed area was purged
//!   exactly once (`purged_areas`), one flush per purge, every freed page was flushed, no
//!   merge error, and once the last live area is freed the range is one free area again
//!   (no area lost, none merged twice).

#![cfg(feature = "loom")]

use std::sync::Arc;

use loom::thread;
use loom_tests::{
    BOUND_2_THREADS, Tiny, alloc, assert_invariants, check, free_lazy, pages, tiny_kva,
};

/// `nr_freers` threads (the main thread among them) each free one of `nr_freers` 2-page areas
/// lazily, each crossing the threshold; a last 2-page area stays live throughout.
fn racing_kicks(name: &str, nr_freers: usize, bound: usize) {
    check(name, bound, move || {
        let n = nr_freers as u64;
        let shape = Tiny {
            pages: 2 * (n + 1),
            shards: 1,
            lazy_max_pages: 2,
            pcpu_cache: false,
        };
        let (kva, tlb) = tiny_kva(shape);
        let areas: Vec<u64> = (0..=n).map(|_| alloc(&kva, 2).unwrap()).collect();
        let keep = areas[nr_freers];

        let threads: Vec<_> = areas[1..nr_freers]
            .iter()
            .map(|&x| {
                let (kva, tlb) = (Arc::clone(&kva), Arc::clone(&tlb));
                thread::spawn(move || free_lazy(&kva, &tlb, x))
            })
            .collect();
        free_lazy(&kva, &tlb, areas[0]);
        for t in threads {
            t.join().unwrap();
        }

        // Quiescent: what was not purged is still listed, and counted exactly.
        assert_invariants(&kva);
        let s = kva.stats();
        assert!(
            s.purges >= 1,
            "nobody purged although every free crossed the threshold"
        );
        assert!(s.purged_areas <= n, "an area purged twice: {s:?}");
        let listed = n - s.purged_areas;
        assert_eq!(
            s.lazy_pages as u64,
            2 * listed,
            "lazy counter vs list: {s:?}"
        );
        assert_eq!(s.pending, pages(2 * listed), "{s:?}");
        assert_eq!(s.used, pages(2), "{s:?}");
        assert_eq!(s.free, s.total - pages(2 + 2 * listed), "{s:?}");
        assert_eq!(s.flushes, s.purges, "one flush per purge: {s:?}");

        kva.purge();
        assert_invariants(&kva);
        let s = kva.stats();
        assert_eq!(
            (s.lazy_pages, s.pending, s.merge_errors),
            (0, 0, 0),
            "{s:?}"
        );
        assert_eq!(
            s.purged_areas, n,
            "each freed area purged exactly once: {s:?}"
        );
        assert_eq!(s.flushes, s.purges, "{s:?}");
        assert_eq!(tlb.log().len() as u64, s.flushes, "{s:?}");
        assert_eq!(tlb.stale(), 0, "a lazily freed page was never flushed");
        assert_eq!(s.free, s.total - pages(2), "{s:?}");

        let area = kva.remove(keep).unwrap();
        kva.free_unused(area);
        assert_invariants(&kva);
        let s = kva.stats();
        assert_eq!(
            (s.free, s.used, s.nr_free_areas),
            (s.total, 0, 1),
            "space lost: {s:?}"
        );
    });
}

/// Two vfree-kicked purges racing.
#[test]
fn two_kicked_purges() {
    racing_kicks("two_kicked_purges", 2, BOUND_2_THREADS);
}

/// Three vfree-kicked purges racing (two spawned threads and the main thread). Bound 1: at
/// bound 2 loom explores about 69,000 executions (4-7 minutes), most of the CI budget, for
/// what the two-thread model already checks at bound 3; run it deeper with
/// `LOOM_MAX_PREEMPTIONS=2`.
#[test]
fn three_kicked_purges() {
    racing_kicks("three_kicked_purges", 3, 1);
}
