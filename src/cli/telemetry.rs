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
    /// Collectors (`host:port`) an export at exit failed to or timed out on: later
    /// exports to them get a short wait only, so that a dead collector delays exit by
    /// about one export timeout in all.
    failing: Vec<String>,
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

/// The `host:port` of an endpoint URL (the whole text when it is not one).
#[cfg(feature = "otel")]
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// Whether an export at exit to `endpoint` (a signal's OTLP endpoint, if it has one)
/// failed already.
#[cfg(feature = "otel")]
fn known_failing(endpoint: Option<&str>) -> bool {
    endpoint.is_some_and(|e| {
        let collector = authority(e);
        with_process(|p| p.failing.contains(&collector)).unwrap_or(false)
    })
}

/// What an export at exit to `endpoint` may wait: the export timeout, or a moment once
/// an export to its collector failed.
#[cfg(feature = "otel")]
fn exit_limit(endpoint: Option<&str>) -> std::time::Duration {
    if known_failing(endpoint) {
        std::time::Duration::from_millis(200)
    } else {
        crate::telemetry::otel::otlp_timeout()
    }
}

/// Remembers the collector behind `endpoint` as failing.
#[cfg(feature = "otel")]
fn mark_failing(endpoint: Option<&str>) {
    if let Some(collector) = endpoint.map(authority) {
        with_process(|p| p.failing.push(collector));
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
                        o.log(level, text, ctx);
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
            let spans_to = otel.span_endpoint();
            let metrics_to = otel.metrics_endpoint();
            let (spans, metrics) = tokio::join!(
                flush_spans(otel, exit_limit(spans_to)),
                otel.shutdown_metrics(exit_limit(metrics_to))
            );
            note_failures(otel, &spans);
            if metrics.is_err() {
                mark_failing(metrics_to);
            }
            with_process(|p| p.metrics_done = true);
            for problem in [spans.map(|s| s.0), metrics.err()].into_iter().flatten() {
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

/// The spans recorded so far, exported within `limit`; what went wrong, and whether
/// it was the collectors not answering in time.
#[cfg(feature = "otel")]
async fn flush_spans(
    otel: &crate::telemetry::otel::OtelTelemetry,
    limit: std::time::Duration,
) -> Option<(String, bool)> {
    match tokio::time::timeout(limit, otel.flush()).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some((e, false)),
        Err(_) => Some((
            format!(
                "spans not exported: {} did not answer within {}",
                otel.destinations(),
                humantime::format_duration(limit)
            ),
            true,
        )),
    }
}

/// Remembers the span collector as failing when it did not answer in time or an export
/// to it failed (a full export queue is not its failure).
#[cfg(feature = "otel")]
fn note_failures(otel: &crate::telemetry::otel::OtelTelemetry, spans: &Option<(String, bool)>) {
    if matches!(spans, Some((_, true))) || otel.span_export_failed() {
        mark_failing(otel.span_endpoint());
    }
}

/// The process's last exports, after the command's last line (its error included):
/// the spans left, the final metrics and the log records, at once, so that a dead
/// collector delays exit by about one export timeout, not one per signal. Runs on every
/// exit path of a command that set telemetry up.
pub async fn finish_process() {
    #[cfg(feature = "otel")]
    {
        let Some(Some((otel, metrics_done))) =
            with_process(|p| p.otel.take().map(|o| (o, p.metrics_done)))
        else {
            return;
        };
        stop_flusher().await;
        // Lines from here on go to stderr only: the log exporter is stopping.
        super::output::set_log_sink(None);
        let spans_to = otel.span_endpoint();
        let metrics_to = otel.metrics_endpoint();
        let logs_to = otel.logs_endpoint();
        let metrics = async {
            if metrics_done {
                Ok(())
            } else {
                otel.shutdown_metrics(exit_limit(metrics_to)).await
            }
        };
        let (spans, metrics, logs) = tokio::join!(
            flush_spans(&otel, exit_limit(spans_to)),
            metrics,
            // Records for a collector that failed already are given up at once.
            otel.shutdown_logs(exit_limit(logs_to), known_failing(logs_to))
        );
        for problem in [spans.map(|s| s.0), metrics.err(), logs.err()]
            .into_iter()
            .flatten()
        {
            warn(&problem);
        }
    }
}
