"""The access log: one line per request, as JSON (the default) or as text like Nginx's combined format.

The event loop only appends a record of raw values (`AccessRecord`) to a list; a thread formats and writes
them in batches, so a slow stdout never blocks a request, and the hot path pays no formatting.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import select
import sys
import threading
import time
from typing import IO, NamedTuple


class AccessRecord(NamedTuple):
    """One access-log line's values, raw: the writer thread formats them."""

    time: float  # Unix time; written as RFC 3339 with milliseconds
    request_id: str
    trace_id: str | None  # X-Amzn-Trace-Id, as the ALB set it
    traceparent: str | None  # W3C trace context, when the client sent one
    client_ip: str  # the peer: the ALB's address behind a load balancer
    x_forwarded_for: str | None  # as received
    user_agent: str | None
    method: str
    deployment: str | None
    path: str  # without the query string: tokens live there
    status: int
    bytes_in: int  # request body bytes received
    bytes_sent: int  # response bytes sent, head included
    duration_ms: float
    upstream_addr: str | None
    upstream_reused: bool | None
    upstream_connect_ms: float | None  # None on a reused (pooled) connection
    upstream_header_ms: float | None  # request sent to response head
    dns: str | None  # hit, miss, stale, negative, busy or error
    error: str | None  # the router's error code, when it answered with one
    held_ms: float | None  # how long the request was held while its deployment woke; None when it was not


ACCESS_FIELDS = AccessRecord._fields


class AccessLog:
    """One line per request on stdout (JSON, or text), without blocking the event loop or waking it per request.

    The loop appends a tuple of raw values to a list (about 0.1 us); every `flush_s` the list is handed to a
    writer thread in one piece, and the thread formats and writes the batch. A slow stdout therefore never
    blocks a request. Batches waiting for the thread are bounded: beyond MAX_QUEUED_BATCHES the oldest batch
    is dropped and counted rather than memory grown.
    """

    MAX_QUEUED_BATCHES = 64  # bounds the memory a stalled stdout can pin (with the flush interval: ~6 s)

    def __init__(self, stream: IO[str] | None = None, flush_s: float = 0.1, *, text: bool = False) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._format = format_text if text else format_json
        self._flush_s = flush_s
        self._pending: list[AccessRecord] = []
        self._batches: queue.Queue[list[AccessRecord] | None] = queue.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def write(self, record: AccessRecord) -> None:
        self._pending.append(record)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._flush_s, self.flush)

    def flush(self) -> None:
        self._timer = None
        if self._pending:
            if self._batches.qsize() >= self.MAX_QUEUED_BATCHES:
                self.dropped += len(self._pending)
            else:
                self._batches.put(self._pending)
            self._pending = []

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        self._batches.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        second, stamp = -1, ""
        while (batch := self._batches.get()) is not None:
            lines = []
            for record in batch:
                now = int(record.time)
                if now != second:  # RFC 3339 in UTC, the milliseconds added per line
                    second, stamp = now, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                lines.append(self._format(f"{stamp}.{int(record.time % 1 * 1000):03d}Z", record))
            self._emit(lines)

    def _emit(self, lines: list[str]) -> None:
        """Write whole lines in writes of at most PIPE_BUF bytes: with --workers several processes share
        stdout, and the kernel keeps only such writes to a pipe from interleaving mid-line."""
        try:
            fd = self._stream.fileno()
        except (AttributeError, OSError, ValueError):  # not a real file (tests pass a StringIO)
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
            return
        self._stream.flush()
        chunk: list[bytes] = []
        size = 0
        for line in lines:
            encoded = line.encode() + b"\n"
            if chunk and size + len(encoded) > select.PIPE_BUF:
                _write_all(fd, b"".join(chunk))
                chunk, size = [], 0
            chunk.append(encoded)
            size += len(encoded)
        if chunk:
            _write_all(fd, b"".join(chunk))


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# Fields that can hold arbitrary characters (what a client or backend sent, and the path) go through the JSON
# string encoder (C); the rest are validated tokens and numbers, plain %-formatting: a few microseconds a line,
# which matters because formatting holds the GIL the event loop needs.
_JSON_TEMPLATE = (
    '{"time":"%s","type":"access","request_id":"%s","trace_id":%s,"traceparent":%s,"client_ip":"%s",'
    '"x_forwarded_for":%s,"user_agent":%s,"method":"%s","deployment":%s,"path":%s,"status":%d,"bytes_in":%d,'
    '"bytes_sent":%d,"duration_ms":%s,"upstream_addr":%s,"upstream_reused":%s,"upstream_connect_ms":%s,'
    '"upstream_header_ms":%s,"dns":%s,"error":%s,"held_ms":%s}'
)
_encode_string = json.encoder.encode_basestring_ascii


def _token(value: object) -> str:
    return "null" if value is None else f'"{value}"'


def _string(value: str | None) -> str:
    return "null" if value is None else _encode_string(value)


def _number(value: float | None) -> str:
    return "null" if value is None else str(value)


def format_json(stamp: str, r: AccessRecord) -> str:
    return _JSON_TEMPLATE % (
        stamp, r.request_id, _string(r.trace_id), _string(r.traceparent), r.client_ip, _string(r.x_forwarded_for),
        _string(r.user_agent), r.method, _token(r.deployment), _encode_string(r.path), r.status, r.bytes_in,
        r.bytes_sent, r.duration_ms, _token(r.upstream_addr),
        "null" if r.upstream_reused is None else ("true" if r.upstream_reused else "false"),
        _number(r.upstream_connect_ms), _number(r.upstream_header_ms), _token(r.dns), _token(r.error),
        _number(r.held_ms),
    )  # fmt: skip


def format_text(stamp: str, r: AccessRecord) -> str:
    """Nginx's combined format, then the router's own fields as key=value (`-` for none)."""
    agent = _encode_string(r.user_agent or "-")  # quoted, and no control character reaches the terminal
    request = _encode_string(f"{r.method} {r.path}")
    extra = (
        f"rt={r.duration_ms} deployment={r.deployment or '-'} upstream={r.upstream_addr or '-'} "
        f"uct={_dash(r.upstream_connect_ms)} uht={_dash(r.upstream_header_ms)} dns={r.dns or '-'} "
        f"error={r.error or '-'} held={_dash(r.held_ms)} request_id={r.request_id}"
    )
    return f'{r.client_ip} - - [{stamp}] {request} {r.status} {r.bytes_sent} "-" {agent} {extra}'


def _dash(value: float | None) -> str:
    return "-" if value is None else str(value)
