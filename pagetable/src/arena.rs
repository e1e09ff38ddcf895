//! The physical arena: the simulated machine's RAM.
//!
//! How it works, backings, invariants and what an access orders: see [`PhysArena`]'s
//! documentation (what users rely on). For maintainers: the storage is a `Memory` (a pointer
//! and a word count, owned as its `Owner` says; a boxed slice of loom atomics under loom).
//!
//! Locking/ordering: no lock; the byte copies' `Relaxed` accesses are described under
//! [`PhysArena`]'s *Ordering*, since callers rely on them.

use core::fmt;
#[cfg(not(feature = "loom"))]
use core::ptr::NonNull;

use crate::addr::PhysAddr;
use crate::entry::PageTable;
use crate::page::{PAGE_SIZE, PhysFrame, Size4KiB};
use crate::sync::{AtomicU64, Ordering};

const WORD: usize = 8;
const WORDS_PER_PAGE: usize = PAGE_SIZE as usize / WORD;

/// Why an arena could not be created or accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ArenaError {
    /// The size is zero, not a multiple of 4 KiB, or larger than this host can address.
    #[error("arena size {size:#x} must be a non-zero multiple of 4096 addressable on this host")]
    InvalidSize {
        /// The rejected size.
        size: u64,
    },
    /// The base physical address is not 4 KiB aligned.
    #[error("arena base {base:#x} is not 4 KiB aligned")]
    MisalignedBase {
        /// The rejected base.
        base: u64,
    },
    /// `base + size` does not fit in the 52-bit physical address space.
    #[error("arena {base:#x} + {size:#x} exceeds the 52-bit physical address space")]
    TooLarge {
        /// The requested base.
        base: u64,
        /// The requested size.
        size: u64,
    },
    /// An access outside `base .. base + size`.
    #[error("physical range {addr:#x} + {len:#x} is outside the arena")]
    OutOfBounds {
        /// The first address of the access.
        addr: PhysAddr,
        /// The length of the access in bytes.
        len: u64,
    },
    /// A word access at an address that is not a multiple of `align`.
    #[error("physical address {addr:#x} is not aligned to {align}")]
    Misaligned {
        /// The rejected address.
        addr: PhysAddr,
        /// The required alignment.
        align: u64,
    },
    /// The heap allocation for the arena failed.
    #[error("could not allocate a {size:#x}-byte heap arena")]
    OutOfMemory {
        /// The requested size.
        size: u64,
    },
    /// `mmap` failed.
    #[error("mmap of a {size:#x}-byte arena failed (os error {errno:?})")]
    MmapFailed {
        /// The requested size.
        size: u64,
        /// The OS error number, if any.
        errno: Option<i32>,
    },
    /// The mmap backing was asked for where it does not exist (without the `std` feature,
    /// or under loom).
    #[error("the mmap backing is not available in this build (needs `std`, not under loom)")]
    MmapUnavailable,
    /// [`Backing::DirectMap`] given to [`PhysArena::new`]: such an arena is made by the
    /// unsafe [`PhysArena::from_direct_map`], which takes the memory's address.
    #[error("a direct-map arena is built with PhysArena::from_direct_map")]
    DirectMapNeedsAddress,
    /// Raw pointers into the arena are not available in this build (loom models the words).
    #[error("raw access to the arena is not available under loom")]
    NoRawAccess,
}

/// Where the arena's memory comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Backing {
    /// A zeroed heap allocation (tests, Miri, loom, fuzzing).
    #[default]
    Heap,
    /// An anonymous `MAP_NORESERVE` mapping; `huge_pages` adds `MADV_HUGEPAGE` (needs the
    /// `std` feature; [`ArenaError::MmapUnavailable`] otherwise).
    Mmap {
        /// Ask for transparent huge pages (best effort, see
        /// [`PhysArena::huge_page_advice_applied`]).
        huge_pages: bool,
    },
    /// Memory the host already maps, e.g. a kernel's direct map of physical RAM (see
    /// [`PhysArena::from_direct_map`]); the arena borrows it and never frees it.
    DirectMap,
}

/// How to build a [`PhysArena`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArenaConfig {
    /// Size in bytes (a non-zero multiple of 4 KiB).
    pub size: u64,
    /// Physical address of the first byte (4 KiB aligned).
    pub base: PhysAddr,
    /// Where the memory comes from.
    pub backing: Backing,
}

impl Default for ArenaConfig {
    /// 64 MiB of heap at physical 1 MiB (frame 0 is left out, like on a PC).
    fn default() -> Self {
        Self {
            size: 64 << 20,
            base: PhysAddr::new(1 << 20),
            backing: Backing::Heap,
        }
    }
}

/// The simulated physical memory: the machine's RAM, at physical addresses
/// `base .. base + size`.
///
/// # How it works
///
/// The memory is stored as a slice of atomic 64-bit words. Every access goes through those
/// atomics, so page tables (whose entries are the same words, see [`PhysArena::table`]) and
/// data pages can be read and written by many threads at once without undefined behaviour,
/// even when a frame is freed and reused while a stale reader still looks at it: a
/// use-after-free of a frame is a *wrong value*, as on hardware, never UB.
///
/// Backings, chosen at construction by [`ArenaConfig::backing`]:
///
/// * [`Backing::Heap`]: a zeroed, 4 KiB-aligned heap allocation (`alloc_zeroed`, which the
///   system allocator serves from fresh zero pages for large sizes) viewed as atomics; under
///   the `loom` feature, a boxed slice of loom atomics instead. The only backing under Miri
///   and loom.
/// * [`Backing::Mmap`]: an anonymous private `mmap` with `MAP_NORESERVE` (memmap2's
///   `no_reserve_swap`), optionally advised `MADV_HUGEPAGE`. A multi-GiB arena costs no
///   memory until its pages are touched (the frame allocator hands out never-touched frames
///   without writing them). Needs `std`; not available under loom.
/// * [`Backing::DirectMap`]: memory the host already maps (a kernel's direct map), borrowed
///   through the unsafe [`PhysArena::from_direct_map`].
///
/// # Invariants
///
/// `base` and `size` are multiples of 4 KiB, `size > 0`, `base + size` fits in 52 bits; the
/// storage holds exactly `size / 8` words, initially zero (except a direct map the host did
/// not clear, see [`PhysArena::starts_zeroed`]), and lives at a fixed address as long as the
/// arena. Physical address `base + 8 * i` is word `i`.
///
/// # Ordering
///
/// There is no lock. The byte copies ([`PhysArena::read`], [`PhysArena::write`],
/// [`PhysArena::fill`], [`PhysArena::zero_frame`]) use `Relaxed` atomic accesses (a
/// compare-exchange loop for a word only partly covered, so writers of different bytes of
/// one word never lose each other's bytes) and order nothing: whoever publishes the data (a
/// page-table entry stored with `Release`, a lock) provides the happens-before edge. Bytes
/// are laid out in native endianness, so [`PhysArena::ptr`] views and the byte API agree.
pub struct PhysArena {
    base: u64,
    size: u64,
    backing: Backing,
    huge_applied: bool,
    /// Whether every word was zero when the arena was built (not for a direct map the host
    /// did not clear): the frame allocator's never-touched frames are then known zero.
    starts_zeroed: bool,
    mem: Memory,
}

#[cfg(not(feature = "loom"))]
enum Owner {
    /// Allocated with `alloc_zeroed(layout)`; freed in `Memory::drop`.
    Heap(alloc::alloc::Layout),
    /// The mapping; unmapped when dropped. Kept only for ownership: after construction its
    /// memory is reached exclusively through `Memory::ptr`.
    #[cfg(feature = "std")]
    Mmap(#[allow(dead_code)] memmap2::MmapMut),
    /// The host's memory (a kernel's direct map): borrowed, never freed.
    Borrowed,
}

/// The storage: `words` atomics starting at `ptr`, owned as described by `owner`.
#[cfg(not(feature = "loom"))]
struct Memory {
    ptr: NonNull<AtomicU64>,
    words: usize,
    owner: Owner,
}

#[cfg(not(feature = "loom"))]
impl Drop for Memory {
    fn drop(&mut self) {
        if let Owner::Heap(layout) = self.owner {
            // SAFETY: `ptr` was returned by `alloc_zeroed(layout)` in `PhysArena::new` and is
            // freed exactly once, here; every reference into it borrows the arena, so none
            // outlives this drop.
            unsafe { alloc::alloc::dealloc(self.ptr.as_ptr().cast::<u8>(), layout) };
        }
    }
}

// SAFETY: the memory is owned by the arena (no thread affinity: a heap block or a private
// mapping) and is only ever accessed through `AtomicU64` operations (or through raw pointers
// handed out by `ptr`, whose use is the caller's unsafe responsibility), so sharing and
// sending the arena between threads is as safe as sharing a `[AtomicU64]`.
#[cfg(not(feature = "loom"))]
unsafe impl Send for Memory {}
// SAFETY: see the `Send` impl: all shared access is atomic.
#[cfg(not(feature = "loom"))]
unsafe impl Sync for Memory {}

#[cfg(not(feature = "loom"))]
impl Memory {
    fn heap(size: u64) -> Result<Self, ArenaError> {
        let bytes = usize::try_from(size).map_err(|_| ArenaError::InvalidSize { size })?;
        let layout = alloc::alloc::Layout::from_size_align(bytes, PAGE_SIZE as usize)
            .map_err(|_| ArenaError::InvalidSize { size })?;
        // SAFETY: `layout` has a non-zero size (checked by `PhysArena::new`).
        let raw = unsafe { alloc::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw.cast::<AtomicU64>()).ok_or(ArenaError::OutOfMemory { size })?;
        Ok(Self {
            ptr,
            words: bytes / WORD,
            owner: Owner::Heap(layout),
        })
    }

    #[cfg(feature = "std")]
    fn mmap(size: u64, huge_pages: bool) -> Result<(Self, bool), ArenaError> {
        let bytes = usize::try_from(size).map_err(|_| ArenaError::InvalidSize { size })?;
        let mut map = memmap2::MmapOptions::new()
            .len(bytes)
            .no_reserve_swap()
            .map_anon()
            .map_err(|e| ArenaError::MmapFailed {
                size,
                errno: e.raw_os_error(),
            })?;
        // Best effort: a kernel without transparent huge pages refuses the advice, which only
        // costs speed.
        let huge_applied = huge_pages && map.advise(memmap2::Advice::HugePage).is_ok();
        let ptr = NonNull::new(map.as_mut_ptr().cast::<AtomicU64>())
            .ok_or(ArenaError::MmapFailed { size, errno: None })?;
        Ok((
            Self {
                ptr,
                words: bytes / WORD,
                owner: Owner::Mmap(map),
            },
            huge_applied,
        ))
    }

    #[inline]
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` points to `words * 8` bytes that this `Memory` owns and keeps
        // allocated (at a fixed address) until it is dropped, which cannot happen while the
        // returned borrow of `self` lives. The block is aligned to at least 4096 (the heap
        // layout's alignment; mmap returns page-aligned memory), more than `AtomicU64`'s 8.
        // Every bit pattern is a valid `u64`, and `AtomicU64` has the size and bit validity of
        // `u64`; the memory started out zeroed (alloc_zeroed / fresh anonymous pages), so it
        // is initialised. Mutation through a shared slice is what atomics are for, and the
        // memory is never accessed through a `&mut` or non-atomic reference after
        // construction (raw pointers from `PhysArena::ptr` are the caller's responsibility).
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.words) }
    }
}

/// Under loom: a boxed slice of loom atomics (loom cannot track raw memory).
#[cfg(feature = "loom")]
struct Memory {
    words: Box<[AtomicU64]>,
}

#[cfg(feature = "loom")]
impl Memory {
    fn heap(size: u64) -> Result<Self, ArenaError> {
        let bytes = usize::try_from(size).map_err(|_| ArenaError::InvalidSize { size })?;
        Ok(Self {
            words: (0..bytes / WORD).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    #[inline]
    fn words(&self) -> &[AtomicU64] {
        &self.words
    }
}

impl PhysArena {
    /// Build an arena as `cfg` says.
    pub fn new(cfg: ArenaConfig) -> Result<PhysArena, ArenaError> {
        let (base, size) = (cfg.base.as_u64(), cfg.size);
        Self::check_geometry(base, size)?;
        let (mem, huge_applied) = match cfg.backing {
            Backing::Heap => (Memory::heap(size)?, false),
            #[cfg(all(feature = "std", not(feature = "loom")))]
            Backing::Mmap { huge_pages } => Memory::mmap(size, huge_pages)?,
            #[cfg(any(not(feature = "std"), feature = "loom"))]
            Backing::Mmap { .. } => return Err(ArenaError::MmapUnavailable),
            Backing::DirectMap => return Err(ArenaError::DirectMapNeedsAddress),
        };
        Ok(PhysArena {
            base,
            size,
            backing: cfg.backing,
            huge_applied,
            starts_zeroed: true,
            mem,
        })
    }

    /// Check a base and size (shared by the constructors).
    fn check_geometry(base: u64, size: u64) -> Result<(), ArenaError> {
        if size == 0 || size % PAGE_SIZE != 0 || usize::try_from(size).is_err() {
            return Err(ArenaError::InvalidSize { size });
        }
        if base % PAGE_SIZE != 0 {
            return Err(ArenaError::MisalignedBase { base });
        }
        match base.checked_add(size) {
            Some(end) if end <= PhysAddr::MASK => Ok(()),
            _ => Err(ArenaError::TooLarge { base, size }),
        }
    }

    /// An arena over memory the host already maps: physical `base .. base + size` is
    /// reachable at `virt .. virt + size` (a kernel's direct map, Linux's `__va(base)`). The
    /// arena borrows that memory for its whole life and never frees it ([`Backing::DirectMap`]).
    /// `zeroed` says whether the host cleared it: if not, frames the frame allocator hands out
    /// for the first time are not known to be zero and `alloc_zeroed` clears them.
    ///
    /// # Safety
    ///
    /// `virt` must be 4 KiB aligned and valid for reads and writes of `size` bytes for as
    /// long as the arena (and everything built on it) lives; nothing else may access that
    /// memory other than through this arena (the page-table walker of the CPU excepted: it
    /// reads the tables the arena holds, which is what they are for), and no reference to it
    /// may exist outside the arena.
    pub unsafe fn from_direct_map(
        virt: core::ptr::NonNull<u8>,
        base: PhysAddr,
        size: u64,
        zeroed: bool,
    ) -> Result<PhysArena, ArenaError> {
        let base = base.as_u64();
        Self::check_geometry(base, size)?;
        #[cfg(feature = "loom")]
        {
            let _ = (virt, zeroed);
            Err(ArenaError::NoRawAccess)
        }
        #[cfg(not(feature = "loom"))]
        {
            Self::direct_map(virt, base, size, zeroed)
        }
    }

    #[cfg(not(feature = "loom"))]
    fn direct_map(
        virt: NonNull<u8>,
        base: u64,
        size: u64,
        zeroed: bool,
    ) -> Result<PhysArena, ArenaError> {
        if virt.as_ptr() as usize % PAGE_SIZE as usize != 0 {
            return Err(ArenaError::Misaligned {
                addr: PhysAddr::new_truncate(base),
                align: PAGE_SIZE,
            });
        }
        Ok(PhysArena {
            base,
            size,
            backing: Backing::DirectMap,
            huge_applied: false,
            starts_zeroed: zeroed,
            mem: Memory {
                ptr: virt.cast::<AtomicU64>(),
                words: size as usize / WORD,
                owner: Owner::Borrowed,
            },
        })
    }

    /// Whether every byte of the arena was zero when it was built (a heap or mmap arena, or
    /// a direct map the host declared zeroed).
    #[inline]
    pub fn starts_zeroed(&self) -> bool {
        self.starts_zeroed
    }

    /// A heap-backed arena of `size` bytes at physical `base`.
    pub fn heap(size: u64, base: PhysAddr) -> Result<PhysArena, ArenaError> {
        Self::new(ArenaConfig {
            size,
            base,
            backing: Backing::Heap,
        })
    }

    /// An mmap-backed (`MAP_NORESERVE`, no huge-page advice) arena of `size` bytes at
    /// physical `base`.
    pub fn mmap(size: u64, base: PhysAddr) -> Result<PhysArena, ArenaError> {
        Self::new(ArenaConfig {
            size,
            base,
            backing: Backing::Mmap { huge_pages: false },
        })
    }

    /// The first physical address.
    #[inline]
    pub fn base(&self) -> PhysAddr {
        PhysAddr::new_truncate(self.base)
    }

    /// The size in bytes.
    #[inline]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The first physical address after the arena.
    #[inline]
    pub fn end(&self) -> PhysAddr {
        PhysAddr::new_truncate(self.base + self.size)
    }

    /// The backing the arena was built with.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// Whether `MADV_HUGEPAGE` was asked for and accepted by the kernel.
    pub fn huge_page_advice_applied(&self) -> bool {
        self.huge_applied
    }

    /// The number of 4 KiB frames in the arena.
    #[inline]
    pub fn frames(&self) -> u64 {
        self.size / PAGE_SIZE
    }

    /// Whether `addr .. addr + len` lies inside the arena (`len == 0`: `addr` in
    /// `base ..= end`).
    #[inline]
    pub fn contains(&self, addr: PhysAddr, len: u64) -> bool {
        self.offset(addr, len).is_ok()
    }

    /// Byte offset of `addr` after checking that `addr .. addr + len` is inside.
    #[inline]
    fn offset(&self, addr: PhysAddr, len: u64) -> Result<usize, ArenaError> {
        let a = addr.as_u64();
        match a.checked_sub(self.base) {
            Some(off) if len <= self.size && off <= self.size - len => Ok(off as usize),
            _ => Err(ArenaError::OutOfBounds { addr, len }),
        }
    }

    /// The whole arena as words (word `i` holds physical bytes `base + 8 * i ..`).
    #[inline]
    fn all_words(&self) -> &[AtomicU64] {
        self.mem.words()
    }

    /// The page table stored in `frame`.
    ///
    /// # Panics
    /// If `frame` is outside the arena: the frame allocator never hands such a frame out, so
    /// this is a bug in the caller. Use [`PhysArena::try_table`] for untrusted frames.
    #[inline]
    #[track_caller]
    pub fn table(&self, frame: PhysFrame<Size4KiB>) -> &PageTable {
        match self.try_table(frame) {
            Ok(t) => t,
            Err(e) => panic!("PhysArena::table: {e}"),
        }
    }

    /// The page table stored in `frame`, or [`ArenaError::OutOfBounds`].
    #[inline]
    pub fn try_table(&self, frame: PhysFrame<Size4KiB>) -> Result<&PageTable, ArenaError> {
        self.table_at(frame.start_address().as_u64())
            .ok_or(ArenaError::OutOfBounds {
                addr: frame.start_address(),
                len: PAGE_SIZE,
            })
    }

    /// The arena as its page tables, indexed by physical address (see [`Tables`]): what a
    /// walk fetches once and holds in registers for all its levels.
    #[inline]
    pub(crate) fn tables(&self) -> Tables<'_> {
        Tables {
            // Page aligned (an arena invariant); masking tells the compiler so, and it then
            // addresses a table by `pa - base` directly instead of shifting it down and back
            // up. Safety never rests on this: `get` bounds every index by the table slice.
            base: self.base & !(PAGE_SIZE - 1),
            tables: PageTable::tables_from_words(self.all_words()),
        }
    }

    /// The table at physical address `pa` (4 KiB aligned), if it lies in the arena.
    #[inline]
    pub(crate) fn table_at(&self, pa: u64) -> Option<&PageTable> {
        debug_assert!(pa % PAGE_SIZE == 0, "table_at: {pa:#x} not 4 KiB aligned");
        self.tables().get(pa)
    }

    /// The `n` words starting at `addr` (8-byte aligned).
    #[inline]
    pub(crate) fn words(&self, addr: PhysAddr, n: usize) -> Result<&[AtomicU64], ArenaError> {
        if !addr.is_aligned(WORD as u64) {
            return Err(ArenaError::Misaligned {
                addr,
                align: WORD as u64,
            });
        }
        let len = (n as u64)
            .checked_mul(WORD as u64)
            .ok_or(ArenaError::OutOfBounds {
                addr,
                len: u64::MAX,
            })?;
        let w = self.offset(addr, len)? / WORD;
        Ok(&self.all_words()[w..w + n])
    }

    /// Copy `buf.len()` bytes starting at `addr` into `buf`.
    pub fn read(&self, addr: PhysAddr, buf: &mut [u8]) -> Result<(), ArenaError> {
        let off = self.offset(addr, buf.len() as u64)?;
        read_bytes(self.all_words(), off, buf);
        Ok(())
    }

    /// Copy `data` to the arena starting at `addr`.
    pub fn write(&self, addr: PhysAddr, data: &[u8]) -> Result<(), ArenaError> {
        let off = self.offset(addr, data.len() as u64)?;
        write_bytes(self.all_words(), off, data);
        Ok(())
    }

    /// Set `len` bytes starting at `addr` to `byte`.
    pub fn fill(&self, addr: PhysAddr, len: u64, byte: u8) -> Result<(), ArenaError> {
        let off = self.offset(addr, len)?;
        fill_bytes(self.all_words(), off, len as usize, byte);
        Ok(())
    }

    /// Set the 4 KiB `frame` to zero.
    pub fn zero_frame(&self, frame: PhysFrame<Size4KiB>) -> Result<(), ArenaError> {
        for w in self.words(frame.start_address(), WORDS_PER_PAGE)? {
            w.store(0, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Copy the 4 KiB frame `src` to `dst` (word by word; `src == dst` is a no-op copy).
    pub fn copy_frame(
        &self,
        src: PhysFrame<Size4KiB>,
        dst: PhysFrame<Size4KiB>,
    ) -> Result<(), ArenaError> {
        let s = self.words(src.start_address(), WORDS_PER_PAGE)?;
        let d = self.words(dst.start_address(), WORDS_PER_PAGE)?;
        for (d, s) in d.iter().zip(s) {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        Ok(())
    }

    /// Whether the `len` bytes at `addr` are all zero.
    pub fn is_zero(&self, addr: PhysAddr, len: u64) -> Result<bool, ArenaError> {
        let mut buf = [0u8; 256];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            let a = addr
                .checked_add(done)
                .ok_or(ArenaError::OutOfBounds { addr, len })?;
            self.read(a, &mut buf[..n])?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            done += n as u64;
        }
        Ok(true)
    }

    /// A raw pointer to `addr`, valid for `len` bytes (bounds-checked). Dereferencing it is
    /// the caller's unsafe business: concurrent non-atomic access to memory that others reach
    /// through the atomic API is a data race. ([`ArenaError::NoRawAccess`] under loom.)
    pub fn ptr(&self, addr: PhysAddr, len: u64) -> Result<*mut u8, ArenaError> {
        let off = self.offset(addr, len)?;
        #[cfg(feature = "loom")]
        {
            let _ = off;
            Err(ArenaError::NoRawAccess)
        }
        // SAFETY: `offset` checked `off + len <= size`, so the result stays inside (or one
        // past the end of) the block that `ptr` points to.
        #[cfg(not(feature = "loom"))]
        Ok(unsafe { self.mem.ptr.as_ptr().cast::<u8>().add(off) })
    }

    /// The physical address of host pointer `p`, if it points into the arena (always `None`
    /// under loom).
    pub fn phys_of(&self, p: *const u8) -> Option<PhysAddr> {
        #[cfg(feature = "loom")]
        {
            let _ = p;
            None
        }
        #[cfg(not(feature = "loom"))]
        {
            let start = self.mem.ptr.as_ptr() as usize;
            let off = (p as usize).checked_sub(start)?;
            if (off as u64) < self.size {
                Some(PhysAddr::new_truncate(self.base + off as u64))
            } else {
                None
            }
        }
    }
}

impl fmt::Debug for PhysArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PhysArena")
            .field("base", &self.base())
            .field("size", &format_args!("{:#x}", self.size))
            .field("backing", &self.backing)
            .finish()
    }
}

/// The mask and value words that put `src` at byte `k` of a word.
#[inline]
fn partial(k: usize, src: &[u8]) -> (u64, u64) {
    let mut m = [0u8; WORD];
    let mut v = [0u8; WORD];
    m[k..k + src.len()].fill(0xff);
    v[k..k + src.len()].copy_from_slice(src);
    (u64::from_ne_bytes(m), u64::from_ne_bytes(v))
}

/// Replace the bytes selected by `mask` with those of `val`, keeping the others, atomically.
#[inline]
fn store_masked(word: &AtomicU64, mask: u64, val: u64) {
    let mut cur = word.load(Ordering::Relaxed);
    loop {
        match word.compare_exchange_weak(
            cur,
            (cur & !mask) | val,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return,
            Err(actual) => cur = actual,
        }
    }
}

/// Words per 64-byte cache line.
const LINE_WORDS: usize = 8;

/// Copy whole words into `out` (`out.len() == 8 * words.len()`).
#[inline(always)]
fn load_words(out: &mut [u8], words: &[AtomicU64]) {
    for (dst, word) in out.chunks_exact_mut(WORD).zip(words) {
        dst.copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
    }
}

/// Copy bytes `off .. off + buf.len()` of `words` into `buf` (range already checked).
fn read_bytes(words: &[AtomicU64], off: usize, buf: &mut [u8]) {
    let mut w = off / WORD;
    let k = off % WORD;
    let mut out = buf;
    if k != 0 && !out.is_empty() {
        let n = (WORD - k).min(out.len());
        let bytes = words[w].load(Ordering::Relaxed).to_ne_bytes();
        out[..n].copy_from_slice(&bytes[k..k + n]);
        out = &mut out[n..];
        w += 1;
    }
    let full = out.len() / WORD;
    let (mid, tail) = out.split_at_mut(full * WORD);
    // Whole cache lines first, as one unrolled block of eight loads each: one loop branch
    // per 64 bytes instead of per word (the loads stay atomic, so LLVM cannot turn the loop
    // into a `memcpy`; coverage-instrumented builds pay their counter per branch).
    let src = words[w..w + full].chunks_exact(LINE_WORDS);
    let words_left = src.remainder();
    let mut lines = mid.chunks_exact_mut(LINE_WORDS * WORD);
    for (chunk, line) in (&mut lines).zip(src) {
        load_words(chunk, line);
    }
    load_words(lines.into_remainder(), words_left);
    if !tail.is_empty() {
        let bytes = words[w + full].load(Ordering::Relaxed).to_ne_bytes();
        tail.copy_from_slice(&bytes[..tail.len()]);
    }
}

/// Copy `data` to bytes `off .. off + data.len()` of `words` (range already checked).
fn write_bytes(words: &[AtomicU64], off: usize, data: &[u8]) {
    let mut w = off / WORD;
    let k = off % WORD;
    let mut src = data;
    if k != 0 && !src.is_empty() {
        let n = (WORD - k).min(src.len());
        let (mask, val) = partial(k, &src[..n]);
        store_masked(&words[w], mask, val);
        src = &src[n..];
        w += 1;
    }
    let full = src.len() / WORD;
    let (mid, tail) = src.split_at(full * WORD);
    for (chunk, word) in mid.chunks_exact(WORD).zip(&words[w..w + full]) {
        let mut b = [0u8; WORD];
        b.copy_from_slice(chunk);
        word.store(u64::from_ne_bytes(b), Ordering::Relaxed);
    }
    if !tail.is_empty() {
        let (mask, val) = partial(0, tail);
        store_masked(&words[w + full], mask, val);
    }
}

/// Set bytes `off .. off + len` of `words` to `byte` (range already checked).
fn fill_bytes(words: &[AtomicU64], off: usize, len: usize, byte: u8) {
    let pattern = u64::from_ne_bytes([byte; WORD]);
    let mut w = off / WORD;
    let k = off % WORD;
    let mut left = len;
    if k != 0 && left != 0 {
        let n = (WORD - k).min(left);
        let (mask, _) = partial(k, &[0u8; WORD][..n]);
        store_masked(&words[w], mask, pattern & mask);
        left -= n;
        w += 1;
    }
    let full = left / WORD;
    for word in &words[w..w + full] {
        word.store(pattern, Ordering::Relaxed);
    }
    let rest = left % WORD;
    if rest != 0 {
        let (mask, _) = partial(0, &[0u8; WORD][..rest]);
        store_masked(&words[w + full], mask, pattern & mask);
    }
}

/// The arena's page tables by physical address: table `i` is the frame at `base + i * 4096`
/// ([`PhysArena::tables`]). A walk takes one and looks up every level through it.
#[derive(Clone, Copy)]
pub(crate) struct Tables<'a> {
    base: u64,
    tables: &'a [PageTable],
}

impl<'a> Tables<'a> {
    /// The table at physical address `pa` (4 KiB aligned), if it lies in the arena.
    ///
    /// The hot path of every page-table walk: one subtraction, one shift and one comparison.
    /// Below the base, `pa - base` wraps to at least `2^64 - 2^52`, an index far past the end
    /// (the arena holds at most `2^40` frames); on a 32-bit target an index that does not fit
    /// a `usize` is refused before it could be truncated. The base and size are multiples of
    /// a page, so a 4 KiB-aligned `pa` inside the arena is the start of one of its tables.
    #[inline(always)]
    pub(crate) fn get(self, pa: u64) -> Option<&'a PageTable> {
        self.tables
            .get(usize::try_from(pa.wrapping_sub(self.base) / PAGE_SIZE).ok()?)
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests;
