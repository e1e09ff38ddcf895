//! `benches`: the criterion benchmarks (`benches/*.rs`), the `pair` profiling example, and the
//! [`peers`] they race against.
//!
//! ```text
//! cargo bench -p benches                      # every benchmark
//! cargo bench -p benches --bench contention   # one of them
//! cargo run --release -p benches --example pair -- --help
//! ```
//!
//! [`peers`]: other crates' virtual-range allocators, ours (`vmalloc::Kva`) and the legacy
//! baseline's KVA part (`vmalloc_legacy::kva`) behind one trait, plus what the benchmarks
//! share. Whole allocators are driven through `vmalloc_impls::VmallocImpl` (the `contention`
//! and `purge` benchmarks); the `test_vmalloc` runner is the `test-vmalloc` crate.

pub mod by_name;
pub mod pagetable_sides;
pub mod peers;

/// Thread counts for the multi-thread benchmarks (`contention`, `kva`): the comma-separated
/// list in `KVMALLOC_BENCH_THREADS` (for example `1,2,4,8,16`), else 1, 2 and the machine's
/// CPU count (without duplicates, ascending). Zeros and unparsable entries are ignored.
pub fn bench_threads() -> Vec<usize> {
    let from_env = std::env::var("KVMALLOC_BENCH_THREADS").ok().map(|v| {
        v.split(',')
            .filter_map(|t| t.trim().parse::<usize>().ok())
            .filter(|&t| t > 0)
            .collect::<Vec<_>>()
    });
    let mut v = match from_env {
        Some(v) if !v.is_empty() => v,
        _ => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            vec![1, 2, cpus]
        }
    };
    v.sort_unstable();
    v.dedup();
    v
}
