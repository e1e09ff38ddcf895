//! The physical frame allocator.
//!
//! How it works (zones, pools, per-CPU caches, reference counts, counters, fault injection)
//! and its invariants: see [`FrameAllocator`]'s documentation (what users rely on). For
//! maintainers: the pools and per-CPU lists are in `pcp.rs`, bulk allocation in `bulk.rs`,
//! batched freeing in `batch.rs`, 2 MiB runs in `huge.rs`; `account` and `fold` keep the
//! high-water mark.
//!
//! Locking/ordering: lock order is CPU-cache mutex, then pool mutex; never two CPU-cache
//! mutexes at once, never a cache mutex under a pool mutex. Frames move between threads only
//! through these mutexes, which order the previous owner's writes before the next owner's.
//! The final reference drop is `AcqRel` (like `Arc`), so every holder's writes precede the
//! release. Counts are taken with `Relaxed` (the caller already holds a reference); counters
//! and the fault-injection state are `Relaxed`.

mod batch;
mod bulk;
mod huge;
mod pcp;

pub(crate) use batch::FreeBatch;

use core::fmt;

use crossbeam_utils::CachePadded;

use self::pcp::{HIGH, LOW, Pcp, Tagged, ZoneState};
use alloc::boxed::Box;
use alloc::sync::Arc;

use crate::addr::PhysAddr;
use crate::arena::{ArenaError, PhysArena};
use crate::page::{PAGE_SIZE, PhysFrame, Size4KiB};
use crate::platform::{DefaultPlatform, Platform};
use crate::sync::{AtomicI64, AtomicU32, AtomicU64, Mutex, Ordering};

/// A CPU's unfolded allocation balance is folded into the shared counter when it reaches
/// `±FOLD` frames (see *Counters* in [`FrameAllocator`]'s documentation).
///
/// Why 64: a fold is the allocation path's only write to a shared cache line (an RMW of
/// `folded`, and of the high-water mark when it grows). A CPU that only allocates, or only
/// frees, folds once per 64 frames, on fewer than 2% of its calls; a CPU whose balance stays
/// within ±64 (frames freed on the CPU that allocated them: the common case) never folds.
/// What the fold costs is the high-water mark's precision only: it may exceed the true peak
/// by less than 64 frames (256 KiB) per other CPU slot; `used`, `allocs` and `frees` stay
/// exact. A larger value would save little (the shared writes are already rare) and loosen
/// the high-water mark on many-CPU machines. Linux folds its per-CPU vmstat differentials
/// the same way (mm/vmstat.c), past a `stat_threshold` of at most 125.
pub const FOLD: i64 = 64;

/// Frames released per CPU-cache lock section by [`FrameAllocator::free_bulk`] and
/// `unmap_and_free` (the stack buffer of their `FreeBatch`: 64 entries are 512 bytes; a
/// bigger chunk would save only one lock section per 64 frames).
const RELEASE_CHUNK: usize = 64;

pub use huge::HUGE_FRAMES;

/// Physical address where the low (DMA32) zone ends.
pub const DMA32_LIMIT: u64 = 1 << 32;

/// Which frames an allocation may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Zone {
    /// Any frame; frames at or above 4 GiB are preferred.
    #[default]
    Normal,
    /// Only frames below 4 GiB physical (`GFP_DMA32`, for `vmalloc_32`).
    Dma32,
}

/// Why a frame operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum FrameError {
    /// No free frame in the zone (or an injected failure, see
    /// [`FrameAllocator::fail_nth`]).
    #[error("out of {zone:?} frames{}", if *.injected { " (injected failure)" } else { "" })]
    OutOfFrames {
        /// The zone asked for.
        zone: Zone,
        /// Whether fault injection caused the failure.
        injected: bool,
    },
    /// The frame is not in this allocator's arena.
    #[error("frame {frame:#x} does not belong to this allocator's arena")]
    NotOwned {
        /// The frame's address.
        frame: PhysAddr,
    },
    /// `free` of a frame whose reference count is already zero.
    #[error("double free of frame {frame:#x} (it is not allocated)")]
    DoubleFree {
        /// The frame's address.
        frame: PhysAddr,
    },
    /// `get` of a frame that is not allocated.
    #[error("frame {frame:#x} is not allocated")]
    NotAllocated {
        /// The frame's address.
        frame: PhysAddr,
    },
    /// `get` would overflow the 32-bit reference count.
    #[error("reference count of frame {frame:#x} would overflow")]
    RefcountOverflow {
        /// The frame's address.
        frame: PhysAddr,
    },
    /// The arena refused an access (zeroing a frame).
    #[error(transparent)]
    Arena(#[from] ArenaError),
}

/// Tuning of the per-CPU caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FrameConfig {
    /// Frames moved between a CPU cache and a pool at once (Linux `pcp->batch`). 0 means 1.
    pub pcp_batch: usize,
    /// A CPU cache list holding more than this gives frames back (Linux `pcp->high`); raised
    /// to at least `pcp_batch`. `pcp_batch: 0, pcp_high: 0` disables caching.
    pub pcp_high: usize,
}

impl Default for FrameConfig {
    /// `batch` 32, `high` 128: a pool's lock is taken once per 32 frames a CPU allocates or
    /// frees in a row, and a CPU cache keeps at most about 128 frames (512 KiB) per zone out
    /// of the pools, where an allocation on another CPU cannot get them until it finds the
    /// pools empty and drains every cache.
    fn default() -> Self {
        Self {
            pcp_batch: 32,
            pcp_high: 128,
        }
    }
}

/// A snapshot of the allocator's counters (in frames).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct FrameStats {
    /// Frames in the arena.
    pub total: u64,
    /// Frames not allocated (in pools or CPU caches).
    pub free: u64,
    /// Frames allocated (reference count above zero).
    pub used: u64,
    /// The largest `used` ever seen.
    pub high_water: u64,
    /// Frames handed out so far.
    pub allocs: u64,
    /// Frames released so far (reference count dropped to zero).
    pub frees: u64,
    /// Allocation calls that failed (out of frames or injected).
    pub failed: u64,
}

/// The physical frame allocator: hands out the 4 KiB frames of a [`PhysArena`]. Typed by its
/// [`Platform`] (locks and the current CPU); [`FrameAllocator::new`] builds one for the
/// [`DefaultPlatform`].
///
/// # How it works
///
/// * **Zones.** Frames below 4 GiB physical ([`DMA32_LIMIT`]) form the low zone, the rest the
///   high zone. [`Zone::Dma32`] (for `vmalloc_32`) takes only low frames; [`Zone::Normal`]
///   takes high frames first and falls back to low ones, so the low zone is not drained by
///   ordinary allocations (as Linux does with ZONE_NORMAL over ZONE_DMA32).
/// * **Shared pools.** Each zone has one pool behind a mutex: a LIFO list of released frames
///   in front of a bump region of never-touched frames. Bump frames are known to be zero, so
///   [`FrameAllocator::alloc_zeroed`] skips their memset, and an mmap-backed arena's pages
///   stay untouched (costing no memory) until a frame is really used.
/// * **Per-CPU caches.** Each CPU slot ([`Platform::this_cpu`]) has its own cache-padded
///   mutex with a frame list per zone (Linux's `pcp` lists). Allocating or freeing one frame
///   locks only that (normally uncontended) mutex and pushes/pops a `Vec`; an empty list is
///   refilled with [`FrameConfig::pcp_batch`] frames from the pool, a list longer than
///   [`FrameConfig::pcp_high`] gives its coldest frames back (at least `pcp_batch`). A bulk
///   free ([`FrameAllocator::free_bulk`], and `unmap_and_free`, which is how `vfree` frees a
///   large area) drops each reference as the frame is handed in and collects the released
///   frames on the stack; each 64 of them go in under one lock with one copy and one trim
///   per zone, leaving the list and the pool exactly as 64 single frees would. If an
///   allocation finds nothing, every CPU cache is drained into the pools and the allocation
///   retried once before it fails.
/// * **Reference counts.** Every frame has a 32-bit count: 1 when allocated,
///   [`FrameAllocator::get`] adds a reference (COW, remap), [`FrameAllocator::free`] drops one
///   and releases the frame at zero. Freeing a frame outside the arena or one whose count is
///   already zero is refused with a [`FrameError`] and changes nothing. The drop is a
///   compare-exchange, so of two racing frees of a frame's last reference one is refused.
///   `AddressSpace::unmap_and_free_exclusive`, for a caller that never races a free of the
///   same frame (vfree of an area's frames), drops a last reference with a load and a store
///   instead: no locked instruction per page, no refusal of a racing double free.
/// * **Counters.** Allocation and release counts are per CPU, under the cache lock, and
///   summed by [`FrameAllocator::stats`] (`used = allocs - frees`), so allocating or freeing
///   one frame writes no shared cache line. Frames in CPU caches count as free. Once no
///   operation is in flight, `free + used == total` and `allocs - frees == used` hold
///   exactly. The high-water mark: each CPU keeps `net` (allocations minus releases since
///   its last fold) and its peak; when `|net|` reaches [`FOLD`] it is added to a shared
///   `folded` counter and `folded + peak` feeds a shared maximum; `stats` reports the maximum
///   of that and `folded + Σ peak` (exact while one CPU slot allocates; with several, an
///   upper bound that can exceed the true peak by less than `FOLD` per other CPU, never
///   above `total`).
/// * **2 MiB runs.** [`FrameAllocator::alloc_huge`] hands out 512 contiguous frames at a
///   2 MiB-aligned physical address (what a huge vmalloc maps with one 2 MiB leaf), each
///   with its own reference count, straight from a zone pool: a run released whole by
///   [`FrameAllocator::free_huge`], else one carved from the never-touched region. Freed
///   single frames are never merged back into runs (no buddy allocator); a free run is
///   broken into single frames only when nothing else can serve a single-frame request. A
///   run counts as 512 frames in the counters and as one allocation for fault injection.
/// * **Fault injection.** [`FrameAllocator::fail_nth`] and [`FrameAllocator::fail_after`]
///   make chosen allocations fail with `OutOfFrames { injected: true, .. }`, so that every
///   error path above can be driven from a test.
///
/// # Invariants
///
/// A frame is in exactly one of: a pool (bump region or free list), one CPU list, or handed
/// out (count > 0). Only frames with count 0 are in a pool or a list.
///
/// # Locking
///
/// Allocation and release take the calling CPU's cache mutex and, to refill or spill it, a
/// zone pool's mutex; [`FrameAllocator::get`] and [`FrameAllocator::refcount`] take no lock.
/// The final reference drop happens after every holder's writes to the frame (like `Arc`),
/// and a frame's next owner sees the previous owner's writes.
pub struct FrameAllocator<P: Platform = DefaultPlatform> {
    arena: Arc<PhysArena>,
    base: u64,
    nframes: u64,
    /// Frame index where the high zone starts.
    low_end: u64,
    zones: [ZoneState<P>; 2],
    pcps: Box<[CachePadded<Mutex<P, Pcp>>]>,
    refcounts: Box<[AtomicU32]>,
    batch: usize,
    high: usize,
    /// Sum of the CPUs' folded `net` balances (see "Counters").
    folded: CachePadded<AtomicI64>,
    high_water: AtomicU64,
    failed: AtomicU64,
    inject: CachePadded<Inject>,
}

/// Fault-injection state: read (`Relaxed`) on every allocation, written rarely.
struct Inject {
    /// Countdown to the failing allocation; 0 = off.
    nth: AtomicU64,
    /// Allocations still allowed to succeed; `u64::MAX` = off.
    after: AtomicU64,
}

#[cfg(not(feature = "loom"))]
fn zeroed_counts(n: usize) -> Box<[AtomicU32]> {
    // `vec![0; n]` is a zeroed allocation (calloc): a large arena's counts stay untouched
    // (costing no memory) until used.
    let mut v = core::mem::ManuallyDrop::new(alloc::vec![0u32; n]);
    let (ptr, len, cap) = (v.as_mut_ptr(), v.len(), v.capacity());
    // SAFETY: `AtomicU32` has the size and bit validity of `u32` and alignment 4, equal to
    // `u32`'s on every target with 32-bit atomics, so the buffer's layout for `cap` elements is
    // the same for both types and all-zero `u32`s are valid `AtomicU32`s holding 0. The
    // original `Vec` is never dropped (ManuallyDrop), so the buffer has exactly one owner.
    let atomics = unsafe { alloc::vec::Vec::from_raw_parts(ptr.cast::<AtomicU32>(), len, cap) };
    atomics.into_boxed_slice()
}

#[cfg(feature = "loom")]
fn zeroed_counts(n: usize) -> Box<[AtomicU32]> {
    (0..n).map(|_| AtomicU32::new(0)).collect()
}

impl FrameAllocator<DefaultPlatform> {
    /// An allocator owning every frame of `arena`, with default per-CPU cache tuning.
    pub fn new(arena: Arc<PhysArena>) -> Self {
        Self::with_config(arena, FrameConfig::default())
    }

    /// An allocator owning every frame of `arena`, tuned by `cfg`.
    pub fn with_config(arena: Arc<PhysArena>, cfg: FrameConfig) -> Self {
        Self::with_platform(arena, cfg)
    }
}

impl<P: Platform> FrameAllocator<P> {
    /// An allocator for platform `P` owning every frame of `arena`, tuned by `cfg` (one
    /// per-CPU cache per `P::nr_cpu_ids()`).
    pub fn with_platform(arena: Arc<PhysArena>, cfg: FrameConfig) -> Self {
        let base = arena.base().as_u64();
        let nframes = arena.frames();
        let low_end = DMA32_LIMIT
            .saturating_sub(base)
            .div_ceil(PAGE_SIZE)
            .min(nframes);
        let batch = cfg.pcp_batch.max(1);
        let high = cfg.pcp_high.max(cfg.pcp_batch);
        let nr = P::nr_cpu_ids().max(1);
        let pcps =
            // A list holds at most `high` frames between operations, or `batch` right after
            // a refill; `release` pushes at most a chunk before its trim. No push under the
            // lock reallocates.
            (0..nr).map(|_| {
                CachePadded::new(Mutex::<P, _>::new(Pcp::new(
                    high.max(batch) + RELEASE_CHUNK,
                )))
            });
        Self {
            base,
            nframes,
            low_end,
            zones: [
                ZoneState::new(0, low_end, arena.starts_zeroed(), base / PAGE_SIZE),
                ZoneState::new(low_end, nframes, arena.starts_zeroed(), base / PAGE_SIZE),
            ],
            pcps: pcps.collect(),
            // The arena's size fits in `usize`, so its frame count does too.
            refcounts: zeroed_counts(nframes as usize),
            batch,
            high,
            folded: CachePadded::new(AtomicI64::new(0)),
            high_water: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            inject: CachePadded::new(Inject {
                nth: AtomicU64::new(0),
                after: AtomicU64::new(u64::MAX),
            }),
            arena,
        }
    }

    /// The arena the frames come from.
    pub fn arena(&self) -> &Arc<PhysArena> {
        &self.arena
    }

    /// Whether `frame` lies in this allocator's arena.
    #[inline]
    pub fn owns(&self, frame: PhysFrame<Size4KiB>) -> bool {
        self.index(frame).is_ok()
    }

    #[inline]
    fn index(&self, frame: PhysFrame<Size4KiB>) -> Result<u64, FrameError> {
        let pa = frame.start_address();
        match pa.as_u64().checked_sub(self.base) {
            Some(off) if off / PAGE_SIZE < self.nframes => Ok(off / PAGE_SIZE),
            _ => Err(FrameError::NotOwned { frame: pa }),
        }
    }

    #[inline]
    fn frame_of(&self, index: u64) -> PhysFrame<Size4KiB> {
        PhysFrame::containing_address(PhysAddr::new_truncate(self.base + index * PAGE_SIZE))
    }

    #[inline]
    fn zone_index(&self, index: u64) -> usize {
        if index < self.low_end { LOW } else { HIGH }
    }

    /// The zones `zone` may draw from, in order of preference; a zone without frames (no
    /// high zone in an arena below 4 GiB) is left out, so the fast path never looks at it.
    #[inline]
    fn order(&self, zone: Zone) -> &'static [usize] {
        match zone {
            Zone::Normal if self.zones[HIGH].exists() => &[HIGH, LOW],
            Zone::Normal | Zone::Dma32 => &[LOW],
        }
    }

    #[inline]
    fn pcp(&self) -> &Mutex<P, Pcp> {
        // A CPU id is normally below `nr_cpu_ids() == pcps.len()`; any other (a host may hand
        // out ids beyond the count) folds onto slot `id % len`, off the fast path.
        let pcps = &self.pcps;
        let c = P::this_cpu();
        pcps.get(c).unwrap_or_else(|| &pcps[c % pcps.len()])
    }

    /// Consume `k` allocations from the fault-injection state; true if one of them fails.
    #[inline]
    fn injected(&self, k: u64) -> bool {
        let inj = &self.inject;
        let mut fail = false;
        if inj.nth.load(Ordering::Relaxed) != 0 {
            let r = inj
                .nth
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| match c {
                    0 => None,
                    c if c <= k => Some(0),
                    c => Some(c - k),
                });
            fail |= matches!(r, Ok(c) if c <= k);
        }
        if inj.after.load(Ordering::Relaxed) != u64::MAX {
            let r = inj
                .after
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| match r {
                    u64::MAX => None,
                    r => Some(r.saturating_sub(k)),
                });
            fail |= matches!(r, Ok(r) if r < k);
        }
        fail
    }

    /// Fault injection: the `n`-th allocated frame from now (1-based; `Some(0)` means the
    /// next) fails once. A bulk allocation of `k` frames counts as `k` and fails as a whole if
    /// the failing one falls inside it. `None` disarms.
    pub fn fail_nth(&self, n: Option<u64>) {
        let v = n.map_or(0, |n| n.max(1));
        self.inject.nth.store(v, Ordering::Relaxed);
    }

    /// Fault injection: the next `n` frames succeed, every later one fails (until disarmed
    /// with `None`). A bulk allocation straddling the limit fails as a whole and uses up the
    /// rest of the allowance.
    pub fn fail_after(&self, n: Option<u64>) {
        let v = n.map_or(u64::MAX, |n| n.min(u64::MAX - 1));
        self.inject.after.store(v, Ordering::Relaxed);
    }

    fn fail(&self, zone: Zone, injected: bool) -> FrameError {
        self.failed.fetch_add(1, Ordering::Relaxed);
        FrameError::OutOfFrames { zone, injected }
    }

    /// Count `delta` frames handed out (positive) or released (negative) through the CPU
    /// cache `g` (locked by the caller); folds its balance into the shared counter at
    /// `±FOLD`.
    #[inline]
    fn account(&self, g: &mut Pcp, delta: i64) {
        g.net += delta;
        if g.net > g.peak {
            g.peak = g.net;
        }
        if g.net.abs() >= FOLD {
            self.fold(g);
        }
    }

    /// Move `g`'s balance into `folded`, recording `folded + peak` as a high-water candidate.
    #[cold]
    fn fold(&self, g: &mut Pcp) {
        let before = self.folded.fetch_add(g.net, Ordering::Relaxed);
        self.raise_high_water(before + g.peak);
        g.net = 0;
        g.peak = 0;
    }

    #[inline]
    fn raise_high_water(&self, candidate: i64) {
        let c = (candidate.max(0) as u64).min(self.nframes);
        if c > self.high_water.load(Ordering::Relaxed) {
            self.high_water.fetch_max(c, Ordering::Relaxed);
        }
    }

    /// Set a just-allocated frame's count to 1.
    #[inline]
    fn claim(&self, index: u64) {
        let rc = &self.refcounts[index as usize];
        debug_assert_eq!(
            rc.load(Ordering::Relaxed),
            0,
            "allocated frame had references"
        );
        rc.store(1, Ordering::Relaxed);
    }

    /// One frame through this CPU's cache, refilling it from a pool if needed. With
    /// `use_hints`, pools whose hint says empty are skipped without taking their lock.
    #[inline]
    fn alloc_one(&self, zone: Zone, use_hints: bool) -> Option<Tagged> {
        let mut g = self.pcp().lock();
        for &z in self.order(zone) {
            let t = match g.lists[z].pop() {
                Some(t) => Some(t),
                None => self.refill(&mut g, z, use_hints),
            };
            if t.is_some() {
                g.allocs += 1;
                self.account(&mut g, 1);
                return t;
            }
        }
        None
    }

    /// Refill this CPU's empty list `z` (`g`, locked) with a batch from zone `z`'s pool and
    /// take one frame of it. (Out of line: once per batch.)
    #[inline(never)]
    fn refill(&self, g: &mut Pcp, z: usize, use_hints: bool) -> Option<Tagged> {
        let zs = &self.zones[z];
        if zs.exists() && (!use_hints || zs.hint() > 0) {
            zs.take(self.batch, &mut g.lists[z]);
            g.lists[z].pop()
        } else {
            None
        }
    }

    #[inline]
    fn alloc_tagged(&self, zone: Zone) -> Result<Tagged, FrameError> {
        if self.injected(1) {
            return Err(self.fail(zone, true));
        }
        let t = match self.alloc_one(zone, true) {
            Some(t) => t,
            None => self.alloc_retry(zone)?,
        };
        self.claim(t.index());
        Ok(t)
    }

    /// [`FrameAllocator::alloc_tagged`] found this CPU's cache and the pools (by their
    /// hints) empty. (Out of line: rare.)
    #[cold]
    #[inline(never)]
    fn alloc_retry(&self, zone: Zone) -> Result<Tagged, FrameError> {
        if !self.order(zone).iter().any(|&z| self.zones[z].exists()) {
            return Err(self.fail(zone, false));
        }
        // Frames may sit in other CPUs' caches: give them all back and retry once, looking
        // into every pool whatever its hint says.
        self.drain_cpu_caches();
        self.alloc_one(zone, false)
            .ok_or_else(|| self.fail(zone, false))
    }

    /// Allocate one frame (contents unspecified) with reference count 1.
    #[inline]
    pub fn alloc(&self, zone: Zone) -> Result<PhysFrame<Size4KiB>, FrameError> {
        self.alloc_tagged(zone).map(|t| self.frame_of(t.index()))
    }

    /// Allocate one zero-filled frame with reference count 1 (never-touched frames are not
    /// written).
    pub fn alloc_zeroed(&self, zone: Zone) -> Result<PhysFrame<Size4KiB>, FrameError> {
        let t = self.alloc_tagged(zone)?;
        let f = self.frame_of(t.index());
        if !t.is_zero() {
            if let Err(e) = self.arena.zero_frame(f) {
                self.free(f)?;
                return Err(e.into());
            }
        }
        Ok(f)
    }

    /// Drop one reference to frame `index`; true if it was the last.
    #[inline]
    fn drop_ref(&self, index: u64) -> Result<bool, FrameError> {
        let rc = &self.refcounts[index as usize];
        // The common case, the only reference: one compare-exchange, no load before it.
        let mut cur = match rc.compare_exchange(1, 0, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return Ok(true),
            Err(actual) => actual,
        };
        loop {
            if cur == 0 {
                return Err(FrameError::DoubleFree {
                    frame: self.frame_of(index).start_address(),
                });
            }
            match rc.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Ok(cur == 1),
                Err(actual) => cur = actual,
            }
        }
    }

    /// [`FrameAllocator::drop_ref`] for a caller that frees its frames exclusively: no other
    /// thread drops a reference to the same frame at the same time unless it holds one of its
    /// own (true of every correct caller; only a racing double free breaks it). Then a count
    /// of 1 is the caller's own reference, which nobody else can take or drop meanwhile, so
    /// the last drop is a load and a store instead of a compare-exchange (the locked
    /// instruction was a quarter of `long_busy_list`'s time, see docs/KVA_SPEED.md). The load
    /// is `Acquire` (it pairs with the `Release` drop of a former sharer), the store
    /// `Release`; a count above 1 takes the read-modify-write path. What the caller gives up
    /// is the refusal of a racing double free: two such drops of a count of 1 would both
    /// release the frame. A sequential double free is still refused (the count is 0).
    #[inline]
    fn drop_ref_exclusive(&self, index: u64) -> Result<bool, FrameError> {
        let rc = &self.refcounts[index as usize];
        if rc.load(Ordering::Acquire) == 1 {
            rc.store(0, Ordering::Release);
            return Ok(true);
        }
        self.drop_ref(index)
    }

    /// Put released frames (at most [`RELEASE_CHUNK`]) into this CPU's cache (trimming it)
    /// and count them.
    #[inline(always)]
    fn release(&self, frames: &[Tagged]) {
        if frames.is_empty() {
            return;
        }
        debug_assert!(frames.len() <= RELEASE_CHUNK);
        let mut g = self.pcp().lock();
        // Each run of frames of one zone goes in with one copy and one trim. The two zones'
        // lists are independent, so this leaves what freeing the frames one by one would (see
        // `Pcp::push_trim`). One frame (`free`: the length test folds away), or an arena
        // wholly on one side of 4 GiB (every arena but one straddling it): the chunk is one
        // run, no frame needs its zone looked up.
        let zone_of = |t: &Tagged| self.zone_index(t.index());
        if frames.len() == 1 || self.low_end == 0 || self.low_end == self.nframes {
            let z = zone_of(&frames[0]);
            g.push_trim(z, frames, &self.zones[z], self.high, self.batch);
        } else {
            for run in frames.chunk_by(|a, b| zone_of(a) == zone_of(b)) {
                let z = zone_of(&run[0]);
                g.push_trim(z, run, &self.zones[z], self.high, self.batch);
            }
        }
        g.frees += frames.len() as u64;
        self.account(&mut g, -(frames.len() as i64));
    }

    /// Drop the caller's reference to `frame`; at zero the frame goes back to the allocator.
    /// Returns whether it was released. A frame outside the arena ([`FrameError::NotOwned`])
    /// or with no reference left ([`FrameError::DoubleFree`]) is refused and nothing changes.
    #[inline]
    pub fn free(&self, frame: PhysFrame<Size4KiB>) -> Result<bool, FrameError> {
        self.free_one(frame, false)
    }

    /// The two single-frame frees (`exclusive` is a constant at both call sites).
    #[inline(always)]
    fn free_one(&self, frame: PhysFrame<Size4KiB>, exclusive: bool) -> Result<bool, FrameError> {
        let i = self.index(frame)?;
        let last = if exclusive {
            self.drop_ref_exclusive(i)?
        } else {
            self.drop_ref(i)?
        };
        if !last {
            return Ok(false);
        }
        self.release(&[Tagged::new(i, false)]);
        Ok(true)
    }

    /// Linux's name for [`FrameAllocator::free`]: drop a reference.
    #[inline]
    pub fn put(&self, frame: PhysFrame<Size4KiB>) -> Result<bool, FrameError> {
        self.free(frame)
    }

    /// Drop one reference to each frame. Every valid frame is processed even if some are
    /// refused; returns how many were released, or the first refusal.
    pub fn free_bulk(&self, frames: &[PhysFrame<Size4KiB>]) -> Result<usize, FrameError> {
        self.free_batch(frames, false)
    }

    /// [`FrameAllocator::free`] for a caller that frees `frame` exclusively: no other thread
    /// frees it at the same time unless it holds a reference of its own (true of every
    /// correct caller; `vfree` of an area it took out of the busy index). The last reference
    /// then goes with a load and a store instead of a compare-exchange (no locked
    /// instruction); a shared frame drops its reference as `free` does. Given up: the
    /// refusal of a racing double free (two such frees of a sole reference would both release
    /// the frame). A sequential double free, or a frame outside the arena, is still refused.
    #[inline]
    pub fn free_exclusive(&self, frame: PhysFrame<Size4KiB>) -> Result<bool, FrameError> {
        self.free_one(frame, true)
    }

    /// [`FrameAllocator::free_bulk`] under [`FrameAllocator::free_exclusive`]'s contract: one
    /// CPU-cache lock section per 64 released frames, no locked instruction per sole
    /// reference.
    pub fn free_bulk_exclusive(&self, frames: &[PhysFrame<Size4KiB>]) -> Result<usize, FrameError> {
        self.free_batch(frames, true)
    }

    /// The two `free_bulk`s.
    #[inline]
    fn free_batch(
        &self,
        frames: &[PhysFrame<Size4KiB>],
        exclusive: bool,
    ) -> Result<usize, FrameError> {
        let mut batch = FreeBatch::new(self, exclusive);
        for &f in frames {
            batch.put(f);
        }
        batch.finish()
    }

    /// Take another reference to an allocated `frame` (COW sharing, remapping); returns the
    /// new count.
    pub fn get(&self, frame: PhysFrame<Size4KiB>) -> Result<u32, FrameError> {
        let i = self.index(frame)?;
        let rc = &self.refcounts[i as usize];
        let mut cur = rc.load(Ordering::Relaxed);
        loop {
            if cur == 0 {
                return Err(FrameError::NotAllocated {
                    frame: frame.start_address(),
                });
            }
            if cur == u32::MAX {
                return Err(FrameError::RefcountOverflow {
                    frame: frame.start_address(),
                });
            }
            match rc.compare_exchange_weak(cur, cur + 1, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(cur + 1),
                Err(actual) => cur = actual,
            }
        }
    }

    /// The reference count of `frame` (0 if free or not in the arena).
    pub fn refcount(&self, frame: PhysFrame<Size4KiB>) -> u32 {
        match self.index(frame) {
            Ok(i) => self.refcounts[i as usize].load(Ordering::Relaxed),
            Err(_) => 0,
        }
    }

    /// Give every frame held in any CPU cache back to the shared pools.
    pub fn drain_cpu_caches(&self) {
        for p in self.pcps.iter() {
            p.lock().drain_all(&self.zones);
        }
    }

    /// Frames currently held in CPU caches (they count as free).
    pub fn cached(&self) -> u64 {
        self.pcps.iter().map(|p| p.lock().cached() as u64).sum()
    }

    /// Frames in the shared pool of `zone` (for `Zone::Normal`: both pools), not counting
    /// CPU caches.
    pub fn pooled(&self, zone: Zone) -> u64 {
        self.order(zone)
            .iter()
            .map(|&z| self.zones[z].pooled())
            .sum()
    }

    /// A snapshot of the counters (exact once no operation is in flight).
    pub fn stats(&self) -> FrameStats {
        let (mut allocs, mut frees, mut peaks) = (0u64, 0u64, 0i64);
        for p in self.pcps.iter() {
            let g = p.lock();
            allocs += g.allocs;
            frees += g.frees;
            peaks += g.peak;
        }
        self.raise_high_water(self.folded.load(Ordering::Relaxed) + peaks);
        // A frame allocated on one CPU and freed on another between our two lock visits can
        // make the sum momentarily off; exact once nothing is in flight.
        let used = allocs.saturating_sub(frees).min(self.nframes);
        self.raise_high_water(used as i64);
        FrameStats {
            total: self.nframes,
            free: self.nframes - used,
            used,
            high_water: self.high_water.load(Ordering::Relaxed),
            allocs,
            frees,
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}

impl<P: Platform> fmt::Debug for FrameAllocator<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrameAllocator")
            .field("arena", &self.arena)
            .field("low_frames", &self.low_end)
            .field("cpus", &self.pcps.len())
            .field("batch", &self.batch)
            .field("high", &self.high)
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests;
