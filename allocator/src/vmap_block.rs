//! Vmap blocks: the per-CPU blocks that `vm_map_ram` / `vm_unmap_ram` / `vm_unmap_aliases`
//! carve small mappings from (Linux's `vb_alloc` / `vb_free` / `_vm_unmap_aliases`).
//!
//! # How it works
//!
//! See [`Vmalloc::vm_map_ram`](crate::Vmalloc::vm_map_ram) (blocks, pieces, dirty ranges, retirement) and
//! [`Vmalloc::vm_unmap_aliases`](crate::Vmalloc::vm_unmap_aliases): what users rely on. For maintainers: a block's state
//! (`free`, `dirty`, `[dirty_min, dirty_max)`, the two bitmaps, `dead`) sits behind its own
//! lock; blocks are found through the per-CPU queues (allocation) and the sharded block map
//! (free, aliases, `vread`).
//!
//! # Invariants
//!
//! * `free + dirty + (pages of live pieces) == VMAP_BBMAP_BITS` for every block.
//! * A block is on its CPU's queue iff it is not dead and `free > 0`; it is in the block map
//!   iff it is not dead (or dying: marked dead, being handed to the `Kva`).
//! * Pages `[0, VMAP_BBMAP_BITS - free)` of a block were handed out exactly once; a page is
//!   mapped only while its piece is live.
//!
//! # Locking
//!
//! Lock order: aliases mutex -> CPU queue -> block; block-map shard -> block. A block lock is
//! never held while taking a queue or map lock, and the `Kva` is never called with any of
//! these held (its failure notifier, `VmapBlocks::purge_fragmented`, takes them). The
//! unmap of a piece happens under its block's lock, so a block cannot die (and its range be
//! recycled) while one of its pieces is being unmapped.

#[allow(unused_imports)]
use crate::prelude::*;
use alloc::collections::BTreeMap;
use alloc::sync::Arc as StdArc;
use core::panic::Location;
use pagetable::platform::Platform;

use crossbeam_utils::CachePadded;
use pagetable::{AddressSpace, PAGE_SIZE, VirtAddr};

use crate::error::VmallocError;
use crate::kva::Kva;
use crate::kva::area::AreaInfo;
use crate::kva::flags::VmFlags;
use crate::sync::{AtomicUsize, Mutex, Ordering};

/// Largest `vm_map_ram` served from a vmap block, in pages.
///
/// Linux's value: `VMAP_MAX_ALLOC` is `BITS_PER_LONG`, 64 on x86_64 (256 KiB with 4 KiB
/// pages). Why it suits: vmap blocks are for small, frequent mappings; with pieces of at most
/// 64 pages a 1024-page block serves at least 16 of them (Linux only requires 2:
/// `VMAP_BBMAP_BITS_MIN = 2 * VMAP_MAX_ALLOC`), so one `Kva` allocation and one lazy free
/// are shared by many mappings. A larger request would gain little from sharing a block and
/// take a large bite of it; it gets an area of its own.
pub const VMAP_MAX_ALLOC: usize = 64;
/// Pages per vmap block.
///
/// Linux computes `VMAP_BBMAP_BITS` as `min(VMAP_BBMAP_BITS_MAX = 1024, max(2 *
/// VMAP_MAX_ALLOC, VMALLOC_PAGES / roundup_pow_of_two(NR_CPUS) / 16))`, to leave room for at
/// least 16 per-CPU blocks per CPU in a vmalloc space it guesses at 128 GiB; on x86_64 with
/// `CONFIG_NR_CPUS` up to 2048 that is 1024. Fixed at 1024 here: the default range is
/// 32 TiB, and 16 blocks of 4 MiB for each of [`MAX_NR_CPUS`](crate::MAX_NR_CPUS) CPUs take
/// 512 GiB of it. Bigger blocks would mean fewer `Kva` allocations but pin more VA: a block's
/// range goes back only when every page of it is dirty (or it holds no live piece and is
/// retired).
pub const VMAP_BBMAP_BITS: usize = 1024;
/// Bytes per vmap block (4 MiB).
pub const VMAP_BLOCK_SIZE: u64 = VMAP_BBMAP_BITS as u64 * PAGE_SIZE;

const BITS: u32 = VMAP_BBMAP_BITS as u32;
const WORDS: usize = VMAP_BBMAP_BITS / 64;
/// Flags of a vmap block area.
const BLOCK_FLAGS: VmFlags = VmFlags::MAP_RAM
    .union(VmFlags::UNLIST)
    .union(VmFlags::NO_GUARD);

/// A fixed bitmap of [`VMAP_BBMAP_BITS`] bits.
#[derive(Debug, Clone, Copy, Default)]
struct Bitmap([u64; WORDS]);

impl Bitmap {
    fn set(&mut self, i: u32) {
        self.0[i as usize / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: u32) {
        self.0[i as usize / 64] &= !(1 << (i % 64));
    }
    fn test(&self, i: u32) -> bool {
        self.0[i as usize / 64] & (1 << (i % 64)) != 0
    }
    /// First set bit at or after `from`.
    fn next_set(&self, from: u32) -> Option<u32> {
        let mut w = from as usize / 64;
        if w >= WORDS {
            return None;
        }
        let mut bits = self.0[w] & (!0u64 << (from % 64));
        loop {
            if bits != 0 {
                return Some(w as u32 * 64 + bits.trailing_zeros());
            }
            w += 1;
            if w == WORDS {
                return None;
            }
            bits = self.0[w];
        }
    }
    /// Last set bit at or before `upto`.
    fn prev_set(&self, upto: u32) -> Option<u32> {
        let mut w = upto as usize / 64;
        let shift = 63 - upto % 64;
        let mut bits = (self.0[w] << shift) >> shift;
        loop {
            if bits != 0 {
                return Some(w as u32 * 64 + 63 - bits.leading_zeros());
            }
            if w == 0 {
                return None;
            }
            w -= 1;
            bits = self.0[w];
        }
    }
}

/// The mutable part of a block.
#[derive(Debug)]
struct BlockState {
    /// Pages never handed out (the bump offset is `BITS - free`).
    free: u32,
    /// Pages freed (unmapped, maybe not flushed).
    dirty: u32,
    /// Dirty pages not flushed yet: `[dirty_min, dirty_max)` (empty when `dirty_max == 0`).
    dirty_min: u32,
    dirty_max: u32,
    /// Start of every piece handed out.
    starts: Bitmap,
    /// Last page of every piece's mapping as `vm_map_ram` was asked for it (`start + count -
    /// 1`: the exact page count, below the piece's rounded length).
    ends: Bitmap,
    /// Start of every live piece.
    live: Bitmap,
    /// Retired: on no list; its range belongs to the `Kva` again.
    dead: bool,
}

impl BlockState {
    fn new() -> Self {
        Self {
            free: BITS,
            dirty: 0,
            dirty_min: BITS,
            dirty_max: 0,
            starts: Bitmap::default(),
            ends: Bitmap::default(),
            live: Bitmap::default(),
            dead: false,
        }
    }

    /// Hand out `pages` pages (a power of two) at the bump offset for a mapping of `count`
    /// pages (`1..=pages`); returns the offset.
    fn take(&mut self, pages: u32, count: u32) -> u32 {
        let off = BITS - self.free;
        self.free -= pages;
        self.starts.set(off);
        self.ends.set(off + count - 1);
        self.live.set(off);
        off
    }

    /// The page count `vm_map_ram` mapped at piece start `off` (exact, not rounded).
    fn piece_count(&self, off: u32) -> u32 {
        self.ends.next_set(off).map_or(1, |e| e - off + 1)
    }

    /// Length in pages of the piece starting at `off` (which must be a piece start).
    fn piece_len(&self, off: u32) -> u32 {
        let used = BITS - self.free;
        self.starts
            .next_set(off + 1)
            .filter(|&n| n < used)
            .unwrap_or(used)
            - off
    }

    /// Whether page `off` belongs to a live piece.
    fn page_live(&self, off: u32) -> bool {
        if self.dead || off >= BITS - self.free {
            return false;
        }
        self.starts.prev_set(off).is_some_and(|s| self.live.test(s))
    }

    /// Fragmented: no live piece, but not all dirty (some space never handed out).
    fn fragmented(&self) -> bool {
        !self.dead && self.free + self.dirty == BITS && self.dirty != BITS
    }
}

/// One vmap block.
#[derive(Debug)]
struct VmapBlock<P: Platform> {
    start: u64,
    st: Mutex<P, BlockState>,
}

/// One CPU's queue of blocks with free space.
type Queue<P> = CachePadded<Mutex<P, Vec<StdArc<VmapBlock<P>>>>>;
/// One shard of the block map: block index -> block.
type MapShard<P> = CachePadded<Mutex<P, BTreeMap<u64, StdArc<VmapBlock<P>>>>>;

/// Every vmap block of an instance: per-CPU queues of blocks with free space, and a sharded
/// map from block index to block (for `vm_unmap_ram`, `vm_unmap_aliases` and `vread`).
#[derive(Debug)]
pub(crate) struct VmapBlocks<P: Platform> {
    queues: Box<[Queue<P>]>,
    map: Box<[MapShard<P>]>,
    /// Serialises `vm_unmap_aliases` (Linux's `vmap_purge_lock`).
    aliases: Mutex<P, ()>,
    nr_blocks: AtomicUsize,
}

impl<P: Platform> VmapBlocks<P> {
    /// Queues for `nr_cpus` CPU slots (a thread of CPU id `c` uses queue `c % nr_cpus`).
    pub(crate) fn new(nr_cpus: usize) -> Self {
        let n = nr_cpus.max(1);
        Self {
            queues: (0..n)
                .map(|_| CachePadded::new(Mutex::<P, _>::new(Vec::new())))
                .collect(),
            map: (0..n.next_power_of_two())
                .map(|_| CachePadded::new(Mutex::<P, _>::new(BTreeMap::new())))
                .collect(),
            aliases: Mutex::<P, _>::new(()),
            nr_blocks: AtomicUsize::new(0),
        }
    }

    fn shard(&self, block_start: u64) -> &Mutex<P, BTreeMap<u64, StdArc<VmapBlock<P>>>> {
        let idx = block_start / VMAP_BLOCK_SIZE;
        &self.map[(idx as usize) & (self.map.len() - 1)]
    }

    fn lookup(&self, block_start: u64) -> Option<StdArc<VmapBlock<P>>> {
        self.shard(block_start)
            .lock()
            .get(&(block_start / VMAP_BLOCK_SIZE))
            .cloned()
    }

    fn unlist(&self, block_start: u64) {
        if self
            .shard(block_start)
            .lock()
            .remove(&(block_start / VMAP_BLOCK_SIZE))
            .is_some()
        {
            self.nr_blocks.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Live (not retired) blocks.
    pub(crate) fn count(&self) -> usize {
        self.nr_blocks.load(Ordering::Relaxed)
    }

    /// Whether page `addr` of the block starting at `block_start` belongs to a live piece.
    pub(crate) fn page_live(&self, block_start: u64, addr: u64) -> bool {
        self.lookup(block_start).is_some_and(|vb| {
            vb.st
                .lock()
                .page_live(((addr - block_start) / PAGE_SIZE) as u32)
        })
    }
}
impl<P: Platform> VmapBlocks<P> {
    /// Whether `addr` lies in a live vmap block.
    pub(crate) fn holds(&self, addr: u64) -> bool {
        self.lookup(addr & !(VMAP_BLOCK_SIZE - 1)).is_some()
    }

    /// `vb_alloc`: a piece of `count.next_power_of_two()` pages (`count` in
    /// `1..=VMAP_MAX_ALLOC`) from this CPU's blocks; a new block comes from `kva`, inside the
    /// vmalloc range `[start, end)`.
    pub(crate) fn alloc(
        &self,
        kva: &Kva<P>,
        (start, end): (u64, u64),
        count: usize,
        node: Option<usize>,
    ) -> Result<u64, VmallocError> {
        let pages = count.next_power_of_two() as u32;
        let cpu = P::this_cpu() % self.queues.len();
        {
            let mut q = self.queues[cpu].lock();
            let mut i = 0;
            while i < q.len() {
                let mut st = q[i].st.lock();
                if !st.dead && st.free >= pages {
                    let off = st.take(pages, count as u32);
                    let full = st.free == 0;
                    drop(st);
                    let addr = q[i].start + u64::from(off) * PAGE_SIZE;
                    if full {
                        q.swap_remove(i);
                    }
                    return Ok(addr);
                }
                i += 1;
            }
        }
        self.new_block(kva, (start, end), cpu, pages, count as u32, node)
            .map_err(|e| match e {
                // The caller asked for `count` pages, not a block.
                VmallocError::NoSpace {
                    align, start, end, ..
                } => VmallocError::NoSpace {
                    size: count as u64 * PAGE_SIZE,
                    align,
                    start,
                    end,
                },
                e => e,
            })
    }

    /// `new_vmap_block`: take a block from the `Kva` (no lock of ours held: the `Kva` may call
    /// our failure notifier), hand out its first piece, publish it.
    fn new_block(
        &self,
        kva: &Kva<P>,
        (lo, hi): (u64, u64),
        cpu: usize,
        pages: u32,
        count: u32,
        node: Option<usize>,
    ) -> Result<u64, VmallocError> {
        let info = AreaInfo {
            flags: BLOCK_FLAGS,
            nr_pages: 0,
            caller: Location::caller(),
            phys_addr: None,
        };
        let start = kva
            .alloc(VMAP_BLOCK_SIZE, VMAP_BLOCK_SIZE, lo, hi, node, info)?
            .as_u64();
        let mut st = BlockState::new();
        st.take(pages, count);
        let vb = StdArc::new(VmapBlock {
            start,
            st: Mutex::<P, _>::new(st),
        });
        self.shard(start)
            .lock()
            .insert(start / VMAP_BLOCK_SIZE, StdArc::clone(&vb));
        self.nr_blocks.fetch_add(1, Ordering::Relaxed);
        self.queues[cpu].lock().push(vb);
        Ok(start)
    }

    /// `vb_free`: unmap a piece and mark it dirty; retire the block once all of it is dirty.
    /// `count` must be the page count the piece was mapped with, exactly
    /// ([`VmallocError::WrongCount`] with that count otherwise).
    pub(crate) fn free(
        &self,
        kva: &Kva<P>,
        space: &AddressSpace<P>,
        addr: u64,
        count: usize,
    ) -> Result<(), VmallocError> {
        let bstart = addr & !(VMAP_BLOCK_SIZE - 1);
        let Some(vb) = self.lookup(bstart) else {
            return Err(not_a_piece(kva, addr, count));
        };
        let off = ((addr - bstart) / PAGE_SIZE) as u32;
        let mut st = vb.st.lock();
        if st.dead {
            return Err(VmallocError::NotAllocated { addr });
        }
        if !st.live.test(off) {
            return Err(if st.starts.test(off) {
                VmallocError::DoubleFree { addr }
            } else if off < BITS - st.free {
                let s = st.starts.prev_set(off).unwrap_or(0);
                VmallocError::NotStartOfArea {
                    addr,
                    start: bstart + u64::from(s) * PAGE_SIZE,
                }
            } else {
                VmallocError::NotAllocated { addr }
            });
        }
        let mapped = st.piece_count(off) as usize;
        if count != mapped {
            return Err(VmallocError::WrongCount {
                addr,
                count,
                expected: mapped,
            });
        }
        let len = st.piece_len(off);
        // Caller-owned frames: nothing to free; the flush is deferred (dirty range).
        let unmapped = space.unmap(
            VirtAddr::new_truncate(addr),
            u64::from(len) * PAGE_SIZE,
            |_, _| {},
        );
        debug_assert!(unmapped.is_ok(), "{unmapped:?}");
        st.live.clear(off);
        st.dirty += len;
        st.dirty_min = st.dirty_min.min(off);
        st.dirty_max = st.dirty_max.max(off + len);
        if st.dirty == BITS {
            // Fully dirty implies free == 0: the block is on no queue.
            st.dead = true;
            drop(st);
            self.retire(kva, &vb);
        }
        Ok(())
    }

    /// Hand a dead block's range to the `Kva`'s lazy list (no lock of ours held).
    fn retire(&self, kva: &Kva<P>, vb: &VmapBlock<P>) {
        self.unlist(vb.start);
        let r = kva.remove_free_lazy(VirtAddr::new_truncate(vb.start), VMAP_BBMAP_BITS);
        debug_assert!(r.is_ok(), "vmap block {:#x} missing from the Kva", vb.start);
    }

    /// Retire every fragmented block of every CPU; returns the pages handed to the lazy list.
    /// (Also the `Kva`'s allocation-failure notifier.)
    pub(crate) fn purge_fragmented(&self, kva: &Kva<P>) -> usize {
        let mut victims = Vec::new();
        for q in self.queues.iter() {
            q.lock().retain(|vb| {
                let mut st = vb.st.lock();
                if !st.fragmented() {
                    return true;
                }
                st.dead = true;
                st.free = 0;
                st.dirty = BITS;
                victims.push(StdArc::clone(vb));
                false
            });
        }
        for vb in &victims {
            self.retire(kva, vb);
        }
        victims.len() * VMAP_BBMAP_BITS
    }

    /// `_vm_unmap_aliases` (see [`Vmalloc::vm_unmap_aliases`](crate::Vmalloc::vm_unmap_aliases)).
    pub(crate) fn unmap_aliases(&self, kva: &Kva<P>) {
        let _serial = self.aliases.lock();
        self.purge_fragmented(kva);
        let (mut lo, mut hi) = (u64::MAX, 0u64);
        for shard in self.map.iter() {
            let m = shard.lock();
            for vb in m.values() {
                let mut st = vb.st.lock();
                if !st.dead && st.dirty_max > 0 {
                    lo = lo.min(vb.start + u64::from(st.dirty_min) * PAGE_SIZE);
                    hi = hi.max(vb.start + u64::from(st.dirty_max) * PAGE_SIZE);
                    st.dirty_min = BITS;
                    st.dirty_max = 0;
                }
            }
        }
        // ONE flush for the lazy areas and the dirty union together (the seed's
        // `__purge_vmap_area_lazy(start, end)`; with nothing lazy it flushes the dirty
        // union alone, with nothing dirty either it flushes nothing).
        let _ = kva.purge_range(lo, hi);
    }
}

/// Why `addr` is not a block piece: a large `vm_map_ram` area (wrong count) or nothing.
fn not_a_piece<P: Platform>(kva: &Kva<P>, addr: u64, count: usize) -> VmallocError {
    match kva.find(VirtAddr::new_truncate(addr)) {
        Some(a) if a.info.flags.contains(VmFlags::MAP_RAM) && a.start == addr => {
            VmallocError::WrongCount {
                addr,
                count,
                expected: a.info.nr_pages,
            }
        }
        Some(a) if a.start != addr => VmallocError::NotStartOfArea {
            addr,
            start: a.start,
        },
        Some(a) => VmallocError::WrongKind {
            addr,
            expected: VmFlags::MAP_RAM,
            found: a.info.flags,
        },
        None => VmallocError::NotAllocated { addr },
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests {
    use super::*;

    #[test]
    fn bitmap_scans() {
        let mut b = Bitmap::default();
        assert_eq!(b.next_set(0), None);
        assert_eq!(b.prev_set(1023), None);
        b.set(5);
        b.set(64);
        b.set(1023);
        assert_eq!(b.next_set(0), Some(5));
        assert_eq!(b.next_set(6), Some(64));
        assert_eq!(b.next_set(65), Some(1023));
        assert_eq!(b.prev_set(63), Some(5));
        assert_eq!(b.prev_set(64), Some(64));
        assert_eq!(b.prev_set(1022), Some(64));
        assert_eq!(b.prev_set(4), None);
        b.clear(64);
        assert!(!b.test(64) && b.test(5));
    }

    #[test]
    fn block_state_pieces() {
        let mut st = BlockState::new();
        assert_eq!(st.take(4, 3), 0);
        assert_eq!(st.take(1, 1), 4);
        assert_eq!(st.piece_len(0), 4);
        assert_eq!(st.piece_len(4), 1);
        assert_eq!((st.piece_count(0), st.piece_count(4)), (3, 1));
        assert!(st.page_live(3) && st.page_live(4) && !st.page_live(5));
        st.live.clear(0);
        assert!(!st.page_live(2));
        assert!(!st.fragmented());
        st.dirty = 4;
        st.live.clear(4);
        st.dirty = 5;
        assert!(st.fragmented());
    }
}
