//! `remap_vmalloc_range` into user space, and `ioremap` / `iounmap`.
#![cfg(not(feature = "loom"))]

mod common;

use common::{model, pattern, va, vm};
use pagetable::{PAGE_SIZE, PageTableFlags, PhysAddr, PhysFrame, VirtAddr};
use vmalloc::{IOREMAP_MAX_ORDER, PAGE_KERNEL, PAGE_KERNEL_IO, PAGE_USER, VmFlags, VmallocError};

const P: u64 = PAGE_SIZE;
const UADDR: u64 = 0x7000_0000;

#[test]
fn remap_shares_frames_with_user_space() {
    let vm = vm();
    let used = vm.frame_stats().used;
    let k = vm.vmalloc_user(4 * P).unwrap();
    let data = pattern(7, 4 * P as usize);
    vm.vwrite(k, &data);
    let user = vm.new_user_space().unwrap();
    vm.remap_vmalloc_range(&user, va(UADDR), 4 * P, k, 0)
        .unwrap();
    for i in 0..4 {
        let kt = vm.kernel_space().translate(k + i * P).unwrap();
        let ut = user.translate(va(UADDR + i * P)).unwrap();
        assert_eq!(kt.pa, ut.pa);
        assert_eq!(ut.flags & PAGE_USER, PAGE_USER);
        assert_eq!(
            vm.frames().refcount(PhysFrame::containing_address(kt.pa)),
            2
        );
    }
    // The user sees the kernel's bytes through its own mapping.
    let mut back = vec![0u8; data.len()];
    model(&vm).read(0, &user, va(UADDR), &mut back).unwrap();
    assert_eq!(back, data);
    // vfree: the user mapping keeps the frames alive.
    let pa0 = vm.kernel_space().translate(k).unwrap().pa;
    vm.vfree(k).unwrap();
    vm.purge_vmap_area_lazy();
    assert_eq!(vm.frames().refcount(PhysFrame::containing_address(pa0)), 1);
    model(&vm).read(0, &user, va(UADDR), &mut back).unwrap();
    assert_eq!(back, data);
    // The user unmaps: the frames go back.
    let _ = user.unmap_and_free(va(UADDR), 4 * P).unwrap();
    assert_eq!(vm.frames().refcount(PhysFrame::containing_address(pa0)), 0);
    drop(user);
    assert!(
        vm.frame_stats().used <= used + 3,
        "only kernel page tables remain"
    );
}

#[test]
fn remap_windows_and_errors() {
    let vm = vm();
    let user = vm.new_user_space().unwrap();
    let k = vm.vmalloc_user(4 * P).unwrap();
    let refs = |i: u64| {
        vm.frames().refcount(PhysFrame::containing_address(
            vm.kernel_space().translate(k + i * P).unwrap().pa,
        ))
    };
    // A window: pages 2 and 3, given as kaddr + 1 page and pgoff 1.
    vm.remap_vmalloc_range(&user, va(UADDR), 2 * P, k + P, 1)
        .unwrap();
    assert_eq!(
        user.translate(va(UADDR)).unwrap().pa,
        vm.kernel_space().translate(k + 2 * P).unwrap().pa
    );
    assert_eq!((refs(0), refs(1), refs(2), refs(3)), (1, 1, 2, 2));
    let e = vm.remap_vmalloc_range(&user, va(UADDR + (1 << 20)), 2 * P, k, 3);
    assert_eq!(
        e,
        Err(VmallocError::RemapTooLarge {
            addr: k.as_u64(),
            offset: 3 * P,
            len: 2 * P,
            size: 4 * P
        })
    );
    let e = vm.remap_vmalloc_range(&user, va(UADDR + (1 << 20)), 5 * P, k, 0);
    assert!(matches!(e, Err(VmallocError::RemapTooLarge { .. })));
    let e = vm.remap_vmalloc_range(&user, va(UADDR + (1 << 20)), P, k, u64::MAX);
    assert!(matches!(e, Err(VmallocError::RemapTooLarge { .. })));
    // Already mapped at uaddr: the map fails and the references taken are dropped again.
    let e = vm.remap_vmalloc_range(&user, va(UADDR), P, k, 0);
    assert!(
        matches!(
            e,
            Err(VmallocError::Map(pagetable::MapError::AlreadyMapped { .. }))
        ),
        "{e:?}"
    );
    assert_eq!(refs(0), 1);
    // Misaligned, empty, kernel-half user address.
    assert_eq!(
        vm.remap_vmalloc_range(&user, va(UADDR + 1), P, k, 0),
        Err(VmallocError::Misaligned {
            addr: UADDR + 1,
            align: P
        })
    );
    assert_eq!(
        vm.remap_vmalloc_range(&user, va(UADDR), P, k + 1, 0),
        Err(VmallocError::Misaligned {
            addr: k.as_u64() + 1,
            align: P
        })
    );
    assert_eq!(
        vm.remap_vmalloc_range(&user, va(UADDR), 0, k, 0),
        Err(VmallocError::InvalidSize { size: 0 })
    );
    assert!(matches!(
        vm.remap_vmalloc_range(&user, k, P, k, 0),
        Err(VmallocError::InvalidRange { .. })
    ));
    assert!(matches!(
        vm.remap_vmalloc_range(&user, va((1 << 47) - P), 2 * P, k, 0),
        Err(VmallocError::InvalidRange { .. })
    ));
    // Not VM_USERMAP, not allocated.
    let plain = vm.vmalloc(P).unwrap();
    assert_eq!(
        vm.remap_vmalloc_range(&user, va(UADDR + (2 << 20)), P, plain, 0),
        Err(VmallocError::NotUserMappable {
            addr: plain.as_u64()
        })
    );
    let (s, _) = vm.range();
    assert_eq!(
        vm.remap_vmalloc_range(&user, va(UADDR + (2 << 20)), P, s + (9 << 30), 0),
        Err(VmallocError::NotAllocated {
            addr: (s + (9 << 30)).as_u64()
        })
    );
    // 32-bit user memory is remappable too.
    let k32 = vm.vmalloc_32_user(P).unwrap();
    vm.remap_vmalloc_range(&user, va(UADDR + (3 << 20)), P, k32, 0)
        .unwrap();
    let _ = user.unmap_and_free(va(UADDR), 2 * P).unwrap();
    let _ = user.unmap_and_free(va(UADDR + (3 << 20)), P).unwrap();
    for a in [k, plain, k32] {
        vm.vfree(a).unwrap();
    }
}

#[test]
fn ioremap_maps_device_memory_with_offset() {
    let vm = vm();
    let phys = 0xfee0_0123;
    let a = vm
        .ioremap(PhysAddr::new(phys), 0x10, PAGE_KERNEL_IO)
        .unwrap();
    assert_eq!(a.as_u64() % P, 0x123);
    let t = vm.kernel_space().translate(a).unwrap();
    assert_eq!(t.pa.as_u64(), phys);
    assert!(t.flags.contains(PageTableFlags::NO_CACHE));
    let area = vm.find_vm_area(a).unwrap();
    assert_eq!(area.info.phys_addr, Some(0xfee0_0000));
    assert_eq!(area.size(), 2 * P);
    assert!(area.info.flags.contains(VmFlags::IOREMAP));
    // A range crossing a page boundary takes both pages.
    let b = vm
        .ioremap(PhysAddr::new(0xfec0_0ff0), 0x20, PAGE_KERNEL_IO)
        .unwrap();
    assert_eq!(vm.find_vm_area(b).unwrap().size(), 3 * P);
    assert_eq!(
        vm.kernel_space().translate(b + 0x10).unwrap().pa.as_u64(),
        0xfec0_1000
    );
    // iounmap takes the address with its offset; the first page only.
    assert!(matches!(
        vm.iounmap(b + P),
        Err(VmallocError::NotStartOfArea { .. })
    ));
    vm.iounmap(a).unwrap();
    vm.iounmap(b).unwrap();
    assert!(vm.kernel_space().translate(a).is_none());
    assert_eq!(
        vm.iounmap(a),
        Err(VmallocError::DoubleFree {
            addr: a.align_down(P).as_u64()
        })
    );
    assert_eq!(vm.iounmap(VirtAddr::zero()), Ok(()));
}

#[test]
fn ioremap_alignment_follows_the_size() {
    let vm = vm();
    for (pages, align) in [
        (1u64, P),
        (3, 4 * P),
        (5, 8 * P),
        (100, 128 * P),
        (1000, 1 << IOREMAP_MAX_ORDER),
    ] {
        let a = vm
            .ioremap(PhysAddr::new(1 << 40), pages * P, PAGE_KERNEL_IO)
            .unwrap();
        assert_eq!(a.as_u64() % align, 0, "{pages} pages");
        vm.iounmap(a).unwrap();
    }
}

#[test]
fn ioremap_errors() {
    let vm = vm();
    assert_eq!(
        vm.ioremap(PhysAddr::new(0xfee0_0000), 0, PAGE_KERNEL_IO),
        Err(VmallocError::InvalidSize { size: 0 })
    );
    // RAM: the arena is at physical 0.
    assert_eq!(
        vm.ioremap(PhysAddr::new(0x1000), P, PAGE_KERNEL_IO),
        Err(VmallocError::IoremapOfRam {
            phys: 0x1000,
            size: P
        })
    );
    let end = vm.frames().arena().end().as_u64();
    assert!(matches!(
        vm.ioremap(PhysAddr::new(end - 8), 16, PAGE_KERNEL_IO),
        Err(VmallocError::IoremapOfRam { .. })
    ));
    assert!(vm.ioremap(PhysAddr::new(end), 16, PAGE_KERNEL_IO).is_ok());
    // Beyond 52 bits.
    assert!(matches!(
        vm.ioremap(PhysAddr::new((1 << 52) - 8), 16, PAGE_KERNEL_IO),
        Err(VmallocError::InvalidRange { .. })
    ));
    // Wrong kind both ways.
    let v = vm.vmalloc(P).unwrap();
    assert!(matches!(vm.iounmap(v), Err(VmallocError::WrongKind { .. })));
    let io = vm.ioremap(PhysAddr::new(1 << 40), P, PAGE_KERNEL).unwrap();
    assert!(matches!(vm.vfree(io), Err(VmallocError::WrongKind { .. })));
    assert!(matches!(vm.vunmap(io), Err(VmallocError::WrongKind { .. })));
    vm.iounmap(io).unwrap();
    vm.vfree(v).unwrap();
}
