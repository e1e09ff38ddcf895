//! Mapping, translating and unmapping 1 GiB of 4 KiB pages (262,144 pages): `pagetable`'s
//! range walks against the `x86_64` crate's `OffsetPageTable` (one `map_to` / `unmap` /
//! `translate_addr` per page, re-walking the tree each time).
//!
//! Both run in one process on the same heap arena, as `benches::pagetable_sides` sets them up
//! (shared with the `translate` example): the same frame allocator, the same data frames, the
//! same virtual range and flags.
//!
//! Each iteration maps (or unmaps) the whole range; the other half of the pair runs outside
//! the timed region (`iter_custom`). Tables stay allocated between iterations in both (neither
//! frees tables on unmap), so the steady state is measured. For each operation the two sides
//! run back to back (groups `pagetable/map`, `pagetable/translate`, `pagetable/unmap`, each
//! with `ours` and `x86_64`), so they see the same machine load. Throughput is in pages.
//!
//! Run: `cargo bench -p benches --bench pagetable -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::pagetable_sides::{Ours, PAGES, Setup, X86};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Run `before`, `timed`, `after` `iters` times; only `timed` is measured.
fn measure(
    iters: u64,
    mut before: impl FnMut(),
    mut timed: impl FnMut(),
    mut after: impl FnMut(),
) -> Duration {
    let mut t = Duration::ZERO;
    for _ in 0..iters {
        before();
        let start = Instant::now();
        timed();
        t += start.elapsed();
        after();
    }
    t
}

fn pagetable(c: &mut Criterion) {
    let s = Setup::new();
    let ours = Ours::new(&s);
    let mut x86 = X86::new(&s);
    // Both sides' tables exist before measuring (neither frees tables on unmap), so every
    // iteration measures the steady state.
    ours.map(&s);
    ours.unmap();
    x86.map(&s);
    x86.unmap();
    // The two sides run back to back per operation, so they see the same machine load.
    let mut g = c.benchmark_group("pagetable/map");
    g.throughput(Throughput::Elements(PAGES as u64));
    g.sample_size(10);
    g.bench_function("ours", |b| {
        b.iter_custom(|n| measure(n, || {}, || ours.map(&s), || ours.unmap()))
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| {
            let x = &mut x86;
            let mut t = Duration::ZERO;
            for _ in 0..n {
                let start = Instant::now();
                x.map(&s);
                t += start.elapsed();
                x.unmap();
            }
            t
        })
    });
    g.finish();

    ours.map(&s);
    x86.map(&s);
    let mut g = c.benchmark_group("pagetable/translate");
    g.throughput(Throughput::Elements(PAGES as u64));
    g.sample_size(10);
    g.bench_function("ours", |b| b.iter(|| black_box(ours.translate_all())));
    g.bench_function("x86_64", |b| b.iter(|| black_box(x86.translate_all())));
    g.finish();
    ours.unmap();
    x86.unmap();

    let mut g = c.benchmark_group("pagetable/unmap");
    g.throughput(Throughput::Elements(PAGES as u64));
    g.sample_size(10);
    g.bench_function("ours", |b| {
        b.iter_custom(|n| measure(n, || ours.map(&s), || ours.unmap(), || {}))
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| {
            let x = &mut x86;
            let mut t = Duration::ZERO;
            for _ in 0..n {
                x.map(&s);
                let start = Instant::now();
                x.unmap();
                t += start.elapsed();
            }
            t
        })
    });
    g.finish();
    // The x86_64 side's tables stay in the arena, dropped with it at exit.
}

criterion_group!(benches, pagetable);
criterion_main!(benches);
