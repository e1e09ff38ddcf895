//! Busy-area lookup: address -> area descriptor, keyed by start (Linux's `vmap_area_root`).
//!
//! The [`Kva`](crate::Kva) no longer uses it: since issue 12 each node keeps its live areas
//! in a B+ tree of packed records (`kva::bptree`), half the memory per area and fewer
//! instructions per insert + remove. It stays as a public building block (an AVL-tree busy
//! lookup with descriptor handles, what the Linux 5.x design uses).
//!
//! # How it works
//!
//! A plain (non-augmented) AVL tree from [`crate::kva::tree`] of `(start, end, value)` entries,
//! where `value` is a small `Copy` handle to the caller's descriptor (a pointer or an index).
//! Exact lookup by start ([`BusyTree::get`], [`BusyTree::remove`]) and "which area contains
//! this address" ([`BusyTree::find_containing`], a `floor` search) are O(log n) with no
//! allocation once the arena has grown ([`BusyTree::reserve`]).
//!
//! # Invariants
//!
//! * Entries are non-empty and pairwise disjoint (insertion refuses overlap); adjacent
//!   entries are fine (two live areas may touch).
//! * The tree invariants of [`crate::kva::tree`].
//!
//! # Locking
//!
//! None inside: `&mut`-only, kept behind its owner's lock. No
//! atomics, so ordering is the lock's.

#[allow(unused_imports)]
use crate::prelude::*;
use core::fmt;

use crate::kva::tree::{InsertError, InvariantViolation, Keyed, NoAugment, NodeId, Tree, TreeFull};

/// Why a busy-tree insertion was refused (nothing was changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BusyError {
    /// `start >= end`.
    #[error("invalid range [{start:#x}, {end:#x})")]
    InvalidRange {
        /// Requested start.
        start: u64,
        /// Requested end.
        end: u64,
    },
    /// The range overlaps a busy area.
    #[error("range [{start:#x}, {end:#x}) overlaps busy area [{busy_start:#x}, {busy_end:#x})")]
    Overlap {
        /// Requested start.
        start: u64,
        /// Requested end.
        end: u64,
        /// Start of the busy area it overlaps.
        busy_start: u64,
        /// End of the busy area it overlaps.
        busy_end: u64,
    },
    /// The node arena is exhausted (`u32` indices).
    #[error(transparent)]
    Full(#[from] TreeFull),
}

#[derive(Clone, Copy)]
struct Entry<V: Copy> {
    start: u64,
    end: u64,
    value: V,
}

impl<V: Copy> Keyed for Entry<V> {
    #[inline]
    fn key(&self) -> u64 {
        self.start
    }
}

/// Busy areas `[start, end)` with a `Copy` value each, ordered by start.
#[derive(Clone)]
pub struct BusyTree<V: Copy> {
    tree: Tree<Entry<V>, NoAugment>,
}

impl<V: Copy + fmt::Debug> fmt::Debug for BusyTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<V: Copy> Default for BusyTree<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: Copy> BusyTree<V> {
    /// An empty tree.
    pub const fn new() -> Self {
        Self { tree: Tree::new() }
    }

    /// An empty tree with room for `n` entries without allocation.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            tree: Tree::with_capacity(n),
        }
    }

    /// Make sure the next `n` insertions allocate nothing.
    pub fn reserve(&mut self, n: usize) {
        self.tree.reserve(n);
    }

    /// Number of busy areas.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether there is no busy area.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    #[inline]
    fn entry(&self, id: NodeId) -> (u64, u64, V) {
        let e = self.tree.get(id);
        (e.start, e.end, e.value)
    }

    /// Record the busy area `[start, end)` with `value`; refuses an empty range or one that
    /// overlaps a recorded area.
    pub fn insert(&mut self, start: u64, end: u64, value: V) -> Result<(), BusyError> {
        if start >= end {
            return Err(BusyError::InvalidRange { start, end });
        }
        let overlap = |(busy_start, busy_end, _): (u64, u64, V)| BusyError::Overlap {
            start,
            end,
            busy_start,
            busy_end,
        };
        let prev = self.tree.floor(start);
        if let Some(p) = prev {
            if self.tree.get(p).end > start {
                return Err(overlap(self.entry(p)));
            }
        }
        let next = match prev {
            Some(p) => self.tree.next(p),
            None => self.tree.first(),
        };
        if let Some(n) = next {
            if self.tree.get(n).start < end {
                return Err(overlap(self.entry(n)));
            }
        }
        let e = Entry { start, end, value };
        match (prev, next) {
            (Some(p), _) => self.tree.insert_after(p, e).map(drop)?,
            (None, Some(n)) => self.tree.insert_before(n, e).map(drop)?,
            // Empty tree: a duplicate is impossible, only `Full` can happen.
            (None, None) => self.tree.insert(e).map(drop).map_err(|err| match err {
                InsertError::Full(full) => full,
                InsertError::Duplicate(_) => TreeFull,
            })?,
        }
        Ok(())
    }

    /// Remove the area starting exactly at `start`.
    pub fn remove(&mut self, start: u64) -> Option<(u64, u64, V)> {
        let id = self.tree.find(start)?;
        let e = self.tree.remove(id);
        Some((e.start, e.end, e.value))
    }

    /// Remove the area starting exactly at `start` if `check(start, end, value)` accepts it:
    /// `Ok(None)` if there is none, `Err` (nothing changed) if `check` refuses. One lookup.
    pub fn remove_checked<E>(
        &mut self,
        start: u64,
        check: impl FnOnce(u64, u64, V) -> Result<(), E>,
    ) -> Result<Option<(u64, u64, V)>, E> {
        let Some(id) = self.tree.find(start) else {
            return Ok(None);
        };
        let (s, e, v) = self.entry(id);
        check(s, e, v)?;
        self.tree.remove(id);
        Ok(Some((s, e, v)))
    }

    /// The area starting exactly at `start`.
    pub fn get(&self, start: u64) -> Option<(u64, u64, V)> {
        self.tree.find(start).map(|id| self.entry(id))
    }

    /// Replace the value of the area starting at `start`; returns the old value.
    pub fn set_value(&mut self, start: u64, value: V) -> Option<V> {
        let id = self.tree.find(start)?;
        let old = self.tree.get(id).value;
        self.tree.modify(id, |e| e.value = value);
        Some(old)
    }

    /// Move the end of the area starting at `start` to `end` (above `start`, and not past
    /// the next area's start); returns the old end, or `None` (nothing changed) if there is no
    /// such area or the new end is refused.
    pub fn set_end(&mut self, start: u64, end: u64) -> Option<u64> {
        let id = self.tree.find(start)?;
        if end <= start {
            return None;
        }
        if let Some(n) = self.tree.next(id) {
            if self.tree.get(n).start < end {
                return None;
            }
        }
        let old = self.tree.get(id).end;
        self.tree.modify(id, |e| e.end = end);
        Some(old)
    }

    /// The area containing `addr` (`start <= addr < end`).
    pub fn find_containing(&self, addr: u64) -> Option<(u64, u64, V)> {
        let id = self.tree.floor(addr)?;
        let e = self.entry(id);
        (addr < e.1).then_some(e)
    }

    /// All areas `(start, end, value)`, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, V)> + '_ {
        self.tree.iter().map(|e| (e.start, e.end, e.value))
    }

    /// The areas that overlap `[start, end)`, ascending (for `vread`-style walks).
    pub fn iter_overlapping(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, u64, V)> + '_ {
        // The first candidate is the area containing `start`, else the first one after it.
        let from = match self.tree.floor(start) {
            Some(id) if self.tree.get(id).end > start => Some(id),
            Some(id) => self.tree.next(id),
            None => self.tree.first(),
        };
        self.tree
            .iter_from(from)
            .take_while(move |e| e.start < end)
            .map(|e| (e.start, e.end, e.value))
    }

    /// Verify the invariants listed in the module documentation.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        self.tree.check()?;
        let mut prev_end: Option<u64> = None;
        for e in self.tree.iter() {
            if e.start >= e.end {
                return Err(InvariantViolation(format!("empty area at {:#x}", e.start)));
            }
            if prev_end.is_some_and(|pe| pe > e.start) {
                return Err(InvariantViolation(format!("overlap at {:#x}", e.start)));
            }
            prev_end = Some(e.end);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
