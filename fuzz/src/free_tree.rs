//! The `free_tree` target: [`FreeTree`] against a brute-force model, a sorted `Vec` of
//! disjoint, non-adjacent free ranges.
//!
//! Every step is checked: `alloc` / `lowest_fit` must return exactly the lowest aligned fit a
//! linear scan finds (or `None` when there is none), `insert_merge` must merge exactly the
//! neighbours the model merges and refuse an overlap with the error naming the area the model
//! names, `alloc_at` must succeed iff one free range holds the request; after every step the
//! tree's `len`, `free_bytes`, `largest` and `find_containing` around the step's address must
//! agree with the model, and every 16 steps and at the end also its whole free set and
//! `check_invariants`.
//!
//! Quantities are in 4 KiB units from a base that is itself only page aligned (so every
//! tracked alignment level, 8 KiB to 2 MiB, and the ones in between, hit unaligned starts);
//! an input may switch to byte units for the whole run.
//!
//! How it is fast: no allocator instance, one tree and a `Vec`; the per-step check is a few
//! O(1) queries and scans of the (short) model, the whole free set and `check_invariants`
//! every 16 steps (about 3,000 executions/s with ASan from the seeds).

use arbitrary::Arbitrary;
use vmalloc::internals::free_tree::{FreeTree, FreeTreeError};

/// Base address of the managed window: page aligned, not 8 KiB aligned.
const BASE: u64 = 0x7f00_0000_0000 + 0x1000;

/// The run's setup.
#[derive(Debug, Clone)]
pub struct Input {
    /// Units of 1 byte instead of 4 KiB.
    pub bytes: bool,
    /// Initial free ranges `(offset, length)` in units (overlaps are skipped).
    pub initial: Vec<(u16, u16)>,
    /// The operations.
    pub ops: Vec<Op>,
}

impl Input {
    /// Decode fuzzer bytes: the unit flag, up to 15 initial ranges, then operations until the
    /// end.
    pub fn decode(data: &[u8]) -> Input {
        let mut u = arbitrary::Unstructured::new(data);
        let bytes = bool::arbitrary(&mut u).unwrap_or(false);
        let n = u8::arbitrary(&mut u).unwrap_or(0) % 16;
        let initial = (0..n)
            .map(|_| <(u16, u16)>::arbitrary(&mut u).unwrap_or((0, 0)))
            .collect();
        Input {
            bytes,
            initial,
            ops: crate::ops_until_empty(&mut u),
        }
    }
}

/// One step.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `alloc(size, align, vstart, vend)`.
    Alloc {
        /// Size in units (0 allowed: must fail).
        size: u16,
        /// Alignment selector (see `align_of`).
        align: u8,
        /// Window start in units from the base.
        vstart: u16,
        /// Window length in units (0xffff = to the end of the address space).
        vlen: u16,
    },
    /// `lowest_fit` (a peek: nothing changes).
    Peek {
        /// Size in units.
        size: u16,
        /// Alignment selector.
        align: u8,
        /// Window start.
        vstart: u16,
        /// Window length.
        vlen: u16,
    },
    /// Give back (part of) a block allocated earlier: `insert_merge`.
    Free {
        /// Which allocated block.
        idx: u16,
        /// Skip this many units at its start.
        skip: u8,
        /// Free at most this many units (0 = all the rest).
        len: u16,
    },
    /// `insert_merge` of an arbitrary range (may overlap: must be refused exactly).
    Insert {
        /// Start in units from the base.
        start: u16,
        /// Length in units (0: `InvalidRange`).
        len: u16,
    },
    /// `alloc_at` of an arbitrary range.
    AllocAt {
        /// Start in units from the base.
        start: u16,
        /// Length in units.
        len: u16,
    },
    /// `reserve(n)` preloads nodes.
    Reserve(u8),
}

/// The alignment a selector stands for: mostly powers of two from 1 unit to 2^22 units
/// (covering and straddling the tree's levels), sometimes a non-power of two.
fn align_of(sel: u8, unit: u64) -> u64 {
    match sel % 32 {
        31 => 3 * unit.max(4096),
        30 => 0,
        k => 1u64 << (k % 24 + if unit == 1 { 0 } else { 12 }).min(40),
    }
}

/// `x` rounded up to `a` (a power of two), `None` on overflow.
fn align_up(x: u64, a: u64) -> Option<u64> {
    Some(x.checked_add(a - 1)? & !(a - 1))
}

/// The brute-force model.
#[derive(Debug, Default)]
struct Model {
    /// Sorted, disjoint, non-adjacent.
    free: Vec<(u64, u64)>,
}

impl Model {
    fn lowest_fit(&self, size: u64, align: u64, vstart: u64, vend: u64) -> Option<u64> {
        if size == 0 || !align.is_power_of_two() || vstart >= vend {
            return None;
        }
        self.free.iter().find_map(|&(s, e)| {
            let a = align_up(s.max(vstart), align)?;
            let end = a.checked_add(size)?;
            (end <= e.min(vend)).then_some(a)
        })
    }

    /// Remove `[s, e)`, which lies inside one free range.
    fn carve(&mut self, s: u64, e: u64) {
        let i = self
            .free
            .iter()
            .position(|&(a, b)| a <= s && e <= b)
            .expect("carve outside free space");
        let (a, b) = self.free[i];
        self.free.remove(i);
        if e < b {
            self.free.insert(i, (e, b));
        }
        if a < s {
            self.free.insert(i, (a, s));
        }
    }

    /// What `insert_merge(s, e)` must answer.
    fn insert(&mut self, s: u64, e: u64) -> Result<(u64, u64), FreeTreeError> {
        if s >= e {
            return Err(FreeTreeError::InvalidRange { start: s, end: e });
        }
        let overlap = |(a, b): (u64, u64)| FreeTreeError::Overlap {
            start: s,
            end: e,
            free_start: a,
            free_end: b,
        };
        // prev = the last area starting at or below s; next = the one after it.
        let p = self.free.iter().rposition(|&(a, _)| a <= s);
        if let Some(p) = p
            && self.free[p].1 > s
        {
            return Err(overlap(self.free[p]));
        }
        let n = p.map_or(0, |p| p + 1);
        if let Some(&next) = self.free.get(n)
            && next.0 < e
        {
            return Err(overlap(next));
        }
        let (mut lo, mut hi) = (s, e);
        let mut at = n;
        if n < self.free.len() && self.free[n].0 == e {
            hi = self.free[n].1;
            self.free.remove(n);
        }
        if let Some(p) = p
            && self.free[p].1 == s
        {
            lo = self.free[p].0;
            self.free.remove(p);
            at = p;
        }
        self.free.insert(at, (lo, hi));
        Ok((lo, hi))
    }

    fn bytes(&self) -> u64 {
        self.free.iter().map(|&(a, b)| b - a).sum()
    }
}

/// Run one input.
pub fn run(input: &Input) {
    let unit: u64 = if input.bytes { 1 } else { 4096 };
    let at = |u: u16| BASE + u64::from(u) * unit;
    let mut tree = FreeTree::new();
    let mut model = Model::default();
    for &(off, len) in input.initial.iter().take(64) {
        let (s, e) = (at(off), at(off) + u64::from(len) * unit);
        let want = model.insert(s, e);
        let got = tree.insert_merge(s, e);
        assert_eq!(got, want, "initial insert_merge({s:#x}, {e:#x})");
    }
    check(&tree, &model, BASE, true);
    // Blocks handed out (start, end), for `Free`.
    let mut blocks: Vec<(u64, u64)> = Vec::new();
    for (step, op) in input.ops.iter().enumerate() {
        let probe = match *op {
            Op::Alloc {
                size,
                align,
                vstart,
                vlen,
            }
            | Op::Peek {
                size,
                align,
                vstart,
                vlen,
            } => {
                let size = u64::from(size) * unit;
                let align = align_of(align, unit);
                let vs = at(vstart);
                let ve = if vlen == u16::MAX {
                    u64::MAX
                } else {
                    vs + u64::from(vlen) * unit
                };
                let want = model.lowest_fit(size, align, vs, ve);
                let peek = tree.lowest_fit(size, align, vs, ve);
                assert_eq!(
                    peek, want,
                    "step {step}: lowest_fit({size:#x}, {align:#x}, {vs:#x}, {ve:#x})"
                );
                if matches!(op, Op::Alloc { .. }) {
                    let got = tree.alloc(size, align, vs, ve);
                    assert_eq!(
                        got, want,
                        "step {step}: alloc({size:#x}, {align:#x}, {vs:#x}, {ve:#x})"
                    );
                    if let Some(a) = got {
                        assert_eq!(a % align, 0);
                        assert!(vs <= a && a + size <= ve);
                        model.carve(a, a + size);
                        blocks.push((a, a + size));
                    }
                }
                want.unwrap_or(vs)
            }
            Op::Free { idx, skip, len } => {
                if blocks.is_empty() {
                    continue;
                }
                let i = idx as usize % blocks.len();
                let (s, e) = blocks[i];
                let fs = (s + u64::from(skip) * unit).min(e);
                let fe = if len == 0 {
                    e
                } else {
                    (fs + u64::from(len) * unit).min(e)
                };
                if fs >= fe {
                    continue;
                }
                // Keep what is not freed as (up to two) blocks.
                blocks.swap_remove(i);
                if s < fs {
                    blocks.push((s, fs));
                }
                if fe < e {
                    blocks.push((fe, e));
                }
                let want = model.insert(fs, fe);
                assert!(want.is_ok(), "model refused to free an allocated block");
                let got = tree.insert_merge(fs, fe);
                assert_eq!(got, want, "step {step}: insert_merge({fs:#x}, {fe:#x})");
                fs
            }
            Op::Insert { start, len } => {
                let (s, e) = (at(start), at(start) + u64::from(len) * unit);
                let want = model.insert(s, e);
                let got = tree.insert_merge(s, e);
                assert_eq!(got, want, "step {step}: insert_merge({s:#x}, {e:#x})");
                if got.is_ok() {
                    // Allocated blocks inside this range are free now: forget them.
                    blocks.retain(|&(a, b)| b <= s || e <= a);
                }
                s
            }
            Op::AllocAt { start, len } => {
                let (s, e) = (at(start), at(start) + u64::from(len) * unit);
                let fits = s < e && model.free.iter().any(|&(a, b)| a <= s && e <= b);
                let got = tree.alloc_at(s, e);
                if fits {
                    assert_eq!(got, Ok(()), "step {step}: alloc_at({s:#x}, {e:#x})");
                    model.carve(s, e);
                    blocks.push((s, e));
                } else if s >= e {
                    assert_eq!(got, Err(FreeTreeError::InvalidRange { start: s, end: e }));
                } else {
                    assert_eq!(
                        got,
                        Err(FreeTreeError::NotFree { start: s, end: e }),
                        "step {step}: alloc_at({s:#x}, {e:#x}) of non-free range"
                    );
                }
                s
            }
            Op::Reserve(n) => {
                tree.reserve(usize::from(n));
                assert!(tree.spare_nodes() >= usize::from(n));
                BASE
            }
        };
        check(&tree, &model, probe, step % FULL_EVERY == FULL_EVERY - 1);
    }
    check(&tree, &model, BASE, true);
}

/// Steps between two full checks (`check_invariants` and the whole free set, O(n) each);
/// the cheap ones run after every step.
const FULL_EVERY: usize = 16;

/// Compare everything observable with the model: the counters, the largest free area (the
/// root's augmented value) and `find_containing` around the step's address after every step;
/// with `full`, also `check_invariants` and the whole free set.
fn check(tree: &FreeTree, model: &Model, probe: u64, full: bool) {
    if full {
        if let Err(e) = tree.check_invariants() {
            panic!("check_invariants: {e:?}\nmodel: {:x?}", model.free);
        }
        let got: Vec<(u64, u64)> = tree.iter().collect();
        assert_eq!(got, model.free, "free set");
    }
    assert_eq!(tree.len(), model.free.len());
    assert_eq!(tree.is_empty(), model.free.is_empty());
    assert_eq!(tree.free_bytes(), model.bytes());
    let largest = model.free.iter().map(|&(a, b)| b - a).max().unwrap_or(0);
    assert_eq!(tree.largest(), largest);
    for p in [probe, probe.wrapping_sub(1), probe.saturating_add(4096)] {
        let want = model.free.iter().copied().find(|&(a, b)| a <= p && p < b);
        assert_eq!(tree.find_containing(p), want, "find_containing({p:#x})");
    }
}
