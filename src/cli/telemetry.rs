//! Live telemetry for one command: set up from the standard variables, handed to the
//! library as hooks, and exported before the process exits — spans when the command
//! says so, and everything (spans, the final metrics, log records) once its last line,
//! an error included, is written.

use crate::telemetry::{Hooks, NoTelemetry, Telemetry};

use super::output::warn;

/// The command's telemetry (nothing unless the environment configures an exporter).
pub struct CliTelemetry {
    #[cfg(feature = "otel")]
    otel: Option<std::sync::Arc<crate::telemetry::otel::OtelTelemetry>>,
}

/// The process's exporters, once a command has set them up, and how its exports at exit
/// are going.
#[cfg(feature = "otel")]
#[derive(Default)]
struct Process {
    otel: Option<std::sync::Arc<crate::telemetry::otel::OtelTelemetry>>,
    flusher: Option<(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    )>,
    /// An export at exit failed or timed out: the later ones get a short wait only, so
    /// that a dead collector delays exit by about one export timeout in all.
    failing: bool,
    /// The meter provider made its final export already.
    metrics_done: bool,
}

#[cfg(feature = "otel")]
static PROCESS: std::sync::Mutex<Option<Process>> = std::sync::Mutex::new(None);

#[cfg(feature = "otel")]
fn with_process<T>(f: impl FnOnce(&mut Process) -> T) -> Option<T> {
    let mut guard = PROCESS.lock().ok()?;
    Some(f(guard.get_or_insert_with(Process::default)))
}

/// What an export at exit may wait: the export timeout, or a moment once one failed.
#[cfg(feature = "otel")]
fn exit_limit() -> std::time::Duration {
    let failing = with_process(|p| p.failing).unwrap_or(false);
    if failing {
        std::time::Duration::from_millis(200)
    } else {
        crate::telemetry::otel::otlp_timeout()
    }
}

impl CliTelemetry {
    /// Reads `OTEL_SDK_DISABLED`, the `OTEL_*_EXPORTER` and OTLP variables; a
    /// configuration problem is a warning, never a failure of the command. A second
    /// call in the same process shares the exporters of the first.
    pub fn from_env() -> CliTelemetry {
        #[cfg(feature = "otel")]
        {
            if let Some(Some(otel)) = with_process(|p| p.otel.clone()) {
                return CliTelemetry { otel: Some(otel) };
            }
            let (otel, warnings) = crate::telemetry::otel::OtelTelemetry::from_env();
            for w in warnings {
                warn(&w);
            }
            let otel = otel.map(std::sync::Arc::new);
            if let Some(o) = otel.as_ref().filter(|o| o.wants_logs()) {
                let o = o.clone();
                super::output::set_log_sink(Some(std::sync::Arc::new(
                    move |level: &str, text: &str, ctx: &super::output::LogContext<'_>| {
                        o.log(
                            level,
                            text,
                            &crate::telemetry::logs::LogFields {
                                traceparent: ctx.traceparent,
                                execution_id: ctx.execution_id,
                                task: ctx.task,
                                attempt: ctx.attempt,
                            },
                        );
                    },
                )));
            }
            with_process(|p| p.otel = otel.clone());
            CliTelemetry { otel }
        }
        #[cfg(not(feature = "otel"))]
        {
            // Some exporter is asked for: a signal's exporter variable other than
            // `none`, or an OTLP endpoint while no exporter variable says otherwise.
            let var = |v: &str| std::env::var(v).ok().filter(|v| !v.trim().is_empty());
            let signals = [
                "OTEL_TRACES_EXPORTER",
                "OTEL_METRICS_EXPORTER",
                "OTEL_LOGS_EXPORTER",
            ];
            let named = signals
                .iter()
                .filter_map(|v| var(v))
                .any(|v| v.trim() != "none");
            let endpoint = [
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
            ]
            .iter()
            .any(|v| var(v).is_some());
            let all_none = signals
                .iter()
                .all(|v| var(v).is_some_and(|v| v.trim() == "none"));
            if named || (endpoint && !all_none) {
                warn("this pgc was built without the otel feature: no telemetry is exported");
            }
            CliTelemetry {}
        }
    }

    /// The hooks to record through.
    pub fn hooks(&self) -> &dyn Telemetry {
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            return &**otel;
        }
        &NoTelemetry
    }

    /// The hooks, to hand to the worker.
    pub fn shared(&self) -> Hooks {
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            return Hooks(otel.clone());
        }
        Hooks::default()
    }

    /// Exports in the background while a long command runs (the worker).
    pub fn start_flushing(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            let stop = tokio_util::sync::CancellationToken::new();
            let otel = otel.clone();
            let token = stop.clone();
            let task = tokio::spawn(async move { otel.run_flusher(token, warn).await });
            with_process(|p| p.flusher = Some((stop, task)));
        }
    }

    /// Exports the spans recorded so far and the final metrics, now and at once (a
    /// failure, an unreachable collector say, is a warning). The log records follow at
    /// exit ([`finish_process`]), after the command's last line.
    pub async fn finish(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            stop_flusher().await;
            let limit = exit_limit();
            let (spans, metrics) =
                tokio::join!(flush_spans(otel, limit), otel.shutdown_metrics(limit));
            let problems: Vec<String> = [spans, metrics.err()].into_iter().flatten().collect();
            with_process(|p| {
                p.metrics_done = true;
                p.failing |= !problems.is_empty();
            });
            for problem in problems {
                warn(&problem);
            }
        }
    }
}

/// Stops the background exporter; an export in flight is abandoned (its spans are lost,
/// as they would be to a collector that does not answer).
#[cfg(feature = "otel")]
async fn stop_flusher() {
    if let Some(Some((stop, task))) = with_process(|p| p.flusher.take()) {
        stop.cancel();
        task.abort();
        let _ = task.await;
    }
}

/// The spans recorded so far, exported within `limit`; what went wrong.
#[cfg(feature = "otel")]
async fn flush_spans(
    otel: &crate::telemetry::otel::OtelTelemetry,
    limit: std::time::Duration,
) -> Option<String> {
    match tokio::time::timeout(limit, otel.flush()).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!(
            "spans not exported: {} did not answer within {}",
            otel.destinations(),
            humantime::format_duration(limit)
        )),
    }
}

/// The process's last exports, after the command's last line (its error included):
/// the spans left, the final metrics and the log records, at once, so that a dead
/// collector delays exit by about one export timeout, not one per signal. Runs on every
/// exit path of a command that set telemetry up.
pub async fn finish_process() {
    #[cfg(feature = "otel")]
    {
        let Some(Some((otel, metrics_done, failing))) =
            with_process(|p| p.otel.take().map(|o| (o, p.metrics_done, p.failing)))
        else {
            return;
        };
        stop_flusher().await;
        let limit = exit_limit();
        // Lines from here on go to stderr only: the log exporter is stopping.
        super::output::set_log_sink(None);
        let metrics = async {
            if metrics_done {
                Ok(())
            } else {
                otel.shutdown_metrics(limit).await
            }
        };
        let (spans, metrics, logs) = tokio::join!(
            flush_spans(&otel, limit),
            metrics,
            // After a failed export, records still waiting are given up at once.
            otel.shutdown_logs(limit, failing)
        );
        for problem in [spans, metrics.err(), logs.err()].into_iter().flatten() {
            warn(&problem);
        }
    }
}
