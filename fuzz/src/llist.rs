//! The `llist` target: operation sequences on one [`LlistHead`] and a few detached [`Chain`]s,
//! checked against a `VecDeque` model after every step.
//!
//! Sixteen nodes live in a fixed array (stable addresses, as the intrusive list requires);
//! each node is, in the model, free, on the list, or on one of [`CHAINS`] detached chains. The
//! list is read back after every operation by detaching it with `del_all`, comparing the
//! chain's order (newest first) with the model, and pushing it back with `add_chain` (which
//! must keep the order); chains are compared with `iter`, `len`, `first` and `is_empty`.
//! Operations on nodes in the wrong state are skipped by the harness (they would break the
//! `unsafe` contracts, which is the caller's bug, not the list's). Every node is also in
//! exactly the places its state says.
//!
//! How it is fast: the per-step check compares iterators element by element and counts
//! places in a fixed array; it built a `Vec` (and cloned a `VecDeque`) per chain per step and
//! scanned every model for every node, which, each allocation costing more than the whole
//! comparison under ASan, made it 3x slower.

use std::collections::VecDeque;
use std::ptr::NonNull;

use arbitrary::Arbitrary;
use vmalloc::internals::llist::{Chain, Intrusive, LlistHead, LlistNode};

/// Nodes in the pool.
pub const NODES: usize = 16;
/// Detached chain slots.
pub const CHAINS: usize = 3;

/// A node with a payload (its index).
struct Item {
    id: usize,
    link: LlistNode,
}

vmalloc::impl_llist_intrusive!(Item, link);

/// One step.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `add` of one free node (the first free one at or after the index).
    Add(u8),
    /// `add_chain` of a batch of up to 8 free nodes built with `push_front`.
    AddBatch {
        /// Where to start looking for free nodes.
        from: u8,
        /// How many.
        n: u8,
    },
    /// The same batch pushed with the raw `add_batch(first, last)`.
    AddBatchRaw {
        /// Where to start looking for free nodes.
        from: u8,
        /// How many.
        n: u8,
    },
    /// `del_all` into a chain slot (whatever the slot held is released first).
    DelAll(u8),
    /// `del_first` (single consumer).
    DelFirst,
    /// `reverse_order` of a chain slot.
    Reverse(u8),
    /// `pop_front` of a chain slot.
    PopFront(u8),
    /// `push_front` of a free node onto a chain slot.
    PushFront {
        /// The slot.
        slot: u8,
        /// Where to start looking for a free node.
        node: u8,
    },
    /// `add_chain` of a chain slot back onto the list.
    AddChain(u8),
    /// Consume a chain slot with `into_iter` (its nodes become free).
    Release(u8),
}

/// Where a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Free,
    Listed,
    Chained(usize),
}

struct Harness {
    items: Box<[Item]>,
    head: LlistHead,
    chains: [Chain; CHAINS],
    /// Model of the list, newest first.
    list: VecDeque<usize>,
    /// Models of the chains, first to last.
    mchains: [VecDeque<usize>; CHAINS],
    place: [Place; NODES],
}

impl Harness {
    fn new() -> Self {
        Self {
            items: (0..NODES)
                .map(|id| Item {
                    id,
                    link: LlistNode::new(),
                })
                .collect(),
            head: LlistHead::new(),
            chains: [Chain::new(), Chain::new(), Chain::new()],
            list: VecDeque::new(),
            mchains: Default::default(),
            place: [Place::Free; NODES],
        }
    }

    fn node(&self, i: usize) -> NonNull<LlistNode> {
        Item::to_node(NonNull::from(&self.items[i]))
    }

    fn id_of(&self, n: NonNull<LlistNode>) -> usize {
        // SAFETY: every node on the list or a chain came from `Item::to_node` of an item of
        // `self.items`, which lives as long as the harness.
        let item = unsafe { Item::from_node(n).as_ref() };
        assert!(
            std::ptr::eq(&self.items[item.id], item),
            "from_node did not invert to_node"
        );
        item.id
    }

    fn first_free(&self, from: u8) -> Option<usize> {
        (0..NODES)
            .map(|k| (from as usize + k) % NODES)
            .find(|&i| self.place[i] == Place::Free)
    }

    fn free_batch(&self, from: u8, n: u8) -> Vec<usize> {
        let want = (n as usize % 8) + 1;
        (0..NODES)
            .map(|k| (from as usize + k) % NODES)
            .filter(|&i| self.place[i] == Place::Free)
            .take(want)
            .collect()
    }

    /// Build a chain of `ids` (in this order, first = ids[0]) with `push_front`.
    fn build_chain(&self, ids: &[usize]) -> Chain {
        let mut c = Chain::new();
        for &i in ids.iter().rev() {
            // SAFETY: the node is free (on no list or chain) and the items outlive the chain.
            unsafe { c.push_front(self.node(i)) };
        }
        c
    }

    fn release_slot(&mut self, s: usize) {
        let chain = std::mem::take(&mut self.chains[s]);
        let expect = std::mem::take(&mut self.mchains[s]);
        let got: Vec<usize> = chain.into_iter().map(|n| self.id_of(n)).collect();
        assert_eq!(
            got,
            Vec::from(expect.clone()),
            "into_iter order of chain {s}"
        );
        for i in expect {
            self.place[i] = Place::Free;
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Add(from) => {
                let Some(i) = self.first_free(from) else {
                    return;
                };
                // SAFETY: free node, items outlive the list.
                let was_empty = unsafe { self.head.add(self.node(i)) };
                assert_eq!(was_empty, self.list.is_empty(), "add's was-empty result");
                self.list.push_front(i);
                self.place[i] = Place::Listed;
            }
            Op::AddBatch { from, n } | Op::AddBatchRaw { from, n } => {
                let ids = self.free_batch(from, n);
                if ids.is_empty() {
                    return;
                }
                let chain = self.build_chain(&ids);
                assert_eq!(chain.len(), ids.len());
                let was_empty = if matches!(op, Op::AddBatch { .. }) {
                    self.head.add_chain(chain)
                } else {
                    let first = self.node(ids[0]);
                    let last = self.node(ids[ids.len() - 1]);
                    assert_eq!(chain.first(), Some(first));
                    // The chain's links are the batch's: `add_batch` takes them over (a `Chain`
                    // owns no node, so letting it go is all there is to do).
                    let _ = chain;
                    // SAFETY: the batch is linked first -> .. -> last by `build_chain`, every
                    // node is free and outlives the list, nobody else touches the links.
                    unsafe { self.head.add_batch(first, last) }
                };
                assert_eq!(was_empty, self.list.is_empty(), "batch was-empty result");
                for &i in ids.iter().rev() {
                    self.list.push_front(i);
                    self.place[i] = Place::Listed;
                }
            }
            Op::DelAll(s) => {
                let s = s as usize % CHAINS;
                self.release_slot(s);
                let chain = self.head.del_all();
                assert!(self.head.is_empty(), "list not empty after del_all");
                let got: Vec<usize> = chain.iter().map(|n| self.id_of(n)).collect();
                assert_eq!(got, Vec::from(self.list.clone()), "del_all order");
                for &i in &self.list {
                    self.place[i] = Place::Chained(s);
                }
                self.mchains[s] = std::mem::take(&mut self.list);
                self.chains[s] = chain;
            }
            Op::DelFirst => {
                // SAFETY: single-threaded: we are the only consumer.
                let got = unsafe { self.head.del_first() }.map(|n| self.id_of(n));
                let want = self.list.pop_front();
                assert_eq!(got, want, "del_first");
                if let Some(i) = want {
                    self.place[i] = Place::Free;
                }
            }
            Op::Reverse(s) => {
                let s = s as usize % CHAINS;
                let c = std::mem::take(&mut self.chains[s]);
                self.chains[s] = c.reverse_order();
                let m = &mut self.mchains[s];
                *m = m.iter().rev().copied().collect();
            }
            Op::PopFront(s) => {
                let s = s as usize % CHAINS;
                let got = self.chains[s].pop_front().map(|n| self.id_of(n));
                let want = self.mchains[s].pop_front();
                assert_eq!(got, want, "pop_front of chain {s}");
                if let Some(i) = want {
                    self.place[i] = Place::Free;
                }
            }
            Op::PushFront { slot, node } => {
                let s = slot as usize % CHAINS;
                let Some(i) = self.first_free(node) else {
                    return;
                };
                // SAFETY: free node, items outlive the chain.
                unsafe { self.chains[s].push_front(self.node(i)) };
                self.mchains[s].push_front(i);
                self.place[i] = Place::Chained(s);
            }
            Op::AddChain(s) => {
                let s = s as usize % CHAINS;
                let chain = std::mem::take(&mut self.chains[s]);
                let ids = std::mem::take(&mut self.mchains[s]);
                let was_empty = self.head.add_chain(chain);
                assert_eq!(
                    was_empty,
                    !ids.is_empty() && self.list.is_empty(),
                    "add_chain was-empty result"
                );
                for &i in ids.iter().rev() {
                    self.list.push_front(i);
                    self.place[i] = Place::Listed;
                }
            }
            Op::Release(s) => self.release_slot(s as usize % CHAINS),
        }
        self.check();
    }

    /// After every step: the list (detached, compared, re-attached in order) and every
    /// chain (`iter`, `len`, `is_empty`, `first`) equal the models, and every node is in
    /// exactly the places its state says. Compared element by element, without collecting
    /// (this runs after every step; an allocation costs more than the whole comparison under
    /// ASan): a `Vec` is only built for the message of a difference.
    fn check(&mut self) {
        assert_eq!(self.head.is_empty(), self.list.is_empty(), "is_empty");
        // Read the list back: detach, compare, re-attach (order kept).
        let chain = self.head.del_all();
        if !chain
            .iter()
            .map(|n| self.id_of(n))
            .eq(self.list.iter().copied())
        {
            let got: Vec<usize> = chain.iter().map(|n| self.id_of(n)).collect();
            panic!("list contents: {got:?}, model {:?}", self.list);
        }
        let was_empty = self.head.add_chain(chain);
        assert_eq!(was_empty, !self.list.is_empty());
        for s in 0..CHAINS {
            let c = &self.chains[s];
            let m = &self.mchains[s];
            if !c.iter().map(|n| self.id_of(n)).eq(m.iter().copied()) {
                let got: Vec<usize> = c.iter().map(|n| self.id_of(n)).collect();
                panic!("chain {s} contents: {got:?}, model {m:?}");
            }
            assert_eq!(c.len(), m.len());
            assert_eq!(c.is_empty(), m.is_empty());
            assert_eq!(c.first().map(|n| self.id_of(n)), m.front().copied());
        }
        let mut count = [0usize; NODES];
        for &i in self.list.iter().chain(self.mchains.iter().flatten()) {
            count[i] += 1;
        }
        for (i, p) in self.place.iter().enumerate() {
            assert_eq!(
                count[i],
                usize::from(*p != Place::Free),
                "node {i} in {} places",
                count[i]
            );
        }
    }

    /// Take every node back (so nothing points into the items when they are dropped).
    fn finish(mut self) {
        for s in 0..CHAINS {
            self.release_slot(s);
        }
        let got: Vec<usize> = self
            .head
            .del_all()
            .into_iter()
            .map(|n| self.id_of(n))
            .collect();
        assert_eq!(got, Vec::from(self.list.clone()));
    }
}

/// Run one input.
pub fn run(ops: &[Op]) {
    let mut h = Harness::new();
    for op in ops {
        h.step(op);
    }
    h.finish();
}
