"""The client side of the proxy: one `ClientConnection` (an `asyncio.Protocol`) per client connection.

It parses requests (httptools), answers pipelined ones in order (the next waits, reading paused), pauses
reading while any PAUSE_* reason holds, cuts a client that reads nothing for --client-send-timeout, and
lingers after an early answer. Its own deadlines are the client's: the head, the body, idle keep-alive and the
tunnel, one at a time (`_deadline`), checked by the worker's tick with the active exchange's (which owns the
backend's). Each request is an `Exchange`, driven through its public methods; it reaches back only through
`ClientSide`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final, cast

import httptools

from router.discovery.cache import Address
from router.proxy import dispatch, telemetry
from router.proxy.client_side import (
    PAUSE_CLIENT_FULL,
    PAUSE_NO_UPSTREAM,
    PAUSE_PIPELINE,
    PAUSE_TUNNEL,
    PAUSE_UPSTREAM_FULL,
    ClientSide,
    ReadGate,
)
from router.proxy.exchange import Exchange
from router.proxy.phase import DONE, HELD, RECEIVING_HEAD
from router.proxy.server import Connection, ServerState
from router.proxy.upstream import UpstreamConnection, not_connected

# Bounds how long the router keeps reading (and dropping) a client's unread body after an early error
# response, so the client reads the response instead of a reset.
LINGER_S: Final = 2.0


def request_line_minor(read: bytes) -> int:
    """The minor version of an HTTP/1.x request line that starts `read` and that llhttp has accepted: 1, 0, or
    -1 when the first line is not such a line (leading empty lines, a bare LF). httptools offers the version
    only as a string it formats for every call (about 2,500 instructions, 5 % of a request); reading the
    validated line is about a tenth of that."""
    end = read.find(b"\n")
    if end < 10 or read[end - 1] != 13:
        return -1
    version = read[end - 9 : end - 1]
    if version == b"HTTP/1.1":
        return 1
    return 0 if version == b"HTTP/1.0" else -1


class ClientConnection(asyncio.Protocol, ClientSide, Connection):
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
        self._read = b""  # the read being parsed
        self._read_starts_message = False  # no message was in progress when it arrived
        self._line_in_read = False  # the message being parsed began with this read: its request line starts it
        self.gate = ReadGate()
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
        self._send: Callable[[bytes], None] = not_connected

    # --- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self._send = self.transport.write  # bound once: see UpstreamConnection._send
        self.gate.transport = self.transport
        peer = self.transport.get_extra_info("peername")
        self.peer_ip = str(peer[0]).encode() if peer else b"unknown"
        self.state.connections.add(self)
        self._set_deadline("header", self.state.settings.client_header_timeout_s)

    def eof_received(self) -> bool | None:
        """The client half-closed: it sends nothing more but may still read. Answer what it asked (a request
        cut short gets 400), then close; keeping the write side open is what returning True asks for.

        Except while its request is held for a wake: a FIN cannot tell a half-close from a client that left, and
        a wake may take minutes, so the request gives up its place in the queue (HAProxy's `abortonclose` for
        queued requests; Nginx treats any FIN before the answer so): the connection closes, logged 499."""
        if self._tunnel is not None or self._closing:
            return None
        if self._active is not None and self._active.phase == HELD:
            return None  # the transport closes; connection_lost abandons the held request and any behind it
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
        self.gate.transport = None
        self.state.connections.discard(self)
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None
        active, self._active = self._active, None
        if active is not None and active.phase < DONE:
            active.abandon()
            telemetry.record(active)
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
        if self._parsing is None or self._parsing.phase == RECEIVING_HEAD:
            self._head_pending += len(data)
        self._read = data
        self._read_starts_message = self._parsing is None
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
        parsing = self._parsing
        head_unfinished = parsing is not None and parsing.phase == RECEIVING_HEAD
        if head_unfinished and self._head_pending > self.state.settings.max_header_bytes:
            self._on_parse_error("headers_too_large")
        elif self._body_left > 0 and parsing is not None and self._parser is parser:
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
        self._write_paused_at = self.state.clock()
        target = self._relayed_from()
        if target is not None:
            target.pause_reading()
        self.pause(PAUSE_CLIENT_FULL)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._write_paused_at = 0.0
        active = self._active
        target = self._relayed_from()
        if target is not None:
            target.resume_reading()
        if active is not None:
            active.on_client_writable()
        self.resume(PAUSE_CLIENT_FULL)
        if self._queue and active is None:
            self.state.loop.call_soon(self._start_next)

    def _relayed_from(self) -> UpstreamConnection | None:
        """The backend connection whose bytes this connection is writing: the tunnel's, or the active
        exchange's."""
        if self._tunnel is not None:
            return self._tunnel
        return self._active.upstream if self._active is not None else None

    # --- httptools callbacks -------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._line_in_read = self._read_starts_message  # only the first message a read begins starts it
        self._read_starts_message = False
        self._parsing = Exchange(self, self.state)
        self._head_size = 0
        self._set_deadline("header", self.state.settings.client_header_timeout_s)

    def on_url(self, url: bytes) -> None:
        assert self._parsing is not None
        self._parsing.add_target(url)
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self._parsing is not None
        count = self._parsing.add_header(name, value)
        self._grow_head(len(name) + len(value) + 4)
        if count > self.state.settings.max_header_count:
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
        exchange.complete_head(self._parser, request_line_minor(self._read) if self._line_in_read else -1)
        if not exchange.body.complete and exchange.error is None:
            self._set_deadline("body", self.state.settings.client_body_timeout_s)
            info = exchange.info
            if info is not None and not info.chunked and info.content_length:
                self._body_left = info.content_length
        else:
            self._deadline = 0.0
        self._enqueue(exchange)

    def on_body(self, body: bytes) -> None:
        self._body_left -= len(body)
        exchange = self._parsing
        if exchange is not None:
            if self._deadline_kind == "body":
                self._deadline = self.state.clock() + self.state.settings.client_body_timeout_s
            exchange.on_request_body(body)

    def on_message_complete(self) -> None:
        self._body_left = 0
        exchange, self._parsing = self._parsing, None
        if self._deadline_kind == "body":
            self._deadline = 0.0
        if exchange is not None and not exchange.body.complete:  # a request without body is complete already
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
            dispatch.start(exchange)
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
        dispatch.start(exchange)

    def finish(self) -> None:
        """The active exchange wrote its last response byte (it is DONE): close, or go on with the next request."""
        exchange = self._active
        if exchange is None:
            return
        self._active = None
        state = self.state
        telemetry.record(exchange)
        if self.gate.reasons:
            self.resume(PAUSE_UPSTREAM_FULL | PAUSE_NO_UPSTREAM)
        nothing_more_to_read = self._parser is None and not self._queue
        draining_and_idle = state.draining and not self._queue
        if exchange.close_after or self._closing or nothing_more_to_read or draining_and_idle:
            if exchange.body.complete:
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
        if exchange is not None and RECEIVING_HEAD < exchange.phase < DONE:
            if exchange is self._active:
                exchange.request_broken(code)
            else:
                exchange.refuse(code)
            return
        exchange = Exchange(self, self.state)
        exchange.refuse(code)
        self._enqueue(exchange)

    def _on_upgrade_request(self, rest: bytes) -> None:
        self._parser = None
        if rest:
            self._early_tunnel.append(rest)
        exchange = self._active if self._active is not None and self._active.wants_tunnel() else None
        if exchange is None and self._queue and self._queue[-1].wants_tunnel():
            exchange = self._queue[-1]
        if exchange is None:  # CONNECT, or an upgrade the head refused: it is answered; read nothing more
            self._lingering = True
            if self._active is None and not self._queue:
                self.close()
            return
        exchange.close_connection_after()  # if the backend declines the upgrade, this connection ends after it
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
        self._deadline = self.state.clock() + self.state.settings.tunnel_idle_timeout_s

    # --- writing and local responses -------------------------------------------------------------------------

    def cork(self) -> None:
        """Collect writes until `uncork`: one backend read (head and body, usually) becomes one send."""
        if self._corked is None:
            self._corked = []

    def uncork(self) -> None:
        corked, self._corked = self._corked, None
        if corked and self.transport is not None and not self._closing and not self._eof_sent:
            self._send(corked[0] if len(corked) == 1 else b"".join(corked))

    def write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
        elif self.transport is not None and not self._closing and not self._eof_sent:
            self._send(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self._corked is not None:
            self._corked += parts
        elif self.transport is not None and not self._closing and not self._eof_sent:
            self.transport.writelines(parts)

    # --- flow control and closing ----------------------------------------------------------------------------

    def pause(self, reason: int) -> None:
        self.gate.pause(reason)

    def resume(self, reasons: int) -> None:
        if self.gate.resume(reasons) and self._deadline_kind == "body" and self._deadline:
            self._deadline = self.state.clock() + self.state.settings.client_body_timeout_s

    def _set_deadline(self, kind: str, timeout_s: float) -> None:
        self._deadline_kind = kind
        self._deadline = self.state.clock() + timeout_s

    def check_deadlines(self, now: float) -> None:
        settings = self.state.settings
        if (self._write_paused_at and now - self._write_paused_at >= settings.client_send_timeout_s) or (
            self._closing_at and now - self._closing_at >= settings.client_send_timeout_s
        ):
            self.abort()  # the client reads nothing: what it holds (a backend, an in-flight slot) goes free
            return
        if self._active is not None:
            self._active.check_deadlines(now)  # the backend's deadlines are the exchange's
        active = self._active  # the check may have ended it
        if not self._deadline or now < self._deadline or self.gate.reasons:
            return
        kind = self._deadline_kind
        self._deadline = 0.0
        if kind in {"idle", "tunnel"} or self._lingering:
            self.close()  # an idle tunnel: connection_lost closes the backend side too
        elif kind == "header" and (self._parsing is not None or self._queue):
            self._parser = None
            self._lingering = True
            self._parsing = None
            exchange = Exchange(self, self.state)
            exchange.refuse("request_timeout")
            self._enqueue(exchange)
        elif kind == "body" and active is not None:
            active.request_broken("request_timeout")
        else:
            self.close()

    def lent_address(self) -> Address | None:
        active = self._active
        return active.address if active is not None and active.upstream is not None else None

    def active_deployment(self) -> str:
        active = self._active
        return active.deployment if active is not None else ""

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
            self.gate.transport = None
            self._closing_at = self.state.clock()  # a flush the client never takes is cut (check_deadlines)
            self.transport.close()

    def abort(self) -> None:
        self._corked = None  # a truncation: nothing more of this response may reach the client
        if self.transport is not None:
            self._closing = True
            self.gate.transport = None
            self.transport.abort()

    def __repr__(self) -> str:
        active = self._active is not None
        return f"<ClientConnection {self.peer_ip.decode()} [Active: {active} | Queued: {len(self._queue)}]>"
