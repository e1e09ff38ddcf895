//! The small calls every caller uses (`vmalloc_to_page` / `vmalloc_to_pfn`,
//! `is_vmalloc_addr`, `vmalloc_array` / `vcalloc`, `vmap_pfn`,
//! `remap_vmalloc_range_partial`, the `/proc/meminfo` lines), and `/proc/vmallocinfo`
//! checked line by line against Linux 6.x's grammar.
#![cfg(not(feature = "loom"))]

mod common;

use common::{cfg, va, vm};
use pagetable::{PAGE_SIZE, PageTableFlags, PhysAddr, PhysFrame, Zone};
use vmalloc::{
    EarlyArea, NUMA_NO_NODE, PAGE_KERNEL, PAGE_KERNEL_IO, VmFlags, Vmalloc, VmallocError,
};

const P: u64 = PAGE_SIZE;

#[test]
fn vmalloc_to_page_and_pfn_walk_the_tables() {
    let vm = vm();
    let a = vm.vmalloc(3 * P).unwrap();
    let t = vm.kernel_space().translate(a + P).unwrap();
    let page = vm.vmalloc_to_page(a + P + 123).unwrap();
    assert_eq!(page, PhysFrame::containing_address(t.pa));
    assert_eq!(vm.vmalloc_to_pfn(a + P), Some(page.number()));
    // The guard page, an address outside the range, a freed area: nothing.
    assert_eq!(vm.vmalloc_to_page(a + 3 * P), None);
    assert_eq!(vm.vmalloc_to_page(va(0xffff_8000_0000_0000)), None);
    vm.vfree(a).unwrap();
    assert_eq!(vm.vmalloc_to_pfn(a), None);
}

#[test]
fn is_vmalloc_addr_is_the_range() {
    let vm = vm();
    let (s, e) = vm.range();
    assert!(vm.is_vmalloc_addr(s));
    assert!(vm.is_vmalloc_addr(e - 1));
    assert!(!vm.is_vmalloc_addr(e));
    assert!(!vm.is_vmalloc_addr(s - 1));
    assert!(!vm.is_vmalloc_addr(va(0x1000)));
}

#[test]
fn vmalloc_array_and_vcalloc_check_the_product() {
    let vm = vm();
    let a = vm.vmalloc_array(10, 1000).unwrap();
    assert_eq!(vm.find_vm_area(a).unwrap().info.nr_pages, 3);
    vm.vwrite(a, &[0xff; 64]);
    vm.vfree(a).unwrap();
    vm.purge_vmap_area_lazy();
    let z = vm.vcalloc(3, P).unwrap();
    let mut b = vec![1u8; 3 * P as usize];
    vm.vread(z, &mut b);
    assert!(b.iter().all(|&x| x == 0), "vcalloc zeroes");
    let before = vm.stats();
    assert_eq!(
        vm.vmalloc_array(u64::MAX, 2),
        Err(VmallocError::SizeOverflow {
            n: u64::MAX,
            size: 2
        })
    );
    assert_eq!(
        vm.vcalloc(1 << 33, 1 << 31),
        Err(VmallocError::SizeOverflow {
            n: 1 << 33,
            size: 1 << 31
        })
    );
    assert_eq!(vm.vcalloc(0, 8), Err(VmallocError::InvalidSize { size: 0 }));
    assert_eq!(vm.stats().nr_areas, before.nr_areas);
    vm.vfree(z).unwrap();
    vm.check_idle().unwrap();
}

#[test]
fn vmap_pfn_maps_frame_numbers_as_an_ioremap_area() {
    let vm = vm();
    // Device memory far above the arena, and one RAM frame of the caller's.
    let ram = vm.frames().alloc_zeroed(Zone::Normal).unwrap();
    vm.frames()
        .arena()
        .write(ram.start_address(), b"ram")
        .unwrap();
    let pfns = [0xfe_d00, ram.number(), 0xfe_d01];
    let a = vm.vmap_pfn(&pfns, PAGE_KERNEL_IO).unwrap();
    for (k, &pfn) in pfns.iter().enumerate() {
        assert_eq!(vm.vmalloc_to_pfn(a + k as u64 * P), Some(pfn));
    }
    let area = vm.find_vm_area(a).unwrap();
    assert!(area.info.flags.contains(VmFlags::IOREMAP | VmFlags::PFNMAP));
    let line = vmalloc::vmallocinfo_line(&area);
    assert!(
        line.ends_with(" ioremap") && !line.contains("pages=") && !line.contains("phys="),
        "{line}"
    );
    // A hole for vread (device memory), as any ioremap area.
    let mut b = [9u8; 3];
    assert_eq!(vm.vread(a + P, &mut b), 3);
    assert_eq!(b, [0; 3]);
    assert!(matches!(vm.vfree(a), Err(VmallocError::WrongKind { .. })));
    vm.vunmap(a).unwrap();
    assert_eq!(vm.frames().refcount(ram), 1, "the frame stays the caller's");
    // Bad input.
    assert_eq!(
        vm.vmap_pfn(&[], PAGE_KERNEL),
        Err(VmallocError::InvalidSize { size: 0 })
    );
    assert!(matches!(
        vm.vmap_pfn(&[1 << 40], PAGE_KERNEL),
        Err(VmallocError::InvalidRange { .. })
    ));
    vm.frames().free(ram).unwrap();
    vm.check_idle().unwrap();
}

#[test]
fn remap_vmalloc_range_partial_maps_a_window() {
    let vm = vm();
    let k = vm.vmalloc_user(4 * P).unwrap();
    vm.vwrite(k + 2 * P, b"page two");
    let user = vm.new_user_space().unwrap();
    let u = va(0x4000_0000);
    // Linux's argument order: (vma, uaddr, kaddr, pgoff, size); kaddr inside the area.
    vm.remap_vmalloc_range_partial(&user, u, k + P, 1, 2 * P)
        .unwrap();
    let t = user.translate(u).unwrap();
    assert_eq!(t.pa, vm.kernel_space().translate(k + 2 * P).unwrap().pa);
    assert!(t.flags.contains(PageTableFlags::USER_ACCESSIBLE));
    assert!(user.translate(u + 2 * P).is_none());
    assert!(matches!(
        vm.remap_vmalloc_range_partial(&user, va(0x5000_0000), k + P, 1, 3 * P),
        Err(VmallocError::RemapTooLarge { .. })
    ));
    let _ = user.unmap_and_free(u, 2 * P).unwrap();
    vm.vfree(k).unwrap();
}

#[test]
fn meminfo_prints_linuxs_three_lines() {
    let vm = vm();
    let a = vm.vmalloc(10 * P).unwrap();
    let m = vm.vmap(&[], VmFlags::empty(), PAGE_KERNEL);
    assert!(m.is_err(), "an empty vmap is refused");
    let lines: Vec<String> = vm.meminfo().lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 3);
    let total = (vmalloc::SMALL_KVA_BYTES - 1) >> 10;
    assert_eq!(lines[0], format!("VmallocTotal:   {total:>8} kB"));
    assert_eq!(lines[1], "VmallocUsed:          40 kB");
    assert_eq!(lines[2], "VmallocChunk:          0 kB");
    vm.vfree(a).unwrap();
}

/// One `/proc/vmallocinfo` line parsed by Linux 6.x's grammar (`s_show`, `show_purge_info`);
/// `Err` says what is wrong.
fn parse_line(line: &str) -> Result<(u64, u64, &str), String> {
    let hex16 = |s: &str| -> Result<u64, String> {
        let h = s.strip_prefix("0x").ok_or(format!("no 0x in {s:?}"))?;
        if h.len() != 16
            || !h
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(format!("not 16 lower-case hex digits: {s:?}"));
        }
        u64::from_str_radix(h, 16).map_err(|e| e.to_string())
    };
    let (range, rest) = line.split_once(' ').ok_or("no range")?;
    let (s, e) = range.split_once('-').ok_or("no '-' in the range")?;
    let (start, end) = (hex16(s)?, hex16(e)?);
    // `%7ld`: at least 7 columns, right-aligned.
    let trimmed = rest.trim_start();
    let digits = trimmed.find(' ').ok_or("nothing after the size")?;
    let size_field = &rest[..rest.len() - trimmed.len() + digits];
    if size_field.len() < 7 {
        return Err(format!("size field {size_field:?} narrower than 7"));
    }
    let size: u64 = size_field.trim_start().parse().map_err(|_| "bad size")?;
    if size != end - start || start >= end {
        return Err(format!("size {size} for [{start:#x}, {end:#x})"));
    }
    let tail = &rest[size_field.len() + 1..];
    if tail == "vm_map_ram" || tail == "unpurged vm_area" {
        return Ok((start, end, tail));
    }
    let mut words = tail.split(' ');
    let caller = words.next().ok_or("no caller")?;
    if caller.is_empty() || caller.contains('=') {
        return Err(format!("bad caller {caller:?}"));
    }
    // The optional tokens, each at most once, in this order.
    let order = [
        "pages=", "phys=", "ioremap", "vmalloc", "vmap", "user", "vpages",
    ];
    let mut next = 0;
    for w in words {
        let k = order
            .iter()
            .position(|o| {
                if o.ends_with('=') {
                    w.starts_with(o)
                } else {
                    w == *o
                }
            })
            .ok_or(format!("unknown token {w:?}"))?;
        if k < next {
            return Err(format!("token {w:?} out of order"));
        }
        next = k + 1;
        if let Some(n) = w.strip_prefix("pages=") {
            n.parse::<u64>().map_err(|_| format!("bad {w:?}"))?;
        }
        if let Some(p) = w.strip_prefix("phys=") {
            hex16(p)?;
        }
    }
    Ok((start, end, "area"))
}

#[test]
fn vmallocinfo_follows_linux_6_line_grammar() {
    let mut c = cfg(32);
    c.early = vec![EarlyArea {
        addr: None,
        size: 2 * P,
        align: P,
        flags: VmFlags::IOREMAP,
    }];
    let vm = Vmalloc::new(c).unwrap();
    let frames: Vec<_> = (0..70)
        .map(|_| vm.frames().alloc_zeroed(Zone::Normal).unwrap())
        .collect();
    let keep = [
        vm.vmalloc(3 * P).unwrap(),
        vm.vzalloc(600 * P).unwrap(),
        vm.vmalloc_user(P).unwrap(),
        vm.vmap(&frames[..2], VmFlags::empty(), PAGE_KERNEL)
            .unwrap(),
        vm.vmap_pfn(&[0xfe_d00], PAGE_KERNEL_IO).unwrap(),
        vm.ioremap(PhysAddr::new(0xfee0_0123), P, PAGE_KERNEL_IO)
            .unwrap(),
    ];
    let piece = vm
        .vm_map_ram(&frames[2..5], NUMA_NO_NODE, PAGE_KERNEL)
        .unwrap();
    let large = vm.vm_map_ram(&frames, NUMA_NO_NODE, PAGE_KERNEL).unwrap();
    let res = vm.get_vm_area(5 * P, VmFlags::empty()).unwrap();
    let avm = vm.alloc_vm_area(2 * P, None).unwrap();
    let stack = vm.alloc_thread_stack_node(NUMA_NO_NODE).unwrap();
    // Two lazily freed areas (not purged: far below the threshold).
    let lazy = [vm.vmalloc(2 * P).unwrap(), vm.vmalloc(7 * P).unwrap()];
    for a in lazy {
        vm.vfree(a).unwrap();
    }
    let info = vm.vmallocinfo();
    let mut kinds = Vec::new();
    let mut last_start = 0;
    let mut unpurged = Vec::new();
    for line in info.lines() {
        let (s, e, kind) = parse_line(line).unwrap_or_else(|m| panic!("{m}: {line:?}"));
        if kind == "unpurged vm_area" {
            unpurged.push((s, e));
        } else {
            assert!(unpurged.is_empty(), "unpurged lines come last: {info}");
            assert!(s > last_start, "ascending: {info}");
            last_start = s;
        }
        kinds.push(kind);
    }
    unpurged.sort_unstable();
    let want: Vec<(u64, u64)> = lazy
        .iter()
        .zip([3, 8])
        .map(|(a, pages)| (a.as_u64(), a.as_u64() + pages * P))
        .collect();
    assert_eq!(unpurged, want);
    // 6 kept + res + avm + stack + early = 10 areas; a block and a large vm_map_ram.
    assert_eq!(kinds.iter().filter(|k| **k == "area").count(), 10, "{info}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "vm_map_ram").count(),
        2,
        "{info}"
    );
    let line_of = |a: u64| {
        info.lines()
            .find(|l| l.starts_with(&format!("0x{a:016x}-")))
            .unwrap()
            .to_owned()
    };
    assert!(line_of(keep[1].as_u64()).ends_with(" pages=600 vmalloc vpages"));
    assert!(line_of(keep[3].as_u64()).ends_with(" vmap"));
    assert!(line_of(keep[5].as_u64() & !(P - 1)).ends_with(" phys=0x00000000fee00000 ioremap"));
    assert!(line_of(stack.guard_below().as_u64()).ends_with(" pages=4 vmalloc"));
    // Purged: the unpurged lines are gone.
    vm.purge_vmap_area_lazy();
    assert!(!vm.vmallocinfo().contains("unpurged"));
    for a in [keep[0], keep[1], keep[2]] {
        vm.vfree(a).unwrap();
    }
    vm.vunmap(keep[3]).unwrap();
    vm.vunmap(keep[4]).unwrap();
    vm.iounmap(keep[5]).unwrap();
    vm.vm_unmap_ram(piece, 3).unwrap();
    vm.vm_unmap_ram(large, 70).unwrap();
    vm.free_vm_area(&res).unwrap();
    vm.free_vm_area(&avm).unwrap();
    vm.free_thread_stack(stack).unwrap();
    vm.vm_unmap_aliases();
    vm.frames().free_bulk(&frames).unwrap();
    vm.check_idle().unwrap();
}
