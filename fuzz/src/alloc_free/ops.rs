//! The allocating operations of the `alloc_free` target (`vmalloc` family, `vmap`,
//! `get_vm_area`, `alloc_vm_area`, `ioremap`, `vm_map_ram`), each with its exact expected
//! errors, and the dispatch of every operation (the others are in [`super::release`]).
//!
//! Order inside an allocating operation: compute the argument errors the model predicts ->
//! arm a pending failure injection -> call -> `sync` (blocks retired by the failure
//! notifier, purges) -> on success check the new range is free in the model, aligned, inside
//! the window and cached by no CPU, then learn its frames (fresh, distinct) and record it; on
//! failure check the error (a `NoSpace` only if the model has no fit, a frame shortage only
//! if frames are short or a failure was injected) and that no frame leaked.

use pagetable::{FrameError, PageTableFlags, PhysAddr, PhysFrame, Zone};
use vmalloc::{Gfp, PAGE_KERNEL, PAGE_KERNEL_EXEC, PAGE_KERNEL_RO, VmFlags, VmallocError};

use super::model::{Area, Content, FrameM, KVA_END, KVA_START, Kind, PAGE};
use super::{Bits, Handle, Op, Size, World};

/// Flags the vmalloc family accepts (Linux 6.x: every other one, the library's own
/// included, is refused with `InvalidFlags` naming those outside this set).
const VMALLOC_FLAGS: VmFlags = VmFlags::NO_GUARD
    .union(VmFlags::USERMAP)
    .union(VmFlags::ALLOW_HUGE_VMAP);
/// Flags only the vmalloc layer sets.
pub(super) const RESERVED_KINDS: VmFlags = VmFlags::ALLOC
    .union(VmFlags::MAP_RAM)
    .union(VmFlags::EARLY)
    .union(VmFlags::UNINITIALIZED);

/// A vmalloc-family request as the model sees it.
#[derive(Debug, Clone, Copy)]
pub struct Req {
    /// Bytes asked for.
    pub size: u64,
    /// Alignment asked for.
    pub align: u64,
    /// Window.
    pub start: u64,
    /// Window end.
    pub end: u64,
    /// Page flags.
    pub gfp: Gfp,
    /// Protection.
    pub prot: PageTableFlags,
    /// Extra area flags.
    pub flags: VmFlags,
    /// Preferred node.
    pub node: Option<usize>,
}

/// What the KVA allocator does with `(size, align, [vstart, vend))` before searching:
/// the argument error, or the effective alignment and window.
pub fn kva_check(
    req: u64,
    size: u64,
    align: u64,
    vs: u64,
    ve: u64,
) -> Result<(u64, u64, u64), VmallocError> {
    if !align.is_power_of_two() {
        return Err(VmallocError::InvalidAlign { align });
    }
    let align = align.max(PAGE);
    let bad = VmallocError::InvalidRange { start: vs, end: ve };
    if vs >= ve {
        return Err(bad);
    }
    let lo = vs
        .max(KVA_START)
        .checked_next_multiple_of(PAGE)
        .unwrap_or(u64::MAX);
    let hi = ve.min(KVA_END) & !(PAGE - 1);
    if lo >= hi {
        return Err(bad);
    }
    if size > hi - lo {
        return Err(VmallocError::TooLarge {
            size: req,
            align,
            start: lo,
            end: hi,
        });
    }
    Ok((align, lo, hi))
}

/// Whether an area of `size` bytes aligned to `align` fits `[lo, hi)` at all (what decides
/// between the library's `NoSpace` and `TooLarge`).
pub fn aligned_fits(size: u64, align: u64, lo: u64, hi: u64) -> bool {
    lo.checked_next_multiple_of(align.max(1))
        .and_then(|a| a.checked_add(size))
        .is_some_and(|e| e <= hi)
}

/// `ioremap_align`: the size rounded up to a power of two, clamped to [1, 128] pages.
pub(super) fn ioremap_align(size: u64) -> u64 {
    let order = size.max(1).next_power_of_two().trailing_zeros();
    1u64 << order.clamp(12, 19)
}

impl World {
    /// Apply one operation and keep the model in step.
    pub fn apply(&mut self, op: &Op) {
        self.injected = false;
        match *op {
            Op::Vmalloc { size, zero } => {
                let r = Req {
                    size: size.bytes(),
                    align: PAGE,
                    start: KVA_START,
                    end: KVA_END,
                    gfp: if zero { Gfp::ZERO } else { Gfp::KERNEL },
                    prot: PAGE_KERNEL,
                    flags: VmFlags::empty(),
                    node: None,
                };
                self.vmalloc(r, |vm| {
                    if zero {
                        vm.vzalloc(r.size)
                    } else {
                        vm.vmalloc(r.size)
                    }
                });
            }
            Op::VmallocUser(size) => {
                let r = Req {
                    size: size.bytes(),
                    align: PAGE,
                    start: KVA_START,
                    end: KVA_END,
                    gfp: Gfp::ZERO,
                    prot: PAGE_KERNEL,
                    flags: VmFlags::USERMAP,
                    node: None,
                };
                self.vmalloc(r, |vm| vm.vmalloc_user(r.size));
            }
            Op::VmallocApi { which, size, node } => {
                let mut r = Req {
                    size: size.bytes(),
                    align: PAGE,
                    start: KVA_START,
                    end: KVA_END,
                    gfp: Gfp::KERNEL,
                    prot: PAGE_KERNEL,
                    flags: VmFlags::empty(),
                    node: None,
                };
                let node = usize::from(node);
                match which % 6 {
                    0 => {
                        r.gfp = Gfp::DMA32;
                        self.vmalloc(r, |vm| vm.vmalloc_32(r.size));
                    }
                    1 => {
                        r.gfp = Gfp::DMA32 | Gfp::ZERO;
                        r.flags = VmFlags::USERMAP;
                        self.vmalloc(r, |vm| vm.vmalloc_32_user(r.size));
                    }
                    2 => {
                        r.prot = PAGE_KERNEL_EXEC;
                        self.vmalloc(r, |vm| vm.vmalloc_exec(r.size));
                    }
                    3 => {
                        r.node = Some(node);
                        self.vmalloc(r, |vm| vm.vmalloc_node(r.size, node));
                    }
                    4 => {
                        r.gfp = Gfp::ZERO;
                        r.node = Some(node);
                        self.vmalloc(r, |vm| vm.vzalloc_node(r.size, node));
                    }
                    _ => {
                        if node & 1 != 0 {
                            r.gfp |= Gfp::ZERO;
                        }
                        if node & 2 != 0 {
                            r.prot = PAGE_KERNEL_RO;
                        }
                        self.vmalloc(r, |vm| vm.vmalloc_with(r.size, r.gfp, r.prot));
                    }
                }
            }
            Op::NodeRange {
                size,
                align,
                start,
                len,
                bits,
                node,
            } => {
                let r = node_range_req(size, align, start, len, bits, node);
                self.vmalloc(r, |vm| {
                    vm.vmalloc_node_range(
                        r.size,
                        r.align,
                        World::va(r.start),
                        World::va(r.end),
                        r.gfp,
                        r.prot,
                        r.flags,
                        r.node,
                    )
                });
            }
            Op::MapRam {
                count,
                node,
                ro,
                bad_frame,
            } => self.map_ram(usize::from(count) % 101, node, ro, bad_frame),
            Op::Vmap { count, ro, flags } => self.vmap(usize::from(count) % 40, ro, flags),
            Op::GetVmArea { size, bits } => self.get_vm_area(size, bits, false),
            Op::AllocVmArea(size) => self.get_vm_area(size, Bits(1), true),
            Op::Ioremap { phys, off, size } => self.ioremap(phys, off, size),
            Op::Cpu(n) => {
                let n = usize::from(n) % pagetable::cpu::nr_cpu_ids();
                pagetable::cpu::set_this_cpu(n);
                assert_eq!(pagetable::cpu::this_cpu(), n);
                self.m.cpu = n;
            }
            Op::Inject(n) => {
                self.pending_inject = Some(u64::from(n % 8) + 1);
                return;
            }
            _ => self.apply_release(op),
        }
        self.pending_inject = None;
        self.sync();
    }

    /// Arm the pending failure injection right before the call under test.
    pub fn arm(&mut self) {
        if let Some(n) = self.pending_inject.take() {
            self.frames.fail_nth(Some(n));
            self.injected = true;
        }
    }

    /// Disarm it right after.
    pub fn disarm(&self) {
        if self.injected {
            self.frames.fail_nth(None);
        }
    }

    /// Whether a frame shortage is plausible for a call needing `need` frames (free frames
    /// were counted before the call).
    pub fn short(&self, free_before: u64, need: u64) -> bool {
        self.injected || free_before < need
    }

    /// Check a range just handed out by the KVA allocator (after `sync`).
    pub fn check_new_range(&self, start: u64, size: u64, align: u64, lo: u64, hi: u64) {
        let end = start + size;
        assert_eq!(
            start % align,
            0,
            "step {}: {start:#x} not aligned to {align:#x}",
            self.step
        );
        assert!(
            lo <= start && end <= hi,
            "step {}: [{start:#x}, {end:#x}) outside the window [{lo:#x}, {hi:#x})",
            self.step
        );
        assert!(
            self.m.is_free(start, end),
            "step {}: [{start:#x}, {end:#x}) handed out but not free in the model: {:x?} lazy {:x?}",
            self.step,
            self.m
                .areas
                .values()
                .find(|a| a.start < end && start < a.end),
            self.m.lazy.iter().find(|&(&s, &e)| s < end && start < e),
        );
        let tlb = self.vm.tlb_model().expect("model TLB");
        assert!(
            !tlb.holds_any(World::va(start), World::va(end)),
            "step {}: [{start:#x}, {end:#x}) handed out while a CPU still caches a translation",
            self.step
        );
    }

    /// Check an allocation failure that the arguments did not predict: `NoSpace` only without
    /// any aligned fit (after the purge it implies), frame errors only when plausible, and no
    /// frame leaked.
    #[allow(clippy::too_many_arguments)]
    pub fn check_alloc_failure(
        &self,
        e: &VmallocError,
        req: u64,
        area_size: u64,
        align: u64,
        lo: u64,
        hi: u64,
        free_before: u64,
        used_before: u64,
        need_frames: u64,
    ) {
        let step = self.step;
        match e {
            // Linux 6.x: the caller's size, and TooLarge when no aligned place of the window
            // could ever hold the area (`vmalloc::valloc::alloc_error`).
            VmallocError::TooLarge {
                size,
                align: a,
                start,
                end,
            } => {
                assert_eq!(
                    (*size, *a, *start, *end),
                    (req, align, lo, hi),
                    "step {step}: TooLarge fields"
                );
                assert!(
                    !aligned_fits(area_size, align, lo, hi),
                    "step {step}: TooLarge although {area_size:#x} fits [{lo:#x}, {hi:#x}) aligned {align:#x}"
                );
            }
            VmallocError::NoSpace {
                size,
                align: a,
                start,
                end,
            } => {
                assert_eq!(
                    (*size, *a, *start, *end),
                    (req, align, lo, hi),
                    "step {step}: NoSpace fields"
                );
                assert!(
                    self.m.lazy.is_empty(),
                    "step {step}: NoSpace without purging the lazy areas {:x?}",
                    self.m.lazy
                );
                assert!(
                    !self.m.fits(area_size, align, lo, hi),
                    "step {step}: NoSpace for {area_size:#x} aligned {align:#x} in \
                     [{lo:#x}, {hi:#x}) although the model has room; gaps {:x?}",
                    self.m.gaps()
                );
            }
            VmallocError::OutOfMemory { source, .. } => match source {
                FrameError::OutOfFrames { injected: true, .. } => {
                    assert!(self.injected, "step {step}: injected failure not armed")
                }
                FrameError::OutOfFrames { .. } => assert!(
                    free_before < need_frames,
                    "step {step}: {e} with {free_before} frames free"
                ),
                other => panic!("step {step}: OutOfMemory from {other:?}"),
            },
            VmallocError::Map(pagetable::MapError::OutOfFrames) => assert!(
                self.short(free_before, need_frames),
                "step {step}: {e} with {free_before} frames free"
            ),
            other => panic!("step {step}: unexpected allocation failure {other:?}"),
        }
        assert_eq!(
            self.frames.stats().used,
            used_before,
            "step {step}: failed allocation leaked frames"
        );
    }

    /// Any `vmalloc`-family call.
    fn vmalloc(
        &mut self,
        r: Req,
        call: impl FnOnce(&vmalloc::Vmalloc) -> Result<pagetable::VirtAddr, VmallocError>,
    ) {
        let step = self.step;
        let pages = r.size.div_ceil(PAGE);
        let guard = if r.flags.contains(VmFlags::NO_GUARD) {
            0
        } else {
            PAGE
        };
        let area_size = pages * PAGE + guard;
        let pre = if !(r.flags - VMALLOC_FLAGS).is_empty() {
            Err(VmallocError::InvalidFlags {
                flags: r.flags - VMALLOC_FLAGS,
            })
        } else if r.size == 0 {
            Err(VmallocError::InvalidSize { size: 0 })
        } else {
            kva_check(r.size, area_size, r.align, r.start, r.end)
        };
        let st = self.frames.stats();
        self.arm();
        let got = call(&self.vm);
        self.disarm();
        self.sync();
        let (align, lo, hi) = match pre {
            Err(e) => {
                assert_eq!(got, Err(e), "step {step}: {r:?}");
                return;
            }
            Ok(x) => x,
        };
        let va = match got {
            Ok(va) => va.as_u64(),
            Err(e) => {
                let need = pages + pages / 512 + 4;
                self.check_alloc_failure(
                    &e, r.size, area_size, align, lo, hi, st.free, st.used, need,
                );
                return;
            }
        };
        self.check_new_range(va, area_size, align, lo, hi);
        let zero = r.gfp.contains(Gfp::ZERO);
        let frames = self.learn_frames(va, pages, r.prot, zero);
        let space = self.vm.kernel_space();
        if guard != 0 {
            assert!(
                space.translate(World::va(va + pages * PAGE)).is_none(),
                "step {step}: guard page mapped"
            );
        }
        let mut flags = r.flags | VmFlags::ALLOC;
        if r.gfp.contains(Gfp::DMA32) {
            flags |= VmFlags::DMA32;
        }
        if !r.prot.contains(PageTableFlags::NO_EXECUTE) {
            flags |= VmFlags::EXEC;
        }
        // Linux 6.x's records: zeroed at allocation (`vrealloc` keeps the tail zero), and a
        // page array larger than a page (itself vmalloc'ed) shows as `vpages`.
        if r.gfp.contains(Gfp::ZERO) {
            flags |= VmFlags::ZEROED;
        }
        if pages * 8 > PAGE {
            flags |= VmFlags::VPAGES;
        }
        let writable = r.prot.contains(PageTableFlags::WRITABLE);
        self.add_area(Area {
            start: va,
            end: va + area_size,
            flags,
            nr_pages: pages as usize,
            phys: None,
            kind: Kind::Vmalloc { frames, writable },
        });
        self.handles.push(Handle {
            addr: va,
            len: pages * PAGE,
            count: 0,
        });
    }

    /// The frames a fresh vmalloc area maps: every page mapped with `prot`, each frame fresh
    /// (no other owner in the model) and distinct; recorded with their contents.
    fn learn_frames(&mut self, va: u64, pages: u64, prot: PageTableFlags, zero: bool) -> Vec<u64> {
        let step = self.step;
        let space = self.vm.kernel_space();
        let arena = self.frames.arena();
        let mask = PageTableFlags::PRESENT
            | PageTableFlags::WRITABLE
            | PageTableFlags::NO_EXECUTE
            | PageTableFlags::GLOBAL;
        let mut frames = Vec::with_capacity(pages as usize);
        for i in 0..pages {
            let t = space
                .translate(World::va(va + i * PAGE))
                .unwrap_or_else(|| panic!("step {step}: page {i} of {va:#x} not mapped"));
            assert_eq!(t.flags & mask, (prot | PageTableFlags::PRESENT) & mask);
            let pa = t.pa.as_u64();
            assert!(
                !self.m.mem.contains_key(&pa),
                "step {step}: frame {pa:#x} of the new area at {va:#x} is still in use"
            );
            if zero && (i == 0 || i + 1 == pages) {
                // One copy and a memcmp (a byte loop here would run through the fuzzer's
                // comparison hooks 4,096 times).
                let mut page = [0u8; PAGE as usize];
                arena.read(t.pa, &mut page).expect("read");
                assert!(
                    page == [0u8; PAGE as usize],
                    "step {step}: zeroed allocation has a dirty frame {pa:#x}"
                );
            }
            self.m.mem.insert(
                pa,
                FrameM {
                    owner: true,
                    user: 0,
                    content: if zero {
                        Content::Zero
                    } else {
                        Content::Unknown
                    },
                },
            );
            frames.push(pa);
        }
        frames
    }

    /// Record a new live area.
    pub fn add_area(&mut self, a: Area) {
        self.touched.push(a.start);
        let prev = self.m.insert_area(a);
        assert!(
            prev.is_none(),
            "step {}: two areas at one address",
            self.step
        );
    }

    /// Allocate `n` zeroed harness frames (None, nothing held, if the arena is short).
    pub(super) fn harness_frames(&mut self, n: usize) -> Option<Vec<PhysFrame>> {
        let mut v = Vec::new();
        if self
            .frames
            .alloc_bulk_zeroed(n, Zone::Normal, &mut v)
            .is_err()
        {
            return None;
        }
        for f in &v {
            let fresh = self.m.mem.insert(
                f.start_address().as_u64(),
                FrameM {
                    owner: true,
                    user: 0,
                    content: Content::Zero,
                },
            );
            assert!(
                fresh.is_none(),
                "step {}: allocator handed out a frame in use",
                self.step
            );
        }
        Some(v)
    }

    /// Give harness frames back (after the mapping using them is gone or failed).
    pub fn free_harness(&mut self, frames: &[u64]) {
        for &pa in frames {
            let f = PhysFrame::containing_address(PhysAddr::new_truncate(pa));
            self.frames.free(f).expect("free a harness frame");
            self.m.drop_owner(pa);
        }
    }

    fn vmap(&mut self, count: usize, ro: bool, sel: u8) {
        let step = self.step;
        let flags = match sel % 8 {
            5 | 6 => VmFlags::USERMAP,
            7 => VmFlags::ALLOC,
            _ => VmFlags::empty(),
        };
        let Some(frames) = self.harness_frames(count) else {
            return;
        };
        let pas: Vec<u64> = frames.iter().map(|f| f.start_address().as_u64()).collect();
        let prot = if ro { PAGE_KERNEL_RO } else { PAGE_KERNEL };
        let area_size = count as u64 * PAGE + PAGE;
        let pre = if flags.intersects(RESERVED_KINDS | VmFlags::IOREMAP) {
            Err(VmallocError::InvalidFlags {
                flags: flags & (RESERVED_KINDS | VmFlags::IOREMAP),
            })
        } else if count == 0 {
            Err(VmallocError::InvalidSize { size: 0 })
        } else {
            kva_check(area_size - PAGE, area_size, PAGE, KVA_START, KVA_END)
        };
        let st = self.frames.stats();
        self.arm();
        let got = self.vm.vmap(&frames, flags, prot);
        self.disarm();
        self.sync();
        let va = match (pre, got) {
            (Err(e), got) => {
                assert_eq!(got, Err(e), "step {step}: vmap");
                self.free_harness(&pas);
                return;
            }
            (Ok((align, lo, hi)), Err(e)) => {
                self.check_alloc_failure(
                    &e,
                    area_size - PAGE,
                    area_size,
                    align,
                    lo,
                    hi,
                    st.free,
                    st.used,
                    4,
                );
                self.free_harness(&pas);
                return;
            }
            (Ok((align, lo, hi)), Ok(va)) => {
                self.check_new_range(va.as_u64(), area_size, align, lo, hi);
                va.as_u64()
            }
        };
        self.check_mapped(va, &pas, prot);
        self.add_area(Area {
            start: va,
            end: va + area_size,
            flags: flags | VmFlags::MAP,
            // Linux 6.x: a vmap area owns no pages (`nr_pages` 0; vmallocinfo prints none).
            nr_pages: 0,
            phys: None,
            kind: Kind::Vmap {
                frames: pas,
                writable: !ro,
            },
        });
        self.handles.push(Handle {
            addr: va,
            len: count as u64 * PAGE,
            count: 0,
        });
    }

    /// Pages from `va` map exactly `pas` with `prot`.
    pub(super) fn check_mapped(&self, va: u64, pas: &[u64], prot: PageTableFlags) {
        let space = self.vm.kernel_space();
        for (i, &pa) in pas.iter().enumerate() {
            let t = space
                .translate(World::va(va + i as u64 * PAGE))
                .unwrap_or_else(|| panic!("step {}: page {i} of {va:#x} not mapped", self.step));
            assert_eq!(t.pa.as_u64(), pa, "step {}: page {i} of {va:#x}", self.step);
            assert_eq!(
                t.flags.contains(PageTableFlags::WRITABLE),
                prot.contains(PageTableFlags::WRITABLE)
            );
        }
    }
}

/// The request of a `vmalloc_node_range` operation.
fn node_range_req(
    size: Size,
    align: u8,
    start: u16,
    len: u16,
    bits: Bits,
    node: Option<u8>,
) -> Req {
    let b = bits.0;
    let mut flags = VmFlags::empty();
    let mut prot = PAGE_KERNEL;
    let mut gfp = Gfp::KERNEL;
    if b & 1 != 0 {
        flags |= VmFlags::NO_GUARD;
    }
    if b & 2 != 0 {
        flags |= VmFlags::USERMAP;
    }
    if b & 4 != 0 {
        prot = PAGE_KERNEL_RO;
    }
    if b & 8 != 0 {
        prot = if b & 4 != 0 {
            PAGE_KERNEL_RO - PageTableFlags::NO_EXECUTE
        } else {
            PAGE_KERNEL_EXEC
        };
    }
    if b & 16 != 0 {
        gfp |= Gfp::DMA32;
    }
    if b & 32 != 0 {
        gfp |= Gfp::ZERO;
    }
    if b & 64 != 0 && b & 128 != 0 {
        flags |= VmFlags::IOREMAP;
    } else if b & 128 != 0 {
        flags |= VmFlags::VPAGES;
    }
    let align = match align % 16 {
        0 => 0,
        1 => 3 * PAGE,
        2 => 256,
        _ => 1 << (12 + u64::from(align >> 4) % 11),
    };
    let s = u64::from(start >> 2);
    let pages = u64::from(len) % 8192 + 1;
    let (vs, ve) = match start & 3 {
        0 => (KVA_START, KVA_END),
        1 => {
            let vs = KVA_START + (s % 8192) * PAGE;
            (vs, vs + pages * PAGE)
        }
        2 => {
            let vs = KVA_START - (s % 64) * PAGE;
            (vs, vs + pages * PAGE)
        }
        _ => {
            let vs = KVA_START + (s % 9000) * PAGE + s % 3;
            (
                vs,
                vs.wrapping_sub(u64::from(len % 4) * PAGE)
                    .max(KVA_START - PAGE),
            )
        }
    };
    Req {
        size: size.bytes(),
        align,
        start: vs,
        end: ve,
        gfp,
        prot,
        flags,
        node: node.map(usize::from),
    }
}
