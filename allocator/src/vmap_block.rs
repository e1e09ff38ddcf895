//! `vm_map_ram` / `vm_unmap_ram` / `vm_unmap_aliases`: small mappings carved from per-CPU
//! vmap blocks (Linux's `vb_alloc` / `vb_free` / `_vm_unmap_aliases`).
//!
//! # How it works
//!
//! See [`Vmalloc::vm_map_ram`] (blocks, pieces, dirty ranges, retirement) and
//! [`Vmalloc::vm_unmap_aliases`]: what users rely on. For maintainers: a block's state
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
//! these held (its failure notifier, `purge_fragmented_blocks`, takes them). The
//! unmap of a piece happens under its block's lock, so a block cannot die (and its range be
//! recycled) while one of its pieces is being unmapped.

#[allow(unused_imports)]
use crate::prelude::*;
use alloc::collections::BTreeMap;
use alloc::sync::Arc as StdArc;
use core::panic::Location;
use pagetable::platform::Platform;

use crossbeam_utils::CachePadded;
use pagetable::{PAGE_SIZE, PageTableFlags, PhysFrame, VirtAddr};

use crate::error::VmallocError;
use crate::instance::{Inner, Vmalloc};
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
            live: Bitmap::default(),
            dead: false,
        }
    }

    /// Hand out `pages` pages at the bump offset; returns the offset.
    fn take(&mut self, pages: u32) -> u32 {
        let off = BITS - self.free;
        self.free -= pages;
        self.starts.set(off);
        self.live.set(off);
        off
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

impl<P: Platform> Vmalloc<P> {
    /// `vm_map_ram(pages, node, prot)`: map `pages` (frames of this arena, owned by the
    /// caller) contiguously; release with [`Vmalloc::vm_unmap_ram`] and the same count. No
    /// reference is taken on the frames.
    ///
    /// # How it works
    ///
    /// Up to [`VMAP_MAX_ALLOC`] (64) pages come from a *vmap block* (Linux's `vb_alloc`): one
    /// [`VMAP_BLOCK_SIZE`] area of [`VMAP_BBMAP_BITS`] (1024) pages, aligned to its size, with
    /// no guard page and flags `MAP_RAM | UNLIST`, taken from the [`Kva`](crate::Kva) when the
    /// calling CPU's queue has no block with room (preferring shard `node`). The request is
    /// rounded up to a power of two and carved from the block by bumping its free offset:
    /// pieces are handed out in address order, each page at most once in the block's life. Two
    /// bitmaps record the start of every piece ever handed out and which pieces are live, so a
    /// bad `vm_unmap_ram` (wrong address, wrong count, second free) is a typed error that
    /// changes nothing.
    ///
    /// Freeing a piece (`vb_free`) only clears its PTEs and marks it dirty: the block's dirty
    /// count grows and its dirty range `[dirty_min, dirty_max)` grows to cover the piece;
    /// nothing is flushed and the piece is never handed out again. When a block is all dirty
    /// it leaves every list and its whole range goes to the `Kva`'s lazy list (`free_lazy`):
    /// the next purge flushes it before the range is reused. [`Vmalloc::vm_unmap_aliases`]
    /// flushes the dirty pieces of blocks still in use.
    ///
    /// Requests above [`VMAP_MAX_ALLOC`] pages get an ordinary `MAP_RAM` area of exactly
    /// `pages.len()` pages (no guard page), freed by the usual lazy path.
    ///
    /// Errors: an empty `pages` ([`VmallocError::InvalidSize`]), a frame of another arena
    /// ([`pagetable::FrameError::NotOwned`]), no VA space, or the map failing (the piece is
    /// then left dirty, as in Linux, or the area released).
    ///
    /// # Example
    ///
    /// ```
    /// # #[cfg(not(feature = "loom"))] {
    /// use pagetable::Zone;
    /// use vmalloc::{PAGE_KERNEL, Vmalloc, VmallocConfig, VmallocError};
    ///
    /// let vm = Vmalloc::new(VmallocConfig::small_heap(16 << 20))?;
    /// let frames = vm.frames();
    /// let pages = [
    ///     frames.alloc_zeroed(Zone::Normal)?,
    ///     frames.alloc_zeroed(Zone::Normal)?,
    ///     frames.alloc_zeroed(Zone::Normal)?,
    /// ];
    ///
    /// // 3 pages: a 4-page piece of this CPU's vmap block (a new block here).
    /// let va = vm.vm_map_ram(&pages, None, PAGE_KERNEL)?;
    /// assert_eq!(vm.stats().vmap_blocks, 1);
    /// assert_eq!(vm.vwrite(va + 4096, b"via the block"), 13);
    /// let mut back = [0u8; 13];
    /// frames.arena().read(pages[1].start_address(), &mut back)?;
    /// assert_eq!(&back, b"via the block");
    ///
    /// // Unmapping needs the same count; the piece becomes dirty, nothing is flushed yet.
    /// assert!(matches!(vm.vm_unmap_ram(va, 1), Err(VmallocError::WrongCount { .. })));
    /// vm.vm_unmap_ram(va, 3)?;
    /// assert!(vm.kernel_space().translate(va).is_none());
    /// let model = vm.tlb_model().unwrap();
    /// assert!(model.holds_any(va, va + 3 * 4096), "this CPU still caches the piece");
    ///
    /// // vm_unmap_aliases: the block (no live piece left) is retired, and ONE flush covers it.
    /// let flushes = vm.tlb().stats().flushes;
    /// vm.vm_unmap_aliases();
    /// assert_eq!(vm.tlb().stats().flushes, flushes + 1);
    /// assert!(!model.holds_any(va, va + 3 * 4096));
    /// assert_eq!(vm.stats().vmap_blocks, 0);
    ///
    /// // The frames were never the mapping's: the caller frees them.
    /// for f in pages {
    ///     frames.free(f)?;
    /// }
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[track_caller]
    pub fn vm_map_ram(
        &self,
        pages: &[PhysFrame],
        node: Option<usize>,
        prot: PageTableFlags,
    ) -> Result<VirtAddr, VmallocError> {
        let v = self.v();
        let count = pages.len();
        if count == 0 {
            return Err(VmallocError::InvalidSize { size: 0 });
        }
        if let Some(&f) = pages.iter().find(|&&f| !v.frames.owns(f)) {
            return Err(pagetable::FrameError::NotOwned {
                frame: f.start_address(),
            }
            .into());
        }
        if count <= VMAP_MAX_ALLOC {
            let addr = v.vb_alloc(count, node)?;
            let va = VirtAddr::new_truncate(addr);
            if let Err(e) = v.space.map(va, pages, prot) {
                // The piece becomes dirty and is never reused, as in Linux.
                let freed = v.vb_free(addr, count);
                debug_assert!(freed.is_ok(), "{freed:?}");
                return Err(e.into());
            }
            return Ok(va);
        }
        let size = count as u64 * PAGE_SIZE;
        let flags = VmFlags::MAP_RAM | VmFlags::NO_GUARD;
        let area = v.get_vm_area_node(
            size,
            PAGE_SIZE,
            flags,
            count,
            None,
            node,
            Location::caller(),
        )?;
        let va = VirtAddr::new_truncate(area.start);
        if let Err(e) = v.space.map(va, pages, prot) {
            v.drop_unused(area.start);
            return Err(e.into());
        }
        Ok(va)
    }

    /// `vm_unmap_ram(addr, count)`: unmap what [`Vmalloc::vm_map_ram`] mapped at `addr` with
    /// `count` pages (its example shows both). Frames are not freed. A piece of a vmap block
    /// is left dirty, its flush deferred to [`Vmalloc::vm_unmap_aliases`] or to the purge of
    /// its block; a larger mapping's area is freed lazily. Errors (nothing changed): not a live mapping
    /// start ([`VmallocError::NotAllocated`], [`VmallocError::NotStartOfArea`],
    /// [`VmallocError::DoubleFree`]), another count ([`VmallocError::WrongCount`]), another
    /// kind of area ([`VmallocError::WrongKind`]).
    pub fn vm_unmap_ram(&self, addr: VirtAddr, count: usize) -> Result<(), VmallocError> {
        let v = self.v();
        let a = addr.as_u64();
        if count == 0 {
            return Err(VmallocError::InvalidSize { size: 0 });
        }
        if a % PAGE_SIZE != 0 {
            return Err(VmallocError::Misaligned {
                addr: a,
                align: PAGE_SIZE,
            });
        }
        if count <= VMAP_MAX_ALLOC {
            return v.vb_free(a, count);
        }
        // Find, check and remove in ONE busy-lock critical section: an area that another
        // thread frees or allocates at this address meanwhile is either checked here or not
        // touched at all.
        let removed = v.kva.remove_if(VirtAddr::new_truncate(a), |area| {
            let f = area.info.flags;
            if !f.contains(VmFlags::MAP_RAM) || f.contains(VmFlags::UNLIST) {
                return Err(VmallocError::WrongKind {
                    addr: a,
                    expected: VmFlags::MAP_RAM,
                    found: f,
                });
            }
            if area.info.nr_pages != count {
                return Err(VmallocError::WrongCount {
                    addr: a,
                    count,
                    expected: area.info.nr_pages,
                });
            }
            Ok(())
        })?;
        v.release(removed)
    }

    /// `vm_unmap_aliases()`: make sure no CPU holds a stale translation of any page this
    /// layer has unmapped (Linux's `_vm_unmap_aliases`).
    ///
    /// Under one mutex (Linux's `vmap_purge_lock`): every vmap block without a live piece but
    /// with free space left ("fragmented") is retired to the lazy list; the dirty ranges of
    /// the other blocks are collected (and reset) into ONE union range; then the `Kva`'s lazy
    /// areas are purged with ONE flush covering their union and the dirty union together
    /// ([`Kva::purge_range`](crate::Kva::purge_range), Linux's `__purge_vmap_area_lazy(start,
    /// end)`: the dirty union alone when nothing is lazy, no flush when nothing is dirty
    /// either). After it returns, no CPU holds a translation of a page this layer unmapped
    /// before the call. May wait for a purge in progress.
    pub fn vm_unmap_aliases(&self) {
        self.v().unmap_aliases();
    }
}

impl<P: Platform> Inner<P> {
    /// `vb_alloc`: a piece of `count.next_power_of_two()` pages from this CPU's blocks.
    fn vb_alloc(&self, count: usize, node: Option<usize>) -> Result<u64, VmallocError> {
        let pages = count.next_power_of_two() as u32;
        let b = &self.blocks;
        let cpu = P::this_cpu() % b.queues.len();
        {
            let mut q = b.queues[cpu].lock();
            let mut i = 0;
            while i < q.len() {
                let mut st = q[i].st.lock();
                if !st.dead && st.free >= pages {
                    let off = st.take(pages);
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
        self.new_vmap_block(cpu, pages, node)
    }

    /// `new_vmap_block`: take a block from the `Kva` (no lock of ours held: the `Kva` may call
    /// our failure notifier), hand out its first piece, publish it.
    fn new_vmap_block(
        &self,
        cpu: usize,
        pages: u32,
        node: Option<usize>,
    ) -> Result<u64, VmallocError> {
        let info = AreaInfo {
            flags: BLOCK_FLAGS,
            nr_pages: 0,
            caller: Location::caller(),
            phys_addr: None,
        };
        let start = self
            .kva
            .alloc(
                VMAP_BLOCK_SIZE,
                VMAP_BLOCK_SIZE,
                self.start,
                self.end,
                node,
                info,
            )?
            .as_u64();
        let mut st = BlockState::new();
        st.take(pages);
        let vb = StdArc::new(VmapBlock {
            start,
            st: Mutex::<P, _>::new(st),
        });
        let b = &self.blocks;
        b.shard(start)
            .lock()
            .insert(start / VMAP_BLOCK_SIZE, StdArc::clone(&vb));
        b.nr_blocks.fetch_add(1, Ordering::Relaxed);
        b.queues[cpu].lock().push(vb);
        Ok(start)
    }

    /// `vb_free`: unmap a piece and mark it dirty; retire the block once all of it is dirty.
    fn vb_free(&self, addr: u64, count: usize) -> Result<(), VmallocError> {
        let pages = count.next_power_of_two() as u32;
        let bstart = addr & !(VMAP_BLOCK_SIZE - 1);
        let Some(vb) = self.blocks.lookup(bstart) else {
            return Err(self.not_a_piece(addr, count));
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
        let len = st.piece_len(off);
        if len != pages {
            return Err(VmallocError::WrongCount {
                addr,
                count,
                expected: len as usize,
            });
        }
        // Caller-owned frames: nothing to free; the flush is deferred (dirty range).
        let unmapped = self.space.unmap(
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
            self.retire_block(&vb);
        }
        Ok(())
    }

    /// Why `addr` is not a block piece: a large `vm_map_ram` area (wrong count) or nothing.
    fn not_a_piece(&self, addr: u64, count: usize) -> VmallocError {
        match self.kva.find(VirtAddr::new_truncate(addr)) {
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

    /// Hand a dead block's range to the `Kva`'s lazy list (no lock of ours held).
    fn retire_block(&self, vb: &VmapBlock<P>) {
        self.blocks.unlist(vb.start);
        match self.kva.remove(VirtAddr::new_truncate(vb.start)) {
            Ok(r) => self.kva.free_lazy(r, VMAP_BBMAP_BITS),
            Err(_) => debug_assert!(false, "vmap block {:#x} missing from the Kva", vb.start),
        }
    }

    /// Retire every fragmented block of every CPU; returns the pages handed to the lazy list.
    /// (Also the `Kva`'s allocation-failure notifier.)
    pub(crate) fn purge_fragmented_blocks(&self) -> usize {
        let mut victims = Vec::new();
        for q in self.blocks.queues.iter() {
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
            self.retire_block(vb);
        }
        victims.len() * VMAP_BBMAP_BITS
    }

    /// `_vm_unmap_aliases` (see [`Vmalloc::vm_unmap_aliases`]).
    pub(crate) fn unmap_aliases(&self) {
        let _serial = self.blocks.aliases.lock();
        self.purge_fragmented_blocks();
        let (mut lo, mut hi) = (u64::MAX, 0u64);
        for shard in self.blocks.map.iter() {
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
        let _ = self.kva.purge_range(lo, hi);
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
        assert_eq!(st.take(4), 0);
        assert_eq!(st.take(1), 4);
        assert_eq!(st.piece_len(0), 4);
        assert_eq!(st.piece_len(4), 1);
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
