//! Loom model of the purge's `cond_resched_lock`: while merging a shard's purged areas into
//! its free tree, the purger offers the free-tree lock to waiters after each merged run
//! (`MutexGuard::bump`) as long as the backlog is below `2 * lazy_max_pages`, and an
//! allocation waiting for that lock gets in. Under loom `bump` really unlocks, yields and
//! relocks (the crate's sync facade), so loom explores the allocation running in those windows.
//!
//! Race: a `Kva` of `2 * (RESCHED_EVERY + 1)` 1-page areas (one shard, no per-CPU caches,
//! synchronous purges, a threshold no free crosses). The even ones are freed lazily in
//! ascending order: `RESCHED_EVERY + 1` runs that cannot coalesce (the odd pages stay live),
//! so the merge also passes one re-read of the backlog (every [`RESCHED_EVERY`] runs). A
//! thread calls `purge()`, which flushes, then merges the runs (newest first), bumping the
//! free-tree lock after each; the main thread allocates one page. If it searches the tree
//! while the purger holds the lock, it waits, takes the lock in a bump window and gets the
//! lowest page merged so far (not the range's first page, which the last run brings back);
//! otherwise it finds no space, waits for the purge lock, and gets the first page.
//!
//! Asserted: the allocation succeeds (the space was lazy before it started) with a page that
//! was freed lazily, fresh (its flush completed before the merge that made it allocatable);
//! after joining, `check_invariants`, exact `used`, nothing pending or lazy, one flush per
//! purge, no merge error, every lazily freed page flushed but the one handed out again; once
//! everything is freed the range is one free area. And at least one execution allocated in
//! the bump window (a page other than the first): with the old `bump`, a mere yield under
//! loom, no execution does and this model fails.

#![cfg(feature = "loom")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use loom::thread;
use loom_tests::{
    BASE, BOUND_2_THREADS, TRACKED_PAGES, Tiny, alloc, assert_invariants, builder, check_with,
    free_lazy, pages, tiny_kva,
};
use vmalloc::RESCHED_EVERY;

/// Lazily freed areas: one run more than a backlog re-read interval.
const LAZY: u64 = RESCHED_EVERY as u64 + 1;
const _: () = assert!(2 * LAZY <= TRACKED_PAGES, "StaleTlb tracks 128 pages");
/// Scheduling points allowed per execution (the setup alone makes about a hundred
/// allocations and frees, each a few lock operations and atomic accesses).
const MAX_BRANCHES: usize = 20_000;
/// Executions in which the allocation was served in the bump window (a plain std atomic:
/// counted from outside the model).
static WINDOW_HITS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn alloc_in_merge_resched_window() {
    check_with(
        "alloc_in_merge_resched_window",
        BOUND_2_THREADS,
        Some(MAX_BRANCHES),
        || {
            let shape = Tiny {
                pages: 2 * LAZY,
                shards: 1,
                lazy_max_pages: 4 * LAZY as usize,
                pcpu_cache: false,
            };
            let (kva, tlb) = tiny_kva(shape);
            let areas: Vec<u64> = (0..2 * LAZY).map(|_| alloc(&kva, 1).unwrap()).collect();
            for (i, &a) in areas.iter().enumerate() {
                assert_eq!(a, BASE + pages(i as u64), "setup: lowest fit in order");
            }
            let lazy: Vec<u64> = areas.iter().copied().step_by(2).collect();
            let live: Vec<u64> = areas.iter().copied().skip(1).step_by(2).collect();
            for &a in &lazy {
                free_lazy(&kva, &tlb, a);
            }
            let s = kva.stats();
            assert_eq!(
                (s.free, s.lazy_pages as u64, s.purges),
                (0, LAZY, 0),
                "setup: {s:?}"
            );

            let purger = {
                let kva = Arc::clone(&kva);
                thread::spawn(move || {
                    kva.purge();
                })
            };
            let r = alloc(&kva, 1).unwrap_or_else(|e| {
                panic!("allocation failed although {LAZY} pages were lazy: {e}")
            });
            tlb.assert_fresh(r, r + pages(1));
            purger.join().unwrap();
            assert!(lazy.contains(&r), "allocated {r:#x}, not a freed page");
            if r != BASE {
                WINDOW_HITS.fetch_add(1, Ordering::Relaxed);
            }

            assert_invariants(&kva);
            let s = kva.stats();
            assert_eq!(s.used, pages(LAZY + 1), "{s:?}");
            assert_eq!(
                (s.pending, s.lazy_pages, s.merge_errors),
                (0, 0, 0),
                "{s:?}"
            );
            assert_eq!(s.free, s.total - pages(LAZY + 1), "{s:?}");
            assert_eq!(s.flushes, s.purges, "one flush per purge: {s:?}");
            assert_eq!(
                tlb.stale() & !(1u128 << ((r - BASE) / pages(1))),
                0,
                "a lazily freed page was never flushed"
            );
            for x in live.into_iter().chain([r]) {
                let area = kva.remove(pagetable::VirtAddr::new_truncate(x)).unwrap();
                // SAFETY: a model of the KVA layer alone: nothing was ever mapped in the area.
                unsafe { kva.free_unused(area) };
            }
            assert_invariants(&kva);
            let s = kva.stats();
            assert_eq!(
                (s.free, s.used, s.nr_free_areas),
                (s.total, 0, 1),
                "space lost: {s:?}"
            );
        },
    );
    // Bound 0 never lets the purger run before the allocation has purged for itself.
    if builder(BOUND_2_THREADS).preemption_bound.unwrap_or(1) >= 1 {
        assert!(
            WINDOW_HITS.load(Ordering::Relaxed) > 0,
            "no execution allocated in the bump window of the merge: is the window explored?"
        );
    }
    println!(
        "alloc_in_merge_resched_window: {} executions allocated in the bump window",
        WINDOW_HITS.load(Ordering::Relaxed)
    );
}
