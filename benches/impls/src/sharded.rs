//! `sharded` and `single-lock`: the `vmalloc` crate behind [`VmallocImpl`].
//!
//! Both are a [`Vmalloc`] built from [`VmallocConfig::default`] (x86_64 vmalloc range,
//! mmap-backed arena at physical 0, Linux's lazy threshold, background purge workers) with two
//! changes shared with `legacy` so that a comparison measures the KVA layer only: the arena
//! size comes from the runner, and the TLB is a [`TlbChoice::Counting`] flush (the default
//! software TLB model would add its per-CPU cache locking to every access). `single-lock`
//! replaces the KVA configuration by [`KvaConfig::single_lock`] (one shard, no per-CPU
//! caches: the Linux 5.2 design).
//!
//! The mapping calls are the kernel test's: `vmalloc`, `vmalloc_huge(size, GFP_KERNEL)` (with
//! `use_huge`), `__vmalloc_node_range(size, align,
//! VMALLOC_START, VMALLOC_END, GFP_KERNEL | __GFP_ZERO, PAGE_KERNEL)` for the aligned tests,
//! `vfree`, `vm_map_ram(pages, NUMA_NO_NODE, PAGE_KERNEL)`, `vm_unmap_ram`. A one-byte store
//! is a page-table walk plus an arena write, exactly as in `legacy` (the kernel test's
//! `*p = 1` goes through the MMU, not through `vwrite`'s area lookup).
//!
//! `batch_pages` (a `Relaxed` atomic) counts frames handed out by `alloc_pages`, for the idle
//! check; everything else is the `vmalloc` crate's state and locking.

use std::sync::atomic::{AtomicU64, Ordering};

use pagetable::Zone;
use pagetable::{PhysAddr, VirtAddr};
use vmalloc::{
    Gfp, KvaConfig, PAGE_KERNEL, TlbChoice, VmFlags, Vmalloc, VmallocConfig, VmallocError,
};

use super::{ImplConfig, ImplError, ImplStats, InstanceId, PageBatch, VmallocImpl};

/// The `vmalloc` crate as a [`VmallocImpl`].
pub struct ShardedImpl {
    id: InstanceId,
    vm: Vmalloc,
    name: &'static str,
    batch_pages: AtomicU64,
}

impl From<VmallocError> for ImplError {
    fn from(e: VmallocError) -> Self {
        match e {
            VmallocError::NoSpace { size, align, .. }
            | VmallocError::TooLarge { size, align, .. } => ImplError::NoSpace { size, align },
            VmallocError::OutOfMemory { .. }
            | VmallocError::Frame(_)
            | VmallocError::Map(pagetable::MapError::OutOfFrames) => ImplError::OutOfMemory,
            VmallocError::InvalidSize { .. }
            | VmallocError::InvalidAlign { .. }
            | VmallocError::InvalidRange { .. } => ImplError::Invalid(e.to_string()),
            VmallocError::NotAllocated { addr }
            | VmallocError::NotStartOfArea { addr, .. }
            | VmallocError::DoubleFree { addr } => ImplError::NotFound { addr },
            e => ImplError::Backend(e.to_string()),
        }
    }
}

/// An address as a `VirtAddr` (interface input: checked).
fn va(addr: u64) -> Result<VirtAddr, ImplError> {
    VirtAddr::try_new(addr).map_err(|e| ImplError::Invalid(e.to_string()))
}

impl ShardedImpl {
    /// Build the default instance (`single_lock = false`) or the one-shard one.
    pub fn new(cfg: &ImplConfig, single_lock: bool) -> Result<Self, ImplError> {
        let mut c = VmallocConfig::default();
        c.arena.size = cfg.arena_bytes;
        c.tlb = TlbChoice::Counting;
        if single_lock {
            c.kva = KvaConfig::single_lock(c.kva.start, c.kva.end);
        }
        let vm = Vmalloc::new(c)?;
        Ok(Self {
            id: InstanceId::fresh(),
            vm,
            name: if single_lock {
                "single-lock"
            } else {
                "sharded"
            },
            batch_pages: AtomicU64::new(0),
        })
    }

    /// The instance (for benchmarks that want the full API).
    pub fn vmalloc_instance(&self) -> &Vmalloc {
        &self.vm
    }

    /// Translate `addr` for an access.
    fn phys(&self, addr: u64, write: bool) -> Result<PhysAddr, ImplError> {
        let t = self
            .vm
            .kernel_space()
            .translate(va(addr)?)
            .ok_or(ImplError::Fault { addr })?;
        if write && !t.flags.contains(pagetable::PageTableFlags::WRITABLE) {
            return Err(ImplError::Fault { addr });
        }
        Ok(t.pa)
    }
}

impl VmallocImpl for ShardedImpl {
    fn name(&self) -> &'static str {
        self.name
    }

    fn vmalloc(&self, size: u64) -> Result<u64, ImplError> {
        Ok(self.vm.vmalloc(size)?.as_u64())
    }

    fn vmalloc_huge(&self, size: u64) -> Result<u64, ImplError> {
        Ok(self.vm.vmalloc_huge(size, Gfp::KERNEL)?.as_u64())
    }

    fn vmalloc_align(&self, size: u64, align: u64) -> Result<u64, ImplError> {
        let (start, end) = self.vm.range();
        let a = self.vm.vmalloc_node_range(
            size,
            align,
            start,
            end,
            Gfp::ZERO,
            PAGE_KERNEL,
            VmFlags::empty(),
            None,
        )?;
        Ok(a.as_u64())
    }

    fn vfree(&self, addr: u64) -> Result<(), ImplError> {
        Ok(self.vm.vfree(va(addr)?)?)
    }

    fn write_byte(&self, addr: u64, value: u8) -> Result<(), ImplError> {
        let pa = self.phys(addr, true)?;
        self.vm
            .frames()
            .arena()
            .write(pa, &[value])
            .map_err(|e| ImplError::Backend(e.to_string()))
    }

    fn read_byte(&self, addr: u64) -> Result<u8, ImplError> {
        let pa = self.phys(addr, false)?;
        let mut b = [0u8];
        self.vm
            .frames()
            .arena()
            .read(pa, &mut b)
            .map_err(|e| ImplError::Backend(e.to_string()))?;
        Ok(b[0])
    }

    fn alloc_pages(&self, count: usize) -> Result<PageBatch, ImplError> {
        if count == 0 {
            return Err(ImplError::Invalid("alloc_pages(0)".into()));
        }
        let mut v = Vec::with_capacity(count);
        self.vm
            .frames()
            .alloc_bulk(count, Zone::Normal, &mut v)
            .map_err(|_| ImplError::OutOfMemory)?;
        self.batch_pages.fetch_add(count as u64, Ordering::Relaxed);
        Ok(PageBatch::new(self.id, v))
    }

    fn free_pages(&self, pages: PageBatch) -> Result<(), ImplError> {
        let v = pages.into_frames_for(self.id).map_err(|(_, e)| e)?;
        self.batch_pages
            .fetch_sub(v.len() as u64, Ordering::Relaxed);
        self.vm
            .frames()
            .free_bulk(&v)
            .map(|_| ())
            .map_err(|e| ImplError::Backend(e.to_string()))
    }

    fn vm_map_ram(&self, pages: &PageBatch) -> Result<u64, ImplError> {
        let frames = pages.frames_for(self.id)?;
        Ok(self.vm.vm_map_ram(frames, None, PAGE_KERNEL)?.as_u64())
    }

    fn vm_unmap_ram(&self, addr: u64, count: usize) -> Result<(), ImplError> {
        Ok(self.vm.vm_unmap_ram(va(addr)?, count)?)
    }

    fn purge(&self) {
        self.vm.vm_unmap_aliases();
        self.vm.purge_vmap_area_lazy();
    }

    fn stats(&self) -> ImplStats {
        let s = self.vm.stats();
        ImplStats {
            // The TLB's own counters, as `legacy` reports them.
            tlb_flushes: s.tlb.flushes,
            full_flushes: s.tlb.full_flushes,
            pages_flushed: s.tlb.pages_flushed,
            lazy_pages: s.lazy_pages as u64,
            purges: s.purges,
            live_areas: s.nr_areas as u64,
            frames_used: s.frames_used,
            frames_total: s.frames_total,
        }
    }

    fn check_idle(&self) -> Result<(), ImplError> {
        let fail = |m: String| Err(ImplError::Backend(m));
        let b = self.batch_pages.load(Ordering::Relaxed);
        if b != 0 {
            return fail(format!("{b} page-batch frames not returned"));
        }
        // The library's own leak check: purges, then no live area, nothing lazy, no
        // mapping in the range, and (once the empty page tables are freed) every frame back.
        self.vm
            .check_idle()
            .map_err(|e| ImplError::Backend(e.to_string()))?;
        let s = self.vm.stats();
        if s.deferred_errors != 0 {
            return fail(format!("{} failed deferred frees", s.deferred_errors));
        }
        Ok(())
    }
}
