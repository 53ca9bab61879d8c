#!/usr/bin/env python3
"""Plots docs/perf/sweep.jsonl (from scripts/bench-sweep.sh) to docs/perf/throughput.png:
jobs/s against concurrency, one line per provider latency, with each run's broker ceiling
(a grey x) and the concurrency / latency bound (dotted)."""
import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = pathlib.Path(__file__).resolve().parent.parent
runs = [json.loads(line) for line in (root / "docs/perf/sweep.jsonl").read_text().splitlines() if line.strip()]
fig, ax = plt.subplots(figsize=(8, 5))
for latency in sorted({r["provider_latency_ms"] for r in runs}):
    points = sorted((r["concurrency"], r["jobs_per_sec"]) for r in runs if r["provider_latency_ms"] == latency)
    xs, ys = zip(*points)
    line, = ax.plot(xs, ys, marker="o", label=f"worker, provider latency {latency} ms")
    if latency > 0:
        bound = [c * 1000 / latency for c in xs]
        ax.plot(xs, bound, linestyle=":", color=line.get_color(), alpha=0.6,
                label=f"concurrency / {latency} ms")
ceilings = [(r["concurrency"], r["ceiling_per_sec"]) for r in runs if r.get("ceiling_per_sec")]
if ceilings:
    xs, ys = zip(*ceilings)
    ax.scatter(xs, ys, marker="x", color="grey",
               label="bare consume-and-ack ceiling, same run (prefetch = 2 x concurrency)")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("worker concurrency (jobs in progress at once)")
ax.set_ylabel("jobs/s")
ax.set_title("refund-worker bench on 2 cores (RabbitMQ, Redis, sandbox and worker on one machine)")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(root / "docs/perf/throughput.png", dpi=110)
print("wrote docs/perf/throughput.png")
