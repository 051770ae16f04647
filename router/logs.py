"""Logging set-up: one JSON object per line on stdout (CloudWatch Logs reads it as is), or text for humans.

Fields passed with `extra={...}` become top-level keys of the JSON line.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import logging.handlers
import os
import queue
import select
import sys
import threading
import time
from typing import IO, NamedTuple

_STANDARD_FIELDS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_FIELDS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{key}={value}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD_FIELDS and not key.startswith("_")
        )
        text = f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname:<7} {record.name}: "
        text += record.getMessage() + (f" [{extras}]" if extras else "")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the listener thread; when the queue is full (stdout stalled), drops them."""

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            DroppingQueueHandler.dropped += 1


_listener: logging.handlers.QueueListener | None = None
MAX_QUEUED_RECORDS = 10_000  # bounds the memory a stalled stdout can pin


def setup_logging(level: str, log_format: str) -> None:
    """Log records are formatted and written by a thread: a stalled stdout (a log driver that stops reading)
    never blocks the event loop; past MAX_QUEUED_RECORDS records are dropped instead."""
    global _listener  # noqa: PLW0603 - one listener per process, replaced when logging is set up again
    if _listener is not None:
        _listener.stop()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    records: queue.Queue[logging.LogRecord] = queue.Queue(MAX_QUEUED_RECORDS)
    _listener = logging.handlers.QueueListener(records, handler)
    _listener.start()
    atexit.register(_listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [DroppingQueueHandler(records)]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class AccessRecord(NamedTuple):
    """One access-log line's values, raw: the writer thread formats them (format_access)."""

    time: float  # Unix time
    request_id: str
    trace_id: str | None
    client_ip: str
    method: str
    deployment: str | None
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    duration_ms: float
    upstream: str | None
    upstream_reused: bool | None
    dns: str | None
    error: str | None


ACCESS_FIELDS = AccessRecord._fields


class AccessLog:
    """One JSON line per request on stdout, without blocking the event loop and without a wake-up per request.

    The loop appends a tuple of raw values to a list (about 0.1 us); every `flush_s` the list is handed to a
    writer thread in one piece, and the thread formats and writes the batch. A slow stdout therefore never
    blocks a request. Batches waiting for the thread are bounded: beyond MAX_QUEUED_BATCHES the oldest batch
    is dropped and counted rather than memory grown.
    """

    MAX_QUEUED_BATCHES = 64  # bounds the memory a stalled stdout can pin (with the flush interval: ~6 s)

    def __init__(self, stream: IO[str] | None = None, flush_s: float = 0.1) -> None:
        self._stream = stream if stream is not None else sys.stdout
        self._flush_s = flush_s
        self._pending: list[AccessRecord] = []
        self._batches: queue.Queue[list[AccessRecord] | None] = queue.Queue()
        self._timer: asyncio.TimerHandle | None = None
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def write(self, values: AccessRecord) -> None:
        """`values` in the order of ACCESS_FIELDS, `time` as a Unix timestamp."""
        self._pending.append(values)
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
                if now != second:
                    second, stamp = now, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
                lines.append(format_access(stamp, record))
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


# Only `trace_id` and `path` can hold arbitrary characters (ids, methods, addresses and codes are validated
# tokens), so only they go through the JSON string encoder (C); the rest is plain %-formatting: a few
# microseconds a line, which matters because formatting holds the GIL the event loop needs.
_ACCESS_TEMPLATE = (
    '{"time":"%s","type":"access","request_id":"%s","trace_id":%s,"client_ip":"%s","method":"%s",'
    '"deployment":%s,"path":%s,"status":%d,"bytes_in":%d,"bytes_out":%d,"duration_ms":%s,"upstream":%s,'
    '"upstream_reused":%s,"dns":%s,"error":%s}'
)
_encode_string = json.encoder.encode_basestring_ascii


def _token(value: object) -> str:
    return "null" if value is None else f'"{value}"'


def format_access(stamp: str, record: AccessRecord) -> str:
    r = record
    return _ACCESS_TEMPLATE % (
        stamp,
        r.request_id,
        "null" if r.trace_id is None else _encode_string(r.trace_id),
        r.client_ip,
        r.method,
        _token(r.deployment),
        _encode_string(r.path),
        r.status,
        r.bytes_in,
        r.bytes_out,
        r.duration_ms,
        _token(r.upstream),
        "null" if r.upstream_reused is None else ("true" if r.upstream_reused else "false"),
        _token(r.dns),
        _token(r.error),
    )
