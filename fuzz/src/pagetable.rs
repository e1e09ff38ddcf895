//! The `pagetable` target: two [`AddressSpace`]s over one small frame allocator, driven by
//! map / map_contiguous / unmap / protect / populate / clean_up / copy_range / write faults /
//! CPU writes / frame exhaustion, against a `BTreeMap` model (page -> frame, flags, leaf).
//!
//! After every step, in time proportional to what the step touched (not to the models): the
//! pages the step worked on (its range in the space or spaces it names, widened to whole
//! leaves) read back through `mappings` exactly as the model has them; both spaces' `rss`
//! equal the models' sizes and their highest mapped page translates as modelled; every
//! frame whose model entries or tag the step changed has exactly the references the models
//! count (none once unmapped everywhere) and holds the tag the model says (so a COW break
//! that copies the wrong frame or a write that lands in a shared frame is seen); a failed
//! operation changed nothing, not even the frame allocator's `used` count (except the empty
//! tables a map that met an already mapped page leaves linked, by design: see
//! `check_failed_map`). Every 16 steps and at the end, the full check: both whole windows
//! against the models, and every mapped frame's references and tag (so a change outside a
//! step's range that keeps `rss` is reported at most 15 steps late, and one undone within
//! those steps is missed; replaying with `KVMALLOC_FUZZ_FULL=1` or `KVMALLOC_FUZZ_TRACE=1`
//! runs the full check after every step and names the step). At the end everything is unmapped, the spaces
//! dropped, and the allocator must be back to zero frames used.
//!
//! How it is fast: the per-step check above replaced one that walked both whole windows and
//! every mapped frame after every step (52 executions/s with ASan from the seeds; 3x fewer
//! CPU seconds per input now); the frames' user counts are kept with the models instead of
//! rescanning both models per unmapped frame and per COW fault; a `map_contiguous` reads
//! its own leaves only; a model is a slot per page and a bitmap (no `BTreeMap`); a space is
//! compared through `Mappings::fold` (no call per page). docs/FUZZING.md has the figures.
//!
//! The window is 2,048 pages straddling a 512 GiB boundary (tables at every level are shared
//! and split), the arena 512 frames (so tables, COW copies and maps run out of frames), and
//! device memory for `map_contiguous` lies outside the arena (no references, never COW).

use std::collections::HashMap;
use std::sync::Arc;

use arbitrary::Arbitrary;
use pagetable::{
    AddressSpace, FaultOutcome, FrameAllocator, MapError, PageTableFlags, PhysAddr, PhysArena,
    PhysFrame, VirtAddr, VmaKind, Zone, copy_range, handle_write_fault,
};

const KB4: u64 = 4096;
const PAGES: u64 = 2048;
/// Window start: 1,024 pages below the 512 GiB boundary.
const BASE: u64 = 0x80_0000_0000 - 1024 * KB4;
const HUGE: u64 = 512;
/// Physical base of the arena and its size in frames.
const ARENA_BASE: u64 = 0x40_0000;
const ARENA_FRAMES: u64 = 512;
/// Device memory (outside the arena) mapped by `map_contiguous`.
const DEVICE: u64 = 0x100_0000_0000;

const FLAG_CHOICES: [PageTableFlags; 5] = [
    PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE),
    PageTableFlags::PRESENT,
    PageTableFlags::PRESENT
        .union(PageTableFlags::WRITABLE)
        .union(PageTableFlags::USER_ACCESSIBLE),
    PageTableFlags::PRESENT.union(PageTableFlags::NO_EXECUTE),
    PageTableFlags::PRESENT
        .union(PageTableFlags::WRITABLE)
        .union(PageTableFlags::GLOBAL),
];

/// Flags the comparison ignores: HUGE_PAGE is structural, A/D are hardware state.
const IGNORED: PageTableFlags = PageTableFlags::HUGE_PAGE
    .union(PageTableFlags::ACCESSED)
    .union(PageTableFlags::DIRTY);

mod model;
mod op;

use model::*;
pub use op::Op;
use op::count;

struct World {
    frames: Arc<FrameAllocator>,
    spaces: [AddressSpace; 2],
    models: [Model; 2],
    /// Tag (first 8 bytes) of every managed frame mapped somewhere.
    tags: FrameMap<u64>,
    /// Model entries mapping each managed frame (kept with every model change: see
    /// [`World::put`] / [`World::take`]; recounted by the full check).
    users: FrameMap<u32>,
    next_tag: u64,
    ballast: Vec<PhysFrame>,
    /// Pages `(space, lo, hi)` the current step may have changed (see [`World::check`]).
    dirty: Vec<(usize, u64, u64)>,
    /// Managed frames whose model entries or tag the current step changed.
    dirty_frames: Vec<u64>,
    /// Step counter.
    step: usize,
}

impl World {
    fn new() -> Self {
        // Huge pages (best effort): one page fault per input, not one per touched frame.
        let arena = PhysArena::new(pagetable::ArenaConfig {
            size: ARENA_FRAMES * KB4,
            base: PhysAddr::new_truncate(ARENA_BASE),
            backing: pagetable::Backing::Mmap { huge_pages: true },
        })
        .expect("arena");
        let frames = Arc::new(FrameAllocator::new(Arc::new(arena)));
        let spaces = [
            AddressSpace::new(Arc::clone(&frames)).expect("space"),
            AddressSpace::new(Arc::clone(&frames)).expect("space"),
        ];
        Self {
            frames,
            spaces,
            models: [Model::new(), Model::new()],
            tags: FrameMap::default(),
            users: FrameMap::default(),
            next_tag: 1,
            ballast: Vec::new(),
            dirty: Vec::new(),
            dirty_frames: Vec::new(),
            step: 0,
        }
    }

    fn used(&self) -> u64 {
        self.frames.stats().used
    }

    fn write_tag(&mut self, pa: u64) {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.frames
            .arena()
            .write(PhysAddr::new_truncate(pa), &tag.to_le_bytes())
            .expect("tag write");
        self.tags.insert(pa, tag);
        self.dirty_frames.push(pa);
    }

    /// Drop the model's knowledge of `pa` once no entry maps it any more.
    fn forget_if_unmapped(&mut self, pa: u64) {
        if !self.users.contains_key(&pa) {
            self.tags.remove(&pa);
        }
    }

    /// Set the model entry of page `p` of space `s` (counting the frames' users).
    fn put(&mut self, s: usize, p: u64, e: Entry) {
        if let Some(old) = self.models[s].insert(p, e) {
            self.unuse(old.pa);
        }
        if managed(e.pa) {
            *self.users.entry(e.pa).or_default() += 1;
            self.dirty_frames.push(e.pa);
        }
    }

    /// Remove the model entry of page `p` of space `s` (counting the frames' users).
    fn take(&mut self, s: usize, p: u64) -> Option<Entry> {
        let e = self.models[s].remove(&p)?;
        self.unuse(e.pa);
        Some(e)
    }

    fn unuse(&mut self, pa: u64) {
        if managed(pa) {
            let n = self.users.get_mut(&pa).expect("a mapped frame has users");
            *n -= 1;
            if *n == 0 {
                self.users.remove(&pa);
            }
            self.dirty_frames.push(pa);
        }
    }

    /// Mark pages `[page, page + n)` of space `s` as changed by this step.
    fn touch(&mut self, s: usize, page: u64, n: u64) {
        self.dirty.push((s, page, page + n));
    }

    /// The pages `op` may change (what the per-step check compares): its range in the
    /// space(s) it works on.
    fn mark_dirty(&mut self, op: &Op) {
        let range = |page: u16, n: u16| {
            let page = u64::from(page) % PAGES;
            (page, count(n).min(PAGES - page))
        };
        match *op {
            Op::Map { space, page, n, .. }
            | Op::Unmap { space, page, n, .. }
            | Op::Protect { space, page, n, .. }
            | Op::Populate { space, page, n }
            | Op::CleanUp { space, page, n } => {
                let (p, n) = range(page, n);
                self.touch(usize::from(space), p, n);
            }
            Op::MapContiguous {
                space,
                chunk,
                extra,
                ..
            } => {
                let extra = u64::from(extra) % 3;
                let page =
                    (u64::from(chunk) % (PAGES / HUGE)) * HUGE + if extra == 2 { 7 } else { 0 };
                let n = (HUGE * (1 + extra % 2) + if extra == 1 { 5 } else { 0 }).min(PAGES - page);
                self.touch(usize::from(space), page, n);
            }
            Op::Copy { page, n, .. } => {
                let (p, n) = range(page, n);
                self.touch(0, p, n);
                self.touch(1, p, n);
            }
            Op::Fault { space, page } | Op::Write { space, page } => {
                self.touch(usize::from(space), u64::from(page) % PAGES, 1);
            }
            Op::Ballast { .. } => {}
        }
    }

    fn apply(&mut self, op: &Op) {
        self.mark_dirty(op);
        let used_before = self.used();
        match *op {
            Op::Map {
                space,
                page,
                n,
                flags,
            } => {
                let s = usize::from(space);
                let page = u64::from(page) % PAGES;
                let n = count(n).min(PAGES - page);
                let flags = FLAG_CHOICES[usize::from(flags) % FLAG_CHOICES.len()];
                let mut frames = Vec::new();
                if self
                    .frames
                    .alloc_bulk(n as usize, Zone::Normal, &mut frames)
                    .is_err()
                {
                    assert!(frames.is_empty(), "alloc_bulk is all or nothing");
                    assert_eq!(self.used(), used_before, "failed alloc_bulk leaked");
                    return;
                }
                let r = self.spaces[s].map(va(page), &frames, flags);
                let first_busy = self.models[s].range(page..page + n).next().map(|(&p, _)| p);
                match (r, first_busy) {
                    (Ok(()), None) => {
                        for (i, f) in frames.iter().enumerate() {
                            let pa = f.start_address().as_u64();
                            let p = page + i as u64;
                            self.put(
                                s,
                                p,
                                Entry {
                                    pa,
                                    flags: (flags | PageTableFlags::PRESENT) - IGNORED,
                                    leaf: (p, 1),
                                },
                            );
                            self.write_tag(pa);
                        }
                    }
                    (Err(e), busy) => {
                        let conflict = match busy {
                            Some(_) => self.check_already_mapped(s, e, page, n),
                            None => {
                                assert_eq!(e, MapError::OutOfFrames, "map failed");
                                false
                            }
                        };
                        self.frames.free_bulk(&frames).expect("free our frames");
                        self.check_failed_map(conflict, used_before);
                    }
                    (Ok(()), Some(p)) => panic!("map over the mapped page {p} succeeded"),
                }
            }
            Op::MapContiguous {
                space,
                chunk,
                extra,
                huge,
                flags,
            } => {
                let s = usize::from(space);
                let extra = u64::from(extra) % 3;
                let page =
                    (u64::from(chunk) % (PAGES / HUGE)) * HUGE + if extra == 2 { 7 } else { 0 };
                let n = (HUGE * (1 + extra % 2) + if extra == 1 { 5 } else { 0 }).min(PAGES - page);
                let pa0 = DEVICE + page * KB4;
                let flags = FLAG_CHOICES[usize::from(flags) % FLAG_CHOICES.len()];
                let r = self.spaces[s].map_contiguous(
                    va(page),
                    PhysAddr::new_truncate(pa0),
                    n * KB4,
                    flags,
                    huge,
                );
                let first_busy = self.models[s].range(page..page + n).next().map(|(&p, _)| p);
                match (r, first_busy) {
                    (Ok(()), None) => {
                        // Leaf sizes are the implementation's choice (a leftover leaf table
                        // keeps a chunk at 4 KiB): learn them and check they are legal.
                        // The leaves must tile `[page, page + n)` exactly, in order (read
                        // leaf by leaf: no page map is built).
                        let leaves: Vec<(u64, u64)> = self.spaces[s]
                            .mappings(va(page), n * KB4)
                            .map(|m| ((m.va.as_u64() - BASE) / KB4, m.size / KB4))
                            .collect();
                        let mut next = page;
                        for leaf in leaves {
                            assert_eq!(leaf.0, next, "map_contiguous left page {next} unmapped");
                            if leaf.1 > 1 {
                                assert!(huge, "huge leaf without asking");
                                assert_eq!(leaf.1, HUGE);
                                assert!(leaf.0 >= page && leaf.0 + leaf.1 <= page + n);
                                assert_eq!(leaf.0 % HUGE, 0);
                            }
                            for p in leaf.0..leaf.0 + leaf.1 {
                                self.put(
                                    s,
                                    p,
                                    Entry {
                                        pa: pa0 + (p - page) * KB4,
                                        flags: (flags | PageTableFlags::PRESENT) - IGNORED,
                                        leaf,
                                    },
                                );
                            }
                            next = leaf.0 + leaf.1;
                        }
                        assert_eq!(next, page + n, "map_contiguous left page {next} unmapped");
                    }
                    (Err(e), busy) => {
                        let conflict = match busy {
                            Some(_) => self.check_already_mapped(s, e, page, n),
                            None => {
                                assert_eq!(e, MapError::OutOfFrames);
                                false
                            }
                        };
                        self.check_failed_map(conflict, used_before);
                    }
                    (Ok(()), Some(p)) => panic!("map_contiguous over mapped page {p}"),
                }
            }
            Op::Unmap {
                space,
                page,
                n,
                and_free,
            } => self.unmap(usize::from(space), page, n, and_free),
            Op::Protect {
                space,
                page,
                n,
                flags,
            } => {
                let s = usize::from(space);
                let page = u64::from(page) % PAGES;
                let n = count(n).min(PAGES - page);
                let flags = FLAG_CHOICES[usize::from(flags) % FLAG_CHOICES.len()];
                let r = self.spaces[s].protect(va(page), n * KB4, flags);
                if cuts_leaf(&self.models[s], page, n) {
                    assert!(matches!(r, Err(MapError::HugePageInTheWay { .. })), "{r:?}");
                } else {
                    let flush = r.expect("protect");
                    let mut touched = false;
                    for (_, e) in self.models[s].range_mut(page..page + n) {
                        e.flags = protected(e.flags, flags);
                        touched = true;
                    }
                    if !touched {
                        assert!(flush.is_empty(), "protect of a hole needs no flush");
                    }
                }
                assert_eq!(self.used(), used_before);
            }
            Op::Populate { space, page, n } => {
                let s = usize::from(space);
                let page = u64::from(page) % PAGES;
                let n = count(n).min(PAGES - page);
                let r = self.spaces[s].populate(va(page), n * KB4);
                let huge_inside = self.models[s]
                    .range(page..page + n)
                    .any(|(_, e)| e.leaf.1 > 1);
                match r {
                    Ok(()) => assert!(!huge_inside, "populate through a huge leaf"),
                    Err(MapError::HugePageInTheWay { .. }) => assert!(huge_inside),
                    Err(MapError::OutOfFrames) => {
                        assert_eq!(self.used(), used_before, "failed populate leaked")
                    }
                    Err(e) => panic!("populate: {e:?}"),
                }
            }
            Op::CleanUp { space, page, n } => {
                let s = usize::from(space);
                let page = u64::from(page) % PAGES;
                let n = count(n).min(PAGES - page);
                let freed = self.spaces[s]
                    .clean_up(va(page), n * KB4)
                    .expect("clean_up");
                assert_eq!(self.used(), used_before - freed as u64, "clean_up count");
            }
            Op::Copy {
                page,
                n,
                shared,
                to_b,
            } => self.copy(page, n, shared, to_b),
            Op::Fault { space, page } => {
                let s = usize::from(space);
                let page = u64::from(page) % PAGES;
                self.fault(s, page);
            }
            Op::Write { space, page } => {
                let s = usize::from(space);
                let page = u64::from(page) % PAGES;
                let Some(e) = self.models[s].get(&page).copied() else {
                    assert!(self.spaces[s].translate(va(page)).is_none());
                    return;
                };
                if e.flags.contains(PageTableFlags::COW) && !self.fault(s, page) {
                    return;
                }
                let e = self.models[s][&page];
                if e.flags.contains(PageTableFlags::WRITABLE) && managed(e.pa) {
                    self.write_tag(e.pa);
                }
            }
            Op::Ballast { take, leave } => {
                if take {
                    let st = self.frames.stats();
                    let want = (st.total - st.used).saturating_sub(u64::from(leave % 16));
                    for _ in 0..want {
                        match self.frames.alloc(Zone::Normal) {
                            Ok(f) => self.ballast.push(f),
                            Err(_) => break,
                        }
                    }
                } else {
                    let b = std::mem::take(&mut self.ballast);
                    self.frames.free_bulk(&b).expect("free ballast");
                }
            }
        }
    }

    /// `AlreadyMapped` names a page of `[page, page + n)` that is mapped. Not necessarily the
    /// lowest: the plan walk reports a huge leaf anywhere in the range before the build walk
    /// meets a lower 4 KiB page ("the first mapped address found").
    ///
    /// Out of frames is also a right answer: the plan walk allocates every missing table
    /// before the build walk can meet the mapped page, so when the tables cannot be had the
    /// map fails with `OutOfFrames`, having changed nothing. Returns whether the conflict was
    /// the reported error.
    fn check_already_mapped(&self, s: usize, e: MapError, page: u64, n: u64) -> bool {
        if e == MapError::OutOfFrames {
            return false;
        }
        let MapError::AlreadyMapped { va: v } = e else {
            panic!("map over mapped pages failed with {e:?}");
        };
        let p = (v.as_u64().wrapping_sub(BASE)) / KB4;
        assert!(
            (page..page + n).contains(&p) && self.models[s].contains_key(&p),
            "AlreadyMapped names {v:?} (page {p}), not a mapped page of [{page}, {})",
            page + n
        );
        true
    }

    /// Frames after a failed map. Out of frames: nothing changed. Already mapped (found by
    /// the build walk, after it installed the tables below the conflict): the leaves are
    /// cleared and the installed tables whose span lies inside the range freed, but tables
    /// reaching outside it stay linked by design (a neighbouring mapper may use them; the
    /// tree frees them on `clean_up` and drop, which the final check proves): at most one
    /// per table level on each side.
    fn check_failed_map(&self, already_mapped: bool, used_before: u64) {
        let used = self.used();
        if already_mapped {
            assert!(
                used >= used_before && used - used_before <= 6,
                "failed map: {used} frames used, {used_before} before"
            );
        } else {
            assert_eq!(used, used_before, "failed map leaked frames");
        }
    }

    fn unmap(&mut self, s: usize, page: u16, n: u16, and_free: bool) {
        let used_before = self.used();
        let page = u64::from(page) % PAGES;
        let n = count(n).min(PAGES - page);
        let mut got = Vec::new();
        let r = if and_free {
            self.spaces[s].unmap_and_free(va(page), n * KB4)
        } else {
            self.spaces[s].unmap(va(page), n * KB4, |pa, size| got.push((pa.as_u64(), size)))
        };
        if cuts_leaf(&self.models[s], page, n) {
            assert!(matches!(r, Err(MapError::HugePageInTheWay { .. })), "{r:?}");
            assert_eq!(self.used(), used_before);
            return;
        }
        let flush = r.expect("unmap");
        let pages: Vec<u64> = self.models[s]
            .range(page..page + n)
            .map(|(&p, _)| p)
            .collect();
        let mut want = Vec::new();
        for p in &pages {
            let e = self.take(s, *p).expect("model page");
            if e.leaf.0 == *p {
                want.push((e.pa, e.leaf.1 * KB4));
            }
        }
        if !and_free {
            assert_eq!(got, want, "unmap callbacks");
            // The callback's owner drops the mappings' references.
            for &(pa, _) in &want {
                if managed(pa) {
                    self.frames
                        .free(PhysFrame::containing_address(PhysAddr::new_truncate(pa)))
                        .expect("drop a mapping's reference");
                }
            }
        }
        for &(pa, _) in &want {
            self.forget_if_unmapped(pa);
        }
        match (pages.first(), pages.last()) {
            (Some(&f), Some(&l)) => assert!(flush.contains(va(f)) && flush.contains(va(l))),
            _ => assert!(flush.is_empty()),
        }
    }

    fn copy(&mut self, page: u16, n: u16, shared: bool, to_b: bool) {
        let used_before = self.used();
        let page = u64::from(page) % PAGES;
        let n = count(n).min(PAGES - page);
        let (d, s) = if to_b { (1, 0) } else { (0, 1) };
        let kind = if shared {
            VmaKind::Shared
        } else {
            VmaKind::Private
        };
        let r = copy_range(
            &self.spaces[d],
            &self.spaces[s],
            va(page),
            va(page + n),
            kind,
        );
        let first_chunk = page / HUGE * HUGE;
        let src_huge = self.models[s]
            .range(first_chunk..page + n)
            .any(|(_, e)| e.leaf.1 > 1 && e.leaf.0 + e.leaf.1 > page);
        let dst_busy = self.models[d].range(page..page + n).next().map(|(&p, _)| p);
        let stats = match r {
            Ok(st) => st,
            Err(e) => {
                match (dst_busy, e) {
                    (Some(p), MapError::AlreadyMapped { va: v }) => assert_eq!(v, va(p)),
                    (None, MapError::HugePageInTheWay { .. }) => assert!(src_huge),
                    (None, MapError::OutOfFrames) => {}
                    (b, e) => panic!("copy_range: {e:?} (dst busy at {b:?}, src huge {src_huge})"),
                }
                assert_eq!(self.used(), used_before, "failed copy_range leaked");
                return;
            }
        };
        assert!(
            dst_busy.is_none() && !src_huge,
            "copy_range should have failed"
        );
        let copied: Vec<(u64, Entry)> = self.models[s]
            .range(page..page + n)
            .map(|(&p, &e)| (p, e))
            .collect();
        assert_eq!(stats.copied, copied.len() as u64);
        for (p, mut e) in copied {
            let cow = !shared
                && managed(e.pa)
                && e.flags
                    .intersects(PageTableFlags::WRITABLE | PageTableFlags::COW);
            if cow {
                // Only a page that was writable gets write-protected in the parent and so
                // needs a flush; one already COW (read-only) is left as it is.
                let was_writable = e.flags.contains(PageTableFlags::WRITABLE);
                e.flags = (e.flags - PageTableFlags::WRITABLE) | PageTableFlags::COW;
                self.put(s, p, e);
                assert!(
                    !was_writable || stats.flush.contains(va(p)),
                    "write-protected source page not in the flush"
                );
            }
            e.leaf = (p, 1);
            self.put(d, p, e);
        }
    }

    /// `handle_write_fault` at `page`; returns whether the page is writable afterwards.
    fn fault(&mut self, s: usize, page: u64) -> bool {
        let used_before = self.used();
        let v = va(page) + 8;
        let r = handle_write_fault(&self.spaces[s], v);
        let Some(e) = self.models[s].get(&page).copied() else {
            assert_eq!(r, Err(MapError::NotMapped { va: v }));
            return false;
        };
        if !e.flags.contains(PageTableFlags::COW) || !managed(e.pa) {
            assert_eq!(r, Ok(FaultOutcome::NotCow));
            return false;
        }
        let writable = (e.flags - PageTableFlags::COW) | PageTableFlags::WRITABLE;
        let users = self.users[&e.pa];
        match r {
            Ok(FaultOutcome::Reused) => {
                assert_eq!(users, 1, "COW reused a frame with {users} users");
                self.put(
                    s,
                    page,
                    Entry {
                        flags: writable,
                        ..e
                    },
                );
                true
            }
            Ok(FaultOutcome::Copied) => {
                assert!(users > 1, "COW copied a frame with one user");
                let t = self.spaces[s]
                    .translate(va(page))
                    .expect("copied page mapped");
                let new = t.pa.as_u64();
                assert!(managed(new) && new != e.pa);
                assert!(
                    !self.tags.contains_key(&new),
                    "COW copy into a frame in use"
                );
                let tag = self.tags[&e.pa];
                self.tags.insert(new, tag);
                self.put(
                    s,
                    page,
                    Entry {
                        pa: new,
                        flags: writable,
                        ..e
                    },
                );
                true
            }
            Err(MapError::OutOfFrames) => {
                assert!(users > 1, "COW reuse cannot run out of frames");
                assert_eq!(self.used(), used_before, "failed COW copy leaked");
                false
            }
            other => panic!("handle_write_fault on a COW page: {other:?}"),
        }
    }

    /// After every step: the pages the step may have changed (see [`World::mark_dirty`],
    /// widened to whole leaves) equal the model in the space(s) it worked on; both spaces'
    /// `rss` equal the models' sizes and their highest page translates as modelled; every
    /// frame whose model entries or tag the step changed has exactly the references the
    /// models count (none once no entry maps it) and holds its tag; as many frames are
    /// tagged as mapped. Every [`full_every`](crate::alloc_free::full_every) steps (16; 1
    /// under `KVMALLOC_FUZZ_TRACE` or `KVMALLOC_FUZZ_FULL`) and at the end, the full check
    /// ([`World::check_full`]) as well. Cost: the step's pages and frames, not the models'.
    fn check(&mut self) {
        for &(s, lo, hi) in &self.dirty {
            let (a, b) = widen(&self.spaces[s], &self.models[s], lo, hi);
            if !matches(&self.spaces[s], &self.models[s], a, b) {
                self.report(s);
            }
        }
        for s in 0..2 {
            assert_eq!(
                self.spaces[s].rss(),
                self.models[s].len(),
                "rss of space {s}"
            );
            if let Some((&p, e)) = self.models[s].last_key_value() {
                let t = self.spaces[s].translate(va(p) + 123).expect("translate");
                assert_eq!(t.pa.as_u64(), e.pa + 123);
                assert_eq!(t.size, e.leaf.1 * KB4);
            }
        }
        assert_eq!(
            self.users.len(),
            self.tags.len(),
            "tagged frames vs mapped frames"
        );
        self.dirty_frames.sort_unstable();
        self.dirty_frames.dedup();
        for &pa in &self.dirty_frames {
            let n = self.users.get(&pa).copied().unwrap_or(0);
            self.check_frame(pa, n);
        }
        let every = crate::alloc_free::full_every();
        if self.step % every == every - 1 {
            self.check_full();
        }
        self.dirty.clear();
        self.dirty_frames.clear();
        self.step += 1;
    }

    /// Frame `pa` has `n` references and, if mapped, its tag.
    fn check_frame(&self, pa: u64, n: u32) {
        let f = PhysFrame::containing_address(PhysAddr::new_truncate(pa));
        assert_eq!(self.frames.refcount(f), n, "refcount of {pa:#x}");
        if n > 0 {
            let mut b = [0u8; 8];
            self.frames
                .arena()
                .read(PhysAddr::new_truncate(pa), &mut b)
                .expect("read tag");
            assert_eq!(u64::from_le_bytes(b), self.tags[&pa], "contents of {pa:#x}");
        }
    }

    /// Panic with the first differences between space `s` and its model.
    fn report(&self, s: usize) -> ! {
        let seen = observe(&self.spaces[s]);
        let diff: Vec<_> = seen
            .iter()
            .filter(|(p, e)| self.models[s].get(p) != Some(e))
            .take(4)
            .collect();
        let missing: Vec<_> = self.models[s]
            .iter()
            .filter(|(p, _)| !seen.contains_key(p))
            .take(4)
            .collect();
        panic!(
            "step {}: space {s} differs from the model: seen {diff:x?}, missing {missing:x?}",
            self.step
        );
    }

    /// The full check: both spaces' whole windows equal the models, the frames' user counts
    /// kept with the models equal a recount, and every mapped frame has exactly its
    /// references and its tag.
    fn check_full(&self) {
        for s in 0..2 {
            if !matches(&self.spaces[s], &self.models[s], 0, PAGES) {
                self.report(s);
            }
        }
        let mut users = FrameMap::with_capacity_and_hasher(self.users.len(), Default::default());
        for m in &self.models {
            for e in m.values().filter(|e| managed(e.pa)) {
                *users.entry(e.pa).or_default() += 1;
            }
        }
        assert_eq!(users, self.users, "frame users kept with the models");
        assert_eq!(
            users.len(),
            self.tags.len(),
            "tagged frames vs mapped frames"
        );
        for (&pa, &n) in &users {
            self.check_frame(pa, n);
        }
    }

    fn finish(mut self) {
        for s in 0..2 {
            // This harness has no TLB: the flush ranges are checked, never performed.
            let _unflushed = self.spaces[s]
                .unmap_and_free(va(0), PAGES * KB4)
                .expect("final unmap");
            self.models[s].clear();
        }
        let b = std::mem::take(&mut self.ballast);
        self.frames.free_bulk(&b).expect("free ballast");
        let frames = Arc::clone(&self.frames);
        drop(self);
        let st = frames.stats();
        assert_eq!(st.used, 0, "frames leaked: {st:?}");
        assert_eq!(st.free, st.total);
    }
}

/// Run one input (`KVMALLOC_FUZZ_TRACE` set: print every step).
pub fn run(ops: &[Op]) {
    let trace = std::env::var_os("KVMALLOC_FUZZ_TRACE").is_some();
    let mut w = World::new();
    for (i, op) in ops.iter().enumerate() {
        if trace {
            eprintln!("{i:4} {op:?} (frames used {})", w.used());
        }
        w.apply(op);
        w.check();
    }
    w.check_full();
    w.finish();
}
