//! The vmalloc API's error type, [`VmallocError`] (its documentation says how errors chain).

use crate::kva::error::KvaError;
use crate::kva::flags::VmFlags;
#[allow(unused_imports)]
use crate::prelude::*;

/// What went wrong in a vmalloc / KVA operation.
///
/// Every fallible operation of the vmalloc API returns a `VmallocError`; nothing panics on bad
/// input, and a failed call changed nothing. The KVA layer's [`KvaError`] converts into the
/// variant of the same name. Addresses and sizes are in bytes. An error that wraps another
/// (page tables, frames, the arena) says what failed in its own message and gives the cause
/// through [`core::error::Error::source`], without repeating its text, so an error reporter
/// that walks the chain prints each cause once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VmallocError {
    /// No free range for `size` bytes aligned to `align` exists in `[start, end)` right now,
    /// even after a synchronous purge of the lazily freed areas and the registered notifiers
    /// (the range could hold it if less of it were in use).
    #[error(
        "vmap allocation for size {size:#x} (align {align:#x}) failed: no free range left in \
         [{start:#x}, {end:#x}) after purging the lazily freed areas (free some areas, or \
         configure a larger KVA range)"
    )]
    NoSpace {
        /// The size the caller asked for, in bytes (as given: the guard page and the rounding
        /// to pages not included). For the [`Kva`](crate::Kva)'s own errors converted with
        /// `From`, the size passed to [`Kva::alloc`](crate::Kva::alloc).
        size: u64,
        /// Requested alignment in bytes.
        align: u64,
        /// Lower bound of the searched range.
        start: u64,
        /// Upper bound (exclusive) of the searched range.
        end: u64,
    },
    /// No range of `[start, end)` could ever hold `size` bytes aligned to `align` with their
    /// guard page, even with nothing else allocated: the request is larger than the window.
    #[error(
        "vmap allocation for size {size:#x} (align {align:#x}) can never succeed: \
         [{start:#x}, {end:#x}) is too small for it even when empty"
    )]
    TooLarge {
        /// The size the caller asked for, in bytes.
        size: u64,
        /// Requested alignment in bytes.
        align: u64,
        /// Lower bound of the window searched (clipped to the vmalloc range).
        start: u64,
        /// Upper bound (exclusive) of the window.
        end: u64,
    },
    /// `n * size` (an array allocation: `vmalloc_array`, `vcalloc`) does not fit in 64 bits.
    #[error("array of {n} elements of {size} bytes: the size overflows")]
    SizeOverflow {
        /// Number of elements.
        n: u64,
        /// Size of one element in bytes.
        size: u64,
    },
    /// The size is zero, not a whole number of pages, or too large to represent.
    #[error("invalid size {size:#x}: must be a non-zero multiple of the page size")]
    InvalidSize {
        /// The rejected size in bytes.
        size: u64,
    },
    /// The alignment is not a power of two (alignments below a page mean a page).
    #[error("invalid alignment {align:#x}: must be a power of two")]
    InvalidAlign {
        /// The rejected alignment in bytes.
        align: u64,
    },
    /// The range is empty, unaligned, or outside the allocator's range.
    #[error("invalid range [{start:#x}, {end:#x})")]
    InvalidRange {
        /// Start of the rejected range.
        start: u64,
        /// End (exclusive) of the rejected range.
        end: u64,
    },
    /// No live area contains `addr`.
    #[error("no allocated area at {addr:#x}")]
    NotAllocated {
        /// The address looked up.
        addr: u64,
    },
    /// `addr` lies inside a live area but is not its start.
    #[error("address {addr:#x} is inside the area starting at {start:#x}, not its start")]
    NotStartOfArea {
        /// The address passed in.
        addr: u64,
        /// Start of the area containing it.
        start: u64,
    },
    /// `addr` is the start of an area that was already freed and waits on a lazy list.
    #[error("double free of the area at {addr:#x} (already freed, waiting for a purge)")]
    DoubleFree {
        /// The address freed twice.
        addr: u64,
    },
    /// The area at `addr` was created by another kind of allocation (e.g. `vunmap` on a
    /// `vmalloc` area). The message names both kinds in words and the call that releases the
    /// area found.
    #[error(
        "the area at {addr:#x} is {}, not {}: release it with {}",
        kind_name(*found),
        expected_name(*expected),
        release_call(*found)
    )]
    WrongKind {
        /// Start of the area.
        addr: u64,
        /// The kind the operation releases: [`VmFlags::ALLOC`] (`vfree`), [`VmFlags::MAP`]
        /// (`vunmap`), [`VmFlags::IOREMAP`] (`iounmap`), [`VmFlags::MAP_RAM`]
        /// (`vm_unmap_ram`), [`VmFlags::STACK`] (`free_thread_stack`), or no flag for
        /// `free_vm_area`'s reservations.
        expected: VmFlags,
        /// Flags the area has.
        found: VmFlags,
    },
    // Variants of the vmalloc layer (page tables, frames, argument checks).
    /// A page-table operation failed (e.g. no frame left for a page table).
    #[error("page-table operation failed")]
    Map(#[from] pagetable::MapError),
    /// A frame-allocator operation failed.
    #[error("frame-allocator operation failed")]
    Frame(#[from] pagetable::FrameError),
    /// The physical arena could not be created or accessed.
    #[error("physical arena unavailable")]
    Arena(#[from] pagetable::ArenaError),
    /// No frames for the pages of a `size`-byte allocation.
    #[error("vmalloc: allocation failure: {size} bytes")]
    OutOfMemory {
        /// The requested size in bytes.
        size: u64,
        /// Why the frame allocator refused.
        source: pagetable::FrameError,
    },
    /// Flags that name another kind of area (or are reserved) were passed in.
    #[error("flags {flags:?} are not allowed here")]
    InvalidFlags {
        /// The offending flags.
        flags: VmFlags,
    },
    /// An address that must be page aligned is not.
    #[error("address {addr:#x} is not aligned to {align:#x}")]
    Misaligned {
        /// The address.
        addr: u64,
        /// The required alignment.
        align: u64,
    },
    /// `remap_vmalloc_range` of an area not marked `VM_USERMAP`.
    #[error("area at {addr:#x} is not user-mappable (not VM_USERMAP)")]
    NotUserMappable {
        /// Start of the area.
        addr: u64,
    },
    /// `remap_vmalloc_range` asks for more than the area holds.
    #[error(
        "remap of {len:#x} bytes at offset {offset:#x} exceeds the {size:#x}-byte area at {addr:#x}"
    )]
    RemapTooLarge {
        /// Start of the area.
        addr: u64,
        /// Offset into the area where the remap starts.
        offset: u64,
        /// Bytes asked for.
        len: u64,
        /// Usable size of the area.
        size: u64,
    },
    /// `ioremap` of physical memory that is RAM (the arena), as Linux refuses.
    #[error("ioremap of RAM at {phys:#x} (+{size:#x}) refused")]
    IoremapOfRam {
        /// Physical start.
        phys: u64,
        /// Length in bytes.
        size: u64,
    },
    /// `vm_unmap_ram` with a page count other than the one mapped.
    #[error("vm_unmap_ram of {count} pages at {addr:#x}, but {expected} were mapped there")]
    WrongCount {
        /// The address.
        addr: u64,
        /// The count passed.
        count: usize,
        /// The page count `vm_map_ram` mapped there (exactly as passed to it).
        expected: usize,
    },
    /// A configuration value above what the allocator supports.
    #[error("invalid configuration: {what} = {value} (at most {max})")]
    InvalidConfig {
        /// The field.
        what: &'static str,
        /// The value given.
        value: u64,
        /// The largest value accepted.
        max: u64,
    },
    /// A feature this build does not have (e.g. the TLB model without `std`).
    #[error("not available in this build: {what}")]
    Unsupported {
        /// What was asked for.
        what: &'static str,
    },
    /// The host refused a resource the allocator needs at construction (a purge worker
    /// thread could not be spawned).
    #[error("could not start purge worker {index}: the host refused the thread")]
    WorkerSpawn {
        /// Index of the worker that could not be started.
        index: usize,
    },
}

/// The kind of area `flags` describe, in words (for messages).
pub(crate) fn kind_name(flags: VmFlags) -> &'static str {
    if flags.contains(VmFlags::MAP_RAM | VmFlags::UNLIST) {
        "a vmap block (it holds vm_map_ram pieces)"
    } else if flags.contains(VmFlags::MAP_RAM) {
        "a vm_map_ram mapping"
    } else if flags.contains(VmFlags::STACK) {
        "a thread stack"
    } else if flags.contains(VmFlags::ALLOC) {
        "a vmalloc area"
    } else if flags.contains(VmFlags::PFNMAP) {
        "a vmap_pfn area"
    } else if flags.contains(VmFlags::MAP) {
        "a vmap area"
    } else if flags.contains(VmFlags::EARLY) {
        "an early (boot-time) area"
    } else if flags.contains(VmFlags::IOREMAP) {
        "an ioremap or alloc_vm_area area"
    } else {
        "a get_vm_area reservation"
    }
}

/// What a release call accepts, in words, from its `expected` flag.
fn expected_name(expected: VmFlags) -> &'static str {
    if expected.contains(VmFlags::MAP_RAM) {
        "a vm_map_ram mapping"
    } else if expected.contains(VmFlags::STACK) {
        "a thread stack"
    } else if expected.contains(VmFlags::ALLOC) {
        "a vmalloc area"
    } else if expected.contains(VmFlags::MAP) {
        "a vmap or vmap_pfn area"
    } else if expected.contains(VmFlags::IOREMAP) {
        "an ioremap area"
    } else {
        "a reservation (get_vm_area, alloc_vm_area, vmap, vmap_pfn, ioremap or early area)"
    }
}

/// The call that releases an area of kind `flags`.
fn release_call(flags: VmFlags) -> &'static str {
    if flags.contains(VmFlags::MAP_RAM | VmFlags::UNLIST) {
        "vm_unmap_ram on each of its pieces"
    } else if flags.contains(VmFlags::MAP_RAM) {
        "vm_unmap_ram"
    } else if flags.contains(VmFlags::STACK) {
        "free_thread_stack"
    } else if flags.contains(VmFlags::ALLOC) {
        "vfree"
    } else if flags.intersects(VmFlags::MAP | VmFlags::PFNMAP) {
        "vunmap"
    } else if flags.contains(VmFlags::IOREMAP) && !flags.contains(VmFlags::EARLY) {
        "iounmap (ioremap) or free_vm_area (alloc_vm_area)"
    } else {
        "free_vm_area"
    }
}

impl From<KvaError> for VmallocError {
    /// The KVA layer's error as the variant of the same name.
    fn from(e: KvaError) -> Self {
        match e {
            KvaError::NoSpace {
                size,
                align,
                start,
                end,
            } => Self::NoSpace {
                size,
                align,
                start,
                end,
            },
            KvaError::InvalidSize { size } => Self::InvalidSize { size },
            KvaError::InvalidAlign { align } => Self::InvalidAlign { align },
            KvaError::InvalidRange { start, end } => Self::InvalidRange { start, end },
            KvaError::NotAllocated { addr } => Self::NotAllocated { addr },
            KvaError::NotStartOfArea { addr, start } => Self::NotStartOfArea { addr, start },
            KvaError::DoubleFree { addr } => Self::DoubleFree { addr },
            KvaError::InvalidConfig { what, value, max } => {
                Self::InvalidConfig { what, value, max }
            }
            KvaError::WorkerSpawn { index } => Self::WorkerSpawn { index },
        }
    }
}

/// A KVA allocation error as the caller of a vmalloc-layer call sees it: `NoSpace` carries
/// the caller's `size` (not the area's, guard page included), and becomes `TooLarge` when
/// the window could never hold an area of `area_size` bytes at that alignment.
pub(crate) fn alloc_error(e: KvaError, size: u64, area_size: u64) -> VmallocError {
    match e {
        KvaError::NoSpace {
            align, start, end, ..
        } => {
            let fits = start
                .checked_next_multiple_of(align.max(1))
                .and_then(|a| a.checked_add(area_size))
                .is_some_and(|e| e <= end);
            if fits {
                VmallocError::NoSpace {
                    size,
                    align,
                    start,
                    end,
                }
            } else {
                VmallocError::TooLarge {
                    size,
                    align,
                    start,
                    end,
                }
            }
        }
        e => e.into(),
    }
}

/// `Err(InvalidFlags)` with the flags of `flags` outside `allowed`.
pub(crate) fn check_flags(flags: VmFlags, allowed: VmFlags) -> Result<(), VmallocError> {
    let bad = flags - allowed;
    if bad.is_empty() {
        Ok(())
    } else {
        Err(VmallocError::InvalidFlags { flags: bad })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_numbers() {
        let e = VmallocError::NoSpace {
            size: 0x2000,
            align: 0x1000,
            start: 0x10000,
            end: 0x20000,
        };
        let s = e.to_string();
        assert!(
            s.contains("0x2000") && s.contains("0x10000") && s.contains("0x20000"),
            "{s}"
        );
        let e = VmallocError::NotStartOfArea {
            addr: 0x1234,
            start: 0x1000,
        };
        assert!(e.to_string().contains("0x1234"));
        let e = VmallocError::WrongKind {
            addr: 0x1000,
            expected: VmFlags::MAP,
            found: VmFlags::ALLOC,
        };
        assert_eq!(
            e.to_string(),
            "the area at 0x1000 is a vmalloc area, not a vmap or vmap_pfn area: release it \
             with vfree"
        );
        // `free_vm_area` on a vmalloc area: the kinds in words, no raw flag value.
        let e = VmallocError::WrongKind {
            addr: 0x1000,
            expected: VmFlags::empty(),
            found: VmFlags::ALLOC | VmFlags::ZEROED,
        };
        let s = e.to_string();
        assert!(s.contains("is a vmalloc area, not a reservation"), "{s}");
        assert!(!s.contains("VmFlags"), "{s}");
        for (found, call) in [
            (VmFlags::MAP_RAM, "vm_unmap_ram"),
            (
                VmFlags::MAP_RAM | VmFlags::UNLIST | VmFlags::NO_GUARD,
                "on each of its pieces",
            ),
            (VmFlags::IOREMAP, "iounmap"),
            (
                VmFlags::IOREMAP | VmFlags::EARLY | VmFlags::NO_GUARD,
                "free_vm_area",
            ),
            (VmFlags::IOREMAP | VmFlags::PFNMAP, "vunmap"),
            (VmFlags::ALLOC | VmFlags::STACK, "free_thread_stack"),
            (VmFlags::empty(), "free_vm_area"),
        ] {
            let e = VmallocError::WrongKind {
                addr: 0,
                expected: VmFlags::ALLOC,
                found,
            };
            assert!(e.to_string().contains(call), "{e}");
        }
        assert_eq!(
            VmallocError::DoubleFree { addr: 1 },
            VmallocError::DoubleFree { addr: 1 }
        );
    }

    #[test]
    fn a_wrapped_cause_is_the_source_not_part_of_the_message() {
        use core::error::Error;
        let cause = pagetable::FrameError::OutOfFrames {
            zone: pagetable::Zone::Normal,
            injected: true,
        };
        for e in [
            VmallocError::OutOfMemory {
                size: 4096,
                source: cause,
            },
            VmallocError::Frame(cause),
            VmallocError::Map(pagetable::MapError::Arena(
                pagetable::ArenaError::MmapUnavailable,
            )),
        ] {
            let msg = e.to_string();
            let src = e.source().expect("a cause").to_string();
            assert!(!msg.contains(&src), "{msg:?} repeats its source {src:?}");
        }
        // The KVA layer's errors keep their names and numbers through the conversion.
        let k = crate::KvaError::NotStartOfArea {
            addr: 0x2000,
            start: 0x1000,
        };
        assert_eq!(
            VmallocError::from(k),
            VmallocError::NotStartOfArea {
                addr: 0x2000,
                start: 0x1000
            }
        );
        assert_eq!(VmallocError::from(k).to_string(), k.to_string());
    }
}
