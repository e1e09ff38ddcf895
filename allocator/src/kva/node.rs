//! Nodes: what a shard keeps behind ONE lock for the fast paths (Linux 6.9's vmap node):
//! the busy index of the live areas starting in the shard, the pools of ready free areas of
//! the common sizes, and the lazy batch of areas freed and waiting for a purge.
//!
//! # How it works
//!
//! * **Busy index**: a [`BpTree`] from start to `(end, Rec)`, where a `Rec` is the area's
//!   info packed in 16 bytes (its caller, its flags and its page count in 32 bits each); an
//!   info that does not pack (an `ioremap` area's physical address, flags or page counts
//!   beyond 32 bits) is kept whole in a side map by start. This is the whole record of a live
//!   area: there is no descriptor object.
//! * **Pools** ([`Pools`], vmem's quantum caches, Linux 6.9's per-node pools): for each
//!   size of 1 to [`MAX_CLASS_PAGES`] pages, a stack of free areas of exactly that size
//!   inside the shard, refilled in batches from the shard's free tree for the smallest sizes
//!   and fed by the purge for all (pushed by a purge on the freeing thread, handed back in
//!   one piece by a background one and sorted in by the node's next pool miss).
//! * **Lazy batch**: the `(start, end)` of areas removed from the busy index and freed
//!   lazily, in an array of fixed capacity; a purge swaps it for an empty one under the lock.
//!   Its page count sits beside the lock in an atomic (written only under the lock, read
//!   without it by the purge trigger).
//!
//! An allocation from a pool is one critical section (pop + insert), a removal another, a
//! lazy free a third; with one shard per CPU the lock and everything it guards stay in the
//! CPU's cache.
//!
//! # Invariants
//!
//! * Busy entries start inside the shard, are disjoint, and `busy_bytes` is their total.
//! * A pooled area is free VA inside the shard (no tree, no busy entry, no lazy list holds
//!   it), flushed since its last unmapping (see [`Pools`] for the rest).
//! * A lazy batch entry is an area removed and unmapped but not flushed: "pending", never
//!   allocatable until the purge that takes it has flushed. The page counter is exactly the
//!   batch's pages (both change under the lock).
//!
//! # Locking
//!
//! The node's mutex guards all of the above. Lock order: purge lock -> node lock -> shard
//! free-tree locks (ascending); a node lock is never taken while holding a free-tree lock or
//! another node's lock.

#[allow(unused_imports)]
use crate::prelude::*;
use alloc::collections::BTreeMap;
use core::panic::Location;
use pagetable::platform::Platform;

use core::ptr::NonNull;

use crate::kva::area::{AreaInfo, VmArea};
use crate::kva::bptree::{BpTree, InsertError};
use crate::kva::flags::VmFlags;
use crate::kva::llist::{Chain, Intrusive, LlistNode};
#[allow(unused_imports)] // (MAX_CLASS_PAGES: the documentation's link)
use crate::kva::pools::{MAX_CLASS_PAGES, PoolShape, Pools};
use crate::sync::{AtomicUsize, Mutex, MutexGuard, Ordering};

/// Flags value of a [`Rec`] whose info lives in the side map.
const EXT: u32 = u32::MAX;

/// An area's info as the busy index holds it (16 bytes).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Rec {
    caller: &'static Location<'static>,
    flags: u32,
    nr_pages: u32,
}

impl Rec {
    /// A placeholder for unused slots.
    fn filler() -> Rec {
        Rec {
            caller: Location::caller(),
            flags: 0,
            nr_pages: 0,
        }
    }

    /// `info` packed, if it fits.
    #[inline]
    fn pack(info: &AreaInfo) -> Option<Rec> {
        let flags = u32::try_from(info.flags.bits())
            .ok()
            .filter(|&f| f != EXT)?;
        let nr_pages = u32::try_from(info.nr_pages).ok()?;
        info.phys_addr.is_none().then_some(Rec {
            caller: info.caller,
            flags,
            nr_pages,
        })
    }

    #[inline]
    fn unpack(self) -> AreaInfo {
        AreaInfo {
            flags: VmFlags::from_bits_retain(u64::from(self.flags)),
            nr_pages: self.nr_pages as usize,
            caller: self.caller,
            phys_addr: None,
        }
    }
}

/// A lazily freed area on a shard's overflow list: a heap node, recycled through its node's
/// spares (the list is the fallback of a full lazy batch, a purge lagging far behind).
///
/// Ownership: exactly one of the node's spare chain (under the node lock), a freeing thread
/// (between taking it and pushing it), the shard's overflow list, or the purger's detached
/// chain; fields are written only by the owner, the list's `Release` push / `Acquire`
/// `del_all` orders them for the purger.
pub(crate) struct LazyNode {
    link: LlistNode,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) unmapped: usize,
}

crate::impl_llist_intrusive!(LazyNode, link);

impl LazyNode {
    /// A new heap node holding `[start, end)`.
    pub(crate) fn boxed(start: u64, end: u64, unmapped: usize) -> NonNull<LazyNode> {
        NonNull::from(Box::leak(Box::new(LazyNode {
            link: LlistNode::new(),
            start,
            end,
            unmapped,
        })))
    }

    /// Free every node of `chain`.
    ///
    /// # Safety
    ///
    /// Every node of `chain` is the link of a `LazyNode` made by [`LazyNode::boxed`], owned by
    /// the chain, referred to by nothing else.
    pub(crate) unsafe fn free_chain(chain: Chain) {
        for link in chain {
            // SAFETY: per the contract, a leaked box owned by us; rebuilt and freed once.
            drop(unsafe { Box::from_raw(LazyNode::from_node(link).as_ptr()) });
        }
    }
}

/// What a node's lock guards.
#[derive(Debug)]
pub(crate) struct NodeState {
    busy: BpTree<Rec>,
    /// Infos that do not pack into a [`Rec`], by start.
    ext: BTreeMap<u64, AreaInfo>,
    busy_bytes: u64,
    /// Bytes ever removed from the busy index (monotonic; pending = removed - returned).
    removed: u64,
    pub(crate) pools: Pools,
    lazy: Vec<(u64, u64)>,
    /// Capacity of `lazy` (never grown).
    lazy_cap: usize,
    lazy_unmapped: u64,
    /// Free overflow nodes (see [`LazyNode`]), at most `lazy_cap` of them.
    spare: Chain,
    spare_len: usize,
}

// SAFETY: the spare chain's nodes are heap `LazyNode`s owned by this state alone (moving the
// state moves their ownership); everything else is plain data.
unsafe impl Send for NodeState {}

impl Drop for NodeState {
    fn drop(&mut self) {
        // SAFETY: the spare nodes are ours alone (see `give_spares`).
        unsafe { LazyNode::free_chain(core::mem::take(&mut self.spare)) };
    }
}

/// What a purge took from a node's lazy batch.
#[derive(Debug, Default)]
pub(crate) struct LazyTaken {
    /// Pages their callers reported unmapped.
    pub(crate) unmapped: u64,
    /// Pages of the areas taken.
    pub(crate) pages: usize,
}

impl NodeState {
    fn new(shape: &PoolShape, lazy_cap: usize) -> Self {
        Self {
            busy: BpTree::new(Rec::filler()),
            ext: BTreeMap::new(),
            busy_bytes: 0,
            removed: 0,
            pools: Pools::new(shape),
            lazy: Vec::with_capacity(lazy_cap),
            lazy_cap,
            lazy_unmapped: 0,
            spare: Chain::new(),
            spare_len: 0,
        }
    }

    /// A free overflow node, if one is spare (the caller owns it from now on).
    #[inline]
    pub(crate) fn take_spare(&mut self) -> Option<NonNull<LazyNode>> {
        let link = self.spare.pop_front()?;
        self.spare_len -= 1;
        // SAFETY: spare links are links of live `LazyNode`s (see `give_spares`).
        Some(unsafe { LazyNode::from_node(link) })
    }

    /// Keep the `n` free overflow nodes of `chain` for reuse, up to `lazy_cap` spares in all;
    /// past that they are freed.
    pub(crate) fn give_spares(&mut self, chain: Chain, n: usize) {
        if self.spare_len + n <= self.lazy_cap {
            self.spare.append(chain);
            self.spare_len += n;
            return;
        }
        // SAFETY: the caller hands over the chain's nodes, free heap `LazyNode`s.
        unsafe { LazyNode::free_chain(chain) };
    }

    #[inline]
    fn info_of(&self, start: u64, rec: Rec) -> AreaInfo {
        if rec.flags == EXT {
            if let Some(i) = self.ext.get(&start) {
                return *i;
            }
        }
        rec.unpack()
    }

    #[inline]
    fn area(&self, (start, end, rec): (u64, u64, Rec)) -> VmArea {
        VmArea {
            start,
            end,
            info: self.info_of(start, rec),
        }
    }

    /// Record the live area `[start, end)` with `info`. Refused (nothing changed) if the
    /// index is out of ids, or overlaps an entry (a bug: the space came from our trees).
    #[inline(always)]
    pub(crate) fn insert(
        &mut self,
        start: u64,
        end: u64,
        info: &AreaInfo,
    ) -> Result<(), InsertError> {
        let Some(rec) = Rec::pack(info) else {
            return self.insert_ext(start, end, info);
        };
        self.busy.insert(start, end, rec)?;
        self.busy_bytes += end - start;
        Ok(())
    }

    /// [`NodeState::insert`] of an info that does not pack: a marker in the index, the info
    /// in the side map (out of line: ioremap areas and the like).
    #[cold]
    #[inline(never)]
    fn insert_ext(&mut self, start: u64, end: u64, info: &AreaInfo) -> Result<(), InsertError> {
        let marker = Rec {
            caller: info.caller,
            flags: EXT,
            nr_pages: 0,
        };
        self.busy.insert(start, end, marker)?;
        self.ext.insert(start, *info);
        self.busy_bytes += end - start;
        Ok(())
    }

    /// Remove the live area starting at `start` if `check` accepts it: `Ok(None)` if there
    /// is none, `Err` (nothing changed) if `check` refuses. One descent of the index.
    #[inline]
    pub(crate) fn remove_checked<E>(
        &mut self,
        start: u64,
        check: impl FnOnce(&VmArea) -> Result<(), E>,
    ) -> Result<Option<VmArea>, E> {
        let ext = &self.ext;
        let mut seen = None;
        let r = self.busy.remove_checked(start, |s, e, rec| {
            let info = if rec.flags == EXT {
                ext.get(&s).copied().unwrap_or_else(|| rec.unpack())
            } else {
                rec.unpack()
            };
            let a = VmArea {
                start: s,
                end: e,
                info,
            };
            let r = check(&a);
            seen = Some(a);
            r
        })?;
        let Some((s, e, rec)) = r else {
            return Ok(None);
        };
        self.removed_from_index(s, e, rec);
        Ok(seen)
    }

    /// Remove the live area starting at `start`, whatever its info: its bounds, `None` if
    /// there is none (the fused remove + lazy free of `Inner::remove_free_lazy`).
    #[inline]
    pub(crate) fn remove_bounds(&mut self, start: u64) -> Option<(u64, u64)> {
        let r = self
            .busy
            .remove_checked(start, |_, _, _| Ok::<(), core::convert::Infallible>(()));
        let (s, e, rec) = match r {
            Ok(Some(x)) => x,
            Ok(None) => return None,
            Err(never) => match never {},
        };
        self.removed_from_index(s, e, rec);
        Some((s, e))
    }

    /// The bookkeeping of an entry `[s, e)` with record `rec` just removed from the index:
    /// its side-map info, the live bytes, the removed bytes.
    #[inline(always)]
    fn removed_from_index(&mut self, s: u64, e: u64, rec: Rec) {
        if rec.flags == EXT {
            self.ext.remove(&s);
        }
        self.busy_bytes -= e - s;
        self.removed += e - s;
    }

    /// The live area starting exactly at `start`.
    #[cfg(all(test, not(feature = "loom")))]
    pub(crate) fn get(&self, start: u64) -> Option<VmArea> {
        self.busy.get(start).map(|e| self.area(e))
    }

    /// The bounds of the live area starting exactly at `start`.
    #[inline]
    pub(crate) fn bounds(&self, start: u64) -> Option<(u64, u64)> {
        self.busy.get(start).map(|(s, e, _)| (s, e))
    }

    /// Move the end of the live area starting at `start` to `end` (`vrealloc` growing or
    /// trimming in place; the caller has made `[old end, end)` its own when growing); the
    /// byte count follows. Returns the old end, `None` if there is no such area.
    pub(crate) fn set_end(&mut self, start: u64, end: u64) -> Option<u64> {
        let old = self.busy.set_end(start, end)?;
        self.busy_bytes = self.busy_bytes + end - old;
        Some(old)
    }

    /// Change the info of the live area starting at `start`; `false` if there is none.
    pub(crate) fn update_info(&mut self, start: u64, f: impl FnOnce(&mut AreaInfo)) -> bool {
        let Some((_, _, rec)) = self.busy.get(start) else {
            return false;
        };
        let mut info = self.info_of(start, rec);
        f(&mut info);
        let new = match Rec::pack(&info) {
            Some(r) => {
                if rec.flags == EXT {
                    self.ext.remove(&start);
                }
                r
            }
            None => {
                self.ext.insert(start, info);
                Rec {
                    caller: info.caller,
                    flags: EXT,
                    nr_pages: 0,
                }
            }
        };
        if let Some(r) = self.busy.get_mut(start) {
            *r = new;
        }
        true
    }

    /// The live area containing `addr`.
    #[inline]
    pub(crate) fn find_containing(&self, addr: u64) -> Option<VmArea> {
        self.busy.find_containing(addr).map(|e| self.area(e))
    }

    /// The live areas overlapping `[start, end)`, ascending.
    pub(crate) fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = VmArea> + '_ {
        self.busy
            .iter_overlapping(start, end)
            .map(move |e| self.area(e))
    }

    /// Every live area, ascending.
    pub(crate) fn iter(&self) -> impl Iterator<Item = VmArea> + '_ {
        self.busy.iter().map(move |e| self.area(e))
    }

    /// Live areas.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.busy.len()
    }

    /// Bytes in live areas.
    #[inline]
    pub(crate) fn bytes(&self) -> u64 {
        self.busy_bytes
    }

    /// Bytes ever removed (see `Shard::pending`).
    #[inline]
    pub(crate) fn removed(&self) -> u64 {
        self.removed
    }

    /// Busy-index slots allocated (live areas it holds without growing).
    pub(crate) fn slots(&self) -> usize {
        self.busy.capacity()
    }

    /// The index's own invariants and the side map's agreement with it.
    pub(crate) fn check_index(&self) -> Result<(), String> {
        self.busy.check()?;
        let ext = self.busy.iter().filter(|e| e.2.flags == EXT).count();
        if ext != self.ext.len() || self.ext.keys().any(|&s| self.busy.get(s).is_none()) {
            return Err(format!(
                "{ext} packed-out records but {} side entries",
                self.ext.len()
            ));
        }
        Ok(())
    }

    /// The lazily freed areas waiting here.
    #[inline]
    pub(crate) fn lazy(&self) -> &[(u64, u64)] {
        &self.lazy
    }
}

/// A node: its lock and, beside it (same cache line), the page count of its lazy batch.
#[derive(Debug)]
pub(crate) struct Node<P: Platform> {
    state: Mutex<P, NodeState>,
    /// Capacity of the lazy batch (immutable).
    lazy_cap: usize,
    /// Pages of the areas in the lazy batch: changed only under `state`'s lock (a `Relaxed`
    /// load + store, the lock serialising writers), read without it (`Relaxed`: the purge
    /// trigger's heuristic; exact when nothing runs).
    lazy_pages: AtomicUsize,
}

impl<P: Platform> Node<P> {
    pub(crate) fn new(shape: &PoolShape, lazy_cap: usize) -> Self {
        Self {
            state: Mutex::<P, _>::new(NodeState::new(shape, lazy_cap)),
            lazy_cap,
            lazy_pages: AtomicUsize::new(0),
        }
    }

    /// Lock the node.
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, P, NodeState> {
        self.state.lock()
    }

    /// Pages in the lazy batch (`Relaxed`: a heuristic; exact when quiescent and under the
    /// lock).
    #[inline]
    pub(crate) fn lazy_pages(&self) -> usize {
        self.lazy_pages.load(Ordering::Relaxed)
    }

    /// Overwrite the lazy page count (tests of the invariant check).
    #[cfg(all(test, not(feature = "loom")))]
    pub(crate) fn set_lazy_pages_for_tests(&self, pages: usize) {
        self.lazy_pages.store(pages, Ordering::Relaxed);
    }

    /// Queue the lazily freed area `[start, end)` (`pages` pages, `unmapped` of them unmapped
    /// by the caller) in `st`, this node's state, locked by the caller, and raise the page
    /// count. Returns the count's old value, or `None` (nothing done) if the batch is full.
    #[inline]
    pub(crate) fn record_lazy(
        &self,
        st: &mut NodeState,
        start: u64,
        end: u64,
        pages: usize,
        unmapped: usize,
    ) -> Option<usize> {
        if st.lazy.len() >= st.lazy_cap {
            return None;
        }
        st.lazy.push((start, end));
        st.lazy_unmapped += unmapped as u64;
        let old = self.lazy_pages.load(Ordering::Relaxed);
        self.lazy_pages.store(old + pages, Ordering::Relaxed);
        Some(old)
    }

    /// Take the whole lazy batch, leaving `spare` (emptied) in its place, and zero the page
    /// count, in one O(1) critical section: the freeing CPUs never wait on a walk of the
    /// batch.
    #[inline]
    pub(crate) fn take_lazy(&self, mut spare: Vec<(u64, u64)>) -> (Vec<(u64, u64)>, LazyTaken) {
        spare.clear();
        // Sized before the lock is taken: nothing is allocated under it.
        spare.reserve_exact(self.lazy_cap);
        let mut st = self.state.lock();
        let batch = core::mem::replace(&mut st.lazy, spare);
        let unmapped = core::mem::take(&mut st.lazy_unmapped);
        let pages = self.lazy_pages.load(Ordering::Relaxed);
        self.lazy_pages.store(0, Ordering::Relaxed);
        (batch, LazyTaken { unmapped, pages })
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn records_pack_and_spill_to_the_side_map() {
        let mut st = NodeState::new(&PoolShape::new(true, 1 << 30), 4);
        let plain = AreaInfo::new(VmFlags::ALLOC);
        let mut io = AreaInfo::new(VmFlags::IOREMAP);
        io.phys_addr = Some(0xfee0_0000);
        let mut big = AreaInfo::new(VmFlags::MAP);
        big.nr_pages = usize::MAX;
        st.insert(0x1000, 0x3000, &plain).unwrap();
        st.insert(0x3000, 0x5000, &io).unwrap();
        st.insert(0x8000, 0x9000, &big).unwrap();
        assert_eq!(st.get(0x1000).unwrap().info, plain);
        assert_eq!(st.get(0x3000).unwrap().info, io);
        assert_eq!(st.find_containing(0x8fff).unwrap().info, big);
        assert_eq!(st.bytes(), 0x5000);
        st.check_index().unwrap();
        // Infos move between the two forms when changed in place.
        assert!(st.update_info(0x1000, |i| i.phys_addr = Some(7)));
        assert!(st.update_info(0x3000, |i| i.phys_addr = None));
        assert_eq!(st.get(0x1000).unwrap().info.phys_addr, Some(7));
        assert_eq!(st.get(0x3000).unwrap().info.phys_addr, None);
        st.check_index().unwrap();
        let r = st.remove_checked(0x1000, |a| {
            assert_eq!(a.info.phys_addr, Some(7));
            Ok::<(), ()>(())
        });
        assert_eq!(r.unwrap().unwrap().end, 0x3000);
        assert_eq!(st.remove_checked(0x3000, |_| Err("no")), Err("no"));
        assert!(
            st.remove_checked(0x2000, |_| Ok::<(), ()>(()))
                .unwrap()
                .is_none()
        );
        assert_eq!(st.removed(), 0x2000);
        assert_eq!(st.len(), 2);
        st.check_index().unwrap();
        assert!(!st.update_info(0x2000, |_| ()));
        assert!(st.slots() >= 2);
    }

    #[test]
    fn lazy_batches_swap_in_constant_time() {
        let node = Node::<pagetable::platform::StdPlatform>::new(&PoolShape::new(true, 1 << 30), 2);
        let mut st = node.lock();
        assert_eq!(node.record_lazy(&mut st, 0, 0x2000, 2, 1), Some(0));
        assert_eq!(node.record_lazy(&mut st, 0x2000, 0x5000, 3, 2), Some(2));
        assert_eq!(node.record_lazy(&mut st, 0x5000, 0x6000, 1, 0), None);
        drop(st);
        assert_eq!(node.lazy_pages(), 5);
        let (b, t) = node.take_lazy(Vec::new());
        assert_eq!(b, vec![(0, 0x2000), (0x2000, 0x5000)]);
        assert_eq!((t.pages, t.unmapped), (5, 3));
        assert_eq!(node.lazy_pages(), 0);
        assert!(node.lock().lazy().is_empty());
    }
}
