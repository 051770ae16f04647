"""What waking adds: the router's part of a cold start, beyond the platform's.

A sleeping deployment's first request waits for the platform (ECS placing and starting a task, the task
registering healthy in Cloud Map) and for the router (noticing the registration, checking the address accepts
a connection, releasing the held request through the normal path). This measures the router's part, on
loopback: AWS's APIs are moto's server, the platform is the stand-in of whaleray_demo/platform.py with a fixed
start delay, and for each round a new deployment asleep gets one request. Per round:

- `added`: from the moment the stand-in registered the backend, healthy, to the answer: the router's own
  delay (its --wake-poll interval, one DiscoverInstances call, a TCP probe, the request itself);
- `total`: from the request to the answer, and `platform`: from the stand-in seeing the count rise to the
  registration (the delay it was given, plus its own 50 ms polling).

    .venv/bin/python -m benchmarks.wake                       # 5 rounds at the default --wake-poll (0.25 s)
    .venv/bin/python -m benchmarks.wake --wake-poll 0.05 --rounds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import aiohttp
import uvloop

from router.app import Router
from router.settings import load_settings
from whaleray_demo.backend import start_backend
from whaleray_demo.dns import DemoDnsServer
from whaleray_demo.platform import PlatformStandIn, SleepingDeployment

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def measure(rounds: int, wake_poll: str, delay_s: float, aws_url: str) -> list[tuple[float, float, float]]:
    dns = DemoDnsServer("whaleray.local")
    await dns.start("127.0.0.1", 0)
    upstream_port = free_port()

    async def start(host: str) -> Callable[[], Awaitable[None]]:
        return (await start_backend("cold", host, upstream_port)).cleanup

    platform = PlatformStandIn(
        aws_url, cluster="bench", namespace="whaleray.local", start_backend=start, start_delay_s=delay_s, region=REGION
    )
    await platform.open()
    deployments = [
        await platform.add(SleepingDeployment(f"cold-{uuid.uuid4().hex[:6]}", f"127.0.0.{40 + index}"))
        for index in range(rounds)
    ]
    flags = (
        f"--host 127.0.0.1 --port 0 --admin-port 0 --resolver 127.0.0.1:{dns.port} --upstream-allow-cidr 127.0.0.0/8 "
        f"--upstream-port {upstream_port} --access-log off --wake-cluster bench --aws-endpoint-url {aws_url} "
        f"--aws-region {REGION} --wake-poll {wake_poll} --idle-report 0 --log-level warning"
    )
    settings = load_settings(flags.split(), environ={})
    router = Router(settings)
    await router.start()
    assert router.state is not None
    waker = router.state.waker
    assert waker is not None
    while True:  # until the catalogue lists them all
        if all(waker.catalogue.lists(deployment.deployment) for deployment in deployments):
            break
        await asyncio.sleep(0.05)
    results = []
    async with aiohttp.ClientSession() as session:
        for deployment in deployments:
            sent = time.monotonic()
            async with session.get(f"http://127.0.0.1:{router.port}/services/{deployment.deployment}/") as response:
                await response.read()
                assert response.status == 200, response.status
            answered = time.monotonic()
            results.append(
                (answered - deployment.registered_at, answered - sent, deployment.registered_at - deployment.raised_at)
            )
    await router.stop()
    await platform.close()
    dns.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--wake-poll", default="0.25")
    parser.add_argument("--start-delay", type=float, default=1.0, help="the stand-in's task start, seconds")
    args = parser.parse_args()
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )  # fmt: skip
    port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        results = uvloop.run(measure(args.rounds, args.wake_poll, args.start_delay, f"http://127.0.0.1:{port}"))
    finally:
        moto.terminate()
        moto.wait()
    print(f"--wake-poll {args.wake_poll}, stand-in start delay {args.start_delay} s, {args.rounds} rounds")
    print("round  added (ms)  total (ms)  platform (ms)")
    for index, (added, total, platform) in enumerate(results, 1):
        print(f"{index:5}  {added * 1000:10.1f}  {total * 1000:10.1f}  {platform * 1000:13.1f}")
    added_ms = [result[0] * 1000 for result in results]
    print(f"added: median {statistics.median(added_ms):.1f} ms, max {max(added_ms):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
