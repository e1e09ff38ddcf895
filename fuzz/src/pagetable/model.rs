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
pub(super) fn matches(s: &AddressSpace, m: &Model, lo: u64, hi: u64) -> bool {
    if lo >= hi {
        return true;
    }
    let mut want = m.range(lo..hi);
    for map in s.mappings(va(lo), (hi - lo) * KB4) {
        let first = (map.va.as_u64() - BASE) / KB4;
        let pages = map.size / KB4;
        for i in 0..pages {
            let e = Entry {
                pa: map.pa.as_u64() + i * KB4,
                flags: map.flags - IGNORED,
                leaf: (first, pages),
            };
            match want.next() {
                Some((&p, w)) if p == first + i && *w == e => {}
                _ => return false,
            }
        }
    }
    want.next().is_none()
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
