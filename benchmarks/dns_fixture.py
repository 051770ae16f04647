"""The benchmark's Cloud Map stand-in: `dep-0` ... `dep-N` each with an A record on its own 127.0.1.x address.

Run as its own process so its CPU is never counted as the router's.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop

from router.demo.dns import DemoDnsServer


def deployment_address(index: int) -> str:
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


async def serve(port: int, deployments: int, ttl: int) -> None:
    dns = DemoDnsServer("whaleray.local", ttl=ttl)
    for index in range(deployments):
        dns.set_a(f"dep-{index}", [deployment_address(index)])
    await dns.start("127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"dns ready on 127.0.0.1:{port} with {deployments} deployments", flush=True)
    await stop.wait()
    print(f"dns queries: {dns.query_count()}", flush=True)
    dns.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--ttl", type=int, default=10)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.deployments, args.ttl))


if __name__ == "__main__":
    main()
