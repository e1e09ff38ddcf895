//! The free-space tree of the Linux 5.2+ design: free areas keyed by start address in an
//! augmented AVL tree ([`crate::tree`]), each node knowing the largest free size in its
//! subtree (Linux's `subtree_max_size`, the default [`MaxSize`] index) or, with the
//! [`AlignLevels`] index, also the largest block that can start aligned to a few power-of-two
//! alignments.
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
//! * [`FreeTree::insert_merge`] puts a freed range back, coalescing with the previous and the
//!   next free area (`merge_or_add_vmap_area`): one `floor` search, O(log n).
//!
//! Cost: O(log n) per operation whenever the pruning is exact: with [`MaxSize`], when `align`
//! is at most the address granularity (page-granular vmalloc with `align <= PAGE_SIZE`);
//! with [`AlignLevels`], also for alignments at its levels. Linux instead looks for
//! `size + align - 1`, which keeps O(log n) but can miss the lowest fit and even fail although
//! space exists; this tree stays exact (always the lowest fitting address, which the property
//! tests check against a linear scan), and where pruning is not exact it also visits the
//! areas below the answer that are long enough but fail once aligned.
//!
//! # Invariants (checked by [`FreeTree::check_invariants`])
//!
//! * Areas are non-empty, disjoint and never adjacent (adjacent free areas are merged).
//! * The tree invariants of [`crate::tree`], with the augmentation = the index's summary of
//!   the subtree (largest length; per alignment level, largest `end - align_up(start)`).
//! * `free_bytes()` is the sum of the areas' lengths.
//!
//! # Locking
//!
//! None inside: a `FreeTree` is `&mut`-only; the owner (a `vmalloc` shard) keeps it behind a
//! lock. No atomics, so ordering is the lock's. Call [`FreeTree::reserve`] while holding the
//! lock before a split-prone allocation if the operation must not allocate memory.

use crate::tree::{InsertError, InvariantViolation, NodeId, Tree, TreeFull};

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
        if size == 0 || !align.is_power_of_two() || vstart >= vend || vend - vstart < size {
            return None;
        }
        let t = &self.tree;
        let level = I::level(align);
        let big_enough =
            |id: Option<NodeId>| t.aug_of(id).is_some_and(|v| I::may_fit(&v, size, level));
        // Go down-left as long as the left subtree may hold a fit: it must have a large enough
        // area and lie (partly) above vstart, i.e. the node itself must start above vstart.
        let descend = |mut i: NodeId| loop {
            match t.left(i) {
                Some(l) if t.get(i).start > vstart && big_enough(Some(l)) => i = l,
                _ => return i,
            }
        };
        let root = t.root();
        if !big_enough(root) {
            return None;
        }
        let mut i = descend(root?);
        loop {
            let a = *t.get(i);
            // In-order: every area from here on starts at or after `a.start`.
            if a.start >= vend || vend - a.start < size {
                return None;
            }
            let lo = a.start.max(vstart);
            if let Some(addr) = align_up(lo, align) {
                if addr.checked_add(size).is_some_and(|e| e <= a.end.min(vend)) {
                    return Some((i, addr));
                }
            }
            if a.end < vend && big_enough(t.right(i)) {
                i = descend(t.right(i)?);
                continue;
            }
            // Climb to the first ancestor whose left subtree we just finished.
            loop {
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

    /// Allocate `size` bytes aligned to `align` (a power of two) at the lowest possible address
    /// in `[vstart, vend)`. `None` if nothing fits, or for `size == 0`, an `align` that is not
    /// a power of two, or an empty range. May take one node from the arena (no-edge split):
    /// see [`FreeTree::reserve`].
    pub fn alloc(&mut self, size: u64, align: u64, vstart: u64, vend: u64) -> Option<u64> {
        let (id, addr) = self.lowest_match(size, align, vstart, vend)?;
        self.carve(id, addr, addr + size).ok()?;
        Some(addr)
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
