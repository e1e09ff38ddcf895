//! The kernel's view: the whole vmalloc API over a platform implemented without any std type,
//! on memory handed over as a "direct map", with background work queued through a
//! [`PurgeWork`] hook and run by the "kernel" when it pleases.
//!
//! This file builds and passes both ways:
//! * `cargo test -p vmalloc --no-default-features --test platform`: the crates are compiled
//!   `no_std` (the test harness itself is a hosted program), so the `no_std` paths are the
//!   ones executed (per-CPU drain depth, sequential merges, no worker threads, no TLB model);
//! * as part of `cargo test`, with `std` on, where the same platform runs through the same
//!   generic code.
#![cfg(not(feature = "loom"))]

extern crate alloc;

use alloc::sync::Arc;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use pagetable::platform::{Platform, RawSpinlock};
use pagetable::{
    FrameAllocator, FrameConfig, PAGE_SIZE, PhysAddr, PhysArena, TlbFlush, TlbStats, VirtAddr, Zone,
};
use vmalloc::{
    Gfp, KvaConfig, PAGE_KERNEL, PurgeMode, PurgeWork, TlbChoice, VmFlags, Vmalloc, VmallocError,
};

const P: u64 = PAGE_SIZE;
const CPUS: usize = 4;

/// The "current CPU" of the fake kernel: the test switches it by hand (one thread plays
/// every CPU, as a kernel's code would run on each in turn).
static CURRENT_CPU: AtomicUsize = AtomicUsize::new(0);

/// A 4-CPU kernel whose locks are spinlocks and whose CPU id is a global the test sets.
struct FakeKernel;

impl Platform for FakeKernel {
    type RawMutex = RawSpinlock;

    fn this_cpu() -> usize {
        CURRENT_CPU.load(Ordering::Relaxed)
    }

    fn nr_cpu_ids() -> usize {
        CPUS
    }
}

/// The kernel's shootdown: counts flushes and pages (no TLB to invalidate in a test).
#[derive(Default)]
struct Shootdown {
    flushes: AtomicU64,
    pages: AtomicU64,
}

impl TlbFlush for Shootdown {
    fn flush_range(&self, start: VirtAddr, end: VirtAddr) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        let pages = end.as_u64().wrapping_sub(start.as_u64()) / P;
        self.pages.fetch_add(pages, Ordering::Relaxed);
    }

    fn flush_all(&self) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
    }

    fn stats(&self) -> TlbStats {
        TlbStats {
            flushes: self.flushes.load(Ordering::Relaxed),
            pages_flushed: self.pages.load(Ordering::Relaxed),
            ..TlbStats::default()
        }
    }
}

/// The kernel's workqueue: remembers what was scheduled; the test runs it.
#[derive(Default)]
struct Workqueue {
    purge: AtomicBool,
    deferred: AtomicBool,
    scheduled: AtomicUsize,
}

impl PurgeWork for Workqueue {
    fn schedule_purge(&self) {
        self.purge.store(true, Ordering::Release);
        self.scheduled.fetch_add(1, Ordering::Relaxed);
    }

    fn schedule_deferred(&self) {
        self.deferred.store(true, Ordering::Release);
        self.scheduled.fetch_add(1, Ordering::Relaxed);
    }
}

impl Workqueue {
    /// Run whatever was queued, as the kernel's worker would.
    fn run(&self, vm: &Vmalloc<FakeKernel>) {
        if self.deferred.swap(false, Ordering::Acquire) {
            vm.kva().drain_deferred();
        }
        if self.purge.swap(false, Ordering::Acquire) {
            vm.kva().purge_work();
        }
    }
}

/// 8 MiB of "RAM" at a fixed address, handed to the arena as the kernel's direct map.
#[repr(C, align(4096))]
struct Ram([u8; 8 << 20]);

static mut RAM: Ram = Ram([0; 8 << 20]);
static RAM_TAKEN: AtomicBool = AtomicBool::new(false);

/// The direct-map arena over `RAM` (once per process: the memory is handed over for good).
fn direct_map() -> Arc<PhysArena> {
    assert!(
        !RAM_TAKEN.swap(true, Ordering::SeqCst),
        "RAM handed out twice"
    );
    // SAFETY: `RAM` is a 4 KiB-aligned static of 8 MiB that lives for the whole process,
    // handed to the arena exactly once (checked above) and never touched otherwise.
    let virt = unsafe { NonNull::new_unchecked(core::ptr::addr_of_mut!(RAM).cast::<u8>()) };
    // SAFETY: as above; the static starts zeroed.
    let arena =
        unsafe { PhysArena::from_direct_map(virt, PhysAddr::new(0x20_0000), 8 << 20, true) };
    Arc::new(arena.expect("direct map"))
}

#[test]
fn the_vmalloc_api_on_a_std_free_platform() {
    let frames = Arc::new(FrameAllocator::<FakeKernel>::with_platform(
        direct_map(),
        FrameConfig::default(),
    ));
    let shootdown = Arc::new(Shootdown::default());
    let wq = Arc::new(Workqueue::default());
    let kva = KvaConfig {
        start: 0xffff_c900_0000_0000,
        end: 0xffff_c900_0000_0000 + (1 << 30),
        lazy_max_pages: Some(64),
        purge_mode: PurgeMode::Background,
        ..KvaConfig::default()
    };
    let vm = Vmalloc::<FakeKernel>::with_platform(
        kva,
        &[],
        Arc::clone(&frames),
        TlbChoice::Custom(shootdown.clone()),
        Some(wq.clone()),
    )
    .unwrap();
    assert_eq!(vm.kva().nr_cpus(), CPUS);
    let base_frames = frames.stats().used;

    // vmalloc / vwrite / vread / vfree on every CPU in turn.
    let mut live = alloc::vec::Vec::new();
    for round in 0..40u64 {
        CURRENT_CPU.store((round % CPUS as u64) as usize, Ordering::Relaxed);
        let size = (1 + round % 5) * P - 100;
        let p = vm.vmalloc(size).unwrap();
        let stamp = round.to_le_bytes();
        assert_eq!(vm.vwrite(p + 17, &stamp), stamp.len());
        live.push((p, stamp));
    }
    for (p, stamp) in &live {
        let mut back = [0u8; 8];
        assert_eq!(vm.vread(*p + 17, &mut back), 8);
        assert_eq!(&back, stamp);
    }
    // Free them, half with vfree_atomic: the deferred work and, past the threshold, a purge
    // are queued on the "workqueue", nothing runs on the freeing path.
    for (i, (p, _)) in live.drain(..).enumerate() {
        CURRENT_CPU.store(i % CPUS, Ordering::Relaxed);
        if i % 2 == 0 {
            vm.vfree(p).unwrap();
        } else {
            vm.vfree_atomic(p);
        }
    }
    assert!(wq.scheduled.load(Ordering::Relaxed) > 0, "work was queued");
    assert_eq!(vm.stats().deferred_errors, 0);
    // The kernel runs its workqueue: the deferred frees run, the kicked purge flushes once.
    wq.run(&vm);
    wq.run(&vm);
    let flushes = shootdown.flushes.load(Ordering::Relaxed);
    assert!(flushes >= 1, "the purge flushed");

    // vmap and vm_map_ram of frames the kernel owns.
    let pages: alloc::vec::Vec<_> = (0..3)
        .map(|_| frames.alloc(Zone::Normal).unwrap())
        .collect();
    let m = vm.vmap(&pages, VmFlags::empty(), PAGE_KERNEL).unwrap();
    let r = vm.vm_map_ram(&pages, None, PAGE_KERNEL).unwrap();
    assert_eq!(vm.vwrite(m, b"kernel"), 6);
    let mut back = [0u8; 6];
    assert_eq!(vm.vread(r, &mut back), 6);
    assert_eq!(&back, b"kernel", "two mappings of the same frame");
    vm.vunmap(m).unwrap();
    vm.vm_unmap_ram(r, 3).unwrap();
    vm.vm_unmap_aliases();
    frames.free_bulk(&pages).unwrap();

    // Thread stacks (the per-CPU cache on the kernel's CPU ids), a huge area (2 MiB runs of
    // the direct-map RAM), vrealloc.
    CURRENT_CPU.store(1, Ordering::Relaxed);
    let st = vm.alloc_thread_stack_node(None).unwrap();
    let base = st.base();
    vm.free_thread_stack(st).unwrap();
    let st = vm.alloc_thread_stack_node(None).unwrap();
    assert_eq!(st.base(), base, "from CPU 1's cache");
    vm.free_thread_stack(st).unwrap();
    let h = vm.vmalloc_huge(2 << 20, Gfp::ZERO).unwrap();
    assert_eq!(vm.kernel_space().translate(h).unwrap().size, 2 << 20);
    let g = vm.vrealloc(h, (2 << 20) + P, Gfp::ZERO).unwrap();
    assert_eq!(vm.vwrite(g + (2 << 20), b"grown"), 5);
    vm.vfree(g).unwrap();
    assert!(vm.meminfo().starts_with("VmallocTotal:"));
    // Bad input is a typed error here too.
    assert!(matches!(
        vm.vfree(VirtAddr::new(0xffff_c900_0000_1000)),
        Err(VmallocError::NotAllocated { .. })
    ));
    // Nothing leaked: after a purge every frame but the page tables is back, no VA is used.
    assert_eq!(vm.free_vm_stack_cache(), 1);
    vm.purge_vmap_area_lazy();
    let st = vm.stats();
    assert_eq!((st.kva.used, st.lazy_pages), (0, 0), "{st:?}");
    let (s, e) = vm.range();
    vm.kernel_space().clean_up(s, e - s).unwrap();
    assert_eq!(frames.stats().used, base_frames, "frames leaked");
    vm.kva().check_invariants().unwrap();
    // The library's own leak check agrees (it empties the stack caches first).
    vm.check_idle().unwrap();
}
