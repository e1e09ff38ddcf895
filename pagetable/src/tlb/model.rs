//! A software TLB: per-CPU translation caches that go stale exactly like hardware ones.
//!
//! How it works, permissions and invariants: see [`TlbModel`]'s documentation (what users
//! rely on). For maintainers: a cache is `SETS` arrays of `WAYS` [`Slot`]s with a
//! round-robin victim per set; [`translate`] is the whole access path (lookup, walk, fill).
//!
//! Locking/ordering: a CPU's cache is behind its own `CachePadded<sync::Mutex>`, held across
//! lookup, walk, fill AND the data copy of one page piece, so a shootdown (which takes every
//! CPU's lock in turn) returns only after every access that could use a flushed entry has
//! finished: the IPI-acknowledgement rule. Walks load entries with `Acquire` (pairing with
//! the `Release` that published a table or leaf) and set `ACCESSED`/`DIRTY` with an
//! `AcqRel` compare-exchange from the exact value read, so they never resurrect an entry that
//! was cleared meanwhile. Hit/miss counters live inside the per-CPU state (no shared cache
//! line per access); shootdown counters are `Relaxed` atomics.

use crossbeam_utils::CachePadded;

use crate::addr::{PhysAddr, VirtAddr};
use crate::arena::ArenaError;
use crate::entry::{PageTableFlags, Pte};
use crate::mapper::AddressSpace;
use crate::page::PAGE_SIZE;
use crate::platform::{Platform, StdPlatform};
use crate::sync::{Mutex, Ordering};
use crate::tlb::{FlushCounters, FlushKind, TlbFlush, TlbStats, from_lin, lin, lin_end};

/// Sets per CPU cache (a power of two; the set is the low bits of the page number).
///
/// Why 64 (with [`WAYS`]: 256 translations per CPU): the model must keep translations long
/// enough that a range reused before its flush is still cached somewhere (how the tests see a
/// missing flush), yet [`TlbModel::holds_any`] scans every slot of every CPU and a full flush
/// clears them all: 256 slots of 24 bytes, 6 KiB per CPU, keep both cheap. 64 consecutive
/// pages fall in 64 different sets, so the few-page areas of a stress test spread over all
/// of them. A model's size, not a particular CPU's (Intel's L1 data TLBs have 64 entries
/// for 4 KiB pages, their second-level TLBs many more).
pub const SETS: usize = 64;
/// Ways per set (evicted round robin).
///
/// Why 4: the associativity of x86 L1 data TLBs for 4 KiB pages (Intel's are 4-way), enough
/// that four pages whose numbers agree in their low 6 bits (pages 256 KiB apart) are cached
/// together.
pub const WAYS: usize = 4;

/// Key of translations marked `GLOBAL` (shared by every address space, like kernel mappings
/// on x86 with PCIDs).
const GLOBAL_KEY: u64 = u64::MAX;
/// Page number of an invalid slot (no linear page number reaches it).
const INVALID_VPN: u64 = u64::MAX;

/// Why an access through the model failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// No present leaf maps the page of `va`.
    #[error("page fault: {va:?} is not mapped")]
    NotMapped {
        /// The first faulting address.
        va: VirtAddr,
    },
    /// A write to a page whose leaf is not `WRITABLE` (a COW page, or read-only).
    #[error("page fault: write to read-only {va:?}")]
    WriteProtected {
        /// The first faulting address.
        va: VirtAddr,
    },
    /// The CPU index is not below [`TlbModel::nr_cpus`].
    #[error("cpu {cpu} does not exist (the model has {nr_cpus} cpus)")]
    NoSuchCpu {
        /// The rejected index.
        cpu: usize,
        /// Number of CPUs in the model.
        nr_cpus: usize,
    },
    /// `[va, va + len)` leaves its half of the canonical address space.
    #[error("access of {len} bytes at {va:?} leaves the canonical address range")]
    OutOfRange {
        /// Start of the access.
        va: VirtAddr,
        /// Its length.
        len: usize,
    },
    /// A mapping points outside the physical arena (e.g. an ioremap of a device address).
    #[error("physical access failed")]
    Arena(#[from] ArenaError),
}

/// One cached translation.
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Address-space id, or [`GLOBAL_KEY`].
    key: u64,
    /// Linear virtual page number, or [`INVALID_VPN`].
    vpn: u64,
    /// The 4 KiB physical page and the leaf's flags.
    pte: Pte,
}

const EMPTY_SLOT: Slot = Slot {
    key: 0,
    vpn: INVALID_VPN,
    pte: Pte::UNUSED,
};

/// One CPU's cache.
struct CpuTlb {
    sets: Box<[[Slot; WAYS]; SETS]>,
    /// Next way to evict, per set (round robin).
    victim: [u8; SETS],
    hits: u64,
    misses: u64,
}

impl CpuTlb {
    fn new() -> Self {
        Self {
            sets: Box::new([[EMPTY_SLOT; WAYS]; SETS]),
            victim: [0; SETS],
            hits: 0,
            misses: 0,
        }
    }

    #[inline]
    fn set_of(vpn: u64) -> usize {
        // SETS is a power of two: the low bits of the page number pick the set.
        (vpn as usize) & (SETS - 1)
    }

    /// The way caching (`key` or global, `vpn`).
    fn lookup(&self, key: u64, vpn: u64) -> Option<usize> {
        self.sets[Self::set_of(vpn)]
            .iter()
            .position(|s| s.vpn == vpn && (s.key == key || s.key == GLOBAL_KEY))
    }

    fn insert(&mut self, key: u64, vpn: u64, pte: Pte) {
        let si = Self::set_of(vpn);
        let set = &mut self.sets[si];
        let way = set
            .iter()
            .position(|s| s.vpn == vpn && s.key == key)
            .or_else(|| set.iter().position(|s| s.vpn == INVALID_VPN))
            .unwrap_or_else(|| {
                let v = usize::from(self.victim[si]) % WAYS;
                self.victim[si] = ((v + 1) % WAYS) as u8;
                v
            });
        set[way] = Slot { key, vpn, pte };
    }

    /// Drop every translation of `vpn`, whatever its key.
    fn invalidate_vpn(&mut self, vpn: u64) {
        for s in self.sets[Self::set_of(vpn)].iter_mut() {
            if s.vpn == vpn {
                *s = EMPTY_SLOT;
            }
        }
    }

    fn clear(&mut self) {
        for set in self.sets.iter_mut() {
            *set = [EMPTY_SLOT; WAYS];
        }
    }

    fn holds_any(&self, first_vpn: u64, end_vpn: u64) -> bool {
        self.sets
            .iter()
            .flatten()
            .any(|s| s.vpn != INVALID_VPN && s.vpn >= first_vpn && s.vpn < end_vpn)
    }
}

/// The software TLB: per-CPU translation caches plus shootdowns, going stale exactly like
/// hardware ones.
///
/// # How it works
///
/// Each CPU slot owns a [`WAYS`]-way set-associative cache of [`SETS`] sets, allocated once
/// at construction (no allocation per access). An entry is keyed by (address-space id, or one
/// key shared by every space for [`GLOBAL`](crate::PageTableFlags::GLOBAL) translations;
/// virtual page number) and holds the 4 KiB physical page and the leaf's flags (a 2 MiB leaf
/// is cached one 4 KiB piece at a time). [`TlbModel::read`] / [`TlbModel::write`] copy bytes
/// at a virtual address on behalf of a CPU, page piece by page piece: a hit uses the cached
/// translation whatever the page tables now say; a miss walks the page tables of the
/// [`AddressSpace`], sets `ACCESSED` (and `DIRTY` for a permitted write) in the leaf by
/// compare-exchange as the hardware walker does, and fills the cache. Unmapping or
/// re-mapping does NOT touch the caches: only [`TlbFlush::flush_range`] /
/// [`TlbFlush::flush_all`] do, on every CPU. So a write through a stale entry lands in the OLD
/// frame, which is how a test sees a virtual range reused before its flush;
/// [`TlbModel::holds_any`] answers "could any CPU still use a translation in this range?"
/// directly. A shootdown returns only after every access that could still use a flushed
/// entry has finished (an access holds its CPU's cache for the whole page piece, a shootdown
/// takes every CPU's in turn: the IPI-acknowledgement rule).
///
/// # Permissions
///
/// A write through a cached read-only translation does what x86 plus Linux's spurious-fault
/// handling do: the entry is dropped and the tables re-walked, so permission *upgrades* (COW
/// reuse, `protect` adding `WRITABLE`) need no shootdown, while downgrades and frame changes
/// do. A write the tables forbid is [`AccessError::WriteProtected`]; an unmapped page is
/// [`AccessError::NotMapped`]. An access that faults on a later page has already copied the
/// earlier pages (like a faulting `rep movs`).
///
/// # Invariants
///
/// A cache entry was a valid translation of its (key, page) at some point after the last
/// shootdown that covered it; `hits + misses` ([`TlbStats`]) counts the page pieces accessed.
pub struct TlbModel {
    cpus: Box<[CachePadded<Mutex<StdPlatform, CpuTlb>>]>,
    counters: FlushCounters,
}

impl core::fmt::Debug for TlbModel {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TlbModel")
            .field("nr_cpus", &self.cpus.len())
            .field("stats", &self.stats())
            .finish()
    }
}

impl TlbModel {
    /// A model of `nr_cpus` CPUs (at least one) with empty caches.
    pub fn new(nr_cpus: usize) -> Self {
        let cpus = (0..nr_cpus.max(1))
            .map(|_| CachePadded::new(Mutex::<StdPlatform, _>::new(CpuTlb::new())))
            .collect();
        Self {
            cpus,
            counters: FlushCounters::default(),
        }
    }

    /// Number of CPUs.
    pub fn nr_cpus(&self) -> usize {
        self.cpus.len()
    }

    fn cpu(&self, cpu: usize) -> Result<&Mutex<StdPlatform, CpuTlb>, AccessError> {
        self.cpus
            .get(cpu)
            .map(|c| &**c)
            .ok_or(AccessError::NoSuchCpu {
                cpu,
                nr_cpus: self.cpus.len(),
            })
    }

    /// Read `buf.len()` bytes at `va` as CPU `cpu` running `space`.
    pub fn read<P: Platform>(
        &self,
        cpu: usize,
        space: &AddressSpace<P>,
        va: VirtAddr,
        buf: &mut [u8],
    ) -> Result<(), AccessError> {
        let tlb = self.cpu(cpu)?;
        let mut done = 0;
        for (l, n) in pieces(va, buf.len())? {
            let mut t = tlb.lock();
            let pa = translate(&mut t, space, l, false)?;
            space.frames().arena().read(pa, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// Write `data` at `va` as CPU `cpu` running `space`.
    pub fn write<P: Platform>(
        &self,
        cpu: usize,
        space: &AddressSpace<P>,
        va: VirtAddr,
        data: &[u8],
    ) -> Result<(), AccessError> {
        let tlb = self.cpu(cpu)?;
        let mut done = 0;
        for (l, n) in pieces(va, data.len())? {
            let mut t = tlb.lock();
            let pa = translate(&mut t, space, l, true)?;
            space.frames().arena().write(pa, &data[done..done + n])?;
            done += n;
        }
        Ok(())
    }

    /// The physical address CPU `cpu` would use for `va` in `space` right now from its cache
    /// alone (`None` on a miss or a bad CPU index). Does not count as an access.
    pub fn cached<P: Platform>(
        &self,
        cpu: usize,
        space: &AddressSpace<P>,
        va: VirtAddr,
    ) -> Option<PhysAddr> {
        let t = self.cpus.get(cpu)?.lock();
        let l = lin(va);
        let way = t.lookup(space.id(), l / PAGE_SIZE)?;
        let pte = t.sets[CpuTlb::set_of(l / PAGE_SIZE)][way].pte;
        Some(pte.addr() + (l & (PAGE_SIZE - 1)))
    }

    /// Whether any CPU caches a translation (for any address space) of a page in
    /// `[start, end)` (range ends as in the [crate docs](crate#ranges)). After a flush of the
    /// range it is false until the range is accessed again.
    pub fn holds_any(&self, start: VirtAddr, end: VirtAddr) -> bool {
        let first = lin(start) / PAGE_SIZE;
        let end = lin_end(end).div_ceil(PAGE_SIZE);
        if end <= first {
            return false;
        }
        self.cpus.iter().any(|c| c.lock().holds_any(first, end))
    }
}

impl TlbFlush for TlbModel {
    fn flush_range(&self, start: VirtAddr, end: VirtAddr) {
        match self.counters.range(start, end) {
            FlushKind::Nothing => {}
            FlushKind::All => self.cpus.iter().for_each(|c| c.lock().clear()),
            FlushKind::Pages(s, e) => {
                for c in self.cpus.iter() {
                    let mut t = c.lock();
                    for vpn in s / PAGE_SIZE..e / PAGE_SIZE {
                        t.invalidate_vpn(vpn);
                    }
                }
            }
        }
    }

    fn flush_all(&self) {
        self.counters.all();
        self.cpus.iter().for_each(|c| c.lock().clear());
    }

    fn stats(&self) -> TlbStats {
        let mut s = self.counters.stats();
        for c in self.cpus.iter() {
            let t = c.lock();
            s.hits += t.hits;
            s.misses += t.misses;
        }
        s
    }
}

/// Split `[va, va + len)` into (linear address, length) pieces that stay within one page.
fn pieces(va: VirtAddr, len: usize) -> Result<impl Iterator<Item = (u64, usize)>, AccessError> {
    if len > 0 && va.checked_add(len as u64 - 1).is_none() {
        return Err(AccessError::OutOfRange { va, len });
    }
    let start = lin(va);
    let end = start + len as u64;
    let mut l = start;
    Ok(core::iter::from_fn(move || {
        if l >= end {
            return None;
        }
        let next = ((l / PAGE_SIZE) + 1) * PAGE_SIZE;
        let n = next.min(end) - l;
        let piece = (l, n as usize);
        l += n;
        Some(piece)
    }))
}

/// Translate linear `l` for CPU cache `t` (lock held), filling the cache on a miss.
fn translate<P: Platform>(
    t: &mut CpuTlb,
    space: &AddressSpace<P>,
    l: u64,
    write: bool,
) -> Result<PhysAddr, AccessError> {
    let key = space.id();
    let vpn = l / PAGE_SIZE;
    let offset = l & (PAGE_SIZE - 1);
    if let Some(way) = t.lookup(key, vpn) {
        let set = CpuTlb::set_of(vpn);
        let pte = t.sets[set][way].pte;
        if !write || pte.flags().contains(PageTableFlags::WRITABLE) {
            t.hits += 1;
            return Ok(pte.addr() + offset);
        }
        // A write through a cached read-only translation: the fault path re-walks.
        t.sets[set][way] = EMPTY_SLOT;
    }
    t.misses += 1;
    let va = from_lin(l);
    let pte = walk(space, l, write).ok_or(AccessError::NotMapped { va })?;
    let key = if pte.flags().contains(PageTableFlags::GLOBAL) {
        GLOBAL_KEY
    } else {
        key
    };
    t.insert(key, vpn, pte);
    if write && !pte.flags().contains(PageTableFlags::WRITABLE) {
        return Err(AccessError::WriteProtected { va });
    }
    Ok(pte.addr() + offset)
}

/// The hardware page walk: the 4 KiB physical page of linear `l` with the leaf's flags, after
/// setting `ACCESSED` (and `DIRTY` for a permitted write) in the leaf.
fn walk<P: Platform>(space: &AddressSpace<P>, l: u64, write: bool) -> Option<Pte> {
    loop {
        let leaf = space.leaf(l)?;
        let flags = leaf.pte.flags();
        let mut want = flags | PageTableFlags::ACCESSED;
        if write && flags.contains(PageTableFlags::WRITABLE) {
            want |= PageTableFlags::DIRTY;
        }
        if want != flags {
            let new = leaf.pte.with_flags(want);
            if leaf
                .entry
                .compare_exchange(leaf.pte, new, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // The entry changed under us (unmapped, protected, COW broken): walk again.
                continue;
            }
        }
        let page = (leaf.pte.addr().as_u64() & !(leaf.size - 1)) + (l & (leaf.size - 1));
        return Some(Pte::new(
            PhysAddr::new_truncate(page & !(PAGE_SIZE - 1)),
            want,
        ));
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests;
