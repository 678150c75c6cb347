//! `pgc step NAME -- COMMAND ARGS`: a memoized step of the current execution, run from
//! inside a `pgc work` handler.
//!
//! The handler's environment says which execution and attempt this is
//! (`PGC_EXECUTION_ID`, `PGC_ATTEMPT`). A step that already completed for that execution,
//! in any attempt, is not run again: its stored stdout is printed instead. Otherwise the
//! command runs (directly, no shell) with stdin and stderr inherited and stdout passed
//! through as it streams while being kept, and the run is recorded in
//! `pgconductor._private_steps` with a span id of its own and its timing.
//!
//! Stdout carries nothing but the step's output; pgc's own messages go to stderr.

use std::io::{self, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::process::{ExitCode, ExitStatus, Stdio};

use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use tokio::io::AsyncReadExt as _;
use tokio::process::Command;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

use super::output::{StdoutClosed, error_line, warn};
use super::telemetry::CliTelemetry;
use super::{GlobalArgs, connect};
use crate::error::Error;
use crate::migrate;
use crate::sql;
use crate::traceparent::{Incoming, new_span_id};

/// The most stdout a step stores, in bytes (16 MiB). Output beyond it is still passed
/// through, but the step cannot be memoized, so it fails: see [`StepArgs`].
pub const MAX_STEP_OUTPUT: usize = 16 << 20;

/// The longest step name, in characters (the column's check constraint).
pub const MAX_NAME_CHARS: usize = 256;

/// Read size for the command's stdout.
const CHUNK: usize = 64 * 1024;

/// The long help of `pgc step` (`pgc step --help`, the man page), also the doc comment
/// of [`StepArgs`]: one text, so the two cannot drift apart.
macro_rules! step_help {
    () => {
        "Run COMMAND once per execution, from inside a `pgc work` handler: when step \
         NAME of the current execution already completed, in this attempt or an earlier \
         one, print its stored output and exit 0 without running anything. The \
         execution and attempt come from PGC_EXECUTION_ID and PGC_ATTEMPT, which pgc \
         work sets for its handlers; without them pgc step exits 2.\n\n\
         Otherwise COMMAND runs directly (no shell) with stdin and stderr inherited; \
         its stdout is passed through as it streams and kept. Exit 0 completes the step \
         and stores that output; any other exit fails it (nothing is stored, so the \
         next attempt runs it again). Either way the run is recorded with a span id of \
         its own and its start and end times, and pgc exits with COMMAND's exit code, \
         or 128+N when signal N killed it. A COMMAND that cannot be found exits 127, \
         one that cannot be started otherwise 126; neither is recorded.\n\n\
         COMMAND gets the environment as it is, except that a valid TRACEPARENT is \
         replaced by one naming the step's span (same trace id and flags), so a `pgc \
         enqueue` inside the step becomes a child of the step.\n\n\
         A step stores at most 16 MiB of output. A command that exits 0 after writing \
         more still has all of it passed through, but the step fails: it is recorded as \
         failed (with exit code 0) and pgc exits 1. Write large data to a file and \
         print its path."
    };
}

#[doc = step_help!()]
#[derive(Debug, clap::Args)]
#[command(after_long_help = step_help!())]
pub struct StepArgs {
    /// Step name, unique within the execution: 1–256 characters, no control characters.
    pub name: String,

    /// The command to run (directly, no shell) and its arguments.
    #[arg(last = true, required = true, num_args = 1.., value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Which run of which execution this is, from the handler's environment.
#[derive(Debug, Clone, Copy)]
struct Here {
    execution_id: Uuid,
    attempt: i32,
}

impl Here {
    fn from_env() -> Result<Here, Error> {
        let raw = required_var("PGC_EXECUTION_ID")?;
        let execution_id = Uuid::parse_str(raw.trim()).map_err(|e| {
            outside(&format!(
                "PGC_EXECUTION_ID is not a UUID ({e}): {:?}",
                clip(&raw)
            ))
        })?;
        let raw = required_var("PGC_ATTEMPT")?;
        let attempt = raw
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|a| *a > 0)
            .ok_or_else(|| {
                outside(&format!(
                    "PGC_ATTEMPT must be a positive integer, got {:?}",
                    clip(&raw)
                ))
            })?;
        Ok(Here {
            execution_id,
            attempt,
        })
    }
}

/// An environment variable that must be set (an empty value counts as unset).
fn required_var(name: &str) -> Result<String, Error> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(v),
        Ok(_) | Err(std::env::VarError::NotPresent) => Err(outside(&format!("{name} is not set"))),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(outside(&format!("{name} is not valid UTF-8")))
        }
    }
}

fn outside(what: &str) -> Error {
    Error::invalid(format!("pgc step runs inside a pgc work handler: {what}"))
}

/// At most 64 characters of `s`, for messages.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Checks a step name: 1–256 characters, none of them a control character.
fn validate_name(name: &str) -> Result<(), Error> {
    let len = name.chars().count();
    if len == 0 {
        return Err(Error::invalid("step name must not be empty"));
    }
    if len > MAX_NAME_CHARS {
        return Err(Error::invalid(format!(
            "step name is {len} characters long, at most {MAX_NAME_CHARS} allowed"
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(format!(
            "step name must not contain control characters, found {:?}",
            c
        )));
    }
    Ok(())
}

/// Writes bytes to stdout and flushes, with the broken-pipe rule of
/// [`super::write_stdout`].
fn write_stdout_bytes(bytes: &[u8]) -> Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(anyhow::Error::new(e).context("writing to stdout")),
        Ok(()) => Ok(()),
    }
}

/// Passes the command's output through to our stdout. A reader that went away stops the
/// passthrough, not the command: its output is still read and kept.
#[derive(Default)]
struct Passthrough {
    stopped: bool,
}

impl Passthrough {
    fn write(&mut self, bytes: &[u8]) {
        if self.stopped {
            return;
        }
        let mut out = io::stdout().lock();
        if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
            self.stopped = true;
            if e.kind() != io::ErrorKind::BrokenPipe {
                warn(&format!(
                    "could not pass the step's output through to stdout ({e}); it is still stored"
                ));
            }
        }
    }
}

/// The output kept for storing, bounded by [`MAX_STEP_OUTPUT`].
#[derive(Default)]
struct Kept {
    bytes: Vec<u8>,
    /// Why the output cannot be stored, when it cannot.
    lost: Option<String>,
}

impl Kept {
    fn push(&mut self, chunk: &[u8]) {
        if self.lost.is_some() {
            return;
        }
        if self.bytes.len() + chunk.len() > MAX_STEP_OUTPUT {
            self.bytes = Vec::new();
            self.lost = Some(format!(
                "it wrote more than {} MiB to stdout, more than a step stores",
                MAX_STEP_OUTPUT >> 20
            ));
            return;
        }
        self.bytes.extend_from_slice(chunk);
    }
}

/// The exit code a shell would report: the code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => 1,
    }
}

/// One run of a step, as `STEP_RECORD` stores it.
struct Record<'a> {
    here: Here,
    name: &'a str,
    span_id: &'a str,
    output: Option<&'a [u8]>,
    exit_code: i32,
    started_at: DateTime<Utc>,
    finished_at: DateTime<Utc>,
}

/// Stores the run. The connection sat idle while the command ran and may have been
/// closed meanwhile (server restart, idle timeout): then it is opened again once. The
/// statement is an upsert, so repeating it is harmless.
async fn record(global: &GlobalArgs, client: &mut Client, r: &Record<'_>) -> Result<(), Error> {
    let status = if r.output.is_some() {
        "completed"
    } else {
        "failed"
    };
    for retry in [false, true] {
        if retry || client.is_closed() {
            *client = connect(global).await?;
        }
        let outcome = client
            .execute(
                sql::STEP_RECORD,
                &[
                    &r.here.execution_id,
                    &r.here.attempt,
                    &r.name,
                    &r.span_id,
                    &status,
                    &r.output,
                    &r.exit_code,
                    &r.started_at,
                    &r.finished_at,
                ],
            )
            .await;
        match outcome {
            Ok(_) => return Ok(()),
            Err(e) if e.is_closed() && !retry => continue,
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                return Err(Error::Contended(format!(
                    "step {:?} completed in another attempt of execution {} at the same time; this run's output was not stored",
                    r.name, r.here.execution_id
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Contended(
        "the database connection kept closing".to_string(),
    ))
}

/// Runs `pgc step`.
pub async fn run(global: &GlobalArgs, args: StepArgs) -> Result<ExitCode> {
    validate_name(&args.name)?;
    let here = Here::from_env()?;
    let Some((program, program_args)) = args.command.split_first() else {
        return Err(Error::invalid("no command given after --").into());
    };

    let mut client = connect(global).await?;
    migrate::check_schema(&client).await?;
    let row = client
        .query_one(sql::STEP_COMPLETED, &[&here.execution_id, &args.name])
        .await
        .map_err(Error::from)?;
    if !row.try_get::<_, bool>(0).map_err(Error::from)? {
        return Err(outside(&format!(
            "PGC_EXECUTION_ID names no execution in this database: {}",
            here.execution_id
        ))
        .into());
    }
    if row.try_get::<_, bool>(1).map_err(Error::from)? {
        let output: Option<Vec<u8>> = row.try_get(2).map_err(Error::from)?;
        write_stdout_bytes(output.as_deref().unwrap_or_default())?;
        return Ok(ExitCode::SUCCESS);
    }

    // The step's span: a child of the caller's (the attempt's) span when TRACEPARENT is
    // valid, and then handed to the command in TRACEPARENT; otherwise the environment is
    // left alone and the span id only identifies the run.
    let incoming = Incoming::read(std::env::var("TRACEPARENT").ok().as_deref(), None);
    let (span_id, traceparent) = match &incoming {
        Incoming::Valid { .. } => {
            let tp = incoming.child().traceparent;
            (tp.parent_id, Some(tp.to_string()))
        }
        Incoming::Invalid(e) => {
            warn(&format!(
                "ignoring invalid TRACEPARENT ({e}); the step is not linked to a trace"
            ));
            (new_span_id(), None)
        }
        Incoming::Absent => (new_span_id(), None),
    };
    let span_id = hex::encode(span_id.to_bytes());

    let mut cmd = Command::new(program);
    cmd.args(program_args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(tp) = &traceparent {
        cmd.env("TRACEPARENT", tp);
    }
    // Timestamps come from this machine's clock, where the step runs: the server's now()
    // in STEP_RECORD would be the time of the insert, after the command, for both.
    let started_at = Utc::now();
    // SIGINT (Ctrl-C) and SIGTERM (the worker stopping the handler's process group) reach
    // the command too: this process outlives it, so that the run is recorded (as failed,
    // with the command's 128+N status) and its span reported.
    let _signals = hold_signals();
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            // As a shell: 127 when the command is not there, 126 when it cannot be run.
            let code = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            error_line(&format!(
                "step {:?}: could not start {program}: {e}",
                args.name
            ));
            return Ok(ExitCode::from(code));
        }
    };

    let mut kept = Kept::default();
    let mut pass = Passthrough::default();
    if let Some(mut stdout) = child.stdout.take() {
        let mut buf = vec![0u8; CHUNK];
        loop {
            match stdout.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = buf.get(..n).unwrap_or_default();
                    pass.write(chunk);
                    kept.push(chunk);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Dropping the pipe below may kill the command with SIGPIPE; its
                    // output is incomplete either way, so the step cannot complete.
                    kept.bytes = Vec::new();
                    kept.lost = Some(format!("reading its stdout failed ({e})"));
                    break;
                }
            }
        }
    }
    let status = child
        .wait()
        .await
        .with_context(|| format!("step {:?}: waiting for {program}", args.name))?;
    let finished_at = Utc::now();
    let code = exit_code(status);

    let completed = code == 0 && kept.lost.is_none();
    let mut telemetry = CliTelemetry::from_env();
    let mut live_span = None;
    if let Incoming::Valid { parent, .. } = &incoming
        && telemetry.hooks().wants_spans()
    {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        let (trace_id, span) = crate::trace::live_step_span(crate::trace::StepParts {
            attempt_context: parent,
            span_id: &span_id,
            execution_id: here.execution_id,
            task: &var("PGC_TASK"),
            queue: &var("PGC_QUEUE"),
            attempt: here.attempt,
            name: &args.name,
            exit_code: code,
            completed,
            start: started_at,
            end: finished_at,
        });
        live_span = Some((trace_id, span));
    }
    let rec = Record {
        here,
        name: &args.name,
        span_id: &span_id,
        output: completed.then_some(kept.bytes.as_slice()),
        exit_code: code,
        started_at,
        finished_at,
    };
    let recorded = record(global, &mut client, &rec).await;
    // Reported only when its row exists: the span id is the stored one.
    if let (Ok(()), Some((trace_id, span))) = (&recorded, &live_span) {
        telemetry.hooks().span(trace_id, span);
        telemetry.finish().await;
    }

    if completed {
        // A completed step whose record is lost would run again on a retry: say so.
        recorded.with_context(|| {
            format!(
                "step {:?}: {program} exited 0 but the step could not be recorded",
                args.name
            )
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Err(e) = recorded {
        warn(&format!(
            "step {:?}: could not record the failed run: {e}",
            args.name
        ));
    }
    if code == 0 {
        if let Some(why) = &kept.lost {
            // Exit 1 (a failure), not 2: nothing the user typed was wrong.
            return Err(anyhow::anyhow!(
                "step {:?} failed: {program} exited 0 but {why}; write large output to a file and print its path",
                args.name
            ));
        }
    }
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(1)))
}

/// Handles SIGINT and SIGTERM (by doing nothing) while the returned streams live.
fn hold_signals() -> Vec<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    [SignalKind::interrupt(), SignalKind::terminate()]
        .into_iter()
        .filter_map(|kind| signal(kind).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(validate_name("fetch").is_ok());
        assert!(validate_name("ünïcode step 1").is_ok());
        assert!(validate_name(&"é".repeat(MAX_NAME_CHARS)).is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name(&"x".repeat(MAX_NAME_CHARS + 1)).is_err());
        assert!(validate_name("a\nb").is_err());
        assert!(validate_name("a\tb").is_err());
    }

    #[test]
    fn output_past_the_cap_is_not_kept() {
        let mut kept = Kept::default();
        kept.push(&vec![b'x'; MAX_STEP_OUTPUT]);
        assert!(kept.lost.is_none());
        assert_eq!(kept.bytes.len(), MAX_STEP_OUTPUT);
        kept.push(b"y");
        assert!(kept.lost.is_some());
        assert!(kept.bytes.is_empty());
    }

    #[test]
    fn signals_map_to_128_plus_the_signal() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(4 << 8)), 4);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
