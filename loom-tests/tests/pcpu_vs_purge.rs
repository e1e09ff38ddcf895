//! Loom model of a per-CPU cache refill racing a purge that returns purged areas to the
//! per-CPU caches (Linux 6.9's node pools), on a 128-page `Kva` (one shard, caches on,
//! synchronous purges, every lazy free kicks a purge).
//!
//! With 128 pages a refill of the 1-page class carves a batch of 2 chunks (one for the
//! caller, one for the CPU's cache), and a purge hands small purged areas to the cache of a
//! CPU whose home is the shard (CPU 1 for the first purge). Setup (CPU 0): one big area, then
//! two 1-page areas through CPU 0's cache, leaving 2 free pages in the tree and no cached
//! chunk. Then CPU 0 frees one small area lazily (kicking a purge that pushes it into CPU 1's
//! cache) while CPU 1 allocates two pages one by one (refilling its cache from the tree, or
//! popping what the purge pushed). Asserted:
//!
//! * both allocations succeed (3 free pages exist counting the lazy one) and are fresh (the
//!   lazily freed page is handed out only after its flush), distinct, and outside every live
//!   area;
//! * no two flushes overlap;
//! * after joining: `check_invariants` (each free byte in exactly one of tree, cache, lazy
//!   list), exact `used`, and `free + used + pending == total`; after a purge and freeing
//!   everything, `free == total` and nothing is pending.

#![cfg(feature = "loom")]

use std::sync::Arc;

use loom::thread;
use loom_tests::{
    BOUND_2_THREADS, Tiny, alloc, assert_invariants, check, free_lazy, pages, tiny_kva,
};
use pagetable::cpu;

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
        cpu::set_this_cpu(0);
        let big = alloc(&kva, 124).unwrap();
        // Refill of CPU 0's 1-page class: carves [124, 126), returns one, caches the other.
        let s1 = alloc(&kva, 1).unwrap();
        let s2 = alloc(&kva, 1).unwrap();
        let s = kva.stats();
        assert_eq!((s.cached, s.free), (0, pages(2)), "setup: {s:?}");

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
            let area = kva.remove(x).unwrap();
            kva.free_unused(area);
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
