//! The vfree-push / purge-drain pattern: N producers push items, one consumer repeatedly takes
//! everything there is and walks it (what `vfree` and `__purge_vmap_area_lazy` do with the
//! lazy list).
//!
//! Contenders, each with the same producer and consumer loops:
//! - `llist`: vmalloc's intrusive lock-free list (`add` per item, `del_all` + walk);
//! - `segqueue`: crossbeam's `SegQueue` (`push`; the consumer `pop`s until empty, having no
//!   "take all");
//! - `mutex-vec`: a parking_lot `Mutex<Vec<u64>>` (`lock + push`; the consumer swaps the
//!   vector out under the lock, its "take all", and walks it outside).
//!
//! One iteration is one push per producer; the throughput is items per second through the
//! whole pipe (the consumer must have seen every item before the clock stops). Threads are
//! created once per round (at most 2^20 pushes per producer, see [`ROUND`]) and released
//! together by a barrier ([`run_together`]); creation is not timed.
//!
//! Run: `cargo bench -p benches --bench llist`.

use std::hint::black_box;
use std::ptr::NonNull;

use benches::peers::run_together;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_queue::SegQueue;
use parking_lot::Mutex;
use vmalloc::internals::llist::{Intrusive, LlistHead, LlistNode};

/// A lazily freed "area": a payload and the link.
struct Item {
    value: u64,
    link: LlistNode,
}
vmalloc::impl_llist_intrusive!(Item, link);

/// The consumer's back-off when it finds nothing: let a producer run (2 cores are shared by
/// 2..3 threads here).
fn idle() {
    std::thread::yield_now();
}

/// Items per producer per round: the llist's nodes are preallocated, so a sample is cut into
/// rounds of at most this many pushes per producer (each round is timed on its own and the
/// times are summed) to keep memory flat whatever iteration count criterion picks.
const ROUND: u64 = 1 << 20;

/// Split `iters` into rounds of at most [`ROUND`] and sum `round(n)` over them.
fn in_rounds(iters: u64, mut round: impl FnMut(u64) -> std::time::Duration) -> std::time::Duration {
    let mut left = iters;
    let mut total = std::time::Duration::ZERO;
    while left > 0 {
        let n = left.min(ROUND);
        total += round(n);
        left -= n;
    }
    total
}

/// `producers` threads push `iters` items each into an llist; one consumer drains.
fn llist_round(producers: usize, iters: u64) -> std::time::Duration {
    // Each producer's items live in its own Vec, created before the clock starts and
    // outliving every list operation (every round's threads are joined before the next round
    // and before the pools drop; the consumer has taken every item off the list by then).
    let mut pools: Vec<Vec<Item>> = (0..producers)
        .map(|p| {
            (0..iters.min(ROUND))
                .map(|i| Item {
                    value: (p as u64) << 40 | i,
                    link: LlistNode::new(),
                })
                .collect()
        })
        .collect();
    let bases: Vec<usize> = pools.iter_mut().map(|v| v.as_mut_ptr() as usize).collect();
    let dt = in_rounds(iters, |n| {
        let head = LlistHead::new();
        let total = producers as u64 * n;
        run_together(producers + 1, |t| {
            if t < producers {
                let base = bases[t] as *mut Item;
                for i in 0..n as usize {
                    // SAFETY: `base..base + n` lies in this producer's own Vec, alive until
                    // after the threads are joined; each item is pushed once per round and is
                    // on no list (the previous round's consumer took everything off).
                    let item = unsafe { NonNull::new_unchecked(base.add(i)) };
                    // SAFETY: the item stays live (see above) and is on no list or chain.
                    unsafe { head.add(Item::to_node(item)) };
                }
            } else {
                let mut seen = 0u64;
                let mut sum = 0u64;
                while seen < total {
                    let chain = head.del_all();
                    if chain.is_empty() {
                        idle();
                        continue;
                    }
                    for node in chain {
                        // SAFETY: every node on the list came from `Item::to_node` and its
                        // item is alive (the pools outlive the threads).
                        let item = unsafe { Item::from_node(node) };
                        // SAFETY: as above; the producer's write of `value` happened before
                        // its Release push and `del_all` acquired the head.
                        sum = sum.wrapping_add(unsafe { item.as_ref() }.value);
                        seen += 1;
                    }
                }
                black_box(sum);
            }
        })
    });
    drop(pools);
    dt
}

fn segqueue_round(producers: usize, iters: u64) -> std::time::Duration {
    in_rounds(iters, |n| segqueue_once(producers, n))
}

fn segqueue_once(producers: usize, iters: u64) -> std::time::Duration {
    let q = SegQueue::new();
    let total = producers as u64 * iters;
    run_together(producers + 1, |t| {
        if t < producers {
            for i in 0..iters {
                q.push((t as u64) << 40 | i);
            }
        } else {
            let mut seen = 0u64;
            let mut sum = 0u64;
            while seen < total {
                let mut got = false;
                while let Some(v) = q.pop() {
                    sum = sum.wrapping_add(v);
                    seen += 1;
                    got = true;
                }
                if !got {
                    idle();
                }
            }
            black_box(sum);
        }
    })
}

fn mutex_vec_round(producers: usize, iters: u64) -> std::time::Duration {
    in_rounds(iters, |n| mutex_vec_once(producers, n))
}

fn mutex_vec_once(producers: usize, iters: u64) -> std::time::Duration {
    let q: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let total = producers as u64 * iters;
    run_together(producers + 1, |t| {
        if t < producers {
            for i in 0..iters {
                q.lock().push((t as u64) << 40 | i);
            }
        } else {
            let mut seen = 0u64;
            let mut sum = 0u64;
            let mut spare: Vec<u64> = Vec::new();
            while seen < total {
                std::mem::swap(&mut *q.lock(), &mut spare);
                if spare.is_empty() {
                    idle();
                    continue;
                }
                for v in spare.drain(..) {
                    sum = sum.wrapping_add(v);
                    seen += 1;
                }
            }
            black_box(sum);
        }
    })
}

fn bench_llist(c: &mut Criterion) {
    let mut g = c.benchmark_group("llist");
    for producers in [1usize, 2] {
        g.throughput(Throughput::Elements(producers as u64));
        g.bench_with_input(BenchmarkId::new("llist", producers), &producers, |b, &p| {
            b.iter_custom(|iters| llist_round(p, iters))
        });
        g.bench_with_input(
            BenchmarkId::new("segqueue", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| segqueue_round(p, iters)),
        );
        g.bench_with_input(
            BenchmarkId::new("mutex-vec", producers),
            &producers,
            |b, &p| b.iter_custom(|iters| mutex_vec_round(p, iters)),
        );
    }
    g.finish();
}

criterion_group!(benches, bench_llist);
criterion_main!(benches);
