//! What this kernel has instead of a scheduler: one thread of control per CPU. The boot CPU
//! runs `kernel_main`; every other CPU sits in [`idle_loop`], which runs the deferred work
//! ([`crate::work`]) and the jobs [`run_on`] hands it, and halts with interrupts on when
//! there is nothing (a wake-up IPI ends the halt). Long-running jobs call [`preempt_point`]
//! between iterations, where queued work runs as a preemptive kernel's kworker would.

use core::sync::atomic::Ordering;

use pagetable::platform::Platform;

use crate::interrupts::WAKE_VECTOR;
use crate::percpu::{self, Job};
use crate::platform::Kernel;
use crate::{apic, cpu, work};

/// Run queued deferred work, if any (cheap when there is none).
#[inline]
pub fn preempt_point() {
    if work::pending() {
        work::run_pending();
    }
}

/// Wake one idle CPU other than this one (if any) so it runs the queued work.
pub fn wake_idle_cpu() {
    if !apic::ready() {
        return;
    }
    let me = percpu::this_cpu();
    if let Some(c) = (0..Kernel::nr_cpu_ids())
        .filter(|&c| c != me)
        .find(|&c| percpu::cpu(c).idle.load(Ordering::Acquire))
    {
        apic::send_ipi(percpu::cpu(c).apic_id.load(Ordering::Relaxed), WAKE_VECTOR);
    }
}

/// Give `job` to online CPU `cpu` (not the caller; its previous job must be done) and wake it.
pub fn run_on(cpu: usize, job: Job) {
    let pc = percpu::cpu(cpu);
    assert!(cpu != percpu::this_cpu() && pc.online.load(Ordering::Acquire));
    assert!(pc.job_done.load(Ordering::Acquire), "cpu {cpu} is busy");
    pc.job_done.store(false, Ordering::Relaxed);
    *pc.job.lock() = Some(job);
    apic::send_ipi(pc.apic_id.load(Ordering::Relaxed), WAKE_VECTOR);
}

/// Wait until CPU `cpu` finished the job [`run_on`] gave it (running queued work meanwhile).
pub fn wait_for(cpu: usize) {
    while !percpu::cpu(cpu).job_done.load(Ordering::Acquire) {
        preempt_point();
        cpu::pause();
    }
}

/// The idle loop of an application processor (never returns).
pub fn idle_loop() -> ! {
    let pc = percpu::cpu(percpu::this_cpu());
    loop {
        preempt_point();
        let job = pc.job.lock().take();
        if let Some(job) = job {
            job();
            pc.job_done.store(true, Ordering::Release);
            continue;
        }
        cpu::disable_interrupts();
        pc.idle.store(true, Ordering::SeqCst);
        if work::pending() || pc.job.lock().is_some() {
            pc.idle.store(false, Ordering::Relaxed);
            // SAFETY: the IDT is loaded on every CPU that runs the idle loop.
            unsafe { cpu::enable_interrupts() };
            continue;
        }
        // SAFETY: as above; `sti; hlt` cannot miss a wake-up sent after the checks above.
        unsafe { cpu::enable_interrupts_and_halt() };
        pc.idle.store(false, Ordering::Relaxed);
    }
}
