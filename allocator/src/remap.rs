//! `remap_vmalloc_range`: map the pages of a `VM_USERMAP` vmalloc area into a user address
//! space (what a driver's `mmap` does with a `vmalloc_user` buffer).
//!
//! # How it works
//!
//! See [`Vmalloc::remap_vmalloc_range`] (what users rely on).
//!
//! # Locking
//!
//! None of its own. Remapping an area that another thread frees at the same time is a use
//! after free by the caller (as in Linux).

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::platform::Platform;
use pagetable::{AddressSpace, PAGE_SIZE, PageTableFlags, PhysFrame, VirtAddr};

use crate::error::VmallocError;
use crate::instance::Vmalloc;
use crate::kva::flags::VmFlags;
use crate::valloc::usable_end;

/// Permissions of a remapped page in user space: present, writable, user, non-executable.
pub const PAGE_USER: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::USER_ACCESSIBLE)
    .union(PageTableFlags::NO_EXECUTE);

/// First address above the user (lower) half.
const USER_END: u64 = 1 << 47;

impl<P: Platform> Vmalloc<P> {
    /// `remap_vmalloc_range(vma, addr, pgoff)`: map the user range `[uaddr, uaddr + len)`
    /// (what Linux takes from the `vma`) of `user` with the `VM_USERMAP` area at `kaddr`,
    /// starting `pgoff` pages in: what a driver's `mmap` does with a
    /// [`vmalloc_user`](Vmalloc::vmalloc_user) buffer. Exactly
    /// [`Vmalloc::remap_vmalloc_range_partial`]`(user, uaddr, kaddr, pgoff, len)`, as in
    /// Linux; its documentation has the rules and errors.
    pub fn remap_vmalloc_range(
        &self,
        user: &AddressSpace<P>,
        uaddr: VirtAddr,
        len: u64,
        kaddr: VirtAddr,
        pgoff: u64,
    ) -> Result<(), VmallocError> {
        self.remap_vmalloc_range_partial(user, uaddr, kaddr, pgoff, len)
    }

    /// `remap_vmalloc_range_partial(vma, uaddr, kaddr, pgoff, size)`: map `size` bytes of
    /// the `VM_USERMAP` area containing `kaddr`, starting `pgoff` pages after `kaddr`, at
    /// `uaddr` of `user` (a space from [`Vmalloc::new_user_space`], or any space over this
    /// instance's frame allocator).
    ///
    /// As Linux's `remap_vmalloc_range_partial`: `kaddr` must be page aligned and inside a
    /// live area marked `VM_USERMAP` (from [`Vmalloc::vmalloc_user`] /
    /// [`Vmalloc::vmalloc_32_user`]); the window `[kaddr + pgoff pages, + size)` must fit in
    /// the area's usable part (guard page excluded). Each page of the window is translated in
    /// the kernel space, its frame gets one more reference
    /// ([`FrameAllocator::get`](pagetable::FrameAllocator::get), Linux's `vm_insert_page`),
    /// and all of them are mapped with one map call at `uaddr` with [`PAGE_USER`]
    /// permissions. On a failure the references are dropped again and nothing stays mapped.
    ///
    /// The user mapping keeps the frames alive after a `vfree` of the area; unmapping it with
    /// [`AddressSpace::unmap_and_free`] drops those references. Remapping an area that
    /// another thread frees at the same time is a use after free by the caller (as in Linux).
    ///
    /// Errors: `kaddr`, `uaddr` or `size` not page aligned ([`VmallocError::Misaligned`]), a
    /// zero `size` ([`VmallocError::InvalidSize`]), a user range outside the lower half
    /// ([`VmallocError::InvalidRange`]), no live area ([`VmallocError::NotAllocated`]), not
    /// `VM_USERMAP` ([`VmallocError::NotUserMappable`]), too large
    /// ([`VmallocError::RemapTooLarge`]), or the user map failing (already mapped, out of
    /// frames for tables: [`VmallocError::Map`]).
    pub fn remap_vmalloc_range_partial(
        &self,
        user: &AddressSpace<P>,
        uaddr: VirtAddr,
        kaddr: VirtAddr,
        pgoff: u64,
        size: u64,
    ) -> Result<(), VmallocError> {
        let v = self.v();
        let len = size;
        let (u, k) = (uaddr.as_u64(), kaddr.as_u64());
        for x in [k, u, len] {
            if x % PAGE_SIZE != 0 {
                return Err(VmallocError::Misaligned {
                    addr: x,
                    align: PAGE_SIZE,
                });
            }
        }
        if len == 0 {
            return Err(VmallocError::InvalidSize { size: 0 });
        }
        if u.checked_add(len).is_none_or(|e| e > USER_END) {
            return Err(VmallocError::InvalidRange {
                start: u,
                end: u.saturating_add(len),
            });
        }
        let area = v
            .kva
            .find(VirtAddr::new_truncate(k))
            .ok_or(VmallocError::NotAllocated { addr: k })?;
        if !area.info.flags.contains(VmFlags::USERMAP) {
            return Err(VmallocError::NotUserMappable { addr: area.start });
        }
        let size = usable_end(&area) - area.start;
        let too_large = VmallocError::RemapTooLarge {
            addr: area.start,
            offset: u64::MAX,
            len,
            size,
        };
        let offset = pgoff
            .checked_mul(PAGE_SIZE)
            .and_then(|o| o.checked_add(k - area.start))
            .ok_or(too_large)?;
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(VmallocError::RemapTooLarge {
                addr: area.start,
                offset,
                len,
                size,
            });
        }
        let first = area.start + offset;
        let mut frames: Vec<PhysFrame> = Vec::with_capacity((len / PAGE_SIZE) as usize);
        let mut fail = None;
        for va in (first..first + len).step_by(PAGE_SIZE as usize) {
            let Some(t) = v.space.translate(VirtAddr::new_truncate(va)) else {
                fail = Some(VmallocError::Map(pagetable::MapError::NotMapped {
                    va: VirtAddr::new_truncate(va),
                }));
                break;
            };
            let f = PhysFrame::containing_address(t.pa);
            if let Err(e) = v.frames.get(f) {
                fail = Some(e.into());
                break;
            }
            frames.push(f);
        }
        let result = match fail {
            Some(e) => Err(e),
            None => user
                .map(uaddr, &frames, PAGE_USER)
                .map_err(VmallocError::from),
        };
        if result.is_err() {
            let dropped = v.frames.free_bulk(&frames);
            debug_assert!(dropped.is_ok(), "{dropped:?}");
        }
        result
    }
}
