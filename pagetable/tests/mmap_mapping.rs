//! Page tables over a large mmap-backed arena: far-apart virtual addresses (both ends of both
//! halves) mapped onto frames gigabytes apart in a 16 GiB `MAP_NORESERVE` arena, written and
//! read back through the TLB model, checked in the arena's own memory, with a 2 MiB leaf and
//! a shared kernel half; then everything is torn down with nothing left allocated.

#![cfg(not(feature = "loom"))]

use std::sync::Arc;

use pagetable::{
    AddressSpace, ArenaConfig, Backing, FrameAllocator, PageTableFlags, PhysAddr, PhysArena,
    TlbModel, VirtAddr,
};

const KB4: u64 = 4096;
const MB2: u64 = 2 << 20;
const GB1: u64 = 1 << 30;
const RW: PageTableFlags = PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE);

#[test]
fn far_apart_addresses_on_a_large_mmap_arena() {
    let base = PhysAddr::new(0x1_0000_0000);
    let arena = PhysArena::new(ArenaConfig {
        size: 16 * GB1,
        base,
        backing: Backing::Mmap { huge_pages: true },
    })
    .expect("16 GiB MAP_NORESERVE arena");
    let frames = Arc::new(FrameAllocator::new(Arc::new(arena)));
    let kernel = AddressSpace::new(Arc::clone(&frames)).unwrap();
    kernel
        .preallocate(VirtAddr::new(0xffff_8000_0000_0000), VirtAddr::zero())
        .unwrap();
    let user = AddressSpace::new_sharing_kernel(&kernel).unwrap();
    let tlb = TlbModel::new(2);

    // (virtual address, physical address) pairs far apart on both sides.
    let places = [
        // (Frames near the arena's start are the allocator's: it hands out tables from there.)
        (0x1000u64, base.as_u64() + GB1 + 7 * KB4),
        (0x7fff_ffff_f000, base.as_u64() + 15 * GB1 + 123 * KB4),
        (0x3a_5c00_0000, base.as_u64() + 7 * GB1),
        (0xffff_8000_0000_0000, base.as_u64() + 3 * GB1 + 5 * KB4),
        (0xffff_ffff_ffff_f000, base.as_u64() + 16 * GB1 - KB4),
    ];
    for (i, &(v, p)) in places.iter().enumerate() {
        let v = VirtAddr::new(v);
        let space = if v.as_u64() >= 0xffff_8000_0000_0000 {
            &kernel
        } else {
            &user
        };
        space
            .map_contiguous(v, PhysAddr::new(p), KB4, RW, false)
            .unwrap();
        let msg = format!("hello from mapping {i}");
        tlb.write(i % 2, &user, v + 100, msg.as_bytes()).unwrap();
        let mut back = vec![0u8; msg.len()];
        frames
            .arena()
            .read(PhysAddr::new(p + 100), &mut back)
            .unwrap();
        assert_eq!(back, msg.as_bytes());
        // Kernel mappings are visible through the user space's shared kernel half.
        assert_eq!(user.translate(v + 100).unwrap().pa, PhysAddr::new(p + 100));
    }
    // A 2 MiB leaf deep inside the arena, written across its middle.
    let hv = VirtAddr::new(0xffff_c900_0000_0000);
    let hp = PhysAddr::new(base.as_u64() + 9 * GB1);
    kernel.map_contiguous(hv, hp, MB2, RW, true).unwrap();
    assert_eq!(kernel.translate(hv).unwrap().size, MB2);
    let data = [0xa5u8; 3 * KB4 as usize];
    tlb.write(0, &kernel, hv + MB2 / 2 - KB4, &data).unwrap();
    assert!(frames.arena().is_zero(hp, MB2 / 2 - KB4).unwrap());
    let mut back = vec![0u8; data.len()];
    frames
        .arena()
        .read(hp + (MB2 / 2 - KB4), &mut back)
        .unwrap();
    assert_eq!(back, data);

    // Tear down: unmap, flush, clean up; only tables were ever allocated.
    for &(v, _) in &places {
        let v = VirtAddr::new(v);
        let space = if v.as_u64() >= 0xffff_8000_0000_0000 {
            &kernel
        } else {
            &user
        };
        space.unmap(v, KB4, |_, _| {}).unwrap().flush(&tlb);
    }
    kernel.unmap(hv, MB2, |_, _| {}).unwrap().flush(&tlb);
    assert!(!tlb.holds_any(VirtAddr::new(0x1000), VirtAddr::new(0x2000)));
    // Two PDPTs, three page directories, three leaf tables in the user half.
    assert_eq!(user.clean_up(VirtAddr::zero(), 1 << 47).unwrap(), 8);
    drop(user);
    drop(kernel);
    assert_eq!(frames.stats().used, 0);
}
