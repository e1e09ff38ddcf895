//! x86_64 4-level page tables whose tables and data live in a simulated physical memory, with
//! a per-CPU frame allocator, fork's copy-on-write, and a software TLB that goes stale.
//!
//! # How it works
//!
//! **Physical memory** is a [`PhysArena`]: a slice of atomic 64-bit words standing for RAM at
//! physical addresses `base .. base + size`, on the heap, in an anonymous `MAP_NORESERVE`
//! mapping (a 16 GiB arena costs nothing until touched) or, for a kernel, over its direct map
//! ([`PhysArena::from_direct_map`]). Every byte access goes through
//! atomics, so a racing reader of a reused frame is never undefined behaviour: in this crate a
//! use-after-free of a frame is a *wrong value*, exactly as on hardware, and tests can see it.
//!
//! **Frames** come from a [`FrameAllocator`]: per-CPU caches in front of per-zone pools
//! (Linux's `pcp` lists), a never-touched bump region known to be zero, a reference count per
//! frame (COW and remapping share frames), exact counters (the high-water mark within
//! [`FOLD`] frames per CPU) and fault injection (`fail_nth`, `fail_after`) so that every
//! error path can be driven from a test.
//!
//! **Page tables** are frames of the arena viewed as 512 atomic entries with the exact x86_64
//! bit layout ([`PageTableFlags`], bit 9 doubling as [`PageTableFlags::COW`]). An
//! [`AddressSpace`] owns a PML4 root and works on *ranges*, the way `vmap_page_range_noflush`
//! does: one recursive descent per range, each table entry on the way read once, each leaf
//! table filled or cleared by one loop over up to 512 entries. Mapping 1 GiB of 4 KiB pages
//! is 515 table lookups, not 262,144 walks (see `docs/BENCHMARKS.md`). A map first checks the
//! upper levels and allocates every missing table up front, so it fails before changing
//! anything when frames run out, and rolls back exactly what it wrote when it meets a mapped
//! page. 2 MiB leaves are used where asked and aligned. The kernel half (PML4 entries
//! 256..512) can be shared between spaces: tables preallocated there before
//! [`AddressSpace::new_sharing_kernel`] make later kernel mappings visible everywhere without
//! a sync, as Linux's `preallocate_vmalloc_pages` does.
//!
//! **Nothing here flushes a TLB by itself.** [`AddressSpace::unmap`] and
//! [`AddressSpace::protect`] return the [`FlushRange`] they dirtied; the caller decides when
//! and how to shoot it down through a [`TlbFlush`] (its own `invlpg`/IPI code, the no-op
//! [`CountingFlush`], or the [`TlbModel`]). That is what lets vmalloc free lazily and flush
//! tens of thousands of pages with one shootdown.
//!
//! **The TLB model** keeps a small set-associative translation cache per CPU, filled by page
//! walks that set `ACCESSED`/`DIRTY` like the hardware walker, and invalidated only by
//! shootdowns. A write through a stale entry lands in the *old* frame, and
//! [`TlbModel::holds_any`] tells whether any CPU could still use a translation of a range: the
//! oracle for "a virtual range was reused before its flush".
//!
//! **Fork** ([`copy_range`], seed 001's `copy_pte_range`) copies a range's entries into another
//! space in lock-holding batches of the seed's progress count, letting waiters take the locks
//! between batches, turning private writable pages copy-on-write on both sides and carrying
//! non-present swap and migration entries over ([`copy_range_with_swap`] counts swap
//! references in a [`SwapMap`], whose count continuations it allocates between batches);
//! [`handle_write_fault`] later copies the frame or takes it back.
//!
//! # Invariants
//!
//! * A page-table entry is all-zero or `PRESENT`, except that a 4 KiB leaf may also be a
//!   non-present swap or migration entry ([`SwapEntry`], made by
//!   [`install_swap_entry`] and copied by fork; map sees it as in use, unmap clears and
//!   counts it like a page); a non-leaf entry points at a table frame of the arena owned by
//!   exactly one tree (kernel-half PDPTs by the kernel half's owner).
//! * The tree never owns leaf frames: unmap hands each one to the caller's callback, and
//!   dropping an [`AddressSpace`] frees only its tables.
//! * A failed map leaves no leaf and no table it allocated behind (tables reaching outside
//!   its range excepted: they stay linked and owned by the tree).
//! * A virtual range must not be mapped again for a different frame before a flush covering
//!   its last unmap: the crate reports what needs flushing, the caller (vmalloc's lazy purge)
//!   enforces the rule, and the TLB model makes violations observable.
//!
//! # Ranges
//!
//! Every range is half-open, `[start, end)`, and lies inside one half of the address space;
//! page-table operations also want page-aligned bounds ([`MapError::Misaligned`] otherwise).
//! Calls given a start and a length ([`AddressSpace::map`], `unmap`, `protect`, ...) need
//! nothing more. Calls given two addresses ([`copy_range`], [`AddressSpace::preallocate`],
//! [`FlushRange::new`], which rounds out to pages, [`TlbFlush::flush_range`],
//! [`TlbModel::holds_any`]) read them in the 48-bit *linear* space, a canonical address with
//! its sign-extension bits 48..64 dropped: the lower half is `0 .. 1 << 47`, the upper
//! (kernel) half `1 << 47 .. 1 << 48`. So the exclusive end of the lower half is written
//! `VirtAddr::new_truncate(1 << 47)` (the upper half's first address), and the exclusive end
//! of the upper half, `1 << 48`, which no canonical address spells, is written
//! `VirtAddr::zero()`; [`FlushRange::end`] returns it that way too.
//!
//! # Locking
//!
//! * **Ownership rule** (the caller keeps it): whoever maps, unmaps or protects a range owns
//!   it, and no two threads change overlapping ranges of one space at once. Disjoint ranges
//!   may be changed concurrently with no lock, even when they share page tables.
//!   [`AddressSpace::clean_up`] also needs nobody to map, unmap or access its range
//!   meanwhile, and [`copy_range`] needs other mappers kept off both ranges (what fork's
//!   `mmap_lock` does).
//! * **No lock**: the [`PhysArena`] accessors, [`AddressSpace::translate`] and
//!   [`AddressSpace::mappings`] (lock-free walks), [`AddressSpace::unmap`] (its callback
//!   included) and [`AddressSpace::protect`], [`FrameAllocator::get`], [`FlushRange`],
//!   [`CountingFlush`]. They never wait and may run in interrupt context.
//! * **May take a lock** (a `Mutex` over the platform's `RawMutex`, held for a short bounded
//!   section): whatever allocates or frees frames ([`FrameAllocator`]: the calling CPU's
//!   cache, then a zone pool; so also `map`, `map_contiguous`, `populate` and `preallocate`
//!   when tables are missing, `unmap_and_free`, dropping an `AddressSpace`);
//!   [`copy_range`], [`handle_write_fault`] and [`install_swap_entry`] (the spaces'
//!   page-table locks) and [`SwapMap`]'s methods; the [`TlbModel`] (parking_lot locks: one
//!   CPU's per access, every CPU's in turn per flush). Whether a contended lock spins or
//!   sleeps is the `RawMutex`'s choice: [`RawSpinlock`](platform::RawSpinlock) spins,
//!   [`StdPlatform`]'s parking_lot lock parks the thread.
//! * **Lock order against the caller's locks**: none to respect. The crate never calls back
//!   into the caller with one of its locks held (`unmap`'s callback runs with none,
//!   [`Platform::cond_resched`](platform::Platform::cond_resched) between fork's batches
//!   with none), so its locks are always innermost and the caller may hold any lock of its
//!   own across any call.
//! * **What [`Platform::RawMutex`](platform::Platform::RawMutex) must provide**:
//!   `lock_api::RawMutexFair`, i.e. mutual exclusion whose unlock happens before the next
//!   lock; `unlock_fair` may be a plain unlock. A host that calls the locking functions in
//!   interrupt context must give a lock that disables interrupts while held.
//!
//! The internal rules (every lock, its order, every atomic's ordering) are written once in
//! `docs/ARCHITECTURE.md`, section *Locking and memory ordering*.
//!
//! # Features
//!
//! * `std` (default): what only a hosted program has: the mmap backing of the arena,
//!   [`StdPlatform`] (parking_lot's locks, thread-based CPU ids from the `cpu` module) and
//!   the [`TlbModel`]. Without it the crate is `no_std` + `alloc`, and the types' default
//!   platform is [`UpPlatform`](platform::UpPlatform) (one CPU, a spinlock).
//! * `loom`: every atomic and lock goes through loom, for the loom models (implies `std`).
//!
//! # Example
//!
//! Map two frames, write through CPU 0's TLB, unmap without flushing (the stale translation
//! still reaches the old frame), then flush:
//!
//! ```
//! # // Loom's atomics only work inside a loom model: the example runs without the feature.
//! # #[cfg(feature = "loom")]
//! # fn main() {}
//! # #[cfg(not(feature = "loom"))]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use pagetable::{
//!     AddressSpace, FrameAllocator, PageTableFlags, PhysAddr, PhysArena, TlbFlush, TlbModel,
//!     VirtAddr, Zone,
//! };
//!
//! let arena = PhysArena::heap(1 << 20, PhysAddr::new(0x10_0000))?;
//! let frames = Arc::new(FrameAllocator::new(Arc::new(arena)));
//! let space = AddressSpace::new(Arc::clone(&frames))?;
//! let tlb = TlbModel::new(2);
//!
//! let va = VirtAddr::new(0xffff_c900_0000_0000);
//! let pages = [frames.alloc_zeroed(Zone::Normal)?, frames.alloc_zeroed(Zone::Normal)?];
//! space.map(va, &pages, PageTableFlags::PRESENT | PageTableFlags::WRITABLE)?;
//! assert_eq!(space.translate(va + 4096).unwrap().pa, pages[1].start_address());
//!
//! // A write crossing the page boundary, as CPU 0.
//! tlb.write(0, &space, va + 4094, b"hello")?;
//! let mut back = [0u8; 3];
//! frames.arena().read(pages[1].start_address(), &mut back)?;
//! assert_eq!(&back, b"llo");
//!
//! // Unmap: the frames come back through the callback; nothing is flushed yet.
//! let mut unmapped = Vec::new();
//! let flush = space.unmap(va, 2 * 4096, |pa, _size| unmapped.push(pa))?;
//! assert_eq!(flush.pages(), 2);
//! assert!(space.translate(va).is_none());
//! assert!(tlb.holds_any(va, va + 8192), "CPU 0 still caches the translations");
//! tlb.read(0, &space, va, &mut back)?; // served by the stale entry
//!
//! flush.flush(&tlb);
//! assert!(!tlb.holds_any(va, va + 8192));
//! assert!(tlb.read(0, &space, va, &mut back).is_err()); // now it faults
//! assert_eq!(tlb.stats().flushes, 1);
//! for pa in unmapped {
//!     frames.free(pagetable::PhysFrame::containing_address(pa))?;
//! }
//! # Ok(())
//! # }
//! ```
//!
// Links to what exists only with `std`: to the item with it, to *Features* without it.
#![cfg_attr(feature = "std", doc = "[`TlbModel`]: crate::TlbModel")]
#![cfg_attr(
    feature = "std",
    doc = "[`TlbModel::holds_any`]: crate::TlbModel::holds_any"
)]
#![cfg_attr(feature = "std", doc = "[`StdPlatform`]: crate::platform::StdPlatform")]
#![cfg_attr(not(feature = "std"), doc = "[`TlbModel`]: crate#features")]
#![cfg_attr(not(feature = "std"), doc = "[`TlbModel::holds_any`]: crate#features")]
#![cfg_attr(not(feature = "std"), doc = "[`StdPlatform`]: crate#features")]
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

mod addr;
mod arena;
#[cfg(feature = "std")]
pub mod cpu;
mod entry;
mod fork;
mod frame;
mod mapper;
mod page;
pub mod platform;
mod sync;
mod tlb;

// One path per item: the modules are private, everything public is re-exported here (except
// the two modules that are namespaces of their own: `platform` and, with `std`, `cpu`).
pub use addr::{AddrError, PhysAddr, VirtAddr};
pub use arena::{ArenaConfig, ArenaError, Backing, PhysArena};
pub use entry::{ADDR_MASK, PageTable, PageTableEntry, PageTableFlags, Pte};
pub use fork::{
    CopyStats, Dup, FaultOutcome, MAX_SWAPFILES, SWAP_CONT_MAX, SWAP_MAP_MAX, SwapEntry, SwapKind,
    SwapMap, VmaKind, copy_range, copy_range_with_swap, handle_write_fault, install_swap_entry,
};
pub use frame::{
    DMA32_LIMIT, FOLD, FrameAllocator, FrameConfig, FrameError, FrameStats, HUGE_FRAMES, Zone,
};
pub use mapper::{AddressSpace, MapError, Mapping, Mappings, Translation};
pub use page::{
    ENTRIES_PER_TABLE, PAGE_SHIFT, PAGE_SIZE, Page, PageRange, PageSize, PageTableIndex, PhysFrame,
    PhysFrameRange, Size1GiB, Size2MiB, Size4KiB,
};
#[cfg(feature = "std")]
pub use tlb::{AccessError, HUGE_SETS, SETS, TlbEntries, TlbModel, WAYS};
pub use tlb::{CountingFlush, FlushRange, TLB_SINGLE_PAGE_FLUSH_CEILING, TlbFlush, TlbStats};
