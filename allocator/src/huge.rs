//! Huge vmalloc (Linux 5.13+): `vmalloc_huge` and `VM_ALLOW_HUGE_VMAP`, areas mapped with
//! 2 MiB leaves when the frames allow, 4 KiB pages otherwise.
//!
//! # How it works
//!
//! What users rely on is in [`Vmalloc::vmalloc_huge`]. For maintainers: `Inner::try_huge`
//! is the first attempt of `__vmalloc_node_range` when the caller allows huge mappings and
//! asks for at least 2 MiB: a 2 MiB-aligned area of the size rounded up to 2 MiB (plus the
//! guard page), its empty leaf tables freed (`clean_up`: the range is fresh from the KVA
//! allocator, flushed since its last use, and ours alone), one 2 MiB run per 2 MiB from the
//! frame allocator, one [`AddressSpace::map_huge`](pagetable::AddressSpace::map_huge) call.
//! Any failure (no aligned VA, no run, no table) undoes that attempt completely and answers
//! `None`: the caller then takes the 4 KiB path with the original size and alignment, as
//! Linux falls back to `PAGE_SHIFT`.
//!
//! # Invariants
//!
//! * An area flagged [`VmFlags::HUGE`] is mapped with 2 MiB leaves only, its runs owned by
//!   its leaves; `vfree` hands each leaf's run back whole
//!   ([`FrameAllocator::free_huge`](pagetable::FrameAllocator::free_huge)).
//! * Its lazy free and its purge are those of any area: the purge's one flush covers the
//!   area's whole range, so every 2 MiB translation of it is dropped before the range is
//!   reused.
//!
//! # Locking
//!
//! None of its own (as the `valloc` module).

#[allow(unused_imports)]
use crate::prelude::*;
use core::panic::Location;
use pagetable::platform::Platform;
use pagetable::{PAGE_SIZE, PhysFrame, Size2MiB, VirtAddr, Zone};

use crate::error::VmallocError;
use crate::instance::{Inner, Vmalloc};
use crate::kva::area::AreaInfo;
use crate::kva::flags::VmFlags;
use crate::valloc::{Gfp, PAGE_KERNEL, PMD_SIZE, Request, area_flags};

impl<P: Platform> Vmalloc<P> {
    /// `vmalloc_huge(size, gfp)` (Linux 5.13+): [`Vmalloc::vmalloc`] that may map with 2 MiB
    /// leaves (`__vmalloc_node_range` with `VM_ALLOW_HUGE_VMAP`).
    ///
    /// From 2 MiB up, as Linux does on x86_64: the size is rounded up to a multiple of
    /// 2 MiB, the area (plus its guard page) is 2 MiB aligned, and each 2 MiB of it is one
    /// 2 MiB run of contiguous frames mapped by one 2 MiB leaf: one page-table entry and one
    /// TLB entry where 4 KiB pages need 512 of each, and no leaf table at all. When the
    /// frame allocator has no 2 MiB run left (or the aligned VA or a table cannot be had),
    /// the attempt is undone and the area is made of 4 KiB pages with the size asked for, as
    /// Linux falls back. Below 2 MiB it is [`Vmalloc::vmalloc`] with `gfp`.
    ///
    /// What follows is as for any `vmalloc` area: `vmallocinfo` shows it as `vmalloc` with
    /// its 4 KiB page count (`pages=512` per 2 MiB: Linux prints no huge marker),
    /// [`Vmalloc::vfree`] unmaps it and gives each run back whole, the lazy purge's one
    /// flush covers its range (so no 2 MiB translation survives the reuse of the range),
    /// [`Vmalloc::vread`] / [`Vmalloc::vwrite`] go through the TLB's 2 MiB entries, and
    /// [`Vmalloc::vmalloc_to_page`] answers the 4 KiB frame inside the run.
    ///
    /// Errors as for [`Vmalloc::vmalloc`].
    #[track_caller]
    pub fn vmalloc_huge(&self, size: u64, gfp: Gfp) -> Result<VirtAddr, VmallocError> {
        let r = self.req(
            size,
            gfp,
            PAGE_KERNEL,
            VmFlags::ALLOW_HUGE_VMAP,
            Location::caller(),
        );
        self.v().vmalloc_area(&r)
    }
}

impl<P: Platform> Inner<P> {
    /// The 2 MiB attempt of `__vmalloc_node_range` (see the module documentation): the area's
    /// start, or `None` (nothing left behind) for the 4 KiB path.
    pub(crate) fn try_huge(&self, r: &Request, zone: Zone) -> Option<VirtAddr> {
        let huge_size = r.size.checked_next_multiple_of(PMD_SIZE)?;
        let runs = usize::try_from(huge_size / PMD_SIZE).ok()?;
        let nr_pages = usize::try_from(huge_size / PAGE_SIZE).ok()?;
        let guard = if r.flags.contains(VmFlags::NO_GUARD) {
            0
        } else {
            PAGE_SIZE
        };
        let area_size = huge_size.checked_add(guard)?;
        let align = r.align.max(PMD_SIZE);
        let mut list: Vec<PhysFrame<Size2MiB>> = Vec::new();
        list.try_reserve_exact(runs).ok()?;
        let info = AreaInfo {
            flags: area_flags(r, zone, nr_pages) | VmFlags::HUGE,
            nr_pages,
            caller: r.caller,
            phys_addr: None,
        };
        let va = self
            .kva
            .alloc(area_size, align, r.start, r.end, r.node, info)
            .ok()?;
        // Leaf tables left empty by earlier small areas would force 4 KiB leaves: the range
        // is ours and was flushed since its last use, so they can go.
        let _ = self.space.clean_up(va, huge_size);
        let zero = r.gfp.contains(Gfp::ZERO);
        for _ in 0..runs {
            let run = if zero {
                self.frames.alloc_huge_zeroed(zone)
            } else {
                self.frames.alloc_huge(zone)
            };
            match run {
                Ok(run) => list.push(run),
                Err(_) => break,
            }
        }
        if list.len() == runs && self.space.map_huge(va, &list, r.prot).is_ok() {
            return Some(va);
        }
        for &run in &list {
            let freed = self.frames.free_huge(run);
            debug_assert!(freed.is_ok(), "{freed:?}");
        }
        // Nothing mapped (the map is all or nothing): straight back, no flush.
        self.drop_unused(va.as_u64());
        None
    }
}
