//! Running a task as a process: [`CommandHandler`], the handler behind
//! `pgc work --queue Q -- COMMAND ARGS` and `pgc work --handler TASK=COMMAND`.
//!
//! Each attempt spawns one process in a process group of its own. It reads the payload
//! JSON on stdin (closed after the payload) and finds the job in its environment
//! (`TRACEPARENT`, `TRACESTATE`, `PGC_EXECUTION_ID`, `PGC_TASK`, `PGC_QUEUE`,
//! `PGC_ATTEMPT`, `PGC_MAX_ATTEMPTS`, plus the database settings the worker passes so a
//! `pgc` run inside reaches the same database). Its exit decides the [`Outcome`]:
//!
//! - exit 0: [`Outcome::Completed`], with stdout as the result when it is JSON (see
//!   [`MAX_RESULT_BYTES`]);
//! - exit [`EX_TEMPFAIL`] (75): [`Outcome::TempFail`], run again later without using an
//!   attempt;
//! - any other exit, or death by a signal nobody here sent: [`Outcome::Failed`] with the
//!   tail of stderr (see [`MAX_ERROR_BYTES`]);
//! - past its timeout: SIGTERM to the whole group, SIGKILL after the grace period,
//!   [`Outcome::TimedOut`]; the same sequence when the worker cancels the stop token,
//!   [`Outcome::Stopped`].
//!
//! While it runs, its stderr goes to the worker's stderr one whole, prefixed line at a
//! time. Every buffer is bounded, and everything runs in the handler's own future (no
//! extra threads or tasks per process).

use std::future::Future;
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt as _;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use super::{BoxFuture, Handler, Job, Outcome};

/// Exit code with which a handler asks to run again later without using an attempt
/// (`EX_TEMPFAIL` from `sysexits.h`): the outcome is [`Outcome::TempFail`].
pub const EX_TEMPFAIL: i32 = 75;

/// The most stdout kept as a task's result, in bytes (1 MiB).
///
/// On exit 0, stdout trimmed of surrounding whitespace is the result when it is valid
/// JSON; empty or non-JSON stdout gives no result. At most this many bytes (plus one, to
/// notice the overflow) are held in memory: a handler that writes more still has the rest
/// read and thrown away, so it never blocks on a full pipe, but it gets no result at all
/// (`Completed(None)`): a cut JSON text is not JSON, and storing a prefix would mislead.
pub const MAX_RESULT_BYTES: usize = 1 << 20;

/// The most stderr kept for `last_error`, in bytes (8 KiB): the last this many bytes,
/// cut forward to a character boundary and trimmed of surrounding whitespace.
pub const MAX_ERROR_BYTES: usize = 8 * 1024;

/// The longest stderr line passed through to the worker's stderr, in bytes (16 KiB);
/// the rest of a longer line is dropped and the line ends with `…`.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Grace period between SIGTERM and SIGKILL unless [`CommandHandler::kill_grace`] says
/// otherwise.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);

/// How long output is still read after the process itself has exited (or, when stopping
/// it, after SIGKILL): long enough to collect what was already written, short enough that
/// a background process it left behind holding the pipes open cannot hold up the worker.
/// Such leftovers are not signalled once the process exited on its own; they get EPIPE
/// when they next write.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Read size for stdout and stderr.
const CHUNK: usize = 8 * 1024;

/// The program a [`CommandHandler`] runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// `pgc work -- COMMAND ARGS`: the program run directly with its arguments, no shell
    /// (`program` is looked up in `PATH` when it has no `/`).
    Direct {
        /// Program name or path.
        program: String,
        /// Its arguments.
        args: Vec<String>,
    },
    /// `pgc work --handler TASK=COMMAND`: operator-written text run as `/bin/sh -c TEXT`.
    /// The payload never becomes part of a command line; it arrives on stdin.
    Shell(String),
}

impl Program {
    /// What is executed, for messages.
    fn name(&self) -> &str {
        match self {
            Program::Direct { program, .. } => program,
            Program::Shell(_) => SHELL,
        }
    }

    fn command(&self) -> Command {
        match self {
            Program::Direct { program, args } => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
            Program::Shell(text) => {
                let mut cmd = Command::new(SHELL);
                cmd.arg("-c").arg(text);
                cmd
            }
        }
    }
}

const SHELL: &str = "/bin/sh";

impl Config {
    /// The command to spawn. A direct program named without a `/` is looked up in `PATH`
    /// once, as `execvp` would at every spawn (trying each directory in turn), and then
    /// started by its path with the name it was given as `argv[0]` (`by_path`; without
    /// it, by name, with the lookup at spawn).
    fn command(&self, by_path: bool) -> Command {
        if by_path
            && let Program::Direct { program, args } = &self.program
            && let Some(path) = self.resolved.get_or_init(|| self.lookup(program)).as_ref()
        {
            let mut cmd = Command::new(path);
            cmd.arg0(program).args(args);
            return cmd;
        }
        self.program.command()
    }

    /// The first executable regular file named `program` in an absolute `PATH`
    /// directory; `None` when the name has a `/`, the handler's own environment sets
    /// `PATH`, or `PATH` has a relative entry (those keep the spawn-time lookup).
    fn lookup(&self, program: &str) -> Option<std::path::PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        if program.contains('/') || self.env.iter().any(|(k, _)| k == "PATH") {
            return None;
        }
        let path = std::env::var_os("PATH")?;
        let dirs: Vec<std::path::PathBuf> = std::env::split_paths(&path).collect();
        if dirs.iter().any(|d| !d.is_absolute()) {
            return None;
        }
        dirs.into_iter().map(|d| d.join(program)).find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    }
}

/// Where passed-through stderr lines go.
#[derive(Debug, Clone, Default)]
enum Sink {
    /// Nowhere (the tail is still kept for `last_error`).
    #[default]
    Off,
    /// The worker's stderr.
    Stderr,
    /// A buffer, for tests.
    #[cfg(test)]
    Capture(Arc<std::sync::Mutex<Vec<u8>>>),
}

impl Sink {
    /// Writes one whole line (already ending in `\n`) with a single `write_all` under the
    /// stderr lock, so lines of concurrent handlers never mix. Errors are ignored: losing
    /// passthrough output must not fail the task.
    fn write_line(&self, line: &[u8]) {
        match self {
            Sink::Off => {}
            Sink::Stderr => {
                let _ = std::io::stderr().lock().write_all(line);
            }
            #[cfg(test)]
            Sink::Capture(buf) => {
                if let Ok(mut buf) = buf.lock() {
                    buf.extend_from_slice(line);
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    program: Program,
    /// A direct program's path, looked up in `PATH` at its first spawn (`None`: spawn it
    /// by name).
    resolved: std::sync::OnceLock<Option<std::path::PathBuf>>,
    env: Vec<(String, String)>,
    timeout: Option<Duration>,
    kill_grace: Duration,
    prefix: fn(&Job) -> String,
    sink: Sink,
    json: bool,
}

/// Runs each job as a process; see the [module documentation](self).
///
/// Built with [`CommandHandler::new`] and the builder methods; cheap to share (the
/// configuration sits behind an [`Arc`]).
#[derive(Debug, Clone)]
pub struct CommandHandler {
    config: Arc<Config>,
}

/// The job's fields of a JSON passthrough line, each preceded by a comma.
fn json_fields(job: &Job) -> String {
    let mut fields = serde_json::Map::new();
    fields.insert("execution_id".into(), job.execution_id.to_string().into());
    fields.insert("task".into(), job.task.clone().into());
    fields.insert("queue".into(), job.queue.clone().into());
    fields.insert("attempt".into(), job.attempt.into());
    if let Ok(tp) = crate::traceparent::TraceParent::parse(&job.traceparent) {
        fields.insert("trace_id".into(), tp.trace_id.to_string().into());
        fields.insert("span_id".into(), tp.parent_id.to_string().into());
    }
    let object = serde_json::Value::Object(fields).to_string();
    // `{"a":1,"b":2}` → `,"a":1,"b":2`
    format!(",{}", object.get(1..object.len() - 1).unwrap_or_default())
}

/// The default stderr prefix: `[<task> <short id>] ` (see [`short_id`]).
pub fn default_stderr_prefix(job: &Job) -> String {
    format!("[{} {}] ", job.task, short_id(&job.execution_id))
}

/// The last 8 hex digits of an execution id, as log lines show it. Execution ids are
/// UUID v7: their first digits are the time of the enqueue, the same for every execution
/// enqueued within about a minute, while the last ones are random.
pub fn short_id(id: &uuid::Uuid) -> String {
    let id = id.simple().to_string();
    id.get(id.len().saturating_sub(8)..)
        .unwrap_or(&id)
        .to_string()
}

impl CommandHandler {
    /// A handler running `program`, with no extra environment, no timeout, a
    /// [`DEFAULT_KILL_GRACE`] grace period and stderr passed through with
    /// [`default_stderr_prefix`].
    pub fn new(program: Program) -> Self {
        CommandHandler {
            config: Arc::new(Config {
                program,
                resolved: std::sync::OnceLock::new(),
                env: Vec::new(),
                timeout: None,
                kill_grace: DEFAULT_KILL_GRACE,
                prefix: default_stderr_prefix,
                sink: Sink::Stderr,
                json: false,
            }),
        }
    }

    fn with(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Extra environment variables for every process, set exactly as given (an empty
    /// value stays set and empty): the worker passes its database settings
    /// (`ConnectOptions::child_env()`). The job's own variables (`TRACEPARENT`,
    /// `TRACESTATE`, `PGC_*`) win over these: a `TRACESTATE` here is removed when the job
    /// has none.
    pub fn env(self, vars: Vec<(String, String)>) -> Self {
        self.with(|c| c.env = vars)
    }

    /// How long a process may run before it is stopped (SIGTERM to its process group,
    /// SIGKILL after the [grace period](Self::kill_grace)) with [`Outcome::TimedOut`].
    /// `None`: no limit.
    pub fn timeout(self, t: Option<Duration>) -> Self {
        self.with(|c| c.timeout = t)
    }

    /// Time between SIGTERM and SIGKILL when stopping a process (timeout or stop token).
    pub fn kill_grace(self, t: Duration) -> Self {
        self.with(|c| c.kill_grace = t)
    }

    /// The text put before each passed-through stderr line, computed once per job.
    pub fn stderr_prefix(self, f: fn(&Job) -> String) -> Self {
        self.with(|c| c.prefix = f)
    }

    /// Passes stderr lines through as JSON objects (`time`, `level`, `message`,
    /// `source: "handler"`, and the job's `execution_id`, `task`, `queue`, `attempt`,
    /// `trace_id` and `span_id`, the attempt's span), instead of prefixed text.
    pub fn json_lines(self, on: bool) -> Self {
        self.with(|c| c.json = on)
    }

    /// Whether stderr lines are passed through to the worker's stderr (default `true`).
    /// Off, stderr is still read and its tail still kept for [`Outcome::Failed`].
    pub fn pass_stderr(self, on: bool) -> Self {
        self.with(|c| c.sink = if on { Sink::Stderr } else { Sink::Off })
    }

    #[cfg(test)]
    fn capture_stderr(self, buf: Arc<std::sync::Mutex<Vec<u8>>>) -> Self {
        self.with(|c| c.sink = Sink::Capture(buf))
    }
}

impl Handler for CommandHandler {
    fn run(&self, job: Job, stop: CancellationToken) -> BoxFuture<Outcome> {
        Box::pin(execute(Arc::clone(&self.config), job, stop))
    }
}

/// The process group of a spawned process. While its leader has not been reaped the
/// group id cannot name anyone else, so signalling it is safe; dropping this while the
/// leader is unreaped (the handler future dropped mid-run) kills the whole group.
struct Group {
    pgid: Pid,
    leader_reaped: bool,
}

impl Group {
    fn signal(&self, sig: Signal) {
        // ESRCH (all gone) and the like are fine: there is nothing left to signal.
        let _ = killpg(self.pgid, sig);
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.leader_reaped {
            self.signal(Signal::SIGKILL);
        }
    }
}

/// How the wait for the process ended.
enum Ending {
    Exited(ExitStatus),
    TimedOut(Duration),
    Stopped,
    WaitFailed(std::io::Error),
}

async fn execute(config: Arc<Config>, job: Job, stop: CancellationToken) -> Outcome {
    if stop.is_cancelled() {
        return Outcome::Stopped;
    }
    let spawned = match prepare(&config, &job, true).spawn() {
        // The program found in PATH at the first spawn is gone or not runnable by now
        // (moved by an upgrade, say): look it up again, as execvp would.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) && config.resolved.get().is_some_and(Option::is_some) =>
        {
            prepare(&config, &job, false).spawn()
        }
        other => other,
    };
    run_spawned(&config, job, stop, spawned).await
}

/// The process for one job: its program, environment and pipes.
fn prepare(config: &Config, job: &Job, by_path: bool) -> Command {
    let mut cmd = config.command(by_path);
    cmd.envs(config.env.iter().map(|(k, v)| (k, v)))
        .env("TRACEPARENT", &job.traceparent)
        .env("PGC_EXECUTION_ID", job.execution_id.to_string())
        .env("PGC_TASK", &job.task)
        .env("PGC_QUEUE", &job.queue)
        .env("PGC_ATTEMPT", job.attempt.to_string())
        .env("PGC_MAX_ATTEMPTS", job.max_attempts.to_string());
    match &job.tracestate {
        Some(ts) => cmd.env("TRACESTATE", ts),
        None => cmd.env_remove("TRACESTATE"),
    };
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    cmd
}

async fn run_spawned(
    config: &Arc<Config>,
    job: Job,
    stop: CancellationToken,
    spawned: std::io::Result<tokio::process::Child>,
) -> Outcome {
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => {
            let msg = format!("could not start {}: {err}", config.program.name());
            return Outcome::Failed(one_line(&msg));
        }
    };
    // Declared after `child`, so dropped before it: the group is killed while the leader
    // is still unreaped.
    let mut group = match child.id().and_then(|id| i32::try_from(id).ok()) {
        Some(id) => Group {
            pgid: Pid::from_raw(id),
            leader_reaped: false,
        },
        // Only when already reaped, which cannot be before the first wait.
        None => Group {
            pgid: Pid::from_raw(0),
            leader_reaped: true,
        },
    };
    let deadline = config.timeout.map(|t| (Instant::now() + t, t));

    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let prefix = match config.sink {
        Sink::Off => String::new(),
        _ if config.json => json_fields(&job),
        _ => (config.prefix)(&job),
    };
    let payload = job.payload.into_bytes();
    let mut out = Captured::default();
    let mut err = StderrState {
        prefix,
        sink: config.sink.clone(),
        json: config.json,
        ..StderrState::default()
    };

    let ending = {
        let io = std::pin::pin!(async {
            tokio::join!(
                feed(stdin, &payload),
                read_stdout(stdout, &mut out),
                read_stderr(stderr, &mut err),
            );
        });
        drive(
            &mut child,
            &mut group,
            io,
            deadline,
            &stop,
            config.kill_grace,
        )
        .await
    };
    err.finish();

    match ending {
        Ending::Exited(status) => outcome_of(status, &out, &err.tail),
        Ending::TimedOut(t) => {
            Outcome::TimedOut(format!("timed out after {}", humantime::format_duration(t)))
        }
        Ending::Stopped => Outcome::Stopped,
        Ending::WaitFailed(e) => Outcome::Failed(one_line(&format!(
            "could not wait for {}: {e}",
            config.program.name()
        ))),
    }
}

/// Waits for the process and its output, or stops it on timeout or the stop token.
async fn drive<F: Future<Output = ()>>(
    child: &mut Child,
    group: &mut Group,
    mut io: Pin<&mut F>,
    deadline: Option<(Instant, Duration)>,
    stop: &CancellationToken,
    grace: Duration,
) -> Ending {
    let mut status = None;
    let mut io_done = false;
    let mut drain_until = None;
    loop {
        if io_done {
            if let Some(status) = status {
                return Ending::Exited(status);
            }
        }
        tokio::select! {
            r = child.wait(), if status.is_none() => match r {
                Ok(s) => {
                    group.leader_reaped = true;
                    status = Some(s);
                    drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                }
                Err(e) => {
                    terminate(child, group, io.as_mut(), &mut io_done, grace).await;
                    return Ending::WaitFailed(e);
                }
            },
            () = &mut io, if !io_done => io_done = true,
            () = sleep_opt(drain_until), if status.is_some() => {
                // Something it left behind still holds the pipes: stop reading.
                if let Some(status) = status {
                    return Ending::Exited(status);
                }
            }
            () = sleep_opt(deadline.map(|d| d.0)), if status.is_none() => {
                terminate(child, group, io.as_mut(), &mut io_done, grace).await;
                return Ending::TimedOut(deadline.map_or(Duration::ZERO, |d| d.1));
            }
            () = stop.cancelled(), if status.is_none() => {
                terminate(child, group, io.as_mut(), &mut io_done, grace).await;
                return Ending::Stopped;
            }
        }
    }
}

/// SIGTERM to the group; SIGKILL after `grace` unless the process exited and the pipes
/// closed by then. Output keeps being read meanwhile (a process blocked on a full pipe
/// could not act on SIGTERM). Returns once the leader is reaped and output ended, or
/// [`DRAIN_AFTER_EXIT`] after SIGKILL at the latest.
async fn terminate<F: Future<Output = ()>>(
    child: &mut Child,
    group: &mut Group,
    mut io: Pin<&mut F>,
    io_done: &mut bool,
    grace: Duration,
) {
    if !group.leader_reaped {
        group.signal(Signal::SIGTERM);
    }
    let kill_at = Instant::now() + grace;
    let mut give_up_at = None;
    loop {
        if *io_done && group.leader_reaped {
            return;
        }
        tokio::select! {
            // A wait error is not retried: the process is treated as gone (kill_on_drop
            // and the Group guard still apply).
            _ = child.wait(), if !group.leader_reaped => group.leader_reaped = true,
            () = &mut io, if !*io_done => *io_done = true,
            () = sleep_until(kill_at), if give_up_at.is_none() => {
                // Still running, or the leader is gone but something holds its pipes:
                // most likely a member of its group, whose id is then still taken.
                group.signal(Signal::SIGKILL);
                give_up_at = Some(Instant::now() + DRAIN_AFTER_EXIT);
            }
            () = sleep_opt(give_up_at), if give_up_at.is_some() => return,
        }
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes the payload to stdin, then closes it. Errors (the process does not read its
/// stdin and exited: EPIPE) are ignored.
async fn feed(stdin: Option<ChildStdin>, payload: &[u8]) {
    if let Some(mut stdin) = stdin {
        let _ = stdin.write_all(payload).await;
        let _ = stdin.shutdown().await;
    }
}

/// Stdout, up to [`MAX_RESULT_BYTES`].
#[derive(Default)]
struct Captured {
    buf: Vec<u8>,
    overflow: bool,
}

async fn read_stdout(stdout: Option<ChildStdout>, out: &mut Captured) {
    let Some(stdout) = stdout else { return };
    read_chunks(stdout, |chunk| {
        if out.overflow {
            return;
        }
        if out.buf.len() + chunk.len() > MAX_RESULT_BYTES {
            out.overflow = true;
            out.buf = Vec::new();
        } else {
            out.buf.extend_from_slice(chunk);
        }
    })
    .await;
}

/// Reads `r` to its end (or first error), handing each chunk to `f`.
async fn read_chunks(mut r: impl AsyncRead + Unpin, mut f: impl FnMut(&[u8])) {
    let mut chunk = [0u8; CHUNK];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => f(&chunk[..n]),
        }
    }
}

/// Stderr: the line being assembled for passthrough and the tail for `last_error`.
#[derive(Default)]
struct StderrState {
    /// The text prefix, or with `json` the job's fields (`,"execution_id":…`).
    prefix: String,
    sink: Sink,
    json: bool,
    line: Vec<u8>,
    line_truncated: bool,
    tail: Vec<u8>,
}

impl StderrState {
    fn push(&mut self, chunk: &[u8]) {
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > 2 * MAX_ERROR_BYTES {
            let cut = self.tail.len() - MAX_ERROR_BYTES;
            self.tail.drain(..cut);
        }
        if matches!(self.sink, Sink::Off) {
            return;
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            let (part, newline) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], true),
                None => (rest, false),
            };
            let room = MAX_LINE_BYTES - self.line.len();
            if part.len() > room {
                self.line.extend_from_slice(&part[..room]);
                self.line_truncated = true;
            } else {
                self.line.extend_from_slice(part);
            }
            if newline {
                self.emit();
                rest = &rest[part.len() + 1..];
            } else {
                rest = &[];
            }
        }
    }

    /// Passes the assembled line through, as one write.
    fn emit(&mut self) {
        let mut line: &[u8] = &self.line;
        if self.line_truncated {
            line = cut_incomplete_end(line);
        } else if let [head @ .., b'\r'] = line {
            line = head;
        }
        let text = String::from_utf8_lossy(line);
        let mut whole = String::with_capacity(self.prefix.len() + text.len() + 5);
        if self.json {
            let mut message = text.into_owned();
            if self.line_truncated {
                message.push('…');
            }
            whole.push_str("{\"time\":");
            whole.push_str(
                &serde_json::Value::from(
                    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                )
                .to_string(),
            );
            whole.push_str(",\"level\":\"info\",\"source\":\"handler\",\"message\":");
            whole.push_str(&serde_json::Value::from(message).to_string());
            whole.push_str(&self.prefix);
            whole.push('}');
        } else {
            whole.push_str(&self.prefix);
            whole.push_str(&text);
            if self.line_truncated {
                whole.push('…');
            }
        }
        whole.push('\n');
        self.sink.write_line(whole.as_bytes());
        self.line.clear();
        self.line_truncated = false;
    }

    /// Passes through a last line without a newline.
    fn finish(&mut self) {
        if !self.line.is_empty() || self.line_truncated {
            self.emit();
        }
        self.line = Vec::new();
    }
}

async fn read_stderr(stderr: Option<ChildStderr>, state: &mut StderrState) {
    let Some(stderr) = stderr else { return };
    read_chunks(stderr, |chunk| state.push(chunk)).await;
}

/// Drops a UTF-8 sequence cut short at the end of `bytes`.
fn cut_incomplete_end(bytes: &[u8]) -> &[u8] {
    for back in 1..=bytes.len().min(4) {
        let i = bytes.len() - back;
        let b = bytes[i];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: look further back for the lead
        }
        let need = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if need > back { &bytes[..i] } else { bytes };
    }
    bytes
}

/// The last [`MAX_ERROR_BYTES`] of stderr as text: cut forward to a character boundary,
/// invalid UTF-8 replaced, trimmed.
fn tail_text(tail: &[u8]) -> String {
    let start = tail.len().saturating_sub(MAX_ERROR_BYTES);
    let mut bytes = &tail[start..];
    if start > 0 {
        let skip = bytes
            .iter()
            .take(3)
            .take_while(|&&b| b & 0xC0 == 0x80)
            .count();
        bytes = &bytes[skip..];
    }
    String::from_utf8_lossy(bytes).trim().to_owned()
}

fn outcome_of(status: ExitStatus, out: &Captured, err_tail: &[u8]) -> Outcome {
    let with_tail = |head: String| {
        let tail = tail_text(err_tail);
        if tail.is_empty() {
            head
        } else {
            format!("{head}: {tail}")
        }
    };
    match status.code() {
        Some(0) => Outcome::Completed(result_of(out)),
        Some(EX_TEMPFAIL) => {
            let tail = tail_text(err_tail);
            Outcome::TempFail(if tail.is_empty() {
                format!("exit status {EX_TEMPFAIL}")
            } else {
                tail
            })
        }
        Some(code) => Outcome::Failed(with_tail(format!("exit status {code}"))),
        None => {
            let head = match status.signal() {
                Some(sig) => match Signal::try_from(sig) {
                    Ok(sig) => format!("killed by signal {sig}"),
                    Err(_) => format!("killed by signal {sig}"),
                },
                None => format!("ended with {status}"),
            };
            Outcome::Failed(with_tail(head))
        }
    }
}

/// Stdout as the result: trimmed, valid JSON, within the cap; otherwise none.
fn result_of(out: &Captured) -> Option<String> {
    if out.overflow {
        return None;
    }
    let text = std::str::from_utf8(&out.buf).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    serde_json::from_str::<&serde_json::value::RawValue>(text).ok()?;
    Some(text.to_owned())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::time::Instant as StdInstant;
    use uuid::Uuid;

    /// Upper bound proving a run does not hang; not a timing assertion.
    const NO_HANG: Duration = Duration::from_secs(10);

    #[test]
    fn log_lines_name_an_execution_by_the_random_end_of_its_id() {
        let j = job("{}");
        assert_eq!(short_id(&j.execution_id), "c3d4e5f6");
        assert_eq!(default_stderr_prefix(&j), "[email.send c3d4e5f6] ");
    }

    fn job(payload: &str) -> Job {
        Job {
            execution_id: Uuid::parse_str("0192f0c1-2b3c-7d4e-8f90-a1b2c3d4e5f6").expect("uuid"),
            task: "email.send".into(),
            queue: "default".into(),
            payload: payload.into(),
            attempt: 2,
            max_attempts: 5,
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: None,
        }
    }

    fn sh(script: &str) -> CommandHandler {
        CommandHandler::new(Program::Shell(script.into())).pass_stderr(false)
    }

    async fn run_with(h: &CommandHandler, job: Job, stop: CancellationToken) -> Outcome {
        tokio::time::timeout(NO_HANG, h.run(job, stop))
            .await
            .expect("handler hung")
    }

    async fn run(h: &CommandHandler, job: Job) -> Outcome {
        run_with(h, job, CancellationToken::new()).await
    }

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("pgc-cmd-test-{name}-{}", Uuid::new_v4().simple()))
    }

    /// Waits for `path` to hold a pid, then returns it.
    async fn read_pid(path: &std::path::Path) -> i32 {
        for _ in 0..200 {
            if let Ok(text) = std::fs::read_to_string(path) {
                if let Ok(pid) = text.trim().parse() {
                    return pid;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("no pid in {}", path.display());
    }

    /// Gone or a zombie (in a container nobody may reap orphans).
    fn is_dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    async fn assert_dies(pid: i32) {
        for _ in 0..200 {
            if is_dead(pid) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("process {pid} still alive");
    }

    #[tokio::test]
    async fn json_stdout_is_the_result() {
        let out = run(&sh(r#"printf '  {"ok": true, "n": [1,2]}\n\n'"#), job("{}")).await;
        assert_eq!(
            out,
            Outcome::Completed(Some(r#"{"ok": true, "n": [1,2]}"#.into()))
        );
    }

    #[tokio::test]
    async fn non_json_or_empty_stdout_is_no_result() {
        assert_eq!(
            run(&sh("echo hello world"), job("{}")).await,
            Outcome::Completed(None)
        );
        assert_eq!(run(&sh("true"), job("{}")).await, Outcome::Completed(None));
        assert_eq!(
            run(&sh("printf '\\377\\n'"), job("{}")).await,
            Outcome::Completed(None)
        );
    }

    #[tokio::test]
    async fn stdin_gets_the_payload_exactly() {
        let payload = r#"{"k":[1,2,3],"s":"h\u00e9 é \"q\"","n":null}"#;
        assert_eq!(
            run(&sh("cat"), job(payload)).await,
            Outcome::Completed(Some(payload.into()))
        );
        // Byte count too, to prove nothing was added (cat's output gets trimmed).
        let n = payload.len();
        assert_eq!(
            run(&sh("wc -c | tr -d ' '"), job(payload)).await,
            Outcome::Completed(Some(n.to_string()))
        );
    }

    #[tokio::test]
    async fn stdin_is_closed_and_unread_stdin_is_fine() {
        // `cat` ends only because stdin is closed after the payload.
        assert_eq!(
            run(&sh("cat >/dev/null; echo 1"), job("{}")).await,
            Outcome::Completed(Some("1".into()))
        );
        // A payload bigger than a pipe buffer, never read.
        let big = format!("\"{}\"", "x".repeat(1 << 20));
        assert_eq!(
            run(&sh("echo 2"), job(&big)).await,
            Outcome::Completed(Some("2".into()))
        );
    }

    const PRINT_ENV: &str = r#"printf '{"tp":"%s","ts":"%s","id":"%s","task":"%s","queue":"%s","attempt":"%s","max":"%s","db":"%s","empty":"%s"}' \
        "$TRACEPARENT" "${TRACESTATE-<unset>}" "$PGC_EXECUTION_ID" "$PGC_TASK" "$PGC_QUEUE" \
        "$PGC_ATTEMPT" "$PGC_MAX_ATTEMPTS" "${PGC_TEST_DB-<unset>}" "${PGC_TEST_EMPTY-<unset>}""#;

    fn env_of(out: Outcome) -> serde_json::Value {
        match out {
            Outcome::Completed(Some(json)) => serde_json::from_str(&json).expect("json"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn environment_carries_the_job_and_extra_vars() {
        let h = sh(PRINT_ENV).env(vec![
            ("PGC_TEST_DB".into(), "postgres://db/x".into()),
            ("PGC_TEST_EMPTY".into(), String::new()),
        ]);
        let mut j = job("{}");
        j.tracestate = Some("vendor=abc".into());
        let env = env_of(run(&h, j.clone()).await);
        assert_eq!(env["tp"], j.traceparent.as_str());
        assert_eq!(env["ts"], "vendor=abc");
        assert_eq!(env["id"], j.execution_id.to_string().as_str());
        assert_eq!(env["task"], "email.send");
        assert_eq!(env["queue"], "default");
        assert_eq!(env["attempt"], "2");
        assert_eq!(env["max"], "5");
        assert_eq!(env["db"], "postgres://db/x");
        assert_eq!(env["empty"], "", "an empty extra value stays set");
    }

    #[tokio::test]
    async fn job_variables_win_over_extra_env() {
        let h = sh(PRINT_ENV).env(vec![
            ("TRACESTATE".into(), "stale=1".into()),
            ("PGC_TASK".into(), "wrong".into()),
            ("TRACEPARENT".into(), "wrong".into()),
        ]);
        let j = job("{}");
        let env = env_of(run(&h, j.clone()).await);
        assert_eq!(
            env["ts"], "<unset>",
            "no tracestate on the job: none in the process"
        );
        assert_eq!(env["task"], "email.send");
        assert_eq!(env["tp"], j.traceparent.as_str());
    }

    #[tokio::test]
    async fn a_direct_program_is_looked_up_once_and_keeps_its_name_as_argv0() {
        // `sh -c 'printf "\"%s\"" "$0"'` prints its own argv[0].
        let h = CommandHandler::new(Program::Direct {
            program: "sh".into(),
            args: vec!["-c".into(), r#"printf '"%s"' "$0""#.into()],
        })
        .pass_stderr(false);
        assert_eq!(
            run(&h, job("{}")).await,
            Outcome::Completed(Some(r#""sh""#.into()))
        );
        let resolved = h.config.resolved.get().cloned().flatten();
        let resolved = resolved.expect("found in PATH");
        assert!(
            resolved.is_absolute() && resolved.ends_with("sh"),
            "{resolved:?}"
        );
        // A name with a slash, or a handler environment with its own PATH, is not looked up.
        let h = CommandHandler::new(Program::Direct {
            program: "./nowhere".into(),
            args: vec![],
        });
        assert_eq!(h.config.lookup("./nowhere"), None);
        let h = sh("true").env(vec![("PATH".into(), "/nowhere".into())]);
        assert_eq!(h.config.lookup("sh"), None);
    }

    #[tokio::test]
    async fn a_program_gone_from_its_looked_up_path_is_looked_up_again() {
        let h = CommandHandler::new(Program::Direct {
            program: "printf".into(),
            args: vec!["\"ok\"".into()],
        })
        .pass_stderr(false);
        // As if it had been found there at the first spawn and moved since.
        h.config
            .resolved
            .set(Some("/nonexistent/bin/printf".into()))
            .expect("not looked up yet");
        assert_eq!(
            run(&h, job("{}")).await,
            Outcome::Completed(Some(r#""ok""#.into()))
        );
    }

    #[tokio::test]
    async fn direct_program_gets_arguments_without_a_shell() {
        let h = CommandHandler::new(Program::Direct {
            program: "printf".into(),
            args: vec!["\"%s\"".into(), "a b; echo $HOME".into()],
        })
        .pass_stderr(false);
        assert_eq!(
            run(&h, job("{}")).await,
            Outcome::Completed(Some(r#""a b; echo $HOME""#.into()))
        );
    }

    #[tokio::test]
    async fn nonzero_exit_fails_with_stderr_tail() {
        assert_eq!(
            run(
                &sh("echo starting >&2; echo '  oops: bad input  ' >&2; exit 3"),
                job("{}")
            )
            .await,
            Outcome::Failed("exit status 3: starting\n  oops: bad input".into())
        );
        assert_eq!(
            run(&sh("exit 3"), job("{}")).await,
            Outcome::Failed("exit status 3".into())
        );
    }

    #[tokio::test]
    async fn long_stderr_keeps_only_the_tail() {
        let out = run(
            &sh("head -c 100000 /dev/zero | tr '\\0' x >&2; echo END >&2; exit 1"),
            job("{}"),
        )
        .await;
        let Outcome::Failed(text) = out else {
            panic!("{out:?}")
        };
        assert!(text.starts_with("exit status 1: xxx"));
        assert!(text.ends_with("xEND"));
        assert!(
            text.len() <= "exit status 1: ".len() + MAX_ERROR_BYTES,
            "{}",
            text.len()
        );
    }

    #[tokio::test]
    async fn exit_75_is_tempfail() {
        assert_eq!(
            run(&sh("exit 75"), job("{}")).await,
            Outcome::TempFail("exit status 75".into())
        );
        assert_eq!(
            run(&sh("echo 'rate limited' >&2; exit 75"), job("{}")).await,
            Outcome::TempFail("rate limited".into())
        );
    }

    #[tokio::test]
    async fn death_by_signal_fails() {
        let out = run(&sh("echo dying >&2; kill -SEGV $$"), job("{}")).await;
        assert_eq!(
            out,
            Outcome::Failed("killed by signal SIGSEGV: dying".into())
        );
    }

    #[tokio::test]
    async fn timeout_terminates() {
        let h = sh("sleep 30").timeout(Some(Duration::from_millis(300)));
        let started = StdInstant::now();
        assert_eq!(
            run(&h, job("{}")).await,
            Outcome::TimedOut("timed out after 300ms".into())
        );
        // Well under kill_grace (5 s): SIGTERM did it.
        assert!(
            started.elapsed() < DEFAULT_KILL_GRACE,
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn timeout_kills_what_ignores_sigterm() {
        let pidfile = temp_path("trap");
        let script = format!(
            "trap '' TERM; sleep 30 & echo $! > {}; wait",
            pidfile.display()
        );
        let h = sh(&script)
            .timeout(Some(Duration::from_millis(300)))
            .kill_grace(Duration::from_millis(300));
        let started = StdInstant::now();
        assert_eq!(
            run(&h, job("{}")).await,
            Outcome::TimedOut("timed out after 300ms".into())
        );
        assert!(started.elapsed() >= Duration::from_millis(600));
        let pid = read_pid(&pidfile).await;
        assert_dies(pid).await;
        let _ = std::fs::remove_file(&pidfile);
    }

    #[tokio::test]
    async fn timeout_reaches_the_whole_process_group() {
        let pidfile = temp_path("group");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let h = sh(&script).timeout(Some(Duration::from_millis(300)));
        assert!(matches!(run(&h, job("{}")).await, Outcome::TimedOut(_)));
        let pid = read_pid(&pidfile).await;
        assert_dies(pid).await;
        let _ = std::fs::remove_file(&pidfile);
    }

    #[tokio::test]
    async fn stop_token_stops() {
        let h = sh("sleep 30");
        let stop = CancellationToken::new();
        let cancel = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            cancel.cancel();
        });
        let started = StdInstant::now();
        assert_eq!(run_with(&h, job("{}"), stop).await, Outcome::Stopped);
        assert!(started.elapsed() < DEFAULT_KILL_GRACE);
    }

    #[tokio::test]
    async fn stop_already_cancelled_does_not_start() {
        let pidfile = temp_path("never");
        let stop = CancellationToken::new();
        stop.cancel();
        let h = sh(&format!("echo $$ > {}", pidfile.display()));
        assert_eq!(run_with(&h, job("{}"), stop).await, Outcome::Stopped);
        assert!(!pidfile.exists());
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_group() {
        let pidfile = temp_path("drop");
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let h = sh(&script);
        let mut fut = h.run(job("{}"), CancellationToken::new());
        let pid = tokio::select! {
            out = &mut fut => panic!("ended early: {out:?}"),
            pid = read_pid(&pidfile) => pid,
        };
        drop(fut);
        assert_dies(pid).await;
        let _ = std::fs::remove_file(&pidfile);
    }

    #[tokio::test]
    async fn big_stdout_does_not_block_and_gives_no_result() {
        let out = run(
            &sh("head -c 3145728 /dev/zero | tr '\\0' a; echo done >&2"),
            job("{}"),
        )
        .await;
        assert_eq!(out, Outcome::Completed(None));
        // Just under the cap is still a result.
        let script = format!(
            "printf '\"'; head -c {} /dev/zero | tr '\\0' a; printf '\"'",
            MAX_RESULT_BYTES - 2
        );
        let Outcome::Completed(Some(r)) = run(&sh(&script), job("{}")).await else {
            panic!("no result")
        };
        assert_eq!(r.len(), MAX_RESULT_BYTES);
    }

    #[tokio::test]
    async fn background_leftover_does_not_hold_up_the_worker() {
        let pidfile = temp_path("leftover");
        let script = format!("sleep 30 & echo $! > {}; echo 7", pidfile.display());
        assert_eq!(
            run(&sh(&script), job("{}")).await,
            Outcome::Completed(Some("7".into()))
        );
        let pid = read_pid(&pidfile).await;
        // Leftovers are not ours to kill once the process exited on its own; clean up.
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        let _ = std::fs::remove_file(&pidfile);
    }

    #[tokio::test]
    async fn spawn_failure_fails_in_one_line() {
        let h = CommandHandler::new(Program::Direct {
            program: "/nonexistent/pgc-test-program".into(),
            args: vec![],
        });
        let Outcome::Failed(text) = run(&h, job("{}")).await else {
            panic!()
        };
        assert!(
            text.starts_with("could not start /nonexistent/pgc-test-program: "),
            "{text}"
        );
        assert!(!text.contains('\n'));

        let h = CommandHandler::new(Program::Direct {
            program: "/dev/null".into(),
            args: vec![],
        });
        let Outcome::Failed(text) = run(&h, job("{}")).await else {
            panic!()
        };
        assert!(text.starts_with("could not start /dev/null: "), "{text}");
    }

    #[tokio::test]
    async fn stderr_lines_are_passed_through_whole_and_prefixed() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let h = CommandHandler::new(Program::Shell(
            "printf 'one\\ntwo\\377\\r\\n' >&2; printf 'par' >&2; sleep 0.05; printf 'tial' >&2; exit 1".into(),
        ))
        .capture_stderr(buf.clone());
        let out = run(&h, job("{}")).await;
        assert!(
            matches!(out, Outcome::Failed(ref t) if t.starts_with("exit status 1: one")),
            "{out:?}"
        );
        let text = String::from_utf8(buf.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(
            text,
            "[email.send c3d4e5f6] one\n[email.send c3d4e5f6] two\u{FFFD}\n[email.send c3d4e5f6] partial\n"
        );
    }

    #[tokio::test]
    async fn long_stderr_lines_are_capped_and_prefix_is_configurable() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        // 20000 'é' (2 bytes each) on one line, then a short one.
        let h = CommandHandler::new(Program::Shell(
            "i=0; s=éééééééééé; while [ $i -lt 2000 ]; do printf %s $s; i=$((i+1)); done >&2; echo >&2; echo short >&2"
                .into(),
        ))
        .stderr_prefix(|j| format!("{}> ", j.queue))
        .capture_stderr(buf.clone());
        assert_eq!(run(&h, job("{}")).await, Outcome::Completed(None));
        let text = String::from_utf8(buf.lock().expect("lock").clone()).expect("utf-8");
        let lines: Vec<&str> = text.split_terminator('\n').collect();
        assert_eq!(lines.len(), 2, "{}", text.len());
        assert!(lines[0].starts_with("default> éé"));
        assert!(lines[0].ends_with("é…"));
        assert!(lines[0].len() <= "default> ".len() + MAX_LINE_BYTES + '…'.len_utf8());
        assert_eq!(lines[1], "default> short");
    }

    #[test]
    fn tail_is_cut_on_a_char_boundary() {
        let mut bytes = "é".repeat(MAX_ERROR_BYTES).into_bytes(); // 2 bytes each
        bytes.push(b'x');
        let start = bytes.len() - MAX_ERROR_BYTES;
        assert_eq!(bytes[start] & 0xC0, 0x80, "the test must cut mid-character");
        let text = tail_text(&bytes);
        assert!(!text.contains('\u{FFFD}'));
        assert_eq!(text.chars().count(), MAX_ERROR_BYTES / 2);
        assert!(text.ends_with("éx"));
    }

    #[test]
    fn incomplete_end_is_cut() {
        assert_eq!(cut_incomplete_end("aé".as_bytes()), "aé".as_bytes());
        assert_eq!(cut_incomplete_end(&"aé".as_bytes()[..2]), b"a");
        assert_eq!(cut_incomplete_end(&"a€".as_bytes()[..3]), b"a");
        assert_eq!(cut_incomplete_end(b""), b"");
    }
}
