#!/usr/bin/env bash
# Worker throughput and latency, side by side in one run:
#   1. the SQL floor: ../shared/bench/sql-floor.sh (server-side claim/complete loops, one per core);
#   2. graphile-worker 0.17: ../shared/bench/graphile-worker/run.sh (its own perfTest settings);
#   3. pgc bench: bulk enqueue, in-process no-op handlers, enqueue→start latency.
# Then command handlers: `pgc work --until-empty -- true` over M tasks at concurrency 8
# against `xargs -P 8` spawning `true` M times, and the worker's resident memory while it
# runs 64 `sleep` handlers at once.
# Usage: bench/work.sh [N] [M]   (default 200000 20000). graphile-worker needs the set-up
# line at the top of its run.sh; it is skipped when it is not installed. Each of the three
# throughput runs starts right after a CHECKPOINT (see common.sh).
source "$(dirname "$0")/common.sh"
N=${1:-200000}; M=${2:-20000}
shared=${SHARED_BENCH:-../shared/bench}
build_release
trap drop_db EXIT

echo "== SQL floor"; checkpoint; PGDATABASE=postgres bash "$shared/sql-floor.sh" "$N"
gw=${GW_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pgc-bench/gw}
if [ -d "$gw/node_modules/graphile-worker" ]; then
  echo "== graphile-worker"; checkpoint; bash "$shared/graphile-worker/run.sh" "$N" 2
else
  echo "== graphile-worker: not installed (see $shared/graphile-worker/run.sh)"
fi
echo "== pgc bench"
fresh_db; checkpoint
DATABASE_URL="$BENCH_URL" "$PGC" bench --jobs "$N" --json 2>/dev/null; echo

echo "== command handlers: $M tasks of \`true\`, concurrency 8"
fresh_db
seq "$M" | sed 's/.*/{"task":"t"}/' | DATABASE_URL="$BENCH_URL" "$PGC" enqueue --batch - 2>/dev/null
t0=$(now); DATABASE_URL="$BENCH_URL" "$PGC" work --until-empty --concurrency 8 -- true 2>/dev/null; t1=$(now)
t4=$(now); seq "$M" | xargs -P 8 -I{} true; t5=$(now)
pgc_rate=$(echo "$M/($t1-$t0)" | bc); xargs_rate=$(echo "$M/($t5-$t4)" | bc)
echo "pgc_work_true_per_s=$pgc_rate xargs_true_per_s=$xargs_rate ratio=$(echo "scale=2; $pgc_rate/$xargs_rate" | bc)"

echo "== memory: 64 running command handlers"
fresh_db
seq 64 | sed 's/.*/{"task":"t"}/' | DATABASE_URL="$BENCH_URL" "$PGC" enqueue --batch - 2>/dev/null
DATABASE_URL="$BENCH_URL" "$PGC" work --until-empty --concurrency 64 -- sleep 3 2>/dev/null &
w=$!
sleep 1.5
running=$(pgrep -P "$w" -c sleep || true)
rss=$(awk '/VmRSS/{print $2}' "/proc/$w/status")
wait "$w"
echo "worker_rss_kib=$rss with $running handlers running (children not counted)"
