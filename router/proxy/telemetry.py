"""What an ended exchange leaves behind: its request metrics and its access-log line, read from its record.
Nothing here changes the exchange: it gave back what it held when it ended (exchange.py, `_end`)."""

from __future__ import annotations

import time

from router.access_log import AccessRecord
from router.proxy.exchange import Exchange


def record(exchange: Exchange) -> None:
    """Count an ended (DONE or ABANDONED) exchange, and log it."""
    state = exchange.state
    record = exchange.record
    duration = time.perf_counter() - record.started_at
    if record.counted:
        state.metrics.request(state.metrics.label(exchange.deployment, record.resolved), record.status, duration)
        usage = state.usage
        if usage is not None and record.resolved:  # the idle signal of sleeping deployments (router/wake/idle.py)
            usage[exchange.deployment] = usage.get(exchange.deployment, 0) + 1
    if state.access_log is not None:
        state.access_log.write(access_record(exchange, duration))


def access_record(exchange: Exchange, duration_s: float) -> AccessRecord:
    """The access-log values of one request, formatted off the loop. The path is logged without its query
    string (tokens live there)."""
    info = exchange.info
    address = exchange.address
    record = exchange.record
    user_agent = traceparent = None
    for name, value in exchange.headers:  # read here, when logging, rather than on every request's hot path
        if len(name) == 10 and name.lower() == b"user-agent":
            user_agent = value.decode("latin-1")
        elif len(name) == 11 and name.lower() == b"traceparent":
            traceparent = value.decode("latin-1")
    return AccessRecord(
        time=time.time(),
        request_id=exchange.request_id.decode(),
        trace_id=info.trace_id.decode("latin-1") if info is not None and info.trace_id else None,
        traceparent=traceparent,
        client_ip=exchange.conn.peer_ip.decode(),
        x_forwarded_for=info.forwarded_for.decode("latin-1") if info is not None and info.forwarded_for else None,
        user_agent=user_agent,
        method=exchange.method.decode("latin-1"),
        deployment=exchange.deployment or None,
        path=exchange.target.split(b"?", 1)[0].decode("latin-1"),
        status=record.status,
        bytes_in=exchange.body.received,
        bytes_sent=record.bytes_out,
        duration_ms=round(duration_s * 1000, 3),
        upstream_addr=f"{address[0]}:{address[1]}" if address else None,
        upstream_reused=exchange.reused if address else None,
        upstream_connect_ms=round(record.connect_s * 1000, 3) if address and not exchange.reused else None,
        upstream_header_ms=round(record.header_s * 1000, 3) if record.header_s else None,
        dns=record.dns or None,
        error=record.error_code or None,
        held_ms=round(exchange.held_s * 1000, 3) if exchange.held_s else None,
    )
