//! Bulk allocation: [`FrameAllocator::alloc_bulk`] and [`FrameAllocator::alloc_bulk_zeroed`]
//! (all or nothing, this CPU's cache first, then the pools; see the parent module for the
//! locking rules).

use alloc::vec::Vec;

use super::pcp::{HIGH, LOW, Tagged};
use super::{FrameAllocator, FrameError, Zone};
use crate::arena::ArenaError;
use crate::page::{PhysFrame, Size4KiB};
use crate::platform::Platform;
use crate::sync::Ordering;

impl<P: Platform> FrameAllocator<P> {
    /// Move up to `n - got.len()` more frames of `zone` into `got`: this CPU's lists first,
    /// then the pools. Returns whether `got` now holds `n`.
    fn gather(&self, zone: Zone, n: usize, got: &mut Vec<Tagged>, use_hints: bool) -> bool {
        let mut g = self.pcp().lock();
        for &z in self.order(zone) {
            let list = &mut g.lists[z];
            let k = (n - got.len()).min(list.len());
            got.extend(list.drain(list.len() - k..));
            let zs = &self.zones[z];
            if got.len() < n && (!use_hints || zs.hint() > 0) {
                zs.take(n - got.len(), got);
            }
            if got.len() == n {
                return true;
            }
        }
        false
    }

    /// Return never-claimed frames straight to their pools.
    fn give_back(&self, got: &[Tagged]) {
        for z in [LOW, HIGH] {
            let part: Vec<Tagged> = got
                .iter()
                .copied()
                .filter(|t| self.zone_index(t.index()) == z)
                .collect();
            self.zones[z].give(&part);
        }
    }

    fn alloc_bulk_inner(
        &self,
        n: usize,
        zone: Zone,
        out: &mut Vec<PhysFrame<Size4KiB>>,
        zeroed: bool,
    ) -> Result<(), FrameError> {
        if n == 0 {
            return Ok(());
        }
        if self.injected(n as u64) {
            return Err(self.fail(zone, true));
        }
        // More than the arena holds can never succeed: refuse before reserving O(n)
        // bookkeeping, and reserve fallibly (host memory may be short even when frames are
        // not).
        if n as u64 > self.nframes {
            return Err(self.fail(zone, false));
        }
        let mut got = Vec::new();
        if got.try_reserve_exact(n).is_err() || out.try_reserve(n).is_err() {
            return Err(self.fail(zone, false));
        }
        if !self.gather(zone, n, &mut got, true) {
            self.drain_cpu_caches();
            if !self.gather(zone, n, &mut got, false) {
                self.give_back(&got);
                return Err(self.fail(zone, false));
            }
        }
        if zeroed {
            for t in got.iter().filter(|t| !t.is_zero()) {
                if let Err(e) = self.arena.zero_frame(self.frame_of(t.index())) {
                    self.give_back(&got);
                    return Err(self.fail_with(e));
                }
            }
        }
        {
            let mut g = self.pcp().lock();
            g.allocs += n as u64;
            self.account(&mut g, n as i64);
        }
        // `out` has room (reserved above): one extend, no capacity test per frame.
        out.extend(got.iter().map(|t| {
            self.claim(t.index());
            self.frame_of(t.index())
        }));
        Ok(())
    }

    pub(super) fn fail_with(&self, e: ArenaError) -> FrameError {
        self.failed.fetch_add(1, Ordering::Relaxed);
        FrameError::Arena(e)
    }

    /// Allocate `n` frames (contents unspecified) and append them to `out`, or none at all.
    pub fn alloc_bulk(
        &self,
        n: usize,
        zone: Zone,
        out: &mut Vec<PhysFrame<Size4KiB>>,
    ) -> Result<(), FrameError> {
        self.alloc_bulk_inner(n, zone, out, false)
    }

    /// Allocate `n` zero-filled frames and append them to `out`, or none at all.
    pub fn alloc_bulk_zeroed(
        &self,
        n: usize,
        zone: Zone,
        out: &mut Vec<PhysFrame<Size4KiB>>,
    ) -> Result<(), FrameError> {
        self.alloc_bulk_inner(n, zone, out, true)
    }
}
