//! The free-space tree of the Linux 5.2+ design: free areas keyed by start address in an
//! augmented AVL tree ([`crate::kva::tree`]), each node knowing the largest free size in its
//! subtree (Linux's `subtree_max_size`, the default [`MaxSize`] index, which the shards use)
//! or, with the [`AlignLevels`] index, also the largest block that can start aligned to a few
//! power-of-two alignments.
//!
//! # How it works
//!
//! * [`FreeTree::alloc`] finds the LOWEST address that can hold `size` bytes aligned to
//!   `align` inside `[vstart, vend)` (Linux's `find_vmap_lowest_match`): an in-order walk that
//!   skips every subtree that cannot hold the block according to its summary, every left
//!   subtree lying wholly below `vstart` and every right subtree wholly above `vend`, and
//!   stops at the first area (lowest start) that fits. It then carves the block out of that
//!   area with one of the four fit cases of `adjust_va_to_fit_type`: full fit (the node goes),
//!   left edge (the area shrinks from the left), right edge (it shrinks from the right), no
//!   edge (the area is split: the right remainder takes a second node from the arena's
//!   preloaded free slots).
//! * [`FreeTree::alloc_fast`], what the shards call, is `alloc` whenever the index prunes
//!   `align` exactly ([`FitIndex::prunes_exactly`]; with `MaxSize`: `align <= PAGE_SIZE`, so
//!   every page-aligned request, per-CPU refills included, runs the very same search). For a
//!   larger alignment, three steps:
//!   1. the exact walk, but it gives up at the ninth ([`EXACT_TRIES`] + 1) area it meets
//!      that holds `size` bytes inside the window but not once aligned (the areas that make
//!      it O(n)); if it does not give up, its answer is final: the lowest fit, or no fit;
//!   2. Linux's adjusted search (`adjust_search_size`): the lowest fit among the areas of at
//!      least `need = size + align - PAGE_SIZE` bytes, the same walk pruning by `need`
//!      instead of `size`. An area that long holds the block wherever its page-aligned start
//!      lies, so every subtree entered holds a fit (window edges aside). A lower fit in a
//!      shorter area is passed over: the only case where `alloc_fast` is not the lowest fit;
//!   3. if no area of length `>= need` has room inside the window (where Linux fails the
//!      allocation), the exact walk in full: `alloc_fast` never fails while space exists.
//! * [`FreeTree::insert_merge`] puts a freed range back, coalescing with the previous and the
//!   next free area (`merge_or_add_vmap_area`): one `floor` search, O(log n).
//!
//! Cost (page-granular areas, n free areas):
//!
//! * `alloc` / [`FreeTree::lowest_fit`]: O(log n) whenever pruning is exact (see above; with
//!   [`AlignLevels`], also for alignments at its levels). Otherwise the walk also visits every
//!   area below the answer that is long enough but fails once aligned: O(n) on adversarial
//!   layouts (n areas of 4 MiB + 4 KiB, each a page past a 4 MiB boundary, asked for 4 MiB at
//!   4 MiB alignment: all n are visited).
//! * `alloc_fast` / [`FreeTree::fast_fit`]: O(log n) for every alignment while some area of
//!   `size + align - PAGE_SIZE` bytes lies inside the window (in the vmalloc range, always
//!   but near exhaustion): steps 1 and 2 visit at most a few root-to-leaf paths (39 nodes
//!   over 1,024 misaligned areas, 47 over 16,384, where the exact walk visits 2,551). Step 3
//!   costs what `alloc` costs, O(n) in the worst case, and runs only when no such area
//!   exists. The index is the same, so page-aligned operations (searches, carves, merges)
//!   cost exactly what they cost before.
//! * An index that prunes more alignments exactly makes every update dearer: see
//!   [`FitIndex`]'s module for the measured cost of [`AlignLevels`].
//!
//! Linux looks for `size + align - 1` and fails when that finds nothing; `alloc` is the exact
//! lowest fit, which the property tests check against a linear scan, and `alloc_fast`'s
//! placement (the lowest fit, or step 2's) is a tested property of its own.
//!
//! # Invariants (checked by [`FreeTree::check_invariants`])
//!
//! * Areas are non-empty, disjoint and never adjacent (adjacent free areas are merged).
//! * The tree invariants of [`crate::kva::tree`], with the augmentation = the index's summary of
//!   the subtree (largest length; per alignment level, largest `end - align_up(start)`).
//! * `free_bytes()` is the sum of the areas' lengths.
//!
//! # Locking
//!
//! None inside: a `FreeTree` is `&mut`-only; the owner (a `vmalloc` shard) keeps it behind a
//! lock. No atomics, so ordering is the lock's. Call [`FreeTree::reserve`] while holding the
//! lock before a split-prone allocation if the operation must not allocate memory.

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::PAGE_SIZE;

use crate::kva::tree::{InsertError, InvariantViolation, NodeId, Tree, TreeFull};

/// Why a free-tree operation was refused (nothing was changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FreeTreeError {
    /// `start >= end`.
    #[error("invalid range [{start:#x}, {end:#x})")]
    InvalidRange {
        /// Requested start.
        start: u64,
        /// Requested end.
        end: u64,
    },
    /// The range given to `insert_merge` overlaps a free area: a double free or a caller bug.
    #[error("range [{start:#x}, {end:#x}) overlaps free area [{free_start:#x}, {free_end:#x})")]
    Overlap {
        /// Start of the range being freed.
        start: u64,
        /// End of the range being freed.
        end: u64,
        /// Start of the free area it overlaps.
        free_start: u64,
        /// End of the free area it overlaps.
        free_end: u64,
    },
    /// The range given to `alloc_at` is not wholly inside one free area.
    #[error("range [{start:#x}, {end:#x}) is not free")]
    NotFree {
        /// Requested start.
        start: u64,
        /// Requested end.
        end: u64,
    },
    /// The node arena is exhausted (`u32` indices).
    #[error(transparent)]
    Full(#[from] TreeFull),
}

mod index;

pub use index::{ALIGN_LEVELS, AlignCaps, AlignLevels, FitIndex, FreeArea, MaxSize};

/// Free address ranges in an augmented AVL tree; see the module documentation. `I` is the
/// subtree summary used to prune the search: [`MaxSize`] (Linux's, the default) or
/// [`AlignLevels`].
#[derive(Debug, Clone)]
pub struct FreeTree<I: FitIndex = MaxSize> {
    tree: Tree<FreeArea, I>,
    free_bytes: u64,
}

impl<I: FitIndex> Default for FreeTree<I> {
    fn default() -> Self {
        Self::empty()
    }
}

#[cfg(test)]
std::thread_local! {
    /// Nodes visited by this thread's lowest-fit searches (tests only: see `visit`).
    static VISITS: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}

/// Count one node visited by a lowest-fit search (test builds only; nothing otherwise).
#[inline(always)]
fn visit() {
    #[cfg(test)]
    VISITS.with(|v| v.set(v.get() + 1));
}

/// How many areas `alloc_fast`'s exact walk may find long enough for the block but failing
/// once aligned before it gives up for Linux's adjusted search (see the module
/// documentation): enough for the few misaligned neighbours of a typical answer, few enough
/// that giving up costs a small constant. Measured (`docs/BENCHMARKS.md`, aligned search):
/// `fix_align_alloc_test` costs the same with the limit removed, so 8 cuts off only the
/// pathological O(n) walks.
pub const EXACT_TRIES: usize = 8;

/// `addr` rounded up to `align` (a power of two), or `None` on overflow.
#[inline]
fn align_up(addr: u64, align: u64) -> Option<u64> {
    Some(addr.checked_add(align - 1)? & !(align - 1))
}

impl FreeTree<MaxSize> {
    /// An empty tree with the default index ([`MaxSize`]).
    pub const fn new() -> Self {
        Self::empty()
    }

    /// An empty tree (default index) with `n` nodes preloaded.
    pub fn with_capacity(n: usize) -> Self {
        Self::empty_with_capacity(n)
    }

    /// A tree (default index) holding the single free area `[start, end)` (empty if
    /// `start == end`).
    pub fn with_range(start: u64, end: u64) -> Result<Self, FreeTreeError> {
        Self::from_range(start, end)
    }
}

impl<I: FitIndex> FreeTree<I> {
    /// An empty tree with index `I` (`FreeTree::<AlignLevels>::empty()`).
    pub const fn empty() -> Self {
        Self {
            tree: Tree::new(),
            free_bytes: 0,
        }
    }

    /// An empty tree with index `I` and `n` nodes preloaded.
    pub fn empty_with_capacity(n: usize) -> Self {
        Self {
            tree: Tree::with_capacity(n),
            free_bytes: 0,
        }
    }

    /// A tree with index `I` holding the single free area `[start, end)` (empty if
    /// `start == end`).
    pub fn from_range(start: u64, end: u64) -> Result<Self, FreeTreeError> {
        if start > end {
            return Err(FreeTreeError::InvalidRange { start, end });
        }
        let mut t = Self::empty();
        if start < end {
            t.insert_merge(start, end)?;
        }
        Ok(t)
    }

    /// Make sure the next `n` node-consuming operations (inserts without merge, splits)
    /// allocate nothing (Linux's preload).
    pub fn reserve(&mut self, n: usize) {
        self.tree.reserve(n);
    }

    /// How many nodes are preloaded (operations that need a node and won't allocate).
    pub fn spare_nodes(&self) -> usize {
        self.tree.spare()
    }

    /// Number of free areas.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether there is no free area.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free_bytes
    }

    /// Length of the largest free area (0 if none): the root's augmentation.
    pub fn largest(&self) -> u64 {
        self.tree
            .aug_of(self.tree.root())
            .map_or(0, |v| I::largest(&v))
    }

    /// The free areas `(start, end)`, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.tree.iter().map(|a| (a.start, a.end))
    }

    /// The free area containing `addr`, if any.
    pub fn find_containing(&self, addr: u64) -> Option<(u64, u64)> {
        let a = self.tree.get(self.tree.floor(addr)?);
        (addr < a.end).then_some((a.start, a.end))
    }

    /// Return `[start, end)` to the free space, merging with the free areas just before and
    /// just after it; returns the merged extent. Overlapping an existing free area is refused
    /// with [`FreeTreeError::Overlap`] and changes nothing.
    pub fn insert_merge(&mut self, start: u64, end: u64) -> Result<(u64, u64), FreeTreeError> {
        if start >= end {
            return Err(FreeTreeError::InvalidRange { start, end });
        }
        let overlap = |a: &FreeArea| FreeTreeError::Overlap {
            start,
            end,
            free_start: a.start,
            free_end: a.end,
        };
        let prev = self.tree.floor(start);
        if let Some(p) = prev {
            let a = self.tree.get(p);
            if a.end > start {
                return Err(overlap(a));
            }
        }
        let next = match prev {
            Some(p) => self.tree.next(p),
            None => self.tree.first(),
        };
        if let Some(n) = next {
            let a = self.tree.get(n);
            if a.start < end {
                return Err(overlap(a));
            }
        }
        let merge_prev = prev.filter(|&p| self.tree.get(p).end == start);
        let merge_next = next.filter(|&n| self.tree.get(n).start == end);
        let extent = match (merge_prev, merge_next) {
            (Some(p), Some(n)) => {
                let next_end = self.tree.remove(n).end;
                self.tree.modify(p, |a| a.end = next_end);
                (self.tree.get(p).start, next_end)
            }
            (Some(p), None) => {
                self.tree.modify(p, |a| a.end = end);
                (self.tree.get(p).start, end)
            }
            (None, Some(n)) => {
                self.tree.modify(n, |a| a.start = start);
                (start, self.tree.get(n).end)
            }
            (None, None) => {
                let area = FreeArea { start, end };
                match (prev, next) {
                    (Some(p), _) => self.tree.insert_after(p, area)?,
                    (None, Some(n)) => self.tree.insert_before(n, area)?,
                    // The tree is empty here, so the only possible failure is `Full`.
                    (None, None) => self.tree.insert(area).map_err(|e| match e {
                        InsertError::Full(full) => full,
                        InsertError::Duplicate(_) => TreeFull,
                    })?,
                };
                (start, end)
            }
        };
        self.free_bytes += end - start;
        Ok(extent)
    }

    /// Where `[vstart, vend)` would get `size` bytes aligned to `align` (lowest address), with
    /// the node of the free area holding it; changes nothing.
    fn lowest_match(&self, size: u64, align: u64, vstart: u64, vend: u64) -> Option<(NodeId, u64)> {
        let mut gave_up = false;
        self.walk::<false, false>(
            size,
            align,
            vstart,
            vend,
            size,
            I::level(align),
            &mut gave_up,
        )
    }

    /// `alloc_fast`'s placement (see the module documentation): the exact search where the
    /// index prunes `align` exactly, else [`FreeTree::aligned_match`].
    #[inline]
    fn fast_match(&self, size: u64, align: u64, vstart: u64, vend: u64) -> Option<(NodeId, u64)> {
        if I::prunes_exactly(align) {
            self.lowest_match(size, align, vstart, vend)
        } else {
            self.aligned_match(size, align, vstart, vend)
        }
    }

    /// The exact walk, given up after [`EXACT_TRIES`] misaligned areas; then Linux's adjusted
    /// search for `size + align - PAGE_SIZE` bytes; then, if that finds nothing, the exact walk
    /// in full.
    #[inline]
    fn aligned_match(
        &self,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
    ) -> Option<(NodeId, u64)> {
        match self.aligned_quick(size, align, vstart, vend) {
            Ok(found) => found,
            Err(()) => self.lowest_match(size, align, vstart, vend),
        }
    }

    /// The first two steps of [`FreeTree::aligned_match`], O(log n): `Ok(found)` when the
    /// answer is final (`Ok(None)`: nothing fits anywhere), `Err(())` when only the full exact
    /// walk could still find a fit (no area of `size + align - PAGE_SIZE` bytes has room).
    #[inline]
    fn aligned_quick(
        &self,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
    ) -> Result<Option<(NodeId, u64)>, ()> {
        let mut gave_up = false;
        let level = I::level(align);
        let found = self.walk::<false, true>(size, align, vstart, vend, size, level, &mut gave_up);
        if !gave_up {
            // The lowest fit, or nothing fits at all.
            return Ok(found);
        }
        let need = size.saturating_add(align.saturating_sub(PAGE_SIZE));
        match self.walk::<true, false>(size, align, vstart, vend, need, 0, &mut gave_up) {
            Some(m) => Ok(Some(m)),
            None => Err(()),
        }
    }

    /// The lowest fit of `size` bytes aligned to `align` in `[vstart, vend)` among the areas
    /// that may hold `need >= size` bytes: an in-order walk that skips the subtrees whose
    /// summary at `level` rules that out and checks each visited area exactly (`LONG`: only
    /// the areas of length `>= need`; without it, a visited area shorter than `need` could be
    /// taken although a lower fit lies in a subtree that was skipped). With `need = size`
    /// and the index's level for `align`, nothing that fits is skipped: the lowest fit.
    /// `BOUNDED`: give up (`None` with `gave_up` set) at the [`EXACT_TRIES`]`+1`-th area
    /// whose part inside the window holds `size` bytes but not once aligned (the areas that
    /// make an inexactly pruned walk O(n)); otherwise `gave_up` is left alone. Inlined, so
    /// that each caller's flags, `need` and `level` fold into its copy.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn walk<const LONG: bool, const BOUNDED: bool>(
        &self,
        size: u64,
        align: u64,
        vstart: u64,
        vend: u64,
        need: u64,
        level: usize,
        gave_up: &mut bool,
    ) -> Option<(NodeId, u64)> {
        if size == 0 || !align.is_power_of_two() || vstart >= vend || vend - vstart < size {
            return None;
        }
        let mut tries = 0;
        let t = &self.tree;
        let big_enough =
            |id: Option<NodeId>| t.aug_of(id).is_some_and(|v| I::may_fit(&v, need, level));
        // Go down-left as long as the left subtree may hold a fit: it must have a large enough
        // area and lie (partly) above vstart, i.e. the node itself must start above vstart.
        let descend = |mut i: NodeId| loop {
            match t.left(i) {
                Some(l) if t.get(i).start > vstart && big_enough(Some(l)) => {
                    visit();
                    i = l;
                }
                _ => return i,
            }
        };
        let root = t.root();
        if !big_enough(root) {
            return None;
        }
        let mut i = descend(root?);
        loop {
            visit();
            let a = *t.get(i);
            // In-order: every area from here on starts at or after `a.start`.
            if a.start >= vend || vend - a.start < size {
                return None;
            }
            let lo = a.start.max(vstart);
            if LONG && a.end - a.start < need {
                // Not one of the areas searched: only passed through.
            } else if let Some(addr) = align_up(lo, align) {
                if addr.checked_add(size).is_some_and(|e| e <= a.end.min(vend)) {
                    return Some((i, addr));
                }
            }
            if BOUNDED && a.end.min(vend).saturating_sub(lo) >= size {
                if tries == EXACT_TRIES {
                    *gave_up = true;
                    return None;
                }
                tries += 1;
            }
            if a.end < vend && big_enough(t.right(i)) {
                i = descend(t.right(i)?);
                continue;
            }
            // Climb to the first ancestor whose left subtree we just finished.
            loop {
                visit();
                let p = t.parent(i)?;
                let from_left = t.left(p) == Some(i);
                i = p;
                if from_left {
                    break;
                }
            }
        }
    }

    /// The lowest address at which `alloc` would place the block (changes nothing).
    pub fn lowest_fit(&self, size: u64, align: u64, vstart: u64, vend: u64) -> Option<u64> {
        self.lowest_match(size, align, vstart, vend).map(|(_, a)| a)
    }

    /// The address at which `alloc_fast` would place the block (changes nothing).
    pub fn fast_fit(&self, size: u64, align: u64, vstart: u64, vend: u64) -> Option<u64> {
        self.fast_match(size, align, vstart, vend).map(|(_, a)| a)
    }

    /// Allocate `size` bytes aligned to `align` (a power of two) at the lowest possible address
    /// in `[vstart, vend)`. `None` if nothing fits, or for `size == 0`, an `align` that is not
    /// a power of two, or an empty range. May take one node from the arena (no-edge split):
    /// see [`FreeTree::reserve`].
    pub fn alloc(&mut self, size: u64, align: u64, vstart: u64, vend: u64) -> Option<u64> {
        let (id, addr) = self.lowest_match(size, align, vstart, vend)?;
        self.carve(id, addr, addr + size).ok()?;
        Some(addr)
    }

    /// Allocate `size` bytes aligned to `align` (a power of two) in `[vstart, vend)` in
    /// O(log n) for every alignment while the window holds a free area of at least
    /// `size + align - PAGE_SIZE` bytes (what the shards use; see the module documentation).
    /// Same result as [`FreeTree::alloc`] when the index prunes `align` exactly (with
    /// [`MaxSize`]: `align <= PAGE_SIZE`). Otherwise the lowest fit too, unless the exact walk
    /// meets more than [`EXACT_TRIES`] areas long enough but misaligned before it: then the
    /// lowest fit among the free areas of at least `size + align - PAGE_SIZE` bytes (a lower
    /// fit in a shorter area is passed over), or, when none of them has room, `alloc`'s
    /// result (exact search, O(n) worst case). `None` exactly when `alloc` would return
    /// `None`. May take one node from the arena, as `alloc`.
    pub fn alloc_fast(&mut self, size: u64, align: u64, vstart: u64, vend: u64) -> Option<u64> {
        let (id, addr) = self.fast_match(size, align, vstart, vend)?;
        self.carve(id, addr, addr + size).ok()?;
        Some(addr)
    }

    /// [`FreeTree::alloc_fast`] without its last resort: always O(log n), and `None` also when
    /// only the exact walk near exhaustion could have found room. For a caller with other
    /// places to look first (the shards try every shard this way before paying for an exact
    /// walk in any of them); `alloc_fast` afterwards gives the definitive answer.
    pub fn alloc_quick(&mut self, size: u64, align: u64, vstart: u64, vend: u64) -> Option<u64> {
        let (id, addr) = if I::prunes_exactly(align) {
            self.lowest_match(size, align, vstart, vend)?
        } else {
            self.aligned_quick(size, align, vstart, vend).ok()??
        };
        self.carve(id, addr, addr + size).ok()?;
        Some(addr)
    }

    /// Whether [`FreeTree::alloc_quick`] is always as good as [`FreeTree::alloc_fast`] for
    /// `align` (the index prunes it exactly: no last resort exists).
    pub fn quick_is_exact(align: u64) -> bool {
        I::prunes_exactly(align)
    }

    /// Take the exact range `[start, end)` out of the free space (early or reserved areas).
    pub fn alloc_at(&mut self, start: u64, end: u64) -> Result<(), FreeTreeError> {
        if start >= end {
            return Err(FreeTreeError::InvalidRange { start, end });
        }
        let id = self
            .tree
            .floor(start)
            .ok_or(FreeTreeError::NotFree { start, end })?;
        if self.tree.get(id).end < end {
            return Err(FreeTreeError::NotFree { start, end });
        }
        self.carve(id, start, end)
    }

    /// Remove `[start, end)` from the area of node `id`, which contains it: the four fit cases.
    fn carve(&mut self, id: NodeId, start: u64, end: u64) -> Result<(), FreeTreeError> {
        let a = *self.tree.get(id);
        debug_assert!(a.start <= start && end <= a.end && start < end);
        match (a.start == start, a.end == end) {
            // Full fit: the whole area goes.
            (true, true) => {
                self.tree.remove(id);
            }
            // Left edge: shrink from the left (the key grows but stays below the next area).
            (true, false) => self.tree.modify(id, |x| x.start = end),
            // Right edge: shrink from the right.
            (false, true) => self.tree.modify(id, |x| x.end = start),
            // No edge: split; the right remainder needs a new node (taken first, so that a
            // failure changes nothing).
            (false, false) => {
                self.tree.insert_after(
                    id,
                    FreeArea {
                        start: end,
                        end: a.end,
                    },
                )?;
                self.tree.modify(id, |x| x.end = start);
            }
        }
        self.free_bytes -= end - start;
        Ok(())
    }

    /// Verify the invariants listed in the module documentation.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.tree.check()?;
        let mut prev: Option<FreeArea> = None;
        let mut sum = 0u64;
        for a in self.tree.iter() {
            if a.start >= a.end {
                return Err(InvariantViolation(format!("empty area {a:?}")));
            }
            if let Some(p) = prev {
                if p.end >= a.start {
                    return Err(InvariantViolation(format!("{p:?} and {a:?} not merged")));
                }
            }
            sum += a.end - a.start;
            prev = Some(*a);
        }
        if sum != self.free_bytes {
            return Err(InvariantViolation(format!(
                "free_bytes {} but areas sum to {sum}",
                self.free_bytes
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
