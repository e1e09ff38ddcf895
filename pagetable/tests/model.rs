//! Property test: map / map_contiguous / unmap / protect / populate / clean_up / swap-out /
//! copy_range on two address spaces against a plain `BTreeMap` reference model (page ->
//! frame, flags, leaf, or a non-present swap/migration entry), checking results, errors,
//! translations, iteration, rss, the non-present entries and the swap counts after every
//! step.
//!
//! The window is 2,048 pages straddling a 512 GiB boundary, so operations cross leaf tables,
//! page directories and PDPTs; frames come from the allocator so that `copy_range` takes
//! references and makes private writable pages copy-on-write. Swap-out replaces present pages
//! by swap entries (of a swap area whose counts need a continuation for every reference
//! beyond the first) or
//! migration entries; copies count them, and some copies run with an allocation failure
//! armed, which must leave both spaces and every count as they were.

#![cfg(not(feature = "loom"))]

use std::collections::BTreeMap;
use std::sync::Arc;

use pagetable::{
    AddressSpace, FrameAllocator, MapError, PageTableFlags, PhysAddr, PhysArena, PhysFrame, Pte,
    VirtAddr, VmaKind, Zone,
};
use pagetable::{SwapEntry, SwapKind, SwapMap, copy_range_with_swap, install_swap_entry};
use proptest::prelude::*;

const KB4: u64 = 4096;
const PAGES: u64 = 2048;
/// Window start: 1,024 pages below the 512 GiB boundary (2 MiB aligned).
const BASE: u64 = 0x80_0000_0000 - 1024 * KB4;
const HUGE_PAGES: u64 = 512;

const FLAG_CHOICES: [PageTableFlags; 4] = [
    PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE),
    PageTableFlags::PRESENT,
    PageTableFlags::PRESENT
        .union(PageTableFlags::WRITABLE)
        .union(PageTableFlags::USER_ACCESSIBLE),
    PageTableFlags::PRESENT.union(PageTableFlags::NO_EXECUTE),
];

/// Flags the comparison ignores: HUGE_PAGE is structural, A/D are hardware state.
const IGNORED: PageTableFlags = PageTableFlags::HUGE_PAGE
    .union(PageTableFlags::ACCESSED)
    .union(PageTableFlags::DIRTY);

#[derive(Debug, Clone)]
enum Op {
    Map {
        space: usize,
        page: u64,
        n: u64,
        frame: usize,
        flags: usize,
    },
    MapContiguous {
        space: usize,
        page: u64,
        n: u64,
        huge: bool,
        flags: usize,
    },
    Unmap {
        space: usize,
        page: u64,
        n: u64,
    },
    Protect {
        space: usize,
        page: u64,
        n: u64,
        flags: usize,
    },
    Populate {
        space: usize,
        page: u64,
        n: u64,
    },
    CleanUp {
        space: usize,
        page: u64,
        n: u64,
    },
    Copy {
        page: u64,
        n: u64,
        shared: bool,
        to_b: bool,
        /// Arm `fail_nth(fail)` for the copy (0: no failure).
        fail: u64,
        /// Aim at the source: start at its first entry at or after `page`, and unmap the
        /// destination range first (a fork's child is empty).
        aim: bool,
    },
    /// Replace the first `n` present 4 KiB pages at or after `page` (wrapping around) by swap
    /// entries (`kind` 0), write (1) or read (2) migration entries.
    SwapOut {
        space: usize,
        page: u64,
        n: u64,
        kind: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let space = 0..2usize;
    let page = 0..PAGES;
    let n = prop_oneof![
        1..8u64,
        1..600u64,
        Just(HUGE_PAGES),
        Just(2 * HUGE_PAGES + 3)
    ];
    prop_oneof![
        1 => (
            space.clone(),
            page.clone(),
            n.clone(),
            0..64usize,
            0..4usize
        )
            .prop_map(|(space, page, n, frame, flags)| Op::Map {
                space,
                page,
                n,
                frame,
                flags
            }),
        1 => (space.clone(), 0..4u64, 0..3u64, any::<bool>(), 0..4usize).prop_map(
            |(space, chunk, extra, huge, flags)| Op::MapContiguous {
                space,
                // Often 2 MiB aligned, sometimes not.
                page: chunk * HUGE_PAGES + if extra == 2 { 7 } else { 0 },
                n: HUGE_PAGES * (1 + extra % 2) + if extra == 1 { 5 } else { 0 },
                huge,
                flags
            }
        ),
        1 => (space.clone(), page.clone(), n.clone()).prop_map(|(space, page, n)| Op::Unmap {
            space,
            page,
            n
        }),
        1 => (space.clone(), page.clone(), n.clone(), 0..4usize).prop_map(|(space, page, n, flags)| {
            Op::Protect {
                space,
                page,
                n,
                flags,
            }
        }),
        1 => (space.clone(), page.clone(), n.clone()).prop_map(|(space, page, n)| Op::Populate {
            space,
            page,
            n
        }),
        1 => (space, page.clone(), n.clone()).prop_map(|(space, page, n)| Op::CleanUp {
            space,
            page,
            n
        }),
        2 => (
            page.clone(),
            n,
            any::<bool>(),
            any::<bool>(),
            prop_oneof![Just(0u64), 1..7u64],
            any::<bool>()
        )
            .prop_map(|(page, n, shared, to_b, fail, aim)| Op::Copy {
                page,
                n,
                shared,
                to_b,
                fail,
                aim
            }),
        2 => (0..2usize, page, 1..64u64, 0..3u8).prop_map(|(space, page, n, kind)| {
            Op::SwapOut {
                space,
                page,
                n,
                kind,
            }
        }),
    ]
}

/// One mapped page in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    pa: u64,
    flags: PageTableFlags,
    /// First page and page count of the leaf it belongs to.
    leaf: (u64, u64),
    /// A non-present entry (then `pa` is its address field, what unmap reports).
    swp: Option<SwapEntry>,
}

type Model = BTreeMap<u64, Entry>;

fn va(page: u64) -> VirtAddr {
    VirtAddr::new(BASE + page * KB4)
}

fn clamp(page: u64, n: u64) -> u64 {
    n.min(PAGES - page)
}

/// Whether a leaf of the model straddles the boundary of `[page, page + n)`.
fn cuts_leaf(m: &Model, page: u64, n: u64) -> bool {
    m.range(page..page + n)
        .any(|(_, e)| e.leaf.0 < page || e.leaf.0 + e.leaf.1 > page + n)
}

fn protected(old: PageTableFlags, new: PageTableFlags) -> PageTableFlags {
    let kept = PageTableFlags::ACCESSED | PageTableFlags::DIRTY | PageTableFlags::COW;
    let mut f = (new - kept - PageTableFlags::HUGE_PAGE) | (old & kept) | PageTableFlags::PRESENT;
    if old.contains(PageTableFlags::COW) {
        f.remove(PageTableFlags::WRITABLE);
    }
    f
}

/// The space's mappings in the window, page by page.
fn observe(s: &AddressSpace) -> Model {
    let mut m = Model::new();
    for map in s.mappings(va(0), PAGES * KB4) {
        let first = (map.va.as_u64() - BASE) / KB4;
        let pages = map.size / KB4;
        for i in 0..pages {
            m.insert(
                first + i,
                Entry {
                    pa: map.pa.as_u64() + i * KB4,
                    flags: map.flags - IGNORED,
                    leaf: (first, pages),
                    swp: None,
                },
            );
        }
    }
    m
}

/// The raw leaf entry of `page` (unused if a table on the way is missing or a huge leaf maps
/// it), read through the arena as the hardware walker would.
fn raw_leaf(s: &AddressSpace, page: u64) -> Pte {
    let arena = s.frames().arena();
    let l = va(page).as_u64();
    let mut table = s.root();
    for level in (1..=4u32).rev() {
        let i = ((l >> (12 + 9 * (level - 1))) & 511) as usize;
        let p = arena.table(table)[i].load(std::sync::atomic::Ordering::Acquire);
        if level == 1 {
            return p;
        }
        if !p.is_present() || p.is_huge() {
            return Pte::UNUSED;
        }
        table = PhysFrame::containing_address(p.addr());
    }
    Pte::UNUSED
}

fn check(s: &AddressSpace, m: &Model) -> Result<(), TestCaseError> {
    let seen = observe(s);
    let present = m.values().filter(|e| e.swp.is_none()).count();
    prop_assert_eq!(seen.len(), present);
    for (p, e) in m {
        match e.swp {
            None => prop_assert_eq!(seen.get(p), Some(e), "page {}", p),
            Some(x) => prop_assert_eq!(raw_leaf(s, *p), x.pte(), "page {}", p),
        }
    }
    // Non-present leaves count like pages (unmap clears and counts them).
    prop_assert_eq!(s.rss(), m.len());
    if let Some((&p, e)) = m.iter().find(|(_, e)| e.swp.is_none()) {
        let t = s.translate(va(p) + 123).unwrap();
        prop_assert_eq!(t.pa.as_u64(), e.pa + 123);
    }
    Ok(())
}

struct World {
    frames: Arc<FrameAllocator>,
    spaces: [AddressSpace; 2],
    models: [Model; 2],
    pool: Vec<PhysFrame>,
    /// The swap area (limits of 1: every copy of a swap entry needs a continuation) and its
    /// expected counts.
    swap: SwapMap,
    counts: BTreeMap<SwapEntry, u64>,
}

impl World {
    fn new() -> Self {
        let arena = PhysArena::heap(2048 * KB4, PhysAddr::new(0x40_0000)).unwrap();
        let frames = Arc::new(FrameAllocator::new(Arc::new(arena)));
        let pool = (0..64)
            .map(|_| frames.alloc_zeroed(Zone::Normal).unwrap())
            .collect();
        let spaces = [
            AddressSpace::new(Arc::clone(&frames)).unwrap(),
            AddressSpace::new(Arc::clone(&frames)).unwrap(),
        ];
        Self {
            swap: SwapMap::with_limits(Arc::clone(&frames), 1, 1),
            frames,
            spaces,
            models: [Model::new(), Model::new()],
            pool,
            counts: BTreeMap::new(),
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Map {
                space,
                page,
                n,
                frame,
                flags,
            } => {
                let n = clamp(page, n);
                let frames: Vec<PhysFrame> = (0..n)
                    .map(|i| self.pool[(frame + i as usize) % 64])
                    .collect();
                let flags = FLAG_CHOICES[flags];
                let r = self.spaces[space].map(va(page), &frames, flags);
                let m = &mut self.models[space];
                if let Some((&p, _)) = m.range(page..page + n).next() {
                    prop_assert!(matches!(r, Err(MapError::AlreadyMapped { .. })), "{:?}", r);
                    let _ = p;
                } else {
                    prop_assert_eq!(r, Ok(()));
                    for (i, f) in frames.iter().enumerate() {
                        let pa = f.start_address().as_u64();
                        m.insert(
                            page + i as u64,
                            Entry {
                                pa,
                                flags,
                                leaf: (page + i as u64, 1),
                                swp: None,
                            },
                        );
                    }
                }
            }
            Op::MapContiguous {
                space,
                page,
                n,
                huge,
                flags,
            } => {
                let n = clamp(page, n);
                let pa0 = 0x100_0000_0000 + page * KB4;
                let flags = FLAG_CHOICES[flags];
                let r = self.spaces[space].map_contiguous(
                    va(page),
                    PhysAddr::new(pa0),
                    n * KB4,
                    flags,
                    huge,
                );
                let conflict = self.models[space].range(page..page + n).next().is_some();
                if conflict {
                    prop_assert!(matches!(r, Err(MapError::AlreadyMapped { .. })), "{:?}", r);
                } else {
                    prop_assert_eq!(r, Ok(()));
                    // Leaf sizes are the implementation's choice (a leftover leaf table keeps
                    // a chunk at 4 KiB); learn them and check they are legal.
                    let seen = observe(&self.spaces[space]);
                    for i in 0..n {
                        let e = seen[&(page + i)];
                        if e.leaf.1 > 1 {
                            prop_assert!(huge);
                            prop_assert_eq!(e.leaf.1, HUGE_PAGES);
                            prop_assert!(e.leaf.0 >= page && e.leaf.0 + e.leaf.1 <= page + n);
                        }
                        self.models[space].insert(
                            page + i,
                            Entry {
                                pa: pa0 + i * KB4,
                                flags,
                                leaf: e.leaf,
                                swp: None,
                            },
                        );
                    }
                }
            }
            Op::Unmap { space, page, n } => {
                let n = clamp(page, n);
                let mut got = Vec::new();
                let r = self.spaces[space]
                    .unmap(va(page), n * KB4, |pa, size| got.push((pa.as_u64(), size)));
                let m = &mut self.models[space];
                if cuts_leaf(m, page, n) {
                    prop_assert!(
                        matches!(r, Err(MapError::HugePageInTheWay { .. })),
                        "{:?}",
                        r
                    );
                } else {
                    let flush = r.unwrap();
                    let mut want = Vec::new();
                    let pages: Vec<u64> = m.range(page..page + n).map(|(&p, _)| p).collect();
                    for p in &pages {
                        let e = m.remove(p).unwrap();
                        // Non-present (swap/migration) leaves map no frame: not reported.
                        if e.leaf.0 == *p && e.swp.is_none() {
                            want.push((e.pa, e.leaf.1 * KB4));
                        }
                    }
                    prop_assert_eq!(got, want);
                    if let (Some(first), Some(last)) = (pages.first(), pages.last()) {
                        prop_assert!(flush.contains(va(*first)) && flush.contains(va(*last)));
                    } else {
                        prop_assert!(flush.is_empty());
                    }
                }
            }
            Op::Protect {
                space,
                page,
                n,
                flags,
            } => {
                let n = clamp(page, n);
                let flags = FLAG_CHOICES[flags];
                let r = self.spaces[space].protect(va(page), n * KB4, flags);
                let m = &mut self.models[space];
                if cuts_leaf(m, page, n) {
                    prop_assert!(
                        matches!(r, Err(MapError::HugePageInTheWay { .. })),
                        "{:?}",
                        r
                    );
                } else {
                    let _ = r.unwrap();
                    // Non-present entries are left alone.
                    for (_, e) in m.range_mut(page..page + n) {
                        if e.swp.is_none() {
                            e.flags = protected(e.flags, flags) - IGNORED;
                        }
                    }
                }
            }
            Op::Populate { space, page, n } => {
                let n = clamp(page, n);
                let r = self.spaces[space].populate(va(page), n * KB4);
                let huge_inside = self.models[space]
                    .range(page..page + n)
                    .any(|(_, e)| e.leaf.1 > 1);
                if huge_inside {
                    prop_assert!(
                        matches!(r, Err(MapError::HugePageInTheWay { .. })),
                        "{:?}",
                        r
                    );
                } else {
                    prop_assert_eq!(r, Ok(()));
                }
            }
            Op::CleanUp { space, page, n } => {
                let n = clamp(page, n);
                self.spaces[space].clean_up(va(page), n * KB4).unwrap();
            }
            Op::Copy {
                page,
                n,
                shared,
                to_b,
                fail,
                aim,
            } => {
                let (d, s) = if to_b { (1, 0) } else { (0, 1) };
                let first = self.models[s]
                    .range(page..)
                    .chain(self.models[s].iter())
                    .next();
                let page = match first {
                    Some((&p, _)) if aim => p,
                    _ => page,
                };
                let n = clamp(page, n);
                if aim && !cuts_leaf(&self.models[d], page, n) {
                    let _ = self.spaces[d].unmap(va(page), n * KB4, |_, _| {}).unwrap();
                    let gone: Vec<u64> = self.models[d]
                        .range(page..page + n)
                        .map(|(&p, _)| p)
                        .collect();
                    for p in gone {
                        self.models[d].remove(&p);
                    }
                }
                let kind = if shared {
                    VmaKind::Shared
                } else {
                    VmaKind::Private
                };
                let (dst, src) = (&self.spaces[d], &self.spaces[s]);
                if fail > 0 {
                    self.frames.fail_nth(Some(fail));
                }
                let r = copy_range_with_swap(dst, src, va(page), va(page + n), kind, &self.swap);
                self.frames.fail_nth(None);
                // Source leaf tables covering the range: a huge leaf anywhere in them fails.
                let first_chunk = page / HUGE_PAGES * HUGE_PAGES;
                let src_huge = self.models[s]
                    .range(first_chunk..page + n)
                    .any(|(_, e)| e.leaf.1 > 1 && e.leaf.0 + e.leaf.1 > page);
                let dst_busy = self.models[d].range(page..page + n).next().is_some();
                if src_huge || dst_busy {
                    prop_assert!(r.is_err(), "{:?}", r);
                    return Ok(());
                }
                if fail > 0 && r == Err(MapError::OutOfFrames) {
                    // Tables or a continuation: either way both spaces and every count are as
                    // they were (checked after this step).
                    return Ok(());
                }
                let stats = r.unwrap();
                let copied: Vec<(u64, Entry)> = self.models[s]
                    .range(page..page + n)
                    .map(|(&p, &e)| (p, e))
                    .collect();
                prop_assert_eq!(stats.copied, copied.len() as u64);
                let swapped = copied.iter().filter(|(_, e)| e.swp.is_some()).count();
                prop_assert_eq!(stats.swap, swapped as u64);
                for (p, mut e) in copied {
                    if let Some(x) = e.swp {
                        match x.kind() {
                            SwapKind::Swap => *self.counts.get_mut(&x).unwrap() += 1,
                            SwapKind::MigrationWrite if !shared => {
                                e.swp = Some(x.to_read_migration());
                                self.models[s].insert(p, e);
                            }
                            _ => {}
                        }
                        self.models[d].insert(p, e);
                        continue;
                    }
                    // Frames outside the arena (the contiguous device-like ranges) are copied
                    // as they are: no reference, no COW.
                    let managed = self.frames.arena().contains(PhysAddr::new(e.pa), KB4);
                    let cow = !shared
                        && managed
                        && e.flags
                            .intersects(PageTableFlags::WRITABLE | PageTableFlags::COW);
                    if cow {
                        e.flags = (e.flags - PageTableFlags::WRITABLE) | PageTableFlags::COW;
                        self.models[s].insert(p, e);
                    }
                    e.leaf = (p, 1);
                    if shared {
                        e.flags.remove(PageTableFlags::DIRTY);
                    }
                    self.models[d].insert(p, e);
                }
            }
            Op::SwapOut {
                space,
                page,
                n,
                kind,
            } => {
                let victims: Vec<(u64, Entry)> = self.models[space]
                    .range(page..)
                    .chain(self.models[space].range(..page))
                    .filter(|(_, e)| e.swp.is_none() && e.leaf.1 == 1)
                    .take(n as usize)
                    .map(|(&p, &e)| (p, e))
                    .collect();
                for (p, e) in victims {
                    let frame = PhysFrame::containing_address(PhysAddr::new(e.pa));
                    let entry = match kind {
                        0 => self.swap.alloc().unwrap(),
                        k => SwapEntry::migration(frame, k == 1),
                    };
                    let old = install_swap_entry(&self.spaces[space], va(p), entry).unwrap();
                    prop_assert_eq!(old.addr().as_u64(), e.pa);
                    let x = Entry {
                        pa: entry.pte().addr().as_u64(),
                        flags: e.flags,
                        leaf: (p, 1),
                        swp: Some(entry),
                    };
                    self.models[space].insert(p, x);
                    if kind == 0 {
                        self.counts.insert(entry, 1);
                    }
                }
                // `page` holds no present 4 KiB leaf now (one would have been the first
                // victim): swapping it out is refused, changing nothing.
                let e = SwapEntry::migration(PhysFrame::containing_address(PhysAddr::zero()), true);
                let r = install_swap_entry(&self.spaces[space], va(page), e);
                match self.models[space].get(&page) {
                    Some(x) if x.swp.is_none() => {
                        prop_assert!(x.leaf.1 > 1);
                        prop_assert_eq!(r, Err(MapError::HugePageInTheWay { va: va(page) }));
                    }
                    _ => prop_assert_eq!(r, Err(MapError::NotMapped { va: va(page) })),
                }
            }
        }
        for (&e, &c) in &self.counts {
            prop_assert_eq!(self.swap.count(e), c, "{:?}", e);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn matches_the_btreemap_model(ops in proptest::collection::vec(op(), 1..40)) {
        let mut w = World::new();
        for op in &ops {
            w.apply(op)?;
            check(&w.spaces[0], &w.models[0])?;
            check(&w.spaces[1], &w.models[1])?;
        }
        // Teardown returns every table.
        let pool = std::mem::take(&mut w.pool);
        let frames = Arc::clone(&w.frames);
        drop(w);
        prop_assert_eq!(frames.stats().used as usize, pool.len());
    }
}
