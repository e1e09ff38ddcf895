//! [`Kva`]: the kernel-virtual-address allocator over all shards (Linux's
//! `alloc_vmap_area` / `free_vmap_area_noflush` / `find_vmap_area`), without page tables.
//!
//! # How it works
//!
//! * **alloc** (`alloc_vmap_area`): a small request (at most [`MAX_CLASS_PAGES`] pages, page
//!   alignment, a window covering the home shard) pops a chunk and a descriptor from the
//!   calling CPU's slot under one uncontended lock, refilling an empty class with one batch
//!   carved from the home shard's tree. Otherwise the home shard's free tree is searched
//!   (`FreeTree::alloc_fast`: the lowest fit for page alignment; for larger alignments the
//!   lowest fit among the first few candidates, else Linux's `size + align - PAGE_SIZE`
//!   search, O(log n)), then the other shards the `[vstart, vend)` window intersects
//!   (skipping, without locking, those whose largest-free hint is too small), then runs of
//!   free space crossing shard boundaries (see the `shard` module). The area is then inserted
//!   into the busy tree of the shard containing its start. No space: `reclaim_then` (the
//!   deferred frees run, everything lazy purged into the trees, every per-CPU cache drained,
//!   and the search repeated, all under the purge lock); then call the notifiers and retry
//!   while they free something (bounded); then fail with [`KvaError::NoSpace`].
//! * **remove** takes the area out of its busy tree and returns a [`RemovedArea`] token;
//!   **free_lazy** records the area's range in the calling CPU's lazy batch and gives its
//!   descriptor straight back to that CPU (one slot-lock section; see the `pcpu` module), or,
//!   with per-CPU caching off or the batch full, raises the shard's lazy-page counter and
//!   pushes the descriptor on the shard's lock-free lazy list; past `lazy_max_pages` it kicks
//!   a purge (see [`crate::kva::purge`]). **free_unused** returns a never-mapped area straight to
//!   the trees. (The freeing side lives in the `free` submodule.)
//! * **find** looks in the busy tree of the shard containing the address, then (only while
//!   some live area crosses a shard boundary) in the lower shards' trees.
//!
//! # Invariants
//!
//! * A range leaves the lazy lists and batches only through a purge, and a purge merges it
//!   back into a tree or a per-CPU cache only after its one TLB flush has returned: no range
//!   is handed out again before a flush covering its last unmapping.
//! * Every byte of the range is in exactly one of: a free tree, a per-CPU cache, a busy tree,
//!   or "pending" (removed: in a token, on a lazy list or batch, or in a purge in progress);
//!   checked by [`Kva::check_invariants`] when no operation is in flight.
//!
//! # Locking and ordering
//!
//! Lock order: purge lock -> per-CPU slot -> shard free lock(s) (ascending) -> descriptor
//! pool; shard busy locks are leaves (never held with another allocator lock). The fast paths
//! take the caller's CPU slot and the home shard's busy lock: with one shard per CPU nothing
//! they write is shared with another CPU, and a 1-page area's descriptor never leaves its
//! CPU (the purger reads the slot's batch of ranges, not the descriptors). Counters are
//! `Relaxed` atomics per shard or per CPU slot, summed when read; a slot's batch is handed to
//! the purger under the slot lock, the lazy list's `Release` push / `Acquire` `del_all` hands
//! descriptors to it.

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::platform::{DefaultPlatform, Platform};

use pagetable::{PAGE_SIZE, TlbFlush, VirtAddr};

use crate::kva::area::{AreaInfo, Desc, RemovedArea, VmArea};
use crate::kva::config::{KvaConfig, PurgeMode, Resolved};
use crate::kva::deferred::{Deferred, Notifiers};
use crate::kva::free_tree::{FreeTree, MaxSize};
use crate::kva::pcpu::{Pcpu, Slot};
use crate::kva::purge::{PurgeCounters, PurgeReport};
use crate::kva::shard::ShardSet;
#[cfg(feature = "std")]
use crate::kva::workers::Sched;
use alloc::sync::Arc;

#[cfg(feature = "std")]
use crate::sync::thread;
use crate::sync::{AtomicUsize, Mutex, MutexGuard, Ordering};

pub use crate::kva::deferred::NotifierId;
pub use crate::kva::error::KvaError;
pub use crate::kva::inspect::KvaStats;
pub use crate::kva::pcpu::MAX_CLASS_PAGES;

/// Rounds of "notifiers freed something, retry" before an allocation gives up.
const MAX_NOTIFIER_ROUNDS: usize = 8;

/// Largest capacity of a CPU slot's lazy batch, in areas.
const LAZY_BATCH_MAX: usize = 1 << 14;

/// Source of allocator ids (tokens carry their allocator's id). A plain core atomic: ids only
/// need to be unique, nothing is ordered by them, so loom need not see it.
static NEXT_ID: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

/// State shared by the allocator's handle and its purge workers.
pub(crate) struct Inner<P: Platform> {
    pub(crate) id: u64,
    pub(crate) cfg: Resolved,
    pub(crate) shards: ShardSet<P>,
    pub(crate) pcpu: Pcpu<P>,
    pub(crate) pool: crate::kva::area::DescPool<P>,
    /// The TLB shootdown hook (std `Arc`: an immutable shared hook, not a sync primitive).
    pub(crate) flush: Arc<dyn TlbFlush>,
    /// CPU slot -> home shard.
    pub(crate) home: Box<[usize]>,
    /// Shard -> the CPU slots whose home it is.
    pub(crate) shard_cpus: Box<[Box<[usize]>]>,
    /// CPU slots this instance is built for (`KvaConfig::nr_cpus`); a thread of CPU id `c`
    /// uses slot `c % nr_cpus`.
    pub(crate) nr_cpus: usize,
    /// A lazy counter (a shard's list or a CPU slot's batch) crossing a multiple of
    /// `1 << lazy_step_shift` pages triggers a global backlog check. The step is at most
    /// `lazy_max_pages / (4 * counters)`, so the pages freed since the last check, summed
    /// over every counter, stay below a quarter of the threshold (see `lazy_step_shift`).
    pub(crate) lazy_step_shift: u32,
    /// Allocation-failure reclaims in progress (`Inner::reclaim_then`): while non-zero, a
    /// per-CPU cache refill carves one chunk, not a batch, so that free space drained out of
    /// the caches is not locked up in another CPU's cache before the failing allocation has
    /// searched the trees again.
    pub(crate) reclaiming: AtomicUsize,
    /// Pages a purge has detached and not merged back yet (Linux counts them in
    /// `vmap_lazy_nr` until each area is merged): the purge's `cond_resched_lock` rule looks
    /// at these plus the waiting backlog, as the seed does.
    pub(crate) merging: AtomicUsize,
    /// Serialises purgers (Linux's `vmap_purge_lock`).
    pub(crate) purge_lock: Mutex<P, ()>,
    /// Kick-triggered purge state, `KICK_RUNNING | KICK_AGAIN` (see `Inner::try_purge`).
    pub(crate) kick_state: AtomicUsize,
    pub(crate) pstats: PurgeCounters,
    /// Purge workers' shared state (std threads; `None` in [`PurgeMode::Synchronous`] or
    /// when the host runs the work through a [`PurgeWork`] hook).
    #[cfg(feature = "std")]
    pub(crate) sched: Option<Sched>,
    /// The host's "run the purge work soon" hook, if it gave one.
    pub(crate) work: Option<Arc<dyn PurgeWork>>,
    pub(crate) deferred: Deferred<P>,
    pub(crate) notifiers: Notifiers<P>,
    /// Capacity of a CPU slot's lazy batch (areas).
    pub(crate) lazy_cap: usize,
    /// Empty arrays the purger swaps for the slots' lazy batches (used only under
    /// `purge_lock`; a mutex only to be `Sync`, never contended).
    pub(crate) lazy_spares: Mutex<P, Vec<Vec<(u64, u64)>>>,
}

/// "Run the purge work soon": how a host without threads (a kernel) gets the allocator's
/// background work done, as Linux queues `drain_vmap_work` and `vfree_atomic`'s work on a
/// workqueue. Given to [`Kva::with_platform`]; the hosted default instead runs purge worker
/// threads.
///
/// Both methods are called from the freeing path with no allocator lock held and must only
/// queue the work (never run it inline: the caller may be in a context that cannot purge).
pub trait PurgeWork: Send + Sync {
    /// The lazy backlog crossed the threshold: call [`Kva::purge_work`] soon, on any CPU,
    /// with no allocator lock held. Calls may coalesce (one run serves every request made
    /// before it starts).
    fn schedule_purge(&self);
    /// `vfree_atomic`s are queued: call [`Kva::drain_deferred`] soon.
    fn schedule_deferred(&self);
}

/// The KVA allocator, typed by its [`Platform`] (locks, CPU ids); see the module
/// documentation.
pub struct Kva<P: Platform = DefaultPlatform> {
    inner: Arc<Inner<P>>,
    #[cfg(feature = "std")]
    workers: Vec<thread::JoinHandle<()>>,
}

impl<P: Platform> core::fmt::Debug for Kva<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Kva")
            .field("range", &self.range())
            .field("shards", &self.nr_shards())
            .field("lazy_max_pages", &self.lazy_max_pages())
            .field("purge_mode", &self.inner.cfg.purge_mode)
            .field("workers", &self.nr_workers())
            .finish()
    }
}

impl Kva<DefaultPlatform> {
    /// Build an allocator over `cfg.start .. cfg.end` for the default platform, flushing TLBs
    /// through `flush`. With `std`, spawns `cfg.purge_workers` purge threads unless the mode
    /// is [`PurgeMode::Synchronous`].
    pub fn new(cfg: KvaConfig, flush: Arc<dyn TlbFlush>) -> Result<Self, KvaError> {
        Self::with_platform(cfg, flush, None)
    }
}

impl<P: Platform> Kva<P> {
    /// Build an allocator for platform `P` (see [`Kva::new`]). Background work (kicked
    /// purges in [`PurgeMode::Background`], `vfree_atomic`'s deferred frees) goes to `work`
    /// when given; otherwise, with `std`, to `cfg.purge_workers` threads; otherwise (a host
    /// without threads and no hook) it runs on the thread that triggers it, as in
    /// [`PurgeMode::Inline`], and deferred frees wait for the next allocation or purge.
    pub fn with_platform(
        cfg: KvaConfig,
        flush: Arc<dyn TlbFlush>,
        work: Option<Arc<dyn PurgeWork>>,
    ) -> Result<Self, KvaError> {
        let cfg = cfg.resolve::<P>()?;
        let nr_cpus = cfg.nr_cpus.max(1);
        let shards = ShardSet::new(cfg.start, cfg.end, cfg.shards, cfg.shard_size);
        let nr = shards.len();
        let home: Box<[usize]> = (0..nr_cpus).map(|c| c * nr / nr_cpus).collect();
        let shard_cpus = (0..nr)
            .map(|s| (0..nr_cpus).filter(|&c| home[c] == s).collect())
            .collect();
        // A slot's lazy batch holds what one CPU frees between two purges (at most about
        // `lazy_max_pages` areas of two pages) with room for a lagging purge; past that,
        // `free_lazy` falls back to the shard lists. Bounded so that large machines do not
        // reserve megabytes per CPU (16 bytes per entry, touched only when used).
        let lazy_cap = cfg.lazy_max_pages.clamp(1, LAZY_BATCH_MAX);
        let pcpu = Pcpu::new(nr_cpus, cfg.pcpu_cache, cfg.shard_size, lazy_cap);
        #[cfg(feature = "std")]
        let sched = (cfg.purge_mode != PurgeMode::Synchronous && work.is_none()).then(Sched::new);
        let inner = Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
            nr_cpus,
            lazy_step_shift: lazy_step_shift(
                cfg.lazy_max_pages,
                nr + if cfg.pcpu_cache { nr_cpus } else { 0 },
            ),
            reclaiming: AtomicUsize::new(0),
            merging: AtomicUsize::new(0),
            shards,
            pcpu,
            pool: crate::kva::area::DescPool::new(),
            flush,
            home,
            shard_cpus,
            purge_lock: Mutex::<P, _>::new(()),
            kick_state: AtomicUsize::new(0),
            pstats: PurgeCounters::default(),
            #[cfg(feature = "std")]
            sched,
            work,
            deferred: Deferred::new(nr_cpus),
            notifiers: Notifiers::new(),
            lazy_cap,
            lazy_spares: Mutex::<P, _>::new(Vec::new()),
            cfg,
        });
        #[cfg(feature = "std")]
        {
            let mut kva = Kva {
                inner,
                workers: Vec::new(),
            };
            if kva.inner.sched.is_some() {
                for i in 0..kva.inner.cfg.purge_workers {
                    match spawn_worker(&kva.inner, i) {
                        Ok(h) => kva.workers.push(h),
                        // Dropping `kva` stops and joins the workers started so far.
                        Err(_) => return Err(KvaError::WorkerSpawn { index: i }),
                    }
                }
            }
            Ok(kva)
        }
        #[cfg(not(feature = "std"))]
        Ok(Kva { inner })
    }

    /// Purge worker threads running for this allocator (0 without `std`).
    fn nr_workers(&self) -> usize {
        #[cfg(feature = "std")]
        return self.workers.len();
        #[cfg(not(feature = "std"))]
        return 0;
    }

    /// The work a [`PurgeWork::schedule_purge`] asked for: purge unless a kicked purge is
    /// already running (then it runs one more round: nothing is lost). Returns what this call
    /// purged, if it purged.
    pub fn purge_work(&self) -> Option<PurgeReport> {
        self.inner.try_purge()
    }

    /// Allocate `size` bytes (whole pages, guard page included) aligned to `align` (a power
    /// of two; below a page means a page) inside the window `[vstart, vend)` (clipped to the
    /// allocator's range), preferring shard `node` (modulo the shard count) or the calling
    /// CPU's home shard. Returns the start; the area is live (findable) with `info`.
    ///
    /// The window's bounds are linear 48-bit addresses, like [`Kva::range`]'s (`u64`, not
    /// [`VirtAddr`]: an exclusive end such as the lower half's `1 << 47` is not a canonical
    /// address); `(0, u64::MAX)` means the whole range.
    ///
    /// ```
    /// # #[cfg(not(feature = "loom"))] {
    /// use std::sync::Arc;
    /// use pagetable::{CountingFlush, PAGE_SIZE};
    /// use vmalloc::{AreaInfo, Kva, KvaConfig, PurgeMode, VmFlags};
    ///
    /// let cfg = KvaConfig {
    ///     purge_mode: PurgeMode::Synchronous,
    ///     ..KvaConfig::with_range(0xffff_c900_0000_0000, 0xffff_c900_4000_0000)
    /// };
    /// let kva = Kva::new(cfg, Arc::new(CountingFlush::new()))?;
    /// // Two pages (one usable + a guard page), 2 MiB aligned, anywhere in the range.
    /// let a = kva.alloc(2 * PAGE_SIZE, 2 << 20, 0, u64::MAX, None, AreaInfo::new(VmFlags::MAP))?;
    /// assert_eq!(a.as_u64() % (2 << 20), 0);
    /// assert_eq!(kva.find(a + PAGE_SIZE).unwrap().start, a.as_u64());
    /// // Free it lazily: no flush yet; a purge flushes the union of everything lazy once.
    /// let token = kva.remove(a)?;
    /// kva.free_lazy(token, 1);
    /// assert_eq!(kva.purge().flushed, Some((a.as_u64(), a.as_u64() + 2 * PAGE_SIZE)));
    /// # }
    /// # Ok::<(), vmalloc::KvaError>(())
    /// ```
    pub fn alloc(
        &self,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
        node: Option<usize>,
        info: AreaInfo,
    ) -> Result<VirtAddr, KvaError> {
        self.inner
            .alloc(size, align, vstart, vend, node, info)
            .map(VirtAddr::new_truncate)
    }

    /// Reserve exactly `size` bytes at `addr` (Linux's `vm_area_add_early`); page aligned,
    /// inside the range, and free (after a purge if need be), else an error.
    pub fn alloc_at(&self, addr: VirtAddr, size: u64, info: AreaInfo) -> Result<(), KvaError> {
        let start = addr.as_u64();
        let end = start.checked_add(size).ok_or(KvaError::InvalidRange {
            start,
            end: u64::MAX,
        })?;
        self.inner.alloc_at(start, end, info)
    }

    /// The live area containing `addr`.
    pub fn find(&self, addr: VirtAddr) -> Option<VmArea> {
        self.inner.find(addr.as_u64())
    }

    /// Change the info of the live area starting at `start`. `f` runs under the shard's busy
    /// lock: it must not call back into this allocator.
    pub fn set_info(&self, start: VirtAddr, f: impl FnOnce(&mut AreaInfo)) -> Result<(), KvaError> {
        self.inner.set_info(start.as_u64(), f)
    }

    /// Detach the live area starting at `addr` from the busy lookup (it is no longer found);
    /// the token must go back through [`Kva::free_lazy`] or [`Kva::free_unused`].
    ///
    /// Errors: [`KvaError::NotStartOfArea`] if `addr` is inside a live area,
    /// [`KvaError::DoubleFree`] if it starts an area still waiting on a lazy list,
    /// [`KvaError::NotAllocated`] otherwise.
    pub fn remove(&self, addr: VirtAddr) -> Result<RemovedArea, KvaError> {
        self.inner.remove(addr.as_u64())
    }

    /// [`Kva::remove`] only if `check` accepts the live area starting at `addr`: one lookup
    /// and one busy-lock critical section for "find, check the kind, remove" (vfree's path).
    /// If `check` returns an error, it is returned and nothing changes. Misses give the
    /// errors of [`Kva::remove`]. `check` runs under the shard's busy lock: it must not call
    /// back into this allocator.
    pub fn remove_if<E: From<KvaError>>(
        &self,
        addr: VirtAddr,
        check: impl FnOnce(&VmArea) -> Result<(), E>,
    ) -> Result<RemovedArea, E> {
        self.inner.remove_if(addr.as_u64(), check)
    }

    /// Free a removed area whose pages the caller has unmapped WITHOUT flushing the TLB: the
    /// area waits in the calling CPU's lazy batch (or on its shard's lazy list) and is reused
    /// only after a purge flushed it. The lazy counter counts the area's pages (guard
    /// included), as Linux does;
    /// `unmapped_pages` only feeds `KvaStats::unmapped_pages` when the area is purged. Past
    /// [`Kva::lazy_max_pages`] a purge is kicked according to the [`PurgeMode`]. A token of
    /// another allocator is refused (counted in `KvaStats::foreign_tokens`).
    pub fn free_lazy(&self, area: RemovedArea, unmapped_pages: usize) {
        self.inner.free_lazy(area, unmapped_pages);
    }

    /// Free a removed area straight back to the free space, with no TLB flush (for an area
    /// that was never mapped, e.g. an allocation whose mapping failed). A token of another
    /// allocator is refused, as for [`Kva::free_lazy`].
    ///
    /// # Safety
    ///
    /// No CPU may hold a TLB entry for any page of the area: it was never mapped, or every
    /// mapping of it has been flushed from every CPU since it was unmapped. The range may be
    /// handed out again at once, so a stale translation would let its next owner's memory be
    /// reached through the old one (a use after free in the kernel this allocator serves).
    /// [`Kva::free_lazy`] is the safe way to free an area that was mapped.
    pub unsafe fn free_unused(&self, area: RemovedArea) {
        self.inner.free_unused(area);
    }

    /// Purge every lazily freed area now: drains the deferred frees, waits for a purge in
    /// progress, then takes all lazy lists and per-CPU lazy batches, flushes their union once
    /// and merges them back.
    pub fn purge(&self) -> PurgeReport {
        self.inner.drain_deferred();
        // A worker may have taken the lists just before us: its frees must be done (and
        // their areas on the lazy lists) before this purge, or it would miss them.
        self.inner.wait_for_drains();
        self.inner.purge_blocking(true, None)
    }

    /// [`Kva::purge`] whose one TLB flush also covers `[start, end)` (Linux's
    /// `__purge_vmap_area_lazy(start, end)`): the union of the lazy areas and that range is
    /// flushed ONCE, and the range alone is flushed when nothing is lazy (an empty range
    /// adds nothing). For a caller that unmapped pages outside any lazy area without
    /// flushing (`vm_unmap_aliases`' dirty vmap-block ranges). The report's `flushed` is the
    /// range flushed.
    pub fn purge_range(&self, start: u64, end: u64) -> PurgeReport {
        self.inner.drain_deferred();
        self.inner.wait_for_drains();
        self.inner.purge_blocking(true, Some((start, end)))
    }

    /// Defer `free(addr)` to a purge worker (`vfree_atomic`): pushes on the calling CPU's
    /// deferred list (allocates one 16-byte node from the host heap); never takes an
    /// allocator lock, never purges, never flushes. When the CPU's list was empty it posts a
    /// wake-up to the workers (a few instructions under their scheduler mutex).
    /// In [`PurgeMode::Synchronous`] the list is drained by [`Kva::purge`],
    /// [`Kva::drain_deferred`] and the next allocation.
    pub fn defer(&self, addr: VirtAddr) {
        self.inner.defer(addr.as_u64());
    }

    /// Set what a drained deferred free does with its address (default: `remove` then
    /// `free_lazy` of the whole area, no unmapping). The handler runs with no allocator lock
    /// held and may call any method of this allocator.
    pub fn set_deferred_handler(&self, h: Box<dyn Fn(VirtAddr) + Send + Sync>) {
        self.inner
            .deferred
            .set_handler(Box::new(move |a| h(VirtAddr::new_truncate(a))));
    }

    /// Run the deferred frees queued so far (on every CPU's list); returns how many ran.
    pub fn drain_deferred(&self) -> usize {
        self.inner.drain_deferred()
    }

    /// Register a callback for allocation failures (Linux's `vmap_notify_list`): called with
    /// the failing size, it returns the pages it freed (non-zero means "retry").
    pub fn register_notifier(&self, f: Box<dyn Fn(u64) -> usize + Send + Sync>) -> NotifierId {
        self.inner.notifiers.register(f)
    }

    /// Remove a notifier; `false` if it was not registered.
    pub fn unregister_notifier(&self, id: NotifierId) -> bool {
        self.inner.notifiers.unregister(id)
    }

    /// Every live area overlapping `[start, end)`, ascending (what `vread`/`vwrite` walk).
    /// Costs O(shards in the window + k log n) for k areas found.
    pub fn busy_overlapping(&self, start: u64, end: u64) -> Vec<VmArea> {
        self.inner.busy_overlapping(start, end)
    }

    /// Call `f` with a snapshot of every live area, ascending by address. `f` runs with no
    /// lock held.
    pub fn for_each_busy(&self, f: impl FnMut(&VmArea)) {
        self.inner.for_each_busy(f);
    }

    /// Counters and occupancy, summed over shards and CPUs.
    pub fn stats(&self) -> KvaStats {
        self.inner.stats()
    }

    /// The lazy threshold in pages.
    pub fn lazy_max_pages(&self) -> usize {
        self.inner.cfg.lazy_max_pages
    }

    /// `(start, end)` of the managed range.
    pub fn range(&self) -> (u64, u64) {
        (self.inner.cfg.start, self.inner.cfg.end)
    }

    /// Number of shards.
    pub fn nr_shards(&self) -> usize {
        self.inner.shards.len()
    }

    /// Number of CPU slots the allocator was built for ([`KvaConfig::nr_cpus`] resolved): a
    /// thread of CPU id `c` (`Platform::this_cpu()`) uses slot `c % nr_cpus()`.
    pub fn nr_cpus(&self) -> usize {
        self.inner.nr_cpus
    }

    /// The purge scheduling mode.
    pub fn purge_mode(&self) -> PurgeMode {
        self.inner.cfg.purge_mode
    }

    /// Verify every structure and the byte accounting (free + cached + busy + pending ==
    /// total, no overlap). Exact only when no allocation or free is in flight.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.inner.check_invariants()
    }
}

#[cfg(all(test, not(feature = "loom")))]
impl<P: Platform> Kva<P> {
    /// The shared state, for white-box tests.
    pub(crate) fn inner_for_tests(&self) -> &Inner<P> {
        &self.inner
    }
}

#[cfg(feature = "std")]
impl<P: Platform> Drop for Kva<P> {
    fn drop(&mut self) {
        if let Some(sched) = &self.inner.sched {
            sched.shutdown();
        }
        for w in self.workers.drain(..) {
            // A worker that panicked has nothing left to clean up; its panic was reported.
            let _ = w.join();
        }
    }
}

/// `x` rounded up to `align` (a power of two), `None` on overflow.
#[inline]
fn align_up(x: u64, align: u64) -> Option<u64> {
    Some(x.checked_add(align - 1)? & !(align - 1))
}

/// The lazy trigger's step (log2) for `counters` lazy counters: the largest power of two
/// `<= lazy_max_pages / (4 * counters)` (at least 1 page). A free checks the global backlog
/// only when its counter crosses a multiple of the step, so between two checks the backlog
/// grows by less than `counters * step <= lazy_max_pages / 4` pages that no check saw
/// (plus the pages of the one free that crosses): the backlog never exceeds
/// `lazy_max_pages * 5 / 4` plus one area unless a purge is already under way, whatever the
/// CPU and shard counts (Linux checks every free, with one global counter; summing ours on
/// every free would cost more than the free).
pub(crate) fn lazy_step_shift(lazy_max_pages: usize, counters: usize) -> u32 {
    (lazy_max_pages / (4 * counters.max(1))).max(1).ilog2()
}

/// Start purge worker `i` (a named std thread; a plain loom thread under loom).
#[cfg(feature = "std")]
fn spawn_worker<P: Platform>(
    inner: &Arc<Inner<P>>,
    i: usize,
) -> Result<thread::JoinHandle<()>, ()> {
    let inner = Arc::clone(inner);
    #[cfg(not(feature = "loom"))]
    {
        thread::Builder::new()
            .name(format!("vmalloc-purge/{i}"))
            .spawn(move || workers::worker_main(&inner, i))
            .map_err(drop)
    }
    #[cfg(feature = "loom")]
    {
        Ok(thread::spawn(move || workers::worker_main(&inner, i)))
    }
}

impl<P: Platform> Inner<P> {
    /// Check a request; returns the effective alignment and window.
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
    fn home_of(&self, cpu: usize) -> usize {
        match self.home.get(cpu) {
            Some(&h) => h,
            None => self.home[cpu % self.home.len()],
        }
    }

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
        let cpu = P::this_cpu();
        if let Some((addr, desc)) = self.find_space(cpu, size, align, lo, hi, node) {
            return self.publish(cpu, addr, size, desc, info);
        }
        // No space: everything deferred, lazy or cached goes back to the trees and the search
        // is repeated, all under the purge lock (see `reclaim_then`); then the notifiers,
        // retrying while they free something.
        let mut rounds = 0;
        loop {
            let cpu = P::this_cpu();
            if let Some((addr, desc)) =
                self.reclaim_then(|| self.find_space(cpu, size, align, lo, hi, node))
            {
                return self.publish(cpu, addr, size, desc, info);
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

    /// Find free VA for a request and a descriptor for it (nothing published yet).
    fn find_space(
        &self,
        cpu: usize,
        size: u64,
        align: u64,
        lo: u64,
        hi: u64,
        node: Option<usize>,
    ) -> Option<(u64, Desc)> {
        let cpu_home = self.home_of(cpu);
        let home = node.map_or(cpu_home, |n| n % self.shards.len());
        if let Some(class) = pcpu::class_of(size, align) {
            let sh = self.shards.get(home);
            if home == cpu_home && self.pcpu.enabled() && lo <= sh.base && sh.end <= hi {
                let mut slot = self.pcpu.lock(cpu);
                let chunk = match slot.pop(class) {
                    Some(c) => Some(c),
                    None => self.refill(&mut slot, home, class),
                };
                if let Some(c) = chunk {
                    let d = slot.descs.get(&self.pool);
                    return Some((c, d));
                }
            }
        }
        let addr = self.search_trees(home, size, align, lo, hi)?;
        let d = self.pcpu.lock(cpu).descs.get(&self.pool);
        Some((addr, d))
    }

    /// Refill class `class` of `slot` from shard `shard` with one batch carved in one go;
    /// returns one chunk for the caller.
    fn refill(
        &self,
        slot: &mut MutexGuard<'_, P, Slot>,
        shard: usize,
        class: usize,
    ) -> Option<u64> {
        let bytes = pcpu::class_bytes(class);
        // While an allocation-failure reclaim runs, carve only what this allocation takes
        // (see `reclaim_then`). `Relaxed` suffices: the reclaimer raises the count before it
        // locks each slot to drain it, so a refill that takes this slot's lock after that
        // drain sees the count through the lock's hand-over.
        let batch = if self.reclaiming.load(Ordering::Relaxed) != 0 {
            1
        } else {
            self.pcpu.batch(class).max(1)
        };
        let s = self.shards.get(shard);
        let mut tree = s.free.lock();
        if batch > 1 {
            if let Some(a) = tree.alloc(bytes * batch as u64, PAGE_SIZE, s.base, s.end) {
                // Pushed highest first, so the stack hands the chunks out in ascending
                // order: consecutive allocations (and their frees) are adjacent, and the
                // purge merges a CPU's whole batch of frees as one run.
                for k in (1..batch as u64).rev() {
                    let c = a + k * bytes;
                    if !slot.push(class, c) {
                        // Cannot happen (the class was empty and holds 2 * batch), but never
                        // lose VA: give the chunk back to the tree.
                        let _ = tree.insert_merge(c, c + bytes);
                    }
                }
                return Some(a);
            }
        }
        tree.alloc(bytes, PAGE_SIZE, s.base, s.end)
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

    /// Fill the descriptor and insert it into the busy tree of the shard of `addr`.
    fn publish(
        &self,
        cpu: usize,
        addr: u64,
        size: u64,
        desc: Desc,
        info: AreaInfo,
    ) -> Result<u64, KvaError> {
        let end = addr + size;
        // SAFETY: `desc` was just taken from a free list: this thread owns it.
        unsafe { desc.write(addr, end, info) };
        let Some(i) = self.shards.index_of(addr).filter(|_| end <= self.cfg.end) else {
            // Unreachable: the space came from our trees. Keep the descriptor, lose nothing.
            // SAFETY: still ours.
            unsafe { self.pcpu.lock(cpu).descs.put(&self.pool, desc) };
            return Err(KvaError::InvalidRange { start: addr, end });
        };
        let shard = self.shards.get(i);
        let inserted = {
            let mut busy = shard.busy.lock();
            let r = busy.tree.insert(addr, end, desc);
            if r.is_ok() {
                busy.bytes += size;
            }
            r
        };
        match inserted {
            Ok(()) => {
                if end > shard.end {
                    self.shards.account_crossing(addr, end, true);
                }
                Ok(addr)
            }
            Err(_) => {
                // Only an exhausted node arena can get here (the range was free): undo.
                self.shards.free_range(addr, end);
                // SAFETY: the insertion failed, so the descriptor is still ours.
                unsafe { self.pcpu.lock(cpu).descs.put(&self.pool, desc) };
                Err(KvaError::NoSpace {
                    size,
                    align: PAGE_SIZE,
                    start: addr,
                    end,
                })
            }
        }
    }

    /// The allocation-failure path (Linux's `reclaim_and_purge_vmap_areas`, then the retry):
    /// make every free byte visible to a tree search, then run `search` before anything can
    /// hide it again. In order:
    ///
    /// 1. announce the reclaim (`reclaiming`): from the moment each CPU slot is drained
    ///    below, its refills carve single chunks, not batches;
    /// 2. run the deferred frees queued so far and wait for drains in flight (a worker may
    ///    have just taken some), as [`Kva::purge`] does, so that `vfree_atomic`s made before
    ///    the failure are lazy areas by now;
    /// 3. take the purge lock (waiting for a purge in progress: its areas are merged when it
    ///    returns), purge everything lazy into the TREES (no per-CPU cache refill), then
    ///    drain every CPU's cache into the trees, still under the purge lock, so that no
    ///    purge can push areas into some other CPU's cache between the drain and the search
    ///    (Linux 6.9 drains its node pools inside `__purge_vmap_area_lazy`, under
    ///    `vmap_purge_lock`, for the same reason);
    /// 4. run `search` under the purge lock (lock order purge -> slot -> shard free).
    ///
    /// So an allocation fails only if, at that point, no free space that fits exists in any
    /// tree, any CPU's cache or any lazy list or batch: space taken by concurrent
    /// allocations (single chunks while the reclaim runs) and areas freed after the purge
    /// are the only ones it cannot see.
    pub(crate) fn reclaim_then<R>(&self, search: impl FnOnce() -> Option<R>) -> Option<R> {
        struct Reclaiming<'a>(&'a AtomicUsize);
        impl Drop for Reclaiming<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.reclaiming.fetch_add(1, Ordering::Relaxed);
        let _announced = Reclaiming(&self.reclaiming);
        self.drain_deferred();
        self.wait_for_drains();
        let guard = self.purge_lock.lock();
        self.purge_locked(&guard, false, None);
        self.drain_caches();
        let found = search();
        drop(guard);
        found
    }

    /// Move every per-CPU cached chunk back into the trees.
    pub(crate) fn drain_caches(&self) {
        if !self.pcpu.enabled() {
            return;
        }
        let mut chunks = Vec::new();
        for c in 0..self.pcpu.len() {
            self.pcpu.lock(c).drain(|a, b| chunks.push((a, b)));
        }
        for (a, b) in chunks {
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
        let cpu = P::this_cpu();
        let desc = self.pcpu.lock(cpu).descs.get(&self.pool);
        self.publish(cpu, start, end - start, desc, info).map(drop)
    }

    pub(crate) fn find(&self, addr: u64) -> Option<VmArea> {
        let i = self.shards.index_of(addr)?;
        self.find_in(i, addr)
            .or_else(|| self.find_spanning(i, addr))
    }

    /// The area containing `addr` among those starting in shard `i`.
    fn find_in(&self, i: usize, addr: u64) -> Option<VmArea> {
        let busy = self.shards.get(i).busy.lock();
        let (_, _, d) = busy.tree.find_containing(addr)?;
        // SAFETY: the descriptor is owned by the busy tree, whose lock we hold.
        Some(unsafe { d.read() })
    }

    /// The area containing `addr` that starts in a shard below `i`: only an area crossing
    /// into shard `i` can, and it crosses into every shard between its own and `i`, so the
    /// walk down stops at the first shard nothing crosses into (`Shard::crossed_in`). The
    /// cost is bounded by the span of the crossing areas, not by the shard count.
    fn find_spanning(&self, i: usize, addr: u64) -> Option<VmArea> {
        let mut k = i;
        while k > 0 && self.shards.get(k).crossed_in.load(Ordering::Relaxed) != 0 {
            k -= 1;
            if let Some(a) = self.find_in(k, addr) {
                return Some(a);
            }
        }
        None
    }

    /// Every live area overlapping `[start, end)`, ascending: the one containing `start` if
    /// it starts in a lower shard, then each shard of the window's busy tree from its first
    /// overlapping area (`BusyTree::iter_overlapping`). O(window shards + k log n) for k
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
            let busy = self.shards.get(k).busy.lock();
            out.extend(busy.tree.iter_overlapping(lo, hi).map(|(_, _, d)| {
                // SAFETY: the descriptor is owned by the busy tree, whose lock we hold.
                unsafe { d.read() }
            }));
        }
        out
    }

    pub(crate) fn set_info(
        &self,
        start: u64,
        f: impl FnOnce(&mut AreaInfo),
    ) -> Result<(), KvaError> {
        if let Some(i) = self.shards.index_of(start) {
            let busy = self.shards.get(i).busy.lock();
            if let Some((_, _, d)) = busy.tree.get(start) {
                // SAFETY: the descriptor is owned by the busy tree, whose lock we hold.
                unsafe { d.update_info(f) };
                return Ok(());
            }
        }
        Err(self.miss_error(start, false))
    }
}

pub(crate) mod area;
pub mod busy;
pub(crate) mod config;
pub(crate) mod deferred;
pub(crate) mod error;
pub(crate) mod flags;
mod free;
pub mod free_tree;
mod inspect;
pub mod llist;
pub(crate) mod pcpu;
pub(crate) mod purge;
pub(crate) mod shard;
pub mod tree;
#[cfg(feature = "std")]
mod workers;

#[cfg(all(test, not(feature = "loom")))]
mod tests;
