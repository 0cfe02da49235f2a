//! The `--plot` picture: delivery latency percentiles against delivered rate.
//!
//! Owns: drawing one SVG (log-log axes, one line per percentile, an optional
//! dashed limit) with plotters' SVG backend, which writes text as SVG
//! `<text>` and so needs no font files on the machine.

use std::path::Path;

use plotters::prelude::*;

/// One measured point: delivered messages per second and the latency
/// percentiles p50, p90, p99, p99.9 in milliseconds.
pub struct Point {
    /// Deliveries per second.
    pub rate: f64,
    /// p50, p90, p99, p99.9, ms.
    pub ms: [f64; 4],
}

const NAMES: [&str; 4] = ["p50", "p90", "p99", "p99.9"];
/// One color per percentile, apart from the limit's red.
const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
];

/// Writes the chart to `path`; `limit_ms` draws a horizontal limit line.
pub fn latency_vs_rate(
    path: &Path,
    title: &str,
    points: &[Point],
    limit_ms: Option<f64>,
) -> Result<(), String> {
    draw(path, title, points, limit_ms).map_err(|e| format!("plot {}: {e}", path.display()))
}

fn draw(
    path: &Path,
    title: &str,
    points: &[Point],
    limit_ms: Option<f64>,
) -> Result<(), Box<dyn std::error::Error>> {
    // Log axes need positive bounds; pad one decade-ish around the data so a
    // single point (a fanout run) still gets a readable frame.
    let rates = points.iter().map(|p| p.rate.max(1.0));
    let (rmin, rmax) = rates.fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(r), hi.max(r)));
    let ms = points.iter().flat_map(|p| p.ms).chain(limit_ms).map(|m| m.max(0.001));
    let (mmin, mmax) = ms.fold((f64::MAX, 0f64), |(lo, hi), m| (lo.min(m), hi.max(m)));
    if points.is_empty() {
        return Err("no points to plot".into());
    }
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (rmin / 2.0..rmax * 2.0).log_scale(),
            (mmin / 2.0..mmax * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        // Log axes get a light line per minor step, which packs into grey bands.
        .light_line_style(TRANSPARENT)
        .x_desc("delivered messages per second (log)")
        .y_desc("send-to-delivery latency, ms (log)")
        .x_label_formatter(&|x| si(*x))
        .y_label_formatter(&|y| format!("{y}"))
        .draw()?;
    for (i, name) in NAMES.iter().enumerate() {
        let color = COLORS[i];
        let series: Vec<(f64, f64)> =
            points.iter().map(|p| (p.rate.max(1.0), p.ms[i].max(0.001))).collect();
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(series.into_iter().map(|xy| Circle::new(xy, 4, color.filled())))?;
    }
    if let Some(limit) = limit_ms {
        let line = DashedLineSeries::new(
            vec![(rmin / 2.0, limit), (rmax * 2.0, limit)],
            6,
            4,
            RED.stroke_width(1),
        );
        chart
            .draw_series(line)?
            .label(format!("limit {limit} ms"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// 1500000 as `1.5M`.
fn si(x: f64) -> String {
    match x {
        x if x >= 1e6 => format!("{}M", x / 1e6),
        x if x >= 1e3 => format!("{}k", x / 1e3),
        x => format!("{x}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg() {
        let dir = std::env::temp_dir().join(format!("chinwag-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.svg");
        let points = [
            Point { rate: 20_000.0, ms: [0.4, 0.7, 1.9, 4.3] },
            Point { rate: 40_000.0, ms: [0.5, 0.9, 2.5, 6.0] },
        ];
        latency_vs_rate(&path, "test", &points, Some(50.0)).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("p99.9") && svg.contains("limit"));
        assert!(latency_vs_rate(&path, "none", &[], None).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
