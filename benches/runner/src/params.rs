//! Command-line parsing: the kernel module's parameters, the script's modes, and this runner's
//! own options.
//!
//! Two spellings of every `lib/test_vmalloc.c` parameter are accepted and mean the same:
//! `--test_loop_count 1000` and the modprobe form `test_loop_count=1000` (a positional word).
//! A positional `performance`, `smoke` or `stress` picks the template of
//! `tools/testing/selftests/mm/test_vmalloc.sh`; parameters given as well override the
//! template (the script cannot combine them; we can).
//!
//! Precedence, lowest first: the base (the smoke template when nothing at all is given, the
//! module's defaults when only parameters are given, like the script's manual mode), then the
//! mode's template, then `key=value` words in order, then `--key value` flags.
//!
//! Validation follows the module: every value must fit the kernel's `int`; `nr_threads` is
//! clamped to `1..=65535` and non-positive repeat/loop counts become 1, as
//! `init_test_configurtion` does; negative values, junk and unknown keys are errors with a
//! message, never a panic. `use_huge` (a 0/1 `bool`, as the module's) makes
//! `fix_size_alloc_test` call `vmalloc_huge`.
//!
//! Pure functions, no shared state.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

use vmalloc_impls::{AllocatorKind, UnknownAllocator};

/// The kernel module's `run_test_mask` default (`INT_MAX`: every test).
pub const DEFAULT_RUN_TEST_MASK: u32 = i32::MAX as u32;
/// The kernel module's `test_loop_count` default.
pub const DEFAULT_TEST_LOOP_COUNT: u32 = 1_000_000;
/// The most workers the module accepts (`USHRT_MAX`).
pub const MAX_THREADS: u32 = u16::MAX as u32;
/// Default thread counts of `--compare`.
pub const DEFAULT_COMPARE_THREADS: [u32; 4] = [1, 2, 4, 8];
/// Default `test_loop_count` of `--compare` when none is given.
pub const DEFAULT_COMPARE_LOOPS: u32 = 100_000;

/// The parameters of `lib/test_vmalloc.c`, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Params {
    /// Workers started together (`nr_threads`, at least 1).
    pub nr_threads: u32,
    /// Iterations of each test's loop (`test_loop_count`).
    pub test_loop_count: u32,
    /// Times each test runs per worker (`test_repeat_count`).
    pub test_repeat_count: u32,
    /// Run the tests in id order instead of a per-worker shuffle.
    pub sequential_test_order: bool,
    /// Bit `i` enables the test with id `1 << i`.
    pub run_test_mask: u32,
    /// Pages for `fix_size_alloc_test` and `vm_map_ram_test` (0 means 1).
    pub nr_pages: u32,
    /// `fix_size_alloc_test` allocates with `vmalloc_huge` (2 MiB leaves from 512 pages up).
    pub use_huge: bool,
}

impl Params {
    /// The module's defaults (`modprobe test_vmalloc` with no parameter).
    pub const fn kernel_defaults() -> Self {
        Self {
            nr_threads: 1,
            test_loop_count: DEFAULT_TEST_LOOP_COUNT,
            test_repeat_count: 1,
            sequential_test_order: false,
            run_test_mask: DEFAULT_RUN_TEST_MASK,
            nr_pages: 0,
            use_huge: false,
        }
    }

    /// `nr_pages`, or 1 when it is 0 (as the module reads it).
    pub fn pages(&self) -> u32 {
        self.nr_pages.max(1)
    }
}

impl Default for Params {
    fn default() -> Self {
        Self::kernel_defaults()
    }
}

/// A template of `test_vmalloc.sh`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// `sequential_test_order=1 test_repeat_count=3`: all tests on one worker, in order.
    Performance,
    /// `test_loop_count=10000 test_repeat_count=10`: basic coverage, quick.
    Smoke,
    /// `nr_threads=$NUM_CPUS test_repeat_count=20`: every CPU at once.
    Stress,
}

impl Mode {
    /// The template applied over the module's defaults; `nr_cpus` is the script's `NUM_CPUS`.
    pub fn apply(self, p: &mut Params, nr_cpus: u32) {
        match self {
            Mode::Performance => {
                p.sequential_test_order = true;
                p.test_repeat_count = 3;
            }
            Mode::Smoke => {
                p.test_loop_count = 10_000;
                p.test_repeat_count = 10;
            }
            Mode::Stress => {
                p.nr_threads = nr_cpus.clamp(1, MAX_THREADS);
                p.test_repeat_count = 20;
            }
        }
    }

    /// The script's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Performance => "performance",
            Mode::Smoke => "smoke",
            Mode::Stress => "stress",
        }
    }
}

/// A command-line error: clap's own (usage, `--help`, `--version`) or a parameter we reject.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Rejected by clap; `--help` and `--version` also arrive here (print and exit 0).
    #[error("{0}")]
    Clap(#[from] clap::Error),
    /// A kernel parameter name this runner does not know.
    #[error("unknown parameter `{0}` (valid: {valid})", valid = KERNEL_PARAMS.join(", "))]
    UnknownParam(String),
    /// A value that is not a number of the kernel's `int` range, or is negative.
    #[error("bad value `{value}` for {key}: {why}")]
    BadValue {
        /// The parameter.
        key: String,
        /// The rejected text.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A positional word that is neither a mode nor `key=value`.
    #[error("unexpected argument `{0}`: expected performance, smoke, stress or key=value")]
    BadWord(String),
    /// Two modes given.
    #[error("more than one mode given (`{0}` and `{1}`)")]
    TwoModes(&'static str, &'static str),
    /// An unknown allocator name.
    #[error(transparent)]
    Allocator(#[from] UnknownAllocator),
    /// `run_test_mask` selects none of the tests this runner has.
    #[error("run_test_mask {0:#x} selects no test this runner implements")]
    EmptyMask(u32),
    /// An option that only makes sense with another one.
    #[error("{0}")]
    Conflict(&'static str),
}

impl CliError {
    /// Whether this is `--help`/`--version` output rather than an error.
    pub fn is_informational(&self) -> bool {
        matches!(self, CliError::Clap(e) if matches!(
            e.kind(),
            clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
        ))
    }
}

/// Names of the kernel module parameters, as `key=value` and `--key` accept them.
pub const KERNEL_PARAMS: [&str; 7] = [
    "nr_threads",
    "sequential_test_order",
    "test_repeat_count",
    "test_loop_count",
    "nr_pages",
    "run_test_mask",
    "use_huge",
];

/// The raw command line (clap).
#[derive(Debug, Parser)]
#[command(
    name = "test_vmalloc",
    about = "Linux's lib/test_vmalloc.c workloads against this vmalloc library",
    long_about = "Runs the kernel's test_vmalloc workloads on worker threads started together \
                  and prints the module's summary lines. Positional words: a mode of \
                  test_vmalloc.sh (performance, smoke, stress) and/or module parameters as \
                  key=value. With no argument at all: the smoke template on the default \
                  (sharded, mmap-backed) instance.",
    version
)]
struct Cli {
    /// `performance`, `smoke`, `stress`, and/or kernel parameters as `key=value`.
    #[arg(value_name = "MODE|KEY=VALUE")]
    words: Vec<String>,
    /// Bit mask of tests to run (decimal or 0x hex); see `--list`.
    #[arg(
        long = "run_test_mask",
        allow_negative_numbers = true,
        value_name = "MASK"
    )]
    run_test_mask: Option<String>,
    /// Number of workers started together (clamped to 1..=65535).
    #[arg(long = "nr_threads", allow_negative_numbers = true, value_name = "N")]
    nr_threads: Option<String>,
    /// Iterations of each test's loop.
    #[arg(
        long = "test_loop_count",
        allow_negative_numbers = true,
        value_name = "N"
    )]
    test_loop_count: Option<String>,
    /// Times each worker runs each test.
    #[arg(
        long = "test_repeat_count",
        allow_negative_numbers = true,
        value_name = "N"
    )]
    test_repeat_count: Option<String>,
    /// Run tests in id order (default: shuffled per worker). Takes an optional 0/1.
    #[arg(long = "sequential_test_order", value_name = "0|1", num_args = 0..=1,
          default_missing_value = "1")]
    sequential_test_order: Option<String>,
    /// Pages per allocation in fix_size_alloc_test and vm_map_ram_test (0 = 1).
    #[arg(long = "nr_pages", allow_negative_numbers = true, value_name = "N")]
    nr_pages: Option<String>,
    /// fix_size_alloc_test allocates with vmalloc_huge (2 MiB leaves from nr_pages=512 up).
    /// Takes an optional 0/1.
    #[arg(long = "use_huge", value_name = "0|1", num_args = 0..=1, default_missing_value = "1")]
    use_huge: Option<String>,
    /// Which implementation to run: sharded, single-lock or legacy.
    #[arg(long, value_name = "NAME", default_value = "sharded")]
    allocator: String,
    /// Print one JSON document instead of the summary and table.
    #[arg(long)]
    json: bool,
    /// Compare sharded, single-lock and legacy on fix_size_alloc_test over 1, 2, 4, 8 workers.
    #[arg(long)]
    compare: bool,
    /// With --compare: write an SVG chart of microseconds per vmalloc+vfree pair to PATH.
    #[arg(long, value_name = "PATH")]
    chart: Option<PathBuf>,
    /// With --compare: the worker counts (comma separated).
    #[arg(long = "compare_threads", value_name = "LIST", value_delimiter = ',')]
    compare_threads: Option<Vec<u32>>,
    /// Seed of the workers' random numbers (default: from the clock; printed in --json).
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Physical arena size in MiB (default: computed from the workload).
    #[arg(long = "arena_mib", value_name = "MIB")]
    arena_mib: Option<u64>,
    /// Give up after SECS seconds: print where each worker is and exit with status 3 (a hung
    /// allocator call cannot be interrupted).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// List the tests and their ids, then exit.
    #[arg(long)]
    list: bool,
    /// Never draw a progress bar (it is drawn only on a terminal anyway).
    #[arg(long = "no_progress")]
    no_progress: bool,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the selected tests once on one allocator.
    Run(RunConfig),
    /// Run `--compare`.
    Compare(CompareConfig),
    /// Print the test list.
    List,
}

/// Everything a single run needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    /// The module parameters.
    pub params: Params,
    /// The template used, if any.
    pub mode: Option<Mode>,
    /// The implementation.
    pub allocator: AllocatorKind,
    /// JSON output.
    pub json: bool,
    /// Seed of the random numbers (`None`: from the clock).
    pub seed: Option<u64>,
    /// Arena size override in bytes.
    pub arena_bytes: Option<u64>,
    /// Draw a progress bar if stderr is a terminal.
    pub progress: bool,
    /// Watchdog: exit with status 3 if the run takes longer.
    pub timeout: Option<Duration>,
}

impl RunConfig {
    /// A run of `params` on `allocator`, quiet, default arena, clock seed.
    pub fn new(params: Params, allocator: AllocatorKind) -> Self {
        Self {
            params,
            mode: None,
            allocator,
            json: false,
            seed: None,
            arena_bytes: None,
            progress: false,
            timeout: None,
        }
    }
}

/// Everything `--compare` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompareConfig {
    /// Allocators compared, in report order.
    pub allocators: Vec<AllocatorKind>,
    /// Worker counts.
    pub threads: Vec<u32>,
    /// `test_loop_count` per worker.
    pub test_loop_count: u32,
    /// `test_repeat_count` per worker.
    pub test_repeat_count: u32,
    /// `nr_pages` of fix_size_alloc_test.
    pub nr_pages: u32,
    /// `use_huge` of fix_size_alloc_test.
    pub use_huge: bool,
    /// Where to write the SVG chart.
    pub chart: Option<PathBuf>,
    /// JSON output.
    pub json: bool,
    /// Seed.
    pub seed: Option<u64>,
    /// Arena size override in bytes.
    pub arena_bytes: Option<u64>,
    /// Draw a progress bar if stderr is a terminal.
    pub progress: bool,
    /// Watchdog per point: exit with status 3 if one takes longer.
    pub timeout: Option<Duration>,
}

/// Parse a command line (`args[0]` is the program name), without exiting or printing.
pub fn parse_args<I, T>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args)?;
    if cli.list {
        return Ok(Command::List);
    }
    let allocator: AllocatorKind = cli.allocator.parse()?;

    // Split the words into the mode and the key=value pairs.
    let mut mode: Option<Mode> = None;
    let mut pairs: Vec<(String, String)> = Vec::new();
    for w in &cli.words {
        let m = match w.as_str() {
            "performance" => Some(Mode::Performance),
            "smoke" => Some(Mode::Smoke),
            "stress" => Some(Mode::Stress),
            _ => None,
        };
        if let Some(m) = m {
            if let Some(prev) = mode {
                return Err(CliError::TwoModes(prev.as_str(), m.as_str()));
            }
            mode = Some(m);
        } else if let Some((k, v)) = w.split_once('=') {
            pairs.push((k.to_owned(), v.to_owned()));
        } else {
            return Err(CliError::BadWord(w.clone()));
        }
    }
    let flag_pairs: Vec<(&str, &Option<String>)> = vec![
        ("run_test_mask", &cli.run_test_mask),
        ("nr_threads", &cli.nr_threads),
        ("test_loop_count", &cli.test_loop_count),
        ("test_repeat_count", &cli.test_repeat_count),
        ("sequential_test_order", &cli.sequential_test_order),
        ("nr_pages", &cli.nr_pages),
        ("use_huge", &cli.use_huge),
    ];
    for (k, v) in &flag_pairs {
        if let Some(v) = v {
            pairs.push(((*k).to_owned(), v.clone()));
        }
    }

    let any_param = !pairs.is_empty();
    let mut params = Params::kernel_defaults();
    let nr_cpus = u32::try_from(pagetable::cpu::nr_cpu_ids()).unwrap_or(MAX_THREADS);
    if mode.is_none() && !any_param && !cli.compare {
        // No mode and no parameter: the smoke template (the script would print its usage).
        mode = Some(Mode::Smoke);
    }
    if let Some(m) = mode {
        m.apply(&mut params, nr_cpus);
    }
    let mut loop_given = false;
    for (k, v) in &pairs {
        apply_param(&mut params, k, v)?;
        loop_given |= k == "test_loop_count";
    }
    if crate::cases::selected(params.run_test_mask)
        .next()
        .is_none()
    {
        return Err(CliError::EmptyMask(params.run_test_mask));
    }
    let arena_bytes = match cli.arena_mib {
        None => None,
        Some(0) => {
            return Err(CliError::BadValue {
                key: "arena_mib".into(),
                value: "0".into(),
                why: "must be positive",
            });
        }
        Some(m) => Some(m.checked_mul(1 << 20).ok_or(CliError::BadValue {
            key: "arena_mib".into(),
            value: m.to_string(),
            why: "too large",
        })?),
    };
    let progress = !cli.no_progress && !cli.json;
    let timeout = match cli.timeout {
        Some(0) => {
            return Err(CliError::BadValue {
                key: "timeout".into(),
                value: "0".into(),
                why: "must be positive",
            });
        }
        t => t.map(Duration::from_secs),
    };

    if cli.compare {
        if mode.is_some() {
            return Err(CliError::Conflict("--compare takes no mode"));
        }
        let threads = cli
            .compare_threads
            .unwrap_or_else(|| DEFAULT_COMPARE_THREADS.to_vec());
        if threads.is_empty() || threads.iter().any(|&t| t == 0 || t > MAX_THREADS) {
            return Err(CliError::BadValue {
                key: "compare_threads".into(),
                value: format!("{threads:?}"),
                why: "each count must be in 1..=65535",
            });
        }
        return Ok(Command::Compare(CompareConfig {
            allocators: AllocatorKind::ALL.to_vec(),
            threads,
            test_loop_count: if loop_given {
                params.test_loop_count
            } else {
                DEFAULT_COMPARE_LOOPS
            },
            test_repeat_count: params.test_repeat_count,
            nr_pages: params.nr_pages,
            use_huge: params.use_huge,
            chart: cli.chart,
            json: cli.json,
            seed: cli.seed,
            arena_bytes,
            progress,
            timeout,
        }));
    }
    if cli.chart.is_some() || cli.compare_threads.is_some() {
        return Err(CliError::Conflict(
            "--chart and --compare_threads need --compare",
        ));
    }
    Ok(Command::Run(RunConfig {
        params,
        mode,
        allocator,
        json: cli.json,
        seed: cli.seed,
        arena_bytes,
        progress,
        timeout,
    }))
}

/// Apply one kernel parameter with the module's clamping.
pub fn apply_param(p: &mut Params, key: &str, value: &str) -> Result<(), CliError> {
    let bad = |why| CliError::BadValue {
        key: key.to_owned(),
        value: value.to_owned(),
        why,
    };
    match key {
        "nr_threads" => {
            p.nr_threads = (parse_int(value).map_err(bad)? as u32).clamp(1, MAX_THREADS)
        }
        "test_loop_count" => p.test_loop_count = (parse_int(value).map_err(bad)? as u32).max(1),
        "test_repeat_count" => p.test_repeat_count = (parse_int(value).map_err(bad)? as u32).max(1),
        "nr_pages" => p.nr_pages = parse_int(value).map_err(bad)? as u32,
        "run_test_mask" => p.run_test_mask = parse_int(value).map_err(bad)? as u32,
        "sequential_test_order" => p.sequential_test_order = parse_bool(value).map_err(bad)?,
        "use_huge" => p.use_huge = parse_bool(value).map_err(bad)?,
        other => return Err(CliError::UnknownParam(other.to_owned())),
    }
    Ok(())
}

/// A non-negative number in the kernel's `int` range, decimal or `0x` hex.
fn parse_int(s: &str) -> Result<i32, &'static str> {
    let t = s.trim();
    let v = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        i64::from_str_radix(h, 16)
    } else {
        t.parse::<i64>()
    }
    .map_err(|_| "not a number")?;
    if v < 0 {
        return Err("must not be negative");
    }
    i32::try_from(v).map_err(|_| "larger than the kernel's int (2147483647)")
}

/// A kernel `bool` parameter: 0/1, y/n, true/false (any case).
fn parse_bool(s: &str) -> Result<bool, &'static str> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "y" | "yes" | "true" | "on" => Ok(true),
        "0" | "n" | "no" | "false" | "off" => Ok(false),
        _ => Err("expected 0/1, y/n or true/false"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<RunConfig, CliError> {
        let mut v = vec!["test_vmalloc"];
        v.extend_from_slice(args);
        match parse_args(v)? {
            Command::Run(r) => Ok(r),
            other => panic!("expected a run, got {other:?}"),
        }
    }

    #[test]
    fn no_argument_is_smoke() {
        let r = run(&[]).unwrap();
        assert_eq!(r.params.test_loop_count, 10_000);
        assert_eq!(r.params.test_repeat_count, 10);
        assert_eq!(r.params.nr_threads, 1);
        assert_eq!(r.allocator, AllocatorKind::Sharded);
        assert_eq!(r.mode, Some(Mode::Smoke));
    }

    #[test]
    fn manual_parameters_start_from_kernel_defaults() {
        let r = run(&["run_test_mask=1", "--nr_threads", "2"]).unwrap();
        assert_eq!(r.params.test_loop_count, DEFAULT_TEST_LOOP_COUNT);
        assert_eq!((r.params.run_test_mask, r.params.nr_threads), (1, 2));
    }

    #[test]
    fn modes_and_overrides() {
        let r = run(&["performance", "test_loop_count=5"]).unwrap();
        assert!(r.params.sequential_test_order);
        assert_eq!(
            (r.params.test_repeat_count, r.params.test_loop_count),
            (3, 5)
        );
        let r = run(&["stress"]).unwrap();
        assert_eq!(r.params.test_repeat_count, 20);
        assert!(r.params.nr_threads >= 1);
        // Flags win over key=value.
        let r = run(&["nr_pages=3", "--nr_pages", "4"]).unwrap();
        assert_eq!(r.params.nr_pages, 4);
        let r = run(&["--sequential_test_order"]).unwrap();
        assert!(r.params.sequential_test_order);
        let r = run(&["--run_test_mask", "0x10"]).unwrap();
        assert_eq!(r.params.run_test_mask, 16);
    }

    #[test]
    fn kernel_clamping() {
        let r = run(&["nr_threads=0", "test_loop_count=0", "test_repeat_count=0"]).unwrap();
        assert_eq!((r.params.nr_threads, r.params.test_loop_count), (1, 1));
        assert_eq!(r.params.test_repeat_count, 1);
    }

    #[test]
    fn errors_are_typed() {
        assert!(matches!(run(&["bogus=1"]), Err(CliError::UnknownParam(_))));
        assert!(matches!(
            run(&["nr_threads=-1"]),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(
            run(&["nr_threads=abc"]),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(
            run(&["test_loop_count=99999999999"]),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(run(&["fast"]), Err(CliError::BadWord(_))));
        assert!(matches!(
            run(&["smoke", "stress"]),
            Err(CliError::TwoModes(..))
        ));
        assert!(run(&["use_huge=1"]).unwrap().params.use_huge);
        assert!(run(&["--use_huge"]).unwrap().params.use_huge);
        assert!(
            !run(&["use_huge=1", "--use_huge", "0"])
                .unwrap()
                .params
                .use_huge
        );
        assert!(matches!(
            run(&["use_huge=2"]),
            Err(CliError::BadValue { .. })
        ));
        assert!(matches!(
            run(&["--allocator", "slab"]),
            Err(CliError::Allocator(_))
        ));
        assert!(matches!(
            run(&["--nr-threads", "2"]),
            Err(CliError::Clap(_))
        ));
        assert!(matches!(
            run(&["--chart", "x.svg"]),
            Err(CliError::Conflict(_))
        ));
        assert!(matches!(
            run(&["run_test_mask=0"]),
            Err(CliError::EmptyMask(0))
        ));
        let help = parse_args(["test_vmalloc", "--help"]).unwrap_err();
        assert!(help.is_informational());
    }

    #[test]
    fn compare_defaults() {
        let c = match parse_args(["test_vmalloc", "--compare"]).unwrap() {
            Command::Compare(c) => c,
            other => panic!("{other:?}"),
        };
        assert_eq!(c.threads, DEFAULT_COMPARE_THREADS.to_vec());
        assert_eq!(c.test_loop_count, DEFAULT_COMPARE_LOOPS);
        assert_eq!(c.allocators.len(), 3);
        let c = match parse_args([
            "t",
            "--compare",
            "--compare_threads",
            "1,3",
            "test_loop_count=7",
        ])
        .unwrap()
        {
            Command::Compare(c) => c,
            other => panic!("{other:?}"),
        };
        assert_eq!((c.threads, c.test_loop_count), (vec![1, 3], 7));
        assert!(parse_args(["t", "--compare", "--compare_threads", "0"]).is_err());
    }
}
