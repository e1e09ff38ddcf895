//! `vm_map_ram` / `vm_unmap_ram` / `vm_unmap_aliases`: per-CPU vmap blocks, dirty ranges,
//! and the "no stale alias" guarantee.
#![cfg(not(feature = "loom"))]

mod common;

use common::{model, vm};
use pagetable::{PAGE_SIZE, PhysFrame, VirtAddr, Zone, cpu};
use vmalloc::{
    PAGE_KERNEL, VMAP_BBMAP_BITS, VMAP_BLOCK_SIZE, VMAP_MAX_ALLOC, Vmalloc, VmallocError,
};

const P: u64 = PAGE_SIZE;

fn frames(vm: &Vmalloc, n: usize) -> Vec<PhysFrame> {
    (0..n)
        .map(|_| vm.frames().alloc_zeroed(Zone::Normal).unwrap())
        .collect()
}

/// Touch every page of `[a, a + n pages)` through the TLB model as CPU `cpu`.
fn touch(vm: &Vmalloc, cpu: usize, a: VirtAddr, n: u64) {
    let tlb = model(vm);
    for i in 0..n {
        let mut b = [0u8; 1];
        tlb.read(cpu % tlb.nr_cpus(), vm.kernel_space(), a + i * P, &mut b)
            .unwrap();
    }
}

#[test]
fn small_requests_are_bumped_out_of_one_block() {
    let vm = vm();
    let f = frames(&vm, 4);
    let a = vm.vm_map_ram(&f[..3], None, PAGE_KERNEL).unwrap();
    let b = vm.vm_map_ram(&f[..1], None, PAGE_KERNEL).unwrap();
    assert_eq!(a.as_u64() % VMAP_BLOCK_SIZE, 0, "first piece opens a block");
    assert_eq!(b, a + 4 * P, "3 pages round up to 4");
    assert_eq!(vm.stats().vmap_blocks, 1);
    for i in 0..3 {
        assert_eq!(
            vm.kernel_space().translate(a + i * P).unwrap().pa,
            f[i as usize].start_address()
        );
    }
    assert!(vm.find_vm_area(a).is_none(), "vm_map_ram has no vm_struct");
    vm.vm_unmap_ram(a, 3).unwrap();
    vm.vm_unmap_ram(b, 1).unwrap();
    for x in &f {
        assert_eq!(vm.frames().refcount(*x), 1, "frames stay the caller's");
    }
    vm.frames().free_bulk(&f).unwrap();
}

#[test]
fn bad_unmaps_are_typed_errors() {
    let vm = vm();
    let f = frames(&vm, 8);
    let a = vm.vm_map_ram(&f[..4], None, PAGE_KERNEL).unwrap();
    let used = vm.frame_stats().used;
    assert_eq!(
        vm.vm_unmap_ram(a, 2),
        Err(VmallocError::WrongCount {
            addr: a.as_u64(),
            count: 2,
            expected: 4
        })
    );
    assert_eq!(
        vm.vm_unmap_ram(a, 8),
        Err(VmallocError::WrongCount {
            addr: a.as_u64(),
            count: 8,
            expected: 4
        })
    );
    assert_eq!(
        vm.vm_unmap_ram(a + P, 1),
        Err(VmallocError::NotStartOfArea {
            addr: (a + P).as_u64(),
            start: a.as_u64()
        })
    );
    assert_eq!(
        vm.vm_unmap_ram(a + 8 * P, 1),
        Err(VmallocError::NotAllocated {
            addr: (a + 8 * P).as_u64()
        })
    );
    assert_eq!(
        vm.vm_unmap_ram(a + 1, 4),
        Err(VmallocError::Misaligned {
            addr: a.as_u64() + 1,
            align: P
        })
    );
    assert_eq!(
        vm.vm_unmap_ram(a, 0),
        Err(VmallocError::InvalidSize { size: 0 })
    );
    let (s, _) = vm.range();
    assert_eq!(
        vm.vm_unmap_ram(s + (7 << 30), 1),
        Err(VmallocError::NotAllocated {
            addr: (s + (7 << 30)).as_u64()
        })
    );
    assert!(vm.kernel_space().translate(a).is_some(), "nothing changed");
    assert_eq!(vm.frame_stats().used, used);
    vm.vm_unmap_ram(a, 4).unwrap();
    assert_eq!(
        vm.vm_unmap_ram(a, 4),
        Err(VmallocError::DoubleFree { addr: a.as_u64() })
    );
    assert_eq!(
        vm.vm_map_ram(&[], None, PAGE_KERNEL),
        Err(VmallocError::InvalidSize { size: 0 })
    );
    // A vmalloc area is not a vm_map_ram piece.
    let v = vm.vmalloc(P).unwrap();
    assert!(matches!(
        vm.vm_unmap_ram(v, 1),
        Err(VmallocError::WrongKind { .. })
    ));
    assert!(matches!(
        vm.vm_unmap_ram(v, 100),
        Err(VmallocError::WrongKind { .. })
    ));
    vm.vfree(v).unwrap();
    vm.frames().free_bulk(&f).unwrap();
}

#[test]
fn large_requests_get_their_own_area() {
    let vm = vm();
    let n = VMAP_MAX_ALLOC + 1;
    let f = frames(&vm, n);
    let a = vm.vm_map_ram(&f, Some(0), PAGE_KERNEL).unwrap();
    assert_eq!(vm.stats().vmap_blocks, 0);
    let area = vm.kva().find(a).unwrap();
    assert_eq!(area.size(), n as u64 * P, "no guard page");
    let info = vm.vmallocinfo();
    assert!(
        info.contains(&format!(
            "0x{:016x}-0x{:016x} {:7} vm_map_ram",
            area.start,
            area.end,
            area.size()
        )),
        "{info}"
    );
    assert_eq!(
        vm.vm_unmap_ram(a, n + 1),
        Err(VmallocError::WrongCount {
            addr: a.as_u64(),
            count: n + 1,
            expected: n
        })
    );
    assert_eq!(
        vm.vm_unmap_ram(a, 3),
        Err(VmallocError::WrongCount {
            addr: a.as_u64(),
            count: 3,
            expected: n
        })
    );
    assert!(matches!(vm.vfree(a), Err(VmallocError::WrongKind { .. })));
    vm.vm_unmap_ram(a, n).unwrap();
    assert!(vm.kernel_space().translate(a).is_none());
    assert_eq!(
        vm.vm_unmap_ram(a, n),
        Err(VmallocError::DoubleFree { addr: a.as_u64() })
    );
    vm.frames().free_bulk(&f).unwrap();
}

#[test]
fn a_fully_dirty_block_goes_to_the_lazy_list() {
    let vm = vm();
    let f = frames(&vm, VMAP_MAX_ALLOC);
    let pieces: Vec<_> = (0..VMAP_BBMAP_BITS / VMAP_MAX_ALLOC)
        .map(|_| vm.vm_map_ram(&f, None, PAGE_KERNEL).unwrap())
        .collect();
    let block = pieces[0];
    assert!(
        pieces.iter().all(|p| (*p - block) < VMAP_BLOCK_SIZE),
        "one block"
    );
    assert_eq!(vm.stats().vmap_blocks, 1);
    let lazy = vm.stats().lazy_pages;
    for p in &pieces {
        vm.vm_unmap_ram(*p, VMAP_MAX_ALLOC).unwrap();
    }
    let s = vm.stats();
    assert_eq!(s.vmap_blocks, 0, "retired once all dirty");
    assert_eq!(s.lazy_pages, lazy + VMAP_BBMAP_BITS);
    assert!(!vm.vmallocinfo().contains("vm_map_ram"));
    vm.purge_vmap_area_lazy();
    assert_eq!(vm.stats().kva.used, 0);
    vm.frames().free_bulk(&f).unwrap();
}

#[test]
fn vm_unmap_aliases_leaves_no_stale_alias_with_one_flush() {
    // The main thread acts as CPU 0 whatever id the harness drew for it: its `keep` piece
    // then lives in CPU 0's block, on any CPU count.
    cpu::set_this_cpu(0);
    let vm = vm();
    let tlb = model(&vm);
    let f = frames(&vm, 8);
    // Two blocks (one per CPU slot when there are two), pieces touched from both CPUs.
    let mut pieces = Vec::new();
    for c in 0..2 {
        std::thread::scope(|s| {
            s.spawn(|| {
                cpu::set_this_cpu(c);
                for n in [1usize, 2, 4] {
                    pieces.push((vm.vm_map_ram(&f[..n], None, PAGE_KERNEL).unwrap(), n));
                }
            });
        });
    }
    let keep = vm.vm_map_ram(&f[..1], None, PAGE_KERNEL).unwrap();
    for &(p, n) in &pieces {
        touch(&vm, 0, p, n as u64);
        touch(&vm, 1, p, n as u64);
    }
    for &(p, n) in &pieces {
        vm.vm_unmap_ram(p, n).unwrap();
        assert!(
            tlb.holds_any(p, p + n as u64 * P),
            "dirty: unmapped, not flushed"
        );
    }
    vm.purge_vmap_area_lazy(); // nothing lazy left for the next step
    let flushes = vm.tlb().stats().flushes;
    vm.vm_unmap_aliases();
    for &(p, n) in &pieces {
        assert!(
            !tlb.holds_any(p, p + n as u64 * P),
            "stale alias of {p:?} left"
        );
    }
    assert_eq!(
        vm.tlb().stats().flushes,
        flushes + 1,
        "ONE flush of the union of the dirty ranges"
    );
    // Nothing dirty any more: a second call flushes nothing new.
    vm.vm_unmap_aliases();
    assert_eq!(vm.tlb().stats().flushes, flushes + 1);
    // The live piece survived, still mapped.
    assert!(vm.kernel_space().translate(keep).is_some());
    vm.vm_unmap_ram(keep, 1).unwrap();
    vm.frames().free_bulk(&f).unwrap();
}

#[test]
fn fragmented_blocks_are_retired_by_vm_unmap_aliases() {
    let vm = vm();
    let f = frames(&vm, 2);
    let a = vm.vm_map_ram(&f, None, PAGE_KERNEL).unwrap();
    vm.vm_unmap_ram(a, 2).unwrap();
    assert_eq!(vm.stats().vmap_blocks, 1, "free space left: kept");
    vm.vm_unmap_aliases();
    let s = vm.stats();
    assert_eq!((s.vmap_blocks, s.kva.used, s.lazy_pages), (0, 0, 0));
    vm.frames().free_bulk(&f).unwrap();
}

#[test]
fn blocks_are_per_cpu() {
    let vm = vm();
    if cpu::nr_cpu_ids() < 2 {
        return;
    }
    let f = frames(&vm, 1);
    let mut got = Vec::new();
    for c in 0..2 {
        std::thread::scope(|s| {
            s.spawn(|| {
                cpu::set_this_cpu(c);
                got.push(vm.vm_map_ram(&f, None, PAGE_KERNEL).unwrap());
            });
        });
    }
    assert_ne!(
        got[0].align_down(VMAP_BLOCK_SIZE),
        got[1].align_down(VMAP_BLOCK_SIZE)
    );
    assert_eq!(vm.stats().vmap_blocks, 2);
    // Freed from another CPU than the one that mapped: fine.
    for g in got {
        vm.vm_unmap_ram(g, 1).unwrap();
    }
    vm.frames().free_bulk(&f).unwrap();
}

#[test]
fn blocks_are_recycled_when_kva_runs_out() {
    // Room for exactly two blocks: fragmented blocks must be retired by the failure notifier.
    let mut c = common::cfg(8);
    c.kva = vmalloc::KvaConfig {
        shards: 1,
        pcpu_cache: false,
        purge_mode: vmalloc::PurgeMode::Synchronous,
        ..vmalloc::KvaConfig::with_range(
            vmalloc::VMALLOC_START,
            vmalloc::VMALLOC_START + 2 * VMAP_BLOCK_SIZE,
        )
    };
    let vm = Vmalloc::new(c).unwrap();
    let f = frames(&vm, VMAP_MAX_ALLOC);
    let full = VMAP_BBMAP_BITS / VMAP_MAX_ALLOC;
    // On each of two CPUs: fill a block but for 32 pages, then free everything in it (the
    // block is fragmented: no live piece, 32 pages never handed out).
    if cpu::nr_cpu_ids() < 2 {
        return;
    }
    let mut blocks = Vec::new();
    for c in 0..2 {
        std::thread::scope(|s| {
            s.spawn(|| {
                cpu::set_this_cpu(c);
                let mut here: Vec<_> = (0..full - 1)
                    .map(|_| {
                        (
                            vm.vm_map_ram(&f, None, PAGE_KERNEL).unwrap(),
                            VMAP_MAX_ALLOC,
                        )
                    })
                    .collect();
                here.push((vm.vm_map_ram(&f[..32], None, PAGE_KERNEL).unwrap(), 32));
                blocks.push(here[0].0);
                for (h, n) in here {
                    vm.vm_unmap_ram(h, n).unwrap();
                }
            });
        });
    }
    assert_ne!(blocks[0], blocks[1]);
    assert_eq!(vm.stats().vmap_blocks, 2);
    // No block has 64 free pages and the range is full: the allocation fails once, the
    // notifier retires both fragmented blocks, the purge returns their range, it succeeds.
    let a = std::thread::scope(|s| {
        s.spawn(|| {
            cpu::set_this_cpu(0);
            vm.vm_map_ram(&f, None, PAGE_KERNEL).unwrap()
        })
        .join()
        .unwrap()
    });
    assert!(blocks.contains(&a), "{a:?} reuses a purged block's range");
    assert_eq!(vm.stats().vmap_blocks, 1);
    vm.vm_unmap_ram(a, VMAP_MAX_ALLOC).unwrap();
    vm.vm_unmap_aliases();
    assert_eq!(vm.stats().kva.used, 0);
    vm.frames().free_bulk(&f).unwrap();
}

/// Seed 000: `_vm_unmap_aliases` hands its dirty range to `__purge_vmap_area_lazy(start,
/// end)`, which flushes the union of that range and every lazy area ONCE. With both a lazily
/// freed area and a dirty vmap-block range, `vm_unmap_aliases` issues exactly one flush
/// covering both (before, the purge flushed the lazy union and then the dirty range was
/// flushed again: 2 flushes), and leaves no stale translation of either.
#[test]
fn vm_unmap_aliases_flushes_lazy_areas_and_dirty_ranges_together_once() {
    cpu::set_this_cpu(0);
    let vm = vm();
    let tlb = model(&vm);
    let f = frames(&vm, 4);
    // A block with a live piece (so it is not retired) and a dirty one.
    let live = vm.vm_map_ram(&f[..1], None, PAGE_KERNEL).unwrap();
    let dirty = vm.vm_map_ram(&f[..2], None, PAGE_KERNEL).unwrap();
    touch(&vm, 0, dirty, 2);
    vm.vm_unmap_ram(dirty, 2).unwrap();
    // A vmalloc area freed lazily (far from the block).
    let lazy = vm.vmalloc(3 * P).unwrap();
    touch(&vm, 0, lazy, 3);
    vm.vfree(lazy).unwrap();
    assert!(tlb.holds_any(dirty, dirty + 2 * P) && tlb.holds_any(lazy, lazy + 3 * P));
    assert!(vm.stats().lazy_pages > 0);
    let before = vm.tlb().stats().flushes;
    vm.vm_unmap_aliases();
    assert_eq!(
        vm.tlb().stats().flushes,
        before + 1,
        "ONE flush for the lazy areas and the dirty range together"
    );
    assert!(!tlb.holds_any(dirty, dirty + 2 * P), "stale alias left");
    assert!(
        !tlb.holds_any(lazy, lazy + 3 * P),
        "stale lazy translation left"
    );
    assert_eq!(vm.stats().lazy_pages, 0);
    // Only a dirty range, nothing lazy: still exactly one flush.
    let d2 = vm.vm_map_ram(&f[..1], None, PAGE_KERNEL).unwrap();
    touch(&vm, 0, d2, 1);
    vm.vm_unmap_ram(d2, 1).unwrap();
    let before = vm.tlb().stats().flushes;
    vm.vm_unmap_aliases();
    assert_eq!(vm.tlb().stats().flushes, before + 1);
    assert!(!tlb.holds_any(d2, d2 + P));
    // Nothing dirty, nothing lazy: no flush at all.
    vm.vm_unmap_aliases();
    assert_eq!(vm.tlb().stats().flushes, before + 1);
    vm.vm_unmap_ram(live, 1).unwrap();
    vm.frames().free_bulk(&f).unwrap();
}
