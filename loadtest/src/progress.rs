//! The progress line: one line redrawn every second on a terminal, or a plain line every
//! few seconds when stderr is a file or a pipe (logs, CI).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Plain lines, without a terminal, come this often.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// Where progress goes.
pub struct ProgressLine {
    bar: Option<ProgressBar>,
    plain_last: Option<Instant>,
    quiet: bool,
}

impl ProgressLine {
    /// A progress line on stderr, or nothing when `quiet`.
    pub fn new(quiet: bool) -> ProgressLine {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(2));
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        });
        ProgressLine {
            bar,
            plain_last: None,
            quiet,
        }
    }

    /// Shows `line`.
    pub fn show(&mut self, line: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(line);
            bar.tick();
        } else if !self.quiet
            && self
                .plain_last
                .is_none_or(|last| last.elapsed() >= PLAIN_EVERY)
        {
            self.plain_last = Some(Instant::now());
            eprintln!("{line}");
        }
    }

    /// Removes the line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
