//! Walks that change existing entries: permission changes, freeing empty tables, teardown.
//!
//! Ordering rules (see the [`mapper`](super) docs): present leaves are rewritten by
//! compare-exchange loops from the value read (so an `ACCESSED`/`DIRTY` bit set meanwhile by a
//! walker is kept or the update retried); a table is unlinked by compare-exchange of its
//! parent entry before its frame is freed, and only when its whole span is inside the range
//! the caller vouches nobody uses.

use crate::entry::{PageTable, PageTableEntry, PageTableFlags, Pte};
use crate::frame::FrameAllocator;
use crate::page::PhysFrame;
use crate::platform::Platform;
use crate::sync::Ordering;
use crate::tlb::FlushRange;

use super::AddressSpace;
use super::walk::{entry_span, index};

/// PML4 index of the first kernel-half entry.
const KERNEL_PML4_START: usize = 256;

/// The value of leaf `old` after `protect(flags)`.
fn protected(old: Pte, flags: PageTableFlags) -> Pte {
    let kept = PageTableFlags::ACCESSED
        | PageTableFlags::DIRTY
        | PageTableFlags::COW
        | PageTableFlags::HUGE_PAGE;
    let was = old.flags();
    let mut f = (flags - kept) | (was & kept) | PageTableFlags::PRESENT;
    if was.contains(PageTableFlags::COW) {
        // Only the write fault may make a COW page writable (after copying if shared).
        f.remove(PageTableFlags::WRITABLE);
    }
    old.with_flags(f)
}

/// Rewrite the present leaf `entry` (mapping `[ls, ls + size)`) with `flags`.
fn protect_leaf(
    entry: &PageTableEntry,
    flags: PageTableFlags,
    ls: u64,
    size: u64,
    flush: &mut FlushRange,
) {
    let mut cur = entry.load(Ordering::Acquire);
    while cur.is_present() {
        let new = protected(cur, flags);
        if new == cur {
            return;
        }
        match entry.compare_exchange(cur, new, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                flush.add_linear(ls, ls + size);
                return;
            }
            Err(actual) => cur = actual,
        }
    }
}

/// Protect walk over `[s, e)` (huge leaves at the edges already checked).
pub(crate) fn protect<P: Platform>(
    space: &AddressSpace<P>,
    s: u64,
    e: u64,
    flags: PageTableFlags,
    flush: &mut FlushRange,
) {
    protect_level(space, space.root_table(), 4, s, e, flags, flush);
}

fn protect_level<P: Platform>(
    space: &AddressSpace<P>,
    t: &PageTable,
    level: u32,
    s: u64,
    e: u64,
    flags: PageTableFlags,
    flush: &mut FlushRange,
) {
    let span = entry_span(level);
    let mut l = s;
    while l < e {
        let ce = ((l & !(span - 1)) + span).min(e);
        let entry = &t[index(l, level)];
        let p = entry.load(Ordering::Acquire);
        if p.is_present() {
            let ls = l & !(span - 1);
            if level == 1 || p.is_huge() {
                if level < 4 && ls >= s && ls + span <= e {
                    protect_leaf(entry, flags, ls, span, flush);
                }
            } else if let Ok(child) = space.child(p) {
                protect_level(space, child, level - 1, l, ce, flags, flush);
            }
        }
        l = ce;
    }
}

/// Free the empty tables whose span lies inside `[s, e)`; returns how many.
pub(crate) fn clean_up<P: Platform>(space: &AddressSpace<P>, s: u64, e: u64) -> usize {
    let mut freed = 0;
    clean_level(space, space.root_table(), 4, s, e, &mut freed);
    freed
}

fn clean_level<P: Platform>(
    space: &AddressSpace<P>,
    t: &PageTable,
    level: u32,
    s: u64,
    e: u64,
    freed: &mut usize,
) {
    let span = entry_span(level);
    let mut l = s;
    while l < e {
        let ce = ((l & !(span - 1)) + span).min(e);
        let i = index(l, level);
        let entry = &t[i];
        let p = entry.load(Ordering::Acquire);
        let child = if p.is_present() && !p.is_huge() {
            space.child(p).ok()
        } else {
            None
        };
        if let Some(child) = child {
            if level > 2 {
                clean_level(space, child, level - 1, l, ce, freed);
            }
            let whole = l % span == 0 && ce - l == span;
            // Kernel-half PDPTs may be shared with other spaces: permanent, like Linux's
            // preallocated kernel page-table levels.
            let permanent = level == 4 && i >= KERNEL_PML4_START;
            if whole
                && !permanent
                && child.is_empty(Ordering::Acquire)
                && entry
                    .compare_exchange(p, Pte::UNUSED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                // A table frame of this tree, unlinked above: its only reference.
                let _ = space.frames().free(PhysFrame::containing_address(p.addr()));
                *freed += 1;
            }
        }
        l = ce;
    }
}

/// Free the tables below `entry` (an entry of a level-`level` table) and unlink it. Leaves
/// and their frames are left alone (the tree does not own them).
pub(crate) fn free_subtree<P: Platform>(
    frames: &FrameAllocator<P>,
    entry: &PageTableEntry,
    level: u32,
) {
    let p = entry.load(Ordering::Acquire);
    if level < 2 || !p.is_present() || p.is_huge() {
        return;
    }
    let frame = PhysFrame::containing_address(p.addr());
    let Ok(child) = frames.arena().try_table(frame) else {
        // Not a table of the arena (a corrupted entry): nothing of ours to free.
        return;
    };
    if level > 2 {
        for e in child.iter() {
            free_subtree(frames, e, level - 1);
        }
    }
    entry.store(Pte::UNUSED, Ordering::Release);
    // A table frame of this tree, now unlinked: its only reference.
    let _ = frames.free(frame);
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;
    use crate::addr::PhysAddr;

    #[test]
    fn protected_keeps_hardware_bits_and_cow() {
        let f = PageTableFlags::PRESENT
            | PageTableFlags::ACCESSED
            | PageTableFlags::COW
            | PageTableFlags::USER_ACCESSIBLE;
        let old = Pte::new(PhysAddr::new(0x5000), f);
        let new = protected(old, PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE);
        assert_eq!(new.addr(), PhysAddr::new(0x5000));
        assert_eq!(
            new.flags(),
            PageTableFlags::PRESENT
                | PageTableFlags::ACCESSED
                | PageTableFlags::COW
                | PageTableFlags::NO_EXECUTE
        );
        let huge = Pte::new(
            PhysAddr::new(0x20_0000),
            PageTableFlags::PRESENT | PageTableFlags::HUGE_PAGE,
        );
        let new = protected(huge, PageTableFlags::WRITABLE | PageTableFlags::HUGE_PAGE);
        assert!(new.is_huge() && new.flags().contains(PageTableFlags::WRITABLE));
    }
}
