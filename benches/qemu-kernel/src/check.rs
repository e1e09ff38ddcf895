//! The idle check after a run, as the hosted runner's: purge everything (`vm_unmap_aliases`,
//! `purge_vmap_area_lazy`), free the vmalloc range's empty page tables (then flush every
//! CPU's TLB, since paging-structure caches may still point at them), and compare with what
//! was live before the run: the same areas, nothing lazy, every frame back.

use alloc::format;
use alloc::string::String;

use pagetable::TlbFlush;
use vmalloc::Vmalloc;

use crate::platform::Kernel;

/// What was live before a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Baseline {
    areas: usize,
    frames: u64,
}

/// Take the baseline (after boot: the APIC mapping and the AP stacks are live).
pub fn baseline(vm: &Vmalloc<Kernel>) -> Baseline {
    let s = vm.stats();
    Baseline {
        areas: s.nr_areas,
        frames: s.frames_used,
    }
}

/// Purge, free empty tables, and check that nothing leaked since `base`.
pub fn idle_check(vm: &Vmalloc<Kernel>, base: Baseline, tlb: &dyn TlbFlush) -> Result<(), String> {
    vm.vm_unmap_aliases();
    vm.purge_vmap_area_lazy();
    let (start, end) = vm.range();
    vm.kernel_space()
        .clean_up(start, end.as_u64().wrapping_sub(start.as_u64()))
        .map_err(|e| format!("clean_up: {e}"))?;
    tlb.flush_all();
    vm.kva().check_invariants()?;
    let s = vm.stats();
    if s.nr_areas != base.areas || s.lazy_pages != 0 {
        return Err(format!(
            "{} areas live (expected {}), {} pages lazy",
            s.nr_areas, base.areas, s.lazy_pages
        ));
    }
    if s.frames_used != base.frames {
        return Err(format!(
            "{} frames used, {} before the run",
            s.frames_used, base.frames
        ));
    }
    Ok(())
}
