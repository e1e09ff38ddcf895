//! Area descriptors: [`AreaInfo`] and [`VmArea`] (what callers see), the internal
//! `VmapArea` descriptor (Linux's `struct vmap_area`) and its pool.
//!
//! # How it works
//!
//! A `VmapArea` holds an area's bounds, its [`AreaInfo`] and an [`LlistNode`] so it can sit
//! on a shard's lazy list without allocating. Descriptors live in a `DescPool`: a chunked
//! slab (`CHUNK` descriptors per heap block, blocks never freed before the pool) so their
//! addresses are stable and a raw `Desc` handle stays valid for the pool's life. Free
//! descriptors are threaded through their own llist link into `DescList`s: one per CPU
//! (embedded in the per-CPU cache slot of `pcpu`, under that slot's lock) and one
//! spare list in the pool. A CPU list refills from / spills to the pool list `BATCH` at a time,
//! so in steady state taking or returning a descriptor touches only the caller's CPU slot and
//! allocates nothing.
//!
//! # Ownership (the safety argument for every `unsafe` use of a `Desc`)
//!
//! At any time a descriptor is owned by exactly one of: a free `DescList` (per-CPU or the
//! pool's), an allocating thread between taking it and inserting it into a busy tree, a busy
//! tree entry (then it is read and written only under that shard's busy lock), a
//! [`RemovedArea`] token, a shard's lazy llist, or the purger's detached chain. Only the owner
//! reads or writes its fields; ownership moves through a lock hand-over or an llist
//! `Release` push / `Acquire` `del_all`, which orders the field writes before the next
//! owner's reads.
//!
//! # Locking
//!
//! The pool's spare list and chunk vector share one `Mutex` (taken once per `BATCH`
//! descriptors at most). A `DescList` has no lock of its own: its owner's lock protects it.

#[allow(unused_imports)]
use crate::prelude::*;
use core::cell::UnsafeCell;
use core::panic::Location;
use core::ptr::NonNull;
use pagetable::platform::Platform;

use crate::kva::flags::VmFlags;
use crate::kva::llist::{Chain, Intrusive, LlistNode};
use crate::sync::Mutex;

/// What an area is for: the part of Linux's `struct vm_struct` the KVA allocator keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AreaInfo {
    /// Kind of mapping.
    pub flags: VmFlags,
    /// Pages mapped in the area (the guard page excluded), set by the mapping layer.
    pub nr_pages: usize,
    /// Who allocated the area (Linux's `caller`, shown by `vmallocinfo`).
    pub caller: &'static Location<'static>,
    /// Physical address mapped, for `ioremap` areas.
    pub phys_addr: Option<u64>,
}

impl AreaInfo {
    /// Info with `flags`, no pages, no physical address, and the caller's location.
    #[track_caller]
    pub fn new(flags: VmFlags) -> Self {
        Self {
            flags,
            nr_pages: 0,
            caller: Location::caller(),
            phys_addr: None,
        }
    }
}

/// A snapshot of a live area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmArea {
    /// First address.
    pub start: u64,
    /// End (exclusive), the guard page included if the area has one.
    pub end: u64,
    /// The area's info.
    pub info: AreaInfo,
}

impl VmArea {
    /// `end - start`.
    #[inline]
    pub fn size(&self) -> u64 {
        self.end - self.start
    }

    /// Whether `addr` lies in `[start, end)`.
    #[inline]
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// The descriptor of an area (Linux's `struct vmap_area`): bounds, info and lazy-list link.
#[derive(Debug)]
pub(crate) struct VmapArea {
    va_start: u64,
    va_end: u64,
    info: AreaInfo,
    /// Pages the caller reported unmapped when freeing lazily (read by the purge).
    unmapped: usize,
    link: LlistNode,
}

crate::impl_llist_intrusive!(VmapArea, link);

/// A handle to a pooled [`VmapArea`]; see the module documentation for who may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Desc(NonNull<VmapArea>);

// SAFETY: a `Desc` is an address into a pool chunk that lives as long as the pool; access to
// the pointee is governed by the ownership rules of the module documentation (one owner at a
// time, hand-over through locks or llist release/acquire), not by the thread holding it.
unsafe impl Send for Desc {}
// SAFETY: as for `Send`; sharing the handle itself only shares an address.
unsafe impl Sync for Desc {}

impl Desc {
    /// The descriptor's `(start, end, info)`.
    ///
    /// # Safety
    ///
    /// The caller owns the descriptor or holds the lock of the busy tree that owns it.
    #[inline]
    pub(crate) unsafe fn read(self) -> VmArea {
        let p = self.0.as_ptr();
        // SAFETY: the pointee is live (pool chunks outlive every handle) and, by the caller's
        // ownership, nobody writes it concurrently. Fields are read through the raw pointer,
        // leaving the atomic link alone.
        unsafe {
            VmArea {
                start: (*p).va_start,
                end: (*p).va_end,
                info: (*p).info,
            }
        }
    }

    /// Set the bounds and info.
    ///
    /// # Safety
    ///
    /// The caller owns the descriptor (or holds the lock of the busy tree that owns it) and
    /// the descriptor is on no list.
    #[inline]
    pub(crate) unsafe fn write(self, start: u64, end: u64, info: AreaInfo) {
        let p = self.0.as_ptr();
        // SAFETY: live pointee, exclusive by the caller's ownership; the link is untouched.
        unsafe {
            (*p).va_start = start;
            (*p).va_end = end;
            (*p).info = info;
        }
    }

    /// Move the end of the area.
    ///
    /// # Safety
    ///
    /// As for [`Desc::write`].
    #[inline]
    pub(crate) unsafe fn set_end(self, end: u64) {
        // SAFETY: live pointee, exclusive by the caller's ownership; the link is untouched.
        unsafe { (*self.0.as_ptr()).va_end = end };
    }

    /// Record the pages the caller unmapped (before pushing on a lazy list).
    ///
    /// # Safety
    ///
    /// As for [`Desc::write`].
    #[inline]
    pub(crate) unsafe fn set_unmapped(self, pages: usize) {
        // SAFETY: live pointee, exclusive by the caller's ownership; the link is untouched.
        unsafe { (*self.0.as_ptr()).unmapped = pages };
    }

    /// The pages recorded by [`Desc::set_unmapped`].
    ///
    /// # Safety
    ///
    /// As for [`Desc::read`].
    #[inline]
    pub(crate) unsafe fn unmapped(self) -> usize {
        // SAFETY: live pointee, not written concurrently (caller's ownership).
        unsafe { (*self.0.as_ptr()).unmapped }
    }

    /// Change the info in place.
    ///
    /// # Safety
    ///
    /// As for [`Desc::write`].
    #[inline]
    pub(crate) unsafe fn update_info(self, f: impl FnOnce(&mut AreaInfo)) {
        let p = self.0.as_ptr();
        // SAFETY: live pointee, exclusive by the caller's ownership; only the `info` field is
        // borrowed mutably, so the atomic link is not aliased.
        f(unsafe { &mut (*p).info });
    }

    /// The llist link of the descriptor.
    #[inline]
    pub(crate) fn node(self) -> NonNull<LlistNode> {
        VmapArea::to_node(self.0)
    }

    /// The descriptor whose link is `node`.
    ///
    /// # Safety
    ///
    /// `node` came from [`Desc::node`] of a descriptor of a live pool.
    #[inline]
    pub(crate) unsafe fn from_node(node: NonNull<LlistNode>) -> Desc {
        // SAFETY: per the caller, `node` is the link of a live pooled `VmapArea`.
        Desc(unsafe { VmapArea::from_node(node) })
    }
}

/// The ownership token of an area detached from the busy lookup by `Kva::remove`.
///
/// It must go back with `Kva::free_lazy` or `Kva::free_unused` of the allocator that issued
/// it; dropping it leaks the range (it is never handed out again) but is memory safe.
#[must_use = "a removed area must be returned with Kva::free_lazy or Kva::free_unused"]
#[derive(Debug)]
pub struct RemovedArea {
    pub(crate) desc: Desc,
    pub(crate) area: VmArea,
    pub(crate) owner: u64,
}

impl RemovedArea {
    /// First address of the area.
    #[inline]
    pub fn start(&self) -> u64 {
        self.area.start
    }

    /// End (exclusive), guard page included.
    #[inline]
    pub fn end(&self) -> u64 {
        self.area.end
    }

    /// Size in bytes.
    #[inline]
    pub fn size(&self) -> u64 {
        self.area.end - self.area.start
    }

    /// The area's info as it was when removed.
    #[inline]
    pub fn info(&self) -> &AreaInfo {
        &self.area.info
    }

    /// The whole snapshot.
    #[inline]
    pub fn area(&self) -> &VmArea {
        &self.area
    }
}

/// A list of free descriptors threaded through their links. Whole chains (a purge's detached
/// lazy list) are spliced in without touching their nodes, so recycling thousands of
/// descriptors costs O(1) and leaves their cache lines where they are.
#[derive(Debug, Default)]
pub(crate) struct DescList {
    /// Single descriptors pushed one by one (popped first).
    chain: Chain,
    /// Whole spliced chains.
    more: Vec<Chain>,
    len: usize,
}

impl DescList {
    /// Number of descriptors on the list.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Take one descriptor.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<Desc> {
        let node = loop {
            if let Some(n) = self.chain.pop_front() {
                break n;
            }
            self.chain = self.more.pop()?;
        };
        self.len -= 1;
        // SAFETY: only pooled descriptors' links are ever put on a `DescList` (see `push`
        // and `splice`).
        Some(unsafe { Desc::from_node(node) })
    }

    /// Take over a whole detached chain of `len` free descriptors without walking it.
    ///
    /// # Safety
    ///
    /// Every node of `chain` is the link of a pooled descriptor owned by the caller (detached
    /// from every list and tree), and `len` is the chain's length.
    #[inline]
    pub(crate) unsafe fn splice(&mut self, chain: Chain, len: usize) {
        if !chain.is_empty() {
            self.more.push(chain);
            self.len += len;
        }
    }

    /// Give one descriptor back.
    ///
    /// # Safety
    ///
    /// The caller owns `d` (it is on no list, in no busy tree, in no token).
    #[inline]
    pub(crate) unsafe fn push(&mut self, d: Desc) {
        // SAFETY: the caller hands its exclusive ownership over to this list; the pool keeps
        // the node live.
        unsafe { self.chain.push_front(d.node()) };
        self.len += 1;
    }

    /// Move up to `n` descriptors from `self` to `to`.
    pub(crate) fn move_to(&mut self, to: &mut DescList, n: usize) {
        for _ in 0..n {
            let Some(d) = self.pop() else { break };
            // SAFETY: just popped: owned by us.
            unsafe { to.push(d) };
        }
    }
}

/// Descriptors per heap block of the slab: one heap allocation per two refills' worth of
/// descriptors ([`BATCH`]), so the slab grows rarely, in blocks of a few KiB.
#[cfg(not(feature = "loom"))]
const CHUNK: usize = 64;
/// Descriptors moved at once between a CPU list and the pool. A CPU list refills `BATCH` when
/// empty and spills `BATCH` past `2 * BATCH`, so whatever a CPU's mix of allocations and
/// frees, it takes the pool's lock at most once per 32 descriptors, and a CPU that frees what
/// it allocates never does.
#[cfg(not(feature = "loom"))]
pub(crate) const BATCH: usize = 32;
/// Under loom every descriptor's link is a modelled atomic: keep the slab small.
#[cfg(feature = "loom")]
const CHUNK: usize = 8;
/// Under loom: small batches (see `CHUNK`).
#[cfg(feature = "loom")]
pub(crate) const BATCH: usize = 4;

#[derive(Debug, Default)]
struct PoolInner {
    /// The slab's blocks, as leaked boxes; never shrunk while the pool lives (stable
    /// addresses), freed by `Drop`. Raw pointers, not `Box`es: every `Desc` is a raw pointer
    /// derived from its block, and moving a `Box` (into this vector, or by its reallocation)
    /// asserts unique ownership of the block, which would invalidate those pointers under
    /// Rust's aliasing model (Miri's Stacked Borrows caught exactly that).
    chunks: Vec<NonNull<[UnsafeCell<VmapArea>]>>,
    spare: DescList,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        for chunk in self.chunks.drain(..) {
            // SAFETY: each block was leaked from a `Box` by `DescPool::refill` and is freed
            // only here, once; the pool is being dropped, so no `Desc` of it is used again
            // (descriptors are plain data: nothing runs on them after this).
            drop(unsafe { Box::from_raw(chunk.as_ptr()) });
        }
    }
}

/// The descriptor slab with its spare list.
pub(crate) struct DescPool<P: Platform> {
    inner: Mutex<P, PoolInner>,
}

// SAFETY: the `UnsafeCell`s are only reached through `Desc` handles under the ownership rules
// of the module documentation; the chunk vector itself is behind the mutex.
unsafe impl<P: Platform> Sync for DescPool<P> {}
// SAFETY: the pool owns its chunks; moving it moves the boxes, not the descriptors.
unsafe impl<P: Platform> Send for DescPool<P> {}

impl<P: Platform> core::fmt::Debug for DescPool<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DescPool")
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl<P: Platform> DescPool<P> {
    /// An empty pool (the first request grows it).
    pub(crate) fn new() -> Self {
        Self {
            inner: Mutex::<P, _>::new(PoolInner::default()),
        }
    }

    /// Move `n` descriptors into `to`, growing the slab when the spare list runs short.
    pub(crate) fn refill(&self, to: &mut DescList, n: usize) {
        let mut inner = self.inner.lock();
        while inner.spare.len() < n {
            let chunk: Box<[UnsafeCell<VmapArea>]> = (0..CHUNK)
                .map(|_| {
                    UnsafeCell::new(VmapArea {
                        va_start: 0,
                        va_end: 0,
                        info: AreaInfo::new(VmFlags::empty()),
                        unmapped: 0,
                        link: LlistNode::new(),
                    })
                })
                .collect();
            // Leaked: the block lives (at a fixed address) until the pool is dropped.
            let block = NonNull::from(Box::leak(chunk));
            inner.chunks.push(block);
            // SAFETY: the block was just leaked and is freed only when the pool is dropped;
            // a shared view of its cells is all we take (each cell is reached through its
            // `UnsafeCell` pointer from here on).
            let cells = unsafe { block.as_ref() };
            for cell in cells {
                // `UnsafeCell::get` is never null.
                let Some(p) = NonNull::new(cell.get()) else {
                    continue;
                };
                // SAFETY: a brand-new descriptor, owned by nobody yet.
                unsafe { inner.spare.push(Desc(p)) };
            }
        }
        inner.spare.move_to(to, n);
    }

    /// Take back every descriptor of `from`.
    pub(crate) fn give_back(&self, from: &mut DescList) {
        if from.len() == 0 {
            return;
        }
        let mut inner = self.inner.lock();
        let n = from.len();
        from.move_to(&mut inner.spare, n);
    }

    /// Take back a whole detached chain of `len` free descriptors (O(1)).
    ///
    /// # Safety
    ///
    /// As for [`DescList::splice`].
    pub(crate) unsafe fn give_back_chain(&self, chain: Chain, len: usize) {
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.lock().spare.splice(chain, len) };
    }

    /// Descriptors ever created (slab size).
    pub(crate) fn capacity(&self) -> usize {
        self.inner.lock().chunks.len() * CHUNK
    }

    /// Descriptors on the spare list.
    #[cfg(all(test, not(feature = "loom")))]
    pub(crate) fn spare(&self) -> usize {
        self.inner.lock().spare.len()
    }
}

impl DescList {
    /// One descriptor, refilling `BATCH` from `pool` if empty.
    #[inline]
    pub(crate) fn get<P: Platform>(&mut self, pool: &DescPool<P>) -> Desc {
        loop {
            if let Some(d) = self.pop() {
                return d;
            }
            pool.refill(self, BATCH);
        }
    }

    /// Give `d` back, spilling `BATCH` to `pool` past `2 * BATCH`.
    ///
    /// # Safety
    ///
    /// As for [`DescList::push`].
    #[inline]
    pub(crate) unsafe fn put<P: Platform>(&mut self, pool: &DescPool<P>, d: Desc) {
        // SAFETY: forwarded from the caller.
        unsafe { self.push(d) };
        if self.len > 2 * BATCH {
            self.spill(pool);
        }
    }

    /// Move `BATCH` descriptors to `pool` (the list grew past `2 * BATCH`).
    #[cold]
    fn spill<P: Platform>(&mut self, pool: &DescPool<P>) {
        let mut spill = DescList::default();
        self.move_to(&mut spill, BATCH);
        pool.give_back(&mut spill);
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;
    use pagetable::platform::StdPlatform;

    #[test]
    fn descriptors_round_trip_and_are_stable() {
        let pool = DescPool::<StdPlatform>::new();
        let mut cpu = DescList::default();
        let a = cpu.get(&pool);
        assert_eq!(pool.capacity(), CHUNK);
        assert_eq!(cpu.len(), BATCH - 1);
        let info = AreaInfo::new(VmFlags::ALLOC);
        // SAFETY: `a` was just taken: we own it.
        unsafe { a.write(0x1000, 0x3000, info) };
        // SAFETY: still ours.
        let v = unsafe { a.read() };
        assert_eq!((v.start, v.end, v.info), (0x1000, 0x3000, info));
        assert_eq!(v.size(), 0x2000);
        assert!(v.contains(0x2fff) && !v.contains(0x3000));
        // SAFETY: still ours.
        unsafe { a.update_info(|i| i.nr_pages = 2) };
        // SAFETY: still ours.
        assert_eq!(unsafe { a.read() }.info.nr_pages, 2);
        // The node maps back to the same descriptor.
        // SAFETY: the node came from `Desc::node` of a live pooled descriptor.
        assert_eq!(unsafe { Desc::from_node(a.node()) }, a);
        // SAFETY: we own `a`.
        unsafe { cpu.put(&pool, a) };
        assert_eq!(cpu.len(), BATCH);
    }

    #[test]
    fn lists_spill_and_refill_in_batches() {
        let pool = DescPool::<StdPlatform>::new();
        let mut cpu = DescList::default();
        let taken: Vec<Desc> = (0..200).map(|_| cpu.get(&pool)).collect();
        let mut seen = std::collections::HashSet::new();
        assert!(
            taken.iter().all(|d| seen.insert(d.0)),
            "a descriptor was handed out twice"
        );
        for d in taken {
            // SAFETY: every descriptor taken above is ours.
            unsafe { cpu.put(&pool, d) };
            assert!(cpu.len() <= 2 * BATCH);
        }
        assert_eq!(cpu.len() + pool.spare(), pool.capacity());
        // Growing happened in whole chunks only as needed.
        assert!(pool.capacity() <= 200 + BATCH + CHUNK);
    }

    #[test]
    fn spliced_chains_are_popped_without_loss() {
        let pool = DescPool::<StdPlatform>::new();
        let mut cpu = DescList::default();
        let mut chain = Chain::new();
        let n = 70;
        let mut taken = std::collections::HashSet::new();
        for _ in 0..n {
            let d = cpu.get(&pool);
            assert!(taken.insert(d.0));
            // SAFETY: `d` is ours; the chain takes it over.
            unsafe { chain.push_front(d.node()) };
        }
        let before = cpu.len();
        // SAFETY: the chain holds exactly the `n` descriptors we own.
        unsafe { cpu.splice(chain, n) };
        // SAFETY: an empty chain is trivially fine.
        unsafe { cpu.splice(Chain::new(), 0) };
        assert_eq!(cpu.len(), before + n);
        let mut back = std::collections::HashSet::new();
        while let Some(d) = cpu.pop() {
            back.insert(d.0);
        }
        assert!(taken.is_subset(&back));
        assert_eq!(cpu.len(), 0);
        let mut again = Chain::new();
        // SAFETY: the descriptors were popped: ours again.
        back.iter()
            .for_each(|&p| unsafe { again.push_front(Desc(p).node()) });
        let len = back.len();
        // SAFETY: as above.
        unsafe { pool.give_back_chain(again, len) };
        assert_eq!(pool.spare(), pool.capacity());
    }

    #[test]
    fn info_new_records_caller() {
        let i = AreaInfo::new(VmFlags::MAP);
        assert!(i.caller.file().ends_with("area.rs"));
        assert_eq!(i.nr_pages, 0);
        assert_eq!(i.phys_addr, None);
    }
}
