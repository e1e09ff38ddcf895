//! `--compare`'s second part: the KVA layer alone (allocate 2 pages, free them: the `kva`
//! bench's fixed pattern) on ours, the single lock and the peers of `benches::peers` (behind
//! a mutex; `vmem` and ours lock themselves), at the same worker counts, as M pairs per
//! second over all workers, with a chart beside the first one (`NAME-kva.svg`).
//!
//! Each point runs `test_loop_count` pairs per worker on a fresh instance (`by_name`); the
//! figure is wall-clock, from the first worker's start to the last one's end. No shared state.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::style::RGBColor;
use serde::Serialize;

use benches::by_name::{COMPARE_NAMES, fixed_mpairs};

use crate::chart::{self, Line};

/// One (allocator, workers) point of the KVA comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KvaPoint {
    /// The allocator (a `benches::by_name` name).
    pub allocator: &'static str,
    /// Workers.
    pub threads: u32,
    /// M pairs per second over all workers; `None` if the allocator failed.
    pub mpairs: Option<f64>,
}

/// Run every point: each allocator of [`COMPARE_NAMES`] at each worker count.
pub fn run(threads: &[u32], pairs: u32) -> Vec<KvaPoint> {
    let mut v = Vec::new();
    for name in COMPARE_NAMES {
        for &t in threads {
            v.push(KvaPoint {
                allocator: name,
                threads: t,
                mpairs: fixed_mpairs(name, t as usize, u64::from(pairs)).ok(),
            });
        }
    }
    v
}

/// Where the KVA chart goes: `compare.svg` -> `compare-kva.svg`.
pub fn chart_path(first: &Path) -> PathBuf {
    let stem = first
        .file_stem()
        .map_or_else(|| "compare".into(), |s| s.to_string_lossy().into_owned());
    first.with_file_name(format!("{stem}-kva.svg"))
}

/// The table: one row per allocator, one column per worker count (M pairs/s).
pub fn table(points: &[KvaPoint], pairs: u32) -> String {
    let mut threads: Vec<u32> = points.iter().map(|p| p.threads).collect();
    threads.sort_unstable();
    threads.dedup();
    let mut s = String::new();
    let _ = writeln!(
        s,
        "KVA only, allocate 2 pages + free, {pairs} pairs per worker: M pairs/s over all workers"
    );
    let _ = write!(s, "{:<20}", "allocator");
    for t in &threads {
        let _ = write!(s, " {:>10}", format!("{t} thr"));
    }
    let _ = writeln!(s);
    for name in COMPARE_NAMES {
        let _ = write!(s, "{name:<20}");
        for t in &threads {
            match points
                .iter()
                .find(|p| p.allocator == name && p.threads == *t)
            {
                Some(KvaPoint {
                    mpairs: Some(m), ..
                }) => {
                    let _ = write!(s, " {m:>10.2}");
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
    s
}

/// A colour per row.
fn colour(i: usize) -> RGBColor {
    const C: [RGBColor; 7] = [
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0xff, 0x7f, 0x0e),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x94, 0x67, 0xbd),
        RGBColor(0x8c, 0x56, 0x4b),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    C[i % C.len()]
}

/// Draw M pairs/s against workers, one line per allocator.
pub fn draw_chart(path: &Path, points: &[KvaPoint], nr_cpus: usize) -> Result<(), String> {
    let max_t = points.iter().map(|p| p.threads).max().unwrap_or(1);
    let lines: Vec<Line> = COMPARE_NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| Line {
            label: (*name).to_string(),
            colour: colour(i),
            points: points
                .iter()
                .filter(|p| p.allocator == *name)
                .filter_map(|p| p.mpairs.map(|m| (p.threads, m)))
                .collect(),
        })
        .collect();
    let caption =
        format!("KVA only, 2-page alloc + free: M pairs/s over all workers ({nr_cpus} CPUs)");
    chart::draw(path, &caption, "M pairs/s", max_t, &lines)
}
