//! What callers see of an area: [`AreaInfo`] and [`VmArea`], and the [`RemovedArea`] token.
//!
//! A live area has no descriptor object: the busy index of its node keeps its bounds and a
//! packed copy of its info (see `node`). A removed area travels as a [`RemovedArea`], a plain
//! value holding a snapshot of the area and the id of the allocator that issued it.

use core::panic::Location;

use crate::kva::flags::VmFlags;

/// What an area is for: the part of Linux's `struct vm_struct` the KVA allocator keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AreaInfo {
    /// Kind of mapping.
    pub flags: VmFlags,
    /// Pages mapped in the area (the guard page excluded), set by the mapping layer.
    pub nr_pages: usize,
    /// Who allocated the area (Linux's `caller`, shown by `vmallocinfo`).
    pub caller: &'static Location<'static>,
    /// Physical address mapped, for `ioremap` areas.
    pub phys_addr: Option<u64>,
}

impl AreaInfo {
    /// Info with `flags`, no pages, no physical address, and the caller's location.
    #[track_caller]
    pub fn new(flags: VmFlags) -> Self {
        Self {
            flags,
            nr_pages: 0,
            caller: Location::caller(),
            phys_addr: None,
        }
    }
}

/// A snapshot of a live area.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmArea {
    /// First address.
    pub start: u64,
    /// End (exclusive), the guard page included if the area has one.
    pub end: u64,
    /// The area's info.
    pub info: AreaInfo,
}

impl VmArea {
    /// `end - start`.
    #[inline]
    pub fn size(&self) -> u64 {
        self.end - self.start
    }

    /// Whether `addr` lies in `[start, end)`.
    #[inline]
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

/// The ownership token of an area detached from the busy lookup by `Kva::remove`.
///
/// It must go back with `Kva::free_lazy` or `Kva::free_unused` of the allocator that issued
/// it; dropping it leaks the range (it is never handed out again) but is memory safe.
#[must_use = "a removed area must be returned with Kva::free_lazy or Kva::free_unused"]
#[derive(Debug)]
pub struct RemovedArea {
    pub(crate) area: VmArea,
    pub(crate) owner: u64,
}

impl RemovedArea {
    /// First address of the area.
    #[inline]
    pub fn start(&self) -> u64 {
        self.area.start
    }

    /// End (exclusive), guard page included.
    #[inline]
    pub fn end(&self) -> u64 {
        self.area.end
    }

    /// Size in bytes.
    #[inline]
    pub fn size(&self) -> u64 {
        self.area.end - self.area.start
    }

    /// The area's info as it was when removed.
    #[inline]
    pub fn info(&self) -> &AreaInfo {
        &self.area.info
    }

    /// The whole snapshot.
    #[inline]
    pub fn area(&self) -> &VmArea {
        &self.area
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn info_new_records_caller() {
        let i = AreaInfo::new(VmFlags::MAP);
        assert!(i.caller.file().ends_with("area.rs"));
        assert_eq!(i.nr_pages, 0);
        assert_eq!(i.phys_addr, None);
    }

    #[test]
    fn areas_measure_themselves() {
        let info = AreaInfo::new(VmFlags::ALLOC);
        let v = VmArea {
            start: 0x1000,
            end: 0x3000,
            info,
        };
        assert_eq!(v.size(), 0x2000);
        assert!(v.contains(0x2fff) && !v.contains(0x3000));
        let r = RemovedArea { area: v, owner: 1 };
        assert_eq!((r.start(), r.end(), r.size()), (0x1000, 0x3000, 0x2000));
        assert_eq!(r.info(), &info);
        assert_eq!(r.area(), &v);
    }
}
