//! The `pagetable` target's steps ([`Op`]) and its page-count selector.

#[allow(unused_imports)]
use super::*;

/// A page count selector: small, medium, one or two 2 MiB chunks and a bit.
pub(super) fn count(sel: u16) -> u64 {
    match sel % 8 {
        0..=3 => u64::from(sel >> 3) % 8 + 1,
        4 | 5 => u64::from(sel >> 3) % 600 + 1,
        6 => HUGE,
        _ => 2 * HUGE + 3,
    }
}

/// One step.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// Map fresh frames (tagged) with 4 KiB pages.
    Map {
        /// Space 0 or 1.
        space: bool,
        /// First page in the window.
        page: u16,
        /// Page count selector.
        n: u16,
        /// Flags selector.
        flags: u8,
    },
    /// Map device memory contiguously, maybe with 2 MiB leaves.
    MapContiguous {
        /// Space.
        space: bool,
        /// 2 MiB chunk of the window.
        chunk: u8,
        /// Shape selector (aligned or not, one or two chunks, a tail).
        extra: u8,
        /// Ask for huge leaves.
        huge: bool,
        /// Flags selector.
        flags: u8,
    },
    /// Unmap (frames handed back through the callback, or with `unmap_and_free`).
    Unmap {
        /// Space.
        space: bool,
        /// First page.
        page: u16,
        /// Count selector.
        n: u16,
        /// Use `unmap_and_free`.
        and_free: bool,
    },
    /// Change flags.
    Protect {
        /// Space.
        space: bool,
        /// First page.
        page: u16,
        /// Count selector.
        n: u16,
        /// Flags selector.
        flags: u8,
    },
    /// Build tables only.
    Populate {
        /// Space.
        space: bool,
        /// First page.
        page: u16,
        /// Count selector.
        n: u16,
    },
    /// Free empty tables.
    CleanUp {
        /// Space.
        space: bool,
        /// First page.
        page: u16,
        /// Count selector.
        n: u16,
    },
    /// `copy_range` (fork) between the spaces.
    Copy {
        /// First page.
        page: u16,
        /// Count selector.
        n: u16,
        /// `VmaKind::Shared` instead of `Private`.
        shared: bool,
        /// Copy from space 0 to space 1 (else 1 to 0).
        to_b: bool,
    },
    /// `handle_write_fault`.
    Fault {
        /// Space.
        space: bool,
        /// Page.
        page: u16,
    },
    /// A CPU write of a new tag: faults first if the page is COW.
    Write {
        /// Space.
        space: bool,
        /// Page.
        page: u16,
    },
    /// Hold (true) or give back (false) frames so that the arena nearly runs out.
    Ballast {
        /// Take frames (else release them all).
        take: bool,
        /// Leave this many frames free when taking.
        leave: u8,
    },
}
