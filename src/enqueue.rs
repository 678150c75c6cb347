//! Enqueue: one execution, or a stream of them through COPY, each with its trace context.
//!
//! The row, its W3C carrier and the `NOTIFY` for its queue are written in one
//! transaction, so a worker that sees the row sees its trace context too. Inputs are
//! validated before anything is sent; a batch is all-or-nothing unless the caller asks
//! for periodic commits. Nothing here prints: progress is reported through a callback.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, accepts, to_sql_checked};
use tokio_postgres::{Client, GenericClient};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::traceparent::{Incoming, ProducerContext, TraceParent, TraceState};
use crate::{jsonb, sql};

/// The queue used when none is named.
pub const DEFAULT_QUEUE: &str = "default";

/// Attempts an execution gets when none is given (the column default agrees).
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;

/// Longest task or queue name.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a task or queue name: 1–128 characters from `[A-Za-z0-9_.:-]`.
/// `kind` names the thing in the message ("task name", "queue name").
pub fn validate_name(kind: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(format!("{kind} is empty")));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(format!(
            "{kind} is {} characters long, the limit is {MAX_NAME_LEN}",
            name.chars().count()
        )));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        return Err(Error::invalid(format!(
            "{kind} {name:?} contains {c:?}; allowed are letters, digits and _ . : -"
        )));
    }
    Ok(())
}

/// Checks a dedupe key: non-empty, at most 1024 bytes, no NUL.
pub fn validate_dedupe_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid("dedupe key is empty"));
    }
    if key.len() > 1024 {
        return Err(Error::invalid(
            "dedupe key is longer than 1024 bytes".to_string(),
        ));
    }
    if key.contains('\0') {
        return Err(Error::invalid("dedupe key contains a NUL character"));
    }
    Ok(())
}

/// Checks `max_attempts` (at least 1).
pub fn validate_max_attempts(n: i32) -> Result<()> {
    if n < 1 {
        return Err(Error::invalid(format!(
            "max attempts must be at least 1, got {n}"
        )));
    }
    Ok(())
}

/// Checks that `text` is one JSON value PostgreSQL's `jsonb` accepts, and returns it
/// trimmed (see [`crate::jsonb::check`] for what `jsonb` refuses that JSON allows).
pub fn validate_payload(text: &str) -> Result<&str> {
    let raw: &RawValue = serde_json::from_str(text)
        .map_err(|e| Error::invalid(format!("payload is not valid JSON: {e}")))?;
    jsonb::check(raw.get()).map_err(|e| Error::invalid(format!("payload {e}")))?;
    Ok(raw.get())
}

/// Longest `--delay` accepted: 1000 years (PostgreSQL's and chrono's calendars end far
/// later, but a longer delay is surely a mistake).
pub const MAX_DELAY: Duration = Duration::from_secs(1000 * 365 * 24 * 3600);

/// Checks a due time: a delay of at most [`MAX_DELAY`].
pub fn validate_when(when: When) -> Result<()> {
    match when {
        When::After(d) if d > MAX_DELAY => Err(Error::invalid(format!(
            "delay {} is longer than the limit of 1000 years",
            humantime::format_duration(d)
        ))),
        _ => Ok(()),
    }
}

/// When an execution becomes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum When {
    /// Now (the database's clock).
    #[default]
    Now,
    /// At this instant.
    At(DateTime<Utc>),
    /// This long after now (the database's clock).
    After(Duration),
}

/// One execution to enqueue.
#[derive(Debug, Clone)]
pub struct NewExecution {
    /// Task name.
    pub task: String,
    /// Queue name.
    pub queue: String,
    /// Payload, as JSON text (checked with [`validate_payload`]).
    pub payload: String,
    /// Lower runs first.
    pub priority: i32,
    /// When it becomes due.
    pub when: When,
    /// Attempts before it is finished as failed.
    pub max_attempts: i32,
    /// At most one unfinished execution per queue, task and key.
    pub dedupe_key: Option<String>,
    /// The execution whose handler enqueued this one.
    pub parent_execution_id: Option<Uuid>,
}

impl NewExecution {
    /// An execution of `task` on the default queue with an empty object as payload.
    pub fn new(task: impl Into<String>) -> Self {
        NewExecution {
            task: task.into(),
            queue: DEFAULT_QUEUE.to_string(),
            payload: "{}".to_string(),
            priority: 0,
            when: When::Now,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            dedupe_key: None,
            parent_execution_id: None,
        }
    }

    /// Checks every field; the error names the first one that is wrong.
    pub fn validate(&self) -> Result<()> {
        validate_name("task name", &self.task)?;
        validate_name("queue name", &self.queue)?;
        validate_payload(&self.payload)?;
        validate_max_attempts(self.max_attempts)?;
        validate_when(self.when)?;
        if let Some(k) = &self.dedupe_key {
            validate_dedupe_key(k)?;
        }
        Ok(())
    }
}

/// What [`enqueue`] stored.
#[derive(Debug, Clone, Serialize)]
pub struct Enqueued {
    /// The execution id (new, or the existing one when deduplicated).
    pub id: Uuid,
    /// Queue name.
    pub queue: String,
    /// Task name.
    pub task: String,
    /// The producer span's carrier as stored.
    pub traceparent: String,
    /// The tracestate as stored, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// The producer span's parent span id; null for a new trace.
    pub parent_span_id: Option<String>,
    /// The enqueuing execution, when run inside a task.
    pub parent_execution_id: Option<Uuid>,
    /// When it is due.
    pub run_at: DateTime<Utc>,
    /// True when an unfinished execution with the same dedupe key already existed and
    /// its id was returned instead.
    pub deduplicated: bool,
}

/// The `trace_context` document for a producer span:
/// `{"traceparent": "…", "tracestate": "…"}`, without `tracestate` when empty.
pub fn trace_context_json(traceparent: &TraceParent, tracestate: &TraceState) -> String {
    carrier_json(&traceparent.to_string(), tracestate)
}

/// [`trace_context_json`] of a traceparent already encoded.
fn carrier_json(traceparent: &str, tracestate: &TraceState) -> String {
    let mut out = String::with_capacity(96);
    out.push_str("{\"traceparent\":\"");
    out.push_str(traceparent);
    out.push('"');
    if !tracestate.is_empty() {
        out.push_str(",\"tracestate\":");
        out.push_str(&json_string(&tracestate.header()));
    }
    out.push('}');
    out
}

fn json_string(s: &str) -> String {
    // Serializing a &str cannot fail.
    serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""))
}

/// JSON text bound as a `json`/`jsonb` parameter without parsing it again.
#[derive(Debug)]
pub(crate) struct JsonText<'a>(pub &'a str);

impl ToSql for JsonText<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        if *ty == Type::JSONB {
            out.put_u8(1); // jsonb binary format version
        }
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    accepts!(JSON, JSONB);
    to_sql_checked!();
}

/// Enqueues one execution in one statement (row, trace context and `NOTIFY` together).
/// With a dedupe key that an unfinished execution already holds, returns that one.
pub async fn enqueue<C: GenericClient>(
    client: &C,
    new: &NewExecution,
    ctx: &ProducerContext,
) -> Result<Enqueued> {
    new.validate()?;
    let (run_at, delay_secs) = match new.when {
        When::Now => (None, 0.0),
        When::At(t) => (Some(t), 0.0),
        When::After(d) => (None, d.as_secs_f64()),
    };
    let trace_context = trace_context_json(&ctx.traceparent, &ctx.tracestate);
    let parent_span_id = ctx.parent_span_id.map(|s| s.to_string());
    // A finished holder can free the key between the insert and the lookup: try again.
    for _ in 0..3 {
        let id = Uuid::now_v7();
        let rows = client
            .query(
                sql::ENQUEUE,
                &[
                    &id,
                    &new.queue,
                    &new.task,
                    &JsonText(&new.payload),
                    &new.priority,
                    &run_at,
                    &delay_secs,
                    &new.max_attempts,
                    &new.dedupe_key,
                    &new.parent_execution_id,
                    &JsonText(&trace_context),
                    &parent_span_id,
                ],
            )
            .await?;
        if let Some(row) = rows.first() {
            return Ok(Enqueued {
                id: row.try_get(0)?,
                queue: new.queue.clone(),
                task: new.task.clone(),
                traceparent: ctx.traceparent.to_string(),
                tracestate: (!ctx.tracestate.is_empty()).then(|| ctx.tracestate.header()),
                parent_span_id,
                parent_execution_id: new.parent_execution_id,
                run_at: row.try_get(1)?,
                deduplicated: false,
            });
        }
        let rows = client
            .query(
                sql::ENQUEUE_DEDUPED,
                &[&new.queue, &new.task, &new.dedupe_key],
            )
            .await?;
        if let Some(row) = rows.first() {
            let stored: Option<serde_json::Value> = row.try_get(2)?;
            let field = |k: &str| {
                stored
                    .as_ref()
                    .and_then(|v| v.get(k))
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            };
            return Ok(Enqueued {
                id: row.try_get(0)?,
                queue: new.queue.clone(),
                task: new.task.clone(),
                traceparent: field("traceparent").unwrap_or_default(),
                tracestate: field("tracestate"),
                parent_span_id: row.try_get(3)?,
                parent_execution_id: new.parent_execution_id,
                run_at: row.try_get(1)?,
                deduplicated: true,
            });
        }
    }
    Err(Error::Contended(format!(
        "dedupe key {:?} kept changing hands; try again",
        new.dedupe_key.as_deref().unwrap_or_default()
    )))
}

/// Defaults and settings for [`batch`]; a line's own fields win over these.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Queue for lines without `queue`.
    pub queue: String,
    /// Priority for lines without `priority`.
    pub priority: i32,
    /// Max attempts for lines without `max_attempts`.
    pub max_attempts: i32,
    /// Due time for lines without `run_at`.
    pub when: When,
    /// The enqueuing execution, when run inside a task.
    pub parent_execution_id: Option<Uuid>,
    /// The caller's trace context: each row gets its own producer span in that trace,
    /// or a new trace of its own when there is none.
    pub incoming: Incoming,
    /// Commit every this many rows instead of once at the end (not all-or-nothing).
    pub commit_every: Option<u64>,
    /// Where each new execution's producer span and the sent-messages counts go, once
    /// the transaction that wrote them has committed (nowhere by default).
    pub telemetry: crate::telemetry::Hooks,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            queue: DEFAULT_QUEUE.to_string(),
            priority: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            when: When::Now,
            parent_execution_id: None,
            incoming: Incoming::Absent,
            commit_every: None,
            telemetry: crate::telemetry::Hooks::default(),
        }
    }
}

/// What a batch wrote.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchSummary {
    /// New executions written.
    pub enqueued: u64,
    /// Lines whose dedupe key an unfinished execution already held (nothing written).
    pub deduplicated: u64,
    /// Input lines read, blank ones included.
    pub lines: u64,
    /// New executions that got no live producer span because their transaction held
    /// more than [`MAX_BATCH_SPANS`] (only when spans are exported).
    #[serde(skip)]
    pub unspanned: u64,
    /// Input bytes read.
    pub bytes: u64,
}

/// How far a batch has got, for progress displays.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Rows handled so far.
    pub rows: u64,
    /// Input bytes read so far.
    pub bytes: u64,
}

/// One JSON Lines record.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(borrow)]
    task: Cow<'a, str>,
    // `"payload": null` stores JSON null, as `--payload null` does; only a missing
    // payload becomes `{}`.
    #[serde(borrow, default, deserialize_with = "present")]
    payload: Option<&'a RawValue>,
    #[serde(borrow, default)]
    queue: Option<Cow<'a, str>>,
    #[serde(default)]
    priority: Option<i32>,
    #[serde(borrow, default)]
    run_at: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    dedupe_key: Option<Cow<'a, str>>,
    #[serde(default)]
    max_attempts: Option<i32>,
}

fn present<'de, D>(d: D) -> std::result::Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&'de RawValue>::deserialize(d).map(Some)
}

const COPY_TYPES: [Type; 10] = [
    Type::UUID,
    Type::TEXT,
    Type::TEXT,
    Type::JSONB,
    Type::INT4,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::UUID,
    Type::JSONB,
    Type::TEXT,
];

const COPY_TRACEPARENT_TYPES: [Type; 2] = [Type::TEXT, Type::UUID];

/// Rows of a batch whose traceparent index entries are kept in memory before they are
/// written (a connection runs one COPY at a time, so the execution rows' COPY ends first).
const TRACEPARENTS_EVERY: usize = 10_000;

/// Ends the running COPY of execution rows, if any, and writes the traceparent index
/// rows of what it wrote.
async fn flush_copies(
    tx: &tokio_postgres::Transaction<'_>,
    copy: &mut Option<Pin<Box<BinaryCopyInWriter>>>,
    traceparents: &mut Vec<(String, Uuid)>,
) -> std::result::Result<(), tokio_postgres::Error> {
    if let Some(mut w) = copy.take() {
        w.as_mut().finish().await?;
    }
    if traceparents.is_empty() {
        return Ok(());
    }
    let sink = tx.copy_in(sql::BATCH_COPY_TRACEPARENTS).await?;
    let w = BinaryCopyInWriter::new(sink, &COPY_TRACEPARENT_TYPES);
    let mut w = std::pin::pin!(w);
    for (traceparent, id) in traceparents.drain(..) {
        w.as_mut().write(&[&traceparent, &id]).await?;
    }
    w.finish().await?;
    Ok(())
}

/// Producer spans a batch keeps per transaction until it commits; beyond them a
/// transaction's rows are counted but get no live span (use `commit_every` for more).
pub const MAX_BATCH_SPANS: usize = 100_000;

/// What one transaction of a batch wrote, for telemetry after its commit.
#[derive(Default)]
struct Written {
    /// New executions per queue.
    per_queue: std::collections::BTreeMap<String, u64>,
    /// Producer spans, when the telemetry wants them.
    spans: Vec<BatchSpan>,
    /// New executions past [`MAX_BATCH_SPANS`].
    unspanned: u64,
}

/// One new execution, for its producer span once the commit is known: what was
/// stored (less the tracestate, which the span does not carry), with the fields the
/// span adds and when its row was written.
struct BatchSpan {
    enqueued: Enqueued,
    priority: i32,
    max_attempts: i32,
    start: DateTime<Utc>,
}

impl Written {
    fn add(
        &mut self,
        id: Uuid,
        row: &Row<'_>,
        traceparent: &str,
        parent_span_id: Option<&str>,
        opts: &BatchOptions,
    ) {
        match self.per_queue.get_mut(row.queue.as_ref()) {
            Some(n) => *n += 1,
            None => {
                self.per_queue.insert(row.queue.to_string(), 1);
            }
        }
        if !opts.telemetry.wants_spans() {
            return;
        }
        if self.spans.len() >= MAX_BATCH_SPANS {
            self.unspanned += 1;
            return;
        }
        self.spans.push(BatchSpan {
            enqueued: Enqueued {
                id,
                queue: row.queue.to_string(),
                task: row.task.to_string(),
                traceparent: traceparent.to_string(),
                tracestate: None,
                parent_span_id: parent_span_id.map(str::to_string),
                parent_execution_id: opts.parent_execution_id,
                run_at: row.run_at,
                deduplicated: false,
            },
            priority: row.priority,
            max_attempts: row.max_attempts,
            start: Utc::now(),
        });
    }

    /// Reports the committed transaction's spans and counts; returns how many new
    /// executions got no span.
    fn report(self, opts: &BatchOptions) -> u64 {
        let telemetry = &opts.telemetry;
        let end = Utc::now();
        for s in &self.spans {
            if let Some((trace_id, span)) =
                crate::trace::enqueue_span(&s.enqueued, s.priority, s.max_attempts, s.start, end)
            {
                telemetry.span(&trace_id, &span);
            }
        }
        for (queue, count) in &self.per_queue {
            telemetry.event(&crate::telemetry::TelemetryEvent::Sent {
                queue,
                count: *count,
            });
        }
        self.unspanned
    }
}

/// How often the progress callback is called, in rows.
const PROGRESS_EVERY: u64 = 10_000;

/// Streams JSON Lines from `input` into the queue with `COPY`, in constant memory.
///
/// Each line is an object with `task` and optional `payload`, `queue`, `priority`,
/// `run_at` (RFC 3339), `dedupe_key`, `max_attempts`; blank lines are skipped. A line
/// with a dedupe key is inserted on its own so that an unfinished execution holding the
/// key makes it a no-op. Everything is one transaction unless
/// [`BatchOptions::commit_every`] is set; a malformed line is an error naming its line
/// number, and the transaction is rolled back.
pub async fn batch<R: AsyncBufRead + Unpin>(
    client: &mut Client,
    input: R,
    opts: &BatchOptions,
    progress: &mut dyn FnMut(Progress),
) -> std::result::Result<BatchSummary, BatchFailure> {
    let mut summary = BatchSummary::default();
    let mut state = Committed::default();
    match run_batch(client, input, opts, progress, &mut summary, &mut state).await {
        Ok(()) => Ok(summary),
        Err(error) => Err(BatchFailure {
            error,
            committed: state.rows,
            commit_uncertain: state.uncertain,
        }),
    }
}

/// Why a batch stopped, and what it had committed by then.
#[derive(Debug)]
pub struct BatchFailure {
    /// What went wrong.
    pub error: Error,
    /// Rows committed before it (only ever non-zero with `commit_every`).
    pub committed: u64,
    /// The connection broke during a commit: the last chunk may or may not be written.
    pub commit_uncertain: bool,
}

#[derive(Default)]
struct Committed {
    rows: u64,
    uncertain: bool,
}

/// Distinct queues a transaction remembers before sending their notifications early
/// (PostgreSQL folds repeats within a transaction), so memory stays bounded.
const MAX_PENDING_QUEUES: usize = 1000;

async fn run_batch<R: AsyncBufRead + Unpin>(
    client: &mut Client,
    mut input: R,
    opts: &BatchOptions,
    progress: &mut dyn FnMut(Progress),
    summary: &mut BatchSummary,
    committed: &mut Committed,
) -> Result<()> {
    validate_name("queue name", &opts.queue)?;
    validate_max_attempts(opts.max_attempts)?;
    validate_when(opts.when)?;
    let mut buf = Vec::with_capacity(4096);
    let mut eof = false;
    let commit_every = opts.commit_every.unwrap_or(u64::MAX).max(1);
    while !eof {
        let tx = client.transaction().await?;
        let now: DateTime<Utc> = tx.query_one(sql::NOW, &[]).await?.try_get(0)?;
        let default_run_at = match opts.when {
            When::Now => now,
            When::At(t) => t,
            When::After(d) => chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .ok_or_else(|| Error::invalid("delay reaches past the end of the calendar"))?,
        };
        let mut copy: Option<Pin<Box<BinaryCopyInWriter>>> = None;
        // The traceparent index rows of what `copy` wrote.
        let mut traceparents: Vec<(String, Uuid)> = Vec::new();
        // What this transaction wrote, reported once it commits.
        let mut written = Written::default();
        let mut queues: BTreeSet<String> = BTreeSet::new();
        let mut in_tx = 0u64;
        while in_tx < commit_every {
            buf.clear();
            let n = input.read_until(b'\n', &mut buf).await.map_err(|e| {
                Error::invalid(format!(
                    "could not read the batch input at line {}: {e}",
                    summary.lines + 1
                ))
            })?;
            if n == 0 {
                eof = true;
                break;
            }
            summary.lines += 1;
            summary.bytes += n as u64;
            let line_no = summary.lines;
            let mut text = std::str::from_utf8(&buf)
                .map_err(|_| Error::invalid(format!("line {line_no}: not valid UTF-8")))?;
            if line_no == 1 {
                text = text.strip_prefix('\u{feff}').unwrap_or(text); // a UTF-8 byte order mark
            }
            if text.trim().is_empty() {
                continue;
            }
            let row = parse_line(text, line_no, opts, default_run_at)?;
            let ctx = opts.incoming.child();
            let traceparent = ctx.traceparent.to_string();
            let trace_context = carrier_json(&traceparent, &ctx.tracestate);
            let parent_span_id = ctx.parent_span_id.map(|s| s.to_string());
            if !queues.contains(row.queue.as_ref()) {
                if queues.len() >= MAX_PENDING_QUEUES {
                    let list: Vec<String> = std::mem::take(&mut queues).into_iter().collect();
                    tx.execute(sql::NOTIFY_QUEUES, &[&list]).await?;
                }
                queues.insert(row.queue.to_string());
            }
            if let Some(key) = &row.dedupe_key {
                // COPY cannot skip conflicts: end the running COPY and insert this row
                // on its own, with ON CONFLICT DO NOTHING.
                flush_copies(&tx, &mut copy, &mut traceparents).await?;
                let id = Uuid::now_v7();
                let rows = tx
                    .query(
                        sql::ENQUEUE,
                        &[
                            &id,
                            &row.queue.as_ref(),
                            &row.task.as_ref(),
                            &JsonText(row.payload),
                            &row.priority,
                            &Some(row.run_at),
                            &0.0f64,
                            &row.max_attempts,
                            &key.as_ref(),
                            &opts.parent_execution_id,
                            &JsonText(&trace_context),
                            &parent_span_id,
                        ],
                    )
                    .await?;
                if rows.is_empty() {
                    summary.deduplicated += 1;
                } else {
                    summary.enqueued += 1;
                    written.add(id, &row, &traceparent, parent_span_id.as_deref(), opts);
                }
            } else {
                if traceparents.len() >= TRACEPARENTS_EVERY {
                    flush_copies(&tx, &mut copy, &mut traceparents).await?;
                }
                if copy.is_none() {
                    let sink = tx.copy_in(sql::BATCH_COPY).await?;
                    copy = Some(Box::pin(BinaryCopyInWriter::new(sink, &COPY_TYPES)));
                }
                if let Some(w) = copy.as_mut() {
                    let id = Uuid::now_v7();
                    written.add(id, &row, &traceparent, parent_span_id.as_deref(), opts);
                    traceparents.push((traceparent, id));
                    w.as_mut()
                        .write(&[
                            &id,
                            &row.queue.as_ref(),
                            &row.task.as_ref(),
                            &JsonText(row.payload),
                            &row.priority,
                            &row.run_at,
                            &row.max_attempts,
                            &opts.parent_execution_id,
                            &JsonText(&trace_context),
                            &parent_span_id,
                        ])
                        .await?;
                }
                summary.enqueued += 1;
            }
            in_tx += 1;
            if (summary.enqueued + summary.deduplicated) % PROGRESS_EVERY == 0 {
                progress(Progress {
                    rows: summary.enqueued + summary.deduplicated,
                    bytes: summary.bytes,
                });
            }
        }
        flush_copies(&tx, &mut copy, &mut traceparents).await?;
        if !queues.is_empty() {
            let list: Vec<String> = queues.into_iter().collect();
            tx.execute(sql::NOTIFY_QUEUES, &[&list]).await?;
        }
        if let Err(e) = tx.commit().await {
            committed.uncertain = e.is_closed();
            return Err(e.into());
        }
        committed.rows = summary.enqueued;
        summary.unspanned += written.report(opts);
    }
    progress(Progress {
        rows: summary.enqueued + summary.deduplicated,
        bytes: summary.bytes,
    });
    Ok(())
}

struct Row<'a> {
    task: Cow<'a, str>,
    queue: Cow<'a, str>,
    payload: &'a str,
    priority: i32,
    run_at: DateTime<Utc>,
    max_attempts: i32,
    dedupe_key: Option<Cow<'a, str>>,
}

fn parse_line<'a>(
    text: &'a str,
    line_no: u64,
    opts: &'a BatchOptions,
    default_run_at: DateTime<Utc>,
) -> Result<Row<'a>> {
    let at = |e: Error| Error::invalid(format!("line {line_no}: {e}"));
    // serde would read an array as the record's fields in order, and name the record's
    // Rust type for a string or a number: say what a line must be instead.
    if !text.trim_start().starts_with('{') {
        let what = match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Array(_)) => "an array",
            Ok(serde_json::Value::String(_)) => "a string",
            Ok(serde_json::Value::Number(_)) => "a number",
            Ok(serde_json::Value::Bool(_)) => "a boolean",
            Ok(_) => "null",
            Err(e) => {
                let e = describe_json_error(&e);
                return Err(Error::invalid(format!("line {line_no}: {e}")));
            }
        };
        return Err(Error::invalid(format!(
            "line {line_no}: expected a JSON object with a \"task\", found {what}"
        )));
    }
    let line: Line<'a> = serde_json::from_str(text)
        .map_err(|e| Error::invalid(format!("line {line_no}: {}", describe_json_error(&e))))?;
    validate_name("task name", &line.task).map_err(at)?;
    let queue = match line.queue {
        Some(q) => {
            validate_name("queue name", &q).map_err(at)?;
            q
        }
        None => Cow::Borrowed(opts.queue.as_str()),
    };
    let payload = match line.payload {
        Some(p) => {
            jsonb::check(p.get())
                .map_err(|e| Error::invalid(format!("line {line_no}: payload {e}")))?;
            p.get()
        }
        None => "{}",
    };
    let max_attempts = line.max_attempts.unwrap_or(opts.max_attempts);
    validate_max_attempts(max_attempts).map_err(at)?;
    let run_at = match line.run_at {
        Some(s) => parse_rfc3339(&s).map_err(at)?,
        None => default_run_at,
    };
    if let Some(k) = &line.dedupe_key {
        validate_dedupe_key(k).map_err(at)?;
    }
    Ok(Row {
        task: line.task,
        queue,
        payload,
        priority: line.priority.unwrap_or(opts.priority),
        run_at,
        max_attempts,
        dedupe_key: line.dedupe_key,
    })
}

fn describe_json_error(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde_json appends " at line 1 column N"; the line is ours to name.
    match text.rfind(" at line ") {
        Some(i) => format!("{} (column {})", &text[..i], e.column()),
        None => text,
    }
}

/// Parses an RFC 3339 timestamp (`2026-11-28T10:00:00Z`, `…+01:00`).
pub fn parse_rfc3339(s: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            Error::invalid(format!(
                "invalid time {s:?}: {e} (expected RFC 3339, e.g. 2026-01-31T09:30:00Z)"
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_allow_the_documented_characters_only() {
        assert!(validate_name("task name", "build-report.v2:eu_1").is_ok());
        assert!(validate_name("task name", &"a".repeat(128)).is_ok());
        assert!(validate_name("task name", &"a".repeat(129)).is_err());
        assert!(validate_name("task name", "").is_err());
        assert!(validate_name("task name", "has space").is_err());
        assert!(validate_name("task name", "é").is_err());
        assert!(validate_name("queue name", "a/b").is_err());
    }

    #[test]
    fn payload_must_be_one_json_value_jsonb_can_store() {
        assert_eq!(validate_payload(" {\"a\":1} ").unwrap(), "{\"a\":1}");
        assert!(validate_payload("[1,2]").is_ok());
        assert!(validate_payload("\"text\"").is_ok());
        assert!(validate_payload("{").is_err());
        assert!(validate_payload("{} {}").is_err());
        assert!(validate_payload("").is_err());
        assert!(validate_payload(r#"{"a":"\u0000"}"#).is_err());
        // An escaped backslash before u0000 is not a NUL.
        assert!(validate_payload(r#"{"a":"\\u0000"}"#).is_ok());
    }

    #[test]
    fn trace_context_omits_empty_tracestate_and_escapes_it() {
        let tp =
            TraceParent::parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            trace_context_json(&tp, &TraceState::default()),
            r#"{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#
        );
        let ts = TraceState::parse("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").unwrap();
        let doc: serde_json::Value = serde_json::from_str(&trace_context_json(&tp, &ts)).unwrap();
        assert_eq!(doc["tracestate"], "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    }

    #[test]
    fn batch_line_errors_name_the_line() {
        let opts = BatchOptions::default();
        let now = Utc::now();
        let err = |s: &str| parse_line(s, 7, &opts, now).err().unwrap().to_string();
        assert!(err("{\"task\":").starts_with("line 7: "));
        assert!(err("{\"payload\":{}}").contains("missing field `task`"));
        assert!(err("{\"task\":\"t\",\"bogus\":1}").contains("unknown field `bogus`"));
        assert!(err("{\"task\":\"t\",\"max_attempts\":0}").contains("at least 1"));
        assert!(err("{\"task\":\"t\",\"run_at\":\"tomorrow\"}").contains("RFC 3339"));
        assert!(err("{\"task\":\"bad name\"}").contains("task name"));
        let row = parse_line(
            r#"{"task":"t","queue":"q","payload":[1],"priority":-5,"run_at":"2030-01-01T00:00:00+01:00"}"#,
            1,
            &opts,
            now,
        )
        .unwrap();
        assert_eq!(row.queue, "q");
        assert_eq!(row.payload, "[1]");
        assert_eq!(row.priority, -5);
        assert_eq!(row.run_at.to_rfc3339(), "2029-12-31T23:00:00+00:00");
        assert_eq!(row.max_attempts, DEFAULT_MAX_ATTEMPTS);
    }
}
