//! Mapping, translating and unmapping 1 GiB of 4 KiB pages (262,144 pages): `pagetable`'s
//! range walks against the `x86_64` crate's `OffsetPageTable` (one `map_to` / `unmap` /
//! `translate_addr` per page, re-walking the tree each time).
//!
//! Both run in one process on the same heap arena: their page-table frames come from the same
//! `pagetable::FrameAllocator` (the `x86_64` side through a `FrameAllocator` impl, its tables
//! reached through `PhysArena::ptr`, i.e. a physical-memory offset of
//! `arena.ptr(base) - base`). Both map the same list of frames (addresses above the arena: the
//! data is never touched) at the same virtual range, with the same flags. The `x86_64` side
//! ignores its flushes (`.ignore()`); ours never flushes by design.
//!
//! Each iteration maps (or unmaps) the whole range; the other half of the pair runs outside
//! the timed region (`iter_custom`). Tables stay allocated between iterations in both (neither
//! frees tables on unmap), so the steady state is measured. For each operation the two sides
//! run back to back (groups `pagetable/map`, `pagetable/translate`, `pagetable/unmap`, each
//! with `ours` and `x86_64`), so they see the same machine load. Throughput is in pages.
//!
//! Run: `cargo bench -p benches --bench pagetable -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pagetable::AddressSpace;
use pagetable::{FrameAllocator, Zone};
use pagetable::{PageTableFlags, PhysAddr, PhysArena, PhysFrame, VirtAddr};
use x86_64::structures::paging as x86p;
use x86_64::structures::paging::mapper::{Mapper, Translate};

/// Pages in the range: 1 GiB of 4 KiB pages.
const PAGES: usize = 1 << 18;
/// Where the range starts (the vmalloc area of x86_64 Linux).
const VA: u64 = 0xffff_c900_0000_0000;
/// Arena: physical base and size (tables only: ~1,030 frames for both sides).
const ARENA_BASE: u64 = 0x10_0000;
const ARENA_SIZE: u64 = 64 << 20;
/// First data frame (above the arena; never touched).
const DATA_BASE: u64 = 0x1_0000_0000;

/// `x86_64::FrameAllocator` drawing zeroed frames from the shared `pagetable` allocator.
struct ArenaFrames<'a>(&'a FrameAllocator);

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
struct Setup {
    frames: Arc<FrameAllocator>,
    data: Vec<PhysFrame>,
    x86_data: Vec<x86p::PhysFrame>,
}

/// A 64 MiB heap arena at 1 MiB physical, and 262,144 data frames above it.
fn setup() -> Setup {
    let arena =
        Arc::new(PhysArena::heap(ARENA_SIZE, PhysAddr::new(ARENA_BASE)).expect("heap arena"));
    let frames = Arc::new(FrameAllocator::new(arena));
    let data = (0..PAGES as u64)
        .map(|i| PhysFrame::containing_address(PhysAddr::new(DATA_BASE + i * 4096)))
        .collect();
    let x86_data = (0..PAGES as u64)
        .map(|i| x86p::PhysFrame::containing_address(x86_64::PhysAddr::new(DATA_BASE + i * 4096)))
        .collect();
    Setup {
        frames,
        data,
        x86_data,
    }
}

/// Our side: one address space over the shared allocator.
struct Ours {
    space: AddressSpace,
    va: VirtAddr,
    len: u64,
    flags: PageTableFlags,
}

impl Ours {
    fn new(s: &Setup) -> Self {
        Self {
            space: AddressSpace::new(Arc::clone(&s.frames)).expect("address space"),
            va: VirtAddr::new(VA),
            len: PAGES as u64 * 4096,
            flags: PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE,
        }
    }

    fn map(&self, s: &Setup) {
        self.space.map(self.va, &s.data, self.flags).expect("map");
    }

    fn unmap(&self) {
        let flush = self
            .space
            .unmap(self.va, self.len, |pa, _| {
                black_box(pa);
            })
            .expect("unmap");
        let _ = black_box(flush);
    }

    fn translate_all(&self) -> u64 {
        let mut sum = 0u64;
        for i in 0..PAGES as u64 {
            let t = self.space.translate(self.va + i * 4096);
            sum = sum.wrapping_add(t.map_or(0, |t| t.pa.as_u64()));
        }
        sum
    }
}

/// The `x86_64` side: an `OffsetPageTable` over a root frame of the same arena.
struct X86<'a> {
    mapper: x86p::OffsetPageTable<'a>,
    alloc: ArenaFrames<'a>,
    pages: Vec<x86p::Page>,
    flags: x86p::PageTableFlags,
}

impl<'a> X86<'a> {
    fn new(s: &'a Setup) -> Self {
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
        // else uses while `mapper` lives (it was just allocated for this benchmark, and
        // `pagetable`'s own address space uses other frames), so a unique `&mut PageTable` to
        // it is sound for the arena's lifetime (`s` outlives `'a`). `x86_64::PageTable` is 512
        // `u64`s, the arena's word layout.
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

    fn map(&mut self, s: &Setup) {
        for (p, f) in self.pages.iter().zip(&s.x86_data) {
            // SAFETY: the frames are never accessed (the benchmark only builds tables), so
            // aliasing them cannot break memory safety; the flush is ignored on purpose.
            unsafe { self.mapper.map_to(*p, *f, self.flags, &mut self.alloc) }
                .expect("map_to")
                .ignore();
        }
    }

    fn unmap(&mut self) {
        for p in &self.pages {
            let (f, flush) = self.mapper.unmap(*p).expect("unmap");
            flush.ignore();
            black_box(f);
        }
    }

    fn translate_all(&self) -> u64 {
        let mut sum = 0u64;
        for p in &self.pages {
            let a = self.mapper.translate_addr(p.start_address());
            sum = sum.wrapping_add(a.map_or(0, |a| a.as_u64()));
        }
        sum
    }
}

/// Run `before`, `timed`, `after` `iters` times; only `timed` is measured.
fn measure(
    iters: u64,
    mut before: impl FnMut(),
    mut timed: impl FnMut(),
    mut after: impl FnMut(),
) -> Duration {
    let mut t = Duration::ZERO;
    for _ in 0..iters {
        before();
        let start = Instant::now();
        timed();
        t += start.elapsed();
        after();
    }
    t
}

fn pagetable(c: &mut Criterion) {
    let s = setup();
    let ours = Ours::new(&s);
    let mut x86 = X86::new(&s);
    // Both sides' tables exist before measuring (neither frees tables on unmap), so every
    // iteration measures the steady state.
    ours.map(&s);
    ours.unmap();
    x86.map(&s);
    x86.unmap();
    // The two sides run back to back per operation, so they see the same machine load.
    let mut g = c.benchmark_group("pagetable/map");
    g.throughput(Throughput::Elements(PAGES as u64));
    g.sample_size(10);
    g.bench_function("ours", |b| {
        b.iter_custom(|n| measure(n, || {}, || ours.map(&s), || ours.unmap()))
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| {
            let x = &mut x86;
            let mut t = Duration::ZERO;
            for _ in 0..n {
                let start = Instant::now();
                x.map(&s);
                t += start.elapsed();
                x.unmap();
            }
            t
        })
    });
    g.finish();

    ours.map(&s);
    x86.map(&s);
    let mut g = c.benchmark_group("pagetable/translate");
    g.throughput(Throughput::Elements(PAGES as u64));
    g.sample_size(10);
    g.bench_function("ours", |b| b.iter(|| black_box(ours.translate_all())));
    g.bench_function("x86_64", |b| b.iter(|| black_box(x86.translate_all())));
    g.finish();
    ours.unmap();
    x86.unmap();

    let mut g = c.benchmark_group("pagetable/unmap");
    g.throughput(Throughput::Elements(PAGES as u64));
    g.sample_size(10);
    g.bench_function("ours", |b| {
        b.iter_custom(|n| measure(n, || ours.map(&s), || ours.unmap(), || {}))
    });
    g.bench_function("x86_64", |b| {
        b.iter_custom(|n| {
            let x = &mut x86;
            let mut t = Duration::ZERO;
            for _ in 0..n {
                x.map(&s);
                let start = Instant::now();
                x.unmap();
                t += start.elapsed();
            }
            t
        })
    });
    g.finish();
    // The x86_64 side's tables stay in the arena, dropped with it at exit.
}

criterion_group!(benches, pagetable);
criterion_main!(benches);
