//! `cargo +nightly fuzz run pagetable`: two address spaces against a `BTreeMap` model (see
//! `kvmalloc_fuzz::pagetable`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|ops: Vec<kvmalloc_fuzz::pagetable::Op>| {
    kvmalloc_fuzz::pagetable::run(&ops);
});
