//! The B+ tree against a `BTreeMap` model: every operation's result, the invariants after
//! every step, and occupancy for the ascending pattern.

use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

type Model = BTreeMap<u64, (u64, u32)>;

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn model_overlaps(m: &Model, s: u64, e: u64) -> bool {
    m.range(..e)
        .next_back()
        .is_some_and(|(_, &(end, _))| end > s)
}

fn model_containing(m: &Model, a: u64) -> Option<(u64, u64, u32)> {
    m.range(..=a)
        .next_back()
        .filter(|&(_, &(e, _))| a < e)
        .map(|(&s, &(e, v))| (s, e, v))
}

fn same(t: &BpTree<u32>, m: &Model) {
    t.check().unwrap();
    let got: Vec<_> = t.iter().collect();
    let want: Vec<_> = m.iter().map(|(&s, &(e, v))| (s, e, v)).collect();
    assert_eq!(got, want);
    assert_eq!(t.len(), m.len());
}

/// Random inserts and removes over `space` slots, checking against the model.
fn churn(seed: u64, steps: usize, space: u64, check_every: usize) {
    let mut r = Rng(seed | 1);
    let mut t = BpTree::new(0u32);
    let mut m = Model::new();
    for step in 0..steps {
        let s = r.next() % space;
        let len = 1 + r.next() % 3;
        match r.next() % 3 {
            0 | 1 => {
                let res = t.insert(s, s + len, step as u32);
                if s + len > s && !model_overlaps(&m, s, s + len) {
                    assert_eq!(res, Ok(()), "insert {s}");
                    m.insert(s, (s + len, step as u32));
                } else {
                    assert!(matches!(res, Err(InsertError::Overlap(..))), "{res:?}");
                }
            }
            _ => {
                let want = m.remove(&s).map(|(e, v)| (s, e, v));
                assert_eq!(t.remove(s), want);
            }
        }
        let a = r.next() % (space + 4);
        assert_eq!(
            t.find_containing(a),
            model_containing(&m, a),
            "containing {a}"
        );
        assert_eq!(t.get(a), m.get(&a).map(|&(e, v)| (a, e, v)));
        if step % check_every == 0 {
            same(&t, &m);
        }
    }
    same(&t, &m);
    // Drain in a scrambled order down to empty.
    let keys: Vec<u64> = m.keys().copied().collect();
    for (k, s) in keys.iter().enumerate() {
        let i = (k * 7919) % keys.len();
        let _ = s;
        let key = keys[i];
        if let Some((e, v)) = m.remove(&key) {
            assert_eq!(t.remove(key), Some((key, e, v)));
        }
    }
    for &key in &keys {
        if let Some((e, v)) = m.remove(&key) {
            assert_eq!(t.remove(key), Some((key, e, v)));
        }
    }
    same(&t, &m);
    assert_eq!(t.len(), 0);
}

#[test]
fn random_churn_matches_the_model() {
    let steps = if cfg!(miri) { 600 } else { 40_000 };
    for seed in 1..4 {
        churn(seed, steps, 4096, if cfg!(miri) { 50 } else { 997 });
        churn(seed + 10, steps, 200, if cfg!(miri) { 50 } else { 997 });
    }
}

#[test]
fn ascending_inserts_fill_leaves() {
    let n = if cfg!(miri) { 500 } else { 100_000 };
    let mut t = BpTree::new(0u32);
    for i in 0..n {
        t.insert(i * 2, i * 2 + 2, i as u32).unwrap();
    }
    t.check().unwrap();
    let leaves = t.leaves.len() - t.free_leaves.len();
    // Every leaf but the last is full.
    assert_eq!(leaves, (n as usize).div_ceil(LEAF));
    for i in 0..n {
        assert_eq!(
            t.find_containing(i * 2 + 1),
            Some((i * 2, i * 2 + 2, i as u32))
        );
    }
    // Remove all but every 8th: merges keep every leaf at least a quarter full.
    for i in 0..n {
        if i % 8 != 0 {
            assert!(t.remove(i * 2).is_some());
        }
    }
    t.check().unwrap();
    assert_eq!(t.len(), n.div_ceil(8) as usize);
    for i in (0..n).step_by(8) {
        assert_eq!(t.remove(i * 2).map(|e| e.0), Some(i * 2));
    }
    t.check().unwrap();
    assert_eq!(t.len(), 0);
    assert_eq!(t.iter().next(), None);
    // Reusable after emptying.
    t.insert(10, 20, 1).unwrap();
    assert_eq!(t.find_containing(15), Some((10, 20, 1)));
}

#[test]
fn descending_and_interleaved_inserts() {
    let n = if cfg!(miri) { 300 } else { 20_000 };
    let mut t = BpTree::new(0u32);
    let mut m = Model::new();
    for i in (0..n).rev() {
        t.insert(i * 4, i * 4 + 1, 0).unwrap();
        m.insert(i * 4, (i * 4 + 1, 0));
    }
    for i in 0..n {
        t.insert(i * 4 + 2, i * 4 + 3, 1).unwrap();
        m.insert(i * 4 + 2, (i * 4 + 3, 1));
    }
    same(&t, &m);
    let got: Vec<_> = t.iter_overlapping(41, 83).map(|e| e.0).collect();
    let want: Vec<_> = m
        .range(40..83)
        .map(|(&s, _)| s)
        .filter(|&s| s + 1 > 41)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn overlap_and_empty_are_refused() {
    let mut t = BpTree::new(0u32);
    assert_eq!(t.insert(5, 5, 0), Err(InsertError::Empty));
    t.insert(10, 20, 0).unwrap();
    assert_eq!(t.insert(15, 25, 0), Err(InsertError::Overlap(10, 20)));
    assert_eq!(t.insert(5, 11, 0), Err(InsertError::Overlap(10, 20)));
    assert_eq!(t.insert(20, 30, 0), Ok(()));
    assert_eq!(t.insert(0, 10, 0), Ok(()));
    assert_eq!(t.remove_checked(10, |_, _, _| Err("no")), Err("no"));
    assert_eq!(t.len(), 3);
    *t.get_mut(20).unwrap() = 9;
    assert_eq!(t.get(20), Some((20, 30, 9)));
    assert!(t.capacity() >= 3);
    assert!(format!("{t:?}").contains("20"));
}

proptest! {
    // Under Miri, no regression file (its isolation refuses `getcwd`).
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: if cfg!(miri) { None } else { ProptestConfig::default().failure_persistence },
        ..ProptestConfig::default()
    })]
    #[test]
    fn operations_match_the_model(ops in proptest::collection::vec((0u8..3, 0u64..300, 1u64..4), 1..400)) {
        let mut t = BpTree::new(0u32);
        let mut m = Model::new();
        for (k, &(op, s, len)) in ops.iter().enumerate() {
            if op < 2 {
                let ok = !model_overlaps(&m, s, s + len);
                prop_assert_eq!(t.insert(s, s + len, k as u32).is_ok(), ok);
                if ok {
                    m.insert(s, (s + len, k as u32));
                }
            } else {
                prop_assert_eq!(t.remove(s), m.remove(&s).map(|(e, v)| (s, e, v)));
            }
            prop_assert_eq!(t.find_containing(s), model_containing(&m, s));
        }
        prop_assert!(t.check().is_ok());
        let got: Vec<_> = t.iter().collect();
        let want: Vec<_> = m.iter().map(|(&s, &(e, v))| (s, e, v)).collect();
        prop_assert_eq!(got, want);
    }
}
