//! Latency by percentile as an SVG, on the log-scale percentile axis of HdrHistogram's
//! plots: equal room for 0-90, 90-99, 99-99.9, 99.9-99.99 and 99.99-99.999.

use std::path::Path;

use plotters::prelude::*;

use crate::report::Report;

/// The axis runs to 99.999 (x = 5).
const X_MAX: f64 = 5.0;

/// Why the plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("drawing the plot: {0}")]
pub struct PlotError(String);

/// The x position of `percentile`: -log10(1 - p/100), the maximum at the right edge.
pub fn x_of(percentile: f64) -> f64 {
    if percentile >= 100.0 {
        X_MAX
    } else {
        (-(1.0 - percentile / 100.0).log10()).min(X_MAX)
    }
}

/// The percentile at x, as the axis labels it (0, 90, 99, 99.9, ...).
fn label_of(x: f64) -> String {
    let percentile = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.ceil() as i64 - 2).max(0) as usize;
    format!("{percentile:.decimals$}")
}

/// Writes every latency the report has as one line per metric.
pub fn write_svg(report: &Report, path: &Path) -> Result<(), PlotError> {
    draw(report, path).map_err(|e| PlotError(e.to_string()))
}

fn draw(report: &Report, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let series: Vec<(&str, Vec<(f64, f64)>)> = report
        .latency
        .iter()
        .map(|(name, summary)| {
            let points = summary
                .curve
                .iter()
                .map(|&(p, ms)| (x_of(p), ms.max(0.001)))
                .collect();
            (*name, points)
        })
        .collect();
    let values = series.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y));
    let low = values.clone().fold(f64::INFINITY, f64::min);
    let high = values.fold(0.0, f64::max);
    let (low, high) = if low.is_finite() && high > 0.0 {
        (low * 0.8, high * 1.5)
    } else {
        (0.001, 1.0)
    };
    let root = SVGBackend::new(path, (1100, 650)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{}: latency by percentile ({} connections)",
                report.scenario, report.plan.connections
            ),
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(75)
        .build_cartesian_2d(0f64..X_MAX, (low..high).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&|x| label_of(*x))
        .y_label_formatter(&|y| format!("{}", (y * 1000.0).round() / 1000.0))
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .draw()?;
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_spreads_the_tail() {
        assert_eq!(x_of(0.0), 0.0);
        assert!((x_of(90.0) - 1.0).abs() < 1e-9);
        assert!((x_of(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(x_of(100.0), X_MAX);
        let labels: Vec<String> = (0..=5).map(|x| label_of(f64::from(x))).collect();
        assert_eq!(labels, ["0", "90", "99", "99.9", "99.99", "99.999"]);
    }
}
