//! The [`peers`](crate::peers) by name (what `kvapair`, `area_bytes` and the runner's
//! `--compare` take on their command lines), and the KVA fixed pattern over threads for
//! `--compare`'s second chart.
//!
//! Names: `kva` (ours, default configuration), `kva-sync` (ours, purges run by the freeing
//! thread), `kva-spin-sync` (`kva-sync` with a spinlock for its locks, as a kernel would
//! build it; one-thread runs only, with the `spin-peer` feature), `kva-single-lock`,
//! `range-alloc`, `offset-allocator`, `free-list`, `vmem`,
//! `buddy_system_allocator`, `btreemap-first-fit`.

use std::sync::Barrier;
use std::time::Instant;

use crate::peers::{
    BTreeFirstFit, BuddyPeer, DEFAULT_SPAN, FreeListPeer, KvaPeer, Locked, OffsetAllocPeer, PAGE,
    RangeAllocPeer, SharedVaAllocator, VaAllocator, VmemPeer,
};

/// Ours, the single lock and the peers that allocate below 2^40 with page alignment (every
/// name but `kva-sync` and `buddy_system_allocator`, the slowest of the set): the rows of
/// `--compare`'s KVA chart.
pub const COMPARE_NAMES: [&str; 7] = [
    "kva",
    "kva-single-lock",
    "range-alloc",
    "offset-allocator",
    "free-list",
    "vmem",
    "btreemap-first-fit",
];

/// Ours with the default configuration but synchronous purges.
fn sync_kva(span: u64) -> Result<KvaPeer, vmalloc::VmallocError> {
    let cfg = vmalloc::KvaConfig {
        purge_mode: vmalloc::PurgeMode::Synchronous,
        ..vmalloc::KvaConfig::default()
    };
    KvaPeer::with_config("kva-sync", span, cfg)
}

/// A single-threaded adapter by name (the peers unlocked).
pub fn single(name: &str) -> Result<Box<dyn VaAllocator>, String> {
    let span = DEFAULT_SPAN;
    let e = |e: &dyn std::fmt::Display| format!("{name}: {e}");
    Ok(match name {
        "kva" => Box::new(KvaPeer::sharded(span).map_err(|x| e(&x))?),
        "kva-sync" => Box::new(sync_kva(span).map_err(|x| e(&x))?),
        #[cfg(feature = "spin-peer")]
        "kva-spin-sync" => Box::new(crate::peers::SpinKvaPeer::new(span).map_err(|x| e(&x))?),
        "kva-single-lock" => Box::new(KvaPeer::single_lock(span).map_err(|x| e(&x))?),
        "range-alloc" => Box::new(RangeAllocPeer::new(span)),
        "offset-allocator" => Box::new(OffsetAllocPeer::new(span, 1 << 17).map_err(|x| e(&x))?),
        "free-list" => Box::new(FreeListPeer::new(span).map_err(|x| e(&x))?),
        "vmem" => Box::new(VmemPeer::new(span).map_err(|x| e(&x))?),
        "buddy_system_allocator" => Box::new(BuddyPeer::new(span).map_err(|x| e(&x))?),
        "btreemap-first-fit" => Box::new(BTreeFirstFit::new(span)),
        _ => return Err(format!("unknown allocator {name}")),
    })
}

/// A shareable adapter by name (the peers behind a parking_lot mutex; `vmem` and ours lock
/// themselves).
pub fn shared(name: &str) -> Result<Box<dyn SharedVaAllocator>, String> {
    let span = DEFAULT_SPAN;
    let e = |e: &dyn std::fmt::Display| format!("{name}: {e}");
    Ok(match name {
        "kva" => Box::new(KvaPeer::sharded(span).map_err(|x| e(&x))?),
        "kva-sync" => Box::new(sync_kva(span).map_err(|x| e(&x))?),
        #[cfg(feature = "spin-peer")]
        "kva-spin-sync" => Box::new(crate::peers::SpinKvaPeer::new(span).map_err(|x| e(&x))?),
        "kva-single-lock" => Box::new(KvaPeer::single_lock(span).map_err(|x| e(&x))?),
        "range-alloc" => Box::new(Locked::new(RangeAllocPeer::new(span))),
        "offset-allocator" => Box::new(Locked::new(
            OffsetAllocPeer::new(span, 1 << 17).map_err(|x| e(&x))?,
        )),
        "free-list" => Box::new(Locked::new(FreeListPeer::new(span).map_err(|x| e(&x))?)),
        "vmem" => Box::new(VmemPeer::new(span).map_err(|x| e(&x))?),
        "buddy_system_allocator" => Box::new(Locked::new(BuddyPeer::new(span).map_err(|x| e(&x))?)),
        "btreemap-first-fit" => Box::new(Locked::new(BTreeFirstFit::new(span))),
        _ => return Err(format!("unknown allocator {name}")),
    })
}

/// The `kva` bench's fixed pattern (allocate 2 pages, free them) on `threads` threads of
/// `pairs` pairs each (after a tenth as many unmeasured), thread `i` on CPU slot `i`, one
/// fresh shared instance of `name`: M pairs per second over all threads, from the first
/// thread's start to the last one's end.
pub fn fixed_mpairs(name: &str, threads: usize, pairs: u64) -> Result<f64, String> {
    let a = shared(name)?;
    let a: &dyn SharedVaAllocator = a.as_ref();
    let threads = threads.max(1);
    let start = Barrier::new(threads);
    let spans: Vec<Result<(Instant, Instant), String>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let start = &start;
                s.spawn(move || {
                    pagetable::cpu::set_this_cpu(i);
                    let pair = || -> Result<(), String> {
                        let x = a
                            .alloc(2 * PAGE, PAGE)
                            .ok_or_else(|| format!("{name}: no space"))?;
                        a.free(std::hint::black_box(x), 2 * PAGE, PAGE)
                            .map_err(|e| format!("{name}: {e}"))
                    };
                    let mut r = (0..pairs / 10).try_for_each(|_| pair());
                    start.wait();
                    let t0 = Instant::now();
                    if r.is_ok() {
                        r = (0..pairs).try_for_each(|_| pair());
                    }
                    r.map(|()| (t0, Instant::now()))
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let spans = spans.into_iter().collect::<Result<Vec<_>, _>>()?;
    let t0 = spans.iter().map(|s| s.0).min();
    let t1 = spans.iter().map(|s| s.1).max();
    let secs = match (t0, t1) {
        (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    Ok(if secs > 0.0 {
        (pairs * threads as u64) as f64 / secs / 1e6
    } else {
        0.0
    })
}
