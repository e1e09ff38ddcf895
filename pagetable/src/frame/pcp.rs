//! The frame allocator's building blocks: tagged free-frame entries, the shared per-zone
//! pools and the per-CPU caches.
//!
//! * A [`Tagged`] entry names a free frame by its index in the arena and carries one bit:
//!   "known zero" (the frame came from the never-touched bump region and was never handed out,
//!   so `alloc_zeroed` may skip the memset).
//! * A [`ZoneState`] is one physical zone (below 4 GiB / above) of the arena: a [`Pool`]
//!   behind a mutex (a LIFO free list of released frames in front of a bump region of
//!   never-touched frames) plus an `available` hint readable without the lock.
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

/// The shared free frames of one zone.
#[derive(Debug)]
pub(super) struct Pool {
    /// Released frames, LIFO (the most recently freed, cache-hot frame goes out first).
    free: Vec<Tagged>,
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
        self.free.len() as u64 + (self.bump_end - self.bump_next)
    }

    /// Append up to `n` frames to `out` (released ones first, then fresh bump frames, pushed
    /// so that popping `out` yields ascending addresses); returns how many.
    fn take(&mut self, n: usize, out: &mut Vec<Tagged>) -> usize {
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
    /// `bump_zero`).
    pub(super) fn new(first: u64, end: u64, bump_zero: bool) -> Self {
        Self {
            pool: CachePadded::new(Mutex::<P, _>::new(Pool {
                free: Vec::new(),
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
            allocs: 0,
            frees: 0,
            net: 0,
            peak: 0,
        }
    }

    /// Frames cached in both lists.
    #[inline]
    pub(super) fn cached(&self) -> usize {
        self.lists[LOW].len() + self.lists[HIGH].len()
    }

    /// If list `z` holds more than `high` frames, give the coldest ones (the bottom of the
    /// stack: at least `batch`, at least the excess) back to `zone`.
    #[inline]
    pub(super) fn trim<P: Platform>(
        &mut self,
        z: usize,
        zone: &ZoneState<P>,
        high: usize,
        batch: usize,
    ) {
        let list = &mut self.lists[z];
        if list.len() > high {
            let n = (list.len() - high).max(batch).min(list.len());
            zone.give(&list[..n]);
            list.drain(..n);
        }
    }

    /// Give every cached frame back to its zone.
    pub(super) fn drain_all<P: Platform>(&mut self, zones: &[ZoneState<P>; 2]) {
        for (list, zone) in self.lists.iter_mut().zip(zones) {
            zone.give(list);
            list.clear();
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
        let z = ZoneState::<crate::platform::StdPlatform>::new(10, 20, true);
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
        assert!(!ZoneState::<crate::platform::StdPlatform>::new(5, 5, true).exists());
    }

    #[cfg(not(feature = "loom"))]
    #[test]
    fn trim_gives_back_the_coldest() {
        let z = ZoneState::<crate::platform::StdPlatform>::new(0, 100, true);
        let mut p = Pcp::new(8);
        z.take(10, &mut p.lists[LOW]);
        p.trim(LOW, &z, 6, 3);
        // 10 > 6: give back max(4, 3) = 4 from the bottom (the highest indexes).
        assert_eq!(p.lists[LOW].len(), 6);
        assert_eq!(z.pooled(), 94);
        p.trim(LOW, &z, 6, 3);
        assert_eq!(p.lists[LOW].len(), 6);
        let zones = [
            z,
            ZoneState::<crate::platform::StdPlatform>::new(100, 100, true),
        ];
        p.drain_all(&zones);
        assert_eq!(p.cached(), 0);
        assert_eq!(zones[LOW].pooled(), 100);
    }
}
