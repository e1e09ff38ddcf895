//! The two page-table implementations the `pagetable` benchmark and the `translate` example
//! race: `pagetable`'s range walks ([`Ours`]) and the `x86_64` crate's `OffsetPageTable`
//! ([`X86`]), over one heap arena and one frame allocator ([`Setup`]).
//!
//! Both map the same list of data frames (addresses above the arena: the data is never
//! touched) at the same virtual range (1 GiB of 4 KiB pages at the vmalloc base of x86_64
//! Linux), with the same flags. The `x86_64` side's page-table frames come from the shared
//! `pagetable::FrameAllocator` through a `FrameAllocator` impl ([`ArenaFrames`]), its tables
//! reached through `PhysArena::ptr`, i.e. a physical-memory offset of
//! `arena.ptr(base) - base`. The `x86_64` side ignores its flushes (`.ignore()`); ours never
//! flushes by design. Neither side frees tables on unmap.

use std::hint::black_box;
use std::sync::Arc;

use pagetable::{AddressSpace, FrameAllocator, PageTableFlags, PhysAddr, PhysArena, PhysFrame};
use pagetable::{VirtAddr, Zone};
use x86_64::structures::paging as x86p;
use x86_64::structures::paging::mapper::{Mapper, Translate};

/// Pages in the range: 1 GiB of 4 KiB pages.
pub const PAGES: usize = 1 << 18;
/// Where the range starts (the vmalloc area of x86_64 Linux).
pub const VA: u64 = 0xffff_c900_0000_0000;
/// Arena: physical base (tables only: ~1,030 frames for both sides).
pub const ARENA_BASE: u64 = 0x10_0000;
/// Arena: size.
pub const ARENA_SIZE: u64 = 64 << 20;
/// First data frame (above the arena; never touched).
pub const DATA_BASE: u64 = 0x1_0000_0000;

/// `x86_64::FrameAllocator` drawing zeroed frames from the shared `pagetable` allocator.
pub struct ArenaFrames<'a>(&'a FrameAllocator);

// SAFETY: every frame returned is a distinct, zeroed, unused 4 KiB frame of the arena handed
// out by `pagetable::FrameAllocator` (it never hands a frame out twice until freed), which is
// what `x86_64`'s mapper requires of a page-table frame.
unsafe impl x86p::FrameAllocator<x86p::Size4KiB> for ArenaFrames<'_> {
    fn allocate_frame(&mut self) -> Option<x86p::PhysFrame<x86p::Size4KiB>> {
        let f = self.0.alloc_zeroed(Zone::Normal).ok()?;
        Some(x86p::PhysFrame::containing_address(x86_64::PhysAddr::new(
            f.start_address().as_u64(),
        )))
    }
}

/// What both sides share: the allocator (and its arena) and the frames to map.
pub struct Setup {
    /// The frame allocator both sides take their tables from.
    pub frames: Arc<FrameAllocator>,
    data: Vec<PhysFrame>,
    x86_data: Vec<x86p::PhysFrame>,
}

impl Setup {
    /// A 64 MiB heap arena at 1 MiB physical, and 262,144 data frames above it.
    pub fn new() -> Self {
        let arena =
            Arc::new(PhysArena::heap(ARENA_SIZE, PhysAddr::new(ARENA_BASE)).expect("heap arena"));
        let frames = Arc::new(FrameAllocator::new(arena));
        let data = (0..PAGES as u64)
            .map(|i| PhysFrame::containing_address(PhysAddr::new(DATA_BASE + i * 4096)))
            .collect();
        let x86_data = (0..PAGES as u64)
            .map(|i| {
                x86p::PhysFrame::containing_address(x86_64::PhysAddr::new(DATA_BASE + i * 4096))
            })
            .collect();
        Self {
            frames,
            data,
            x86_data,
        }
    }
}

impl Default for Setup {
    fn default() -> Self {
        Self::new()
    }
}

/// Our side: one address space over the shared allocator.
pub struct Ours {
    space: AddressSpace,
    len: u64,
    flags: PageTableFlags,
}

impl Ours {
    /// An empty address space (its root frame from `s`'s allocator).
    pub fn new(s: &Setup) -> Self {
        Self {
            space: AddressSpace::new(Arc::clone(&s.frames)).expect("address space"),
            len: PAGES as u64 * 4096,
            flags: PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE,
        }
    }

    /// Map the whole range (one call).
    pub fn map(&self, s: &Setup) {
        self.space
            .map(VirtAddr::new(VA), &s.data, self.flags)
            .expect("map");
    }

    /// Unmap the whole range (one call, a per-leaf callback).
    pub fn unmap(&self) {
        let flush = self
            .space
            .unmap(VirtAddr::new(VA), self.len, |pa, _| {
                black_box(pa);
            })
            .expect("unmap");
        let _ = black_box(flush);
    }

    /// Translate every page of the range; the sum of the physical addresses. Never inlined,
    /// so callgrind can attribute it (`--toggle-collect='*translate_all*'`).
    #[inline(never)]
    pub fn translate_all(&self) -> u64 {
        // The start as a constant (not a field): the compiler folds the address arithmetic,
        // as it does the `x86_64` side's precomputed pages.
        let va = VirtAddr::new(VA);
        let mut sum = 0u64;
        for i in 0..PAGES as u64 {
            let t = self.space.translate(va + i * 4096);
            sum = sum.wrapping_add(t.map_or(0, |t| t.pa.as_u64()));
        }
        sum
    }
}

/// The `x86_64` side: an `OffsetPageTable` over a root frame of the same arena.
pub struct X86<'a> {
    mapper: x86p::OffsetPageTable<'a>,
    alloc: ArenaFrames<'a>,
    pages: Vec<x86p::Page>,
    flags: x86p::PageTableFlags,
}

impl<'a> X86<'a> {
    /// An empty mapper whose root is a new frame of `s`'s allocator.
    pub fn new(s: &'a Setup) -> Self {
        let arena = s.frames.arena();
        let root = s.frames.alloc_zeroed(Zone::Normal).expect("root");
        let offset = arena
            .ptr(arena.base(), arena.size())
            .expect("arena pointer") as u64
            - arena.base().as_u64();
        let root_ptr = arena
            .ptr(root.start_address(), 4096)
            .expect("root pointer")
            .cast::<x86p::PageTable>();
        // SAFETY: `root_ptr` points at a zeroed, 4 KiB-aligned frame of the arena that nothing
        // else uses while `mapper` lives (it was just allocated here, and `pagetable`'s own
        // address space uses other frames), so a unique `&mut PageTable` to it is sound for
        // the arena's lifetime (`s` outlives `'a`). `x86_64::PageTable` is 512 `u64`s, the
        // arena's word layout.
        let root_table = unsafe { &mut *root_ptr };
        // SAFETY: every physical address `x86_64` dereferences is a table frame of the arena
        // (`ArenaFrames` hands out arena frames only; data frames are never dereferenced), and
        // `offset + pa` is exactly where the arena keeps `pa` in this process.
        let mapper =
            unsafe { x86p::OffsetPageTable::new(root_table, x86_64::VirtAddr::new(offset)) };
        Self {
            mapper,
            alloc: ArenaFrames(&s.frames),
            pages: (0..PAGES as u64)
                .map(|i| x86p::Page::containing_address(x86_64::VirtAddr::new(VA + i * 4096)))
                .collect(),
            flags: x86p::PageTableFlags::PRESENT
                | x86p::PageTableFlags::WRITABLE
                | x86p::PageTableFlags::NO_EXECUTE,
        }
    }

    /// Map the whole range, one `map_to` per page.
    pub fn map(&mut self, s: &Setup) {
        for (p, f) in self.pages.iter().zip(&s.x86_data) {
            // SAFETY: the frames are never accessed (only tables are built), so aliasing them
            // cannot break memory safety; the flush is ignored on purpose.
            unsafe { self.mapper.map_to(*p, *f, self.flags, &mut self.alloc) }
                .expect("map_to")
                .ignore();
        }
    }

    /// Unmap the whole range, one `unmap` per page.
    pub fn unmap(&mut self) {
        for p in &self.pages {
            let (f, flush) = self.mapper.unmap(*p).expect("unmap");
            flush.ignore();
            black_box(f);
        }
    }

    /// Translate every page of the range (`translate_addr`); the sum of the physical
    /// addresses. Never inlined, as [`Ours::translate_all`].
    #[inline(never)]
    pub fn translate_all(&self) -> u64 {
        let mut sum = 0u64;
        for p in &self.pages {
            let a = self.mapper.translate_addr(p.start_address());
            sum = sum.wrapping_add(a.map_or(0, |a| a.as_u64()));
        }
        sum
    }
}
