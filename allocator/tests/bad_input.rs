//! Bad input at the edges of the integer ranges: every call returns a typed error or is
//! clamped as documented, never panics (these tests run in the dev profile: overflow checks
//! and debug assertions on), and leaves nothing behind.
#![cfg(not(feature = "loom"))]

mod common;

use std::sync::Arc;

use common::{snapshot, vm};
use pagetable::CountingFlush;
use pagetable::PAGE_SIZE;
use pagetable::cpu;
use vmalloc::ioremap_align;
use vmalloc::{AreaInfo, Kva, KvaConfig, KvaError, PurgeMode, VmFlags, VmallocError};
use vmalloc::{MAX_LAZY_MAX_PAGES, MAX_NR_CPUS};

const P: u64 = PAGE_SIZE;
const BASE: u64 = 0x4000_0000;

fn kva(cfg: KvaConfig) -> Result<Kva, KvaError> {
    Kva::new(cfg, Arc::new(CountingFlush::new()))
}

#[test]
fn a_huge_lazy_threshold_is_clamped_and_purges_still_work() {
    for mode in [
        PurgeMode::Synchronous,
        PurgeMode::Inline,
        PurgeMode::Background,
    ] {
        let k = kva(KvaConfig {
            lazy_max_pages: Some(usize::MAX),
            purge_mode: mode,
            purge_workers: 1,
            ..KvaConfig::with_range(BASE, BASE + 256 * P)
        })
        .unwrap();
        assert_eq!(k.lazy_max_pages(), MAX_LAZY_MAX_PAGES);
        let (s, e) = k.range();
        let a = k
            .alloc(8 * P, P, s, e, None, AreaInfo::new(VmFlags::ALLOC))
            .map(|a| a.as_u64())
            .unwrap();
        let r = k.remove(pagetable::VirtAddr::new_truncate(a)).unwrap();
        k.free_lazy(r, 8);
        // The merge's resched rule computes 2 * lazy_max_pages: no overflow.
        let rep = k.purge();
        assert_eq!((rep.areas, rep.pages), (1, 8), "{mode:?}");
        k.check_invariants().unwrap();
    }
}

#[test]
fn an_absurd_unmapped_count_is_clamped() {
    let k = kva(KvaConfig {
        purge_mode: PurgeMode::Synchronous,
        lazy_max_pages: Some(1 << 20),
        ..KvaConfig::with_range(BASE, BASE + 256 * P)
    })
    .unwrap();
    let (s, e) = k.range();
    for _ in 0..2 {
        let a = k
            .alloc(3 * P, P, s, e, None, AreaInfo::new(VmFlags::ALLOC))
            .map(|a| a.as_u64())
            .unwrap();
        let r = k.remove(pagetable::VirtAddr::new_truncate(a)).unwrap();
        // More pages than the area has, twice: neither the lazy counters nor the statistics
        // may overflow.
        k.free_lazy(r, usize::MAX);
    }
    assert_eq!(k.stats().lazy_pages, 6);
    k.purge();
    let st = k.stats();
    assert_eq!(
        (st.lazy_pages, st.unmapped_pages, st.free),
        (0, 6, st.total)
    );
    k.check_invariants().unwrap();
}

#[test]
fn purge_workers_are_clamped_to_the_cpu_slots() {
    let k = kva(KvaConfig {
        purge_workers: usize::MAX,
        nr_cpus: 3,
        ..KvaConfig::with_range(BASE, BASE + 256 * P)
    })
    .unwrap();
    assert_eq!(k.nr_cpus(), 3);
    assert!(format!("{k:?}").contains("workers: 3"), "{k:?}");
    drop(k); // joins them
}

#[test]
fn cpu_counts_beyond_the_limit_are_refused() {
    let e = kva(KvaConfig {
        nr_cpus: MAX_NR_CPUS + 1,
        ..KvaConfig::with_range(BASE, BASE + 256 * P)
    })
    .unwrap_err();
    assert_eq!(
        e,
        KvaError::InvalidConfig {
            what: "nr_cpus",
            value: MAX_NR_CPUS as u64 + 1,
            max: MAX_NR_CPUS as u64
        }
    );
    assert!(e.to_string().contains("nr_cpus"), "{e}");
    // The default follows the machine (or KVMALLOC_NR_CPUS).
    let k = kva(KvaConfig::with_range(BASE, BASE + 256 * P)).unwrap();
    assert_eq!(k.nr_cpus(), cpu::nr_cpu_ids());
}

#[test]
fn a_huge_vmalloc_fails_at_once_with_nothing_reserved() {
    let vm = vm();
    let before = snapshot(&vm);
    for size in [1u64 << 40, 1 << 50, (1 << 63) + 1, u64::MAX - PAGE_SIZE] {
        match vm.vmalloc(size) {
            Err(VmallocError::OutOfMemory { size: s, .. }) => assert_eq!(s, size),
            Err(VmallocError::InvalidSize { .. }) => {}
            other => panic!("vmalloc({size:#x}) = {other:?}"),
        }
    }
    assert_eq!(snapshot(&vm), before);
}

#[test]
fn ioremap_sized_requests_near_u64_max_are_typed_errors() {
    let vm = vm();
    let before = snapshot(&vm);
    for size in [(1u64 << 63) + 1, u64::MAX, u64::MAX - PAGE_SIZE, 1 << 63] {
        assert!(
            vm.alloc_vm_area(size, None).is_err(),
            "alloc_vm_area({size:#x})"
        );
        assert!(
            vm.get_vm_area(size, VmFlags::IOREMAP).is_err(),
            "get_vm_area({size:#x}, IOREMAP)"
        );
        assert!(vm.get_vm_area(size, VmFlags::empty()).is_err());
    }
    assert_eq!(ioremap_align(u64::MAX), 128 * P);
    assert_eq!(snapshot(&vm), before);
}

#[test]
fn vm_unmap_ram_of_a_large_mapping_checks_kind_and_count_in_one_step() {
    let vm = vm();
    let frames: Vec<_> = (0..100)
        .map(|_| vm.frames().alloc(pagetable::Zone::Normal).unwrap())
        .collect();
    let big = vm.vm_map_ram(&frames, None, vmalloc::PAGE_KERNEL).unwrap();
    // A count that does not match: refused, nothing changed.
    assert_eq!(
        vm.vm_unmap_ram(big, 99),
        Err(VmallocError::WrongCount {
            addr: big.as_u64(),
            count: 99,
            expected: 100
        })
    );
    // Another kind of area at that count: refused.
    let p = vm.vmalloc(100 * P).unwrap();
    assert!(matches!(
        vm.vm_unmap_ram(p, 100),
        Err(VmallocError::WrongKind { .. })
    ));
    vm.vfree(p).unwrap();
    vm.vm_unmap_ram(big, 100).unwrap();
    assert_eq!(
        vm.vm_unmap_ram(big, 100),
        Err(VmallocError::DoubleFree { addr: big.as_u64() })
    );
    vm.purge_vmap_area_lazy();
    assert_eq!(vm.stats().kva.used, 0);
    vm.frames().free_bulk(&frames).unwrap();
}
