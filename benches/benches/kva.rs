//! Virtual-address allocation and free alone (no page tables): ours ([`KvaPeer`]: `Kva`
//! with a counting TLB flush, sharded and single-lock) against `range-alloc`,
//! `offset-allocator`, `free-list`, `vmem`, `buddy_system_allocator` and a `BTreeMap` first
//! fit, all over the same 1 TiB range at x86_64's `VMALLOC_START` (see `benches::peers`).
//!
//! Patterns, one criterion iteration = one alloc + one free per thread:
//! - `fixed`: allocate 2 pages (1 page + guard, what `vmalloc(4096)` asks of the KVA layer)
//!   and free them (`fix_size_alloc_test`);
//! - `random`: a ring of [`RING`] live areas of 1..=100 pages (+ guard); each iteration frees
//!   one random slot and refills it with a fresh random size (`random_size_alloc_test` with a
//!   standing population).
//!
//! `kva/1-thread`: the single-threaded adapters, no lock. `kva/threads`: the shareable
//! adapters (ours and `vmem` as they are, the others behind a parking_lot mutex) at every
//! count of [`bench_threads`] (1, 2 and the CPU count, or `KVMALLOC_BENCH_THREADS`, e.g.
//! `1,2,4,8,16`), threads created once per sample and released together ([`run_together`]);
//! the throughput is pairs per second over all threads, ids `fixed/<name>/<threads>`. Our `free` is `remove` + `free_lazy`, so the amortised cost of the lazy
//! purges (one flush and a merge per `lazy_max_pages` freed pages) is in our figures.
//!
//! Run: `cargo bench -p benches --bench kva`.

use std::hint::black_box;

use benches::bench_threads;
use benches::peers::{
    DEFAULT_SPAN, KvaPeer, PAGE, SharedVaAllocator, VaAllocator, XorShift, peers_shared,
    peers_single, run_together,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// Live areas in the `random` pattern's ring (per thread).
const RING: usize = 256;
/// Pre-drawn sizes for the `random` pattern (cycled), so drawing costs the same everywhere.
const SIZES: usize = 4096;

fn sizes(seed: u64) -> Vec<u64> {
    let mut rng = XorShift::new(seed);
    (0..SIZES).map(|_| (rng.range(1, 100) + 1) * PAGE).collect()
}

fn single_all() -> Vec<Box<dyn VaAllocator>> {
    let mut v: Vec<Box<dyn VaAllocator>> = Vec::new();
    match KvaPeer::sharded(DEFAULT_SPAN) {
        Ok(k) => v.push(Box::new(k)),
        Err(e) => eprintln!("kva: ours (sharded) unavailable: {e}"),
    }
    match KvaPeer::single_lock(DEFAULT_SPAN) {
        Ok(k) => v.push(Box::new(k)),
        Err(e) => eprintln!("kva: ours (single lock) unavailable: {e}"),
    }
    match peers_single(DEFAULT_SPAN, 1 << 16) {
        Ok(p) => v.extend(p),
        Err(e) => eprintln!("kva: peers unavailable: {e}"),
    }
    v
}

fn shared_all() -> Vec<Box<dyn SharedVaAllocator>> {
    let mut v: Vec<Box<dyn SharedVaAllocator>> = Vec::new();
    match KvaPeer::sharded(DEFAULT_SPAN) {
        Ok(k) => v.push(Box::new(k)),
        Err(e) => eprintln!("kva: ours (sharded) unavailable: {e}"),
    }
    match KvaPeer::single_lock(DEFAULT_SPAN) {
        Ok(k) => v.push(Box::new(k)),
        Err(e) => eprintln!("kva: ours (single lock) unavailable: {e}"),
    }
    match peers_shared(DEFAULT_SPAN, 1 << 16) {
        Ok(p) => v.extend(p),
        Err(e) => eprintln!("kva: peers unavailable: {e}"),
    }
    v
}

/// One fixed-size pair on a shared allocator.
fn fixed_pair(a: &dyn SharedVaAllocator) {
    let addr = a
        .alloc(2 * PAGE, PAGE)
        .unwrap_or_else(|| panic!("{}: out of space", a.name()));
    black_box(addr);
    if let Err(e) = a.free(addr, 2 * PAGE, PAGE) {
        panic!("{}: {e}", a.name());
    }
}

/// A ring of live random-size areas on a shared allocator, for one thread.
struct Ring {
    live: Vec<(u64, u64)>,
    sizes: Vec<u64>,
    next: usize,
    rng: XorShift,
}

impl Ring {
    fn fill(a: &dyn SharedVaAllocator, seed: u64) -> Ring {
        let sizes = sizes(seed);
        let live = (0..RING)
            .map(|i| {
                let s = sizes[i];
                (
                    a.alloc(s, PAGE)
                        .unwrap_or_else(|| panic!("{}: out of space", a.name())),
                    s,
                )
            })
            .collect();
        Ring {
            live,
            sizes,
            next: RING,
            rng: XorShift::new(seed ^ 0x5555),
        }
    }

    fn step(&mut self, a: &dyn SharedVaAllocator) {
        let slot = (self.rng.next_u64() % RING as u64) as usize;
        let (addr, size) = self.live[slot];
        if let Err(e) = a.free(addr, size, PAGE) {
            panic!("{}: {e}", a.name());
        }
        let s = self.sizes[self.next % SIZES];
        self.next += 1;
        let addr = a
            .alloc(s, PAGE)
            .unwrap_or_else(|| panic!("{}: out of space", a.name()));
        self.live[slot] = (addr, s);
    }

    fn drain(self, a: &dyn SharedVaAllocator) {
        for (addr, size) in self.live {
            if let Err(e) = a.free(addr, size, PAGE) {
                panic!("{}: {e}", a.name());
            }
        }
    }
}

fn bench_one_thread(c: &mut Criterion) {
    let mut g = c.benchmark_group("kva/1-thread");
    g.throughput(Throughput::Elements(1));
    for mut a in single_all() {
        let name = a.name();
        g.bench_function(BenchmarkId::new("fixed", name), |b| {
            b.iter(|| {
                let addr = a
                    .alloc(2 * PAGE, PAGE)
                    .unwrap_or_else(|| panic!("{name}: no space"));
                black_box(addr);
                if let Err(e) = a.free(addr, 2 * PAGE, PAGE) {
                    panic!("{name}: {e}");
                }
            })
        });
        a.settle();
        let sz = sizes(1);
        let mut live: Vec<(u64, u64)> = (0..RING)
            .map(|i| {
                (
                    a.alloc(sz[i], PAGE)
                        .unwrap_or_else(|| panic!("{name}: no space")),
                    sz[i],
                )
            })
            .collect();
        let mut rng = XorShift::new(99);
        let mut next = RING;
        g.bench_function(BenchmarkId::new("random", name), |b| {
            b.iter(|| {
                let slot = (rng.next_u64() % RING as u64) as usize;
                let (addr, size) = live[slot];
                if let Err(e) = a.free(addr, size, PAGE) {
                    panic!("{name}: {e}");
                }
                let s = sz[next % SIZES];
                next += 1;
                let addr = a
                    .alloc(s, PAGE)
                    .unwrap_or_else(|| panic!("{name}: no space"));
                live[slot] = (addr, s);
            })
        });
        for (addr, size) in live {
            if let Err(e) = a.free(addr, size, PAGE) {
                panic!("{name}: {e}");
            }
        }
    }
    g.finish();
}

fn bench_threads_group(c: &mut Criterion) {
    let mut g = c.benchmark_group("kva/threads");
    let counts = bench_threads();
    for a in shared_all() {
        let a: &dyn SharedVaAllocator = a.as_ref();
        for &t in &counts {
            g.throughput(Throughput::Elements(t as u64));
            g.bench_function(BenchmarkId::new(format!("fixed/{}", a.name()), t), |b| {
                b.iter_custom(|iters| {
                    run_together(t, |_| {
                        for _ in 0..iters {
                            fixed_pair(a);
                        }
                    })
                })
            });
        }
        a.settle();
        for &t in &counts {
            g.throughput(Throughput::Elements(t as u64));
            g.bench_function(BenchmarkId::new(format!("random/{}", a.name()), t), |b| {
                b.iter_custom(|iters| {
                    // Rings are filled before the clock starts and drained after it stops.
                    let rings: Vec<parking_lot::Mutex<Option<Ring>>> = (0..t)
                        .map(|i| parking_lot::Mutex::new(Some(Ring::fill(a, 11 + i as u64))))
                        .collect();
                    let dt = run_together(t, |i| {
                        let mut ring = rings[i].lock().take().expect("ring");
                        for _ in 0..iters {
                            ring.step(a);
                        }
                        *rings[i].lock() = Some(ring);
                    });
                    for r in rings {
                        if let Some(r) = r.into_inner() {
                            r.drain(a);
                        }
                    }
                    a.settle();
                    dt
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_one_thread, bench_threads_group);
criterion_main!(benches);
