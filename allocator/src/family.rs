//! The vmalloc family's short forms (`vmalloc`, `vzalloc`, `vmalloc_user`, `vmalloc_32`,
//! `vmalloc_32_user`, `vmalloc_exec`, `vmalloc_node`, `vzalloc_node`, `__vmalloc`): each
//! fills a `__vmalloc_node_range` request (the `valloc` module) with its flags.
//!
//! # Locking
//!
//! None of its own (see the `valloc` module).

#[allow(unused_imports)]
use crate::prelude::*;
use core::panic::Location;
use pagetable::platform::Platform;
use pagetable::{PAGE_SIZE, PageTableFlags, VirtAddr};

use crate::error::VmallocError;
use crate::instance::Vmalloc;
use crate::kva::flags::VmFlags;
use crate::valloc::{Gfp, PAGE_KERNEL, PAGE_KERNEL_EXEC, Request};

impl<P: Platform> Vmalloc<P> {
    /// The common request: the whole vmalloc range, page alignment, no node.
    #[inline]
    pub(crate) fn req(
        &self,
        size: u64,
        gfp: Gfp,
        prot: PageTableFlags,
        flags: VmFlags,
        caller: &'static Location<'static>,
    ) -> Request {
        let v = self.v();
        Request {
            size,
            align: PAGE_SIZE,
            start: v.start,
            end: v.end,
            gfp,
            prot,
            flags,
            node: None,
            caller,
        }
    }

    /// The vmalloc family's common body: a page-aligned request over the instance's range
    /// with no area flags, on `node`'s shard when given.
    #[inline]
    pub(crate) fn alloc_short(
        &self,
        size: u64,
        gfp: Gfp,
        prot: PageTableFlags,
        node: Option<usize>,
        caller: &'static Location<'static>,
    ) -> Result<VirtAddr, VmallocError> {
        let mut r = self.req(size, gfp, prot, VmFlags::empty(), caller);
        r.node = node;
        self.v().vmalloc_area(&r)
    }

    /// `vmalloc(size)`: `size` bytes (rounded up to pages) of virtually contiguous memory,
    /// contents unspecified, mapped [`PAGE_KERNEL`], followed by a guard page.
    #[track_caller]
    #[inline]
    pub fn vmalloc(&self, size: u64) -> Result<VirtAddr, VmallocError> {
        self.alloc_short(size, Gfp::KERNEL, PAGE_KERNEL, None, Location::caller())
    }

    /// `vzalloc(size)`: [`Vmalloc::vmalloc`] with the memory zeroed.
    #[track_caller]
    pub fn vzalloc(&self, size: u64) -> Result<VirtAddr, VmallocError> {
        self.alloc_short(size, Gfp::ZERO, PAGE_KERNEL, None, Location::caller())
    }

    /// `vmalloc_user(size)`: zeroed memory marked `VM_USERMAP`, so that
    /// [`Vmalloc::remap_vmalloc_range`] may map it into user space without leaking data.
    #[track_caller]
    pub fn vmalloc_user(&self, size: u64) -> Result<VirtAddr, VmallocError> {
        let r = self.req(
            size,
            Gfp::ZERO,
            PAGE_KERNEL,
            VmFlags::USERMAP,
            Location::caller(),
        );
        self.v().vmalloc_area(&r)
    }

    /// `vmalloc_32(size)`: memory whose frames all lie below 4 GiB physical.
    #[track_caller]
    pub fn vmalloc_32(&self, size: u64) -> Result<VirtAddr, VmallocError> {
        self.alloc_short(size, Gfp::DMA32, PAGE_KERNEL, None, Location::caller())
    }

    /// `vmalloc_32_user(size)`: zeroed, 32-bit addressable, `VM_USERMAP` memory.
    #[track_caller]
    pub fn vmalloc_32_user(&self, size: u64) -> Result<VirtAddr, VmallocError> {
        let r = self.req(
            size,
            Gfp::DMA32 | Gfp::ZERO,
            PAGE_KERNEL,
            VmFlags::USERMAP,
            Location::caller(),
        );
        self.v().vmalloc_area(&r)
    }

    /// `vmalloc_exec(size)`: memory mapped executable ([`PAGE_KERNEL_EXEC`]).
    #[track_caller]
    pub fn vmalloc_exec(&self, size: u64) -> Result<VirtAddr, VmallocError> {
        self.alloc_short(
            size,
            Gfp::KERNEL,
            PAGE_KERNEL_EXEC,
            None,
            Location::caller(),
        )
    }

    /// `vmalloc_node(size, node)`: [`Vmalloc::vmalloc`] preferring node `node`
    /// ([`NUMA_NO_NODE`](crate::NUMA_NO_NODE) or a plain number: every `node` argument of the API is an
    /// `Option<usize>`, a `usize` converting to `Some`).
    ///
    /// Difference from Linux (seed 002 says "allocate memory on a specific node"): this
    /// model has no NUMA memory, so the node picks where the VIRTUAL range comes from, the KVA
    /// shard `node` (modulo the shard count; Linux 6.9's vmap nodes do the same with the
    /// virtual space), not where the pages come from: the frames come from the calling CPU's
    /// frame cache whatever the node.
    #[track_caller]
    pub fn vmalloc_node(
        &self,
        size: u64,
        node: impl Into<Option<usize>>,
    ) -> Result<VirtAddr, VmallocError> {
        self.alloc_short(
            size,
            Gfp::KERNEL,
            PAGE_KERNEL,
            node.into(),
            Location::caller(),
        )
    }

    /// `vzalloc_node(size, node)`: [`Vmalloc::vmalloc_node`] with the memory zeroed (the
    /// node picks the KVA shard, as there).
    #[track_caller]
    pub fn vzalloc_node(
        &self,
        size: u64,
        node: impl Into<Option<usize>>,
    ) -> Result<VirtAddr, VmallocError> {
        self.alloc_short(
            size,
            Gfp::ZERO,
            PAGE_KERNEL,
            node.into(),
            Location::caller(),
        )
    }

    /// Linux's `__vmalloc(size, gfp_mask, prot)`: the page-allocator flags and protection are
    /// the caller's.
    #[track_caller]
    pub fn vmalloc_with(
        &self,
        size: u64,
        gfp: Gfp,
        prot: PageTableFlags,
    ) -> Result<VirtAddr, VmallocError> {
        let r = self.req(size, gfp, prot, VmFlags::empty(), Location::caller());
        self.v().vmalloc_area(&r)
    }
}
