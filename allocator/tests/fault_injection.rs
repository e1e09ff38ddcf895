//! Fault injection at EVERY frame allocation inside each API call: the call fails with a
//! typed error and, after a purge, frames, VA and `vmallocinfo` are exactly as before.
#![cfg(not(feature = "loom"))]

mod common;

use common::{cfg, snapshot, va};
use pagetable::{FrameError, MapError, PAGE_SIZE, PhysAddr, PhysFrame, Zone};
use vmalloc::{PAGE_KERNEL, PAGE_KERNEL_IO, VmFlags, Vmalloc, VmallocError};

const P: u64 = PAGE_SIZE;

/// Whether `e` is what an injected frame failure may turn into.
fn is_injected(e: &VmallocError) -> bool {
    matches!(
        e,
        VmallocError::OutOfMemory {
            source: FrameError::OutOfFrames { injected: true, .. },
            ..
        } | VmallocError::Frame(FrameError::OutOfFrames { injected: true, .. })
            | VmallocError::Map(MapError::OutOfFrames)
    )
}

/// Run `op` with the n-th frame allocation failing, for n = 1, 2, ... until it succeeds;
/// every failure must be typed and leave no trace. Returns the result and the failures seen.
/// A bulk allocation of k frames counts as k allocations: `limit` bounds the frames one call
/// may allocate.
fn inject_upto<T>(
    vm: &Vmalloc,
    name: &str,
    limit: u64,
    mut op: impl FnMut(&Vmalloc) -> Result<T, VmallocError>,
) -> (T, u64) {
    for n in 1..=limit {
        let before = snapshot(vm);
        vm.frames().fail_nth(Some(n));
        let r = op(vm);
        vm.frames().fail_nth(None);
        match r {
            Ok(t) => return (t, n - 1),
            Err(e) => {
                assert!(
                    is_injected(&e),
                    "{name}: allocation {n}: unexpected error {e:?}"
                );
                let after = snapshot(vm);
                assert_eq!(
                    after, before,
                    "{name}: failure at allocation {n} ({e}) left a trace"
                );
            }
        }
    }
    panic!("{name}: still failing after {limit} injected failures");
}

fn inject<T>(
    vm: &Vmalloc,
    name: &str,
    op: impl FnMut(&Vmalloc) -> Result<T, VmallocError>,
) -> (T, u64) {
    inject_upto(vm, name, 64, op)
}

fn fresh() -> Vmalloc {
    Vmalloc::new(cfg(16)).unwrap()
}

#[test]
fn vmalloc_sizes() {
    for pages in [1u64, 16, 17, 600] {
        let vm = fresh();
        let base = snapshot(&vm);
        let name = format!("vmalloc({pages} pages)");
        let (a, failures) = inject_upto(&vm, &name, pages + 16, |vm| vm.vmalloc(pages * P));
        assert!(
            failures >= pages,
            "{name}: every data frame allocation is a failure point"
        );
        assert!(failures >= 1, "{pages} pages: no allocation was injected");
        assert_eq!(
            vm.kernel_space().mappings(a, pages * P).count() as u64,
            pages
        );
        vm.vfree(a).unwrap();
        let end = snapshot(&vm);
        // Page tables built for the area stay (as in Linux); everything else is back.
        assert_eq!(
            (end.kva_used, end.kva_free, end.nr_busy, end.info),
            (base.kva_used, base.kva_free, base.nr_busy, base.info)
        );
        assert!(end.frames_used >= base.frames_used && end.frames_used <= base.frames_used + 4);
    }
}

#[test]
fn vmalloc_variants() {
    let vm = fresh();
    let (z, _) = inject_upto(&vm, "vzalloc", 64, |vm| vm.vzalloc(40 * P));
    let (u, _) = inject(&vm, "vmalloc_user", |vm| vm.vmalloc_user(3 * P));
    let (x, _) = inject(&vm, "vmalloc_exec", |vm| vm.vmalloc_exec(P));
    let (n, _) = inject(&vm, "vzalloc_node", |vm| vm.vzalloc_node(20 * P, 1));
    for a in [z, u, x, n] {
        vm.vfree(a).unwrap();
    }
    let mut c = cfg(8);
    c.arena.base = PhysAddr::new((1 << 32) - (4 << 20));
    let vm = Vmalloc::new(c).unwrap();
    let (d, f) = inject(&vm, "vmalloc_32", |vm| vm.vmalloc_32(30 * P));
    assert!(f >= 1);
    let (du, _) = inject(&vm, "vmalloc_32_user", |vm| vm.vmalloc_32_user(2 * P));
    vm.vfree(d).unwrap();
    vm.vfree(du).unwrap();
}

#[test]
fn vmap_and_vm_map_ram() {
    let vm = fresh();
    let frames: Vec<PhysFrame> = (0..70)
        .map(|_| vm.frames().alloc(Zone::Normal).unwrap())
        .collect();
    let (m, f) = inject(&vm, "vmap", |vm| {
        vm.vmap(&frames[..3], VmFlags::empty(), PAGE_KERNEL)
    });
    assert!(f >= 1, "page tables must have been allocated");
    let (r, _) = inject(&vm, "vm_map_ram small", |vm| {
        vm.vm_map_ram(&frames[..2], None, PAGE_KERNEL)
    });
    let (l, _) = inject(&vm, "vm_map_ram large", |vm| {
        vm.vm_map_ram(&frames, Some(1), PAGE_KERNEL)
    });
    vm.vunmap(m).unwrap();
    vm.vm_unmap_ram(r, 2).unwrap();
    vm.vm_unmap_ram(l, 70).unwrap();
    for f in &frames {
        assert_eq!(vm.frames().refcount(*f), 1);
    }
    vm.frames().free_bulk(&frames).unwrap();
}

#[test]
fn arrays_vmap_pfn_and_thread_stacks() {
    let vm = fresh();
    let (a, f) = inject(&vm, "vmalloc_array", |vm| vm.vmalloc_array(30, 1000));
    assert!(f >= 8, "every frame is a failure point");
    let (c, _) = inject(&vm, "vcalloc", |vm| vm.vcalloc(5, P));
    // Device frame numbers far from any table built so far.
    let (pfn, _) = inject(&vm, "vmap_pfn", |vm| {
        vm.vmap_pfn(&[1 << 28, (1 << 28) + 1], PAGE_KERNEL_IO)
    });
    let (st, f) = inject(&vm, "alloc_thread_stack_node", |vm| {
        vm.alloc_thread_stack_node(None)
    });
    assert!(f >= 4, "the four stack frames are failure points");
    vm.vfree(a).unwrap();
    vm.vfree(c).unwrap();
    vm.vunmap(pfn).unwrap();
    vm.free_thread_stack(st).unwrap();
    // A cached stack comes back without any frame allocation: nothing to inject.
    vm.frames().fail_after(Some(0));
    let st = vm.alloc_thread_stack_node(None).unwrap();
    vm.frames().fail_after(None);
    vm.free_thread_stack(st).unwrap();
    vm.check_idle().unwrap();
}

#[test]
fn reservations_ioremap_and_remap() {
    let vm = fresh();
    let (io, f) = inject(&vm, "ioremap", |vm| {
        vm.ioremap(PhysAddr::new(1 << 40), 3 * P, PAGE_KERNEL_IO)
    });
    assert!(f >= 1, "page tables must have been allocated");
    let (area, f) = inject(&vm, "alloc_vm_area", |vm| vm.alloc_vm_area(600 * P, None));
    assert!(f >= 1, "page tables must have been allocated");
    let (user, _) = inject(&vm, "new_user_space", |vm| vm.new_user_space());
    let k = vm.vmalloc_user(4 * P).unwrap();
    let (_, f) = inject(&vm, "remap_vmalloc_range", |vm| {
        vm.remap_vmalloc_range(&user, va(0x4000_0000), 4 * P, k, 0)
    });
    assert!(f >= 1, "user page tables must have been allocated");
    let pa = vm.kernel_space().translate(k).unwrap().pa;
    assert_eq!(vm.frames().refcount(PhysFrame::containing_address(pa)), 2);
    let _ = user.unmap_and_free(va(0x4000_0000), 4 * P).unwrap();
    vm.vfree(k).unwrap();
    vm.iounmap(io).unwrap();
    vm.free_vm_area(&area).unwrap();
}

#[test]
fn exhausted_frames_fail_cleanly() {
    let vm = fresh();
    let before = snapshot(&vm);
    vm.frames().fail_after(Some(5));
    let r = vm.vmalloc(10 * P);
    assert!(matches!(&r, Err(e) if is_injected(e)), "{r:?}");
    let r = vm.vmalloc(3 * P);
    vm.frames().fail_after(None);
    let a = r.unwrap_or_else(|_| vm.vmalloc(3 * P).unwrap());
    vm.vfree(a).unwrap();
    let after = snapshot(&vm);
    assert_eq!(
        (after.kva_used, after.nr_busy),
        (before.kva_used, before.nr_busy)
    );
}

#[test]
fn construction_without_frames_is_an_error() {
    let mut c = cfg(1);
    c.arena.size = PAGE_SIZE; // room for the root only, not the vmalloc range's PDPT
    assert!(matches!(
        Vmalloc::new(c),
        Err(VmallocError::Map(MapError::OutOfFrames))
    ));
}
