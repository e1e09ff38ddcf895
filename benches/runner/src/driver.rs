//! The module's `do_concurrent_test`: workers started together, each running every selected
//! test `test_repeat_count` times in its own order, timed like the module.
//!
//! Start: the main thread holds a gate (the module's `prepare_for_test_rwsem`, taken for
//! writing) while it spawns the workers; each worker shuffles its order, then blocks on the
//! gate for reading; releasing it starts them all at once. A worker that cannot be spawned is
//! reported and skipped, as the module does, instead of deadlocking a barrier.
//!
//! Each worker pins itself to CPU slot `i` (`pagetable::cpu::set_this_cpu`), so per-CPU state
//! is spread as kthreads bound round-robin would spread it. Timing: per test, the wall time of
//! all repeats divided by `test_repeat_count` (µs, the module's `avg`), and per worker the TSC
//! cycles (x86_64) or nanoseconds (elsewhere) from the first test to the last.
//!
//! A case's error is a failure; a panic inside a case is caught and counted as a failure too
//! (with its message), so one bug cannot take the report down.
//!
//! With a timeout, a watchdog (the kernel's hung-task detector, in effect) waits for the
//! workers; past the deadline it prints which test each worker is in and exits the process
//! with status 3, since a stuck allocator call cannot be interrupted from outside.
//!
//! Shared state: the gate (`parking_lot::RwLock`), the optional progress bar (internally
//! synchronised), one `Relaxed` atomic per worker naming its current test (read only by the
//! watchdog's report), and the watchdog's done flag (`Mutex` + `Condvar`). Results travel back
//! through the join handles.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use parking_lot::{Condvar, Mutex, RwLock};
use serde::Serialize;

use crate::cases::{self, Ctx, TestCase};
use crate::params::Params;
use crate::rng::{self, Rng};
use vmalloc_impls::VmallocImpl;

/// Errors kept per test and worker (the rest are counted only).
const MAX_ERRORS_KEPT: usize = 4;

/// One test's figures on one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestResult {
    /// The module's id.
    pub id: u32,
    /// The module's name.
    pub name: &'static str,
    /// Repeats that passed (for align_shift_alloc_test: that failed as expected).
    pub passed: u32,
    /// Repeats that failed.
    pub failed: u32,
    /// Wall time of all repeats divided by the repeat count, µs.
    pub avg_usec: u64,
    /// The first few failure messages.
    pub errors: Vec<String>,
}

/// One worker's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerResult {
    /// Worker index.
    pub worker: u32,
    /// The CPU slot it pinned itself to.
    pub cpu: usize,
    /// Its tests in the order it ran them.
    pub tests: Vec<TestResult>,
    /// TSC cycles from its first test to its last (x86_64), else nanoseconds.
    pub cycles: u64,
    /// Wall time from its first test to its last, µs.
    pub elapsed_usec: u64,
}

/// Workers that could not be started (with the OS error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpawnFailure {
    /// Worker index.
    pub worker: u32,
    /// Why.
    pub error: String,
}

/// A timestamp counter: TSC cycles on x86_64, nanoseconds since `origin` elsewhere.
fn cycles(origin: Instant) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let _ = origin;
        // SAFETY: RDTSC exists on every x86_64 CPU and only reads the time-stamp counter; it
        // touches no memory.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        origin.elapsed().as_nanos() as u64
    }
}

/// Run `case` once, turning a panic into a failure.
fn run_once(case: &TestCase, ctx: &mut Ctx<'_>) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| (case.run)(ctx))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.0),
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".to_owned());
            Err(format!("panicked: {msg}"))
        }
    }
}

/// "Done" in a worker's current-test slot.
const WORKER_DONE: u32 = u32::MAX;

/// What a worker needs besides its index.
struct Shared<'a> {
    imp: &'a dyn VmallocImpl,
    params: &'a Params,
    seed: u64,
    gate: &'a RwLock<()>,
    progress: Option<&'a ProgressBar>,
    /// Per worker: the id of the test it is running (0 before the first, `WORKER_DONE` after).
    current: &'a [AtomicU32],
}

/// The body of worker `i`.
fn worker(i: u32, sh: &Shared<'_>) -> WorkerResult {
    let (imp, params, seed, gate, progress) = (sh.imp, sh.params, sh.seed, sh.gate, sh.progress);
    pagetable::cpu::set_this_cpu(i as usize);
    let mut rng = Rng::new(seed, u64::from(i));
    // The module shuffles its whole table, then skips the tests the mask leaves out.
    let mut order: Vec<&'static TestCase> = cases::TESTS.iter().collect();
    if !params.sequential_test_order {
        rng::shuffle(&mut order, &mut rng);
    }
    let origin = Instant::now();
    drop(gate.read());

    let start = Instant::now();
    let c0 = cycles(origin);
    let mut tests = Vec::new();
    for case in order
        .into_iter()
        .filter(|t| params.run_test_mask & t.id() != 0)
    {
        let mut r = TestResult {
            id: case.id(),
            name: case.name,
            passed: 0,
            failed: 0,
            avg_usec: 0,
            errors: Vec::new(),
        };
        sh.current[i as usize].store(case.id(), Ordering::Relaxed);
        let t0 = Instant::now();
        for _ in 0..params.test_repeat_count {
            let mut ctx = Ctx {
                imp,
                params,
                rng: &mut rng,
            };
            match run_once(case, &mut ctx) {
                Ok(()) => r.passed += 1,
                Err(e) => {
                    r.failed += 1;
                    if r.errors.len() < MAX_ERRORS_KEPT {
                        r.errors.push(e);
                    }
                }
            }
            if let Some(pb) = progress {
                pb.inc(1);
            }
        }
        let us = t0.elapsed().as_micros() as u64;
        r.avg_usec = us / u64::from(params.test_repeat_count.max(1));
        tests.push(r);
    }
    sh.current[i as usize].store(WORKER_DONE, Ordering::Relaxed);
    WorkerResult {
        worker: i,
        cpu: pagetable::cpu::this_cpu(),
        tests,
        cycles: cycles(origin).wrapping_sub(c0),
        elapsed_usec: start.elapsed().as_micros() as u64,
    }
}

/// What a concurrent run produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Workers that ran, by index.
    pub workers: Vec<WorkerResult>,
    /// Workers that could not be spawned.
    pub spawn_failures: Vec<SpawnFailure>,
    /// Wall time from releasing the gate to the last join.
    pub elapsed: Duration,
}

/// The watchdog's report: where each worker is.
fn report_hang(timeout: Duration, current: &[AtomicU32]) -> String {
    let mut msg = format!("test_vmalloc: timeout after {} s:", timeout.as_secs_f64());
    for (i, c) in current.iter().enumerate() {
        let id = c.load(Ordering::Relaxed);
        let what = match id {
            0 => "not started",
            WORKER_DONE => "done",
            id => cases::TESTS
                .iter()
                .find(|t| t.id() == id)
                .map_or("?", |t| t.name),
        };
        msg.push_str(&format!(" worker{i}: {what};"));
    }
    msg
}

/// Start `params.nr_threads` workers on `imp` together and collect their results. With a
/// `timeout`, a run that has not finished by then is reported on stderr and the process exits
/// with status 3.
pub fn run_concurrent(
    imp: &dyn VmallocImpl,
    params: &Params,
    seed: u64,
    progress: Option<&ProgressBar>,
    timeout: Option<Duration>,
) -> Outcome {
    let gate = RwLock::new(());
    let current: Vec<AtomicU32> = (0..params.nr_threads).map(|_| AtomicU32::new(0)).collect();
    let done = (Mutex::new(false), Condvar::new());
    let shared = Shared {
        imp,
        params,
        seed,
        gate: &gate,
        progress,
        current: &current,
    };
    let mut spawn_failures = Vec::new();
    let mut workers = Vec::new();
    let mut elapsed = Duration::ZERO;
    std::thread::scope(|s| {
        if let Some(t) = timeout {
            let (done, current) = (&done, &current);
            s.spawn(move || {
                let deadline = Instant::now() + t;
                let mut g = done.0.lock();
                while !*g {
                    if done.1.wait_until(&mut g, deadline).timed_out() && !*g {
                        eprintln!("{}", report_hang(t, current));
                        std::process::exit(3);
                    }
                }
            });
        }
        let hold = gate.write();
        let mut handles = Vec::new();
        for i in 0..params.nr_threads {
            let shared = &shared;
            let b = std::thread::Builder::new().name(format!("vmalloc_test/{i}"));
            match b.spawn_scoped(s, move || worker(i, shared)) {
                Ok(h) => handles.push((i, h)),
                Err(e) => spawn_failures.push(SpawnFailure {
                    worker: i,
                    error: e.to_string(),
                }),
            }
        }
        let t0 = Instant::now();
        drop(hold);
        for (i, h) in handles {
            match h.join() {
                Ok(r) => workers.push(r),
                // Cases catch their own panics; this is a panic in the harness itself.
                Err(_) => spawn_failures.push(SpawnFailure {
                    worker: i,
                    error: "worker thread panicked outside a test".into(),
                }),
            }
        }
        elapsed = t0.elapsed();
        *done.0.lock() = true;
        done.1.notify_all();
    });
    Outcome {
        workers,
        spawn_failures,
        elapsed,
    }
}
