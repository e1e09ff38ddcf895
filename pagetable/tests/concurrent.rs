//! Several threads map and unmap disjoint ranges of ONE address space at once, without a lock:
//! the ranges interleave so that the threads share leaf tables, page directories and PDPTs
//! (tables are installed by compare-exchange; losers give their frame back). A full
//! consistency check follows: every mapping is exactly what its owner left, rss and the frame
//! allocator's counts agree, and teardown returns every frame.
//!
//! A second test runs TLB-model readers against the same churn and checks they only ever see
//! a frame that their page really had.

#![cfg(not(feature = "loom"))]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use pagetable::{
    AddressSpace, FrameAllocator, PageTableFlags, PhysAddr, PhysArena, PhysFrame, TlbFlush,
    TlbModel, VirtAddr, Zone,
};

const KB4: u64 = 4096;
const THREADS: u64 = 4;
/// Each thread owns runs of this many pages, interleaved with the others' runs.
const RUN: u64 = 37;
const RUNS_PER_THREAD: u64 = 40;
const ROUNDS: usize = 30;
/// Starts 64 pages below a 1 GiB boundary so that runs also straddle page directories.
const BASE: u64 = 0xffff_c900_4000_0000 - 64 * KB4;
const RW: PageTableFlags = PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE);

fn run_start(thread: u64, run: u64) -> VirtAddr {
    VirtAddr::new(BASE + (run * THREADS + thread) * RUN * KB4)
}

/// Tiny deterministic PRNG (xorshift) so each thread's schedule differs but is reproducible.
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[test]
fn disjoint_ranges_of_one_space_from_many_threads() {
    let arena = PhysArena::heap(16 << 20, PhysAddr::new(0x100_0000)).unwrap();
    let frames = Arc::new(FrameAllocator::new(Arc::new(arena)));
    let space = Arc::new(AddressSpace::new(Arc::clone(&frames)).unwrap());

    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let space = Arc::clone(&space);
            let frames = Arc::clone(&frames);
            thread::spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15 ^ (t + 1);
                // run -> frames mapped there now
                let mut mine: BTreeMap<u64, Vec<PhysFrame>> = BTreeMap::new();
                for _ in 0..ROUNDS {
                    for _ in 0..8 {
                        let run = next(&mut rng) % RUNS_PER_THREAD;
                        let start = run_start(t, run);
                        if let Some(old) = mine.remove(&run) {
                            let mut seen = Vec::new();
                            let flush = space
                                .unmap(start, RUN * KB4, |pa, _| seen.push(pa))
                                .unwrap();
                            assert_eq!(flush.pages(), RUN);
                            let want: Vec<PhysAddr> =
                                old.iter().map(|f| f.start_address()).collect();
                            assert_eq!(seen, want);
                            frames.free_bulk(&old).unwrap();
                        } else {
                            let n = RUN as usize;
                            let f: Vec<PhysFrame> = (0..n)
                                .map(|_| frames.alloc(Zone::Normal).unwrap())
                                .collect();
                            space.map(start, &f, RW).unwrap();
                            for (i, fr) in f.iter().enumerate() {
                                let tr = space.translate(start + i as u64 * KB4).unwrap();
                                assert_eq!(tr.pa, fr.start_address());
                            }
                            mine.insert(run, f);
                        }
                    }
                }
                mine
            })
        })
        .collect();
    let owned: Vec<BTreeMap<u64, Vec<PhysFrame>>> =
        workers.into_iter().map(|w| w.join().unwrap()).collect();

    // Consistency: exactly the owners' mappings, in order, nothing else.
    let mut want = BTreeMap::new();
    for (t, runs) in owned.iter().enumerate() {
        for (&run, f) in runs {
            let start = run_start(t as u64, run);
            for (i, fr) in f.iter().enumerate() {
                want.insert((start + i as u64 * KB4).as_u64(), fr.start_address());
            }
        }
    }
    let span = THREADS * RUNS_PER_THREAD * RUN * KB4;
    let got: BTreeMap<u64, PhysAddr> = space
        .mappings(VirtAddr::new(BASE), span)
        .map(|m| {
            assert_eq!(m.size, KB4);
            assert_eq!(m.flags, RW);
            (m.va.as_u64(), m.pa)
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(space.rss(), want.len());
    // Frames in use: the mapped data frames plus the tables (root, PDPT, 2 PDs, leaf tables).
    let leaf_tables = span.div_ceil(2 << 20) + 1;
    let used = frames.stats().used;
    assert!(used >= want.len() as u64 + 4);
    assert!(
        used <= want.len() as u64 + 4 + leaf_tables,
        "a lost race leaked a table"
    );

    // Teardown returns everything.
    let _ = space.unmap_and_free(VirtAddr::new(BASE), span).unwrap();
    assert_eq!(space.rss(), 0);
    drop(space);
    assert_eq!(frames.stats().used, 0);
}

#[test]
fn tlb_readers_never_see_a_frame_their_page_did_not_have() {
    let arena = PhysArena::heap(8 << 20, PhysAddr::new(0x100_0000)).unwrap();
    let frames = Arc::new(FrameAllocator::new(Arc::new(arena)));
    let space = Arc::new(AddressSpace::new(Arc::clone(&frames)).unwrap());
    let tlb = Arc::new(TlbModel::new(3));
    let stop = Arc::new(AtomicBool::new(false));
    // Every frame mapped at page i is filled with byte i + 1 before it is mapped, and each
    // unmap is followed by a flush before the frame is freed: a reader may see "not mapped"
    // or byte i + 1, never anything else.
    let pages = 64u64;
    let base = VirtAddr::new(0x5555_0000_0000);
    let readers: Vec<_> = (0..2)
        .map(|cpu| {
            let (space, tlb, stop) = (Arc::clone(&space), Arc::clone(&tlb), Arc::clone(&stop));
            thread::spawn(move || {
                let mut seen = 0u64;
                let mut i = cpu as u64;
                while !stop.load(Ordering::Relaxed) {
                    let p = i % pages;
                    let mut b = [0u8; 1];
                    if tlb.read(cpu, &space, base + p * KB4 + 9, &mut b).is_ok() {
                        assert_eq!(b[0], p as u8 + 1, "page {p}");
                        seen += 1;
                    }
                    i += 7;
                }
                seen
            })
        })
        .collect();
    let mut rng = 12345u64;
    for _ in 0..3000 {
        let p = next(&mut rng) % pages;
        let va = base + p * KB4;
        if space.translate(va).is_some() {
            let mut freed = Vec::new();
            let flush = space.unmap(va, KB4, |pa, _| freed.push(pa)).unwrap();
            flush.flush(&*tlb);
            for pa in freed {
                frames.free(PhysFrame::containing_address(pa)).unwrap();
            }
        } else {
            let f = frames.alloc(Zone::Normal).unwrap();
            frames
                .arena()
                .fill(f.start_address(), KB4, p as u8 + 1)
                .unwrap();
            space.map(va, &[f], RW).unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    let _ = space.unmap_and_free(base, pages * KB4).unwrap();
    assert!(tlb.stats().flushes > 0);
}
