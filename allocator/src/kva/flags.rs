//! [`VmFlags`]: what kind of mapping an area holds (Linux's `VM_*` flags of `struct vm_struct`).

bitflags::bitflags! {
    /// Kind and properties of a vmalloc area (Linux's `VM_*` flags of `struct vm_struct`).
    ///
    /// The low six bits keep the values of Linux 3.7 (`VM_IOREMAP` .. `VM_UNLIST`); the flags
    /// that later kernels added (and two of our own) use higher bits. The KVA allocator stores
    /// them in each area's [`AreaInfo`](crate::AreaInfo) without interpreting them, except
    /// [`VmFlags::NO_GUARD`], which callers use to decide whether the size they pass includes
    /// a guard page.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct VmFlags: u64 {
        /// `ioremap()` and friends: maps device (physical) memory.
        const IOREMAP = 0x1;
        /// `vmalloc()`: pages allocated by the area's owner.
        const ALLOC = 0x2;
        /// `vmap()`: caller-provided pages.
        const MAP = 0x4;
        /// Suitable for `remap_vmalloc_range` (mapping into user space).
        const USERMAP = 0x8;
        /// The page array itself was vmalloc'ed (Linux 3.7's `VM_VPAGES`).
        const VPAGES = 0x10;
        /// Not yet on the `vmlist` (Linux 3.7's `VM_UNLIST`).
        const UNLIST = 0x20;
        /// The area is set up but its pages are not mapped yet (Linux's `VM_UNINITIALIZED`).
        const UNINITIALIZED = 0x100;
        /// No guard page after the area (Linux's `VM_NO_GUARD`).
        const NO_GUARD = 0x200;
        /// A `vm_map_ram()` area or vmap block (not a `vm_struct` in Linux).
        const MAP_RAM = 0x400;
        /// Mapped executable (`vmalloc_exec`).
        const EXEC = 0x800;
        /// Pages taken below 4 GiB physical (`vmalloc_32`).
        const DMA32 = 0x1000;
        /// Registered at boot with `vm_area_add_early` (an exact range).
        const EARLY = 0x2000;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_3_7_values() {
        assert_eq!(VmFlags::IOREMAP.bits(), 0x1);
        assert_eq!(VmFlags::ALLOC.bits(), 0x2);
        assert_eq!(VmFlags::MAP.bits(), 0x4);
        assert_eq!(VmFlags::USERMAP.bits(), 0x8);
        assert_eq!(VmFlags::VPAGES.bits(), 0x10);
        assert_eq!(VmFlags::UNLIST.bits(), 0x20);
    }

    #[test]
    fn flags_are_distinct_bits() {
        let all: Vec<u64> = VmFlags::all().iter().map(|f| f.bits()).collect();
        for (i, a) in all.iter().enumerate() {
            assert_eq!(a.count_ones(), 1);
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
}
