//! `vread` / `vwrite`: copy bytes from / to the vmalloc range "in a safe way", as Linux 3.7's
//! `/dev/kmem` helpers do.
//!
//! How it works and what is a hole: see [`Vmalloc::vread`] (what users rely on). For
//! maintainers: `Inner::access` walks the areas, `copy_piece` does one page piece.
//!
//! Concurrency: see the end of [`Vmalloc::vread`]'s documentation.

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::platform::Platform;
use pagetable::{PAGE_SIZE, VirtAddr};

use crate::instance::{Inner, Vmalloc};
use crate::kva::area::VmArea;
use crate::kva::flags::VmFlags;
use crate::valloc::usable_end;
use crate::vmap_block::VMAP_BLOCK_SIZE;

/// The buffer of a copy: read into or write from.
enum Buf<'a> {
    Read(&'a mut [u8]),
    Write(&'a [u8]),
}

impl Buf<'_> {
    fn len(&self) -> usize {
        match self {
            Buf::Read(b) => b.len(),
            Buf::Write(b) => b.len(),
        }
    }

    /// A hole at `[from, to)` of the buffer: zeros when reading, nothing when writing.
    fn hole(&mut self, from: usize, to: usize) {
        if let Buf::Read(b) = self {
            b[from..to].fill(0);
        }
    }
}

impl<P: Platform> Vmalloc<P> {
    /// `vread(addr, buf)`: read `buf.len()` bytes at `addr` from the vmalloc range "in a safe
    /// way", as Linux 3.7's `/dev/kmem` helper does: holes read as zeros. Returns
    /// `buf.len()`, or 0 (buffer untouched) if the range intersects no live area.
    ///
    /// The live areas intersecting `[addr, addr + len)` are found (one lookup when the range
    /// lies inside one area, the common case; otherwise a walk of every live area in address
    /// order). Then, page piece by page piece:
    ///
    /// * bytes in no area, in a guard page, in an `ioremap` or `vmap_pfn` area (device
    ///   memory: reading it has side effects), in an unmapped page of an area, or in a page
    ///   of a vmap block that belongs to no live `vm_map_ram` piece are holes: `vread`
    ///   zero-fills them, [`vwrite`](Vmalloc::vwrite) skips them;
    /// * other bytes are copied as the calling CPU would access them, **through the
    ///   installed TLB** when it has a translation cache: the
    ///   [`TlbModel`] of [`TlbChoice::Model`](crate::TlbChoice::Model),
    ///   or the one a [`TlbChoice::Custom`](crate::TlbChoice::Custom) hook exposes through
    ///   [`TlbFlush::as_model`] (a hook that wraps a model
    ///   to count or delay its flushes). So a translation that CPU still caches is used
    ///   exactly as hardware would, 2 MiB leaves included. A TLB without a software cache
    ///   ([`TlbChoice::Counting`](crate::TlbChoice::Counting), a kernel's shootdown hook)
    ///   has nothing to go through: the page tables are walked, as the MMU does on a miss.
    ///
    /// **The calling CPU** is `Platform::this_cpu()` taken modulo the instance's CPU count
    /// ([`Kva::nr_cpus`](crate::Kva::nr_cpus), [`KvaConfig::nr_cpus`](crate::KvaConfig)),
    /// as for every per-CPU structure of the instance; the built-in model has exactly that
    /// many CPUs, so thread ids beyond it share the model's CPUs the way they share the
    /// instance's CPU slots. A custom model with fewer CPUs is used modulo its own count.
    ///
    /// Reading or writing an area that another thread frees at the same time is a use after
    /// free by the caller, as in Linux: memory safe (arena accesses are atomic words), but it
    /// may read zeros or write into the freed frames. No lock is taken beyond the `Kva`'s
    /// lookups and the TLB model's per-CPU lock.
    ///
    #[cfg_attr(feature = "std", doc = "[`TlbModel`]: pagetable::TlbModel")]
    #[cfg_attr(not(feature = "std"), doc = "[`TlbModel`]: crate#features")]
    #[cfg_attr(
        feature = "std",
        doc = "[`TlbFlush::as_model`]: pagetable::TlbFlush::as_model"
    )]
    #[cfg_attr(not(feature = "std"), doc = "[`TlbFlush::as_model`]: crate#features")]
    pub fn vread(&self, addr: VirtAddr, buf: &mut [u8]) -> usize {
        self.v().access(addr, Buf::Read(buf))
    }

    /// `vwrite(addr, data)`: write `data` at `addr` in the vmalloc range; holes (as
    /// [`Vmalloc::vread`] defines them) are skipped. As seed 002 (Linux 3.7) says: returns
    /// `data.len()`, or 0 (nothing written) if the range intersects no live area other than
    /// `ioremap` / `vmap_pfn` ones ("IOREMAP area is treated as memory hole and no copy is
    /// done"); and a read-only page is written, through its frame, as 3.7 writes through
    /// `vmalloc_to_page` and a kernel mapping of the page (the TLB is bypassed for that
    /// page only: the frame is what the read-only mapping shows).
    pub fn vwrite(&self, addr: VirtAddr, data: &[u8]) -> usize {
        self.v().access(addr, Buf::Write(data))
    }
}

impl<P: Platform> Inner<P> {
    fn access(&self, addr: VirtAddr, mut buf: Buf<'_>) -> usize {
        let a = addr.as_u64();
        // Never run past the end of the address space (3.7: `count = -(unsigned long)addr`).
        let len = (buf.len() as u64).min(u64::MAX - a);
        if len == 0 {
            return 0;
        }
        let end = a + len;
        let write = matches!(buf, Buf::Write(_));
        if let Some(area) = self.kva.find(VirtAddr::new_truncate(a)) {
            if a >= area.start && end <= usable_end(&area) {
                if write && is_hole_kind(area.info.flags) {
                    return 0;
                }
                self.copy_area(&area, a, end, a, &mut buf);
                return len as usize;
            }
        }
        // Only the areas that overlap the range (the busy indexes' overlapping iterators):
        // the cost follows the range, not the number of live areas.
        let mut areas = self.kva.busy_overlapping(a, end);
        areas.retain(|ar| a < usable_end(ar));
        if areas.is_empty() || (write && areas.iter().all(|ar| is_hole_kind(ar.info.flags))) {
            return 0;
        }
        let mut pos = a;
        for ar in &areas {
            let s = ar.start.max(pos);
            let e = usable_end(ar).min(end);
            if s >= e {
                continue;
            }
            buf.hole((pos - a) as usize, (s - a) as usize);
            self.copy_area(ar, s, e, a, &mut buf);
            pos = e;
        }
        buf.hole((pos - a) as usize, len as usize);
        len as usize
    }

    /// Copy `[s, e)` (inside `area`'s usable part); `base` is the address of `buf[0]`.
    fn copy_area(&self, area: &VmArea, s: u64, e: u64, base: u64, buf: &mut Buf<'_>) {
        let f = area.info.flags;
        if is_hole_kind(f) {
            buf.hole((s - base) as usize, (e - base) as usize);
            return;
        }
        let block = f.contains(VmFlags::MAP_RAM | VmFlags::UNLIST);
        let cpu = P::this_cpu();
        let mut p = s;
        while p < e {
            let piece_end = ((p / PAGE_SIZE + 1) * PAGE_SIZE).min(e);
            let (from, to) = ((p - base) as usize, (piece_end - base) as usize);
            let ok = (!block || self.blocks.page_live(p & !(VMAP_BLOCK_SIZE - 1), p))
                && self.copy_piece(cpu, p, buf, from, to);
            if !ok {
                buf.hole(from, to);
            }
            p = piece_end;
        }
    }

    /// Copy one piece within a page through the installed TLB's model (or a page walk);
    /// false = hole.
    fn copy_piece(&self, cpu: usize, va: u64, buf: &mut Buf<'_>, from: usize, to: usize) -> bool {
        let v = VirtAddr::new_truncate(va);
        #[cfg(feature = "std")]
        if let Some(m) = self.tlb.as_model() {
            let cpu = cpu % m.nr_cpus();
            let r = match buf {
                Buf::Read(b) => m.read(cpu, &self.space, v, &mut b[from..to]),
                Buf::Write(b) => m.write(cpu, &self.space, v, &b[from..to]),
            };
            return match r {
                Ok(()) => true,
                // 3.7 writes read-only pages through the page itself.
                Err(pagetable::AccessError::WriteProtected { .. }) => {
                    self.walk_copy(v, buf, from, to)
                }
                // Not mapped, or outside the arena: a hole.
                Err(_) => false,
            };
        }
        #[cfg(not(feature = "std"))]
        let _ = cpu;
        self.walk_copy(v, buf, from, to)
    }

    /// Copy one piece through a page-table walk and the frame (any permission: 3.7's
    /// `vmalloc_to_page` + `kmap` path); false = hole.
    fn walk_copy(&self, v: VirtAddr, buf: &mut Buf<'_>, from: usize, to: usize) -> bool {
        let Some(t) = self.space.translate(v) else {
            return false;
        };
        let arena = self.frames.arena();
        match buf {
            Buf::Read(b) => arena.read(t.pa, &mut b[from..to]).is_ok(),
            Buf::Write(b) => arena.write(t.pa, &b[from..to]).is_ok(),
        }
    }
}

/// Areas `vread` / `vwrite` treat as holes: device memory (`ioremap`, `vmap_pfn`).
#[inline]
fn is_hole_kind(flags: VmFlags) -> bool {
    flags.contains(VmFlags::IOREMAP)
}
