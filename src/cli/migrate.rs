//! `pgc migrate`: apply pending migrations, or show where they stand.

use std::process::ExitCode;

use anyhow::Result;
use comfy_table::{Table, presets};
use serde_json::json;

use super::output::{info, write_stdout};
use super::{GlobalArgs, connect};
use crate::migrate::{self, State};

/// Install or upgrade the pgconductor schema. Safe to run again (a no-op when up to
/// date) and from several places at once (an advisory lock serializes runs).
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Show each migration (applied, pending, checksum mismatch) instead of applying.
    #[arg(long, conflicts_with = "dry_run")]
    pub status: bool,

    /// Print the SQL that would run, and change nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Print JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `pgc migrate`.
pub async fn run(global: &GlobalArgs, args: MigrateArgs) -> Result<ExitCode> {
    let mut client = connect(global).await?;
    if args.status {
        let statuses = migrate::status(&client).await?;
        if args.json {
            write_stdout(&format!("{}\n", serde_json::to_string(&statuses)?))?;
        } else {
            write_stdout(&status_table(&statuses))?;
        }
    } else if args.dry_run {
        let plan = migrate::plan(&client).await?;
        if args.json {
            let list: Vec<_> = plan
                .iter()
                .map(|m| json!({"version": m.version, "name": m.name, "checksum": m.checksum(), "sql": m.sql}))
                .collect();
            write_stdout(&format!("{}\n", serde_json::to_string(&list)?))?;
        } else if plan.is_empty() {
            info("nothing to apply: schema pgconductor is up to date");
        } else {
            let mut text = String::new();
            for m in &plan {
                text.push_str(&format!(
                    "-- {} (sha256 {})\n{}\n",
                    m.file_name(),
                    m.checksum(),
                    m.sql.trim_end()
                ));
            }
            write_stdout(&text)?;
        }
    } else {
        let applied = migrate::run(&mut client).await?;
        if args.json {
            let doc = json!({"applied": applied, "version": migrate::latest_version()});
            write_stdout(&format!("{doc}\n"))?;
        } else if applied.is_empty() {
            info(&format!(
                "schema pgconductor is up to date (version {})",
                migrate::latest_version()
            ));
        } else {
            for a in &applied {
                info(&format!(
                    "applied migration {:04} {} ({} ms)",
                    a.version, a.name, a.duration_ms
                ));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status_table(statuses: &[migrate::Status]) -> String {
    let mut table = Table::new();
    table.load_preset(if super::output::fancy() {
        presets::UTF8_FULL_CONDENSED
    } else {
        presets::ASCII_FULL_CONDENSED
    });
    table.set_header(["version", "name", "state", "applied at"]);
    for s in statuses {
        let state = match s.state {
            State::Applied => "applied",
            State::Pending => "pending",
            State::ChecksumMismatch => "checksum mismatch",
            State::Unknown => "unknown (newer pgc)",
        };
        let at = s
            .applied_at
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_else(|| "-".to_string());
        table.add_row([
            format!("{:04}", s.version),
            s.name.clone(),
            state.to_string(),
            at,
        ]);
    }
    format!("{table}\n")
}
