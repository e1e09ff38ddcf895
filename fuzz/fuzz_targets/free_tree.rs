//! `cargo fuzz run free_tree`: the augmented free tree against a brute-force model
//! (see `kvmalloc_fuzz::free_tree`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    kvmalloc_fuzz::free_tree::run(&kvmalloc_fuzz::free_tree::Input::decode(data));
});
