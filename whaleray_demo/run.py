"""`python -m whaleray_demo` (`make demo`): everything on loopback, no Docker, no AWS.

- a DNS server for `whaleray.local` on 127.0.0.1:8053 (Cloud Map's stand-in);
- demo backends on port 3000 of 127.0.0.2, 127.0.0.3 and 127.0.0.4;
- deployments `hello` (127.0.0.2), `api` (127.0.0.3) and `multi` (127.0.0.3 and 127.0.0.4);
- the router on 127.0.0.1:8080 (admin on 127.0.0.1:9901), allowed to dial loopback for the demo only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Sequence

import uvloop

from router.app import Router
from router.logs import setup_logging
from router.settings import load_settings
from whaleray_demo.backend import start_backend
from whaleray_demo.dns import DemoDnsServer

BACKENDS = {"127.0.0.2": "hello-backend", "127.0.0.3": "api-backend", "127.0.0.4": "api-backend-2"}
DEPLOYMENTS = {"hello": ["127.0.0.2"], "api": ["127.0.0.3"], "multi": ["127.0.0.3", "127.0.0.4"]}


def try_these(port: int, admin_port: int) -> list[str]:
    """The commands the banner prints; the README lists the same ones (a test holds them together)."""
    base, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    return [
        f"curl -s {base}/services/hello/api/users?page=2        # routed to hello-backend",
        f"curl -s {base}/services/api/orders/42                 # routed to api-backend",
        f"for i in 1 2 3 4; do curl -s {base}/services/multi/; echo; done   # spread over two backends",
        f"curl -s '{base}/services/hello/a%2Fb'                 # %2F reaches the backend undecoded",
        f"curl -si {base}/services/hello                        # 308 to /services/hello/",
        f"curl -si {base}/nope                                  # 404",
        f"curl -si {base}/services/bad_id/                      # 400 invalid_deployment_id",
        f"curl -si {base}/services/ghost/                       # 502 deployment_not_found",
        f"curl -sN {base}/services/hello/stream                 # server-sent events, as they come",
        f"curl -s {base}/health; curl -s {admin}/ready          # the load balancer's and ECS's probes",
        f"curl -s {admin}/discovery/multi                       # the router's view of one deployment",
        f"whaleray-router inspect multi --admin-port {admin_port}               # the same, as a table",
    ]


def banner(port: int, admin_port: int) -> str:
    lines = ["WhaleRay Router demo is up. Try:", *("  " + line for line in try_these(port, admin_port))]
    return "\n".join([*lines, "Ctrl-C stops everything."])


async def run_demo(dns_port: int, port: int, admin_port: int) -> None:
    dns = DemoDnsServer("whaleray.local", ttl=10)
    for deployment, addresses in DEPLOYMENTS.items():
        dns.set_a(deployment, addresses)
    await dns.start("127.0.0.1", dns_port)
    runners = [await start_backend(name, host, 3000) for host, name in BACKENDS.items()]
    settings = load_settings(
        [
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--admin-host",
            "127.0.0.1",
            "--admin-port",
            str(admin_port),
            "--resolver",
            f"127.0.0.1:{dns_port}",
            "--upstream-allow-cidr",
            "127.0.0.0/8",
            "--drain-delay",
            "0",
            "--log-format",
            "text",
        ],
        environ={},
    )
    router = Router(settings)
    await router.start()
    print(banner(router.port, admin_port), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    print("\nstopping the demo", flush=True)
    await router.drain()
    await router.stop()
    for runner in runners:
        await runner.cleanup()
    dns.close()


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m whaleray_demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dns-port", type=int, default=8053)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--admin-port", type=int, default=9901)
    args = parser.parse_args(list(argv))
    setup_logging("INFO", "text")
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run_demo(args.dns_port, args.port, args.admin_port))
    return 0
