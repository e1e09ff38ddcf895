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
//! Run: `cargo bench -p benches --bench scale`. `SCALE_ONLY=kva,legacy` (names as in the
//! benchmark ids) limits the run, setup included, to those contenders.

use std::hint::black_box;
use std::time::Instant;

use benches::peers::{
    BTreeFirstFit, BuddyPeer, FreeListPeer, KvaPeer, LegacyKvaPeer, OffsetAllocPeer, PAGE,
    RangeAllocPeer, VaAllocator, VmemPeer,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

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

criterion_group!(benches, bench_scale);
criterion_main!(benches);
