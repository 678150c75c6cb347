//! `pgc trace --format stdout` and `--export otlp`: the rebuilt spans through the
//! OpenTelemetry SDK's stdout exporter, or as OTLP protobuf to a collector (the `otel`
//! feature).

use anyhow::Result;
use opentelemetry_sdk::trace::SpanExporter as _;

use crate::cli::output::{StdoutClosed, info, stderr_line, warn};
use crate::telemetry::otel;
use crate::trace::{self, Resource, Trace};

/// Prints the spans through `opentelemetry-stdout`, which writes with `println!` and so
/// panics when stdout's reader has gone away: that panic is caught (with the panic
/// message silenced) and treated as the closed pipe it is.
pub(super) async fn print_with_stdout_exporter(trace: &Trace, resource: &Resource) -> Result<()> {
    let mut exporter = opentelemetry_stdout::SpanExporter::default();
    exporter.set_resource(&resource.to_sdk());
    let batch = trace::span_data(trace);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|info| {
        let closed = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.contains("failed printing to stdout"));
        if !closed {
            stderr_line(&format!("pgc: internal error: {info}"));
        }
    }));
    let outcome = tokio::spawn(async move { exporter.export(batch).await }).await;
    drop(std::panic::take_hook());
    std::panic::set_hook(hook);
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow::anyhow!("the stdout exporter failed: {e}")),
        Err(e) if e.is_panic() => {
            let payload = e.into_panic();
            let closed = payload
                .downcast_ref::<String>()
                .is_some_and(|m| m.contains("failed printing to stdout"));
            if closed {
                Err(StdoutClosed.into())
            } else {
                Err(anyhow::anyhow!("the stdout exporter failed"))
            }
        }
        Err(e) => Err(anyhow::anyhow!("the stdout exporter failed: {e}")),
    }
}

/// Spans per OTLP request: the batch span processor's default batch size.
const EXPORT_BATCH: usize = 512;

/// Sends the spans to the OTLP/HTTP endpoint the standard variables name, as OTLP
/// protobuf, with the same sender as live telemetry.
pub(super) async fn export_otlp(trace: &Trace, resource: &Resource) -> Result<()> {
    let mut warnings = Vec::new();
    let sender =
        otel::SpanSender::from_env(resource, &mut warnings).map_err(|e| anyhow::anyhow!(e))?;
    for w in warnings {
        warn(&w);
    }
    let endpoint = sender.endpoint();
    let total = trace.spans.len();
    let mut scratch = Vec::new();
    for chunk in trace.spans.chunks(EXPORT_BATCH) {
        let mut batch = sender.batch(chunk.len());
        for s in chunk {
            batch.push(&mut scratch, |out| {
                trace::encode_proto_span(&trace.trace_id, trace.now, s, out);
            });
        }
        sender
            .send(batch)
            .await
            .map_err(|e| anyhow::anyhow!("sending the trace to {endpoint} failed: {e}"))?;
    }
    info(&format!(
        "sent {total} spans of trace {} to {endpoint}",
        trace.trace_id
    ));
    Ok(())
}
