//! Allocation latency amid N live areas (N = 1 thousand, 100 thousand, 1 million): does the
//! cost of one 1-page (+ guard) alloc + free grow with the number of live areas?
//!
//! Setup (not timed), identical for every allocator: N times allocate 2 pages (a live
//! 1-page area + guard) then 1 page; free every 1-page area; settle (ours and the legacy
//! baseline purge their lazy lists). What is left is N live areas separated by N one-page
//! holes, none of which fits the measured request (2 pages): a first-fit list must step over
//! all of them, the legacy list walk over all the busy areas whenever its search cache is
//! dropped, an augmented tree descends O(log n) nodes.
//!
//! Measured, one iteration = one alloc of 2 pages + its free:
//! - `same-align`: every request page-aligned. The legacy allocator's `free_vmap_cache`
//!   keeps its walk short here (it resumes after the last allocation);
//! - `mixed-align`: requests alternate between 4 KiB and 8 KiB alignment, as calls from
//!   different callers do. A smaller alignment than the cached one drops the legacy cache
//!   (`align < cached_align`), so every other request walks the busy list from the start.
//!
//! Contenders: ours (`Kva`: sharded and single-lock), `legacy` (seed 003's KVA part), and the
//! peers of `benches::peers`. `range-alloc`, `free-list` and `vmem` are not set up at 1
//! million, because building the fragmented state is quadratic for them (1e12 steps):
//! `range-alloc` and `free-list` insert a freed range with a linear scan of the free list;
//! `vmem` 1.0.0 finds the boundary tag to free in a 64-bucket hash table keyed by
//! `FxHash(base) % 64`, and the Fx hash of a page-aligned address is a multiple of 4096, so
//! every allocation lands in bucket 0 and a free scans all live allocations. Their
//! 100-thousand figures are measured.
//!
//! Aligned search (`scale-aligned/N`): the shards' free tree alone (no `Kva`), holding N free
//! areas laid out against the search as in the issue that introduced these rows: N areas of
//! 4 MiB + 4 KiB, each starting one page past a 4 MiB boundary, so that every one is long
//! enough for a 4 MiB block but none holds one at 4 MiB or 2 MiB alignment; above them,
//! 4 MiB-aligned, the rest of the space (1 TiB free), where the lowest fit lies. One
//! iteration = one search for
//! - `4M-align-4M`: 4 MiB at 4 MiB alignment (a new vmap block);
//! - `4M-align-2M`: 4 MiB at 2 MiB alignment (a huge-page vmalloc).
//!
//! Contenders: `free-tree`, the production path: `FreeTree::fast_fit` (the search of
//! `alloc_fast`, which the shards call) on `FreeTree` with its default index (the type of the
//! shards' trees); `exact`, `FreeTree::lowest_fit` on the same tree, the exact walk that was
//! production's search before (it steps over all N areas). The `exhausted-` rows are
//! `free-tree` on the same layout with only 4 MiB free above: no area is long enough for
//! Linux's adjusted search, so they measure `alloc_fast`'s exact fallback (O(N)).
//!
//! Run: `cargo bench -p benches --bench scale`. `SCALE_ONLY=kva,legacy` (names as in the
//! benchmark ids) limits the run, setup included, to those contenders.

use std::hint::black_box;
use std::time::Instant;

use benches::peers::{
    BTreeFirstFit, BuddyPeer, FreeListPeer, KvaPeer, LegacyKvaPeer, OffsetAllocPeer, PAGE,
    RangeAllocPeer, VA_BASE, VaAllocator, VmemPeer,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vmalloc::internals::free_tree::FreeTree;

/// The managed span: 1 TiB (1 million areas of 3 pages take 12 GiB).
const SPAN: u64 = 1 << 40;
/// Live-area counts.
const SIZES: [usize; 3] = [1_000, 100_000, 1_000_000];
/// Above this many live areas, allocators whose setup is quadratic are skipped.
const QUADRATIC_LIMIT: usize = 100_000;

/// Every contender for `n` live areas, each with whether its setup is quadratic.
fn contenders(n: usize) -> Vec<(Box<dyn VaAllocator>, bool)> {
    let mut v: Vec<(Box<dyn VaAllocator>, bool)> = Vec::new();
    match KvaPeer::sharded(SPAN) {
        Ok(k) => v.push((Box::new(k), false)),
        Err(e) => eprintln!("scale: ours (sharded) unavailable: {e}"),
    }
    match KvaPeer::single_lock(SPAN) {
        Ok(k) => v.push((Box::new(k), false)),
        Err(e) => eprintln!("scale: ours (single lock) unavailable: {e}"),
    }
    v.push((Box::new(LegacyKvaPeer::new(SPAN)), false));
    v.push((Box::new(RangeAllocPeer::new(SPAN)), true));
    match OffsetAllocPeer::new(SPAN, u32::try_from(2 * n + 4096).unwrap_or(u32::MAX)) {
        Ok(p) => v.push((Box::new(p), false)),
        Err(e) => eprintln!("scale: offset-allocator unavailable: {e}"),
    }
    match FreeListPeer::new(SPAN) {
        Ok(p) => v.push((Box::new(p), true)),
        Err(e) => eprintln!("scale: free-list unavailable: {e}"),
    }
    match VmemPeer::new(SPAN) {
        Ok(p) => v.push((Box::new(p), true)),
        Err(e) => eprintln!("scale: vmem unavailable: {e}"),
    }
    match BuddyPeer::new(SPAN) {
        Ok(p) => v.push((Box::new(p), false)),
        Err(e) => eprintln!("scale: buddy unavailable: {e}"),
    }
    v.push((Box::new(BTreeFirstFit::new(SPAN)), false));
    v
}

/// Build N live 2-page areas separated by 1-page holes; returns the live areas.
fn populate(a: &mut dyn VaAllocator, n: usize) -> Vec<u64> {
    let mut live = Vec::with_capacity(n);
    let mut holes = Vec::with_capacity(n);
    for _ in 0..n {
        live.push(
            a.alloc(2 * PAGE, PAGE)
                .unwrap_or_else(|| panic!("{}: no space", a.name())),
        );
        holes.push(
            a.alloc(PAGE, PAGE)
                .unwrap_or_else(|| panic!("{}: no space", a.name())),
        );
    }
    for h in holes {
        if let Err(e) = a.free(h, PAGE, PAGE) {
            panic!("{}: {e}", a.name());
        }
    }
    a.settle();
    live
}

fn pair(a: &mut dyn VaAllocator, align: u64) {
    let addr = a
        .alloc(2 * PAGE, align)
        .unwrap_or_else(|| panic!("{}: no space", a.name()));
    black_box(addr);
    if let Err(e) = a.free(addr, 2 * PAGE, align) {
        panic!("{}: {e}", a.name());
    }
}

/// The contenders `SCALE_ONLY` (comma-separated names) selects; all when unset.
fn selected(name: &str) -> bool {
    match std::env::var("SCALE_ONLY") {
        Ok(list) => list.split(',').any(|n| n.trim() == name),
        Err(_) => true,
    }
}

fn bench_scale(c: &mut Criterion) {
    for n in SIZES {
        let mut g = c.benchmark_group(format!("scale/{n}"));
        g.throughput(Throughput::Elements(1));
        for (mut a, quadratic) in contenders(n) {
            let name = a.name();
            if !selected(name) {
                continue;
            }
            if quadratic && n > QUADRATIC_LIMIT {
                eprintln!("scale: {name} skipped at {n} live areas (quadratic setup)");
                continue;
            }
            let t0 = Instant::now();
            let live = populate(a.as_mut(), n);
            eprintln!(
                "scale: {name}: {n} live areas set up in {:.2?}",
                t0.elapsed()
            );
            if let Some(cnt) = a.counters() {
                eprintln!("scale: {name} at {n} after setup: {cnt}");
            }
            g.bench_function(BenchmarkId::new("same-align", name), |b| {
                b.iter(|| pair(a.as_mut(), PAGE))
            });
            a.settle();
            let mut flip = false;
            g.bench_function(BenchmarkId::new("mixed-align", name), |b| {
                b.iter(|| {
                    flip = !flip;
                    pair(a.as_mut(), if flip { 2 * PAGE } else { PAGE })
                })
            });
            if let Some(cnt) = a.counters() {
                eprintln!("scale: {name} at {n}: {cnt}");
            }
            // Tear down outside the measurement (dropping a big allocator takes a while).
            let t0 = Instant::now();
            drop(live);
            drop(a);
            eprintln!("scale: {name}: torn down in {:.2?}", t0.elapsed());
        }
        g.finish();
    }
}

const MIB: u64 = 1 << 20;

/// The adversarial layout of the module documentation: `n` misaligned areas of 4 MiB +
/// 4 KiB, 8 MiB apart, then a 4 MiB-aligned free area of `top` bytes; returns the tree and
/// the lowest fit (the start of the top area). `FreeTree` with its default index is the type
/// of the shards' trees.
fn misaligned_areas(n: usize, top: u64) -> (FreeTree, u64) {
    let mut t = FreeTree::with_capacity(n + 1);
    for i in 0..n as u64 {
        let s = VA_BASE + i * 8 * MIB + PAGE;
        t.insert_merge(s, s + 4 * MIB + PAGE)
            .unwrap_or_else(|e| panic!("setup: {e}"));
    }
    let fit = VA_BASE + n as u64 * 8 * MIB;
    t.insert_merge(fit, fit + top)
        .unwrap_or_else(|e| panic!("setup: {e}"));
    (t, fit)
}

/// The two aligned rows (`prefix` + row name, contender `name`) of one search over a tree
/// whose answer is `fit`.
fn aligned_rows(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    prefix: &str,
    name: &str,
    fit: u64,
    search: impl Fn(u64, u64) -> Option<u64>,
) {
    for (row, align) in [("4M-align-4M", 4 * MIB), ("4M-align-2M", 2 * MIB)] {
        assert_eq!(search(4 * MIB, align), Some(fit), "{prefix}{row}/{name}");
        g.bench_function(BenchmarkId::new(format!("{prefix}{row}"), name), |b| {
            b.iter(|| black_box(search(black_box(4 * MIB), align)))
        });
    }
}

fn bench_aligned(c: &mut Criterion) {
    for n in SIZES {
        if !selected("free-tree") && !selected("exact") {
            return;
        }
        let mut g = c.benchmark_group(format!("scale-aligned/{n}"));
        g.throughput(Throughput::Elements(1));
        let (t, fit) = misaligned_areas(n, 1 << 40);
        if selected("free-tree") {
            aligned_rows(&mut g, "", "free-tree", fit, |size, align| {
                t.fast_fit(size, align, 0, u64::MAX)
            });
        }
        // Linear walks at large N: ten samples keep the run short.
        g.sample_size(10);
        if selected("exact") {
            aligned_rows(&mut g, "", "exact", fit, |size, align| {
                t.lowest_fit(size, align, 0, u64::MAX)
            });
        }
        drop(t);
        if selected("free-tree") {
            let (t, fit) = misaligned_areas(n, 4 * MIB);
            aligned_rows(&mut g, "exhausted-", "free-tree", fit, |size, align| {
                t.fast_fit(size, align, 0, u64::MAX)
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench_scale, bench_aligned);
criterion_main!(benches);
