#!/usr/bin/env bash
# One `pgc enqueue` process against one `psql -c "insert …"` doing the same insert (row,
# trace context, NOTIFY), side by side with hyperfine. Both connect over TCP to the same
# database, once with libpq's default sslmode (prefer: TLS when the server offers it) and
# once with sslmode=disable.
# Usage: bench/single-enqueue.sh [RUNS]   (default 300). Needs hyperfine (apt-get install hyperfine).
source "$(dirname "$0")/common.sh"
RUNS=${1:-300}
command -v hyperfine >/dev/null || { echo "hyperfine is not installed: apt-get install hyperfine" >&2; exit 1; }
build_release
fresh_db
sql=$(mktemp /tmp/pgc-insert-XXXXXX.sql)
trap 'rm -f "$sql"; drop_db' EXIT
cat > "$sql" <<'SQL'
with ins as (
insert into pgconductor._private_executions (id, queue, task_key, payload, trace_context)
values (gen_random_uuid(), 'default', 'noop', '{}',
        '{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}')
returning id, trace_context)
insert into pgconductor._private_traceparents (traceparent, execution_id)
select trace_context ->> 'traceparent', id from ins;
select pg_notify('pgconductor_enqueued', 'default');
SQL
plain="$BENCH_URL?sslmode=disable"
hyperfine -N --warmup 20 --runs "$RUNS" --export-json /tmp/pgc-single.json \
  "$PGC --database-url $BENCH_URL enqueue noop" \
  "psql $BENCH_URL -X -q -f $sql" \
  "$PGC --database-url $plain enqueue noop" \
  "psql $plain -X -q -f $sql" >&2
python3 - <<'PY'
import json
r = json.load(open("/tmp/pgc-single.json"))["results"]
for label, (pgc, psql) in (("sslmode=prefer", r[0:2]), ("sslmode=disable", r[2:4])):
    print(f"{label}: pgc_enqueue_ms mean={pgc['mean']*1000:.2f} median={pgc['median']*1000:.2f}; "
          f"psql_insert_ms mean={psql['mean']*1000:.2f} median={psql['median']*1000:.2f}; "
          f"ratio pgc/psql (mean)={pgc['mean']/psql['mean']:.2f}")
PY
