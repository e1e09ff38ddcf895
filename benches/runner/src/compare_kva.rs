//! `--compare`'s second part: the KVA layer alone (allocate 2 pages, free them: the `kva`
//! bench's fixed pattern) on ours, the single lock and the peers of `benches::peers` (behind
//! a mutex; `vmem` and ours lock themselves), at the same worker counts, as M pairs per
//! second over all workers, with a chart beside the first one (`NAME-kva.svg`).
//!
//! Each point runs `test_loop_count` pairs per worker on a fresh instance (`by_name`); the
//! figure is wall-clock, from the first worker's start to the last one's end. No shared state.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use serde::Serialize;

use benches::by_name::{COMPARE_NAMES, fixed_mpairs};

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
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let max_t = points.iter().map(|p| p.threads).max().unwrap_or(1);
    let max_y = points
        .iter()
        .filter_map(|p| p.mpairs)
        .fold(0.0f64, f64::max);
    let max_y = if max_y > 0.0 { max_y * 1.15 } else { 1.0 };
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("KVA only, 2-page alloc + free: M pairs/s over all workers ({nr_cpus} CPUs)"),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0u32..max_t + 1, 0f64..max_y)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("workers (threads)")
        .y_desc("M pairs/s")
        .x_labels((max_t + 2) as usize)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, name) in COMPARE_NAMES.iter().enumerate() {
        let series: Vec<(u32, f64)> = points
            .iter()
            .filter(|p| p.allocator == *name)
            .filter_map(|p| p.mpairs.map(|m| (p.threads, m)))
            .collect();
        let c = colour(i);
        chart
            .draw_series(LineSeries::new(series.clone(), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(series.into_iter().map(|p| Circle::new(p, 4, c.filled())))
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
