//! Read-only queries: [`AddressSpace::translate`] and the [`Mappings`] iterator.
//!
//! Both are lock-free walks with `Acquire` loads; under concurrent changes of the range they
//! see each entry either before or after the change (entries are single atomic words), never
//! a torn value. The iterator keeps the leaf table it is scanning, so a dense range costs one
//! root walk per leaf table; missing subtrees are skipped a whole table span at a time.

use crate::addr::{PhysAddr, VirtAddr};
use crate::entry::{PageTableEntry, PageTableFlags};
use crate::page::PAGE_SIZE;
use crate::platform::{DefaultPlatform, Platform};
use crate::sync::Ordering;
use crate::tlb::{LINEAR_END, from_lin, lin};

use super::AddressSpace;
use super::walk::{entry_span, index};

/// First linear address of the upper half.
const UPPER_HALF: u64 = 1 << 47;

/// Where a virtual address leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The physical address of the translated byte.
    pub pa: PhysAddr,
    /// The leaf's flags.
    pub flags: PageTableFlags,
    /// The leaf's size in bytes (4 KiB, 2 MiB or 1 GiB).
    pub size: u64,
}

/// One leaf of an address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mapping {
    /// First virtual address of the leaf.
    pub va: VirtAddr,
    /// First physical address of the leaf.
    pub pa: PhysAddr,
    /// The leaf's size in bytes.
    pub size: u64,
    /// The leaf's flags.
    pub flags: PageTableFlags,
}

/// Iterator over the leaves intersecting a range, in address order (see
/// [`AddressSpace::mappings`]).
#[derive(Debug)]
pub struct Mappings<'a, P: Platform = DefaultPlatform> {
    space: &'a AddressSpace<P>,
    /// Next linear address to look at.
    next: u64,
    /// Linear end of the range.
    end: u64,
    /// The entries of the leaf table being scanned that are still to look at: those from
    /// `next` up to the end of the range or of the table, in order (empty when no leaf table
    /// is being scanned).
    rest: core::slice::Iter<'a, PageTableEntry>,
}

/// The 4 KiB leaf at linear address `at` held by entry `e` of a leaf table, if present
/// (the per-page step shared by `next` and `fold`).
#[inline(always)]
fn page_mapping(at: u64, e: &PageTableEntry) -> Option<Mapping> {
    let p = e.load(Ordering::Acquire);
    p.is_present().then(|| Mapping {
        va: from_lin(at),
        pa: p.addr(),
        size: PAGE_SIZE,
        flags: p.flags(),
    })
}

impl<P: Platform> Iterator for Mappings<'_, P> {
    type Item = Mapping;

    fn next(&mut self) -> Option<Mapping> {
        loop {
            // The rest of the current leaf table: a slice iterator, so a dense range costs
            // one load and one presence test per page (no address or bounds arithmetic per
            // entry; this loop is the hot spot of the fuzz harnesses' whole-window checks).
            let mut l = self.next;
            for e in self.rest.by_ref() {
                let at = l;
                // Cannot wrap: `l` ends at most at a leaf table's end, below `LINEAR_END`
                // (2^48). A checked add would cost a compare per entry in a build with
                // overflow checks (in the fuzz build, a call into a comparison hook).
                l = l.wrapping_add(PAGE_SIZE);
                if let Some(m) = page_mapping(at, e) {
                    self.next = l;
                    return Some(m);
                }
            }
            self.next = l;
            if self.next >= self.end {
                return None;
            }
            // Walk down from the root to the first leaf or leaf table at or after `next`.
            let mut t = self.space.root_table();
            let mut level = 4;
            loop {
                let span = entry_span(level);
                let p = t[index(self.next, level)].load(Ordering::Acquire);
                let skip = |next: u64| (next & !(span - 1)) + span;
                if !p.is_present() || (level == 4 && p.is_huge()) {
                    // Skip the whole missing subtree.
                    self.next = skip(self.next);
                    break;
                }
                if p.is_huge() {
                    let ls = self.next & !(span - 1);
                    self.next = ls + span;
                    return Some(Mapping {
                        va: from_lin(ls),
                        pa: PhysAddr::new_truncate(p.addr().as_u64() & !(span - 1)),
                        size: span,
                        flags: p.flags(),
                    });
                }
                let Ok(child) = self.space.child(p) else {
                    // A corrupted entry: nothing readable below it.
                    self.next = skip(self.next);
                    break;
                };
                if level == 2 {
                    // Scan this leaf table from `next` to the end of the range or the table.
                    let stop = self.end.min(skip(self.next));
                    let i = index(self.next, 1);
                    let n = (stop - self.next).div_ceil(PAGE_SIZE) as usize;
                    self.rest = child.entries()[i..i + n].iter();
                    break;
                }
                t = child;
                level -= 1;
            }
        }
    }

    /// The same leaves as repeated [`next`](Iterator::next), handed to `f` from one loop: a
    /// leaf table's 4 KiB leaves cost no call each (a caller comparing a dense range page by
    /// page, as the fuzz harnesses' checks do, saves a call and its prologue per page).
    fn fold<B, F: FnMut(B, Mapping) -> B>(mut self, init: B, mut f: F) -> B {
        let mut acc = init;
        loop {
            let mut l = self.next;
            for e in self.rest.by_ref() {
                let at = l;
                l = l.wrapping_add(PAGE_SIZE); // see `next`
                if let Some(m) = page_mapping(at, e) {
                    acc = f(acc, m);
                }
            }
            self.next = l;
            // The next leaf table (its first leaf) or huge leaf, or the end.
            match self.next() {
                Some(m) => acc = f(acc, m),
                None => return acc,
            }
        }
    }
}

impl<P: Platform> AddressSpace<P> {
    /// Where `va` leads: the physical address of that byte, the leaf's flags and size.
    #[inline]
    pub fn translate(&self, va: VirtAddr) -> Option<Translation> {
        let l = lin(va);
        let leaf = self.leaf(l)?;
        Some(Translation {
            pa: PhysAddr::new_truncate(leaf.base() + (l & (leaf.size - 1))),
            flags: leaf.pte.flags(),
            size: leaf.size,
        })
    }

    /// The physical address of the 4 KiB leaf entry (the PTE slot, 8 bytes) that maps `va`,
    /// if the leaf table covering `va` exists: what Linux 3.7's `alloc_vm_area` hands back
    /// through its `ptes` argument after building the tables of an area
    /// ([`AddressSpace::populate`]). `None` when a table on the way is missing or a huge leaf
    /// maps `va`. The slot is an atomic 64-bit word of the arena: writing it is writing the
    /// page table, under the same ownership rule as [`AddressSpace::map`].
    pub fn pte_slot(&self, va: VirtAddr) -> Option<PhysAddr> {
        let l = lin(va);
        let mut t = self.root_table();
        for level in [4, 3, 2] {
            let p = t[super::walk::index(l, level)].load(crate::sync::Ordering::Acquire);
            if !p.is_present() || p.is_huge() {
                return None;
            }
            if level == 2 {
                return Some(p.addr() + super::walk::index(l, 1) as u64 * 8);
            }
            t = self.child(p).ok()?;
        }
        None
    }

    /// The leaves intersecting `[va, va + len)`, in address order (a huge leaf is reported
    /// once, with its own start, even if the range starts inside it). The range is rounded
    /// out to pages and clipped at the end of `va`'s half of the address space.
    pub fn mappings(&self, va: VirtAddr, len: u64) -> Mappings<'_, P> {
        let s = lin(va) & !(PAGE_SIZE - 1);
        let half_end = if s < UPPER_HALF {
            UPPER_HALF
        } else {
            LINEAR_END
        };
        let e = lin(va).saturating_add(len).min(half_end);
        Mappings {
            space: self,
            next: s,
            end: e,
            rest: [].iter(),
        }
    }
}
