//! Unit tests of the TLB model: hits and misses, stale translations, shootdowns, permissions.

use super::*;
use crate::frame::{FrameAllocator, Zone};
use crate::page::PhysFrame;
use crate::tlb::{FlushRange, TLB_SINGLE_PAGE_FLUSH_CEILING};
use std::sync::Arc;

const KB4: u64 = PAGE_SIZE;
const RW: PageTableFlags = PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE);

fn setup() -> (Arc<FrameAllocator>, AddressSpace) {
    let arena = crate::arena::PhysArena::heap(512 * KB4, PhysAddr::new(0x10_0000)).unwrap();
    let a = Arc::new(FrameAllocator::new(Arc::new(arena)));
    let s = AddressSpace::new(Arc::clone(&a)).unwrap();
    (a, s)
}

fn frames(a: &FrameAllocator, n: usize) -> Vec<PhysFrame> {
    (0..n)
        .map(|_| a.alloc_zeroed(Zone::Normal).unwrap())
        .collect()
}

fn va(x: u64) -> VirtAddr {
    VirtAddr::new(x)
}

#[test]
fn accesses_fill_the_cache_and_cross_pages() {
    let (a, s) = setup();
    let f = frames(&a, 3);
    let base = va(0xffff_c900_0000_0000);
    s.map(base, &f, RW).unwrap();
    let tlb = TlbModel::new(2);
    let data: Vec<u8> = (0..6000u32).map(|i| i as u8).collect();
    tlb.write(0, &s, base + 1000, &data).unwrap();
    let st = tlb.stats();
    assert_eq!((st.misses, st.hits), (2, 0));
    let mut back = vec![0u8; 6000];
    tlb.read(0, &s, base + 1000, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(tlb.stats().hits, 2);
    // The bytes really are in the frames.
    let mut b = [0u8; 4];
    a.arena().read(f[1].start_address(), &mut b).unwrap();
    assert_eq!(b, [data[3096], data[3097], data[3098], data[3099]]);
    // The walk set ACCESSED everywhere and DIRTY on the written pages.
    let t0 = s.translate(base).unwrap().flags;
    assert!(t0.contains(PageTableFlags::ACCESSED | PageTableFlags::DIRTY));
    let t2 = s.translate(base + 2 * KB4).unwrap().flags;
    assert!(!t2.contains(PageTableFlags::ACCESSED));
    assert!(tlb.holds_any(base, base + KB4));
    assert!(!tlb.holds_any(base + 2 * KB4, base + 3 * KB4));
    assert_eq!(tlb.cached(0, &s, base + 5), Some(f[0].start_address() + 5));
    assert_eq!(tlb.cached(1, &s, base), None);
}

#[test]
fn a_stale_entry_writes_to_the_old_frame_until_flushed() {
    let (a, s) = setup();
    let old = frames(&a, 1);
    let new = frames(&a, 1);
    let v = va(0xffff_c900_0000_0000);
    let tlb = TlbModel::new(2);
    s.map(v, &old, RW).unwrap();
    tlb.write(1, &s, v, b"first").unwrap();
    // Unmap without a flush and reuse the address for another frame: premature reuse.
    let flush = s.unmap(v, KB4, |_, _| {}).unwrap();
    s.map(v, &new, RW).unwrap();
    assert!(tlb.holds_any(v, v + KB4));
    tlb.write(1, &s, v, b"stale").unwrap();
    let mut buf = [0u8; 5];
    a.arena().read(old[0].start_address(), &mut buf).unwrap();
    assert_eq!(
        &buf, b"stale",
        "the write went through the stale translation"
    );
    a.arena().read(new[0].start_address(), &mut buf).unwrap();
    assert_eq!(buf, [0; 5]);
    // CPU 0 never cached it: it sees the new frame.
    tlb.write(0, &s, v, b"cpu0!").unwrap();
    a.arena().read(new[0].start_address(), &mut buf).unwrap();
    assert_eq!(&buf, b"cpu0!");
    // After the shootdown every CPU uses the new frame.
    flush.flush(&tlb);
    assert!(!tlb.holds_any(v, v + KB4));
    tlb.write(1, &s, v, b"fresh").unwrap();
    a.arena().read(new[0].start_address(), &mut buf).unwrap();
    assert_eq!(&buf, b"fresh");
    let st = tlb.stats();
    assert_eq!((st.flushes, st.full_flushes, st.pages_flushed), (1, 0, 1));
}

#[test]
fn permissions_faults_and_upgrades() {
    let (a, s) = setup();
    let f = frames(&a, 2);
    let v = va(0x40_0000);
    s.map(v, &f[..1], PageTableFlags::PRESENT).unwrap();
    let tlb = TlbModel::new(1);
    let mut b = [0u8; 8];
    tlb.read(0, &s, v, &mut b).unwrap();
    assert_eq!(
        tlb.write(0, &s, v + 8, b"x"),
        Err(AccessError::WriteProtected { va: v + 8 })
    );
    // An upgrade needs no flush: the write re-walks.
    assert!(!s.protect(v, KB4, RW).unwrap().is_empty());
    tlb.write(0, &s, v + 8, b"x").unwrap();
    // A downgrade does need one: until then the cached writable entry is used.
    let flush = s.protect(v, KB4, PageTableFlags::PRESENT).unwrap();
    tlb.write(0, &s, v, b"y").unwrap();
    flush.flush(&tlb);
    assert!(matches!(
        tlb.write(0, &s, v, b"y"),
        Err(AccessError::WriteProtected { .. })
    ));
    // Faults name the first failing address; earlier pages were written.
    let err = tlb.write(0, &s, v - 4, b"abcdefgh").unwrap_err();
    assert_eq!(err, AccessError::NotMapped { va: v - 4 });
    s.map(v + KB4, &f[1..], RW).unwrap();
    let err = tlb.write(0, &s, v + 2 * KB4 - 2, b"abcd").unwrap_err();
    assert_eq!(err, AccessError::NotMapped { va: v + 2 * KB4 });
    assert_eq!(
        tlb.read(5, &s, v, &mut b),
        Err(AccessError::NoSuchCpu { cpu: 5, nr_cpus: 1 })
    );
    assert!(matches!(
        tlb.read(0, &s, va(0x7fff_ffff_fffc), &mut b),
        Err(AccessError::OutOfRange { .. })
    ));
    // A mapping outside the arena reports the arena error.
    s.map(
        va(0x80_0000),
        &[PhysFrame::containing_address(PhysAddr::new(0xdead_0000))],
        RW,
    )
    .unwrap();
    assert!(matches!(
        tlb.read(0, &s, va(0x80_0000), &mut b),
        Err(AccessError::Arena(_))
    ));
}

#[test]
fn shootdowns_reach_every_cpu_and_respect_the_ceiling() {
    let (a, s) = setup();
    let n = 40;
    let f = frames(&a, n);
    let v = va(0x1000_0000);
    s.map(v, &f, RW).unwrap();
    let tlb = TlbModel::new(4);
    for cpu in 0..4 {
        for i in 0..n as u64 {
            tlb.write(cpu, &s, v + i * KB4, &[cpu as u8]).unwrap();
        }
    }
    let end = v + n as u64 * KB4;
    assert!(tlb.holds_any(v, end));
    tlb.flush_range(v, v + TLB_SINGLE_PAGE_FLUSH_CEILING * KB4);
    assert!(!tlb.holds_any(v, v + TLB_SINGLE_PAGE_FLUSH_CEILING * KB4));
    assert!(tlb.holds_any(v, end));
    let st = tlb.stats();
    assert_eq!((st.flushes, st.full_flushes, st.pages_flushed), (1, 0, 33));
    // Over the ceiling: a full flush.
    FlushRange::new(v, v + 34 * KB4).flush(&tlb);
    assert!(!tlb.holds_any(v, end));
    assert_eq!(tlb.stats().full_flushes, 1);
    tlb.flush_all();
    assert_eq!(tlb.stats().full_flushes, 2);
    // The cache is bounded: accesses past its size evict and still translate right.
    let st = tlb.stats();
    assert_eq!(st.misses, 4 * n as u64);
}

#[test]
fn global_translations_are_shared_between_spaces() {
    let (a, kernel) = setup();
    kernel
        .preallocate(va(0xffff_c900_0000_0000), va(0xffff_ca00_0000_0000))
        .unwrap();
    let user = AddressSpace::new_sharing_kernel(&kernel).unwrap();
    let f = frames(&a, 2);
    let v = va(0xffff_c900_0000_0000);
    kernel.map(v, &f[..1], RW | PageTableFlags::GLOBAL).unwrap();
    kernel.map(v + KB4, &f[1..], RW).unwrap();
    let tlb = TlbModel::new(1);
    tlb.write(0, &kernel, v, b"g").unwrap();
    tlb.write(0, &kernel, v + KB4, b"n").unwrap();
    let st = tlb.stats();
    tlb.write(0, &user, v, b"g").unwrap();
    tlb.write(0, &user, v + KB4, b"n").unwrap();
    let after = tlb.stats();
    assert_eq!(
        after.hits - st.hits,
        1,
        "only the GLOBAL translation is shared"
    );
    assert_eq!(after.misses - st.misses, 1);
}

/// A 2 MiB leaf is ONE entry of the 2 MiB array: one miss serves its 512 pages; it goes stale
/// like a 4 KiB one and a flush of any page under it drops it.
#[test]
fn a_huge_leaf_is_one_entry() {
    const MB2: u64 = 2 << 20;
    let arena = crate::arena::PhysArena::heap(8 << 20, PhysAddr::new(0)).unwrap();
    let a = Arc::new(FrameAllocator::new(Arc::new(arena)));
    let s = AddressSpace::new(Arc::clone(&a)).unwrap();
    let run = a.alloc_huge_zeroed(Zone::Normal).unwrap();
    let base = va(0xffff_c900_0020_0000);
    s.map_huge(base, &[run], RW | PageTableFlags::GLOBAL)
        .unwrap();
    let tlb = TlbModel::new(2);
    for page in 0..512 {
        tlb.write(0, &s, base + page * KB4 + 8, &[page as u8])
            .unwrap();
    }
    let st = tlb.stats();
    assert_eq!((st.misses, st.hits), (1, 511));
    assert_eq!(tlb.entries(), TlbEntries { small: 0, huge: 1 });
    let mut b = [0u8];
    a.arena()
        .read(run.start_address() + 300 * KB4 + 8, &mut b)
        .unwrap();
    assert_eq!(b[0], 300u64 as u8);
    assert_eq!(
        tlb.cached(0, &s, base + 300 * KB4 + 9),
        Some(run.start_address() + 300 * KB4 + 9)
    );
    // Unmapped without a flush: still used (stale), as for a 4 KiB entry.
    let _ = s.unmap(base, MB2, |_, _| {}).unwrap();
    assert!(tlb.holds_any(base + MB2 - KB4, base + MB2));
    tlb.read(0, &s, base + 7 * KB4 + 8, &mut b).unwrap();
    assert_eq!(b[0], 7);
    // Flushing one page under it drops the whole entry.
    tlb.flush_range(base + 100 * KB4, base + 101 * KB4);
    assert!(!tlb.holds_any(base, base + MB2));
    assert_eq!(tlb.entries(), TlbEntries::default());
    assert!(matches!(
        tlb.read(0, &s, base, &mut b),
        Err(AccessError::NotMapped { .. })
    ));
    // A read-only huge leaf: a write faults and the entry is dropped, then re-walked.
    s.map_huge(base, &[run], PageTableFlags::PRESENT).unwrap();
    tlb.read(1, &s, base, &mut b).unwrap();
    assert_eq!(tlb.entries().huge, 1);
    assert!(matches!(
        tlb.write(1, &s, base, &[1]),
        Err(AccessError::WriteProtected { .. })
    ));
}
