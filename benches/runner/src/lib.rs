//! `test-vmalloc`: the kernel's `lib/test_vmalloc.c` and `test_vmalloc.sh` for the `vmalloc`
//! crate, the project's main job.
//!
//! ```text
//! cargo run --release -p test-vmalloc                                 # smoke template, sharded
//! cargo run --release -p test-vmalloc -- --help                       # every option
//! cargo run --release -p test-vmalloc -- stress --allocator legacy    # a script mode
//! cargo run --release -p test-vmalloc -- --compare --chart compare.svg
//! ```
//!
//! The binary is `test_vmalloc` (`src/bin/test_vmalloc.rs`); docs/RUNNER.md describes the
//! command line and the output. It drives any [`VmallocImpl`](vmalloc_impls::VmallocImpl) of the `vmalloc-impls` crate:
//! `sharded` (the default), `single-lock` and `legacy` (the `vmalloc-legacy` crate).
//!
//! - [`params`]: the command line (module parameters, script modes, our options);
//! - [`cases`]: the module's tests over a `VmallocImpl`;
//! - [`driver`]: workers started together, timed like the module;
//! - [`report`]: summary lines, table, JSON;
//! - [`compare`]: `--compare`, the three allocators over 1, 2, 4, 8 workers, with a chart;
//!   [`compare_kva`]: its second chart, the KVA layer alone on ours and the peers.
//!
//! [`main_with_args`] is the whole program (the binary only calls it); [`run`] and
//! [`compare::compare`] are the library entry points the tests drive.
//!
//! After every run the instance is purged and checked idle (nothing live, nothing lazy, no
//! mapping left, every data frame back): a leak or a lost area fails the run even when every
//! test passed.

pub mod cases;
pub mod chart;
pub mod compare;
pub mod compare_kva;
pub mod driver;
pub mod params;
pub mod report;
pub mod rng;

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};

pub use params::{Command, CompareConfig, Mode, Params, RunConfig, parse_args};
pub use report::RunReport;
use vmalloc_impls::{ImplConfig, ImplError, PAGE_SIZE};

/// Smallest arena the runner builds.
const MIN_ARENA: u64 = 256 << 20;
/// Largest arena the runner builds on its own (`--arena_mib` may ask for more).
const MAX_AUTO_ARENA: u64 = 16 << 30;

/// A run that could not happen at all (as opposed to tests that failed).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The instance could not be built (arena, configuration).
    #[error("cannot build the {allocator} instance: {source}")]
    Build {
        /// Which one.
        allocator: &'static str,
        /// Why.
        source: ImplError,
    },
    /// The chart could not be written.
    #[error("cannot write the chart {path}: {why}")]
    Chart {
        /// Where.
        path: String,
        /// Why.
        why: String,
    },
    /// JSON serialisation failed.
    #[error("cannot serialise the report: {0}")]
    Json(#[from] serde_json::Error),
}

/// A seed from the clock.
pub fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0x5eed, |d| d.as_nanos() as u64)
}

/// Arena bytes a run of `params` needs: the peak of one worker's selected tests times the
/// workers, plus room for lazily freed areas' tables and per-CPU caches; clamped.
pub fn arena_for(params: &Params) -> u64 {
    let peak = cases::selected(params.run_test_mask)
        .map(|t| cases::peak_frames(t, params))
        .max()
        .unwrap_or(1);
    let frames = peak
        .saturating_mul(u64::from(params.nr_threads))
        .saturating_mul(5)
        / 4
        + 65_536;
    frames
        .saturating_mul(PAGE_SIZE)
        .clamp(MIN_ARENA, MAX_AUTO_ARENA)
}

/// A progress bar over `total` steps, only when asked for and stderr is a terminal.
pub(crate) fn progress_bar(wanted: bool, total: u64, what: &str) -> Option<ProgressBar> {
    if !wanted || !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}")
    {
        pb.set_style(style);
    }
    pb.set_prefix(what.to_owned());
    Some(pb)
}

/// Run the selected tests once, as configured, and check the instance idle afterwards.
pub fn run(cfg: &RunConfig) -> Result<RunReport, RunError> {
    let params = cfg.params;
    let arena_bytes = cfg.arena_bytes.unwrap_or_else(|| arena_for(&params));
    let imp = cfg
        .allocator
        .build(&ImplConfig { arena_bytes })
        .map_err(|source| RunError::Build {
            allocator: cfg.allocator.as_str(),
            source,
        })?;
    let seed = cfg.seed.unwrap_or_else(clock_seed);
    let steps = u64::from(params.nr_threads)
        * cases::selected(params.run_test_mask).count() as u64
        * u64::from(params.test_repeat_count);
    let pb = progress_bar(cfg.progress, steps, cfg.allocator.as_str());
    let out = driver::run_concurrent(imp.as_ref(), &params, seed, pb.as_ref(), cfg.timeout);
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    imp.purge();
    let check = match imp.check_idle() {
        Ok(()) => report::CheckResult {
            ok: true,
            error: None,
        },
        Err(e) => report::CheckResult {
            ok: false,
            error: Some(e.to_string()),
        },
    };
    let summary = RunReport::summarize(&params, &out.workers);
    let ok = check.ok && out.spawn_failures.is_empty() && summary.iter().all(|t| t.failed == 0);
    Ok(RunReport {
        allocator: cfg.allocator,
        mode: cfg.mode,
        params,
        seed,
        arena_bytes,
        nr_cpus: pagetable::cpu::nr_cpu_ids(),
        workers: out.workers,
        spawn_failures: out.spawn_failures,
        summary,
        stats: imp.stats(),
        check,
        elapsed_usec: out.elapsed.as_micros() as u64,
        ok,
    })
}

/// The `--list` text: the module's tests and ids.
pub fn list_text() -> String {
    let mut s = String::from("id     name\n");
    for t in &cases::TESTS {
        let note = if t.expected_to_fail {
            "  (expected to fail)"
        } else {
            ""
        };
        let _ = writeln!(s, "{:<6} {}{note}", t.id(), t.name);
    }
    for (id, name, why) in cases::ABSENT {
        let _ = writeln!(s, "{id:<6} {name}  (not available: {why})");
    }
    s
}

/// The whole program: parse `args` (`args[0]` is the program name), run, print, and say how
/// to exit (0: everything passed; 1: a test or check failed; 2: bad command line or the run
/// could not start; `--timeout` exits the process with 3 from the watchdog).
pub fn main_with_args<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cmd = match parse_args(args) {
        Ok(c) => c,
        Err(e) if e.is_informational() => {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
        Err(params::CliError::Clap(e)) => {
            // clap's own rendering (usage and hint included), coloured on a terminal only.
            if std::io::stderr().is_terminal() {
                eprint!("{}", e.render().ansi());
            } else {
                eprint!("{}", e.render());
            }
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            eprintln!("try `test_vmalloc --help` or `test_vmalloc --list`");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let result = match cmd {
        Command::List => {
            let _ = write!(stdout, "{}", list_text());
            return ExitCode::SUCCESS;
        }
        Command::Run(cfg) => run(&cfg).and_then(|r| {
            if cfg.json {
                let _ = writeln!(stdout, "{}", serde_json::to_string_pretty(&r)?);
            } else {
                let _ = write!(stdout, "{}\n{}", r.kernel_lines(), r.table());
            }
            Ok(r.ok)
        }),
        Command::Compare(cfg) => compare::compare(&cfg).and_then(|r| {
            if cfg.json {
                let _ = writeln!(stdout, "{}", serde_json::to_string_pretty(&r)?);
            } else {
                let _ = write!(stdout, "{}", r.table());
            }
            Ok(r.ok)
        }),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
