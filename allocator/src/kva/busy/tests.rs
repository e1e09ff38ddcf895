//! Tests of the busy lookup: unit tests and a property test against a `BTreeMap` model.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

#[test]
fn insert_get_remove() {
    let mut b: BusyTree<u32> = BusyTree::new();
    assert!(b.is_empty());
    b.insert(0x1000, 0x3000, 1).unwrap();
    b.insert(0x3000, 0x4000, 2).unwrap(); // adjacent is fine
    b.insert(0x8000, 0x9000, 3).unwrap();
    assert_eq!(b.len(), 3);
    assert_eq!(b.get(0x3000), Some((0x3000, 0x4000, 2)));
    assert_eq!(b.get(0x3001), None);
    assert_eq!(b.remove(0x3000), Some((0x3000, 0x4000, 2)));
    assert_eq!(b.remove(0x3000), None);
    assert_eq!(
        b.iter().collect::<Vec<_>>(),
        [(0x1000, 0x3000, 1), (0x8000, 0x9000, 3)]
    );
    b.check_invariants().unwrap();
}

#[test]
fn overlap_and_bad_ranges_are_refused() {
    let mut b: BusyTree<u8> = BusyTree::with_capacity(4);
    b.insert(100, 200, 0).unwrap();
    for (s, e) in [(150, 160), (50, 101), (199, 300), (100, 200), (0, 1000)] {
        assert_eq!(
            b.insert(s, e, 9),
            Err(BusyError::Overlap {
                start: s,
                end: e,
                busy_start: 100,
                busy_end: 200
            })
        );
    }
    assert_eq!(
        b.insert(5, 5, 0),
        Err(BusyError::InvalidRange { start: 5, end: 5 })
    );
    assert_eq!(
        b.insert(6, 5, 0),
        Err(BusyError::InvalidRange { start: 6, end: 5 })
    );
    b.insert(0, 100, 1).unwrap();
    b.insert(200, 201, 2).unwrap();
    assert_eq!(b.len(), 3);
    b.check_invariants().unwrap();
}

#[test]
fn find_containing_and_overlapping_walk() {
    let mut b: BusyTree<&'static str> = BusyTree::new();
    b.insert(10, 20, "a").unwrap();
    b.insert(30, 40, "b").unwrap();
    b.insert(40, 50, "c").unwrap();
    assert_eq!(b.find_containing(9), None);
    assert_eq!(b.find_containing(10), Some((10, 20, "a")));
    assert_eq!(b.find_containing(19), Some((10, 20, "a")));
    assert_eq!(b.find_containing(20), None);
    assert_eq!(b.find_containing(40), Some((40, 50, "c")));
    assert_eq!(b.find_containing(u64::MAX), None);
    let names = |s, e| b.iter_overlapping(s, e).map(|x| x.2).collect::<Vec<_>>();
    assert_eq!(names(0, 100), ["a", "b", "c"]);
    assert_eq!(names(15, 31), ["a", "b"]);
    assert_eq!(names(20, 30), Vec::<&str>::new());
    assert_eq!(names(39, 41), ["b", "c"]);
    assert_eq!(names(0, 5), Vec::<&str>::new());
    assert_eq!(b.set_value(30, "B"), Some("b"));
    assert_eq!(b.set_value(31, "x"), None);
    assert_eq!(b.get(30), Some((30, 40, "B")));
}

#[test]
fn many_areas_with_pointer_values() {
    let n = if cfg!(miri) { 50u64 } else { 15_000 };
    let descs: Vec<u64> = (0..n).collect();
    let mut b: BusyTree<*const u64> = BusyTree::new();
    for (i, d) in descs.iter().enumerate() {
        let s = 0x1000 * (i as u64 * 2 + 1);
        b.insert(s, s + 0x1000, d as *const u64).unwrap();
    }
    b.check_invariants().unwrap();
    for i in 0..n {
        let s = 0x1000 * (i * 2 + 1);
        let (_, _, p) = b.find_containing(s + 0x800).unwrap();
        // SAFETY: `p` points into `descs`, alive for the whole test.
        assert_eq!(unsafe { *p }, i);
        assert_eq!(b.find_containing(s + 0x1000), None);
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u64, u64),
    Remove(u64),
    Containing(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0u64..500, 1u64..20).prop_map(|(s, l)| Op::Insert(s, l)),
        2 => (0u64..500).prop_map(Op::Remove),
        2 => (0u64..520).prop_map(Op::Containing),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 3 } else { 128 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn matches_btreemap(ops in proptest::collection::vec(op(), 0..if cfg!(miri) { 25 } else { 200 })) {
        let mut b: BusyTree<u64> = BusyTree::new();
        let mut m: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        let mut tag = 0;
        for op in ops {
            match op {
                Op::Insert(s, l) => {
                    tag += 1;
                    let e = s + l;
                    let clash = m.iter().any(|(&ms, &(me, _))| ms < e && s < me);
                    let res = b.insert(s, e, tag);
                    prop_assert_eq!(res.is_ok(), !clash);
                    if !clash {
                        m.insert(s, (e, tag));
                    }
                }
                Op::Remove(s) => {
                    prop_assert_eq!(b.remove(s), m.remove(&s).map(|(e, v)| (s, e, v)));
                }
                Op::Containing(a) => {
                    let want = m.range(..=a).next_back()
                        .filter(|(_, (e, _))| a < *e)
                        .map(|(&s, &(e, v))| (s, e, v));
                    prop_assert_eq!(b.find_containing(a), want);
                }
            }
            b.check_invariants().map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(b.len(), m.len());
        }
        prop_assert!(b.iter().eq(m.iter().map(|(&s, &(e, v))| (s, e, v))));
    }
}
