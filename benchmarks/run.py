"""`make bench`: the router and Nginx (the reference configuration) side by side, in one run, on loopback.

Starts, each as its own process: the DNS fixture (200 deployments), the backend (a second nginx answering
`200 ok`, serving 1 MiB and 100 MiB files and taking uploads), the Nginx router
(`benchmarks/reference/nginx-router.conf`, a copy of the platform's reference, adapted only in ports and
resolver address) and the WhaleRay router;
then drives each proxy with wrk through every scenario of SCENARIOS and a paced soak, and prints requests per
second, p50, p99, the proxy's CPU microseconds per request (utime + stime of the proxy's processes from /proc,
divided by the requests wrk completed) and, where they apply, MiB/s, CPU per MiB, peak RSS and RSS per
connection. `python -m benchmarks.plot` draws the results file as a PNG.

Installs nginx and wrk with apt-get when they are missing (as root). All traffic stays on 127.0.0.0/8.
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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUN_DIR = HERE / ".run"
RESULTS_DIR = HERE / "results"
REFERENCE_CONF = HERE / "reference" / "nginx-router.conf"  # a copy of shared/reference/, origin noted inside
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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


# --- set-up ------------------------------------------------------------------------------------------------


def ensure_tools() -> None:
    missing = [
        name for name in ("nginx", "wrk") if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()
    ]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"benchmarks need {', '.join(missing)}: install them (Debian: apt-get install nginx-light wrk)")
    print(f"installing {', '.join(missing)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    packages = ["nginx-light" if name == "nginx" else name for name in missing]
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env, stdout=subprocess.DEVNULL)


def nginx_binary() -> str:
    return shutil.which("nginx") or "/usr/sbin/nginx"


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


def adapt_reference(listen_port: int, dns_port: int, upstream_port: int) -> str:
    """The reference configuration with only its listen port, resolver address and upstream port changed."""
    text = REFERENCE_CONF.read_text()
    adapted = text.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    adapted = adapted.replace("resolver 169.254.169.253 ", f"resolver 127.0.0.1:{dns_port} ")
    adapted = adapted.replace(".whaleray.local:3000/", f".whaleray.local:{upstream_port}/")
    if adapted.count(str(listen_port)) != 1 or f"127.0.0.1:{dns_port}" not in adapted:
        raise RuntimeError("the reference configuration changed shape: update adapt_reference()")
    return adapted


@contextmanager
def process(
    name: str, command: list[str], ready_port: int | None = None, cpus: set[int] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`command` running until the block ends; on `cpus` only when given (set in the child before it starts,
    so that Nginx's workers and the router's threads inherit it)."""
    log = (RUN_DIR / f"{name}.log").open("wb")
    pin = None if cpus is None else functools.partial(os.sched_setaffinity, 0, cpus)
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, preexec_fn=pin)  # noqa: PLW1509
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


def nginx_command(conf: Path, name: str) -> list[str]:
    directives = f"daemon off; pid {RUN_DIR / (name + '.pid')}; error_log {RUN_DIR / (name + '.error.log')} warn;"
    return [nginx_binary(), "-p", str(RUN_DIR), "-c", str(conf), "-g", directives]


# --- measuring ---------------------------------------------------------------------------------------------


def process_tree_cpu_split_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of `pid` and its children, in seconds: the proxy's own work, and the kernel's for it."""
    user = system = 0
    for one in [pid, *children_of(pid)]:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])  # fields 14 and 15 of stat
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid`, from /proc (the tests use it for the router's workers too)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def process_tree_rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and its children (Nginx's master and workers add up)."""
    total = 0
    for one in [pid, *children_of(pid)]:
        try:
            status = Path(f"/proc/{one}/status").read_text()
        except FileNotFoundError:
            continue
        total += next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total


def process_tree_fds(pid: int) -> int:
    total = 0
    for one in [pid, *children_of(pid)]:
        with suppress(FileNotFoundError):
            total += len(os.listdir(f"/proc/{one}/fd"))
    return total


class PeakRss:
    """Samples the process tree's RSS every 50 ms while a run lasts: the peak of that run, not of the process's
    life (VmHWM would carry over from earlier scenarios and cannot add up Nginx's workers)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, process_tree_rss_bytes(self.pid))

    def __enter__(self) -> PeakRss:
        self.peak = process_tree_rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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
    """Both proxies must answer 200 through the backend before they are measured."""
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
    parser.add_argument("--proxies", default="nginx,router", help="comma-separated: nginx, router")
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


def router_command(args: argparse.Namespace, port: int, dns_port: int, upstream_port: int) -> list[str]:
    return [
        sys.executable, "-m", "router", "--host", "127.0.0.1", "--port", str(port), "--admin-port", "0",
        "--resolver", f"127.0.0.1:{dns_port}", "--upstream-allow-cidr", "127.0.0.0/8",
        "--upstream-port", str(upstream_port), "--log-level", "warning",
        "--access-log", "off",  # the reference Nginx configuration has access_log off: the same work
        *args.router_args.split(),
    ]  # fmt: skip


def main() -> None:
    args = parse_args()
    ensure_tools()
    raise_descriptor_limit()
    proxy_cpus = pin_cpus() if args.pin else None
    RUN_DIR.mkdir(exist_ok=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    dns_port, upstream_port, nginx_port, router_port = free_port(), free_port(), free_port(), free_port()
    uploads = prepare_backend(upstream_port)
    router_conf = RUN_DIR / "nginx-router.conf"
    router_conf.write_text(adapt_reference(nginx_port, dns_port, upstream_port))
    dns_command = [sys.executable, "-m", "benchmarks.dns_fixture", "--port", str(dns_port)]
    results: list[Result] = []
    try:
        with (
            process("dns", [*dns_command, "--count-file", str(RUN_DIR / "dns-count")]) as dns,
            process("backend", nginx_command(RUN_DIR / "backend.conf", "backend"), ready_port=upstream_port),
        ):
            time.sleep(0.5)  # the DNS fixture binds UDP: no port to poll
            proxies = {
                "nginx": (nginx_command(router_conf, "nginx-router"), nginx_port),
                "router": (router_command(args, router_port, dns_port, upstream_port), router_port),
            }
            for run in range(1, args.repeat + 1):
                for name in args.proxies.split(","):
                    command, port = proxies[name]
                    with process(name, command, ready_port=port, cpus=proxy_cpus) as child:
                        check_routes(port)
                        for scenario_name in filter(None, args.scenarios.split(",")):
                            result = measure(name, child.pid, port, SCENARIO_NAMES[scenario_name], args, dns=dns)
                            result.run = run
                            print(json.dumps(asdict(result)), flush=True)
                            results.append(result)
                        if run == args.repeat:
                            results += soak(name, child.pid, port, args)
    finally:
        shutil.rmtree(uploads, ignore_errors=True)
    report(results, args)


def report(results: list[Result], args: argparse.Namespace) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = RESULTS_DIR / f"{stamp}.json"
    path.write_text(json.dumps([asdict(r) for r in results], indent=2))
    placement = "the proxy pinned to one CPU, the rest on the others" if args.pin else "all sharing them"
    rounds = "one run" if args.repeat == 1 else f"median of {args.repeat} rounds"
    print(f"\nwrk -t{args.threads}, {args.duration:g} s runs on {os.cpu_count()} CPUs, {placement}, {rounds} ({path}):")
    for line in tables(results):
        print(line)


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
    by_key = {(r.proxy, r.scenario): r for r in results}
    lines.append("")
    for scenario in SCENARIOS:
        nginx, router = by_key.get(("nginx", scenario.name)), by_key.get(("router", scenario.name))
        if nginx and router:
            lines.append(f"- {scenario.name}: {comparison(router, nginx, per_mib=scenario.body_mib > 0)}")
    lines += round_by_round(every_round)
    return lines


def round_by_round(results: list[Result]) -> list[str]:
    """With --repeat: each round's router/Nginx CPU ratio, the two proxies of a round having run back to back."""
    by_round = {(r.proxy, r.scenario, r.run): r for r in results}
    lines: list[str] = []
    for scenario in SCENARIOS:
        ratios = []
        for run in sorted({r.run for r in results}):
            nginx, router = by_round.get(("nginx", scenario.name, run)), by_round.get(("router", scenario.name, run))
            if nginx and router and cpu_of(nginx):
                ratios.append(cpu_of(router) / cpu_of(nginx))
        if len(ratios) > 1:
            listed = ", ".join(f"{ratio:.2f}x" for ratio in ratios)
            lines.append(f"- {scenario.name}, router/Nginx CPU round by round: {listed}")
    return lines


def comparison(router: Result, nginx: Result, *, per_mib: bool) -> str:
    """The router's CPU against Nginx's, per MiB for body scenarios, and the p99s and errors beside it."""
    router_cpu, nginx_cpu = (
        (router.cpu_ms_per_mib, nginx.cpu_ms_per_mib)
        if per_mib
        else (router.cpu_us_per_request, nginx.cpu_us_per_request)
    )
    unit = "MiB" if per_mib else "request"
    if nginx.errors >= nginx.requests or not nginx_cpu:
        ratio = f"Nginx failed every request ({nginx.errors} errors); router CPU {router_cpu} per {unit}"
    else:
        ratio = f"router CPU per {unit} = {router_cpu / nginx_cpu:.2f}x Nginx's"
    return f"{ratio}; p99 {router.p99_ms:.2f} ms vs {nginx.p99_ms:.2f} ms; errors {router.errors} vs {nginx.errors}"


if __name__ == "__main__":
    main()
