#!/usr/bin/env bash
# How throughput grows with worker replicas on one queue (docs/SCALING.md).
#
# For each provider latency and each replica count K: start a fresh sandbox as its own process,
# publish N jobs under a fresh prefix with `refund-worker publish`, start K
# `refund-worker run --exit-when-idle` processes on the same queue, time until all have exited,
# check the sandbox ledger holds exactly N refunds, then delete the run's queues, exchanges and
# Redis keys. Prints one line per run and a Markdown table at the end.
#
#   scripts/scale.sh [--jobs N] [--latency-ms "0 50"] [--workers "1 2 3"] [--repeat R] [--bin PATH]
#
# With --repeat R every combination runs R times (interleaved, so a burst of load elsewhere
# does not hit one combination only) and the table shows the median.
#
# Needs RabbitMQ and Redis as for `cargo test`, a release build (`cargo build --release`),
# and curl, jq, redis-cli and rabbitmqctl (for the clean-up). Run it on a quiet machine.
set -euo pipefail

JOBS=5000
LATENCIES="0 50"
WORKERS="1 2 3"
REPEAT=1
BIN="target/release/refund-worker"
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) JOBS="$2"; shift 2 ;;
    --latency-ms) LATENCIES="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --repeat) REPEAT="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    *) echo "unknown argument $1; see the header of $0" >&2; exit 2 ;;
  esac
done
[ -x "$BIN" ] || { echo "$BIN not found: run cargo build --release first" >&2; exit 2; }
for tool in curl jq redis-cli rabbitmqctl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 2; }
done

export AMQP_URL="${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/}"
# Measure the worker, not the client-side limits: Stripe's default is 100 calls/s.
export REFUND_PROVIDERS__STRIPE__RATE_LIMIT=0
export RUST_LOG="${RUST_LOG:-warn}"

WORK="$(mktemp -d)"
SANDBOX_PID=""
WORKER_PIDS=()
PREFIX=""

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cleanup_prefix() {
  local prefix="$1"
  [ -n "$prefix" ] || return 0
  # Queues and exchanges of the prefix (same names as src/broker/topology.rs).
  for queue in $(rabbitmqctl -q list_queues name 2>/dev/null | grep -E "^${prefix}\." || true); do
    rabbitmqctl -q delete_queue "$queue" >/dev/null 2>&1 || true
  done
  for exchange in "$prefix" "$prefix.dlx" "$prefix.events"; do
    rabbitmqctl -q eval "rabbit_exchange:delete(rabbit_misc:r(<<\"/\">>, exchange, <<\"$exchange\">>), false, <<\"scale.sh\">>)." >/dev/null 2>&1 || true
  done
  # Redis keys: <prefix>:* and the receipt chain's {<prefix>:receipts}*.
  for pattern in "$prefix:*" "{$prefix:receipts}*"; do
    redis-cli -u "$REDIS_URL" --scan --pattern "$pattern" | xargs -r -n 500 redis-cli -u "$REDIS_URL" del >/dev/null
  done
}

stop_all() {
  for pid in "${WORKER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -n "$SANDBOX_PID" ] && kill "$SANDBOX_PID" 2>/dev/null || true
  cleanup_prefix "$PREFIX"
  rm -rf "$WORK"
}
trap stop_all EXIT

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
echo "# $(date -u +%FT%TZ) $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $JOBS jobs per run"
for round in $(seq "$REPEAT"); do
for latency in $LATENCIES; do
  for k in $WORKERS; do
    run="$(date +%s)-$$-l${latency}-k${k}"
    PREFIX="scale-$run"
    port="$(free_port)"
    "$BIN" sandbox --listen "127.0.0.1:$port" --latency-ms "$latency" >"$WORK/sandbox.log" 2>&1 &
    SANDBOX_PID=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/_sandbox/refunds" >/dev/null && break; sleep 0.1; done

    jobs_file="$WORK/jobs.jsonl"
    seq "$JOBS" | awk -v run="$run" '{ printf "{\"payment_id\":\"pi_scale_%s_%d\",\"amount\":100,\"provider\":\"stripe\"}\n", run, $1 }' >"$jobs_file"
    REFUND_PREFIX="$PREFIX" "$BIN" publish "$jobs_file" >"$WORK/publish.log" 2>&1

    start=$(date +%s.%N)
    WORKER_PIDS=()
    for i in $(seq "$k"); do
      REFUND_PREFIX="$PREFIX" "$BIN" run --exit-when-idle --providers-url "http://127.0.0.1:$port" \
        --metrics-addr "127.0.0.1:$(free_port)" >"$WORK/worker-$i.log" 2>&1 &
      WORKER_PIDS+=($!)
    done
    failed=0
    for pid in "${WORKER_PIDS[@]}"; do wait "$pid" || failed=1; done
    end=$(date +%s.%N)
    WORKER_PIDS=()
    [ "$failed" = 0 ] || { echo "a worker failed:" >&2; tail -n 20 "$WORK"/worker-*.log >&2; exit 1; }

    ledger="$WORK/ledger.json"
    curl -sf "http://127.0.0.1:$port/_sandbox/refunds" >"$ledger"
    refunded=$(jq length "$ledger")
    unique=$(jq '[.[].payment_id] | unique | length' "$ledger")
    # The refunding window: first to last refund in the ledger (start-up and idle checks excluded).
    window=$(python3 - "$ledger" <<'PY'
import json, re, sys
from datetime import datetime
def moment(text):
    # RFC 3339 with up to nine fractional digits; Python reads six.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    return datetime.fromisoformat(text)
times = [moment(entry["created_at"]) for entry in json.load(open(sys.argv[1]))]
print(round(max((max(times) - min(times)).total_seconds(), 1e-3), 2))
PY
)
    wall=$(python3 -c "print(round($end - $start, 2))")
    overall=$(python3 -c "print(round($JOBS / ($end - $start)))")
    steady=$(python3 -c "print(round($refunded / $window))")
    line="[$round/$REPEAT] latency ${latency} ms, ${k} worker(s): ${refunded}/${JOBS} refunded (${unique} payments), ${wall} s wall = ${overall} jobs/s; refunding window ${window} s = ${steady} jobs/s"
    echo "$line"
    printf '%s\t%s\t%s\t%s\t%s\n' "$latency" "$k" "$wall" "$overall" "$steady" >>"$RESULTS"
    if [ "$refunded" != "$JOBS" ] || [ "$unique" != "$JOBS" ]; then
      echo "ledger mismatch: expected $JOBS distinct refunds" >&2; exit 1
    fi

    kill "$SANDBOX_PID" 2>/dev/null || true
    wait "$SANDBOX_PID" 2>/dev/null || true
    SANDBOX_PID=""
    cleanup_prefix "$PREFIX"
    PREFIX=""
  done
done
done

echo
python3 - "$RESULTS" "$JOBS" "$REPEAT" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    latency, k, wall, overall, steady = line.split()
    rows.setdefault((int(latency), int(k)), []).append((float(wall), float(overall), float(steady)))
jobs, repeat = sys.argv[2], sys.argv[3]
median = "median of " + repeat + " runs" if repeat != "1" else "one run"
print(f"| provider latency | workers | wall (s) | jobs/s (wall) | jobs/s (refunding window) | all {jobs} refunded once |")
print("|---|---|---|---|---|---|")
for (latency, k), runs in sorted(rows.items()):
    m = [statistics.median(column) for column in zip(*runs)]
    spread = f"{min(r[2] for r in runs):.0f}-{max(r[2] for r in runs):.0f}" if len(runs) > 1 else ""
    print(f"| {latency} ms | {k} | {m[0]:.2f} | {m[1]:.0f} | {m[2]:.0f}{' (' + spread + ')' if spread else ''} | yes |")
print(f"({median} per row; the refunding-window range in brackets)")
PY
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
