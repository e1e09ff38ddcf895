//! The releasing and accessing operations of the `alloc_free` target: `vfree`,
//! `vfree_atomic`, `vunmap`, `iounmap`, `free_vm_area`, `vm_unmap_ram`, the purges,
//! `vread` / `vwrite`, `find_vm_area`, `vmallocinfo` / `stats`, `remap_vmalloc_range` and the
//! user mappings it makes.
//!
//! A release must answer exactly what the model says (`Ok`, or `NotStartOfArea` /
//! `DoubleFree` / `NotAllocated` / `WrongKind` / `WrongCount` with their fields); a successful
//! one moves the area to the model's lazy set (its VA is not free until a purge) and drops
//! the frames' references. Reads must return what was written (unknown bytes of a fresh
//! `vmalloc` excepted), holes read as zeros, a range meeting no area returns 0 and leaves the
//! buffer alone.

use pagetable::{PhysAddr, VirtAddr};
use vmalloc::{AreaInfo, VmArea, VmFlags, VmallocError};

use super::model::{BLOCK_BYTES, Expect, Kind, PAGE};
use super::{Op, SLOT_PAGES, SLOTS, Target, USER_BASE, World};

/// Fill pattern of a write.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(13)) ^ (i >> 8) as u8)
        .collect()
}

impl World {
    /// Dispatch the non-allocating operations.
    pub(super) fn apply_release(&mut self, op: &Op) {
        let step = self.step;
        match *op {
            Op::Vfree(t) => {
                let a = self.addr_for(t, |_, f| f.contains(VmFlags::ALLOC));
                let want = if a == 0 {
                    Ok(())
                } else {
                    self.m
                        .expect_release(a, VmFlags::ALLOC, |f| f.contains(VmFlags::ALLOC))
                };
                let got = self.vm.vfree(World::va(a));
                self.released_as(a, want, got, "vfree");
            }
            Op::VfreeAtomic(t) => {
                let a = self.addr_for(t, |_, f| f.contains(VmFlags::ALLOC));
                self.vm.vfree_atomic(World::va(a));
                let ran = self.vm.kva().drain_deferred();
                if a == 0 {
                    assert_eq!(ran, 0, "step {step}: vfree_atomic(NULL) queued something");
                    return;
                }
                assert_eq!(ran, 1, "step {step}: deferred frees run");
                let want = self
                    .m
                    .expect_release(a, VmFlags::ALLOC, |f| f.contains(VmFlags::ALLOC));
                if want.is_ok() {
                    self.release_area(a);
                } else {
                    self.m.deferred_errors += 1;
                }
                assert_eq!(self.vm.stats().deferred_errors, self.m.deferred_errors);
            }
            Op::Vunmap(t) => {
                let a = self.addr_for(t, |_, f| f.contains(VmFlags::MAP));
                let want = if a == 0 {
                    Ok(())
                } else {
                    self.m
                        .expect_release(a, VmFlags::MAP, |f| f.contains(VmFlags::MAP))
                };
                let got = self.vm.vunmap(World::va(a));
                self.released_as(a, want, got, "vunmap");
            }
            Op::Iounmap(t) => {
                let a = self.addr_for(t, |_, f| f.contains(VmFlags::IOREMAP));
                let s = a & !(PAGE - 1);
                let want = if a == 0 {
                    Ok(())
                } else {
                    self.m
                        .expect_release(s, VmFlags::IOREMAP, |f| f.contains(VmFlags::IOREMAP))
                };
                let got = self.vm.iounmap(World::va(a));
                self.released_as(s, want, got, "iounmap");
            }
            Op::FreeVmArea(t) => {
                let a = self.addr_for(t, |_, f| !f.intersects(VmFlags::ALLOC | VmFlags::MAP_RAM));
                let area = VmArea {
                    start: a,
                    end: a + PAGE,
                    info: AreaInfo::new(VmFlags::empty()),
                };
                let want = self.m.expect_release(a, VmFlags::empty(), |f| {
                    !f.intersects(VmFlags::ALLOC | VmFlags::MAP_RAM)
                });
                let got = self.vm.free_vm_area(&area);
                if a == 0 {
                    assert_eq!(got, Err(VmallocError::NotAllocated { addr: 0 }));
                    return;
                }
                self.released_as(a, want, got, "free_vm_area");
            }
            Op::UnmapRam { at, count } => self.unmap_ram(at, count),
            Op::Purge { full } => self.purge(full),
            Op::UnmapAliases => {
                self.vm.vm_unmap_aliases();
                self.sync();
                self.after_full_purge();
                let tlb = self.vm.tlb_model().expect("model TLB");
                for (&b, blk) in &self.m.blocks {
                    for (&off, p) in blk.pieces.iter().filter(|(_, p)| !p.live) {
                        let s = b + u64::from(off) * PAGE;
                        let e = s + u64::from(p.pages) * PAGE;
                        assert!(
                            !tlb.holds_any(World::va(s), World::va(e)),
                            "step {step}: stale alias of a freed vm_map_ram piece at {s:#x}"
                        );
                    }
                }
            }
            Op::Vread { at, off, len } => self.vread(at, off, len),
            Op::Vwrite { at, off, len, seed } => self.vwrite(at, off, len, seed),
            Op::FindVmArea(t) => {
                let a = self.addr(t);
                let got = self.vm.find_vm_area(World::va(a)).map(|v| {
                    (
                        v.start,
                        v.end,
                        v.info.flags,
                        v.info.nr_pages,
                        v.info.phys_addr,
                    )
                });
                let want = self
                    .m
                    .containing(a)
                    .filter(|ar| !ar.flags.contains(VmFlags::MAP_RAM))
                    .map(|ar| (ar.start, ar.end, ar.flags, ar.nr_pages, ar.phys));
                assert_eq!(got, want, "step {step}: find_vm_area({a:#x})");
            }
            Op::Info => self.info(),
            Op::Remap {
                at,
                slot,
                pages,
                pgoff,
            } => self.remap(at, slot, pages, pgoff),
            Op::UserUnmap(slot) => {
                let u = USER_BASE + (u64::from(slot) % SLOTS) * SLOT_PAGES * PAGE;
                // Without a user space nothing was ever remapped: nothing to unmap.
                let Some(user) = self.user.as_ref() else {
                    return;
                };
                // The user range is never accessed through the TLB model (only the page
                // tables are compared): no translation to shoot down.
                let _never_cached = user
                    .unmap_and_free(World::va(u), SLOT_PAGES * PAGE)
                    .expect("user unmap");
                let gone: Vec<(u64, u64)> = self
                    .m
                    .user
                    .range(u..u + SLOT_PAGES * PAGE)
                    .map(|(&v, &p)| (v, p))
                    .collect();
                for (v, pa) in gone {
                    self.m.user.remove(&v);
                    self.m.drop_user(pa);
                }
            }
            Op::UserWrite { slot, page, seed } => {
                let u = USER_BASE
                    + (u64::from(slot) % SLOTS) * SLOT_PAGES * PAGE
                    + (u64::from(page) % SLOT_PAGES) * PAGE;
                let t = self
                    .user
                    .as_ref()
                    .and_then(|user| user.translate(World::va(u)))
                    .map(|t| t.pa.as_u64());
                assert_eq!(
                    t,
                    self.m.user.get(&u).copied(),
                    "step {step}: user page {u:#x}"
                );
                if let Some(pa) = t {
                    let off = (u64::from(seed) * 64) % (PAGE - 32);
                    let data = pattern(seed, 32);
                    self.frames
                        .arena()
                        .write(PhysAddr::new_truncate(pa + off), &data)
                        .expect("user write");
                    let f = self.m.mem.get_mut(&pa).expect("user frame known");
                    f.content.write(off as usize, &data);
                }
            }
            _ => unreachable!("allocating operations are dispatched in ops.rs"),
        }
    }

    /// Check a release's answer and, on success, release the model's area at `a`.
    fn released_as(&mut self, a: u64, want: Expect, got: Result<(), VmallocError>, what: &str) {
        assert_eq!(got, want, "step {}: {what}({a:#x})", self.step);
        if got.is_ok() && a != 0 {
            self.release_area(a);
        }
    }

    /// The model's side of a successful release of the area starting at `a`.
    pub fn release_area(&mut self, a: u64) {
        let area = self.m.remove_area(a).expect("released area in the model");
        self.touched.push(a);
        let space = self.vm.kernel_space();
        for p in [
            area.start,
            area.usable_end().saturating_sub(PAGE).max(area.start),
        ] {
            assert!(
                space.translate(World::va(p)).is_none(),
                "step {}: released area still maps {p:#x}",
                self.step
            );
        }
        match area.kind {
            Kind::Vmalloc { frames, .. } => {
                for pa in frames {
                    self.m.drop_owner(pa);
                }
            }
            Kind::Vmap { frames, .. } | Kind::MapRamLarge { frames, .. } => {
                self.free_harness(&frames)
            }
            Kind::Block => panic!("a vmap block released as an area"),
            Kind::Ioremap { .. } | Kind::Reserved => {}
        }
        self.m.add_lazy(area.start, area.end);
        self.handles
            .retain(|h| h.addr < area.start || h.addr >= area.end);
        self.released(a);
    }

    fn unmap_ram(&mut self, at: Target, count: u8) {
        let step = self.step;
        let a = self.addr_for(at, |h, _| h.count > 0);
        let count = match count {
            c if c % 4 == 0 => usize::from(c >> 2) % 101,
            _ => self
                .handles
                .iter()
                .find(|h| h.addr == a && h.count > 0)
                .map_or(1, |h| h.count),
        };
        let want = if count == 0 {
            Err(VmallocError::InvalidSize { size: 0 })
        } else if !a.is_multiple_of(PAGE) {
            Err(VmallocError::Misaligned {
                addr: a,
                align: PAGE,
            })
        } else {
            self.m.expect_unmap_ram(a, count)
        };
        let got = self.vm.vm_unmap_ram(World::va(a), count);
        assert_eq!(got, want, "step {step}: vm_unmap_ram({a:#x}, {count})");
        if got.is_err() {
            return;
        }
        if count > 64 {
            self.release_area(a);
            return;
        }
        let b = a & !(BLOCK_BYTES - 1);
        let off = ((a - b) / PAGE) as u32;
        let frames = self.m.blocks[&b].pieces[&off].frames.clone();
        self.piece_freed(b, off);
        self.free_harness(&frames);
        assert!(self.vm.kernel_space().translate(World::va(a)).is_none());
        self.released(a);
    }

    fn purge(&mut self, full: bool) {
        let step = self.step;
        let retiring: Vec<u64> = if full {
            self.m
                .blocks
                .iter()
                .filter(|(_, b)| b.fragmented())
                .map(|(&s, _)| s)
                .collect()
        } else {
            Vec::new()
        };
        let mut lazy: Vec<(u64, u64)> = self.m.lazy.iter().map(|(&s, &e)| (s, e)).collect();
        lazy.extend(retiring.iter().map(|&b| (b, b + BLOCK_BYTES)));
        let purges_before = self.purges_seen;
        let report = if full {
            self.vm.purge_vmap_area_lazy()
        } else {
            self.vm.kva().purge()
        };
        self.sync();
        let purges = self.purges_seen - purges_before;
        let pages: u64 = lazy.iter().map(|&(s, e)| (e - s) / PAGE).sum();
        let union = lazy
            .iter()
            .map(|&(s, _)| s)
            .min()
            .zip(lazy.iter().map(|&(_, e)| e).max());
        let got = (report.areas, report.pages as u64, report.flushed);
        if lazy.is_empty() {
            assert_eq!(
                (got, purges),
                ((0, 0, None), 0),
                "step {step}: purge of nothing"
            );
        } else if purges == 1 && report.areas > 0 {
            // One purge took everything.
            assert_eq!(got, (lazy.len(), pages, union), "step {step}: purge report");
        } else {
            // Retiring a fragmented block may cross the (tiny) lazy threshold and purge
            // inline, before the final purge: the report covers the last purge only.
            assert!(purges >= 1, "step {step}: lazy areas but no purge");
            let (lo, hi) = union.expect("non-empty");
            assert!(
                report.areas <= lazy.len()
                    && report.pages as u64 <= pages
                    && report.flushed.is_none_or(|(s, e)| lo <= s && e <= hi),
                "step {step}: purge report {report:?} vs {} areas in [{lo:#x}, {hi:#x})",
                lazy.len()
            );
        }
        if full {
            self.after_full_purge();
        } else {
            assert!(
                self.m.lazy.is_empty(),
                "step {step}: lazy areas left after a purge"
            );
        }
    }

    /// After `purge_vmap_area_lazy` / `vm_unmap_aliases`: no fragmented block, nothing lazy.
    fn after_full_purge(&self) {
        assert!(
            self.m.blocks.values().all(|b| !b.fragmented()),
            "step {}: fragmented vmap blocks survived a full purge",
            self.step
        );
        assert!(
            self.m.lazy.is_empty(),
            "step {}: lazy areas left",
            self.step
        );
    }

    fn vread(&mut self, at: Target, off: u16, len: u16) {
        let step = self.step;
        let a = self.addr(at).wrapping_add(u64::from(off) % (2 * PAGE));
        let len = usize::from(len) % (3 * PAGE as usize);
        let mut buf = vec![0xa5u8; len];
        self.accessed.push((a, a.saturating_add(len as u64)));
        let n = self.vm.vread(VirtAddr::new_truncate(a), &mut buf);
        let want = if len > 0 && self.m.touches_area(a, len as u64) {
            len
        } else {
            0
        };
        assert_eq!(n, want, "step {step}: vread({a:#x}, {len}) returned {n}");
        if n == 0 {
            assert!(
                buf.iter().all(|&b| b == 0xa5),
                "step {step}: vread of nothing wrote"
            );
            return;
        }
        let mut p = a;
        let end = a + len as u64;
        while p < end {
            let pe = ((p / PAGE + 1) * PAGE).min(end);
            let got = &buf[(p - a) as usize..(pe - a) as usize];
            match self.m.page_src(p) {
                None => assert!(
                    got.iter().all(|&b| b == 0),
                    "step {step}: hole at {p:#x} does not read as zeros"
                ),
                Some((pa, _)) => {
                    let c = &self.m.mem[&pa].content;
                    for (i, &b) in got.iter().enumerate() {
                        let o = (p % PAGE) as usize + i;
                        if let Some(w) = c.get(o) {
                            assert_eq!(
                                b,
                                w,
                                "step {step}: byte {:#x} (frame {pa:#x}+{o:#x}) reads wrong",
                                p + i as u64
                            );
                        }
                    }
                }
            }
            p = pe;
        }
    }

    fn vwrite(&mut self, at: Target, off: u16, len: u16, seed: u8) {
        let step = self.step;
        let a = self.addr(at).wrapping_add(u64::from(off) % (2 * PAGE));
        let len = usize::from(len) % (3 * PAGE as usize);
        let data = pattern(seed, len);
        self.accessed.push((a, a.saturating_add(len as u64)));
        let n = self.vm.vwrite(VirtAddr::new_truncate(a), &data);
        let want = if len > 0 && self.m.touches_writable_area(a, len as u64) {
            len
        } else {
            0
        };
        assert_eq!(n, want, "step {step}: vwrite({a:#x}, {len}) returned {n}");
        if n == 0 {
            return;
        }
        let mut p = a;
        let end = a + len as u64;
        while p < end {
            let pe = ((p / PAGE + 1) * PAGE).min(end);
            let hole = self
                .m
                .containing(p)
                .is_some_and(|ar| ar.flags.contains(VmFlags::IOREMAP));
            // A read-only page is written too, through its frame (Linux 3.7's vwrite writes
            // through vmalloc_to_page and a kernel mapping of the page).
            if let (false, Some((pa, _))) = (hole, self.m.page_src(p)) {
                let bytes = &data[(p - a) as usize..(pe - a) as usize];
                let f = self.m.mem.get_mut(&pa).expect("mapped frame known");
                f.content.write((p % PAGE) as usize, bytes);
            }
            p = pe;
        }
    }

    fn info(&self) {
        let step = self.step;
        let text = self.vm.vmallocinfo();
        let all: Vec<&str> = text.lines().collect();
        // Linux 6.x: the live areas in address order, then the lazily freed areas not purged
        // yet, in no particular order, as `... unpurged vm_area`.
        let (lines, unpurged) = all.split_at(self.m.areas.len().min(all.len()));
        assert_eq!(
            (lines.len(), unpurged.len()),
            (self.m.areas.len(), self.m.lazy.len()),
            "step {step}: vmallocinfo lines"
        );
        let mut seen: Vec<(u64, u64)> = unpurged
            .iter()
            .map(|l| {
                assert!(l.ends_with(" unpurged vm_area"), "step {step}: {l}");
                let range = l.split_whitespace().next().unwrap_or_default();
                let (s, e) = range.split_once('-').unwrap_or_default();
                let hex = |x: &str| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok();
                (hex(s).unwrap_or(0), hex(e).unwrap_or(0))
            })
            .collect();
        seen.sort_unstable();
        let want: Vec<(u64, u64)> = self.m.lazy.iter().map(|(&s, &e)| (s, e)).collect();
        assert_eq!(seen, want, "step {step}: unpurged vm_area lines");
        for (line, ar) in lines.iter().zip(self.m.areas.values()) {
            let head = format!("0x{:016x}-0x{:016x}", ar.start, ar.end);
            assert!(line.starts_with(&head), "step {step}: {line} vs {head}");
        }
        let st = self.vm.stats();
        let bytes: u64 = self.m.areas.values().map(|a| a.end - a.start).sum();
        let vm_pages: usize = self
            .m
            .areas
            .values()
            .filter(|a| a.flags.contains(VmFlags::ALLOC))
            .map(|a| a.nr_pages)
            .sum();
        assert_eq!(
            (
                st.nr_areas,
                st.area_bytes,
                st.vmap_blocks,
                st.lazy_pages,
                st.deferred_errors,
                st.vmalloc_used_kb
            ),
            (
                self.m.areas.len(),
                bytes,
                self.m.blocks.len(),
                self.m.lazy_pages(),
                self.m.deferred_errors,
                vm_pages as u64 * 4
            ),
            "step {step}: stats"
        );
    }

    fn remap(&mut self, at: Target, slot: u8, pages: u8, pgoff: u8) {
        let step = self.step;
        let k = self.addr_for(at, |_, f| f.contains(VmFlags::USERMAP));
        let u = USER_BASE + (u64::from(slot) % SLOTS) * SLOT_PAGES * PAGE;
        let len = (u64::from(pages) % 17) * PAGE;
        let pgoff = u64::from(pgoff) % 8;
        let mut frames = Vec::new();
        let want: Result<(), VmallocError> = (|| {
            if !k.is_multiple_of(PAGE) {
                return Err(VmallocError::Misaligned {
                    addr: k,
                    align: PAGE,
                });
            }
            if len == 0 {
                return Err(VmallocError::InvalidSize { size: 0 });
            }
            let ar = self
                .m
                .containing(k)
                .ok_or(VmallocError::NotAllocated { addr: k })?;
            if !ar.flags.contains(VmFlags::USERMAP) {
                return Err(VmallocError::NotUserMappable { addr: ar.start });
            }
            let size = ar.usable_end() - ar.start;
            let offset = pgoff * PAGE + (k - ar.start);
            if offset + len > size {
                return Err(VmallocError::RemapTooLarge {
                    addr: ar.start,
                    offset,
                    len,
                    size,
                });
            }
            for p in (ar.start + offset..ar.start + offset + len).step_by(PAGE as usize) {
                match self.m.page_src(p) {
                    Some((pa, _)) => frames.push(pa),
                    None => {
                        return Err(VmallocError::Map(pagetable::MapError::NotMapped {
                            va: World::va(p),
                        }));
                    }
                }
            }
            if let Some((&v, _)) = self.m.user.range(u..u + len).next() {
                return Err(VmallocError::Map(pagetable::MapError::AlreadyMapped {
                    va: World::va(v),
                }));
            }
            Ok(())
        })();
        if !self.ensure_user_space() {
            return;
        }
        let free_before = self.frames.stats().free;
        self.arm();
        let user = self.user.as_ref().expect("user space");
        let got = self
            .vm
            .remap_vmalloc_range(user, World::va(u), len, World::va(k), pgoff);
        self.disarm();
        match (&want, &got) {
            (Ok(()), Err(VmallocError::Map(pagetable::MapError::OutOfFrames))) => {
                assert!(
                    self.short(free_before, 4),
                    "step {step}: remap out of frames"
                );
                return;
            }
            _ => assert_eq!(got, want, "step {step}: remap({k:#x} -> {u:#x}, {len:#x})"),
        }
        if got.is_err() {
            return;
        }
        for (i, &pa) in frames.iter().enumerate() {
            let v = u + i as u64 * PAGE;
            let t = user.translate(World::va(v)).expect("remapped page");
            assert_eq!(t.pa.as_u64(), pa, "step {step}: user page {v:#x}");
            self.m.user.insert(v, pa);
            self.m.mem.get_mut(&pa).expect("known frame").user += 1;
        }
    }
}
