//! The checking harnesses behind the cargo-fuzz targets (`fuzz_targets/*.rs` are thin
//! libFuzzer entry points calling `run` here).
//!
//! | target | module | against |
//! |---|---|---|
//! | `alloc_free` | [`alloc_free`] | a model of every live area, lazy range, vmap block, frame and user mapping of a small `Vmalloc` |
//! | `alloc_free_mt` | [`alloc_free_mt`] | two threads' own objects on one shared `Vmalloc` with purge workers: invariants that hold under any interleaving, the final state |
//! | `free_tree` | [`free_tree`] | a sorted `Vec` of free ranges, brute-force lowest fit |
//! | `pagetable` | [`pagetable`] | a `BTreeMap` page -> (frame, flags, leaf) per space, frame reference counts and contents |
//! | `llist` | [`llist`] | `VecDeque`s for the list and the detached chains |
//!
//! Each harness checks the model after every step and panics (a libFuzzer crash) on the
//! first difference, naming the step (`alloc_free` and `pagetable` check after every step
//! what the step can have changed, in time proportional to it, and everything every 16
//! steps and at the end; `alloc_free_mt` checks what holds under any interleaving after
//! every step and everything else at the end). Each module's documentation says what it
//! checks and what makes it fast. Inputs are decoded with `arbitrary` from derived
//! operation enums, so any byte string is a valid input: a few header fields, then one
//! operation after another until the bytes run out ([`ops_until_empty`]; `arbitrary`'s own
//! `Vec` decoding spends a continuation byte per element and stops at the first even one,
//! which would make most inputs one operation long).

pub mod alloc_free;
pub mod alloc_free_mt;
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

#[cfg(test)]
mod tests {
    use arbitrary::{Arbitrary, Unstructured};

    /// `(name, bytes)` of every token of a dictionary written by `make_dicts.py`.
    fn tokens(dict: &str) -> Vec<(String, Vec<u8>)> {
        dict.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (name, val) = l.split_once('=').expect("name=\"bytes\"");
                let hex = val.trim_matches('"');
                let bytes = hex
                    .split("\\x")
                    .filter(|s| !s.is_empty())
                    .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
                    .collect();
                (name.split('_').next().unwrap_or(name).to_string(), bytes)
            })
            .collect()
    }

    /// Every token decodes (followed by zeros) to the variant it is named after.
    fn check<T: for<'a> Arbitrary<'a> + std::fmt::Debug>(dict: &str, skip: usize) {
        let toks = tokens(dict);
        assert!(!toks.is_empty());
        for (name, bytes) in toks {
            let mut data = bytes[skip..].to_vec();
            data.resize(64, 0);
            let op = T::arbitrary(&mut Unstructured::new(&data)).expect("decodes");
            let dbg = format!("{op:?}");
            assert!(
                dbg.starts_with(&name) && !dbg[name.len()..].starts_with(char::is_alphanumeric),
                "token {name} decodes to {dbg}"
            );
        }
    }

    #[test]
    fn dictionaries_name_the_variants_they_encode() {
        check::<crate::alloc_free::Op>(include_str!("../dict/alloc_free.dict"), 0);
        check::<crate::alloc_free_mt::Op>(include_str!("../dict/alloc_free_mt.dict"), 1);
        check::<crate::free_tree::Op>(include_str!("../dict/free_tree.dict"), 0);
        check::<crate::pagetable::Op>(include_str!("../dict/pagetable.dict"), 0);
        check::<crate::llist::Op>(include_str!("../dict/llist.dict"), 0);
    }
}
