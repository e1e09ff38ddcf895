//! [`Kva`]: the kernel-virtual-address allocator over all shards (Linux's
//! `alloc_vmap_area` / `free_vmap_area_noflush` / `find_vmap_area`), without page tables.
//!
//! How it works and the invariants: see [`Kva`]'s documentation (what users rely on). For
//! maintainers: `Inner` groups the parts, each owned by its submodule (`allocate`, `free`,
//! `purge`, `node`, `bptree`, `shard`, `area`, `deferred`, `workers`, `inspect`, `resize`);
//! each submodule's documentation has its own mechanism, invariants and locking.
//!
//! # Locking and ordering
//!
//! Lock order: purge lock -> node lock (one at a time) -> shard free lock(s) (ascending).
//! The fast paths take one lock, the node of the shard holding the area (for an allocation,
//! the calling CPU's home shard): with one shard per CPU nothing they write is shared with
//! another CPU. Counters are `Relaxed` atomics per shard or node, summed when read; a node's
//! lazy batch is handed to the purger under the node lock, the overflow list's `Release`
//! push / `Acquire` `del_all` hands its heap nodes to it.

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::platform::{DefaultPlatform, Platform};

use pagetable::{TlbFlush, VirtAddr};

use crate::kva::allocate::Reclaim;
use crate::kva::area::{AreaInfo, RemovedArea, VmArea};
use crate::kva::config::{KvaConfig, PurgeMode, Resolved};
use crate::kva::deferred::{Deferred, Notifiers};
use crate::kva::pools::PoolShape;
#[cfg(feature = "std")]
use crate::kva::purge::Work;
use crate::kva::purge::{Pooling, PurgeReport, PurgeState};
use crate::kva::shard::ShardSet;
#[cfg(feature = "std")]
use crate::kva::workers::{Sched, WorkerHost};
use alloc::sync::Arc;

#[cfg(feature = "std")]
use crate::sync::thread;

pub use crate::kva::deferred::NotifierId;
pub use crate::kva::error::KvaError;
pub use crate::kva::inspect::KvaStats;
pub use crate::kva::pools::MAX_CLASS_PAGES;

/// Largest capacity of a node's lazy batch, in areas (the capacity is `lazy_max_pages`,
/// capped here).
///
/// Why: a node's batch must hold what is freed in its shard between two purges. The lazy
/// backlog of all nodes together is kept near `lazy_max_pages` pages, and the smallest
/// guarded area is two pages, so `lazy_max_pages` entries leave room for twice the areas a
/// full backlog can hold: a purge may lag. Why 2^14: an entry is 16 bytes and every node
/// reserves its capacity at construction (touched only when used), so the cap bounds that
/// reservation to 256 KiB per node; Linux's default threshold for 64 CPUs (57,344 pages)
/// would otherwise reserve 896 KiB per node. Past a full batch `free_lazy` falls back to the
/// shard's lock-free overflow list, which has no bound, so the cap costs speed, never
/// correctness.
#[cfg(not(feature = "loom"))]
const LAZY_BATCH_MAX: usize = 1 << 14;
/// Under loom: batches of one area, so that the models run the overflow list too.
#[cfg(feature = "loom")]
const LAZY_BATCH_MAX: usize = 1;

/// Source of allocator ids (tokens carry their allocator's id). A plain core atomic: ids only
/// need to be unique, nothing is ordered by them, so loom need not see it.
static NEXT_ID: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

/// Which shard each CPU slot calls home (immutable after construction).
#[derive(Debug)]
struct Topology {
    /// CPU slots this instance is built for (`KvaConfig::nr_cpus`); a thread of CPU id `c`
    /// uses slot `c % nr_cpus`.
    nr_cpus: usize,
    /// CPU slot -> home shard.
    home: Box<[usize]>,
}

impl Topology {
    /// `nr_cpus` slots spread evenly over `nr_shards` shards.
    fn new(nr_cpus: usize, nr_shards: usize) -> Self {
        let home: Box<[usize]> = (0..nr_cpus).map(|c| c * nr_shards / nr_cpus).collect();
        Self { nr_cpus, home }
    }

    /// The home shard of CPU id `cpu` (modulo the slot count).
    #[inline]
    fn home_of(&self, cpu: usize) -> usize {
        match self.home.get(cpu) {
            Some(&h) => h,
            None => self.home[cpu % self.home.len()],
        }
    }
}

/// Who runs the background work: the std purge workers, or the host's [`PurgeWork`] hook, or
/// nobody (the triggering thread runs it).
struct Background {
    /// Purge workers' shared state (std threads; `None` in [`PurgeMode::Synchronous`] or
    /// when the host runs the work through a hook).
    #[cfg(feature = "std")]
    sched: Option<Sched<Work>>,
    /// The host's "run the purge work soon" hook, if it gave one.
    work: Option<Arc<dyn PurgeWork>>,
}

impl Background {
    /// Hand a kicked purge to a worker or the hook: `None` if nobody takes it (the caller
    /// purges itself), else whether a request was posted (the hook is always called; a
    /// worker is woken only when no request is pending already).
    fn schedule_purge(&self) -> Option<bool> {
        if let Some(w) = &self.work {
            w.schedule_purge();
            return Some(true);
        }
        #[cfg(feature = "std")]
        if let Some(s) = &self.sched {
            return Some(s.request_purge());
        }
        None
    }

    /// Ask for the deferred frees to be run soon (nothing if nobody runs them: the next
    /// allocation or purge will).
    fn schedule_deferred(&self) {
        if let Some(w) = &self.work {
            w.schedule_deferred();
        } else {
            #[cfg(feature = "std")]
            if let Some(s) = &self.sched {
                s.kick_deferred();
            }
        }
    }
}

/// State shared by the allocator's handle and its purge workers: immutable configuration and
/// the parts, each owned by its module (its fields are that module's business, the others
/// use its methods): the shards with their trees, nodes and overflow lists (`shard`,
/// `node`), the purge's lock, kick state, counters and spares (`purge`), the reclaim
/// announcement (`alloc`), the deferred frees and notifiers (`deferred`), the background
/// workers or hook (this module).
pub(crate) struct Inner<P: Platform> {
    id: u64,
    cfg: Resolved,
    topo: Topology,
    /// The TLB shootdown hook.
    flush: Arc<dyn TlbFlush>,
    shards: ShardSet<P>,
    /// Pool capacities and refill batches (the same for every node).
    pools: PoolShape,
    /// A lazy counter (a node's batch or a shard's overflow list) crossing a multiple of
    /// `1 << lazy_step_shift` pages triggers a global backlog check (see [`lazy_step_shift`]).
    lazy_step_shift: u32,
    reclaim: Reclaim,
    purge: PurgeState<P>,
    deferred: Deferred<P>,
    notifiers: Notifiers<P>,
    background: Background,
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

/// The kernel-virtual-address allocator (Linux's `alloc_vmap_area` / `free_vmap_area_noflush`
/// / `find_vmap_area` and the lazy purge), without page tables. Typed by its [`Platform`]
/// (locks, CPU ids).
///
/// # How it works
///
/// The range (`[start, end)` of the [`KvaConfig`]) is cut into contiguous shards, one per CPU
/// slot by default, each with its own free tree (free areas in an augmented AVL tree keyed by
/// start, every node knowing the largest free size below it, Linux 5.2's design) behind one
/// lock, and a node (Linux 6.9's vmap node, but over a contiguous shard) behind another: the
/// busy index of the live areas starting in the shard (a B+ tree of 16-byte records: bounds
/// and packed info, no per-area descriptor), pools of free areas of each size of 1 to
/// [`MAX_CLASS_PAGES`] pages, and a lazy batch; plus a lock-free overflow list.
///
/// * **alloc** ([`Kva::alloc`]): a pooled request (at most [`MAX_CLASS_PAGES`] pages, page
///   alignment, a window covering the calling CPU's home shard) pops an area of exactly its
///   size from the home node's pool and records it in the node's busy index, under that one
///   uncontended lock, refilling an empty small size with one batch carved from the home
///   shard's tree. Otherwise the home shard's free
///   tree is searched (the lowest fit for page alignment; for larger alignments the lowest
///   fit among the first few candidates, else Linux's `size + align - PAGE_SIZE` search,
///   O(log n)), then the other shards the `[vstart, vend)` window intersects (skipping,
///   without locking, those whose largest free area is too small), then runs of free space
///   crossing shard boundaries. The area is inserted into the busy lookup of the shard
///   containing its start. No space: the deferred frees are run, everything lazy is purged
///   and every node's pools drained back into the trees, and the search repeated, all under
///   the purge lock; then the notifiers ([`Kva::register_notifier`]) are called and the
///   allocation retried while they free something (a bounded number of times); then
///   [`KvaError::NoSpace`].
/// * **remove** ([`Kva::remove`], [`Kva::remove_if`]) takes the area out of its busy lookup
///   and returns a [`RemovedArea`] token, which must come back through
///   [`Kva::free_lazy`] (the area was mapped) or [`Kva::free_unused`] (it never was).
/// * **free_lazy** records the area's range in its node's lazy batch (one node-lock
///   section), or, the batch full, pushes it in a small heap node on its shard's lock-free
///   overflow list; either way its
///   pages are counted. Past [`lazy_max_pages`](Kva::lazy_max_pages) pages in all, a purge is
///   kicked, as the [`PurgeMode`] says.
/// * **purge** ([`Kva::purge`]): one purger at a time (a kick that finds a kicked purge
///   running only asks it for one more round). Every node's lazy batch and every shard's
///   overflow list are taken (the lists with one `del_all`), the union range
///   `[min start, max end)` of everything taken gets ONE flush through the [`TlbFlush`] hook,
///   and only after it returned are the areas returned to their node's pools (pooled sizes,
///   bounded; a Background kick purge hands them back as one list that the node's next pool
///   miss sorts in, on its own CPU) or merged back into the trees,
///   shard by shard, the purge workers helping. See [`PurgeReport`].
/// * **find** ([`Kva::find`]) looks in the busy lookup of the shard containing the address,
///   then (only while some live area crosses a shard boundary) in the lower shards'.
///
/// # Invariants
///
/// * A range leaves the lazy lists and batches only through a purge, and a purge merges it
///   back into a tree or a pool only after its one TLB flush has returned: no range
///   is handed out again before a flush covering its last unmapping.
/// * Every byte of the range is in exactly one of: a free tree, a node's pool, a busy
///   lookup, or "pending" (removed: in a token, on a lazy list or batch, or in a purge in
///   progress); checked by [`Kva::check_invariants`] when no operation is in flight.
///
/// Which calls take which locks, and which may wait for a purge: the
/// [crate documentation](crate#locking).
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
        let lazy_cap = cfg.lazy_max_pages.clamp(1, LAZY_BATCH_MAX);
        let pools = PoolShape::new(cfg.pcpu_cache, cfg.shard_size);
        let shards = ShardSet::new(
            cfg.start,
            cfg.end,
            cfg.shards,
            cfg.shard_size,
            &pools,
            lazy_cap,
        );
        let nr = shards.len();
        let background = Background {
            #[cfg(feature = "std")]
            sched: (cfg.purge_mode != PurgeMode::Synchronous && work.is_none()).then(Sched::new),
            work,
        };
        let inner = Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
            topo: Topology::new(nr_cpus, nr),
            lazy_step_shift: lazy_step_shift(cfg.lazy_max_pages, 2 * nr),
            reclaim: Reclaim::default(),
            shards,
            pools,
            flush,
            purge: PurgeState::new(),
            deferred: Deferred::new(nr_cpus),
            notifiers: Notifiers::new(),
            background,
            cfg,
        });
        #[cfg(feature = "std")]
        {
            let mut kva = Kva {
                inner,
                workers: Vec::new(),
            };
            if kva.inner.background.sched.is_some() {
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
    #[inline]
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

    /// Change the info of the live area starting at `start`. `f` runs under the shard's node
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
    /// and one node-lock critical section for "find, check the kind, remove" (vfree's path).
    /// If `check` returns an error, it is returned and nothing changes. Misses give the
    /// errors of [`Kva::remove`]. `check` runs under the shard's node lock: it must not call
    /// back into this allocator.
    #[inline]
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
    ///
    /// A free going lazy, then one crossing the threshold (in [`PurgeMode::Synchronous`] the
    /// freeing thread runs that purge itself; by default a purge worker would):
    ///
    /// ```
    /// # #[cfg(not(feature = "loom"))] {
    /// use std::sync::Arc;
    /// use pagetable::{CountingFlush, PAGE_SIZE, TlbFlush};
    /// use vmalloc::{AreaInfo, Kva, KvaConfig, KvaError, PurgeMode, VmFlags};
    ///
    /// let tlb = Arc::new(CountingFlush::new());
    /// let cfg = KvaConfig {
    ///     purge_mode: PurgeMode::Synchronous,
    ///     lazy_max_pages: Some(4),
    ///     ..KvaConfig::with_range(0xffff_c900_0000_0000, 0xffff_c900_4000_0000)
    /// };
    /// let kva = Kva::new(cfg, tlb.clone())?;
    /// let info = AreaInfo::new(VmFlags::ALLOC);
    /// // Two areas of 2 pages + a guard page.
    /// let a = kva.alloc(3 * PAGE_SIZE, PAGE_SIZE, 0, u64::MAX, None, info)?;
    /// let b = kva.alloc(3 * PAGE_SIZE, PAGE_SIZE, 0, u64::MAX, None, info)?;
    ///
    /// // The caller cleared `a`'s 2 PTEs and flushed nothing: `a` goes lazy.
    /// kva.free_lazy(kva.remove(a)?, 2);
    /// assert_eq!(kva.stats().lazy_pages, 3); // guard page included, as in Linux
    /// assert_eq!(kva.stats().pending, 3 * PAGE_SIZE); // not free: not reusable yet
    /// assert!(matches!(kva.remove(a), Err(KvaError::DoubleFree { .. })));
    /// assert_eq!(tlb.stats().flushes, 0);
    ///
    /// // 6 lazy pages > 4: this free kicks a purge, which flushes both areas at once.
    /// kva.free_lazy(kva.remove(b)?, 2);
    /// let st = kva.stats();
    /// assert_eq!((st.lazy_pages, st.pending, st.kicks), (0, 0, 1));
    /// assert_eq!((st.purges, st.purged_areas, st.purged_pages), (1, 2, 6));
    /// assert_eq!(tlb.stats().flushes, 1);
    /// # }
    /// # Ok::<(), vmalloc::KvaError>(())
    /// ```
    #[inline]
    pub fn free_lazy(&self, area: RemovedArea, unmapped_pages: usize) {
        self.inner.free_lazy(area, unmapped_pages);
    }

    /// [`Kva::remove`] then [`Kva::free_lazy`] of the area starting at `addr`, in ONE
    /// critical section of its node's lock instead of two: for a caller with nothing to do
    /// between the two (the area's pages were unmapped already, or never mapped), such as
    /// a retired vmap block or a deferred free. `unmapped_pages` is clamped to the area's
    /// pages. Errors: those of [`Kva::remove`] (nothing changed).
    ///
    /// ```
    /// # #[cfg(not(feature = "loom"))] {
    /// use std::sync::Arc;
    /// use pagetable::{CountingFlush, PAGE_SIZE};
    /// use vmalloc::{AreaInfo, Kva, KvaConfig, KvaError, PurgeMode, VmFlags};
    ///
    /// let cfg = KvaConfig {
    ///     purge_mode: PurgeMode::Synchronous,
    ///     ..KvaConfig::with_range(0xffff_c900_0000_0000, 0xffff_c900_4000_0000)
    /// };
    /// let kva = Kva::new(cfg, Arc::new(CountingFlush::new()))?;
    /// let a = kva.alloc(2 * PAGE_SIZE, PAGE_SIZE, 0, u64::MAX, None, AreaInfo::new(VmFlags::MAP))?;
    /// kva.remove_free_lazy(a, 1)?;
    /// assert_eq!(kva.stats().lazy_pages, 2);
    /// assert!(matches!(kva.remove_free_lazy(a, 1), Err(KvaError::DoubleFree { .. })));
    /// # }
    /// # Ok::<(), vmalloc::KvaError>(())
    /// ```
    #[inline]
    pub fn remove_free_lazy(&self, addr: VirtAddr, unmapped_pages: usize) -> Result<(), KvaError> {
        self.inner.remove_free_lazy(addr.as_u64(), unmapped_pages)
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
    /// progress, then takes all nodes' lazy batches and overflow lists, flushes their union once
    /// and merges them back. Linux's `purge_vmap_area_lazy`.
    ///
    /// ```
    /// # #[cfg(not(feature = "loom"))] {
    /// use std::sync::Arc;
    /// use pagetable::{CountingFlush, PAGE_SIZE, TlbFlush};
    /// use vmalloc::{AreaInfo, Kva, KvaConfig, PurgeMode, VmFlags};
    ///
    /// let tlb = Arc::new(CountingFlush::new());
    /// let cfg = KvaConfig {
    ///     purge_mode: PurgeMode::Synchronous,
    ///     ..KvaConfig::with_range(0xffff_c900_0000_0000, 0xffff_c900_4000_0000)
    /// };
    /// let kva = Kva::new(cfg, tlb.clone())?;
    /// let info = AreaInfo::new(VmFlags::MAP);
    /// // Three areas: (start, end).
    /// let mut areas = Vec::new();
    /// for (pages, align) in [(2, PAGE_SIZE), (5, PAGE_SIZE), (2, 1 << 20)] {
    ///     let a = kva.alloc(pages * PAGE_SIZE, align, 0, u64::MAX, None, info)?;
    ///     areas.push((a.as_u64(), a.as_u64() + pages * PAGE_SIZE));
    ///     kva.free_lazy(kva.remove(a)?, 1);
    /// }
    /// assert_eq!(kva.stats().lazy_pages, 9); // far below Linux's threshold: nothing purged
    /// assert_eq!(tlb.stats().flushes, 0);
    ///
    /// let report = kva.purge();
    /// assert_eq!((report.areas, report.pages), (3, 9));
    /// // ONE flush, of the union `[min start, max end)` of the three ranges.
    /// assert_eq!(tlb.stats().flushes, 1);
    /// let lo = areas.iter().map(|r| r.0).min().unwrap();
    /// let hi = areas.iter().map(|r| r.1).max().unwrap();
    /// assert_eq!(report.flushed, Some((lo, hi)));
    /// assert_eq!(kva.stats().lazy_pages, 0);
    /// // Nothing left to purge: no flush at all.
    /// assert_eq!(kva.purge().flushed, None);
    /// assert_eq!(tlb.stats().flushes, 1);
    /// # }
    /// # Ok::<(), vmalloc::KvaError>(())
    /// ```
    pub fn purge(&self) -> PurgeReport {
        self.inner.drain_deferred();
        // A worker may have taken the lists just before us: its frees must be done (and
        // their areas on the lazy lists) before this purge, or it would miss them.
        self.inner.wait_for_drains();
        self.inner.purge_blocking(Pooling::Push, None)
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
        self.inner.purge_blocking(Pooling::Push, Some((start, end)))
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
    ///
    /// Notifiers are called, with no allocator lock held and on the allocating thread, by an
    /// allocation that found no space even after a purge; if the sum of what they report is
    /// non-zero the allocation purges and searches again (a bounded number of rounds).
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

    /// Counters and occupancy, summed over shards and CPUs, one lock (or one `Relaxed` load)
    /// at a time: each figure is exact at some instant, the set is consistent only when no
    /// operation is in flight.
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
        self.inner.topo.nr_cpus
    }

    /// The purge scheduling mode.
    pub fn purge_mode(&self) -> PurgeMode {
        self.inner.cfg.purge_mode
    }

    /// Verify every structure and the byte accounting (free + cached + busy + pending ==
    /// total, no overlap). Exact only when no allocation or free is in flight. Takes the purge
    /// lock, then each shard's node and free-tree locks in turn.
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
        if let Some(sched) = &self.inner.background.sched {
            sched.shutdown();
        }
        for w in self.workers.drain(..) {
            // A worker that panicked has nothing left to clean up; its panic was reported.
            let _ = w.join();
        }
    }
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
            .spawn(move || crate::kva::workers::worker_main(&*inner, i))
            .map_err(drop)
    }
    #[cfg(feature = "loom")]
    {
        Ok(thread::spawn(move || {
            crate::kva::workers::worker_main(&*inner, i)
        }))
    }
}

#[cfg(feature = "std")]
impl<P: Platform> WorkerHost for Inner<P> {
    type Item = Work;

    fn sched(&self) -> Option<&Sched<Work>> {
        self.background.sched.as_ref()
    }

    fn merge_item(&self, item: Work) -> usize {
        self.merge(item)
    }

    fn purge_kicked(&self) {
        let _ = self.try_purge();
    }

    fn run_deferred(&self) {
        self.drain_deferred();
    }
}

impl<P: Platform> Inner<P> {
    /// `vfree_atomic`: queue `addr`, scheduling a drain when the CPU's list was empty.
    pub(crate) fn defer(&self, addr: u64) {
        if self.deferred.defer(addr) {
            self.background.schedule_deferred();
        }
    }

    /// Run every queued deferred free (default handler: `remove` + `free_lazy` of the whole
    /// area, no unmapping); returns how many ran.
    pub(crate) fn drain_deferred(&self) -> usize {
        self.deferred.drain(|addr| {
            // The whole area counts as unmapped (clamped to its pages).
            let _ = self.remove_free_lazy(addr, usize::MAX);
        })
    }

    /// Wait for the deferred drains in flight (see the `deferred` module).
    pub(crate) fn wait_for_drains(&self) {
        self.deferred.wait_for_drains();
    }
}

mod allocate;
pub(crate) mod area;
pub(crate) mod bptree;
pub mod busy;
pub(crate) mod config;
pub(crate) mod deferred;
pub(crate) mod error;
pub(crate) mod flags;
mod free;
pub mod free_tree;
mod inspect;
pub mod llist;
pub(crate) mod node;
pub(crate) mod pools;
pub(crate) mod purge;
mod resize;
pub(crate) mod shard;
pub mod tree;
#[cfg(feature = "std")]
mod workers;

#[cfg(all(test, not(feature = "loom")))]
mod tests;
