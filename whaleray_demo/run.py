"""`python -m whaleray_demo` (`make demo`): everything on loopback, no Docker, no AWS.

- a DNS server for `whaleray.local` on 127.0.0.1:8053 (Cloud Map's stand-in);
- demo backends on port 3000 of 127.0.0.2, 127.0.0.3 and 127.0.0.4;
- deployments `hello` (127.0.0.2), `api` (127.0.0.3) and `multi` (127.0.0.3 and 127.0.0.4);
- `sleepy`, asleep at zero tasks: AWS's APIs (ECS, Cloud Map, CloudWatch) run on 127.0.0.1:8055 (moto's server),
  and a platform stand-in starts its backend on 127.0.0.5 two seconds after the router raises its desired
  count (whaleray_demo/platform.py);
- the router on 127.0.0.1:8080 (admin on 127.0.0.1:9901), allowed to dial loopback for the demo only, waking
  `sleepy` on its first request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import uvloop
from moto.server import ThreadedMotoServer

from router.app import Router
from router.logs import setup_logging
from router.settings import load_settings
from whaleray_demo.backend import start_backend
from whaleray_demo.dns import DemoDnsServer
from whaleray_demo.platform import PlatformStandIn, SleepingDeployment

SLEEPY = ("sleepy", "127.0.0.5")  # asleep until its first request
WAKE_DELAY_S = 2.0  # the stand-in's "task start"
DEMO_CLUSTER = "whaleray-demo"
DEMO_REGION = "us-east-1"
DEMO_AWS_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "demo",
    "AWS_SECRET_ACCESS_KEY": "demo",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
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
        f"curl -si {base}/services/sleepy/                      # asleep: held while it wakes (~2 s), then served",
        f"curl -sN {base}/services/hello/stream                 # server-sent events, as they come",
        f"curl -s {base}/health; curl -s {admin}/ready          # the load balancer's and ECS's probes",
        f"curl -s {admin}/discovery/multi                       # the router's view of one deployment",
        f"whaleray-router inspect multi --admin-port {admin_port}               # the same, as a table",
    ]


def banner(port: int, admin_port: int) -> str:
    lines = ["WhaleRay Router demo is up. Try:", *("  " + line for line in try_these(port, admin_port))]
    return "\n".join([*lines, "Ctrl-C stops everything."])


class SleepingDemo:
    """AWS's APIs on loopback (moto's server, in a thread of this process) and the platform stand-in that starts
    `sleepy`'s backend when the router wakes it."""

    def __init__(self, url: str, server: Any, platform: PlatformStandIn) -> None:
        self.url = url
        self.server = server
        self.platform = platform

    def router_flags(self) -> list[str]:
        return ["--wake-cluster", DEMO_CLUSTER, "--aws-endpoint-url", self.url, "--aws-region", DEMO_REGION]

    async def close(self) -> None:
        await self.platform.close()
        self.server.stop()


async def start_sleeping_deployment(aws_port: int, dns: DemoDnsServer) -> SleepingDemo:
    # The demo's own credentials and region, for the router and the stand-in in this process; no AWS file read.
    os.environ.update(DEMO_AWS_ENVIRONMENT)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=aws_port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{aws_port}"

    async def start_sleepy(host: str) -> Callable[[], Awaitable[None]]:
        return (await start_backend("sleepy-backend", host, 3000)).cleanup

    platform = PlatformStandIn(
        url, cluster=DEMO_CLUSTER, namespace="whaleray.local", start_backend=start_sleepy,
        start_delay_s=WAKE_DELAY_S, dns=dns, region=DEMO_REGION,
    )  # fmt: skip
    await platform.open()
    await platform.add(SleepingDeployment(*SLEEPY))
    return SleepingDemo(url, server, platform)


async def run_demo(dns_port: int, port: int, admin_port: int, aws_port: int) -> None:
    dns = DemoDnsServer("whaleray.local", ttl=10)
    for deployment, addresses in DEPLOYMENTS.items():
        dns.set_a(deployment, addresses)
    await dns.start("127.0.0.1", dns_port)
    runners = [await start_backend(name, host, 3000) for host, name in BACKENDS.items()]
    aws = await start_sleeping_deployment(aws_port, dns)
    settings = load_settings(
        [
            *aws.router_flags(),
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
    await aws.close()
    dns.close()


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m whaleray_demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dns-port", type=int, default=8053)
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--aws-port", type=int, default=8055)
    args = parser.parse_args(list(argv))
    setup_logging("INFO", "text")
    for chatty in ("werkzeug", "aiobotocore.credentials"):  # moto's request lines, the SDK's credential notice
        logging.getLogger(chatty).setLevel(logging.WARNING)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(run_demo(args.dns_port, args.port, args.admin_port, args.aws_port))
    return 0
