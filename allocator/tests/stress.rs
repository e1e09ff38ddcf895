//! Multi-thread stress of the vmalloc API (sizes from one byte to 56 pages, plain, zeroed,
//! node-preferring, and aligned up to 2 MiB inside windows of the range; vm_map_ram pieces;
//! vfree and vfree_atomic) with invariant checks:
//! * live areas never overlap;
//! * every area's contents stay intact (stamped with `vwrite`, checked with `vread` through
//!   the TLB model, from several CPU slots);
//! * right after an allocation no CPU caches a translation of its range (the VA was not
//!   handed out again before the flush covering its last unmapping);
//! * after a final purge all VA and every frame are back, exactly.
#![cfg(not(feature = "loom"))]

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;

use common::{Rng, model, pattern, va};
use pagetable::{PAGE_SIZE, PhysFrame, VirtAddr, Zone, cpu};
use vmalloc::{Gfp, PAGE_KERNEL, PurgeMode, VmFlags, Vmalloc, VmallocConfig};

const P: u64 = PAGE_SIZE;
const THREADS: usize = 4;

/// Live ranges of every thread, for the overlap check.
struct Live(Mutex<BTreeMap<u64, u64>>);

impl Live {
    fn insert(&self, start: u64, end: u64) {
        let mut m = self.0.lock().unwrap();
        if let Some((&s, &e)) = m.range(..end).next_back() {
            assert!(
                e <= start,
                "[{start:#x}, {end:#x}) overlaps live [{s:#x}, {e:#x})"
            );
        }
        assert!(m.insert(start, end).is_none());
    }
    fn remove(&self, start: u64) {
        assert!(self.0.lock().unwrap().remove(&start).is_some());
    }
}

/// One live allocation of a worker.
enum Obj {
    Vmalloc {
        a: VirtAddr,
        len: usize,
        seed: u64,
    },
    MapRam {
        a: VirtAddr,
        frames: Vec<PhysFrame>,
        seed: u64,
    },
}

fn worker(vm: &Vmalloc, live: &Live, t: usize, iters: usize) {
    cpu::set_this_cpu(t);
    let tlb = model(vm);
    let mut rng = Rng(0x1234_5678 + t as u64 * 7919);
    let mut mine: Vec<Obj> = Vec::new();
    for i in 0..iters {
        let seed = (t as u64) << 32 | i as u64;
        if mine.len() < 12 && (mine.is_empty() || rng.below(3) != 0) {
            if rng.below(6) == 0 {
                // A vm_map_ram piece over fresh frames holding the pattern.
                let n = 1 + rng.below(8) as usize;
                let frames: Vec<PhysFrame> = (0..n)
                    .map(|_| vm.frames().alloc(Zone::Normal).unwrap())
                    .collect();
                let data = pattern(seed, n * P as usize);
                for (k, f) in frames.iter().enumerate() {
                    vm.frames()
                        .arena()
                        .write(
                            f.start_address(),
                            &data[k * P as usize..(k + 1) * P as usize],
                        )
                        .unwrap();
                }
                let a = vm.vm_map_ram(&frames, None, PAGE_KERNEL).unwrap();
                let end = a + n as u64 * P;
                assert!(
                    !tlb.holds_any(a, end),
                    "vm_map_ram piece {a:?} reused before its flush"
                );
                live.insert(a.as_u64(), end.as_u64());
                mine.push(Obj::MapRam { a, frames, seed });
            } else {
                let pages = if rng.below(10) == 0 {
                    17 + rng.below(40)
                } else {
                    1 + rng.below(4)
                };
                let len = (pages * P - rng.below(P)) as usize;
                let a = match rng.below(5) {
                    0 => vm.vzalloc(len as u64).unwrap(),
                    1 => vm.vmalloc_node(len as u64, t).unwrap(),
                    2 => {
                        // Aligned (4 KiB .. 2 MiB) inside a window (one of 8 slices of the
                        // range): the result honours both.
                        let align = 1u64 << (12 + rng.below(10));
                        let (lo, hi) = window(vm, rng.below(8));
                        let a = vm
                            .vmalloc_node_range(
                                len as u64,
                                align,
                                lo,
                                hi,
                                Gfp::KERNEL,
                                PAGE_KERNEL,
                                VmFlags::empty(),
                                None,
                            )
                            .unwrap();
                        assert_eq!(a.as_u64() % align, 0, "{a:?} not aligned to {align:#x}");
                        let size = (len as u64).div_ceil(P) * P + P;
                        assert!(lo <= a && a + size <= hi, "{a:?} outside [{lo:?}, {hi:?})");
                        a
                    }
                    _ => vm.vmalloc(len as u64).unwrap(),
                };
                let area = vm.find_vm_area(a).unwrap();
                assert!(
                    !tlb.holds_any(va(area.start), va(area.end)),
                    "area {a:?} reused before its flush"
                );
                live.insert(area.start, area.end);
                assert_eq!(vm.vwrite(a, &pattern(seed, len)), len);
                mine.push(Obj::Vmalloc { a, len, seed });
            }
        } else {
            let k = rng.below(mine.len() as u64) as usize;
            let obj = mine.swap_remove(k);
            // Check from another CPU slot now and then.
            let other = rng.below(4) == 0;
            if other {
                cpu::set_this_cpu(t + 1);
            }
            check(vm, &obj);
            if other {
                cpu::set_this_cpu(t);
            }
            release(vm, live, obj, rng.below(8) == 0);
        }
        if i % 97 == 0 {
            vm.vm_unmap_aliases();
        }
    }
    for obj in mine {
        check(vm, &obj);
        release(vm, live, obj, false);
    }
}

/// Slice `k` of 8 of the instance's vmalloc range.
fn window(vm: &Vmalloc, k: u64) -> (VirtAddr, VirtAddr) {
    let (s, e) = vm.range();
    let eighth = (e.as_u64().wrapping_sub(s.as_u64())) / 8;
    (s + k * eighth, s + (k + 1) * eighth)
}

fn check(vm: &Vmalloc, obj: &Obj) {
    let (a, len, seed) = match obj {
        Obj::Vmalloc { a, len, seed } => (*a, *len, *seed),
        Obj::MapRam { a, frames, seed } => (*a, frames.len() * P as usize, *seed),
    };
    let mut buf = vec![0u8; len];
    assert_eq!(vm.vread(a, &mut buf), len);
    assert!(buf == pattern(seed, len), "contents of {a:?} corrupted");
}

fn release(vm: &Vmalloc, live: &Live, obj: Obj, atomic: bool) {
    match obj {
        Obj::Vmalloc { a, .. } => {
            live.remove(a.as_u64());
            if atomic {
                vm.vfree_atomic(a);
            } else {
                vm.vfree(a).unwrap();
            }
        }
        Obj::MapRam { a, frames, .. } => {
            live.remove(a.as_u64());
            vm.vm_unmap_ram(a, frames.len()).unwrap();
            vm.frames().free_bulk(&frames).unwrap();
        }
    }
}

fn run(mode: PurgeMode, shards: usize, iters: usize) {
    let mut c = VmallocConfig::small_heap(48 << 20);
    c.kva.purge_mode = mode;
    c.kva.shards = shards;
    c.kva.lazy_max_pages = Some(256); // purge often
    let vm = Vmalloc::new(c).unwrap();
    let base = vm.frame_stats().used;
    let live = Live(Mutex::new(BTreeMap::new()));
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (vm, live) = (&vm, &live);
            s.spawn(move || worker(vm, live, t, iters));
        }
    });
    vm.vm_unmap_aliases();
    vm.purge_vmap_area_lazy();
    let s = vm.stats();
    assert!(s.purges > 1, "the threshold was crossed: {s:?}");
    assert_eq!(
        (
            s.kva.used,
            s.kva.pending,
            s.lazy_pages,
            s.nr_areas,
            s.vmap_blocks
        ),
        (0, 0, 0, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.kva.free, s.kva.total, "all VA is back");
    assert_eq!(s.deferred_errors, 0);
    vm.kva().check_invariants().unwrap();
    let (start, end) = vm.range();
    assert!(
        !model(&vm).holds_any(start, end),
        "a stale translation survived the final purge"
    );
    // Only page tables remain; freeing the empty ones gives back every frame.
    vm.kernel_space().clean_up(start, end - start).unwrap();
    assert_eq!(vm.frame_stats().used, base, "frames leaked");
}

#[test]
fn stress_background_purge() {
    run(PurgeMode::Background, 0, 400);
}

#[test]
fn stress_inline_purge_four_shards() {
    run(PurgeMode::Inline, 4, 250);
}

#[test]
fn stress_synchronous_single_shard() {
    run(PurgeMode::Synchronous, 1, 250);
}
