"""Where a request goes: route its target, answer what the router answers itself (/health, redirects, errors),
look the deployment up, admit it past the per-deployment limits, and hand it a backend connection.

The common case (DNS answer cached, idle pooled connection) stays synchronous, inside the client's parser
callback; a cache miss or a new connection continues in one task per request.
"""

from __future__ import annotations

import logging
import math
from typing import Final

from router.discovery.cache import Address, Entry, EntryKind
from router.errors import RouterError
from router.limits import Refusal
from router.proxy.exchange import Exchange
from router.proxy.route import RouteKind, parse_target

log = logging.getLogger("router.proxy")

HEALTHY: Final = b'{"status":"healthy"}'
DRAINING: Final = b'{"status":"draining"}'


def start(exchange: Exchange) -> None:
    """Start the active exchange of a client connection."""
    state = exchange.state
    state.inflight += 1
    if exchange.error is not None:
        exchange.respond_error(exchange.error)
        return
    kind, deployment, target = parse_target(exchange.target)
    if kind is RouteKind.PROXY:
        exchange.deployment = deployment or ""
        exchange.upstream_target = target
        _start_proxy(exchange)
    elif kind is RouteKind.HEALTH:  # the load balancer's probe, not a request of any deployment
        exchange.counted = False
        exchange.respond_local(503, DRAINING) if state.draining else exchange.respond_local(200, HEALTHY)
    elif kind is RouteKind.REDIRECT:
        exchange.deployment = deployment or ""
        exchange.respond_local(308, b"", b"Location: " + target + b"\r\n")
    elif kind is RouteKind.INVALID_ID:
        exchange.respond_error("invalid_deployment_id")
    else:
        exchange.respond_error("not_found")


def _start_proxy(exchange: Exchange) -> None:
    state = exchange.state
    now = state.clock()
    entry = state.discovery.cached(exchange.deployment, now)
    address: Address | None = None
    if entry is not None:
        _note_dns(exchange, entry, "hit")
    if entry is not None and entry.kind is EntryKind.POSITIVE:
        if state.limits.enabled and not _admit(exchange, now):
            return
        connector = state.connector
        address = connector.balancer.pick(entry, now)
        upstream = connector.take_idle(address, now)
        if upstream is not None:
            exchange.attach(upstream, address, reused=True)
            return
    exchange.task = state.loop.create_task(_resolve_and_connect(exchange, entry, address))


async def _resolve_and_connect(exchange: Exchange, entry: Entry | None, address: Address | None) -> None:
    state = exchange.state
    try:
        if entry is None:
            try:
                entry = await state.discovery.resolve(exchange.deployment)
            except RouterError as error:
                _note_dns(exchange, None, "busy" if error.code == "resolver_busy" else "error")
                raise
            _note_dns(exchange, entry, "miss")
            if entry.kind is EntryKind.POSITIVE and state.limits.enabled and not _admit(exchange, state.clock()):
                return
        if entry.kind is EntryKind.NEGATIVE:
            raise RouterError("deployment_not_found")
        if entry.kind is EntryKind.FORBIDDEN:
            raise RouterError("upstream_forbidden")
        await exchange.borrow(entry, address)
    except RouterError as error:
        if not exchange.finished:
            exchange.respond_error(error.code)
    except Exception:  # a bug: answer it like one, and keep serving the other requests
        log.exception("unexpected error while proxying", extra={"deployment": exchange.deployment})
        if not exchange.finished:
            exchange.respond_error("internal_error")
    finally:
        exchange.task = None


def _note_dns(exchange: Exchange, entry: Entry | None, result: str) -> None:
    """The lookup outcome of this request, for the access log and whaleray_dns_lookups_total."""
    if entry is not None:
        if entry.kind is not EntryKind.POSITIVE:
            result = "negative"
        elif entry.stale:
            result = "stale"
        exchange.resolved = entry.kind is EntryKind.POSITIVE
    exchange.dns_result = result
    exchange.state.metrics.dns_lookups[result] += 1


def _admit(exchange: Exchange, now: float) -> bool:
    """The per-deployment limits (router/limits.py); a refusal is answered here."""
    state = exchange.state
    verdict = state.limits.admit(exchange.deployment, now)
    if verdict.refusal is None:
        exchange.admitted = state.limits.max_inflight > 0
        return True
    state.metrics.rejection(state.metrics.label(exchange.deployment, True), verdict.refusal.value)
    if verdict.refusal is Refusal.RATE:
        exchange.respond_error("rate_limited", b"Retry-After: %d\r\n" % max(1, math.ceil(verdict.retry_after_s)))
    else:
        exchange.respond_error("deployment_overloaded")
    return False
