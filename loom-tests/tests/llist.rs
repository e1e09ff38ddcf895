//! Loom models of `vmalloc::internals::llist`, the lock-free list behind lazy freeing.
//!
//! Each node carries a payload in a loom `UnsafeCell`, written by its producer right before the
//! push and read by whoever takes it off: loom reports a causality violation if the push's
//! `Release` / the removal's `Acquire` did not order them. On top of that every model asserts:
//!
//! * every node pushed is taken off exactly once (no loss, no duplicate);
//! * `del_all` chains are newest first: for two nodes of one producer in the same chain, the
//!   later push comes first, and the earlier one is never in a later chain of the same consumer;
//! * a batch pushed with `add_chain` is contiguous and in order in whatever chain holds it;
//! * the number of pushes that returned "was empty" equals the number of non-empty chains taken
//!   (each empty -> non-empty transition is seen by exactly one producer);
//! * `del_first` with a single consumer returns each node once, and what remains afterwards
//!   comes out newest first.

#![cfg(feature = "loom")]

use std::ptr::NonNull;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::thread;
use loom_tests::check;
use vmalloc::internals::llist::{Chain, Intrusive, LlistHead, LlistNode};

/// Preemption bound of these models (they are small: 3 costs seconds).
const BOUND: usize = 3;

/// What a producer writes into node `id` before pushing it.
const fn stamp(id: usize) -> u64 {
    0xA5A5_0000 + id as u64
}

struct Item {
    id: usize,
    payload: UnsafeCell<u64>,
    link: LlistNode,
}
vmalloc::impl_llist_intrusive!(Item, link);

/// The nodes (stable addresses: a boxed slice that outlives every thread) and the list.
struct Pool {
    items: Box<[Item]>,
    head: LlistHead,
}

// SAFETY: the only non-`Sync` field is the loom `UnsafeCell` payload. Each payload is written by
// exactly one producer before it pushes the node, and read only by the thread that took the
// node off the list; loom checks that those accesses are ordered (that is what the models test).
unsafe impl Sync for Pool {}
// SAFETY: as above; nothing in `Pool` is tied to the thread that created it.
unsafe impl Send for Pool {}

impl Pool {
    fn new(n: usize) -> Arc<Self> {
        let items = (0..n)
            .map(|id| Item {
                id,
                payload: UnsafeCell::new(0),
                link: LlistNode::new(),
            })
            .collect();
        Arc::new(Self {
            items,
            head: LlistHead::new(),
        })
    }

    fn node(&self, id: usize) -> NonNull<LlistNode> {
        Item::to_node(NonNull::from(&self.items[id]))
    }

    /// Write node `id`'s payload (the producer's part before a push).
    fn stamp(&self, id: usize) {
        // SAFETY: node `id` is on no list and only this producer touches it now.
        self.items[id]
            .payload
            .with_mut(|p| unsafe { *p = stamp(id) });
    }

    /// Stamp and push node `id`; returns `add`'s "was empty".
    fn push(&self, id: usize) -> bool {
        self.stamp(id);
        // SAFETY: node `id` is live for the whole model (the pool outlives every thread), is
        // pushed once and is on no list or chain.
        unsafe { self.head.add(self.node(id)) }
    }

    /// Stamp `ids` and push them as one batch, `ids[0]` newest; returns "was empty".
    fn push_batch(&self, ids: &[usize]) -> bool {
        let mut chain = Chain::new();
        for &id in ids.iter().rev() {
            self.stamp(id);
            // SAFETY: as in `push`: live for the whole model, on no list or chain.
            unsafe { chain.push_front(self.node(id)) };
        }
        self.head.add_chain(chain)
    }

    /// Check that `node` is one of ours, that its payload is visible, and return its id.
    fn take(&self, node: NonNull<LlistNode>) -> usize {
        // SAFETY: every node on the list came from `Item::to_node` on a pool item, which the
        // pool keeps alive.
        let item = unsafe { Item::from_node(node).as_ref() };
        assert!(
            self.items.iter().any(|i| core::ptr::eq(i, item)),
            "a node that is not ours came off the list"
        );
        // SAFETY: the producer's write happened before its Release push, and we acquired the
        // node through del_all/del_first; loom flags the read otherwise.
        let v = item.payload.with(|p| unsafe { *p });
        assert_eq!(
            v,
            stamp(item.id),
            "payload of node {} not visible to its consumer",
            item.id
        );
        item.id
    }

    /// Take the whole list (one swap) and return the ids, newest first.
    fn drain_all(&self) -> Vec<usize> {
        self.head
            .del_all()
            .into_iter()
            .map(|n| self.take(n))
            .collect()
    }
}

/// Every id in `0..n` appears exactly once over all `chains`.
fn assert_each_once(chains: &[Vec<usize>], n: usize) {
    let mut seen = vec![0usize; n];
    for c in chains {
        for &id in c {
            seen[id] += 1;
        }
    }
    assert!(
        seen.iter().all(|&s| s == 1),
        "node counts {seen:?} in chains {chains:?}"
    );
}

/// Producer order `earlier` then `later` (same thread): within one chain `later` comes first,
/// and across the ordered `chains` of one consumer `earlier` is never in a later chain.
fn assert_newest_first(chains: &[Vec<usize>], earlier: usize, later: usize) {
    let pos = |id| {
        chains
            .iter()
            .enumerate()
            .find_map(|(ci, c)| c.iter().position(|&x| x == id).map(|p| (ci, p)))
    };
    if let (Some((ce, pe)), Some((cl, pl))) = (pos(earlier), pos(later)) {
        assert!(
            ce <= cl,
            "node {earlier} taken after node {later} pushed later: {chains:?}"
        );
        if ce == cl {
            assert!(pl < pe, "chain not newest first: {chains:?}");
        }
    }
}

fn non_empty(chains: &[Vec<usize>]) -> usize {
    chains.iter().filter(|c| !c.is_empty()).count()
}

/// Two producers (one pushing twice) against a consumer taking the list twice with `del_all`;
/// the main thread takes what is left after joining.
#[test]
fn add_vs_del_all() {
    check("llist_add_vs_del_all", BOUND, || {
        let pool = Pool::new(3);
        let p1 = {
            let pool = pool.clone();
            thread::spawn(move || usize::from(pool.push(0)) + usize::from(pool.push(1)))
        };
        let p2 = {
            let pool = pool.clone();
            thread::spawn(move || usize::from(pool.push(2)))
        };
        let consumer = {
            let pool = pool.clone();
            thread::spawn(move || vec![pool.drain_all(), pool.drain_all()])
        };
        let was_empty = p1.join().unwrap() + p2.join().unwrap();
        let mut chains = consumer.join().unwrap();
        chains.push(pool.drain_all());
        assert!(pool.head.is_empty());

        assert_each_once(&chains, 3);
        assert_newest_first(&chains, 0, 1);
        assert_eq!(
            was_empty,
            non_empty(&chains),
            "add()'s was-empty results vs {chains:?}"
        );
    });
}

/// `del_all` needs no lock against `del_all`: two consumers race a producer.
#[test]
fn del_all_vs_del_all() {
    check("llist_del_all_vs_del_all", BOUND, || {
        let pool = Pool::new(2);
        let producer = {
            let pool = pool.clone();
            thread::spawn(move || usize::from(pool.push(0)) + usize::from(pool.push(1)))
        };
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let pool = pool.clone();
                thread::spawn(move || pool.drain_all())
            })
            .collect();
        let was_empty = producer.join().unwrap();
        let mut chains: Vec<Vec<usize>> =
            consumers.into_iter().map(|c| c.join().unwrap()).collect();
        chains.push(pool.drain_all());

        assert_each_once(&chains, 2);
        for c in &chains {
            if c.len() == 2 {
                assert_eq!(c, &[1, 0], "chain not newest first");
            }
        }
        assert_eq!(
            was_empty,
            non_empty(&chains),
            "add()'s was-empty results vs {chains:?}"
        );
    });
}

/// A batch (`add_chain`, i.e. `add_batch`) and a single `add` race a `del_all`: the batch is
/// never split nor interleaved, and `reverse_order` gives the final chain oldest first.
#[test]
fn add_batch_vs_add_vs_del_all() {
    check("llist_add_batch_vs_add_vs_del_all", BOUND, || {
        let pool = Pool::new(3);
        let batcher = {
            let pool = pool.clone();
            // Batch 1 -> 0: node 1 becomes the newer of the two.
            thread::spawn(move || usize::from(pool.push_batch(&[1, 0])))
        };
        let single = {
            let pool = pool.clone();
            thread::spawn(move || usize::from(pool.push(2)))
        };
        let consumer = {
            let pool = pool.clone();
            thread::spawn(move || pool.drain_all())
        };
        let was_empty = batcher.join().unwrap() + single.join().unwrap();
        let first = consumer.join().unwrap();
        // The rest, oldest first through reverse_order, then flipped back to compare.
        let rest = pool.head.del_all();
        let rest_len = rest.len();
        let mut oldest_first: Vec<usize> = rest
            .reverse_order()
            .into_iter()
            .map(|n| pool.take(n))
            .collect();
        assert_eq!(oldest_first.len(), rest_len);
        oldest_first.reverse();
        let chains = vec![first, oldest_first];

        assert_each_once(&chains, 3);
        for c in &chains {
            if let Some(p) = c.iter().position(|&x| x == 1) {
                assert_eq!(
                    c.get(p + 1),
                    Some(&0),
                    "batch split or reordered: {chains:?}"
                );
            }
        }
        assert_eq!(
            was_empty,
            non_empty(&chains),
            "add's was-empty results vs {chains:?}"
        );
    });
}

/// `del_first` with ONE consumer against two producers: each node is removed exactly once, and
/// what the consumer left behind comes out newest first.
#[test]
fn del_first_single_consumer_vs_add() {
    check("llist_del_first_single_consumer_vs_add", BOUND, || {
        let pool = Pool::new(3);
        let p1 = {
            let pool = pool.clone();
            thread::spawn(move || {
                pool.push(0);
                pool.push(1);
            })
        };
        let p2 = {
            let pool = pool.clone();
            thread::spawn(move || {
                pool.push(2);
            })
        };
        let consumer = {
            let pool = pool.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                for _ in 0..2 {
                    // SAFETY: this thread is the only consumer while the producers run; the
                    // main thread consumes only after joining it.
                    if let Some(n) = unsafe { pool.head.del_first() } {
                        got.push(pool.take(n));
                    }
                }
                got
            })
        };
        p1.join().unwrap();
        p2.join().unwrap();
        let popped = consumer.join().unwrap();
        let mut rest = Vec::new();
        // SAFETY: every other thread has been joined: the main thread is the only consumer.
        while let Some(n) = unsafe { pool.head.del_first() } {
            rest.push(pool.take(n));
        }
        assert!(pool.head.is_empty());
        let chains = vec![popped, rest];
        assert_each_once(&chains, 3);
        // The leftovers were all on the list together: strictly newest first.
        if let (Some(a), Some(b)) = (
            chains[1].iter().position(|&x| x == 0),
            chains[1].iter().position(|&x| x == 1),
        ) {
            assert!(b < a, "del_first not newest first: {chains:?}");
        }
    });
}
