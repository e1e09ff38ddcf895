//! `--compare`: `fix_size_alloc_test` on each allocator over 1, 2, 4 and 8 workers, reported
//! as microseconds per vmalloc+vfree pair (the figure of the vmap-nodes series: each worker's
//! test time divided by its loop count, averaged over the workers), as a table and an SVG
//! chart; then the KVA layer alone on ours and the peers (see [`crate::compare_kva`]), as a
//! second table and chart.
//!
//! Every point gets a fresh instance (its own arena), so no allocator inherits another's
//! state, and each is purged and checked idle afterwards. Points run one after another; the
//! workers of one point run together. On a machine with fewer CPUs than workers the figure
//! includes time-slicing, as a kernel run with more kthreads than CPUs would.
//!
//! No shared state beyond the progress bar.

use std::fmt::Write as _;
use std::path::Path;

use plotters::style::RGBColor;
use serde::Serialize;

use crate::chart::{self, Line};
use crate::compare_kva::{self, KvaPoint};
use crate::params::{CompareConfig, Params};
use crate::{RunError, arena_for, clock_seed, driver, progress_bar};
use vmalloc_impls::{AllocatorKind, ImplConfig};

/// One (allocator, workers) point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComparePoint {
    /// The allocator.
    pub allocator: AllocatorKind,
    /// Workers.
    pub threads: u32,
    /// Mean over workers of (test time / loops), µs per vmalloc+vfree pair.
    pub usec_per_pair: f64,
    /// Passed repeats over all workers.
    pub passed: u32,
    /// Failed repeats over all workers.
    pub failed: u32,
    /// TLB flushes the point issued.
    pub tlb_flushes: u64,
    /// Whether the idle check held afterwards.
    pub check_ok: bool,
    /// The first error seen, if any.
    pub error: Option<String>,
}

/// The comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareReport {
    /// Loops per worker.
    pub test_loop_count: u32,
    /// Repeats per worker.
    pub test_repeat_count: u32,
    /// Pages per allocation.
    pub nr_pages: u32,
    /// CPU slots of this machine.
    pub nr_cpus: usize,
    /// Seed.
    pub seed: u64,
    /// Points, allocator-major.
    pub points: Vec<ComparePoint>,
    /// Where the chart went.
    pub chart: Option<String>,
    /// The KVA-only points (ours and the peers; see [`crate::compare_kva`]).
    pub kva_points: Vec<KvaPoint>,
    /// Where the KVA chart went.
    pub kva_chart: Option<String>,
    /// Every point passed and checked idle.
    pub ok: bool,
}

impl CompareReport {
    /// The table: one row per allocator, one column per worker count (µs per pair).
    pub fn table(&self) -> String {
        let mut threads: Vec<u32> = self.points.iter().map(|p| p.threads).collect();
        threads.sort_unstable();
        threads.dedup();
        let mut kinds: Vec<AllocatorKind> = Vec::new();
        for p in &self.points {
            if !kinds.contains(&p.allocator) {
                kinds.push(p.allocator);
            }
        }
        let mut s = String::new();
        let _ = writeln!(
            s,
            "fix_size_alloc_test, {} page(s), {} loops x {} repeat(s) per worker, {} CPUs: \
             usec per vmalloc+vfree pair",
            self.nr_pages.max(1),
            self.test_loop_count,
            self.test_repeat_count,
            self.nr_cpus
        );
        let _ = write!(s, "{:<12}", "allocator");
        for t in &threads {
            let _ = write!(s, " {:>10}", format!("{t} thr"));
        }
        let _ = writeln!(s);
        for k in &kinds {
            let _ = write!(s, "{:<12}", k.as_str());
            for t in &threads {
                match self
                    .points
                    .iter()
                    .find(|p| p.allocator == *k && p.threads == *t)
                {
                    Some(p) if p.failed == 0 && p.check_ok => {
                        let _ = write!(s, " {:>10.3}", p.usec_per_pair);
                    }
                    Some(_) => {
                        let _ = write!(s, " {:>10}", "FAILED");
                    }
                    None => {
                        let _ = write!(s, " {:>10}", "-");
                    }
                }
            }
            let _ = writeln!(s);
        }
        for p in self.points.iter().filter(|p| p.error.is_some()) {
            let _ = writeln!(
                s,
                "{} x{}: {}",
                p.allocator,
                p.threads,
                p.error.as_deref().unwrap_or_default()
            );
        }
        if let Some(c) = &self.chart {
            let _ = writeln!(s, "chart: {c}");
        }
        s.push_str(&compare_kva::table(&self.kva_points, self.test_loop_count));
        if let Some(c) = &self.kva_chart {
            let _ = writeln!(s, "chart: {c}");
        }
        let _ = writeln!(s, "result: {}", if self.ok { "PASS" } else { "FAIL" });
        s
    }
}

/// Run the comparison (and draw the chart if asked).
pub fn compare(cfg: &CompareConfig) -> Result<CompareReport, RunError> {
    let seed = cfg.seed.unwrap_or_else(clock_seed);
    let total = (cfg.allocators.len() * cfg.threads.len()) as u64;
    let pb = progress_bar(cfg.progress, total, "compare");
    let mut points = Vec::new();
    for &kind in &cfg.allocators {
        for &threads in &cfg.threads {
            if let Some(pb) = &pb {
                pb.set_message(format!("{kind} x{threads}"));
            }
            points.push(point(cfg, kind, threads, seed)?);
            if let Some(pb) = &pb {
                pb.inc(1);
            }
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let chart = match &cfg.chart {
        Some(path) => {
            draw_chart(path, &points, cfg).map_err(|why| RunError::Chart {
                path: path.display().to_string(),
                why,
            })?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let kva_points = compare_kva::run(&cfg.threads, cfg.test_loop_count);
    let nr_cpus = pagetable::cpu::nr_cpu_ids();
    let kva_chart = match &cfg.chart {
        Some(first) => {
            let path = compare_kva::chart_path(first);
            compare_kva::draw_chart(&path, &kva_points, nr_cpus).map_err(|why| {
                RunError::Chart {
                    path: path.display().to_string(),
                    why,
                }
            })?;
            Some(path.display().to_string())
        }
        None => None,
    };
    let ok = points.iter().all(|p| p.failed == 0 && p.check_ok)
        && kva_points.iter().all(|p| p.mpairs.is_some());
    Ok(CompareReport {
        test_loop_count: cfg.test_loop_count,
        test_repeat_count: cfg.test_repeat_count,
        nr_pages: cfg.nr_pages,
        nr_cpus,
        seed,
        points,
        chart,
        kva_points,
        kva_chart,
        ok,
    })
}

/// One point on a fresh instance.
fn point(
    cfg: &CompareConfig,
    kind: AllocatorKind,
    threads: u32,
    seed: u64,
) -> Result<ComparePoint, RunError> {
    let params = Params {
        nr_threads: threads,
        test_loop_count: cfg.test_loop_count,
        test_repeat_count: cfg.test_repeat_count,
        sequential_test_order: true,
        run_test_mask: 1,
        nr_pages: cfg.nr_pages,
        use_huge: cfg.use_huge,
    };
    let arena_bytes = cfg.arena_bytes.unwrap_or_else(|| arena_for(&params));
    let imp = kind
        .build(&ImplConfig { arena_bytes })
        .map_err(|source| RunError::Build {
            allocator: kind.as_str(),
            source,
        })?;
    let before = imp.stats().tlb_flushes;
    let out = driver::run_concurrent(imp.as_ref(), &params, seed, None, cfg.timeout);
    imp.purge();
    let check = imp.check_idle();
    let tests: Vec<_> = out.workers.iter().flat_map(|w| w.tests.iter()).collect();
    let n = tests.len().max(1) as f64;
    let usec_per_pair = tests
        .iter()
        .map(|t| t.avg_usec as f64 / f64::from(params.test_loop_count))
        .sum::<f64>()
        / n;
    let error = tests
        .iter()
        .flat_map(|t| t.errors.first())
        .next()
        .cloned()
        .or_else(|| out.spawn_failures.first().map(|f| f.error.clone()))
        .or_else(|| check.as_ref().err().map(|e| format!("idle check: {e}")));
    Ok(ComparePoint {
        allocator: kind,
        threads,
        usec_per_pair,
        passed: tests.iter().map(|t| t.passed).sum(),
        failed: tests.iter().map(|t| t.failed).sum::<u32>() + out.spawn_failures.len() as u32,
        tlb_flushes: imp.stats().tlb_flushes - before,
        check_ok: check.is_ok(),
        error,
    })
}

/// Colour of an allocator's line.
fn colour(kind: AllocatorKind) -> RGBColor {
    match kind {
        AllocatorKind::Sharded => RGBColor(0x1f, 0x77, 0xb4),
        AllocatorKind::SingleLock => RGBColor(0xff, 0x7f, 0x0e),
        AllocatorKind::Legacy => RGBColor(0xd6, 0x27, 0x28),
    }
}

/// Draw µs per pair against workers, one line per allocator.
fn draw_chart(path: &Path, points: &[ComparePoint], cfg: &CompareConfig) -> Result<(), String> {
    let max_t = cfg.threads.iter().copied().max().unwrap_or(1);
    let lines: Vec<Line> = cfg
        .allocators
        .iter()
        .map(|&kind| Line {
            label: kind.as_str().to_string(),
            colour: colour(kind),
            points: points
                .iter()
                .filter(|p| p.allocator == kind && p.failed == 0)
                .map(|p| (p.threads, p.usec_per_pair))
                .collect(),
        })
        .collect();
    let caption = format!(
        "fix_size_alloc_test: usec per vmalloc+vfree pair ({} loops/worker, {} CPUs)",
        cfg.test_loop_count,
        pagetable::cpu::nr_cpu_ids()
    );
    chart::draw(path, &caption, "usec per pair", max_t, &lines)
}
