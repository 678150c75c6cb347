//! Rebuilding a whole trace from the queue's rows: the spans, their tree, and the
//! documents scripts read (JSON, OTLP/JSON).
//!
//! Every execution contributes one producer span (its enqueue, whose carrier is stored in
//! `trace_context`), one consumer span per attempt (the current one on the row, earlier
//! ones in `_private_attempts`) and one internal span per step run. Span ids are the
//! stored ones, which are the ids handlers got in `TRACEPARENT`, so a rebuilt span is the
//! same span live telemetry reports. A parent that is not in the database (the caller's
//! span, such as a CI job's) stays the parent; the tree shows it as a remote root.

mod otlp;
#[cfg(feature = "otel")]
mod sdk;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::sql;
use crate::traceparent::{SpanId, TraceParent};

#[cfg(feature = "otel")]
pub(crate) use otlp::parse_resource_attributes;
pub use otlp::{Resource, otlp_json};
#[cfg(feature = "otel")]
pub(crate) use sdk::wire;
#[cfg(feature = "otel")]
pub use sdk::{
    AttemptHead, encode_attempt_span, encode_proto_span, span_data, to_proto_span, to_span_data,
};

use crate::idmap::{FastMap, FastSet};

/// What to rebuild the trace from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// The trace this execution belongs to.
    Execution(Uuid),
    /// A trace id: 32 lower-case hex digits, not all zeros (see [`parse_trace_id`]).
    TraceId(String),
}

/// Checks a trace id given on the command line: 32 hex digits, not all zeros.
/// Upper-case digits are accepted and lowered (ids are often pasted from other tools).
pub fn parse_trace_id(s: &str) -> Result<String, String> {
    let id = s.trim().to_ascii_lowercase();
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{s:?} is not a trace id (32 hex digits)"));
    }
    if id.bytes().all(|b| b == b'0') {
        return Err(format!("{s:?} is not a trace id: all zeros is invalid"));
    }
    Ok(id)
}

/// The kind of a rebuilt span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SpanKind {
    /// An enqueue.
    Producer,
    /// An attempt.
    Consumer,
    /// A step inside an attempt.
    Internal,
}

impl SpanKind {
    /// `producer`, `consumer` or `internal`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
            SpanKind::Internal => "internal",
        }
    }
}

/// The status of a rebuilt span, as OpenTelemetry defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanStatus {
    /// Nothing to report (an enqueue, a released or still running attempt).
    Unset,
    /// Completed.
    Ok,
    /// Failed; the span's `status_message` says why.
    Error,
}

impl SpanStatus {
    /// `unset`, `ok` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            SpanStatus::Unset => "unset",
            SpanStatus::Ok => "ok",
            SpanStatus::Error => "error",
        }
    }
}

/// An attribute value, borrowed from its span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrValue<'a> {
    /// A string.
    Str(&'a str),
    /// An id, written as a string.
    Uuid(Uuid),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

/// The execution a span belongs to, shared by all its spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Execution {
    /// Its id (the message id).
    pub id: Uuid,
    /// Its task.
    pub task: String,
    /// Its queue.
    pub queue: String,
    /// Its status: `pending`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// Its priority.
    pub priority: i32,
    /// Its attempt limit.
    pub max_attempts: i32,
    /// The execution whose attempt enqueued it.
    pub parent_execution_id: Option<Uuid>,
    /// The trace flags of its stored traceparent.
    pub flags: u8,
}

/// One span rebuilt from the rows.
#[derive(Debug, Clone)]
pub struct Span {
    /// 16 lower-case hex digits.
    pub span_id: String,
    /// The parent's span id; `None` only for a true root (an enqueue that started a new
    /// trace).
    pub parent_span_id: Option<String>,
    /// The parent is not in the database (the caller's span, such as a CI job's).
    pub parent_is_remote: bool,
    /// The W3C trace flags stored with the execution's traceparent (`01`: sampled).
    pub flags: u8,
    /// `conductor.invoke`, `task:<task>` or `task.step:<name>`.
    pub name: String,
    /// Producer, consumer or internal.
    pub kind: SpanKind,
    /// When it started.
    pub start: DateTime<Utc>,
    /// When it ended; `None` while it is still running.
    pub end: Option<DateTime<Utc>>,
    /// Consumer spans: since when the execution waited in the queue before this attempt
    /// started. Producer spans of pending executions: since when it has been waiting.
    pub waiting_since: Option<DateTime<Utc>>,
    /// OpenTelemetry status.
    pub status: SpanStatus,
    /// Why it failed (or was released).
    pub status_message: Option<String>,
    /// pgc's word for how it ended: `enqueued`, `pending` or `cancelled` (producer: the
    /// execution is still waiting, or was cancelled before it ran), `completed`,
    /// `failed`, `timed_out`, `lost`, `released`, `cancelled`, `running` (attempts),
    /// `completed` or `failed` (steps).
    pub outcome: &'static str,
    /// The execution the span belongs to.
    pub execution: Arc<Execution>,
    /// The attempt number (attempts and steps).
    pub attempt: Option<i32>,
    /// A step's exit code.
    pub exit_code: Option<i32>,
    /// Span ids of linked spans in the same trace (an attempt links to its enqueue).
    pub links: Vec<String>,
}

impl Span {
    /// Still running: an attempt or step without an end.
    pub fn in_progress(&self) -> bool {
        self.end.is_none()
    }

    /// The span's attributes: the messaging conventions (`messaging.*`) on enqueues and
    /// attempts, and pgc's own under `pgconductor.*`.
    pub fn attributes(&self) -> Vec<(&'static str, AttrValue<'_>)> {
        let e = &*self.execution;
        let mut a = Vec::with_capacity(12);
        match self.kind {
            SpanKind::Producer | SpanKind::Consumer => {
                a.push(("messaging.system", AttrValue::Str("pgconductor")));
                let operation = if self.kind == SpanKind::Producer {
                    "send"
                } else {
                    "process"
                };
                a.push(("messaging.operation.type", AttrValue::Str(operation)));
                a.push(("messaging.destination.name", AttrValue::Str(&e.queue)));
            }
            SpanKind::Internal => {
                let step = self.name.strip_prefix("task.step:").unwrap_or(&self.name);
                a.push(("pgconductor.step.name", AttrValue::Str(step)));
            }
        }
        // Those above and these two are the same for every attempt of a queue's task (a
        // worker encodes them once: see `sdk::AttemptHead`).
        a.push(("pgconductor.task", AttrValue::Str(&e.task)));
        a.push(("pgconductor.queue", AttrValue::Str(&e.queue)));
        if self.kind != SpanKind::Internal {
            a.push(("messaging.message.id", AttrValue::Uuid(e.id)));
        }
        a.push(("pgconductor.execution_id", AttrValue::Uuid(e.id)));
        if let (Some(parent), false) = (e.parent_execution_id, self.kind == SpanKind::Internal) {
            a.push(("pgconductor.parent_execution_id", AttrValue::Uuid(parent)));
        }
        match self.kind {
            SpanKind::Producer => {
                a.push(("pgconductor.priority", AttrValue::Int(e.priority.into())));
                a.push((
                    "pgconductor.max_attempts",
                    AttrValue::Int(e.max_attempts.into()),
                ));
            }
            SpanKind::Consumer => {
                if let Some(n) = self.attempt {
                    a.push(("pgconductor.attempt", AttrValue::Int(n.into())));
                }
                a.push(("pgconductor.attempt.outcome", AttrValue::Str(self.outcome)));
            }
            SpanKind::Internal => {
                if let Some(n) = self.attempt {
                    a.push(("pgconductor.attempt", AttrValue::Int(n.into())));
                }
                if let Some(code) = self.exit_code {
                    a.push(("pgconductor.step.exit_code", AttrValue::Int(code.into())));
                }
            }
        }
        if self.status == SpanStatus::Error {
            a.push(("error.type", AttrValue::Str(self.outcome)));
        }
        a
    }
}

/// Where a row of the tree sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRef {
    /// A span of the trace (an index into [`Trace::spans`]).
    Span(usize),
    /// A parent span that is not in the database (the caller's), by its span id.
    Remote(String),
}

/// One row of the tree, in depth-first order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// What the row shows.
    pub what: NodeRef,
    /// For each ancestor level below the roots, whether a later sibling follows at that
    /// level (draw a vertical guide there); the last entry is this node's own level.
    pub guides: Vec<bool>,
}

impl Node {
    /// 0 for a root.
    pub fn depth(&self) -> usize {
        self.guides.len()
    }
}

/// A rebuilt trace.
#[derive(Debug, Clone)]
pub struct Trace {
    /// 32 lower-case hex digits.
    pub trace_id: String,
    /// The execution `pgc trace ID` asked for.
    pub requested: Option<Uuid>,
    /// The database's clock when the rows were read (the end of what is still running).
    pub now: DateTime<Utc>,
    /// Every span, in tree order.
    pub spans: Vec<Span>,
    /// The tree, depth first: children in start order.
    pub nodes: Vec<Node>,
    /// How many executions the trace holds.
    pub executions: usize,
    /// Things in the rows that could not be shown as stored.
    pub warnings: Vec<String>,
}

/// One execution row, as read.
struct ExecRow {
    id: Uuid,
    queue: String,
    task: String,
    status: String,
    priority: i32,
    attempts: i32,
    max_attempts: i32,
    parent_execution_id: Option<Uuid>,
    traceparent: Option<String>,
    parent_span_id: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    attempt_span_id: Option<String>,
    finished_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
}

impl ExecRow {
    fn read(row: &Row) -> Result<ExecRow> {
        Ok(ExecRow {
            id: row.try_get(0)?,
            queue: row.try_get(1)?,
            task: row.try_get(2)?,
            status: row.try_get(3)?,
            priority: row.try_get(4)?,
            attempts: row.try_get(5)?,
            max_attempts: row.try_get(6)?,
            parent_execution_id: row.try_get(7)?,
            traceparent: row.try_get(8)?,
            // 9: tracestate, not part of the rebuilt spans.
            parent_span_id: row.try_get(10)?,
            created_at: row.try_get(11)?,
            started_at: row.try_get(12)?,
            attempt_span_id: row.try_get(13)?,
            finished_at: row.try_get(14)?,
            last_error: row.try_get(15)?,
        })
    }
}

/// An earlier attempt, as read.
struct AttemptRow {
    execution_id: Uuid,
    attempt: i32,
    span_id: String,
    started_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    outcome: String,
    error: Option<String>,
}

impl AttemptRow {
    fn read(row: &Row) -> Result<AttemptRow> {
        Ok(AttemptRow {
            execution_id: row.try_get(0)?,
            attempt: row.try_get(1)?,
            span_id: row.try_get(2)?,
            started_at: row.try_get(3)?,
            finished_at: row.try_get(4)?,
            outcome: row.try_get(5)?,
            error: row.try_get(6)?,
        })
    }
}

/// A step run, as read.
struct StepRow {
    execution_id: Uuid,
    attempt: i32,
    name: String,
    span_id: String,
    status: String,
    exit_code: Option<i32>,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
}

impl StepRow {
    fn read(row: &Row) -> Result<StepRow> {
        Ok(StepRow {
            execution_id: row.try_get(0)?,
            attempt: row.try_get(1)?,
            name: row.try_get(2)?,
            span_id: row.try_get(3)?,
            status: row.try_get(4)?,
            exit_code: row.try_get(5)?,
            started_at: row.try_get(6)?,
            finished_at: row.try_get(7)?,
        })
    }
}

/// Reads the rows of the trace `lookup` names, in one snapshot, and rebuilds it.
///
/// Errors: [`Error::NotFound`] when no execution has the id, [`Error::TraceNotFound`]
/// when no execution belongs to the trace id.
pub async fn load(client: &Client, lookup: &Lookup) -> Result<Trace> {
    client.batch_execute(sql::TRACE_SNAPSHOT).await?;
    let loaded = read_rows(client, lookup).await;
    // Read only: ending the snapshot cannot lose anything, so its error is secondary.
    let ended = client.batch_execute("commit").await;
    let (trace_id, requested, now, execs, attempts, steps, mut warnings) = loaded?;
    ended?;
    let mut trace = build(
        trace_id,
        requested,
        now,
        execs,
        attempts,
        steps,
        &mut warnings,
    );
    trace.warnings = warnings;
    Ok(trace)
}

type Rows = (
    String,
    Option<Uuid>,
    DateTime<Utc>,
    Vec<ExecRow>,
    Vec<AttemptRow>,
    Vec<StepRow>,
    Vec<String>,
);

async fn read_rows(client: &Client, lookup: &Lookup) -> Result<Rows> {
    let now: DateTime<Utc> = client.query_one(sql::NOW, &[]).await?.try_get(0)?;
    let mut warnings = Vec::new();
    let (trace_id, requested) = match lookup {
        Lookup::TraceId(t) => (t.clone(), None),
        Lookup::Execution(id) => {
            let row = client
                .query_opt(sql::TRACE_EXECUTION, &[id])
                .await?
                .ok_or(Error::NotFound(*id))?;
            let exec = ExecRow::read(&row)?;
            match producer_context(&exec) {
                Ok(tp) => (tp.trace_id.to_string(), Some(*id)),
                Err(why) => {
                    // Its trace cannot be found: show the execution alone, as its own root.
                    warnings.push(format!(
                        "execution {id} has {why}: it is shown on its own, as a root, under a stand-in trace id"
                    ));
                    let attempts = client.query(sql::TRACE_ATTEMPTS_OF, &[id]).await?;
                    let steps = client.query(sql::TRACE_STEPS_OF, &[id]).await?;
                    return Ok((
                        id.simple().to_string(),
                        Some(*id),
                        now,
                        vec![exec],
                        read_all(&attempts, AttemptRow::read)?,
                        read_all(&steps, StepRow::read)?,
                        warnings,
                    ));
                }
            }
        }
    };
    let (low, high) = sql::trace_id_range(&trace_id);
    // Pipelined: the server runs the next statement while this side decodes rows.
    let range: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&low, &high];
    let (execs, attempts, steps) = tokio::try_join!(
        client.query(sql::TRACE_EXECUTIONS, &range),
        client.query(sql::TRACE_ATTEMPTS, &range),
        client.query(sql::TRACE_STEPS, &range),
    )?;
    if execs.is_empty() {
        return Err(Error::TraceNotFound(trace_id));
    }
    Ok((
        trace_id,
        requested,
        now,
        read_all(&execs, ExecRow::read)?,
        read_all(&attempts, AttemptRow::read)?,
        read_all(&steps, StepRow::read)?,
        warnings,
    ))
}

fn read_all<T>(rows: &[Row], f: fn(&Row) -> Result<T>) -> Result<Vec<T>> {
    rows.iter().map(f).collect()
}

/// The execution's producer context, or why it has none.
fn producer_context(exec: &ExecRow) -> Result<TraceParent, String> {
    let Some(tp) = exec.traceparent.as_deref() else {
        return Err("no traceparent in its trace context".into());
    };
    TraceParent::parse(tp).map_err(|e| format!("a malformed stored traceparent {tp:?} ({e})"))
}

/// A stand-in span id for a span whose stored id cannot be used: the last 16 hex digits
/// of the execution id (random in a UUID v7) for its enqueue, mixed with `seq` for its
/// other spans; never all zeros.
fn stand_in_span_id(id: Uuid, seq: u64) -> String {
    let low = u64::from_be_bytes(id.as_bytes()[8..].try_into().unwrap_or([0; 8]));
    let mixed = low ^ seq.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("{:016x}", if mixed == 0 { 1 } else { mixed })
}

/// A usable stored span id: 16 lower-case hex digits, not all zeros (W3C `parent-id`).
fn valid_span_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s.bytes().any(|b| b != b'0')
}

/// pgc's word for a final failure kept on the row, from the error pgc wrote: the row has
/// no outcome column, and pgc's own messages say which it was.
fn final_failure(last_error: Option<&str>) -> &'static str {
    match last_error {
        Some(e) if e.starts_with("lease expired") => "lost",
        Some(e) if e.starts_with("timed out after") => "timed_out",
        _ => "failed",
    }
}

/// Checks the span ids stored for one execution, replacing unusable ones (and saying so).
struct IdCheck<'a> {
    execution: Uuid,
    warnings: &'a mut Vec<String>,
    seq: u64,
}

impl IdCheck<'_> {
    /// `id` when usable, else a stand-in.
    fn span(&mut self, id: &str, what: &str) -> String {
        self.seq += 1;
        if valid_span_id(id) {
            return id.to_string();
        }
        let stand_in = stand_in_span_id(self.execution, self.seq);
        self.warnings.push(format!(
            "execution {} has {what} with a malformed span id {id:?}: shown as {stand_in}",
            self.execution
        ));
        stand_in
    }

    /// The stored parent span id when usable; `None` (a root) otherwise.
    fn parent(&mut self, id: Option<&str>) -> Option<String> {
        let id = id?;
        if valid_span_id(id) {
            return Some(id.to_string());
        }
        self.warnings.push(format!(
            "execution {} has a malformed parent span id {id:?}: shown as a root",
            self.execution
        ));
        None
    }
}

/// Builds the spans of every execution, then the tree.
fn build(
    trace_id: String,
    requested: Option<Uuid>,
    now: DateTime<Utc>,
    mut execs: Vec<ExecRow>,
    attempts: Vec<AttemptRow>,
    steps: Vec<StepRow>,
    warnings: &mut Vec<String>,
) -> Trace {
    execs.sort_by_key(|e| (e.created_at, e.id));
    let mut history: FastMap<Uuid, Vec<AttemptRow>> = FastMap::default();
    for a in attempts {
        history.entry(a.execution_id).or_default().push(a);
    }
    let mut step_rows: FastMap<Uuid, Vec<StepRow>> = FastMap::default();
    for s in steps {
        step_rows.entry(s.execution_id).or_default().push(s);
    }
    let mut spans = Vec::with_capacity(execs.len() * 2);
    for exec in &execs {
        let (producer_id, readable, flags) = match producer_context(exec) {
            Ok(tp) if tp.trace_id.to_string() == trace_id => {
                (tp.parent_id.to_string(), true, tp.flags.defined().to_u8())
            }
            parsed => {
                // An execution shown on its own was warned about when it was read.
                if trace_id != exec.id.simple().to_string() {
                    let why = match parsed {
                        Ok(tp) => format!("a traceparent of another trace ({})", tp.trace_id),
                        Err(why) => why,
                    };
                    warnings.push(format!(
                        "execution {} has {why}: shown as a root under a stand-in span id",
                        exec.id
                    ));
                }
                (stand_in_span_id(exec.id, 0), false, 1)
            }
        };
        let mut ids = IdCheck {
            execution: exec.id,
            warnings: &mut *warnings,
            seq: 0,
        };
        let execution = Arc::new(Execution {
            id: exec.id,
            task: exec.task.clone(),
            queue: exec.queue.clone(),
            status: exec.status.clone(),
            priority: exec.priority,
            max_attempts: exec.max_attempts,
            parent_execution_id: exec.parent_execution_id,
            flags,
        });
        let mut attempts = history.remove(&exec.id).unwrap_or_default();
        attempts.sort_by_key(|a| (a.started_at, a.attempt));
        let consumers_from = spans.len() + 1;
        let parent_span_id = if readable {
            ids.parent(exec.parent_span_id.as_deref())
        } else {
            None
        };
        spans.push(producer_span(
            exec,
            &execution,
            &producer_id,
            parent_span_id,
            &attempts,
            now,
        ));
        let mut waiting_since = exec.created_at;
        for a in &attempts {
            let (status, outcome) = match a.outcome.as_str() {
                "released" => (SpanStatus::Unset, "released"),
                "timed_out" => (SpanStatus::Error, "timed_out"),
                "lost" => (SpanStatus::Error, "lost"),
                _ => (SpanStatus::Error, "failed"),
            };
            spans.push(consumer_span(
                &execution,
                &producer_id,
                ConsumerParts {
                    span_id: ids.span(&a.span_id, "an attempt"),
                    attempt: a.attempt,
                    start: a.started_at,
                    end: Some(a.finished_at.unwrap_or(a.started_at)),
                    waiting_since,
                    status,
                    message: a.error.clone(),
                    outcome,
                },
            ));
            waiting_since = a.finished_at.unwrap_or(a.started_at);
        }
        if let (Some(span_id), Some(start)) = (&exec.attempt_span_id, exec.started_at) {
            let (status, message, outcome, end) = match exec.status.as_str() {
                "completed" => (SpanStatus::Ok, None, "completed", exec.finished_at),
                "failed" => (
                    SpanStatus::Error,
                    exec.last_error.clone(),
                    final_failure(exec.last_error.as_deref()),
                    exec.finished_at,
                ),
                "cancelled" => (
                    SpanStatus::Error,
                    exec.last_error.clone().or_else(|| Some("cancelled".into())),
                    "cancelled",
                    exec.finished_at,
                ),
                _ => (SpanStatus::Unset, None, "running", None),
            };
            spans.push(consumer_span(
                &execution,
                &producer_id,
                ConsumerParts {
                    span_id: ids.span(span_id, "its attempt"),
                    attempt: exec.attempts,
                    start,
                    end: end.map(|e| e.max(start)),
                    waiting_since,
                    status,
                    message,
                    outcome,
                },
            ));
        }
        // A step hangs under the attempt with its number that had started by then (a
        // released attempt and the next one share a number), else the nearest one.
        let consumers = consumers_from..spans.len();
        let mut runs = step_rows.remove(&exec.id).unwrap_or_default();
        runs.sort_by_key(|s| s.started_at);
        for mut s in runs {
            let candidates = spans[consumers.clone()]
                .iter()
                .filter(|c| c.attempt == Some(s.attempt));
            let parent = candidates
                .clone()
                .filter(|c| c.start <= s.started_at)
                .max_by_key(|c| c.start)
                .or_else(|| candidates.min_by_key(|c| (c.start - s.started_at).abs()))
                .map(|c| c.span_id.clone());
            let parent = parent.unwrap_or_else(|| {
                ids.warnings.push(format!(
                    "step {:?} of execution {} names attempt {}, which has no span: shown under the enqueue",
                    s.name, exec.id, s.attempt
                ));
                producer_id.clone()
            });
            s.span_id = ids.span(&s.span_id, "a step");
            spans.push(step_span(&execution, parent, s));
        }
    }
    let (spans, nodes) = tree(spans, warnings);
    Trace {
        trace_id,
        requested,
        now,
        executions: execs.len(),
        spans,
        nodes,
        warnings: Vec::new(),
    }
}

fn producer_span(
    exec: &ExecRow,
    execution: &Arc<Execution>,
    span_id: &str,
    parent_span_id: Option<String>,
    attempts: &[AttemptRow],
    now: DateTime<Utc>,
) -> Span {
    // Pending and not running: waiting since it was enqueued or since its last attempt.
    let waiting_since = (exec.status == "pending" && exec.attempt_span_id.is_none()).then(|| {
        attempts
            .iter()
            .filter_map(|a| a.finished_at)
            .max()
            .unwrap_or(exec.created_at)
            .min(now)
    });
    let outcome = if waiting_since.is_some() {
        "pending"
    } else if exec.status == "cancelled" && exec.attempt_span_id.is_none() {
        "cancelled"
    } else {
        "enqueued"
    };
    Span {
        span_id: span_id.to_string(),
        parent_span_id,
        parent_is_remote: false,
        flags: execution.flags,
        name: "conductor.invoke".into(),
        kind: SpanKind::Producer,
        start: exec.created_at,
        end: Some(exec.created_at),
        waiting_since,
        status: SpanStatus::Unset,
        status_message: None,
        outcome,
        execution: Arc::clone(execution),
        attempt: None,
        exit_code: None,
        links: Vec::new(),
    }
}

struct ConsumerParts {
    span_id: String,
    attempt: i32,
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    waiting_since: DateTime<Utc>,
    status: SpanStatus,
    message: Option<String>,
    outcome: &'static str,
}

fn consumer_span(execution: &Arc<Execution>, producer_id: &str, p: ConsumerParts) -> Span {
    Span {
        span_id: p.span_id,
        parent_span_id: Some(producer_id.to_string()),
        parent_is_remote: false,
        flags: execution.flags,
        name: format!("task:{}", execution.task),
        kind: SpanKind::Consumer,
        start: p.start,
        end: p.end,
        waiting_since: Some(p.waiting_since.min(p.start)),
        status: p.status,
        status_message: p.message,
        outcome: p.outcome,
        execution: Arc::clone(execution),
        attempt: Some(p.attempt),
        exit_code: None,
        links: vec![producer_id.to_string()],
    }
}

fn step_span(execution: &Arc<Execution>, parent: String, s: StepRow) -> Span {
    let (status, message, outcome) = if s.status == "completed" {
        (SpanStatus::Ok, None, "completed")
    } else {
        let why = match s.exit_code {
            Some(code) => format!("step failed with exit code {code}"),
            None => "step failed".to_string(),
        };
        (SpanStatus::Error, Some(why), "failed")
    };
    Span {
        span_id: s.span_id,
        parent_span_id: Some(parent),
        parent_is_remote: false,
        flags: execution.flags,
        name: format!("task.step:{}", s.name),
        kind: SpanKind::Internal,
        start: s.started_at,
        end: Some(s.finished_at.max(s.started_at)),
        waiting_since: None,
        status,
        status_message: message,
        outcome,
        execution: Arc::clone(execution),
        attempt: Some(s.attempt),
        exit_code: s.exit_code,
        links: Vec::new(),
    }
}

/// Orders the spans depth first (children by start time, then kind) and lays out the
/// tree. Spans whose parent is not in the trace hang under a remote root per parent id;
/// spans caught in a parent cycle (only possible in hand-edited rows) become roots.
fn tree(mut spans: Vec<Span>, warnings: &mut Vec<String>) -> (Vec<Span>, Vec<Node>) {
    let remote_parent: Vec<bool> = {
        let ids: FastSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        spans
            .iter()
            .map(|s| {
                s.parent_span_id
                    .as_deref()
                    .is_some_and(|p| !ids.contains(p))
            })
            .collect()
    };
    for (s, remote) in spans.iter_mut().zip(remote_parent) {
        s.parent_is_remote = remote;
    }
    let mut index: FastMap<&str, usize> =
        FastMap::with_capacity_and_hasher(spans.len(), Default::default());
    for (i, s) in spans.iter().enumerate() {
        if index.insert(s.span_id.as_str(), i).is_some() {
            warnings.push(format!(
                "span id {} appears more than once in the rows",
                s.span_id
            ));
        }
    }
    let key = |i: &usize| (spans[*i].start, spans[*i].kind, *i);
    let mut children: FastMap<usize, Vec<usize>> = FastMap::default();
    let mut remote: FastMap<&str, Vec<usize>> = FastMap::default();
    let mut roots: Vec<usize> = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        match s.parent_span_id.as_deref() {
            None => roots.push(i),
            Some(p) => match index.get(p) {
                Some(&parent) if parent != i => children.entry(parent).or_default().push(i),
                Some(_) => roots.push(i),
                None => remote.entry(p).or_default().push(i),
            },
        }
    }
    for list in children.values_mut() {
        list.sort_by_key(key);
    }
    // Top level: true roots and remote parents, by the start of what hangs under them.
    enum Top<'a> {
        Root(usize),
        Remote(&'a str, Vec<usize>),
    }
    let mut top: Vec<(DateTime<Utc>, Top)> = roots
        .into_iter()
        .map(|i| (spans[i].start, Top::Root(i)))
        .collect();
    for (id, mut list) in remote {
        list.sort_by_key(key);
        top.push((spans[list[0]].start, Top::Remote(id, list)));
    }
    top.sort_by_key(|t| t.0);

    type Raw = Vec<(Option<String>, Option<usize>, Vec<bool>)>;
    fn walk(
        start: usize,
        guides: Vec<bool>,
        children: &FastMap<usize, Vec<usize>>,
        seen: &mut [bool],
        out: &mut Raw,
    ) {
        let mut stack = vec![(start, guides)];
        while let Some((i, guides)) = stack.pop() {
            if seen[i] {
                continue;
            }
            seen[i] = true;
            if let Some(kids) = children.get(&i) {
                let n = kids.len();
                for (k, &c) in kids.iter().enumerate().rev() {
                    let mut g = guides.clone();
                    g.push(k + 1 < n);
                    stack.push((c, g));
                }
            }
            out.push((None, Some(i), guides));
        }
    }
    let mut nodes_raw: Raw = Vec::with_capacity(spans.len() + 1);
    let mut seen = vec![false; spans.len()];
    for (_, t) in &top {
        match t {
            Top::Root(i) => walk(*i, Vec::new(), &children, &mut seen, &mut nodes_raw),
            Top::Remote(id, list) => {
                nodes_raw.push((Some((*id).to_string()), None, Vec::new()));
                let n = list.len();
                for (k, &c) in list.iter().enumerate() {
                    walk(c, vec![k + 1 < n], &children, &mut seen, &mut nodes_raw);
                }
            }
        }
    }
    // Whatever the walk never reached sits on a parent cycle.
    for i in 0..spans.len() {
        if !seen[i] {
            warnings.push(format!(
                "span {} is on a cycle of parents in the rows: shown as a root",
                spans[i].span_id
            ));
            walk(i, Vec::new(), &children, &mut seen, &mut nodes_raw);
        }
    }
    // Reorder the spans to tree order and point the nodes at the new positions.
    let mut slots: Vec<Option<Span>> = spans.into_iter().map(Some).collect();
    let mut ordered = Vec::with_capacity(slots.len());
    let mut nodes = Vec::with_capacity(nodes_raw.len());
    for (remote_id, span, guides) in nodes_raw {
        match (remote_id, span) {
            (Some(id), _) => nodes.push(Node {
                what: NodeRef::Remote(id),
                guides,
            }),
            (None, Some(i)) => {
                if let Some(s) = slots[i].take() {
                    ordered.push(s);
                    nodes.push(Node {
                        what: NodeRef::Span(ordered.len() - 1),
                        guides,
                    });
                }
            }
            (None, None) => {}
        }
    }
    (ordered, nodes)
}

impl Trace {
    /// The overall status: `failed` when any execution failed, else `running`,
    /// `pending`, `cancelled`, and `completed` when every execution completed.
    pub fn status(&self) -> &'static str {
        let mut has = [false; 4];
        for s in self.spans.iter().filter(|s| s.kind == SpanKind::Producer) {
            match s.execution.status.as_str() {
                "failed" => has[0] = true,
                "running" => has[1] = true,
                "pending" => has[2] = true,
                "cancelled" => has[3] = true,
                _ => {}
            }
        }
        ["failed", "running", "pending", "cancelled"]
            .into_iter()
            .zip(has)
            .find_map(|(name, h)| h.then_some(name))
            .unwrap_or("completed")
    }

    /// When the trace started: its earliest span or wait.
    pub fn start(&self) -> Option<DateTime<Utc>> {
        self.spans
            .iter()
            .map(|s| s.waiting_since.map_or(s.start, |w| w.min(s.start)))
            .min()
    }

    /// When it ended, or now when something is still running or waiting.
    pub fn end(&self) -> Option<DateTime<Utc>> {
        self.spans
            .iter()
            .map(|s| match (s.end, s.kind, s.outcome) {
                (None, _, _) | (_, SpanKind::Producer, "pending") => self.now,
                (Some(e), _, _) => e,
            })
            .max()
    }

    /// The JSON document of `pgc trace --format json`, ready for serde.
    pub fn document(&self) -> TraceDocument<'_> {
        TraceDocument {
            trace_id: &self.trace_id,
            requested_execution_id: self.requested,
            status: self.status(),
            start_time: self.start().map(Rfc3339),
            end_time: self.end().map(Rfc3339),
            executions: self.executions,
            remote_parents: self
                .nodes
                .iter()
                .filter_map(|n| match &n.what {
                    NodeRef::Remote(id) => Some(id.as_str()),
                    NodeRef::Span(_) => None,
                })
                .collect(),
            spans: SpanList(self),
            warnings: &self.warnings,
        }
    }
}

/// A time written as RFC 3339 (UTC, microseconds) when serialized.
#[derive(Debug, Clone, Copy)]
pub struct Rfc3339(pub DateTime<Utc>);

impl Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use chrono::{Datelike, Timelike};
        let t = self.0;
        let mut buf = String::with_capacity(27);
        let _ = std::fmt::Write::write_fmt(
            &mut buf,
            format_args!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                t.year(),
                t.month(),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.nanosecond() % 1_000_000_000 / 1_000
            ),
        );
        s.serialize_str(&buf)
    }
}

/// The document `pgc trace --format json` prints (see the README for its fields).
#[derive(Debug, Serialize)]
pub struct TraceDocument<'a> {
    trace_id: &'a str,
    requested_execution_id: Option<Uuid>,
    status: &'static str,
    start_time: Option<Rfc3339>,
    end_time: Option<Rfc3339>,
    executions: usize,
    remote_parents: Vec<&'a str>,
    spans: SpanList<'a>,
    warnings: &'a [String],
}

/// The spans of a document, serialized one by one without building them first.
#[derive(Debug)]
struct SpanList<'a>(&'a Trace);

impl Serialize for SpanList<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.spans.iter().map(|span| {
            SpanDocument {
                span_id: &span.span_id,
                parent_span_id: span.parent_span_id.as_deref(),
                name: &span.name,
                kind: span.kind.as_str(),
                start_time: Rfc3339(span.start),
                end_time: span.end.map(Rfc3339),
                status: span.status.as_str(),
                status_message: span.status_message.as_deref(),
                execution_id: span.execution.id,
                execution_status: &span.execution.status,
                task: &span.execution.task,
                queue: &span.execution.queue,
                attempt: span.attempt,
                outcome: span.outcome,
                in_progress: span.in_progress(),
                waiting_since: span.waiting_since.map(Rfc3339),
                links: span
                    .links
                    .iter()
                    .map(|l| LinkDocument {
                        trace_id: &self.0.trace_id,
                        span_id: l,
                    })
                    .collect(),
                attributes: Attributes(span.attributes()),
            }
        }))
    }
}

#[derive(Serialize)]
struct SpanDocument<'a> {
    span_id: &'a str,
    parent_span_id: Option<&'a str>,
    name: &'a str,
    kind: &'static str,
    start_time: Rfc3339,
    end_time: Option<Rfc3339>,
    status: &'static str,
    status_message: Option<&'a str>,
    execution_id: Uuid,
    execution_status: &'a str,
    task: &'a str,
    queue: &'a str,
    attempt: Option<i32>,
    outcome: &'a str,
    in_progress: bool,
    waiting_since: Option<Rfc3339>,
    links: Vec<LinkDocument<'a>>,
    attributes: Attributes<'a>,
}

#[derive(Serialize)]
struct LinkDocument<'a> {
    trace_id: &'a str,
    span_id: &'a str,
}

/// Attributes as a JSON object, in their order.
struct Attributes<'a>(Vec<(&'static str, AttrValue<'a>)>);

impl Serialize for Attributes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (*k, v)))
    }
}

impl Serialize for AttrValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            AttrValue::Str(v) => s.serialize_str(v),
            AttrValue::Uuid(v) => s.collect_str(v),
            AttrValue::Int(v) => s.serialize_i64(*v),
            AttrValue::Bool(v) => s.serialize_bool(*v),
        }
    }
}

/// The producer (enqueue) span of an execution `pgc enqueue` just stored, as live
/// telemetry reports it: the stored span id and parent, timed by the caller's clock.
/// Returns the trace id with it; `None` when the stored carrier cannot be read.
pub fn enqueue_span(
    enqueued: &crate::enqueue::Enqueued,
    priority: i32,
    max_attempts: i32,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Option<(String, Span)> {
    let tp = TraceParent::parse(&enqueued.traceparent).ok()?;
    let execution = Arc::new(Execution {
        id: enqueued.id,
        task: enqueued.task.clone(),
        queue: enqueued.queue.clone(),
        status: "pending".to_string(),
        priority,
        max_attempts,
        parent_execution_id: enqueued.parent_execution_id,
        flags: tp.flags.defined().to_u8(),
    });
    let span = Span {
        span_id: tp.parent_id.to_string(),
        parent_span_id: enqueued.parent_span_id.clone(),
        // A parent from a carrier (TRACEPARENT) is another process's span.
        parent_is_remote: enqueued.parent_span_id.is_some(),
        flags: execution.flags,
        name: "conductor.invoke".into(),
        kind: SpanKind::Producer,
        start,
        end: Some(end.max(start)),
        waiting_since: None,
        status: SpanStatus::Unset,
        status_message: None,
        outcome: "enqueued",
        execution,
        attempt: None,
        exit_code: None,
        links: Vec::new(),
    };
    Some((tp.trace_id.to_string(), span))
}

/// What [`attempt_span`] builds a live attempt span from.
#[derive(Debug)]
pub struct AttemptParts<'a> {
    /// The stored producer carrier (trace id, producer span id, flags).
    pub producer: &'a TraceParent,
    /// The attempt's stored span id (invalid, all zeros, when the stored one is not 16
    /// hex digits).
    pub span_id: SpanId,
    /// The execution.
    pub execution_id: Uuid,
    /// Its task.
    pub task: &'a str,
    /// Its queue.
    pub queue: &'a str,
    /// The execution whose attempt enqueued it.
    pub parent_execution_id: Option<Uuid>,
    /// The execution's status after the attempt was settled.
    pub execution_status: &'a str,
    /// The attempt number.
    pub attempt: i32,
    /// When the handler started (the worker's clock).
    pub start: DateTime<Utc>,
    /// When it was settled.
    pub end: DateTime<Utc>,
    /// `completed`, `failed`, `timed_out`, `lost`, `released` or `cancelled`.
    pub outcome: &'static str,
    /// The error, for a failed attempt (or the reason of a released one).
    pub message: Option<String>,
}

/// The status of an attempt's span with this outcome.
fn attempt_status(outcome: &str) -> SpanStatus {
    match outcome {
        "completed" => SpanStatus::Ok,
        "released" => SpanStatus::Unset,
        _ => SpanStatus::Error,
    }
}

/// The consumer span of one attempt as the worker reports it live: the stored span id,
/// child of the stored producer span and linked to it, as [`load`] rebuilds it later.
/// Returns the trace id with it.
pub fn attempt_span(p: AttemptParts<'_>) -> (String, Span) {
    let flags = p.producer.flags.defined().to_u8();
    let producer_id = p.producer.parent_id.to_string();
    let execution = Arc::new(Execution {
        id: p.execution_id,
        task: p.task.to_string(),
        queue: p.queue.to_string(),
        status: p.execution_status.to_string(),
        priority: 0,
        max_attempts: 0,
        parent_execution_id: p.parent_execution_id,
        flags,
    });
    let status = attempt_status(p.outcome);
    let span = Span {
        span_id: p.span_id.to_string(),
        parent_span_id: Some(producer_id.clone()),
        // Extracted from the stored carrier: another process's span.
        parent_is_remote: true,
        flags,
        name: format!("task:{}", p.task),
        kind: SpanKind::Consumer,
        start: p.start,
        end: Some(p.end.max(p.start)),
        waiting_since: None,
        status,
        status_message: p.message,
        outcome: p.outcome,
        execution,
        attempt: Some(p.attempt),
        exit_code: None,
        links: vec![producer_id],
    };
    (p.producer.trace_id.to_string(), span)
}

/// What [`live_step_span`] builds a step span from.
#[derive(Debug)]
pub struct StepParts<'a> {
    /// The caller's (the attempt's) context from `TRACEPARENT`.
    pub attempt_context: &'a TraceParent,
    /// The step's stored span id.
    pub span_id: &'a str,
    /// The execution.
    pub execution_id: Uuid,
    /// Its task and queue (`PGC_TASK`, `PGC_QUEUE`; empty when unknown).
    pub task: &'a str,
    /// Its queue.
    pub queue: &'a str,
    /// The attempt number.
    pub attempt: i32,
    /// The step's name.
    pub name: &'a str,
    /// The command's exit code.
    pub exit_code: i32,
    /// Whether the step completed (and was recorded as such).
    pub completed: bool,
    /// When the command started.
    pub start: DateTime<Utc>,
    /// When it ended.
    pub end: DateTime<Utc>,
}

/// The internal span of one `pgc step` run as the step reports it live, under its
/// attempt's span, with the stored span id. Returns the trace id with it.
pub fn live_step_span(p: StepParts<'_>) -> (String, Span) {
    let flags = p.attempt_context.flags.defined().to_u8();
    let execution = Arc::new(Execution {
        id: p.execution_id,
        task: p.task.to_string(),
        queue: p.queue.to_string(),
        status: "running".to_string(),
        priority: 0,
        max_attempts: 0,
        parent_execution_id: None,
        flags,
    });
    let (status, message, outcome) = if p.completed {
        (SpanStatus::Ok, None, "completed")
    } else {
        (
            SpanStatus::Error,
            Some(format!("step failed with exit code {}", p.exit_code)),
            "failed",
        )
    };
    let span = Span {
        span_id: p.span_id.to_string(),
        parent_span_id: Some(p.attempt_context.parent_id.to_string()),
        parent_is_remote: true,
        flags,
        name: format!("task.step:{}", p.name),
        kind: SpanKind::Internal,
        start: p.start,
        end: Some(p.end.max(p.start)),
        waiting_since: None,
        status,
        status_message: message,
        outcome,
        execution,
        attempt: Some(p.attempt),
        exit_code: Some(p.exit_code),
        links: Vec::new(),
    };
    (p.attempt_context.trace_id.to_string(), span)
}
