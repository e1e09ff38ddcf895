//! `/proc/vmallocinfo` ([`Vmalloc::vmallocinfo`]) and the `/proc/meminfo` vmalloc lines plus
//! allocator counters ([`Vmalloc::stats`], [`VmallocStats`]).
//!
//! How it works: both walk the live areas with `Kva::for_each_busy` and read the counters of
//! the `Kva`, the TLB and the frame allocator; what that means for consistency is in
//! [`Vmalloc::stats`]'s documentation.

#[allow(unused_imports)]
use crate::prelude::*;
use core::fmt;
use core::fmt::Write as _;
use pagetable::platform::Platform;

use pagetable::{FrameStats, PAGE_SIZE, TlbStats};

use crate::instance::Vmalloc;
use crate::kva::KvaStats;
use crate::kva::area::VmArea;
use crate::kva::flags::VmFlags;
use crate::sync::Ordering;

/// The vmalloc figures of `/proc/meminfo` and the counters behind them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmallocStats {
    /// `VmallocTotal`, kB: Linux's `VMALLOC_TOTAL = VMALLOC_END - VMALLOC_START` with its
    /// inclusive `VMALLOC_END`, one byte short of the range (so 32 TiB prints as
    /// 34359738367 kB, as on every x86_64 machine).
    pub vmalloc_total_kb: u64,
    /// `VmallocUsed`: pages of `vmalloc`-family areas, kB (Linux 4.x+ meaning).
    pub vmalloc_used_kb: u64,
    /// The largest free range, kB: `VmallocChunk` as Linux 3.7 computed it. Linux 4.4+
    /// prints `VmallocChunk: 0 kB` (the walk was too costly), and so does
    /// [`Vmalloc::meminfo`]; the figure stays here for callers who want it.
    pub vmalloc_chunk_kb: u64,
    /// Live areas (of every kind, vmap blocks included).
    pub nr_areas: usize,
    /// Bytes of live areas, guard pages included.
    pub area_bytes: u64,
    /// Live vmap blocks (`vm_map_ram`).
    pub vmap_blocks: usize,
    /// Pages waiting for a purge (on the lazy lists and in the per-CPU lazy batches).
    pub lazy_pages: usize,
    /// Purges done so far.
    pub purges: u64,
    /// TLB shootdowns requested (lazy purges and `vm_unmap_aliases`).
    pub tlb_flushes: u64,
    /// Of those, full flushes (ranges over the single-page ceiling).
    pub tlb_full_flushes: u64,
    /// Pages covered by the lazy purges' flushes (their union ranges).
    pub pages_flushed: u64,
    /// Frames allocated (data pages and page tables).
    pub frames_used: u64,
    /// Frames in the arena.
    pub frames_total: u64,
    /// `vfree_atomic` frees that failed when run (bad address).
    pub deferred_errors: u64,
    /// Everything the KVA allocator counts.
    pub kva: KvaStats,
    /// Everything the TLB counts.
    pub tlb: TlbStats,
    /// Everything the frame allocator counts.
    pub frames: FrameStats,
}

impl fmt::Display for VmallocStats {
    /// The three `/proc/meminfo` lines as Linux 6.x prints them (`show_val_kb`: the label
    /// padded to 16 columns, the value right-aligned in 8, ` kB`; `VmallocChunk` is 0).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "VmallocTotal:   {:>8} kB", self.vmalloc_total_kb)?;
        writeln!(f, "VmallocUsed:    {:>8} kB", self.vmalloc_used_kb)?;
        writeln!(f, "VmallocChunk:   {:>8} kB", 0)
    }
}

/// One `/proc/vmallocinfo` line for `a` (without the newline).
pub fn vmallocinfo_line(a: &VmArea) -> String {
    let mut s = String::with_capacity(96);
    let f = a.info.flags;
    // Writing into a String cannot fail.
    let _ = write!(s, "0x{:016x}-0x{:016x} {:7}", a.start, a.end, a.size());
    if f.contains(VmFlags::MAP_RAM) {
        s.push_str(" vm_map_ram");
        return s;
    }
    let _ = write!(s, " {}:{}", a.info.caller.file(), a.info.caller.line());
    if a.info.nr_pages != 0 {
        let _ = write!(s, " pages={}", a.info.nr_pages);
    }
    if let Some(p) = a.info.phys_addr {
        // `%pa`: a phys_addr_t as `0x` and 16 hex digits.
        let _ = write!(s, " phys=0x{p:016x}");
    }
    for (flag, name) in [
        (VmFlags::IOREMAP, " ioremap"),
        (VmFlags::ALLOC, " vmalloc"),
        (VmFlags::MAP, " vmap"),
        (VmFlags::USERMAP, " user"),
        (VmFlags::VPAGES, " vpages"),
    ] {
        if f.contains(flag) {
            s.push_str(name);
        }
    }
    s
}

/// The `/proc/vmallocinfo` line of a lazily freed area not purged yet (without the
/// newline): `0x<start>-0x<end> <size> unpurged vm_area`.
fn unpurged_line(out: &mut String, start: u64, end: u64) {
    let _ = writeln!(
        out,
        "0x{start:016x}-0x{end:016x} {:7} unpurged vm_area",
        end - start
    );
}

impl<P: Platform> Vmalloc<P> {
    /// `/proc/vmallocinfo` as Linux 6.x prints it: one line per live area in address order,
    ///
    /// ```text
    /// 0x<start>-0x<end> <size> <file>:<line> [pages=N] [phys=0x<16 hex>] [ioremap] [vmalloc] [vmap] [user] [vpages]
    /// ```
    ///
    /// with `<start>` and `<end>` as 16 hex digits (`%pK`), the size in bytes (guard page
    /// included) right-aligned in 7 columns (`%7ld`), the caller where Linux prints its
    /// symbol (`%pS`), `pages=` for areas that own pages (`vmalloc`, thread stacks and huge
    /// areas, whose count is in 4 KiB pages; not `vmap`, which records none without
    /// `VM_MAP_PUT_PAGES`), `phys=` as `%pa` prints it, and `vpages` when the page array
    /// would not fit in a page (more than 512 pages), as Linux then vmallocs it.
    /// `vm_map_ram` mappings and vmap blocks print `0x<start>-0x<end> <size> vm_map_ram`.
    /// Last come the lazily freed areas still waiting for a purge, in no particular order,
    /// as `0x<start>-0x<end> <size> unpurged vm_area` (Linux's `show_purge_info`; vmap
    /// blocks retired to the lazy list appear there too).
    pub fn vmallocinfo(&self) -> String {
        let mut out = String::new();
        let v = self.v();
        v.kva.for_each_busy(|a| {
            out.push_str(&vmallocinfo_line(a));
            out.push('\n');
        });
        v.kva.for_each_lazy(|s, e| unpurged_line(&mut out, s, e));
        out
    }

    /// `/proc/meminfo`'s vmalloc lines, as Linux 6.x prints them:
    ///
    /// ```text
    /// VmallocTotal:   34359738367 kB
    /// VmallocUsed:          40 kB
    /// VmallocChunk:          0 kB
    /// ```
    ///
    /// `VmallocTotal` is the size of the range, `VmallocUsed` the pages of `vmalloc`-family
    /// areas (Linux's `vmalloc_nr_pages()`, thread stacks and huge areas included; `vmap`,
    /// `ioremap` and `vm_map_ram` mappings are not counted), `VmallocChunk` 0 as since Linux
    /// 4.4. The [`VmallocStats`] of [`Vmalloc::stats`] printed (`Display`).
    pub fn meminfo(&self) -> String {
        self.stats().to_string()
    }

    /// The `/proc/meminfo` vmalloc figures and the counters of every layer (see
    /// [`VmallocStats`]).
    ///
    /// The live areas are walked with [`Kva::for_each_busy`](crate::Kva::for_each_busy)
    /// (snapshots taken shard by shard, no lock held between them) and the counters of the
    /// `Kva`, the TLB and the frame allocator are read one by one: each figure is exact at
    /// some instant, and together they are consistent only when nothing is allocated or freed
    /// meanwhile. `VmallocUsed` is summed from the areas, as Linux 3.7's `get_vmalloc_info`
    /// walked the `vmlist`: the fast paths keep no counter of their own for it.
    pub fn stats(&self) -> VmallocStats {
        let v = self.v();
        let (mut nr_areas, mut area_bytes, mut vmalloc_pages) = (0usize, 0u64, 0u64);
        v.kva.for_each_busy(|a| {
            nr_areas += 1;
            area_bytes += a.size();
            if a.info.flags.contains(VmFlags::ALLOC) {
                vmalloc_pages += a.info.nr_pages as u64;
            }
        });
        let kva = v.kva.stats();
        let tlb = v.tlb.stats();
        let frames = v.frames.stats();
        VmallocStats {
            vmalloc_total_kb: (v.end - v.start - 1) >> 10,
            vmalloc_used_kb: vmalloc_pages * (PAGE_SIZE >> 10),
            vmalloc_chunk_kb: kva.largest_free >> 10,
            nr_areas,
            area_bytes,
            vmap_blocks: v.blocks.count(),
            lazy_pages: kva.lazy_pages,
            purges: kva.purges,
            tlb_flushes: tlb.flushes,
            tlb_full_flushes: tlb.full_flushes,
            pages_flushed: kva.pages_flushed,
            frames_used: frames.used,
            frames_total: frames.total,
            deferred_errors: v.deferred_errors.load(Ordering::Relaxed),
            kva,
            tlb,
            frames,
        }
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;
    use crate::kva::area::AreaInfo;

    #[test]
    fn line_format_matches_proc() {
        let mut info = AreaInfo::new(VmFlags::ALLOC | VmFlags::USERMAP);
        info.nr_pages = 2;
        let a = VmArea {
            start: 0xffff_c900_0000_0000,
            end: 0xffff_c900_0000_3000,
            info,
        };
        let l = vmallocinfo_line(&a);
        let expect = format!(
            "0xffffc90000000000-0xffffc90000003000   12288 {}:{} pages=2 vmalloc user",
            info.caller.file(),
            info.caller.line()
        );
        assert_eq!(l, expect);
        let mut io = AreaInfo::new(VmFlags::IOREMAP);
        io.phys_addr = Some(0xfee0_0000);
        let l = vmallocinfo_line(&VmArea {
            start: 0x1000,
            end: 0x3000,
            info: io,
        });
        assert!(l.ends_with(" phys=0x00000000fee00000 ioremap"), "{l}");
        let ram = VmArea {
            start: 0x1000,
            end: 0x2000,
            info: AreaInfo::new(VmFlags::MAP_RAM),
        };
        assert_eq!(
            vmallocinfo_line(&ram),
            "0x0000000000001000-0x0000000000002000    4096 vm_map_ram"
        );
    }
}
