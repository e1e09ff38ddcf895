//! Shards: the KVA range cut into contiguous slices, each with its own free tree, node (busy
//! index, pools, lazy batch) and overflow lazy list (Linux 6.9's vmap nodes, but contiguous,
//! so a free range never has to be looked up in another shard's tree).
//!
//! # How it works
//!
//! Shard `i` covers `[base + i * shard_size, min(base + (i + 1) * shard_size, end))`. Its
//! [`FreeTree`] holds only free space inside those bounds; its [`Node`] holds the live areas
//! that START inside them (an area may run on into later shards: see "spanning" below), the
//! pools of free areas inside them and the lazy batch of areas freed there; its lock-free
//! llist takes the lazily freed areas that do not fit the batch (the purge lagging far
//! behind), each in a small heap node.
//!
//! Spanning allocations. A request that no single shard can satisfy (larger than a shard, or
//! only satisfiable across a boundary) takes the free-tree locks of every shard its
//! `[vstart, vend)` window intersects, in ascending order, and looks for a run of free space
//! crossing boundaries: the free area touching the top of shard `k`, then whole free shards,
//! then the free area at the bottom of the next one. The chosen block is carved piecewise
//! from each tree it crosses. Freeing such an area ([`ShardSet::free_range`]) returns each
//! piece to its own tree, one shard lock at a time: no atomicity across trees is needed,
//! since each piece is free space on its own.
//!
//! # Invariants
//!
//! * Free-tree areas of shard `i` lie inside shard `i`.
//! * A live area is in exactly one busy index: that of the shard containing its start.
//! * `Lazy::pages` >= the pages of the areas on the overflow list (the counter is raised
//!   before the push and lowered by the purger after its `del_all` detached them), so it
//!   never underflows; it equals them when nothing runs.
//! * "Pending" bytes, `NodeState::removed - Lazy::returned`, are those of areas removed from
//!   the busy index and not yet back in a tree or a pool (held by a `RemovedArea`, in a lazy
//!   batch or list, or being purged). Two monotonic counters rather than one up-down counter
//!   so that `remove` adds under the node lock it holds anyway, with no extra atomic.
//!
//! # Locking
//!
//! The node lock may be held while taking the shard's free lock (pool refills), never the
//! reverse. Several free locks are taken only in ascending shard order (spanning
//! allocation, invariant checks). The overflow list is lock-free (llist); its counters are
//! `Relaxed` atomics (heuristics and statistics: the list itself orders its nodes).

#[allow(unused_imports)]
use crate::prelude::*;
use core::ptr::NonNull;
use crossbeam_utils::CachePadded;
use pagetable::PAGE_SIZE;
use pagetable::platform::Platform;

use crate::kva::free_tree::FreeTree;
use crate::kva::llist::{Chain, Intrusive, LlistHead};
use crate::kva::node::{LazyNode, Node, NodeState};
use crate::kva::pools::PoolShape;
use crate::sync::{AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};

/// A shard's free tree behind its lock, with a lock-free hint of its largest free area.
///
/// The hint is rewritten (when it changed) by every guard before it unlocks, so it is the
/// tree's `largest()` as of the last critical section: exact when nothing runs, and read
/// `Relaxed` by searches that only want to skip shards that cannot hold a request without
/// taking their locks. A stale hint costs a useless lock or skips a shard whose space appeared
/// concurrently (a search racing a free: as if it had run just before the free); the
/// allocation-failure path runs after its own drains and purge, whose tree updates it
/// sees.
#[derive(Debug)]
pub(crate) struct FreeLock<P: Platform> {
    tree: Mutex<P, FreeTree>,
    largest: AtomicU64,
}

/// The guard of a [`FreeLock`]: the locked tree; updates the hint when dropped or bumped.
pub(crate) struct FreeGuard<'a, P: Platform> {
    guard: MutexGuard<'a, P, FreeTree>,
    largest: &'a AtomicU64,
}

impl<P: Platform> FreeLock<P> {
    fn new(tree: FreeTree) -> Self {
        Self {
            largest: AtomicU64::new(tree.largest()),
            tree: Mutex::<P, _>::new(tree),
        }
    }

    /// Lock the tree.
    #[inline]
    pub(crate) fn lock(&self) -> FreeGuard<'_, P> {
        FreeGuard {
            guard: self.tree.lock(),
            largest: &self.largest,
        }
    }

    /// The largest free area as of the last critical section (a hint; see the type).
    #[inline]
    pub(crate) fn largest_hint(&self) -> u64 {
        self.largest.load(Ordering::Relaxed)
    }
}

impl<P: Platform> FreeGuard<'_, P> {
    #[inline]
    fn publish(&self) {
        let l = self.guard.largest();
        if self.largest.load(Ordering::Relaxed) != l {
            self.largest.store(l, Ordering::Relaxed);
        }
    }

    /// Offer the lock to waiters (`cond_resched_lock`), hint up to date first.
    #[inline]
    pub(crate) fn bump(&mut self) {
        self.publish();
        MutexGuard::<'_, P, FreeTree>::bump(&mut self.guard);
    }
}

impl<P: Platform> Drop for FreeGuard<'_, P> {
    #[inline]
    fn drop(&mut self) {
        self.publish();
    }
}

impl<P: Platform> core::ops::Deref for FreeGuard<'_, P> {
    type Target = FreeTree;
    #[inline]
    fn deref(&self) -> &FreeTree {
        &self.guard
    }
}

impl<P: Platform> core::ops::DerefMut for FreeGuard<'_, P> {
    #[inline]
    fn deref_mut(&mut self) -> &mut FreeTree {
        &mut self.guard
    }
}

/// A detached overflow list: the areas it held, and its nodes for reuse.
#[derive(Debug, Default)]
pub(crate) struct Detached {
    /// `(start, end)` of every area, newest first.
    pub(crate) ranges: Vec<(u64, u64)>,
    /// Pages of those areas.
    pub(crate) pages: usize,
    /// Pages their callers reported unmapped.
    pub(crate) unmapped: u64,
    /// The list's nodes (read, now free: see `NodeState::give_spares`).
    pub(crate) nodes: Chain,
    /// How many.
    pub(crate) len: usize,
}

/// A shard's overflow list and counters (one cache line, written by the freeing CPUs of this
/// shard and by the purger).
#[derive(Debug, Default)]
struct Lazy {
    /// Lazily freed areas that did not fit the node's batch, newest first.
    head: LlistHead,
    /// Pages of the areas on `head` (raised before the push, lowered once detached).
    pages: AtomicUsize,
    /// Bytes ever given back to the free space after a removal from this shard's busy index
    /// (monotonic; see `NodeState::removed`).
    returned: AtomicU64,
}

/// One shard.
#[derive(Debug)]
pub(crate) struct Shard<P: Platform> {
    /// First address.
    base: u64,
    /// End (exclusive).
    end: u64,
    /// Free space inside `[base, end)`.
    free: CachePadded<FreeLock<P>>,
    /// Busy index, pools and lazy batch of `[base, end)`.
    node: CachePadded<Node<P>>,
    /// Lazily freed areas starting inside `[base, end)` that overflowed the node's batch.
    lazy: CachePadded<Lazy>,
    /// Live areas that start below `base` and end above it (they cross into this shard).
    /// A lookup of an address here needs the lower shards' busy indexes only while this is
    /// non-zero, and only down to the first lower shard with none: an area reaching this
    /// shard from further below crosses into every shard in between. Written only by
    /// publishing and removing boundary-crossing areas (rare), `Relaxed`: a lookup races
    /// nothing it may rely on (an area is found by others only after its owner handed its
    /// address over).
    crossed_in: AtomicUsize,
}

impl<P: Platform> Shard<P> {
    fn new(base: u64, end: u64, shape: &PoolShape, lazy_cap: usize) -> Self {
        let mut tree = FreeTree::with_capacity(16);
        // `base < end` by construction; an error here would mean an empty shard, which
        // `ShardSet::new` never builds, and leaves the tree empty (no space) rather than panic.
        let _ = tree.insert_merge(base, end);
        Self {
            base,
            end,
            free: CachePadded::new(FreeLock::new(tree)),
            node: CachePadded::new(Node::new(shape, lazy_cap)),
            lazy: CachePadded::new(Lazy::default()),
            crossed_in: AtomicUsize::new(0),
        }
    }

    /// First address.
    #[inline]
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// End (exclusive).
    #[inline]
    pub(crate) fn end(&self) -> u64 {
        self.end
    }

    /// Lock the free tree.
    #[inline]
    pub(crate) fn lock_free(&self) -> FreeGuard<'_, P> {
        self.free.lock()
    }

    /// The node (busy index, pools, lazy batch).
    #[inline]
    pub(crate) fn node(&self) -> &Node<P> {
        &self.node
    }

    /// Lock the node.
    #[inline]
    pub(crate) fn lock_node(&self) -> MutexGuard<'_, P, NodeState> {
        self.node.lock()
    }

    /// Whether some live area crosses into this shard from a lower one.
    #[inline]
    pub(crate) fn crossed_into(&self) -> bool {
        self.crossed_in.load(Ordering::Relaxed) != 0
    }

    /// Pages on the overflow list (approximately: `Relaxed`).
    #[inline]
    pub(crate) fn overflow_pages(&self) -> usize {
        self.lazy.pages.load(Ordering::Relaxed)
    }

    /// Free the area `[start, end)` (`pages` pages, `unmapped` unmapped by the caller)
    /// lazily on this shard's overflow list, in `spare` (a node taken from the node's spares
    /// by the caller) or, if there is none, a new heap node. The counter is raised BEFORE the
    /// push, so that the purger's subtraction (after its `del_all` saw the push) never
    /// underflows it. Returns the counter's old value.
    pub(crate) fn push_overflow(
        &self,
        spare: Option<NonNull<LazyNode>>,
        start: u64,
        end: u64,
        pages: usize,
        unmapped: usize,
    ) -> usize {
        let node = match spare {
            Some(n) => {
                // SAFETY: a spare node is a live heap node owned by the caller (taken off the
                // node's spare chain under its lock), on no list: ours to fill.
                unsafe {
                    let p = n.as_ptr();
                    (*p).start = start;
                    (*p).end = end;
                    (*p).unmapped = unmapped;
                }
                n
            }
            None => LazyNode::boxed(start, end, unmapped),
        };
        let old = self.lazy.pages.fetch_add(pages, Ordering::Relaxed);
        // SAFETY: a live heap node owned by us, on no list; the list takes it over until a
        // purge detaches it (or `Drop` frees it). The `Release` push publishes its fields.
        unsafe { self.lazy.head.add(LazyNode::to_node(node)) };
        old
    }

    /// Detach the whole overflow list (`Acquire`: the pushers' node fields are visible),
    /// read its areas and lower the counter by what was found (every page subtracted was
    /// added before its area's push, which the detaching `del_all` saw: no underflow). The
    /// nodes come back in `Detached::nodes`, for the node's spares.
    pub(crate) fn take_overflow(&self) -> Detached {
        let chain = self.lazy.head.del_all();
        let mut d = Detached::default();
        for link in chain.iter() {
            // SAFETY: every node on this list is a live `LazyNode` (see `push_overflow`), now
            // owned by the detached chain we hold.
            let n = unsafe { LazyNode::from_node(link).as_ref() };
            d.pages += pages(n.start, n.end);
            d.unmapped += n.unmapped as u64;
            d.ranges.push((n.start, n.end));
        }
        d.len = d.ranges.len();
        d.nodes = chain;
        self.lazy.pages.fetch_sub(d.pages, Ordering::Relaxed);
        d
    }

    /// Look at the overflow list without taking it: detach, call `f` with each area, then
    /// re-attach (error path and invariant checks only; the caller holds the purge lock, so
    /// no purger holds a chain).
    pub(crate) fn peek_overflow(&self, mut f: impl FnMut(u64, u64)) {
        let chain = self.lazy.head.del_all();
        for link in chain.iter() {
            // SAFETY: a node of this list (see `take_overflow`), owned by the detached chain;
            // only read here, and re-attached below.
            let n = unsafe { LazyNode::from_node(link).as_ref() };
            f(n.start, n.end);
        }
        self.lazy.head.add_chain(chain);
    }

    /// `bytes` removed from this shard's busy index are free again (merged or pooled).
    #[inline]
    pub(crate) fn add_returned(&self, bytes: u64) {
        self.lazy.returned.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes removed and not yet free again (exact when quiescent; `returned` is read first
    /// so that a concurrent free cannot make the difference negative in practice).
    #[inline]
    pub(crate) fn pending(&self) -> u64 {
        let returned = self.lazy.returned.load(Ordering::Relaxed);
        self.node.lock().removed().saturating_sub(returned)
    }
}

impl<P: Platform> Drop for Shard<P> {
    fn drop(&mut self) {
        // Areas still on the overflow list when the allocator goes away: free the nodes.
        let d = self.take_overflow();
        // SAFETY: the detached nodes are ours and nothing else refers to them.
        unsafe { LazyNode::free_chain(d.nodes) };
    }
}

/// The shards of one KVA range.
#[derive(Debug)]
pub(crate) struct ShardSet<P: Platform> {
    shards: Box<[Shard<P>]>,
    start: u64,
    end: u64,
    shard_size: u64,
    /// `log2(shard_size)` when it is a power of two (index by shift, not division).
    shift: Option<u32>,
}

/// `x` rounded up to `align` (a power of two), `None` on overflow.
#[inline]
fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

impl<P: Platform> ShardSet<P> {
    /// `nr` shards of `shard_size` bytes (the last one takes the remainder) over
    /// `[start, end)`; the caller has checked that `nr * shard_size` covers the range and no
    /// shard is empty.
    pub(crate) fn new(
        start: u64,
        end: u64,
        nr: usize,
        shard_size: u64,
        shape: &PoolShape,
        lazy_cap: usize,
    ) -> Self {
        let shards = (0..nr as u64)
            .map(|i| {
                let b = start + i * shard_size;
                Shard::new(b, (b + shard_size).min(end), shape, lazy_cap)
            })
            .collect();
        let shift = shard_size
            .is_power_of_two()
            .then(|| shard_size.trailing_zeros());
        Self {
            shards,
            start,
            end,
            shard_size,
            shift,
        }
    }

    /// Number of shards.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.shards.len()
    }

    /// All shards, ascending.
    #[inline]
    pub(crate) fn all(&self) -> &[Shard<P>] {
        &self.shards
    }

    /// Shard `i`.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> &Shard<P> {
        &self.shards[i]
    }

    /// The shard containing `addr`, if `addr` is in the range.
    #[inline]
    pub(crate) fn index_of(&self, addr: u64) -> Option<usize> {
        (self.start <= addr && addr < self.end).then(|| self.offset_index(addr - self.start))
    }

    /// The shard index of an offset from the range start.
    #[inline]
    fn offset_index(&self, off: u64) -> usize {
        match self.shift {
            Some(s) => (off >> s) as usize,
            None => (off / self.shard_size) as usize,
        }
    }

    /// The shards intersecting `[vstart, vend)` (a non-empty window inside the range), as an
    /// inclusive index range.
    #[inline]
    pub(crate) fn window(&self, vstart: u64, vend: u64) -> (usize, usize) {
        let first = self.offset_index(vstart - self.start);
        let last = self.offset_index(vend - 1 - self.start);
        (first, last.min(self.len() - 1))
    }

    /// A fit inside shard `i`'s part of `[vstart, vend)`: [`FreeTree::alloc_quick`] (always
    /// O(log n)) with `quick`, else [`FreeTree::alloc_fast`] (definitive).
    #[inline]
    pub(crate) fn alloc_in(
        &self,
        i: usize,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
        quick: bool,
    ) -> Option<u64> {
        let s = &self.shards[i];
        let (lo, hi) = (vstart.max(s.base), vend.min(s.end));
        if lo >= hi || hi - lo < size {
            return None;
        }
        if s.free.largest_hint() < size {
            return None;
        }
        let mut tree = s.free.lock();
        if tree.largest() < size {
            return None;
        }
        if quick {
            tree.alloc_quick(size, align, lo, hi)
        } else {
            tree.alloc_fast(size, align, lo, hi)
        }
    }

    /// Count the live area `[a, b)` in `crossed_in` of every shard above its first one that
    /// it reaches (`add`: published; else removed). O(shards crossed).
    #[inline]
    pub(crate) fn account_crossing(&self, a: u64, b: u64, add: bool) {
        let (first, last) = self.window(a, b);
        for s in &self.shards[first + 1..=last] {
            if add {
                s.crossed_in.fetch_add(1, Ordering::Relaxed);
            } else {
                s.crossed_in.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Lock the free trees of shards `first..=last`, ascending.
    fn lock_free_run(&self, first: usize, last: usize) -> Vec<FreeGuard<'_, P>> {
        self.shards[first..=last]
            .iter()
            .map(|s| s.free.lock())
            .collect()
    }

    /// A block of `size` bytes aligned to `align` inside `[vstart, vend)` that crosses at
    /// least one shard boundary (see the module documentation); carved from every tree it
    /// crosses.
    ///
    /// Candidate runs are found from the shards' largest-free hints without any lock: a run
    /// crossing boundary `k` is at most shard `k`'s largest area, then wholly free shards
    /// (largest == shard size), then shard `j`'s largest area; only a candidate that could
    /// hold `size` has its shards `k..=j` locked (ascending) and checked exactly. The work is
    /// a scan of the window's hints plus locks proportional to the runs worth checking, not
    /// a lock of every shard of the window.
    #[inline]
    pub(crate) fn alloc_spanning(
        &self,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
    ) -> Option<u64> {
        let (first, last) = self.window(vstart, vend);
        let mut k = first;
        while k < last {
            // Upper bound of a run crossing the top of shard k, from the hints.
            let mut bound = self.shards[k].free.largest_hint();
            if bound == 0 {
                k += 1;
                continue;
            }
            let mut j = k + 1;
            loop {
                let sj = &self.shards[j];
                let h = sj.free.largest_hint();
                bound = bound.saturating_add(h);
                if h < sj.end - sj.base || j == last || bound >= size {
                    break;
                }
                j += 1;
            }
            if bound < size {
                // No run through k..=j can hold the block; a run from a later boundary may.
                k = if j > k + 1 { j } else { k + 1 };
                continue;
            }
            if let Some(a) = self.try_run(k, last, size, align, vstart, vend) {
                return Some(a);
            }
            k += 1;
        }
        None
    }

    /// Check, under the locks of shards `k..` (taken ascending, as far as the run reaches),
    /// whether the free run crossing the top of shard `k` holds the block; carve it if so.
    fn try_run(
        &self,
        k: usize,
        last: usize,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
    ) -> Option<u64> {
        let mut trees = vec![self.shards[k].free.lock()];
        let s = &self.shards[k];
        // The free area touching the top of shard k, if any.
        let (tail_start, _) = trees[0].find_containing(s.end - 1)?;
        let lo = tail_start.max(vstart);
        // Extend through wholly free shards, then the free head of the next one.
        let mut run_end = s.end;
        let mut j = k + 1;
        while j <= last {
            let sj = &self.shards[j];
            trees.push(sj.free.lock());
            match trees[j - k].find_containing(sj.base) {
                Some((_, e)) if e == sj.end => {
                    run_end = e;
                    j += 1;
                    let hi = run_end.min(vend);
                    if align_up(lo, align)
                        .is_some_and(|a| a.checked_add(size).is_some_and(|e| e <= hi))
                    {
                        break;
                    }
                }
                Some((_, e)) => {
                    run_end = e;
                    break;
                }
                None => break,
            }
        }
        let hi = run_end.min(vend);
        let a = align_up(lo, align)?;
        if a.checked_add(size).is_some_and(|e| e <= hi) {
            return self.carve_locked(&mut trees, k, a, a + size).then_some(a);
        }
        None
    }

    /// Carve `[a, b)` out of the locked trees `trees` (shard `first` onwards), piece by piece;
    /// all or nothing.
    fn carve_locked(&self, trees: &mut [FreeGuard<'_, P>], first: usize, a: u64, b: u64) -> bool {
        let (lo, hi) = match (self.index_of(a), self.index_of(b - 1)) {
            (Some(lo), Some(hi)) if lo >= first && hi - first < trees.len() => (lo, hi),
            _ => return false,
        };
        for i in lo..=hi {
            let s = &self.shards[i];
            let (ps, pe) = (a.max(s.base), b.min(s.end));
            if trees[i - first].alloc_at(ps, pe).is_err() {
                // Put back what was taken so far: those pieces were free a moment ago, so the
                // merge cannot overlap anything.
                for j in lo..i {
                    let sj = &self.shards[j];
                    let _ = trees[j - first].insert_merge(a.max(sj.base), b.min(sj.end));
                }
                return false;
            }
        }
        true
    }

    /// Take the exact range `[a, b)` (inside the range, page aligned) out of the free space of
    /// every shard it crosses; `false` (nothing taken) if any part of it is not free.
    #[inline]
    pub(crate) fn alloc_exact(&self, a: u64, b: u64) -> bool {
        let (first, last) = self.window(a, b);
        let mut trees = self.lock_free_run(first, last);
        self.carve_locked(&mut trees, first, a, b)
    }

    /// Return `[a, b)` to the free trees, one shard (and one lock) per piece. An overlap with
    /// free space (a bug) is refused by the tree and reported as `false`.
    #[inline]
    pub(crate) fn free_range(&self, a: u64, b: u64) -> bool {
        let mut ok = true;
        let (first, last) = self.window(a, b);
        for s in &self.shards[first..=last] {
            ok &= s
                .free
                .lock()
                .insert_merge(a.max(s.base), b.min(s.end))
                .is_ok();
        }
        ok
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;
    use pagetable::platform::StdPlatform;

    const P: u64 = PAGE_SIZE;

    fn set(nr: usize, pages_each: u64) -> ShardSet<StdPlatform> {
        ShardSet::<StdPlatform>::new(
            0x100000,
            0x100000 + nr as u64 * pages_each * P,
            nr,
            pages_each * P,
            &PoolShape::new(false, pages_each * P),
            4,
        )
    }

    #[test]
    fn overflow_list_counts_and_recycles_its_nodes() {
        let s = set(1, 8);
        let sh = s.get(0);
        assert_eq!(sh.push_overflow(None, 0x100000, 0x102000, 2, 1), 0);
        assert_eq!(sh.push_overflow(None, 0x102000, 0x105000, 3, 0), 2);
        let mut seen = Vec::new();
        sh.peek_overflow(|a, b| seen.push((a, b)));
        assert_eq!(seen, vec![(0x102000, 0x105000), (0x100000, 0x102000)]);
        assert_eq!(sh.overflow_pages(), 5);
        let d = sh.take_overflow();
        assert_eq!((d.pages, d.unmapped, d.len), (5, 1, 2));
        assert_eq!(sh.overflow_pages(), 0);
        // The nodes go to the node's spares and are reused by the next overflows.
        sh.lock_node().give_spares(d.nodes, d.len);
        let n = sh.lock_node().take_spare();
        assert!(n.is_some());
        sh.push_overflow(n, 0x100000, 0x101000, 1, 1);
        let d = sh.take_overflow();
        assert_eq!(d.ranges, vec![(0x100000, 0x101000)]);
        sh.lock_node().give_spares(d.nodes, d.len);
        // One left on the list when the set is dropped, one among the spares: both freed by
        // `Drop` (Miri checks).
        let n = sh.lock_node().take_spare();
        sh.push_overflow(n, 0x100000, 0x101000, 1, 1);
    }

    #[test]
    fn indexing_and_windows() {
        let s = set(4, 8);
        assert_eq!(s.len(), 4);
        assert_eq!(s.index_of(0x100000), Some(0));
        assert_eq!(s.index_of(0x100000 + 8 * P), Some(1));
        assert_eq!(s.index_of(0x100000 + 32 * P), None);
        assert_eq!(s.index_of(0), None);
        assert_eq!(s.window(0x100000 + 7 * P, 0x100000 + 9 * P), (0, 1));
        assert_eq!(s.window(0x100000, 0x100000 + 32 * P), (0, 3));
        assert_eq!(s.get(3).end, 0x100000 + 32 * P);
    }

    #[test]
    fn per_shard_alloc_respects_bounds() {
        let s = set(2, 8);
        let a = s.alloc_in(1, 2 * P, P, 0, u64::MAX, false).unwrap();
        assert_eq!(a, 0x100000 + 8 * P);
        assert_eq!(s.alloc_in(0, 9 * P, P, 0, u64::MAX, false), None);
        assert_eq!(s.alloc_in(0, P, P, 0x100000 + 8 * P, u64::MAX, false), None);
    }

    #[test]
    fn spanning_alloc_crosses_boundaries_and_frees_piecewise() {
        let s = set(4, 8);
        // Larger than a shard: takes shards 0, 1 and part of 2.
        let a = s
            .alloc_spanning(20 * P, P, 0x100000, 0x100000 + 32 * P)
            .unwrap();
        assert_eq!(a, 0x100000);
        assert_eq!(s.get(0).free.lock().free_bytes(), 0);
        assert_eq!(s.get(1).free.lock().free_bytes(), 0);
        assert_eq!(s.get(2).free.lock().free_bytes(), 4 * P);
        // Now only [20, 32) pages are free: a 10-page block fits across the 2/3 boundary.
        let b = s
            .alloc_spanning(10 * P, P, 0x100000, 0x100000 + 32 * P)
            .unwrap();
        assert_eq!(b, 0x100000 + 20 * P);
        assert_eq!(
            s.alloc_spanning(3 * P, P, 0x100000, 0x100000 + 32 * P),
            None
        );
        assert!(s.free_range(a, a + 20 * P));
        assert!(s.free_range(b, b + 10 * P));
        let total: u64 = s.all().iter().map(|x| x.free.lock().free_bytes()).sum();
        assert_eq!(total, 32 * P);
        // Double free is refused by the trees.
        assert!(!s.free_range(a, a + P));
    }

    #[test]
    fn spanning_alloc_honours_alignment_and_window() {
        let s = set(4, 8);
        let a = s
            .alloc_spanning(9 * P, 16 * P, 0x100000 + P, 0x100000 + 32 * P)
            .unwrap();
        assert_eq!(a, 0x100000 + 16 * P);
        assert_eq!(
            s.alloc_spanning(9 * P, 16 * P, 0x100000 + P, 0x100000 + 24 * P),
            None
        );
    }

    #[test]
    fn exact_allocation_is_all_or_nothing() {
        let s = set(2, 8);
        assert!(s.alloc_exact(0x100000 + 6 * P, 0x100000 + 10 * P));
        assert!(!s.alloc_exact(0x100000 + 2 * P, 0x100000 + 7 * P));
        // Nothing was taken by the failed attempt.
        assert_eq!(s.get(0).free.lock().free_bytes(), 6 * P);
        assert!(s.free_range(0x100000 + 6 * P, 0x100000 + 10 * P));
        assert_eq!(s.get(1).free.lock().free_bytes(), 8 * P);
    }
}

/// Pages in `[a, b)`.
#[inline]
pub(crate) fn pages(a: u64, b: u64) -> usize {
    ((b - a) / PAGE_SIZE) as usize
}
