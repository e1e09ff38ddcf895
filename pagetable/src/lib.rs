//! x86_64 4-level page tables whose tables and data live in a simulated physical memory, with
//! a per-CPU frame allocator, fork's copy-on-write, and a software TLB that goes stale.
//!
//! # How it works
//!
//! **Physical memory** is a [`PhysArena`]: a slice of atomic 64-bit words standing for RAM at
//! physical addresses `base .. base + size`, on the heap or in an anonymous `MAP_NORESERVE`
//! mapping (a 16 GiB arena costs nothing until touched). Every byte access goes through
//! atomics, so a racing reader of a reused frame is never undefined behaviour: in this crate a
//! use-after-free of a frame is a *wrong value*, exactly as on hardware, and tests can see it.
//!
//! **Frames** come from a [`FrameAllocator`]: per-CPU caches in front of per-zone pools
//! (Linux's `pcp` lists), a never-touched bump region known to be zero, a reference count per
//! frame (COW and remapping share frames), exact statistics and fault injection
//! (`fail_nth`, `fail_after`) so that every error path can be driven from a test.
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
//! non-present swap and migration entries over ([`fork::copy_range_with_swap`] counts swap
//! references in a [`fork::SwapMap`], whose count continuations it allocates between batches);
//! [`handle_write_fault`] later copies the frame or takes it back.
//!
//! # Invariants
//!
//! * A page-table entry is all-zero or `PRESENT`, except that a 4 KiB leaf may also be a
//!   non-present swap or migration entry ([`fork::SwapEntry`], made by
//!   [`fork::install_swap_entry`] and copied by fork; map sees it as in use, unmap clears and
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
//! # Locking and ordering rules
//!
//! * Every atomic, lock and thread comes from [`sync`] (std/parking_lot, or loom's under the
//!   `loom` feature).
//! * **Ownership rule**: whoever maps, unmaps or protects a range owns it; disjoint ranges of
//!   one space may be changed by many threads at once with no lock, even when they share
//!   tables. Intermediate tables are installed by compare-exchange (`AcqRel`; the loser frees
//!   its frame and uses the winner's) and read with `Acquire`. Leaves of an owned range are
//!   plain `Release` stores; present leaves that a TLB walker may update concurrently
//!   (`protect`, COW) change by compare-exchange loops.
//! * Tables are freed only by [`AddressSpace::clean_up`] (its caller guarantees nobody uses the
//!   range), by a map rolling back tables whose span lies inside its own range, and on drop.
//! * Each space's page-table lock (`ptl`) serializes [`copy_range`] and [`handle_write_fault`]
//!   on its leaves; `copy_range` takes two of them, lower space id first.
//! * The frame allocator's lock order is CPU cache, then pool; the TLB model holds one CPU's
//!   cache lock for a lookup, walk and data copy, and a shootdown takes each CPU's in turn.
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
pub use frame::{DMA32_LIMIT, FOLD, FrameAllocator, FrameConfig, FrameError, FrameStats, Zone};
pub use mapper::{AddressSpace, MapError, Mapping, Mappings, Translation};
pub use page::{
    ENTRIES_PER_TABLE, PAGE_SHIFT, PAGE_SIZE, Page, PageRange, PageSize, PageTableIndex, PhysFrame,
    PhysFrameRange, Size1GiB, Size2MiB, Size4KiB,
};
#[cfg(feature = "std")]
pub use tlb::{AccessError, SETS, TlbModel, WAYS};
pub use tlb::{CountingFlush, FlushRange, TLB_SINGLE_PAGE_FLUSH_CEILING, TlbFlush, TlbStats};
