//! `vmalloc_to_page`, `vmalloc_to_pfn`, `is_vmalloc_addr`: what an address of the vmalloc
//! range is.
//!
//! # Locking
//!
//! None: a lock-free page-table walk and a range check.

use pagetable::platform::Platform;
use pagetable::{PhysFrame, VirtAddr};

use crate::instance::Vmalloc;

impl<P: Platform> Vmalloc<P> {
    /// `vmalloc_to_page(addr)`: the 4 KiB frame mapped at `addr` in the kernel space (the
    /// frame inside a 2 MiB leaf for a huge area), if `addr` lies in the vmalloc range and
    /// is mapped; `None` otherwise (Linux returns `NULL` for an unmapped address and warns
    /// for one outside the range). A page-table walk: it says what the tables say now, not
    /// what a TLB may still cache.
    pub fn vmalloc_to_page(&self, addr: VirtAddr) -> Option<PhysFrame> {
        if !self.is_vmalloc_addr(addr) {
            return None;
        }
        let t = self.v().space.translate(addr)?;
        Some(PhysFrame::containing_address(t.pa))
    }

    /// `vmalloc_to_pfn(addr)`: the page frame number of [`Vmalloc::vmalloc_to_page`].
    pub fn vmalloc_to_pfn(&self, addr: VirtAddr) -> Option<u64> {
        self.vmalloc_to_page(addr).map(|f| f.number())
    }

    /// `is_vmalloc_addr(addr)`: whether `addr` lies in this instance's vmalloc range
    /// (`VMALLOC_START <= addr < VMALLOC_END`), allocated or not, as Linux checks.
    pub fn is_vmalloc_addr(&self, addr: VirtAddr) -> bool {
        let v = self.v();
        (v.start..v.end).contains(&addr.as_u64())
    }
}
