//! `legacy`: the `vmalloc-legacy` crate (seed 003's Linux 3.x vmalloc) behind [`VmallocImpl`].
//!
//! [`Legacy`] already offers the kernel test's calls with the same meaning (`vmalloc` with
//! alignment 1, the zeroing `__vmalloc_node` for the aligned tests, `vfree`, `vm_map_ram` as
//! 3.x's large-count path, a page-table walk plus an arena write for a one-byte store) over the
//! same `pagetable` crate as `sharded`, with a counting TLB flush. This adapter adds what the
//! interface asks of every implementation: [`PageBatch`] ownership (a batch of another
//! instance is refused before [`Legacy`] sees it), the error mapping and the common counters.
//!
//! No state of its own beyond the instance's identity; the locking is `vmalloc-legacy`'s.

use vmalloc_legacy::{Legacy, LegacyError};

use crate::{ImplConfig, ImplError, ImplStats, InstanceId, PageBatch, VmallocImpl};

/// The `vmalloc-legacy` crate as a [`VmallocImpl`].
pub struct LegacyImpl {
    id: InstanceId,
    inner: Legacy,
}

impl From<LegacyError> for ImplError {
    fn from(e: LegacyError) -> Self {
        match e {
            LegacyError::NoSpace { size, align } => ImplError::NoSpace { size, align },
            LegacyError::OutOfMemory => ImplError::OutOfMemory,
            LegacyError::Invalid(m) => ImplError::Invalid(m),
            LegacyError::NotFound { addr } => ImplError::NotFound { addr },
            LegacyError::Fault { addr } => ImplError::Fault { addr },
            LegacyError::Other(m) => ImplError::Backend(m),
        }
    }
}

impl LegacyImpl {
    /// A legacy instance over a fresh mmap-backed arena of `cfg.arena_bytes`.
    pub fn new(cfg: &ImplConfig) -> Result<Self, ImplError> {
        Ok(Self {
            id: InstanceId::fresh(),
            inner: Legacy::new(cfg.arena_bytes)?,
        })
    }

    /// The instance (for benchmarks that want its own counters, the KVA walk steps among them).
    pub fn legacy_instance(&self) -> &Legacy {
        &self.inner
    }
}

impl VmallocImpl for LegacyImpl {
    fn name(&self) -> &'static str {
        "legacy"
    }

    fn vmalloc(&self, size: u64) -> Result<u64, ImplError> {
        Ok(self.inner.vmalloc(size)?)
    }

    fn vmalloc_align(&self, size: u64, align: u64) -> Result<u64, ImplError> {
        Ok(self.inner.vmalloc_align(size, align)?)
    }

    fn vfree(&self, addr: u64) -> Result<(), ImplError> {
        Ok(self.inner.vfree(addr)?)
    }

    fn write_byte(&self, addr: u64, value: u8) -> Result<(), ImplError> {
        Ok(self.inner.write_byte(addr, value)?)
    }

    fn read_byte(&self, addr: u64) -> Result<u8, ImplError> {
        Ok(self.inner.read_byte(addr)?)
    }

    fn alloc_pages(&self, count: usize) -> Result<PageBatch, ImplError> {
        Ok(PageBatch::new(self.id, self.inner.alloc_pages(count)?))
    }

    fn free_pages(&self, pages: PageBatch) -> Result<(), ImplError> {
        let v = pages.into_frames_for(self.id).map_err(|(_, e)| e)?;
        Ok(self.inner.free_pages(&v)?)
    }

    fn vm_map_ram(&self, pages: &PageBatch) -> Result<u64, ImplError> {
        Ok(self.inner.vm_map_ram(pages.frames_for(self.id)?)?)
    }

    fn vm_unmap_ram(&self, addr: u64, count: usize) -> Result<(), ImplError> {
        Ok(self.inner.vm_unmap_ram(addr, count)?)
    }

    fn purge(&self) {
        self.inner.purge();
    }

    fn stats(&self) -> ImplStats {
        let s = self.inner.stats();
        ImplStats {
            tlb_flushes: s.tlb.flushes,
            full_flushes: s.tlb.full_flushes,
            pages_flushed: s.tlb.pages_flushed,
            lazy_pages: s.kva.lazy_pages,
            purges: s.kva.purges,
            live_areas: s.kva.busy_areas,
            frames_used: s.frames.used,
            frames_total: s.frames.total,
        }
    }

    fn check_idle(&self) -> Result<(), ImplError> {
        Ok(self.inner.check_idle()?)
    }
}
