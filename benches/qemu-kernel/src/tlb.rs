//! `flush_tlb_kernel_range`: the kernel's `pagetable::TlbFlush`.
//!
//! A range of at most `TLB_SINGLE_PAGE_FLUSH_CEILING` pages is flushed with one `invlpg` per
//! page, a larger one by toggling CR4.PGE (every kernel mapping is global, so a CR3 reload
//! would not do). First on the calling CPU, then on every other online CPU by a shootdown
//! IPI round: under the shootdown lock the request is published, [`TLB_VECTOR`] is sent to
//! each target, and the caller spins until every target acknowledged (its handler flushed
//! before it decremented the pending count). The caller keeps interrupts on while it waits
//! for the lock, so two CPUs flushing at once serve each other's rounds.
//!
//! With the `broken-flush` feature (tests only) nothing is invalidated and no IPI is sent,
//! while the counters still count: the allocator believes it flushed, the MMU does not.
//!
//! [`TLB_VECTOR`]: crate::interrupts::TLB_VECTOR

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering, fence};

use pagetable::platform::RawSpinlock;
use pagetable::platform::lock_api::RawMutex;
use pagetable::{
    FlushRange, PAGE_SIZE, TLB_SINGLE_PAGE_FLUSH_CEILING, TlbFlush, TlbStats, VirtAddr,
};

use crate::platform::Kernel;
use crate::{apic, cpu, interrupts, percpu};
use pagetable::platform::Platform;

/// Whether this build skips every flush (the `broken-flush` feature).
pub const BROKEN: bool = cfg!(feature = "broken-flush");

/// A flush request: `pages == 0` means everything.
#[derive(Debug, Clone, Copy)]
struct Request {
    start: u64,
    pages: u64,
}

/// Serialises shootdown rounds (one request slot).
static SHOOTDOWN: RawSpinlock = <RawSpinlock as RawMutex>::INIT;
static REQ_START: AtomicU64 = AtomicU64::new(0);
static REQ_PAGES: AtomicU64 = AtomicU64::new(0);
/// Targets that have not acknowledged the current round.
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Shootdown requests this CPU handled, all CPUs together.
static HANDLED: AtomicU64 = AtomicU64::new(0);

fn flush_local(r: Request) {
    if BROKEN {
        return;
    }
    if r.pages == 0 {
        cpu::flush_tlb_all_local();
    } else {
        for i in 0..r.pages {
            cpu::invlpg(r.start.wrapping_add(i * PAGE_SIZE));
        }
    }
}

/// The [`interrupts::TLB_VECTOR`] handler (interrupts off): flush what the current round
/// asks, then acknowledge.
pub fn handle_shootdown() {
    let r = Request {
        start: REQ_START.load(Ordering::Acquire),
        pages: REQ_PAGES.load(Ordering::Acquire),
    };
    flush_local(r);
    HANDLED.fetch_add(1, Ordering::Relaxed);
    PENDING.fetch_sub(1, Ordering::Release);
}

/// Send `r` to every other online CPU and wait for their acknowledgements; returns how many
/// were interrupted (0: no round).
fn shootdown(r: Request) -> usize {
    if BROKEN || !apic::ready() {
        return 0;
    }
    let me = percpu::this_cpu();
    let n = Kernel::nr_cpu_ids();
    let targets =
        || (0..n).filter(move |&c| c != me && percpu::cpu(c).online.load(Ordering::Acquire));
    if targets().next().is_none() {
        return 0;
    }
    // Interrupts stay on while spinning: the holder may be waiting for this CPU's ack.
    debug_assert!(cpu::interrupts_enabled());
    SHOOTDOWN.lock();
    REQ_START.store(r.start, Ordering::Relaxed);
    REQ_PAGES.store(r.pages, Ordering::Relaxed);
    let sent = targets().count();
    PENDING.store(sent, Ordering::Relaxed);
    // The request and count are visible before any target can take the interrupt.
    fence(Ordering::SeqCst);
    for c in targets() {
        apic::send_ipi(
            percpu::cpu(c).apic_id.load(Ordering::Relaxed),
            interrupts::TLB_VECTOR,
        );
    }
    while PENDING.load(Ordering::Acquire) != 0 {
        cpu::pause();
    }
    // SAFETY: locked above by this CPU.
    unsafe { SHOOTDOWN.unlock() };
    sent
}

/// The kernel's TLB flush, with its own counters (one per vmalloc instance).
#[derive(Debug, Default)]
pub struct KernelTlb {
    flushes: AtomicU64,
    full_flushes: AtomicU64,
    pages_flushed: AtomicU64,
    rounds: AtomicU64,
    ipis: AtomicU64,
}

/// What a [`KernelTlb`] counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShootdownStats {
    /// The `TlbFlush` counters.
    pub tlb: TlbStats,
    /// Shootdown IPI rounds (a flush that interrupted at least one other CPU).
    pub rounds: u64,
    /// IPIs sent (one per target CPU per round).
    pub ipis: u64,
}

impl KernelTlb {
    /// Zeroed counters.
    pub const fn new() -> Self {
        Self {
            flushes: AtomicU64::new(0),
            full_flushes: AtomicU64::new(0),
            pages_flushed: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
            ipis: AtomicU64::new(0),
        }
    }

    fn run(&self, r: Request) {
        flush_local(r);
        let sent = shootdown(r) as u64;
        if sent > 0 {
            self.rounds.fetch_add(1, Ordering::Relaxed);
            self.ipis.fetch_add(sent, Ordering::Relaxed);
        }
    }

    /// The counters so far.
    pub fn shootdown_stats(&self) -> ShootdownStats {
        ShootdownStats {
            tlb: self.stats(),
            rounds: self.rounds.load(Ordering::Relaxed),
            ipis: self.ipis.load(Ordering::Relaxed),
        }
    }
}

impl TlbFlush for KernelTlb {
    fn flush_range(&self, start: VirtAddr, end: VirtAddr) {
        let r = FlushRange::new(start, end);
        if r.is_empty() {
            return;
        }
        if r.pages() > TLB_SINGLE_PAGE_FLUSH_CEILING {
            return self.flush_all();
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.pages_flushed.fetch_add(r.pages(), Ordering::Relaxed);
        self.run(Request {
            start: r.start().as_u64(),
            pages: r.pages(),
        });
    }

    fn flush_all(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.full_flushes.fetch_add(1, Ordering::Relaxed);
        self.run(Request { start: 0, pages: 0 });
    }

    fn stats(&self) -> TlbStats {
        TlbStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            full_flushes: self.full_flushes.load(Ordering::Relaxed),
            pages_flushed: self.pages_flushed.load(Ordering::Relaxed),
            ..TlbStats::default()
        }
    }
}

/// Shootdown requests handled by all CPUs so far.
pub fn handled() -> u64 {
    HANDLED.load(Ordering::Relaxed)
}
