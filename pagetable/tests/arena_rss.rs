//! The mmap arena costs nothing until touched: an 8 GiB arena raises the resident set by
//! about the pages actually written, and its mapping carries `MAP_NORESERVE` (the `nr` flag
//! in /proc/self/smaps). Runs in its own test binary so no other test disturbs the RSS.
#![cfg(not(feature = "loom"))]
#![cfg(target_os = "linux")]

use pagetable::{PAGE_SIZE, PhysAddr, PhysArena};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Resident set size in bytes, from /proc/self/statm (second field, in pages).
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("statm");
    pages * PAGE_SIZE
}

/// The VmFlags line of the smaps entry that starts at `start`.
fn vm_flags_of(start: usize) -> Option<String> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        // A mapping header starts with "lo-hi" in hex; field lines start with "Name:".
        let header = first.split_once('-').and_then(|(lo, hi)| {
            let lo = usize::from_str_radix(lo, 16).ok()?;
            usize::from_str_radix(hi, 16).ok()?;
            Some(lo)
        });
        if let Some(lo) = header {
            inside = lo == start;
        } else if inside {
            if let Some(f) = line.strip_prefix("VmFlags:") {
                return Some(f.trim().to_string());
            }
        }
    }
    None
}

#[test]
fn eight_gib_mmap_arena_costs_only_touched_pages() {
    let before = rss();
    let arena = PhysArena::mmap(8 * GIB, PhysAddr::new(GIB)).unwrap();
    let after_create = rss();

    // Touch 16 pages 512 MiB apart.
    let touches = 16u64;
    for i in 0..touches {
        let at = arena.base() + i * 512 * MIB + 123;
        arena.write(at, &[0xab; 16]).unwrap();
    }
    let after_touch = rss();
    for i in 0..touches {
        let mut b = [0u8; 16];
        arena
            .read(arena.base() + i * 512 * MIB + 123, &mut b)
            .unwrap();
        assert_eq!(b, [0xab; 16]);
    }

    let created = after_create.saturating_sub(before);
    let touched = after_touch.saturating_sub(after_create);
    eprintln!(
        "8 GiB mmap arena: rss before {} KiB, +{} KiB after creation, +{} KiB after touching \
         {touches} pages",
        before / 1024,
        created / 1024,
        touched / 1024
    );
    // Creation itself costs (almost) nothing: far below one 2 MiB huge page.
    assert!(
        created < MIB,
        "creating the arena made {created} bytes resident"
    );
    // Each touch costs one 4 KiB page (the arena has no huge-page advice and THP would add
    // at most 2 MiB per touch); generous slack for the test harness itself.
    assert!(
        touched <= touches * 2 * MIB + 4 * MIB,
        "touching made {touched} bytes resident"
    );
    assert!(
        touched >= touches * PAGE_SIZE / 2,
        "touches did not show in the RSS: {touched}"
    );

    let start = arena.ptr(arena.base(), 0).unwrap() as usize;
    let flags = vm_flags_of(start).expect("arena mapping in /proc/self/smaps");
    eprintln!("arena VmFlags: {flags}");
    assert!(
        flags.split_whitespace().any(|f| f == "nr"),
        "no MAP_NORESERVE: {flags}"
    );
}
