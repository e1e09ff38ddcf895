//! Zeroed allocation of never-touched frames writes nothing: allocating 16 MiB of zeroed
//! frames from an mmap arena leaves the resident set unchanged, while reused (dirty) frames do
//! get cleared. Runs in its own test binary so no other test disturbs the RSS.
#![cfg(not(feature = "loom"))]
#![cfg(target_os = "linux")]

use pagetable::{FrameAllocator, PAGE_SIZE, PhysAddr, PhysArena, Zone};
use std::sync::Arc;

const MIB: u64 = 1 << 20;

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

#[test]
fn zeroed_fresh_frames_are_not_touched() {
    let arena = Arc::new(PhysArena::mmap(1 << 30, PhysAddr::new(1 << 32)).unwrap());
    let fa = FrameAllocator::new(Arc::clone(&arena));
    let n = (16 * MIB / PAGE_SIZE) as usize;
    let mut frames = Vec::with_capacity(2 * n);
    let before = rss();
    for _ in 0..n / 2 {
        frames.push(fa.alloc_zeroed(Zone::Normal).unwrap());
    }
    fa.alloc_bulk_zeroed(n / 2, Zone::Normal, &mut frames)
        .unwrap();
    let after = rss();
    let grown = after.saturating_sub(before);
    eprintln!(
        "{n} zeroed fresh frames (16 MiB): rss +{} KiB",
        grown / 1024
    );
    assert!(
        grown < 2 * MIB,
        "zeroed allocation of fresh frames touched {grown} bytes"
    );
    for f in &frames[..8] {
        assert!(arena.is_zero(f.start_address(), PAGE_SIZE).unwrap());
    }

    // Dirty a frame, free it, take it back zeroed: the memset happens for reused frames.
    let f = frames.pop().unwrap();
    arena.fill(f.start_address(), PAGE_SIZE, 0x5a).unwrap();
    assert_eq!(fa.free(f), Ok(true));
    let g = fa.alloc_zeroed(Zone::Normal).unwrap();
    assert_eq!(g, f);
    assert!(arena.is_zero(g.start_address(), PAGE_SIZE).unwrap());
    frames.push(g);
    assert_eq!(fa.free_bulk(&frames), Ok(frames.len()));
    assert_eq!(fa.stats().used, 0);
}
