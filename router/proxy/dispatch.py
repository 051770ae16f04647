"""Where a request goes: route its target, answer what the router answers itself (/health, redirects, errors),
look the deployment up, admit it past the per-deployment limits, and have the exchange acquire a backend
connection. It decides and calls the exchange's methods; it writes none of the exchange's fields.

The common case (DNS answer cached, idle pooled connection) stays synchronous, inside the client's parser
callback; a cache miss continues in the exchange's task, and so does a request held while its sleeping
deployment wakes (an NXDOMAIN for a deployment the waker's catalogue lists).
"""

from __future__ import annotations

import math

from router.discovery.cache import Entry, EntryKind
from router.errors import RouterError
from router.limits import Refusal
from router.proxy.exchange import Exchange
from router.proxy.route import RouteKind, parse_target


def start(exchange: Exchange) -> None:
    """Start the active exchange of a client connection."""
    if not exchange.begin():
        return
    kind, deployment, target = parse_target(exchange.target)
    if kind is RouteKind.PROXY:
        exchange.route_to(deployment or "", target)
        _start_proxy(exchange)
    elif kind is RouteKind.HEALTH:
        exchange.respond_health()
    elif kind is RouteKind.REDIRECT:
        exchange.route_to(deployment or "", b"")
        exchange.respond_local(308, b"", b"Location: " + target + b"\r\n")
    elif kind is RouteKind.INVALID_ID:
        exchange.respond_error("invalid_deployment_id")
    else:
        exchange.respond_error("not_found")


def _start_proxy(exchange: Exchange) -> None:
    state = exchange.state
    now = state.clock()
    entry = state.discovery.cached(exchange.deployment, now)
    if entry is None:
        exchange.run(_resolve_then_acquire(exchange))
        return
    _note_dns(exchange, entry, "hit")
    _proceed(exchange, entry, now)


async def _resolve_then_acquire(exchange: Exchange) -> None:
    state = exchange.state
    try:
        entry = await state.discovery.resolve(exchange.deployment)
    except RouterError as error:
        exchange.note_dns("busy" if error.code == "resolver_busy" else "error", False)
        raise
    _note_dns(exchange, entry, "miss")
    _proceed(exchange, entry, state.clock())


async def _wake_then_acquire(exchange: Exchange) -> None:
    """Hold the request while its deployment wakes, then route it like any other."""
    state = exchange.state
    waker = state.waker
    assert waker is not None
    exchange.hold_for_wake()
    entry = await waker.hold(exchange.deployment)  # RouterError (queue full, timeout...): the task answers it
    exchange.woke()
    _proceed(exchange, entry, state.clock())


def _proceed(exchange: Exchange, entry: Entry, now: float) -> None:
    """An answer is at hand: refuse what it refuses, admit, pick an address, acquire a connection."""
    if entry.kind is EntryKind.NEGATIVE:
        waker = exchange.state.waker
        if waker is not None and waker.may_wake(exchange.deployment):  # asleep, perhaps: the waker finds out
            exchange.run(_wake_then_acquire(exchange))
        else:
            exchange.respond_error("deployment_not_found")
        return
    if entry.kind is EntryKind.FORBIDDEN:
        exchange.respond_error("upstream_forbidden")
        return
    state = exchange.state
    if state.limits.enabled and not _admit(exchange, now):
        return
    exchange.acquire(entry, state.connector.balancer.pick(entry, now))


def _note_dns(exchange: Exchange, entry: Entry, result: str) -> None:
    if entry.kind is not EntryKind.POSITIVE:
        result = "negative"
    elif entry.stale:
        result = "stale"
    exchange.note_dns(result, entry.kind is EntryKind.POSITIVE)


def _admit(exchange: Exchange, now: float) -> bool:
    """The per-deployment limits (router/limits.py); a refusal is answered here."""
    state = exchange.state
    verdict = state.limits.admit(exchange.deployment, now)
    if verdict.refusal is None:
        if state.limits.max_inflight > 0:
            exchange.hold_slot()
        return True
    state.metrics.rejection(state.metrics.label(exchange.deployment, True), verdict.refusal.value)
    if verdict.refusal is Refusal.RATE:
        exchange.respond_error("rate_limited", b"Retry-After: %d\r\n" % max(1, math.ceil(verdict.retry_after_s)))
    else:
        exchange.respond_error("deployment_overloaded")
    return False
