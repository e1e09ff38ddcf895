//! Building mappings: the two walks of [`AddressSpace::map`] / `map_contiguous` /
//! `populate`, and the rollback of a map that found a page already mapped.
//!
//! How it works. The *plan* walk visits the table levels above the leaves only: it counts the
//! tables the range lacks and rejects a huge leaf in the way. The caller then allocates that
//! many zeroed frames (all or nothing), so a map runs out of frames before it changes
//! anything. The *build* walk installs the tables from that stash and fills each leaf-table
//! slice in one loop that checks each entry is unused as it stores it: the check costs no
//! extra pass over memory because the store has to bring the cache line in anyway. If an
//! entry is in use, the build stops and [`rollback`] clears the leaves written so far (all in
//! `[s, conflict)`, which the caller owns) and frees the tables this map installed whose whole
//! span lies inside the range: under the ownership rule nobody else can have reached such a
//! table. Tables it installed that reach outside the range stay linked (they are not leaked:
//! the tree owns them, `clean_up` and drop free them), because another mapper of a
//! neighbouring range may already be using them.
//!
//! Ordering: as in the [`mapper`](super) docs (installs by `AcqRel` compare-exchange, leaves
//! stored with `Release` by their owner).

use crate::addr::VirtAddr;
use crate::entry::{PageTable, PageTableEntry, PageTableFlags, Pte};
use crate::page::{PAGE_SIZE, PhysFrame, Size2MiB};
use crate::platform::Platform;
use crate::sync::Ordering;
use crate::tlb::from_lin;

use super::walk::{TableStash, clear, entry_span, index, next_or_install};
use super::{AddressSpace, MapError};

/// What a build walk does at the leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Map leaves; `huge`: 2 MiB leaves where a whole aligned 2 MiB chunk is in the range
    /// (the caller checked the physical alignment).
    Map {
        /// Use 2 MiB leaves where possible.
        huge: bool,
    },
    /// Create tables only.
    Populate,
}

impl Plan {
    /// Whether chunk `[l, ce)` of a level-2 table becomes one 2 MiB leaf.
    #[inline]
    fn huge_leaf(self, l: u64, ce: u64) -> bool {
        matches!(self, Plan::Map { huge: true }) && ce - l == entry_span(2)
    }
}

/// Where the physical addresses of a map come from.
pub(crate) enum Source<'a> {
    /// Page `k` of the range (starting at linear `base`) maps `frames[k]`.
    Frames { base: u64, frames: &'a [PhysFrame] },
    /// Linear `base + x` maps physical `pa + x`.
    Contiguous { base: u64, pa: u64 },
    /// 2 MiB chunk `k` of the range (starting at linear `base`) maps `runs[k]`.
    Runs {
        base: u64,
        runs: &'a [PhysFrame<Size2MiB>],
    },
    /// Populate: no leaves.
    Nothing,
}

impl Source<'_> {
    /// Physical address for linear page `l`.
    #[inline]
    fn pa(&self, l: u64) -> u64 {
        match *self {
            Source::Frames { base, frames } => frames[((l - base) / PAGE_SIZE) as usize]
                .start_address()
                .as_u64(),
            Source::Contiguous { base, pa } => pa + (l - base),
            Source::Runs { base, runs } => {
                let off = l - base;
                runs[(off / entry_span(2)) as usize]
                    .start_address()
                    .as_u64()
                    + off % entry_span(2)
            }
            Source::Nothing => 0,
        }
    }

    /// Store the leaves of `entries`, the first of which maps linear `l`, stopping at the
    /// first entry in use: `Err(k)` if `entries[k]` was (entries before it are written).
    #[inline]
    fn fill(&self, entries: &[PageTableEntry], l: u64, flags: u64) -> Result<(), usize> {
        // Loads `Relaxed` and stores `Release` (see the mapper docs: the range is the
        // caller's, the only concurrent writer is an A/D-setting walker, which never writes an
        // unused entry).
        match *self {
            Source::Frames { base, frames } => {
                let k0 = ((l - base) / PAGE_SIZE) as usize;
                let frames = &frames[k0..k0 + entries.len()];
                for (k, (entry, f)) in entries.iter().zip(frames).enumerate() {
                    if !entry.load(Ordering::Relaxed).is_unused() {
                        return Err(k);
                    }
                    let pte = Pte::from_bits(f.start_address().as_u64() | flags);
                    entry.store(pte, Ordering::Release);
                }
            }
            Source::Contiguous { base, pa } => {
                let pa = pa + (l - base);
                for (k, entry) in entries.iter().enumerate() {
                    if !entry.load(Ordering::Relaxed).is_unused() {
                        return Err(k);
                    }
                    let pte = Pte::from_bits((pa + k as u64 * PAGE_SIZE) | flags);
                    entry.store(pte, Ordering::Release);
                }
            }
            Source::Runs { .. } => {
                // A leaf table under a run's chunk (one was already there): 4 KiB leaves.
                for (k, entry) in entries.iter().enumerate() {
                    if !entry.load(Ordering::Relaxed).is_unused() {
                        return Err(k);
                    }
                    let pte = Pte::from_bits(self.pa(l + k as u64 * PAGE_SIZE) | flags);
                    entry.store(pte, Ordering::Release);
                }
            }
            Source::Nothing => {}
        }
        Ok(())
    }
}

impl<P: Platform> AddressSpace<P> {
    /// Map the 2 MiB `runs` at `va, va + 2 MiB, ..` with `flags` (`PRESENT` is added), each
    /// with one 2 MiB leaf: what a huge vmalloc area is (Linux's `vmap_pages_range` with
    /// `PMD_SHIFT`). A chunk whose leaf table already exists (even an empty one) is mapped
    /// with 512 4 KiB leaves instead, as [`AddressSpace::map_contiguous`] does; a caller that
    /// owns the whole range and knows no CPU can still use a stale table of it may free such
    /// tables first with [`AddressSpace::clean_up`]. All or nothing, as
    /// [`AddressSpace::map`]; errors: `va` not 2 MiB aligned ([`MapError::Misaligned`]),
    /// [`MapError::InvalidRange`], [`MapError::AlreadyMapped`], [`MapError::OutOfFrames`].
    /// The frames stay the caller's; [`AddressSpace::unmap`] hands each 2 MiB leaf back as one
    /// `(address, 2 MiB)` call.
    pub fn map_huge(
        &self,
        va: VirtAddr,
        runs: &[PhysFrame<Size2MiB>],
        flags: PageTableFlags,
    ) -> Result<(), MapError> {
        let span = entry_span(2);
        if !va.is_aligned(span) {
            return Err(MapError::Misaligned {
                addr: va.as_u64(),
                align: span,
            });
        }
        let len = (runs.len() as u64)
            .checked_mul(span)
            .ok_or(MapError::InvalidRange {
                start: va.as_u64(),
                len: u64::MAX,
            })?;
        let (s, e) = super::walk::checked_range(va, len)?;
        self.map_source(s, e, Source::Runs { base: s, runs }, flags, true)
    }
}

/// Plan walk: check the table levels of `[s, e)` against `plan` and count the tables to
/// create.
pub(crate) fn count_tables<P: Platform>(
    space: &AddressSpace<P>,
    plan: Plan,
    s: u64,
    e: u64,
) -> Result<usize, MapError> {
    let mut need = 0;
    count_level(space, Some(space.root_table()), 4, plan, s, e, &mut need)?;
    Ok(need)
}

fn count_level<P: Platform>(
    space: &AddressSpace<P>,
    t: Option<&PageTable>,
    level: u32,
    plan: Plan,
    s: u64,
    e: u64,
    need: &mut usize,
) -> Result<(), MapError> {
    let span = entry_span(level);
    let mut l = s;
    while l < e {
        let ce = ((l & !(span - 1)) + span).min(e);
        let p = t.map_or(Pte::UNUSED, |t| t[index(l, level)].load(Ordering::Acquire));
        if p.is_present() {
            if p.is_huge() {
                let va = from_lin(l);
                return Err(match plan {
                    Plan::Map { .. } => MapError::AlreadyMapped { va },
                    Plan::Populate => MapError::HugePageInTheWay { va },
                });
            }
            if level > 2 {
                count_level(space, Some(space.child(p)?), level - 1, plan, l, ce, need)?;
            }
        } else if !(level == 2 && plan.huge_leaf(l, ce)) {
            *need += 1;
            if level > 2 {
                count_level(space, None, level - 1, plan, l, ce, need)?;
            }
        }
        l = ce;
    }
    Ok(())
}

/// Build walk: install tables from `stash` and store leaves. Returns the number of 4 KiB
/// pages mapped; on error, `*done` is the linear address below which this walk wrote leaves
/// (from `s`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn build<P: Platform>(
    space: &AddressSpace<P>,
    plan: Plan,
    s: u64,
    e: u64,
    src: &Source<'_>,
    flags: PageTableFlags,
    stash: &mut TableStash<'_, P>,
    done: &mut u64,
) -> Result<usize, MapError> {
    let mut pages = 0;
    *done = s;
    let mut w = Builder {
        space,
        plan,
        src,
        flags: flags.bits(),
        stash,
        pages: &mut pages,
        done,
    };
    w.level(space.root_table(), 4, s, e)?;
    Ok(pages)
}

/// The state of a build walk.
struct Builder<'w, 's, 'f, P: Platform> {
    space: &'s AddressSpace<P>,
    plan: Plan,
    src: &'w Source<'w>,
    flags: u64,
    stash: &'w mut TableStash<'f, P>,
    pages: &'w mut usize,
    done: &'w mut u64,
}

impl<P: Platform> Builder<'_, '_, '_, P> {
    fn level(&mut self, t: &PageTable, level: u32, s: u64, e: u64) -> Result<(), MapError> {
        if level == 1 {
            if let Plan::Map { .. } = self.plan {
                let i0 = index(s, 1);
                let n = ((e - s) / PAGE_SIZE) as usize;
                if let Err(k) = self.src.fill(&t.entries()[i0..i0 + n], s, self.flags) {
                    *self.done = s + k as u64 * PAGE_SIZE;
                    *self.pages += k;
                    return Err(MapError::AlreadyMapped {
                        va: from_lin(*self.done),
                    });
                }
                *self.pages += n;
            }
            *self.done = e;
            return Ok(());
        }
        let span = entry_span(level);
        let mut l = s;
        while l < e {
            let ce = ((l & !(span - 1)) + span).min(e);
            let entry = &t[index(l, level)];
            if level == 2 && self.plan.huge_leaf(l, ce) {
                let cur = entry.load(Ordering::Acquire);
                if cur.is_unused() {
                    // The whole 2 MiB chunk is ours (ownership rule): a plain store, as for
                    // 4 KiB leaves.
                    let bits = self.src.pa(l) | self.flags | PageTableFlags::HUGE_PAGE.bits();
                    entry.store(Pte::from_bits(bits), Ordering::Release);
                    *self.pages += (span / PAGE_SIZE) as usize;
                    *self.done = ce;
                    l = ce;
                    continue;
                }
                if cur.is_huge() {
                    return Err(MapError::AlreadyMapped { va: from_lin(l) });
                }
            }
            let child = next_or_install(self.space, entry, level, l, self.stash)?;
            self.level(child, level - 1, l, ce)?;
            l = ce;
        }
        Ok(())
    }
}

/// Undo a build of `[s, e)` that stopped at `done`: clear the leaves in `[s, done)` and free
/// the tables the build installed whose span lies inside `[s, e)`.
pub(crate) fn rollback<P: Platform>(
    space: &AddressSpace<P>,
    s: u64,
    done: u64,
    e: u64,
    stash: &TableStash<'_, P>,
) {
    if done > s {
        clear(
            space,
            s,
            done,
            &mut |_, _| {},
            &mut crate::tlb::FlushRange::empty(),
        );
    }
    // Deepest tables were installed last: undo in reverse order.
    for &(base, level) in stash.installed().iter().rev() {
        let span = entry_span(level + 1);
        if base < s || base + span > e {
            continue;
        }
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
            // A table installed by this map and reachable only through its own range.
            let _ = space.frames().free(PhysFrame::containing_address(p.addr()));
        }
    }
}

/// Fast map of a non-empty `[s, e)` inside one leaf table that already exists (the vmalloc
/// common case): the one walk of [`super::walk::above`], then the store loop. `None`: the
/// table is missing or a huge leaf is in the way, and the caller takes the general path
/// (nothing was changed). A page already mapped clears the leaves this call stored before it
/// (no table was installed, so that is the whole rollback) and is
/// [`MapError::AlreadyMapped`]. Returns the number of pages mapped.
#[inline]
pub(crate) fn map_fast<P: Platform>(
    space: &AddressSpace<P>,
    s: u64,
    e: u64,
    src: &Source<'_>,
    flags: u64,
) -> Option<Result<usize, MapError>> {
    debug_assert!(s < e && super::walk::in_one_leaf_table(s, e));
    let super::walk::Above::Table(t) = super::walk::above(space, s) else {
        return None;
    };
    let i0 = index(s, 1);
    let n = ((e - s) / PAGE_SIZE) as usize;
    let entries = &t.entries()[i0..i0 + n];
    Some(match src.fill(entries, s, flags) {
        Ok(()) => Ok(n),
        Err(k) => {
            // Leaves of our own range, written by this call (ownership rule): plain stores.
            for entry in &entries[..k] {
                entry.store(Pte::UNUSED, Ordering::Release);
            }
            Err(MapError::AlreadyMapped {
                va: from_lin(s + k as u64 * PAGE_SIZE),
            })
        }
    })
}
