//! Tests of the free tree: the four fit cases, merging, errors, and property tests against a
//! brute-force model (a sorted `Vec` of free ranges, lowest fit by linear scan).

use proptest::prelude::*;

use super::*;

/// The brute-force model.
#[derive(Debug, Clone, Default)]
struct Model {
    free: Vec<(u64, u64)>,
}

impl Model {
    fn lowest_fit(&self, size: u64, align: u64, vstart: u64, vend: u64) -> Option<(usize, u64)> {
        if size == 0 || !align.is_power_of_two() || vstart >= vend {
            return None;
        }
        self.free.iter().enumerate().find_map(|(i, &(s, e))| {
            let lo = s.max(vstart);
            let a = lo.checked_add(align - 1)? & !(align - 1);
            let end = a.checked_add(size)?;
            (end <= e.min(vend)).then_some((i, a))
        })
    }

    fn carve(&mut self, i: usize, s: u64, e: u64) {
        let (fs, fe) = self.free[i];
        self.free.remove(i);
        if e < fe {
            self.free.insert(i, (e, fe));
        }
        if fs < s {
            self.free.insert(i, (fs, s));
        }
    }

    /// The lowest fit among the areas of at least `min_len` bytes.
    fn lowest_fit_in_areas_of(
        &self,
        min_len: u64,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
    ) -> Option<u64> {
        let long = Model {
            free: self
                .free
                .iter()
                .copied()
                .filter(|&(s, e)| e - s >= min_len)
                .collect(),
        };
        long.lowest_fit(size, align, vstart, vend).map(|(_, a)| a)
    }

    fn alloc(&mut self, size: u64, align: u64, vstart: u64, vend: u64) -> Option<u64> {
        let (i, a) = self.lowest_fit(size, align, vstart, vend)?;
        self.carve(i, a, a + size);
        Some(a)
    }

    fn alloc_at(&mut self, s: u64, e: u64) -> bool {
        match self.free.iter().position(|&(fs, fe)| fs <= s && e <= fe) {
            Some(i) if s < e => {
                self.carve(i, s, e);
                true
            }
            _ => false,
        }
    }

    /// Free `[s, e)`; `false` (and no change) if it overlaps a free range.
    fn free(&mut self, s: u64, e: u64) -> bool {
        if self.free.iter().any(|&(fs, fe)| fs < e && s < fe) {
            return false;
        }
        self.free.push((s, e));
        self.free.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for &(fs, fe) in &self.free {
            match merged.last_mut() {
                Some(last) if last.1 == fs => last.1 = fe,
                _ => merged.push((fs, fe)),
            }
        }
        self.free = merged;
        true
    }
}

fn check<I: FitIndex>(t: &FreeTree<I>) {
    t.check_invariants().unwrap();
}

#[test]
fn with_range_and_bad_ranges() {
    let t = FreeTree::with_range(0x1000, 0x9000).unwrap();
    assert_eq!(t.iter().collect::<Vec<_>>(), [(0x1000, 0x9000)]);
    assert_eq!(t.free_bytes(), 0x8000);
    assert_eq!(t.largest(), 0x8000);
    assert!(FreeTree::with_range(5, 5).unwrap().is_empty());
    assert_eq!(
        FreeTree::with_range(6, 5).unwrap_err(),
        FreeTreeError::InvalidRange { start: 6, end: 5 }
    );
    let mut t = FreeTree::new();
    assert_eq!(
        t.insert_merge(9, 9),
        Err(FreeTreeError::InvalidRange { start: 9, end: 9 })
    );
    assert_eq!(
        t.alloc_at(9, 3),
        Err(FreeTreeError::InvalidRange { start: 9, end: 3 })
    );
    assert_eq!(t.largest(), 0);
}

#[test]
fn four_fit_cases() {
    let mut t = FreeTree::with_range(0, 100).unwrap();
    // Left edge.
    assert_eq!(t.alloc(10, 1, 0, 100), Some(0));
    assert_eq!(t.iter().collect::<Vec<_>>(), [(10, 100)]);
    // No edge (split) through alignment: 16-aligned block inside [10, 100).
    assert_eq!(t.alloc(8, 16, 0, 100), Some(16));
    assert_eq!(t.iter().collect::<Vec<_>>(), [(10, 16), (24, 100)]);
    assert_eq!(t.len(), 2);
    // Right edge through vend.
    assert_eq!(t.alloc(6, 2, 94, 100), Some(94));
    assert_eq!(t.iter().collect::<Vec<_>>(), [(10, 16), (24, 94)]);
    // Full fit of the first area.
    assert_eq!(t.alloc(6, 1, 0, 100), Some(10));
    assert_eq!(t.iter().collect::<Vec<_>>(), [(24, 94)]);
    assert_eq!(t.free_bytes(), 70);
    check(&t);
}

#[test]
fn right_edge_case() {
    let mut t = FreeTree::with_range(0, 100).unwrap();
    assert_eq!(t.alloc(20, 1, 80, 100), Some(80));
    assert_eq!(t.iter().collect::<Vec<_>>(), [(0, 80)]);
    check(&t);
}

#[test]
fn lowest_fit_skips_small_and_misaligned_areas() {
    let mut t = FreeTree::new();
    for (s, e) in [(0, 4), (10, 30), (40, 48), (64, 80), (100, 200)] {
        t.insert_merge(s, e).unwrap();
    }
    check(&t);
    assert_eq!(t.lowest_fit(8, 1, 0, 1000), Some(10));
    assert_eq!(t.lowest_fit(8, 32, 0, 1000), Some(64));
    assert_eq!(t.lowest_fit(20, 1, 0, 1000), Some(10));
    assert_eq!(t.lowest_fit(21, 1, 0, 1000), Some(100));
    assert_eq!(t.lowest_fit(8, 1, 41, 1000), Some(64));
    assert_eq!(t.lowest_fit(7, 1, 41, 1000), Some(41));
    assert_eq!(t.lowest_fit(8, 1, 0, 47), Some(10));
    assert_eq!(t.lowest_fit(4, 1, 5, 9), None);
    assert_eq!(t.lowest_fit(101, 1, 0, 1000), None);
    assert_eq!(t.lowest_fit(0, 1, 0, 1000), None);
    assert_eq!(t.lowest_fit(4, 3, 0, 1000), None);
    assert_eq!(t.lowest_fit(4, 0, 0, 1000), None);
    assert_eq!(t.lowest_fit(4, 1, 10, 10), None);
    // Alignment larger than the whole space.
    assert_eq!(t.lowest_fit(1, 1 << 63, 0, u64::MAX), Some(0));
    assert_eq!(t.lowest_fit(2, 1 << 63, 1, u64::MAX), None);
}

#[test]
fn align_levels_index_prunes_exactly_and_agrees_with_max_size() {
    const M: u64 = 1 << 20;
    let mut a = FreeTree::<AlignLevels>::empty_with_capacity(8);
    let mut b = FreeTree::new();
    // Areas whose alignment padding decides which one fits.
    let areas = [
        (M / 2, 2 * M + M / 4),
        (3 * M, 5 * M - 1),
        (9 * M, 11 * M + 1),
        (12 * M, 20 * M),
    ];
    for (s, e) in areas {
        a.insert_merge(s, e).unwrap();
        b.insert_merge(s, e).unwrap();
    }
    a.check_invariants().unwrap();
    let caps = a.tree.aug(a.tree.root().unwrap()).caps();
    assert_eq!(caps[0], 8 * M);
    for (size, align, want) in [
        (M, 2 * M, Some(10 * M)),
        (M / 2, 2 * M, Some(4 * M)),
        (M, 1 << 16, Some(M / 2)),
        (2 * M, 1 << 14, Some(9 * M)),
        (8 * M, 1 << 21, Some(12 * M)),
        (3 * M, 4 * M, Some(12 * M)),
        (8 * M + 1, 1, None),
    ] {
        assert_eq!(
            a.lowest_fit(size, align, 0, u64::MAX),
            want,
            "size {size:#x} align {align:#x}"
        );
        assert_eq!(
            b.lowest_fit(size, align, 0, u64::MAX),
            want,
            "size {size:#x} align {align:#x}"
        );
    }
    assert_eq!(a.largest(), b.largest());
    assert_eq!(AlignLevels::level(1 << 15), 1);
    assert_eq!(AlignLevels::level(1 << 40), ALIGN_LEVELS.len() - 1);
    assert_eq!(AlignLevels::level(1), 0);
}

/// Nodes visited by the lowest-fit searches `f` runs on this thread.
fn visits(f: impl FnOnce()) -> usize {
    let before = VISITS.with(|v| v.get());
    f();
    VISITS.with(|v| v.get()) - before
}

/// A bound on the visits of a search that follows one root-to-leaf path (every node entered
/// once when descending, once when examined) in a tree of `n` areas: an AVL tree of `n`
/// nodes is at most `1.44 log2(n + 2)` high.
fn path_bound(n: usize) -> usize {
    3 * (usize::BITS - n.leading_zeros()) as usize + 2
}

const MIB: u64 = 1 << 20;
const PAGE: u64 = PAGE_SIZE;
/// Length of the free area above the misaligned ones when the space is not exhausted.
const TOP: u64 = 1 << 40;
/// Misaligned areas in the layouts below (fewer under Miri, which is slow).
const N: usize = if cfg!(miri) { 1 << 6 } else { 1 << 10 };

/// The adversarial layout: `n` free areas of 4 MiB + 4 KiB, each starting one page
/// past a 4 MiB boundary (8 MiB apart), so that none holds 4 MiB at 2 MiB or 4 MiB
/// alignment although every one is long enough; then, 4 MiB-aligned, one area of `top` bytes
/// (>= 4 MiB), where the lowest fit lies (returned).
fn misaligned_areas<I: FitIndex>(n: usize, top: u64) -> (FreeTree<I>, u64) {
    let base = 0xffff_c900_0000_0000u64;
    let mut t = FreeTree::<I>::empty_with_capacity(n + 1);
    for i in 0..n as u64 {
        let s = base + i * 8 * MIB + PAGE;
        t.insert_merge(s, s + 4 * MIB + PAGE).unwrap();
    }
    let fit = base + n as u64 * 8 * MIB;
    t.insert_merge(fit, fit + top).unwrap();
    (t, fit)
}

/// The regression test of the O(n) aligned search: with the tree the shards use (the
/// default index) and the method they call (`alloc_fast`), a 4 MiB block at 4 MiB or 2 MiB
/// alignment over misaligned areas that are all long enough is found after a bounded number
/// of visits (the exact walk's [`EXACT_TRIES`] misaligned areas, then one root-to-leaf path
/// of the adjusted search), not by visiting every area (what `alloc`'s exact walk,
/// production's search before, does: see the next test).
#[test]
fn production_aligned_search_visits_a_path_not_every_area() {
    for n in [N, 16 * N] {
        let bound = 2 * path_bound(n) + 2 * (EXACT_TRIES + 1);
        let (t, fit): (FreeTree, u64) = misaligned_areas(n, TOP);
        check(&t);
        for (size, align) in [(4 * MIB, 4 * MIB), (4 * MIB, 2 * MIB)] {
            let mut got = None;
            let v = visits(|| got = t.fast_fit(size, align, 0, u64::MAX));
            // Here the lowest fit lies in the long area: both searches agree.
            assert_eq!(got, Some(fit), "n {n} align {align:#x}");
            assert_eq!(t.lowest_fit(size, align, 0, u64::MAX), got);
            assert!(
                v <= bound,
                "n {n} align {align:#x}: {v} nodes visited, bound {bound}"
            );
            let mut c = t.clone();
            let v = visits(|| got = c.alloc_fast(size, align, 0, u64::MAX));
            assert_eq!(got, Some(fit));
            assert!(v <= bound, "alloc_fast: {v}");
            check(&c);
        }
        // Nothing fits 2 TiB: refused at the root.
        let v = visits(|| assert_eq!(t.fast_fit(2 * TOP, 4 * MIB, 0, u64::MAX), None));
        assert_eq!(v, 0);
    }
}

/// The exact walk (`lowest_fit`, `MaxSize`) on the same layout visits every misaligned area:
/// what the previous test rules out for the production path.
#[test]
fn exact_aligned_search_visits_every_misaligned_area() {
    let n = N;
    let (t, fit) = misaligned_areas::<MaxSize>(n, TOP);
    let mut got = None;
    let v = visits(|| got = t.lowest_fit(4 * MIB, 4 * MIB, 0, u64::MAX));
    assert_eq!(got, Some(fit));
    assert!(v > n, "{v}");
}

/// With at most [`EXACT_TRIES`] misaligned areas before the answer, the exact walk does not
/// give up: `alloc_fast` returns the lowest fit, as `alloc` does, not the long area above
/// (which Linux's adjusted search alone would return).
#[test]
fn fast_search_is_the_lowest_fit_within_its_tries() {
    let (mut t, short) = misaligned_areas::<MaxSize>(EXACT_TRIES, 4 * MIB);
    let long = short + 8 * MIB;
    t.insert_merge(long, long + 8 * MIB).unwrap();
    let v = visits(|| assert_eq!(t.fast_fit(4 * MIB, 4 * MIB, 0, u64::MAX), Some(short)));
    assert!(v <= 3 * (EXACT_TRIES + 1), "{v}");
    assert_eq!(t.alloc_fast(4 * MIB, 2 * MIB, 0, u64::MAX), Some(short));
}

/// Exhausted space: the exact walk gives up, no area is `size + align - PAGE` bytes long, so
/// the adjusted search finds nothing (Linux would fail here), and `alloc_fast` falls back
/// to the exact walk in full, which finds the one fit after visiting every misaligned
/// area: the documented O(n) fallback.
#[test]
fn fast_search_falls_back_to_the_exact_walk_when_no_area_is_long_enough() {
    let n = N;
    let (t, fit): (FreeTree, u64) = misaligned_areas(n, 4 * MIB);
    let adjusted = 4 * MIB + 4 * MIB - PAGE;
    let mut gave_up = false;
    let exact = t.walk::<false, true>(4 * MIB, 4 * MIB, 0, u64::MAX, 4 * MIB, 0, &mut gave_up);
    assert_eq!((exact, gave_up), (None, true));
    let mut gave_up = false;
    let linux = t.walk::<true, false>(4 * MIB, 4 * MIB, 0, u64::MAX, adjusted, 0, &mut gave_up);
    assert_eq!((linux, gave_up), (None, false));
    let mut got = None;
    let v = visits(|| got = t.fast_fit(4 * MIB, 4 * MIB, 0, u64::MAX));
    assert_eq!(got, Some(fit));
    assert!(v > n, "{v}");
    let mut c = t.clone();
    // The quick search stops before the exact walk: O(log n), no answer here (the shards
    // try every shard this way first), and nothing changed.
    let mut q = None;
    let v = visits(|| q = c.alloc_quick(4 * MIB, 4 * MIB, 0, u64::MAX));
    assert_eq!(q, None);
    assert!(v < 100, "{v}");
    assert_eq!(c.free_bytes(), t.free_bytes());
    assert!(!FreeTree::<MaxSize>::quick_is_exact(4 * MIB));
    assert!(FreeTree::<MaxSize>::quick_is_exact(PAGE));
    assert_eq!(c.alloc_fast(4 * MIB, 2 * MIB, 0, u64::MAX), Some(fit));
    assert_eq!(c.alloc_fast(4 * MIB, 2 * MIB, 0, u64::MAX), None);
    assert_eq!(c.alloc(4 * MIB, 2 * MIB, 0, u64::MAX), None);
    check(&c);
}

/// `alloc_fast` is not always the lowest fit for large alignments: once the exact walk has
/// given up, a fit in an area shorter than `size + align - PAGE` is passed over for a long
/// area above it. Page-aligned requests always get the lowest fit.
#[test]
fn fast_search_may_pass_over_a_lower_fit_in_a_shorter_area() {
    // EXACT_TRIES + 1 misaligned areas (the exact walk gives up), then exactly 4 MiB,
    // 4 MiB-aligned (the lowest fit), then 8 MiB, 4 MiB-aligned (the first long area).
    let (mut t, short) = misaligned_areas::<MaxSize>(EXACT_TRIES + 1, 4 * MIB);
    let long = short + 8 * MIB;
    t.insert_merge(long, long + 8 * MIB).unwrap();
    assert_eq!(t.lowest_fit(4 * MIB, 4 * MIB, 0, u64::MAX), Some(short));
    assert_eq!(t.fast_fit(4 * MIB, 4 * MIB, 0, u64::MAX), Some(long));
    // No other search for page alignment; the full exact walk where the adjusted one fails.
    assert_eq!(t.fast_fit(4 * MIB, PAGE, short, u64::MAX), Some(short));
    assert_eq!(
        t.fast_fit(4 * MIB, 4 * MIB, 0, long + 4 * MIB - 1),
        Some(short)
    );
    assert_eq!(t.alloc_fast(4 * MIB, 4 * MIB, 0, u64::MAX), Some(long));
    assert_eq!(t.alloc_fast(4 * MIB, 4 * MIB, 0, u64::MAX), Some(short));
    assert_eq!(
        t.alloc_fast(4 * MIB, 4 * MIB, 0, u64::MAX),
        Some(long + 4 * MIB)
    );
    assert_eq!(t.alloc_fast(4 * MIB, 4 * MIB, 0, u64::MAX), None);
    check(&t);
}

/// Whether `got` is a placement `alloc_fast` may choose, from the model before the
/// allocation: the lowest fit; or, only if the index does not prune `align` exactly (the
/// exact walk may then give up), the lowest fit among the areas of `size + align - PAGE`
/// bytes or more. So `None` exactly when nothing fits.
fn fast_allowed<I: FitIndex>(
    m: &Model,
    got: Option<u64>,
    size: u64,
    align: u64,
    vstart: u64,
    vend: u64,
) -> Result<(), String> {
    let lowest = m.lowest_fit(size, align, vstart, vend).map(|(_, a)| a);
    if got == lowest {
        return Ok(());
    }
    let need = size.saturating_add(align.saturating_sub(PAGE));
    let long = m.lowest_fit_in_areas_of(need, size, align, vstart, vend);
    if I::prunes_exactly(align) || long.is_none() || got != long {
        return Err(format!(
            "size {size:#x} align {align:#x} [{vstart:#x}, {vend:#x}): got {got:x?}, lowest \
             {lowest:x?}, lowest among areas of {need:#x} bytes {long:x?}"
        ));
    }
    Ok(())
}

#[test]
fn merges_with_both_neighbours() {
    let mut t = FreeTree::new();
    assert_eq!(t.insert_merge(0, 10), Ok((0, 10)));
    assert_eq!(t.insert_merge(20, 30), Ok((20, 30)));
    assert_eq!(t.insert_merge(40, 50), Ok((40, 50)));
    assert_eq!(t.insert_merge(10, 15), Ok((0, 15))); // previous only
    assert_eq!(t.insert_merge(35, 40), Ok((35, 50))); // next only
    assert_eq!(t.insert_merge(15, 20), Ok((0, 30))); // both
    assert_eq!(t.insert_merge(30, 35), Ok((0, 50))); // both
    assert_eq!(t.iter().collect::<Vec<_>>(), [(0, 50)]);
    assert_eq!(t.len(), 1);
    assert_eq!(t.free_bytes(), 50);
    check(&t);
}

#[test]
fn overlap_is_refused_and_changes_nothing() {
    let mut t = FreeTree::new();
    t.insert_merge(100, 200).unwrap();
    t.insert_merge(300, 400).unwrap();
    let before: Vec<_> = t.iter().collect();
    for (s, e) in [
        (150, 160),
        (50, 101),
        (199, 250),
        (100, 200),
        (250, 301),
        (0, 1000),
    ] {
        let err = t.insert_merge(s, e).unwrap_err();
        assert!(matches!(err, FreeTreeError::Overlap { start, end, .. } if start == s && end == e));
        assert_eq!(t.iter().collect::<Vec<_>>(), before);
        assert_eq!(t.free_bytes(), 200);
    }
    assert_eq!(
        t.insert_merge(150, 160),
        Err(FreeTreeError::Overlap {
            start: 150,
            end: 160,
            free_start: 100,
            free_end: 200
        })
    );
    check(&t);
}

#[test]
fn alloc_at_carves_exact_ranges() {
    let mut t = FreeTree::with_range(0, 100).unwrap();
    t.alloc_at(40, 60).unwrap();
    assert_eq!(t.iter().collect::<Vec<_>>(), [(0, 40), (60, 100)]);
    assert_eq!(
        t.alloc_at(30, 70),
        Err(FreeTreeError::NotFree { start: 30, end: 70 })
    );
    assert_eq!(
        t.alloc_at(100, 101),
        Err(FreeTreeError::NotFree {
            start: 100,
            end: 101
        })
    );
    t.alloc_at(0, 40).unwrap();
    t.alloc_at(90, 100).unwrap();
    t.alloc_at(60, 61).unwrap();
    assert_eq!(t.iter().collect::<Vec<_>>(), [(61, 90)]);
    assert_eq!(t.find_containing(61), Some((61, 90)));
    assert_eq!(t.find_containing(90), None);
    assert_eq!(t.find_containing(5), None);
    check(&t);
}

#[test]
fn reserve_makes_splits_allocation_free() {
    let mut t = FreeTree::with_range(0, 1 << 40).unwrap();
    t.reserve(64);
    assert!(t.spare_nodes() >= 64);
    for i in 0..64u64 {
        // 1-byte blocks at odd multiples of 4096: always a no-edge split after the first.
        assert!(t.alloc(1, 4096, (2 * i + 1) * 4096, 1 << 40).is_some());
    }
    assert_eq!(t.len(), 65);
    check(&t);
}

#[test]
fn page_granular_workload_matches_model() {
    page_workload::<MaxSize>(false);
}

#[test]
fn page_granular_workload_matches_model_align_levels() {
    page_workload::<AlignLevels>(false);
}

/// The same workload through `alloc_fast` (the shards' call), checked with [`fast_allowed`].
#[test]
fn page_granular_fast_workload_keeps_its_placement_property() {
    page_workload::<MaxSize>(true);
    page_workload::<AlignLevels>(true);
}

fn page_workload<I: FitIndex>(fast: bool) {
    // A vmalloc-like pseudo-random workload at page granularity with guard pages.
    let (lo, hi) = (
        0xffff_c900_0000_0000u64,
        0xffff_c900_0000_0000u64 + (1 << 30),
    );
    let mut t = FreeTree::<I>::from_range(lo, hi).unwrap();
    let mut m = Model::default();
    m.free(lo, hi);
    let mut live: Vec<(u64, u64)> = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let steps = if cfg!(miri) { 100 } else { 20_000 };
    for step in 0..steps {
        if live.len() < 300 && rnd() % 3 != 0 {
            let pages = 1 + rnd() % 64;
            let size = (pages + 1) * PAGE; // + guard page
            let align = PAGE << (rnd() % 11);
            if fast {
                let got = t.alloc_fast(size, align, lo, hi);
                fast_allowed::<I>(&m, got, size, align, lo, hi).unwrap();
                if let Some(a) = got {
                    assert!(m.alloc_at(a, a + size), "step {step}: {a:#x} not free");
                    live.push((a, a + size));
                }
            } else {
                let got = t.alloc(size, align, lo, hi);
                assert_eq!(got, m.alloc(size, align, lo, hi), "step {step}");
                if let Some(a) = got {
                    live.push((a, a + size));
                }
            }
        } else if !live.is_empty() {
            let (s, e) = live.swap_remove((rnd() % live.len() as u64) as usize);
            let (ms, me) = t.insert_merge(s, e).unwrap();
            assert!(ms <= s && e <= me);
            assert!(m.free(s, e));
        }
        if step % 97 == 0 {
            check(&t);
            assert_eq!(t.iter().collect::<Vec<_>>(), m.free);
        }
    }
    check(&t);
    assert_eq!(t.iter().collect::<Vec<_>>(), m.free);
}

#[derive(Debug, Clone)]
enum Op {
    Alloc {
        size: u64,
        align_shift: u32,
        vstart: u64,
        vlen: u64,
        /// Through `alloc_fast` (else `alloc`).
        fast: bool,
    },
    Free {
        pick: usize,
        trim_front: u64,
        trim_back: u64,
    },
    AllocAt {
        start: u64,
        len: u64,
    },
    BogusFree {
        start: u64,
        len: u64,
    },
}

const SPACE: u64 = 1024;

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (1u64..80, 0u32..8, 0u64..SPACE, 1u64..=SPACE + 64, any::<bool>())
            .prop_map(|(size, align_shift, vstart, vlen, fast)| Op::Alloc { size, align_shift, vstart, vlen, fast }),
        4 => (any::<usize>(), 0u64..4, 0u64..4)
            .prop_map(|(pick, trim_front, trim_back)| Op::Free { pick, trim_front, trim_back }),
        1 => (0u64..SPACE, 1u64..40).prop_map(|(start, len)| Op::AllocAt { start, len }),
        1 => (0u64..SPACE, 1u64..40).prop_map(|(start, len)| Op::BogusFree { start, len }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 3 } else { 128 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random alloc (size/align/range), exact-range alloc and frees of allocated pieces,
    /// against the linear-scan model: same addresses (`alloc_fast`: its documented placement,
    /// [`fast_allowed`]), same free set, invariants every step.
    #[test]
    fn matches_linear_scan_model(
        base in prop_oneof![Just(0u64), Just(0x1000u64), Just(u64::MAX - ((2 * SPACE) << 13)), 0u64..1 << 40],
        // Every length and offset is multiplied by 2^scale, so that the alignments (2^scale
        // times 1..128) cross the tracked alignment levels and the page size while `base` may
        // be misaligned.
        scale in prop_oneof![Just(0u32), Just(10u32), Just(12u32), Just(13u32)],
        ops in proptest::collection::vec(op(), 1..if cfg!(miri) { 25 } else { 200 }),
        align_levels in any::<bool>(),
    ) {
        if align_levels {
            run_model::<AlignLevels>(base, scale, ops)?;
        } else {
            run_model::<MaxSize>(base, scale, ops)?;
        }
    }
}

fn run_model<I: FitIndex>(base: u64, scale: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let sc = 1u64 << scale;
    let space = SPACE * sc;
    let mut t = FreeTree::<I>::from_range(base, base + space).unwrap();
    let mut m = Model::default();
    m.free(base, base + space);
    // Allocated ranges, which may be freed back in pieces.
    let mut live: Vec<(u64, u64)> = Vec::new();
    for op in ops {
        match op {
            Op::Alloc {
                size,
                align_shift,
                vstart,
                vlen,
                fast,
            } => {
                let (size, align) = (size * sc, sc << align_shift);
                let vstart = base + vstart * sc;
                let vend = vstart.saturating_add(vlen * sc);
                let got = if fast {
                    let got = t.alloc_fast(size, align, vstart, vend);
                    fast_allowed::<I>(&m, got, size, align, vstart, vend)
                        .map_err(TestCaseError::fail)?;
                    if let Some(a) = got {
                        prop_assert!(m.alloc_at(a, a + size));
                    }
                    got
                } else {
                    let got = t.alloc(size, align, vstart, vend);
                    prop_assert_eq!(got, m.alloc(size, align, vstart, vend));
                    got
                };
                if let Some(a) = got {
                    prop_assert_eq!(a % align, 0);
                    prop_assert!(vstart <= a && a + size <= vend);
                    live.push((a, a + size));
                }
            }
            Op::Free {
                pick,
                trim_front,
                trim_back,
            } => {
                if live.is_empty() {
                    continue;
                }
                let i = pick % live.len();
                let (s, e) = live.swap_remove(i);
                // Free a middle piece and keep the trimmed ends live.
                let (fs, fe) = (s + trim_front * sc, e.saturating_sub(trim_back * sc));
                if fs >= fe {
                    live.push((s, e));
                    continue;
                }
                if s < fs {
                    live.push((s, fs));
                }
                if fe < e {
                    live.push((fe, e));
                }
                let (ms, me) = t.insert_merge(fs, fe).unwrap();
                prop_assert!(m.free(fs, fe));
                prop_assert!(m.free.contains(&(ms, me)));
            }
            Op::AllocAt { start, len } => {
                let (s, e) = (base + start * sc, base + (start + len) * sc);
                let ok = t.alloc_at(s, e).is_ok();
                prop_assert_eq!(ok, m.alloc_at(s, e));
                if ok {
                    live.push((s, e));
                }
            }
            Op::BogusFree { start, len } => {
                let (s, e) = (base + start * sc, base + (start + len) * sc);
                // Only meaningful when it overlaps free space: must be refused untouched.
                if m.free.iter().any(|&(fs, fe)| fs < e && s < fe) {
                    let before: Vec<_> = t.iter().collect();
                    let refused =
                        matches!(t.insert_merge(s, e), Err(FreeTreeError::Overlap { .. }));
                    prop_assert!(refused);
                    prop_assert_eq!(t.iter().collect::<Vec<_>>(), before);
                }
            }
        }
        t.check_invariants()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(t.iter().collect::<Vec<_>>(), m.free.clone());
        prop_assert_eq!(
            t.largest(),
            m.free.iter().map(|&(s, e)| e - s).max().unwrap_or(0)
        );
    }
    // Free everything: back to the single initial range.
    for (s, e) in live {
        t.insert_merge(s, e).unwrap();
    }
    prop_assert_eq!(t.iter().collect::<Vec<_>>(), vec![(base, base + space)]);
    prop_assert_eq!(t.len(), 1);
    Ok(())
}
