//! `ioremap` / `iounmap`: map a physical (device) range into the vmalloc range.
//!
//! # How it works
//!
//! See [`Vmalloc::ioremap`] and [`Vmalloc::iounmap`] (what users rely on).
//!
//! # Locking
//!
//! None of its own.

#[allow(unused_imports)]
use crate::prelude::*;
use core::panic::Location;
use pagetable::platform::Platform;

use pagetable::{PAGE_SIZE, PageTableFlags, PhysAddr, VirtAddr};

use crate::error::VmallocError;
use crate::instance::Vmalloc;
use crate::kva::flags::VmFlags;

impl<P: Platform> Vmalloc<P> {
    /// `ioremap(phys, size)` with protection `prot` (usually
    /// [`PAGE_KERNEL_IO`](crate::PAGE_KERNEL_IO)): map the physical (device) range
    /// `[phys, phys + size)` into the vmalloc range; returns the virtual address of `phys`.
    ///
    /// As Linux's `__ioremap_caller`: the range is widened to whole pages (the offset of
    /// `phys` in its page is added back to the returned address); physical memory that is RAM
    /// (any part of this instance's arena, whose frames belong to the frame allocator) is
    /// refused; an `IOREMAP` area is reserved with the ioremap alignment
    /// ([`ioremap_align`](crate::ioremap_align): the size rounded up to a power of two,
    /// clamped to `[PAGE_SIZE, 128 pages]`) and a guard page, its physical start recorded
    /// ([`Vmalloc::vmallocinfo`] prints `phys=`), and the range is mapped with one
    /// [`AddressSpace::map_contiguous`](pagetable::AddressSpace::map_contiguous) call.
    /// [`Vmalloc::vread`] and [`Vmalloc::vwrite`] treat ioremap areas as holes (reading device
    /// memory has side effects).
    ///
    /// Errors: size 0 ([`VmallocError::InvalidSize`]), a range beyond 52 bits
    /// ([`VmallocError::InvalidRange`]), RAM ([`VmallocError::IoremapOfRam`]), no VA space.
    #[track_caller]
    pub fn ioremap(
        &self,
        phys: PhysAddr,
        size: u64,
        prot: PageTableFlags,
    ) -> Result<VirtAddr, VmallocError> {
        let v = self.v();
        let p = phys.as_u64();
        if size == 0 {
            return Err(VmallocError::InvalidSize { size });
        }
        let bad = VmallocError::InvalidRange {
            start: p,
            end: p.saturating_add(size),
        };
        let last = p.checked_add(size - 1).ok_or(bad.clone())?;
        PhysAddr::try_new(last).map_err(|_| bad.clone())?;
        let offset = p % PAGE_SIZE;
        let base = p - offset;
        let len = (last / PAGE_SIZE + 1) * PAGE_SIZE - base;
        let arena = v.frames.arena();
        let (ram_start, ram_end) = (arena.base().as_u64(), arena.end().as_u64());
        if base < ram_end && ram_start < base + len {
            return Err(VmallocError::IoremapOfRam { phys: p, size });
        }
        let area = v.get_vm_area_node(
            len,
            PAGE_SIZE,
            VmFlags::IOREMAP,
            0,
            Some(base),
            None,
            Location::caller(),
        )?;
        let va = VirtAddr::new_truncate(area.start);
        if let Err(e) = v
            .space
            .map_contiguous(va, PhysAddr::new_truncate(base), len, prot, false)
        {
            v.drop_unused(area.start);
            return Err(e.into());
        }
        Ok(va + offset)
    }

    /// `iounmap(addr)`: release an ioremap area given any address in its first page (what
    /// [`Vmalloc::ioremap`] returned; the offset is dropped). The PTEs are cleared (no frame
    /// is freed: there are none) and the VA is freed lazily. Null is a no-op. Errors as for
    /// [`Vmalloc::vfree`]; a non-ioremap area is [`VmallocError::WrongKind`].
    pub fn iounmap(&self, addr: VirtAddr) -> Result<(), VmallocError> {
        if addr.is_null() {
            return Ok(());
        }
        let start = addr.align_down(PAGE_SIZE).as_u64();
        self.v()
            .free_kind(start, VmFlags::IOREMAP, |f| f.contains(VmFlags::IOREMAP))
    }
}
