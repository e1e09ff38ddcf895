//! `cargo +nightly fuzz run alloc_free`: the vmalloc API against its model (see
//! `kvmalloc_fuzz::alloc_free`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: kvmalloc_fuzz::alloc_free::Input| {
    kvmalloc_fuzz::alloc_free::run(&input);
});
