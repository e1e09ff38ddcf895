//! Unit tests of the address space: mapping, errors, huge pages, fault injection, kernel-half
//! sharing, clean-up, iteration.

use super::*;
use crate::frame::FrameStats;
use crate::page::Size2MiB;
use crate::sync::thread;

pub(super) const KB4: u64 = PAGE_SIZE;
const MB2: u64 = 2 << 20;
const GB1: u64 = 1 << 30;
pub(super) const RW: PageTableFlags = PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE);

fn allocator(frames: u64) -> Arc<FrameAllocator> {
    let arena = PhysArena::heap(frames * KB4, PhysAddr::new(0x100_0000)).unwrap();
    Arc::new(FrameAllocator::new(Arc::new(arena)))
}

pub(super) fn space(frames: u64) -> (Arc<FrameAllocator>, AddressSpace) {
    let a = allocator(frames);
    let s = AddressSpace::new(Arc::clone(&a)).unwrap();
    (a, s)
}

pub(super) fn va(x: u64) -> VirtAddr {
    VirtAddr::new(x)
}

/// Fake data frames above the arena (never touched by the mapper).
pub(super) fn data_frames(n: u64, base: u64) -> Vec<PhysFrame> {
    (0..n)
        .map(|i| PhysFrame::containing_address(PhysAddr::new(base + i * KB4)))
        .collect()
}

pub(super) fn used(a: &FrameAllocator) -> u64 {
    a.stats().used
}

#[test]
fn map_translate_unmap_round_trip() {
    let (a, s) = space(256);
    let frames = data_frames(1000, 0x8000_0000);
    let base = va(0xffff_c900_0000_0000 + 300 * KB4);
    s.map(base, &frames, RW).unwrap();
    assert_eq!(s.rss(), 1000);
    for (i, f) in frames.iter().enumerate() {
        let t = s.translate(base + i as u64 * KB4 + 7).unwrap();
        assert_eq!(t.pa, f.start_address() + 7);
        assert_eq!(t.size, KB4);
        assert_eq!(t.flags, RW);
    }
    assert!(s.translate(base - KB4).is_none());
    assert!(s.translate(base + 1000 * KB4).is_none());
    // root + PDPT + PD + 3 leaf tables (pages 300..1300 of the first 2 MiB chunks).
    assert_eq!(used(&a), 6);
    let mut seen = Vec::new();
    let flush = s
        .unmap(base - 10 * KB4, 1100 * KB4, |pa, size| {
            seen.push((pa, size))
        })
        .unwrap();
    assert_eq!(seen.len(), 1000);
    assert!(
        seen.iter()
            .zip(&frames)
            .all(|(&(pa, sz), f)| pa == f.start_address() && sz == KB4)
    );
    assert_eq!((flush.start(), flush.pages()), (base, 1000));
    assert_eq!(s.rss(), 0);
    assert!(s.translate(base).is_none());
    // Tables stay until clean_up.
    assert_eq!(used(&a), 6);
    assert_eq!(s.clean_up(va(0xffff_c900_0000_0000), GB1).unwrap(), 4);
    assert_eq!(
        used(&a),
        2,
        "root and the permanent kernel-half PDPT remain"
    );
}

#[test]
fn map_rejects_overlap_and_changes_nothing() {
    let (a, s) = space(64);
    s.map(va(0x40_0000 + 5 * KB4), &data_frames(1, 0x9000_0000), RW)
        .unwrap();
    let before = a.stats();
    let err = s
        .map(va(0x40_0000), &data_frames(10, 0xa000_0000), RW)
        .unwrap_err();
    assert_eq!(
        err,
        MapError::AlreadyMapped {
            va: va(0x40_0000 + 5 * KB4)
        }
    );
    assert_eq!(a.stats().used, before.used);
    assert!(s.translate(va(0x40_0000)).is_none());
    assert_eq!(s.rss(), 1);
    // Over a huge leaf, too.
    s.map_contiguous(va(0x80_0000), PhysAddr::new(0x20_0000_0000), MB2, RW, true)
        .unwrap();
    let err = s
        .map(va(0x80_0000 + KB4), &data_frames(1, 0), RW)
        .unwrap_err();
    assert_eq!(
        err,
        MapError::AlreadyMapped {
            va: va(0x80_0000 + KB4)
        }
    );
}

#[test]
fn a_conflict_late_in_a_big_map_rolls_everything_back() {
    let (a, s) = space(2048);
    let f = data_frames(1, 0x9000_0000);
    // Mapped page near the end of the range; its PD and leaf table exist.
    s.map(va(0xc000_0000 + 5 * MB2 + 7 * KB4), &f, RW).unwrap();
    let before = a.stats().used;
    // Needs new PDs for GiB 1 and 2 and their leaf tables, plus five leaf tables in GiB 3.
    let start = va(0x4000_0000);
    let len = 2 * GB1 + 6 * MB2;
    let err = s
        .map_contiguous(start, PhysAddr::new(0x10_0000_0000), len, RW, false)
        .unwrap_err();
    assert_eq!(
        err,
        MapError::AlreadyMapped {
            va: va(0xc000_0000 + 5 * MB2 + 7 * KB4)
        }
    );
    assert_eq!(
        a.stats().used,
        before,
        "every table the map installed was freed"
    );
    assert_eq!(s.mappings(start, len).count(), 1);
    assert_eq!(s.rss(), 1);
    // Huge leaves written before the conflict are rolled back too.
    let err = s
        .map_contiguous(
            va(0xc000_0000),
            PhysAddr::new(0x10_0000_0000),
            6 * MB2,
            RW,
            true,
        )
        .unwrap_err();
    assert!(matches!(err, MapError::AlreadyMapped { .. }));
    assert_eq!(s.mappings(va(0xc000_0000), 6 * MB2).count(), 1);
    assert_eq!(a.stats().used, before);
    // A table reaching outside the range stays (others may use it), empty.
    let err = s
        .map(va(0xc000_0000 + 5 * MB2 - 2 * KB4), &data_frames(10, 0), RW)
        .unwrap_err();
    assert!(matches!(err, MapError::AlreadyMapped { .. }));
    assert_eq!(s.mappings(va(0xc000_0000), 6 * MB2).count(), 1);
    assert_eq!(a.stats().used, before + 1);
}

#[test]
fn bad_arguments_are_typed_errors() {
    let (_a, s) = space(16);
    let f = data_frames(2, 0x9000_0000);
    assert_eq!(
        s.map(va(0x1001), &f, RW),
        Err(MapError::Misaligned {
            addr: 0x1001,
            align: KB4
        })
    );
    assert_eq!(
        s.unmap(va(0x1000), 0x800, |_, _| {}),
        Err(MapError::Misaligned {
            addr: 0x800,
            align: KB4
        })
    );
    // Crossing the canonical hole.
    assert!(matches!(
        s.map(va(0x7fff_ffff_f000), &f, RW),
        Err(MapError::InvalidRange { .. })
    ));
    assert!(matches!(
        s.map_contiguous(va(0), PhysAddr::new(0x123), KB4, RW, false),
        Err(MapError::Misaligned { .. })
    ));
    assert!(matches!(
        s.map_contiguous(
            va(0),
            PhysAddr::new(PhysAddr::MASK & !0xfff),
            2 * KB4,
            RW,
            false
        ),
        Err(MapError::InvalidRange { .. })
    ));
    assert_eq!(
        MapError::from(AddrError::NonCanonical { addr: 1 << 47 }),
        MapError::NonCanonical { addr: 1 << 47 }
    );
    // Empty operations succeed and do nothing.
    s.map(va(0x1000), &[], RW).unwrap();
    assert!(s.unmap(va(0x1000), 0, |_, _| {}).unwrap().is_empty());
    // The last page of the lower half is usable.
    s.map(va(0x7fff_ffff_f000), &f[..1], RW).unwrap();
    assert!(s.translate(va(0x7fff_ffff_ffff)).is_some());
}

#[test]
fn huge_mappings_where_aligned() {
    let (a, s) = space(64);
    // 1 MiB head, two 2 MiB leaves, 4 KiB tail; physical offset matches the virtual one.
    let v = va(0xffff_c900_0010_0000);
    let p = PhysAddr::new(0x40_0010_0000);
    let len = MB2 - 0x10_0000 + 2 * MB2 + KB4;
    s.map_contiguous(v, p, len, RW, true).unwrap();
    assert_eq!(s.rss() as u64, len / KB4);
    let t = s.translate(va(0xffff_c900_0020_0000 + 12345)).unwrap();
    assert_eq!(t.size, MB2);
    assert_eq!(t.pa, PhysAddr::new(0x40_0020_0000 + 12345));
    assert!(t.flags.contains(PageTableFlags::HUGE_PAGE));
    assert_eq!(s.translate(v).unwrap().size, KB4);
    let maps: Vec<Mapping> = s.mappings(v, len).collect();
    assert_eq!(maps.iter().filter(|m| m.size == MB2).count(), 2);
    assert_eq!(maps.len() as u64, 256 + 2 + 1);
    assert!(maps.windows(2).all(|w| w[0].va < w[1].va));
    // root, PDPT, PD, two leaf tables (head and tail): no leaf table under the huge leaves.
    assert_eq!(used(&a), 5);
    // Cutting a huge leaf is refused, nothing changes.
    let err = s
        .unmap(va(0xffff_c900_0020_0000), KB4, |_, _| {})
        .unwrap_err();
    assert!(matches!(err, MapError::HugePageInTheWay { .. }));
    let err = s.protect(va(0xffff_c900_0030_0000), MB2, RW).unwrap_err();
    assert!(matches!(err, MapError::HugePageInTheWay { .. }));
    assert_eq!(s.rss() as u64, len / KB4);
    let mut sizes = Vec::new();
    let flush = s
        .unmap(va(0xffff_c900_0020_0000), 2 * MB2, |_, sz| sizes.push(sz))
        .unwrap();
    assert_eq!(sizes, vec![MB2, MB2]);
    assert_eq!(flush.pages(), 1024);
    // Misaligned physical offset: all 4 KiB pages.
    s.map_contiguous(va(0x4000_0000), PhysAddr::new(0x1000), MB2, RW, true)
        .unwrap();
    assert_eq!(s.translate(va(0x4000_0000)).unwrap().size, KB4);
    // An (empty) leaf table in the way: 4 KiB pages instead of a huge leaf.
    s.populate(va(0x8000_0000), MB2).unwrap();
    s.map_contiguous(va(0x8000_0000), PhysAddr::new(0x20_0000), MB2, RW, true)
        .unwrap();
    assert_eq!(s.translate(va(0x8000_0000)).unwrap().size, KB4);
    assert_eq!(
        s.populate(va(0xffff_c900_0020_0000), KB4),
        Ok(()),
        "nothing left in the way after the unmap"
    );
}

/// 2 MiB runs mapped with `map_huge`: one leaf each, unmapped as one callback each; a
/// leaf table in the way gets 4 KiB leaves of the same run; failures leave nothing behind.
#[test]
fn map_huge_maps_each_run_with_one_leaf() {
    let (a, s) = space(64);
    let runs: Vec<PhysFrame<Size2MiB>> = (0..3)
        .map(|k| PhysFrame::containing_address(PhysAddr::new(0x40_0000_0000 + k * 4 * MB2)))
        .collect();
    let v = va(0xffff_c900_0020_0000);
    s.map_huge(v, &runs, RW).unwrap();
    // root, PDPT, PD: no leaf table at all.
    assert_eq!(used(&a), 3);
    assert_eq!(s.rss() as u64, 3 * MB2 / KB4);
    let t = s.translate(v + (2 * MB2 + 0x1234)).unwrap();
    assert_eq!((t.size, t.pa), (MB2, runs[2].start_address() + 0x1234));
    assert_eq!(s.mappings(v, 3 * MB2).count(), 3);
    // Overlap: refused, nothing changes.
    assert!(matches!(
        s.map_huge(v + 2 * MB2, &runs[..1], RW),
        Err(MapError::AlreadyMapped { .. })
    ));
    assert!(matches!(
        s.map_huge(v + KB4, &runs[..1], RW),
        Err(MapError::Misaligned { .. })
    ));
    assert_eq!(s.map_huge(v, &[], RW), Ok(()));
    let mut back = Vec::new();
    let flush = s
        .unmap(v, 3 * MB2, |pa, size| back.push((pa, size)))
        .unwrap();
    let want: Vec<_> = runs.iter().map(|r| (r.start_address(), MB2)).collect();
    assert_eq!((back, flush.pages()), (want, 3 * 512));
    // A leaf table left by a 4 KiB mapping: that chunk gets 512 4 KiB leaves of its run.
    s.map(v + MB2, &data_frames(1, 0x9000_0000), RW).unwrap();
    let _ = s.unmap(v + MB2, KB4, |_, _| {}).unwrap();
    s.map_huge(v, &runs[..2], RW).unwrap();
    assert_eq!(s.translate(v).unwrap().size, MB2);
    let t = s.translate(v + MB2 + 5 * KB4 + 7).unwrap();
    assert_eq!((t.size, t.pa), (KB4, runs[1].start_address() + 5 * KB4 + 7));
    let _ = s.unmap(v, 2 * MB2, |_, _| {}).unwrap();
    // Freeing the empty leaf table first (the caller owns the range) restores the huge leaf.
    assert_eq!(s.clean_up(v, 2 * MB2).unwrap(), 1);
    s.map_huge(v, &runs[..2], RW).unwrap();
    assert_eq!(s.translate(v + MB2).unwrap().size, MB2);
    let _ = s.unmap(v, 2 * MB2, |_, _| {}).unwrap();
    // A map that needs a new PDPT and PD fails at each table allocation without a trace.
    let far = va(0xffff_9000_0000_0000);
    for n in 1.. {
        let before = used(&a);
        a.fail_nth(Some(n));
        match s.map_huge(far, &runs, RW) {
            Err(MapError::OutOfFrames) => {
                assert_eq!(used(&a), before, "n = {n}");
                assert_eq!(s.mappings(far, 3 * MB2).count(), 0);
            }
            Ok(()) => {
                assert_eq!(n, 3, "two tables, two failure points");
                break;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    a.fail_nth(None);
    assert_eq!(s.translate(far).unwrap().size, MB2);
}

#[test]
fn pte_slots_are_the_leaf_entries() {
    let (a, s) = space(64);
    let v = va(0xffff_c900_0000_3000);
    assert_eq!(s.pte_slot(v), None);
    s.populate(v, 3 * KB4).unwrap();
    let slots: Vec<PhysAddr> = (0..3).map(|k| s.pte_slot(v + k * KB4).unwrap()).collect();
    assert_eq!(slots[1] - slots[0], 8);
    assert_eq!(slots[0].as_u64() % KB4, 3 * 8);
    // Writing a slot maps the page.
    let f = data_frames(1, 0x9000_0000)[0];
    let pte = f.start_address().as_u64() | RW.bits();
    a.arena().write(slots[2], &pte.to_ne_bytes()).unwrap();
    assert_eq!(s.translate(v + 2 * KB4).unwrap().pa, f.start_address());
    // Under a huge leaf there is no 4 KiB slot.
    let h = va(0xffff_c900_4000_0000);
    s.map_contiguous(h, PhysAddr::new(0x40_0000_0000), MB2, RW, true)
        .unwrap();
    assert_eq!(s.pte_slot(h + KB4), None);
}

/// A table entry pointing outside the arena (a page table written to as data) reads as "not
/// mapped" on every walk and is a typed error for the range operations; nothing is read
/// outside the arena. Each of the three table levels on the way to a page is corrupted in
/// turn, with frames just below and just past the arena, far below and far above it.
#[test]
fn entries_pointing_outside_the_arena_are_never_followed() {
    let (a, s) = space(64);
    let (base, end) = (a.arena().base().as_u64(), a.arena().end().as_u64());
    let v = va(0xffff_c900_0020_5000);
    let f = data_frames(1, 0x9000_0000)[0];
    s.map(v, &[f], RW).unwrap();
    let l = crate::tlb::lin(v);
    let bad = [
        0,
        base - KB4,
        end,
        end + GB1,
        base + (1 << 32),
        crate::entry::ADDR_MASK,
    ];
    let mut t = s.root_table();
    for level in [4, 3, 2] {
        let entry = &t[walk::index(l, level)];
        let good = entry.load(Ordering::Relaxed);
        for &pa in &bad {
            entry.store(
                crate::entry::Pte::new(PhysAddr::new(pa), RW),
                Ordering::Relaxed,
            );
            let what = format!("level {level} entry -> {pa:#x}");
            assert!(s.translate(v).is_none(), "{what}");
            // A PD entry's target is not read by `pte_slot`: it names the slot's address,
            // which is outside the arena (writing it through the arena is refused).
            let slot = (level == 2).then(|| PhysAddr::new(pa + walk::index(l, 1) as u64 * 8));
            assert_eq!(s.pte_slot(v), slot, "{what}");
            assert_eq!(s.mappings(v, KB4).count(), 0, "{what}");
            assert_eq!(s.mappings(v, KB4).fold(0, |n, _| n + 1), 0, "{what}");
            // Unmap skips what it cannot read, as a hole; map refuses to build under it.
            let mut called = false;
            let flush = s.unmap(v, KB4, |_, _| called = true).unwrap();
            assert!(!called && flush.pages() == 0, "{what}");
            assert!(
                matches!(s.map(v + KB4, &[f], RW), Err(MapError::Arena(_))),
                "{what}"
            );
        }
        entry.store(good, Ordering::Relaxed);
        assert_eq!(s.translate(v).unwrap().pa, f.start_address());
        t = s.child(good).unwrap();
    }
    assert_eq!(s.rss(), 1);
}

#[test]
fn populate_then_map_allocates_nothing_more() {
    let (a, s) = space(64);
    s.populate(va(0x1_0000_0000), 4 * MB2).unwrap();
    let after_populate = used(&a);
    assert_eq!(after_populate, 1 + 1 + 1 + 4);
    assert!(s.translate(va(0x1_0000_0000)).is_none());
    s.map_contiguous(
        va(0x1_0000_0000),
        PhysAddr::new(0x9000_0000),
        4 * MB2,
        RW,
        false,
    )
    .unwrap();
    assert_eq!(used(&a), after_populate);
    // populate over mappings keeps them.
    s.populate(va(0x1_0000_0000), KB4).unwrap();
    assert!(s.translate(va(0x1_0000_0000)).is_some());
    s.populate(va(0x2_0000_0000), MB2).unwrap();
    let huge_free = s.clean_up(va(0x2_0000_0000), MB2).unwrap();
    assert_eq!(
        huge_free, 1,
        "only the leaf table lies inside a 2 MiB range"
    );
}

#[test]
fn clean_up_frees_only_empty_tables_inside_the_range() {
    let (a, s) = space(64);
    s.map(va(0x20_0000), &data_frames(1, 0x9000_0000), RW)
        .unwrap();
    s.map(va(0x40_0000), &data_frames(1, 0x9000_0000), RW)
        .unwrap();
    let _ = s.unmap(va(0x20_0000), KB4, |_, _| {}).unwrap();
    // Range covers the first leaf table only partially: nothing freed.
    assert_eq!(s.clean_up(va(0x20_0000), KB4).unwrap(), 0);
    assert_eq!(s.clean_up(va(0x20_0000), MB2).unwrap(), 1);
    // The second leaf table still holds a mapping.
    assert_eq!(s.clean_up(va(0), GB1).unwrap(), 0);
    let _ = s.unmap(va(0x40_0000), KB4, |_, _| {}).unwrap();
    assert_eq!(s.clean_up(va(0), 512 * GB1).unwrap(), 3);
    assert_eq!(used(&a), 1);
}

/// For every n, fail the n-th frame allocation of a big map: nothing may be left behind.
#[test]
fn failed_map_leaves_nothing_behind() {
    let (a, s) = space(512);
    // Crosses a 512 GiB boundary: one new PDPT (the first exists for the page at 0x1000),
    // two PDs and five leaf tables (2 + 2 + a 12 KiB tail).
    let start = va(0x7f_ffe0_0000 - MB2);
    let len = 4 * MB2 + 3 * KB4;
    let frames = data_frames(len / KB4, 0x9000_0000);
    s.map(va(0x1000), &frames[..1], RW).unwrap();
    let baseline: FrameStats = a.stats();
    let mut failures = 0;
    for n in 1.. {
        a.fail_nth(Some(n));
        match s.map(start, &frames, RW) {
            Err(MapError::OutOfFrames) => {
                failures += 1;
                assert_eq!(a.stats().used, baseline.used, "n = {n}");
                assert_eq!(s.mappings(start, len).count(), 0);
                assert_eq!(s.rss(), 1);
                assert!(s.translate(start).is_none());
            }
            Ok(()) => break,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    a.fail_nth(None);
    assert_eq!(failures, 1 + 2 + 5);
    assert_eq!(s.rss() as u64, 1 + len / KB4);
    assert_eq!(s.mappings(start, len).count() as u64, len / KB4);
    // Same for huge maps and populate.
    let hv = va(0xffff_9000_0000_0000);
    for n in 1.. {
        let before = a.stats().used;
        a.fail_nth(Some(n));
        match s.map_contiguous(hv, PhysAddr::new(0x10_0000_0000), 3 * MB2 + KB4, RW, true) {
            Err(MapError::OutOfFrames) => assert_eq!(a.stats().used, before),
            Ok(()) => break,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    a.fail_nth(None);
    assert_eq!(s.translate(hv).unwrap().size, MB2);
}

#[test]
fn protect_changes_flags_and_reports_the_flush() {
    let (_a, s) = space(64);
    let base = va(0x10_0000);
    s.map(base, &data_frames(8, 0x9000_0000), RW).unwrap();
    let ro = PageTableFlags::PRESENT | PageTableFlags::NO_EXECUTE;
    let flush = s.protect(base + 2 * KB4, 10 * KB4, ro).unwrap();
    assert_eq!((flush.start(), flush.pages()), (base + 2 * KB4, 6));
    assert_eq!(s.translate(base + 2 * KB4).unwrap().flags, ro);
    assert_eq!(s.translate(base + KB4).unwrap().flags, RW);
    // Same flags again: nothing changed, nothing to flush.
    assert!(s.protect(base + 2 * KB4, 6 * KB4, ro).unwrap().is_empty());
}

#[test]
fn kernel_half_is_shared_through_preallocated_tables() {
    let a = allocator(256);
    let kernel = AddressSpace::new(Arc::clone(&a)).unwrap();
    let vmalloc_start = va(0xffff_c900_0000_0000);
    let vmalloc_end = va(0xffff_e900_0000_0000);
    kernel.preallocate(vmalloc_start, vmalloc_end).unwrap();
    let pdpts = used(&a) - 1;
    assert_eq!(pdpts, 64, "32 TiB of kernel range = 64 PML4 entries");
    let user1 = AddressSpace::new_sharing_kernel(&kernel).unwrap();
    let user2 = AddressSpace::new_sharing_kernel(&kernel).unwrap();
    assert!(user1.shares_kernel_with(&kernel) && user2.shares_kernel_with(&user1));
    // A kernel mapping made after the spaces were created is seen by all of them.
    let f = data_frames(3, 0x9000_0000);
    kernel.map(vmalloc_start + 5 * MB2, &f, RW).unwrap();
    for sp in [&kernel, &user1, &user2] {
        assert_eq!(
            sp.translate(vmalloc_start + 5 * MB2).unwrap().pa,
            f[0].start_address()
        );
    }
    // And one made through a user space, too.
    user1.map(vmalloc_start + 9 * GB1, &f, RW).unwrap();
    assert!(kernel.translate(vmalloc_start + 9 * GB1).is_some());
    // User halves are private.
    user1.map(va(0x40_0000), &f, RW).unwrap();
    assert!(user2.translate(va(0x40_0000)).is_none());
    // Outside the preallocated range a user space's kernel mapping is private.
    user2.map(va(0xffff_f000_0000_0000), &f, RW).unwrap();
    assert!(kernel.translate(va(0xffff_f000_0000_0000)).is_none());
    // The shared PDPTs are never freed by clean_up.
    let _ = kernel.unmap(vmalloc_start, 16 * GB1, |_, _| {}).unwrap();
    kernel.clean_up(vmalloc_start, 32 * GB1).unwrap();
    drop(kernel);
    assert!(user2.translate(vmalloc_start + 5 * MB2).is_none());
    drop(user1);
    drop(user2);
    assert_eq!(
        used(&a),
        0,
        "every table freed once the last sharer is gone"
    );
}

#[test]
fn mappings_skip_holes() {
    let (_a, s) = space(64);
    let f = data_frames(4, 0x9000_0000);
    s.map(va(0x3000), &f[..1], RW).unwrap();
    s.map(va(0x80_0000_0000), &f[1..2], RW).unwrap();
    s.map(va(0x7fff_ffff_f000), &f[2..3], RW).unwrap();
    let all: Vec<u64> = s.mappings(va(0), 1 << 47).map(|m| m.va.as_u64()).collect();
    assert_eq!(all, vec![0x3000, 0x80_0000_0000, 0x7fff_ffff_f000]);
    assert_eq!(s.mappings(va(0x4000), 0x80_0000_0000 - 0x4000).count(), 0);
    assert_eq!(s.mappings(va(0x7fff_ffff_f000), u64::MAX).count(), 1);
}

#[test]
fn racing_table_installs_lose_nothing() {
    let (a, s) = space(256);
    let s = Arc::new(s);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                // All four threads need the same PDPT, PD and leaf table.
                let f = data_frames(8, 0x9000_0000 + t * 0x10_0000);
                s.map(va(0x5000_0000 + t * 8 * KB4), &f, RW).unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(used(&a), 4, "losers gave their frames back");
    assert_eq!(s.rss(), 32);
    assert_eq!(s.mappings(va(0x5000_0000), MB2).count(), 32);
}

#[test]
fn fast_path_conflict_rolls_back_its_own_leaves() {
    let (a, s) = space(64);
    let base = va(0xffff_c900_0000_0000);
    // A leaf table exists (page 10 mapped): maps inside it take the fast path.
    let mine = data_frames(1, 0x9000_0000);
    s.map(base + 10 * KB4, &mine, RW).unwrap();
    let before = used(&a);
    let frames = data_frames(8, 0x8000_0000);
    assert_eq!(
        s.map(base + 4 * KB4, &frames, RW),
        Err(MapError::AlreadyMapped {
            va: base + 10 * KB4
        })
    );
    for i in 4..12 {
        let t = s.translate(base + i * KB4);
        assert_eq!(t.is_some(), i == 10, "page {i}");
    }
    assert_eq!(s.rss(), 1);
    assert_eq!(used(&a), before);
    // The same range without the conflict maps.
    s.map(base + 2 * KB4, &frames, RW).unwrap();
    assert_eq!(s.rss(), 9);
    assert_eq!(used(&a), before);
}

#[test]
fn fast_unmap_of_a_hole_and_inside_a_huge_leaf() {
    let (_a, s) = space(64);
    let base = va(0xffff_c900_0000_0000);
    // No table at all: nothing to clear.
    let f = s
        .unmap(base + KB4, 3 * KB4, |_, _| panic!("no leaf"))
        .unwrap();
    assert!(f.is_empty());
    // A 2 MiB leaf: a 4 KiB unmap inside it cuts it and is refused (general path), a map
    // inside it is AlreadyMapped; nothing changes.
    let huge = base + MB2;
    s.map_contiguous(huge, PhysAddr::new(0x4000_0000), MB2, RW, true)
        .unwrap();
    assert_eq!(s.translate(huge).unwrap().size, MB2);
    assert_eq!(
        s.unmap(huge + KB4, KB4, |_, _| panic!("no leaf")),
        Err(MapError::HugePageInTheWay { va: huge + KB4 })
    );
    assert_eq!(
        s.map(huge + KB4, &data_frames(1, 0x8000_0000), RW),
        Err(MapError::AlreadyMapped { va: huge + KB4 })
    );
    assert_eq!(s.rss(), 512);
    // The whole chunk unmaps as one leaf.
    let mut seen = Vec::new();
    let _ = s
        .unmap(huge, MB2, |pa, size| seen.push((pa, size)))
        .unwrap();
    assert_eq!(seen, [(PhysAddr::new(0x4000_0000), MB2)]);
    assert_eq!(s.rss(), 0);
}

#[test]
fn rss_is_exact_when_pages_move_between_cpu_slots() {
    let (_a, s) = space(64);
    let s = Arc::new(s);
    let base = va(0xffff_c900_0000_0000);
    let frames = data_frames(16, 0x8000_0000);
    let s2 = Arc::clone(&s);
    thread::spawn(move || {
        crate::cpu::set_this_cpu(0);
        s2.map(base, &frames, RW).unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(s.rss(), 16);
    let s2 = Arc::clone(&s);
    thread::spawn(move || {
        crate::cpu::set_this_cpu(1);
        let _ = s2.unmap(base, 10 * KB4, |_, _| {}).unwrap();
    })
    .join()
    .unwrap();
    assert_eq!(s.rss(), 6);
}

/// `mappings` over ranges that start and end anywhere (inside a page, at and across leaf
/// table boundaries, inside a huge leaf) reports exactly the leaves a page-by-page
/// `translate` finds, in order.
#[test]
fn mappings_agree_with_translate_for_any_range() {
    let (_a, s) = space(64);
    let base = 0xffff_c900_0000_0000u64;
    // Sparse 4 KiB pages in three leaf tables (around both table boundaries), one huge leaf.
    for p in [0u64, 1, 2, 7, 510, 511, 512, 513, 700, 1023, 1024, 1030] {
        s.map(
            va(base + p * KB4),
            &data_frames(1, 0x40_0000_0000 + p * KB4),
            RW,
        )
        .unwrap();
    }
    s.map_contiguous(
        va(base + 4 * MB2),
        PhysAddr::new(0x41_0000_0000),
        MB2,
        RW,
        true,
    )
    .unwrap();
    let brute = |lo: u64, hi: u64| {
        let mut v = Vec::new();
        let mut l = lo & !(KB4 - 1);
        while l < hi {
            match s.translate(va(l)) {
                Some(t) => {
                    let start = l & !(t.size - 1);
                    v.push((start, t.pa.as_u64() & !(t.size - 1), t.size));
                    l = start + t.size;
                }
                None => l += KB4,
            }
        }
        v
    };
    let offs = [
        0,
        1,
        100,
        KB4 - 1,
        KB4,
        2 * KB4 + 5,
        509 * KB4,
        511 * KB4 + 7,
        MB2 - 1,
        MB2,
    ];
    let starts = [
        0,
        KB4,
        3 * KB4,
        510 * KB4 + 9,
        MB2,
        MB2 + KB4,
        4 * MB2 + 3 * KB4,
    ];
    for &st in &starts {
        for &len in offs.iter().chain(&[3 * MB2, 5 * MB2]) {
            let got: Vec<_> = s
                .mappings(va(base + st), len)
                .map(|m| (m.va.as_u64(), m.pa.as_u64(), m.size))
                .collect();
            assert_eq!(
                got,
                brute(base + st, base + st + len),
                "start {st:#x} len {len:#x}"
            );
            let folded = s.mappings(va(base + st), len).fold(Vec::new(), |mut v, m| {
                v.push((m.va.as_u64(), m.pa.as_u64(), m.size));
                v
            });
            assert_eq!(folded, got, "fold: start {st:#x} len {len:#x}");
        }
    }
}
