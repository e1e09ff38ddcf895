//! Virtual-address-range allocators a user could pick instead of ours, behind one trait.
//!
//! How it works: every peer crate (`range-alloc`, `offset-allocator`, `free-list`, `vmem`,
//! `buddy_system_allocator`) and a `BTreeMap` first fit (what several Rust kernels do) gets a
//! small adapter implementing [`VaAllocator`]: `alloc(size, align) -> Option<u64>` and
//! `free(addr, size, align)`, in bytes, over the same range
//! [`VA_BASE`]`..VA_BASE + size` (x86_64's `VMALLOC_START`). The adapters do only what a
//! kernel would have to do to use the crate for KVA ranges: convert between bytes and the
//! crate's units, keep the crate's allocation handle where it needs one to free (a hash map
//! from address to handle, the peer's equivalent of our busy lookup), and over-allocate
//! where the crate cannot align.
//!
//! [`VaAllocator`] takes `&mut self` (one thread, no lock). For two threads,
//! [`SharedVaAllocator`] takes `&self`: allocators that are `Sync` on their own (`vmem`, whose
//! arena has its own lock, and ours) implement it directly; the others go behind
//! [`Locked`], a parking_lot mutex, exactly as a kernel would put them behind a spinlock.
//!
//! Invariants: an adapter never hands out overlapping ranges; every address it returns is a
//! multiple of the requested alignment (at least a page); `free` must be given the exact
//! `(addr, size, align)` of a live allocation, anything else is reported as a [`PeerError`]
//! where the crate lets the adapter detect it.
//!
//! Locking: none inside the single-threaded adapters; [`Locked`] holds its mutex for the
//! whole of one `alloc` or `free`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use pagetable::tlb::{CountingFlush, TlbFlush, TlbStats};
use parking_lot::Mutex;
use std::sync::Arc;

/// Base of the range every adapter allocates from: x86_64's `VMALLOC_START`.
pub const VA_BASE: u64 = 0xffff_c900_0000_0000;
/// The page size every adapter works in (sizes and alignments are multiples of it).
pub const PAGE: u64 = 4096;
/// Default size of the managed range: 1 TiB (fits every peer's units, e.g. `u32` pages).
pub const DEFAULT_SPAN: u64 = 1 << 40;

/// Why an adapter refused a request or a free.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The address is not the start of a live allocation of this allocator.
    #[error("{addr:#x} is not a live allocation")]
    UnknownAllocation {
        /// The address given to `free`.
        addr: u64,
    },
    /// The peer crate rejected the free (overlap with free space, bad range).
    #[error("the allocator rejected freeing {size:#x} bytes at {addr:#x}")]
    Rejected {
        /// The address given to `free`.
        addr: u64,
        /// The size given to `free`.
        size: u64,
    },
    /// The managed range cannot be expressed in the peer's units.
    #[error("span {span:#x} does not fit the allocator's units")]
    SpanTooLarge {
        /// The requested span in bytes.
        span: u64,
    },
}

/// A VA-range allocator used from one thread.
pub trait VaAllocator: Send {
    /// Short name for benchmark ids.
    fn name(&self) -> &'static str;
    /// Allocate `size` bytes (a multiple of [`PAGE`]) aligned to `align` (a power of two, at
    /// least [`PAGE`]); `None` when no range fits.
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64>;
    /// Free what `alloc(size, align)` returned as `addr`.
    fn free(&mut self, addr: u64, size: u64, align: u64) -> Result<(), PeerError>;
    /// Make every freed range reusable now (ours: a synchronous lazy purge; the peers free
    /// eagerly and have nothing to do).
    fn settle(&mut self) {}
    /// Internal counters worth printing after a benchmark (ours and the legacy baseline).
    fn counters(&self) -> Option<String> {
        None
    }
}

/// A VA-range allocator shared between threads.
pub trait SharedVaAllocator: Send + Sync {
    /// Short name for benchmark ids.
    fn name(&self) -> &'static str;
    /// As [`VaAllocator::alloc`].
    fn alloc(&self, size: u64, align: u64) -> Option<u64>;
    /// As [`VaAllocator::free`].
    fn free(&self, addr: u64, size: u64, align: u64) -> Result<(), PeerError>;
    /// As [`VaAllocator::settle`].
    fn settle(&self) {}
}

/// A single-threaded adapter behind a parking_lot mutex, for the multi-thread benchmarks.
pub struct Locked<A>(Mutex<A>);

impl<A: VaAllocator> Locked<A> {
    /// Wrap `inner`.
    pub fn new(inner: A) -> Self {
        Self(Mutex::new(inner))
    }
}

impl<A: VaAllocator> SharedVaAllocator for Locked<A> {
    fn name(&self) -> &'static str {
        self.0.lock().name()
    }
    fn alloc(&self, size: u64, align: u64) -> Option<u64> {
        self.0.lock().alloc(size, align)
    }
    fn free(&self, addr: u64, size: u64, align: u64) -> Result<(), PeerError> {
        self.0.lock().free(addr, size, align)
    }
    fn settle(&self) {
        self.0.lock().settle();
    }
}

/// Number of pages in `bytes`, rounded up.
fn pages(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE)
}

/// Fibonacci hashing for `u64` keys (addresses are page multiples: the low bits carry
/// nothing, a multiplicative hash spreads the high ones). What a kernel hash table would use.
#[derive(Default, Clone, Copy)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type AddrMap<V> = HashMap<u64, V, BuildHasherDefault<AddrHasher>>;

// ---------------------------------------------------------------------------------------------
// range-alloc

/// `range-alloc`: a sorted `Vec` of free ranges, best fit by a full scan.
pub struct RangeAllocPeer {
    inner: range_alloc::RangeAllocator<u64>,
}

impl RangeAllocPeer {
    /// Manage `VA_BASE..VA_BASE + span`.
    pub fn new(span: u64) -> Self {
        Self {
            inner: range_alloc::RangeAllocator::new(VA_BASE..VA_BASE + span),
        }
    }
}

impl VaAllocator for RangeAllocPeer {
    fn name(&self) -> &'static str {
        "range-alloc"
    }
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let r = if align <= PAGE {
            self.inner.allocate_range(size)
        } else {
            self.inner.allocate_range_aligned(size, align)
        };
        r.ok().map(|r| r.start)
    }
    fn free(&mut self, addr: u64, size: u64, _align: u64) -> Result<(), PeerError> {
        let init = self.inner.initial_range();
        let end = addr
            .checked_add(size)
            .ok_or(PeerError::Rejected { addr, size })?;
        if size == 0 || addr < init.start || end > init.end {
            return Err(PeerError::Rejected { addr, size });
        }
        self.inner.free_range(addr..end);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// offset-allocator

/// `offset-allocator`: TLSF-like O(1) bins (in pages here). It cannot align, so an aligned
/// request over-allocates `align - PAGE` and the handle is kept by aligned address.
pub struct OffsetAllocPeer {
    inner: offset_allocator::Allocator<u32>,
    base_page: u64,
    live: AddrMap<offset_allocator::Allocation<u32>>,
}

impl OffsetAllocPeer {
    /// Manage `VA_BASE..VA_BASE + span` with room for `max_allocs` live allocations (free
    /// fragments count too: the crate keeps one node per fragment).
    pub fn new(span: u64, max_allocs: u32) -> Result<Self, PeerError> {
        let npages = u32::try_from(pages(span)).map_err(|_| PeerError::SpanTooLarge { span })?;
        let max_allocs = max_allocs.clamp(16, u32::MAX - 2);
        Ok(Self {
            inner: offset_allocator::Allocator::with_max_allocs(npages, max_allocs),
            base_page: VA_BASE / PAGE,
            live: AddrMap::default(),
        })
    }
}

impl VaAllocator for OffsetAllocPeer {
    fn name(&self) -> &'static str {
        "offset-allocator"
    }
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let align_pages = pages(align.max(PAGE));
        let want = pages(size).checked_add(align_pages - 1)?;
        let a = self.inner.allocate(u32::try_from(want).ok()?)?;
        let page = (self.base_page + u64::from(a.offset)).next_multiple_of(align_pages);
        let addr = page * PAGE;
        self.live.insert(addr, a);
        Some(addr)
    }
    fn free(&mut self, addr: u64, _size: u64, _align: u64) -> Result<(), PeerError> {
        let a = self
            .live
            .remove(&addr)
            .ok_or(PeerError::UnknownAllocation { addr })?;
        self.inner.free(a);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// free-list

/// `free-list` (the Hermit kernel's): a sorted small-vector of free page ranges, first fit.
pub struct FreeListPeer {
    inner: free_list::FreeList<16>,
}

impl FreeListPeer {
    /// Manage `VA_BASE..VA_BASE + span`.
    pub fn new(span: u64) -> Result<Self, PeerError> {
        let mut inner = free_list::FreeList::new();
        let range = usize::try_from(VA_BASE)
            .ok()
            .zip(usize::try_from(span).ok())
            .and_then(|(b, s)| free_list::PageRange::from_start_len(b, s).ok())
            .ok_or(PeerError::SpanTooLarge { span })?;
        // SAFETY: the range is a made-up address range nobody dereferences; `deallocate`'s
        // contract (the pages may be handed out) is about memory use, and these "pages" are
        // only numbers.
        unsafe { inner.deallocate(range) }.map_err(|_| PeerError::SpanTooLarge { span })?;
        Ok(Self { inner })
    }
}

impl VaAllocator for FreeListPeer {
    fn name(&self) -> &'static str {
        "free-list"
    }
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let layout = free_list::PageLayout::from_size_align(
            usize::try_from(size).ok()?,
            usize::try_from(align.max(PAGE)).ok()?,
        )
        .ok()?;
        self.inner.allocate(layout).ok().map(|r| r.start() as u64)
    }
    fn free(&mut self, addr: u64, size: u64, _align: u64) -> Result<(), PeerError> {
        let range = usize::try_from(addr)
            .ok()
            .zip(usize::try_from(size).ok())
            .and_then(|(a, s)| free_list::PageRange::from_start_len(a, s).ok())
            .ok_or(PeerError::Rejected { addr, size })?;
        // SAFETY: as in `new`: the range is only numbers, and the caller gives back exactly
        // what `alloc` handed out (the crate rejects overlaps with free space).
        unsafe { self.inner.deallocate(range) }.map_err(|_| PeerError::Rejected { addr, size })
    }
}

// ---------------------------------------------------------------------------------------------
// vmem

/// Boundary-tag allocator for `vmem` (the crate needs one; its `nightly` feature would use
/// the global allocator, which is what this does on stable).
#[derive(Default, Clone, Copy)]
pub struct BtHeap;

// SAFETY: `allocate` returns a fresh, properly aligned allocation the size of a `Bt` (a
// `Box<MaybeUninit<Bt>>`), and `deallocate` frees exactly such pointers, once, as the trait's
// contract (that of `core::alloc::Allocator`) requires of the caller.
unsafe impl vmem::Allocator for BtHeap {
    fn allocate(&self) -> Option<NonNull<vmem::Bt>> {
        let b: Box<std::mem::MaybeUninit<vmem::Bt>> = Box::new_uninit();
        NonNull::new(Box::into_raw(b).cast::<vmem::Bt>())
    }
    unsafe fn deallocate(&self, ptr: NonNull<vmem::Bt>) {
        // SAFETY: `ptr` came from `allocate` above (a leaked `Box<MaybeUninit<Bt>>`) and the
        // arena gives each tag back once; dropping a `MaybeUninit` runs no destructor.
        drop(unsafe { Box::from_raw(ptr.as_ptr().cast::<std::mem::MaybeUninit<vmem::Bt>>()) });
    }
}

/// `vmem` (Bonwick's vmem): power-of-two free lists, instant fit, its own lock (a std mutex),
/// so it is `Sync` without [`Locked`].
///
/// Its constrained allocation (`xalloc`) is not usable in 1.0.0: it only searches the first
/// non-empty free list that can hold the size (an aligned request fails with plenty of space
/// left), and after a few dozen aligned requests the arena's segment list loses free space
/// (seen in this module's tests: the tail span vanishes from the arena's own dump). So an
/// aligned request over-allocates `size + align - PAGE` with the plain `alloc` and the real
/// base is remembered by aligned address. Its `free` merges a segment with the free one
/// before it but not with the one after it, so free space fragments over time (also in the
/// tests); that is the crate as a user gets it.
pub struct VmemPeer {
    arena: vmem::Arena<'static, 'static, BtHeap, std::sync::Mutex<()>>,
    /// aligned address -> base actually allocated, for the over-allocation fallback.
    over: Mutex<AddrMap<u64>>,
    /// Number of entries in `over` (lets the common free skip its lock).
    n_over: AtomicUsize,
}

impl VmemPeer {
    /// Manage `VA_BASE..VA_BASE + span` with a page quantum.
    pub fn new(span: u64) -> Result<Self, PeerError> {
        let arena = vmem::Arena::create("kva", PAGE as usize, None, BtHeap)
            .map_err(|_| PeerError::SpanTooLarge { span })?;
        let base = usize::try_from(VA_BASE).map_err(|_| PeerError::SpanTooLarge { span })?;
        let len = usize::try_from(span).map_err(|_| PeerError::SpanTooLarge { span })?;
        arena
            .add_span(base, len)
            .map_err(|_| PeerError::SpanTooLarge { span })?;
        Ok(Self {
            arena,
            over: Mutex::new(AddrMap::default()),
            n_over: AtomicUsize::new(0),
        })
    }
}

impl SharedVaAllocator for VmemPeer {
    fn name(&self) -> &'static str {
        "vmem"
    }
    fn alloc(&self, size: u64, align: u64) -> Option<u64> {
        let size_us = usize::try_from(size).ok()?;
        if align <= PAGE {
            return self
                .arena
                .alloc(size_us, vmem::AllocPolicy::InstantFit)
                .ok()
                .map(|a| a as u64);
        }
        let padded = usize::try_from(size.checked_add(align - PAGE)?).ok()?;
        let base = self
            .arena
            .alloc(padded, vmem::AllocPolicy::InstantFit)
            .ok()? as u64;
        let addr = base.next_multiple_of(align);
        self.over.lock().insert(addr, base);
        self.n_over.fetch_add(1, Ordering::Relaxed);
        Some(addr)
    }
    fn free(&self, addr: u64, _size: u64, _align: u64) -> Result<(), PeerError> {
        let mut base = addr;
        if self.n_over.load(Ordering::Relaxed) != 0
            && let Some(b) = self.over.lock().remove(&addr)
        {
            self.n_over.fetch_sub(1, Ordering::Relaxed);
            base = b;
        }
        let a = usize::try_from(base).map_err(|_| PeerError::UnknownAllocation { addr })?;
        self.arena
            .free(a)
            .map_err(|_| PeerError::UnknownAllocation { addr })
    }
}

impl VaAllocator for VmemPeer {
    fn name(&self) -> &'static str {
        SharedVaAllocator::name(self)
    }
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        SharedVaAllocator::alloc(self, size, align)
    }
    fn free(&mut self, addr: u64, size: u64, align: u64) -> Result<(), PeerError> {
        SharedVaAllocator::free(self, addr, size, align)
    }
}

// ---------------------------------------------------------------------------------------------
// buddy_system_allocator

/// `buddy_system_allocator`'s `FrameAllocator` over page numbers: power-of-two blocks, one
/// `BTreeSet` per order.
pub struct BuddyPeer {
    inner: buddy_system_allocator::FrameAllocator<33>,
}

impl BuddyPeer {
    /// Manage `VA_BASE..VA_BASE + span`.
    pub fn new(span: u64) -> Result<Self, PeerError> {
        let start =
            usize::try_from(VA_BASE / PAGE).map_err(|_| PeerError::SpanTooLarge { span })?;
        let n = usize::try_from(pages(span)).map_err(|_| PeerError::SpanTooLarge { span })?;
        let mut inner = buddy_system_allocator::FrameAllocator::new();
        inner.add_frame(start, start + n);
        Ok(Self { inner })
    }

    fn layout(size: u64, align: u64) -> Option<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(
            usize::try_from(pages(size)).ok()?,
            usize::try_from(pages(align.max(PAGE))).ok()?,
        )
        .ok()
    }
}

impl VaAllocator for BuddyPeer {
    fn name(&self) -> &'static str {
        "buddy_system_allocator"
    }
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let layout = Self::layout(size, align)?;
        self.inner.alloc_aligned(layout).map(|p| p as u64 * PAGE)
    }
    fn free(&mut self, addr: u64, size: u64, align: u64) -> Result<(), PeerError> {
        let layout = Self::layout(size, align).ok_or(PeerError::Rejected { addr, size })?;
        let page = usize::try_from(addr / PAGE).map_err(|_| PeerError::Rejected { addr, size })?;
        self.inner.dealloc_aligned(page, layout);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// BTreeMap first fit

/// A `BTreeMap<start, end>` of free ranges, first fit by walking it in address order, merging
/// both neighbours on free: the usual hand-written kernel KVA allocator.
pub struct BTreeFirstFit {
    free: BTreeMap<u64, u64>,
    start: u64,
    end: u64,
}

impl BTreeFirstFit {
    /// Manage `VA_BASE..VA_BASE + span`.
    pub fn new(span: u64) -> Self {
        let mut free = BTreeMap::new();
        free.insert(VA_BASE, VA_BASE + span);
        Self {
            free,
            start: VA_BASE,
            end: VA_BASE + span,
        }
    }
}

impl VaAllocator for BTreeFirstFit {
    fn name(&self) -> &'static str {
        "btreemap-first-fit"
    }
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        let align = align.max(PAGE);
        let (fs, fe, addr) = self.free.iter().find_map(|(&s, &e)| {
            let a = s.checked_next_multiple_of(align)?;
            (a.checked_add(size)? <= e).then_some((s, e, a))
        })?;
        self.free.remove(&fs);
        if addr > fs {
            self.free.insert(fs, addr);
        }
        if addr + size < fe {
            self.free.insert(addr + size, fe);
        }
        Some(addr)
    }
    fn free(&mut self, addr: u64, size: u64, _align: u64) -> Result<(), PeerError> {
        let bad = PeerError::Rejected { addr, size };
        let end = addr.checked_add(size).ok_or(bad.clone())?;
        if size == 0 || addr < self.start || end > self.end {
            return Err(bad);
        }
        let prev = self.free.range(..=addr).next_back().map(|(&s, &e)| (s, e));
        let next = self.free.range(addr..).next().map(|(&s, &e)| (s, e));
        if prev.is_some_and(|(_, e)| e > addr) || next.is_some_and(|(s, _)| s < end) {
            return Err(bad);
        }
        let mut new_start = addr;
        let mut new_end = end;
        if let Some((ps, pe)) = prev
            && pe == addr
        {
            self.free.remove(&ps);
            new_start = ps;
        }
        if let Some((ns, ne)) = next
            && ns == end
        {
            self.free.remove(&ns);
            new_end = ne;
        }
        self.free.insert(new_start, new_end);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// ours

/// Ours: [`vmalloc::Kva`] with a [`CountingFlush`] (no page tables). `alloc` is
/// `Kva::alloc` over the whole range; `free` is what `vfree` does to the VA: `remove` then
/// `free_lazy` (the range is reused after a lazy purge, whose cost is included).
pub struct KvaPeer {
    kva: vmalloc::Kva,
    flush: Arc<CountingFlush>,
    name: &'static str,
    start: u64,
    end: u64,
}

impl KvaPeer {
    /// A `Kva` over `VA_BASE..VA_BASE + span` built from `cfg` (its range is replaced).
    pub fn with_config(
        name: &'static str,
        span: u64,
        cfg: vmalloc::KvaConfig,
    ) -> Result<Self, vmalloc::VmallocError> {
        let (start, end) = (VA_BASE, VA_BASE + span);
        let flush = Arc::new(CountingFlush::new());
        let as_dyn: Arc<dyn TlbFlush> = flush.clone();
        let kva = vmalloc::Kva::new(vmalloc::KvaConfig { start, end, ..cfg }, as_dyn)?;
        Ok(Self {
            kva,
            flush,
            name,
            start,
            end,
        })
    }

    /// The default configuration (sharded, per-CPU caches, background purge workers).
    pub fn sharded(span: u64) -> Result<Self, vmalloc::VmallocError> {
        Self::with_config("kva", span, vmalloc::KvaConfig::default())
    }

    /// The Linux 5.x design: one free tree under one lock, no per-CPU caches.
    pub fn single_lock(span: u64) -> Result<Self, vmalloc::VmallocError> {
        Self::with_config(
            "kva-single-lock",
            span,
            vmalloc::KvaConfig::single_lock(0, 0),
        )
    }

    /// The allocator itself.
    pub fn kva(&self) -> &vmalloc::Kva {
        &self.kva
    }

    /// The TLB flushes the allocator asked for so far.
    pub fn tlb_stats(&self) -> TlbStats {
        self.flush.stats()
    }
}

impl SharedVaAllocator for KvaPeer {
    fn name(&self) -> &'static str {
        self.name
    }
    fn alloc(&self, size: u64, align: u64) -> Option<u64> {
        let info = vmalloc::AreaInfo::new(vmalloc::VmFlags::ALLOC);
        self.kva
            .alloc(size, align, self.start, self.end, None, info)
            .ok()
    }
    fn free(&self, addr: u64, _size: u64, _align: u64) -> Result<(), PeerError> {
        let area = self
            .kva
            .remove(addr)
            .map_err(|_| PeerError::UnknownAllocation { addr })?;
        self.kva.free_lazy(area, 0);
        Ok(())
    }
    fn settle(&self) {
        self.kva.purge();
    }
}

impl VaAllocator for KvaPeer {
    fn name(&self) -> &'static str {
        self.name
    }
    fn counters(&self) -> Option<String> {
        let s = self.kva.stats();
        let t = self.flush.stats();
        Some(format!(
            "busy areas {}, free areas {}, purges {}, purged areas {}, to caches {}, TLB \
             flushes {} ({} full)",
            s.nr_busy,
            s.nr_free_areas,
            s.purges,
            s.purged_areas,
            s.purged_to_caches,
            t.flushes,
            t.full_flushes
        ))
    }
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        SharedVaAllocator::alloc(self, size, align)
    }
    fn free(&mut self, addr: u64, size: u64, align: u64) -> Result<(), PeerError> {
        SharedVaAllocator::free(self, addr, size, align)
    }
    fn settle(&mut self) {
        SharedVaAllocator::settle(self);
    }
}

// ---------------------------------------------------------------------------------------------
// the legacy baseline (seed 003)

/// The legacy baseline's KVA part ([`crate::legacy::kva::LegacyKva`], Linux 3.x: busy list
/// walk from `free_vmap_cache`, one global lock, lazy purge) with a [`CountingFlush`].
/// `free` is its lazy free of an area without a `vm` (`abandon`), like ours.
pub struct LegacyKvaPeer {
    kva: crate::legacy::kva::LegacyKva<()>,
    flush: Arc<CountingFlush>,
    start: u64,
    end: u64,
}

impl LegacyKvaPeer {
    /// Over `VA_BASE..VA_BASE + span`, Linux's lazy threshold for this machine.
    pub fn new(span: u64) -> Self {
        let flush = Arc::new(CountingFlush::new());
        let as_dyn: Arc<dyn TlbFlush> = flush.clone();
        let lazy = crate::legacy::kva::lazy_max_pages(pagetable::cpu::nr_cpu_ids());
        Self {
            kva: crate::legacy::kva::LegacyKva::new(as_dyn, lazy),
            flush,
            start: VA_BASE,
            end: VA_BASE + span,
        }
    }

    /// The allocator's counters (busy areas, list nodes walked, purges).
    pub fn stats(&self) -> crate::legacy::kva::KvaStats {
        self.kva.stats()
    }

    /// The TLB flushes the allocator asked for so far.
    pub fn tlb_stats(&self) -> TlbStats {
        self.flush.stats()
    }
}

impl SharedVaAllocator for LegacyKvaPeer {
    fn name(&self) -> &'static str {
        "legacy"
    }
    fn alloc(&self, size: u64, align: u64) -> Option<u64> {
        self.kva
            .alloc(size, align.max(PAGE), self.start, self.end)
            .ok()
    }
    fn free(&self, addr: u64, _size: u64, _align: u64) -> Result<(), PeerError> {
        self.kva
            .abandon(addr)
            .map_err(|_| PeerError::UnknownAllocation { addr })
    }
    fn settle(&self) {
        self.kva.purge_vmap_area_lazy();
    }
}

impl VaAllocator for LegacyKvaPeer {
    fn name(&self) -> &'static str {
        "legacy"
    }
    fn counters(&self) -> Option<String> {
        let s = self.kva.stats();
        let t = self.flush.stats();
        Some(format!(
            "busy areas {}, list nodes walked {}, purges {}, TLB flushes {} ({} full)",
            s.busy_areas, s.walk_steps, s.purges, t.flushes, t.full_flushes
        ))
    }
    fn alloc(&mut self, size: u64, align: u64) -> Option<u64> {
        SharedVaAllocator::alloc(self, size, align)
    }
    fn free(&mut self, addr: u64, size: u64, align: u64) -> Result<(), PeerError> {
        SharedVaAllocator::free(self, addr, size, align)
    }
    fn settle(&mut self) {
        SharedVaAllocator::settle(self);
    }
}

// ---------------------------------------------------------------------------------------------
// Sets of adapters and a small generator shared by the benchmarks

/// Every peer (not ours) as a single-threaded adapter over `span` bytes, sized for up to
/// `max_live` live allocations.
pub fn peers_single(span: u64, max_live: u32) -> Result<Vec<Box<dyn VaAllocator>>, PeerError> {
    Ok(vec![
        Box::new(RangeAllocPeer::new(span)),
        Box::new(OffsetAllocPeer::new(
            span,
            max_live.saturating_mul(2).saturating_add(64),
        )?),
        Box::new(FreeListPeer::new(span)?),
        Box::new(VmemPeer::new(span)?),
        Box::new(BuddyPeer::new(span)?),
        Box::new(BTreeFirstFit::new(span)),
    ])
}

/// Every peer (not ours) shareable between threads: `vmem` as it is, the others behind
/// [`Locked`].
pub fn peers_shared(
    span: u64,
    max_live: u32,
) -> Result<Vec<Box<dyn SharedVaAllocator>>, PeerError> {
    Ok(vec![
        Box::new(Locked::new(RangeAllocPeer::new(span))),
        Box::new(Locked::new(OffsetAllocPeer::new(
            span,
            max_live.saturating_mul(2).saturating_add(64),
        )?)),
        Box::new(Locked::new(FreeListPeer::new(span)?)),
        Box::new(VmemPeer::new(span)?),
        Box::new(Locked::new(BuddyPeer::new(span)?)),
        Box::new(Locked::new(BTreeFirstFit::new(span))),
    ])
}

/// xorshift64*: a deterministic, dependency-free generator for benchmark patterns.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (zero is replaced by a fixed odd constant).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x2545_f491_4f6c_dd1d
        } else {
            seed
        })
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish in `lo..=hi` (modulo bias is irrelevant here).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

/// Run `f(thread_index)` on `n` fresh threads started together and return the wall time from
/// the first thread leaving the start barrier to the last one finishing (thread creation and
/// joining are not counted). Thread `i` is pinned to CPU slot `i` ([`pagetable::cpu`]), so
/// per-CPU structures see distinct CPUs.
pub fn run_together<F>(n: usize, f: F) -> std::time::Duration
where
    F: Fn(usize) + Sync,
{
    let barrier = std::sync::Barrier::new(n);
    let spans: Vec<(std::time::Instant, std::time::Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, f) = (&barrier, &f);
                s.spawn(move || {
                    pagetable::cpu::set_this_cpu(i);
                    barrier.wait();
                    let start = std::time::Instant::now();
                    f(i);
                    (start, std::time::Instant::now())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let start = spans.iter().map(|s| s.0).min();
    let end = spans.iter().map(|s| s.1).max();
    match (start, end) {
        (Some(s), Some(e)) => e.duration_since(s),
        _ => std::time::Duration::ZERO,
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    const SPAN: u64 = 64 << 20;

    /// Allocate random sizes and alignments, check alignment and non-overlap against every
    /// live range, free in a scrambled order, then prove everything coalesced by allocating
    /// the whole span.
    fn exercise(a: &mut dyn VaAllocator) {
        let mut rng = XorShift::new(7);
        let mut live: BTreeMap<u64, (u64, u64)> = BTreeMap::new();
        for round in 0..3 {
            for _ in 0..200 {
                let size = rng.range(1, 8) * PAGE;
                let align = PAGE << rng.range(0, 4);
                let addr = a
                    .alloc(size, align)
                    .unwrap_or_else(|| panic!("{} alloc", a.name()));
                assert_eq!(
                    addr % align,
                    0,
                    "{}: {addr:#x} not aligned to {align:#x}",
                    a.name()
                );
                assert!(
                    addr >= VA_BASE && addr + size <= VA_BASE + SPAN,
                    "{}",
                    a.name()
                );
                if let Some((&s, &(sz, _))) = live.range(..=addr).next_back() {
                    assert!(s + sz <= addr, "{}: overlap below {addr:#x}", a.name());
                }
                if let Some((&s, _)) = live.range(addr..).next() {
                    assert!(addr + size <= s, "{}: overlap above {addr:#x}", a.name());
                }
                live.insert(addr, (size, align));
            }
            // Free every other one (by a scrambled key order), keep the rest for the next
            // round; free everything in the last round.
            let keys: Vec<u64> = live.keys().copied().collect();
            for (i, k) in keys.iter().enumerate() {
                if round == 2 || (i * 7 + round) % 2 == 0 {
                    let (size, align) = live.remove(k).expect("key");
                    a.free(*k, size, align)
                        .unwrap_or_else(|e| panic!("{}: {e}", a.name()));
                }
            }
        }
        assert!(live.is_empty());
        a.settle();
        if a.name() == "vmem" {
            // vmem 1.0.0 does not merge a freed segment with the free one after it (see
            // `vmem_keeps_free_space_but_does_not_merge_with_the_next_segment`).
            return;
        }
        let all = a
            .alloc(SPAN, PAGE)
            .unwrap_or_else(|| panic!("{}: no coalescing", a.name()));
        assert_eq!(all, VA_BASE, "{}", a.name());
        a.free(all, SPAN, PAGE).expect("free all");
    }

    #[test]
    fn vmem_keeps_free_space_but_does_not_merge_with_the_next_segment() {
        // Documents the peer's behaviour the benchmarks live with (vmem 1.0.0).
        let v = VmemPeer::new(SPAN).expect("vmem");
        let x = SharedVaAllocator::alloc(&v, PAGE, PAGE).expect("x");
        let y = SharedVaAllocator::alloc(&v, 2 * PAGE, PAGE).expect("y");
        SharedVaAllocator::free(&v, x, PAGE, PAGE).expect("free x");
        SharedVaAllocator::free(&v, y, 2 * PAGE, PAGE).expect("free y");
        assert_eq!(v.arena.free_space() as u64, SPAN);
        assert_eq!(SharedVaAllocator::alloc(&v, SPAN, PAGE), None);
    }

    #[test]
    fn every_single_threaded_adapter_allocates_disjoint_aligned_ranges() {
        for mut a in peers_single(SPAN, 1024).expect("peers") {
            exercise(a.as_mut());
        }
    }

    #[test]
    fn ours_allocates_disjoint_aligned_ranges() {
        let mut k = KvaPeer::sharded(SPAN).expect("kva");
        exercise(&mut k);
        k.kva().check_invariants().expect("invariants");
        let mut k = KvaPeer::single_lock(SPAN).expect("kva single lock");
        exercise(&mut k);
        k.kva().check_invariants().expect("invariants");
    }

    #[test]
    fn legacy_allocates_disjoint_aligned_ranges() {
        let mut l = LegacyKvaPeer::new(SPAN);
        exercise(&mut l);
        VaAllocator::settle(&mut l);
        assert_eq!(l.stats().busy_areas, 0);
    }

    #[test]
    fn shared_adapters_work_from_two_threads() {
        let mut all = peers_shared(SPAN, 1024).expect("peers");
        all.push(Box::new(KvaPeer::sharded(SPAN).expect("kva")));
        all.push(Box::new(LegacyKvaPeer::new(SPAN)));
        for a in all {
            let a: &dyn SharedVaAllocator = a.as_ref();
            let results: Vec<Vec<u64>> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(move || {
                            let mut got = Vec::new();
                            for _ in 0..300 {
                                got.push(a.alloc(2 * PAGE, PAGE).expect("alloc"));
                            }
                            got
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("join")).collect()
            });
            let mut all: Vec<u64> = results.concat();
            all.sort_unstable();
            for w in all.windows(2) {
                assert!(w[0] + 2 * PAGE <= w[1], "{}: overlap", a.name());
            }
            for addr in all {
                a.free(addr, 2 * PAGE, PAGE).expect("free");
            }
        }
    }

    #[test]
    fn bad_frees_are_reported() {
        let mut b = BTreeFirstFit::new(SPAN);
        let x = b.alloc(PAGE, PAGE).expect("alloc");
        b.free(x, PAGE, PAGE).expect("free");
        assert!(b.free(x, PAGE, PAGE).is_err(), "double free");
        let mut o = OffsetAllocPeer::new(SPAN, 64).expect("offset");
        assert_eq!(
            o.free(VA_BASE, PAGE, PAGE),
            Err(PeerError::UnknownAllocation { addr: VA_BASE })
        );
        let v = VmemPeer::new(SPAN).expect("vmem");
        assert!(SharedVaAllocator::free(&v, VA_BASE, PAGE, PAGE).is_err());
        let mut f = FreeListPeer::new(SPAN).expect("free-list");
        assert!(f.free(VA_BASE, PAGE, PAGE).is_err(), "free of free space");
        assert!(OffsetAllocPeer::new(1 << 60, 64).is_err());
    }
}
