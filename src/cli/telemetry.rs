//! Live telemetry for one command: set up from the standard variables, handed to the
//! library as hooks, and flushed before the command exits.

use crate::telemetry::{Hooks, NoTelemetry, Telemetry};

use super::output::warn;

/// The command's telemetry (nothing unless the environment configures an exporter).
pub struct CliTelemetry {
    #[cfg(feature = "otel")]
    otel: Option<std::sync::Arc<crate::telemetry::otel::OtelTelemetry>>,
    #[cfg(feature = "otel")]
    flusher: Option<(
        tokio_util::sync::CancellationToken,
        tokio::task::JoinHandle<()>,
    )>,
}

impl CliTelemetry {
    /// Reads `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER` and the OTLP variables; a
    /// configuration problem is a warning, never a failure of the command.
    pub fn from_env() -> CliTelemetry {
        #[cfg(feature = "otel")]
        {
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
            CliTelemetry {
                otel,
                flusher: None,
            }
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
            self.flusher = Some((stop, task));
        }
    }

    /// Exports what was recorded; a failure (an unreachable collector, say) is a warning.
    pub async fn finish(&mut self) {
        #[cfg(feature = "otel")]
        {
            // An export in flight is abandoned (its spans are lost, as they would be to
            // a collector that does not answer); the last flush gets one export timeout
            // in all, so that a dead collector delays exit by at most that.
            if let Some((stop, task)) = self.flusher.take() {
                stop.cancel();
                task.abort();
                let _ = task.await;
            }
            if let Some(otel) = &self.otel {
                // Spans, metrics and logs are exported at once, so that a dead
                // collector delays exit by about one export timeout, not three.
                let limit = crate::telemetry::otel::otlp_timeout();
                let spans = async {
                    match tokio::time::timeout(limit, otel.flush()).await {
                        Ok(Ok(_)) => None,
                        Ok(Err(e)) => Some(e),
                        Err(_) => Some(format!(
                            "spans not exported: {} did not answer within {}",
                            otel.destinations(),
                            humantime::format_duration(limit)
                        )),
                    }
                };
                let (spans, metrics, logs) = tokio::join!(
                    spans,
                    otel.shutdown_metrics(limit),
                    otel.shutdown_logs(limit)
                );
                // These lines go to stderr only: the log exporter has stopped.
                super::output::set_log_sink(None);
                for problem in [spans, metrics.err(), logs.err()].into_iter().flatten() {
                    warn(&problem);
                }
            }
        }
    }
}
