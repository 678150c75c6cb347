//! Live metrics (the `otel` feature): the seed's instruments and the messaging ones,
//! recorded from the telemetry events and exported over OTLP/HTTP by the SDK's periodic
//! reader every `OTEL_METRIC_EXPORT_INTERVAL`, and once more at shutdown.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{
    BoundCounter, BoundHistogram, Counter, Histogram, MeterProvider as _,
};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::metrics::data::ResourceMetrics;
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider, Temporality};

use super::TelemetryEvent;
use super::otel::{exporter_names, otlp_http_client, otlp_var, signal_endpoint};
use crate::trace::Resource;

/// The periodic reader runs exports on a thread of its own, outside the async runtime
/// that pgc's HTTP client needs: this hands each export to that runtime.
struct OnRuntime {
    inner: opentelemetry_otlp::MetricExporter,
    runtime: tokio::runtime::Handle,
}

impl PushMetricExporter for OnRuntime {
    fn export(
        &self,
        metrics: &ResourceMetrics,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        // The reader's thread is not a runtime thread, so it may wait here; the runtime's
        // own thread(s) keep driving the connection meanwhile.
        let result = self.runtime.block_on(self.inner.export(metrics));
        async move { result }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// The `console` metric exporter: one JSON line per metric on stderr (stdout carries a
/// command's data), with each data point's attributes and value (count, sum and
/// buckets for histograms).
struct Console;

impl Console {
    fn points<T: Into<serde_json::Value> + Copy>(
        data: &opentelemetry_sdk::metrics::data::MetricData<T>,
    ) -> (&'static str, Vec<serde_json::Value>) {
        use opentelemetry_sdk::metrics::data::MetricData;
        let attrs = |kvs: &mut dyn Iterator<Item = &KeyValue>| -> serde_json::Value {
            kvs.map(|kv| {
                (
                    kv.key.to_string(),
                    serde_json::Value::from(kv.value.as_str().into_owned()),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
        };
        match data {
            MetricData::Gauge(g) => (
                "gauge",
                g.data_points()
                    .map(|p| serde_json::json!({"attributes": attrs(&mut p.attributes()), "value": p.value().into()}))
                    .collect(),
            ),
            MetricData::Sum(sum) => (
                "sum",
                sum.data_points()
                    .map(|p| serde_json::json!({"attributes": attrs(&mut p.attributes()), "value": p.value().into()}))
                    .collect(),
            ),
            MetricData::Histogram(h) => (
                "histogram",
                h.data_points()
                    .map(|p| {
                        serde_json::json!({
                            "attributes": attrs(&mut p.attributes()),
                            "count": p.count(),
                            "sum": p.sum().into(),
                            "bounds": p.bounds().collect::<Vec<_>>(),
                            "bucket_counts": p.bucket_counts().collect::<Vec<_>>(),
                        })
                    })
                    .collect(),
            ),
            MetricData::ExponentialHistogram(h) => (
                "exponential_histogram",
                h.data_points()
                    .map(|p| serde_json::json!({"attributes": attrs(&mut p.attributes()), "count": p.count(), "sum": p.sum().into()}))
                    .collect(),
            ),
        }
    }
}

impl PushMetricExporter for Console {
    fn export(
        &self,
        metrics: &ResourceMetrics,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        use opentelemetry_sdk::metrics::data::AggregatedMetrics;
        use std::io::Write;
        let mut lines = String::new();
        for scope in metrics.scope_metrics() {
            for m in scope.metrics() {
                let (kind, points) = match m.data() {
                    AggregatedMetrics::F64(d) => Console::points(d),
                    AggregatedMetrics::U64(d) => Console::points(d),
                    AggregatedMetrics::I64(d) => Console::points(d),
                };
                let line = serde_json::json!({
                    "metric": m.name(),
                    "unit": m.unit(),
                    "kind": kind,
                    "points": points,
                });
                lines.push_str(&line.to_string());
                lines.push('\n');
            }
        }
        let _ = std::io::stderr().lock().write_all(lines.as_bytes());
        async { Ok(()) }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }

    fn temporality(&self) -> Temporality {
        Temporality::Cumulative
    }
}

/// The instruments, and the provider that exports them.
pub struct Metrics {
    provider: SdkMeterProvider,
    endpoint: String,
    fetch_duration: Histogram<f64>,
    fetch_count: Counter<u64>,
    flush_duration: Histogram<f64>,
    flush_count: Counter<u64>,
    task_duration: Histogram<f64>,
    task_attempts: Counter<u64>,
    retry_delay: Histogram<f64>,
    db_duration: Histogram<f64>,
    db_retries: Counter<u64>,
    process_duration: Histogram<f64>,
    consumed: Counter<u64>,
    sent: Counter<u64>,
    /// The last counts the worker reported, read by the queue-depth gauge's callback.
    depth: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<(String, String), i64>>>,
    _depth_gauge: opentelemetry::metrics::ObservableGauge<i64>,
    /// The attribute sets of executions already recorded.
    execution_attrs: ExecutionAttrs,
}

/// The measurements of executions, by queue, task and outcome: each set of attributes
/// built once and bound to the instruments once (a bound instrument records without
/// hashing and looking up its attributes, which was most of what metrics cost a busy
/// worker: tens of thousands of executions a second, nearly all in the same few sets).
#[derive(Default)]
struct ExecutionAttrs {
    /// The sets, by a hash of (queue, task, outcome); how many in all (at most
    /// [`ExecutionAttrs::MAX`]); and the one used last, tried before hashing.
    sets: std::sync::Mutex<ExecutionSets>,
}

#[derive(Default)]
struct ExecutionSets {
    by_hash: std::collections::HashMap<u64, Vec<std::sync::Arc<ExecutionSet>>>,
    count: usize,
    last: Option<std::sync::Arc<ExecutionSet>>,
}

/// One (queue, task, outcome): its attributes and the instruments bound to them.
struct ExecutionSet {
    queue: Box<str>,
    task: Box<str>,
    status: Box<str>,
    attrs: std::sync::Arc<[KeyValue]>,
    bound: Option<BoundExecution>,
}

/// The per-execution instruments, bound to one attribute set.
struct BoundExecution {
    task_duration: BoundHistogram<f64>,
    process_duration: BoundHistogram<f64>,
    task_attempts: BoundCounter<u64>,
}

impl ExecutionSet {
    fn is(&self, queue: &str, task: &str, status: &str) -> bool {
        &*self.status == status && &*self.task == task && &*self.queue == queue
    }
}

impl ExecutionAttrs {
    /// Sets kept; more distinct ones (tasks named per execution) are built each time and
    /// recorded through the unbound instruments. A bound set is never evicted by the
    /// SDK, even with delta temporality, so this keeps most of its 2,000 points per
    /// instrument for those.
    const MAX: usize = 500;

    /// The set of (queue, task, status); `bind` binds the instruments to a new one.
    fn get(
        &self,
        queue: &str,
        task: &str,
        status: &str,
        bind: impl FnOnce(&[KeyValue]) -> Option<BoundExecution>,
    ) -> std::sync::Arc<ExecutionSet> {
        use std::hash::{Hash, Hasher};
        let Ok(mut guard) = self.sets.lock() else {
            return Self::build(queue, task, status, |_| None);
        };
        let sets = &mut *guard;
        if let Some(last) = &sets.last
            && last.is(queue, task, status)
        {
            return last.clone();
        }
        let mut h = std::hash::DefaultHasher::new();
        (queue, task, status).hash(&mut h);
        let hash = h.finish();
        let found = sets
            .by_hash
            .get(&hash)
            .and_then(|v| v.iter().find(|c| c.is(queue, task, status)))
            .cloned();
        let set = match found {
            Some(set) => set,
            None if sets.count < Self::MAX => {
                let set = Self::build(queue, task, status, bind);
                sets.count += 1;
                sets.by_hash.entry(hash).or_default().push(set.clone());
                set
            }
            None => return Self::build(queue, task, status, |_| None),
        };
        sets.last = Some(set.clone());
        set
    }

    /// The set: the retry delay's attributes are its first four.
    fn build(
        queue: &str,
        task: &str,
        status: &str,
        bind: impl FnOnce(&[KeyValue]) -> Option<BoundExecution>,
    ) -> std::sync::Arc<ExecutionSet> {
        let mut attrs = vec![
            KeyValue::new("messaging.system", "pgconductor"),
            KeyValue::new("messaging.destination.name", queue.to_string()),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("pgconductor.task", task.to_string()),
            KeyValue::new("pgconductor.status", status.to_string()),
        ];
        if !matches!(status, "completed" | "released") {
            attrs.push(KeyValue::new("error.type", status.to_string()));
        }
        let bound = bind(&attrs);
        std::sync::Arc::new(ExecutionSet {
            queue: queue.into(),
            task: task.into(),
            status: status.into(),
            attrs: attrs.into(),
            bound,
        })
    }
}

impl Metrics {
    /// The metrics `OTEL_METRICS_EXPORTER` asks for (`otlp`; `none`; unset: `otlp` when an
    /// OTLP endpoint variable is set), or `None`. Must run inside the async runtime.
    pub fn from_env(resource: &Resource, warnings: &mut Vec<String>) -> Option<Metrics> {
        let names = exporter_names("METRICS");
        for other in names.iter().filter(|n| *n != "otlp" && *n != "console") {
            warnings.push(format!(
                "OTEL_METRICS_EXPORTER: unknown exporter {other:?} ignored (pgc knows otlp, console and none)"
            ));
        }
        let interval = otlp_var("OTEL_METRIC_EXPORT_INTERVAL")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map_or(Duration::from_secs(60), Duration::from_millis);
        let mut builder = SdkMeterProvider::builder().with_resource(resource.to_sdk());
        let mut endpoint = String::new();
        let mut any = false;
        if names.iter().any(|n| n == "otlp") {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let target = signal_endpoint("METRICS", "metrics");
            let exporter = otlp_http_client(&target, "METRICS").and_then(|http| {
                use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
                opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_http_client(http)
                    .with_protocol(Protocol::HttpBinary)
                    .build()
                    .map_err(|e| {
                        format!("cannot set up the OTLP metric exporter for {target}: {e}")
                    })
            });
            match exporter {
                Ok(inner) => {
                    let reader = PeriodicReader::builder(OnRuntime { inner, runtime })
                        .with_interval(interval)
                        .build();
                    builder = builder.with_reader(reader);
                    endpoint = target;
                    any = true;
                }
                Err(e) => warnings.push(format!("metrics are not exported: {e}")),
            }
        }
        if names.iter().any(|n| n == "console") {
            builder = builder.with_reader(
                PeriodicReader::builder(Console)
                    .with_interval(interval)
                    .build(),
            );
            if endpoint.is_empty() {
                endpoint = "stderr".to_string();
            }
            any = true;
        }
        if !any {
            return None;
        }
        let provider = builder.build();
        let meter = provider.meter("pgc");
        // The messaging conventions' boundaries for durations in seconds (the SDK's
        // defaults suit milliseconds).
        let seconds = |name: &'static str, what: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(what)
                .with_boundaries(vec![
                    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                ])
                .build()
        };
        let count = |name: &'static str, unit: &'static str, what: &'static str| {
            meter
                .u64_counter(name)
                .with_unit(unit)
                .with_description(what)
                .build()
        };
        let depth: std::sync::Arc<
            std::sync::Mutex<std::collections::BTreeMap<(String, String), i64>>,
        > = std::sync::Arc::default();
        let read = depth.clone();
        let depth_gauge = meter
            .i64_observable_gauge("pgconductor.queue.depth")
            .with_unit("{execution}")
            .with_description("Executions pending and running, by queue and status")
            .with_callback(move |observer| {
                if let Ok(counts) = read.lock() {
                    for ((queue, status), n) in counts.iter() {
                        observer.observe(
                            *n,
                            &[
                                KeyValue::new("messaging.system", "pgconductor"),
                                KeyValue::new("messaging.destination.name", queue.clone()),
                                KeyValue::new("pgconductor.status", status.clone()),
                            ],
                        );
                    }
                }
            })
            .build();
        Some(Metrics {
            depth,
            _depth_gauge: depth_gauge,
            execution_attrs: ExecutionAttrs::default(),
            fetch_duration: seconds("pgconductor.worker.fetch.duration", "How long a claim took"),
            fetch_count: count(
                "pgconductor.worker.fetch.count",
                "{execution}",
                "Executions claimed",
            ),
            flush_duration: seconds(
                "pgconductor.worker.flush.duration",
                "How long settling a batch of attempts took",
            ),
            flush_count: count(
                "pgconductor.worker.flush.count",
                "{attempt}",
                "Attempts settled",
            ),
            task_duration: seconds("pgconductor.task.duration", "How long a handler ran"),
            task_attempts: count(
                "pgconductor.task.attempts",
                "{attempt}",
                "Attempts settled, by outcome",
            ),
            retry_delay: seconds(
                "pgconductor.task.retry.delay",
                "The backoff before a failed attempt runs again",
            ),
            db_duration: seconds(
                "pgconductor.db.query.duration",
                "How long a worker statement took",
            ),
            db_retries: count(
                "pgconductor.db.query.retries",
                "{retry}",
                "Statements run again after a failure",
            ),
            process_duration: seconds(
                "messaging.process.duration",
                "Duration of processing operation",
            ),
            consumed: count(
                "messaging.client.consumed.messages",
                "{message}",
                "Number of messages that were delivered to the application",
            ),
            sent: count(
                "messaging.client.sent.messages",
                "{message}",
                "Number of messages producer attempted to send to the broker",
            ),
            provider,
            endpoint,
        })
    }

    /// Records one event.
    pub fn record(&self, event: &TelemetryEvent<'_>) {
        let system = KeyValue::new("messaging.system", "pgconductor");
        match *event {
            TelemetryEvent::Fetch {
                queues,
                count,
                duration,
            } => {
                let queue = KeyValue::new("messaging.destination.name", queues.join(","));
                let attrs = [system, queue];
                self.fetch_duration.record(duration.as_secs_f64(), &attrs);
                self.fetch_count.add(count as u64, &attrs);
                self.consumed.add(count as u64, &attrs);
            }
            TelemetryEvent::Flush { count, duration } => {
                self.flush_duration.record(duration.as_secs_f64(), &[]);
                self.flush_count.add(count as u64, &[]);
            }
            TelemetryEvent::Execution {
                queue,
                task,
                duration,
                status,
                retry_in,
                ..
            } => {
                let set = self.execution_attrs.get(queue, task, status, |attrs| {
                    Some(BoundExecution {
                        task_duration: self.task_duration.bind(attrs),
                        process_duration: self.process_duration.bind(attrs),
                        task_attempts: self.task_attempts.bind(attrs),
                    })
                });
                let seconds = duration.as_secs_f64();
                match &set.bound {
                    Some(b) => {
                        b.task_duration.record(seconds);
                        b.process_duration.record(seconds);
                        b.task_attempts.add(1);
                    }
                    None => {
                        self.task_duration.record(seconds, &set.attrs);
                        self.process_duration.record(seconds, &set.attrs);
                        self.task_attempts.add(1, &set.attrs);
                    }
                }
                if let Some(delay) = retry_in {
                    self.retry_delay
                        .record(delay.as_secs_f64(), &set.attrs[..4]);
                }
            }
            TelemetryEvent::DbQuery {
                label,
                duration,
                retries,
            } => {
                let attrs = [KeyValue::new("db.operation.name", label.to_string())];
                self.db_duration.record(duration.as_secs_f64(), &attrs);
                if retries > 0 {
                    self.db_retries.add(u64::from(retries), &attrs);
                }
            }
            TelemetryEvent::QueueDepth {
                queue,
                status,
                count,
            } => {
                if let Ok(mut depth) = self.depth.lock() {
                    depth.insert((queue.to_string(), status.to_string()), count);
                }
            }
            TelemetryEvent::Sent { queue, count } => {
                self.sent.add(
                    count,
                    &[
                        system,
                        KeyValue::new("messaging.destination.name", queue.to_string()),
                        KeyValue::new("messaging.operation.name", "send"),
                    ],
                );
            }
        }
    }

    /// Where metrics go (an endpoint, or `stderr`), for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Exports what was recorded and stops, within `limit`.
    pub async fn shutdown(&self, limit: Duration) -> Result<(), String> {
        let provider = self.provider.clone();
        let endpoint = self.endpoint.clone();
        // The final export waits on this thread's runtime: run it from a blocking thread.
        let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(limit));
        match tokio::time::timeout(limit + Duration::from_secs(1), done).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(format!("exporting metrics to {endpoint} failed: {e}")),
            Ok(Err(e)) => Err(format!("exporting metrics failed: {e}")),
            Err(_) => Err(format!(
                "metrics not exported: {endpoint} did not answer within {}",
                humantime::format_duration(limit)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_attribute_sets_are_built_once_per_queue_task_and_outcome() {
        let cache = ExecutionAttrs::default();
        let get = |queue: &str, task: &str, status: &str| {
            cache.get(queue, task, status, |_| None).attrs.clone()
        };
        let a = get("q1", "report", "completed");
        // Asked again, right after and after another set.
        assert!(std::sync::Arc::ptr_eq(
            &a,
            &get("q1", "report", "completed")
        ));
        get("q1", "report", "failed");
        assert!(std::sync::Arc::ptr_eq(
            &a,
            &get("q1", "report", "completed")
        ));
        let keys = |attrs: &[KeyValue]| -> Vec<(String, String)> {
            attrs
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned()))
                .collect()
        };
        assert_eq!(
            keys(&a),
            [
                ("messaging.system", "pgconductor"),
                ("messaging.destination.name", "q1"),
                ("messaging.operation.name", "process"),
                ("pgconductor.task", "report"),
                ("pgconductor.status", "completed"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        // Any part different is another set; failures carry error.type.
        let failed = get("q1", "report", "failed");
        assert_eq!(
            keys(&failed).last(),
            Some(&("error.type".to_string(), "failed".to_string()))
        );
        assert_eq!(keys(&get("q2", "report", "completed"))[1].1, "q2");
        assert_eq!(keys(&get("q1", "other", "completed"))[3].1, "other");
        // Past the limit, sets are still right, just not kept.
        for i in 0..ExecutionAttrs::MAX + 10 {
            let task = format!("t{i}");
            assert_eq!(keys(&get("q", &task, "completed"))[3].1, task);
        }
        let kept = cache.sets.lock().map(|g| g.count).unwrap_or(0);
        assert_eq!(kept, ExecutionAttrs::MAX);
    }
}
