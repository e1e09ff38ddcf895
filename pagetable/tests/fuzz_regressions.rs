//! Plain reproducers of what the `pagetable` fuzz target (fuzz/src/pagetable.rs) turned up,
//! kept as regression tests (see the "Fuzz findings" section of docs/TESTING.md). They run under `cargo test`.

#![cfg(not(feature = "loom"))]

use std::sync::Arc;

use pagetable::{
    AddressSpace, FrameAllocator, MapError, PageTableFlags, PhysAddr, PhysArena, PhysFrame,
    VirtAddr, Zone,
};

const KB4: u64 = 4096;
/// 1,024 pages below the 512 GiB boundary (PML4 entries 0 and 1).
const BASE: u64 = 0x80_0000_0000 - 1024 * KB4;
const DEVICE: u64 = 0x100_0000_0000;

fn world() -> (Arc<FrameAllocator>, AddressSpace) {
    let arena = PhysArena::mmap(512 * KB4, PhysAddr::new(0x40_0000)).unwrap();
    let frames = Arc::new(FrameAllocator::new(Arc::new(arena)));
    let space = AddressSpace::new(Arc::clone(&frames)).unwrap();
    (frames, space)
}

/// Fuzz finding 1 (fuzz/corpus/pagetable crash input, by design): a `map_contiguous` whose
/// range starts in an empty PML4 subtree and runs into a page mapped in the next one fails
/// with `AlreadyMapped` at that page, maps nothing, frees the leaf tables it installed inside
/// its range, and leaves the PDPT and PD it installed (their spans reach outside the range)
/// linked: the frame count grows by 2. They are not leaked: `clean_up` over their spans and
/// dropping the space free them.
#[test]
fn failed_map_across_pml4_entries_keeps_only_outer_tables() {
    let (frames, space) = world();
    let f = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
    // Pages [1024, 2048): PML4 entry 1 (PDPT, PD, 2 leaf tables).
    space
        .map_contiguous(
            VirtAddr::new(BASE + 1024 * KB4),
            PhysAddr::new(DEVICE + 1024 * KB4),
            1024 * KB4,
            PageTableFlags::PRESENT,
            false,
        )
        .unwrap();
    let used = frames.stats().used;
    let rss = space.rss();
    // Pages [0, 1029) overlap the first mapping at page 1024.
    let r = space.map_contiguous(
        VirtAddr::new(BASE),
        PhysAddr::new(DEVICE),
        1029 * KB4,
        f,
        false,
    );
    assert_eq!(
        r,
        Err(MapError::AlreadyMapped {
            va: VirtAddr::new(0x80_0000_0000)
        })
    );
    assert_eq!(space.rss(), rss, "no leaf may stay mapped");
    assert!(space.translate(VirtAddr::new(BASE)).is_none());
    assert_eq!(space.mappings(VirtAddr::new(BASE), 1024 * KB4).count(), 0);
    // The PDPT (512 GiB span) and PD (1 GiB span) of PML4 entry 0 stay linked.
    assert_eq!(frames.stats().used, used + 2);
    // The same map with plain `map` fails the same way and adds nothing more.
    let pool: Vec<PhysFrame> = (0..1029)
        .map(|_| PhysFrame::containing_address(PhysAddr::new(DEVICE)))
        .collect();
    assert!(matches!(
        space.map(VirtAddr::new(BASE), &pool, f),
        Err(MapError::AlreadyMapped { .. })
    ));
    assert_eq!(frames.stats().used, used + 2);
    // Reclaimed by `clean_up` over the spans of those tables (PML4 entry 0 entirely)...
    // (a range from 0x1000 covers the PD's 1 GiB span but not the PDPT's, which starts at 0)
    let freed = space
        .clean_up(VirtAddr::new(0x1000), 0x80_0000_0000 - 0x1000)
        .unwrap();
    assert_eq!(freed, 1);
    let freed = space.clean_up(VirtAddr::new(0), 0x80_0000_0000).unwrap();
    assert_eq!(freed, 1);
    assert_eq!(frames.stats().used, used);
    // ... and by drop.
    let again = space.map_contiguous(
        VirtAddr::new(BASE),
        PhysAddr::new(DEVICE),
        1029 * KB4,
        f,
        false,
    );
    assert!(again.is_err());
    drop(space);
    assert_eq!(frames.stats().used, 0);
}

/// Fuzz finding 3 (documented: "the first mapped address found"): a map over a 4 KiB page
/// and, further on, a 2 MiB leaf names the 2 MiB leaf, because the plan walk sees huge leaves
/// before the build walk reaches the lower 4 KiB page. Nothing is changed either way.
#[test]
fn already_mapped_names_a_huge_leaf_before_a_lower_small_page() {
    let (frames, space) = world();
    let p = PageTableFlags::PRESENT;
    // A 4 KiB page at page 929 and a 2 MiB leaf at pages [1536, 2048).
    space
        .map_contiguous(
            VirtAddr::new(BASE + 929 * KB4),
            PhysAddr::new(DEVICE),
            KB4,
            p,
            false,
        )
        .unwrap();
    space
        .map_contiguous(
            VirtAddr::new(BASE + 1536 * KB4),
            PhysAddr::new(DEVICE + 1536 * KB4),
            512 * KB4,
            p,
            true,
        )
        .unwrap();
    assert_eq!(
        space
            .translate(VirtAddr::new(BASE + 1536 * KB4))
            .unwrap()
            .size,
        512 * KB4
    );
    let used = frames.stats().used;
    let r = space.map_contiguous(
        VirtAddr::new(BASE + 512 * KB4),
        PhysAddr::new(DEVICE + 512 * KB4),
        1029 * KB4,
        p,
        false,
    );
    assert_eq!(
        r,
        Err(MapError::AlreadyMapped {
            va: VirtAddr::new(BASE + 1536 * KB4)
        })
    );
    assert_eq!(
        frames.stats().used,
        used,
        "the plan walk failed before any allocation"
    );
    assert_eq!(space.rss(), 1 + 512);
}

/// The other failure of a map, running out of frames for its tables, changes nothing at all
/// (the tables are allocated before any entry is written).
#[test]
fn map_out_of_frames_changes_nothing() {
    let (frames, space) = world();
    let mut ballast = Vec::new();
    while frames.stats().free > 2 {
        ballast.push(frames.alloc(Zone::Normal).unwrap());
    }
    let used = frames.stats().used;
    let r = space.map_contiguous(
        VirtAddr::new(BASE),
        PhysAddr::new(DEVICE),
        1029 * KB4,
        PageTableFlags::PRESENT,
        false,
    );
    assert_eq!(r, Err(MapError::OutOfFrames));
    assert_eq!(frames.stats().used, used);
    assert_eq!(space.rss(), 0);
    frames.free_bulk(&ballast).unwrap();
    drop(space);
    assert_eq!(frames.stats().used, 0);
}
