//! The subtree summaries ("fit indexes") a [`super::FreeTree`] can search with.
//!
//! * [`MaxSize`] (the default): the largest area length in the subtree, Linux's
//!   `subtree_max_size`. Pruning is exact when every area long enough also fits once aligned,
//!   i.e. when `align` is at most the address granularity (page-granular vmalloc with
//!   `align <= PAGE_SIZE`); for larger alignments the search also visits the areas below the
//!   answer that are long enough but fail once aligned.
//! * [`AlignLevels`]: additionally, per alignment level of [`ALIGN_LEVELS`], the largest
//!   "capacity" `end - align_up(start, 2^level)` in the subtree, so that large aligned
//!   allocations prune exactly too. The price is a bigger node and more work per update
//!   (capacities change further up the tree): pick it for ranges dominated by large aligned
//!   allocations.
//!
//! Both are exact in their answers (the lowest fitting address); only the number of visited
//! nodes differs. [`FitIndex::prunes_exactly`] tells the free tree which alignments an index
//! prunes exactly; for the others, `FreeTree::alloc_fast` (what the shards call) bounds the
//! exact walk and then searches with Linux's adjusted length (see the `free_tree` module
//! documentation).
//!
//! Measured cost of the richer index on page-aligned operations (callgrind, instructions per
//! alloc + free pair of 2..101-page areas through `Kva`, which reach the shard trees): 2,805
//! with `MaxSize`, 3,696 with `AlignLevels` (+32%); a variant with only 2 MiB and 4 MiB
//! levels still cost +16%, a compact one with every level from 8 KiB to 16 MiB +32%. This is
//! why production keeps `MaxSize` (`docs/BENCHMARKS.md`, "aligned search").

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::PAGE_SIZE;

use crate::kva::tree::{Augment, Keyed};

/// One free area `[start, end)`, the item of a [`super::FreeTree`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeArea {
    /// First free address.
    pub start: u64,
    /// One past the last free address.
    pub end: u64,
}

impl Keyed for FreeArea {
    #[inline]
    fn key(&self) -> u64 {
        self.start
    }
}

mod sealed {
    /// Only this module's indexes implement [`super::FitIndex`].
    pub trait Sealed {}
}

/// How a free tree summarises subtrees for its lowest-fit search (sealed: [`MaxSize`] or
/// [`AlignLevels`]).
pub trait FitIndex: Augment<FreeArea> + sealed::Sealed {
    /// The summary level to prune with for `align` (a power of two).
    fn level(align: u64) -> usize;
    /// Whether pruning at [`FitIndex::level`]`(align)` is exact when every area starts and
    /// ends on a page boundary: every subtree the search enters then holds a fit, so it
    /// visits O(log n) nodes.
    fn prunes_exactly(align: u64) -> bool;
    /// Whether a subtree summarised by `v` may hold a block of `size` bytes aligned at
    /// `level`: a necessary condition (exact for an exact level).
    fn may_fit(v: &Self::Value, size: u64, level: usize) -> bool;
    /// The largest area length in a subtree summarised by `v`.
    fn largest(v: &Self::Value) -> u64;
}

/// Linux's summary: the largest area length in a subtree.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaxSize;

impl Augment<FreeArea> for MaxSize {
    type Value = u64;

    #[inline(always)]
    fn combine(item: &FreeArea, left: Option<u64>, right: Option<u64>) -> u64 {
        (item.end - item.start)
            .max(left.unwrap_or(0))
            .max(right.unwrap_or(0))
    }
}

impl sealed::Sealed for MaxSize {}

impl FitIndex for MaxSize {
    #[inline]
    fn level(_align: u64) -> usize {
        0
    }

    #[inline]
    fn prunes_exactly(align: u64) -> bool {
        align <= PAGE_SIZE
    }

    #[inline(always)]
    fn may_fit(v: &u64, size: u64, _level: usize) -> bool {
        *v >= size
    }

    #[inline]
    fn largest(v: &u64) -> u64 {
        *v
    }
}

/// Alignment levels (log2) tracked by [`AlignLevels`]; level 0 is the plain length. An
/// allocation aligned to `2^k` prunes with the highest level `<= k`: exact when `k` is a level
/// (or below the address granularity), a necessary condition otherwise.
///
/// What they match: 2 MiB (21) is the x86_64 PMD size, what huge mappings align to; 16 KiB
/// (14) is x86_64's `THREAD_SIZE` without KASAN, the alignment of vmalloc'ed kernel stacks;
/// 64 KiB and 256 KiB fill the gap in steps of 4, so an alignment between two levels is
/// pruned by the level below it, at most 4 times looser. Each level costs every node 8 bytes and every update one more
/// capacity (the measured cost is in this module's documentation), hence few levels.
pub const ALIGN_LEVELS: [u32; 5] = [0, 14, 16, 18, 21];

const LEVELS: usize = ALIGN_LEVELS.len();

/// The [`AlignLevels`] summary: per level, the largest capacity in the subtree.
#[derive(Debug, Clone, Copy)]
pub struct AlignCaps([u64; LEVELS]);

impl AlignCaps {
    /// The largest capacity at each level of [`ALIGN_LEVELS`].
    pub fn caps(&self) -> [u64; LEVELS] {
        self.0
    }
}

impl PartialEq for AlignCaps {
    #[inline(always)]
    fn eq(&self, other: &Self) -> bool {
        // Branch-free fold: the derived array comparison becomes a `memcmp` call, which is a
        // measurable share of the tree's retrace.
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// The capacities of one area: for each level, the length left after aligning its start.
#[inline(always)]
fn area_caps(a: &FreeArea) -> [u64; LEVELS] {
    let mut caps = [0; LEVELS];
    for (cap, &shift) in caps.iter_mut().zip(ALIGN_LEVELS.iter()) {
        let mask = (1u64 << shift) - 1;
        // Wrapping add: if aligning overflows, the result wraps below `start` (mask < 2^63)
        // and is rejected by the range test. Branch-free on purpose (hot in the retrace).
        let x = a.start.wrapping_add(mask) & !mask;
        *cap = if x >= a.start && x < a.end {
            a.end - x
        } else {
            0
        };
    }
    caps
}

/// Per-alignment-level summary (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct AlignLevels;

impl Augment<FreeArea> for AlignLevels {
    type Value = AlignCaps;

    #[inline(always)]
    fn combine(item: &FreeArea, left: Option<AlignCaps>, right: Option<AlignCaps>) -> AlignCaps {
        let mut caps = area_caps(item);
        for child in [left, right].into_iter().flatten() {
            for (c, x) in caps.iter_mut().zip(child.0) {
                *c = (*c).max(x);
            }
        }
        AlignCaps(caps)
    }
}

impl sealed::Sealed for AlignLevels {}

impl FitIndex for AlignLevels {
    #[inline]
    fn level(align: u64) -> usize {
        let k = align.trailing_zeros();
        ALIGN_LEVELS.iter().rposition(|&s| s <= k).unwrap_or(0)
    }

    #[inline]
    fn prunes_exactly(align: u64) -> bool {
        align <= PAGE_SIZE || ALIGN_LEVELS[1..].contains(&align.trailing_zeros())
    }

    #[inline(always)]
    fn may_fit(v: &AlignCaps, size: u64, level: usize) -> bool {
        v.0.get(level).is_some_and(|&c| c >= size)
    }

    #[inline]
    fn largest(v: &AlignCaps) -> u64 {
        v.0[0]
    }
}
