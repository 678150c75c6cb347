//! The telemetry hook surface: what the engine tells an observer, free of OpenTelemetry.
//!
//! The Rust form of the seed's `TelemetryHooks`. Spans are handed over finished, with the
//! ids pgc stored in the rows (and handed to handlers in `TRACEPARENT`), so what live
//! telemetry reports and what `pgc trace` rebuilds later are the same spans. With no
//! telemetry configured, [`NoTelemetry`] does nothing. The OpenTelemetry implementation
//! is [`otel`], behind the `otel` cargo feature.

#[cfg(feature = "otel")]
pub mod logs;
#[cfg(feature = "otel")]
pub mod metrics;
#[cfg(feature = "otel")]
pub mod otel;

use std::time::Duration;

use uuid::Uuid;

use crate::trace::{AttemptParts, Span};

/// What a log line is about: with a `traceparent`, a JSON line (and an exported log
/// record) carries its `trace_id` and `span_id`, so logs join traces.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogContext<'a> {
    /// The execution.
    pub execution_id: Option<Uuid>,
    /// Its task.
    pub task: Option<&'a str>,
    /// The attempt.
    pub attempt: Option<i32>,
    /// The W3C context of the span the line was written in.
    pub traceparent: Option<&'a str>,
}

/// Something the engine did: the seed's `emitEvent` events, with its fields.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum TelemetryEvent<'a> {
    /// `worker.fetch`: one claim.
    Fetch {
        /// The queues it claimed from.
        queues: &'a [String],
        /// Executions claimed.
        count: usize,
        /// How long it took.
        duration: Duration,
    },
    /// `worker.flush`: one batch of settled attempts.
    Flush {
        /// Attempts in the batch.
        count: usize,
        /// How long it took.
        duration: Duration,
    },
    /// `worker.execution`: one attempt, settled.
    Execution {
        /// Its queue.
        queue: &'a str,
        /// Its task.
        task: &'a str,
        /// The execution.
        execution_id: Uuid,
        /// The attempt number.
        attempt: i32,
        /// How long the handler ran.
        duration: Duration,
        /// `completed`, `failed`, `timed_out`, `lost`, `released` or `cancelled`.
        status: &'a str,
        /// The error of a failed attempt.
        error: Option<&'a str>,
        /// When a failed attempt runs again.
        retry_in: Option<Duration>,
    },
    /// How many executions of a queue are in a status (the queue-depth gauge).
    QueueDepth {
        /// The queue.
        queue: &'a str,
        /// `pending` or `running`.
        status: &'a str,
        /// How many.
        count: i64,
    },
    /// Executions enqueued (`messaging.client.sent.messages`).
    Sent {
        /// The queue.
        queue: &'a str,
        /// How many.
        count: u64,
    },
    /// `db.query`: one of the worker's claim and settle statements.
    DbQuery {
        /// `claim`, `settle_claimed`, `complete`, `fail`, `release`,
        /// `settle_cancelled` or `completed_under`.
        label: &'a str,
        /// How long it took (preparing it, the first time, included).
        duration: Duration,
        /// How many times it was retried (the worker does not retry a statement: it
        /// reconnects and runs the whole claim or settle again).
        retries: u32,
    },
}

/// An observer of the queue's work.
pub trait Telemetry: Send + Sync {
    /// Whether [`Telemetry::span`] records anything; when not, callers skip building
    /// spans, so that no telemetry costs nothing.
    fn wants_spans(&self) -> bool {
        true
    }

    /// A span of trace `trace_id` (32 hex digits), with its stored ids.
    fn span(&self, trace_id: &str, span: &Span) {
        let _ = (trace_id, span);
    }

    /// The span of an attempt the worker settled. By default the span
    /// [`crate::trace::attempt_span`] builds, handed to [`Telemetry::span`]; an
    /// implementation that encodes spans itself can skip building it (a busy worker
    /// settles tens of thousands a second).
    fn attempt(&self, parts: AttemptParts<'_>) {
        let (trace_id, span) = crate::trace::attempt_span(parts);
        self.span(&trace_id, &span);
    }

    /// Whether the worker should count its queues for [`TelemetryEvent::QueueDepth`]
    /// (a query every few seconds).
    fn wants_queue_depth(&self) -> bool {
        false
    }

    /// An event; called whether or not spans are wanted, so it must be cheap.
    fn event(&self, event: &TelemetryEvent<'_>) {
        let _ = event;
    }
}

/// Telemetry that records nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTelemetry;

impl Telemetry for NoTelemetry {
    fn wants_spans(&self) -> bool {
        false
    }
}

/// Shared telemetry hooks, as options carry them.
#[derive(Clone)]
pub struct Hooks(pub std::sync::Arc<dyn Telemetry>);

impl Default for Hooks {
    fn default() -> Self {
        Hooks(std::sync::Arc::new(NoTelemetry))
    }
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hooks")
    }
}

impl std::ops::Deref for Hooks {
    type Target = dyn Telemetry;

    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}
