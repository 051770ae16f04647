"""One request and its response: `Exchange`, from the client's parsed head to the last response byte.

dispatch.py starts it and hands it a backend connection; it writes the request head and streams the body with
back-pressure, then relays the response as the backend connection's `ResponseSink`. It reaches its client only
through `ClientSide` (client_side.py). What it holds of a body before a backend takes it, and keeps to replay,
is bounded. A request that fails on a reused connection before any response byte is retried once on a fresh
one when replaying it is safe (idempotent method, the whole request still held).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

import httptools

from router.discovery.cache import Address, Entry
from router.errors import ERRORS, RouterError, error_body, reason_phrase
from router.proxy.client_side import PAUSE_NO_UPSTREAM, PAUSE_UPSTREAM_FULL, ClientSide
from router.proxy.headers import (
    HeaderError,
    RequestHeaders,
    ResponseHeaders,
    analyse_request,
    analyse_response,
    response_framing,
    response_head,
    upstream_head,
)
from router.proxy.server import ServerState
from router.proxy.upstream import UpstreamConnection, UpstreamFailure

log = logging.getLogger("router.proxy")

IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
MAX_PENDING_BODY: Final = 64 * 1024  # what a request body may hold in memory before a backend takes it
MAX_REPLAY: Final = 64 * 1024  # what is kept of a request to replay it after a stale pooled connection
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class Exchange:
    """One request and its response, from the client's head to the last response byte."""

    __slots__ = (
        "conn", "state", "target", "headers", "method", "http_minor", "keep_alive", "info", "error",
        "request_id", "deployment", "upstream_target", "head_done", "body_expected", "body_complete",
        "body_received", "pending", "pending_bytes", "upstream", "address", "reused", "retried", "replay",
        "replay_bytes", "response_started", "response_chunked", "response_until_close", "close_after",
        "finished", "task", "upstream_deadline", "upstream_write_paused_at", "tunnel", "continue_sent",
        "started_at", "status", "bytes_out", "dns_result", "error_code", "admitted", "resolved", "counted",
        "connect_s", "sent_at", "header_s",
    )  # fmt: skip

    def __init__(self, conn: ClientSide, state: ServerState) -> None:
        self.conn = conn
        self.state = state
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
        self.counted = True  # in whaleray_requests; not a /health probe
        self.connect_s = 0.0  # the backend connection's connect time, when opened for this request
        self.sent_at = 0.0  # with the access log on: when the request's head was sent (perf_counter)
        self.header_s = 0.0  # and how long the response's head took from there

    # --- the request head ----------------------------------------------------------------------------------

    def complete_head(self, parser: httptools.HttpRequestParser) -> None:
        """Validate the parsed head; a problem becomes `self.error`, answered when the exchange starts."""
        self.head_done = True
        self.started_at = time.perf_counter()  # uvloop's loop.time() ticks in milliseconds: too coarse here
        self.method = parser.get_method()
        self.keep_alive = parser.should_keep_alive()
        version = parser.get_http_version()
        if version not in {"1.1", "1.0"}:
            self.refuse("bad_request")
            return
        self.http_minor = 1 if version == "1.1" else 0
        try:
            info = analyse_request(self.headers, self.http_minor)
        except (HeaderError, ValueError):
            self.refuse("bad_request")
            return
        self.info = info
        self.request_id = info.request_id or self.state.next_request_id()
        self.body_expected = info.chunked or bool(info.content_length)
        self.body_complete = not self.body_expected
        self.tunnel = info.upgrade is not None
        # A fragment is never forwarded (RFC 9112 3.2). 0x23 is '#': `b"#" in` raises and clears a TypeError.
        if 0x23 in self.target:
            self.target = self.target.partition(b"#")[0]
        limit = self.state.settings.max_body_bytes
        if self.method == b"CONNECT":
            self.refuse("method_not_allowed")
        elif self.tunnel and self.body_expected:
            # Where would the body end and the tunnel begin? Handshakes (WebSocket, h2c) carry no body.
            self.refuse("bad_request")
        elif limit and info.content_length is not None and info.content_length > limit:
            self.refuse("body_too_large")

    def refuse(self, code: str) -> None:
        """Answer `code` when this exchange starts, then close the connection."""
        self.error = code
        self.tunnel = False
        self.close_after = True
        if not self.request_id:
            self.request_id = self.state.next_request_id()

    async def borrow(self, entry: Entry, address: Address | None, *, fresh_only: bool = False) -> None:
        """A backend connection for this request (dispatch.py decided which deployment), then `attach`."""
        connector = self.state.connector
        upstream, address, reused = await connector.borrow(entry, address, self.deployment, fresh_only=fresh_only)
        if self.finished:  # the client went away meanwhile: the connection, unused, serves others
            connector.keep(upstream)
        else:
            self.attach(upstream, address, reused=reused)

    def _upstream_error(self, kind: str) -> None:
        metrics = self.state.metrics
        metrics.upstream_error(metrics.label(self.deployment, self.resolved), kind)

    def attach(self, upstream: UpstreamConnection, address: Address, reused: bool) -> None:
        """Send the request (head and any body already received) on `upstream` and relay from here on."""
        assert self.info is not None
        self.upstream = upstream
        self.address = address
        self.reused = reused
        self.connect_s = upstream.connect_s
        if self.state.access_log is not None:  # two clock reads a request, for the log only
            self.sent_at = time.perf_counter()
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
        if conn.gate.reasons:
            conn.resume(PAUSE_NO_UPSTREAM)
        if conn.write_paused:
            upstream.pause_reading()
        if self.info.expect_continue and not self.body_complete and not self.continue_sent and self.http_minor:
            self.continue_sent = True
            conn.write(CONTINUE)
        if self.body_complete:
            self.upstream_deadline = self.state.clock() + self.state.settings.upstream_header_timeout_s

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
        self._send_body([b"%x\r\n" % len(data), data, b"\r\n"] if self.info.chunked else [data])

    def on_request_complete(self) -> None:
        if self.finished:
            return
        self.body_complete = True
        assert self.info is not None
        if self.info.chunked:
            self._send_body([b"0\r\n\r\n"])
        if self.upstream is not None and not self.response_started:
            self.upstream_deadline = self.state.clock() + self.state.settings.upstream_header_timeout_s

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
        """The client's body was malformed, cut or late: the backend must not see a request that looks whole."""
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
        if self.sent_at:
            self.header_s = time.perf_counter() - self.sent_at
        info = analyse_response(headers)
        if status == 101:
            self._switch_protocols(status, reason, info)
            return None
        state = self.state
        framing = response_framing(
            info,
            status,
            head_request=self.method == b"HEAD",
            http_minor=self.http_minor,
            keep_alive=self.keep_alive and not self.close_after and not state.draining and self.body_complete,
        )
        self.response_chunked = framing.chunked
        self.response_until_close = framing.until_close
        if not framing.keep_alive:
            self.close_after = True
        self.response_started = True
        self.status = status
        head = response_head(status, reason, info, self.request_id, framing.lines)
        self.bytes_out += len(head)
        self.conn.write(head)
        self.upstream_deadline = state.clock() + state.settings.upstream_read_timeout_s
        return framing.length

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
        self.upstream_deadline = state.clock() + state.settings.upstream_read_timeout_s

    def on_response_complete(self) -> None:
        upstream, self.upstream = self.upstream, None
        if self.response_chunked:
            self.conn.write(b"0\r\n\r\n")
        if upstream is not None:
            connector = self.state.connector
            if self.address is not None:
                connector.balancer.succeeded(self.address)
            connector.give_back(
                upstream, request_whole=self.body_complete, framed_response=not self.response_until_close
            )
        self.conn.finish()

    def on_tunnel_data(self, data: bytes) -> None:
        self.conn.write(data)
        self.conn.tunnel_active()

    def begin_read(self) -> None:
        self.conn.cork()

    def end_read(self) -> None:
        self.conn.uncork()

    def on_upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self.upstream_write_paused_at = self.state.clock()
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
            extra = {"deployment": self.deployment, "request_id": self.request_id.decode()}
            log.warning("upstream closed mid-response", extra=extra)
            self._upstream_error("truncated")
            self.conn.abort()  # a clean truncation: the client sees the connection close, never a wrong body
            return
        if kind is UpstreamFailure.LOST and upstream is not None and self._may_retry(upstream):
            self.retried = True
            self.conn.resume(PAUSE_UPSTREAM_FULL)
            entry = self.state.discovery.cache.fresh(self.deployment, self.state.clock())
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
            await self.borrow(entry, self.address, fresh_only=True)
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
        request_id = self.request_id.decode()
        body = error_body(kind, request_id, self.deployment if kind.names_deployment else None)
        if kind.log_each:
            log.info("request failed", extra={"code": code, "deployment": self.deployment, "request_id": request_id})
        self.respond_local(kind.status, body, extra)

    def respond_local(self, status: int, body: bytes, extra: bytes = b"") -> None:
        """A response the router makes itself (an error, /health, a redirect): JSON when it has a body."""
        if self.response_started:
            self.conn.abort()
            return
        state = self.state
        close = self.close_after or not self.keep_alive or state.draining or not self.body_complete
        self.close_after = close
        connection = b"Connection: close\r\n" if close else (b"" if self.http_minor else b"Connection: keep-alive\r\n")
        content_type = b"Content-Type: application/json\r\n" if body else b""
        head = b"HTTP/1.1 %d %s\r\nDate: %s\r\n%sContent-Length: %d\r\nX-Request-Id: %s\r\n%s%s\r\n" % (
            status, reason_phrase(status), state.http_date(), content_type, len(body), self.request_id or b"-", extra,
            connection,
        )  # fmt: skip
        self.response_started = True
        self.status = status
        self.bytes_out = len(head) + len(body)
        self._drop_upstream()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.conn.write(head if self.method == b"HEAD" else head + body)
        self.conn.finish()

    def abandon(self) -> None:
        """The client is gone: stop everything this exchange started."""
        self.finished = True
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._drop_upstream()
