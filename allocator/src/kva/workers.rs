//! The per-CPU purge workers: persistent threads that run background purges, help split a
//! purge's merge work, and drain deferred frees (Linux's `drain_vmap_work`, the
//! `purge_vmap_node` work items of 6.9, and `vfree_atomic`'s `free_work`).
//!
//! # How it works
//!
//! Worker `i` pins itself to CPU slot `i` and sleeps on a condition variable. It wakes for:
//! queued merge items (a purge in progress: it pops items until none is left, the purger
//! doing the same, and the last one to finish an item signals the purger), a purge request
//! (Background mode: it becomes the purger with `try_purge`, skipping if a purge runs), a
//! deferred-free kick (it drains the deferred lists), or shutdown (after the queue is empty;
//! `Kva`'s `Drop` joins the threads). Nothing here runs in `PurgeMode::Synchronous`: no
//! `Sched` exists and no thread is spawned.
//!
//! # Locking and ordering
//!
//! One `Mutex<SchedState>` with two condition variables (`wake` for workers, `done` for the
//! purger). Work items are processed with the state lock released. A purger holds the purge
//! lock while waiting on `done`; workers never take the purge lock while holding an item, so
//! the wait always ends (the purger itself also drains the queue). `requested` is an atomic
//! flag so that repeated kicks past the threshold do not all take the state lock; it is
//! changed only by `AcqRel` swaps, which is what makes a skipped kick safe (the argument is
//! at `Sched::request_purge`).

#[allow(unused_imports)]
use crate::prelude::*;
use alloc::vec::Vec;

use crate::sync::{AtomicBool, Condvar, Mutex, Ordering};
use pagetable::platform::StdPlatform;

/// What the workers do for their host, the allocator: this module knows nothing else of it
/// (no import of the allocator's types, so the dependency runs one way).
pub(crate) trait WorkerHost: Send + Sync {
    /// One item of a purge's merge work.
    type Item: Send;
    /// The scheduler the workers wait on (`None`: no workers).
    fn sched(&self) -> Option<&Sched<Self::Item>>;
    /// Merge one item; returns the areas it sent to per-CPU caches.
    fn merge_item(&self, item: Self::Item) -> usize;
    /// Run a kicked purge (skipping if one runs: it will do another round).
    fn purge_kicked(&self);
    /// Run the deferred frees queued so far.
    fn run_deferred(&self);
}

struct SchedState<W> {
    /// Merge items not yet taken.
    work: Vec<W>,
    /// Items queued by the current purge and not finished yet.
    outstanding: usize,
    /// Areas those finished items sent to per-CPU caches.
    cached: usize,
    /// A background purge was requested.
    purge: bool,
    /// Deferred frees are waiting.
    deferred: bool,
    /// The allocator is being dropped.
    shutdown: bool,
}

impl<W> Default for SchedState<W> {
    fn default() -> Self {
        Self {
            work: Vec::new(),
            outstanding: 0,
            cached: 0,
            purge: false,
            deferred: false,
            shutdown: false,
        }
    }
}

/// Shared state of the purge workers, for merge items of type `W`.
pub(crate) struct Sched<W> {
    state: Mutex<StdPlatform, SchedState<W>>,
    wake: Condvar,
    done: Condvar,
    requested: AtomicBool,
}

impl<W> Sched<W> {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::<StdPlatform, _>::new(SchedState::default()),
            wake: Condvar::default(),
            done: Condvar::default(),
            requested: AtomicBool::new(false),
        }
    }

    /// Ask a worker to purge (Background mode); cheap when already asked.
    ///
    /// Why no kick is lost: the kicker's lazy free (its batch push or llist push) comes
    /// before this `swap` in program order. If the swap reads `true`, a request is pending
    /// and the worker that serves it has not yet reset the flag with its own `AcqRel` swap
    /// (an RMW reads the latest value, so it reads ours or a later RMW in the same release
    /// sequence): our `Release` synchronizes with it, so our push happens before that
    /// worker's purge, which therefore takes our area. If the swap reads `false`, we post a
    /// new request under the state lock ourselves.
    /// Returns whether this call posted the request (and woke a worker).
    pub(crate) fn request_purge(&self) -> bool {
        if self.requested.swap(true, Ordering::AcqRel) {
            return false;
        }
        self.state.lock().purge = true;
        self.wake.notify_one();
        true
    }

    /// Ask a worker to drain the deferred frees.
    pub(crate) fn kick_deferred(&self) {
        self.state.lock().deferred = true;
        self.wake.notify_one();
    }

    /// Stop every worker once the queue is empty.
    pub(crate) fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.wake.notify_all();
    }

    /// Queue `work`, wake `helpers` workers, take items until none is left, wait for the
    /// helpers' items; returns the areas sent to per-CPU caches.
    pub(crate) fn run<H: WorkerHost<Item = W>>(
        &self,
        host: &H,
        work: Vec<W>,
        helpers: usize,
    ) -> usize {
        {
            let mut st = self.state.lock();
            st.outstanding += work.len();
            st.work.extend(work);
        }
        for _ in 0..helpers {
            self.wake.notify_one();
        }
        while let Some(w) = self.take() {
            let cached = host.merge_item(w);
            self.finish(cached);
        }
        let mut st = self.state.lock();
        while st.outstanding > 0 {
            self.done.wait(&mut st);
        }
        core::mem::take(&mut st.cached)
    }

    fn take(&self) -> Option<W> {
        self.state.lock().work.pop()
    }

    fn finish(&self, cached: usize) {
        let mut st = self.state.lock();
        st.outstanding -= 1;
        st.cached += cached;
        if st.outstanding == 0 {
            self.done.notify_all();
        }
    }
}

/// What a woken worker does next.
enum Job<W> {
    Merge(W),
    Purge,
    Deferred,
    Exit,
}

/// Body of purge worker `i`.
pub(crate) fn worker_main<H: WorkerHost>(host: &H, i: usize) {
    pagetable::cpu::set_this_cpu(i);
    let Some(sched) = host.sched() else {
        return;
    };
    loop {
        let job = {
            let mut st = sched.state.lock();
            loop {
                if let Some(w) = st.work.pop() {
                    break Job::Merge(w);
                }
                if st.shutdown {
                    break Job::Exit;
                }
                if st.deferred {
                    st.deferred = false;
                    break Job::Deferred;
                }
                if st.purge {
                    st.purge = false;
                    // Cleared under the state lock: a kick from now on queues a new request.
                    // An RMW with `Acquire`, so that every kicker whose swap saw the request
                    // pending (and returned) is visible to the purge we run next (see
                    // `Sched::request_purge`).
                    sched.requested.swap(false, Ordering::AcqRel);
                    break Job::Purge;
                }
                sched.wake.wait(&mut st);
            }
        };
        match job {
            Job::Merge(w) => {
                let cached = host.merge_item(w);
                sched.finish(cached);
            }
            Job::Purge => host.purge_kicked(),
            Job::Deferred => host.run_deferred(),
            Job::Exit => return,
        }
    }
}
