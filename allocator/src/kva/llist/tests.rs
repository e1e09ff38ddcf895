//! Tests of the lock-free list: unit tests, a multi-producer stress against a `del_all`
//! consumer, and a single-threaded property test against a `VecDeque` model.

use std::collections::VecDeque;
use std::ptr::NonNull;

use proptest::prelude::*;

use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

struct Item {
    value: u64,
    link: LlistNode,
}
crate::impl_llist_intrusive!(Item, link);

fn new_item(value: u64) -> NonNull<Item> {
    NonNull::from(Box::leak(Box::new(Item {
        value,
        link: LlistNode::new(),
    })))
}

/// # Safety
/// `node` came from `Item::to_node` of a leaked `Box<Item>` that is freed nowhere else.
unsafe fn free_item(node: NonNull<LlistNode>) -> u64 {
    // SAFETY: per the function contract the node is the link of a live boxed Item.
    let item = unsafe { Box::from_raw(Item::from_node(node).as_ptr()) };
    item.value
}

fn values(chain: &Chain) -> Vec<u64> {
    // SAFETY: every node in these tests is the link of a live Item.
    chain
        .iter()
        .map(|n| unsafe { Item::from_node(n).as_ref() }.value)
        .collect()
}

fn free_chain(chain: Chain) -> Vec<u64> {
    // SAFETY: each node is consumed once and was leaked by `new_item`.
    chain.into_iter().map(|n| unsafe { free_item(n) }).collect()
}

#[test]
fn add_reports_emptiness_and_del_all_is_newest_first() {
    let head = LlistHead::new();
    assert!(head.is_empty());
    let mut firsts = Vec::new();
    for v in 0..4 {
        // SAFETY: fresh item, on no list, freed below after del_all.
        firsts.push(unsafe { head.add(Item::to_node(new_item(v))) });
    }
    assert_eq!(firsts, [true, false, false, false]);
    assert!(!head.is_empty());
    let chain = head.del_all();
    assert!(head.is_empty());
    assert_eq!(chain.len(), 4);
    assert_eq!(values(&chain), [3, 2, 1, 0]);
    let chain = chain.reverse_order();
    assert_eq!(values(&chain), [0, 1, 2, 3]);
    assert_eq!(free_chain(chain), [0, 1, 2, 3]);
    assert!(head.del_all().is_empty());
}

#[test]
fn del_first_pops_newest_and_clears_link() {
    let head = LlistHead::new();
    for v in 10..13 {
        // SAFETY: fresh item, freed below.
        unsafe { head.add(Item::to_node(new_item(v))) };
    }
    let mut got = Vec::new();
    // SAFETY: this test is the only consumer.
    while let Some(n) = unsafe { head.del_first() } {
        // SAFETY: the node was just taken off and is ours.
        assert!(unsafe { n.as_ref() }.next.load(Ordering::Relaxed).is_null());
        // SAFETY: node of a leaked Item, consumed once.
        got.push(unsafe { free_item(n) });
    }
    assert_eq!(got, [12, 11, 10]);
    assert!(head.is_empty());
}

#[test]
fn chains_build_and_add_as_batches() {
    let head = LlistHead::new();
    let mut batch = Chain::new();
    for v in 0..3 {
        // SAFETY: fresh items, owned by the chain until added.
        unsafe { batch.push_front(Item::to_node(new_item(v))) };
    }
    assert_eq!(values(&batch), [2, 1, 0]);
    assert!(head.add_chain(batch));
    assert!(!head.add_chain(Chain::new()));
    // SAFETY: fresh item.
    assert!(!unsafe { head.add(Item::to_node(new_item(9))) });
    // A chain from del_all (unknown last) can be re-added: its last node is found by walking.
    let taken = head.del_all();
    assert_eq!(values(&taken), [9, 2, 1, 0]);
    assert!(head.add_chain(taken));
    // And a reversed one (last cached).
    let rev = head.del_all().reverse_order();
    assert!(head.add_chain(rev));
    let all = head.del_all();
    assert_eq!(values(&all), [0, 1, 2, 9]);
    assert_eq!(free_chain(all), [0, 1, 2, 9]);
    assert!(head.is_empty());
}

#[test]
fn chains_append_in_order() {
    let head = LlistHead::new();
    for v in 0..3 {
        // SAFETY: fresh items.
        unsafe { head.add(Item::to_node(new_item(v))) };
    }
    // A detached chain (last node unknown) followed by a built one, then an empty one.
    let mut a = head.del_all();
    let mut b = Chain::new();
    for v in 5..7 {
        // SAFETY: fresh items, owned by the chain.
        unsafe { b.push_front(Item::to_node(new_item(v))) };
    }
    a.append(b);
    a.append(Chain::new());
    assert_eq!(values(&a), [2, 1, 0, 6, 5]);
    // Onto an empty chain, then more after it: the last node is kept.
    let mut c = Chain::new();
    c.append(a);
    let mut d = Chain::new();
    // SAFETY: fresh item.
    unsafe { d.push_front(Item::to_node(new_item(9))) };
    c.append(d);
    assert_eq!(values(&c), [2, 1, 0, 6, 5, 9]);
    assert_eq!(free_chain(c), [2, 1, 0, 6, 5, 9]);
}

#[test]
fn raw_add_batch_and_pop_front() {
    let head = LlistHead::new();
    let a = Item::to_node(new_item(1));
    let b = Item::to_node(new_item(2));
    let mut batch = Chain::new();
    // SAFETY: fresh items.
    unsafe {
        batch.push_front(b);
        batch.push_front(a);
    }
    assert_eq!(batch.first(), Some(a));
    // SAFETY: the batch a -> b is linked and owned; we forget the chain object and hand the
    // nodes to the list.
    assert!(unsafe { head.add_batch(a, b) });
    let mut chain = head.del_all();
    assert_eq!(chain.pop_front(), Some(a));
    assert_eq!(chain.pop_front(), Some(b));
    assert_eq!(chain.pop_front(), None);
    // SAFETY: both were leaked items, each freed once.
    unsafe {
        free_item(a);
        free_item(b);
    }
}

#[test]
fn consuming_iterator_allows_reuse_during_iteration() {
    let head = LlistHead::new();
    let other = LlistHead::new();
    for v in 0..5 {
        // SAFETY: fresh items.
        unsafe { head.add(Item::to_node(new_item(v))) };
    }
    // Re-list every node on another list while iterating: legal because the link is read
    // before the node is yielded.
    for n in head.del_all() {
        // SAFETY: the node is ours (yielded by the consuming iterator) and stays live.
        unsafe { other.add(n) };
    }
    assert_eq!(free_chain(other.del_all()), [0, 1, 2, 3, 4]);
}

#[test]
fn chain_is_send() {
    fn assert_send<T: Send>() {}
    fn assert_sync<T: Sync + Send>() {}
    assert_send::<Chain>();
    assert_sync::<LlistHead>();
}

#[test]
fn stress_producers_and_del_all_consumer_see_every_node_once() {
    const PRODUCERS: u64 = 4;
    let per: u64 = if cfg!(miri) { 40 } else { 20_000 };
    let head = Arc::new(LlistHead::new());
    let done = Arc::new(AtomicBool::new(false));
    let consumer = {
        let (head, done) = (Arc::clone(&head), Arc::clone(&done));
        thread::spawn(move || {
            let mut seen = vec![0u8; (PRODUCERS * per) as usize];
            let mut batches = 0usize;
            loop {
                let finished = done.load(Ordering::Acquire);
                let chain = head.del_all();
                if !chain.is_empty() {
                    batches += 1;
                }
                for v in free_chain(chain) {
                    seen[v as usize] += 1;
                }
                if finished {
                    break;
                }
                thread::yield_now();
            }
            (seen, batches)
        })
    };
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let head = Arc::clone(&head);
            thread::spawn(move || {
                for i in 0..per {
                    // SAFETY: fresh item; the consumer frees it exactly once.
                    unsafe { head.add(Item::to_node(new_item(p * per + i))) };
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    done.store(true, Ordering::Release);
    let (seen, batches) = consumer.join().unwrap();
    assert!(batches >= 1);
    assert!(seen.iter().all(|&c| c == 1), "some node seen 0 or 2+ times");
    assert!(head.is_empty());
}

#[test]
fn stress_batches_and_single_del_first_consumer() {
    let per: u64 = if cfg!(miri) { 20 } else { 5_000 };
    let head = Arc::new(LlistHead::new());
    let producers: Vec<_> = (0..2u64)
        .map(|p| {
            let head = Arc::clone(&head);
            thread::spawn(move || {
                for i in 0..per {
                    let mut c = Chain::new();
                    let base = (p * per + i) * 2;
                    // SAFETY: fresh items, handed to the list through the chain.
                    unsafe {
                        c.push_front(Item::to_node(new_item(base)));
                        c.push_front(Item::to_node(new_item(base + 1)));
                    }
                    head.add_chain(c);
                }
            })
        })
        .collect();
    let total = (2 * per * 2) as usize;
    let mut seen = vec![0u8; total];
    let mut got = 0;
    while got < total {
        // SAFETY: this thread is the only consumer of `head`.
        match unsafe { head.del_first() } {
            Some(n) => {
                // SAFETY: leaked item, consumed once.
                let v = unsafe { free_item(n) };
                seen[v as usize] += 1;
                got += 1;
            }
            None => thread::yield_now(),
        }
    }
    for p in producers {
        p.join().unwrap();
    }
    assert!(seen.iter().all(|&c| c == 1));
}

#[derive(Debug, Clone)]
enum Op {
    Add(u64),
    AddBatch(Vec<u64>),
    DelFirst,
    DelAll { reverse: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<u64>().prop_map(Op::Add),
        2 => proptest::collection::vec(any::<u64>(), 0..5).prop_map(Op::AddBatch),
        3 => Just(Op::DelFirst),
        1 => any::<bool>().prop_map(|reverse| Op::DelAll { reverse }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: if cfg!(miri) { 4 } else { 256 },
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Single-threaded op sequences against a VecDeque model (front = newest).
    #[test]
    fn ops_match_vecdeque_model(ops in proptest::collection::vec(op(), 0..40)) {
        let head = LlistHead::new();
        let mut model: VecDeque<u64> = VecDeque::new();
        for op in ops {
            match op {
                Op::Add(v) => {
                    // SAFETY: fresh item, freed when taken off.
                    let was_empty = unsafe { head.add(Item::to_node(new_item(v))) };
                    prop_assert_eq!(was_empty, model.is_empty());
                    model.push_front(v);
                }
                Op::AddBatch(vs) => {
                    let mut c = Chain::new();
                    for &v in vs.iter().rev() {
                        // SAFETY: fresh item.
                        unsafe { c.push_front(Item::to_node(new_item(v))) };
                    }
                    let was_empty = head.add_chain(c);
                    prop_assert_eq!(was_empty, model.is_empty() && !vs.is_empty());
                    for &v in vs.iter().rev() {
                        model.push_front(v);
                    }
                }
                Op::DelFirst => {
                    // SAFETY: single-threaded: the only consumer.
                    let got = unsafe { head.del_first() }.map(|n| unsafe { free_item(n) });
                    prop_assert_eq!(got, model.pop_front());
                }
                Op::DelAll { reverse } => {
                    let mut chain = head.del_all();
                    let mut want: Vec<u64> = model.drain(..).collect();
                    if reverse {
                        chain = chain.reverse_order();
                        want.reverse();
                    }
                    prop_assert_eq!(free_chain(chain), want);
                }
            }
            prop_assert_eq!(head.is_empty(), model.is_empty());
        }
        free_chain(head.del_all());
    }
}
