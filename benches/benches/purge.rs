//! Lazy against eager freeing: how many TLB flushes (and flushed pages) a million `vfree`s
//! cost, and what a 1-page alloc + free pair costs in time.
//!
//! Variants, all on one thread, 1-page areas + guard (2 pages of VA, 1 page unmapped per
//! free), the flushes counted by a `CountingFlush`:
//! - `lazy`: our `Kva` as configured by default (Linux's `lazy_max_pages`, background purge
//!   workers): `remove` + `free_lazy`, one flush per purge of the union range;
//! - `eager`: the same `Kva` with `lazy_max_pages = 1` and synchronous purges, so every free
//!   crosses the threshold and purges (= flushes) at once: flush-per-free, what a kernel
//!   without lazy freeing does;
//! - `legacy`: seed 003's KVA part (Linux 3.x lazy purge under one lock), for reference;
//! - `vmalloc/<impl>`: the whole `vmalloc(4096)` + `vfree` path of each [`VmallocImpl`]
//!   (page tables, frames), its flush counters from [`VmallocImpl::stats`].
//!
//! Counting: a fresh instance runs exactly [`FREES`] pairs, then one final synchronous purge
//! (so every freed page has been flushed); the counters are printed as a table on stderr and
//! written to `$CARGO_TARGET_DIR/criterion/purge-counts.md` (default `target/`).
//! Timing: criterion measures one pair per iteration on a long-lived instance.
//!
//! Run: `cargo bench -p benches --bench purge`.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use benches::peers::{KvaPeer, LegacyKvaPeer, PAGE, SharedVaAllocator};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pagetable::TlbStats;
use vmalloc_impls::{AllocatorKind, ImplConfig};

/// Frees per counting run.
const FREES: u64 = 1_000_000;
/// VA span of the KVA-level variants.
const SPAN: u64 = 1 << 40;

/// One counting result.
struct Counts {
    name: String,
    flushes: u64,
    full_flushes: u64,
    pages_flushed: u64,
    purges: u64,
    secs: f64,
}

fn lazy() -> Result<KvaPeer, vmalloc::VmallocError> {
    KvaPeer::with_config("lazy", SPAN, vmalloc::KvaConfig::default())
}

fn eager() -> Result<KvaPeer, vmalloc::VmallocError> {
    let cfg = vmalloc::KvaConfig {
        lazy_max_pages: Some(1),
        purge_mode: vmalloc::PurgeMode::Synchronous,
        ..vmalloc::KvaConfig::default()
    };
    KvaPeer::with_config("eager", SPAN, cfg)
}

/// One pair on a KVA-level allocator: 2 pages of VA, the data page "unmapped" on free.
fn kva_pair(k: &KvaPeer) {
    let info = vmalloc::AreaInfo::new(vmalloc::VmFlags::ALLOC);
    let (start, end) = k.kva().range();
    let addr = match k.kva().alloc(2 * PAGE, PAGE, start, end, None, info) {
        Ok(a) => a,
        Err(e) => panic!("{}: alloc: {e}", SharedVaAllocator::name(k)),
    };
    black_box(addr);
    match k.kva().remove(addr) {
        Ok(area) => k.kva().free_lazy(area, 1),
        Err(e) => panic!("{}: remove({addr:#x}): {e}", SharedVaAllocator::name(k)),
    }
}

fn count_kva(k: &KvaPeer) -> Counts {
    let t0 = Instant::now();
    for _ in 0..FREES {
        kva_pair(k);
    }
    let report = k.kva().purge();
    black_box(report);
    let secs = t0.elapsed().as_secs_f64();
    let t: TlbStats = k.tlb_stats();
    Counts {
        name: format!("kva {}", SharedVaAllocator::name(k)),
        flushes: t.flushes,
        full_flushes: t.full_flushes,
        pages_flushed: t.pages_flushed,
        purges: k.kva().stats().purges,
        secs,
    }
}

fn count_legacy() -> Counts {
    let l = LegacyKvaPeer::new(SPAN);
    let t0 = Instant::now();
    for _ in 0..FREES {
        let addr = SharedVaAllocator::alloc(&l, 2 * PAGE, PAGE).expect("legacy: no space");
        SharedVaAllocator::free(&l, addr, 2 * PAGE, PAGE).expect("legacy: free");
    }
    SharedVaAllocator::settle(&l);
    let secs = t0.elapsed().as_secs_f64();
    let t = l.tlb_stats();
    Counts {
        name: "legacy (seed 003 KVA)".into(),
        flushes: t.flushes,
        full_flushes: t.full_flushes,
        pages_flushed: t.pages_flushed,
        purges: l.stats().purges,
        secs,
    }
}

fn count_vmalloc(kind: AllocatorKind) -> Option<Counts> {
    let imp = match kind.build(&ImplConfig::default()) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("purge: vmalloc/{kind} unavailable: {e}");
            return None;
        }
    };
    let before = imp.stats();
    let t0 = Instant::now();
    for _ in 0..FREES {
        let addr = imp
            .vmalloc(PAGE)
            .unwrap_or_else(|e| panic!("{kind}: vmalloc: {e}"));
        imp.vfree(addr)
            .unwrap_or_else(|e| panic!("{kind}: vfree: {e}"));
    }
    imp.purge();
    let secs = t0.elapsed().as_secs_f64();
    let s = imp.stats();
    Some(Counts {
        name: format!("vmalloc/{kind}"),
        flushes: s.tlb_flushes - before.tlb_flushes,
        full_flushes: s.full_flushes - before.full_flushes,
        pages_flushed: s.pages_flushed - before.pages_flushed,
        purges: s.purges - before.purges,
        secs,
    })
}

/// The counting runs, printed and written out once per process.
fn counting() {
    let mut rows: Vec<Counts> = Vec::new();
    match lazy() {
        Ok(k) => rows.push(count_kva(&k)),
        Err(e) => eprintln!("purge: lazy kva unavailable: {e}"),
    }
    match eager() {
        Ok(k) => rows.push(count_kva(&k)),
        Err(e) => eprintln!("purge: eager kva unavailable: {e}"),
    }
    rows.push(count_legacy());
    for kind in AllocatorKind::ALL {
        rows.extend(count_vmalloc(kind));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| variant | vfrees | TLB flushes | of which full | pages flushed (range flushes) | \
         purges | flushes per freed page | wall time (s) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.3e} | {:.2} |",
            r.name,
            FREES,
            r.flushes,
            r.full_flushes,
            r.pages_flushed,
            r.purges,
            r.flushes as f64 / FREES as f64,
            r.secs
        );
    }
    let lazy_row = rows.iter().find(|r| r.name == "kva lazy");
    let eager_row = rows.iter().find(|r| r.name == "kva eager");
    if let (Some(l), Some(e)) = (lazy_row, eager_row) {
        let _ = writeln!(
            out,
            "\neager / lazy flushes: {} / {} = {:.0}x fewer flushes when lazy",
            e.flushes,
            l.flushes,
            e.flushes as f64 / (l.flushes.max(1)) as f64
        );
    }
    eprintln!("\npurge: counts per {FREES} vfrees (1-page areas + guard)\n{out}");
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("target"))
        .join("criterion");
    if std::fs::create_dir_all(&dir).is_ok() {
        let path = dir.join("purge-counts.md");
        match std::fs::write(&path, &out) {
            Ok(()) => eprintln!("purge: counts written to {}", path.display()),
            Err(e) => eprintln!("purge: could not write {}: {e}", path.display()),
        }
    }
}

fn bench_purge(c: &mut Criterion) {
    counting();
    let mut g = c.benchmark_group("purge");
    g.throughput(Throughput::Elements(1));
    for k in [lazy(), eager()].into_iter().flatten() {
        g.bench_function(
            BenchmarkId::new("kva-pair", SharedVaAllocator::name(&k)),
            |b| b.iter(|| kva_pair(&k)),
        );
    }
    let l = LegacyKvaPeer::new(SPAN);
    g.bench_function(BenchmarkId::new("kva-pair", "legacy"), |b| {
        b.iter(|| {
            let addr = SharedVaAllocator::alloc(&l, 2 * PAGE, PAGE).expect("legacy: no space");
            SharedVaAllocator::free(&l, addr, 2 * PAGE, PAGE).expect("legacy: free");
        })
    });
    g.finish();
}

criterion_group!(benches, bench_purge);
criterion_main!(benches);
