//! `__vmalloc_node_range` (every allocation of the vmalloc family ends here; the short forms
//! are in the `family` module), `vfree` and `vfree_atomic`, plus the release path shared by
//! every kind of area.
//!
//! # How it works
//!
//! What users rely on is in [`Vmalloc::vmalloc_node_range`] (every allocation of the family
//! goes through it) and [`Vmalloc::vfree`]. For maintainers: `Inner::vmalloc_area` is
//! `__vmalloc_node_range` proper, `Inner::vfree_now` the free, `Inner::release` the release
//! path shared by every kind of area.
//!
//! # Invariants
//!
//! * The frames of an `ALLOC` area are referenced only by its PTEs: `vfree` frees exactly the
//!   frames it unmaps.
//! * A VA range goes back to the `Kva` through `free_unused` only if no PTE of it was ever
//!   written (failed setups); otherwise lazily, after its PTEs are cleared (`free_lazy`, or
//!   the lazy queueing of `Kva::remove_if_unmap` for a small area).
//!
//! # Locking
//!
//! No lock of this module: the `Kva` locks its shards and CPU slots, the frame allocator its
//! caches, and page-table updates are lock-free under the ownership rule (only the owner of
//! an area maps or unmaps inside it). `vfree` of a small area clears its PTEs inside the
//! `Kva`'s node-lock section (`Kva::remove_if_unmap`) and frees the frames after it: no
//! frame operation under a `Kva` lock.

#[allow(unused_imports)]
use crate::prelude::*;
use core::panic::Location;
use pagetable::platform::Platform;

use pagetable::{FrameError, Zone};
use pagetable::{PAGE_SIZE, PageTableFlags, PhysAddr, PhysFrame, VirtAddr};

use crate::error::{VmallocError, alloc_error};
use crate::instance::{Inner, Vmalloc};
use crate::kva::area::{AreaInfo, RemovedArea, VmArea};
use crate::kva::flags::VmFlags;

bitflags::bitflags! {
    /// Page-allocator flags of the vmalloc family (the part of Linux's `gfp_t` that matters
    /// here).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Gfp: u32 {
        /// Zero the pages (`__GFP_ZERO`).
        const ZERO = 1 << 0;
        /// Take pages below 4 GiB physical (`GFP_DMA32`).
        const DMA32 = 1 << 1;
    }
}

impl Gfp {
    /// `GFP_KERNEL`: any page, contents unspecified.
    pub const KERNEL: Gfp = Gfp::empty();
}

/// x86_64's `PAGE_KERNEL`: present, writable, global, non-executable (accessed and dirty
/// preset, as Linux does for kernel mappings).
pub const PAGE_KERNEL: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::ACCESSED)
    .union(PageTableFlags::DIRTY)
    .union(PageTableFlags::GLOBAL)
    .union(PageTableFlags::NO_EXECUTE);

/// `PAGE_KERNEL_EXEC`: [`PAGE_KERNEL`] without `NO_EXECUTE`.
pub const PAGE_KERNEL_EXEC: PageTableFlags = PAGE_KERNEL.difference(PageTableFlags::NO_EXECUTE);

/// `PAGE_KERNEL_RO`: [`PAGE_KERNEL`] without `WRITABLE`.
pub const PAGE_KERNEL_RO: PageTableFlags = PAGE_KERNEL.difference(PageTableFlags::WRITABLE);

/// `PAGE_KERNEL_IO` as `ioremap` uses it: [`PAGE_KERNEL`] with caching disabled.
pub const PAGE_KERNEL_IO: PageTableFlags = PAGE_KERNEL.union(PageTableFlags::NO_CACHE);

/// Largest area (in pages) whose frame list lives on the stack, and whose frames are
/// allocated and freed one by one through the CPU's frame cache.
///
/// Why 16: 16 frames are 128 bytes of stack, affordable in any caller (kernel stacks are
/// 16 KiB), and every `vmalloc` of up to 64 KiB then allocates nothing on the heap. Above it
/// the heap list is one allocation shared by 17 or more frames, which come in one bulk call
/// (and go back in batches through `unmap_and_free`).
pub const STACK_FRAMES: usize = 16;

/// The flags a caller may pass to [`Vmalloc::vmalloc_node_range`]; every other one names
/// another kind of area or is the library's own ([`VmFlags::INTERNAL`]).
const VMALLOC_FLAGS: VmFlags = VmFlags::NO_GUARD
    .union(VmFlags::USERMAP)
    .union(VmFlags::ALLOW_HUGE_VMAP);

/// "No NUMA node preference" (Linux's `NUMA_NO_NODE`), for the `node` arguments, which take
/// an `Option<usize>` (a plain `usize` converts to `Some`).
pub const NUMA_NO_NODE: Option<usize> = None;

/// Bytes mapped by one 2 MiB leaf (x86_64's `PMD_SIZE`).
pub const PMD_SIZE: u64 = 2 << 20;

/// A frame value used to fill unused stack slots (never mapped).
const NO_FRAME: PhysFrame = PhysFrame::containing_address(PhysAddr::zero());

/// `size` in whole pages (`InvalidSize` for 0 or overflow).
#[inline]
pub(crate) fn size_to_pages(size: u64) -> Result<u64, VmallocError> {
    if size == 0 {
        return Err(VmallocError::InvalidSize { size });
    }
    size.checked_next_multiple_of(PAGE_SIZE)
        .map(|s| s / PAGE_SIZE)
        .ok_or(VmallocError::InvalidSize { size })
}

/// The part of an area that may hold mappings: the area minus its guard page.
#[inline]
pub(crate) fn usable_end(area: &VmArea) -> u64 {
    if area.info.flags.contains(VmFlags::NO_GUARD) || area.end - area.start < PAGE_SIZE {
        area.end
    } else {
        area.end - PAGE_SIZE
    }
}

/// The flags of a fresh `vmalloc` area of `nr_pages` pages in `zone` for request `r`: the
/// caller's, plus what the library records (`ALLOC`; `DMA32`, `EXEC`, `ZEROED` as asked;
/// `VPAGES` when the page array would not fit in a page, as Linux 6.x then vmallocs it).
pub(crate) fn area_flags(r: &Request, zone: Zone, nr_pages: usize) -> VmFlags {
    let mut flags = r.flags | VmFlags::ALLOC;
    if zone == Zone::Dma32 {
        flags |= VmFlags::DMA32;
    }
    if !r.prot.contains(PageTableFlags::NO_EXECUTE) {
        flags |= VmFlags::EXEC;
    }
    if r.gfp.contains(Gfp::ZERO) {
        flags |= VmFlags::ZEROED;
    }
    // Linux's `__vmalloc_area_node`: a page array larger than a page is itself vmalloc'ed,
    // and vmallocinfo says `vpages`.
    if nr_pages.saturating_mul(core::mem::size_of::<u64>()) > PAGE_SIZE as usize {
        flags |= VmFlags::VPAGES;
    }
    flags
}

/// What a vmalloc-family call asks for (`__vmalloc_node_range`'s arguments).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request {
    pub(crate) size: u64,
    pub(crate) align: u64,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) gfp: Gfp,
    pub(crate) prot: PageTableFlags,
    pub(crate) flags: VmFlags,
    pub(crate) node: Option<usize>,
    pub(crate) caller: &'static Location<'static>,
}

impl<P: Platform> Vmalloc<P> {
    /// Linux's `__vmalloc_node_range`: `size` bytes aligned to `align` (a power of two; below
    /// a page means a page) inside `[start, end)` (clipped to the vmalloc range), frames per
    /// `gfp`, mapped with `prot` (`PRESENT` is added), with the extra `vm_flags`:
    /// [`VmFlags::NO_GUARD`], [`VmFlags::USERMAP`], [`VmFlags::ALLOW_HUGE_VMAP`] (2 MiB leaves
    /// where possible, see [`Vmalloc::vmalloc_huge`]). Any other flag names another kind of
    /// area or is one only the library sets ([`VmFlags::INTERNAL`]):
    /// [`VmallocError::InvalidFlags`] with the offending ones. `node` prefers a KVA shard (see
    /// [`Vmalloc::vmalloc_node`]).
    ///
    /// # How it works
    ///
    /// The size is rounded up to pages; the area is `pages + 1` pages (the guard page) unless
    /// `NO_GUARD`. The [`Kva`](crate::Kva) hands out the VA with the area's [`AreaInfo`]
    /// already set (`ALLOC`, `nr_pages`, the caller from `#[track_caller]`). Frames come from
    /// the [`FrameAllocator`](pagetable::FrameAllocator) in the requested zone (zeroed for
    /// [`Gfp::ZERO`]; never-touched frames are known zero and not written) and are mapped
    /// with ONE [`AddressSpace::map`](pagetable::AddressSpace::map) call, which walks each
    /// page-table page once. Up to 16 pages (the common case) the frame list lives on the
    /// stack and each frame comes from the CPU's frame cache: no heap allocation at all.
    /// Bigger areas get a heap frame list (Linux's `area->pages`) filled by one bulk
    /// allocation.
    ///
    /// All or nothing: the bulk allocation and the map call each either succeed or change
    /// nothing (the map undoes its own page tables), so on any failure the frames are freed
    /// and the VA goes straight back to the `Kva` (never mapped: no flush needed) before the
    /// typed error is returned. Nothing leaks, not even a page table.
    #[track_caller]
    #[allow(clippy::too_many_arguments)] // Linux's signature, argument for argument.
    pub fn vmalloc_node_range(
        &self,
        size: u64,
        align: u64,
        start: VirtAddr,
        end: VirtAddr,
        gfp: Gfp,
        prot: PageTableFlags,
        vm_flags: VmFlags,
        node: impl Into<Option<usize>>,
    ) -> Result<VirtAddr, VmallocError> {
        let bad = vm_flags - VMALLOC_FLAGS;
        if !bad.is_empty() {
            return Err(VmallocError::InvalidFlags { flags: bad });
        }
        let r = Request {
            size,
            align,
            start: start.as_u64(),
            end: end.as_u64(),
            gfp,
            prot,
            flags: vm_flags,
            node: node.into(),
            caller: Location::caller(),
        };
        self.v().vmalloc_area(&r)
    }

    /// `vfree(addr)`: release an area from the vmalloc family. A null address is a no-op.
    ///
    /// In one node-lock critical section the area is looked up, checked to be the start of a
    /// live `vmalloc` area and taken out of the busy lookup; for an area of up to 16 pages
    /// (no 2 MiB leaf) its PTEs are cleared and its range queued lazily in that same section,
    /// and its frames handed back to the frame allocator after it. A larger area is unmapped
    /// after the section (one walk, frames handed back as their PTEs are cleared, no
    /// allocation) and then freed with [`Kva::free_lazy`](crate::Kva::free_lazy). NO TLB
    /// flush here: the VA is reused only after a purge flushed the union of thousands of
    /// such areas at once.
    ///
    /// Errors (nothing is changed): [`VmallocError::NotStartOfArea`] (inside an area),
    /// [`VmallocError::DoubleFree`] (freed already, not purged yet),
    /// [`VmallocError::NotAllocated`], [`VmallocError::WrongKind`] (a `vmap`, `ioremap`,
    /// `vm_map_ram`, reserved area or thread stack: the message names its release call).
    #[inline]
    pub fn vfree(&self, addr: VirtAddr) -> Result<(), VmallocError> {
        if addr.is_null() {
            return Ok(());
        }
        self.v().vfree_now(addr.as_u64())
    }

    /// `vfree_atomic(addr)`: queue the free on this CPU's deferred list; it runs later (by a
    /// purge worker, an explicit purge, an allocation that runs out of space, or in
    /// `PurgeMode::Synchronous` the next allocation) exactly as [`Vmalloc::vfree`]. Errors
    /// cannot be returned that late: they are counted in
    /// [`VmallocStats::deferred_errors`](crate::info::VmallocStats).
    ///
    /// What it costs the caller (Linux's contract is "does not sleep"): no allocator lock, no
    /// page-table walk, no purge, no flush. It does allocate one 16-byte node from the host
    /// heap (Linux instead reuses the first word of the freed area, which a library that must
    /// refuse bad addresses cannot write to before checking them), and when its CPU's list
    /// was empty it takes the purge workers' scheduler mutex for a few instructions to post
    /// the wake-up (as Linux's `schedule_work` takes its pool's spinlock).
    pub fn vfree_atomic(&self, addr: VirtAddr) {
        if !addr.is_null() {
            self.v().kva.defer(addr);
        }
    }

    /// The `vfree_atomic` frees that failed when they ran, with their address and error, in
    /// the order they failed; taking them empties the list. At most
    /// [`VFREE_ATOMIC_ERRORS_KEPT`](crate::VFREE_ATOMIC_ERRORS_KEPT) are kept between two
    /// calls; [`VmallocStats::deferred_errors`](crate::VmallocStats) counts them all. Frees
    /// still queued have not run yet: [`Vmalloc::purge_vmap_area_lazy`] runs them first.
    pub fn take_vfree_atomic_errors(&self) -> Vec<(VirtAddr, VmallocError)> {
        let mut log = self.v().deferred_log.lock();
        core::mem::take(&mut *log)
            .into_iter()
            .map(|(a, e)| (VirtAddr::new_truncate(a), e))
            .collect()
    }
}

impl<P: Platform> Inner<P> {
    /// `__vmalloc_node_range` proper (see [`Vmalloc::vmalloc_node_range`]).
    pub(crate) fn vmalloc_area(&self, r: &Request) -> Result<VirtAddr, VmallocError> {
        let pages = size_to_pages(r.size)?;
        let guard = if r.flags.contains(VmFlags::NO_GUARD) {
            0
        } else {
            PAGE_SIZE
        };
        let area_size = (pages * PAGE_SIZE)
            .checked_add(guard)
            .ok_or(VmallocError::InvalidSize { size: r.size })?;
        let nr_pages =
            usize::try_from(pages).map_err(|_| VmallocError::InvalidSize { size: r.size })?;
        let zone = if r.gfp.contains(Gfp::DMA32) {
            Zone::Dma32
        } else {
            Zone::Normal
        };
        // Linux: `(size >> PAGE_SHIFT) > totalram_pages()` fails at once. Checked before any
        // VA or bookkeeping is reserved, so an absurd size costs O(1).
        if pages > self.frames.arena().frames() {
            return Err(VmallocError::OutOfMemory {
                size: r.size,
                source: FrameError::OutOfFrames {
                    zone,
                    injected: false,
                },
            });
        }
        // Linux 5.13+: 2 MiB leaves first when the caller allows them, else 4 KiB pages.
        if r.flags.contains(VmFlags::ALLOW_HUGE_VMAP) && r.size >= PMD_SIZE {
            if let Some(va) = self.try_huge(r, zone) {
                return Ok(va);
            }
        }
        let info = AreaInfo {
            flags: area_flags(r, zone, nr_pages),
            nr_pages,
            caller: r.caller,
            phys_addr: None,
        };
        let va = self
            .kva
            .alloc(area_size, r.align, r.start, r.end, r.node, info)
            .map_err(|e| alloc_error(e, r.size, area_size))?;
        let addr = va.as_u64();
        match self.fill_area(va, pages, zone, r) {
            Ok(()) => Ok(va),
            Err(e) => {
                // Nothing was mapped: the VA goes straight back, no flush needed.
                self.drop_unused(addr);
                Err(e)
            }
        }
    }

    /// Allocate and map the frames of a fresh area, all or nothing: on error every frame is
    /// already freed and nothing is mapped (a map call undoes its own page tables).
    #[inline]
    pub(crate) fn fill_area(
        &self,
        va: VirtAddr,
        pages: u64,
        zone: Zone,
        r: &Request,
    ) -> Result<(), VmallocError> {
        let zero = r.gfp.contains(Gfp::ZERO);
        let oom = |e| VmallocError::OutOfMemory {
            size: r.size,
            source: e,
        };
        if pages <= STACK_FRAMES as u64 {
            let n = pages as usize;
            let mut buf = [NO_FRAME; STACK_FRAMES];
            for i in 0..n {
                let f = if zero {
                    self.frames.alloc_zeroed(zone)
                } else {
                    self.frames.alloc(zone)
                };
                match f {
                    Ok(f) => buf[i] = f,
                    Err(e) => {
                        self.free_frames(&buf[..i]);
                        return Err(oom(e));
                    }
                }
            }
            if let Err(e) = self.space.map(va, &buf[..n], r.prot) {
                self.free_frames(&buf[..n]);
                return Err(e.into());
            }
            return Ok(());
        }
        // The frame list on the heap (Linux's `area->pages`), filled in one bulk allocation
        // and mapped in one call: one walk per page-table page.
        let n = usize::try_from(pages).map_err(|_| VmallocError::InvalidSize { size: r.size })?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(n).map_err(|_| {
            oom(FrameError::OutOfFrames {
                zone,
                injected: false,
            })
        })?;
        let got = if zero {
            self.frames.alloc_bulk_zeroed(n, zone, &mut buf)
        } else {
            self.frames.alloc_bulk(n, zone, &mut buf)
        };
        got.map_err(oom)?;
        if let Err(e) = self.space.map(va, &buf, r.prot) {
            self.free_frames(&buf);
            return Err(e.into());
        }
        Ok(())
    }

    /// Drop our references to `frames` (all ours: the error is impossible and ignored).
    #[inline]
    fn free_frames(&self, frames: &[PhysFrame]) {
        if !frames.is_empty() {
            let r = self.frames.free_bulk(frames);
            debug_assert!(r.is_ok(), "freeing our own frames failed: {r:?}");
        }
    }

    /// Release the area starting at `addr` if `ok(flags)`, else `WrongKind` with `expected`.
    ///
    /// A small area (at most [`STACK_FRAMES`] pages to unmap, no 2 MiB leaf) is looked up,
    /// checked, removed, unmapped and queued lazily in ONE node-lock critical section
    /// ([`Kva::remove_if_unmap`](crate::Kva)); its frames are collected on the stack as
    /// their entries are cleared and freed after the unlock (no frame operation under a KVA
    /// lock). A larger one is removed in that section and unmapped and freed lazily after
    /// it ([`Inner::release`]), so a long unmap never holds the node lock.
    pub(crate) fn free_kind(
        &self,
        addr: u64,
        expected: VmFlags,
        ok: fn(VmFlags) -> bool,
    ) -> Result<(), VmallocError> {
        let mut buf = [NO_FRAME; STACK_FRAMES];
        let mut n = 0;
        let removed = self.kva.remove_if_unmap(
            VirtAddr::new_truncate(addr),
            |a| {
                if ok(a.info.flags) {
                    Ok(())
                } else {
                    Err(VmallocError::WrongKind {
                        addr,
                        expected,
                        found: a.info.flags,
                    })
                }
            },
            |a| {
                let len = usable_end(a) - a.start;
                if len > STACK_FRAMES as u64 * PAGE_SIZE || a.info.flags.contains(VmFlags::HUGE) {
                    return None;
                }
                let va = VirtAddr::new_truncate(a.start);
                let owned = a.info.flags.contains(VmFlags::ALLOC);
                // At most 16 pages: no huge leaf can be cleared (one reaching outside the
                // range is refused before anything changes), so at most 16 frames come back.
                let r = self.space.unmap(va, len, |pa, size| {
                    if !owned {
                        return;
                    }
                    for off in (0..size).step_by(PAGE_SIZE as usize) {
                        if let Some(slot) = buf.get_mut(n) {
                            *slot = PhysFrame::containing_address(pa + off);
                            n += 1;
                        }
                    }
                });
                Some(r.map(|f| f.pages() as usize).map_err(VmallocError::from))
            },
        );
        // Frames whose entries were cleared, after the node lock is released (refused only
        // for a frame outside the arena: never ours). The area is out of the busy index, so
        // nothing else frees them: sole references go without a locked instruction. One
        // frame by itself; more in one CPU-cache lock section.
        match n {
            0 => {}
            1 => {
                let _ = self.frames.free_exclusive(buf[0]);
            }
            _ => {
                let _ = self.frames.free_bulk_exclusive(&buf[..n]);
            }
        }
        match removed? {
            None => Ok(()),
            Some(removed) => self.release(removed),
        }
    }

    /// `vfree` (also run for deferred frees). Thread stacks are refused: they go back through
    /// `free_thread_stack` (which may keep them in a per-CPU cache).
    #[inline]
    pub(crate) fn vfree_now(&self, addr: u64) -> Result<(), VmallocError> {
        self.free_kind(addr, VmFlags::ALLOC, |f| {
            f.contains(VmFlags::ALLOC) && !f.contains(VmFlags::STACK)
        })
    }

    /// Unmap `[va, va + len)` of an `ALLOC` area with `flags` and about `nr_pages` pages,
    /// freeing the frames it owns: each 2 MiB leaf's run whole ([`VmFlags::HUGE`]), few
    /// frames one by one as their PTE is cleared (no batch buffer), many in batches.
    /// `removed`: the area is out of the busy index (this thread removed it, so no other
    /// call can reach its frames: they are freed with `unmap_and_free_exclusive`, no locked
    /// instruction per page); otherwise (a `vrealloc` shrink of a live area) every drop is a
    /// compare-exchange, so racing misuse is refused rather than freeing a frame twice.
    pub(crate) fn unmap_owned(
        &self,
        va: VirtAddr,
        len: u64,
        flags: VmFlags,
        nr_pages: usize,
        removed: bool,
    ) -> Result<pagetable::FlushRange, pagetable::MapError> {
        let frames = &self.frames;
        if flags.contains(VmFlags::HUGE) {
            self.space.unmap(va, len, |pa, size| {
                if size == PMD_SIZE {
                    let _ = frames.free_huge(PhysFrame::containing_address(pa));
                } else {
                    for off in (0..size).step_by(PAGE_SIZE as usize) {
                        let _ = frames.free(PhysFrame::containing_address(pa + off));
                    }
                }
            })
        } else if nr_pages <= STACK_FRAMES {
            self.space.unmap(va, len, |pa, size| {
                for off in (0..size).step_by(PAGE_SIZE as usize) {
                    // Refused only for a frame outside the arena (never ours): skipped, as
                    // `unmap_and_free` does.
                    let f = PhysFrame::containing_address(pa + off);
                    let _ = if removed {
                        frames.free_exclusive(f)
                    } else {
                        frames.free(f)
                    };
                }
            })
        } else if removed {
            self.space.unmap_and_free_exclusive(va, len)
        } else {
            self.space.unmap_and_free(va, len)
        }
    }

    /// Unmap a removed area by its kind (frames freed for `ALLOC`, kept otherwise) and free
    /// its VA lazily.
    pub(crate) fn release(&self, removed: RemovedArea) -> Result<(), VmallocError> {
        let area = *removed.area();
        let va = VirtAddr::new_truncate(area.start);
        let len = usable_end(&area) - area.start;
        let unmapped = if area.info.flags.contains(VmFlags::ALLOC) {
            self.unmap_owned(va, len, area.info.flags, area.info.nr_pages, true)
        } else {
            self.space.unmap(va, len, |_, _| {})
        };
        match unmapped {
            Ok(flush) => {
                self.kva.free_lazy(removed, flush.pages() as usize);
                Ok(())
            }
            Err(e) => {
                // Cannot happen for our own areas; never recycle a range whose PTEs may live.
                drop(removed);
                Err(e.into())
            }
        }
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;
    use crate::instance::VmallocConfig;

    fn vm() -> Vmalloc {
        Vmalloc::new(VmallocConfig::small_heap(8 << 20)).unwrap()
    }

    #[test]
    fn sizes_round_to_pages() {
        assert_eq!(size_to_pages(1).unwrap(), 1);
        assert_eq!(size_to_pages(PAGE_SIZE).unwrap(), 1);
        assert_eq!(size_to_pages(PAGE_SIZE + 1).unwrap(), 2);
        assert!(matches!(
            size_to_pages(0),
            Err(VmallocError::InvalidSize { size: 0 })
        ));
        assert!(matches!(
            size_to_pages(u64::MAX),
            Err(VmallocError::InvalidSize { .. })
        ));
    }

    #[test]
    fn prot_constants_are_x86() {
        assert!(PAGE_KERNEL.contains(PageTableFlags::NO_EXECUTE | PageTableFlags::WRITABLE));
        assert!(!PAGE_KERNEL_EXEC.contains(PageTableFlags::NO_EXECUTE));
        assert!(!PAGE_KERNEL_RO.contains(PageTableFlags::WRITABLE));
        assert!(PAGE_KERNEL_IO.contains(PageTableFlags::NO_CACHE));
    }

    #[test]
    fn one_page_round_trip() {
        let vm = vm();
        let before = vm.frame_stats().used;
        let a = vm.vmalloc(100).unwrap();
        let area = vm.find_vm_area(a).unwrap();
        assert_eq!(area.size(), 2 * PAGE_SIZE);
        assert_eq!(area.info.nr_pages, 1);
        assert!(area.info.caller.file().ends_with("alloc.rs"));
        let t = vm.kernel_space().translate(a).unwrap();
        assert_eq!(t.flags & PAGE_KERNEL, PAGE_KERNEL);
        assert!(
            vm.kernel_space().translate(a + PAGE_SIZE).is_none(),
            "guard page mapped"
        );
        vm.vfree(a).unwrap();
        assert!(vm.kernel_space().translate(a).is_none());
        vm.purge_vmap_area_lazy();
        // Page tables stay; the data frame is back.
        assert!(vm.frame_stats().used <= before + 3);
        assert_eq!(
            vm.vfree(a),
            Err(VmallocError::NotAllocated { addr: a.as_u64() })
        );
    }

    #[test]
    fn bulk_path_crosses_leaf_tables() {
        let vm = vm();
        let a = vm.vzalloc(700 * PAGE_SIZE).unwrap();
        let maps: Vec<_> = vm.kernel_space().mappings(a, 701 * PAGE_SIZE).collect();
        assert_eq!(maps.len(), 700);
        vm.vfree(a).unwrap();
        assert_eq!(vm.kernel_space().mappings(a, 701 * PAGE_SIZE).count(), 0);
    }

    #[test]
    fn bad_flags_are_refused() {
        let vm = vm();
        let (s, e) = vm.range();
        let r = vm.vmalloc_node_range(
            PAGE_SIZE,
            PAGE_SIZE,
            s,
            e,
            Gfp::KERNEL,
            PAGE_KERNEL,
            VmFlags::IOREMAP,
            None,
        );
        assert_eq!(
            r,
            Err(VmallocError::InvalidFlags {
                flags: VmFlags::IOREMAP
            })
        );
        // Flags only the library sets are refused too, and only they are reported.
        for internal in VmFlags::INTERNAL.iter() {
            let r = vm.vmalloc_node_range(
                PAGE_SIZE,
                PAGE_SIZE,
                s,
                e,
                Gfp::KERNEL,
                PAGE_KERNEL,
                internal | VmFlags::USERMAP,
                NUMA_NO_NODE,
            );
            assert_eq!(r, Err(VmallocError::InvalidFlags { flags: internal }));
        }
        assert_eq!(vm.stats().nr_areas, 0);
    }
}
