#!/usr/bin/env bash
# Bulk enqueue: `pgc enqueue --batch` of N trivial JSON Lines rows, next to the SQL floor
# of the same row shape into the same table (same indexes, same trace_context shape),
# measured in one run. Usage: bench/batch-enqueue.sh [N] [RUNS]   (default 1000000 3)
# Prints one line per run and the best of each.
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
floor_sql="insert into pgconductor._private_executions (id, queue, task_key, payload, run_at, max_attempts, trace_context)
select ('00000000-0000-7000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, 'default', 'noop',
       jsonb_build_object('i', i), now(), 3,
       jsonb_build_object('traceparent', '00-' || lpad(to_hex(i), 12, '0') || substr(h, 1, 20) || '-' || substr(h, 17, 16) || '-01')
from generate_series(1, $N) i, lateral md5(i::text) h"

best_pgc=0; best_floor=0
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
  echo "run $run: pgc_batch_rows_per_s=$pgc_rate floor_rows_per_s=$floor_rate ratio=$(echo "scale=2; $pgc_rate/$floor_rate" | bc)"
  [ "$pgc_rate" -gt "$best_pgc" ] && best_pgc=$pgc_rate
  [ "$floor_rate" -gt "$best_floor" ] && best_floor=$floor_rate
done
echo "best: pgc_batch_rows_per_s=$best_pgc floor_rows_per_s=$best_floor ratio=$(echo "scale=2; $best_pgc/$best_floor" | bc) (N=$N, runs=$RUNS)"
