//! Growing a live area in place ([`Kva::try_extend`]): what `vrealloc` does when the range
//! after an area is free; and its undo ([`Kva::trim_unused`]).
//!
//! # How it works
//!
//! The range `[end, new_end)` after the area is carved out of the free trees of the shards it
//! crosses, all or nothing, under their free locks in ascending order (the same step as
//! [`Kva::alloc_at`]); only free-tree space counts: space in a node's pools or waiting in a
//! lazy batch is not taken (no purge is run for it). Then, under the node lock of the area's
//! shard, the busy entry gets the new end, the node's byte count grows,
//! and the boundary-crossing counts follow. Free-tree space was flushed before it was merged
//! there, so the grown range needs no flush.
//!
//! # Locking
//!
//! Shard free locks (ascending), released; then the area's shard node lock alone. Between
//! the two the carved range belongs to this call only (it is in no tree), and the area is its
//! caller's (only an area's owner resizes or frees it).

#[allow(unused_imports)]
use crate::prelude::*;
use pagetable::platform::Platform;
use pagetable::{PAGE_SIZE, VirtAddr};

use super::{Inner, Kva};
use crate::kva::error::KvaError;

impl<P: Platform> Kva<P> {
    /// Grow the live area starting at `start` so that it ends at `new_end` (page aligned,
    /// inside the range), taking `[end, new_end)` from the free space: Linux has no such
    /// call; `vrealloc` uses it to grow in place. Only space in the free trees is taken
    /// (not a pool's, not a lazy area's), and nothing is flushed (that space was
    /// flushed before it became free). `new_end` equal to the current end is a no-op.
    ///
    /// Errors, changing nothing: no live area starts at `start` (as for [`Kva::remove`]),
    /// `new_end` below the current end, unaligned or outside the range
    /// ([`KvaError::InvalidRange`]), or part of `[end, new_end)` not free
    /// ([`KvaError::NoSpace`] with that range).
    ///
    /// The caller owns the area: nobody may free or resize it meanwhile.
    pub fn try_extend(&self, start: VirtAddr, new_end: u64) -> Result<(), KvaError> {
        self.inner.try_extend(start.as_u64(), new_end)
    }

    /// Undo a [`Kva::try_extend`]: the live area starting at `start` ends at `new_end` again
    /// (above `start`, below its end) and `[new_end, end)` goes straight back to the free
    /// space, with no flush. Errors as for [`Kva::try_extend`], nothing changed.
    ///
    /// # Safety
    ///
    /// No CPU may hold a TLB entry for any page of `[new_end, end)`: nothing was mapped
    /// there since the area got it (e.g. a failed map right after `try_extend`), or every
    /// mapping of it has been flushed since it was unmapped. As for [`Kva::free_unused`], the
    /// range may be handed out again at once.
    pub unsafe fn trim_unused(&self, start: VirtAddr, new_end: u64) -> Result<(), KvaError> {
        self.inner.trim_unused(start.as_u64(), new_end)
    }
}

impl<P: Platform> Inner<P> {
    fn try_extend(&self, start: u64, new_end: u64) -> Result<(), KvaError> {
        let i = self
            .shards
            .index_of(start)
            .ok_or(KvaError::NotAllocated { addr: start })?;
        let Some((_, end)) = self.shards.get(i).lock_node().bounds(start) else {
            return Err(self.miss_error(start, true));
        };
        if new_end == end {
            return Ok(());
        }
        if new_end < end || new_end % PAGE_SIZE != 0 || new_end > self.cfg.end {
            return Err(KvaError::InvalidRange {
                start: end,
                end: new_end,
            });
        }
        let no_space = KvaError::NoSpace {
            size: new_end - end,
            align: PAGE_SIZE,
            start: end,
            end: new_end,
        };
        if !self.shards.alloc_exact(end, new_end) {
            return Err(no_space);
        }
        let shard = self.shards.get(i);
        let grown = {
            let mut node = shard.lock_node();
            match node.bounds(start) {
                Some((_, e)) if e == end => node.set_end(start, new_end).is_some(),
                _ => false,
            }
        };
        if !grown {
            // The area changed under us (its owner's bug): give the range back.
            self.shards.free_range(end, new_end);
            return Err(KvaError::NotAllocated { addr: start });
        }
        if new_end > shard.end() {
            self.shards.account_crossing(start, new_end, true);
            if end > shard.end() {
                self.shards.account_crossing(start, end, false);
            }
        }
        Ok(())
    }

    fn trim_unused(&self, start: u64, new_end: u64) -> Result<(), KvaError> {
        let i = self
            .shards
            .index_of(start)
            .ok_or(KvaError::NotAllocated { addr: start })?;
        let shard = self.shards.get(i);
        let end = {
            let mut node = shard.lock_node();
            let Some((_, end)) = node.bounds(start) else {
                drop(node);
                return Err(self.miss_error(start, true));
            };
            if new_end <= start || new_end >= end || new_end % PAGE_SIZE != 0 {
                return Err(KvaError::InvalidRange {
                    start: new_end,
                    end,
                });
            }
            node.set_end(start, new_end);
            end
        };
        if end > shard.end() {
            self.shards.account_crossing(start, end, false);
            if new_end > shard.end() {
                self.shards.account_crossing(start, new_end, true);
            }
        }
        // The caller guarantees no translation of the tail survives: straight back.
        self.shards.free_range(new_end, end);
        Ok(())
    }
}
