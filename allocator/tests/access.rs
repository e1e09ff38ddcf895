//! `vread` / `vwrite` (Linux 3.7 semantics): holes, guard pages, ioremap areas, vmap blocks,
//! and the TLB model underneath.
#![cfg(not(feature = "loom"))]

mod common;

use common::{model, pattern, va, vm};
use pagetable::{PAGE_SIZE, PhysAddr, Zone, cpu};
use vmalloc::{PAGE_KERNEL, PAGE_KERNEL_IO, VmFlags};

const P: u64 = PAGE_SIZE;

#[test]
fn round_trip_inside_one_area() {
    let vm = vm();
    let a = vm.vmalloc(5 * P).unwrap();
    let data = pattern(1, 3 * P as usize + 17);
    assert_eq!(vm.vwrite(a + 100, &data), data.len());
    let mut back = vec![0u8; data.len()];
    assert_eq!(vm.vread(a + 100, &mut back), data.len());
    assert_eq!(back, data);
    vm.vfree(a).unwrap();
}

#[test]
fn no_live_area_returns_zero_and_touches_nothing() {
    let vm = vm();
    let (s, _) = vm.range();
    let mut buf = [0xeeu8; 64];
    assert_eq!(vm.vread(s + 12345, &mut buf), 0);
    assert_eq!(buf, [0xee; 64]);
    assert_eq!(vm.vwrite(s, &buf), 0);
    assert_eq!(vm.vread(va(0x1000), &mut buf), 0);
    assert_eq!(vm.vread(s, &mut []), 0);
    // Only a guard page in the range: no intersection either.
    let a = vm.vmalloc(P).unwrap();
    assert_eq!(vm.vread(a + P, &mut buf), 0);
    assert_eq!(buf, [0xee; 64]);
    vm.vfree(a).unwrap();
    // A freed area is not live.
    assert_eq!(vm.vread(a, &mut buf), 0);
}

#[test]
fn holes_between_areas_read_as_zeros_and_are_skipped_on_write() {
    let vm = vm();
    let (s, _) = vm.range();
    let (ws, we) = (s + (3 << 30), s + (3 << 30) + 64 * P);
    let alloc = |pages: u64| {
        vm.vmalloc_node_range(
            pages * P,
            P,
            ws,
            we,
            vmalloc::Gfp::ZERO,
            PAGE_KERNEL,
            VmFlags::empty(),
            None,
        )
        .unwrap()
    };
    let a = alloc(2); // [ws, ws + 2P) + guard
    let b = alloc(1); // [ws + 3P, ws + 4P) + guard
    assert_eq!((a, b), (ws, ws + 3 * P));
    // Write from the middle of `a` across its guard page into `b` and past its guard.
    let start = a + P + 10;
    let data = pattern(2, 4 * P as usize);
    assert_eq!(vm.vwrite(start, &data), data.len());
    let mut back = vec![0xffu8; data.len()];
    assert_eq!(vm.vread(start, &mut back), data.len());
    let off = |x: pagetable::VirtAddr| (x - start) as usize;
    // In `a`: written.
    assert_eq!(back[..off(a + 2 * P)], data[..off(a + 2 * P)]);
    // `a`'s guard page: a hole.
    assert!(back[off(a + 2 * P)..off(b)].iter().all(|&x| x == 0));
    // `b`: written.
    assert_eq!(back[off(b)..off(b + P)], data[off(b)..off(b + P)]);
    // After `b` (guard, free space): holes.
    assert!(back[off(b + P)..].iter().all(|&x| x == 0));
    vm.vfree(a).unwrap();
    vm.vfree(b).unwrap();
}

#[test]
fn a_range_starting_before_the_first_area_counts() {
    let vm = vm();
    let a = vm.vmalloc(P).unwrap();
    vm.vwrite(a, b"X");
    let mut buf = [0xaau8; 32];
    assert_eq!(vm.vread(a - 16, &mut buf), 32);
    assert_eq!(buf[..16], [0; 16]);
    assert_eq!(buf[16], b'X');
    vm.vfree(a).unwrap();
}

#[test]
fn ioremap_areas_and_unmapped_pages_are_holes() {
    let vm = vm();
    let io = vm
        .ioremap(PhysAddr::new(0xfed0_0000), 2 * P, PAGE_KERNEL_IO)
        .unwrap();
    let mut buf = [0x11u8; 64];
    assert_eq!(vm.vread(io, &mut buf), 64, "an ioremap area is live");
    assert_eq!(buf, [0; 64]);
    // Seed 002 (3.7): "IOREMAP area is treated as memory hole and no copy is done"; a range
    // touching only ioremap areas copies nothing and vwrite returns 0 (vread still counts it).
    assert_eq!(vm.vwrite(io, &[1; 8]), 0);
    let g = vm.get_vm_area(2 * P, VmFlags::empty()).unwrap();
    let mut buf = [0x22u8; 16];
    assert_eq!(vm.vread(va(g.start + P), &mut buf), 16);
    assert_eq!(buf, [0; 16]);
    assert_eq!(
        vm.vwrite(va(g.start), &[3; 16]),
        16,
        "skipped, not an error"
    );
    vm.iounmap(io).unwrap();
    vm.free_vm_area(&g).unwrap();
}

#[test]
fn vmap_blocks_read_live_pieces_only() {
    let vm = vm();
    let f = vm.frames().alloc_zeroed(Zone::Normal).unwrap();
    vm.frames()
        .arena()
        .write(f.start_address(), b"piece")
        .unwrap();
    let a = vm.vm_map_ram(&[f], None, PAGE_KERNEL).unwrap();
    let mut buf = [0u8; 5];
    assert_eq!(vm.vread(a, &mut buf), 5);
    assert_eq!(&buf, b"piece");
    vm.vm_unmap_ram(a, 1).unwrap();
    // The block is live, the piece is not: a hole, even though this CPU's TLB may still
    // cache the old translation.
    let mut buf = [9u8; 5];
    assert_eq!(vm.vread(a, &mut buf), 5);
    assert_eq!(buf, [0; 5]);
    vm.vm_unmap_aliases();
    vm.frames().free(f).unwrap();
}

#[test]
fn accesses_fill_this_cpus_tlb_and_a_purge_empties_it() {
    let vm = vm();
    let tlb = model(&vm);
    let a = vm.vmalloc(2 * P).unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            cpu::set_this_cpu(1);
            let me = cpu::this_cpu() % tlb.nr_cpus();
            vm.vwrite(a, b"from cpu 1");
            assert!(tlb.cached(me, vm.kernel_space(), a).is_some());
        });
    });
    let mut b = [0u8; 10];
    vm.vread(a, &mut b);
    assert_eq!(&b, b"from cpu 1");
    vm.vfree(a).unwrap();
    assert!(tlb.holds_any(a, a + 2 * P), "stale entries survive vfree");
    vm.purge_vmap_area_lazy();
    assert!(!tlb.holds_any(a, a + 2 * P));
}

#[test]
fn huge_counts_are_clamped_not_overflowed() {
    let vm = vm();
    let a = vm.vmalloc(P).unwrap();
    vm.vwrite(a, b"edge");
    // A buffer whose end would wrap around the address space.
    let top = va(u64::MAX - 7);
    let mut buf = [1u8; 16];
    assert_eq!(vm.vread(top, &mut buf), 0);
    vm.vfree(a).unwrap();
}
