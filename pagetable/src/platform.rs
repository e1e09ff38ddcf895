//! The platform interface: what the page tables (and `vmalloc` above them) need from the
//! host they run in, in one small trait a kernel implements in an afternoon.
//!
//! # What a host provides
//!
//! | need | here | a kernel | std ([`StdPlatform`]) |
//! |---|---|---|---|
//! | locks | [`Platform::RawMutex`] (`lock_api`) | its spinlock (interrupts off if also taken in interrupt context) | parking_lot's |
//! | the current CPU | [`Platform::this_cpu`] | the APIC id / per-CPU base | a thread's pinned or drawn slot |
//! | the CPU count | [`Platform::nr_cpu_ids`] | `nr_cpu_ids` | the machine's, or `KVMALLOC_NR_CPUS` |
//! | a reschedule point | [`Platform::cond_resched`] | `cond_resched()` | `thread::yield_now` |
//! | physical memory | a [`PhysArena`](crate::PhysArena) over the direct map ([`PhysArena::from_direct_map`](crate::PhysArena::from_direct_map)) | its direct map | heap or `mmap` |
//! | TLB shootdown | a [`TlbFlush`](crate::TlbFlush) object | `invlpg` / CR3 + IPIs | the TLB model or a counter |
//!
//! The first four are static (every lock and per-CPU array of the crates is typed by the
//! platform, as `lock_api` types its mutexes by their raw lock, so nothing is looked up at run
//! time); the last two are objects handed to constructors. `vmalloc` adds one more hook, "run
//! the purge work soon" (its `PurgeWork` trait), which a kernel queues on its workqueue.
//!
//! Types that hold locks or per-CPU data take the platform as a type parameter whose default
//! is [`DefaultPlatform`]: [`StdPlatform`] with the `std` feature, else [`UpPlatform`]
//! (one CPU, a spinlock), so `FrameAllocator`, `AddressSpace` and `Vmalloc` keep meaning the
//! hosted types and a kernel names its own: `FrameAllocator<MyKernel>`.
//!
//! # Example: a kernel's platform
//!
//! ```
//! # // Loom's atomics only work inside a loom model: the example runs without the feature.
//! # #[cfg(feature = "loom")]
//! # fn main() {}
//! # #[cfg(not(feature = "loom"))]
//! # fn main() {
//! use pagetable::platform::{Platform, RawSpinlock};
//!
//! /// A kernel with up to 64 CPUs whose per-CPU id lives in a register (here: a stub).
//! struct MyKernel;
//!
//! impl Platform for MyKernel {
//!     // A real kernel plugs its own irq-safe spinlock; any `lock_api::RawMutexFair` works.
//!     type RawMutex = RawSpinlock;
//!     fn this_cpu() -> usize {
//!         0 // e.g. read the CPU number from GS-relative per-CPU data
//!     }
//!     fn nr_cpu_ids() -> usize {
//!         64
//!     }
//! }
//!
//! # extern crate alloc;
//! use alloc::sync::Arc;
//! use pagetable::{AddressSpace, FrameAllocator, FrameConfig, PhysAddr, PhysArena};
//!
//! // A kernel would use `PhysArena::from_direct_map` over its free RAM instead.
//! let arena = PhysArena::heap(1 << 20, PhysAddr::new(0x10_0000)).unwrap();
//! let frames = Arc::new(FrameAllocator::<MyKernel>::with_platform(
//!     Arc::new(arena),
//!     FrameConfig::default(),
//! ));
//! let space = AddressSpace::new(Arc::clone(&frames)).unwrap(); // an AddressSpace<MyKernel>
//! assert_eq!((frames.stats().total, space.rss()), (256, 0));
//! # }
//! ```
//!
// `StdPlatform` exists only with `std`; without it the link goes to the crate's *Features*.
#![cfg_attr(feature = "std", doc = "[`StdPlatform`]: crate::platform::StdPlatform")]
#![cfg_attr(not(feature = "std"), doc = "[`StdPlatform`]: crate#features")]

use core::sync::atomic::{AtomicBool, Ordering};

pub use lock_api;

/// The largest CPU count the crates accept (`vmalloc`'s `KvaConfig::nr_cpus`,
/// `KVMALLOC_NR_CPUS` with the std platform).
///
/// Why 8192: it is x86_64 Linux's largest `CONFIG_NR_CPUS` (`NR_CPUS_RANGE_END` with
/// `CPUMASK_OFFSTACK`, what `MAXSMP` selects), so every real machine fits. Per-CPU arrays are
/// sized by the count actually configured, never by this bound; the bound exists because an
/// instance allocates every CPU slot's structures at construction, so a mistyped count is
/// refused (or ignored) instead of exhausting memory.
pub const MAX_NR_CPUS: usize = 8192;

/// What the crates need from their host (the [module documentation](crate::platform) has
/// the table of needs and an example). All associated functions: per-CPU code calls them on
/// hot paths, so they should be cheap and inlinable.
pub trait Platform: Send + Sync + 'static {
    /// The raw lock behind every lock of the page tables and the allocator. Locks are held
    /// for short, bounded sections and never across a call back into the host, so a
    /// spinlock is the natural choice; a host that takes them in interrupt context must
    /// disable interrupts while one is held. `unlock_fair` may simply unlock: it is used
    /// where a long loop offers the lock to a waiter (`cond_resched_lock`).
    type RawMutex: lock_api::RawMutexFair + Send + Sync;

    /// The calling CPU's id. Any value is accepted: a per-CPU array of `n` slots uses slot
    /// `id % n`, and correctness never depends on a caller staying on one CPU (per-CPU data
    /// is always behind a lock or atomics; a migrated caller is only slower).
    fn this_cpu() -> usize;

    /// The number of CPU ids the per-CPU arrays are sized for (at least 1).
    fn nr_cpu_ids() -> usize;

    /// A point where a long loop (a purge's merge, fork's batches) lets other work run:
    /// Linux's `cond_resched()`. Called with no lock held. The default does nothing.
    #[inline]
    fn cond_resched() {}

    /// One step of a busy-wait (the `pause` instruction by default).
    #[inline]
    fn cpu_relax() {
        core::hint::spin_loop();
    }
}

/// A test-and-test-and-set spinlock implementing `lock_api`'s raw lock traits: the lock of
/// [`UpPlatform`], and a ready-made choice for a kernel that has nothing better (it does not
/// disable interrupts or preemption).
#[derive(Debug)]
pub struct RawSpinlock {
    locked: AtomicBool,
}

// SAFETY: `lock` returns only once it has changed `locked` from false to true with `Acquire`,
// and `unlock` stores false with `Release`: at most one holder at a time, and everything the
// previous holder did happens before the next holder's critical section.
unsafe impl lock_api::RawMutex for RawSpinlock {
    // Used only as the initial value of a lock; never read as a shared constant.
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = RawSpinlock {
        locked: AtomicBool::new(false),
    };

    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock(&self) {
        while !self.try_lock() {
            while self.locked.load(Ordering::Relaxed) {
                core::hint::spin_loop();
            }
        }
    }

    #[inline]
    fn try_lock(&self) -> bool {
        self.locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    #[inline]
    unsafe fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }

    #[inline]
    fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

// SAFETY: a fair unlock may be a plain unlock (waiters then compete as usual); see `lock_api`.
unsafe impl lock_api::RawMutexFair for RawSpinlock {
    #[inline]
    unsafe fn unlock_fair(&self) {
        // SAFETY: forwarded: the caller holds the lock.
        unsafe { lock_api::RawMutex::unlock(self) };
    }
}

/// A uniprocessor platform: one CPU (id 0) and [`RawSpinlock`]s. The default platform
/// without the `std` feature, and the simplest host for a single-CPU kernel or a test.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpPlatform;

impl Platform for UpPlatform {
    type RawMutex = RawSpinlock;

    #[inline]
    fn this_cpu() -> usize {
        0
    }

    #[inline]
    fn nr_cpu_ids() -> usize {
        1
    }
}

/// The hosted platform: parking_lot's locks, CPU ids from [`crate::cpu`] (a thread's pinned
/// or round-robin id; the machine's count or `KVMALLOC_NR_CPUS`), `std::thread::yield_now`
/// as the reschedule point.
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy, Default)]
pub struct StdPlatform;

#[cfg(feature = "std")]
impl Platform for StdPlatform {
    type RawMutex = parking_lot::RawMutex;

    #[inline]
    fn this_cpu() -> usize {
        crate::cpu::this_cpu()
    }

    #[inline]
    fn nr_cpu_ids() -> usize {
        crate::cpu::nr_cpu_ids()
    }

    #[inline]
    fn cond_resched() {
        crate::sync::thread::yield_now();
    }
}

/// The platform the crate's types default to: [`StdPlatform`] with the `std` feature.
#[cfg(feature = "std")]
pub type DefaultPlatform = StdPlatform;

/// The platform the crate's types default to: [`UpPlatform`] without the `std` feature.
#[cfg(not(feature = "std"))]
pub type DefaultPlatform = UpPlatform;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spinlock_excludes_and_hands_over() {
        let m: lock_api::Mutex<RawSpinlock, u32> = lock_api::Mutex::new(1);
        let g = m.lock();
        assert!(m.try_lock().is_none());
        drop(g);
        *m.lock() += 1;
        let mut g = m.lock();
        lock_api::MutexGuard::bump(&mut g);
        assert_eq!(*g, 2);
        assert_eq!(UpPlatform::this_cpu(), 0);
        assert_eq!(UpPlatform::nr_cpu_ids(), 1);
    }
}
