//! `pgc enqueue --batch`: JSON Lines through COPY, all-or-nothing, trace context per row.

use serde_json::Value;

use crate::support::{TestDb, run, run_with_stdin};

async fn rows(
    db: &TestDb,
) -> Vec<(
    String,
    String,
    Value,
    i32,
    i32,
    Option<String>,
    Value,
    Option<String>,
)> {
    db.client()
        .await
        .query(
            "select queue, task_key, payload, priority, max_attempts, dedupe_key, trace_context, parent_span_id
             from pgconductor._private_executions order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5), r.get(6), r.get(7)))
        .collect()
}

fn write_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("pgc-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn batch_from_a_file_applies_line_fields_over_flag_defaults() {
    let db = TestDb::migrated().await;
    let path = write_file(
        "basic.jsonl",
        concat!(
            "{\"task\":\"a\"}\n",
            "\n",
            "{\"task\":\"b\",\"payload\":{\"n\":2},\"queue\":\"other\",\"priority\":-1,\"max_attempts\":9}\n",
            "{\"task\":\"c\",\"run_at\":\"2099-01-01T00:00:00Z\"}", // no final newline
        ),
    );
    let out = run(
        &mut db.pgc(),
        &[
            "enqueue",
            "--batch",
            path.to_str().unwrap(),
            "--queue",
            "reports",
            "--priority",
            "4",
            "--json",
        ],
    );
    out.ok();
    std::fs::remove_file(&path).unwrap();
    let summary: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["enqueued"], 3);
    assert_eq!(summary["deduplicated"], 0);
    assert!(
        out.stderr.contains("enqueued 3 executions"),
        "{}",
        out.stderr
    );
    let rows = rows(&db).await;
    assert_eq!(rows.len(), 3);
    let a = rows.iter().find(|r| r.1 == "a").unwrap();
    assert_eq!((a.0.as_str(), a.3, a.4), ("reports", 4, 3));
    assert_eq!(a.2, serde_json::json!({}));
    let b = rows.iter().find(|r| r.1 == "b").unwrap();
    assert_eq!((b.0.as_str(), b.3, b.4), ("other", -1, 9));
    assert_eq!(b.2, serde_json::json!({"n": 2}));
    let due: i64 = db
        .client()
        .await
        .query_one(
            "select count(*) from pgconductor._private_executions where task_key = 'c' and run_at = '2099-01-01T00:00:00Z'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(due, 1);
}

#[tokio::test]
async fn a_malformed_line_is_named_and_nothing_is_written() {
    let db = TestDb::migrated().await;
    let mut input = String::new();
    for i in 0..25_000 {
        input.push_str(&format!("{{\"task\":\"t\",\"payload\":{{\"i\":{i}}}}}\n"));
    }
    input.push_str("{\"task\":\"t\",\"payload\":{oops}\n");
    let out = run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "--batch", "-"],
        input.as_bytes(),
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("line 25001"), "{}", out.stderr);
    assert!(out.stderr.contains("nothing was written"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert_eq!(rows(&db).await.len(), 0);

    for (bad, needle) in [
        ("{\"payload\":{}}", "missing field `task`"),
        ("{\"task\":\"x y\"}", "task name"),
        ("{\"task\":\"t\",\"max_attempts\":0}", "at least 1"),
        ("{\"task\":\"t\",\"run_at\":\"soon\"}", "RFC 3339"),
        ("{\"task\":\"t\",\"extra\":1}", "unknown field `extra`"),
        (
            "[1,2]",
            "expected a JSON object with a \"task\", found an array",
        ),
        (
            "\"t\"",
            "expected a JSON object with a \"task\", found a string",
        ),
        ("7", "found a number"),
    ] {
        let input = format!("{{\"task\":\"ok\"}}\n{bad}\n");
        let out = run_with_stdin(
            &mut db.pgc(),
            &["enqueue", "--batch", "-"],
            input.as_bytes(),
        );
        assert_eq!(out.code, 2, "{bad}: {}", out.stderr);
        assert!(out.stderr.contains("line 2: "), "{bad}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{bad}: {}", out.stderr);
    }
    assert_eq!(rows(&db).await.len(), 0);
}

#[tokio::test]
async fn every_row_gets_its_own_producer_span_in_the_callers_trace() {
    let db = TestDb::migrated().await;
    let input = "{\"task\":\"a\"}\n{\"task\":\"b\"}\n{\"task\":\"c\",\"dedupe_key\":\"k\"}\n";
    let out = run_with_stdin(
        db.pgc()
            .env(
                "TRACEPARENT",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .env("TRACESTATE", "rojo=1"),
        &["enqueue", "--batch", "-"],
        input.as_bytes(),
    );
    out.ok();
    let rows = rows(&db).await;
    assert_eq!(rows.len(), 3);
    let mut spans = std::collections::HashSet::new();
    for r in &rows {
        let tp = r.6["traceparent"].as_str().unwrap();
        assert!(
            tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{tp}"
        );
        assert!(tp.ends_with("-01"));
        spans.insert(tp[36..52].to_string());
        assert_eq!(r.6["tracestate"], "rojo=1");
        assert_eq!(r.7.as_deref(), Some("b7ad6b7169203331"));
    }
    assert_eq!(spans.len(), 3, "span ids must differ");
}

#[tokio::test]
async fn without_a_caller_each_row_starts_its_own_trace() {
    let db = TestDb::migrated().await;
    let out = run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "--batch", "-"],
        b"{\"task\":\"a\"}\n{\"task\":\"b\"}\n",
    );
    out.ok();
    let rows = rows(&db).await;
    let traces: std::collections::HashSet<_> = rows
        .iter()
        .map(|r| r.6["traceparent"].as_str().unwrap()[3..35].to_string())
        .collect();
    assert_eq!(traces.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.7.is_none() && r.6.get("tracestate").is_none())
    );
}

#[tokio::test]
async fn dedupe_keys_in_a_batch_skip_rows_an_unfinished_execution_holds() {
    let db = TestDb::migrated().await;
    run(&mut db.pgc(), &["enqueue", "t", "--dedupe-key", "held"]).ok();
    let input = concat!(
        "{\"task\":\"t\",\"dedupe_key\":\"held\"}\n",
        "{\"task\":\"t\",\"dedupe_key\":\"new\"}\n",
        "{\"task\":\"t\"}\n",
        "{\"task\":\"t\",\"dedupe_key\":\"new\"}\n",
        "{\"task\":\"t\"}\n",
    );
    let out = run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "--batch", "-", "--json"],
        input.as_bytes(),
    );
    out.ok();
    let summary: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(summary["enqueued"], 3);
    assert_eq!(summary["deduplicated"], 2);
    let rows = rows(&db).await;
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows.iter()
            .filter(|r| r.5.as_deref() == Some("new"))
            .count(),
        1
    );
}

#[tokio::test]
async fn commit_every_keeps_the_chunks_before_a_bad_line() {
    let db = TestDb::migrated().await;
    let input = "{\"task\":\"a\"}\n{\"task\":\"b\"}\n{\"task\":\"c\"}\nnot json\n";
    let out = run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "--batch", "-", "--commit-every", "2"],
        input.as_bytes(),
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("line 4"), "{}", out.stderr);
    assert!(
        out.stderr.contains("stopped after committing 2 rows"),
        "{}",
        out.stderr
    );
    assert_eq!(rows(&db).await.len(), 2);
}

#[tokio::test]
async fn an_unreadable_batch_file_is_bad_input() {
    let db = TestDb::migrated().await;
    let out = run(
        &mut db.pgc(),
        &["enqueue", "--batch", "/nonexistent/jobs.jsonl"],
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("could not open batch file /nonexistent/jobs.jsonl"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn crlf_line_endings_a_byte_order_mark_and_null_payloads_are_read() {
    let db = TestDb::migrated().await;
    let input = "\u{feff}{\"task\":\"a\",\"payload\":null}\r\n\r\n{\"task\":\"b\"}\r\n";
    let out = run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "--batch", "-"],
        input.as_bytes(),
    );
    out.ok();
    let rows = rows(&db).await;
    assert_eq!(rows.len(), 2);
    let a = rows.iter().find(|r| r.1 == "a").unwrap();
    assert_eq!(
        a.2,
        Value::Null,
        "an explicit null payload is stored as null"
    );
    let b = rows.iter().find(|r| r.1 == "b").unwrap();
    assert_eq!(b.2, serde_json::json!({}));
}

#[tokio::test]
async fn payloads_jsonb_refuses_are_bad_input_with_their_line() {
    let db = TestDb::migrated().await;
    for (bad, needle) in [
        (r#"{"task":"t","payload":"\u0000"}"#, "\\u0000"),
        (r#"{"task":"t","payload":"\udc00"}"#, "surrogate"),
        (r#"{"task":"t","payload":1e99999}"#, "numeric"),
    ] {
        let input = format!("{{\"task\":\"ok\"}}\n{bad}\n");
        let out = run_with_stdin(
            &mut db.pgc(),
            &["enqueue", "--batch", "-"],
            input.as_bytes(),
        );
        assert_eq!(out.code, 2, "{bad}: {}", out.stderr);
        assert!(
            out.stderr.contains("line 2: payload"),
            "{bad}: {}",
            out.stderr
        );
        assert!(out.stderr.contains(needle), "{bad}: {}", out.stderr);
    }
    assert_eq!(rows(&db).await.len(), 0);
}

#[tokio::test]
async fn a_server_error_mid_batch_exits_1_and_rolls_everything_back() {
    let db = TestDb::migrated().await;
    // A trigger stands in for anything the server can refuse halfway through.
    db.client()
        .await
        .batch_execute(
            "create function pg_temp_refuse() returns trigger language plpgsql as $$
             begin
               if new.task_key = 'boom' then raise exception 'refused by a test trigger'; end if;
               return new;
             end $$;
             create trigger refuse before insert on pgconductor._private_executions
               for each row execute function pg_temp_refuse();",
        )
        .await
        .unwrap();
    let mut input = String::new();
    for _ in 0..1000 {
        input.push_str("{\"task\":\"fine\"}\n");
    }
    input.push_str("{\"task\":\"boom\"}\n");
    let out = run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "--batch", "-"],
        input.as_bytes(),
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("nothing was written"), "{}", out.stderr);
    assert!(
        out.stderr.contains("refused by a test trigger"),
        "{}",
        out.stderr
    );
    assert_eq!(rows(&db).await.len(), 0);
}

#[tokio::test]
async fn a_delay_past_the_limit_is_bad_input() {
    let db = TestDb::migrated().await;
    let out = run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "--batch", "-", "--delay", "300000y"],
        b"{\"task\":\"t\"}\n",
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stderr.contains("1000 years"), "{}", out.stderr);
}
