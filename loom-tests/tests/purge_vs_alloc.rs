//! Loom models of the race the whole design is about: a lazy purge against an allocation that
//! can only be satisfied from the space being purged.
//!
//! Every model runs a 4-page `Kva` (one shard, no per-CPU caches, synchronous purges) whose
//! only free space, when the race starts, sits on the lazy list. The [`StaleTlb`] hook marks a
//! range stale when the model frees it lazily and fresh when a flush covers it. Asserted:
//!
//! * the allocation succeeds: with space on the lazy list, "no space" must purge (waiting for
//!   a purge already in progress) and retry;
//! * the range it returns is fresh: a flush covering its lazy free completed before it was
//!   handed out (never reused while a CPU may hold a stale translation);
//! * no two flushes overlap (one purger at a time);
//! * after joining: `check_invariants`, exact occupancy (`used`, `free`, `pending`,
//!   `lazy_pages`), one flush per purge, no merge error, and after freeing the survivor the
//!   range is one free area per shard again (nothing lost, nothing merged twice).

#![cfg(feature = "loom")]

use std::sync::Arc;

use loom::thread;
use loom_tests::{
    BOUND_2_THREADS, BOUND_3_THREADS, StaleTlb, Tiny, alloc, assert_invariants, check, free_lazy,
    pages, tiny_kva,
};
use vmalloc::Kva;

const RANGE: Tiny = Tiny {
    pages: 4,
    shards: 1,
    lazy_max_pages: 3,
    pcpu_cache: false,
};

/// The allocating side: `n` pages must be found, and must be fresh when handed out.
fn alloc_fresh(kva: &Kva, tlb: &StaleTlb, n: u64) -> u64 {
    let r = alloc(kva, n)
        .unwrap_or_else(|e| panic!("allocation failed although the lazy list held the space: {e}"));
    tlb.assert_fresh(r, r + pages(n));
    r
}

/// The checks after joining: `live` is the one live area of `n` pages.
fn settle(kva: &Kva, tlb: &StaleTlb, live: u64, n: u64) {
    assert_invariants(kva);
    kva.purge();
    assert_invariants(kva);
    let s = kva.stats();
    assert_eq!(s.used, pages(n), "{s:?}");
    assert_eq!(s.nr_busy, 1, "{s:?}");
    assert_eq!(s.free, s.total - pages(n), "{s:?}");
    assert_eq!(
        (s.pending, s.lazy_pages, s.merge_errors),
        (0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.flushes, s.purges, "one flush per purge: {s:?}");
    assert_eq!(
        s.flushes,
        tlb.log().len() as u64,
        "{s:?} vs flushes {:?}",
        tlb.log()
    );
    // Everything freed lazily has been flushed by now, except what is live again.
    assert_eq!(
        tlb.stale() & !mask_of(live, n),
        0,
        "a purged range was never flushed"
    );
    let area = kva
        .remove(pagetable::VirtAddr::new_truncate(live))
        .expect("the survivor is live");
    // SAFETY: a model of the KVA layer alone: nothing was ever mapped in the area.
    unsafe { kva.free_unused(area) };
    assert_invariants(kva);
    let s = kva.stats();
    // Fully coalesced: one free area per shard (each shard has its own tree).
    assert_eq!((s.free, s.used), (s.total, 0), "space lost: {s:?}");
    assert_eq!(
        s.nr_free_areas, s.nr_shards,
        "free space not coalesced: {s:?}"
    );
}

fn mask_of(start: u64, n: u64) -> u128 {
    let first = (start - loom_tests::BASE) / pages(1);
    ((1u128 << n) - 1) << first
}

/// The range is full (A, B: 2 pages each) and A is already on the lazy list (under the
/// threshold). One thread frees B lazily, which crosses the threshold and kicks a purge
/// (`try_purge`: it becomes the kick purger through `kick_state` and waits for the purge
/// lock, which the allocation's reclaim may hold); the other allocates 2 pages.
fn kicked_purge_vs_alloc(name: &str, shape: Tiny) {
    check(name, BOUND_2_THREADS, move || {
        let (kva, tlb) = tiny_kva(shape);
        let a = alloc(&kva, 2).unwrap();
        let b = alloc(&kva, 2).unwrap();
        free_lazy(&kva, &tlb, a);
        assert_eq!(
            kva.stats().purges,
            0,
            "2 lazy pages must not cross a threshold of 3"
        );

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

/// Both areas are on the lazy list; one thread purges explicitly while the other needs the
/// whole range: it only fits once BOTH areas are merged back, so an allocation that finds the
/// purge in progress must wait for it (not skip it) and retry.
fn explicit_purge_vs_whole_range_alloc(name: &str, shape: Tiny) {
    check(name, BOUND_2_THREADS, move || {
        let (kva, tlb) = tiny_kva(Tiny {
            lazy_max_pages: 8,
            ..shape
        });
        let a = alloc(&kva, 2).unwrap();
        let b = alloc(&kva, 2).unwrap();
        free_lazy(&kva, &tlb, a);
        free_lazy(&kva, &tlb, b);
        assert_eq!(kva.stats().lazy_pages, 4);

        let purger = {
            let kva = Arc::clone(&kva);
            thread::spawn(move || {
                kva.purge();
            })
        };
        let r = alloc_fresh(&kva, &tlb, 4);
        purger.join().unwrap();
        assert_eq!(r, loom_tests::BASE);
        settle(&kva, &tlb, r, 4);
    });
}

/// As [`kicked_purge_vs_alloc`] with a second allocator: A is lazy, B is being freed lazily
/// (kicking a purge) while two threads each want 2 pages. Each success must be fresh and the
/// two disjoint; at least one must succeed (A is on the lazy list all along); one may fail only
/// because B was not freed yet when it purged, so after joining another 2-page allocation
/// must succeed.
fn two_allocs_vs_kicked_purge(name: &str, shape: Tiny) {
    check(name, BOUND_3_THREADS, move || {
        let (kva, tlb) = tiny_kva(shape);
        let a = alloc(&kva, 2).unwrap();
        let b = alloc(&kva, 2).unwrap();
        free_lazy(&kva, &tlb, a);

        let freer = {
            let (kva, tlb) = (Arc::clone(&kva), Arc::clone(&tlb));
            thread::spawn(move || free_lazy(&kva, &tlb, b))
        };
        let other = {
            let (kva, tlb) = (Arc::clone(&kva), Arc::clone(&tlb));
            thread::spawn(move || try_alloc_fresh(&kva, &tlb, 2))
        };
        let mine = try_alloc_fresh(&kva, &tlb, 2);
        freer.join().unwrap();
        let theirs = other.join().unwrap();
        let got: Vec<u64> = [mine, theirs].into_iter().flatten().collect();
        match got[..] {
            [] => panic!("both allocations failed although A was on the lazy list"),
            [x, y] => assert_ne!(x, y, "the same range handed out twice"),
            [x] => {
                let y = alloc_fresh(&kva, &tlb, 2);
                assert_ne!(x, y, "the same range handed out twice");
                let area = kva.remove(pagetable::VirtAddr::new_truncate(y)).unwrap();
                // SAFETY: a model of the KVA layer alone: nothing was ever mapped in the area.
                unsafe { kva.free_unused(area) };
            }
            _ => unreachable!(),
        }
        assert_invariants(&kva);
        kva.purge();
        let s = kva.stats();
        assert_eq!(
            (s.used, s.nr_busy),
            (pages(2 * got.len() as u64), got.len()),
            "{s:?}"
        );
        assert_eq!(
            (s.pending, s.lazy_pages, s.merge_errors),
            (0, 0, 0),
            "{s:?}"
        );
        assert_eq!(s.free + s.used, s.total, "{s:?}");
        for x in got {
            let area = kva.remove(pagetable::VirtAddr::new_truncate(x)).unwrap();
            // SAFETY: a model of the KVA layer alone: nothing was ever mapped in the area.
            unsafe { kva.free_unused(area) };
        }
        assert_invariants(&kva);
        let s = kva.stats();
        assert_eq!((s.free, s.nr_free_areas), (s.total, s.nr_shards), "{s:?}");
    });
}

/// Like [`alloc_fresh`] but a failure is returned (checked by the caller).
fn try_alloc_fresh(kva: &Kva, tlb: &StaleTlb, n: u64) -> Option<u64> {
    let r = alloc(kva, n).ok()?;
    tlb.assert_fresh(r, r + pages(n));
    Some(r)
}

#[test]
fn two_allocs_vs_kicked_purge_one_shard() {
    two_allocs_vs_kicked_purge("two_allocs_vs_kicked_purge_one_shard", RANGE);
}

#[test]
fn kicked_purge_vs_alloc_one_shard() {
    kicked_purge_vs_alloc("kicked_purge_vs_alloc_one_shard", RANGE);
}

/// Two shards of 2 pages: A and B sit in different shards, so the allocation's home shard
/// (shard 0) may be empty while the space it can use is on the other shard's lazy list.
#[test]
fn kicked_purge_vs_alloc_two_shards() {
    kicked_purge_vs_alloc(
        "kicked_purge_vs_alloc_two_shards",
        Tiny { shards: 2, ..RANGE },
    );
}

#[test]
fn explicit_purge_vs_whole_range_alloc_one_shard() {
    explicit_purge_vs_whole_range_alloc("explicit_purge_vs_whole_range_alloc_one_shard", RANGE);
}

/// Two shards: the 4-page allocation must be carved across the shard boundary (both free
/// locks), from space that two shards' lazy lists hold.
#[test]
fn explicit_purge_vs_whole_range_alloc_two_shards() {
    explicit_purge_vs_whole_range_alloc(
        "explicit_purge_vs_whole_range_alloc_two_shards",
        Tiny { shards: 2, ..RANGE },
    );
}
