//! The schema's lookups use their indexes: one trace's executions and the seed's
//! traceparent lookup are index scans, never table scans.

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
    client
        .execute(
            r#"insert into pgconductor._private_executions (id, queue, task_key, trace_context)
               values (gen_random_uuid(), 'q', 'odd', '{"traceparent": "nonsense"}')"#,
            &[],
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
        plan_text.contains("_private_executions_traceparent"),
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
        plan_text.contains("_private_executions_traceparent"),
        "{plan_text}"
    );
}
