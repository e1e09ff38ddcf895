//! `area_bytes`: memory per live area. For each allocator, in a process of its own, the
//! growth of the resident set (`/proc/self/statm`) while `--areas N` 2-page areas (1 page +
//! guard, what `vmalloc(4096)` asks of the KVA layer) are live, divided by N.
//!
//! ```text
//! cargo run --release -p benches --example area_bytes -- [--areas N] [--alloc NAME[,NAME..]]
//! ```
//!
//! Names as in the `kvapair` example, plus `legacy` (the Linux 3.x list walk's KVA part).
//! Default: ours, single-lock, legacy and every peer. Each allocator runs in a child process
//! (this program re-executed with `--child NAME`), so one allocator's freed heap cannot hide
//! another's growth. The RSS is read after the allocator is built and after the N
//! allocations; what the allocator reserved up front (offset-allocator's node arrays, for
//! instance) is therefore not counted, and is printed separately as the construction growth.

use benches::peers::{
    BTreeFirstFit, BuddyPeer, DEFAULT_SPAN, FreeListPeer, KvaPeer, LegacyKvaPeer, OffsetAllocPeer,
    PAGE, RangeAllocPeer, VaAllocator, VmemPeer,
};

const ALL: &str = "kva,kva-single-lock,legacy,range-alloc,offset-allocator,free-list,vmem,\
                   buddy_system_allocator,btreemap-first-fit";

/// Resident bytes of this process.
fn rss() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn build(name: &str, areas: u64) -> Result<Box<dyn VaAllocator>, String> {
    let span = DEFAULT_SPAN;
    let e = |e: &dyn std::fmt::Display| format!("{name}: {e}");
    let max = u32::try_from(areas + 1024).unwrap_or(u32::MAX);
    Ok(match name {
        "kva" => Box::new(KvaPeer::sharded(span).map_err(|x| e(&x))?),
        "kva-single-lock" => Box::new(KvaPeer::single_lock(span).map_err(|x| e(&x))?),
        "legacy" => Box::new(LegacyKvaPeer::new(span)),
        "range-alloc" => Box::new(RangeAllocPeer::new(span)),
        "offset-allocator" => Box::new(OffsetAllocPeer::new(span, max).map_err(|x| e(&x))?),
        "free-list" => Box::new(FreeListPeer::new(span).map_err(|x| e(&x))?),
        "vmem" => Box::new(VmemPeer::new(span).map_err(|x| e(&x))?),
        "buddy_system_allocator" => Box::new(BuddyPeer::new(span).map_err(|x| e(&x))?),
        "btreemap-first-fit" => Box::new(BTreeFirstFit::new(span)),
        _ => return Err(format!("unknown allocator {name}")),
    })
}

fn child(name: &str, areas: u64) -> Result<(), String> {
    // The record of live addresses is the caller's, not the allocator's: reserve and touch
    // it first.
    let mut live: Vec<u64> = vec![1; areas as usize];
    live.clear();
    let r0 = rss();
    let mut a = build(name, areas)?;
    let r1 = rss();
    for _ in 0..areas {
        live.push(
            a.alloc(2 * PAGE, PAGE)
                .ok_or_else(|| format!("{name}: out of space"))?,
        );
    }
    let r2 = rss();
    println!(
        "{name:<24} {areas} live areas: {:7.1} bytes per area (construction {:.1} MiB)",
        (r2.saturating_sub(r1)) as f64 / areas as f64,
        r1.saturating_sub(r0) as f64 / (1 << 20) as f64
    );
    // Freed in the process's exit, not here: the figure is taken.
    std::mem::forget(a);
    Ok(())
}

fn main() {
    let mut areas = 1_000_000u64;
    let mut allocs = ALL.to_owned();
    let mut child_of = None;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next();
        match (k.as_str(), v) {
            ("--areas", Some(v)) => areas = v.parse().expect("--areas: a number"),
            ("--alloc", Some(v)) => allocs = v,
            ("--child", Some(v)) => child_of = Some(v),
            _ => {
                eprintln!("usage: area_bytes [--areas N] [--alloc NAME[,NAME..]]");
                std::process::exit(2);
            }
        }
    }
    if let Some(name) = child_of {
        if let Err(e) = child(&name, areas) {
            eprintln!("area_bytes: {e}");
            std::process::exit(1);
        }
        return;
    }
    let me = std::env::current_exe().expect("current_exe");
    for name in allocs.split(',') {
        let st = std::process::Command::new(&me)
            .args(["--areas", &areas.to_string(), "--child", name])
            .status();
        if !st.is_ok_and(|s| s.success()) {
            eprintln!("area_bytes: {name} failed");
        }
    }
}
