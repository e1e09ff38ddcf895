//! Pages, physical frames, page sizes and page-table indices, in the `x86_64` crate's
//! vocabulary.
//!
//! A [`Page<S>`] is a virtual page of size `S` (4 KiB, 2 MiB or 1 GiB); a [`PhysFrame<S>`] is a
//! physical frame of that size. Both are just an aligned start address with the size in the
//! type; their constructors check the alignment ([`AddrError::Misaligned`]) and the page
//! numbers round-trip (`from_number(p.number()) == p`). [`PageRange`] / [`PhysFrameRange`] are
//! half-open iterators.
//!
//! [`PageTableIndex`] is a 9-bit index into a 512-entry table; it is always below 512.
//!
//! Locking/ordering: plain `Copy` values, no shared state.

use core::fmt;
use core::hash::Hash;
use core::marker::PhantomData;
use core::ops::{Add, Sub};

use crate::addr::{AddrError, PhysAddr, VirtAddr};

/// The base page size, 4 KiB.
pub const PAGE_SIZE: u64 = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;
/// Entries per page table.
pub const ENTRIES_PER_TABLE: usize = 512;

/// A page size: 4 KiB, 2 MiB or 1 GiB.
pub trait PageSize: Copy + Eq + Ord + Hash + fmt::Debug + Send + Sync + 'static {
    /// The size in bytes.
    const SIZE: u64;
    /// log2 of [`PageSize::SIZE`].
    const SHIFT: u32;
    /// A human-readable name ("4KiB", ..).
    const DEBUG_STR: &'static str;
}

/// The 4 KiB page size (a level-1 leaf).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Size4KiB {}
/// The 2 MiB page size (a level-2 leaf with `HUGE_PAGE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Size2MiB {}
/// The 1 GiB page size (a level-3 leaf with `HUGE_PAGE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Size1GiB {}

impl PageSize for Size4KiB {
    const SIZE: u64 = 1 << 12;
    const SHIFT: u32 = 12;
    const DEBUG_STR: &'static str = "4KiB";
}
impl PageSize for Size2MiB {
    const SIZE: u64 = 1 << 21;
    const SHIFT: u32 = 21;
    const DEBUG_STR: &'static str = "2MiB";
}
impl PageSize for Size1GiB {
    const SIZE: u64 = 1 << 30;
    const SHIFT: u32 = 30;
    const DEBUG_STR: &'static str = "1GiB";
}

/// A 9-bit index into a page table (always `< 512`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PageTableIndex(u16);

impl PageTableIndex {
    /// `index` if it is below 512, [`AddrError::IndexOutOfRange`] otherwise.
    #[inline]
    pub const fn try_new(index: u16) -> Result<Self, AddrError> {
        if (index as usize) < ENTRIES_PER_TABLE {
            Ok(Self(index))
        } else {
            Err(AddrError::IndexOutOfRange { index })
        }
    }

    /// `index % 512`.
    #[inline]
    pub const fn new_truncate(index: u16) -> Self {
        Self(index % ENTRIES_PER_TABLE as u16)
    }
}

impl From<PageTableIndex> for u16 {
    fn from(i: PageTableIndex) -> u16 {
        i.0
    }
}
impl From<PageTableIndex> for u64 {
    fn from(i: PageTableIndex) -> u64 {
        u64::from(i.0)
    }
}
impl From<PageTableIndex> for usize {
    fn from(i: PageTableIndex) -> usize {
        usize::from(i.0)
    }
}
impl TryFrom<u16> for PageTableIndex {
    type Error = AddrError;
    fn try_from(v: u16) -> Result<Self, AddrError> {
        Self::try_new(v)
    }
}

/// A virtual page of size `S`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Page<S: PageSize = Size4KiB> {
    start: VirtAddr,
    size: PhantomData<S>,
}

impl<S: PageSize> Page<S> {
    /// The page size in bytes.
    pub const SIZE: u64 = S::SIZE;

    /// The page starting at `addr`; [`AddrError::Misaligned`] if `addr` is not `S`-aligned.
    #[inline]
    pub const fn from_start_address(addr: VirtAddr) -> Result<Self, AddrError> {
        if addr.is_aligned(S::SIZE) {
            Ok(Self {
                start: addr,
                size: PhantomData,
            })
        } else {
            Err(AddrError::Misaligned {
                addr: addr.as_u64(),
                align: S::SIZE,
            })
        }
    }

    /// The page containing `addr`.
    #[inline]
    pub const fn containing_address(addr: VirtAddr) -> Self {
        Self {
            start: addr.align_down(S::SIZE),
            size: PhantomData,
        }
    }

    /// The first address of the page.
    #[inline]
    pub const fn start_address(self) -> VirtAddr {
        self.start
    }

    /// The page size in bytes.
    #[inline]
    pub const fn size(self) -> u64 {
        S::SIZE
    }

    /// The page number: the start address divided by the page size (upper-half pages have
    /// large numbers since the address is sign-extended).
    #[inline]
    pub const fn number(self) -> u64 {
        self.start.as_u64() >> S::SHIFT
    }

    /// The page with number `n`; an error if `n * SIZE` is not a canonical address.
    #[inline]
    pub const fn from_number(n: u64) -> Result<Self, AddrError> {
        if n > (u64::MAX >> S::SHIFT) {
            return Err(AddrError::NumberOutOfRange {
                number: n,
                size: S::SIZE,
            });
        }
        match VirtAddr::try_new(n << S::SHIFT) {
            Ok(start) => Ok(Self {
                start,
                size: PhantomData,
            }),
            Err(_) => Err(AddrError::NumberOutOfRange {
                number: n,
                size: S::SIZE,
            }),
        }
    }

    /// Index of this page in the PML4.
    #[inline]
    pub const fn p4_index(self) -> PageTableIndex {
        self.start.p4_index()
    }
    /// Index of this page in its level-3 table.
    #[inline]
    pub const fn p3_index(self) -> PageTableIndex {
        self.start.p3_index()
    }
    /// Index of this page in its level-2 table.
    #[inline]
    pub const fn p2_index(self) -> PageTableIndex {
        self.start.p2_index()
    }
    /// Index of this page in its level-1 table (meaningful for 4 KiB pages).
    #[inline]
    pub const fn p1_index(self) -> PageTableIndex {
        self.start.p1_index()
    }

    /// The pages `start..end` (half-open).
    #[inline]
    pub const fn range(start: Self, end: Self) -> PageRange<S> {
        PageRange { start, end }
    }

    /// The next page, if it is still a canonical address.
    #[inline]
    pub const fn checked_next(self) -> Option<Self> {
        match self.start.checked_add(S::SIZE) {
            Some(start) => Some(Self {
                start,
                size: PhantomData,
            }),
            None => None,
        }
    }
}

impl<S: PageSize> fmt::Debug for Page<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Page[{}]({:#x})", S::DEBUG_STR, self.start.as_u64())
    }
}

impl<S: PageSize> Add<u64> for Page<S> {
    type Output = Self;
    /// `rhs` pages further on (range checked by `debug_assert!`, like `VirtAddr + u64`).
    #[inline]
    fn add(self, rhs: u64) -> Self {
        Self::containing_address(self.start + rhs * S::SIZE)
    }
}

impl<S: PageSize> Sub<u64> for Page<S> {
    type Output = Self;
    /// `rhs` pages back (range checked by `debug_assert!`).
    #[inline]
    fn sub(self, rhs: u64) -> Self {
        Self::containing_address(self.start - rhs * S::SIZE)
    }
}

impl<S: PageSize> Sub<Page<S>> for Page<S> {
    type Output = u64;
    /// The number of pages from `rhs` to `self`.
    #[inline]
    fn sub(self, rhs: Self) -> u64 {
        (self.start - rhs.start) / S::SIZE
    }
}

/// The half-open range of pages `start..end`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PageRange<S: PageSize = Size4KiB> {
    /// The first page in the range.
    pub start: Page<S>,
    /// The first page after the range.
    pub end: Page<S>,
}

impl<S: PageSize> PageRange<S> {
    /// Whether the range holds no page.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
    /// The number of pages in the range.
    pub fn len(&self) -> u64 {
        if self.is_empty() {
            0
        } else {
            self.end - self.start
        }
    }
}

impl<S: PageSize> Iterator for PageRange<S> {
    type Item = Page<S>;
    fn next(&mut self) -> Option<Page<S>> {
        if self.start >= self.end {
            return None;
        }
        let p = self.start;
        match p.checked_next() {
            Some(n) => self.start = n,
            None => self.start = self.end,
        }
        Some(p)
    }
}

/// A physical frame of size `S`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PhysFrame<S: PageSize = Size4KiB> {
    start: PhysAddr,
    size: PhantomData<S>,
}

impl<S: PageSize> PhysFrame<S> {
    /// The frame size in bytes.
    pub const SIZE: u64 = S::SIZE;

    /// The frame starting at `addr`; [`AddrError::Misaligned`] if `addr` is not `S`-aligned.
    #[inline]
    pub const fn from_start_address(addr: PhysAddr) -> Result<Self, AddrError> {
        if addr.is_aligned(S::SIZE) {
            Ok(Self {
                start: addr,
                size: PhantomData,
            })
        } else {
            Err(AddrError::Misaligned {
                addr: addr.as_u64(),
                align: S::SIZE,
            })
        }
    }

    /// The frame containing `addr`.
    #[inline]
    pub const fn containing_address(addr: PhysAddr) -> Self {
        Self {
            start: addr.align_down(S::SIZE),
            size: PhantomData,
        }
    }

    /// The first address of the frame.
    #[inline]
    pub const fn start_address(self) -> PhysAddr {
        self.start
    }

    /// The frame size in bytes.
    #[inline]
    pub const fn size(self) -> u64 {
        S::SIZE
    }

    /// The frame number (PFN): the start address divided by the frame size.
    #[inline]
    pub const fn number(self) -> u64 {
        self.start.as_u64() >> S::SHIFT
    }

    /// The frame with number `n`; an error if `n * SIZE` does not fit in 52 bits.
    #[inline]
    pub const fn from_number(n: u64) -> Result<Self, AddrError> {
        if n > (PhysAddr::MASK >> S::SHIFT) {
            return Err(AddrError::NumberOutOfRange {
                number: n,
                size: S::SIZE,
            });
        }
        Ok(Self {
            start: PhysAddr::new_truncate(n << S::SHIFT),
            size: PhantomData,
        })
    }

    /// The frames `start..end` (half-open).
    #[inline]
    pub const fn range(start: Self, end: Self) -> PhysFrameRange<S> {
        PhysFrameRange { start, end }
    }

    /// The next frame, if it still fits in 52 bits.
    #[inline]
    pub const fn checked_next(self) -> Option<Self> {
        match self.start.checked_add(S::SIZE) {
            Some(start) => Some(Self {
                start,
                size: PhantomData,
            }),
            None => None,
        }
    }
}

impl<S: PageSize> fmt::Debug for PhysFrame<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysFrame[{}]({:#x})", S::DEBUG_STR, self.start.as_u64())
    }
}

impl<S: PageSize> Add<u64> for PhysFrame<S> {
    type Output = Self;
    /// `rhs` frames further on (range checked by `debug_assert!`).
    #[inline]
    fn add(self, rhs: u64) -> Self {
        Self::containing_address(self.start + rhs * S::SIZE)
    }
}

impl<S: PageSize> Sub<u64> for PhysFrame<S> {
    type Output = Self;
    /// `rhs` frames back (range checked by `debug_assert!`).
    #[inline]
    fn sub(self, rhs: u64) -> Self {
        Self::containing_address(self.start - rhs * S::SIZE)
    }
}

impl<S: PageSize> Sub<PhysFrame<S>> for PhysFrame<S> {
    type Output = u64;
    /// The number of frames from `rhs` to `self`.
    #[inline]
    fn sub(self, rhs: Self) -> u64 {
        (self.start - rhs.start) / S::SIZE
    }
}

/// The half-open range of frames `start..end`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct PhysFrameRange<S: PageSize = Size4KiB> {
    /// The first frame in the range.
    pub start: PhysFrame<S>,
    /// The first frame after the range.
    pub end: PhysFrame<S>,
}

impl<S: PageSize> PhysFrameRange<S> {
    /// Whether the range holds no frame.
    pub fn is_empty(&self) -> bool {
        self.start >= self.end
    }
    /// The number of frames in the range.
    pub fn len(&self) -> u64 {
        if self.is_empty() {
            0
        } else {
            self.end - self.start
        }
    }
}

impl<S: PageSize> Iterator for PhysFrameRange<S> {
    type Item = PhysFrame<S>;
    fn next(&mut self) -> Option<PhysFrame<S>> {
        if self.start >= self.end {
            return None;
        }
        let f = self.start;
        match f.checked_next() {
            Some(n) => self.start = n,
            None => self.start = self.end,
        }
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(Size4KiB::SIZE, PAGE_SIZE);
        assert_eq!(1u64 << PAGE_SHIFT, PAGE_SIZE);
        assert_eq!(Size2MiB::SIZE, 2 * 1024 * 1024);
        assert_eq!(Size1GiB::SIZE, 1024 * 1024 * 1024);
        assert_eq!(1u64 << Size2MiB::SHIFT, Size2MiB::SIZE);
        assert_eq!(1u64 << Size1GiB::SHIFT, Size1GiB::SIZE);
        assert_eq!(Page::<Size2MiB>::SIZE, Size2MiB::SIZE);
    }

    #[test]
    fn page_alignment_is_checked() {
        let ok = Page::<Size4KiB>::from_start_address(VirtAddr::new(0x5000)).unwrap();
        assert_eq!(ok.start_address().as_u64(), 0x5000);
        assert_eq!(ok.size(), 4096);
        assert_eq!(
            Page::<Size4KiB>::from_start_address(VirtAddr::new(0x5008)),
            Err(AddrError::Misaligned {
                addr: 0x5008,
                align: 4096
            })
        );
        assert!(Page::<Size2MiB>::from_start_address(VirtAddr::new(0x1000)).is_err());
        assert!(Page::<Size2MiB>::from_start_address(VirtAddr::new(0x40_0000)).is_ok());
        let c = Page::<Size2MiB>::containing_address(VirtAddr::new(0x41_2345));
        assert_eq!(c.start_address().as_u64(), 0x40_0000);
        assert!(PhysFrame::<Size1GiB>::from_start_address(PhysAddr::new(0x4000_0000)).is_ok());
        assert!(PhysFrame::<Size1GiB>::from_start_address(PhysAddr::new(0x20_0000)).is_err());
    }

    #[test]
    fn numbers_round_trip() {
        let p = Page::<Size4KiB>::containing_address(VirtAddr::new(0xffff_8000_0012_3456));
        assert_eq!(Page::from_number(p.number()), Ok(p));
        let f = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(0x1_2345_6789));
        assert_eq!(f.number(), 0x12_3456);
        assert_eq!(PhysFrame::from_number(0x12_3456), Ok(f));
        assert!(PhysFrame::<Size4KiB>::from_number(1 << 40).is_err());
        assert!(Page::<Size4KiB>::from_number(1 << 36).is_err()); // 1<<48 is not canonical
        assert!(Page::<Size4KiB>::from_number(u64::MAX).is_err());
    }

    #[test]
    fn arithmetic_and_ranges() {
        let a = Page::<Size4KiB>::containing_address(VirtAddr::new(0x1000));
        let b = a + 3;
        assert_eq!(b.start_address().as_u64(), 0x4000);
        assert_eq!(b - a, 3);
        assert_eq!((b - 1).start_address().as_u64(), 0x3000);
        let v: Vec<u64> = Page::range(a, b)
            .map(|p| p.start_address().as_u64())
            .collect();
        assert_eq!(v, [0x1000, 0x2000, 0x3000]);
        assert_eq!(Page::range(a, b).len(), 3);
        assert!(Page::range(b, a).is_empty());
        let f = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(0));
        assert_eq!(PhysFrame::range(f, f + 2).count(), 2);
        // The last canonical page ends the iteration without wrapping.
        let last = Page::<Size4KiB>::containing_address(VirtAddr::new(u64::MAX));
        assert_eq!(last.checked_next(), None);
    }

    #[test]
    fn indices() {
        assert_eq!(
            PageTableIndex::new_truncate(513),
            PageTableIndex::new_truncate(1)
        );
        assert_eq!(
            PageTableIndex::try_new(512),
            Err(AddrError::IndexOutOfRange { index: 512 })
        );
        assert_eq!(usize::from(PageTableIndex::try_new(511).unwrap()), 511);
        let p = Page::<Size4KiB>::containing_address(VirtAddr::new(0x0000_7fff_ffff_f000));
        assert_eq!(u16::from(p.p4_index()), 255);
        assert_eq!(u16::from(p.p1_index()), 511);
    }

    #[test]
    fn debug_strings() {
        let p = Page::<Size2MiB>::containing_address(VirtAddr::new(0x20_0000));
        assert_eq!(format!("{p:?}"), "Page[2MiB](0x200000)");
        let f = PhysFrame::<Size4KiB>::containing_address(PhysAddr::new(0x3000));
        assert_eq!(format!("{f:?}"), "PhysFrame[4KiB](0x3000)");
    }
}
