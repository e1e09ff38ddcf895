//! Address spaces: a PML4 root in the arena and the operations on its 4-level tree.
//!
//! How it works (range walks, the fast path, all-or-nothing maps, the shared kernel half)
//! and the invariants: see [`AddressSpace`]'s documentation (what users rely on). For
//! maintainers: `walk.rs` holds the recursive range walks and the fast path, `build.rs` the
//! two walks of a map and its rollback, `free.rs` the unmaps that free frames, `modify.rs`
//! protect, clean-up and teardown, `mappings.rs` the lock-free queries.
//!
//! Locking and ordering rules:
//! * Ownership rule (as for vmalloc): a caller maps, unmaps or protects only a range it owns;
//!   no two threads change the leaves of overlapping ranges at once. Disjoint ranges may be
//!   changed concurrently without any lock, even when they share tables.
//! * Intermediate tables are installed by `compare_exchange(UNUSED -> table, AcqRel)` on the
//!   parent entry: the `Release` publishes the zeroed table to walkers, which load entries
//!   with `Acquire`. The loser of the race keeps the winner's table and returns its frame.
//! * Leaf entries of a map or unmap are written with plain `store(Release)`: under the
//!   ownership rule the only other writer of a leaf in the range is a TLB-model walker
//!   setting `ACCESSED`/`DIRTY`, which compare-exchanges from the exact present value it
//!   read (so it never writes an unused entry, and a store that races with it at worst drops
//!   an A/D bit of a mapping being torn down, the bit Linux's vunmap discards too). `Release`
//!   makes the frame contents written before the map visible to a walker that sees the leaf.
//! * [`AddressSpace::protect`], COW write-protection and fault handling change present leaves
//!   with compare-exchange loops, so concurrent A/D updates are never lost.
//! * Tables are freed only by [`AddressSpace::clean_up`] (caller: nobody maps or accesses the
//!   range meanwhile), by a failed map's rollback (only tables it installed itself inside its
//!   own range, which nobody else can reach under the ownership rule), and on drop; a table
//!   whose span reaches outside the range concerned is never freed.
//! * `ptl` (a `sync::Mutex<()>` per space) serializes `copy_range` and `handle_write_fault`
//!   on a space's leaves (see `fork`); map/unmap never take it.

mod build;
mod free;
mod mappings;
mod modify;
#[cfg(all(test, not(feature = "loom")))]
mod tests;
mod walk;

use core::fmt;

pub use mappings::{Mapping, Mappings, Translation};

use crossbeam_utils::CachePadded;

use crate::addr::{AddrError, PhysAddr, VirtAddr};
use crate::arena::{ArenaError, PhysArena};
use crate::entry::{PageTable, PageTableFlags};
use crate::frame::{FrameAllocator, FrameError, Zone};
use crate::page::{PAGE_SIZE, PhysFrame};
use crate::platform::{DefaultPlatform, Platform};
use alloc::boxed::Box;
use alloc::sync::Arc;

use crate::sync::{AtomicUsize, Mutex, Ordering};
use crate::tlb::FlushRange;

use build::{Plan, Source};

/// Why a page-table operation failed. A failed operation changed nothing unless its
/// documentation says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// A page of the range is already mapped (by a 4 KiB or huge leaf).
    #[error("{va:?} is already mapped")]
    AlreadyMapped {
        /// The first mapped address found.
        va: VirtAddr,
    },
    /// No leaf maps `va`.
    #[error("{va:?} is not mapped")]
    NotMapped {
        /// The address.
        va: VirtAddr,
    },
    /// The frame allocator ran out of frames for page tables (or a COW copy).
    #[error("out of physical frames")]
    OutOfFrames,
    /// A virtual address that is not canonical.
    #[error("address {addr:#x} is not canonical")]
    NonCanonical {
        /// The rejected value.
        addr: u64,
    },
    /// An address or length that is not a multiple of `align`.
    #[error("{addr:#x} is not aligned to {align:#x}")]
    Misaligned {
        /// The rejected address or length.
        addr: u64,
        /// The required alignment.
        align: u64,
    },
    /// A huge leaf covers part of the range only, or sits where a table is needed.
    #[error("a huge page at {va:?} is in the way")]
    HugePageInTheWay {
        /// An address inside the huge page.
        va: VirtAddr,
    },
    /// An arena access failed.
    #[error("arena access failed")]
    Arena(#[from] ArenaError),
    /// `[start, start + len)` leaves its half of the address space (or the physical range
    /// overflows).
    #[error("range of {len:#x} bytes at {start:#x} is not inside one half of the address space")]
    InvalidRange {
        /// Start of the range (raw).
        start: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// The frame allocator refused an operation on a frame given by the caller (for example
    /// [`AddressSpace::unmap_and_free`] of a frame that was not allocated).
    #[error("frame allocator: {0}")]
    Frame(FrameError),
    /// Two address spaces that cannot work together: the same space twice, or spaces over
    /// different frame allocators.
    #[error("the address spaces are the same or use different frame allocators")]
    IncompatibleSpaces,
}

impl From<AddrError> for MapError {
    fn from(e: AddrError) -> Self {
        match e {
            AddrError::NonCanonical { addr } => MapError::NonCanonical { addr },
            AddrError::Misaligned { addr, align } => MapError::Misaligned { addr, align },
            AddrError::PhysTooLarge { addr } => MapError::InvalidRange {
                start: addr,
                len: 0,
            },
            AddrError::NumberOutOfRange { number, size } => MapError::InvalidRange {
                start: number.wrapping_mul(size),
                len: size,
            },
            AddrError::IndexOutOfRange { index } => MapError::InvalidRange {
                start: u64::from(index),
                len: 0,
            },
        }
    }
}

impl From<FrameError> for MapError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::OutOfFrames { .. } => MapError::OutOfFrames,
            FrameError::Arena(a) => MapError::Arena(a),
            other => MapError::Frame(other),
        }
    }
}

/// Source of unique address-space ids. A plain std atomic: ids only need to be unique (the
/// TLB model keys translations by them), not ordered with anything, and loom has no statics.
static NEXT_ID: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(1);

/// PML4 index where the kernel (upper) half starts.
const KERNEL_PML4_START: usize = 256;

/// The kernel half's owner: the root whose PML4 entries 256..512 every sharing space copies.
/// Freed (its kernel-half tables, then the root itself) when the last space sharing it goes.
struct KernelHalf<P: Platform> {
    frames: Arc<FrameAllocator<P>>,
    root: PhysFrame,
}

impl<P: Platform> Drop for KernelHalf<P> {
    fn drop(&mut self) {
        let arena = self.frames.arena();
        let root = arena.table(self.root);
        for e in &root.entries()[KERNEL_PML4_START..] {
            modify::free_subtree(&self.frames, e, 4);
        }
        // The root was allocated by `AddressSpace::new` and is freed exactly once, here.
        let _ = self.frames.free(self.root);
    }
}

/// A 4-level x86_64 address space: a PML4 root in the arena and the operations on its tree.
///
/// # How it works
///
/// An `AddressSpace` owns a root table (PML4) allocated from a [`FrameAllocator`]; every table
/// below it is a 4 KiB frame of the same [`PhysArena`], viewed as a [`PageTable`] of 512
/// atomic entries. Range operations ([`map`](Self::map), [`unmap`](Self::unmap),
/// [`protect`](Self::protect), [`populate`](Self::populate), [`clean_up`](Self::clean_up))
/// descend the tree recursively over the range, the way `vmap_page_range_noflush` walks pgd
/// -> pud -> pmd -> pte: each table entry on the way is read once, and a leaf table is filled
/// or cleared by one loop over its entries (up to 512 pages per table lookup). Nothing is
/// flushed here: `unmap` and `protect` return the [`FlushRange`] that needs a shootdown
/// (see [`TlbFlush`](crate::TlbFlush)). Ranges are as in the [crate docs](crate#ranges).
///
/// A map or unmap whose range lies inside ONE leaf table that already exists (the vmalloc
/// common case) does a single walk from the root to that table and then its store loop;
/// anything else (a table missing for a map, a huge leaf on the way, a range spanning tables)
/// takes the general path.
///
/// A map is all or nothing. A first walk over the table levels above the leaves counts the
/// missing tables and rejects a huge leaf in the way; the frames for those tables are
/// allocated up front (a failure frees them and returns [`MapError::OutOfFrames`] before any
/// entry changed). The second walk installs the tables and fills each leaf-table slice in one
/// loop that checks every entry is unused as it stores it; meeting a mapped page stops it,
/// the leaves written so far are cleared and the tables it installed inside its range are
/// freed again ([`MapError::AlreadyMapped`]). Tables it installed that reach outside the
/// range stay linked and owned by the tree (another mapper of a neighbouring range may
/// already use them). 2 MiB leaves are used where [`map_contiguous`](Self::map_contiguous) is
/// asked for them and both addresses are aligned, and by [`map_huge`](Self::map_huge).
///
/// # The kernel half
///
/// [`new_sharing_kernel`](Self::new_sharing_kernel) copies PML4 entries 256..512 of another
/// space, so both point at the same kernel PDPT tables; [`preallocate`](Self::preallocate)
/// installs those PDPTs up front (Linux's `preallocate_vmalloc_pages`), so that a kernel
/// mapping made later through any sharing space is seen by all without a sync. Kernel-half
/// PDPTs are owned by the space they were first created in (shared through an `Arc`), and are
/// never freed by `clean_up`.
///
/// # Invariants
///
/// * Every entry above the leaf level is either all-zero (unused) or `PRESENT`; a present
///   entry at level 4, 3 or 2 without `HUGE_PAGE` points at a table of this arena owned by
///   the tree; a leaf may also be a non-present, non-zero [`SwapEntry`](crate::SwapEntry)
///   (made only by [`install_swap_entry`](crate::install_swap_entry) and
///   [`copy_range`](crate::copy_range)), which maps no frame.
/// * The tree never owns leaf frames: `unmap` hands each leaf's frame to a callback, and
///   dropping an address space frees only its tables.
/// * [`rss`](Self::rss) is the number of 4 KiB pages mapped through this space (a 2 MiB leaf
///   counts 512), kept in per-CPU counters so that no map or unmap writes a shared cache
///   line; exact when quiescent.
///
/// # Locking
///
/// No lock for `map`, `unmap`, `protect`, `populate` or the queries, under the ownership
/// rule of the [crate docs](crate#locking): a caller changes only a range it owns; disjoint
/// ranges may be changed concurrently, even when they share tables (a table two mappers race
/// to install is installed once, the loser's frame freed). Tables are freed only by
/// `clean_up` (nobody may use its range meanwhile), by a failed map's rollback (only tables
/// inside its own range), and on drop.
pub struct AddressSpace<P: Platform = DefaultPlatform> {
    frames: Arc<FrameAllocator<P>>,
    arena: Arc<PhysArena>,
    root: PhysFrame,
    id: u64,
    /// Per-CPU page counts (see [`AddressSpace::rss`]).
    rss: Box<[CachePadded<AtomicUsize>]>,
    ptl: Mutex<P, ()>,
    kernel: Arc<KernelHalf<P>>,
}

impl<P: Platform> fmt::Debug for AddressSpace<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressSpace")
            .field("id", &self.id)
            .field("root", &self.root)
            .field("rss", &self.rss())
            .field("shares_kernel_of", &self.kernel.root)
            .finish()
    }
}

impl<P: Platform> AddressSpace<P> {
    /// An empty address space with its own kernel half.
    pub fn new(frames: Arc<FrameAllocator<P>>) -> Result<AddressSpace<P>, MapError> {
        let root = frames.alloc_zeroed(Zone::Normal)?;
        let kernel = Arc::new(KernelHalf {
            frames: Arc::clone(&frames),
            root,
        });
        Ok(Self::with_root(frames, root, kernel))
    }

    /// An empty user half sharing `kernel`'s kernel half: PML4 entries 256..512 are copied,
    /// so the kernel tables behind them (see [`AddressSpace::preallocate`]) are the same
    /// tables. Keeps `kernel`'s kernel half alive as long as this space exists.
    pub fn new_sharing_kernel(kernel: &AddressSpace<P>) -> Result<AddressSpace<P>, MapError> {
        let frames = Arc::clone(&kernel.frames);
        let root = frames.alloc_zeroed(Zone::Normal)?;
        let src = kernel.arena.table(kernel.kernel.root);
        let dst = kernel.arena.table(root);
        for (d, s) in dst.entries()[KERNEL_PML4_START..]
            .iter()
            .zip(&src.entries()[KERNEL_PML4_START..])
        {
            // The new root is not shared yet: Relaxed stores, published by the move of the
            // returned value to whoever uses it.
            d.store(s.load(Ordering::Acquire), Ordering::Relaxed);
        }
        Ok(Self::with_root(frames, root, Arc::clone(&kernel.kernel)))
    }

    fn with_root(
        frames: Arc<FrameAllocator<P>>,
        root: PhysFrame,
        kernel: Arc<KernelHalf<P>>,
    ) -> Self {
        Self {
            arena: Arc::clone(frames.arena()),
            frames,
            root,
            id: NEXT_ID.fetch_add(1, core::sync::atomic::Ordering::Relaxed),
            rss: (0..P::nr_cpu_ids().max(1))
                .map(|_| CachePadded::new(AtomicUsize::new(0)))
                .collect(),
            ptl: Mutex::<P, _>::new(()),
            kernel,
        }
    }

    /// The root (PML4) frame, what CR3 would hold.
    pub fn root(&self) -> PhysFrame {
        self.root
    }

    /// A unique id (never reused in the process), the TLB model's address-space tag.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The frame allocator tables (and COW copies) come from.
    pub fn frames(&self) -> &Arc<FrameAllocator<P>> {
        &self.frames
    }

    /// Number of 4 KiB pages mapped through this space (2 MiB leaves count 512). Exact when
    /// no map or unmap of this space runs at the same time; meanwhile a sum of per-CPU
    /// counters read one by one (never below zero).
    pub fn rss(&self) -> usize {
        let sum = self
            .rss
            .iter()
            .fold(0usize, |a, c| a.wrapping_add(c.load(Ordering::Relaxed)));
        // A page mapped on one CPU slot and unmapped on another leaves the first counter high
        // and the second "negative" (wrapped); a racing read may see only the second.
        (sum as isize).max(0) as usize
    }

    /// The calling CPU's rss counter.
    #[inline(always)]
    fn rss_slot(&self) -> &AtomicUsize {
        // A drawn CPU id is below `nr_cpu_ids() == rss.len()`; a pinned one may not be: it
        // folds onto slot `id % len`, off the fast path.
        let c = P::this_cpu();
        self.rss
            .get(c)
            .unwrap_or_else(|| &self.rss[c % self.rss.len()])
    }

    /// Whether this space was made by [`AddressSpace::new_sharing_kernel`] (or is the owner)
    /// of the same kernel half as `other`.
    pub fn shares_kernel_with(&self, other: &AddressSpace<P>) -> bool {
        Arc::ptr_eq(&self.kernel, &other.kernel)
    }

    /// The page-table lock (see the `fork` module).
    pub(crate) fn ptl(&self) -> &Mutex<P, ()> {
        &self.ptl
    }

    #[inline]
    pub(crate) fn arena(&self) -> &PhysArena {
        &self.arena
    }

    #[inline]
    pub(crate) fn root_table(&self) -> &PageTable {
        self.arena.table(self.root)
    }

    /// Count `pages` mapped (per-CPU counter: no shared cache line on the fast path).
    #[inline]
    pub(crate) fn add_rss(&self, pages: usize) {
        if pages != 0 {
            self.rss_slot().fetch_add(pages, Ordering::Relaxed);
        }
    }

    /// Count `pages` unmapped (wrapping: the pages may have been counted on another slot).
    #[inline]
    fn sub_rss(&self, pages: usize) {
        if pages != 0 {
            self.rss_slot().fetch_sub(pages, Ordering::Relaxed);
        }
    }

    /// Install the PDPT tables (PML4-level entries) covering `[start, end)` (range ends as in
    /// the [crate docs](crate#ranges)), so that mappings made there later through any space
    /// sharing this kernel half (or this space) land in shared tables. All or nothing.
    pub fn preallocate(&self, start: VirtAddr, end: VirtAddr) -> Result<(), MapError> {
        let (s, e) = walk::checked_bounds(start, end)?;
        if s >= e {
            return Ok(());
        }
        let root = self.root_table();
        let span = walk::entry_span(4);
        let missing = (walk::index(s, 4)..=walk::index(e - 1, 4))
            .filter(|&i| root[i].load(Ordering::Acquire).is_unused())
            .count();
        let mut stash = TableStash::new(&self.frames);
        stash.fill(missing)?;
        let mut l = s & !(span - 1);
        while l < e {
            walk::next_or_install(self, &root[walk::index(l, 4)], 4, l, &mut stash)?;
            l += span;
        }
        Ok(())
    }

    /// Map `frames` (4 KiB each) at `va, va + 4 KiB, ..` with `flags` (`PRESENT` is added;
    /// `HUGE_PAGE` and `COW` are ignored). Errors, changing nothing: [`MapError::Misaligned`],
    /// [`MapError::InvalidRange`], [`MapError::AlreadyMapped`], [`MapError::OutOfFrames`].
    ///
    /// The missing page tables are allocated from the space's frame allocator first, so a map
    /// either maps every page or changes nothing; the frames themselves stay the caller's
    /// (the tree never owns leaf frames).
    ///
    /// ```
    /// # #[cfg(not(feature = "loom"))] {
    /// use std::sync::Arc;
    /// use pagetable::{
    ///     AddressSpace, FrameAllocator, MapError, PageTableFlags, PhysAddr, PhysArena, VirtAddr,
    ///     Zone,
    /// };
    ///
    /// let arena = PhysArena::heap(1 << 20, PhysAddr::new(0x10_0000))?;
    /// let frames = Arc::new(FrameAllocator::new(Arc::new(arena)));
    /// let space = AddressSpace::new(Arc::clone(&frames))?;
    /// let pages = [frames.alloc_zeroed(Zone::Normal)?, frames.alloc_zeroed(Zone::Normal)?];
    /// let used = frames.stats().used; // the root and the two data frames
    ///
    /// let va = VirtAddr::new(0xffff_c900_0000_0000);
    /// let rw = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    /// space.map(va, &pages, rw)?;
    /// assert_eq!(space.translate(va + 4096 + 5).unwrap().pa, pages[1].start_address() + 5);
    /// assert_eq!(space.rss(), 2);
    /// // The PDPT, page directory and page table the range needed came from `frames`.
    /// assert_eq!(frames.stats().used, used + 3);
    ///
    /// // Overlapping an existing mapping fails and changes nothing.
    /// let err = space.map(va + 4096, &pages[..1], rw).unwrap_err();
    /// assert!(matches!(err, MapError::AlreadyMapped { .. }));
    /// assert_eq!(space.rss(), 2);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn map(
        &self,
        va: VirtAddr,
        frames: &[PhysFrame],
        flags: PageTableFlags,
    ) -> Result<(), MapError> {
        let len = (frames.len() as u64)
            .checked_mul(PAGE_SIZE)
            .ok_or(MapError::InvalidRange {
                start: va.as_u64(),
                len: u64::MAX,
            })?;
        let (s, e) = walk::checked_range(va, len)?;
        self.map_source(s, e, Source::Frames { base: s, frames }, flags, false)
    }

    /// Map the physical range `[pa, pa + len)` at `va` with `flags`. With `huge`, every 2 MiB
    /// piece where both the virtual and physical addresses are 2 MiB aligned becomes one
    /// 2 MiB leaf (unless a leaf table, even an empty one, is already there: then 4 KiB
    /// pages); the rest uses 4 KiB pages. Errors as for [`AddressSpace::map`].
    pub fn map_contiguous(
        &self,
        va: VirtAddr,
        pa: PhysAddr,
        len: u64,
        flags: PageTableFlags,
        huge: bool,
    ) -> Result<(), MapError> {
        if !pa.is_aligned(PAGE_SIZE) {
            return Err(MapError::Misaligned {
                addr: pa.as_u64(),
                align: PAGE_SIZE,
            });
        }
        if pa.checked_add(len).is_none() {
            return Err(MapError::InvalidRange {
                start: pa.as_u64(),
                len,
            });
        }
        let (s, e) = walk::checked_range(va, len)?;
        let huge = huge && (pa.as_u64().wrapping_sub(s)) % walk::entry_span(2) == 0;
        self.map_source(
            s,
            e,
            Source::Contiguous {
                base: s,
                pa: pa.as_u64(),
            },
            flags,
            huge,
        )
    }

    #[inline]
    pub(crate) fn map_source(
        &self,
        s: u64,
        e: u64,
        src: Source<'_>,
        flags: PageTableFlags,
        huge: bool,
    ) -> Result<(), MapError> {
        if s >= e {
            return Ok(());
        }
        let flags =
            (flags - (PageTableFlags::HUGE_PAGE | PageTableFlags::COW)) | PageTableFlags::PRESENT;
        // Fast path (inlined into the caller): the range lies in one existing leaf table
        // (and is not a whole 2 MiB chunk that may become a huge leaf).
        if walk::in_one_leaf_table(s, e) && !(huge && e - s == walk::entry_span(2)) {
            if let Some(r) = build::map_fast(self, s, e, &src, flags.bits()) {
                let pages = r?;
                self.add_rss(pages);
                return Ok(());
            }
        }
        self.map_walk(s, e, src, flags, huge)
    }

    /// [`AddressSpace::map_source`]'s general path: count and allocate the missing tables,
    /// then build (rolled back on a conflict).
    #[inline(never)]
    fn map_walk(
        &self,
        s: u64,
        e: u64,
        src: Source<'_>,
        flags: PageTableFlags,
        huge: bool,
    ) -> Result<(), MapError> {
        let plan = Plan::Map { huge };
        let need = build::count_tables(self, plan, s, e)?;
        let mut stash = TableStash::new(&self.frames);
        stash.fill(need)?;
        let mut done = s;
        match build::build(self, plan, s, e, &src, flags, &mut stash, &mut done) {
            Ok(pages) => {
                self.add_rss(pages);
                Ok(())
            }
            Err(err) => {
                build::rollback(self, s, done, e, &stash);
                Err(err)
            }
        }
    }

    /// Create the page tables (down to the leaf tables) covering `[va, va + len)` without
    /// mapping anything (vmalloc's `alloc_vm_area`). Existing tables and mappings are kept;
    /// a huge leaf in the range is [`MapError::HugePageInTheWay`]. All or nothing.
    pub fn populate(&self, va: VirtAddr, len: u64) -> Result<(), MapError> {
        let (s, e) = walk::checked_range(va, len)?;
        if s >= e {
            return Ok(());
        }
        let need = build::count_tables(self, Plan::Populate, s, e)?;
        let mut stash = TableStash::new(&self.frames);
        stash.fill(need)?;
        let mut done = s;
        build::build(
            self,
            Plan::Populate,
            s,
            e,
            &Source::Nothing,
            PageTableFlags::empty(),
            &mut stash,
            &mut done,
        )?;
        Ok(())
    }

    /// Clear every leaf in `[va, va + len)`, calling `f(frame address, leaf size in bytes)`
    /// once per present leaf so the caller frees or keeps the frame. Holes are skipped;
    /// non-present swap or migration leaves are cleared without a call (they map no frame;
    /// their swap counts are the caller's, as Linux's `zap_pte_range` frees them). Never
    /// flushes: returns the range of the leaves cleared, which needs a TLB shootdown before
    /// the virtual range is reused. A huge leaf reaching outside the range is
    /// [`MapError::HugePageInTheWay`] (nothing is changed).
    ///
    /// ```
    /// # #[cfg(not(feature = "loom"))] {
    /// use std::sync::Arc;
    /// use pagetable::{
    ///     AddressSpace, CountingFlush, FrameAllocator, PageTableFlags, PhysAddr, PhysArena,
    ///     PhysFrame, TlbFlush, VirtAddr, Zone,
    /// };
    ///
    /// let arena = PhysArena::heap(1 << 20, PhysAddr::new(0x10_0000))?;
    /// let frames = Arc::new(FrameAllocator::new(Arc::new(arena)));
    /// let space = AddressSpace::new(Arc::clone(&frames))?;
    /// let va = VirtAddr::new(0xffff_c900_0000_0000);
    /// let pages = [frames.alloc(Zone::Normal)?, frames.alloc(Zone::Normal)?];
    /// space.map(va, &pages, PageTableFlags::PRESENT | PageTableFlags::WRITABLE)?;
    ///
    /// // Unmap three pages: the hole after the second one is skipped, each mapped frame comes
    /// // back through the callback, and what needs flushing is reported, not flushed.
    /// let mut back = Vec::new();
    /// let flush = space.unmap(va, 3 * 4096, |pa, size| back.push((pa, size)))?;
    /// assert_eq!(back, [(pages[0].start_address(), 4096), (pages[1].start_address(), 4096)]);
    /// assert_eq!((flush.start(), flush.pages()), (va, 2));
    /// assert!(space.translate(va).is_none());
    /// assert_eq!(space.rss(), 0);
    ///
    /// // The caller flushes (here a counting stand-in for a shootdown; vmalloc would batch
    /// // thousands of such ranges into one) before `va` may map other frames, and frees
    /// // the frames it got back.
    /// let tlb = CountingFlush::new();
    /// flush.flush(&tlb);
    /// assert_eq!(tlb.stats().flushes, 1);
    /// for (pa, _) in back {
    ///     frames.free(PhysFrame::containing_address(pa))?;
    /// }
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn unmap<F: FnMut(PhysAddr, u64)>(
        &self,
        va: VirtAddr,
        len: u64,
        mut f: F,
    ) -> Result<FlushRange, MapError> {
        let (s, e) = walk::checked_range(va, len)?;
        if s >= e {
            return Ok(FlushRange::empty());
        }
        let mut flush = FlushRange::empty();
        // Fast path (inlined into the caller with its callback): inside one leaf table, one
        // walk does the huge-edge check and finds the table to clear.
        if walk::in_one_leaf_table(s, e) {
            if let Some(pages) = walk::clear_fast(self, s, e, &mut f, &mut flush) {
                self.sub_rss(pages);
                return Ok(flush);
            }
        }
        self.unmap_walk(s, e, &mut f, flush)
    }

    /// [`AddressSpace::unmap`]'s general path: the huge-edge check, then the range walk.
    #[inline(never)]
    fn unmap_walk<F: FnMut(PhysAddr, u64)>(
        &self,
        s: u64,
        e: u64,
        f: &mut F,
        mut flush: FlushRange,
    ) -> Result<FlushRange, MapError> {
        walk::check_huge_edges(self, s, e)?;
        let pages = walk::clear(self, s, e, f, &mut flush);
        self.sub_rss(pages);
        Ok(flush)
    }

    /// Set the flags of every leaf in `[va, va + len)` to `flags` (`PRESENT` is kept, and
    /// `HUGE_PAGE` for huge leaves; `ACCESSED`, `DIRTY` and `COW` stay as they were; a `COW`
    /// leaf never becomes `WRITABLE` here: its write fault does that). Holes are skipped.
    /// Returns the range of leaves that changed, which needs a shootdown. A huge leaf reaching
    /// outside the range is [`MapError::HugePageInTheWay`] (nothing is changed).
    pub fn protect(
        &self,
        va: VirtAddr,
        len: u64,
        flags: PageTableFlags,
    ) -> Result<FlushRange, MapError> {
        let (s, e) = walk::checked_range(va, len)?;
        if s >= e {
            return Ok(FlushRange::empty());
        }
        walk::check_huge_edges(self, s, e)?;
        let mut flush = FlushRange::empty();
        modify::protect(self, s, e, flags, &mut flush);
        Ok(flush)
    }

    /// Free the page tables in `[va, va + len)` that hold no entry, bottom up, returning how
    /// many were freed. Only tables whose whole span lies inside the range are candidates;
    /// the root and the kernel half's PDPT tables are never freed. The caller guarantees that
    /// nobody maps, unmaps or accesses the range meanwhile.
    pub fn clean_up(&self, va: VirtAddr, len: u64) -> Result<usize, MapError> {
        let (s, e) = walk::checked_range(va, len)?;
        if s >= e {
            return Ok(0);
        }
        Ok(modify::clean_up(self, s, e))
    }
}

impl<P: Platform> Drop for AddressSpace<P> {
    fn drop(&mut self) {
        let root = self.arena.table(self.root);
        for e in &root.entries()[..KERNEL_PML4_START] {
            modify::free_subtree(&self.frames, e, 4);
        }
        if self.root != self.kernel.root {
            // Kernel-half tables this space created itself (outside any preallocated range)
            // are its own; the shared ones belong to the kernel half's owner.
            let shared = self.arena.table(self.kernel.root);
            for (mine, theirs) in root.entries()[KERNEL_PML4_START..]
                .iter()
                .zip(&shared.entries()[KERNEL_PML4_START..])
            {
                let m = mine.load(Ordering::Acquire);
                if m.is_present() && m.addr() != theirs.load(Ordering::Acquire).addr() {
                    modify::free_subtree(&self.frames, mine, 4);
                }
            }
            // Allocated by `new_sharing_kernel`, freed exactly once, here.
            let _ = self.frames.free(self.root);
        }
    }
}

/// Validate an exclusive range end pair given as addresses (used by `copy_range`).
pub(crate) use walk::checked_bounds;
/// Table descent and allocation helpers used by `fork`.
pub(crate) use walk::{TableStash, descend_create, entry_span, index, leaf_table};
