//! [`KvaConfig`]: how a [`Kva`](crate::kva::Kva) is built (range, shards, lazy threshold,
//! purge scheduling, node pools).
//!
//! What the fields mean is in [`KvaConfig`]'s documentation. A configuration is checked once
//! by `KvaConfig::resolve`; nothing here holds state.

use crate::kva::error::KvaError;
#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::PAGE_SIZE;
use pagetable::VirtAddr;
use pagetable::platform::Platform;

/// Who runs the merge work of a lazy purge, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PurgeMode {
    /// `free_lazy` never purges itself: past the threshold it wakes a purge worker and
    /// returns. The workers split the merge work between them. (Default.)
    #[default]
    Background,
    /// The freeing thread that crosses the threshold runs the purge itself (one flush), with
    /// the workers helping on other shards, and waits for them (Linux 6.9's
    /// `purge_vmap_node` split with the caller doing its share).
    Inline,
    /// No threads at all: the freeing thread that crosses the threshold runs the whole purge
    /// alone; deferred frees are drained by `purge()` and by the next allocation. For loom
    /// models and for kernels that run their own workers.
    Synchronous,
}

/// Construction parameters of a [`Kva`](crate::kva::Kva).
///
/// Zero / `None` fields mean "as Linux would do it on this machine": as many CPU slots as
/// `Platform::nr_cpu_ids()` (the machine's count, or `KVMALLOC_NR_CPUS` with the std
/// platform), one shard and one purge worker per CPU slot, and Linux's lazy threshold
/// ([`linux_lazy_max_pages`]). [`KvaConfig::single_lock`] gives the Linux 5.x design (one free
/// tree under one lock, no pools), kept for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvaConfig {
    /// First address of the KVA range (page aligned).
    pub start: u64,
    /// End (exclusive) of the KVA range (page aligned, above `start`).
    pub end: u64,
    /// Number of shards the range is split into; `0` = one per CPU slot. Clamped so that each
    /// shard holds at least one page.
    pub shards: usize,
    /// Lazily freed pages tolerated before a purge is kicked; `None` = Linux's
    /// `fls(nr_cpus) * 32 MiB / PAGE_SIZE` ([`linux_lazy_max_pages`], which says why).
    /// Clamped to `1 ..=` [`MAX_LAZY_MAX_PAGES`].
    pub lazy_max_pages: Option<usize>,
    /// How purges are scheduled.
    pub purge_mode: PurgeMode,
    /// Keep pools of free areas of the common sizes in each shard's node (Linux 6.9's node
    /// pools; per CPU with the default one shard per CPU slot).
    pub pcpu_cache: bool,
    /// Number of purge worker threads (Background / Inline modes); `0` = one per CPU slot.
    /// At most one per CPU slot (a larger value is clamped: more workers than CPUs only
    /// contend).
    pub purge_workers: usize,
    /// Number of CPU slots the instance is built for (shards, deferred
    /// lists, and the defaults above); `0` = `Platform::nr_cpu_ids()`. A thread whose
    /// CPU id (`Platform::this_cpu()`) is `c` uses slot `c % nr_cpus`, so an instance
    /// can simulate more CPUs than the machine has (threads pinned with
    /// `pagetable::cpu::set_this_cpu`) or fewer. At most [`MAX_NR_CPUS`].
    pub nr_cpus: usize,
}

/// The largest [`KvaConfig::nr_cpus`] accepted, [`KvaError::InvalidConfig`] above it: 8192,
/// x86_64 Linux's largest `CONFIG_NR_CPUS`, so every real machine fits, while a mistyped
/// count cannot make construction allocate shards, nodes and deferred lists
/// for millions of slots (see `pagetable::platform::MAX_NR_CPUS`).
pub const MAX_NR_CPUS: usize = pagetable::platform::MAX_NR_CPUS;

/// x86_64 Linux's `VMALLOC_START` (4-level paging).
pub const VMALLOC_START: u64 = 0xffff_c900_0000_0000;
/// x86_64 Linux's `VMALLOC_END` + 1 (32 TiB after `VMALLOC_START`).
pub const VMALLOC_END: u64 = 0xffff_e900_0000_0000;

impl Default for KvaConfig {
    /// The x86_64 vmalloc range, one shard per CPU, Linux's lazy threshold, background purge
    /// workers, node pools on.
    fn default() -> Self {
        Self {
            start: VMALLOC_START,
            end: VMALLOC_END,
            shards: 0,
            lazy_max_pages: None,
            purge_mode: PurgeMode::Background,
            pcpu_cache: true,
            purge_workers: 0,
            nr_cpus: 0,
        }
    }
}

/// The largest effective `lazy_max_pages`: larger values are clamped to it.
///
/// Why 2^40 pages (4 PiB): more than the whole canonical address space (2^48 bytes, 2^36
/// pages), so the clamp never changes the behaviour (a threshold above the range never
/// triggers, whatever its value), while `2 * lazy_max_pages` and the sums of lazy counters
/// compared with it stay far from overflow.
pub const MAX_LAZY_MAX_PAGES: usize = 1 << 40;

/// Linux's `fls`: index (1-based) of the most significant set bit, 0 for 0.
pub(crate) fn fls(x: usize) -> usize {
    (usize::BITS - x.leading_zeros()) as usize
}

/// Linux's `lazy_max_pages()` for `nr_cpus` online CPUs: `fls(nr_cpus) * 32 MiB / PAGE_SIZE`
/// (8,192 pages, 32 MiB, for one CPU; 57,344 pages for 64), the default
/// [`KvaConfig::lazy_max_pages`].
///
/// Why (mm/vmalloc.c's reasoning): this is how much lazily freed VA is gathered before one
/// purge flushes it. A larger number covers more page tables and makes a purge slightly
/// longer, but divides the number of global TLB flushes in proportion. Scaling it with the
/// CPU count would be natural (vmap activity may grow with the CPUs), but workloads are
/// likely limited in other ways, and on huge machines a large threshold means a long purge
/// latency: so a logarithmic scale, conservative by design. Here the threshold kicks the
/// purge, `2 *` it is the point past which the purge stops yielding its locks (the seed's
/// `resched_threshold`), and a purge's merge is split among one thread per threshold's worth
/// of backlog (Linux 6.9).
pub fn linux_lazy_max_pages(nr_cpus: usize) -> usize {
    fls(nr_cpus.max(1)) * (32 * 1024 * 1024 / PAGE_SIZE as usize)
}

/// Whether `[start, end)` (non-empty) lies inside one canonical half of the x86_64 address
/// space, so that its flush ranges are expressible as [`VirtAddr`]s (the lower half's
/// exclusive end is `1 << 47`).
fn canonical_range(start: u64, end: u64) -> bool {
    const LOWER_END: u64 = 1 << 47;
    let canon = |a: u64| VirtAddr::try_new(a).is_ok();
    canon(start)
        && (canon(end) || end == LOWER_END)
        && (end <= LOWER_END || start >= VirtAddr::UPPER_HALF_START)
}

/// A configuration with every default resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub start: u64,
    pub end: u64,
    pub shards: usize,
    pub shard_size: u64,
    pub lazy_max_pages: usize,
    pub purge_mode: PurgeMode,
    pub pcpu_cache: bool,
    pub purge_workers: usize,
    pub nr_cpus: usize,
}

impl KvaConfig {
    /// The Linux 5.x design over `[start, end)`: one shard (one free-tree lock, one node
    /// lock), no pools, Linux's lazy threshold, background purge.
    pub fn single_lock(start: u64, end: u64) -> Self {
        Self {
            start,
            end,
            shards: 1,
            pcpu_cache: false,
            purge_workers: 1,
            ..Self::default()
        }
    }

    /// The default configuration over `[start, end)`.
    pub fn with_range(start: u64, end: u64) -> Self {
        Self {
            start,
            end,
            ..Self::default()
        }
    }

    /// Check the configuration and fill in the machine-dependent defaults.
    pub(crate) fn resolve<P: Platform>(&self) -> Result<Resolved, KvaError> {
        let (start, end) = (self.start, self.end);
        if start >= end
            || start % PAGE_SIZE != 0
            || end % PAGE_SIZE != 0
            || !canonical_range(start, end)
        {
            return Err(KvaError::InvalidRange { start, end });
        }
        let nr_cpus = match self.nr_cpus {
            0 => P::nr_cpu_ids(),
            n if n > MAX_NR_CPUS => {
                return Err(KvaError::InvalidConfig {
                    what: "nr_cpus",
                    value: n as u64,
                    max: MAX_NR_CPUS as u64,
                });
            }
            n => n,
        };
        let pages = (end - start) / PAGE_SIZE;
        let want = if self.shards == 0 {
            nr_cpus
        } else {
            self.shards
        };
        let shards = (want as u64).clamp(1, pages) as usize;
        // Round the shard size up to whole pages; the last shard takes what is left, and the
        // count shrinks if rounding left some shard empty.
        let shard_size = pages.div_ceil(shards as u64) * PAGE_SIZE;
        let shards = (end - start).div_ceil(shard_size) as usize;
        // Bounded so that every derived quantity (`2 * lazy_max_pages`, the backlog sums)
        // stays far from overflow; a threshold above the whole range never triggers anyway.
        let lazy_max_pages = self
            .lazy_max_pages
            .unwrap_or_else(|| linux_lazy_max_pages(nr_cpus))
            .clamp(1, MAX_LAZY_MAX_PAGES);
        let purge_workers = match self.purge_mode {
            PurgeMode::Synchronous => 0,
            _ if self.purge_workers == 0 => nr_cpus,
            _ => self.purge_workers.min(nr_cpus),
        };
        Ok(Resolved {
            start,
            end,
            shards,
            shard_size,
            lazy_max_pages,
            purge_mode: self.purge_mode,
            pcpu_cache: self.pcpu_cache,
            purge_workers,
            nr_cpus,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_threshold() {
        assert_eq!(fls(0), 0);
        assert_eq!(fls(1), 1);
        assert_eq!(fls(2), 2);
        assert_eq!(fls(3), 2);
        assert_eq!(fls(64), 7);
        // 1 CPU: 32 MiB of 4 KiB pages.
        assert_eq!(linux_lazy_max_pages(1), 8192);
        assert_eq!(linux_lazy_max_pages(4), 3 * 8192);
    }

    #[test]
    fn resolve_checks_range() {
        let bad = |s, e| {
            KvaConfig {
                start: s,
                end: e,
                ..KvaConfig::default()
            }
            .resolve::<pagetable::platform::StdPlatform>()
        };
        assert!(matches!(
            bad(0x2000, 0x1000),
            Err(KvaError::InvalidRange { .. })
        ));
        assert!(matches!(
            bad(0x1000, 0x1000),
            Err(KvaError::InvalidRange { .. })
        ));
        assert!(matches!(
            bad(0x1001, 0x3000),
            Err(KvaError::InvalidRange { .. })
        ));
        assert!(matches!(
            bad(0x1000, 0x3001),
            Err(KvaError::InvalidRange { .. })
        ));
        // Non-canonical, or straddling the hole between the halves.
        assert!(matches!(
            bad(0x1000, 0x8000_0000_1000),
            Err(KvaError::InvalidRange { .. })
        ));
        assert!(matches!(
            bad(0x1000, VMALLOC_START),
            Err(KvaError::InvalidRange { .. })
        ));
        assert!(
            KvaConfig::with_range(0x7fff_ffff_0000, 1 << 47)
                .resolve::<pagetable::platform::StdPlatform>()
                .is_ok()
        );
        assert!(
            KvaConfig::default()
                .resolve::<pagetable::platform::StdPlatform>()
                .is_ok()
        );
    }

    #[test]
    fn resolve_splits_into_page_multiples() {
        let r = KvaConfig {
            start: 0x10000,
            end: 0x10000 + 10 * PAGE_SIZE,
            shards: 3,
            ..KvaConfig::default()
        }
        .resolve::<pagetable::platform::StdPlatform>()
        .unwrap();
        assert_eq!(r.shards, 3);
        assert_eq!(r.shard_size, 4 * PAGE_SIZE);
        // More shards than pages: one page each.
        let r = KvaConfig {
            start: 0,
            end: 2 * PAGE_SIZE,
            shards: 8,
            ..KvaConfig::default()
        }
        .resolve::<pagetable::platform::StdPlatform>()
        .unwrap();
        assert_eq!((r.shards, r.shard_size), (2, PAGE_SIZE));
        // Rounding that would leave the last shard empty shrinks the count.
        let r = KvaConfig {
            start: 0,
            end: 5 * PAGE_SIZE,
            shards: 4,
            ..KvaConfig::default()
        }
        .resolve::<pagetable::platform::StdPlatform>()
        .unwrap();
        assert_eq!((r.shards, r.shard_size), (3, 2 * PAGE_SIZE));
    }

    #[test]
    fn presets() {
        let c = KvaConfig::single_lock(0x1000, 0x100000);
        assert_eq!((c.shards, c.pcpu_cache), (1, false));
        let r = c.resolve::<pagetable::platform::StdPlatform>().unwrap();
        assert_eq!(r.shards, 1);
        assert_eq!(
            r.lazy_max_pages,
            linux_lazy_max_pages(pagetable::cpu::nr_cpu_ids())
        );
        let s = KvaConfig {
            purge_mode: PurgeMode::Synchronous,
            ..KvaConfig::default()
        };
        assert_eq!(
            s.resolve::<pagetable::platform::StdPlatform>()
                .unwrap()
                .purge_workers,
            0
        );
    }
}
