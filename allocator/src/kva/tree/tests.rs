//! Tests of the generic AVL tree against a `BTreeMap` model, with a subtree-count
//! augmentation so that augmentation maintenance is checked through rotations and removals.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Item {
    key: u64,
    payload: u64,
}

impl Keyed for Item {
    fn key(&self) -> u64 {
        self.key
    }
}

/// Augmentation: (subtree size, sum of payloads).
struct CountSum;

impl Augment<Item> for CountSum {
    type Value = (u64, u64);

    fn combine(item: &Item, l: Option<(u64, u64)>, r: Option<(u64, u64)>) -> (u64, u64) {
        let (lc, ls) = l.unwrap_or((0, 0));
        let (rc, rs) = r.unwrap_or((0, 0));
        (1 + lc + rc, item.payload.wrapping_add(ls).wrapping_add(rs))
    }
}

/// Augmentation: largest payload (ties and "unchanged" values are common, which exercises the
/// early stop of the retrace).
struct MaxPayload;

impl Augment<Item> for MaxPayload {
    type Value = u64;

    fn combine(item: &Item, l: Option<u64>, r: Option<u64>) -> u64 {
        item.payload.max(l.unwrap_or(0)).max(r.unwrap_or(0))
    }
}

type T = Tree<Item, CountSum>;

fn payload(key: u64) -> u64 {
    key * 7 % 13
}

fn item(key: u64) -> Item {
    Item {
        key,
        payload: payload(key),
    }
}

fn keys(t: &T) -> Vec<u64> {
    t.iter().map(|i| i.key).collect()
}

#[test]
fn empty_tree() {
    let t = T::new();
    assert!(t.is_empty());
    assert_eq!(t.root(), None);
    assert_eq!(t.first(), None);
    assert_eq!(t.floor(5), None);
    assert_eq!(t.ceil(5), None);
    assert_eq!(t.iter().count(), 0);
    t.check().unwrap();
}

#[test]
fn ascending_and_descending_inserts_stay_balanced() {
    let n = if cfg!(miri) { 64 } else { 4096 };
    for order in [0, 1] {
        let mut t = T::new();
        for i in 0..n {
            let k = if order == 0 { i } else { n - i };
            t.insert(item(k)).unwrap();
        }
        t.check().unwrap();
        assert_eq!(t.len(), n as usize);
        let h = t.n(t.root).height as f64;
        assert!(h <= 1.45 * (n as f64 + 2.0).log2(), "height {h} too large");
        assert_eq!(t.aug(t.root().unwrap()).0, n);
        for i in (0..n).step_by(2) {
            let k = if order == 0 { i } else { n - i };
            let id = t.find(k).unwrap();
            assert_eq!(t.remove(id), item(k));
        }
        t.check().unwrap();
        assert_eq!(t.len(), (n / 2) as usize);
    }
}

#[test]
fn duplicate_insert_is_refused_and_changes_nothing() {
    let mut t = T::new();
    let id = t.insert(item(7)).unwrap();
    assert_eq!(
        t.insert(Item { key: 7, payload: 0 }),
        Err(InsertError::Duplicate(id))
    );
    assert_eq!(t.len(), 1);
    assert_eq!(t.get(id).payload, payload(7));
    t.check().unwrap();
}

#[test]
fn navigation() {
    let mut t = T::new();
    for k in [50, 20, 80, 10, 30, 70, 90] {
        t.insert(item(k)).unwrap();
    }
    let k = |id: Option<NodeId>| id.map(|i| t.get(i).key);
    assert_eq!(k(t.first()), Some(10));
    assert_eq!(k(t.last()), Some(90));
    assert_eq!(k(t.floor(55)), Some(50));
    assert_eq!(k(t.floor(50)), Some(50));
    assert_eq!(k(t.floor(9)), None);
    assert_eq!(k(t.ceil(55)), Some(70));
    assert_eq!(k(t.ceil(91)), None);
    let id = t.find(30).unwrap();
    assert_eq!(k(t.next(id)), Some(50));
    assert_eq!(k(t.prev(id)), Some(20));
    assert_eq!(k(t.prev(t.first().unwrap())), None);
    assert_eq!(k(t.next(t.last().unwrap())), None);
    let from: Vec<u64> = t.iter_from(t.find(70)).map(|i| i.key).collect();
    assert_eq!(from, [70, 80, 90]);
}

#[test]
fn insert_before_after_and_modify() {
    let mut t = T::new();
    let a = t.insert(item(100)).unwrap();
    let b = t.insert_after(a, item(200)).unwrap();
    t.insert_before(a, item(50)).unwrap();
    t.insert_after(a, item(150)).unwrap();
    t.insert_before(b, item(175)).unwrap();
    assert_eq!(keys(&t), [50, 100, 150, 175, 200]);
    t.check().unwrap();
    t.modify(a, |i| {
        i.key = 120;
        i.payload = 1000;
    });
    assert_eq!(keys(&t), [50, 120, 150, 175, 200]);
    t.check().unwrap();
    assert_eq!(t.find(120), Some(a));
}

#[test]
fn slots_are_reused_and_reserve_preloads() {
    let mut t = T::with_capacity(8);
    assert!(t.spare() >= 8);
    let ids: Vec<_> = (0..8).map(|k| t.insert(item(k)).unwrap()).collect();
    let cap = t.nodes.capacity();
    for id in &ids[..4] {
        t.remove(*id);
    }
    assert_eq!(t.spare(), 4 + (cap - 8));
    for k in 100..104 {
        t.insert(item(k)).unwrap();
    }
    assert_eq!(t.nodes.len(), 8, "freed slots must be reused");
    t.reserve(100);
    let cap = t.nodes.capacity();
    assert!(t.spare() >= 100);
    for k in 200..300 {
        t.insert(item(k)).unwrap();
    }
    assert_eq!(
        t.nodes.capacity(),
        cap,
        "reserved insertions must not reallocate"
    );
    t.check().unwrap();
    t.clear();
    assert!(t.is_empty());
    t.check().unwrap();
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u64),
    Remove(u64),
    Modify(u64, u64),
    InsertAfter(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u64..200;
    prop_oneof![
        4 => key.clone().prop_map(Op::Insert),
        3 => key.clone().prop_map(Op::Remove),
        1 => (key.clone(), 0u64..16).prop_map(|(k, p)| Op::Modify(k, p)),
        1 => key.prop_map(Op::InsertAfter),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 3 } else { 128 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random operations mirror a BTreeMap; invariants hold after every step; node ids stay
    /// stable across other nodes' removals.
    #[test]
    fn matches_btreemap_count_sum(ops in proptest::collection::vec(op(), 0..if cfg!(miri) { 30 } else { 200 })) {
        run_ops::<CountSum>(ops)?;
    }

    #[test]
    fn matches_btreemap_max(ops in proptest::collection::vec(op(), 0..if cfg!(miri) { 30 } else { 200 })) {
        run_ops::<MaxPayload>(ops)?;
    }
}

fn run_ops<A: Augment<Item>>(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut t = Tree::<Item, A>::new();
    let mut model: BTreeMap<u64, (u64, NodeId)> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Insert(k) => match t.insert(item(k)) {
                Ok(id) => {
                    prop_assert!(!model.contains_key(&k));
                    model.insert(k, (payload(k), id));
                }
                Err(InsertError::Duplicate(id)) => prop_assert_eq!(model[&k].1, id),
                Err(e) => prop_assert!(false, "{e}"),
            },
            Op::Remove(k) => {
                let got = t.find(k).map(|id| t.remove(id));
                let want = model.remove(&k).map(|(p, _)| Item { key: k, payload: p });
                prop_assert_eq!(got, want);
            }
            Op::Modify(k, p) => {
                if let Some(id) = t.find(k) {
                    t.modify(id, |i| i.payload = p);
                    model.get_mut(&k).unwrap().0 = p;
                }
            }
            Op::InsertAfter(k) => {
                // Insert k+1 right after k when that keeps the order.
                if let Some(id) = t.find(k) {
                    if let std::collections::btree_map::Entry::Vacant(slot) = model.entry(k + 1) {
                        let nid = t.insert_after(id, item(k + 1)).unwrap();
                        slot.insert((payload(k + 1), nid));
                    }
                }
            }
        }
        t.check().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(t.len(), model.len());
        for (&k, &(p, id)) in &model {
            prop_assert_eq!(*t.get(id), Item { key: k, payload: p });
        }
        let probe = 100;
        prop_assert_eq!(
            t.floor(probe).map(|i| t.get(i).key),
            model.range(..=probe).next_back().map(|(k, _)| *k)
        );
        prop_assert_eq!(
            t.ceil(probe).map(|i| t.get(i).key),
            model.range(probe..).next().map(|(k, _)| *k)
        );
    }
    prop_assert!(t.iter().map(|i| i.key).eq(model.keys().copied()));
    Ok(())
}
