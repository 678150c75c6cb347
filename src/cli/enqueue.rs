//! `pgc enqueue`: one execution from flags, or a JSON Lines batch, with trace context
//! taken from flags or the environment.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncBufRead, AsyncReadExt, BufReader};
use uuid::Uuid;

use super::output::{info, warn, write_stdout};
use super::telemetry::CliTelemetry;
use super::{GlobalArgs, connect};
use crate::enqueue::{self, BatchOptions, NewExecution, When};
use crate::error::Error;
use crate::execution;
use crate::migrate;
use crate::telemetry::TelemetryEvent;
use crate::traceparent::Incoming;

/// Put a task execution into a queue and print its id.
///
/// The trace context comes from --traceparent/--tracestate, else from the TRACEPARENT
/// and TRACESTATE environment variables: the execution's producer span becomes a child
/// of that span in the same trace. Without one, a new trace starts. An invalid
/// traceparent is reported as a warning and a new trace starts (the W3C rule).
#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    /// Task name: 1–128 characters from A–Z a–z 0–9 _ . : -
    #[arg(required_unless_present = "batch", conflicts_with = "batch")]
    pub task: Option<String>,

    /// Queue to put it in (same characters as task names).
    #[arg(short, long, default_value = enqueue::DEFAULT_QUEUE)]
    pub queue: String,

    /// Payload: JSON text, @FILE to read it from a file, or - for stdin. Default: {}.
    #[arg(short, long, value_name = "JSON|@FILE|-")]
    pub payload: Option<String>,

    /// Run no earlier than this time (RFC 3339, e.g. 2026-01-31T09:30:00Z).
    #[arg(long, value_name = "TIME", value_parser = parse_time, conflicts_with = "delay")]
    pub run_at: Option<DateTime<Utc>>,

    /// Run no earlier than this long from now (e.g. 30s, 5m, 1h30m).
    #[arg(long, value_name = "DURATION", value_parser = super::parse_duration)]
    pub delay: Option<Duration>,

    /// Priority: lower numbers run first (may be negative).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,

    /// Attempts before the execution is finished as failed (at least 1).
    #[arg(long, default_value_t = enqueue::DEFAULT_MAX_ATTEMPTS, allow_negative_numbers = true,
          value_parser = super::parse_at_least_one::<i32>)]
    pub max_attempts: i32,

    /// While an unfinished execution of the same queue and task has this key, return its
    /// id instead of enqueuing another.
    #[arg(long, value_name = "KEY")]
    pub dedupe_key: Option<String>,

    /// W3C traceparent of the caller's span (overrides TRACEPARENT).
    #[arg(long, value_name = "TRACEPARENT")]
    pub traceparent: Option<String>,

    /// W3C tracestate to carry with --traceparent (overrides TRACESTATE).
    #[arg(long, value_name = "TRACESTATE", requires = "traceparent")]
    pub tracestate: Option<String>,

    /// Print a JSON object (id, queue, task, traceparent, …) instead of the id alone.
    #[arg(long, conflicts_with = "wait")]
    pub json: bool,

    /// Wait for the execution to finish and print its result JSON instead of its id
    /// (`null` when it has none). Exit 0 when it completed, 1 when it failed or was
    /// cancelled. Woken by the worker's NOTIFY, with a slow poll as fallback.
    #[arg(long, conflicts_with = "batch")]
    pub wait: bool,

    /// With --wait: give up after this long (exit 1). Default: wait as long as it takes.
    #[arg(long, value_name = "DURATION", requires = "wait", value_parser = super::parse_duration)]
    pub wait_timeout: Option<Duration>,

    /// Enqueue every line of a JSON Lines file (- for stdin): objects with "task" and
    /// optional "payload", "queue", "priority", "run_at", "dedupe_key", "max_attempts".
    /// All-or-nothing unless --commit-every is given.
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["payload", "dedupe_key"])]
    pub batch: Option<String>,

    /// With --batch: commit every N rows instead of once at the end.
    #[arg(long, value_name = "N", requires = "batch", value_parser = super::parse_at_least_one::<u64>)]
    pub commit_every: Option<u64>,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    enqueue::parse_rfc3339(s).map_err(|e| e.to_string())
}

/// The caller's trace context: flags first, else the environment carrier.
fn incoming(args: &EnqueueArgs) -> Incoming {
    let (tp, ts) = match &args.traceparent {
        Some(tp) => (Some(tp.clone()), args.tracestate.clone()),
        None => (
            std::env::var("TRACEPARENT").ok(),
            std::env::var("TRACESTATE").ok(),
        ),
    };
    let source = if args.traceparent.is_some() {
        "--traceparent"
    } else {
        "TRACEPARENT"
    };
    let incoming = Incoming::read(tp.as_deref(), ts.as_deref());
    match &incoming {
        Incoming::Invalid(e) => warn(&format!(
            "ignoring invalid {source} ({e}); starting a new trace"
        )),
        Incoming::Valid {
            state_error: Some(e),
            ..
        } => warn(&format!(
            "ignoring invalid tracestate ({e}); keeping the traceparent"
        )),
        _ => {}
    }
    incoming
}

/// The enqueuing execution when run inside a task (`PGC_EXECUTION_ID`).
fn parent_execution_id() -> Option<Uuid> {
    let raw = std::env::var("PGC_EXECUTION_ID").ok()?;
    if raw.trim().is_empty() {
        return None;
    }
    match Uuid::parse_str(raw.trim()) {
        Ok(id) => Some(id),
        Err(e) => {
            warn(&format!("ignoring PGC_EXECUTION_ID, not a UUID ({e})"));
            None
        }
    }
}

fn when(args: &EnqueueArgs) -> When {
    match (args.run_at, args.delay) {
        (Some(t), _) => When::At(t),
        (None, Some(d)) => When::After(d),
        (None, None) => When::Now,
    }
}

/// Reads the payload argument: JSON text, @FILE, or - for stdin.
async fn read_payload(arg: &str) -> Result<String, Error> {
    if arg == "-" {
        let mut text = String::new();
        tokio::io::stdin()
            .read_to_string(&mut text)
            .await
            .map_err(|e| Error::invalid(format!("could not read the payload from stdin: {e}")))?;
        Ok(text)
    } else if let Some(path) = arg.strip_prefix('@') {
        tokio::fs::read_to_string(path)
            .await
            .map_err(|e| Error::invalid(format!("could not read payload file {path}: {e}")))
    } else {
        Ok(arg.to_string())
    }
}

/// Runs `pgc enqueue`.
pub async fn run(global: &GlobalArgs, args: EnqueueArgs) -> Result<ExitCode> {
    enqueue::validate_name("queue name", &args.queue)?;
    if let Some(batch) = args.batch.clone() {
        return run_batch(global, &args, &batch).await;
    }
    let task = args.task.clone().unwrap_or_default();
    let payload = match &args.payload {
        Some(p) => enqueue::validate_payload(&read_payload(p).await?)?.to_string(),
        None => "{}".to_string(),
    };
    let new = NewExecution {
        task,
        queue: args.queue.clone(),
        payload,
        priority: args.priority,
        when: when(&args),
        max_attempts: args.max_attempts,
        dedupe_key: args.dedupe_key.clone(),
        parent_execution_id: parent_execution_id(),
    };
    // Everything the user gave is checked before the database is touched.
    new.validate()?;
    let ctx = incoming(&args).child();
    if args.wait {
        return enqueue_and_wait(global, &args, &new, &ctx).await;
    }
    let client = connect(global).await?;
    migrate::check_schema(&client).await?;
    let mut telemetry = CliTelemetry::from_env();
    let done = traced_enqueue(&client, &new, &ctx, &telemetry).await?;
    let shown = if args.json {
        serde_json::to_string(&done)
            .map_err(anyhow::Error::from)
            .and_then(|json| write_stdout(&format!("{json}\n")))
    } else {
        write_stdout(&format!("{}\n", done.id))
    };
    // The span leaves before the command does, even when stdout's reader went away.
    telemetry.finish().await;
    shown?;
    Ok(ExitCode::SUCCESS)
}

/// Enqueues and records the producer span with the ids just stored (none for a
/// deduplicated enqueue, which stored nothing).
async fn traced_enqueue(
    client: &tokio_postgres::Client,
    new: &NewExecution,
    ctx: &crate::traceparent::ProducerContext,
    telemetry: &CliTelemetry,
) -> Result<enqueue::Enqueued> {
    let start = Utc::now();
    let done = enqueue::enqueue(client, new, ctx).await?;
    let end = Utc::now();
    if !done.deduplicated {
        telemetry.hooks().event(&TelemetryEvent::Sent {
            queue: &done.queue,
            count: 1,
        });
        if let Some((trace_id, span)) =
            crate::trace::enqueue_span(&done, new.priority, new.max_attempts, start, end)
        {
            telemetry.hooks().span(&trace_id, &span);
        }
    }
    Ok(done)
}

/// `pgc enqueue --wait`: listen first (so the worker's notification cannot slip past),
/// enqueue, then wait for the execution to finish.
async fn enqueue_and_wait(
    global: &GlobalArgs,
    args: &EnqueueArgs,
    new: &NewExecution,
    ctx: &crate::traceparent::ProducerContext,
) -> Result<ExitCode> {
    let conn = global.connect_options()?;
    let client = conn.connect().await.map_err(Error::from)?;
    migrate::check_schema(&client).await?;
    let (listener, mut notes) = conn.connect_listener().await.map_err(Error::from)?;
    listener
        .batch_execute(crate::sql::LISTEN_FINISHED)
        .await
        .map_err(Error::from)?;
    let mut telemetry = CliTelemetry::from_env();
    let done = traced_enqueue(&client, new, ctx, &telemetry).await?;
    telemetry.finish().await;
    let state = execution::wait(&client, &mut notes, done.id, args.wait_timeout).await?;
    match state.status.as_str() {
        "completed" => {
            let result = state.result.unwrap_or_else(|| "null".to_string());
            write_stdout(&format!("{result}\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        "failed" | "cancelled" => Err(anyhow::anyhow!(
            "execution {} {}: {}",
            done.id,
            state.status,
            state
                .last_error
                .as_deref()
                .and_then(|e| e.lines().next())
                .unwrap_or("no error recorded")
        )),
        other => Err(anyhow::anyhow!(
            "execution {} is still {other} after {}",
            done.id,
            humantime::format_duration(args.wait_timeout.unwrap_or_default())
        )),
    }
}

async fn run_batch(global: &GlobalArgs, args: &EnqueueArgs, source: &str) -> Result<ExitCode> {
    let (input, size): (Box<dyn AsyncBufRead + Unpin + Send>, Option<u64>) = if source == "-" {
        (
            Box::new(BufReader::with_capacity(1 << 20, tokio::io::stdin())),
            None,
        )
    } else {
        let file = tokio::fs::File::open(source)
            .await
            .map_err(|e| Error::invalid(format!("could not open batch file {source}: {e}")))?;
        let size = file.metadata().await.ok().map(|m| m.len());
        (Box::new(BufReader::with_capacity(1 << 20, file)), size)
    };
    let opts = BatchOptions {
        queue: args.queue.clone(),
        priority: args.priority,
        max_attempts: args.max_attempts,
        when: when(args),
        parent_execution_id: parent_execution_id(),
        incoming: incoming(args),
        commit_every: args.commit_every,
        telemetry: Default::default(),
    };
    let mut client = connect(global).await?;
    // Each committed row's producer span, and the sent counts per queue; exported while
    // the batch runs (what does not fit the exporter's bounded queue is dropped and
    // counted, as with any spans).
    let mut telemetry = CliTelemetry::from_env();
    telemetry.start_flushing();
    let opts = BatchOptions {
        telemetry: telemetry.shared(),
        ..opts
    };
    migrate::check_schema(&client).await?;

    let bar = progress_bar(size);
    let started = Instant::now();
    let outcome = enqueue::batch(&mut client, input, &opts, &mut |p| match size {
        Some(_) => {
            bar.set_position(p.bytes);
            bar.set_message(format!("{} rows", p.rows));
        }
        None => bar.set_position(p.rows),
    })
    .await;
    bar.finish_and_clear();
    // What committed is reported, whether or not the whole batch did.
    telemetry.finish().await;
    let summary = outcome.map_err(|f| {
        let what = if f.commit_uncertain {
            format!(
                "batch {source}: the connection broke during a commit, so the last chunk may or may not be written ({} rows committed before it)",
                f.committed
            )
        } else if f.committed > 0 {
            format!("batch {source}: stopped after committing {} rows", f.committed)
        } else {
            format!("batch {source}: nothing was written")
        };
        anyhow::Error::new(f.error).context(what)
    })?;
    let secs = started.elapsed().as_secs_f64();
    if summary.unspanned > 0 {
        warn(&format!(
            "{} executions got no live producer span: a transaction keeps at most {} until it commits (use --commit-every)",
            summary.unspanned,
            enqueue::MAX_BATCH_SPANS
        ));
    }
    if args.json {
        write_stdout(&format!("{}\n", serde_json::to_string(&summary)?))?;
    }
    let rate = if secs > 0.0 {
        summary.enqueued as f64 / secs
    } else {
        0.0
    };
    info(&format!(
        "enqueued {} executions ({} deduplicated) in {:.2}s, {:.0} rows/s",
        summary.enqueued, summary.deduplicated, secs, rate
    ));
    Ok(ExitCode::SUCCESS)
}

fn progress_bar(size: Option<u64>) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    match size {
        Some(len) => ProgressBar::new(len).with_style(
            ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {pos} rows {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    }
}
