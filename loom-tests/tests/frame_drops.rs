//! Loom models of the frame allocator's exclusive drops (`free_exclusive`,
//! `free_bulk_exclusive`: what `vfree` uses once it has taken an area out of the busy index)
//! racing an ordinary `free` of another reference to the same frame.
//!
//! An exclusive drop of a count of 1 is a load (`Acquire`) and a store (`Release`) instead
//! of a compare-exchange. Its contract: no other thread frees the frame at the same time
//! unless it holds a reference of its own. The models give the frame two references, one
//! per thread, and assert:
//!
//! * exactly one of the two drops releases the frame, whatever the interleaving;
//! * when the exclusive drop releases the frame, its thread sees what the other thread
//!   wrote into the frame before dropping its reference: the `Acquire` of the exclusive
//!   load pairs with the `Release` of the other thread's drop. With that load `Relaxed`,
//!   loom finds the stale read;
//! * after joining, the frame is free exactly once: every frame of the arena can be
//!   allocated once and no frame twice, and the statistics are back to nothing used.
//!
//! Two CPU slots: the main thread is CPU 0, the other thread CPU 1, each with its own
//! frame cache (or none: both shapes are modelled).

#![cfg(feature = "loom")]

use loom::thread;
use loom_tests::{BOUND_2_THREADS, check_with};
use pagetable::{
    FrameAllocator, FrameConfig, PAGE_SIZE, PhysAddr, PhysArena, PhysFrame, Zone, cpu,
};
use std::sync::Arc;

/// Frames in the arena: the shared one and one only the main thread holds.
const FRAMES: u64 = 2;
/// Scheduling points allowed per execution (arena words are loom atomics).
const MAX_BRANCHES: usize = 20_000;
/// What the non-releasing side writes before its drop.
const STAMP: [u8; 8] = *b"stamp-42";

fn allocator(cache: bool) -> Arc<FrameAllocator> {
    let arena = PhysArena::heap(FRAMES * PAGE_SIZE, PhysAddr::zero()).expect("arena");
    // `pcp_batch: 0, pcp_high: 0` turns the CPU caches off.
    let n = usize::from(cache);
    let cfg = FrameConfig {
        pcp_batch: n,
        pcp_high: n,
    };
    Arc::new(FrameAllocator::with_config(Arc::new(arena), cfg))
}

/// Every frame comes back exactly once, and nothing is counted as used.
fn all_free_once(fa: &FrameAllocator) {
    assert_eq!(fa.stats().used, 0, "{:?}", fa.stats());
    let mut got: Vec<PhysFrame> = (0..FRAMES)
        .map(|_| fa.alloc(Zone::Normal).expect("every frame is free"))
        .collect();
    assert!(
        fa.alloc(Zone::Normal).is_err(),
        "a frame was handed out twice: it was released twice"
    );
    got.sort_by_key(|f| f.start_address());
    got.dedup();
    assert_eq!(got.len() as u64, FRAMES);
    assert_eq!(fa.free_bulk(&got), Ok(FRAMES as usize));
}

/// One frame, two references: the other thread writes the stamp and `free`s its reference;
/// the main thread drops its own with `free_exclusive` (`bulk`: with `free_bulk_exclusive`
/// of that frame and the arena's other frame, which only it holds).
fn exclusive_vs_free(name: &str, cache: bool, bulk: bool) {
    check_with(name, BOUND_2_THREADS, Some(MAX_BRANCHES), move || {
        cpu::set_this_cpu(0);
        let fa = allocator(cache);
        let f = fa.alloc(Zone::Normal).expect("frame");
        let other = fa.alloc(Zone::Normal).expect("the other frame");
        assert_eq!(fa.get(f), Ok(2));

        let t = {
            let fa = Arc::clone(&fa);
            thread::spawn(move || {
                cpu::set_this_cpu(1);
                fa.arena().write(f.start_address(), &STAMP).expect("write");
                fa.free(f).expect("a held reference")
            })
        };
        let mine = if bulk {
            let n = fa
                .free_bulk_exclusive(&[f, other])
                .expect("held references");
            assert!(n == 1 || n == 2, "released {n}");
            // `other` has one reference, so it is released in any case.
            n == 2
        } else {
            let r = fa.free_exclusive(f).expect("a held reference");
            assert_eq!(fa.free(other), Ok(true), "the other frame");
            r
        };
        if mine {
            // Released here: this thread owns the frame's memory now (it would hand it out
            // next) and must see the other side's write made before its drop.
            let mut b = [0u8; 8];
            fa.arena().read(f.start_address(), &mut b).expect("read");
            assert_eq!(b, STAMP, "the releasing side missed the other side's write");
        }
        let theirs = t.join().unwrap();
        assert!(
            mine ^ theirs,
            "exactly one drop releases the frame (main {mine}, other {theirs})"
        );
        assert_eq!(fa.refcount(f), 0);
        all_free_once(&fa);
    });
}

#[test]
fn free_exclusive_vs_free() {
    exclusive_vs_free("free_exclusive_vs_free", false, false);
}

#[test]
fn free_exclusive_vs_free_with_cpu_caches() {
    exclusive_vs_free("free_exclusive_vs_free_with_cpu_caches", true, false);
}

#[test]
fn free_bulk_exclusive_vs_free() {
    exclusive_vs_free("free_bulk_exclusive_vs_free", false, true);
}
