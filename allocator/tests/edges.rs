//! The sharp edges a new user met, each smoothed, each with the behaviour it has now:
//! exact `vm_unmap_ram` counts, kinds named in words, `NoSpace` vs `TooLarge` with the
//! caller's size, the public leak check, the TLB's CPU count and the installed TLB on the
//! `vread`/`vwrite` path, `vfree_atomic` errors the caller can hear about, one node type,
//! internal flags refused, and seed 002's `alloc_vm_area(size, ptes)` and `vwrite`.
#![cfg(not(feature = "loom"))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::{cfg, va, vm};
use pagetable::{
    PAGE_SIZE, PageTableFlags, PhysAddr, TlbFlush, TlbModel, TlbStats, VirtAddr, Zone, cpu,
};
use vmalloc::{
    EarlyArea, Gfp, IdleError, NUMA_NO_NODE, PAGE_KERNEL, PAGE_KERNEL_IO, TlbChoice,
    VFREE_ATOMIC_ERRORS_KEPT, VmFlags, Vmalloc, VmallocConfig, VmallocError,
};

const P: u64 = PAGE_SIZE;

#[test]
fn vm_unmap_ram_wants_the_exact_count_and_says_the_real_one() {
    let vm = vm();
    let frames: Vec<_> = (0..70)
        .map(|_| vm.frames().alloc_zeroed(Zone::Normal).unwrap())
        .collect();
    // A 3-page piece (a 4-page slot of a vmap block).
    let small = vm
        .vm_map_ram(&frames[..3], NUMA_NO_NODE, PAGE_KERNEL)
        .unwrap();
    for wrong in [1usize, 2, 4, 64, 65, 100] {
        assert_eq!(
            vm.vm_unmap_ram(small, wrong),
            Err(VmallocError::WrongCount {
                addr: small.as_u64(),
                count: wrong,
                expected: 3
            }),
            "count {wrong}"
        );
    }
    // A 70-page mapping (an area of its own).
    let large = vm.vm_map_ram(&frames, NUMA_NO_NODE, PAGE_KERNEL).unwrap();
    for wrong in [3usize, 64, 69, 71] {
        assert_eq!(
            vm.vm_unmap_ram(large, wrong),
            Err(VmallocError::WrongCount {
                addr: large.as_u64(),
                count: wrong,
                expected: 70
            }),
            "count {wrong}"
        );
    }
    assert!(
        vm.kernel_space().translate(small).is_some(),
        "nothing changed"
    );
    vm.vm_unmap_ram(small, 3).unwrap();
    vm.vm_unmap_ram(large, 70).unwrap();
    vm.vm_unmap_aliases();
    vm.frames().free_bulk(&frames).unwrap();
    vm.check_idle().unwrap();
}

#[test]
fn wrong_kind_names_the_kinds_in_words() {
    let vm = vm();
    let a = vm.vmalloc(P).unwrap();
    let area = vm.find_vm_area(a).unwrap();
    let e = vm.free_vm_area(&area).unwrap_err();
    assert!(matches!(e, VmallocError::WrongKind { .. }));
    let msg = e.to_string();
    assert!(
        msg.contains("is a vmalloc area, not a reservation") && msg.ends_with("with vfree"),
        "{msg}"
    );
    assert!(!msg.contains("VmFlags"), "{msg}");
    let io = vm
        .ioremap(PhysAddr::new(0xfee0_0000), P, PAGE_KERNEL_IO)
        .unwrap();
    let msg = vm.vfree(io).unwrap_err().to_string();
    assert!(
        msg.contains("is an ioremap or alloc_vm_area area, not a vmalloc area"),
        "{msg}"
    );
    let msg = vm.vunmap(a).unwrap_err().to_string();
    assert!(msg.contains("not a vmap or vmap_pfn area"), "{msg}");
    vm.iounmap(io).unwrap();
    vm.vfree(a).unwrap();
}

#[test]
fn no_space_reports_the_callers_size_and_too_large_says_never() {
    let vm = vm();
    let (s, _) = vm.range();
    let (ws, we) = (s + (1 << 30), s + (1 << 30) + 8 * P);
    let node_range = |size: u64, end: VirtAddr| {
        vm.vmalloc_node_range(
            size,
            P,
            ws,
            end,
            Gfp::KERNEL,
            PAGE_KERNEL,
            VmFlags::empty(),
            NUMA_NO_NODE,
        )
    };
    // Two 3-page areas (+ guard pages) fill the 8-page window.
    let a = node_range(3 * P, we).unwrap();
    let b = node_range(3 * P, we).unwrap();
    let e = node_range(3 * P - 100, we).unwrap_err();
    assert_eq!(
        e,
        VmallocError::NoSpace {
            size: 3 * P - 100,
            align: P,
            start: ws.as_u64(),
            end: we.as_u64()
        },
        "the size the caller passed, not the area with its guard page"
    );
    assert!(e.to_string().contains("larger KVA range"), "{e}");
    // 8 pages + a guard page can never fit the 8-page window: TooLarge, whatever is free.
    vm.vfree(a).unwrap();
    vm.vfree(b).unwrap();
    vm.purge_vmap_area_lazy();
    let e = node_range(8 * P, we).unwrap_err();
    assert!(
        matches!(e, VmallocError::TooLarge { size, .. } if size == 8 * P),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("can never succeed") && !msg.contains("larger KVA range"),
        "{msg}"
    );
    // A reservation larger than the whole range (no frame check stops it first).
    let e = vm
        .get_vm_area(vmalloc::SMALL_KVA_BYTES, VmFlags::empty())
        .unwrap_err();
    assert!(
        matches!(e, VmallocError::TooLarge { size, .. } if size == vmalloc::SMALL_KVA_BYTES),
        "{e:?}"
    );
    vm.check_idle().unwrap();
}

#[test]
fn check_idle_finds_each_kind_of_leak() {
    let vm = vm();
    vm.check_idle().unwrap();
    // A live area, with its vmallocinfo line.
    let a = vm.vmalloc(3 * P).unwrap();
    match vm.check_idle() {
        Err(IdleError::LiveAreas { count, first, line }) => {
            assert_eq!((count, first), (1, a.as_u64()));
            assert!(line.ends_with("pages=3 vmalloc"), "{line}");
        }
        r => panic!("{r:?}"),
    }
    // Freed lazily: not a leak (the check purges).
    vm.vfree(a).unwrap();
    vm.check_idle().unwrap();
    // A mapping made behind the allocator's back.
    let f = vm.frames().alloc(Zone::Normal).unwrap();
    let (s, _) = vm.range();
    vm.kernel_space()
        .map(s + (2 << 30), &[f], PAGE_KERNEL)
        .unwrap();
    assert_eq!(
        vm.check_idle(),
        Err(IdleError::Mapped {
            addr: s.as_u64() + (2 << 30)
        })
    );
    let _ = vm
        .kernel_space()
        .unmap(s + (2 << 30), P, |_, _| {})
        .unwrap();
    // A frame not given back (the caller's own, here).
    match vm.check_idle() {
        Err(IdleError::Frames { used, expected }) => assert_eq!(used, expected + 1),
        r => panic!("{r:?}"),
    }
    vm.frames().free(f).unwrap();
    vm.check_idle().unwrap();
    // Cached thread stacks are not leaks either: the check empties the caches.
    let st = vm.alloc_thread_stack_node(NUMA_NO_NODE).unwrap();
    vm.free_thread_stack(st).unwrap();
    assert_eq!(vm.cached_thread_stacks(), 1);
    vm.check_idle().unwrap();
    assert_eq!(vm.cached_thread_stacks(), 0);
    // Early areas are part of the idle state.
    let mut c = cfg(16);
    c.early = vec![EarlyArea {
        addr: None,
        size: 4 * P,
        align: P,
        flags: VmFlags::IOREMAP,
    }];
    Vmalloc::new(c).unwrap().check_idle().unwrap();
}

#[test]
fn the_tlb_model_follows_the_configured_cpu_count() {
    let mut c = cfg(16);
    c.kva.nr_cpus = 3;
    let vm = Vmalloc::new(c).unwrap();
    let model = vm.tlb_model().unwrap();
    assert_eq!((model.nr_cpus(), vm.kva().nr_cpus()), (3, 3));
    let a = vm.vmalloc(P).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            // CPU id 4 on a 3-CPU instance: slot 1, and the model's CPU 1, as documented.
            cpu::set_this_cpu(4);
            assert_eq!(vm.vwrite(a, b"cpu four"), 8);
        });
    });
    assert!(model.cached(1, vm.kernel_space(), a).is_some());
    assert!(model.cached(0, vm.kernel_space(), a).is_none());
    assert!(model.cached(2, vm.kernel_space(), a).is_none());
    vm.vfree(a).unwrap();
}

/// A custom TLB hook that counts flushes and delegates to a model it exposes.
struct Wrapped {
    model: TlbModel,
    flushes: AtomicU64,
}

impl TlbFlush for Wrapped {
    fn flush_range(&self, start: VirtAddr, end: VirtAddr) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.model.flush_range(start, end);
    }
    fn flush_all(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.model.flush_all();
    }
    fn stats(&self) -> TlbStats {
        self.model.stats()
    }
    fn as_model(&self) -> Option<&TlbModel> {
        Some(&self.model)
    }
}

#[test]
fn vread_and_vwrite_go_through_the_installed_tlb() {
    let hook = Arc::new(Wrapped {
        model: TlbModel::new(pagetable::cpu::nr_cpu_ids()),
        flushes: AtomicU64::new(0),
    });
    let vm = Vmalloc::new(VmallocConfig {
        tlb: TlbChoice::Custom(Arc::clone(&hook) as Arc<dyn TlbFlush>),
        ..cfg(16)
    })
    .unwrap();
    assert!(vm.tlb_model().is_none(), "no built-in model");
    let a = vm.vmalloc(2 * P).unwrap();
    assert_eq!(vm.vwrite(a + P - 2, b"across"), 6);
    assert!(
        hook.model.holds_any(a, a + 2 * P),
        "the custom TLB cached it"
    );
    assert_eq!(hook.model.stats().misses, 2);
    let mut b = [0u8; 6];
    vm.vread(a + P - 2, &mut b);
    assert_eq!(&b, b"across");
    assert_eq!(hook.model.stats().hits, 2);
    vm.vfree(a).unwrap();
    vm.purge_vmap_area_lazy();
    assert_eq!(hook.flushes.load(Ordering::Relaxed), 1);
    assert!(!hook.model.holds_any(a, a + 2 * P));
    // A hook with no model: a page walk (a counting flush caches nothing).
    let vm = Vmalloc::new(VmallocConfig {
        tlb: TlbChoice::Counting,
        ..cfg(16)
    })
    .unwrap();
    let a = vm.vmalloc(P).unwrap();
    assert_eq!(vm.vwrite(a, b"walk"), 4);
    let mut b = [0u8; 4];
    vm.vread(a, &mut b);
    assert_eq!(&b, b"walk");
    vm.vfree(a).unwrap();
}

#[test]
fn failed_vfree_atomics_can_be_heard() {
    let vm = vm();
    let a = vm.vmalloc(P).unwrap();
    vm.vfree_atomic(a + 8);
    vm.vfree_atomic(va(0xffff_c900_7000_0000));
    vm.purge_vmap_area_lazy();
    let errs = vm.take_vfree_atomic_errors();
    assert_eq!(
        errs,
        vec![
            (
                a + 8,
                VmallocError::NotStartOfArea {
                    addr: a.as_u64() + 8,
                    start: a.as_u64()
                }
            ),
            (
                va(0xffff_c900_7000_0000),
                VmallocError::NotAllocated {
                    addr: 0xffff_c900_7000_0000
                }
            ),
        ]
    );
    assert!(
        vm.take_vfree_atomic_errors().is_empty(),
        "taking empties it"
    );
    // A caller that never looks: the list is bounded, the counter is not.
    for k in 0..VFREE_ATOMIC_ERRORS_KEPT as u64 + 6 {
        vm.vfree_atomic(va(0xffff_c900_7000_0000 + k * P));
    }
    vm.purge_vmap_area_lazy();
    assert_eq!(
        vm.take_vfree_atomic_errors().len(),
        VFREE_ATOMIC_ERRORS_KEPT
    );
    assert_eq!(
        vm.stats().deferred_errors,
        2 + VFREE_ATOMIC_ERRORS_KEPT as u64 + 6
    );
    vm.vfree(a).unwrap();
}

#[test]
fn every_node_argument_takes_the_same_type() {
    let vm = vm();
    let f = vm.frames().alloc_zeroed(Zone::Normal).unwrap();
    let (s, e) = vm.range();
    let a = vm.vmalloc_node(P, 1).unwrap();
    let b = vm.vmalloc_node(P, Some(1)).unwrap();
    let c = vm.vzalloc_node(P, NUMA_NO_NODE).unwrap();
    let d = vm
        .vmalloc_node_range(P, P, s, e, Gfp::KERNEL, PAGE_KERNEL, VmFlags::empty(), 0)
        .unwrap();
    let m = vm.vm_map_ram(&[f], 1, PAGE_KERNEL).unwrap();
    let st = vm.alloc_thread_stack_node(Some(0)).unwrap();
    for x in [a, b, c, d] {
        vm.vfree(x).unwrap();
    }
    vm.vm_unmap_ram(m, 1).unwrap();
    vm.free_thread_stack(st).unwrap();
    vm.frames().free(f).unwrap();
    vm.check_idle().unwrap();
}

#[test]
fn flags_only_the_library_sets_are_refused() {
    let vm = vm();
    let (s, e) = vm.range();
    let f = vm.frames().alloc_zeroed(Zone::Normal).unwrap();
    let before = vm.vmallocinfo();
    for flag in VmFlags::INTERNAL.iter() {
        let want = VmallocError::InvalidFlags { flags: flag };
        let r = vm.vmalloc_node_range(P, P, s, e, Gfp::KERNEL, PAGE_KERNEL, flag, None);
        assert_eq!(r, Err(want.clone()), "vmalloc_node_range {flag:?}");
        assert_eq!(
            vm.vmap(&[f], flag, PAGE_KERNEL),
            Err(want.clone()),
            "vmap {flag:?}"
        );
        assert_eq!(vm.get_vm_area(P, flag), Err(want), "get_vm_area {flag:?}");
        let mut c = cfg(4);
        c.early = vec![EarlyArea {
            addr: None,
            size: P,
            align: P,
            flags: flag,
        }];
        assert!(
            matches!(Vmalloc::new(c), Err(VmallocError::InvalidFlags { flags }) if flags == flag),
            "early {flag:?}"
        );
    }
    // What vmallocinfo prints is the library's to decide: nothing changed.
    assert_eq!(vm.vmallocinfo(), before);
    // VPAGES appears when the library sets it: a page array larger than a page.
    let big = vm.vmalloc(513 * P).unwrap();
    assert!(vm.vmallocinfo().contains("pages=513 vmalloc vpages"));
    let small = vm.vmalloc(512 * P).unwrap();
    let line = vmalloc::vmallocinfo_line(&vm.find_vm_area(small).unwrap());
    assert!(line.ends_with("pages=512 vmalloc"), "{line}");
    vm.vfree(big).unwrap();
    vm.vfree(small).unwrap();
    vm.frames().free(f).unwrap();
}

#[test]
fn alloc_vm_area_hands_back_the_pte_slots() {
    let vm = vm();
    let mut ptes = Vec::new();
    let area = vm.alloc_vm_area(3 * P, Some(&mut ptes)).unwrap();
    assert_eq!(ptes.len(), 3);
    for (k, slot) in ptes.iter().enumerate() {
        assert_eq!(
            Some(*slot),
            vm.kernel_space().pte_slot(va(area.start + k as u64 * P))
        );
    }
    // Writing a slot maps the page (Xen's grant-table use of the seed's `ptes`).
    let f = vm.frames().alloc_zeroed(Zone::Normal).unwrap();
    let pte = f.start_address().as_u64() | PAGE_KERNEL.bits();
    vm.frames()
        .arena()
        .write(ptes[1], &pte.to_ne_bytes())
        .unwrap();
    assert_eq!(
        vm.kernel_space().translate(va(area.start + P)).unwrap().pa,
        f.start_address()
    );
    // free_vm_area unmaps what the caller mapped; the frame stays the caller's.
    vm.free_vm_area(&area).unwrap();
    assert!(vm.kernel_space().translate(va(area.start + P)).is_none());
    assert_eq!(vm.frames().refcount(f), 1);
    vm.frames().free(f).unwrap();
    // Without `ptes`, as before.
    let area = vm.alloc_vm_area(P, None).unwrap();
    vm.free_vm_area(&area).unwrap();
    vm.check_idle().unwrap();
}

#[test]
fn vwrite_follows_seed_002() {
    let vm = vm();
    let io = vm
        .ioremap(PhysAddr::new(0xfed0_0000), P, PAGE_KERNEL_IO)
        .unwrap();
    // Only an ioremap area in the range: nothing copied, 0.
    assert_eq!(vm.vwrite(io, &[1; 16]), 0);
    let mut b = [7u8; 16];
    assert_eq!(vm.vread(io, &mut b), 16, "vread counts it, as a hole");
    assert_eq!(b, [0; 16]);
    // An ioremap area and a vmalloc area in the range: the full length.
    let a = vm.vmalloc(P).unwrap();
    let lo = io.as_u64().min(a.as_u64());
    let hi = io.as_u64().max(a.as_u64()) + P;
    let data = vec![5u8; (hi - lo) as usize];
    assert_eq!(vm.vwrite(va(lo), &data), data.len());
    let mut one = [0u8];
    vm.vread(a, &mut one);
    assert_eq!(one[0], 5);
    // A read-only page is written (through its frame), the mapping stays read-only.
    let (s, e) = vm.range();
    let ro = vm
        .vmalloc_node_range(
            P,
            P,
            s,
            e,
            Gfp::ZERO,
            vmalloc::PAGE_KERNEL_RO,
            VmFlags::empty(),
            None,
        )
        .unwrap();
    assert_eq!(vm.vwrite(ro, b"ro"), 2);
    let mut b = [0u8; 2];
    vm.vread(ro, &mut b);
    assert_eq!(&b, b"ro");
    let t = vm.kernel_space().translate(ro).unwrap();
    assert!(!t.flags.contains(PageTableFlags::WRITABLE));
    vm.vfree(ro).unwrap();
    vm.vfree(a).unwrap();
    vm.iounmap(io).unwrap();
}
