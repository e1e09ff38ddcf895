//! The `alloc_free` target: the vmalloc API of one small [`Vmalloc`] instance driven by an
//! arbitrary sequence of operations and checked against [`model::Model`] after every step.
//!
//! The instance is built to run out of everything often: 2 KVA shards over a 32 MiB range
//! (eight vmap blocks fill it), a 4 MiB arena (1,024 frames; heap-backed for one input in
//! 64, mmap otherwise), a lazy threshold chosen by the input between 1 and 1,024 pages,
//! per-CPU area caches on or off, and
//! [`PurgeMode::Synchronous`] (no threads: every run is deterministic and replays exactly).
//!
//! What is checked is listed in [`check`] (after every step) and in each operation of
//! [`ops`]; in short: every result and error equals the model's (error variants with their
//! fields), a `NoSpace` is only returned when the model's free space has no aligned fit in
//! the window, a frame shortage only when frames are really short (or a failure was
//! injected), and a failed call changes nothing (frames, VA, mappings); live areas never
//! overlap, alignment and window are honoured, contents read back as written, no CPU caches a
//! translation of free VA, and at the end, after a purge, all VA and every frame are back.
//!
//! How it is fast: the per-step check costs what the step touched (the areas it created or
//! released, the pages it accessed, running totals instead of sums over the model: see
//! [`check`]), the whole-state check runs every 16 steps, TLB questions are asked per span of
//! forbidden runs, frames the allocator hands out zeroed are checked with one copy and a
//! `memcmp`, and the user space is only built by an input that needs it. What is left is the
//! instrumented allocator code itself and libFuzzer's per-feature bookkeeping (a profile and
//! the figures are in docs/FUZZING.md). An instance is built per input: reusing
//! one (reset and checked clean between inputs) was measured SLOWER, because the frames a
//! previous input dirtied must then be zeroed by `PhysArena::zero_frame`'s instrumented
//! word loop, while a new arena's never-touched frames skip zeroing.

pub mod check;
pub mod model;
pub mod ops;
pub mod release;
pub mod reserve;
pub mod vmap_ram;

use std::sync::Arc;

use arbitrary::Arbitrary;
use pagetable::{AddressSpace, ArenaConfig, Backing, FrameAllocator, PhysAddr, VirtAddr, cpu};
use vmalloc::{EarlyArea, KvaConfig, PurgeMode, TlbChoice, VmFlags, Vmalloc, VmallocConfig};

use model::{KVA_END, KVA_START, Model, PAGE};

/// A whole run.
#[derive(Debug, Clone)]
pub struct Input {
    /// Lazy threshold selector (1, 16, 128 or 1,024 pages).
    pub lazy: u8,
    /// Per-CPU caches of small free areas.
    pub pcpu_cache: bool,
    /// Early areas reserved at construction: bit 0 one at a fixed address (`vm_area_add_early`,
    /// page `(early >> 2) % 16` of the range, 1 to 4 pages), bit 1 one placed lowest-fit with
    /// a 64 KiB alignment (`vm_area_register_early`).
    pub early: u8,
    /// Arena backing selector: heap when `arena % 64 == 1` (one random byte in 64), else mmap
    /// (same arena API; the heap backing zeroes its 4 MiB eagerly, which makes a run several
    /// times slower: at one input in eight it took 5% of all fuzzing time). Not `== 0`: a
    /// zero byte is far more common than one in 64 in fuzzed inputs (short inputs decode it
    /// as 0, mutations write zeros): 6% of a grown corpus took the heap, 4% of the CPU time.
    pub arena: u8,
    /// The operations.
    pub ops: Vec<Op>,
}

impl Input {
    /// Decode fuzzer bytes: the four header bytes, then operations until the end.
    pub fn decode(data: &[u8]) -> Input {
        let mut u = arbitrary::Unstructured::new(data);
        let lazy = u8::arbitrary(&mut u).unwrap_or(0);
        let pcpu_cache = bool::arbitrary(&mut u).unwrap_or(false);
        let arena = u8::arbitrary(&mut u).unwrap_or(0);
        let early = u8::arbitrary(&mut u).unwrap_or(0);
        Input {
            lazy,
            pcpu_cache,
            early,
            arena,
            ops: crate::ops_until_empty(&mut u),
        }
    }
}

/// A size selector: a few bytes to ~1,500 pages, mostly small.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Size(pub u16);

impl Size {
    /// Bytes.
    pub fn bytes(self) -> u64 {
        let v = u64::from(self.0 >> 2);
        match self.0 & 3 {
            0 => v % (4 * PAGE) + 1,
            1 => (v % 16 + 1) * PAGE,
            2 => (v % 300 + 1) * PAGE,
            _ => (v % 600) * PAGE + v % 7,
        }
    }
}

/// Which address an operation aims at.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Target {
    /// The start of a live object made by the harness.
    Live(u16),
    /// An address released before.
    Freed(u16),
    /// Inside (or just past) a live object: page aligned or not.
    Interior(u16, u16),
    /// Any page of the KVA range.
    Random(u16),
    /// The null address.
    Null,
}

/// Extra flags for `vmalloc_node_range` and `get_vm_area` (bit set).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Bits(pub u8);

/// One step.
#[derive(Arbitrary, Debug, Clone)]
pub enum Op {
    /// `vmalloc` / `vzalloc`.
    Vmalloc {
        /// Size.
        size: Size,
        /// `vzalloc`.
        zero: bool,
    },
    /// `vmalloc_user` (zeroed, `VM_USERMAP`).
    VmallocUser(Size),
    /// `vmalloc_32`, `vmalloc_32_user`, `vmalloc_exec`, `vmalloc_node`, `vzalloc_node` or
    /// `__vmalloc` (`vmalloc_with`).
    VmallocApi {
        /// Which call.
        which: u8,
        /// Size.
        size: Size,
        /// Node, or for `vmalloc_with` the zero / read-only bits.
        node: u8,
    },
    /// `vmalloc_node_range` with alignment, window, flags, protection and node.
    NodeRange {
        /// Size.
        size: Size,
        /// Alignment selector.
        align: u8,
        /// Window start (pages into the range, or outside it).
        start: u16,
        /// Window length selector.
        len: u16,
        /// `NO_GUARD`, `USERMAP`, read-only, exec, DMA32, zero, a forbidden flag.
        bits: Bits,
        /// Preferred node.
        node: Option<u8>,
    },
    /// `vfree`.
    Vfree(Target),
    /// `vfree_atomic`, then the deferred list drained.
    VfreeAtomic(Target),
    /// `vread` at an offset from a target.
    Vread {
        /// Base.
        at: Target,
        /// Offset from the base (may cross into the guard page or the next area).
        off: u16,
        /// Length.
        len: u16,
    },
    /// `vwrite` of a pattern.
    Vwrite {
        /// Base.
        at: Target,
        /// Offset from the base.
        off: u16,
        /// Length.
        len: u16,
        /// Pattern seed.
        seed: u8,
    },
    /// `purge_vmap_area_lazy` (`full`) or `Kva::purge`.
    Purge {
        /// Also retire fragmented vmap blocks.
        full: bool,
    },
    /// `vm_map_ram` of fresh harness frames.
    MapRam {
        /// Page count (0 is an error; up to 100: above 64 gets an own area).
        count: u8,
        /// Preferred node.
        node: Option<u8>,
        /// Map read-only.
        ro: bool,
        /// Pass a frame that is not the arena's.
        bad_frame: bool,
    },
    /// `vm_unmap_ram`.
    UnmapRam {
        /// Address.
        at: Target,
        /// Count: the mapping's own (3 times in 4), else `count >> 2`.
        count: u8,
    },
    /// `vm_unmap_aliases`.
    UnmapAliases,
    /// `vmap` of fresh harness frames.
    Vmap {
        /// Page count (0 is an error).
        count: u8,
        /// Map read-only.
        ro: bool,
        /// `VM_USERMAP` (else none; sometimes a forbidden flag).
        flags: u8,
    },
    /// `vunmap`.
    Vunmap(Target),
    /// `get_vm_area`.
    GetVmArea {
        /// Size.
        size: Size,
        /// Flags bits.
        bits: Bits,
    },
    /// `alloc_vm_area` (page tables built, nothing mapped).
    AllocVmArea(Size),
    /// `free_vm_area`.
    FreeVmArea(Target),
    /// `ioremap` of device memory (or, to be refused, RAM).
    Ioremap {
        /// Physical page selector.
        phys: u16,
        /// Byte offset in the first page.
        off: u16,
        /// Size in bytes selector.
        size: u16,
    },
    /// `iounmap`.
    Iounmap(Target),
    /// `find_vm_area`.
    FindVmArea(Target),
    /// `vmallocinfo` and `stats` against the model.
    Info,
    /// `remap_vmalloc_range` into the user space.
    Remap {
        /// Kernel address.
        at: Target,
        /// User slot (64 pages each).
        slot: u8,
        /// Pages.
        pages: u8,
        /// Page offset.
        pgoff: u8,
    },
    /// Unmap a user slot (`unmap_and_free`: drops the references).
    UserUnmap(u8),
    /// Write through a user mapping (at the frame it maps), seen by `vread` of the area.
    UserWrite {
        /// Slot.
        slot: u8,
        /// Page in the slot.
        page: u8,
        /// Pattern seed.
        seed: u8,
    },
    /// Make the n-th frame allocation of the next operation fail.
    Inject(u8),
    /// Run the following operations as another CPU (`cpu::set_this_cpu`): its per-CPU area
    /// cache, vmap-block queue, deferred list, frame cache and TLB.
    Cpu(u8),
}

/// The early areas of header byte `sel` (see [`Input::early`]).
fn early_areas(sel: u8) -> Vec<EarlyArea> {
    let mut v = Vec::new();
    if sel & 1 != 0 {
        v.push(EarlyArea {
            addr: Some(KVA_START + u64::from((sel >> 2) % 16) * PAGE),
            size: u64::from(sel >> 6) * PAGE + 1,
            align: 0,
            flags: VmFlags::empty(),
        });
    }
    if sel & 2 != 0 {
        v.push(EarlyArea {
            addr: None,
            size: 2 * PAGE,
            align: 64 << 10,
            flags: VmFlags::IOREMAP,
        });
    }
    v
}

/// Size of a user slot in pages.
pub const SLOT_PAGES: u64 = 64;
/// User slots.
pub const SLOTS: u64 = 16;
/// Base of the user slots (lower half).
pub const USER_BASE: u64 = 0x10_0000_0000;

/// A live object the harness made, for `Target::Live` / `Interior`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handle {
    /// The address the API returned.
    pub addr: u64,
    /// Bytes it covers (guard page excluded).
    pub len: u64,
    /// For `vm_map_ram`: the page count.
    pub count: usize,
}

/// The instance, the model, and the harness's bookkeeping.
pub struct World {
    /// The instance under test.
    pub vm: Vmalloc,
    /// Its frame allocator.
    pub frames: Arc<FrameAllocator>,
    /// The user space for `remap_vmalloc_range`, made by the first operation that needs it
    /// (most inputs never do: it saves building and tearing down a space per run), dropped
    /// at the end.
    pub user: Option<AddressSpace>,
    /// The model.
    pub m: Model,
    /// Objects made and not released, in creation order.
    pub handles: Vec<Handle>,
    /// Addresses released (most recent last, bounded).
    pub freed: Vec<u64>,
    /// Frames used right after construction.
    pub baseline_used: u64,
    /// A failure injection armed for the current operation.
    pub injected: bool,
    /// A failure injection waiting for the next operation's call.
    pub pending_inject: Option<u64>,
    /// The KVA allocator's purge count the model has caught up with.
    pub purges_seen: u64,
    /// The next `check` runs the full check (set at the end).
    pub full_due: bool,
    /// Run the full check every this many steps (1: every step; see [`full_every`]).
    pub full_every: usize,
    /// Addresses whose area the current step created, released or retired: the per-step
    /// check compares the allocator's area there with the model's.
    pub touched: Vec<u64>,
    /// Ranges the current step accessed (`vread` / `vwrite`): the only ranges a CPU can have
    /// started caching, so the per-step TLB check looks there.
    pub accessed: Vec<(u64, u64)>,
    /// Step counter (for messages).
    pub step: usize,
}

impl World {
    /// A fresh instance for `input`.
    pub fn new(input: &Input) -> World {
        let lazy = [1usize, 16, 128, 1024][usize::from(input.lazy % 4)];
        let cfg = VmallocConfig {
            kva: KvaConfig {
                shards: 2,
                lazy_max_pages: Some(lazy),
                purge_mode: PurgeMode::Synchronous,
                pcpu_cache: input.pcpu_cache,
                ..KvaConfig::with_range(KVA_START, KVA_END)
            },
            arena: ArenaConfig {
                size: model::ARENA_BYTES,
                base: PhysAddr::zero(),
                backing: if input.arena % 64 == 1 {
                    Backing::Heap
                } else {
                    Backing::Mmap { huge_pages: false }
                },
            },
            tlb: TlbChoice::Model,
            early: early_areas(input.early),
            ..VmallocConfig::small_heap(model::ARENA_BYTES)
        };
        // Every run starts on CPU 0 (the slot is per thread and libFuzzer reuses the thread).
        cpu::set_this_cpu(0);
        let vm = Vmalloc::new(cfg).expect("instance");
        let frames = Arc::clone(vm.frames());
        let baseline_used = frames.stats().used;
        let purges_seen = vm.kva().stats().purges;
        let mut w = World {
            vm,
            frames,
            user: None,
            m: Model {
                queues: vec![Vec::new(); cpu::nr_cpu_ids()],
                ..Model::default()
            },
            handles: Vec::new(),
            freed: Vec::new(),
            baseline_used,
            injected: false,
            pending_inject: None,
            purges_seen,
            full_due: false,
            full_every: full_every(),
            touched: Vec::new(),
            accessed: Vec::new(),
            step: 0,
        };
        w.learn_early(input.early);
        w
    }

    /// Check the early areas where the configuration put them and add them to the model.
    fn learn_early(&mut self, sel: u8) {
        let want = early_areas(sel);
        let got: Vec<vmalloc::VmArea> = self.vm.early_areas().to_vec();
        assert_eq!(got.len(), want.len(), "early areas");
        for (e, a) in want.iter().zip(got) {
            let size = e.size.next_multiple_of(PAGE);
            match e.addr {
                Some(x) => assert_eq!(a.start, x, "vm_area_add_early address"),
                None => {
                    assert_eq!(a.start % e.align, 0, "vm_area_register_early alignment");
                    assert!(
                        self.m.is_free(a.start, a.start + size),
                        "early area overlaps"
                    );
                }
            }
            let flags = e.flags | VmFlags::EARLY | VmFlags::NO_GUARD;
            assert_eq!(
                (a.end, a.info.flags, a.info.nr_pages),
                (a.start + size, flags, 0),
                "early area"
            );
            self.add_area(model::Area {
                start: a.start,
                end: a.end,
                flags,
                nr_pages: 0,
                phys: None,
                kind: model::Kind::Reserved,
            });
            self.handles.push(Handle {
                addr: a.start,
                len: size,
                count: 0,
            });
        }
        self.touched.clear();
    }

    /// Make the user space if there is none yet. `false` when the arena has no frame left
    /// for its root table (then the operation needing it is skipped).
    pub fn ensure_user_space(&mut self) -> bool {
        if self.user.is_none() {
            let free = self.frames.stats().free;
            match self.vm.new_user_space() {
                Ok(u) => self.user = Some(u),
                Err(e) => {
                    assert!(
                        free == 0,
                        "step {}: no user space with {free} frames free: {e}",
                        self.step
                    );
                    return false;
                }
            }
        }
        true
    }

    /// Resolve a target to an address.
    pub fn addr(&self, t: Target) -> u64 {
        match t {
            Target::Live(i) if !self.handles.is_empty() => {
                self.handles[usize::from(i) % self.handles.len()].addr
            }
            Target::Freed(i) if !self.freed.is_empty() => {
                self.freed[usize::from(i) % self.freed.len()]
            }
            Target::Interior(i, off) if !self.handles.is_empty() => {
                let h = self.handles[usize::from(i) % self.handles.len()];
                let span = h.len + PAGE;
                let o = u64::from(off >> 1);
                if off & 1 == 0 {
                    h.addr + (o * PAGE) % span.next_multiple_of(PAGE)
                } else {
                    h.addr + (o * 61 + 1) % span
                }
            }
            Target::Null => 0,
            Target::Live(x) | Target::Freed(x) | Target::Interior(x, _) | Target::Random(x) => {
                KVA_START + (u64::from(x) * PAGE) % (KVA_END - KVA_START)
            }
        }
    }

    /// Resolve a target, with `Target::Live` preferring (7 times in 8) the handles whose
    /// area satisfies `ok`: a release call mostly aims at an object of its own kind.
    pub fn addr_for(&self, t: Target, ok: impl Fn(&Handle, VmFlags) -> bool) -> u64 {
        if let Target::Live(i) = t
            && i % 8 != 0
        {
            let c: Vec<u64> = self
                .handles
                .iter()
                .filter(|h| self.m.containing(h.addr).is_some_and(|a| ok(h, a.flags)))
                .map(|h| h.addr)
                .collect();
            if !c.is_empty() {
                return c[usize::from(i / 8) % c.len()];
            }
        }
        self.addr(t)
    }

    /// Forget the handle at `addr` and remember the address as released.
    pub fn released(&mut self, addr: u64) {
        self.handles.retain(|h| h.addr != addr);
        self.freed.push(addr);
        if self.freed.len() > 64 {
            self.freed.remove(0);
        }
    }

    /// The kernel address as a `VirtAddr`.
    pub fn va(a: u64) -> VirtAddr {
        VirtAddr::new_truncate(a)
    }
}

/// Steps between two full checks (see [`check`]): 16, or 1 (every step) when
/// `KVMALLOC_FUZZ_TRACE` or `KVMALLOC_FUZZ_FULL` is set in the environment, to pin a
/// failure found by a full check to the step that caused it. Read once per process.
pub fn full_every() -> usize {
    static EVERY: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *EVERY.get_or_init(|| {
        let env = |k| std::env::var_os(k).is_some();
        if env("KVMALLOC_FUZZ_TRACE") || env("KVMALLOC_FUZZ_FULL") {
            1
        } else {
            16
        }
    })
}

/// Whether `KVMALLOC_FUZZ_TRACE` is set (read once per process).
fn trace_on() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("KVMALLOC_FUZZ_TRACE").is_some())
}

/// Run one input. With `KVMALLOC_FUZZ_TRACE` set in the environment, print every step and
/// the model's size after it, and run the full check after every step (for replaying a
/// crash by hand: `cargo run --release --example replay -- alloc_free <file>`).
pub fn run(input: &Input) {
    let trace = trace_on();
    let mut w = World::new(input);
    if trace {
        eprintln!(
            "lazy={} pcpu_cache={} arena={}",
            input.lazy, input.pcpu_cache, input.arena
        );
    }
    for op in &input.ops {
        w.apply(op);
        if trace {
            eprintln!(
                "{:4} {op:?} -> areas {} lazy {} blocks {} frames {} user {} free frames {}",
                w.step,
                w.m.areas.len(),
                w.m.lazy.len(),
                w.m.blocks.len(),
                w.m.mem.len(),
                w.m.user.len(),
                w.frames.stats().free
            );
        }
        w.check();
        w.touched.clear();
        w.accessed.clear();
        w.step += 1;
    }
    w.finish();
}
