//! Per-CPU caches of small free areas (Linux 6.9's per-node pools, vmem's quantum caches),
//! per-CPU descriptor lists and per-CPU lazy batches.
//!
//! # How it works
//!
//! Each CPU slot (`Platform::this_cpu()`) owns one [`Slot`] behind its own
//! cache-padded mutex. A slot holds, per size class (1 ..= [`MAX_CLASS_PAGES`] pages, guard
//! page included, default page alignment), a stack of free chunk starts of exactly that size,
//! all inside the slot's home shard; and a [`DescList`] of free descriptors. The allocator
//! takes a chunk and a descriptor under ONE uncontended lock; it refills an empty class with
//! a batch carved from the home shard's free tree (one tree lock per batch), and the purge
//! pushes purged small areas back here instead of merging them into the tree (bounded: a
//! class holds at most `2 * batch` chunks, the rest goes to the tree). When an allocation
//! finds no space anywhere, every slot is drained back into the trees and the search retried.
//!
//! A slot also holds a lazy batch: the `(start, end)` of areas freed lazily on this CPU
//! (`Kva::free_lazy`), waiting for the next purge, in an array of fixed capacity. The freeing
//! thread gives the area's descriptor straight back to the slot's list, so the next
//! allocation reuses a descriptor that is still in this CPU's cache, and the purger reads
//! the batch as one sequential array instead of chasing descriptor links written by other
//! CPUs. A full batch (the purge lagging far behind) makes `free_lazy` fall back to the
//! shard's lock-free lazy list. The batch's page count sits beside the slot's lock in an
//! atomic (`SlotCell::lazy_pages`), written only under the lock (a plain `load` + `store`:
//! the lock serialises the writers) and read without it (`Relaxed`) by the purge trigger.
//!
//! # Invariants
//!
//! * A cached chunk is free VA: in no tree, no busy lookup, no lazy list; it was flushed (it
//!   came from a tree or from a purge after its flush).
//! * Every chunk of a slot lies inside the slot's home shard; `Slot::bytes` is the sum of its
//!   chunks' sizes.
//! * A class never holds more than its capacity (its stack never reallocates); nor does the
//!   lazy batch.
//! * A lazy batch entry is an area removed from its busy tree and unmapped, not flushed yet:
//!   it counts as "pending" (not free) until the purge that takes it has flushed and merged
//!   it. `SlotCell::lazy_pages` is exactly the pages of the batch (changed under the lock).
//!
//! # Locking
//!
//! A slot's mutex protects the whole slot. Lock order: a slot lock may be held while taking a
//! shard's free-tree lock (batch refill); never the reverse. The purge pushes into slots and
//! merges into trees in separate critical sections. Correctness never depends on a thread
//! staying on its CPU: a migrated thread just uses another slot's lock.

#[allow(unused_imports)]
use crate::prelude::*;
use crossbeam_utils::CachePadded;
use pagetable::PAGE_SIZE;
use pagetable::platform::Platform;

use crate::kva::area::{Desc, DescList, DescPool};
use crate::kva::llist::Chain;
use crate::sync::{AtomicUsize, Mutex, MutexGuard, Ordering};

/// Largest cached size class, in pages (guard page included): requests of 1 to 16 pages,
/// page aligned, are served from the calling CPU's cache.
///
/// Why 16: small areas are where a per-CPU cache pays (their tree search and update cost as
/// much as a big area's, and they are most of the calls: test_vmalloc's fixed-size,
/// full-fit and long-busy-list tests allocate one page, a 2-page area). But every CPU slot
/// has every class, and a class may hold up to `2 * MAX_BATCH` = 32 chunks out of the trees,
/// so a slot can keep 32 × (1 + 2 + … + 16) = 4,352 pages (17 MiB) of VA; 16 classes keep
/// that small beside a shard. Linux 6.9 caches sizes up to 256 pages (`MAX_VA_SIZE_PAGES`),
/// but in one pool per node, not per CPU.
pub const MAX_CLASS_PAGES: usize = 16;
/// Largest number of chunks carved per refill (a class then holds at most twice that).
///
/// Why 16: a refill takes the home shard's free-tree lock once for up to 16 chunks, so the
/// small-allocation path locks a tree at most once per 16 allocations of a class, while the
/// cached VA stays bounded (see [`MAX_CLASS_PAGES`]). Small shards get smaller batches (a
/// refill carves at most 1/64 of a shard).
const MAX_BATCH: usize = 16;

/// The class index of a request of `size` bytes aligned to `align`, if cacheable.
#[inline]
pub(crate) fn class_of(size: u64, align: u64) -> Option<usize> {
    let pages = size / PAGE_SIZE;
    (align <= PAGE_SIZE && pages >= 1 && pages as usize <= MAX_CLASS_PAGES)
        .then(|| pages as usize - 1)
}

/// Bytes of a chunk of class `class`.
#[inline]
pub(crate) fn class_bytes(class: usize) -> u64 {
    (class as u64 + 1) * PAGE_SIZE
}

/// One CPU's cache.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Free descriptors of this CPU.
    descs: DescList,
    /// Free chunk starts per class; capacity fixed at construction.
    classes: Box<[Vec<u64>]>,
    /// Bytes of VA held in `classes`.
    bytes: u64,
    /// Lazily freed areas `(start, end)` waiting for a purge; capacity fixed at construction.
    lazy: Vec<(u64, u64)>,
    /// Pages the callers reported unmapped for the areas of `lazy`.
    lazy_unmapped: u64,
}

/// What a purge took from a slot's lazy batch.
#[derive(Debug, Default)]
pub(crate) struct LazyTaken {
    /// Areas taken.
    pub(crate) areas: usize,
    /// Pages their callers reported unmapped.
    pub(crate) unmapped: u64,
}

impl Slot {
    fn new(caps: &[usize], lazy_cap: usize) -> Self {
        Self {
            descs: DescList::default(),
            classes: caps.iter().map(|&c| Vec::with_capacity(c)).collect(),
            bytes: 0,
            lazy: Vec::with_capacity(lazy_cap),
            lazy_unmapped: 0,
        }
    }

    /// A free descriptor from this CPU's list (refilled from `pool` in batches).
    #[inline]
    pub(crate) fn take_desc<P: Platform>(&mut self, pool: &DescPool<P>) -> Desc {
        self.descs.get(pool)
    }

    /// Give descriptor `d` back to this CPU's list (spilling to `pool` past a bound).
    ///
    /// # Safety
    ///
    /// As for [`DescList::put`]: the caller owns `d` and nothing refers to it any more.
    #[inline]
    pub(crate) unsafe fn put_desc<P: Platform>(&mut self, pool: &DescPool<P>, d: Desc) {
        // SAFETY: forwarded from the caller.
        unsafe { self.descs.put(pool, d) };
    }

    /// Take a purged chain of `n` free descriptors onto this CPU's list; past `bound`
    /// descriptors the excess (down to `bound / 2`) is returned for the pool.
    ///
    /// # Safety
    ///
    /// As for [`DescList::splice`]: the chain's descriptors are free and owned by the caller.
    #[inline]
    pub(crate) unsafe fn splice_descs(&mut self, chain: Chain, n: usize, bound: usize) -> DescList {
        // SAFETY: forwarded from the caller.
        unsafe { self.descs.splice(chain, n) };
        let mut spill = DescList::default();
        if self.descs.len() > bound {
            let excess = self.descs.len() - bound / 2;
            self.descs.move_to(&mut spill, excess);
        }
        spill
    }

    /// Queue the lazily freed area `[start, end)` (`unmapped` pages unmapped by the caller);
    /// `false` (nothing done) if the batch is full. The caller raises the slot's
    /// `lazy_pages` under the same lock.
    #[inline]
    pub(crate) fn push_lazy(&mut self, start: u64, end: u64, unmapped: usize) -> bool {
        if self.lazy.len() == self.lazy.capacity() {
            return false;
        }
        self.lazy.push((start, end));
        self.lazy_unmapped += unmapped as u64;
        true
    }

    /// The lazily freed areas waiting here.
    #[inline]
    pub(crate) fn lazy(&self) -> &[(u64, u64)] {
        &self.lazy
    }

    /// Take the whole lazy batch, leaving `spare` (an empty array, normally of the same
    /// capacity: it bounds the new batch) in its place. O(1), so the freeing CPU never waits
    /// on a walk of the batch: the caller counts the pages after dropping the lock, and
    /// zeroes the slot's `lazy_pages` under it.
    #[inline]
    pub(crate) fn swap_lazy(&mut self, mut spare: Vec<(u64, u64)>) -> (Vec<(u64, u64)>, LazyTaken) {
        spare.clear();
        let batch = core::mem::replace(&mut self.lazy, spare);
        let t = LazyTaken {
            areas: batch.len(),
            unmapped: core::mem::take(&mut self.lazy_unmapped),
        };
        (batch, t)
    }

    /// Take a chunk of class `class`.
    #[inline]
    pub(crate) fn pop(&mut self, class: usize) -> Option<u64> {
        let start = self.classes.get_mut(class)?.pop()?;
        self.bytes -= class_bytes(class);
        Some(start)
    }

    /// Cache a chunk of class `class`; `false` (nothing done) if the class is full.
    #[inline]
    pub(crate) fn push(&mut self, class: usize, start: u64) -> bool {
        let Some(stack) = self.classes.get_mut(class) else {
            return false;
        };
        if stack.len() == stack.capacity() {
            return false;
        }
        stack.push(start);
        self.bytes += class_bytes(class);
        true
    }

    /// Room left in class `class`.
    #[cfg(all(test, not(feature = "loom")))]
    pub(crate) fn room(&self, class: usize) -> usize {
        self.classes
            .get(class)
            .map_or(0, |s| s.capacity() - s.len())
    }

    /// Bytes of VA cached.
    #[inline]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Empty every class, calling `f(start, end)` per chunk.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(u64, u64)) {
        for (class, stack) in self.classes.iter_mut().enumerate() {
            for start in stack.drain(..) {
                f(start, start + class_bytes(class));
            }
        }
        self.bytes = 0;
    }

    /// Every cached chunk `(start, end)` (for invariant checks).
    pub(crate) fn chunks(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.classes
            .iter()
            .enumerate()
            .flat_map(|(c, s)| s.iter().map(move |&a| (a, a + class_bytes(c))))
    }
}

/// A slot's lock and, beside it (same cache line), the page count of its lazy batch.
#[derive(Debug)]
pub(crate) struct SlotCell<P: Platform> {
    slot: Mutex<P, Slot>,
    /// Pages of the areas in the slot's lazy batch: changed only under `slot`'s lock (by a
    /// `Relaxed` load + store, the lock serialising writers), read without it (`Relaxed`:
    /// the purge trigger's heuristic; exact when nothing runs).
    lazy_pages: AtomicUsize,
}

/// All CPU slots plus the per-class batch sizes.
#[derive(Debug)]
pub(crate) struct Pcpu<P: Platform> {
    slots: Box<[CachePadded<SlotCell<P>>]>,
    /// Chunks carved per refill, per class (0 when caching is off).
    batch: [usize; MAX_CLASS_PAGES],
}

impl<P: Platform> Pcpu<P> {
    /// `nr_cpus` slots; with `enabled`, classes sized for shards of `shard_bytes`: a refill
    /// carves at most 1/64 of a shard, so caches never hold more than a small fraction of the
    /// space (tiny test ranges get batches of one).
    /// With `enabled`, each slot's lazy batch holds up to `lazy_cap` areas (none otherwise).
    pub(crate) fn new(nr_cpus: usize, enabled: bool, shard_bytes: u64, lazy_cap: usize) -> Self {
        let shard_pages = (shard_bytes / PAGE_SIZE) as usize;
        let mut batch = [0; MAX_CLASS_PAGES];
        if enabled {
            for (c, b) in batch.iter_mut().enumerate() {
                *b = (shard_pages / (64 * (c + 1))).clamp(1, MAX_BATCH);
            }
        }
        let caps: Vec<usize> = batch.iter().map(|b| 2 * b).collect();
        let lazy_cap = if enabled { lazy_cap } else { 0 };
        let slots = (0..nr_cpus.max(1))
            .map(|_| {
                CachePadded::new(SlotCell {
                    slot: Mutex::<P, _>::new(Slot::new(&caps, lazy_cap)),
                    lazy_pages: AtomicUsize::new(0),
                })
            })
            .collect();
        Self { slots, batch }
    }

    /// Number of slots.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether small areas are cached at all.
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.batch[0] != 0
    }

    /// Chunks to carve when refilling class `class`.
    #[inline]
    pub(crate) fn batch(&self, class: usize) -> usize {
        self.batch.get(class).copied().unwrap_or(0)
    }

    /// Lock slot `cpu` (taken modulo the slot count; `this_cpu()` is always in range, so the
    /// division is off the fast path).
    #[inline]
    pub(crate) fn lock(&self, cpu: usize) -> MutexGuard<'_, P, Slot> {
        self.cell(cpu).slot.lock()
    }

    /// Slot `cpu` (modulo the slot count, as for [`Pcpu::lock`]) with its lazy-page counter.
    #[inline]
    pub(crate) fn cell(&self, cpu: usize) -> &SlotCell<P> {
        match self.slots.get(cpu) {
            Some(s) => s,
            None => &self.slots[cpu % self.slots.len()],
        }
    }

    /// Pages in every slot's lazy batch (`Relaxed` loads: a heuristic, exact when quiescent).
    #[inline]
    pub(crate) fn lazy_pages(&self) -> usize {
        self.slots
            .iter()
            .map(|s| s.lazy_pages.load(Ordering::Relaxed))
            .sum()
    }
}

impl<P: Platform> SlotCell<P> {
    /// Lock the slot.
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, P, Slot> {
        self.slot.lock()
    }

    /// Pages in the slot's lazy batch (`Relaxed`: the trigger's heuristic; exact when
    /// quiescent, and under the slot's lock).
    #[inline]
    pub(crate) fn lazy_pages(&self) -> usize {
        self.lazy_pages.load(Ordering::Relaxed)
    }

    /// Queue the lazily freed area `[start, end)` (`pages` pages, `unmapped` of them
    /// unmapped) in the batch of `slot`, this cell's slot, locked by the caller, and raise
    /// the page count (a `Relaxed` load + store: every writer holds the lock). Returns the
    /// count's old value, or `None` (nothing done) if the batch is full.
    #[inline]
    pub(crate) fn record_lazy(
        &self,
        slot: &mut Slot,
        start: u64,
        end: u64,
        pages: usize,
        unmapped: usize,
    ) -> Option<usize> {
        if !slot.push_lazy(start, end, unmapped) {
            return None;
        }
        let old = self.lazy_pages.load(Ordering::Relaxed);
        self.lazy_pages.store(old + pages, Ordering::Relaxed);
        Some(old)
    }

    /// Take the whole lazy batch, leaving `spare` in its place, and zero the page count, in
    /// one critical section of the slot's lock (O(1): see [`Slot::swap_lazy`]).
    #[inline]
    pub(crate) fn take_lazy(&self, spare: Vec<(u64, u64)>) -> (Vec<(u64, u64)>, LazyTaken) {
        let mut slot = self.slot.lock();
        let r = slot.swap_lazy(spare);
        self.lazy_pages.store(0, Ordering::Relaxed);
        r
    }

    /// Overwrite the page count (tests that corrupt it on purpose).
    #[cfg(all(test, not(feature = "loom")))]
    #[inline]
    pub(crate) fn set_lazy_pages_for_tests(&self, n: usize) {
        self.lazy_pages.store(n, Ordering::Relaxed);
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;
    use pagetable::platform::StdPlatform;

    #[test]
    fn classes() {
        assert_eq!(class_of(PAGE_SIZE, PAGE_SIZE), Some(0));
        assert_eq!(class_of(16 * PAGE_SIZE, 1), Some(15));
        assert_eq!(class_of(17 * PAGE_SIZE, PAGE_SIZE), None);
        assert_eq!(class_of(2 * PAGE_SIZE, 2 * PAGE_SIZE), None);
        assert_eq!(class_of(0, PAGE_SIZE), None);
        assert_eq!(class_bytes(1), 2 * PAGE_SIZE);
    }

    #[test]
    fn bounded_stacks_and_byte_count() {
        // 128 pages per shard: class 0 batches 2 chunks, capacity 4.
        let p = Pcpu::<StdPlatform>::new(2, true, 128 * PAGE_SIZE, 4);
        assert!(p.enabled());
        assert_eq!(p.batch(0), 2);
        assert_eq!(p.batch(15), 1);
        let mut s = p.lock(3);
        assert_eq!(s.room(0), 4);
        for i in 0..4 {
            assert!(s.push(0, i * PAGE_SIZE));
        }
        assert!(!s.push(0, 0x100000));
        assert!(s.push(1, 0x200000));
        assert_eq!(s.bytes(), 6 * PAGE_SIZE);
        assert_eq!(s.pop(0), Some(3 * PAGE_SIZE));
        assert_eq!(s.chunks().count(), 4);
        let mut got = Vec::new();
        s.drain(|a, b| got.push((a, b)));
        assert_eq!(got.len(), 4);
        assert!(got.contains(&(0x200000, 0x200000 + 2 * PAGE_SIZE)));
        assert_eq!(s.bytes(), 0);
        assert_eq!(s.pop(0), None);
    }

    #[test]
    fn lazy_batch_is_bounded_and_swapped_whole() {
        let p = Pcpu::<StdPlatform>::new(1, true, 128 * PAGE_SIZE, 2);
        let mut s = p.lock(0);
        assert!(s.push_lazy(0x1000, 0x3000, 1));
        assert!(s.push_lazy(0x5000, 0x6000, 1));
        assert!(!s.push_lazy(0x8000, 0x9000, 1), "capacity 2");
        let (batch, t) = s.swap_lazy(Vec::with_capacity(2));
        assert_eq!(batch, [(0x1000, 0x3000), (0x5000, 0x6000)]);
        let pages: u64 = batch.iter().map(|&(s, e)| (e - s) / PAGE_SIZE).sum();
        assert_eq!((t.areas, pages, t.unmapped), (2, 3, 2));
        assert!(s.lazy().is_empty());
        assert!(s.push_lazy(0x8000, 0x9000, 0));
        assert_eq!(s.lazy(), &[(0x8000, 0x9000)]);
        drop(s);
        p.cell(0).lazy_pages.store(1, Ordering::Relaxed);
        assert_eq!(p.lazy_pages(), 1);
        // Disabled caches keep no lazy batch either: free_lazy uses the shard lists.
        let q = Pcpu::<StdPlatform>::new(1, false, 128 * PAGE_SIZE, 2);
        assert!(!q.lock(0).push_lazy(0x1000, 0x2000, 1));
    }

    #[test]
    fn disabled_caches_hold_nothing() {
        let p = Pcpu::<StdPlatform>::new(1, false, 1 << 30, 4);
        assert!(!p.enabled());
        let mut s = p.lock(0);
        assert!(!s.push(0, 0));
        assert_eq!(s.room(0), 0);
    }
}
