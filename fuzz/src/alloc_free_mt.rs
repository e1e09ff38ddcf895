//! The `alloc_free_mt` target: two threads share one [`Vmalloc`] with background purge
//! workers (the default [`PurgeMode::Background`]) and per-CPU area caches, each replaying
//! its own operation list from the input; the checks are the ones that hold under ANY
//! interleaving (no timing assumption anywhere: a run is not reproducible step by step, but
//! every check is exact for every schedule).
//!
//! Set-up: a 64 MiB KVA range in 2 shards, an 8 MiB mmap arena (2,048 frames), a lazy
//! threshold chosen by the input (1 to 1,024 pages, so that purges run in the workers while
//! the threads allocate), 2 purge workers; thread `i` pins itself to CPU slot `i` with
//! [`cpu::set_this_cpu`] (its own area cache, vmap-block queue, deferred list and TLB).
//!
//! Each thread, after every operation on its own objects (`vmalloc` / `vzalloc`,
//! `vmalloc_node_range` with an alignment and a window, `vfree` / `vfree_atomic`, `vread` /
//! `vwrite`, `vm_map_ram` / `vm_unmap_ram` of its own frames, purges, `vm_unmap_aliases`,
//! `find_vm_area`) checks:
//! * argument errors are exactly the predicted ones; any other failure is a shortage the
//!   other thread may cause (`NoSpace`, out of frames) and nothing else;
//! * a new object is page aligned, honours the alignment and the window, does not overlap
//!   another live object of the thread, and maps every page (a `vm_map_ram` object: exactly
//!   the thread's frames);
//! * releasing a live object succeeds; `find_vm_area` of one returns its exact area;
//! * reads return the bytes the thread wrote, zeros where the object was zeroed, and what
//!   an earlier read returned elsewhere (a fresh `vmalloc`'s bytes are unspecified until
//!   first observed, then they may only change by the thread's own writes).
//!
//! Every object gets a lifetime `[born, dies)` from one global sequence counter (taken after
//! the allocating call returns and before the releasing call is made). At the end, after
//! joining:
//! * no two objects of different threads (or of one) overlap in address while their
//!   lifetimes overlap (correct code orders the release before the re-allocation, which puts
//!   `dies` of the first below `born` of the second);
//! * the live objects of both threads map pairwise distinct frames and still hold their
//!   known bytes;
//! * everything is released, the deferred frees drained, a full purge and
//!   `vm_unmap_aliases` run until nothing is pending (the workers may still be finishing a
//!   purge: the harness waits for the counters to settle, failing only after 30 s);
//! * then `Kva::check_invariants` passes, all VA is free, no deferred free failed,
//!   `vmallocinfo` is empty, no CPU caches a vmalloc translation, and after freeing the empty
//!   page tables the frame allocator is back to its count right after construction.
//!
//! How it is fast (as far as it is): per-operation checks look at the thread's own objects
//! only; a re-read of bytes that were all known already compares and learns nothing new (no
//! copy, no merge). Its cost per input is the two threads' and two purge workers' start and
//! join, and reading every known byte of every live object back through `vread` at the end
//! (a third of its time: `PhysArena::read` copies word by word through the instrumented
//! atomic loop), which is the end check itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use pagetable::{ArenaConfig, Backing, PhysAddr, PhysFrame, VirtAddr, Zone, cpu};
use vmalloc::{
    Gfp, KvaConfig, PAGE_KERNEL, PurgeMode, TlbChoice, VmFlags, Vmalloc, VmallocConfig,
    VmallocError,
};

/// Page size.
const PAGE: u64 = 4096;
/// Start of the KVA range.
const KVA_START: u64 = 0xffff_c900_0000_0000;
/// Size of the KVA range (sixteen vmap blocks).
const KVA_SIZE: u64 = 64 << 20;
/// End of the KVA range.
const KVA_END: u64 = KVA_START + KVA_SIZE;
/// Arena: 2,048 frames.
const ARENA_BYTES: u64 = 8 << 20;
/// Threads.
const THREADS: usize = 2;

/// A whole run: a header, then operations each tagged with the thread that runs it.
#[derive(Debug, Clone)]
pub struct Input {
    /// Lazy threshold selector (1, 16, 128 or 1,024 pages).
    pub lazy: u8,
    /// Per-CPU area caches off (they are on by default).
    pub no_pcpu_cache: bool,
    /// Each thread's operations, in order.
    pub ops: [Vec<Op>; THREADS],
}

impl Input {
    /// Decode fuzzer bytes: two header bytes, then `(thread bit, operation)` pairs until the
    /// end.
    pub fn decode(data: &[u8]) -> Input {
        let mut u = Unstructured::new(data);
        let lazy = u8::arbitrary(&mut u).unwrap_or(0);
        let no_pcpu_cache = bool::arbitrary(&mut u).unwrap_or(false);
        let mut ops: [Vec<Op>; THREADS] = Default::default();
        for (t, op) in crate::ops_until_empty::<(bool, Op)>(&mut u) {
            ops[usize::from(t)].push(op);
        }
        Input {
            lazy,
            no_pcpu_cache,
            ops,
        }
    }
}

/// Whether `e` is a shortage either thread may cause (VA, frames or page-table frames):
/// the only errors a valid request may get.
fn is_shortage(e: &VmallocError) -> bool {
    matches!(
        e,
        VmallocError::NoSpace { .. }
            | VmallocError::OutOfMemory { .. }
            | VmallocError::Map(pagetable::MapError::OutOfFrames)
    )
}

/// Size selector: mostly a few pages, up to 32 pages.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Size(pub u8);

impl Size {
    /// Bytes (at least 1).
    pub fn bytes(self) -> u64 {
        let v = u64::from(self.0 >> 2);
        match self.0 & 3 {
            0 => v * 67 % PAGE + 1,
            1 => (v % 4 + 1) * PAGE,
            2 => (v % 32 + 1) * PAGE,
            _ => (v % 8) * PAGE + v * 13 % PAGE + 1,
        }
    }
}

/// One operation of one thread. `obj` picks one of the thread's live objects (modulo their
/// number); with none live the operation does nothing.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `vmalloc` / `vzalloc`.
    Vmalloc {
        /// Size.
        size: Size,
        /// `vzalloc`.
        zero: bool,
    },
    /// `vmalloc_node_range` with an alignment and a window.
    NodeRange {
        /// Size.
        size: Size,
        /// Alignment selector (0: an invalid alignment; else 4 KiB to 4 MiB).
        align: u8,
        /// Window start in pages from the range start (0: the whole range).
        start: u16,
        /// Window length in pages.
        len: u16,
        /// `__GFP_ZERO`.
        zero: bool,
    },
    /// `vfree` of an own object (a `vm_map_ram` one is unmapped instead).
    Vfree(u16),
    /// `vfree_atomic` of an own vmalloc object (the workers run it).
    VfreeAtomic(u16),
    /// `vread` inside an own object.
    Vread {
        /// Object.
        obj: u16,
        /// Offset.
        off: u16,
        /// Length.
        len: u16,
    },
    /// `vwrite` of a pattern inside an own object.
    Vwrite {
        /// Object.
        obj: u16,
        /// Offset.
        off: u16,
        /// Length.
        len: u16,
        /// Pattern seed.
        seed: u8,
    },
    /// `vm_map_ram` of fresh frames (1 to 80 pages: a vmap-block piece up to 64).
    MapRam(u8),
    /// `purge_vmap_area_lazy` (`full`) or `Kva::purge`.
    Purge {
        /// Also retire fragmented vmap blocks.
        full: bool,
    },
    /// `vm_unmap_aliases`.
    UnmapAliases,
    /// `find_vm_area` of an own object.
    Find(u16),
}

/// What backs an object.
#[derive(Debug, Clone)]
enum Kind {
    /// A vmalloc area: `pages` pages and a guard page.
    Vmalloc,
    /// A `vm_map_ram` mapping of the thread's frames.
    MapRam(Vec<PhysFrame>),
}

/// A live object of a thread.
#[derive(Debug, Clone)]
struct Obj {
    addr: u64,
    /// Usable bytes (the request).
    len: u64,
    /// End of the VA it holds (guard page or power-of-two piece included).
    span_end: u64,
    kind: Kind,
    /// Its bytes where known (see `known`).
    data: Vec<u8>,
    /// Byte ranges whose contents are known, ascending and disjoint: zeroed at allocation,
    /// written by the thread, or read once (a fresh `vmalloc`'s bytes are unspecified; once
    /// observed they may only change by the thread's own writes).
    known: Vec<(u64, u64)>,
    /// Sequence number taken after the allocating call returned.
    born: u64,
}

impl Obj {
    /// Whether all of `[s, e)` is known (`known` is ascending, disjoint and merged, so one
    /// range must hold it).
    fn knows(&self, s: u64, e: u64) -> bool {
        self.known.iter().any(|&(a, b)| a <= s && e <= b)
    }

    /// Mark `[s, e)` known.
    fn learn(&mut self, s: u64, e: u64) {
        let k = &mut self.known;
        k.push((s, e));
        k.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(k.len());
        for &(a, b) in k.iter() {
            match out.last_mut() {
                Some(l) if a <= l.1 => l.1 = l.1.max(b),
                _ => out.push((a, b)),
            }
        }
        *k = out;
    }
}

/// An object's VA and lifetime, for the cross-thread check at the end.
#[derive(Debug, Clone, Copy)]
struct Life {
    thread: usize,
    start: u64,
    end: u64,
    born: u64,
    /// Sequence number taken before the releasing call; `u64::MAX` while live.
    dies: u64,
}

/// Fill pattern of a write.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_add((i as u8).wrapping_mul(29)) ^ (i >> 8) as u8)
        .collect()
}

/// One thread's state.
struct Worker<'a> {
    id: usize,
    vm: &'a Vmalloc,
    seq: &'a AtomicU64,
    live: Vec<Obj>,
    lives: Vec<Life>,
    step: usize,
}

impl<'a> Worker<'a> {
    fn tick(&self) -> u64 {
        // SeqCst: one total order of births and deaths, consistent with the happens-before
        // order the allocator's locks give to a release and a later reuse of the same VA.
        self.seq.fetch_add(1, Ordering::SeqCst)
    }

    fn run(&mut self, ops: &[Op]) {
        cpu::set_this_cpu(self.id);
        for op in ops {
            self.apply(op);
            self.step += 1;
        }
    }

    fn pick(&self, i: u16) -> Option<usize> {
        (!self.live.is_empty()).then(|| usize::from(i) % self.live.len())
    }

    fn apply(&mut self, op: &Op) {
        let (t, step) = (self.id, self.step);
        match *op {
            Op::Vmalloc { size, zero } => {
                let n = size.bytes();
                let got = if zero {
                    self.vm.vzalloc(n)
                } else {
                    self.vm.vmalloc(n)
                };
                self.vmalloc_result(got, n, PAGE, KVA_START, KVA_END, zero);
            }
            Op::NodeRange {
                size,
                align,
                start,
                len,
                zero,
            } => {
                let n = size.bytes();
                let align = match align % 16 {
                    0 => 3 * PAGE,
                    a => PAGE << (u64::from(a) % 11),
                };
                let (lo, hi) = if start == 0 {
                    (KVA_START, KVA_END)
                } else {
                    let s = KVA_START + (u64::from(start) % (KVA_SIZE / PAGE)) * PAGE;
                    (s, (s + (u64::from(len) % 4096 + 1) * PAGE).min(KVA_END))
                };
                let gfp = if zero { Gfp::ZERO } else { Gfp::KERNEL };
                let got = self.vm.vmalloc_node_range(
                    n,
                    align,
                    VirtAddr::new_truncate(lo),
                    VirtAddr::new_truncate(hi),
                    gfp,
                    PAGE_KERNEL,
                    VmFlags::empty(),
                    None,
                );
                let area = n.div_ceil(PAGE) * PAGE + PAGE;
                if !align.is_power_of_two() {
                    assert_eq!(
                        got,
                        Err(VmallocError::InvalidAlign { align }),
                        "thread {t} step {step}"
                    );
                    return;
                }
                // No aligned place of the window could ever hold the area: Linux 6.x's
                // TooLarge (NoSpace before), whatever the other thread does.
                let fits = lo
                    .checked_next_multiple_of(align)
                    .and_then(|a| a.checked_add(area))
                    .is_some_and(|e| e <= hi);
                if area > hi - lo || !fits {
                    assert!(
                        matches!(
                            got,
                            Err(VmallocError::NoSpace { .. } | VmallocError::TooLarge { .. })
                        ),
                        "thread {t} step {step}: {area:#x} bytes in a {:#x} window: {got:?}",
                        hi - lo
                    );
                    return;
                }
                self.vmalloc_result(got, n, align, lo, hi, zero);
            }
            Op::Vfree(i) => {
                if let Some(i) = self.pick(i) {
                    self.release(i, false);
                }
            }
            Op::VfreeAtomic(i) => {
                if let Some(i) = self.pick(i) {
                    self.release(i, true);
                }
            }
            Op::Vread { obj, off, len } => {
                if let Some(i) = self.pick(obj) {
                    let (s, e) = self.window(i, off, len);
                    self.check_read(i, s, e);
                }
            }
            Op::Vwrite {
                obj,
                off,
                len,
                seed,
            } => {
                if let Some(i) = self.pick(obj) {
                    let (s, e) = self.window(i, off, len);
                    let data = pattern(seed, (e - s) as usize);
                    let o = &mut self.live[i];
                    let n = self.vm.vwrite(VirtAddr::new_truncate(o.addr + s), &data);
                    assert_eq!(n, data.len(), "thread {t} step {step}: vwrite returned {n}");
                    o.data[s as usize..e as usize].copy_from_slice(&data);
                    o.learn(s, e);
                }
            }
            Op::MapRam(c) => self.map_ram(usize::from(c) % 80 + 1),
            Op::Purge { full } => {
                if full {
                    self.vm.purge_vmap_area_lazy();
                } else {
                    self.vm.kva().purge();
                }
            }
            Op::UnmapAliases => self.vm.vm_unmap_aliases(),
            Op::Find(i) => {
                if let Some(i) = self.pick(i) {
                    let o = &self.live[i];
                    let got = self
                        .vm
                        .find_vm_area(VirtAddr::new_truncate(o.addr))
                        .map(|a| (a.start, a.end, a.info.nr_pages));
                    let want = match o.kind {
                        Kind::Vmalloc => Some((
                            o.addr,
                            o.span_end,
                            (o.span_end - o.addr) as usize / 4096 - 1,
                        )),
                        // A vmap-block piece has no area of its own; a large mapping's area
                        // is a MAP_RAM one, which find_vm_area does not return either.
                        Kind::MapRam(_) => None,
                    };
                    assert_eq!(got, want, "thread {t} step {step}: find_vm_area");
                }
            }
        }
    }

    /// `[s, e)` inside object `i` (offsets in bytes, non-empty unless the object is).
    fn window(&self, i: usize, off: u16, len: u16) -> (u64, u64) {
        let l = self.live[i].len;
        let s = u64::from(off) * 61 % l;
        let e = (s + u64::from(len) % (2 * PAGE) + 1).min(l);
        (s, e)
    }

    /// `vread` of `[s, e)` of object `i` returns the object's known bytes; the bytes read
    /// are known from now on.
    fn check_read(&mut self, i: usize, s: u64, e: u64) {
        let (t, step) = (self.id, self.step);
        let o = &mut self.live[i];
        let mut buf = vec![0x5a; (e - s) as usize];
        let n = self.vm.vread(VirtAddr::new_truncate(o.addr + s), &mut buf);
        assert_eq!(n, buf.len(), "thread {t} step {step}: vread returned {n}");
        for &(ks, ke) in &o.known {
            let (a, b) = (ks.max(s), ke.min(e));
            if a >= b {
                continue;
            }
            let got = &buf[(a - s) as usize..(b - s) as usize];
            let want = &o.data[a as usize..b as usize];
            if got != want {
                let k = got.iter().zip(want).position(|(x, y)| x != y).unwrap_or(0);
                panic!(
                    "thread {t} step {step}: byte {:#x} of the object at {:#x} reads {:#x}, not \
                     {:#x}",
                    a as usize + k,
                    o.addr,
                    got[k],
                    want[k]
                );
            }
        }
        // Bytes read where all were known equal what is recorded (just compared): nothing
        // to learn (the final re-read of every object takes this path).
        if !o.knows(s, e) {
            o.data[s as usize..e as usize].copy_from_slice(&buf);
            o.learn(s, e);
        }
    }

    /// Check a vmalloc-family result and record the object.
    fn vmalloc_result(
        &mut self,
        got: Result<VirtAddr, VmallocError>,
        n: u64,
        align: u64,
        lo: u64,
        hi: u64,
        zero: bool,
    ) {
        let (t, step) = (self.id, self.step);
        let va = match got {
            Ok(va) => va.as_u64(),
            Err(e) => {
                // Shortages the other thread (or this one) may cause; nothing else.
                assert!(
                    is_shortage(&e),
                    "thread {t} step {step}: vmalloc of {n} bytes failed: {e:?}"
                );
                return;
            }
        };
        let born = self.tick();
        let pages = n.div_ceil(PAGE);
        let end = va + pages * PAGE + PAGE;
        assert!(
            va.is_multiple_of(align.max(PAGE)) && lo <= va && end <= hi,
            "thread {t} step {step}: [{va:#x}, {end:#x}) breaks alignment {align:#x} or window \
             [{lo:#x}, {hi:#x})"
        );
        let space = self.vm.kernel_space();
        for p in 0..pages {
            assert!(
                space
                    .translate(VirtAddr::new_truncate(va + p * PAGE))
                    .is_some(),
                "thread {t} step {step}: page {p} of {va:#x} not mapped"
            );
        }
        assert!(
            space
                .translate(VirtAddr::new_truncate(va + pages * PAGE))
                .is_none(),
            "thread {t} step {step}: guard page of {va:#x} mapped"
        );
        self.add(Obj {
            addr: va,
            len: n,
            span_end: end,
            kind: Kind::Vmalloc,
            data: vec![0; n as usize],
            known: if zero { vec![(0, n)] } else { Vec::new() },
            born,
        });
        // A zeroed object reads as zeros (its first and last page; the rest when read).
        let i = self.live.len() - 1;
        self.check_read(i, 0, n.min(PAGE));
        self.check_read(i, n.saturating_sub(PAGE), n);
    }

    /// Record a new object, checking it overlaps no live object of this thread.
    fn add(&mut self, o: Obj) {
        let (t, step) = (self.id, self.step);
        if let Some(x) = self
            .live
            .iter()
            .find(|x| x.addr < o.span_end && o.addr < x.span_end)
        {
            panic!(
                "thread {t} step {step}: new object [{:#x}, {:#x}) overlaps the live [{:#x}, {:#x})",
                o.addr, o.span_end, x.addr, x.span_end
            );
        }
        self.live.push(o);
    }

    fn map_ram(&mut self, count: usize) {
        let (t, step) = (self.id, self.step);
        let frames = self.vm.frames();
        let mut v = Vec::new();
        if frames
            .alloc_bulk_zeroed(count, Zone::Normal, &mut v)
            .is_err()
        {
            return;
        }
        let got = self.vm.vm_map_ram(&v, None, PAGE_KERNEL);
        let va = match got {
            Ok(va) => va.as_u64(),
            Err(e) => {
                assert!(
                    is_shortage(&e),
                    "thread {t} step {step}: vm_map_ram of {count} pages failed: {e:?}"
                );
                for f in v {
                    frames.free(f).expect("free a harness frame");
                }
                return;
            }
        };
        let born = self.tick();
        let space = self.vm.kernel_space();
        for (k, f) in v.iter().enumerate() {
            let got = space.translate(VirtAddr::new_truncate(va + k as u64 * PAGE));
            assert_eq!(
                got.map(|x| x.pa),
                Some(f.start_address()),
                "thread {t} step {step}: page {k} of the vm_map_ram at {va:#x}"
            );
        }
        let reserved = if count > 64 {
            count
        } else {
            count.next_power_of_two()
        };
        let len = count as u64 * PAGE;
        self.add(Obj {
            addr: va,
            len,
            span_end: va + reserved as u64 * PAGE,
            kind: Kind::MapRam(v),
            data: vec![0; len as usize],
            known: vec![(0, len)],
            born,
        });
    }

    /// Release object `i` (`atomic`: with `vfree_atomic` if it is a vmalloc one).
    fn release(&mut self, i: usize, atomic: bool) {
        let (t, step) = (self.id, self.step);
        let o = self.live.swap_remove(i);
        let dies = self.tick();
        let va = VirtAddr::new_truncate(o.addr);
        match &o.kind {
            Kind::Vmalloc if atomic => self.vm.vfree_atomic(va),
            Kind::Vmalloc => assert_eq!(self.vm.vfree(va), Ok(()), "thread {t} step {step}"),
            Kind::MapRam(frames) => {
                assert_eq!(
                    self.vm.vm_unmap_ram(va, frames.len()),
                    Ok(()),
                    "thread {t} step {step}: vm_unmap_ram({:#x}, {})",
                    o.addr,
                    frames.len()
                );
                for &f in frames {
                    self.vm.frames().free(f).expect("free a harness frame");
                }
            }
        }
        self.lives.push(Life {
            thread: self.id,
            start: o.addr,
            end: o.span_end,
            born: o.born,
            dies,
        });
    }
}

/// Run one input (see the module documentation).
pub fn run(input: &Input) {
    let lazy = [1usize, 16, 128, 1024][usize::from(input.lazy % 4)];
    let cfg = VmallocConfig {
        kva: KvaConfig {
            shards: 2,
            lazy_max_pages: Some(lazy),
            purge_mode: PurgeMode::Background,
            pcpu_cache: !input.no_pcpu_cache,
            purge_workers: 2,
            ..KvaConfig::with_range(KVA_START, KVA_END)
        },
        arena: ArenaConfig {
            size: ARENA_BYTES,
            base: PhysAddr::zero(),
            backing: Backing::Mmap { huge_pages: false },
        },
        tlb: TlbChoice::Model,
        ..VmallocConfig::small_heap(ARENA_BYTES)
    };
    cpu::set_this_cpu(0);
    let vm = Vmalloc::new(cfg).expect("instance");
    let baseline = vm.frames().stats().used;
    let seq = AtomicU64::new(0);
    let mut workers: Vec<Worker<'_>> = (0..THREADS)
        .map(|id| Worker {
            id,
            vm: &vm,
            seq: &seq,
            live: Vec::new(),
            lives: Vec::new(),
            step: 0,
        })
        .collect();
    // Join every thread explicitly: the end of a scope only waits until the threads' closures
    // have returned, not until the threads have exited, so a thread could still be running
    // its thread-local destructors (glibc frees their list node last) when the input ends,
    // and libFuzzer's leak check then reported that node as a 32-byte leak (see
    // fuzz/findings/README.md). `join` waits for the thread to be gone.
    std::thread::scope(|s| {
        let threads: Vec<_> = workers
            .iter_mut()
            .zip(&input.ops)
            .map(|(w, ops)| s.spawn(move || w.run(ops)))
            .collect();
        for t in threads {
            if let Err(panic) = t.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    cpu::set_this_cpu(0);
    finish(&vm, workers, baseline);
}

/// The checks after joining, the release of everything, and the final state.
fn finish(vm: &Vmalloc, mut workers: Vec<Worker<'_>>, baseline: u64) {
    // Lifetimes: no two objects overlapping in VA were live at once.
    let mut lives: Vec<Life> = Vec::new();
    for w in &workers {
        lives.extend(w.lives.iter().copied());
        lives.extend(w.live.iter().map(|o| Life {
            thread: w.id,
            start: o.addr,
            end: o.span_end,
            born: o.born,
            dies: u64::MAX,
        }));
    }
    lives.sort_by_key(|l| l.start);
    for (k, a) in lives.iter().enumerate() {
        for b in lives[k + 1..].iter().take_while(|b| b.start < a.end) {
            assert!(
                a.dies < b.born || b.dies < a.born,
                "objects overlap while both live: thread {} [{:#x}, {:#x}) seq [{}, {}) and \
                 thread {} [{:#x}, {:#x}) seq [{}, {})",
                a.thread,
                a.start,
                a.end,
                a.born,
                a.dies,
                b.thread,
                b.start,
                b.end,
                b.born,
                b.dies
            );
        }
    }
    // Live objects: distinct frames, known contents intact.
    let space = vm.kernel_space();
    let mut frames: Vec<u64> = Vec::new();
    for w in &mut workers {
        for i in 0..w.live.len() {
            let o = &w.live[i];
            for p in 0..o.len.div_ceil(PAGE) {
                let tr = space
                    .translate(VirtAddr::new_truncate(o.addr + p * PAGE))
                    .unwrap_or_else(|| panic!("page {p} of the live {:#x} not mapped", o.addr));
                frames.push(tr.pa.as_u64());
            }
            for (s, e) in o.known.clone() {
                w.check_read(i, s, e);
            }
        }
    }
    frames.sort_unstable();
    if let Some(d) = frames.windows(2).find(|p| p[0] == p[1]) {
        panic!("frame {:#x} mapped by two live objects", d[0]);
    }
    // Release everything.
    for w in &mut workers {
        while !w.live.is_empty() {
            w.release(0, false);
        }
    }
    settle(vm);
    let kva = vm.kva();
    if let Err(e) = kva.check_invariants() {
        panic!("Kva::check_invariants at the end: {e}");
    }
    let st = kva.stats();
    assert_eq!(
        (st.used, st.nr_busy, st.pending, st.free),
        (0, 0, 0, st.total),
        "VA not all back: {st:?}"
    );
    assert_eq!((st.merge_errors, st.foreign_tokens), (0, 0));
    assert_eq!(vm.stats().deferred_errors, 0, "a deferred free failed");
    assert!(vm.vmallocinfo().is_empty(), "vmallocinfo not empty");
    let tlb = vm.tlb_model().expect("model TLB");
    assert!(
        !tlb.holds_any(
            VirtAddr::new_truncate(KVA_START),
            VirtAddr::new_truncate(KVA_END)
        ),
        "a CPU still caches a vmalloc translation after the final purge"
    );
    let gib = 1u64 << 30;
    space
        .clean_up(VirtAddr::new_truncate(KVA_START & !(gib - 1)), gib)
        .expect("clean_up");
    let fst = vm.frames().stats();
    assert_eq!(
        fst.used, baseline,
        "frames not all back after the final purge and clean_up: {fst:?}"
    );
}

/// Run the deferred frees and purge until nothing is left: a worker may still be running a
/// deferred free or a purge it took before the threads were joined. Fails if the counters do
/// not settle within 30 s (a lost area or a stuck worker, not a slow machine).
fn settle(vm: &Vmalloc) {
    let kva = vm.kva();
    let t0 = Instant::now();
    loop {
        kva.drain_deferred();
        vm.purge_vmap_area_lazy();
        vm.vm_unmap_aliases();
        let st = kva.stats();
        if st.used == 0 && st.pending == 0 && st.lazy_pages == 0 {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "did not settle after releasing everything: {st:?}"
        );
        std::thread::yield_now();
    }
}
