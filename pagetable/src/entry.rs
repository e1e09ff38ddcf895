//! Page-table entries with the exact x86_64 bit layout.
//!
//! * [`PageTableFlags`]: the flag bits (0..=11 and 52..=63). Bit 9 (an "available to
//!   software" bit) doubles as [`PageTableFlags::COW`], the copy-on-write marker.
//! * [`Pte`]: a plain entry *value* (a `u64`): physical address in bits 12..52, flags in the
//!   rest.
//! * [`PageTableEntry`]: an entry *slot* in a table, `#[repr(transparent)]` over
//!   [`crate::sync::AtomicU64`], so disjoint ranges can be mapped by several threads at once
//!   without a lock and a concurrent reader never sees a torn entry.
//! * [`PageTable`]: `#[repr(transparent)]` over `[PageTableEntry; 512]`, i.e. exactly one
//!   4 KiB frame of arena words (see `PhysArena::table`).
//!
//! Locking/ordering rules: an entry is only ever changed by single atomic operations
//! (`store`, `swap`, `compare_exchange`, `fetch_or`/`fetch_and` on flags). Installing a
//! pointer to a freshly zeroed table uses `Release` (by the installer) paired with `Acquire`
//! loads (by walkers), so a walker that sees the entry also sees the zeroed table; leaf
//! updates whose data is published elsewhere may use `Relaxed`. The ordering is the caller's
//! choice: every method takes it explicitly.

use alloc::boxed::Box;
use core::fmt;
use core::ops::Index;

use bitflags::bitflags;

use crate::addr::PhysAddr;
use crate::page::{ENTRIES_PER_TABLE, PageTableIndex, PhysFrame, Size4KiB};
use crate::sync::{AtomicU64, Ordering};

bitflags! {
    /// The flag bits of an x86_64 page-table entry (Intel SDM vol. 3, 4.5).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct PageTableFlags: u64 {
        /// Bit 0: the entry is valid.
        const PRESENT = 1 << 0;
        /// Bit 1: writes allowed (for a table: through it).
        const WRITABLE = 1 << 1;
        /// Bit 2: user-mode access allowed.
        const USER_ACCESSIBLE = 1 << 2;
        /// Bit 3: write-through caching.
        const WRITE_THROUGH = 1 << 3;
        /// Bit 4: caching disabled.
        const NO_CACHE = 1 << 4;
        /// Bit 5: set by the CPU on access.
        const ACCESSED = 1 << 5;
        /// Bit 6: set by the CPU on write (leaves only).
        const DIRTY = 1 << 6;
        /// Bit 7: this level-2/level-3 entry maps a 2 MiB/1 GiB page (PS).
        const HUGE_PAGE = 1 << 7;
        /// Bit 8: the translation survives a CR3 switch.
        const GLOBAL = 1 << 8;
        /// Bit 9, available to software (used as [`PageTableFlags::COW`]).
        const BIT_9 = 1 << 9;
        /// Bit 10, available to software.
        const BIT_10 = 1 << 10;
        /// Bit 11, available to software.
        const BIT_11 = 1 << 11;
        /// Bit 52, available to software.
        const BIT_52 = 1 << 52;
        /// Bit 53, available to software.
        const BIT_53 = 1 << 53;
        /// Bit 54, available to software.
        const BIT_54 = 1 << 54;
        /// Bit 55, available to software.
        const BIT_55 = 1 << 55;
        /// Bit 56, available to software.
        const BIT_56 = 1 << 56;
        /// Bit 57, available to software.
        const BIT_57 = 1 << 57;
        /// Bit 58, available to software.
        const BIT_58 = 1 << 58;
        /// Bit 59, available to software (protection key bit 0 when PKE is on).
        const BIT_59 = 1 << 59;
        /// Bit 60, available to software (protection key bit 1 when PKE is on).
        const BIT_60 = 1 << 60;
        /// Bit 61, available to software (protection key bit 2 when PKE is on).
        const BIT_61 = 1 << 61;
        /// Bit 62, available to software (protection key bit 3 when PKE is on).
        const BIT_62 = 1 << 62;
        /// Bit 63: instruction fetches are not allowed (needs EFER.NXE).
        const NO_EXECUTE = 1 << 63;
    }
}

impl PageTableFlags {
    /// Copy-on-write marker (software bit 9): the page is shared read-only after a fork; a
    /// write fault copies it (or takes it back if the reference count is one).
    pub const COW: Self = Self::BIT_9;
}

/// Bits 12..52 of an entry: the physical address of the frame or next table.
pub const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// A page-table entry value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(transparent)]
pub struct Pte(u64);

impl Pte {
    /// The unused (all-zero) entry.
    pub const UNUSED: Pte = Pte(0);

    /// An entry pointing at `addr` with `flags`. The low 12 bits of `addr` must be zero
    /// (`debug_assert!`; masked off in release builds). Flag bits inside 12..52 cannot be
    /// expressed by [`PageTableFlags`], so the two parts never overlap.
    #[inline]
    pub const fn new(addr: PhysAddr, flags: PageTableFlags) -> Self {
        debug_assert!(
            addr.as_u64() & !ADDR_MASK == 0,
            "Pte::new: address not 4 KiB aligned"
        );
        Self((addr.as_u64() & ADDR_MASK) | flags.bits())
    }

    /// The entry with raw bits `bits`.
    #[inline]
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The raw bits.
    #[inline]
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether the entry is all zero.
    #[inline]
    pub const fn is_unused(self) -> bool {
        self.0 == 0
    }

    /// Whether `PRESENT` is set.
    #[inline]
    pub const fn is_present(self) -> bool {
        self.0 & PageTableFlags::PRESENT.bits() != 0
    }

    /// Whether `HUGE_PAGE` is set.
    #[inline]
    pub const fn is_huge(self) -> bool {
        self.0 & PageTableFlags::HUGE_PAGE.bits() != 0
    }

    /// The physical address (bits 12..52).
    #[inline]
    pub const fn addr(self) -> PhysAddr {
        PhysAddr::new_truncate(self.0 & ADDR_MASK)
    }

    /// The flags (every bit outside 12..52).
    #[inline]
    pub const fn flags(self) -> PageTableFlags {
        PageTableFlags::from_bits_truncate(self.0)
    }

    /// The 4 KiB frame this entry points at, if it is present and not a huge-page leaf.
    #[inline]
    pub const fn frame(self) -> Option<PhysFrame<Size4KiB>> {
        if self.is_present() && !self.is_huge() {
            Some(PhysFrame::containing_address(self.addr()))
        } else {
            None
        }
    }

    /// The same address with `flags` instead.
    #[inline]
    pub const fn with_flags(self, flags: PageTableFlags) -> Self {
        Self((self.0 & ADDR_MASK) | flags.bits())
    }

    /// The same flags with `addr` instead (4 KiB aligned, as for [`Pte::new`]).
    #[inline]
    pub const fn with_addr(self, addr: PhysAddr) -> Self {
        Self::new(addr, self.flags())
    }
}

impl fmt::Debug for Pte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pte")
            .field("addr", &self.addr())
            .field("flags", &self.flags())
            .finish()
    }
}

/// One entry slot of a page table: an atomic 64-bit word.
#[repr(transparent)]
pub struct PageTableEntry(AtomicU64);

impl PageTableEntry {
    /// A slot holding `pte` (page tables normally live in the arena; this is for tests and
    /// local scratch tables).
    pub fn new(pte: Pte) -> Self {
        Self(AtomicU64::new(pte.0))
    }

    /// Read the entry.
    #[inline]
    pub fn load(&self, order: Ordering) -> Pte {
        Pte(self.0.load(order))
    }

    /// Overwrite the entry.
    #[inline]
    pub fn store(&self, pte: Pte, order: Ordering) {
        self.0.store(pte.0, order);
    }

    /// Replace the entry, returning the old value.
    #[inline]
    pub fn swap(&self, pte: Pte, order: Ordering) -> Pte {
        Pte(self.0.swap(pte.0, order))
    }

    /// Replace the entry with `new` if it still holds `current`; `Err(actual)` otherwise.
    #[inline]
    pub fn compare_exchange(
        &self,
        current: Pte,
        new: Pte,
        success: Ordering,
        failure: Ordering,
    ) -> Result<Pte, Pte> {
        self.0
            .compare_exchange(current.0, new.0, success, failure)
            .map(Pte)
            .map_err(Pte)
    }

    /// Atomically set `flags`, returning the previous entry.
    #[inline]
    pub fn fetch_set_flags(&self, flags: PageTableFlags, order: Ordering) -> Pte {
        Pte(self.0.fetch_or(flags.bits(), order))
    }

    /// Atomically clear `flags`, returning the previous entry.
    #[inline]
    pub fn fetch_clear_flags(&self, flags: PageTableFlags, order: Ordering) -> Pte {
        Pte(self.0.fetch_and(!flags.bits(), order))
    }

    /// Whether the entry is all zero.
    #[inline]
    pub fn is_unused(&self, order: Ordering) -> bool {
        self.load(order).is_unused()
    }
}

impl fmt::Debug for PageTableEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.load(Ordering::Relaxed), f)
    }
}

/// A 4 KiB page table: 512 atomic entries.
#[repr(transparent)]
pub struct PageTable {
    entries: [PageTableEntry; ENTRIES_PER_TABLE],
}

impl PageTable {
    /// A table of unused entries (for tests and scratch use; real tables live in the arena).
    pub fn new_zeroed() -> Box<Self> {
        Box::new(Self {
            entries: core::array::from_fn(|_| PageTableEntry::new(Pte::UNUSED)),
        })
    }

    /// View atomic words as consecutive tables: table `i` is words `512 * i .. 512 * (i + 1)`
    /// (a remainder shorter than a table is left out).
    ///
    /// What a page-table walk indexes: with the arena's words, table `i` is the frame `i`
    /// pages above the arena's base, so one bounds check of `i` covers the whole table.
    #[inline]
    pub(crate) fn tables_from_words(words: &[AtomicU64]) -> &[PageTable] {
        let n = words.len() / ENTRIES_PER_TABLE;
        // SAFETY: `PageTable` is `repr(transparent)` over `[PageTableEntry; 512]`, and
        // `PageTableEntry` is `repr(transparent)` over `AtomicU64`, so `PageTable` has the
        // layout (size, alignment, validity) of `[AtomicU64; 512]`, and `n` consecutive tables
        // are laid out exactly as `512 * n` consecutive `AtomicU64`s, which `words` holds from
        // its start (`512 * n <= words.len()`). The pointer is non-null and aligned for
        // `AtomicU64`, which is `PageTable`'s alignment. The slice borrows `words` (same
        // lifetime) and every element is an atomic, so shared mutation through either view
        // breaks no aliasing rule.
        unsafe { core::slice::from_raw_parts(words.as_ptr().cast::<PageTable>(), n) }
    }

    /// The entries.
    #[inline]
    pub fn entries(&self) -> &[PageTableEntry; ENTRIES_PER_TABLE] {
        &self.entries
    }

    /// Iterate over the entries.
    #[inline]
    pub fn iter(&self) -> core::slice::Iter<'_, PageTableEntry> {
        self.entries.iter()
    }

    /// Whether every entry is unused (a snapshot: entries are read one by one).
    pub fn is_empty(&self, order: Ordering) -> bool {
        self.entries.iter().all(|e| e.is_unused(order))
    }

    /// Set every entry to unused.
    pub fn zero(&self, order: Ordering) {
        for e in &self.entries {
            e.store(Pte::UNUSED, order);
        }
    }
}

impl Index<PageTableIndex> for PageTable {
    type Output = PageTableEntry;
    #[inline]
    fn index(&self, i: PageTableIndex) -> &PageTableEntry {
        &self.entries[usize::from(i)]
    }
}

impl Index<usize> for PageTable {
    type Output = PageTableEntry;
    /// Entry `i` (`i < 512`; a larger index panics like any slice index).
    #[inline]
    fn index(&self, i: usize) -> &PageTableEntry {
        &self.entries[i]
    }
}

impl fmt::Debug for PageTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (i, e) in self.entries.iter().enumerate() {
            let v = e.load(Ordering::Relaxed);
            if !v.is_unused() {
                m.entry(&i, &v);
            }
        }
        m.finish()
    }
}

#[cfg(test)]
mod flag_tests {
    use super::*;

    #[test]
    fn flag_bits_match_x86_64() {
        type F = PageTableFlags;
        let expect: [(F, u64); 14] = [
            (F::PRESENT, 0x1),
            (F::WRITABLE, 0x2),
            (F::USER_ACCESSIBLE, 0x4),
            (F::WRITE_THROUGH, 0x8),
            (F::NO_CACHE, 0x10),
            (F::ACCESSED, 0x20),
            (F::DIRTY, 0x40),
            (F::HUGE_PAGE, 0x80),
            (F::GLOBAL, 0x100),
            (F::BIT_9, 0x200),
            (F::BIT_10, 0x400),
            (F::BIT_11, 0x800),
            (F::BIT_52, 0x0010_0000_0000_0000),
            (F::NO_EXECUTE, 0x8000_0000_0000_0000),
        ];
        for (f, v) in expect {
            assert_eq!(f.bits(), v, "{f:?}");
        }
        assert_eq!(F::BIT_62.bits(), 1 << 62);
        assert_eq!(F::COW, F::BIT_9);
        // Flags and address never overlap, and together cover every bit.
        assert_eq!(F::all().bits() & ADDR_MASK, 0);
        assert_eq!(F::all().bits() | ADDR_MASK, u64::MAX);
    }

    #[test]
    fn pte_value_round_trip() {
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        let pa = PhysAddr::new(0x000f_ffff_ffff_f000);
        let p = Pte::new(pa, flags);
        assert_eq!(p.bits(), 0x800f_ffff_ffff_f003);
        assert_eq!(p.addr(), pa);
        assert_eq!(p.flags(), flags);
        assert!(p.is_present() && !p.is_huge() && !p.is_unused());
        assert_eq!(p.frame(), Some(PhysFrame::containing_address(pa)));
        let h = p.with_flags(flags | PageTableFlags::HUGE_PAGE);
        assert!(h.is_huge());
        assert_eq!(h.frame(), None);
        assert_eq!(h.addr(), pa);
        let moved = p.with_addr(PhysAddr::new(0x2000));
        assert_eq!(moved.addr().as_u64(), 0x2000);
        assert_eq!(moved.flags(), flags);
        assert!(Pte::UNUSED.is_unused());
        assert_eq!(Pte::UNUSED.frame(), None);
        assert_eq!(Pte::from_bits(0x1003).addr().as_u64(), 0x1000);
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn atomic_entry_ops() {
        let e = PageTableEntry::new(Pte::UNUSED);
        let a = Pte::new(PhysAddr::new(0x5000), PageTableFlags::PRESENT);
        assert_eq!(
            e.compare_exchange(Pte::UNUSED, a, Ordering::AcqRel, Ordering::Acquire),
            Ok(Pte::UNUSED)
        );
        assert_eq!(
            e.compare_exchange(Pte::UNUSED, a, Ordering::AcqRel, Ordering::Acquire),
            Err(a)
        );
        let old = e.fetch_set_flags(
            PageTableFlags::WRITABLE | PageTableFlags::COW,
            Ordering::Relaxed,
        );
        assert_eq!(old, a);
        let cur = e.load(Ordering::Relaxed);
        assert!(
            cur.flags()
                .contains(PageTableFlags::COW | PageTableFlags::WRITABLE)
        );
        e.fetch_clear_flags(PageTableFlags::WRITABLE, Ordering::Relaxed);
        assert!(
            !e.load(Ordering::Relaxed)
                .flags()
                .contains(PageTableFlags::WRITABLE)
        );
        assert_eq!(e.load(Ordering::Relaxed).addr().as_u64(), 0x5000);
        assert_eq!(
            e.swap(Pte::UNUSED, Ordering::Relaxed).addr().as_u64(),
            0x5000
        );
        assert!(e.is_unused(Ordering::Relaxed));
    }

    #[test]
    fn table_indexing_and_view() {
        let t = PageTable::new_zeroed();
        assert!(t.is_empty(Ordering::Relaxed));
        let i = PageTableIndex::new_truncate(7);
        t[i].store(
            Pte::new(PhysAddr::new(0x7000), PageTableFlags::PRESENT),
            Ordering::Relaxed,
        );
        assert_eq!(t[7].load(Ordering::Relaxed).addr().as_u64(), 0x7000);
        assert!(!t.is_empty(Ordering::Relaxed));
        assert_eq!(format!("{t:?}").matches("Pte").count(), 1);
        t.zero(Ordering::Relaxed);
        assert!(t.is_empty(Ordering::Relaxed));
        assert_eq!(core::mem::size_of::<PageTable>(), 4096);

        let words: Vec<AtomicU64> = (0..1100).map(AtomicU64::new).collect();
        let view = PageTable::tables_from_words(&words);
        assert_eq!(view.len(), 2, "the 76-word remainder is no table");
        assert_eq!(view[0][511].load(Ordering::Relaxed).bits(), 511);
        assert_eq!(view[1][0].load(Ordering::Relaxed).bits(), 512);
        view[1][3].store(Pte::UNUSED, Ordering::Relaxed);
        assert_eq!(words[515].load(Ordering::Relaxed), 0);
        assert!(PageTable::tables_from_words(&words[..511]).is_empty());
    }

    #[test]
    fn concurrent_cas_install_has_one_winner() {
        use std::sync::Arc;
        use std::thread;
        let t: Arc<PageTable> = Arc::from(PageTable::new_zeroed());
        let wins: Vec<_> = (0..4u64)
            .map(|k| {
                let t = Arc::clone(&t);
                thread::spawn(move || {
                    let mut won = 0;
                    for i in 0..512usize {
                        let new = Pte::new(PhysAddr::new((k + 1) << 12), PageTableFlags::PRESENT);
                        if t[i]
                            .compare_exchange(Pte::UNUSED, new, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                        {
                            won += 1;
                        }
                    }
                    won
                })
            })
            .collect();
        let total: u32 = wins.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(total, 512);
        assert!(t.iter().all(|e| e.load(Ordering::Relaxed).is_present()));
    }
}
