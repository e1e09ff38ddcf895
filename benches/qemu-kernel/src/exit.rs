//! Leaving QEMU: the `isa-debug-exit` device (I/O port 0xf4) ends the emulator with status
//! `(value << 1) | 1`, so a script tells pass from fail by the exit status alone.

use crate::cpu;

/// The `isa-debug-exit` port (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`).
const PORT: u16 = 0xf4;

/// Written on success: QEMU exits with status 33.
pub const PASS: u32 = 0x10;
/// Written on failure: QEMU exits with status 35.
pub const FAIL: u32 = 0x11;

/// End the run with `code` ([`PASS`] or [`FAIL`]). Without the device (a real machine) the
/// write does nothing and the CPU halts.
pub fn exit(code: u32) -> ! {
    cpu::outl(PORT, code);
    cpu::halt_forever()
}
