"""The router's Python hot path alone: CPU microseconds per proxied request, in one process, without sockets.

`make bench` measures what matters (the whole process under wrk, kernel included), but on a shared 2-core
machine its figures move by 10-15 % from run to run: too much to judge a change worth 3 %. This drives the
real `ClientConnection` and `UpstreamConnection` with in-memory transports instead: a request's bytes go in
one side, the backend's response in the other, and what the router writes is checked. No kernel, no event
loop wake-ups, only the Python and C work the router does per request, best of several rounds.

    .venv/bin/python -m benchmarks.hotpath              # us per request
    .venv/bin/python -m benchmarks.hotpath --split      # and the request and response sides apart
    .venv/bin/python -m benchmarks.hotpath --profile    # cProfile's top functions (slows every call)

For counts that do not depend on the machine's mood, run it under callgrind with two sizes and subtract:
instructions per request = (Ir of `--rounds 1 --requests 20000` - Ir of `--requests 0`) / 20000, each from
`valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python -m benchmarks.hotpath ...`, with
PYTHONHASHSEED=0 set for both (per-process string hashing moves the count by tens of instructions).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import time
from typing import Any

import uvloop
from prometheus_client.registry import CollectorRegistry

from router.discovery.resolver import Answer
from router.discovery.service import Discovery
from router.metrics import Metrics
from router.proxy.client import ClientConnection
from router.proxy.server import ServerState
from router.proxy.upstream import UpstreamConnection
from router.settings import build_parser, settings_from

REQUEST = b"GET /services/dep-%d/ HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
# What the benchmark backend (nginx) answers.
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 23 Nov 2026 16:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok"
)


class MemoryTransport:
    """The part of a transport the router uses, keeping the last write."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.last = b""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default

    def write(self, data: bytes) -> None:
        self.last = data

    def writelines(self, parts: list[bytes]) -> None:
        self.last = b"".join(parts)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...

    def can_write_eof(self) -> bool:
        return True


async def _never_asked(name: str) -> Answer:
    raise AssertionError(f"the hot path resolved {name}: every answer should be cached")


class HotPath:
    """One client connection and one pooled backend connection per deployment, all in memory."""

    def __init__(self, deployments: int) -> None:
        settings = settings_from(build_parser().parse_args(["--access-log", "off", "--resolver", "127.0.0.1"]), {})
        loop = asyncio.get_running_loop()
        discovery = Discovery(settings, _never_asked, clock=loop.time)
        metrics = Metrics(CollectorRegistry(), settings.metrics_max_deployments)
        self.state = ServerState(settings, discovery, loop, metrics)
        now = loop.time()
        self.requests = [REQUEST % index for index in range(deployments)]
        self.upstreams: list[UpstreamConnection] = []
        for index in range(deployments):
            # Loopback addresses that nothing dials: the transports are in memory.
            address = (f"127.0.{1 + index // 250}.{1 + index % 250}", settings.upstream_port)
            discovery.cache.store(f"dep-{index}", (address,), 3600.0, now)
            upstream = UpstreamConnection(address, self.state.connector.forget_idle)
            upstream.connection_made(MemoryTransport(address))  # type: ignore[arg-type]
            self.state.connector.pool.release(address, upstream, now)
            self.upstreams.append(upstream)
        self.client = ClientConnection(self.state)
        self.client_transport = MemoryTransport(("127.0.0.1", 40000))
        self.client.connection_made(self.client_transport)  # type: ignore[arg-type]

    def run(self, count: int) -> None:
        client, requests, upstreams, deployments = self.client, self.requests, self.upstreams, len(self.requests)
        for index in range(count):
            client.data_received(requests[index % deployments])
            upstreams[index % deployments].data_received(RESPONSE)

    def split(self, count: int) -> tuple[float, float]:
        """Seconds spent on the request side (client bytes in, backend head out) and the response side."""
        clock, request_s, response_s = time.perf_counter, 0.0, 0.0
        deployments = len(self.requests)
        for index in range(count):
            started = clock()
            self.client.data_received(self.requests[index % deployments])
            middle = clock()
            self.upstreams[index % deployments].data_received(RESPONSE)
            request_s, response_s = request_s + middle - started, response_s + clock() - middle
        return request_s, response_s

    def check(self) -> None:
        """The path measured is the real one: a 200 with the body reached the client, a proxied head the backend."""
        answer = self.client_transport.last
        if not (answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok")):
            raise SystemExit(f"unexpected answer to the client: {answer!r}")
        head = self.upstreams[-1].transport.last  # type: ignore[union-attr]
        if not (head.startswith(b"GET / HTTP/1.1\r\n") and b"X-Forwarded-Prefix: /services/dep-" in head):
            raise SystemExit(f"unexpected request to the backend: {head!r}")


async def measure(args: argparse.Namespace) -> None:
    path = HotPath(args.deployments)
    path.run(2000)  # warm: labels, histograms, caches
    path.check()
    gc.collect()
    gc.freeze()  # as router.app.run does after start-up
    if args.requests == 0:
        return
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(path.run, args.requests)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    best = float("inf")
    for _ in range(args.rounds):
        started = time.process_time()
        path.run(args.requests)
        best = min(best, time.process_time() - started)
    path.check()
    print(
        f"{best / args.requests * 1e6:.2f} us CPU per request "
        f"(best of {args.rounds} rounds of {args.requests}, {args.deployments} deployments)"
    )
    if args.split:
        request_s, response_s = path.split(args.requests)
        print(
            f"request side {request_s / args.requests * 1e6:.2f} us, response side "
            f"{response_s / args.requests * 1e6:.2f} us (timed apart: clock calls included)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000, help="requests per round (0: set up only)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--deployments", type=int, default=200)
    parser.add_argument("--profile", action="store_true", help="one round under cProfile")
    parser.add_argument("--split", action="store_true", help="also time the request and response sides apart")
    uvloop.run(measure(parser.parse_args()))


if __name__ == "__main__":
    main()
