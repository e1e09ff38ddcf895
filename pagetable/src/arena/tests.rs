//! Unit tests of the physical arena (heap backing everywhere; mmap backing off Miri).

use super::*;
use crate::entry::{PageTableFlags, Pte};
use std::sync::Arc;
use std::thread;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

fn small() -> PhysArena {
    PhysArena::heap(4 * PAGE_SIZE, PhysAddr::new(0x10_0000)).unwrap()
}

fn frame(a: u64) -> PhysFrame<Size4KiB> {
    PhysFrame::from_start_address(PhysAddr::new(a)).unwrap()
}

#[test]
fn config_is_validated() {
    let b = PhysAddr::new(0x1000);
    assert_eq!(
        PhysArena::heap(0, b).unwrap_err(),
        ArenaError::InvalidSize { size: 0 }
    );
    assert_eq!(
        PhysArena::heap(4095, b).unwrap_err(),
        ArenaError::InvalidSize { size: 4095 }
    );
    assert_eq!(
        PhysArena::heap(4096, PhysAddr::new(0x1008)).unwrap_err(),
        ArenaError::MisalignedBase { base: 0x1008 }
    );
    let top = PhysAddr::new(PhysAddr::MASK & !0xfff);
    assert_eq!(
        PhysArena::heap(4096, top).unwrap_err(),
        ArenaError::TooLarge {
            base: top.as_u64(),
            size: 4096
        }
    );
    let d = ArenaConfig::default();
    assert_eq!(
        (d.size, d.base.as_u64(), d.backing),
        (64 * MIB, MIB, Backing::Heap)
    );
}

#[test]
fn geometry_and_contains() {
    let a = small();
    assert_eq!(a.base().as_u64(), 0x10_0000);
    assert_eq!(a.size(), 0x4000);
    assert_eq!(a.end().as_u64(), 0x10_4000);
    assert_eq!(a.frames(), 4);
    assert_eq!(a.backing(), Backing::Heap);
    assert!(!a.huge_page_advice_applied());
    assert!(a.contains(a.base(), a.size()));
    assert!(a.contains(a.end(), 0));
    assert!(!a.contains(a.end(), 1));
    assert!(!a.contains(PhysAddr::new(0xf_ffff), 1));
    assert!(!a.contains(a.base(), a.size() + 1));
    assert!(!a.contains(PhysAddr::new(0x10_3fff), u64::MAX));
    assert!(format!("{a:?}").contains("0x100000"));
}

#[test]
fn out_of_bounds_is_an_error() {
    let a = small();
    let end = a.end();
    let oob = ArenaError::OutOfBounds { addr: end, len: 1 };
    assert_eq!(a.write(end, &[1]), Err(oob));
    assert_eq!(a.read(end, &mut [0]), Err(oob));
    assert_eq!(a.fill(end, 1, 0), Err(oob));
    assert_eq!(a.ptr(end, 1), Err(oob));
    assert_eq!(
        a.write(PhysAddr::new(0x10_3ffc), &[0; 8]),
        Err(ArenaError::OutOfBounds {
            addr: PhysAddr::new(0x10_3ffc),
            len: 8
        })
    );
    assert!(matches!(
        a.words(a.base(), 2049),
        Err(ArenaError::OutOfBounds { .. })
    ));
    assert!(matches!(
        a.words(a.base(), usize::MAX),
        Err(ArenaError::OutOfBounds { .. })
    ));
    assert_eq!(
        a.words(PhysAddr::new(0x10_0004), 1).unwrap_err(),
        ArenaError::Misaligned {
            addr: PhysAddr::new(0x10_0004),
            align: 8
        }
    );
    assert!(a.try_table(frame(0x10_4000)).is_err());
    assert!(a.try_table(frame(0xf_f000)).is_err());
    assert!(a.try_table(frame(0)).is_err());
    assert!(a.try_table(frame(0x10_0000 + (1 << 32))).is_err());
    assert!(a.try_table(frame(PhysAddr::MASK & !0xfff)).is_err());
    // The first and last frames are tables of the arena, each at its own address.
    for f in [0x10_0000, 0x10_3000] {
        a.write(PhysAddr::new(f + 8), &f.to_ne_bytes()).unwrap();
        let t = a.try_table(frame(f)).unwrap();
        assert_eq!(t[1].load(Ordering::Relaxed).bits(), f);
        t[1].store(Pte::UNUSED, Ordering::Relaxed);
    }
    assert!(a.zero_frame(frame(0x10_4000)).is_err());
    assert!(a.copy_frame(frame(0x10_0000), frame(0x10_4000)).is_err());
    assert_eq!(a.phys_of(core::ptr::null()), None);
    // Nothing was written by the failed calls.
    assert!(a.is_zero(a.base(), a.size()).unwrap());
}

#[test]
fn round_trips_across_word_boundaries() {
    let a = small();
    let base = a.base().as_u64();
    let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    for start in 0..17u64 {
        // Lengths around the 64-byte blocks `read_bytes` copies whole: none, one, one and
        // some words, several.
        for len in [
            0usize, 1, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 72, 127, 128, 136, 1000,
        ] {
            let at = PhysAddr::new(base + 100 + start);
            a.write(at, &data[..len]).unwrap();
            let mut back = vec![0xaa; len];
            a.read(at, &mut back).unwrap();
            assert_eq!(back, &data[..len], "start {start} len {len}");
        }
    }
    // A partial write keeps the neighbouring bytes of its words.
    a.fill(a.base(), 32, 0x11).unwrap();
    a.write(PhysAddr::new(base + 3), &[0xee; 10]).unwrap();
    let mut all = [0u8; 32];
    a.read(a.base(), &mut all).unwrap();
    let mut want = [0x11u8; 32];
    want[3..13].fill(0xee);
    assert_eq!(all, want);
}

#[test]
fn fill_and_zero() {
    let a = small();
    let base = a.base().as_u64();
    a.fill(PhysAddr::new(base + 5), 4096, 0x5a).unwrap();
    let mut b = vec![0u8; 4200];
    a.read(a.base(), &mut b).unwrap();
    assert!(b[..5].iter().all(|&x| x == 0));
    assert!(b[5..4101].iter().all(|&x| x == 0x5a));
    assert!(b[4101..].iter().all(|&x| x == 0));
    a.fill(PhysAddr::new(base + 2), 3, 0x77).unwrap();
    a.read(a.base(), &mut b[..8]).unwrap();
    assert_eq!(&b[..8], &[0, 0, 0x77, 0x77, 0x77, 0x5a, 0x5a, 0x5a]);
    a.fill(a.base(), 0, 0xff).unwrap();
    assert!(!a.is_zero(a.base(), PAGE_SIZE).unwrap());
    a.zero_frame(frame(base)).unwrap();
    assert!(a.is_zero(a.base(), PAGE_SIZE).unwrap());
    // The next frame kept its five filled bytes (4096 + 5 - 4096).
    assert!(!a.is_zero(PhysAddr::new(base + PAGE_SIZE), 5).unwrap());
    assert!(a.is_zero(PhysAddr::new(base + PAGE_SIZE + 5), 100).unwrap());
}

#[test]
fn copy_frame_copies_every_byte() {
    let a = small();
    let base = a.base().as_u64();
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    a.write(PhysAddr::new(base), &data).unwrap();
    a.copy_frame(frame(base), frame(base + 2 * PAGE_SIZE))
        .unwrap();
    let mut back = vec![0u8; 4096];
    a.read(PhysAddr::new(base + 2 * PAGE_SIZE), &mut back)
        .unwrap();
    assert_eq!(back, data);
}

#[test]
fn tables_are_arena_words() {
    let a = small();
    let f = frame(a.base().as_u64() + PAGE_SIZE);
    let t = a.table(f);
    let pte = Pte::new(PhysAddr::new(0x1234_5000), PageTableFlags::PRESENT);
    t[3].store(pte, Ordering::Release);
    let w = a.words(f.start_address() + 24, 1).unwrap();
    assert_eq!(w[0].load(Ordering::Relaxed), pte.bits());
    let mut b = [0u8; 8];
    a.read(f.start_address() + 24, &mut b).unwrap();
    assert_eq!(u64::from_ne_bytes(b), pte.bits());
    assert!(core::ptr::eq(a.try_table(f).unwrap(), t));
}

#[test]
#[should_panic(expected = "outside the arena")]
fn table_of_a_foreign_frame_panics() {
    let a = small();
    let _ = a.table(frame(0));
}

#[test]
fn ptr_and_phys_of_agree() {
    let a = small();
    let at = a.base() + 0x1008;
    a.write(at, &0xdead_beef_u32.to_ne_bytes()).unwrap();
    let p = a.ptr(at, 4).unwrap();
    assert_eq!(a.phys_of(p), Some(at));
    // SAFETY: `p` is in bounds for 4 bytes and no other thread touches the arena.
    let v = unsafe { p.cast::<u32>().read_unaligned() };
    assert_eq!(v, 0xdead_beef);
    let end = a.ptr(a.end(), 0).unwrap();
    assert_eq!(a.phys_of(end), None);
}

/// A deterministic model check that Miri can afford (the proptest below goes further).
#[test]
fn byte_ops_match_a_vec_model() {
    let a = small();
    let n = a.size() as usize;
    let mut model = vec![0u8; n];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let rounds = if cfg!(miri) { 20 } else { 500 };
    for _ in 0..rounds {
        let off = (next() % n as u64) as usize;
        let len = (next() % 300) as usize % (n - off + 1);
        let byte = next() as u8;
        if next() % 2 == 0 {
            a.fill(a.base() + off as u64, len as u64, byte).unwrap();
            model[off..off + len].fill(byte);
        } else {
            let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
            a.write(a.base() + off as u64, &data).unwrap();
            model[off..off + len].copy_from_slice(&data);
        }
    }
    let mut all = vec![0u8; n];
    a.read(a.base(), &mut all).unwrap();
    assert!(all == model);
}

#[test]
fn concurrent_writers_of_one_word_keep_each_others_bytes() {
    let a = Arc::new(small());
    let words = if cfg!(miri) { 4 } else { 256 };
    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let a = Arc::clone(&a);
            thread::spawn(move || {
                // Thread t writes bytes 2t and 2t+1 of every word: always a partial-word CAS.
                for w in 0..words {
                    let at = a.base() + (w * 8 + 2 * t as u64);
                    a.write(at, &[t + 1, t + 0x11]).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for w in 0..words {
        let mut b = [0u8; 8];
        a.read(a.base() + w * 8, &mut b).unwrap();
        assert_eq!(b, [1, 0x11, 2, 0x12, 3, 0x13, 4, 0x14]);
    }
}

#[test]
#[cfg_attr(miri, ignore = "mmap is not supported under Miri")]
fn mmap_arena_of_8_gib_touched_far_apart() {
    let a = PhysArena::mmap(8 * GIB, PhysAddr::new(GIB)).unwrap();
    assert_eq!(a.backing(), Backing::Mmap { huge_pages: false });
    assert_eq!(a.frames(), 2 * 1024 * 1024);
    let far = [0, 3 * GIB - 5, 5 * GIB + 4093, 8 * GIB - 8];
    for (i, off) in far.iter().enumerate() {
        a.write(a.base() + *off, &(i as u64 + 1).to_ne_bytes())
            .unwrap();
    }
    for (i, off) in far.iter().enumerate() {
        let mut b = [0u8; 8];
        a.read(a.base() + *off, &mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), i as u64 + 1);
    }
    // Untouched pages read as zero.
    assert!(a.is_zero(a.base() + 7 * GIB, PAGE_SIZE).unwrap());
    let t = a.table(frame(GIB + 6 * GIB));
    assert!(t.is_empty(Ordering::Relaxed));
}

#[test]
#[cfg_attr(miri, ignore = "mmap is not supported under Miri")]
fn mmap_arena_with_huge_page_advice() {
    let cfg = ArenaConfig {
        size: 16 * MIB,
        base: PhysAddr::new(4 * GIB),
        backing: Backing::Mmap { huge_pages: true },
    };
    let a = PhysArena::new(cfg).unwrap();
    // Whether the kernel took the advice depends on its THP support; the arena works anyway.
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .map(|s| !s.contains("[never]"))
        .unwrap_or(false);
    if thp {
        assert!(a.huge_page_advice_applied());
    }
    a.fill(a.base() + 2 * MIB, 2 * MIB, 0xc3).unwrap();
    let mut b = [0u8; 3];
    a.read(a.base() + 2 * MIB - 1, &mut b).unwrap();
    assert_eq!(b, [0, 0xc3, 0xc3]);
}

#[cfg(not(miri))]
mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Write(usize, Vec<u8>),
        Fill(usize, usize, u8),
        Zero(usize),
    }

    const SIZE: usize = 3 * 4096;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..SIZE, proptest::collection::vec(any::<u8>(), 0..200))
                .prop_map(|(o, d)| Op::Write(o, d)),
            (0..SIZE, 0..5000usize, any::<u8>()).prop_map(|(o, l, b)| Op::Fill(o, l, b)),
            (0..3usize).prop_map(Op::Zero),
        ]
    }

    proptest! {
        #[test]
        fn arena_matches_vec_model(ops in proptest::collection::vec(op(), 1..40),
                                   probe in (0..SIZE, 0..SIZE)) {
            let a = PhysArena::heap(SIZE as u64, PhysAddr::new(0x20_0000)).unwrap();
            let mut model = vec![0u8; SIZE];
            for op in ops {
                match op {
                    Op::Write(o, d) => {
                        let r = a.write(a.base() + o as u64, &d);
                        if o + d.len() <= SIZE {
                            prop_assert!(r.is_ok());
                            model[o..o + d.len()].copy_from_slice(&d);
                        } else {
                            prop_assert!(matches!(r, Err(ArenaError::OutOfBounds { .. })), "{:?}", r);
                        }
                    }
                    Op::Fill(o, l, b) => {
                        let r = a.fill(a.base() + o as u64, l as u64, b);
                        if o + l <= SIZE {
                            prop_assert!(r.is_ok());
                            model[o..o + l].fill(b);
                        } else {
                            prop_assert!(r.is_err());
                        }
                    }
                    Op::Zero(f) => {
                        a.zero_frame(frame(0x20_0000 + (f as u64) * PAGE_SIZE)).unwrap();
                        model[f * 4096..(f + 1) * 4096].fill(0);
                    }
                }
            }
            let (s, e) = (probe.0.min(probe.1), probe.0.max(probe.1));
            let mut back = vec![0u8; e - s];
            a.read(a.base() + s as u64, &mut back).unwrap();
            prop_assert_eq!(&back[..], &model[s..e]);
            let mut all = vec![0u8; SIZE];
            a.read(a.base(), &mut all).unwrap();
            prop_assert!(all == model);
        }
    }
}
