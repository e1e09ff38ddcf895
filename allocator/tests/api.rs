//! The vmalloc API, call by call, errors included.
#![cfg(not(feature = "loom"))]

mod common;

use common::{cfg, model, va, vm};
use pagetable::{PAGE_SIZE, PageTableFlags, PhysAddr, Zone};
use vmalloc::{
    EarlyArea, Gfp, KvaConfig, PAGE_KERNEL, PAGE_KERNEL_RO, PurgeMode, TlbChoice, VmFlags, Vmalloc,
    VmallocConfig, VmallocError,
};

const P: u64 = PAGE_SIZE;

#[test]
fn vmalloc_maps_pages_with_a_guard_and_records_the_caller() {
    let vm = vm();
    let line = line!() + 1;
    let a = vm.vmalloc(3 * P - 5).unwrap();
    let area = vm.find_vm_area(a).unwrap();
    assert_eq!(area.start, a.as_u64());
    assert_eq!(area.size(), 4 * P, "3 pages + guard");
    assert_eq!(area.info.nr_pages, 3);
    assert!(area.info.flags.contains(VmFlags::ALLOC));
    assert!(area.info.caller.file().ends_with("api.rs"));
    assert_eq!(area.info.caller.line(), line);
    for i in 0..3 {
        let t = vm.kernel_space().translate(a + i * P).unwrap();
        assert_eq!(t.flags & PAGE_KERNEL, PAGE_KERNEL);
    }
    assert!(
        vm.kernel_space().translate(a + 3 * P).is_none(),
        "guard page is mapped"
    );
    // Two allocations never touch: the guard page separates them.
    let b = vm.vmalloc(P).unwrap();
    let other = vm.find_vm_area(b).unwrap();
    assert!(other.start >= area.end || other.end <= area.start);
    vm.vfree(a).unwrap();
    vm.vfree(b).unwrap();
}

#[test]
fn vzalloc_and_vmalloc_user_zero_recycled_frames() {
    let vm = vm();
    // Dirty some frames, free them: they go back to this CPU's frame cache.
    let a = vm.vmalloc(4 * P).unwrap();
    assert_eq!(vm.vwrite(a, &vec![0xa5; 4 * P as usize]), 4 * P as usize);
    vm.vfree(a).unwrap();
    let z = vm.vzalloc(4 * P).unwrap();
    let mut buf = vec![1u8; 4 * P as usize];
    assert_eq!(vm.vread(z, &mut buf), buf.len());
    assert!(buf.iter().all(|&b| b == 0));
    vm.vwrite(z, &vec![0x5a; 4 * P as usize]);
    vm.vfree(z).unwrap();
    let u = vm.vmalloc_user(4 * P).unwrap();
    vm.vread(u, &mut buf);
    assert!(buf.iter().all(|&b| b == 0));
    assert!(
        vm.find_vm_area(u)
            .unwrap()
            .info
            .flags
            .contains(VmFlags::USERMAP)
    );
    vm.vfree(u).unwrap();
}

#[test]
fn vmalloc_32_takes_frames_below_4g() {
    // An arena straddling 4 GiB: 2 MiB below, 6 MiB above.
    let mut c = cfg(8);
    c.arena.base = PhysAddr::new((1 << 32) - (2 << 20));
    let vm = Vmalloc::new(c).unwrap();
    let low = vm.vmalloc_32(8 * P).unwrap();
    let low_user = vm.vmalloc_32_user(2 * P).unwrap();
    let high = vm.vmalloc(8 * P).unwrap();
    let pa = |a: pagetable::VirtAddr| vm.kernel_space().translate(a).unwrap().pa.as_u64();
    for i in 0..8 {
        assert!(pa(low + i * P) < 1 << 32);
        assert!(pa(high + i * P) >= 1 << 32, "Normal prefers high frames");
    }
    assert!(pa(low_user) < 1 << 32);
    let f = vm.find_vm_area(low_user).unwrap().info.flags;
    assert!(f.contains(VmFlags::DMA32 | VmFlags::USERMAP));
    for a in [low, low_user, high] {
        vm.vfree(a).unwrap();
    }
}

#[test]
fn vmalloc_exec_is_executable() {
    let vm = vm();
    let x = vm.vmalloc_exec(P).unwrap();
    let t = vm.kernel_space().translate(x).unwrap();
    assert!(!t.flags.contains(PageTableFlags::NO_EXECUTE));
    assert!(
        vm.find_vm_area(x)
            .unwrap()
            .info
            .flags
            .contains(VmFlags::EXEC)
    );
    let n = vm.vmalloc(P).unwrap();
    assert!(
        vm.kernel_space()
            .translate(n)
            .unwrap()
            .flags
            .contains(PageTableFlags::NO_EXECUTE)
    );
    vm.vfree(x).unwrap();
    vm.vfree(n).unwrap();
}

#[test]
fn node_hint_selects_the_shard() {
    let mut c = cfg(16);
    c.kva.shards = 4;
    let vm = Vmalloc::new(c).unwrap();
    let (s, e) = vm.range();
    let shard = (e - s) / 4;
    for node in 0..4u64 {
        let a = vm.vmalloc_node(2 * P, node as usize).unwrap();
        let z = vm.vzalloc_node(100 * P, node as usize).unwrap();
        for x in [a, z] {
            assert_eq!((x - s) / shard, node, "node {node} got {x:?}");
        }
        vm.vfree(a).unwrap();
        vm.vfree(z).unwrap();
    }
}

#[test]
fn node_range_honours_align_window_flags_and_prot() {
    let vm = vm();
    let (s, e) = vm.range();
    let align = 2 << 20;
    let a = vm
        .vmalloc_node_range(
            5 * P,
            align,
            s,
            e,
            Gfp::ZERO,
            PAGE_KERNEL,
            VmFlags::empty(),
            None,
        )
        .unwrap();
    assert_eq!(a.as_u64() % align, 0);
    // A window in the middle of the range.
    let (ws, we) = (s + (1 << 30), s + (1 << 30) + 64 * P);
    let w = vm
        .vmalloc_node_range(
            8 * P,
            P,
            ws,
            we,
            Gfp::KERNEL,
            PAGE_KERNEL,
            VmFlags::empty(),
            Some(0),
        )
        .unwrap();
    assert!(w >= ws && w + 9 * P <= we);
    // No guard page.
    let ng = vm
        .vmalloc_node_range(
            2 * P,
            P,
            s,
            e,
            Gfp::KERNEL,
            PAGE_KERNEL,
            VmFlags::NO_GUARD,
            None,
        )
        .unwrap();
    assert_eq!(vm.find_vm_area(ng).unwrap().size(), 2 * P);
    // Read-only pages: vwrite writes them through the frame, as seed 002 (3.7) does.
    let ro = vm
        .vmalloc_node_range(
            P,
            P,
            s,
            e,
            Gfp::ZERO,
            PAGE_KERNEL_RO,
            VmFlags::empty(),
            None,
        )
        .unwrap();
    assert!(
        !vm.kernel_space()
            .translate(ro)
            .unwrap()
            .flags
            .contains(PageTableFlags::WRITABLE)
    );
    assert_eq!(vm.vwrite(ro, &[7; 16]), 16);
    let mut b = [9u8; 16];
    vm.vread(ro, &mut b);
    assert_eq!(b, [7; 16]);
    assert!(
        !vm.kernel_space()
            .translate(ro)
            .unwrap()
            .flags
            .contains(PageTableFlags::WRITABLE),
        "the mapping stays read-only"
    );
    // Errors.
    let bad_align = vm.vmalloc_node_range(
        P,
        3 * P,
        s,
        e,
        Gfp::KERNEL,
        PAGE_KERNEL,
        VmFlags::empty(),
        None,
    );
    assert_eq!(bad_align, Err(VmallocError::InvalidAlign { align: 3 * P }));
    let tiny = vm.vmalloc_node_range(
        4 * P,
        P,
        ws,
        ws + 2 * P,
        Gfp::KERNEL,
        PAGE_KERNEL,
        VmFlags::empty(),
        None,
    );
    // A window that could never hold 4 pages + a guard page: TooLarge with the caller's size.
    assert_eq!(
        tiny,
        Err(VmallocError::TooLarge {
            size: 4 * P,
            align: P,
            start: ws.as_u64(),
            end: ws.as_u64() + 2 * P
        })
    );
    let bad_flags = vm.vmalloc_node_range(P, P, s, e, Gfp::KERNEL, PAGE_KERNEL, VmFlags::MAP, None);
    assert_eq!(
        bad_flags,
        Err(VmallocError::InvalidFlags {
            flags: VmFlags::MAP
        })
    );
    for x in [a, w, ng, ro] {
        vm.vfree(x).unwrap();
    }
}

#[test]
fn size_errors() {
    let vm = vm();
    assert_eq!(vm.vmalloc(0), Err(VmallocError::InvalidSize { size: 0 }));
    assert!(matches!(
        vm.vmalloc(u64::MAX),
        Err(VmallocError::InvalidSize { .. })
    ));
    // Larger than the arena: the frame allocator refuses, nothing leaks.
    let before = vm.frame_stats().used;
    let r = vm.vmalloc(64 << 20);
    assert!(
        matches!(r, Err(VmallocError::OutOfMemory { size, .. }) if size == 64 << 20),
        "{r:?}"
    );
    vm.purge_vmap_area_lazy();
    assert_eq!(vm.frame_stats().used, before);
    assert_eq!(vm.stats().nr_areas, 0);
}

#[test]
fn vfree_errors_change_nothing() {
    let vm = vm();
    let a = vm.vmalloc(2 * P).unwrap();
    vm.vwrite(a, b"keep");
    let before = vm.stats();
    assert_eq!(vm.vfree(pagetable::VirtAddr::zero()), Ok(()));
    assert_eq!(
        vm.vfree(a + P),
        Err(VmallocError::NotStartOfArea {
            addr: (a + P).as_u64(),
            start: a.as_u64()
        })
    );
    assert_eq!(
        vm.vfree(a + 2 * P),
        Err(VmallocError::NotStartOfArea {
            addr: (a + 2 * P).as_u64(),
            start: a.as_u64()
        })
    );
    let (s, _) = vm.range();
    let wild = s + (5 << 30);
    assert_eq!(
        vm.vfree(wild),
        Err(VmallocError::NotAllocated {
            addr: wild.as_u64()
        })
    );
    assert_eq!(
        vm.vfree(va(0x1000)),
        Err(VmallocError::NotAllocated { addr: 0x1000 })
    );
    let after = vm.stats();
    assert_eq!(
        (after.nr_areas, after.frames_used, after.lazy_pages),
        (before.nr_areas, before.frames_used, before.lazy_pages)
    );
    let mut b = [0u8; 4];
    vm.vread(a, &mut b);
    assert_eq!(&b, b"keep");
    vm.vfree(a).unwrap();
    assert_eq!(
        vm.vfree(a),
        Err(VmallocError::DoubleFree { addr: a.as_u64() })
    );
    vm.purge_vmap_area_lazy();
    assert_eq!(
        vm.vfree(a),
        Err(VmallocError::NotAllocated { addr: a.as_u64() })
    );
}

#[test]
fn vfree_of_other_kinds_is_wrong_kind() {
    let vm = vm();
    let f = vm.frames().alloc_zeroed(Zone::Normal).unwrap();
    let m = vm.vmap(&[f], VmFlags::empty(), PAGE_KERNEL).unwrap();
    let io = vm
        .ioremap(PhysAddr::new(0xfee0_0000), P, vmalloc::PAGE_KERNEL_IO)
        .unwrap();
    let r = vm.vm_map_ram(&[f], None, PAGE_KERNEL).unwrap();
    let g = vm.get_vm_area(P, VmFlags::empty()).unwrap();
    for x in [m, io, r, va(g.start)] {
        match vm.vfree(x) {
            Err(VmallocError::WrongKind { expected, .. }) => assert_eq!(expected, VmFlags::ALLOC),
            other => panic!("vfree({x:?}) = {other:?}"),
        }
    }
    // Still all there.
    assert!(vm.kernel_space().translate(m).is_some());
    assert!(vm.kernel_space().translate(io).is_some());
    assert!(vm.kernel_space().translate(r).is_some());
    vm.vunmap(m).unwrap();
    vm.iounmap(io).unwrap();
    vm.vm_unmap_ram(r, 1).unwrap();
    vm.free_vm_area(&g).unwrap();
    vm.frames().free(f).unwrap();
}

#[test]
fn vfree_is_lazy_and_purge_flushes_once() {
    let vm = vm();
    let flushes = vm.tlb().stats().flushes;
    let areas: Vec<_> = (0..20).map(|_| vm.vmalloc(P).unwrap()).collect();
    for &a in &areas {
        vm.vwrite(a, &[1; 8]);
    }
    for &a in &areas {
        vm.vfree(a).unwrap();
        assert!(
            vm.kernel_space().translate(a).is_none(),
            "PTEs are cleared at once"
        );
    }
    assert_eq!(vm.tlb().stats().flushes, flushes, "vfree must not flush");
    assert_eq!(vm.stats().lazy_pages, 40, "20 areas of 1 page + guard");
    let first = areas[0];
    assert!(
        model(&vm).holds_any(first, first + P),
        "the stale entry is still cached"
    );
    let report = vm.purge_vmap_area_lazy();
    assert_eq!(report.areas, 20);
    assert_eq!(
        vm.tlb().stats().flushes,
        flushes + 1,
        "one flush for the whole batch"
    );
    assert!(!model(&vm).holds_any(first, first + 40 * P));
    assert_eq!(vm.stats().lazy_pages, 0);
}

#[test]
fn vfree_atomic_is_deferred_until_drained() {
    let vm = vm();
    let used = vm.frame_stats().used;
    let a = vm.vmalloc(2 * P).unwrap();
    vm.vfree_atomic(a);
    assert!(vm.find_vm_area(a).is_some(), "deferred: still live");
    vm.vfree_atomic(pagetable::VirtAddr::zero());
    vm.vfree_atomic(a + P); // a bad address: counted when run
    vm.purge_vmap_area_lazy();
    assert!(vm.find_vm_area(a).is_none());
    assert!(vm.kernel_space().translate(a).is_none());
    let s = vm.stats();
    assert_eq!(s.deferred_errors, 1);
    assert!(
        s.frames_used <= used + 3,
        "data frames back (page tables stay)"
    );
}

#[test]
fn vfree_atomic_with_background_workers() {
    let mut c = cfg(16);
    c.kva.purge_mode = PurgeMode::Background;
    c.kva.purge_workers = 1;
    let vm = Vmalloc::new(c).unwrap();
    let areas: Vec<_> = (0..50).map(|_| vm.vmalloc(P).unwrap()).collect();
    for a in areas {
        vm.vfree_atomic(a);
    }
    // A worker (or this purge) runs them; dropping the instance afterwards must not hang.
    vm.purge_vmap_area_lazy();
    assert_eq!(vm.stats().nr_areas, 0);
    let last = vm.vmalloc(P).unwrap();
    vm.vfree_atomic(last);
    drop(vm);
}

#[test]
fn vmap_maps_caller_frames_and_vunmap_keeps_them() {
    let vm = vm();
    let frames: Vec<_> = (0..3)
        .map(|_| vm.frames().alloc_zeroed(Zone::Normal).unwrap())
        .collect();
    let arena = vm.frames().arena();
    arena
        .write(frames[1].start_address(), b"frame one")
        .unwrap();
    let m = vm.vmap(&frames, VmFlags::empty(), PAGE_KERNEL).unwrap();
    let area = vm.find_vm_area(m).unwrap();
    // Linux 6.x records no page count for vmap (only with VM_MAP_PUT_PAGES).
    assert_eq!((area.size(), area.info.nr_pages), (4 * P, 0));
    assert!(area.info.flags.contains(VmFlags::MAP));
    let mut b = [0u8; 9];
    assert_eq!(vm.vread(m + P, &mut b), 9);
    assert_eq!(&b, b"frame one");
    vm.vunmap(m).unwrap();
    assert!(vm.kernel_space().translate(m).is_none());
    for f in &frames {
        assert_eq!(
            vm.frames().refcount(*f),
            1,
            "vunmap must not free caller frames"
        );
    }
    assert_eq!(
        vm.vunmap(m),
        Err(VmallocError::DoubleFree { addr: m.as_u64() })
    );
    assert_eq!(vm.vunmap(pagetable::VirtAddr::zero()), Ok(()));
    // Errors.
    assert_eq!(
        vm.vmap(&[], VmFlags::empty(), PAGE_KERNEL),
        Err(VmallocError::InvalidSize { size: 0 })
    );
    let foreign = pagetable::PhysFrame::containing_address(PhysAddr::new(1 << 40));
    assert!(matches!(
        vm.vmap(&[foreign], VmFlags::empty(), PAGE_KERNEL),
        Err(VmallocError::Frame(_))
    ));
    assert_eq!(
        vm.vmap(&frames, VmFlags::ALLOC, PAGE_KERNEL),
        Err(VmallocError::InvalidFlags {
            flags: VmFlags::ALLOC
        })
    );
    let v = vm.vmalloc(P).unwrap();
    assert!(matches!(vm.vunmap(v), Err(VmallocError::WrongKind { .. })));
    vm.vfree(v).unwrap();
    vm.frames().free_bulk(&frames).unwrap();
}

#[test]
fn reservations_get_alloc_free_find() {
    let vm = vm();
    let g = vm.get_vm_area(3 * P + 1, VmFlags::empty()).unwrap();
    assert_eq!(g.size(), 5 * P, "4 pages + guard");
    assert_eq!(vm.kernel_space().mappings(va(g.start), g.size()).count(), 0);
    assert_eq!(
        vm.find_vm_area(va(g.start + 2 * P)).map(|a| a.start),
        Some(g.start)
    );
    assert_eq!(
        vm.find_vm_area(va(g.end - 1)).map(|a| a.start),
        Some(g.start),
        "guard included"
    );
    assert!(vm.get_vm_area(P, VmFlags::ALLOC).is_err());
    assert!(vm.get_vm_area(0, VmFlags::empty()).is_err());

    // alloc_vm_area: page tables exist, nothing mapped: mapping there allocates no frame.
    let r = vm.alloc_vm_area(8 * P, None).unwrap();
    assert!(r.info.flags.contains(VmFlags::IOREMAP));
    let f = vm.frames().alloc(Zone::Normal).unwrap();
    let used = vm.frame_stats().used;
    vm.kernel_space()
        .map(va(r.start + 7 * P), &[f], PAGE_KERNEL)
        .unwrap();
    assert_eq!(vm.frame_stats().used, used, "page tables were preallocated");
    // free_vm_area unmaps but does not free the caller's frame.
    vm.free_vm_area(&r).unwrap();
    assert!(vm.kernel_space().translate(va(r.start + 7 * P)).is_none());
    assert_eq!(vm.frames().refcount(f), 1);
    vm.frames().free(f).unwrap();
    vm.free_vm_area(&g).unwrap();
    assert_eq!(
        vm.free_vm_area(&g),
        Err(VmallocError::DoubleFree { addr: g.start })
    );
    let a = vm.vmalloc(P).unwrap();
    let area = vm.find_vm_area(a).unwrap();
    assert!(matches!(
        vm.free_vm_area(&area),
        Err(VmallocError::WrongKind { .. })
    ));
    vm.vfree(a).unwrap();
    assert_eq!(vm.find_vm_area(a), None);
}

#[test]
fn vmallocinfo_lists_every_kind_in_order() {
    let vm = vm();
    let line = line!() + 1;
    let a = vm.vmalloc(2 * P).unwrap();
    let u = vm.vmalloc_user(P).unwrap();
    let io = vm
        .ioremap(PhysAddr::new(0xfee0_0000), P, vmalloc::PAGE_KERNEL_IO)
        .unwrap();
    let f = vm.frames().alloc(Zone::Normal).unwrap();
    let m = vm.vmap(&[f], VmFlags::empty(), PAGE_KERNEL).unwrap();
    let r = vm.vm_map_ram(&[f], None, PAGE_KERNEL).unwrap();
    let info = vm.vmallocinfo();
    let lines: Vec<&str> = info.lines().collect();
    assert_eq!(lines.len(), 5, "{info}");
    let starts: Vec<u64> = lines
        .iter()
        .map(|l| u64::from_str_radix(&l[2..18], 16).unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] < w[1]), "ascending: {info}");
    let find = |x: pagetable::VirtAddr| {
        *lines
            .iter()
            .find(|l| l.starts_with(&format!("0x{:016x}", x.as_u64() & !(P - 1))))
            .unwrap()
    };
    let la = find(a);
    assert_eq!(
        la,
        format!(
            "0x{:016x}-0x{:016x}   12288 {}:{} pages=2 vmalloc",
            a.as_u64(),
            a.as_u64() + 3 * P,
            file!(),
            line
        )
    );
    assert!(find(u).ends_with(" pages=1 vmalloc user"), "{}", find(u));
    assert!(
        find(io).ends_with(" phys=0x00000000fee00000 ioremap"),
        "{}",
        find(io)
    );
    assert!(
        find(m).ends_with(" vmap") && !find(m).contains("pages="),
        "{}",
        find(m)
    );
    let block = lines.iter().find(|l| l.ends_with("vm_map_ram")).unwrap();
    assert!(
        block.contains(&format!("{:7}", vmalloc::VMAP_BLOCK_SIZE)),
        "{block}"
    );
    let _ = r;
}

#[test]
fn stats_follow_meminfo() {
    let vm = vm();
    let s0 = vm.stats();
    assert_eq!(s0.vmalloc_total_kb, (vmalloc::SMALL_KVA_BYTES - 1) >> 10);
    let a = vm.vmalloc(10 * P).unwrap();
    let s = vm.stats();
    assert_eq!(s.vmalloc_used_kb, 40);
    assert_eq!(s.nr_areas, 1);
    assert_eq!(s.area_bytes, 11 * P);
    assert!(s.frames_used >= s0.frames_used + 10);
    let text = s.to_string();
    assert!(
        text.contains("VmallocTotal:") && text.contains("VmallocUsed:          40 kB"),
        "{text}"
    );
    vm.vfree(a).unwrap();
    assert_eq!(vm.stats().lazy_pages, 11);
    vm.purge_vmap_area_lazy();
    let s = vm.stats();
    assert_eq!((s.vmalloc_used_kb, s.lazy_pages, s.purges), (0, 0, 1));
    assert_eq!(s.kva.used, 0);
}

#[test]
fn user_spaces_see_new_kernel_mappings_without_sync() {
    let vm = vm();
    let user = vm.new_user_space().unwrap();
    // Mapped AFTER the user space was created.
    let a = vm.vmalloc(P).unwrap();
    vm.vwrite(a, b"shared kernel half");
    let t = user.translate(a).expect("visible through the user space");
    assert_eq!(t.pa, vm.kernel_space().translate(a).unwrap().pa);
    let mut b = [0u8; 18];
    model(&vm)
        .read(1 % model(&vm).nr_cpus(), &user, a, &mut b)
        .unwrap();
    assert_eq!(&b, b"shared kernel half");
    vm.vfree(a).unwrap();
    assert!(user.translate(a).is_none());
}

#[test]
fn allocation_failure_purges_and_retries() {
    // A 32-page range: 8 areas of 3 pages + guard fill it.
    let mut c = cfg(4);
    c.kva = KvaConfig {
        shards: 1,
        pcpu_cache: false,
        ..KvaConfig::with_range(0xffff_c900_0000_0000, 0xffff_c900_0000_0000 + 32 * P)
    };
    c.kva.purge_mode = PurgeMode::Synchronous;
    let vm = Vmalloc::new(c).unwrap();
    let areas: Vec<_> = (0..8).map(|_| vm.vmalloc(3 * P).unwrap()).collect();
    assert!(matches!(vm.vmalloc(P), Err(VmallocError::NoSpace { .. })));
    vm.vfree(areas[3]).unwrap();
    // Only lazily free: the allocation purges synchronously and retries.
    let flushes = vm.tlb().stats().flushes;
    let again = vm.vmalloc(3 * P).unwrap();
    assert_eq!(again, areas[3]);
    assert_eq!(vm.tlb().stats().flushes, flushes + 1);
}

#[test]
fn early_areas_appear_in_vmallocinfo() {
    let (s, _) = (vmalloc::VMALLOC_START, 0);
    let c = VmallocConfig {
        early: vec![EarlyArea {
            addr: Some(s + (2 << 30)),
            size: 4 * P,
            align: 0,
            flags: VmFlags::IOREMAP,
        }],
        ..cfg(4)
    };
    let vm = Vmalloc::new(c).unwrap();
    let e = vm.early_areas()[0];
    assert!(
        vm.vmallocinfo()
            .contains(&format!("0x{:016x}-0x{:016x}   16384", e.start, e.end))
    );
    assert!(matches!(
        vm.vmalloc_node_range(
            P,
            P,
            va(e.start),
            va(e.end),
            Gfp::KERNEL,
            PAGE_KERNEL,
            VmFlags::empty(),
            None
        ),
        Err(VmallocError::NoSpace { .. })
    ));
    vm.free_vm_area(&e).unwrap();
    vm.purge_vmap_area_lazy();
    assert!(vm.vmallocinfo().is_empty());
}

#[test]
fn counting_tlb_still_works() {
    let vm = Vmalloc::new(VmallocConfig {
        tlb: TlbChoice::Counting,
        ..cfg(4)
    })
    .unwrap();
    let a = vm.vmalloc(2 * P).unwrap();
    assert_eq!(vm.vwrite(a + 10, b"walked"), 6);
    let mut b = [0u8; 6];
    assert_eq!(vm.vread(a + 10, &mut b), 6);
    assert_eq!(&b, b"walked");
    vm.vfree(a).unwrap();
    vm.purge_vmap_area_lazy();
    assert_eq!(vm.tlb().stats().flushes, 1);
}

#[test]
fn default_config_is_x86_64_over_an_mmap_arena() {
    let vm = Vmalloc::new(VmallocConfig::default()).unwrap();
    let (s, e) = vm.range();
    assert_eq!(
        (s.as_u64(), e.as_u64()),
        (0xffff_c900_0000_0000, 0xffff_e900_0000_0000)
    );
    // What every x86_64 machine's /proc/meminfo says (VMALLOC_END is inclusive).
    assert_eq!(vm.stats().vmalloc_total_kb, 34_359_738_367);
    assert!(
        vm.meminfo()
            .starts_with("VmallocTotal:   34359738367 kB\nVmallocUsed:           0 kB\n"),
        "{}",
        vm.meminfo()
    );
    assert_eq!(vm.frames().arena().size(), 8 << 30);
    let low = vm.vmalloc_32(P).unwrap();
    let high = vm.vzalloc(P).unwrap();
    let pa = |a| vm.kernel_space().translate(a).unwrap().pa.as_u64();
    assert!(pa(low) < 1 << 32);
    assert!(pa(high) >= 1 << 32);
    // A user space shares the preallocated kernel half of the whole 32 TiB range.
    let user = vm.new_user_space().unwrap();
    let late = vm.vmalloc_node(P, 1).unwrap();
    assert!(user.translate(late).is_some());
    for a in [low, high, late] {
        vm.vfree(a).unwrap();
    }
}
