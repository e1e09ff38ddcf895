//! Insertion into a [`BpTree`]: one descent, then a split of the leaf and of its
//! ancestors when full (out of line: the common insert is a shift within one leaf).

#[allow(unused_imports)]
use crate::prelude::*;

use super::*;

impl<V: Copy> BpTree<V> {
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
}
