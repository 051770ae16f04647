"""`make bench`: the router and Nginx (the reference configuration) side by side, in one run, on loopback.

Starts, each as its own process: the DNS fixture (200 deployments), the backend (a second nginx answering
`200 ok`), the Nginx router (`../shared/reference/nginx-router.conf`, adapted only in ports and resolver
address) and the WhaleRay router; then drives each proxy with wrk, one deployment and 200 deployments, and
prints requests per second, p50, p99 and the proxy's CPU microseconds per request (utime + stime of the
proxy's processes from /proc, divided by the requests wrk completed).

Installs nginx and wrk with apt-get when they are missing (as root). All traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUN_DIR = HERE / ".run"
RESULTS_DIR = HERE / "results"
REFERENCE_CONF = ROOT.parent / "shared" / "reference" / "nginx-router.conf"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
def process(name: str, command: list[str], ready_port: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    log = (RUN_DIR / f"{name}.log").open("wb")
    child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
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


def process_tree_cpu_s(pid: int) -> float:
    """utime + stime of `pid` and its children (nginx's workers), in seconds."""
    total = 0
    pids = [pid, *children_of(pid)]
    for one in pids:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


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


_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, seconds: float, connections: int, script: Path | None, threads: int) -> dict[str, float]:
    command = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "5s",
    ]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run([*command, url], check=True, capture_output=True, text=True).stdout
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


SCRIPTS = {"1 deployment": None, "200 deployments": HERE / "spread.lua", "cold ids": HERE / "cold.lua"}


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
    proxy: str, pid: int, port: int, scenario: str, args: argparse.Namespace, *, dns: subprocess.Popen[bytes]
) -> Result:
    script = SCRIPTS[scenario]
    path = "/" if script else "/services/dep-0/"
    url = f"http://127.0.0.1:{port}{path}"
    run_wrk(url, args.warmup, args.connections, script, args.threads)  # fill caches and pools
    queries_before, cpu_before, started = dns_queries(dns), process_tree_cpu_s(pid), time.monotonic()
    figures = run_wrk(url, args.duration, args.connections, script, args.threads)
    elapsed, cpu = time.monotonic() - started, process_tree_cpu_s(pid) - cpu_before
    queries = dns_queries(dns) - queries_before
    requests = int(figures["requests"])
    return Result(
        proxy=proxy,
        scenario=scenario,
        requests=requests,
        seconds=round(elapsed, 2),
        rps=round(requests / args.duration),
        p50_ms=figures["p50_ms"],
        p99_ms=figures["p99_ms"],
        errors=int(figures["errors"]),
        cpu_us_per_request=round(cpu / max(requests, 1) * 1e6, 1),
        dns_qps=round(queries / elapsed, 1),
    )


def check_routes(port: int) -> None:
    """Both proxies must answer 200 through the backend before they are measured."""
    for path in ("/services/dep-0/", "/services/dep-199/"):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            answer = connection.recv(200)
        if not answer.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"127.0.0.1:{port}{path} answered {answer[:60]!r}")


# --- the run -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10, help="seconds of each measured wrk run")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of wrk before each measured run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--proxies", default="nginx,router", help="comma-separated: nginx, router")
    parser.add_argument("--router-args", default="", help="extra flags for whaleray-router")
    parser.add_argument("--scenarios", default=",".join(SCRIPTS), help=f"comma-separated: {', '.join(SCRIPTS)}")
    args = parser.parse_args()
    ensure_tools()
    RUN_DIR.mkdir(exist_ok=True)
    RESULTS_DIR.mkdir(exist_ok=True)
    dns_port, upstream_port, nginx_port, router_port = free_port(), free_port(), free_port(), free_port()
    backend_conf = RUN_DIR / "backend.conf"
    backend_conf.write_text((HERE / "backend-nginx.conf").read_text().replace("__UPSTREAM_PORT__", str(upstream_port)))
    router_conf = RUN_DIR / "nginx-router.conf"
    router_conf.write_text(adapt_reference(nginx_port, dns_port, upstream_port))
    python = sys.executable
    results: list[Result] = []
    with (
        process(
            "dns",
            [
                python,
                "-m",
                "benchmarks.dns_fixture",
                "--port",
                str(dns_port),
                "--count-file",
                str(RUN_DIR / "dns-count"),
            ],
        ) as dns,
        process("backend", nginx_command(backend_conf, "backend"), ready_port=upstream_port),
    ):
        time.sleep(0.5)  # the DNS fixture binds UDP: no port to poll
        proxies = {
            "nginx": (nginx_command(router_conf, "nginx-router"), nginx_port),
            "router": (
                [
                    python,
                    "-m",
                    "router",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(router_port),
                    "--admin-port",
                    "0",
                    "--resolver",
                    f"127.0.0.1:{dns_port}",
                    "--upstream-allow-cidr",
                    "127.0.0.0/8",
                    "--upstream-port",
                    str(upstream_port),
                    "--log-level",
                    "warning",
                    "--access-log",  # the reference Nginx configuration has access_log off: the same work
                    "off",
                    *args.router_args.split(),
                ],
                router_port,
            ),
        }
        for name in args.proxies.split(","):
            command, port = proxies[name]
            with process(name, command, ready_port=port) as child:
                check_routes(port)
                for scenario in args.scenarios.split(","):
                    result = measure(name, child.pid, port, scenario, args, dns=dns)
                    print(json.dumps(asdict(result)), flush=True)
                    results.append(result)
    report(results, args)


def report(results: list[Result], args: argparse.Namespace) -> None:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    (RESULTS_DIR / f"{stamp}.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s on {os.cpu_count()} CPUs, one run:\n")
    print("| proxy | scenario | req/s | p50 ms | p99 ms | errors or non-2xx | proxy CPU µs/req | DNS queries/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.proxy} | {r.scenario} | {r.rps} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} | "
            f"{r.cpu_us_per_request} | {r.dns_qps} |"
        )
    by_key = {(r.proxy, r.scenario): r for r in results}
    for scenario in SCRIPTS:
        nginx, router = by_key.get(("nginx", scenario)), by_key.get(("router", scenario))
        if nginx and router:
            ratio = router.cpu_us_per_request / nginx.cpu_us_per_request
            print(
                f"\n{scenario}: router CPU per request = {ratio:.2f}x Nginx's; "
                f"p99 {router.p99_ms:.2f} ms vs {nginx.p99_ms:.2f} ms"
            )


if __name__ == "__main__":
    main()
