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
