//! `cargo fuzz run alloc_free_mt`: two threads replaying their own operation lists
//! on one shared vmalloc instance with background purge workers (see
//! `kvmalloc_fuzz::alloc_free_mt`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kvmalloc_fuzz::alloc_free_mt::run(&kvmalloc_fuzz::alloc_free_mt::Input::decode(data));
});
