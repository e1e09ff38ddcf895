//! `cargo +nightly fuzz run llist`: the lock-free list and its detached chains against
//! `VecDeque`s (see `kvmalloc_fuzz::llist`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|ops: Vec<kvmalloc_fuzz::llist::Op>| {
    kvmalloc_fuzz::llist::run(&ops);
});
