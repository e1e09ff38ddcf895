//! `translate`: the `pagetable/translate` benchmark's loop without criterion, for counting
//! instructions (`valgrind --tool=callgrind`) and reading the generated code.
//!
//! ```text
//! cargo run --release -p benches --example translate -- [--impl ours|x86_64] [--passes N]
//! ```
//!
//! Builds the benchmark's mapping (262,144 4 KiB pages at the vmalloc base, tables in a 64 MiB
//! heap arena at 1 MiB physical; see `benches/benches/pagetable.rs`) with one side only, then
//! translates every page `--passes` times (default 10) through `translate_all_ours` or
//! `translate_all_x86_64` (never inlined, so callgrind can attribute them:
//! `--toggle-collect='*translate_all_*'` counts only the loops). `--impl both` builds both
//! mappings in the one arena, ours first as in the benchmark, and alternates the two sides pass
//! by pass, so both see the same machine load. Prints the checksum and, per side, the minimum
//! and median wall-clock ns per page over the passes (and the ratio of the medians).
//!
//! Instructions per page = the collected Ir / (262,144 × passes).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use pagetable::{AddressSpace, FrameAllocator, PageTableFlags, PhysAddr, PhysArena, PhysFrame};
use pagetable::{VirtAddr, Zone};
use x86_64::structures::paging as x86p;
use x86_64::structures::paging::mapper::{Mapper, Translate};

/// Pages in the range: 1 GiB of 4 KiB pages.
const PAGES: usize = 1 << 18;
/// Where the range starts (the vmalloc area of x86_64 Linux).
const VA: u64 = 0xffff_c900_0000_0000;
/// Arena: physical base and size.
const ARENA_BASE: u64 = 0x10_0000;
const ARENA_SIZE: u64 = 64 << 20;
/// First data frame (above the arena; never touched).
const DATA_BASE: u64 = 0x1_0000_0000;

/// `x86_64::FrameAllocator` drawing zeroed frames from the `pagetable` allocator.
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

/// Our loop, as in the benchmark.
#[inline(never)]
fn translate_all_ours(space: &AddressSpace) -> u64 {
    let va = VirtAddr::new(VA);
    let mut sum = 0u64;
    for i in 0..PAGES as u64 {
        let t = space.translate(va + i * 4096);
        sum = sum.wrapping_add(t.map_or(0, |t| t.pa.as_u64()));
    }
    sum
}

/// The `x86_64` crate's loop, as in the benchmark.
#[inline(never)]
fn translate_all_x86_64(mapper: &x86p::OffsetPageTable<'_>, pages: &[x86p::Page]) -> u64 {
    let mut sum = 0u64;
    for p in pages {
        let a = mapper.translate_addr(p.start_address());
        sum = sum.wrapping_add(a.map_or(0, |a| a.as_u64()));
    }
    sum
}

/// Which side(s) to run.
#[derive(Clone, Copy, PartialEq)]
enum Which {
    Ours,
    X86,
    Both,
}

/// The `x86_64` side's mapping of the same range, in the same arena.
fn x86_mapper(frames: &FrameAllocator) -> (x86p::OffsetPageTable<'_>, Vec<x86p::Page>) {
    let arena = frames.arena();
    let root = frames.alloc_zeroed(Zone::Normal).expect("root");
    let offset = arena
        .ptr(arena.base(), arena.size())
        .expect("arena pointer") as u64
        - ARENA_BASE;
    let root_ptr = arena
        .ptr(root.start_address(), 4096)
        .expect("root pointer")
        .cast::<x86p::PageTable>();
    // SAFETY: `root_ptr` points at a zeroed, 4 KiB-aligned frame of the arena that nothing else
    // uses while the mapper lives (just allocated here, and our side uses other frames), so a
    // unique `&mut PageTable` to it is sound while the arena lives (the allocator, borrowed for
    // the mapper's lifetime, keeps it). `x86_64::PageTable` is 512 `u64`s, the arena's layout.
    let root_table = unsafe { &mut *root_ptr };
    // SAFETY: every physical address `x86_64` dereferences is a table frame of the arena
    // (`ArenaFrames` hands out arena frames only; data frames are never dereferenced), and
    // `offset + pa` is exactly where the arena keeps `pa` in this process.
    let mut mapper =
        unsafe { x86p::OffsetPageTable::new(root_table, x86_64::VirtAddr::new(offset)) };
    let mut alloc = ArenaFrames(frames);
    let flags = x86p::PageTableFlags::PRESENT
        | x86p::PageTableFlags::WRITABLE
        | x86p::PageTableFlags::NO_EXECUTE;
    let pages: Vec<x86p::Page> = (0..PAGES as u64)
        .map(|i| x86p::Page::containing_address(x86_64::VirtAddr::new(VA + i * 4096)))
        .collect();
    for (i, p) in pages.iter().enumerate() {
        let f =
            x86p::PhysFrame::containing_address(x86_64::PhysAddr::new(DATA_BASE + i as u64 * 4096));
        // SAFETY: the data frames are never accessed (only tables are built), so aliasing
        // them cannot break memory safety; the flush is ignored on purpose.
        unsafe { mapper.map_to(*p, f, flags, &mut alloc) }
            .expect("map_to")
            .ignore();
    }
    (mapper, pages)
}

/// Run `pass` once and return its wall-clock ns per page.
fn timed(sum: &mut u64, pass: impl FnOnce() -> u64) -> f64 {
    let start = Instant::now();
    *sum = sum.wrapping_add(pass());
    start.elapsed().as_nanos() as f64 / PAGES as f64
}

/// Minimum and median of `v` (sorted in place).
fn min_median(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn main() {
    let mut which = Which::Ours;
    let mut passes = 10u32;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--impl" => {
                which = match v.as_str() {
                    "ours" => Which::Ours,
                    "x86_64" => Which::X86,
                    "both" => Which::Both,
                    _ => panic!("--impl: {v}: want ours, x86_64 or both"),
                }
            }
            "--passes" => passes = v.parse().expect("--passes: a number"),
            _ => panic!("unknown argument {k}"),
        }
    }
    let passes = passes.max(1);
    let arena =
        Arc::new(PhysArena::heap(ARENA_SIZE, PhysAddr::new(ARENA_BASE)).expect("heap arena"));
    let frames = Arc::new(FrameAllocator::new(arena));
    // Ours first, as in the benchmark (its tables take the lower frames).
    let space = (which != Which::X86).then(|| {
        let data: Vec<PhysFrame> = (0..PAGES as u64)
            .map(|i| PhysFrame::containing_address(PhysAddr::new(DATA_BASE + i * 4096)))
            .collect();
        let space = AddressSpace::new(Arc::clone(&frames)).expect("address space");
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE | PageTableFlags::NO_EXECUTE;
        space.map(VirtAddr::new(VA), &data, flags).expect("map");
        space
    });
    let x86 = (which != Which::Ours).then(|| x86_mapper(&frames));
    let (mut sum, mut t_ours, mut t_x86) = (0u64, Vec::new(), Vec::new());
    for _ in 0..passes {
        if let Some(s) = &space {
            t_ours.push(timed(&mut sum, || translate_all_ours(black_box(s))));
        }
        if let Some((m, pages)) = &x86 {
            t_x86.push(timed(&mut sum, || {
                translate_all_x86_64(black_box(m), pages)
            }));
        }
    }
    println!("passes {passes} checksum {sum:#x}");
    let mut medians = Vec::new();
    for (name, t) in [("ours", &mut t_ours), ("x86_64", &mut t_x86)] {
        if !t.is_empty() {
            let (min, med) = min_median(t);
            medians.push(med);
            println!("{name:7} ns/page: min {min:.2} median {med:.2}");
        }
    }
    if let [ours, x86] = medians[..] {
        println!("ours / x86_64 (medians): {:.3}", ours / x86);
    }
}
