#!/usr/bin/env python3
"""Renders grafana/dashboards/refund-worker.json without Grafana: every panel's PromQL,
evaluated by a real Prometheus over the last --minutes, drawn with matplotlib where the panel's
gridPos puts it, into one PNG (docs/dashboard.png). scripts/dashboard-snapshot.sh makes the
data (sandbox, worker, Prometheus, a mixed batch) and runs this.

Usage: scripts/render-dashboard.py [--prometheus URL] [--minutes N] [--prefix P]
                                   [--currency C] [--out FILE]"""
import argparse
import datetime
import json
import math
import pathlib
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

try:
    import matplotlib
except ImportError:
    print("render-dashboard.py needs matplotlib: pip install matplotlib", file=sys.stderr)
    sys.exit(2)
matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

root = pathlib.Path(__file__).resolve().parent.parent
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
parser.add_argument("--minutes", type=float, default=15, help="the window, ending now")
parser.add_argument("--prefix", default="refunds", help="the worker's queue prefix ($prefix)")
parser.add_argument("--currency", default="BRL", help="$currency")
parser.add_argument("--dashboard", default=str(root / "grafana/dashboards/refund-worker.json"))
parser.add_argument("--out", default=str(root / "docs/dashboard.png"))
args = parser.parse_args()


def substitute(text):
    """Grafana's variables as tests/it/observability.rs substitute() sets them."""
    for name, value in [("__rate_interval", "1m"), ("__interval", "15s"), ("__range", "5m"),
                        ("provider", ".*"), ("prefix", args.prefix), ("currency", args.currency)]:
        text = text.replace("${%s}" % name, value).replace("$" + name, value)
    return text


def panels(items):
    """Every panel, rows' nested panels included, in gridPos order (y, then x)."""
    out = []
    for panel in items:
        out.append(panel)
        out.extend(panels(panel.get("panels", [])))
    return sorted(out, key=lambda p: (p["gridPos"]["y"], p["gridPos"]["x"]))


def query_range(expr, start, end, step):
    url = f"{args.prometheus}/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": expr, "start": start, "end": end, "step": f"{step:g}"})
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as e:  # 400/422: Prometheus explains in the body
        body = json.load(e)
    if body.get("status") != "success":
        raise ValueError(f"{body.get('errorType')}: {body.get('error')}")
    return body["data"]["result"]


def legend(fmt, labels):
    if fmt and fmt != "__auto":
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), substitute(fmt))
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    return "{" + ", ".join(f'{k}="{v}"' for k, v in shown.items()) + "}" if shown else "value"


def number(value, unit, decimals):
    if not math.isfinite(value):
        return str(value)
    if unit == "percentunit":
        return f"{value * 100:.1f}%"
    if decimals is None:
        decimals = 0 if abs(value) >= 100 or value == int(value) else 3 - len(str(int(abs(value))))
    return f"{value:,.{decimals}f}" + {"s": " s", "ops": "/s"}.get(unit, "")


# Query every panel first, then draw.
dashboard = json.loads(pathlib.Path(args.dashboard).read_text())
try:
    urllib.request.urlopen(f"{args.prometheus}/-/ready", timeout=10).close()
except (urllib.error.URLError, OSError) as e:
    sys.exit(f"cannot reach Prometheus at {args.prometheus} ({e}): use --prometheus URL")
end = time.time()
start = end - args.minutes * 60
step = max(1.0, round(args.minutes * 60 / 120, 1))
drawn, empty, broken, total_series = [], [], [], 0
for panel in panels(dashboard["panels"]):
    if panel["type"] in ("row", "text"):
        drawn.append((panel, None))
        continue
    series = []
    for target in panel.get("targets", []):
        expr = substitute(target.get("expr", ""))
        try:
            if "$" in expr:
                raise ValueError("a template variable this script does not know")
            result = query_range(expr, start, end, step)
        except (ValueError, urllib.error.URLError) as e:
            broken.append(f"{panel['title']} {target.get('refId', '?')}: {e}\n    {expr}")
            continue
        for s in result:
            times = [datetime.datetime.fromtimestamp(t, datetime.timezone.utc) for t, _ in s["values"]]
            values = [float(v) for _, v in s["values"]]
            series.append((legend(target.get("legendFormat"), s["metric"]), times, values))
    total_series += len(series)
    if not series:
        empty.append(substitute(panel["title"]))
    drawn.append((panel, series))


def color_of(value, defaults):
    """The colour Grafana gives a value: a value mapping's, else the threshold step's."""
    for mapping in defaults.get("mappings") or []:
        option = mapping.get("options", {}).get(f"{value:g}") if not math.isnan(value) else None
        if mapping.get("type") == "value" and option and option.get("color"):
            return option["color"].split("-")[-1]  # "dark-red" -> "red"
    color = "grey"
    for threshold in defaults.get("thresholds", {}).get("steps", []):
        if threshold["value"] is None or (not math.isnan(value) and value >= threshold["value"]):
            color = threshold["color"].split("-")[-1]
    return color


# The dashboard's own layout: 24 columns, gridPos height units, each panel framed and titled.
W, U, TOP = 20.0, 0.42, 0.6  # figure width, one height unit and the header, in inches
H = TOP + U * max(p["gridPos"]["y"] + p["gridPos"]["h"] for p, _ in drawn) + 0.1
fig = plt.figure(figsize=(W, H))
lo, hi = (datetime.datetime.fromtimestamp(t, datetime.timezone.utc) for t in (start, end))
fig.text(0.1 / W, 1 - 0.3 / H, f"{dashboard['title']} — prefix {args.prefix}, currency {args.currency}, "
         f"{lo:%Y-%m-%d %H:%M}–{hi:%H:%M} UTC, step {step:g}s  (scripts/render-dashboard.py: "
         "the dashboard's queries evaluated by Prometheus, drawn without Grafana)", fontsize=13, va="center")


def time_axis(ax):
    locator = mdates.AutoDateLocator(minticks=4, maxticks=8)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, show_offset=False))


def place(g, left, bottom, right, top):
    """Axes inside the panel at gridPos g, with these margins in inches."""
    x, y = 0.1 + g["x"] / 24 * (W - 0.2), TOP + g["y"] * U
    w, h = g["w"] / 24 * (W - 0.2), g["h"] * U
    return fig.add_axes([(x + left) / W, 1 - (y + h - bottom) / H, (w - left - right) / W, (h - top - bottom) / H])


for panel, series in drawn:
    g, title = panel["gridPos"], substitute(panel["title"])
    x, y = 0.1 + g["x"] / 24 * (W - 0.2), TOP + g["y"] * U
    if series is None:  # a row: its title as a header
        fig.text(x / W, 1 - (y + U / 2) / H, title, fontsize=13, fontweight="bold", va="center")
        continue
    w, h = g["w"] / 24 * (W - 0.2), g["h"] * U
    fig.add_artist(plt.Rectangle((x / W, 1 - (y + h - 0.03) / H), (w - 0.06) / W, (h - 0.06) / H,
                                 transform=fig.transFigure, fill=False, edgecolor="#ccc"))
    fig.text((x + 0.1) / W, 1 - (y + 0.2) / H, title, fontsize=10, fontweight="bold", va="center")
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit, decimals = defaults.get("unit"), defaults.get("decimals")
    last = [(name, next((v for v in reversed(values) if not math.isnan(v)), math.nan))
            for name, _, values in series]
    kind = panel["type"] if series else "empty"
    if kind in ("empty", "stat", "table"):
        ax = place(g, 0.1, 0.1, 0.1, 0.4)
        ax.axis("off")
    if kind == "empty":
        ax.text(0.5, 0.5, "No data", ha="center", va="center", color="grey", fontsize=12)
    elif kind == "stat":  # the last value, big and coloured by the thresholds, over a sparkline
        name, times, values = series[0]
        color = color_of(last[0][1], defaults)
        ax.plot(times, values, color=color, alpha=0.4)
        ax.fill_between(times, values, color=color, alpha=0.1)
        ax.set_xlim(lo, hi)
        ax.text(0.5, 0.5, number(last[0][1], unit, decimals), ha="center", va="center",
                fontsize=24, fontweight="bold", color=color, transform=ax.transAxes)
    elif kind == "table":  # one row per series: its legend and last value
        table = ax.table(cellText=[[n, number(v, unit, decimals)] for n, v in last],
                         colLabels=["series", "last value"], loc="upper center", cellLoc="left", colLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(9)
    elif kind == "bargauge":  # the last value per series, a bar each
        ax = place(g, 1.3, 0.3, 0.2, 0.45)
        bars = [0 if math.isnan(v) else v for _, v in last]
        ax.barh([n for n, _ in last], bars, color="tab:green")
        for i, (_, v) in enumerate(last):
            ax.text(bars[i], i, " " + number(v, unit, decimals), va="center", fontsize=8)
        ax.set_xlim(0, max(bars + [1]) * 1.15)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
    elif kind == "state-timeline":  # a band per series, coloured as the panel maps values
        ax = place(g, 1.9, 0.3, 0.2, 0.45)
        for i, (name, times, values) in enumerate(series):
            for t0, t1, v in zip(times, times[1:], values):
                ax.barh(i, t1 - t0, left=t0, height=0.8, color=color_of(v, defaults), linewidth=0)
        ax.set_yticks(range(len(series)), [name for name, _, _ in series], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlim(lo, hi)
        time_axis(ax)
        ax.tick_params(labelsize=7)
        states = [o for m in defaults.get("mappings") or [] for o in m.get("options", {}).items()]
        fig.text((x + w - 0.2) / W, 1 - (y + 0.2) / H, "   ".join(f"{k} = {o.get('text', k)} ({o.get('color')})"
                 for k, o in states), fontsize=8, ha="right", va="center", color="#555")
    else:  # timeseries: a line per series, the legend on the right (series always at 0 left out)
        ax = place(g, 0.6, 0.3, min(2.8, 0.33 * w), 0.45)
        at_zero = 0
        for name, times, values in series:
            if all(v == 0 or math.isnan(v) for v in values):
                at_zero += 1
                ax.plot(times, values, color="#bbb", linewidth=0.8, linestyle="--")
            else:
                ax.plot(times, values, label=name, linewidth=1.3)
        ax.set_xlim(lo, hi)
        ax.set_ylim(defaults.get("min"), defaults.get("max"))
        ax.ticklabel_format(axis="y", useOffset=False)
        time_axis(ax)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
        if unit == "percentunit":
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        elif unit in ("s", "ops", "d"):
            ax.set_ylabel({"s": "seconds", "ops": "per second", "d": "days"}[unit], fontsize=7)
        handles, labels = ax.get_legend_handles_labels()
        if at_zero:
            handles.append(plt.Line2D([], [], color="#bbb", linestyle="--"))
            labels.append(f"{at_zero} series at 0 or NaN")
        ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), borderaxespad=0,
                  ncol=1 + len(labels) // 19, labelspacing=0.3, frameon=False)

out = pathlib.Path(args.out)
out.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(out, dpi=90)
shown = [p for p, s in drawn if s is not None]
print(f"wrote {out}: {len(shown)} panels, {total_series} series, over {args.minutes:g} min of {args.prometheus}")
print(f"panels with no data ({len(empty)}): {', '.join(empty) if empty else 'none'}")
for line in broken:
    print(f"query failed: {line}")
sys.exit(1 if broken else 0)
