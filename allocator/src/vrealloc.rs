//! `vrealloc` (Linux 6.12+): resize a `vmalloc` area, in place when it can.
//!
//! # How it works
//!
//! See [`Vmalloc::vrealloc`] (what users rely on). For maintainers: an area's pages are
//! counted in its `nr_pages` (the mapped prefix, in 4 KiB pages, a multiple of 512 for a
//! huge area) and its capacity is its usable size (area minus guard page). A shrink unmaps
//! the tail (frames freed at once, as `vfree` frees them) and keeps the VA; a later grow back
//! into that capacity flushes it first, so the "no reuse before a flush" promise holds inside
//! an area too. Growth past the capacity takes the free-tree range after the area
//! ([`Kva::try_extend`](crate::Kva::try_extend), undone with
//! [`Kva::trim_unused`](crate::Kva::trim_unused) if the map then fails), else a new area is
//! allocated with the old one's flags, protection and caller, the bytes copied through the
//! frames, and the old area freed as `vfree` does (lazily).
//!
//! # Invariants
//!
//! * For an area allocated zeroed ([`VmFlags::ZEROED`]), the bytes between the size last
//!   asked for and the end of the mapped pages are zero (a shrink zeroes them; grown pages
//!   are zeroed), so a later grow exposes zeros, provided the caller never wrote past its
//!   size.
//!
//! # Locking
//!
//! None of its own. Only the area's owner may resize it: a `vrealloc` racing a `vfree`, a
//! `vread` or another `vrealloc` of the same area is the caller's bug, as in Linux (a shrink
//! racing the `vfree` of its area may free a frame of the tail twice: `vfree` drops an
//! area's last frame references without a locked instruction, see
//! `AddressSpace::unmap_and_free_exclusive`).

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::platform::Platform;
use pagetable::{PAGE_SIZE, PageTableFlags, PhysFrame, Size2MiB, VirtAddr, Zone};

use crate::error::VmallocError;
use crate::instance::{Inner, Vmalloc};
use crate::kva::area::VmArea;
use crate::kva::flags::VmFlags;
use crate::valloc::PMD_SIZE;
use crate::valloc::{Gfp, PAGE_KERNEL, Request, size_to_pages, usable_end};

/// Fresh frames for the pages a grow adds: 4 KiB frames or 2 MiB runs.
enum Granules {
    Small(Vec<PhysFrame>),
    Huge(Vec<PhysFrame<Size2MiB>>),
}

impl<P: Platform> Vmalloc<P> {
    /// `vrealloc(p, size, gfp)` (Linux 6.12+): resize the `vmalloc` area at `p` to `size`
    /// bytes, keeping its contents up to the smaller of the two sizes (counted in whole
    /// pages), its flags (`USERMAP`, zone, huge mappings allowed, zeroed), its protection and
    /// its caller. `p` null: `__vmalloc(size, gfp)`. `size` 0: `vfree(p)`, and the null
    /// address is returned.
    ///
    /// * **Shrink in place** (fewer pages, or as many): the pages past the new size are
    ///   unmapped and their frames freed (Linux 6.12 keeps them; here the memory comes back);
    ///   the VA stays the area's, and the address is unchanged.
    /// * **Grow in place** when the area still has the capacity (from an earlier shrink: that
    ///   range is flushed first, as any reuse of unmapped VA must be) or when the range right
    ///   after it is free in the KVA allocator's trees (taken without a flush: free space was
    ///   flushed before it became free). The address is unchanged. Free space held by a
    ///   node's pool or waiting for a purge is not taken: the neighbours of a small area
    ///   (up to [`MAX_CLASS_PAGES`](crate::MAX_CLASS_PAGES) pages with its guard page) are
    ///   usually in its node's pools, so a small area usually moves.
    /// * Otherwise **allocate, copy and free lazily**: a new area with the same flags,
    ///   protection and caller, the bytes copied, the old area freed as by
    ///   [`Vmalloc::vfree`] (no flush now; its VA waits for the next purge).
    ///
    /// A huge area ([`Vmalloc::vmalloc_huge`]) grows and shrinks by whole 2 MiB runs; when no
    /// run is left it is reallocated (maybe with 4 KiB pages). Grown bytes are zero when the
    /// area was allocated zeroed (`vzalloc`, `vcalloc`, `vmalloc_user`, `__GFP_ZERO`: the
    /// bytes past the size of a zeroed area are kept zero on a shrink, and the pages added
    /// are zeroed); with [`Gfp::ZERO`] on an area that was not, only the pages added are.
    /// Pass the same `gfp` on every call for an area, as Linux asks.
    ///
    /// Errors, with the area at `p` untouched: no live area starts at `p`
    /// ([`VmallocError::NotAllocated`], [`VmallocError::NotStartOfArea`]), not a `vmalloc`
    /// area ([`VmallocError::WrongKind`]: a thread stack, a `vmap`...), no frames or VA for
    /// the growth (the errors of [`Vmalloc::vmalloc`]).
    #[track_caller]
    pub fn vrealloc(&self, p: VirtAddr, size: u64, gfp: Gfp) -> Result<VirtAddr, VmallocError> {
        if p.is_null() {
            return self.vmalloc_with(size, gfp, PAGE_KERNEL);
        }
        if size == 0 {
            self.vfree(p)?;
            return Ok(VirtAddr::zero());
        }
        self.v().vrealloc(p, size, gfp)
    }
}

impl<P: Platform> Inner<P> {
    fn vrealloc(&self, va: VirtAddr, size: u64, gfp: Gfp) -> Result<VirtAddr, VmallocError> {
        // The exact-start lookup gives the errors of a miss (inside an area, none at all).
        self.kva.set_info(va, |_| {})?;
        let area = self
            .kva
            .find(va)
            .ok_or(VmallocError::NotAllocated { addr: va.as_u64() })?;
        let flags = area.info.flags;
        if !flags.contains(VmFlags::ALLOC) || flags.contains(VmFlags::STACK) {
            return Err(VmallocError::WrongKind {
                addr: va.as_u64(),
                expected: VmFlags::ALLOC,
                found: flags,
            });
        }
        let pages = size_to_pages(size)?;
        let zone = if flags.contains(VmFlags::DMA32) {
            Zone::Dma32
        } else {
            Zone::Normal
        };
        if pages > self.frames.arena().frames() {
            return Err(VmallocError::OutOfMemory {
                size,
                source: pagetable::FrameError::OutOfFrames {
                    zone,
                    injected: false,
                },
            });
        }
        let huge = flags.contains(VmFlags::HUGE);
        let granule = if huge { PMD_SIZE } else { PAGE_SIZE };
        let new_bytes = size
            .checked_next_multiple_of(granule)
            .ok_or(VmallocError::InvalidSize { size })?;
        let mapped = area.info.nr_pages as u64 * PAGE_SIZE;
        let cap = usable_end(&area) - area.start;
        let zeroed = flags.contains(VmFlags::ZEROED);
        if new_bytes <= mapped {
            return self.shrink(&area, size, new_bytes).map(|()| va);
        }
        let zero_new = zeroed || gfp.contains(Gfp::ZERO);
        let prot = self.space.translate(va).map_or(PAGE_KERNEL, |t| t.flags);
        let grow = |end_of_area_grew: bool| -> Result<(), VmallocError> {
            let g = self.alloc_granules(new_bytes - mapped, huge, zone, zero_new)?;
            if cap > mapped {
                // Unmapped by an earlier shrink: a CPU may still cache it.
                self.tlb.flush_range(va + mapped, va + cap);
            }
            if huge && end_of_area_grew {
                // Fresh free-tree range (and the never-mapped old guard page): empty leaf
                // tables there would force 4 KiB leaves.
                let _ = self.space.clean_up(va + mapped, new_bytes - mapped);
            }
            if let Err(e) = self.map_granules(va + mapped, &g, prot) {
                self.free_granules(g);
                return Err(e.into());
            }
            self.set_pages(va, new_bytes);
            Ok(())
        };
        let guard = if flags.contains(VmFlags::NO_GUARD) {
            0
        } else {
            PAGE_SIZE
        };
        let new_end = area
            .start
            .checked_add(new_bytes)
            .and_then(|e| e.checked_add(guard))
            .ok_or(VmallocError::InvalidSize { size })?;
        let in_place = if new_bytes <= cap {
            Some(grow(false))
        } else if self.kva.try_extend(va, new_end).is_ok() {
            let r = grow(true);
            if r.is_err() {
                // SAFETY: nothing was mapped past the old end (the old guard page never is,
                // and the failed map changed nothing); the extension came from the free
                // trees, flushed before it got there.
                let trimmed = unsafe { self.kva.trim_unused(va, area.end) };
                debug_assert!(trimmed.is_ok(), "{trimmed:?}");
            }
            Some(r)
        } else {
            None
        };
        match in_place {
            Some(Ok(())) => Ok(va),
            // No 4 KiB frame: a copy would need them too.
            Some(Err(e)) if !huge => Err(e),
            // No space after the area, or no 2 MiB run left for a huge one: a new area
            // (huge again if it can be, else of 4 KiB pages).
            _ => self.realloc_copy(&area, size, zero_new, prot, zone),
        }
    }

    /// Shrink the area to `new_bytes` of mapped pages (`size` rounded to its granule).
    fn shrink(&self, area: &VmArea, size: u64, new_bytes: u64) -> Result<(), VmallocError> {
        let va = VirtAddr::new_truncate(area.start);
        let mapped = area.info.nr_pages as u64 * PAGE_SIZE;
        if new_bytes < mapped {
            // Freed at once, as `vfree` frees them; the VA stays the area's, and a grow back
            // into it flushes first.
            let _stale = self.unmap_owned(
                va + new_bytes,
                mapped - new_bytes,
                area.info.flags,
                area.info.nr_pages,
                false,
            )?;
            self.set_pages(va, new_bytes);
        }
        if area.info.flags.contains(VmFlags::ZEROED) {
            self.zero_bytes(area.start + size, area.start + new_bytes);
        }
        Ok(())
    }

    /// A new area like `area` (flags, protection, caller) of `size` bytes, the contents
    /// copied, `area` freed lazily.
    fn realloc_copy(
        &self,
        area: &VmArea,
        size: u64,
        zero: bool,
        prot: PageTableFlags,
        zone: Zone,
    ) -> Result<VirtAddr, VmallocError> {
        let mut gfp = if zero { Gfp::ZERO } else { Gfp::KERNEL };
        if zone == Zone::Dma32 {
            gfp |= Gfp::DMA32;
        }
        let r = Request {
            size,
            align: PAGE_SIZE,
            start: self.start,
            end: self.end,
            gfp,
            prot: prot - PageTableFlags::HUGE_PAGE,
            flags: area.info.flags
                & (VmFlags::USERMAP | VmFlags::NO_GUARD | VmFlags::ALLOW_HUGE_VMAP),
            node: None,
            caller: area.info.caller,
        };
        let new = self.vmalloc_area(&r)?;
        let keep = (area.info.nr_pages as u64 * PAGE_SIZE).min(size);
        self.copy_bytes(new.as_u64(), area.start, keep);
        let freed = self.vfree_now(area.start);
        debug_assert!(freed.is_ok(), "{freed:?}");
        Ok(new)
    }

    /// Record `bytes` of mapped pages in the area at `va` (and `VPAGES` to match).
    fn set_pages(&self, va: VirtAddr, bytes: u64) {
        let n = (bytes / PAGE_SIZE) as usize;
        let r = self.kva.set_info(va, |i| {
            i.nr_pages = n;
            i.flags.set(
                VmFlags::VPAGES,
                n.saturating_mul(core::mem::size_of::<u64>()) > PAGE_SIZE as usize,
            );
        });
        debug_assert!(r.is_ok(), "{r:?}");
    }

    fn alloc_granules(
        &self,
        bytes: u64,
        huge: bool,
        zone: Zone,
        zero: bool,
    ) -> Result<Granules, VmallocError> {
        let oom = |source| VmallocError::OutOfMemory {
            size: bytes,
            source,
        };
        if huge {
            let n = (bytes / PMD_SIZE) as usize;
            let mut v = Vec::new();
            v.try_reserve_exact(n)
                .map_err(|_| VmallocError::InvalidSize { size: bytes })?;
            for _ in 0..n {
                let run = if zero {
                    self.frames.alloc_huge_zeroed(zone)
                } else {
                    self.frames.alloc_huge(zone)
                };
                match run {
                    Ok(r) => v.push(r),
                    Err(e) => {
                        self.free_granules(Granules::Huge(v));
                        return Err(oom(e));
                    }
                }
            }
            return Ok(Granules::Huge(v));
        }
        let n = (bytes / PAGE_SIZE) as usize;
        let mut v = Vec::new();
        v.try_reserve_exact(n)
            .map_err(|_| VmallocError::InvalidSize { size: bytes })?;
        let got = if zero {
            self.frames.alloc_bulk_zeroed(n, zone, &mut v)
        } else {
            self.frames.alloc_bulk(n, zone, &mut v)
        };
        got.map_err(oom)?;
        Ok(Granules::Small(v))
    }

    fn map_granules(
        &self,
        va: VirtAddr,
        g: &Granules,
        prot: PageTableFlags,
    ) -> Result<(), pagetable::MapError> {
        match g {
            Granules::Small(v) => self.space.map(va, v, prot),
            Granules::Huge(v) => self.space.map_huge(va, v, prot),
        }
    }

    fn free_granules(&self, g: Granules) {
        match g {
            Granules::Small(v) => {
                let r = self.frames.free_bulk(&v);
                debug_assert!(r.is_ok(), "{r:?}");
            }
            Granules::Huge(v) => {
                for run in v {
                    let r = self.frames.free_huge(run);
                    debug_assert!(r.is_ok(), "{r:?}");
                }
            }
        }
    }

    /// Zero `[a, b)` of mapped pages through their frames.
    fn zero_bytes(&self, a: u64, b: u64) {
        let arena = self.frames.arena();
        let mut p = a;
        while p < b {
            let end = ((p / PAGE_SIZE + 1) * PAGE_SIZE).min(b);
            if let Some(t) = self.space.translate(VirtAddr::new_truncate(p)) {
                let _ = arena.fill(t.pa, end - p, 0);
            }
            p = end;
        }
    }

    /// Copy `len` bytes from the mapped pages at `src` to those at `dst` through the frames.
    fn copy_bytes(&self, dst: u64, src: u64, len: u64) {
        let arena = self.frames.arena();
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        let mut off = 0;
        while off < len {
            let n = (len - off).min(PAGE_SIZE) as usize;
            let (s, d) = (
                self.space.translate(VirtAddr::new_truncate(src + off)),
                self.space.translate(VirtAddr::new_truncate(dst + off)),
            );
            if let (Some(s), Some(d)) = (s, d) {
                if arena.read(s.pa, &mut buf[..n]).is_ok() {
                    let _ = arena.write(d.pa, &buf[..n]);
                }
            }
            off += n as u64;
        }
    }
}
