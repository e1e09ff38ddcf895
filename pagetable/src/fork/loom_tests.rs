//! Loom model of a copy's lock breaks against a write fault on the source: every
//! interleaving of the two ends with consistent entries and frame references.
//!
//! (That a waiter parked on a page-table lock gets it at the next batch boundary rests on
//! parking_lot's fair unlock, which loom's mutex does not model: loom's `yield_now` only
//! forces one switch. `fork::tests::lock_break_lets_a_waiter_in` checks it with real threads.)

use super::*;
use crate::addr::PhysAddr;
use crate::arena::PhysArena;
use crate::frame::{FrameAllocator, Zone};
use loom::thread;
use std::sync::Arc;

/// A private copy of 5 pages (two batches: 4 + 1) against `handle_write_fault` on the first
/// page of the source. The fault runs before the copy reached that page (`NotCow`, and the
/// copy then shares the page COW) or after (`Copied`: the source gets a private frame, the
/// child keeps the original).
#[test]
fn copy_against_a_write_fault() {
    let mut b = loom::model::Builder::new();
    b.max_branches = b.max_branches.max(100_000);
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.check(|| {
        let arena = PhysArena::heap(16 * PAGE_SIZE, PhysAddr::new(0x20_0000)).unwrap();
        let frames = Arc::new(FrameAllocator::new(Arc::new(arena)));
        let parent = Arc::new(AddressSpace::new(Arc::clone(&frames)).unwrap());
        let child = AddressSpace::new(Arc::clone(&frames)).unwrap();
        let v = VirtAddr::new(0x40_0000);
        let f: Vec<PhysFrame> = (0..5)
            .map(|_| frames.alloc(Zone::Normal).unwrap())
            .collect();
        parent
            .map(v, &f, PageTableFlags::PRESENT | PageTableFlags::WRITABLE)
            .unwrap();
        let fault = {
            let parent = Arc::clone(&parent);
            thread::spawn(move || handle_write_fault(&parent, v).unwrap())
        };
        let s = copy_range(&child, &parent, v, v + 5 * PAGE_SIZE, VmaKind::Private).unwrap();
        assert_eq!((s.copied, s.batches), (5, 2));
        let outcome = fault.join().unwrap();
        let p = parent.translate(v).unwrap();
        assert_eq!(child.translate(v).unwrap().pa, f[0].start_address());
        match outcome {
            FaultOutcome::NotCow => {
                assert_eq!(p.pa, f[0].start_address());
                assert!(p.flags.contains(PageTableFlags::COW));
                assert_eq!(frames.refcount(f[0]), 2);
            }
            FaultOutcome::Copied => {
                assert_ne!(p.pa, f[0].start_address());
                assert!(p.flags.contains(PageTableFlags::WRITABLE));
                assert_eq!(frames.refcount(f[0]), 1);
            }
            FaultOutcome::Reused => panic!("the child holds a reference: no reuse"),
        }
        assert_eq!(child.rss(), 5);
    });
}
