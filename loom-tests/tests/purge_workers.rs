//! Loom models of the purge workers (`PurgeMode::Background`): threads spawned by `Kva::new`
//! inside the model that run kicked purges, help split a purge's merge work across shards,
//! hand purged areas of pooled sizes back to their node as a ready list, and are shut down
//! and joined by `Kva`'s `Drop` at the end of every execution.
//!
//! Asserted, as in `purge_vs_alloc`: an allocation that can only be satisfied from lazily
//! freed space succeeds and is fresh (flushed after its lazy free), no two flushes overlap,
//! and after a final purge the accounting is exact and the range whole again. Loom also
//! checks that the workers always terminate (a lost wake-up or a purger waiting forever for
//! its helpers would deadlock the model).

#![cfg(feature = "loom")]

use std::sync::Arc;

use loom::thread;
use loom_tests::{
    BOUND_2_THREADS, BOUND_3_THREADS, StaleTlb, Tiny, alloc, assert_invariants, big_and_two_pages,
    check, free_lazy, pages, tiny_kva_with,
};
use pagetable::cpu;
use vmalloc::{Kva, PurgeMode};

/// `n` pages must be found and be fresh.
fn alloc_fresh(kva: &Kva, tlb: &StaleTlb, n: u64) -> u64 {
    let r = alloc(kva, n).unwrap_or_else(|e| {
        panic!("allocation failed although the lazy lists held the space: {e}")
    });
    tlb.assert_fresh(r, r + pages(n));
    r
}

/// After the race: purge, check the accounting with `live` (`n` pages) the only live area,
/// free it, check the range is whole.
fn settle(kva: &Kva, tlb: &StaleTlb, live: u64, n: u64) {
    kva.purge();
    assert_invariants(kva);
    let s = kva.stats();
    assert_eq!((s.used, s.nr_busy), (pages(n), 1), "{s:?}");
    assert_eq!(
        (s.pending, s.lazy_pages, s.merge_errors),
        (0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.free, s.total - pages(n), "{s:?}");
    assert_eq!(s.flushes, s.purges, "one flush per purge: {s:?}");
    let area = kva.remove(pagetable::VirtAddr::new_truncate(live)).unwrap();
    // SAFETY: a model of the KVA layer alone: nothing was ever mapped in the area.
    unsafe { kva.free_unused(area) };
    assert_invariants(kva);
    let s = kva.stats();
    assert_eq!((s.free, s.nr_free_areas), (s.total, s.nr_shards), "{s:?}");
    assert_eq!(tlb.stale(), 0, "a lazily freed page was never flushed");
}

/// One worker. A is freed lazily before the race (its kick wakes the worker); during the
/// race another thread frees B (kicking again) while the main thread allocates 2 pages, which
/// only lazily freed space can satisfy.
#[test]
fn background_purge_vs_alloc() {
    check("background_purge_vs_alloc", BOUND_3_THREADS, || {
        let shape = Tiny {
            pages: 4,
            shards: 1,
            lazy_max_pages: 2,
            pcpu_cache: false,
        };
        let (kva, tlb) = tiny_kva_with(shape, PurgeMode::Background, 1);
        let a = alloc(&kva, 2).unwrap();
        let b = alloc(&kva, 2).unwrap();
        free_lazy(&kva, &tlb, a);

        let freer = {
            let (kva, tlb) = (Arc::clone(&kva), Arc::clone(&tlb));
            thread::spawn(move || free_lazy(&kva, &tlb, b))
        };
        let r = alloc_fresh(&kva, &tlb, 2);
        freer.join().unwrap();
        assert!(r == a || r == b, "allocated {r:#x}, neither freed area");
        settle(&kva, &tlb, r, 2);
    });
}

/// Two shards, two workers, every free kicks: A (shard 0) and B (shard 1) are freed lazily
/// before the race, so a worker's purge may take both lists and split the merge with the
/// other worker, while the main thread allocates the whole range (carved across the shard
/// boundary, so it needs both areas merged back and flushed).
#[test]
fn background_split_purge_vs_whole_range_alloc() {
    check(
        "background_split_purge_vs_whole_range_alloc",
        BOUND_3_THREADS,
        || {
            let shape = Tiny {
                pages: 4,
                shards: 2,
                lazy_max_pages: 1,
                pcpu_cache: false,
            };
            let (kva, tlb) = tiny_kva_with(shape, PurgeMode::Background, 2);
            let a = alloc(&kva, 2).unwrap();
            let b = alloc(&kva, 2).unwrap();
            free_lazy(&kva, &tlb, a);
            free_lazy(&kva, &tlb, b);

            let r = alloc_fresh(&kva, &tlb, 4);
            assert_eq!(r, a.min(b));
            settle(&kva, &tlb, r, 4);
        },
    );
}

/// A kick while a kicked purge runs joins it (sets AGAIN, wakes nobody) instead of posting a
/// request: the join must never lose the area it kicked for. A is freed lazily (its kick wakes
/// the one worker), then B, whose kick races the worker: it may join the worker's running
/// purge, post a new request, or find the request still pending. The main thread then waits
/// (yielding, with no purge of its own) until no freed page is stale: a lost kick would leave
/// B unflushed forever (loom reports the endless wait). Afterwards the accounting is exact.
#[test]
fn background_kick_joins_running_purge() {
    check(
        "background_kick_joins_running_purge",
        BOUND_2_THREADS,
        || {
            let shape = Tiny {
                pages: 8,
                shards: 1,
                lazy_max_pages: 1,
                pcpu_cache: false,
            };
            let (kva, tlb) = tiny_kva_with(shape, PurgeMode::Background, 1);
            let a = alloc(&kva, 3).unwrap();
            let b = alloc(&kva, 3).unwrap();
            free_lazy(&kva, &tlb, a);
            free_lazy(&kva, &tlb, b);
            while tlb.stale() != 0 {
                thread::yield_now();
            }
            kva.purge();
            assert_invariants(&kva);
            let s = kva.stats();
            assert_eq!((s.used, s.free, s.lazy_pages), (0, s.total, 0), "{s:?}");
        },
    );
}

/// The worker's kicked purge hands purged 1-page areas back to the node as a ready list
/// while another thread allocates pages one by one from that node: the ready list is sorted
/// in by a pool miss, or drained by the allocation-failure reclaim, whichever comes first.
/// Setup ([`big_and_two_pages`]): one big area and two 1-page areas leave 2 free pages in the
/// tree and nothing pooled. Both
/// small areas are freed lazily before the race (2 pages: past the threshold of 1, so the
/// second kick wakes the worker); then, while the worker purges, another thread allocates 4
/// pages one at a time: 2 from the tree (a refill), the other 2 only from the freed pages,
/// which it must get flushed. Afterwards the accounting is exact.
#[test]
fn background_hand_back_vs_alloc() {
    check("background_hand_back_vs_alloc", BOUND_3_THREADS, || {
        let shape = Tiny {
            pages: 128,
            shards: 1,
            lazy_max_pages: 1,
            pcpu_cache: true,
        };
        let (kva, tlb) = tiny_kva_with(shape, PurgeMode::Background, 1);
        let (big, s1, s2) = big_and_two_pages(&kva);

        free_lazy(&kva, &tlb, s1);
        free_lazy(&kva, &tlb, s2);
        let taker = {
            let (kva, tlb) = (Arc::clone(&kva), Arc::clone(&tlb));
            thread::spawn(move || {
                cpu::set_this_cpu(1);
                (0..4)
                    .map(|_| alloc_fresh(&kva, &tlb, 1))
                    .collect::<Vec<_>>()
            })
        };
        let got = taker.join().unwrap();

        for x in [s1, s2] {
            assert!(
                got.contains(&x),
                "freed page {x:#x} not handed out: {got:x?}"
            );
        }
        for (i, &r) in got.iter().enumerate() {
            assert!(!got[..i].contains(&r), "{r:#x} handed out twice");
            assert!(!(big..big + pages(124)).contains(&r), "{r:#x} is live");
        }
        assert_invariants(&kva);
        let s = kva.stats();
        assert_eq!((s.used, s.free), (pages(128), 0), "{s:?}");
        for x in got {
            let area = kva.remove(pagetable::VirtAddr::new_truncate(x)).unwrap();
            // SAFETY: a model of the KVA layer alone: nothing was ever mapped in the area.
            unsafe { kva.free_unused(area) };
        }
        settle(&kva, &tlb, big, 124);
    });
}
