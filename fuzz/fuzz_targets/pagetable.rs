//! `cargo fuzz run pagetable`: two address spaces against a `BTreeMap` model (see
//! `kvmalloc_fuzz::pagetable`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    kvmalloc_fuzz::pagetable::run(&kvmalloc_fuzz::ops_until_empty(&mut u));
});
