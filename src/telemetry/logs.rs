//! Live logs (the `otel` feature): pgc's own log lines as OpenTelemetry log records, with
//! the trace and span of the execution they are about, exported through the exporters
//! `OTEL_LOGS_EXPORTER` names by the SDK's batch log processor (`OTEL_BLRP_*`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::logs::{
    BatchLogProcessor, LogBatch, LogExporter, SdkLogger, SdkLoggerProvider, SimpleLogProcessor,
};

use super::LogContext;
use super::otel::{exporter_names, otlp_http_client, signal_endpoint};
use crate::trace::Resource;
use crate::traceparent::TraceParent;

/// The batch processor exports on a thread of its own, outside the async runtime that
/// pgc's HTTP client needs: this hands each export to that runtime.
#[derive(Debug)]
struct OnRuntime {
    inner: opentelemetry_otlp::LogExporter,
    runtime: tokio::runtime::Handle,
    /// Exports running now: the runtime must outlive them (see [`Logs::shutdown`]).
    in_flight: Arc<AtomicUsize>,
    /// Cancelled when the command stops waiting: an export still running ends at once.
    abandon: tokio_util::sync::CancellationToken,
}

impl LogExporter for OnRuntime {
    fn export(
        &self,
        batch: LogBatch<'_>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        // The processor's thread is not a runtime thread, so it may wait here; the
        // runtime's own thread(s) keep driving the connection meanwhile.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = if self.abandon.is_cancelled() {
            Err(OTelSdkError::InternalFailure("abandoned at exit".into()))
        } else {
            self.runtime.block_on(async {
                tokio::select! {
                    r = self.inner.export(batch) => r,
                    () = self.abandon.cancelled() => {
                        Err(OTelSdkError::InternalFailure("abandoned at exit".into()))
                    }
                }
            })
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        async move { result }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The `console` log exporter: one JSON object per record on stderr (stdout carries a
/// command's data).
#[derive(Debug)]
struct Console;

impl Console {
    fn line(record: &opentelemetry_sdk::logs::SdkLogRecord) -> serde_json::Value {
        let text = |v: &AnyValue| match v {
            AnyValue::String(s) => serde_json::Value::from(s.as_str()),
            AnyValue::Int(i) => serde_json::Value::from(*i),
            AnyValue::Double(d) => serde_json::Value::from(*d),
            AnyValue::Boolean(b) => serde_json::Value::from(*b),
            other => serde_json::Value::from(format!("{other:?}")),
        };
        let mut line = serde_json::Map::new();
        line.insert("kind".into(), "log".into());
        if let Some(t) = record.timestamp() {
            let t: chrono::DateTime<chrono::Utc> = t.into();
            line.insert(
                "time".into(),
                t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                    .into(),
            );
        }
        if let Some(s) = record.severity_text() {
            line.insert("severity".into(), s.into());
        }
        if let Some(body) = record.body() {
            line.insert("body".into(), text(body));
        }
        if let Some(ctx) = record.trace_context() {
            line.insert("trace_id".into(), ctx.trace_id.to_string().into());
            line.insert("span_id".into(), ctx.span_id.to_string().into());
        }
        let attributes: serde_json::Map<String, serde_json::Value> = record
            .attributes_iter()
            .map(|(k, v)| (k.to_string(), text(v)))
            .collect();
        if !attributes.is_empty() {
            line.insert("attributes".into(), attributes.into());
        }
        serde_json::Value::Object(line)
    }
}

impl LogExporter for Console {
    fn export(
        &self,
        batch: LogBatch<'_>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        use std::io::Write;
        let mut out = String::new();
        for (record, _) in batch.iter() {
            out.push_str(&Console::line(record).to_string());
            out.push('\n');
        }
        let _ = std::io::stderr().lock().write_all(out.as_bytes());
        async { Ok(()) }
    }
}

/// The logger provider `OTEL_LOGS_EXPORTER` asks for.
pub struct Logs {
    provider: SdkLoggerProvider,
    logger: SdkLogger,
    /// The OTLP endpoint records go to (without user information).
    endpoint: Option<String>,
    /// Records also go to stderr.
    console: bool,
    in_flight: Arc<AtomicUsize>,
    abandon: tokio_util::sync::CancellationToken,
}

impl Logs {
    /// The exporters `OTEL_LOGS_EXPORTER` names (`otlp`, `console`; `none`; unset: `otlp`
    /// when an OTLP endpoint variable is set), or `None`. Must run inside the async
    /// runtime.
    pub fn from_env(resource: &Resource, warnings: &mut Vec<String>) -> Option<Logs> {
        let names = exporter_names("LOGS");
        for other in names.iter().filter(|n| *n != "otlp" && *n != "console") {
            warnings.push(format!(
                "OTEL_LOGS_EXPORTER: unknown exporter {other:?} ignored (pgc knows otlp, console and none)"
            ));
        }
        let mut builder = SdkLoggerProvider::builder().with_resource(resource.to_sdk());
        let mut endpoint = None;
        let in_flight = Arc::new(AtomicUsize::new(0));
        let abandon = tokio_util::sync::CancellationToken::new();
        if names.iter().any(|n| n == "otlp") {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let target = signal_endpoint("LOGS", "logs");
            let exporter = otlp_http_client(&target, "LOGS").and_then(|http| {
                use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
                opentelemetry_otlp::LogExporter::builder()
                    .with_http()
                    .with_http_client(http)
                    .with_protocol(Protocol::HttpBinary)
                    .build()
                    .map_err(|e| format!("cannot set up the OTLP log exporter for {target}: {e}"))
            });
            match exporter {
                Ok(inner) => {
                    // OTEL_BLRP_SCHEDULE_DELAY, _MAX_QUEUE_SIZE, _MAX_EXPORT_BATCH_SIZE and
                    // _EXPORT_TIMEOUT are read by the processor's default configuration.
                    builder = builder.with_log_processor(
                        BatchLogProcessor::builder(OnRuntime {
                            inner,
                            runtime,
                            in_flight: in_flight.clone(),
                            abandon: abandon.clone(),
                        })
                        .build(),
                    );
                    endpoint = Some(target);
                }
                Err(e) => warnings.push(format!("logs are not exported: {e}")),
            }
        }
        let console = names.iter().any(|n| n == "console");
        if console {
            builder = builder.with_log_processor(SimpleLogProcessor::new(Console));
        }
        if endpoint.is_none() && !console {
            return None;
        }
        let provider = builder.build();
        let logger = provider.logger("pgc");
        Some(Logs {
            provider,
            logger,
            endpoint,
            console,
            in_flight,
            abandon,
        })
    }

    /// The OTLP endpoint records go to, when they go to one.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Where records go (the endpoint, and/or `stderr`), for messages.
    fn destinations(&self) -> String {
        let console = self.console.then_some("stderr");
        self.endpoint
            .as_deref()
            .into_iter()
            .chain(console)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Records one of pgc's log lines (`level`: `info`, `warn` or `error`).
    pub fn emit(&self, level: &str, text: &str, fields: &LogContext<'_>) {
        let mut record = self.logger.create_log_record();
        let now = SystemTime::now();
        record.set_timestamp(now);
        record.set_observed_timestamp(now);
        let (number, name) = match level {
            "error" => (Severity::Error, "ERROR"),
            "warn" => (Severity::Warn, "WARN"),
            _ => (Severity::Info, "INFO"),
        };
        record.set_severity_number(number);
        record.set_severity_text(name);
        record.set_body(AnyValue::from(text.to_string()));
        if let Some(tp) = fields
            .traceparent
            .and_then(|tp| TraceParent::parse(tp).ok())
        {
            record.set_trace_context(
                opentelemetry::trace::TraceId::from_bytes(tp.trace_id.to_bytes()),
                opentelemetry::trace::SpanId::from_bytes(tp.parent_id.to_bytes()),
                Some(opentelemetry::trace::TraceFlags::new(tp.flags.to_u8())),
            );
        }
        if let Some(id) = fields.execution_id {
            record.add_attribute("pgconductor.execution_id", id.to_string());
        }
        if let Some(task) = fields.task {
            record.add_attribute("pgconductor.task", task.to_string());
        }
        if let Some(attempt) = fields.attempt {
            record.add_attribute("pgconductor.attempt", i64::from(attempt));
        }
        self.logger.emit(record);
    }

    /// Exports what is recorded and stops the provider, within `limit`; then abandons an
    /// export still running (it needs this runtime, which ends with the command).
    /// `give_up`: abandon every export at once (the collector is known to be failing).
    pub async fn shutdown(&self, limit: Duration, give_up: bool) -> Result<(), String> {
        if give_up {
            self.abandon.cancel();
        }
        let provider = self.provider.clone();
        let destinations = self.destinations();
        let deadline = tokio::time::Instant::now() + limit + Duration::from_millis(500);
        // The final export waits on this thread's runtime: run it from a blocking thread.
        let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(limit));
        let result = tokio::time::timeout_at(deadline, done).await;
        self.abandon.cancel();
        let settle = tokio::time::Instant::now() + Duration::from_millis(200);
        while self.in_flight.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match result {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("exporting logs to {destinations} failed: {e}")),
            Ok(Err(e)) => Err(format!("exporting logs failed: {e}")),
            Err(_) => Err(format!(
                "logs not exported: {destinations} did not answer within {}",
                humantime::format_duration(limit)
            )),
        }
    }
}
