//! Writing to the terminal: stdout for data, stderr for warnings and errors, and the
//! broken-pipe rule (a reader that went away is not an error).

use std::io::{self, Write};

/// Stdout's reader went away (`pgc … | head -1`): not an error, exit 0 quietly.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

/// Writes `text` to stdout and flushes it.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
        Ok(()) => Ok(()),
    }
}

/// Writes `value` as JSON (pretty or on one line) and a newline to stdout, streaming
/// through a buffer rather than building the whole text first.
pub fn write_stdout_json<T: serde::Serialize>(value: &T, pretty: bool) -> anyhow::Result<()> {
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    let written = if pretty {
        serde_json::to_writer_pretty(&mut out, value)
    } else {
        serde_json::to_writer(&mut out, value)
    };
    match written
        .map_err(io::Error::from)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
    {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
        Ok(()) => Ok(()),
    }
}

/// `--log-format json`: pgc's own lines on stderr are JSON objects.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Switches pgc's own stderr lines to JSON (`--log-format json`).
pub fn set_json_logs(on: bool) {
    JSON_LOGS.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether pgc's own stderr lines are JSON.
pub fn json_logs() -> bool {
    JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Where pgc's log lines also go (OpenTelemetry logs, when `OTEL_LOGS_EXPORTER` asks).
pub type LogSink = std::sync::Arc<dyn Fn(&str, &str, &LogContext<'_>) + Send + Sync>;

static LOG_SINK: std::sync::RwLock<Option<LogSink>> = std::sync::RwLock::new(None);

/// Sends pgc's log lines to `sink` too (`None`: stderr only).
#[cfg_attr(not(feature = "otel"), allow(dead_code))]
pub fn set_log_sink(sink: Option<LogSink>) {
    if let Ok(mut s) = LOG_SINK.write() {
        *s = sink;
    }
}

pub use crate::telemetry::LogContext;

/// Writes one line of pgc's own on stderr: `pgc: <prefix><text>`, or with
/// `--log-format json` an object with `time`, `level`, `message` and the context.
pub fn log_line(level: &str, text: &str, ctx: &LogContext<'_>) {
    let text = text.replace('\n', " ");
    let sink = LOG_SINK.read().ok().and_then(|s| s.clone());
    if let Some(sink) = sink {
        sink(level, &text, ctx);
    }
    if !json_logs() {
        let prefix = match level {
            "warn" => "warning: ",
            "error" => "error: ",
            _ => "",
        };
        stderr_line(&format!("pgc: {prefix}{text}"));
        return;
    }
    stderr_line(&json_line(level, &text, ctx));
}

/// Writes one line on stderr, and nothing when stderr cannot be written (its reader
/// went away, a full disk): a log line that cannot be written must not stop the work it
/// reports on (`eprintln!` panics then, which left a worker hung).
pub fn stderr_line(line: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err
        .write_all(line.as_bytes())
        .and_then(|()| err.write_all(b"\n"));
}

/// One JSON log line (see [`log_line`]).
pub fn json_line(level: &str, text: &str, ctx: &LogContext<'_>) -> String {
    let mut line = serde_json::Map::new();
    line.insert(
        "time".into(),
        chrono::Utc::now()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
            .into(),
    );
    line.insert("level".into(), level.into());
    line.insert("message".into(), text.into());
    if let Some(tp) = ctx
        .traceparent
        .and_then(|tp| crate::traceparent::TraceParent::parse(tp).ok())
    {
        line.insert("trace_id".into(), tp.trace_id.to_string().into());
        line.insert("span_id".into(), tp.parent_id.to_string().into());
    }
    if let Some(id) = ctx.execution_id {
        line.insert("execution_id".into(), id.to_string().into());
    }
    if let Some(task) = ctx.task {
        line.insert("task".into(), task.into());
    }
    if let Some(attempt) = ctx.attempt {
        line.insert("attempt".into(), attempt.into());
    }
    serde_json::Value::Object(line).to_string()
}

/// Prints `pgc: warning: …` on stderr.
pub fn warn(text: &str) {
    log_line("warn", text, &LogContext::default());
}

/// Prints `pgc: …` on stderr (information, not data).
pub fn info(text: &str) {
    log_line("info", text, &LogContext::default());
}

/// Prints `pgc: error: …` on stderr.
pub fn error_line(text: &str) {
    log_line("error", text, &LogContext::default());
}

/// True when the error is stdout's reader having gone away.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<StdoutClosed>().is_some()
}

/// True when stdout is a terminal and `NO_COLOR` is unset: use box-drawing characters
/// and colour. Otherwise plain ASCII.
pub fn fancy() -> bool {
    use std::io::IsTerminal;
    io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
