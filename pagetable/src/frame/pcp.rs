//! The frame allocator's building blocks: tagged free-frame entries, the shared per-zone
//! pools and the per-CPU caches.
//!
//! * A [`Tagged`] entry names a free frame by its index in the arena and carries one bit:
//!   "known zero" (the frame came from the never-touched bump region and was never handed out,
//!   so `alloc_zeroed` may skip the memset).
//! * A [`ZoneState`] is one physical zone (below 4 GiB / above) of the arena: a [`Pool`]
//!   behind a mutex (a LIFO free list of released frames in front of a bump region of
//!   never-touched frames, plus a LIFO list of free 2 MiB runs) and an `available` hint
//!   readable without the lock.
//! * A 2 MiB run is 512 frames starting at a 2 MiB-aligned physical address. Runs come from
//!   the bump region (the frames skipped to reach the alignment go to the free list) or from
//!   the run list, where [`ZoneState::give_run`] puts a run whose 512 frames were all
//!   released together. Single frames are never merged back into runs (there is no buddy
//!   allocator): a run is broken into 512 single frames only when the free list and the bump
//!   region cannot serve a single-frame request. A CPU cache keeps up to `RUN_PCP_HIGH` free
//!   runs per zone, so a CPU that frees a huge area and allocates another skips the pool.
//! * A [`Pcp`] is one CPU's cache: a LIFO list per zone plus that CPU's exact allocation and
//!   release counters, all behind the CPU's own (normally uncontended) mutex.
//!
//! Locking: a pcp lock may be held while taking a pool lock (refill, drain); a pool lock is
//! never held while taking a pcp lock, and two pcp locks are never held together. The
//! `available` hint is written under the pool lock and read without it (`Relaxed`); it only
//! decides whether a refill is worth trying, never correctness: the allocator's last-chance
//! path takes the pool locks regardless.

use crossbeam_utils::CachePadded;

use alloc::vec::Vec;

use crate::platform::Platform;
use crate::sync::{AtomicU64, Mutex, Ordering};

/// Zone index of frames below 4 GiB physical (`Zone::Dma32` and the `Zone::Normal` fallback).
pub(super) const LOW: usize = 0;
/// Zone index of frames at or above 4 GiB physical (preferred by `Zone::Normal`).
pub(super) const HIGH: usize = 1;

/// A free frame: its index in the arena (shifted left by one) and the "known zero" bit.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct Tagged(u64);

impl Tagged {
    /// Frame `index`, known to be all zero if `zero`.
    #[inline]
    pub(super) fn new(index: u64, zero: bool) -> Self {
        Self(index << 1 | u64::from(zero))
    }

    /// The frame's index in the arena.
    #[inline]
    pub(super) fn index(self) -> u64 {
        self.0 >> 1
    }

    /// Whether the frame is known to be all zero.
    #[inline]
    pub(super) fn is_zero(self) -> bool {
        self.0 & 1 != 0
    }
}

/// Frames in a 2 MiB run.
pub(super) const RUN_FRAMES: u64 = 512;

/// Free 2 MiB runs a CPU cache keeps per zone (Linux's pcp lists keep huge orders too since
/// 5.13).
///
/// Why 2: a CPU churning huge areas (allocate, free, allocate) then takes and returns its
/// run without the shared pool's lock, and with one more run in reserve a
/// `vrealloc`-style "allocate the new, free the old" finds one too; each cached run keeps
/// 2 MiB away from the other CPUs until they drain the caches (which they do when they
/// find nothing), so more would hoard memory.
pub(super) const RUN_PCP_HIGH: usize = 2;

/// The shared free frames of one zone.
#[derive(Debug)]
pub(super) struct Pool {
    /// Released frames, LIFO (the most recently freed, cache-hot frame goes out first).
    free: Vec<Tagged>,
    /// Free 2 MiB runs (their first frame), LIFO.
    runs: Vec<Tagged>,
    /// Physical frame number of frame index 0: index `i` starts a 2 MiB-aligned run iff
    /// `(pfn0 + i) % RUN_FRAMES == 0`.
    pfn0: u64,
    /// The next never-touched frame index.
    bump_next: u64,
    /// The end of the bump region (exclusive frame index).
    bump_end: u64,
    /// Whether bump frames are known to be zero (the arena started zeroed).
    bump_zero: bool,
}

impl Pool {
    /// Frames available from this pool.
    #[inline]
    fn available(&self) -> u64 {
        self.free.len() as u64
            + (self.bump_end - self.bump_next)
            + self.runs.len() as u64 * RUN_FRAMES
    }

    /// Append up to `n` frames to `out` (released ones first, then fresh bump frames, pushed
    /// so that popping `out` yields ascending addresses, then frames of broken-up runs);
    /// returns how many.
    fn take(&mut self, n: usize, out: &mut Vec<Tagged>) -> usize {
        let mut got = self.take_singles(n, out);
        while got < n {
            // Single frames ran out: break a free run into the free list.
            let Some(run) = self.runs.pop() else { break };
            self.free.extend(
                (0..RUN_FRAMES)
                    .rev()
                    .map(|k| Tagged::new(run.index() + k, run.is_zero())),
            );
            got += self.take_singles(n - got, out);
        }
        got
    }

    /// [`Pool::take`] from the free list and the bump region only.
    fn take_singles(&mut self, n: usize, out: &mut Vec<Tagged>) -> usize {
        let from_free = n.min(self.free.len());
        let keep = self.free.len() - from_free;
        out.extend(self.free.drain(keep..));
        let from_bump = ((n - from_free) as u64).min(self.bump_end - self.bump_next);
        let first = self.bump_next;
        self.bump_next += from_bump;
        out.extend(
            (first..first + from_bump)
                .rev()
                .map(|i| Tagged::new(i, self.bump_zero)),
        );
        from_free + from_bump as usize
    }

    /// A free 2 MiB run: the most recently released one, else carved from the bump region
    /// (the frames skipped to reach the alignment go to the free list). `None` if neither
    /// has one.
    fn take_run(&mut self) -> Option<Tagged> {
        if let Some(r) = self.runs.pop() {
            return Some(r);
        }
        let skip = (RUN_FRAMES - (self.pfn0 + self.bump_next) % RUN_FRAMES) % RUN_FRAMES;
        let first = self.bump_next.checked_add(skip)?;
        if first.checked_add(RUN_FRAMES)? > self.bump_end {
            return None;
        }
        let zero = self.bump_zero;
        self.free
            .extend((self.bump_next..first).rev().map(|i| Tagged::new(i, zero)));
        self.bump_next = first + RUN_FRAMES;
        Some(Tagged::new(first, zero))
    }
}

/// One zone: its pool and a lock-free availability hint.
pub(super) struct ZoneState<P: Platform> {
    pool: CachePadded<Mutex<P, Pool>>,
    available: AtomicU64,
    /// Frame indexes `first .. end` of the arena belong to this zone.
    pub(super) first: u64,
    /// End (exclusive) of this zone's frame indexes.
    pub(super) end: u64,
}

impl<P: Platform> ZoneState<P> {
    /// A zone owning frame indexes `first .. end`, all in the bump region (known zero if
    /// `bump_zero`); frame index 0 is physical frame number `pfn0`.
    pub(super) fn new(first: u64, end: u64, bump_zero: bool, pfn0: u64) -> Self {
        Self {
            pool: CachePadded::new(Mutex::<P, _>::new(Pool {
                free: Vec::new(),
                runs: Vec::new(),
                pfn0,
                bump_next: first,
                bump_end: end,
                bump_zero,
            })),
            available: AtomicU64::new(end - first),
            first,
            end,
        }
    }

    /// Whether the zone has any frame at all.
    #[inline]
    pub(super) fn exists(&self) -> bool {
        self.end > self.first
    }

    /// The lock-free hint: frames that were in the pool at its last change.
    #[inline]
    pub(super) fn hint(&self) -> u64 {
        self.available.load(Ordering::Relaxed)
    }

    /// Move up to `n` frames from the pool to `out`; returns how many.
    pub(super) fn take(&self, n: usize, out: &mut Vec<Tagged>) -> usize {
        if n == 0 || !self.exists() {
            return 0;
        }
        let mut p = self.pool.lock();
        let k = p.take(n, out);
        self.available.store(p.available(), Ordering::Relaxed);
        k
    }

    /// Return released frames (all of this zone) to the pool.
    pub(super) fn give(&self, frames: &[Tagged]) {
        if frames.is_empty() {
            return;
        }
        let mut p = self.pool.lock();
        debug_assert!(
            frames
                .iter()
                .all(|t| (self.first..self.end).contains(&t.index()))
        );
        p.free.extend_from_slice(frames);
        self.available.store(p.available(), Ordering::Relaxed);
    }

    /// A free 2 MiB run (see [`Pool::take_run`]).
    pub(super) fn take_run(&self) -> Option<Tagged> {
        if !self.exists() {
            return None;
        }
        let mut p = self.pool.lock();
        let r = p.take_run();
        self.available.store(p.available(), Ordering::Relaxed);
        r
    }

    /// Return a whole released run (its first frame; all 512 frames of this zone).
    pub(super) fn give_run(&self, run: Tagged) {
        let mut p = self.pool.lock();
        debug_assert!(
            (self.first..self.end).contains(&run.index()) && run.index() + RUN_FRAMES <= self.end
        );
        p.runs.push(run);
        self.available.store(p.available(), Ordering::Relaxed);
    }

    /// Free 2 MiB runs in the pool's run list right now (takes the lock; the bump region may
    /// hold more).
    pub(super) fn pooled_runs(&self) -> usize {
        self.pool.lock().runs.len()
    }

    /// Frames in the pool right now (takes the lock).
    pub(super) fn pooled(&self) -> u64 {
        self.pool.lock().available()
    }
}

/// One CPU's cache and counters.
#[derive(Debug)]
pub(super) struct Pcp {
    /// Cached free frames per zone ([`LOW`], [`HIGH`]), LIFO.
    pub(super) lists: [Vec<Tagged>; 2],
    /// Cached free 2 MiB runs per zone (their first frame), at most [`RUN_PCP_HIGH`] each.
    pub(super) runs: [Vec<Tagged>; 2],
    /// Frames handed out through this CPU slot.
    pub(super) allocs: u64,
    /// Frames released through this CPU slot.
    pub(super) frees: u64,
    /// Allocations minus releases through this slot since its last fold into the
    /// allocator's shared `folded` counter (kept within `±FOLD`).
    pub(super) net: i64,
    /// The largest `net` since the last fold (for the high-water mark).
    pub(super) peak: i64,
}

impl Pcp {
    /// An empty cache whose lists never reallocate below `capacity` entries.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            lists: [Vec::with_capacity(capacity), Vec::with_capacity(capacity)],
            runs: [
                Vec::with_capacity(RUN_PCP_HIGH),
                Vec::with_capacity(RUN_PCP_HIGH),
            ],
            allocs: 0,
            frees: 0,
            net: 0,
            peak: 0,
        }
    }

    /// Frames cached in both lists and in the cached runs.
    #[inline]
    pub(super) fn cached(&self) -> usize {
        self.lists[LOW].len()
            + self.lists[HIGH].len()
            + (self.runs[LOW].len() + self.runs[HIGH].len()) * RUN_FRAMES as usize
    }

    /// Push `frames` (all of zone `z`) onto list `z`, then, if it holds more than `high`,
    /// give its coldest frames (the bottom of the stack) back to `zone`: the coldest
    /// `ceil(excess / batch) * batch`, in one pool-lock section. From a list of at most
    /// `high` frames this leaves exactly what pushing the frames one at a time would, giving
    /// back the coldest `batch` each time the list passed `high` (Linux's per-free trim of a
    /// pcp list): same list, same frames given back, in the same order. The list's capacity
    /// covers `high + frames.len()` for the chunks `release` pushes (see where the allocator
    /// builds its `Pcp`s), so nothing reallocates.
    #[inline]
    pub(super) fn push_trim<P: Platform>(
        &mut self,
        z: usize,
        frames: &[Tagged],
        zone: &ZoneState<P>,
        high: usize,
        batch: usize,
    ) {
        let list = &mut self.lists[z];
        list.extend_from_slice(frames);
        if list.len() > high {
            let n = (list.len() - high).div_ceil(batch) * batch;
            self.give_coldest(z, zone, n);
        }
    }

    /// Give the coldest `n` frames of list `z` (at most all of them) back to `zone`.
    #[inline(never)]
    fn give_coldest<P: Platform>(&mut self, z: usize, zone: &ZoneState<P>, n: usize) {
        let list = &mut self.lists[z];
        let n = n.min(list.len());
        zone.give(&list[..n]);
        list.drain(..n);
    }

    /// Give every cached frame and run back to its zone.
    pub(super) fn drain_all<P: Platform>(&mut self, zones: &[ZoneState<P>; 2]) {
        for (list, zone) in self.lists.iter_mut().zip(zones) {
            zone.give(list);
            list.clear();
        }
        for (runs, zone) in self.runs.iter_mut().zip(zones) {
            for r in runs.drain(..) {
                zone.give_run(r);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tagged_round_trip() {
        let t = Tagged::new(12345, true);
        assert_eq!((t.index(), t.is_zero()), (12345, true));
        let t = Tagged::new(7, false);
        assert_eq!((t.index(), t.is_zero()), (7, false));
    }

    #[cfg(not(feature = "loom"))]
    #[test]
    fn pool_serves_free_list_before_bump() {
        let z = ZoneState::<crate::platform::StdPlatform>::new(10, 20, true, 0);
        let mut out = Vec::new();
        assert_eq!(z.take(3, &mut out), 3);
        // Popping yields ascending fresh frames, all known zero.
        assert_eq!(
            out.iter().rev().map(|t| t.index()).collect::<Vec<_>>(),
            [10, 11, 12]
        );
        assert!(out.iter().all(|t| t.is_zero()));
        assert_eq!(z.hint(), 7);
        z.give(&[Tagged::new(11, false)]);
        let mut again = Vec::new();
        assert_eq!(z.take(2, &mut again), 2);
        assert_eq!(again[0], Tagged::new(11, false));
        assert_eq!(again[1], Tagged::new(13, true));
        assert_eq!(z.take(100, &mut again), 6);
        assert_eq!((z.hint(), z.pooled()), (0, 0));
        assert_eq!(z.take(1, &mut again), 0);
        assert!(!ZoneState::<crate::platform::StdPlatform>::new(5, 5, true, 0).exists());
    }

    #[cfg(not(feature = "loom"))]
    #[test]
    fn push_trim_gives_back_the_coldest() {
        let z = ZoneState::<crate::platform::StdPlatform>::new(0, 100, true, 0);
        let mut p = Pcp::new(8 + 64);
        let mut taken = Vec::new();
        z.take(10, &mut taken);
        p.lists[LOW].extend_from_slice(&taken[..4]);
        p.push_trim(LOW, &taken[4..], &z, 6, 3);
        // 10 > 6: give back ceil(4 / 3) * 3 = 6 from the bottom (the 4 cached first and the
        // 2 pushed first); the 4 pushed last stay.
        assert_eq!(p.lists[LOW], taken[6..]);
        assert_eq!(z.pooled(), 96);
        p.push_trim(LOW, &[], &z, 6, 3);
        assert_eq!(p.lists[LOW].len(), 4);
        let zones = [
            z,
            ZoneState::<crate::platform::StdPlatform>::new(100, 100, true, 0),
        ];
        p.drain_all(&zones);
        assert_eq!(p.cached(), 0);
        assert_eq!(zones[LOW].pooled(), 100);
    }

    #[cfg(not(feature = "loom"))]
    #[test]
    fn push_trim_leaves_what_trimming_after_each_push_leaves() {
        type Zone = ZoneState<crate::platform::StdPlatform>;
        // Everything the zone hands out from now on, in order: its whole state.
        let drain = |z: &Zone| {
            let mut out = Vec::new();
            z.take(usize::MAX, &mut out);
            out
        };
        // Under Miri (which runs this module) a subset: the full set takes minutes there.
        let pairs: &[(usize, usize)] = if cfg!(miri) {
            &[(6, 3), (0, 1), (7, 2)]
        } else {
            &[(6, 3), (128, 32), (1, 1), (0, 1), (5, 5), (7, 2), (32, 31)]
        };
        for &(high, batch) in pairs {
            for len0 in 0..=high {
                for k in [0, 1, 2, batch, batch + 1, 2 * batch + 1, 63, 64] {
                    // Pushed frames 192.. never collide with the `len0` taken from the bump
                    // region (0..=128), and stay inside the zone.
                    let frames: Vec<Tagged> = (0..k)
                        .map(|j| Tagged::new(192 + j as u64, j % 3 == 0))
                        .collect();
                    let (one, bulk) = (Zone::new(0, 256, true, 0), Zone::new(0, 256, true, 0));
                    let (mut a, mut b) = (Pcp::new(high + 65), Pcp::new(high + 65));
                    one.take(len0, &mut a.lists[LOW]);
                    bulk.take(len0, &mut b.lists[LOW]);
                    // The reference: one frame at a time, and each time the list passes
                    // `high`, the coldest `max(excess, batch)` go back to the pool.
                    for &t in &frames {
                        let list = &mut a.lists[LOW];
                        list.push(t);
                        if list.len() > high {
                            let n = (list.len() - high).max(batch).min(list.len());
                            one.give(&list[..n]);
                            list.drain(..n);
                        }
                    }
                    b.push_trim(LOW, &frames, &bulk, high, batch);
                    let case = format!("high {high} batch {batch} len0 {len0} k {k}");
                    assert_eq!(a.lists[LOW], b.lists[LOW], "{case}: the cached list");
                    assert!(b.lists[LOW].len() <= high.max(1), "{case}: trimmed");
                    assert_eq!(drain(&one), drain(&bulk), "{case}: the zone's pool");
                }
            }
        }
    }

    #[cfg(not(feature = "loom"))]
    #[test]
    fn runs_are_aligned_and_break_into_singles_last() {
        // Frame index 0 is pfn 500: the first aligned run starts at index 12 (pfn 512).
        let z = ZoneState::<crate::platform::StdPlatform>::new(0, 1000, true, 500);
        let r = z.take_run().expect("a run from the bump region");
        assert_eq!((r.index(), r.is_zero()), (12, true));
        // The 12 skipped frames went to the free list; the next run would end past 1000.
        assert_eq!(z.pooled(), 1000 - 512);
        assert!(z.take_run().is_none());
        z.give_run(Tagged::new(12, false));
        assert_eq!((z.pooled_runs(), z.pooled(), z.hint()), (1, 1000, 1000));
        // Single frames come from the free list and the bump region before the run.
        let mut out = Vec::new();
        assert_eq!(z.take(488, &mut out), 488);
        assert_eq!(z.pooled_runs(), 1);
        assert!(out.iter().all(|t| !(12..524).contains(&t.index())));
        // Now only the run is left: a single-frame request breaks it.
        out.clear();
        assert_eq!(z.take(3, &mut out), 3);
        assert_eq!(z.pooled_runs(), 0);
        assert!(
            out.iter()
                .all(|t| (12..524).contains(&t.index()) && !t.is_zero())
        );
        assert_eq!(z.pooled(), 512 - 3);
        assert_eq!(z.take_run(), None);
    }
}
