//! Tests of the adapters: disjoint aligned ranges, frees, coalescing, two threads.

use super::*;

const SPAN: u64 = 64 << 20;

/// Allocate random sizes and alignments, check alignment and non-overlap against every
/// live range, free in a scrambled order, then prove everything coalesced by allocating
/// the whole span.
fn exercise(a: &mut dyn VaAllocator) {
    let mut rng = XorShift::new(7);
    let mut live: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
    for round in 0..3 {
        for _ in 0..200 {
            let size = rng.range(1, 8) * PAGE;
            let align = PAGE << rng.range(0, 4);
            let addr = a
                .alloc(size, align)
                .unwrap_or_else(|| panic!("{} alloc", a.name()));
            assert_eq!(
                addr % align,
                0,
                "{}: {addr:#x} not aligned to {align:#x}",
                a.name()
            );
            assert!(
                addr >= VA_BASE && addr + size <= VA_BASE + SPAN,
                "{}",
                a.name()
            );
            if let Some((&s, &(sz, _))) = live.range(..=addr).next_back() {
                assert!(s + sz <= addr, "{}: overlap below {addr:#x}", a.name());
            }
            if let Some((&s, _)) = live.range(addr..).next() {
                assert!(addr + size <= s, "{}: overlap above {addr:#x}", a.name());
            }
            live.insert(addr, (size, align));
        }
        // Free every other one (by a scrambled key order), keep the rest for the next
        // round; free everything in the last round.
        let keys: Vec<u64> = live.keys().copied().collect();
        for (i, k) in keys.iter().enumerate() {
            if round == 2 || (i * 7 + round) % 2 == 0 {
                let (size, align) = live.remove(k).expect("key");
                a.free(*k, size, align)
                    .unwrap_or_else(|e| panic!("{}: {e}", a.name()));
            }
        }
    }
    assert!(live.is_empty());
    a.settle();
    if a.name() == "vmem" {
        // vmem 1.0.0 does not merge a freed segment with the free one after it (see
        // `vmem_keeps_free_space_but_does_not_merge_with_the_next_segment`).
        return;
    }
    let all = a
        .alloc(SPAN, PAGE)
        .unwrap_or_else(|| panic!("{}: no coalescing", a.name()));
    assert_eq!(all, VA_BASE, "{}", a.name());
    a.free(all, SPAN, PAGE).expect("free all");
}

#[test]
fn vmem_keeps_free_space_but_does_not_merge_with_the_next_segment() {
    // Documents the peer's behaviour the benchmarks live with (vmem 1.0.0).
    let v = VmemPeer::new(SPAN).expect("vmem");
    let x = SharedVaAllocator::alloc(&v, PAGE, PAGE).expect("x");
    let y = SharedVaAllocator::alloc(&v, 2 * PAGE, PAGE).expect("y");
    SharedVaAllocator::free(&v, x, PAGE, PAGE).expect("free x");
    SharedVaAllocator::free(&v, y, 2 * PAGE, PAGE).expect("free y");
    assert_eq!(v.arena.free_space() as u64, SPAN);
    assert_eq!(SharedVaAllocator::alloc(&v, SPAN, PAGE), None);
}

#[test]
fn every_single_threaded_adapter_allocates_disjoint_aligned_ranges() {
    for mut a in peers_single(SPAN, 1024).expect("peers") {
        exercise(a.as_mut());
    }
}

#[test]
fn ours_allocates_disjoint_aligned_ranges() {
    let mut k = KvaPeer::sharded(SPAN).expect("kva");
    exercise(&mut k);
    k.kva().check_invariants().expect("invariants");
    let mut k = KvaPeer::single_lock(SPAN).expect("kva single lock");
    exercise(&mut k);
    k.kva().check_invariants().expect("invariants");
}

#[test]
fn legacy_allocates_disjoint_aligned_ranges() {
    let mut l = LegacyKvaPeer::new(SPAN);
    exercise(&mut l);
    VaAllocator::settle(&mut l);
    assert_eq!(l.stats().busy_areas, 0);
}

#[test]
fn shared_adapters_work_from_two_threads() {
    let mut all = peers_shared(SPAN, 1024).expect("peers");
    all.push(Box::new(KvaPeer::sharded(SPAN).expect("kva")));
    all.push(Box::new(LegacyKvaPeer::new(SPAN)));
    for a in all {
        let a: &dyn SharedVaAllocator = a.as_ref();
        let results: Vec<Vec<u64>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(move || {
                        let mut got = Vec::new();
                        for _ in 0..300 {
                            got.push(a.alloc(2 * PAGE, PAGE).expect("alloc"));
                        }
                        got
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("join")).collect()
        });
        let mut all: Vec<u64> = results.concat();
        all.sort_unstable();
        for w in all.windows(2) {
            assert!(w[0] + 2 * PAGE <= w[1], "{}: overlap", a.name());
        }
        for addr in all {
            a.free(addr, 2 * PAGE, PAGE).expect("free");
        }
    }
}

#[test]
fn bad_frees_are_reported() {
    let mut b = BTreeFirstFit::new(SPAN);
    let x = b.alloc(PAGE, PAGE).expect("alloc");
    b.free(x, PAGE, PAGE).expect("free");
    assert!(b.free(x, PAGE, PAGE).is_err(), "double free");
    let mut o = OffsetAllocPeer::new(SPAN, 64).expect("offset");
    assert_eq!(
        o.free(VA_BASE, PAGE, PAGE),
        Err(PeerError::UnknownAllocation { addr: VA_BASE })
    );
    let v = VmemPeer::new(SPAN).expect("vmem");
    assert!(SharedVaAllocator::free(&v, VA_BASE, PAGE, PAGE).is_err());
    let mut f = FreeListPeer::new(SPAN).expect("free-list");
    assert!(f.free(VA_BASE, PAGE, PAGE).is_err(), "free of free space");
    assert!(OffsetAllocPeer::new(1 << 60, 64).is_err());
}
