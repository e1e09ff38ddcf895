//! Thread-stack churn: `alloc_thread_stack_node` + `free_thread_stack` (a per-CPU cache of
//! stacks still mapped: no map, no unmap, no flush in the steady state; the reused stack is
//! cleared, 16 KiB of memset, as Linux clears it) against `vmalloc(THREAD_SIZE)` + `vfree`
//! (map four frames, unmap them, free lazily, a purge every `lazy_max_pages`) and against
//! `vzalloc(THREAD_SIZE)` + `vfree` (the same, zeroed: what Linux's uncached path does, its
//! `THREADINFO_GFP` has `__GFP_ZERO`), on the default instance.
//!
//! One thread, both sides back to back in one group (same load); the ratio is what
//! BENCHMARKS.md records. The instance uses a counting flush (as the runner does) so that
//! neither side pays for the TLB model's bookkeeping.
//!
//! Run: `cargo bench -p benches --bench stacks -- --warm-up-time 1 --measurement-time 3`.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use vmalloc::{NUMA_NO_NODE, THREAD_SIZE, TlbChoice, Vmalloc, VmallocConfig};

fn bench(c: &mut Criterion) {
    let vm = Vmalloc::new(VmallocConfig {
        tlb: TlbChoice::Counting,
        ..VmallocConfig::default()
    })
    .expect("instance");
    let mut g = c.benchmark_group("stacks/churn");
    g.bench_function("vmalloc+vfree", |b| {
        b.iter(|| {
            let s = vm.vmalloc(THREAD_SIZE).expect("vmalloc");
            vm.vfree(s).expect("vfree");
        })
    });
    g.bench_function("vzalloc+vfree", |b| {
        b.iter(|| {
            let s = vm.vzalloc(THREAD_SIZE).expect("vzalloc");
            vm.vfree(s).expect("vfree");
        })
    });
    g.bench_function("thread_stack", |b| {
        b.iter(|| {
            let s = vm.alloc_thread_stack_node(NUMA_NO_NODE).expect("stack");
            vm.free_thread_stack(s).expect("free");
        })
    });
    g.finish();
    let flushes = vm.tlb().stats().flushes;
    let frames = vm.frame_stats();
    let s = vm.alloc_thread_stack_node(NUMA_NO_NODE).expect("stack");
    vm.free_thread_stack(s).expect("free");
    println!(
        "stacks: cached stacks {}, a cached round trip moved {} frames and flushed {} times",
        vm.cached_thread_stacks(),
        vm.frame_stats().allocs - frames.allocs,
        vm.tlb().stats().flushes - flushes
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
