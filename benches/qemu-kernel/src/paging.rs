//! The kernel's page tables, built with `pagetable` over the frame allocator: its `init_mm`.
//!
//! * identity map of `[4 KiB, end of the kernel image)`: the image (code, statics, boot
//!   stack) runs at its physical addresses, and the low megabyte holds the AP trampoline,
//!   which needs its page identity-mapped while it turns paging on; page 0 stays unmapped so
//!   a null pointer faults;
//! * the direct map: every RAM region of the memory map at [`PAGE_OFFSET`] + its physical
//!   address (2 MiB leaves where aligned, non-executable), where the heap and the frame
//!   allocator's arena (and so every page table) are reached;
//! * the vmalloc range's PML4-level tables, added by `Vmalloc::with_space`.
//!
//! All kernel mappings are global (CR4.PGE is turned on once the tables are loaded), so a
//! full flush must toggle PGE (see [`crate::cpu::flush_tlb_all_local`]).

use alloc::sync::Arc;
use core::ptr::NonNull;

use pagetable::{
    AddressSpace, FrameAllocator, FrameConfig, PageTableFlags, PhysAddr, PhysArena, VirtAddr,
};

use crate::boot::PAGE_OFFSET;
use crate::cpu;
use crate::memory::{Layout, MemoryMap, RAM, align_up};
use crate::platform::Kernel;

/// Flags of the identity-mapped kernel image (executable).
const IMAGE: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::GLOBAL);

/// Flags of the direct map.
const DIRECT: PageTableFlags = IMAGE.union(PageTableFlags::NO_EXECUTE);

/// The frame allocator over the arena of `layout`, reached through the boot direct map.
pub fn frame_allocator(layout: &Layout) -> Arc<FrameAllocator<Kernel>> {
    let (start, end) = layout.arena;
    let virt = NonNull::new((PAGE_OFFSET + start) as *mut u8).expect("direct map address");
    // SAFETY: `[start, end)` is RAM (a region of the memory map, after the kernel image and
    // the heap), mapped at `PAGE_OFFSET + start` by the boot tables and by the kernel's own
    // tables after them, for the kernel's whole life; nothing else uses it (the heap and the
    // image lie below it). Page-aligned by `MemoryMap::layout`. Its content is whatever the
    // firmware left, so it is declared not zeroed.
    let arena =
        unsafe { PhysArena::from_direct_map(virt, PhysAddr::new(start), end - start, false) }
            .expect("direct-map arena");
    Arc::new(FrameAllocator::with_platform(
        Arc::new(arena),
        FrameConfig::default(),
    ))
}

/// Build the kernel's address space (see the module docs) and load it in CR3 on this CPU.
pub fn build_and_load(
    frames: &Arc<FrameAllocator<Kernel>>,
    map: &MemoryMap,
    kernel_end: u64,
) -> AddressSpace<Kernel> {
    let space = AddressSpace::new(Arc::clone(frames)).expect("root table");
    let image_end = align_up(kernel_end, 2 << 20);
    space
        .map_contiguous(
            VirtAddr::new(0x1000),
            PhysAddr::new(0x1000),
            image_end - 0x1000,
            IMAGE,
            true,
        )
        .expect("identity map");
    for r in map.iter().filter(|r| r.kind == RAM) {
        let start = r.start & !0xfff;
        let end = align_up(r.start + r.len, 0x1000);
        space
            .map_contiguous(
                VirtAddr::new(PAGE_OFFSET + start),
                PhysAddr::new(start),
                end - start,
                DIRECT,
                true,
            )
            .expect("direct map");
    }
    load(&space);
    space
}

/// Load `space` in CR3 on this CPU and turn global pages on.
pub fn load(space: &AddressSpace<Kernel>) {
    // SAFETY: the space maps the kernel image at its physical addresses and all RAM at
    // `PAGE_OFFSET`, exactly as the boot tables did for everything the kernel touches (image,
    // boot stack, heap, arena, per-CPU data), and lives as long as the kernel.
    unsafe {
        cpu::write_cr3(space.root().start_address().as_u64());
        cpu::write_cr4(cpu::read_cr4() | cpu::CR4_PGE);
    }
}
