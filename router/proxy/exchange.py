"""One request and its response: `Exchange`, from the client's parsed head to the last response byte.

The exchange owns its request's life. Its phase (phase.py) changes in one method, `_enter`, which rejects an
illegal transition where checks are on; what a phase implies is not stored again. It owns:
- its in-flight slot: taken in `begin`, given back in `_end` (the worker's count and, when a limit is set, the
  deployment's);
- its backend connection: `acquire` is the one way to get one, for the first try, after a DNS lookup and for
  the retry of a request a stale pooled connection swallowed;
- its deadlines: waiting for the backend's head or next body bytes (`_backend_deadline`) and for the backend
  to take the request body (`_backend_stalled_at`), checked by `check_deadlines` on the worker's tick;
- its request body on the way out (request_body.py), its response framing (`Framing`, kept whole) and its
  record for metrics and the access log (record.py).

dispatch.py starts it (route, DNS, limits); it reaches its client only through `ClientSide` (client_side.py)
and is its backend connection's `ResponseSink`. A request that fails on a reused connection before any
response byte is retried once on a fresh one when replaying it is safe (idempotent method, the whole request
still held).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, Final

import httptools

from router.discovery.cache import Address, Entry
from router.errors import ERRORS, RouterError, error_body
from router.proxy.client_side import PAUSE_NO_UPSTREAM, PAUSE_UPSTREAM_FULL, ClientSide
from router.proxy.headers import (
    Framing,
    HeaderError,
    RequestHeaders,
    ResponseHeaders,
    analyse_request,
    analyse_response,
    local_head,
    request_refusal,
    response_framing,
    response_head,
    upstream_head,
)
from router.proxy.phase import (
    ABANDONED,
    AWAITING_HEAD,
    CHECK_PHASES,
    DONE,
    HELD,
    RECEIVING_HEAD,
    REFUSED,
    RELAYING,
    ROUTING,
    SENDING,
    TUNNEL,
    WAITING,
    Phase,
    check_transition,
)
from router.proxy.record import RequestRecord
from router.proxy.request_body import RequestBody
from router.proxy.server import ServerState
from router.proxy.upstream import UpstreamConnection, UpstreamFailure

log = logging.getLogger("router.proxy")

IDEMPOTENT_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


class Exchange:
    """One request and its response, from the client's head to the last response byte."""

    __slots__ = (
        "conn", "state", "phase", "target", "headers", "method", "http_minor", "keep_alive", "info", "error",
        "request_id", "deployment", "upstream_target", "body", "framing", "upstream", "address", "reused",
        "retried", "close_after", "task", "record", "held_s", "_held_at", "_backend_deadline", "_backend_stalled_at",
    )  # fmt: skip

    def __init__(self, conn: ClientSide, state: ServerState) -> None:
        self.conn = conn
        self.state = state
        self.phase = RECEIVING_HEAD
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.http_minor = 1
        self.keep_alive = True  # the client's head allows keeping its connection open
        self.info: RequestHeaders | None = None
        self.error: str | None = None  # the code a refused head is answered with
        self.request_id = b""
        self.deployment = ""
        self.upstream_target = b""
        self.body = RequestBody()
        self.framing: Framing | None = None  # decided from the response head
        self.upstream: UpstreamConnection | None = None
        self.address: Address | None = None
        self.reused = False  # the backend connection came from the pool
        self.retried = False
        self.close_after = False  # the client connection closes after this exchange
        self.task: asyncio.Task[None] | None = None
        self.record = RequestRecord()
        # How long it was held while its deployment woke (X-WhaleRay-Cold-Start, the access log); 0: not held.
        # Kept here, not in the record: the exchange's object has room for it, the record's would grow a size class.
        self.held_s = 0.0
        self._held_at = 0.0  # when the hold began (perf_counter), while HELD
        self._backend_deadline = 0.0  # the backend's response head or next bytes are due by then; 0: none
        self._backend_stalled_at = 0.0  # when the backend stopped taking the request body; 0: it takes it

    def _enter(self, phase: int) -> None:
        if CHECK_PHASES:
            check_transition(self.phase, phase)
        self.phase = phase

    # --- the request head ----------------------------------------------------------------------------------

    def add_target(self, piece: bytes) -> None:
        """The parser's next piece of the request target (llhttp calls back once per piece a read holds)."""
        self.target += piece

    def add_header(self, name: bytes, value: bytes) -> int:
        """One more header line of the head; how many there are now."""
        headers = self.headers
        headers.append((name, value))
        return len(headers)

    def complete_head(self, parser: httptools.HttpRequestParser, minor: int) -> None:
        """Validate the parsed head; a problem becomes `self.error`, answered when the exchange starts. `minor`:
        HTTP/1.x's minor version read off the request line by the client connection, or -1 to ask the parser."""
        self._enter(WAITING)
        self.record.started_at = time.perf_counter()
        self.method = parser.get_method()
        self.keep_alive = parser.should_keep_alive()
        if minor < 0:
            version = parser.get_http_version()
            if version not in {"1.1", "1.0"}:
                self.refuse("bad_request")
                return
            minor = 1 if version == "1.1" else 0
        self.http_minor = minor
        try:
            info = analyse_request(self.headers, self.http_minor)
        except (HeaderError, ValueError):
            self.refuse("bad_request")
            return
        self.info = info
        self.request_id = info.request_id or self.state.next_request_id()
        if not (info.chunked or info.content_length):
            self.body.finish()
        # A fragment is never forwarded (RFC 9112 3.2). 0x23 is '#': `b"#" in` raises and clears a TypeError.
        if 0x23 in self.target:
            self.target = self.target.partition(b"#")[0]
        refusal = request_refusal(self.method, info, self.state.settings.max_body_bytes)
        if refusal is not None:
            self.refuse(refusal)

    def refuse(self, code: str) -> None:
        """Answer `code` when this exchange starts, then close the connection. An exchange the client connection
        makes for an unparsable request has no whole head: it waits from here on too."""
        if self.phase == RECEIVING_HEAD:
            self._enter(WAITING)
            self.record.started_at = time.perf_counter()
        self.error = code
        self.close_after = True
        if not self.request_id:
            self.request_id = self.state.next_request_id()

    def wants_tunnel(self) -> bool:
        """An upgrade request that was not refused: the client's next bytes may be the tunnel's."""
        return self.error is None and self.info is not None and self.info.upgrade is not None

    def close_connection_after(self) -> None:
        """Whatever the response, the client connection ends after it (the client sent what must not be read
        as another request, such as bytes after an upgrade request)."""
        self.close_after = True

    # --- starting, and the backend connection ----------------------------------------------------------------

    def begin(self) -> bool:
        """Start: take an in-flight slot; a refused head is answered now (False: nothing more to do)."""
        self.state.inflight += 1
        if self.error is not None:
            self._enter(REFUSED)
            self.respond_error(self.error)
            return False
        self._enter(ROUTING)
        return True

    def route_to(self, deployment: str, upstream_target: bytes) -> None:
        self.deployment = deployment
        self.upstream_target = upstream_target

    def note_dns(self, result: str, resolved: bool) -> None:
        """The lookup outcome, for the access log and whaleray_dns_lookups_total."""
        record = self.record
        record.dns = result
        record.resolved = resolved
        self.state.metrics.dns_lookups[result] += 1

    def hold_slot(self) -> None:
        """The deployment's limits admitted this request into one of its in-flight slots (given back at the end)."""
        self.record.admitted = True

    def hold_for_wake(self) -> None:
        """Its deployment is asleep: wait while it wakes (router/wake), reading no more of the body, so a held
        request costs no memory per byte (the client's body timeout does not run while reading is paused)."""
        self._enter(HELD)
        self._held_at = time.perf_counter()
        if not self.body.complete:
            self.conn.pause(PAUSE_NO_UPSTREAM)

    def woke(self) -> None:
        """Its deployment woke: route it again, through the limits and the pool like any request. It counts
        under its deployment's own label from here on, as a resolved request does."""
        self._stop_holding()
        self._enter(ROUTING)
        self.record.resolved = True

    def _stop_holding(self) -> None:
        """Woken, refused or abandoned: how long it was held is its cold start (for the client and the log)."""
        self.held_s = time.perf_counter() - self._held_at

    def acquire(self, entry: Entry, address: Address | None, *, fresh_only: bool = False) -> None:
        """The one way this request gets a backend connection: an idle pooled one at once, inside the parser
        callback (the common case: no task), else one task that borrows or connects (connector.py), trying
        the deployment's next address when a connect is refused. `fresh_only`: the retry, never pooled."""
        if address is not None and not fresh_only:
            upstream = self.state.connector.take_idle(address, self.state.clock())
            if upstream is not None:
                self.attach(upstream, address, reused=True)
                return
        self.run(self._borrow(entry, address, fresh_only))

    async def _borrow(self, entry: Entry, address: Address | None, fresh_only: bool) -> None:
        connector = self.state.connector
        upstream, address, reused = await connector.borrow(entry, address, self.deployment, fresh_only=fresh_only)
        if self.phase >= DONE:  # the client went away meanwhile: the connection, unused, serves others
            connector.keep(upstream)
        else:
            self.attach(upstream, address, reused=reused)

    def run(self, work: Coroutine[Any, Any, None]) -> None:
        """Go on with `work` in this exchange's task; its failure is answered like any other."""
        task = self.task = self.state.loop.create_task(self._answering_failures(work))
        # A task cancelled before its first step never starts `work`: close it, or Python warns it was never
        # awaited (closing a coroutine that ran is a no-op).
        task.add_done_callback(lambda _: work.close())

    async def _answering_failures(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.current_task()
        try:
            await work
        except RouterError as error:
            if self.phase < DONE:
                self.respond_error(error.code)
        except Exception:  # a bug: answer it like one, and keep serving the other requests
            log.exception("unexpected error while proxying", extra={"deployment": self.deployment})
            if self.phase < DONE:
                self.respond_error("internal_error")
        finally:
            if self.task is task:
                self.task = None

    def attach(self, upstream: UpstreamConnection, address: Address, reused: bool) -> None:
        """Send the request (head and any body already received) on `upstream` and relay from here on."""
        info = self.info
        assert info is not None
        body = self.body
        self.upstream = upstream
        self.address = address
        self.reused = reused
        record = self.record
        record.connect_s = upstream.connect_s
        if self.state.access_log is not None:  # two clock reads a request, for the log only
            record.sent_at = time.perf_counter()
        upstream.lend(self, head_request=self.method == b"HEAD")
        head = None
        if body.replay is None:  # not a retry, which sends again what the stale connection swallowed
            head = upstream_head(
                self.method,
                self.upstream_target,
                info,
                peer_ip=self.conn.peer_ip,
                listen_port=self.state.listen_port,
                deployment=self.deployment.encode(),
                request_id=self.request_id,
            )
        upstream.writelines(body.first_send(head, reused))
        conn = self.conn
        if conn.gate.reasons:
            conn.resume(PAUSE_NO_UPSTREAM)
        if conn.write_paused:
            upstream.pause_reading()
        if body.complete:
            self._enter(AWAITING_HEAD)
            self._expect_backend(self.state.settings.upstream_header_timeout_s)
        else:
            self._enter(SENDING)
            if info.expect_continue and self.http_minor and body.note_continue():
                conn.write(CONTINUE)

    # --- the request body ----------------------------------------------------------------------------------

    def on_request_body(self, data: bytes) -> None:
        if self.phase >= DONE or self.error is not None:  # a refused request's body is read and dropped
            return
        received = self.body.arrived(len(data))
        limit = self.state.settings.max_body_bytes
        if limit and received > limit:
            if self.phase == WAITING:  # not started (pipelined behind another): answered in its turn
                self.refuse("body_too_large")
            else:
                self._abort_request("body_too_large")
            return
        assert self.info is not None
        self._send_body([b"%x\r\n" % len(data), data, b"\r\n"] if self.info.chunked else [data])

    def on_request_complete(self) -> None:
        if self.phase >= DONE:
            return
        self.body.finish()
        assert self.info is not None
        if self.info.chunked:
            self._send_body([b"0\r\n\r\n"])
        if self.phase == SENDING:
            self._enter(AWAITING_HEAD)
            self._expect_backend(self.state.settings.upstream_header_timeout_s)

    def _send_body(self, parts: list[bytes]) -> None:
        upstream = self.upstream
        size = sum(len(part) for part in parts)
        if upstream is None:
            if self.body.hold(parts, size):
                self.conn.pause(PAUSE_NO_UPSTREAM)
            return
        self.body.sent(parts, size)
        upstream.writelines(parts)

    def request_broken(self, code: str) -> None:
        """The client's body was malformed, cut or late: the backend must not see a request that looks whole."""
        if self.phase < DONE:
            self._abort_request(code)

    def _abort_request(self, code: str) -> None:
        self._drop_upstream()
        self.close_after = True
        if self.phase == RELAYING:
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
        record = self.record
        if record.sent_at:
            record.header_s = time.perf_counter() - record.sent_at
        info = analyse_response(headers)
        if status == 101:
            self._switch_protocols(status, reason, info)
            return None
        state = self.state
        keep_alive = self.keep_alive and not self.close_after and not state.draining and self.body.complete
        framing = response_framing(
            info, status, head_request=self.method == b"HEAD", http_minor=self.http_minor, keep_alive=keep_alive
        )
        self.framing = framing
        if not framing.keep_alive:
            self.close_after = True
        self._enter(RELAYING)
        record.status = status
        lines = framing.lines
        if self.held_s:  # the client may want to know why this one took longer
            lines += b"X-WhaleRay-Cold-Start: %.3f\r\n" % self.held_s
        head = response_head(status, reason, info, self.request_id, lines)
        record.bytes_out += len(head)
        self.conn.write(head)
        self._expect_backend(state.settings.upstream_read_timeout_s)
        return framing.length

    def _switch_protocols(self, status: int, reason: bytes, info: ResponseHeaders) -> None:
        if not self.wants_tunnel() or info.upgrade is None or self.upstream is None:
            self._upstream_failed("upstream_bad_response")
            return
        upgrade_lines = b"Connection: upgrade\r\nUpgrade: " + info.upgrade + b"\r\n"
        self._enter(TUNNEL)
        self.record.status = 101
        self._backend_deadline = 0.0  # the client connection's tunnel deadline takes over
        self.conn.write(response_head(status, reason, info, self.request_id, upgrade_lines))
        self.conn.start_tunnel(self.upstream)

    def on_response_body(self, data: bytes) -> None:
        self.record.bytes_out += len(data)
        framing = self.framing
        if framing is not None and framing.chunked:
            self.conn.writelines([b"%x\r\n" % len(data), data, b"\r\n"])
        else:
            self.conn.write(data)
        self._expect_backend(self.state.settings.upstream_read_timeout_s)

    def on_response_complete(self) -> None:
        upstream, self.upstream = self.upstream, None
        framing = self.framing
        assert framing is not None
        if framing.chunked:
            self.conn.write(b"0\r\n\r\n")
        if upstream is not None:
            connector = self.state.connector
            if self.address is not None:
                connector.balancer.succeeded(self.address)
            connector.give_back(upstream, request_whole=self.body.complete, framed_response=not framing.until_close)
        self._finish()

    def on_tunnel_data(self, data: bytes) -> None:
        self.conn.write(data)
        self.conn.tunnel_active()

    def begin_read(self) -> None:
        self.conn.cork()

    def end_read(self) -> None:
        self.conn.uncork()

    def on_upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self._backend_stalled_at = self.state.clock()
            self.conn.pause(PAUSE_UPSTREAM_FULL)
        else:
            self._backend_stalled_at = 0.0
            self.conn.resume(PAUSE_UPSTREAM_FULL)

    def on_upstream_failure(self, kind: UpstreamFailure) -> None:
        upstream, self.upstream = self.upstream, None  # closed already: a failing connection closes itself
        self._backend_stalled_at = 0.0
        phase = self.phase
        if phase >= DONE:
            return
        if phase == TUNNEL:
            self.conn.close()
            return
        if phase == RELAYING:
            self._response_cut(kind)
            return
        if kind is UpstreamFailure.LOST and upstream is not None and self._may_retry(upstream):
            self.retried = True
            self.conn.resume(PAUSE_UPSTREAM_FULL)
            entry = self.state.discovery.cache.fresh(self.deployment, self.state.clock())
            if entry is not None and entry.addresses:
                self._enter(ROUTING)
                self.acquire(entry, self.address, fresh_only=True)
                return
        if kind is UpstreamFailure.BAD_RESPONSE:
            self._upstream_error("bad_response")
            self._upstream_failed("upstream_bad_response")
        else:
            self._upstream_error("reset_before_response")
            self._upstream_failed("upstream_unavailable")

    def _response_cut(self, kind: UpstreamFailure) -> None:
        """The backend connection ended while the body was being relayed."""
        framing = self.framing
        assert framing is not None
        if kind is UpstreamFailure.LOST and framing.until_close:  # the backend's close ends such a body: complete
            self.on_response_complete()
            return
        extra = {"deployment": self.deployment, "request_id": self.request_id.decode()}
        log.warning("upstream closed mid-response", extra=extra)
        self._upstream_error("truncated")
        self.conn.abort()  # a clean truncation: the client sees the connection close, never a wrong body

    def _may_retry(self, upstream: UpstreamConnection) -> bool:
        return (
            self.reused
            and not self.retried
            and not upstream.received_any
            and self.body.replay is not None
            and self.method in IDEMPOTENT_METHODS
        )

    def _upstream_error(self, kind: str) -> None:
        metrics = self.state.metrics
        metrics.upstream_error(metrics.label(self.deployment, self.record.resolved), kind)

    def _upstream_failed(self, code: str) -> None:
        self._drop_upstream()
        if self.phase in {RELAYING, TUNNEL}:
            self.conn.abort()
        else:
            self.respond_error(code)

    def _drop_upstream(self) -> None:
        upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.close()
        self._backend_deadline = 0.0
        self._backend_stalled_at = 0.0

    # --- deadlines -------------------------------------------------------------------------------------------

    def _expect_backend(self, timeout_s: float) -> None:
        """The backend's response head, or its next bytes, are due within `timeout_s`."""
        self._backend_deadline = self.state.clock() + timeout_s

    def on_client_writable(self) -> None:
        """The client reads again: the backend's read timeout starts over (it was not the backend's fault)."""
        if self._backend_deadline:
            self._expect_backend(self.state.settings.upstream_read_timeout_s)

    def check_deadlines(self, now: float) -> None:
        """Called by the worker's tick, through the client connection: a backend that stopped taking the request
        body for --upstream-send-timeout, or sent nothing for the header or read timeout, fails the request
        (not while the client is the one not reading)."""
        settings = self.state.settings
        if self._backend_stalled_at and now - self._backend_stalled_at >= settings.upstream_send_timeout_s:
            self._upstream_error("send_timeout")
            self._upstream_failed("upstream_timeout")
        if self._backend_deadline and now >= self._backend_deadline and not self.conn.write_paused:
            self._upstream_error("read_timeout" if self.phase == RELAYING else "header_timeout")
            self._upstream_failed("upstream_timeout")

    # --- local answers and the end ---------------------------------------------------------------------------

    def respond_error(self, code: str, extra: bytes = b"") -> None:
        kind = ERRORS[code]
        self.record.error_code = code
        request_id = self.request_id.decode()
        body = error_body(kind, request_id, self.deployment if kind.names_deployment else None)
        if kind.log_each:
            log.info("request failed", extra={"code": code, "deployment": self.deployment, "request_id": request_id})
        if kind.retry_after_s and not extra:
            extra = b"Retry-After: %d\r\n" % kind.retry_after_s
        self.respond_local(kind.status, body, extra)

    def respond_health(self) -> None:
        """The load balancer's probe: not a request of any deployment, and not counted as one."""
        self.record.counted = False
        if self.state.draining:
            self.respond_local(503, b'{"status":"draining"}')
        else:
            self.respond_local(200, b'{"status":"healthy"}')

    def respond_local(self, status: int, body: bytes, extra: bytes = b"") -> None:
        """A response the router makes itself (an error, /health, a redirect): JSON when it has a body."""
        if self.phase in {RELAYING, TUNNEL}:
            self.conn.abort()
            return
        state = self.state
        close = self.close_after or not self.keep_alive or state.draining or not self.body.complete
        self.close_after = close
        head = local_head(status, state.http_date(), body, self.request_id, extra, close=close, minor=self.http_minor)
        record = self.record
        record.status = status
        record.bytes_out = len(head) + len(body)
        self._drop_upstream()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self.conn.write(head if self.method == b"HEAD" else head + body)
        self._finish()

    def _finish(self) -> None:
        """The last response byte was written: end, and let the client connection go on."""
        self._end(DONE)
        self.conn.finish()

    def abandon(self) -> None:
        """The client is gone: stop everything this exchange started."""
        if self.phase >= DONE:
            return
        self._end(ABANDONED)
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self._drop_upstream()

    def _end(self, phase: int) -> None:
        """DONE or ABANDONED: give back what a started exchange holds. The one place the counts go down."""
        started = self.phase >= REFUSED
        if self.phase == HELD:
            self._stop_holding()
        self._enter(phase)
        if not started:
            return
        state = self.state
        state.inflight -= 1
        record = self.record
        if record.admitted:
            record.admitted = False
            state.limits.release(self.deployment)
        if not record.status:
            record.status = 499  # Nginx's "client closed request": nothing was answered

    def __repr__(self) -> str:
        return f"<Exchange {self.method.decode('latin-1')} {self.target!r} [{Phase(self.phase).name}]>"
