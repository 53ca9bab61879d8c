#!/usr/bin/env bash
# Runs `refund-worker bench` over provider latencies and concurrencies and appends one JSON
# line per run to docs/perf/sweep.jsonl (then: python3 scripts/plot-bench.py). Needs RabbitMQ
# and Redis like the tests; takes a few minutes. Usage: scripts/bench-sweep.sh [JOBS]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${1:-10000}
out=docs/perf/sweep.jsonl
cargo build --release -q
: > "$out"
for latency in 0 20 100; do
  for concurrency in 16 64 256 500 1000; do
    n=$jobs
    # Low concurrency at high latency is slow by design: fewer jobs keep the sweep short.
    if [ "$latency" -gt 0 ] && [ "$concurrency" -lt 256 ]; then n=$((jobs / 4)); fi
    ./target/release/refund-worker bench --jobs "$n" --provider-latency-ms "$latency" \
      --concurrency "$concurrency" --json | tee -a "$out"
  done
done
