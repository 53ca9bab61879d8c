#!/usr/bin/env bash
# Renders docs/dashboard.png without Grafana or docker: starts the sandbox providers, a worker
# under a fresh queue prefix and a Prometheus (Debian's package) that scrapes it every second
# with config/prometheus/alerts.yml loaded, publishes a mixed batch every few seconds
# (successes, pending refunds, retries, duplicates, a rate limit, declines, exhausted retries,
# mandate refusals, unknown ERP orders, a 5xx burst that opens the circuits), then runs
# scripts/render-dashboard.py and stops everything. Needs RabbitMQ and Redis like the tests,
# and matplotlib. Builds nothing: uses $REFUND_WORKER_BIN, else the newer of
# target/release/refund-worker and target/debug/refund-worker. About 4 minutes.
# Usage: scripts/dashboard-snapshot.sh [SECONDS_OF_TRAFFIC [render-dashboard.py options]]
# (default 200 s; KEEP=1 keeps the prefix's queues and Redis keys)
set -euo pipefail
cd "$(dirname "$0")/.."
traffic=${1:-200}
bin=${REFUND_WORKER_BIN:-$(ls -t target/{release,debug}/refund-worker 2>/dev/null | head -1 || true)}
[ -x "$bin" ] || { echo "no refund-worker binary: cargo build, or set REFUND_WORKER_BIN" >&2; exit 2; }
command -v prometheus >/dev/null || { echo "needs prometheus: apt-get install prometheus" >&2; exit 2; }
python3 -c 'import matplotlib' 2>/dev/null || { echo "needs matplotlib: pip install matplotlib" >&2; exit 2; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 100); do curl -sf -o /dev/null "$1" && return; sleep 0.2; done; echo "$1 did not answer" >&2; exit 1; }
# One world for every command below: queues, retry tiers and keys under a fresh prefix.
started=$(date +%s) run=$started
export REFUND_PREFIX=snapshot-$run
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f} REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/}
export REFUND_RETRY__DELAYS=1s,3s REFUND_RETRY__MAX_ATTEMPTS=3 REFUND_PROVIDERS__CIRCUIT_OPEN_FOR=5s
export REFUND_PROVIDERS__STRIPE__RATE_LIMIT=15 RUST_LOG=warn  # Stripe's limit: held calls to show
tmp=$(mktemp -d)
pids=()
cleanup() {
  local status=$?
  if [ "$status" != 0 ]; then tail -n 15 "$tmp"/*.log >&2 || true; fi  # what went wrong
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -z "${KEEP:-}" ]; then  # the prefix's queues (exchanges stay: rabbitmqctl cannot delete them) and keys
    if command -v rabbitmqctl >/dev/null; then
      { rabbitmqctl list_queues -q --no-table-headers name 2>/dev/null | grep "^$REFUND_PREFIX\." || true; } |
        while read -r queue; do rabbitmqctl -q delete_queue "$queue" </dev/null >/dev/null || true; done
    fi
    if command -v redis-cli >/dev/null; then
      for pattern in "$REFUND_PREFIX:*" "{$REFUND_PREFIX:*"; do
        redis-cli -u "$REDIS_URL" --scan --pattern "$pattern" | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null
      done
    fi
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

sandbox=127.0.0.1:$(free_port)
"$bin" sandbox --listen "$sandbox" --latency-ms 20 --jitter-ms 60 >"$tmp/sandbox.log" 2>&1 &
pids+=($!)
wait_for "http://$sandbox/_sandbox/faults"
export REFUND_PROVIDERS_URL=http://$sandbox
# A client certificate 45 days from expiry, for the certificates panel.
if command -v openssl >/dev/null; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 45 -subj /CN=snapshot -keyout "$tmp/key.pem" \
    -out "$tmp/cert.pem" 2>/dev/null && export REFUND_CERTIFICATES__PIX_CLIENT=$tmp/cert.pem
fi
metrics=127.0.0.1:$(free_port)
"$bin" run --metrics-addr "$metrics" >"$tmp/worker.log" 2>&1 &
pids+=($!)
wait_for "http://$metrics/metrics"

# Prometheus: the worker every second (and RabbitMQ's plugin, if it answers), with the alerts.
prometheus_port=$(free_port)
{
  printf 'global: {scrape_interval: 1s, evaluation_interval: 1s}\nrule_files: ["%s"]\nscrape_configs:\n' "$PWD/config/prometheus/alerts.yml"
  printf '  - {job_name: refund-worker, static_configs: [{targets: ["%s"]}]}\n' "$metrics"
  if curl -sf -o /dev/null http://127.0.0.1:15692/metrics; then
    printf '  - {job_name: rabbitmq, metrics_path: /metrics/detailed, params: {family: [queue_coarse_metrics, queue_consumer_count]}, static_configs: [{targets: ["127.0.0.1:15692"]}]}\n'
  fi
} >"$tmp/prometheus.yml"
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
  --web.listen-address="127.0.0.1:$prometheus_port" >"$tmp/prometheus.log" 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$prometheus_port/-/ready"

# A mandate for the support agent (R$ 1.000,00 a refund), spendable by this AMQP user.
user=$(sed -E 's#^amqps?://([^:@/]*).*#\1#' <<<"$AMQP_URL")
"$bin" mandate grant --id cm_snapshot --agent support-bot --max-per-refund 100000 \
  --max-per-day 100000000 --publisher "$user" >/dev/null

# One round of jobs, tagged so that no round repeats another's idempotency keys.
round() {
  local t=${run}_$1 i
  for i in $(seq 40); do echo "{\"payment_id\":\"pi_${t}_$i\",\"amount\":$((1000 + i * 137)),\"provider\":\"stripe\"}"; done
  for i in $(seq 5); do
    echo "{\"payment_id\":\"$run$1$i\",\"amount\":$((1100 + i)),\"provider\":\"mercadopago\"}"
    echo "{\"payment_id\":\"pay_${t}_$i\",\"amount\":$((1300 + i)),\"provider\":\"asaas\"}"
    echo "{\"payment_id\":\"tx_${t}_$i\",\"amount\":$((1500 + i)),\"provider\":\"rinne\"}"
    printf '{"payment_id":"E%010d%06d%015d","amount":%d,"provider":"pix"}\n' "$run" "$1" "$i" $((1700 + i))
  done
  echo "{\"payment_id\":\"pi_${t}_pending\",\"amount\":3500,\"provider\":\"stripe\"}"
  echo "{\"payment_id\":\"pi_${t}_flaky2\",\"amount\":3000,\"provider\":\"stripe\"}"
  echo "{\"payment_id\":\"pay_${t}_flaky3\",\"amount\":1400,\"provider\":\"asaas\"}"
  echo "{\"payment_id\":\"pi_${t}_declined\",\"amount\":4000,\"provider\":\"stripe\"}"        # permanent
  echo "{\"payment_id\":\"${t}_pendingfail\",\"amount\":1200,\"provider\":\"mercadopago\"}"  # permanent, later
  echo "{\"payment_id\":\"pi_${t}_1\",\"amount\":1137,\"provider\":\"stripe\"}"               # a duplicate
  echo "{\"payment_id\":\"pi_${t}_m1\",\"amount\":5000,\"provider\":\"stripe\",\"agent_id\":\"support-bot\",\"mandate_id\":\"cm_snapshot\"}"
  echo "{\"payment_id\":\"pi_${t}_m2\",\"amount\":250000,\"provider\":\"stripe\",\"agent_id\":\"support-bot\",\"mandate_id\":\"cm_snapshot\"}"  # over the cap: mandate
  if (($1 % 4 == 0)); then
    echo "{\"payment_id\":\"tx_${t}_flaky99\",\"amount\":1600,\"provider\":\"rinne\"}"        # exhausted
    echo "{\"order_id\":\"9$1\",\"amount\":900,\"agent_id\":\"support-bot\",\"mandate_id\":\"cm_snapshot\"}"  # no such ERP order
  fi
}

echo "traffic for ${traffic}s: prefix $REFUND_PREFIX, worker $metrics, sandbox $sandbox, prometheus 127.0.0.1:$prometheus_port"
n=0
while (($(date +%s) < started + traffic)); do
  n=$((n + 1))
  round "$n" >"$tmp/round.jsonl"
  "$bin" publish "$tmp/round.jsonl" >>"$tmp/publish.log" 2>&1
  # About a minute in, a 6 s outage of every provider: retries, deferrals, open circuits.
  if ((n == 12)); then curl -sf -o /dev/null -H 'content-type: application/json' \
    -d '{"burst":"5xx","for_ms":6000}' "http://$sandbox/_sandbox/faults"; fi
  sleep 6
done
echo "published $n rounds of $(wc -l <"$tmp/round.jsonl") jobs; letting retries finish"
sleep 25
python3 scripts/render-dashboard.py --prometheus "http://127.0.0.1:$prometheus_port" \
  --minutes $((($(date +%s) - started) / 60 + 1)) --prefix "$REFUND_PREFIX" "${@:2}"
# And what the alert rules made of it.
curl -sf "http://127.0.0.1:$prometheus_port/api/v1/rules" | python3 -c 'import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
active = [r["name"] + " " + r["state"] for r in rules if r.get("state") not in (None, "inactive")]
print("alert rules:", len(rules), "loaded;", ", ".join(active) or "none firing or pending")
for r in rules:
    if r["health"] != "ok":
        print("rule", r["name"], r["health"], r.get("lastError"))'
