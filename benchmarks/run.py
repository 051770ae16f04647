"""`make bench`: the router side by side with Nginx, HAProxy and the bare relay, in one run, on loopback.

Starts, each as its own process: the DNS fixture (200 deployments), the backend (a second nginx answering
`200 ok`, serving 1 MiB and 100 MiB files and taking uploads) and, one after another, each proxy of --proxies
(see benchmarks/proxies.py: Nginx with the reference configuration, HAProxy with dynamic resolution, the bare
relay, the router compiled and pure); drives each with wrk through every scenario of SCENARIOS and a paced soak,
and prints requests per second, p50, p99, the proxy's CPU microseconds per request (utime + stime of the proxy's
processes from /proc, divided by the requests wrk completed) and, where they apply, MiB/s, CPU per MiB, peak RSS
and RSS per connection. `python -m benchmarks.plot` draws the results file as a PNG.

Installs nginx, haproxy and wrk with apt-get when they are missing (as root). All traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from benchmarks.proctree import PeakRss, process_tree_cpu_split_s, process_tree_fds, process_tree_rss_bytes
from benchmarks.proxies import PROXIES, ROOT, RUN_DIR, Ports, Proxy, ensure_tools, nginx_command, prepare
from benchmarks.results import SCENARIO_NAMES, MiB, Result, Scenario, tables

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"


# --- set-up ------------------------------------------------------------------------------------------------


def free_port() -> int:
    """A free port below the kernel's ephemeral range: a port from that range, free when picked, can be taken by
    one of the thousands of outgoing connections a scenario opens before the proxy that needs it starts."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 10000), low), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_for_port(port: int, host: str = "127.0.0.1", timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex((host, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {host}:{port}")


@contextmanager
def process(
    name: str, command: list[str], ready_port: int | None = None, cpus: set[int] | None = None, cwd: Path = ROOT
) -> Iterator[subprocess.Popen[bytes]]:
    """`command` running until the block ends; on `cpus` only when given (set in the child before it starts,
    so that Nginx's workers and the router's threads inherit it)."""
    log = (RUN_DIR / f"{name}.log").open("wb")
    pin = None if cpus is None else functools.partial(os.sched_setaffinity, 0, cpus)
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, preexec_fn=pin)  # noqa: PLW1509
    try:
        if ready_port is not None:
            wait_for_port(ready_port)
        yield child
    finally:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()


# --- measuring ---------------------------------------------------------------------------------------------


_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, seconds: float, connections: int, scenario: Scenario, threads: int) -> dict[str, float]:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
    ]
    if scenario.script is not None:
        command += ["-s", str(HERE / scenario.script)]
    command.append(url)
    if scenario.script_args:
        command += ["--", *scenario.script_args]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    latencies = {int(p): float(v) * _UNITS_MS[u] for p, v, u in _LATENCY.findall(output)}
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests": requests,
        "p50_ms": latencies.get(50, float("nan")),
        "p99_ms": latencies.get(99, float("nan")),
        "errors": errors + (int(non_2xx.group(1)) if non_2xx else 0),
    }


def dns_queries(dns: subprocess.Popen[bytes]) -> int:
    """Ask the DNS fixture how many queries it has received (it writes the count on SIGUSR1)."""
    count_file = RUN_DIR / "dns-count"
    count_file.unlink(missing_ok=True)
    dns.send_signal(signal.SIGUSR1)
    for _ in range(100):
        if count_file.exists() and count_file.read_text():
            return int(count_file.read_text())
        time.sleep(0.01)
    raise RuntimeError("the DNS fixture did not report its query count")


def measure(
    proxy: str, pid: int, port: int, scenario: Scenario, args: argparse.Namespace, *, dns: subprocess.Popen[bytes]
) -> Result:
    url = f"http://127.0.0.1:{port}{scenario.path}"
    connections = scenario.connections or args.connections
    rss_before = process_tree_rss_bytes(pid)
    run_wrk(url, args.warmup, connections, scenario, args.threads)  # fill caches and pools
    queries_before, split_before, started = dns_queries(dns), process_tree_cpu_split_s(pid), time.monotonic()
    with PeakRss(pid) as rss:
        figures = run_wrk(url, args.duration, connections, scenario, args.threads)
    split = process_tree_cpu_split_s(pid)
    elapsed = time.monotonic() - started
    user, system = split[0] - split_before[0], split[1] - split_before[1]
    cpu = user + system
    queries = dns_queries(dns) - queries_before
    requests = int(figures["requests"])
    mib = (requests - int(figures["errors"])) * scenario.body_mib  # what went through: an error moves no body
    return Result(
        proxy=proxy,
        scenario=scenario.name,
        requests=requests,
        seconds=round(elapsed, 2),
        rps=round(requests / args.duration),
        p50_ms=figures["p50_ms"],
        p99_ms=figures["p99_ms"],
        errors=int(figures["errors"]),
        cpu_us_per_request=round(cpu / max(requests, 1) * 1e6, 1),
        kernel_pct=round(100 * system / cpu) if cpu else 0,
        dns_qps=round(queries / elapsed, 1),
        mib_per_s=round(mib / args.duration, 1),
        cpu_ms_per_mib=round(cpu / mib * 1e3, 3) if mib else 0.0,
        rss_before_mib=round(rss_before / MiB, 1),
        peak_rss_mib=round(rss.peak / MiB, 1),
        rss_kib_per_connection=round((rss.peak - rss_before) / 1024 / connections, 1),
        open_fds=process_tree_fds(pid),
    )


def soak(proxy: str, pid: int, port: int, args: argparse.Namespace) -> list[Result]:
    """`--soak-minutes` one-minute segments of paced traffic over 200 deployments (each of 64 connections sends a
    request every 10 ms, about 6,000 requests/s): p99, RSS and open descriptors per segment must stay flat."""
    scenario = Scenario("soak", path="/", script="paced.lua")
    url = f"http://127.0.0.1:{port}/"
    results = []
    for minute in range(1, args.soak_minutes + 1):
        user_before, system_before = process_tree_cpu_split_s(pid)
        with PeakRss(pid) as rss:
            figures = run_wrk(url, 60, args.connections, scenario, args.threads)
        user, system = process_tree_cpu_split_s(pid)
        system -= system_before
        cpu, requests = user - user_before + system, int(figures["requests"])
        result = Result(
            proxy=proxy,
            scenario=f"soak minute {minute}",
            requests=requests,
            seconds=60,
            rps=round(requests / 60),
            p50_ms=figures["p50_ms"],
            p99_ms=figures["p99_ms"],
            errors=int(figures["errors"]),
            cpu_us_per_request=round(cpu / max(requests, 1) * 1e6, 1),
            kernel_pct=round(100 * system / cpu) if cpu else 0,
            dns_qps=0.0,
            peak_rss_mib=round(rss.peak / MiB, 1),
            open_fds=process_tree_fds(pid),
        )
        print(json.dumps(asdict(result)), flush=True)
        results.append(result)
    return results


def check_routes(port: int) -> None:
    """Every proxy must answer 200 through the backend before they are measured."""
    for path in ("/services/dep-0/", "/services/dep-199/", "/services/dep-0/blob/1m"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            answer = connection.recv(200)
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"127.0.0.1:{port}{path} answered {answer[:60]!r}")


# --- the run -------------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds of each measured wrk run")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of wrk before each measured run")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections where a scenario sets none")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--proxies", default=",".join(PROXIES), help=f"comma-separated: {', '.join(PROXIES)}")
    parser.add_argument("--router-args", default="", help="extra flags for whaleray-router")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIO_NAMES), help=f"comma-separated: {', '.join(SCENARIO_NAMES)}"
    )
    parser.add_argument("--soak-minutes", type=int, default=10, help="minutes of paced soak per proxy (0: none)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds of every scenario, the proxies taking turns (the soak runs in the last round only); the "
        "tables show each scenario's median round and list every round's CPU ratio",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="run the proxy under test on the first CPU only, and wrk, the backend and the DNS fixture on the "
        "others (as in ECS, where the router task has CPUs of its own): less noise, and no load generator "
        "competing with the proxy for its core",
    )
    args = parser.parse_args()
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        parser.error("--pin needs at least two CPUs")
    unknown = [name for name in args.scenarios.split(",") if name and name not in SCENARIO_NAMES]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}")
    strangers = [name for name in args.proxies.split(",") if name not in PROXIES]
    if strangers:
        parser.error(f"unknown proxy {', '.join(strangers)}")
    return args


def prepare_backend(upstream_port: int) -> Path:
    """The backend's configuration, its 1 MiB and 100 MiB files, and a directory in memory for uploads (nginx's
    WebDAV PUT reads a whole body before it answers, as an application would; writes to tmpfs cost no disk)."""
    files = RUN_DIR / "files"
    (files / "blob").mkdir(parents=True, exist_ok=True)
    for name, size in (("1m", MiB), ("100m", 100 * MiB)):
        blob = files / "blob" / name
        if not blob.exists() or blob.stat().st_size != size:
            blob.write_bytes(b"x" * size)
    memory = Path("/dev/shm") if Path("/dev/shm").is_dir() else RUN_DIR
    uploads = memory / f"whaleray-bench-uploads-{os.getpid()}"
    (uploads / "tmp").mkdir(parents=True, exist_ok=True)
    for directory in (uploads, uploads / "tmp"):  # nginx's workers run as nobody when started by root
        directory.chmod(0o777)
    conf = RUN_DIR / "backend.conf"
    text = (HERE / "backend-nginx.conf").read_text()
    for key, value in (("__UPSTREAM_PORT__", upstream_port), ("__FILES__", files), ("__UPLOADS__", uploads)):
        text = text.replace(key, str(value))
    conf.write_text(text)
    return uploads


def pin_cpus() -> set[int]:
    """Keep the first CPU for the proxy: this process, and so every child it starts after this (wrk, the
    backend, the DNS fixture), moves to the others. Returns the proxy's CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, set(cpus[1:]))
    return {cpus[0]}


def raise_descriptor_limit() -> None:
    """As the task definition's nofile ulimit (65536) does in ECS: 5,000 connections need more than 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main() -> None:
    args = parse_args()
    names = args.proxies.split(",")
    ensure_tools(names)
    raise_descriptor_limit()
    proxy_cpus = pin_cpus() if args.pin else None
    RUN_DIR.mkdir(exist_ok=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    ports = Ports(dns=free_port(), upstream=free_port())
    uploads = prepare_backend(ports.upstream)
    proxies = prepare(names, {name: free_port() for name in names}, ports, args.router_args)
    dns_command = [sys.executable, "-m", "benchmarks.dns_fixture", "--port", str(ports.dns)]
    try:
        with (
            process("dns", [*dns_command, "--count-file", str(RUN_DIR / "dns-count")]) as dns,
            process("backend", nginx_command(RUN_DIR / "backend.conf", "backend"), ready_port=ports.upstream),
        ):
            time.sleep(0.5)  # the DNS fixture binds UDP: no port to poll
            results = run_rounds([proxies[name] for name in names], args, dns, proxy_cpus)
    finally:
        shutil.rmtree(uploads, ignore_errors=True)
    report(results, args)


def run_rounds(
    proxies: list[Proxy], args: argparse.Namespace, dns: subprocess.Popen[bytes], cpus: set[int] | None
) -> list[Result]:
    """--repeat rounds, the proxies taking turns in each (so that a noisy minute hits every proxy of a round)."""
    scenarios = [SCENARIO_NAMES[name] for name in filter(None, args.scenarios.split(","))]
    progress = Progress(args, total=args.repeat * len(proxies) * len(scenarios))
    results: list[Result] = []
    for run in range(1, args.repeat + 1):
        for proxy in proxies:
            with process(proxy.name, proxy.command, ready_port=proxy.port, cpus=cpus, cwd=proxy.cwd) as child:
                check_routes(proxy.port)
                for scenario in scenarios:
                    progress.step(f"round {run}, {proxy.name}, {scenario.name}")
                    result = measure(proxy.name, child.pid, proxy.port, scenario, args, dns=dns)
                    result.run = run
                    print(json.dumps(asdict(result)), flush=True)
                    results.append(result)
                if run == args.repeat:
                    results += soak(proxy.name, child.pid, proxy.port, args)
    return results


class Progress:
    """`[i/N] what, about M min left` before each measured run: a full `make bench` lasts about an hour. The
    estimate is the runs' average so far (a proxy's start and the route check included) and the soaks."""

    def __init__(self, args: argparse.Namespace, total: int) -> None:
        self.total, self.done = total, 0
        self.run_s = args.warmup + args.duration + 1  # until the first run has been timed
        self.soak_s = 60 * args.soak_minutes * len(args.proxies.split(","))
        self.started = time.monotonic()

    def step(self, what: str) -> None:
        if self.done:
            self.run_s = (time.monotonic() - self.started) / self.done
        left_s = (self.total - self.done) * self.run_s + self.soak_s
        self.done += 1
        print(f"[{self.done}/{self.total}] {what}, about {left_s / 60:.0f} min left", file=sys.stderr, flush=True)


def report(results: list[Result], args: argparse.Namespace) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = RESULTS_DIR / f"{stamp}.json"
    path.write_text(json.dumps([asdict(r) for r in results], indent=2))
    placement = "the proxy pinned to one CPU, the rest on the others" if args.pin else "all sharing them"
    rounds = "one run" if args.repeat == 1 else f"median of {args.repeat} rounds"
    print(f"\nwrk -t{args.threads}, {args.duration:g} s runs on {os.cpu_count()} CPUs, {placement}, {rounds} ({path}):")
    for line in tables(results):
        print(line)


if __name__ == "__main__":
    main()
