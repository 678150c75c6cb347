//! The OpenTelemetry implementation of the telemetry hooks (the `otel` feature): spans
//! recorded with their stored ids, exported through the exporters the standard
//! variables choose, and the OTLP/HTTP exporter set-up `pgc trace --export` shares.

use std::sync::Mutex;

use chrono::{DateTime, Utc};
use opentelemetry::trace::{
    SpanContext, SpanId as OtelSpanId, SpanKind, Status, TraceFlags, TraceId as OtelTraceId,
    TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};

use super::{Telemetry, TelemetryEvent};
use crate::trace::{Resource, Span, to_span_data};

/// An OTLP exporter variable, unset when empty.
pub fn otlp_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The export timeout: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else
/// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), else 10 s, as the specification says.
pub fn otlp_timeout() -> std::time::Duration {
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
pub fn otlp_endpoint_for_display() -> String {
    signal_endpoint("TRACES", "traces")
}

/// The endpoint of one signal (`TRACES`/`traces`, `METRICS`/`metrics`), as the OTLP
/// exporter resolves it, without user information.
pub(crate) fn signal_endpoint(var_part: &str, path: &str) -> String {
    let url = otlp_var(&format!("OTEL_EXPORTER_OTLP_{var_part}_ENDPOINT"))
        .or_else(|| {
            otlp_var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| format!("{}/v1/{path}", base.trim_end_matches('/')))
        })
        .unwrap_or_else(|| format!("http://localhost:4318/v1/{path}"));
    without_userinfo(&url)
}

/// The exporters `OTEL_<SIGNAL>_EXPORTER` names for one signal (`TRACES`, `METRICS`),
/// lower-cased and deduplicated; none when it lists `none`. Unset: `otlp` when an OTLP
/// endpoint variable (the general one or the signal's) is set, none otherwise — pgc
/// exports nothing unless configured.
pub(crate) fn exporter_names(signal: &str) -> Vec<String> {
    let mut names: Vec<String> = match otlp_var(&format!("OTEL_{signal}_EXPORTER")) {
        Some(list) => list
            .split(',')
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .collect(),
        None if otlp_var(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")).is_some()
            || otlp_var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() =>
        {
            vec!["otlp".to_string()]
        }
        None => Vec::new(),
    };
    if names.iter().any(|n| n == "none") {
        return Vec::new();
    }
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// An HTTP client for an OTLP endpoint: pgc's rustls configuration for `https://`
/// (system roots, or `OTEL_EXPORTER_OTLP_[<SIGNAL>_]CERTIFICATE`) and the export timeout.
pub(crate) fn otlp_http_client(endpoint: &str, var_part: &str) -> Result<reqwest::Client, String> {
    let tls = if endpoint.to_ascii_lowercase().starts_with("https://") {
        let ca = otlp_var(&format!("OTEL_EXPORTER_OTLP_{var_part}_CERTIFICATE"))
            .or_else(|| otlp_var("OTEL_EXPORTER_OTLP_CERTIFICATE"));
        crate::db::https_client_config(ca.as_deref().map(std::path::Path::new))
    } else {
        crate::db::no_roots_client_config()
    }
    .map_err(|e| format!("cannot set up TLS for {endpoint}: {e}"))?;
    reqwest::Client::builder()
        .timeout(otlp_timeout())
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|e| format!("cannot set up an HTTP client for {endpoint}: {e}"))
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

/// An OTLP/HTTP (protobuf) span exporter for the endpoint the standard variables name,
/// with pgc's rustls configuration for `https://` (system roots, or
/// `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`) and the export timeout. Returns the
/// endpoint too, for messages (without user information).
pub fn otlp_span_exporter() -> Result<(opentelemetry_otlp::SpanExporter, String), String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
    let endpoint = otlp_endpoint_for_display();
    let http = otlp_http_client(&endpoint, "TRACES")?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(http)
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| format!("cannot set up the OTLP exporter for {endpoint}: {e}"))?;
    Ok((exporter, endpoint))
}

/// Where recorded spans go.
enum Sink {
    /// OTLP/HTTP, to the endpoint named.
    Otlp(Box<opentelemetry_otlp::SpanExporter>, String),
    /// One JSON line per span on stderr (stdout carries a command's data).
    Console,
}

/// Spans recorded through the hooks, exported when [`OtelTelemetry::flush`] is called
/// (by [`OtelTelemetry::run_flusher`] every `OTEL_BSP_SCHEDULE_DELAY`, or sooner once
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans wait). At most `OTEL_BSP_MAX_QUEUE_SIZE`
/// spans wait; more are dropped and counted, so that a slow collector costs memory
/// never beyond that.
pub struct OtelTelemetry {
    /// Some span exporter is configured.
    traced: bool,
    /// Where spans go, for messages.
    destinations: String,
    metrics: Option<super::metrics::Metrics>,
    logs: Option<super::logs::Logs>,
    sinks: tokio::sync::Mutex<Vec<Sink>>,
    pending: Mutex<Vec<SpanData>>,
    dropped: std::sync::atomic::AtomicU64,
    /// Span endpoints an export to has failed (dropped spans are not their failure).
    failed: Mutex<Vec<String>>,
    batch_ready: tokio::sync::Notify,
    limits: Limits,
}

/// The batch span processor's settings (`OTEL_BSP_*`).
#[derive(Debug, Clone, Copy)]
struct Limits {
    delay: std::time::Duration,
    max_queue: usize,
    max_batch: usize,
}

impl Limits {
    fn from_env() -> Limits {
        let num = |name: &str, default: u64| {
            otlp_var(name)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        let max_queue = usize::try_from(num("OTEL_BSP_MAX_QUEUE_SIZE", 2048)).unwrap_or(2048);
        Limits {
            delay: std::time::Duration::from_millis(num("OTEL_BSP_SCHEDULE_DELAY", 5000)),
            max_queue,
            max_batch: usize::try_from(num("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
                .unwrap_or(512)
                .min(max_queue),
        }
    }
}

impl OtelTelemetry {
    /// The exporters the standard variables ask for, or `None` when nothing is to be
    /// exported: `OTEL_SDK_DISABLED=true`; `OTEL_TRACES_EXPORTER` a list of `otlp`,
    /// `console` and `none` (unknown names are reported and skipped); unset, OTLP when an
    /// OTLP endpoint variable is set and nothing otherwise. The second value lists
    /// warnings about the configuration.
    pub fn from_env() -> (Option<OtelTelemetry>, Vec<String>) {
        let mut warnings = Vec::new();
        let disabled =
            otlp_var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        if disabled {
            return (None, warnings);
        }
        let names = exporter_names("TRACES");
        let protocol = otlp_var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| otlp_var("OTEL_EXPORTER_OTLP_PROTOCOL"));
        if let Some(p) = protocol.filter(|p| p.trim() != "http/protobuf")
            && names.iter().any(|n| n == "otlp")
        {
            warnings.push(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={p} is not supported: pgc exports OTLP over HTTP with protobuf (http/protobuf)"
            ));
        }
        let (resource, resource_warning) = Resource::from_env();
        warnings.extend(resource_warning);
        let metrics = super::metrics::Metrics::from_env(&resource, &mut warnings);
        let logs = super::logs::Logs::from_env(&resource, &mut warnings);
        let mut sinks = Vec::new();
        for name in &names {
            match name.as_str() {
                "otlp" => match otlp_span_exporter() {
                    Ok((mut exporter, endpoint)) => {
                        exporter.set_resource(&resource.to_sdk());
                        sinks.push(Sink::Otlp(Box::new(exporter), endpoint));
                    }
                    Err(e) => warnings.push(format!("traces are not exported: {e}")),
                },
                "console" => sinks.push(Sink::Console),
                other => warnings.push(format!(
                    "OTEL_TRACES_EXPORTER: unknown exporter {other:?} ignored (pgc knows otlp, console and none)"
                )),
            }
        }
        if sinks.is_empty() && metrics.is_none() && logs.is_none() {
            return (None, warnings);
        }
        let destinations = sinks
            .iter()
            .map(|s| match s {
                Sink::Otlp(_, endpoint) => endpoint.as_str(),
                Sink::Console => "stderr",
            })
            .collect::<Vec<_>>()
            .join(", ");
        let telemetry = OtelTelemetry {
            traced: !sinks.is_empty(),
            destinations,
            metrics,
            logs,
            sinks: tokio::sync::Mutex::new(sinks),
            pending: Mutex::new(Vec::new()),
            dropped: std::sync::atomic::AtomicU64::new(0),
            failed: Mutex::new(Vec::new()),
            batch_ready: tokio::sync::Notify::new(),
            limits: Limits::from_env(),
        };
        (Some(telemetry), warnings)
    }

    /// Where spans go (endpoints, or `stderr`), for messages.
    pub fn destinations(&self) -> &str {
        &self.destinations
    }

    /// The span endpoints (OTLP, not `stderr`), for telling which collector failed.
    pub fn span_endpoints(&self) -> Vec<String> {
        self.destinations
            .split(", ")
            .filter(|d| *d != "stderr")
            .map(str::to_string)
            .collect()
    }

    /// Span endpoints an export to has failed so far.
    pub fn failed_span_endpoints(&self) -> Vec<String> {
        self.failed.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Where metrics go, when they are exported.
    pub fn metrics_endpoint(&self) -> Option<&str> {
        self.metrics.as_ref().map(super::metrics::Metrics::endpoint)
    }

    /// Where log records go, when they are exported.
    pub fn logs_destinations(&self) -> Option<&str> {
        self.logs.as_ref().map(super::logs::Logs::destinations)
    }

    /// Whether `OTEL_LOGS_EXPORTER` asked for pgc's log lines.
    pub fn wants_logs(&self) -> bool {
        self.logs.is_some()
    }

    /// Records one of pgc's log lines, when logs are exported.
    pub fn log(&self, level: &str, text: &str, fields: &super::logs::LogFields<'_>) {
        if let Some(logs) = &self.logs {
            logs.emit(level, text, fields);
        }
    }

    /// Exports the last log records and stops the logger provider, within `limit`
    /// (`give_up`: export nothing more, the collector is known to be failing).
    pub async fn shutdown_logs(
        &self,
        limit: std::time::Duration,
        give_up: bool,
    ) -> Result<(), String> {
        match &self.logs {
            Some(l) => l.shutdown(limit, give_up).await,
            None => Ok(()),
        }
    }

    /// Exports the last metrics and stops the meter provider, within `limit`.
    pub async fn shutdown_metrics(&self, limit: std::time::Duration) -> Result<(), String> {
        match &self.metrics {
            Some(m) => m.shutdown(limit).await,
            None => Ok(()),
        }
    }

    /// Exports on a schedule until `stop` is cancelled (then the caller flushes once
    /// more). Failures are warnings through `warn`, once until an export succeeds again.
    pub async fn run_flusher(
        &self,
        stop: tokio_util::sync::CancellationToken,
        warn: impl Fn(&str),
    ) {
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.limits.delay) => {}
                () = self.batch_ready.notified() => {}
            }
            match self.flush().await {
                Ok(_) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    warn(&e);
                }
                Err(_) => {}
            }
        }
    }

    /// Exports every span recorded so far. Each exporter is bounded by the export
    /// timeout; a failure is returned as a message (the spans are dropped, never
    /// retried: telemetry must not hold the queue's work back).
    pub async fn flush(&self) -> Result<usize, String> {
        let spans: Vec<SpanData> = match self.pending.lock() {
            Ok(mut pending) => std::mem::take(&mut *pending),
            Err(_) => return Err("the span buffer is unavailable".to_string()),
        };
        let dropped = self.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        if spans.is_empty() {
            return if dropped == 0 {
                Ok(0)
            } else {
                Err(format!(
                    "{dropped} spans were dropped (OTEL_BSP_MAX_QUEUE_SIZE)"
                ))
            };
        }
        let total = spans.len();
        let mut sinks = self.sinks.lock().await;
        let mut errors = Vec::new();
        // The console first (it borrows the spans), then the OTLP exporters; the last one
        // takes the spans without a copy.
        for sink in sinks.iter() {
            if let Sink::Console = sink {
                use std::io::Write;
                let mut err = std::io::stderr().lock();
                for span in &spans {
                    let _ = writeln!(err, "{}", console_line(span));
                }
            }
        }
        let otlp: Vec<&mut Sink> = sinks
            .iter_mut()
            .filter(|s| matches!(s, Sink::Otlp(..)))
            .collect();
        let last = otlp.len().saturating_sub(1);
        let mut spans = Some(spans);
        for (i, sink) in otlp.into_iter().enumerate() {
            let Sink::Otlp(exporter, endpoint) = sink else {
                continue;
            };
            let mut batch = if i == last {
                spans.take().unwrap_or_default()
            } else {
                spans.clone().unwrap_or_default()
            };
            while !batch.is_empty() {
                let rest = batch.split_off(batch.len().min(self.limits.max_batch));
                if let Err(e) = exporter.export(batch).await {
                    errors.push(format!("exporting spans to {endpoint} failed: {e}"));
                    if let Ok(mut failed) = self.failed.lock() {
                        failed.push(endpoint.clone());
                    }
                    break;
                }
                batch = rest;
            }
        }
        if dropped > 0 {
            errors.push(format!(
                "{dropped} spans were dropped (OTEL_BSP_MAX_QUEUE_SIZE)"
            ));
        }
        if errors.is_empty() {
            Ok(total)
        } else {
            Err(errors.join("; "))
        }
    }
}

impl OtelTelemetry {
    /// Queues one finished span for export (or counts it as dropped when the queue is
    /// full).
    fn record(&self, span: SpanData) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if pending.len() >= self.limits.max_queue {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        pending.push(span);
        if pending.len() == self.limits.max_batch {
            self.batch_ready.notify_one();
        }
    }
}

impl Telemetry for OtelTelemetry {
    fn span(&self, trace_id: &str, span: &Span) {
        if self.traced {
            self.record(to_span_data(trace_id, Utc::now(), span));
        }
    }

    fn wants_spans(&self) -> bool {
        self.traced
    }

    fn wants_queue_depth(&self) -> bool {
        self.metrics.is_some()
    }

    fn event(&self, event: &TelemetryEvent<'_>) {
        if let Some(m) = &self.metrics {
            m.record(event);
        }
        if !self.traced {
            return;
        }
        // The worker's own operations as spans of their own (a trace per operation).
        let (name, duration, attributes) = match *event {
            TelemetryEvent::Fetch {
                queues,
                count,
                duration,
            } => (
                "worker.fetch",
                duration,
                vec![
                    KeyValue::new("messaging.system", "pgconductor"),
                    KeyValue::new("messaging.operation.type", "receive"),
                    KeyValue::new("messaging.destination.name", queues.join(",")),
                    KeyValue::new("messaging.batch.message_count", count as i64),
                ],
            ),
            TelemetryEvent::Flush { count, duration } => (
                "worker.flush",
                duration,
                vec![
                    KeyValue::new("messaging.system", "pgconductor"),
                    KeyValue::new("messaging.operation.type", "settle"),
                    KeyValue::new("messaging.batch.message_count", count as i64),
                ],
            ),
            _ => return,
        };
        let end = std::time::SystemTime::now();
        let start = end.checked_sub(duration).unwrap_or(end);
        let context = SpanContext::new(
            OtelTraceId::from_bytes(crate::traceparent::new_trace_id().to_bytes()),
            OtelSpanId::from_bytes(crate::traceparent::new_span_id().to_bytes()),
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        );
        self.record(SpanData {
            span_context: context,
            parent_span_id: OtelSpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: name.into(),
            start_time: start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("pgc")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        });
    }
}

/// One span as a JSON line for the console exporter.
fn console_line(span: &SpanData) -> String {
    let attributes: serde_json::Map<String, serde_json::Value> = span
        .attributes
        .iter()
        .map(|kv| {
            let value = match &kv.value {
                opentelemetry::Value::Bool(b) => serde_json::Value::from(*b),
                opentelemetry::Value::I64(i) => serde_json::Value::from(*i),
                opentelemetry::Value::F64(f) => serde_json::Value::from(*f),
                other => serde_json::Value::from(other.as_str().into_owned()),
            };
            (kv.key.as_str().to_string(), value)
        })
        .collect();
    let parent =
        (span.parent_span_id != OtelSpanId::INVALID).then(|| span.parent_span_id.to_string());
    let time = |t: std::time::SystemTime| crate::trace::Rfc3339(DateTime::<Utc>::from(t));
    let kind = match span.span_kind {
        SpanKind::Producer => "producer",
        SpanKind::Consumer => "consumer",
        SpanKind::Client => "client",
        SpanKind::Server => "server",
        SpanKind::Internal => "internal",
    };
    let status = match &span.status {
        Status::Unset => "unset",
        Status::Ok => "ok",
        Status::Error { .. } => "error",
    };
    serde_json::json!({
        "trace_id": span.span_context.trace_id().to_string(),
        "span_id": span.span_context.span_id().to_string(),
        "parent_span_id": parent,
        "name": span.name,
        "kind": kind,
        "start_time": time(span.start_time),
        "end_time": time(span.end_time),
        "status": status,
        "attributes": attributes,
    })
    .to_string()
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
