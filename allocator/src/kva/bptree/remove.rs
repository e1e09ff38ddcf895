//! Removal from a [`BpTree`]: one descent, then, below a quarter of a node's capacity, an
//! even-out with a sibling or a merge into it, upwards as needed (out of line).

#[allow(unused_imports)]
use crate::prelude::*;

use super::*;

impl<V: Copy> BpTree<V> {
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
}
