//! [`KvaError`]: why a KVA-layer operation ([`Kva`](crate::Kva)) failed.

/// Why a [`Kva`](crate::Kva) operation failed; nothing was changed. Addresses and sizes are in
/// bytes. The vmalloc layer's [`VmallocError`](crate::VmallocError) has a variant of the same
/// name and fields for each (`From<KvaError>`), plus its own (page tables, frames, kinds of
/// areas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvaError {
    /// No free range of `size` bytes aligned to `align` exists in `[start, end)`, even after a
    /// synchronous purge of the lazily freed areas and the registered notifiers.
    #[error(
        "vmap allocation for size {size:#x} (align {align:#x}) failed in [{start:#x}, {end:#x}): \
         no space left"
    )]
    NoSpace {
        /// Requested size in bytes (guard page included).
        size: u64,
        /// Requested alignment in bytes.
        align: u64,
        /// Lower bound of the searched range.
        start: u64,
        /// Upper bound (exclusive) of the searched range.
        end: u64,
    },
    /// The size is zero or not a whole number of pages.
    #[error("invalid size {size:#x}: must be a non-zero multiple of the page size")]
    InvalidSize {
        /// The rejected size in bytes.
        size: u64,
    },
    /// The alignment is not a power of two (alignments below a page mean a page).
    #[error("invalid alignment {align:#x}: must be a power of two")]
    InvalidAlign {
        /// The rejected alignment in bytes.
        align: u64,
    },
    /// The range is empty, unaligned, or outside the allocator's range.
    #[error("invalid range [{start:#x}, {end:#x})")]
    InvalidRange {
        /// Start of the rejected range.
        start: u64,
        /// End (exclusive) of the rejected range.
        end: u64,
    },
    /// No live area starts (or lies) at `addr`.
    #[error("no allocated area at {addr:#x}")]
    NotAllocated {
        /// The address looked up.
        addr: u64,
    },
    /// `addr` lies inside a live area but is not its start.
    #[error("address {addr:#x} is inside the area starting at {start:#x}, not its start")]
    NotStartOfArea {
        /// The address given.
        addr: u64,
        /// Start of the area containing it.
        start: u64,
    },
    /// The area starting at `addr` was already freed and waits for a purge.
    #[error("double free of the area at {addr:#x} (already freed, waiting for a purge)")]
    DoubleFree {
        /// The address given.
        addr: u64,
    },
    /// A configuration value above what the allocator supports.
    #[error("invalid configuration: {what} = {value} (at most {max})")]
    InvalidConfig {
        /// The field.
        what: &'static str,
        /// The value given.
        value: u64,
        /// The largest value accepted.
        max: u64,
    },
    /// The host refused a purge worker thread at construction.
    #[error("could not start purge worker {index}: the host refused the thread")]
    WorkerSpawn {
        /// Index of the worker that could not be started.
        index: usize,
    },
}
