//! Loom models of the vmalloc crate live in `tests/`; run them with
//! `cargo test --features loom` at the workspace root.
