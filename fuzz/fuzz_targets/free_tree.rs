//! `cargo +nightly fuzz run free_tree`: the augmented free tree against a brute-force model
//! (see `kvmalloc_fuzz::free_tree`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: kvmalloc_fuzz::free_tree::Input| {
    kvmalloc_fuzz::free_tree::run(&input);
});
