//! A minimal x86_64 kernel whose vmalloc is the `vmalloc` crate over `pagetable`, on the
//! CPU's own MMU. See `docs/QEMU.md` for the layout and what each part does.

#![no_std]
#![no_main]

extern crate alloc;

mod boot;
mod cpu;
mod exit;
mod heap;
mod memory;
mod serial;

use core::panic::PanicInfo;

/// The boot CPU's Rust entry, called by the boot stub in long mode on the boot stack with
/// the physical address of the PVH start info.
#[unsafe(no_mangle)]
pub extern "C" fn kernel_main(start_info: u32) -> ! {
    serial::init();
    kprintln!("qemu-kernel: booting");
    let Some(info) = boot::BootInfo::read(start_info) else {
        kprintln!("no PVH start info (magic or version wrong)");
        exit::exit(exit::FAIL);
    };
    for r in info.memory.iter() {
        kprintln!("  memory {:#012x}..{:#012x} type {}", r.start, r.start + r.len, r.kind);
    }
    kprintln!("  cmdline: {:?}", info.cmdline());
    let (ks, ke) = boot::kernel_image();
    kprintln!("  kernel image {ks:#x}..{ke:#x}");
    exit::exit(exit::PASS)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    serial::print_fatal(format_args!("\nKERNEL PANIC: {info}\n"));
    exit::exit(exit::FAIL)
}
