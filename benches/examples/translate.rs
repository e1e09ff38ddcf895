//! `translate`: the `pagetable/translate` benchmark's loop without criterion, for counting
//! instructions (`valgrind --tool=callgrind`) and reading the generated code.
//!
//! ```text
//! cargo run --release -p benches --example translate -- [--impl ours|x86_64] [--passes N]
//! ```
//!
//! Builds the benchmark's mapping (262,144 4 KiB pages at the vmalloc base, tables in a 64 MiB
//! heap arena at 1 MiB physical; `benches::pagetable_sides`, shared with
//! `benches/benches/pagetable.rs`) with one side only, then translates every page `--passes`
//! times (default 10) through `Ours::translate_all` or `X86::translate_all` (never inlined, so
//! callgrind can attribute them: `--toggle-collect='*translate_all*'` counts only the loops). `--impl both` builds both
//! mappings in the one arena, ours first as in the benchmark, and alternates the two sides pass
//! by pass, so both see the same machine load. Prints the checksum and, per side, the minimum
//! and median wall-clock ns per page over the passes (and the ratio of the medians).
//!
//! Instructions per page = the collected Ir / (262,144 × passes).

use std::hint::black_box;
use std::time::Instant;

use benches::pagetable_sides::{Ours, PAGES, Setup, X86};

/// Which side(s) to run.
#[derive(Clone, Copy, PartialEq)]
enum Which {
    Ours,
    X86,
    Both,
}

/// Run `pass` once and return its wall-clock ns per page.
fn timed(sum: &mut u64, pass: impl FnOnce() -> u64) -> f64 {
    let start = Instant::now();
    *sum = sum.wrapping_add(pass());
    start.elapsed().as_nanos() as f64 / PAGES as f64
}

/// Minimum and median of `v` (sorted in place).
fn min_median(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn main() {
    let mut which = Which::Ours;
    let mut passes = 10u32;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--impl" => {
                which = match v.as_str() {
                    "ours" => Which::Ours,
                    "x86_64" => Which::X86,
                    "both" => Which::Both,
                    _ => panic!("--impl: {v}: want ours, x86_64 or both"),
                }
            }
            "--passes" => passes = v.parse().expect("--passes: a number"),
            _ => panic!("unknown argument {k}"),
        }
    }
    let passes = passes.max(1);
    let s = Setup::new();
    // Ours first, as in the benchmark (its tables take the lower frames).
    let ours = (which != Which::X86).then(|| {
        let o = Ours::new(&s);
        o.map(&s);
        o
    });
    let x86 = (which != Which::Ours).then(|| {
        let mut x = X86::new(&s);
        x.map(&s);
        x
    });
    let (mut sum, mut t_ours, mut t_x86) = (0u64, Vec::new(), Vec::new());
    for _ in 0..passes {
        if let Some(o) = &ours {
            t_ours.push(timed(&mut sum, || black_box(o).translate_all()));
        }
        if let Some(x) = &x86 {
            t_x86.push(timed(&mut sum, || black_box(x).translate_all()));
        }
    }
    println!("passes {passes} checksum {sum:#x}");
    let mut medians = Vec::new();
    for (name, t) in [("ours", &mut t_ours), ("x86_64", &mut t_x86)] {
        if !t.is_empty() {
            let (min, med) = min_median(t);
            medians.push(med);
            println!("{name:7} ns/page: min {min:.2} median {med:.2}");
        }
    }
    if let [ours, x86] = medians[..] {
        println!("ours / x86_64 (medians): {:.3}", ours / x86);
    }
}
