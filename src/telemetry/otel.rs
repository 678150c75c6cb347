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
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

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

/// The endpoint URL of one signal (`TRACES`/`traces`, `METRICS`/`metrics`,
/// `LOGS`/`logs`) as configured, user information included: the signal's own variable,
/// else `/v1/<path>` under the general one, else the local default.
fn signal_url(var_part: &str, path: &str) -> String {
    otlp_var(&format!("OTEL_EXPORTER_OTLP_{var_part}_ENDPOINT"))
        .map(|u| u.trim().to_string())
        .or_else(|| {
            otlp_var("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| format!("{}/v1/{path}", base.trim().trim_end_matches('/')))
        })
        .unwrap_or_else(|| format!("http://localhost:4318/v1/{path}"))
}

/// [`signal_url`] without user information, for messages.
pub(crate) fn signal_endpoint(var_part: &str, path: &str) -> String {
    without_userinfo(&signal_url(var_part, path))
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

/// `OTEL_EXPORTER_OTLP_HEADERS`, then `OTEL_EXPORTER_OTLP_TRACES_HEADERS` (its keys win):
/// `key=value` pairs separated by commas, percent-decoded.
fn trace_headers(warnings: &mut Vec<String>) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        let Some(value) = otlp_var(var) else { continue };
        let pairs = match crate::trace::parse_resource_attributes(&value) {
            Ok(pairs) => pairs,
            Err(why) => {
                warnings.push(format!("ignoring {var}: {why}"));
                continue;
            }
        };
        for (k, v) in pairs {
            match (
                reqwest::header::HeaderName::from_bytes(k.as_bytes()),
                reqwest::header::HeaderValue::from_str(&v),
            ) {
                (Ok(name), Ok(value)) => {
                    headers.insert(name, value);
                }
                _ => warnings.push(format!("ignoring {var}: {k:?} is not a valid HTTP header")),
            }
        }
    }
    headers
}

/// Sends spans to the OTLP/HTTP traces endpoint as protobuf, with pgc's HTTP client
/// (rustls for `https://` with system roots or `OTEL_EXPORTER_OTLP_[TRACES_]CERTIFICATE`,
/// the export timeout) and the configured headers.
pub struct SpanSender {
    client: reqwest::Client,
    url: String,
    headers: reqwest::header::HeaderMap,
    /// The endpoint without user information, for messages.
    endpoint: String,
    /// The `Resource` and `InstrumentationScope` messages every request carries, encoded.
    resource: Vec<u8>,
    scope: Vec<u8>,
}

impl SpanSender {
    /// Set up from the standard variables; `warnings` gets what was ignored (malformed
    /// headers).
    pub fn from_env(resource: &Resource, warnings: &mut Vec<String>) -> Result<SpanSender, String> {
        use opentelemetry_proto::tonic::common::v1::{
            AnyValue, InstrumentationScope as ProtoScope, KeyValue as ProtoKeyValue, any_value,
        };
        use prost::Message as _;
        let endpoint = otlp_endpoint_for_display();
        let client = otlp_http_client(&endpoint, "TRACES")?;
        Ok(SpanSender {
            client,
            // User information in it is sent as basic authentication.
            url: signal_url("TRACES", "traces"),
            headers: trace_headers(warnings),
            endpoint,
            resource: opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: resource
                    .attributes
                    .iter()
                    .map(|(k, v)| ProtoKeyValue {
                        key: k.clone(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(v.clone())),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }
            .encode_to_vec(),
            scope: ProtoScope {
                name: "pgc".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                ..Default::default()
            }
            .encode_to_vec(),
        })
    }

    /// The endpoint, without user information, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// An empty batch for [`SpanSender::send`], with room for about `spans` spans and,
    /// in front of them, for what `send` writes around them (so that it sends the
    /// batch's buffer without copying it).
    pub fn batch(&self, spans: usize) -> SpanBatch {
        // Four length-delimited headers (a one-byte key and a varint length each) and
        // the resource and scope messages.
        let room = 4 * 11 + self.resource.len() + self.scope.len();
        let mut bytes = Vec::with_capacity(room + spans * SPAN_BYTES);
        bytes.resize(room, 0);
        SpanBatch {
            bytes,
            room,
            spans: 0,
        }
    }

    /// One export request of `spans` (a [`SpanBatch`]); an answer other than 2xx is an
    /// error.
    pub async fn send(&self, spans: SpanBatch) -> Result<(), String> {
        use crate::trace::wire::{header, header_len};
        // ExportTraceServiceRequest { resource_spans (1): [ResourceSpans { resource (1),
        // scope_spans (2): [ScopeSpans { scope (1), spans (2): the batch }] }] }
        let SpanBatch {
            mut bytes, room, ..
        } = spans;
        let spans_len = bytes.len() - room;
        let scope_spans = header_len(1, self.scope.len()) + spans_len;
        let resource_spans = header_len(1, self.resource.len()) + header_len(2, scope_spans);
        let mut head = Vec::with_capacity(64 + self.resource.len() + self.scope.len());
        header(1, resource_spans, &mut head);
        header(1, self.resource.len(), &mut head);
        head.extend_from_slice(&self.resource);
        header(2, scope_spans, &mut head);
        header(1, self.scope.len(), &mut head);
        head.extend_from_slice(&self.scope);
        let body = if head.len() <= room {
            // Written just in front of the spans, in the room left for it.
            let start = room - head.len();
            bytes[start..room].copy_from_slice(&head);
            bytes::Bytes::from(bytes).slice(start..)
        } else {
            head.extend_from_slice(&bytes[room..]);
            bytes::Bytes::from(head)
        };
        let response = self
            .client
            .post(&self.url)
            .headers(self.headers.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .send()
            .await
            .map_err(|e| describe_http_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let text: String = text.chars().take(200).collect();
        Err(if text.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {text}")
        })
    }
}

/// An HTTP client error with its causes, on one line (a timeout says so).
fn describe_http_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!(
            "no answer within {}",
            humantime::format_duration(otlp_timeout())
        );
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Spans a new batch has room for before it grows (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
/// may be far larger than what usually waits).
const MAX_RESERVED_SPANS: usize = 2048;

/// Export requests in flight at once.
const CONCURRENT_EXPORTS: usize = 4;

/// About how many bytes one span takes, encoded (an attempt's span: about 530).
const SPAN_BYTES: usize = 600;

/// Spans for one OTLP export request, encoded: each a `spans` field of a `ScopeSpans`
/// message. Made by [`SpanSender::batch`].
#[derive(Debug)]
pub struct SpanBatch {
    /// `room` bytes for what goes in front of the spans, then the spans.
    bytes: Vec<u8>,
    room: usize,
    spans: usize,
}

impl SpanBatch {
    /// Appends one span, its `Span` message written by `encode` (`scratch` is a buffer
    /// to reuse).
    pub fn push(&mut self, scratch: &mut Vec<u8>, encode: impl FnOnce(&mut Vec<u8>)) {
        scratch.clear();
        encode(scratch);
        crate::trace::wire::header(2, scratch.len(), &mut self.bytes);
        self.bytes.extend_from_slice(scratch);
        self.spans += 1;
    }

    /// Spans in it.
    pub fn len(&self) -> usize {
        self.spans
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.spans == 0
    }
}

/// Spans waiting for export: encoded for OTLP in batches of at most
/// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` when spans go to a collector, and as the SDK's span
/// records when they go to the console.
#[derive(Default)]
struct Pending {
    batches: Vec<SpanBatch>,
    console: Vec<SpanData>,
    /// Spans queued.
    count: usize,
    scratch: Vec<u8>,
    head: crate::trace::AttemptHead,
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
    /// Spans go over OTLP/HTTP.
    otlp: Option<SpanSender>,
    /// Spans go to stderr as JSON lines (stdout carries a command's data).
    console: bool,
    pending: Mutex<Pending>,
    dropped: std::sync::atomic::AtomicU64,
    /// An export to the OTLP endpoint has failed (dropped spans are not its failure).
    export_failed: std::sync::atomic::AtomicBool,
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
        let mut otlp = None;
        let mut console = false;
        let mut destinations = Vec::new();
        for name in &names {
            match name.as_str() {
                "otlp" => match SpanSender::from_env(&resource, &mut warnings) {
                    Ok(sender) => {
                        destinations.push(sender.endpoint.clone());
                        otlp = Some(sender);
                    }
                    Err(e) => warnings.push(format!("traces are not exported: {e}")),
                },
                "console" => {
                    console = true;
                    destinations.push("stderr".to_string());
                }
                other => warnings.push(format!(
                    "OTEL_TRACES_EXPORTER: unknown exporter {other:?} ignored (pgc knows otlp, console and none)"
                )),
            }
        }
        let traced = otlp.is_some() || console;
        if !traced && metrics.is_none() && logs.is_none() {
            return (None, warnings);
        }
        let telemetry = OtelTelemetry {
            traced,
            destinations: destinations.join(", "),
            metrics,
            logs,
            otlp,
            console,
            pending: Mutex::new(Pending::default()),
            dropped: std::sync::atomic::AtomicU64::new(0),
            export_failed: std::sync::atomic::AtomicBool::new(false),
            batch_ready: tokio::sync::Notify::new(),
            limits: Limits::from_env(),
        };
        (Some(telemetry), warnings)
    }

    /// Where spans go (endpoints, or `stderr`), for messages.
    pub fn destinations(&self) -> &str {
        &self.destinations
    }

    /// The OTLP endpoint spans go to, when they go to one.
    pub fn span_endpoint(&self) -> Option<&str> {
        self.otlp.as_ref().map(SpanSender::endpoint)
    }

    /// Whether an export of spans to the OTLP endpoint has failed so far.
    pub fn span_export_failed(&self) -> bool {
        self.export_failed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where metrics go, when they are exported.
    pub fn metrics_endpoint(&self) -> Option<&str> {
        self.metrics.as_ref().map(super::metrics::Metrics::endpoint)
    }

    /// The OTLP endpoint log records go to, when they go to one.
    pub fn logs_endpoint(&self) -> Option<&str> {
        self.logs.as_ref().and_then(super::logs::Logs::endpoint)
    }

    /// Whether `OTEL_LOGS_EXPORTER` asked for pgc's log lines.
    pub fn wants_logs(&self) -> bool {
        self.logs.is_some()
    }

    /// Records one of pgc's log lines, when logs are exported.
    pub fn log(&self, level: &str, text: &str, fields: &super::LogContext<'_>) {
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
        let (batches, console, total) = match self.pending.lock() {
            Ok(mut pending) => (
                std::mem::take(&mut pending.batches),
                std::mem::take(&mut pending.console),
                std::mem::take(&mut pending.count),
            ),
            Err(_) => return Err("the span buffer is unavailable".to_string()),
        };
        let dropped = self.dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        if total == 0 {
            return if dropped == 0 {
                Ok(0)
            } else {
                Err(format!(
                    "{dropped} spans were dropped (OTEL_BSP_MAX_QUEUE_SIZE)"
                ))
            };
        }
        let mut errors = Vec::new();
        if !console.is_empty() {
            use std::io::Write;
            let mut err = std::io::stderr().lock();
            for data in &console {
                let _ = writeln!(err, "{}", console_line(data));
            }
        }
        if let Some(sender) = &self.otlp {
            // Batches of OTEL_BSP_MAX_EXPORT_BATCH_SIZE, a few requests at once, so that
            // the queue drains as fast as the collector takes them.
            use futures_util::StreamExt as _;
            let mut sent =
                futures_util::stream::iter(batches.into_iter().filter(|b| !b.is_empty()))
                    .map(|b| sender.send(b))
                    .buffer_unordered(CONCURRENT_EXPORTS);
            while let Some(result) = sent.next().await {
                if let Err(e) = result {
                    errors.push(format!(
                        "exporting spans to {} failed: {e}",
                        sender.endpoint
                    ));
                    self.export_failed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    // The other batches are dropped: the collector is failing.
                    break;
                }
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
    /// full): `encode` writes its OTLP `Span` message, `data` is its record for the
    /// console.
    fn record(
        &self,
        encode: impl FnOnce(&mut Vec<u8>, &mut crate::trace::AttemptHead),
        data: Option<SpanData>,
    ) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        if pending.count >= self.limits.max_queue {
            self.dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        if let Some(sender) = &self.otlp {
            let Pending {
                batches,
                scratch,
                head,
                ..
            } = &mut *pending;
            let batch = match batches.last_mut() {
                Some(b) if b.len() < self.limits.max_batch => b,
                _ => {
                    batches.push(sender.batch(self.limits.max_batch.min(MAX_RESERVED_SPANS)));
                    // Just pushed.
                    let Some(b) = batches.last_mut() else { return };
                    b
                }
            };
            batch.push(scratch, |out| encode(out, head));
        }
        pending.console.extend(data);
        pending.count += 1;
        if pending.count == self.limits.max_batch {
            self.batch_ready.notify_one();
        }
    }
}

impl Telemetry for OtelTelemetry {
    fn span(&self, trace_id: &str, span: &Span) {
        if self.traced {
            let now = Utc::now();
            self.record(
                |out, _| crate::trace::encode_proto_span(trace_id, now, span, out),
                self.console.then(|| to_span_data(trace_id, now, span)),
            );
        }
    }

    fn attempt(&self, parts: crate::trace::AttemptParts<'_>) {
        if !self.traced {
            return;
        }
        if self.console {
            let (trace_id, span) = crate::trace::attempt_span(parts);
            self.span(&trace_id, &span);
        } else {
            self.record(
                |out, head| crate::trace::encode_attempt_span(&parts, head, out),
                None,
            );
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
        let data = SpanData {
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
        };
        let proto = self
            .otlp
            .is_some()
            .then(|| opentelemetry_proto::tonic::trace::v1::Span::from(data.clone()));
        self.record(
            |out, _| {
                if let Some(p) = proto {
                    prost::Message::encode_raw(&p, out);
                }
            },
            self.console.then_some(data),
        );
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
