#!/usr/bin/env bash
# What live tracing costs the worker: `pgc bench --jobs N` with telemetry off and with
# spans exported over OTLP/HTTP to a local receiver (a small Python HTTP server that
# counts requests and answers 200), alternating, RUNS times each. Prints each run and the
# ratio of the best work rates (on / off).
# Usage: bench/telemetry-cost.sh [N] [RUNS]   (default 200000 2)
source "$(dirname "$0")/common.sh"
N=${1:-200000}; RUNS=${2:-2}
build_release
port_file=$(mktemp); count_file=$(mktemp)
python3 - "$port_file" "$count_file" <<'PY' &
import http.server, sys, threading
port_file, count_file = sys.argv[1], sys.argv[2]
count = {"requests": 0, "bytes": 0}
class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("content-length", 0))
        self.rfile.read(n)
        count["requests"] += 1; count["bytes"] += n
        with open(count_file, "w") as f: f.write(f'{count["requests"]} {count["bytes"]}\n')
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
open(port_file, "w").write(str(srv.server_address[1]))
srv.serve_forever()
PY
sink=$!
trap 'kill $sink 2>/dev/null; rm -f "$port_file" "$count_file"; drop_db' EXIT
for _ in $(seq 50); do [ -s "$port_file" ] && break; sleep 0.1; done
endpoint="http://127.0.0.1:$(cat "$port_file")"
best_off=0; best_on=0
for i in $(seq "$RUNS"); do
  fresh_db
  off=$(DATABASE_URL="$BENCH_URL" "$PGC" bench --jobs "$N" --latency-samples 10 --json 2>/dev/null \
        | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["work_per_s"]))')
  fresh_db
  on=$(DATABASE_URL="$BENCH_URL" OTEL_EXPORTER_OTLP_ENDPOINT="$endpoint" "$PGC" bench --jobs "$N" --latency-samples 10 --json 2>/tmp/pgc-telemetry-cost.err \
        | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["work_per_s"]))')
  echo "run $i: work_per_s off=$off on=$on (receiver: $(cat "$count_file") requests/bytes so far; warnings: $(grep -c warning /tmp/pgc-telemetry-cost.err || true))"
  [ "$off" -gt "$best_off" ] && best_off=$off
  [ "$on" -gt "$best_on" ] && best_on=$on
done
echo "best: off=$best_off on=$best_on on/off=$(echo "scale=2; $best_on/$best_off" | bc) (N=$N, runs=$RUNS)"
cat /tmp/pgc-telemetry-cost.err | grep warning | head -3
