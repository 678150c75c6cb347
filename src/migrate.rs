//! Embedded, checksummed, forward-only schema migrations.
//!
//! The numbered files in `migrations/` are compiled into the binary. A run takes a
//! session advisory lock, verifies the checksums of what was applied before, and applies
//! each pending migration together with its bookkeeping row in one transaction, so
//! concurrent runs apply each migration exactly once. This module returns data; the CLI
//! renders it.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::error::{Error, Result};
use crate::sql;

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Its number, from the file name (`0001_…` is 1).
    pub version: i32,
    /// Its name, from the file name after the number.
    pub name: &'static str,
    /// The SQL it runs.
    pub sql: &'static str,
}

impl Migration {
    /// Lower-case hex SHA-256 of the SQL text.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }

    /// The file name it was embedded from.
    pub fn file_name(&self) -> String {
        format!("{:04}_{}.sql", self.version, self.name)
    }
}

/// Every migration, in order. A test checks this list against the `migrations/` folder.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "executions",
        sql: include_str!("../migrations/0001_executions.sql"),
    },
    Migration {
        version: 2,
        name: "traceparents",
        sql: include_str!("../migrations/0002_traceparents.sql"),
    },
];

/// The schema version this build needs (the highest embedded migration).
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Where one migration stands in a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Applied, with the checksum of the embedded file.
    Applied,
    /// Not applied yet.
    Pending,
    /// Applied, but the embedded file has changed since.
    ChecksumMismatch,
    /// Applied by a newer pgc; this build does not know it.
    Unknown,
}

/// The status of one migration, as `pgc migrate --status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// Migration number.
    pub version: i32,
    /// Migration name.
    pub name: String,
    /// Applied, pending, mismatched or unknown.
    pub state: State,
    /// When it was applied, if it was.
    pub applied_at: Option<DateTime<Utc>>,
    /// The checksum of the embedded file (or the recorded one for unknown migrations).
    pub checksum: String,
}

/// One migration applied by [`run`].
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// Migration number.
    pub version: i32,
    /// Migration name.
    pub name: String,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
}

struct Recorded {
    version: i32,
    name: String,
    checksum: String,
    applied_at: DateTime<Utc>,
}

async fn recorded(client: &Client) -> Result<Vec<Recorded>> {
    let exists: bool = client
        .query_one(sql::MIGRATE_HAS_BOOKKEEPING, &[])
        .await?
        .try_get(0)?;
    if !exists {
        return Ok(Vec::new());
    }
    let rows = client.query(sql::MIGRATE_APPLIED, &[]).await?;
    rows.iter()
        .map(|r| {
            Ok(Recorded {
                version: r.try_get(0)?,
                name: r.try_get(1)?,
                checksum: r.try_get(2)?,
                applied_at: r.try_get(3)?,
            })
        })
        .collect()
}

/// Compares the embedded migrations with what the database recorded.
fn compare(recorded: &[Recorded]) -> Vec<Status> {
    let mut out: Vec<Status> = MIGRATIONS
        .iter()
        .map(|m| {
            let checksum = m.checksum();
            let found = recorded.iter().find(|r| r.version == m.version);
            let state = match found {
                None => State::Pending,
                Some(r) if r.checksum == checksum => State::Applied,
                Some(_) => State::ChecksumMismatch,
            };
            Status {
                version: m.version,
                name: m.name.to_string(),
                state,
                applied_at: found.map(|r| r.applied_at),
                checksum,
            }
        })
        .collect();
    for r in recorded {
        if !MIGRATIONS.iter().any(|m| m.version == r.version) {
            out.push(Status {
                version: r.version,
                name: r.name.clone(),
                state: State::Unknown,
                applied_at: Some(r.applied_at),
                checksum: r.checksum.clone(),
            });
        }
    }
    out.sort_by_key(|s| s.version);
    out
}

/// Every known or recorded migration and its state. Changes nothing.
pub async fn status(client: &Client) -> Result<Vec<Status>> {
    Ok(compare(&recorded(client).await?))
}

/// Refuses a database whose applied migrations do not match this build.
fn verify(statuses: &[Status]) -> Result<()> {
    for s in statuses {
        match s.state {
            State::ChecksumMismatch => {
                return Err(Error::ChecksumMismatch {
                    version: s.version,
                    name: s.name.clone(),
                });
            }
            State::Unknown => {
                return Err(Error::SchemaAhead {
                    found: s.version,
                    known: latest_version(),
                });
            }
            State::Applied | State::Pending => {}
        }
    }
    Ok(())
}

/// The migrations a run would apply now, after the same checks a run makes. Changes
/// nothing (`pgc migrate --dry-run`).
pub async fn plan(client: &Client) -> Result<Vec<Migration>> {
    let statuses = status(client).await?;
    verify(&statuses)?;
    Ok(pending(&statuses))
}

fn pending(statuses: &[Status]) -> Vec<Migration> {
    MIGRATIONS
        .iter()
        .filter(|m| {
            statuses
                .iter()
                .any(|s| s.version == m.version && s.state == State::Pending)
        })
        .copied()
        .collect()
}

/// Applies every pending migration, each in its own transaction with its bookkeeping
/// row, under a session advisory lock. Returns what it applied (empty when up to date).
pub async fn run(client: &mut Client) -> Result<Vec<Applied>> {
    client
        .execute(sql::MIGRATE_LOCK, &[&sql::MIGRATE_LOCK_KEY])
        .await?;
    let outcome = run_locked(client).await;
    // The lock is a session lock; a failed unlock only means the session is gone, which
    // released it anyway.
    let _ = client
        .execute(sql::MIGRATE_UNLOCK, &[&sql::MIGRATE_LOCK_KEY])
        .await;
    outcome
}

async fn run_locked(client: &mut Client) -> Result<Vec<Applied>> {
    client.batch_execute(sql::MIGRATE_BOOKKEEPING).await?;
    let statuses = status(client).await?;
    verify(&statuses)?;
    let mut applied = Vec::new();
    for m in pending(&statuses) {
        let started = Instant::now();
        let tx = client.transaction().await?;
        tx.batch_execute(m.sql).await?;
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let recorded_ms = i64::try_from(duration_ms).unwrap_or(i64::MAX);
        tx.execute(
            sql::MIGRATE_RECORD,
            &[&m.version, &m.name, &m.checksum(), &recorded_ms],
        )
        .await?;
        tx.commit().await?;
        applied.push(Applied {
            version: m.version,
            name: m.name.to_string(),
            duration_ms,
        });
    }
    Ok(applied)
}

/// Checks that the schema is installed at exactly the version this build needs; every
/// command other than `migrate` calls it first.
pub async fn check_schema(client: &Client) -> Result<()> {
    let found: Option<i32> = match client.query_one(sql::SCHEMA_VERSION, &[]).await {
        Ok(row) => row.try_get(0)?,
        Err(e)
            if e.code() == Some(&SqlState::UNDEFINED_TABLE)
                || e.code() == Some(&SqlState::INVALID_SCHEMA_NAME) =>
        {
            return Err(Error::SchemaMissing);
        }
        Err(e) => return Err(e.into()),
    };
    let needed = latest_version();
    match found {
        None => Err(Error::SchemaMissing),
        Some(v) if v < needed => Err(Error::SchemaBehind { found: v, needed }),
        Some(v) if v > needed => Err(Error::SchemaAhead {
            found: v,
            known: needed,
        }),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_list_matches_the_migrations_folder() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = MIGRATIONS.iter().map(Migration::file_name).collect();
        assert_eq!(files, embedded);
        for m in MIGRATIONS {
            let on_disk = std::fs::read_to_string(format!("{dir}/{}", m.file_name())).unwrap();
            assert_eq!(
                on_disk,
                m.sql,
                "{} differs from the embedded text",
                m.file_name()
            );
        }
    }

    #[test]
    fn versions_are_consecutive_from_one() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i32::try_from(i).unwrap() + 1);
        }
    }

    #[test]
    fn checksum_is_sha256_hex() {
        let m = Migration {
            version: 1,
            name: "x",
            sql: "abc",
        };
        assert_eq!(
            m.checksum(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
