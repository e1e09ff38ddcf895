//! `cargo fuzz run alloc_free`: the vmalloc API against its model (see
//! `kvmalloc_fuzz::alloc_free`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kvmalloc_fuzz::alloc_free::run(&kvmalloc_fuzz::alloc_free::Input::decode(data));
});
