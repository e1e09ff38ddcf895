//! The shared pieces of the loom models (see the crate documentation).

use std::sync::Arc as StdArc;

use loom::sync::Mutex;
use loom::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use pagetable::PAGE_SIZE;
use pagetable::VirtAddr;
use pagetable::cpu;
use pagetable::{TlbFlush, TlbStats};
use vmalloc::{AreaInfo, Kva, KvaConfig, PurgeMode, VmFlags};

/// First address of every model's KVA range (low canonical half, so linear == canonical).
pub const BASE: u64 = 0x1000_0000;

/// Pages after [`BASE`] whose staleness [`StaleTlb`] tracks.
pub const TRACKED_PAGES: u64 = 128;

/// Preemption bound of the models with two threads (override with `LOOM_MAX_PREEMPTIONS`).
pub const BOUND_2_THREADS: usize = 3;
/// Preemption bound of the models with three or more threads (bound 3 costs them minutes).
pub const BOUND_3_THREADS: usize = 2;

/// A loom model builder with `bound` preemptions unless `LOOM_MAX_PREEMPTIONS` says otherwise.
pub fn builder(bound: usize) -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(bound);
    }
    b
}

/// Run `model` under [`builder`]`(bound)` and print how many executions loom explored
/// (visible with `--nocapture`; the figures in docs/TESTING.md come from there).
pub fn check<F>(name: &str, bound: usize, model: F)
where
    F: Fn() + Sync + Send + 'static,
{
    check_with(name, bound, None, model);
}

/// [`check`] with loom's limit of scheduling points per execution raised to `max_branches`
/// (loom's default, 1,000, is too few for models whose setup touches page tables and arena
/// words: every atomic access is a branch point).
pub fn check_with<F>(name: &str, bound: usize, max_branches: Option<usize>, model: F)
where
    F: Fn() + Sync + Send + 'static,
{
    // A plain std atomic: it counts executions from outside the model, loom need not see it.
    let runs = StdArc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = StdArc::clone(&runs);
    let start = std::time::Instant::now();
    let mut b = builder(bound);
    if let Some(m) = max_branches {
        b.max_branches = b.max_branches.max(m);
    }
    let bound = b.preemption_bound;
    b.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        model();
    });
    println!(
        "loom model {name}: {} executions, preemption bound {bound:?}, {:.1?}",
        runs.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed()
    );
}

/// `n` pages in bytes.
pub const fn pages(n: u64) -> u64 {
    n * PAGE_SIZE
}

/// A TLB flush hook that tracks which pages of `[BASE, BASE + 128 pages)` may still be cached
/// by some CPU after their unmapping, and checks that flushes never overlap in time.
#[derive(Debug, Default)]
pub struct StaleTlb {
    /// Bit `i`: page `BASE + i * PAGE_SIZE` was unmapped and no flush covered it since.
    stale: Mutex<u128>,
    /// Flushes running right now (must never exceed one: one purger at a time).
    active: AtomicUsize,
    flushes: AtomicU64,
    full_flushes: AtomicU64,
    pages_flushed: AtomicU64,
    /// Every range flushed, in order.
    log: Mutex<Vec<(u64, u64)>>,
}

/// Bitmask of the pages of `[start, end)` (clipped to the [`TRACKED_PAGES`] tracked pages).
fn mask(start: u64, end: u64) -> u128 {
    let lo = start.max(BASE).saturating_sub(BASE) / PAGE_SIZE;
    let hi = end
        .saturating_sub(BASE)
        .div_ceil(PAGE_SIZE)
        .min(TRACKED_PAGES);
    (lo..hi).fold(0, |m, p| m | (1u128 << p))
}

impl StaleTlb {
    /// A hook with no stale page.
    pub fn new() -> StdArc<Self> {
        StdArc::new(Self::default())
    }

    /// Record that `[start, end)` was just unmapped without a flush (call it right before
    /// freeing the range lazily).
    pub fn unmapped(&self, start: u64, end: u64) {
        *self.stale.lock().unwrap() |= mask(start, end);
    }

    /// Panic if a page of `[start, end)` is stale: the range was handed out before a flush
    /// covering its last unmapping completed.
    pub fn assert_fresh(&self, start: u64, end: u64) {
        let stale = *self.stale.lock().unwrap() & mask(start, end);
        assert_eq!(
            stale, 0,
            "[{start:#x}, {end:#x}) handed out while pages {stale:#b} (bit i = BASE + i pages) \
             may still be cached: reused before the TLB flush"
        );
    }

    /// The stale-page bitmap (bit `i` = page `BASE + i * PAGE_SIZE`).
    pub fn stale(&self) -> u128 {
        *self.stale.lock().unwrap()
    }

    /// Every range flushed so far, in order.
    pub fn log(&self) -> Vec<(u64, u64)> {
        self.log.lock().unwrap().clone()
    }

    fn enter(&self) {
        let before = self.active.fetch_add(1, Ordering::SeqCst);
        assert_eq!(
            before, 0,
            "two TLB flushes at once: two purgers ran concurrently"
        );
    }

    fn leave(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TlbFlush for StaleTlb {
    fn flush_range(&self, start: VirtAddr, end: VirtAddr) {
        self.enter();
        let (s, e) = (start.as_u64(), end.as_u64());
        *self.stale.lock().unwrap() &= !mask(s, e);
        self.log.lock().unwrap().push((s, e));
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.pages_flushed
            .fetch_add(e.saturating_sub(s) / PAGE_SIZE, Ordering::Relaxed);
        self.leave();
    }

    fn flush_all(&self) {
        self.enter();
        *self.stale.lock().unwrap() = 0;
        self.log.lock().unwrap().push((0, u64::MAX));
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.full_flushes.fetch_add(1, Ordering::Relaxed);
        self.leave();
    }

    fn stats(&self) -> TlbStats {
        TlbStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            full_flushes: self.full_flushes.load(Ordering::Relaxed),
            pages_flushed: self.pages_flushed.load(Ordering::Relaxed),
            misses: 0,
            hits: 0,
        }
    }
}

/// Shape of a tiny allocator for a model.
#[derive(Debug, Clone, Copy)]
pub struct Tiny {
    /// Pages in the range (at most [`TRACKED_PAGES`]).
    pub pages: u64,
    /// Shards.
    pub shards: usize,
    /// Lazy threshold in pages.
    pub lazy_max_pages: usize,
    /// Per-CPU caches of small areas.
    pub pcpu_cache: bool,
}

/// A synchronous-purge `Kva` over `[BASE, BASE + pages)` flushing through a fresh
/// [`StaleTlb`] (no thread of its own).
pub fn tiny_kva(t: Tiny) -> (StdArc<Kva>, StdArc<StaleTlb>) {
    tiny_kva_with(t, PurgeMode::Synchronous, 0)
}

/// [`tiny_kva`] with another purge mode and `workers` purge threads (spawned inside the
/// model by `Kva::new`, joined by its `Drop`).
pub fn tiny_kva_with(
    t: Tiny,
    purge_mode: PurgeMode,
    workers: usize,
) -> (StdArc<Kva>, StdArc<StaleTlb>) {
    assert!(
        t.pages <= TRACKED_PAGES,
        "StaleTlb tracks {TRACKED_PAGES} pages"
    );
    let tlb = StaleTlb::new();
    // The struct update keeps this literal compiling when `KvaConfig` gains a field.
    let cfg = KvaConfig {
        start: BASE,
        end: BASE + pages(t.pages),
        shards: t.shards,
        lazy_max_pages: Some(t.lazy_max_pages),
        purge_mode,
        pcpu_cache: t.pcpu_cache,
        purge_workers: workers,
        ..KvaConfig::default()
    };
    let kva = Kva::new(cfg, tlb.clone()).expect("a valid tiny configuration");
    (StdArc::new(kva), tlb)
}

/// Info of a test area.
pub fn info() -> AreaInfo {
    AreaInfo::new(VmFlags::ALLOC)
}

/// Allocate `n` pages anywhere in the range.
pub fn alloc(kva: &Kva, n: u64) -> Result<u64, vmalloc::KvaError> {
    kva.alloc(pages(n), PAGE_SIZE, 0, u64::MAX, None, info())
        .map(|a| a.as_u64())
}

/// What a model's thread does to free the live area at `start` lazily: mark it stale (its
/// entries were just cleared without a flush), take it out of the busy lookup and put it on
/// the lazy list (which may kick a purge).
pub fn free_lazy(kva: &Kva, tlb: &StaleTlb, start: u64) {
    let area = kva
        .remove(pagetable::VirtAddr::new_truncate(start))
        .expect("freeing a live area");
    tlb.unmapped(area.start(), area.end());
    let pages = area.size() / PAGE_SIZE;
    kva.free_lazy(area, pages as usize - 1);
}

/// The pool models' setup, on CPU 0 of a [`Tiny`] of 128 pages, one shard, pools on (where a
/// refill of the 1-page class carves 2 chunks): one 124-page area, then two 1-page areas (the
/// refill carves `[124, 126)`, returns one chunk and pools the other, which the second takes),
/// leaving 2 free pages in the tree and nothing pooled. Returns `(big, s1, s2)`.
pub fn big_and_two_pages(kva: &Kva) -> (u64, u64, u64) {
    cpu::set_this_cpu(0);
    let big = alloc(kva, 124).expect("setup: 124 pages");
    let s1 = alloc(kva, 1).expect("setup: 1 page");
    let s2 = alloc(kva, 1).expect("setup: 1 page");
    let s = kva.stats();
    assert_eq!((s.cached, s.free), (0, pages(2)), "setup: {s:?}");
    (big, s1, s2)
}

/// Panic unless the allocator's structures are consistent (no operation may be in flight).
pub fn assert_invariants(kva: &Kva) {
    if let Err(e) = kva.check_invariants() {
        panic!("Kva invariants broken: {e}");
    }
}
