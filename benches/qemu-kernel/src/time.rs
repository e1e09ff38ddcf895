//! Time: the TSC, calibrated once against the PIT (channel 2, gated through port 0x61, as
//! Linux's `pit_calibrate_tsc` does). Under QEMU's software emulation the TSC follows the
//! host's clock, so figures are wall time of the emulated run: good for comparing cases and
//! configurations, not for absolute speed.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::cpu::{inb, outb, rdtsc};

/// The PIT's input clock, Hz.
const PIT_HZ: u64 = 1_193_182;

/// TSC ticks per second (0 until calibrated).
static TSC_HZ: AtomicU64 = AtomicU64::new(0);

/// Measure the TSC rate over 50 ms of PIT channel 2 (one-shot, mode 0).
pub fn calibrate() -> u64 {
    let ms = 50;
    let latch = PIT_HZ * ms / 1000;
    // Gate channel 2 on, speaker off.
    outb(0x61, (inb(0x61) & !0x02) | 0x01);
    // Channel 2, low then high byte, mode 0 (interrupt on terminal count), binary.
    outb(0x43, 0xb0);
    outb(0x42, latch as u8);
    outb(0x42, (latch >> 8) as u8);
    let t0 = rdtsc();
    // OUT2 (port 0x61 bit 5) goes high when the count reaches zero.
    while inb(0x61) & 0x20 == 0 {
        core::hint::spin_loop();
    }
    let hz = (rdtsc() - t0) * 1000 / ms;
    TSC_HZ.store(hz.max(1), Ordering::Relaxed);
    hz
}

/// Microseconds in `cycles` TSC ticks.
pub fn cycles_to_usec(cycles: u64) -> u64 {
    let hz = TSC_HZ.load(Ordering::Relaxed).max(1);
    (u128::from(cycles) * 1_000_000 / u128::from(hz)) as u64
}

/// Busy-wait `us` microseconds.
pub fn udelay(us: u64) {
    let hz = TSC_HZ.load(Ordering::Relaxed).max(1);
    let end = rdtsc() + us * hz / 1_000_000;
    while rdtsc() < end {
        core::hint::spin_loop();
    }
}

/// Microseconds since an arbitrary origin.
pub fn now_usec() -> u64 {
    cycles_to_usec(rdtsc())
}
