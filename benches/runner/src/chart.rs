//! The line chart both parts of `--compare` draw: one line per allocator, workers on the x
//! axis, an SVG file. Only the series, the caption and the y label differ between the two.

use std::path::Path;

use plotters::prelude::*;

/// One line of a chart: its legend label, its colour and its `(workers, value)` points.
pub struct Line {
    /// Legend label (the allocator's name).
    pub label: String,
    /// Stroke and marker colour.
    pub colour: RGBColor,
    /// Points in increasing worker order.
    pub points: Vec<(u32, f64)>,
}

/// Draw `lines` into an SVG at `path`: x from 0 to one past `max_t` (the largest worker
/// count asked for, whether or not every line has a point there), y from 0 to 15% above the
/// largest value (1.0 when there is none).
pub fn draw(
    path: &Path,
    caption: &str,
    y_desc: &str,
    max_t: u32,
    lines: &[Line],
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let max_y = lines
        .iter()
        .flat_map(|l| l.points.iter())
        .map(|p| p.1)
        .fold(0.0f64, f64::max);
    let max_y = if max_y > 0.0 { max_y * 1.15 } else { 1.0 };
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(0u32..max_t + 1, 0f64..max_y)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("workers (threads)")
        .y_desc(y_desc)
        .x_labels((max_t + 2) as usize)
        .draw()
        .map_err(|e| err(&e))?;
    for line in lines {
        let c = line.colour;
        chart
            .draw_series(LineSeries::new(line.points.clone(), c.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(line.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(line.points.iter().map(|&p| Circle::new(p, 4, c.filled())))
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
