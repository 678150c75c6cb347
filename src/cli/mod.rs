//! The command line: clap definitions, one module per subcommand, and the only code
//! that prints. Data goes to stdout; progress, warnings and errors go to stderr.
//!
//! Nothing connects to the database before dispatch, so `--help`, `completions` and
//! `man` work without one. Exit codes are decided in one place, [`main`]: 0 success,
//! 1 failure, 2 bad input or usage; a closed stdout (`| head`) is a quiet 0.

mod bench;
mod cancel;
mod docs;
mod enqueue;
mod migrate;
mod output;
mod step;
mod telemetry;
mod trace;
mod work;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::db::ConnectOptions;
use crate::error::Error;

pub use output::{warn, write_stdout};

/// A durable PostgreSQL task queue whose rows carry OpenTelemetry trace context.
#[derive(Debug, Parser)]
#[command(name = "pgc", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// PostgreSQL URL (postgres://user@host:port/db?sslmode=…) or libpq conninfo string.
    /// Without it, the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE,
    /// PGSSLMODE and PGSSLROOTCERT apply, with libpq's defaults.
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,

    /// pgc's own lines on stderr: `text`, or `json` (one object per line with time,
    /// level, message and, for an execution's lines, its trace_id and span_id).
    #[arg(
        long,
        global = true,
        env = "PGC_LOG_FORMAT",
        value_enum,
        default_value = "text",
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `pgc: …` lines.
    Text,
    /// JSON lines.
    Json,
}

impl GlobalArgs {
    /// The connection settings: the URL when one is given (an empty one counts as
    /// unset, as libpq treats empty variables), else the libpq environment.
    pub fn connect_options(&self) -> Result<ConnectOptions, Error> {
        let url = self
            .database_url
            .as_deref()
            .filter(|u| !u.trim().is_empty());
        Ok(ConnectOptions::resolve(url)?)
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install or upgrade the pgconductor schema.
    Migrate(migrate::MigrateArgs),
    /// Put a task execution (or a JSON Lines batch of them) into a queue.
    Enqueue(enqueue::EnqueueArgs),
    /// Run tasks from queues as commands (a foreground worker).
    Work(work::WorkArgs),
    /// Run a command as a memoized step of the current execution (inside a handler).
    Step(step::StepArgs),
    /// Cancel an execution (pending: at once; running: its worker stops it).
    Cancel(cancel::CancelArgs),
    /// Show the whole trace of an execution, rebuilt from the rows.
    Trace(trace::TraceArgs),
    /// Measure enqueue, work and latency on a scratch queue (in-process no-op handlers).
    Bench(bench::BenchArgs),
    /// Print a shell completion script.
    Completions(docs::CompletionsArgs),
    /// Print the man page, or write every page into a directory.
    Man(docs::ManArgs),
}

/// Runs pgc with the process's arguments and returns its exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    output::set_json_logs(cli.global.log_format == LogFormat::Json);
    let outcome = match cli.command {
        Command::Completions(args) => docs::completions(&args),
        Command::Man(args) => docs::man(&args),
        Command::Migrate(args) => with_runtime(|| migrate::run(&cli.global, args)),
        Command::Enqueue(args) => with_runtime(|| enqueue::run(&cli.global, args)),
        Command::Work(args) => with_runtime_threads(2, || work::run(&cli.global, args)),
        Command::Step(args) => with_runtime(|| step::run(&cli.global, args)),
        Command::Cancel(args) => with_runtime(|| cancel::run(&cli.global, args)),
        Command::Trace(args) => with_runtime(|| trace::run(&cli.global, args)),
        Command::Bench(args) => with_runtime(|| bench::run(&cli.global, args)),
    };
    match outcome {
        Ok(code) => code,
        Err(e) => report(&e),
    }
}

/// Help and version go to stdout (exit 0); a usage error is one line on stderr, exit 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(2)
        }
        _ => {
            // clap's first paragraph is the message; usage and tips follow it.
            let text = e.render().to_string();
            let message = text
                .split("\n\n")
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            output::error_line(&format!("{message} (see pgc --help)"));
            ExitCode::from(2)
        }
    }
}

/// Builds a single-threaded runtime and runs the command on it: a CLI command waits on
/// one database connection at a time, and a small runtime starts fastest.
fn with_runtime<F, Fut>(f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    with_runtime_threads(1, f)
}

/// [`with_runtime`] on `threads` threads (more than one: a multi-threaded runtime).
/// `pgc work` takes two: starting a command blocks its thread until the child has
/// exec'd, and on one thread every start held up the worker's loop and every other
/// handler (20,000 tasks of `true` at concurrency 8: about 14% more tasks a second on two;
/// `pgc bench`'s in-process handlers, which start no processes, were a few percent
/// slower on two, so it keeps one).
fn with_runtime_threads<F, Fut>(threads: usize, f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    let rt = if threads > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .map_err(|e| anyhow::anyhow!("could not start the async runtime: {e}"))?;
    let (code, abandoned) = rt.block_on(async {
        // The error line is written before the last exports, so that it is exported
        // as a log record too.
        let code = match f().await {
            Ok(code) => code,
            Err(e) => report(&e),
        };
        let abandoned = work::unless_signalled(telemetry::finish_process())
            .await
            .is_none();
        if abandoned {
            output::warn(
                "telemetry: stopped by a signal; log records not yet exported are dropped",
            );
        }
        (code, abandoned)
    });
    if abandoned {
        // Exports cut short by a signal may still be running on the exporters' own
        // threads; shutting the runtime down under them makes them panic on stderr. The
        // process exits now: leave the runtime as it is.
        std::mem::forget(rt);
    }
    Ok(code)
}

/// Prints an error as one line and picks the exit code.
fn report(e: &anyhow::Error) -> ExitCode {
    if output::is_broken_pipe(e) {
        return ExitCode::SUCCESS;
    }
    let code = e
        .chain()
        .find_map(|c| c.downcast_ref::<Error>())
        .map_or(1, Error::exit_code);
    // One line: the contexts, then the library error, whose message is complete (its
    // own sources would only repeat it).
    let mut parts = Vec::new();
    for c in e.chain() {
        parts.push(c.to_string());
        if c.downcast_ref::<Error>().is_some() {
            break;
        }
    }
    let text = parts.join(": ");
    output::error_line(&text);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Parses a count flag that must be at least 1 (`--max-attempts`, `--jobs`, …), with a
/// message that says so (clap's range names the type's maximum).
fn parse_at_least_one<T>(s: &str) -> Result<T, String>
where
    T: std::str::FromStr<Err = std::num::ParseIntError> + PartialOrd + From<u8>,
{
    match s.trim().parse::<T>() {
        Ok(n) if n >= T::from(1) => Ok(n),
        Ok(_) => Err(format!("{s:?} is too small (at least 1)")),
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => {
            Err(format!("{s:?} is too large"))
        }
        Err(_) => Err(format!("{s:?} is not a whole number (at least 1)")),
    }
}

/// Parses a `--…` duration flag (`500ms`, `30s`, `5m`, `1h30m`): one parser, one message,
/// and one bound (1000 years, [`crate::enqueue::MAX_DELAY`]) for every subcommand, so no
/// flag can overflow a deadline computed from it.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?}: {e} (e.g. 500ms, 30s, 5m)"))?;
    if d > crate::enqueue::MAX_DELAY {
        return Err(format!(
            "duration {s:?} is longer than the limit of 1000 years"
        ));
    }
    Ok(d)
}

/// Parses an execution id argument (a UUID, surrounding whitespace ignored).
fn parse_execution_id(s: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(s.trim())
        .map_err(|e| format!("{s:?} is not an execution id (a UUID): {e}"))
}

/// Connects with the global flags' settings.
async fn connect(global: &GlobalArgs) -> Result<tokio_postgres::Client, Error> {
    let opts = global.connect_options()?;
    Ok(opts.connect().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_must_be_whole_numbers_of_at_least_one() {
        assert_eq!(parse_at_least_one::<u64>("1"), Ok(1));
        assert_eq!(parse_at_least_one::<i32>(" 12 "), Ok(12));
        assert_eq!(
            parse_at_least_one::<i32>("0"),
            Err("\"0\" is too small (at least 1)".to_string())
        );
        assert_eq!(
            parse_at_least_one::<i32>("-3"),
            Err("\"-3\" is too small (at least 1)".to_string())
        );
        assert_eq!(
            parse_at_least_one::<u32>("4294967296"),
            Err("\"4294967296\" is too large".to_string())
        );
        assert_eq!(
            parse_at_least_one::<u64>("1.5"),
            Err("\"1.5\" is not a whole number (at least 1)".to_string())
        );
    }
}
