//! Virtual and physical addresses, in the `x86_64` crate's vocabulary.
//!
//! [`VirtAddr`] holds a *canonical* 48-bit virtual address: bits 48..64 are copies of bit 47,
//! so the space is split into a lower half `0 ..= 0x0000_7fff_ffff_ffff` and an upper (kernel)
//! half `0xffff_8000_0000_0000 ..= u64::MAX`. [`VirtAddr::try_new`] rejects anything else with
//! [`AddrError::NonCanonical`]; [`VirtAddr::new_truncate`] sign-extends bit 47 instead.
//!
//! [`PhysAddr`] holds a 52-bit physical address (the architectural maximum); bits 52..64 must
//! be zero. [`PhysAddr::try_new`] rejects larger values, [`PhysAddr::new_truncate`] masks them.
//!
//! Invariant: a value of either type always satisfies its rule, whatever constructor or
//! operator produced it (the arithmetic operators re-normalise and check the rule with
//! `debug_assert!`; untrusted input must go through `try_new` / `checked_add`).
//!
//! Locking/ordering: plain `Copy` values, no shared state.

use core::fmt;
use core::ops::{Add, AddAssign, Sub, SubAssign};

use crate::page::PageTableIndex;

/// Why an address (or an address-derived value) was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum AddrError {
    /// A virtual address whose bits 48..64 are not copies of bit 47.
    #[error("virtual address {addr:#x} is not canonical (bits 48..64 must copy bit 47)")]
    NonCanonical {
        /// The rejected value.
        addr: u64,
    },
    /// A physical address with bits set above bit 51.
    #[error("physical address {addr:#x} does not fit in 52 bits")]
    PhysTooLarge {
        /// The rejected value.
        addr: u64,
    },
    /// An address that should start a page (or frame) of `align` bytes but does not.
    #[error("address {addr:#x} is not aligned to {align:#x}")]
    Misaligned {
        /// The rejected address.
        addr: u64,
        /// The required alignment in bytes.
        align: u64,
    },
    /// A page or frame number whose start address would not be a valid address.
    #[error("page number {number:#x} is out of range for {size:#x}-byte pages")]
    NumberOutOfRange {
        /// The rejected number.
        number: u64,
        /// The page size in bytes.
        size: u64,
    },
    /// A page-table index of 512 or more.
    #[error("page-table index {index} is out of range (must be below 512)")]
    IndexOutOfRange {
        /// The rejected index.
        index: u16,
    },
}

/// Round `addr` down to a multiple of `align` (a power of two).
#[inline]
pub const fn align_down(addr: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    addr & !(align - 1)
}

/// Round `addr` up to a multiple of `align` (a power of two); `None` on overflow.
#[inline]
pub const fn checked_align_up(addr: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    let mask = align - 1;
    match addr.checked_add(mask) {
        Some(v) => Some(v & !mask),
        None => None,
    }
}

/// Round `addr` up to a multiple of `align` (a power of two). Overflow wraps to 0 in release
/// builds and is caught by a `debug_assert!` in debug builds; use [`checked_align_up`] for
/// untrusted input.
#[inline]
pub const fn align_up(addr: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    let mask = align - 1;
    debug_assert!(addr.checked_add(mask).is_some(), "align_up overflow");
    addr.wrapping_add(mask) & !mask
}

/// A canonical 48-bit x86_64 virtual address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct VirtAddr(u64);

impl VirtAddr {
    /// The largest lower-half address, `0x0000_7fff_ffff_ffff`.
    pub const LOWER_HALF_END: u64 = 0x0000_7fff_ffff_ffff;
    /// The first upper-half (kernel) address, `0xffff_8000_0000_0000`.
    pub const UPPER_HALF_START: u64 = 0xffff_8000_0000_0000;

    /// `addr` if it is canonical, [`AddrError::NonCanonical`] otherwise.
    #[inline]
    pub const fn try_new(addr: u64) -> Result<Self, AddrError> {
        let v = Self::new_truncate(addr);
        if v.0 == addr {
            Ok(v)
        } else {
            Err(AddrError::NonCanonical { addr })
        }
    }

    /// `addr` with bits 48..64 replaced by copies of bit 47 (sign extension).
    #[inline]
    pub const fn new_truncate(addr: u64) -> Self {
        // Shift bit 47 into bit 63, then arithmetic-shift back.
        Self((((addr << 16) as i64) >> 16) as u64)
    }

    /// `addr`, which must be canonical: for constants and values already known to be valid.
    ///
    /// # Panics
    /// If `addr` is not canonical (a programming error; untrusted input goes through
    /// [`VirtAddr::try_new`]).
    #[inline]
    #[track_caller]
    pub const fn new(addr: u64) -> Self {
        match Self::try_new(addr) {
            Ok(v) => v,
            Err(_) => panic!("VirtAddr::new: non-canonical address"),
        }
    }

    /// The zero address.
    #[inline]
    pub const fn zero() -> Self {
        Self(0)
    }

    /// The raw value.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether this is the zero address.
    #[inline]
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }

    /// Round down to a multiple of `align` (a power of two).
    #[inline]
    pub const fn align_down(self, align: u64) -> Self {
        // Clearing low bits of a canonical address keeps bits 47..64 intact.
        Self(align_down(self.0, align))
    }

    /// Round up to a multiple of `align` (a power of two). Rounding past the end of the lower
    /// half sign-extends into the upper half, and past `u64::MAX` wraps to zero; both are
    /// caught by `debug_assert!`. Use [`VirtAddr::checked_align_up`] for untrusted input.
    #[inline]
    pub const fn align_up(self, align: u64) -> Self {
        let v = align_up(self.0, align);
        debug_assert!(
            Self::try_new(v).is_ok(),
            "VirtAddr::align_up left the canonical range"
        );
        Self::new_truncate(v)
    }

    /// Round up to a multiple of `align` (a power of two); `None` if the result would
    /// overflow or not be canonical.
    #[inline]
    pub const fn checked_align_up(self, align: u64) -> Option<Self> {
        match checked_align_up(self.0, align) {
            Some(v) => match Self::try_new(v) {
                Ok(a) => Some(a),
                Err(_) => None,
            },
            None => None,
        }
    }

    /// Whether the address is a multiple of `align` (a power of two).
    #[inline]
    pub const fn is_aligned(self, align: u64) -> bool {
        debug_assert!(align.is_power_of_two());
        self.0 & (align - 1) == 0
    }

    /// The offset inside the 4 KiB page, bits 0..12.
    #[inline]
    pub const fn page_offset(self) -> u64 {
        self.0 & 0xfff
    }

    /// Index into the level-1 table (bits 12..21).
    #[inline]
    pub const fn p1_index(self) -> PageTableIndex {
        PageTableIndex::new_truncate((self.0 >> 12) as u16)
    }

    /// Index into the level-2 table (bits 21..30).
    #[inline]
    pub const fn p2_index(self) -> PageTableIndex {
        PageTableIndex::new_truncate((self.0 >> 21) as u16)
    }

    /// Index into the level-3 table (bits 30..39).
    #[inline]
    pub const fn p3_index(self) -> PageTableIndex {
        PageTableIndex::new_truncate((self.0 >> 30) as u16)
    }

    /// Index into the level-4 table, the PML4 (bits 39..48).
    #[inline]
    pub const fn p4_index(self) -> PageTableIndex {
        PageTableIndex::new_truncate((self.0 >> 39) as u16)
    }

    /// Index into the table of `level` (1 = leaf PTE table .. 4 = PML4). Levels outside
    /// `1..=4` are clamped into that range.
    #[inline]
    pub const fn page_table_index(self, level: u8) -> PageTableIndex {
        let level = if level < 1 {
            1
        } else if level > 4 {
            4
        } else {
            level
        };
        PageTableIndex::new_truncate((self.0 >> (12 + 9 * (level as u32 - 1))) as u16)
    }

    /// `self + rhs` if it neither overflows nor leaves the canonical range.
    #[inline]
    pub const fn checked_add(self, rhs: u64) -> Option<Self> {
        match self.0.checked_add(rhs) {
            Some(v) => match Self::try_new(v) {
                Ok(a) => Some(a),
                Err(_) => None,
            },
            None => None,
        }
    }

    /// `self - rhs` if it neither underflows nor leaves the canonical range.
    #[inline]
    pub const fn checked_sub(self, rhs: u64) -> Option<Self> {
        match self.0.checked_sub(rhs) {
            Some(v) => match Self::try_new(v) {
                Ok(a) => Some(a),
                Err(_) => None,
            },
            None => None,
        }
    }
}

impl fmt::Debug for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VirtAddr({:#x})", self.0)
    }
}

impl fmt::Display for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::LowerHex for VirtAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl TryFrom<u64> for VirtAddr {
    type Error = AddrError;
    fn try_from(v: u64) -> Result<Self, AddrError> {
        Self::try_new(v)
    }
}

impl From<VirtAddr> for u64 {
    fn from(v: VirtAddr) -> u64 {
        v.0
    }
}

impl Add<u64> for VirtAddr {
    type Output = Self;
    /// Adds `rhs`; leaving the canonical range is caught by `debug_assert!` only (the result is
    /// sign-extended in release builds). Use [`VirtAddr::checked_add`] for untrusted input.
    #[inline]
    fn add(self, rhs: u64) -> Self {
        debug_assert!(
            self.checked_add(rhs).is_some(),
            "VirtAddr + u64 out of range"
        );
        Self::new_truncate(self.0.wrapping_add(rhs))
    }
}

impl AddAssign<u64> for VirtAddr {
    #[inline]
    fn add_assign(&mut self, rhs: u64) {
        *self = *self + rhs;
    }
}

impl Sub<u64> for VirtAddr {
    type Output = Self;
    /// Subtracts `rhs`; leaving the canonical range is caught by `debug_assert!` only.
    #[inline]
    fn sub(self, rhs: u64) -> Self {
        debug_assert!(
            self.checked_sub(rhs).is_some(),
            "VirtAddr - u64 out of range"
        );
        Self::new_truncate(self.0.wrapping_sub(rhs))
    }
}

impl SubAssign<u64> for VirtAddr {
    #[inline]
    fn sub_assign(&mut self, rhs: u64) {
        *self = *self - rhs;
    }
}

impl Sub<VirtAddr> for VirtAddr {
    type Output = u64;
    /// The distance `self - rhs` in bytes (`rhs <= self` is checked by `debug_assert!`).
    #[inline]
    fn sub(self, rhs: VirtAddr) -> u64 {
        debug_assert!(rhs.0 <= self.0, "VirtAddr - VirtAddr underflow");
        self.0.wrapping_sub(rhs.0)
    }
}

/// A 52-bit x86_64 physical address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[repr(transparent)]
pub struct PhysAddr(u64);

impl PhysAddr {
    /// Bits an x86_64 physical address may use (0..52).
    pub const MASK: u64 = (1 << 52) - 1;

    /// `addr` if it fits in 52 bits, [`AddrError::PhysTooLarge`] otherwise.
    #[inline]
    pub const fn try_new(addr: u64) -> Result<Self, AddrError> {
        if addr & !Self::MASK == 0 {
            Ok(Self(addr))
        } else {
            Err(AddrError::PhysTooLarge { addr })
        }
    }

    /// `addr` with bits 52..64 cleared.
    #[inline]
    pub const fn new_truncate(addr: u64) -> Self {
        Self(addr & Self::MASK)
    }

    /// `addr`, which must fit in 52 bits: for constants and values already known to be valid.
    ///
    /// # Panics
    /// If `addr` has bits above 51 (a programming error; untrusted input goes through
    /// [`PhysAddr::try_new`]).
    #[inline]
    #[track_caller]
    pub const fn new(addr: u64) -> Self {
        match Self::try_new(addr) {
            Ok(v) => v,
            Err(_) => panic!("PhysAddr::new: address does not fit in 52 bits"),
        }
    }

    /// The zero address.
    #[inline]
    pub const fn zero() -> Self {
        Self(0)
    }

    /// The raw value.
    #[inline]
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// Whether this is the zero address.
    #[inline]
    pub const fn is_null(self) -> bool {
        self.0 == 0
    }

    /// Round down to a multiple of `align` (a power of two).
    #[inline]
    pub const fn align_down(self, align: u64) -> Self {
        Self(align_down(self.0, align))
    }

    /// Round up to a multiple of `align` (a power of two). Leaving the 52-bit range is caught
    /// by `debug_assert!` (masked in release builds); use [`PhysAddr::checked_align_up`] for
    /// untrusted input.
    #[inline]
    pub const fn align_up(self, align: u64) -> Self {
        let v = align_up(self.0, align);
        debug_assert!(
            v & !Self::MASK == 0,
            "PhysAddr::align_up left the 52-bit range"
        );
        Self::new_truncate(v)
    }

    /// Round up to a multiple of `align` (a power of two); `None` if the result would not fit.
    #[inline]
    pub const fn checked_align_up(self, align: u64) -> Option<Self> {
        match checked_align_up(self.0, align) {
            Some(v) => match Self::try_new(v) {
                Ok(a) => Some(a),
                Err(_) => None,
            },
            None => None,
        }
    }

    /// Whether the address is a multiple of `align` (a power of two).
    #[inline]
    pub const fn is_aligned(self, align: u64) -> bool {
        debug_assert!(align.is_power_of_two());
        self.0 & (align - 1) == 0
    }

    /// The offset inside the 4 KiB frame, bits 0..12.
    #[inline]
    pub const fn page_offset(self) -> u64 {
        self.0 & 0xfff
    }

    /// `self + rhs` if it neither overflows nor leaves the 52-bit range.
    #[inline]
    pub const fn checked_add(self, rhs: u64) -> Option<Self> {
        match self.0.checked_add(rhs) {
            Some(v) => match Self::try_new(v) {
                Ok(a) => Some(a),
                Err(_) => None,
            },
            None => None,
        }
    }

    /// `self - rhs` if it does not underflow.
    #[inline]
    pub const fn checked_sub(self, rhs: u64) -> Option<Self> {
        match self.0.checked_sub(rhs) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }
}

impl fmt::Debug for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhysAddr({:#x})", self.0)
    }
}

impl fmt::Display for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::LowerHex for PhysAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

impl TryFrom<u64> for PhysAddr {
    type Error = AddrError;
    fn try_from(v: u64) -> Result<Self, AddrError> {
        Self::try_new(v)
    }
}

impl From<PhysAddr> for u64 {
    fn from(v: PhysAddr) -> u64 {
        v.0
    }
}

impl Add<u64> for PhysAddr {
    type Output = Self;
    /// Adds `rhs`; leaving the 52-bit range is caught by `debug_assert!` only (masked in
    /// release builds). Use [`PhysAddr::checked_add`] for untrusted input.
    #[inline]
    fn add(self, rhs: u64) -> Self {
        debug_assert!(
            self.checked_add(rhs).is_some(),
            "PhysAddr + u64 out of range"
        );
        Self::new_truncate(self.0.wrapping_add(rhs))
    }
}

impl AddAssign<u64> for PhysAddr {
    #[inline]
    fn add_assign(&mut self, rhs: u64) {
        *self = *self + rhs;
    }
}

impl Sub<u64> for PhysAddr {
    type Output = Self;
    /// Subtracts `rhs`; underflow is caught by `debug_assert!` only.
    #[inline]
    fn sub(self, rhs: u64) -> Self {
        debug_assert!(self.checked_sub(rhs).is_some(), "PhysAddr - u64 underflow");
        Self::new_truncate(self.0.wrapping_sub(rhs))
    }
}

impl SubAssign<u64> for PhysAddr {
    #[inline]
    fn sub_assign(&mut self, rhs: u64) {
        *self = *self - rhs;
    }
}

impl Sub<PhysAddr> for PhysAddr {
    type Output = u64;
    /// The distance `self - rhs` in bytes (`rhs <= self` is checked by `debug_assert!`).
    #[inline]
    fn sub(self, rhs: PhysAddr) -> u64 {
        debug_assert!(rhs.0 <= self.0, "PhysAddr - PhysAddr underflow");
        self.0.wrapping_sub(rhs.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_rule() {
        assert_eq!(VirtAddr::try_new(0).unwrap().as_u64(), 0);
        assert!(VirtAddr::try_new(VirtAddr::LOWER_HALF_END).is_ok());
        assert!(VirtAddr::try_new(VirtAddr::UPPER_HALF_START).is_ok());
        assert!(VirtAddr::try_new(u64::MAX).is_ok());
        assert_eq!(
            VirtAddr::try_new(0x0000_8000_0000_0000),
            Err(AddrError::NonCanonical {
                addr: 0x0000_8000_0000_0000
            })
        );
        assert!(VirtAddr::try_new(0xffff_7fff_ffff_ffff).is_err());
        assert!(VirtAddr::try_new(0x0001_0000_0000_0000).is_err());
    }

    #[test]
    fn truncate_sign_extends_bit_47() {
        assert_eq!(
            VirtAddr::new_truncate(0x0000_8000_0000_0000).as_u64(),
            0xffff_8000_0000_0000
        );
        assert_eq!(
            VirtAddr::new_truncate(0x1234_0000_0000_1000).as_u64(),
            0x1000
        );
        assert_eq!(
            VirtAddr::new_truncate(0x0000_ffff_ffff_f000).as_u64(),
            0xffff_ffff_ffff_f000
        );
    }

    #[test]
    fn alignment_math() {
        let a = VirtAddr::new(0x1234);
        assert_eq!(a.align_down(0x1000).as_u64(), 0x1000);
        assert_eq!(a.align_up(0x1000).as_u64(), 0x2000);
        assert_eq!(VirtAddr::new(0x2000).align_up(0x1000).as_u64(), 0x2000);
        assert!(VirtAddr::new(0x20_0000).is_aligned(0x20_0000));
        assert!(!a.is_aligned(8));
        assert!(a.is_aligned(4));
        assert_eq!(a.page_offset(), 0x234);
        assert_eq!(VirtAddr::new(u64::MAX).checked_align_up(0x1000), None);
        assert_eq!(
            VirtAddr::new(VirtAddr::LOWER_HALF_END - 5).checked_align_up(0x1000),
            None
        );
        assert_eq!(checked_align_up(7, 8), Some(8));
        assert_eq!(checked_align_up(u64::MAX - 2, 8), None);
        let p = PhysAddr::new(0x1001);
        assert_eq!(p.align_up(0x1000), PhysAddr::new(0x2000));
        assert_eq!(p.align_down(0x1000), PhysAddr::new(0x1000));
        assert_eq!(p.page_offset(), 1);
        assert_eq!(PhysAddr::new(PhysAddr::MASK).checked_align_up(0x1000), None);
    }

    #[test]
    fn table_indices() {
        // 0xffff_8123_4567_8abc: p4 = 0x102, p3 = 0x8d, p2 = 0x2b, p1 = 0x78, offset 0xabc.
        let a = VirtAddr::new(0xffff_8123_4567_8abc);
        assert_eq!(u16::from(a.p4_index()), ((a.as_u64() >> 39) & 511) as u16);
        assert_eq!(u16::from(a.p3_index()), ((a.as_u64() >> 30) & 511) as u16);
        assert_eq!(u16::from(a.p2_index()), ((a.as_u64() >> 21) & 511) as u16);
        assert_eq!(u16::from(a.p1_index()), ((a.as_u64() >> 12) & 511) as u16);
        assert_eq!(u16::from(a.p4_index()), 0x102);
        assert_eq!(a.page_offset(), 0xabc);
        for level in 1..=4u8 {
            let want = [a.p1_index(), a.p2_index(), a.p3_index(), a.p4_index()];
            assert_eq!(a.page_table_index(level), want[level as usize - 1]);
        }
        assert_eq!(
            u16::from(VirtAddr::new(VirtAddr::UPPER_HALF_START).p4_index()),
            256
        );
    }

    #[test]
    fn checked_arithmetic() {
        let top = VirtAddr::new(VirtAddr::LOWER_HALF_END);
        assert_eq!(top.checked_add(1), None);
        assert_eq!(VirtAddr::new(u64::MAX).checked_add(1), None);
        assert_eq!(VirtAddr::zero().checked_sub(1), None);
        assert_eq!(
            VirtAddr::new(0x1000).checked_add(0x1000),
            Some(VirtAddr::new(0x2000))
        );
        assert_eq!(VirtAddr::new(0x3000) - VirtAddr::new(0x1000), 0x2000);
        let mut v = VirtAddr::new(0x1000);
        v += 0x1000;
        v -= 0x800;
        assert_eq!(v.as_u64(), 0x1800);
        assert_eq!(PhysAddr::new(PhysAddr::MASK).checked_add(1), None);
        assert_eq!(PhysAddr::new(0x1000) + 0x10, PhysAddr::new(0x1010));
        assert_eq!(PhysAddr::new(0x1000) - PhysAddr::new(0x10), 0xff0);
    }

    #[test]
    fn phys_52_bit_rule() {
        assert!(PhysAddr::try_new(PhysAddr::MASK).is_ok());
        assert_eq!(
            PhysAddr::try_new(1 << 52),
            Err(AddrError::PhysTooLarge { addr: 1 << 52 })
        );
        assert_eq!(PhysAddr::new_truncate(u64::MAX).as_u64(), PhysAddr::MASK);
        assert_eq!(PhysAddr::try_from(0x1000u64).map(u64::from), Ok(0x1000));
    }

    #[test]
    fn formatting() {
        assert_eq!(format!("{:?}", VirtAddr::new(0x1000)), "VirtAddr(0x1000)");
        assert_eq!(format!("{}", PhysAddr::new(0xabc)), "0xabc");
        let e = AddrError::NonCanonical {
            addr: 0x8000_0000_0000,
        };
        assert!(e.to_string().contains("0x800000000000"));
    }

    #[cfg(not(miri))]
    proptest::proptest! {
        #[test]
        fn try_new_agrees_with_truncate(x: u64) {
            let t = VirtAddr::new_truncate(x);
            proptest::prop_assert!(VirtAddr::try_new(t.as_u64()).is_ok());
            proptest::prop_assert_eq!(VirtAddr::try_new(x).is_ok(), t.as_u64() == x);
            let hi = x >> 47;
            proptest::prop_assert_eq!(VirtAddr::try_new(x).is_ok(), hi == 0 || hi == 0x1ffff);
        }

        #[test]
        fn align_up_down_bracket(x in 0u64..(1 << 47), shift in 0u32..30) {
            let a = 1u64 << shift;
            let v = VirtAddr::new(x);
            let d = v.align_down(a);
            proptest::prop_assert!(d <= v && d.is_aligned(a) && v.as_u64() - d.as_u64() < a);
            if let Some(u) = v.checked_align_up(a) {
                proptest::prop_assert!(u >= v && u.is_aligned(a) && u.as_u64() - v.as_u64() < a);
            }
        }
    }
}
