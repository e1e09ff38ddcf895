//! Huge vmalloc (`vmalloc_huge`, `VM_ALLOW_HUGE_VMAP`): 2 MiB leaves over 2 MiB runs, the
//! 4 KiB fallback, `vfree` and the lazy purge of huge leaves, `vmallocinfo`, `vread` /
//! `vwrite` and the TLB model, fault injection at every allocation, and several threads.
#![cfg(not(feature = "loom"))]

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use common::{Rng, cfg, model, pattern, snapshot};
use pagetable::{PAGE_SIZE, TlbEntries, VirtAddr, cpu};
use vmalloc::{Gfp, PAGE_KERNEL, PMD_SIZE, PurgeMode, VmFlags, Vmalloc, VmallocConfig};

const P: u64 = PAGE_SIZE;

/// A heap-backed instance with `mb` MiB of RAM, synchronous purges.
fn vm(mb: u64) -> Vmalloc {
    Vmalloc::new(cfg(mb)).unwrap()
}

fn leaf_sizes(vm: &Vmalloc, a: VirtAddr, len: u64) -> Vec<u64> {
    vm.kernel_space().mappings(a, len).map(|m| m.size).collect()
}

#[test]
fn two_mib_leaves_over_two_mib_runs() {
    let vm = vm(64);
    let used0 = vm.frame_stats().used;
    let a = vm.vmalloc_huge(4 << 20, Gfp::ZERO).unwrap();
    assert_eq!(a.as_u64() % PMD_SIZE, 0);
    let area = vm.find_vm_area(a).unwrap();
    assert_eq!(
        area.size(),
        (4 << 20) + P,
        "2 MiB multiples plus the guard page"
    );
    assert!(area.info.flags.contains(VmFlags::HUGE | VmFlags::ALLOC));
    assert_eq!(area.info.nr_pages, 1024);
    assert_eq!(leaf_sizes(&vm, a, 4 << 20), vec![PMD_SIZE, PMD_SIZE]);
    // 1024 data frames and one page directory: no leaf table at all.
    assert_eq!(vm.frame_stats().used, used0 + 1024 + 1);
    // vmallocinfo: a vmalloc area counted in 4 KiB pages (Linux prints no huge marker).
    let line = vmalloc::vmallocinfo_line(&area);
    assert!(line.ends_with(" pages=1024 vmalloc vpages"), "{line}");
    assert!(vm.meminfo().contains("VmallocUsed:        4096 kB"));
    // Zeroed, and reachable through one TLB entry per 2 MiB.
    let mut buf = vec![1u8; 64];
    vm.vread(a + PMD_SIZE - 32, &mut buf);
    assert!(buf.iter().all(|&b| b == 0));
    let data = pattern(7, 8192);
    assert_eq!(vm.vwrite(a + PMD_SIZE - 4096, &data), 8192);
    let mut back = vec![0u8; 8192];
    vm.vread(a + PMD_SIZE - 4096, &mut back);
    assert_eq!(back, data);
    assert_eq!(model(&vm).entries(), TlbEntries { small: 0, huge: 2 });
    // vmalloc_to_page: the 4 KiB frame inside the run.
    let t = vm.kernel_space().translate(a + PMD_SIZE + 5 * P).unwrap();
    assert_eq!(
        vm.vmalloc_to_page(a + PMD_SIZE + 5 * P)
            .unwrap()
            .start_address(),
        t.pa
    );
    // vfree: the runs go back whole; the purge's flush drops the 2 MiB translations.
    vm.vfree(a).unwrap();
    assert!(
        model(&vm).holds_any(a, a + (4 << 20)),
        "stale until the purge"
    );
    assert_eq!(vm.frames().free_runs(), 2);
    assert!(vm.vmallocinfo().contains("unpurged vm_area"));
    vm.purge_vmap_area_lazy();
    assert!(!model(&vm).holds_any(a, a + (4 << 20)));
    vm.check_idle().unwrap();
}

#[test]
fn sizes_round_up_below_two_mib_is_plain() {
    let vm = vm(32);
    let a = vm.vmalloc_huge((3 << 20) + 1, Gfp::KERNEL).unwrap();
    assert_eq!(vm.find_vm_area(a).unwrap().info.nr_pages, 1024);
    assert_eq!(leaf_sizes(&vm, a, 4 << 20), vec![PMD_SIZE, PMD_SIZE]);
    let small = vm.vmalloc_huge(PMD_SIZE - P, Gfp::KERNEL).unwrap();
    let area = vm.find_vm_area(small).unwrap();
    assert!(!area.info.flags.contains(VmFlags::HUGE));
    assert_eq!(area.info.nr_pages, 511);
    assert!(leaf_sizes(&vm, small, PMD_SIZE).iter().all(|&s| s == P));
    // `vmalloc_node_range` with VM_ALLOW_HUGE_VMAP and a larger alignment.
    let (s, e) = vm.range();
    let b = vm
        .vmalloc_node_range(
            PMD_SIZE,
            4 << 20,
            s,
            e,
            Gfp::KERNEL,
            PAGE_KERNEL,
            VmFlags::ALLOW_HUGE_VMAP,
            None,
        )
        .unwrap();
    assert_eq!(b.as_u64() % (4 << 20), 0);
    assert_eq!(leaf_sizes(&vm, b, PMD_SIZE), vec![PMD_SIZE]);
    for x in [a, small, b] {
        vm.vfree(x).unwrap();
    }
    vm.check_idle().unwrap();
}

#[test]
fn no_run_left_falls_back_to_small_pages() {
    // 16 MiB of RAM. 6 MiB of 4 KiB pages first take the low frames and the bump region up
    // to past 6 MiB; aligned runs remain at 8, 10, 12 and 14 MiB.
    let vm = vm(16);
    let x = vm.vmalloc(6 << 20).unwrap();
    let a = vm.vmalloc_huge(6 << 20, Gfp::KERNEL).unwrap();
    assert_eq!(leaf_sizes(&vm, a, 6 << 20), vec![PMD_SIZE; 3]);
    vm.vfree(x).unwrap();
    vm.purge_vmap_area_lazy();
    // One run left for a 4 MiB request: the attempt is undone (its run given back) and the
    // area is made of 4 KiB pages, with the size asked for.
    let d = vm.vmalloc_huge(4 << 20, Gfp::KERNEL).unwrap();
    let area = vm.find_vm_area(d).unwrap();
    assert!(!area.info.flags.contains(VmFlags::HUGE));
    assert_eq!((area.size(), area.info.nr_pages), ((4 << 20) + P, 1024));
    let sizes = leaf_sizes(&vm, d, 4 << 20);
    assert!(sizes.len() == 1024 && sizes.iter().all(|&s| s == P));
    assert_eq!(
        vm.frames().free_runs(),
        1,
        "the run taken by the attempt is back"
    );
    // A 2 MiB request still finds that run.
    let e = vm.vmalloc_huge(2 << 20, Gfp::KERNEL).unwrap();
    assert_eq!(leaf_sizes(&vm, e, 2 << 20), vec![PMD_SIZE]);
    for z in [a, d, e] {
        vm.vfree(z).unwrap();
    }
    vm.check_idle().unwrap();
}

#[test]
fn fault_injection_at_every_allocation() {
    // The n-th frame allocation fails, for every n: the call succeeds (huge, or on the
    // 4 KiB fallback) or fails with a typed error leaving no trace.
    let mut huge_ok = 0;
    let mut fallback_ok = 0;
    for n in 1..=8 {
        let vm = vm(32);
        let before = snapshot(&vm);
        vm.frames().fail_nth(Some(n));
        let r = vm.vmalloc_huge(4 << 20, Gfp::ZERO);
        vm.frames().fail_nth(None);
        match r {
            Ok(a) => {
                let sizes = leaf_sizes(&vm, a, 4 << 20);
                if sizes == [PMD_SIZE, PMD_SIZE] {
                    huge_ok += 1;
                } else {
                    assert!(sizes.iter().all(|&s| s == P) && sizes.len() == 1024);
                    fallback_ok += 1;
                }
                vm.vfree(a).unwrap();
            }
            Err(e) => {
                assert_eq!(snapshot(&vm), before, "n = {n}: {e}");
            }
        }
        vm.check_idle().unwrap();
    }
    assert!(
        huge_ok >= 1 && fallback_ok >= 1,
        "{huge_ok} huge, {fallback_ok} fallback"
    );
    // Every allocation failing from some point on: typed errors, no trace (two runs and a
    // page directory: three allocations, after which the 4 KiB fallback cannot succeed
    // either).
    for k in 0..3 {
        let vm = vm(32);
        let before = snapshot(&vm);
        vm.frames().fail_after(Some(k));
        let r = vm.vmalloc_huge(4 << 20, Gfp::KERNEL);
        vm.frames().fail_after(None);
        assert!(r.is_err(), "k = {k}: {r:?}");
        assert_eq!(snapshot(&vm), before, "k = {k}");
    }
    let vm = vm(32);
    vm.frames().fail_after(Some(3));
    let a = vm.vmalloc_huge(4 << 20, Gfp::KERNEL).unwrap();
    vm.frames().fail_after(None);
    assert_eq!(leaf_sizes(&vm, a, 4 << 20), vec![PMD_SIZE, PMD_SIZE]);
}

#[test]
fn the_purge_flush_covers_huge_leaves_before_reuse() {
    let vm = vm(64);
    let m = model(&vm);
    for round in 0..6u64 {
        let a = vm.vmalloc_huge(2 << 20, Gfp::KERNEL).unwrap();
        assert!(
            !m.holds_any(a, a + (2 << 20) + P),
            "round {round}: a CPU still caches a translation of the new area"
        );
        vm.vwrite(a + round * P, b"cached");
        vm.vfree(a).unwrap();
        if round % 2 == 1 {
            vm.purge_vmap_area_lazy();
        }
    }
    vm.check_idle().unwrap();
}

#[test]
fn threads_mix_huge_and_small_areas() {
    let mut c = cfg(160);
    c.kva.purge_mode = PurgeMode::Inline;
    c.kva.lazy_max_pages = Some(4096);
    let vm = Vmalloc::new(c).unwrap();
    let live: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (vm, live) = (&vm, &live);
            s.spawn(move || {
                cpu::set_this_cpu(t as usize);
                let mut rng = Rng(t * 7919 + 1);
                let mut mine: Vec<(VirtAddr, u64, u64)> = Vec::new();
                for step in 0..60u64 {
                    if mine.len() > 3 || (rng.below(3) == 0 && !mine.is_empty()) {
                        let (a, len, seed) =
                            mine.swap_remove(rng.below(mine.len() as u64) as usize);
                        let mut back = vec![0u8; 64];
                        vm.vread(a + len - 64, &mut back);
                        assert_eq!(back, pattern(seed, 64), "thread {t} lost its bytes");
                        live.lock().unwrap().remove(&a.as_u64());
                        vm.vfree(a).unwrap();
                        continue;
                    }
                    let len = if rng.below(2) == 0 {
                        PMD_SIZE * (1 + rng.below(2))
                    } else {
                        P * (1 + rng.below(40))
                    };
                    let a = vm.vmalloc_huge(len, Gfp::KERNEL).unwrap();
                    assert!(!model(vm).holds_any(a, a + len), "reused before the flush");
                    {
                        let mut l = live.lock().unwrap();
                        let end = a.as_u64() + len;
                        if let Some((&s0, &e0)) = l.range(..end).next_back() {
                            assert!(e0 <= a.as_u64() || s0 >= end, "overlap");
                        }
                        l.insert(a.as_u64(), end);
                    }
                    let seed = t << 32 | step;
                    vm.vwrite(a + len - 64, &pattern(seed, 64));
                    mine.push((a, len, seed));
                }
                for (a, _, _) in mine {
                    live.lock().unwrap().remove(&a.as_u64());
                    vm.vfree(a).unwrap();
                }
            });
        }
    });
    vm.kva().check_invariants().unwrap();
    vm.check_idle().unwrap();
}

#[test]
fn the_default_mmap_instance_maps_a_gib_with_512_leaves() {
    let vm = Vmalloc::new(VmallocConfig::default()).unwrap();
    let used0 = vm.frame_stats().used;
    let a = vm.vmalloc_huge(1 << 30, Gfp::KERNEL).unwrap();
    let leaves = leaf_sizes(&vm, a, 1 << 30);
    assert_eq!(leaves.len(), 512);
    assert!(leaves.iter().all(|&s| s == PMD_SIZE));
    // 262,144 data frames and one page directory.
    assert_eq!(vm.frame_stats().used, used0 + (1 << 18) + 1);
    vm.vfree(a).unwrap();
    vm.check_idle().unwrap();
}
