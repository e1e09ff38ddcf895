//! A minimal x86_64 kernel whose vmalloc is the `vmalloc` crate over `pagetable`, on the
//! CPU's own MMU, with IPI shootdowns between CPUs. It boots ([`setup::boot`]), runs the
//! test_vmalloc cases with the command line's parameters, the stale-TLB test and the
//! lazy-against-eager shootdown comparison, checks that nothing leaked, prints
//! `result: PASS` or `result: FAIL` and leaves QEMU through `isa-debug-exit` with the
//! matching status. See `docs/QEMU.md`.

#![no_std]
#![no_main]

extern crate alloc;

mod acpi;
mod apic;
mod boot;
mod cases;
mod check;
mod cpu;
mod exit;
mod heap;
mod interrupts;
mod ipi_compare;
mod memory;
mod paging;
mod params;
mod percpu;
mod platform;
mod rng;
mod runner;
mod sched;
mod serial;
mod setup;
mod smp;
mod stale_tlb;
mod time;
mod tlb;
mod work;

use core::panic::PanicInfo;

/// The boot CPU's Rust entry, called by the boot stub in long mode on the boot stack with
/// the physical address of the PVH start info.
#[unsafe(no_mangle)]
pub extern "C" fn kernel_main(start_info: u32) -> ! {
    let sys = setup::boot(start_info);
    let (vm, p) = (sys.vm, &sys.params);
    kprintln!("{p:?}");
    let base = check::baseline(vm);
    let mut ok = true;

    let t0 = time::now_usec();
    let workers = runner::run(p, vm, sys.online);
    let wall = time::now_usec() - t0;
    runner::report(p, &workers);
    ok &= workers.iter().all(runner::WorkerResult::ok);
    let st = sys.tlb.shootdown_stats();
    let (scheduled, purges) = work::counts();
    kprintln!(
        "test_vmalloc: {} ({} cpus), wall {}.{:03} s; tlb flushes {} ({} full, {} pages), shootdown rounds {}, ipis {}; work items {scheduled}, queued purges run {purges}",
        runner::placement(&workers),
        sys.online,
        wall / 1_000_000,
        wall / 1000 % 1000,
        st.tlb.flushes,
        st.tlb.full_flushes,
        st.tlb.pages_flushed,
        st.rounds,
        st.ipis
    );

    if p.stale_tlb_rounds > 0 {
        let r = stale_tlb::run(vm, sys.tlb.as_ref(), p.stale_tlb_rounds, sys.online);
        kprintln!(
            "stale_tlb_test: {} rounds: old translation still live after vfree in {}, reads after reuse: {} new frame, {} old frame -> {}",
            r.rounds,
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

    if p.ipi_compare_loops > 0 {
        let c = ipi_compare::run(vm, &sys.tlb, sys.online, p.seed, p.ipi_compare_loops);
        for (name, cost) in [("lazy", c.lazy), ("eager", c.eager)] {
            kprintln!(
                "shootdowns {name:>5}: {} cpus x {} loops: {} flushes, {} ipi rounds, {} ipis, {} errors, {} ms",
                c.cpus,
                p.ipi_compare_loops,
                cost.flushes,
                cost.rounds,
                cost.ipis,
                cost.errors,
                cost.usec / 1000
            );
        }
        let (what, lazy, eager) = if c.cpus > 1 {
            ("ipi rounds", c.lazy.rounds, c.eager.rounds)
        } else {
            ("flushes", c.lazy.flushes, c.eager.flushes)
        };
        kprintln!(
            "shootdowns: lazy {lazy} {what}, eager {eager} (lazy must be at most a tenth) -> {}",
            if c.ok() { "PASS" } else { "FAIL" }
        );
        ok &= c.ok();
    }

    match check::idle_check(vm, base, sys.tlb.as_ref()) {
        Ok(()) => kprintln!("idle check: ok (nothing live, nothing lazy, every frame back)"),
        Err(e) => {
            ok = false;
            kprintln!("idle check: FAILED: {e}");
        }
    }
    let (used, size) = heap::usage();
    let frames = vm.frame_stats();
    kprintln!(
        "memory: frames high water {} MiB of {} MiB, heap {} KiB live of {} MiB; shootdown IPIs handled {}",
        frames.high_water >> 8,
        frames.total >> 8,
        used >> 10,
        size >> 20,
        tlb::handled()
    );
    kprintln!("result: {}", if ok { "PASS" } else { "FAIL" });
    exit::exit(if ok { exit::PASS } else { exit::FAIL })
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    serial::print_fatal(format_args!(
        "\nKERNEL PANIC on cpu {}: {info}\nresult: FAIL\n",
        percpu::this_cpu()
    ));
    exit::exit(exit::FAIL)
}
