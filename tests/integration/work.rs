//! `pgc work`: real worker processes running real handler processes.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use crate::support::{Run, TestDb, run, run_with_stdin};

const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Polls `check` every 50 ms until it holds or `limit` passes.
async fn wait_for<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn enqueue(db: &TestDb, args: &[&str]) -> Uuid {
    let mut all = vec!["enqueue"];
    all.extend_from_slice(args);
    let out = run(&mut db.pgc(), &all);
    Uuid::parse_str(out.ok().stdout.trim()).unwrap()
}

/// Enqueues `n` executions of `task` in one batch.
fn enqueue_many(db: &TestDb, task: &str, n: usize) {
    let line = format!("{{\"task\":\"{task}\"}}\n");
    run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "--batch", "-"],
        line.repeat(n).as_bytes(),
    )
    .ok();
}

fn work(db: &TestDb, args: &[&str]) -> Run {
    let mut all = vec![
        "work",
        "--until-empty",
        "--retry-delay",
        "10ms",
        "--poll-interval",
        "100ms",
    ];
    all.extend_from_slice(args);
    run(&mut db.pgc(), &all)
}

fn spawn_worker(db: &TestDb, args: &[&str]) -> Child {
    db.pgc()
        .arg("work")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, sig).unwrap();
}

struct Row {
    status: String,
    attempts: i32,
    result: Option<Value>,
    last_error: Option<String>,
    attempt_span_id: Option<String>,
    trace_context: Value,
}

async fn row(db: &TestDb, id: Uuid) -> Row {
    let r = db
        .client()
        .await
        .query_one(
            "select status, attempts, result, last_error, attempt_span_id, trace_context
             from pgconductor._private_executions where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    Row {
        status: r.get(0),
        attempts: r.get(1),
        result: r.get(2),
        last_error: r.get(3),
        attempt_span_id: r.get(4),
        trace_context: r.get(5),
    }
}

async fn earlier_attempts(db: &TestDb, id: Uuid) -> Vec<(i32, String, String, Option<String>)> {
    db.client()
        .await
        .query(
            "select attempt, span_id, outcome, error from pgconductor._private_attempts
             where execution_id = $1 order by started_at",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

#[tokio::test]
async fn a_handler_gets_payload_and_context_and_its_json_stdout_is_the_result() {
    let db = TestDb::migrated().await;
    let id = {
        let out = run(
            db.pgc().env("TRACEPARENT", CALLER),
            &[
                "enqueue",
                "report",
                "--queue",
                "q1",
                "--payload",
                r#"{"week": 47}"#,
            ],
        );
        Uuid::parse_str(out.ok().stdout.trim()).unwrap()
    };
    let script = r#"payload=$(cat); printf '{"payload": %s, "tp": "%s", "id": "%s", "task": "%s", "queue": "%s", "attempt": "%s", "max": "%s", "pghost": "%s"}' "$payload" "$TRACEPARENT" "$PGC_EXECUTION_ID" "$PGC_TASK" "$PGC_QUEUE" "$PGC_ATTEMPT" "$PGC_MAX_ATTEMPTS" "$PGHOST""#;
    let out = work(&db, &["--queue", "q1", "--", "sh", "-c", script]);
    out.ok();
    let r = row(&db, id).await;
    assert_eq!(r.status, "completed");
    assert_eq!(r.attempts, 1);
    let result = r.result.unwrap();
    assert_eq!(result["payload"], serde_json::json!({"week": 47}));
    assert_eq!(result["id"], id.to_string());
    assert_eq!(result["task"], "report");
    assert_eq!(result["queue"], "q1");
    assert_eq!(result["attempt"], "1");
    assert_eq!(result["max"], "3");
    assert_eq!(result["pghost"], "127.0.0.1");
    // TRACEPARENT: the execution's trace, this attempt's stored span id.
    let tp = result["tp"].as_str().unwrap();
    let span = r.attempt_span_id.unwrap();
    assert_eq!(tp, format!("00-0af7651916cd43dd8448eb211c80319c-{span}-01"));
    let producer = r.trace_context["traceparent"].as_str().unwrap();
    assert_ne!(
        &producer[36..52],
        span,
        "the attempt span is not the producer span"
    );
}

/// TRACESTATE goes with the trace: the caller's stored `tracestate` reaches the handler.
/// A stored carrier that is not usable (not strings, not a valid `traceparent`) gives
/// the attempt a trace of its own and no TRACESTATE, and the task still runs.
#[tokio::test]
async fn a_handler_gets_the_stored_tracestate_and_a_broken_carrier_gets_a_new_trace() {
    let db = TestDb::migrated().await;
    let traced = {
        let out = run(
            db.pgc()
                .env("TRACEPARENT", CALLER)
                .env("TRACESTATE", "vendor=abc,other=1"),
            &["enqueue", "ts"],
        );
        Uuid::parse_str(out.ok().stdout.trim()).unwrap()
    };
    let client = db.client().await;
    let mut broken = Vec::new();
    for carrier in [
        r#"{"traceparent": 5, "tracestate": 7}"#,
        r#"{"traceparent": "nonsense", "tracestate": ""}"#,
        r#"["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]"#,
    ] {
        let id = Uuid::new_v4();
        crate::support::write_by_hand(
            &client,
            &format!(
                "insert into pgconductor._private_executions (id, queue, task_key, trace_context)
                 values ('{id}', 'default', 'ts', '{carrier}')"
            ),
        )
        .await
        .unwrap();
        broken.push(id);
    }
    let script = r#"printf '{"tp": "%s", "ts": "%s", "has_ts": "%s"}' "$TRACEPARENT" "$TRACESTATE" "${TRACESTATE+yes}""#;
    work(&db, &["--", "sh", "-c", script]).ok();
    let r = row(&db, traced).await;
    assert_eq!(r.status, "completed");
    let result = r.result.unwrap();
    assert_eq!(result["ts"], "vendor=abc,other=1");
    let span = r.attempt_span_id.unwrap();
    assert_eq!(
        result["tp"],
        format!("00-0af7651916cd43dd8448eb211c80319c-{span}-01")
    );
    for id in broken {
        let r = row(&db, id).await;
        assert_eq!(r.status, "completed", "{:?}", r.trace_context);
        let result = r.result.unwrap();
        assert_eq!(
            result["has_ts"], "",
            "no TRACESTATE for {:?}",
            r.trace_context
        );
        let tp = result["tp"].as_str().unwrap();
        let parsed = pgc::traceparent::TraceParent::parse(tp).unwrap();
        assert_ne!(
            &tp[3..35],
            "0af7651916cd43dd8448eb211c80319c",
            "a trace of its own"
        );
        assert_eq!(parsed.parent_id.to_string(), r.attempt_span_id.unwrap());
    }
}

#[tokio::test]
async fn a_failure_is_retried_then_succeeds_and_the_failed_attempt_is_kept() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, &["flaky"]);
    let script = r#"cat >/dev/null; if [ "$PGC_ATTEMPT" = 1 ]; then echo "first try breaks" >&2; exit 3; fi; echo '"ok"'"#;
    let out = work(&db, &["--", "sh", "-c", script]);
    out.ok();
    assert!(
        out.stderr
            .contains("failed (attempt 1): exit status 3: first try breaks"),
        "{}",
        out.stderr
    );
    let r = row(&db, id).await;
    assert_eq!(r.status, "completed");
    assert_eq!(r.attempts, 2);
    assert_eq!(r.result, Some(Value::from("ok")));
    let earlier = earlier_attempts(&db, id).await;
    assert_eq!(earlier.len(), 1);
    assert_eq!(earlier[0].0, 1);
    assert_eq!(earlier[0].2, "failed");
    assert_eq!(
        earlier[0].3.as_deref(),
        Some("exit status 3: first try breaks")
    );
    assert_ne!(
        Some(&earlier[0].1),
        r.attempt_span_id.as_ref(),
        "each attempt has its own span"
    );
}

#[tokio::test]
async fn exhausted_retries_finish_as_failed_and_until_empty_exits_1() {
    let db = TestDb::migrated().await;
    let bad = enqueue(&db, &["broken", "--max-attempts", "2"]);
    let good = enqueue(&db, &["fine"]);
    let out = work(
        &db,
        &[
            "--handler",
            "broken=echo nope >&2; exit 1",
            "--handler",
            "fine=true",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("pgc: failed: broken {bad}: exit status 1: nope")),
        "{}",
        out.stderr
    );
    let r = row(&db, bad).await;
    assert_eq!(r.status, "failed");
    assert_eq!(r.attempts, 2);
    assert_eq!(r.last_error.as_deref(), Some("exit status 1: nope"));
    assert!(
        r.attempt_span_id.is_some(),
        "the last attempt stays on the row"
    );
    assert_eq!(earlier_attempts(&db, bad).await.len(), 1);
    assert_eq!(row(&db, good).await.status, "completed");
}

#[tokio::test]
async fn a_retry_runs_when_it_is_due_without_waiting_for_a_poll() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, &["flaky"]);
    // Polling once an hour, and lease sweeps every five minutes: only the worker's own
    // wake-up at the retry's due time can finish this drain (the test gives up after a
    // minute).
    let mut child = spawn_worker(
        &db,
        &[
            "--until-empty",
            "--retry-delay",
            "50ms",
            "--poll-interval",
            "1h",
            "--lease",
            "10m",
            "--handler",
            r#"flaky=[ "$PGC_ATTEMPT" -ge 2 ] || exit 1"#,
        ],
    );
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("the retry did not run within a minute: it waited for the hourly poll");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success());
    let r = row(&db, id).await;
    assert_eq!(r.status, "completed");
    assert_eq!(r.attempts, 2);
}

#[tokio::test]
async fn a_handler_past_its_timeout_is_stopped_and_the_attempt_fails() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, &["slow", "--max-attempts", "1"]);
    let out = work(
        &db,
        &[
            "--timeout",
            "300ms",
            "--kill-grace",
            "200ms",
            "--",
            "sleep",
            "30",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    let r = row(&db, id).await;
    assert_eq!(r.status, "failed");
    assert!(
        r.last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("timed out after"),
        "{:?}",
        r.last_error
    );
}

#[tokio::test]
async fn exit_75_runs_again_later_without_using_an_attempt() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, &["later", "--max-attempts", "1"]);
    let marker = std::env::temp_dir().join(format!("pgc-tempfail-{id}"));
    let script = format!(
        "cat >/dev/null; if [ ! -e {m} ]; then touch {m}; echo busy >&2; exit 75; fi; echo '\"done\"'",
        m = marker.display()
    );
    let out = work(&db, &["--", "sh", "-c", &script]);
    out.ok();
    let _ = std::fs::remove_file(&marker);
    let r = row(&db, id).await;
    assert_eq!(
        r.status, "completed",
        "max attempts 1 was not used up by exit 75"
    );
    assert_eq!(r.attempts, 1);
    let earlier = earlier_attempts(&db, id).await;
    assert_eq!(earlier.len(), 1);
    assert_eq!(earlier[0].2, "released");
}

#[tokio::test]
async fn an_enqueue_inside_a_handler_is_a_child_of_the_attempt() {
    let db = TestDb::migrated().await;
    let parent = {
        let out = run(db.pgc().env("TRACEPARENT", CALLER), &["enqueue", "parent"]);
        Uuid::parse_str(out.ok().stdout.trim()).unwrap()
    };
    let pgc = env!("CARGO_BIN_EXE_pgc");
    let out = work(
        &db,
        &[
            "--handler",
            &format!("parent={pgc} enqueue child --queue kids >/dev/null"),
        ],
    );
    out.ok();
    let client = db.client().await;
    let child = client
        .query_one(
            "select parent_execution_id, parent_span_id, trace_context
             from pgconductor._private_executions where task_key = 'child'",
            &[],
        )
        .await
        .unwrap();
    let parent_row = row(&db, parent).await;
    assert_eq!(child.get::<_, Option<Uuid>>(0), Some(parent));
    assert_eq!(
        child.get::<_, Option<String>>(1),
        parent_row.attempt_span_id
    );
    let tc: Value = child.get(2);
    assert!(
        tc["traceparent"]
            .as_str()
            .unwrap()
            .starts_with("00-0af7651916cd43dd8448eb211c80319c-")
    );
}

#[tokio::test]
async fn an_idle_worker_is_woken_by_notify_not_polling() {
    let db = TestDb::migrated().await;
    let mut worker = spawn_worker(&db, &["--poll-interval", "1h", "--", "true"]);
    // Let it start listening, claim nothing, and go idle.
    let client = db.client().await;
    wait_for(Duration::from_secs(20), "the worker to listen", || async {
        client
            .query_one(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and query like 'listen pgconductor_enqueued%'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = enqueue(&db, &["wake"]);
    wait_for(
        Duration::from_secs(20),
        "the notified worker to run the task",
        || async { row(&db, id).await.status == "completed" },
    )
    .await;
    signal(&worker, nix::sys::signal::Signal::SIGTERM);
    assert!(worker.wait().unwrap().success());
}

/// A worker that dies while its claim's transaction is open (the handler still within
/// the claim window) leaves the row as it was: pending, no attempt used, nothing
/// locked; another worker runs it at once as attempt 1.
#[tokio::test]
async fn a_worker_gone_within_its_claim_window_leaves_the_execution_untouched() {
    use pgc::handler::{FnHandler, Job, Outcome};
    use pgc::worker::{self, Handlers, Shutdown, WorkerOptions};
    use std::sync::Arc;
    let db = TestDb::migrated().await;
    let id = enqueue(&db, &["hang"]);
    let conn = pgc::db::ConnectOptions::resolve(Some(&db.url)).unwrap();
    let started = Arc::new(tokio::sync::Notify::new());
    let told = started.clone();
    let handlers = Handlers::new().task(
        "hang",
        Arc::new(FnHandler(move |_job: Job| {
            let told = told.clone();
            async move {
                told.notify_one();
                std::future::pending::<()>().await;
                Outcome::Completed(None)
            }
        })),
    );
    let opts = WorkerOptions {
        claim_window: Duration::from_secs(600),
        ..WorkerOptions::default()
    };
    // A runtime of its own, so that all of the worker's tasks can go at once.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.spawn(async move {
        worker::run(&conn, opts, handlers, Shutdown::default(), Arc::new(|_| {})).await
    });
    tokio::time::timeout(Duration::from_secs(20), started.notified())
        .await
        .expect("the handler to start");
    let r = row(&db, id).await;
    assert_eq!(
        (r.status.as_str(), r.attempts),
        ("pending", 0),
        "nothing written yet"
    );
    // The worker goes away: its connections close, as when the process dies.
    rt.shutdown_background();
    let out = work(
        &db,
        &["--", "sh", "-c", "cat >/dev/null; echo \"$PGC_ATTEMPT\""],
    );
    out.ok();
    let r = row(&db, id).await;
    assert_eq!(r.status, "completed");
    assert_eq!(r.attempts, 1);
    assert_eq!(r.result, Some(Value::from(1)));
    assert!(earlier_attempts(&db, id).await.is_empty());
}

/// A queue listed twice is claimed from once: every execution runs once.
#[tokio::test]
async fn a_queue_listed_twice_runs_each_execution_once() {
    use pgc::handler::{FnHandler, Job, Outcome};
    use pgc::worker::{self, Handlers, Shutdown, WorkerOptions};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let db = TestDb::migrated().await;
    for _ in 0..20 {
        enqueue(&db, &["twice"]);
    }
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let handlers = Handlers::new().task(
        "twice",
        Arc::new(FnHandler(move |_job: Job| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Outcome::Completed(None) }
        })),
    );
    let opts = WorkerOptions {
        queues: vec!["default".into(), "default".into()],
        until_empty: true,
        ..WorkerOptions::default()
    };
    let conn = pgc::db::ConnectOptions::resolve(Some(&db.url)).unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        worker::run(&conn, opts, handlers, Shutdown::default(), Arc::new(|_| {})),
    )
    .await
    .expect("the worker to drain the queue")
    .unwrap();
    assert_eq!(report.completed, 20);
    assert_eq!(runs.load(Ordering::SeqCst), 20);
    completed_once(&db, 20).await;
}

#[tokio::test]
async fn a_killed_worker_loses_its_lease_and_another_worker_completes_the_task_once() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, &["job"]);
    let dir = std::env::temp_dir().join(format!("pgc-kill-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let runs = dir.join("runs");
    let script = format!(
        "cat >/dev/null; echo \"$PGC_ATTEMPT\" >> {}; sleep 3; echo '\"late\"'",
        runs.display()
    );
    let mut a = spawn_worker(&db, &["--lease", "1s", "--", "sh", "-c", &script]);
    // Killed once its lease is recorded (a worker that dies within its claim's
    // transaction leaves nothing behind: see the next test).
    wait_for(
        Duration::from_secs(20),
        "the first worker to start the task and lease it",
        || async {
            std::fs::read_to_string(&runs).is_ok() && row(&db, id).await.status == "running"
        },
    )
    .await;
    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let fast = format!(
        "cat >/dev/null; echo \"$PGC_ATTEMPT\" >> {}; echo '\"second\"'",
        runs.display()
    );
    let out = work(&db, &["--lease", "1s", "--", "sh", "-c", &fast]);
    out.ok();
    // Give the orphaned first handler time to finish: nobody may settle its result.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let r = row(&db, id).await;
    assert_eq!(r.status, "completed");
    assert_eq!(r.result, Some(Value::from("second")));
    assert_eq!(r.attempts, 2);
    let earlier = earlier_attempts(&db, id).await;
    assert_eq!(earlier.len(), 1);
    assert_eq!(earlier[0].2, "lost");
    assert_eq!(std::fs::read_to_string(&runs).unwrap(), "1\n2\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_worker_whose_lease_was_taken_over_cannot_settle() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, &["job"]);
    let started = std::env::temp_dir().join(format!("pgc-fence-{id}"));
    let script = format!(
        "cat >/dev/null; touch {}; sleep 2; echo '\"from the paused worker\"'",
        started.display()
    );
    let a = spawn_worker(&db, &["--lease", "1s", "--", "sh", "-c", &script]);
    wait_for(
        Duration::from_secs(20),
        "the first worker to start the task",
        || async { started.exists() },
    )
    .await;
    // Freeze the worker (not its handler) past its lease.
    signal(&a, nix::sys::signal::Signal::SIGSTOP);
    let out = work(
        &db,
        &[
            "--lease",
            "1s",
            "--",
            "sh",
            "-c",
            "cat >/dev/null; echo '\"from the second worker\"'",
        ],
    );
    out.ok();
    assert_eq!(
        row(&db, id).await.result,
        Some(Value::from("from the second worker"))
    );
    // The first handler has finished by now; wake its worker and let it try to settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&a, nix::sys::signal::Signal::SIGCONT);
    tokio::time::sleep(Duration::from_secs(2)).await;
    signal(&a, nix::sys::signal::Signal::SIGTERM);
    let out = a.wait_with_output().unwrap();
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lease taken over"), "{stderr}");
    let r = row(&db, id).await;
    assert_eq!(r.status, "completed");
    assert_eq!(r.result, Some(Value::from("from the second worker")));
    let _ = std::fs::remove_file(&started);
}

#[tokio::test]
async fn sigterm_releases_a_long_task_without_failing_it_and_exits_0() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, &["long", "--max-attempts", "1"]);
    let started = std::env::temp_dir().join(format!("pgc-term-{id}"));
    let script = format!("cat >/dev/null; touch {}; sleep 30", started.display());
    let mut w = spawn_worker(
        &db,
        &[
            "--until-empty",
            "--shutdown-timeout",
            "300ms",
            "--kill-grace",
            "200ms",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    wait_for(Duration::from_secs(20), "the task to start", || async {
        started.exists()
    })
    .await;
    signal(&w, nix::sys::signal::Signal::SIGTERM);
    let status = w.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut w.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("pgc: stopped by a signal: 0 completed, 0 failed, 0 retried, 1 released"),
        "{stderr}"
    );
    let r = row(&db, id).await;
    assert_eq!(r.status, "pending", "released, not failed");
    assert_eq!(r.attempts, 0, "the attempt was given back");
    assert_eq!(earlier_attempts(&db, id).await[0].2, "released");
    let _ = std::fs::remove_file(&started);
}

#[tokio::test]
async fn a_handler_that_finishes_within_the_shutdown_timeout_completes() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, &["short"]);
    let started = std::env::temp_dir().join(format!("pgc-grace-{id}"));
    let script = format!(
        "cat >/dev/null; touch {}; sleep 1; echo '\"finished\"'",
        started.display()
    );
    let mut w = spawn_worker(
        &db,
        &["--shutdown-timeout", "20s", "--", "sh", "-c", &script],
    );
    wait_for(Duration::from_secs(20), "the task to start", || async {
        started.exists()
    })
    .await;
    signal(&w, nix::sys::signal::Signal::SIGINT);
    assert!(w.wait().unwrap().success());
    assert_eq!(row(&db, id).await.result, Some(Value::from("finished")));
    let _ = std::fs::remove_file(&started);
}

#[tokio::test]
async fn a_higher_priority_task_enqueued_during_a_drain_runs_next() {
    // Mid-drain the worker's claims start past the rows it already claimed; a task
    // enqueued before that point (a smaller priority number) must still go first.
    let db = TestDb::migrated().await;
    let line = "{\"task\":\"t\",\"priority\":5}\n";
    run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "--batch", "-"],
        line.repeat(3000).as_bytes(),
    )
    .ok();
    // No polling: only the enqueue notification can bring the claims back.
    let w = spawn_worker(
        &db,
        &[
            "--until-empty",
            "--poll-interval",
            "1h",
            "--concurrency",
            "4",
            "--",
            "true",
        ],
    );
    let client = db.client().await;
    let finished = || async {
        client
            .query_one(
                "select count(*) from pgconductor._private_executions where status = 'completed'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    wait_for(
        Duration::from_secs(60),
        "the drain to get going",
        || async { finished().await >= 300 },
    )
    .await;
    let urgent = enqueue(&db, &["urgent", "--priority", "0"]);
    let out = w.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = client
        .query_one(
            "select count(*) filter (where e.started_at > u.started_at),
                    count(*) filter (where e.started_at > u.created_at
                                       and e.started_at < u.started_at)
             from pgconductor._private_executions e,
                  pgconductor._private_executions u
             where u.id = $1 and e.id <> u.id",
            &[&urgent],
        )
        .await
        .unwrap();
    let (after, between) = (r.get::<_, i64>(0), r.get::<_, i64>(1));
    assert!(after > 0, "the drain was over before the urgent task came");
    // Claims already asked for when it came may start first; nothing more.
    assert!(
        between <= 16,
        "{between} tasks started between the urgent task's enqueue and its start"
    );
}

#[tokio::test]
async fn a_higher_priority_task_falling_due_during_a_drain_runs_soon() {
    // No notification comes when a delayed task falls due: the claims must still go
    // back to the beginning of the queue to find it.
    let db = TestDb::migrated().await;
    let line = "{\"task\":\"t\",\"priority\":5}\n";
    run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "--batch", "-"],
        line.repeat(6000).as_bytes(),
    )
    .ok();
    let w = spawn_worker(
        &db,
        &[
            "--until-empty",
            "--poll-interval",
            "1h",
            "--concurrency",
            "4",
            "--",
            "true",
        ],
    );
    let client = db.client().await;
    wait_for(
        Duration::from_secs(60),
        "the drain to get going",
        || async {
            client
            .query_one(
                "select count(*) from pgconductor._private_executions where status = 'completed'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
            >= 300
        },
    )
    .await;
    let urgent = enqueue(&db, &["urgent", "--priority", "0", "--delay", "500ms"]);
    let out = w.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: i64 = client
        .query_one(
            "select count(*) from pgconductor._private_executions e,
                                  pgconductor._private_executions u
             where u.id = $1 and e.started_at > u.started_at",
            &[&urgent],
        )
        .await
        .unwrap()
        .get(0);
    // At a few thousand tasks a second, thousands were still waiting when it fell due.
    assert!(
        after >= 1000,
        "only {after} tasks started after the urgent one"
    );
}

async fn completed_once(db: &TestDb, n: i64) {
    let client = db.client().await;
    let r = client
        .query_one(
            "select count(*) filter (where status = 'completed'),
                    count(*) filter (where attempts <> 1),
                    (select count(*) from pgconductor._private_attempts)
             from pgconductor._private_executions",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, i64>(0), n, "every task completed");
    assert_eq!(r.get::<_, i64>(1), 0, "every task was claimed exactly once");
    assert_eq!(r.get::<_, i64>(2), 0, "no attempt was lost or repeated");
}

#[tokio::test]
async fn four_workers_complete_twenty_thousand_tasks_exactly_once() {
    let db = TestDb::migrated().await;
    enqueue_many(&db, "t", 20_000);
    let workers: Vec<Child> = (0..4)
        .map(|_| spawn_worker(&db, &["--until-empty", "--concurrency", "8", "--", "true"]))
        .collect();
    for w in workers {
        let out = w.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    completed_once(&db, 20_000).await;
    // Every attempt got a span id of its own: 16 lowercase hex digits, never all zeros.
    let ids = db
        .client()
        .await
        .query_one(
            "select count(distinct attempt_span_id),
                    count(*) filter (where attempt_span_id !~ '^[0-9a-f]{16}$'
                                        or attempt_span_id = '0000000000000000')
             from pgconductor._private_executions",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(ids.get::<_, i64>(0), 20_000, "attempt span ids are unique");
    assert_eq!(ids.get::<_, i64>(1), 0, "attempt span ids are valid");
}

#[tokio::test]
async fn killed_database_connections_are_survived_and_nothing_is_lost() {
    let db = TestDb::migrated().await;
    enqueue_many(&db, "t", 3000);
    let w = spawn_worker(
        &db,
        &["--until-empty", "--poll-interval", "100ms", "--", "true"],
    );
    let admin = db.client().await;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        admin
            .execute(
                "select pg_terminate_backend(pid) from pg_stat_activity
                 where datname = current_database() and application_name = 'pgc worker'",
                &[],
            )
            .await
            .unwrap();
    }
    let out = w.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("database connection lost"),
        "the test killed nothing: {stderr}"
    );
    completed_once(&db, 3000).await;
}

#[tokio::test]
async fn a_shell_handler_enqueues_a_child_and_waits_for_its_result() {
    let db = TestDb::migrated().await;
    let parent = enqueue(&db, &["parent"]);
    let pgc = env!("CARGO_BIN_EXE_pgc");
    let out = work(
        &db,
        &[
            "--concurrency",
            "2",
            "--handler",
            &format!(
                r#"parent=child=$({pgc} enqueue child --payload '{{"n": 7}}' --wait) && echo "{{\"child\": $child}}""#
            ),
            "--handler",
            "child=cat",
        ],
    );
    out.ok();
    let r = row(&db, parent).await;
    assert_eq!(r.status, "completed", "{}", out.stderr);
    assert_eq!(r.result, Some(serde_json::json!({"child": {"n": 7}})));
}

#[tokio::test]
async fn wait_exits_1_when_the_execution_fails_or_does_not_finish_in_time() {
    let db = TestDb::migrated().await;
    let out = run(
        &mut db.pgc(),
        &[
            "enqueue",
            "nobody-runs-this",
            "--wait",
            "--wait-timeout",
            "300ms",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("is still pending after 300ms"),
        "{}",
        out.stderr
    );

    let mut w = spawn_worker(
        &db,
        &[
            "--retry-delay",
            "10ms",
            "--handler",
            "doomed=echo broken >&2; exit 2",
        ],
    );
    let out = run(
        &mut db.pgc(),
        &["enqueue", "doomed", "--max-attempts", "2", "--wait"],
    );
    signal(&w, nix::sys::signal::Signal::SIGTERM);
    assert!(w.wait().unwrap().success());
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("failed: exit status 2: broken"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stdout, "");
}

#[tokio::test]
async fn cancel_stops_pending_and_running_executions_and_refuses_finished_ones() {
    let db = TestDb::migrated().await;
    let pending = enqueue(&db, &["later", "--delay", "1h"]);
    let out = run(&mut db.pgc(), &["cancel", &pending.to_string()]);
    out.ok();
    assert_eq!(out.stdout, "cancelled\n");
    assert_eq!(row(&db, pending).await.status, "cancelled");
    let again = run(&mut db.pgc(), &["cancel", &pending.to_string()]);
    assert_eq!(again.code, 1);
    assert!(
        again.stderr.contains("has already finished (cancelled)"),
        "{}",
        again.stderr
    );

    let missing = Uuid::now_v7();
    let out = run(&mut db.pgc(), &["cancel", &missing.to_string()]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains(&format!("no execution with id {missing}")),
        "{}",
        out.stderr
    );
    let out = run(&mut db.pgc(), &["cancel", "not-a-uuid"]);
    assert_eq!(out.code, 2, "{}", out.stderr);

    let running = enqueue(&db, &["long"]);
    let dir = std::env::temp_dir().join(format!("pgc-cancel-{running}"));
    std::fs::create_dir_all(&dir).unwrap();
    let script = format!(
        "cat >/dev/null; echo $$ > {d}/pid; touch {d}/started; sleep 30; touch {d}/finished",
        d = dir.display()
    );
    // A poll interval and lease long enough that only the NOTIFY can stop it in time.
    let w = spawn_worker(
        &db,
        &[
            "--lease",
            "5m",
            "--kill-grace",
            "200ms",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    let started = dir.join("started");
    wait_for(Duration::from_secs(20), "the task to start", || async {
        started.exists()
    })
    .await;
    let out = run(
        &mut db.pgc(),
        &["cancel", &running.to_string(), "--wait", "10s"],
    );
    out.ok();
    assert_eq!(out.stdout, "cancelled\n");
    let r = row(&db, running).await;
    assert_eq!(r.status, "cancelled");
    let pid = std::fs::read_to_string(dir.join("pid")).unwrap();
    wait_for(
        Duration::from_secs(10),
        "the cancelled handler to be gone",
        || async {
            // Gone, or a zombie waiting to be reaped.
            std::fs::read_to_string(format!("/proc/{}/stat", pid.trim()))
                .map(|st| st.contains(") Z "))
                .unwrap_or(true)
        },
    )
    .await;
    assert!(
        !dir.join("finished").exists(),
        "the handler was not stopped"
    );
    signal(&w, nix::sys::signal::Signal::SIGTERM);
    let out = w.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancelled"));
    let done = run(&mut db.pgc(), &["cancel", &running.to_string()]);
    assert_eq!(done.code, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn bench_reports_its_figures_and_leaves_no_rows_behind() {
    let db = TestDb::migrated().await;
    let out = run(
        &mut db.pgc(),
        &[
            "bench",
            "--jobs",
            "300",
            "--concurrency",
            "50",
            "--latency-samples",
            "300",
            "--json",
        ],
    );
    out.ok();
    let r: Value = serde_json::from_str(&out.stdout).unwrap();
    for key in ["enqueue_per_s", "work_per_s"] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key}: {}", out.stdout);
    }
    for key in ["p50", "p99", "max"] {
        assert!(
            r["latency_ms"][key].as_f64().unwrap() > 0.0,
            "{key}: {}",
            out.stdout
        );
    }
    assert!(r["latency_ms"]["p50"].as_f64() <= r["latency_ms"]["max"].as_f64());
    // Not a speed check: the bench's idle worker polls once an hour, so an execution
    // that waits many seconds to start was missed by NOTIFY (the regression this catches:
    // a notification that arrived while a claim ran was dropped when the claim came back
    // empty, and the task waited for the next lease sweep, 30 s later).
    let max = r["latency_ms"]["max"].as_f64().unwrap();
    assert!(
        max < 10_000.0,
        "an execution waited {max} ms to start: a wake-up was lost"
    );
    let left: i64 = db
        .client()
        .await
        .query_one("select count(*) from pgconductor._private_executions", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn a_result_jsonb_cannot_store_does_not_block_settling() {
    let db = TestDb::migrated().await;
    let poisoned = enqueue(&db, &["poisoned"]);
    let fine = enqueue(&db, &["fine"]);
    let out = work(
        &db,
        &[
            "--handler",
            r#"poisoned=printf '{"a": "\u0000"}'; printf 'bad\000byte' >&2"#,
            "--handler",
            r#"fine=echo '{"ok": true}'"#,
        ],
    );
    out.ok();
    let r = row(&db, poisoned).await;
    assert_eq!(r.status, "completed");
    assert_eq!(r.result, None, "a result jsonb refuses is not stored");
    assert_eq!(
        row(&db, fine).await.result,
        Some(serde_json::json!({"ok": true}))
    );
}

#[tokio::test]
async fn a_second_signal_stops_handlers_at_once_and_releases_their_executions() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, &["stubborn"]);
    let started = std::env::temp_dir().join(format!("pgc-twice-{id}"));
    let script = format!(
        "cat >/dev/null; trap '' TERM; touch {}; sleep 30",
        started.display()
    );
    let mut w = spawn_worker(
        &db,
        &[
            "--shutdown-timeout",
            "1h",
            "--kill-grace",
            "300ms",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    wait_for(Duration::from_secs(20), "the task to start", || async {
        started.exists()
    })
    .await;
    signal(&w, nix::sys::signal::Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&w, nix::sys::signal::Signal::SIGTERM);
    // With a one-hour shutdown timeout only the second signal can end it this soon.
    let start = Instant::now();
    let status = loop {
        if let Some(st) = w.try_wait().unwrap() {
            break st;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the worker did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    let r = row(&db, id).await;
    assert_eq!(r.status, "pending", "released, not failed");
    assert_eq!(r.attempts, 0);
    let _ = std::fs::remove_file(&started);
}

#[tokio::test]
async fn prefetched_executions_run_once_and_are_given_back_unused_at_shutdown() {
    let db = TestDb::migrated().await;
    enqueue_many(&db, "quick", 300);
    work(
        &db,
        &["--concurrency", "4", "--prefetch", "8", "--", "true"],
    )
    .ok();
    completed_once(&db, 300).await;

    // One slot, four claimed ahead: at shutdown the four go back unused.
    let db = TestDb::migrated().await;
    let ids: Vec<Uuid> = (0..5).map(|_| enqueue(&db, &["slow"])).collect();
    let started = std::env::temp_dir().join(format!("pgc-prefetch-{}", ids[0]));
    let script = format!("cat >/dev/null; touch {}; sleep 30", started.display());
    let mut w = spawn_worker(
        &db,
        &[
            "--concurrency",
            "1",
            "--prefetch",
            "4",
            "--shutdown-timeout",
            "200ms",
            "--kill-grace",
            "200ms",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    wait_for(
        Duration::from_secs(20),
        "the first task to start",
        || async { started.exists() },
    )
    .await;
    // Given back, they wake the queue's idle workers as an enqueue would.
    let (listener, mut conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(msg)) = futures_util::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener
        .batch_execute("listen pgconductor_enqueued")
        .await
        .unwrap();
    signal(&w, nix::sys::signal::Signal::SIGTERM);
    assert!(w.wait().unwrap().success());
    let woken = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no notification within 10 s of the worker's exit")
        .unwrap();
    assert_eq!(
        woken,
        ("pgconductor_enqueued".to_string(), "default".to_string())
    );
    let client = db.client().await;
    let r = client
        .query_one(
            "select count(*) filter (where status = 'pending' and attempts = 0 and locked_by is null),
                    (select count(*) from pgconductor._private_attempts)
             from pgconductor._private_executions",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        r.get::<_, i64>(0),
        5,
        "all five are pending again with no attempt used"
    );
    assert_eq!(
        r.get::<_, i64>(1),
        1,
        "only the started one has a (released) attempt"
    );
    let _ = std::fs::remove_file(&started);
}

/// A completions batch is sent with its commit; after an error the worker sends it
/// again, not knowing whether the commit went through. The repeat finds no lease on an
/// execution the first try completed; asked which of those are completed under the
/// generation it held, the database names exactly them, and the row is left as the
/// first try wrote it.
#[tokio::test]
async fn a_completion_sent_again_after_its_commit_is_found_completed_under_its_lease() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, &["again"]);
    let other = enqueue(&db, &["again"]);
    let client = db.client().await;
    let worker = Uuid::new_v4();
    client
        .execute(
            "update pgconductor._private_executions
             set status = 'running', locked_by = $1, locked_until = now() + interval '1 minute',
                 lease_generation = 3, attempts = 1
             where id = any($2)",
            &[&worker, &vec![id, other]],
        )
        .await
        .unwrap();
    let complete = |ids: Vec<Uuid>| {
        let client = &client;
        async move {
            let generations = vec![3; ids.len()];
            let results: Vec<Option<String>> = vec![Some("{\"n\": 1}".into()); ids.len()];
            let tids: Vec<Option<pgc::tid::Tid>> = vec![None; ids.len()];
            let row = client
                .query_one(
                    pgc::sql::COMPLETE,
                    &[&worker, &ids, &generations, &results, &tids],
                )
                .await
                .unwrap();
            let settled: Vec<Uuid> = row.get::<_, Option<Vec<Uuid>>>(0).unwrap_or_default();
            (settled, row.get::<_, Option<String>>(1).is_some())
        }
    };
    let completed_under = |ids: Vec<Uuid>, generations: Vec<i32>| {
        let client = &client;
        async move {
            let mut found: Vec<Uuid> = client
                .query(pgc::sql::COMPLETED_UNDER, &[&ids, &generations])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            found.sort();
            found
        }
    };
    assert_eq!(complete(vec![id]).await, (vec![id], true));
    let finished: chrono::DateTime<chrono::Utc> = client
        .query_one(
            "select finished_at from pgconductor._private_executions where id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    // The repeat: the lease is gone, nothing settles, no one is woken.
    assert_eq!(complete(vec![id]).await, (vec![], false));
    // Completed under generation 3, not 2; the other one is still running.
    assert_eq!(completed_under(vec![id, other], vec![3, 3]).await, vec![id]);
    assert_eq!(completed_under(vec![id], vec![2]).await, Vec::<Uuid>::new());
    let row = client
        .query_one(
            "select status, finished_at, result::text from pgconductor._private_executions where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "completed");
    assert_eq!(row.get::<_, chrono::DateTime<chrono::Utc>>(1), finished);
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some("{\"n\": 1}")
    );
}

/// Begins a transaction on `client` and claims up to `limit` due executions of the
/// default queue in it, from the beginning of the queue.
async fn begin_claim(client: &tokio_postgres::Client, limit: i64) -> Vec<tokio_postgres::Row> {
    let none: Vec<Option<i32>> = vec![None];
    let no_time: Vec<Option<chrono::DateTime<chrono::Utc>>> = vec![None];
    let no_id: Vec<Option<Uuid>> = vec![None];
    client.batch_execute("begin").await.unwrap();
    client
        .query(
            pgc::sql::CLAIM,
            &[
                &vec!["default".to_string()],
                &limit,
                &None::<Vec<String>>,
                &none,
                &no_time,
                &no_id,
            ],
        )
        .await
        .unwrap()
}

/// A claim locks its rows in an open transaction and writes nothing (other claims pass
/// over them, other sessions see them pending); recording it finishes an attempt that
/// completed meanwhile with one write, and leases the rest at new addresses. A settle
/// finds each leased row at that address, and by id when the row has moved since (a
/// lease renewal writes a new version); an address that holds some other row, or a
/// stale generation, settles nothing.
#[tokio::test]
async fn claims_finish_what_completed_and_lease_the_rest_at_addresses_settles_use() {
    let db = TestDb::migrated().await;
    let ids: Vec<Uuid> = (0..4).map(|_| enqueue(&db, &["addr"])).collect();
    let client = db.client().await;
    let other = db.client().await;
    let worker = Uuid::new_v4();
    let rows = begin_claim(&client, 3).await;
    let got: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(got, ids[..3], "the oldest first");
    // (generation, span id, address) as the claim returned them.
    let claimed: std::collections::HashMap<Uuid, (i32, String, pgc::tid::Tid)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(7), r.get(8), r.get(13))))
        .collect();
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    // Another claim passes over the locked rows, and rolled back leaves its row as it was.
    let beside: Vec<Uuid> = begin_claim(&other, 10)
        .await
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(beside, vec![ids[3]]);
    other.batch_execute("rollback").await.unwrap();
    let state = |id: Uuid| {
        let other = &other;
        async move {
            let r = other
                .query_one(
                    "select status, attempts, lease_generation, attempt_span_id, result::text,
                            locked_by, ctid
                     from pgconductor._private_executions where id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            (
                r.get::<_, String>(0),
                r.get::<_, i32>(1),
                r.get::<_, i32>(2),
                r.get::<_, Option<String>>(3),
                r.get::<_, Option<String>>(4),
                r.get::<_, Option<Uuid>>(5),
                r.get::<_, pgc::tid::Tid>(6),
            )
        }
    };
    for id in &ids {
        let s = state(*id).await;
        assert_eq!(
            (s.0.as_str(), s.1, s.2, s.3),
            ("pending", 0, 0, None),
            "untouched"
        );
    }
    assert_eq!(claimed[&a].0, 1, "the next lease generation");
    // a completed within the claim's transaction; b and c are still running.
    let row = client
        .query_one(
            pgc::sql::SETTLE_CLAIMED,
            &[
                &worker,
                &60.0f64,
                &vec![claimed[&a].2],
                &vec![a],
                &vec![claimed[&a].1.clone()],
                &vec![Some("{\"n\": 1}")],
                &vec![claimed[&b].2, claimed[&c].2],
                &vec![b, c],
                &vec![claimed[&b].1.clone(), claimed[&c].1.clone()],
            ],
        )
        .await
        .unwrap();
    client.batch_execute("commit").await.unwrap();
    assert_eq!(row.get::<_, Option<Vec<Uuid>>>(0), Some(vec![a]));
    let leased: std::collections::HashMap<Uuid, pgc::tid::Tid> = row
        .get::<_, Vec<Uuid>>(1)
        .into_iter()
        .zip(row.get::<_, Vec<pgc::tid::Tid>>(2))
        .collect();
    let s = state(a).await;
    assert_eq!(
        (s.0.as_str(), s.1, s.2, s.3, s.4.as_deref(), s.5),
        (
            "completed",
            1,
            1,
            Some(claimed[&a].1.clone()),
            Some("{\"n\": 1}"),
            None
        )
    );
    for id in [b, c] {
        let s = state(id).await;
        assert_eq!(
            (s.0.as_str(), s.1, s.2, s.3, s.5),
            ("running", 1, 1, Some(claimed[&id].1.clone()), Some(worker))
        );
        assert_eq!(s.6, leased[&id], "the lease returns the new address");
    }
    assert_eq!(state(ids[3]).await.0, "pending");
    let address = |id: Uuid| {
        let client = &client;
        async move {
            client
                .query_one(
                    "select ctid from pgconductor._private_executions where id = $1",
                    &[&id],
                )
                .await
                .unwrap()
                .get::<_, pgc::tid::Tid>(0)
        }
    };
    // b's lease is renewed: a new version at a new address.
    client
        .execute(
            pgc::sql::RENEW,
            &[&worker, &vec![b], &vec![claimed[&b].0], &60.0f64],
        )
        .await
        .unwrap();
    assert_ne!(address(b).await, leased[&b]);
    let complete = |ids: Vec<Uuid>, generations: Vec<i32>, tids: Vec<Option<pgc::tid::Tid>>| {
        let client = &client;
        async move {
            let results: Vec<Option<String>> = vec![None; ids.len()];
            let mut settled: Vec<Uuid> = client
                .query_one(
                    pgc::sql::COMPLETE,
                    &[&worker, &ids, &generations, &results, &tids],
                )
                .await
                .unwrap()
                .get::<_, Option<Vec<Uuid>>>(0)
                .unwrap_or_default();
            settled.sort();
            settled
        }
    };
    // c at b's old address and b at c's: the rows there are not theirs, so they are
    // looked up by id; with a stale generation, nothing settles.
    let swapped = vec![Some(leased[&c]), Some(leased[&b])];
    assert_eq!(
        complete(vec![b, c], vec![0, 0], swapped).await,
        Vec::<Uuid>::new()
    );
    let mut both = vec![b, c];
    both.sort();
    let generations = vec![claimed[&b].0, claimed[&c].0];
    let tids = vec![Some(leased[&b]), Some(leased[&c])];
    assert_eq!(
        complete(vec![b, c], generations.clone(), tids.clone()).await,
        both,
        "c at its address, b by id"
    );
    for id in [b, c] {
        assert_eq!(state(id).await.0, "completed");
    }
    // Settled once: sent again, nothing settles.
    assert_eq!(
        complete(vec![b, c], generations, tids).await,
        Vec::<Uuid>::new()
    );
}

/// What a claim whose answer was lost did is read back by the span ids it drew, after
/// its backend is ended: an open claim's backend ends and its rows are free again; a
/// recorded one is found completed or leased, and a span it did not draw finds nothing.
#[tokio::test]
async fn a_lost_claim_is_ended_and_read_back_by_its_span_ids() {
    let db = TestDb::migrated().await;
    let ids: Vec<Uuid> = (0..2).map(|_| enqueue(&db, &["lost"])).collect();
    let client = db.client().await;
    let other = db.client().await;
    // An open claim's backend, ended from another session: its rows are free again.
    assert_eq!(begin_claim(&client, 10).await.len(), 2);
    let backend = client.query_one(pgc::sql::BACKEND, &[]).await.unwrap();
    let (pid, started): (i32, chrono::DateTime<chrono::Utc>) = (backend.get(0), backend.get(1));
    let ended = other
        .query(pgc::sql::END_BACKEND, &[&pid, &started])
        .await
        .unwrap();
    assert_eq!(ended.len(), 1);
    assert!(ended[0].get::<_, bool>(0));
    assert!(client.query_one("select 1", &[]).await.is_err(), "ended");
    // Not one started at another time.
    assert!(
        other
            .query(
                pgc::sql::END_BACKEND,
                &[&pid, &(started - chrono::TimeDelta::seconds(1))]
            )
            .await
            .unwrap()
            .is_empty()
    );
    let rows = begin_claim(&other, 10).await;
    assert_eq!(rows.len(), 2, "the ended claim's rows are free");
    let worker = Uuid::new_v4();
    let (a, b) = (rows[0].get::<_, Uuid>(0), rows[1].get::<_, Uuid>(0));
    let span = |i: usize| rows[i].get::<_, String>(8);
    let tid = |i: usize| rows[i].get::<_, pgc::tid::Tid>(13);
    other
        .query_one(
            pgc::sql::SETTLE_CLAIMED,
            &[
                &worker,
                &60.0f64,
                &vec![tid(0)],
                &vec![a],
                &vec![span(0)],
                &vec![None::<String>],
                &vec![tid(1)],
                &vec![b],
                &vec![span(1)],
            ],
        )
        .await
        .unwrap();
    other.batch_execute("commit").await.unwrap();
    let read = |spans: Vec<String>| {
        let other = &other;
        let ids = vec![a, b];
        async move {
            let mut found: Vec<(Uuid, String)> = other
                .query(pgc::sql::CLAIM_RECORDED, &[&ids, &spans])
                .await
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            found.sort();
            found
        }
    };
    let mut expected = vec![(a, "completed".to_string()), (b, "running".to_string())];
    expected.sort();
    assert_eq!(read(vec![span(0), span(1)]).await, expected);
    assert_eq!(
        read(vec!["0000000000000001".into(), span(1)]).await,
        vec![(b, "running".to_string())],
        "a span the claim did not draw"
    );
    assert!(ids.contains(&a) && ids.contains(&b));
}

/// A log line that cannot be written (stderr's reader went away) costs the line, not
/// the work: the worker goes on, settles, and exits with the work's code.
#[tokio::test]
async fn a_worker_whose_stderr_reader_went_away_still_finishes_its_work() {
    let db = TestDb::migrated().await;
    let failing = enqueue(&db, &["loud", "--max-attempts", "2"]);
    let fine = enqueue(&db, &["quiet"]);
    let mut w = db
        .pgc()
        .args([
            "work",
            "--until-empty",
            "--retry-delay",
            "10ms",
            "--handler",
            "loud=echo oops >&2; exit 1",
            "--handler",
            "quiet=echo done >&2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the worker writes anything.
    drop(w.stderr.take());
    let started = Instant::now();
    let status = loop {
        if let Some(s) = w.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = w.kill();
            let _ = w.wait();
            panic!("the worker did not finish within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(1), "one execution failed");
    let (failed, done) = (row(&db, failing).await, row(&db, fine).await);
    assert_eq!((failed.status.as_str(), failed.attempts), ("failed", 2));
    assert_eq!(done.status, "completed");
}

/// Each retry a worker schedules wakes it when due, not only the earliest of them: with
/// polling set far off, three executions that fail once each (in separate settles, so
/// with separate due times) all run again and the queue drains long before a poll.
#[tokio::test]
async fn every_retry_a_worker_schedules_wakes_it_when_due() {
    let db = TestDb::migrated().await;
    let dir = tempfile_dir("retry-wakes");
    let ids: Vec<Uuid> = (0..3).map(|_| enqueue(&db, &["flaky"])).collect();
    let handler = format!(
        "flaky=f={}/$PGC_EXECUTION_ID; if [ -e $f ]; then exit 0; fi; touch $f; exit 1",
        dir.display()
    );
    let started = Instant::now();
    let out = run(
        &mut db.pgc(),
        &[
            "work",
            "--until-empty",
            "--concurrency",
            "1",
            "--retry-delay",
            "300ms",
            "--poll-interval",
            "60s",
            // Recovery sweeps (every half lease) claim too: keep them out of the way.
            "--lease",
            "10m",
            "--handler",
            &handler,
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the retries waited for a poll: {:?}",
        started.elapsed()
    );
    for id in ids {
        let r = row(&db, id).await;
        assert_eq!((r.status.as_str(), r.attempts), ("completed", 2));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory under the system's temporary one.
fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pgc-{name}-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
