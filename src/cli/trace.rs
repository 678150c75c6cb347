//! `pgc trace`: show a whole trace rebuilt from the rows, as a tree table, JSON,
//! OTLP/JSON or through OpenTelemetry exporters.

#[cfg(feature = "otel")]
mod export;

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Result;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::output::{fancy, warn, write_stdout, write_stdout_json};
use super::{GlobalArgs, connect, parse_execution_id};
use crate::migrate;
use crate::trace::{self, Lookup, NodeRef, Resource, Span, SpanKind, SpanStatus, Trace};

/// Show the whole trace an execution belongs to, rebuilt from the queue's rows: every
/// enqueue (producer span), every attempt (consumer span) with its error, steps, and
/// children across queues. The requested execution is marked.
#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// An execution of the trace (any of them: the whole trace is shown).
    #[arg(
        value_name = "EXECUTION_ID",
        value_parser = parse_execution_id,
        required_unless_present = "trace_id",
        conflicts_with = "trace_id"
    )]
    pub id: Option<Uuid>,

    /// Show the trace with this id (32 hex digits) instead.
    #[arg(long, value_name = "TRACE_ID", value_parser = trace::parse_trace_id)]
    pub trace_id: Option<String>,

    /// Output format: a tree table, JSON for scripts, an OTLP/JSON export request, or
    /// the opentelemetry-stdout exporter's text. Default: table (nothing with --export).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub format: Option<Format>,

    /// Also send the spans to an OTLP/HTTP (protobuf) endpoint:
    /// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT plus
    /// /v1/traces, else http://localhost:4318/v1/traces.
    #[cfg(feature = "otel")]
    #[arg(long, value_enum, value_name = "EXPORTER")]
    pub export: Option<Export>,
}

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A tree with a waterfall, one row per span.
    Table,
    /// A stable JSON document.
    Json,
    /// An OTLP/JSON ExportTraceServiceRequest on one line.
    OtlpJson,
    /// The opentelemetry-stdout span exporter.
    #[cfg(feature = "otel")]
    Stdout,
}

/// `--export`.
#[cfg(feature = "otel")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Export {
    /// OTLP over HTTP with protobuf bodies.
    Otlp,
}

/// Runs `pgc trace`.
pub async fn run(global: &GlobalArgs, args: TraceArgs) -> Result<ExitCode> {
    let lookup = match (args.id, args.trace_id) {
        (Some(id), _) => Lookup::Execution(id),
        (None, Some(t)) => Lookup::TraceId(t),
        (None, None) => {
            return Err(crate::error::Error::invalid("give an execution id or --trace-id").into());
        }
    };
    let client = connect(global).await?;
    migrate::check_schema(&client).await?;
    let trace = trace::load(&client, &lookup).await?;
    drop(client);
    for w in &trace.warnings {
        warn(w);
    }
    #[cfg(feature = "otel")]
    let exporting = args.export == Some(Export::Otlp);
    #[cfg(not(feature = "otel"))]
    let exporting = false;
    let format = match args.format {
        Some(f) => Some(f),
        None if exporting => None,
        None => Some(Format::Table),
    };
    let (resource, resource_warning) = Resource::from_env();
    // Only the OpenTelemetry forms carry the resource.
    let uses_resource = exporting || !matches!(format, None | Some(Format::Table | Format::Json));
    if let (true, Some(w)) = (uses_resource, resource_warning) {
        warn(&w);
    }
    let shown = match format {
        Some(Format::Table) => write_stdout(&render_table(&trace, &TableStyle::detect())),
        Some(Format::Json) => write_stdout_json(&trace.document(), true),
        Some(Format::OtlpJson) => write_stdout_json(&trace::otlp_json(&trace, &resource), false),
        #[cfg(feature = "otel")]
        Some(Format::Stdout) => export::print_with_stdout_exporter(&trace, &resource).await,
        None => Ok(()),
    };
    // Exported even when stdout's reader went away (`… --export otlp | head -1`).
    #[cfg(feature = "otel")]
    if exporting {
        export::export_otlp(&trace, &resource).await?;
    }
    shown?;
    Ok(ExitCode::SUCCESS)
}

/// How the table is drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStyle {
    /// Box-drawing characters, glyphs and colour (a terminal without `NO_COLOR`).
    pub fancy: bool,
    /// Total width in columns.
    pub width: usize,
}

impl TableStyle {
    /// Fancy on a terminal without `NO_COLOR`; the terminal's width when stdout is one,
    /// else `COLUMNS`, else 120.
    pub fn detect() -> TableStyle {
        let fancy = fancy();
        let terminal =
            terminal_size::terminal_size_of(std::io::stdout()).map(|(w, _)| usize::from(w.0));
        let columns = std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.trim().parse::<usize>().ok());
        TableStyle {
            fancy,
            width: terminal.or(columns).unwrap_or(120).clamp(40, 1000),
        }
    }
}

/// Glyphs for one style.
struct Glyphs {
    branch: &'static str,
    last: &'static str,
    pipe: &'static str,
    space: &'static str,
    wait: char,
    run: char,
    step: char,
    tick: char,
    marker: &'static str,
    unfinished: &'static str,
    cut: char,
}

const FANCY: Glyphs = Glyphs {
    branch: "├─ ",
    last: "└─ ",
    pipe: "│  ",
    space: "   ",
    wait: '░',
    run: '█',
    step: '▓',
    tick: '◆',
    marker: "▶",
    unfinished: "…",
    cut: '…',
};

const PLAIN: Glyphs = Glyphs {
    branch: "|- ",
    last: "`- ",
    pipe: "|  ",
    space: "   ",
    wait: '.',
    run: '#',
    step: '=',
    tick: '*',
    marker: ">",
    unfinished: "..",
    cut: '~',
};

/// The status column: a glyph (fancy) or a short word (plain), and its colour.
fn status_cell(span: &Span, fancy: bool) -> (&'static str, &'static str) {
    let (glyph, word, colour) = match span.outcome {
        "completed" => ("✓", "ok", "32"),
        "failed" | "timed_out" | "lost" => ("✗", "err", "31"),
        "running" => ("●", "run", "33"),
        "pending" => ("◌", "wait", "33"),
        "released" => ("↺", "rel", "36"),
        "cancelled" => ("⊘", "cxl", "35"),
        _ => ("·", "sent", "2"),
    };
    if fancy { (glyph, colour) } else { (word, "") }
}

/// A compact duration: `850us`, `12.3ms`, `4.21s`, `3m07s`, `2h05m`.
fn short_duration(d: chrono::TimeDelta) -> String {
    let us = d.num_microseconds().unwrap_or(i64::MAX).max(0);
    if us < 1_000 {
        format!("{us}us")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else if us < 60_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us < 3_600_000_000 {
        let s = us / 1_000_000;
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        let m = us / 60_000_000;
        format!("{}h{:02}m", m / 60, m % 60)
    }
}

/// `s` cut to `width` characters, the last one replaced by `cut` when it was longer.
fn truncate(s: &str, width: usize, cut: char) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else if width == 0 {
        String::new()
    } else {
        let mut out: String = s.chars().take(width - 1).collect();
        out.push(cut);
        out
    }
}

fn pad(s: &str, width: usize) -> String {
    let n = s.chars().count();
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(n)));
    out
}

/// The tree table of `pgc trace`.
pub fn render_table(trace: &Trace, style: &TableStyle) -> String {
    let g = if style.fancy { &FANCY } else { &PLAIN };
    let t0 = trace.start().unwrap_or(trace.now);
    let t1 = trace.end().unwrap_or(trace.now).max(t0);
    let total = t1 - t0;
    let mut out = String::new();

    // Header.
    let root = match trace.nodes.iter().filter(|n| n.depth() == 0).count() {
        1 => match trace.nodes.first().map(|n| &n.what) {
            Some(NodeRef::Remote(id)) => format!("remote parent {id} (not in the database)"),
            Some(NodeRef::Span(i)) => {
                let s = &trace.spans[*i];
                format!("{} {} ({})", s.name, s.execution.task, s.execution.id)
            }
            None => "none".to_string(),
        },
        n => format!("{n} roots"),
    };
    let _ = writeln!(out, "trace   {}", trace.trace_id);
    let _ = writeln!(out, "root    {root}");
    let _ = writeln!(
        out,
        "status  {}, {} execution{}, {} spans, total {}",
        trace.status(),
        trace.executions,
        if trace.executions == 1 { "" } else { "s" },
        trace.spans.len(),
        short_duration(total),
    );
    out.push('\n');

    // Column widths.
    let label = |node: &trace::Node| match &node.what {
        NodeRef::Span(i) => trace.spans[*i].name.clone(),
        NodeRef::Remote(id) => format!("remote parent {id}"),
    };
    let name_w = trace
        .nodes
        .iter()
        .map(|n| n.depth() * 3 + label(n).chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 60);
    let mut task_w = trace
        .spans
        .iter()
        .map(|s| s.execution.task.chars().count())
        .max()
        .unwrap_or(4)
        .clamp(4, 24);
    let mut queue_w = trace
        .spans
        .iter()
        .map(|s| s.execution.queue.chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, 16);
    let status_w = if style.fancy { 2 } else { 4 };
    // marker, name, task, queue, status, attempt, start, duration, then the bar. In a
    // narrow terminal the task and queue columns give way first (to 6), then the names
    // (to 12) and the bar (to 8): down to about 72 columns every row fits.
    const BAR_MIN: usize = 8;
    let fixed = |task_w: usize, queue_w: usize| {
        2 + 2 + task_w + 2 + queue_w + 2 + status_w + 2 + 3 + 2 + 8 + 2 + 9 + 2
    };
    while fixed(task_w, queue_w) + name_w + BAR_MIN > style.width && task_w.max(queue_w) > 6 {
        if task_w >= queue_w {
            task_w -= 1;
        } else {
            queue_w -= 1;
        }
    }
    let fixed = fixed(task_w, queue_w);
    let name_w = name_w
        .min(style.width.saturating_sub(fixed + BAR_MIN))
        .max(12);
    let bar_w = style.width.saturating_sub(fixed + name_w).max(BAR_MIN);

    let _ = writeln!(
        out,
        "  {}  {}  {}  {}  {:>3}  {:>8}  {:>9}  TIMELINE",
        pad("SPAN", name_w),
        pad("TASK", task_w),
        pad("QUEUE", queue_w),
        pad(if style.fancy { "" } else { "STAT" }, status_w),
        "TRY",
        "START",
        "DURATION",
    );

    let scale = |t: DateTime<Utc>| -> usize {
        let total_us = total.num_microseconds().unwrap_or(1).max(1) as f64;
        let at = (t - t0).num_microseconds().unwrap_or(0).max(0) as f64;
        ((at / total_us) * bar_w as f64).floor() as usize
    };
    let colour = |text: &str, code: &str| {
        if style.fancy && !code.is_empty() {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    };

    for node in &trace.nodes {
        let mut prefix = String::new();
        if let Some((own, ancestors)) = node.guides.split_last() {
            for more in ancestors {
                prefix.push_str(if *more { g.pipe } else { g.space });
            }
            prefix.push_str(if *own { g.branch } else { g.last });
        }
        let span = match &node.what {
            NodeRef::Remote(_) => {
                let name = truncate(&format!("{prefix}{}", label(node)), name_w, g.cut);
                let _ = writeln!(out, "  {name}");
                continue;
            }
            NodeRef::Span(i) => &trace.spans[*i],
        };
        let marker = if trace.requested == Some(span.execution.id) {
            g.marker
        } else {
            " "
        };
        let name = truncate(&format!("{prefix}{}", span.name), name_w, g.cut);
        let (st, st_colour) = status_cell(span, style.fancy);
        let attempt = span.attempt.map(|a| a.to_string()).unwrap_or_default();
        let start = format!("+{}", short_duration(span.start - t0));
        let pending = span.kind == SpanKind::Producer && span.outcome == "pending";
        let duration = match (span.kind, span.end) {
            (SpanKind::Producer, _) if pending => span
                .waiting_since
                .map(|w| format!("{}{}", short_duration(trace.now - w), g.unfinished))
                .unwrap_or_default(),
            (SpanKind::Producer, _) => String::new(),
            (_, Some(end)) => short_duration(end - span.start),
            (_, None) => format!("{}{}", short_duration(trace.now - span.start), g.unfinished),
        };

        // Waterfall.
        let mut bar: Vec<char> = vec![' '; bar_w];
        let run_char = if span.kind == SpanKind::Internal {
            g.step
        } else {
            g.run
        };
        match span.kind {
            SpanKind::Producer => {
                if let (true, Some(w)) = (pending, span.waiting_since) {
                    let (a, b) = (scale(w), scale(trace.now).max(scale(w) + 1));
                    for c in bar.iter_mut().take(b.min(bar_w)).skip(a) {
                        *c = g.wait;
                    }
                }
                let at = scale(span.start).min(bar_w - 1);
                bar[at] = g.tick;
            }
            _ => {
                if let Some(w) = span.waiting_since {
                    for c in bar
                        .iter_mut()
                        .take(scale(span.start).min(bar_w))
                        .skip(scale(w))
                    {
                        *c = g.wait;
                    }
                }
                let a = scale(span.start).min(bar_w - 1);
                let b = scale(span.end.unwrap_or(trace.now)).clamp(a + 1, bar_w);
                for c in bar.iter_mut().take(b).skip(a) {
                    *c = run_char;
                }
            }
        }
        let bar: String = bar.into_iter().collect();
        let bar = bar.trim_end();
        let _ = writeln!(
            out,
            "{} {}  {}  {}  {}  {:>3}  {:>8}  {:>9}  {}",
            marker,
            pad(&name, name_w),
            pad(&truncate(&span.execution.task, task_w, g.cut), task_w),
            pad(&truncate(&span.execution.queue, queue_w, g.cut), queue_w),
            colour(&pad(st, status_w), st_colour),
            attempt,
            start,
            duration,
            bar
        );

        // The first line of an error, under its span.
        if let (SpanStatus::Error, Some(message)) = (span.status, &span.status_message) {
            let mut indent = String::new();
            for more in &node.guides {
                indent.push_str(if *more { g.pipe } else { g.space });
            }
            let first = message.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            let text = truncate(
                &format!("{indent}   error: {}", first.trim()),
                style.width.saturating_sub(2),
                g.cut,
            );
            let _ = writeln!(out, "  {}", colour(&text, "31"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_durations() {
        let d = chrono::TimeDelta::microseconds;
        assert_eq!(short_duration(d(850)), "850us");
        assert_eq!(short_duration(d(12_345)), "12.3ms");
        assert_eq!(short_duration(d(4_210_000)), "4.21s");
        assert_eq!(short_duration(d(187_000_000)), "3m07s");
        assert_eq!(short_duration(d(7_500_000_000)), "2h05m");
        assert_eq!(short_duration(d(-5)), "0us");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("abcdef", 4, '…'), "abc…");
        assert_eq!(truncate("abcdef", 4, '~'), "abc~");
        assert_eq!(truncate("abc", 4, '~'), "abc");
    }
}
