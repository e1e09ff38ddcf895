//! The reference model of the `alloc_free` target: what a small `Vmalloc` instance must look
//! like from the outside, kept with plain collections.
//!
//! * `areas`: every live area of the KVA allocator (vmalloc, vmap, get_vm_area /
//!   alloc_vm_area, ioremap, large vm_map_ram, vmap blocks), with the flags and page count the
//!   allocator must report and the frames mapped in it.
//! * `lazy`: areas freed lazily and not purged yet (their VA is NOT free).
//! * `blocks` / `queues`: the vmap blocks, with their pieces, bump offset and dirty count,
//!   and each CPU's queue of blocks with room, in order (Linux's `vb_alloc` scans the
//!   calling CPU's; the harness switches CPUs with `set_this_cpu`).
//! * `mem`: every frame the model knows (a vmalloc area's, the harness's for vmap /
//!   vm_map_ram, or kept alive only by a user mapping), with who holds a reference and what
//!   its bytes must be (byte-exact where known; `vmalloc` without `__GFP_ZERO` starts
//!   unknown).
//! * `user`: the pages `remap_vmalloc_range` mapped into the user space.
//!
//! Everything here is deterministic; the harness learns from the implementation only what
//! Linux leaves to it (the address a new area gets, which frames back it, and when a
//! fragmented vmap block was retired by an allocation-failure notifier), and checks even
//! those against the model (free space, fresh frames, all-or-none retirement).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use vmalloc::{VmFlags, VmallocError};

/// Page size.
pub const PAGE: u64 = 4096;
/// Start of the KVA range (x86_64's `VMALLOC_START`).
pub const KVA_START: u64 = 0xffff_c900_0000_0000;
/// Size of the KVA range: small, so that it runs out (eight vmap blocks fill it).
pub const KVA_SIZE: u64 = 32 << 20;
/// End of the KVA range.
pub const KVA_END: u64 = KVA_START + KVA_SIZE;
/// Physical arena: 1,024 frames at physical 0.
pub const ARENA_BYTES: u64 = 4 << 20;
/// Pages per vmap block.
pub const BLOCK_PAGES: u32 = 1024;
/// Bytes per vmap block.
pub const BLOCK_BYTES: u64 = BLOCK_PAGES as u64 * PAGE;
/// Flags of a vmap block area.
pub const BLOCK_FLAGS: VmFlags = VmFlags::MAP_RAM
    .union(VmFlags::UNLIST)
    .union(VmFlags::NO_GUARD);

/// What backs a live area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `vmalloc` family: frames owned by the area.
    Vmalloc {
        /// Physical address of each page.
        frames: Vec<u64>,
        /// Mapped writable.
        writable: bool,
    },
    /// `vmap`: the harness's frames.
    Vmap {
        /// Physical address of each page.
        frames: Vec<u64>,
        /// Mapped writable.
        writable: bool,
    },
    /// `vm_map_ram` of more than 64 pages: the harness's frames, no guard page.
    MapRamLarge {
        /// Physical address of each page.
        frames: Vec<u64>,
        /// Mapped writable.
        writable: bool,
    },
    /// `ioremap`: device memory mapped, reads and writes are holes.
    Ioremap {
        /// Mapped pages.
        pages: u64,
    },
    /// `get_vm_area` / `alloc_vm_area`: nothing mapped.
    Reserved,
    /// A vmap block (its pieces are in `Model::blocks`).
    Block,
}

/// A live area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Area {
    /// First address.
    pub start: u64,
    /// End, guard page included.
    pub end: u64,
    /// Flags the allocator must report.
    pub flags: VmFlags,
    /// `nr_pages` the allocator must report.
    pub nr_pages: usize,
    /// `phys_addr` the allocator must report.
    pub phys: Option<u64>,
    /// What backs it.
    pub kind: Kind,
}

impl Area {
    /// End of the part that may be mapped (the guard page excluded).
    pub fn usable_end(&self) -> u64 {
        if self.flags.contains(VmFlags::NO_GUARD) || self.end - self.start < PAGE {
            self.end
        } else {
            self.end - PAGE
        }
    }

    /// Frames mapped page by page from the start, and whether writable.
    pub fn frames(&self) -> Option<(&[u64], bool)> {
        match &self.kind {
            Kind::Vmalloc { frames, writable }
            | Kind::Vmap { frames, writable }
            | Kind::MapRamLarge { frames, writable } => Some((frames, *writable)),
            _ => None,
        }
    }

    /// Kernel pages mapped (what `rss` counts).
    pub fn mapped_pages(&self) -> usize {
        match &self.kind {
            Kind::Ioremap { pages } => *pages as usize,
            _ => self.frames().map_or(0, |(f, _)| f.len()),
        }
    }
}

/// One `vm_map_ram` piece of a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// Pages reserved (the request rounded up to a power of two).
    pub pages: u32,
    /// Still mapped.
    pub live: bool,
    /// The frames mapped (`count` of them).
    pub frames: Vec<u64>,
    /// Mapped writable.
    pub writable: bool,
}

/// One vmap block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Block {
    /// Pages never handed out.
    pub free: u32,
    /// Pages of freed pieces.
    pub dirty: u32,
    /// Pieces by page offset.
    pub pieces: BTreeMap<u32, Piece>,
}

impl Block {
    /// Pages handed out so far (the bump offset).
    pub fn used(&self) -> u32 {
        BLOCK_PAGES - self.free
    }

    /// No live piece but space never handed out: retired by `purge_fragmented_blocks`.
    pub fn fragmented(&self) -> bool {
        self.free + self.dirty == BLOCK_PAGES && self.dirty != BLOCK_PAGES
    }

    /// The live piece holding page `off`.
    pub fn live_piece_at(&self, off: u32) -> Option<(u32, &Piece)> {
        let (&s, p) = self.pieces.range(..=off).next_back()?;
        (p.live && off < s + p.pages).then_some((s, p))
    }
}

/// What a frame's bytes must be.
#[derive(Debug, Clone)]
pub enum Content {
    /// All zero.
    Zero,
    /// Unspecified (never written through the API).
    Unknown,
    /// Byte-exact where `known` says so.
    Bytes {
        /// The bytes.
        data: Box<[u8; PAGE as usize]>,
        /// One bit per byte: known or not.
        known: Box<[u64; PAGE as usize / 64]>,
    },
}

impl Content {
    /// The byte at `i`, if known.
    pub fn get(&self, i: usize) -> Option<u8> {
        match self {
            Content::Zero => Some(0),
            Content::Unknown => None,
            Content::Bytes { data, known } => {
                (known[i / 64] & (1 << (i % 64)) != 0).then_some(data[i])
            }
        }
    }

    /// Write `bytes` at offset `off` (within the page).
    pub fn write(&mut self, off: usize, bytes: &[u8]) {
        if let Content::Zero | Content::Unknown = self {
            let all = matches!(self, Content::Zero);
            *self = Content::Bytes {
                data: Box::new([0; PAGE as usize]),
                known: Box::new([if all { u64::MAX } else { 0 }; PAGE as usize / 64]),
            };
        }
        if let Content::Bytes { data, known } = self {
            data[off..off + bytes.len()].copy_from_slice(bytes);
            for i in off..off + bytes.len() {
                known[i / 64] |= 1 << (i % 64);
            }
        }
    }
}

/// A frame the model knows.
#[derive(Debug, Clone)]
pub struct FrameM {
    /// A vmalloc area or the harness holds a reference.
    pub owner: bool,
    /// References held by user mappings.
    pub user: u32,
    /// Its bytes.
    pub content: Content,
}

/// A hasher for physical addresses (the model's frame map): one multiply. Cheaper than
/// SipHash, and deterministic, so the map iterates in the same order in every process.
#[derive(Default)]
pub struct FrameHasher(u64);

impl Hasher for FrameHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Frame addresses differ in bits 12 and up: multiply them into the high bits hashbrown
        // takes its control byte from, and fold back for the bucket index.
        let h = (n >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = h ^ (h >> 29);
    }
}

/// The whole model.
#[derive(Debug, Default)]
pub struct Model {
    /// Live areas by start.
    pub areas: BTreeMap<u64, Area>,
    /// Lazily freed areas (start -> end), not purged yet.
    pub lazy: BTreeMap<u64, u64>,
    /// Live vmap blocks by start.
    pub blocks: BTreeMap<u64, Block>,
    /// Each CPU's block queue, in order.
    pub queues: Vec<Vec<u64>>,
    /// The CPU the harness runs as.
    pub cpu: usize,
    /// Known frames by physical address.
    pub mem: HashMap<u64, FrameM, BuildHasherDefault<FrameHasher>>,
    /// User mappings: user page address -> frame.
    pub user: BTreeMap<u64, u64>,
    /// `vfree_atomic` frees that failed.
    pub deferred_errors: u64,
    /// Running totals kept by the methods that change `areas`, `lazy` and the pieces'
    /// liveness (see [`Totals`]), so that the per-step check costs O(1) instead of a walk of
    /// the model; recomputed and compared by the full check.
    pub totals: Totals,
}

/// The model's sums the per-step check compares with the allocator's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Bytes of live areas (guard pages included).
    pub used: u64,
    /// Bytes of lazily freed areas.
    pub pending: u64,
    /// Kernel pages mapped (see [`Model::kernel_rss`]).
    pub rss: usize,
}

/// What a release call (`vfree`, `vunmap`, `iounmap`, `free_vm_area`) must answer.
pub type Expect = Result<(), VmallocError>;

impl Model {
    /// Add a live area (must be new at its start).
    pub fn insert_area(&mut self, a: Area) -> Option<Area> {
        self.totals.used += a.end - a.start;
        self.totals.rss += a.mapped_pages();
        let prev = self.areas.insert(a.start, a);
        if let Some(p) = &prev {
            self.totals.used -= p.end - p.start;
            self.totals.rss -= p.mapped_pages();
        }
        prev
    }

    /// Remove the live area starting at `start`.
    pub fn remove_area(&mut self, start: u64) -> Option<Area> {
        let a = self.areas.remove(&start)?;
        self.totals.used -= a.end - a.start;
        self.totals.rss -= a.mapped_pages();
        Some(a)
    }

    /// Put `[s, e)` on the lazy list.
    pub fn add_lazy(&mut self, s: u64, e: u64) {
        self.totals.pending += e - s;
        if let Some(old) = self.lazy.insert(s, e) {
            self.totals.pending -= old - s;
        }
    }

    /// Empty the lazy list (a purge ran).
    pub fn clear_lazy(&mut self) {
        self.lazy.clear();
        self.totals.pending = 0;
    }

    /// A vm_map_ram piece of `pages` mapped pages became live (`true`) or dead.
    pub fn piece_live(&mut self, pages: usize, live: bool) {
        if live {
            self.totals.rss += pages;
        } else {
            self.totals.rss -= pages;
        }
    }

    /// The totals recomputed from the collections (for the full check).
    pub fn recount(&self) -> Totals {
        Totals {
            used: self.areas.values().map(|a| a.end - a.start).sum(),
            pending: self.lazy.iter().map(|(&s, &e)| e - s).sum(),
            rss: self.kernel_rss(),
        }
    }

    /// The live area containing `a` (guard page included).
    pub fn containing(&self, a: u64) -> Option<&Area> {
        self.areas
            .range(..=a)
            .next_back()
            .map(|(_, ar)| ar)
            .filter(|ar| a < ar.end)
    }

    /// The answer of a release of the area starting at `a` that must satisfy `ok`.
    pub fn expect_release(&self, a: u64, expected: VmFlags, ok: fn(VmFlags) -> bool) -> Expect {
        match self.containing(a) {
            Some(ar) if ar.start != a => Err(VmallocError::NotStartOfArea {
                addr: a,
                start: ar.start,
            }),
            Some(ar) if !ok(ar.flags) => Err(VmallocError::WrongKind {
                addr: a,
                expected,
                found: ar.flags,
            }),
            Some(_) => Ok(()),
            None if self.lazy.contains_key(&a) => Err(VmallocError::DoubleFree { addr: a }),
            None => Err(VmallocError::NotAllocated { addr: a }),
        }
    }

    /// The answer of `vm_unmap_ram(a, count)` (`count != 0`, `a` page aligned).
    pub fn expect_unmap_ram(&self, a: u64, count: usize) -> Expect {
        // Linux 6.x: an address inside a vmap block names a piece whatever the count (a
        // wrong count is reported with the piece's mapped count); otherwise a count above
        // 64 names a large mapping's area.
        let bstart = a & !(BLOCK_BYTES - 1);
        if count > 64 && !self.blocks.contains_key(&bstart) {
            return match self.containing(a) {
                Some(ar) if ar.start != a => Err(VmallocError::NotStartOfArea {
                    addr: a,
                    start: ar.start,
                }),
                Some(ar)
                    if !ar.flags.contains(VmFlags::MAP_RAM)
                        || ar.flags.contains(VmFlags::UNLIST) =>
                {
                    Err(VmallocError::WrongKind {
                        addr: a,
                        expected: VmFlags::MAP_RAM,
                        found: ar.flags,
                    })
                }
                Some(ar) if ar.nr_pages != count => Err(VmallocError::WrongCount {
                    addr: a,
                    count,
                    expected: ar.nr_pages,
                }),
                Some(_) => Ok(()),
                None if self.lazy.contains_key(&a) => Err(VmallocError::DoubleFree { addr: a }),
                None => Err(VmallocError::NotAllocated { addr: a }),
            };
        }
        if let Some(b) = self.blocks.get(&bstart) {
            let off = ((a - bstart) / PAGE) as u32;
            return match b.pieces.get(&off) {
                Some(p) if p.live && p.frames.len() != count => Err(VmallocError::WrongCount {
                    addr: a,
                    count,
                    expected: p.frames.len(),
                }),
                Some(p) if p.live => Ok(()),
                Some(_) => Err(VmallocError::DoubleFree { addr: a }),
                None if off < b.used() => {
                    let (&s, _) = b.pieces.range(..off).next_back().expect("piece 0 exists");
                    Err(VmallocError::NotStartOfArea {
                        addr: a,
                        start: bstart + u64::from(s) * PAGE,
                    })
                }
                None => Err(VmallocError::NotAllocated { addr: a }),
            };
        }
        match self.containing(a) {
            Some(ar) if ar.flags.contains(VmFlags::MAP_RAM) && ar.start == a => {
                Err(VmallocError::WrongCount {
                    addr: a,
                    count,
                    expected: ar.nr_pages,
                })
            }
            Some(ar) if ar.start != a => Err(VmallocError::NotStartOfArea {
                addr: a,
                start: ar.start,
            }),
            Some(ar) => Err(VmallocError::WrongKind {
                addr: a,
                expected: VmFlags::MAP_RAM,
                found: ar.flags,
            }),
            None => Err(VmallocError::NotAllocated { addr: a }),
        }
    }

    /// Occupied ranges (live areas and lazy ones), ascending and disjoint.
    pub fn occupied(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self
            .areas
            .values()
            .map(|a| (a.start, a.end))
            .chain(self.lazy.iter().map(|(&s, &e)| (s, e)))
            .collect();
        v.sort_unstable();
        v
    }

    /// Free gaps of the KVA range.
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut pos = KVA_START;
        for (s, e) in self.occupied() {
            if pos < s {
                out.push((pos, s));
            }
            pos = pos.max(e);
        }
        if pos < KVA_END {
            out.push((pos, KVA_END));
        }
        out
    }

    /// Whether `size` bytes aligned to `align` fit in the free space within `[lo, hi)`.
    pub fn fits(&self, size: u64, align: u64, lo: u64, hi: u64) -> bool {
        self.gaps().iter().any(|&(s, e)| {
            let s = s.max(lo);
            let e = e.min(hi);
            let a = s.next_multiple_of(align);
            a < e && e - a >= size
        })
    }

    /// Whether `[s, e)` lies in the free space. Live areas are disjoint, and so are lazy
    /// ones: of each, only the last one starting below `e` can reach into `[s, e)`.
    pub fn is_free(&self, s: u64, e: u64) -> bool {
        KVA_START <= s
            && e <= KVA_END
            && self
                .areas
                .range(..e)
                .next_back()
                .is_none_or(|(_, a)| a.end <= s)
            && self
                .lazy
                .range(..e)
                .next_back()
                .is_none_or(|(_, &le)| le <= s)
    }

    /// Whether `a` lies in a lazily freed range.
    pub fn in_lazy(&self, a: u64) -> bool {
        self.lazy
            .range(..=a)
            .next_back()
            .is_some_and(|(_, &e)| a < e)
    }

    /// Pages on the lazy lists (guard pages included).
    pub fn lazy_pages(&self) -> usize {
        self.lazy
            .iter()
            .map(|(&s, &e)| ((e - s) / PAGE) as usize)
            .sum()
    }

    /// Kernel pages mapped: areas plus live vm_map_ram pieces.
    pub fn kernel_rss(&self) -> usize {
        let areas: usize = self.areas.values().map(Area::mapped_pages).sum();
        let pieces: usize = self
            .blocks
            .values()
            .flat_map(|b| b.pieces.values())
            .filter(|p| p.live)
            .map(|p| p.frames.len())
            .sum();
        areas + pieces
    }

    /// Drop the owner's reference of `pa`; forget the frame once nobody holds one.
    pub fn drop_owner(&mut self, pa: u64) {
        let f = self.mem.get_mut(&pa).expect("known frame");
        assert!(f.owner, "frame {pa:#x} released twice by its owner");
        f.owner = false;
        if f.user == 0 {
            self.mem.remove(&pa);
        }
    }

    /// Drop a user mapping's reference of `pa`.
    pub fn drop_user(&mut self, pa: u64) {
        let f = self.mem.get_mut(&pa).expect("known frame");
        f.user -= 1;
        if f.user == 0 && !f.owner {
            self.mem.remove(&pa);
        }
    }

    /// The frame the kernel page of address `a` maps and whether it is writable; `None` for
    /// a hole (no area, a guard page, nothing mapped, a dead `vm_map_ram` piece, the unmapped
    /// tail of a piece rounded up to a power of two, an ioremap area).
    pub fn page_src(&self, a: u64) -> Option<(u64, bool)> {
        let ar = self.containing(a)?;
        if a >= ar.usable_end() {
            return None;
        }
        let (frames, writable, base) = match ar.frames() {
            Some((f, w)) => (f, w, ar.start),
            None if ar.kind == Kind::Block => {
                let b = &self.blocks[&ar.start];
                let (s, p) = b.live_piece_at(((a - ar.start) / PAGE) as u32)?;
                (&p.frames[..], p.writable, ar.start + u64::from(s) * PAGE)
            }
            None => return None,
        };
        let pa = *frames.get(((a - base) / PAGE) as usize)?;
        Some((pa, writable))
    }

    /// Whether `[a, a + len)` meets the usable part of a live area (else `vread`/`vwrite`
    /// return 0).
    pub fn touches_area(&self, a: u64, len: u64) -> bool {
        let end = a.saturating_add(len);
        self.areas
            .range(..end)
            .any(|(_, ar)| ar.start < end && a < ar.usable_end())
    }

    /// Whether `[a, a + len)` meets the usable part of a live area that `vwrite` writes:
    /// any but `ioremap` ones (Linux 6.x: "IOREMAP area is treated as memory hole").
    pub fn touches_writable_area(&self, a: u64, len: u64) -> bool {
        let end = a.saturating_add(len);
        self.areas.range(..end).any(|(_, ar)| {
            ar.start < end && a < ar.usable_end() && !ar.flags.contains(VmFlags::IOREMAP)
        })
    }
}
