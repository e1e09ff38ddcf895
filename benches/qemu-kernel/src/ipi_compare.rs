//! Lazy against eager freeing, counted in shootdowns: the same workload on every online CPU
//! at once (`loops` iterations each of `random_size_alloc_test`'s body: 1..=100 pages,
//! store, free), once with vmalloc's lazy `vfree` and once freeing eagerly, each `vfree`
//! followed by `purge_vmap_area_lazy()` (the flush-per-unmap behaviour lazy freeing
//! replaced). What each run cost in flushes and in IPI rounds is read off the kernel's TLB
//! counters. The lazy run must need at least ten times fewer shootdown rounds (fewer flushes
//! on one CPU, where there is nobody to interrupt).

use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use pagetable::PAGE_SIZE;
use vmalloc::Vmalloc;

use crate::platform::Kernel;
use crate::rng::Rng;
use crate::tlb::{KernelTlb, ShootdownStats};
use crate::{sched, time};

/// One run's cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    /// TLB flushes requested.
    pub flushes: u64,
    /// Shootdown IPI rounds.
    pub rounds: u64,
    /// IPIs sent.
    pub ipis: u64,
    /// Wall time, µs.
    pub usec: u64,
    /// Failed operations.
    pub errors: u64,
}

/// The two runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Comparison {
    /// Lazy `vfree`.
    pub lazy: Cost,
    /// `vfree` + purge.
    pub eager: Cost,
    /// CPUs that ran the workload.
    pub cpus: usize,
}

impl Comparison {
    /// Lazy needs at least 10x fewer shootdown rounds (flushes with one CPU), and nothing
    /// failed.
    pub fn ok(&self) -> bool {
        let (lazy, eager) = if self.cpus > 1 {
            (self.lazy.rounds, self.eager.rounds)
        } else {
            (self.lazy.flushes, self.eager.flushes)
        };
        self.lazy.errors == 0 && self.eager.errors == 0 && eager > 0 && lazy * 10 <= eager
    }
}

fn workload(vm: &Vmalloc<Kernel>, seed: u64, loops: u32, eager: bool) -> u64 {
    let mut rng = Rng::new(seed, crate::percpu::this_cpu() as u64);
    let mut errors = 0;
    for _ in 0..loops {
        let n = u64::from(rng.inclusive(1, 100));
        match vm.vmalloc(n * PAGE_SIZE) {
            Ok(p) => {
                // SAFETY: `p` is a fresh writable area of `n` pages owned by this loop.
                unsafe { (p.as_u64() as *mut u8).write_volatile(1) };
                if vm.vfree(p).is_err() {
                    errors += 1;
                }
                if eager {
                    vm.purge_vmap_area_lazy();
                }
            }
            Err(_) => errors += 1,
        }
        sched::preempt_point();
    }
    errors
}

fn run_once(
    vm: &'static Vmalloc<Kernel>,
    tlb: &KernelTlb,
    cpus: usize,
    seed: u64,
    loops: u32,
    eager: bool,
) -> Cost {
    // Start from nothing lazy, so each run pays for its own frees only.
    vm.purge_vmap_area_lazy();
    let before: ShootdownStats = tlb.shootdown_stats();
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = time::now_usec();
    for c in 1..cpus {
        let errors = errors.clone();
        sched::run_on(
            c,
            alloc::boxed::Box::new(move || {
                errors.fetch_add(workload(vm, seed, loops, eager), Ordering::Relaxed);
            }),
        );
    }
    errors.fetch_add(workload(vm, seed, loops, eager), Ordering::Relaxed);
    for c in 1..cpus {
        sched::wait_for(c);
    }
    // What the lazy run left behind is flushed too: it belongs to its cost.
    vm.purge_vmap_area_lazy();
    let usec = time::now_usec() - t0;
    let after = tlb.shootdown_stats();
    Cost {
        flushes: after.tlb.flushes - before.tlb.flushes,
        rounds: after.rounds - before.rounds,
        ipis: after.ipis - before.ipis,
        usec,
        errors: errors.load(Ordering::Relaxed),
    }
}

/// Run the workload lazily, then eagerly, on CPUs `0..cpus`.
pub fn run(
    vm: &'static Vmalloc<Kernel>,
    tlb: &KernelTlb,
    cpus: usize,
    seed: u64,
    loops: u32,
) -> Comparison {
    Comparison {
        lazy: run_once(vm, tlb, cpus, seed, loops, false),
        eager: run_once(vm, tlb, cpus, seed, loops, true),
        cpus,
    }
}
