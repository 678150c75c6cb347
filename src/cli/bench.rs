//! `pgc bench`: enqueue, work and latency figures from the real paths.

use std::process::ExitCode;

use anyhow::Result;

use super::GlobalArgs;
use super::output::{info, write_stdout};
use super::telemetry::CliTelemetry;
use crate::bench::{self, BenchOptions};

/// Measure this pgc against this database: bulk-enqueue N no-op tasks into a scratch
/// queue, work them with in-process no-op handlers until done, then measure
/// enqueue→start latency over 1,000 sequential single enqueues with an idle worker.
/// Trace context is written exactly as in normal use. The scratch rows are deleted.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Executions to enqueue and work.
    #[arg(long, default_value_t = 200_000, value_parser = super::parse_at_least_one::<u64>)]
    pub jobs: u64,

    /// Worker concurrency (in-process handlers).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,

    /// Sequential single enqueues for the latency figure.
    #[arg(long, default_value_t = 1000, value_parser = super::parse_at_least_one::<u32>)]
    pub latency_samples: u32,

    /// Print JSON: enqueue_per_s, work_per_s, latency_ms {p50, p99, max}.
    #[arg(long)]
    pub json: bool,
}

/// Runs `pgc bench`.
pub async fn run(global: &GlobalArgs, args: BenchArgs) -> Result<ExitCode> {
    let conn = global.connect_options()?;
    // Telemetry as the environment configures it, exactly as `pgc work` would.
    let mut telemetry = CliTelemetry::from_env();
    telemetry.start_flushing();
    let opts = BenchOptions {
        jobs: args.jobs,
        concurrency: usize::try_from(args.concurrency).unwrap_or(1),
        latency_samples: usize::try_from(args.latency_samples).unwrap_or(1),
        telemetry: telemetry.shared(),
    };
    info(&format!(
        "bench: {} jobs, concurrency {}, {} latency samples",
        opts.jobs, opts.concurrency, opts.latency_samples
    ));
    let r = bench::run(&conn, &opts).await;
    telemetry.finish().await;
    let r = r?;
    if args.json {
        write_stdout(&format!("{}\n", serde_json::to_string(&r)?))?;
    } else {
        write_stdout(&format!(
            "enqueue: {:.0} jobs/s\nwork:    {:.0} jobs/s\nlatency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
            r.enqueue_per_s, r.work_per_s, r.latency_ms.p50, r.latency_ms.p99, r.latency_ms.max
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
