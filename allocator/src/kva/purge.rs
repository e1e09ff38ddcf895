//! The lazy purge (Linux's `__purge_vmap_area_lazy`, split across shards as in 6.9's
//! `purge_vmap_node`).
//!
//! # How it works
//!
//! 1. One purger at a time holds the purge mutex. A kick past the threshold never waits for
//!    another kick: if a kick purge is running it only marks "again" in the atomic
//!    `kick_state` and returns (somebody already purging: skip), and the running purger does
//!    one more round before it stops (see `Inner::try_purge`). In Background mode a kick
//!    takes that step first (`Inner::join_running_purge`) and wakes a worker only when no
//!    kick purge runs, so kicks during a lagging purge wake nobody. An explicit
//!    [`Kva::purge`](crate::kva::Kva::purge) or an allocation that found no space waits for
//!    the mutex.
//! 2. Every node's lazy batch is swapped for an empty spare array under the node's lock
//!    (O(1); the node's page counter is zeroed there); every shard's overflow list is taken
//!    with one `del_all` (lock-free against concurrent pushes) and walked once, its counter
//!    lowered by what was detached. A node's batch holds only areas starting in its shard,
//!    so each shard's share is ready as it is. The union range `[min start, max end)` of
//!    everything taken is computed on the way. Lazy counters thus count what still waits;
//!    the areas being merged stay "pending" (`returned` is raised as they merge).
//! 3. ONE flush of that range through the [`TlbFlush`](pagetable::TlbFlush) hook. Only
//!    after it returns does any purged range become allocatable again.
//! 4. Each shard's share is one work item: areas of a pooled size go back to the node's
//!    pools (bounded; when the purge comes from an allocation failure everything goes to the
//!    trees; see [`Pooling`]: pushed onto their classes, or, from a Background kick purge
//!    running away from the nodes' CPUs, handed back as one ready list that the node's next
//!    pool miss sorts in), the rest is merged into the shard's free tree under its lock.
//!    With workers, `helpers = clamp(backlog / lazy_max_pages, 1, shards with work) - 1` of
//!    them are woken to take items while the purger takes its share and then waits for the
//!    rest (`purge_worker` module).
//! 5. Adjacent areas are coalesced into runs before the shard's free-tree lock is taken.
//!    Detached pages stay counted in `merging` until their run is merged (the seed lowers
//!    `vmap_lazy_nr` per merged area, not at `llist_del_all`); after each run, while the
//!    waiting backlog plus what is still being merged is below `resched_threshold =
//!    2 * lazy_max_pages`, the purger yields the free-tree lock to waiting allocators
//!    (`cond_resched_lock`); above it, it keeps the lock and finishes first. Every
//!    [`RESCHED_EVERY`] runs it raises the shard's `returned` bytes and re-reads the backlog
//!    (a sum over every lazy counter). The push into the pools holds the node lock only
//!    until every class it met is full; a hand-back holds it for one swap.
//!
//! # Locking and ordering
//!
//! Purge lock -> (node lock, released) -> shard free lock; the spare arrays are only
//! touched under the purge lock (their mutex is a leaf). A node's batch changes hands under
//! the node's lock (the freeing thread's writes happen before the purger's swap). The
//! `del_all` `Acquire` pairs with the `Release` push of each overflowing `free_lazy`, so the
//! purger sees every listed node's fields. `kick_state` is changed only by `AcqRel`
//! read-modify-writes. Counters are `Relaxed`; a node's lazy counter is written only under
//! its lock.

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::PAGE_SIZE;
use pagetable::VirtAddr;
use pagetable::platform::Platform;

use crate::kva::Inner;
use crate::kva::config::PurgeMode;
use crate::kva::free_tree::FreeTree;
use crate::kva::pools;
use crate::kva::shard::Shard;
use crate::sync::{AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};

/// `kick_state` bit: a kick-triggered purge is running.
pub(crate) const KICK_RUNNING: usize = 1;
/// `kick_state` bit: a kick arrived while it was running; it must run one more round.
pub(crate) const KICK_AGAIN: usize = 2;

/// Runs (of adjacent purged areas) a purge merges into a shard's free tree between two
/// looks at the global lazy backlog.
///
/// After each run the purge offers the free-tree lock to waiting allocators
/// (`cond_resched_lock`) while what waits plus what is still being merged stays below
/// `2 * lazy_max_pages` (the seed's `resched_threshold`), and keeps the lock otherwise, to
/// finish first. Linux reads its one global lazy counter after every area; here the backlog
/// is a sum over every shard's and node's counter, so it is re-read (and the bytes
/// merged so far are published to the shard's pending-bytes accounting) only every
/// `RESCHED_EVERY` runs. Why 32: the sum then costs about 2 * shards / 32 loads per
/// run, a few on a 64-CPU instance, small beside a tree merge, while the decision and the
/// accounting lag by at most 32 runs.
pub const RESCHED_EVERY: usize = 32;

/// What one purge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Areas taken off the lazy lists.
    pub areas: usize,
    /// Their pages (guard pages included).
    pub pages: usize,
    /// The range flushed, if anything was purged: `(start, end)`.
    pub flushed: Option<(u64, u64)>,
    /// Workers woken to help with the merge.
    pub helpers: usize,
    /// Areas that went back to the nodes' pools rather than the trees.
    pub to_caches: usize,
}

/// Cumulative purge statistics (written by the purger, and by the freeing path for the
/// kicks and refused tokens); read as a [`PurgeTotals`] snapshot.
#[derive(Debug, Default)]
struct PurgeCounters {
    purges: AtomicU64,
    areas: AtomicU64,
    pages: AtomicU64,
    flushes: AtomicU64,
    pages_flushed: AtomicU64,
    to_caches: AtomicU64,
    /// Kicks past the threshold (any mode): purges tried, and kicks that joined a running
    /// kick purge.
    kicks: AtomicU64,
    /// Purge requests posted to the host's `PurgeWork` hook or a worker (a wake-up each).
    requests: AtomicU64,
    /// Unmapped pages reported by `free_lazy` for the purged areas.
    unmapped_pages: AtomicU64,
    /// Merges refused by a tree (would be a bug: an area freed twice).
    merge_errors: AtomicUsize,
    /// `RemovedArea`s of another allocator handed to this one (refused).
    foreign_tokens: AtomicUsize,
}

/// A snapshot of the purge counters (each `Relaxed`: exact when quiescent).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PurgeTotals {
    pub(crate) purges: u64,
    pub(crate) areas: u64,
    pub(crate) pages: u64,
    pub(crate) flushes: u64,
    pub(crate) pages_flushed: u64,
    pub(crate) to_caches: u64,
    pub(crate) kicks: u64,
    pub(crate) requests: u64,
    pub(crate) unmapped_pages: u64,
    pub(crate) merge_errors: usize,
    pub(crate) foreign_tokens: usize,
}

/// The purge's own state: its lock (Linux's `vmap_purge_lock`), the kick word, the pages
/// detached and not merged yet, the spare arrays swapped for the nodes' lazy batches, and
/// the counters. Fields private to this module.
pub(crate) struct PurgeState<P: Platform> {
    /// Serialises purgers.
    lock: Mutex<P, ()>,
    /// Kick-triggered purge state, `KICK_RUNNING | KICK_AGAIN` (see `Inner::try_purge`).
    kick_state: AtomicUsize,
    /// Pages a purge has detached and not merged back yet (Linux counts them in
    /// `vmap_lazy_nr` until each area is merged): the `cond_resched_lock` rule looks at these
    /// plus the waiting backlog, as the seed does.
    merging: AtomicUsize,
    /// Empty arrays swapped for the nodes' lazy batches (used only by the purge lock's holder
    /// and the helpers it waits for; a leaf mutex, hardly ever contended).
    spares: Mutex<P, Vec<Vec<(u64, u64)>>>,
    counters: PurgeCounters,
}

impl<P: Platform> PurgeState<P> {
    /// A purge state.
    pub(crate) fn new() -> Self {
        Self {
            lock: Mutex::<P, _>::new(()),
            kick_state: AtomicUsize::new(0),
            merging: AtomicUsize::new(0),
            spares: Mutex::<P, _>::new(Vec::new()),
            counters: PurgeCounters::default(),
        }
    }

    /// Keep an emptied batch array for the next purge's swaps.
    fn give_spare(&self, mut v: Vec<(u64, u64)>) {
        if v.capacity() != 0 {
            v.clear();
            self.spares.lock().push(v);
        }
    }

    /// Take the purge lock: no purge runs (or holds a detached chain or batch) while the
    /// guard lives. Callers: purges, the allocation-failure reclaim, the double-free check and
    /// the invariant check.
    pub(crate) fn lock(&self) -> MutexGuard<'_, P, ()> {
        self.lock.lock()
    }

    /// Count a refused foreign token.
    pub(crate) fn count_foreign_token(&self) {
        self.counters.foreign_tokens.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters, read one by one.
    pub(crate) fn totals(&self) -> PurgeTotals {
        let c = &self.counters;
        PurgeTotals {
            purges: c.purges.load(Ordering::Relaxed),
            areas: c.areas.load(Ordering::Relaxed),
            pages: c.pages.load(Ordering::Relaxed),
            flushes: c.flushes.load(Ordering::Relaxed),
            pages_flushed: c.pages_flushed.load(Ordering::Relaxed),
            to_caches: c.to_caches.load(Ordering::Relaxed),
            kicks: c.kicks.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            unmapped_pages: c.unmapped_pages.load(Ordering::Relaxed),
            merge_errors: c.merge_errors.load(Ordering::Relaxed),
            foreign_tokens: c.foreign_tokens.load(Ordering::Relaxed),
        }
    }
}

/// Where a purge returns the purged areas of pooled sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pooling {
    /// Nowhere: everything goes to the trees (the allocation-failure reclaim).
    Trees,
    /// Pushed onto their classes in the nodes' pools: a purge on the freeing thread (the
    /// synchronous and inline modes) or on a thread that asked for it (`Kva::purge`).
    Push,
    /// Handed back to each node in one piece, for the node's next pool miss to sort in
    /// (`Pools::hand_back`): a kick purge in Background mode, which runs on a worker or the
    /// host's workqueue, away from the CPUs that will allocate them.
    HandBack,
}

/// One shard's share of a purge: the areas taken from its node's batch and overflow list.
#[derive(Debug)]
pub(crate) struct Work {
    shard: usize,
    /// `(start, end)` of every area to merge: the overflow list's, then the node's batch.
    ranges: Vec<(u64, u64)>,
    /// Where areas of pooled sizes go.
    pooling: Pooling,
}

/// Linux 6.9's helper count: one per `lazy_max_pages` of backlog, at most one per shard with
/// work, minus the purger itself.
pub(crate) fn helpers_for(
    backlog_pages: usize,
    lazy_max_pages: usize,
    shards_with_work: usize,
) -> usize {
    (backlog_pages / lazy_max_pages.max(1)).clamp(1, shards_with_work.max(1)) - 1
}

impl<P: Platform> Inner<P> {
    /// A kick past the threshold while a kick purge runs: set `KICK_AGAIN` so that the
    /// running purger does one more round, and return `true`; `false` (nothing changed) when
    /// no kick purge runs. This is `try_purge`'s "others skip" step, which a kick in
    /// Background mode takes on its own before handing the kick to a worker or the host's
    /// hook: a kick during a long purge then costs one read-modify-write instead of a
    /// wake-up that would only find the purge running
    /// (the kick storm of many threads freeing while one purge lags). Same ordering argument
    /// as `try_purge`: the `AcqRel` RMW that sets `KICK_AGAIN` comes after the kicker's push
    /// and before the purger's RMW that reads it, so the next round's `del_all` sees the push.
    pub(crate) fn join_running_purge(&self) -> bool {
        let mut cur = self.purge.kick_state.load(Ordering::Relaxed);
        while cur & KICK_RUNNING != 0 {
            match self.purge.kick_state.compare_exchange_weak(
                cur,
                cur | KICK_AGAIN,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.purge.counters.kicks.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
        false
    }

    /// Count a merge refused by a tree (an area freed twice: a bug, never expected).
    pub(crate) fn count_merge_error(&self) {
        self.purge
            .counters
            .merge_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Count a purge request posted to the host's hook or a worker.
    pub(crate) fn count_purge_request(&self) {
        self.purge.counters.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Purge unless a kick-triggered purge is already running (a kick past the threshold).
    ///
    /// Kicks go through one atomic word, `kick_state` (bits [`KICK_RUNNING`] and
    /// [`KICK_AGAIN`]), changed only by read-modify-writes, so all kicks and the end of every
    /// kick purge are totally ordered. A kicker that finds no kick purge running becomes the
    /// purger; one that finds a purge running sets `KICK_AGAIN` and returns at once ("others
    /// skip"). The purger, once done, clears `KICK_RUNNING` unless `KICK_AGAIN` is set, in
    /// which case it runs another round: a kick whose push came after the purger's `del_all`
    /// is never lost. Both RMWs are `AcqRel`, so the purger's next `del_all` sees the pushes
    /// of every kicker that set `KICK_AGAIN`. The purge itself runs under the purge mutex, so
    /// a kick purge waits only for an explicit purge (or an invariant check) in progress.
    pub(crate) fn try_purge(&self) -> Option<PurgeReport> {
        // Idle is exactly 0 (AGAIN is only ever set beside RUNNING, and a purger's end
        // clears both or keeps RUNNING): either join the running purge, or move 0 -> RUNNING
        // and purge; a failed move means a purge started meanwhile, so join it.
        loop {
            if self.join_running_purge() {
                return None;
            }
            if self
                .purge
                .kick_state
                .compare_exchange(0, KICK_RUNNING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.purge.counters.kicks.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
        // In Background mode this runs away from the nodes' CPUs: hand the pooled sizes back
        // rather than push them (see `pools`).
        let pooling = if self.cfg.purge_mode == PurgeMode::Background {
            Pooling::HandBack
        } else {
            Pooling::Push
        };
        let mut total = PurgeReport::default();
        loop {
            let r = self.purge_locked(&self.purge.lock(), pooling, None);
            total = PurgeReport {
                areas: total.areas + r.areas,
                pages: total.pages + r.pages,
                flushed: r.flushed.or(total.flushed),
                helpers: total.helpers.max(r.helpers),
                to_caches: total.to_caches + r.to_caches,
            };
            // Done unless a kick arrived meanwhile: RUNNING -> idle, or AGAIN -> RUNNING and
            // one more round.
            let mut cur = self.purge.kick_state.load(Ordering::Relaxed);
            loop {
                let next = if cur & KICK_AGAIN != 0 {
                    KICK_RUNNING
                } else {
                    0
                };
                match self.purge.kick_state.compare_exchange_weak(
                    cur,
                    next,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(actual) => cur = actual,
                }
            }
            if cur & KICK_AGAIN == 0 {
                return Some(total);
            }
        }
    }

    /// Purge, waiting for a purge in progress first (so that everything freed before the call
    /// is flushed and reusable when it returns). With `extra`, the one flush also covers that
    /// range, and it is flushed even when nothing is lazy (Linux's
    /// `__purge_vmap_area_lazy(start, end)` as `_vm_unmap_aliases` uses it: one flush for
    /// the lazy areas and the caller's dirty range together).
    pub(crate) fn purge_blocking(
        &self,
        pooling: Pooling,
        extra: Option<(u64, u64)>,
    ) -> PurgeReport {
        self.purge_locked(&self.purge.lock(), pooling, extra)
    }

    /// The purge proper; `_guard` proves the purge lock is held (the caller may keep holding
    /// it afterwards, as the allocation-failure path does).
    pub(crate) fn purge_locked(
        &self,
        _guard: &MutexGuard<'_, P, ()>,
        pooling: Pooling,
        extra: Option<(u64, u64)>,
    ) -> PurgeReport {
        let (mut lo, mut hi) = match extra {
            Some((s, e)) if s < e => (s, e),
            _ => (u64::MAX, 0u64),
        };
        let (mut areas, mut pages, mut unmapped) = (0usize, 0usize, 0u64);
        let pooling = if self.pools.enabled() {
            pooling
        } else {
            Pooling::Trees
        };
        // Each node's batch is swapped for an empty spare array under the node's lock (O(1):
        // the freeing CPUs wait for nothing; the page counter is zeroed there too), each
        // overflow list detached with one `del_all`.
        let mut spares = core::mem::take(&mut *self.purge.spares.lock());
        let mut work = Vec::new();
        for (i, sh) in self.shards.all().iter().enumerate() {
            let mut ranges = Vec::new();
            if sh.node().lazy_pages() != 0 {
                // (A batch is never non-empty with a zero count; a free racing with this
                // check is left for the next purge.)
                let (batch, taken) = sh.node().take_lazy(spares.pop().unwrap_or_default());
                pages += taken.pages;
                unmapped += taken.unmapped;
                ranges = batch;
            }
            if sh.overflow_pages() != 0 {
                // The overflow list (newest first) goes before the batch: the newest areas
                // are merged first, as from Linux's llist (rare: a lagging purge).
                let d = sh.take_overflow();
                pages += d.pages;
                unmapped += d.unmapped;
                ranges.splice(0..0, d.ranges);
                // The nodes are read: free for the next overflows.
                sh.lock_node().give_spares(d.nodes, d.len);
            }
            if ranges.is_empty() {
                self.purge.give_spare(ranges);
                continue;
            }
            for &(s, e) in &ranges {
                lo = lo.min(s);
                hi = hi.max(e);
            }
            areas += ranges.len();
            work.push(Work {
                shard: i,
                ranges,
                pooling,
            });
        }
        spares.extend(core::mem::take(&mut *self.purge.spares.lock()));
        *self.purge.spares.lock() = spares;
        if work.is_empty() {
            if lo >= hi {
                return PurgeReport::default();
            }
            // Nothing lazy, but the caller's range must be flushed: that is the one flush.
            self.flush
                .flush_range(VirtAddr::new_truncate(lo), VirtAddr::new_truncate(hi));
            self.purge.counters.flushes.fetch_add(1, Ordering::Relaxed);
            self.purge
                .counters
                .pages_flushed
                .fetch_add((hi - lo) / PAGE_SIZE, Ordering::Relaxed);
            return PurgeReport {
                flushed: Some((lo, hi)),
                ..PurgeReport::default()
            };
        }
        // Counted as being merged until each run is back (the seed lowers `vmap_lazy_nr`
        // per merged area; see `merge`).
        self.purge.merging.fetch_add(pages, Ordering::Relaxed);
        // The one shootdown. Ranges are canonical (checked at construction), so truncation
        // is exact; the lower half's end 1 << 47 reads as its exclusive end.
        self.flush
            .flush_range(VirtAddr::new_truncate(lo), VirtAddr::new_truncate(hi));
        let st = &self.purge.counters;
        st.purges.fetch_add(1, Ordering::Relaxed);
        st.flushes.fetch_add(1, Ordering::Relaxed);
        st.pages_flushed
            .fetch_add((hi - lo) / PAGE_SIZE, Ordering::Relaxed);
        st.areas.fetch_add(areas as u64, Ordering::Relaxed);
        st.pages.fetch_add(pages as u64, Ordering::Relaxed);
        st.unmapped_pages.fetch_add(unmapped, Ordering::Relaxed);

        let helpers = helpers_for(pages, self.cfg.lazy_max_pages, work.len());
        #[cfg(feature = "std")]
        let cached = match &self.background.sched {
            Some(sched) if helpers > 0 => sched.run(self, work, helpers),
            _ => work.into_iter().map(|w| self.merge(w)).sum(),
        };
        // Without worker threads the purger merges every shard's item itself (a kernel's
        // purge runs in its workqueue item, as Linux 6.9's does without helper nodes).
        #[cfg(not(feature = "std"))]
        let cached = work.into_iter().map(|w| self.merge(w)).sum();
        st.to_caches.fetch_add(cached as u64, Ordering::Relaxed);
        PurgeReport {
            areas,
            pages,
            flushed: Some((lo, hi)),
            helpers,
            to_caches: cached,
        }
    }

    /// Insert the purged run `[s, e)` into the locked `tree` of a shard ending at `shard_end`;
    /// the part above the shard (a boundary-crossing area) is queued in `spill`.
    fn merge_run(
        &self,
        tree: &mut FreeTree,
        shard_end: u64,
        s: u64,
        e: u64,
        spill: &mut Vec<(u64, u64)>,
    ) {
        let top = e.min(shard_end);
        if tree.insert_merge(s, top).is_err() {
            self.count_merge_error();
        }
        if top < e {
            spill.push((top, e));
        }
    }

    /// Push the areas of pooled sizes among `ranges` (purged areas of `shard`) onto their
    /// classes in the node's pools, emptying each range pushed (`(s, s)`); returns the areas
    /// and bytes pushed.
    fn push_to_pools(&self, shard: &Shard<P>, ranges: &mut [(u64, u64)]) -> (usize, u64) {
        let (mut cached, mut done_bytes) = (0, 0u64);
        let mut st = shard.lock_node();
        // Classes found full: no further push attempt for them (a purge usually carries far
        // more areas of a size than its pool holds), and once every class met so far is full
        // the scan stops: the node lock, which every allocation and free of the shard takes,
        // is held for a bounded number of areas, not for the whole purge.
        let mut full = [0u64; pools::MAX_CLASS_PAGES / 64];
        let mut seen = [0u64; pools::MAX_CLASS_PAGES / 64];
        for r in ranges.iter_mut() {
            let (s, e) = *r;
            let Some(class) = pools::class_of(e - s, PAGE_SIZE) else {
                continue;
            };
            let (w, bit) = (class / 64, 1u64 << (class % 64));
            if e > shard.end() || full[w] & bit != 0 {
                continue;
            }
            seen[w] |= bit;
            if st.pools.push(class, s) {
                cached += 1;
                done_bytes += e - s;
                // Pooled: emptied here, dropped from the merge.
                *r = (s, s);
            } else {
                full[w] |= bit;
                if full == seen {
                    break;
                }
            }
        }
        (cached, done_bytes)
    }

    /// Hand the areas of pooled sizes among `ranges` (purged areas of `shard`) back to the
    /// node in one piece (`Pools::hand_back`), at most a class's capacity of each size,
    /// emptying each range handed back; returns the areas and bytes handed back. The list is
    /// built without the node's lock and swapped in under it: the purger writes none of the
    /// pools' class headers or slots. `None` (nothing changed) when the node has not sorted
    /// in the previous hand-back yet.
    fn hand_back(&self, shard: &Shard<P>, ranges: &mut Vec<(u64, u64)>) -> Option<(usize, u64)> {
        let mut taken = [0u16; pools::MAX_CLASS_PAGES];
        let mut ready = Vec::new();
        let mut bytes = 0u64;
        for r in ranges.iter_mut() {
            let (s, e) = *r;
            let Some(class) = pools::class_of(e - s, PAGE_SIZE) else {
                continue;
            };
            if e > shard.end() || usize::from(taken[class]) >= self.pools.cap(class) {
                continue;
            }
            taken[class] += 1;
            ready.push((s, e));
            bytes += e - s;
            // Handed back: emptied here, dropped from the merge.
            *r = (s, s);
        }
        if ready.is_empty() {
            return Some((0, 0));
        }
        let n = ready.len();
        let refused = shard.lock_node().pools.hand_back(ready, bytes);
        match refused {
            // The node's old (empty) list is dropped here, after the unlock.
            Ok(_old) => Some((n, bytes)),
            Err(ready) => {
                // Restore the ranges: the caller pushes them instead.
                ranges.retain(|&(s, e)| s < e);
                ranges.extend(ready);
                None
            }
        }
    }

    /// Merge one shard's purged areas back (pools first, then the tree); returns how many
    /// areas went to pools.
    pub(crate) fn merge(&self, w: Work) -> usize {
        let Work {
            shard: si,
            mut ranges,
            pooling,
        } = w;
        let shard = self.shards.get(si);
        let (cached, mut done_bytes) = match pooling {
            Pooling::Trees => (0, 0),
            Pooling::Push => self.push_to_pools(shard, &mut ranges),
            Pooling::HandBack => match self.hand_back(shard, &mut ranges) {
                Some(done) => done,
                None => self.push_to_pools(shard, &mut ranges),
            },
        };
        if cached > 0 {
            ranges.retain(|&(s, e)| s < e);
            shard.add_returned(done_bytes);
            self.purge
                .merging
                .fetch_sub((done_bytes / PAGE_SIZE) as usize, Ordering::Relaxed);
            done_bytes = 0;
        }

        // Adjacent areas (consecutive in `ranges`, as sequential frees are) are coalesced
        // into runs first, with no lock held: the free-tree lock, which this shard's
        // allocations need for their refills, is then held for one tree update per run, not
        // for a walk over every purged area. A run is exactly the union of its areas.
        let mut w = 0usize;
        let mut k = 0;
        while k < ranges.len() {
            let (s, e) = ranges[k];
            k += 1;
            if let Some(run) = w.checked_sub(1).map(|i| &mut ranges[i]) {
                if e == run.0 {
                    run.0 = s;
                    continue;
                }
                if s == run.1 {
                    run.1 = e;
                    continue;
                }
            }
            ranges[w] = (s, e);
            w += 1;
        }
        ranges.truncate(w);
        // The seed's rule: after each merged area, `vmap_lazy_nr` (what waits plus what is
        // still being merged) is lowered by its pages, and while it is below
        // `resched_threshold` the free lock is offered to waiters (`cond_resched_lock`);
        // above it the purge keeps the lock and finishes first. Here per run (adjacent areas
        // coalesced above): `merging` is lowered per run, the waiting backlog (a sum over
        // every lazy counter) is re-read every `RESCHED_EVERY` runs, and `bump` costs nothing
        // when nobody waits.
        let resched_threshold = self.cfg.lazy_max_pages.saturating_mul(2);
        let mut spill = Vec::new();
        if !ranges.is_empty() {
            let mut waiting = self.lazy_backlog();
            let mut tree = shard.lock_free();
            for (k, &(s, e)) in ranges.iter().enumerate() {
                self.merge_run(&mut tree, shard.end(), s, e, &mut spill);
                done_bytes += e - s;
                let run_pages = ((e - s) / PAGE_SIZE) as usize;
                let merging = self
                    .purge
                    .merging
                    .fetch_sub(run_pages, Ordering::Relaxed)
                    .saturating_sub(run_pages);
                if k % RESCHED_EVERY == RESCHED_EVERY - 1 {
                    shard.add_returned(done_bytes);
                    done_bytes = 0;
                    waiting = self.lazy_backlog();
                }
                if waiting.saturating_add(merging) < resched_threshold {
                    tree.bump();
                }
            }
        }
        // Pieces of boundary-crossing areas above this shard go to their own trees.
        for (a, b) in spill {
            if !self.shards.free_range(a, b) {
                self.count_merge_error();
            }
        }
        shard.add_returned(done_bytes);
        self.purge.give_spare(ranges);
        cached
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use std::sync::Arc as StdArc;

    use pagetable::CountingFlush;

    use super::*;
    use crate::kva::Kva;
    use crate::kva::area::{AreaInfo, RemovedArea};
    use crate::kva::config::{KvaConfig, PurgeMode};
    use crate::kva::flags::VmFlags;
    use pagetable::platform::StdPlatform;

    const P: u64 = PAGE_SIZE;

    #[test]
    fn helper_count_follows_linux() {
        assert_eq!(helpers_for(10, 100, 4), 0);
        assert_eq!(helpers_for(250, 100, 4), 1);
        assert_eq!(helpers_for(1000, 100, 4), 3);
        assert_eq!(helpers_for(1000, 100, 1), 0);
        assert_eq!(helpers_for(0, 0, 0), 0);
    }

    /// `free_lazy` without the threshold check, to build a big backlog by hand (on the
    /// overflow lists).
    fn push_lazy(inner: &Inner<StdPlatform>, r: RemovedArea) {
        let i = inner.shards.index_of(r.start()).unwrap();
        let pages = crate::kva::shard::pages(r.start(), r.end());
        inner
            .shards
            .get(i)
            .push_overflow(None, r.start(), r.end(), pages, pages);
    }

    #[test]
    fn purge_with_helpers_merges_every_shard() {
        for mode in [PurgeMode::Inline, PurgeMode::Background] {
            let cfg = KvaConfig {
                start: 0x8000_0000,
                end: 0x8000_0000 + 1024 * P,
                shards: 4,
                lazy_max_pages: Some(8),
                purge_mode: mode,
                pcpu_cache: true,
                purge_workers: 3,
                nr_cpus: 0,
            };
            let k = Kva::new(cfg, StdArc::new(CountingFlush::new())).unwrap();
            let inner = k.inner_for_tests();
            let (s, e) = k.range();
            let mut areas = Vec::new();
            for node in 0..4 {
                for _ in 0..40 {
                    areas.push(
                        k.alloc(4 * P, P, s, e, Some(node), AreaInfo::new(VmFlags::ALLOC))
                            .map(|a| a.as_u64())
                            .unwrap(),
                    );
                }
            }
            for a in areas {
                push_lazy(
                    inner,
                    k.remove(pagetable::VirtAddr::new_truncate(a)).unwrap(),
                );
            }
            let rep = inner.purge_blocking(Pooling::Push, None);
            assert_eq!((rep.areas, rep.pages), (160, 640), "{mode:?}");
            assert_eq!(rep.helpers, 3, "{mode:?}");
            assert_eq!(rep.flushed, Some((s, s + (768 + 160) * P)));
            k.check_invariants().unwrap();
            let st = k.stats();
            assert_eq!(
                (st.lazy_pages, st.pending, st.free),
                (0, 0, st.total),
                "{mode:?}"
            );
        }
    }

    #[test]
    fn cache_feeding_is_bounded() {
        let cfg = KvaConfig {
            start: 0x8000_0000,
            end: 0x8000_0000 + 4096 * P,
            shards: 1,
            lazy_max_pages: Some(1 << 20),
            purge_mode: PurgeMode::Synchronous,
            pcpu_cache: true,
            purge_workers: 0,
            nr_cpus: 0,
        };
        let k = Kva::new(cfg, StdArc::new(CountingFlush::new())).unwrap();
        let (s, e) = k.range();
        let v: Vec<u64> = (0..200)
            .map(|_| {
                k.alloc(P, P, s, e, None, AreaInfo::new(VmFlags::MAP))
                    .map(|a| a.as_u64())
                    .unwrap()
            })
            .collect();
        for a in v {
            let r = k.remove(pagetable::VirtAddr::new_truncate(a)).unwrap();
            k.free_lazy(r, 1);
        }
        let rep = k.purge();
        let cap = k.inner_for_tests().pools.cap(0);
        assert!(rep.to_caches <= cap, "{rep:?}");
        assert!(k.stats().cached <= cap as u64 * P);
        k.check_invariants().unwrap();
    }
}
