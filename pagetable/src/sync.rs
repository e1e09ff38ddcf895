//! The sync facade: the one place through which this workspace gets atomics, locks, condition
//! variables, thread-locals and threads.
//!
//! Without the `loom` feature these are `std`'s atomics and threads and `parking_lot`'s locks.
//! With it they are loom's, so that a loom model sees every shared access made by
//! `pagetable` and `vmalloc` (page-table entries, arena words, llist heads, counters, locks).
//!
//! The lock types expose one API in both worlds (parking_lot's: `lock()` returns the guard,
//! `try_lock()` an `Option`), so code above this module never mentions loom.

#[cfg(not(feature = "loom"))]
mod imp {
    pub use std::sync::Arc;
    pub use std::sync::atomic::{
        AtomicBool, AtomicI64, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
        fence,
    };
    pub use std::thread;
    pub use std::thread_local;

    /// A mutual-exclusion lock (parking_lot's: small, fair enough, no poisoning).
    pub type Mutex<T> = parking_lot::Mutex<T>;
    /// The guard of a [`Mutex`].
    pub type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;
    /// A condition variable paired with [`Mutex`].
    pub type Condvar = parking_lot::Condvar;
    /// A reader-writer lock.
    pub type RwLock<T> = parking_lot::RwLock<T>;
    /// Shared guard of a [`RwLock`].
    pub type RwLockReadGuard<'a, T> = parking_lot::RwLockReadGuard<'a, T>;
    /// Exclusive guard of a [`RwLock`].
    pub type RwLockWriteGuard<'a, T> = parking_lot::RwLockWriteGuard<'a, T>;

    /// One step of a spin-wait: a pause instruction (loom: a yield to the scheduler).
    #[inline]
    pub fn spin_loop() {
        std::hint::spin_loop();
    }
}

#[cfg(feature = "loom")]
mod imp {
    pub use loom::sync::Arc;
    pub use loom::sync::atomic::{
        AtomicBool, AtomicI64, AtomicPtr, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
        fence,
    };
    pub use loom::thread;
    pub use loom::thread_local;

    /// loom's mutex behind parking_lot's API.
    #[derive(Debug)]
    pub struct Mutex<T>(loom::sync::Mutex<T>);

    /// The guard of a [`Mutex`]: the underlying loom guard in an `Option`, so that
    /// [`Condvar::wait`] can hand it to loom and take it back and [`MutexGuard::bump`] can
    /// drop it and lock again, and the mutex it came from (for `bump`'s relock).
    pub struct MutexGuard<'a, T> {
        lock: &'a loom::sync::Mutex<T>,
        guard: Option<loom::sync::MutexGuard<'a, T>>,
    }

    impl<T> Mutex<T> {
        /// A new unlocked mutex.
        pub fn new(value: T) -> Self {
            Self(loom::sync::Mutex::new(value))
        }
        /// Lock, waiting as long as it takes.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard {
                lock: &self.0,
                guard: Some(self.0.lock().unwrap()),
            }
        }
        /// Lock if free right now.
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock().ok().map(|g| MutexGuard {
                lock: &self.0,
                guard: Some(g),
            })
        }
        /// Mutable access without locking (exclusive borrow).
        pub fn get_mut(&mut self) -> &mut T {
            self.0.get_mut().unwrap()
        }
        /// Consume the lock, returning the value.
        pub fn into_inner(self) -> T {
            self.0.into_inner().unwrap()
        }
    }

    impl<T: Default> Default for Mutex<T> {
        fn default() -> Self {
            Self::new(T::default())
        }
    }

    impl<T> MutexGuard<'_, T> {
        /// Release the lock for a moment and take it again (parking_lot's `bump`, used by
        /// `cond_resched_lock`-style code). Under loom the lock is really released, then the
        /// thread yields, then it locks again: loom explores every thread that may take the
        /// lock in that window (parking_lot hands it to a waiter if there is one), and the
        /// yield lets a waiter in without spending a preemption of the bound.
        pub fn bump(s: &mut Self) {
            drop(s.guard.take());
            loom::thread::yield_now();
            s.guard = Some(s.lock.lock().unwrap());
        }
    }

    impl<T> MutexGuard<'_, T> {
        /// Unlock, handing the lock to a waiting thread if there is one (parking_lot's
        /// `unlock_fair`). loom's mutex has no hand-off: a plain unlock, after which loom
        /// explores every thread that may take the lock next.
        pub fn unlock_fair(s: Self) {
            drop(s);
        }
    }

    impl<T> core::ops::Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.guard.as_ref().unwrap()
        }
    }

    impl<T> core::ops::DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.guard.as_mut().unwrap()
        }
    }

    /// loom's condition variable behind parking_lot's API.
    #[derive(Debug, Default)]
    pub struct Condvar(loom::sync::Condvar);

    impl Condvar {
        /// A new condition variable.
        pub fn new() -> Self {
            Self(loom::sync::Condvar::new())
        }
        /// Atomically release the lock and wait for a notification.
        pub fn wait<T>(&self, guard: &mut MutexGuard<'_, T>) {
            let g = guard.guard.take().unwrap();
            guard.guard = Some(self.0.wait(g).unwrap());
        }
        /// Wake one waiter.
        pub fn notify_one(&self) -> bool {
            self.0.notify_one();
            true
        }
        /// Wake every waiter.
        pub fn notify_all(&self) -> usize {
            self.0.notify_all();
            0
        }
    }

    /// loom's reader-writer lock behind parking_lot's API.
    #[derive(Debug)]
    pub struct RwLock<T>(loom::sync::RwLock<T>);
    /// Shared guard of a [`RwLock`].
    pub type RwLockReadGuard<'a, T> = loom::sync::RwLockReadGuard<'a, T>;
    /// Exclusive guard of a [`RwLock`].
    pub type RwLockWriteGuard<'a, T> = loom::sync::RwLockWriteGuard<'a, T>;

    impl<T> RwLock<T> {
        /// A new unlocked reader-writer lock.
        pub fn new(value: T) -> Self {
            Self(loom::sync::RwLock::new(value))
        }
        /// Shared lock.
        pub fn read(&self) -> RwLockReadGuard<'_, T> {
            self.0.read().unwrap()
        }
        /// Exclusive lock.
        pub fn write(&self) -> RwLockWriteGuard<'_, T> {
            self.0.write().unwrap()
        }
    }

    /// One step of a spin-wait: under loom, a yield so the model can schedule another thread.
    #[inline]
    pub fn spin_loop() {
        loom::thread::yield_now();
    }
}

pub use imp::*;

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn mutex_and_condvar_hand_off() {
        let pair = Arc::new((Mutex::new(false), Condvar::new()));
        let p2 = Arc::clone(&pair);
        let t = thread::spawn(move || {
            *p2.0.lock() = true;
            p2.1.notify_all();
        });
        let mut g = pair.0.lock();
        while !*g {
            pair.1.wait(&mut g);
        }
        assert!(*g);
        drop(g);
        t.join().unwrap();
    }

    #[test]
    fn try_lock_fails_while_held() {
        let m = Mutex::new(1);
        let g = m.lock();
        assert!(m.try_lock().is_none());
        drop(g);
        assert_eq!(*m.try_lock().unwrap(), 1);
    }
}
