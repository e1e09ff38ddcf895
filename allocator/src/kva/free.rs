//! The freeing side of [`Kva`](super::Kva): `remove` / `remove_if` (with the miss errors that
//! tell a double free from a wild pointer), `free_lazy`, `free_unused` and the lazy trigger.
//!
//! # How it works
//!
//! `remove_if` finds, checks and removes the area in one busy-lock section and hands back a
//! [`RemovedArea`] token. `free_lazy` records a lazily freed area in the calling CPU's lazy
//! batch (one slot-lock section that also takes the descriptor back onto the slot's free
//! list) or, with per-CPU caching off or the batch full, pushes the descriptor on its
//! shard's lazy llist; a counter crossing a power-of-two step makes it look at the global
//! backlog and kick a purge past `lazy_max_pages`.
//!
//! # Locking and ordering
//!
//! As in the parent module: busy locks are leaves; the slot lock is released before a kick
//! (a kick may purge, which takes the purge lock first); a slot's lazy counter is written
//! only under the slot lock (`Relaxed` load + store), a shard's by `Relaxed` RMWs raised
//! before the `Release` push. The miss path of `remove` takes the purge lock, then one slot
//! lock at a time.

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::platform::Platform;

use super::Inner;
use crate::kva::area::{Desc, RemovedArea, VmArea};
use crate::kva::config::PurgeMode;
use crate::kva::error::KvaError;

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

    /// Whether an area starting at `addr` waits on shard `i`'s lazy list or in a CPU slot's
    /// lazy batch. Error path only (telling a double free from a wild pointer): takes the
    /// purge lock (so no purger holds a detached chain or batch), looks through the batches
    /// of the slots whose lazy counter is non-zero (a counter is written under its slot lock
    /// and zeroed by the purger, which we exclude: an empty batch is skipped without taking
    /// its lock), then detaches shard `i`'s list, walks it and puts it back. The work is
    /// bounded by the lazy backlog (at most about `lazy_max_pages * 5 / 4` areas, see
    /// `kva::lazy_step_shift`) plus one atomic load per slot.
    fn lazy_holds(&self, i: usize, addr: u64) -> bool {
        let _purging = self.purge.lock();
        let batched = (0..self.pcpu.len()).any(|c| {
            let cell = self.pcpu.cell(c);
            cell.lazy_pages() != 0 && cell.lock().lazy().iter().any(|r| r.0 == addr)
        });
        if batched {
            return true;
        }
        self.shards.get(i).peek_lazy(|chain| {
            chain.iter().any(|n| {
                // SAFETY: lazy-list nodes are links of pooled descriptors, owned by the
                // detached chain (we hold the purge lock: no purger holds one).
                let d = unsafe { Desc::from_node(n) };
                // SAFETY: as above: the chain owns the descriptor.
                unsafe { d.read() }.start == addr
            })
        })
    }

    pub(crate) fn remove(&self, addr: u64) -> Result<RemovedArea, KvaError> {
        self.remove_if(addr, |_| Ok::<(), KvaError>(()))
    }

    pub(crate) fn remove_if<E: From<KvaError>>(
        &self,
        addr: u64,
        check: impl FnOnce(&VmArea) -> Result<(), E>,
    ) -> Result<RemovedArea, E> {
        let Some(i) = self.shards.index_of(addr) else {
            return Err(KvaError::NotAllocated { addr }.into());
        };
        let shard = self.shards.get(i);
        let removed = {
            let mut busy = shard.lock_busy();
            let mut seen = None;
            let r = busy.remove_checked(addr, |_, _, desc| {
                // SAFETY: the descriptor is owned by the busy tree, whose lock we hold.
                let area = unsafe { desc.read() };
                let ok = check(&area);
                seen = Some(area);
                ok
            })?;
            r.zip(seen)
        };
        let Some(((_, _, desc), area)) = removed else {
            return Err(self.miss_error(addr, true).into());
        };
        if area.end > shard.end() {
            self.shards.account_crossing(area.start, area.end, false);
        }
        // The descriptor was removed from the busy tree under its lock: it is ours now, and
        // `area` is its content (nobody wrote it since: only the busy tree's owner may).
        Ok(RemovedArea {
            desc,
            area,
            owner: self.id,
        })
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

    pub(crate) fn free_lazy(&self, area: RemovedArea, unmapped_pages: usize) {
        if !self.owns(&area) {
            return;
        }
        let Some(i) = self.shards.index_of(area.area.start) else {
            return;
        };
        let pages = crate::kva::shard::pages(area.area.start, area.area.end);
        // A caller cannot have unmapped more pages than the area has (a larger count is a
        // caller bug; clamped, so the statistics cannot overflow).
        let unmapped_pages = unmapped_pages.min(pages);
        if self.pcpu.enabled() {
            // Fast path: the calling CPU's lazy batch. The range waits there (pending, not
            // free) for a purge, which takes it under this same lock; the descriptor goes
            // straight back to the slot's list (the token owned it), still in this CPU's
            // cache for the next allocation.
            let cell = self.pcpu.cell(P::this_cpu());
            let mut slot = cell.lock();
            let (start, end) = (area.area.start, area.area.end);
            if let Some(old) = cell.record_lazy(&mut slot, start, end, pages, unmapped_pages) {
                // SAFETY: the token owned the descriptor; its range is recorded above, so
                // nothing refers to it any more.
                unsafe { slot.put_desc(&self.pool, area.desc) };
                drop(slot);
                self.lazy_added(old, pages);
                return;
            }
        }
        // SAFETY: the token owns the descriptor until the push below. A plain write: the
        // purge reads it, ordered by the push's Release.
        unsafe { area.desc.set_unmapped(unmapped_pages) };
        // SAFETY: the token owned the descriptor and its fields are written; the shard's list
        // takes it over (counter first, then the `Release` push: see `Shard::push_lazy`).
        let old = unsafe { self.shards.get(i).push_lazy(area.desc, pages) };
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
        // SAFETY: the token owned the descriptor.
        unsafe {
            self.pcpu
                .lock(P::this_cpu())
                .put_desc(&self.pool, area.desc)
        };
    }

    /// Pages waiting for a purge: the shards' lazy lists plus the CPU slots' lazy batches
    /// (`Relaxed`: a heuristic, exact when quiescent).
    pub(crate) fn lazy_backlog(&self) -> usize {
        self.shards
            .all()
            .iter()
            .map(|s| s.lazy_pages())
            .fold(self.pcpu.lazy_pages(), usize::saturating_add)
    }

    /// Past the threshold: hand the purge to a worker (Background) or run it here unless
    /// somebody already purges (Inline, Synchronous).
    pub(crate) fn kick_purge(&self) {
        if self.cfg.purge_mode == PurgeMode::Background && self.background.schedule_purge() {
            return;
        }
        let _ = self.try_purge();
    }
}
