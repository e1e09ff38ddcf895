//! Non-present leaves (Linux's swap and migration entries) and the swap-count table behind
//! them ([`SwapMap`], Linux's `swap_map` with its count continuations).
//!
//! How it works: the entry encoding is documented on [`SwapEntry`], the slot counts and
//! their continuations on [`SwapMap`] (what users rely on). For maintainers: `Slots` keeps
//! one `Slot` per offset in use, each with its own chain of continuation frames.
//!
//! Locking and ordering rules: the slot table sits behind one `sync::Mutex`, taken for every
//! count change, never held while allocating a continuation (the allocation happens first, and
//! a frame that turns out not to be needed any more is freed again). Lock order: page-table
//! locks (`ptl`), then this lock, then the frame allocator's.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::addr::VirtAddr;
use crate::entry::{ADDR_MASK, Pte};
use crate::frame::{FrameAllocator, Zone};
use crate::mapper::{AddressSpace, MapError};
use crate::page::{PAGE_SIZE, PhysFrame};
use crate::platform::{DefaultPlatform, Platform};
use alloc::sync::Arc;

use crate::sync::{Mutex, Ordering};
use crate::tlb::lin;

/// First bit of a non-present entry's type field.
const TYPE_SHIFT: u32 = 59;
/// The type field (5 bits).
const TYPE_MASK: u64 = 0x1f << TYPE_SHIFT;
/// Swap types below this are swap areas (Linux's `MAX_SWAPFILES`).
pub const MAX_SWAPFILES: u8 = 27;
/// Type of a read migration entry (Linux's `SWP_MIGRATION_READ`).
const SWP_MIGRATION_READ: u8 = 28;
/// Type of a write migration entry (Linux's `SWP_MIGRATION_WRITE`).
const SWP_MIGRATION_WRITE: u8 = 29;
/// Largest offset (40 bits: 12..52).
const MAX_OFFSET: u64 = ADDR_MASK >> 12;

/// Count a slot's map byte holds before continuations are needed (Linux's `SWAP_MAP_MAX`).
pub const SWAP_MAP_MAX: u64 = 0x3e;
/// Count one continuation frame adds (Linux's `SWAP_CONT_MAX`).
pub const SWAP_CONT_MAX: u64 = 0x7f;

/// What a non-present entry stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SwapKind {
    /// A page in a swap area (type below [`MAX_SWAPFILES`]): fork raises its swap count.
    Swap,
    /// A page under migration, mapped read-only.
    MigrationRead,
    /// A page under migration, mapped writable: a private fork makes it
    /// [`SwapKind::MigrationRead`] in both spaces.
    MigrationWrite,
    /// Any other non-present value (Linux's hwpoison and device-private entries, or bits this
    /// model does not interpret): copied as it is.
    Other,
}

/// A non-present, non-zero page-table entry: Linux's swap and migration entries.
///
/// A leaf whose `PRESENT` bit is clear but which is not all zero is a `SwapEntry`: the
/// hardware ignores every other bit, so software keeps a type and an offset there, the way
/// x86_64 Linux encodes a `swp_entry_t` in a pte:
///
/// * bits 59..64 hold the type (Linux: `SWP_TYPE_FIRST_BIT` = 64 - `SWP_TYPE_BITS`, 5 bits);
/// * bits 12..52 hold the offset (the swap slot; for a migration entry the frame number, so
///   that [`Pte::addr`] is the frame being migrated);
/// * every other bit is kept as it is (Linux keeps its swap soft-dirty bit there).
///
/// Types `0..MAX_SWAPFILES` ([`MAX_SWAPFILES`] = 27) are swap areas ([`SwapKind::Swap`]); 28
/// and 29 are read and write migration entries (Linux 5.5 with `CONFIG_MEMORY_FAILURE`: 27 is
/// hwpoison, 30 and 31 device-private); any other non-present value is [`SwapKind::Other`].
/// Unlike Linux the offset is stored as is (no L1TF inversion: nothing here speculates).
///
/// Such entries are made by [`install_swap_entry`] and copied by
/// [`copy_range`](crate::copy_range); [`AddressSpace::map`] sees one as in use, [`AddressSpace::unmap`]
/// clears and counts it like a page.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SwapEntry(u64);

impl SwapEntry {
    /// The entry `pte` stands for, if it is non-present and not all zero.
    #[inline]
    pub const fn from_pte(pte: Pte) -> Option<SwapEntry> {
        if pte.is_present() || pte.is_unused() {
            None
        } else {
            Some(SwapEntry(pte.bits()))
        }
    }

    /// A migration entry for `frame` (writable or not).
    pub const fn migration(frame: PhysFrame, write: bool) -> SwapEntry {
        let ty = if write {
            SWP_MIGRATION_WRITE
        } else {
            SWP_MIGRATION_READ
        };
        SwapEntry(((ty as u64) << TYPE_SHIFT) | (frame.start_address().as_u64() & ADDR_MASK))
    }

    /// A swap entry of area `ty` (below [`MAX_SWAPFILES`]) at slot `offset` (non-zero, 40 bits).
    const fn swap(ty: u8, offset: u64) -> SwapEntry {
        SwapEntry(((ty as u64) << TYPE_SHIFT) | ((offset << 12) & ADDR_MASK))
    }

    /// The entry as a page-table value.
    #[inline]
    pub const fn pte(self) -> Pte {
        Pte::from_bits(self.0)
    }

    /// The type field (bits 59..64).
    #[inline]
    pub const fn swap_type(self) -> u8 {
        ((self.0 & TYPE_MASK) >> TYPE_SHIFT) as u8
    }

    /// The offset field (bits 12..52): the swap slot, or a migration entry's frame number.
    #[inline]
    pub const fn offset(self) -> u64 {
        (self.0 & ADDR_MASK) >> 12
    }

    /// What the entry stands for.
    pub const fn kind(self) -> SwapKind {
        match self.swap_type() {
            t if t < MAX_SWAPFILES => SwapKind::Swap,
            SWP_MIGRATION_READ => SwapKind::MigrationRead,
            SWP_MIGRATION_WRITE => SwapKind::MigrationWrite,
            _ => SwapKind::Other,
        }
    }

    /// A write migration entry made read (Linux's `make_migration_entry_read`); every other
    /// bit is kept. Other entries are returned unchanged.
    pub const fn to_read_migration(self) -> SwapEntry {
        match self.kind() {
            SwapKind::MigrationWrite => {
                SwapEntry((self.0 & !TYPE_MASK) | ((SWP_MIGRATION_READ as u64) << TYPE_SHIFT))
            }
            _ => self,
        }
    }

    /// A read migration entry made writable again (undoing [`SwapEntry::to_read_migration`]);
    /// every other bit is kept. Other entries are returned unchanged.
    pub(super) const fn to_write_migration(self) -> SwapEntry {
        match self.kind() {
            SwapKind::MigrationRead => {
                SwapEntry((self.0 & !TYPE_MASK) | ((SWP_MIGRATION_WRITE as u64) << TYPE_SHIFT))
            }
            _ => self,
        }
    }

    /// The slot identity: type and offset, without the other bits.
    #[inline]
    const fn key(self) -> u64 {
        self.0 & (TYPE_MASK | ADDR_MASK)
    }
}

impl core::fmt::Debug for SwapEntry {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SwapEntry")
            .field("kind", &self.kind())
            .field("type", &self.swap_type())
            .field("offset", &self.offset())
            .field("bits", &format_args!("{:#x}", self.0))
            .finish()
    }
}

/// What [`SwapMap::duplicate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dup {
    /// The count was raised.
    Counted,
    /// Not a slot of this map (another swap area, a free slot, not a swap entry): nothing
    /// counted. Linux's `swap_duplicate` fails with `-EINVAL`/`-ENOENT` there, which fork
    /// ignores: the entry is copied anyway.
    NotOurs,
    /// The count is at its capacity: a continuation must be added
    /// ([`SwapMap::add_continuation`], outside any page-table lock) before retrying.
    NeedsContinuation,
}

/// One slot in use.
#[derive(Debug)]
struct Slot {
    count: u64,
    /// Continuation frames, each worth `cont_max` references beyond `map_max`.
    cont: Vec<PhysFrame>,
}

#[derive(Debug, Default)]
struct Slots {
    used: BTreeMap<u64, Slot>,
    /// Freed offsets, reused first.
    free: Vec<u64>,
    /// The next never-used offset.
    next: u64,
}

/// One swap area (type 0): its slots and, per slot, the count of entries that refer to it
/// (Linux's `swap_map`, with its count continuations).
///
/// Slots are handed out by [`SwapMap::alloc`] from offset 1 (slot 0 is the swap header, as in
/// Linux). A slot's count fits in its map byte up to a limit ([`SWAP_MAP_MAX`], 62); beyond
/// it the count needs *continuations*, frames from the frame allocator that each hold
/// [`SWAP_CONT_MAX`] (127) more. Raising a count that is at its capacity
/// ([`SwapMap::duplicate`], Linux's `swap_duplicate`) does not allocate: it answers
/// [`Dup::NeedsContinuation`], and the caller (fork) must drop its page-table locks and call
/// [`SwapMap::add_continuation`] (Linux's `add_swap_count_continuation(entry, GFP_KERNEL)`),
/// which may fail, before retrying. Linux first tries a `GFP_ATOMIC` allocation under the
/// locks; this model leaves that out (as if atomic reserves were always exhausted), so every
/// continuation goes through the drop-locks-and-retry path.
///
/// Simplification: Linux shares one continuation page among the 4,096 slots of a `swap_map`
/// page and chains one page per digit; here each slot has its own chain, one frame per
/// `SWAP_CONT_MAX` references, and frames no longer needed are returned as soon as a count
/// drops (Linux keeps them until swapoff).
///
/// Every method takes the map's lock (a platform `Mutex`, never held while allocating a
/// continuation); [`copy_range_with_swap`](crate::copy_range_with_swap) takes it under the
/// spaces' page-table locks.
#[derive(Debug)]
pub struct SwapMap<P: Platform = DefaultPlatform> {
    frames: Arc<FrameAllocator<P>>,
    map_max: u64,
    cont_max: u64,
    slots: Mutex<P, Slots>,
}

impl<P: Platform> SwapMap<P> {
    /// An empty swap area (type 0) with Linux's limits; continuations come from `frames`.
    pub fn new(frames: Arc<FrameAllocator<P>>) -> SwapMap<P> {
        Self::with_limits(frames, SWAP_MAP_MAX, SWAP_CONT_MAX)
    }

    /// An empty swap area whose map holds counts up to `map_max` and whose continuation
    /// frames hold `cont_max` more each (both at least 1): small limits make continuations
    /// easy to reach in tests.
    pub fn with_limits(frames: Arc<FrameAllocator<P>>, map_max: u64, cont_max: u64) -> SwapMap<P> {
        SwapMap {
            frames,
            map_max: map_max.max(1),
            cont_max: cont_max.max(1),
            slots: Mutex::<P, _>::new(Slots {
                next: 1,
                ..Slots::default()
            }),
        }
    }

    /// Continuation frames a count of `count` needs.
    fn needed(&self, count: u64) -> usize {
        count.saturating_sub(self.map_max).div_ceil(self.cont_max) as usize
    }

    /// Allocate a slot with count 1 (Linux's `get_swap_page` plus the one pte that will refer
    /// to it). [`MapError::OutOfFrames`] when all 2^40 - 1 slots are in use.
    pub fn alloc(&self) -> Result<SwapEntry, MapError> {
        let mut s = self.slots.lock();
        let offset = match s.free.pop() {
            Some(o) => o,
            None if s.next <= MAX_OFFSET => {
                s.next += 1;
                s.next - 1
            }
            None => return Err(MapError::OutOfFrames),
        };
        let e = SwapEntry::swap(0, offset);
        s.used.insert(
            e.key(),
            Slot {
                count: 1,
                cont: Vec::new(),
            },
        );
        Ok(e)
    }

    /// The count of `e`'s slot (0 if `e` is not a slot of this map in use).
    pub fn count(&self, e: SwapEntry) -> u64 {
        self.slots.lock().used.get(&e.key()).map_or(0, |s| s.count)
    }

    /// Slots in use.
    pub fn slots_in_use(&self) -> usize {
        self.slots.lock().used.len()
    }

    /// Continuation frames held, all slots together.
    pub fn continuation_frames(&self) -> usize {
        self.slots.lock().used.values().map(|s| s.cont.len()).sum()
    }

    /// Raise the count of `e`'s slot by one (Linux's `swap_duplicate`), never allocating:
    /// see [`Dup`].
    pub fn duplicate(&self, e: SwapEntry) -> Dup {
        if e.kind() != SwapKind::Swap {
            return Dup::NotOurs;
        }
        let mut s = self.slots.lock();
        let Some(slot) = s.used.get_mut(&e.key()) else {
            return Dup::NotOurs;
        };
        let capacity = self.map_max + slot.cont.len() as u64 * self.cont_max;
        if slot.count < capacity {
            slot.count += 1;
            Dup::Counted
        } else {
            Dup::NeedsContinuation
        }
    }

    /// Give `e`'s slot room for one more reference (Linux's `add_swap_count_continuation`):
    /// allocates a continuation frame (without holding the slot lock) and attaches it if the
    /// count is still at its capacity; if not (the count dropped, or the slot went away
    /// meanwhile) the frame is freed again and this succeeds, so the caller's retry decides.
    /// [`MapError::OutOfFrames`] if the allocation fails (nothing changed).
    pub fn add_continuation(&self, e: SwapEntry) -> Result<(), MapError> {
        let frame = self.frames.alloc(Zone::Normal)?;
        let spare = {
            let mut s = self.slots.lock();
            match s.used.get_mut(&e.key()) {
                Some(slot)
                    if slot.count >= self.map_max + slot.cont.len() as u64 * self.cont_max =>
                {
                    slot.cont.push(frame);
                    None
                }
                _ => Some(frame),
            }
        };
        if let Some(f) = spare {
            // Allocated above and never attached: freeing it cannot be refused.
            let _ = self.frames.free(f);
        }
        Ok(())
    }

    /// Drop one reference to `e`'s slot (Linux's `swap_free`); continuation frames no longer
    /// needed go back to the frame allocator, and at zero the slot is freed. False if `e` is
    /// not a slot of this map in use (nothing changes).
    pub fn free(&self, e: SwapEntry) -> bool {
        let mut spare = Vec::new();
        {
            let mut s = self.slots.lock();
            let key = e.key();
            let Some(slot) = s.used.get_mut(&key) else {
                return false;
            };
            slot.count -= 1;
            let keep = self.needed(slot.count);
            if slot.cont.len() > keep {
                spare.extend(slot.cont.drain(keep..));
            }
            if slot.count == 0 {
                s.used.remove(&key);
                s.free.push(e.offset());
            }
        }
        if !spare.is_empty() {
            // Continuation frames this map allocated and just detached.
            let _ = self.frames.free_bulk(&spare);
        }
        true
    }
}

impl<P: Platform> Drop for SwapMap<P> {
    fn drop(&mut self) {
        let frames: Vec<PhysFrame> = self
            .slots
            .get_mut()
            .used
            .values_mut()
            .flat_map(|s| s.cont.drain(..))
            .collect();
        if !frames.is_empty() {
            // Continuation frames this map allocated and still held.
            let _ = self.frames.free_bulk(&frames);
        }
    }
}

/// Replace the present 4 KiB leaf at `va` with the non-present `entry` (the last step of
/// Linux's `try_to_unmap_one`, swapping or migrating the page out), under the space's
/// page-table lock. Returns the old leaf: its frame reference now belongs to the caller, and
/// `va` must be flushed from every TLB before that frame is reused. rss is unchanged: this
/// crate counts a non-present leaf like a mapped page (unmap clears and counts it).
///
/// Errors, changing nothing: [`MapError::Misaligned`], [`MapError::NotMapped`] (no present
/// leaf), [`MapError::HugePageInTheWay`] (a huge leaf covers `va`).
pub fn install_swap_entry<P: Platform>(
    space: &AddressSpace<P>,
    va: VirtAddr,
    entry: SwapEntry,
) -> Result<Pte, MapError> {
    if !va.is_aligned(PAGE_SIZE) {
        return Err(MapError::Misaligned {
            addr: va.as_u64(),
            align: PAGE_SIZE,
        });
    }
    let _ptl = space.ptl().lock();
    let Some(leaf) = space.leaf(lin(va)) else {
        return Err(MapError::NotMapped { va });
    };
    if leaf.size != PAGE_SIZE {
        return Err(MapError::HugePageInTheWay { va });
    }
    // One atomic swap: a walker's concurrent A/D update (a compare-exchange from the present
    // value) either lands before, and is returned, or fails.
    Ok(leaf.entry.swap(entry.pte(), Ordering::AcqRel))
}
