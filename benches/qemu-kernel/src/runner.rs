//! `do_concurrent_test`: `nr_threads` workers, worker `i` on CPU `i % online CPUs` (a CPU
//! with several workers runs them one after another: there is no scheduler), released
//! together through a gate; each shuffles the test table with its own generator (unless
//! `sequential_test_order`) and runs every selected test `test_repeat_count` times. Then the
//! module's lines: `Summary: <test> passed: N failed: M repeat: R loops: L avg: U usec` per
//! worker, and `All test took worker<i>=<cycles> cycles`, as the hosted runner prints them.

use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use pagetable::platform::RawSpinlock;
use pagetable::platform::lock_api::Mutex;
use vmalloc::Vmalloc;

use crate::cases::{self, Ctx, TestCase};
use crate::params::Params;
use crate::platform::Kernel;
use crate::rng::{Rng, shuffle};
use crate::{cpu, kprintln, percpu, sched, time};

/// One test's outcome on one worker.
#[derive(Debug, Clone)]
pub struct TestRun {
    /// The module's id.
    pub id: u32,
    /// The module's name.
    pub name: &'static str,
    /// Repeats that passed (an expected failure counts as passed).
    pub passed: u32,
    /// Repeats that failed.
    pub failed: u32,
    /// TSC cycles of all repeats.
    pub cycles: u64,
    /// The failures' messages.
    pub errors: Vec<String>,
}

/// One worker's outcome.
#[derive(Debug, Clone)]
pub struct WorkerResult {
    /// The worker's number.
    pub worker: usize,
    /// The CPU it ran on.
    pub cpu: usize,
    /// Its tests, in the order it ran them.
    pub tests: Vec<TestRun>,
    /// TSC cycles of the whole worker.
    pub cycles: u64,
}

impl WorkerResult {
    /// Whether every test passed.
    pub fn ok(&self) -> bool {
        self.tests.iter().all(|t| t.failed == 0)
    }
}

fn run_worker(worker: usize, params: &Params, vm: &Vmalloc<Kernel>, online: usize) -> WorkerResult {
    let mut rng = Rng::new(params.seed, worker as u64);
    let mut order: Vec<&'static TestCase> = cases::selected(params.run_test_mask).collect();
    if !params.sequential_test_order {
        shuffle(&mut order, &mut rng);
    }
    let start = cpu::rdtsc();
    let mut tests = Vec::with_capacity(order.len());
    for t in order {
        let mut run = TestRun {
            id: t.id(),
            name: t.name,
            passed: 0,
            failed: 0,
            cycles: 0,
            errors: Vec::new(),
        };
        for _ in 0..params.test_repeat_count {
            let mut ctx = Ctx {
                vm,
                params,
                rng: &mut rng,
                online_cpus: online,
            };
            let t0 = cpu::rdtsc();
            let r = (t.run)(&mut ctx);
            run.cycles += cpu::rdtsc() - t0;
            match r {
                Ok(()) => run.passed += 1,
                Err(e) => {
                    run.failed += 1;
                    run.errors.push(e);
                }
            }
        }
        tests.push(run);
    }
    WorkerResult {
        worker,
        cpu: percpu::this_cpu(),
        tests,
        cycles: cpu::rdtsc() - start,
    }
}

/// Run the workers on the online CPUs `0..online` and return their results (worker order).
pub fn run(params: &Params, vm: &'static Vmalloc<Kernel>, online: usize) -> Vec<WorkerResult> {
    let n = params.nr_threads as usize;
    let cpus = online.min(n).max(1);
    let results: Arc<Mutex<RawSpinlock, Vec<Option<WorkerResult>>>> =
        Arc::new(Mutex::new((0..n).map(|_| None).collect()));
    let ready = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(AtomicBool::new(false));
    let params = *params;
    let job = {
        let (results, ready, go) = (results.clone(), ready.clone(), go.clone());
        move |c: usize| {
            ready.fetch_add(1, Ordering::AcqRel);
            while !go.load(Ordering::Acquire) {
                cpu::pause();
            }
            for w in (c..n).step_by(cpus) {
                let r = run_worker(w, &params, vm, online);
                results.lock()[w] = Some(r);
            }
        }
    };
    for c in 1..cpus {
        let job = job.clone();
        sched::run_on(c, alloc::boxed::Box::new(move || job(c)));
    }
    while ready.load(Ordering::Acquire) != cpus - 1 {
        cpu::pause();
    }
    go.store(true, Ordering::Release);
    job(0);
    for c in 1..cpus {
        sched::wait_for(c);
    }
    let mut out = results.lock();
    out.iter_mut()
        .map(|r| r.take().expect("every worker reported"))
        .collect()
}

/// Print the module's lines for `workers`, then one table row per test (summed over the
/// workers, `avg` their mean, in µs under emulation).
pub fn report(params: &Params, workers: &[WorkerResult]) {
    for w in workers {
        for case in cases::selected(params.run_test_mask) {
            if let Some(t) = w.tests.iter().find(|t| t.id == case.id()) {
                kprintln!(
                    "Summary: {} passed: {} failed: {} repeat: {} loops: {} avg: {} usec",
                    t.name,
                    t.passed,
                    t.failed,
                    params.test_repeat_count,
                    params.test_loop_count,
                    avg_usec(t, params)
                );
            }
        }
        kprintln!("All test took worker{}={} cycles", w.worker, w.cycles);
    }
    kprintln!(
        "{:<30} {:>5} {:>7} {:>7} {:>12}  note",
        "test",
        "id",
        "passed",
        "failed",
        "avg usec"
    );
    for case in cases::selected(params.run_test_mask) {
        let rows: Vec<&TestRun> = workers
            .iter()
            .flat_map(|w| w.tests.iter().filter(|t| t.id == case.id()))
            .collect();
        let passed: u32 = rows.iter().map(|t| t.passed).sum();
        let failed: u32 = rows.iter().map(|t| t.failed).sum();
        let avg = rows.iter().map(|t| avg_usec(t, params)).sum::<u64>() / rows.len().max(1) as u64;
        let note = match (case.expected_to_fail, failed) {
            (true, 0) => "failed as expected",
            (_, 0) => "",
            _ => "FAILED",
        };
        kprintln!(
            "{:<30} {:>5} {:>7} {:>7} {:>12}  {note}",
            case.name,
            case.id(),
            passed,
            failed,
            avg
        );
    }
    for w in workers {
        for t in &w.tests {
            for e in &t.errors {
                kprintln!("worker{} {}: {e}", w.worker, t.name);
            }
        }
    }
}

/// The module's `avg`: the time of all repeats over the repeat count, µs.
fn avg_usec(t: &TestRun, params: &Params) -> u64 {
    time::cycles_to_usec(t.cycles) / u64::from(params.test_repeat_count.max(1))
}

/// A one-line description of the workers' placement.
pub fn placement(workers: &[WorkerResult]) -> String {
    let cpus: Vec<String> = workers.iter().map(|w| format!("{}", w.cpu)).collect();
    format!("workers on cpus [{}]", cpus.join(", "))
}
