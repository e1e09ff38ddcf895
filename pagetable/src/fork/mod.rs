//! Fork: copying a range of mappings between address spaces ([`copy_range`], Linux's
//! `copy_pte_range`) and breaking copy-on-write on a write fault ([`handle_write_fault`]).
//!
//! How it works, and what an error leaves behind: see [`copy_range`]'s and
//! [`handle_write_fault`]'s documentation (what users rely on). For maintainers: `plan`
//! checks and counts up front, `Copier` walks leaf tables in batches under both `ptl`s and
//! records what to undo, `undo.rs` rolls a failed copy back.
//!
//! Locking and ordering rules:
//! * Each space has a page-table lock (`ptl`, a `sync::Mutex<()>`); `copy_range` holds both
//!   spaces' locks during a batch, always taking the lower space id first (so concurrent
//!   copies in opposite directions cannot deadlock), and `handle_write_fault` and
//!   [`install_swap_entry`] hold their space's lock. So a COW decision (reference count, entry
//!   update) never interleaves with a copy of the same space's entries. A swap map's lock is
//!   taken under the `ptl`s; a continuation is allocated with no lock held.
//! * As for fork's `mmap_lock`, the caller keeps other mappers off both ranges during
//!   `copy_range` (map/unmap take no `ptl`). Leaf updates of the source use compare-exchange
//!   loops (the TLB model's walker may set `ACCESSED`/`DIRTY` meanwhile; it never writes a
//!   non-present entry, which is stored plainly); the destination's leaves are stored with
//!   `Release` after the frame reference or swap count is taken; destination tables are
//!   installed by compare-exchange like every table.
//! * The COW copy is published by a compare-exchange with `Release`, so a walker that sees the
//!   new leaf sees the copied contents.

mod swap;
mod undo;

pub use swap::{
    Dup, MAX_SWAPFILES, SWAP_CONT_MAX, SWAP_MAP_MAX, SwapEntry, SwapKind, SwapMap,
    install_swap_entry,
};

use crate::addr::VirtAddr;
use crate::entry::{PageTable, PageTableEntry, PageTableFlags, Pte};
use crate::frame::Zone;
use crate::mapper::{
    AddressSpace, MapError, TableStash, checked_bounds, descend_create, entry_span, index,
    leaf_table,
};
use crate::page::{PAGE_SIZE, PhysFrame};
use crate::platform::Platform;
use alloc::sync::Arc;

use crate::sync::{MutexGuard, Ordering};
use crate::tlb::{from_lin, lin};

use undo::Undo;

/// What kind of mapping a range is (Linux's `VM_SHARED` or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VmaKind {
    /// Private: writable pages become copy-on-write in both spaces.
    Private,
    /// Shared: both spaces keep writing the same frames.
    Shared,
}

/// What [`copy_range`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CopyStats {
    /// Entries copied, present or not.
    pub copied: u64,
    /// Of those, non-present entries ([`SwapEntry`]: swap, migration or other).
    pub swap: u64,
    /// Empty entries skipped inside existing source leaf tables.
    pub empty: u64,
    /// Lock hold periods (batches).
    pub batches: u64,
    /// Times the copy stopped at a swap entry whose count needed a continuation, allocated one
    /// with the locks dropped and retried the same entry.
    pub continuations: u64,
    /// Source leaves that were write-protected (COW) and need a TLB flush in the source.
    pub flush: crate::tlb::FlushRange,
}

/// What [`handle_write_fault`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultOutcome {
    /// The shared frame was copied into a new, writable, private one.
    Copied,
    /// The frame had no other user: made writable in place.
    Reused,
    /// The leaf is not copy-on-write.
    NotCow,
}

impl FaultOutcome {
    /// Whether the faulting page's old translation must be flushed from other CPUs (the frame
    /// changed). Only [`FaultOutcome::Copied`] needs it.
    pub fn needs_flush(self) -> bool {
        self == FaultOutcome::Copied
    }
}

/// The seed's batch limit and weights, Linux's `copy_pte_range`: `progress >= 32` ends a
/// batch, a copied entry adds 8, an empty one 1. So a batch holds the page-table locks for at
/// most 4 copied entries and 32 empty ones (a copy, which takes a frame reference and may
/// write both entries, weighs 8 reads of an empty one): a waiter never waits for more than a
/// few dozen entries, as in Linux (where a batch ends only when a reschedule is due or a
/// lock is contended; here always).
const PROGRESS_LIMIT: u32 = 32;
/// Progress an empty entry adds (the seed's `progress++`).
const PROGRESS_EMPTY: u32 = 1;
/// Progress a copied entry adds (the seed's `progress += 8`).
const PROGRESS_COPIED: u32 = 8;

/// Lock both spaces' page-table locks, lower id first.
fn lock_pair<'a, P: Platform>(
    a: &'a AddressSpace<P>,
    b: &'a AddressSpace<P>,
) -> (MutexGuard<'a, P, ()>, MutexGuard<'a, P, ()>) {
    if a.id() < b.id() {
        let ga = a.ptl().lock();
        (ga, b.ptl().lock())
    } else {
        let gb = b.ptl().lock();
        (a.ptl().lock(), gb)
    }
}

#[cfg(all(test, not(feature = "loom")))]
std::thread_local! {
    /// Test hook: run by `copy_range` on this thread right after each batch took its locks.
    static BATCH_HOOK: std::cell::RefCell<Option<Box<dyn FnMut()>>> =
        const { std::cell::RefCell::new(None) };
}

/// Run the test hook, if any (nothing outside unit tests).
#[inline]
fn batch_started() {
    #[cfg(all(test, not(feature = "loom")))]
    BATCH_HOOK.with(|h| {
        if let Some(f) = h.borrow_mut().as_mut() {
            f();
        }
    });
}

/// Copy the mappings of `[start, end)` (range ends as in the [crate docs](crate#ranges)) from
/// `src` to `dst`, as fork does (seed 001's `copy_pte_range`), with no swap area: swap entries
/// are copied without counting (use [`copy_range_with_swap`] to count them).
///
/// # How it works
///
/// The whole range is first checked read-only (no huge leaf in the source, no entry at all,
/// present or not, in the destination) and every destination table the copy will need is
/// allocated, so those errors come before anything changed. Then, for each leaf table of the
/// source, both spaces' page-table locks are taken and entries copied in batches exactly like
/// the seed: a progress count starts at 0, grows by 1 per empty entry and by 8 per copied one,
/// and the batch ends when it reaches 32 (Linux ends it only when a reschedule is due or a
/// lock is contended; here always, the worst case, which keeps batch boundaries
/// deterministic). Between batches the locks are really let go, each with the platform
/// lock's fair unlock (parking_lot's hands it to a thread parked on it, like Linux's
/// `spin_needbreak` on a FIFO spinlock), and the copier calls
/// [`Platform::cond_resched`] before locking again,
/// so a write fault waiting on either space gets in during a long copy. Each copied entry:
///
/// * present, frame counted by the allocator: takes one frame reference
///   ([`FrameAllocator::get`](crate::FrameAllocator::get)); in a [`VmaKind::Private`]
///   mapping a writable (or already COW) entry loses `WRITABLE` and gains
///   [`COW`](crate::PageTableFlags::COW) in both spaces; a [`VmaKind::Shared`] mapping's
///   child entry is marked clean (`DIRTY` cleared); the child's entry is always marked old
///   (`ACCESSED` cleared). Frames the allocator does not count (device memory, a caller's
///   own memory) are copied as they are, without reference or COW (Linux's `VM_PFNMAP`
///   case);
/// * non-present but not all zero (a [`SwapEntry`], the seed's `!pte_present` branch):
///   copied as it is. With [`copy_range_with_swap`] a swap entry's slot count is raised
///   ([`SwapMap::duplicate`]); `copy_range` has no swap area, so it copies swap entries
///   without counting them, as Linux does for an entry whose swap area is gone. When the count
///   needs a continuation the batch ends *before* that entry, the locks are dropped, the
///   continuation is allocated ([`SwapMap::add_continuation`]), progress restarts at 0 and
///   the copy resumes at the same entry (the seed's `add_swap_count_continuation` + `goto
///   again`; [`CopyStats::continuations`] counts these). In a private mapping a write
///   migration entry becomes a read one in both spaces (`make_migration_entry_read`); a
///   migration entry takes no frame reference (Linux takes none either).
///
/// The destination's [`rss`](AddressSpace::rss) grows per batch (`add_mm_rss_vec`) by every
/// entry copied, present or not: this crate's rss counts non-zero leaves (unmap clears and
/// counts a non-present leaf like a page), where Linux counts swap entries apart
/// (`MM_SWAPENTS`). The source entries that lost `WRITABLE` need a TLB flush:
/// [`CopyStats::flush`] says where.
///
/// # Locking
///
/// Both spaces' page-table locks are held during a batch, the space with the lower
/// [`id`](AddressSpace::id) locked first, so concurrent copies in opposite directions cannot
/// deadlock; [`handle_write_fault`] and [`install_swap_entry`] take the same lock, so a COW
/// decision never interleaves with a batch. `map`, `unmap` and `protect` take no lock: as
/// fork's `mmap_lock` does, the caller keeps other mappers off both ranges for the whole
/// call. The child's range must not be accessed through a TLB before the call returned `Ok`
/// (fork's child has not run yet): an entry undone after an error is not flushed.
///
/// # Errors
///
/// Changing nothing: [`MapError::IncompatibleSpaces`] (same space, or different frame
/// allocators), [`MapError::Misaligned`], [`MapError::InvalidRange`],
/// [`MapError::HugePageInTheWay`] (a huge leaf in the source range),
/// [`MapError::AlreadyMapped`] (an entry, present or not, in the destination range: it must
/// be empty, as a new child's is), [`MapError::OutOfFrames`] (destination tables).
///
/// All or nothing: with [`copy_range_with_swap`], a continuation that cannot be allocated
/// part-way is [`MapError::OutOfFrames`] *after* undoing the part copied: the child's entries,
/// frame references, swap counts (and the continuations they no longer need), rss and the
/// tables this call installed inside the range go away, and the source gets back the
/// `WRITABLE` bits and write migration entries the copy took. (Linux instead returns
/// `-ENOMEM` with the part copied left in the child, for fork's error path to tear down.)
/// What is *not* as before after such an error: `ACCESSED`/`DIRTY` bits the hardware set
/// meanwhile; a source leaf a write fault changed between batches (it stays as the fault made
/// it); a CPU that cached a source leaf while it was read-only takes one spurious write fault
/// (giving `WRITABLE` back is an upgrade, no flush is needed); and other threads may have seen
/// the partial copy between batches, as they may see any copy in progress.
pub fn copy_range<P: Platform>(
    dst: &AddressSpace<P>,
    src: &AddressSpace<P>,
    start: VirtAddr,
    end: VirtAddr,
    kind: VmaKind,
) -> Result<CopyStats, MapError> {
    copy(dst, src, start, end, kind, None)
}

/// [`copy_range`] counting the swap entries of `swap`'s area in `swap` (Linux's
/// `swap_duplicate`, allocating count continuations between batches as
/// [`SwapMap`] explains). Errors as for [`copy_range`], and [`MapError::OutOfFrames`] when a
/// continuation cannot be allocated, after undoing the part copied (what that leaves is in
/// [`copy_range`]'s *Errors*).
pub fn copy_range_with_swap<P: Platform>(
    dst: &AddressSpace<P>,
    src: &AddressSpace<P>,
    start: VirtAddr,
    end: VirtAddr,
    kind: VmaKind,
    swap: &SwapMap<P>,
) -> Result<CopyStats, MapError> {
    copy(dst, src, start, end, kind, Some(swap))
}

fn copy<P: Platform>(
    dst: &AddressSpace<P>,
    src: &AddressSpace<P>,
    start: VirtAddr,
    end: VirtAddr,
    kind: VmaKind,
    swap: Option<&SwapMap<P>>,
) -> Result<CopyStats, MapError> {
    if dst.id() == src.id() || !Arc::ptr_eq(dst.frames(), src.frames()) {
        return Err(MapError::IncompatibleSpaces);
    }
    let (s, e) = checked_bounds(start, end)?;
    if s >= e {
        return Ok(CopyStats::default());
    }
    let need = plan(dst, src, s, e)?;
    let mut stash = TableStash::new(dst.frames());
    stash.fill(need)?;
    let mut c = Copier {
        dst,
        src,
        swap,
        kind,
        stats: CopyStats::default(),
        undo: Undo::default(),
    };
    let mut l = s;
    match c.copy_all(&mut l, e, &mut stash) {
        Ok(()) => Ok(c.stats),
        Err(err) => {
            undo::roll_back(dst, src, swap, (s, l, e), &c.undo, &stash);
            Err(err)
        }
    }
}

/// Check `[s, e)` and count the destination tables a copy needs.
fn plan<P: Platform>(
    dst: &AddressSpace<P>,
    src: &AddressSpace<P>,
    s: u64,
    e: u64,
) -> Result<usize, MapError> {
    if let Some(l) = first_used(dst, s, e)? {
        return Err(MapError::AlreadyMapped { va: from_lin(l) });
    }
    let pt_span = entry_span(2);
    let mut need = 0;
    let mut l = s;
    // Destination tables already counted as missing: (level, linear base of their span).
    let mut counted: [Option<u64>; 3] = [None; 3];
    while l < e {
        let chunk_end = ((l & !(pt_span - 1)) + pt_span).min(e);
        if leaf_table(src, l)?.is_none() {
            l = next_present_chunk(src, l, e);
            continue;
        }
        // Destination: walk down, counting missing tables once each.
        let mut t = Some(dst.root_table());
        for level in (2..=4u32).rev() {
            let p = t.map_or(Pte::UNUSED, |t| t[index(l, level)].load(Ordering::Acquire));
            if p.is_present() && !p.is_huge() {
                t = Some(dst.child(p)?);
            } else {
                let base = l & !(entry_span(level) - 1);
                let slot = &mut counted[(level - 2) as usize];
                if *slot != Some(base) {
                    *slot = Some(base);
                    need += 1;
                }
                t = None;
            }
        }
        l = chunk_end;
    }
    Ok(need)
}

/// The first page of `[s, e)` where `space` has a leaf entry, present or not (a huge leaf
/// covering `l` counts from `l`).
fn first_used<P: Platform>(
    space: &AddressSpace<P>,
    s: u64,
    e: u64,
) -> Result<Option<u64>, MapError> {
    let pt_span = entry_span(2);
    let mut l = s;
    while l < e {
        let chunk_end = ((l & !(pt_span - 1)) + pt_span).min(e);
        match leaf_table(space, l) {
            Err(MapError::HugePageInTheWay { .. }) => return Ok(Some(l)),
            Err(err) => return Err(err),
            Ok(None) => {
                l = next_present_chunk(space, l, e);
                continue;
            }
            Ok(Some(t)) => {
                let mut x = l;
                while x < chunk_end {
                    if !t[index(x, 1)].load(Ordering::Acquire).is_unused() {
                        return Ok(Some(x));
                    }
                    x += PAGE_SIZE;
                }
            }
        }
        l = chunk_end;
    }
    Ok(None)
}

/// The start of the next 2 MiB chunk after `l` whose tables may exist, skipping missing
/// PDPT/PD subtrees whole.
fn next_present_chunk<P: Platform>(space: &AddressSpace<P>, l: u64, e: u64) -> u64 {
    let mut t = space.root_table();
    for level in (2..=4u32).rev() {
        let span = entry_span(level);
        let p = t[index(l, level)].load(Ordering::Acquire);
        match space.child(p) {
            Ok(c) if p.is_present() && !p.is_huge() => t = c,
            _ => return ((l & !(span - 1)) + span).min(e),
        }
    }
    ((l & !(entry_span(2) - 1)) + entry_span(2)).min(e)
}

/// What became of one source entry.
enum One {
    /// Empty: nothing to copy.
    Empty,
    /// Copied (`present`: a present leaf, else a [`SwapEntry`]).
    Copied { present: bool },
    /// A swap entry whose count needs a continuation first: nothing was copied.
    NeedsContinuation(SwapEntry),
}

/// One copy in progress: its spaces, what it did, and what a failure must undo.
struct Copier<'a, P: Platform> {
    dst: &'a AddressSpace<P>,
    src: &'a AddressSpace<P>,
    swap: Option<&'a SwapMap<P>>,
    kind: VmaKind,
    stats: CopyStats,
    undo: Undo,
}

impl<P: Platform> Copier<'_, P> {
    /// Copy `[*l, e)`, leaf table by leaf table; on error `*l` is the first address not
    /// copied.
    fn copy_all(
        &mut self,
        l: &mut u64,
        e: u64,
        stash: &mut TableStash<'_, P>,
    ) -> Result<(), MapError> {
        let pt_span = entry_span(2);
        while *l < e {
            let chunk_end = ((*l & !(pt_span - 1)) + pt_span).min(e);
            if let Some(src_pt) = leaf_table(self.src, *l)? {
                let dst_pt = descend_create(self.dst, *l, stash)?;
                self.copy_pt(src_pt, dst_pt, l, chunk_end)?;
            }
            *l = chunk_end;
        }
        Ok(())
    }

    /// The batched copy of one leaf table's part `[*l, chunk_end)` (the seed's loop).
    fn copy_pt(
        &mut self,
        src_pt: &PageTable,
        dst_pt: &PageTable,
        l: &mut u64,
        chunk_end: u64,
    ) -> Result<(), MapError> {
        let mut progress = 0;
        while *l < chunk_end {
            let (ga, gb) = lock_pair(self.dst, self.src);
            self.stats.batches += 1;
            batch_started();
            let mut rss = 0;
            let mut needs = None;
            loop {
                if progress >= PROGRESS_LIMIT {
                    progress = 0;
                    break;
                }
                let i = index(*l, 1);
                match self.copy_one(&src_pt[i], &dst_pt[i], *l) {
                    One::Empty => {
                        progress += PROGRESS_EMPTY;
                        self.stats.empty += 1;
                    }
                    One::Copied { present } => {
                        progress += PROGRESS_COPIED;
                        self.stats.copied += 1;
                        self.stats.swap += u64::from(!present);
                        rss += 1;
                    }
                    One::NeedsContinuation(entry) => {
                        // `*l` stays at this entry: the retry starts there.
                        needs = Some(entry);
                        break;
                    }
                }
                *l += PAGE_SIZE;
                if *l >= chunk_end {
                    break;
                }
            }
            self.dst.add_rss(rss);
            // The seed's unlocks and `cond_resched`: a fair unlock hands the lock to a thread
            // parked on it, the yield lets a runnable one run before we lock again.
            MutexGuard::<'_, P, ()>::unlock_fair(gb);
            MutexGuard::<'_, P, ()>::unlock_fair(ga);
            P::cond_resched();
            if let Some(entry) = needs {
                // With no page-table lock held, as the seed's GFP_KERNEL allocation.
                if let Some(m) = self.swap {
                    m.add_continuation(entry)?;
                }
                self.stats.continuations += 1;
                progress = 0;
            }
        }
        Ok(())
    }

    /// Copy one source entry (linear `l`) into the (unused) destination slot.
    fn copy_one(&mut self, src_entry: &PageTableEntry, dst_entry: &PageTableEntry, l: u64) -> One {
        let frames = self.src.frames();
        'again: loop {
            let mut cur = src_entry.load(Ordering::Acquire);
            if !cur.is_present() {
                let Some(entry) = SwapEntry::from_pte(cur) else {
                    return One::Empty;
                };
                return self.copy_swap_entry(src_entry, dst_entry, l, entry);
            }
            let frame = PhysFrame::containing_address(cur.addr());
            // The child's reference. A frame the allocator does not count (outside the arena,
            // or never allocated from it: device memory, a caller's own memory) is copied as
            // is, without COW (Linux's `VM_PFNMAP`).
            let managed = frames.get(frame).is_ok();
            loop {
                let mut flags = cur.flags();
                if self.kind == VmaKind::Private
                    && managed
                    && flags.intersects(PageTableFlags::WRITABLE | PageTableFlags::COW)
                {
                    flags = (flags - PageTableFlags::WRITABLE) | PageTableFlags::COW;
                    let parent = cur.with_flags(flags);
                    if parent != cur {
                        match src_entry.compare_exchange(
                            cur,
                            parent,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        ) {
                            Ok(_) => {
                                self.stats.flush.add_linear(l, l + PAGE_SIZE);
                                self.undo.protected.add(l);
                            }
                            Err(actual) if actual.is_present() && actual.addr() == cur.addr() => {
                                // Only ACCESSED/DIRTY changed (a walker): recompute.
                                cur = actual;
                                continue;
                            }
                            Err(_) => {
                                // The leaf was replaced meanwhile (outside the rules): drop
                                // our reference and start over.
                                if managed {
                                    let _ = frames.free(frame);
                                }
                                continue 'again;
                            }
                        }
                    }
                }
                if self.kind == VmaKind::Shared {
                    flags.remove(PageTableFlags::DIRTY);
                }
                flags.remove(PageTableFlags::ACCESSED);
                dst_entry.store(cur.with_flags(flags), Ordering::Release);
                if managed {
                    self.undo.referenced.add(l);
                }
                return One::Copied { present: true };
            }
        }
    }

    /// Copy the non-present source entry `entry` (the seed's `!pte_present` branch).
    fn copy_swap_entry(
        &mut self,
        src_entry: &PageTableEntry,
        dst_entry: &PageTableEntry,
        l: u64,
        mut entry: SwapEntry,
    ) -> One {
        match entry.kind() {
            SwapKind::Swap => match self.swap.map_or(Dup::NotOurs, |m| m.duplicate(entry)) {
                Dup::Counted => self.undo.counted.add(l),
                Dup::NotOurs => {}
                Dup::NeedsContinuation => return One::NeedsContinuation(entry),
            },
            SwapKind::MigrationWrite if self.kind == VmaKind::Private => {
                // COW mappings need the page read-only in both spaces. No walker writes a
                // non-present entry and the caller keeps mappers off: a plain store, as the
                // seed's `set_pte_at`.
                entry = entry.to_read_migration();
                src_entry.store(entry.pte(), Ordering::Release);
                self.undo.downgraded.add(l);
            }
            _ => {}
        }
        dst_entry.store(entry.pte(), Ordering::Release);
        One::Copied { present: false }
    }
}

/// Resolve a write fault at `va` in `space`: break copy-on-write (Linux's `do_wp_page`).
///
/// Under the space's page-table lock (the one [`copy_range`] holds during a batch), a `COW`
/// leaf whose frame has more than one reference gets a private copy (new frame, contents
/// copied, mapped writable, one reference on the old frame dropped):
/// [`FaultOutcome::Copied`], after which the old translation must be flushed from other CPUs
/// ([`FaultOutcome::needs_flush`]). With a single reference the frame is simply made writable
/// again: [`FaultOutcome::Reused`] (an upgrade: no flush needed). A leaf without `COW` is
/// [`FaultOutcome::NotCow`] (a genuine protection fault, or a spurious one if the leaf is
/// already writable). The new leaf is published after its contents, so a CPU that sees it
/// reads the copied data.
///
/// Errors: [`MapError::NotMapped`] (no leaf, or a non-present one: swap-in is not modelled),
/// [`MapError::HugePageInTheWay`] (a COW huge leaf: not supported), [`MapError::OutOfFrames`]
/// (nothing changed).
pub fn handle_write_fault<P: Platform>(
    space: &AddressSpace<P>,
    va: VirtAddr,
) -> Result<FaultOutcome, MapError> {
    let _ptl = space.ptl().lock();
    let l = lin(va);
    let mut new_frame: Option<PhysFrame> = None;
    let outcome = loop {
        let Some(leaf) = space.leaf(l) else {
            break Err(MapError::NotMapped { va });
        };
        let p = leaf.pte;
        if !p.flags().contains(PageTableFlags::COW) {
            break Ok(FaultOutcome::NotCow);
        }
        if leaf.size != PAGE_SIZE {
            break Err(MapError::HugePageInTheWay { va });
        }
        let old = PhysFrame::containing_address(p.addr());
        if !space.arena().contains(p.addr(), PAGE_SIZE) {
            break Ok(FaultOutcome::NotCow);
        }
        let writable = (p.flags() - PageTableFlags::COW)
            | PageTableFlags::WRITABLE
            | PageTableFlags::DIRTY
            | PageTableFlags::ACCESSED;
        if space.frames().refcount(old) > 1 {
            let new = match new_frame {
                Some(f) => f,
                None => match space.frames().alloc(Zone::Normal) {
                    Ok(f) => {
                        new_frame = Some(f);
                        f
                    }
                    Err(e) => break Err(e.into()),
                },
            };
            if let Err(e) = space.arena().copy_frame(old, new) {
                break Err(e.into());
            }
            let entry = Pte::new(new.start_address(), writable);
            if leaf
                .entry
                .compare_exchange(p, entry, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                continue;
            }
            new_frame = None;
            // Drop this mapping's reference to the old frame; the other sharers keep theirs
            // (if they all dropped theirs meanwhile, this releases it, as it should). It
            // cannot be refused: the mapping held a reference.
            let _ = space.frames().free(old);
            break Ok(FaultOutcome::Copied);
        }
        if leaf
            .entry
            .compare_exchange(
                p,
                p.with_flags(writable),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
        {
            break Ok(FaultOutcome::Reused);
        }
    };
    if let Some(f) = new_frame {
        // Allocated above and never mapped.
        let _ = space.frames().free(f);
    }
    outcome
}

#[cfg(all(test, feature = "loom"))]
mod loom_tests;
#[cfg(all(test, not(feature = "loom")))]
mod swap_tests;
#[cfg(all(test, not(feature = "loom")))]
mod tests;
