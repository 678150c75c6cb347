//! `pgc bench`: the real enqueue and worker paths, measured on a scratch queue.
//!
//! Nothing is shortcut: the batch goes through [`crate::enqueue::batch`] with a trace
//! context per row, the work through [`crate::worker::run`] with leases, fencing and
//! batched settles, and latency through single [`crate::enqueue::enqueue`] calls woken
//! by NOTIFY. Only the handler is a no-op closure. Between the work and the latency
//! phases the table is vacuumed, as autovacuum would do soon after such a burst. The
//! scratch queue's rows are deleted at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::db::ConnectOptions;
use crate::enqueue::{self, BatchOptions, NewExecution};
use crate::error::{Error, Result};
use crate::handler::{FnHandler, Outcome};
use crate::traceparent::Incoming;
use crate::worker::{self, Handlers, Shutdown, WorkerOptions};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Executions to enqueue and work.
    pub jobs: u64,
    /// Worker concurrency.
    pub concurrency: usize,
    /// Sequential single enqueues for the latency figure.
    pub latency_samples: usize,
    /// Where the worker's attempt spans go (as in normal use).
    pub telemetry: crate::telemetry::Hooks,
}

/// Enqueue→start latency percentiles, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

/// The figures.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Executions enqueued and worked.
    pub jobs: u64,
    /// Worker concurrency.
    pub concurrency: usize,
    /// Bulk enqueue rate.
    pub enqueue_per_s: f64,
    /// Work rate: claim, run a no-op, settle.
    pub work_per_s: f64,
    /// Enqueue→start latency with an idle worker.
    pub latency_ms: Latency,
}

/// Runs the benchmark against the database `conn` reaches (which needs the schema).
pub async fn run(conn: &ConnectOptions, opts: &BenchOptions) -> Result<BenchReport> {
    let mut client = conn.connect().await?;
    crate::migrate::check_schema(&client).await?;
    let queue = format!("bench-{}", Uuid::now_v7().simple());
    let outcome = measure(conn, &mut client, &queue, opts).await;
    // Clean up whatever happened.
    let cleanup = client
        .execute(
            "delete from pgconductor._private_attempts a using pgconductor._private_executions e
             where a.execution_id = e.id and e.queue = $1",
            &[&queue],
        )
        .await
        .and(
            client
                .execute(
                    "delete from pgconductor._private_executions where queue = $1",
                    &[&queue],
                )
                .await,
        );
    let report = outcome?;
    cleanup?;
    Ok(report)
}

async fn measure(
    conn: &ConnectOptions,
    client: &mut tokio_postgres::Client,
    queue: &str,
    opts: &BenchOptions,
) -> Result<BenchReport> {
    // Bulk enqueue.
    let mut lines = Vec::with_capacity(usize::try_from(opts.jobs).unwrap_or(0) * 36);
    for i in 0..opts.jobs {
        lines.extend_from_slice(
            format!("{{\"task\":\"noop\",\"payload\":{{\"i\":{i}}}}}\n").as_bytes(),
        );
    }
    let batch = BatchOptions {
        queue: queue.to_string(),
        incoming: Incoming::Absent,
        ..BatchOptions::default()
    };
    let started = Instant::now();
    enqueue::batch(client, &lines[..], &batch, &mut |_| {})
        .await
        .map_err(|f| f.error)?;
    let enqueue_secs = started.elapsed().as_secs_f64();
    drop(lines);

    // Work them.
    let noop = Arc::new(FnHandler(|_job| async { Outcome::Completed(None) }));
    let work = WorkerOptions {
        queues: vec![queue.to_string()],
        concurrency: opts.concurrency,
        until_empty: true,
        poll_interval: Duration::from_millis(100),
        telemetry: opts.telemetry.clone(),
        ..WorkerOptions::default()
    };
    let quiet: worker::EventSink = Arc::new(|_| {});
    let started = Instant::now();
    let report = worker::run(
        conn,
        work.clone(),
        Handlers::new().fallback(noop),
        Shutdown::default(),
        quiet.clone(),
    )
    .await?;
    let work_secs = started.elapsed().as_secs_f64();
    if report.completed != opts.jobs {
        return Err(Error::invalid(format!(
            "the worker completed {} of {} executions",
            report.completed, opts.jobs
        )));
    }

    // The work left as many dead row versions as it settled executions; give the table
    // the vacuum that autovacuum would soon (best effort: it needs the table's owner),
    // so that latency measures an idle queue rather than this run's garbage.
    let _ = client
        .batch_execute("vacuum analyze pgconductor._private_executions")
        .await;

    // Latency: an idle worker, one enqueue at a time, each waiting for its start.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Uuid, Instant)>();
    let handler = Arc::new(FnHandler(move |job: crate::handler::Job| {
        let _ = tx.send((job.execution_id, Instant::now()));
        async { Outcome::Completed(None) }
    }));
    let shutdown = Shutdown::default();
    let idle = WorkerOptions {
        until_empty: false,
        poll_interval: Duration::from_secs(3600),
        concurrency: 1,
        ..work
    };
    let worker = {
        let conn = conn.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            worker::run(
                &conn,
                idle,
                Handlers::new().fallback(handler),
                shutdown,
                quiet,
            )
            .await
        })
    };
    let mut samples = Vec::with_capacity(opts.latency_samples);
    // Let the worker start and go idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..opts.latency_samples {
        let new = NewExecution {
            queue: queue.to_string(),
            ..NewExecution::new("noop")
        };
        let ctx = Incoming::Absent.child();
        let sent = Instant::now();
        let done = enqueue::enqueue(&*client, &new, &ctx).await?;
        loop {
            let (id, at) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .map_err(|_| Error::invalid("an enqueued execution did not start within 30s"))?
                .ok_or_else(|| Error::invalid("the benchmark worker stopped"))?;
            if id == done.id {
                samples.push(at.duration_since(sent).as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    shutdown.graceful.cancel();
    let _ = worker.await;
    samples.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples.get(i).copied().unwrap_or(0.0)
    };
    Ok(BenchReport {
        jobs: opts.jobs,
        concurrency: opts.concurrency,
        enqueue_per_s: opts.jobs as f64 / enqueue_secs,
        work_per_s: opts.jobs as f64 / work_secs,
        latency_ms: Latency {
            p50: pick(0.5),
            p99: pick(0.99),
            max: samples.last().copied().unwrap_or(0.0),
        },
    })
}
