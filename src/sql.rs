//! Every SQL statement pgc sends, named and kept in one place so they can be reviewed
//! as a whole. Other modules refer to these constants; none writes SQL inline.
//!
//! Conventions: the schema is always qualified (`pgconductor.`), parameters are typed
//! with casts where the type is not obvious, and each statement is one state change.

/// Session advisory lock key held around a whole `pgc migrate` run
/// (the bytes of "pgcmigr" read as an integer).
pub const MIGRATE_LOCK_KEY: i64 = 0x0070_6763_6d69_6772;

/// Take the migration lock; waits for a concurrent `pgc migrate` to finish.
pub const MIGRATE_LOCK: &str = "select pg_advisory_lock($1)";

/// Release the migration lock.
pub const MIGRATE_UNLOCK: &str = "select pg_advisory_unlock($1)";

/// Create the schema and the migration bookkeeping table (idempotent; run under the lock).
pub const MIGRATE_BOOKKEEPING: &str = "
create schema if not exists pgconductor;
create table if not exists pgconductor.schema_migrations (
    version integer primary key,
    name text not null,
    checksum text not null,
    applied_at timestamptz not null default now(),
    duration_ms bigint not null default 0
)";

/// Whether the bookkeeping table exists (so `--status` and `--dry-run` change nothing).
pub const MIGRATE_HAS_BOOKKEEPING: &str =
    "select to_regclass('pgconductor.schema_migrations') is not null";

/// Applied migrations, in order.
pub const MIGRATE_APPLIED: &str = "
select version, name, checksum, applied_at
from pgconductor.schema_migrations
order by version";

/// Record one applied migration (same transaction as the migration itself).
pub const MIGRATE_RECORD: &str = "
insert into pgconductor.schema_migrations (version, name, checksum, duration_ms)
values ($1, $2, $3, $4)";

/// The highest applied migration; every command that needs the schema checks it first.
pub const SCHEMA_VERSION: &str = "select max(version) from pgconductor.schema_migrations";

/// Channel that `pgc enqueue` notifies with the queue name as payload.
pub const ENQUEUED_CHANNEL: &str = "pgconductor_enqueued";

/// Enqueue one execution and notify its queue, in one statement (and so one transaction).
/// Returns no row when an unfinished execution has the same dedupe key.
///
/// `$6` run_at (null: now), `$7` delay in seconds added to now when `$6` is null.
pub const ENQUEUE: &str = "
with ins as (
    insert into pgconductor._private_executions
        (id, queue, task_key, payload, priority, run_at, max_attempts, dedupe_key,
         parent_execution_id, trace_context, parent_span_id)
    values ($1, $2, $3, $4, $5,
            coalesce($6::timestamptz, now() + make_interval(secs => $7::float8)),
            $8, $9, $10, $11, $12)
    on conflict (queue, task_key, dedupe_key)
        where dedupe_key is not null and status in ('pending', 'running')
        do nothing
    returning id, run_at
)
select id, run_at, pg_notify('pgconductor_enqueued', $2) from ins";

/// The unfinished execution holding a dedupe key (after [`ENQUEUE`] returned no row).
pub const ENQUEUE_DEDUPED: &str = "
select id, run_at, trace_context, parent_span_id
from pgconductor._private_executions
where queue = $1 and task_key = $2 and dedupe_key = $3 and status in ('pending', 'running')";

/// The transaction's start time: what `default now()` gives rows written in it.
pub const NOW: &str = "select now()";

/// Bulk enqueue: rows streamed in binary COPY format (see `enqueue::batch`).
pub const BATCH_COPY: &str = "
copy pgconductor._private_executions
    (id, queue, task_key, payload, priority, run_at, max_attempts,
     parent_execution_id, trace_context, parent_span_id)
from stdin (format binary)";

/// Notify every queue a batch wrote to (once each; sent at commit).
pub const NOTIFY_QUEUES: &str =
    "select count(pg_notify('pgconductor_enqueued', q)) from unnest($1::text[]) q";

/// Every execution of one trace, through the traceparent index: `$1` is
/// `'00-<trace id>-'` and `$2` is `'00-<trace id>.'` (see [`trace_id_range`]).
pub const EXECUTIONS_OF_TRACE: &str = "
select id
from pgconductor._private_executions
where (trace_context ->> 'traceparent') ~>=~ $1
  and (trace_context ->> 'traceparent') ~<~ $2";

/// The execution whose producer span has this traceparent (the seed's lookup).
pub const EXECUTION_BY_TRACEPARENT: &str = "
select id
from pgconductor._private_executions
where trace_context ->> 'traceparent' = $1";

/// The bounds [`EXECUTIONS_OF_TRACE`] takes for a trace id (32 lower-case hex digits):
/// every version-00 traceparent of that trace sorts between them.
pub fn trace_id_range(trace_id: &str) -> (String, String) {
    (format!("00-{trace_id}-"), format!("00-{trace_id}."))
}
