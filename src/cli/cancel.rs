//! `pgc cancel`: stop an execution.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use uuid::Uuid;

use super::output::{info, write_stdout};
use super::{GlobalArgs, parse_duration, parse_execution_id};
use crate::error::Error;
use crate::execution::{self, Cancelled};
use crate::{migrate, sql};

/// Cancel an execution: a pending one at once; a running one is stopped by its worker
/// (told through NOTIFY) and finished as cancelled. Cancelling a finished execution is
/// an error (exit 1).
#[derive(Debug, clap::Args)]
pub struct CancelArgs {
    /// The execution id.
    #[arg(value_name = "EXECUTION_ID", value_parser = parse_execution_id)]
    pub id: Uuid,

    /// How long to wait for a running execution to stop.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub wait: Duration,
}

/// Runs `pgc cancel`.
pub async fn run(global: &GlobalArgs, args: CancelArgs) -> Result<ExitCode> {
    let conn = global.connect_options()?;
    let client = conn.connect().await.map_err(Error::from)?;
    migrate::check_schema(&client).await?;
    // Listen before cancelling, so the worker's "finished" cannot slip past.
    let (listener, mut notes) = conn.connect_listener().await.map_err(Error::from)?;
    listener
        .batch_execute(sql::LISTEN_FINISHED)
        .await
        .map_err(Error::from)?;
    match execution::cancel(&client, args.id).await? {
        Cancelled::Now => {
            write_stdout("cancelled\n")?;
            Ok(ExitCode::SUCCESS)
        }
        Cancelled::Requested => {
            info(&format!(
                "{} is running: asked its worker to stop it",
                args.id
            ));
            let state = execution::wait(&client, &mut notes, args.id, Some(args.wait)).await?;
            match state.status.as_str() {
                "cancelled" => {
                    write_stdout("cancelled\n")?;
                    Ok(ExitCode::SUCCESS)
                }
                s if state.finished() => Err(anyhow::anyhow!(
                    "execution {} finished as {s} before its worker could stop it",
                    args.id
                )),
                _ => Err(anyhow::anyhow!(
                    "execution {} is still running after {}: its worker has not stopped it (it will when it next renews its lease)",
                    args.id,
                    humantime::format_duration(args.wait)
                )),
            }
        }
    }
}
