//! The schema's lookups use their indexes: one trace's executions and the seed's
//! traceparent lookup are index scans, never table scans, and that index follows the
//! execution rows pgc writes and deletes.

use crate::support::{TestDb, run};

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

async fn plan(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> String {
    // A handful of rows would make any planner pick a scan; forbid it to see that the
    // index serves the query.
    client
        .batch_execute("set enable_seqscan = off")
        .await
        .unwrap();
    let stmt = format!("explain (costs off) {sql}");
    client
        .query(&stmt, params)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn every_execution_of_a_trace_is_found_through_the_traceparent_index() {
    let db = TestDb::migrated().await;
    let caller = format!("00-{TRACE}-b7ad6b7169203331-01");
    for _ in 0..3 {
        run(
            db.pgc().env("TRACEPARENT", &caller),
            &["enqueue", "in-trace"],
        )
        .ok();
    }
    for _ in 0..4 {
        run(&mut db.pgc(), &["enqueue", "elsewhere"]).ok();
    }
    // A row written by hand with a malformed carrier is stored and left out of the trace.
    let client = db.client().await;
    crate::support::write_by_hand(
        &client,
        r#"insert into pgconductor._private_executions (id, queue, task_key, trace_context)
           values (gen_random_uuid(), 'q', 'odd', '{"traceparent": "nonsense"}')"#,
    )
    .await
    .unwrap();

    let (lo, hi) = pgc::sql::trace_id_range(TRACE);
    let found = client
        .query(pgc::sql::EXECUTIONS_OF_TRACE, &[&lo, &hi])
        .await
        .unwrap();
    assert_eq!(found.len(), 3);
    let plan_text = plan(&client, pgc::sql::EXECUTIONS_OF_TRACE, &[&lo, &hi]).await;
    assert!(
        plan_text.contains("_private_traceparents_traceparent"),
        "{plan_text}"
    );
    assert!(!plan_text.contains("Seq Scan"), "{plan_text}");

    let tp: serde_json::Value = client
        .query_one("select trace_context from pgconductor._private_executions where task_key = 'in-trace' limit 1", &[])
        .await
        .unwrap()
        .get(0);
    let tp = tp["traceparent"].as_str().unwrap().to_string();
    let one = client
        .query(pgc::sql::EXECUTION_BY_TRACEPARENT, &[&tp])
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    let plan_text = plan(&client, pgc::sql::EXECUTION_BY_TRACEPARENT, &[&tp]).await;
    assert!(
        plan_text.contains("_private_traceparents_traceparent"),
        "{plan_text}"
    );
}

async fn pairs(client: &tokio_postgres::Client, sql: &str) -> Vec<(String, uuid::Uuid)> {
    client
        .query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// The traceparent index's rows, in order.
async fn traceparent_rows(client: &tokio_postgres::Client) -> Vec<(String, uuid::Uuid)> {
    pairs(
        client,
        "select traceparent, execution_id from pgconductor._private_traceparents
         order by traceparent, execution_id",
    )
    .await
}

/// What the traceparent index should hold: the executions' stored carriers, in order.
async fn stored_carriers(client: &tokio_postgres::Client) -> Vec<(String, uuid::Uuid)> {
    pairs(
        client,
        "select trace_context ->> 'traceparent', id from pgconductor._private_executions
         where trace_context ->> 'traceparent' is not null
         order by 1, 2",
    )
    .await
}

#[tokio::test]
async fn every_enqueue_indexes_its_traceparent_and_deletes_remove_it() {
    let db = TestDb::migrated().await;
    let client = db.client().await;
    // pgc's single enqueue, a deduplicated one (no row), and batches: one that crosses a
    // chunk of the index rows kept in memory, one in several transactions, and one whose
    // dedupe-keyed line ends a COPY in the middle.
    run(&mut db.pgc(), &["enqueue", "one"]).ok();
    run(&mut db.pgc(), &["enqueue", "keyed", "--dedupe-key", "k"]).ok();
    run(&mut db.pgc(), &["enqueue", "keyed", "--dedupe-key", "k"]).ok();
    let big: String = (0..10_050).map(|_| "{\"task\":\"a\"}\n").collect();
    crate::support::run_with_stdin(&mut db.pgc(), &["enqueue", "--batch", "-"], big.as_bytes())
        .ok();
    crate::support::run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "--batch", "-", "--commit-every", "2"],
        b"{\"task\":\"b\"}\n{\"task\":\"b\"}\n{\"task\":\"b\"}\n",
    )
    .ok();
    crate::support::run_with_stdin(
        &mut db.pgc(),
        &["enqueue", "--batch", "-"],
        b"{\"task\":\"c\"}\n{\"task\":\"c\",\"dedupe_key\":\"x\"}\n{\"task\":\"c\"}\n",
    )
    .ok();
    let rows = traceparent_rows(&client).await;
    assert_eq!(rows.len(), 2 + 10_050 + 3 + 3, "{}", rows.len());
    assert_eq!(rows, stored_carriers(&client).await);

    client
        .execute(
            "delete from pgconductor._private_executions where task_key in ('a', 'c')",
            &[],
        )
        .await
        .unwrap();
    let rows = traceparent_rows(&client).await;
    assert_eq!(rows.len(), 5, "{rows:?}");
    assert_eq!(rows, stored_carriers(&client).await);

    client
        .execute("truncate pgconductor._private_executions", &[])
        .await
        .unwrap();
    assert!(traceparent_rows(&client).await.is_empty());
}

#[tokio::test]
async fn migration_2_indexes_the_executions_stored_before_it() {
    let db = TestDb::empty().await;
    let client = db.client().await;
    // A database at version 1 with executions in it, as an earlier pgc left it.
    let first = &pgc::migrate::MIGRATIONS[0];
    client
        .batch_execute(pgc::sql::MIGRATE_BOOKKEEPING)
        .await
        .unwrap();
    client.batch_execute(first.sql).await.unwrap();
    client
        .execute(
            pgc::sql::MIGRATE_RECORD,
            &[&first.version, &first.name, &first.checksum(), &0i64],
        )
        .await
        .unwrap();
    client
        .execute(
            r#"insert into pgconductor._private_executions (id, queue, task_key, trace_context)
               select gen_random_uuid(), 'q', 't',
                      jsonb_build_object('traceparent',
                          '00-' || lpad(to_hex(i), 32, '0') || '-b7ad6b7169203331-01')
               from generate_series(1, 50) i"#,
            &[],
        )
        .await
        .unwrap();

    run(&mut db.pgc(), &["migrate"]).ok();
    let rows = traceparent_rows(&client).await;
    assert_eq!(rows.len(), 50);
    assert_eq!(rows, stored_carriers(&client).await);
    let (lo, hi) = pgc::sql::trace_id_range(&format!("{:032x}", 7));
    let found = client
        .query(pgc::sql::EXECUTIONS_OF_TRACE, &[&lo, &hi])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
}
