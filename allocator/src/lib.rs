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
//! requests; [`free_tree`]), busy
//! lookup ([`busy`]) and lock-free lazy list ([`llist`]), each behind its own lock (Linux
//! 6.9's vmap nodes). Per-CPU caches hold small free areas and area descriptors, so a small
//! allocation or free touches only the calling CPU's slot and one shard's busy lock, and
//! allocates nothing. Freeing is lazy: [`Kva::free_lazy`] pushes the area on its shard's
//! llist and counts its pages; past `lazy_max_pages` (`fls(nr_cpus) * 32 MiB` of pages) a
//! purge takes every list with one `del_all`, flushes the union range ONCE, and merges the
//! areas back (split across the per-CPU purge workers, [`purge`]). An allocation that finds
//! no space purges synchronously and retries, then calls the registered notifiers, then
//! fails with [`VmallocError::NoSpace`].
//!
//! **Layer 2, the vmalloc API** ([`Vmalloc`]):
//!
//! * `vmalloc` ([`alloc`]): size to pages; area = pages + a guard page; `Kva::alloc` with the
//!   area's info (kind, pages, caller); frames from the frame allocator's per-CPU cache (on
//!   the stack up to 16 pages: no heap allocation) in the requested zone, zeroed if asked;
//!   one page-table map call. All or nothing: a failure frees the frames and gives the
//!   never-mapped VA straight back.
//! * `vfree`: check it is the start of a live `vmalloc` area (else a typed error, nothing
//!   changed), `Kva::remove`, clear the PTEs handing each frame back, `Kva::free_lazy`. No
//!   flush. `vfree_atomic` defers that to a worker through `Kva::defer`.
//! * `vmap`/`vunmap`, `ioremap`/`iounmap`, `get_vm_area`/`alloc_vm_area`/`free_vm_area`
//!   ([`vmap`]) follow the same pattern with caller-owned or device frames.
//! * `vm_map_ram` ([`vmap_block`]): up to 64 pages come from per-CPU 1024-page vmap blocks
//!   (bump allocation, freed pieces unmapped and marked dirty, a fully dirty block going to
//!   the lazy list); `vm_unmap_aliases` flushes every dirty range once and purges.
//! * `vread`/`vwrite` copy through the TLB model as the calling CPU, holes as zeros
//!   (Linux 3.7's `/dev/kmem` semantics); `remap_vmalloc_range` ([`remap`]) maps
//!   `VM_USERMAP` pages into a user space with a reference per frame; `vmallocinfo` and
//!   `stats` ([`info`]) print `/proc/vmallocinfo` and the `/proc/meminfo` lines.
//!
//! # Invariants
//!
//! * **No premature reuse.** A VA range is handed out again only after a TLB flush covering
//!   its last unmapping has completed: ranges leave the lazy lists only through a purge, which
//!   merges them back only after its flush returned; vmap-block pieces are never reused
//!   inside a block, and a block's range goes back through the lazy list. (Checked in the
//!   stress tests with [`TlbModel::holds_any`](pagetable::TlbModel::holds_any) right after
//!   every allocation.)
//! * Live areas never overlap; each is in exactly one shard's busy lookup; every byte of the
//!   range is in exactly one of: a free tree, a per-CPU cache, a busy area, or "pending"
//!   (removed, lazy or being purged) ([`Kva::check_invariants`]).
//! * Frames of a `vmalloc` area are referenced only by its PTEs (plus one reference per user
//!   mapping made by `remap_vmalloc_range`); `vmap`, `vm_map_ram` and `ioremap` never own
//!   frames. Nothing leaks on any error path: frames, page tables and VA are exactly as before
//!   a failed call (tested with fault injection at every frame allocation).
//! * The PML4-level tables of the vmalloc range exist from construction, so every address
//!   space made by [`Vmalloc::new_user_space`] sees every kernel mapping without a sync.
//!
//! # Locking rules (outer before inner)
//!
//! * KVA: purge lock -> per-CPU slot -> shard free-tree locks (ascending) -> descriptor pool;
//!   shard busy locks are leaves. Lazy lists and deferred-free lists are lock-free (llist
//!   `Release` push / `Acquire` `del_all`). Callbacks (deferred-free handler, notifiers,
//!   `for_each_busy`) run with no allocator lock held.
//! * vmap blocks: `vm_unmap_aliases` mutex -> per-CPU block queue -> block; block-map shard ->
//!   block. No block lock is held while calling into the `Kva` (whose failure notifier takes
//!   queue and block locks).
//! * Page tables take no lock for map/unmap: an area's owner alone changes its leaves;
//!   intermediate tables are installed by compare-exchange. The TLB model locks one CPU's
//!   cache per access; a flush takes every CPU's lock in turn (the IPI acknowledgement).
//! * Frame allocator: per-CPU cache -> pool.
//! * Every atomic, lock and thread comes from [`sync`] (std/parking_lot, or loom's with the
//!   `loom` feature).
//!
//! Calls that operate on an area another thread frees at the same time (`vread`, `vwrite`,
//! `remap_vmalloc_range` of a freed area, a racing double free) are use-after-free bugs of
//! the caller, as in Linux: memory safe here (the arena is atomic words), but not meaningful.

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
mod error;
mod info;
mod instance;
mod ioremap;
mod remap;
mod valloc;
mod vmap;
mod vmap_block;

// One path per item: the modules are private and everything public is re-exported here.
pub use error::VmallocError;
pub use info::{VmallocStats, vmallocinfo_line};
pub use instance::{
    DEFAULT_ARENA_BYTES, EarlyArea, SMALL_KVA_BYTES, TlbChoice, Vmalloc, VmallocConfig,
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
pub use valloc::{Gfp, PAGE_KERNEL, PAGE_KERNEL_EXEC, PAGE_KERNEL_IO, PAGE_KERNEL_RO};
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
