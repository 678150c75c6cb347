//! Live telemetry for one command: set up from the standard variables, handed to the
//! library as hooks, and flushed before the command exits.

use crate::telemetry::{NoTelemetry, Telemetry};

use super::output::warn;

/// The command's telemetry (nothing unless the environment configures an exporter).
pub struct CliTelemetry {
    #[cfg(feature = "otel")]
    otel: Option<crate::telemetry::otel::OtelTelemetry>,
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
            CliTelemetry { otel }
        }
        #[cfg(not(feature = "otel"))]
        {
            if std::env::var_os("OTEL_TRACES_EXPORTER").is_some() {
                warn("this pgc was built without the otel feature: no telemetry is exported");
            }
            CliTelemetry {}
        }
    }

    /// The hooks to record through.
    pub fn hooks(&self) -> &dyn Telemetry {
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel {
            return otel;
        }
        &NoTelemetry
    }

    /// Exports what was recorded; a failure (an unreachable collector, say) is a warning.
    pub async fn finish(&self) {
        #[cfg(feature = "otel")]
        if let Some(otel) = &self.otel
            && let Err(e) = otel.flush().await
        {
            warn(&e);
        }
    }
}
