"""The client side of the proxy: one `asyncio.Protocol` per client connection, one `Exchange` per request.

A request flows through here as it flows through the system: parse (httptools), route, resolve, pick an
address, borrow a pooled backend connection, relay both ways, return the connection. The common case (DNS
answer cached, idle pooled connection) runs synchronously inside the parser callback, with no task and no
await; only a cache miss or a new backend connection takes a task.

Rules this module keeps:
- Bodies stream both ways with back-pressure: a full backend write buffer pauses reading from the client, a
  full client write buffer pauses reading from the backend. Memory per connection stays bounded.
- Pipelined requests are answered in order: while one is active, the next ones queue and reading pauses.
- A backend connection goes back to the pool only after its response was read completely and the request was
  sent completely; anything else closes it.
- A request that fails on a reused connection before any response byte is retried once on a fresh connection
  when replaying it is safe (idempotent method, the whole request still held).
- Timeouts are deadlines checked by one periodic tick (`ServerState.tick`), not a timer per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from typing import cast

import httptools

from router.discovery.balancer import Balancer
from router.discovery.cache import Address, Entry, EntryKind
from router.discovery.service import Discovery
from router.errors import ERRORS, RouterError, error_body, reason_phrase
from router.logs import AccessLog
from router.metrics import Metrics
from router.proxy.headers import (
    HeaderError,
    RequestHeaders,
    ResponseHeaders,
    analyse_request,
    analyse_response,
    response_head,
    upstream_head,
)
from router.proxy.pool import ConnectionPool
from router.proxy.route import RouteKind, parse_target
from router.proxy.upstream import UpstreamConnection, UpstreamFailure
from router.settings import Settings

log = logging.getLogger("router.proxy")

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# Bounds what the router holds of a request body before a backend connection is ready to take it.
MAX_PENDING_BODY = 64 * 1024
# Bounds what the router keeps of a request to replay it on a fresh connection after a stale pooled one.
MAX_REPLAY = 64 * 1024
# Bounds how long the router keeps reading (and dropping) a client's unread body after an early error
# response, so the client reads the response instead of a reset.
LINGER_S = 2.0
MAX_CONNECT_ATTEMPTS = 3

# Reasons reading from the client is paused; reading resumes when none is left.
PAUSE_PIPELINE = 1  # a pipelined request waits for the active one
PAUSE_UPSTREAM_FULL = 2  # the backend's write buffer is full
PAUSE_NO_UPSTREAM = 4  # body bytes wait for a backend connection
PAUSE_TUNNEL = 8  # bytes after an upgrade request wait for the backend's 101
PAUSE_CLIENT_FULL = 16  # the client's write buffer is full: read no more of what it asks until it reads

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ServerState:
    """What every connection shares: settings, discovery, pool, balancer, counters, the drain flag."""

    def __init__(
        self,
        settings: Settings,
        discovery: Discovery,
        loop: asyncio.AbstractEventLoop,
        metrics: Metrics,
        access_log: AccessLog | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.access_log = access_log
        self.discovery = discovery
        self.loop = loop
        self.balancer = Balancer()
        self.pool: ConnectionPool[UpstreamConnection] = ConnectionPool(
            idle_timeout_s=settings.upstream_idle_timeout_s,
            max_idle_per_address=settings.upstream_max_idle_per_address,
        )
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.listen_port = str(settings.port).encode()
        self.inflight = 0
        self.upstream_connects = 0
        self.upstream_reuses = 0
        # Addresses a DNS answer dropped, with when: their connections are closed instead of pooled.
        self.retired: dict[Address, float] = {}
        # Per-deployment limits. Keys are only deployments with requests in flight (removed at zero) or, for
        # rate buckets, deployments that resolved (pruned once full again): both stay bounded.
        self.inflight_by_deployment: dict[str, int] = {}
        self.rate_buckets: dict[str, list[float]] = {}
        self._request_id_prefix = os.urandom(6).hex().encode()
        self._request_counter = 0

    def next_request_id(self) -> bytes:
        """Unique per process without a syscall per request: a random prefix and a counter."""
        self._request_counter += 1
        return b"%s%010x" % (self._request_id_prefix, self._request_counter)

    def tick(self) -> None:
        now = self.loop.time()
        for connection in list(self.connections):
            connection.check_deadlines(now)
        for upstream in self.pool.expire(now):
            upstream.close()
        if self.rate_buckets:  # a full bucket is the same as no bucket
            burst = self.rate_burst()
            self.rate_buckets = {
                name: bucket
                for name, bucket in self.rate_buckets.items()
                if bucket[0] + (now - bucket[1]) * self.settings.deployment_rate < burst
            }
        if self.retired:  # a retired address outlives its last response by the longest a response may take
            horizon = now - self.settings.upstream_header_timeout_s - self.settings.upstream_read_timeout_s
            self.retired = {address: at for address, at in self.retired.items() if at > horizon}

    def rate_burst(self) -> float:
        return float(self.settings.deployment_burst or max(1.0, self.settings.deployment_rate))

    def take_rate_token(self, deployment: str) -> float:
        """0 when `deployment` may send a request now, else the seconds until it may (token bucket)."""
        rate, now = self.settings.deployment_rate, self.loop.time()
        bucket = self.rate_buckets.get(deployment)
        if bucket is None:
            bucket = self.rate_buckets[deployment] = [self.rate_burst(), now]
        bucket[0] = min(self.rate_burst(), bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        if bucket[0] >= 1.0:
            bucket[0] -= 1.0
            return 0.0
        return (1.0 - bucket[0]) / rate

    def record(self, exchange: Exchange, status: int) -> None:
        """Count a finished (or abandoned) exchange, release its limit slot, and log it."""
        duration = time.perf_counter() - exchange.started_at
        label = self.metrics.label(exchange.deployment, exchange.resolved)
        self.metrics.request(label, status, duration)
        if exchange.admitted:
            exchange.admitted = False
            remaining = self.inflight_by_deployment.get(exchange.deployment, 1) - 1
            if remaining > 0:
                self.inflight_by_deployment[exchange.deployment] = remaining
            else:
                self.inflight_by_deployment.pop(exchange.deployment, None)
        if self.access_log is not None:
            self.access_log.write(access_line(exchange, status, duration))

    def upstream_active(self) -> int:
        return sum(1 for connection in self.connections if connection.active is not None and connection.active.upstream)

    def retire_addresses(self, removed: set[Address]) -> None:
        """DNS no longer lists `removed`: close their idle connections now, and the busy ones when done."""
        now = self.loop.time()
        for address in removed:
            self.retired[address] = now
        for upstream in self.pool.drain_addresses(keep=None, only=removed):
            upstream.close()

    def forget_idle(self, upstream: UpstreamConnection) -> None:
        self.pool.discard(upstream.address, upstream)

    async def connect(self, address: Address) -> UpstreamConnection:
        """A new backend connection. `create_connection(host, port)`, never `sock=`: uvloop before 0.23 closed
        a recycled descriptor when a connect on a pre-made socket was cancelled by a timeout."""
        started = self.loop.time()
        settings = self.settings

        def protocol() -> UpstreamConnection:
            return UpstreamConnection(
                address,
                self.forget_idle,
                max_head_bytes=settings.upstream_max_header_bytes,
                max_head_lines=settings.upstream_max_header_count,
            )

        async with asyncio.timeout(settings.upstream_connect_timeout_s):
            _, upstream = await self.loop.create_connection(protocol, address[0], address[1])
        self.upstream_connects += 1
        self.metrics.connect_duration.observe(self.loop.time() - started)
        return upstream

    def release(self, upstream: UpstreamConnection) -> None:
        if self.retired and upstream.address in self.retired:
            upstream.close()
            return
        surplus = self.pool.release(upstream.address, upstream, self.loop.time())
        if surplus is not None:
            surplus.close()

    def close_idle_clients(self) -> None:
        for connection in list(self.connections):
            connection.close_if_idle()


class Exchange:
    """One request and its response, from the client's head to the last response byte."""

    __slots__ = (
        "conn",
        "state",
        "target",
        "headers",
        "method",
        "http_minor",
        "keep_alive",
        "info",
        "error",
        "request_id",
        "deployment",
        "upstream_target",
        "body_expected",
        "body_complete",
        "body_received",
        "pending",
        "pending_bytes",
        "upstream",
        "address",
        "reused",
        "retried",
        "replay",
        "replay_bytes",
        "response_started",
        "response_chunked",
        "response_until_close",
        "close_after",
        "finished",
        "task",
        "upstream_deadline",
        "upstream_write_paused_at",
        "head_done",
        "tunnel",
        "continue_sent",
        "started_at",
        "status",
        "bytes_out",
        "dns_result",
        "error_code",
        "admitted",
        "resolved",
    )

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.state = conn.state
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.http_minor = 1
        self.keep_alive = True
        self.info: RequestHeaders | None = None
        self.error: str | None = None
        self.request_id = b""
        self.deployment = ""
        self.upstream_target = b""
        self.head_done = False
        self.body_expected = False
        self.body_complete = False
        self.body_received = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.upstream: UpstreamConnection | None = None
        self.address: Address | None = None
        self.reused = False
        self.retried = False
        self.replay: list[bytes] | None = None
        self.replay_bytes = 0
        self.response_started = False
        self.response_chunked = False
        self.response_until_close = False
        self.close_after = False
        self.finished = False
        self.task: asyncio.Task[None] | None = None
        self.upstream_deadline = 0.0
        self.upstream_write_paused_at = 0.0  # when the backend stopped taking the request body; 0: it takes it
        self.tunnel = False
        self.continue_sent = False
        self.started_at = 0.0
        self.status = 0
        self.bytes_out = 0
        self.dns_result = ""
        self.error_code = ""
        self.admitted = False  # holds a slot of --deployment-max-inflight
        self.resolved = False  # reached a positive DNS answer: the deployment earns its own metric label

    # --- the request head ----------------------------------------------------------------------------------

    def complete_head(self, parser: httptools.HttpRequestParser) -> None:
        """Validate the parsed head; a problem becomes `self.error`, answered when the exchange starts."""
        self.head_done = True
        self.started_at = time.perf_counter()  # uvloop's loop.time() ticks in milliseconds: too coarse here
        self.method = parser.get_method()
        self.keep_alive = parser.should_keep_alive()
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._refuse("bad_request")
            return
        self.http_minor = 1 if version == "1.1" else 0
        try:
            info = analyse_request(self.headers, self.http_minor)
        except (HeaderError, ValueError):
            self._refuse("bad_request")
            return
        self.info = info
        self.request_id = info.request_id or self.state.next_request_id()
        self.body_expected = info.chunked or bool(info.content_length)
        self.body_complete = not self.body_expected
        if b"#" in self.target:  # a fragment is the client's own business (RFC 9112 3.2): never forwarded
            self.target = self.target.partition(b"#")[0]
        limit = self.state.settings.max_body_bytes
        if self.method == b"CONNECT":
            self._refuse("method_not_allowed")
        elif info.upgrade is not None and self.body_expected:
            # Where would the body end and the tunnel begin? Handshakes (WebSocket, h2c) carry no body.
            self._refuse("bad_request")
        elif limit and info.content_length is not None and info.content_length > limit:
            self._refuse("body_too_large")

    def _refuse(self, code: str) -> None:
        self.error = code
        self.close_after = True
        if not self.request_id:
            self.request_id = self.state.next_request_id()

    # --- starting: route, resolve, borrow --------------------------------------------------------------------

    def start(self) -> None:
        self.state.inflight += 1
        if self.error is not None:
            self.respond_error(self.error)
            return
        kind, deployment, target = parse_target(self.target)
        if kind is RouteKind.PROXY:
            self.deployment = deployment or ""
            self.upstream_target = target
            self._start_proxy()
        elif kind is RouteKind.HEALTH:
            self._respond_health()
        elif kind is RouteKind.REDIRECT:
            self.deployment = deployment or ""
            self.conn.respond_local(self, 308, b"", b"Location: " + target + b"\r\n")
        elif kind is RouteKind.INVALID_ID:
            self.respond_error("invalid_deployment_id")
        else:
            self.respond_error("not_found")

    def _respond_health(self) -> None:
        if self.state.draining:
            self.conn.respond_local(self, 503, b'{"status":"draining"}')
        else:
            self.conn.respond_local(self, 200, b'{"status":"healthy"}')

    def _start_proxy(self) -> None:
        state = self.state
        now = state.loop.time()
        entry = state.discovery.cached(self.deployment, now)
        address: Address | None = None
        if entry is not None:
            self._note_dns(entry, "hit")
        if entry is not None and entry.kind is EntryKind.POSITIVE:
            if (state.settings.deployment_rate or state.settings.deployment_max_inflight) and not self._admit():
                return
            address = state.balancer.pick(entry, now)
            upstream = state.pool.acquire(address, now)
            if upstream is not None:
                state.upstream_reuses += 1
                state.metrics.reused += 1
                self.attach(upstream, address, reused=True)
                return
        self.task = state.loop.create_task(self._resolve_and_connect(entry, address))

    async def _resolve_and_connect(self, entry: Entry | None, address: Address | None) -> None:
        settings = self.state.settings
        try:
            if entry is None:
                try:
                    entry = await self.state.discovery.resolve(self.deployment)
                except RouterError as error:
                    self._note_dns(None, "busy" if error.code == "resolver_busy" else "error")
                    raise
                self._note_dns(entry, "miss")
                if entry.kind is EntryKind.POSITIVE and (
                    (settings.deployment_rate or settings.deployment_max_inflight) and not self._admit()
                ):
                    return
            if entry.kind is EntryKind.NEGATIVE:
                raise RouterError("deployment_not_found")
            if entry.kind is EntryKind.FORBIDDEN:
                raise RouterError("upstream_forbidden")
            await self._connect(entry, address)
        except RouterError as error:
            if not self.finished:
                self.respond_error(error.code)
        except Exception:  # a bug: answer it like one, and keep serving the other requests
            log.exception("unexpected error while proxying", extra={"deployment": self.deployment})
            if not self.finished:
                self.respond_error("internal_error")
        finally:
            self.task = None

    def _note_dns(self, entry: Entry | None, result: str) -> None:
        """The lookup outcome of this request, for the access log and whaleray_dns_lookups_total."""
        if entry is not None:
            if entry.kind is not EntryKind.POSITIVE:
                result = "negative"
            elif entry.stale:
                result = "stale"
            self.resolved = entry.kind is EntryKind.POSITIVE
        self.dns_result = result
        self.state.metrics.dns_lookups[result] += 1

    def _admit(self) -> bool:
        """The per-deployment limits: the rate first (a refused request holds no in-flight slot), then the cap."""
        state, settings = self.state, self.state.settings
        if settings.deployment_rate:
            wait_s = state.take_rate_token(self.deployment)
            if wait_s:
                state.metrics.rejection(state.metrics.label(self.deployment, True), "rate")
                self.respond_error("rate_limited", b"Retry-After: %d\r\n" % max(1, math.ceil(wait_s)))
                return False
        if settings.deployment_max_inflight:
            count = state.inflight_by_deployment.get(self.deployment, 0)
            if count >= settings.deployment_max_inflight:
                state.metrics.rejection(state.metrics.label(self.deployment, True), "inflight")
                self.respond_error("deployment_overloaded")
                return False
            state.inflight_by_deployment[self.deployment] = count + 1
            self.admitted = True
        return True

    def _upstream_error(self, kind: str) -> None:
        metrics = self.state.metrics
        metrics.upstream_error(metrics.label(self.deployment, self.resolved), kind)

    async def _connect(self, entry: Entry, address: Address | None, fresh_only: bool = False) -> None:
        """Borrow or open a connection, trying up to MAX_CONNECT_ATTEMPTS addresses when connects are refused."""
        state = self.state
        avoid: Address | None = None
        for _ in range(min(MAX_CONNECT_ATTEMPTS, len(set(entry.addresses)) + len(entry.backup))):
            now = state.loop.time()
            if address is None:
                address = state.balancer.pick(entry, now, avoid)
            if not fresh_only:
                pooled = state.pool.acquire(address, now)
                if pooled is not None:
                    state.upstream_reuses += 1
                    state.metrics.reused += 1
                    self.attach(pooled, address, reused=True)
                    return
            try:
                upstream = await state.connect(address)
            except TimeoutError:
                state.balancer.failed(address, state.loop.time())
                self._upstream_error("connect_timeout")
                raise RouterError("upstream_timeout", f"connect to {address}") from None
            except OSError as error:
                self._upstream_error("connect_refused")
                duration = state.balancer.failed(address, state.loop.time())
                log.warning(
                    "upstream connect failed",
                    extra={
                        "deployment": self.deployment,
                        "upstream": f"{address[0]}:{address[1]}",
                        "detail": str(error),
                        "ejected_s": duration,
                    },
                )
                avoid, address = address, None
                continue
            if self.finished:  # the client went away while we connected: keep the connection for others
                state.release(upstream)
                return
            self.attach(upstream, address, reused=False)
            return
        raise RouterError("upstream_unavailable", "every connect attempt failed")

    def attach(self, upstream: UpstreamConnection, address: Address, reused: bool) -> None:
        """Send the request (head and any body already received) on `upstream` and relay from here on."""
        assert self.info is not None
        self.upstream = upstream
        self.address = address
        self.reused = reused
        upstream.lend(self, head_request=self.method == b"HEAD")
        if self.replay is not None:  # a retry: send again what the stale connection swallowed
            parts = self.replay + self.pending
        else:
            head = upstream_head(
                self.method,
                self.upstream_target,
                self.info,
                peer_ip=self.conn.peer_ip,
                listen_port=self.state.listen_port,
                deployment=self.deployment.encode(),
                request_id=self.request_id,
            )
            parts = [head, *self.pending] if self.pending else [head]
        sent = len(parts[0]) if len(parts) == 1 else sum(len(part) for part in parts)
        self.replay = parts if reused and sent <= MAX_REPLAY else None
        self.replay_bytes = sent
        if self.pending:
            self.pending = []
            self.pending_bytes = 0
        upstream.writelines(parts)
        conn = self.conn
        if conn._paused:
            conn.resume(PAUSE_NO_UPSTREAM)
        if conn.write_paused:
            upstream.pause_reading()
        if self.info.expect_continue and not self.body_complete and not self.continue_sent and self.http_minor:
            self.continue_sent = True
            conn.write(CONTINUE)
        if self.body_complete:
            self.upstream_deadline = self.state.loop.time() + self.state.settings.upstream_header_timeout_s

    # --- the request body ----------------------------------------------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        if self.finished or self.error is not None:  # a refused request's body is read and dropped
            return
        self.body_received += len(data)
        limit = self.state.settings.max_body_bytes
        if limit and self.body_received > limit:
            self._abort_request("body_too_large")
            return
        assert self.info is not None
        framed = [b"%x\r\n" % len(data), data, b"\r\n"] if self.info.chunked else [data]
        self._send_body(framed)

    def on_request_complete(self) -> None:
        if self.finished:
            return
        self.body_complete = True
        assert self.info is not None
        if self.info.chunked:
            self._send_body([b"0\r\n\r\n"])
        if self.upstream is not None and not self.response_started:
            self.upstream_deadline = self.state.loop.time() + self.state.settings.upstream_header_timeout_s

    def _send_body(self, parts: list[bytes]) -> None:
        upstream = self.upstream
        size = sum(len(part) for part in parts)
        if upstream is None:
            self.pending += parts
            self.pending_bytes += size
            if self.pending_bytes > MAX_PENDING_BODY:
                self.conn.pause(PAUSE_NO_UPSTREAM)
            return
        if self.replay is not None:
            if self.replay_bytes + size <= MAX_REPLAY:
                self.replay += parts
            else:
                self.replay = None
        self.replay_bytes += size
        upstream.writelines(parts)

    def request_broken(self, code: str) -> None:
        """The client's body was malformed or cut: the backend must not see a request that looks whole."""
        self._abort_request(code)

    def _abort_request(self, code: str) -> None:
        self._drop_upstream()
        self.close_after = True
        if self.response_started:
            self.conn.abort()
        else:
            self.respond_error(code)

    # --- the response (ResponseSink) -----------------------------------------------------------------------

    def on_response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> int | None:
        if status < 200 and status != 101:
            if status != 100 and self.http_minor:  # e.g. 103 Early Hints; 100 is the router's own business
                info = analyse_response(headers)
                self.conn.write(b"".join((b"HTTP/1.1 %d %s\r\n" % (status, reason), *info.forwarded, b"\r\n")))
            return None
        info = analyse_response(headers)
        if status == 101:
            self._switch_protocols(status, reason, info)
            return None
        state = self.state
        keep = self.keep_alive and not self.close_after and not state.draining and self.body_complete
        no_body = self.method == b"HEAD" or status in {204, 304}
        length = None  # the body's length when Content-Length frames it: the connection may relay it unparsed
        if no_body:
            framing = (
                b"" if info.content_length is None or status == 204 else b"Content-Length: %d\r\n" % info.content_length
            )
        elif info.content_length is not None and not info.chunked:
            framing = b"Content-Length: %d\r\n" % info.content_length
            length = info.content_length
        else:
            self.response_until_close = not info.chunked
            if self.http_minor:
                self.response_chunked = True
                framing = b"Transfer-Encoding: chunked\r\n"
            else:
                framing = b""
                keep = False
        if not keep:
            framing += b"Connection: close\r\n"
            self.close_after = True
        elif not self.http_minor:
            framing += b"Connection: keep-alive\r\n"
        self.response_started = True
        self.status = status
        head = response_head(status, reason, info, self.request_id, framing)
        self.bytes_out += len(head)
        self.conn.write(head)
        self.upstream_deadline = state.loop.time() + state.settings.upstream_read_timeout_s
        return length

    def _switch_protocols(self, status: int, reason: bytes, info: ResponseHeaders) -> None:
        if not self.tunnel or info.upgrade is None or self.upstream is None:
            self._upstream_failed("upstream_bad_response")
            return
        upgrade_lines = b"Connection: upgrade\r\nUpgrade: " + info.upgrade + b"\r\n"
        self.response_started = True
        self.status = 101
        self.upstream_deadline = 0.0
        self.conn.write(response_head(status, reason, info, self.request_id, upgrade_lines))
        self.conn.start_tunnel(self.upstream)

    def on_response_body(self, data: bytes) -> None:
        self.bytes_out += len(data)
        if self.response_chunked:
            self.conn.writelines([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self.conn.write(data)
        state = self.state
        self.upstream_deadline = state.loop.time() + state.settings.upstream_read_timeout_s

    def on_response_complete(self) -> None:
        upstream, self.upstream = self.upstream, None
        if self.response_chunked:
            self.conn.write(b"0\r\n\r\n")
        if upstream is not None:
            state = self.state
            if self.address is not None:
                state.balancer.succeeded(self.address)
            if self.body_complete and not self.response_until_close and upstream.response_keeps_alive():
                state.release(upstream)
            else:
                upstream.close()
        self.conn.finish(self)

    def on_tunnel_data(self, data: bytes) -> None:
        self.conn.write(data)
        self.conn.tunnel_active()

    def begin_read(self) -> None:
        self.conn.cork()

    def end_read(self) -> None:
        self.conn.uncork()

    def on_upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self.upstream_write_paused_at = self.state.loop.time()
            self.conn.pause(PAUSE_UPSTREAM_FULL)
        else:
            self.upstream_write_paused_at = 0.0
            self.conn.resume(PAUSE_UPSTREAM_FULL)

    def on_upstream_failure(self, kind: UpstreamFailure) -> None:
        upstream, self.upstream = self.upstream, None  # closed already: a failing connection closes itself
        self.upstream_write_paused_at = 0.0
        if self.finished:
            return
        if self.tunnel and self.response_started:
            self.conn.close()
            return
        if kind is UpstreamFailure.LOST and self.response_started and self.response_until_close:
            self.response_until_close = False  # the backend's close ends a body framed by close: complete
            self.on_response_complete()
            return
        if self.response_started:
            log.warning(
                "upstream closed mid-response",
                extra={"deployment": self.deployment, "request_id": self.request_id.decode()},
            )
            self._upstream_error("truncated")
            self.conn.abort()  # a clean truncation: the client sees the connection close, never a wrong body
            return
        if kind is UpstreamFailure.LOST and upstream is not None and self._may_retry(upstream):
            self.retried = True
            self.conn.resume(PAUSE_UPSTREAM_FULL)
            entry = self.state.discovery.cache.fresh(self.deployment, self.state.loop.time())
            if entry is not None and entry.addresses:
                self.task = self.state.loop.create_task(self._retry(entry))
                return
        if kind is UpstreamFailure.BAD_RESPONSE:
            self._upstream_error("bad_response")
            self._upstream_failed("upstream_bad_response")
        else:
            self._upstream_error("reset_before_response")
            self._upstream_failed("upstream_unavailable")

    def _may_retry(self, upstream: UpstreamConnection) -> bool:
        return (
            self.reused
            and not self.retried
            and not upstream.received_any
            and self.replay is not None
            and self.method in IDEMPOTENT_METHODS
        )

    async def _retry(self, entry: Entry) -> None:
        try:
            await self._connect(entry, self.address, fresh_only=True)
        except RouterError as error:
            if not self.finished:
                self.respond_error(error.code)
        finally:
            self.task = None

    def _upstream_failed(self, code: str) -> None:
        self._drop_upstream()
        if self.response_started:
            self.conn.abort()
        else:
            self.respond_error(code)

    def upstream_timed_out(self) -> None:
        self._upstream_error("read_timeout" if self.response_started else "header_timeout")
        self._upstream_failed("upstream_timeout")

    def upstream_send_timed_out(self) -> None:
        """The backend took no byte of the request body for --upstream-send-timeout."""
        self._upstream_error("send_timeout")
        self._upstream_failed("upstream_timeout")

    def _drop_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.close()
        self.upstream_deadline = 0.0
        self.upstream_write_paused_at = 0.0

    # --- local answers ---------------------------------------------------------------------------------------

    def respond_error(self, code: str, extra: bytes = b"") -> None:
        kind = ERRORS[code]
        self.error_code = code
        if code == "deployment_not_found" or code.startswith("upstream_") or code.startswith("resolver_"):
            body = error_body(kind, self.request_id.decode(), self.deployment)
        else:
            body = error_body(kind, self.request_id.decode())
        if kind.log_each:
            log.info(
                "request failed",
                extra={"code": code, "deployment": self.deployment, "request_id": self.request_id.decode()},
            )
        self.conn.respond_local(self, kind.status, body, extra)

    def abandon(self) -> None:
        """The client is gone: stop everything this exchange started."""
        self.finished = True
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._drop_upstream()


class ClientConnection(asyncio.Protocol):
    """One client (ALB) connection: parsing, pipelining, keep-alive, deadlines and back-pressure."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.transport: asyncio.Transport | None = None
        self.peer_ip = b""
        self.write_paused = False
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._parsing: Exchange | None = None
        self._active: Exchange | None = None
        self._queue: deque[Exchange] = deque()
        self._head_pending = 0
        self._head_size = 0
        self._head_error: str | None = None
        self._body_left = 0  # bytes of a Content-Length request body still to come
        self._raw_body = False  # relaying those bytes past the parser (see _relay_body)
        self._paused = 0
        self._deadline = 0.0
        self._deadline_kind = ""
        self._closing = False
        self._lingering = False
        self._tunnel: UpstreamConnection | None = None
        self._early_tunnel: list[bytes] = []
        self._corked: list[bytes] | None = None
        self._eof_sent = False
        self._write_paused_at = 0.0  # when the client stopped taking what the router writes
        self._closing_at = 0.0

    # --- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        peer = self.transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]).encode() if peer else b"unknown"
        self.state.connections.add(self)
        self._set_deadline("header", self.state.settings.client_header_timeout_s)

    def eof_received(self) -> bool | None:
        """The client half-closed: it sends nothing more but may still read. Answer what it asked (a request
        cut short gets 400), then close; keeping the write side open is what returning True asks for."""
        if self._tunnel is not None or self._closing:
            return None
        self._raw_body = False
        if self._parsing is not None:
            self._on_parse_error("bad_request")
        else:
            self._parser = None  # nothing more will come: finish() closes after the last answer
            self._lingering = True
        if self._active is None and not self._queue:
            return None
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self.state.connections.discard(self)
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        active, self._active = self._active, None
        if active is not None and not active.finished:
            self.state.inflight -= 1
            # 499 (Nginx's "client closed request") when nothing was answered yet.
            self.state.record(active, active.status or 499)
            active.abandon()
        for queued in self._queue:
            queued.abandon()
        self._queue.clear()

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.write(data)
            self.tunnel_active()
            return
        parser = self._parser
        if parser is None:  # after an upgrade request, or lingering after an error: hold or drop
            if not self._lingering:
                self._early_tunnel.append(data)
                self.pause(PAUSE_TUNNEL)
            return
        if self._raw_body:
            self._relay_body(data)
            return
        reading_head = self._parsing is None or not self._parsing.head_done
        if reading_head:
            self._head_pending += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._on_upgrade_request(data[upgrade.args[0] :])
            return
        except httptools.HttpParserCallbackError:
            self._on_parse_error(self._head_error or "bad_request")
            return
        except httptools.HttpParserError:
            self._on_parse_error("bad_request")
            return
        if (
            self._parsing is not None
            and not self._parsing.head_done
            and self._head_pending > self.state.settings.max_header_bytes
        ):
            self._on_parse_error("headers_too_large")
        elif self._body_left > 0 and self._parsing is not None and self._parser is parser:
            self._raw_body = True  # the head is parsed and part of the body still to come: skip the parser

    def _relay_body(self, data: bytes) -> None:
        """The rest of a Content-Length body, relayed as it arrives without llhttp (which would copy each chunk
        into a new bytes object and call back for it); the length is all there is to know. At its end a fresh
        parser takes over, with whatever follows (a pipelined request)."""
        left = self._body_left
        if len(data) < left:
            self.on_body(data)  # counts _body_left down
            return
        rest = data[left:] if len(data) > left else b""
        self._raw_body = False
        self._parser = httptools.HttpRequestParser(self)  # the old one still waits for the body it never saw
        self.on_body(data[:left] if rest else data)
        self.on_message_complete()
        if rest:
            self.data_received(rest)

    def pause_writing(self) -> None:
        """The client takes no more for now: read no more from its backend, nor from it (whoever answers,
        the router or a backend, an unread answer must not grow in memory)."""
        self.write_paused = True
        self._write_paused_at = self.state.loop.time()
        target = self._tunnel or (self._active.upstream if self._active is not None else None)
        if target is not None:
            target.pause_reading()
        self.pause(PAUSE_CLIENT_FULL)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._write_paused_at = 0.0
        active = self._active
        target = self._tunnel or (active.upstream if active is not None else None)
        if target is not None:
            target.resume_reading()
        if active is not None and active.upstream_deadline:
            active.upstream_deadline = self.state.loop.time() + self.state.settings.upstream_read_timeout_s
        self.resume(PAUSE_CLIENT_FULL)
        if self._queue and active is None:
            self.state.loop.call_soon(self._start_next)

    # --- httptools callbacks -------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._parsing = Exchange(self)
        self._head_size = 0
        self._set_deadline("header", self.state.settings.client_header_timeout_s)

    def on_url(self, url: bytes) -> None:
        assert self._parsing is not None
        self._parsing.target += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._parsing is not None
        headers = self._parsing.headers
        headers.append((name, value))
        self._grow_head(len(name) + len(value) + 4)
        if len(headers) > self.state.settings.max_header_count:
            self._head_error = "headers_too_large"
            raise ValueError("too many header lines")

    def _grow_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > self.state.settings.max_header_bytes:
            self._head_error = "headers_too_large"
            raise ValueError("request head too large")

    def on_headers_complete(self) -> None:
        exchange = self._parsing
        assert exchange is not None
        assert self._parser is not None
        self._head_pending = 0
        exchange.complete_head(self._parser)
        if exchange.body_expected and exchange.error is None:
            self._set_deadline("body", self.state.settings.client_body_timeout_s)
            info = exchange.info
            if info is not None and not info.chunked and info.content_length:
                self._body_left = info.content_length
        else:
            self._deadline = 0.0
        if exchange.info is not None and exchange.info.upgrade is not None and exchange.error is None:
            exchange.tunnel = True
        self._enqueue(exchange)

    def on_body(self, body: bytes) -> None:
        self._body_left -= len(body)
        exchange = self._parsing
        if exchange is not None:
            if self._deadline_kind == "body":
                self._deadline = self.state.loop.time() + self.state.settings.client_body_timeout_s
            exchange.on_request_body(body)

    def on_message_complete(self) -> None:
        self._body_left = 0
        exchange, self._parsing = self._parsing, None
        if self._deadline_kind == "body":
            self._deadline = 0.0
        if exchange is not None and not exchange.body_complete:  # a request without body is complete already
            exchange.on_request_complete()
        if self._active is None and not self._queue and not self._closing:
            # Answered inside its own parser callback (health, errors): idle from here on.
            self._set_deadline("idle", self.state.settings.client_keepalive_timeout_s)

    # --- the pipeline ----------------------------------------------------------------------------------------

    def _enqueue(self, exchange: Exchange) -> None:
        if self._closing or self._eof_sent:
            return
        if self._active is None and not self._queue:
            self._active = exchange
            exchange.start()
        else:
            self._queue.append(exchange)
            self.pause(PAUSE_PIPELINE)

    def _start_next(self) -> None:
        if self._closing or self._active is not None or not self._queue or self.write_paused:
            return  # with writes paused, resume_writing starts the next one
        exchange = self._queue.popleft()
        if not self._queue:
            self.resume(PAUSE_PIPELINE)
        self._active = exchange
        exchange.start()

    def finish(self, exchange: Exchange) -> None:
        """`exchange` wrote its last response byte: close, or go on with the next request."""
        if exchange.finished:
            return
        exchange.finished = True
        state = self.state
        state.inflight -= 1
        state.record(exchange, exchange.status)
        if self._active is exchange:
            self._active = None
        if self._paused:
            self.resume(PAUSE_UPSTREAM_FULL | PAUSE_NO_UPSTREAM)
        parser_done = self._parser is None and not self._queue  # nothing more can be read on this connection
        if exchange.close_after or self._closing or parser_done or (state.draining and not self._queue):
            if exchange.body_complete:
                self.close()
            else:
                self._linger()
            return
        if self._queue:
            state.loop.call_soon(self._start_next)
        elif self._parsing is None:
            self._set_deadline("idle", state.settings.client_keepalive_timeout_s)

    def _on_parse_error(self, code: str) -> None:
        """A malformed request: answer it in its turn, then close; nothing after it is read."""
        if self._eof_sent:  # already ended after an early answer: bytes after it get none
            self._parser = None
            return
        self._parser = None
        self._lingering = True
        exchange = self._parsing
        self._parsing = None
        if exchange is not None and exchange.head_done and not exchange.finished:
            if exchange is self._active:
                exchange.request_broken(code)
            else:
                exchange._refuse(code)
            return
        exchange = Exchange(self)
        exchange._refuse(code)
        self._enqueue(exchange)

    def _on_upgrade_request(self, rest: bytes) -> None:
        self._parser = None
        if rest:
            self._early_tunnel.append(rest)
        exchange = self._active if self._active is not None and self._active.tunnel else None
        if exchange is None and self._queue and self._queue[-1].tunnel:
            exchange = self._queue[-1]
        if exchange is None:  # CONNECT, or an upgrade the head refused: it is answered; read nothing more
            self._lingering = True
            if self._active is None and not self._queue:
                self.close()
            return
        exchange.close_after = True  # if the backend declines the upgrade, this connection ends after it
        self.pause(PAUSE_TUNNEL)

    def start_tunnel(self, upstream: UpstreamConnection) -> None:
        self._tunnel = upstream
        self._set_deadline("tunnel", self.state.settings.tunnel_idle_timeout_s)
        if self._early_tunnel:
            upstream.writelines(self._early_tunnel)
            self._early_tunnel = []
        self.resume(PAUSE_TUNNEL | PAUSE_PIPELINE)

    def tunnel_active(self) -> None:
        """Bytes went through the tunnel: it is not idle."""
        self._deadline = self.state.loop.time() + self.state.settings.tunnel_idle_timeout_s

    # --- writing and local responses -------------------------------------------------------------------------

    def cork(self) -> None:
        """Collect writes until `uncork`: one backend read (head and body, usually) becomes one send."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked and self.transport is not None and not self._closing and not self._eof_sent:
            self.transport.write(corked[0] if len(corked) == 1 else b"".join(corked))

    def write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
        elif self.transport is not None and not self._closing and not self._eof_sent:
            self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self._corked is not None:
            self._corked += parts
        elif self.transport is not None and not self._closing and not self._eof_sent:
            self.transport.writelines(parts)

    def respond_local(self, exchange: Exchange, status: int, body: bytes, extra: bytes = b"") -> None:
        if exchange.response_started:
            self.abort()
            return
        close = exchange.close_after or not exchange.keep_alive or self.state.draining or not exchange.body_complete
        exchange.close_after = close
        connection = (
            b"Connection: close\r\n" if close else (b"" if exchange.http_minor else b"Connection: keep-alive\r\n")
        )
        head = (
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nX-Request-Id: %s\r\n%s%s\r\n"
            % (
                status,
                reason_phrase(status),
                len(body),
                exchange.request_id or b"-",
                extra,
                connection,
            )
        )
        exchange.response_started = True
        exchange.status = status
        exchange.bytes_out = len(head) + len(body)
        exchange._drop_upstream()
        if exchange.task is not None and exchange.task is not asyncio.current_task():
            exchange.task.cancel()
        self.write(head if exchange.method == b"HEAD" else head + body)
        self.finish(exchange)

    # --- flow control and closing ----------------------------------------------------------------------------

    def pause(self, reason: int) -> None:
        if not self._paused and self.transport is not None and not self._closing:
            self.transport.pause_reading()
        self._paused |= reason

    def resume(self, reasons: int) -> None:
        if not self._paused & reasons:
            return
        self._paused &= ~reasons
        if not self._paused and self.transport is not None and not self._closing:
            self.transport.resume_reading()
            if self._deadline_kind == "body" and self._deadline:
                self._deadline = self.state.loop.time() + self.state.settings.client_body_timeout_s

    def _set_deadline(self, kind: str, timeout_s: float) -> None:
        self._deadline_kind = kind
        self._deadline = self.state.loop.time() + timeout_s

    def check_deadlines(self, now: float) -> None:
        settings = self.state.settings
        if (self._write_paused_at and now - self._write_paused_at >= settings.client_send_timeout_s) or (
            self._closing_at and now - self._closing_at >= settings.client_send_timeout_s
        ):
            self.abort()  # the client reads nothing: what it holds (a backend, an in-flight slot) goes free
            return
        active = self._active
        if (
            active is not None
            and active.upstream_write_paused_at
            and now - active.upstream_write_paused_at >= settings.upstream_send_timeout_s
        ):
            active.upstream_send_timed_out()
        if (
            active is not None
            and active.upstream_deadline
            and now >= active.upstream_deadline
            and not self.write_paused
        ):
            active.upstream_timed_out()
        if not self._deadline or now < self._deadline or self._paused:
            return
        kind = self._deadline_kind
        self._deadline = 0.0
        if kind in {"idle", "tunnel"} or self._lingering:
            self.close()  # an idle tunnel: connection_lost closes the backend side too
        elif kind == "header" and (self._parsing is not None or self._queue):
            self._parser = None
            self._lingering = True
            self._parsing = None
            exchange = Exchange(self)
            exchange._refuse("request_timeout")
            self._enqueue(exchange)
        elif kind == "body" and active is not None:
            active.request_broken("request_timeout")
        else:
            self.close()

    @property
    def active(self) -> Exchange | None:
        return self._active

    def close_if_idle(self) -> None:
        if self._active is None and not self._queue and self._parsing is None:
            self.close()

    def _linger(self) -> None:
        """Close after an early response without resetting: stop sending, drop what still arrives, close soon."""
        self._parser = None
        self._lingering = True
        self._early_tunnel = []
        self.resume(PAUSE_PIPELINE | PAUSE_TUNNEL | PAUSE_NO_UPSTREAM | PAUSE_UPSTREAM_FULL)
        self.uncork()
        transport = self.transport
        if transport is not None and not self._closing and transport.can_write_eof():
            transport.write_eof()
            self._eof_sent = True  # nothing may be written after it
            self._set_deadline("idle", LINGER_S)
        else:
            self.close()

    def close(self) -> None:
        self.uncork()  # what was written before the close still goes out; close() flushes, then closes
        if self.transport is not None and not self._closing:
            self._closing = True
            self._closing_at = self.state.loop.time()  # a flush the client never takes is cut (check_deadlines)
            self.transport.close()

    def abort(self) -> None:
        self._corked = None  # a truncation: nothing more of this response may reach the client
        if self.transport is not None:
            self._closing = True
            self.transport.abort()

    def __repr__(self) -> str:
        active = self._active is not None
        return f"<ClientConnection {self.peer_ip.decode()} [Active: {active} | Queued: {len(self._queue)}]>"


def access_line(exchange: Exchange, status: int, duration_s: float) -> tuple[object, ...]:
    """The access-log values of one request, in the order of logs.ACCESS_FIELDS; formatted off the loop.
    The path is logged without its query string (tokens live there)."""
    info = exchange.info
    address = exchange.address
    return (
        time.time(),
        exchange.request_id.decode(),
        info.trace_id.decode("latin-1") if info is not None and info.trace_id else None,
        exchange.conn.peer_ip.decode(),
        exchange.method.decode("latin-1"),
        exchange.deployment or None,
        exchange.target.split(b"?", 1)[0].decode("latin-1"),
        status,
        exchange.body_received,
        exchange.bytes_out,
        round(duration_s * 1000, 3),
        f"{address[0]}:{address[1]}" if address else None,
        exchange.reused if address else None,
        exchange.dns_result or None,
        exchange.error_code or None,
    )
