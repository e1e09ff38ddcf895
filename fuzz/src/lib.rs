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
//! operation enums, so any byte string is a valid input: a few header fields, then one
//! operation after another until the bytes run out ([`ops_until_empty`]; `arbitrary`'s own
//! `Vec` decoding spends a continuation byte per element and stops at the first even one,
//! which would make most inputs one operation long).

pub mod alloc_free;
pub mod free_tree;
pub mod llist;
pub mod pagetable;

use arbitrary::{Arbitrary, Unstructured};

/// Decode operations one after another until `u` is empty (a truncated last operation is
/// completed with zeros, as `arbitrary` does).
pub fn ops_until_empty<'a, T: Arbitrary<'a>>(u: &mut Unstructured<'a>) -> Vec<T> {
    let mut ops = Vec::new();
    while !u.is_empty() {
        match T::arbitrary(u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    ops
}
