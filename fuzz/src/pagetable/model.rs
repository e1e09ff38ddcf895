//! The `pagetable` target's model: page -> (frame, flags, leaf), and how a space is
//! compared with it.

#[allow(unused_imports)]
use super::*;
/// One mapped page in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) pa: u64,
    pub(super) flags: PageTableFlags,
    /// First page and page count of the leaf it belongs to.
    pub(super) leaf: (u64, u64),
}

pub(super) type Model = BTreeMap<u64, Entry>;

pub(super) fn va(page: u64) -> VirtAddr {
    VirtAddr::new_truncate(BASE + page * KB4)
}

pub(super) fn managed(pa: u64) -> bool {
    (ARENA_BASE..ARENA_BASE + ARENA_FRAMES * KB4).contains(&pa)
}

/// Whether a leaf of the model straddles the boundary of `[page, page + n)`.
pub(super) fn cuts_leaf(m: &Model, page: u64, n: u64) -> bool {
    m.range(page..page + n)
        .any(|(_, e)| e.leaf.0 < page || e.leaf.0 + e.leaf.1 > page + n)
}

/// `protect`'s rule for one leaf.
pub(super) fn protected(old: PageTableFlags, new: PageTableFlags) -> PageTableFlags {
    let kept = PageTableFlags::ACCESSED | PageTableFlags::DIRTY | PageTableFlags::COW;
    let mut f = (new - kept - PageTableFlags::HUGE_PAGE) | (old & kept) | PageTableFlags::PRESENT;
    if old.contains(PageTableFlags::COW) {
        f.remove(PageTableFlags::WRITABLE);
    }
    f - IGNORED
}

/// Whether the space's mappings in pages `[lo, hi)` of the window are exactly `m`'s, page by
/// page: walks the mappings and the model in step (no map is built). `[lo, hi)` must not cut
/// a leaf of either (see [`widen`]).
///
/// Every field of every page is compared, as `==` would; the differences are XOR-ed and
/// OR-ed together and tested once, at the end. (Written with `==`, each page cost some seven
/// calls into the fuzzer's comparison hooks: with the full check's walk of both windows,
/// this function was the target's hottest spot.)
pub(super) fn matches(s: &AddressSpace, m: &Model, lo: u64, hi: u64) -> bool {
    if lo >= hi {
        return true;
    }
    let mut want = m.range(lo..hi);
    // `fold`: the walk hands every leaf over from one loop (see `Mappings::fold`); a page
    // the model lacks sets `missing`, and the walk goes on to its end (only on a failure).
    let (diff, missing) =
        s.mappings(va(lo), (hi - lo) * KB4)
            .fold((0u64, false), |(mut diff, mut missing), map| {
                let first = (map.va.as_u64() - BASE) / KB4;
                let pages = map.size / KB4;
                let (pa, flags) = (map.pa.as_u64(), (map.flags - IGNORED).bits());
                for i in 0..pages {
                    let Some((&p, w)) = want.next() else {
                        missing = true;
                        break;
                    };
                    diff |= (p ^ (first + i))
                        | (w.pa ^ (pa + i * KB4))
                        | (w.flags.bits() ^ flags)
                        | (w.leaf.0 ^ first)
                        | (w.leaf.1 ^ pages);
                }
                (diff, missing)
            });
    diff == 0 && !missing && want.next().is_none()
}

/// Pages `[lo, hi)` widened to whole leaves, the space's and the model's (a 2 MiB leaf may
/// straddle either end), clipped to the window.
pub(super) fn widen(s: &AddressSpace, m: &Model, lo: u64, hi: u64) -> (u64, u64) {
    let (mut a, mut b) = (lo.min(PAGES), hi.min(PAGES));
    if a >= b {
        return (a, a);
    }
    for p in [a, b - 1] {
        if let Some(t) = s.translate(va(p)) {
            let pages = t.size / KB4;
            a = a.min(p / pages * pages);
            b = b.max(p / pages * pages + pages);
        }
        if let Some(e) = m.get(&p) {
            a = a.min(e.leaf.0);
            b = b.max(e.leaf.0 + e.leaf.1);
        }
    }
    (a, b.min(PAGES))
}

/// The space's mappings in the window, page by page.
pub(super) fn observe(s: &AddressSpace) -> Model {
    observe_range(s, 0, PAGES)
}

/// The space's mappings of the leaves meeting pages `[lo, hi)`, page by page.
pub(super) fn observe_range(s: &AddressSpace, lo: u64, hi: u64) -> Model {
    let mut m = Model::new();
    for map in s.mappings(va(lo), (hi - lo) * KB4) {
        let first = (map.va.as_u64() - BASE) / KB4;
        let pages = map.size / KB4;
        for i in 0..pages {
            m.insert(
                first + i,
                Entry {
                    pa: map.pa.as_u64() + i * KB4,
                    flags: map.flags - IGNORED,
                    leaf: (first, pages),
                },
            );
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `matches` (differences OR-ed, tested per leaf) still tells every field apart: page,
    /// frame, flags, leaf start and length, a missing and an extra page.
    #[test]
    fn matches_sees_every_field() {
        let arena = PhysArena::heap(ARENA_FRAMES * KB4, PhysAddr::new(ARENA_BASE)).unwrap();
        let fa = Arc::new(FrameAllocator::new(Arc::new(arena)));
        let s = AddressSpace::new(Arc::clone(&fa)).unwrap();
        let f = fa.alloc_zeroed(Zone::Normal).unwrap();
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
        s.map(va(5), &[f], flags).unwrap();
        let good = Entry {
            pa: f.start_address().as_u64(),
            flags,
            leaf: (5, 1),
        };
        let m: Model = [(5, good)].into_iter().collect();
        assert!(matches(&s, &m, 0, PAGES));
        let bad = [
            (
                6,
                Entry {
                    leaf: (6, 1),
                    ..good
                },
            ),
            (
                5,
                Entry {
                    pa: good.pa + KB4,
                    ..good
                },
            ),
            (
                5,
                Entry {
                    flags: PageTableFlags::PRESENT,
                    ..good
                },
            ),
            (
                5,
                Entry {
                    leaf: (4, 1),
                    ..good
                },
            ),
            (
                5,
                Entry {
                    leaf: (5, 2),
                    ..good
                },
            ),
        ];
        for b in bad {
            let m: Model = [b].into_iter().collect();
            assert!(!matches(&s, &m, 0, PAGES), "{b:?}");
        }
        let mut extra = m.clone();
        extra.insert(
            7,
            Entry {
                leaf: (7, 1),
                ..good
            },
        );
        assert!(!matches(&s, &extra, 0, PAGES));
        assert!(!matches(&s, &Model::new(), 0, PAGES));
    }
}
