//! Logs on stderr in one of three formats, filtered by `RUST_LOG` (`info` when unset).
//!
//! - `text`: for people. Coloured only when stderr is a terminal, so files and the journal
//!   never see escape codes.
//! - `json`: one object per line, fields at the top level, for log shippers.
//! - `journald`: each line starts with its syslog priority as sd-daemon(3) defines it
//!   (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug). journald strips the prefix and
//!   files the line at that priority, so `journalctl -p warning` shows warnings and errors.
//!   No timestamp: the journal keeps its own.

use std::io::IsTerminal;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::{Format, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::{FmtContext, MakeWriter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colours only on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    /// Lines prefixed with their syslog priority (`<4>`), for systemd's journal.
    Journald,
}

/// Installs the process's logger: `format` on stderr, filtered by `RUST_LOG`.
pub fn init(format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    subscriber(format, filter, std::io::stderr, ansi)
        .try_init()
        .map_err(|error| anyhow::anyhow!("installing the logger: {error}"))
}

/// The exit status for what a binary's work returned, logging a failure as an error, so
/// that it reaches the journal at error priority like every other error.
pub fn exit_status(result: anyhow::Result<()>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "exiting on an error");
            std::process::ExitCode::FAILURE
        }
    }
}

/// A subscriber writing `log_format` to `writer`; `ansi` allows colours in the text format.
pub fn subscriber<W>(
    log_format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match log_format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(builder.json().flatten_event(true).finish()),
        LogFormat::Journald => Box::new(
            builder
                .with_ansi(false)
                .event_format(PriorityPrefixed(Format::default().without_time()))
                .finish(),
        ),
    }
}

/// The sd-daemon(3) prefix journald reads as the line's priority.
fn priority(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "<3>",
        Level::WARN => "<4>",
        Level::INFO => "<6>",
        Level::DEBUG | Level::TRACE => "<7>",
    }
}

/// Formats an event with the inner format and prefixes every line it makes with the
/// event's priority: journald files each line of a stream separately, so a message that
/// spans lines keeps its priority on all of them.
struct PriorityPrefixed<F>(F);

impl<S, N, F> FormatEvent<S, N> for PriorityPrefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        let prefix = priority(event.metadata().level());
        // The inner format pads the level to five columns (" INFO"): no use after a prefix.
        for line in text.trim_start().lines() {
            writer.write_str(prefix)?;
            writer.write_str(line)?;
            writer.write_char('\n')?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Collects what the subscriber writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Buffer {
        type Writer = Buffer;

        fn make_writer(&'w self) -> Buffer {
            self.clone()
        }
    }

    /// Logs one event of each level (and a two-line one) in `format`; returns the output.
    fn logged(format: LogFormat, ansi: bool) -> String {
        let buffer = Buffer::default();
        let subscriber = subscriber(format, EnvFilter::new("trace"), buffer.clone(), ansi);
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(code = 7, "broken");
            tracing::warn!("careful");
            tracing::info!(user = "ann", "hello");
            tracing::debug!("details");
            tracing::trace!("more details");
            tracing::warn!("first line\nsecond line");
        });
        let bytes = buffer.0.lock().expect("buffer").clone();
        String::from_utf8(bytes).expect("UTF-8 logs")
    }

    #[test]
    fn journald_lines_carry_their_priority() {
        let text = logged(LogFormat::Journald, true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        for (line, prefix) in lines
            .iter()
            .zip(["<3>", "<4>", "<6>", "<7>", "<7>", "<4>", "<4>"])
        {
            assert!(
                line.starts_with(prefix),
                "{line:?} should start with {prefix}"
            );
        }
        assert!(lines[0].starts_with("<3>ERROR "), "{text}");
        assert!(lines[2].starts_with("<6>INFO "), "{text}");
        assert!(lines[0].contains("broken") && lines[0].contains("code=7"));
        assert!(lines[6].ends_with("second line"), "{text}");
        assert!(!text.contains('\x1b'), "no escape codes: {text:?}");
    }

    #[test]
    fn text_has_colours_only_when_allowed() {
        assert!(!logged(LogFormat::Text, false).contains('\x1b'));
        assert!(logged(LogFormat::Text, true).contains('\x1b'));
    }

    #[test]
    fn json_lines_are_objects_with_level_message_and_fields() {
        let text = logged(LogFormat::Json, true);
        let events: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect();
        assert_eq!(events.len(), 6, "{text}");
        assert_eq!(events[0]["level"], "ERROR");
        assert_eq!(events[0]["message"], "broken");
        assert_eq!(events[0]["code"], 7);
        assert_eq!(events[2]["user"], "ann");
        assert!(!text.contains('\x1b'));
    }
}
