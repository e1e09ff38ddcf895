//! A minimal x86_64 kernel whose vmalloc is the `vmalloc` crate over `pagetable`, on the
//! CPU's own MMU. See `docs/QEMU.md` for the layout and what each part does.

#![no_std]
#![no_main]

extern crate alloc;

mod apic;
mod boot;
mod cases;
mod check;
mod cpu;
mod exit;
mod heap;
mod interrupts;
mod memory;
mod paging;
mod params;
mod percpu;
mod platform;
mod rng;
mod runner;
mod sched;
mod serial;
mod stale_tlb;
mod time;
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

    let tsc_hz = time::calibrate();
    let params = match params::Params::parse(info.cmdline()) {
        Ok(p) => p,
        Err(word) => {
            kprintln!("bad command-line word {word:?}\nresult: FAIL");
            exit::exit(exit::FAIL);
        }
    };
    kprintln!("cpus: 1 online; tsc {} MHz; {params:?}", tsc_hz / 1_000_000);
    let base = check::baseline(vm);
    let t0 = time::now_usec();
    let workers = runner::run(&params, vm, 1);
    let wall = time::now_usec() - t0;
    runner::report(&params, &workers);
    let mut ok = workers.iter().all(runner::WorkerResult::ok);
    let st = tlb.shootdown_stats();
    let (scheduled, purges) = work::counts();
    kprintln!(
        "tlb flushes: {} ({} full, {} pages)   shootdown rounds: {}   ipis: {}   work items: {scheduled}   queued purges run: {purges}   wall: {}.{:03} s",
        st.tlb.flushes, st.tlb.full_flushes, st.tlb.pages_flushed, st.rounds, st.ipis, wall / 1_000_000, wall / 1000 % 1000
    );
    if params.stale_tlb_rounds > 0 {
        let r = stale_tlb::run(vm, tlb.as_ref(), params.stale_tlb_rounds, 1);
        kprintln!(
            "stale_tlb_test: {} rounds{}: old translation still live after vfree in {}, reads after reuse: {} new frame, {} old frame -> {}",
            r.rounds,
            if tlb::BROKEN { " (broken-flush build)" } else { "" },
            r.stale_before_flush,
            r.fresh_after_reuse,
            r.stale_after_reuse,
            if r.ok() { "PASS" } else { "FAIL" }
        );
        for e in &r.errors {
            kprintln!("stale_tlb_test: {e}");
        }
        ok &= r.ok();
    }
    match check::idle_check(vm, base, tlb.as_ref()) {
        Ok(()) => kprintln!("idle check: ok (nothing live, nothing lazy, every frame back)"),
        Err(e) => {
            ok = false;
            kprintln!("idle check: FAILED: {e}");
        }
    }
    let (used, size) = heap::usage();
    kprintln!("heap: {} KiB live of {} MiB", used >> 10, size >> 20);
    kprintln!("result: {}", if ok { "PASS" } else { "FAIL" });
    exit::exit(if ok { exit::PASS } else { exit::FAIL })
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    serial::print_fatal(format_args!("\nKERNEL PANIC on cpu {}: {info}\nresult: FAIL\n", percpu::this_cpu()));
    exit::exit(exit::FAIL)
}
