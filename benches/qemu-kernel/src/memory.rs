//! Physical memory: the map the boot loader gave, and what the kernel makes of it.

/// Most regions kept from the boot memory map.
pub const MAX_REGIONS: usize = 32;

/// `hvm_memmap_table_entry.type` of usable RAM (the E820 code).
pub const RAM: u32 = 1;

/// One entry of the memory map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemRegion {
    /// First physical address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
    /// E820 type (1: RAM, 2: reserved, 3: ACPI reclaimable, 4: ACPI NVS...).
    pub kind: u32,
}

/// The boot memory map.
#[derive(Debug, Clone, Copy)]
pub struct MemoryMap {
    /// The entries (only the first `len` are meaningful).
    pub regions: [MemRegion; MAX_REGIONS],
    /// How many entries there are.
    pub len: usize,
}

impl MemoryMap {
    /// The entries.
    pub fn iter(&self) -> impl Iterator<Item = &MemRegion> {
        self.regions[..self.len].iter()
    }
}

/// How the kernel splits the RAM it runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Physical `[start, end)` of the kernel heap.
    pub heap: (u64, u64),
    /// Physical `[start, end)` handed to the frame allocator (page tables, vmalloc pages).
    pub arena: (u64, u64),
}

/// 2 MiB.
const HUGE: u64 = 2 << 20;

/// Round `x` up to a multiple of `a` (a power of two).
pub const fn align_up(x: u64, a: u64) -> u64 {
    (x + a - 1) & !(a - 1)
}

impl MemoryMap {
    /// Split the RAM region that holds the kernel image (the largest one above 1 MiB under
    /// QEMU, up to 3.5 GiB of `-m`) into the heap (`1 / heap_fraction` of it, right after the
    /// image) and the frame allocator's arena (the rest). RAM elsewhere (below 1 MiB, where
    /// the AP trampoline lives; above 4 GiB with a larger `-m`) is left alone. `None` if no
    /// region holds the image or too little is left.
    pub fn layout(&self, kernel_end: u64, heap_fraction: u64) -> Option<Layout> {
        let region = self
            .iter()
            .find(|r| r.kind == RAM && r.start <= kernel_end && kernel_end < r.start + r.len)?;
        let end = (region.start + region.len) & !0xfff;
        let heap_start = align_up(kernel_end, HUGE);
        let heap_len = align_up(
            (end.checked_sub(heap_start)? / heap_fraction).max(HUGE),
            HUGE,
        );
        let arena_start = heap_start + heap_len;
        (arena_start + 16 * HUGE <= end).then_some(Layout {
            heap: (heap_start, arena_start),
            arena: (arena_start, end),
        })
    }
}
