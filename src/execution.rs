//! One execution from the outside: where it stands, waiting for it to finish, and
//! cancelling it. Waiting listens on `pgconductor_finished` (workers notify it when they
//! settle) and re-checks the row on each notification, with a slow poll as the fallback
//! for notifications lost to a reconnect.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{Client, Notification};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::sql;

/// An execution's status and outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct State {
    /// `pending`, `running`, `completed`, `failed` or `cancelled`.
    pub status: String,
    /// The stored result (JSON text), when it completed with one.
    pub result: Option<String>,
    /// The last error, if any.
    pub last_error: Option<String>,
}

impl State {
    /// Completed, failed or cancelled: it will not run again.
    pub fn finished(&self) -> bool {
        matches!(self.status.as_str(), "completed" | "failed" | "cancelled")
    }
}

/// Where execution `id` stands.
pub async fn state(client: &Client, id: Uuid) -> Result<State> {
    let row = client
        .query_opt(sql::EXECUTION_STATE, &[&id])
        .await?
        .ok_or(Error::NotFound(id))?;
    Ok(State {
        status: row.try_get(0)?,
        result: row.try_get(1)?,
        last_error: row.try_get(2)?,
    })
}

/// How often [`wait`] re-checks without a notification.
const FALLBACK_POLL: Duration = Duration::from_secs(1);

/// Waits until execution `id` has finished, or `timeout` passes (then returns its
/// unfinished state). `notes` must come from a connection that ran
/// [`sql::LISTEN_FINISHED`] before the execution could finish, or a notification may be
/// missed (the fallback poll still catches it, a second later).
pub async fn wait(
    client: &Client,
    notes: &mut UnboundedReceiver<Notification>,
    id: Uuid,
    timeout: Option<Duration>,
) -> Result<State> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    loop {
        let now = state(client, id).await?;
        if now.finished() {
            return Ok(now);
        }
        let pause = async {
            match deadline {
                Some(d) => {
                    tokio::time::sleep_until(d.min(tokio::time::Instant::now() + FALLBACK_POLL))
                        .await
                }
                None => tokio::time::sleep(FALLBACK_POLL).await,
            }
        };
        tokio::select! {
            note = notes.recv() => {
                // One re-check answers every notification that has arrived.
                while notes.try_recv().is_ok() {}
                if note.is_none() {
                    // The listening connection is gone: fall back to polling alone.
                    tokio::time::sleep(FALLBACK_POLL).await;
                }
            }
            () = pause => {}
        }
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return state(client, id).await;
        }
    }
}

/// What [`cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was pending and is now cancelled.
    Now,
    /// It is running; its worker was told to stop it.
    Requested,
}

/// Cancels execution `id`: a pending one at once, a running one through its worker. A
/// finished one is an error naming its status.
pub async fn cancel(client: &Client, id: Uuid) -> Result<Cancelled> {
    let row = client
        .query_opt(sql::CANCEL, &[&id])
        .await?
        .ok_or(Error::NotFound(id))?;
    let status: String = row.try_get(0)?;
    match status.as_str() {
        "pending" => Ok(Cancelled::Now),
        "running" => Ok(Cancelled::Requested),
        other => Err(Error::Finished {
            id,
            status: other.to_string(),
        }),
    }
}
