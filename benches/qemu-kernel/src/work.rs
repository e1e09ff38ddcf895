//! The kernel's deferred-work queue for vmalloc (`vmalloc::PurgeWork`): Linux queues
//! `drain_vmap_work` and `vfree_atomic`'s work on a workqueue; here the freeing path sets a
//! flag and wakes an idle CPU with an IPI, and the work runs on the first CPU that looks:
//! an idle CPU in its idle loop, or a busy one at its next scheduling point
//! ([`crate::sched::preempt_point`], where a preemptive kernel would switch to the kworker).
//! Never in interrupt context: the purge takes the allocator's locks.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use vmalloc::{PurgeWork, Vmalloc};

use crate::platform::Kernel;
use crate::sched;

/// The instance the work runs on (set once, never freed).
static VM: AtomicPtr<Vmalloc<Kernel>> = AtomicPtr::new(core::ptr::null_mut());

static PURGE: AtomicBool = AtomicBool::new(false);
static DEFERRED: AtomicBool = AtomicBool::new(false);
static SCHEDULED: AtomicU64 = AtomicU64::new(0);
static PURGES_RUN: AtomicU64 = AtomicU64::new(0);

/// Make `vm` the instance the queue serves (it lives for the rest of the kernel's life).
pub fn set_instance(vm: &'static Vmalloc<Kernel>) {
    VM.store(vm as *const _ as *mut _, Ordering::Release);
}

/// The kernel's vmalloc instance, once [`set_instance`] ran.
pub fn instance() -> Option<&'static Vmalloc<Kernel>> {
    let p = VM.load(Ordering::Acquire);
    // SAFETY: the pointer is null or came from a `&'static Vmalloc` in `set_instance`.
    unsafe { p.as_ref() }
}

/// The hook handed to `Vmalloc::with_space`.
#[derive(Debug, Default)]
pub struct Workqueue;

impl PurgeWork for Workqueue {
    fn schedule_purge(&self) {
        PURGE.store(true, Ordering::Release);
        SCHEDULED.fetch_add(1, Ordering::Relaxed);
        sched::wake_idle_cpu();
    }

    fn schedule_deferred(&self) {
        DEFERRED.store(true, Ordering::Release);
        SCHEDULED.fetch_add(1, Ordering::Relaxed);
        sched::wake_idle_cpu();
    }
}

/// Whether work is queued.
#[inline]
pub fn pending() -> bool {
    PURGE.load(Ordering::Relaxed) || DEFERRED.load(Ordering::Relaxed)
}

/// Run what is queued (each item runs on one CPU: the flag is taken with a swap).
pub fn run_pending() {
    let Some(vm) = instance() else { return };
    if DEFERRED.swap(false, Ordering::Acquire) {
        vm.kva().drain_deferred();
    }
    if PURGE.swap(false, Ordering::Acquire) && vm.kva().purge_work().is_some() {
        PURGES_RUN.fetch_add(1, Ordering::Relaxed);
    }
}

/// (work items scheduled, purges the queue ran).
pub fn counts() -> (u64, u64) {
    (
        SCHEDULED.load(Ordering::Relaxed),
        PURGES_RUN.load(Ordering::Relaxed),
    )
}
