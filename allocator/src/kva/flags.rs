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
        /// The caller allows 2 MiB leaves (Linux's `VM_ALLOW_HUGE_VMAP`, what
        /// `vmalloc_huge` passes).
        const ALLOW_HUGE_VMAP = 0x4000;
        /// Mapped with 2 MiB leaves (Linux's `page_order > 0`).
        const HUGE = 0x8000;
        /// The pages were zeroed at allocation (`__GFP_ZERO`): `vrealloc` keeps the bytes
        /// past the size zero.
        const ZEROED = 0x1_0000;
        /// A `vmap_pfn()` area: page frame numbers, no pages.
        const PFNMAP = 0x2_0000;
        /// A kernel thread stack (`alloc_thread_stack_node`).
        const STACK = 0x4_0000;
    }
}

impl VmFlags {
    /// Flags a caller may pass to the calls that take flags (`vmalloc_node_range`, `vmap`,
    /// `get_vm_area`, early areas): the kind of a reservation or `vmap` area and its
    /// properties. Every other flag is set by the library itself to record what it did
    /// ([`VmFlags::INTERNAL`]); each call further restricts the kinds it accepts.
    pub const CALLER: VmFlags = VmFlags::IOREMAP
        .union(VmFlags::MAP)
        .union(VmFlags::USERMAP)
        .union(VmFlags::NO_GUARD)
        .union(VmFlags::ALLOW_HUGE_VMAP);

    /// Flags only the library sets (refused from callers with `InvalidFlags`):
    /// [`VmFlags::ALLOC`], [`VmFlags::VPAGES`], [`VmFlags::UNLIST`],
    /// [`VmFlags::UNINITIALIZED`], [`VmFlags::MAP_RAM`], [`VmFlags::EXEC`],
    /// [`VmFlags::DMA32`], [`VmFlags::EARLY`], [`VmFlags::HUGE`], [`VmFlags::ZEROED`],
    /// [`VmFlags::PFNMAP`], [`VmFlags::STACK`].
    pub const INTERNAL: VmFlags = VmFlags::all().difference(VmFlags::CALLER);
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
    fn caller_and_internal_flags_partition_all() {
        assert_eq!(VmFlags::CALLER | VmFlags::INTERNAL, VmFlags::all());
        assert!(!VmFlags::CALLER.intersects(VmFlags::INTERNAL));
        assert!(VmFlags::INTERNAL.contains(VmFlags::VPAGES | VmFlags::ALLOC | VmFlags::HUGE));
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
