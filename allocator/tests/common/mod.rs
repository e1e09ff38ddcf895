//! Helpers shared by the vmalloc integration tests.
#![allow(dead_code)]

use pagetable::{TlbModel, VirtAddr};
use vmalloc::{PurgeMode, Vmalloc, VmallocConfig};

/// A small heap-backed instance with synchronous purges (deterministic: no worker threads).
pub fn cfg(arena_mb: u64) -> VmallocConfig {
    let mut c = VmallocConfig::small_heap(arena_mb << 20);
    c.kva.purge_mode = PurgeMode::Synchronous;
    c
}

/// `cfg(16)` built.
pub fn vm() -> Vmalloc {
    Vmalloc::new(cfg(16)).expect("instance")
}

/// The instance's TLB model.
pub fn model(vm: &Vmalloc) -> &TlbModel {
    vm.tlb_model().expect("built with the TLB model")
}

/// `VirtAddr` from a raw kernel address.
pub fn va(a: u64) -> VirtAddr {
    VirtAddr::new_truncate(a)
}

/// What must be identical before and after a failed call (once purged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub frames_used: u64,
    pub frames_free: u64,
    pub kva_used: u64,
    pub kva_free: u64,
    pub kva_pending: u64,
    pub nr_busy: usize,
    pub lazy_pages: usize,
    pub vmap_blocks: usize,
    pub info: String,
}

/// Purge everything (fragmented blocks, dirty aliases, lazy lists), then snapshot.
pub fn snapshot(vm: &Vmalloc) -> Snapshot {
    vm.vm_unmap_aliases();
    let s = vm.stats();
    Snapshot {
        frames_used: s.frames.used,
        frames_free: s.frames.free,
        kva_used: s.kva.used,
        kva_free: s.kva.free,
        kva_pending: s.kva.pending,
        nr_busy: s.kva.nr_busy,
        lazy_pages: s.kva.lazy_pages,
        vmap_blocks: s.vmap_blocks,
        info: vm.vmallocinfo(),
    }
}

/// A byte pattern unique to `(seed, i)`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A small xorshift generator for tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
