//! `pgc trace`: whole traces rebuilt from the rows, end to end with a real worker, as
//! snapshots of fixed rows, as OTLP decoded by the OTLP types, and exported to a real
//! HTTP receiver. Regenerate snapshots with
//! `PGC_UPDATE_SNAPSHOTS=1 cargo test --test integration trace`.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::Value;
use uuid::Uuid;

use crate::support::{Run, TestDb, run, write_by_hand};

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn json(out: &Run) -> Value {
    assert_eq!(out.code, 0, "pgc trace failed: {}", out.stderr);
    serde_json::from_str(&out.stdout).expect("pgc trace --format json prints JSON")
}

fn spans(doc: &Value) -> &Vec<Value> {
    doc["spans"].as_array().expect("spans")
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}"))
}

/// Compares `text` with the committed snapshot `name`, or rewrites it when
/// PGC_UPDATE_SNAPSHOTS is set.
fn snapshot(name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/integration/snapshots")
        .join(name);
    if std::env::var_os("PGC_UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, text).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == text,
        "{} differs from the output:\n{text}\n(run PGC_UPDATE_SNAPSHOTS=1 cargo test --test integration trace after checking it)",
        path.display()
    );
}

/// Replaces ids and times with stable placeholders, numbered by first appearance.
fn redact(text: &str) -> String {
    let mut names: HashMap<String, String> = HashMap::new();
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..=start]);
        rest = &rest[start + 1..];
        let Some(end) = rest.find('"') else { break };
        let s = &rest[..end];
        let redacted = if Uuid::parse_str(s).is_ok() && s.len() == 36 {
            let n = names.len();
            names
                .entry(s.to_string())
                .or_insert_with(|| format!("<uuid-{n}>"))
                .clone()
        } else if is_hex(s, 16) || is_hex(s, 32) {
            let n = names.len();
            names
                .entry(s.to_string())
                .or_insert_with(|| format!("<id-{n}>"))
                .clone()
        } else if s.len() >= 20 && s.as_bytes()[4] == b'-' && s.ends_with('Z') {
            "<time>".to_string()
        } else {
            s.to_string()
        };
        out.push_str(&redacted);
        out.push('"');
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn a_workflow_run_by_a_real_worker_is_rebuilt_as_one_whole_trace() {
    let db = TestDb::migrated().await;
    let pgc = env!("CARGO_BIN_EXE_pgc");
    // The root runs a step and enqueues two children; smoke-test fails once.
    let root = run(
        db.pgc().env("TRACEPARENT", CALLER),
        &["enqueue", "deploy", "--queue", "ci"],
    );
    let root_id = Uuid::parse_str(root.ok().stdout.trim()).unwrap();
    let deploy = format!(
        "deploy={pgc} step build -- echo built >/dev/null && {pgc} enqueue smoke-test --queue builds >/dev/null && {pgc} enqueue notify --queue builds >/dev/null"
    );
    let out = run(
        &mut db.pgc(),
        &[
            "work",
            "--queue",
            "ci",
            "--queue",
            "builds",
            "--until-empty",
            "--retry-delay",
            "10ms",
            "--poll-interval",
            "100ms",
            "--handler",
            &deploy,
            "--handler",
            r#"smoke-test=[ "$PGC_ATTEMPT" -ge 2 ] || { echo "connection refused: staging:443" >&2; exit 1; }"#,
            "--handler",
            "notify=true",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let client = db.client().await;
    let ids: HashMap<String, (Uuid, String, Option<String>)> = client
        .query(
            "select task_key, id, trace_context ->> 'traceparent', attempt_span_id
             from pgconductor._private_executions",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    let smoke = ids["smoke-test"].0;
    let producer = |task: &str| ids[task].1[36..52].to_string();
    let first_attempt: String = client
        .query_one(
            "select span_id from pgconductor._private_attempts where execution_id = $1",
            &[&smoke],
        )
        .await
        .unwrap()
        .get(0);

    let json_run = run(
        &mut db.pgc(),
        &["trace", &smoke.to_string(), "--format", "json"],
    );
    let doc = json(&json_run);
    assert_eq!(doc["trace_id"], TRACE);
    assert_eq!(doc["requested_execution_id"], smoke.to_string());
    assert_eq!(doc["status"], "completed");
    assert_eq!(doc["executions"], 3);
    assert_eq!(doc["remote_parents"], serde_json::json!([CALLER_SPAN]));
    let spans = spans(&doc);
    let by_id: HashMap<&str, &Value> = spans.iter().map(|s| (str_of(s, "span_id"), s)).collect();
    assert_eq!(by_id.len(), spans.len(), "span ids are unique");
    assert_eq!(spans.len(), 8, "{doc:#}");
    for s in spans {
        assert!(is_hex(str_of(s, "span_id"), 16), "{s}");
        assert!(chrono::DateTime::parse_from_rfc3339(str_of(s, "start_time")).is_ok());
        assert!(chrono::DateTime::parse_from_rfc3339(str_of(s, "end_time")).is_ok());
        // Every parent is a span of the trace, except the caller's span (remote).
        let parent = str_of(s, "parent_span_id");
        assert!(by_id.contains_key(parent) || parent == CALLER_SPAN, "{s}");
    }
    let find = |name: &str, task: &str| -> Vec<&Value> {
        spans
            .iter()
            .filter(|s| s["name"] == name && s["task"] == task)
            .collect()
    };
    // The root's enqueue continues the caller's span; its attempt is the span the
    // handler got, and everything the handler did hangs under it.
    let root_producer = find("conductor.invoke", "deploy");
    assert_eq!(root_producer.len(), 1);
    assert_eq!(root_producer[0]["span_id"], producer("deploy"));
    assert_eq!(root_producer[0]["parent_span_id"], CALLER_SPAN);
    assert_eq!(root_producer[0]["kind"], "producer");
    assert_eq!(root_producer[0]["execution_id"], root_id.to_string());
    let root_attempt = find("task:deploy", "deploy");
    assert_eq!(root_attempt.len(), 1);
    let attempt_span = ids["deploy"].2.clone().unwrap();
    assert_eq!(root_attempt[0]["span_id"], attempt_span);
    assert_eq!(root_attempt[0]["parent_span_id"], producer("deploy"));
    assert_eq!(root_attempt[0]["kind"], "consumer");
    assert_eq!(root_attempt[0]["status"], "ok");
    assert_eq!(root_attempt[0]["links"][0]["span_id"], producer("deploy"));
    let step = find("task.step:build", "deploy");
    assert_eq!(step.len(), 1);
    assert_eq!(step[0]["parent_span_id"], attempt_span);
    assert_eq!(step[0]["kind"], "internal");
    assert_eq!(step[0]["status"], "ok");
    for child in ["smoke-test", "notify"] {
        let p = find("conductor.invoke", child);
        assert_eq!(p.len(), 1, "{child}");
        assert_eq!(p[0]["span_id"], producer(child));
        assert_eq!(p[0]["parent_span_id"], attempt_span, "{child}");
        assert_eq!(
            p[0]["attributes"]["pgconductor.parent_execution_id"],
            root_id.to_string()
        );
        assert_eq!(p[0]["attributes"]["messaging.operation.type"], "send");
        assert_eq!(p[0]["attributes"]["messaging.destination.name"], "builds");
    }
    // Both attempts of smoke-test, the failed one with its error.
    let attempts = find("task:smoke-test", "smoke-test");
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["attempt"], 1);
    assert_eq!(attempts[0]["span_id"], first_attempt);
    assert_eq!(attempts[0]["status"], "error");
    assert!(
        str_of(attempts[0], "status_message").contains("connection refused: staging:443"),
        "{}",
        attempts[0]
    );
    assert_eq!(attempts[1]["attempt"], 2);
    assert_eq!(attempts[1]["status"], "ok");
    assert_eq!(attempts[1]["span_id"], ids["smoke-test"].2.clone().unwrap());
    for a in &attempts {
        assert_eq!(a["parent_span_id"], producer("smoke-test"));
        assert_eq!(
            a["attributes"]["pgconductor.execution_id"],
            smoke.to_string()
        );
        assert_eq!(a["attributes"]["messaging.operation.type"], "process");
        assert_eq!(a["attributes"]["messaging.message.id"], smoke.to_string());
    }
    snapshot("e2e.json", &redact(&json_run.stdout));

    // The same trace from its id, and as a table: the tree and the error.
    let by_trace = json(&run(
        &mut db.pgc(),
        &["trace", "--trace-id", TRACE, "--format", "json"],
    ));
    assert_eq!(by_trace["spans"].as_array().map(Vec::len), Some(8));
    assert_eq!(by_trace["requested_execution_id"], Value::Null);
    let table = run(&mut db.pgc(), &["trace", &smoke.to_string()]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table.stdout.contains(&format!("trace   {TRACE}")),
        "{}",
        table.stdout
    );
    assert!(
        table
            .stdout
            .contains(&format!("remote parent {CALLER_SPAN}"))
    );
    assert!(
        table
            .stdout
            .contains("error: exit status 1: connection refused: staging:443")
    );
    assert!(
        table.stdout.is_ascii(),
        "plain characters when stdout is not a terminal"
    );
    // The requested execution's rows are marked.
    let marked: Vec<&str> = table
        .stdout
        .lines()
        .filter(|l| l.starts_with('>'))
        .collect();
    assert_eq!(marked.len(), 3, "{}", table.stdout);
    assert!(marked.iter().all(|l| l.contains("smoke-test")));
}

/// Rows of a finished workflow with fixed ids and times: a remote caller, a root with a
/// step, a child that failed then succeeded, and a child released once whose last
/// attempt failed for good.
const FIXTURE: &str = r#"
insert into pgconductor._private_executions
    (id, queue, task_key, status, attempts, max_attempts, parent_execution_id, trace_context,
     parent_span_id, created_at, started_at, attempt_span_id, finished_at, last_error, run_at)
values
('01900000-0000-7000-8000-000000000001', 'ci', 'deploy', 'completed', 1, 3, null,
 '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-a000000000000001-01"}', '00f067aa0ba902b7',
 '2026-01-01 10:00:00+00', '2026-01-01 10:00:00.1+00', 'b000000000000001', '2026-01-01 10:00:02+00', null,
 '2026-01-01 10:00:00+00'),
('01900000-0000-7000-8000-000000000002', 'builds', 'smoke-test', 'completed', 2, 3,
 '01900000-0000-7000-8000-000000000001',
 '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-a000000000000002-01"}', 'b000000000000001',
 '2026-01-01 10:00:01.1+00', '2026-01-01 10:00:01.5+00', 'b000000000000003', '2026-01-01 10:00:01.9+00',
 'exit status 1: connection refused', '2026-01-01 10:00:01.1+00'),
('01900000-0000-7000-8000-000000000003', 'builds', 'notify', 'failed', 1, 1,
 '01900000-0000-7000-8000-000000000001',
 '{"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-a000000000000003-01"}', 'b000000000000001',
 '2026-01-01 10:00:01.2+00', '2026-01-01 10:00:01.45+00', 'b000000000000005', '2026-01-01 10:00:01.8+00',
 'exit status 3: boom
second line', '2026-01-01 10:00:01.2+00');
insert into pgconductor._private_attempts
    (execution_id, attempt, span_id, started_at, finished_at, outcome, error)
values
('01900000-0000-7000-8000-000000000002', 1, 'b000000000000002', '2026-01-01 10:00:01.2+00',
 '2026-01-01 10:00:01.3+00', 'failed', 'exit status 1: connection refused'),
('01900000-0000-7000-8000-000000000003', 1, 'b000000000000004', '2026-01-01 10:00:01.25+00',
 '2026-01-01 10:00:01.4+00', 'released', 'worker shutting down');
insert into pgconductor._private_steps
    (execution_id, attempt, name, span_id, status, output, exit_code, started_at, finished_at)
values
('01900000-0000-7000-8000-000000000001', 1, 'build', 'c000000000000001', 'completed', 'ok', 0,
 '2026-01-01 10:00:00.2+00', '2026-01-01 10:00:01+00');
"#;

#[tokio::test]
async fn snapshots_of_a_fixed_trace_as_table_and_json() {
    let db = TestDb::migrated().await;
    write_by_hand(&db.client().await, FIXTURE).await.unwrap();
    let id = "01900000-0000-7000-8000-000000000002";
    let table = run(db.pgc().env("COLUMNS", "110"), &["trace", id]);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert_eq!(table.stderr, "");
    snapshot("fixture.table.txt", &table.stdout);
    let json_run = run(&mut db.pgc(), &["trace", id, "--format", "json"]);
    let doc = json(&json_run);
    snapshot("fixture.json", &json_run.stdout);
    // The released attempt and the final failure share attempt number 1; both show.
    let notify: Vec<&Value> = spans(&doc)
        .iter()
        .filter(|s| s["name"] == "task:notify")
        .collect();
    assert_eq!(notify.len(), 2);
    assert_eq!(notify[0]["outcome"], "released");
    assert_eq!(notify[0]["status"], "unset");
    assert_eq!(notify[1]["outcome"], "failed");
    assert_eq!(notify[1]["status"], "error");
    assert_eq!(doc["status"], "failed");
}

#[tokio::test]
async fn otlp_json_decodes_as_an_export_request_with_the_stored_ids() {
    let db = TestDb::migrated().await;
    write_by_hand(&db.client().await, FIXTURE).await.unwrap();
    let out = run(
        db.pgc().env("OTEL_SERVICE_NAME", "ci-pipeline").env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "service.name=ignored,team=platform%20ops",
        ),
        &[
            "trace",
            "01900000-0000-7000-8000-000000000001",
            "--format",
            "otlp-json",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.lines().count(), 1, "one line");
    let request: ExportTraceServiceRequest =
        serde_json::from_str(&out.stdout).expect("an OTLP/JSON ExportTraceServiceRequest");
    check_export_request(&request, "ci-pipeline");
    let resource = request.resource_spans[0].resource.as_ref().unwrap();
    let team = resource
        .attributes
        .iter()
        .find(|kv| kv.key == "team")
        .unwrap();
    assert_eq!(
        format!("{:?}", team.value),
        format!("{:?}", string_value("platform ops"))
    );
}

fn string_value(s: &str) -> Option<opentelemetry_proto::tonic::common::v1::AnyValue> {
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(s.to_string())),
    })
}

/// The fixture's spans, checked through the decoded OTLP types.
fn check_export_request(request: &ExportTraceServiceRequest, service: &str) {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    assert_eq!(request.resource_spans.len(), 1);
    let rs = &request.resource_spans[0];
    let name = rs
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|kv| kv.key == "service.name")
        .unwrap();
    assert_eq!(
        format!("{:?}", name.value),
        format!("{:?}", string_value(service))
    );
    let spans: Vec<_> = rs.scope_spans.iter().flat_map(|s| &s.spans).collect();
    assert_eq!(spans.len(), 9);
    assert_eq!(rs.scope_spans[0].scope.as_ref().unwrap().name, "pgc");
    let ids: HashSet<String> = spans.iter().map(|s| hex::encode(&s.span_id)).collect();
    for s in &spans {
        assert_eq!(hex::encode(&s.trace_id), TRACE);
        assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
        assert!(s.start_time_unix_nano > 1_700_000_000_000_000_000);
        let parent = hex::encode(&s.parent_span_id);
        assert!(ids.contains(&parent) || parent == CALLER_SPAN, "{parent}");
    }
    let span = |id: &str| {
        spans
            .iter()
            .find(|s| hex::encode(&s.span_id) == id)
            .unwrap_or_else(|| panic!("span {id}"))
    };
    let root = span("a000000000000001");
    assert_eq!(root.kind, SpanKind::Producer as i32);
    assert_eq!(hex::encode(&root.parent_span_id), CALLER_SPAN);
    assert_eq!(root.name, "conductor.invoke");
    assert_eq!(
        root.flags & 0x300,
        0x300,
        "the caller's span is a remote parent"
    );
    let failed = span("b000000000000002");
    assert_eq!(failed.kind, SpanKind::Consumer as i32);
    assert_eq!(failed.name, "task:smoke-test");
    assert_eq!(hex::encode(&failed.parent_span_id), "a000000000000002");
    let status = failed.status.as_ref().unwrap();
    assert_eq!(status.code, StatusCode::Error as i32);
    assert_eq!(status.message, "exit status 1: connection refused");
    assert_eq!(hex::encode(&failed.links[0].span_id), "a000000000000002");
    let attempt = failed
        .attributes
        .iter()
        .find(|kv| kv.key == "pgconductor.attempt")
        .unwrap();
    assert_eq!(
        format!("{:?}", attempt.value),
        format!(
            "{:?}",
            Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(1))
            })
        )
    );
    let ok = span("b000000000000003");
    assert_eq!(ok.status.as_ref().unwrap().code, StatusCode::Ok as i32);
    let step = span("c000000000000001");
    assert_eq!(step.kind, SpanKind::Internal as i32);
    assert_eq!(hex::encode(&step.parent_span_id), "b000000000000001");
    assert_eq!(
        step.end_time_unix_nano - step.start_time_unix_nano,
        800_000_000
    );
}

/// Requests a receiver got: path, content type, body.
pub(crate) type Received = Arc<Mutex<Vec<(String, String, Vec<u8>)>>>;

/// A loopback OTLP/HTTP receiver: answers every POST with 200 and keeps the bodies.
pub(crate) fn receiver() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let got: Received = Arc::default();
    let store = Arc::clone(&got);
    std::thread::spawn(move || {
        // A thread per connection: clients keep theirs open, as with a real collector.
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let store = Arc::clone(&store);
            std::thread::spawn(move || serve(stream, &store));
        }
    });
    (addr, got)
}

/// The same receiver behind TLS, with a certificate for `localhost` made for it; also
/// returns the certificate's PEM file, to trust it.
fn tls_receiver() -> (String, Received, std::path::PathBuf) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = std::env::temp_dir().join(format!("pgc-otlp-{}.pem", Uuid::new_v4()));
    std::fs::write(&pem, key.cert.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![key.cert.der().clone()],
        rustls::pki_types::PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()).into(),
    )
    .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    let got: Received = Arc::default();
    let store = Arc::clone(&got);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Ok(conn) = rustls::ServerConnection::new(Arc::clone(&config)) else {
                continue;
            };
            serve(rustls::StreamOwned::new(conn, stream), &store);
        }
    });
    (addr, got, pem)
}

/// Reads HTTP/1.1 requests from one connection, keeps them and answers 200.
fn serve<S: Read + Write>(stream: S, store: &Received) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        let mut content_type = String::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if let Some(v) = lower.strip_prefix("content-type:") {
                content_type = v.trim().to_string();
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string();
        store.lock().unwrap().push((path, content_type, body));
        let out = reader.get_mut();
        let _ = out.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        );
        let _ = out.flush();
    }
}

#[tokio::test]
async fn export_otlp_over_https_checks_the_certificate() {
    use prost::Message;
    let db = TestDb::migrated().await;
    write_by_hand(&db.client().await, FIXTURE).await.unwrap();
    let (endpoint, got, pem) = tls_receiver();
    let id = "01900000-0000-7000-8000-000000000003";
    // Not trusted: a one-line error, nothing sent.
    let out = run(
        db.pgc().env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        &["trace", id, "--export", "otlp"],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(got.lock().unwrap().is_empty());
    // Trusted through OTEL_EXPORTER_OTLP_CERTIFICATE: delivered.
    let out = run(
        db.pgc()
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &pem),
        &["trace", id, "--export", "otlp"],
    );
    let _ = std::fs::remove_file(&pem);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 1);
    let request = ExportTraceServiceRequest::decode(got[0].2.as_slice()).expect("protobuf body");
    check_export_request(&request, "pgc");
}

#[tokio::test]
async fn export_otlp_delivers_the_spans_to_a_real_http_receiver() {
    use prost::Message;
    let db = TestDb::migrated().await;
    write_by_hand(&db.client().await, FIXTURE).await.unwrap();
    let (endpoint, got) = receiver();
    let out = run(
        db.pgc().env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        &[
            "trace",
            "01900000-0000-7000-8000-000000000003",
            "--export",
            "otlp",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "", "with --export alone, stdout stays empty");
    assert!(out.stderr.contains("sent 9 spans"), "{}", out.stderr);
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 1, "one request");
    let (path, content_type, body) = &got[0];
    assert_eq!(path, "/v1/traces");
    assert_eq!(content_type, "application/x-protobuf");
    let request = ExportTraceServiceRequest::decode(body.as_slice()).expect("protobuf body");
    check_export_request(&request, "pgc");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_one_line_error() {
    let db = TestDb::migrated().await;
    write_by_hand(&db.client().await, FIXTURE).await.unwrap();
    let out = run(
        db.pgc().env(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:1/v1/traces",
        ),
        &[
            "trace",
            "01900000-0000-7000-8000-000000000003",
            "--export",
            "otlp",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("http://127.0.0.1:1/v1/traces"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

#[tokio::test]
async fn the_stdout_exporter_prints_every_span() {
    let db = TestDb::migrated().await;
    write_by_hand(&db.client().await, FIXTURE).await.unwrap();
    let out = run(
        &mut db.pgc(),
        &[
            "trace",
            "01900000-0000-7000-8000-000000000001",
            "--format",
            "stdout",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.matches("Span #").count(), 9, "{}", out.stdout);
    assert!(
        out.stdout.contains("service.name=String(Owned(\"pgc\"))"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("b000000000000002"));
}

#[tokio::test]
async fn running_and_pending_executions_show_with_their_time_so_far() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    write_by_hand(
        &client,
        r#"
insert into pgconductor._private_executions
    (id, queue, task_key, status, attempts, trace_context, parent_span_id, created_at,
     started_at, attempt_span_id, locked_by, locked_until, run_at)
values
('01900000-0000-7000-8000-000000000011', 'q', 'slow', 'running', 1,
 '{"traceparent": "00-5bf92f3577b34da6a3ce929d0e0e4736-a000000000000011-01"}', null,
 now() - interval '5 s', now() - interval '4 s', 'b000000000000011', gen_random_uuid(),
 now() + interval '1 min', now() - interval '5 s'),
('01900000-0000-7000-8000-000000000012', 'q', 'later', 'pending', 0,
 '{"traceparent": "00-5bf92f3577b34da6a3ce929d0e0e4736-a000000000000012-01"}', 'b000000000000011',
 now() - interval '3 s', null, null, null, null, now() + interval '1 hour');
"#,
    )
    .await
    .unwrap();
    let doc = json(&run(
        &mut db.pgc(),
        &[
            "trace",
            "01900000-0000-7000-8000-000000000012",
            "--format",
            "json",
        ],
    ));
    assert_eq!(doc["status"], "running");
    let s = spans(&doc);
    let running = s
        .iter()
        .find(|s| s["span_id"] == "b000000000000011")
        .unwrap();
    assert_eq!(running["end_time"], Value::Null);
    assert_eq!(running["in_progress"], true);
    assert_eq!(running["status"], "unset");
    assert_eq!(running["outcome"], "running");
    let pending = s
        .iter()
        .find(|s| s["span_id"] == "a000000000000012")
        .unwrap();
    assert_eq!(pending["outcome"], "pending");
    assert_eq!(pending["parent_span_id"], "b000000000000011");
    assert!(pending["waiting_since"].is_string());
    assert_eq!(
        s[0]["parent_span_id"],
        Value::Null,
        "a true root has a null parent"
    );
    let table = run(
        &mut db.pgc(),
        &["trace", "01900000-0000-7000-8000-000000000011"],
    );
    assert_eq!(table.code, 0, "{}", table.stderr);
    let row = |needle: &str| {
        table
            .stdout
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in {}", table.stdout))
            .to_string()
    };
    // Time so far: about 4 s running, 3 s waiting, marked as unfinished.
    assert!(row("task:slow").contains(" run "), "{}", table.stdout);
    assert!(row("task:slow").contains("s.."), "{}", table.stdout);
    assert!(row("later").contains(" wait "), "{}", table.stdout);
    assert!(row("later").contains("s.."), "{}", table.stdout);
    assert!(table.stdout.is_ascii(), "{}", table.stdout);
}

#[tokio::test]
async fn bad_ids_missing_rows_and_malformed_context() {
    let db = TestDb::migrated().await;
    let out = run(&mut db.pgc(), &["trace", "not-a-uuid"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("not an execution id"), "{}", out.stderr);
    let out = run(&mut db.pgc(), &["trace", "--trace-id", "xyz"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let out = run(&mut db.pgc(), &["trace", "--trace-id", &"0".repeat(32)]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    let missing = "01900000-0000-7000-8000-0000000000ff";
    let out = run(&mut db.pgc(), &["trace", missing]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        format!("pgc: error: no execution with id {missing}\n")
    );
    let out = run(&mut db.pgc(), &["trace", "--trace-id", TRACE]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr,
        format!("pgc: error: no execution in trace {TRACE}\n")
    );

    // A row whose stored context is malformed: its own root, with a warning.
    let client = db.client().await;
    write_by_hand(
            &client,
            r#"
insert into pgconductor._private_executions (id, queue, task_key, trace_context, parent_span_id)
values ('01900000-0000-7000-8000-000000000021', 'q', 'odd', '{"traceparent": "00-XYZ"}', 'b000000000000011'),
       ('01900000-0000-7000-8000-000000000022', 'q', 'bare', null, null),
       ('01900000-0000-7000-8000-000000000023', 'q', 'inside',
        '{"traceparent": "00-6bf92f3577b34da6a3ce929d0e0e4736-zz00000000000023-01"}', null),
       ('01900000-0000-7000-8000-000000000024', 'q', 'fine',
        '{"traceparent": "00-6bf92f3577b34da6a3ce929d0e0e4736-a000000000000024-01"}', null);
"#,
        )
        .await
        .unwrap();
    for (id, trace_id) in [
        (
            "01900000-0000-7000-8000-000000000021",
            "01900000000070008000000000000021",
        ),
        (
            "01900000-0000-7000-8000-000000000022",
            "01900000000070008000000000000022",
        ),
    ] {
        let out = run(&mut db.pgc(), &["trace", id, "--format", "json"]);
        let doc = json(&out);
        assert_eq!(doc["trace_id"], trace_id);
        let s = spans(&doc);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0]["parent_span_id"], Value::Null);
        assert!(
            out.stderr.starts_with("pgc: warning: execution"),
            "{}",
            out.stderr
        );
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert_eq!(doc["warnings"].as_array().unwrap().len(), 1);
    }
    // A malformed row found inside a trace is a root of that trace, with a warning.
    let out = run(
        &mut db.pgc(),
        &[
            "trace",
            "01900000-0000-7000-8000-000000000024",
            "--format",
            "json",
        ],
    );
    let doc = json(&out);
    assert_eq!(spans(&doc).len(), 2);
    assert!(
        out.stderr.contains("01900000-0000-7000-8000-000000000023"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_closed_stdout_is_not_an_error() {
    let db = TestDb::migrated().await;
    // Enough spans that the output outgrows the pipe buffer.
    write_by_hand(
            &db.client().await,
            r#"
insert into pgconductor._private_executions (id, queue, task_key, trace_context, parent_span_id)
select gen_random_uuid(), 'q', 'fan-out',
       jsonb_build_object('traceparent', '00-7bf92f3577b34da6a3ce929d0e0e4736-' || lpad(to_hex(i), 16, '0') || '-01'),
       'b000000000000099'
from generate_series(1, 3000) i;
"#,
        )
        .await
        .unwrap();
    for format in ["table", "json", "otlp-json", "stdout"] {
        let mut child = db
            .pgc()
            .args([
                "trace",
                "--trace-id",
                "7bf92f3577b34da6a3ce929d0e0e4736",
                "--format",
                format,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 1];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut first)
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{format}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{format}");
    }
}

#[tokio::test]
async fn steps_hang_under_their_own_attempt_and_stored_ids_are_checked() {
    let db = TestDb::migrated().await;
    write_by_hand(
        &db.client().await,
        r#"
insert into pgconductor._private_executions
    (id, queue, task_key, status, attempts, max_attempts, trace_context, parent_span_id,
     created_at, started_at, attempt_span_id, finished_at, last_error)
values
-- Released once (attempt 1), then attempt 1 again ran three steps and timed out for good.
('01900000-0000-7000-8000-000000000031', 'q', 'build', 'failed', 1, 1,
 '{"traceparent": "00-8bf92f3577b34da6a3ce929d0e0e4736-a000000000000031-00"}', null,
 '2026-01-01 10:00:00+00', '2026-01-01 10:00:02+00', 'b000000000000032', '2026-01-01 10:00:09+00',
 'timed out after 5s'),
-- Lost its lease on its last attempt; its attempt span id is not hex.
('01900000-0000-7000-8000-000000000033', 'q', 'lost', 'failed', 1, 1,
 '{"traceparent": "00-8bf92f3577b34da6a3ce929d0e0e4736-a000000000000033-00"}', 'NOT-A-SPAN-ID-16',
 '2026-01-01 10:00:00+00', '2026-01-01 10:00:01+00', 'B00000000000003Ä', '2026-01-01 10:01:00+00',
 'lease expired: worker 01900000-0000-7000-8000-0000000000aa stopped renewing it');
insert into pgconductor._private_attempts
    (execution_id, attempt, span_id, started_at, finished_at, outcome, error)
values ('01900000-0000-7000-8000-000000000031', 1, 'b000000000000031', '2026-01-01 10:00:00.5+00',
        '2026-01-01 10:00:01+00', 'released', 'stopped by the worker (shutdown)');
insert into pgconductor._private_steps
    (execution_id, attempt, name, span_id, status, output, exit_code, started_at, finished_at)
values
('01900000-0000-7000-8000-000000000031', 1, 'fetch', 'c000000000000031', 'completed', '', 0,
 '2026-01-01 10:00:02.1+00', '2026-01-01 10:00:03+00'),
('01900000-0000-7000-8000-000000000031', 1, 'compile', 'c000000000000032', 'completed', '', 0,
 '2026-01-01 10:00:03.1+00', '2026-01-01 10:00:04+00'),
('01900000-0000-7000-8000-000000000031', 1, 'test', 'c000000000000033', 'failed', null, 2,
 '2026-01-01 10:00:04.1+00', '2026-01-01 10:00:05+00');
"#,
    )
    .await
    .unwrap();
    let out = run(
        &mut db.pgc(),
        &[
            "trace",
            "01900000-0000-7000-8000-000000000031",
            "--format",
            "json",
        ],
    );
    let doc = json(&out);
    let by_id = |id: &str| {
        spans(&doc)
            .iter()
            .find(|s| s["span_id"] == id)
            .unwrap_or_else(|| panic!("span {id} in {doc:#}"))
            .clone()
    };
    // Every step under the attempt that ran it, not under the released one or each other.
    for step in ["c000000000000031", "c000000000000032", "c000000000000033"] {
        assert_eq!(by_id(step)["parent_span_id"], "b000000000000032", "{step}");
    }
    assert_eq!(by_id("c000000000000033")["status"], "error");
    assert_eq!(
        by_id("c000000000000033")["attributes"]["pgconductor.step.exit_code"],
        2
    );
    assert_eq!(by_id("b000000000000031")["outcome"], "released");
    assert_eq!(by_id("b000000000000032")["outcome"], "timed_out");
    assert_eq!(
        by_id("b000000000000032")["attributes"]["error.type"],
        "timed_out"
    );
    // The unusable stored ids: replaced by stand-ins, with warnings; the enqueue with a
    // malformed parent becomes a root.
    let lost: Vec<&Value> = spans(&doc)
        .iter()
        .filter(|s| s["execution_id"] == "01900000-0000-7000-8000-000000000033")
        .collect();
    assert_eq!(lost.len(), 2);
    assert_eq!(lost[0]["parent_span_id"], Value::Null);
    assert_eq!(lost[1]["outcome"], "lost");
    assert!(is_hex(str_of(lost[1], "span_id"), 16), "{}", lost[1]);
    assert_eq!(out.stderr.lines().count(), 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("\"NOT-A-SPAN-ID-16\""),
        "{}",
        out.stderr
    );
    // The OTLP form still decodes, and carries the stored flags (00: not sampled).
    let out = run(
        &mut db.pgc(),
        &[
            "trace",
            "01900000-0000-7000-8000-000000000031",
            "--format",
            "otlp-json",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let request: ExportTraceServiceRequest = serde_json::from_str(&out.stdout).unwrap();
    let all: Vec<_> = request.resource_spans[0].scope_spans[0]
        .spans
        .iter()
        .collect();
    assert_eq!(all.len(), 8);
    assert!(
        all.iter()
            .all(|s| s.span_id.len() == 8 && s.flags & 0xff == 0)
    );
}

#[tokio::test]
async fn the_plain_table_fits_a_narrow_terminal() {
    let db = TestDb::migrated().await;
    write_by_hand(&db.client().await, FIXTURE).await.unwrap();
    let out = run(
        db.pgc().env("COLUMNS", "72"),
        &["trace", "01900000-0000-7000-8000-000000000002"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    for line in out.stdout.lines() {
        assert!(line.chars().count() <= 72, "{line:?} is wider than 72");
        assert!(line.is_ascii(), "{line:?}");
    }
    assert!(out.stdout.contains("~"), "names were cut: {}", out.stdout);
}
