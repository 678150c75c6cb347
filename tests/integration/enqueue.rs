//! `pgc enqueue TASK`: the stored row, its trace context, dedupe, NOTIFY, bad input.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

use crate::support::{TestDb, run, run_with_stdin};

const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

struct Stored {
    queue: String,
    task: String,
    payload: Value,
    priority: i32,
    max_attempts: i32,
    status: String,
    trace_context: Value,
    parent_span_id: Option<String>,
    parent_execution_id: Option<Uuid>,
    run_at_offset_s: f64,
    dedupe_key: Option<String>,
}

async fn stored(db: &TestDb, id: &str) -> Stored {
    let id = Uuid::parse_str(id.trim()).unwrap_or_else(|e| panic!("{id:?} is not an id: {e}"));
    let row = db
        .client()
        .await
        .query_one(
            "select queue, task_key, payload, priority, max_attempts, status,
                    coalesce(trace_context, 'null'),
                    parent_span_id, parent_execution_id,
                    extract(epoch from run_at - created_at)::float8, dedupe_key
             from pgconductor._private_executions where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    Stored {
        queue: row.get(0),
        task: row.get(1),
        payload: row.get(2),
        priority: row.get(3),
        max_attempts: row.get(4),
        status: row.get(5),
        trace_context: row.get(6),
        parent_span_id: row.get(7),
        parent_execution_id: row.get(8),
        run_at_offset_s: row.get(9),
        dedupe_key: row.get(10),
    }
}

async fn count(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("select count(*) from pgconductor._private_executions", &[])
        .await
        .unwrap()
        .get(0)
}

fn parts(tp: &Value) -> Vec<String> {
    tp.as_str()
        .unwrap()
        .split('-')
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn prints_the_new_id_alone_and_stores_the_row() {
    let db = TestDb::migrated().await;
    let out = run(
        &mut db.pgc(),
        &[
            "enqueue",
            "build-report",
            "--queue",
            "reports",
            "--payload",
            r#"{"week": 47}"#,
            "--priority",
            "-3",
            "--max-attempts",
            "5",
        ],
    );
    out.ok();
    assert_eq!(out.stderr, "");
    assert_eq!(out.stdout.lines().count(), 1);
    let id = out.stdout.trim_end_matches('\n');
    let uuid = Uuid::parse_str(id).unwrap();
    assert_eq!(uuid.get_version_num(), 7);
    let row = stored(&db, id).await;
    assert_eq!(row.queue, "reports");
    assert_eq!(row.task, "build-report");
    assert_eq!(row.payload, serde_json::json!({"week": 47}));
    assert_eq!(row.priority, -3);
    assert_eq!(row.max_attempts, 5);
    assert_eq!(row.status, "pending");
    assert!(row.run_at_offset_s.abs() < 1e-6);
}

#[tokio::test]
async fn defaults_are_queue_default_empty_payload_three_attempts() {
    let db = TestDb::migrated().await;
    let out = run(&mut db.pgc(), &["enqueue", "t"]);
    out.ok();
    let row = stored(&db, &out.stdout).await;
    assert_eq!(row.queue, "default");
    assert_eq!(row.payload, serde_json::json!({}));
    assert_eq!(row.max_attempts, 3);
    assert_eq!(row.priority, 0);
    // The column default agrees with the CLI default.
    let client = db.client().await;
    let id: Uuid = client
        .query_one(
            "insert into pgconductor._private_executions (id, queue, task_key) values (gen_random_uuid(), 'q', 't') returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let row = stored(&db, &id.to_string()).await;
    assert_eq!(row.max_attempts, pgc::enqueue::DEFAULT_MAX_ATTEMPTS);
}

#[tokio::test]
async fn json_output_has_id_queue_task_and_traceparent() {
    let db = TestDb::migrated().await;
    let out = run(&mut db.pgc(), &["enqueue", "t", "-q", "q1", "--json"]);
    out.ok();
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    let row = stored(&db, doc["id"].as_str().unwrap()).await;
    assert_eq!(doc["queue"], "q1");
    assert_eq!(doc["task"], "t");
    assert_eq!(doc["traceparent"], row.trace_context["traceparent"]);
    assert_eq!(doc["deduplicated"], false);
}

#[tokio::test]
async fn traceparent_from_the_environment_joins_the_callers_trace_with_a_new_span() {
    let db = TestDb::migrated().await;
    let out = run(
        db.pgc()
            .env("TRACEPARENT", CALLER)
            .env("TRACESTATE", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        &["enqueue", "t"],
    );
    out.ok();
    let row = stored(&db, &out.stdout).await;
    let tp = parts(&row.trace_context["traceparent"]);
    assert_eq!(tp[0], "00");
    assert_eq!(tp[1], "0af7651916cd43dd8448eb211c80319c", "same trace id");
    assert_ne!(tp[2], "b7ad6b7169203331", "a new producer span");
    assert_ne!(tp[2], "0000000000000000");
    assert_eq!(tp[3], "01", "flags carried");
    assert_eq!(row.parent_span_id.as_deref(), Some("b7ad6b7169203331"));
    assert_eq!(
        row.trace_context["tracestate"],
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    );
    assert_eq!(row.trace_context.as_object().unwrap().len(), 2);
}

#[tokio::test]
async fn unsampled_flags_are_carried() {
    let db = TestDb::migrated().await;
    let out = run(
        db.pgc().env(
            "TRACEPARENT",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
        ),
        &["enqueue", "t"],
    );
    out.ok();
    let tp = parts(&stored(&db, &out.stdout).await.trace_context["traceparent"]);
    assert_eq!(tp[3], "00");
}

#[tokio::test]
async fn flags_win_over_the_environment() {
    let db = TestDb::migrated().await;
    let out = run(
        db.pgc()
            .env("TRACEPARENT", CALLER)
            .env("TRACESTATE", "env=1"),
        &[
            "enqueue",
            "t",
            "--traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ],
    );
    out.ok();
    let row = stored(&db, &out.stdout).await;
    assert_eq!(
        parts(&row.trace_context["traceparent"])[1],
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(row.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    // The environment's tracestate belongs to the environment's traceparent.
    assert!(row.trace_context.get("tracestate").is_none());
}

#[tokio::test]
async fn no_trace_context_starts_a_new_trace_without_tracestate() {
    let db = TestDb::migrated().await;
    let a = run(&mut db.pgc(), &["enqueue", "t"]);
    let b = run(&mut db.pgc(), &["enqueue", "t"]);
    let a = stored(&db, &a.ok().stdout).await;
    let b = stored(&db, &b.ok().stdout).await;
    let ta = parts(&a.trace_context["traceparent"]);
    let tb = parts(&b.trace_context["traceparent"]);
    assert_eq!(ta[0], "00");
    assert_eq!(ta[1].len(), 32);
    assert_eq!(ta[2].len(), 16);
    assert_eq!(ta[3], "01");
    assert_ne!(ta[1], tb[1], "each enqueue starts its own trace");
    assert_eq!(a.parent_span_id, None);
    assert_eq!(a.trace_context.as_object().unwrap().len(), 1);
}

#[tokio::test]
async fn an_invalid_traceparent_warns_restarts_the_trace_and_drops_tracestate() {
    let db = TestDb::migrated().await;
    for bad in [
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "garbage",
    ] {
        let out = run(
            db.pgc().env("TRACEPARENT", bad).env("TRACESTATE", "rojo=1"),
            &["enqueue", "t"],
        );
        assert_eq!(out.code, 0, "{bad}: {}", out.stderr);
        assert_eq!(out.stderr.lines().count(), 1, "{bad}: {}", out.stderr);
        assert!(
            out.stderr
                .starts_with("pgc: warning: ignoring invalid TRACEPARENT"),
            "{}",
            out.stderr
        );
        let row = stored(&db, &out.stdout).await;
        assert_ne!(
            parts(&row.trace_context["traceparent"])[1],
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(row.parent_span_id, None);
        assert!(row.trace_context.get("tracestate").is_none());
    }
}

#[tokio::test]
async fn an_invalid_tracestate_is_dropped_and_the_traceparent_kept() {
    let db = TestDb::migrated().await;
    let out = run(
        db.pgc()
            .env("TRACEPARENT", CALLER)
            .env("TRACESTATE", "Bad Key=1"),
        &["enqueue", "t"],
    );
    out.ok();
    assert!(
        out.stderr.contains("warning: ignoring invalid tracestate"),
        "{}",
        out.stderr
    );
    let row = stored(&db, &out.stdout).await;
    assert_eq!(
        parts(&row.trace_context["traceparent"])[1],
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert!(row.trace_context.get("tracestate").is_none());
}

#[tokio::test]
async fn inside_a_task_the_parent_execution_is_recorded() {
    let db = TestDb::migrated().await;
    let parent = run(&mut db.pgc(), &["enqueue", "parent"]);
    let parent_id = parent.ok().stdout.trim().to_string();
    let child = run(
        db.pgc()
            .env("PGC_EXECUTION_ID", &parent_id)
            .env("TRACEPARENT", CALLER),
        &["enqueue", "child"],
    );
    let row = stored(&db, &child.ok().stdout).await;
    assert_eq!(
        row.parent_execution_id,
        Some(Uuid::parse_str(&parent_id).unwrap())
    );
}

#[tokio::test]
async fn dedupe_returns_the_unfinished_execution_then_allows_a_new_one() {
    let db = TestDb::migrated().await;
    let first = run(&mut db.pgc(), &["enqueue", "t", "--dedupe-key", "k1"]);
    let second = run(
        &mut db.pgc(),
        &["enqueue", "t", "--dedupe-key", "k1", "--json"],
    );
    let first_id = first.ok().stdout.trim().to_string();
    let doc: Value = serde_json::from_str(&second.ok().stdout).unwrap();
    assert_eq!(doc["id"], first_id.as_str());
    assert_eq!(doc["deduplicated"], true);
    assert_eq!(count(&db).await, 1);
    assert_eq!(
        stored(&db, &first_id).await.dedupe_key.as_deref(),
        Some("k1")
    );

    // Another task or queue with the same key is a different execution.
    run(&mut db.pgc(), &["enqueue", "other", "--dedupe-key", "k1"]).ok();
    run(
        &mut db.pgc(),
        &["enqueue", "t", "-q", "q2", "--dedupe-key", "k1"],
    )
    .ok();
    assert_eq!(count(&db).await, 3);

    // Once the first has finished, the key is free again.
    db.client()
        .await
        .execute(
            "update pgconductor._private_executions set status = 'completed', finished_at = now() where id = $1",
            &[&Uuid::parse_str(&first_id).unwrap()],
        )
        .await
        .unwrap();
    let third = run(&mut db.pgc(), &["enqueue", "t", "--dedupe-key", "k1"]);
    assert_ne!(third.ok().stdout.trim(), first_id);
    assert_eq!(count(&db).await, 4);
}

#[tokio::test]
async fn payload_from_a_file_and_from_stdin() {
    let db = TestDb::migrated().await;
    let path = std::env::temp_dir().join(format!("pgc-payload-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"from": "file"}"#).unwrap();
    let arg = format!("@{}", path.display());
    let out = run(&mut db.pgc(), &["enqueue", "t", "--payload", &arg]);
    assert_eq!(stored(&db, &out.ok().stdout).await.payload["from"], "file");
    std::fs::remove_file(&path).unwrap();

    let out = run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "t", "--payload", "-"],
        br#"[1, "two"]"#,
    );
    assert_eq!(
        stored(&db, &out.ok().stdout).await.payload,
        serde_json::json!([1, "two"])
    );
}

#[tokio::test]
async fn delay_and_run_at_set_when_it_is_due() {
    let db = TestDb::migrated().await;
    let out = run(&mut db.pgc(), &["enqueue", "t", "--delay", "5m"]);
    let row = stored(&db, &out.ok().stdout).await;
    assert!(
        (row.run_at_offset_s - 300.0).abs() < 1e-6,
        "{}",
        row.run_at_offset_s
    );

    let out = run(
        &mut db.pgc(),
        &[
            "enqueue",
            "t",
            "--run-at",
            "2099-01-01T00:00:00+02:00",
            "--json",
        ],
    );
    let doc: Value = serde_json::from_str(&out.ok().stdout).unwrap();
    assert_eq!(doc["run_at"], "2098-12-31T22:00:00Z");
}

#[tokio::test]
async fn bad_input_exits_2_with_one_line_and_writes_nothing() {
    let db = TestDb::migrated().await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["enqueue", "t", "--payload", "{not json"],
            "payload is not valid JSON",
        ),
        (
            &["enqueue", "t", "--payload", "@/nonexistent/p.json"],
            "could not read payload file /nonexistent/p.json",
        ),
        (&["enqueue", ""], "task name is empty"),
        (&["enqueue", &"x".repeat(129)], "limit is 128"),
        (
            &["enqueue", "bad name"],
            "task name \"bad name\" contains ' '",
        ),
        (
            &["enqueue", "t", "--queue", "a/b"],
            "queue name \"a/b\" contains '/'",
        ),
        (&["enqueue", "t", "--queue", ""], "queue name is empty"),
        (&["enqueue", "t", "--max-attempts", "0"], "--max-attempts"),
        (&["enqueue", "t", "--max-attempts", "-1"], "--max-attempts"),
        (&["enqueue", "t", "--run-at", "tomorrow"], "RFC 3339"),
        (&["enqueue", "t", "--delay", "soon"], "invalid duration"),
        (
            &[
                "enqueue",
                "t",
                "--delay",
                "5m",
                "--run-at",
                "2030-01-01T00:00:00Z",
            ],
            "cannot be used with",
        ),
        (
            &["enqueue", "t", "--payload", r#"{"a":"\u0000"}"#],
            "\\u0000",
        ),
        (
            &["enqueue", "t", "--payload", r#"{"a":"\ud800"}"#],
            "surrogate",
        ),
        (&["enqueue", "t", "--payload", "[1e1000000]"], "numeric"),
        (
            &["enqueue", "t", "--delay", "300000y"],
            "limit of 1000 years",
        ),
        (&["enqueue", "t", "--dedupe-key", ""], "dedupe key is empty"),
        (&["enqueue"], "required"),
    ];
    for (args, needle) in cases {
        let out = run(&mut db.pgc(), args);
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout, "", "{args:?}");
        assert!(
            out.stderr.contains(needle),
            "{args:?}: expected {needle:?} in {}",
            out.stderr
        );
        if !out.stderr.contains("Usage") {
            assert_eq!(out.stderr.lines().count(), 1, "{args:?}: {}", out.stderr);
        }
    }
    assert_eq!(count(&db).await, 0);
}

#[tokio::test]
async fn enqueue_notifies_its_queue_in_the_same_transaction() {
    let db = TestDb::migrated().await;
    let (client, mut conn) = tokio_postgres::connect(&db.url, NoTls).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(msg)) = messages.next().await {
            if let AsyncMessage::Notification(n) = msg {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    client
        .batch_execute("listen pgconductor_enqueued")
        .await
        .unwrap();
    let out = run(
        db.pgc().env("TRACEPARENT", CALLER),
        &["enqueue", "t", "--queue", "reports"],
    );
    let id = Uuid::parse_str(out.ok().stdout.trim()).unwrap();
    let (channel, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no notification within 10 s")
        .unwrap();
    assert_eq!(channel, "pgconductor_enqueued");
    assert_eq!(payload, "reports");
    // A listener woken by it finds the row with its trace context.
    let tc: Value = client
        .query_one(
            "select trace_context from pgconductor._private_executions where id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        tc["traceparent"]
            .as_str()
            .unwrap()
            .starts_with("00-0af7651916cd43dd8448eb211c80319c-")
    );

    // A batch notifies every queue it wrote to.
    let input = "{\"task\":\"a\",\"queue\":\"q1\"}\n{\"task\":\"b\",\"queue\":\"q2\"}\n{\"task\":\"c\",\"queue\":\"q1\"}\n";
    run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "--batch", "-"],
        input.as_bytes(),
    )
    .ok();
    let mut queues = Vec::new();
    for _ in 0..2 {
        let (_, q) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a batch notification is missing")
            .unwrap();
        queues.push(q);
    }
    queues.sort();
    assert_eq!(queues, ["q1", "q2"]);
}

#[tokio::test]
async fn an_invalid_traceparent_flag_warns_and_starts_a_new_trace() {
    let db = TestDb::migrated().await;
    let out = run(
        db.pgc().env("TRACEPARENT", CALLER),
        &[
            "enqueue",
            "t",
            "--traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        ],
    );
    out.ok();
    assert!(
        out.stderr
            .starts_with("pgc: warning: ignoring invalid --traceparent"),
        "{}",
        out.stderr
    );
    let row = stored(&db, &out.stdout).await;
    assert_eq!(
        row.parent_span_id, None,
        "the environment must not be used instead"
    );
    assert_ne!(
        parts(&row.trace_context["traceparent"])[1],
        "0af7651916cd43dd8448eb211c80319c"
    );
}

#[tokio::test]
async fn concurrent_enqueues_with_one_dedupe_key_store_one_execution() {
    let db = TestDb::migrated().await;
    let children: Vec<_> = (0..8)
        .map(|_| {
            db.pgc()
                .args(["enqueue", "t", "--dedupe-key", "same"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        ids.insert(String::from_utf8(out.stdout).unwrap());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(count(&db).await, 1);
}
