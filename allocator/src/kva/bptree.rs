//! A B+ tree of disjoint ranges `[start, end)` with a small `Copy` value each, keyed by start:
//! the busy index of a node (see `node`), replacing the per-area descriptor and AVL node.
//!
//! # How it works
//!
//! Leaves hold up to [`LEAF`] entries in three parallel arrays (starts, ends, values), sorted
//! by start and chained both ways; inner nodes hold up to [`FAN`] children and the separator
//! keys between them (`keys[i]`, `i >= 1`, is at most every start in `children[i]` and above
//! every start in `children[i - 1]`). Nodes live in two index arenas (`u32` ids, freed ids
//! reused), so no operation allocates once the arenas have grown, and the code is safe Rust.
//!
//! Exact lookups, insertions and removals descend once from the root, scanning at most
//! [`FAN`] separators per level: O(log n) with a fan-out of 16, i.e. 5 levels for a million
//! areas, each level one or two cache lines of keys. A lookup by an address inside an area
//! (`floor`) is the same descent, stepping to the previous leaf when the address lies before
//! the first start of the leaf it reaches.
//!
//! Splits keep the tree dense for the common pattern, ascending starts (lowest-fit
//! allocations from fresh space): the last leaf of the tree, full, receiving an entry at its
//! end keeps its [`LEAF`] entries and hands only the new one to a new last leaf (the last
//! inner node of a level keeps all its children but one), so ascending insertions fill the
//! nodes; every other split halves. A node that falls below a quarter of its capacity evens out with a
//! sibling or merges into it, so every node but those on the rightmost path stays at least a
//! quarter full whatever the pattern of insertions and removals.
//!
//! # Invariants (checked by [`BpTree::check`])
//!
//! * Starts strictly increase along the leaf chain; entries are non-empty and disjoint.
//! * Every leaf is at the same depth; every node off the rightmost path is at least a
//!   quarter full (those on it hold at least one entry or two children).
//! * Separators bound their subtrees as above; the leaf chain visits every leaf once, in order.
//!
//! # Locking
//!
//! None inside: `&mut` only, kept behind its owner's lock (a node's). No atomics.

#[allow(unused_imports)]
use crate::prelude::*;
use core::fmt;

/// Entries per leaf (the search of [`rank`] is written for 16).
pub(crate) const LEAF: usize = 16;
/// Children per inner node (likewise).
pub(crate) const FAN: usize = 16;
/// Fewest entries of a non-root leaf.
const MIN_LEAF: usize = LEAF / 4;
/// Fewest children of a non-root inner node.
const MIN_FAN: usize = FAN / 4;
/// Deepest possible path: every node at least a quarter full over at most 2^32 entries.
const MAX_DEPTH: usize = 17;
/// "No node".
const NIL: u32 = u32::MAX;
/// What unused key slots hold: searches scan whole arrays without looking at lengths (a
/// start is always below it: an area ends above its start).
const PAD: u64 = u64::MAX;

/// How many of the 16 sorted keys of `a` are below `key` (`strict`) or at most `key`:
/// a branch-free binary search (four halvings and a last step, conditional moves only).
#[inline(always)]
fn rank(a: &[u64; 16], key: u64, strict: bool) -> usize {
    let before = |x: u64| if strict { x < key } else { x <= key };
    let mut i = 0usize;
    for step in [8usize, 4, 2, 1] {
        if before(a[(i + step - 1) & 15]) {
            i += step;
        }
    }
    i + usize::from(before(a[i & 15]))
}

/// Why an insertion was refused (nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InsertError {
    /// `start >= end`.
    Empty,
    /// The range overlaps the entry `[start, end)`.
    Overlap(u64, u64),
    /// The arenas are exhausted (`u32` ids).
    Full,
}

#[derive(Clone)]
struct Leaf<V: Copy> {
    starts: [u64; LEAF],
    ends: [u64; LEAF],
    vals: [V; LEAF],
    len: u32,
    prev: u32,
    next: u32,
}

#[derive(Clone)]
struct Inner {
    /// `keys[0]` is 0 (unused by the search), unused slots [`PAD`].
    keys: [u64; FAN],
    children: [u32; FAN],
    len: u32,
}

/// The path of a descent: (inner node, child index taken) per level, root first.
struct Path {
    steps: [(u32, u32); MAX_DEPTH],
    depth: usize,
}

impl Path {
    fn new() -> Self {
        Self {
            steps: [(NIL, 0); MAX_DEPTH],
            depth: 0,
        }
    }
}

/// Ranges `[start, end)` with a value each, ordered by start (see the module documentation).
#[derive(Clone)]
pub(crate) struct BpTree<V: Copy> {
    leaves: Vec<Leaf<V>>,
    inners: Vec<Inner>,
    free_leaves: Vec<u32>,
    free_inners: Vec<u32>,
    /// A leaf id when `height == 0`, else an inner id; `NIL` before the first insertion.
    root: u32,
    /// Inner levels above the leaves.
    height: usize,
    len: usize,
    /// Fills the unused slots of new leaves.
    filler: V,
}

impl<V: Copy + fmt::Debug> fmt::Debug for BpTree<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<V: Copy> BpTree<V> {
    /// An empty tree; `filler` only initialises unused slots.
    pub(crate) const fn new(filler: V) -> Self {
        Self {
            leaves: Vec::new(),
            inners: Vec::new(),
            free_leaves: Vec::new(),
            free_inners: Vec::new(),
            root: NIL,
            height: 0,
            len: 0,
            filler,
        }
    }

    /// Number of entries.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Entry slots of the leaves allocated so far (entries held without growing).
    pub(crate) fn capacity(&self) -> usize {
        self.leaves.len() * LEAF
    }

    fn new_leaf(&mut self) -> Result<u32, InsertError> {
        let leaf = Leaf {
            starts: [PAD; LEAF],
            ends: [0; LEAF],
            vals: [self.filler; LEAF],
            len: 0,
            prev: NIL,
            next: NIL,
        };
        if let Some(id) = self.free_leaves.pop() {
            self.leaves[id as usize] = leaf;
            return Ok(id);
        }
        let id = u32::try_from(self.leaves.len())
            .ok()
            .filter(|&i| i != NIL)
            .ok_or(InsertError::Full)?;
        self.leaves.push(leaf);
        Ok(id)
    }

    /// The child of inner node `n` whose subtree may hold `key`: one less than the number
    /// of keys at most `key` (`keys[0]` is 0, unused ones are [`PAD`]).
    #[inline]
    fn child_index(&self, n: u32, key: u64) -> usize {
        let node = &self.inners[n as usize];
        (rank(&node.keys, key, false) - 1).min(node.len as usize - 1)
    }

    /// Descend to the leaf whose key range holds `key`, recording the path.
    fn descend(&self, key: u64, path: &mut Path) -> u32 {
        let mut n = self.root;
        path.depth = 0;
        for _ in 0..self.height {
            let i = self.child_index(n, key);
            path.steps[path.depth] = (n, i as u32);
            path.depth += 1;
            n = self.inners[n as usize].children[i];
        }
        n
    }

    /// Descend without recording a path.
    #[inline]
    fn leaf_for(&self, key: u64) -> u32 {
        let mut n = self.root;
        for _ in 0..self.height {
            let i = self.child_index(n, key);
            n = self.inners[n as usize].children[i];
        }
        n
    }

    /// First index of leaf `l` whose start is `>= key` (unused slots are [`PAD`]).
    #[inline]
    fn lower_bound(&self, l: u32, key: u64) -> usize {
        rank(&self.leaves[l as usize].starts, key, true)
    }

    /// The entry starting exactly at `start`, as (leaf, index).
    #[inline]
    fn locate(&self, start: u64) -> Option<(u32, usize)> {
        if self.root == NIL {
            return None;
        }
        let l = self.leaf_for(start);
        let i = self.lower_bound(l, start);
        let leaf = &self.leaves[l as usize];
        (i < leaf.len as usize && leaf.starts[i] == start).then_some((l, i))
    }

    #[inline]
    fn entry(&self, l: u32, i: usize) -> (u64, u64, V) {
        let leaf = &self.leaves[l as usize];
        (leaf.starts[i], leaf.ends[i], leaf.vals[i])
    }

    /// The entry starting exactly at `start`.
    #[inline]
    pub(crate) fn get(&self, start: u64) -> Option<(u64, u64, V)> {
        self.locate(start).map(|(l, i)| self.entry(l, i))
    }

    /// The value of the entry starting exactly at `start`, for changing in place.
    #[inline]
    pub(crate) fn get_mut(&mut self, start: u64) -> Option<&mut V> {
        let (l, i) = self.locate(start)?;
        Some(&mut self.leaves[l as usize].vals[i])
    }

    /// Move the end of the entry starting at `start` to `end` (above `start`); returns the
    /// old end, `None` (nothing changed) if there is no such entry. The caller keeps the
    /// entries disjoint: a grown end must not reach the next entry's start.
    pub(crate) fn set_end(&mut self, start: u64, end: u64) -> Option<u64> {
        let (l, i) = self.locate(start)?;
        let old = self.leaves[l as usize].ends[i];
        self.leaves[l as usize].ends[i] = end;
        Some(old)
    }

    /// The entry with the largest start `<= key`, as (leaf, index).
    fn floor_pos(&self, key: u64) -> Option<(u32, usize)> {
        if self.root == NIL {
            return None;
        }
        let l = self.leaf_for(key);
        let leaf = &self.leaves[l as usize];
        let i = rank(&leaf.starts, key, false).min(leaf.len as usize);
        if i > 0 {
            return Some((l, i - 1));
        }
        // Every start of this leaf is above `key`: the floor, if any, ends the previous leaf
        // (non-root leaves are never empty).
        let p = leaf.prev;
        (p != NIL).then(|| (p, self.leaves[p as usize].len as usize - 1))
    }

    /// The entry containing `addr` (`start <= addr < end`).
    #[inline]
    pub(crate) fn find_containing(&self, addr: u64) -> Option<(u64, u64, V)> {
        let (l, i) = self.floor_pos(addr)?;
        let e = self.entry(l, i);
        (addr < e.1).then_some(e)
    }

    /// The position after (leaf, index) along the chain.
    #[inline]
    fn step(&self, l: u32, i: usize) -> Option<(u32, usize)> {
        let leaf = &self.leaves[l as usize];
        if i + 1 < leaf.len as usize {
            return Some((l, i + 1));
        }
        let mut n = leaf.next;
        while n != NIL {
            if self.leaves[n as usize].len > 0 {
                return Some((n, 0));
            }
            n = self.leaves[n as usize].next;
        }
        None
    }

    /// The first position, if any.
    fn first_pos(&self) -> Option<(u32, usize)> {
        if self.root == NIL {
            return None;
        }
        let mut n = self.root;
        for _ in 0..self.height {
            n = self.inners[n as usize].children[0];
        }
        if self.leaves[n as usize].len > 0 {
            Some((n, 0))
        } else {
            None
        }
    }

    /// Every entry, ascending.
    pub(crate) fn iter(&self) -> Iter<'_, V> {
        Iter {
            tree: self,
            pos: self.first_pos(),
        }
    }

    /// The entries overlapping `[start, end)`, ascending.
    pub(crate) fn iter_overlapping(
        &self,
        start: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, u64, V)> + '_ {
        let from = match self.floor_pos(start) {
            Some((l, i)) if self.leaves[l as usize].ends[i] > start => Some((l, i)),
            Some((l, i)) => self.step(l, i),
            None => self.first_pos(),
        };
        Iter {
            tree: self,
            pos: from,
        }
        .take_while(move |e| e.0 < end)
    }

    /// Unused start slots of `leaf` back to [`PAD`] (after a bulk move).
    fn pad_leaf(leaf: &mut Leaf<V>) {
        for k in &mut leaf.starts[leaf.len as usize..] {
            *k = PAD;
        }
    }

    /// `keys[0]` to 0 and unused key slots to [`PAD`] (after a bulk move).
    fn pad_inner(node: &mut Inner) {
        node.keys[0] = 0;
        for k in &mut node.keys[node.len as usize..] {
            *k = PAD;
        }
    }

    fn two_leaves(v: &mut [Leaf<V>], a: u32, b: u32) -> (&mut Leaf<V>, &mut Leaf<V>) {
        let (a, b) = (a as usize, b as usize);
        if a < b {
            let (x, y) = v.split_at_mut(b);
            (&mut x[a], &mut y[0])
        } else {
            let (x, y) = v.split_at_mut(a);
            (&mut y[0], &mut x[b])
        }
    }

    fn two_inners(v: &mut [Inner], a: u32, b: u32) -> (&mut Inner, &mut Inner) {
        let (a, b) = (a as usize, b as usize);
        if a < b {
            let (x, y) = v.split_at_mut(b);
            (&mut x[a], &mut y[0])
        } else {
            let (x, y) = v.split_at_mut(a);
            (&mut y[0], &mut x[b])
        }
    }

    /// Insert at `pos` of a leaf with room. The shifts are plain loops: a leaf holds at most
    /// [`LEAF`] entries, often none to move, and a `memmove` call costs more than that.
    #[inline]
    fn leaf_insert_at(leaf: &mut Leaf<V>, pos: usize, start: u64, end: u64, val: V) {
        let mut i = leaf.len as usize;
        while i > pos {
            leaf.starts[i] = leaf.starts[i - 1];
            leaf.ends[i] = leaf.ends[i - 1];
            leaf.vals[i] = leaf.vals[i - 1];
            i -= 1;
        }
        leaf.starts[pos] = start;
        leaf.ends[pos] = end;
        leaf.vals[pos] = val;
        leaf.len += 1;
    }

    /// Remove the entry at `pos` of a leaf (see [`BpTree::leaf_insert_at`]).
    #[inline]
    fn leaf_remove_at(leaf: &mut Leaf<V>, pos: usize) {
        let len = leaf.len as usize;
        for i in pos..len - 1 {
            leaf.starts[i] = leaf.starts[i + 1];
            leaf.ends[i] = leaf.ends[i + 1];
            leaf.vals[i] = leaf.vals[i + 1];
        }
        leaf.starts[len - 1] = PAD;
        leaf.len -= 1;
    }
}

/// Ascending iterator over the entries of a [`BpTree`].
pub(crate) struct Iter<'a, V: Copy> {
    tree: &'a BpTree<V>,
    pos: Option<(u32, usize)>,
}

impl<V: Copy> Iterator for Iter<'_, V> {
    type Item = (u64, u64, V);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (l, i) = self.pos?;
        self.pos = self.tree.step(l, i);
        Some(self.tree.entry(l, i))
    }
}

mod check;
mod insert;
mod remove;
#[cfg(test)]
mod tests;
