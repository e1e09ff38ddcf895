//! Deferred frees (`vfree_atomic`) and allocation-failure notifiers (`vmap_notify_list`).
//!
//! # How it works
//!
//! [`Kva::defer`](crate::kva::Kva::defer) boxes `{ link, addr }` and pushes it on the calling
//! CPU's lock-free list; if that list was empty it wakes a purge worker (Background and
//! Inline modes). Whoever drains ([`Inner::drain_deferred`](crate::kva::Inner::drain_deferred): a worker, `Kva::purge`, or the
//! next allocation in Synchronous mode) takes each CPU's list with one `del_all`, oldest
//! first, and calls the handler per address with no lock held. The default handler removes
//! the area and frees it lazily (no page tables at this layer); the vmalloc layer installs
//! one that unmaps and frees pages too.
//!
//! Notifiers are called, with no lock held, by an allocation that failed even after a
//! purge; the sum of what they report freed decides whether it retries.
//!
//! # Locking and ordering
//!
//! Pushing takes no lock (llist `Release` push; `del_all` `Acquire`). The `pending` hint is
//! set by an `AcqRel` swap after each push and cleared by one before a drain takes the lists,
//! so a push is either taken by that drain or leaves the flag set (argued at `take_all`).
//!
//! A drain takes the lists under the `drains` mutex and counts itself in flight there; it
//! runs its handlers unlocked and uncounts itself under the mutex when they are done.
//! [`Inner::wait_for_drains`](crate::kva::Inner::wait_for_drains) (called by `Kva::purge`, i.e. `purge_vmap_area_lazy`, and by
//! the allocation-failure path) waits until no drain is in flight, so a purge that found the
//! lists empty because a worker had just taken them still returns only after those frees ran
//! and can purge what they freed. Because taking the lists and counting happen in one
//! critical section, a waiter that locks `drains` after a drain took the lists sees that
//! drain counted (or already finished). The wait is a loop of short lock sections with the
//! platform's reschedule point between them (no condition variable: the core runs where
//! there is no thread library). A caller that is itself inside a drain (a handler calling
//! `purge`) does not wait: it would wait for itself, or for a drain that waits for it. "Inside
//! a drain" is a thread-local depth with `std`; without it, a depth per CPU slot (a kernel
//! runs a drain's handlers on one CPU: its workqueue item is not migrated while a handler
//! waits). Handler and notifier lists sit behind their own mutexes, held only to clone an
//! `Arc` out or to edit the list; callbacks always run unlocked, so they may call back into
//! the allocator.

#[allow(unused_imports)]
use crate::prelude::*;
use alloc::boxed::Box;
use alloc::sync::Arc as StdArc;
use alloc::vec::Vec;
use core::ptr::NonNull;

use crossbeam_utils::CachePadded;
use pagetable::platform::Platform;

use crate::kva::llist::{Intrusive, LlistHead, LlistNode};
use crate::sync::{AtomicBool, Mutex, Ordering};

#[cfg(all(feature = "std", not(feature = "loom")))]
std::thread_local! {
    /// How many drains the current thread is inside (handlers may drain again).
    static DRAIN_DEPTH: core::cell::Cell<usize> = const { core::cell::Cell::new(0) };
}
#[cfg(feature = "loom")]
loom::thread_local! {
    /// How many drains the current thread is inside (handlers may drain again).
    static DRAIN_DEPTH: core::cell::Cell<usize> = core::cell::Cell::new(0);
}

/// A deferred free waiting on a CPU's list.
struct DeferredNode {
    link: LlistNode,
    addr: u64,
}

crate::impl_llist_intrusive!(DeferredNode, link);

/// A deferred-free handler (std `Arc`: shared ownership of an immutable closure).
type Handler = StdArc<dyn Fn(u64) + Send + Sync>;
/// A failure notifier.
type Notifier = StdArc<dyn Fn(u64) -> usize + Send + Sync>;

/// Per-CPU lists of deferred frees and their handler.
pub(crate) struct Deferred<P: Platform> {
    lists: Box<[CachePadded<LlistHead>]>,
    pending: AtomicBool,
    handler: Mutex<P, Option<Handler>>,
    /// Drains that took the lists and have not finished their handlers.
    drains: Mutex<P, usize>,
    /// Without `std`: how many drains each CPU slot is inside (see the module docs).
    #[cfg(not(feature = "std"))]
    depth: Box<[crate::sync::AtomicUsize]>,
}

impl<P: Platform> core::fmt::Debug for Deferred<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Deferred")
            .field("pending", &self.pending())
            .finish()
    }
}

impl<P: Platform> Deferred<P> {
    pub(crate) fn new(nr_cpus: usize) -> Self {
        Self {
            lists: (0..nr_cpus.max(1))
                .map(|_| CachePadded::new(LlistHead::new()))
                .collect(),
            pending: AtomicBool::new(false),
            handler: Mutex::<P, _>::new(None),
            drains: Mutex::<P, _>::new(0),
            #[cfg(not(feature = "std"))]
            depth: (0..nr_cpus.max(1))
                .map(|_| crate::sync::AtomicUsize::new(0))
                .collect(),
        }
    }

    /// Enter (`+1`) or leave (`-1`) a drain on the calling thread (std) or CPU slot.
    fn add_depth(&self, delta: isize) {
        #[cfg(feature = "std")]
        DRAIN_DEPTH.with(|d| d.set(d.get().wrapping_add_signed(delta)));
        #[cfg(not(feature = "std"))]
        {
            let d = &self.depth[P::this_cpu() % self.depth.len()];
            if delta > 0 {
                d.fetch_add(1, Ordering::Relaxed);
            } else {
                d.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Whether the caller is inside a drain.
    fn in_drain(&self) -> bool {
        #[cfg(feature = "std")]
        return DRAIN_DEPTH.with(|d| d.get()) > 0;
        #[cfg(not(feature = "std"))]
        return self.depth[P::this_cpu() % self.depth.len()].load(Ordering::Relaxed) > 0;
    }

    /// Whether deferred frees may be waiting (a hint: drains that must not miss anything,
    /// `Kva::purge` and the allocation-failure path, do not consult it).
    #[inline]
    pub(crate) fn pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    pub(crate) fn set_handler(&self, h: Box<dyn Fn(u64) + Send + Sync>) {
        *self.handler.lock() = Some(StdArc::from(h));
    }

    /// Queue `addr` on CPU `cpu`'s list; `true` if the list was empty.
    fn push(&self, cpu: usize, addr: u64) -> bool {
        let node = NonNull::from(Box::leak(Box::new(DeferredNode {
            link: LlistNode::new(),
            addr,
        })));
        // SAFETY: a fresh heap node on no list; it stays live until a drain (or `Drop`) takes
        // it off and frees it with `Box::from_raw`.
        let was_empty =
            unsafe { self.lists[cpu % self.lists.len()].add(DeferredNode::to_node(node)) };
        // An RMW (not a plain store) so that every push's `Release` stays in the release
        // sequence a later `take_all` swap reads from (see `take_all`).
        self.pending.swap(true, Ordering::AcqRel);
        was_empty
    }

    /// Take every queued address, oldest first per CPU.
    ///
    /// The flag is reset with an `AcqRel` swap before the lists are taken. A push whose flag
    /// RMW precedes that swap in the flag's modification order is in the release sequence the
    /// swap reads from, so the push happens before our `del_all`s and is taken here; a push
    /// whose RMW follows it leaves the flag set. Either way no deferred free is left behind
    /// with the flag clear.
    fn take_all(&self) -> Vec<u64> {
        self.pending.swap(false, Ordering::AcqRel);
        let mut out = Vec::new();
        for list in self.lists.iter() {
            for node in list.del_all().reverse_order() {
                // SAFETY: every node on these lists was made by `push` from a leaked box and
                // is now owned by us (detached); rebuilding the box frees it exactly once.
                let b = unsafe { Box::from_raw(DeferredNode::from_node(node).as_ptr()) };
                out.push(b.addr);
            }
        }
        out
    }
}

impl<P: Platform> Drop for Deferred<P> {
    fn drop(&mut self) {
        // Frees still queued when the allocator goes away: release the nodes.
        let _ = self.take_all();
    }
}

/// A registered notifier's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NotifierId(u64);

/// The failure notifiers.
pub(crate) struct Notifiers<P: Platform> {
    list: Mutex<P, (u64, Vec<(u64, Notifier)>)>,
}

impl<P: Platform> core::fmt::Debug for Notifiers<P> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Notifiers")
            .field("count", &self.list.lock().1.len())
            .finish()
    }
}

impl<P: Platform> Notifiers<P> {
    pub(crate) fn new() -> Self {
        Self {
            list: Mutex::<P, _>::new((0, Vec::new())),
        }
    }

    pub(crate) fn register(&self, f: Box<dyn Fn(u64) -> usize + Send + Sync>) -> NotifierId {
        let mut l = self.list.lock();
        l.0 += 1;
        let id = l.0;
        l.1.push((id, StdArc::from(f)));
        NotifierId(id)
    }

    pub(crate) fn unregister(&self, id: NotifierId) -> bool {
        let mut l = self.list.lock();
        let before = l.1.len();
        l.1.retain(|(i, _)| *i != id.0);
        l.1.len() != before
    }

    /// Call every notifier with `size` (unlocked); the pages they freed.
    pub(crate) fn call(&self, size: u64) -> usize {
        let snapshot: Vec<Notifier> = self
            .list
            .lock()
            .1
            .iter()
            .map(|(_, f)| StdArc::clone(f))
            .collect();
        snapshot
            .iter()
            .map(|f| f(size))
            .fold(0usize, usize::saturating_add)
    }
}

impl<P: Platform> Deferred<P> {
    /// Queue `addr` on the calling CPU's list; `true` if that list was empty (the caller
    /// should schedule a drain).
    pub(crate) fn defer(&self, addr: u64) -> bool {
        self.push(P::this_cpu(), addr)
    }

    /// Run every queued deferred free: the installed handler per address, or `default` when
    /// none is installed; returns how many ran. The lists are taken and the drain counted in
    /// flight in one critical section (see the module documentation); the handlers run
    /// unlocked.
    pub(crate) fn drain(&self, default: impl Fn(u64)) -> usize {
        let addrs = {
            let mut drains = self.drains.lock();
            let addrs = self.take_all();
            if addrs.is_empty() {
                return 0;
            }
            *drains += 1;
            addrs
        };
        // Uncounts this drain when the handlers are done (also if one panics).
        struct InFlight<'a, P: Platform>(&'a Deferred<P>);
        impl<P: Platform> Drop for InFlight<'_, P> {
            fn drop(&mut self) {
                self.0.add_depth(-1);
                *self.0.drains.lock() -= 1;
            }
        }
        self.add_depth(1);
        let _in_flight = InFlight(self);
        let handler = self.handler.lock().clone();
        for &addr in &addrs {
            match &handler {
                Some(h) => h(addr),
                None => default(addr),
            }
        }
        addrs.len()
    }

    /// Wait until every drain that had taken deferred frees has run them (see the module
    /// documentation); returns at once for a caller that is itself inside a drain.
    pub(crate) fn wait_for_drains(&self) {
        if self.in_drain() {
            return;
        }
        while *self.drains.lock() > 0 {
            P::cond_resched();
            P::cpu_relax();
        }
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;
    use pagetable::platform::StdPlatform;

    #[test]
    fn deferred_addresses_come_out_oldest_first_per_cpu() {
        let d = Deferred::<StdPlatform>::new(2);
        assert!(!d.pending());
        assert!(d.push(0, 1));
        assert!(!d.push(0, 2));
        assert!(d.push(1, 10));
        assert!(!d.push(5, 3)); // slot 5 wraps to list 1
        assert!(d.pending());
        assert_eq!(d.take_all(), vec![1, 2, 10, 3]);
        assert!(!d.pending());
        assert!(d.take_all().is_empty());
        // Nodes still queued at drop are freed (checked under Miri / leak sanitizers).
        d.push(0, 7);
    }

    #[test]
    fn notifiers_register_call_and_unregister() {
        let n = Notifiers::<StdPlatform>::new();
        assert_eq!(n.call(4096), 0);
        let a = n.register(Box::new(|size| (size / 4096) as usize));
        let b = n.register(Box::new(|_| usize::MAX));
        assert_ne!(a, b);
        assert_eq!(n.call(8192), usize::MAX);
        assert!(n.unregister(b));
        assert!(!n.unregister(b));
        assert_eq!(n.call(8192), 2);
        assert!(format!("{n:?}").contains("count: 1"));
    }
}
