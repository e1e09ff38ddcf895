//! `vrealloc`: shrink in place, grow in place (back into the area's capacity, or into the
//! free range after it), otherwise allocate + copy + free lazily; flags, protection and
//! caller kept; zeroed areas stay zero past their size; errors leave the area untouched;
//! fault injection at every allocation; several threads resizing at once.
#![cfg(not(feature = "loom"))]

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use common::{Rng, cfg, model, pattern, snapshot, vm};
use pagetable::{PAGE_SIZE, PageTableFlags, VirtAddr, Zone, cpu};
use vmalloc::{
    Gfp, PAGE_KERNEL, PAGE_KERNEL_RO, PMD_SIZE, PurgeMode, VmFlags, Vmalloc, VmallocError,
};

const P: u64 = PAGE_SIZE;

fn read(vm: &Vmalloc, a: VirtAddr, len: u64) -> Vec<u8> {
    let mut b = vec![0u8; len as usize];
    vm.vread(a, &mut b);
    b
}

fn pages_of(vm: &Vmalloc, a: VirtAddr) -> usize {
    vm.find_vm_area(a).unwrap().info.nr_pages
}

#[test]
fn null_and_zero_are_vmalloc_and_vfree() {
    let vm = vm();
    let a = vm.vrealloc(VirtAddr::zero(), 3 * P, Gfp::ZERO).unwrap();
    assert_eq!(pages_of(&vm, a), 3);
    assert_eq!(vm.vrealloc(a, 0, Gfp::KERNEL), Ok(VirtAddr::zero()));
    assert!(vm.find_vm_area(a).is_none());
    vm.check_idle().unwrap();
}

#[test]
fn shrink_in_place_frees_the_tail_and_keeps_zeroes_past_the_size() {
    let vm = vm();
    let a = vm.vzalloc(10 * P).unwrap();
    let data = pattern(1, (10 * P) as usize);
    vm.vwrite(a, &data);
    let used = vm.frame_stats().used;
    let b = vm.vrealloc(a, 3 * P + 100, Gfp::ZERO).unwrap();
    assert_eq!(b, a, "in place");
    assert_eq!(pages_of(&vm, a), 4);
    assert_eq!(
        vm.frame_stats().used,
        used - 6,
        "the tail's frames are back"
    );
    assert!(vm.kernel_space().translate(a + 4 * P).is_none());
    assert_eq!(read(&vm, a, 3 * P + 100), data[..(3 * P + 100) as usize]);
    assert!(read(&vm, a + 3 * P + 100, P - 100).iter().all(|&x| x == 0));
    assert!(vm.vmallocinfo().contains("pages=4 vmalloc"));
    // The same page count: nothing moves, only the bytes past the size are zeroed.
    vm.vwrite(a + 3 * P + 50, &[9; 50]);
    assert_eq!(vm.vrealloc(a, 3 * P + 60, Gfp::ZERO), Ok(a));
    assert_eq!(read(&vm, a + 3 * P + 50, 10), vec![9; 10]);
    assert!(read(&vm, a + 3 * P + 60, 40).iter().all(|&x| x == 0));
    vm.vfree(a).unwrap();
    vm.check_idle().unwrap();
}

#[test]
fn growing_back_into_the_capacity_flushes_it_first() {
    let vm = vm();
    let a = vm.vzalloc(10 * P).unwrap();
    let mut b = [0u8; 8];
    vm.vread(a + 8 * P, &mut b); // this CPU now caches page 8
    vm.vrealloc(a, 4 * P, Gfp::ZERO).unwrap();
    assert!(
        model(&vm).holds_any(a + 8 * P, a + 9 * P),
        "stale, as after any unmap"
    );
    let flushes = vm.tlb().stats().flushes;
    assert_eq!(vm.vrealloc(a, 9 * P, Gfp::ZERO), Ok(a));
    assert_eq!(vm.tlb().stats().flushes, flushes + 1);
    assert!(!model(&vm).holds_any(a + 4 * P, a + 10 * P));
    assert_eq!(pages_of(&vm, a), 9);
    assert!(
        read(&vm, a + 4 * P, 5 * P).iter().all(|&x| x == 0),
        "zeroed area"
    );
    vm.vfree(a).unwrap();
    vm.check_idle().unwrap();
}

#[test]
fn grow_in_place_into_the_free_range_after() {
    let vm = vm();
    // 20 pages: above the per-CPU size classes, so the space after it is in the free tree.
    let a = vm.vmalloc(20 * P).unwrap();
    vm.vwrite(a, b"keep me");
    let flushes = vm.tlb().stats().flushes;
    assert_eq!(vm.vrealloc(a, 30 * P, Gfp::KERNEL), Ok(a));
    let area = vm.find_vm_area(a).unwrap();
    assert_eq!((area.size(), area.info.nr_pages), (31 * P, 30));
    assert_eq!(
        vm.tlb().stats().flushes,
        flushes,
        "free space needs no flush"
    );
    assert_eq!(read(&vm, a, 7), b"keep me");
    vm.vwrite(a + 29 * P, b"end");
    assert!(
        vm.kernel_space().translate(a + 30 * P).is_none(),
        "the new guard page"
    );
    // A small area's neighbours sit in the per-CPU cache: it moves instead.
    let small = vm.vmalloc(2 * P).unwrap();
    vm.vwrite(small, b"small");
    let moved = vm.vrealloc(small, 4 * P, Gfp::KERNEL).unwrap();
    assert_eq!(read(&vm, moved, 5), b"small");
    vm.vfree(a).unwrap();
    vm.vfree(moved).unwrap();
    vm.check_idle().unwrap();
}

#[test]
fn a_neighbour_in_the_way_means_copy_and_lazy_free_keeping_flags_and_caller() {
    let vm = vm();
    let (s, e) = vm.range();
    let a = vm
        .vmalloc_node_range(
            20 * P,
            P,
            s,
            e,
            Gfp::ZERO,
            PAGE_KERNEL_RO,
            VmFlags::USERMAP,
            None,
        )
        .unwrap();
    let caller = vm.find_vm_area(a).unwrap().info.caller;
    assert_eq!(caller.file(), file!());
    let blocker = vm.vmalloc(20 * P).unwrap();
    assert_eq!(blocker, a + 21 * P, "right after a's guard page");
    vm.vwrite(a + P, b"moved"); // a read-only page: written through its frame
    let n = vm.vrealloc(a, 25 * P, Gfp::ZERO).unwrap();
    assert_ne!(n, a);
    let area = vm.find_vm_area(n).unwrap();
    assert_eq!(area.info.nr_pages, 25);
    assert!(area.info.flags.contains(VmFlags::USERMAP | VmFlags::ZEROED));
    assert_eq!(area.info.caller, caller, "the original caller");
    let t = vm.kernel_space().translate(n + 24 * P).unwrap();
    assert!(
        !t.flags.contains(PageTableFlags::WRITABLE),
        "the protection is kept"
    );
    assert_eq!(read(&vm, n + P, 5), b"moved");
    assert!(read(&vm, n + 2 * P, 23 * P).iter().all(|&x| x == 0));
    // The old area is freed lazily: gone, and listed as unpurged until the purge.
    assert!(vm.find_vm_area(a).is_none());
    assert!(vm.vmallocinfo().contains("unpurged vm_area"));
    for x in [n, blocker] {
        vm.vfree(x).unwrap();
    }
    vm.check_idle().unwrap();
}

#[test]
fn errors_leave_the_area_untouched() {
    let vm = vm();
    let a = vm.vmalloc(3 * P).unwrap();
    vm.vwrite(a, b"intact");
    let before = vm.vmallocinfo();
    assert!(matches!(
        vm.vrealloc(a + P, 5 * P, Gfp::KERNEL),
        Err(VmallocError::NotStartOfArea { .. })
    ));
    let f = vm.frames().alloc_zeroed(Zone::Normal).unwrap();
    let m = vm.vmap(&[f], VmFlags::empty(), PAGE_KERNEL).unwrap();
    let e = vm.vrealloc(m, 5 * P, Gfp::KERNEL).unwrap_err();
    assert!(
        e.to_string().contains("is a vmap area, not a vmalloc area"),
        "{e}"
    );
    let st = vm.alloc_thread_stack_node(None).unwrap();
    assert!(matches!(
        vm.vrealloc(st.base() - P, 8 * P, Gfp::KERNEL),
        Err(VmallocError::WrongKind { .. })
    ));
    assert!(matches!(
        vm.vrealloc(a, u64::MAX, Gfp::KERNEL),
        Err(VmallocError::InvalidSize { .. })
    ));
    assert!(matches!(
        vm.vrealloc(a, 1 << 40, Gfp::KERNEL),
        Err(VmallocError::OutOfMemory { .. })
    ));
    vm.vunmap(m).unwrap();
    vm.free_thread_stack(st).unwrap();
    vm.free_vm_stack_cache();
    vm.purge_vmap_area_lazy();
    assert_eq!(vm.vmallocinfo(), before);
    assert_eq!(read(&vm, a, 6), b"intact");
    vm.vfree(a).unwrap();
    assert!(matches!(
        vm.vrealloc(a, 2 * P, Gfp::KERNEL),
        Err(VmallocError::NotAllocated { .. })
    ));
    vm.frames().free(f).unwrap();
    vm.check_idle().unwrap();
}

#[test]
fn huge_areas_resize_by_whole_runs() {
    let vm = Vmalloc::new(cfg(64)).unwrap();
    let a = vm.vmalloc_huge(4 << 20, Gfp::ZERO).unwrap();
    vm.vwrite(a + PMD_SIZE - 3, b"runs");
    // 2 MiB + 1 rounds up to 4 MiB: nothing to shrink.
    assert_eq!(vm.vrealloc(a, PMD_SIZE + 1, Gfp::ZERO), Ok(a));
    assert_eq!(pages_of(&vm, a), 1024);
    assert!(read(&vm, a + PMD_SIZE + 1, 64).iter().all(|&x| x == 0));
    let runs = vm.frames().free_runs();
    assert_eq!(vm.vrealloc(a, PMD_SIZE, Gfp::ZERO), Ok(a));
    assert_eq!(vm.frames().free_runs(), runs + 1, "one run back whole");
    // Grow past the capacity: the old tail is flushed, the range after taken.
    assert_eq!(vm.vrealloc(a, 6 << 20, Gfp::ZERO), Ok(a));
    let sizes: Vec<u64> = vm
        .kernel_space()
        .mappings(a, 6 << 20)
        .map(|m| m.size)
        .collect();
    assert_eq!(sizes, vec![PMD_SIZE; 3]);
    assert_eq!(read(&vm, a + PMD_SIZE - 3, 3), b"run");
    assert!(read(&vm, a + PMD_SIZE, 64).iter().all(|&x| x == 0));
    vm.vfree(a).unwrap();
    vm.check_idle().unwrap();
}

#[test]
fn fault_injection_at_every_allocation() {
    // Grown in place (40 more frames in one bulk allocation, maybe a table), or, with a
    // neighbour in the way, copied (a new area: 60 frames and tables).
    for blocked in [false, true] {
        let mut failures = 0;
        for n in 1..=72u64 {
            let vm = vm();
            let a = vm.vzalloc(20 * P).unwrap();
            let blocker = blocked.then(|| vm.vmalloc(20 * P).unwrap());
            let data = pattern(n, (20 * P) as usize);
            vm.vwrite(a, &data);
            let before = snapshot(&vm);
            vm.frames().fail_nth(Some(n));
            let r = vm.vrealloc(a, 60 * P, Gfp::ZERO);
            vm.frames().fail_nth(None);
            match r {
                Ok(b) => {
                    assert_eq!(b == a, !blocked, "n = {n}");
                    assert_eq!(read(&vm, b, 20 * P), data);
                    assert!(read(&vm, b + 20 * P, 40 * P).iter().all(|&x| x == 0));
                    vm.vfree(b).unwrap();
                }
                Err(e) => {
                    failures += 1;
                    assert_eq!(snapshot(&vm), before, "blocked {blocked}, n = {n}: {e}");
                    assert_eq!(read(&vm, a, 20 * P), data, "the area is untouched");
                    vm.vfree(a).unwrap();
                }
            }
            if let Some(x) = blocker {
                vm.vfree(x).unwrap();
            }
            vm.check_idle().unwrap();
        }
        assert!(
            failures >= 40,
            "blocked {blocked}: {failures} failure points"
        );
    }
}

#[test]
fn threads_resize_their_own_areas() {
    let mut c = cfg(96);
    c.kva.purge_mode = PurgeMode::Inline;
    c.kva.lazy_max_pages = Some(2048);
    let vm = Vmalloc::new(c).unwrap();
    let live: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());
    let publish = |live: &Mutex<BTreeMap<u64, u64>>, old: Option<u64>, a: VirtAddr, len: u64| {
        let mut l = live.lock().unwrap();
        if let Some(o) = old {
            l.remove(&o);
        }
        let end = a.as_u64() + len;
        if let Some((&s0, &e0)) = l.range(..end).next_back() {
            assert!(e0 <= a.as_u64() || s0 >= end, "overlap");
        }
        l.insert(a.as_u64(), end);
    };
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (vm, live) = (&vm, &live);
            s.spawn(move || {
                cpu::set_this_cpu(t as usize);
                let mut rng = Rng(t + 11);
                let mut bufs: Vec<(VirtAddr, u64, u64)> = Vec::new();
                for step in 0..80u64 {
                    if bufs.len() < 3 {
                        let len = P * (1 + rng.below(20));
                        let a = vm.vzalloc(len).unwrap();
                        publish(live, None, a, len);
                        let seed = t << 32 | step;
                        vm.vwrite(a, &pattern(seed, len as usize));
                        bufs.push((a, len, seed));
                        continue;
                    }
                    let k = rng.below(bufs.len() as u64) as usize;
                    let (a, len, seed) = bufs[k];
                    let new_len = P * (1 + rng.below(40)) - rng.below(100);
                    let b = vm.vrealloc(a, new_len, Gfp::ZERO).unwrap();
                    let new_pages = new_len.div_ceil(P) * P;
                    // No CPU may cache a translation of the newly exposed pages.
                    let old_pages = len.div_ceil(P) * P;
                    if b != a || new_pages > old_pages {
                        let from = if b == a { old_pages } else { 0 };
                        assert!(
                            !model(vm).holds_any(b + from, b + new_pages),
                            "thread {t}: resized range still cached"
                        );
                    }
                    publish(live, Some(a.as_u64()), b, new_pages);
                    let keep = len.min(new_len) as usize;
                    let got = read(vm, b, keep as u64);
                    assert_eq!(got, pattern(seed, len as usize)[..keep], "thread {t}");
                    if new_len > len {
                        assert!(
                            read(vm, b + len, new_len - len).iter().all(|&x| x == 0),
                            "thread {t}: grown bytes of a zeroed area"
                        );
                    }
                    // Rewrite the whole buffer for the next round.
                    let seed = t << 32 | step;
                    vm.vwrite(b, &pattern(seed, new_len as usize));
                    // Keep the bytes past the size zero, as the contract asks.
                    bufs[k] = (b, new_len, seed);
                }
                for (a, _, _) in bufs {
                    live.lock().unwrap().remove(&a.as_u64());
                    vm.vfree(a).unwrap();
                }
            });
        }
    });
    vm.kva().check_invariants().unwrap();
    vm.check_idle().unwrap();
}
