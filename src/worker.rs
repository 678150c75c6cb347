//! The worker: claims due executions, runs them through handlers, settles the results.
//!
//! It follows the seed's pipeline, fetch → execute → flush: claims are batched
//! (`FOR UPDATE SKIP LOCKED`), concurrency is bounded, and results are settled in
//! batches. Claiming and settling each run in a task of their own on a connection of
//! their own, so the loop that starts and collects handlers never waits for either and
//! PostgreSQL works on both at once. A claim locks its rows in a transaction it keeps
//! open for a short window: attempts that finish within it are recorded as completed
//! by one write when it commits, the others are leased then, each lease with a new
//! generation. The worker renews its leases while handlers run, and every settle names
//! the generation it was leased under, so a worker whose lease was taken over can never
//! settle (fencing). Expired leases of dead workers are
//! reaped by the living. LISTEN/NOTIFY wakes an idle worker, polling covers lost
//! notifications, and a lost database connection is re-established with backoff while
//! handlers keep running. Nothing here prints: what happens is reported as [`Event`]s.
//!
//! In-process handlers from a Rust program:
//!
//! ```no_run
//! use std::sync::Arc;
//! use pgc::db::ConnectOptions;
//! use pgc::handler::{FnHandler, Job, Outcome};
//! use pgc::worker::{self, Handlers, Shutdown, WorkerOptions};
//!
//! #[tokio::main]
//! async fn main() -> pgc::Result<()> {
//!     let conn = ConnectOptions::resolve(Some("postgres://postgres@127.0.0.1/app"))?;
//!     let resize = FnHandler(|job: Job| async move {
//!         // job.payload is the JSON text; job.traceparent names this attempt's span.
//!         Outcome::Completed(Some(format!("{{\"bytes\": {}}}", job.payload.len())))
//!     });
//!     let handlers = Handlers::new().task("resize", Arc::new(resize));
//!     let opts = WorkerOptions {
//!         queues: vec!["images".into()],
//!         concurrency: 16,
//!         ..WorkerOptions::default()
//!     };
//!     let shutdown = Shutdown::default(); // cancel shutdown.graceful to stop
//!     let report = worker::run(&conn, opts, handlers, shutdown, Arc::new(|_event| {})).await?;
//!     println!("{} completed", report.completed);
//!     Ok(())
//! }
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::task::JoinSet;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row, Statement};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::db::ConnectOptions;
use crate::error::Result;
use crate::handler::{Job, Outcome, SharedHandler};
use crate::idmap::{FastMap, FastSet};
use crate::sql;
use crate::telemetry::TelemetryEvent;
use crate::tid::Tid;
use crate::traceparent::{SpanId, TraceFlags, TraceParent, TraceState, new_trace_id};

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Queues to claim from.
    pub queues: Vec<String>,
    /// Handlers running at once.
    pub concurrency: usize,
    /// How long a claim holds an execution; renewed every third of it while it runs.
    pub lease: Duration,
    /// Claim this often even without a notification.
    pub poll_interval: Duration,
    /// Base of the exponential retry backoff.
    pub retry_delay: Duration,
    /// Longest retry backoff.
    pub max_retry_delay: Duration,
    /// How long running handlers get to finish after a shutdown signal.
    pub shutdown_timeout: Duration,
    /// Exit once the queues hold nothing running, due or waiting for a retry.
    pub until_empty: bool,
    /// Most executions claimed by one statement.
    pub claim_batch: usize,
    /// Executions claimed ahead of free handler slots, so that a slot that frees starts
    /// the next one without waiting for a claim. They stay claimed while they wait (locked,
    /// then leased), so other workers cannot take them, and their attempt starts at the
    /// claim. The
    /// worker claims ahead at least this many, and more when handlers are short (see
    /// `ClaimAhead`).
    pub prefetch: usize,
    /// How long a claim's transaction stays open for the attempts it started to
    /// finish (10 ms by default). One that finishes within it is recorded, outcome and
    /// all, by a single write of its row when the transaction commits; the others are
    /// leased then and settled as usual. Until then the claimed rows are only locked:
    /// other sessions see them pending, and if the worker dies they are claimed again
    /// at once, with no attempt used. Zero leases every claim at once.
    pub claim_window: Duration,
    /// Where attempt spans go (nowhere by default).
    pub telemetry: crate::telemetry::Hooks,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            queues: vec![crate::enqueue::DEFAULT_QUEUE.to_string()],
            concurrency: 8,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(2),
            retry_delay: Duration::from_secs(5),
            max_retry_delay: Duration::from_secs(3600),
            shutdown_timeout: Duration::from_secs(30),
            until_empty: false,
            claim_batch: 500,
            prefetch: 0,
            claim_window: CLAIM_WINDOW,
            telemetry: crate::telemetry::Hooks::default(),
        }
    }
}

impl WorkerOptions {
    /// The delay before retry number `attempt` (the attempt that just failed, from 1):
    /// `retry_delay × 2^(attempt-1)`, capped at `max_retry_delay`, then "equal jitter"
    /// (a random point in its upper half) so that failures at the same moment do not
    /// retry in lockstep.
    pub fn backoff(&self, attempt: i32) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        let full = self
            .retry_delay
            .saturating_mul(2u32.saturating_pow(exp))
            .min(self.max_retry_delay);
        let half = full / 2;
        half + half.mul_f64(rand::rng().random::<f64>())
    }
}

/// Which handler runs which task.
#[derive(Clone, Default)]
pub struct Handlers {
    by_task: HashMap<String, SharedHandler>,
    fallback: Option<SharedHandler>,
}

impl Handlers {
    /// No handlers yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` with `handler`.
    pub fn task(mut self, task: impl Into<String>, handler: SharedHandler) -> Self {
        self.by_task.insert(task.into(), handler);
        self
    }

    /// Runs every task without a handler of its own with `handler`.
    pub fn fallback(mut self, handler: SharedHandler) -> Self {
        self.fallback = Some(handler);
        self
    }

    /// The tasks to claim: `None` (all) with a fallback, else the named ones.
    pub fn claimable(&self) -> Option<Vec<String>> {
        if self.fallback.is_some() {
            None
        } else {
            let mut tasks: Vec<String> = self.by_task.keys().cloned().collect();
            tasks.sort();
            Some(tasks)
        }
    }

    fn get(&self, task: &str) -> Option<&SharedHandler> {
        self.by_task.get(task).or(self.fallback.as_ref())
    }
}

/// What the worker did, as it happens (the CLI prints these).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// Registered and running.
    Started {
        /// The worker's id.
        worker_id: Uuid,
    },
    /// An attempt completed.
    Completed {
        /// Execution id.
        id: Uuid,
        /// Task name.
        task: String,
        /// Attempt number.
        attempt: i32,
        /// How long the handler ran.
        duration: Duration,
        /// The attempt's W3C `traceparent` (its span), for logs that join traces.
        traceparent: Option<String>,
    },
    /// An attempt failed.
    Failed {
        /// Execution id.
        id: Uuid,
        /// Task name.
        task: String,
        /// Attempt number.
        attempt: i32,
        /// The error stored as `last_error`.
        error: String,
        /// When it runs again; `None` when it was the last attempt.
        retry_in: Option<Duration>,
        /// The attempt's W3C `traceparent` (its span), for logs that join traces.
        traceparent: Option<String>,
    },
    /// An attempt was given back without using it.
    Released {
        /// Execution id.
        id: Uuid,
        /// Task name.
        task: String,
        /// Why.
        reason: String,
        /// The attempt's W3C `traceparent` (its span), for logs that join traces.
        traceparent: Option<String>,
    },
    /// Stopped and finished as cancelled (`pgc cancel`).
    Cancelled {
        /// Execution id.
        id: Uuid,
        /// Task name.
        task: String,
        /// The attempt's W3C `traceparent` (its span), for logs that join traces.
        traceparent: Option<String>,
    },
    /// The lease was taken over; the attempt's result was discarded.
    LeaseLost {
        /// Execution id.
        id: Uuid,
        /// Task name.
        task: String,
        /// The attempt's W3C `traceparent` (its span), for logs that join traces.
        traceparent: Option<String>,
    },
    /// An execution of a dead worker was recovered.
    Reaped {
        /// Execution id.
        id: Uuid,
        /// `pending` (runs again) or `failed` (no attempts left).
        status: String,
    },
    /// A shutdown began; `running` handlers are finishing.
    Stopping {
        /// Handlers still running.
        running: usize,
    },
    /// The database connection failed; the worker retries.
    DatabaseLost {
        /// Why.
        error: String,
    },
    /// The database connection is back.
    DatabaseBack,
    /// Stopped at once (second signal) with attempts still unsettled: their leases
    /// expire and another worker recovers them.
    Abandoned {
        /// Attempts left unsettled.
        unsettled: usize,
    },
    /// The worker's loop has ended (drained, or stopped): it settles what is left and
    /// leaves the registry, then returns.
    Finishing,
}

/// Receives [`Event`]s.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// An execution this worker finished as failed.
#[derive(Debug, Clone)]
pub struct FailedExecution {
    /// Execution id.
    pub id: Uuid,
    /// Task name.
    pub task: String,
    /// Its last error.
    pub error: String,
}

/// What a worker run did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Attempts that completed their execution.
    pub completed: u64,
    /// Executions finished as failed (no attempts left).
    pub failed: Vec<FailedExecution>,
    /// Failed attempts that will be retried.
    pub retried: u64,
    /// Attempts given back without using them.
    pub released: u64,
    /// Attempts whose lease was taken over.
    pub leases_lost: u64,
    /// Executions stopped by `pgc cancel`.
    pub cancelled: u64,
}

/// Where a [`Report`] stood, to undo a batch that did not commit.
#[derive(Debug, Clone, Copy)]
struct ReportMark([u64; 5], usize);

impl Report {
    fn mark(&self) -> ReportMark {
        ReportMark(
            [
                self.completed,
                self.retried,
                self.released,
                self.leases_lost,
                self.cancelled,
            ],
            self.failed.len(),
        )
    }

    fn rewind(&mut self, m: ReportMark) {
        [
            self.completed,
            self.retried,
            self.released,
            self.leases_lost,
            self.cancelled,
        ] = m.0;
        self.failed.truncate(m.1);
    }
}

/// Tells a running worker to stop: `graceful` stops claiming and lets handlers finish
/// for up to the shutdown timeout; `immediate` stops them at once.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop claiming; finish what runs.
    pub graceful: CancellationToken,
    /// Stop running handlers now.
    pub immediate: CancellationToken,
}

/// A running attempt: (execution id, lease generation). The generation tells apart two
/// attempts of one execution on this worker (its lease was taken over, then it claimed
/// the execution again while the old handler was still stopping), except after a claim
/// whose transaction was lost: nothing was written, so the next claim draws the same
/// generation (see [`ByClaim::Unrecorded`] and [`ToClaimer::Skip`]).
type Key = (Uuid, i32);

struct InFlight {
    task: String,
    /// Where the claim left the execution's row (see [`Tid`]).
    tid: Option<Tid>,
    queue: Arc<str>,
    attempt: i32,
    stop: CancellationToken,
    meta: Option<AttemptMeta>,
    traceparent: Arc<str>,
}

/// What a claim's transaction did with an attempt it started (see [`Claimed`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ByClaim {
    /// Leased it (or left it to a lease): the settler settles it.
    Leased,
    /// Recorded it as completed (see [`sql::SETTLE_CLAIMED`]): the settler only reports it.
    Completed,
    /// Nothing: the transaction was lost. No lease was written under the attempt's
    /// generation, and a later claim of the execution may take the same one, so its
    /// outcome must never be settled; it is reported as lost.
    Unrecorded,
}

struct Done {
    id: Uuid,
    /// Where the claim left the execution's row, when known (see [`Tid`]).
    tid: Option<Tid>,
    /// `pgc cancel` asked to stop it (a `Stopped` outcome then settles as cancelled).
    cancelled: bool,
    /// What its claim's transaction did with it.
    by_claim: ByClaim,
    generation: i32,
    task: String,
    queue: Arc<str>,
    attempt: i32,
    duration: Duration,
    outcome: Outcome,
    /// For the attempt's span; `None` for an execution that was never started or when
    /// no telemetry is configured.
    meta: Option<AttemptMeta>,
    /// The attempt's `traceparent`, as the handler got it.
    traceparent: Option<Arc<str>>,
}

/// What the live span of an attempt needs besides its outcome (a value, copied to
/// where the attempt ends: nothing to allocate per execution).
#[derive(Clone, Copy)]
struct AttemptMeta {
    parent_execution_id: Option<Uuid>,
    /// The stored producer carrier, when it is readable.
    producer: Option<TraceParent>,
    /// The attempt's span id (handed to the handler in TRACEPARENT).
    span_id: SpanId,
    started: chrono::DateTime<chrono::Utc>,
}

impl Done {
    /// What the attempt's live span is made of, with the settled outcome; `None` when
    /// it has no trace.
    fn span<'a>(
        &'a self,
        outcome: &'static str,
        message: Option<String>,
        execution_status: &'a str,
    ) -> Option<crate::trace::AttemptParts<'a>> {
        let meta = self.meta.as_ref()?;
        let producer = meta.producer.as_ref()?;
        Some(crate::trace::AttemptParts {
            producer,
            span_id: meta.span_id,
            execution_id: self.id,
            task: &self.task,
            queue: &self.queue,
            parent_execution_id: meta.parent_execution_id,
            execution_status,
            attempt: self.attempt,
            start: meta.started,
            end: meta.started + chrono::TimeDelta::from_std(self.duration).unwrap_or_default(),
            outcome,
            message,
        })
    }
}

/// After a second signal: how long handlers get to die and results to settle before
/// the worker exits regardless.
const HARD_STOP: Duration = Duration::from_secs(10);

/// Longest a worker statement may take before the connection is given up as hung (a
/// half-open TCP connection never answers) and re-established.
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a database call with [`QUERY_TIMEOUT`]; the error is the text to report.
async fn bounded<T, E: std::fmt::Display>(
    call: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(QUERY_TIMEOUT, call).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "no answer from the database within {}s",
            QUERY_TIMEOUT.as_secs()
        )),
    }
}

/// A connection that is re-established with backoff when it breaks.
struct Db {
    opts: ConnectOptions,
    client: Option<Client>,
    /// The hot statements, prepared on the current connection (see [`Session`]).
    stmts: HashMap<&'static str, Statement>,
    retry_at: Instant,
    backoff: Duration,
    /// Connections made so far: tells whether a transaction begun on one is still open.
    epoch: u64,
    /// Run on each new connection (session settings), besides generic plans.
    setup: Option<String>,
    /// The server process of the current connection and when it started.
    backend: Option<(i32, chrono::DateTime<chrono::Utc>)>,
    /// Told of every prepared statement run (`db.query`).
    telemetry: crate::telemetry::Hooks,
}

/// A connection with its prepared statements. The claim and settle statements run
/// hundreds of times a second: prepared once per connection and planned once (worker
/// connections use generic plans), they skip parsing and planning on every call. Planning
/// was the larger part of a small claim: the planner probes the claim index for the
/// range of `run_at`, and the index holds an entry for every row claimed since the
/// last vacuum.
struct Session<'a> {
    client: &'a Client,
    stmts: &'a mut HashMap<&'static str, Statement>,
    telemetry: &'a crate::telemetry::Hooks,
}

impl Session<'_> {
    /// `sql`, prepared on first use.
    async fn prepared(
        &mut self,
        sql: &'static str,
    ) -> std::result::Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }

    /// Runs `sql`, prepared on first use.
    async fn query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        self.framed(false, sql, params, false).await
    }

    /// Runs `sql` in a transaction of its own, pipelined: begin, the statement and
    /// commit go out together (PostgreSQL turns the commit into a rollback when the
    /// statement fails).
    async fn query_in_transaction(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        self.framed(true, sql, params, true).await
    }

    /// Begins a transaction and runs `sql` in it, pipelined (the transaction is left
    /// open; a failure leaves it aborted, and the caller drops the connection).
    async fn begin_query(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        self.framed(true, sql, params, false).await
    }

    /// Runs `sql` in the open transaction and commits it, pipelined.
    async fn query_commit(
        &mut self,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        self.framed(false, sql, params, true).await
    }

    /// Runs `sql`, prepared on first use, after a `begin` and before a `commit` when
    /// asked, all sent at once, and tells telemetry how long it took.
    async fn framed(
        &mut self,
        begin: bool,
        sql: &'static str,
        params: &[&(dyn ToSql + Sync)],
        commit: bool,
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        let started = Instant::now();
        let stmt = self.prepared(sql).await?;
        let client = self.client;
        // tokio-postgres sends requests in the order their futures are first polled,
        // which `try_join!` does in order.
        let answer = tokio::try_join!(
            async {
                match begin {
                    true => client.batch_execute("begin").await,
                    false => Ok(()),
                }
            },
            client.query(&stmt, params),
            async {
                match commit {
                    true => client.batch_execute("commit").await,
                    false => Ok(()),
                }
            },
        );
        self.telemetry.event(&TelemetryEvent::DbQuery {
            label: statement_label(sql),
            duration: started.elapsed(),
            retries: 0,
        });
        answer.map(|(_, rows, _)| rows)
    }
}

/// The `db.query` label of a worker statement.
fn statement_label(sql: &'static str) -> &'static str {
    [
        (sql::CLAIM, "claim"),
        (sql::SETTLE_CLAIMED, "settle_claimed"),
        (sql::COMPLETE, "complete"),
        (sql::FAIL, "fail"),
        (sql::RELEASE, "release"),
        (sql::SETTLE_CANCELLED, "settle_cancelled"),
        (sql::COMPLETED_UNDER, "completed_under"),
    ]
    .into_iter()
    .find(|(s, _)| *s == sql)
    .map_or("query", |(_, label)| label)
}

impl Db {
    fn new(opts: ConnectOptions, client: Option<Client>) -> Self {
        Db {
            opts,
            client,
            stmts: HashMap::new(),
            retry_at: Instant::now(),
            backoff: Duration::from_millis(100),
            epoch: 0,
            setup: None,
            backend: None,
            telemetry: crate::telemetry::Hooks::default(),
        }
    }

    fn with_setup(mut self, setup: String) -> Self {
        self.setup = Some(setup);
        self
    }

    fn with_telemetry(mut self, telemetry: crate::telemetry::Hooks) -> Self {
        self.telemetry = telemetry;
        self
    }

    fn up(&self) -> bool {
        self.client.as_ref().is_some_and(|c| !c.is_closed())
    }

    /// The client, reconnecting when it is due; `None` while the database is away.
    async fn client(&mut self, events: &EventSink) -> Option<&Client> {
        if !self.up() && Instant::now() >= self.retry_at {
            match self.opts.connect().await {
                Ok(c) => {
                    // Statements are planned once, whatever their parameters (a session
                    // setting; a server that does not know it only loses the speed-up).
                    // The same for `setup`, a safety net.
                    let mut settings = vec![sql::GENERIC_PLANS];
                    settings.extend(self.setup.as_deref());
                    for setting in settings {
                        if let Err(e) = bounded(c.batch_execute(setting)).await
                            && c.is_closed()
                        {
                            self.fail(events, e);
                            return None;
                        }
                    }
                    // Which backend serves it, to end that backend if an answer from it
                    // is lost while it may still be working (see `claim_recorded`).
                    self.backend = match bounded(c.query_one(sql::BACKEND, &[])).await {
                        Ok(row) => row.try_get(0).ok().zip(row.try_get(1).ok()),
                        Err(_) => None,
                    };
                    if self.client.is_some() || self.backoff > Duration::from_millis(100) {
                        events(Event::DatabaseBack);
                    }
                    self.stmts.clear();
                    self.client = Some(c);
                    self.epoch += 1;
                    self.backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    self.client = None;
                    self.fail(events, e.to_string());
                }
            }
        }
        self.client.as_ref().filter(|c| !c.is_closed())
    }

    /// The current connection with its prepared statements if it is connection number
    /// `epoch` and still open; never a new one (a transaction begun on it would not be
    /// there).
    fn session_on(&mut self, epoch: u64) -> Option<Session<'_>> {
        if self.epoch != epoch {
            return None;
        }
        let client = self.client.as_ref().filter(|c| !c.is_closed())?;
        Some(Session {
            client,
            stmts: &mut self.stmts,
            telemetry: &self.telemetry,
        })
    }

    /// The client with its prepared statements; `None` while the database is away.
    async fn session(&mut self, events: &EventSink) -> Option<Session<'_>> {
        self.client(events).await?;
        let client = self.client.as_ref()?;
        Some(Session {
            client,
            stmts: &mut self.stmts,
            telemetry: &self.telemetry,
        })
    }

    fn fail(&mut self, events: &EventSink, error: String) {
        events(Event::DatabaseLost { error });
        self.client = None;
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }
}

/// Runs a worker until it is told to stop (or, with `until_empty`, until the queues are
/// drained). Fails only when the first connection or registration fails; later database
/// trouble is reported as events and survived.
pub async fn run(
    conn: &ConnectOptions,
    opts: WorkerOptions,
    handlers: Handlers,
    shutdown: Shutdown,
    events: EventSink,
) -> Result<Report> {
    let mut opts = opts;
    // Each queue once: a claim locks up to its limit per queue listed, and a row of a
    // queue listed twice would come back twice.
    let mut seen = std::collections::HashSet::new();
    opts.queues.retain(|q| seen.insert(q.clone()));
    let conn = conn.with_default_application_name("pgc worker");
    let first = conn.connect().await?;
    crate::migrate::check_schema(&first).await?;
    let worker_id = Uuid::now_v7();
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let pid = i32::try_from(std::process::id()).unwrap_or(0);
    first
        .execute(
            sql::WORKER_REGISTER,
            &[
                &worker_id,
                &host,
                &pid,
                &opts.queues,
                &env!("CARGO_PKG_VERSION"),
            ],
        )
        .await?;
    events(Event::Started { worker_id });

    let mut db = Db::new(conn.clone(), Some(first));
    // Settles run in a task of their own, on a connection of their own (opened on first
    // use), so that claiming never waits for settling: PostgreSQL works on both at once.
    let (settle_tx, settle_rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    // Each settled batch: its size, and how soon the earliest retry in it is due.
    let (settled_tx, mut settled_rx) =
        tokio::sync::mpsc::unbounded_channel::<(usize, Vec<Duration>)>();
    let settler = tokio::spawn(settler(
        Db::new(conn.clone(), None).with_telemetry(opts.telemetry.clone()),
        worker_id,
        opts.clone(),
        settle_rx,
        settled_tx,
        events.clone(),
    ));
    let (wake_tx, mut wake_rx) = tokio::sync::mpsc::unbounded_channel::<Wake>();
    let listener_stop = CancellationToken::new();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(listen(
        conn.clone(),
        opts.queues.clone(),
        wake_tx,
        listener_stop.clone(),
        ready_tx,
    ));
    if opts.telemetry.wants_queue_depth() {
        tokio::spawn(count_queues(
            Db::new(conn.clone(), None),
            opts.queues.clone(),
            opts.telemetry.clone(),
            listener_stop.clone(),
            events.clone(),
        ));
    }
    // Listen before the first claim, so that no enqueue or cancel falls between them (a
    // database that refuses LISTEN only costs the wait; polling still works).
    let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;

    let claimable = handlers.claimable();
    let lease_secs = opts.lease.as_secs_f64();
    let mut joins: JoinSet<Done> = JoinSet::new();
    let mut inflight: FastMap<Key, InFlight> = FastMap::default();
    // Handler task → its attempt, to settle a handler that panicked.
    let mut tasks: FastMap<tokio::task::Id, Key> = FastMap::default();
    // Executions this worker recovered from dead workers and finished as failed.
    let mut reaped_failed: Vec<FailedExecution> = Vec::new();
    // Finished attempts handed to the settler and not yet settled.
    let mut unsettled = 0usize;
    // Executions `pgc cancel` asked to stop: their Stopped outcome settles as cancelled.
    let mut cancelling: std::collections::HashSet<Key> = std::collections::HashSet::new();
    // Claimed ahead (`prefetch`), not started yet.
    let mut local: std::collections::VecDeque<(Key, tokio_postgres::Row)> =
        std::collections::VecDeque::new();
    let mut want_claim = true;
    let mut starts = ClaimStarts::new(opts.queues.len());
    let mut ahead = ClaimAhead::default();
    // Whether attempts keep what their live spans need.
    let traced = opts.telemetry.wants_spans();
    // When the retries this worker scheduled fall due (see `add_retry_wake`).
    let mut retry_wakes: std::collections::BTreeSet<tokio::time::Instant> =
        std::collections::BTreeSet::new();
    // Reasons to claim seen so far (enqueue notifications, polls, …).
    let mut wakes = 0u64;
    // Claims run by claimer tasks, each on a connection of its own, so that this loop
    // never waits for one. A second claimer claims while the first is busy, when there
    // is room for both claims: PostgreSQL then works on two claims at once.
    let (claimed_tx, mut claimed_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Claimed)>();
    // A claimer frozen inside its window (a stopped process, a stalled machine) would
    // hold its rows locked, and no lease would ever expire for them: the server ends
    // such a session once it has sat in its transaction for a lease, and the rows are
    // free again (as a lease of that length would have run out).
    let claimer_setup = format!(
        "set idle_in_transaction_session_timeout = {}",
        opts.lease.as_millis().clamp(1, i32::MAX as u128)
    );
    let mut claimers: Vec<Claimer> = (0..CLAIMERS)
        .map(|index| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<ToClaimer>();
            let task = tokio::spawn(claimer(
                index,
                Db::new(conn.clone(), None)
                    .with_telemetry(opts.telemetry.clone())
                    .with_setup(claimer_setup.clone()),
                ClaimQuery {
                    worker_id,
                    queues: opts.queues.clone(),
                    tasks: claimable.clone(),
                    lease_secs,
                    // Well inside the lease (see `claimer_setup`).
                    window: opts.claim_window.min(opts.lease / 2),
                    telemetry: opts.telemetry.clone(),
                },
                rx,
                claimed_tx.clone(),
                settle_tx.clone(),
                events.clone(),
            ));
            Claimer {
                requests: tx,
                task,
                running: None,
                open: false,
            }
        })
        .collect();
    drop(claimed_tx);
    // Claimed executions whose claim's transaction is still open, by claimer: their
    // attempts are recorded by that claimer (see `Claimed`).
    let mut provisional: FastMap<Key, usize> = FastMap::default();
    // Running attempts whose claim's transaction was lost (see `ByClaim::Unrecorded`).
    let mut unrecorded: FastSet<Key> = FastSet::default();
    let mut stopping = false;
    // When a small claim held back beside one under way may go after all.
    let mut side_claim_at: Option<Instant>;
    let mut stopped_handlers = false;
    let mut deadline: Option<tokio::time::Instant> = None;
    // After a second signal, the most time left to stop handlers and settle.
    let mut hard_stop: Option<tokio::time::Instant> = None;
    let mut poll = tokio::time::interval(opts.poll_interval);
    let mut renew = tokio::time::interval(opts.lease / 3);
    let mut reap = tokio::time::interval(opts.lease / 2);
    for t in [&mut poll, &mut renew, &mut reap] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }

    loop {
        // Start what was claimed ahead, into free slots, before claiming more.
        while !stopping && inflight.len() < opts.concurrency {
            let Some((_, row)) = local.pop_front() else {
                break;
            };
            if let Err(e) = launch(
                &row,
                &handlers,
                &mut joins,
                &mut tasks,
                &mut inflight,
                traced,
            ) {
                db.fail(&events, e.to_string());
            }
        }
        let free = opts.concurrency.saturating_sub(inflight.len());
        let prefetch = opts.prefetch.max(ahead.target(opts.concurrency));
        let claiming: usize = claimers
            .iter()
            .filter_map(|c| c.running.as_ref())
            .map(|r| r.size)
            .sum();
        let mut room = (free + prefetch).saturating_sub(local.len() + claiming);
        // The oldest claim under way, if any.
        let mut under_way: Option<Instant> = claimers
            .iter()
            .filter_map(|c| c.running.as_ref())
            .map(|r| r.at)
            .min();
        side_claim_at = None;
        for c in claimers
            .iter_mut()
            .filter(|c| c.running.is_none() && !c.open)
        {
            if stopping || !want_claim || room == 0 {
                break;
            }
            // A claim beside one under way only for a batch worth its statement: a few
            // rows wait for the claim under way to return and go with the next one
            // (with short command handlers, a claim per row or two costs PostgreSQL
            // more than the handlers cost the machine). Unless that claim is slow (a
            // lock, a connection gone quiet): then free slots do not wait for it.
            if let Some(at) = under_way
                && room.min(opts.claim_batch) < MIN_SIDE_CLAIM.min(opts.claim_batch)
                && at.elapsed() < SIDE_CLAIM_AFTER
            {
                side_claim_at = Some(at + SIDE_CLAIM_AFTER);
                break;
            }
            // The claim runs in the claimer task: this loop goes on starting and
            // collecting handlers meanwhile.
            let n = room.min(opts.claim_batch);
            let from = starts.for_claim();
            let from_start = from.iter().all(Option::is_none);
            if c.requests.send(ToClaimer::Claim(n, from)).is_ok() {
                c.running = Some(Asked {
                    at: Instant::now(),
                    size: n,
                    wakes,
                    resets: starts.resets,
                    from_start,
                });
                room -= n;
                under_way = under_way.or(Some(Instant::now()));
            }
        }
        let claiming = claimers.iter().any(|c| c.running.is_some() || c.open);
        if stopping && local.iter().any(|(k, _)| !provisional.contains_key(k)) {
            // Never started: give them back without using an attempt (if the database
            // is away, their leases expire and another worker recovers them). Those
            // whose claim is still open are leased when it ends, and given back then.
            let mut ids = Vec::new();
            let mut generations = Vec::new();
            local.retain(|(k, _)| {
                if provisional.contains_key(k) {
                    return true;
                }
                ids.push(k.0);
                generations.push(k.1);
                false
            });
            if let Some(client) = db.client(&events).await
                && let Err(e) =
                    bounded(client.query(sql::UNCLAIM, &[&worker_id, &ids, &generations])).await
            {
                db.fail(&events, e);
            }
        }

        if stopping && inflight.is_empty() && unsettled == 0 && !claiming && local.is_empty() {
            break;
        }
        if opts.until_empty
            && !stopping
            && inflight.is_empty()
            && local.is_empty()
            && !claiming
            && unsettled == 0
            && !want_claim
            && let Some(client) = db.client(&events).await
        {
            match client
                .query_one(sql::QUEUE_BUSY, &[&opts.queues, &claimable])
                .await
                .and_then(|r| r.try_get::<_, bool>(0))
            {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => db.fail(&events, e.to_string()),
            }
        }

        let reconnect = async {
            tokio::time::sleep_until(db.retry_at.into()).await;
        };
        tokio::select! {
            biased;
            () = shutdown.immediate.cancelled(), if hard_stop.is_none() => {
                stopping = true;
                stopped_handlers = true;
                hard_stop = Some(tokio::time::Instant::now() + HARD_STOP);
                for f in inflight.values() {
                    f.stop.cancel();
                }
            }
            () = shutdown.graceful.cancelled(), if !stopping => {
                stopping = true;
                deadline = Some(tokio::time::Instant::now() + opts.shutdown_timeout);
                events(Event::Stopping { running: inflight.len() });
            }
            () = async { if let Some(d) = side_claim_at { tokio::time::sleep_until(d.into()).await } },
                if side_claim_at.is_some() => {}
            () = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } },
                if deadline.is_some() && !stopped_handlers => {
                stopped_handlers = true;
                for f in inflight.values() {
                    f.stop.cancel();
                }
            }
            () = async { if let Some(d) = hard_stop { tokio::time::sleep_until(d).await } },
                if hard_stop.is_some() => {
                break;
            }
            Some((index, message)) = claimed_rx.recv() => match message {
            Claimed::Ended { leased, unrecorded: lost } => {
                if let Some(c) = claimers.get_mut(index) {
                    c.open = false;
                }
                // Only this claim's (see `ToClaimer::Skip`).
                let mut own = |key: &Key| {
                    if provisional.get(key) == Some(&index) {
                        provisional.remove(key);
                        true
                    } else {
                        false
                    }
                };
                for (key, tid) in leased {
                    if own(&key) && let Some(f) = inflight.get_mut(&key) {
                        f.tid = Some(tid);
                    }
                }
                if !lost.is_empty() {
                    // Rolled back: other workers may run them now. Stop them here; their
                    // settles find no lease.
                    let gone: FastSet<Key> = lost.into_iter().filter(|k| own(k)).collect();
                    for key in &gone {
                        if let Some(f) = inflight.get(key) {
                            f.stop.cancel();
                            unrecorded.insert(*key);
                        }
                    }
                    local.retain(|(k, _)| !gone.contains(k));
                    want_claim = true;
                    starts.reset();
                }
            }
            Claimed::Rows(claimed) => {
                let asked = claimers
                    .get_mut(index)
                    .and_then(|c| c.running.take())
                    // Never without a request; if it were, it moves no start.
                    .unwrap_or(Asked { at: Instant::now(), size: 0, wakes, resets: starts.resets.wrapping_sub(1), from_start: true });
                match claimed {
                    Ok((rows, warm)) => {
                        let mut rows = rows;
                        if !rows.is_empty() && let Some(c) = claimers.get_mut(index) {
                            // Its transaction stays open until `Claimed::Ended`.
                            c.open = true;
                            rows.retain(|row| {
                                let Ok(key) = row_key(row) else { return true };
                                if provisional.get(&key) == Some(&index) {
                                    // The same row twice in one claim: once is enough.
                                    return false;
                                }
                                if provisional.contains_key(&key) || inflight.contains_key(&key) {
                                    let _ = c.requests.send(ToClaimer::Skip(key));
                                    return false;
                                }
                                provisional.insert(key, index);
                                true
                            });
                        }
                        if warm {
                            ahead.claimed(asked.at.elapsed());
                        }
                        // A short batch may only mean that other workers held rows
                        // locked for a moment (SKIP LOCKED): try again while claims
                        // return anything, and wait for a wake-up once one returns none.
                        // A wake-up that came while the claim ran may be for rows it could
                        // not see yet: claim again then too. So may a short claim that
                        // did not start at the beginning of the queues: the next one does.
                        let short = rows.len() < asked.size;
                        want_claim = !rows.is_empty()
                            || wakes != asked.wakes
                            || (short && !asked.from_start);
                        if !rows.is_empty() {
                            // So that the other claimer's empty answer, which may have
                            // started before this one, does not stop claiming.
                            wakes += 1;
                        }
                        if short {
                            starts.reset();
                        } else {
                            starts.advance(asked.resets, &last_positions(&rows, &opts.queues));
                        }
                        for row in rows {
                            if !stopping && inflight.len() < opts.concurrency {
                                if let Err(e) = launch(&row, &handlers, &mut joins, &mut tasks, &mut inflight, traced) {
                                    db.fail(&events, e.to_string());
                                }
                            } else {
                                // Started when a slot frees, or given back at shutdown.
                                match row_key(&row) {
                                    Ok(key) => local.push_back((key, row)),
                                    Err(e) => db.fail(&events, e.to_string()),
                                }
                            }
                        }
                    }
                    // The claimer reported the trouble and waited out its backoff.
                    Err(()) => {
                        want_claim = true;
                        starts.reset();
                    }
                }
            }
            },
            Some((n, retries)) = settled_rx.recv() => {
                unsettled = unsettled.saturating_sub(n);
                // Claim again when each retry is due, rather than at the next poll (a
                // moment later, so that the server's clock has passed it too).
                let now = tokio::time::Instant::now();
                for d in retries {
                    add_retry_wake(&mut retry_wakes, now + d + RETRY_WAKE_MARGIN, retry_wake_slack(d));
                }
            }
            () = async { if let Some(w) = retry_wakes.first() { tokio::time::sleep_until(*w).await } },
                if !retry_wakes.is_empty() => {
                let now = tokio::time::Instant::now();
                while retry_wakes.first().is_some_and(|w| *w <= now) {
                    retry_wakes.pop_first();
                }
                want_claim = true;
                wakes += 1;
                starts.reset();
            }
            Some(done) = joins.join_next_with_id(), if !joins.is_empty() => {
                let mut collect = |r: std::result::Result<(tokio::task::Id, Done), tokio::task::JoinError>| {
                    let mut d = match r {
                        Ok((task_id, d)) => {
                            tasks.remove(&task_id);
                            d
                        }
                        // A handler that panicked fails its attempt like an error would.
                        Err(e) => {
                            let Some((id, generation)) = tasks.remove(&e.id()) else { return };
                            let Some(f) = inflight.get(&(id, generation)) else { return };
                            Done {
                                id,
                                tid: f.tid,
                                cancelled: false,
                                by_claim: ByClaim::Leased,
                                generation,
                                task: f.task.clone(),
                                queue: f.queue.clone(),
                                attempt: f.attempt,
                                duration: Duration::ZERO,
                                outcome: Outcome::Failed(format!("handler panicked: {e}")),
                                meta: f.meta,
                                traceparent: Some(f.traceparent.clone()),
                            }
                        }
                    };
                    let key = (d.id, d.generation);
                    if let Some(f) = inflight.remove(&key) {
                        // Where the row is now (its lease may have moved it).
                        d.tid = f.tid;
                    }
                    if unrecorded.remove(&key) {
                        d.by_claim = ByClaim::Unrecorded;
                    }
                    ahead.ran(d.duration);
                    d.cancelled = cancelling.remove(&key);
                    unsettled += 1;
                    route(d, &mut provisional, &claimers, &settle_tx);
                };
                collect(done);
                while let Some(more) = joins.try_join_next_with_id() {
                    collect(more);
                }
                want_claim = true;
                wakes += 1;
            }
            Some(wake) = wake_rx.recv() => {
                let mut handle = |w: Wake| match w {
                    Wake::Enqueued => {
                        want_claim = true;
                        wakes += 1;
                        starts.reset();
                    }
                    Wake::Cancel(id) => {
                        for (key, f) in inflight.iter().filter(|(k, _)| k.0 == id) {
                            cancelling.insert(*key);
                            f.stop.cancel();
                        }
                        // Claimed ahead and not started: settle as cancelled right away.
                        while let Some(i) = local.iter().position(|(k, _)| k.0 == id) {
                            if let Some(((id, generation), row)) = local.remove(i) {
                                unsettled += 1;
                                route(Done {
                                    id,
                                    tid: None,
                                    cancelled: true,
                                    by_claim: ByClaim::Leased,
                                    generation,
                                    task: row.try_get(2).unwrap_or_default(),
                                    queue: Arc::from(row.try_get::<_, &str>(1).unwrap_or_default()),
                                    attempt: row.try_get(4).unwrap_or_default(),
                                    duration: Duration::ZERO,
                                    outcome: Outcome::Stopped,
                                    meta: None,
                                    traceparent: None,
                                }, &mut provisional, &claimers, &settle_tx);
                            }
                        }
                    }
                };
                handle(wake);
                while let Ok(w) = wake_rx.try_recv() {
                    handle(w);
                }
            }
            _ = poll.tick() => {
                want_claim = true;
                wakes += 1;
                starts.reset();
            }
            _ = renew.tick() => {
                if let Some(client) = db.client(&events).await {
                    let queued: Vec<Key> = local.iter().map(|(k, _)| *k).collect();
                    match bounded(renew_leases(client, worker_id, &inflight, &queued, &provisional, lease_secs)).await {
                        Ok((held, cancel)) => {
                            for key in cancel {
                                if let Some(f) = inflight.get(&key) {
                                    cancelling.insert(key);
                                    f.stop.cancel();
                                }
                            }
                            // Claimed ahead but taken over meanwhile: never start them.
                            local.retain(|(k, _)| held.contains(k) || provisional.contains_key(k));
                        }
                        Err(e) => db.fail(&events, e.to_string()),
                    }
                }
            }
            _ = reap.tick() => {
                if let Some(client) = db.client(&events).await {
                    match bounded(client.query(sql::REAP, &[&opts.queues, &worker_id])).await {
                        Ok(rows) => {
                            let mut finished = false;
                            for r in rows {
                                if let (Ok(id), Ok(status)) = (r.try_get(0), r.try_get::<_, String>(1)) {
                                    if status != "pending" {
                                        finished = true;
                                    }
                                    if status == "failed" {
                                        reaped_failed.push(FailedExecution {
                                            id,
                                            task: r.try_get(2).unwrap_or_default(),
                                            error: r.try_get::<_, Option<String>>(3).ok().flatten().unwrap_or_default(),
                                        });
                                    }
                                    events(Event::Reaped { id, status });
                                }
                            }
                            if finished && let Err(e) = client.execute(sql::NOTIFY_FINISHED, &[]).await {
                                db.fail(&events, e.to_string());
                            }
                            want_claim = true;
                            wakes += 1;
                            starts.reset();
                        }
                        Err(e) => db.fail(&events, e.to_string()),
                    }
                }
            }
            () = reconnect, if !db.up() => {}
        }
    }

    events(Event::Finishing);
    listener_stop.cancel();
    let abandoned = hard_stop.is_some_and(|d| tokio::time::Instant::now() >= d);
    for c in claimers {
        // A claimer finishes what it was told (executions to give back) and ends.
        drop(c.requests);
        if abandoned {
            c.task.abort();
        } else {
            // Past that, its give-backs are recovered when their leases expire.
            let _ = tokio::time::timeout(HARD_STOP, c.task).await;
        }
    }
    drop(settle_tx);
    let mut report = if hard_stop.is_some_and(|d| tokio::time::Instant::now() >= d) {
        settler.abort();
        events(Event::Abandoned {
            unsettled: unsettled + inflight.len(),
        });
        Report::default()
    } else {
        settler.await.unwrap_or_default()
    };
    report.failed.extend(reaped_failed);
    if let Some(client) = db.client(&events).await {
        let _ = client.execute(sql::WORKER_STOPPED, &[&worker_id]).await;
    }
    Ok(report)
}

/// Hands a finished attempt to whoever records it: the claimer whose claim's
/// transaction holds it (which then answers for it), or the settler. (The settler
/// outlives the worker's loop; a send fails only if it panicked, and then the lease
/// expiry recovers the execution.)
fn route(
    d: Done,
    provisional: &mut FastMap<Key, usize>,
    claimers: &[Claimer],
    settle: &tokio::sync::mpsc::UnboundedSender<Done>,
) {
    let d = match provisional
        .remove(&(d.id, d.generation))
        .and_then(|i| claimers.get(i))
    {
        Some(c) => match c.requests.send(ToClaimer::Done(d)) {
            Ok(()) => return,
            Err(tokio::sync::mpsc::error::SendError(ToClaimer::Done(d))) => d,
            Err(_) => return,
        },
        None => d,
    };
    let _ = settle.send(d);
}

/// Claimer tasks per worker (see [`claimer`]).
const CLAIMERS: usize = 2;

/// The fewest rows a claim asks for while another claim is under way, unless that one
/// has taken [`SIDE_CLAIM_AFTER`] already.
const MIN_SIDE_CLAIM: usize = 16;

/// How long a claim under way holds back a small claim beside it.
const SIDE_CLAIM_AFTER: Duration = Duration::from_millis(50);

/// One claimer task, as the worker's loop sees it.
struct Claimer {
    /// Claims to run, and the attempts of its open claim.
    requests: tokio::sync::mpsc::UnboundedSender<ToClaimer>,
    task: tokio::task::JoinHandle<()>,
    /// The claim it works on.
    running: Option<Asked>,
    /// Whether its last claim's transaction is still open (see [`Claimed`]).
    open: bool,
}

/// A claim asked of a claimer.
struct Asked {
    /// When it was asked for.
    at: Instant,
    /// The most executions it may claim.
    size: usize,
    /// Wake-ups seen when it was asked for.
    wakes: u64,
    /// [`ClaimStarts::resets`] when it was asked for.
    resets: u64,
    /// Whether it started at the beginning of every queue.
    from_start: bool,
}

/// How many executions to claim ahead of free slots on the worker's own account: as
/// many as its handlers are expected to finish while one claim is under way, from
/// moving averages of the two. With handlers much longer than a claim that is none, so
/// nothing waits claimed while another worker is free; with short ones, a slot that
/// frees starts the next execution at once, and claims come in fewer, larger batches.
#[derive(Debug, Default)]
struct ClaimAhead {
    /// Average claim time (request to answer), in seconds; 0 before the first.
    claim: f64,
    /// Average handler run time, in seconds; 0 before the first.
    run: f64,
}

impl ClaimAhead {
    /// Weight of each new sample in the averages.
    const WEIGHT: f64 = 0.05;

    fn average(avg: &mut f64, sample: Duration) {
        let x = sample.as_secs_f64();
        *avg = if *avg == 0.0 {
            x
        } else {
            *avg + Self::WEIGHT * (x - *avg)
        };
    }

    fn claimed(&mut self, took: Duration) {
        Self::average(&mut self.claim, took);
    }

    fn ran(&mut self, took: Duration) {
        // A handler that finished at once counts as a microsecond, so that the ratio
        // below stays finite.
        Self::average(&mut self.run, took.max(Duration::from_micros(1)));
    }

    /// Executions to hold claimed ahead with `concurrency` slots: slots × claim time /
    /// run time, rounded down, at most `concurrency`.
    fn target(&self, concurrency: usize) -> usize {
        if self.claim == 0.0 || self.run == 0.0 {
            return 0;
        }
        let n = (concurrency as f64 * self.claim / self.run).floor();
        if n >= concurrency as f64 {
            concurrency
        } else {
            // In range: 0 <= n < concurrency.
            n as usize
        }
    }
}

/// A position in the claim index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Position {
    priority: i32,
    run_at: chrono::DateTime<chrono::Utc>,
    id: Uuid,
}

/// How long claims may start past the beginning of a queue before one starts at the
/// beginning again: the most a due execution that appeared before the start (see
/// [`ClaimStarts`]) waits for a claim to see it.
const CLAIM_START_AGE: Duration = Duration::from_millis(50);

/// Where the next claim starts in the worker's queue (`None`: at the beginning).
/// Claimed rows leave dead entries at the front of the claim index until a vacuum, and
/// rows locked by claims still open stay there; starting where the last full claim
/// ended skips them.
///
/// Due executions can appear before that point: an enqueue with a smaller priority
/// number, or one that falls due later; a retry, a recovered execution, or a row
/// another worker held locked and gave back. So the starts go back to the beginning on
/// every enqueue notification, this worker's retries and recoveries, polls, after a
/// short claim or one that rolled back, and at least every [`CLAIM_START_AGE`].
///
/// Only a worker of one queue uses starts. With several, a claim locks up to its limit
/// in each queue and keeps the best across them: the rows it drops stay locked until
/// it commits, the other claimer passes over them, and a start taken from that claim
/// would leave them behind.
struct ClaimStarts {
    starts: Vec<Option<Position>>,
    /// How often the starts went back to the beginning: a claim asked for before the
    /// last reset does not move them forward again.
    resets: u64,
    /// When they last went back to the beginning.
    since: Instant,
}

impl ClaimStarts {
    fn new(queues: usize) -> Self {
        ClaimStarts {
            starts: vec![None; queues],
            resets: 0,
            since: Instant::now(),
        }
    }

    /// The starts for the next claim: from the beginning once they are
    /// [`CLAIM_START_AGE`] old.
    fn for_claim(&mut self) -> Vec<Option<Position>> {
        if self.hinted() && self.since.elapsed() >= CLAIM_START_AGE {
            self.reset();
        }
        self.starts.clone()
    }

    fn hinted(&self) -> bool {
        self.starts.iter().any(Option::is_some)
    }

    fn reset(&mut self) {
        self.starts.fill(None);
        self.resets += 1;
        self.since = Instant::now();
    }

    /// After a full claim asked for at `resets`, which claimed `lasts` last in each
    /// queue: each queue it claimed from starts there, or later. Everything before that
    /// row was dead, not due, or held by a claim (this one or another).
    fn advance(&mut self, resets: u64, lasts: &[Option<Position>]) {
        if resets != self.resets || self.starts.len() != 1 {
            return;
        }
        for (start, last) in self.starts.iter_mut().zip(lasts) {
            if let Some(l) = *last
                && start.is_none_or(|s| s < l)
            {
                *start = Some(l);
            }
        }
    }
}

/// The last claimed row of each queue (in the order of `queues`), by claim order.
fn last_positions(rows: &[tokio_postgres::Row], queues: &[String]) -> Vec<Option<Position>> {
    let mut lasts: Vec<Option<Position>> = vec![None; queues.len()];
    for row in rows {
        let (Ok(queue), Ok(priority), Ok(run_at), Ok(id)) = (
            row.try_get::<_, &str>(1),
            row.try_get(10),
            row.try_get(11),
            row.try_get(0),
        ) else {
            continue;
        };
        let Some(last) = queues
            .iter()
            .position(|q| q == queue)
            .and_then(|i| lasts.get_mut(i))
        else {
            continue;
        };
        let p = Position {
            priority,
            run_at,
            id,
        };
        if last.is_none_or(|l| p > l) {
            *last = Some(p);
        }
    }
    lasts
}

/// What the claimer claims with.
struct ClaimQuery {
    worker_id: Uuid,
    queues: Vec<String>,
    tasks: Option<Vec<String>>,
    lease_secs: f64,
    /// See [`WorkerOptions::claim_window`].
    window: Duration,
    telemetry: crate::telemetry::Hooks,
}

/// How often the queue-depth gauge's counts are refreshed.
const QUEUE_DEPTH_EVERY: Duration = Duration::from_secs(10);

/// Counts the queues' pending and running executions for the queue-depth gauge, at
/// once and then every [`QUEUE_DEPTH_EVERY`], on a connection of its own, until `stop`.
async fn count_queues(
    mut db: Db,
    queues: Vec<String>,
    telemetry: crate::telemetry::Hooks,
    stop: CancellationToken,
    events: EventSink,
) {
    loop {
        if let Some(client) = db.client(&events).await {
            match bounded(client.query(sql::QUEUE_DEPTH, &[&queues])).await {
                Ok(rows) => {
                    for r in rows {
                        let (Ok(queue), Ok(status), Ok(count)) = (
                            r.try_get::<_, String>(0),
                            r.try_get::<_, String>(1),
                            r.try_get::<_, i64>(2),
                        ) else {
                            continue;
                        };
                        telemetry.event(&TelemetryEvent::QueueDepth {
                            queue: &queue,
                            status: &status,
                            count,
                        });
                    }
                }
                Err(e) => db.fail(&events, e),
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(QUEUE_DEPTH_EVERY) => {}
        }
    }
}

/// A claimer's answer: the claimed rows and whether the claim's time is a sample of
/// claim times (`false` when it also covered connecting and preparing), or `Err` after
/// database trouble.
type ClaimAnswer = std::result::Result<(Vec<tokio_postgres::Row>, bool), ()>;

/// What a claimer tells the worker's loop.
enum Claimed {
    /// The answer to a claim. Rows, when there are any, are locked in the claimer's
    /// open transaction: their attempts go to the claimer (see [`ToClaimer::Done`])
    /// until it reports [`Claimed::Ended`].
    Rows(ClaimAnswer),
    /// The claim's transaction ended. `leased`: the executions of the claim that had
    /// not finished (or not started), now leased to this worker, with their rows' new
    /// addresses. `unrecorded`: those the transaction could not record (it failed, so
    /// the rows are as they were before the claim and other workers may claim them):
    /// their handlers are stopped and never settle.
    Ended {
        leased: Vec<(Key, Tid)>,
        unrecorded: Vec<Key>,
    },
}

/// What the worker's loop tells a claimer.
// Mostly `Done`s, one per execution: boxing them would allocate for each to save space on
// the rare others.
#[allow(clippy::large_enum_variant)]
enum ToClaimer {
    /// Claim at most this many executions, each queue from this position.
    Claim(usize, Vec<Option<Position>>),
    /// A finished attempt of the claim whose transaction is open (one that comes after
    /// the transaction ended is passed on to the settler).
    Done(Done),
    /// An execution of the open claim that the worker will not run: it is running here
    /// already under the same key, from an earlier claim whose transaction was lost
    /// without the worker knowing yet (nothing of it was written, so the new claim
    /// computed the same lease generation). Left unrecorded, so that it is claimed
    /// again once the earlier attempt is gone; given back if it was leased already.
    Skip(Key),
}

/// The default [`WorkerOptions::claim_window`]: long enough for short handlers to finish
/// in (and in-process ones started from a large claim), short enough that a claimer
/// is soon free again.
const CLAIM_WINDOW: Duration = Duration::from_millis(10);

/// Claims on request, on a connection of its own, so that the worker's loop never
/// waits for a claim. Answers every request: the rows, or `Err` after reporting the
/// trouble and waiting out the reconnect backoff. A claim that found rows keeps its
/// transaction open for up to [`CLAIM_WINDOW`], collecting the attempts that finish,
/// then records them all with one statement and commits, and reports the end.
async fn claimer(
    index: usize,
    mut db: Db,
    q: ClaimQuery,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<ToClaimer>,
    answers: tokio::sync::mpsc::UnboundedSender<(usize, Claimed)>,
    settle: tokio::sync::mpsc::UnboundedSender<Done>,
    events: EventSink,
) {
    // What the last claim's transaction did with the attempts that had not finished in
    // its window: leased (at this address), or not recorded. Their `Done`s can still
    // come here until the worker's loop has heard of the end.
    let mut fates: FastMap<Key, Option<Tid>> = FastMap::default();
    let pass_on = |mut d: Done, fates: &FastMap<Key, Option<Tid>>| {
        match fates.get(&(d.id, d.generation)) {
            Some(Some(tid)) => d.tid = Some(*tid),
            Some(None) => d.by_claim = ByClaim::Unrecorded,
            None => {}
        }
        let _ = settle.send(d);
    };
    while let Some(request) = requests.recv().await {
        let (n, starts) = match request {
            ToClaimer::Claim(n, starts) => (n, starts),
            ToClaimer::Done(d) => {
                pass_on(d, &fates);
                continue;
            }
            ToClaimer::Skip(key) => {
                give_back(&mut db, &q, key, &events).await;
                continue;
            }
        };
        let limit = i64::try_from(n).unwrap_or(i64::MAX);
        let priorities: Vec<Option<i32>> = starts.iter().map(|s| s.map(|p| p.priority)).collect();
        let run_ats: Vec<Option<chrono::DateTime<chrono::Utc>>> =
            starts.iter().map(|s| s.map(|p| p.run_at)).collect();
        let ids: Vec<Option<Uuid>> = starts.iter().map(|s| s.map(|p| p.id)).collect();
        // The first claim on a connection also prepares its statement: its time says
        // nothing about the claims after it.
        let warm = db.up();
        let rows = match db.session(&events).await {
            Some(mut session) => {
                let started = Instant::now();
                let params: [&(dyn ToSql + Sync); 6] =
                    [&q.queues, &limit, &q.tasks, &priorities, &run_ats, &ids];
                let claimed = match bounded(session.begin_query(sql::CLAIM, &params)).await {
                    Ok(rows) if rows.is_empty() => bounded(session.client.batch_execute("commit"))
                        .await
                        .map(|()| rows),
                    answer => answer,
                };
                if let Ok(rows) = &claimed {
                    q.telemetry.event(&TelemetryEvent::Fetch {
                        queues: &q.queues,
                        count: rows.len(),
                        duration: started.elapsed(),
                    });
                }
                claimed
            }
            None => Err(String::new()),
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                if !e.is_empty() {
                    // Dropping the connection rolls back whatever the claim began.
                    db.fail(&events, e);
                }
                tokio::time::sleep_until(db.retry_at.into()).await;
                if answers.send((index, Claimed::Rows(Err(())))).is_err() {
                    return;
                }
                continue;
            }
        };
        if rows.is_empty() {
            if answers
                .send((index, Claimed::Rows(Ok((rows, warm)))))
                .is_err()
            {
                return;
            }
            continue;
        }
        // Each claimed attempt: its row's address and span id, by key.
        let mut claimed: FastMap<Key, (Tid, String)> = FastMap::default();
        for row in &rows {
            if let (Ok(key), Ok(span), Ok(tid)) = (
                row_key(row),
                row.try_get::<_, String>(8),
                row.try_get::<_, Tid>(13),
            ) {
                claimed.insert(key, (tid, span));
            }
        }
        if answers
            .send((index, Claimed::Rows(Ok((rows, warm)))))
            .is_err()
        {
            return;
        }
        let epoch = db.epoch;
        // Collect what finishes within the window.
        let mut finished: Vec<Done> = Vec::new();
        // Skips that name no execution of this claim (so one leased before): given back
        // once it is recorded, not inside its transaction.
        let mut skipped: Vec<Key> = Vec::new();
        let window = tokio::time::sleep(q.window);
        tokio::pin!(window);
        while finished.len() < claimed.len() {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(ToClaimer::Done(d)) if claimed.contains_key(&(d.id, d.generation)) => {
                        finished.push(d);
                    }
                    Some(ToClaimer::Done(d)) => pass_on(d, &fates),
                    Some(ToClaimer::Skip(key)) => {
                        if claimed.remove(&key).is_none() {
                            skipped.push(key);
                        }
                    }
                    // Never while a transaction is open; and the loop has ended.
                    Some(ToClaimer::Claim(..)) | None => break,
                },
                () = &mut window => break,
            }
        }
        let ended = record_claim(&mut db, &q, epoch, &claimed, &mut finished, &events).await;
        for d in finished {
            let _ = settle.send(d);
        }
        fates.clear();
        if let Claimed::Ended { leased, unrecorded } = &ended {
            fates.extend(leased.iter().map(|(k, t)| (*k, Some(*t))));
            fates.extend(unrecorded.iter().map(|k| (*k, None)));
        }
        // Before the end is told: the worker's loop may finish right after it.
        for key in skipped {
            give_back(&mut db, &q, key, &events).await;
        }
        if answers.send((index, ended)).is_err() {
            return;
        }
    }
}

/// Gives back an execution a claim leased to this worker that it did not start (see
/// [`ToClaimer::Skip`]). If the database is away, the lease expires and a worker
/// recovers it.
async fn give_back(db: &mut Db, q: &ClaimQuery, key: Key, events: &EventSink) {
    if let Some(mut session) = db.session(events).await
        && let Err(e) =
            bounded(session.query(sql::UNCLAIM, &[&q.worker_id, &vec![key.0], &vec![key.1]])).await
    {
        db.fail(events, e);
    }
}

/// Records the attempts of a claim whose transaction is open and commits it: those in
/// `finished` that completed, as completed (marked so that the settler only reports
/// them); the rest of `claimed`, as leased (`finished` entries get their rows' new
/// addresses). On failure the connection is dropped, which rolls the claim back.
async fn record_claim(
    db: &mut Db,
    q: &ClaimQuery,
    epoch: u64,
    claimed: &FastMap<Key, (Tid, String)>,
    finished: &mut [Done],
    events: &EventSink,
) -> Claimed {
    let mut done = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut completed: FastSet<Key> = FastSet::default();
    for d in finished.iter() {
        let key = (d.id, d.generation);
        if let (Outcome::Completed(result), false, Some((tid, span))) =
            (&d.outcome, d.cancelled, claimed.get(&key))
        {
            completed.insert(key);
            done.0.push(*tid);
            done.1.push(d.id);
            done.2.push(span.as_str());
            // As the settler stores results (see `settle_all`).
            done.3
                .push(result.as_deref().filter(|r| crate::jsonb::check(r).is_ok()));
        }
    }
    let mut lease = (Vec::new(), Vec::new(), Vec::new());
    for (key, (tid, span)) in claimed {
        if !completed.contains(key) {
            lease.0.push(*tid);
            lease.1.push(key.0);
            lease.2.push(span.as_str());
        }
    }
    // Only on the claim's own connection: a new one would not be in its transaction.
    let session = db.session_on(epoch);
    let sent = session.is_some();
    let recorded = match session {
        Some(mut session) => {
            let params: [&(dyn ToSql + Sync); 9] = [
                &q.worker_id,
                &q.lease_secs,
                &done.0,
                &done.1,
                &done.2,
                &done.3,
                &lease.0,
                &lease.1,
                &lease.2,
            ];
            match bounded(session.query_commit(sql::SETTLE_CLAIMED, &params)).await {
                Ok(rows) => recorded_claim(rows.first()).map_err(|e| e.to_string()),
                Err(e) => Err(e),
            }
        }
        // Connection lost since the claim: its transaction is gone.
        None => Err("connection lost while a claim was open".to_string()),
    };
    let (settled, leased) = match recorded {
        Ok(r) => r,
        Err(e) => {
            let backend = db.backend;
            db.fail(events, e);
            // Sent, the commit may have gone through before the error: ask.
            let asked = match sent {
                true => claim_recorded(db, backend, claimed, events).await,
                false => None,
            };
            asked.unwrap_or_default()
        }
    };
    for d in finished.iter_mut() {
        if settled.contains(&d.id) {
            d.by_claim = ByClaim::Completed;
        } else if let Some(tid) = leased.get(&d.id) {
            d.tid = Some(*tid);
        } else {
            d.by_claim = ByClaim::Unrecorded;
        }
    }
    let ended: FastSet<Key> = finished.iter().map(|d| (d.id, d.generation)).collect();
    let mut out = (Vec::new(), Vec::new());
    for key in claimed.keys().filter(|k| !ended.contains(k)) {
        match leased.get(&key.0) {
            Some(tid) => out.0.push((*key, *tid)),
            None => out.1.push(*key),
        }
    }
    Claimed::Ended {
        leased: out.0,
        unrecorded: out.1,
    }
}

/// After a failed [`sql::SETTLE_CLAIMED`]: what its transaction recorded after all, read
/// on a new connection once the reconnect backoff has passed and the claim's backend
/// has been ended (see [`sql::CLAIM_RECORDED`]). `None` when that fails too: the claim then counts as not
/// recorded, and what it did record is recovered as any lost lease is.
async fn claim_recorded(
    db: &mut Db,
    backend: Option<(i32, chrono::DateTime<chrono::Utc>)>,
    claimed: &FastMap<Key, (Tid, String)>,
    events: &EventSink,
) -> Option<(FastSet<Uuid>, FastMap<Uuid, Tid>)> {
    tokio::time::sleep_until(db.retry_at.into()).await;
    let mut session = db.session(events).await?;
    // The claim's backend may still be at work on it (its answer lost, not its
    // connection): end it first, so that what is read is final. Without it (an old
    // server, no permission), what it commits later is recovered as a lost lease.
    if let Some((pid, started)) = backend {
        let _ = bounded(session.client.execute(sql::END_BACKEND, &[&pid, &started])).await;
    }
    let (ids, spans): (Vec<Uuid>, Vec<&str>) =
        claimed.iter().map(|(k, (_, s))| (k.0, s.as_str())).unzip();
    let rows = match bounded(session.query(sql::CLAIM_RECORDED, &[&ids, &spans])).await {
        Ok(rows) => rows,
        Err(e) => {
            db.fail(events, e);
            return None;
        }
    };
    let mut out = (FastSet::default(), FastMap::default());
    for r in rows {
        let (Ok(id), Ok(status), Ok(tid)) = (
            r.try_get(0),
            r.try_get::<_, &str>(1),
            r.try_get::<_, Tid>(2),
        ) else {
            continue;
        };
        match status {
            "completed" => {
                out.0.insert(id);
            }
            "running" => {
                out.1.insert(id, tid);
            }
            _ => {}
        }
    }
    Some(out)
}

/// The ids [`sql::SETTLE_CLAIMED`] finished, and those it leased with their addresses.
fn recorded_claim(
    row: Option<&Row>,
) -> std::result::Result<(FastSet<Uuid>, FastMap<Uuid, Tid>), tokio_postgres::Error> {
    let Some(row) = row else {
        return Ok(Default::default());
    };
    let finished: Vec<Uuid> = row.try_get::<_, Option<Vec<Uuid>>>(0)?.unwrap_or_default();
    let leased: Vec<Uuid> = row.try_get::<_, Option<Vec<Uuid>>>(1)?.unwrap_or_default();
    let tids: Vec<Tid> = row.try_get::<_, Option<Vec<Tid>>>(2)?.unwrap_or_default();
    Ok((
        finished.into_iter().collect(),
        leased.into_iter().zip(tids).collect(),
    ))
}

/// Settles finished attempts as they come, in batches of whatever has arrived, and
/// reports each settled batch's size back. Keeps a batch across database trouble
/// (fencing makes a repeat safe) and returns the run's report once the worker hangs up
/// and everything is settled.
async fn settler(
    mut db: Db,
    worker_id: Uuid,
    opts: WorkerOptions,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Done>,
    settled: tokio::sync::mpsc::UnboundedSender<(usize, Vec<Duration>)>,
    events: EventSink,
) -> Report {
    const MAX_BATCH: usize = 2000;
    let mut report = Report::default();
    let mut buf: Vec<Done> = Vec::new();
    // Whether `buf` is a batch being sent again after an error.
    let mut again = false;
    loop {
        if buf.is_empty() {
            match rx.recv().await {
                Some(d) => buf.push(d),
                None => break,
            }
        }
        while buf.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(d) => buf.push(d),
                Err(_) => break,
            }
        }
        let n = buf.len();
        if let Some(mut session) = db.session(&events).await {
            let started = Instant::now();
            // A batch cut short by the query timeout is undone like a failed one.
            let mark = report.mark();
            match bounded(settle_all(
                &mut session,
                worker_id,
                &opts,
                &mut buf,
                &mut report,
                &events,
                again,
            ))
            .await
            {
                Ok(next_retry) => {
                    again = false;
                    opts.telemetry.event(&TelemetryEvent::Flush {
                        count: n,
                        duration: started.elapsed(),
                    });
                    let _ = settled.send((n, next_retry));
                }
                Err(e) => {
                    report.rewind(mark);
                    // The batch's commit may have gone through before the error (it
                    // is pipelined with the statement): the next try accepts that.
                    again = true;
                    db.fail(&events, e.to_string());
                }
            }
        }
        if !buf.is_empty() {
            tokio::time::sleep_until(db.retry_at.into()).await;
        }
    }
    report
}

/// The (id, generation) of a claimed row.
fn row_key(row: &tokio_postgres::Row) -> std::result::Result<Key, tokio_postgres::Error> {
    Ok((row.try_get(0)?, row.try_get(7)?))
}

/// Starts a claimed row's handler and tracks it.
fn launch(
    row: &tokio_postgres::Row,
    handlers: &Handlers,
    joins: &mut JoinSet<Done>,
    tasks: &mut FastMap<tokio::task::Id, Key>,
    inflight: &mut FastMap<Key, InFlight>,
    traced: bool,
) -> std::result::Result<(), tokio_postgres::Error> {
    let (key, task_id, flight) = start(row, handlers, joins, traced)?;
    tasks.insert(task_id, key);
    inflight.insert(key, flight);
    Ok(())
}

/// Starts the handler for one claimed row. `traced`: keep what the attempt's live span
/// needs (nothing is kept when no telemetry is configured).
fn start(
    row: &tokio_postgres::Row,
    handlers: &Handlers,
    joins: &mut JoinSet<Done>,
    traced: bool,
) -> std::result::Result<(Key, tokio::task::Id, InFlight), tokio_postgres::Error> {
    let id: Uuid = row.try_get(0)?;
    let queue: String = row.try_get(1)?;
    let task: String = row.try_get(2)?;
    let payload: String = row.try_get(3)?;
    let attempt: i32 = row.try_get(4)?;
    let max_attempts: i32 = row.try_get(5)?;
    // The stored carrier's fields (null unless strings).
    let stored_traceparent: Option<&str> = row.try_get(6)?;
    let stored_tracestate: Option<&str> = row.try_get(12)?;
    let generation: i32 = row.try_get(7)?;
    let span: String = row.try_get(8)?;
    let parent_execution_id: Option<Uuid> = row.try_get(9)?;
    let tid: Option<Tid> = row.try_get(13)?;
    let producer = stored_traceparent.and_then(|s| TraceParent::parse(s).ok());
    let span_id = SpanId::from_hex(&span).unwrap_or(SpanId::INVALID);
    let (traceparent, tracestate) = attempt_context(producer.as_ref(), stored_tracestate, span_id);
    let attempt_tp: Arc<str> = Arc::from(traceparent.as_str());
    let queue_name: Arc<str> = Arc::from(queue.as_str());
    let meta = traced.then(|| AttemptMeta {
        parent_execution_id,
        producer,
        span_id,
        started: chrono::Utc::now(),
    });
    let job = Job {
        execution_id: id,
        task: task.clone(),
        queue,
        payload,
        attempt,
        max_attempts,
        traceparent,
        tracestate,
    };
    let stop = CancellationToken::new();
    let handler = handlers.get(&task).cloned();
    let token = stop.clone();
    let task_name = task.clone();
    let done_meta = meta;
    let done_tp = attempt_tp.clone();
    let done_queue = queue_name.clone();
    let spawned = joins.spawn(async move {
        let started = Instant::now();
        let outcome = match handler {
            Some(h) => h.run(job, token).await,
            // Claims are filtered by handler, so this only happens if a handler was
            // removed between claim and start; give the attempt back.
            None => Outcome::TempFail(format!("no handler for task {task_name}")),
        };
        Done {
            id,
            tid,
            cancelled: false,
            by_claim: ByClaim::Leased,
            generation,
            task: task_name,
            queue: done_queue,
            attempt,
            duration: started.elapsed(),
            outcome,
            meta: done_meta,
            traceparent: Some(done_tp),
        }
    });
    Ok((
        (id, generation),
        spawned.id(),
        InFlight {
            task,
            tid,
            queue: queue_name,
            attempt,
            stop,
            meta,
            traceparent: attempt_tp,
        },
    ))
}

/// The handler's trace context: the execution's trace id and flags (the defined ones)
/// with this attempt's span id, and the stored tracestate. Rows written by other
/// producers are held to the rules a caller's context is: a malformed stored carrier
/// gets a trace of its own and no tracestate, and a malformed tracestate is dropped.
fn attempt_context(
    stored: Option<&TraceParent>,
    stored_tracestate: Option<&str>,
    span_id: SpanId,
) -> (String, Option<String>) {
    let tp = match stored {
        Some(p) => TraceParent::new(p.trace_id, span_id, p.flags.defined()),
        None => TraceParent::new(new_trace_id(), span_id, TraceFlags::SAMPLED),
    };
    let tracestate = stored
        .and(stored_tracestate)
        .filter(|s| TraceState::parse(s).is_ok_and(|state| !state.is_empty()))
        .map(str::to_string);
    (tp.to_string(), tracestate)
}

/// How long after a retry's due time the worker claims it, at least.
const RETRY_WAKE_MARGIN: Duration = Duration::from_millis(5);

/// How much later than due a retry `d` away may be claimed, to share a wake-up planned
/// already: 10 ms, or a hundredth of the delay when that is longer, so that retries
/// spread by jitter over up to the hour of the backoff's cap make a few hundred
/// wake-ups at most, not one each.
fn retry_wake_slack(d: Duration) -> Duration {
    (d / 100).max(Duration::from_millis(10))
}

/// Plans a claim at `at`, unless one is planned already at most `slack` after it; none
/// comes before its retry is due.
fn add_retry_wake(
    wakes: &mut std::collections::BTreeSet<tokio::time::Instant>,
    at: tokio::time::Instant,
    slack: Duration,
) {
    if wakes.range(at..=at + slack).next().is_none() {
        wakes.insert(at);
    }
}

/// Settles every finished attempt in `buf`, in one transaction: at most four statements
/// (completed, failed, released, cancelled). On error nothing is settled and the buffer
/// is kept for the next try (the caller rewinds the report; `again` tells that this is
/// such a try). Returns how soon each retry or release it scheduled is due.
async fn settle_all(
    session: &mut Session<'_>,
    worker_id: Uuid,
    opts: &WorkerOptions,
    buf: &mut Vec<Done>,
    report: &mut Report,
    events: &EventSink,
    again: bool,
) -> std::result::Result<Vec<Duration>, tokio_postgres::Error> {
    // What happened to each execution is told once the batch has committed: a batch
    // that fails and is sent again tells it once, after the try that settled it.
    let sink = events;
    let mut held: Vec<Event> = Vec::new();
    let mut events = |e: Event| held.push(e);
    let mut next_retry: Vec<Duration> = Vec::new();
    let mut complete = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut cancelled = (Vec::new(), Vec::new());
    let mut fail: FailBatch = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut release = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // Recorded by their claim's transaction: only reported here.
    let mut finished: Vec<Uuid> = Vec::new();
    for d in buf.iter() {
        match &d.outcome {
            Outcome::Completed(_) if d.by_claim == ByClaim::Completed => finished.push(d.id),
            _ if d.by_claim == ByClaim::Unrecorded => {}
            Outcome::Completed(result) => {
                complete.0.push(d.id);
                complete.1.push(d.generation);
                complete.3.push(d.tid);
                // A result jsonb cannot store (\u0000, numbers outside numeric) would fail
                // the whole batch: it is not stored, like stdout that is not JSON.
                complete
                    .2
                    .push(result.clone().filter(|r| crate::jsonb::check(r).is_ok()));
            }
            Outcome::Failed(error) | Outcome::TimedOut(error) => {
                let kind = if matches!(d.outcome, Outcome::TimedOut(_)) {
                    "timed_out"
                } else {
                    "failed"
                };
                fail.0.push(d.id);
                fail.1.push(d.generation);
                fail.2.push(storable_text(error));
                fail.3.push(kind.to_string());
                fail.4.push(opts.backoff(d.attempt).as_secs_f64());
            }
            Outcome::TempFail(reason) => {
                release.0.push(d.id);
                release.1.push(d.generation);
                release.2.push(storable_text(reason));
                release.3.push(opts.backoff(1).as_secs_f64());
            }
            Outcome::Stopped if d.cancelled => {
                cancelled.0.push(d.id);
                cancelled.1.push(d.generation);
            }
            Outcome::Stopped => {
                release.0.push(d.id);
                release.1.push(d.generation);
                release
                    .2
                    .push("stopped by the worker (shutdown)".to_string());
                release.3.push(0.0f64);
            }
        }
    }
    let by_id: FastMap<Uuid, &Done> = buf.iter().map(|d| (d.id, d)).collect();
    // Each settled attempt's live span (built only when something records spans).
    let traced = opts.telemetry.wants_spans();
    // Reported once the whole batch has committed, so that a batch retried after a
    // failure reports each attempt once.
    let mut outcomes: Vec<(Uuid, &'static str, Option<String>, &'static str)> = Vec::new();
    let mut retries: FastMap<Uuid, Duration> = FastMap::default();
    let mut emit = |id: Uuid, outcome: &'static str, message: Option<String>, status: &str| {
        let status = match status {
            "pending" => "pending",
            "failed" => "failed",
            "completed" => "completed",
            "cancelled" => "cancelled",
            _ => "running",
        };
        outcomes.push((id, outcome, message, status));
    };
    // Everything commits together, so that a batch repeated after an error (the
    // connection lost, the query timing out) settles nothing twice. Completions alone
    // (the common case) are one statement, sent with its begin and commit at once
    // instead of in three round trips; as the commit may then have gone through before
    // the error, a repeated batch (`again`) asks which of its executions are completed
    // under the lease it holds, and counts those as settled. (Failures, releases and
    // cancellations commit only after their statements answered: an error on that
    // commit itself is the one case left in which the repeat reports them as lost.)
    let single = fail.0.is_empty() && release.0.is_empty() && cancelled.0.is_empty();
    if !single {
        session.client.batch_execute("begin").await?;
    }
    let mut finished_other = false;
    let mut settled: FastSet<Uuid> = FastSet::default();
    if !complete.0.is_empty() {
        let params: [&(dyn ToSql + Sync); 5] = [
            &worker_id,
            &complete.0,
            &complete.1,
            &complete.2,
            &complete.3,
        ];
        let rows = if single {
            session.query_in_transaction(sql::COMPLETE, &params).await?
        } else {
            session.query(sql::COMPLETE, &params).await?
        };
        let mut ids: Vec<Uuid> = match rows.first() {
            Some(r) => r.try_get::<_, Option<Vec<Uuid>>>(0)?.unwrap_or_default(),
            None => Vec::new(),
        };
        if again && ids.len() < complete.0.len() {
            // The batch's first try may have committed before its error: those count as
            // settled by this worker (they notified waiters then).
            let fresh: FastSet<Uuid> = ids.iter().copied().collect();
            let (rest, generations): (Vec<Uuid>, Vec<i32>) = complete
                .0
                .iter()
                .zip(&complete.1)
                .filter(|(id, _)| !fresh.contains(id))
                .map(|(id, g)| (*id, *g))
                .unzip();
            for r in session
                .query(sql::COMPLETED_UNDER, &[&rest, &generations])
                .await?
            {
                ids.push(r.try_get(0)?);
            }
        }
        finished.extend(ids);
    }
    for id in finished {
        settled.insert(id);
        report.completed += 1;
        emit(id, "completed", None, "completed");
        if let Some(d) = by_id.get(&id) {
            events(Event::Completed {
                id,
                task: d.task.clone(),
                traceparent: d.traceparent.as_deref().map(str::to_string),
                attempt: d.attempt,
                duration: d.duration,
            });
        }
    }
    if !fail.0.is_empty() {
        let rows = session
            .query(
                sql::FAIL,
                &[&worker_id, &fail.0, &fail.1, &fail.2, &fail.3, &fail.4],
            )
            .await?;
        for r in rows {
            let id: Uuid = r.try_get(0)?;
            let status: String = r.try_get(1)?;
            settled.insert(id);
            let Some(d) = by_id.get(&id) else { continue };
            let error = match &d.outcome {
                Outcome::Failed(e) | Outcome::TimedOut(e) => e.clone(),
                _ => String::new(),
            };
            let pos = fail.0.iter().position(|x| *x == id).unwrap_or(0);
            finished_other |= status != "pending";
            if status == "cancelled" {
                emit(id, "cancelled", Some("cancelled".into()), "cancelled");
                report.cancelled += 1;
                events(Event::Cancelled {
                    id,
                    task: d.task.clone(),
                    traceparent: d.traceparent.as_deref().map(str::to_string),
                });
                continue;
            }
            let kind = if matches!(d.outcome, Outcome::TimedOut(_)) {
                "timed_out"
            } else {
                "failed"
            };
            emit(id, kind, Some(error.clone()), &status);
            let retry_in = (status == "pending")
                .then(|| Duration::from_secs_f64(fail.4.get(pos).copied().unwrap_or(0.0)));
            if let Some(d) = retry_in {
                next_retry.push(d);
                retries.insert(id, d);
                report.retried += 1;
            } else {
                report.failed.push(FailedExecution {
                    id,
                    task: d.task.clone(),
                    error: error.clone(),
                });
            }
            events(Event::Failed {
                id,
                task: d.task.clone(),
                traceparent: d.traceparent.as_deref().map(str::to_string),
                attempt: d.attempt,
                error,
                retry_in,
            });
        }
    }
    if !release.0.is_empty() {
        let rows = session
            .query(
                sql::RELEASE,
                &[&worker_id, &release.0, &release.1, &release.2, &release.3],
            )
            .await?;
        for r in rows {
            let id: Uuid = r.try_get(0)?;
            settled.insert(id);
            if r.try_get::<_, String>(1)? == "cancelled" {
                emit(id, "cancelled", Some("cancelled".into()), "cancelled");
                finished_other = true;
                report.cancelled += 1;
                if let Some(d) = by_id.get(&id) {
                    events(Event::Cancelled {
                        id,
                        task: d.task.clone(),
                        traceparent: d.traceparent.as_deref().map(str::to_string),
                    });
                }
                continue;
            }
            report.released += 1;
            if let Some(pos) = release.0.iter().position(|x| *x == id) {
                let d = Duration::from_secs_f64(release.3.get(pos).copied().unwrap_or(0.0));
                next_retry.push(d);
            }
            if let Some(d) = by_id.get(&id) {
                let reason = match &d.outcome {
                    Outcome::TempFail(r) => r.clone(),
                    _ => "shutdown".to_string(),
                };
                emit(id, "released", Some(reason.clone()), "pending");
                events(Event::Released {
                    id,
                    task: d.task.clone(),
                    traceparent: d.traceparent.as_deref().map(str::to_string),
                    reason,
                });
            }
        }
    }
    if !cancelled.0.is_empty() {
        let rows = session
            .query(
                sql::SETTLE_CANCELLED,
                &[&worker_id, &cancelled.0, &cancelled.1],
            )
            .await?;
        for r in rows {
            let id: Uuid = r.try_get(0)?;
            settled.insert(id);
            finished_other = true;
            report.cancelled += 1;
            emit(id, "cancelled", Some("cancelled".into()), "cancelled");
            if let Some(d) = by_id.get(&id) {
                events(Event::Cancelled {
                    id,
                    task: d.task.clone(),
                    traceparent: d.traceparent.as_deref().map(str::to_string),
                });
            }
        }
    }
    // Anything finished (not merely retried or released): wake `--wait` and `cancel`.
    // Anything finished besides completions (COMPLETE notifies by itself): wake waiters.
    if finished_other {
        session.client.execute(sql::NOTIFY_FINISHED, &[]).await?;
    }
    let unsettled_ids: Vec<Uuid> = buf
        .iter()
        .filter(|d| !settled.contains(&d.id))
        .map(|d| d.id)
        .collect();
    for id in unsettled_ids {
        emit(
            id,
            "lost",
            Some("lease taken over by another worker".into()),
            "running",
        );
    }
    if !single {
        session.client.batch_execute("commit").await?;
    }
    for (id, outcome, message, status) in outcomes {
        let Some(d) = by_id.get(&id) else { continue };
        opts.telemetry.event(&TelemetryEvent::Execution {
            queue: &d.queue,
            task: &d.task,
            execution_id: d.id,
            attempt: d.attempt,
            duration: d.duration,
            status: outcome,
            error: message.as_deref(),
            retry_in: retries.get(&id).copied(),
        });
        if traced && let Some(parts) = d.span(outcome, message, status) {
            opts.telemetry.attempt(parts);
        }
    }
    for d in buf.iter().filter(|d| !settled.contains(&d.id)) {
        report.leases_lost += 1;
        events(Event::LeaseLost {
            id: d.id,
            task: d.task.clone(),
            traceparent: d.traceparent.as_deref().map(str::to_string),
        });
    }
    buf.clear();
    for e in held {
        sink(e);
    }
    Ok(next_retry)
}

/// Text PostgreSQL's `text` can hold: without NUL characters.
fn storable_text(s: &str) -> String {
    if s.contains('\0') {
        s.replace('\0', "")
    } else {
        s.to_string()
    }
}

type FailBatch = (Vec<Uuid>, Vec<i32>, Vec<String>, Vec<String>, Vec<f64>);

/// Extends the leases of the running handlers and stops those whose lease was taken
/// over. Returns the attempts `pgc cancel` asked to stop.
async fn renew_leases(
    client: &Client,
    worker_id: Uuid,
    inflight: &FastMap<Key, InFlight>,
    queued: &[Key],
    provisional: &FastMap<Key, usize>,
    lease_secs: f64,
) -> std::result::Result<(std::collections::HashSet<Key>, Vec<Key>), tokio_postgres::Error> {
    client.execute(sql::WORKER_HEARTBEAT, &[&worker_id]).await?;
    // Those whose claim is still open hold no lease yet (their rows are locked).
    let keys: Vec<Key> = inflight
        .keys()
        .chain(queued)
        .filter(|k| !provisional.contains_key(k))
        .copied()
        .collect();
    if keys.is_empty() {
        return Ok(Default::default());
    }
    let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let generations: Vec<i32> = keys.iter().map(|k| k.1).collect();
    let rows = client
        .query(sql::RENEW, &[&worker_id, &ids, &generations, &lease_secs])
        .await?;
    let mut held = std::collections::HashSet::new();
    let mut cancel = Vec::new();
    for r in &rows {
        let key: Key = (r.try_get(0)?, r.try_get(1)?);
        if r.try_get::<_, bool>(2)? {
            cancel.push(key);
        }
        held.insert(key);
    }
    // A lease taken over: stop the handler. Its settle is then fenced out and reported
    // as a lost lease.
    for (key, f) in inflight {
        if !held.contains(key) && !provisional.contains_key(key) {
            f.stop.cancel();
        }
    }
    Ok((held, cancel))
}

/// Why the listener woke the worker.
enum Wake {
    /// Work was enqueued on one of our queues (or the listener reconnected).
    Enqueued,
    /// `pgc cancel` asked to stop this execution.
    Cancel(Uuid),
}

/// Keeps a LISTEN connection open and turns notifications into wake-ups: enqueues on
/// our queues and cancellations. Reconnects with backoff and wakes the worker after
/// each reconnect (notifications sent while it was away are lost, the rows are not;
/// lease renewal catches lost cancellations).
async fn listen(
    conn: ConnectOptions,
    queues: Vec<String>,
    wake: tokio::sync::mpsc::UnboundedSender<Wake>,
    stop: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let mut ready = Some(ready);
    let mut backoff = Duration::from_millis(100);
    while !stop.is_cancelled() {
        let attempt = async {
            let (client, mut notes) = conn.connect_listener().await.ok()?;
            client
                .batch_execute(&format!("{}; {}", sql::LISTEN_ENQUEUED, sql::LISTEN_CANCEL))
                .await
                .ok()?;
            let _ = wake.send(Wake::Enqueued);
            if let Some(r) = ready.take() {
                let _ = r.send(());
            }
            while let Some(n) = notes.recv().await {
                if n.channel() == sql::CANCEL_CHANNEL {
                    if let Ok(id) = Uuid::parse_str(n.payload()) {
                        let _ = wake.send(Wake::Cancel(id));
                    }
                } else if queues.iter().any(|q| q == n.payload()) {
                    let _ = wake.send(Wake::Enqueued);
                }
            }
            drop(client);
            Some(())
        };
        tokio::select! {
            () = stop.cancelled() => return,
            r = attempt => {
                if r.is_some() {
                    backoff = Duration::from_millis(100);
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(priority: i32, secs: i64, id: u128) -> Position {
        Position {
            priority,
            run_at: chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default(),
            id: Uuid::from_u128(id),
        }
    }

    #[test]
    fn a_stored_context_is_passed_on_as_a_caller_s_would_be() {
        let span = SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID);
        let stored =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-ff").ok();
        let (tp, ts) = attempt_context(stored.as_ref(), Some("a=1, b=2"), span);
        assert_eq!(
            tp,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"
        );
        assert_eq!(ts.as_deref(), Some("a=1, b=2"));
        // A malformed tracestate is dropped, the traceparent kept.
        let (tp, ts) = attempt_context(stored.as_ref(), Some("BAD KEY=1"), span);
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert_eq!(ts, None);
        // Only empty members: nothing to pass on.
        assert_eq!(attempt_context(stored.as_ref(), Some(" , ,"), span).1, None);
        // No usable traceparent: a new trace, and its tracestate is not carried.
        let (tp, ts) = attempt_context(None, Some("zz=9"), span);
        assert!(!tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(tp.ends_with("-00f067aa0ba902b7-01"), "{tp}");
        assert_eq!(ts, None);
    }

    #[test]
    fn retry_wakes_close_together_share_one_never_earlier_than_due() {
        let t0 = tokio::time::Instant::now();
        let ms = Duration::from_millis;
        let mut wakes = std::collections::BTreeSet::new();
        let slack = retry_wake_slack(ms(100));
        assert_eq!(slack, ms(10));
        add_retry_wake(&mut wakes, t0 + ms(100), slack);
        // Due 5 ms earlier: the planned wake-up is within the slack after it.
        add_retry_wake(&mut wakes, t0 + ms(95), slack);
        // Due later than the planned one: a wake-up of its own.
        add_retry_wake(&mut wakes, t0 + ms(101), slack);
        add_retry_wake(&mut wakes, t0 + ms(300), slack);
        let planned: Vec<Duration> = wakes.iter().map(|w| *w - t0).collect();
        assert_eq!(planned, vec![ms(100), ms(101), ms(300)]);
        // An hour away, retries within 36 s of each other share a wake-up.
        assert_eq!(
            retry_wake_slack(Duration::from_secs(3600)),
            Duration::from_secs(36)
        );
    }

    #[test]
    fn positions_order_like_the_claim_index() {
        // (priority, run_at, id), the id compared byte by byte as PostgreSQL does.
        assert!(at(-1, 9, 9) < at(0, 1, 1));
        assert!(at(0, 1, 9) < at(0, 2, 1));
        assert!(at(0, 1, 1) < at(0, 1, 2));
        assert!(at(0, 1, 0x00ff) < at(0, 1, 0x0100));
        assert!(at(0, 1, u128::MAX >> 8) < at(0, 1, 1 << 127));
    }

    #[test]
    fn starts_move_forward_after_full_claims_only_since_the_last_reset() {
        let mut s = ClaimStarts::new(1);
        assert!(!s.hinted());
        s.advance(0, &[Some(at(0, 5, 1))]);
        assert_eq!(s.starts, vec![Some(at(0, 5, 1))]);
        assert!(s.hinted());
        // Never backwards: the other claimer's claim, which took earlier rows.
        s.advance(0, &[Some(at(0, 3, 1))]);
        assert_eq!(s.starts, vec![Some(at(0, 5, 1))]);
        s.advance(0, &[None]);
        assert_eq!(s.starts, vec![Some(at(0, 5, 1))]);
        s.advance(0, &[Some(at(0, 6, 1))]);
        assert_eq!(s.for_claim(), vec![Some(at(0, 6, 1))]);
        s.reset();
        assert_eq!(s.starts, vec![None]);
        assert!(!s.hinted());
        // A claim asked for before the reset does not undo it.
        s.advance(0, &[Some(at(0, 7, 1))]);
        assert_eq!(s.starts, vec![None]);
        s.advance(1, &[Some(at(0, 7, 1))]);
        assert_eq!(s.starts, vec![Some(at(0, 7, 1))]);
    }

    #[test]
    fn starts_go_back_to_the_beginning_once_they_are_old() {
        let mut s = ClaimStarts::new(1);
        s.advance(0, &[Some(at(0, 5, 1))]);
        std::thread::sleep(CLAIM_START_AGE + Duration::from_millis(10));
        assert_eq!(s.for_claim(), vec![None]);
        assert_eq!(s.resets, 1);
    }

    #[test]
    fn claims_ahead_cover_the_claim_time_and_stop_for_long_handlers() {
        let mut a = ClaimAhead::default();
        assert_eq!(a.target(8), 0, "nothing measured yet");
        a.claimed(Duration::from_millis(1));
        assert_eq!(a.target(8), 0, "no handler finished yet");
        a.ran(Duration::from_millis(4));
        // 8 slots × 1 ms / 4 ms.
        assert_eq!(a.target(8), 2);
        for _ in 0..500 {
            a.ran(Duration::from_secs(2));
        }
        assert_eq!(a.target(8), 0, "handlers much longer than a claim");
        for _ in 0..500 {
            a.ran(Duration::ZERO);
        }
        assert_eq!(a.target(1000), 1000, "never more than the slots");
    }

    #[test]
    fn a_worker_of_several_queues_always_claims_from_the_beginning() {
        let mut s = ClaimStarts::new(2);
        s.advance(0, &[Some(at(0, 5, 1)), Some(at(0, 5, 2))]);
        assert_eq!(s.for_claim(), vec![None, None]);
    }
}
