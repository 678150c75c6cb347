# Shared by the bench scripts: a scratch database and the release binary.
# BENCH_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres) names the server.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ADMIN_URL=${BENCH_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
BENCH_DB=${BENCH_DB:-pgc_bench}
BENCH_URL="${ADMIN_URL%/*}/$BENCH_DB"
PGC=target/release/pgc

build_release() { cargo build --release --locked -q; }

fresh_db() {
  psql "$ADMIN_URL" -X -q -v ON_ERROR_STOP=1 -c "drop database if exists $BENCH_DB with (force)" -c "create database $BENCH_DB"
  DATABASE_URL="$BENCH_URL" "$PGC" migrate >/dev/null 2>&1
}

# Each measured run starts right after a checkpoint: a checkpoint that starts during a
# run makes every page it then touches write a full-page image to the WAL, which had
# moved single runs by a third.
checkpoint() { psql "$ADMIN_URL" -X -q -c checkpoint; }

drop_db() { psql "$ADMIN_URL" -X -q -c "drop database if exists $BENCH_DB with (force)"; }

now() { date +%s.%N; }
