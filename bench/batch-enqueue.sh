#!/usr/bin/env bash
# Bulk enqueue: `pgc enqueue --batch` of N trivial JSON Lines rows, measured in one run
# next to two SQL floors (one INSERT … SELECT generate_series each):
#   floor_same:   the same columns, payload and trace_context shape into the same table
#                 (pgc's schema, all its indexes);
#   floor_simple: the table and insert of shared/bench/sql-floor.sh (a bigserial key, one
#                 claim index, one constant trace_context).
# With TRACEPARENT set in the environment, pgc puts every row into that trace.
# Usage: bench/batch-enqueue.sh [N] [RUNS]   (default 1000000 3). Prints one line per run
# and the best of each.
source "$(dirname "$0")/common.sh"
N=${1:-1000000}; RUNS=${2:-3}
build_release
file=$(mktemp /tmp/pgc-batch-XXXXXX.jsonl)
trap 'rm -f "$file"; drop_db' EXIT
python3 - "$N" "$file" <<'PY'
import sys
n, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(n):
        f.write('{"task":"noop","payload":{"i":%d}}\n' % i)
PY

# Same columns, payload and trace_context shape as pgc writes; like pgc's, the trace ids
# start with a time-ordered prefix and end in random-looking hex.
# The executions and their rows of the traceparent index, as pgc writes both.
floor_sql="with ins as (
insert into pgconductor._private_executions (id, queue, task_key, payload, run_at, max_attempts, trace_context)
select ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'default', 'noop',
       jsonb_build_object('i', i), now(), 3,
       jsonb_build_object('traceparent', '00-' || lpad(to_hex(i), 12, '0') || substr(h, 1, 20) || '-' || substr(h, 17, 16) || '-01')
from generate_series(1, $N) i, lateral md5(i::text) h
returning id, trace_context)
insert into pgconductor._private_traceparents (traceparent, execution_id)
select trace_context ->> 'traceparent', id from ins"

simple_sql="drop table if exists floor_jobs;
create table floor_jobs(id bigserial primary key, queue text not null, task_key text not null,
  payload jsonb, status text not null default 'pending', priority int not null default 0,
  run_at timestamptz not null default now(), attempts int not null default 0, locked_by text,
  locked_until timestamptz, trace_context jsonb, result jsonb, finished_at timestamptz);
create index on floor_jobs(queue, priority, run_at, id) where status = 'pending';
checkpoint;"
simple_insert="insert into floor_jobs(queue, task_key, payload, trace_context)
  select 'default', 'noop', jsonb_build_object('id', i),
         jsonb_build_object('traceparent', '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01')
  from generate_series(1, $N) i"

best_pgc=0; best_floor=0; best_simple=0
for run in $(seq "$RUNS"); do
  fresh_db
  psql "$BENCH_URL" -X -q -c checkpoint
  t0=$(now); DATABASE_URL="$BENCH_URL" "$PGC" enqueue --batch "$file" 2>/dev/null; t1=$(now)
  got=$(psql "$BENCH_URL" -X -tAq -c "select count(*) from pgconductor._private_executions")
  [ "$got" = "$N" ] || { echo "pgc wrote $got rows, expected $N" >&2; exit 1; }
  pgc_rate=$(echo "$N/($t1-$t0)" | bc)

  fresh_db
  psql "$BENCH_URL" -X -q -c checkpoint
  t0=$(now); psql "$BENCH_URL" -X -q -v ON_ERROR_STOP=1 -c "$floor_sql"; t1=$(now)
  floor_rate=$(echo "$N/($t1-$t0)" | bc)

  psql "$BENCH_URL" -X -q -v ON_ERROR_STOP=1 -c "set client_min_messages = warning" -c "$simple_sql"
  t0=$(now); psql "$BENCH_URL" -X -q -v ON_ERROR_STOP=1 -c "$simple_insert"; t1=$(now)
  simple_rate=$(echo "$N/($t1-$t0)" | bc)
  echo "run $run: pgc_batch=$pgc_rate floor_same=$floor_rate floor_simple=$simple_rate rows/s"
  [ "$pgc_rate" -gt "$best_pgc" ] && best_pgc=$pgc_rate
  [ "$floor_rate" -gt "$best_floor" ] && best_floor=$floor_rate
  [ "$simple_rate" -gt "$best_simple" ] && best_simple=$simple_rate
done
echo "best: pgc_batch=$best_pgc floor_same=$best_floor floor_simple=$best_simple rows/s;" \
  "pgc/floor_same=$(echo "scale=2; $best_pgc/$best_floor" | bc) pgc/floor_simple=$(echo "scale=2; $best_pgc/$best_simple" | bc)" \
  "(N=$N, runs=$RUNS, TRACEPARENT=${TRACEPARENT:-unset})"
