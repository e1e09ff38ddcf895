//! Loom models of the per-CPU caches of small free areas (Linux 6.9's node pools) against
//! purges, on `Kva`s of one shard with caches on and synchronous purges. Under loom there are
//! two CPU slots, both homed on the one shard, and a purge run with `to_caches` (an explicit
//! `purge()` or a kick past the threshold) pushes small purged areas into the cache of
//! `cpus[purges % 2]`: CPU 1 for the first purge.
//!
//! * `pcpu_refill_vs_purge_to_caches`: a refill of CPU 1's cache against a purge that pushes
//!   into that same cache.
//! * `reclaim_vs_explicit_purge_into_another_cpus_cache`,
//!   `reclaim_vs_kicked_purge_of_another_cpus_free`: an allocation on CPU 0 that finds no
//!   space while a purge holding the purge lock is about to push the only free space into
//!   CPU 1's cache. The allocation must still succeed.
//! * `reclaim_vs_batch_refill`: an allocation's reclaim against a refill on the other CPU
//!   that would carve a batch (one chunk for itself, one for its cache) out of the space the
//!   reclaim just made.
//!
//! Asserted by every model: every allocation succeeds for which space was free or lazily
//! freed (in the trees, the caches, the lazy batches) before the race; what it returns is
//! fresh (a lazily freed page is handed out only after its flush), distinct from the other
//! allocations and not live; no two flushes overlap; after joining, `check_invariants` (each
//! free byte in exactly one of tree, cache, lazy batch), exact `used` and `free + used +
//! pending == total`; after a purge and freeing everything, `free == total` with nothing
//! pending or lazy, no merge error, and every lazily freed page flushed.

#![cfg(feature = "loom")]

use std::sync::Arc;

use loom::thread;
use loom_tests::{
    BOUND_2_THREADS, StaleTlb, Tiny, alloc, assert_invariants, big_and_two_pages, check, free_lazy,
    pages, tiny_kva,
};
use pagetable::cpu;
use vmalloc::Kva;

/// With 128 pages a refill of the 1-page class carves a batch of 2 chunks (one for the
/// caller, one for the CPU's cache). Setup (CPU 0): one big area, then two 1-page areas
/// through CPU 0's cache, leaving 2 free pages in the tree and no cached chunk. Then CPU 0
/// frees one small area lazily (kicking a purge that pushes it into CPU 1's cache) while CPU
/// 1 allocates two pages one by one (refilling its cache from the tree, or popping what the
/// purge pushed). Both allocations must succeed (3 free pages exist counting the lazy one).
/// The refilled cache is the allocating CPU's own here; the models below are those where it
/// is not.
#[test]
fn pcpu_refill_vs_purge_to_caches() {
    check("pcpu_refill_vs_purge_to_caches", BOUND_2_THREADS, || {
        let shape = Tiny {
            pages: 128,
            shards: 1,
            lazy_max_pages: 1,
            pcpu_cache: true,
        };
        let (kva, tlb) = tiny_kva(shape);
        let (big, s1, s2) = big_and_two_pages(&kva);

        let taker = {
            let (kva, tlb) = (Arc::clone(&kva), Arc::clone(&tlb));
            thread::spawn(move || {
                cpu::set_this_cpu(1);
                let mut got = Vec::new();
                for _ in 0..2 {
                    let r = alloc(&kva, 1).unwrap_or_else(|e| {
                        panic!("1-page allocation failed with 3 pages free or lazy: {e}")
                    });
                    tlb.assert_fresh(r, r + pages(1));
                    got.push(r);
                }
                got
            })
        };
        free_lazy(&kva, &tlb, s1);
        let got = taker.join().unwrap();

        assert_ne!(got[0], got[1], "the same page handed out twice");
        for &r in &got {
            assert!(
                r != s2 && !(big..big + pages(124)).contains(&r),
                "{r:#x} is live"
            );
        }
        assert_invariants(&kva);
        let s = kva.stats();
        assert_eq!(s.used, pages(124 + 1 + 2), "{s:?}");
        assert_eq!(s.free + s.used + s.pending, s.total, "{s:?}");

        kva.purge();
        for x in [big, s2, got[0], got[1]] {
            let area = kva.remove(pagetable::VirtAddr::new_truncate(x)).unwrap();
            // SAFETY: a model of the KVA layer alone: nothing was ever mapped in the area.
            unsafe { kva.free_unused(area) };
        }
        assert_invariants(&kva);
        let s = kva.stats();
        assert_eq!(
            (s.free, s.used, s.pending, s.lazy_pages),
            (s.total, 0, 0, 0),
            "{s:?}"
        );
        assert_eq!(s.merge_errors, 0, "{s:?}");
        assert_eq!(tlb.stale(), 0, "a lazily freed page was never flushed");
    });
}

/// Allocate one page on the calling CPU: it must succeed (the caller says why) and be fresh.
fn alloc_page_fresh(kva: &Kva, tlb: &StaleTlb, why: &str) -> u64 {
    let r = alloc(kva, 1).unwrap_or_else(|e| {
        let s = kva.stats();
        panic!(
            "1-page allocation on CPU {} failed although {why}: {e} (free {} bytes, of which \
             cached {}, lazy {} pages): {s:?}",
            cpu::this_cpu(),
            s.free,
            s.cached,
            s.lazy_pages
        )
    });
    tlb.assert_fresh(r, r + pages(1));
    r
}

/// The checks after joining: `live` are every live area, `used` pages in all.
fn settle(kva: &Kva, tlb: &StaleTlb, live: &[u64], used: u64) {
    assert_invariants(kva);
    let s = kva.stats();
    assert_eq!(s.used, pages(used), "{s:?}");
    assert_eq!(s.free + s.used + s.pending, s.total, "{s:?}");

    kva.purge();
    for &x in live {
        let area = kva
            .remove(pagetable::VirtAddr::new_truncate(x))
            .expect("a live area");
        // SAFETY: a model of the KVA layer alone: nothing was ever mapped in the area.
        unsafe { kva.free_unused(area) };
    }
    assert_invariants(kva);
    let s = kva.stats();
    assert_eq!(
        (s.free, s.used, s.pending, s.lazy_pages),
        (s.total, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.merge_errors, 0, "{s:?}");
    assert_eq!(tlb.stale(), 0, "a lazily freed page was never flushed");
}

/// The reproduction of "an allocation fails with the space in another CPU's cache".
///
/// Race: 64 pages (1-page refills carve one chunk), every page used except one 1-page area
/// that CPU 0 freed lazily (under the threshold: no kick). A thread calls `purge()` (which
/// pushes small purged areas into `cpus[purges % 2]`'s cache: CPU 1's) while CPU 0 allocates
/// one page.
///
/// Asserted: the allocation succeeds (and gets that page, fresh). The space was on the lazy
/// list before the allocation started, and an allocation that finds no space must reclaim
/// everything (every cache, every lazy area) before it may fail.
///
/// Catches: a reclaim that drains the caches and then waits for the purge lock (the code
/// before the fix): the purge holding the lock pushes the page into CPU 1's cache after the
/// drain, the reclaim's own purge finds nothing, and the retry (CPU 0's cache, the trees)
/// fails with `NoSpace` while `stats.free == stats.cached == 4096`.
#[test]
fn reclaim_vs_explicit_purge_into_another_cpus_cache() {
    check(
        "reclaim_vs_explicit_purge_into_another_cpus_cache",
        BOUND_2_THREADS,
        || {
            let shape = Tiny {
                pages: 64,
                shards: 1,
                lazy_max_pages: 8,
                pcpu_cache: true,
            };
            let (kva, tlb) = tiny_kva(shape);
            cpu::set_this_cpu(0);
            let big = alloc(&kva, 63).unwrap();
            let small = alloc(&kva, 1).unwrap();
            free_lazy(&kva, &tlb, small);
            let s = kva.stats();
            assert_eq!(
                (s.free, s.cached, s.lazy_pages, s.purges),
                (0, 0, 1, 0),
                "setup: {s:?}"
            );

            let purger = {
                let kva = Arc::clone(&kva);
                thread::spawn(move || {
                    cpu::set_this_cpu(1);
                    kva.purge();
                })
            };
            let r = alloc_page_fresh(&kva, &tlb, "its own lazily freed page was purgeable");
            purger.join().unwrap();
            assert_eq!(r, small, "allocated {r:#x}, not the one free page");
            settle(&kva, &tlb, &[big, r], 64);
        },
    );
}

/// As [`reclaim_vs_explicit_purge_into_another_cpus_cache`], with the page freed on another
/// CPU than the allocator and the purge kicked by a free.
///
/// Race: 64 pages, threshold 2 pages; every page used except A (1 page), freed lazily on CPU
/// 1 before the race (1 page: no kick). A thread on CPU 1 frees B (1 page) lazily, which
/// crosses the threshold and kicks a purge (`try_purge`: `kick_state` idle -> RUNNING, the
/// purge pushes A and B into CPU 1's cache), while CPU 0 allocates one page.
///
/// Asserted: the allocation succeeds (A was lazy before it started), with A or B, fresh.
///
/// Catches: as the explicit model, through the kick path: a reclaim that waits for the
/// purge lock after draining the caches sees the kicked purge move A and B into CPU 1's
/// cache and fails with `NoSpace` (`stats.free == stats.cached == 8192`).
#[test]
fn reclaim_vs_kicked_purge_of_another_cpus_free() {
    check(
        "reclaim_vs_kicked_purge_of_another_cpus_free",
        BOUND_2_THREADS,
        || {
            let shape = Tiny {
                pages: 64,
                shards: 1,
                lazy_max_pages: 2,
                pcpu_cache: true,
            };
            let (kva, tlb) = tiny_kva(shape);
            cpu::set_this_cpu(0);
            let big = alloc(&kva, 62).unwrap();
            let a = alloc(&kva, 1).unwrap();
            let b = alloc(&kva, 1).unwrap();
            cpu::set_this_cpu(1);
            free_lazy(&kva, &tlb, a);
            cpu::set_this_cpu(0);
            let s = kva.stats();
            assert_eq!(
                (s.free, s.cached, s.lazy_pages, s.kicks),
                (0, 0, 1, 0),
                "setup: {s:?}"
            );

            let freer = {
                let (kva, tlb) = (Arc::clone(&kva), Arc::clone(&tlb));
                thread::spawn(move || {
                    cpu::set_this_cpu(1);
                    free_lazy(&kva, &tlb, b);
                })
            };
            let r = alloc_page_fresh(&kva, &tlb, "CPU 1 had freed a page lazily before");
            freer.join().unwrap();
            assert!(r == a || r == b, "allocated {r:#x}, neither freed page");
            settle(&kva, &tlb, &[big, r], 63);
        },
    );
}

/// An allocation's reclaim against a batch refill on the other CPU.
///
/// Race: 128 pages (a 1-page refill carves a batch of 2 chunks: one for the caller, one for
/// the CPU's cache). Every page used except A and B (adjacent, 1 page each), freed lazily
/// on CPU 0 (no kick). CPU 0 and CPU 1 each allocate one page.
///
/// Asserted: both succeed (2 pages were lazy before either started), distinct, fresh.
///
/// Catches: a refill that carves a whole batch out of the space a reclaim in progress just
/// made. CPU 0 finds no space and reclaims (drains the caches, purges A and B into the tree
/// as one 2-page run); CPU 1, finding its cache empty, refills it with a batch of 2 from
/// that run (one page for itself, one cached on CPU 1); CPU 0's retry finds nothing and
/// fails with `NoSpace` while a page sits in CPU 1's cache (the code before the fix, where
/// refills always carve a batch and the reclaim drains the caches only before its purge).
#[test]
fn reclaim_vs_batch_refill() {
    check("reclaim_vs_batch_refill", BOUND_2_THREADS, || {
        let shape = Tiny {
            pages: 128,
            shards: 1,
            lazy_max_pages: 8,
            pcpu_cache: true,
        };
        let (kva, tlb) = tiny_kva(shape);
        cpu::set_this_cpu(0);
        let big = alloc(&kva, 126).unwrap();
        // CPU 0's refill carves [126, 128): A is returned, B cached, then popped.
        let a = alloc(&kva, 1).unwrap();
        let b = alloc(&kva, 1).unwrap();
        assert_eq!(b, a + pages(1), "setup: A and B adjacent");
        free_lazy(&kva, &tlb, a);
        free_lazy(&kva, &tlb, b);
        let s = kva.stats();
        assert_eq!(
            (s.free, s.cached, s.lazy_pages, s.purges),
            (0, 0, 2, 0),
            "setup: {s:?}"
        );

        let other = {
            let (kva, tlb) = (Arc::clone(&kva), Arc::clone(&tlb));
            thread::spawn(move || {
                cpu::set_this_cpu(1);
                alloc_page_fresh(&kva, &tlb, "2 pages were lazy for 2 allocations")
            })
        };
        let mine = alloc_page_fresh(&kva, &tlb, "2 pages were lazy for 2 allocations");
        let theirs = other.join().unwrap();
        assert_ne!(mine, theirs, "the same page handed out twice");
        for r in [mine, theirs] {
            assert!(r == a || r == b, "allocated {r:#x}, neither freed page");
        }
        settle(&kva, &tlb, &[big, mine, theirs], 128);
    });
}
