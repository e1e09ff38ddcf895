//! `vmalloc-impls`: the one interface the `test_vmalloc` runner (crate `test-vmalloc`) and the
//! criterion benchmarks (crate `benches`) drive: a vmalloc implementation seen from a kernel
//! test module.
//!
//! [`VmallocImpl`] is deliberately small: the calls `lib/test_vmalloc.c` makes (`vmalloc`,
//! `__vmalloc_node` with an alignment, `vfree`, a one-byte store through the returned pointer,
//! `vm_map_ram`/`vm_unmap_ram` over pages the test allocated itself) plus what a harness needs
//! around them (a synchronous purge, counters, an idle check). It is object safe so that the
//! runner can pick an implementation at run time (`--allocator`), and `Send + Sync` because the
//! kernel's workers share one allocator.
//!
//! Implementations (built by [`AllocatorKind::build`]), each an adapter over an allocator
//! crate:
//! - `sharded` ([`ShardedImpl`]): the `vmalloc` crate's default configuration (sharded free
//!   trees, per-CPU caches, lock-free lazy lists, per-CPU purge workers);
//! - `single-lock` ([`ShardedImpl`] too): the same crate configured with one shard and no
//!   per-CPU caches (the Linux 5.2 design: one augmented free tree under one lock);
//! - `legacy` ([`LegacyImpl`]): the `vmalloc-legacy` crate, seed 003's Linux 3.x list walk
//!   under one global lock.
//!
//! All three sit on the same `pagetable` crate (frame allocator, address space, counting TLB
//! flush), so a comparison measures the KVA algorithm and its locking only.
//!
//! Pages for `vm_map_ram` travel in a [`PageBatch`], an opaque owner-tagged list of frames: a
//! batch can only be mapped by, and returned to, the instance that allocated it (anything else
//! is an [`ImplError::ForeignPages`], never memory corruption).
//!
//! A library only; run it through the runner (`cargo run --release -p test-vmalloc -- --help`)
//! or the benchmarks (`cargo bench -p benches --bench contention`).
//!
//! Locking: this crate has no shared state of its own; the instance counter is one relaxed
//! atomic (uniqueness is all it needs).

use core::fmt;
use core::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use pagetable::{PhysFrame, Size4KiB};
use serde::Serialize;

mod legacy;
mod sharded;

pub use legacy::LegacyImpl;
pub use sharded::ShardedImpl;

/// Page size used by every implementation (x86_64 4 KiB pages).
pub const PAGE_SIZE: u64 = pagetable::PAGE_SIZE;

/// A failed operation of a [`VmallocImpl`]. Tests count these as failures; nothing panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImplError {
    /// No virtual address range fits (after the purge-and-retry and the notifiers).
    #[error("vmap allocation for size {size:#x} (align {align:#x}) failed: no virtual space")]
    NoSpace {
        /// Requested size in bytes.
        size: u64,
        /// Requested alignment in bytes.
        align: u64,
    },
    /// Physical frames ran out.
    #[error("out of physical memory")]
    OutOfMemory,
    /// A size, count or alignment the interface rejects (zero, not a power of two, too big).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The address is not the start of a live allocation of this instance.
    #[error("address {addr:#x} is not a live allocation")]
    NotFound {
        /// The address passed in.
        addr: u64,
    },
    /// The address is not mapped (a store or load would fault).
    #[error("access to unmapped address {addr:#x}")]
    Fault {
        /// The faulting address.
        addr: u64,
    },
    /// A [`PageBatch`] allocated by another instance was handed to this one.
    #[error("page batch belongs to another allocator instance")]
    ForeignPages,
    /// Any other error of the implementation, with its message.
    #[error("{0}")]
    Backend(String),
}

/// Counters of an implementation, read by the runner after a run and by the benchmarks.
///
/// Values are snapshots; fields an implementation cannot know are zero and documented there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ImplStats {
    /// TLB flushes issued (range and full).
    pub tlb_flushes: u64,
    /// Of those, full flushes.
    pub full_flushes: u64,
    /// Pages covered by the range flushes.
    pub pages_flushed: u64,
    /// Lazily freed pages waiting for a purge right now.
    pub lazy_pages: u64,
    /// Purges that did work (took at least one lazy area).
    pub purges: u64,
    /// Live (allocated, not freed) areas right now.
    pub live_areas: u64,
    /// Physical frames in use right now (data and page tables).
    pub frames_used: u64,
    /// Physical frames the instance's arena holds.
    pub frames_total: u64,
}

/// Frames for `vm_map_ram`, allocated by [`VmallocImpl::alloc_pages`].
///
/// Opaque on purpose: only the instance that allocated a batch can map or free it. Dropping a
/// batch without [`VmallocImpl::free_pages`] leaks its frames in that instance (the idle check
/// then reports them).
#[derive(Debug)]
pub struct PageBatch {
    owner: u64,
    frames: Vec<PhysFrame<Size4KiB>>,
}

impl PageBatch {
    /// Number of pages in the batch.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether the batch holds no page.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Wrap `frames` for `owner` (implementations only).
    pub(crate) fn new(owner: InstanceId, frames: Vec<PhysFrame<Size4KiB>>) -> Self {
        Self {
            owner: owner.0,
            frames,
        }
    }

    /// The frames, if the batch belongs to `owner`.
    pub(crate) fn frames_for(
        &self,
        owner: InstanceId,
    ) -> Result<&[PhysFrame<Size4KiB>], ImplError> {
        if self.owner == owner.0 {
            Ok(&self.frames)
        } else {
            Err(ImplError::ForeignPages)
        }
    }

    /// Take the frames back, if the batch belongs to `owner` (the batch is returned untouched
    /// otherwise).
    pub(crate) fn into_frames_for(
        self,
        owner: InstanceId,
    ) -> Result<Vec<PhysFrame<Size4KiB>>, (Self, ImplError)> {
        if self.owner == owner.0 {
            Ok(self.frames)
        } else {
            Err((self, ImplError::ForeignPages))
        }
    }
}

/// A process-unique identity for an implementation instance (tags its [`PageBatch`]es).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceId(u64);

impl InstanceId {
    /// A fresh identity, never returned before in this process.
    pub fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A vmalloc implementation as `lib/test_vmalloc.c` uses one.
///
/// Sizes are bytes (rounded up to pages by the implementation); addresses are virtual addresses
/// as `u64`. Every method is callable from many threads at once.
pub trait VmallocImpl: Send + Sync {
    /// Short name: `sharded`, `single-lock` or `legacy`.
    fn name(&self) -> &'static str;

    /// `vmalloc(size)`: map `size` bytes (rounded up to pages) of fresh frames, page aligned.
    fn vmalloc(&self, size: u64) -> Result<u64, ImplError>;

    /// `vmalloc_huge(size, GFP_KERNEL)`: like [`VmallocImpl::vmalloc`], mapped with 2 MiB
    /// leaves where the size (2 MiB or more) and the frames allow. The default is
    /// `vmalloc`, which is what `vmalloc_huge` is on a kernel without huge vmalloc (Linux
    /// 3.x, the `legacy` baseline).
    fn vmalloc_huge(&self, size: u64) -> Result<u64, ImplError> {
        self.vmalloc(size)
    }

    /// `__vmalloc_node(size, align, GFP_KERNEL | __GFP_ZERO, ..)`: zeroed, aligned to `align`
    /// (a power of two), anywhere in the vmalloc range.
    fn vmalloc_align(&self, size: u64, align: u64) -> Result<u64, ImplError>;

    /// `vfree(addr)`: unmap at once, free the frames, reuse the range after a lazy purge.
    fn vfree(&self, addr: u64) -> Result<(), ImplError>;

    /// Store one byte through the mapping (`*(u8 *)addr = value`).
    fn write_byte(&self, addr: u64, value: u8) -> Result<(), ImplError>;

    /// Load one byte through the mapping.
    fn read_byte(&self, addr: u64) -> Result<u8, ImplError>;

    /// `alloc_pages_bulk`: `count` frames for [`VmallocImpl::vm_map_ram`] (all or nothing).
    fn alloc_pages(&self, count: usize) -> Result<PageBatch, ImplError>;

    /// Return a batch's frames. A foreign batch is refused (and leaked, not corrupted).
    fn free_pages(&self, pages: PageBatch) -> Result<(), ImplError>;

    /// `vm_map_ram(pages, count)`: map every page of `pages` at a fresh virtual range.
    fn vm_map_ram(&self, pages: &PageBatch) -> Result<u64, ImplError>;

    /// `vm_unmap_ram(addr, count)`: unmap a range returned by `vm_map_ram` (frames stay the
    /// caller's).
    fn vm_unmap_ram(&self, addr: u64, count: usize) -> Result<(), ImplError>;

    /// Synchronous purge: flush every lazily freed range (and every vmap-block alias) so that
    /// all freed virtual space is reusable (`vm_unmap_aliases` + `purge_vmap_area_lazy`).
    fn purge(&self);

    /// Counters right now.
    fn stats(&self) -> ImplStats;

    /// Invariant check for an idle instance (no call in flight, every allocation freed, after
    /// [`VmallocImpl::purge`]): the allocator's own consistency check, nothing live, nothing
    /// lazy, no mapping left in the vmalloc range, and every frame back (the range's empty
    /// page tables are freed first, so the frame count must equal the count right after
    /// construction, exactly). An `Err` describes the first violation found.
    fn check_idle(&self) -> Result<(), ImplError>;
}

/// Which implementation to build (`--allocator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AllocatorKind {
    /// The `vmalloc` crate's default: sharded, per-CPU caches, per-CPU purge workers.
    Sharded,
    /// The `vmalloc` crate with one shard and no per-CPU caches.
    SingleLock,
    /// Seed 003's Linux 3.x algorithm (the `vmalloc-legacy` crate).
    Legacy,
}

impl AllocatorKind {
    /// Every kind, in the order the comparison reports them.
    pub const ALL: [AllocatorKind; 3] = [Self::Sharded, Self::SingleLock, Self::Legacy];

    /// The command-line spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sharded => "sharded",
            Self::SingleLock => "single-lock",
            Self::Legacy => "legacy",
        }
    }

    /// Build a fresh instance with its own mmap-backed arena of `cfg.arena_bytes`.
    pub fn build(self, cfg: &ImplConfig) -> Result<Box<dyn VmallocImpl>, ImplError> {
        Ok(match self {
            Self::Sharded => Box::new(ShardedImpl::new(cfg, false)?),
            Self::SingleLock => Box::new(ShardedImpl::new(cfg, true)?),
            Self::Legacy => Box::new(LegacyImpl::new(cfg)?),
        })
    }
}

impl fmt::Display for AllocatorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown `--allocator` name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown allocator `{0}` (expected sharded, single-lock or legacy)")]
pub struct UnknownAllocator(pub String);

impl FromStr for AllocatorKind {
    type Err = UnknownAllocator;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sharded" => Ok(Self::Sharded),
            "single-lock" | "single_lock" | "singlelock" => Ok(Self::SingleLock),
            "legacy" => Ok(Self::Legacy),
            other => Err(UnknownAllocator(other.to_owned())),
        }
    }
}

/// How to build an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImplConfig {
    /// Size of the physical arena in bytes (mmap-backed, `MAP_NORESERVE`: untouched frames
    /// cost nothing).
    pub arena_bytes: u64,
}

impl Default for ImplConfig {
    /// 1 GiB of arena: enough for every kernel test with two workers.
    fn default() -> Self {
        Self {
            arena_bytes: 1 << 30,
        }
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    /// Every implementation refuses another instance's page batch, to map or to free (the
    /// legacy allocator's `zeroing_alignment_and_map_ram` test checked the first for `legacy`
    /// before the adapter moved here); a refused free leaks the batch in its owner, and the
    /// owner's idle check reports it.
    #[test]
    fn foreign_page_batches_are_refused() {
        let cfg = ImplConfig {
            arena_bytes: 64 << 20,
        };
        for kind in AllocatorKind::ALL {
            let (a, b) = (kind.build(&cfg).unwrap(), kind.build(&cfg).unwrap());
            let pages = a.alloc_pages(2).unwrap();
            assert_eq!(b.vm_map_ram(&pages), Err(ImplError::ForeignPages), "{kind}");
            let v = a.vm_map_ram(&pages).unwrap();
            a.write_byte(v + PAGE_SIZE, 9).unwrap();
            assert_eq!(a.read_byte(v + PAGE_SIZE), Ok(9), "{kind}");
            a.vm_unmap_ram(v, 2).unwrap();
            a.free_pages(pages).unwrap();
            let leaked = a.alloc_pages(1).unwrap();
            assert_eq!(b.free_pages(leaked), Err(ImplError::ForeignPages), "{kind}");
            a.purge();
            b.purge();
            assert!(
                a.check_idle().is_err(),
                "{kind}: the leaked batch went unnoticed"
            );
            b.check_idle().unwrap();
        }
    }
}
