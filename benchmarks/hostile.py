"""Hostile backends against the real router process: what one tenant's backend can cost everybody else.

    .venv/bin/python -m benchmarks.hostile                 # 10,000 rejected responses, then an endless head
    .venv/bin/python -m benchmarks.hostile --rejected 1000

Reports, for the `whaleray-router` process (one worker):
- its open descriptors before and after N rejected responses (a backend that answers each request with bytes
  that are not HTTP and then keeps the connection open: only the router closing its end frees the socket);
- its peak RSS (VmHWM) at idle and after 20 requests to a backend that streams one endless header line.

A report, never a pass/fail: the tests assert the behaviour (tests/test_tenant_isolation.py). All traffic
stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Awaitable, Callable

from benchmarks.proctree import process_tree_fds
from benchmarks.run import free_port, wait_for_port
from whaleray_demo.dns import DemoDnsServer

BACKEND_HOST = "127.0.0.9"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def not_http_and_hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    await reader.read()  # holds the connection until the router closes its end


async def endless_header_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
    with contextlib.suppress(ConnectionError):  # until the router gives up on it
        while True:
            writer.write(b"a" * 65536)
            await writer.drain()


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def ask(port: int, deployment: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /services/%s/ HTTP/1.1\r\nHost: h\r\n\r\n" % deployment.encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        return int(head.split(b" ", 2)[1])
    except (asyncio.IncompleteReadError, ConnectionError):
        return 0
    finally:
        writer.close()


async def ask_many(port: int, deployment: str, count: int, concurrency: int = 50) -> dict[int, int]:
    statuses: dict[int, int] = {}
    for start in range(0, count, concurrency):
        for status in await asyncio.gather(*(ask(port, deployment) for _ in range(min(concurrency, count - start)))):
            statuses[status] = statuses.get(status, 0) + 1
    return statuses


async def settle(pid: int, seconds: float = 1.0) -> int:
    await asyncio.sleep(seconds)  # the last closes reach both ends
    return process_tree_fds(pid)


async def main(args: argparse.Namespace) -> None:
    dns = DemoDnsServer("whaleray.local", ttl=300)
    await dns.start("127.0.0.1", 0)
    upstream_port, port = free_port(), free_port()
    servers = []
    for name, script in (("rejected", not_http_and_hold), ("endless", endless_header_line)):
        host = BACKEND_HOST if name == "rejected" else "127.0.0.10"
        dns.set_a(name, [host])
        servers.append(await asyncio.start_server(script, host, upstream_port))
    router = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "router", "--host", "127.0.0.1", "--port", str(port), "--admin-port", "0"),
        *("--resolver", f"127.0.0.1:{dns.port}", "--upstream-allow-cidr", "127.0.0.0/8"),
        *("--upstream-port", str(upstream_port), "--access-log", "off", "--log-level", "warning"),
        stdout=asyncio.subprocess.DEVNULL,
        env={key: value for key, value in os.environ.items() if not key.startswith("WHALERAY_")},
    )
    try:
        await asyncio.to_thread(wait_for_port, port)
        await ask_many(port, "rejected", 50)  # warm: imports, caches, the first connections
        before = await settle(router.pid)
        statuses = await ask_many(port, "rejected", args.rejected)
        after = await settle(router.pid)
        print(f"{args.rejected} rejected responses {statuses}: router descriptors {before} before, {after} after")
        await ask(port, "endless")
        idle = peak_rss_mib(router.pid)
        statuses = await ask_many(port, "endless", 20, concurrency=20)
        peak = peak_rss_mib(router.pid)
        print(f"endless response head x20 {statuses}: peak RSS {idle:.1f} MiB before, {peak:.1f} MiB after")
    finally:
        router.terminate()
        await router.wait()
        for server in servers:
            server.close()
        dns.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rejected", type=int, default=10_000, help="rejected responses to send")
    asyncio.run(main(parser.parse_args()))
