//! `vm_map_ram` / `vm_unmap_ram` / `vm_unmap_aliases`: the API of small caller-frame mappings.
//! Pieces of up to [`VMAP_MAX_ALLOC`] pages come from the vmap blocks (the `vmap_block` module),
//! larger requests get a `MAP_RAM` area of their own from the `Kva`.

use core::panic::Location;
use pagetable::platform::Platform;
use pagetable::{PAGE_SIZE, PageTableFlags, PhysFrame, VirtAddr};

use crate::error::VmallocError;
use crate::instance::Vmalloc;
use crate::kva::flags::VmFlags;
use crate::vmap_block::VMAP_MAX_ALLOC;

impl<P: Platform> Vmalloc<P> {
    /// `vm_map_ram(pages, node, prot)`: map `pages` (frames of this arena, owned by the
    /// caller) contiguously; release with [`Vmalloc::vm_unmap_ram`] and exactly the same
    /// count. No reference is taken on the frames. `node` ([`NUMA_NO_NODE`](crate::NUMA_NO_NODE)
    /// or a number) prefers a KVA shard for a new block or area.
    ///
    /// # How it works
    ///
    /// Up to [`VMAP_MAX_ALLOC`] (64) pages come from a *vmap block* (Linux's `vb_alloc`): one
    /// [`VMAP_BLOCK_SIZE`](crate::VMAP_BLOCK_SIZE) area of [`VMAP_BBMAP_BITS`](crate::VMAP_BBMAP_BITS) (1024) pages, aligned to its size, with
    /// no guard page and flags `MAP_RAM | UNLIST`, taken from the [`Kva`](crate::Kva) when the
    /// calling CPU's queue has no block with room (preferring shard `node`). The request is
    /// rounded up to a power of two and carved from the block by bumping its free offset:
    /// pieces are handed out in address order, each page at most once in the block's life. Two
    /// bitmaps record the start of every piece ever handed out and which pieces are live, so a
    /// bad `vm_unmap_ram` (wrong address, wrong count, second free) is a typed error that
    /// changes nothing.
    ///
    /// Freeing a piece (`vb_free`) only clears its PTEs and marks it dirty: the block's dirty
    /// count grows and its dirty range `[dirty_min, dirty_max)` grows to cover the piece;
    /// nothing is flushed and the piece is never handed out again. When a block is all dirty
    /// it leaves every list and its whole range goes to the `Kva`'s lazy list (`free_lazy`):
    /// the next purge flushes it before the range is reused. [`Vmalloc::vm_unmap_aliases`]
    /// flushes the dirty pieces of blocks still in use.
    ///
    /// Requests above [`VMAP_MAX_ALLOC`] pages get an ordinary `MAP_RAM` area of exactly
    /// `pages.len()` pages (no guard page), freed by the usual lazy path.
    ///
    /// Errors: an empty `pages` ([`VmallocError::InvalidSize`]), a frame of another arena
    /// ([`pagetable::FrameError::NotOwned`]), no VA space ([`VmallocError::NoSpace`] with
    /// the size of `pages`), or the map failing (the piece is then left dirty, as in Linux,
    /// or the area released).
    ///
    /// # Example
    ///
    /// ```
    /// # #[cfg(not(feature = "loom"))] {
    /// use pagetable::Zone;
    /// use vmalloc::{PAGE_KERNEL, Vmalloc, VmallocConfig, VmallocError};
    ///
    /// let vm = Vmalloc::new(VmallocConfig::small_heap(16 << 20))?;
    /// let frames = vm.frames();
    /// let pages = [
    ///     frames.alloc_zeroed(Zone::Normal)?,
    ///     frames.alloc_zeroed(Zone::Normal)?,
    ///     frames.alloc_zeroed(Zone::Normal)?,
    /// ];
    ///
    /// // 3 pages: a 4-page piece of this CPU's vmap block (a new block here).
    /// let va = vm.vm_map_ram(&pages, None, PAGE_KERNEL)?;
    /// assert_eq!(vm.stats().vmap_blocks, 1);
    /// assert_eq!(vm.vwrite(va + 4096, b"via the block"), 13);
    /// let mut back = [0u8; 13];
    /// frames.arena().read(pages[1].start_address(), &mut back)?;
    /// assert_eq!(&back, b"via the block");
    ///
    /// // Unmapping needs the same count (the error says which); the piece becomes dirty,
    /// // nothing is flushed yet.
    /// assert!(matches!(
    ///     vm.vm_unmap_ram(va, 4),
    ///     Err(VmallocError::WrongCount { count: 4, expected: 3, .. })
    /// ));
    /// vm.vm_unmap_ram(va, 3)?;
    /// assert!(vm.kernel_space().translate(va).is_none());
    /// let model = vm.tlb_model().unwrap();
    /// assert!(model.holds_any(va, va + 3 * 4096), "this CPU still caches the piece");
    ///
    /// // vm_unmap_aliases: the block (no live piece left) is retired, and ONE flush covers it.
    /// let flushes = vm.tlb().stats().flushes;
    /// vm.vm_unmap_aliases();
    /// assert_eq!(vm.tlb().stats().flushes, flushes + 1);
    /// assert!(!model.holds_any(va, va + 3 * 4096));
    /// assert_eq!(vm.stats().vmap_blocks, 0);
    ///
    /// // The frames were never the mapping's: the caller frees them.
    /// for f in pages {
    ///     frames.free(f)?;
    /// }
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn vm_map_ram(
        &self,
        pages: &[PhysFrame],
        node: impl Into<Option<usize>>,
        prot: PageTableFlags,
    ) -> Result<VirtAddr, VmallocError> {
        let v = self.v();
        let node = node.into();
        let count = pages.len();
        if count == 0 {
            return Err(VmallocError::InvalidSize { size: 0 });
        }
        if let Some(&f) = pages.iter().find(|&&f| !v.frames.owns(f)) {
            return Err(pagetable::FrameError::NotOwned {
                frame: f.start_address(),
            }
            .into());
        }
        if count <= VMAP_MAX_ALLOC {
            let addr = v.blocks.alloc(&v.kva, (v.start, v.end), count, node)?;
            let va = VirtAddr::new_truncate(addr);
            if let Err(e) = v.space.map(va, pages, prot) {
                // The piece becomes dirty and is never reused, as in Linux.
                let freed = v.blocks.free(&v.kva, &v.space, addr, count);
                debug_assert!(freed.is_ok(), "{freed:?}");
                return Err(e.into());
            }
            return Ok(va);
        }
        let size = count as u64 * PAGE_SIZE;
        let flags = VmFlags::MAP_RAM | VmFlags::NO_GUARD;
        let area = v.get_vm_area_node(
            size,
            PAGE_SIZE,
            flags,
            count,
            None,
            node,
            Location::caller(),
        )?;
        let va = VirtAddr::new_truncate(area.start);
        if let Err(e) = v.space.map(va, pages, prot) {
            v.drop_unused(area.start);
            return Err(e.into());
        }
        Ok(va)
    }

    /// `vm_unmap_ram(addr, count)`: unmap what [`Vmalloc::vm_map_ram`] mapped at `addr` with
    /// `count` pages (its example shows both). Frames are not freed. A piece of a vmap block
    /// is left dirty, its flush deferred to [`Vmalloc::vm_unmap_aliases`] or to the purge of
    /// its block; a larger mapping's area is freed lazily. Errors (nothing changed): not a
    /// live mapping start ([`VmallocError::NotAllocated`], [`VmallocError::NotStartOfArea`],
    /// [`VmallocError::DoubleFree`]), a count other than the one mapped, whatever its size
    /// ([`VmallocError::WrongCount`] with the mapped count in `expected`), another kind of
    /// area ([`VmallocError::WrongKind`]).
    pub fn vm_unmap_ram(&self, addr: VirtAddr, count: usize) -> Result<(), VmallocError> {
        let v = self.v();
        let a = addr.as_u64();
        if count == 0 {
            return Err(VmallocError::InvalidSize { size: 0 });
        }
        if a % PAGE_SIZE != 0 {
            return Err(VmallocError::Misaligned {
                addr: a,
                align: PAGE_SIZE,
            });
        }
        // A piece of a vmap block (whatever `count` says: a wrong one is reported with the
        // piece's real count), or a small count that can only name a piece.
        if count <= VMAP_MAX_ALLOC || v.blocks.holds(a) {
            return v.blocks.free(&v.kva, &v.space, a, count);
        }
        // Find, check and remove in ONE node-lock critical section: an area that another
        // thread frees or allocates at this address meanwhile is either checked here or not
        // touched at all.
        let removed = v.kva.remove_if(VirtAddr::new_truncate(a), |area| {
            let f = area.info.flags;
            if !f.contains(VmFlags::MAP_RAM) || f.contains(VmFlags::UNLIST) {
                return Err(VmallocError::WrongKind {
                    addr: a,
                    expected: VmFlags::MAP_RAM,
                    found: f,
                });
            }
            if area.info.nr_pages != count {
                return Err(VmallocError::WrongCount {
                    addr: a,
                    count,
                    expected: area.info.nr_pages,
                });
            }
            Ok(())
        })?;
        v.release(removed)
    }

    /// `vm_unmap_aliases()`: make sure no CPU holds a stale translation of any page this
    /// layer has unmapped (Linux's `_vm_unmap_aliases`).
    ///
    /// Under one mutex (Linux's `vmap_purge_lock`): every vmap block without a live piece but
    /// with free space left ("fragmented") is retired to the lazy list; the dirty ranges of
    /// the other blocks are collected (and reset) into ONE union range; then the `Kva`'s lazy
    /// areas are purged with ONE flush covering their union and the dirty union together
    /// ([`Kva::purge_range`](crate::Kva::purge_range), Linux's `__purge_vmap_area_lazy(start,
    /// end)`: the dirty union alone when nothing is lazy, no flush when nothing is dirty
    /// either). After it returns, no CPU holds a translation of a page this layer unmapped
    /// before the call. May wait for a purge in progress.
    pub fn vm_unmap_aliases(&self) {
        let v = self.v();
        v.blocks.unmap_aliases(&v.kva);
    }
}
