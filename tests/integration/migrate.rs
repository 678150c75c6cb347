//! `pgc migrate`: apply, re-run, concurrency, checksums, status, dry run, version checks.

use crate::support::{TestDb, run};

async fn applied_versions(db: &TestDb) -> Vec<i32> {
    let client = db.client().await;
    client
        .query(
            "select version from pgconductor.schema_migrations order by version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn latest() -> i32 {
    pgc::migrate::latest_version()
}

#[tokio::test]
async fn migrate_applies_everything_then_is_a_no_op() {
    let db = TestDb::empty().await;
    let first = run(&mut db.pgc(), &["migrate"]);
    first.ok();
    assert!(
        first.stderr.contains("applied migration 0001 executions"),
        "{}",
        first.stderr
    );
    assert_eq!(
        applied_versions(&db).await,
        (1..=latest()).collect::<Vec<_>>()
    );

    let again = run(&mut db.pgc(), &["migrate", "--json"]);
    again.ok();
    let doc: serde_json::Value = serde_json::from_str(&again.stdout).unwrap();
    assert_eq!(doc["applied"], serde_json::json!([]));
    assert_eq!(doc["version"], latest());
    assert_eq!(
        applied_versions(&db).await,
        (1..=latest()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn four_concurrent_migrates_apply_each_migration_once_and_all_succeed() {
    let db = TestDb::empty().await;
    let children: Vec<_> = (0..4)
        .map(|_| {
            db.pgc()
                .args(["migrate", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut total_applied = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a concurrent migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        total_applied += doc["applied"].as_array().unwrap().len();
    }
    assert_eq!(total_applied, pgc::migrate::MIGRATIONS.len());
    assert_eq!(
        applied_versions(&db).await,
        (1..=latest()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn status_shows_pending_then_applied_as_table_and_json() {
    let db = TestDb::empty().await;
    let before = run(&mut db.pgc(), &["migrate", "--status", "--json"]);
    before.ok();
    let doc: serde_json::Value = serde_json::from_str(&before.stdout).unwrap();
    assert_eq!(doc[0]["version"], 1);
    assert_eq!(doc[0]["state"], "pending");
    assert_eq!(doc[0]["applied_at"], serde_json::Value::Null);
    // --status changes nothing: not even the bookkeeping table exists.
    let client = db.client().await;
    let schema: Option<String> = client
        .query_one("select to_regnamespace('pgconductor')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(schema, None);

    run(&mut db.pgc(), &["migrate"]).ok();
    let table = run(&mut db.pgc(), &["migrate", "--status"]);
    table.ok();
    assert!(table.stdout.contains("0001"), "{}", table.stdout);
    assert!(table.stdout.contains("executions"));
    assert!(table.stdout.contains("applied"));
    assert!(!table.stdout.contains("pending"));
    let after: serde_json::Value =
        serde_json::from_str(&run(&mut db.pgc(), &["migrate", "--status", "--json"]).stdout)
            .unwrap();
    assert_eq!(after[0]["state"], "applied");
    assert!(after[0]["applied_at"].is_string());
}

#[tokio::test]
async fn dry_run_prints_the_sql_and_changes_nothing() {
    let db = TestDb::empty().await;
    let out = run(&mut db.pgc(), &["migrate", "--dry-run"]);
    out.ok();
    assert!(
        out.stdout.contains("-- 0001_executions.sql"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("create table pgconductor._private_executions")
    );
    let client = db.client().await;
    let schema: Option<String> = client
        .query_one("select to_regnamespace('pgconductor')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(schema, None, "--dry-run created the schema");

    run(&mut db.pgc(), &["migrate"]).ok();
    let nothing = run(&mut db.pgc(), &["migrate", "--dry-run"]);
    nothing.ok();
    assert_eq!(nothing.stdout, "");
    assert!(nothing.stderr.contains("up to date"));
}

#[tokio::test]
async fn a_changed_checksum_is_refused() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .execute(
            "update pgconductor.schema_migrations set checksum = 'x' where version = 1",
            &[],
        )
        .await
        .unwrap();
    let out = run(&mut db.pgc(), &["migrate"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains("migration 1 (executions) was applied with a different checksum"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    let status: serde_json::Value =
        serde_json::from_str(&run(&mut db.pgc(), &["migrate", "--status", "--json"]).stdout)
            .unwrap();
    assert_eq!(status[0]["state"], "checksum_mismatch");
    let dry = run(&mut db.pgc(), &["migrate", "--dry-run"]);
    assert_eq!(dry.code, 1);
}

#[tokio::test]
async fn commands_on_a_database_without_the_schema_say_run_pgc_migrate() {
    let db = TestDb::empty().await;
    let out = run(&mut db.pgc(), &["enqueue", "t"]);
    assert_eq!(out.code, 1);
    assert_eq!(
        out.stderr.trim(),
        "pgc: error: schema pgconductor is not installed in this database: run pgc migrate"
    );
}

#[tokio::test]
async fn a_schema_newer_than_this_pgc_is_reported() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .execute(
            "insert into pgconductor.schema_migrations (version, name, checksum) values (999, 'future', 'x')",
            &[],
        )
        .await
        .unwrap();
    let out = run(&mut db.pgc(), &["enqueue", "t"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("version 999, newer than this pgc"),
        "{}",
        out.stderr
    );
    let out = run(&mut db.pgc(), &["migrate"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("upgrade pgc"), "{}", out.stderr);
}

#[tokio::test]
async fn a_schema_behind_this_pgc_says_run_pgc_migrate() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    // Pretend the newest migration was never applied.
    client
        .execute(
            "update pgconductor.schema_migrations set version = 0 where version = $1",
            &[&latest()],
        )
        .await
        .unwrap();
    let out = run(&mut db.pgc(), &["enqueue", "t"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains(&format!("this pgc needs {}: run pgc migrate", latest())),
        "{}",
        out.stderr
    );
}
