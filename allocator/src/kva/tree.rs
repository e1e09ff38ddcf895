//! An index-arena AVL tree, optionally augmented, keyed by `u64`.
//!
//! # How it works
//!
//! Nodes live in one `Vec` and refer to each other by `u32` index (`left`, `right`,
//! `parent`); a removed node's slot goes on a free-index list threaded through its `left`
//! field and is reused by the next insertion. Once the arena has grown (or was preloaded with
//! [`Tree::with_capacity`] / [`Tree::reserve`]), no operation allocates: this is the analogue
//! of Linux's per-CPU `ne_fit_preload`, done outside the caller's lock.
//!
//! Each node caches its subtree height and an augmentation value computed by an [`Augment`]
//! callback from the node's item and its children's values (for the free tree: the largest
//! free size in the subtree, Linux's `subtree_max_size`; [`NoAugment`] for plain lookup).
//! After any change the path to the root is recomputed bottom-up, with AVL rotations where a
//! node's children differ in height by two; the walk stops as soon as a subtree's height and
//! augmentation come out unchanged, since nothing above can change then.
//!
//! Every hot path is iterative (parent links, no recursion, no allocation); only
//! [`Tree::check`] (tests) recurses, to a depth bounded by the tree height.
//!
//! # Invariants
//!
//! * In-order traversal yields strictly increasing keys.
//! * For every node, `|height(left) - height(right)| <= 1` and `height = 1 + max(..)`.
//! * For every node, `aug = A::combine(item, aug(left), aug(right))`.
//! * Parent links mirror child links; the root's parent is `NIL`.
//! * A [`NodeId`] stays valid (designates the same item) until that item is removed.
//!
//! # Locking
//!
//! None inside: a `Tree` is a plain `&mut` data structure; callers put it behind their lock
//! (the shard lock in `vmalloc`). It holds no atomics, so memory ordering is the lock's.

#[allow(unused_imports)]
use crate::prelude::*;
use core::fmt;
use core::iter::FusedIterator;

/// The "no node" index.
const NIL: u32 = u32::MAX;

/// The largest number of nodes a tree can hold (indices are `u32`, `u32::MAX` is `NIL`).
pub const MAX_NODES: usize = (u32::MAX - 1) as usize;

/// Items stored in a [`Tree`]: plain copyable values with a `u64` key.
pub trait Keyed: Copy {
    /// The key the tree is ordered by (unique within a tree).
    fn key(&self) -> u64;
}

/// How a node's augmentation value is computed from its item and its children's values.
pub trait Augment<T> {
    /// The cached per-subtree value.
    type Value: Copy + PartialEq + fmt::Debug;

    /// The value for a subtree whose root holds `item` and whose children have the given
    /// values (`None` for a missing child).
    fn combine(item: &T, left: Option<Self::Value>, right: Option<Self::Value>) -> Self::Value;
}

/// No augmentation (a plain balanced search tree).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAugment;

impl<T> Augment<T> for NoAugment {
    type Value = ();

    #[inline]
    fn combine(_: &T, _: Option<()>, _: Option<()>) {}
}

/// A handle to a node of a [`Tree`]; valid until its item is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(u32);

/// A broken tree invariant, found by [`Tree::check`] (a bug, reported for tests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tree invariant broken: {0}")]
pub struct InvariantViolation(pub String);

/// The tree could not take one more node: `u32` indices are exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tree is full ({MAX_NODES} nodes)")]
pub struct TreeFull;

/// Why an insertion failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// An item with the same key is already in the tree (the node holding it).
    #[error("key already present")]
    Duplicate(NodeId),
    /// No index left.
    #[error(transparent)]
    Full(#[from] TreeFull),
}

#[derive(Debug, Clone, Copy)]
struct Node<T, V> {
    item: T,
    aug: V,
    left: u32,
    right: u32,
    parent: u32,
    height: u8,
}

/// An index-arena AVL tree of `T` ordered by [`Keyed::key`], augmented by `A`.
#[derive(Clone)]
pub struct Tree<T: Keyed, A: Augment<T> = NoAugment> {
    nodes: Vec<Node<T, A::Value>>,
    root: u32,
    /// Head of the free-slot list (threaded through `left`).
    free: u32,
    free_count: usize,
    len: usize,
}

impl<T: Keyed + fmt::Debug, A: Augment<T>> fmt::Debug for Tree<T, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T: Keyed, A: Augment<T>> Default for Tree<T, A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Keyed, A: Augment<T>> Tree<T, A> {
    /// An empty tree (allocates nothing until the first insertion).
    pub const fn new() -> Self {
        Self {
            nodes: Vec::new(),
            root: NIL,
            free: NIL,
            free_count: 0,
            len: 0,
        }
    }

    /// An empty tree with room for `n` items without further allocation.
    pub fn with_capacity(n: usize) -> Self {
        let mut t = Self::new();
        t.reserve(n);
        t
    }

    /// Make sure the next `additional` insertions allocate nothing (preload).
    pub fn reserve(&mut self, additional: usize) {
        let missing = additional.saturating_sub(self.spare());
        let room = self.nodes.capacity() - self.nodes.len();
        if missing > 0 {
            self.nodes.reserve_exact(room + missing);
        }
    }

    /// How many insertions can happen without allocating.
    pub fn spare(&self) -> usize {
        self.free_count + (self.nodes.capacity() - self.nodes.len())
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree holds no item.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Remove every item (keeps the arena's memory).
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.root = NIL;
        self.free = NIL;
        self.free_count = 0;
        self.len = 0;
    }

    // ----- navigation ---------------------------------------------------------------------

    #[inline]
    fn n(&self, i: u32) -> &Node<T, A::Value> {
        &self.nodes[i as usize]
    }

    #[inline]
    fn nm(&mut self, i: u32) -> &mut Node<T, A::Value> {
        &mut self.nodes[i as usize]
    }

    #[inline]
    fn id(i: u32) -> Option<NodeId> {
        (i != NIL).then_some(NodeId(i))
    }

    /// The root node.
    pub fn root(&self) -> Option<NodeId> {
        Self::id(self.root)
    }

    /// The item held by `id`.
    #[inline]
    pub fn get(&self, id: NodeId) -> &T {
        &self.n(id.0).item
    }

    /// The augmentation value of the subtree rooted at `id`.
    #[inline]
    pub fn aug(&self, id: NodeId) -> A::Value {
        self.n(id.0).aug
    }

    /// The augmentation value of a possibly missing subtree.
    #[inline]
    pub fn aug_of(&self, id: Option<NodeId>) -> Option<A::Value> {
        id.map(|i| self.n(i.0).aug)
    }

    /// Left child of `id`.
    #[inline]
    pub fn left(&self, id: NodeId) -> Option<NodeId> {
        Self::id(self.n(id.0).left)
    }

    /// Right child of `id`.
    #[inline]
    pub fn right(&self, id: NodeId) -> Option<NodeId> {
        Self::id(self.n(id.0).right)
    }

    /// Parent of `id`.
    #[inline]
    pub fn parent(&self, id: NodeId) -> Option<NodeId> {
        Self::id(self.n(id.0).parent)
    }

    fn leftmost(&self, mut i: u32) -> u32 {
        while self.n(i).left != NIL {
            i = self.n(i).left;
        }
        i
    }

    fn rightmost(&self, mut i: u32) -> u32 {
        while self.n(i).right != NIL {
            i = self.n(i).right;
        }
        i
    }

    /// The node with the smallest key.
    pub fn first(&self) -> Option<NodeId> {
        (self.root != NIL).then(|| NodeId(self.leftmost(self.root)))
    }

    /// The node with the largest key.
    pub fn last(&self) -> Option<NodeId> {
        (self.root != NIL).then(|| NodeId(self.rightmost(self.root)))
    }

    /// In-order successor of `id`.
    pub fn next(&self, id: NodeId) -> Option<NodeId> {
        let mut i = id.0;
        if self.n(i).right != NIL {
            return Some(NodeId(self.leftmost(self.n(i).right)));
        }
        let mut p = self.n(i).parent;
        while p != NIL && self.n(p).right == i {
            i = p;
            p = self.n(p).parent;
        }
        Self::id(p)
    }

    /// In-order predecessor of `id`.
    pub fn prev(&self, id: NodeId) -> Option<NodeId> {
        let mut i = id.0;
        if self.n(i).left != NIL {
            return Some(NodeId(self.rightmost(self.n(i).left)));
        }
        let mut p = self.n(i).parent;
        while p != NIL && self.n(p).left == i {
            i = p;
            p = self.n(p).parent;
        }
        Self::id(p)
    }

    /// The node whose key is `key`.
    pub fn find(&self, key: u64) -> Option<NodeId> {
        let mut i = self.root;
        while i != NIL {
            let k = self.n(i).item.key();
            i = match key.cmp(&k) {
                core::cmp::Ordering::Less => self.n(i).left,
                core::cmp::Ordering::Greater => self.n(i).right,
                core::cmp::Ordering::Equal => return Some(NodeId(i)),
            };
        }
        None
    }

    /// The node with the greatest key `<= key`.
    pub fn floor(&self, key: u64) -> Option<NodeId> {
        let (mut i, mut best) = (self.root, NIL);
        while i != NIL {
            if self.n(i).item.key() <= key {
                best = i;
                i = self.n(i).right;
            } else {
                i = self.n(i).left;
            }
        }
        Self::id(best)
    }

    /// The node with the least key `>= key`.
    pub fn ceil(&self, key: u64) -> Option<NodeId> {
        let (mut i, mut best) = (self.root, NIL);
        while i != NIL {
            if self.n(i).item.key() >= key {
                best = i;
                i = self.n(i).left;
            } else {
                i = self.n(i).right;
            }
        }
        Self::id(best)
    }

    /// Ascending iterator over the items.
    pub fn iter(&self) -> Iter<'_, T, A> {
        Iter {
            tree: self,
            cur: self.first(),
        }
    }

    /// Ascending iterator starting at node `from` (inclusive).
    pub fn iter_from(&self, from: Option<NodeId>) -> Iter<'_, T, A> {
        Iter {
            tree: self,
            cur: from,
        }
    }

    // ----- mutation -----------------------------------------------------------------------

    fn alloc_slot(&mut self, item: T, parent: u32) -> Result<u32, TreeFull> {
        let node = Node {
            item,
            aug: A::combine(&item, None, None),
            left: NIL,
            right: NIL,
            parent,
            height: 1,
        };
        let i = if self.free != NIL {
            let i = self.free;
            self.free = self.n(i).left;
            self.free_count -= 1;
            *self.nm(i) = node;
            i
        } else {
            if self.nodes.len() >= MAX_NODES {
                return Err(TreeFull);
            }
            self.nodes.push(node);
            (self.nodes.len() - 1) as u32
        };
        self.len += 1;
        Ok(i)
    }

    fn free_slot(&mut self, i: u32) {
        let free = self.free;
        let n = self.nm(i);
        n.left = free;
        n.right = NIL;
        n.parent = NIL;
        self.free = i;
        self.free_count += 1;
        self.len -= 1;
    }

    /// Insert `item`; fails (changing nothing) if its key is present or the tree is full.
    pub fn insert(&mut self, item: T) -> Result<NodeId, InsertError> {
        let key = item.key();
        let (mut p, mut go_left) = (NIL, false);
        let mut i = self.root;
        while i != NIL {
            p = i;
            let k = self.n(i).item.key();
            if key == k {
                return Err(InsertError::Duplicate(NodeId(i)));
            }
            go_left = key < k;
            i = if go_left {
                self.n(i).left
            } else {
                self.n(i).right
            };
        }
        let x = self.alloc_slot(item, p)?;
        self.attach(p, go_left, x);
        Ok(NodeId(x))
    }

    /// Insert `item` as the in-order successor of `id`, without a search. The caller
    /// guarantees `key(id) < key(item) < key(next(id))`.
    pub fn insert_after(&mut self, id: NodeId, item: T) -> Result<NodeId, TreeFull> {
        debug_assert!(self.get(id).key() < item.key());
        debug_assert!(self.next(id).is_none_or(|n| item.key() < self.get(n).key()));
        let r = self.n(id.0).right;
        let (p, go_left) = if r == NIL {
            (id.0, false)
        } else {
            (self.leftmost(r), true)
        };
        let x = self.alloc_slot(item, p)?;
        self.attach(p, go_left, x);
        Ok(NodeId(x))
    }

    /// Insert `item` as the in-order predecessor of `id`, without a search. The caller
    /// guarantees `key(prev(id)) < key(item) < key(id)`.
    pub fn insert_before(&mut self, id: NodeId, item: T) -> Result<NodeId, TreeFull> {
        debug_assert!(item.key() < self.get(id).key());
        debug_assert!(self.prev(id).is_none_or(|n| self.get(n).key() < item.key()));
        let l = self.n(id.0).left;
        let (p, go_left) = if l == NIL {
            (id.0, true)
        } else {
            (self.rightmost(l), false)
        };
        let x = self.alloc_slot(item, p)?;
        self.attach(p, go_left, x);
        Ok(NodeId(x))
    }

    fn attach(&mut self, p: u32, go_left: bool, x: u32) {
        if p == NIL {
            self.root = x;
            return;
        }
        if go_left {
            self.nm(p).left = x;
        } else {
            self.nm(p).right = x;
        }
        self.retrace(p, NIL);
    }

    /// Change the item of `id` in place and recompute the augmentation up the path. The
    /// caller keeps the order: the new key stays strictly between those of `prev(id)` and
    /// `next(id)`.
    pub fn modify(&mut self, id: NodeId, f: impl FnOnce(&mut T)) {
        f(&mut self.nm(id.0).item);
        debug_assert!(
            self.prev(id)
                .is_none_or(|p| self.get(p).key() < self.get(id).key())
        );
        debug_assert!(
            self.next(id)
                .is_none_or(|n| self.get(id).key() < self.get(n).key())
        );
        // The node's own cached value is stale; `retrace` from it recomputes it first, and
        // cannot stop before having done so.
        self.retrace(id.0, id.0);
    }

    /// Remove the item of `id` and return it. Other nodes' ids stay valid.
    pub fn remove(&mut self, id: NodeId) -> T {
        let z = id.0;
        let item = self.n(z).item;
        let (zl, zr, zp) = (self.n(z).left, self.n(z).right, self.n(z).parent);
        if zl != NIL && zr != NIL {
            // Two children: the successor `y` (leftmost of the right subtree, no left child)
            // takes z's place; y's old spot gets y's right child.
            let y = self.leftmost(zr);
            let start;
            if self.n(y).parent == z {
                start = y;
            } else {
                let (yp, yr) = (self.n(y).parent, self.n(y).right);
                self.nm(yp).left = yr;
                if yr != NIL {
                    self.nm(yr).parent = yp;
                }
                self.nm(y).right = zr;
                self.nm(zr).parent = y;
                start = yp;
            }
            self.nm(y).left = zl;
            self.nm(zl).parent = y;
            self.replace_child(zp, z, y);
            self.nm(y).parent = zp;
            // y inherits z's cached height and value (still describing z's old subtree), so
            // the early stop in `retrace` compares against the right "before" values; they
            // are stale (z's item is gone), so retrace must not stop below y.
            let (h, a) = (self.n(z).height, self.n(z).aug);
            self.nm(y).height = h;
            self.nm(y).aug = a;
            self.free_slot(z);
            self.retrace(start, y);
        } else {
            let child = if zl != NIL { zl } else { zr };
            if child != NIL {
                self.nm(child).parent = zp;
            }
            self.replace_child(zp, z, child);
            self.free_slot(z);
            if zp != NIL {
                self.retrace(zp, NIL);
            }
        }
        item
    }

    fn replace_child(&mut self, p: u32, old: u32, new: u32) {
        if p == NIL {
            self.root = new;
        } else if self.n(p).left == old {
            self.nm(p).left = new;
        } else {
            self.nm(p).right = new;
        }
    }

    #[inline]
    fn h(&self, i: u32) -> u8 {
        if i == NIL { 0 } else { self.n(i).height }
    }

    #[inline]
    fn a(&self, i: u32) -> Option<A::Value> {
        (i != NIL).then(|| self.n(i).aug)
    }

    /// Recompute `i`'s height and value from its children.
    #[inline]
    fn update(&mut self, i: u32) {
        let (l, r) = (self.n(i).left, self.n(i).right);
        let h = 1 + self.h(l).max(self.h(r));
        let a = A::combine(&self.n(i).item, self.a(l), self.a(r));
        let n = self.nm(i);
        n.height = h;
        n.aug = a;
    }

    fn rotate_left(&mut self, x: u32) -> u32 {
        let y = self.n(x).right;
        let (yl, xp) = (self.n(y).left, self.n(x).parent);
        self.nm(x).right = yl;
        if yl != NIL {
            self.nm(yl).parent = x;
        }
        self.nm(y).parent = xp;
        self.replace_child(xp, x, y);
        self.nm(y).left = x;
        self.nm(x).parent = y;
        self.update(x);
        self.update(y);
        y
    }

    fn rotate_right(&mut self, x: u32) -> u32 {
        let y = self.n(x).left;
        let (yr, xp) = (self.n(y).right, self.n(x).parent);
        self.nm(x).left = yr;
        if yr != NIL {
            self.nm(yr).parent = x;
        }
        self.nm(y).parent = xp;
        self.replace_child(xp, x, y);
        self.nm(y).right = x;
        self.nm(x).parent = y;
        self.update(x);
        self.update(y);
        y
    }

    /// Walk from `i` to the root recomputing heights and values and rebalancing. Stops early
    /// once a subtree's height and value are unchanged, but never before `barrier` (a node
    /// whose cached values are known stale) has been recomputed.
    fn retrace(&mut self, mut i: u32, mut barrier: u32) {
        while i != NIL {
            let (old_h, old_a) = (self.n(i).height, self.n(i).aug);
            self.update(i);
            let (l, r) = (self.n(i).left, self.n(i).right);
            let (hl, hr) = (self.h(l), self.h(r));
            let sub = if hl > hr + 1 {
                let (ll, lr) = (self.n(l).left, self.n(l).right);
                if self.h(ll) < self.h(lr) {
                    self.rotate_left(l);
                }
                self.rotate_right(i)
            } else if hr > hl + 1 {
                let (rl, rr) = (self.n(r).left, self.n(r).right);
                if self.h(rr) < self.h(rl) {
                    self.rotate_right(r);
                }
                self.rotate_left(i)
            } else {
                i
            };
            if i == barrier {
                barrier = NIL;
            }
            if barrier == NIL && self.n(sub).height == old_h && self.n(sub).aug == old_a {
                return;
            }
            i = self.n(sub).parent;
        }
    }

    // ----- checking -----------------------------------------------------------------------

    /// Verify every invariant (order, balance, heights, augmentation, links, counts).
    pub fn check(&self) -> Result<(), InvariantViolation> {
        let bad = |s: String| Err(InvariantViolation(s));
        if self.root != NIL && self.n(self.root).parent != NIL {
            return bad("root has a parent".into());
        }
        let count = self.check_sub(self.root, NIL, None, None)?.0;
        if count != self.len {
            return bad(format!("len {} but {} nodes reachable", self.len, count));
        }
        let (mut f, mut nf) = (self.free, 0usize);
        while f != NIL {
            nf += 1;
            if nf > self.nodes.len() {
                return bad("free list loops".into());
            }
            f = self.n(f).left;
        }
        if nf != self.free_count || self.len + nf != self.nodes.len() {
            return bad(format!(
                "free list {nf} (counted {}), len {}, arena {}",
                self.free_count,
                self.len,
                self.nodes.len()
            ));
        }
        Ok(())
    }

    /// Returns (node count, height) of the subtree at `i`.
    fn check_sub(
        &self,
        i: u32,
        parent: u32,
        lo: Option<u64>,
        hi: Option<u64>,
    ) -> Result<(usize, u8), InvariantViolation> {
        if i == NIL {
            return Ok((0, 0));
        }
        let bad = |s: String| Err(InvariantViolation(s));
        let n = self.n(i);
        let k = n.item.key();
        if n.parent != parent {
            return bad(format!("node {i}: parent {} expected {parent}", n.parent));
        }
        if lo.is_some_and(|lo| k <= lo) || hi.is_some_and(|hi| k >= hi) {
            return bad(format!(
                "node {i}: key {k:#x} out of order ({lo:?}, {hi:?})"
            ));
        }
        let (cl, hl) = self.check_sub(n.left, i, lo, Some(k))?;
        let (cr, hr) = self.check_sub(n.right, i, Some(k), hi)?;
        if hl.abs_diff(hr) > 1 {
            return bad(format!("node {i}: unbalanced ({hl} vs {hr})"));
        }
        let h = 1 + hl.max(hr);
        if n.height != h {
            return bad(format!("node {i}: height {} expected {h}", n.height));
        }
        let a = A::combine(&n.item, self.a(n.left), self.a(n.right));
        if n.aug != a {
            return bad(format!("node {i}: augmentation {:?} expected {a:?}", n.aug));
        }
        Ok((cl + cr + 1, h))
    }
}

/// Ascending iterator over a [`Tree`]'s items.
pub struct Iter<'a, T: Keyed, A: Augment<T>> {
    tree: &'a Tree<T, A>,
    cur: Option<NodeId>,
}

impl<'a, T: Keyed, A: Augment<T>> Iterator for Iter<'a, T, A> {
    type Item = &'a T;

    fn next(&mut self) -> Option<&'a T> {
        let id = self.cur?;
        self.cur = self.tree.next(id);
        Some(self.tree.get(id))
    }
}

impl<T: Keyed, A: Augment<T>> FusedIterator for Iter<'_, T, A> {}

#[cfg(test)]
mod tests;
