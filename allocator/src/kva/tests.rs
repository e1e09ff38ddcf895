//! Unit tests of `Kva` internals: home shards, the pool fast path, the lazy trigger,
//! foreign tokens, invariant checking against deliberate corruption.

use std::sync::Arc as StdArc;

use pagetable::CountingFlush;
use pagetable::PAGE_SIZE;

use super::*;
use crate::kva::flags::VmFlags;
use pagetable::cpu;

const P: u64 = PAGE_SIZE;
const BASE: u64 = 0x4000_0000;

fn sync_cfg(pages: u64, shards: usize, lazy: usize) -> KvaConfig {
    KvaConfig {
        start: BASE,
        end: BASE + pages * P,
        shards,
        lazy_max_pages: Some(lazy),
        purge_mode: PurgeMode::Synchronous,
        pcpu_cache: true,
        purge_workers: 0,
        nr_cpus: 0,
    }
}

fn new(cfg: KvaConfig) -> Kva {
    Kva::new(cfg, StdArc::new(CountingFlush::new())).unwrap()
}

fn info() -> AreaInfo {
    AreaInfo::new(VmFlags::ALLOC)
}

#[test]
fn homes_cover_every_cpu() {
    let k = new(sync_cfg(1024, 3, 64));
    let inner = &k.inner;
    assert_eq!(inner.topo.home.len(), cpu::nr_cpu_ids());
    for &h in inner.topo.home.iter() {
        assert!(h < k.nr_shards());
    }
    assert!(k.workers.is_empty());
    assert!(inner.background.sched.is_none());
}

#[test]
fn lazy_step_is_a_power_of_two_fraction_of_the_threshold() {
    let k = new(KvaConfig {
        nr_cpus: 2,
        ..sync_cfg(1024, 2, 1000)
    });
    // Counters: 2 nodes' batches + 2 overflow lists; 1000 / (4 * 4) = 62 -> 32.
    assert_eq!(k.inner.lazy_step_shift, 5);
    let k = new(sync_cfg(1024, 4, 1));
    assert_eq!(k.inner.lazy_step_shift, 0);
    // 64 shards: the step shrinks with the counter count.
    assert_eq!(lazy_step_shift(57_344, 2 * 64), 6);
    assert_eq!(lazy_step_shift(1, 1000), 0);
}

#[test]
fn purged_small_areas_come_back_through_the_pool() {
    let k = new(sync_cfg(4096, 1, 1 << 20));
    let (s, e) = k.range();
    let a = k.alloc(2 * P, P, s, e, None, info()).unwrap().as_u64();
    // The refill carved a batch: the rest of it sits in the node's pool.
    let batch = k.inner.pools.batch(1) as u64;
    assert_eq!(k.stats().cached, (batch - 1) * 2 * P);
    let r = k.remove(pagetable::VirtAddr::new_truncate(a)).unwrap();
    k.free_lazy(r, 1);
    let rep = k.purge();
    assert_eq!((rep.areas, rep.to_caches), (1, 1));
    assert_eq!(k.stats().cached, batch * 2 * P);
    k.check_invariants().unwrap();
    // LIFO: the next allocation of that size gets it back first, from any CPU (one shard).
    let k = &k;
    std::thread::scope(|sc| {
        sc.spawn(move || {
            cpu::set_this_cpu(1);
            assert_eq!(k.alloc(2 * P, P, s, e, None, info()).unwrap().as_u64(), a);
        });
    });
    k.check_invariants().unwrap();
}

#[test]
fn purged_large_areas_skip_the_tree_merge() {
    // A shard of 2^24 pages: pools for every size up to 256 pages.
    let k = new(sync_cfg(1 << 24, 1, 1 << 20));
    let (s, e) = k.range();
    let a = k.alloc(100 * P, P, s, e, None, info()).unwrap().as_u64();
    let b = k.alloc(100 * P, P, s, e, None, info()).unwrap().as_u64();
    // Not refilled in batches: only what was asked was carved.
    assert_eq!(k.stats().cached, 0);
    for x in [a, b] {
        let r = k.remove(pagetable::VirtAddr::new_truncate(x)).unwrap();
        k.free_lazy(r, 99);
    }
    let rep = k.purge();
    assert_eq!((rep.areas, rep.to_caches), (2, 2));
    let st = k.stats();
    assert_eq!((st.cached, st.nr_free_areas), (200 * P, 1));
    k.check_invariants().unwrap();
    // Both come back, last freed first, without a tree search.
    assert_eq!(k.alloc(100 * P, P, s, e, None, info()).unwrap().as_u64(), b);
    assert_eq!(k.alloc(100 * P, P, s, e, None, info()).unwrap().as_u64(), a);
    assert_eq!(k.stats().cached, 0);
    // Above 256 pages: the tree.
    let c = k.alloc(300 * P, P, s, e, None, info()).unwrap().as_u64();
    let r = k.remove(pagetable::VirtAddr::new_truncate(c)).unwrap();
    k.free_lazy(r, 299);
    assert_eq!(k.purge().to_caches, 0);
    k.check_invariants().unwrap();
}

#[test]
fn restricted_windows_and_other_nodes_bypass_the_cache() {
    let k = new(sync_cfg(4096, 2, 1 << 20));
    let (s, e) = k.range();
    let half = s + 2048 * P;
    // A window not covering the home shard never takes a cached chunk.
    let a = k
        .alloc(P, P, half + 10 * P, e, None, info())
        .unwrap()
        .as_u64();
    assert!(a >= half + 10 * P);
    assert_eq!(k.stats().cached, 0);
    k.check_invariants().unwrap();
}

#[test]
fn foreign_tokens_are_refused() {
    let k1 = new(sync_cfg(64, 1, 1024));
    let k2 = new(sync_cfg(64, 1, 1024));
    let (s, e) = k1.range();
    let a = k1.alloc(P, P, s, e, None, info()).unwrap().as_u64();
    let r = k1.remove(pagetable::VirtAddr::new_truncate(a)).unwrap();
    k2.free_lazy(r, 1);
    assert_eq!(k2.stats().foreign_tokens, 1);
    k2.check_invariants().unwrap();
    let b = k1.alloc(P, P, s, e, None, info()).unwrap().as_u64();
    let r = k1.remove(pagetable::VirtAddr::new_truncate(b)).unwrap();
    // SAFETY: the KVA layer alone: nothing was ever mapped in the area.
    unsafe { k2.free_unused(r) };
    assert_eq!(k2.stats().foreign_tokens, 2);
    assert_eq!(k2.stats().free, 64 * P);
}

#[test]
fn sequential_frees_merge_into_one_free_area() {
    let mut c = sync_cfg(1024, 1, 1 << 20);
    c.pcpu_cache = false;
    let k = new(c);
    let (s, e) = k.range();
    let v: Vec<u64> = (0..100)
        .map(|_| k.alloc(3 * P, P, s, e, None, info()).unwrap().as_u64())
        .collect();
    for a in v.iter().rev().chain(v.iter()).take(100) {
        let r = k.remove(pagetable::VirtAddr::new_truncate(*a)).unwrap();
        k.free_lazy(r, 2);
    }
    assert_eq!(k.stats().unmapped_pages, 0);
    let rep = k.purge();
    assert_eq!(k.stats().unmapped_pages, 200);
    assert_eq!((rep.areas, rep.pages), (100, 300));
    let st = k.stats();
    assert_eq!((st.nr_free_areas, st.largest_free), (1, 1024 * P));
    k.check_invariants().unwrap();
}

#[test]
fn boundary_crossing_areas_purge_into_both_shards() {
    let k = new(sync_cfg(64, 4, 1 << 20));
    let (s, e) = k.range();
    let a = k.alloc(40 * P, P, s, e, None, info()).unwrap().as_u64();
    // 16 pages per shard: the area starts in shard 0 and crosses into shards 1 and 2.
    let crossed = |k: &Kva| {
        k.inner
            .shards
            .all()
            .iter()
            .map(|sh| usize::from(sh.crossed_into()))
            .collect::<Vec<_>>()
    };
    assert_eq!(crossed(&k), [0, 1, 1, 0]);
    assert_eq!(
        k.find(pagetable::VirtAddr::new_truncate(a + 39 * P))
            .map(|x| x.start),
        Some(a)
    );
    assert!(
        k.find(pagetable::VirtAddr::new_truncate(a + 40 * P))
            .is_none()
    );
    let r = k.remove(pagetable::VirtAddr::new_truncate(a)).unwrap();
    assert_eq!(crossed(&k), [0, 0, 0, 0]);
    k.free_lazy(r, 40);
    k.purge();
    k.check_invariants().unwrap();
    for sh in k.inner.shards.all() {
        let t = sh.lock_free();
        assert_eq!(
            t.free_bytes(),
            sh.end() - sh.base(),
            "shard at {:#x} not whole again",
            sh.base()
        );
    }
}

#[test]
fn check_invariants_catches_corruption() {
    let k = new(sync_cfg(64, 2, 1024));
    let (s, e) = k.range();
    let a = k.alloc(4 * P, P, s, e, None, info()).unwrap().as_u64();
    k.check_invariants().unwrap();
    // Pretend the live area is also free.
    let i = k.inner.shards.index_of(a).unwrap();
    k.inner
        .shards
        .get(i)
        .lock_free()
        .insert_merge(a, a + P)
        .unwrap();
    let err = k.check_invariants().unwrap_err();
    assert!(err.contains("overlaps"), "{err}");
    k.inner
        .shards
        .get(i)
        .lock_free()
        .alloc_at(a, a + P)
        .unwrap();
    k.check_invariants().unwrap();
    // Lose a page from the accounting.
    let j = (i + 1) % 2;
    let sh = k.inner.shards.get(j);
    let top = sh.end() - P;
    sh.lock_free().alloc_at(top, sh.end()).unwrap();
    let err = k.check_invariants().unwrap_err();
    assert!(err.contains("!= total"), "{err}");
}

#[test]
fn debug_output_names_the_configuration() {
    let k = new(sync_cfg(64, 2, 1024));
    let s = format!("{k:?}");
    assert!(s.contains("Synchronous") && s.contains("shards: 2"), "{s}");
}

#[test]
fn handles_and_tokens_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Kva>();
    send_sync::<KvaStats>();
    send::<RemovedArea>();
    send_sync::<VmArea>();
}

#[test]
fn remove_if_checks_under_the_lock_and_changes_nothing_on_refusal() {
    let k = new(sync_cfg(1024, 2, 64));
    let a = k
        .alloc(2 * P, P, BASE, BASE + 1024 * P, None, info())
        .map(|a| a.as_u64())
        .unwrap();
    let refused = k.remove_if(pagetable::VirtAddr::new_truncate(a), |area| {
        assert_eq!((area.start, area.end), (a, a + 2 * P));
        Err(crate::VmallocError::InvalidFlags {
            flags: area.info.flags,
        })
    });
    assert!(matches!(
        refused,
        Err(crate::VmallocError::InvalidFlags { .. })
    ));
    assert_eq!(
        k.find(pagetable::VirtAddr::new_truncate(a))
            .map(|x| x.start),
        Some(a),
        "refusal removed the area"
    );
    assert!(matches!(
        k.remove_if(pagetable::VirtAddr::new_truncate(a + P), |_| Ok::<
            (),
            KvaError,
        >(())),
        Err(KvaError::NotStartOfArea { .. })
    ));
    let r = k
        .remove_if(pagetable::VirtAddr::new_truncate(a), |_| {
            Ok::<(), KvaError>(())
        })
        .unwrap();
    assert_eq!((r.start(), r.end()), (a, a + 2 * P));
    assert!(k.find(pagetable::VirtAddr::new_truncate(a)).is_none());
    k.free_lazy(r, 1);
    assert_eq!(
        k.remove_if(pagetable::VirtAddr::new_truncate(a), |_| Ok(()))
            .err(),
        Some(KvaError::DoubleFree { addr: a })
    );
    k.check_invariants().unwrap();
}

#[test]
fn lazy_frees_wait_in_the_node_batch() {
    // Threshold far away: nothing is purged until asked.
    let k = new(sync_cfg(1024, 2, 512));
    let (s, e) = k.range();
    let a = k.alloc(2 * P, P, s, e, None, info()).unwrap().as_u64();
    let r = k.remove(pagetable::VirtAddr::new_truncate(a)).unwrap();
    k.free_lazy(r, 1);
    let i = k.inner.shards.index_of(a).unwrap();
    {
        let sh = k.inner.shards.get(i);
        assert_eq!(sh.lock_node().lazy(), &[(a, a + 2 * P)]);
        assert_eq!(sh.node().lazy_pages(), 2);
    }
    let st = k.stats();
    assert_eq!((st.lazy_pages, st.pending, st.nr_busy), (2, 2 * P, 0));
    k.check_invariants().unwrap();
    // Pending, not free: freeing it again is a double free, and the range is not reused.
    assert!(matches!(
        k.remove(pagetable::VirtAddr::new_truncate(a)),
        Err(KvaError::DoubleFree { .. })
    ));
    let b = k.alloc(2 * P, P, s, e, None, info()).unwrap().as_u64();
    assert_ne!(b, a);
    let rb = k.remove(pagetable::VirtAddr::new_truncate(b)).unwrap();
    // SAFETY: the KVA layer alone: nothing was ever mapped in the area.
    unsafe { k.free_unused(rb) };
    let rep = k.purge();
    assert_eq!((rep.areas, rep.pages), (1, 2));
    assert_eq!(rep.flushed, Some((a, a + 2 * P)));
    let st = k.stats();
    assert_eq!((st.lazy_pages, st.pending, st.purged_areas), (0, 0, 1));
    assert_eq!(st.unmapped_pages, 1);
    assert!(k.inner.shards.get(i).lock_node().lazy().is_empty());
    k.check_invariants().unwrap();
}

#[test]
fn a_full_node_batch_falls_back_to_the_overflow_list() {
    // lazy_max_pages = 3: batches hold 3 areas; the threshold is never crossed by 1-page
    // areas before the fourth free, and Synchronous mode purges inline when it is.
    let k = new(sync_cfg(1024, 1, 3));
    let (s, e) = k.range();
    let areas: Vec<u64> = (0..5)
        .map(|_| k.alloc(P, P, s, e, Some(0), info()).unwrap().as_u64())
        .collect();
    // Fill the batch without crossing the threshold: record directly, as free_lazy would.
    let node = k.inner.shards.get(0).node();
    for &a in &areas[..3] {
        let r = k.remove(pagetable::VirtAddr::new_truncate(a)).unwrap();
        let mut st = node.lock();
        assert!(
            node.record_lazy(&mut st, r.area.start, r.area.end, 1, 1)
                .is_some()
        );
    }
    // The batch is full: this one goes to the overflow list, and crossing the threshold
    // purges both sources at once.
    let r = k
        .remove(pagetable::VirtAddr::new_truncate(areas[3]))
        .unwrap();
    k.free_lazy(r, 1);
    let st = k.stats();
    assert_eq!(st.purges, 1, "{st:?}");
    assert_eq!((st.purged_areas, st.lazy_pages, st.pending), (4, 0, 0));
    k.check_invariants().unwrap();
    let r = k
        .remove(pagetable::VirtAddr::new_truncate(areas[4]))
        .unwrap();
    k.free_lazy(r, 1);
    assert_eq!(k.stats().lazy_pages, 1);
    k.check_invariants().unwrap();
    k.purge();
    let st = k.stats();
    assert_eq!((st.lazy_pages, st.pending, st.free), (0, 0, st.total));
    k.check_invariants().unwrap();
}

#[test]
fn check_invariants_catches_a_wrong_batch_counter() {
    let k = new(sync_cfg(1024, 1, 512));
    let (s, e) = k.range();
    let a = k.alloc(P, P, s, e, None, info()).unwrap().as_u64();
    let r = k.remove(pagetable::VirtAddr::new_truncate(a)).unwrap();
    k.free_lazy(r, 1);
    let node = k.inner.shards.get(0).node();
    node.set_lazy_pages_for_tests(5);
    assert!(k.check_invariants().unwrap_err().contains("lazy counter"));
    node.set_lazy_pages_for_tests(1);
    k.check_invariants().unwrap();
}

#[test]
fn try_extend_takes_free_tree_space_only() {
    // Two shards of 64 pages, no per-CPU caches (the space after an area stays in the tree).
    let k = new(KvaConfig {
        pcpu_cache: false,
        ..sync_cfg(128, 2, 1_000)
    });
    let a = k
        .alloc(3 * P, P, BASE, BASE + 64 * P, Some(0), info())
        .unwrap();
    let a_end = a.as_u64() + 3 * P;
    let used = k.stats().used;
    k.try_extend(a, a_end + 2 * P).unwrap();
    assert_eq!(k.find(a + 4 * P).unwrap().start, a.as_u64());
    assert_eq!(k.find(a + 4 * P).unwrap().end, a_end + 2 * P);
    assert_eq!(k.stats().used, used + 2 * P);
    k.check_invariants().unwrap();
    // Same end: nothing to do; shrinking, unaligned or outside the range: refused.
    k.try_extend(a, a_end + 2 * P).unwrap();
    for bad in [a_end, a_end + 2 * P + 1, BASE + 200 * P] {
        assert!(matches!(
            k.try_extend(a, bad),
            Err(KvaError::InvalidRange { .. })
        ));
    }
    assert!(matches!(
        k.try_extend(a + P, a_end + 4 * P),
        Err(KvaError::NotStartOfArea { .. })
    ));
    // A neighbour in the way: NoSpace naming the range, nothing changed.
    let b = k
        .alloc(P, P, a_end + 3 * P, a_end + 4 * P, None, info())
        .unwrap();
    let before = k.stats();
    assert_eq!(
        k.try_extend(a, a_end + 4 * P),
        Err(KvaError::NoSpace {
            size: 2 * P,
            align: P,
            start: a_end + 2 * P,
            end: a_end + 4 * P
        })
    );
    assert_eq!(k.stats(), before);
    // Lazily freed space is not taken (it needs a purge first).
    let t = k.remove(b).unwrap();
    k.free_lazy(t, 1);
    assert!(matches!(
        k.try_extend(a, a_end + 4 * P),
        Err(KvaError::NoSpace { .. })
    ));
    k.purge();
    k.try_extend(a, a_end + 4 * P).unwrap();
    k.check_invariants().unwrap();
    // The undo: the tail goes straight back to the free tree.
    let free = k.stats().free;
    // SAFETY: nothing was ever mapped (this Kva maps nothing).
    unsafe { k.trim_unused(a, a_end + 2 * P) }.unwrap();
    assert_eq!(k.stats().free, free + 2 * P);
    assert_eq!(k.find(a + 4 * P).unwrap().end, a_end + 2 * P);
    assert!(matches!(
        // SAFETY: as above (refused anyway: not below the end).
        unsafe { k.trim_unused(a, a_end + 2 * P) },
        Err(KvaError::InvalidRange { .. })
    ));
    k.try_extend(a, a_end + 4 * P).unwrap();
    k.check_invariants().unwrap();
    // Across the shard boundary: the area is found from the upper shard too.
    let top = BASE + 64 * P;
    k.try_extend(a, top + 5 * P).unwrap();
    assert_eq!(
        k.find(VirtAddr::new_truncate(top + 4 * P)).unwrap().start,
        a.as_u64()
    );
    assert_eq!(k.busy_overlapping(top, top + P).len(), 1);
    k.check_invariants().unwrap();
    // Trimming back across the boundary keeps the crossing count right.
    // SAFETY: nothing was ever mapped.
    unsafe { k.trim_unused(a, top + P) }.unwrap();
    assert_eq!(
        k.find(VirtAddr::new_truncate(top)).unwrap().start,
        a.as_u64()
    );
    assert!(k.find(VirtAddr::new_truncate(top + 2 * P)).is_none());
    k.check_invariants().unwrap();
    // SAFETY: nothing was ever mapped.
    unsafe { k.trim_unused(a, top - P) }.unwrap();
    assert!(k.find(VirtAddr::new_truncate(top)).is_none());
    k.try_extend(a, top + 5 * P).unwrap();
    let t = k.remove(a).unwrap();
    assert_eq!(t.area().end, top + 5 * P);
    k.free_lazy(t, 0);
    k.purge();
    assert!(k.find(VirtAddr::new_truncate(top + 4 * P)).is_none());
    let s = k.stats();
    assert_eq!((s.used, s.free), (0, 128 * P));
    k.check_invariants().unwrap();
}

#[test]
fn for_each_lazy_lists_batches_and_lists() {
    // With per-CPU caches the frees go to the CPU's lazy batch, without to the shard lists.
    for pcpu_cache in [true, false] {
        let k = new(KvaConfig {
            pcpu_cache,
            ..sync_cfg(256, 2, 1_000)
        });
        let mut freed = Vec::new();
        for pages in [2u64, 5, 40] {
            let a = k.alloc(pages * P, P, 0, u64::MAX, None, info()).unwrap();
            freed.push((a.as_u64(), a.as_u64() + pages * P));
            let t = k.remove(a).unwrap();
            k.free_lazy(t, pages as usize);
        }
        let mut seen = Vec::new();
        k.for_each_lazy(|s, e| seen.push((s, e)));
        seen.sort_unstable();
        freed.sort_unstable();
        assert_eq!(seen, freed, "pcpu_cache {pcpu_cache}");
        k.check_invariants().unwrap();
        k.purge();
        let mut n = 0;
        k.for_each_lazy(|_, _| n += 1);
        assert_eq!(n, 0);
    }
}

#[test]
fn remove_free_lazy_is_remove_then_free_lazy_in_one_section() {
    let va = pagetable::VirtAddr::new_truncate;
    // A boundary-crossing area: the crossing counts fall, the area waits in shard 0's batch.
    let k = new(sync_cfg(64, 4, 1 << 20));
    let (s, e) = k.range();
    let a = k.alloc(40 * P, P, s, e, None, info()).unwrap().as_u64();
    k.remove_free_lazy(va(a), usize::MAX).unwrap();
    assert!(k.inner.shards.all().iter().all(|sh| !sh.crossed_into()));
    let st = k.stats();
    assert_eq!((st.lazy_pages, st.pending, st.nr_busy), (40, 40 * P, 0));
    assert!(matches!(
        k.remove_free_lazy(va(a), 1),
        Err(KvaError::DoubleFree { .. })
    ));
    assert!(matches!(
        k.remove_free_lazy(va(e), 1),
        Err(KvaError::NotAllocated { .. })
    ));
    k.check_invariants().unwrap();
    k.purge();
    assert_eq!(k.stats().purged_pages, 40);
    k.check_invariants().unwrap();
    // A full batch: the fused free falls back to the overflow list, then purges past the
    // threshold, exactly as `free_lazy` does.
    let k = new(sync_cfg(1024, 1, 3));
    let (s, e) = k.range();
    let areas: Vec<u64> = (0..5)
        .map(|_| k.alloc(P, P, s, e, Some(0), info()).unwrap().as_u64())
        .collect();
    let inside = k.alloc(2 * P, P, s, e, Some(0), info()).unwrap().as_u64();
    assert!(matches!(
        k.remove_free_lazy(va(inside + P), 1),
        Err(KvaError::NotStartOfArea { .. })
    ));
    let node = k.inner.shards.get(0).node();
    for &a in &areas[..3] {
        let r = k.remove(va(a)).unwrap();
        let mut st = node.lock();
        assert!(
            node.record_lazy(&mut st, r.area.start, r.area.end, 1, 1)
                .is_some()
        );
    }
    k.remove_free_lazy(va(areas[3]), 1).unwrap();
    let st = k.stats();
    assert_eq!((st.purges, st.purged_areas, st.lazy_pages), (1, 4, 0));
    k.remove_free_lazy(va(areas[4]), 7).unwrap();
    assert_eq!(k.stats().lazy_pages, 1);
    k.check_invariants().unwrap();
    k.purge();
    let st = k.stats();
    assert_eq!((st.unmapped_pages, st.pending), (5, 0));
    k.check_invariants().unwrap();
}

/// Background mode with a threshold no test crosses: the workers are never kicked, and the
/// only purges are the kick purges run where `purge_work` is called (as a host's workqueue
/// would, on another CPU), which hand pooled sizes back (`Pooling::HandBack`).
fn background_cfg(pages: u64) -> KvaConfig {
    KvaConfig {
        purge_mode: PurgeMode::Background,
        ..sync_cfg(pages, 1, 1 << 20)
    }
}

/// Remove the live area at `addr` and free it lazily (one node-lock section).
fn free_now(k: &Kva, addr: u64, unmapped: usize) {
    k.remove_free_lazy(pagetable::VirtAddr::new_truncate(addr), unmapped)
        .unwrap();
}

fn has_ready(k: &Kva) -> bool {
    k.inner.shards.get(0).lock_node().pools.has_ready()
}

#[test]
fn a_background_purge_hands_pooled_sizes_back_for_the_owner_to_sort_in() {
    // A shard of 2^24 pages: pools for every size up to 256 pages (none refilled in batches
    // above 16 pages, so the pools hold only what purges return).
    let k = new(background_cfg(1 << 24));
    let (s, e) = k.range();
    let a = k.alloc(100 * P, P, s, e, None, info()).unwrap().as_u64();
    let b = k.alloc(100 * P, P, s, e, None, info()).unwrap().as_u64();
    let c = k.alloc(20 * P, P, s, e, None, info()).unwrap().as_u64();
    let big = k.alloc(300 * P, P, s, e, None, info()).unwrap().as_u64();
    for (x, n) in [(a, 99), (b, 99), (c, 19), (big, 299)] {
        free_now(&k, x, n);
    }
    let rep = k.purge_work().unwrap();
    // The three pooled sizes went back to the node in one piece; the big one to the tree.
    assert_eq!((rep.areas, rep.to_caches), (4, 3));
    assert!(has_ready(&k));
    let st = k.stats();
    assert_eq!((st.cached, st.pending, st.lazy_pages), (220 * P, 0, 0));
    k.check_invariants().unwrap();
    // The owner's next pool miss sorts them in and pops: last handed back, first out.
    assert_eq!(k.alloc(100 * P, P, s, e, None, info()).unwrap().as_u64(), b);
    assert!(!has_ready(&k));
    assert_eq!(k.stats().cached, 120 * P);
    k.check_invariants().unwrap();
    assert_eq!(k.alloc(20 * P, P, s, e, None, info()).unwrap().as_u64(), c);
    // A hand-back not yet sorted in: the next purge pushes onto the classes instead.
    free_now(&k, c, 19);
    assert_eq!(k.purge_work().unwrap().to_caches, 1);
    assert!(has_ready(&k));
    free_now(&k, b, 99);
    assert_eq!(k.purge_work().unwrap().to_caches, 1);
    assert_eq!(k.stats().cached, 220 * P);
    k.check_invariants().unwrap();
    // Both ways back are served: b from its class, c after sorting the list in.
    assert_eq!(k.alloc(100 * P, P, s, e, None, info()).unwrap().as_u64(), b);
    assert_eq!(k.alloc(20 * P, P, s, e, None, info()).unwrap().as_u64(), c);
    assert_eq!(k.alloc(100 * P, P, s, e, None, info()).unwrap().as_u64(), a);
    assert_eq!(k.stats().cached, 0);
    k.check_invariants().unwrap();
}

#[test]
fn a_hand_back_is_sorted_in_or_reclaimed_when_space_runs_out() {
    let k = new(background_cfg(1 << 24));
    let (s, e) = k.range();
    let a = k.alloc(100 * P, P, s, e, None, info()).unwrap().as_u64();
    // Everything else in one area: the tree is empty.
    let rest = k.alloc(e - s - 100 * P, P, s, e, None, info()).unwrap();
    assert_eq!(k.stats().free, 0);
    free_now(&k, a, 100);
    assert_eq!(k.purge_work().unwrap().to_caches, 1);
    assert!(has_ready(&k));
    // 50 pages: its class is empty and so is the tree. The miss sorts `a` into its class
    // (still no 50-page area), and the allocation-failure reclaim returns it to the tree,
    // which then has the room.
    let x = k.alloc(50 * P, P, s, e, None, info()).unwrap().as_u64();
    assert_eq!(x, a);
    assert!(!has_ready(&k));
    let st = k.stats();
    assert_eq!((st.cached, st.free, st.used), (0, 50 * P, e - s - 50 * P));
    k.check_invariants().unwrap();
    free_now(&k, x, 50);
    free_now(&k, rest.as_u64(), 0);
    k.purge();
    let st = k.stats();
    // (`free` counts the pooled bytes too: the 50-page area went back to its class.)
    assert_eq!((st.used, st.free, st.cached), (0, e - s, 50 * P));
    k.check_invariants().unwrap();
}
