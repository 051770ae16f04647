"""The backend side of a proxied request: one `asyncio.Protocol` per pooled keep-alive connection.

The connection parses responses with httptools (llhttp) and hands every event to the exchange it is lent to
(a `ResponseSink`); it knows nothing of clients. Once a head with a `Content-Length` is parsed, the rest of
that body is relayed as the bytes arrive, past the parser (which would copy every chunk into a new bytes
object and call back for it): the length is all there is to know.

A backend is a tenant and as untrusted as a client, so this side holds the same rules as the request side:
- A response head is bounded in bytes and lines (1xx heads count toward it); so are the bytes between body
  pieces (chunk extensions, trailers). Over either, the response is a bad one.
- Trailers are read and dropped: the router already sent the head they would belong to.
- A connection is reusable only between messages: a byte after a complete response (in the same read, or
  while the connection sits idle in the pool) closes it, so nothing a backend sends ahead can become the
  answer to another client's request.
- Every failure closes the socket here, before the exchange hears of it: no error path leaves one open.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from router.discovery.cache import Address


class UpstreamFailure(enum.Enum):
    """Why a borrowed backend connection ended before its response did."""

    LOST = "lost"  # closed or reset by the backend
    BAD_RESPONSE = "bad_response"  # not HTTP, or over a limit


class ResponseSink(Protocol):
    """What an exchange must accept from the backend connection it borrowed."""

    def on_response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> int | None:
        """Returns the body's length when it is framed by Content-Length (and will be read), else None."""

    def on_response_body(self, data: bytes) -> None: ...
    def on_response_complete(self) -> None: ...
    def on_tunnel_data(self, data: bytes) -> None: ...
    def on_upstream_failure(self, kind: UpstreamFailure) -> None: ...
    def on_upstream_write_paused(self, paused: bool) -> None: ...
    def begin_read(self) -> None: ...
    def end_read(self) -> None: ...


class _PastTheEnd(Exception):
    """Raised from a parser callback to stop llhttp at a byte after the complete response."""


class _OverLimit(Exception):
    """Raised from a parser callback when the response head (or a trailer section) grows over its limit."""


def _head_size(headers: list[tuple[bytes, bytes]]) -> int:
    return sum(len(name) + len(value) + 4 for name, value in headers)


def not_connected(data: bytes) -> None:
    """A protocol's write before its connection is made: a bug."""
    raise RuntimeError("write before the connection was made")


def _no_transport() -> bool:
    return True  # not connected yet: not usable


class UpstreamConnection(asyncio.Protocol):
    """A backend connection; `sink` is set while an exchange borrows it and None while idle in the pool."""

    __slots__ = (
        "connect_s",
        "address",
        "transport",
        "sink",
        "requests_served",
        "_parser",
        "_send",
        "_transport_closing",
        "_reason",
        "_headers",
        "_status",
        "_skip_body",
        "_tunnel",
        "_received_any",
        "_body_left",
        "_raw_body",
        "_keep_alive",
        "_on_idle_lost",
        "_closed",
        "_max_head_bytes",
        "_max_head_lines",
        "_head_done",
        "_trailer_bytes",
        "_fed_while_head",
        "_body_seen",
        "_unframed",
        "_complete",
        "_past_end",
    )

    def __init__(
        self,
        address: Address,
        on_idle_lost: Callable[[UpstreamConnection], None],
        *,
        max_head_bytes: int = 64 * 1024,
        max_head_lines: int = 200,
    ) -> None:
        self.address = address
        self.connect_s = 0.0  # how long opening it took (connector.py sets it): for the access log
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.requests_served = 0
        self._on_idle_lost = on_idle_lost
        self._max_head_bytes = max_head_bytes
        self._max_head_lines = max_head_lines
        self._parser = httptools.HttpResponseParser(self)
        # The transport's methods bound once (it never changes): calls by name on a C type look the method up
        # every time.
        self._send: Callable[[bytes], None] = not_connected
        self._transport_closing: Callable[[], bool] = _no_transport
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._status = 0
        self._skip_body = False
        self._tunnel = False
        self._received_any = False
        self._body_left = 0  # bytes of a Content-Length body still to come
        self._raw_body = False  # relaying those bytes past the parser
        self._keep_alive = True
        self._closed = False
        self._complete = False  # the response is complete: anything the parser meets now is past its end
        self._past_end = False  # something came after the end: the connection is never reused
        self._head_done = False  # the final (non-1xx) head of the current response was parsed
        self._fed_while_head = 0  # bytes fed to the parser before that head was complete (1xx heads too)
        self._trailer_bytes = 0  # trailer lines read (and dropped) after it
        self._body_seen = 0  # body bytes the parser delivered: progress, for the unframed-bytes bound
        self._unframed = 0  # bytes fed since the last body byte (chunk framing, extensions, trailers)

    # --- lending -------------------------------------------------------------------------------------------

    def is_usable(self) -> bool:
        return not self._closed and not self._transport_closing()

    def lend(self, sink: ResponseSink, head_request: bool) -> None:
        self.sink = sink
        self._skip_body = head_request
        self._received_any = False
        self._head_done = False
        self._fed_while_head = self._trailer_bytes = self._body_seen = self._unframed = 0

    @property
    def received_any(self) -> bool:
        """Whether any byte of the current response arrived: before that, a failure may be retried."""
        return self._received_any

    def write(self, data: bytes) -> None:
        self._send(data)

    def writelines(self, parts: list[bytes]) -> None:
        assert self.transport is not None
        # uvloop's writelines costs about twice a write for one small part.
        if len(parts) == 1:
            self._send(parts[0])
        else:
            self.transport.writelines(parts)

    def pause_reading(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.resume_reading()

    def close(self) -> None:
        """Close now (abort): used for expiry, errors and unfinished responses, never to end a good one."""
        self.sink = None
        if not self._closed:
            self._closed = True
            if self.transport is not None:
                self.transport.abort()

    # --- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self._send = self.transport.write
        self._transport_closing = self.transport.is_closing

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # bytes while idle: the backend broke the protocol (or closes); never reuse it
            self.close()
            self._on_idle_lost(self)
            return
        self._received_any = True
        if self._raw_body:
            self._relay_body(sink, data)
            return
        if self._tunnel:
            sink.on_tunnel_data(data)
            return
        head_was_done, body_before = self._head_done, self._body_seen
        if not head_was_done:
            self._fed_while_head += len(data)
        sink.begin_read()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._tunnel = True
            rest = data[upgrade.args[0] :]
            if rest and self.sink is not None:
                self.sink.on_tunnel_data(rest)
        except httptools.HttpParserError:
            if self.sink is sink:  # else the exchange gave the connection up (and closed it) meanwhile
                if self._complete:
                    self._past_end = True  # the parser stopped at a byte past the end of a complete response
                    self._end_response()
                else:
                    self._fail(sink, UpstreamFailure.BAD_RESPONSE)
        else:
            if self._complete:
                self._end_response()
            elif self.sink is sink:
                self._check_progress(sink, data, head_was_done, body_before)
        finally:
            sink.end_read()

    def _check_progress(self, sink: ResponseSink, data: bytes, head_was_done: bool, body_before: int) -> None:
        """After a read that did not end the response: bound what is not body, or start relaying past llhttp."""
        if not self._head_done:
            if self._fed_while_head > self._max_head_bytes:  # one endless line never reaches on_header
                self._fail(sink, UpstreamFailure.BAD_RESPONSE)
        elif head_was_done and self._body_seen == body_before:
            self._unframed += len(data)
            if self._unframed > self._max_head_bytes:  # endless chunk extensions or trailers
                self._fail(sink, UpstreamFailure.BAD_RESPONSE)
        else:
            self._unframed = 0
            if self._body_left > 0:
                self._raw_body = True  # the head is parsed and part of the body still to come: skip the parser

    def _fail(self, sink: ResponseSink, kind: UpstreamFailure) -> None:
        self.close()
        sink.on_upstream_failure(kind)

    def _end_response(self) -> None:
        """The response is complete: hand the connection back (never to the pool if anything came after it)."""
        if self._skip_body:  # a response to HEAD announces a body it does not send; llhttp cannot be told
            self._parser = httptools.HttpResponseParser(self)
        self._complete = False
        sink, self.sink = self.sink, None
        self.requests_served += 1
        if sink is not None:
            sink.on_response_complete()

    def _relay_body(self, sink: ResponseSink, data: bytes) -> None:
        left = self._body_left
        if len(data) < left:
            self._body_left = left - len(data)
            sink.on_response_body(data)
            return
        past_end = len(data) > left
        self._body_left = 0
        self._raw_body = False
        self._parser = httptools.HttpResponseParser(self)  # the old one still waits for the body it never saw
        sink.on_response_body(data[:left] if past_end else data)
        if self.sink is not sink:  # the exchange gave up the connection meanwhile
            return
        self._past_end = past_end
        self._end_response()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_upstream_failure(UpstreamFailure.LOST)
        else:
            self._on_idle_lost(self)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.on_upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.on_upstream_write_paused(False)

    # --- httptools callbacks -------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        # The one callback llhttp makes at the first byte of a next message, even when that read ends before
        # its status line: the only way to know the parser left "between messages".
        if self._complete:
            self._past_end = True
            raise _PastTheEnd

    def on_status(self, reason: bytes) -> None:
        # llhttp calls back with each piece of the reason phrase a read holds: one phrase can come in several
        # (bounded with the rest of the head by _fed_while_head).
        self._reason = self._reason + reason if self._reason else reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._head_done:
            self._headers.append((name, value))
            return
        # A trailer: read and dropped (its head went out already), and bounded like the head.
        self._trailer_bytes += len(name) + len(value) + 4
        if self._trailer_bytes > self._max_head_bytes:
            raise _OverLimit

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self._status = status
        headers, self._headers = self._headers, []
        if len(headers) > self._max_head_lines or (
            # What was fed bounds the head from above: its exact size is needed only past the limit.
            self._fed_while_head > self._max_head_bytes and _head_size(headers) > self._max_head_bytes
        ):
            raise _OverLimit
        sink = self.sink
        if sink is None:
            return
        if status >= 200:
            self._head_done = True
            self._keep_alive = self._parser.should_keep_alive()
        reason, self._reason = self._reason, b""  # a 1xx head comes before the final one
        length = sink.on_response_head(status, reason, headers)
        if length:
            self._body_left = length
        if self._skip_body and status >= 200:
            self._complete = True

    def on_body(self, body: bytes) -> None:
        if self._complete:  # a body after a response to HEAD, or after the end
            self._past_end = True
            raise _PastTheEnd
        if self.sink is not None:
            self._body_left -= len(body)
            self._body_seen += len(body)
            self.sink.on_response_body(body)

    def on_chunk_header(self) -> None:
        if self._complete:  # chunks after a response to HEAD
            self._past_end = True
            raise _PastTheEnd

    def on_message_complete(self) -> None:
        self._body_left = 0
        if self._status >= 200:  # not an informational head; after HEAD, llhttp's own end of it
            self._complete = True

    def response_keeps_alive(self) -> bool:
        """Whether another request may follow on this connection after the response just read."""
        return not self._closed and not self._tunnel and not self._past_end and self._keep_alive

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("lent" if self.sink is not None else "idle")
        return f"<UpstreamConnection {self.address[0]}:{self.address[1]} {state} served={self.requests_served}>"
