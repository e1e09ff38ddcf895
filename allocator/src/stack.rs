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

use crossbeam_utils::CachePadded;
use pagetable::platform::Platform;
use pagetable::{PAGE_SIZE, PhysFrame, VirtAddr, Zone};

use crate::error::VmallocError;
use crate::instance::{Inner, Vmalloc};
use crate::kva::area::AreaInfo;
use crate::kva::flags::VmFlags;
use crate::sync::{AtomicU64, Ordering};
use crate::valloc::{Gfp, PAGE_KERNEL, Request, alloc_error};

/// Size of a kernel thread stack: x86_64's `THREAD_SIZE` (16 KiB, four pages, since Linux
/// 3.15).
pub const THREAD_SIZE: u64 = 16 << 10;

/// Stacks kept mapped per CPU for reuse: Linux's `NR_CACHED_STACKS` (`kernel/fork.c`).
///
/// Why 2: a CPU that ends a thread and starts another (the common churn) needs one; a
/// second absorbs a burst of one more, and each cached stack pins 16 KiB of memory and 24
/// KiB of VA per CPU that nobody else can use.
pub const NR_CACHED_STACKS: usize = 2;

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

/// The per-CPU stack caches of an instance.
pub(crate) struct StackCaches<P: Platform> {
    slots: Box<[CachePadded<[AtomicU64; NR_CACHED_STACKS]>]>,
    _platform: core::marker::PhantomData<fn() -> P>,
}

impl<P: Platform> fmt::Debug for StackCaches<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackCaches")
            .field("cpus", &self.slots.len())
            .field("cached", &self.count())
            .finish()
    }
}

impl<P: Platform> StackCaches<P> {
    /// Empty caches for `nr_cpus` CPU slots.
    pub(crate) fn new(nr_cpus: usize) -> Self {
        Self {
            slots: (0..nr_cpus.max(1))
                .map(|_| CachePadded::new(core::array::from_fn(|_| AtomicU64::new(0))))
                .collect(),
            _platform: core::marker::PhantomData,
        }
    }

    /// The calling CPU's words.
    fn mine(&self) -> &[AtomicU64; NR_CACHED_STACKS] {
        &self.slots[P::this_cpu() % self.slots.len()]
    }

    /// Take a cached stack of this CPU (its area start), if any.
    fn take(&self) -> Option<u64> {
        self.mine().iter().find_map(|w| {
            // Skip empty words without an RMW.
            if w.load(Ordering::Relaxed) == 0 {
                return None;
            }
            match w.swap(0, Ordering::AcqRel) {
                0 => None,
                s => Some(s),
            }
        })
    }

    /// Cache the stack at `start` on this CPU; `false` if both words are taken.
    fn put(&self, start: u64) -> bool {
        self.mine().iter().any(|w| {
            w.compare_exchange(0, start, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
    }

    /// Stacks cached on every CPU (a snapshot).
    pub(crate) fn count(&self) -> usize {
        self.slots
            .iter()
            .flat_map(|s| s.iter())
            .filter(|w| w.load(Ordering::Relaxed) != 0)
            .count()
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
        for slot in v.stacks.slots.iter() {
            for w in slot.iter() {
                let s = w.swap(0, Ordering::AcqRel);
                if s != 0 {
                    let freed = v.free_stack(s);
                    debug_assert!(freed.is_ok(), "{freed:?}");
                    n += 1;
                }
            }
        }
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

#[cfg(all(test, feature = "loom"))]
mod loom_tests {
    //! The per-CPU stack cache's race: threads of one CPU slot taking and caching stacks at
    //! once (two threads may share a slot: a preempted thread, or more threads than CPUs).
    //! Every interleaving hands each stack to exactly one taker and loses none.

    use super::*;
    use loom::thread;
    use pagetable::platform::StdPlatform;
    use std::sync::Arc;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        if b.preemption_bound.is_none() {
            b.preemption_bound = Some(3);
        }
        b.check(f);
    }

    #[test]
    fn take_and_put_on_one_slot_lose_nothing() {
        model(|| {
            let c = Arc::new(StackCaches::<StdPlatform>::new(1));
            assert!(c.put(0x1000));
            let taker = {
                let c = Arc::clone(&c);
                thread::spawn(move || c.take())
            };
            let putter = {
                let c = Arc::clone(&c);
                thread::spawn(move || c.put(0x2000))
            };
            let mine = c.take();
            let theirs = taker.join().unwrap();
            // One word was free when the putter came, or became free: it always fits.
            assert!(putter.join().unwrap());
            let mut seen: Vec<u64> = [mine, theirs].into_iter().flatten().collect();
            while let Some(s) = c.take() {
                seen.push(s);
            }
            seen.sort_unstable();
            assert_eq!(seen, vec![0x1000, 0x2000], "each stack exactly once");
        });
    }

    #[test]
    fn two_puts_into_the_last_free_word() {
        model(|| {
            let c = Arc::new(StackCaches::<StdPlatform>::new(1));
            assert!(c.put(0x1000));
            let other = {
                let c = Arc::clone(&c);
                thread::spawn(move || c.put(0x2000))
            };
            let mine = c.put(0x3000);
            let theirs = other.join().unwrap();
            assert!(mine ^ theirs, "exactly one fits");
            assert_eq!(c.count(), NR_CACHED_STACKS);
        });
    }
}
