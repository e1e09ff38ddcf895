//! `vm_map_ram` / vmap blocks in the `alloc_free` target: the piece address is predicted
//! exactly (Linux's `vb_alloc`: the first block on the calling CPU's queue with room, bump offset,
//! a full block leaves the queue by `swap_remove`); a new block must come from free VA,
//! 4 MiB aligned; a piece whose mapping fails is dirty at once; a block whose pieces are
//! all dirty goes to the lazy list (see [`World::piece_freed`]).

use pagetable::{FrameError, PageTableFlags, PhysAddr, PhysFrame};
use vmalloc::{PAGE_KERNEL, PAGE_KERNEL_RO, VmFlags, VmallocError};

use super::Handle;
use super::World;
use super::model::{
    ARENA_BYTES, Area, BLOCK_BYTES, BLOCK_FLAGS, BLOCK_PAGES, Block, KVA_END, KVA_START, Kind,
    PAGE, Piece,
};
use super::ops::kva_check;

impl World {
    pub(super) fn map_ram(&mut self, count: usize, node: Option<u8>, ro: bool, bad_frame: bool) {
        let step = self.step;
        let Some(mut frames) = self.harness_frames(count) else {
            return;
        };
        let pas: Vec<u64> = frames.iter().map(|f| f.start_address().as_u64()).collect();
        let bad = PhysFrame::containing_address(PhysAddr::new_truncate(ARENA_BYTES + PAGE));
        if bad_frame && count > 0 {
            frames[count / 2] = bad;
        }
        let prot = if ro { PAGE_KERNEL_RO } else { PAGE_KERNEL };
        let node = node.map(usize::from);
        if count == 0 || (bad_frame && count > 0) {
            let want = if count == 0 {
                VmallocError::InvalidSize { size: 0 }
            } else {
                VmallocError::Frame(FrameError::NotOwned {
                    frame: bad.start_address(),
                })
            };
            assert_eq!(
                self.vm.vm_map_ram(&frames, node, prot),
                Err(want),
                "step {step}"
            );
            self.free_harness(&pas);
            return;
        }
        if count > 64 {
            return self.map_ram_large(&frames, pas, node, prot);
        }
        let pages = count.next_power_of_two() as u32;
        let predicted = self.m.queues[self.m.cpu]
            .iter()
            .position(|b| self.m.blocks[b].free >= pages);
        let st = self.frames.stats();
        self.arm();
        let got = self.vm.vm_map_ram(&frames, node, prot);
        self.disarm();
        // Where the piece went: the predicted block, or a new one.
        let (bstart, mapped) = match (&got, predicted) {
            (Ok(va), Some(i)) => {
                let b = self.m.queues[self.m.cpu][i];
                let want = b + u64::from(self.m.blocks[&b].used()) * PAGE;
                assert_eq!(va.as_u64(), want, "step {step}: vm_map_ram piece address");
                (b, true)
            }
            (Err(VmallocError::Map(pagetable::MapError::OutOfFrames)), Some(i)) => {
                assert!(self.short(st.free, 4), "step {step}: map ran out of frames");
                (self.m.queues[self.m.cpu][i], false)
            }
            (Ok(va), None) => {
                self.sync_n(1);
                let b = va.as_u64();
                self.check_new_range(b, BLOCK_BYTES, BLOCK_BYTES, KVA_START, KVA_END);
                self.new_block(b);
                (b, true)
            }
            (Err(VmallocError::Map(pagetable::MapError::OutOfFrames)), None) => {
                assert!(self.short(st.free, 4), "step {step}: map ran out of frames");
                self.sync_n(1);
                let b = self
                    .discover_block()
                    .expect("the new block of a failed map");
                self.check_new_range(b, BLOCK_BYTES, BLOCK_BYTES, KVA_START, KVA_END);
                self.new_block(b);
                (b, false)
            }
            (Err(e), None) => {
                self.sync();
                // Linux 6.x: the caller's size (its pages), not the block's.
                self.check_alloc_failure(
                    e,
                    count as u64 * PAGE,
                    BLOCK_BYTES,
                    BLOCK_BYTES,
                    KVA_START,
                    KVA_END,
                    st.free,
                    st.used,
                    0,
                );
                self.free_harness(&pas);
                return;
            }
            (Err(e), Some(_)) => panic!("step {step}: vm_map_ram from a block failed: {e:?}"),
        };
        // Take the piece in the model (the bump offset), as vb_alloc did.
        let b = self.m.blocks.get_mut(&bstart).expect("model block");
        let off = b.used();
        b.free -= pages;
        b.pieces.insert(
            off,
            Piece {
                pages,
                live: true,
                frames: pas.clone(),
                writable: !ro,
            },
        );
        let full = b.free == 0;
        self.m.piece_live(pas.len(), true);
        if full {
            let q = &mut self.m.queues[self.m.cpu];
            let i = q.iter().position(|&x| x == bstart).expect("queued");
            q.swap_remove(i);
        }
        let va = bstart + u64::from(off) * PAGE;
        if mapped {
            self.check_mapped(va, &pas, prot);
            self.handles.push(Handle {
                addr: va,
                len: count as u64 * PAGE,
                count,
            });
        } else {
            // The piece is dirty at once and never reused (Linux's vb_free on failure).
            self.piece_freed(bstart, off);
            self.free_harness(&pas);
        }
    }

    /// A new vmap block at `b` (already checked free) enters the model.
    fn new_block(&mut self, b: u64) {
        self.add_area(Area {
            start: b,
            end: b + BLOCK_BYTES,
            flags: BLOCK_FLAGS,
            nr_pages: 0,
            phys: None,
            kind: Kind::Block,
        });
        self.m.blocks.insert(
            b,
            Block {
                free: BLOCK_PAGES,
                ..Block::default()
            },
        );
        self.m.queues[self.m.cpu].push(b);
    }

    /// The start of a live vmap block the model does not know (made by a failed call).
    fn discover_block(&self) -> Option<u64> {
        let mut found = None;
        self.vm.kva().for_each_busy(|a| {
            if a.info.flags == BLOCK_FLAGS && !self.m.areas.contains_key(&a.start) {
                found = Some(a.start);
            }
        });
        found
    }

    /// Mark the piece at `off` of block `b` freed; retire the block once all of it is dirty.
    pub fn piece_freed(&mut self, b: u64, off: u32) {
        let blk = self.m.blocks.get_mut(&b).expect("model block");
        let p = blk.pieces.get_mut(&off).expect("piece");
        assert!(p.live);
        p.live = false;
        let mapped = p.frames.len();
        blk.dirty += p.pages;
        if blk.dirty == BLOCK_PAGES {
            assert_eq!(blk.free, 0);
            assert!(
                self.m.queues.iter().all(|q| !q.contains(&b)),
                "a full block on a queue"
            );
            self.m.blocks.remove(&b);
            self.m.remove_area(b);
            self.m.add_lazy(b, b + BLOCK_BYTES);
            self.touched.push(b);
        }
        self.m.piece_live(mapped, false);
    }

    fn map_ram_large(
        &mut self,
        frames: &[PhysFrame],
        pas: Vec<u64>,
        node: Option<usize>,
        prot: PageTableFlags,
    ) {
        let count = frames.len();
        let size = count as u64 * PAGE;
        let st = self.frames.stats();
        self.arm();
        let got = self.vm.vm_map_ram(frames, node, prot);
        self.disarm();
        self.sync();
        let (align, lo, hi) =
            kva_check(size, size, PAGE, KVA_START, KVA_END).expect("fits the range");
        let va = match got {
            Ok(va) => va.as_u64(),
            Err(e) => {
                self.check_alloc_failure(&e, size, size, align, lo, hi, st.free, st.used, 4);
                self.free_harness(&pas);
                return;
            }
        };
        self.check_new_range(va, size, align, lo, hi);
        self.check_mapped(va, &pas, prot);
        self.add_area(Area {
            start: va,
            end: va + size,
            flags: VmFlags::MAP_RAM | VmFlags::NO_GUARD,
            nr_pages: count,
            phys: None,
            kind: Kind::MapRamLarge {
                frames: pas,
                writable: prot.contains(PageTableFlags::WRITABLE),
            },
        });
        self.handles.push(Handle {
            addr: va,
            len: size,
            count,
        });
    }
}
