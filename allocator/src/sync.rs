//! The crate's private sync facade: the one place its atomics, locks, condition variables
//! and threads come from (the same shape as `pagetable`'s).
//!
//! Normally atomics are `core`'s and a lock is `lock_api::Mutex` over the platform's raw lock
//! ([`Platform::RawMutex`]); the purge workers (std only) use parking_lot's condition
//! variables with [`StdPlatform`](pagetable::platform::StdPlatform) locks (which are
//! parking_lot's). Under the `loom` feature all of them are loom's, so that a loom model sees
//! every shared access of the allocator; nothing of this module appears in a public
//! signature, so the feature changes no public type.

#[cfg(feature = "loom")]
use core::marker::PhantomData;

#[cfg(not(feature = "loom"))]
pub(crate) use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
#[cfg(feature = "loom")]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

#[cfg(feature = "loom")]
pub(crate) use loom::thread;
#[cfg(all(feature = "std", not(feature = "loom")))]
pub(crate) use std::thread;

#[cfg(not(feature = "loom"))]
use pagetable::platform::Platform;

/// A lock over the platform's raw lock.
#[cfg(not(feature = "loom"))]
pub(crate) type Mutex<P, T> = lock_api::Mutex<<P as Platform>::RawMutex, T>;
/// The guard of a [`Mutex`] (`lock_api`'s: `bump`, `unlock_fair`).
#[cfg(not(feature = "loom"))]
pub(crate) type MutexGuard<'a, P, T> = lock_api::MutexGuard<'a, <P as Platform>::RawMutex, T>;

/// A condition variable for [`Mutex`]es of the std platform (the purge workers).
#[cfg(all(feature = "std", not(feature = "loom")))]
pub(crate) type Condvar = parking_lot::Condvar;

/// loom's mutex behind `lock_api`'s API (the platform parameter is only carried).
#[cfg(feature = "loom")]
#[derive(Debug)]
pub(crate) struct Mutex<P, T> {
    m: loom::sync::Mutex<T>,
    _p: PhantomData<fn() -> P>,
}

/// The guard of a loom [`Mutex`]: the loom guard in an `Option`, so that [`Condvar::wait`]
/// can hand it to loom and take it back and [`MutexGuard::bump`] can drop it and lock again,
/// and the mutex it came from.
#[cfg(feature = "loom")]
pub(crate) struct MutexGuard<'a, P, T> {
    lock: &'a loom::sync::Mutex<T>,
    guard: Option<loom::sync::MutexGuard<'a, T>>,
    _p: PhantomData<fn() -> P>,
}

#[cfg(feature = "loom")]
impl<P, T> Mutex<P, T> {
    /// A new unlocked mutex.
    pub(crate) fn new(value: T) -> Self {
        Self {
            m: loom::sync::Mutex::new(value),
            _p: PhantomData,
        }
    }

    /// Lock, waiting as long as it takes.
    pub(crate) fn lock(&self) -> MutexGuard<'_, P, T> {
        MutexGuard {
            lock: &self.m,
            guard: Some(self.m.lock().unwrap()),
            _p: PhantomData,
        }
    }
}

#[cfg(feature = "loom")]
impl<P, T: Default> Default for Mutex<P, T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

#[cfg(feature = "loom")]
impl<P, T> MutexGuard<'_, P, T> {
    /// Release the lock for a moment and take it again (`lock_api`'s `bump`, used by the
    /// purge's `cond_resched_lock`). The lock is really released, then the thread yields,
    /// then it locks again: loom explores every thread that may take the lock in that window,
    /// and the yield lets a waiter in without spending a preemption of the bound.
    pub(crate) fn bump(s: &mut Self) {
        drop(s.guard.take());
        loom::thread::yield_now();
        s.guard = Some(s.lock.lock().unwrap());
    }
}

#[cfg(feature = "loom")]
impl<P, T> core::ops::Deref for MutexGuard<'_, P, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().unwrap()
    }
}

#[cfg(feature = "loom")]
impl<P, T> core::ops::DerefMut for MutexGuard<'_, P, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().unwrap()
    }
}

/// loom's condition variable behind parking_lot's API.
#[cfg(feature = "loom")]
#[derive(Debug, Default)]
pub(crate) struct Condvar(loom::sync::Condvar);

#[cfg(feature = "loom")]
impl Condvar {
    /// Atomically release the lock and wait for a notification.
    pub(crate) fn wait<P, T>(&self, guard: &mut MutexGuard<'_, P, T>) {
        let g = guard.guard.take().unwrap();
        guard.guard = Some(self.0.wait(g).unwrap());
    }

    /// Wake one waiter.
    pub(crate) fn notify_one(&self) {
        self.0.notify_one();
    }

    /// Wake every waiter.
    pub(crate) fn notify_all(&self) {
        self.0.notify_all();
    }
}
