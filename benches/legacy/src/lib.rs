//! `vmalloc-legacy`: a whole Linux 3.x vmalloc over seed 003's KVA allocator, the baseline the
//! `vmalloc` crate is measured against.
//!
//! [`kva`] is the algorithm (one global lock, rb-tree + address-ordered list walked from
//! `free_vmap_cache`, Linux 3.x lazy purge). [`Legacy`] is the 3.x vmalloc layer on top of
//! it, over the same `pagetable` crate the `vmalloc` crate uses (frame allocator, address
//! space, counting TLB flush), so that comparisons differ in the KVA algorithm and its
//! locking only:
//!
//! - `vmalloc(size)` = `__vmalloc_node(size, align = 1, ..)` over `[VMALLOC_START,
//!   VMALLOC_END)`: `alloc_vmap_area(size + guard page, align)`, frames in bulk (as the
//!   `vmalloc` crate takes them; 3.x took them one by one), one map of the range
//!   (`map_vm_area`, no flush), then `setup_vmalloc_vm` attaches them (a second acquisition
//!   of `vmap_area_lock`, as in 3.x). The zeroing variant takes zeroed frames.
//! - `vfree` detaches the `vm` under the lock, unmaps the whole area (no flush),
//!   `free_vmap_area_noflush` (which may purge), then frees the frames.
//! - `vm_map_ram` is the 3.x path for large counts for every count (`alloc_vmap_area(count,
//!   PAGE_SIZE)`, no guard page); the per-CPU vmap blocks of 3.x are not modelled, so small
//!   `vm_map_ram`s cost a full `alloc_vmap_area` here.
//! - A failed step undoes the earlier ones (frames back, area freed lazily as `vfree` of a
//!   half-built area does in 3.x).
//!
//! The crate is a library on its own (its API is the kernel's calls, errors are
//! [`LegacyError`]s, nothing panics). The `test_vmalloc` runner drives it as its `legacy`
//! allocator through the `vmalloc-impls` adapter, and the criterion benchmarks race its
//! [`kva`] part against the peers:
//!
//! ```text
//! cargo run --release -p test-vmalloc -- --allocator legacy   # the kernel's tests on it
//! cargo test -p vmalloc-legacy                                # its own tests
//! ```
//!
//! Counters (`vmalloc_pages`, `batch_pages`) are `Relaxed` atomics used by the idle check;
//! all structure lives in [`kva::LegacyKva`] and `pagetable`, with their own rules.

pub mod kva;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

// The frame allocator and arena travel in the sync facade's `Arc` (loom's under the `loom`
// feature, where this module is compiled but never run); the TLB hook is a plain `Arc<dyn _>`.
use std::sync::Arc as PtArc;

use pagetable::PhysArena;
use pagetable::{AddressSpace, MapError};
use pagetable::{CountingFlush, TlbFlush};
use pagetable::{FrameAllocator, Zone};
use pagetable::{FrameStats, TlbStats};
use pagetable::{PAGE_SIZE, PhysFrame};
use pagetable::{PageTableFlags, PhysAddr, VirtAddr};

use kva::{KvaError, KvaStats, LegacyKva};

/// x86_64 `VMALLOC_START` (4-level paging), as the `vmalloc` crate uses it.
pub const VMALLOC_START: u64 = 0xffff_c900_0000_0000;
/// x86_64 `VMALLOC_END` + 1.
pub const VMALLOC_END: u64 = 0xffff_e900_0000_0000;
/// Physical base of the legacy instance's arena (the `vmalloc` crate's default: 0).
pub const ARENA_BASE: u64 = 0;

/// `PAGE_KERNEL`: present, writable, global, not executable.
fn page_kernel() -> PageTableFlags {
    PageTableFlags::PRESENT
        | PageTableFlags::WRITABLE
        | PageTableFlags::GLOBAL
        | PageTableFlags::NO_EXECUTE
}

/// What a busy area holds (`va->vm`).
#[derive(Debug)]
enum Vm {
    /// A vmalloc area and its frames.
    Alloc(Vec<PhysFrame>),
    /// A `vm_map_ram` area of `count` caller-owned frames.
    Ram(usize),
}

/// Why a call of [`Legacy`] failed. Nothing panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegacyError {
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
    /// A size, count or alignment the call rejects (zero, not a power of two, too big).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The address is not the start of a live allocation of the wanted kind.
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
    /// A page-table or arena error, or a failed [`Legacy::check_idle`], with its message.
    #[error("{0}")]
    Other(String),
}

/// Counters of a [`Legacy`] instance (snapshots).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegacyStats {
    /// The counting TLB flush's counters.
    pub tlb: TlbStats,
    /// The KVA allocator's counters (walk steps included).
    pub kva: KvaStats,
    /// The frame allocator's counters (data and page tables).
    pub frames: FrameStats,
}

/// The legacy vmalloc instance. Every method is callable from many threads at once.
pub struct Legacy {
    kva: LegacyKva<Vm>,
    space: AddressSpace,
    frames: PtArc<FrameAllocator>,
    tlb: Arc<CountingFlush>,
    vmalloc_pages: AtomicU64,
    batch_pages: AtomicU64,
    /// Frames in use right after construction (root and preallocated tables).
    baseline_frames: u64,
}

impl From<KvaError> for LegacyError {
    fn from(e: KvaError) -> Self {
        match e {
            KvaError::NoSpace { size, align } => LegacyError::NoSpace { size, align },
            KvaError::NotFound { addr } => LegacyError::NotFound { addr },
            e @ KvaError::Invalid { .. } => LegacyError::Invalid(e.to_string()),
        }
    }
}

/// Map a page-table error.
fn map_err(e: MapError) -> LegacyError {
    match e {
        MapError::OutOfFrames => LegacyError::OutOfMemory,
        e => LegacyError::Other(e.to_string()),
    }
}

/// A vmalloc-range address as a `VirtAddr`.
fn va(addr: u64) -> Result<VirtAddr, LegacyError> {
    VirtAddr::try_new(addr).map_err(|e| LegacyError::Invalid(e.to_string()))
}

impl Legacy {
    /// A legacy instance over a fresh mmap-backed arena of `arena_bytes` (`MAP_NORESERVE`:
    /// untouched frames cost nothing).
    pub fn new(arena_bytes: u64) -> Result<Self, LegacyError> {
        let arena = PhysArena::mmap(arena_bytes, PhysAddr::new_truncate(ARENA_BASE))
            .map_err(|e| LegacyError::Other(format!("arena: {e}")))?;
        let frames = PtArc::new(FrameAllocator::new(PtArc::new(arena)));
        let space = AddressSpace::new(frames.clone()).map_err(map_err)?;
        space
            .preallocate(va(VMALLOC_START)?, va(VMALLOC_END)?)
            .map_err(map_err)?;
        let tlb = Arc::new(CountingFlush::new());
        let flush: Arc<dyn TlbFlush> = tlb.clone();
        let kva = LegacyKva::new(flush, kva::lazy_max_pages(pagetable::cpu::nr_cpu_ids()));
        let baseline_frames = frames.stats().used;
        Ok(Self {
            kva,
            space,
            frames,
            tlb,
            vmalloc_pages: AtomicU64::new(0),
            batch_pages: AtomicU64::new(0),
            baseline_frames,
        })
    }

    /// `__vmalloc_node_range(size, align, VMALLOC_START, VMALLOC_END)`.
    fn vmalloc_node_range(&self, size: u64, align: u64, zero: bool) -> Result<u64, LegacyError> {
        let size = size
            .checked_add(PAGE_SIZE - 1)
            .map(|s| s & !(PAGE_SIZE - 1))
            .filter(|&s| s > 0 && s / PAGE_SIZE <= self.frames.stats().total)
            .ok_or_else(|| LegacyError::Invalid(format!("vmalloc size {size:#x}")))?;
        if !align.is_power_of_two() {
            return Err(LegacyError::Invalid(format!("alignment {align:#x}")));
        }
        let n = (size / PAGE_SIZE) as usize;
        // The guard page.
        let addr = self
            .kva
            .alloc(size + PAGE_SIZE, align, VMALLOC_START, VMALLOC_END)?;
        let mut pages = Vec::with_capacity(n);
        let got = if zero {
            self.frames.alloc_bulk_zeroed(n, Zone::Normal, &mut pages)
        } else {
            self.frames.alloc_bulk(n, Zone::Normal, &mut pages)
        };
        if got.is_err() {
            let _ = self.kva.abandon(addr);
            return Err(LegacyError::OutOfMemory);
        }
        if let Err(e) =
            va(addr).and_then(|v| self.space.map(v, &pages, page_kernel()).map_err(map_err))
        {
            let _ = self.frames.free_bulk(&pages);
            let _ = self.kva.abandon(addr);
            return Err(e);
        }
        self.kva.set_vm(addr, Vm::Alloc(pages))?;
        self.vmalloc_pages.fetch_add(n as u64, Ordering::Relaxed);
        Ok(addr)
    }

    /// Unmap a detached area (no flush: the purge flushes).
    fn unmap(&self, start: u64, end: u64) -> Result<(), LegacyError> {
        self.space
            .unmap(va(start)?, end - start, |_, _| {})
            .map(|_| ())
            .map_err(map_err)
    }

    /// Translate `addr` for an access.
    fn phys(&self, addr: u64, write: bool) -> Result<PhysAddr, LegacyError> {
        let t = self
            .space
            .translate(va(addr)?)
            .ok_or(LegacyError::Fault { addr })?;
        if write && !t.flags.contains(PageTableFlags::WRITABLE) {
            return Err(LegacyError::Fault { addr });
        }
        Ok(t.pa)
    }

    /// `vmalloc(size)`: map `size` bytes (rounded up to pages) of fresh frames, page aligned,
    /// followed by an unmapped guard page.
    pub fn vmalloc(&self, size: u64) -> Result<u64, LegacyError> {
        // 3.x vmalloc() -> __vmalloc_node(size, 1, ..): alignment 1.
        self.vmalloc_node_range(size, 1, false)
    }

    /// `__vmalloc_node(size, align, GFP_KERNEL | __GFP_ZERO, ..)`: zeroed frames, the range
    /// aligned to `align` (a power of two).
    pub fn vmalloc_align(&self, size: u64, align: u64) -> Result<u64, LegacyError> {
        self.vmalloc_node_range(size, align, true)
    }

    /// `vfree(addr)`: unmap at once, free the frames; the range is reused after a lazy purge.
    pub fn vfree(&self, addr: u64) -> Result<(), LegacyError> {
        let (vm, d) = self.kva.take_vm(addr, |v| matches!(v, Vm::Alloc(_)))?;
        let unmapped = self.unmap(d.start(), d.end());
        self.kva.free_lazy(d);
        let freed = match vm {
            Vm::Alloc(pages) => {
                self.vmalloc_pages
                    .fetch_sub(pages.len() as u64, Ordering::Relaxed);
                self.frames
                    .free_bulk(&pages)
                    .map(|_| ())
                    .map_err(|e| LegacyError::Other(e.to_string()))
            }
            Vm::Ram(_) => Ok(()),
        };
        unmapped.and(freed)
    }

    /// Store one byte through the mapping (`*(u8 *)addr = value`).
    pub fn write_byte(&self, addr: u64, value: u8) -> Result<(), LegacyError> {
        let pa = self.phys(addr, true)?;
        self.frames
            .arena()
            .write(pa, &[value])
            .map_err(|e| LegacyError::Other(e.to_string()))
    }

    /// Load one byte through the mapping.
    pub fn read_byte(&self, addr: u64) -> Result<u8, LegacyError> {
        let pa = self.phys(addr, false)?;
        let mut b = [0u8];
        self.frames
            .arena()
            .read(pa, &mut b)
            .map_err(|e| LegacyError::Other(e.to_string()))?;
        Ok(b[0])
    }

    /// `alloc_pages_bulk`: `count` frames for [`Legacy::vm_map_ram`] (all or nothing). They
    /// are the caller's until [`Legacy::free_pages`]; the idle check counts them.
    pub fn alloc_pages(&self, count: usize) -> Result<Vec<PhysFrame>, LegacyError> {
        if count == 0 {
            return Err(LegacyError::Invalid("alloc_pages(0)".into()));
        }
        let mut v = Vec::with_capacity(count);
        self.frames
            .alloc_bulk(count, Zone::Normal, &mut v)
            .map_err(|_| LegacyError::OutOfMemory)?;
        self.batch_pages.fetch_add(count as u64, Ordering::Relaxed);
        Ok(v)
    }

    /// Return frames from [`Legacy::alloc_pages`] (unmapped first with
    /// [`Legacy::vm_unmap_ram`]).
    pub fn free_pages(&self, pages: &[PhysFrame]) -> Result<(), LegacyError> {
        self.batch_pages
            .fetch_sub(pages.len() as u64, Ordering::Relaxed);
        self.frames
            .free_bulk(pages)
            .map(|_| ())
            .map_err(|e| LegacyError::Other(e.to_string()))
    }

    /// `vm_map_ram(pages, count)`: map every frame of `frames` at a fresh virtual range (no
    /// guard page).
    pub fn vm_map_ram(&self, frames: &[PhysFrame]) -> Result<u64, LegacyError> {
        if frames.is_empty() {
            return Err(LegacyError::Invalid("vm_map_ram of no page".into()));
        }
        let size = frames.len() as u64 * PAGE_SIZE;
        let addr = self
            .kva
            .alloc(size, PAGE_SIZE, VMALLOC_START, VMALLOC_END)?;
        if let Err(e) =
            va(addr).and_then(|v| self.space.map(v, frames, page_kernel()).map_err(map_err))
        {
            let _ = self.kva.abandon(addr);
            return Err(e);
        }
        self.kva.set_vm(addr, Vm::Ram(frames.len()))?;
        Ok(addr)
    }

    /// `vm_unmap_ram(addr, count)`: unmap a range returned by [`Legacy::vm_map_ram`] for
    /// `count` frames (the frames stay the caller's).
    pub fn vm_unmap_ram(&self, addr: u64, count: usize) -> Result<(), LegacyError> {
        let (_, d) = self
            .kva
            .take_vm(addr, |v| matches!(v, Vm::Ram(c) if *c == count))?;
        let unmapped = self.unmap(d.start(), d.end());
        self.kva.free_lazy(d);
        unmapped
    }

    /// Synchronous purge (`vm_unmap_aliases` + `purge_vmap_area_lazy`): every lazily freed
    /// range is flushed and reusable afterwards.
    pub fn purge(&self) {
        // vm_unmap_aliases() + purge_vmap_area_lazy(): no vmap blocks here, so one purge.
        self.kva.purge_vmap_area_lazy();
    }

    /// Counters right now.
    pub fn stats(&self) -> LegacyStats {
        LegacyStats {
            tlb: self.tlb.stats(),
            kva: self.kva.stats(),
            frames: self.frames.stats(),
        }
    }

    /// Invariant check for an idle instance (no call in flight, every allocation freed, after
    /// [`Legacy::purge`]): the KVA allocator's consistency check, nothing busy, nothing lazy,
    /// every frame handed out returned, no mapping left in the vmalloc range, and (once the
    /// range's empty page tables are freed) exactly the frames construction used. An `Err`
    /// ([`LegacyError::Other`]) describes the first violation found.
    pub fn check_idle(&self) -> Result<(), LegacyError> {
        let fail = |m: String| Err(LegacyError::Other(m));
        self.kva.check_consistency().map_err(LegacyError::Other)?;
        let k = self.kva.stats();
        if k.busy_areas != 0 {
            return fail(format!("{} busy areas left", k.busy_areas));
        }
        if k.lazy_pages != 0 {
            return fail(format!("{} lazy pages left after a purge", k.lazy_pages));
        }
        let (v, b) = (
            self.vmalloc_pages.load(Ordering::Relaxed),
            self.batch_pages.load(Ordering::Relaxed),
        );
        if v != 0 || b != 0 {
            return fail(format!(
                "{v} vmalloc frames and {b} page-batch frames not returned"
            ));
        }
        let (start, len) = (va(VMALLOC_START)?, VMALLOC_END - VMALLOC_START);
        if let Some(m) = self.space.mappings(start, len).next() {
            return fail(format!("mapping left at {:#x}", m.va.as_u64()));
        }
        // Every frame back: free the now empty page tables of the range (nothing maps there
        // while idle), then the count must be what construction left.
        self.space.clean_up(start, len).map_err(map_err)?;
        let used = self.frames.stats().used;
        if used != self.baseline_frames {
            return fail(format!(
                "{used} frames in use when idle, {} after construction",
                self.baseline_frames
            ));
        }
        Ok(())
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    fn legacy() -> Legacy {
        Legacy::new(64 << 20).unwrap()
    }

    #[test]
    fn vmalloc_write_read_vfree() {
        let l = legacy();
        let a = l.vmalloc(3 * PAGE_SIZE).unwrap();
        assert_eq!(a % PAGE_SIZE, 0);
        l.write_byte(a + 2 * PAGE_SIZE + 5, 0xab).unwrap();
        assert_eq!(l.read_byte(a + 2 * PAGE_SIZE + 5).unwrap(), 0xab);
        // The guard page is not mapped.
        assert_eq!(
            l.write_byte(a + 3 * PAGE_SIZE, 1),
            Err(LegacyError::Fault {
                addr: a + 3 * PAGE_SIZE
            })
        );
        l.vfree(a).unwrap();
        assert!(matches!(l.vfree(a), Err(LegacyError::NotFound { .. })));
        assert_eq!(l.write_byte(a, 1), Err(LegacyError::Fault { addr: a }));
        l.purge();
        l.check_idle().unwrap();
        assert_eq!(l.stats().tlb.flushes, 1);
    }

    #[test]
    fn zeroing_alignment_and_map_ram() {
        let l = legacy();
        let a = l.vmalloc(PAGE_SIZE).unwrap();
        l.write_byte(a, 7).unwrap();
        l.vfree(a).unwrap();
        l.purge();
        let b = l.vmalloc_align(PAGE_SIZE, 1 << 20).unwrap();
        assert_eq!(b % (1 << 20), 0);
        assert_eq!(l.read_byte(b).unwrap(), 0);
        l.vfree(b).unwrap();
        let pages = l.alloc_pages(2).unwrap();
        let v = l.vm_map_ram(&pages).unwrap();
        l.write_byte(v + PAGE_SIZE, 9).unwrap();
        assert!(l.vm_unmap_ram(v, 1).is_err(), "wrong count");
        assert!(l.vfree(v).is_err(), "wrong kind");
        l.vm_unmap_ram(v, 2).unwrap();
        l.free_pages(&pages).unwrap();
        l.purge();
        l.check_idle().unwrap();
    }

    #[test]
    fn huge_requests_fail_cleanly() {
        let l = legacy();
        assert!(matches!(l.vmalloc(0), Err(LegacyError::Invalid(_))));
        assert!(matches!(l.vmalloc(u64::MAX), Err(LegacyError::Invalid(_))));
        assert!(matches!(l.vmalloc(1 << 40), Err(LegacyError::Invalid(_))));
        assert!(matches!(
            l.vmalloc_align(PAGE_SIZE, 1 << 63),
            Err(LegacyError::NoSpace { .. })
        ));
        // More frames than the arena has left: out of memory, nothing leaked.
        let total = l.stats().frames.total;
        assert_eq!(
            l.vmalloc((total - 1) * PAGE_SIZE),
            Err(LegacyError::OutOfMemory)
        );
        l.purge();
        l.check_idle().unwrap();
    }

    #[test]
    fn leaks_fail_the_idle_check() {
        let l = legacy();
        let a = l.vmalloc(PAGE_SIZE).unwrap();
        l.purge();
        assert!(l.check_idle().is_err());
        l.vfree(a).unwrap();
        l.purge();
        l.check_idle().unwrap();
    }
}
