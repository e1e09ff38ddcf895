//! The kernel's console: COM1 (I/O port 0x3f8, 115200 8N1), which QEMU's `-serial stdio`
//! prints. Lines are written under one spinlock so CPUs do not interleave them; a fatal
//! path (exception, panic) takes the lock with a bounded wait and writes anyway, so a CPU
//! that dies holding it cannot silence the report.

use core::fmt::{self, Write};

use pagetable::platform::RawSpinlock;
use pagetable::platform::lock_api::RawMutex;

use crate::cpu::{inb, outb};

const COM1: u16 = 0x3f8;

/// The console lock (never taken in interrupt context except on the fatal path).
static LOCK: RawSpinlock = <RawSpinlock as RawMutex>::INIT;

/// Program the UART: 115200 baud, 8 data bits, no parity, one stop bit, FIFOs on.
pub fn init() {
    outb(COM1 + 1, 0x00); // no interrupts
    outb(COM1 + 3, 0x80); // DLAB
    outb(COM1, 0x01); // divisor 1: 115200 baud
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1
    outb(COM1 + 2, 0xc7); // FIFO on, cleared, 14-byte threshold
    outb(COM1 + 4, 0x03); // DTR, RTS
}

fn put(b: u8) {
    while inb(COM1 + 5) & 0x20 == 0 {
        core::hint::spin_loop();
    }
    outb(COM1, b);
}

/// Writes bytes to the UART (the caller holds the lock or is on the fatal path).
struct Uart;

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                put(b'\r');
            }
            put(b);
        }
        Ok(())
    }
}

/// Print under the console lock (what `kprint!` expands to).
pub fn print(args: fmt::Arguments<'_>) {
    LOCK.lock();
    let _ = Uart.write_fmt(args);
    // SAFETY: locked just above by this CPU.
    unsafe { LOCK.unlock() };
}

/// Print on a fatal path: wait a bounded time for the lock, then write regardless (the
/// holder may be the CPU that faulted). Never unlocks a lock it did not take.
pub fn print_fatal(args: fmt::Arguments<'_>) {
    let mut got = false;
    for _ in 0..10_000_000 {
        if LOCK.try_lock() {
            got = true;
            break;
        }
        core::hint::spin_loop();
    }
    let _ = Uart.write_fmt(args);
    if got {
        // SAFETY: taken by this CPU above.
        unsafe { LOCK.unlock() };
    }
}

/// Print to the serial console.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => { $crate::serial::print(format_args!($($arg)*)) };
}

/// Print a line to the serial console.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::serial::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::print(format_args!("{}\n", format_args!($($arg)*))) };
}
