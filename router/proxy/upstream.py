"""The backend side of a proxied request: one `asyncio.Protocol` per pooled keep-alive connection.

The connection parses responses with httptools (llhttp) and hands every event to the exchange it is lent to
(a `ResponseSink`); it knows nothing of clients. Once a head with a `Content-Length` is parsed, the rest of
that body is relayed as the bytes arrive, past the parser (which would copy every chunk into a new bytes
object and call back for it): the length is all there is to know. Between exchanges it sits idle in the pool:
any byte or close from the backend while idle makes it unusable, so the pool never lends out a dead socket
knowingly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from router.proxy.pool import Address


class ResponseSink(Protocol):
    """What an exchange must accept from the backend connection it borrowed."""

    def on_response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> int | None:
        """Returns the body's length when it is framed by Content-Length (and will be read), else None."""

    def on_response_body(self, data: bytes) -> None: ...
    def on_response_complete(self) -> None: ...
    def on_tunnel_data(self, data: bytes) -> None: ...
    def on_upstream_failure(self, kind: str) -> None: ...
    def on_upstream_write_paused(self, paused: bool) -> None: ...
    def begin_read(self) -> None: ...
    def end_read(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """A backend connection; `sink` is set while an exchange borrows it and None while idle in the pool."""

    __slots__ = (
        "address",
        "transport",
        "sink",
        "requests_served",
        "_parser",
        "_reason",
        "_headers",
        "_status",
        "_skip_body",
        "_replace_parser",
        "_tunnel",
        "_received_any",
        "_body_left",
        "_raw_body",
        "_keep_alive",
        "_relayed",
        "_on_idle_lost",
        "_closed",
    )

    def __init__(self, address: Address, on_idle_lost: Callable[[UpstreamConnection], None]) -> None:
        self.address = address
        self.transport: asyncio.Transport | None = None
        self.sink: ResponseSink | None = None
        self.requests_served = 0
        self._on_idle_lost = on_idle_lost
        self._parser = httptools.HttpResponseParser(self)
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._status = 0
        self._skip_body = False
        self._replace_parser = False
        self._tunnel = False
        self._received_any = False
        self._body_left = 0  # bytes of a Content-Length body still to come
        self._raw_body = False  # relaying those bytes past the parser
        self._keep_alive = True
        self._relayed = False
        self._closed = False

    # --- lending -------------------------------------------------------------------------------------------

    def is_usable(self) -> bool:
        return not self._closed and self.transport is not None and not self.transport.is_closing()

    def lend(self, sink: ResponseSink, head_request: bool) -> None:
        self.sink = sink
        self._skip_body = head_request
        self._received_any = False
        self._relayed = False

    @property
    def received_any(self) -> bool:
        """Whether any byte of the current response arrived: before that, a failure may be retried."""
        return self._received_any

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        assert self.transport is not None
        # uvloop's writelines costs about twice a write for one small part: join small batches instead.
        if len(parts) == 1:
            self.transport.write(parts[0])
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
        self._closed = True
        if self.transport is not None:
            self.transport.abort()

    # --- asyncio.Protocol ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

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
        sink.begin_read()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._tunnel = True
            rest = data[upgrade.args[0] :]
            if rest and self.sink is not None:
                self.sink.on_tunnel_data(rest)
        except httptools.HttpParserError:
            self.sink = None
            self._closed = True
            sink.on_upstream_failure("bad_response")
        finally:
            sink.end_read()
        if self._replace_parser:
            # A response to HEAD announces a body it does not send; llhttp cannot be told, so start afresh.
            self._replace_parser = False
            self._parser = httptools.HttpResponseParser(self)
        elif self._body_left > 0 and self.sink is not None:
            self._raw_body = True  # the head is parsed and part of the body still to come: skip the parser

    def _relay_body(self, sink: ResponseSink, data: bytes) -> None:
        left = self._body_left
        if len(data) < left:
            self._body_left = left - len(data)
            sink.on_response_body(data)
            return
        rest = data[left:] if len(data) > left else b""
        self._body_left = 0
        self._raw_body = False
        self._relayed = True
        self._parser = httptools.HttpResponseParser(self)  # the old one still waits for the body it never saw
        sink.on_response_body(data[:left] if rest else data)
        if self.sink is None:  # the exchange gave up the connection meanwhile
            return
        self._finish()
        if rest:  # bytes past the end of the response: the backend broke the protocol; never reuse it
            self.close()
            self._on_idle_lost(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_upstream_failure("lost")
        else:
            self._on_idle_lost(self)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.on_upstream_write_paused(True)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.on_upstream_write_paused(False)

    # --- httptools callbacks -------------------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self._reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self._status = status
        headers, self._headers = self._headers, []
        if self.sink is None:
            return
        length = self.sink.on_response_head(status, self._reason, headers)
        if length:
            self._body_left = length
            self._keep_alive = self._parser.should_keep_alive()
        if self._skip_body and status >= 200 and self.sink is not None:
            self._replace_parser = True
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and not self._replace_parser:
            self._body_left -= len(body)
            self.sink.on_response_body(body)

    def on_message_complete(self) -> None:
        self._body_left = 0
        if self._status < 200 or self._replace_parser:  # an informational head, or HEAD already finished
            return
        self._finish()

    def _finish(self) -> None:
        sink, self.sink = self.sink, None
        self.requests_served += 1
        if sink is not None:
            sink.on_response_complete()

    def response_keeps_alive(self) -> bool:
        """Whether the backend allows another request on this connection after the response just read."""
        if self._closed or self._tunnel:
            return False
        # After a body relayed past the parser, the parser is a fresh one: what the head said counts.
        return self._keep_alive if self._relayed else self._parser.should_keep_alive()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("lent" if self.sink is not None else "idle")
        return f"<UpstreamConnection {self.address[0]}:{self.address[1]} {state} served={self.requests_served}>"
