//! `pgc trace --format stdout` and `--export otlp`: the rebuilt spans through the
//! OpenTelemetry SDK's exporters (the `otel` feature).

use anyhow::{Context, Result};
use opentelemetry_sdk::trace::SpanExporter as _;

use crate::cli::output::{StdoutClosed, info};
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
            eprintln!("pgc: internal error: {info}");
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

/// Sends the spans to the OTLP/HTTP endpoint the standard variables name.
pub(super) async fn export_otlp(trace: &Trace, resource: &Resource) -> Result<()> {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    let endpoint = otlp_endpoint_for_display();
    let tls = if endpoint.to_ascii_lowercase().starts_with("https://") {
        let ca = otlp_var("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE")
            .or_else(|| otlp_var("OTEL_EXPORTER_OTLP_CERTIFICATE"));
        crate::db::https_client_config(ca.as_deref().map(std::path::Path::new))
    } else {
        crate::db::no_roots_client_config()
    }
    .map_err(|e| anyhow::anyhow!("cannot set up TLS for {endpoint}: {e}"))?;
    let http = reqwest::Client::builder()
        .timeout(otlp_timeout())
        .use_preconfigured_tls(tls)
        .build()
        .with_context(|| format!("cannot set up an HTTP client for {endpoint}"))?;
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(http)
        .with_protocol(Protocol::HttpBinary)
        .build()
        .with_context(|| format!("cannot set up the OTLP exporter for {endpoint}"))?;
    exporter.set_resource(&resource.to_sdk());
    let mut batch = trace::span_data(trace);
    let total = batch.len();
    while !batch.is_empty() {
        let rest = batch.split_off(batch.len().min(EXPORT_BATCH));
        exporter
            .export(batch)
            .await
            .map_err(|e| anyhow::anyhow!("sending the trace to {endpoint} failed: {e}"))?;
        batch = rest;
    }
    let _ = exporter.shutdown();
    info(&format!(
        "sent {total} spans of trace {} to {endpoint}",
        trace.trace_id
    ));
    Ok(())
}

/// An OTLP exporter variable, unset when empty.
fn otlp_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The export timeout: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else
/// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), else 10 s, as the specification says.
fn otlp_timeout() -> std::time::Duration {
    otlp_var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| otlp_var("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis,
        )
}

/// The traces endpoint the OTLP exporter uses, for messages: without any user
/// information an URL may carry.
fn otlp_endpoint_for_display() -> String {
    let var = otlp_var;
    let url = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| {
            var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
        })
        .unwrap_or_else(|| "http://localhost:4318/v1/traces".to_string());
    without_userinfo(&url)
}

/// `scheme://user:password@host/path` → `scheme://host/path`.
fn without_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_display_drops_user_information() {
        assert_eq!(
            without_userinfo("https://user:secret@collector:4318/v1/traces"),
            "https://collector:4318/v1/traces"
        );
        assert_eq!(
            without_userinfo("http://collector:4318/a@b"),
            "http://collector:4318/a@b"
        );
    }
}
