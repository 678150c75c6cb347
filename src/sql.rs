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

/// Enqueue one execution, index its traceparent and notify its queue, in one statement
/// (and so one transaction).
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
    returning id, run_at, trace_context
), indexed as (
    insert into pgconductor._private_traceparents (traceparent, execution_id)
    select i.trace_context ->> 'traceparent', i.id from ins i
    where i.trace_context ->> 'traceparent' is not null
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

/// Bulk enqueue, second part: the batch's rows of the traceparent index (traceparent,
/// execution id), streamed in binary COPY format in the same transaction.
pub const BATCH_COPY_TRACEPARENTS: &str = "
copy pgconductor._private_traceparents (traceparent, execution_id) from stdin (format binary)";

/// Notify every queue a batch wrote to (once each; sent at commit).
pub const NOTIFY_QUEUES: &str =
    "select count(pg_notify('pgconductor_enqueued', q)) from unnest($1::text[]) q";

/// The executions of one trace (`$1`, `$2` from [`trace_id_range`]), as an array, from
/// the write-once traceparent index (the execution rows' own carriers are not indexed:
/// see `migrations/0002_traceparents.sql`).
macro_rules! trace_ids {
    () => {
        "array(
    select t.execution_id from pgconductor._private_traceparents t
    where t.traceparent ~>=~ $1 and t.traceparent ~<~ $2)"
    };
}

/// Every execution of one trace, through the traceparent index: `$1` is
/// `'00-<trace id>-'` and `$2` is `'00-<trace id>.'` (see [`trace_id_range`]).
pub const EXECUTIONS_OF_TRACE: &str = concat!(
    "
select e.id
from pgconductor._private_executions e
where e.id = any(",
    trace_ids!(),
    ")"
);

/// The execution whose producer span has this traceparent (the seed's lookup).
pub const EXECUTION_BY_TRACEPARENT: &str = "
select e.id
from pgconductor._private_executions e
where e.id = any(array(
    select t.execution_id from pgconductor._private_traceparents t where t.traceparent = $1))
  and e.trace_context ->> 'traceparent' = $1";

/// The bounds [`EXECUTIONS_OF_TRACE`] takes for a trace id (32 lower-case hex digits):
/// every version-00 traceparent of that trace sorts between them.
pub fn trace_id_range(trace_id: &str) -> (String, String) {
    (format!("00-{trace_id}-"), format!("00-{trace_id}."))
}

// ---------------------------------------------------------------------------------------
// Worker. Every settle names the worker and the lease generation it claimed (fencing): a
// worker whose lease was taken over changes nothing. `locked_by` is set exactly while an
// execution is running (a check constraint says so), so settles do not also test
// `status = 'running'`: that predicate would draw the planner to the partial lease index,
// whose dead entries grow with every settled row, instead of the primary key.

/// Register a worker (`$1` id, `$2` host, `$3` pid, `$4` queues, `$5` version).
pub const WORKER_REGISTER: &str = "
insert into pgconductor._private_workers (id, host, pid, queues, version)
values ($1, $2, $3, $4, $5)";

/// Heartbeat of a worker.
pub const WORKER_HEARTBEAT: &str = "
update pgconductor._private_workers set heartbeat_at = now() where id = $1";

/// A worker's clean exit.
pub const WORKER_STOPPED: &str = "
update pgconductor._private_workers set stopped_at = now(), heartbeat_at = now() where id = $1";

/// Worker connections plan each prepared statement once, for any parameters: a custom
/// plan of a claim costs more than running it (see `worker::Session`).
pub const GENERIC_PLANS: &str = "set plan_cache_mode = force_generic_plan";

/// Claim up to `$2` due executions of the queues `$1` (in each queue's priority order,
/// then the oldest first) by locking their rows, in the caller's open transaction.
/// `$3`: the tasks the worker has handlers for, or null for all. `$4`, `$5`, `$6`: per
/// queue, the claim index position (priority, run_at, id) to start from, null for the
/// beginning. Nothing is written: each row comes back as its attempt will be recorded
/// (`attempts + 1`, the next lease generation, a new attempt span id), with its
/// physical address (`ctid`) last, and [`SETTLE_CLAIMED`] records the attempts before
/// the transaction commits.
///
/// The worker keeps the transaction open for a moment while the handlers run: an
/// attempt that ends within it is written once, as completed, where a lease and then a
/// completion would write the row twice (two new row versions and their index entries,
/// which is most of what a job costs PostgreSQL). The rest are leased at the end of it.
/// Other claims pass over the locked rows (SKIP LOCKED); if the worker or its
/// connection dies first, the transaction rolls back, the rows were never touched, and
/// they are claimed again at once.
///
/// The start positions matter because claimed rows leave dead entries in the claim
/// index until a vacuum (and locked ones stay there while they are locked): a claim
/// from the beginning walks every one of them, which after 100,000 claims is hundreds
/// of index pages per claim. The worker starts where its last claim ended, and from the
/// beginning whenever rows may sit before that (see `ClaimStarts`).
pub const CLAIM: &str = "
select x.id, x.queue, x.task_key, x.payload::text, x.attempts + 1, x.max_attempts,
       case when jsonb_typeof(x.trace_context -> 'traceparent') = 'string'
            then x.trace_context ->> 'traceparent' end,
       x.lease_generation + 1,
       -- 16 random hex digits, never all zeros (the low half is at least 1). random() is
       -- the backend's own generator, seeded from a strong source; gen_random_uuid() asks
       -- the cryptographic one per row, which cost more than a tenth of a claim.
       encode(int8send(((random() * 4294967295)::bigint << 32)
                       | ((random() * 4294967294)::bigint + 1)), 'hex'),
       x.parent_execution_id, x.priority, x.run_at,
       case when jsonb_typeof(x.trace_context -> 'tracestate') = 'string'
            then x.trace_context ->> 'tracestate' end,
       x.ctid
from unnest($1::text[], $4::int[], $5::timestamptz[], $6::uuid[])
     as q(name, priority, run_at, id),
lateral (
    select e.ctid, e.id, e.queue, e.task_key, e.payload, e.attempts, e.max_attempts,
           e.trace_context, e.lease_generation, e.parent_execution_id, e.priority, e.run_at
    from pgconductor._private_executions e
    where e.queue = q.name and e.status = 'pending' and e.run_at <= now()
      and (e.priority, e.run_at, e.id)
          >= (coalesce(q.priority, -2147483648), coalesce(q.run_at, '-infinity'),
              coalesce(q.id, '00000000-0000-0000-0000-000000000000'))
      and ($3::text[] is null or e.task_key = any($3::text[]))
    order by e.priority, e.run_at, e.id
    limit $2
    for update of e skip locked
) x
order by x.priority, x.run_at, x.id
limit $2";

/// In the transaction of a [`CLAIM`] by worker `$1`, before it commits: record the
/// attempts it started. `$3` addresses, `$4` ids, `$5` attempt span ids and `$6`
/// results (JSON text or null) of those that completed meanwhile: finished as
/// completed. `$7` addresses, `$8` ids and `$9` span ids of the rest: leased for `$2`
/// seconds, as running. One row: the ids it finished, the ids it leased and their new
/// addresses (null arrays for none); wakes `--wait`ers when any finished.
pub const SETTLE_CLAIMED: &str = "
with finished as (
    update pgconductor._private_executions e
    set status = 'completed', result = v.result::jsonb, attempts = e.attempts + 1,
        lease_generation = e.lease_generation + 1, attempt_span_id = v.span,
        -- now() is when the transaction, and so the claim, began.
        started_at = now(), finished_at = statement_timestamp()
    from unnest($3::tid[], $4::uuid[], $5::text[], $6::text[]) as v(tid, id, span, result)
    -- The rows are locked by this transaction, so they are as the claim read them: no
    -- condition on status, which would let the planner prefer a scan of every pending
    -- row in the claim index to a fetch per row.
    where e.ctid = v.tid and e.id = v.id
    returning e.id
), leased as (
    update pgconductor._private_executions e
    set status = 'running', attempts = e.attempts + 1, locked_by = $1,
        -- From now: the attempt started at the claim, the lease at this statement.
        locked_until = statement_timestamp() + make_interval(secs => $2::float8),
        lease_generation = e.lease_generation + 1, started_at = now(), attempt_span_id = v.span
    from unnest($7::tid[], $8::uuid[], $9::text[]) as v(tid, id, span)
    where e.ctid = v.tid and e.id = v.id
    returning e.id, e.ctid
)
select f.ids, l.ids, l.tids,
       case when f.ids is not null then pg_notify('pgconductor_finished', '') end::text
from (select array_agg(id) as ids from finished) f,
     (select array_agg(id) as ids, array_agg(ctid) as tids from leased) l";

/// What became of a claim whose [`SETTLE_CLAIMED`] failed before its answer came back
/// (its commit may have gone through): of the executions `$1` with the attempt span ids
/// `$2` the claim gave them, those its transaction recorded, with their status and
/// address. Span ids are random and written only by the claim that drew them, so a
/// match is that transaction's write.
pub const CLAIM_RECORDED: &str = "
select e.id, e.status, e.ctid
from pgconductor._private_executions e
join unnest($1::uuid[], $2::text[]) as v(id, span) on e.id = v.id
where e.attempt_span_id = v.span";

/// The server process of this connection and when it started (see [`END_BACKEND`]).
pub const BACKEND: &str = "
select pg_backend_pid(), backend_start from pg_stat_activity where pid = pg_backend_pid()";

/// End the server process `$1` that started at `$2` (so not a later one with the same
/// pid), waiting up to 10 s for it to exit: its open transaction is rolled back, or its
/// commit finished, by then. Ending a session of the same role needs no privilege.
pub const END_BACKEND: &str = "
select pg_terminate_backend(pid, 10000) from pg_stat_activity
where pid = $1 and backend_start = $2";

/// What a completion writes on each execution it settles (both paths of [`COMPLETE`]).
macro_rules! complete_set {
    () => {
        "
    set status = 'completed', result = v.result::jsonb, finished_at = now(),
        locked_by = null, locked_until = null"
    };
}

/// Settle completed attempts: `$2` ids, `$3` generations, `$4` results (JSON text or
/// null), `$5` the row addresses their leases returned (null when unknown), and wake
/// `--wait`ers when any was settled. One row: the array of the ids it settled (null when
/// none; the others had lost their lease).
///
/// Each row is looked for at its address first: a fetch of one heap page instead of a
/// descent of the primary key. A row that moved since its lease (a lease renewal or a
/// cancel request wrote a new version) is found by id instead. The fencing conditions
/// are the same on both paths, and the second skips the rows the first settled.
pub const COMPLETE: &str = concat!(
    "
with by_address as (
    update pgconductor._private_executions e",
    complete_set!(),
    "
    from unnest($2::uuid[], $3::int[], $4::text[], $5::tid[]) as v(id, generation, result, tid)
    where e.ctid = v.tid and e.id = v.id and e.locked_by = $1 and e.lease_generation = v.generation
    returning e.id
), by_id as (
    update pgconductor._private_executions e",
    complete_set!(),
    "
    from unnest($2::uuid[], $3::int[], $4::text[]) as v(id, generation, result)
    -- Only when some were not where their claim left them (a test made once).
    where (select count(*) from by_address) < cardinality($2::uuid[])
      and e.id = v.id and e.locked_by = $1 and e.lease_generation = v.generation
      and v.id not in (select id from by_address)
    returning e.id
)
select s.ids, case when s.ids is not null then pg_notify('pgconductor_finished', '') end::text
from (select array_agg(id) as ids
      from (select id from by_address union all select id from by_id) u) s"
);

/// Of the executions `$1` with lease generations `$2`, those completed under that
/// generation: a completions batch sent again after an error asks this of the ones it
/// did not settle, since the first try's commit may have gone through (only the claim
/// that took a generation can complete under it). A statement of its own, so that its
/// snapshot sees a first try that committed while the repeat waited for its rows.
pub const COMPLETED_UNDER: &str = "
select e.id
from pgconductor._private_executions e
join unnest($1::uuid[], $2::int[]) as v(id, generation) on e.id = v.id
where e.status = 'completed' and e.lease_generation = v.generation";

/// Settle failed attempts: `$2` ids, `$3` generations, `$4` errors, `$5` outcomes
/// (`failed` or `timed_out`), `$6` retry delays in seconds. With attempts left the
/// execution waits for its retry and the attempt moves to `_private_attempts`; without,
/// it is finished as `failed` and keeps its last attempt on the row. Returns each
/// settled id with its new status.
pub const FAIL: &str = "
with v as (
    select * from unnest($2::uuid[], $3::int[], $4::text[], $5::text[], $6::float8[])
        as v(id, generation, error, outcome, delay)
), old as (
    select e.id, e.attempts, e.max_attempts, e.attempt_span_id, e.locked_by, e.started_at,
           v.error, v.outcome, v.delay,
           -- A cancel requested while it ran wins over a retry.
           e.attempts >= e.max_attempts or e.cancel_requested_at is not null as final,
           e.cancel_requested_at is not null as cancel
    from pgconductor._private_executions e
    join v on e.id = v.id
    where e.locked_by = $1 and e.lease_generation = v.generation
    for update of e
), upd as (
    update pgconductor._private_executions e
    set status = case when o.cancel then 'cancelled' when o.final then 'failed' else 'pending' end,
        run_at = case when o.final then e.run_at
                      else now() + make_interval(secs => o.delay) end,
        finished_at = case when o.final then now() end,
        last_error = o.error,
        locked_by = null, locked_until = null,
        attempt_span_id = case when o.final then e.attempt_span_id end,
        started_at = case when o.final then e.started_at end
    from old o
    where e.id = o.id and e.id = any(array(select id from old))
    returning e.id, e.status
), moved as (
    insert into pgconductor._private_attempts
        (execution_id, attempt, span_id, worker_id, started_at, finished_at, outcome, error)
    select o.id, o.attempts, o.attempt_span_id, o.locked_by, o.started_at, now(), o.outcome, o.error
    from old o
    where not o.final
)
select id, status from upd";

/// Give attempts back without using them (shutdown, exit code 75): `$2` ids, `$3`
/// generations, `$4` reasons, `$5` delays in seconds before they are due again.
pub const RELEASE: &str = "
with v as (
    select * from unnest($2::uuid[], $3::int[], $4::text[], $5::float8[])
        as v(id, generation, reason, delay)
), old as (
    select e.id, e.attempts, e.attempt_span_id, e.locked_by, e.started_at, v.reason, v.delay,
           e.cancel_requested_at is not null as cancel
    from pgconductor._private_executions e
    join v on e.id = v.id
    where e.locked_by = $1 and e.lease_generation = v.generation
    for update of e
), upd as (
    update pgconductor._private_executions e
    -- A cancel requested while it ran finishes it instead of putting it back.
    set status = case when o.cancel then 'cancelled' else 'pending' end,
        attempts = case when o.cancel then e.attempts else e.attempts - 1 end,
        run_at = case when o.cancel then e.run_at else now() + make_interval(secs => o.delay) end,
        finished_at = case when o.cancel then now() end,
        last_error = case when o.cancel then 'cancelled' else o.reason end,
        locked_by = null, locked_until = null,
        attempt_span_id = case when o.cancel then e.attempt_span_id end,
        started_at = case when o.cancel then e.started_at end
    from old o
    where e.id = o.id and e.id = any(array(select id from old))
    returning e.id, e.status
), moved as (
    insert into pgconductor._private_attempts
        (execution_id, attempt, span_id, worker_id, started_at, finished_at, outcome, error)
    select o.id, o.attempts, o.attempt_span_id, o.locked_by, o.started_at, now(), 'released', o.reason
    from old o
    where not o.cancel
)
select id, status from upd";

/// Extend the leases of worker `$1` on executions `$2` with generations `$3` by `$4`
/// seconds. Returns each lease it still holds (id, generation), with whether `pgc cancel`
/// asked to stop it (the fallback for a lost cancel notification); a missing one was
/// taken over.
pub const RENEW: &str = "
update pgconductor._private_executions e
set locked_until = now() + make_interval(secs => $4::float8)
from unnest($2::uuid[], $3::int[]) as v(id, generation)
where e.id = v.id and e.locked_by = $1 and e.lease_generation = v.generation
returning e.id, e.lease_generation, e.cancel_requested_at is not null";

/// Recover executions of the queues `$1` whose lease expired (their worker died or
/// lost its database) and that worker `$2` does not hold itself: the attempt is
/// recorded as `lost` and the execution waits to run again, or is finished as `failed`
/// when it has no attempts left (`cancelled` when `pgc cancel` asked for it). Returns
/// each id with its new status and last error.
pub const REAP: &str = "
with old as (
    select e.id, e.attempts, e.max_attempts, e.attempt_span_id, e.locked_by, e.started_at,
           e.attempts >= e.max_attempts as final, e.cancel_requested_at is not null as cancel
    from pgconductor._private_executions e
    where e.status = 'running' and e.locked_until < now() and e.queue = any($1::text[])
      and e.locked_by <> $2
    limit 1000
    for update skip locked
), upd as (
    update pgconductor._private_executions e
    set status = case when o.cancel then 'cancelled' when o.final then 'failed' else 'pending' end,
        run_at = case when o.final or o.cancel then e.run_at else now() end,
        finished_at = case when o.final or o.cancel then now() end,
        last_error = case when o.cancel then 'cancelled'
                          else 'lease expired: worker ' || o.locked_by || ' stopped renewing it' end,
        locked_by = null, locked_until = null,
        attempt_span_id = case when o.final or o.cancel then e.attempt_span_id end,
        started_at = case when o.final or o.cancel then e.started_at end
    from old o
    where e.id = o.id and e.id = any(array(select id from old))
    returning e.id, e.status, e.task_key, e.last_error
), moved as (
    insert into pgconductor._private_attempts
        (execution_id, attempt, span_id, worker_id, started_at, finished_at, outcome, error)
    select o.id, o.attempts, o.attempt_span_id, o.locked_by, o.started_at, now(), 'lost',
           'lease expired: worker ' || o.locked_by || ' stopped renewing it'
    from old o
    where not (o.final or o.cancel)
)
select id, status, task_key, last_error from upd";

/// Whether the queues `$1` still hold work for `--until-empty`: an execution running,
/// due, or waiting for a retry (executions scheduled for later that never ran do not
/// count; one that ran before has attempts or, when it was released, a `last_error`).
/// `$2`: the tasks the worker handles, or null for all.
pub const QUEUE_BUSY: &str = "
select exists (
    select 1 from pgconductor._private_executions e
    where e.queue = any($1::text[])
      and ($2::text[] is null or e.task_key = any($2::text[]))
      and (e.status = 'running'
           or (e.status = 'pending'
               and (e.run_at <= now() or e.attempts > 0 or e.last_error is not null)))
)";

/// Listen for enqueue notifications.
pub const LISTEN_ENQUEUED: &str = "listen pgconductor_enqueued";

/// Channel a worker notifies (empty payload) whenever executions finish, so that
/// `pgc enqueue --wait` and `pgc cancel` re-check without polling.
pub const FINISHED_CHANNEL: &str = "pgconductor_finished";

/// Listen for finished executions.
pub const LISTEN_FINISHED: &str = "listen pgconductor_finished";

/// Channel `pgc cancel` notifies with the id of a running execution to stop.
pub const CANCEL_CHANNEL: &str = "pgconductor_cancel";

/// Listen for cancellations.
pub const LISTEN_CANCEL: &str = "listen pgconductor_cancel";

/// Wake waiters after settling (one notification per transaction: PostgreSQL folds
/// identical ones).
pub const NOTIFY_FINISHED: &str = "select pg_notify('pgconductor_finished', '')";

/// Where an execution stands (`pgc enqueue --wait`, `pgc cancel`).
pub const EXECUTION_STATE: &str = "
select status, result::text, last_error
from pgconductor._private_executions where id = $1";

/// Cancel execution `$1`: a pending one is cancelled at once; a running one is marked
/// and its worker told through NOTIFY (it stops the handler and settles it as
/// cancelled). Returns the status it had; no row when there is no such execution.
pub const CANCEL: &str = "
with target as (
    select id, status from pgconductor._private_executions where id = $1 for update
), upd as (
    update pgconductor._private_executions e
    set status = case when t.status = 'pending' then 'cancelled' else e.status end,
        finished_at = case when t.status = 'pending' then now() else e.finished_at end,
        last_error = case when t.status = 'pending' then 'cancelled' else e.last_error end,
        cancel_requested_at = case when t.status = 'running' then now()
                                   else e.cancel_requested_at end
    from target t
    where e.id = t.id and t.status in ('pending', 'running')
    returning e.id
), notified as (
    select pg_notify(case when t.status = 'running' then 'pgconductor_cancel'
                          else 'pgconductor_finished' end,
                     case when t.status = 'running' then t.id::text else '' end)
    from target t
    where t.status in ('pending', 'running')
)
select t.status, (select count(*) from notified) from target t";

/// Settle attempts stopped by `pgc cancel`: `$2` ids, `$3` generations.
pub const SETTLE_CANCELLED: &str = "
update pgconductor._private_executions e
set status = 'cancelled', finished_at = now(), last_error = 'cancelled',
    locked_by = null, locked_until = null
from unnest($2::uuid[], $3::int[]) as v(id, generation)
where e.id = v.id and e.locked_by = $1 and e.lease_generation = v.generation
  and e.cancel_requested_at is not null
returning e.id";

// ---------------------------------------------------------------------------------------
// Steps (`pgc step NAME -- COMMAND`): memoized per execution.

/// One row: whether execution `$1` exists, whether its step `$2` completed in any
/// attempt, and then that run's stored output and exit code.
pub const STEP_COMPLETED: &str = "
select exists (select 1 from pgconductor._private_executions where id = $1),
       s.execution_id is not null, s.output, s.exit_code
from (select 1) one
left join pgconductor._private_steps s
    on s.execution_id = $1 and s.name = $2 and s.status = 'completed'";

/// Record one run of a step: `$1` execution, `$2` attempt, `$3` name, `$4` span id,
/// `$5` status (`completed`/`failed`), `$6` output (completed only), `$7` exit code,
/// `$8` started at, `$9` finished at. A re-run in the same attempt replaces the record.
pub const STEP_RECORD: &str = "
insert into pgconductor._private_steps
    (execution_id, attempt, name, span_id, status, output, exit_code, started_at, finished_at)
values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
on conflict (execution_id, attempt, name) do update
set span_id = excluded.span_id, status = excluded.status, output = excluded.output,
    exit_code = excluded.exit_code, started_at = excluded.started_at,
    finished_at = excluded.finished_at";

/// Give back executions a worker claimed ahead (`--prefetch`) but never started: `$2`
/// ids, `$3` generations. No attempt was used and none is recorded. Their queues are
/// notified, as after an enqueue: idle workers take them at once, and a claim that ran
/// while they were being given back (its snapshot still saw them running) is followed
/// by another.
pub const UNCLAIM: &str = "
with upd as (
    update pgconductor._private_executions e
    set status = 'pending', attempts = e.attempts - 1, locked_by = null, locked_until = null,
        attempt_span_id = null, started_at = null
    from unnest($2::uuid[], $3::int[]) as v(id, generation)
    where e.id = v.id and e.locked_by = $1 and e.lease_generation = v.generation
    returning e.id, e.queue
), woken as (
    select count(pg_notify('pgconductor_enqueued', q.queue))
    from (select distinct queue from upd) q
)
select u.id from upd u, woken";

// ---------------------------------------------------------------------------------------
// Trace inspection (`pgc trace`): read in one repeatable-read snapshot, so an attempt
// that moves from the execution row to `_private_attempts` between two statements is
// seen exactly once.

/// The execution columns a trace is rebuilt from, in the order [`crate::trace`] reads them.
macro_rules! trace_execution_columns {
    () => {
        "e.id, e.queue, e.task_key, e.status, e.priority, e.attempts, e.max_attempts,
       e.parent_execution_id, e.trace_context ->> 'traceparent', e.trace_context ->> 'tracestate',
       e.parent_span_id, e.created_at, e.started_at, e.attempt_span_id, e.finished_at,
       e.last_error"
    };
}

/// The attempt columns, in the order [`crate::trace`] reads them.
macro_rules! trace_attempt_columns {
    () => {
        "a.execution_id, a.attempt, a.span_id, a.started_at, a.finished_at, a.outcome, a.error"
    };
}

/// The step columns, in the order [`crate::trace`] reads them.
macro_rules! trace_step_columns {
    () => {
        "s.execution_id, s.attempt, s.name, s.span_id, s.status, s.exit_code, s.started_at,
       s.finished_at"
    };
}

/// Start the snapshot every trace query reads from.
pub const TRACE_SNAPSHOT: &str = "start transaction isolation level repeatable read, read only";

/// One execution by id (`$1`), to find its trace.
pub const TRACE_EXECUTION: &str = concat!(
    "select ",
    trace_execution_columns!(),
    "
from pgconductor._private_executions e
where e.id = $1"
);

/// Every execution of one trace (`$1`, `$2` from [`trace_id_range`]), through the
/// traceparent index. `= any(array(…))` keeps it an index lookup per execution.
pub const TRACE_EXECUTIONS: &str = concat!(
    "select ",
    trace_execution_columns!(),
    "
from pgconductor._private_executions e
where e.id = any(",
    trace_ids!(),
    ")"
);

/// Earlier attempts of every execution of one trace (`$1`, `$2` as for
/// [`TRACE_EXECUTIONS`]). `= any(array(…))` keeps it an index lookup per execution: a
/// join can turn into a merge join over the whole primary key.
pub const TRACE_ATTEMPTS: &str = concat!(
    "select ",
    trace_attempt_columns!(),
    "
from pgconductor._private_attempts a
where a.execution_id = any(",
    trace_ids!(),
    ")"
);

/// Step runs of every execution of one trace (`$1`, `$2` as for [`TRACE_EXECUTIONS`]).
pub const TRACE_STEPS: &str = concat!(
    "select ",
    trace_step_columns!(),
    "
from pgconductor._private_steps s
where s.execution_id = any(",
    trace_ids!(),
    ")"
);

/// Earlier attempts of one execution (`$1`), for an execution shown on its own.
pub const TRACE_ATTEMPTS_OF: &str = concat!(
    "select ",
    trace_attempt_columns!(),
    "
from pgconductor._private_attempts a
where a.execution_id = $1"
);

/// Step runs of one execution (`$1`), for an execution shown on its own.
pub const TRACE_STEPS_OF: &str = concat!(
    "select ",
    trace_step_columns!(),
    "
from pgconductor._private_steps s
where s.execution_id = $1"
);

/// How many executions of each queue in `$1` are pending and running (the queue-depth
/// gauge): counted through the partial claim and lease indexes, never the finished rows.
pub const QUEUE_DEPTH: &str = "
select q.name, s.status,
       (select count(*) from pgconductor._private_executions e
        where e.queue = q.name and e.status = s.status)
from unnest($1::text[]) as q(name), (values ('pending'), ('running')) as s(status)";
