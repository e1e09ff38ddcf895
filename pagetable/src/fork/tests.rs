//! Unit tests of fork: COW end to end, shared mappings, batching, errors, lock ordering.

use super::*;
use crate::addr::PhysAddr;
use crate::arena::PhysArena;
use crate::frame::FrameAllocator;
use crate::tlb::{AccessError, TlbFlush, TlbModel};
use std::sync::Arc;
use std::thread;

pub(super) const KB4: u64 = PAGE_SIZE;
pub(super) const RW: PageTableFlags = PageTableFlags::PRESENT
    .union(PageTableFlags::WRITABLE)
    .union(PageTableFlags::USER_ACCESSIBLE);

pub(super) fn allocator() -> Arc<FrameAllocator> {
    let arena = PhysArena::heap(1024 * KB4, PhysAddr::new(0x20_0000)).unwrap();
    Arc::new(FrameAllocator::new(Arc::new(arena)))
}

pub(super) fn va(x: u64) -> VirtAddr {
    VirtAddr::new(x)
}

pub(super) fn alloc_n(a: &FrameAllocator, n: usize) -> Vec<PhysFrame> {
    (0..n)
        .map(|_| a.alloc_zeroed(Zone::Normal).unwrap())
        .collect()
}

#[test]
fn private_mappings_become_cow_and_fault_apart() {
    let a = allocator();
    let parent = AddressSpace::new(Arc::clone(&a)).unwrap();
    let child = AddressSpace::new(Arc::clone(&a)).unwrap();
    let tlb = TlbModel::new(2);
    let v = va(0x40_0000);
    let f = alloc_n(&a, 2);
    parent.map(v, &f, RW).unwrap();
    tlb.write(0, &parent, v, b"parent data").unwrap();

    let stats = copy_range(&child, &parent, v, v + 2 * KB4, VmaKind::Private).unwrap();
    assert_eq!((stats.copied, stats.empty), (2, 0));
    assert_eq!(stats.flush.pages(), 2);
    assert_eq!(child.rss(), 2);
    assert_eq!(a.refcount(f[0]), 2);
    for sp in [&parent, &child] {
        let t = sp.translate(v).unwrap();
        assert!(!t.flags.contains(PageTableFlags::WRITABLE));
        assert!(t.flags.contains(PageTableFlags::COW));
    }
    let ct = child.translate(v).unwrap().flags;
    assert!(
        !ct.contains(PageTableFlags::ACCESSED),
        "the child's copy is old"
    );
    assert!(
        ct.contains(PageTableFlags::DIRTY),
        "private copies keep DIRTY"
    );
    // The parent's CPU still caches a writable entry until the flush fork asks for.
    stats.flush.flush(&tlb);

    // Child writes: fault, copy, write lands in the child's new frame only.
    assert_eq!(
        tlb.write(1, &child, v, b"child"),
        Err(AccessError::WriteProtected { va: v })
    );
    assert_eq!(handle_write_fault(&child, v).unwrap(), FaultOutcome::Copied);
    assert!(FaultOutcome::Copied.needs_flush());
    tlb.write(1, &child, v, b"child").unwrap();
    let mut buf = [0u8; 11];
    tlb.read(1, &child, v, &mut buf).unwrap();
    assert_eq!(&buf, b"childt data");
    tlb.read(0, &parent, v, &mut buf).unwrap();
    assert_eq!(&buf, b"parent data");
    assert_eq!(a.refcount(f[0]), 1);
    assert_ne!(child.translate(v).unwrap().pa, f[0].start_address());

    // Parent writes: it is now the only user, the frame is reused in place.
    assert!(tlb.write(0, &parent, v, b"P").is_err());
    assert_eq!(
        handle_write_fault(&parent, v).unwrap(),
        FaultOutcome::Reused
    );
    tlb.write(0, &parent, v, b"P").unwrap();
    assert_eq!(parent.translate(v).unwrap().pa, f[0].start_address());
    let pf = parent.translate(v).unwrap().flags;
    assert!(pf.contains(PageTableFlags::WRITABLE) && !pf.contains(PageTableFlags::COW));
    // Not COW any more.
    assert_eq!(
        handle_write_fault(&parent, v).unwrap(),
        FaultOutcome::NotCow
    );
    assert_eq!(
        handle_write_fault(&parent, v + 8 * KB4),
        Err(MapError::NotMapped { va: v + 8 * KB4 })
    );

    // Teardown drops every reference: only the tables remain, then nothing.
    let _ = child.unmap_and_free(v, 2 * KB4).unwrap();
    let _ = parent.unmap_and_free(v, 2 * KB4).unwrap();
    drop(child);
    drop(parent);
    assert_eq!(a.stats().used, 0);
    assert!(tlb.stats().misses > 0);
}

#[test]
fn shared_mappings_stay_writable_and_are_marked_clean() {
    let a = allocator();
    let parent = AddressSpace::new(Arc::clone(&a)).unwrap();
    let child = AddressSpace::new(Arc::clone(&a)).unwrap();
    let tlb = TlbModel::new(1);
    let v = va(0x7000_0000);
    let f = alloc_n(&a, 1);
    parent.map(v, &f, RW).unwrap();
    tlb.write(0, &parent, v, b"hello").unwrap();
    assert!(
        parent
            .translate(v)
            .unwrap()
            .flags
            .contains(PageTableFlags::DIRTY)
    );
    let stats = copy_range(&child, &parent, v, v + KB4, VmaKind::Shared).unwrap();
    assert!(stats.flush.is_empty());
    let ct = child.translate(v).unwrap().flags;
    assert!(ct.contains(PageTableFlags::WRITABLE));
    assert!(!ct.intersects(PageTableFlags::DIRTY | PageTableFlags::ACCESSED | PageTableFlags::COW));
    assert!(
        parent
            .translate(v)
            .unwrap()
            .flags
            .contains(PageTableFlags::DIRTY)
    );
    tlb.write(0, &child, v, b"J").unwrap();
    let mut b = [0u8; 5];
    tlb.read(0, &parent, v, &mut b).unwrap();
    assert_eq!(&b, b"Jello");
    assert_eq!(a.refcount(f[0]), 2);
}

#[test]
fn batches_follow_the_seed_progress_count() {
    let a = allocator();
    let parent = AddressSpace::new(Arc::clone(&a)).unwrap();
    let child = AddressSpace::new(Arc::clone(&a)).unwrap();
    let v = va(0x1_0000_0000);
    // A full leaf table: 4 copies (progress 32) per batch.
    let f: Vec<PhysFrame> = (0..512)
        .map(|i| PhysFrame::containing_address(PhysAddr::new(0x40_0000_0000 + i * KB4)))
        .collect();
    parent.map(v, &f, RW).unwrap();
    let s = copy_range(&child, &parent, v, v + 512 * KB4, VmaKind::Private).unwrap();
    assert_eq!((s.copied, s.empty, s.batches), (512, 0, 128));
    // Frames outside the arena are copied as they are: no COW, no reference.
    assert!(s.flush.is_empty());
    assert!(
        child
            .translate(v)
            .unwrap()
            .flags
            .contains(PageTableFlags::WRITABLE)
    );
    // An empty leaf table: 32 empty entries per batch.
    let w = va(0x2_0000_0000);
    parent.populate(w, 512 * KB4).unwrap();
    let s = copy_range(&child, &parent, w, w + 512 * KB4, VmaKind::Private).unwrap();
    assert_eq!((s.copied, s.empty, s.batches), (0, 512, 16));
    // Mixed: 3 copied (24) + 8 empty reach 32, then the rest; resumes where it stopped.
    let x = va(0x3_0000_0000);
    let g = alloc_n(&a, 3);
    parent.map(x, &g, RW).unwrap();
    let s = copy_range(&child, &parent, x, x + 20 * KB4, VmaKind::Private).unwrap();
    assert_eq!((s.copied, s.empty, s.batches), (3, 17, 2));
    let mine: Vec<_> = child.mappings(x, 20 * KB4).map(|m| (m.va, m.pa)).collect();
    let theirs: Vec<_> = parent.mappings(x, 20 * KB4).map(|m| (m.va, m.pa)).collect();
    assert_eq!(mine, theirs);
    // Missing source tables are skipped entirely.
    let s = copy_range(
        &child,
        &parent,
        va(0x5_0000_0000),
        va(0x6_0000_0000),
        VmaKind::Private,
    )
    .unwrap();
    assert_eq!(s, CopyStats::default());
}

#[test]
fn copy_range_errors_change_nothing() {
    let a = allocator();
    let parent = AddressSpace::new(Arc::clone(&a)).unwrap();
    let child = AddressSpace::new(Arc::clone(&a)).unwrap();
    let v = va(0x40_0000);
    let f = alloc_n(&a, 4);
    parent.map(v, &f, RW).unwrap();
    assert_eq!(
        copy_range(&parent, &parent, v, v + KB4, VmaKind::Private),
        Err(MapError::IncompatibleSpaces)
    );
    let other = AddressSpace::new(allocator()).unwrap();
    assert_eq!(
        copy_range(&other, &parent, v, v + KB4, VmaKind::Private),
        Err(MapError::IncompatibleSpaces)
    );
    assert!(matches!(
        copy_range(&child, &parent, v + 1, v + KB4, VmaKind::Private),
        Err(MapError::Misaligned { .. })
    ));
    assert!(matches!(
        copy_range(&child, &parent, v + KB4, v, VmaKind::Private),
        Err(MapError::InvalidRange { .. })
    ));
    child.map(v + 3 * KB4, &f[..1], RW).unwrap();
    let used = a.stats().used;
    assert_eq!(
        copy_range(&child, &parent, v, v + 4 * KB4, VmaKind::Private),
        Err(MapError::AlreadyMapped { va: v + 3 * KB4 })
    );
    assert_eq!(a.stats().used, used);
    assert!(
        parent
            .translate(v)
            .unwrap()
            .flags
            .contains(PageTableFlags::WRITABLE)
    );
    // A huge leaf in the source.
    parent
        .map_contiguous(
            va(0x4000_0000),
            PhysAddr::new(0x40_0000_0000),
            2 << 20,
            RW,
            true,
        )
        .unwrap();
    assert!(matches!(
        copy_range(
            &child,
            &parent,
            va(0x4000_0000),
            va(0x4040_0000),
            VmaKind::Private
        ),
        Err(MapError::HugePageInTheWay { .. })
    ));
    // Out of frames for the destination's tables.
    a.fail_nth(Some(2));
    let used = a.stats().used;
    assert_eq!(
        copy_range(
            &child,
            &parent,
            va(0x3f_c000_0000),
            va(0x40_0000_0000),
            VmaKind::Private
        ),
        Ok(CopyStats::default()),
        "nothing to copy needs no table"
    );
    let third = AddressSpace::new(Arc::clone(&a)).unwrap();
    let used_third = a.stats().used;
    assert_eq!(
        copy_range(&third, &parent, v, v + 4 * KB4, VmaKind::Private),
        Err(MapError::OutOfFrames)
    );
    a.fail_nth(None);
    assert_eq!(a.stats().used, used_third);
    assert!(used_third > used);
    assert_eq!(third.mappings(v, 4 * KB4).count(), 0);
}

#[test]
fn opposite_copies_do_not_deadlock() {
    let a = allocator();
    let x = Arc::new(AddressSpace::new(Arc::clone(&a)).unwrap());
    let y = Arc::new(AddressSpace::new(Arc::clone(&a)).unwrap());
    let fx: Vec<PhysFrame> = (0..64)
        .map(|i| PhysFrame::containing_address(PhysAddr::new(0x40_0000_0000 + i * KB4)))
        .collect();
    x.map(va(0x10_0000), &fx, RW).unwrap();
    y.map(va(0x90_0000), &fx, RW).unwrap();
    let (x2, y2) = (Arc::clone(&x), Arc::clone(&y));
    let t = thread::spawn(move || {
        for i in 0..20u64 {
            let s = va(0x10_0000 + i * KB4);
            copy_range(&y2, &x2, s, s + KB4, VmaKind::Shared).unwrap();
        }
    });
    for i in 0..20u64 {
        let s = va(0x90_0000 + i * KB4);
        copy_range(&x, &y, s, s + KB4, VmaKind::Shared).unwrap();
    }
    t.join().unwrap();
    assert_eq!(x.rss(), 84);
    assert_eq!(y.rss(), 84);
}

/// The lock break really lets a waiter in: a thread parked on the parent's page-table lock
/// during a batch gets the lock at the end of that batch, before the copier's next one. The
/// waiter sleeps on a condition variable of the parent's lock; the test hook, run by the copier
/// while it holds both locks, wakes it, which moves it onto the lock's queue (parked). With the
/// fair unlock it then holds the lock when the batch ends and records the child's rss: once
/// per batch, 4 copies each. (Before the fix the copier unlocked and relocked at once, and the
/// waiter got in only when the OS scheduler happened to run it in between.)
#[test]
fn lock_break_lets_a_waiter_in() {
    use parking_lot::{Condvar, Mutex};
    use std::sync::atomic::AtomicBool;
    /// Eight leaf tables: 1,024 batches, so 1,024 breaks where the waiter must get in.
    const PAGES: u64 = 4096;
    let a = allocator();
    let parent = Arc::new(AddressSpace::new(Arc::clone(&a)).unwrap());
    let child = Arc::new(AddressSpace::new(Arc::clone(&a)).unwrap());
    let v = va(0x40_0000);
    let f: Vec<PhysFrame> = (0..PAGES)
        .map(|i| PhysFrame::containing_address(PhysAddr::new(0x40_0000_0000 + i * KB4)))
        .collect();
    parent.map(v, &f, RW).unwrap();
    let cv = Arc::new(Condvar::new());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let waiter = {
        let (parent, child, cv, seen, done) = (
            Arc::clone(&parent),
            Arc::clone(&child),
            Arc::clone(&cv),
            Arc::clone(&seen),
            Arc::clone(&done),
        );
        thread::spawn(move || {
            let mut g = parent.ptl().lock();
            ready_tx.send(()).unwrap();
            loop {
                // Releases the lock only once parked on `cv`.
                cv.wait(&mut g);
                if done.load(Ordering::Relaxed) {
                    break;
                }
                seen.lock().push(child.rss());
            }
        })
    };
    ready_rx.recv().unwrap();
    // Taking the lock proves the waiter is parked on `cv`.
    drop(parent.ptl().lock());
    let hook_cv = Arc::clone(&cv);
    BATCH_HOOK.with(|h| *h.borrow_mut() = Some(Box::new(move || _ = hook_cv.notify_one())));
    let s = copy_range(&child, &parent, v, v + PAGES * KB4, VmaKind::Shared);
    BATCH_HOOK.with(|h| *h.borrow_mut() = None);
    assert_eq!(s.unwrap().batches, PAGES / 4);
    {
        let _g = parent.ptl().lock();
        done.store(true, Ordering::Relaxed);
        cv.notify_one();
    }
    waiter.join().unwrap();
    let seen = seen.lock().clone();
    let want: Vec<usize> = (1..=PAGES as usize / 4).map(|b| 4 * b).collect();
    assert_eq!(seen, want, "the waiter got in after these rss values");
}
