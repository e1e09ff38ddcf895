//! A software TLB: per-CPU translation caches that go stale exactly like hardware ones.
//!
//! How it works, permissions and invariants: see [`TlbModel`]'s documentation (what users
//! rely on). For maintainers: a CPU's cache is two [`Ways`] arrays (`SETS` sets of 4 KiB
//! translations, `HUGE_SETS` of 2 MiB ones) of `WAYS` [`Slot`]s with a round-robin victim per
//! set; [`translate`] is the whole access path (lookup, walk, fill).
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

/// Sets of the 2 MiB translation cache per CPU (with [`WAYS`]: 32 entries).
///
/// Why 8: x86 cores cache 2 MiB translations apart from 4 KiB ones, in a smaller array
/// (Intel's L1 data TLBs have 32 entries for 2 MiB pages, 4-way); each entry covers 512
/// pages, so 32 of them reach 64 MiB where the 4 KiB array reaches 1 MiB. That reach is what
/// a huge vmalloc area buys, and what [`TlbStats::misses`] shows.
pub const HUGE_SETS: usize = 8;

/// 4 KiB pages under one 2 MiB translation.
const PAGES_PER_HUGE: u64 = 512;

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
    /// The physical page (4 KiB, or the 2 MiB base in the 2 MiB array) and the leaf's flags.
    pte: Pte,
}

const EMPTY_SLOT: Slot = Slot {
    key: 0,
    vpn: INVALID_VPN,
    pte: Pte::UNUSED,
};

/// A set-associative array of translations: `N` sets of [`WAYS`] slots, round-robin
/// eviction per set. The 4 KiB array is keyed by 4 KiB page number, the 2 MiB one by 2 MiB
/// page number.
struct Ways<const N: usize> {
    sets: Box<[[Slot; WAYS]; N]>,
    /// Next way to evict, per set.
    victim: [u8; N],
}

impl<const N: usize> Ways<N> {
    fn new() -> Self {
        Self {
            sets: Box::new([[EMPTY_SLOT; WAYS]; N]),
            victim: [0; N],
        }
    }

    #[inline]
    fn set_of(vpn: u64) -> usize {
        // N is a power of two: the low bits of the page number pick the set.
        (vpn as usize) & (N - 1)
    }

    /// The slot caching (`key` or global, `vpn`).
    fn lookup(&self, key: u64, vpn: u64) -> Option<&Slot> {
        self.sets[Self::set_of(vpn)]
            .iter()
            .find(|s| s.vpn == vpn && (s.key == key || s.key == GLOBAL_KEY))
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

    /// Drop every translation of `vpn` visible to `key` (one with `key` or a global one).
    fn invalidate_for(&mut self, key: u64, vpn: u64) {
        for s in self.sets[Self::set_of(vpn)].iter_mut() {
            if s.vpn == vpn && (s.key == key || s.key == GLOBAL_KEY) {
                *s = EMPTY_SLOT;
            }
        }
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

    /// Whether a slot caches a page number in `[first, end)`.
    fn holds_any(&self, first: u64, end: u64) -> bool {
        self.sets
            .iter()
            .flatten()
            .any(|s| s.vpn != INVALID_VPN && s.vpn >= first && s.vpn < end)
    }

    /// Valid slots.
    fn len(&self) -> usize {
        self.sets
            .iter()
            .flatten()
            .filter(|s| s.vpn != INVALID_VPN)
            .count()
    }
}

/// One CPU's cache: a 4 KiB array and a 2 MiB array, as x86 cores have.
struct CpuTlb {
    small: Ways<SETS>,
    huge: Ways<HUGE_SETS>,
    hits: u64,
    misses: u64,
}

impl CpuTlb {
    fn new() -> Self {
        Self {
            small: Ways::new(),
            huge: Ways::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// The cached translation of 4 KiB page `vpn` for `key`: the 4 KiB physical page and the
    /// leaf's flags (a 2 MiB entry answers for each of its 512 pages).
    fn lookup(&self, key: u64, vpn: u64) -> Option<Pte> {
        if let Some(s) = self.huge.lookup(key, vpn / PAGES_PER_HUGE) {
            let page = s.pte.addr() + (vpn % PAGES_PER_HUGE) * PAGE_SIZE;
            return Some(Pte::new(page, s.pte.flags()));
        }
        self.small.lookup(key, vpn).map(|s| s.pte)
    }

    /// Drop the translation of `vpn` that `key` would use (the write-fault path).
    fn invalidate_for(&mut self, key: u64, vpn: u64) {
        self.huge.invalidate_for(key, vpn / PAGES_PER_HUGE);
        self.small.invalidate_for(key, vpn);
    }

    /// Drop every translation of `vpn` (a 2 MiB one covering it included), whatever its key:
    /// `invlpg`.
    fn invalidate_vpn(&mut self, vpn: u64) {
        self.small.invalidate_vpn(vpn);
        self.huge.invalidate_vpn(vpn / PAGES_PER_HUGE);
    }

    fn clear(&mut self) {
        self.small.clear();
        self.huge.clear();
    }

    fn holds_any(&self, first_vpn: u64, end_vpn: u64) -> bool {
        self.small.holds_any(first_vpn, end_vpn)
            || self
                .huge
                .holds_any(first_vpn / PAGES_PER_HUGE, end_vpn.div_ceil(PAGES_PER_HUGE))
    }
}

/// Translations a [`TlbModel`] holds right now, summed over its CPUs
/// ([`TlbModel::entries`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TlbEntries {
    /// 4 KiB translations (at most [`SETS`] * [`WAYS`] per CPU).
    pub small: usize,
    /// 2 MiB translations (at most [`HUGE_SETS`] * [`WAYS`] per CPU).
    pub huge: usize,
}

/// The software TLB: per-CPU translation caches plus shootdowns, going stale exactly like
/// hardware ones.
///
/// # How it works
///
/// Each CPU slot owns two [`WAYS`]-way set-associative caches, allocated once at
/// construction (no allocation per access): [`SETS`] sets of 4 KiB translations and
/// [`HUGE_SETS`] sets of 2 MiB ones (a 2 MiB leaf is cached as ONE entry, as x86 does; a
/// 1 GiB leaf is cached one 4 KiB piece at a time). An entry is keyed by (address-space id,
/// or one key shared by every space for [`GLOBAL`](crate::PageTableFlags::GLOBAL)
/// translations; virtual page number) and holds the physical page and the leaf's flags. A
/// flush of a page drops a 2 MiB entry covering it too (`invlpg`). [`TlbModel::read`] / [`TlbModel::write`] copy bytes
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
        let pte = t.lookup(space.id(), l / PAGE_SIZE)?;
        Some(pte.addr() + (l & (PAGE_SIZE - 1)))
    }

    /// The translations every CPU holds right now (how many pages a workload keeps covered:
    /// a huge area needs one 2 MiB entry where a 4 KiB mapping needs 512).
    pub fn entries(&self) -> TlbEntries {
        self.cpus.iter().fold(TlbEntries::default(), |acc, c| {
            let t = c.lock();
            TlbEntries {
                small: acc.small + t.small.len(),
                huge: acc.huge + t.huge.len(),
            }
        })
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

    fn as_model(&self) -> Option<&TlbModel> {
        Some(self)
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
    if let Some(pte) = t.lookup(key, vpn) {
        if !write || pte.flags().contains(PageTableFlags::WRITABLE) {
            t.hits += 1;
            return Ok(pte.addr() + offset);
        }
        // A write through a cached read-only translation: the fault path re-walks.
        t.invalidate_for(key, vpn);
    }
    t.misses += 1;
    let va = from_lin(l);
    let (leaf, size) = walk(space, l, write).ok_or(AccessError::NotMapped { va })?;
    let key = if leaf.flags().contains(PageTableFlags::GLOBAL) {
        GLOBAL_KEY
    } else {
        key
    };
    // The 4 KiB page of `l` (inside the leaf).
    let page = leaf.addr() + ((l & (size - 1)) & !(PAGE_SIZE - 1));
    if size == PAGES_PER_HUGE * PAGE_SIZE {
        t.huge.insert(key, vpn / PAGES_PER_HUGE, leaf);
    } else {
        t.small.insert(key, vpn, Pte::new(page, leaf.flags()));
    }
    if write && !leaf.flags().contains(PageTableFlags::WRITABLE) {
        return Err(AccessError::WriteProtected { va });
    }
    Ok(page + offset)
}

/// The hardware page walk: the leaf mapping linear `l` (its first physical byte with the
/// leaf's flags) and the leaf's size, after setting `ACCESSED` (and `DIRTY` for a permitted
/// write) in the leaf.
fn walk<P: Platform>(space: &AddressSpace<P>, l: u64, write: bool) -> Option<(Pte, u64)> {
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
        let base = leaf.pte.addr().as_u64() & !(leaf.size - 1);
        return Some((Pte::new(PhysAddr::new_truncate(base), want), leaf.size));
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests;
