//! `pair`: N one-page `vmalloc` + `vfree` pairs per thread on a `Vmalloc` built like the
//! runner's `sharded` instance (x86_64 range, one shard per CPU slot, Linux's lazy threshold,
//! background purge workers), for profiling the fast path (`valgrind --tool=callgrind`) and
//! timing it.
//!
//! ```text
//! cargo run --release -p benches --example pair -- [--pairs N] [--threads T]
//!     [--tlb counting|model] [--arena mmap|heap] [--warmup N] [--purge background|sync]
//!     [--platform hosted|spin]
//! ```
//!
//! `--purge sync` builds the instance with `PurgeMode::Synchronous` (the freeing thread that
//! crosses the threshold purges): what `valgrind --tool=callgrind` should count, since under
//! valgrind's serialised threads a purge worker runs late and the lazy batches overflow.
//!
//! `--platform spin` (only in a build with `--features spin-peer`) builds the same instance over
//! `benches::peers::SpinPlatform`: `pagetable`'s `RawSpinlock`, the lock a kernel plugs in
//! (acquire one read-modify-write, release one `Release` store), instead of the hosted
//! platform's parking_lot mutex (whose release is a compare-exchange too). Same frames, TLB,
//! purge mode and CPU ids: what the pair costs with a kernel's kind of lock.
//!
//! Each thread pins itself to CPU slot `i` (`pagetable::cpu::set_this_cpu`), runs `--warmup`
//! pairs (default 10% of N), waits for the others at a barrier, then runs N timed pairs.
//! Printed: wall-clock ns per pair per thread, aggregate pairs/s, and the threads' on-CPU time
//! per pair (from `/proc/thread-self/schedstat`, when readable).

use std::sync::{Arc, Barrier};
use std::time::Instant;

use pagetable::platform::Platform;
use vmalloc::{TlbChoice, Vmalloc, VmallocConfig};

/// Command line.
struct Args {
    pairs: u64,
    threads: usize,
    model: bool,
    heap: bool,
    warmup: Option<u64>,
    sync: bool,
    spin: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        pairs: 1_000_000,
        threads: 1,
        model: false,
        heap: false,
        warmup: None,
        sync: false,
        spin: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--pairs" => a.pairs = val()?.parse().map_err(|e| format!("--pairs: {e}"))?,
            "--threads" => a.threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--warmup" => {
                a.warmup = Some(val()?.parse().map_err(|e| format!("--warmup: {e}"))?);
            }
            "--tlb" => {
                a.model = match val()?.as_str() {
                    "model" => true,
                    "counting" => false,
                    v => return Err(format!("--tlb: {v}: want counting or model")),
                }
            }
            "--purge" => {
                a.sync = match val()?.as_str() {
                    "sync" => true,
                    "background" => false,
                    v => return Err(format!("--purge: {v}: want background or sync")),
                }
            }
            "--platform" => {
                a.spin = match val()?.as_str() {
                    "spin" if cfg!(feature = "spin-peer") => true,
                    "spin" => return Err("--platform spin: build with --features spin-peer".into()),
                    "hosted" => false,
                    v => return Err(format!("--platform: {v}: want hosted or spin")),
                }
            }
            "--arena" => {
                a.heap = match val()?.as_str() {
                    "heap" => true,
                    "mmap" => false,
                    v => return Err(format!("--arena: {v}: want mmap or heap")),
                }
            }
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    Ok(a)
}

/// On-CPU nanoseconds of the calling thread (first field of `schedstat`), if readable.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Voluntary and involuntary context switches of the calling thread so far, if readable.
fn thread_ctxt_switches() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    let field = |name: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    Some((
        field("voluntary_ctxt_switches:")?,
        field("nonvoluntary_ctxt_switches:")?,
    ))
}

/// The calling thread's id (from the `/proc/thread-self` link), if readable.
fn thread_id() -> Option<u64> {
    let l = std::fs::read_link("/proc/thread-self").ok()?;
    l.file_name()?.to_str()?.parse().ok()
}

/// On-CPU nanoseconds of every thread of the process, by thread id.
fn tasks_cpu_ns() -> std::collections::HashMap<u64, u64> {
    let mut m = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return m;
    };
    for e in dir.flatten() {
        let tid = e.file_name().to_str().and_then(|t| t.parse().ok());
        let ns = std::fs::read_to_string(e.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        if let (Some(tid), Some(ns)) = (tid, ns) {
            m.insert(tid, ns);
        }
    }
    m
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pair: {e}");
            std::process::exit(2);
        }
    };
    let mut cfg = VmallocConfig::default();
    cfg.arena.size = 1 << 30;
    if args.heap {
        cfg.arena.backing = pagetable::Backing::Heap;
    }
    if args.sync {
        cfg.kva.purge_mode = vmalloc::PurgeMode::Synchronous;
    }
    cfg.tlb = if args.model {
        TlbChoice::Model
    } else {
        TlbChoice::Counting
    };
    #[cfg(feature = "spin-peer")]
    let built = if args.spin {
        spin_instance(cfg).map(|v| run(&args, Arc::new(v)))
    } else {
        Vmalloc::new(cfg).map(|v| run(&args, Arc::new(v)))
    };
    // Without the feature `parse` refuses `--platform spin`.
    #[cfg(not(feature = "spin-peer"))]
    let built = Vmalloc::new(cfg).map(|v| run(&args, Arc::new(v)));
    if let Err(e) = built {
        eprintln!("pair: building the instance: {e}");
        std::process::exit(1);
    }
}

/// `cfg`'s instance over [`benches::peers::SpinPlatform`] (`--platform spin`).
#[cfg(feature = "spin-peer")]
fn spin_instance(
    cfg: VmallocConfig,
) -> Result<Vmalloc<benches::peers::SpinPlatform>, vmalloc::VmallocError> {
    let arena = Arc::new(pagetable::PhysArena::new(cfg.arena)?);
    let frames = Arc::new(pagetable::FrameAllocator::with_platform(arena, cfg.frames));
    Vmalloc::with_platform(cfg.kva, &cfg.early, frames, cfg.tlb, None)
}

/// Run the pairs on `args.threads` threads and print the figures.
fn run<P: Platform>(args: &Args, vm: Arc<Vmalloc<P>>) {
    let warmup = args.warmup.unwrap_or(args.pairs / 10);
    let barrier = Arc::new(Barrier::new(args.threads + 1));
    let end = Arc::new(Barrier::new(args.threads + 1));
    let handles: Vec<_> = (0..args.threads)
        .map(|i| {
            let vm = Arc::clone(&vm);
            let barrier = Arc::clone(&barrier);
            let end = Arc::clone(&end);
            let pairs = args.pairs;
            std::thread::spawn(move || {
                pagetable::cpu::set_this_cpu(i);
                for _ in 0..warmup {
                    let a = vm.vmalloc(4096).expect("vmalloc");
                    vm.vfree(a).expect("vfree");
                }
                barrier.wait();
                let cpu0 = thread_cpu_ns();
                let cs0 = thread_ctxt_switches();
                let t0 = Instant::now();
                for _ in 0..pairs {
                    let a = vm.vmalloc(4096).expect("vmalloc");
                    vm.vfree(a).expect("vfree");
                }
                let wall = t0.elapsed();
                let cpu = thread_cpu_ns().zip(cpu0).map(|(b, a)| b - a);
                let cs = thread_ctxt_switches()
                    .zip(cs0)
                    .map(|(b, a)| (b.0 - a.0, b.1 - a.1));
                // Stay alive until the main thread has read every thread's CPU time.
                end.wait();
                (wall, cpu, cs, thread_id())
            })
        })
        .collect();
    barrier.wait();
    let others0 = tasks_cpu_ns();
    let t0 = Instant::now();
    end.wait();
    let others1 = tasks_cpu_ns();
    let res: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("worker panicked"))
        .collect();
    let wall = t0.elapsed();
    let total = args.pairs * args.threads as u64;
    // CPU time of the threads other than the pair threads and this one (the purge workers),
    // over the timed part (from the start barrier to the last pair thread's end).
    let skip: Vec<u64> = res.iter().filter_map(|r| r.3).chain(thread_id()).collect();
    let others: u64 = others1
        .iter()
        .filter(|(t, _)| !skip.contains(t))
        .map(|(t, b)| b - others0.get(t).copied().unwrap_or(0))
        .sum();
    for (i, (w, cpu, cs, _)) in res.iter().enumerate() {
        let ns = w.as_nanos() as f64 / args.pairs as f64;
        let cpu = cpu.map_or(String::new(), |c| {
            format!(", {:.1} ns/pair cpu", c as f64 / args.pairs as f64)
        });
        let cs = cs.map_or(String::new(), |(v, n)| {
            format!(", context switches {v} voluntary {n} involuntary")
        });
        println!("thread {i}: {ns:.1} ns/pair wall{cpu}{cs}");
    }
    println!(
        "other threads (purge workers): {:.1} ns/pair cpu",
        others as f64 / total as f64
    );
    let ks = vm.kva().stats();
    println!(
        "purges {} ({} areas, {} to caches), kicks {}, purge requests {}, lazy pages now {}",
        ks.purges, ks.purged_areas, ks.purged_to_caches, ks.kicks, ks.purge_requests, ks.lazy_pages
    );
    println!(
        "threads {} tlb {} arena {}: {} pairs in {:.3} s = {:.3} Mpairs/s",
        args.threads,
        if args.model { "model" } else { "counting" },
        if args.heap { "heap" } else { "mmap" },
        total,
        wall.as_secs_f64(),
        total as f64 / wall.as_secs_f64() / 1e6
    );
}
