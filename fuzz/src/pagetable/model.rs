//! The `pagetable` target's model: page -> (frame, flags, leaf), and how a space is
//! compared with it.

#[allow(unused_imports)]
use super::*;
use std::hash::BuildHasherDefault;

/// A map keyed by frame address, hashed with one multiply (`alloc_free`'s
/// [`FrameHasher`](crate::alloc_free::model::FrameHasher)) instead of SipHash.
pub(super) type FrameMap<V> =
    HashMap<u64, V, BuildHasherDefault<crate::alloc_free::model::FrameHasher>>;
/// One mapped page in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) pa: u64,
    pub(super) flags: PageTableFlags,
    /// First page and page count of the leaf it belongs to.
    pub(super) leaf: (u64, u64),
}

/// One space's pages of the window: page -> entry, as a `BTreeMap<u64, Entry>` would hold
/// them (the subset of its API the harness uses, same semantics), stored as one slot per
/// page of the 2,048-page window and a bitmap of the mapped ones. Inserting or removing a
/// page is an index, a range is walked through the bitmap's set bits (64 pages per word),
/// and nothing is allocated per page: under the fuzz build each `BTreeMap` step cost a
/// dozen instrumented comparisons (a tenth of the target's time went to the model's map).
#[derive(Debug, Clone)]
pub(super) struct Model {
    /// `(page, entry)` of every page of the window (the entry is meaningful when mapped).
    slots: Vec<(u64, Entry)>,
    /// Bit `p % 64` of word `p / 64`: page `p` is mapped.
    mapped: [u64; (PAGES / 64) as usize],
    len: usize,
}

impl Default for Model {
    fn default() -> Self {
        Self::new()
    }
}

impl Model {
    pub(super) fn new() -> Model {
        let unused = Entry {
            pa: 0,
            flags: PageTableFlags::empty(),
            leaf: (0, 0),
        };
        Model {
            slots: (0..PAGES).map(|p| (p, unused)).collect(),
            mapped: [0; (PAGES / 64) as usize],
            len: 0,
        }
    }

    fn bit(p: u64) -> (usize, u64) {
        assert!(p < PAGES, "page {p} outside the window");
        ((p / 64) as usize, 1 << (p % 64))
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn contains_key(&self, p: &u64) -> bool {
        let (w, b) = Self::bit(*p);
        self.mapped[w] & b != 0
    }

    pub(super) fn get(&self, p: &u64) -> Option<&Entry> {
        self.contains_key(p).then(|| &self.slots[*p as usize].1)
    }

    pub(super) fn insert(&mut self, p: u64, e: Entry) -> Option<Entry> {
        let (w, b) = Self::bit(p);
        let old = core::mem::replace(&mut self.slots[p as usize].1, e);
        if self.mapped[w] & b != 0 {
            Some(old)
        } else {
            self.mapped[w] |= b;
            self.len += 1;
            None
        }
    }

    pub(super) fn remove(&mut self, p: &u64) -> Option<Entry> {
        let (w, b) = Self::bit(*p);
        if self.mapped[w] & b == 0 {
            return None;
        }
        self.mapped[w] &= !b;
        self.len -= 1;
        Some(self.slots[*p as usize].1)
    }

    pub(super) fn clear(&mut self) {
        self.mapped = [0; (PAGES / 64) as usize];
        self.len = 0;
    }

    /// The mapped pages in `r` (clipped to the window), in order.
    pub(super) fn range(&self, r: core::ops::Range<u64>) -> Range<'_> {
        let (lo, hi) = (r.start.min(PAGES), r.end.min(PAGES));
        let mut it = Range {
            m: self,
            word: (lo / 64) as usize,
            bits: 0,
            hi,
        };
        if lo < hi {
            it.bits = self.mapped[it.word] & (!0u64 << (lo % 64));
        } else {
            it.word = self.mapped.len();
        }
        it
    }

    /// The mapped pages in `r`, entries mutable, in order.
    pub(super) fn range_mut(
        &mut self,
        r: core::ops::Range<u64>,
    ) -> impl Iterator<Item = (&u64, &mut Entry)> {
        let (lo, hi) = (r.start.min(PAGES), r.end.min(PAGES).max(r.start.min(PAGES)));
        let mapped = self.mapped;
        self.slots[lo as usize..hi as usize]
            .iter_mut()
            .filter(move |(p, _)| mapped[(p / 64) as usize] & (1 << (p % 64)) != 0)
            .map(|(p, e)| (&*p, e))
    }

    pub(super) fn iter(&self) -> Range<'_> {
        self.range(0..PAGES)
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Entry> {
        self.iter().map(|(_, e)| e)
    }

    /// Non-zero unless pages `[first, first + pages)` (inside the window) are all mapped as
    /// one leaf of that extent whose pages map `pa, pa + 4 KiB, ...` with `flags` (bits,
    /// `IGNORED` left out). No comparison per page: differences and missing bits are ORed.
    pub(super) fn leaf_diff(&self, first: u64, pages: u64, pa: u64, flags: u64) -> u64 {
        let mut diff = 0;
        // Wrapping arithmetic and a slice walk: no overflow or bounds check per page, which
        // the fuzz build (overflow checks on) would turn into comparison-hook calls.
        let mut want_pa = pa;
        for (p, e) in &self.slots[first as usize..(first + pages) as usize] {
            let missing = !(self.mapped[(p / 64) as usize].wrapping_shr(*p as u32)) & 1;
            diff |= missing
                | (e.pa ^ want_pa)
                | (e.flags.bits() ^ flags)
                | (e.leaf.0 ^ first)
                | (e.leaf.1 ^ pages);
            want_pa = want_pa.wrapping_add(KB4);
        }
        diff
    }

    /// How many pages of `[lo, hi)` (inside the window) are mapped.
    pub(super) fn count(&self, lo: u64, hi: u64) -> u64 {
        if lo >= hi {
            return 0;
        }
        let (a, b) = ((lo / 64) as usize, ((hi - 1) / 64) as usize);
        let mut n = 0;
        for (w, &bits) in (a..).zip(&self.mapped[a..=b]) {
            let mut bits = bits;
            if w == a {
                bits &= !0u64 << (lo % 64);
            }
            if w == b {
                bits &= !0u64 >> (63 - (hi - 1) % 64);
            }
            n += u64::from(bits.count_ones());
        }
        n
    }

    /// The highest mapped page.
    pub(super) fn last_key_value(&self) -> Option<(&u64, &Entry)> {
        let w = self.mapped.iter().rposition(|&w| w != 0)?;
        let p = w * 64 + 63 - self.mapped[w].leading_zeros() as usize;
        let (k, e) = &self.slots[p];
        Some((k, e))
    }
}

impl FromIterator<(u64, Entry)> for Model {
    fn from_iter<I: IntoIterator<Item = (u64, Entry)>>(it: I) -> Model {
        let mut m = Model::new();
        for (p, e) in it {
            m.insert(p, e);
        }
        m
    }
}

impl core::ops::Index<&u64> for Model {
    type Output = Entry;

    fn index(&self, p: &u64) -> &Entry {
        self.get(p).expect("page not in the model")
    }
}

/// The mapped pages of a [`Model`] in a range, in order (see [`Model::range`]).
pub(super) struct Range<'a> {
    m: &'a Model,
    /// The bitmap word being read, and its bits not yet visited.
    word: usize,
    bits: u64,
    /// End page (exclusive).
    hi: u64,
}

impl<'a> Iterator for Range<'a> {
    type Item = (&'a u64, &'a Entry);

    fn next(&mut self) -> Option<(&'a u64, &'a Entry)> {
        while self.bits == 0 {
            self.word += 1;
            if self.word >= self.m.mapped.len() || self.word as u64 * 64 >= self.hi {
                return None;
            }
            self.bits = self.m.mapped[self.word];
        }
        let p = self.word as u64 * 64 + u64::from(self.bits.trailing_zeros());
        if p >= self.hi {
            self.bits = 0;
            return None;
        }
        self.bits &= self.bits - 1;
        let (k, e) = &self.m.slots[p as usize];
        Some((k, e))
    }
}

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
/// page (no map is built). `[lo, hi)` must not cut a leaf of either (see [`widen`]).
///
/// Every page the walk reports must lie in `[lo, hi)` and be mapped in the model with the
/// same frame, flags and leaf, and the walk must report as many pages as the model maps in
/// `[lo, hi)`: the walk's pages are distinct, so that is the same as both sets being equal.
/// The differences are XOR-ed and OR-ed together and tested once, at the end, and a leaf's
/// pages are compared over a slice of the model (written with `==` and a map walked in
/// step, each page cost some seven calls into the fuzzer's comparison hooks; with the full
/// check's walk of both windows this was the target's hottest spot).
pub(super) fn matches(s: &AddressSpace, m: &Model, lo: u64, hi: u64) -> bool {
    if lo >= hi {
        return true;
    }
    let (diff, seen) =
        s.mappings(va(lo), (hi - lo) * KB4)
            .fold((0u64, 0u64), |(diff, seen), map| {
                let first = (map.va.as_u64().wrapping_sub(BASE)) / KB4;
                let pages = map.size / KB4;
                if first < lo || first + pages > hi {
                    return (diff | 1, seen + pages);
                }
                let (pa, flags) = (map.pa.as_u64(), (map.flags - IGNORED).bits());
                (diff | m.leaf_diff(first, pages, pa, flags), seen + pages)
            });
    diff == 0 && seen == m.count(lo, hi)
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
    use std::collections::BTreeMap;

    /// `Model` behaves as the `BTreeMap<u64, Entry>` it replaced, for every method the
    /// harness uses (a few thousand pseudo-random operations, ranges at and across the
    /// bitmap's 64-page words and the window's ends).
    #[test]
    fn model_behaves_as_a_btreemap() {
        let mut m = Model::new();
        let mut b: BTreeMap<u64, Entry> = BTreeMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let entry = |p: u64, v: u64| Entry {
            pa: v * KB4,
            flags: FLAG_CHOICES[(v % 5) as usize],
            leaf: (p, 1 + v % 3),
        };
        for step in 0..20_000u64 {
            // Pages cluster at a word boundary and at the window's ends.
            let p = match rnd(4) {
                0 => rnd(PAGES),
                1 => 60 + rnd(8),
                2 => PAGES - 1 - rnd(70),
                _ => rnd(130),
            };
            match rnd(6) {
                0 | 1 => assert_eq!(m.insert(p, entry(p, step)), b.insert(p, entry(p, step))),
                2 => assert_eq!(m.remove(&p), b.remove(&p)),
                3 => {
                    let hi = (p + rnd(200)).min(PAGES);
                    let got: Vec<_> = m.range(p..hi).collect();
                    let want: Vec<_> = b.range(p..hi).collect();
                    assert_eq!(got, want, "range {p}..{hi}");
                    assert_eq!(m.count(p, hi), want.len() as u64, "count {p}..{hi}");
                }
                4 => {
                    let hi = (p + rnd(200)).min(PAGES);
                    for (_, e) in m.range_mut(p..hi) {
                        e.pa += 1;
                    }
                    for (_, e) in b.range_mut(p..hi) {
                        e.pa += 1;
                    }
                }
                _ => {
                    if rnd(50) == 0 {
                        m.clear();
                        b.clear();
                    }
                }
            }
            assert_eq!(m.len(), b.len());
            assert_eq!(m.get(&p), b.get(&p));
            assert_eq!(m.contains_key(&p), b.contains_key(&p));
            assert_eq!(m.last_key_value(), b.last_key_value());
        }
        assert!(m.iter().eq(b.iter()));
        assert!(m.values().eq(b.values()));
        assert_eq!(m.range(5..5).count(), 0);
        assert_eq!(m.range(PAGES..PAGES).count(), 0);
    }

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
        // A removed page keeps its old entry in its slot: only the bitmap says it is gone
        // (and with another page mapped instead, the page counts agree).
        let mut gone = m.clone();
        gone.remove(&5);
        assert!(!matches(&s, &gone, 0, PAGES));
        gone.insert(
            9,
            Entry {
                leaf: (9, 1),
                ..good
            },
        );
        assert!(!matches(&s, &gone, 0, PAGES));
    }
}
