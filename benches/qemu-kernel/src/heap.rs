//! The kernel heap behind `alloc` (the `Arc`s, `Vec`s and `Box`es of the crates): Talc, a
//! dlmalloc-style allocator with boundary tags and size bins (O(1) frees, near-constant
//! allocations), behind one [`RawSpinlock`], over a fixed region of RAM claimed at boot.
//!
//! Why Talc: the heap sees tens of thousands of small live objects at once (area
//! descriptors, frame lists, test bookkeeping) freed in every order from four CPUs; a plain
//! linked-list first fit degrades to walking every hole, and a buddy allocator merges by
//! searching its free lists. Why one lock without disabling interrupts: no interrupt
//! handler of this kernel allocates (the shootdown and wake-up handlers touch only atomics),
//! so the lock is never taken in interrupt context and a CPU waiting for it must keep
//! answering shootdown IPIs.

use pagetable::platform::RawSpinlock;
use talc::TalcLock;
use talc::source::Manual;

#[global_allocator]
static HEAP: TalcLock<RawSpinlock, Manual> = TalcLock::new(Manual);

/// Hand `[start, start + size)` (virtual, in the direct map) to the heap. Called once, before
/// the first allocation.
///
/// # Safety
/// The region must be RAM mapped read-write at that address for the kernel's whole life and
/// used by nothing else.
pub unsafe fn init(start: *mut u8, size: usize) {
    // SAFETY: forwarded to the caller (Talc's `claim` contract: nobody else touches it).
    let claimed = unsafe { HEAP.lock().claim(start, size) };
    assert!(claimed.is_some(), "heap region too small");
}

/// Bytes in live allocations and the heap's size.
pub fn usage() -> (usize, usize) {
    let talc = HEAP.lock();
    let c = talc.counters();
    (c.allocated_bytes, c.claimed_bytes)
}
