//! Unmapping that frees: [`AddressSpace::unmap_and_free`] and
//! [`AddressSpace::unmap_and_free_exclusive`], the unmap walk handing each cleared leaf's
//! frames straight to a frame-allocator batch (Linux's mmu_gather).

use super::{AddressSpace, MapError};
use crate::addr::VirtAddr;
use crate::frame::FreeBatch;
use crate::platform::Platform;
use crate::tlb::FlushRange;

impl<P: Platform> AddressSpace<P> {
    /// [`AddressSpace::unmap`] that drops one frame-allocator reference per 4 KiB frame of
    /// every leaf inside the arena (frames outside it, e.g. device memory, are left alone).
    /// If the allocator refuses a frame (not allocated: a caller bug), the unmap still
    /// completes and the first refusal is returned as [`MapError::Frame`].
    pub fn unmap_and_free(&self, va: VirtAddr, len: u64) -> Result<FlushRange, MapError> {
        self.unmap_and_drop(va, len, false)
    }

    /// [`AddressSpace::unmap_and_free`] for a caller that frees the range's frames
    /// exclusively: no other thread frees any of them at the same time unless it holds a
    /// reference of its own (what `vfree` guarantees for an area's frames: the area's
    /// removal from the busy index is exclusive). Each frame whose only reference is the
    /// mapping's is then released without a read-modify-write (a load and a store, see
    /// *Reference counts* in [`FrameAllocator`](crate::frame::FrameAllocator)); shared
    /// frames (COW, remapped) drop theirs as usual. A racing double free of such a frame is
    /// not refused here, as [`FrameAllocator::free`](crate::frame::FrameAllocator::free)
    /// would refuse it; a sequential one still is.
    pub fn unmap_and_free_exclusive(&self, va: VirtAddr, len: u64) -> Result<FlushRange, MapError> {
        self.unmap_and_drop(va, len, true)
    }

    /// The two `unmap_and_free`s.
    #[inline]
    fn unmap_and_drop(
        &self,
        va: VirtAddr,
        len: u64,
        exclusive: bool,
    ) -> Result<FlushRange, MapError> {
        // Each cleared leaf's frames go straight into the batch (Linux's mmu_gather), which
        // releases them to this CPU's cache 64 at a time.
        let mut batch = FreeBatch::new(&self.frames, exclusive);
        let flush = self.unmap(va, len, |pa, size| batch.put_leaf(pa.as_u64(), size))?;
        match batch.finish() {
            Ok(_) => Ok(flush),
            Err(e) => Err(MapError::Frame(e)),
        }
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::super::tests::{KB4, RW, data_frames, space, used, va};
    use crate::frame::{FrameError, Zone};
    use crate::mapper::MapError;

    #[test]
    fn unmap_and_free_returns_frames() {
        let (a, s) = space(64);
        let mut frames = Vec::new();
        for _ in 0..20 {
            frames.push(a.alloc(Zone::Normal).unwrap());
        }
        s.map(va(0x1000_0000), &frames, RW).unwrap();
        let before = used(&a);
        let _ = s.unmap_and_free(va(0x1000_0000), 20 * KB4).unwrap();
        assert_eq!(used(&a), before - 20);
        // A frame that is not allocated is reported, and the unmap still happens.
        s.map(va(0x1000_0000), &frames[..1], RW).unwrap();
        assert!(matches!(
            s.unmap_and_free(va(0x1000_0000), KB4),
            Err(MapError::Frame(_))
        ));
        assert!(s.translate(va(0x1000_0000)).is_none());
    }

    #[test]
    fn unmap_and_free_leaves_memory_outside_the_arena_alone() {
        let (a, s) = space(256);
        let mut frames = Vec::new();
        a.alloc_bulk(100, Zone::Normal, &mut frames).unwrap();
        let n = frames.len();
        // Arena frames, then device memory (above the arena), then arena frames again, across
        // more than one 64-frame chunk of the batch when the arena allows.
        let dev = data_frames(3, 0x9000_0000);
        let mut all = frames[..n / 2].to_vec();
        all.extend(&dev);
        all.extend(&frames[n / 2..]);
        s.map(va(0x1000_0000), &all, RW).unwrap();
        let before = used(&a);
        let flush = s
            .unmap_and_free(va(0x1000_0000), all.len() as u64 * KB4)
            .unwrap();
        assert_eq!(flush.pages(), all.len() as u64);
        assert_eq!(used(&a), before - n as u64);
        assert!(frames.iter().all(|&f| a.refcount(f) == 0));
        assert_eq!(s.rss(), 0);
    }

    #[test]
    fn unmap_and_free_exclusive_releases_sole_references_and_drops_shared_ones() {
        let (a, s) = space(256);
        let mut frames = Vec::new();
        a.alloc_bulk(100, Zone::Normal, &mut frames).unwrap();
        // Two frames shared (a second reference, as a remap or COW takes): they lose one.
        a.get(frames[3]).unwrap();
        a.get(frames[70]).unwrap();
        s.map(va(0x1000_0000), &frames, RW).unwrap();
        let before = used(&a);
        let flush = s
            .unmap_and_free_exclusive(va(0x1000_0000), 100 * KB4)
            .unwrap();
        assert_eq!(flush.pages(), 100);
        assert_eq!(used(&a), before - 98);
        assert_eq!((a.refcount(frames[3]), a.refcount(frames[70])), (1, 1));
        assert_eq!(frames.iter().filter(|&&f| a.refcount(f) == 0).count(), 98);
        // A frame with no reference left (a sequential double free) is still refused, and the
        // unmap still happens.
        s.map(va(0x1000_0000), &frames[..1], RW).unwrap();
        assert!(matches!(
            s.unmap_and_free_exclusive(va(0x1000_0000), KB4),
            Err(MapError::Frame(FrameError::DoubleFree { .. }))
        ));
        assert!(s.translate(va(0x1000_0000)).is_none());
        a.free_bulk(&[frames[3], frames[70]]).unwrap();
        assert_eq!(used(&a), before - 100);
    }
}
