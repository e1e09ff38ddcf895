//! The invariant check of a [`BpTree`] (tests, fuzzing and `Kva::check_invariants`).

#[allow(unused_imports)]
use crate::prelude::*;

use super::*;

impl<V: Copy> BpTree<V> {
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
