//! How a task runs: the [`Handler`] trait the worker calls for each claimed execution,
//! what it gets ([`Job`]) and what it reports ([`Outcome`]).
//!
//! Two implementations: [`command::CommandHandler`] runs a process (the CLI's
//! `pgc work -- COMMAND`), and [`FnHandler`] wraps an async Rust closure (library users,
//! `pgc bench`). The worker owns claiming, leases and settling; a handler only runs.

pub mod command;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One attempt of one execution, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The execution id.
    pub execution_id: Uuid,
    /// Task name.
    pub task: String,
    /// Queue name.
    pub queue: String,
    /// The payload as JSON text.
    pub payload: String,
    /// This attempt's number, from 1.
    pub attempt: i32,
    /// Attempts the execution has in all.
    pub max_attempts: i32,
    /// `00-<trace id>-<this attempt's span id>-<flags>`: what the handler runs under.
    pub traceparent: String,
    /// The execution's tracestate, if any.
    pub tracestate: Option<String>,
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; the result to store (JSON text), if any.
    Completed(Option<String>),
    /// Failed; uses the attempt. The text is stored as `last_error`.
    Failed(String),
    /// Ran past its timeout and was stopped; uses the attempt.
    TimedOut(String),
    /// Asked to run again later without using the attempt (exit code 75, EX_TEMPFAIL).
    TempFail(String),
    /// Stopped because the worker told it to (shutdown, cancel, lost lease); the worker
    /// decides what that means for the execution.
    Stopped,
}

/// A boxed, sendable future: what [`Handler::run`] returns.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Runs one attempt. `stop` is cancelled when the worker wants the attempt to end
/// (shutdown past its grace period, `pgc cancel`, a lease taken over); the handler then
/// stops as soon as it can and returns [`Outcome::Stopped`].
pub trait Handler: Send + Sync + 'static {
    /// Runs `job` to its outcome.
    fn run(&self, job: Job, stop: CancellationToken) -> BoxFuture<Outcome>;
}

/// An async Rust closure as a handler.
pub struct FnHandler<F>(pub F);

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Job) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    fn run(&self, job: Job, stop: CancellationToken) -> BoxFuture<Outcome> {
        let fut = (self.0)(job);
        Box::pin(async move {
            tokio::select! {
                outcome = fut => outcome,
                () = stop.cancelled() => Outcome::Stopped,
            }
        })
    }
}

/// A shared handler.
pub type SharedHandler = Arc<dyn Handler>;
