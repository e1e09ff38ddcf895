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

pub mod peers;
