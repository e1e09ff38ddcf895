//! Pools: a node's ready free areas of the common sizes (vmem's quantum caches, Linux 6.9's
//! per-node pools), so that most allocations and purges never touch a free tree.
//!
//! # How it works
//!
//! For each size of 1 to [`MAX_CLASS_PAGES`] pages (guard included, page alignment), a
//! stack of free areas of exactly that size inside the node's shard, all in one flat array
//! whose class headers (offset, fill, capacity) are 8 bytes each: a pop or push reads one
//! header and one slot. Sizes up to [`REFILL_MAX_PAGES`] are refilled in batches carved from
//! the shard's free tree at once; all sizes are fed by the purge, which returns purged areas
//! here (bounded per class) instead of merging them into the tree.
//!
//! A purge returns them in one of two ways. Run by the freeing thread (the synchronous and
//! inline modes, and explicit purges), it pushes each area onto its class. Run by a
//! background worker, on another CPU, it would move every class header and slot it touches
//! into that CPU's cache, and the owner's next pops would miss on each. So it hands the
//! areas back in one piece instead ([`Pools::hand_back`]): it fills a plain array, outside
//! the node's lock, and swaps it in under the lock. The node's own next pool miss sorts that
//! ready list into the classes ([`Pools::absorb`]), on the CPU whose allocations will pop
//! them (Linux 6.9 likewise runs each node's purge work on the node's CPU,
//! `schedule_work_on`). The ready list's areas are pooled in every other respect: counted in
//! the bytes held, listed, drained on reclaim.
//!
//! # Invariants
//!
//! * A pooled area, in a class or on the ready list, is free VA inside the shard (no tree,
//!   no busy entry, no lazy list holds it) and flushed since its last unmapping; `bytes` is
//!   their total.
//! * A class never holds more than its capacity; a hand-back holds at most a class's
//!   capacity of each size, so sorting it in sends at most that many per class on to the
//!   tree.
//!
//! # Locking
//!
//! None inside: the node's lock guards the pools with the rest of the node's state.

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::PAGE_SIZE;

/// Largest pooled size, in pages (guard page included): page-aligned requests of 1 to 256
/// pages are served from a node's pools when they hold an area of exactly that size.
///
/// Why 256: Linux 6.9's `MAX_VA_SIZE_PAGES`. Sizes up to it are where a pool pays: a tree
/// search and merge cost as much for them as for a huge area, and they are most of the calls
/// (test_vmalloc's long-busy-list test maps 100 pages). Above it areas are rare and costly
/// to map anyway; they go through the tree.
pub const MAX_CLASS_PAGES: usize = 256;

/// Largest size, in pages, whose pool is refilled in batches carved from the tree.
///
/// Why 16: batches are carved for sizes allocated back to back (one page, two with a guard);
/// above that, areas reach the pools only from purges, so that pools never hold VA nobody
/// freed in those sizes.
pub(crate) const REFILL_MAX_PAGES: usize = 16;

/// Largest number of areas carved per refill (a refilled pool then holds at most twice that).
///
/// Why 16: a refill takes the shard's free-tree lock once for up to 16 areas, so the small
/// allocation path locks a tree at most once per 16 allocations of a size, while the pooled
/// VA stays bounded: 32 × (1 + 2 + … + 16) = 4,352 pages (17 MiB) at most in the refilled
/// sizes. Small shards get smaller batches (a refill carves at most 1/64 of a shard).
const MAX_BATCH: usize = 16;

/// Most areas a purge-fed pool (above [`REFILL_MAX_PAGES`]) keeps.
///
/// Why 16: a purge brings back a lazy backlog of about `lazy_max_pages` pages spread over the
/// sizes freed; 16 areas per size cover a backlog of a few thousand areas of mixed sizes
/// (the purge leaves the rest to the tree), while all 240 such pools together hold at most
/// 16 × (17 + … + 256) pages (about 2 GiB of VA, not memory) per node, and at most 1/16 of
/// the shard's pages on small shards (see [`Pools::new`]).
const LARGE_CAP: usize = 16;

/// The pool class (index) of a request of `size` bytes aligned to `align`, if pooled.
#[inline]
pub(crate) fn class_of(size: u64, align: u64) -> Option<usize> {
    let pages = size / PAGE_SIZE;
    (align <= PAGE_SIZE && pages >= 1 && pages as usize <= MAX_CLASS_PAGES)
        .then(|| pages as usize - 1)
}

/// Bytes of an area of class `class`.
#[inline]
pub(crate) fn class_bytes(class: usize) -> u64 {
    (class as u64 + 1) * PAGE_SIZE
}

/// Areas as `(start, end)`, in a plain array (a ready list).
pub(crate) type Ranges = Vec<(u64, u64)>;

/// The free areas of each pooled size, in one flat array (see the module documentation).
#[derive(Debug)]
pub(crate) struct Pools {
    /// Stack of class `c` in `slots[classes[c].off ..][.. classes[c].len]`.
    slots: Box<[u64]>,
    classes: Box<[Class]>,
    /// Bytes held, the ready list's included.
    bytes: u64,
    /// Flushed areas of pooled sizes that a purge running away from this node handed back
    /// in one piece ([`Pools::hand_back`]), not yet sorted into their classes: the node's own
    /// next pool miss does that ([`Pools::absorb`]).
    ready: Ranges,
}

/// Where a class's stack lives in [`Pools::slots`], and its fill (8 bytes: a pop or push
/// reads one header).
#[derive(Debug, Clone, Copy)]
struct Class {
    off: u32,
    len: u16,
    cap: u16,
}

impl Pools {
    /// Empty pools of `shape`'s capacities (at most `u16::MAX` slots a class).
    pub(crate) fn new(shape: &PoolShape) -> Self {
        let caps = &shape.caps;
        let mut classes = Vec::with_capacity(caps.len());
        let mut total = 0u32;
        for &c in caps {
            let cap = u16::try_from(c).unwrap_or(u16::MAX);
            classes.push(Class {
                off: total,
                len: 0,
                cap,
            });
            total += u32::from(cap);
        }
        Self {
            slots: vec![0; total as usize].into_boxed_slice(),
            classes: classes.into_boxed_slice(),
            bytes: 0,
            ready: Vec::new(),
        }
    }

    /// Take an area of class `c`.
    #[inline]
    pub(crate) fn pop(&mut self, c: usize) -> Option<u64> {
        let k = self.classes.get_mut(c)?;
        if k.len == 0 {
            return None;
        }
        k.len -= 1;
        let at = k.off as usize + k.len as usize;
        self.bytes -= class_bytes(c);
        Some(self.slots[at])
    }

    /// Keep an area of class `c`; `false` (nothing done) if the class is full.
    #[inline]
    pub(crate) fn push(&mut self, c: usize, start: u64) -> bool {
        let Some(k) = self.classes.get_mut(c) else {
            return false;
        };
        if k.len >= k.cap {
            return false;
        }
        let at = k.off as usize + k.len as usize;
        k.len += 1;
        self.slots[at] = start;
        self.bytes += class_bytes(c);
        true
    }

    /// Bytes held (the ready list included).
    #[inline]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Take `ready`, flushed free areas of pooled sizes (`bytes` in all), as the ready list
    /// in O(1), if the list is empty: `Ok` with the old (empty) list, for the caller to drop
    /// after unlocking. `Err` gives `ready` back unchanged when the node has not yet absorbed
    /// the previous hand-back (the caller then pushes into the classes itself).
    pub(crate) fn hand_back(&mut self, ready: Ranges, bytes: u64) -> Result<Ranges, Ranges> {
        if !self.ready.is_empty() {
            return Err(ready);
        }
        self.bytes += bytes;
        Ok(core::mem::replace(&mut self.ready, ready))
    }

    /// Whether a hand-back waits to be sorted into the classes.
    #[inline]
    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Sort the ready list into the classes; what a full class cannot take goes to
    /// `overflow(start, end)` (no longer held here). The emptied list keeps its buffer, so
    /// nothing is freed under the node's lock: the next `hand_back` returns it to the purger,
    /// which drops it after unlocking.
    pub(crate) fn absorb(&mut self, mut overflow: impl FnMut(u64, u64)) {
        let mut ready = core::mem::take(&mut self.ready);
        for &(s, e) in &ready {
            self.bytes -= e - s;
            let pushed = class_of(e - s, PAGE_SIZE).is_some_and(|c| self.push(c, s));
            if !pushed {
                overflow(s, e);
            }
        }
        ready.clear();
        self.ready = ready;
    }

    /// Empty every class and the ready list, calling `f(start, end)` per area.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(u64, u64)) {
        for &(s, e) in &self.ready {
            f(s, e);
        }
        self.ready.clear();
        for (c, k) in self.classes.iter_mut().enumerate() {
            let o = k.off as usize;
            for &s in &self.slots[o..o + k.len as usize] {
                f(s, s + class_bytes(c));
            }
            k.len = 0;
        }
        self.bytes = 0;
    }

    /// Every pooled area `(start, end)`, the ready list's included.
    pub(crate) fn areas(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        let sorted = self.classes.iter().enumerate().flat_map(move |(c, k)| {
            let o = k.off as usize;
            self.slots[o..o + k.len as usize]
                .iter()
                .map(move |&s| (s, s + class_bytes(c)))
        });
        self.ready.iter().copied().chain(sorted)
    }
}

/// Pool capacities and refill batch sizes, the same for every node of a `Kva`.
#[derive(Debug, Clone)]
pub(crate) struct PoolShape {
    /// Areas carved per refill, per refilled class (0 when pools are off).
    batch: [usize; REFILL_MAX_PAGES],
    caps: Vec<usize>,
}

impl PoolShape {
    /// With `enabled`, pools sized for shards of `shard_bytes`: a refill carves at most 1/64
    /// of a shard, the purge-fed pools together hold at most 1/16 of it.
    pub(crate) fn new(enabled: bool, shard_bytes: u64) -> Self {
        let shard_pages = (shard_bytes / PAGE_SIZE) as usize;
        let mut batch = [0; REFILL_MAX_PAGES];
        let mut caps = vec![0; if enabled { MAX_CLASS_PAGES } else { 0 }];
        if enabled {
            for (c, b) in batch.iter_mut().enumerate() {
                *b = (shard_pages / (64 * (c + 1))).clamp(1, MAX_BATCH);
                caps[c] = 2 * *b;
            }
            // 240 classes of at most shard_pages / (4096 * pages) areas each: below 1/16 of
            // the shard in all.
            for (c, cap) in caps.iter_mut().enumerate().skip(REFILL_MAX_PAGES) {
                *cap = (shard_pages / (4096 * (c + 1))).min(LARGE_CAP);
            }
        }
        Self { batch, caps }
    }

    /// Whether areas are pooled at all.
    #[inline]
    pub(crate) fn enabled(&self) -> bool {
        self.batch[0] != 0
    }

    /// Areas to carve when refilling class `c` (0: not refilled).
    #[inline]
    pub(crate) fn batch(&self, c: usize) -> usize {
        self.batch.get(c).copied().unwrap_or(0)
    }

    /// Capacity of class `c`.
    #[inline]
    pub(crate) fn cap(&self, c: usize) -> usize {
        self.caps.get(c).copied().unwrap_or(0)
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn pools_are_bounded_per_class() {
        let shape = PoolShape::new(true, 1 << 40);
        assert_eq!(shape.batch(1), MAX_BATCH);
        assert_eq!(shape.cap(1), 2 * MAX_BATCH);
        assert_eq!(shape.cap(100), LARGE_CAP);
        let mut p = Pools::new(&shape);
        for k in 0..40u64 {
            let pushed = p.push(1, k * 0x2000);
            assert_eq!(pushed, k < 2 * MAX_BATCH as u64);
        }
        assert_eq!(p.bytes(), 32 * 0x2000);
        assert_eq!(p.pop(1), Some(31 * 0x2000));
        assert_eq!(p.pop(0), None);
        assert!(!p.push(MAX_CLASS_PAGES, 0));
        let mut seen = 0;
        p.drain(|a, b| {
            assert_eq!(b - a, 0x2000);
            seen += 1;
        });
        assert_eq!((seen, p.bytes()), (31, 0));
        // Small shards: batches of one, no purge-fed pools; off: nothing at all.
        let small = PoolShape::new(true, 64 * PAGE_SIZE);
        assert_eq!((small.batch(0), small.cap(0), small.cap(20)), (1, 2, 0));
        assert!(!PoolShape::new(false, 1 << 30).enabled());
    }

    #[test]
    fn a_hand_back_is_pooled_and_absorbed_by_the_owner() {
        let shape = PoolShape::new(true, 1 << 40);
        let mut p = Pools::new(&shape);
        let page = PAGE_SIZE;
        // Class 1 (2 pages) already holds its capacity less one.
        for k in 0..2 * MAX_BATCH as u64 - 1 {
            assert!(p.push(1, k * 2 * page));
        }
        let base = 0x100_0000;
        let ready = vec![
            (base, base + 2 * page),
            (base + 4 * page, base + 6 * page),
            (base + 8 * page, base + 11 * page),
        ];
        let held = p.bytes();
        let old = p.hand_back(ready.clone(), 7 * page).unwrap();
        assert!(old.is_empty());
        assert!(p.has_ready());
        assert_eq!(p.bytes(), held + 7 * page);
        // Listed while waiting, and a second hand-back is refused, unchanged.
        assert_eq!(p.areas().filter(|a| ready.contains(a)).count(), 3);
        let again = vec![(base + 20 * page, base + 21 * page)];
        assert_eq!(p.hand_back(again.clone(), page), Err(again));
        assert_eq!(p.bytes(), held + 7 * page);
        // Sorted in: class 1 takes one more, the second 2-page area overflows, the 3-page
        // area goes to class 2.
        let mut over = Vec::new();
        p.absorb(|s, e| over.push((s, e)));
        assert_eq!(over, vec![(base + 4 * page, base + 6 * page)]);
        assert!(!p.has_ready());
        assert_eq!(p.bytes(), held + 5 * page);
        assert_eq!(p.pop(2), Some(base + 8 * page));
        assert_eq!(p.pop(1), Some(base));
        // A drained hand-back is reported like the classes.
        p.hand_back(vec![(base, base + page)], page).unwrap();
        let mut drained = 0;
        p.drain(|s, e| drained += e - s);
        assert_eq!((drained, p.bytes()), (held + page, 0));
    }
}
