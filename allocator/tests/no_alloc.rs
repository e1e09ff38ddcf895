//! The 1-page `vmalloc` + `vfree` pair performs no heap allocation once warm (a counting
//! global allocator, counting per thread).
#![cfg(not(feature = "loom"))]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pagetable::PAGE_SIZE;

/// Counts the allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded unchanged to `System`; the thread-local counter is
// const-initialised, so touching it never allocates (no recursion into the allocator).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded with the caller's layout, which meets `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through us) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded unchanged; `ptr`/`layout` come from `System` through us.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> u64 {
    ALLOCS.with(Cell::get)
}

#[test]
fn one_page_pair_does_not_allocate() {
    let vm = common::vm(); // synchronous purges: nothing runs on other threads
    let pairs = 2000;
    // Warm up: grow the descriptor pool, trees and caches, then purge them back.
    for _ in 0..2 * pairs {
        let a = vm.vmalloc(PAGE_SIZE).unwrap();
        vm.vfree(a).unwrap();
    }
    vm.purge_vmap_area_lazy();
    let before = allocs();
    for _ in 0..pairs {
        let a = vm.vmalloc(PAGE_SIZE).unwrap();
        vm.vfree(a).unwrap();
    }
    let during = allocs() - before;
    assert!(
        vm.stats().lazy_pages > 0,
        "no purge ran during the measured loop"
    );
    assert_eq!(
        during, 0,
        "{during} heap allocations in {pairs} 1-page vmalloc+vfree pairs"
    );
}
