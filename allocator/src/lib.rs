//! vmalloc: Linux's kernel-virtual-address allocator in Rust.
//!
//! (Design statement to be completed as the modules land.)

pub use pagetable::sync;
