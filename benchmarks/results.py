"""What `benchmarks.run` measures and how it reports it: the scenarios, one result per proxy and scenario, and the
Markdown tables benchmarks/README.md records (the plot reads the same results)."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class Scenario:
    """One wrk run: what to request, over how many connections, and what a request moves."""

    name: str
    path: str = "/services/dep-0/"
    script: str | None = None  # a Lua file beside this module
    script_args: tuple[str, ...] = ()
    connections: int | None = None  # None: --connections
    body_mib: float = 0.0  # MiB a request moves (download or upload); 0: a small request
    group: str = "requests"  # requests, bodies or connections: the table it is reported in


SCENARIOS = (
    Scenario("1 deployment"),
    Scenario("200 deployments", path="/", script="spread.lua"),
    # Each connection waits 10 ms between requests (about 6,000/s over 64): a proxy that is not saturated
    # wakes up for almost every request, as at the 60 % CPU target ECS scales the routers at.
    Scenario("200 deployments paced", path="/", script="paced.lua"),
    Scenario("cold ids", path="/", script="cold.lua"),
    Scenario("1 MiB downloads", path="/services/dep-0/blob/1m", connections=16, body_mib=1, group="bodies"),
    Scenario("100 MiB downloads", path="/services/dep-0/blob/100m", connections=4, body_mib=100, group="bodies"),
    Scenario(
        "1 MiB uploads",
        path="/services/dep-0/upload",
        script="upload.lua",
        script_args=(str(MiB),),
        connections=16,
        body_mib=1,
        group="bodies",
    ),
    Scenario(
        "100 MiB uploads",
        path="/services/dep-0/upload",
        script="upload.lua",
        script_args=(str(100 * MiB),),
        connections=4,
        body_mib=100,
        group="bodies",
    ),
    Scenario("5000 connections", connections=5000, group="connections"),
)
SCENARIO_NAMES = {scenario.name: scenario for scenario in SCENARIOS}


@dataclass
class Result:
    proxy: str
    scenario: str
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us_per_request: float
    dns_qps: float
    kernel_pct: int = 0  # the share of the proxy's CPU spent in the kernel (stime)
    mib_per_s: float = 0.0
    cpu_ms_per_mib: float = 0.0
    rss_before_mib: float = 0.0
    peak_rss_mib: float = 0.0
    rss_kib_per_connection: float = 0.0
    open_fds: int = 0
    run: int = 1  # which of --repeat's rounds


def cpu_of(result: Result) -> float:
    """The CPU figure a scenario is judged by: per MiB for bodies, per request otherwise."""
    return result.cpu_ms_per_mib if result.mib_per_s else result.cpu_us_per_request


def medians(results: list[Result]) -> list[Result]:
    """One result per proxy and scenario: with --repeat, the round whose CPU figure is the median (the lower
    middle one for an even count), so that every column of a row comes from the same run."""
    runs: dict[tuple[str, str], list[Result]] = {}
    for result in results:
        runs.setdefault((result.proxy, result.scenario), []).append(result)
    return [sorted(group, key=cpu_of)[(len(group) - 1) // 2] for group in runs.values()]


def tables(results: list[Result]) -> list[str]:
    """The Markdown tables benchmarks/README.md records, one per kind of scenario, then the ratios."""
    groups = {scenario.name: scenario.group for scenario in SCENARIOS}
    columns = {
        "requests": (
            "req/s",
            "p50 ms",
            "p99 ms",
            "errors or non-2xx",
            "proxy CPU µs/req",
            "in kernel",
            "DNS queries/s",
        ),
        "bodies": ("MiB/s", "p99 ms", "errors or non-2xx", "proxy CPU ms/MiB", "peak RSS MiB"),
        "connections": (
            "req/s",
            "p99 ms",
            "errors",
            "proxy CPU µs/req",
            "RSS before MiB",
            "peak RSS MiB",
            "RSS KiB/connection",
        ),
        "soak": ("req/s", "p99 ms", "errors", "proxy CPU µs/req", "peak RSS MiB", "open fds"),
    }

    def cells(r: Result, group: str) -> list[object]:
        if group == "requests":
            return [
                r.rps,
                f"{r.p50_ms:.2f}",
                f"{r.p99_ms:.2f}",
                r.errors,
                r.cpu_us_per_request,
                f"{r.kernel_pct} %",
                r.dns_qps,
            ]
        if group == "bodies":
            return [r.mib_per_s, f"{r.p99_ms:.2f}", r.errors, r.cpu_ms_per_mib, r.peak_rss_mib]
        if group == "connections":
            return [r.rps, f"{r.p99_ms:.2f}", r.errors, r.cpu_us_per_request, r.rss_before_mib, r.peak_rss_mib,
                    r.rss_kib_per_connection]  # fmt: skip
        return [r.rps, f"{r.p99_ms:.2f}", r.errors, r.cpu_us_per_request, r.peak_rss_mib, r.open_fds]

    every_round, results = results, medians(results)
    lines: list[str] = []
    for group, names in columns.items():
        rows = [r for r in results if groups.get(r.scenario, "soak") == group]
        if not rows:
            continue
        lines += ["", "| proxy | scenario | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
        lines += [f"| {r.proxy} | {r.scenario} | " + " | ".join(map(str, cells(r, group))) + " |" for r in rows]
    lines += ratios(results)
    lines += round_by_round(every_round)
    return lines


# Who is compared with whom: every proxy but Nginx against Nginx, and the routers against the bare relay too.
BASELINE = "nginx"
FLOOR = "relay"
NAMES = {"nginx": "Nginx", "relay": "the relay", "haproxy": "HAProxy", "router": "router", "router-pure": "pure router"}


def ratios(results: list[Result]) -> list[str]:
    """One line per scenario and proxy: its CPU per request (per MiB for bodies) over Nginx's and, for the
    routers, over the relay's; the p99s and errors beside them."""
    by_key = {(r.proxy, r.scenario): r for r in results}
    lines = []
    for scenario in SCENARIOS:
        nginx = by_key.get((BASELINE, scenario.name))
        for proxy in sorted({r.proxy for r in results} - {BASELINE}, key=_proxy_order):
            subject = by_key.get((proxy, scenario.name))
            if nginx is not None and subject is not None:
                floor = by_key.get((FLOOR, scenario.name)) if proxy.startswith("router") else None
                lines.append(f"- {scenario.name}: {comparison(subject, nginx, floor)}")
    return lines


def _proxy_order(proxy: str) -> int:
    order = list(NAMES)
    return order.index(proxy) if proxy in order else len(order)


def round_by_round(results: list[Result]) -> list[str]:
    """With --repeat: each round's CPU ratio to Nginx, the proxies of a round having run back to back."""
    by_round = {(r.proxy, r.scenario, r.run): r for r in results}
    lines: list[str] = []
    for scenario in SCENARIOS:
        for proxy in sorted({r.proxy for r in results} - {BASELINE}, key=_proxy_order):
            listed = []
            for run in sorted({r.run for r in results}):
                nginx, subject = by_round.get((BASELINE, scenario.name, run)), by_round.get((proxy, scenario.name, run))
                if nginx and subject and cpu_of(nginx):
                    listed.append(f"{cpu_of(subject) / cpu_of(nginx):.2f}x")
            if len(listed) > 1:
                lines.append(
                    f"- {scenario.name}, {NAMES.get(proxy, proxy)}/Nginx CPU round by round: {', '.join(listed)}"
                )
    return lines


def comparison(subject: Result, nginx: Result, floor: Result | None = None) -> str:
    """`subject`'s CPU against Nginx's (and the relay's, when given), and the p99s and errors beside it."""
    unit = "MiB" if subject.mib_per_s else "request"
    name = NAMES.get(subject.proxy, subject.proxy)
    if nginx.errors >= nginx.requests or not cpu_of(nginx):
        ratio = f"Nginx failed every request ({nginx.errors} errors); {name} CPU {cpu_of(subject)} per {unit}"
    else:
        ratio = f"{name} CPU per {unit} = {cpu_of(subject) / cpu_of(nginx):.2f}x Nginx's"
    if floor is not None and cpu_of(floor) and floor.errors < floor.requests:
        ratio += f", {cpu_of(subject) / cpu_of(floor):.2f}x the relay's"
    return f"{ratio}; p99 {subject.p99_ms:.2f} ms vs {nginx.p99_ms:.2f} ms; errors {subject.errors} vs {nginx.errors}"
