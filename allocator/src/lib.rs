//! vmalloc: Linux's `mm/vmalloc.c` as an embeddable library.
//!
//! A [`Vmalloc`] instance is a small kernel: a physical arena with its frame allocator, a
//! kernel address space (x86_64 4-level page tables living in that arena), a TLB, and a
//! kernel-virtual-address (KVA) allocator, [`Kva`], managing the vmalloc range
//! (`0xffffc90000000000`, 32 TiB by default). On top sits the Linux vmalloc API with Rust
//! signatures and one typed error, [`VmallocError`]:
//!
//! ```
//! # #[cfg(not(feature = "loom"))] {
//! use vmalloc::{Vmalloc, VmallocConfig};
//!
//! // A 16 MiB heap-backed "machine"; `VmallocConfig::default()` is x86_64's real layout.
//! let vm = Vmalloc::new(VmallocConfig::small_heap(16 << 20))?;
//! let p = vm.vmalloc(10_000)?; // 3 pages + a guard page
//! assert_eq!(vm.vwrite(p + 4090, b"across pages"), 12);
//! let mut buf = [0u8; 12];
//! vm.vread(p + 4090, &mut buf);
//! assert_eq!(&buf, b"across pages");
//! assert!(vm.vmallocinfo().contains("pages=3 vmalloc"));
//! vm.vfree(p)?; // PTEs cleared, frames freed, VA freed lazily (no TLB flush)
//! assert_eq!(vm.vfree(p), Err(vmalloc::VmallocError::DoubleFree { addr: p.as_u64() }));
//! vm.purge_vmap_area_lazy(); // ONE flush for every lazily freed area
//! # }
//! # Ok::<(), vmalloc::VmallocError>(())
//! ```
//!
//! # How it works
//!
//! **Layer 1, the KVA allocator** ([`Kva`]; no page tables, flushes through a
//! [`TlbFlush`](pagetable::TlbFlush) hook). The range is cut into contiguous shards (one per
//! CPU slot by default), each with its own free tree (an augmented AVL tree of free areas
//! keyed by start, every node knowing the largest free size below it: a fit with alignment
//! and `[vstart, vend)` in O(log n), Linux 5.2's design, exact lowest fit for page-aligned
//! requests) behind its own lock, and a node (Linux 6.9's vmap node) behind one other lock:
//! the busy index of the live areas starting in the shard (a B+ tree of 16-byte records, no
//! per-area object), pools of ready free areas of each size up to 256 pages, and a lazy
//! batch. A small allocation or free takes only the calling CPU's home node lock (one shard
//! per CPU: an uncontended line) and allocates nothing. Freeing is lazy: [`Kva::free_lazy`]
//! records the area in its node's lazy batch (or, the batch full, pushes it on its shard's
//! lock-free list) and counts its pages; past
//! [`lazy_max_pages`](linux_lazy_max_pages) (`fls(nr_cpus) * 32 MiB` of pages) a purge
//! ([`Kva::purge`]) takes every batch and every list, flushes the union range ONCE, and only
//! then merges the areas back, its merge work split across the per-CPU purge workers. An
//! allocation that finds no space purges synchronously and retries, then calls the
//! registered notifiers, then fails with [`VmallocError::NoSpace`]. [`Kva`]'s documentation
//! has the details.
//!
//! **Layer 2, the vmalloc API** ([`Vmalloc`]):
//!
//! * [`vmalloc`](Vmalloc::vmalloc) and its family: size to pages; area = pages + a guard
//!   page; `Kva::alloc` with the area's info (kind, pages, caller); frames from the frame
//!   allocator's per-CPU cache (on the stack up to 16 pages: no heap
//!   allocation) in the requested zone, zeroed if asked; one page-table map call. All or
//!   nothing: a failure frees the frames and gives the never-mapped VA straight back.
//! * [`vfree`](Vmalloc::vfree): in one node-lock section, check it is the start of a live
//!   `vmalloc` area (else a typed error, nothing changed) and remove it ([`Kva::remove_if`]);
//!   clear the PTEs handing each frame back; [`Kva::free_lazy`]. No flush.
//!   [`vfree_atomic`](Vmalloc::vfree_atomic) defers all that to a worker through
//!   [`Kva::defer`].
//! * [`vmap`](Vmalloc::vmap)/`vunmap`, [`ioremap`](Vmalloc::ioremap)/`iounmap`,
//!   [`get_vm_area`](Vmalloc::get_vm_area)/`alloc_vm_area`/`free_vm_area` follow the same
//!   pattern with caller-owned or device frames.
//! * [`vm_map_ram`](Vmalloc::vm_map_ram): up to [`VMAP_MAX_ALLOC`] pages come from per-CPU
//!   vmap blocks of [`VMAP_BBMAP_BITS`] pages (bump allocation, freed pieces unmapped and
//!   marked dirty, a fully dirty block going to the lazy list);
//!   [`vm_unmap_aliases`](Vmalloc::vm_unmap_aliases) flushes every dirty range once and
//!   purges.
//! * [`vmalloc_huge`](Vmalloc::vmalloc_huge) maps 2 MiB leaves over 2 MiB frame runs (4 KiB
//!   pages when no run is left); [`vrealloc`](Vmalloc::vrealloc) resizes in place when it
//!   can, else moves; [`alloc_thread_stack_node`](Vmalloc::alloc_thread_stack_node) hands out
//!   guarded kernel stacks, kept mapped in a per-CPU cache between threads.
//! * [`vread`](Vmalloc::vread)/[`vwrite`](Vmalloc::vwrite) copy through the installed TLB's
//!   model as the calling CPU (or a page walk), holes as zeros (Linux 3.7's `/dev/kmem`
//!   semantics); [`remap_vmalloc_range`](Vmalloc::remap_vmalloc_range) maps `VM_USERMAP`
//!   pages into a user space with a reference per frame;
//!   [`vmallocinfo`](Vmalloc::vmallocinfo), [`meminfo`](Vmalloc::meminfo) and
//!   [`stats`](Vmalloc::stats) print `/proc/vmallocinfo` and the `/proc/meminfo` lines as
//!   Linux 6.x does; [`check_idle`](Vmalloc::check_idle) is the leak check.
//!
//! # Invariants
//!
//! * **No premature reuse.** A VA range is handed out again only after a TLB flush covering
//!   its last unmapping has completed: ranges leave the lazy lists and batches only through a
//!   purge, which merges them back only after its flush returned; vmap-block pieces are never
//!   reused inside a block, and a block's range goes back through the lazy list. (Checked in
//!   the stress tests with [`TlbModel::holds_any`] right after every allocation.)
//! * Live areas never overlap; each is in exactly one shard's busy lookup; every byte of the
//!   range is in exactly one of: a free tree, a node's pool, a busy area, or "pending"
//!   (removed, lazy or being purged) ([`Kva::check_invariants`]).
//! * Frames of a `vmalloc` area are referenced only by its PTEs (plus one reference per user
//!   mapping made by `remap_vmalloc_range`); `vmap`, `vm_map_ram` and `ioremap` never own
//!   frames. Nothing leaks on any error path: frames, page tables and VA are exactly as before
//!   a failed call (tested with fault injection at every frame allocation).
//! * The PML4-level tables of the vmalloc range exist from construction, so every address
//!   space made by [`Vmalloc::new_user_space`] sees every kernel mapping without a sync.
//!
//! # Locking
//!
//! Every lock is a `Mutex` over the platform's `RawMutex` (see
//! [`Platform`](pagetable::platform::Platform): it must be a `lock_api::RawMutexFair`, whose
//! fair unlock may be a plain unlock; a host that calls the allocator in interrupt context
//! must give a lock that disables interrupts). Whether a contended lock spins or sleeps is
//! that lock's choice.
//!
//! * **Calls that may wait long.** Allocating and freeing (the `vmalloc` family, `vfree`,
//!   `vmap`/`vunmap`, `ioremap`/`iounmap`, `vm_map_ram`/`vm_unmap_ram`, [`Kva::alloc`],
//!   [`Kva::remove`], ...) take a shard's node and free-tree locks and the frame
//!   allocator's, each for a short bounded section, but may also wait for a whole purge (a
//!   TLB flush plus the merge of everything lazy): an allocation that finds no space
//!   reclaims under the purge lock and runs the notifiers; a free that crosses the lazy
//!   threshold runs the purge itself in [`PurgeMode::Inline`] and [`PurgeMode::Synchronous`]
//!   (or when nobody else can: no worker thread and no [`PurgeWork`] hook) unless a kicked
//!   purge is running already (it then waits only for an explicit purge in progress); [`Vmalloc::purge_vmap_area_lazy`], [`Kva::purge`] and
//!   [`Vmalloc::vm_unmap_aliases`] wait for the purge lock and for deferred frees in flight.
//!   Call them only where the caller may wait, as Linux's `vmalloc` and `vfree` may sleep.
//! * **Atomic context.** [`Vmalloc::vfree_atomic`] ([`Kva::defer`]) takes no allocator lock
//!   and never purges or flushes: it pushes the address on the calling CPU's lock-free list
//!   (one 16-byte heap allocation) and, when that list was empty, posts a wake-up (the
//!   [`PurgeWork::schedule_deferred`] hook, or a few instructions under the purge workers'
//!   scheduler mutex). [`Kva::free_lazy`] and [`Kva::remove_free_lazy`] take only the
//!   area's node lock (and, when the node's batch is full, make a lock-free push on the
//!   shard's list), and
//!   in [`PurgeMode::Background`] with workers or a hook its threshold kick is a wake-up too.
//! * **Callbacks** (the deferred-free handler, the allocation-failure notifiers,
//!   [`Kva::for_each_busy`]'s closure) run with no allocator lock held and may call back into
//!   the allocator; the closures of [`Kva::set_info`] and [`Kva::remove_if`] run under a
//!   shard's node lock and must not. [`PurgeWork`]'s methods are called with no lock held and
//!   must only queue the work.
//! * **Lock order against the caller's locks**: apart from the `set_info` / `remove_if`
//!   closures, the allocator calls back into the caller only with none of its locks held, so
//!   its locks are innermost. One rule remains: a lock the caller holds across an
//!   allocation, a purge or `vm_unmap_aliases` must not be taken by its notifiers or its
//!   deferred-free handler (the call may run the notifiers on this thread, or wait for a
//!   drain that runs the handler on a worker).
//! * **Ownership**: only an area's owner maps or unmaps inside it (the page-table crate's
//!   ownership rule). Calls on an area another thread frees at the same time (`vread`,
//!   `vwrite`, `remap_vmalloc_range`, a racing double free) are use-after-free bugs of the
//!   caller, as in Linux: memory safe here (the arena is atomic words), but not meaningful.
//!
//! The internal rules (every lock, its order, every atomic's ordering) are written once in
//! `docs/ARCHITECTURE.md`, section *Locking and memory ordering*.
//!
//! # Features
//!
//! * `std` (default): the purge worker threads, the std platform (parking_lot locks, thread
//!   CPU ids), the TLB model and the mmap arena of `VmallocConfig::default()`. Without it the
//!   crate is `no_std` + `alloc`: purges run on the thread that triggers them unless the
//!   host gives a [`PurgeWork`] hook.
//! * `loom`: every atomic, lock and thread goes through loom, for the loom models (implies
//!   `std`).
//!
// Links to what exists only with `std`: to the item with it, to *Features* without it.
#![cfg_attr(
    feature = "std",
    doc = "[`TlbModel::holds_any`]: pagetable::TlbModel::holds_any"
)]
#![cfg_attr(not(feature = "std"), doc = "[`TlbModel::holds_any`]: crate#features")]
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

/// What the `std` prelude would give, for the `no_std` build.
#[allow(unused_imports)]
mod prelude {
    pub(crate) use alloc::boxed::Box;
    pub(crate) use alloc::format;
    pub(crate) use alloc::string::{String, ToString};
    pub(crate) use alloc::vec;
    pub(crate) use alloc::vec::Vec;
}

mod sync;

// Layer 1, the KVA allocator: everything under `kva/`.
mod kva;

// Layer 2, the vmalloc API over the KVA allocator and the page tables.
mod access;
mod array;
mod error;
mod family;
mod huge;
mod idle;
mod info;
mod instance;
mod ioremap;
mod lookup;
mod map_ram;
mod remap;
mod stack;
mod valloc;
mod vmap;
mod vmap_block;
mod vrealloc;

// One path per item: the modules are private and everything public is re-exported here.
pub use error::VmallocError;
pub use idle::IdleError;
pub use info::{VmallocStats, vmallocinfo_line};
pub use instance::{
    DEFAULT_ARENA_BYTES, EarlyArea, SMALL_KVA_BYTES, TlbChoice, VFREE_ATOMIC_ERRORS_KEPT, Vmalloc,
    VmallocConfig,
};
pub use kva::area::{AreaInfo, RemovedArea, VmArea};
pub use kva::config::{
    KvaConfig, MAX_LAZY_MAX_PAGES, MAX_NR_CPUS, PurgeMode, VMALLOC_END, VMALLOC_START,
    linux_lazy_max_pages,
};
pub use kva::flags::VmFlags;
pub use kva::purge::{PurgeReport, RESCHED_EVERY};
pub use kva::{Kva, KvaError, KvaStats, MAX_CLASS_PAGES, NotifierId, PurgeWork};
pub use remap::PAGE_USER;
pub use stack::{NR_CACHED_STACKS, THREAD_SIZE, ThreadStack};
pub use valloc::PMD_SIZE;
pub use valloc::{
    Gfp, NUMA_NO_NODE, PAGE_KERNEL, PAGE_KERNEL_EXEC, PAGE_KERNEL_IO, PAGE_KERNEL_RO,
};
pub use vmap::{IOREMAP_MAX_ORDER, ioremap_align};
pub use vmap_block::{VMAP_BBMAP_BITS, VMAP_BLOCK_SIZE, VMAP_MAX_ALLOC};

/// The KVA layer's building blocks, for the fuzz targets, the loom models and benchmarks
/// that drive them alone (the augmented AVL tree, the free-area tree, the busy lookup, the
/// lock-free llist). Not part of the supported API: their shape follows the allocator's
/// needs and may change without notice.
#[doc(hidden)]
pub mod internals {
    pub use crate::kva::{busy, free_tree, llist, tree};
}
