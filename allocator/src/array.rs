//! `vmalloc_array` and `vcalloc`: arrays of `n` elements, the multiplication checked.
//!
//! # Locking
//!
//! None of its own (see the `valloc` module).

use core::panic::Location;
use pagetable::VirtAddr;
use pagetable::platform::Platform;

use crate::error::VmallocError;
use crate::instance::Vmalloc;
use crate::valloc::{Gfp, PAGE_KERNEL};

impl<P: Platform> Vmalloc<P> {
    /// `vmalloc_array(n, size)` (Linux 5.19+): [`Vmalloc::vmalloc`] of `n * size` bytes;
    /// [`VmallocError::SizeOverflow`] when the product does not fit in 64 bits (Linux
    /// returns `NULL`), nothing allocated.
    #[track_caller]
    pub fn vmalloc_array(&self, n: u64, size: u64) -> Result<VirtAddr, VmallocError> {
        let bytes = array_size(n, size)?;
        self.alloc_short(bytes, Gfp::KERNEL, PAGE_KERNEL, None, Location::caller())
    }

    /// `vcalloc(n, size)` (Linux 5.19+): [`Vmalloc::vmalloc_array`] with the memory zeroed
    /// (`vzalloc`).
    #[track_caller]
    pub fn vcalloc(&self, n: u64, size: u64) -> Result<VirtAddr, VmallocError> {
        let bytes = array_size(n, size)?;
        self.alloc_short(bytes, Gfp::ZERO, PAGE_KERNEL, None, Location::caller())
    }
}

/// `n * size`, or [`VmallocError::SizeOverflow`].
fn array_size(n: u64, size: u64) -> Result<u64, VmallocError> {
    n.checked_mul(size)
        .ok_or(VmallocError::SizeOverflow { n, size })
}
