"""What a finished exchange leaves behind: its request metrics, its limit slot given back, its access-log line."""

from __future__ import annotations

import time

from router.access_log import AccessRecord
from router.proxy.exchange import Exchange


def record(exchange: Exchange, status: int) -> None:
    """Count a finished (or abandoned) exchange, release its limit slot, and log it."""
    state = exchange.state
    duration = time.perf_counter() - exchange.started_at
    if exchange.counted:
        state.metrics.request(state.metrics.label(exchange.deployment, exchange.resolved), status, duration)
    if exchange.admitted:
        exchange.admitted = False
        state.limits.release(exchange.deployment)
    if state.access_log is not None:
        state.access_log.write(access_record(exchange, status, duration))


def access_record(exchange: Exchange, status: int, duration_s: float) -> AccessRecord:
    """The access-log values of one request, formatted off the loop. The path is logged without its query
    string (tokens live there)."""
    info = exchange.info
    address = exchange.address
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
        status=status,
        bytes_in=exchange.body_received,
        bytes_sent=exchange.bytes_out,
        duration_ms=round(duration_s * 1000, 3),
        upstream_addr=f"{address[0]}:{address[1]}" if address else None,
        upstream_reused=exchange.reused if address else None,
        upstream_connect_ms=round(exchange.connect_s * 1000, 3) if address and not exchange.reused else None,
        upstream_header_ms=round(exchange.header_s * 1000, 3) if exchange.header_s else None,
        dns=exchange.dns_result or None,
        error=exchange.error_code or None,
    )
