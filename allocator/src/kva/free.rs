//! The freeing side of [`Kva`](super::Kva): `remove` / `remove_if` (with the miss errors that
//! tell a double free from a wild pointer), `free_lazy`, `free_unused` and the lazy trigger.
//!
//! # How it works
//!
//! `remove_if` finds, checks and removes the area in one node-lock section of the shard
//! holding its start and hands back a [`RemovedArea`] token. `remove_if_unmap` (a small
//! area's `vfree`) also lets its caller clear the area's page-table entries in that section
//! and queues the area lazily before the unlock: one section instead of two. `free_lazy`
//! records a lazily freed area in that node's lazy batch (one more node-lock section) or,
//! with the batch full (the purge lagging far behind), pushes it on the shard's lock-free
//! overflow list; a counter crossing a power-of-two step makes it look at the global
//! backlog and kick a purge past `lazy_max_pages`. `remove_free_lazy` does both in one
//! node-lock section, for callers with nothing to unmap between the two (the area's pages
//! already unmapped or never mapped by them: deferred frees, retired vmap blocks).
//!
//! # Locking and ordering
//!
//! As in the parent module: the node lock is released before a kick (a kick may purge, which
//! takes the purge lock first); a node's lazy counter is written only under the node lock
//! (`Relaxed` load + store), an overflow list's by `Relaxed` RMWs raised before the
//! `Release` push. The miss path of `remove` takes the purge lock, then one node lock at a
//! time.

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::VirtAddr;
use pagetable::platform::Platform;

use super::Inner;
use crate::kva::area::{RemovedArea, VmArea};
use crate::kva::config::PurgeMode;
use crate::kva::error::KvaError;
use crate::kva::node::NodeState;
use crate::kva::shard::Shard;
use crate::sync::MutexGuard;

/// What `Inner::remove_locked` hands back: the area's shard, its node lock still held, and
/// the removed area.
type Removed<'a, P> = (&'a Shard<P>, MutexGuard<'a, P, NodeState>, VmArea);

impl<P: Platform> super::Kva<P> {
    /// [`Kva::remove_if`](super::Kva::remove_if) and the unmap of the area in ONE critical
    /// section of its node's lock, then the lazy free before the unlock: `vfree`'s path for
    /// small areas (one lock section instead of two). `unmap` runs under the node lock with
    /// the removed area: it either clears the area's page-table entries there and returns
    /// `Some(Ok(unmapped pages))` (the area is then queued lazily, before the unlock, so
    /// the purge, which takes the lazy batch under this lock, never sees it with live
    /// entries), or returns `None` to get the area back as a [`RemovedArea`] (unmap it with
    /// no lock held, then [`Kva::free_lazy`](super::Kva::free_lazy)), or `Some(Err(e))`
    /// (the area stays removed and is never recycled; `e` is returned). `unmap` must not
    /// take an allocator lock, allocate or free frames, or call back into the allocator:
    /// page-table updates take no lock; frames the unmap hands back are freed by the caller
    /// after this returns. Errors of `check` and misses: as `remove_if` (nothing changed).
    #[inline]
    pub(crate) fn remove_if_unmap<E: From<KvaError>>(
        &self,
        addr: VirtAddr,
        check: impl FnOnce(&VmArea) -> Result<(), E>,
        unmap: impl FnOnce(&VmArea) -> Option<Result<usize, E>>,
    ) -> Result<Option<RemovedArea>, E> {
        self.inner.remove_if_unmap(addr.as_u64(), check, unmap)
    }
}

impl<P: Platform> Inner<P> {
    /// Why `addr` is not the start of a live area.
    pub(super) fn miss_error(&self, addr: u64, check_lazy: bool) -> KvaError {
        let Some(i) = self.shards.index_of(addr) else {
            return KvaError::NotAllocated { addr };
        };
        if let Some(a) = self.find(addr) {
            if a.start != addr {
                return KvaError::NotStartOfArea {
                    addr,
                    start: a.start,
                };
            }
        }
        if check_lazy && self.lazy_holds(i, addr) {
            return KvaError::DoubleFree { addr };
        }
        KvaError::NotAllocated { addr }
    }

    /// Whether an area starting at `addr` waits in shard `i`'s lazy batch or on its
    /// overflow list. Error path only (telling a double free from a wild pointer): takes the
    /// purge lock (so no purger holds a detached batch or chain), looks through the node's
    /// batch under its lock, then detaches the overflow list, walks it and puts it back. The
    /// work is bounded by the lazy backlog (at most about `lazy_max_pages * 5 / 4` areas, see
    /// `kva::lazy_step_shift`).
    fn lazy_holds(&self, i: usize, addr: u64) -> bool {
        let _purging = self.purge.lock();
        let sh = self.shards.get(i);
        if sh.lock_node().lazy().iter().any(|r| r.0 == addr) {
            return true;
        }
        let mut found = false;
        sh.peek_overflow(|s, _| found |= s == addr);
        found
    }

    pub(crate) fn remove(&self, addr: u64) -> Result<RemovedArea, KvaError> {
        self.remove_if(addr, |_| Ok::<(), KvaError>(()))
    }

    #[inline]
    pub(crate) fn remove_if<E: From<KvaError>>(
        &self,
        addr: u64,
        check: impl FnOnce(&VmArea) -> Result<(), E>,
    ) -> Result<RemovedArea, E> {
        let (_, st, area) = self.remove_locked(addr, check)?;
        drop(st);
        Ok(RemovedArea {
            area,
            owner: self.id,
        })
    }

    /// Find, check and remove the live area starting at `addr` under its node's lock, and
    /// return that lock still held with the area: the first half of `remove_if` and of
    /// `remove_if_unmap`. The crossing count is lowered before the lock is released, so it
    /// never falls below the live crossings. Misses give `remove`'s errors (lock released).
    #[inline(always)]
    fn remove_locked<E: From<KvaError>>(
        &self,
        addr: u64,
        check: impl FnOnce(&VmArea) -> Result<(), E>,
    ) -> Result<Removed<'_, P>, E> {
        let Some(i) = self.shards.index_of(addr) else {
            return Err(KvaError::NotAllocated { addr }.into());
        };
        let sh = self.shards.get(i);
        let mut st = sh.lock_node();
        let Some(area) = st.remove_checked(addr, check)? else {
            drop(st);
            return Err(self.miss_error(addr, true).into());
        };
        if area.end > sh.end() {
            self.shards.account_crossing(area.start, area.end, false);
        }
        Ok((sh, st, area))
    }

    /// `remove_if`, then `unmap(&area)` in the SAME node-lock section (see
    /// [`Kva::remove_if_unmap`](super::Kva::remove_if_unmap)): `Some(Ok(pages))`, the
    /// caller cleared the area's entries there, and the area is queued lazily before the
    /// lock is released (`queue_lazy`, as `free_lazy` would); `None`, the area comes back
    /// as a token, to be unmapped with no lock held and freed with `free_lazy`;
    /// `Some(Err(e))`, the unmap failed: the area stays removed and is never recycled (its
    /// entries may live), as when `free_lazy` is not called, and `e` is returned.
    #[inline]
    pub(crate) fn remove_if_unmap<E: From<KvaError>>(
        &self,
        addr: u64,
        check: impl FnOnce(&VmArea) -> Result<(), E>,
        unmap: impl FnOnce(&VmArea) -> Option<Result<usize, E>>,
    ) -> Result<Option<RemovedArea>, E> {
        let (sh, st, area) = self.remove_locked(addr, check)?;
        match unmap(&area) {
            Some(Ok(pages)) => {
                self.queue_lazy(sh, st, area.start, area.end, pages);
                Ok(None)
            }
            None => {
                drop(st);
                Ok(Some(RemovedArea {
                    area,
                    owner: self.id,
                }))
            }
            Some(Err(e)) => Err(e),
        }
    }

    /// Whether `area` was issued by this allocator. A foreign token is a caller bug: it is
    /// refused and counted (`KvaStats::foreign_tokens`), leaking its range in its own
    /// allocator rather than corrupting this one.
    fn owns(&self, area: &RemovedArea) -> bool {
        let ok = area.owner == self.id;
        if !ok {
            self.purge.count_foreign_token();
        }
        ok
    }

    #[inline]
    pub(crate) fn free_lazy(&self, area: RemovedArea, unmapped_pages: usize) {
        if !self.owns(&area) {
            return;
        }
        let Some(i) = self.shards.index_of(area.area.start) else {
            return;
        };
        let sh = self.shards.get(i);
        let st = sh.node().lock();
        self.queue_lazy(sh, st, area.area.start, area.area.end, unmapped_pages);
    }

    /// `free_lazy(remove(addr)?, unmapped_pages)` in ONE node-lock critical section: find
    /// and remove the live area starting at `addr`, and queue it in the same node's lazy
    /// batch before the lock is released (a full batch: the overflow list, after it). The
    /// area is pending from the moment it leaves the busy index, as on the two-step path;
    /// `unmapped_pages` is clamped to the area's pages. Misses give `remove`'s errors.
    #[inline]
    pub(crate) fn remove_free_lazy(
        &self,
        addr: u64,
        unmapped_pages: usize,
    ) -> Result<(), KvaError> {
        let Some(i) = self.shards.index_of(addr) else {
            return Err(KvaError::NotAllocated { addr });
        };
        let sh = self.shards.get(i);
        let mut st = sh.node().lock();
        let Some((start, end)) = st.remove_bounds(addr) else {
            drop(st);
            return Err(self.miss_error(addr, true));
        };
        if end > sh.end() {
            // Before the area can be purged and handed out again (as `remove_if` does it
            // before `free_lazy`): the crossing count never falls below the live crossings.
            self.shards.account_crossing(start, end, false);
        }
        self.queue_lazy(sh, st, start, end, unmapped_pages);
        Ok(())
    }

    /// The tail of both lazy frees: queue `[start, end)` (an area of shard `sh`, no longer
    /// live) in the node's lazy batch under `st`, the node's lock, which it releases; with
    /// the batch full, on the lock-free overflow list after the unlock, in a spare node if
    /// the node had one (counter first, then the `Release` push: see
    /// `Shard::push_overflow`). The range waits there (pending, not free) for a purge, which
    /// takes it under the same lock. A caller cannot have unmapped more pages than the area
    /// has (a larger count is a caller bug; clamped, so the statistics cannot overflow).
    #[inline(always)]
    fn queue_lazy(
        &self,
        sh: &Shard<P>,
        mut st: MutexGuard<'_, P, NodeState>,
        start: u64,
        end: u64,
        unmapped_pages: usize,
    ) {
        let pages = crate::kva::shard::pages(start, end);
        let unmapped_pages = unmapped_pages.min(pages);
        let recorded = match sh
            .node()
            .record_lazy(&mut st, start, end, pages, unmapped_pages)
        {
            Some(old) => Ok(old),
            None => Err(st.take_spare()),
        };
        drop(st);
        let old = match recorded {
            Ok(old) => old,
            Err(spare) => sh.push_overflow(spare, start, end, pages, unmapped_pages),
        };
        self.lazy_added(old, pages);
    }

    /// `pages` were added to a lazy counter that held `old`: when that crosses a
    /// power-of-two step (`lazy_step_shift`), look at the whole backlog and kick a purge once
    /// it is above `lazy_max_pages` (Linux: `nr_lazy > lazy_max_pages()`). Summing every
    /// counter on each free would cost more than the free; the step is small enough that the
    /// pages no check has seen stay below a quarter of the threshold (see
    /// `kva::lazy_step_shift`).
    #[inline]
    fn lazy_added(&self, old: usize, pages: usize) {
        let shift = self.lazy_step_shift;
        if old >> shift != old.saturating_add(pages) >> shift
            && self.lazy_backlog() > self.cfg.lazy_max_pages
        {
            self.kick_purge();
        }
    }

    pub(crate) fn free_unused(&self, area: RemovedArea) {
        if !self.owns(&area) {
            return;
        }
        let (start, end) = (area.area.start, area.area.end);
        self.shards.free_range(start, end);
        if let Some(i) = self.shards.index_of(start) {
            self.shards.get(i).add_returned(end - start);
        }
    }

    /// Pages waiting for a purge: the nodes' lazy batches plus the overflow lists
    /// (`Relaxed`: a heuristic, exact when quiescent).
    pub(crate) fn lazy_backlog(&self) -> usize {
        self.shards
            .all()
            .iter()
            .map(|s| s.node().lazy_pages().saturating_add(s.overflow_pages()))
            .fold(0, usize::saturating_add)
    }

    /// Past the threshold: hand the purge to a worker (Background) or run it here unless
    /// somebody already purges (Inline, Synchronous). In Background mode a kick purge that
    /// is already running takes the kick as one more round (`join_running_purge`), so no
    /// thread is woken just to find it running.
    pub(crate) fn kick_purge(&self) {
        if self.cfg.purge_mode == PurgeMode::Background {
            if self.join_running_purge() {
                return;
            }
            match self.background.schedule_purge() {
                Some(true) => return self.count_purge_request(),
                Some(false) => return,
                None => {}
            }
        }
        let _ = self.try_purge();
    }
}
