//! Boot, in order: console, per-CPU data and IDT of the boot CPU, legacy PICs off, the PVH
//! start info, the CPUs from ACPI (fixing `nr_cpu_ids`), the heap and the frame allocator
//! over the memory map, the kernel's page tables (loaded in CR3), vmalloc over them with the
//! kernel's TLB flush and work queue, the local APIC, interrupts on, the TSC calibrated, the
//! application processors started, the command line parsed.

use alloc::boxed::Box;
use alloc::sync::Arc;
use core::sync::atomic::Ordering;

use vmalloc::{KvaConfig, TlbChoice, Vmalloc};

use crate::boot::{self, PAGE_OFFSET};
use crate::params::Params;
use crate::platform::{self, Kernel};
use crate::tlb::KernelTlb;
use crate::{
    acpi, apic, cpu, exit, heap, interrupts, kprintln, paging, percpu, serial, smp, time, work,
};

/// The heap is this fraction of the RAM region the kernel runs in.
const HEAP_FRACTION: u64 = 8;

/// What the tests run on.
pub struct System {
    /// The kernel's vmalloc (lives forever).
    pub vm: &'static Vmalloc<Kernel>,
    /// Its TLB flush, with the shootdown counters.
    pub tlb: Arc<KernelTlb>,
    /// CPUs online (`0..online`).
    pub online: usize,
    /// The command line's parameters.
    pub params: Params,
}

/// Stop with a message (boot cannot go on).
fn fail(msg: &str) -> ! {
    kprintln!("boot: {msg}\nresult: FAIL");
    exit::exit(exit::FAIL)
}

/// Bring the machine up (boot CPU, once).
pub fn boot(start_info: u32) -> System {
    serial::init();
    percpu::init_this_cpu(0);
    interrupts::init();
    interrupts::load();
    apic::disable_legacy_pic();
    let Some(info) = boot::BootInfo::read(start_info) else {
        fail("no PVH start info (magic or version wrong)");
    };
    let cpus = acpi::cpus(info.rsdp, cpu::initial_apic_id());
    platform::set_nr_cpu_ids(cpus.len);
    let (_, kernel_end) = boot::kernel_image();
    let Some(layout) = info.memory.layout(kernel_end, HEAP_FRACTION) else {
        fail("no usable RAM region after the kernel image");
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
    let tlb = Arc::new(KernelTlb::new());
    let vm = match Vmalloc::<Kernel>::with_space(
        KvaConfig::default(),
        &[],
        space,
        TlbChoice::Custom(tlb.clone()),
        Some(Arc::new(work::Workqueue)),
    ) {
        Ok(vm) => vm,
        Err(_) => fail("vmalloc could not be built"),
    };
    let vm: &'static Vmalloc<Kernel> = Box::leak(Box::new(vm));
    work::set_instance(vm);
    apic::init(vm);
    percpu::cpu(0).online.store(true, Ordering::Release);
    // SAFETY: the IDT is loaded and has a handler for every vector the APIC can deliver.
    unsafe { cpu::enable_interrupts() };
    let tsc_hz = time::calibrate();
    let online = smp::start_aps(vm, &cpus.ids()[1..]);
    kprintln!(
        "qemu-kernel: {online} of {} cpus online, tsc {} MHz, heap {} MiB, frames {} MiB at {:#x}, cr3 {:#x}{}",
        cpus.len,
        tsc_hz / 1_000_000,
        (layout.heap.1 - layout.heap.0) >> 20,
        (layout.arena.1 - layout.arena.0) >> 20,
        layout.arena.0,
        cpu::read_cr3(),
        if crate::tlb::BROKEN {
            ", BROKEN FLUSH (test build)"
        } else {
            ""
        }
    );
    let params = match Params::parse(info.cmdline()) {
        Ok(p) => p,
        Err(word) => {
            kprintln!("bad command-line word {word:?}");
            fail("command line");
        }
    };
    System {
        vm,
        tlb,
        online,
        params,
    }
}
