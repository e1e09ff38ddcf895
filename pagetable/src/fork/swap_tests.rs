//! Unit tests of fork's non-present entries: the encoding, the swap map and its
//! continuations, copies that carry swap and migration entries, the continuation retry, and
//! the undo of a copy whose continuation cannot be allocated.

use super::tests::{KB4, RW, alloc_n, allocator, va};
use super::*;
use crate::addr::PhysAddr;
use crate::frame::FrameAllocator;

/// The leaf-table slot of `v` in `space` (its leaf table must exist).
fn slot(space: &AddressSpace, v: VirtAddr) -> &PageTableEntry {
    let t = leaf_table(space, lin(v)).unwrap().unwrap();
    &t[index(lin(v), 1)]
}

fn get(space: &AddressSpace, v: VirtAddr) -> Pte {
    leaf_table(space, lin(v))
        .unwrap()
        .map_or(Pte::UNUSED, |t| t[index(lin(v), 1)].load(Ordering::Acquire))
}

/// Store a raw entry at `v` (creating the tables), as a swapper or a corrupted table would.
fn put(space: &AddressSpace, v: VirtAddr, p: Pte) {
    space.populate(v, KB4).unwrap();
    slot(space, v).store(p, Ordering::Release);
}

#[test]
fn swap_entry_encoding() {
    assert_eq!(SwapEntry::from_pte(Pte::UNUSED), None);
    let present = Pte::new(PhysAddr::new(0x5000), PageTableFlags::PRESENT);
    assert_eq!(SwapEntry::from_pte(present), None);

    let e = SwapEntry::from_pte(Pte::from_bits(7 << 12)).unwrap();
    assert_eq!(
        (e.kind(), e.swap_type(), e.offset()),
        (SwapKind::Swap, 0, 7)
    );
    let e = SwapEntry::from_pte(Pte::from_bits((26 << 59) | (3 << 12))).unwrap();
    assert_eq!(
        (e.kind(), e.swap_type(), e.offset()),
        (SwapKind::Swap, 26, 3)
    );
    for ty in [27u64, 30, 31] {
        let e = SwapEntry::from_pte(Pte::from_bits(ty << 59)).unwrap();
        assert_eq!(e.kind(), SwapKind::Other, "type {ty}");
    }

    let frame = PhysFrame::containing_address(PhysAddr::new(0x1234_5000));
    let w = SwapEntry::migration(frame, true);
    assert_eq!(w.kind(), SwapKind::MigrationWrite);
    assert!(!w.pte().is_present());
    assert_eq!(w.pte().addr(), frame.start_address());
    let r = SwapEntry::migration(frame, false);
    assert_eq!(w.to_read_migration(), r);
    assert_eq!(r.to_write_migration(), w);
    assert_eq!(r.to_read_migration(), r);
    // Other bits (Linux's swap soft-dirty, bit 1) survive the downgrade.
    let soft = SwapEntry::from_pte(Pte::from_bits(w.pte().bits() | 2)).unwrap();
    assert_eq!(soft.to_read_migration().pte().bits(), r.pte().bits() | 2);
    let swp = SwapEntry::from_pte(Pte::from_bits(7 << 12)).unwrap();
    assert_eq!(swp.to_read_migration(), swp);
    assert!(format!("{swp:?}").contains("Swap"));
}

#[test]
fn swap_map_counts_with_continuations() {
    let a = allocator();
    let used = a.stats().used;
    let m = SwapMap::with_limits(Arc::clone(&a), 2, 3);
    let e = m.alloc().unwrap();
    assert_eq!((e.kind(), e.offset()), (SwapKind::Swap, 1));
    assert_eq!((m.count(e), m.slots_in_use()), (1, 1));
    assert_eq!(m.duplicate(e), Dup::Counted);
    assert_eq!(
        m.duplicate(e),
        Dup::NeedsContinuation,
        "2 is the map's limit"
    );
    assert_eq!(m.count(e), 2);
    m.add_continuation(e).unwrap();
    assert_eq!((m.continuation_frames(), a.stats().used), (1, used + 1));
    for _ in 0..3 {
        assert_eq!(m.duplicate(e), Dup::Counted);
    }
    assert_eq!((m.count(e), m.duplicate(e)), (5, Dup::NeedsContinuation));
    // A failing allocation changes nothing.
    a.fail_nth(Some(1));
    assert_eq!(m.add_continuation(e), Err(MapError::OutOfFrames));
    a.fail_nth(None);
    assert_eq!((m.count(e), m.continuation_frames()), (5, 1));
    m.add_continuation(e).unwrap();
    assert_eq!(m.duplicate(e), Dup::Counted);
    assert_eq!((m.count(e), m.continuation_frames()), (6, 2));
    // A continuation that is not needed any more is given back at once.
    let f = m.alloc().unwrap();
    m.add_continuation(f).unwrap();
    assert_eq!((m.continuation_frames(), a.stats().used), (2, used + 2));
    // Counts dropping give continuations back; at zero the slot is free (and reused).
    for want in [5, 4, 3, 2, 1] {
        assert!(m.free(e));
        assert_eq!(m.count(e), want);
    }
    assert_eq!(m.continuation_frames(), 0);
    assert!(m.free(e));
    assert_eq!((m.count(e), m.slots_in_use()), (0, 1));
    assert!(!m.free(e), "a free slot");
    assert_eq!(m.duplicate(e), Dup::NotOurs);
    assert_eq!(m.alloc().unwrap(), e, "freed offsets are reused");
    // Not this map's: another area, a migration entry.
    let other = SwapEntry::from_pte(Pte::from_bits((3 << 59) | (1 << 12))).unwrap();
    assert_eq!((m.duplicate(other), m.count(other)), (Dup::NotOurs, 0));
    let mig = SwapEntry::migration(PhysFrame::containing_address(PhysAddr::new(0)), true);
    assert_eq!(m.duplicate(mig), Dup::NotOurs);
    // Dropping the map returns its continuation frames.
    assert_eq!(m.duplicate(f), Dup::Counted);
    m.add_continuation(f).unwrap();
    assert_eq!(a.stats().used, used + 1);
    drop(m);
    assert_eq!(a.stats().used, used);
}

#[test]
fn install_swap_entry_replaces_a_present_leaf() {
    let a = allocator();
    let s = AddressSpace::new(Arc::clone(&a)).unwrap();
    let v = va(0x40_0000);
    let f = alloc_n(&a, 1);
    s.map(v, &f, RW).unwrap();
    let m = SwapMap::new(Arc::clone(&a));
    let e = m.alloc().unwrap();
    let old = install_swap_entry(&s, v, e).unwrap();
    assert_eq!(old.addr(), f[0].start_address());
    assert!(old.is_present());
    assert_eq!(get(&s, v), e.pte());
    assert!(s.translate(v).is_none());
    assert_eq!(s.rss(), 1, "a non-present leaf counts like a page");
    assert_eq!(
        install_swap_entry(&s, v, e),
        Err(MapError::NotMapped { va: v })
    );
    assert_eq!(
        install_swap_entry(&s, v + 8, e),
        Err(MapError::Misaligned {
            addr: v.as_u64() + 8,
            align: KB4
        })
    );
    assert!(matches!(
        s.map(v, &f, RW),
        Err(MapError::AlreadyMapped { .. })
    ));
    let h = va(0x4000_0000);
    s.map_contiguous(h, PhysAddr::new(0x40_0000_0000), 2 << 20, RW, true)
        .unwrap();
    assert_eq!(
        install_swap_entry(&s, h, e),
        Err(MapError::HugePageInTheWay { va: h })
    );
}

/// Fails on the code before non-present entries were copied: the child's slot stayed empty.
#[test]
fn non_present_entries_survive_into_the_child() {
    let a = allocator();
    let parent = AddressSpace::new(Arc::clone(&a)).unwrap();
    let v = va(0x40_0000);
    let f = alloc_n(&a, 2);
    parent.map(v, &f[..1], RW).unwrap();
    let swp = Pte::from_bits(5 << 12);
    let mig_w = SwapEntry::migration(f[1], true).pte();
    let poison = Pte::from_bits((27 << 59) | (9 << 12) | 2);
    put(&parent, v + KB4, swp);
    put(&parent, v + 2 * KB4, mig_w);
    put(&parent, v + 4 * KB4, poison);
    let used = a.stats().used;

    // Shared: every entry as it is, nothing counted (no swap area), no reference taken.
    let child = AddressSpace::new(Arc::clone(&a)).unwrap();
    let s = copy_range(&child, &parent, v, v + 5 * KB4, VmaKind::Shared).unwrap();
    assert_eq!((s.copied, s.swap, s.empty, s.continuations), (4, 3, 1, 0));
    for (k, p) in [(1, swp), (2, mig_w), (3, Pte::UNUSED), (4, poison)] {
        assert_eq!(get(&child, v + k * KB4), p, "page {k}");
        assert_eq!(get(&parent, v + k * KB4), p, "page {k}");
    }
    assert_eq!(child.rss(), 4);
    assert_eq!((a.refcount(f[0]), a.refcount(f[1])), (2, 1));

    // Private: the write migration entry becomes a read one on both sides.
    let child2 = AddressSpace::new(Arc::clone(&a)).unwrap();
    let s = copy_range(&child2, &parent, v, v + 5 * KB4, VmaKind::Private).unwrap();
    assert_eq!((s.copied, s.swap), (4, 3));
    let mig_r = SwapEntry::migration(f[1], false).pte();
    assert_eq!(get(&child2, v + 2 * KB4), mig_r);
    assert_eq!(get(&parent, v + 2 * KB4), mig_r);
    assert_eq!(get(&child2, v + KB4), swp);
    assert_eq!(get(&child2, v + 4 * KB4), poison);
    assert_eq!(
        s.flush.pages(),
        1,
        "only the present page is write-protected"
    );
    assert_eq!(a.refcount(f[1]), 1, "a migration entry takes no reference");
    // Unmapping counts them as the copy did.
    let _ = child2.unmap(v, 5 * KB4, |_, _| {}).unwrap();
    assert_eq!(child2.rss(), 0);
    drop((child, child2));
    assert_eq!(a.stats().used, used);
}

/// Fails on the code before: the check of the destination saw present leaves only, and the
/// copy overwrote the swap entry.
#[test]
fn a_non_present_destination_entry_is_already_mapped() {
    let a = allocator();
    let parent = AddressSpace::new(Arc::clone(&a)).unwrap();
    let child = AddressSpace::new(Arc::clone(&a)).unwrap();
    let v = va(0x40_0000);
    parent.map(v, &alloc_n(&a, 4), RW).unwrap();
    let swp = Pte::from_bits(5 << 12);
    put(&child, v + 2 * KB4, swp);
    let used = a.stats().used;
    assert_eq!(
        copy_range(&child, &parent, v, v + 4 * KB4, VmaKind::Private),
        Err(MapError::AlreadyMapped { va: v + 2 * KB4 })
    );
    assert_eq!(get(&child, v + 2 * KB4), swp);
    assert_eq!(a.stats().used, used);
    assert!(
        parent
            .translate(v)
            .unwrap()
            .flags
            .contains(PageTableFlags::WRITABLE)
    );
    // A huge leaf in the destination, starting before the range: reported at the start.
    let h = va(0x4000_0000);
    child
        .map_contiguous(h, PhysAddr::new(0x40_0000_0000), 2 << 20, RW, true)
        .unwrap();
    parent.populate(h, 4 << 20).unwrap();
    parent.map(h + (1 << 20), &alloc_n(&a, 1), RW).unwrap();
    assert_eq!(
        copy_range(
            &child,
            &parent,
            h + (1 << 20),
            h + (3 << 20),
            VmaKind::Shared
        ),
        Err(MapError::AlreadyMapped { va: h + (1 << 20) })
    );
}

/// Pages: 0 present, 1 a swap entry, 2 present. The swap area's map holds 2, a continuation 2
/// more. Fails to compile on the code before (no swap map).
#[test]
fn a_continuation_is_allocated_between_batches_and_the_entry_retried() {
    let a = allocator();
    let m = SwapMap::with_limits(Arc::clone(&a), 2, 2);
    let parent = AddressSpace::new(Arc::clone(&a)).unwrap();
    let v = va(0x40_0000);
    let f = alloc_n(&a, 2);
    parent.map(v, &f[..1], RW).unwrap();
    parent.map(v + 2 * KB4, &f[1..], RW).unwrap();
    let e = m.alloc().unwrap();
    put(&parent, v + KB4, e.pte());
    let copy = |child: &AddressSpace| {
        copy_range_with_swap(child, &parent, v, v + 3 * KB4, VmaKind::Private, &m).unwrap()
    };

    // Count 1 -> 2: room in the map, one batch.
    let c1 = AddressSpace::new(Arc::clone(&a)).unwrap();
    let s = copy(&c1);
    assert_eq!((s.copied, s.swap, s.batches, s.continuations), (3, 1, 1, 0));
    assert_eq!((m.count(e), m.continuation_frames()), (2, 0));

    // Count 2 is the map's limit: the batch ends before the swap entry (page 0 copied), the
    // continuation is allocated with the locks dropped, and the copy resumes at the swap
    // entry with progress 0: a second batch copies it and page 2.
    let c2 = AddressSpace::new(Arc::clone(&a)).unwrap();
    let used = a.stats().used;
    let s = copy(&c2);
    assert_eq!((s.copied, s.swap, s.batches, s.continuations), (3, 1, 2, 1));
    assert_eq!((m.count(e), m.continuation_frames()), (3, 1));
    // The child's three tables and the continuation.
    assert_eq!(a.stats().used, used + 3 + 1);
    assert_eq!(get(&c2, v + KB4), e.pte());
    assert_eq!(c2.rss(), 3);
    assert_eq!(a.refcount(f[0]), 3);
    assert_eq!(a.refcount(f[1]), 3);

    // Count 3 -> 4 fits the continuation; 4 -> 5 needs another.
    let c3 = AddressSpace::new(Arc::clone(&a)).unwrap();
    assert_eq!(copy(&c3).continuations, 0);
    let c4 = AddressSpace::new(Arc::clone(&a)).unwrap();
    assert_eq!(copy(&c4).continuations, 1);
    assert_eq!((m.count(e), m.continuation_frames()), (5, 2));

    // Without a swap area the entry is copied uncounted.
    let c5 = AddressSpace::new(Arc::clone(&a)).unwrap();
    let s = copy_range(&c5, &parent, v, v + 3 * KB4, VmaKind::Private).unwrap();
    assert_eq!((s.swap, s.continuations), (1, 0));
    assert_eq!(m.count(e), 5);

    // Tearing the children down as exit would: the counts and continuations go back.
    for c in [&c1, &c2, &c3, &c4] {
        assert!(m.free(SwapEntry::from_pte(get(c, v + KB4)).unwrap()));
    }
    assert_eq!((m.count(e), m.continuation_frames()), (1, 0));
}

/// Pages: 0 and 3 present and writable (COW), 1 a swap entry with room, 2 a write migration
/// entry, 4 a swap entry at its map limit, whose continuation cannot be allocated. Fails to
/// compile on the code before (no swap map).
#[test]
fn a_failing_continuation_undoes_the_copy_and_leaks_nothing() {
    let a = allocator();
    let m = SwapMap::with_limits(Arc::clone(&a), 2, 2);
    let parent = AddressSpace::new(Arc::clone(&a)).unwrap();
    let v = va(0x40_0000);
    let f = alloc_n(&a, 3);
    parent.map(v, &f[..1], RW).unwrap();
    parent.map(v + 3 * KB4, &f[1..2], RW).unwrap();
    let roomy = m.alloc().unwrap();
    let full = m.alloc().unwrap();
    assert_eq!(m.duplicate(full), Dup::Counted);
    let mig_w = SwapEntry::migration(f[2], true).pte();
    put(&parent, v + KB4, roomy.pte());
    put(&parent, v + 2 * KB4, mig_w);
    put(&parent, v + 4 * KB4, full.pte());
    let before: Vec<Pte> = (0..5).map(|k| get(&parent, v + k * KB4)).collect();
    let used = a.stats().used;

    let child = AddressSpace::new(Arc::clone(&a)).unwrap();
    // The child's three tables, then the continuation: the 4th allocation fails.
    a.fail_nth(Some(4));
    let r = copy_range_with_swap(&child, &parent, v, v + 5 * KB4, VmaKind::Private, &m);
    a.fail_nth(None);
    assert_eq!(r, Err(MapError::OutOfFrames));

    // The child is empty again, the parent as it was, every count and reference back.
    assert_eq!(first_used(&child, lin(v), lin(v) + (2 << 20)), Ok(None));
    assert_eq!(child.rss(), 0);
    let after: Vec<Pte> = (0..5).map(|k| get(&parent, v + k * KB4)).collect();
    assert_eq!(after, before);
    assert_eq!((m.count(roomy), m.count(full)), (1, 2));
    assert_eq!(m.continuation_frames(), 0);
    assert_eq!((a.refcount(f[0]), a.refcount(f[1])), (1, 1));
    // What remains is the child's root and the tables reaching outside the range (its PDPT
    // and page directory, owned by its tree like a failed map's; the leaf table, inside the
    // range, was freed): dropping the child returns them.
    drop(child);
    assert_eq!(a.stats().used, used);

    // The same copy succeeds once the frame is there.
    let child = AddressSpace::new(Arc::clone(&a)).unwrap();
    let s = copy_range_with_swap(&child, &parent, v, v + 5 * KB4, VmaKind::Private, &m).unwrap();
    assert_eq!((s.copied, s.swap, s.continuations), (5, 3, 1));
    assert_eq!(
        (m.count(roomy), m.count(full), m.continuation_frames()),
        (2, 3, 1)
    );
    let mig_r = SwapEntry::migration(f[2], false).pte();
    assert_eq!(get(&parent, v + 2 * KB4), mig_r);
    assert_eq!(get(&child, v + 2 * KB4), mig_r);
}

/// An undo across two leaf tables, the failure in the second: the first leaf table (inside
/// the range) is freed with the second.
#[test]
fn an_undo_spanning_leaf_tables_frees_the_tables_inside_the_range() {
    let a: Arc<FrameAllocator> = allocator();
    let m = SwapMap::with_limits(Arc::clone(&a), 1, 1);
    let parent = AddressSpace::new(Arc::clone(&a)).unwrap();
    // 1,024 pages from a 2 MiB boundary: two whole leaf tables.
    let v = va(0x4000_0000);
    let n = 1024u64;
    let f: Vec<PhysFrame> = (0..n)
        .map(|i| PhysFrame::containing_address(PhysAddr::new(0x40_0000_0000 + i * KB4)))
        .collect();
    parent.map(v, &f, RW).unwrap();
    let e = m.alloc().unwrap();
    let last = v + (n - 1) * KB4;
    install_swap_entry(&parent, last, e).unwrap();
    let child = AddressSpace::new(Arc::clone(&a)).unwrap();
    let used = a.stats().used;
    // PDPT, page directory, two leaf tables, then the continuation.
    a.fail_nth(Some(5));
    let r = copy_range_with_swap(&child, &parent, v, v + n * KB4, VmaKind::Shared, &m);
    a.fail_nth(None);
    assert_eq!(r, Err(MapError::OutOfFrames));
    assert_eq!(child.rss(), 0);
    assert_eq!(child.mappings(v, n * KB4).count(), 0);
    assert_eq!(m.count(e), 1);
    // The PDPT and the page directory reach outside the 4 MiB range: they stay linked, owned
    // by the tree (as after a failed map), empty.
    assert_eq!(a.stats().used, used + 2);
    assert_eq!(child.clean_up(va(0), 1 << 39).unwrap(), 2);
    assert_eq!(a.stats().used, used);
}
