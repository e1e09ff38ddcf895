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
