//! Reads the directory `bench/compare.sh` filled (one `loadtest --json` report per server
//! and load, the full path's reports, `machine.env`) and prints the comparison as markdown:
//! the machine, a table per load with ours/peer ratios, the full path's latency against load
//! and its knee. Draws `peers.svg` and `fullpath.svg` next to the reports.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use bench::compare::{Figures, KNEE_P99_MS, PathRun, PeerRuns};
use clap::Parser;
use plotters::prelude::*;
use serde_json::Value;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Prints the side-by-side comparison of one `bench/compare.sh` run.
#[derive(Debug, Parser)]
struct Args {
    /// The run's directory (target/compare/<date>).
    dir: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let peers = read_peers(&args.dir)?;
    let path = read_path(&args.dir.join("fullpath"))?;
    print!("{}", machine(&args.dir));
    if !peers.is_empty() {
        println!("## Peers, one load at a time, each server alone on one core\n");
        print!("{}", peers.markdown());
        let plot = args.dir.join("peers.svg");
        draw_peers(&peers, &plot).map_err(|e| anyhow::anyhow!("drawing peers.svg: {e}"))?;
    }
    if !path.is_empty() {
        println!("## Full path (gateway, RabbitMQ, backend, PostgreSQL, Redis) at rising load\n");
        print!("{}", bench::compare::path_markdown(&path));
        let plot = args.dir.join("fullpath.svg");
        draw_path(&path, &plot).map_err(|e| anyhow::anyhow!("drawing fullpath.svg: {e}"))?;
    }
    Ok(())
}

fn machine(dir: &Path) -> String {
    let Ok(env) = fs::read_to_string(dir.join("machine.env")) else {
        return String::new();
    };
    let mut out = String::from("| | |\n|---|---|\n");
    for line in env.lines() {
        if let Some((key, value)) = line.split_once('=') {
            out.push_str(&format!("| {key} | {value} |\n"));
        }
    }
    out.push('\n');
    out
}

fn read_report(path: &Path) -> Result<Figures> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Figures::from_report(&report).with_context(|| format!("reading {}", path.display()))
}

fn json_files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json")
            && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
        {
            files.push((stem.to_owned(), path));
        }
    }
    Ok(files)
}

fn read_peers(dir: &Path) -> Result<PeerRuns> {
    let mut runs = PeerRuns::default();
    for (stem, path) in json_files(dir)? {
        if let Some((server, load)) = PeerRuns::parse_name(&stem) {
            runs.add(server, load, read_report(&path)?);
        }
    }
    Ok(runs)
}

/// `report-<rate>.json` per offered rate, lowest first.
fn read_path(dir: &Path) -> Result<Vec<PathRun>> {
    let mut runs = Vec::new();
    for (stem, path) in json_files(dir)? {
        if let Some(rate) = stem
            .strip_prefix("report-")
            .and_then(|r| r.parse::<f64>().ok())
        {
            runs.push(PathRun {
                rate_per_user: rate,
                figures: read_report(&path)?,
            });
        }
    }
    runs.sort_by(|a, b| a.rate_per_user.total_cmp(&b.rate_per_user));
    Ok(runs)
}

const SERVER_COLORS: [RGBColor; 5] = [
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

/// One row per (load, server): a line from p50 to p99.9 with a dot at p99, log time axis.
fn draw_peers(peers: &PeerRuns, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let mut rows = Vec::new();
    let mut servers: Vec<&str> = Vec::new();
    let ordered = peers.ordered();
    for runs in &ordered {
        let load = runs.load;
        for &(server, ref f) in &runs.servers {
            if let (Some(p50), Some(p99), Some(p999)) = (f.p50_ms, f.p99_ms, f.p99_9_ms) {
                if !servers.contains(&server) {
                    servers.push(server);
                }
                rows.push((format!("{load} {server}"), server, p50, p99, p999));
            }
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let lowest = rows.iter().map(|r| r.2).fold(f64::MAX, f64::min);
    let highest = rows.iter().map(|r| r.4).fold(0.0, f64::max);
    let color = |server: &str| {
        let i = servers.iter().position(|s| *s == server).unwrap_or(0);
        SERVER_COLORS[i % SERVER_COLORS.len()]
    };
    let height = 120 + 28 * rows.len() as u32;
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let count = rows.len() as i32;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Latency by load and server: p50 to p99.9, dot at p99 (ms, log)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(230)
        .build_cartesian_2d(((lowest / 2.0)..(highest * 2.0)).log_scale(), -1..count)?;
    let labels: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    chart
        .configure_mesh()
        .y_labels(rows.len() + 2)
        .y_label_formatter(&|i| {
            usize::try_from(*i)
                .ok()
                .and_then(|i| labels.get(i))
                .cloned()
                .unwrap_or_default()
        })
        .x_desc("milliseconds")
        .draw()?;
    for (i, (_, server, p50, p99, p999)) in rows.iter().enumerate() {
        let y = i as i32;
        let c = color(server);
        chart.draw_series(std::iter::once(PathElement::new(
            vec![(*p50, y), (*p999, y)],
            c.stroke_width(3),
        )))?;
        chart.draw_series(std::iter::once(Circle::new((*p99, y), 5, c.filled())))?;
    }
    root.present()?;
    Ok(())
}

/// Delivery p50, p99 and p99.9 against offered messages per second, with the 10 ms target.
fn draw_path(runs: &[PathRun], path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let points = |pick: fn(&Figures) -> Option<f64>| -> Vec<(f64, f64)> {
        runs.iter()
            .filter_map(|r| pick(&r.figures).map(|v| (r.figures.sent_per_sec.max(1.0), v)))
            .collect()
    };
    let series = [
        ("p50", points(|f| f.p50_ms), SERVER_COLORS[1]),
        ("p99", points(|f| f.p99_ms), SERVER_COLORS[0]),
        ("p99.9", points(|f| f.p99_9_ms), SERVER_COLORS[3]),
    ];
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    if all.is_empty() {
        return Ok(());
    }
    let (x_low, x_high) = all
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), p| (l.min(p.0), h.max(p.0)));
    let (y_low, y_high) = all.iter().fold((KNEE_P99_MS, KNEE_P99_MS), |(l, h), p| {
        (l.min(p.1), h.max(p.1))
    });
    let root = SVGBackend::new(path, (1000, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Full path, 10,000 connections: send to delivery against offered load",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(
            ((x_low / 1.5)..(x_high * 1.5)).log_scale(),
            ((y_low / 1.5)..(y_high * 1.5)).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("offered messages per second (log)")
        .y_desc("milliseconds (log)")
        .draw()?;
    for (name, points, color) in series {
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(x_low / 1.5, KNEE_P99_MS), (x_high * 1.5, KNEE_P99_MS)],
            BLACK.stroke_width(1),
        )))?
        .label("10 ms target")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.stroke_width(1)));
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.9))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}
