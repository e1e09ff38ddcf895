//! The `alloc_free` target's per-step checks, the model's catching up with what the
//! implementation may do on its own (purges, notifier-retired vmap blocks), and the final
//! teardown.
//!
//! After every step ([`World::check`]), in time independent of the number of live areas in
//! the allocator and in the model:
//! * the KVA counters (`used`, `nr_busy`, `pending`, `lazy_pages`, `free`) equal the model's
//!   (its running [`Totals`](super::model::Totals), kept by the methods that change areas,
//!   lazy ranges and pieces, instead of sums over the model after every step); no merge
//!   error, no foreign token;
//! * every area the step created, released or retired reads back from `Kva::find` exactly
//!   as the model has it (start, end, flags, pages, physical address), or is gone;
//! * the kernel space maps exactly the model's number of pages (`rss`), the user space
//!   likewise;
//! * no CPU caches a translation of free VA, of a guard page or of a reservation in the
//!   ranges the step accessed (`vread` / `vwrite`: the only way a translation gets cached),
//!   nor of any range a purge freed (checked in [`World::sync`]);
//! * and each operation checks its own result, error and frames (see `ops` / `release`).
//!
//! Every [`full_every`](super::full_every) steps (16; 1 under `KVMALLOC_FUZZ_TRACE` or
//! `KVMALLOC_FUZZ_FULL`) and at the end, the full check ([`World::check_full`]) as well:
//! * `Kva::check_invariants` passes (every tree, list and byte count of the allocator);
//! * the live areas (`for_each_busy`) are exactly the model's, in order (so they never
//!   overlap);
//! * every frame the model knows has exactly the references the model counts;
//! * no CPU caches a translation of free VA, of a guard page or of a reservation anywhere;
//! * the model's running totals equal sums over it (a harness self-check).
//!
//! The TLB questions go through [`World::first_cached`]: `TlbModel::holds_any` scans every
//! CPU's whole cache, so the runs of forbidden pages are asked as spans, and only a span
//! whose hull some CPU caches is split (the same answer as one call per run, for fewer calls).
//!
//! A difference the per-step check does not see is thus reported at most 15 steps late;
//! replaying the input with `KVMALLOC_FUZZ_FULL=1` names the exact step.
//!
//! At the end ([`World::finish`]): everything is released through the API, the user
//! mappings dropped, a full purge and `vm_unmap_aliases` run; then the KVA range is entirely
//! free, nothing is pending or cached by any TLB, and after freeing the empty page tables the
//! frame allocator is back to the frames it used right after construction.

use pagetable::VirtAddr;
use vmalloc::VmArea;

use super::model::{KVA_END, KVA_START, Kind, PAGE};
use super::{SLOT_PAGES, SLOTS, USER_BASE, World};

/// What the per-step and full checks compare of an area.
type AreaKey = (u64, u64, vmalloc::VmFlags, usize, Option<u64>);

/// The compared fields of an allocator area.
fn area_key(a: &VmArea) -> AreaKey {
    (
        a.start,
        a.end,
        a.info.flags,
        a.info.nr_pages,
        a.info.phys_addr,
    )
}

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
                    self.touched.push(b);
                    self.m.blocks.remove(&b);
                    self.m.remove_area(b);
                    for q in &mut self.m.queues {
                        q.retain(|&x| x != b);
                    }
                    self.m.add_lazy(b, b + super::model::BLOCK_BYTES);
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
            // Runs of adjacent purged ranges.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for (&s, &e) in &self.m.lazy {
                match runs.last_mut() {
                    Some(r) if r.1 == s => r.1 = e,
                    _ => runs.push((s, e)),
                }
            }
            if let Some((s, e)) = self.first_cached(&runs) {
                panic!("step {step}: purged range [{s:#x}, {e:#x}) still cached by a CPU");
            }
            self.m.clear_lazy();
            self.purges_seen = purges;
        }
    }

    /// The per-step check (see the module documentation), and the full one when due.
    pub fn check(&self) {
        let step = self.step;
        let kva = self.vm.kva();
        let st = kva.stats();
        let t = self.m.totals;
        let (used, pending) = (t.used, t.pending);
        assert_eq!(
            (st.used, st.nr_busy, st.pending, st.lazy_pages),
            (used, self.m.areas.len(), pending, (pending / PAGE) as usize),
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
        for &a in &self.touched {
            let got = kva.find(VirtAddr::new_truncate(a)).map(|v| area_key(&v));
            let want = self
                .m
                .containing(a)
                .map(|a| (a.start, a.end, a.flags, a.nr_pages, a.phys));
            assert_eq!(got, want, "step {step}: the area at {a:#x}");
        }
        assert_eq!(
            self.vm.kernel_space().rss(),
            t.rss,
            "step {step}: kernel pages mapped"
        );
        if let Some(u) = &self.user {
            assert_eq!(u.rss(), self.m.user.len(), "step {step}: user pages mapped");
        }
        let fst = self.frames.stats();
        assert!(
            fst.used
                >= self.baseline_used + u64::from(self.user.is_some()) + self.m.mem.len() as u64,
            "step {step}: fewer frames used ({}) than the model holds",
            fst.used
        );
        for &(s, e) in &self.accessed {
            self.check_tlb_pages(s, e);
        }
        if self.full_due || self.step % self.full_every == self.full_every - 1 {
            self.check_full();
        }
    }

    /// The full check (see the module documentation).
    pub fn check_full(&self) {
        let step = self.step;
        let kva = self.vm.kva();
        if let Err(e) = kva.check_invariants() {
            panic!("step {step}: Kva::check_invariants: {e}");
        }
        assert_eq!(
            (self.m.totals, self.m.totals.pending / PAGE),
            (self.m.recount(), self.m.lazy_pages() as u64),
            "step {step}: the model's running totals (a harness bug)"
        );
        let mut seen = Vec::with_capacity(self.m.areas.len());
        kva.for_each_busy(|a| seen.push(area_key(a)));
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
        // Reference counts change only in the operations that map, unmap or remap frames, and
        // each of those checks the frames it touched; all of them are re-checked here.
        for (&pa, f) in &self.m.mem {
            let frame =
                pagetable::PhysFrame::containing_address(pagetable::PhysAddr::new_truncate(pa));
            assert_eq!(
                self.frames.refcount(frame),
                u32::from(f.owner) + f.user,
                "step {step}: references of frame {pa:#x}"
            );
        }
        self.check_tlb();
    }

    /// No CPU caches a translation of a page of `[s, e)` that is free VA, a guard page or
    /// part of a reservation: the pages are classified one by one (`[s, e)` is a few pages)
    /// and the maximal runs of forbidden ones asked of the TLB ([`World::first_cached`]).
    fn check_tlb_pages(&self, s: u64, e: u64) {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut p = s & !(PAGE - 1);
        while p < e && p < KVA_END {
            let forbidden = match self.m.containing(p) {
                None => p >= KVA_START && !self.m.in_lazy(p),
                Some(a) => match a.kind {
                    Kind::Reserved => true,
                    Kind::Block => false,
                    _ => p >= a.usable_end(),
                },
            };
            if forbidden {
                match runs.last_mut() {
                    Some(r) if r.1 == p => r.1 = p + PAGE,
                    _ => runs.push((p, p + PAGE)),
                }
            }
            p += PAGE;
        }
        if let Some((s, e)) = self.first_cached(&runs) {
            panic!(
                "step {}: [{s:#x}, {e:#x}) (free VA, a guard page or a reservation) cached by a CPU",
                self.step
            );
        }
    }

    /// No CPU caches a translation of free VA, of a guard page or of a reservation anywhere
    /// in the KVA range: the maximal runs of such pages (a guard page and the free gap after
    /// it are one run) asked of the TLB through [`World::first_cached`].
    pub fn check_tlb(&self) {
        let step = self.step;
        let mut runs: Vec<(u64, u64)> = Vec::new();
        let mut forbid = |s: u64, e: u64| {
            if s >= e {
                return;
            }
            match runs.last_mut() {
                Some(r) if r.1 == s => r.1 = e,
                _ => runs.push((s, e)),
            }
        };
        let mut lazy = self.m.lazy.iter().map(|(&s, &e)| (s, e)).peekable();
        let mut pos = KVA_START;
        for a in self.m.areas.values() {
            // Lazy ranges below this area: allowed (still mapped until purged).
            while let Some(&(ls, le)) = lazy.peek().filter(|&&(ls, _)| ls < a.start) {
                forbid(pos, ls);
                pos = le;
                lazy.next();
            }
            forbid(pos, a.start);
            match a.kind {
                Kind::Reserved => forbid(a.start, a.end),
                Kind::Block => {}
                _ => forbid(a.usable_end(), a.end),
            }
            pos = a.end;
        }
        for (ls, le) in lazy {
            forbid(pos, ls);
            pos = le;
        }
        forbid(pos, KVA_END);
        if let Some((s, e)) = self.first_cached(&runs) {
            panic!(
                "step {step}: [{s:#x}, {e:#x}) (free VA, guard pages or a reservation) cached by a CPU"
            );
        }
    }

    /// The first of the ascending, disjoint `runs` of which some CPU caches a translation.
    /// Exactly what one `holds_any` per run answers, for fewer calls (each scans every CPU's
    /// whole cache): a span of runs whose hull no CPU caches is clean as a whole, and only a
    /// span whose hull is cached (a forbidden page, or an allowed one between runs) is split.
    pub fn first_cached(&self, runs: &[(u64, u64)]) -> Option<(u64, u64)> {
        let tlb = self.vm.tlb_model().expect("model TLB");
        let (first, last) = (runs.first()?, runs.last()?);
        if !tlb.holds_any(World::va(first.0), World::va(last.1)) {
            return None;
        }
        if runs.len() == 1 {
            return Some(*first);
        }
        let (lo, hi) = runs.split_at(runs.len() / 2);
        self.first_cached(lo).or_else(|| self.first_cached(hi))
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
            // Never accessed through the TLB model: no translation to shoot down.
            let _never_cached = user
                .unmap_and_free(World::va(USER_BASE), SLOTS * SLOT_PAGES * PAGE)
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
        self.full_due = true;
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
