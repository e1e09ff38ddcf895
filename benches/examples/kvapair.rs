//! `kvapair`: the `kva` benchmark's patterns (VA allocation + free alone, no page tables) on
//! any allocator of `benches::peers`, for profiling (`valgrind --tool=callgrind`) and for
//! scaling runs outside criterion.
//!
//! ```text
//! cargo run --release -p benches --example kvapair -- [--alloc NAME] [--pattern fixed|random]
//!     [--pairs N] [--threads T] [--warmup N] [--locked] [--floor]
//! ```
//!
//! `NAME` is `kva` (ours, default configuration), `kva-sync` (ours, the purges run by the
//! freeing thread, `PurgeMode::Synchronous`: what callgrind should count, since a purge
//! worker's timing moves work between the purge and the overflow path), `kva-single-lock`,
//! `range-alloc`,
//! `offset-allocator`, `free-list`, `vmem`, `buddy_system_allocator` or `btreemap-first-fit`;
//! several may be given separated by commas, each runs in turn on a fresh instance. With one
//! thread the peers run unlocked (as in `kva/1-thread`); with more, behind a parking_lot
//! mutex (`vmem` and ours lock themselves), as in the threaded groups of the `kva` bench.
//! `--locked` puts the peers behind that mutex at one thread too: what sharing them between
//! CPUs costs when no other CPU is there (the `kva/threads` group at 1 thread).
//!
//! `--floor` first runs the same pattern over no allocator at all (a bump counter, frees
//! ignored), three times: bare (the harness alone), with one uncontended parking_lot
//! lock/unlock pair around each operation, and with one `RawSpinlock` pair (a kernel's kind
//! of lock). The differences are what a lock per operation costs by itself: the floor under
//! any allocator that takes one, ours included, whatever it does inside.
//!
//! `fixed`: allocate 2 pages (1 page + guard) and free them. `random`: each thread keeps a
//! ring of 256 live areas of 2..=101 pages and replaces a random one per pair (the `kva`
//! bench's pattern). Thread `i` is pinned to CPU slot `i`. Printed per allocator: ns per pair
//! per thread (wall) and M pairs/s over all threads.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use benches::by_name::{shared, single};
use benches::peers::{PAGE, SharedVaAllocator, XorShift};

/// Live areas per thread in the `random` pattern.
const RING: usize = 256;
/// Pre-drawn sizes, cycled.
const SIZES: usize = 4096;

struct Args {
    allocs: Vec<String>,
    random: bool,
    pairs: u64,
    threads: usize,
    warmup: Option<u64>,
    locked: bool,
    floor: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        allocs: vec!["kva".into()],
        random: false,
        pairs: 1_000_000,
        threads: 1,
        warmup: None,
        locked: false,
        floor: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{k} needs a value"));
        match k.as_str() {
            "--alloc" => a.allocs = val()?.split(',').map(str::to_owned).collect(),
            "--pattern" => {
                a.random = match val()?.as_str() {
                    "random" => true,
                    "fixed" => false,
                    v => return Err(format!("--pattern: {v}: want fixed or random")),
                }
            }
            "--pairs" => a.pairs = val()?.parse().map_err(|e| format!("--pairs: {e}"))?,
            "--threads" => a.threads = val()?.parse().map_err(|e| format!("--threads: {e}"))?,
            "--warmup" => a.warmup = Some(val()?.parse().map_err(|e| format!("--warmup: {e}"))?),
            "--locked" => a.locked = true,
            "--floor" => a.floor = true,
            "--help" | "-h" => {
                return Err(
                    "usage: kvapair [--alloc NAME[,NAME..]] [--pattern fixed|random] \
                            [--pairs N] [--threads T] [--warmup N] [--locked] [--floor]"
                        .into(),
                );
            }
            _ => return Err(format!("unknown argument {k}")),
        }
    }
    if a.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    Ok(a)
}

/// One thread's state for either pattern, over any `alloc`/`free` pair of closures.
struct Pattern {
    ring: Vec<(u64, u64)>,
    sizes: Vec<u64>,
    next: usize,
    rng: XorShift,
    random: bool,
}

impl Pattern {
    fn new(random: bool, seed: u64) -> Self {
        let mut rng = XorShift::new(seed);
        Self {
            ring: Vec::new(),
            sizes: (0..SIZES).map(|_| (rng.range(1, 100) + 1) * PAGE).collect(),
            next: 0,
            rng: XorShift::new(seed ^ 0x5555),
            random,
        }
    }

    fn fill(&mut self, alloc: &mut dyn FnMut(u64) -> u64) {
        if self.random {
            for i in 0..RING {
                let s = self.sizes[i];
                self.ring.push((alloc(s), s));
            }
            self.next = RING;
        }
    }

    #[inline]
    fn step(&mut self, alloc: &mut dyn FnMut(u64) -> u64, free: &mut dyn FnMut(u64, u64)) {
        if !self.random {
            let a = alloc(2 * PAGE);
            std::hint::black_box(a);
            free(a, 2 * PAGE);
            return;
        }
        let slot = (self.rng.next_u64() % RING as u64) as usize;
        let (addr, size) = self.ring[slot];
        free(addr, size);
        let s = self.sizes[self.next % SIZES];
        self.next += 1;
        self.ring[slot] = (alloc(s), s);
    }

    /// Fill, run `warmup` steps, then time `pairs` steps. (Always inlined, as the loops
    /// were when written out in each caller: the closures stay visible to the compiler.)
    #[inline(always)]
    fn run(
        &mut self,
        alloc: &mut dyn FnMut(u64) -> u64,
        free: &mut dyn FnMut(u64, u64),
        warmup: u64,
        pairs: u64,
    ) -> Duration {
        self.fill(alloc);
        for _ in 0..warmup {
            self.step(alloc, free);
        }
        let t0 = Instant::now();
        for _ in 0..pairs {
            self.step(alloc, free);
        }
        t0.elapsed()
    }

    fn drain(&mut self, free: &mut dyn FnMut(u64, u64)) {
        for (a, s) in self.ring.drain(..) {
            free(a, s);
        }
    }
}

fn run_single(name: &str, args: &Args, warmup: u64) -> Result<Duration, String> {
    let mut a = single(name)?;
    let mut p = Pattern::new(args.random, 1);
    let a = &mut *a;
    let cell = std::cell::RefCell::new(a);
    let mut alloc = |s: u64| {
        cell.borrow_mut()
            .alloc(s, PAGE)
            .unwrap_or_else(|| panic!("{name}: no space"))
    };
    let mut free = |x: u64, s: u64| {
        cell.borrow_mut()
            .free(x, s, PAGE)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let dt = p.run(&mut alloc, &mut free, warmup, args.pairs);
    p.drain(&mut free);
    if let Some(c) = cell.borrow().counters() {
        eprintln!("{name}: {c}");
    }
    Ok(dt)
}

fn run_shared(name: &str, args: &Args, warmup: u64) -> Result<Duration, String> {
    let a = shared(name)?;
    let a: &dyn SharedVaAllocator = a.as_ref();
    let start = Barrier::new(args.threads);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..args.threads)
            .map(|i| {
                let start = &start;
                s.spawn(move || {
                    pagetable::cpu::set_this_cpu(i);
                    let mut p = Pattern::new(args.random, 1 + i as u64);
                    let mut alloc = |s: u64| {
                        a.alloc(s, PAGE)
                            .unwrap_or_else(|| panic!("{name}: no space"))
                    };
                    let mut free = |x: u64, s: u64| {
                        a.free(x, s, PAGE).unwrap_or_else(|e| panic!("{name}: {e}"))
                    };
                    p.fill(&mut alloc);
                    for _ in 0..warmup {
                        p.step(&mut alloc, &mut free);
                    }
                    start.wait();
                    let t0 = Instant::now();
                    for _ in 0..args.pairs {
                        p.step(&mut alloc, &mut free);
                    }
                    let t1 = Instant::now();
                    p.drain(&mut free);
                    (t0, t1)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let t0 = spans.iter().map(|s| s.0).min();
    let t1 = spans.iter().map(|s| s.1).max();
    Ok(match (t0, t1) {
        (Some(a), Some(b)) => b.duration_since(a),
        _ => Duration::ZERO,
    })
}

/// What `--floor` wraps around each operation of the bump counter.
#[derive(Clone, Copy)]
enum Floor {
    /// Nothing: the harness alone.
    Bare,
    /// One uncontended parking_lot lock/unlock pair (the hosted platform's lock, `Locked`'s).
    ParkingLot,
    /// One uncontended `pagetable::platform::RawSpinlock` pair (unlock is one store).
    Spin,
}

impl Floor {
    fn name(self) -> &'static str {
        match self {
            Floor::Bare => "floor: harness",
            Floor::ParkingLot => "floor: + parking_lot",
            Floor::Spin => "floor: + spinlock",
        }
    }
}

/// The pattern over a bump counter instead of an allocator (addresses never reused, frees
/// only read), each operation inside `lock`'s critical section: see `--floor`.
fn run_floor(lock: Floor, args: &Args, warmup: u64) -> Duration {
    type Spin = parking_lot::lock_api::Mutex<pagetable::platform::RawSpinlock, u64>;
    let pl = parking_lot::Mutex::new(0u64);
    let spin = Spin::new(0);
    let mut bare = 0u64;
    let mut p = Pattern::new(args.random, 1);
    let bump = |next: &mut u64, s: u64| {
        *next += s;
        *next
    };
    let mut alloc = |s: u64| match lock {
        Floor::Bare => bump(&mut bare, s),
        Floor::ParkingLot => bump(&mut pl.lock(), s),
        Floor::Spin => bump(&mut spin.lock(), s),
    };
    let mut free = |x: u64, _s: u64| match lock {
        Floor::Bare => {
            std::hint::black_box(x);
        }
        Floor::ParkingLot => {
            std::hint::black_box((*pl.lock(), x));
        }
        Floor::Spin => {
            std::hint::black_box((*spin.lock(), x));
        }
    };
    p.run(&mut alloc, &mut free, warmup, args.pairs)
}

/// One result line.
fn report(name: &str, args: &Args, threads: usize, dt: Duration) {
    let total = args.pairs * threads as u64;
    println!(
        "{name:<24} {} threads {:>2}: {:8.1} ns/pair/thread {:8.3} Mpairs/s",
        if args.random { "random" } else { "fixed " },
        threads,
        dt.as_nanos() as f64 / args.pairs as f64,
        total as f64 / dt.as_secs_f64() / 1e6
    );
}

fn main() {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("kvapair: {e}");
            std::process::exit(2);
        }
    };
    let warmup = args.warmup.unwrap_or(args.pairs / 10);
    if args.floor {
        for lock in [Floor::Bare, Floor::ParkingLot, Floor::Spin] {
            report(lock.name(), &args, 1, run_floor(lock, &args, warmup));
        }
    }
    for name in &args.allocs {
        let r = if args.threads == 1 && !args.locked {
            run_single(name, &args, warmup)
        } else {
            run_shared(name, &args, warmup)
        };
        match r {
            Ok(dt) => report(name, &args, args.threads, dt),
            Err(e) => {
                eprintln!("kvapair: {e}");
                std::process::exit(1);
            }
        }
    }
}
