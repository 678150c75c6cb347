//! Live telemetry: `pgc enqueue` emits its producer span, with the stored ids, through
//! the exporters the standard variables choose — to a real OTLP/HTTP receiver on
//! loopback, to stderr, or nowhere.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use uuid::Uuid;

use crate::support::{TestDb, run};
use crate::trace::receiver;

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The URL of a collector that accepts connections and never answers.
fn silent_collector() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    endpoint
}

async fn stored_traceparent(db: &TestDb, id: Uuid) -> String {
    db.client()
        .await
        .query_one(
            "select trace_context ->> 'traceparent' from pgconductor._private_executions where id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn enqueue_exports_its_producer_span_with_the_stored_ids() {
    let db = TestDb::migrated().await;
    let (endpoint, got) = receiver();
    let out = run(
        db.pgc()
            .env("TRACEPARENT", CALLER)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_SERVICE_NAME", "ci"),
        &["enqueue", "deploy", "--queue", "ci"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "");
    let id = Uuid::parse_str(out.stdout.trim()).expect("stdout is the id alone");
    let stored = stored_traceparent(&db, id).await;
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 1, "one request before the command exited");
    assert_eq!(got[0].0, "/v1/traces");
    let request = ExportTraceServiceRequest::decode(got[0].2.as_slice()).unwrap();
    let rs = &request.resource_spans[0];
    let service = rs
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name");
    assert!(format!("{service:?}").contains("\"ci\""), "{service:?}");
    let spans: Vec<_> = rs.scope_spans.iter().flat_map(|s| &s.spans).collect();
    assert_eq!(spans.len(), 1);
    let span = spans[0];
    assert_eq!(span.name, "conductor.invoke");
    assert_eq!(span.kind, SpanKind::Producer as i32);
    assert_eq!(hex::encode(&span.trace_id), &stored[3..35]);
    assert_eq!(
        hex::encode(&span.span_id),
        &stored[36..52],
        "the stored span id"
    );
    assert_eq!(hex::encode(&span.parent_span_id), "00f067aa0ba902b7");
    let attr = |k: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key == k)
            .map(|kv| format!("{:?}", kv.value))
            .unwrap_or_default()
    };
    assert!(attr("pgconductor.execution_id").contains(&id.to_string()));
    assert!(attr("messaging.operation.type").contains("send"));
    assert!(attr("messaging.destination.name").contains("\"ci\""));
}

#[tokio::test]
async fn a_batch_exports_each_committed_row_s_producer_span_and_sent_counts_per_queue() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let db = TestDb::migrated().await;
    let (endpoint, got) = receiver();
    let lines = b"{\"task\":\"a\"}\n{\"task\":\"b\",\"queue\":\"mail\"}\n{\"task\":\"c\"}\n\
        {\"task\":\"d\",\"dedupe_key\":\"k\"}\n{\"task\":\"d\",\"dedupe_key\":\"k\"}\n";
    let out = crate::support::run_with_stdin(
        db.pgc()
            .env("TRACEPARENT", CALLER)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_METRIC_EXPORT_INTERVAL", "3600000"),
        &["enqueue", "--batch", "-", "--commit-every", "2"],
        lines,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let stored: std::collections::BTreeSet<(String, String)> = db
        .client()
        .await
        .query(
            "select id::text, trace_context ->> 'traceparent' from pgconductor._private_executions",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(stored.len(), 4, "the second dedupe line wrote nothing");
    let got = got.lock().unwrap();
    let mut exported = std::collections::BTreeSet::new();
    let mut sent = std::collections::BTreeMap::new();
    for (path, _, body) in got.iter() {
        if path == "/v1/traces" {
            let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
            for span in request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
            {
                assert_eq!(span.name, "conductor.invoke");
                assert_eq!(span.kind, SpanKind::Producer as i32);
                assert_eq!(hex::encode(&span.parent_span_id), "00f067aa0ba902b7");
                let id = span
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "pgconductor.execution_id")
                    .and_then(|kv| kv.value.as_ref()?.value.clone());
                use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
                let Some(V::StringValue(id)) = id else {
                    panic!("no execution id on {span:?}")
                };
                let traceparent = format!(
                    "00-{}-{}-01",
                    hex::encode(&span.trace_id),
                    hex::encode(&span.span_id)
                );
                exported.insert((id, traceparent));
            }
        } else if path == "/v1/metrics" {
            let request = ExportMetricsServiceRequest::decode(body.as_slice()).unwrap();
            for m in request
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
                .filter(|m| m.name == "messaging.client.sent.messages")
            {
                let Some(Data::Sum(sum)) = &m.data else {
                    panic!("{m:?}")
                };
                for point in &sum.data_points {
                    let queue = point
                        .attributes
                        .iter()
                        .find(|kv| kv.key == "messaging.destination.name")
                        .map(|kv| format!("{:?}", kv.value))
                        .unwrap_or_default();
                    sent.insert(queue, format!("{:?}", point.value));
                }
            }
        }
    }
    assert_eq!(
        exported, stored,
        "one span per new row, with its stored ids"
    );
    assert_eq!(sent.len(), 2, "{sent:?}");
    for (queue, value) in sent {
        let expected = if queue.contains("\"mail\"") {
            "AsInt(1)"
        } else {
            "AsInt(3)"
        };
        assert!(value.contains(expected), "{queue}: {value}");
    }
}

#[tokio::test]
async fn spans_carry_the_configured_headers_and_a_refusal_is_reported_with_its_status() {
    use std::io::{BufRead, BufReader, Read, Write};
    // A receiver that keeps each request's header lines and answers with `status`.
    let serve = |status: &'static str| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: std::sync::Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let store = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                    store.lock().unwrap().push(lower.trim().to_string());
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: 4\r\nconnection: close\r\n\r\nnope"
                );
                let _ = reader.get_mut().write_all(answer.as_bytes());
            }
        });
        (url, seen)
    };
    let db = TestDb::migrated().await;
    let (url, seen) = serve("200 OK");
    let out = run(
        db.pgc()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &url)
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none")
            .env(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "x-team=ci,authorization=Bearer%20abc",
            )
            .env("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-team=deploys"),
        &["enqueue", "t"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.contains(&"authorization: bearer abc".to_string()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"x-team: deploys".to_string()),
        "the traces' own wins: {seen:?}"
    );
    assert!(
        seen.contains(&"content-type: application/x-protobuf".to_string()),
        "{seen:?}"
    );

    let (url, _) = serve("403 Forbidden");
    let out = run(
        db.pgc()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &url)
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none"),
        &["enqueue", "t"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("failed: HTTP 403 Forbidden: nope"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn nothing_is_exported_when_disabled_or_set_to_none() {
    let db = TestDb::migrated().await;
    let (endpoint, got) = receiver();
    for (key, value) in [
        ("OTEL_SDK_DISABLED", "true"),
        ("OTEL_SDK_DISABLED", "TRUE"),
        ("OTEL_TRACES_EXPORTER", "none"),
    ] {
        let out = run(
            db.pgc()
                .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
                .env("OTEL_METRICS_EXPORTER", "none")
                .env(key, value),
            &["enqueue", "t"],
        );
        assert_eq!(out.code, 0, "{}", out.stderr);
        assert_eq!(out.stderr, "");
    }
    // Nor without any configuration at all (not even to the default endpoint: that
    // would fail here, with a warning).
    let out = run(&mut db.pgc(), &["enqueue", "t"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stderr, "");
    assert!(got.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_console_exporter_writes_to_stderr_and_leaves_stdout_alone() {
    let db = TestDb::migrated().await;
    let out = run(
        db.pgc().env("OTEL_TRACES_EXPORTER", "console"),
        &["enqueue", "t"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = Uuid::parse_str(out.stdout.trim()).expect("stdout is the id alone");
    let stored = stored_traceparent(&db, id).await;
    let line: serde_json::Value = serde_json::from_str(out.stderr.trim()).expect("one JSON line");
    assert_eq!(line["span_id"], &stored[36..52]);
    assert_eq!(line["trace_id"], &stored[3..35]);
    assert_eq!(line["parent_span_id"], serde_json::Value::Null);
    assert_eq!(line["kind"], "producer");
}

#[tokio::test]
async fn an_unreachable_collector_is_a_warning_and_the_execution_is_stored() {
    let db = TestDb::migrated().await;
    let out = run(
        db.pgc().env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:1/v1/traces",
        ),
        &["enqueue", "t"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = Uuid::parse_str(out.stdout.trim()).unwrap();
    assert!(stored_traceparent(&db, id).await.starts_with("00-"));
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("pgc: warning: exporting spans to http://127.0.0.1:1/v1/traces failed"),
        "{}",
        out.stderr
    );
}

/// (span id, parent span id, name, kind) of every span, sorted.
type Shape = Vec<(String, String, String, i32)>;

#[tokio::test]
async fn a_worked_trace_exported_live_agrees_span_for_span_with_its_rebuild() {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind as K;
    let db = TestDb::migrated().await;
    let (endpoint, got) = receiver();
    let pgc = env!("CARGO_BIN_EXE_pgc");
    let with_otel = |cmd: &mut std::process::Command| {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none");
    };
    let mut enqueue = db.pgc();
    with_otel(enqueue.env("TRACEPARENT", CALLER));
    let root = run(&mut enqueue, &["enqueue", "deploy"]);
    assert_eq!(root.code, 0, "{}", root.stderr);
    let deploy = format!("deploy={pgc} step build -- true && {pgc} enqueue flaky >/dev/null");
    let mut work = db.pgc();
    with_otel(&mut work);
    let out = run(
        &mut work,
        &[
            "work",
            "--until-empty",
            "--retry-delay",
            "10ms",
            "--handler",
            &deploy,
            "--handler",
            r#"flaky=[ "$PGC_ATTEMPT" -ge 2 ] || exit 1"#,
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Live: everything the receiver got (enqueues, attempts, the step, from the worker
    // and from the pgc processes its handlers ran).
    let mut live: Shape = Vec::new();
    let mut worker_ops: Vec<String> = Vec::new();
    for (path, _, body) in got.lock().unwrap().iter() {
        assert_eq!(path, "/v1/traces");
        let request = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        for s in request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
        {
            // The worker's own fetches and flushes are traces of their own.
            if s.name.starts_with("worker.") {
                assert!(s.parent_span_id.is_empty(), "{s:?}");
                assert!(
                    s.attributes
                        .iter()
                        .any(|kv| kv.key == "messaging.batch.message_count"),
                    "{s:?}"
                );
                worker_ops.push(s.name.clone());
                continue;
            }
            assert_eq!(hex::encode(&s.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
            live.push((
                hex::encode(&s.span_id),
                hex::encode(&s.parent_span_id),
                s.name.clone(),
                s.kind,
            ));
        }
    }
    live.sort();
    assert!(
        worker_ops.iter().any(|n| n == "worker.fetch"),
        "{worker_ops:?}"
    );
    assert!(
        worker_ops.iter().any(|n| n == "worker.flush"),
        "{worker_ops:?}"
    );
    // Rebuilt from the rows.
    let id = Uuid::parse_str(root.stdout.trim()).unwrap();
    let rebuilt = run(
        &mut db.pgc(),
        &["trace", &id.to_string(), "--format", "json"],
    );
    assert_eq!(rebuilt.code, 0, "{}", rebuilt.stderr);
    let doc: serde_json::Value = serde_json::from_str(&rebuilt.stdout).unwrap();
    let mut shape: Shape = doc["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let kind = match s["kind"].as_str() {
                Some("producer") => K::Producer,
                Some("consumer") => K::Consumer,
                _ => K::Internal,
            };
            (
                s["span_id"].as_str().unwrap().to_string(),
                s["parent_span_id"].as_str().unwrap_or_default().to_string(),
                s["name"].as_str().unwrap().to_string(),
                kind as i32,
            )
        })
        .collect();
    shape.sort();
    // root enqueue + attempt + step, child enqueue + two attempts
    assert_eq!(shape.len(), 6, "{shape:#?}");
    assert_eq!(live, shape, "live spans and the rebuild differ");
}

/// The worker's exports at exit wait at most the export timeout for a collector that
/// does not answer; a signal then stops them at once, and the exit code is the work's.
#[tokio::test]
async fn a_signal_stops_the_worker_s_exports_at_exit() {
    let endpoint = silent_collector();
    let db = TestDb::migrated().await;
    let out = run(db.pgc().env("OTEL_SDK_DISABLED", "true"), &["enqueue", "t"]);
    let id = Uuid::parse_str(out.ok().stdout.trim()).unwrap();
    let mut worker = db
        .pgc()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
        .env("OTEL_EXPORTER_OTLP_TIMEOUT", "120000")
        .args(["work", "--until-empty", "--", "true"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let client = db.client().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if status(&client, id).await == "completed" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never completed");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Drained, it now waits on the collector (two minutes at most). A signal that
    // arrives before the worker has left its loop stops it gracefully, and then a
    // second one stops the exports.
    let pid = nix::unistd::Pid::from_raw(i32::try_from(worker.id()).unwrap());
    let mut code = None;
    for _ in 0..2 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
        let waited = std::time::Instant::now();
        while code.is_none() && waited.elapsed() < std::time::Duration::from_secs(10) {
            code = worker.try_wait().unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        if code.is_some() {
            break;
        }
    }
    let Some(code) = code else {
        let _ = worker.kill();
        let _ = worker.wait();
        panic!("the worker did not exit after two signals");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut worker.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(code.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("telemetry: stopped by a signal"),
        "{stderr}"
    );
    // Nothing after it but pgc's own lines: no exporter thread panicking on its way out.
    assert!(stderr.lines().all(|l| l.starts_with("pgc: ")), "{stderr}");
}

#[tokio::test]
async fn a_collector_that_never_answers_costs_a_warning_not_the_work() {
    let endpoint = silent_collector();
    let db = TestDb::migrated().await;
    let silent = |cmd: &mut std::process::Command| {
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", "500");
    };
    let mut enqueue = db.pgc();
    silent(&mut enqueue);
    let out = run(&mut enqueue, &["enqueue", "t"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = Uuid::parse_str(out.stdout.trim()).unwrap();
    // A warning per signal (spans, metrics), nothing else.
    assert!(
        out.stderr.lines().all(|l| l.starts_with("pgc: warning: ")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("/v1/traces"), "{}", out.stderr);
    let mut work = db.pgc();
    silent(&mut work);
    let out = run(&mut work, &["work", "--until-empty", "--", "true"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("pgc: warning: "), "{}", out.stderr);
    assert_eq!(status(&db.client().await, id).await, "completed");
}

/// Records what the hooks are told.
#[derive(Default)]
struct Recorder {
    spans: std::sync::Mutex<Vec<(String, pgc::trace::Span)>>,
    events: std::sync::Mutex<Vec<String>>,
}

impl pgc::telemetry::Telemetry for Recorder {
    fn span(&self, trace_id: &str, span: &pgc::trace::Span) {
        self.spans
            .lock()
            .unwrap()
            .push((trace_id.to_string(), span.clone()));
    }

    fn event(&self, event: &pgc::telemetry::TelemetryEvent<'_>) {
        use pgc::telemetry::TelemetryEvent as E;
        let name = match event {
            E::Fetch { count, .. } => format!("fetch {count}"),
            E::Flush { count, .. } => format!("flush {count}"),
            E::Execution { task, status, .. } => format!("execution {task} {status}"),
            E::DbQuery { label, .. } => format!("db.query {label}"),
            _ => "other".to_string(),
        };
        self.events.lock().unwrap().push(name);
    }
}

#[tokio::test]
async fn the_in_process_worker_calls_every_hook_with_the_stored_ids() {
    use pgc::handler::{FnHandler, Job, Outcome};
    use pgc::worker::{self, Handlers, Shutdown, WorkerOptions};
    use std::sync::Arc;
    let db = TestDb::migrated().await;
    for task in ["ok", "flaky"] {
        let out = run(db.pgc().env("TRACEPARENT", CALLER), &["enqueue", task]);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let recorder = Arc::new(Recorder::default());
    let handler = FnHandler(|job: Job| async move {
        if job.task == "flaky" && job.attempt == 1 {
            Outcome::Failed("first time".into())
        } else {
            Outcome::Completed(None)
        }
    });
    let handler = Arc::new(handler);
    let handlers = Handlers::new()
        .task("ok", handler.clone())
        .task("flaky", handler);
    let opts = WorkerOptions {
        until_empty: true,
        retry_delay: std::time::Duration::from_millis(10),
        poll_interval: std::time::Duration::from_millis(100),
        telemetry: pgc::telemetry::Hooks(recorder.clone()),
        ..WorkerOptions::default()
    };
    let conn = pgc::db::ConnectOptions::resolve(Some(&db.url)).unwrap();
    let report = worker::run(&conn, opts, handlers, Shutdown::default(), Arc::new(|_| {}))
        .await
        .unwrap();
    assert_eq!(report.completed, 2);
    let events = recorder.events.lock().unwrap().clone();
    for expected in [
        "execution ok completed",
        "execution flaky failed",
        "execution flaky completed",
        "db.query claim",
        "db.query settle_claimed",
        "db.query fail",
    ] {
        assert!(
            events.iter().any(|e| e == expected),
            "{expected} in {events:?}"
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("fetch ") && e != "fetch 0"),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e.starts_with("flush ")), "{events:?}");
    // One consumer span per attempt, with the ids the rows keep.
    let spans = recorder.spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 3, "{spans:?}");
    let client = db.client().await;
    for (trace_id, span) in &spans {
        assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        let row = client
            .query_one(
                "select trace_context ->> 'traceparent', attempt_span_id
                 from pgconductor._private_executions where id = $1",
                &[&span.execution.id],
            )
            .await
            .unwrap();
        let stored: String = row.get(0);
        assert_eq!(span.parent_span_id.as_deref(), Some(&stored[36..52]));
        assert_eq!(span.links, vec![stored[36..52].to_string()]);
        if span.outcome == "completed" {
            assert_eq!(Some(span.span_id.clone()), row.get::<_, Option<String>>(1));
        } else {
            let earlier: String = client
                .query_one(
                    "select span_id from pgconductor._private_attempts where execution_id = $1",
                    &[&span.execution.id],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(span.span_id, earlier);
            assert_eq!(span.status_message.as_deref(), Some("first time"));
        }
    }
}

#[tokio::test]
async fn metrics_reach_a_real_receiver_with_the_final_export() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    let db = TestDb::migrated().await;
    let (endpoint, got) = receiver();
    let with_otel = |cmd: &mut std::process::Command| {
        // Traces and logs off: only metrics, exported once at exit (the interval is an
        // hour).
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_TRACES_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none")
            .env("OTEL_METRIC_EXPORT_INTERVAL", "3600000");
    };
    for task in ["ok", "flaky"] {
        let mut cmd = db.pgc();
        with_otel(&mut cmd);
        let out = run(&mut cmd, &["enqueue", task]);
        assert_eq!(out.code, 0, "{}", out.stderr);
    }
    let mut work = db.pgc();
    with_otel(&mut work);
    let out = run(
        &mut work,
        &[
            "work",
            "--until-empty",
            "--retry-delay",
            "10ms",
            "--handler",
            "ok=true",
            "--handler",
            r#"flaky=[ "$PGC_ATTEMPT" -ge 2 ] || exit 1"#,
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let got = got.lock().unwrap();
    assert!(
        got.iter().all(|(path, _, _)| path == "/v1/metrics"),
        "no spans were asked for"
    );
    let mut names = std::collections::BTreeSet::new();
    // The queue of each attempt's duration, with traces off (nothing kept for spans).
    let mut task_queues = Vec::new();
    for (_, _, body) in got.iter() {
        let request = ExportMetricsServiceRequest::decode(body.as_slice()).unwrap();
        for m in request
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
        {
            names.insert(m.name.clone());
            use opentelemetry_proto::tonic::metrics::v1::metric::Data;
            if let (true, Some(Data::Histogram(h))) =
                (m.name == "pgconductor.task.duration", &m.data)
            {
                for point in &h.data_points {
                    let queue = point
                        .attributes
                        .iter()
                        .find(|kv| kv.key == "messaging.destination.name")
                        .and_then(|kv| kv.value.as_ref()?.value.clone());
                    task_queues.push(queue);
                }
            }
        }
    }
    assert!(!task_queues.is_empty());
    for queue in task_queues {
        use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
        assert_eq!(queue, Some(V::StringValue("default".into())));
    }
    for expected in [
        "messaging.client.sent.messages",
        "messaging.client.consumed.messages",
        "messaging.process.duration",
        "pgconductor.worker.fetch.duration",
        "pgconductor.worker.fetch.count",
        "pgconductor.worker.flush.duration",
        "pgconductor.worker.flush.count",
        "pgconductor.task.duration",
        "pgconductor.task.attempts",
        "pgconductor.task.retry.delay",
        "pgconductor.db.query.duration",
        "pgconductor.queue.depth",
    ] {
        assert!(names.contains(expected), "{expected} in {names:?}");
    }
}

#[tokio::test]
async fn json_logs_carry_the_trace_and_span_of_their_execution() {
    let db = TestDb::migrated().await;
    // A warning of pgc's own, as JSON.
    let out = run(
        db.pgc().env("TRACEPARENT", "not-a-traceparent"),
        &[
            "--log-format",
            "json",
            "enqueue",
            "t",
            "--max-attempts",
            "1",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = Uuid::parse_str(out.stdout.trim()).unwrap();
    let warning: serde_json::Value = serde_json::from_str(out.stderr.trim()).expect("JSON");
    assert_eq!(warning["level"], "warn");
    assert!(warning["message"].as_str().unwrap().contains("TRACEPARENT"));
    // The worker's lines and the handler's passed-through stderr.
    let out = run(
        db.pgc().env("PGC_LOG_FORMAT", "json"),
        &[
            "work",
            "--until-empty",
            "--verbose",
            "--handler",
            "t=echo oops >&2; exit 1",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let (span, tp): (String, String) = {
        let row = db
            .client()
            .await
            .query_one(
                "select attempt_span_id, trace_context ->> 'traceparent'
                 from pgconductor._private_executions where id = $1",
                &[&id],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    let handler = lines
        .iter()
        .find(|l| l["source"] == "handler")
        .expect("the handler's line");
    assert_eq!(handler["message"], "oops");
    assert_eq!(handler["execution_id"], id.to_string());
    assert_eq!(handler["span_id"], span, "the attempt's span");
    assert_eq!(handler["trace_id"], &tp[3..35]);
    let failed = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("failed (attempt 1)"))
        })
        .expect("the worker's line about it");
    assert_eq!(failed["span_id"], span);
    assert_eq!(failed["execution_id"], id.to_string());
}

#[tokio::test]
async fn log_records_reach_a_real_receiver_with_their_execution_s_trace_and_span() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as V;
    let db = TestDb::migrated().await;
    let out = run(&mut db.pgc(), &["enqueue", "t", "--max-attempts", "1"]);
    let id = Uuid::parse_str(out.stdout.trim()).unwrap();
    let (endpoint, got) = receiver();
    // Logs only; OTEL_LOGS_EXPORTER unset means otlp once an endpoint is set.
    let out = run(
        db.pgc()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_TRACES_EXPORTER", "none")
            .env("OTEL_METRICS_EXPORTER", "none"),
        &["work", "--until-empty", "--handler", "t=exit 1"],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("failed (attempt 1)"), "{}", out.stderr);
    let span: String = db
        .client()
        .await
        .query_one(
            "select attempt_span_id from pgconductor._private_executions where id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    let tp = stored_traceparent(&db, id).await;
    let got = got.lock().unwrap();
    assert!(
        got.iter().all(|(path, _, _)| path == "/v1/logs"),
        "logs only"
    );
    let records: Vec<_> = got
        .iter()
        .flat_map(|(_, _, body)| {
            ExportLogsServiceRequest::decode(body.as_slice())
                .unwrap()
                .resource_logs
        })
        .flat_map(|r| r.scope_logs)
        .flat_map(|s| s.log_records)
        .collect();
    let failed = records
        .iter()
        .find(|r| {
            matches!(
                r.body.as_ref().and_then(|b| b.value.as_ref()),
                Some(V::StringValue(s)) if s.contains("failed (attempt 1)")
            )
        })
        .unwrap_or_else(|| panic!("the worker's line about the failure in {records:?}"));
    assert_eq!(hex::encode(&failed.trace_id), &tp[3..35]);
    assert_eq!(hex::encode(&failed.span_id), span, "the attempt's span");
    assert_eq!(failed.severity_text, "INFO", "as the line's level");
    assert!(
        failed
            .attributes
            .iter()
            .any(|kv| kv.key == "pgconductor.execution_id"
                && format!("{:?}", kv.value).contains(&id.to_string())),
        "{failed:?}"
    );
}

#[tokio::test]
async fn log_records_go_nowhere_with_none_and_to_stderr_with_console() {
    let db = TestDb::migrated().await;
    let (endpoint, got) = receiver();
    let enqueue = ["enqueue", "t", "--max-attempts", "1"];
    let work = ["work", "--until-empty", "--handler", "t=exit 1"];
    run(&mut db.pgc(), &enqueue).ok();
    let out = run(
        db.pgc()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_TRACES_EXPORTER", "none")
            .env("OTEL_METRICS_EXPORTER", "none")
            .env("OTEL_LOGS_EXPORTER", "none"),
        &work,
    );
    assert!(out.stderr.contains("failed (attempt 1)"), "{}", out.stderr);
    assert!(got.lock().unwrap().is_empty(), "nothing exported");

    run(&mut db.pgc(), &enqueue).ok();
    let out = run(db.pgc().env("OTEL_LOGS_EXPORTER", "console"), &work);
    let record: serde_json::Value = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .find(|v: &serde_json::Value| v["kind"] == "log")
        .unwrap_or_else(|| panic!("a log record on stderr: {}", out.stderr));
    assert_eq!(record["severity"], "INFO");
    assert!(
        record["body"]
            .as_str()
            .unwrap()
            .contains("failed (attempt 1)")
    );
    assert_eq!(record["span_id"].as_str().map(str::len), Some(16));

    // The command's last line, its error, is a record too.
    let out = crate::support::run_with_stdin(
        db.pgc().env("OTEL_LOGS_EXPORTER", "console"),
        &["enqueue", "--batch", "-"],
        b"{\"task\":\"a\"}\nnot json\n",
    );
    assert_ne!(out.code, 0, "{}", out.stderr);
    let error = out
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["kind"] == "log" && v["severity"] == "ERROR")
        .unwrap_or_else(|| panic!("the error as a log record: {}", out.stderr));
    assert!(
        error["body"].as_str().unwrap().contains("line 2"),
        "{error}"
    );
}

#[tokio::test]
async fn a_silent_span_collector_costs_neither_the_log_records_nor_more_than_its_timeout() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    // Spans go to a collector that accepts and never answers; logs to a working one.
    let silent = format!("{}/v1/traces", silent_collector());
    let (endpoint, got) = receiver();
    let db = TestDb::migrated().await;
    let started = std::time::Instant::now();
    let out = crate::support::run_with_stdin(
        db.pgc()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &silent)
            .env("OTEL_EXPORTER_OTLP_TIMEOUT", "1000")
            .env("OTEL_METRICS_EXPORTER", "none"),
        // The first row commits on its own, so its span is exported (and times out).
        &["enqueue", "--batch", "-", "--commit-every", "1"],
        b"{\"task\":\"a\"}\nnot json\n",
    );
    let took = started.elapsed();
    assert_ne!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("/v1/traces"), "{}", out.stderr);
    let got = got.lock().unwrap();
    let bodies: Vec<String> = got
        .iter()
        .filter(|(path, _, _)| path == "/v1/logs")
        .flat_map(|(_, _, body)| {
            ExportLogsServiceRequest::decode(body.as_slice())
                .unwrap()
                .resource_logs
        })
        .flat_map(|r| r.scope_logs)
        .flat_map(|s| s.log_records)
        .map(|r| format!("{:?}", r.body))
        .collect();
    assert!(
        bodies.iter().any(|b| b.contains("line 2")),
        "the error line reached the log collector: {bodies:?}"
    );
    // One export timeout, not one per signal (a generous bound for a loaded machine).
    assert!(took < std::time::Duration::from_millis(2500), "{took:?}");
}

#[tokio::test]
async fn console_metrics_go_to_stderr_as_json_lines() {
    let db = TestDb::migrated().await;
    let out = run(
        db.pgc().env("OTEL_METRICS_EXPORTER", "console"),
        &["enqueue", "t", "--queue", "mail"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    Uuid::parse_str(out.stdout.trim()).expect("stdout is the id alone");
    let lines: Vec<serde_json::Value> = out
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    let sent = lines
        .iter()
        .find(|l| l["metric"] == "messaging.client.sent.messages")
        .expect("the sent-messages counter");
    assert_eq!(sent["kind"], "sum");
    assert_eq!(sent["points"][0]["value"], 1);
    assert_eq!(
        sent["points"][0]["attributes"]["messaging.destination.name"],
        "mail"
    );
}

/// The status of execution `id`.
async fn status(client: &tokio_postgres::Client, id: Uuid) -> String {
    client
        .query_one(
            "select status from pgconductor._private_executions where id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}
