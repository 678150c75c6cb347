//! `pgc step`: memoized steps, run directly and inside a real worker.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use uuid::Uuid;

use crate::support::{Run, TestDb, pgc_cmd, run};

const CALLER: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const CALLER_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

fn enqueue(db: &TestDb, task: &str) -> Uuid {
    let out = run(&mut db.pgc(), &["enqueue", task]);
    Uuid::parse_str(out.ok().stdout.trim()).unwrap()
}

/// `pgc` as a handler of execution `id` in attempt `attempt` would run it.
fn in_handler(db: &TestDb, id: Uuid, attempt: u32) -> Command {
    let mut cmd = db.pgc();
    cmd.env("PGC_EXECUTION_ID", id.to_string())
        .env("PGC_ATTEMPT", attempt.to_string());
    cmd
}

/// A marker file of this test's own, which step commands append a line to when they run.
fn marker(id: Uuid, what: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("pgc-step-{id}-{what}"));
    let _ = std::fs::remove_file(&path);
    path
}

fn lines(path: &PathBuf) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[derive(Debug)]
struct StepRow {
    attempt: i32,
    name: String,
    span_id: String,
    status: String,
    output: Option<Vec<u8>>,
    exit_code: Option<i32>,
    ordered: bool,
}

async fn steps(db: &TestDb, id: Uuid) -> Vec<StepRow> {
    db.client()
        .await
        .query(
            "select attempt, name, span_id, status, output, exit_code,
                    started_at <= finished_at
             from pgconductor._private_steps where execution_id = $1
             order by attempt, name",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| StepRow {
            attempt: r.get(0),
            name: r.get(1),
            span_id: r.get(2),
            status: r.get(3),
            output: r.get(4),
            exit_code: r.get(5),
            ordered: r.get(6),
        })
        .collect()
}

fn is_span_id(s: &str) -> bool {
    s.len() == 16
        && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && s != "0000000000000000"
}

fn one_error_line(out: &Run, needle: &str) {
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.starts_with("pgc: error: "), "{}", out.stderr);
    assert!(out.stderr.contains(needle), "{}", out.stderr);
}

/// An execution id that names nothing (a made-up or stale PGC_EXECUTION_ID) is refused
/// before the command runs, and nothing is recorded.
#[tokio::test]
async fn a_step_of_an_execution_that_does_not_exist_is_refused() {
    let db = TestDb::migrated().await;
    let id = Uuid::now_v7();
    let ran = marker(id, "ghost");
    let out = run(
        &mut in_handler(&db, id, 1),
        &[
            "step",
            "ghost",
            "--",
            "sh",
            "-c",
            &format!("echo x >> {}", ran.display()),
        ],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    one_error_line(
        &out,
        &format!("PGC_EXECUTION_ID names no execution in this database: {id}"),
    );
    assert!(!ran.exists(), "the command ran");
    assert!(steps(&db, id).await.is_empty());
}

#[test]
fn outside_a_handler_or_with_bad_input_it_exits_2_before_connecting() {
    // Nothing listens there: every check below happens before connecting.
    let nowhere = || {
        let mut cmd = pgc_cmd();
        cmd.env("DATABASE_URL", "postgres://x@127.0.0.1:1/x");
        cmd
    };
    let id = Uuid::now_v7().to_string();

    let out = run(&mut nowhere(), &["step", "x", "--", "true"]);
    one_error_line(
        &out,
        "pgc step runs inside a pgc work handler: PGC_EXECUTION_ID is not set",
    );

    let out = run(
        nowhere()
            .env("PGC_EXECUTION_ID", "nope")
            .env("PGC_ATTEMPT", "1"),
        &["step", "x", "--", "true"],
    );
    one_error_line(&out, "PGC_EXECUTION_ID is not a UUID");

    let out = run(
        nowhere().env("PGC_EXECUTION_ID", &id),
        &["step", "x", "--", "true"],
    );
    one_error_line(&out, "PGC_ATTEMPT is not set");

    for bad in ["0", "-1", "x", "1.5"] {
        let out = run(
            nowhere()
                .env("PGC_EXECUTION_ID", &id)
                .env("PGC_ATTEMPT", bad),
            &["step", "x", "--", "true"],
        );
        one_error_line(&out, "PGC_ATTEMPT must be a positive integer");
    }

    let long = "n".repeat(257);
    for (name, needle) in [
        ("", "step name must not be empty"),
        (long.as_str(), "at most 256"),
        ("a\nb", "control characters"),
    ] {
        let out = run(
            nowhere()
                .env("PGC_EXECUTION_ID", &id)
                .env("PGC_ATTEMPT", "1"),
            &["step", name, "--", "true"],
        );
        one_error_line(&out, needle);
    }

    // No command: a usage error from clap.
    let out = run(
        nowhere()
            .env("PGC_EXECUTION_ID", &id)
            .env("PGC_ATTEMPT", "1"),
        &["step", "x"],
    );
    one_error_line(&out, "COMMAND");
}

#[tokio::test]
async fn a_completed_step_is_not_run_again_and_its_output_is_replayed() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, "t");
    let m = marker(id, "fetch");
    let script = format!("echo run >> '{}'; echo data", m.display());
    let args = ["step", "fetch", "--", "sh", "-c", &script];

    let out = run(in_handler(&db, id, 1).env("TRACEPARENT", CALLER), &args);
    out.ok();
    assert_eq!(out.stdout, "data\n");
    assert_eq!(lines(&m), 1);
    let rows = steps(&db, id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    let r = &rows[0];
    assert_eq!(
        (r.attempt, r.name.as_str(), r.status.as_str()),
        (1, "fetch", "completed")
    );
    assert_eq!(r.output.as_deref(), Some(&b"data\n"[..]));
    assert_eq!(r.exit_code, Some(0));
    assert!(is_span_id(&r.span_id), "{}", r.span_id);
    assert_ne!(r.span_id, CALLER_SPAN);
    assert!(r.ordered);

    // A later attempt: the output comes back, the command does not run.
    let out = run(in_handler(&db, id, 2).env("TRACEPARENT", CALLER), &args);
    out.ok();
    assert_eq!(out.stdout, "data\n");
    assert_eq!(out.stderr, "");
    assert_eq!(lines(&m), 1, "the step ran again");
    assert_eq!(steps(&db, id).await.len(), 1);

    // Memoized per execution: another execution runs its own step of the same name.
    let other = enqueue(&db, "t");
    let out = run(&mut in_handler(&db, other, 1), &args);
    out.ok();
    assert_eq!(lines(&m), 2);
    let _ = std::fs::remove_file(&m);
}

#[tokio::test]
async fn binary_output_is_stored_and_replayed_byte_for_byte() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, "t");
    let args = ["step", "bin", "--", "printf", r"\000\377a\nb"];
    let first = in_handler(&db, id, 1).args(args).output().unwrap();
    assert!(first.status.success());
    assert_eq!(first.stdout, b"\x00\xffa\nb");
    let again = in_handler(&db, id, 2).args(args).output().unwrap();
    assert!(again.status.success());
    assert_eq!(again.stdout, first.stdout);
}

#[tokio::test]
async fn a_failing_step_passes_its_exit_through_and_runs_again() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, "t");
    let m = marker(id, "flaky");
    let script = format!("echo run >> '{}'; echo partial; exit 4", m.display());
    let args = ["step", "flaky", "--", "sh", "-c", &script];

    let out = run(&mut in_handler(&db, id, 1), &args);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.stdout, "partial\n");
    assert_eq!(out.stderr, "");
    let rows = steps(&db, id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, "failed");
    assert_eq!(rows[0].exit_code, Some(4));
    assert_eq!(rows[0].output, None);
    let first_span = rows[0].span_id.clone();

    // Not memoized: it runs again (the same attempt's record is replaced).
    let out = run(&mut in_handler(&db, id, 1), &args);
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert_eq!(out.stdout, "partial\n");
    assert_eq!(lines(&m), 2);
    let rows = steps(&db, id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_ne!(rows[0].span_id, first_span);

    // And in the next attempt, where it may complete.
    let out = run(
        &mut in_handler(&db, id, 2),
        &["step", "flaky", "--", "sh", "-c", "echo fixed"],
    );
    out.ok();
    assert_eq!(out.stdout, "fixed\n");
    let rows = steps(&db, id).await;
    let summary: Vec<_> = rows
        .iter()
        .map(|r| (r.attempt, r.status.as_str(), r.exit_code))
        .collect();
    assert_eq!(summary, [(1, "failed", Some(4)), (2, "completed", Some(0))]);
    let _ = std::fs::remove_file(&m);
}

#[tokio::test]
async fn signals_and_commands_that_cannot_start_exit_like_a_shell() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, "t");

    let out = run(
        &mut in_handler(&db, id, 1),
        &["step", "killed", "--", "sh", "-c", "kill -TERM $$"],
    );
    assert_eq!(out.code, 128 + 15, "{}", out.stderr);
    let rows = steps(&db, id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0].status.as_str(), rows[0].exit_code),
        ("failed", Some(143))
    );

    let out = run(
        &mut in_handler(&db, id, 1),
        &["step", "missing", "--", "pgc-no-such-command-here"],
    );
    assert_eq!(out.code, 127, "{}", out.stderr);
    assert!(out.stdout.is_empty());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .starts_with("pgc: error: step \"missing\": could not start pgc-no-such-command-here"),
        "{}",
        out.stderr
    );

    let out = run(
        &mut in_handler(&db, id, 1),
        &["step", "not-executable", "--", "/dev/null"],
    );
    assert_eq!(out.code, 126, "{}", out.stderr);
    assert_eq!(
        steps(&db, id).await.len(),
        1,
        "unstarted runs are not recorded"
    );
}

#[tokio::test]
async fn the_step_command_gets_the_step_span_in_traceparent() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, "t");

    let out = run(
        in_handler(&db, id, 1).env("TRACEPARENT", CALLER),
        &["step", "s", "--", "sh", "-c", "echo $TRACEPARENT"],
    );
    out.ok();
    let span = steps(&db, id).await[0].span_id.clone();
    assert_eq!(out.stdout, format!("00-{CALLER_TRACE}-{span}-01\n"));
    assert_ne!(span, CALLER_SPAN);

    // An enqueue inside the step is a child of the execution and of the step's span.
    let pgc = env!("CARGO_BIN_EXE_pgc");
    let out = run(
        in_handler(&db, id, 1).env("TRACEPARENT", CALLER),
        &["step", "fan-out", "--", pgc, "enqueue", "child"],
    );
    out.ok();
    let child = Uuid::parse_str(out.stdout.trim()).unwrap();
    let step_span = steps(&db, id)
        .await
        .into_iter()
        .find(|r| r.name == "fan-out")
        .unwrap()
        .span_id;
    let row = db
        .client()
        .await
        .query_one(
            "select parent_execution_id, parent_span_id, trace_context
             from pgconductor._private_executions where id = $1",
            &[&child],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<Uuid>>(0), Some(id));
    assert_eq!(row.get::<_, Option<String>>(1), Some(step_span));
    let tc: Value = row.get(2);
    assert!(
        tc["traceparent"]
            .as_str()
            .unwrap()
            .starts_with(&format!("00-{CALLER_TRACE}-")),
        "{tc}"
    );

    // Without a TRACEPARENT there is none to hand on; an invalid one is left as it is.
    let out = run(
        &mut in_handler(&db, id, 1),
        &[
            "step",
            "no-trace",
            "--",
            "sh",
            "-c",
            "echo \"[$TRACEPARENT]\"",
        ],
    );
    out.ok();
    assert_eq!(out.stdout, "[]\n");
    let out = run(
        in_handler(&db, id, 1).env("TRACEPARENT", "garbage"),
        &[
            "step",
            "bad-trace",
            "--",
            "sh",
            "-c",
            "echo \"[$TRACEPARENT]\"",
        ],
    );
    out.ok();
    assert_eq!(out.stdout, "[garbage]\n");
    assert!(
        out.stderr.contains("warning: ignoring invalid TRACEPARENT"),
        "{}",
        out.stderr
    );
    let rows = steps(&db, id).await;
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| is_span_id(&r.span_id)), "{rows:?}");
}

#[tokio::test]
async fn inside_a_worker_a_step_is_not_run_again_on_retry() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, "t");
    let m = marker(id, "prepare");
    let pgc = env!("CARGO_BIN_EXE_pgc");
    // Attempt 1 runs the step and then fails; attempt 2 gets the step's stored output
    // (which becomes the handler's stdout, so the result) and succeeds.
    let handler = format!(
        r#"t="{pgc}" step prepare -- sh -c 'echo once >> "$1"; echo "{{\"prepared\": 1}}"' sh "{}" || exit 1; [ "$PGC_ATTEMPT" = 1 ] && exit 1; exit 0"#,
        m.display()
    );
    let out = run(
        &mut db.pgc(),
        &[
            "work",
            "--until-empty",
            "--retry-delay",
            "10ms",
            "--poll-interval",
            "100ms",
            "--handler",
            &handler,
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let r = db
        .client()
        .await
        .query_one(
            "select status, attempts, result from pgconductor._private_executions
             where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "completed");
    assert_eq!(r.get::<_, i32>(1), 2);
    assert_eq!(
        r.get::<_, Option<Value>>(2),
        Some(serde_json::json!({"prepared": 1}))
    );
    assert_eq!(lines(&m), 1, "the step ran again on the retry");
    let rows = steps(&db, id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!((rows[0].attempt, rows[0].status.as_str()), (1, "completed"));
    let _ = std::fs::remove_file(&m);
}

#[tokio::test]
async fn output_over_the_cap_is_passed_through_but_fails_the_step() {
    let db = TestDb::migrated().await;
    let id = enqueue(&db, "t");
    let size = (16 << 20) + 1;
    let out = in_handler(&db, id, 1)
        .args([
            "step",
            "big",
            "--",
            "head",
            "-c",
            &size.to_string(),
            "/dev/zero",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(out.stdout.len(), size, "everything is passed through");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("more than 16 MiB"), "{stderr}");
    let rows = steps(&db, id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (
            rows[0].status.as_str(),
            rows[0].exit_code,
            rows[0].output.is_none()
        ),
        ("failed", Some(0), true)
    );
}

#[tokio::test]
async fn a_step_stopped_by_a_signal_is_recorded_as_failed_and_its_span_reported() {
    use std::os::unix::process::CommandExt;
    let db = TestDb::migrated().await;
    let id = enqueue(&db, "t");
    let started = marker(id, "started");
    let mut cmd = in_handler(&db, id, 1);
    cmd.env("TRACEPARENT", CALLER)
        .env("OTEL_TRACES_EXPORTER", "console")
        .args([
            "step",
            "slow",
            "--",
            "sh",
            "-c",
            r#"touch "$1"; exec sleep 30"#,
            "sh",
        ])
        .arg(&started)
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = cmd.spawn().unwrap();
    // Once the command runs, stop the whole group, as the worker stops a handler.
    for _ in 0..600 {
        if started.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(started.exists(), "the step's command never started");
    let pgid = nix::unistd::Pid::from_raw(-i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pgid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&started);
    assert_eq!(out.status.code(), Some(128 + 15), "{out:?}");
    let rows = steps(&db, id).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].status, "failed");
    assert_eq!(rows[0].exit_code, Some(143));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let span: Value = serde_json::from_str(stderr.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert_eq!(span["span_id"], rows[0].span_id);
    assert_eq!(span["parent_span_id"], CALLER_SPAN);
    assert_eq!(span["status"], "error");
}
