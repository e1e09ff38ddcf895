//! TLB shootdowns: the [`TlbFlush`] trait, the [`FlushRange`] an unmap reports, the
//! [`CountingFlush`] no-op implementation and the [`TlbModel`] software TLB.
//!
//! How it works: see [`TlbFlush`] (who flushes, and when), [`FlushRange`] and [`TlbModel`]
//! (the model's own docs; its internals are in [`model`]).
//!
//! Ranges are half-open and read in the 48-bit linear space (`lin`, `lin_end`, `from_lin`
//! below), as the crate documentation's *Ranges* section tells users. A flush of more than
//! [`TLB_SINGLE_PAGE_FLUSH_CEILING`] pages becomes a full flush, as Linux's
//! `tlb_single_page_flush_ceiling` decides for `flush_tlb_kernel_range`.
//!
//! Locking/ordering: [`FlushRange`] is a plain value. The counters of [`CountingFlush`] are
//! `Relaxed` atomics (statistics only). The model's rules are in [`model`].

#[cfg(feature = "std")]
mod model;

#[cfg(feature = "std")]
pub use model::{AccessError, HUGE_SETS, SETS, TlbEntries, TlbModel, WAYS};

use crate::addr::VirtAddr;
use crate::page::PAGE_SIZE;
use crate::sync::{AtomicU64, Ordering};

/// A range flush of more than this many pages becomes a full flush (Linux's default
/// `tlb_single_page_flush_ceiling`, arch/x86/mm/tlb.c).
///
/// Why 33, in Linux's words: large enough to cover the vast majority (at least 95%) of
/// allocations, small enough not to cost much: one single-page flush takes about 100 ns, so
/// the ceiling caps a range flush at about 3 µs, past which flushing everything and refilling
/// is cheaper. Here [`CountingFlush`] and the [`TlbModel`] apply it (a larger range counts
/// in [`TlbStats::full_flushes`] and, in the model, empties every CPU's cache); a kernel's own
/// [`TlbFlush`] decides for itself.
///
#[cfg_attr(feature = "std", doc = "[`TlbModel`]: crate::TlbModel")]
#[cfg_attr(not(feature = "std"), doc = "[`TlbModel`]: crate#features")]
pub const TLB_SINGLE_PAGE_FLUSH_CEILING: u64 = 33;

/// Size of the 48-bit linear virtual address space.
pub(crate) const LINEAR_END: u64 = 1 << 48;
/// Mask of the 48 linear address bits.
pub(crate) const LINEAR_MASK: u64 = LINEAR_END - 1;

/// The 48-bit linear form of `va` (sign-extension bits dropped).
#[inline]
pub(crate) const fn lin(va: VirtAddr) -> u64 {
    va.as_u64() & LINEAR_MASK
}

/// The linear form of an exclusive range end: like [`lin`], except that `VirtAddr::zero()`
/// means the end of the upper half, `1 << 48`.
#[inline]
pub(crate) const fn lin_end(va: VirtAddr) -> u64 {
    if va.as_u64() == 0 {
        LINEAR_END
    } else {
        lin(va)
    }
}

/// The canonical address of linear address `l` (`l <= 1 << 48`; `1 << 48` becomes zero, the
/// exclusive end of the upper half).
#[inline]
pub(crate) const fn from_lin(l: u64) -> VirtAddr {
    VirtAddr::new_truncate(l)
}

/// Counters of a [`TlbFlush`] implementation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TlbStats {
    /// Shootdowns requested (range or full), empty ranges excepted.
    pub flushes: u64,
    /// Shootdowns that flushed everything (asked for, or a range over the ceiling).
    pub full_flushes: u64,
    /// Pages invalidated one by one by range shootdowns under the ceiling.
    pub pages_flushed: u64,
    /// Translations not found in a CPU's cache (a page walk followed). Zero for
    /// implementations without a model.
    pub misses: u64,
    /// Translations served from a CPU's cache. Zero for implementations without a model.
    pub hits: u64,
}

/// How a kernel invalidates stale translations on every CPU.
///
/// Nothing in this crate flushes by itself: [`AddressSpace::unmap`] and
/// [`AddressSpace::protect`] clear or change entries and *report* the [`FlushRange`] of the
/// leaves they touched, like Linux's `vunmap_range_noflush`; the caller batches such ranges
/// (vmalloc's lazy purge unions thousands of them) and hands the union to a `TlbFlush`. A
/// kernel implements the trait with its `invlpg`/IPI code; [`CountingFlush`] only counts;
/// [`TlbModel`] keeps per-CPU translation caches that really go stale, so a test can observe
/// a missing or late flush.
///
/// `flush_range` must not return before no CPU can use a translation of a page in
/// `[start, end)` cached before the call (an IPI shootdown waits for its acknowledgements).
/// A range of more than [`TLB_SINGLE_PAGE_FLUSH_CEILING`] pages may be served by a full
/// flush, as Linux's `flush_tlb_kernel_range` does; both implementations here do so.
///
/// [`AddressSpace::unmap`]: crate::AddressSpace::unmap
/// [`AddressSpace::protect`]: crate::AddressSpace::protect
#[cfg_attr(feature = "std", doc = "[`TlbModel`]: crate::TlbModel")]
#[cfg_attr(not(feature = "std"), doc = "[`TlbModel`]: crate#features")]
pub trait TlbFlush: Send + Sync {
    /// Invalidate the translations of `[start, end)` on every CPU (range ends as in the
    /// [crate docs](crate#ranges); over [`TLB_SINGLE_PAGE_FLUSH_CEILING`] pages this may flush
    /// all).
    fn flush_range(&self, start: VirtAddr, end: VirtAddr);
    /// Invalidate every translation on every CPU.
    fn flush_all(&self);
    /// The counters so far.
    fn stats(&self) -> TlbStats;
    /// The software translation cache behind this flush, if it has one that accesses can go
    /// through: the [`TlbModel`] returns itself, and a hook that wraps a model (counting or
    /// delaying its flushes) may return it, so that callers reading and writing memory "as
    /// a CPU" (vmalloc's `vread` / `vwrite`) use the same translations the flushes
    /// invalidate. `None` (the default) for a flush with no such cache (a real kernel's
    /// shootdown, [`CountingFlush`]): such callers walk the page tables instead, which is
    /// what a CPU's MMU does on a TLB miss.
    #[cfg(feature = "std")]
    fn as_model(&self) -> Option<&crate::TlbModel> {
        None
    }
}

/// The virtual range whose translations must be flushed after an unmap or a permission change.
///
/// Empty when nothing changed. Ranges merge with [`FlushRange::union`] (the smallest range
/// covering both, as the lazy purge does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[must_use = "the range still holds translations until it is flushed (or handed to a lazy free)"]
pub struct FlushRange {
    /// Linear start (inclusive).
    start: u64,
    /// Linear end (exclusive); `start >= end` means empty.
    end: u64,
}

impl FlushRange {
    /// The empty range.
    pub const fn empty() -> Self {
        Self { start: 0, end: 0 }
    }

    /// The pages covering `[start, end)` (range ends as in the [crate docs](crate#ranges)),
    /// rounded out to page boundaries; empty when `end <= start`.
    pub fn new(start: VirtAddr, end: VirtAddr) -> Self {
        let s = lin(start) & !(PAGE_SIZE - 1);
        let e = lin_end(end);
        let e = (e + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        if e <= s {
            Self::empty()
        } else {
            Self { start: s, end: e }
        }
    }

    /// From linear bounds (already page aligned, `end <= 1 << 48`).
    #[inline]
    pub(crate) const fn from_linear(start: u64, end: u64) -> Self {
        if end <= start {
            Self::empty()
        } else {
            Self { start, end }
        }
    }

    /// Linear bounds `(start, end)`; meaningless when empty.
    #[inline]
    pub(crate) const fn linear(self) -> (u64, u64) {
        (self.start, self.end)
    }

    /// Whether nothing needs flushing.
    #[inline]
    pub const fn is_empty(self) -> bool {
        self.start >= self.end
    }

    /// First address of the range (`VirtAddr::zero()` when empty).
    pub const fn start(self) -> VirtAddr {
        if self.is_empty() {
            VirtAddr::zero()
        } else {
            from_lin(self.start)
        }
    }

    /// Exclusive end of the range (read as in the [crate docs](crate#ranges): the end of the
    /// upper half is `VirtAddr::zero()`); `VirtAddr::zero()` when empty too.
    pub const fn end(self) -> VirtAddr {
        if self.is_empty() {
            VirtAddr::zero()
        } else {
            from_lin(self.end)
        }
    }

    /// Number of 4 KiB pages covered.
    pub const fn pages(self) -> u64 {
        if self.is_empty() {
            0
        } else {
            (self.end - self.start) / PAGE_SIZE
        }
    }

    /// Whether `va` lies in the range.
    pub const fn contains(self, va: VirtAddr) -> bool {
        let l = lin(va);
        !self.is_empty() && l >= self.start && l < self.end
    }

    /// The smallest range covering both.
    pub const fn union(self, other: Self) -> Self {
        if self.is_empty() {
            return other;
        }
        if other.is_empty() {
            return self;
        }
        Self {
            start: if self.start < other.start {
                self.start
            } else {
                other.start
            },
            end: if self.end > other.end {
                self.end
            } else {
                other.end
            },
        }
    }

    /// Grow the range to cover linear `[start, end)`.
    #[inline]
    pub(crate) fn add_linear(&mut self, start: u64, end: u64) {
        *self = self.union(Self::from_linear(start, end));
    }

    /// Hand the range to `tlb` (nothing when empty).
    pub fn flush(self, tlb: &dyn TlbFlush) {
        if !self.is_empty() {
            tlb.flush_range(self.start(), self.end());
        }
    }
}

/// Shared shootdown accounting of [`CountingFlush`] and [`TlbModel`].
#[derive(Debug, Default)]
pub(crate) struct FlushCounters {
    flushes: AtomicU64,
    full_flushes: AtomicU64,
    pages_flushed: AtomicU64,
}

/// What a range flush turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushKind {
    /// Empty range: nothing to do.
    Nothing,
    /// Invalidate linear pages `[start, end)` one by one.
    Pages(u64, u64),
    /// Over the ceiling: flush everything.
    All,
}

impl FlushCounters {
    /// Decide and count a range flush.
    pub(crate) fn range(&self, start: VirtAddr, end: VirtAddr) -> FlushKind {
        let r = FlushRange::new(start, end);
        if r.is_empty() {
            return FlushKind::Nothing;
        }
        if r.pages() > TLB_SINGLE_PAGE_FLUSH_CEILING {
            self.all();
            return FlushKind::All;
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.pages_flushed.fetch_add(r.pages(), Ordering::Relaxed);
        let (s, e) = r.linear();
        FlushKind::Pages(s, e)
    }

    /// Count a full flush.
    pub(crate) fn all(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.full_flushes.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters (misses and hits zero).
    pub(crate) fn stats(&self) -> TlbStats {
        TlbStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            full_flushes: self.full_flushes.load(Ordering::Relaxed),
            pages_flushed: self.pages_flushed.load(Ordering::Relaxed),
            misses: 0,
            hits: 0,
        }
    }
}

/// A [`TlbFlush`] that only counts (for code that has no TLB to flush, and for measuring how
/// many shootdowns a workload asks for).
#[derive(Debug, Default)]
pub struct CountingFlush {
    counters: FlushCounters,
}

impl CountingFlush {
    /// A flusher with zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }
}

impl TlbFlush for CountingFlush {
    fn flush_range(&self, start: VirtAddr, end: VirtAddr) {
        let _ = self.counters.range(start, end);
    }

    fn flush_all(&self) {
        self.counters.all();
    }

    fn stats(&self) -> TlbStats {
        self.counters.stats()
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    fn va(x: u64) -> VirtAddr {
        VirtAddr::new(x)
    }

    #[test]
    fn flush_range_rounds_out_and_unions() {
        let r = FlushRange::new(va(0x1234), va(0x3001));
        assert_eq!(r.start(), va(0x1000));
        assert_eq!(r.end(), va(0x4000));
        assert_eq!(r.pages(), 3);
        assert!(r.contains(va(0x3fff)));
        assert!(!r.contains(va(0x4000)));
        let u = r.union(FlushRange::new(va(0x10_000), va(0x11_000)));
        assert_eq!((u.start(), u.end()), (va(0x1000), va(0x11_000)));
        assert_eq!(FlushRange::empty().union(r), r);
        assert_eq!(r.union(FlushRange::empty()), r);
        assert!(FlushRange::new(va(0x5000), va(0x5000)).is_empty());
        assert_eq!(FlushRange::empty().pages(), 0);
    }

    #[test]
    fn range_ends_at_the_top_of_each_half() {
        let top_lower = VirtAddr::new_truncate(1 << 47);
        let r = FlushRange::new(va(0x7fff_ffff_e000), top_lower);
        assert_eq!(r.pages(), 2);
        assert_eq!(r.end(), top_lower);
        let r = FlushRange::new(va(0xffff_ffff_ffff_f000), VirtAddr::zero());
        assert_eq!(r.pages(), 1);
        assert!(r.contains(va(0xffff_ffff_ffff_ffff)));
    }

    #[test]
    fn counting_flush_applies_the_ceiling() {
        let f = CountingFlush::new();
        FlushRange::new(va(0), va(33 * PAGE_SIZE)).flush(&f);
        assert_eq!(f.stats().pages_flushed, 33);
        assert_eq!(f.stats().full_flushes, 0);
        FlushRange::new(va(0), va(34 * PAGE_SIZE)).flush(&f);
        FlushRange::empty().flush(&f);
        f.flush_all();
        let s = f.stats();
        assert_eq!((s.flushes, s.full_flushes, s.pages_flushed), (3, 2, 33));
        assert_eq!((s.hits, s.misses), (0, 0));
    }
}
