//! Looking at a [`Kva`](crate::kva::Kva) from outside: [`KvaStats`], `for_each_busy` and
//! `check_invariants`.
//!
//! # How it works
//!
//! Statistics are sums over shards taken one lock (or one `Relaxed` load) at a time: each
//! figure is exact at some instant, the set is only consistent when the allocator is
//! quiescent. `check_invariants` takes the purge lock (no purge can hold a detached batch or
//! chain), then each structure's lock in turn, reads each node's busy index, pools and lazy
//! batch under the node lock, detaches each overflow list to walk it and puts it back, and
//! checks that every byte of the range is accounted for exactly once.
//!
//! # Locking
//!
//! Purge lock (invariant check only) -> one node or free lock at a time. Callbacks of
//! `for_each_busy` run with no lock held (snapshots are taken shard by shard).

use crate::kva::area::VmArea;
use crate::kva::{Inner, Kva};
#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::platform::Platform;

/// Counters and occupancy of a [`Kva`](crate::kva::Kva).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvaStats {
    /// Bytes managed.
    pub total: u64,
    /// Bytes in live areas.
    pub used: u64,
    /// Bytes free: in the trees plus in the nodes' pools.
    pub free: u64,
    /// Of `free`, bytes held by the nodes' pools (per-CPU with the default one shard per
    /// CPU).
    pub cached: u64,
    /// Bytes removed but not free yet (tokens outstanding, lazy lists, purge in progress).
    pub pending: u64,
    /// Pages waiting for a purge: in the nodes' lazy batches and on the shards' overflow
    /// lists (the purge trigger's counter; a purge in progress has already taken its areas
    /// off, they are still in `pending`).
    pub lazy_pages: usize,
    /// Live areas.
    pub nr_busy: usize,
    /// Free areas in the trees (fragmentation).
    pub nr_free_areas: usize,
    /// Largest free area in any tree.
    pub largest_free: u64,
    /// Purges that found something to purge.
    pub purges: u64,
    /// Areas purged in total.
    pub purged_areas: u64,
    /// Pages purged in total.
    pub purged_pages: u64,
    /// Of the purged areas, those returned to the nodes' pools.
    pub purged_to_caches: u64,
    /// TLB flushes issued by purges (one per purge).
    pub flushes: u64,
    /// Pages covered by those flushes (union ranges).
    pub pages_flushed: u64,
    /// Times the threshold was crossed and a purge tried (it ran, or found a kick purge
    /// running and left it one more round).
    pub kicks: u64,
    /// Purge requests posted in Background mode: calls of the host's `PurgeWork` hook, or
    /// wake-ups of a purge worker (a kick while a request is still pending posts nothing).
    /// A kick that finds a kick purge running joins it instead of posting, so this stays
    /// near the number of purges however many threads free at once.
    pub purge_requests: u64,
    /// Pages callers reported unmapped when freeing lazily, counted as their areas are
    /// purged (cumulative).
    pub unmapped_pages: u64,
    /// Merges refused by a tree (always 0 unless something freed an area twice).
    pub merge_errors: usize,
    /// Tokens of another allocator passed to `free_lazy`/`free_unused` (refused, ignored).
    pub foreign_tokens: usize,
    /// Busy-index slots allocated: live areas the nodes' indexes hold without growing (an
    /// area has no descriptor object of its own).
    pub descriptors: usize,
    /// The lazy threshold in pages.
    pub lazy_max_pages: usize,
    /// Number of shards.
    pub nr_shards: usize,
}

impl<P: Platform> Kva<P> {
    /// Call `f(start, end)` for every area freed lazily and not purged yet: on the shards'
    /// nodes' lazy batches and overflow lists (what Linux's `/proc/vmallocinfo` lists
    /// as `unpurged vm_area`), in no particular order. Waits for a purge in progress (its
    /// areas are free when it returns) and keeps purges out while it collects; `f` runs with
    /// no lock held. Areas removed but not freed yet (a token outstanding) are not listed.
    pub fn for_each_lazy(&self, f: impl FnMut(u64, u64)) {
        self.inner.for_each_lazy(f);
    }
}

impl<P: Platform> Inner<P> {
    pub(crate) fn for_each_lazy(&self, mut f: impl FnMut(u64, u64)) {
        let mut lazy: Vec<(u64, u64)> = Vec::new();
        {
            // No purger holds a detached batch or chain while we look (as `check_invariants`).
            let _purging = self.purge.lock();
            for sh in self.shards.all() {
                lazy.extend_from_slice(sh.lock_node().lazy());
                if sh.overflow_pages() != 0 {
                    sh.peek_overflow(|s, e| lazy.push((s, e)));
                }
            }
        }
        for (s, e) in lazy {
            f(s, e);
        }
    }

    pub(crate) fn stats(&self) -> KvaStats {
        let mut s = KvaStats {
            total: self.cfg.end - self.cfg.start,
            lazy_max_pages: self.cfg.lazy_max_pages,
            nr_shards: self.shards.len(),
            ..KvaStats::default()
        };
        for sh in self.shards.all() {
            {
                let st = sh.lock_node();
                s.used += st.bytes();
                s.nr_busy += st.len();
                s.cached += st.pools.bytes();
                s.descriptors += st.slots();
            }
            {
                let t = sh.lock_free();
                s.free += t.free_bytes();
                s.nr_free_areas += t.len();
                s.largest_free = s.largest_free.max(t.largest());
            }
            s.pending += sh.pending();
            s.lazy_pages += sh.node().lazy_pages() + sh.overflow_pages();
        }
        s.free += s.cached;
        let p = self.purge.totals();
        s.purges = p.purges;
        s.purged_areas = p.areas;
        s.purged_pages = p.pages;
        s.purged_to_caches = p.to_caches;
        s.flushes = p.flushes;
        s.pages_flushed = p.pages_flushed;
        s.kicks = p.kicks;
        s.purge_requests = p.requests;
        s.unmapped_pages = p.unmapped_pages;
        s.merge_errors = p.merge_errors;
        s.foreign_tokens = p.foreign_tokens;
        s
    }

    pub(crate) fn for_each_busy(&self, mut f: impl FnMut(&VmArea)) {
        let mut snap = Vec::new();
        for sh in self.shards.all() {
            snap.clear();
            snap.extend(sh.lock_node().iter());
            snap.iter().for_each(&mut f);
        }
    }

    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let _purging = self.purge.lock();
        // (start, end, what) of every range we can see.
        let mut ranges: Vec<(u64, u64, &'static str)> = Vec::new();
        let (mut busy, mut free, mut cached, mut pending, mut lazy_listed) =
            (0u64, 0u64, 0u64, 0u64, 0u64);
        for (i, sh) in self.shards.all().iter().enumerate() {
            {
                let st = sh.lock_node();
                st.check_index()
                    .map_err(|e| format!("shard {i} busy index: {e}"))?;
                let mut sum = 0;
                for a in st.iter() {
                    if a.start < sh.base() || a.start >= sh.end() {
                        return Err(format!(
                            "shard {i}: busy area at {:#x} starts outside the shard",
                            a.start
                        ));
                    }
                    sum += a.end - a.start;
                    ranges.push((a.start, a.end, "busy"));
                }
                if sum != st.bytes() {
                    return Err(format!(
                        "shard {i}: busy bytes {} but areas sum to {sum}",
                        st.bytes()
                    ));
                }
                busy += sum;
                let mut batch_pages = 0;
                for &(s, e) in st.lazy() {
                    batch_pages += crate::kva::shard::pages(s, e);
                    lazy_listed += e - s;
                    ranges.push((s, e, "lazy"));
                }
                let counted = sh.node().lazy_pages();
                if counted != batch_pages {
                    return Err(format!(
                        "shard {i}: lazy counter {counted} but the batch holds {batch_pages} pages"
                    ));
                }
                let mut pooled = 0;
                for (s, e) in st.pools.areas() {
                    if s < sh.base() || e > sh.end() {
                        return Err(format!(
                            "shard {i}: pooled area [{s:#x}, {e:#x}) outside the shard"
                        ));
                    }
                    pooled += e - s;
                    ranges.push((s, e, "cached"));
                }
                if pooled != st.pools.bytes() {
                    return Err(format!(
                        "shard {i}: pool bytes {} but areas sum to {pooled}",
                        st.pools.bytes()
                    ));
                }
                cached += pooled;
            }
            {
                let t = sh.lock_free();
                t.check_invariants()
                    .map_err(|e| format!("shard {i} free tree: {e}"))?;
                for (s, e) in t.iter() {
                    if s < sh.base() || e > sh.end() {
                        return Err(format!(
                            "shard {i}: free area [{s:#x}, {e:#x}) outside the shard"
                        ));
                    }
                    ranges.push((s, e, "free"));
                }
                free += t.free_bytes();
            }
            let mut pages = 0;
            sh.peek_overflow(|a, b| {
                pages += crate::kva::shard::pages(a, b);
                lazy_listed += b - a;
                ranges.push((a, b, "lazy"));
            });
            let counted = sh.overflow_pages();
            if counted < pages {
                return Err(format!(
                    "shard {i}: overflow counter {counted} below the {pages} pages listed"
                ));
            }
            pending += sh.pending();
        }
        ranges.sort_unstable();
        for w in ranges.windows(2) {
            let ((s0, e0, k0), (s1, e1, k1)) = (w[0], w[1]);
            if e0 > s1 {
                return Err(format!(
                    "{k0} [{s0:#x}, {e0:#x}) overlaps {k1} [{s1:#x}, {e1:#x})"
                ));
            }
        }
        if let (Some(f), Some(l)) = (ranges.first(), ranges.last()) {
            if f.0 < self.cfg.start || l.1 > self.cfg.end {
                return Err(format!(
                    "a range lies outside [{:#x}, {:#x})",
                    self.cfg.start, self.cfg.end
                ));
            }
        }
        if lazy_listed > pending {
            return Err(format!(
                "{lazy_listed} bytes on lazy lists but only {pending} pending"
            ));
        }
        let total = self.cfg.end - self.cfg.start;
        if free + cached + busy + pending != total {
            return Err(format!(
                "free {free:#x} + cached {cached:#x} + busy {busy:#x} + pending {pending:#x} != total {total:#x}"
            ));
        }
        let merge_errors = self.purge.totals().merge_errors;
        if merge_errors != 0 {
            return Err(format!(
                "{merge_errors} purged areas were refused by a free tree"
            ));
        }
        Ok(())
    }
}
