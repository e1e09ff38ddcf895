//! Unit tests of the legacy KVA allocator: the search cache, the walk, lazy freeing, purge and
//! retry, notifiers.

use std::sync::Weak;
use std::sync::atomic::AtomicUsize;

use pagetable::CountingFlush;

use super::*;

const P: u64 = PAGE_SIZE;
const S: u64 = 0xffff_c900_0000_0000;

fn kva(lazy_max: u64) -> (Arc<CountingFlush>, LegacyKva<u32>) {
    let f = Arc::new(CountingFlush::new());
    (f.clone(), LegacyKva::new(f, lazy_max))
}

/// Allocate `pages` in `[S, S + range)` and attach a vm.
fn alloc(k: &LegacyKva<u32>, pages: u64, range: u64) -> u64 {
    let a = k.alloc(pages * P, P, S, S + range * P).unwrap();
    k.set_vm(a, 1).unwrap();
    a
}

/// Free lazily (detach + free_lazy).
fn free(k: &LegacyKva<u32>, a: u64) {
    let (_, d) = k.take_vm(a, |_| true).unwrap();
    k.free_lazy(d);
}

/// SplitMix64, for the random-operations test (the runner's generator is in `test-vmalloc`,
/// which depends on this crate).
struct Rng(u64);

impl Rng {
    /// Uniform in `0..n` (multiply-shift, as the runner's).
    fn below(&mut self, n: u32) -> u32 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (((z >> 32) * u64::from(n)) >> 32) as u32
    }
}

#[test]
fn sequential_allocations_follow_the_cache() {
    let (_, k) = kva(1 << 20);
    let mut prev = None;
    for i in 0..100 {
        let a = alloc(&k, 1, 1000);
        assert_eq!(a, S + i * P);
        let steps = k.stats().walk_steps;
        if let Some(p) = prev {
            // One step over the cached area itself, never a walk from the start.
            assert!(steps - p <= 1, "walked {} areas", steps - p);
        }
        prev = Some(steps);
    }
    k.check_consistency().unwrap();
}

#[test]
fn purge_moves_cache_back_and_hole_is_reused() {
    let (f, k) = kva(1 << 20);
    let a = alloc(&k, 1, 100);
    let b = alloc(&k, 1, 100);
    let _c = alloc(&k, 1, 100);
    free(&k, b);
    k.purge_vmap_area_lazy();
    assert_eq!(f.stats().flushes, 1);
    // __free_vmap_area: b <= cache (c), so the cache becomes rb_prev(b) = a.
    assert_eq!(k.cache().0, Some((a, a + P)));
    assert_eq!(alloc(&k, 1, 100), b);
    k.check_consistency().unwrap();
}

#[test]
fn cached_hole_size_invalidates_only_for_smaller_requests() {
    let (_, k) = kva(1 << 20);
    let _a = alloc(&k, 1, 100);
    let b = alloc(&k, 2, 100); // [S+1, S+3)
    let _c = alloc(&k, 1, 100); // [S+3, S+4)
    free(&k, b);
    k.purge_vmap_area_lazy();
    // 3 pages do not fit the 2-page hole: the walk notes it and allocates above c.
    let d = alloc(&k, 3, 100);
    assert_eq!(d, S + 4 * P);
    let (cache, hole, _, _) = k.cache();
    assert_eq!((cache, hole), (Some((d, d + 3 * P)), 2 * P));
    // Two pages: not smaller than the hole, so the cache is used (the kernel's strict `<`).
    let e = alloc(&k, 2, 100);
    assert_eq!(e, S + 7 * P);
    // One page: smaller than the noted hole -> scan from vstart and reuse it.
    let g = alloc(&k, 1, 100);
    assert_eq!(g, b);
    k.check_consistency().unwrap();
}

#[test]
fn lower_vstart_or_smaller_align_invalidates() {
    let (_, k) = kva(1 << 20);
    let hi = k.alloc(P, P, S + 10 * P, S + 100 * P).unwrap();
    assert_eq!(hi, S + 10 * P);
    assert_eq!(k.cache().2, S + 10 * P);
    // A lower vstart drops the cache: the lowest hole wins.
    let lo = k.alloc(P, P, S, S + 100 * P).unwrap();
    assert_eq!(lo, S);
    // A larger alignment keeps it: the search starts after the cached area.
    let al = k.alloc(P, 4 * P, S, S + 100 * P).unwrap();
    assert_eq!(al, S + 4 * P);
    assert_eq!(k.cache().3, 4 * P);
    // A smaller one drops it again: back to the first hole above vstart.
    let small = k.alloc(P, P, S, S + 100 * P).unwrap();
    assert_eq!(small, S + P);
    k.check_consistency().unwrap();
}

#[test]
fn cache_below_vstart_goes_to_nocache() {
    let (_, k) = kva(1 << 20);
    let a = k.alloc(P, P, S, S + 100 * P).unwrap();
    assert_eq!(a, S);
    // A higher vstart is "less permissive": the cache survives the check, but
    // ALIGN(cache->va_end) < vstart sends the search to the tree descent from vstart.
    let b = k.alloc(P, P, S + 50 * P, S + 100 * P).unwrap();
    assert_eq!(b, S + 50 * P);
    k.check_consistency().unwrap();
}

#[test]
fn freeing_below_cached_vstart_drops_the_cache() {
    let (_, k) = kva(1 << 20);
    let a = alloc(&k, 1, 100);
    let hi = k.alloc(P, P, S + 10 * P, S + 100 * P).unwrap();
    k.set_vm(hi, 1).unwrap();
    assert_eq!(k.cache().0, Some((hi, hi + P)));
    free(&k, a);
    k.purge_vmap_area_lazy();
    assert_eq!(k.cache().0, None);
}

#[test]
fn exhaustion_purges_retries_then_fails() {
    let (f, k) = kva(1 << 20);
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    k.register_notifier(Box::new(move || {
        c2.fetch_add(1, Ordering::Relaxed);
        0
    }));
    let v: Vec<u64> = (0..4).map(|_| alloc(&k, 1, 4)).collect();
    free(&k, v[1]);
    free(&k, v[2]);
    assert_eq!(k.stats().lazy_pages, 2);
    // Full: the first attempt overflows, the synchronous purge frees two pages, the retry fits.
    let r = k.alloc(P, P, S, S + 4 * P).unwrap();
    assert!(r == v[1] || r == v[2]);
    assert_eq!((f.stats().flushes, k.stats().purges), (1, 1));
    assert_eq!(calls.load(Ordering::Relaxed), 0);
    let _r2 = k.alloc(P, P, S, S + 4 * P).unwrap();
    // Now really full: purge (nothing to do), notifiers (free nothing), fail.
    let e = k.alloc(P, P, S, S + 4 * P).unwrap_err();
    assert_eq!(e, KvaError::NoSpace { size: P, align: P });
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    assert_eq!(f.stats().flushes, 1, "an empty purge does not flush");
    k.check_consistency().unwrap();
}

#[test]
fn a_notifier_that_frees_causes_a_retry() {
    let f = Arc::new(CountingFlush::new());
    let k: Arc<LegacyKva<u32>> = Arc::new(LegacyKva::new(f, 1 << 20));
    let v: Vec<u64> = (0..2).map(|_| alloc(&k, 1, 2)).collect();
    let weak: Weak<LegacyKva<u32>> = Arc::downgrade(&k);
    let victim = v[0];
    k.register_notifier(Box::new(move || {
        let Some(k) = weak.upgrade() else { return 0 };
        match k.take_vm(victim, |_| true) {
            Ok((_, d)) => {
                k.free_lazy(d);
                1
            }
            Err(_) => 0,
        }
    }));
    assert_eq!(k.alloc(P, P, S, S + 2 * P).unwrap(), victim);
    // Second time the notifier has nothing left to free.
    assert!(matches!(
        k.alloc(P, P, S, S + 2 * P),
        Err(KvaError::NoSpace { .. })
    ));
}

#[test]
fn lazy_threshold_triggers_one_flush_of_the_union() {
    let (f, k) = kva(4);
    let v: Vec<u64> = (0..6).map(|_| alloc(&k, 1, 100)).collect();
    for &a in &v[..4] {
        free(&k, a);
    }
    assert_eq!((k.stats().lazy_pages, f.stats().flushes), (4, 0));
    free(&k, v[5]);
    let s = k.stats();
    assert_eq!((s.lazy_pages, s.purges, s.busy_areas), (0, 1, 1));
    let t = f.stats();
    assert_eq!(t.flushes, 1);
    // The union [v0, v5 + P) is 6 pages: one range flush.
    assert_eq!((t.pages_flushed, t.full_flushes), (6, 0));
}

#[test]
fn double_free_and_bad_requests_are_errors() {
    let (_, k) = kva(1 << 20);
    let a = alloc(&k, 1, 10);
    free(&k, a);
    assert_eq!(
        k.take_vm(a, |_| true).unwrap_err(),
        KvaError::NotFound { addr: a }
    );
    assert!(k.take_vm(a + P, |_| true).is_err());
    assert!(matches!(
        k.alloc(0, P, S, S + P),
        Err(KvaError::Invalid { .. })
    ));
    assert!(matches!(
        k.alloc(P + 1, P, S, S + 4 * P),
        Err(KvaError::Invalid { .. })
    ));
    assert!(matches!(
        k.alloc(P, 3 * P, S, S + 4 * P),
        Err(KvaError::Invalid { .. })
    ));
    assert!(matches!(
        k.alloc(P, P, S + P, S),
        Err(KvaError::Invalid { .. })
    ));
    // An alignment whose ALIGN() would wrap is an overflow, not an area at 0.
    assert!(matches!(
        k.alloc(P, 1 << 63, S, u64::MAX),
        Err(KvaError::NoSpace { .. })
    ));
    let b = k.alloc(P, P, S, S + 10 * P).unwrap();
    k.abandon(b).unwrap();
    assert!(k.abandon(b).is_err());
    k.purge_vmap_area_lazy();
    assert_eq!(k.stats().busy_areas, 0);
}

#[test]
fn walk_is_proportional_to_areas_skipped() {
    let (_, k) = kva(1 << 20);
    for _ in 0..1000 {
        alloc(&k, 1, 4000);
    }
    let before = k.stats().walk_steps;
    // A smaller alignment than cached drops the cache: the walk starts at the first area and
    // skips all 1000.
    k.alloc(P, P / 2, S, S + 4000 * P)
        .map(|a| k.set_vm(a, 1))
        .unwrap()
        .unwrap();
    let walked = k.stats().walk_steps - before;
    assert!((999..=1001).contains(&walked), "walked {walked}");
}

#[test]
fn random_operations_keep_the_structure_consistent() {
    let (_, k) = kva(64);
    let mut rng = Rng(42);
    let mut live: Vec<u64> = Vec::new();
    for _ in 0..3000 {
        if live.is_empty() || rng.below(3) > 0 {
            let pages = u64::from(1 + rng.below(8));
            let align = P << rng.below(3);
            let lo = S + u64::from(rng.below(64)) * P;
            if let Ok(a) = k.alloc(pages * P, align, lo, S + 512 * P) {
                assert_eq!(a % align, 0);
                assert!(a >= lo && a + pages * P <= S + 512 * P);
                k.set_vm(a, 7).unwrap();
                live.push(a);
            }
        } else {
            let i = rng.below(live.len() as u32) as usize;
            free(&k, live.swap_remove(i));
        }
        k.check_consistency().unwrap();
    }
    for a in live.drain(..) {
        free(&k, a);
    }
    k.purge_vmap_area_lazy();
    k.check_consistency().unwrap();
    assert_eq!(k.stats().busy_areas, 0);
}

#[test]
fn lazy_max_pages_matches_linux() {
    assert_eq!(lazy_max_pages(1), 8192);
    assert_eq!(lazy_max_pages(2), 16384);
    assert_eq!(lazy_max_pages(4), 3 * 8192);
}
