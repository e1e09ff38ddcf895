//! 2 MiB runs of the frame allocator: what huge vmalloc (`vmalloc_huge`) maps with 2 MiB
//! leaves.
//!
//! # How it works
//!
//! A run is [`HUGE_FRAMES`] (512) consecutive frames starting at a 2 MiB-aligned physical
//! address, handed out as one [`PhysFrame<Size2MiB>`]. Each of its 512 frames gets its own
//! reference count of 1, as Linux splits the high-order pages of a huge vmalloc area
//! (`split_page`): a frame of a run can be shared ([`FrameAllocator::get`]) and released
//! alone ([`FrameAllocator::free`]) like any other. Runs come from
//! first the calling CPU's cache (a few runs per zone), then the pool's list of released
//! runs, then the never-touched bump region, whose frames skipped to reach the alignment go
//! to the single-frame free list; when none has one, every CPU's cache is drained and the
//! pools are tried again.
//! [`FrameAllocator::free_huge`] drops one reference on each of the 512 frames; when all of
//! them are released the run goes back whole (to the CPU's cache, or the pool past its
//! bound), otherwise the released ones go back as single frames. Single frames are never merged into runs again (there is no buddy allocator), and
//! a free run is broken into single frames only when a single-frame request finds nothing
//! else.
//!
//! # Counters and fault injection
//!
//! A run counts as 512 frames in [`FrameStats`](super::FrameStats) (`allocs`, `frees`,
//! `used`), and as ONE allocation for fault injection ([`FrameAllocator::fail_nth`],
//! [`FrameAllocator::fail_after`]): one call to the page allocator, as Linux's fault
//! injection counts an order-9 `alloc_pages` once.
//!
//! # Locking
//!
//! The calling CPU's cache lock (its runs and the counters), then a zone pool's lock when
//! the cache has no run or too many (the pool lock taken under the cache lock or alone,
//! never the other way round); releasing a partly shared run puts its released frames
//! through the CPU cache, as [`FrameAllocator::free`] does.

use super::pcp::{HIGH, LOW, RUN_FRAMES, RUN_PCP_HIGH, Tagged};
use super::{FrameAllocator, FrameError, Zone};
use crate::addr::PhysAddr;
use crate::page::{PAGE_SIZE, PhysFrame, Size2MiB};
use crate::platform::Platform;
use crate::sync::Ordering;

/// 4 KiB frames in a 2 MiB run (and pages under a 2 MiB leaf).
pub const HUGE_FRAMES: usize = RUN_FRAMES as usize;

impl<P: Platform> FrameAllocator<P> {
    /// Allocate a 2 MiB run: 512 physically contiguous frames at a 2 MiB-aligned address,
    /// contents unspecified, each with reference count 1 (see *2 MiB runs* in
    /// [`FrameAllocator`]'s documentation). Fails with
    /// [`FrameError::OutOfFrames`] when no zone `zone` may use has a free run or an aligned
    /// never-touched stretch left, even if enough scattered frames are free (an injected
    /// failure counts the run as one allocation).
    pub fn alloc_huge(&self, zone: Zone) -> Result<PhysFrame<Size2MiB>, FrameError> {
        self.alloc_run(zone, false)
    }

    /// [`FrameAllocator::alloc_huge`] with the run zero-filled (never-touched runs are not
    /// written).
    pub fn alloc_huge_zeroed(&self, zone: Zone) -> Result<PhysFrame<Size2MiB>, FrameError> {
        self.alloc_run(zone, true)
    }

    fn alloc_run(&self, zone: Zone, zeroed: bool) -> Result<PhysFrame<Size2MiB>, FrameError> {
        if self.injected(1) {
            return Err(self.fail(zone, true));
        }
        // This CPU's cached runs, then the pools; then, as for single frames, every CPU's
        // cache drained (a run may sit in another CPU's) and the pools again.
        let cached = {
            let mut g = self.pcp().lock();
            let t = self
                .order(zone)
                .iter()
                .find_map(|&z| g.runs[z].pop().map(|t| (z, t)));
            if t.is_some() {
                g.allocs += RUN_FRAMES;
                self.account(&mut g, RUN_FRAMES as i64);
            }
            t
        };
        let (z, t) = match cached {
            Some(zt) => zt,
            None => {
                let from_pools = || {
                    self.order(zone)
                        .iter()
                        .find_map(|&z| self.zones[z].take_run().map(|t| (z, t)))
                };
                let zt = match from_pools() {
                    Some(zt) => zt,
                    None => {
                        self.drain_cpu_caches();
                        from_pools().ok_or_else(|| self.fail(zone, false))?
                    }
                };
                let mut g = self.pcp().lock();
                g.allocs += RUN_FRAMES;
                self.account(&mut g, RUN_FRAMES as i64);
                zt
            }
        };
        let pa = self.frame_of(t.index()).start_address();
        if zeroed && !t.is_zero() {
            if let Err(e) = self.arena.fill(pa, RUN_FRAMES * PAGE_SIZE, 0) {
                self.zones[z].give_run(t);
                let mut g = self.pcp().lock();
                g.allocs -= RUN_FRAMES;
                self.account(&mut g, -(RUN_FRAMES as i64));
                return Err(self.fail_with(e));
            }
        }
        for i in t.index()..t.index() + RUN_FRAMES {
            self.claim(i);
        }
        Ok(PhysFrame::containing_address(pa))
    }

    /// Drop one reference to each of the 512 frames of `run` (from
    /// [`FrameAllocator::alloc_huge`]); returns how many were released. A run all of whose
    /// frames are released goes back whole (the next `alloc_huge` can use it); frames still
    /// referenced elsewhere (shared with [`FrameAllocator::get`]) stay allocated and the
    /// others go back as single frames.
    ///
    /// Refused, changing nothing: a run not wholly inside the arena
    /// ([`FrameError::NotOwned`]), or one with a frame that is not allocated
    /// ([`FrameError::DoubleFree`], the first such frame).
    pub fn free_huge(&self, run: PhysFrame<Size2MiB>) -> Result<usize, FrameError> {
        let first = self.index(PhysFrame::containing_address(run.start_address()))?;
        let last =
            PhysAddr::new_truncate(run.start_address().as_u64() + (RUN_FRAMES - 1) * PAGE_SIZE);
        self.index(PhysFrame::containing_address(last))?;
        // The caller owns the run: no reference may drop to zero under us, so checking first
        // and dropping after is exact (a racing double free is the caller's bug, and even
        // then `drop_ref` refuses a count already at zero).
        for i in first..first + RUN_FRAMES {
            if self.refcounts[i as usize].load(Ordering::Relaxed) == 0 {
                return Err(FrameError::DoubleFree {
                    frame: self.frame_of(i).start_address(),
                });
            }
        }
        // Which frames this call released (a shared frame may drop to zero on its other
        // holder's side meanwhile: that one is theirs to release, not ours).
        let mut mine = [0u64; (RUN_FRAMES / 64) as usize];
        let mut released = 0;
        for k in 0..RUN_FRAMES {
            let i = first + k;
            if let Ok(true) = self.drop_ref(i) {
                mine[(k / 64) as usize] |= 1 << (k % 64);
                released += 1;
            }
        }
        if released == RUN_FRAMES {
            let z = self.zone_index(first);
            debug_assert!(z == LOW || z == HIGH);
            let run = Tagged::new(first, false);
            let mut g = self.pcp().lock();
            if g.runs[z].len() < RUN_PCP_HIGH {
                g.runs[z].push(run);
            } else {
                self.zones[z].give_run(run);
            }
            g.frees += RUN_FRAMES;
            self.account(&mut g, -(RUN_FRAMES as i64));
        } else if released != 0 {
            // Some frames are still shared: ours go back one by one.
            let mut buf = [Tagged::new(0, false); 64];
            let mut n = 0;
            for k in (0..RUN_FRAMES).filter(|k| mine[(k / 64) as usize] & (1 << (k % 64)) != 0) {
                buf[n] = Tagged::new(first + k, false);
                n += 1;
                if n == buf.len() {
                    self.release(&buf);
                    n = 0;
                }
            }
            self.release(&buf[..n]);
        }
        Ok(released as usize)
    }

    /// Free 2 MiB runs held in the zones' run lists and the CPU caches (runs released
    /// whole by [`FrameAllocator::free_huge`]; the never-touched region may hold more).
    pub fn free_runs(&self) -> usize {
        let cached: usize = self
            .pcps
            .iter()
            .map(|p| {
                let g = p.lock();
                g.runs[LOW].len() + g.runs[HIGH].len()
            })
            .sum();
        cached + self.zones.iter().map(|z| z.pooled_runs()).sum::<usize>()
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;
    use crate::arena::PhysArena;
    use alloc::sync::Arc;

    const MIB: u64 = 1 << 20;

    fn allocator(bytes: u64, base: u64) -> FrameAllocator {
        let arena = PhysArena::heap(bytes, PhysAddr::new(base)).unwrap();
        FrameAllocator::new(Arc::new(arena))
    }

    fn conserved(fa: &FrameAllocator) {
        let s = fa.stats();
        assert_eq!(s.free + s.used, s.total);
        assert_eq!(s.allocs - s.frees, s.used);
        assert_eq!(fa.cached() + fa.pooled(Zone::Normal), s.free, "{s:?}");
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "zeroes and scans 2 MiB runs word by word: tens of minutes under Miri; no unsafe code here, the arena's is covered by arena::"
    )]
    fn runs_are_aligned_counted_and_come_back_whole() {
        // Base 1 MiB: the first aligned run starts at 2 MiB.
        let fa = allocator(8 * MIB, MIB);
        let r = fa.alloc_huge_zeroed(Zone::Normal).unwrap();
        assert_eq!(r.start_address().as_u64(), 2 * MIB);
        let s = fa.stats();
        assert_eq!((s.used, s.allocs), (512, 512));
        conserved(&fa);
        for k in [0u64, 1, 511] {
            let f = PhysFrame::containing_address(r.start_address() + k * PAGE_SIZE);
            assert_eq!(fa.refcount(f), 1);
        }
        assert!(fa.arena().is_zero(r.start_address(), 2 * MIB).unwrap());
        let r2 = fa.alloc_huge(Zone::Normal).unwrap();
        assert_eq!(r2.start_address().as_u64(), 4 * MIB);
        // 8 MiB from 1 MiB: the next aligned run (6..8 MiB) still fits, then none.
        let r3 = fa.alloc_huge(Zone::Normal).unwrap();
        assert_eq!(r3.start_address().as_u64(), 6 * MIB);
        assert!(matches!(
            fa.alloc_huge(Zone::Normal),
            Err(FrameError::OutOfFrames {
                injected: false,
                ..
            })
        ));
        // The skipped megabyte below 2 MiB is still there for single frames.
        assert_eq!(fa.stats().free, 512);
        assert_eq!(fa.free_huge(r2), Ok(512));
        assert_eq!(fa.free_runs(), 1);
        conserved(&fa);
        // Released whole: the next run is the same one, no longer known zero.
        fa.arena().write(r2.start_address(), b"dirty").unwrap();
        let again = fa.alloc_huge_zeroed(Zone::Normal).unwrap();
        assert_eq!(again, r2);
        assert!(fa.arena().is_zero(r2.start_address(), 2 * MIB).unwrap());
        for run in [r, r3, again] {
            assert_eq!(fa.free_huge(run), Ok(512));
        }
        assert_eq!(fa.stats().used, 0);
        conserved(&fa);
    }

    #[test]
    fn a_shared_frame_keeps_the_run_apart() {
        let fa = allocator(4 * MIB, 0);
        let r = fa.alloc_huge(Zone::Normal).unwrap();
        let shared = PhysFrame::containing_address(r.start_address() + 7 * PAGE_SIZE);
        assert_eq!(fa.get(shared), Ok(2));
        assert_eq!(fa.free_huge(r), Ok(511));
        assert_eq!(fa.free_runs(), 0);
        assert_eq!(fa.refcount(shared), 1);
        assert_eq!(fa.stats().used, 1);
        conserved(&fa);
        // A second free of the run is refused as a whole: frame 0 is not allocated.
        let before = fa.stats();
        assert_eq!(
            fa.free_huge(r),
            Err(FrameError::DoubleFree {
                frame: r.start_address()
            })
        );
        assert_eq!(fa.stats(), before);
        assert_eq!(fa.free(shared), Ok(true));
        conserved(&fa);
    }

    #[test]
    fn foreign_runs_are_refused() {
        let fa = allocator(4 * MIB, 0);
        let beyond = PhysFrame::containing_address(PhysAddr::new(4 * MIB));
        assert!(matches!(
            fa.free_huge(beyond),
            Err(FrameError::NotOwned { .. })
        ));
        let small = allocator(3 * MIB, 0);
        let r = small.alloc_huge(Zone::Normal).unwrap();
        assert_eq!(r.start_address().as_u64(), 0);
        // Half the run at 2 MiB lies outside a 3 MiB arena.
        let half = PhysFrame::containing_address(PhysAddr::new(2 * MIB));
        assert!(matches!(
            small.free_huge(half),
            Err(FrameError::NotOwned { .. })
        ));
        assert_eq!(small.free_huge(r), Ok(512));
    }

    #[test]
    fn injected_failures_count_a_run_once() {
        let fa = allocator(8 * MIB, 0);
        fa.fail_nth(Some(2));
        let a = fa.alloc_huge(Zone::Normal).unwrap();
        assert_eq!(
            fa.alloc_huge(Zone::Normal),
            Err(FrameError::OutOfFrames {
                zone: Zone::Normal,
                injected: true
            })
        );
        let b = fa.alloc_huge(Zone::Normal).unwrap();
        fa.fail_after(Some(0));
        assert!(fa.alloc_huge_zeroed(Zone::Normal).is_err());
        fa.fail_after(None);
        assert_eq!(fa.stats().used, 1024);
        assert_eq!(fa.stats().failed, 2);
        fa.free_huge(a).unwrap();
        fa.free_huge(b).unwrap();
        conserved(&fa);
    }

    #[test]
    fn single_frames_break_a_run_only_when_nothing_else_is_left() {
        let fa = allocator(2 * MIB, 0);
        let r = fa.alloc_huge(Zone::Normal).unwrap();
        assert!(fa.alloc(Zone::Normal).is_err());
        fa.free_huge(r).unwrap();
        assert_eq!(fa.free_runs(), 1);
        let f = fa.alloc(Zone::Normal).unwrap();
        assert_eq!(fa.free_runs(), 0);
        assert!(fa.alloc_huge(Zone::Normal).is_err());
        fa.free(f).unwrap();
        conserved(&fa);
    }

    #[test]
    fn dma32_runs_stay_below_4_gib() {
        // 6 MiB straddling 4 GiB: 2 MiB below (one run), 4 MiB above (two runs).
        let fa = allocator(6 * MIB, (1 << 32) - 2 * MIB);
        let low = fa.alloc_huge(Zone::Dma32).unwrap();
        assert_eq!(low.start_address().as_u64(), (1 << 32) - 2 * MIB);
        assert!(fa.alloc_huge(Zone::Dma32).is_err());
        let high = fa.alloc_huge(Zone::Normal).unwrap();
        assert!(high.start_address().as_u64() >= 1 << 32);
        fa.free_huge(low).unwrap();
        fa.free_huge(high).unwrap();
        conserved(&fa);
    }
}
