"""CPU a DNS lookup costs the router: `DnsResolver.lookup_a` against the benchmark's DNS fixture.

    .venv/bin/python -m benchmarks.dns_lookups [--lookups 1000] [--repeat-names]

Starts the fixture (`benchmarks.dns_fixture`) in a process of its own, so only the resolver's CPU (this process,
the c-ares event thread included) is counted. `--repeat-names` asks two names in turn, so every lookup repeats a
question and opens a new c-ares channel (see router/discovery/resolver.py): the worst case.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys

import uvloop

from benchmarks.run import free_port
from router.discovery.resolver import DnsResolver, ResolverFailure
from router.options import Resolver


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(port: int, lookups: int, repeat_names: bool) -> float:
    resolver = DnsResolver([Resolver("127.0.0.1", port)], timeout_s=1.0, tries=2)
    try:
        await resolver.lookup_a("cold-warm-up.whaleray.local")
        started = cpu_seconds()
        for index in range(lookups):
            name = f"dep-{index % 2}" if repeat_names else f"cold-{index}"
            await resolver.lookup_a(f"{name}.whaleray.local")
        return (cpu_seconds() - started) / lookups
    finally:
        await resolver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lookups", type=int, default=1000)
    parser.add_argument("--repeat-names", action="store_true", help="every lookup repeats a name")
    args = parser.parse_args()
    port = free_port()
    fixture = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.dns_fixture", "--port", str(port), "--deployments", "2"],
        stdout=subprocess.DEVNULL,
    )
    try:
        uvloop.run(wait_for_udp(port))
        per_lookup = uvloop.run(measure(port, args.lookups, args.repeat_names))
    finally:
        fixture.terminate()
        fixture.wait()
    print(f"{per_lookup * 1e3:.3f} ms CPU per lookup ({args.lookups} lookups)")


async def wait_for_udp(port: int) -> None:
    """The fixture answers: a lookup succeeds (it listens on UDP only, so no TCP probe)."""
    resolver = DnsResolver([Resolver("127.0.0.1", port)], timeout_s=0.2, tries=1)
    try:
        for _ in range(50):
            try:
                await resolver.lookup_a("dep-0.whaleray.local")
                return
            except ResolverFailure:  # not answering yet
                await asyncio.sleep(0.1)
        raise SystemExit("the DNS fixture did not answer")
    finally:
        await resolver.close()


if __name__ == "__main__":
    main()
