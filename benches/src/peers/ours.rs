//! Ours ([`KvaPeer`]: `vmalloc::Kva`) and the legacy baseline's KVA part ([`LegacyKvaPeer`])
//! behind the same traits as the peers, each with a [`CountingFlush`] for TLB shootdowns.
//!
//! Both free the way `vfree` frees virtual space: lazily (the range is reused after a purge,
//! whose amortised cost is part of every measurement); `settle` purges synchronously.
//! Locking: none of their own; both allocators are `Sync` and take their own locks.

use std::sync::Arc;

use pagetable::platform::{Platform, RawSpinlock};
use pagetable::{CountingFlush, TlbFlush, TlbStats};

use super::{PAGE, PeerError, SharedVaAllocator, VA_BASE, VaAllocator};

/// Ours: [`vmalloc::Kva`] with a [`CountingFlush`] (no page tables). `alloc` is
/// `Kva::alloc` over the whole range; `free` frees the VA lazily as `vfree` does, through
/// `remove_free_lazy` (`remove` + `free_lazy` in one node-lock section: nothing is mapped
/// here, so nothing is unmapped between the two; the range is reused after a lazy purge,
/// whose cost is included).
pub struct KvaPeer {
    kva: vmalloc::Kva,
    flush: Arc<CountingFlush>,
    name: &'static str,
    start: u64,
    end: u64,
}

impl KvaPeer {
    /// A `Kva` over `VA_BASE..VA_BASE + span` built from `cfg` (its range is replaced).
    pub fn with_config(
        name: &'static str,
        span: u64,
        cfg: vmalloc::KvaConfig,
    ) -> Result<Self, vmalloc::VmallocError> {
        let (start, end) = (VA_BASE, VA_BASE + span);
        let flush = Arc::new(CountingFlush::new());
        let as_dyn: Arc<dyn TlbFlush> = flush.clone();
        let kva = vmalloc::Kva::new(vmalloc::KvaConfig { start, end, ..cfg }, as_dyn)?;
        Ok(Self {
            kva,
            flush,
            name,
            start,
            end,
        })
    }

    /// The default configuration (sharded, per-CPU caches, background purge workers).
    pub fn sharded(span: u64) -> Result<Self, vmalloc::VmallocError> {
        Self::with_config("kva", span, vmalloc::KvaConfig::default())
    }

    /// The Linux 5.x design: one free tree under one lock, no per-CPU caches.
    pub fn single_lock(span: u64) -> Result<Self, vmalloc::VmallocError> {
        Self::with_config(
            "kva-single-lock",
            span,
            vmalloc::KvaConfig::single_lock(0, 0),
        )
    }

    /// The allocator itself.
    pub fn kva(&self) -> &vmalloc::Kva {
        &self.kva
    }

    /// The TLB flushes the allocator asked for so far.
    pub fn tlb_stats(&self) -> TlbStats {
        self.flush.stats()
    }
}

/// `SharedVaAllocator` and `VaAllocator` for a peer over `vmalloc::Kva` with the fields
/// `kva`, `flush`, `name`, `start` and `end` ([`KvaPeer`], and `SpinKvaPeer` with the
/// `spin-peer` feature). A macro rather than a generic impl: each type's methods are
/// compiled as they would be written out, so adding a platform changes no inlining of
/// `KvaPeer`'s (see `benches/Cargo.toml`, feature `spin-peer`).
macro_rules! kva_peer_impls {
    ($t:ty) => {
        impl SharedVaAllocator for $t {
            fn name(&self) -> &'static str {
                self.name
            }
            fn alloc(&self, size: u64, align: u64) -> Option<u64> {
                let info = vmalloc::AreaInfo::new(vmalloc::VmFlags::ALLOC);
                self.kva
                    .alloc(size, align, self.start, self.end, None, info)
                    .ok()
                    .map(pagetable::VirtAddr::as_u64)
            }
            fn free(&self, addr: u64, _size: u64, _align: u64) -> Result<(), PeerError> {
                self.kva
                    .remove_free_lazy(pagetable::VirtAddr::new_truncate(addr), 0)
                    .map_err(|_| PeerError::UnknownAllocation { addr })
            }
            fn settle(&self) {
                self.kva.purge();
            }
        }

        impl VaAllocator for $t {
            fn name(&self) -> &'static str {
                self.name
            }
            fn counters(&self) -> Option<String> {
                let s = self.kva.stats();
                let t = self.flush.stats();
                Some(format!(
                    "busy areas {}, free areas {}, purges {}, purged areas {}, to caches {}, \
                     TLB flushes {} ({} full)",
                    s.nr_busy,
                    s.nr_free_areas,
                    s.purges,
                    s.purged_areas,
                    s.purged_to_caches,
                    t.flushes,
                    t.full_flushes
                ))
            }
            fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
                SharedVaAllocator::alloc(self, size, align)
            }
            fn free(&mut self, addr: u64, size: u64, align: u64) -> Result<(), PeerError> {
                SharedVaAllocator::free(self, addr, size, align)
            }
            fn settle(&mut self) {
                SharedVaAllocator::settle(self);
            }
        }
    };
}

kva_peer_impls!(KvaPeer);

/// The hosted platform with a kernel's kind of lock: `pagetable`'s test-and-test-and-set
/// [`RawSpinlock`] (unlock is one `Release` store, where parking_lot's unlock is a
/// compare-exchange) and std's CPU ids. For one-thread measurements of what the lock costs:
/// a spinlock on an oversubscribed machine (more threads than cores) is the wrong tool, as
/// in a kernel that could be preempted while holding it.
pub struct SpinPlatform;

impl Platform for SpinPlatform {
    type RawMutex = RawSpinlock;

    #[inline]
    fn this_cpu() -> usize {
        pagetable::cpu::this_cpu()
    }

    #[inline]
    fn nr_cpu_ids() -> usize {
        pagetable::cpu::nr_cpu_ids()
    }
}

/// Ours over [`SpinPlatform`] with synchronous purges (`kva-spin-sync`): [`KvaPeer`]'s
/// `kva-sync` with the lock a kernel would plug in. Same operations as [`KvaPeer`]. Only
/// with the `spin-peer` feature (see `benches/Cargo.toml` for why).
#[cfg(feature = "spin-peer")]
pub struct SpinKvaPeer {
    kva: vmalloc::Kva<SpinPlatform>,
    flush: Arc<CountingFlush>,
    name: &'static str,
    start: u64,
    end: u64,
}

#[cfg(feature = "spin-peer")]
impl SpinKvaPeer {
    /// Over `VA_BASE..VA_BASE + span`, the default configuration with synchronous purges.
    pub fn new(span: u64) -> Result<Self, vmalloc::VmallocError> {
        let (start, end) = (VA_BASE, VA_BASE + span);
        let cfg = vmalloc::KvaConfig {
            start,
            end,
            purge_mode: vmalloc::PurgeMode::Synchronous,
            ..vmalloc::KvaConfig::default()
        };
        let flush = Arc::new(CountingFlush::new());
        let as_dyn: Arc<dyn TlbFlush> = flush.clone();
        let kva = vmalloc::Kva::with_platform(cfg, as_dyn, None)?;
        Ok(Self {
            kva,
            flush,
            name: "kva-spin-sync",
            start,
            end,
        })
    }
}

#[cfg(feature = "spin-peer")]
kva_peer_impls!(SpinKvaPeer);

// ---------------------------------------------------------------------------------------------
// the legacy baseline (seed 003)

/// The legacy baseline's KVA part ([`vmalloc_legacy::kva::LegacyKva`], Linux 3.x: busy list
/// walk from `free_vmap_cache`, one global lock, lazy purge) with a [`CountingFlush`].
/// `free` is its lazy free of an area without a `vm` (`abandon`), like ours.
pub struct LegacyKvaPeer {
    kva: vmalloc_legacy::kva::LegacyKva<()>,
    flush: Arc<CountingFlush>,
    start: u64,
    end: u64,
}

impl LegacyKvaPeer {
    /// Over `VA_BASE..VA_BASE + span`, Linux's lazy threshold for this machine.
    pub fn new(span: u64) -> Self {
        let flush = Arc::new(CountingFlush::new());
        let as_dyn: Arc<dyn TlbFlush> = flush.clone();
        let lazy = vmalloc_legacy::kva::lazy_max_pages(pagetable::cpu::nr_cpu_ids());
        Self {
            kva: vmalloc_legacy::kva::LegacyKva::new(as_dyn, lazy),
            flush,
            start: VA_BASE,
            end: VA_BASE + span,
        }
    }

    /// The allocator's counters (busy areas, list nodes walked, purges).
    pub fn stats(&self) -> vmalloc_legacy::kva::KvaStats {
        self.kva.stats()
    }

    /// The TLB flushes the allocator asked for so far.
    pub fn tlb_stats(&self) -> TlbStats {
        self.flush.stats()
    }
}

impl SharedVaAllocator for LegacyKvaPeer {
    fn name(&self) -> &'static str {
        "legacy"
    }
    fn alloc(&self, size: u64, align: u64) -> Option<u64> {
        self.kva
            .alloc(size, align.max(PAGE), self.start, self.end)
            .ok()
    }
    fn free(&self, addr: u64, _size: u64, _align: u64) -> Result<(), PeerError> {
        self.kva
            .abandon(addr)
            .map_err(|_| PeerError::UnknownAllocation { addr })
    }
    fn settle(&self) {
        self.kva.purge_vmap_area_lazy();
    }
}

impl VaAllocator for LegacyKvaPeer {
    fn name(&self) -> &'static str {
        "legacy"
    }
    fn counters(&self) -> Option<String> {
        let s = self.kva.stats();
        let t = self.flush.stats();
        Some(format!(
            "busy areas {}, list nodes walked {}, purges {}, TLB flushes {} ({} full)",
            s.busy_areas, s.walk_steps, s.purges, t.flushes, t.full_flushes
        ))
    }
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        SharedVaAllocator::alloc(self, size, align)
    }
    fn free(&mut self, addr: u64, size: u64, align: u64) -> Result<(), PeerError> {
        SharedVaAllocator::free(self, addr, size, align)
    }
    fn settle(&mut self) {
        SharedVaAllocator::settle(self);
    }
}
