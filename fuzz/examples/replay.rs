//! Replay inputs through a harness without libFuzzer (for debugging a crash with plain
//! `eprintln!`/a debugger, or to check a corpus):
//!
//! ```text
//! cd fuzz && KVMALLOC_FUZZ_TRACE=1 cargo run --release --example replay -- alloc_free artifacts/alloc_free/crash-...
//! ```
//!
//! Every file (or every file of every directory) given is decoded exactly as the fuzz target
//! decodes it and run; the first failing input panics (its path was printed just before).

use arbitrary::Unstructured;
use std::path::{Path, PathBuf};

fn files(p: &Path) -> Vec<PathBuf> {
    if p.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(p)
            .expect("read dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        v.sort();
        v
    } else {
        vec![p.to_path_buf()]
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let target = args
        .next()
        .expect("usage: replay <target> <file or dir>...");
    let mut n = 0;
    for arg in args {
        for f in files(Path::new(&arg)) {
            let data = std::fs::read(&f).expect("read input");
            eprintln!("== {}", f.display());
            match target.as_str() {
                "alloc_free" => {
                    kvmalloc_fuzz::alloc_free::run(&kvmalloc_fuzz::alloc_free::Input::decode(&data))
                }
                "alloc_free_mt" => kvmalloc_fuzz::alloc_free_mt::run(
                    &kvmalloc_fuzz::alloc_free_mt::Input::decode(&data),
                ),
                "free_tree" => {
                    kvmalloc_fuzz::free_tree::run(&kvmalloc_fuzz::free_tree::Input::decode(&data))
                }
                "pagetable" => kvmalloc_fuzz::pagetable::run(&kvmalloc_fuzz::ops_until_empty(
                    &mut Unstructured::new(&data),
                )),
                "llist" => kvmalloc_fuzz::llist::run(&kvmalloc_fuzz::ops_until_empty(
                    &mut Unstructured::new(&data),
                )),
                other => panic!("unknown target {other}"),
            }
            n += 1;
        }
    }
    eprintln!("{n} inputs passed");
}
