//! x86_64 page tables over a physical memory arena.
//!
//! (Design statement to be completed as the modules land.)

pub mod cpu;
pub mod sync;
