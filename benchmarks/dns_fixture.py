"""The benchmark's Cloud Map stand-in: `dep-0` ... `dep-N` each with an A record on its own 127.0.1.x address.

Run as its own process so its CPU is never counted as the router's.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import uvloop

from whaleray_demo.dns import DemoDnsServer


def deployment_address(index: int) -> str:
    return f"127.0.{1 + index // 250}.{1 + index % 250}"


def cold_address(name: str) -> list[str] | None:
    """`cold-*` ids all exist (each a never-seen deployment), on one of 200 loopback addresses."""
    if not name.startswith("cold-"):
        return None
    return [deployment_address(sum(name.encode()) % 200)]


async def serve(port: int, deployments: int, ttl: int, count_file: Path | None) -> None:
    dns = DemoDnsServer("whaleray.local", ttl=ttl)
    for index in range(deployments):
        dns.set_a(f"dep-{index}", [deployment_address(index)])
    dns.wildcard = cold_address
    await dns.start("127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if count_file is not None:  # SIGUSR1: write the number of queries received so far
        loop.add_signal_handler(signal.SIGUSR1, lambda: count_file.write_text(str(dns.query_count())))
    print(f"dns ready on 127.0.0.1:{port} with {deployments} deployments", flush=True)
    await stop.wait()
    print(f"dns queries: {dns.query_count()}", flush=True)
    dns.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--ttl", type=int, default=10)
    parser.add_argument("--count-file", type=Path, default=None)
    args = parser.parse_args()
    uvloop.run(serve(args.port, args.deployments, args.ttl, args.count_file))


if __name__ == "__main__":
    main()
