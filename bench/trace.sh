#!/usr/bin/env bash
# pgc trace on a big trace: one root fanning out to N-1 children (every third child failed
# once before it completed, every fifth ran a step), among OTHER executions of other
# traces. Measured side by side, best of RUNS:
#   sql:   psql running the three statements pgc trace runs (executions, attempts, steps
#          of the trace, in one repeatable-read snapshot), output discarded;
#   json:  pgc trace --trace-id T --format json > /dev/null;
#   table: pgc trace --trace-id T > /dev/null (plain, 120 columns).
# Both include starting the process and connecting. Prints the plans first: the same
# statements as src/sql.rs (TRACE_EXECUTIONS, TRACE_ATTEMPTS, TRACE_STEPS) with the bounds inlined.
# Usage: bench/trace.sh [N] [OTHER] [RUNS]   (default 10000 200000 5)
source "$(dirname "$0")/common.sh"
N=${1:-10000}; OTHER=${2:-200000}; RUNS=${3:-5}
T=4bf92f3577b34da6a3ce929d0e0e4736
build_release
trap drop_db EXIT
fresh_db
psql "$BENCH_URL" -X -q -v ON_ERROR_STOP=1 <<SQL
-- Other traces, so that finding this one has to use the index.
insert into pgconductor._private_executions
    (id, queue, task_key, status, attempts, trace_context, created_at, started_at,
     attempt_span_id, finished_at)
select gen_random_uuid(), 'other', 'noop', 'completed', 1,
       jsonb_build_object('traceparent', '00-' || md5(i::text) || '-' || substr(md5((-i)::text), 1, 16) || '-01'),
       now(), now(), substr(md5((-i)::text), 17, 16), now()
from generate_series(1, $OTHER) i;
-- The trace: execution 1 is the root (under a remote caller), 2..N its children.
insert into pgconductor._private_executions
    (id, queue, task_key, status, attempts, parent_execution_id, trace_context, parent_span_id,
     created_at, started_at, attempt_span_id, finished_at)
select ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
       case when i = 1 then 'ci' else 'builds' end,
       case when i = 1 then 'deploy' else 'shard' end,
       'completed', case when i % 3 = 0 then 2 else 1 end,
       case when i = 1 then null else '00000000-0000-7000-8000-000000000001'::uuid end,
       jsonb_build_object('traceparent', '00-$T-' || lpad(to_hex(i), 16, '0') || '-01'),
       case when i = 1 then '00f067aa0ba902b7' else lpad(to_hex(1000000000 + 1), 16, '0') end,
       now() - interval '10 min' + i * interval '1 ms',
       now() - interval '9 min' + i * interval '2 ms',
       lpad(to_hex(1000000000 + i), 16, '0'),
       now() - interval '9 min' + i * interval '2 ms' + interval '50 ms'
from generate_series(1, $N) i;
insert into pgconductor._private_attempts
    (execution_id, attempt, span_id, started_at, finished_at, outcome, error)
select ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 1,
       lpad(to_hex(2000000000 + i), 16, '0'),
       now() - interval '9 min 30 s' + i * interval '2 ms',
       now() - interval '9 min 30 s' + i * interval '2 ms' + interval '20 ms',
       'failed', 'exit status 1: connection reset by peer'
from generate_series(3, $N, 3) i;
insert into pgconductor._private_steps
    (execution_id, attempt, name, span_id, status, output, exit_code, started_at, finished_at)
select ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid,
       case when i % 3 = 0 then 2 else 1 end, 'build',
       lpad(to_hex(3000000000 + i), 16, '0'), 'completed', 'ok', 0,
       now() - interval '9 min' + i * interval '2 ms' + interval '10 ms',
       now() - interval '9 min' + i * interval '2 ms' + interval '30 ms'
from generate_series(5, $N, 5) i;
-- Their rows of the traceparent index, as pgc's enqueue writes them.
insert into pgconductor._private_traceparents (traceparent, execution_id)
select trace_context ->> 'traceparent', id from pgconductor._private_executions;
vacuum analyze pgconductor._private_executions, pgconductor._private_traceparents,
    pgconductor._private_attempts, pgconductor._private_steps;
SQL

lo="00-$T-"; hi="00-$T."
ids="array(select t.execution_id from pgconductor._private_traceparents t
          where t.traceparent ~>=~ '$lo' and t.traceparent ~<~ '$hi')"
cols="e.id, e.queue, e.task_key, e.status, e.priority, e.attempts, e.max_attempts,
      e.parent_execution_id, e.trace_context ->> 'traceparent', e.trace_context ->> 'tracestate',
      e.parent_span_id, e.created_at, e.started_at, e.attempt_span_id, e.finished_at, e.last_error"
q_exec="select $cols from pgconductor._private_executions e where e.id = any($ids)"
q_att="select a.execution_id, a.attempt, a.span_id, a.started_at, a.finished_at, a.outcome, a.error
       from pgconductor._private_attempts a where a.execution_id = any($ids)"
q_steps="select s.execution_id, s.attempt, s.name, s.span_id, s.status, s.exit_code, s.started_at, s.finished_at
         from pgconductor._private_steps s where s.execution_id = any($ids)"

echo "== plans (N=$N in the trace, OTHER=$OTHER other executions)"
for q in "$q_exec" "$q_att" "$q_steps"; do
  psql "$BENCH_URL" -X -q -At -c "explain (costs off) $q"
  echo
done

sql_run() {
  psql "$BENCH_URL" -X -q -At -o /dev/null -c "start transaction isolation level repeatable read, read only" \
    -c "$q_exec" -c "$q_att" -c "$q_steps" -c "commit"
}
spans=$(DATABASE_URL="$BENCH_URL" "$PGC" trace --trace-id "$T" --format json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["spans"]))')

best() { sort -g | head -1; }
time_it() { local t0 t1; t0=$(now); "$@" >/dev/null; t1=$(now); echo "$t1 - $t0" | bc -l; }
sql_t=(); json_t=(); table_t=()
for _ in $(seq "$RUNS"); do
  sql_t+=("$(time_it sql_run)")
  json_t+=("$(time_it env DATABASE_URL="$BENCH_URL" "$PGC" trace --trace-id "$T" --format json)")
  table_t+=("$(time_it env DATABASE_URL="$BENCH_URL" COLUMNS=120 "$PGC" trace --trace-id "$T")")
done
s=$(printf '%s\n' "${sql_t[@]}" | best)
j=$(printf '%s\n' "${json_t[@]}" | best)
t=$(printf '%s\n' "${table_t[@]}" | best)
printf 'executions=%d spans=%d other=%d runs=%d\n' "$N" "$spans" "$OTHER" "$RUNS"
printf 'sql_s=%.3f json_s=%.3f table_s=%.3f json_over_sql=%.2f\n' "$s" "$j" "$t" "$(echo "$j / $s" | bc -l)"
