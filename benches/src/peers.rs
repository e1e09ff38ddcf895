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
//! Ours and the legacy baseline's KVA part get the same traits in the `ours` submodule
//! ([`KvaPeer`], [`LegacyKvaPeer`]). The module also holds what the criterion benchmarks share: the sets of
//! adapters ([`peers_single`], [`peers_shared`]), a tiny deterministic generator
//! ([`XorShift`]) and [`run_together`], which times `n` threads released together.
//!
//! Locking: none inside the single-threaded adapters; [`Locked`] holds its mutex for the
//! whole of one `alloc` or `free`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;

mod ours;
#[cfg(feature = "spin-peer")]
pub use ours::SpinKvaPeer;
pub use ours::{KvaPeer, LegacyKvaPeer, SpinPlatform};

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
mod tests;
