//! Loom models of `vfree` racing the readers of the vmalloc API: `find_vm_area` and `vread`,
//! on a tiny heap-backed [`Vmalloc`] (a few frames, an 8-page KVA range, synchronous purges,
//! the [`TlbModel`](pagetable::TlbModel) so stale translations really are used).
//!
//! The area (one page plus its guard page) is stamped before the race, and the reader's CPU
//! (slot 1) has its translation cached, so the stale-TLB path is reachable. Asserted:
//!
//! * `find_vm_area` returns either nothing or the whole live area (start, end, `ALLOC`,
//!   `nr_pages`), never a half-freed or foreign one;
//! * `vread` returns 0 bytes (no live area) or the whole buffer holding exactly the stamp or
//!   exactly zeros (a hole), never a mix nor other bytes;
//! * after joining: `vfree` succeeded, the area is gone, the statistics are exact (no area, no
//!   vmalloc pages, frames back to the page tables alone, lazy pages as the purge mode says),
//!   and after a purge no CPU holds a translation of the range, the KVA is whole again and
//!   its invariants hold.
//!
//! A third model races two `vfree`s of one area: one succeeds, the other gets a typed error,
//! and the frame and the VA are freed exactly once.

#![cfg(feature = "loom")]

use loom::thread;
use loom_tests::{BOUND_2_THREADS, check_with};
use pagetable::FrameConfig;
use pagetable::cpu;
use pagetable::{ArenaConfig, Backing, PAGE_SIZE, PhysAddr, VirtAddr};
use std::sync::Arc;
use vmalloc::VMALLOC_START;
use vmalloc::{KvaConfig, PurgeMode, TlbChoice, VmFlags, Vmalloc, VmallocConfig, VmallocError};

/// Frames in the arena: the PML4, the PDPT preallocated for the range, a PD and a PT on the
/// first mapping, one data page, one spare. Under loom every 8 bytes are a loom atomic, so
/// this is kept as small as the model allows.
const FRAMES: u64 = 6;
/// Scheduling points allowed per execution (the arena and page-table setup alone has a few
/// thousand atomic accesses).
const MAX_BRANCHES: usize = 100_000;
/// The stamp written into the area before the race (two words).
const STAMP: [u8; 16] = *b"vmalloc-stamp-42";

fn tiny(lazy_max_pages: usize) -> Vmalloc {
    // The struct update keeps the literal compiling when `KvaConfig` gains a field.
    let cfg = VmallocConfig {
        kva: KvaConfig {
            start: VMALLOC_START,
            end: VMALLOC_START + 8 * PAGE_SIZE,
            shards: 1,
            lazy_max_pages: Some(lazy_max_pages),
            purge_mode: PurgeMode::Synchronous,
            pcpu_cache: false,
            purge_workers: 0,
            ..KvaConfig::default()
        },
        arena: ArenaConfig {
            size: FRAMES * PAGE_SIZE,
            base: PhysAddr::zero(),
            backing: Backing::Heap,
        },
        frames: FrameConfig {
            pcp_batch: 0,
            pcp_high: 0,
        },
        tlb: TlbChoice::Model,
        early: Vec::new(),
    };
    Vmalloc::new(cfg).expect("a tiny vmalloc instance")
}

/// The model: the main thread (CPU 0) vfrees the area while a reader (CPU 1) looks it up and
/// reads it. With `lazy_max_pages == 1` the vfree crosses the threshold and purges (flushes
/// every CPU's TLB) inside the race; with a large threshold the area stays lazy.
fn vfree_vs_readers(name: &str, lazy_max_pages: usize) {
    check_with(name, BOUND_2_THREADS, Some(MAX_BRANCHES), move || {
        let vm = Arc::new(tiny(lazy_max_pages));
        let x = vm.vmalloc(PAGE_SIZE).expect("one page fits");
        // Page tables (kept after the vfree) plus the one data frame.
        let tables = vm.frame_stats().used - 1;
        assert_eq!(vm.vwrite(x, &STAMP), STAMP.len());
        // Cache the translation on the reader's CPU.
        cpu::set_this_cpu(1);
        let mut warm = [0u8; 16];
        assert_eq!(vm.vread(x, &mut warm), 16);
        assert_eq!(warm, STAMP);
        cpu::set_this_cpu(0);
        let live = vm.find_vm_area(x).expect("the area is live");

        let reader = {
            let vm = Arc::clone(&vm);
            thread::spawn(move || {
                cpu::set_this_cpu(1);
                if let Some(a) = vm.find_vm_area(x) {
                    assert_eq!(a, live, "find_vm_area returned a partial or foreign area");
                }
                let mut buf = [0xEEu8; 16];
                match vm.vread(x, &mut buf) {
                    0 => assert_eq!(buf, [0xEE; 16], "vread of no area touched the buffer"),
                    16 => assert!(
                        buf == STAMP || buf == [0; 16],
                        "vread returned garbage: {buf:?}"
                    ),
                    n => panic!("vread returned {n} bytes"),
                }
            })
        };
        vm.vfree(x).expect("vfree of a live area");
        reader.join().unwrap();

        assert_eq!(vm.find_vm_area(x), None);
        let s = vm.stats();
        assert_eq!(
            (s.nr_areas, s.area_bytes, s.vmalloc_used_kb),
            (0, 0, 0),
            "{s:?}"
        );
        assert_eq!(s.frames_used, tables, "the data frame was not freed: {s:?}");
        let lazy = if lazy_max_pages <= 2 { 0 } else { 2 };
        assert_eq!(s.lazy_pages, lazy, "{s:?}");
        assert_eq!(s.kva.pending, lazy as u64 * PAGE_SIZE, "{s:?}");

        vm.purge_vmap_area_lazy();
        let model = vm.tlb_model().expect("built with the TLB model");
        let end = VirtAddr::new_truncate(x.as_u64() + 2 * PAGE_SIZE);
        assert!(
            !model.holds_any(x, end),
            "a CPU still caches a translation after the purge"
        );
        if let Err(e) = vm.kva().check_invariants() {
            panic!("Kva invariants broken: {e}");
        }
        let s = vm.stats();
        assert_eq!(
            (s.lazy_pages, s.kva.used, s.kva.free),
            (0, 0, s.kva.total),
            "{s:?}"
        );
        assert_eq!(s.kva.purged_areas, 1, "{s:?}");
        assert!(live.info.flags.contains(VmFlags::ALLOC) && live.info.nr_pages == 1);
    });
}

/// The vfree crosses the lazy threshold and purges inside the race.
#[test]
fn vfree_purging_vs_find_and_vread() {
    vfree_vs_readers("vfree_purging_vs_find_and_vread", 1);
}

/// The vfree leaves the area on the lazy list (stale translations stay until the purge).
#[test]
fn vfree_lazy_vs_find_and_vread() {
    vfree_vs_readers("vfree_lazy_vs_find_and_vread", 64);
}

/// Two threads vfree the same area at once (a caller bug Linux reports with a warning):
/// exactly one succeeds, the other gets a typed error (`DoubleFree` if the area waits on the
/// lazy list, `NotAllocated` once it is purged), and the frame and the VA are freed once.
#[test]
fn vfree_vs_vfree_same_area() {
    check_with(
        "vfree_vs_vfree_same_area",
        BOUND_2_THREADS,
        Some(MAX_BRANCHES),
        || {
            let vm = Arc::new(tiny(1));
            let x = vm.vmalloc(PAGE_SIZE).expect("one page fits");
            let tables = vm.frame_stats().used - 1;
            let other = {
                let vm = Arc::clone(&vm);
                thread::spawn(move || {
                    cpu::set_this_cpu(1);
                    vm.vfree(x)
                })
            };
            let mine = vm.vfree(x);
            let theirs = other.join().unwrap();
            let err = match (mine, theirs) {
                (Ok(()), Err(e)) | (Err(e), Ok(())) => e,
                (a, b) => panic!("double vfree: expected one success, got {a:?} and {b:?}"),
            };
            assert!(
                matches!(
                    err,
                    VmallocError::DoubleFree { .. } | VmallocError::NotAllocated { .. }
                ),
                "unexpected error for the second vfree: {err:?}"
            );
            vm.purge_vmap_area_lazy();
            if let Err(e) = vm.kva().check_invariants() {
                panic!("Kva invariants broken: {e}");
            }
            let s = vm.stats();
            assert_eq!(
                s.frames_used, tables,
                "frame freed twice or not at all: {s:?}"
            );
            assert_eq!(s.frames.frees, 1, "{s:?}");
            assert_eq!((s.kva.free, s.kva.purged_areas), (s.kva.total, 1), "{s:?}");
        },
    );
}
