//! The leak check: [`Vmalloc::check_idle`] and its error, [`IdleError`].
//!
//! # How it works
//!
//! See [`Vmalloc::check_idle`] (what users rely on): it flushes everything the instance
//! keeps for later (the thread-stack caches, deferred frees, dirty vmap-block pieces, lazy
//! areas), frees the empty page tables of the vmalloc range, and then compares what is left
//! with what construction left. It is what the `test_vmalloc` runner checks after every run.
//!
//! # Locking
//!
//! None of its own; it must run while nothing else uses the instance (a leak check of a
//! busy instance reports the work in flight as leaks, and `clean_up` needs the range idle).

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::VirtAddr;
use pagetable::platform::Platform;

use crate::instance::Vmalloc;

/// What [`Vmalloc::check_idle`] found left over. Each variant says what and how much.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdleError {
    /// The KVA allocator's own consistency check failed.
    #[error("KVA bookkeeping is inconsistent: {0}")]
    Inconsistent(String),
    /// Live areas remain (early areas not counted).
    #[error("{count} live areas left (the first at {first:#x}: {line})")]
    LiveAreas {
        /// How many.
        count: usize,
        /// Start of the lowest one.
        first: u64,
        /// Its `vmallocinfo` line.
        line: String,
    },
    /// Lazily freed pages still wait after a purge (something keeps re-freeing, or a purge
    /// lost areas).
    #[error("{pages} lazily freed pages left after a purge")]
    LazyPages {
        /// Pages still counted as lazy.
        pages: usize,
    },
    /// A page of the vmalloc range is still mapped outside every early area.
    #[error("a mapping is left at {addr:#x}")]
    Mapped {
        /// The lowest mapped address found.
        addr: u64,
    },
    /// More frames are in use than right after construction (page tables of the range
    /// included, once the empty ones are freed).
    #[error("{used} frames in use when idle, {expected} after construction")]
    Frames {
        /// Frames in use now.
        used: u64,
        /// Frames in use right after construction.
        expected: u64,
    },
}

impl<P: Platform> Vmalloc<P> {
    /// Is anything leaked? The check a test (or the `test_vmalloc` runner) makes once
    /// everything it allocated was freed: `Ok(())` means no live area, nothing lazy, no
    /// mapping in the vmalloc range, and every frame back.
    ///
    /// In order: the per-CPU thread-stack caches are emptied
    /// ([`Vmalloc::free_vm_stack_cache`]), the queued `vfree_atomic`s run, the dirty
    /// vmap-block pieces and every lazy area are flushed and purged
    /// ([`Vmalloc::vm_unmap_aliases`] and [`Vmalloc::purge_vmap_area_lazy`]); then the KVA
    /// allocator's consistency check must pass, no area may be live except the early ones
    /// ([`IdleError::LiveAreas`]), no page may be lazy ([`IdleError::LazyPages`]) or mapped
    /// outside the early areas ([`IdleError::Mapped`]); finally the page tables of the range
    /// that hold nothing are freed ([`AddressSpace::clean_up`](pagetable::AddressSpace::clean_up),
    /// as the kernel's page tables of a quiet vmalloc range would be) and the frames in use
    /// must be exactly those after construction ([`IdleError::Frames`]).
    ///
    /// Call it only while nothing else uses the instance. Frames the caller took from
    /// [`Vmalloc::frames`] itself (for `vmap` or `vm_map_ram`) count as in use: give them back
    /// first. Failed `vfree_atomic`s are not leaks (nothing was freed); see
    /// [`Vmalloc::take_vfree_atomic_errors`].
    pub fn check_idle(&self) -> Result<(), IdleError> {
        self.free_vm_stack_cache();
        let v = self.v();
        v.kva.drain_deferred();
        self.vm_unmap_aliases();
        self.purge_vmap_area_lazy();
        v.kva.check_invariants().map_err(IdleError::Inconsistent)?;
        let early = |a: u64| v.early.iter().any(|e| e.contains(a));
        let (mut count, mut first) = (0usize, None);
        v.kva.for_each_busy(|a| {
            if !early(a.start) {
                count += 1;
                if first.is_none() {
                    first = Some(*a);
                }
            }
        });
        if let Some(a) = first {
            return Err(IdleError::LiveAreas {
                count,
                first: a.start,
                line: crate::info::vmallocinfo_line(&a),
            });
        }
        let lazy = v.kva.stats().lazy_pages;
        if lazy != 0 {
            return Err(IdleError::LazyPages { pages: lazy });
        }
        let (start, end) = (VirtAddr::new_truncate(v.start), v.end - v.start);
        if let Some(m) = v.space.mappings(start, end).find(|m| !early(m.va.as_u64())) {
            return Err(IdleError::Mapped {
                addr: m.va.as_u64(),
            });
        }
        // Nothing is mapped outside the early areas and nobody uses the range: its empty
        // tables can go (`clean_up` keeps every table that still holds an entry).
        let _ = v.space.clean_up(start, end);
        let used = v.frames.stats().used;
        if used != v.frames_at_build {
            return Err(IdleError::Frames {
                used,
                expected: v.frames_at_build,
            });
        }
        Ok(())
    }
}
