//! [`FreeBatch`]: frames freed one at a time as a walk finds them, and released to this
//! CPU's cache a chunk at a time: the batching of Linux's `mmu_gather` and
//! `free_pages_and_swap_cache` (mm/mmu_gather.c, mm/swap_state.c), which `unmap_and_free`
//! uses so that a cleared PTE's frame goes straight from the walk to the batch (no list of
//! frames between them, no second pass).
//!
//! What it guarantees is [`FrameAllocator::free_bulk`]'s contract: each frame put loses one
//! reference at once; the frames whose last reference went are released, at most
//! [`RELEASE_CHUNK`] per CPU-cache lock section, in the order they were put; every frame is
//! processed even after a refusal, and the first refusal is what [`FreeBatch::finish`]
//! returns. Dropping a batch releases what it still holds (nothing is leaked if the caller
//! unwinds before `finish`).

use super::pcp::Tagged;
use super::{FrameAllocator, FrameError, RELEASE_CHUNK};
use crate::page::{PAGE_SIZE, PhysFrame, Size4KiB};
use crate::platform::Platform;

/// A batch of frames being freed (see the module documentation).
pub(crate) struct FreeBatch<'a, P: Platform> {
    frames: &'a FrameAllocator<P>,
    /// Drop the last reference with a load and a store (see
    /// `FrameAllocator::drop_ref_exclusive`: the caller never races another free of the
    /// same frame).
    exclusive: bool,
    /// Frames whose last reference went, not yet released.
    buf: [Tagged; RELEASE_CHUNK],
    len: usize,
    /// Frames released so far.
    released: usize,
    first_err: Option<FrameError>,
}

impl<'a, P: Platform> FreeBatch<'a, P> {
    /// An empty batch over `frames`; `exclusive`: the caller frees these frames exclusively
    /// (no racing free of the same frame; see `FrameAllocator::drop_ref_exclusive`).
    #[inline]
    pub(crate) fn new(frames: &'a FrameAllocator<P>, exclusive: bool) -> Self {
        Self {
            frames,
            exclusive,
            buf: [Tagged::new(0, false); RELEASE_CHUNK],
            len: 0,
            released: 0,
            first_err: None,
        }
    }

    /// Drop one reference to the frame with index `i` (in the arena, checked by the caller).
    #[inline(always)]
    fn put_index(&mut self, i: u64) {
        let dropped = if self.exclusive {
            self.frames.drop_ref_exclusive(i)
        } else {
            self.frames.drop_ref(i)
        };
        match dropped {
            Ok(true) => {
                self.buf[self.len] = Tagged::new(i, false);
                self.len += 1;
                if self.len == RELEASE_CHUNK {
                    self.flush();
                }
            }
            Ok(false) => {}
            Err(e) => {
                self.first_err.get_or_insert(e);
            }
        }
    }

    /// Drop one reference to `frame`; a frame outside the arena is refused
    /// ([`FrameError::NotOwned`], kept if it is the first refusal).
    #[inline]
    pub(crate) fn put(&mut self, frame: PhysFrame<Size4KiB>) {
        match self.frames.index(frame) {
            Ok(i) => self.put_index(i),
            Err(e) => {
                self.first_err.get_or_insert(e);
            }
        }
    }

    /// Drop one reference to each 4 KiB frame of the `size` bytes at `pa` (a leaf an unmap
    /// walk cleared) if they lie in the arena; memory outside it (device memory that
    /// `ioremap` or a raw mapping installed) is not the allocator's and is left alone.
    #[inline]
    pub(crate) fn put_leaf(&mut self, pa: u64, size: u64) {
        let Some(off) = pa.checked_sub(self.frames.base) else {
            return;
        };
        let (first, n) = (off / PAGE_SIZE, size / PAGE_SIZE);
        if first >= self.frames.nframes || n > self.frames.nframes - first {
            return;
        }
        for i in first..first + n {
            self.put_index(i);
        }
    }

    /// Release the frames held so far.
    #[inline]
    fn flush(&mut self) {
        self.frames.release(&self.buf[..self.len]);
        self.released += self.len;
        self.len = 0;
    }

    /// Release what is left; returns how many frames the batch released in all, or the
    /// first refusal (every other frame was still processed).
    #[inline]
    pub(crate) fn finish(mut self) -> Result<usize, FrameError> {
        self.flush();
        match self.first_err.take() {
            Some(e) => Err(e),
            None => Ok(self.released),
        }
    }
}

impl<P: Platform> Drop for FreeBatch<'_, P> {
    fn drop(&mut self) {
        // After `finish` this is empty; before it (an unwinding caller), the frames whose
        // last reference went must not be lost.
        self.flush();
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::super::tests::{allocator, assert_conserved, frame};
    use super::FreeBatch;
    use crate::addr::PhysAddr;
    use crate::frame::{FrameError, Zone};
    use crate::page::PAGE_SIZE;
    use alloc::sync::Arc;
    use alloc::vec::Vec;
    use std::thread;

    #[test]
    fn free_batch_drops_references_and_releases_on_drop() {
        let fa = allocator(200, 0x10_0000);
        let mut v = Vec::new();
        fa.alloc_bulk(150, Zone::Normal, &mut v).unwrap();
        fa.get(v[0]).unwrap();
        // More than one chunk, then dropped before `finish` (an unwinding caller): the frames
        // whose last reference went are released all the same, the shared one keeps its other
        // reference.
        {
            let mut b = FreeBatch::new(&fa, false);
            for &f in &v {
                b.put(f);
            }
        }
        assert_eq!(fa.refcount(v[0]), 1);
        assert_eq!((fa.stats().used, fa.stats().frees), (1, 149));
        assert_conserved(&fa);
        // A refusal is the first error, after every other frame was processed.
        let mut b = FreeBatch::new(&fa, false);
        b.put(v[1]);
        b.put(frame(0x1000));
        b.put(v[0]);
        assert_eq!(
            b.finish(),
            Err(FrameError::DoubleFree {
                frame: v[1].start_address()
            })
        );
        assert_eq!(fa.stats().used, 0);
        assert_conserved(&fa);
    }

    #[test]
    fn free_batch_leaves_release_the_arena_frames_only() {
        let base = 0x10_0000;
        let fa = allocator(64, base);
        let mut v = Vec::new();
        fa.alloc_bulk(64, Zone::Normal, &mut v).unwrap();
        v.sort_unstable();
        let mut b = FreeBatch::new(&fa, false);
        // A leaf of 8 frames, the first 8 of the arena.
        b.put_leaf(base, 8 * PAGE_SIZE);
        // Leaves outside the arena (below it, above it, straddling its end) are not the
        // allocator's: left alone, not refused.
        b.put_leaf(0, PAGE_SIZE);
        b.put_leaf(base + 64 * PAGE_SIZE, PAGE_SIZE);
        b.put_leaf(base + 60 * PAGE_SIZE, 8 * PAGE_SIZE);
        b.put_leaf(!(PAGE_SIZE - 1), PAGE_SIZE);
        // One 4 KiB leaf, the arena's last frame.
        b.put_leaf(base + 63 * PAGE_SIZE, PAGE_SIZE);
        assert_eq!(b.finish(), Ok(9));
        assert!(v[..8].iter().all(|&f| fa.refcount(f) == 0));
        assert!(v[8..63].iter().all(|&f| fa.refcount(f) == 1));
        assert_eq!(fa.refcount(v[63]), 0);
        assert_eq!(fa.stats().used, 55);
        fa.free_bulk(&v[8..63]).unwrap();
        assert_conserved(&fa);
    }

    #[test]
    fn exclusive_drops_race_other_holders_and_release_each_frame_once() {
        // Each frame has two references: one dropped through an exclusive batch (what vfree
        // does), the other with `free` by another thread at the same time (a remap's user
        // mapping going away). Whatever the interleaving, each frame is released exactly once.
        let n: u64 = if cfg!(miri) { 8 } else { 2_000 };
        for round in 0..if cfg!(miri) { 2 } else { 20 } {
            let fa = Arc::new(allocator(n, 0x10_0000));
            let mut v = Vec::new();
            fa.alloc_bulk(n as usize, Zone::Normal, &mut v).unwrap();
            for &f in &v {
                fa.get(f).unwrap();
            }
            let other = {
                let (fa, v) = (Arc::clone(&fa), v.clone());
                thread::spawn(move || {
                    crate::cpu::set_this_cpu(1);
                    let order: Vec<_> = if round % 2 == 0 {
                        v.into_iter().rev().collect()
                    } else {
                        v
                    };
                    order
                        .into_iter()
                        .filter(|&f| fa.free(f) == Ok(true))
                        .count()
                })
            };
            crate::cpu::set_this_cpu(0);
            let mut b = FreeBatch::new(&fa, true);
            for &f in &v {
                b.put(f);
            }
            let mine = b.finish().unwrap();
            let theirs = other.join().unwrap();
            assert_eq!(mine + theirs, n as usize, "round {round}");
            assert!(v.iter().all(|&f| fa.refcount(f) == 0));
            let s = fa.stats();
            assert_eq!((s.used, s.frees), (0, n));
            assert_conserved(&fa);
        }
    }

    #[test]
    fn free_exclusive_and_free_bulk_exclusive() {
        let fa = allocator(16, 0x10_0000);
        let mut v = Vec::new();
        fa.alloc_bulk(6, Zone::Normal, &mut v).unwrap();
        fa.get(v[1]).unwrap();
        // A sole reference goes, a shared one drops to 1.
        assert_eq!(fa.free_exclusive(v[0]), Ok(true));
        assert_eq!(fa.free_exclusive(v[1]), Ok(false));
        assert_eq!(fa.refcount(v[1]), 1);
        // Refused as `free` refuses: a sequential double free, a frame outside the arena.
        assert_eq!(
            fa.free_exclusive(v[0]),
            Err(FrameError::DoubleFree {
                frame: v[0].start_address()
            })
        );
        assert_eq!(
            fa.free_exclusive(frame(0x1000)),
            Err(FrameError::NotOwned {
                frame: PhysAddr::new(0x1000)
            })
        );
        // The bulk form: every frame processed, the first refusal returned.
        assert_eq!(
            fa.free_bulk_exclusive(&[v[1], v[2], frame(0x1000), v[3], v[0]]),
            Err(FrameError::NotOwned {
                frame: PhysAddr::new(0x1000)
            })
        );
        assert_eq!(fa.free_bulk_exclusive(&[v[4], v[5]]), Ok(2));
        let s = fa.stats();
        assert_eq!((s.used, s.frees), (0, 6));
        assert_conserved(&fa);
    }
}
