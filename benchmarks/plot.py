"""Draw a results file of `benchmarks.run` as one PNG: CPU per request and per MiB, p99, and the soak over time,
every proxy side by side (the median round, with a line over the range of --repeat's rounds).

    python -m benchmarks.plot [RESULTS.json] [-o benchmarks/capacity.png]

Without a file, the newest one in benchmarks/results/ is drawn. Needs matplotlib (`pip install -e '.[bench]'`,
which `make bench` does).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server
import matplotlib.pyplot as plt

from benchmarks.results import SCENARIOS, Result, medians
from benchmarks.run import HERE, RESULTS_DIR

COLOURS = {"nginx": "#009639", "haproxy": "#b5651d", "relay": "#8c8c8c", "router": "#1f5fbf", "router-pure": "#7fa7e6"}
Row = dict[str, Any]
Spread = dict[tuple[str, str, str], tuple[float, float]]


def newest_results() -> Path:
    files = sorted(RESULTS_DIR.glob("*.json"))
    if not files:
        raise SystemExit("no results in benchmarks/results/: run `make bench` first")
    return files[-1]


def grouped_bars(axis: Any, rows: list[Row], names: list[str], value: str, *, label: str, spread: Spread) -> None:
    """Bars per scenario, one per proxy, each the median round with a line from the lowest to the highest round;
    a proxy that failed every request gets a note instead of a bar."""
    proxies = [proxy for proxy in COLOURS if any(r["proxy"] == proxy for r in rows)]
    width = 0.8 / max(len(proxies), 1)
    for position, proxy in enumerate(proxies):
        offset = (position - (len(proxies) - 1) / 2) * width
        by_name = {r["scenario"]: r for r in rows if r["proxy"] == proxy}
        for index, name in enumerate(names):
            row = by_name.get(name)
            if row is None:
                continue
            x = index + offset
            if row["errors"] >= row["requests"] or not row[value]:
                axis.text(x, 0, "failed", ha="center", va="bottom", fontsize=6, rotation=90, color=COLOURS[proxy])
                continue
            axis.bar(x, row[value], width, color=COLOURS[proxy])
            low, high = spread.get((proxy, name, value), (row[value], row[value]))
            if high > low:
                axis.vlines(x, low, high, color="black", linewidth=1)
            axis.text(x, max(high, row[value]), f"{row[value]:.3g}", ha="center", va="bottom", fontsize=6)
    axis.set_xticks(range(len(names)), names, rotation=15, ha="right", fontsize=8)
    axis.set_ylabel(label)
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[p]) for p in proxies]
    axis.legend(handles, proxies, fontsize=8)


def spread_of(results: list[Result]) -> Spread:
    """(lowest, highest) over --repeat's rounds of each proxy, scenario and plotted value."""
    values: dict[tuple[str, str, str], list[float]] = {}
    for result in results:
        for value in ("cpu_us_per_request", "cpu_ms_per_mib", "p99_ms"):
            values.setdefault((result.proxy, result.scenario, value), []).append(getattr(result, value))
    return {key: (min(found), max(found)) for key, found in values.items()}


def draw(rows: list[Row], spread: Spread, output: Path, title: str) -> None:
    groups = {scenario.name: scenario.group for scenario in SCENARIOS}
    present = {r["scenario"] for r in rows}
    per_request = [s.name for s in SCENARIOS if s.group in {"requests", "connections"} and s.name in present]
    # Cold ids: the router answers new ids at its DNS budget's pace (100/s) and Nginx at its resolver's, so CPU
    # per request compares idle time with work. The tables in benchmarks/README.md show that scenario.
    cpu_panel = [name for name in per_request if name != "cold ids"]
    bodies = [s.name for s in SCENARIOS if s.group == "bodies" and s.name in present]
    soak = [r for r in rows if groups.get(r["scenario"]) is None]
    figure, axes = plt.subplots(2, 2, figsize=(14, 9))
    grouped_bars(axes[0][0], rows, cpu_panel, "cpu_us_per_request", label="proxy CPU µs per request", spread=spread)
    axes[0][0].set_title("CPU per request (lower is better; cold ids in the tables)")
    grouped_bars(axes[0][1], rows, bodies, "cpu_ms_per_mib", label="proxy CPU ms per MiB", spread=spread)
    axes[0][1].set_title("CPU per MiB of body (lower is better)")
    grouped_bars(axes[1][0], rows, per_request + bodies, "p99_ms", label="p99 latency, ms (log)", spread=spread)
    axes[1][0].set_yscale("log")
    axes[1][0].set_title("p99 latency")
    draw_soak(axes[1][1], soak)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(output, dpi=110)
    print(f"wrote {output}")


def draw_soak(axis: Any, soak: list[Row]) -> None:
    memory = axis.twinx()
    for proxy, colour in COLOURS.items():
        minutes = [r for r in soak if r["proxy"] == proxy]
        if not minutes:
            continue
        x = list(range(1, len(minutes) + 1))
        axis.plot(x, [r["p99_ms"] for r in minutes], marker="o", color=colour, label=f"{proxy} p99")
        memory.plot(x, [r["peak_rss_mib"] for r in minutes], ls="--", color=colour, label=f"{proxy} RSS")
    axis.set_xlabel("soak minute (paced: 64 connections, each a request every 10 ms, 200 deployments)")
    axis.set_ylabel("p99 ms")
    axis.set_ylim(bottom=0)
    memory.set_ylabel("peak RSS MiB (dashed)")
    memory.set_ylim(bottom=0)
    axis.set_title("Soak: p99 and memory per minute")
    lines = axis.get_legend_handles_labels()
    more = memory.get_legend_handles_labels()
    axis.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower right")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="?", type=Path, default=None)
    parser.add_argument("-o", "--output", type=Path, default=HERE / "capacity.png")
    args = parser.parse_args()
    path = args.results or newest_results()
    results = [Result(**row) for row in json.loads(path.read_text())]
    rows = [asdict(result) for result in medians(results)]
    title = f"WhaleRay router vs Nginx, HAProxy and the bare relay: median round, line = every round ({path.name})"
    draw(rows, spread_of(results), args.output, title)


if __name__ == "__main__":
    main()
