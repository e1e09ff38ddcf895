//! The checking harnesses behind the cargo-fuzz targets (`fuzz_targets/*.rs` are thin
//! libFuzzer entry points calling `run` here).
//!
//! | target | module | against |
//! |---|---|---|
//! | `alloc_free` | [`alloc_free`] | a model of every live area, lazy range, vmap block, frame and user mapping of a small `Vmalloc` |
//! | `free_tree` | [`free_tree`] | a sorted `Vec` of free ranges, brute-force lowest fit |
//! | `pagetable` | [`pagetable`] | a `BTreeMap` page -> (frame, flags, leaf) per space, frame reference counts and contents |
//! | `llist` | [`llist`] | `VecDeque`s for the list and the detached chains |
//!
//! Each harness checks the model after every step and panics (a libFuzzer crash) on the
//! first difference, naming the step. Inputs are decoded with `arbitrary` from derived
//! operation enums, so any byte string is a valid input.

pub mod alloc_free;
pub mod free_tree;
pub mod llist;
pub mod pagetable;
