//! The allocation side of the [`Kva`](crate::Kva) (Linux's `alloc_vmap_area`): request
//! checks, the pool fast path and its batch refills, the tree searches across shards, the
//! allocation-failure reclaim, and the lookups (`find`, `busy_overlapping`, `set_info`).
//!
//! # How it works
//!
//! A pooled request (at most [`MAX_CLASS_PAGES`](crate::MAX_CLASS_PAGES) pages, page
//! alignment, a window covering the preferred shard) locks that shard's node once: pops an
//! area of exactly its size from the node's pool (refilling a small size with one batch
//! carved from the shard's tree, or carving the one area from the tree, under the same lock)
//! and records it in the busy index. Otherwise the shards' trees are searched (the preferred
//! shard first; see `search_trees`) and, past them, runs of free space crossing shard
//! boundaries; the area is then recorded in the busy index of the shard containing its
//! start. No space: the reclaim (`reclaim_then`), then the notifiers, then
//! [`KvaError::NoSpace`].
//!
//! # Locking
//!
//! Purge lock (reclaim only) -> node -> shard free lock(s) (ascending). `Reclaim`'s counter
//! is raised before the reclaim drains any node's pools, so a refill that takes a node's lock
//! after its drain sees it (the lock hand-over orders them): see `reclaim_then`.

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::PAGE_SIZE;
use pagetable::platform::Platform;

use super::Inner;
use crate::kva::area::{AreaInfo, VmArea};
use crate::kva::config::PurgeMode;
use crate::kva::error::KvaError;
use crate::kva::free_tree::{FreeTree, MaxSize};
use crate::kva::node::NodeState;
use crate::kva::pools::{self, REFILL_MAX_PAGES};
use crate::kva::purge::Pooling;
use crate::sync::{AtomicUsize, Ordering};

/// Rounds of "notifiers freed something, retry" before an allocation gives up.
///
/// Linux (`alloc_vmap_area`) purges and retries again every time its notifiers report
/// something freed, with no bound. Here each round is a full reclaim (deferred frees run,
/// everything lazy purged, every node's pools drained, the search repeated) after the
/// notifiers ran, and the number of rounds is bounded, so that a notifier that keeps
/// reporting progress it did not make cannot livelock the allocation. Why 8: one round is
/// enough for the vmalloc layer's own notifier (it retires fragmented vmap blocks to the lazy
/// list, which the next reclaim purges); 8 leaves room for host notifiers that free in
/// several steps, while a failing allocation costs at most 9 reclaims.
const MAX_NOTIFIER_ROUNDS: usize = 8;

/// `x` rounded up to `align` (a power of two), `None` on overflow.
#[inline]
fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// Allocation-failure reclaims in progress: while non-zero, a pool refill carves one area,
/// not a batch, so that free space drained out of the pools is not locked up in another
/// node's pool before the failing allocation has searched the trees again.
#[derive(Debug, Default)]
pub(crate) struct Reclaim {
    in_progress: AtomicUsize,
}

impl Reclaim {
    /// Whether some allocation is reclaiming (`Relaxed`: see the module documentation).
    #[inline]
    fn active(&self) -> bool {
        self.in_progress.load(Ordering::Relaxed) != 0
    }
}

/// Announces a reclaim for as long as it lives.
struct Announced<'a>(&'a Reclaim);

impl<'a> Announced<'a> {
    fn new(r: &'a Reclaim) -> Self {
        r.in_progress.fetch_add(1, Ordering::Relaxed);
        Self(r)
    }
}

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        self.0.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<P: Platform> Inner<P> {
    /// Check a request; returns the effective alignment and window.
    #[inline]
    fn check_request(
        &self,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
    ) -> Result<(u64, u64, u64), KvaError> {
        if size == 0 || size % PAGE_SIZE != 0 {
            return Err(KvaError::InvalidSize { size });
        }
        if !align.is_power_of_two() {
            return Err(KvaError::InvalidAlign { align });
        }
        let align = align.max(PAGE_SIZE);
        if vstart >= vend {
            return Err(KvaError::InvalidRange {
                start: vstart,
                end: vend,
            });
        }
        let lo = align_up(vstart.max(self.cfg.start), PAGE_SIZE).unwrap_or(u64::MAX);
        let hi = vend.min(self.cfg.end) & !(PAGE_SIZE - 1);
        if lo >= hi {
            return Err(KvaError::InvalidRange {
                start: vstart,
                end: vend,
            });
        }
        if size > hi - lo {
            return Err(KvaError::NoSpace {
                size,
                align,
                start: lo,
                end: hi,
            });
        }
        Ok((align, lo, hi))
    }

    #[inline]
    pub(crate) fn alloc(
        &self,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
        node: Option<usize>,
        info: AreaInfo,
    ) -> Result<u64, KvaError> {
        let (align, lo, hi) = self.check_request(size, align, vstart, vend)?;
        if self.cfg.purge_mode == PurgeMode::Synchronous && self.deferred.pending() {
            self.drain_deferred();
        }
        let home = match node {
            Some(n) => n % self.shards.len(),
            None => self.topo.home_of(P::this_cpu()),
        };
        if let Some(r) = self.try_alloc(home, size, align, lo, hi, &info) {
            return r;
        }
        self.alloc_no_space(home, size, align, lo, hi, &info)
    }

    /// [`Inner::alloc`] found no space: everything deferred, lazy or pooled goes back to the
    /// trees and the search is repeated, all under the purge lock (see `reclaim_then`); then
    /// the notifiers, retrying while they free something. (Out of line: rare.)
    #[cold]
    #[inline(never)]
    fn alloc_no_space(
        &self,
        home: usize,
        size: u64,
        align: u64,
        lo: u64,
        hi: u64,
        info: &AreaInfo,
    ) -> Result<u64, KvaError> {
        let mut rounds = 0;
        loop {
            if let Some(r) = self.reclaim_then(|| self.try_alloc(home, size, align, lo, hi, info)) {
                return r;
            }
            if rounds < MAX_NOTIFIER_ROUNDS && self.notifiers.call(size) > 0 {
                rounds += 1;
                continue;
            }
            return Err(KvaError::NoSpace {
                size,
                align,
                start: lo,
                end: hi,
            });
        }
    }

    /// Find free VA for a request and record it live with `info`: from the pool of shard
    /// `home`'s node when the request is pooled, else from the trees. `None` if no space
    /// was found; `Some(Err)` only if recording failed (an exhausted busy index). The pool
    /// path inlines into the caller; the tree search stays out of line.
    #[inline(always)]
    fn try_alloc(
        &self,
        home: usize,
        size: u64,
        align: u64,
        lo: u64,
        hi: u64,
        info: &AreaInfo,
    ) -> Option<Result<u64, KvaError>> {
        if let Some(class) = pools::class_of(size, align) {
            let sh = self.shards.get(home);
            if self.pools.enabled() && lo <= sh.base() && sh.end() <= hi {
                let mut st = sh.lock_node();
                let got = match st.pools.pop(class) {
                    Some(a) => Some(a),
                    None => self.refill(&mut st, home, class),
                };
                if let Some(a) = got {
                    let r = self.record(&mut st, sh.end(), a, size, info);
                    drop(st);
                    return Some(r);
                }
            }
        }
        self.alloc_from_trees(home, size, align, lo, hi, info)
    }

    /// [`Inner::try_alloc`] from the trees (not pooled, or the home node out of the window).
    #[inline(never)]
    fn alloc_from_trees(
        &self,
        home: usize,
        size: u64,
        align: u64,
        lo: u64,
        hi: u64,
        info: &AreaInfo,
    ) -> Option<Result<u64, KvaError>> {
        let addr = self.search_trees(home, size, align, lo, hi)?;
        Some(self.publish(addr, size, info))
    }

    /// Refill class `class` of the pools in `st` (shard `shard`'s node, locked): first by
    /// sorting in what a background purge handed back, if anything, else from the shard's
    /// tree: one batch carved in one go for small sizes, else just the one area; returns an
    /// area for the caller. (Out of line: one pop in a batch comes here.)
    #[inline(never)]
    fn refill(&self, st: &mut NodeState, shard: usize, class: usize) -> Option<u64> {
        if st.pools.has_ready() {
            self.absorb_ready(st, shard);
            if let Some(a) = st.pools.pop(class) {
                return Some(a);
            }
        }
        let bytes = pools::class_bytes(class);
        // While an allocation-failure reclaim runs, carve only what this allocation takes
        // (see `reclaim_then`). `Relaxed` suffices: the reclaimer raises the count before it
        // locks each node to drain it, so a refill that takes this node's lock after that
        // drain sees the count through the lock's hand-over.
        let batch = if self.reclaim.active() || class >= REFILL_MAX_PAGES {
            1
        } else {
            self.pools.batch(class).max(1)
        };
        let s = self.shards.get(shard);
        let mut tree = s.lock_free();
        if batch > 1 {
            if let Some(a) = tree.alloc(bytes * batch as u64, PAGE_SIZE, s.base(), s.end()) {
                // Pushed highest first, so the stack hands the areas out in ascending
                // order: consecutive allocations (and their frees) are adjacent, and the
                // purge merges a node's whole batch of frees as one run.
                for k in (1..batch as u64).rev() {
                    let c = a + k * bytes;
                    if !st.pools.push(class, c) {
                        // Cannot happen (the class was empty and holds 2 * batch), but never
                        // lose VA: give the area back to the tree.
                        let _ = tree.insert_merge(c, c + bytes);
                    }
                }
                return Some(a);
            }
        }
        tree.alloc(bytes, PAGE_SIZE, s.base(), s.end())
    }

    /// Sort the ready list of `st` (shard `shard`'s node, locked) into its classes, on the
    /// CPU that allocates from them; what full classes cannot take is merged into the
    /// shard's tree (lock order: node, then tree), as the purge would have merged it.
    fn absorb_ready(&self, st: &mut NodeState, shard: usize) {
        let s = self.shards.get(shard);
        let mut tree = None;
        st.pools.absorb(|a, b| {
            let t = tree.get_or_insert_with(|| s.lock_free());
            if t.insert_merge(a, b).is_err() {
                self.count_merge_error();
            }
        });
    }

    /// A fit in the home shard, then in the other shards of the window, then across shard
    /// boundaries. Every shard is first tried with the O(log n) search (`alloc_quick`); only
    /// for alignments where that search may miss (above a page) and when nothing was found
    /// anywhere does a second pass pay for the exact walk (`alloc_fast`), so one nearly full
    /// shard does not cost an O(n) walk while another shard has room.
    fn search_trees(&self, home: usize, size: u64, align: u64, lo: u64, hi: u64) -> Option<u64> {
        let (first, last) = self.shards.window(lo, hi);
        let home_in = (first..=last).contains(&home);
        let passes: &[bool] = if FreeTree::<MaxSize>::quick_is_exact(align) {
            &[true]
        } else {
            &[true, false]
        };
        for (pass, &quick) in passes.iter().enumerate() {
            if home_in {
                if let Some(a) = self.shards.alloc_in(home, size, align, lo, hi, quick) {
                    return Some(a);
                }
            }
            for i in first..=last {
                if home_in && i == home {
                    continue;
                }
                if let Some(a) = self.shards.alloc_in(i, size, align, lo, hi, quick) {
                    return Some(a);
                }
            }
            if pass == 0 {
                if let Some(a) = self.shards.alloc_spanning(size, align, lo, hi) {
                    return Some(a);
                }
            }
        }
        None
    }

    /// Record `[addr, addr + size)`, free VA taken from the tree or pool of the shard ending
    /// at `shard_end`, as live in `st`, that shard's node (locked). On failure (an exhausted
    /// busy index) the VA goes back to the tree.
    #[inline(always)]
    fn record(
        &self,
        st: &mut NodeState,
        shard_end: u64,
        addr: u64,
        size: u64,
        info: &AreaInfo,
    ) -> Result<u64, KvaError> {
        let end = addr + size;
        if st.insert(addr, end, info).is_err() {
            return Err(self.record_failed(addr, end, size));
        }
        if end > shard_end {
            self.shards.account_crossing(addr, end, true);
        }
        Ok(addr)
    }

    /// [`Inner::record`] refused: only an exhausted index can get here (the range was
    /// free): the VA goes back to the tree.
    #[cold]
    #[inline(never)]
    fn record_failed(&self, addr: u64, end: u64, size: u64) -> KvaError {
        self.shards.free_range(addr, end);
        KvaError::NoSpace {
            size,
            align: PAGE_SIZE,
            start: addr,
            end,
        }
    }

    /// Record the free VA `[addr, addr + size)` (taken from the trees) as live in the busy
    /// index of the shard containing `addr`.
    fn publish(&self, addr: u64, size: u64, info: &AreaInfo) -> Result<u64, KvaError> {
        let end = addr + size;
        let Some(i) = self.shards.index_of(addr).filter(|_| end <= self.cfg.end) else {
            // Unreachable: the space came from our trees.
            return Err(KvaError::InvalidRange { start: addr, end });
        };
        let sh = self.shards.get(i);
        let mut st = sh.lock_node();
        self.record(&mut st, sh.end(), addr, size, info)
    }

    /// The allocation-failure path (Linux's `reclaim_and_purge_vmap_areas`, then the retry):
    /// make every free byte visible to a tree search, then run `search` before anything can
    /// hide it again. In order:
    ///
    /// 1. announce the reclaim (`reclaiming`): from the moment each node is drained below,
    ///    its refills carve single areas, not batches;
    /// 2. run the deferred frees queued so far and wait for drains in flight (a worker may
    ///    have just taken some), as [`Kva::purge`](crate::kva::Kva::purge) does, so that
    ///    `vfree_atomic`s made before the failure are lazy areas by now;
    /// 3. take the purge lock (waiting for a purge in progress: its areas are merged when it
    ///    returns), purge everything lazy into the TREES (no pool refill), then drain every
    ///    node's pools (their ready lists too) into the trees, still under the purge lock, so
    ///    that no purge can push or hand back areas between the drain and the search (Linux 6.9 drains its node
    ///    pools inside `__purge_vmap_area_lazy`, under `vmap_purge_lock`, for the same
    ///    reason);
    /// 4. run `search` under the purge lock (lock order purge -> node -> shard free).
    ///
    /// So an allocation fails only if, at that point, no free space that fits exists in any
    /// tree, any pool or any lazy list or batch: space taken by concurrent allocations
    /// (single areas while the reclaim runs) and areas freed after the purge are the only
    /// ones it cannot see.
    pub(crate) fn reclaim_then<R>(&self, search: impl FnOnce() -> Option<R>) -> Option<R> {
        let _announced = Announced::new(&self.reclaim);
        self.drain_deferred();
        self.wait_for_drains();
        let guard = self.purge.lock();
        self.purge_locked(&guard, Pooling::Trees, None);
        self.drain_caches();
        let found = search();
        drop(guard);
        found
    }

    /// Move every pooled area back into the trees.
    pub(crate) fn drain_caches(&self) {
        if !self.pools.enabled() {
            return;
        }
        let mut areas = Vec::new();
        for sh in self.shards.all() {
            sh.lock_node().pools.drain(|a, b| areas.push((a, b)));
        }
        for (a, b) in areas {
            self.shards.free_range(a, b);
        }
    }

    pub(crate) fn alloc_at(&self, start: u64, end: u64, info: AreaInfo) -> Result<(), KvaError> {
        let bad = KvaError::InvalidRange { start, end };
        if start >= end || start % PAGE_SIZE != 0 || end % PAGE_SIZE != 0 {
            return Err(bad);
        }
        if start < self.cfg.start || end > self.cfg.end {
            return Err(bad);
        }
        let taken = self.shards.alloc_exact(start, end)
            || self
                .reclaim_then(|| self.shards.alloc_exact(start, end).then_some(()))
                .is_some();
        if !taken {
            return Err(KvaError::NoSpace {
                size: end - start,
                align: PAGE_SIZE,
                start,
                end,
            });
        }
        self.publish(start, end - start, &info).map(drop)
    }

    pub(crate) fn find(&self, addr: u64) -> Option<VmArea> {
        let i = self.shards.index_of(addr)?;
        self.find_in(i, addr)
            .or_else(|| self.find_spanning(i, addr))
    }

    /// The area containing `addr` among those starting in shard `i`.
    fn find_in(&self, i: usize, addr: u64) -> Option<VmArea> {
        self.shards.get(i).lock_node().find_containing(addr)
    }

    /// The area containing `addr` that starts in a shard below `i`: only an area crossing
    /// into shard `i` can, and it crosses into every shard between its own and `i`, so the
    /// walk down stops at the first shard nothing crosses into (`Shard::crossed_in`). The
    /// cost is bounded by the span of the crossing areas, not by the shard count.
    fn find_spanning(&self, i: usize, addr: u64) -> Option<VmArea> {
        let mut k = i;
        while k > 0 && self.shards.get(k).crossed_into() {
            k -= 1;
            if let Some(a) = self.find_in(k, addr) {
                return Some(a);
            }
        }
        None
    }

    /// Every live area overlapping `[start, end)`, ascending: the one containing `start` if
    /// it starts in a lower shard, then each shard of the window's busy index from its first
    /// overlapping area (`BpTree::iter_overlapping`). O(window shards + k log n) for k
    /// areas found; no snapshot of the whole busy set.
    pub(crate) fn busy_overlapping(&self, start: u64, end: u64) -> Vec<VmArea> {
        let mut out = Vec::new();
        let lo = start.max(self.cfg.start);
        let hi = end.min(self.cfg.end);
        if lo >= hi {
            return out;
        }
        let (first, last) = self.shards.window(lo, hi);
        if let Some(a) = self.find_spanning(first, lo) {
            out.push(a);
        }
        for k in first..=last {
            out.extend(self.shards.get(k).lock_node().overlapping(lo, hi));
        }
        out
    }

    pub(crate) fn set_info(
        &self,
        start: u64,
        f: impl FnOnce(&mut AreaInfo),
    ) -> Result<(), KvaError> {
        if let Some(i) = self.shards.index_of(start) {
            if self.shards.get(i).lock_node().update_info(start, f) {
                return Ok(());
            }
        }
        Err(self.miss_error(start, false))
    }
}
