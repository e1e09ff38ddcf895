//! Undoing a [`copy_range`](super::copy_range) that failed part-way (a swap-count continuation
//! could not be allocated, see [`super::swap`]).
//!
//! How it works. While it copies, `copy_range` records, as runs of consecutive pages, what it
//! did that must be undone: child entries that took a frame reference, child swap entries whose
//! count it raised, source leaves it write-protected for COW, and source write migration
//! entries it made read. [`roll_back`] then, under both page-table locks: clears the child's
//! entries in the part copied (dropping the references and swap counts recorded, and the rss
//! it added), gives the source back `WRITABLE` (without `COW`) where it took it and the write
//! migration entries it downgraded, and frees the child's tables this call installed whose
//! whole span lies inside the range (like a failed map; a table reaching outside stays linked,
//! owned by the tree).
//!
//! Linux does not undo: `copy_pte_range` returns `-ENOMEM` with the part copied left in the
//! child, and fork's error path tears the whole child down (`mmput` -> `exit_mmap`), leaving
//! the parent write-protected and flushing its TLB. Here nothing else knows how to drop a
//! child's swap counts, so the copy undoes its own part, and the parent gets its permissions
//! back, which is an upgrade: no flush is needed (a CPU that cached the read-only COW leaf
//! meanwhile takes a spurious fault, [`FaultOutcome::NotCow`](super::FaultOutcome::NotCow)).
//!
//! Ordering: the child's entries are cleared by atomic swaps and the source's restored by
//! compare-exchange loops (a walker may set `ACCESSED`/`DIRTY` meanwhile), under both `ptl`s,
//! so no write fault interleaves. A source leaf that a write fault changed since (copied or
//! reused: no longer `COW`) is left as the fault made it.

use crate::entry::{PageTable, PageTableEntry, PageTableFlags, Pte};
use crate::mapper::{AddressSpace, TableStash, entry_span, index, leaf_table};
use crate::page::{PAGE_SIZE, PhysFrame};
use crate::platform::Platform;
use crate::sync::Ordering;
use alloc::vec::Vec;

use super::lock_pair;
use super::swap::{SwapEntry, SwapKind, SwapMap};

/// Pages as sorted runs `[start, end)` of linear addresses, added in increasing order.
#[derive(Debug, Default)]
pub(super) struct Runs(Vec<(u64, u64)>);

impl Runs {
    /// Add page `l` (not below any page added before).
    pub(super) fn add(&mut self, l: u64) {
        match self.0.last_mut() {
            Some(last) if last.1 == l => last.1 += PAGE_SIZE,
            _ => self.0.push((l, l + PAGE_SIZE)),
        }
    }

    /// Whether page `l` was added.
    pub(super) fn contains(&self, l: u64) -> bool {
        let i = self.0.partition_point(|&(_, e)| e <= l);
        self.0.get(i).is_some_and(|&(s, _)| s <= l)
    }

    /// Every page added, in order.
    fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        self.0
            .iter()
            .flat_map(|&(s, e)| (s..e).step_by(PAGE_SIZE as usize))
    }
}

/// What a copy did that a failure must undo (see the module docs).
#[derive(Debug, Default)]
pub(super) struct Undo {
    /// Child entries holding a frame reference taken by the copy.
    pub(super) referenced: Runs,
    /// Child swap entries whose slot count the copy raised.
    pub(super) counted: Runs,
    /// Source leaves the copy write-protected (`WRITABLE` -> `COW`).
    pub(super) protected: Runs,
    /// Source write migration entries the copy made read.
    pub(super) downgraded: Runs,
}

/// The leaf-table entry for linear `l` in `space`, if its leaf table exists.
fn slot<P: Platform>(space: &AddressSpace<P>, l: u64) -> Option<&PageTableEntry> {
    let t: &PageTable = leaf_table(space, l).ok()??;
    Some(&t[index(l, 1)])
}

/// Undo the copy of `[s, stop)` (of the range `[s, e)`) from `src` to `dst` (see the module
/// docs).
pub(super) fn roll_back<P: Platform>(
    dst: &AddressSpace<P>,
    src: &AddressSpace<P>,
    swap: Option<&SwapMap<P>>,
    range: (u64, u64, u64),
    undo: &Undo,
    stash: &TableStash<'_, P>,
) {
    let (s, stop, e) = range;
    let _guards = lock_pair(dst, src);
    let frames = dst.frames();

    // The child's part: everything there was stored by this copy (the range was empty).
    let pt_span = entry_span(2);
    let mut cleared = 0usize;
    let mut l = s;
    while l < stop {
        let chunk_end = ((l & !(pt_span - 1)) + pt_span).min(stop);
        if let Ok(Some(t)) = leaf_table(dst, l) {
            for x in (l..chunk_end).step_by(PAGE_SIZE as usize) {
                let p = t[index(x, 1)].swap(Pte::UNUSED, Ordering::AcqRel);
                if p.is_unused() {
                    continue;
                }
                cleared += 1;
                if p.is_present() {
                    // The copy's reference, or the private frame a write fault of the child
                    // replaced it with (the fault dropped the copy's reference then).
                    if undo.referenced.contains(x) {
                        let _ = frames.free(PhysFrame::containing_address(p.addr()));
                    }
                } else if undo.counted.contains(x) {
                    if let (Some(m), Some(se)) = (swap, SwapEntry::from_pte(p)) {
                        m.free(se);
                    }
                }
            }
        }
        l = chunk_end;
    }
    // The per-CPU rss counters are wrapping sums (see `AddressSpace::rss`): adding the
    // two's complement takes back what the batches added.
    dst.add_rss(cleared.wrapping_neg());

    // The source's permissions.
    for x in undo.protected.pages() {
        let Some(entry) = slot(src, x) else { continue };
        let mut cur = entry.load(Ordering::Acquire);
        loop {
            let f = cur.flags();
            if !cur.is_present() || !f.contains(PageTableFlags::COW) {
                break;
            }
            let back = cur.with_flags((f - PageTableFlags::COW) | PageTableFlags::WRITABLE);
            match entry.compare_exchange(cur, back, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
    }
    for x in undo.downgraded.pages() {
        let Some(entry) = slot(src, x) else { continue };
        let cur = entry.load(Ordering::Acquire);
        if let Some(se) = SwapEntry::from_pte(cur) {
            if se.kind() == SwapKind::MigrationRead {
                // Non-present: no walker writes it; a failure means someone else did.
                let back = se.to_write_migration().pte();
                let _ = entry.compare_exchange(cur, back, Ordering::AcqRel, Ordering::Acquire);
            }
        }
    }

    free_installed_tables(dst, stash, s, e);
}

/// Free the tables `stash` installed in `space` whose whole span lies inside `[s, e)` and
/// that are empty, deepest first (as a failed map's rollback does).
fn free_installed_tables<P: Platform>(
    space: &AddressSpace<P>,
    stash: &TableStash<'_, P>,
    s: u64,
    e: u64,
) {
    for &(base, level) in stash.installed().iter().rev() {
        let span = entry_span(level + 1);
        if base < s || base + span > e {
            continue;
        }
        // Walk down to the parent table (level + 1).
        let mut t = space.root_table();
        let mut parent_level = 4;
        while parent_level > level + 1 {
            let p = t[index(base, parent_level)].load(Ordering::Acquire);
            match space.child(p) {
                Ok(c) if p.is_present() && !p.is_huge() => t = c,
                _ => break,
            }
            parent_level -= 1;
        }
        if parent_level != level + 1 {
            continue;
        }
        let entry = &t[index(base, parent_level)];
        let p = entry.load(Ordering::Acquire);
        if p.is_present()
            && !p.is_huge()
            && space.child(p).is_ok_and(|c| c.is_empty(Ordering::Acquire))
            && entry
                .compare_exchange(p, Pte::UNUSED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // A table this copy installed inside its own range, now empty and unlinked.
            let _ = space.frames().free(PhysFrame::containing_address(p.addr()));
        }
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn runs_merge_and_answer_membership() {
        let mut r = Runs::default();
        for l in [0x1000, 0x2000, 0x3000, 0x8000, 0x9000] {
            r.add(l);
        }
        assert_eq!(r.0, vec![(0x1000, 0x4000), (0x8000, 0xa000)]);
        for (l, want) in [
            (0, false),
            (0x1000, true),
            (0x3000, true),
            (0x4000, false),
            (0x7000, false),
            (0x9000, true),
            (0xa000, false),
        ] {
            assert_eq!(r.contains(l), want, "{l:#x}");
        }
        assert_eq!(
            r.pages().collect::<Vec<_>>(),
            vec![0x1000, 0x2000, 0x3000, 0x8000, 0x9000]
        );
    }
}
