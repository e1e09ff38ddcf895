//! Loom models of purges racing purges: `free_lazy` calls that each cross the lazy threshold
//! and kick a purge, on a tiny synchronous-purge `Kva` (one shard, no per-CPU caches).
//!
//! A kick goes through the atomic `kick_state` word (`try_purge`): a kicker that finds no
//! kick purge running sets RUNNING and purges (waiting for the purge lock); one that finds
//! RUNNING sets AGAIN and returns at once; the purger, when done, goes idle unless AGAIN is
//! set, in which case it clears it and purges one more round. So a kick never waits for
//! another kick, and none is lost.
//!
//! Asserted:
//!
//! * no two TLB flushes overlap in time (the [`StaleTlb`] hook panics otherwise): one purger
//!   at a time;
//! * after joining, before any further purge: nothing is left on the lazy list
//!   (`lazy_pages == 0`, nothing pending, every area purged exactly once): every free crossed
//!   the threshold, so each was purged by its own kick or by the round its AGAIN asked for;
//!   `check_invariants` holds, one flush per purge;
//! * after a final purge: still nothing lazy, every freed page was flushed, no merge error,
//!   and once the last live area is freed the range is one free area again (no area lost,
//!   none merged twice).
//!
//! Catches: a purger that goes idle after one round whatever `kick_state` says (the AGAIN bit
//! dropped): a kick that came while it ran is lost, and its area stays listed
//! (`lazy_pages == 2` after joining).

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
            // Each free leaves 2 pages waiting: above the threshold (Linux's
            // `nr_lazy > lazy_max_pages()`), so every free kicks.
            lazy_max_pages: 1,
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

        // Quiescent, and every free kicked: each area was purged by its own kick or by the
        // extra round its AGAIN bit asked of the purger running at the time.
        assert_invariants(&kva);
        let s = kva.stats();
        assert!(
            s.purges >= 1,
            "nobody purged although every free crossed the threshold"
        );
        assert_eq!(
            s.lazy_pages, 0,
            "a kick was lost: lazy pages left after every free crossed the threshold: {s:?}"
        );
        assert_eq!(s.purged_areas, n, "each area purged exactly once: {s:?}");
        assert_eq!(s.pending, 0, "{s:?}");
        assert_eq!(s.used, pages(2), "{s:?}");
        assert_eq!(s.free, s.total - pages(2), "{s:?}");
        assert_eq!(s.flushes, s.purges, "one flush per purge: {s:?}");
        // A free whose area a running purge already took sees no backlog and does not kick.
        assert!((1..=n).contains(&s.kicks), "{s:?}");

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

        let area = kva.remove(pagetable::VirtAddr::new_truncate(keep)).unwrap();
        // SAFETY: a model of the KVA layer alone: nothing was ever mapped in the area.
        unsafe { kva.free_unused(area) };
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
