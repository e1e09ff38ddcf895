//! `cargo fuzz run llist`: the lock-free list and its detached chains against
//! `VecDeque`s (see `kvmalloc_fuzz::llist`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut u = arbitrary::Unstructured::new(data);
    kvmalloc_fuzz::llist::run(&kvmalloc_fuzz::ops_until_empty(&mut u));
});
