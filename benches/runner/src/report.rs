//! A run's report: the module's summary lines, a readable table, and the JSON document.
//!
//! [`RunReport`] is plain data (serde `Serialize`); [`RunReport::kernel_lines`] prints exactly
//! the module's `pr_info` lines (`Summary: <test> passed: N failed: M repeat: R loops: L avg: U
//! usec`, then `All test took worker<i>=<c> cycles`), [`RunReport::table`] one row per test
//! summed over the workers. No shared state.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cases;
use crate::driver::{SpawnFailure, WorkerResult};
use crate::params::{Mode, Params};
use vmalloc_impls::{AllocatorKind, ImplStats};

/// One test summed over the workers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestSummary {
    /// The module's id.
    pub id: u32,
    /// The module's name.
    pub name: &'static str,
    /// Passed repeats, all workers.
    pub passed: u32,
    /// Failed repeats, all workers.
    pub failed: u32,
    /// Mean over the workers of their `avg` (µs per repeat).
    pub avg_usec: u64,
    /// `avg_usec` divided by `test_loop_count`, in ns (a per-iteration cost; meaningless for
    /// the tests whose loop is not their main work: align_shift and pcpu).
    pub ns_per_loop: u64,
    /// Whether failure is the expected outcome (counted as passing when it happens).
    pub expected_to_fail: bool,
}

/// The idle check after the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// Whether every invariant held.
    pub ok: bool,
    /// The first violation, if any.
    pub error: Option<String>,
}

/// Everything a run produced.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    /// The implementation.
    pub allocator: AllocatorKind,
    /// The template, if any.
    pub mode: Option<Mode>,
    /// The parameters.
    pub params: Params,
    /// The seed (rerun with `--seed` to repeat the random choices).
    pub seed: u64,
    /// Arena size used, bytes.
    pub arena_bytes: u64,
    /// CPU slots (`num_online_cpus()` here).
    pub nr_cpus: usize,
    /// Per-worker results.
    pub workers: Vec<WorkerResult>,
    /// Workers that could not start.
    pub spawn_failures: Vec<SpawnFailure>,
    /// Per-test sums, in id order.
    pub summary: Vec<TestSummary>,
    /// Counters after the run and the final purge.
    pub stats: ImplStats,
    /// The idle check.
    pub check: CheckResult,
    /// Wall time of the concurrent part, µs.
    pub elapsed_usec: u64,
    /// Every test passed, every worker started, the check held.
    pub ok: bool,
}

impl RunReport {
    /// Sum the workers' results per test (id order).
    pub fn summarize(params: &Params, workers: &[WorkerResult]) -> Vec<TestSummary> {
        cases::selected(params.run_test_mask)
            .map(|case| {
                let rows: Vec<_> = workers
                    .iter()
                    .flat_map(|w| w.tests.iter().filter(|t| t.id == case.id()))
                    .collect();
                let n = rows.len().max(1) as u64;
                let avg = rows.iter().map(|t| t.avg_usec).sum::<u64>() / n;
                TestSummary {
                    id: case.id(),
                    name: case.name,
                    passed: rows.iter().map(|t| t.passed).sum(),
                    failed: rows.iter().map(|t| t.failed).sum(),
                    avg_usec: avg,
                    ns_per_loop: avg.saturating_mul(1000)
                        / u64::from(params.test_loop_count.max(1)),
                    expected_to_fail: case.expected_to_fail,
                }
            })
            .collect()
    }

    /// The module's `pr_info` output, worker by worker.
    pub fn kernel_lines(&self) -> String {
        let mut s = String::new();
        for w in &self.workers {
            // The module prints in table order, whatever order the worker ran them in.
            for case in cases::selected(self.params.run_test_mask) {
                if let Some(t) = w.tests.iter().find(|t| t.id == case.id()) {
                    let _ = writeln!(
                        s,
                        "Summary: {} passed: {} failed: {} repeat: {} loops: {} avg: {} usec",
                        t.name,
                        t.passed,
                        t.failed,
                        self.params.test_repeat_count,
                        self.params.test_loop_count,
                        t.avg_usec
                    );
                }
            }
            let unit = if cfg!(target_arch = "x86_64") {
                "cycles"
            } else {
                "ns"
            };
            let _ = writeln!(s, "All test took worker{}={} {unit}", w.worker, w.cycles);
        }
        for f in &self.spawn_failures {
            let _ = writeln!(s, "Failed to start {} kthread: {}", f.worker, f.error);
        }
        s
    }

    /// A readable table: one row per test, then the counters and the check.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "allocator: {}   mode: {}   workers: {}   loops: {}   repeat: {}   seed: {}{}",
            self.allocator,
            self.mode.map_or("manual", Mode::as_str),
            self.params.nr_threads,
            self.params.test_loop_count,
            self.params.test_repeat_count,
            self.seed,
            if self.params.use_huge {
                "   use_huge: 1"
            } else {
                ""
            }
        );
        let _ = writeln!(
            s,
            "{:<30} {:>5} {:>7} {:>7} {:>12} {:>10}  note",
            "test", "id", "passed", "failed", "avg usec", "ns/loop"
        );
        for t in &self.summary {
            let note = match (t.expected_to_fail, t.failed) {
                (true, 0) => "failed as expected",
                (_, 0) => "",
                _ => "FAILED",
            };
            let _ = writeln!(
                s,
                "{:<30} {:>5} {:>7} {:>7} {:>12} {:>10}  {note}",
                t.name, t.id, t.passed, t.failed, t.avg_usec, t.ns_per_loop
            );
        }
        let st = &self.stats;
        let _ = writeln!(
            s,
            "tlb flushes: {} ({} full, {} pages)   purges: {}   frames used: {} of {}   wall: {:.3} s",
            st.tlb_flushes,
            st.full_flushes,
            st.pages_flushed,
            st.purges,
            st.frames_used,
            st.frames_total,
            self.elapsed_usec as f64 / 1e6
        );
        match &self.check.error {
            None => {
                let _ = writeln!(
                    s,
                    "idle check: ok (nothing live, nothing lazy, every frame back)"
                );
            }
            Some(e) => {
                let _ = writeln!(s, "idle check: FAILED: {e}");
            }
        }
        for w in &self.workers {
            for t in w.tests.iter().filter(|t| !t.errors.is_empty()) {
                for e in &t.errors {
                    let _ = writeln!(s, "worker{} {}: {e}", w.worker, t.name);
                }
            }
        }
        let _ = writeln!(s, "result: {}", if self.ok { "PASS" } else { "FAIL" });
        s
    }
}
