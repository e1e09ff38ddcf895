//! Unit tests of the frame allocator (heap arenas, sized for Miri).

use super::*;
use std::thread;

use crate::cpu;

pub(super) const GIB: u64 = 1 << 30;

pub(super) fn allocator(frames: u64, base: u64) -> FrameAllocator {
    let arena = PhysArena::heap(frames * PAGE_SIZE, PhysAddr::new(base)).unwrap();
    FrameAllocator::new(Arc::new(arena))
}

pub(super) fn frame(a: u64) -> PhysFrame<Size4KiB> {
    PhysFrame::from_start_address(PhysAddr::new(a)).unwrap()
}

/// Every frame is accounted for exactly once: handed out, in a CPU cache, or in a pool.
pub(super) fn assert_conserved(fa: &FrameAllocator) {
    let s = fa.stats();
    assert_eq!(s.free + s.used, s.total);
    assert_eq!(s.allocs - s.frees, s.used);
    assert_eq!(fa.cached() + fa.pooled(Zone::Normal), s.free, "{s:?}");
}

#[test]
fn alloc_free_and_counters() {
    let fa = allocator(16, 0x10_0000);
    let a = fa.alloc(Zone::Normal).unwrap();
    let b = fa.alloc(Zone::Normal).unwrap();
    assert_ne!(a, b);
    assert!(fa.owns(a) && fa.arena().contains(a.start_address(), PAGE_SIZE));
    // Fresh frames come out in ascending order from the bump region.
    assert_eq!(a.start_address().as_u64(), 0x10_0000);
    assert_eq!(b.start_address().as_u64(), 0x10_1000);
    assert_eq!((fa.refcount(a), fa.refcount(b)), (1, 1));
    let s = fa.stats();
    assert_eq!(
        (s.total, s.used, s.free, s.allocs, s.frees, s.high_water),
        (16, 2, 14, 2, 0, 2)
    );
    assert_conserved(&fa);

    assert_eq!(fa.free(a), Ok(true));
    assert_eq!(fa.refcount(a), 0);
    assert_eq!(
        fa.free(a),
        Err(FrameError::DoubleFree {
            frame: a.start_address()
        })
    );
    let s = fa.stats();
    assert_eq!(
        (s.used, s.free, s.allocs, s.frees, s.high_water),
        (1, 15, 2, 1, 2)
    );
    assert_conserved(&fa);
    // The hot frame is reused first.
    assert_eq!(fa.alloc(Zone::Normal).unwrap(), a);
    assert_eq!(fa.put(a), Ok(true));
    assert_eq!(fa.put(b), Ok(true));
    let s = fa.stats();
    assert_eq!(
        (s.used, s.allocs, s.frees, s.high_water, s.failed),
        (0, 3, 3, 2, 0)
    );
    assert_conserved(&fa);
}

#[test]
fn foreign_frames_are_refused_without_damage() {
    let fa = allocator(8, 0x10_0000);
    let f = fa.alloc(Zone::Normal).unwrap();
    let before = fa.stats();
    for bad in [
        frame(0),
        frame(0xf_f000),
        frame(0x10_8000),
        frame(0x1_0000_0000),
    ] {
        assert_eq!(
            fa.free(bad),
            Err(FrameError::NotOwned {
                frame: bad.start_address()
            })
        );
        assert_eq!(
            fa.get(bad),
            Err(FrameError::NotOwned {
                frame: bad.start_address()
            })
        );
        assert_eq!(fa.refcount(bad), 0);
        assert!(!fa.owns(bad));
    }
    // A never-allocated frame of the arena: not allocated.
    let idle = frame(0x10_7000);
    assert_eq!(
        fa.free(idle),
        Err(FrameError::DoubleFree {
            frame: idle.start_address()
        })
    );
    assert_eq!(
        fa.get(idle),
        Err(FrameError::NotAllocated {
            frame: idle.start_address()
        })
    );
    assert_eq!(fa.stats(), before);
    assert_eq!(fa.free(f), Ok(true));
    assert_conserved(&fa);
}

#[test]
fn reference_counts() {
    let fa = allocator(8, 0);
    let f = fa.alloc(Zone::Normal).unwrap();
    assert_eq!(fa.get(f), Ok(2));
    assert_eq!(fa.get(f), Ok(3));
    assert_eq!(fa.refcount(f), 3);
    assert_eq!(fa.free(f), Ok(false));
    assert_eq!(fa.free(f), Ok(false));
    assert_eq!(fa.stats().used, 1);
    assert_eq!(fa.free(f), Ok(true));
    assert_eq!(fa.stats().used, 0);
    assert_eq!(
        fa.free(f),
        Err(FrameError::DoubleFree {
            frame: f.start_address()
        })
    );
    // Overflow is refused.
    let g = fa.alloc(Zone::Normal).unwrap();
    let i = fa.index(g).unwrap() as usize;
    fa.refcounts[i].store(u32::MAX, Ordering::Relaxed);
    assert_eq!(
        fa.get(g),
        Err(FrameError::RefcountOverflow {
            frame: g.start_address()
        })
    );
    fa.refcounts[i].store(1, Ordering::Relaxed);
    assert_eq!(fa.free(g), Ok(true));
    assert_conserved(&fa);
}

#[test]
fn exhaustion_and_recovery() {
    let fa = allocator(16, 0x20_0000);
    let mut held: Vec<_> = (0..16).map(|_| fa.alloc(Zone::Normal).unwrap()).collect();
    let mut sorted = held.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 16);
    assert_eq!(
        fa.alloc(Zone::Normal),
        Err(FrameError::OutOfFrames {
            zone: Zone::Normal,
            injected: false
        })
    );
    assert_eq!(fa.stats().failed, 1);
    let back = held.pop().unwrap();
    assert_eq!(fa.free(back), Ok(true));
    assert_eq!(fa.alloc(Zone::Normal), Ok(back));
    assert_eq!(fa.free_bulk(&held), Ok(15));
    assert_eq!(fa.free(back), Ok(true));
    assert_eq!(fa.stats().used, 0);
    assert_conserved(&fa);
}

#[test]
fn frames_cached_by_another_cpu_are_found() {
    let fa = Arc::new(allocator(64, 0));
    if cpu::nr_cpu_ids() < 2 {
        return; // one slot: nothing to steal from
    }
    // CPU 0 takes everything and frees it: the frames now sit in its cache and pool.
    let fa0 = Arc::clone(&fa);
    thread::spawn(move || {
        cpu::set_this_cpu(0);
        let mut v = Vec::new();
        fa0.alloc_bulk(64, Zone::Normal, &mut v).unwrap();
        for f in v {
            fa0.free(f).unwrap();
        }
        assert!(fa0.cached() > 0);
    })
    .join()
    .unwrap();
    let fa1 = Arc::clone(&fa);
    thread::spawn(move || {
        cpu::set_this_cpu(1);
        let v: Vec<_> = (0..64).map(|_| fa1.alloc(Zone::Normal).unwrap()).collect();
        assert_eq!(fa1.stats().used, 64);
        assert_eq!(fa1.free_bulk(&v), Ok(64));
        // Bulk allocation also drains other caches.
        let mut w = Vec::new();
        cpu::set_this_cpu(0);
        fa1.alloc_bulk(64, Zone::Normal, &mut w).unwrap();
        assert_eq!(fa1.free_bulk(&w), Ok(64));
    })
    .join()
    .unwrap();
    assert_conserved(&fa);
}

#[test]
fn zeroed_allocation() {
    let fa = allocator(8, 0x10_0000);
    let arena = Arc::clone(fa.arena());
    let f = fa.alloc(Zone::Normal).unwrap();
    arena.fill(f.start_address(), PAGE_SIZE, 0xee).unwrap();
    fa.free(f).unwrap();
    // Reused (hot) frame: must be cleared.
    let z = fa.alloc_zeroed(Zone::Normal).unwrap();
    assert_eq!(z, f);
    assert!(arena.is_zero(z.start_address(), PAGE_SIZE).unwrap());
    // A plain alloc may hand out dirty memory.
    arena.fill(z.start_address(), 8, 0x11).unwrap();
    fa.free(z).unwrap();
    let d = fa.alloc(Zone::Normal).unwrap();
    assert!(!arena.is_zero(d.start_address(), 8).unwrap());
    let mut v = Vec::new();
    fa.free(d).unwrap();
    fa.alloc_bulk_zeroed(8, Zone::Normal, &mut v).unwrap();
    for f in &v {
        assert!(arena.is_zero(f.start_address(), PAGE_SIZE).unwrap());
    }
    assert_eq!(fa.free_bulk(&v), Ok(8));
    assert_conserved(&fa);
}

#[test]
fn bulk_is_all_or_nothing() {
    let fa = allocator(32, 0);
    let mut v = vec![frame(0x7000_0000)]; // existing content is kept
    fa.alloc_bulk(10, Zone::Normal, &mut v).unwrap();
    assert_eq!(v.len(), 11);
    assert_eq!(v[0], frame(0x7000_0000));
    let mut s: Vec<_> = v[1..].to_vec();
    s.sort();
    s.dedup();
    assert_eq!(s.len(), 10);
    assert!(v[1..].iter().all(|&f| fa.refcount(f) == 1));
    fa.alloc_bulk(0, Zone::Normal, &mut v).unwrap();
    assert_eq!(v.len(), 11);

    let before = fa.stats();
    let mut w = Vec::new();
    assert_eq!(
        fa.alloc_bulk(23, Zone::Normal, &mut w),
        Err(FrameError::OutOfFrames {
            zone: Zone::Normal,
            injected: false
        })
    );
    assert!(w.is_empty());
    let after = fa.stats();
    assert_eq!((after.used, after.allocs), (before.used, before.allocs));
    assert_eq!(after.failed, before.failed + 1);
    assert_conserved(&fa);
    fa.alloc_bulk(22, Zone::Normal, &mut w).unwrap();
    assert_eq!(fa.stats().free, 0);
    assert_eq!(fa.free_bulk(&w), Ok(22));
    assert_eq!(fa.free_bulk(&v[1..]), Ok(10));
    assert_conserved(&fa);
}

#[test]
fn free_bulk_frees_the_valid_ones() {
    let fa = allocator(8, 0x10_0000);
    let mut v = Vec::new();
    fa.alloc_bulk(3, Zone::Normal, &mut v).unwrap();
    fa.get(v[1]).unwrap();
    let bad = frame(0x1000);
    let list = [v[0], bad, v[1], v[2], v[2]];
    assert_eq!(
        fa.free_bulk(&list),
        Err(FrameError::NotOwned {
            frame: bad.start_address()
        })
    );
    // v[0] and v[2] released, v[1] dropped to one reference, the second v[2] refused.
    assert_eq!(
        (fa.refcount(v[0]), fa.refcount(v[1]), fa.refcount(v[2])),
        (0, 1, 0)
    );
    assert_eq!(fa.stats().used, 1);
    assert_eq!(fa.free_bulk(&[v[1]]), Ok(1));
    assert_conserved(&fa);
}

#[test]
fn zones_split_at_4_gib() {
    // 8 frames below 4 GiB, 8 above.
    let fa = allocator(16, 4 * GIB - 8 * PAGE_SIZE);
    let high: Vec<_> = (0..8).map(|_| fa.alloc(Zone::Normal).unwrap()).collect();
    assert!(
        high.iter().all(|f| f.start_address().as_u64() >= 4 * GIB),
        "{high:?}"
    );
    // High zone exhausted: Normal falls back to the low zone.
    let low = fa.alloc(Zone::Normal).unwrap();
    assert!(low.start_address().as_u64() < 4 * GIB);
    fa.free(low).unwrap();
    let dma: Vec<_> = (0..8).map(|_| fa.alloc(Zone::Dma32).unwrap()).collect();
    assert!(dma.iter().all(|f| f.start_address().as_u64() < 4 * GIB));
    assert_eq!(
        fa.alloc(Zone::Dma32),
        Err(FrameError::OutOfFrames {
            zone: Zone::Dma32,
            injected: false
        })
    );
    // Free a high frame: Dma32 still cannot use it, Normal can.
    fa.free(high[0]).unwrap();
    assert!(fa.alloc(Zone::Dma32).is_err());
    assert_eq!(fa.alloc(Zone::Normal), Ok(high[0]));
    // Bulk Dma32 is limited the same way.
    fa.free_bulk(&dma).unwrap();
    let mut v = Vec::new();
    assert!(fa.alloc_bulk(9, Zone::Dma32, &mut v).is_err());
    fa.alloc_bulk(8, Zone::Dma32, &mut v).unwrap();
    assert!(v.iter().all(|f| f.start_address().as_u64() < 4 * GIB));
    fa.free_bulk(&v).unwrap();
    fa.free_bulk(&high).unwrap();
    assert_eq!(fa.stats().used, 0);
    fa.drain_cpu_caches();
    assert_eq!((fa.pooled(Zone::Dma32), fa.pooled(Zone::Normal)), (8, 16));
    assert_conserved(&fa);

    // An arena wholly above 4 GiB has no DMA32 frames at all.
    let hi = allocator(4, 8 * GIB);
    assert!(matches!(
        hi.alloc(Zone::Dma32),
        Err(FrameError::OutOfFrames { .. })
    ));
    assert!(hi.alloc(Zone::Normal).is_ok());
}

#[test]
fn fault_injection() {
    let fa = allocator(32, 0);
    let mut v = Vec::new();
    fa.fail_nth(Some(3));
    v.push(fa.alloc(Zone::Normal).unwrap());
    v.push(fa.alloc(Zone::Normal).unwrap());
    assert_eq!(
        fa.alloc(Zone::Normal),
        Err(FrameError::OutOfFrames {
            zone: Zone::Normal,
            injected: true
        })
    );
    v.push(fa.alloc_zeroed(Zone::Normal).unwrap()); // once only
    assert_eq!(fa.stats().failed, 1);

    fa.fail_nth(Some(5));
    fa.alloc_bulk(3, Zone::Normal, &mut v).unwrap(); // 1..=3
    assert!(fa.alloc_bulk(3, Zone::Normal, &mut v).is_err()); // 4..=6 holds the 5th
    fa.alloc_bulk(3, Zone::Normal, &mut v).unwrap();
    fa.fail_nth(Some(1));
    fa.fail_nth(None);
    v.push(fa.alloc(Zone::Normal).unwrap());

    fa.fail_after(Some(2));
    v.push(fa.alloc(Zone::Normal).unwrap());
    v.push(fa.alloc(Zone::Dma32).unwrap());
    for _ in 0..3 {
        assert!(matches!(
            fa.alloc(Zone::Normal),
            Err(FrameError::OutOfFrames { injected: true, .. })
        ));
    }
    assert!(fa.alloc_bulk(1, Zone::Normal, &mut v).is_err());
    fa.fail_after(None);
    v.push(fa.alloc(Zone::Normal).unwrap());
    fa.fail_after(Some(0));
    assert!(fa.alloc(Zone::Normal).is_err());
    fa.fail_after(None);

    let s = fa.stats();
    assert_eq!(s.failed, 1 + 1 + 3 + 1 + 1);
    assert_eq!(s.used, v.len() as u64);
    assert_eq!(fa.free_bulk(&v), Ok(v.len()));
    assert_conserved(&fa);
}

#[test]
fn cpu_caches_batch_and_drain() {
    let fa = FrameAllocator::with_config(
        Arc::new(PhysArena::heap(256 * PAGE_SIZE, PhysAddr::zero()).unwrap()),
        FrameConfig {
            pcp_batch: 4,
            pcp_high: 8,
        },
    );
    let f = fa.alloc(Zone::Normal).unwrap();
    // The refill took a batch: 3 left in the cache.
    assert_eq!(fa.cached(), 3);
    assert_eq!(fa.pooled(Zone::Normal), 252);
    let mut v = vec![f];
    fa.alloc_bulk(20, Zone::Normal, &mut v).unwrap();
    assert_eq!(fa.free_bulk(&v), Ok(21));
    // Trimming kept the cache at or below `high`.
    assert!(fa.cached() <= 8, "{}", fa.cached());
    assert_conserved(&fa);
    fa.drain_cpu_caches();
    assert_eq!(fa.cached(), 0);
    assert_eq!(fa.pooled(Zone::Normal), 256);
    assert!(format!("{fa:?}").contains("batch: 4"));

    // Caching disabled.
    let nc = FrameAllocator::with_config(
        Arc::new(PhysArena::heap(16 * PAGE_SIZE, PhysAddr::zero()).unwrap()),
        FrameConfig {
            pcp_batch: 0,
            pcp_high: 0,
        },
    );
    let g = nc.alloc(Zone::Normal).unwrap();
    assert_eq!(nc.cached(), 0);
    nc.free(g).unwrap();
    assert_eq!(nc.cached(), 0);
    assert_eq!(nc.pooled(Zone::Normal), 16);
}

#[test]
fn errors_display() {
    let e = FrameError::OutOfFrames {
        zone: Zone::Dma32,
        injected: true,
    };
    assert_eq!(e.to_string(), "out of Dma32 frames (injected failure)");
    let e = FrameError::OutOfFrames {
        zone: Zone::Normal,
        injected: false,
    };
    assert_eq!(e.to_string(), "out of Normal frames");
    let e: FrameError = ArenaError::MmapUnavailable.into();
    assert!(matches!(e, FrameError::Arena(_)));
}

/// Several threads allocate, share, write, check and free frames; at the end every counter
/// must balance exactly and no frame may have been handed to two owners at once.
#[test]
fn multi_thread_stress_keeps_exact_counters() {
    let (threads, rounds, frames) = if cfg!(miri) {
        (2, 30, 32)
    } else {
        (4, 3000, 512)
    };
    let fa = Arc::new(allocator(frames, 0x100_0000));
    let handles: Vec<_> = (0..threads)
        .map(|t: u64| {
            let fa = Arc::clone(&fa);
            thread::spawn(move || {
                let arena = Arc::clone(fa.arena());
                let mut mine: Vec<PhysFrame> = Vec::new();
                let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ (t + 1);
                let tag = |f: PhysFrame| (t << 48) | f.number();
                for _ in 0..rounds {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    match x % 8 {
                        0..=2 => {
                            if let Ok(f) = fa.alloc(Zone::Normal) {
                                arena
                                    .write(f.start_address(), &tag(f).to_ne_bytes())
                                    .unwrap();
                                mine.push(f);
                            }
                        }
                        3 => {
                            let n = (x >> 8) as usize % 9;
                            let start = mine.len();
                            if fa.alloc_bulk(n, Zone::Normal, &mut mine).is_ok() {
                                for &f in &mine[start..] {
                                    arena
                                        .write(f.start_address(), &tag(f).to_ne_bytes())
                                        .unwrap();
                                }
                            }
                        }
                        4 => {
                            // Share a frame with ourselves (as COW would) and drop it again.
                            if let Some(&f) = mine.last() {
                                assert!(fa.get(f).unwrap() >= 2);
                                assert_eq!(fa.free(f), Ok(false));
                            }
                        }
                        _ => {
                            if !mine.is_empty() {
                                let f = mine.swap_remove((x >> 8) as usize % mine.len());
                                let mut b = [0u8; 8];
                                arena.read(f.start_address(), &mut b).unwrap();
                                assert_eq!(u64::from_ne_bytes(b), tag(f), "frame shared");
                                assert_eq!(fa.free(f), Ok(true));
                            }
                        }
                    }
                }
                let n = mine.len();
                assert_eq!(fa.free_bulk(&mine), Ok(n));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let s = fa.stats();
    assert_eq!((s.used, s.free, s.total), (0, frames, frames));
    assert_eq!(s.allocs, s.frees);
    assert!(s.high_water > 0 && s.high_water <= frames);
    assert_conserved(&fa);
    for i in 0..frames {
        assert_eq!(fa.refcount(frame(0x100_0000 + i * PAGE_SIZE)), 0);
    }
    fa.drain_cpu_caches();
    assert_eq!(fa.pooled(Zone::Normal), frames);
}

#[cfg(not(miri))]
mod props {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[derive(Debug, Clone)]
    enum Op {
        Alloc,
        Bulk(usize),
        Get(usize),
        Free(usize),
        Drain,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Alloc),
            1 => (0..12usize).prop_map(Op::Bulk),
            1 => any::<usize>().prop_map(Op::Get),
            3 => any::<usize>().prop_map(Op::Free),
            1 => Just(Op::Drain),
        ]
    }

    proptest! {
        /// The allocator against a model: a map frame -> reference count.
        #[test]
        fn matches_refcount_model(ops in proptest::collection::vec(op(), 1..120)) {
            let total = 24u64;
            let fa = FrameAllocator::with_config(
                Arc::new(PhysArena::heap(total * PAGE_SIZE, PhysAddr::new(0x4000)).unwrap()),
                FrameConfig { pcp_batch: 3, pcp_high: 5 },
            );
            let mut model: HashMap<PhysFrame, u32> = HashMap::new();
            let mut order: Vec<PhysFrame> = Vec::new();
            for op in ops {
                let used = model.len() as u64;
                match op {
                    Op::Alloc => match fa.alloc(Zone::Normal) {
                        Ok(f) => {
                            prop_assert!(model.insert(f, 1).is_none());
                            order.push(f);
                        }
                        Err(_) => prop_assert_eq!(used, total),
                    },
                    Op::Bulk(n) => {
                        let mut v = Vec::new();
                        match fa.alloc_bulk(n, Zone::Normal, &mut v) {
                            Ok(()) => {
                                prop_assert_eq!(v.len(), n);
                                for f in v {
                                    prop_assert!(model.insert(f, 1).is_none());
                                    order.push(f);
                                }
                            }
                            Err(_) => prop_assert!(used + n as u64 > total),
                        }
                    }
                    Op::Get(k) if !order.is_empty() => {
                        let f = order[k % order.len()];
                        let c = model.get_mut(&f).unwrap();
                        *c += 1;
                        prop_assert_eq!(fa.get(f), Ok(*c));
                    }
                    Op::Free(k) if !order.is_empty() => {
                        let i = k % order.len();
                        let f = order[i];
                        let c = model.get_mut(&f).unwrap();
                        *c -= 1;
                        let last = *c == 0;
                        if last {
                            model.remove(&f);
                            order.swap_remove(i);
                        }
                        prop_assert_eq!(fa.free(f), Ok(last));
                        if last {
                            prop_assert_eq!(fa.free(f), Err(FrameError::DoubleFree {
                                frame: f.start_address()
                            }));
                        }
                    }
                    Op::Drain => {
                        fa.drain_cpu_caches();
                        prop_assert_eq!(fa.cached(), 0);
                    }
                    _ => {}
                }
                let s = fa.stats();
                prop_assert_eq!(s.used, model.len() as u64);
                prop_assert_eq!(s.free + s.used, total);
                prop_assert_eq!(fa.cached() + fa.pooled(Zone::Normal), s.free);
                for (f, c) in &model {
                    prop_assert_eq!(fa.refcount(*f), *c);
                }
            }
        }
    }
}

#[test]
fn counters_fold_without_losing_exactness() {
    // More than FOLD frames allocated on one CPU slot and freed on another: the balances
    // fold into the shared counter; used / allocs / frees stay exact and the high-water
    // mark sees the peak.
    let n = 3 * super::FOLD as u64;
    let fa = Arc::new(allocator(4 * n, 0x100_0000));
    let frames: Vec<_> = {
        let fa = Arc::clone(&fa);
        thread::spawn(move || {
            crate::cpu::set_this_cpu(0);
            (0..n).map(|_| fa.alloc(Zone::Normal).unwrap()).collect()
        })
        .join()
        .unwrap()
    };
    assert_eq!(fa.stats().used, n);
    assert!(fa.stats().high_water >= n);
    {
        let fa = Arc::clone(&fa);
        thread::spawn(move || {
            crate::cpu::set_this_cpu(1);
            for f in frames {
                assert_eq!(fa.free(f), Ok(true));
            }
        })
        .join()
        .unwrap();
    }
    let s = fa.stats();
    assert_eq!((s.used, s.allocs, s.frees), (0, n, n));
    assert!(s.high_water >= n && s.high_water <= s.total);
    assert_conserved(&fa);
}

#[test]
fn a_chunk_of_both_zones_goes_to_each_zone() {
    // 8 frames below 4 GiB, 8 above: one `free_bulk` chunk mixing them puts each frame in
    // its own zone's list (the one-zone shortcut must not apply).
    let fa = allocator(16, 4 * GIB - 8 * PAGE_SIZE);
    let mut v = Vec::new();
    fa.alloc_bulk(16, Zone::Normal, &mut v).unwrap();
    v.sort_unstable();
    let mixed = [v[0], v[15], v[1], v[14], v[8], v[7]];
    assert_eq!(fa.free_bulk(&mixed), Ok(6));
    fa.drain_cpu_caches();
    assert_eq!((fa.pooled(Zone::Dma32), fa.pooled(Zone::Normal)), (3, 6));
    let dma: Vec<_> = (0..3).map(|_| fa.alloc(Zone::Dma32).unwrap()).collect();
    assert!(dma.iter().all(|f| f.start_address().as_u64() < 4 * GIB));
    assert!(fa.alloc(Zone::Dma32).is_err());
    assert_conserved(&fa);
}
