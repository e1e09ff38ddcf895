//! The test_vmalloc runner, the legacy baseline allocator and shared benchmark code.
//!
//! - [`impls`]: the [`VmallocImpl`] trait the runner and the criterion benchmarks drive, and
//!   its implementations (`sharded`, `single-lock`, `legacy`), built by
//!   [`AllocatorKind::build`];
//! - [`legacy`]: seed 003's Linux 3.x allocator as a whole vmalloc (the baseline);
//! - [`runner`]: the `test_vmalloc` program (lib/test_vmalloc.c + test_vmalloc.sh).

pub mod impls;
pub mod legacy;
pub mod peers;
pub mod runner;

pub use impls::{AllocatorKind, ImplConfig, ImplError, ImplStats, PageBatch, VmallocImpl};
