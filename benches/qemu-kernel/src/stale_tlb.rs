//! The stale-TLB test: vmalloc's one promise about the TLB, checked through the MMU.
//!
//! A lazily freed area's page-table entries are cleared at once but its translations stay in
//! the TLBs until the purge flushes them; vmalloc must therefore never hand the range out
//! again before that flush. Each round, on one small window of the vmalloc range (two pages:
//! one page and its guard, far above where the cases allocate):
//!
//! 1. `a = vmalloc(1 page)` in the window; store pattern `P1` through `a` (the reading CPU's
//!    TLB now caches `a -> F1`); take a reference on `F1` so it keeps `P1` and is never
//!    handed out again during the round;
//! 2. `vfree(a)`: the entry is gone, no flush yet; a fault-tolerant read through `a` shows
//!    whether the stale translation is still live (it usually is: that is the hazard);
//! 3. allocate the window again: it is all lazy, so the allocator purges (one flush of the
//!    range, an IPI round with several CPUs) and only then returns `a` again, now backed by a
//!    new frame `F2`, which gets pattern `P2` through the direct map;
//! 4. read through `a` on the CPU that cached the old translation: a correct kernel reads
//!    `P2`. Reading `P1` means the range was reused while a stale translation existed.
//!
//! The local rounds read on the freeing CPU (the flush is `invlpg`); the remote rounds (with
//! two CPUs or more) read on CPU 1 while CPU 0 frees and reallocates (the flush is the IPI
//! shootdown). With the `broken-flush` feature the allocator's flushes do nothing, so step 4
//! reads `P1` and the test fails: that is how the test shows it can fail.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use core::sync::atomic::{AtomicU64, Ordering};

use pagetable::{PAGE_SIZE, PhysFrame, TlbFlush, VirtAddr};
use vmalloc::{Gfp, PAGE_KERNEL, VmFlags, Vmalloc};

use crate::boot::PAGE_OFFSET;
use crate::interrupts::probe_read;
use crate::platform::Kernel;
use crate::sched;

/// What the rounds saw.
#[derive(Debug, Clone, Default)]
pub struct StaleTlbReport {
    /// Rounds run (local and remote).
    pub rounds: u32,
    /// Rounds where the old translation was still usable after `vfree` (before the flush).
    pub stale_before_flush: u32,
    /// Rounds whose final read saw the new frame.
    pub fresh_after_reuse: u32,
    /// Rounds whose final read saw the old frame: the failure this test exists for.
    pub stale_after_reuse: u32,
    /// Errors other than a stale read (allocation at the wrong address, no flush...).
    pub errors: alloc::vec::Vec<String>,
}

impl StaleTlbReport {
    /// Whether the test passed.
    pub fn ok(&self) -> bool {
        self.stale_after_reuse == 0 && self.errors.is_empty() && self.rounds > 0
    }
}

/// Who reads through the virtual address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reader {
    /// The freeing CPU itself.
    Local,
    /// CPU 1 (CPU 0 frees).
    Remote,
}

impl Reader {
    /// A fault-tolerant 8-byte read of `va` on the reader's CPU.
    fn read(self, va: u64) -> Option<u64> {
        match self {
            Reader::Local => probe_read(va),
            Reader::Remote => {
                const FAULT: u64 = 0xdead_0000_fa17_0000;
                let out = Arc::new(AtomicU64::new(0));
                let o = out.clone();
                sched::run_on(
                    1,
                    alloc::boxed::Box::new(move || {
                        o.store(probe_read(va).unwrap_or(FAULT), Ordering::Release);
                    }),
                );
                sched::wait_for(1);
                Some(out.load(Ordering::Acquire)).filter(|&v| v != FAULT)
            }
        }
    }
}

/// The one-page area in `[ws, ws + 2 pages)`.
fn alloc_window(vm: &Vmalloc<Kernel>, ws: u64) -> Result<VirtAddr, String> {
    let (s, e) = (
        VirtAddr::new_truncate(ws),
        VirtAddr::new_truncate(ws + 2 * PAGE_SIZE),
    );
    vm.vmalloc_node_range(
        PAGE_SIZE,
        PAGE_SIZE,
        s,
        e,
        Gfp::KERNEL,
        PAGE_KERNEL,
        VmFlags::empty(),
        None,
    )
    .map_err(|e| format!("vmalloc in window {ws:#x}: {e}"))
}

/// The frame mapped at `va`.
fn frame_of(vm: &Vmalloc<Kernel>, va: VirtAddr) -> Result<PhysFrame, String> {
    vm.kernel_space()
        .translate(va)
        .map(|t| PhysFrame::containing_address(t.pa))
        .ok_or_else(|| format!("{va:?} not mapped"))
}

/// Write `value` at the start of `frame` through the direct map.
fn write_frame(frame: PhysFrame, value: u64) {
    let p = (PAGE_OFFSET + frame.start_address().as_u64()) as *mut u64;
    // SAFETY: `frame` is RAM of the arena, mapped at PAGE_OFFSET, and owned by the area this
    // round just allocated (nobody else writes it).
    unsafe { p.write_volatile(value) };
}

/// One round on window `ws`: returns (stale before the flush, stale after reuse).
fn round(
    vm: &Vmalloc<Kernel>,
    tlb: &dyn TlbFlush,
    ws: u64,
    reader: Reader,
    tag: u64,
) -> Result<(bool, bool), String> {
    let (p1, p2) = (0x5157_a1e0_0000_0000 | tag, 0xf7e5_4000_0000_0000 | tag);
    let a = alloc_window(vm, ws)?;
    if a.as_u64() != ws {
        return Err(format!("window {ws:#x} gave {a:?}"));
    }
    // SAFETY: `a` is this round's fresh, writable one-page area.
    unsafe { (a.as_u64() as *mut u64).write_volatile(p1) };
    let seen = reader.read(a.as_u64());
    if seen != Some(p1) {
        return Err(format!(
            "read {seen:x?} through a live mapping, wrote {p1:#x}"
        ));
    }
    let f1 = frame_of(vm, a)?;
    vm.frames().get(f1).map_err(|e| format!("pin: {e}"))?;
    let flushes = tlb.stats().flushes;
    vm.vfree(a).map_err(|e| format!("vfree: {e}"))?;
    let stale_before = reader.read(a.as_u64()) == Some(p1);
    let b = alloc_window(vm, ws);
    let result = b.and_then(|b| {
        if b != a {
            return Err(format!("window {ws:#x} gave {b:?} the second time"));
        }
        if tlb.stats().flushes == flushes {
            return Err(format!(
                "{a:?} handed out again with no flush since its vfree"
            ));
        }
        let f2 = frame_of(vm, b)?;
        if f2 == f1 {
            return Err("the pinned frame was reused".into());
        }
        write_frame(f2, p2);
        let after = reader.read(a.as_u64());
        let r = match after {
            Some(v) if v == p2 => Ok((stale_before, false)),
            Some(v) if v == p1 => Ok((stale_before, true)),
            v => Err(format!(
                "read {v:x?} after reuse (old {p1:#x}, new {p2:#x})"
            )),
        };
        vm.vfree(b).map_err(|e| format!("vfree: {e}"))?;
        r
    });
    vm.frames().put(f1).map_err(|e| format!("unpin: {e}"))?;
    result
}

/// Run `rounds` local rounds, and as many remote ones when `online >= 2`.
pub fn run(vm: &Vmalloc<Kernel>, tlb: &dyn TlbFlush, rounds: u32, online: usize) -> StaleTlbReport {
    let mut rep = StaleTlbReport::default();
    let top = vm.range().1.as_u64();
    let readers = if online >= 2 {
        [Reader::Local, Reader::Remote].as_slice()
    } else {
        &[Reader::Local]
    };
    for (k, &reader) in readers.iter().enumerate() {
        for r in 0..rounds {
            let i = k as u64 * u64::from(rounds) + u64::from(r);
            let ws = top - 16 * PAGE_SIZE * (i + 1);
            rep.rounds += 1;
            match round(vm, tlb, ws, reader, i) {
                Ok((before, after)) => {
                    rep.stale_before_flush += u32::from(before);
                    if after {
                        rep.stale_after_reuse += 1;
                    } else {
                        rep.fresh_after_reuse += 1;
                    }
                }
                Err(e) => rep.errors.push(format!("{reader:?} round {r}: {e}")),
            }
        }
    }
    vm.purge_vmap_area_lazy();
    rep
}
