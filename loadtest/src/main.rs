//! The `loadtest` binary: flags, run, table, JSON, plot, and the exit code (2 when the
//! SLO is missed).

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use loadtest::{Cli, EXIT_SLO_MISSED, Plan};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("loadtest: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            // clap exits with 2 on usage errors; 2 means a missed SLO here.
            let _ = error.print();
            return Ok(if error.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
    };
    let plan = Plan::from_cli(&cli).context("invalid options")?;
    let report = loadtest::run_and_check(plan)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(report.render().as_bytes())
        .context("writing the report")?;
    if let Some(path) = &cli.common.json {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        serde_json::to_writer_pretty(std::io::BufWriter::new(file), &report)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cli.common.plot {
        loadtest::plot::write_svg(&report, path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if report.slo.passed {
        return Ok(ExitCode::SUCCESS);
    }
    for miss in report.slo.misses() {
        let actual = miss
            .actual
            .map_or("no samples".to_owned(), |a| a.to_string());
        eprintln!(
            "SLO missed: {} is {actual}, the limit is {}",
            miss.name, miss.limit
        );
    }
    Ok(ExitCode::from(EXIT_SLO_MISSED))
}
