"""The backend side of a proxied request: one `asyncio.Protocol` per pooled keep-alive connection.

The connection parses responses with httptools (llhttp) and hands every event to the exchange it is lent to
(a `ResponseSink`); it knows nothing of clients. Between exchanges it sits idle in the pool: any byte or close
from the backend while idle makes it unusable, so the pool never lends out a dead socket knowingly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol, cast

import httptools

from router.proxy.pool import Address


class ResponseSink(Protocol):
    """What an exchange must accept from the backend connection it borrowed."""

    def on_response_head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None: ...
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
        self._closed = False

    # --- lending -------------------------------------------------------------------------------------------

    def is_usable(self) -> bool:
        return not self._closed and self.transport is not None and not self.transport.is_closing()

    def lend(self, sink: ResponseSink, head_request: bool) -> None:
        self.sink = sink
        self._skip_body = head_request
        self._received_any = False
        self._headers = []

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
        self.sink.on_response_head(status, self._reason, headers)
        if self._skip_body and status >= 200 and self.sink is not None:
            self._replace_parser = True
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None and not self._replace_parser:
            self.sink.on_response_body(body)

    def on_message_complete(self) -> None:
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
        return not self._closed and not self._tunnel and self._parser.should_keep_alive()

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("lent" if self.sink is not None else "idle")
        return f"<UpstreamConnection {self.address[0]}:{self.address[1]} {state} served={self.requests_served}>"
