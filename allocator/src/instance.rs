//! The [`Vmalloc`] instance and its [`VmallocConfig`]: one kernel address space, one physical
//! arena with its frame allocator, one [`Kva`] over the vmalloc range, one TLB.
//!
//! # How it works
//!
//! What users rely on (construction, the callbacks, drop) is in [`Vmalloc`]'s documentation.
//! For maintainers: the state lives in an `Arc`ed `Inner`; the callbacks installed into the
//! `Kva` hold a `Weak` to it so the `Kva` (which owns the callbacks) does not keep its owner
//! alive. A purge worker may hold an upgraded `Arc` for the length of one callback;
//! `Vmalloc`'s `Drop` therefore waits (with `Arc::try_unwrap`, which also makes every later
//! upgrade fail) until it holds the only reference, so the last reference is always dropped
//! on the caller's thread and never by a purge worker (which could not join itself).
//!
//! # Invariants
//!
//! * The PDPT tables of the whole vmalloc range exist from construction until the instance is
//!   dropped; kernel mappings are made only in the kernel space, inside the range.
//! * Every live area of the `Kva` is one of: a `vmalloc` area (`VmFlags::ALLOC`: its frames
//!   are owned by the area and freed by `vfree`), a `vmap` area (`MAP`), an ioremap or
//!   `alloc_vm_area` area (`IOREMAP`), a `get_vm_area` reservation (other flags), an early area
//!   (`EARLY`), a `vm_map_ram` area or vmap block (`MAP_RAM`).
//!
//! # Locking
//!
//! This module takes no lock of its own; see the other vmalloc modules for theirs.

#[allow(unused_imports)]
use crate::prelude::*;
use alloc::boxed::Box;
use alloc::sync::{Arc as StdArc, Weak};
use alloc::vec::Vec;
use core::fmt;
use core::panic::Location;

use pagetable::AddressSpace;
#[cfg(feature = "std")]
use pagetable::TlbModel;
use pagetable::platform::{DefaultPlatform, Platform};
use pagetable::{ArenaConfig, Backing, PAGE_SIZE, PhysAddr, PhysArena, VirtAddr};
use pagetable::{CountingFlush, TlbFlush};
use pagetable::{FrameAllocator, FrameConfig, FrameStats};

use crate::error::VmallocError;
use crate::kva::area::{AreaInfo, VmArea};
use crate::kva::config::{KvaConfig, VMALLOC_END, VMALLOC_START};
use crate::kva::flags::VmFlags;
use crate::kva::{Kva, PurgeWork};
use crate::sync::{AtomicU64, Mutex, Ordering};
use crate::vmap_block::VmapBlocks;

/// The frame allocator and arena are shared through `alloc`'s `Arc`, as `pagetable` takes them.
type SyncArc<T> = StdArc<T>;

/// Which TLB the instance flushes (and, for the model, reads and writes through).
#[derive(Clone, Default)]
pub enum TlbChoice {
    /// A `TlbModel` with one cache per CPU slot of the instance (as many CPUs as
    /// [`KvaConfig::nr_cpus`] resolves to): `vread`/`vwrite` go through it, so stale
    /// translations are observable (and tests can ask `TlbModel::holds_any`). The default;
    /// needs the `std` feature ([`VmallocError::Unsupported`] otherwise).
    #[default]
    Model,
    /// A [`CountingFlush`]: flushes are counted, nothing is cached; `vread`/`vwrite` walk the
    /// page tables.
    Counting,
    /// The caller's shootdown hook (e.g. a real kernel's IPI code, or a wrapper of a model
    /// that counts or delays flushes). `vread`/`vwrite` go through the model the hook
    /// exposes with `TlbFlush::as_model` (with `std`), else walk the page tables.
    Custom(StdArc<dyn TlbFlush>),
}

impl fmt::Debug for TlbChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Model => f.write_str("Model"),
            Self::Counting => f.write_str("Counting"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// An area reserved at construction (Linux's boot-time `vm_area_add_early` /
/// `vm_area_register_early`). Early areas have no guard page and nothing mapped; they are
/// listed by `vmallocinfo` and may be released with [`Vmalloc::free_vm_area`]. Their
/// `flags` may hold [`VmFlags::IOREMAP`], [`VmFlags::MAP`], [`VmFlags::USERMAP`] and
/// [`VmFlags::NO_GUARD`] ([`VmallocError::InvalidFlags`] otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyArea {
    /// `Some(addr)`: exactly `[addr, addr + size)` (`vm_area_add_early`); `None`: the lowest
    /// free range aligned to `align` (`vm_area_register_early`).
    pub addr: Option<u64>,
    /// Size in bytes (rounded up to whole pages).
    pub size: u64,
    /// Alignment when `addr` is `None` (a power of two; below a page means a page).
    pub align: u64,
    /// Flags recorded for the area (`VmFlags::EARLY | VmFlags::NO_GUARD` are added).
    pub flags: VmFlags,
}

/// How a [`Vmalloc`] instance is built.
#[derive(Debug, Clone)]
pub struct VmallocConfig {
    /// The KVA allocator: the vmalloc range, shards, lazy threshold, purge mode, per-CPU
    /// caches, purge workers.
    pub kva: KvaConfig,
    /// The physical arena (size, physical base, heap or mmap backing).
    pub arena: ArenaConfig,
    /// Per-CPU frame cache tuning.
    pub frames: FrameConfig,
    /// The TLB.
    pub tlb: TlbChoice,
    /// Areas reserved at construction, in order.
    pub early: Vec<EarlyArea>,
}

/// Size of the default mmap-backed arena: 8 GiB, so that both the DMA32 zone (below 4 GiB)
/// and normal frames exist.
pub const DEFAULT_ARENA_BYTES: u64 = 8 << 30;

/// Size of the KVA range of [`VmallocConfig::small_heap`]: 64 GiB, inside one PML4 entry
/// (512 GiB) from `VMALLOC_START`, so construction preallocates a single PDPT table; large
/// enough for any test's areas and vmap blocks (16,384 blocks of 4 MiB).
pub const SMALL_KVA_BYTES: u64 = 64 << 30;

impl Default for VmallocConfig {
    /// x86_64's vmalloc range (`0xffffc90000000000`, 32 TiB) with one shard per CPU, Linux's
    /// lazy threshold and background purge workers, over an 8 GiB `MAP_NORESERVE` mmap arena
    /// at physical address 0, with the TLB model.
    fn default() -> Self {
        Self {
            kva: KvaConfig::with_range(VMALLOC_START, VMALLOC_END),
            arena: ArenaConfig {
                size: DEFAULT_ARENA_BYTES,
                base: PhysAddr::zero(),
                backing: Backing::Mmap { huge_pages: false },
            },
            frames: FrameConfig::default(),
            tlb: TlbChoice::Model,
            early: Vec::new(),
        }
    }
}

impl VmallocConfig {
    /// A small instance for tests: a heap arena of `arena_bytes` at physical 0 and a 64 GiB
    /// KVA range at `VMALLOC_START`; otherwise the defaults.
    pub fn small_heap(arena_bytes: u64) -> Self {
        Self {
            kva: KvaConfig::with_range(VMALLOC_START, VMALLOC_START + SMALL_KVA_BYTES),
            arena: ArenaConfig {
                size: arena_bytes,
                base: PhysAddr::zero(),
                backing: Backing::Heap,
            },
            ..Self::default()
        }
    }
}

/// The state of an instance (shared with the callbacks installed into the [`Kva`]).
pub(crate) struct Inner<P: Platform> {
    pub(crate) kva: Kva<P>,
    pub(crate) space: AddressSpace<P>,
    pub(crate) frames: SyncArc<FrameAllocator<P>>,
    pub(crate) tlb: StdArc<dyn TlbFlush>,
    #[cfg(feature = "std")]
    pub(crate) model: Option<StdArc<TlbModel>>,
    pub(crate) blocks: VmapBlocks<P>,
    /// `[start, end)` of the vmalloc range.
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// Early areas as reserved.
    pub(crate) early: Vec<VmArea>,
    /// Deferred frees (`vfree_atomic`) that failed when run (bad address).
    pub(crate) deferred_errors: AtomicU64,
    /// The first of those failures not taken yet, with their address (at most
    /// [`VFREE_ATOMIC_ERRORS_KEPT`]).
    pub(crate) deferred_log: Mutex<P, Vec<(u64, VmallocError)>>,
    /// Frames in use right after construction (root, preallocated tables): what
    /// [`Vmalloc::check_idle`] expects once everything is freed.
    pub(crate) frames_at_build: u64,
    /// The per-CPU caches of thread stacks (`alloc_thread_stack_node`).
    pub(crate) stacks: crate::stack::cache::StackCaches<P>,
}

/// How many failed `vfree_atomic` frees [`Vmalloc::take_vfree_atomic_errors`] can report
/// between two calls (later ones are only counted, in `VmallocStats::deferred_errors`).
///
/// Why 64: a failed deferred free is a caller bug (a bad address), reported to find the bug,
/// not to account for every occurrence; 64 entries of about 40 bytes bound the memory a
/// buggy caller that never looks can make the instance hold.
pub const VFREE_ATOMIC_ERRORS_KEPT: usize = 64;

/// A vmalloc instance: the Linux vmalloc API over one kernel address space (the
/// [crate documentation](crate) has an overview and an example), typed by its [`Platform`].
/// `Send + Sync`: share it with an `Arc` or scoped threads.
///
/// # Construction
///
/// [`Vmalloc::new`] builds, in order: the physical arena ([`VmallocConfig::arena`]), the
/// [`FrameAllocator`] over it, the kernel [`AddressSpace`] (whose PML4-level entries covering
/// the whole vmalloc range are installed at once with [`AddressSpace::preallocate`], as
/// x86_64 Linux's `preallocate_vmalloc_pages` does, so that every space made by
/// [`Vmalloc::new_user_space`] sees every later kernel mapping without a sync), the TLB
/// ([`TlbChoice`]), the [`Kva`] flushing through that TLB, the per-CPU vmap-block queues of
/// `vm_map_ram`, and finally the early areas ([`EarlyArea`], Linux's `vm_area_add_early` /
/// `vm_area_register_early`). It then installs two callbacks into the `Kva`: the
/// deferred-free handler (what [`Vmalloc::vfree_atomic`] runs later: a full `vfree`) and an
/// allocation-failure notifier that retires fragmented vmap blocks to the lazy list (Linux
/// 3.7 does the same in `purge_vmap_area_lazy`). [`Vmalloc::with_platform`] does the same over
/// the host's frame allocator and TLB hook, and [`Vmalloc::with_space`] over the host's own
/// address space too: a kernel hands over its `init_mm` (the PML4 already in CR3) and vmalloc
/// installs the range's top-level entries in it and maps into it.
///
/// # Drop
///
/// Dropping the instance first runs the `vfree_atomic`s still queued, then waits until no
/// purge worker is inside one of its callbacks, so the instance is always torn down on the
/// dropping thread; the `Kva` then stops and joins its workers.
pub struct Vmalloc<P: Platform = DefaultPlatform> {
    /// Always `Some` until `Drop`.
    pub(crate) inner: Option<StdArc<Inner<P>>>,
}

impl<P: Platform> fmt::Debug for Vmalloc<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.v();
        f.debug_struct("Vmalloc")
            .field("range", &format_args!("{:#x}..{:#x}", v.start, v.end))
            .field("kva", &v.kva)
            .field("space", &v.space)
            .field("tlb", &v.tlb.stats())
            .finish()
    }
}

impl Vmalloc<DefaultPlatform> {
    /// Build an instance for the default platform (the steps are under *Construction* in
    /// [`Vmalloc`]'s documentation): the arena, frame allocator and TLB as `cfg` says. Errors: an invalid KVA range or configuration,
    /// an arena that cannot be created, not enough frames for the root and the preallocated
    /// tables of the vmalloc range, an early area that does not fit.
    #[track_caller]
    pub fn new(cfg: VmallocConfig) -> Result<Self, VmallocError> {
        let caller = Location::caller();
        let arena = SyncArc::new(PhysArena::new(cfg.arena)?);
        let frames = SyncArc::new(FrameAllocator::with_config(arena, cfg.frames));
        let space = AddressSpace::new(frames)?;
        Self::build(cfg.kva, &cfg.early, space, cfg.tlb, None, caller)
    }
}

impl<P: Platform> Vmalloc<P> {
    /// Build an instance for platform `P` over the host's frame allocator (a kernel: one over
    /// [`PhysArena::from_direct_map`]), flushing through `tlb` (its `invlpg`/IPI code, or a
    /// [`TlbChoice`]), with background work queued through `work` (see
    /// [`Kva::with_platform`]). `early` are the boot-time areas. Errors as for
    /// [`Vmalloc::new`].
    #[track_caller]
    pub fn with_platform(
        kva: KvaConfig,
        early: &[EarlyArea],
        frames: SyncArc<FrameAllocator<P>>,
        tlb: TlbChoice,
        work: Option<StdArc<dyn PurgeWork>>,
    ) -> Result<Self, VmallocError> {
        let space = AddressSpace::new(frames)?;
        Self::build(kva, early, space, tlb, work, Location::caller())
    }

    /// Build an instance over an address space the host already has, as
    /// [`Vmalloc::with_platform`] does over a fresh one: a kernel's `init_mm`, whose root is
    /// the PML4 its CPUs load in CR3 and which already maps the kernel image and the direct
    /// map. The vmalloc range's PML4-level tables are installed in it
    /// ([`AddressSpace::preallocate`]; entries already there are kept), every vmalloc
    /// mapping is made in it, and [`Vmalloc::kernel_space`] returns it. Frames come from the
    /// space's frame allocator. Errors as for [`Vmalloc::new`].
    #[track_caller]
    pub fn with_space(
        kva: KvaConfig,
        early: &[EarlyArea],
        space: AddressSpace<P>,
        tlb: TlbChoice,
        work: Option<StdArc<dyn PurgeWork>>,
    ) -> Result<Self, VmallocError> {
        Self::build(kva, early, space, tlb, work, Location::caller())
    }

    fn build(
        kva_cfg: KvaConfig,
        early: &[EarlyArea],
        space: AddressSpace<P>,
        tlb_choice: TlbChoice,
        work: Option<StdArc<dyn PurgeWork>>,
        caller: &'static Location<'static>,
    ) -> Result<Self, VmallocError> {
        let frames = SyncArc::clone(space.frames());
        let (start, end) = (kva_cfg.start, kva_cfg.end);
        // The CPU count the whole instance is built for (the TLB model's CPUs, the vmap-block
        // queues and the KVA's slots agree): the configured one, or the platform's.
        #[cfg(feature = "std")]
        let nr_cpus = match kva_cfg.nr_cpus {
            0 => P::nr_cpu_ids(),
            n => n,
        };
        #[cfg(feature = "std")]
        let model = match tlb_choice {
            TlbChoice::Model => Some(StdArc::new(TlbModel::new(
                nr_cpus.min(crate::kva::config::MAX_NR_CPUS),
            ))),
            _ => None,
        };
        let tlb: StdArc<dyn TlbFlush> = match tlb_choice {
            #[cfg(feature = "std")]
            TlbChoice::Model => match &model {
                Some(m) => StdArc::clone(m) as StdArc<dyn TlbFlush>,
                None => StdArc::new(CountingFlush::new()),
            },
            #[cfg(not(feature = "std"))]
            TlbChoice::Model => {
                return Err(VmallocError::Unsupported {
                    what: "the TLB model (TlbChoice::Model) needs the `std` feature",
                });
            }
            TlbChoice::Custom(t) => t,
            TlbChoice::Counting => StdArc::new(CountingFlush::new()),
        };
        let kva = Kva::with_platform(kva_cfg, StdArc::clone(&tlb), work)?;
        let blocks = VmapBlocks::new(kva.nr_cpus());
        let stacks = crate::stack::cache::StackCaches::new(kva.nr_cpus());
        // The range is valid now (the Kva checked it): both ends are canonical in one half.
        space.preallocate(VirtAddr::new_truncate(start), VirtAddr::new_truncate(end))?;
        let inner = StdArc::new(Inner {
            kva,
            space,
            frames,
            tlb,
            #[cfg(feature = "std")]
            model,
            blocks,
            start,
            end,
            early: Vec::new(),
            deferred_errors: AtomicU64::new(0),
            deferred_log: Mutex::<P, _>::new(Vec::new()),
            frames_at_build: 0,
            stacks,
        });
        let mut vm = Vmalloc { inner: Some(inner) };
        let early = early
            .iter()
            .map(|e| vm.v().add_early(e, caller))
            .collect::<Result<Vec<_>, _>>()?;
        // Nobody else holds the Arc yet (no callback is installed): set the early list and
        // the frame count of an idle instance.
        let frames_at_build = vm.v().frames.stats().used;
        if let Some(inner) = vm.inner.as_mut().and_then(StdArc::get_mut) {
            inner.early = early;
            inner.frames_at_build = frames_at_build;
        }
        vm.install_callbacks();
        Ok(vm)
    }

    /// Install the deferred-free handler and the fragmented-block notifier (Weak references).
    fn install_callbacks(&self) {
        let Some(inner) = &self.inner else { return };
        let weak: Weak<Inner<P>> = StdArc::downgrade(inner);
        let w = weak.clone();
        inner.kva.set_deferred_handler(Box::new(move |addr| {
            if let Some(v) = w.upgrade() {
                if let Err(e) = v.vfree_now(addr.as_u64()) {
                    v.deferred_errors.fetch_add(1, Ordering::Relaxed);
                    let mut log = v.deferred_log.lock();
                    if log.len() < VFREE_ATOMIC_ERRORS_KEPT {
                        log.push((addr.as_u64(), e));
                    }
                }
            }
        }));
        inner
            .kva
            .register_notifier(Box::new(move |_size| match weak.upgrade() {
                Some(v) => v.blocks.purge_fragmented(&v.kva),
                None => 0,
            }));
    }

    /// The shared state.
    #[inline]
    pub(crate) fn v(&self) -> &Inner<P> {
        match &self.inner {
            Some(i) => i,
            // `inner` is `None` only inside `Drop`.
            None => unreachable!("Vmalloc used after drop"),
        }
    }

    /// The TLB every flush goes to.
    pub fn tlb(&self) -> &StdArc<dyn TlbFlush> {
        &self.v().tlb
    }

    /// The TLB model, when the instance was built with [`TlbChoice::Model`].
    #[cfg(feature = "std")]
    pub fn tlb_model(&self) -> Option<&StdArc<TlbModel>> {
        self.v().model.as_ref()
    }

    /// The frame allocator (data pages and page tables come from it).
    pub fn frames(&self) -> &SyncArc<FrameAllocator<P>> {
        &self.v().frames
    }

    /// Frame allocator counters (shorthand for `frames().stats()`).
    pub fn frame_stats(&self) -> FrameStats {
        self.v().frames.stats()
    }

    /// The kernel address space (`init_mm`): every vmalloc mapping lives here.
    pub fn kernel_space(&self) -> &AddressSpace<P> {
        &self.v().space
    }

    /// The KVA allocator underneath.
    pub fn kva(&self) -> &Kva<P> {
        &self.v().kva
    }

    /// `[start, end)` of the vmalloc range (`VMALLOC_START`, `VMALLOC_END`).
    pub fn range(&self) -> (VirtAddr, VirtAddr) {
        let v = self.v();
        (
            VirtAddr::new_truncate(v.start),
            VirtAddr::new_truncate(v.end),
        )
    }

    /// The early areas, as reserved at construction.
    pub fn early_areas(&self) -> &[VmArea] {
        &self.v().early
    }

    /// A new (user) address space sharing the kernel half of [`Vmalloc::kernel_space`]:
    /// because the vmalloc range's PML4-level tables were preallocated, every kernel mapping
    /// made later is visible through it at once.
    pub fn new_user_space(&self) -> Result<AddressSpace<P>, VmallocError> {
        Ok(AddressSpace::new_sharing_kernel(&self.v().space)?)
    }

    /// Linux's `purge_vmap_area_lazy()`: free fragmented vmap blocks, run the deferred frees,
    /// and purge every lazily freed area now (one TLB flush of their union).
    pub fn purge_vmap_area_lazy(&self) -> crate::kva::purge::PurgeReport {
        let v = self.v();
        v.blocks.purge_fragmented(&v.kva);
        v.kva.purge()
    }
}

impl<P: Platform> Drop for Vmalloc<P> {
    fn drop(&mut self) {
        let Some(mut inner) = self.inner.take() else {
            return;
        };
        // Run what `vfree_atomic` queued while the callbacks can still reach us.
        inner.kva.drain_deferred();
        // Wait until no purge worker holds an upgraded reference, so the last one is dropped
        // here (a worker dropping it would have to join itself). `try_unwrap` succeeds only
        // when the count is one and atomically makes every later `upgrade` fail.
        loop {
            match StdArc::try_unwrap(inner) {
                Ok(state) => {
                    drop(state);
                    return;
                }
                Err(still_shared) => {
                    inner = still_shared;
                    P::cond_resched();
                    P::cpu_relax();
                }
            }
        }
    }
}

impl<P: Platform> Inner<P> {
    /// Reserve one early area.
    fn add_early(
        &self,
        e: &EarlyArea,
        caller: &'static Location<'static>,
    ) -> Result<VmArea, VmallocError> {
        // The early area's own kind and properties only (`EARLY | NO_GUARD` are added).
        crate::error::check_flags(
            e.flags,
            VmFlags::CALLER.difference(VmFlags::ALLOW_HUGE_VMAP),
        )?;
        let size = e
            .size
            .checked_next_multiple_of(PAGE_SIZE)
            .filter(|&s| s != 0)
            .ok_or(VmallocError::InvalidSize { size: e.size })?;
        let info = AreaInfo {
            flags: e.flags | VmFlags::EARLY | VmFlags::NO_GUARD,
            nr_pages: 0,
            caller,
            phys_addr: None,
        };
        let start = match e.addr {
            Some(a) => {
                let end = a.checked_add(size).ok_or(VmallocError::InvalidRange {
                    start: a,
                    end: u64::MAX,
                })?;
                self.kva
                    .alloc_at(VirtAddr::new_truncate(a), end - a, info)
                    .map_err(|err| crate::error::alloc_error(err, e.size, size))?;
                a
            }
            None => self
                .kva
                .alloc(size, e.align, self.start, self.end, None, info)
                .map_err(|err| crate::error::alloc_error(err, e.size, size))?
                .as_u64(),
        };
        Ok(VmArea {
            start,
            end: start + size,
            info,
        })
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    fn small() -> VmallocConfig {
        VmallocConfig::small_heap(4 << 20)
    }

    #[test]
    fn builds_and_preallocates_the_range() {
        let vm = Vmalloc::new(small()).unwrap();
        let (s, e) = vm.range();
        assert_eq!(s.as_u64(), VMALLOC_START);
        assert_eq!(e.as_u64(), VMALLOC_START + SMALL_KVA_BYTES);
        // Root + one PDPT for the 64 GiB range.
        assert_eq!(vm.frame_stats().used, 2);
        assert!(vm.tlb_model().is_some());
    }

    #[test]
    fn counting_and_custom_tlbs_have_no_model() {
        let vm = Vmalloc::new(VmallocConfig {
            tlb: TlbChoice::Counting,
            ..small()
        })
        .unwrap();
        assert!(vm.tlb_model().is_none());
        let hook: StdArc<dyn TlbFlush> = StdArc::new(CountingFlush::new());
        let vm = Vmalloc::new(VmallocConfig {
            tlb: TlbChoice::Custom(StdArc::clone(&hook)),
            ..small()
        })
        .unwrap();
        assert!(StdArc::ptr_eq(vm.tlb(), &hook));
        assert_eq!(format!("{:?}", TlbChoice::Custom(hook)), "Custom(..)");
    }

    #[test]
    fn an_existing_space_keeps_its_root_and_mappings() {
        use pagetable::PageTableFlags;
        let arena = SyncArc::new(PhysArena::heap(4 << 20, PhysAddr::zero()).unwrap());
        let frames = SyncArc::new(FrameAllocator::new(arena));
        let space = AddressSpace::new(SyncArc::clone(&frames)).unwrap();
        // The "kernel image" (identity) and a 2 MiB "direct map" leaf, mapped before vmalloc.
        let image = VirtAddr::new(0x10_0000);
        let direct = VirtAddr::new(0xffff_8880_0000_0000);
        let flags = PageTableFlags::PRESENT | PageTableFlags::WRITABLE;
        space
            .map_contiguous(image, PhysAddr::new(0x10_0000), PAGE_SIZE, flags, false)
            .unwrap();
        space
            .map_contiguous(direct, PhysAddr::zero(), 2 << 20, flags, true)
            .unwrap();
        let root = space.root();
        let vm = Vmalloc::with_space(small().kva, &[], space, TlbChoice::Counting, None).unwrap();
        let k = vm.kernel_space();
        assert_eq!(k.root(), root, "the host's PML4 stays the root");
        assert!(StdArc::ptr_eq(vm.frames(), &frames));
        assert_eq!(k.translate(image).unwrap().pa, PhysAddr::new(0x10_0000));
        assert_eq!(
            k.translate(direct + 0x1234u64).unwrap().pa,
            PhysAddr::new(0x1234)
        );
        let p = vm.vmalloc(PAGE_SIZE).unwrap();
        assert!(
            k.translate(p).is_some(),
            "vmalloc maps into the host's space"
        );
        vm.vfree(p).unwrap();
        vm.purge_vmap_area_lazy();
        assert!(k.translate(p).is_none());
    }

    #[test]
    fn early_areas_are_reserved() {
        let cfg = VmallocConfig {
            early: vec![
                EarlyArea {
                    addr: Some(VMALLOC_START + (1 << 30)),
                    size: 3 * PAGE_SIZE,
                    align: 0,
                    flags: VmFlags::empty(),
                },
                EarlyArea {
                    addr: None,
                    size: 100,
                    align: 1 << 20,
                    flags: VmFlags::IOREMAP,
                },
            ],
            ..small()
        };
        let vm = Vmalloc::new(cfg).unwrap();
        let e = vm.early_areas();
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].start, e[0].size()),
            (VMALLOC_START + (1 << 30), 3 * PAGE_SIZE)
        );
        assert!(e[0].info.flags.contains(VmFlags::EARLY | VmFlags::NO_GUARD));
        assert_eq!(e[1].start % (1 << 20), 0);
        assert_eq!(e[1].size(), PAGE_SIZE);
        assert_eq!(
            vm.kva()
                .find(VirtAddr::new_truncate(e[0].start + PAGE_SIZE))
                .map(|a| a.start),
            Some(e[0].start)
        );
    }

    #[test]
    fn bad_configs_are_typed_errors() {
        let bad_range = VmallocConfig {
            kva: KvaConfig::with_range(0x2000, 0x1000),
            ..small()
        };
        assert!(matches!(
            Vmalloc::new(bad_range),
            Err(VmallocError::InvalidRange { .. })
        ));
        let overlap = VmallocConfig {
            early: vec![
                EarlyArea {
                    addr: Some(VMALLOC_START),
                    size: PAGE_SIZE,
                    align: 0,
                    flags: VmFlags::empty(),
                },
                EarlyArea {
                    addr: Some(VMALLOC_START),
                    size: PAGE_SIZE,
                    align: 0,
                    flags: VmFlags::empty(),
                },
            ],
            ..small()
        };
        assert!(matches!(
            Vmalloc::new(overlap),
            Err(VmallocError::NoSpace { .. })
        ));
        let zero = VmallocConfig {
            early: vec![EarlyArea {
                addr: None,
                size: 0,
                align: 0,
                flags: VmFlags::empty(),
            }],
            ..small()
        };
        assert!(matches!(
            Vmalloc::new(zero),
            Err(VmallocError::InvalidSize { .. })
        ));
    }
}
