//! `pgc work`: a foreground worker running tasks as commands.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use super::output::{LogContext, info, json_logs, log_line, warn};
use super::telemetry::CliTelemetry;
use super::{GlobalArgs, parse_duration};
use crate::enqueue::validate_name;
use crate::error::Error;
use crate::handler::command::{CommandHandler, Program, short_id};
use crate::worker::{self, Event, Handlers, Shutdown, WorkerOptions};

/// Run tasks from one or more queues as commands, until stopped (SIGINT/SIGTERM: finish
/// running handlers, then exit; a second signal stops them at once).
///
/// Each handler gets the payload JSON on stdin and TRACEPARENT (this attempt's span),
/// TRACESTATE, PGC_EXECUTION_ID, PGC_TASK, PGC_QUEUE, PGC_ATTEMPT, PGC_MAX_ATTEMPTS and
/// the database settings (PG* variables) in its environment. Exit 0 completes the
/// execution (stdout, when it is JSON, is its result); exit 75 runs it again later
/// without using an attempt; any other exit fails the attempt (the tail of stderr is
/// kept as its error) and it is retried with exponential backoff while attempts remain.
#[derive(Debug, clap::Args)]
pub struct WorkArgs {
    /// Queue to work (repeat for several).
    #[arg(short, long = "queue", value_name = "QUEUE", default_value = crate::enqueue::DEFAULT_QUEUE)]
    pub queues: Vec<String>,

    /// Handlers running at once.
    #[arg(short, long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub concurrency: u32,

    /// Run TASK with COMMAND through `sh -c` (repeat for several tasks). Tasks without a
    /// handler of their own run the command after `--`; without one they are not claimed.
    #[arg(long = "handler", value_name = "TASK=COMMAND", value_parser = parse_handler)]
    pub handlers: Vec<(String, String)>,

    /// Stop a handler running longer than this (SIGTERM to its process group, SIGKILL
    /// after --kill-grace); the attempt fails with "timed out after …".
    #[arg(long, value_name = "DURATION", value_parser = parse_positive)]
    pub timeout: Option<Duration>,

    /// Between SIGTERM and SIGKILL when a handler is stopped.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub kill_grace: Duration,

    /// Base of the exponential retry backoff (doubling per attempt, capped at 1h, with
    /// jitter in the upper half).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub retry_delay: Duration,

    /// How long a claim holds an execution; renewed every third of it while it runs. A
    /// killed worker's executions run elsewhere once their lease expires.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_positive)]
    pub lease: Duration,

    /// Look for due work this often even without a notification.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_positive)]
    pub poll_interval: Duration,

    /// After SIGINT/SIGTERM, how long running handlers get to finish before they are
    /// stopped and their executions released (without using an attempt).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Claim at least N executions ahead of free handler slots, so that a slot that
    /// frees starts the next task without waiting for a claim. They stay claimed
    /// while they wait, so other workers cannot take them; given back unused at
    /// shutdown. With 0 (the default) the worker claims ahead only as many as its
    /// handlers finish during one claim: none when they run much longer than a claim.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub prefetch: u32,

    /// Drain the queues and exit: returns when nothing in them is running, due, or
    /// waiting for a retry. Exit 0 when every execution it finished completed, 1 when
    /// any finished as failed (each listed on stderr).
    #[arg(long)]
    pub until_empty: bool,

    /// Log every completed attempt too, not only failures.
    #[arg(short, long)]
    pub verbose: bool,

    /// The command run for every task without a --handler (directly, no shell).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

fn parse_handler(s: &str) -> Result<(String, String), String> {
    let (task, command) = s
        .split_once('=')
        .ok_or_else(|| format!("invalid handler {s:?}: expected TASK=COMMAND"))?;
    validate_name("task name", task).map_err(|e| e.to_string())?;
    if command.trim().is_empty() {
        return Err(format!("handler for {task} has an empty command"));
    }
    Ok((task.to_string(), command.to_string()))
}

fn parse_positive(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    if d < Duration::from_millis(10) {
        return Err(format!("{s:?} is too short (at least 10ms)"));
    }
    Ok(d)
}

/// Refuses a command after `--` that cannot be run, before anything is claimed: each
/// execution would otherwise use up its attempts on it. A name without `/` is looked up
/// in `PATH` as the handler's start will (execvp's default when `PATH` is unset).
fn check_program(program: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let runnable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.is_empty() {
        return Err(Error::invalid("the command after -- is empty").into());
    }
    let (found, why) = if program.contains('/') {
        (
            runnable(std::path::Path::new(program)),
            "no such executable file",
        )
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
        let found = std::env::split_paths(&path).any(|dir| runnable(&dir.join(program)));
        (found, "not found in PATH")
    };
    if found {
        return Ok(());
    }
    Err(Error::invalid(format!("cannot run the command after --: {program}: {why}")).into())
}

/// Runs `pgc work`.
pub async fn run(global: &GlobalArgs, args: WorkArgs) -> Result<ExitCode> {
    for q in &args.queues {
        validate_name("queue name", q)?;
    }
    if args.command.is_empty() && args.handlers.is_empty() {
        return Err(Error::invalid(
            "no handler: give a command after -- or at least one --handler TASK=COMMAND",
        )
        .into());
    }
    let conn = global.connect_options()?;
    // A `pgc` (or psql) run inside a handler reaches the same database; DATABASE_URL is
    // emptied so that an inherited one cannot point it elsewhere.
    let mut env = conn.child_env();
    env.push(("DATABASE_URL".to_string(), String::new()));
    let make = |program: Program| {
        Arc::new(
            CommandHandler::new(program)
                .env(env.clone())
                .timeout(args.timeout)
                .kill_grace(args.kill_grace)
                .json_lines(json_logs()),
        )
    };
    let mut handlers = Handlers::new();
    if let Some((program, rest)) = args.command.split_first() {
        check_program(program)?;
        handlers = handlers.fallback(make(Program::Direct {
            program: program.clone(),
            args: rest.to_vec(),
        }));
    }
    for (task, command) in &args.handlers {
        handlers = handlers.task(task.clone(), make(Program::Shell(command.clone())));
    }
    let mut queues = args.queues.clone();
    queues.sort();
    queues.dedup();
    let mut telemetry = CliTelemetry::from_env();
    telemetry.start_flushing();
    let opts = WorkerOptions {
        queues,
        concurrency: usize::try_from(args.concurrency).unwrap_or(1),
        lease: args.lease,
        poll_interval: args.poll_interval,
        retry_delay: args.retry_delay,
        shutdown_timeout: args.shutdown_timeout,
        until_empty: args.until_empty,
        prefetch: usize::try_from(args.prefetch).unwrap_or(0),
        telemetry: telemetry.shared(),
        ..WorkerOptions::default()
    };

    let shutdown = Shutdown::default();
    spawn_signal_handler(shutdown.clone())?;

    let bar = if args.until_empty && std::io::stderr().is_terminal() {
        ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        )
    } else {
        ProgressBar::hidden()
    };
    bar.enable_steady_tick(Duration::from_millis(200));
    let done = Arc::new(AtomicU64::new(0));
    let events = {
        let bar = bar.clone();
        let done = done.clone();
        let verbose = args.verbose;
        Arc::new(move |e: Event| log_event(&e, verbose, &bar, &done)) as worker::EventSink
    };
    let report = worker::run(&conn, opts, handlers, shutdown, events).await;
    bar.finish_and_clear();
    // Every span out before the worker exits, on every path (signals included: the
    // worker returns after a graceful or an immediate stop), unless a signal comes
    // while they are sent (a collector that does not answer would hold the exit for an
    // export timeout).
    exiting();
    // Whether signals stopped the loop (counted when it ended, not those since).
    let signalled = EXIT_FROM.get().is_some_and(|n| *n > 0);
    if unless_signalled(telemetry.finish()).await.is_none() {
        warn("telemetry: stopped by a signal; spans and metrics not yet exported are dropped");
    }
    let report = report?;
    if args.until_empty {
        let how = if signalled {
            "stopped by a signal"
        } else {
            "queue drained"
        };
        info(&format!(
            "{how}: {} completed, {} failed, {} retried, {} released",
            report.completed,
            report.failed.len(),
            report.retried,
            report.released
        ));
        if !report.failed.is_empty() {
            for f in &report.failed {
                let ctx = LogContext {
                    execution_id: Some(f.id),
                    task: Some(&f.task),
                    ..LogContext::default()
                };
                let text = format!("failed: {} {}: {}", f.task, f.id, first_line(&f.error));
                log_line("info", &text, &ctx);
            }
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

fn log_event(e: &Event, verbose: bool, bar: &ProgressBar, done: &AtomicU64) {
    let line = match e {
        Event::Started { worker_id } => {
            if verbose {
                Some(format!("worker {worker_id} started"))
            } else {
                None
            }
        }
        Event::Completed {
            id,
            task,
            attempt,
            duration,
            ..
        } => {
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            bar.set_message(format!("{n} finished"));
            verbose.then(|| {
                format!(
                    "{task} {} completed (attempt {attempt}) in {:.3}s",
                    short_id(id),
                    duration.as_secs_f64()
                )
            })
        }
        Event::Failed {
            id,
            task,
            attempt,
            error,
            retry_in,
            ..
        } => {
            let what = match retry_in {
                Some(d) => format!("retrying in {}", humantime::format_duration(round(*d))),
                None => {
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    bar.set_message(format!("{n} finished"));
                    "no attempts left".to_string()
                }
            };
            Some(format!(
                "{task} {} failed (attempt {attempt}): {}; {what}",
                short_id(id),
                first_line(error)
            ))
        }
        Event::Released {
            id, task, reason, ..
        } => Some(format!(
            "{task} {} released: {}",
            short_id(id),
            first_line(reason)
        )),
        Event::Cancelled { id, task, .. } => {
            let n = done.fetch_add(1, Ordering::Relaxed) + 1;
            bar.set_message(format!("{n} finished"));
            Some(format!("{task} {} cancelled", short_id(id)))
        }
        Event::LeaseLost { id, task, .. } => Some(format!(
            "{task} {}: lease taken over by another worker; its result is discarded",
            short_id(id)
        )),
        Event::Reaped { id, status } => Some(format!(
            "recovered {} from a worker whose lease expired ({status})",
            short_id(id)
        )),
        Event::Stopping { running } => Some(format!(
            "stopping: waiting for {running} running handler(s); signal again to stop them now"
        )),
        Event::DatabaseLost { error } => {
            warn(&format!("database connection lost ({error}); retrying"));
            None
        }
        Event::DatabaseBack => Some("database connection re-established".to_string()),
        Event::Abandoned { unsettled } => Some(format!(
            "stopped with {unsettled} attempt(s) unsettled; their leases expire and another worker recovers them"
        )),
        Event::Finishing => {
            exiting();
            None
        }
    };
    // An execution's lines carry its ids (and, as JSON, its attempt's trace and span).
    let ctx = match e {
        Event::Completed {
            id,
            task,
            attempt,
            traceparent,
            ..
        }
        | Event::Failed {
            id,
            task,
            attempt,
            traceparent,
            ..
        } => LogContext {
            execution_id: Some(*id),
            task: Some(task),
            attempt: Some(*attempt),
            traceparent: traceparent.as_deref(),
        },
        Event::Released {
            id,
            task,
            traceparent,
            ..
        }
        | Event::Cancelled {
            id,
            task,
            traceparent,
        }
        | Event::LeaseLost {
            id,
            task,
            traceparent,
        } => LogContext {
            execution_id: Some(*id),
            task: Some(task),
            attempt: None,
            traceparent: traceparent.as_deref(),
        },
        _ => LogContext::default(),
    };
    if let Some(line) = line {
        bar.suspend(|| log_line("info", &line, &ctx));
    }
}

/// A delay as log lines show it: milliseconds below a second, else whole seconds.
fn round(d: Duration) -> Duration {
    if d < Duration::from_secs(1) {
        Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    } else {
        Duration::from_secs(d.as_secs() + u64::from(d.subsec_millis() >= 500))
    }
}

/// SIGINT/SIGTERM received so far, once [`spawn_signal_handler`] has taken them over
/// (the process then no longer dies of them).
static SIGNALS: std::sync::OnceLock<tokio::sync::watch::Sender<u32>> = std::sync::OnceLock::new();

/// First SIGINT/SIGTERM: graceful shutdown; second: stop handlers at once. Every one is
/// counted in [`SIGNALS`], for [`unless_signalled`].
fn spawn_signal_handler(shutdown: Shutdown) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let signals = SIGNALS
        .get_or_init(|| tokio::sync::watch::channel(0).0)
        .clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            signals.send_modify(|n| *n += 1);
            if *signals.borrow() == 1 {
                shutdown.graceful.cancel();
            } else {
                shutdown.immediate.cancel();
            }
        }
    });
    Ok(())
}

/// [`SIGNALS`] when the worker's loop ended and the process began to exit.
static EXIT_FROM: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Marks the end of the worker's loop ([`Event::Finishing`], or its return): from here
/// on a signal stops what is left to do at exit.
fn exiting() {
    if let Some(signals) = SIGNALS.get() {
        EXIT_FROM.get_or_init(|| *signals.borrow());
    }
}

/// Runs `f` to its end, or until a SIGINT/SIGTERM arrives during the exit (`None`; at
/// once when one already did), when `pgc work` has taken the signals over: the exports
/// at exit would otherwise outlast a signal that can no longer end the process.
pub(super) async fn unless_signalled<F: std::future::Future>(f: F) -> Option<F::Output> {
    let Some(signals) = SIGNALS.get() else {
        return Some(f.await);
    };
    let mut rx = signals.subscribe();
    let from = EXIT_FROM
        .get()
        .copied()
        .unwrap_or_else(|| *rx.borrow_and_update());
    tokio::select! {
        out = f => Some(out),
        _ = rx.wait_for(|n| *n > from) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_show_in_milliseconds_below_a_second_else_in_whole_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(
            humantime::format_duration(round(ms(80))).to_string(),
            "80ms"
        );
        assert_eq!(
            humantime::format_duration(round(ms(1_400))).to_string(),
            "1s"
        );
        assert_eq!(
            humantime::format_duration(round(ms(1_600))).to_string(),
            "2s"
        );
        assert_eq!(
            humantime::format_duration(round(ms(125_000))).to_string(),
            "2m 5s"
        );
    }
}
