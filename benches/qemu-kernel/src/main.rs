//! A minimal x86_64 kernel whose vmalloc is the `vmalloc` crate over `pagetable`, on the
//! CPU's own MMU. See `docs/QEMU.md` for the layout and what each part does.

#![no_std]
#![no_main]

extern crate alloc;

mod apic;
mod boot;
mod cpu;
mod exit;
mod heap;
mod interrupts;
mod memory;
mod paging;
mod percpu;
mod platform;
mod sched;
mod serial;
mod tlb;
mod work;

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::panic::PanicInfo;
use core::sync::atomic::Ordering;

use vmalloc::{KvaConfig, TlbChoice, Vmalloc};

use crate::boot::PAGE_OFFSET;
use crate::platform::Kernel;
use crate::tlb::KernelTlb;

/// The boot CPU's Rust entry, called by the boot stub in long mode on the boot stack with
/// the physical address of the PVH start info.
#[unsafe(no_mangle)]
pub extern "C" fn kernel_main(start_info: u32) -> ! {
    serial::init();
    percpu::init_this_cpu(0);
    interrupts::init();
    interrupts::load();
    apic::disable_legacy_pic();
    kprintln!("qemu-kernel: booting");
    let Some(info) = boot::BootInfo::read(start_info) else {
        kprintln!("no PVH start info (magic or version wrong)");
        exit::exit(exit::FAIL);
    };
    let (_, kernel_end) = boot::kernel_image();
    let Some(layout) = info.memory.layout(kernel_end, 8) else {
        kprintln!("no usable RAM region after the kernel image");
        exit::exit(exit::FAIL);
    };
    // SAFETY: `layout.heap` is RAM after the kernel image, mapped at PAGE_OFFSET by the boot
    // tables and by the kernel's tables after them, and given to nothing else.
    unsafe {
        heap::init(
            (PAGE_OFFSET + layout.heap.0) as *mut u8,
            (layout.heap.1 - layout.heap.0) as usize,
        )
    };
    let frames = paging::frame_allocator(&layout);
    let space = paging::build_and_load(&frames, &info.memory, kernel_end);
    kprintln!(
        "memory: heap {} MiB, arena {} MiB at {:#x}, cr3 {:#x}",
        (layout.heap.1 - layout.heap.0) >> 20,
        (layout.arena.1 - layout.arena.0) >> 20,
        layout.arena.0,
        cpu::read_cr3()
    );
    let tlb = Arc::new(KernelTlb::new());
    let vm = Vmalloc::<Kernel>::with_space(
        KvaConfig::default(),
        &[],
        space,
        TlbChoice::Custom(tlb.clone()),
        Some(Arc::new(work::Workqueue)),
    )
    .expect("vmalloc");
    let vm: &'static Vmalloc<Kernel> = Box::leak(Box::new(vm));
    work::set_instance(vm);
    apic::init(vm);
    percpu::cpu(0).online.store(true, Ordering::Release);
    // SAFETY: the IDT is loaded and has a handler for every vector the APIC can deliver.
    unsafe { cpu::enable_interrupts() };

    let p = vm.vmalloc(3 * 4096).expect("vmalloc");
    let ptr = p.as_u64() as *mut u64;
    // SAFETY: three fresh pages mapped writable at `p`, owned by this code until vfree.
    unsafe {
        ptr.write_volatile(0x1234_5678);
        ptr.add(1000).write_volatile(42);
        assert_eq!(ptr.read_volatile(), 0x1234_5678);
    }
    kprintln!("vmalloc {p:?}: ok; stats {:?}", tlb.shootdown_stats());
    vm.vfree(p).expect("vfree");
    vm.purge_vmap_area_lazy();
    kprintln!("after purge: {:?}; probe {:?}", tlb.shootdown_stats(), interrupts::probe_read(p.as_u64()));
    exit::exit(exit::PASS)
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    serial::print_fatal(format_args!("\nKERNEL PANIC on cpu {}: {info}\nresult: FAIL\n", percpu::this_cpu()));
    exit::exit(exit::FAIL)
}
