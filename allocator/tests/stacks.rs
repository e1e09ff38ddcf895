//! Kernel thread stacks (`alloc_thread_stack_node` / `free_thread_stack`): guard pages,
//! zeroing, the per-CPU cache that makes the common case cost no map, unmap or flush, its
//! limits, the refusal of other release calls, and several threads churning stacks.
#![cfg(not(feature = "loom"))]

mod common;

use std::collections::HashSet;
use std::sync::Mutex;

use common::vm;
use pagetable::{PAGE_SIZE, cpu};
use vmalloc::{NR_CACHED_STACKS, THREAD_SIZE, VmFlags, Vmalloc, VmallocError};

const P: u64 = PAGE_SIZE;

#[test]
fn a_stack_has_a_guard_page_on_each_side_and_starts_zeroed() {
    let vm = vm();
    let st = vm.alloc_thread_stack_node(None).unwrap();
    assert_eq!(
        (st.size(), st.top() - st.base()),
        (THREAD_SIZE, THREAD_SIZE)
    );
    assert_eq!(st.guard_below() + P, st.base());
    let space = vm.kernel_space();
    assert!(space.translate(st.guard_below()).is_none(), "guard below");
    assert!(space.translate(st.top()).is_none(), "guard above");
    assert!(space.translate(st.base()).is_some() && space.translate(st.top() - 1).is_some());
    let mut b = vec![1u8; THREAD_SIZE as usize];
    assert_eq!(vm.vread(st.base(), &mut b), b.len());
    assert!(b.iter().all(|&x| x == 0));
    // An overflow below the base is a hole, not someone else's memory.
    assert_eq!(vm.vwrite(st.guard_below() + (P - 8), &[7; 8]), 8);
    let mut g = [9u8; 8];
    vm.vread(st.guard_below() + (P - 8), &mut g);
    assert_eq!(g, [0; 8]);
    let area = vm.find_vm_area(st.base()).unwrap();
    assert_eq!(area.start, st.guard_below().as_u64());
    assert_eq!(area.size(), THREAD_SIZE + 2 * P);
    assert!(area.info.flags.contains(VmFlags::ALLOC | VmFlags::STACK));
    let line = vmalloc::vmallocinfo_line(&area);
    assert!(line.ends_with(" pages=4 vmalloc"), "{line}");
    assert!(vm.meminfo().contains("VmallocUsed:          16 kB"));
    vm.free_thread_stack(st).unwrap();
    vm.check_idle().unwrap();
}

#[test]
fn a_cached_stack_comes_back_with_no_map_unmap_or_flush() {
    let vm = vm();
    let st = vm.alloc_thread_stack_node(None).unwrap();
    let base = st.base();
    vm.vwrite(base + 100, b"old thread's secret");
    vm.free_thread_stack(st).unwrap();
    assert_eq!(vm.cached_thread_stacks(), 1);
    assert!(vm.kernel_space().translate(base).is_some(), "still mapped");
    let (frames, kva, tlb) = (vm.frame_stats(), vm.kva().stats(), vm.tlb().stats());
    for _ in 0..1000 {
        let st = vm.alloc_thread_stack_node(None).unwrap();
        assert_eq!(st.base(), base, "the same stack, from this CPU's cache");
        let mut b = [1u8; 19];
        vm.vread(base + 100, &mut b);
        assert_eq!(b, [0; 19], "cleared, as Linux clears a reused stack");
        vm.vwrite(base + 100, b"old thread's secret");
        vm.free_thread_stack(st).unwrap();
    }
    let f = vm.frame_stats();
    assert_eq!(
        (f.allocs, f.frees),
        (frames.allocs, frames.frees),
        "no frame moved"
    );
    let k = vm.kva().stats();
    assert_eq!(
        (k.used, k.lazy_pages, k.purges),
        (kva.used, kva.lazy_pages, kva.purges)
    );
    assert_eq!(vm.tlb().stats().flushes, tlb.flushes, "no flush");
    vm.check_idle().unwrap();
}

#[test]
fn the_cache_holds_two_per_cpu_and_releases_the_rest() {
    let vm = vm();
    let stacks: Vec<_> = (0..NR_CACHED_STACKS + 1)
        .map(|_| vm.alloc_thread_stack_node(None).unwrap())
        .collect();
    let last = stacks.last().unwrap().base();
    for st in stacks {
        vm.free_thread_stack(st).unwrap();
    }
    assert_eq!(vm.cached_thread_stacks(), NR_CACHED_STACKS);
    assert!(
        vm.find_vm_area(last).is_none(),
        "the third went the vfree way"
    );
    assert!(vm.kernel_space().translate(last).is_none());
    // Another CPU's thread does not take this CPU's stacks.
    let mut c = common::cfg(16);
    c.kva.nr_cpus = 2;
    let vm2 = Vmalloc::new(c).unwrap();
    cpu::set_this_cpu(0);
    let st = vm2.alloc_thread_stack_node(None).unwrap();
    let base = st.base();
    vm2.free_thread_stack(st).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            cpu::set_this_cpu(1);
            let other = vm2.alloc_thread_stack_node(None).unwrap();
            assert_ne!(other.base(), base);
            vm2.free_thread_stack(other).unwrap();
        });
    });
    cpu::set_this_cpu(usize::MAX);
    assert_eq!(vm2.cached_thread_stacks(), 2);
    assert_eq!(vm2.free_vm_stack_cache(), 2);
    assert_eq!(vm2.cached_thread_stacks(), 0);
    vm2.check_idle().unwrap();
    assert_eq!(vm.free_vm_stack_cache(), NR_CACHED_STACKS);
    vm.check_idle().unwrap();
}

#[test]
fn other_release_calls_and_foreign_stacks_are_refused() {
    let vm = vm();
    let st = vm.alloc_thread_stack_node(None).unwrap();
    let e = vm.vfree(st.guard_below()).unwrap_err();
    assert!(matches!(e, VmallocError::WrongKind { .. }));
    assert!(e.to_string().ends_with("free_thread_stack"), "{e}");
    let area = vm.find_vm_area(st.base()).unwrap();
    assert!(matches!(
        vm.free_vm_area(&area),
        Err(VmallocError::WrongKind { .. })
    ));
    // A stack of another instance.
    let other = vm_other();
    let foreign = other.alloc_thread_stack_node(None).unwrap();
    let before = vm.vmallocinfo();
    assert!(matches!(
        vm.free_thread_stack(foreign),
        Err(VmallocError::NotAllocated { .. })
    ));
    assert_eq!(vm.vmallocinfo(), before);
    assert_eq!(vm.cached_thread_stacks(), 0);
    vm.free_thread_stack(st).unwrap();
    vm.check_idle().unwrap();
}

fn vm_other() -> Vmalloc {
    vm()
}

#[test]
fn threads_sharing_cpu_slots_never_get_the_same_stack() {
    let mut c = common::cfg(32);
    c.kva.nr_cpus = 2;
    let vm = Vmalloc::new(c).unwrap();
    let live: Mutex<HashSet<u64>> = Mutex::new(HashSet::new());
    std::thread::scope(|s| {
        for t in 0..4usize {
            let (vm, live) = (&vm, &live);
            s.spawn(move || {
                // Four threads on two CPU slots: two threads share each cache.
                cpu::set_this_cpu(t % 2);
                let mut mine = Vec::new();
                for round in 0..200u64 {
                    let st = vm.alloc_thread_stack_node(None).unwrap();
                    assert!(
                        live.lock().unwrap().insert(st.base().as_u64()),
                        "handed out twice"
                    );
                    let mut b = [1u8; 64];
                    vm.vread(st.top() - 64, &mut b);
                    assert_eq!(b, [0; 64], "thread {t}: not cleared");
                    vm.vwrite(st.top() - 64, &[t as u8 + 1; 64]);
                    mine.push(st);
                    if mine.len() > 2 || round % 3 == 0 {
                        let st = mine.remove(0);
                        let mut b = [0u8; 64];
                        vm.vread(st.top() - 64, &mut b);
                        assert_eq!(b, [t as u8 + 1; 64], "thread {t}: someone else wrote");
                        live.lock().unwrap().remove(&st.base().as_u64());
                        vm.free_thread_stack(st).unwrap();
                    }
                }
                for st in mine {
                    live.lock().unwrap().remove(&st.base().as_u64());
                    vm.free_thread_stack(st).unwrap();
                }
            });
        }
    });
    vm.check_idle().unwrap();
}
