//! `vmap` / `vunmap` (caller-owned frames mapped contiguously), `vmap_pfn` (page frame
//! numbers), `get_vm_area` / `alloc_vm_area` / `free_vm_area` (reservations) and
//! `find_vm_area`.
//!
//! # How it works
//!
//! Every call here goes through `Inner::get_vm_area_node` (Linux's `__get_vm_area_node`):
//! the size is rounded up to pages, a guard page is added unless `VmFlags::NO_GUARD`, an
//! `IOREMAP` area gets [`ioremap_align`], and the [`Kva`](crate::kva::Kva) allocates the range
//! with the area's info already set. What each public call does with it is in its own
//! documentation. Every release frees the VA lazily, like `vfree`.
//!
//! # Locking
//!
//! None of its own (see [`crate::valloc`]).

#[allow(unused_imports)]
use crate::prelude::*;
use core::panic::Location;
use pagetable::platform::Platform;

use pagetable::{PAGE_SHIFT, PAGE_SIZE, PageTableFlags, PhysAddr, PhysFrame, VirtAddr};

use crate::error::{VmallocError, check_flags};
use crate::instance::{Inner, Vmalloc};
use crate::kva::area::{AreaInfo, VmArea};
use crate::kva::flags::VmFlags;

/// Log2 of the largest alignment of an ioremap area: `7 + PAGE_SHIFT`, 128 pages (512 KiB).
///
/// Linux's default `IOREMAP_MAX_ORDER` (include/linux/vmalloc.h in 3.7, "maximum alignment
/// for ioremap() regions", which an architecture may override). An ioremap area is aligned to
/// its size rounded up to a power of two ([`ioremap_align`]); the cap bounds the VA that
/// alignment can leave unused before an area to less than 128 pages, whatever the size.
pub const IOREMAP_MAX_ORDER: u32 = 7 + PAGE_SHIFT;

/// The flags a caller may pass to [`Vmalloc::vmap`] (`VM_MAP` is added anyway).
const VMAP_FLAGS: VmFlags = VmFlags::MAP
    .union(VmFlags::USERMAP)
    .union(VmFlags::NO_GUARD);

/// The flags a caller may pass to [`Vmalloc::get_vm_area`]: a reservation's kind and
/// properties.
const GET_VM_AREA_FLAGS: VmFlags = VmFlags::IOREMAP
    .union(VmFlags::MAP)
    .union(VmFlags::USERMAP)
    .union(VmFlags::NO_GUARD);

/// The alignment of an `IOREMAP` area of `size` bytes: `size` rounded up to a power of two,
/// clamped to `[PAGE_SIZE, 1 << IOREMAP_MAX_ORDER]`.
pub fn ioremap_align(size: u64) -> u64 {
    // Above the clamp the rounding does not matter (and `next_power_of_two` would overflow
    // past 2^63): the largest alignment it is.
    let max = 1u64 << IOREMAP_MAX_ORDER;
    if size >= max {
        return max;
    }
    let order = size.max(1).next_power_of_two().trailing_zeros();
    1u64 << order.clamp(PAGE_SHIFT, IOREMAP_MAX_ORDER)
}

impl<P: Platform> Vmalloc<P> {
    /// `vmap(pages, flags, prot)`: map `pages` (frames of this instance's arena, owned by the
    /// caller) at consecutive addresses with `prot`, followed by a guard page. The area gets
    /// `flags | VM_MAP`; `flags` may hold [`VmFlags::MAP`], [`VmFlags::USERMAP`] and
    /// [`VmFlags::NO_GUARD`], anything else is [`VmallocError::InvalidFlags`]. No reference is
    /// taken on the frames: the caller keeps them alive until [`Vmalloc::vunmap`]. As in
    /// Linux 6.x (without `VM_MAP_PUT_PAGES`) the area records no page count, so its
    /// `vmallocinfo` line has no `pages=`.
    #[track_caller]
    pub fn vmap(
        &self,
        pages: &[PhysFrame],
        flags: VmFlags,
        prot: PageTableFlags,
    ) -> Result<VirtAddr, VmallocError> {
        let v = self.v();
        check_flags(flags, VMAP_FLAGS)?;
        if let Some(&f) = pages.iter().find(|&&f| !v.frames.owns(f)) {
            return Err(pagetable::FrameError::NotOwned {
                frame: f.start_address(),
            }
            .into());
        }
        let size = (pages.len() as u64)
            .checked_mul(PAGE_SIZE)
            .ok_or(VmallocError::InvalidSize { size: u64::MAX })?;
        let area = v.get_vm_area_node(
            size,
            PAGE_SIZE,
            flags | VmFlags::MAP,
            0,
            None,
            None,
            Location::caller(),
        )?;
        if let Err(e) = v.space.map(VirtAddr::new_truncate(area.start), pages, prot) {
            v.drop_unused(area.start);
            return Err(e.into());
        }
        Ok(VirtAddr::new_truncate(area.start))
    }

    /// `vunmap(addr)`: unmap a `vmap` or [`vmap_pfn`](Vmalloc::vmap_pfn) area (frames
    /// untouched) and free its VA lazily. Null is a no-op. Errors as for [`Vmalloc::vfree`];
    /// another kind of area is [`VmallocError::WrongKind`].
    pub fn vunmap(&self, addr: VirtAddr) -> Result<(), VmallocError> {
        if addr.is_null() {
            return Ok(());
        }
        self.v().free_kind(addr.as_u64(), VmFlags::MAP, |f| {
            f.intersects(VmFlags::MAP | VmFlags::PFNMAP) && !f.contains(VmFlags::ALLOC)
        })
    }

    /// `vmap_pfn(pfns, prot)` (Linux 5.10+): map the page frame numbers `pfns` (any physical
    /// frames below 2^52: device memory or RAM the caller manages without page structures)
    /// at consecutive addresses with `prot`, followed by a guard page. As in Linux the area
    /// is `VM_IOREMAP` (`vmallocinfo` says `ioremap`; [`Vmalloc::vread`] treats it as a hole)
    /// and records no page count; it is marked [`VmFlags::PFNMAP`] and released with
    /// [`Vmalloc::vunmap`] (or [`Vmalloc::free_vm_area`]). Nothing is taken on the frames.
    ///
    /// Errors: no pfn ([`VmallocError::InvalidSize`]), a pfn beyond 52 bits
    /// ([`VmallocError::InvalidRange`]), no VA space, or the map failing (out of frames for
    /// page tables); nothing is left behind.
    #[track_caller]
    pub fn vmap_pfn(&self, pfns: &[u64], prot: PageTableFlags) -> Result<VirtAddr, VmallocError> {
        let v = self.v();
        if pfns.is_empty() {
            return Err(VmallocError::InvalidSize { size: 0 });
        }
        let mut frames = Vec::new();
        frames
            .try_reserve_exact(pfns.len())
            .map_err(|_| VmallocError::InvalidSize { size: u64::MAX })?;
        for &pfn in pfns {
            let f = PhysFrame::from_number(pfn).map_err(|_| VmallocError::InvalidRange {
                start: pfn.saturating_mul(PAGE_SIZE),
                end: pfn.saturating_add(1).saturating_mul(PAGE_SIZE),
            })?;
            frames.push(f);
        }
        let size = (pfns.len() as u64)
            .checked_mul(PAGE_SIZE)
            .ok_or(VmallocError::InvalidSize { size: u64::MAX })?;
        let area = v.get_vm_area_node(
            size,
            PAGE_SIZE,
            VmFlags::IOREMAP | VmFlags::PFNMAP,
            0,
            None,
            None,
            Location::caller(),
        )?;
        if let Err(e) = v
            .space
            .map(VirtAddr::new_truncate(area.start), &frames, prot)
        {
            v.drop_unused(area.start);
            return Err(e.into());
        }
        Ok(VirtAddr::new_truncate(area.start))
    }

    /// `get_vm_area(size, flags)`: reserve `size` bytes (rounded up to pages; plus a guard
    /// page unless `NO_GUARD`) of the vmalloc range, nothing mapped, no page tables built.
    /// `IOREMAP` in `flags` selects the ioremap alignment. `flags` may hold
    /// [`VmFlags::IOREMAP`], [`VmFlags::MAP`], [`VmFlags::USERMAP`] and
    /// [`VmFlags::NO_GUARD`]; anything else is [`VmallocError::InvalidFlags`]. Release with
    /// [`Vmalloc::free_vm_area`].
    #[track_caller]
    pub fn get_vm_area(&self, size: u64, flags: VmFlags) -> Result<VmArea, VmallocError> {
        check_flags(flags, GET_VM_AREA_FLAGS)?;
        self.v()
            .get_vm_area_node(size, PAGE_SIZE, flags, 0, None, None, Location::caller())
    }

    /// `alloc_vm_area(size, ptes)`: reserve an `IOREMAP` area as Linux 3.7 does and build its
    /// page tables down to the leaf tables, mapping nothing (the kernel half is shared by
    /// every address space, so nothing needs syncing). With `ptes`, the physical address of
    /// the PTE slot of every page of the area (guard page excluded), in order, is appended
    /// to it: seed 002's "pointers to the PTEs (in init_mm) allocated for the VM area"
    /// ([`AddressSpace::pte_slot`](pagetable::AddressSpace::pte_slot); a slot is an atomic
    /// word of the arena, and writing one maps that page: the caller then owns the area's
    /// mappings and must clear them before [`Vmalloc::free_vm_area`], which unmaps what is
    /// left anyway). Release with [`Vmalloc::free_vm_area`].
    #[track_caller]
    pub fn alloc_vm_area(
        &self,
        size: u64,
        mut ptes: Option<&mut Vec<PhysAddr>>,
    ) -> Result<VmArea, VmallocError> {
        let v = self.v();
        if let Some(out) = ptes.as_mut() {
            let pages = crate::valloc::size_to_pages(size)?;
            usize::try_from(pages)
                .ok()
                .and_then(|n| out.try_reserve(n).ok())
                .ok_or(VmallocError::InvalidSize { size })?;
        }
        let area = v.get_vm_area_node(
            size,
            PAGE_SIZE,
            VmFlags::IOREMAP,
            0,
            None,
            None,
            Location::caller(),
        )?;
        let len = crate::valloc::usable_end(&area) - area.start;
        if let Err(e) = v.space.populate(VirtAddr::new_truncate(area.start), len) {
            v.drop_unused(area.start);
            return Err(e.into());
        }
        if let Some(out) = ptes {
            out.extend(
                (area.start..area.start + len)
                    .step_by(PAGE_SIZE as usize)
                    .filter_map(|a| v.space.pte_slot(VirtAddr::new_truncate(a))),
            );
        }
        Ok(area)
    }

    /// `free_vm_area(area)`: release a reservation: a [`get_vm_area`](Vmalloc::get_vm_area)
    /// or [`alloc_vm_area`](Vmalloc::alloc_vm_area) one, an early area, a
    /// [`vmap`](Vmalloc::vmap), [`vmap_pfn`](Vmalloc::vmap_pfn) or
    /// [`ioremap`](Vmalloc::ioremap) area. Whatever is mapped inside is unmapped, frames are
    /// not freed (they are the caller's, or device memory), the VA is freed lazily. Errors: no
    /// live area starts at `area.start` (as for [`Vmalloc::vfree`]), or a `vmalloc` area,
    /// thread stack or `vm_map_ram` mapping, whose release must free frames or vmap blocks
    /// ([`VmallocError::WrongKind`], whose message names the right call).
    pub fn free_vm_area(&self, area: &VmArea) -> Result<(), VmallocError> {
        self.v().free_kind(area.start, VmFlags::empty(), |f| {
            !f.intersects(VmFlags::ALLOC | VmFlags::MAP_RAM)
        })
    }

    /// `find_vm_area(addr)`: the live area containing `addr` (guard page included), if it has
    /// a `vm_struct` in Linux's sense: `vm_map_ram` areas and vmap blocks are not reported.
    pub fn find_vm_area(&self, addr: VirtAddr) -> Option<VmArea> {
        self.v()
            .kva
            .find(addr)
            .filter(|a| !a.info.flags.contains(VmFlags::MAP_RAM))
    }
}

impl<P: Platform> Inner<P> {
    /// `__get_vm_area_node`: reserve an area of `size` bytes (rounded up to pages) plus a
    /// guard page unless `NO_GUARD`, anywhere in the vmalloc range.
    #[allow(clippy::too_many_arguments)] // the fields of the area, one by one
    pub(crate) fn get_vm_area_node(
        &self,
        size: u64,
        align: u64,
        flags: VmFlags,
        nr_pages: usize,
        phys_addr: Option<u64>,
        node: Option<usize>,
        caller: &'static Location<'static>,
    ) -> Result<VmArea, VmallocError> {
        let pages = crate::valloc::size_to_pages(size)?;
        let bytes = pages * PAGE_SIZE;
        let align = if flags.contains(VmFlags::IOREMAP) {
            ioremap_align(bytes)
        } else {
            align
        };
        let guard = if flags.contains(VmFlags::NO_GUARD) {
            0
        } else {
            PAGE_SIZE
        };
        let total = bytes
            .checked_add(guard)
            .ok_or(VmallocError::InvalidSize { size })?;
        let info = AreaInfo {
            flags,
            nr_pages,
            caller,
            phys_addr,
        };
        let start = self
            .kva
            .alloc(total, align, self.start, self.end, node, info)
            .map_err(|e| crate::error::alloc_error(e, size, total))?
            .as_u64();
        Ok(VmArea {
            start,
            end: start + total,
            info,
        })
    }

    /// Give back an area we just reserved and never mapped anything in.
    pub(crate) fn drop_unused(&self, start: u64) {
        match self.kva.remove(VirtAddr::new_truncate(start)) {
            // SAFETY: nothing was ever mapped in the area, or the failed map rolled back every
            // entry it wrote before returning; the address was never handed to anyone, so no
            // CPU accessed the range and none can hold a translation of it.
            Ok(r) => unsafe { self.kva.free_unused(r) },
            Err(_) => debug_assert!(false, "our fresh area at {start:#x} vanished"),
        }
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn ioremap_alignment_is_clamped() {
        assert_eq!(ioremap_align(1), PAGE_SIZE);
        assert_eq!(ioremap_align(PAGE_SIZE), PAGE_SIZE);
        assert_eq!(ioremap_align(PAGE_SIZE + 1), 2 * PAGE_SIZE);
        assert_eq!(ioremap_align(5 * PAGE_SIZE), 8 * PAGE_SIZE);
        assert_eq!(ioremap_align(128 * PAGE_SIZE), 128 * PAGE_SIZE);
        assert_eq!(ioremap_align(1 << 30), 128 * PAGE_SIZE);
        // No overflow at the top of the u64 range.
        assert_eq!(ioremap_align((1 << 63) + 1), 128 * PAGE_SIZE);
        assert_eq!(ioremap_align(u64::MAX), 128 * PAGE_SIZE);
        assert_eq!(ioremap_align(0), PAGE_SIZE);
    }
}
