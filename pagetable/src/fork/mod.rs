//! Fork: copying a range of mappings between address spaces ([`copy_range`], Linux's
//! `copy_pte_range`) and breaking copy-on-write on a write fault ([`handle_write_fault`]).
//!
//! How it works. [`copy_range`] first checks the whole range read-only (no huge leaf in the
//! source, nothing mapped in the destination) and allocates every destination table it will
//! need, so it fails before changing anything. It then walks the source's leaf tables; for each
//! one it takes the two page-table locks and copies entries in batches exactly like the seed:
//! a progress count starts at 0, grows by 1 per empty entry and by 8 per copied one, and when
//! it reaches 32 the locks are dropped (Linux drops them when a reschedule is due; here always,
//! the worst case, which keeps batch boundaries deterministic) and the copy resumes at the
//! next address. Each copied entry takes one frame reference ([`FrameAllocator::get`]) and:
//! * private mapping, writable (or already COW): both entries lose `WRITABLE` and gain `COW`;
//! * shared mapping: the child's entry is marked clean (`DIRTY` cleared), writable as before;
//! * always: the child's entry is marked old (`ACCESSED` cleared).
//!
//! Frames outside the arena (device memory) are copied as they are, without reference or COW
//! (Linux's `VM_PFNMAP` case). The destination's rss grows per batch (`add_mm_rss_vec`). The
//! source entries that lost `WRITABLE` need a TLB flush: [`CopyStats::flush`] says where.
//!
//! [`handle_write_fault`] breaks COW: under the space's lock, a `COW` leaf whose frame has more
//! than one reference gets a private copy (new frame, contents copied, mapped writable, one
//! reference on the old frame dropped): [`FaultOutcome::Copied`], after which the old
//! translation must be flushed from other CPUs ([`FaultOutcome::needs_flush`]); with a single
//! reference the frame is simply made writable again: [`FaultOutcome::Reused`] (an upgrade:
//! no flush needed). A leaf without `COW` is [`FaultOutcome::NotCow`] (a genuine protection
//! fault, or a spurious one if the leaf is already writable).
//!
//! Locking and ordering rules:
//! * Each space has a page-table lock (`ptl`, a `sync::Mutex<()>`); `copy_range` holds both
//!   spaces' locks during a batch, always taking the lower space id first (so concurrent
//!   copies in opposite directions cannot deadlock), and `handle_write_fault` holds its
//!   space's lock. So a COW decision (reference count, entry update) never interleaves with
//!   a copy of the same space's entries.
//! * As for fork's `mmap_lock`, the caller keeps other mappers off both ranges during
//!   `copy_range` (map/unmap take no `ptl`). Leaf updates of the source use compare-exchange
//!   loops (the TLB model's walker may set `ACCESSED`/`DIRTY` meanwhile); the destination's
//!   leaves are stored with `Release` after the frame reference is taken; destination tables
//!   are installed by compare-exchange like every table.
//! * The COW copy is published by a compare-exchange with `Release`, so a walker that sees the
//!   new leaf sees the copied contents.

use crate::addr::VirtAddr;
use crate::entry::{PageTable, PageTableEntry, PageTableFlags, Pte};
use crate::frame::{FrameAllocator, Zone};
use crate::mapper::{
    AddressSpace, MapError, TableStash, checked_bounds, descend_create, entry_span, index,
    leaf_table,
};
use crate::page::{PAGE_SIZE, PhysFrame};
use crate::sync::{Arc, MutexGuard, Ordering};
use crate::tlb::{FlushRange, from_lin, lin};

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
    /// Entries copied.
    pub copied: u64,
    /// Empty entries skipped inside existing source leaf tables.
    pub empty: u64,
    /// Lock hold periods (batches).
    pub batches: u64,
    /// Source leaves that were write-protected (COW) and need a TLB flush in the source.
    pub flush: FlushRange,
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

/// The seed's batch limit and weights.
const PROGRESS_LIMIT: u32 = 32;
const PROGRESS_EMPTY: u32 = 1;
const PROGRESS_COPIED: u32 = 8;

/// Lock both spaces' page-table locks, lower id first.
fn lock_pair<'a>(
    a: &'a AddressSpace,
    b: &'a AddressSpace,
) -> (MutexGuard<'a, ()>, MutexGuard<'a, ()>) {
    if a.id() < b.id() {
        let ga = a.ptl().lock();
        (ga, b.ptl().lock())
    } else {
        let gb = b.ptl().lock();
        (a.ptl().lock(), gb)
    }
}

/// Copy the mappings of `[start, end)` (range ends as in the [`crate::tlb`] docs) from `src`
/// to `dst` (seed 001's `copy_pte_range`; see the module docs).
///
/// Errors before anything changed: [`MapError::IncompatibleSpaces`] (same space, or different
/// frame allocators), [`MapError::Misaligned`], [`MapError::InvalidRange`],
/// [`MapError::HugePageInTheWay`] (a huge leaf in the source range),
/// [`MapError::AlreadyMapped`] (something mapped in the destination range: it must be
/// empty, as a new child's is),
/// [`MapError::OutOfFrames`] (destination tables).
pub fn copy_range(
    dst: &AddressSpace,
    src: &AddressSpace,
    start: VirtAddr,
    end: VirtAddr,
    kind: VmaKind,
) -> Result<CopyStats, MapError> {
    if dst.id() == src.id() || !Arc::ptr_eq(dst.frames(), src.frames()) {
        return Err(MapError::IncompatibleSpaces);
    }
    let (s, e) = checked_bounds(start, end)?;
    let mut stats = CopyStats::default();
    if s >= e {
        return Ok(stats);
    }
    let need = plan(dst, src, s, e)?;
    let mut stash = TableStash::new(dst.frames());
    stash.fill(need)?;

    let pt_span = entry_span(2);
    let mut l = s;
    while l < e {
        let chunk_end = ((l & !(pt_span - 1)) + pt_span).min(e);
        if let Some(src_pt) = leaf_table(src, l)? {
            let dst_pt = descend_create(dst, l, &mut stash)?;
            copy_pt(dst, src, src_pt, dst_pt, l, chunk_end, kind, &mut stats);
        }
        l = chunk_end;
    }
    Ok(stats)
}

/// Check `[s, e)` and count the destination tables a copy needs.
fn plan(dst: &AddressSpace, src: &AddressSpace, s: u64, e: u64) -> Result<usize, MapError> {
    if let Some(m) = dst.mappings(from_lin(s), e - s).next() {
        let va = if lin(m.va) < s { from_lin(s) } else { m.va };
        return Err(MapError::AlreadyMapped { va });
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

/// The start of the next 2 MiB chunk after `l` whose source tables may exist, skipping
/// missing PDPT/PD subtrees whole.
fn next_present_chunk(src: &AddressSpace, l: u64, e: u64) -> u64 {
    let mut t = src.root_table();
    for level in (2..=4u32).rev() {
        let span = entry_span(level);
        let p = t[index(l, level)].load(Ordering::Acquire);
        match src.child(p) {
            Ok(c) if p.is_present() && !p.is_huge() => t = c,
            _ => return ((l & !(span - 1)) + span).min(e),
        }
    }
    ((l & !(entry_span(2) - 1)) + entry_span(2)).min(e)
}

/// The batched copy of one leaf table's part `[l, chunk_end)`.
#[allow(clippy::too_many_arguments)]
fn copy_pt(
    dst: &AddressSpace,
    src: &AddressSpace,
    src_pt: &PageTable,
    dst_pt: &PageTable,
    mut l: u64,
    chunk_end: u64,
    kind: VmaKind,
    stats: &mut CopyStats,
) {
    let frames = src.frames();
    let mut progress = 0;
    while l < chunk_end {
        let guards = lock_pair(dst, src);
        stats.batches += 1;
        let mut rss = 0;
        loop {
            if progress >= PROGRESS_LIMIT {
                progress = 0;
                break;
            }
            let i = index(l, 1);
            if copy_one(frames, &src_pt[i], &dst_pt[i], l, kind, &mut stats.flush) {
                progress += PROGRESS_COPIED;
                stats.copied += 1;
                rss += 1;
            } else {
                progress += PROGRESS_EMPTY;
                stats.empty += 1;
            }
            l += PAGE_SIZE;
            if l >= chunk_end {
                break;
            }
        }
        dst.add_rss(rss);
        drop(guards);
    }
}

/// Copy one source leaf into the (unused) destination slot; false if the source is empty.
fn copy_one(
    frames: &FrameAllocator,
    src_entry: &PageTableEntry,
    dst_entry: &PageTableEntry,
    l: u64,
    kind: VmaKind,
    flush: &mut FlushRange,
) -> bool {
    'again: loop {
        let mut cur = src_entry.load(Ordering::Acquire);
        if !cur.is_present() {
            return false;
        }
        let frame = PhysFrame::containing_address(cur.addr());
        // The child's reference. A frame the allocator does not count (outside the arena, or
        // never allocated from it: device memory, a caller's own memory) is copied as is,
        // without COW (Linux's `VM_PFNMAP`).
        let managed = frames.get(frame).is_ok();
        loop {
            let mut flags = cur.flags();
            if kind == VmaKind::Private
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
                        Ok(_) => flush.add_linear(l, l + PAGE_SIZE),
                        Err(actual) if actual.is_present() && actual.addr() == cur.addr() => {
                            // Only ACCESSED/DIRTY changed (a walker): recompute.
                            cur = actual;
                            continue;
                        }
                        Err(_) => {
                            // The leaf was replaced meanwhile (outside the rules): drop our
                            // reference and start over.
                            if managed {
                                let _ = frames.free(frame);
                            }
                            continue 'again;
                        }
                    }
                }
            }
            if kind == VmaKind::Shared {
                flags.remove(PageTableFlags::DIRTY);
            }
            flags.remove(PageTableFlags::ACCESSED);
            dst_entry.store(cur.with_flags(flags), Ordering::Release);
            return true;
        }
    }
}

/// Resolve a write fault at `va` in `space` (see the module docs). Errors:
/// [`MapError::NotMapped`], [`MapError::HugePageInTheWay`] (a COW huge leaf: not supported),
/// [`MapError::OutOfFrames`] (nothing changed).
pub fn handle_write_fault(space: &AddressSpace, va: VirtAddr) -> Result<FaultOutcome, MapError> {
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

#[cfg(all(test, not(feature = "loom")))]
mod tests;
