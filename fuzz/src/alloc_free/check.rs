//! The `alloc_free` target's per-step checks, the model's catching up with what the
//! implementation may do on its own (purges, notifier-retired vmap blocks), and the final
//! teardown.
//!
//! After every step ([`World::check`]):
//! * `Kva::check_invariants` passes; the KVA counters (`used`, `nr_busy`, `pending`,
//!   `lazy_pages`, `free`) equal the model's; no merge error, no foreign token;
//! * the live areas (`for_each_busy`: start, end, flags, pages, physical address) are exactly
//!   the model's, in order (so they never overlap);
//! * the kernel space maps exactly the model's pages (`rss`), the user space likewise;
//! * every frame the model knows has exactly the references the model counts;
//! * no CPU caches a translation of free VA, of a guard page or of a reservation.
//!
//! At the end ([`World::finish`]): everything is released through the API, the user
//! mappings dropped, a full purge and `vm_unmap_aliases` run; then the KVA range is entirely
//! free, nothing is pending or cached by any TLB, and after freeing the empty page tables the
//! frame allocator is back to the frames it used right after construction.

use pagetable::VirtAddr;
use vmalloc::VmArea;

use super::model::{KVA_END, KVA_START, Kind, PAGE};
use super::{SLOT_PAGES, SLOTS, USER_BASE, World};

impl World {
    /// Catch the model up with what the implementation did on its own.
    pub fn sync(&mut self) {
        self.sync_n(0);
    }

    /// [`World::sync`] when the call just made created `new_blocks` vmap blocks.
    ///
    /// A KVA allocation failure calls the notifier, which retires EVERY fragmented block at
    /// once: the live block count tells whether it ran. A purge takes every lazy list at once
    /// and flushes their union: the purge counter tells whether one ran, and then no CPU may
    /// cache a translation of any formerly lazy range.
    pub fn sync_n(&mut self, new_blocks: usize) {
        let step = self.step;
        let frag: Vec<u64> = self
            .m
            .blocks
            .iter()
            .filter(|(_, b)| b.fragmented())
            .map(|(&s, _)| s)
            .collect();
        if !frag.is_empty() {
            let live = self.vm.stats().vmap_blocks;
            let expected = self.m.blocks.len() + new_blocks;
            if live == expected - frag.len() {
                for b in frag {
                    self.m.blocks.remove(&b);
                    self.m.areas.remove(&b);
                    for q in &mut self.m.queues {
                        q.retain(|&x| x != b);
                    }
                    self.m.lazy.insert(b, b + super::model::BLOCK_BYTES);
                }
            } else {
                assert_eq!(
                    live,
                    expected,
                    "step {step}: {} fragmented blocks, {live} blocks live, {expected} expected",
                    frag.len()
                );
            }
        }
        let purges = self.vm.kva().stats().purges;
        if purges != self.purges_seen {
            self.tlb_due = true;
            let tlb = self.vm.tlb_model().expect("model TLB");
            for (&s, &e) in &self.m.lazy {
                assert!(
                    !tlb.holds_any(VirtAddr::new_truncate(s), VirtAddr::new_truncate(e)),
                    "step {step}: purged range [{s:#x}, {e:#x}) still cached by a CPU"
                );
            }
            self.m.lazy.clear();
            self.purges_seen = purges;
        }
    }

    /// Everything observable against the model (see the module documentation).
    pub fn check(&self) {
        let step = self.step;
        let kva = self.vm.kva();
        if let Err(e) = kva.check_invariants() {
            panic!("step {step}: Kva::check_invariants: {e}");
        }
        let st = kva.stats();
        let used: u64 = self.m.areas.values().map(|a| a.end - a.start).sum();
        let pending: u64 = self.m.lazy.iter().map(|(&s, &e)| e - s).sum();
        assert_eq!(
            (st.used, st.nr_busy, st.pending, st.lazy_pages),
            (used, self.m.areas.len(), pending, self.m.lazy_pages()),
            "step {step}: KVA counters (used, busy, pending, lazy pages)"
        );
        assert_eq!(
            (st.merge_errors, st.foreign_tokens),
            (0, 0),
            "step {step}: merge errors / foreign tokens"
        );
        assert_eq!(
            st.free,
            st.total - used - pending,
            "step {step}: free bytes"
        );
        let mut seen = Vec::with_capacity(self.m.areas.len());
        kva.for_each_busy(|a| {
            seen.push((
                a.start,
                a.end,
                a.info.flags,
                a.info.nr_pages,
                a.info.phys_addr,
            ))
        });
        let want: Vec<_> = self
            .m
            .areas
            .values()
            .map(|a| (a.start, a.end, a.flags, a.nr_pages, a.phys))
            .collect();
        if seen != want {
            let extra: Vec<_> = seen.iter().filter(|x| !want.contains(x)).collect();
            let missing: Vec<_> = want.iter().filter(|x| !seen.contains(x)).collect();
            panic!("step {step}: live areas differ: unexpected {extra:x?}, missing {missing:x?}");
        }
        assert_eq!(
            self.vm.kernel_space().rss(),
            self.m.kernel_rss(),
            "step {step}: kernel pages mapped"
        );
        if let Some(u) = &self.user {
            assert_eq!(u.rss(), self.m.user.len(), "step {step}: user pages mapped");
        }
        // Reference counts change only in the operations that map, unmap or remap frames, and
        // each of those checks the frames it touched; all of them are re-checked every 16
        // steps and at the end.
        if self.step % 16 == 15 || self.tlb_due {
            for (&pa, f) in &self.m.mem {
                let frame =
                    pagetable::PhysFrame::containing_address(pagetable::PhysAddr::new_truncate(pa));
                assert_eq!(
                    self.frames.refcount(frame),
                    u32::from(f.owner) + f.user,
                    "step {step}: references of frame {pa:#x}"
                );
            }
        }
        let fst = self.frames.stats();
        assert!(
            fst.used >= self.baseline_used + 1 + self.m.mem.len() as u64,
            "step {step}: fewer frames used ({}) than the model holds",
            fst.used
        );
        if self.tlb_due {
            self.check_tlb();
        }
    }

    /// No CPU caches a translation of free VA, of a guard page or of a reservation. Such a
    /// translation can only appear when VA becomes free (a purge: checked in `sync` on the
    /// purged ranges) or when a CPU accesses memory (`vread` / `vwrite`), so the whole check
    /// runs after those steps (and at the end) rather than after every step.
    pub fn check_tlb(&self) {
        let step = self.step;
        let tlb = self.vm.tlb_model().expect("model TLB");
        let cached =
            |s: u64, e: u64| tlb.holds_any(VirtAddr::new_truncate(s), VirtAddr::new_truncate(e));
        for (s, e) in self.m.gaps() {
            assert!(
                !cached(s, e),
                "step {step}: free VA [{s:#x}, {e:#x}) cached by a CPU"
            );
        }
        for a in self.m.areas.values() {
            match a.kind {
                Kind::Reserved => assert!(
                    !cached(a.start, a.end),
                    "step {step}: reservation at {:#x} cached",
                    a.start
                ),
                Kind::Block => {}
                _ if a.usable_end() < a.end => assert!(
                    !cached(a.usable_end(), a.end),
                    "step {step}: guard page of {:#x} cached",
                    a.start
                ),
                _ => {}
            }
        }
    }

    /// Release everything, purge, and check that every byte of VA and every frame is back.
    pub fn finish(mut self) {
        let areas: Vec<_> = self.m.areas.values().cloned().collect();
        for ar in areas {
            let s = ar.start;
            let v = World::va(s);
            let r = match &ar.kind {
                Kind::Vmalloc { .. } => self.vm.vfree(v),
                Kind::Vmap { .. } => self.vm.vunmap(v),
                Kind::MapRamLarge { .. } => self.vm.vm_unmap_ram(v, ar.nr_pages),
                Kind::Ioremap { .. } => self.vm.iounmap(v),
                Kind::Reserved => self.vm.free_vm_area(&VmArea {
                    start: s,
                    end: ar.end,
                    info: vmalloc::AreaInfo::new(ar.flags),
                }),
                Kind::Block => {
                    let live: Vec<(u32, usize)> = self.m.blocks[&s]
                        .pieces
                        .iter()
                        .filter(|(_, p)| p.live)
                        .map(|(&o, p)| (o, p.frames.len()))
                        .collect();
                    for (off, count) in live {
                        let a = s + u64::from(off) * PAGE;
                        let r = self.vm.vm_unmap_ram(World::va(a), count);
                        assert_eq!(r, Ok(()), "final vm_unmap_ram({a:#x}, {count})");
                        let frames = self.m.blocks[&s].pieces[&off].frames.clone();
                        self.piece_freed(s, off);
                        self.free_harness(&frames);
                        self.sync();
                    }
                    continue;
                }
            };
            assert_eq!(r, Ok(()), "final release of {:?}", ar);
            self.release_area(s);
            self.sync();
        }
        if let Some(user) = &self.user {
            user.unmap_and_free(World::va(USER_BASE), SLOTS * SLOT_PAGES * PAGE)
                .expect("user unmap");
        }
        let users: Vec<u64> = self.m.user.values().copied().collect();
        self.m.user.clear();
        for pa in users {
            self.m.drop_user(pa);
        }
        self.vm.purge_vmap_area_lazy();
        self.sync();
        self.vm.vm_unmap_aliases();
        self.sync();
        self.tlb_due = true;
        assert!(
            self.m.areas.is_empty() && self.m.blocks.is_empty(),
            "areas left"
        );
        assert!(self.m.lazy.is_empty(), "lazy areas left");
        assert!(
            self.m.mem.is_empty(),
            "frames left in the model: {}",
            self.m.mem.len()
        );
        self.check();
        let st = self.vm.kva().stats();
        assert_eq!(
            (st.used, st.pending, st.free),
            (0, 0, st.total),
            "VA not all back"
        );
        assert_eq!(st.total, KVA_END - KVA_START);
        assert!(self.vm.vmallocinfo().is_empty());
        let tlb = self.vm.tlb_model().expect("model TLB");
        assert!(
            !tlb.holds_any(World::va(KVA_START), World::va(KVA_END)),
            "a CPU still caches a vmalloc translation after the final purge"
        );
        drop(self.user.take());
        let gib = 1u64 << 30;
        self.vm
            .kernel_space()
            .clean_up(World::va(KVA_START & !(gib - 1)), gib)
            .expect("clean_up");
        let fst = self.frames.stats();
        assert_eq!(
            fst.used, self.baseline_used,
            "frames not all back after the final purge and clean_up: {fst:?}"
        );
        assert_eq!(fst.free, fst.total - fst.used);
    }
}
