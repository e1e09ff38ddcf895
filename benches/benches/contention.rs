//! 1-page `vmalloc` + `vfree` pairs on 1, 2 and the machine's CPU count of threads (or the
//! counts in `KVMALLOC_BENCH_THREADS`, e.g. `1,2,4,8,16`: [`benches::bench_threads`]), for
//! every implementation of [`VmallocImpl`] (`sharded`, `single-lock`, `legacy`): the kernel's
//! `fix_size_alloc_test` without the byte store, the workload of the Linux 6.9 "vmap nodes"
//! figures.
//!
//! One criterion iteration is one pair on every thread, so the reported throughput
//! (`Throughput::Elements(threads)`) is pairs per second over all threads, and the reported
//! time is the wall time per round of pairs. Threads are created once per sample and
//! released together by a barrier ([`run_together`]); creation is not timed. The instance is
//! built once per benchmark (its arena, page tables and caches warm up during criterion's
//! warm-up).
//!
//! A `control` row runs the same harness with no shared state at all (each thread spins on
//! its own xorshift state for about as long as a pair takes): its scaling is what the machine
//! gives at that moment (on a 2-CPU box shared with other processes, often less than 2x), the
//! ceiling for the allocators' rows.
//!
//! Run: `cargo bench -p benches --bench contention`.

use std::hint::black_box;

use benches::bench_threads;
use benches::peers::run_together;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use vmalloc_impls::{AllocatorKind, ImplConfig, VmallocImpl};

/// Page size of every implementation.
const PAGE: u64 = vmalloc_impls::PAGE_SIZE;

/// `iters` pairs on each of `threads` threads; the wall time of the whole round.
fn pairs(imp: &dyn VmallocImpl, threads: usize, iters: u64) -> std::time::Duration {
    run_together(threads, |_| {
        for _ in 0..iters {
            match imp.vmalloc(PAGE) {
                Ok(addr) => {
                    black_box(addr);
                    if let Err(e) = imp.vfree(addr) {
                        panic!("{}: vfree({addr:#x}): {e}", imp.name());
                    }
                }
                Err(e) => panic!("{}: vmalloc(4096): {e}", imp.name()),
            }
        }
    })
}

/// `iters` units of thread-private work on each of `threads` threads (the control row).
fn control(threads: usize, iters: u64) -> std::time::Duration {
    run_together(threads, |t| {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64 ^ t as u64;
        for _ in 0..iters {
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            black_box(x);
        }
    })
}

fn bench_contention(c: &mut Criterion) {
    let mut g = c.benchmark_group("contention");
    let counts = bench_threads();
    for &threads in &counts {
        g.throughput(Throughput::Elements(threads as u64));
        g.bench_with_input(BenchmarkId::new("control", threads), &threads, |b, &t| {
            b.iter_custom(|iters| control(t, iters))
        });
    }
    for kind in AllocatorKind::ALL {
        let imp = match kind.build(&ImplConfig::default()) {
            Ok(imp) => imp,
            Err(e) => {
                eprintln!("contention: skipping {kind}: {e}");
                continue;
            }
        };
        for &threads in &counts {
            g.throughput(Throughput::Elements(threads as u64));
            g.bench_with_input(
                BenchmarkId::new(kind.as_str(), threads),
                &threads,
                |b, &t| b.iter_custom(|iters| pairs(imp.as_ref(), t, iters)),
            );
        }
        imp.purge();
        let s = imp.stats();
        eprintln!(
            "contention: {kind}: after the runs: live areas {}, lazy pages {}, purges {}, TLB \
             flushes {} ({} pages)",
            s.live_areas, s.lazy_pages, s.purges, s.tlb_flushes, s.pages_flushed
        );
        if let Err(e) = imp.check_idle() {
            eprintln!("contention: {kind}: idle check failed: {e}");
        }
    }
    g.finish();
}

criterion_group!(benches, bench_contention);
criterion_main!(benches);
