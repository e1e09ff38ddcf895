//! The recursive range walks behind [`AddressSpace`]'s operations.
//!
//! Every walk descends from the root over a linear range `[s, e)` (48-bit linear addresses,
//! see [`crate::tlb`]), visiting each table entry of the range once; the leaf level is a slice
//! of a leaf table handled by one loop. Locking and ordering rules are those of the
//! [`mapper`](super) module: table installs by `compare_exchange(AcqRel)`, table loads
//! `Acquire`, leaf stores `Release` under the ownership rule, leaf updates of present entries
//! by compare-exchange loops.

use crate::addr::VirtAddr;
use crate::entry::{PageTable, PageTableEntry, PageTableFlags, Pte};
use crate::frame::{FrameAllocator, Zone};
use crate::page::{ENTRIES_PER_TABLE, PAGE_SIZE, PhysFrame};
use crate::platform::Platform;
use crate::sync::Ordering;
use crate::tlb::{FlushRange, LINEAR_END, from_lin, lin, lin_end};
use alloc::vec::Vec;

use super::{AddressSpace, MapError};

/// First linear address of the upper (kernel) half.
const UPPER_HALF: u64 = 1 << 47;

/// Bytes covered by one entry of a level-`level` table (1 = leaf table .. 4 = PML4).
#[inline]
pub(crate) const fn entry_span(level: u32) -> u64 {
    1 << (12 + 9 * (level - 1))
}

/// Index of linear address `l` in its level-`level` table.
#[inline]
pub(crate) const fn index(l: u64, level: u32) -> usize {
    ((l >> (12 + 9 * (level - 1))) & (ENTRIES_PER_TABLE as u64 - 1)) as usize
}

/// The entry chunks of `[s, e)` at `level`: (index, chunk start, chunk end).
#[inline]
fn chunks(level: u32, s: u64, e: u64) -> impl Iterator<Item = (usize, u64, u64)> {
    let span = entry_span(level);
    let mut l = s;
    core::iter::from_fn(move || {
        if l >= e {
            return None;
        }
        let ce = ((l & !(span - 1)) + span).min(e);
        let r = (index(l, level), l, ce);
        l = ce;
        Some(r)
    })
}

/// Validate `[va, va + len)`: page aligned, inside one half. Returns linear bounds.
#[inline]
pub(crate) fn checked_range(va: VirtAddr, len: u64) -> Result<(u64, u64), MapError> {
    for addr in [va.as_u64(), len] {
        if addr % PAGE_SIZE != 0 {
            return Err(MapError::Misaligned {
                addr,
                align: PAGE_SIZE,
            });
        }
    }
    if len > 0 && va.checked_add(len - 1).is_none() {
        return Err(MapError::InvalidRange {
            start: va.as_u64(),
            len,
        });
    }
    let s = lin(va);
    Ok((s, s + len))
}

/// Validate `[start, end)` given as an address pair (ends as in the [`crate::tlb`] docs):
/// page aligned, `start <= end`, inside one half. Returns linear bounds.
pub(crate) fn checked_bounds(start: VirtAddr, end: VirtAddr) -> Result<(u64, u64), MapError> {
    for a in [start.as_u64(), end.as_u64()] {
        if a % PAGE_SIZE != 0 {
            return Err(MapError::Misaligned {
                addr: a,
                align: PAGE_SIZE,
            });
        }
    }
    let (s, e) = (lin(start), lin_end(end));
    let bad = MapError::InvalidRange {
        start: start.as_u64(),
        len: e.wrapping_sub(s),
    };
    if e < s || e > LINEAR_END {
        return Err(bad);
    }
    if e > s && (s < UPPER_HALF) != (e - 1 < UPPER_HALF) {
        return Err(bad);
    }
    Ok((s, e))
}

/// Flags of an entry pointing at a table for linear address `l`: present, writable, and
/// user-accessible in the lower half (leaves carry the real permissions, as on Linux).
#[inline]
fn table_flags(l: u64) -> PageTableFlags {
    if l < UPPER_HALF {
        PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::USER_ACCESSIBLE
    } else {
        PageTableFlags::PRESENT | PageTableFlags::WRITABLE
    }
}

/// Zeroed frames set aside for the tables a walk will install; leftovers are freed on drop.
pub(crate) struct TableStash<'a, P: Platform> {
    frames: &'a FrameAllocator<P>,
    stash: Vec<PhysFrame>,
    /// Tables installed from this stash: (linear base of the table's span, table level).
    installed: Vec<(u64, u32)>,
}

impl<'a, P: Platform> TableStash<'a, P> {
    pub(crate) fn new(frames: &'a FrameAllocator<P>) -> Self {
        Self {
            frames,
            stash: Vec::new(),
            installed: Vec::new(),
        }
    }

    /// Allocate `n` zeroed frames (all or nothing: on failure the ones taken are freed).
    pub(crate) fn fill(&mut self, n: usize) -> Result<(), MapError> {
        self.stash.reserve(n);
        for _ in 0..n {
            match self.frames.alloc_zeroed(Zone::Normal) {
                Ok(f) => self.stash.push(f),
                Err(e) => {
                    // Frames we just allocated: freeing them cannot be refused.
                    let _ = self.frames.free_bulk(&self.stash);
                    self.stash.clear();
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// A zeroed frame: from the stash, or freshly allocated if the stash ran dry.
    fn take(&mut self) -> Result<PhysFrame, MapError> {
        match self.stash.pop() {
            Some(f) => Ok(f),
            None => Ok(self.frames.alloc_zeroed(Zone::Normal)?),
        }
    }

    /// The tables installed from this stash, in installation order.
    pub(crate) fn installed(&self) -> &[(u64, u32)] {
        &self.installed
    }

    /// Return a frame that was not installed (still zero).
    fn give_back(&mut self, f: PhysFrame) {
        self.stash.push(f);
    }
}

impl<P: Platform> Drop for TableStash<'_, P> {
    fn drop(&mut self) {
        if !self.stash.is_empty() {
            // Frames allocated by `fill`/`take` and never installed: freeing them cannot be
            // refused.
            let _ = self.frames.free_bulk(&self.stash);
        }
    }
}

impl<P: Platform> AddressSpace<P> {
    /// The table a present, non-huge entry value points at; [`MapError::Arena`] if it points
    /// outside the arena (a corrupted entry: only possible if a page table was written to as
    /// data).
    #[inline]
    pub(crate) fn child(&self, p: Pte) -> Result<&PageTable, MapError> {
        Ok(self
            .arena()
            .try_table(PhysFrame::containing_address(p.addr()))?)
    }

    /// The present leaf mapping linear address `l`, if any.
    ///
    /// The hot path of `translate` and of the TLB model's page walk: the arena's table slice
    /// and base are fetched once, and each level is one bounds-checked index into that slice
    /// (the arithmetic of `PhysArena::table_at`), so an entry pointing outside the arena reads
    /// as "not mapped".
    #[inline]
    pub(crate) fn leaf(&self, l: u64) -> Option<Leaf<'_>> {
        // As `PhysArena::table_at`, with the base and slice held in registers for the walk.
        let tables = self.arena().tables();
        let table = |pa: u64| tables.get(pa);
        let mut t = table(self.root.start_address().as_u64())?;
        for level in [4, 3, 2] {
            let entry = &t[index(l, level)];
            let pte = entry.load(Ordering::Acquire);
            if !pte.is_present() {
                return None;
            }
            if pte.is_huge() {
                // HUGE_PAGE is reserved at PML4 level: never a leaf there.
                return (level != 4).then_some(Leaf {
                    entry,
                    pte,
                    size: entry_span(level),
                });
            }
            t = table(pte.addr().as_u64())?;
        }
        let entry = &t[index(l, 1)];
        let pte = entry.load(Ordering::Acquire);
        pte.is_present().then_some(Leaf {
            entry,
            pte,
            size: PAGE_SIZE,
        })
    }
}

/// A present leaf entry: where it is, what it held, and the size it maps.
pub(crate) struct Leaf<'a> {
    /// The entry slot.
    pub(crate) entry: &'a PageTableEntry,
    /// Its value when read.
    pub(crate) pte: Pte,
    /// Bytes mapped (4 KiB, 2 MiB or 1 GiB).
    pub(crate) size: u64,
}

impl Leaf<'_> {
    /// Physical address of the leaf's first byte.
    #[inline]
    pub(crate) fn base(&self) -> u64 {
        self.pte.addr().as_u64() & !(self.size - 1)
    }
}

/// The table behind `entry` (an entry of a level-`level` table, for linear `l`), installing
/// a zeroed one from `stash` if it is unused.
pub(crate) fn next_or_install<'s, P: Platform>(
    space: &'s AddressSpace<P>,
    entry: &PageTableEntry,
    level: u32,
    l: u64,
    stash: &mut TableStash<'_, P>,
) -> Result<&'s PageTable, MapError> {
    let va = from_lin(l);
    let cur = entry.load(Ordering::Acquire);
    if cur.is_present() {
        return if cur.is_huge() {
            Err(MapError::HugePageInTheWay { va })
        } else {
            space.child(cur)
        };
    }
    let frame = stash.take()?;
    let new = Pte::new(frame.start_address(), table_flags(l));
    match entry.compare_exchange(Pte::UNUSED, new, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            stash
                .installed
                .push((l & !(entry_span(level) - 1), level - 1));
            Ok(space.arena().table(frame))
        }
        Err(actual) => {
            // Another thread installed a table first: use it, keep our frame for later.
            stash.give_back(frame);
            if !actual.is_present() {
                // Entries are unused or present; anything else is not ours to interpret.
                Err(MapError::AlreadyMapped { va })
            } else if actual.is_huge() {
                Err(MapError::HugePageInTheWay { va })
            } else {
                space.child(actual)
            }
        }
    }
}

/// The leaf table covering linear `l`, creating missing tables from `stash`.
pub(crate) fn descend_create<'s, P: Platform>(
    space: &'s AddressSpace<P>,
    l: u64,
    stash: &mut TableStash<'_, P>,
) -> Result<&'s PageTable, MapError> {
    let mut t = space.root_table();
    for level in (2..=4).rev() {
        t = next_or_install(space, &t[index(l, level)], level, l, stash)?;
    }
    Ok(t)
}

/// The existing leaf table covering linear `l` (`Ok(None)` if a table on the way is
/// missing; [`MapError::HugePageInTheWay`] if a huge leaf covers `l`).
pub(crate) fn leaf_table<P: Platform>(
    space: &AddressSpace<P>,
    l: u64,
) -> Result<Option<&PageTable>, MapError> {
    let mut t = space.root_table();
    for level in (2..=4).rev() {
        let p = t[index(l, level)].load(Ordering::Acquire);
        if !p.is_present() {
            return Ok(None);
        }
        if p.is_huge() {
            return Err(MapError::HugePageInTheWay { va: from_lin(l) });
        }
        t = space.child(p)?;
    }
    Ok(Some(t))
}

/// [`MapError::HugePageInTheWay`] if a huge leaf covers `s` or `e - 1` and reaches outside
/// `[s, e)` (only the edges of a range can cut a leaf).
pub(crate) fn check_huge_edges<P: Platform>(
    space: &AddressSpace<P>,
    s: u64,
    e: u64,
) -> Result<(), MapError> {
    for l in [s, e - 1] {
        if let Some(leaf) = space.leaf(l) {
            let ls = l & !(leaf.size - 1);
            if leaf.size > PAGE_SIZE && (ls < s || ls + leaf.size > e) {
                return Err(MapError::HugePageInTheWay { va: from_lin(l) });
            }
        }
    }
    Ok(())
}

/// The entries of one leaf table an unmap cleared: first and last index, how many.
struct Cleared {
    first: usize,
    last: usize,
    count: usize,
}

impl Default for Cleared {
    fn default() -> Self {
        Self {
            first: usize::MAX,
            last: 0,
            count: 0,
        }
    }
}

impl Cleared {
    /// Entries `k .. k + n` were cleared (in increasing `k` order).
    #[inline(always)]
    fn add(&mut self, k: usize, n: usize) {
        self.first = self.first.min(k);
        self.last = k + n - 1;
        self.count += n;
    }
}

/// Clear leaf `entry`, whose value was `p`, and report its frame; false if it was unused.
#[inline(always)]
fn clear_entry<F: FnMut(crate::addr::PhysAddr, u64)>(
    entry: &PageTableEntry,
    p: Pte,
    f: &mut F,
) -> bool {
    if p.is_unused() {
        return false;
    }
    // Ownership rule: nobody else stores to this entry (see the mapper docs); a walker's
    // A/D update racing with this store is lost with the mapping.
    entry.store(Pte::UNUSED, Ordering::Release);
    // A non-present leaf (a swap or migration entry made by `fork`) maps no frame: nothing to
    // report (its offset is not a frame address). It still counts as a cleared page, as it
    // counted in rss when it was installed or copied.
    if p.flags().contains(crate::entry::PageTableFlags::PRESENT) {
        f(p.addr(), PAGE_SIZE);
    }
    true
}

/// Unmap walk: clear every leaf in `[s, e)`, report it to `f` and to `flush`. Returns the
/// number of 4 KiB pages unmapped.
pub(crate) fn clear<P: Platform, F: FnMut(crate::addr::PhysAddr, u64)>(
    space: &AddressSpace<P>,
    s: u64,
    e: u64,
    f: &mut F,
    flush: &mut FlushRange,
) -> usize {
    let mut pages = 0;
    clear_level(space, space.root_table(), 4, s, e, f, flush, &mut pages);
    pages
}

#[allow(clippy::too_many_arguments)]
fn clear_level<P: Platform, F: FnMut(crate::addr::PhysAddr, u64)>(
    space: &AddressSpace<P>,
    t: &PageTable,
    level: u32,
    s: u64,
    e: u64,
    f: &mut F,
    flush: &mut FlushRange,
    pages: &mut usize,
) {
    if level == 1 {
        *pages += clear_leaves(t, s, e, f, flush);
        return;
    }
    for (i, l, ce) in chunks(level, s, e) {
        let entry = &t[i];
        let p = entry.load(Ordering::Acquire);
        if !p.is_present() {
            continue;
        }
        if p.is_huge() {
            let span = entry_span(level);
            let ls = l & !(span - 1);
            // `check_huge_edges` made sure the leaf is inside the range; a leaf that is not
            // (only possible if the ownership rule was broken) is left alone.
            if ls >= s && ls + span <= e {
                entry.store(Pte::UNUSED, Ordering::Release);
                f(
                    crate::addr::PhysAddr::new_truncate(p.addr().as_u64() & !(span - 1)),
                    span,
                );
                *pages += (span / PAGE_SIZE) as usize;
                flush.add_linear(ls, ls + span);
            }
            continue;
        }
        if let Ok(child) = space.child(p) {
            clear_level(space, child, level - 1, l, ce, f, flush, pages);
        }
    }
}

/// Clear the leaves of `[s, e)` (inside the one leaf table `t`), report each to `f` and the
/// span cleared to `flush`. Returns the number of pages cleared.
#[inline]
fn clear_leaves<F: FnMut(crate::addr::PhysAddr, u64)>(
    t: &PageTable,
    s: u64,
    e: u64,
    f: &mut F,
    flush: &mut FlushRange,
) -> usize {
    let i0 = index(s, 1);
    let entries = &t.entries()[i0..i0 + ((e - s) / PAGE_SIZE) as usize];
    let mut span = Cleared::default();
    let mut k = 0;
    // Whole cache lines (8 entries) first: one test for "all present", then a straight
    // store-and-report run (the common case, and half the time of entry-by-entry
    // bookkeeping); mixed lines and the tail go entry by entry.
    for line in entries.chunks_exact(8) {
        let v: [Pte; 8] = core::array::from_fn(|j| line[j].load(Ordering::Relaxed));
        if v.iter().all(|p| !p.is_unused()) {
            for (entry, p) in line.iter().zip(v) {
                clear_entry(entry, p, f);
            }
            span.add(k, 8);
        } else {
            for (j, (entry, p)) in line.iter().zip(v).enumerate() {
                if clear_entry(entry, p, f) {
                    span.add(k + j, 1);
                }
            }
        }
        k += 8;
    }
    for (j, entry) in entries[k..].iter().enumerate() {
        if clear_entry(entry, entry.load(Ordering::Relaxed), f) {
            span.add(k + j, 1);
        }
    }
    if span.count > 0 {
        flush.add_linear(
            s + span.first as u64 * PAGE_SIZE,
            s + (span.last as u64 + 1) * PAGE_SIZE,
        );
    }
    span.count
}

/// Whether `[s, e)` (non-empty) lies inside the span of one leaf table (one 2 MiB chunk):
/// the range of the fast paths.
#[inline]
pub(crate) fn in_one_leaf_table(s: u64, e: u64) -> bool {
    (s ^ (e - 1)) < entry_span(2)
}

/// What the one walk of a fast path found above linear `l`.
pub(crate) enum Above<'a> {
    /// The leaf table covering `l`.
    Table(&'a PageTable),
    /// A table on the way is missing: nothing is mapped in that table's span.
    Hole,
    /// A huge leaf covers `l`, or an entry points outside the arena: take the general path.
    Other,
}

/// One walk from the root to the leaf table covering linear `l`, with `Acquire` loads (a
/// table whose entry we see is seen zeroed or newer, as for every walk).
#[inline]
pub(crate) fn above<P: Platform>(space: &AddressSpace<P>, l: u64) -> Above<'_> {
    // As in `leaf`: the arena's table slice and base are fetched once into registers (an
    // `Acquire` load would otherwise make the compiler re-read them at every level), and each
    // level is one bounds-checked index into the slice.
    let tables = space.arena().tables();
    let table = |pa: u64| tables.get(pa);
    let Some(mut t) = table(space.root().start_address().as_u64()) else {
        return Above::Other;
    };
    for level in [4, 3, 2] {
        let p = t[index(l, level)].load(Ordering::Acquire);
        if !p.is_present() {
            return Above::Hole;
        }
        if p.is_huge() {
            return Above::Other;
        }
        t = match table(p.addr().as_u64()) {
            Some(c) => c,
            None => return Above::Other,
        };
    }
    Above::Table(t)
}

/// Fast unmap of a non-empty `[s, e)` inside one leaf table: ONE walk that also serves as the
/// huge-edge check (a leaf table on the way means no huge leaf covers the range; a missing
/// table means nothing to clear), then the leaf loop. `None`: a huge leaf (or a corrupted
/// entry) is on the way, the caller takes the general path, which changed nothing yet.
#[inline]
pub(crate) fn clear_fast<P: Platform, F: FnMut(crate::addr::PhysAddr, u64)>(
    space: &AddressSpace<P>,
    s: u64,
    e: u64,
    f: &mut F,
    flush: &mut FlushRange,
) -> Option<usize> {
    debug_assert!(s < e && in_one_leaf_table(s, e));
    match above(space, s) {
        Above::Table(t) => Some(clear_leaves(t, s, e, f, flush)),
        Above::Hole => Some(0),
        Above::Other => None,
    }
}
