//! Seed 003's KVA allocator: Linux 3.x `alloc_vmap_area`, `__free_vmap_area` and the lazy
//! purge, faithfully, as the baseline the sharded design is measured against.
//!
//! How it works (the names are the kernel's):
//! - `vmap_area_lock` (`LegacyKva::state`, one `Mutex`) guards everything below.
//! - `vmap_area_root`: the busy areas keyed by start (a `BTreeMap` standing in for the
//!   rb-tree; only lookups go through it).
//! - `vmap_area_list`: the same areas in address order, a doubly linked list threaded through
//!   an index arena (`Node::prev`/`next`), so insert-after and remove are O(1) and the search
//!   walk is O(areas skipped), as in the kernel.
//! - `free_vmap_cache`, `cached_hole_size`, `cached_vstart`, `cached_align`: the search cache.
//!   An allocation starts right after the cached area unless the request is more permissive
//!   than the cached one (smaller than the largest hole seen below the cache, lower `vstart`,
//!   smaller `align`), in which case the cache is dropped and the search starts from the first
//!   area whose end is at or above `ALIGN(vstart, align)` (a tree descent). From there it walks
//!   the list until `addr + size` fits before the next area, noting the largest hole it skips.
//!   No fit below `vend` -> "overflow": drop the lock, purge the lazy areas synchronously and
//!   retry once; then ask the notifiers (a retry, purge allowed again, if they freed
//!   anything); then fail.
//! - Lazy freeing (Linux 3.x): the caller has already unmapped the area; [`LegacyKva::free_lazy`]
//!   only marks it, appends it to the global purge list (`Mutex<Vec>`), and adds its pages to
//!   `vmap_lazy_nr`; past `lazy_max_pages` it tries a purge. A purge (one at a time,
//!   `purge_lock`; try-lock for the opportunistic ones) takes the whole list, issues ONE TLB
//!   flush of the union range, then removes every area from the tree and the list under
//!   `vmap_area_lock` (`__free_vmap_area`, which moves `free_vmap_cache` back to the
//!   predecessor of a freed area at or below it, and drops it when the freed area ends below
//!   `cached_vstart`). Until then a lazily freed area stays busy, so its range cannot be
//!   handed out before the flush.
//!
//! Deviations, each in the baseline's favour or forced by the setting: the `vmap_area`
//! descriptor is a slot of the arena (no `kmalloc` per allocation); `ALIGN()` that would wrap
//! past 2^64 is treated as an overflow (the C macro wraps and trips a `BUG_ON`); lookups of an
//! area to free take the lock once (the kernel takes it in `find_vmap_area` and again in
//! `remove_vm_area`).
//!
//! Lock order: `purge_lock` -> `vmap_area_lock`; the purge list's lock is a leaf (never held
//! while taking another). `vmap_lazy_nr` and the counters are `Relaxed` atomics: they only
//! trigger purges and feed statistics; every structural change happens under a lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use pagetable::PAGE_SIZE;
use pagetable::TlbFlush;
use pagetable::VirtAddr;
use parking_lot::Mutex;

/// "No area" in the index-linked list.
const NIL: u32 = u32::MAX;

/// A notifier of the `vmap_notify_list`: asked to free virtual space when an allocation is
/// about to fail; returns how much it freed (anything non-zero makes the allocator retry).
pub type Notifier = Box<dyn Fn() -> u64 + Send + Sync>;

/// Why the legacy allocator refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvaError {
    /// No hole fits, after the purge-and-retry and the notifiers.
    #[error(
        "vmap allocation for size {size:#x} (align {align:#x}) failed: use vmalloc=<size> to increase size"
    )]
    NoSpace {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
    },
    /// Zero or unaligned size, alignment not a power of two, or an empty range.
    #[error("invalid request: size {size:#x}, align {align:#x}, range [{vstart:#x}, {vend:#x})")]
    Invalid {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
        /// Lower bound.
        vstart: u64,
        /// Upper bound.
        vend: u64,
    },
    /// No busy area starts at this address, or it holds no `vm` of the wanted kind.
    #[error("trying to free nonexistent vm area {addr:#x}")]
    NotFound {
        /// The address.
        addr: u64,
    },
}

/// One `vmap_area`.
#[derive(Debug)]
struct Node<V> {
    va_start: u64,
    va_end: u64,
    prev: u32,
    next: u32,
    /// The `vm` pointer: what the layer above attached (`None` before `setup_vmalloc_vm` and
    /// after `remove_vm_area`).
    vm: Option<V>,
    /// `VM_LAZY_FREE`: on the purge list.
    lazy: bool,
}

/// Everything `vmap_area_lock` protects.
#[derive(Debug)]
struct State<V> {
    nodes: Vec<Node<V>>,
    free_slots: Vec<u32>,
    root: BTreeMap<u64, u32>,
    head: u32,
    tail: u32,
    free_vmap_cache: u32,
    cached_hole_size: u64,
    cached_vstart: u64,
    cached_align: u64,
    /// List nodes visited by search walks (statistics, and the O(skipped) tests).
    walk_steps: u64,
}

/// A busy area detached from its `vm` by [`LegacyKva::take_vm`], to be handed to
/// [`LegacyKva::free_lazy`] once unmapped.
#[derive(Debug)]
#[must_use = "a detached area stays busy until free_lazy"]
pub struct Detached {
    idx: u32,
    start: u64,
    end: u64,
}

impl Detached {
    /// First address of the area.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// End (exclusive) of the area.
    pub fn end(&self) -> u64 {
        self.end
    }
}

/// Counters of a [`LegacyKva`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvaStats {
    /// Areas in the tree (live and lazily freed).
    pub busy_areas: u64,
    /// Pages waiting on the purge list.
    pub lazy_pages: u64,
    /// Purges that freed at least one area.
    pub purges: u64,
    /// List nodes visited by search walks since creation.
    pub walk_steps: u64,
}

/// The Linux 3.x KVA allocator over `[start, end)`.
pub struct LegacyKva<V> {
    state: Mutex<State<V>>,
    purge_list: Mutex<Vec<(u32, u64, u64)>>,
    purge_lock: Mutex<()>,
    vmap_lazy_nr: AtomicU64,
    lazy_max_pages: u64,
    purges: AtomicU64,
    flush: Arc<dyn TlbFlush>,
    notifiers: Mutex<Vec<Notifier>>,
}

/// `ALIGN(x, a)` for a power-of-two `a`, `None` where the C macro would wrap.
fn align_up(x: u64, a: u64) -> Option<u64> {
    Some(x.checked_add(a - 1)? & !(a - 1))
}

/// Linux 3.x `lazy_max_pages()`: `fls(num_online_cpus()) * 32 MiB / PAGE_SIZE`.
pub fn lazy_max_pages(nr_cpus: usize) -> u64 {
    u64::from(usize::BITS - nr_cpus.max(1).leading_zeros()) * (32 << 20) / PAGE_SIZE
}

impl<V> State<V> {
    /// `__insert_vmap_area`: into the tree and after its tree predecessor in the list.
    fn insert(&mut self, va_start: u64, va_end: u64) -> u32 {
        let prev = self
            .root
            .range(..va_start)
            .next_back()
            .map_or(NIL, |(_, &i)| i);
        let next = if prev == NIL {
            self.head
        } else {
            self.nodes[prev as usize].next
        };
        let node = Node {
            va_start,
            va_end,
            prev,
            next,
            vm: None,
            lazy: false,
        };
        let idx = match self.free_slots.pop() {
            Some(i) => {
                self.nodes[i as usize] = node;
                i
            }
            None => {
                self.nodes.push(node);
                (self.nodes.len() - 1) as u32
            }
        };
        if prev == NIL {
            self.head = idx;
        } else {
            self.nodes[prev as usize].next = idx;
        }
        if next == NIL {
            self.tail = idx;
        } else {
            self.nodes[next as usize].prev = idx;
        }
        self.root.insert(va_start, idx);
        idx
    }

    /// `__free_vmap_area`: fix the cache, then out of the tree and the list.
    fn free_area(&mut self, idx: u32) {
        let (va_start, va_end, prev, next) = {
            let n = &self.nodes[idx as usize];
            (n.va_start, n.va_end, n.prev, n.next)
        };
        if self.free_vmap_cache != NIL {
            if va_end < self.cached_vstart {
                self.free_vmap_cache = NIL;
            } else if va_start <= self.nodes[self.free_vmap_cache as usize].va_start {
                // rb_prev(): the list predecessor. cached_hole_size and cached_align are not
                // updated, "but it won't go very wrong".
                self.free_vmap_cache = prev;
            }
        }
        self.root.remove(&va_start);
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next as usize].prev = prev;
        }
        let n = &mut self.nodes[idx as usize];
        n.vm = None;
        n.lazy = false;
        n.prev = NIL;
        n.next = NIL;
        self.free_slots.push(idx);
    }

    /// The rb-tree descent: the lowest area whose end is at or above `addr` (one containing
    /// `addr` if there is one), or `NIL`.
    fn first_ending_at_or_above(&self, addr: u64) -> u32 {
        match self.root.range(..=addr).next_back() {
            Some((_, &i)) if self.nodes[i as usize].va_end >= addr => i,
            Some((_, &i)) => self.nodes[i as usize].next,
            None => self.head,
        }
    }

    /// One locked attempt of `alloc_vmap_area`: `Some(start)` or `None` for "overflow".
    fn try_alloc(&mut self, size: u64, align: u64, vstart: u64, vend: u64) -> Option<u64> {
        // Invalidate the cache if we have more permissive parameters.
        if self.free_vmap_cache == NIL
            || size < self.cached_hole_size
            || vstart < self.cached_vstart
            || align < self.cached_align
        {
            self.cached_hole_size = 0;
            self.free_vmap_cache = NIL;
        }
        // Record if we encounter less permissive parameters.
        self.cached_vstart = vstart;
        self.cached_align = align;

        let mut first = NIL;
        let mut addr = 0;
        if self.free_vmap_cache != NIL {
            first = self.free_vmap_cache;
            addr = align_up(self.nodes[first as usize].va_end, align)?;
            if addr < vstart {
                // goto nocache
                self.cached_hole_size = 0;
                self.free_vmap_cache = NIL;
                first = NIL;
            } else {
                addr.checked_add(size)?;
            }
        }
        if self.free_vmap_cache == NIL {
            addr = align_up(vstart, align)?;
            addr.checked_add(size)?;
            first = self.first_ending_at_or_above(addr);
        }

        // From the starting point, walk areas until a suitable hole is found.
        if first != NIL {
            loop {
                let f = &self.nodes[first as usize];
                let end = addr.checked_add(size)?;
                if !(end > f.va_start && end <= vend) {
                    break;
                }
                self.walk_steps += 1;
                if addr.saturating_add(self.cached_hole_size) < f.va_start {
                    self.cached_hole_size = f.va_start - addr;
                }
                addr = align_up(f.va_end, align)?;
                addr.checked_add(size)?;
                if f.next == NIL {
                    break;
                }
                first = f.next;
            }
        }

        // found:
        let end = addr.checked_add(size)?;
        if end > vend {
            return None;
        }
        let idx = self.insert(addr, end);
        self.free_vmap_cache = idx;
        Some(addr)
    }
}

impl<V: Send> LegacyKva<V> {
    /// A legacy allocator flushing through `flush`, purging past `lazy_max_pages` lazy pages.
    pub fn new(flush: Arc<dyn TlbFlush>, lazy_max_pages: u64) -> Self {
        Self {
            state: Mutex::new(State {
                nodes: Vec::new(),
                free_slots: Vec::new(),
                root: BTreeMap::new(),
                head: NIL,
                tail: NIL,
                free_vmap_cache: NIL,
                cached_hole_size: 0,
                cached_vstart: 0,
                cached_align: 0,
                walk_steps: 0,
            }),
            purge_list: Mutex::new(Vec::new()),
            purge_lock: Mutex::new(()),
            vmap_lazy_nr: AtomicU64::new(0),
            lazy_max_pages: lazy_max_pages.max(1),
            purges: AtomicU64::new(0),
            flush,
            notifiers: Mutex::new(Vec::new()),
        }
    }

    /// `register_vmap_purge_notifier`.
    pub fn register_notifier(&self, n: Notifier) {
        self.notifiers.lock().push(n);
    }

    /// `alloc_vmap_area(size, align, vstart, vend)`: the start of a new busy area of `size`
    /// bytes aligned to `align` inside `[vstart, vend)`, with no `vm` attached yet.
    pub fn alloc(&self, size: u64, align: u64, vstart: u64, vend: u64) -> Result<u64, KvaError> {
        if size == 0 || size % PAGE_SIZE != 0 || !align.is_power_of_two() || vstart >= vend {
            return Err(KvaError::Invalid {
                size,
                align,
                vstart,
                vend,
            });
        }
        let mut purged = false;
        loop {
            if let Some(addr) = self.state.lock().try_alloc(size, align, vstart, vend) {
                return Ok(addr);
            }
            // overflow:
            if !purged {
                self.purge_vmap_area_lazy();
                purged = true;
                continue;
            }
            let freed: u64 = self.notifiers.lock().iter().map(|n| n()).sum();
            if freed > 0 {
                purged = false;
                continue;
            }
            return Err(KvaError::NoSpace { size, align });
        }
    }

    /// `setup_vmalloc_vm`: attach `vm` to the busy area starting at `addr`.
    pub fn set_vm(&self, addr: u64, vm: V) -> Result<(), KvaError> {
        let mut st = self.state.lock();
        let idx = *st.root.get(&addr).ok_or(KvaError::NotFound { addr })?;
        let n = &mut st.nodes[idx as usize];
        if n.lazy || n.vm.is_some() {
            return Err(KvaError::NotFound { addr });
        }
        n.vm = Some(vm);
        Ok(())
    }

    /// `find_vmap_area` + `remove_vm_area`'s detach: take the `vm` of the area starting at
    /// `addr` if `accept` approves it. The area stays busy until [`LegacyKva::free_lazy`] and
    /// a purge.
    pub fn take_vm(
        &self,
        addr: u64,
        accept: impl FnOnce(&V) -> bool,
    ) -> Result<(V, Detached), KvaError> {
        let mut st = self.state.lock();
        let idx = *st.root.get(&addr).ok_or(KvaError::NotFound { addr })?;
        let n = &mut st.nodes[idx as usize];
        match &n.vm {
            Some(vm) if !n.lazy && accept(vm) => {}
            _ => return Err(KvaError::NotFound { addr }),
        }
        let vm = n.vm.take().ok_or(KvaError::NotFound { addr })?;
        // Mark it now so that a second free of the same address fails.
        n.lazy = true;
        Ok((
            vm,
            Detached {
                idx,
                start: addr,
                end: n.va_end,
            },
        ))
    }

    /// Release an area allocated by [`LegacyKva::alloc`] that never got a `vm` (a failed
    /// vmalloc), lazily like any other.
    pub fn abandon(&self, addr: u64) -> Result<(), KvaError> {
        let d = {
            let mut st = self.state.lock();
            let idx = *st.root.get(&addr).ok_or(KvaError::NotFound { addr })?;
            let n = &mut st.nodes[idx as usize];
            if n.lazy || n.vm.is_some() {
                return Err(KvaError::NotFound { addr });
            }
            n.lazy = true;
            Detached {
                idx,
                start: addr,
                end: n.va_end,
            }
        };
        self.free_lazy(d);
        Ok(())
    }

    /// `free_vmap_area_noflush`: a detached (and unmapped) area goes on the purge list;
    /// purge past the threshold.
    pub fn free_lazy(&self, d: Detached) {
        let nr = (d.end - d.start) / PAGE_SIZE;
        self.purge_list.lock().push((d.idx, d.start, d.end));
        let now = self.vmap_lazy_nr.fetch_add(nr, Ordering::Relaxed) + nr;
        if now > self.lazy_max_pages {
            self.try_purge_vmap_area_lazy();
        }
    }

    /// `try_purge_vmap_area_lazy`: purge unless another purge is running.
    pub fn try_purge_vmap_area_lazy(&self) {
        if let Some(g) = self.purge_lock.try_lock() {
            self.purge_locked(false);
            drop(g);
        }
    }

    /// `purge_vmap_area_lazy`: wait for the purge lock and purge.
    pub fn purge_vmap_area_lazy(&self) {
        let g = self.purge_lock.lock();
        self.purge_locked(false);
        drop(g);
    }

    /// `vm_unmap_aliases`-strength purge: flush even when nothing is lazy.
    pub fn purge_force_flush(&self) {
        let g = self.purge_lock.lock();
        self.purge_locked(true);
        drop(g);
    }

    /// `__purge_vmap_area_lazy` with `purge_lock` held.
    fn purge_locked(&self, force_flush: bool) {
        let list = std::mem::take(&mut *self.purge_list.lock());
        let (mut start, mut end, mut nr) = (u64::MAX, 0u64, 0u64);
        for &(_, s, e) in &list {
            start = start.min(s);
            end = end.max(e);
            nr += (e - s) / PAGE_SIZE;
        }
        if nr > 0 {
            self.vmap_lazy_nr.fetch_sub(nr, Ordering::Relaxed);
        }
        if nr > 0 {
            self.flush
                .flush_range(VirtAddr::new_truncate(start), VirtAddr::new_truncate(end));
        } else if force_flush {
            self.flush.flush_all();
        }
        if nr > 0 {
            let mut st = self.state.lock();
            for &(idx, _, _) in &list {
                st.free_area(idx);
            }
            drop(st);
            self.purges.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counters right now.
    pub fn stats(&self) -> KvaStats {
        let st = self.state.lock();
        KvaStats {
            busy_areas: st.root.len() as u64,
            lazy_pages: self.vmap_lazy_nr.load(Ordering::Relaxed),
            purges: self.purges.load(Ordering::Relaxed),
            walk_steps: st.walk_steps,
        }
    }

    /// Check the structure: the list is the tree in order, areas are disjoint, the cache
    /// points at a busy area. `Err` names the first violation.
    pub fn check_consistency(&self) -> Result<(), String> {
        let st = self.state.lock();
        let mut i = st.head;
        let mut prev = NIL;
        let mut last_end = 0u64;
        let mut n = 0usize;
        while i != NIL {
            let node = &st.nodes[i as usize];
            if node.prev != prev {
                return Err(format!("area {:#x}: broken prev link", node.va_start));
            }
            if n > 0 && node.va_start < last_end {
                return Err(format!(
                    "area {:#x} overlaps its predecessor",
                    node.va_start
                ));
            }
            if st.root.get(&node.va_start) != Some(&i) {
                return Err(format!(
                    "area {:#x} is listed but not in the tree",
                    node.va_start
                ));
            }
            last_end = node.va_end;
            prev = i;
            i = node.next;
            n += 1;
        }
        if prev != st.tail || n != st.root.len() {
            return Err(format!("list holds {n} areas, tree {}", st.root.len()));
        }
        if st.free_vmap_cache != NIL
            && st.root.get(&st.nodes[st.free_vmap_cache as usize].va_start)
                != Some(&st.free_vmap_cache)
        {
            return Err("free_vmap_cache points at a freed area".into());
        }
        Ok(())
    }

    /// The search cache: (cached area, `cached_hole_size`, `cached_vstart`, `cached_align`).
    #[cfg(all(test, not(feature = "loom")))]
    fn cache(&self) -> (Option<(u64, u64)>, u64, u64, u64) {
        let st = self.state.lock();
        let c = (st.free_vmap_cache != NIL).then(|| {
            let n = &st.nodes[st.free_vmap_cache as usize];
            (n.va_start, n.va_end)
        });
        (c, st.cached_hole_size, st.cached_vstart, st.cached_align)
    }
}

#[cfg(all(test, not(feature = "loom")))]
mod tests;
