//! Kernel thread stacks from vmalloc (Linux's `CONFIG_VMAP_STACK`: `alloc_thread_stack_node`,
//! `free_thread_stack`, the per-CPU `cached_stacks` of `kernel/fork.c`).
//!
//! # How it works
//!
//! What users rely on is in [`Vmalloc::alloc_thread_stack_node`] and
//! [`Vmalloc::free_thread_stack`]. For maintainers: each CPU slot has
//! [`NR_CACHED_STACKS`] atomic words (0 = empty, else the start of a stack area still
//! mapped). Freeing puts the stack in the first empty word of the calling CPU's slot with a
//! compare-exchange (Linux's `this_cpu_cmpxchg`); allocating takes one with a swap (Linux's
//! `this_cpu_xchg`), so a cached stack is handed to exactly one thread even when threads
//! share a CPU slot, with no lock. Only when the slot is full (free) or empty (alloc) does
//! the call reach the vmalloc path (map + lazy unmap).
//!
//! # Invariants
//!
//! * A stack area is `[guard below | THREAD_SIZE of stack | guard above]`: the lower guard
//!   page is part of the area and never mapped, so an overflow faults whatever lies below
//!   (Linux relies on the previous area's guard page, which a `VM_NO_GUARD` area such as a
//!   vmap block does not have); the upper one is the usual vmalloc guard page.
//! * A stack is in at most one cache word, or owned by one [`ThreadStack`] token, or freed.
//!   Tokens are neither `Clone` nor `Copy` and carry their instance, so a stack cannot be
//!   cached twice.
//!
//! # Locking
//!
//! The cache words are `AcqRel` atomics: the swap that takes a stack synchronises with the
//! compare-exchange that cached it, so the previous owner's writes (and the mapping) are
//! visible before the new owner zeroes it. No lock on the cached paths; the uncached paths
//! are those of `vmalloc` / `vfree`.

#[allow(unused_imports)]
use crate::prelude::*;
use core::fmt;
use core::panic::Location;

use pagetable::platform::Platform;
use pagetable::{PAGE_SIZE, PhysFrame, VirtAddr, Zone};

use crate::error::VmallocError;
use crate::error::alloc_error;
use crate::instance::{Inner, Vmalloc};
use crate::kva::area::AreaInfo;
use crate::kva::flags::VmFlags;
use crate::valloc::{Gfp, PAGE_KERNEL, Request};

pub(crate) mod cache;
pub use cache::NR_CACHED_STACKS;

/// Size of a kernel thread stack: x86_64's `THREAD_SIZE` (16 KiB, four pages, since Linux
/// 3.15).
pub const THREAD_SIZE: u64 = 16 << 10;

/// Pages of a stack.
const STACK_PAGES: u64 = THREAD_SIZE / PAGE_SIZE;

/// A kernel thread stack from [`Vmalloc::alloc_thread_stack_node`], to be given back with
/// [`Vmalloc::free_thread_stack`]. The stack grows down from [`ThreadStack::top`] to
/// [`ThreadStack::base`]; the page below `base` and the one at `top` are unmapped guard
/// pages. Not `Clone`: one owner, one free.
pub struct ThreadStack {
    /// Start of the area (the lower guard page).
    start: u64,
    /// The instance that made it (the address of its shared state).
    owner: usize,
}

impl fmt::Debug for ThreadStack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThreadStack")
            .field("base", &format_args!("{:#x}", self.start + PAGE_SIZE))
            .field(
                "top",
                &format_args!("{:#x}", self.start + PAGE_SIZE + THREAD_SIZE),
            )
            .finish()
    }
}

impl ThreadStack {
    /// The lowest byte of the stack.
    pub fn base(&self) -> VirtAddr {
        VirtAddr::new_truncate(self.start + PAGE_SIZE)
    }

    /// One past the highest byte: the initial stack pointer.
    pub fn top(&self) -> VirtAddr {
        self.base() + THREAD_SIZE
    }

    /// The stack's size in bytes ([`THREAD_SIZE`]).
    pub fn size(&self) -> u64 {
        THREAD_SIZE
    }

    /// The unmapped page right below [`ThreadStack::base`] (an overflow lands there).
    pub fn guard_below(&self) -> VirtAddr {
        VirtAddr::new_truncate(self.start)
    }
}

impl<P: Platform> Vmalloc<P> {
    /// Linux's `alloc_thread_stack_node` (`CONFIG_VMAP_STACK`): a [`THREAD_SIZE`] kernel
    /// stack with an unmapped guard page below and above it, zeroed.
    ///
    /// The common case costs no map, no unmap and no flush: a stack freed earlier on this
    /// CPU and kept mapped in its cache ([`NR_CACHED_STACKS`] per CPU) is taken with one
    /// atomic swap and cleared (Linux clears a reused stack too, so no stale pointer of the
    /// previous thread survives). Otherwise a fresh area is allocated and mapped as by
    /// [`Vmalloc::vzalloc`], with `node` preferring a KVA shard as for
    /// [`Vmalloc::vmalloc_node`]. `vmallocinfo` shows stacks as `vmalloc` areas of 4 pages;
    /// [`Vmalloc::vfree`] refuses them ([`VmallocError::WrongKind`]).
    ///
    /// Errors: out of frames or VA, as [`Vmalloc::vmalloc`] (nothing is left behind).
    #[track_caller]
    pub fn alloc_thread_stack_node(
        &self,
        node: impl Into<Option<usize>>,
    ) -> Result<ThreadStack, VmallocError> {
        let v = self.v();
        let owner = v as *const Inner<P> as usize;
        if let Some(start) = v.stacks.take() {
            v.clear_stack(start);
            return Ok(ThreadStack { start, owner });
        }
        let r = Request {
            size: THREAD_SIZE,
            align: PAGE_SIZE,
            start: v.start,
            end: v.end,
            gfp: Gfp::ZERO,
            prot: PAGE_KERNEL,
            flags: VmFlags::STACK,
            node: node.into(),
            caller: Location::caller(),
        };
        // Guard below, the stack, guard above.
        let area_size = THREAD_SIZE + 2 * PAGE_SIZE;
        let info = AreaInfo {
            flags: crate::valloc::area_flags(&r, Zone::Normal, STACK_PAGES as usize),
            nr_pages: STACK_PAGES as usize,
            caller: r.caller,
            phys_addr: None,
        };
        let va = v
            .kva
            .alloc(area_size, r.align, r.start, r.end, r.node, info)
            .map_err(|e| alloc_error(e, r.size, area_size))?;
        if let Err(e) = v.fill_area(va + PAGE_SIZE, STACK_PAGES, Zone::Normal, &r) {
            v.drop_unused(va.as_u64());
            return Err(e);
        }
        Ok(ThreadStack {
            start: va.as_u64(),
            owner,
        })
    }

    /// Linux's `free_thread_stack`: give a stack back. It goes into the calling CPU's cache,
    /// still mapped, if a word is free there: one compare-exchange, no lock, no unmap, no
    /// flush. Otherwise it is released as by [`Vmalloc::vfree`] (unmapped, frames freed, VA
    /// freed lazily): the allocator's short lock sections, and no flush on this thread in
    /// [`PurgeMode::Background`](crate::PurgeMode::Background) (the default: a purge the
    /// free kicks runs on a worker or the host's hook), so a thread can end with interrupts
    /// off as long as the platform's locks disable them; in `Inline` and `Synchronous` modes
    /// a free that crosses the lazy threshold purges (one flush) on this thread.
    ///
    /// Errors: a stack of another instance ([`VmallocError::NotAllocated`]); nothing changes.
    pub fn free_thread_stack(&self, stack: ThreadStack) -> Result<(), VmallocError> {
        let v = self.v();
        if stack.owner != v as *const Inner<P> as usize {
            return Err(VmallocError::NotAllocated { addr: stack.start });
        }
        if v.stacks.put(stack.start) {
            return Ok(());
        }
        v.free_stack(stack.start)
    }

    /// Linux's `free_vm_stack_cache` (run when a CPU goes offline): release every cached
    /// stack of every CPU, as [`Vmalloc::free_thread_stack`] does when a cache is full.
    /// Returns how many were released.
    pub fn free_vm_stack_cache(&self) -> usize {
        let v = self.v();
        let mut n = 0;
        v.stacks.drain(|s| {
            let freed = v.free_stack(s);
            debug_assert!(freed.is_ok(), "{freed:?}");
            n += 1;
        });
        n
    }

    /// Stacks kept mapped in the per-CPU caches right now.
    pub fn cached_thread_stacks(&self) -> usize {
        self.v().stacks.count()
    }
}

impl<P: Platform> Inner<P> {
    /// Zero a reused stack through its frames (no TLB is involved: the kernel's `memset`
    /// would hit translations it just used anyway).
    fn clear_stack(&self, start: u64) {
        let arena = self.frames.arena();
        for k in 0..STACK_PAGES {
            let va = VirtAddr::new_truncate(start + (k + 1) * PAGE_SIZE);
            if let Some(t) = self.space.translate(va) {
                let zeroed = arena.zero_frame(PhysFrame::containing_address(t.pa));
                debug_assert!(zeroed.is_ok(), "{zeroed:?}");
            }
        }
    }

    /// Release a stack area (the uncached path).
    fn free_stack(&self, start: u64) -> Result<(), VmallocError> {
        self.free_kind(start, VmFlags::STACK, |f| f.contains(VmFlags::STACK))
    }
}
