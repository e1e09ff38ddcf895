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
//! frees tables on unmap), so the steady state is measured. Throughput is in pages.
//!
//! Run: `cargo bench -p benches --bench pagetable -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pagetable::frame::{FrameAllocator, Zone};
use pagetable::mapper::AddressSpace;
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

struct Setup {
    frames: Arc<FrameAllocator>,
    data: Vec<PhysFrame>,
    x86_data: Vec<x86p::PhysFrame>,
}

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

fn ours(c: &mut Criterion, s: &Setup) {
    let space = AddressSpace::new(Arc::clone(&s.frames)).expect("address space");
    let va = VirtAddr::new(VA);
    let len = PAGES as u64 * 4096;
    let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
    let mut g = c.benchmark_group("pagetable/ours");
    g.throughput(Throughput::Elements(PAGES as u64));
    g.sample_size(20);
    g.bench_function("map", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                space.map(va, &s.data, flags).expect("map");
                t += start.elapsed();
                space.unmap(va, len, |_, _| {}).expect("unmap");
            }
            t
        })
    });
    space.map(va, &s.data, flags).expect("map");
    g.bench_function("translate", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for i in 0..PAGES as u64 {
                sum = sum.wrapping_add(space.translate(va + i * 4096).map_or(0, |t| t.pa.as_u64()));
            }
            black_box(sum)
        })
    });
    space.unmap(va, len, |_, _| {}).expect("unmap");
    g.bench_function("unmap", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                space.map(va, &s.data, flags).expect("map");
                let start = Instant::now();
                let flush = space
                    .unmap(va, len, |pa, _| {
                        black_box(pa);
                    })
                    .expect("unmap");
                t += start.elapsed();
                assert_eq!(flush.pages(), PAGES as u64);
                assert_eq!(space.rss(), 0);
            }
            t
        })
    });
    g.finish();
}

fn x86(c: &mut Criterion, s: &Setup) {
    let arena = Arc::clone(s.frames.arena());
    let root = s.frames.alloc_zeroed(Zone::Normal).expect("root");
    let base = arena.base().as_u64();
    let offset = arena
        .ptr(arena.base(), arena.size())
        .expect("arena pointer") as u64
        - base;
    let root_ptr = arena
        .ptr(root.start_address(), 4096)
        .expect("root pointer")
        .cast::<x86p::PageTable>();
    // SAFETY: `root_ptr` points at a zeroed, 4 KiB-aligned frame of the arena that nothing else
    // uses while `mapper` lives (it was just allocated for this benchmark, and `pagetable`'s
    // own address space uses other frames), so a unique `&mut PageTable` to it is sound.
    // `x86_64::PageTable` is 512 `u64`s with the arena word layout.
    let root_table = unsafe { &mut *root_ptr };
    // SAFETY: every physical address `x86_64` will dereference is a table frame from the arena
    // (`ArenaFrames` hands out arena frames only; the data frames are never dereferenced),
    // and `offset + pa` is exactly where the arena maps `pa` in this process.
    let mut mapper =
        unsafe { x86p::OffsetPageTable::new(root_table, x86_64::VirtAddr::new(offset)) };
    let mut alloc = ArenaFrames(&s.frames);
    let flags = x86p::PageTableFlags::PRESENT
        | x86p::PageTableFlags::WRITABLE
        | x86p::PageTableFlags::NO_EXECUTE;
    let pages: Vec<x86p::Page> = (0..PAGES as u64)
        .map(|i| x86p::Page::containing_address(x86_64::VirtAddr::new(VA + i * 4096)))
        .collect();
    let mut map_all = |mapper: &mut x86p::OffsetPageTable<'_>| {
        for (p, f) in pages.iter().zip(&s.x86_data) {
            // SAFETY: the frames are never accessed (the benchmark only builds tables), so
            // aliasing them cannot break memory safety; the flush is ignored on purpose.
            unsafe { mapper.map_to(*p, *f, flags, &mut alloc) }
                .expect("map_to")
                .ignore();
        }
    };
    let unmap_all = |mapper: &mut x86p::OffsetPageTable<'_>| {
        for p in &pages {
            let (f, flush) = mapper.unmap(*p).expect("unmap");
            flush.ignore();
            black_box(f);
        }
    };
    let mut g = c.benchmark_group("pagetable/x86_64");
    g.throughput(Throughput::Elements(PAGES as u64));
    g.sample_size(10);
    g.bench_function("map", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                map_all(&mut mapper);
                t += start.elapsed();
                unmap_all(&mut mapper);
            }
            t
        })
    });
    map_all(&mut mapper);
    g.bench_function("translate", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            for p in &pages {
                sum = sum.wrapping_add(
                    mapper
                        .translate_addr(p.start_address())
                        .map_or(0, |a| a.as_u64()),
                );
            }
            black_box(sum)
        })
    });
    unmap_all(&mut mapper);
    g.bench_function("unmap", |b| {
        b.iter_custom(|iters| {
            let mut t = Duration::ZERO;
            for _ in 0..iters {
                map_all(&mut mapper);
                let start = Instant::now();
                unmap_all(&mut mapper);
                t += start.elapsed();
            }
            t
        })
    });
    g.finish();
    // The x86_64 tables are left in the arena, which is dropped with the allocator at exit.
}

fn pagetable(c: &mut Criterion) {
    let s = setup();
    ours(c, &s);
    x86(c, &s);
}

criterion_group!(benches, pagetable);
criterion_main!(benches);
