"""The benchmarks' own code: the in-memory hot-path harness (which also pins the design's common case), the
reports of repeated rounds, and the reference Nginx configuration the comparison runs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from benchmarks.hotpath import HotPath
from benchmarks.proxies import REFERENCE_CONF, adapt_reference
from benchmarks.results import Result, medians, tables

# --- the hot path, in memory (benchmarks/hotpath.py) -------------------------------------------------------


async def test_a_cached_answer_and_an_idle_connection_proxy_without_a_task_or_a_connect() -> None:
    """The design's common case: answered inside the parser callbacks, on pooled connections only. The same
    harness measures the hot path's CPU, so this also keeps that measurement honest."""
    path = HotPath(deployments=3)
    tasks_before = len(asyncio.all_tasks())
    path.run(30)
    path.check()
    assert path.state.connector.reuses == 30
    assert path.state.connector.connects == 0
    assert path.state.inflight == 0
    assert len(asyncio.all_tasks()) == tasks_before
    assert path.state.metrics.requests == {("dep-0", 200): 10, ("dep-1", 200): 10, ("dep-2", 200): 10}


async def test_request_ids_are_a_random_prefix_and_a_ten_digit_hex_counter() -> None:
    state = HotPath(deployments=1).state
    ids = [state.next_request_id() for _ in range(600)]  # across two 256-request stem changes
    prefix = ids[0][:12]
    assert ids == [b"%s%010x" % (prefix, counter) for counter in range(1, 601)]
    assert HotPath(deployments=1).state.next_request_id()[:12] != prefix  # each process its own prefix


def test_repeated_benchmark_rounds_report_the_median_round_whole_and_every_ratio() -> None:
    def result(proxy: str, cpu: float, run: int) -> Result:
        return Result(proxy, "200 deployments", 1000, 10.0, 100.0, 1.0, cpu / 10, 0, cpu, 0.0, run=run)

    rounds = [result("nginx", 40.0, 1), result("router", 30.0, 1), result("nginx", 50.0, 2)]
    rounds += [result("router", 20.0, 2), result("nginx", 45.0, 3), result("router", 36.0, 3)]
    chosen = {r.proxy: r for r in medians(rounds)}
    assert (chosen["nginx"].cpu_us_per_request, chosen["nginx"].run) == (45.0, 3)
    assert (chosen["router"].cpu_us_per_request, chosen["router"].p99_ms) == (30.0, 3.0)  # one run's columns
    lines = tables(rounds)
    assert "- 200 deployments: router CPU per request = 0.67x Nginx's; p99 3.00 ms vs 4.50 ms; errors 0 vs 0" in lines
    assert "- 200 deployments, router/Nginx CPU round by round: 0.75x, 0.40x, 0.80x" in lines


def test_benchmark_ratios_put_the_routers_beside_nginx_and_the_relay_and_the_others_beside_nginx() -> None:
    def result(proxy: str, cpu: float) -> Result:
        return Result(proxy, "1 deployment", 1000, 10.0, 100.0, 1.0, 2.0, 0, cpu, 0.0)

    rounds = [result("nginx", 60.0), result("relay", 15.0), result("haproxy", 30.0)]
    rounds += [result("router", 18.0), result("router-pure", 30.0)]
    lines = tables(rounds)
    same = "p99 2.00 ms vs 2.00 ms; errors 0 vs 0"
    expected = [
        f"- 1 deployment: the relay CPU per request = 0.25x Nginx's; {same}",
        f"- 1 deployment: HAProxy CPU per request = 0.50x Nginx's; {same}",  # no floor but for the routers
        f"- 1 deployment: router CPU per request = 0.30x Nginx's, 1.20x the relay's; {same}",
        f"- 1 deployment: pure router CPU per request = 0.50x Nginx's, 2.00x the relay's; {same}",
    ]
    assert [line for line in lines if line.startswith("- 1 deployment:")] == expected


# --- the benchmark's reference configuration ------------------------------------------------------------------


def test_the_reference_nginx_configuration_is_in_the_repository_and_adapts() -> None:
    """`make bench` runs from a clone alone: the copy is here, says where it comes from, and keeps its shape."""
    assert REFERENCE_CONF.is_relative_to(Path(__file__).resolve().parent.parent)
    assert "shared/reference/nginx-router.conf" in REFERENCE_CONF.read_text().splitlines()[0]
    adapted = adapt_reference(18080, 18053, 13000)
    assert "listen 127.0.0.1:18080;" in adapted
    assert "resolver 127.0.0.1:18053 " in adapted
    assert ".whaleray.local:13000/" in adapted
