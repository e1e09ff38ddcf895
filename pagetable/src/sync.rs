//! The crate's private sync facade: the one place its atomics and locks come from.
//!
//! Normally atomics are `core`'s and a lock is `lock_api::Mutex` over the platform's raw lock
//! ([`Platform::RawMutex`]). Under the `loom` feature both are loom's (the platform is then
//! ignored for locks), so that a loom model sees every shared access of the crate: page-table
//! entries, arena words, counters, locks. Nothing of this module appears in a public
//! signature, so the feature changes no public type (as tokio's `loom` module and crossbeam's
//! `primitive` module do). `vmalloc` has its own facade of the same shape.

#[cfg(feature = "loom")]
use core::marker::PhantomData;

#[cfg(not(feature = "loom"))]
pub(crate) use core::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(feature = "loom")]
pub(crate) use loom::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicUsize, Ordering};

#[cfg(feature = "loom")]
pub(crate) use loom::thread;
#[cfg(all(feature = "std", not(feature = "loom")))]
pub(crate) use std::thread;

#[cfg(not(feature = "loom"))]
use crate::platform::Platform;

/// A lock over the platform's raw lock.
#[cfg(not(feature = "loom"))]
pub(crate) type Mutex<P, T> = lock_api::Mutex<<P as Platform>::RawMutex, T>;
/// The guard of a [`Mutex`] (`lock_api`'s: `bump`, `unlock_fair`).
#[cfg(not(feature = "loom"))]
pub(crate) type MutexGuard<'a, P, T> = lock_api::MutexGuard<'a, <P as Platform>::RawMutex, T>;

/// loom's mutex behind `lock_api`'s API (the platform parameter is only carried).
#[cfg(feature = "loom")]
#[derive(Debug)]
pub(crate) struct Mutex<P, T> {
    m: loom::sync::Mutex<T>,
    _p: PhantomData<fn() -> P>,
}

/// The guard of a loom [`Mutex`].
#[cfg(feature = "loom")]
pub(crate) struct MutexGuard<'a, P, T> {
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
            guard: Some(self.m.lock().unwrap()),
            _p: PhantomData,
        }
    }

    /// Mutable access without locking (exclusive borrow).
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.m.get_mut().unwrap()
    }
}

#[cfg(feature = "loom")]
impl<P, T> MutexGuard<'_, P, T> {
    /// Unlock (`lock_api`'s `unlock_fair`). loom's mutex has no hand-off: a plain unlock,
    /// after which loom explores every thread that may take the lock next.
    pub(crate) fn unlock_fair(s: Self) {
        drop(s);
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
