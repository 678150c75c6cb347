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
            CliTelemetry {
                otel: otel.map(std::sync::Arc::new),
                flusher: None,
            }
        }
        #[cfg(not(feature = "otel"))]
        {
            let configured = [
                "OTEL_TRACES_EXPORTER",
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
            let none = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
            if configured && !none {
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
                let limit = crate::telemetry::otel::otlp_timeout();
                match tokio::time::timeout(limit, otel.flush()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn(&e),
                    Err(_) => warn(&format!(
                        "spans not exported: {} did not answer within {}",
                        otel.destinations(),
                        humantime::format_duration(limit)
                    )),
                }
                if let Err(e) = otel.shutdown_metrics(limit).await {
                    warn(&e);
                }
            }
        }
    }
}
