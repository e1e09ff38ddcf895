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

    /// Insert `[start, end)` with `val`; refused if empty or overlapping an entry.
    #[inline]
    pub(crate) fn insert(&mut self, start: u64, end: u64, val: V) -> Result<(), InsertError> {
        if start >= end {
            return Err(InsertError::Empty);
        }
        if self.root == NIL {
            self.root = self.new_leaf()?;
            self.height = 0;
        }
        // The descent records no path: only a split needs one, and it descends again.
        let l = self.leaf_for(start);
        let pos = self.lower_bound(l, start);
        // Neighbours: the entry before `pos` (maybe the previous leaf's last) and at `pos`
        // (maybe the next leaf's first).
        let leaf = &self.leaves[l as usize];
        let before = if pos > 0 {
            Some((leaf.starts[pos - 1], leaf.ends[pos - 1]))
        } else if leaf.prev != NIL {
            let p = &self.leaves[leaf.prev as usize];
            let k = p.len as usize - 1;
            Some((p.starts[k], p.ends[k]))
        } else {
            None
        };
        let after = if pos < leaf.len as usize {
            Some((leaf.starts[pos], leaf.ends[pos]))
        } else if leaf.next != NIL {
            let n = &self.leaves[leaf.next as usize];
            (n.len > 0).then(|| (n.starts[0], n.ends[0]))
        } else {
            None
        };
        if let Some((s, e)) = before.filter(|&(_, e)| e > start) {
            return Err(InsertError::Overlap(s, e));
        }
        if let Some((s, e)) = after.filter(|&(s, _)| s < end) {
            return Err(InsertError::Overlap(s, e));
        }
        if (self.leaves[l as usize].len as usize) < LEAF {
            Self::leaf_insert_at(&mut self.leaves[l as usize], pos, start, end, val);
            self.len += 1;
            return Ok(());
        }
        self.insert_split(l, pos, start, end, val)
    }

    /// [`BpTree::insert`] into the full leaf `l` at `pos`: split it (out of line: one
    /// insertion in [`LEAF`] at most comes here).
    #[cold]
    fn insert_split(
        &mut self,
        l: u32,
        pos: usize,
        start: u64,
        end: u64,
        val: V,
    ) -> Result<(), InsertError> {
        // Reserve every node the split may need first, so that an exhausted arena changes
        // nothing.
        let mut path = Path::new();
        self.descend(start, &mut path);
        self.reserve_inners(&path)?;
        let r = self.new_leaf()?;
        let append = pos == LEAF && self.leaves[l as usize].next == NIL;
        let mid = if append { LEAF } else { LEAF / 2 };
        {
            let (left, right) = Self::two_leaves(&mut self.leaves, l, r);
            let moved = LEAF - mid;
            right.starts[..moved].copy_from_slice(&left.starts[mid..]);
            right.ends[..moved].copy_from_slice(&left.ends[mid..]);
            right.vals[..moved].copy_from_slice(&left.vals[mid..]);
            right.len = moved as u32;
            left.len = mid as u32;
            Self::pad_leaf(left);
            right.prev = l;
            right.next = left.next;
            left.next = r;
            if pos <= mid && !append {
                Self::leaf_insert_at(left, pos, start, end, val);
            } else {
                Self::leaf_insert_at(right, pos - mid, start, end, val);
            }
        }
        let next = self.leaves[r as usize].next;
        if next != NIL {
            self.leaves[next as usize].prev = r;
        }
        self.len += 1;
        let sep = self.leaves[r as usize].starts[0];
        self.insert_child(&mut path, sep, r);
        Ok(())
    }

    /// Make sure a split propagating up `path` (and a new root) finds its inner nodes.
    fn reserve_inners(&mut self, path: &Path) -> Result<(), InsertError> {
        let full = (0..path.depth)
            .rev()
            .take_while(|&d| self.inners[path.steps[d].0 as usize].len as usize == FAN)
            .count();
        let need = full + usize::from(full == path.depth);
        while self.free_inners.len() < need {
            let id = u32::try_from(self.inners.len())
                .ok()
                .filter(|&i| i != NIL)
                .ok_or(InsertError::Full)?;
            self.inners.push(Inner {
                keys: [PAD; FAN],
                children: [NIL; FAN],
                len: 0,
            });
            self.free_inners.push(id);
        }
        Ok(())
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

    /// Insert child `new` (whose subtree starts at `sep`) right after the child taken at the
    /// deepest step of `path`, splitting upwards as needed (inner nodes reserved beforehand).
    fn insert_child(&mut self, path: &mut Path, mut sep: u64, mut new: u32) {
        while path.depth > 0 {
            path.depth -= 1;
            let (n, i) = path.steps[path.depth];
            let at = i as usize + 1;
            let len = self.inners[n as usize].len as usize;
            if len < FAN {
                let node = &mut self.inners[n as usize];
                node.keys.copy_within(at..len, at + 1);
                node.children.copy_within(at..len, at + 1);
                node.keys[at] = sep;
                node.children[at] = new;
                node.len += 1;
                return;
            }
            // Split `n` (FAN children + the new one). Appending at the end of the last node
            // of its level keeps `n` full.
            let append = at == FAN
                && (0..path.depth).all(|d| {
                    let (a, k) = path.steps[d];
                    k + 1 == self.inners[a as usize].len
                });
            let Some(r) = self.free_inners.pop() else {
                return; // unreachable: reserved
            };
            self.inners[r as usize] = Inner {
                keys: [PAD; FAN],
                children: [NIL; FAN],
                len: 0,
            };
            let mut keys = [0u64; FAN + 1];
            let mut kids = [NIL; FAN + 1];
            {
                let node = &self.inners[n as usize];
                keys[..at].copy_from_slice(&node.keys[..at]);
                kids[..at].copy_from_slice(&node.children[..at]);
                keys[at] = sep;
                kids[at] = new;
                keys[at + 1..].copy_from_slice(&node.keys[at..]);
                kids[at + 1..].copy_from_slice(&node.children[at..]);
            }
            // (Two children go right even then: an inner node never has a single child, so
            // a leaf below it always has a sibling to even out with.)
            let mid = if append { FAN - 1 } else { FAN.div_ceil(2) };
            let (left, right) = Self::two_inners(&mut self.inners, n, r);
            left.keys[..mid].copy_from_slice(&keys[..mid]);
            left.children[..mid].copy_from_slice(&kids[..mid]);
            left.len = mid as u32;
            let moved = FAN + 1 - mid;
            right.keys[..moved].copy_from_slice(&keys[mid..]);
            right.children[..moved].copy_from_slice(&kids[mid..]);
            right.len = moved as u32;
            sep = keys[mid];
            Self::pad_inner(left);
            Self::pad_inner(right);
            new = r;
        }
        // The root split: a new root above it.
        let Some(root) = self.free_inners.pop() else {
            return; // unreachable: reserved
        };
        let mut node = Inner {
            keys: [PAD; FAN],
            children: [NIL; FAN],
            len: 2,
        };
        node.children[0] = self.root;
        node.children[1] = new;
        node.keys[0] = 0;
        node.keys[1] = sep;
        self.inners[root as usize] = node;
        self.root = root;
        self.height += 1;
    }

    /// Remove the entry starting exactly at `start` if `check(start, end, value)` accepts it:
    /// `Ok(None)` if there is none, `Err` (nothing changed) if `check` refuses. One descent.
    #[inline]
    pub(crate) fn remove_checked<E>(
        &mut self,
        start: u64,
        check: impl FnOnce(u64, u64, V) -> Result<(), E>,
    ) -> Result<Option<(u64, u64, V)>, E> {
        if self.root == NIL {
            return Ok(None);
        }
        let l = self.leaf_for(start);
        let pos = self.lower_bound(l, start);
        let leaf = &mut self.leaves[l as usize];
        if pos >= leaf.len as usize || leaf.starts[pos] != start {
            return Ok(None);
        }
        let e = (leaf.starts[pos], leaf.ends[pos], leaf.vals[pos]);
        check(e.0, e.1, e.2)?;
        Self::leaf_remove_at(leaf, pos);
        self.len -= 1;
        if self.height > 0 && (leaf.len as usize) < MIN_LEAF {
            self.rebalance_after_remove(start);
        }
        Ok(Some(e))
    }

    /// Remove the entry starting exactly at `start`.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, start: u64) -> Option<(u64, u64, V)> {
        self.remove_checked(start, |_, _, _| Ok::<(), ()>(()))
            .ok()
            .flatten()
    }

    /// The leaf that held `start` fell below a quarter: descend again, recording the path,
    /// to even out or merge (out of line: rare).
    #[cold]
    fn rebalance_after_remove(&mut self, start: u64) {
        let mut path = Path::new();
        self.descend(start, &mut path);
        self.rebalance_leaf(&mut path);
    }

    /// The leaf reached by `path` fell below a quarter: even out with or merge into a sibling.
    fn rebalance_leaf(&mut self, path: &mut Path) {
        let (p, i) = path.steps[path.depth - 1];
        let i = i as usize;
        let plen = self.inners[p as usize].len as usize;
        // Work on the pair (left, right) = (i - 1, i) or (i, i + 1).
        let li = if i > 0 { i - 1 } else { i };
        if li + 1 >= plen {
            return; // a single child (only while the parent itself is being fixed)
        }
        let (a, b) = {
            let node = &self.inners[p as usize];
            (node.children[li], node.children[li + 1])
        };
        let (alen, blen) = (
            self.leaves[a as usize].len as usize,
            self.leaves[b as usize].len as usize,
        );
        if alen + blen <= LEAF {
            // Merge b into a, unlink b.
            let next = {
                let (left, right) = Self::two_leaves(&mut self.leaves, a, b);
                left.starts[alen..alen + blen].copy_from_slice(&right.starts[..blen]);
                left.ends[alen..alen + blen].copy_from_slice(&right.ends[..blen]);
                left.vals[alen..alen + blen].copy_from_slice(&right.vals[..blen]);
                left.len = (alen + blen) as u32;
                left.next = right.next;
                right.len = 0;
                Self::pad_leaf(right);
                right.next
            };
            if next != NIL {
                self.leaves[next as usize].prev = a;
            }
            self.free_leaves.push(b);
            self.remove_child(path, li + 1);
            return;
        }
        // Even out: move entries across so that both hold about half.
        let total = alen + blen;
        let want_a = total / 2;
        let (left, right) = Self::two_leaves(&mut self.leaves, a, b);
        if alen > want_a {
            let k = alen - want_a;
            right.starts.copy_within(..blen, k);
            right.ends.copy_within(..blen, k);
            right.vals.copy_within(..blen, k);
            right.starts[..k].copy_from_slice(&left.starts[want_a..alen]);
            right.ends[..k].copy_from_slice(&left.ends[want_a..alen]);
            right.vals[..k].copy_from_slice(&left.vals[want_a..alen]);
        } else {
            let k = want_a - alen;
            left.starts[alen..want_a].copy_from_slice(&right.starts[..k]);
            left.ends[alen..want_a].copy_from_slice(&right.ends[..k]);
            left.vals[alen..want_a].copy_from_slice(&right.vals[..k]);
            right.starts.copy_within(k..blen, 0);
            right.ends.copy_within(k..blen, 0);
            right.vals.copy_within(k..blen, 0);
        }
        left.len = want_a as u32;
        right.len = (total - want_a) as u32;
        Self::pad_leaf(left);
        Self::pad_leaf(right);
        let sep = right.starts[0];
        self.inners[p as usize].keys[li + 1] = sep;
    }

    /// Remove child `at` (> 0) of the inner node at the deepest step of `path` (its subtree
    /// was merged into child `at - 1`), fixing that node's fill in turn.
    fn remove_child(&mut self, path: &mut Path, at: usize) {
        path.depth -= 1;
        let (n, _) = path.steps[path.depth];
        let node = &mut self.inners[n as usize];
        let len = node.len as usize;
        node.keys.copy_within(at + 1..len, at);
        node.children.copy_within(at + 1..len, at);
        node.keys[len - 1] = PAD;
        node.len -= 1;
        let len = len - 1;
        if path.depth == 0 {
            if len == 1 {
                // The root has a single child: it becomes the root.
                self.root = node.children[0];
                self.height -= 1;
                self.free_inners.push(n);
            }
            return;
        }
        if len >= MIN_FAN {
            return;
        }
        let (p, i) = path.steps[path.depth - 1];
        let i = i as usize;
        let li = if i > 0 { i - 1 } else { i };
        let (a, b, sep) = {
            let pn = &self.inners[p as usize];
            if li + 1 >= pn.len as usize {
                return;
            }
            (pn.children[li], pn.children[li + 1], pn.keys[li + 1])
        };
        let (alen, blen) = (
            self.inners[a as usize].len as usize,
            self.inners[b as usize].len as usize,
        );
        if alen + blen <= FAN {
            let (left, right) = Self::two_inners(&mut self.inners, a, b);
            left.children[alen..alen + blen].copy_from_slice(&right.children[..blen]);
            left.keys[alen] = sep;
            left.keys[alen + 1..alen + blen].copy_from_slice(&right.keys[1..blen]);
            left.len = (alen + blen) as u32;
            right.len = 0;
            Self::pad_inner(left);
            self.free_inners.push(b);
            self.remove_child(path, li + 1);
            return;
        }
        // Even out through the parent's separator.
        let total = alen + blen;
        let want_a = total / 2;
        let mut keys = [0u64; 2 * FAN];
        let mut kids = [NIL; 2 * FAN];
        {
            let (left, right) = Self::two_inners(&mut self.inners, a, b);
            keys[..alen].copy_from_slice(&left.keys[..alen]);
            kids[..alen].copy_from_slice(&left.children[..alen]);
            keys[alen] = sep;
            kids[alen..total].copy_from_slice(&right.children[..blen]);
            keys[alen + 1..total].copy_from_slice(&right.keys[1..blen]);
            left.keys[..want_a].copy_from_slice(&keys[..want_a]);
            left.children[..want_a].copy_from_slice(&kids[..want_a]);
            left.len = want_a as u32;
            let nb = total - want_a;
            right.keys[..nb].copy_from_slice(&keys[want_a..total]);
            right.children[..nb].copy_from_slice(&kids[want_a..total]);
            right.len = nb as u32;
            Self::pad_inner(left);
            Self::pad_inner(right);
        }
        self.inners[p as usize].keys[li + 1] = keys[want_a];
    }

    /// Verify the invariants of the module documentation.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.root == NIL {
            return if self.len == 0 {
                Ok(())
            } else {
                Err(format!("no root but len {}", self.len))
            };
        }
        let mut leaves = Vec::new();
        self.check_node(
            self.root,
            self.height,
            (None, None),
            true,
            true,
            &mut leaves,
        )?;
        // The chain visits the leaves in order.
        let mut n = leaves[0];
        if self.leaves[n as usize].prev != NIL {
            return Err("first leaf has a predecessor".into());
        }
        for (k, &want) in leaves.iter().enumerate() {
            if n != want {
                return Err(format!("leaf chain: step {k} reaches {n}, expected {want}"));
            }
            let next = self.leaves[n as usize].next;
            if next != NIL && self.leaves[next as usize].prev != n {
                return Err(format!("leaf {next}'s prev is not {n}"));
            }
            n = next;
        }
        if n != NIL {
            return Err("leaf chain runs past the last leaf".into());
        }
        let mut count = 0;
        let mut prev_end: Option<u64> = None;
        for (s, e, _) in self.iter() {
            if s >= e {
                return Err(format!("empty entry at {s:#x}"));
            }
            if prev_end.is_some_and(|pe| pe > s) {
                return Err(format!("overlap at {s:#x}"));
            }
            prev_end = Some(e);
            count += 1;
        }
        if count != self.len {
            return Err(format!("len {} but {count} entries", self.len));
        }
        Ok(())
    }

    fn check_node(
        &self,
        n: u32,
        level: usize,
        (lo, hi): (Option<u64>, Option<u64>),
        root: bool,
        rightmost: bool,
        leaves: &mut Vec<u32>,
    ) -> Result<(), String> {
        let in_bounds = |k: u64| lo.is_none_or(|lo| k >= lo) && hi.is_none_or(|hi| k < hi);
        if level == 0 {
            let leaf = &self.leaves[n as usize];
            let len = leaf.len as usize;
            if !root && len < if rightmost { 1 } else { MIN_LEAF } {
                return Err(format!("leaf {n} holds {len} < {MIN_LEAF}"));
            }
            for k in 0..len {
                if !in_bounds(leaf.starts[k]) || (k > 0 && leaf.starts[k - 1] >= leaf.starts[k]) {
                    return Err(format!("leaf {n}: key {:#x} out of order", leaf.starts[k]));
                }
            }
            if leaf.starts[len..].iter().any(|&k| k != PAD) {
                return Err(format!("leaf {n}: an unused slot is not padded"));
            }
            leaves.push(n);
            return Ok(());
        }
        let node = &self.inners[n as usize];
        let len = node.len as usize;
        if len < if root || rightmost { 2 } else { MIN_FAN } {
            return Err(format!("inner {n} has {len} children"));
        }
        if node.keys[0] != 0 || node.keys[len..].iter().any(|&k| k != PAD) {
            return Err(format!(
                "inner {n}: key slot 0 or an unused slot is not padded"
            ));
        }
        for k in 1..len {
            if !in_bounds(node.keys[k]) || (k > 1 && node.keys[k - 1] >= node.keys[k]) {
                return Err(format!(
                    "inner {n}: separator {:#x} out of order",
                    node.keys[k]
                ));
            }
        }
        for k in 0..len {
            let clo = if k == 0 { lo } else { Some(node.keys[k]) };
            let chi = if k + 1 < len {
                Some(node.keys[k + 1])
            } else {
                hi
            };
            let last = rightmost && k + 1 == len;
            self.check_node(node.children[k], level - 1, (clo, chi), false, last, leaves)?;
        }
        Ok(())
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

#[cfg(test)]
mod tests;
