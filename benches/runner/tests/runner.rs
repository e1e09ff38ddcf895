//! The `test_vmalloc` runner through its library entry points: every test on every allocator
//! with tiny loop counts, the JSON document's shape, `--compare` with its chart, and the
//! command-line errors.
#![cfg(not(feature = "loom"))]

use std::process::ExitCode;

use test_vmalloc::cases::{self, TESTS};
use test_vmalloc::params::CliError;
use test_vmalloc::{self as runner, Command, CompareConfig, Params, RunConfig, parse_args};
use vmalloc_impls::AllocatorKind;

/// Tiny parameters: every test, `threads` workers, 3 loops, 1 repeat, fixed seed.
fn tiny(threads: u32, mask: u32) -> Params {
    Params {
        nr_threads: threads,
        test_loop_count: 3,
        test_repeat_count: 1,
        sequential_test_order: false,
        run_test_mask: mask,
        nr_pages: 0,
        use_huge: false,
    }
}

fn run(kind: AllocatorKind, params: Params) -> runner::RunReport {
    let mut cfg = RunConfig::new(params, kind);
    cfg.seed = Some(12345);
    runner::run(&cfg).unwrap_or_else(|e| panic!("{kind}: {e}"))
}

fn assert_all_passed(r: &runner::RunReport) {
    assert!(
        r.check.ok,
        "{}: idle check: {:?}",
        r.allocator, r.check.error
    );
    assert!(r.spawn_failures.is_empty());
    for t in &r.summary {
        assert_eq!(
            (t.passed, t.failed),
            (r.params.nr_threads * r.params.test_repeat_count, 0),
            "{} {}: {:?}",
            r.allocator,
            t.name,
            r.workers
                .iter()
                .flat_map(|w| &w.tests)
                .filter(|x| x.id == t.id)
                .collect::<Vec<_>>()
        );
    }
    assert!(r.ok);
}

#[test]
fn every_test_passes_on_every_allocator() {
    for kind in AllocatorKind::ALL {
        let r = run(kind, tiny(1, i32::MAX as u32));
        assert_eq!(r.summary.len(), TESTS.len());
        assert_eq!(r.workers.len(), 1);
        assert_eq!(r.workers[0].tests.len(), TESTS.len());
        assert_all_passed(&r);
        assert_eq!(r.stats.live_areas, 0);
        assert_eq!(r.stats.lazy_pages, 0);
    }
}

#[test]
fn light_tests_pass_with_two_workers_and_nr_pages() {
    // Everything but the three tests with large fixed set-ups.
    let mask = 1 | 8 | 16 | 32 | 64 | 1024;
    for kind in AllocatorKind::ALL {
        let mut p = tiny(2, mask);
        p.nr_pages = 3;
        p.test_repeat_count = 2;
        p.sequential_test_order = true;
        let r = run(kind, p);
        assert_eq!(r.workers.len(), 2);
        // Sequential order: every worker ran the tests in id order.
        for w in &r.workers {
            let ids: Vec<u32> = w.tests.iter().map(|t| t.id).collect();
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            assert_eq!(ids, sorted);
        }
        assert_all_passed(&r);
    }
}

/// `use_huge=1`: fix_size_alloc_test through `vmalloc_huge`, as the module does; with
/// `nr_pages=512` the sharded allocator maps each area with one 2 MiB leaf (legacy, which
/// has no huge vmalloc, falls back to `vmalloc`, as Linux does without it).
#[test]
fn use_huge_runs_fix_size_alloc_test_with_huge_areas() {
    for kind in AllocatorKind::ALL {
        let mut p = tiny(2, 1);
        p.nr_pages = 512;
        p.use_huge = true;
        let r = run(kind, p);
        assert_all_passed(&r);
        assert!(r.table().contains("use_huge: 1"));
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["params"]["use_huge"], true);
    }
    let imp = vmalloc_impls::ShardedImpl::new(
        &vmalloc_impls::ImplConfig {
            arena_bytes: 64 << 20,
        },
        false,
    )
    .unwrap();
    let a = vmalloc_impls::VmallocImpl::vmalloc_huge(&imp, 2 << 20).unwrap();
    let vm = imp.vmalloc_instance();
    let t = vm
        .kernel_space()
        .translate(pagetable::VirtAddr::new(a))
        .unwrap();
    assert_eq!(t.size, 2 << 20);
    vmalloc_impls::VmallocImpl::vfree(&imp, a).unwrap();
    vmalloc_impls::VmallocImpl::check_idle(&imp).unwrap();
}

#[test]
fn kernel_lines_and_table() {
    let r = run(AllocatorKind::Legacy, tiny(1, 1 | 64));
    let lines = r.kernel_lines();
    assert!(
        lines.contains("Summary: fix_size_alloc_test passed: 1 failed: 0 repeat: 1 loops: 3 avg: "),
        "{lines}"
    );
    assert!(
        lines.contains("Summary: align_shift_alloc_test passed: 1 failed: 0"),
        "{lines}"
    );
    assert!(lines.contains("All test took worker0="), "{lines}");
    let table = r.table();
    assert!(table.contains("failed as expected"), "{table}");
    assert!(table.contains("result: PASS"), "{table}");
}

#[test]
fn json_shape() {
    let r = run(AllocatorKind::Legacy, tiny(2, 1 | 16));
    let v: serde_json::Value = serde_json::to_value(&r).unwrap();
    assert_eq!(v["allocator"], "legacy");
    assert_eq!(v["params"]["nr_threads"], 2);
    assert_eq!(v["params"]["test_loop_count"], 3);
    assert_eq!(v["params"]["run_test_mask"], 17);
    assert_eq!(v["seed"], 12345);
    assert_eq!(v["ok"], true);
    assert_eq!(v["check"]["ok"], true);
    assert!(v["check"]["error"].is_null());
    let workers = v["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 2);
    for w in workers {
        assert!(w["cycles"].is_u64() && w["elapsed_usec"].is_u64() && w["cpu"].is_u64());
        let tests = w["tests"].as_array().unwrap();
        assert_eq!(tests.len(), 2);
        for t in tests {
            assert!(t["name"].is_string() && t["avg_usec"].is_u64());
            assert_eq!(t["passed"], 1);
            assert_eq!(t["failed"], 0);
            assert!(t["errors"].as_array().unwrap().is_empty());
        }
    }
    let summary = v["summary"].as_array().unwrap();
    assert_eq!(summary[0]["name"], "fix_size_alloc_test");
    assert_eq!(summary[1]["name"], "fix_align_alloc_test");
    assert_eq!(summary[1]["id"], 16);
    assert_eq!(summary[0]["passed"], 2);
    for k in [
        "tlb_flushes",
        "lazy_pages",
        "live_areas",
        "frames_used",
        "frames_total",
    ] {
        assert!(v["stats"][k].is_u64(), "stats.{k}");
    }
    // The document round-trips through text.
    let text = serde_json::to_string_pretty(&r).unwrap();
    let back: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(back, v);
}

#[test]
fn compare_draws_a_chart() {
    let dir = std::env::temp_dir().join(format!("test_vmalloc_compare_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let chart = dir.join("compare.svg");
    let cfg = CompareConfig {
        allocators: AllocatorKind::ALL.to_vec(),
        threads: vec![1, 2],
        test_loop_count: 20,
        test_repeat_count: 1,
        nr_pages: 0,
        use_huge: false,
        chart: Some(chart.clone()),
        json: false,
        seed: Some(1),
        arena_bytes: None,
        progress: false,
        timeout: None,
    };
    let r = runner::compare::compare(&cfg).unwrap();
    assert_eq!(r.points.len(), 6);
    assert!(r.ok, "{}", r.table());
    for p in &r.points {
        assert!(
            p.usec_per_pair > 0.0 && p.check_ok && p.failed == 0,
            "{p:?}"
        );
        assert_eq!(p.passed, p.threads);
    }
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("legacy") && svg.contains("sharded"));
    let table = r.table();
    assert!(
        table.contains("single-lock") && table.contains("2 thr"),
        "{table}"
    );
    // The KVA-only part: every peer at every worker count, and its own chart.
    assert_eq!(
        r.kva_points.len(),
        2 * benches::by_name::COMPARE_NAMES.len()
    );
    assert!(
        r.kva_points
            .iter()
            .all(|p| p.mpairs.is_some_and(|m| m > 0.0))
    );
    let kva_svg = std::fs::read_to_string(dir.join("compare-kva.svg")).unwrap();
    assert!(kva_svg.contains("range-alloc") && kva_svg.contains("kva-single-lock"));
    assert!(table.contains("offset-allocator"), "{table}");
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["points"].as_array().unwrap().len(), 6);
    assert_eq!(v["kva_points"].as_array().unwrap().len(), 14);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn command_line_errors_are_messages() {
    let parse = |a: &[&str]| parse_args(std::iter::once("test_vmalloc").chain(a.iter().copied()));
    assert!(matches!(
        parse(&["nr_threads=x"]),
        Err(CliError::BadValue { .. })
    ));
    assert!(matches!(
        parse(&["--test_loop_count", "-5"]),
        Err(CliError::BadValue { .. })
    ));
    assert!(matches!(
        parse(&["no_such_param=1"]),
        Err(CliError::UnknownParam(_))
    ));
    assert!(matches!(
        parse(&["--allocator", "buddy"]),
        Err(CliError::Allocator(_))
    ));
    assert!(matches!(parse(&["--bogus"]), Err(CliError::Clap(_))));
    assert!(matches!(
        parse(&["performance", "smoke"]),
        Err(CliError::TwoModes(..))
    ));
    assert!(matches!(
        parse(&["run_test_mask=768"]),
        Err(CliError::EmptyMask(768))
    ));
    let e = parse(&["nr_threads=x"]).unwrap_err().to_string();
    assert!(e.contains("nr_threads") && e.contains('x'), "{e}");
    assert!(matches!(parse(&["--list"]), Ok(Command::List)));
    // The program: exit 2 on a bad command line, 0 for --help and --list.
    assert_eq!(
        runner::main_with_args(["test_vmalloc", "--nr_threads", "y"]),
        ExitCode::from(2)
    );
    assert_eq!(
        runner::main_with_args(["test_vmalloc", "--help"]),
        ExitCode::SUCCESS
    );
    assert_eq!(
        runner::main_with_args(["test_vmalloc", "--list"]),
        ExitCode::SUCCESS
    );
    let list = runner::list_text();
    for t in &TESTS {
        assert!(list.contains(t.name));
    }
    assert!(list.contains("kvfree_rcu_1_arg_vmalloc_test"));
}

#[test]
fn program_runs_and_exits_zero() {
    let code = runner::main_with_args([
        "test_vmalloc",
        "--allocator",
        "legacy",
        "run_test_mask=1",
        "test_loop_count=2",
        "--json",
        "--seed",
        "3",
    ]);
    assert_eq!(code, ExitCode::SUCCESS);
}

#[test]
fn arena_sizing_covers_the_workload() {
    let p = Params {
        nr_threads: 4,
        ..Params::kernel_defaults()
    };
    let need: u64 = cases::selected(p.run_test_mask)
        .map(|t| cases::peak_frames(t, &p))
        .max()
        .unwrap();
    assert!(runner::arena_for(&p) >= need * 4 * 4096);
}
