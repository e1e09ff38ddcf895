//! A lock-free, intrusive, singly linked list with the semantics of Linux's `<linux/llist.h>`.
//!
//! # How it works
//!
//! A [`LlistHead`] is one atomic pointer to the newest node. Nodes are [`LlistNode`]s embedded
//! in the user's own structure (intrusive: pushing allocates nothing, which is what lets
//! `vfree` run without allocating). Producers push with a compare-exchange loop
//! ([`LlistHead::add`], [`LlistHead::add_batch`], [`LlistHead::add_chain`]); the consumer takes
//! the whole list with ONE atomic swap ([`LlistHead::del_all`]) and gets a detached [`Chain`],
//! newest first, which it may walk, reverse ([`Chain::reverse_order`]) and consume at leisure:
//! nobody else can reach a detached chain.
//!
//! # Concurrency rules (Linux's table)
//!
//! | concurrently with | `add`/`add_batch` | `del_first` | `del_all` |
//! |---|---|---|---|
//! | `add`/`add_batch` | fine | fine | fine |
//! | `del_first`       | fine | **lock** | **lock** |
//! | `del_all`         | fine | **lock** | fine |
//!
//! `del_first` is `unsafe`: with two consumers it suffers from ABA. Consumer A reads
//! `first = X` and `next = X.next = Y`; consumer B then removes X and Y and a producer pushes X
//! again (or B frees X and the memory is reused); A's compare-exchange `first: X -> Y` still
//! succeeds and installs `Y`, a node that is no longer on the list (or reads freed memory when
//! it loads `X.next`). With a single consumer nobody but that consumer removes nodes, so X
//! stays on the list between the load and the compare-exchange and the problem cannot arise.
//! `del_all` is immune: it never reads a node, it swaps the head pointer out.
//!
//! Walking the list is only done on a detached [`Chain`]; the live list is never walked.
//!
//! # Memory ordering
//!
//! * `add`: the node's `next` and the user's payload are plain writes made before the push;
//!   the successful compare-exchange is `Release`, so whoever later acquires the head and
//!   finds this node also sees them. The failure ordering is `Relaxed`: the value read on
//!   failure is only stored into `node.next` and compared again, never dereferenced.
//! * `del_all`: one `swap(null, Acquire)`. Every write to the head is a read-modify-write
//!   (compare-exchange or swap), so the modification order of the head forms one release
//!   sequence headed by each `Release` push: acquiring the latest value synchronises with
//!   every push before it, i.e. with the producer of every node on the detached chain.
//! * `del_first`: `Acquire` load (it dereferences the node to read `next`) and `Acquire` on
//!   both outcomes of the compare-exchange (on failure it dereferences the new head).
//! * `is_empty`: a `Relaxed` load; it is a hint (like `llist_empty`), stale by the time it
//!   returns.
//! * Walking a detached chain uses `Relaxed` loads of `next`: the chain was acquired as a whole
//!   by `del_all`/`del_first`, so the producers' writes are already visible.
//!
//! # Getting back the containing structure
//!
//! Implement [`Intrusive`] for the containing type with [`impl_llist_intrusive!`](crate::impl_llist_intrusive) (which
//! computes the field offset with `offset_of!`, so there is no unsafe code on the caller's
//! side), then convert with [`Intrusive::to_node`] / [`Intrusive::from_node`].

#[allow(unused_imports)]
use crate::prelude::*;
use core::iter::FusedIterator;
use core::marker::PhantomData;
use core::ptr::{self, NonNull};

use crate::sync::{AtomicPtr, Ordering};

/// The link embedded in a structure that can be put on an [`LlistHead`].
///
/// A node must be on at most one list (or detached [`Chain`]) at a time.
#[derive(Debug)]
pub struct LlistNode {
    next: AtomicPtr<LlistNode>,
}

impl LlistNode {
    /// A node that is on no list.
    pub fn new() -> Self {
        Self {
            next: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// The node after `node`, as linked right now (`Relaxed`).
    ///
    /// # Safety
    ///
    /// `node` must point to a live `LlistNode` that the caller owns (it is on a detached
    /// [`Chain`] or on no list at all).
    unsafe fn next_of(node: NonNull<LlistNode>) -> *mut LlistNode {
        // SAFETY: the caller guarantees `node` is live; the atomic makes any concurrent
        // access (there is none by contract) well defined anyway.
        unsafe { node.as_ref() }.next.load(Ordering::Relaxed)
    }

    /// Set the link of `node` (`Relaxed`: publication happens through the head).
    ///
    /// # Safety
    ///
    /// As for [`LlistNode::next_of`].
    unsafe fn set_next(node: NonNull<LlistNode>, next: *mut LlistNode) {
        // SAFETY: the caller guarantees `node` is live and owned by it.
        unsafe { node.as_ref() }.next.store(next, Ordering::Relaxed);
    }
}

impl Default for LlistNode {
    fn default() -> Self {
        Self::new()
    }
}

/// The head of a lock-free list: one atomic pointer to the newest node.
///
/// Any number of producers push ([`LlistHead::add`], lock-free, allocating nothing: the
/// node is embedded in the producer's structure); a consumer takes everything with ONE
/// atomic swap ([`LlistHead::del_all`]), which needs no lock either, and walks the detached
/// [`Chain`] at leisure. The allocator's shard overflow lists (where `free_lazy` falls back
/// when a node's lazy batch is full) and `vfree_atomic`'s per-CPU deferred lists are such lists.
///
/// # Example
///
/// Four threads push nodes embedded in their own structures; one `del_all` takes them all,
/// newest first, and [`Chain::reverse_order`] gives them oldest first, each producer's in the
/// order it pushed them:
///
/// ```
/// # #[cfg(not(feature = "loom"))] {
/// use core::ptr::NonNull;
/// use vmalloc::internals::llist::{Intrusive, LlistHead, LlistNode};
///
/// struct Freed {
///     addr: u64,
///     link: LlistNode,
/// }
/// vmalloc::impl_llist_intrusive!(Freed, link);
///
/// let list = LlistHead::new();
/// std::thread::scope(|s| {
///     for t in 0..4u64 {
///         let list = &list;
///         s.spawn(move || {
///             for i in 0..100 {
///                 let f = Box::new(Freed { addr: t << 32 | i, link: LlistNode::new() });
///                 let node = Freed::to_node(NonNull::from(Box::leak(f)));
///                 // SAFETY: the node is live, on no list, and stays live until the consumer
///                 // below turns it back into its `Box`.
///                 unsafe { list.add(node) };
///             }
///         });
///     }
/// });
///
/// let chain = list.del_all();
/// assert!(list.is_empty());
/// assert_eq!(chain.len(), 400);
/// let mut next = [0u64; 4]; // next index expected from each producer
/// for node in chain.reverse_order() {
///     // SAFETY: every node came from `Freed::to_node` of a leaked, still live `Box`.
///     let f = unsafe { Box::from_raw(Freed::from_node(node).as_ptr()) };
///     let (t, i) = ((f.addr >> 32) as usize, f.addr & 0xffff_ffff);
///     assert_eq!(i, next[t]);
///     next[t] += 1;
/// }
/// assert_eq!(next, [100; 4]);
///
/// // `add` tells the producer whether the list was empty (time to wake the consumer).
/// let mut one = Freed { addr: 0, link: LlistNode::new() };
/// let node = Freed::to_node(NonNull::from(&mut one));
/// // SAFETY: `one` outlives its stay on the list: it is taken off just below.
/// assert!(unsafe { list.add(node) });
/// assert_eq!(list.del_all().len(), 1);
/// # }
/// ```
#[derive(Debug)]
pub struct LlistHead {
    first: AtomicPtr<LlistNode>,
}

impl Default for LlistHead {
    fn default() -> Self {
        Self::new()
    }
}

impl LlistHead {
    /// An empty list.
    pub fn new() -> Self {
        Self {
            first: AtomicPtr::new(ptr::null_mut()),
        }
    }

    /// Whether the list looks empty (a hint: it may change as soon as this returns).
    #[inline]
    pub fn is_empty(&self) -> bool {
        // Relaxed: nothing is dereferenced on the strength of this load.
        self.first.load(Ordering::Relaxed).is_null()
    }

    /// Push one node; returns `true` if the list was empty before (the caller may then kick a
    /// consumer, as Linux's `llist_add` users do).
    ///
    /// # Safety
    ///
    /// `node` must point to a live [`LlistNode`] that is on no list and in no [`Chain`], and
    /// it must stay live (not moved, not freed) until it has been taken off again with
    /// [`LlistHead::del_all`] or [`LlistHead::del_first`] and then released by whoever
    /// consumed it. The pointer should carry the provenance of the whole containing structure
    /// (use [`Intrusive::to_node`]) if the consumer will use [`Intrusive::from_node`].
    #[inline]
    pub unsafe fn add(&self, node: NonNull<LlistNode>) -> bool {
        // SAFETY: a single node is a batch whose first and last are the same node; the
        // caller's guarantees are exactly those `add_batch` needs.
        unsafe { self.add_batch(node, node) }
    }

    /// Push a pre-linked batch `first -> .. -> last`; returns `true` if the list was empty.
    ///
    /// # Safety
    ///
    /// Every node of the batch satisfies the contract of [`LlistHead::add`], the batch is
    /// linked from `first` to `last` through the nodes' links (build it with
    /// [`Chain::push_front`] and prefer [`LlistHead::add_chain`]), and nobody else touches the
    /// batch's links while this runs.
    #[inline]
    pub unsafe fn add_batch(&self, first: NonNull<LlistNode>, last: NonNull<LlistNode>) -> bool {
        // Relaxed initial load: the value is only used as the expected value and as the link
        // we write into `last`; it is never dereferenced.
        let mut head = self.first.load(Ordering::Relaxed);
        loop {
            // SAFETY: `last` is live and owned by the caller until the push succeeds.
            unsafe { LlistNode::set_next(last, head) };
            // Release on success: publishes the batch's links and the payloads written before
            // the push to whoever acquires the head (del_all / del_first). Relaxed on failure:
            // the observed head is only re-linked and compared again.
            match self.first.compare_exchange_weak(
                head,
                first.as_ptr(),
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(prev) => return prev.is_null(),
                Err(actual) => head = actual,
            }
        }
    }

    /// Push a whole detached chain (order kept: the chain's first node becomes the newest);
    /// returns `true` if the list was empty before. An empty chain is a no-op returning
    /// `false`.
    #[inline]
    pub fn add_chain(&self, chain: Chain) -> bool {
        let (Some(first), Some(last)) = (chain.first(), chain.last_node()) else {
            return false;
        };
        // SAFETY: the nodes of a chain are live and owned by the chain's holder (the chain
        // invariant, inherited from `add`'s contract or `Chain::push_front`'s), and linked
        // first..last; consuming `chain` hands them over to the list.
        unsafe { self.add_batch(first, last) }
    }

    /// Take every node off the list with ONE atomic swap; the chain is newest first.
    /// Needs no lock against producers nor against other `del_all` callers.
    #[inline]
    pub fn del_all(&self) -> Chain {
        // Acquire: synchronises with the Release push of every node on the chain (all writes
        // to the head are RMWs, so they continue each push's release sequence).
        let first = self.first.swap(ptr::null_mut(), Ordering::Acquire);
        Chain {
            first,
            last: ptr::null_mut(),
            _owns: PhantomData,
        }
    }

    /// Take the newest node off the list.
    ///
    /// # Safety
    ///
    /// Single consumer: no other thread may run `del_first` or `del_all` on this list at the
    /// same time (producers are fine). Otherwise ABA (see the module documentation): a node
    /// could be removed twice, or its link read after it was freed.
    #[inline]
    pub unsafe fn del_first(&self) -> Option<NonNull<LlistNode>> {
        // Acquire: we are about to read `entry.next`, written by the producer before its
        // Release push.
        let mut entry = self.first.load(Ordering::Acquire);
        loop {
            let node = NonNull::new(entry)?;
            // SAFETY: `node` is on the list and only this (single) consumer removes nodes, so
            // it cannot have been taken off nor freed since we loaded it.
            let next = unsafe { LlistNode::next_of(node) };
            // Acquire on success and failure: on failure we dereference the new head next.
            match self.first.compare_exchange_weak(
                entry,
                next,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // SAFETY: we own the node now; clear its stale link.
                    unsafe { LlistNode::set_next(node, ptr::null_mut()) };
                    return Some(node);
                }
                Err(actual) => entry = actual,
            }
        }
    }
}

/// A detached chain of nodes, owned by its holder and reachable by nobody else.
///
/// Produced by [`LlistHead::del_all`] (newest first) or built with [`Chain::push_front`].
/// Dropping a chain drops no node (the list is intrusive: the nodes belong to their
/// containing structures); consume it with `into_iter()` to take the nodes back one by one.
#[derive(Debug)]
pub struct Chain {
    first: *mut LlistNode,
    /// The last node, or null when not known yet (found by walking when needed).
    last: *mut LlistNode,
    _owns: PhantomData<LlistNode>,
}

// SAFETY: a chain is exclusively owned (detached: no list and no other thread reaches it), so
// handing it to another thread moves the ownership of its nodes along with it; the links are
// atomics. Dereferencing the containing structures is the user's unsafe business.
unsafe impl Send for Chain {}

impl Default for Chain {
    fn default() -> Self {
        Self::new()
    }
}

impl Chain {
    /// An empty chain.
    pub const fn new() -> Self {
        Self {
            first: ptr::null_mut(),
            last: ptr::null_mut(),
            _owns: PhantomData,
        }
    }

    /// Whether the chain has no node.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.first.is_null()
    }

    /// The first node, if any.
    #[inline]
    pub fn first(&self) -> Option<NonNull<LlistNode>> {
        NonNull::new(self.first)
    }

    /// The number of nodes (walks the chain).
    #[inline]
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Link `node` in front of the chain (to build a batch for [`LlistHead::add_chain`]).
    ///
    /// # Safety
    ///
    /// `node` satisfies the contract of [`LlistHead::add`] (live, on no list or chain, stays
    /// live while the chain or a list holds it).
    #[inline]
    pub unsafe fn push_front(&mut self, node: NonNull<LlistNode>) {
        // SAFETY: the caller hands `node` over to this chain; nobody else touches it.
        unsafe { LlistNode::set_next(node, self.first) };
        if self.first.is_null() {
            self.last = node.as_ptr();
        }
        self.first = node.as_ptr();
    }

    /// Link the whole of `other` after this chain's last node (O(1) when the last node is
    /// known, as for chains built with [`Chain::push_front`] or detached by
    /// [`LlistHead::del_all`]; else one walk of this chain).
    #[inline]
    pub fn append(&mut self, other: Chain) {
        let Some(first) = NonNull::new(other.first) else {
            return;
        };
        match self.last_node() {
            // SAFETY: `last` is a node of this chain, owned by it; linking `other`'s nodes
            // after it hands their ownership to this chain (`other` is consumed).
            Some(last) => unsafe { LlistNode::set_next(last, first.as_ptr()) },
            None => self.first = first.as_ptr(),
        }
        self.last = other.last;
    }

    /// Take the first node off the chain (its link is cleared).
    #[inline]
    pub fn pop_front(&mut self) -> Option<NonNull<LlistNode>> {
        let node = NonNull::new(self.first)?;
        // SAFETY: nodes of a chain are live and owned by the chain (chain invariant).
        self.first = unsafe { LlistNode::next_of(node) };
        if self.first.is_null() {
            self.last = ptr::null_mut();
        }
        // SAFETY: as above; the node leaves the chain, so clearing its link is ours to do.
        unsafe { LlistNode::set_next(node, ptr::null_mut()) };
        Some(node)
    }

    /// Reverse the chain in place (Linux's `llist_reverse_order`): `del_all` yields newest
    /// first, this gives oldest first.
    #[must_use]
    #[inline]
    pub fn reverse_order(mut self) -> Chain {
        let old_first = self.first;
        let mut prev: *mut LlistNode = ptr::null_mut();
        let mut cur = self.first;
        while let Some(node) = NonNull::new(cur) {
            // SAFETY: nodes of a chain are live and owned by the chain (chain invariant).
            let next = unsafe { LlistNode::next_of(node) };
            // SAFETY: as above.
            unsafe { LlistNode::set_next(node, prev) };
            prev = cur;
            cur = next;
        }
        self.first = prev;
        self.last = old_first;
        self
    }

    /// Iterate over the nodes without consuming the chain. The next link is read before a
    /// node is yielded.
    #[inline]
    pub fn iter(&self) -> ChainIter<'_> {
        ChainIter {
            cur: self.first,
            _chain: PhantomData,
        }
    }

    /// The last node (walks the chain when it is not cached); `None` for an empty chain.
    fn last_node(&self) -> Option<NonNull<LlistNode>> {
        if let Some(last) = NonNull::new(self.last) {
            return Some(last);
        }
        self.iter().last()
    }
}

/// Borrowing iterator over a detached [`Chain`].
#[derive(Debug)]
pub struct ChainIter<'a> {
    cur: *mut LlistNode,
    _chain: PhantomData<&'a Chain>,
}

impl Iterator for ChainIter<'_> {
    type Item = NonNull<LlistNode>;

    fn next(&mut self) -> Option<NonNull<LlistNode>> {
        let node = NonNull::new(self.cur)?;
        // SAFETY: nodes of the borrowed chain are live and owned by it (chain invariant).
        self.cur = unsafe { LlistNode::next_of(node) };
        Some(node)
    }
}

impl FusedIterator for ChainIter<'_> {}

/// Consuming iterator over a [`Chain`]: each node's link is read (and cleared) BEFORE the node
/// is yielded, so the caller may reuse, re-list or free the node at once.
#[derive(Debug)]
pub struct ChainIntoIter {
    chain: Chain,
}

impl Iterator for ChainIntoIter {
    type Item = NonNull<LlistNode>;

    fn next(&mut self) -> Option<NonNull<LlistNode>> {
        self.chain.pop_front()
    }
}

impl FusedIterator for ChainIntoIter {}

impl IntoIterator for Chain {
    type Item = NonNull<LlistNode>;
    type IntoIter = ChainIntoIter;

    fn into_iter(self) -> ChainIntoIter {
        ChainIntoIter { chain: self }
    }
}

impl<'a> IntoIterator for &'a Chain {
    type Item = NonNull<LlistNode>;
    type IntoIter = ChainIter<'a>;

    fn into_iter(self) -> ChainIter<'a> {
        self.iter()
    }
}

/// A structure with an embedded [`LlistNode`] (the `container_of` pattern).
///
/// # Safety
///
/// `to_node` must return a pointer to an `LlistNode` field inside `*this`, derived from `this`
/// (keeping its provenance), and `from_node` must be its exact inverse. Use
/// [`impl_llist_intrusive!`](crate::impl_llist_intrusive), which derives both from `offset_of!`.
pub unsafe trait Intrusive: Sized {
    /// The node embedded in `*this`. `this` must point into a live allocation of `Self`.
    fn to_node(this: NonNull<Self>) -> NonNull<LlistNode>;

    /// The structure containing `node`.
    ///
    /// # Safety
    ///
    /// `node` must have come from [`Intrusive::to_node`] of the same type (so that it carries
    /// the provenance of the whole structure), and the structure must still be live.
    unsafe fn from_node(node: NonNull<LlistNode>) -> NonNull<Self>;
}

/// Implement [`Intrusive`] for `$ty` whose `$field: LlistNode` is the link.
///
/// ```
/// # #[cfg(not(feature = "loom"))] {
/// use vmalloc::internals::llist::{Intrusive, LlistHead, LlistNode};
/// struct Area { start: u64, link: LlistNode }
/// vmalloc::impl_llist_intrusive!(Area, link);
///
/// let head = LlistHead::new();
/// let area = Box::into_raw(Box::new(Area { start: 7, link: LlistNode::new() }));
/// let node = Area::to_node(core::ptr::NonNull::new(area).unwrap());
/// // SAFETY: `area` is live and on no list until we take it back below.
/// unsafe { head.add(node) };
/// for node in head.del_all() {
///     // SAFETY: the node came from `Area::to_node` and the area is still live.
///     let area = unsafe { Box::from_raw(Area::from_node(node).as_ptr()) };
///     assert_eq!(area.start, 7);
/// }
/// # }
/// ```
#[macro_export]
macro_rules! impl_llist_intrusive {
    ($ty:ty, $field:ident) => {
        // SAFETY: `to_node` projects to the `$field` place of `*this` (same provenance), and
        // `from_node` subtracts exactly `offset_of!($ty, $field)`, the inverse.
        unsafe impl $crate::internals::llist::Intrusive for $ty {
            fn to_node(
                this: ::core::ptr::NonNull<Self>,
            ) -> ::core::ptr::NonNull<$crate::internals::llist::LlistNode> {
                let field: *mut $crate::internals::llist::LlistNode = this
                    .as_ptr()
                    .cast::<u8>()
                    .wrapping_add(::core::mem::offset_of!($ty, $field))
                    .cast();
                // The field of a non-null, in-bounds structure pointer is non-null; the
                // fallback is unreachable but avoids a panic path.
                ::core::ptr::NonNull::new(field).unwrap_or(::core::ptr::NonNull::dangling())
            }

            unsafe fn from_node(
                node: ::core::ptr::NonNull<$crate::internals::llist::LlistNode>,
            ) -> ::core::ptr::NonNull<Self> {
                // SAFETY: per the trait contract `node` came from `to_node`, so stepping back
                // by the field offset lands on the start of the same live structure.
                unsafe { node.byte_sub(::core::mem::offset_of!($ty, $field)) }.cast::<Self>()
            }
        }
    };
}

#[cfg(all(test, not(feature = "loom")))]
mod tests;
