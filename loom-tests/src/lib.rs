//! Loom models of the vmalloc crate live in `tests/`; run them with
//! `cargo test --features loom` at the workspace root (or `-p loom-tests` for these alone).
//!
//! This library holds what the models share (only built with the `loom` feature):
//!
//! * [`StaleTlb`], a [`TlbFlush`](pagetable::TlbFlush) that is also the oracle for
//!   premature reuse. A model calls [`StaleTlb::unmapped`] for a range right before it frees
//!   it lazily (the moment the range's page-table entries would have been cleared without a
//!   flush): its pages become *stale*, i.e. some CPU may still cache a translation for them.
//!   A flush covering a page makes it fresh again. [`StaleTlb::assert_fresh`] on a range the
//!   allocator just handed out fails if any of its pages is still stale: the range was reused
//!   before a flush covering its last unmapping had completed. Flushes also check that no two
//!   run at once (one purger at a time).
//! * [`tiny_kva`] / [`tiny_kva_with`], a `Kva` over a few pages starting at [`BASE`] with a
//!   given shape and purge mode, and the helpers the models share ([`alloc`], [`free_lazy`],
//!   [`assert_invariants`]).
//! * [`check`] / [`check_with`], which run a model under [`builder`] (the project's
//!   preemption bounds, overridable with `LOOM_MAX_PREEMPTIONS`) and print how many
//!   executions loom explored and how long it took.
//!
//! Locking: `StaleTlb`'s page bitmap is behind a loom mutex; its counters are loom atomics,
//! so every access is visible to the model checker.

// The links above name items that exist only with the `loom` feature.
#![cfg_attr(not(feature = "loom"), allow(rustdoc::broken_intra_doc_links))]

#[cfg(feature = "loom")]
mod support;

#[cfg(feature = "loom")]
pub use support::*;
