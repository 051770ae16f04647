"""The router's view of its deployments, as JSON for the admin port's /discovery (and `whaleray-router inspect`).

What an operator asks first when one deployment returns 502: did the router resolve it, is the answer fresh or
served stale, which addresses does it hold, which of them are ejected, and how many backend connections each
has, idle and in use (HAProxy's `show servers state`, Envoy's `/clusters`). Read-only: looking changes no LRU
order and sends no query.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from router.discovery.cache import Entry, EntryKind
from router.proxy.server import ServerState

MAX_LISTED = 1000  # bounds /discovery: a platform may cache far more names than a page should carry


def deployment_view(state: ServerState, deployment: str) -> dict[str, object]:
    """`deployment`'s state: fresh, stale, negative, forbidden (resolved outside the allow-list) or missing."""
    entry = state.discovery.cache.peek(deployment)
    wake = wake_view(state, deployment, entry)
    if entry is None:
        return {"deployment": deployment, "state": "missing", "expires_in": None, "addresses": []} | wake
    now = state.loop.time()
    active = Counter(state.lent_addresses())
    connector = state.connector
    addresses = [
        {
            "address": f"{host}:{port}",
            "backup": (host, port) in entry.backup,
            "ejected": connector.balancer.is_ejected((host, port), now),
            "idle_connections": connector.pool.idle_count((host, port)),
            "active_connections": active[(host, port)],
        }
        for host, port in entry.addresses + entry.backup
    ]
    expires_in = round(entry.expires_at - now, 3)
    found = {"deployment": deployment, "state": _state_of(entry, now), "expires_in": expires_in, "addresses": addresses}
    return found | wake


def wake_view(state: ServerState, deployment: str, entry: Entry | None) -> dict[str, object]:
    """With waking on, for a deployment the catalogue lists: its wake (state asleep, waking or awake, the wake's
    age, requests held, addresses found), or `asleep` when none started and DNS knows no address."""
    waker = state.waker
    if waker is None or not waker.catalogue.lists(deployment):
        return {}
    wake = waker.view(deployment)
    if wake is None:
        asleep = entry is None or entry.kind is not EntryKind.POSITIVE
        wake = {"state": "asleep" if asleep else "awake", "age_s": None, "held": 0, "addresses": []}
    return {"wake": wake}


def discovery_view(state: ServerState, limit: int = MAX_LISTED) -> dict[str, object]:
    """Every cached name (the first `limit`) with its state and address count, and how many there are."""
    cache, now = state.discovery.cache, state.loop.time()
    listed = []
    for name in cache.names(limit):
        entry = cache.peek(name)
        if entry is not None:
            summary = {
                "deployment": name,
                "state": _state_of(entry, now),
                "expires_in": round(entry.expires_at - now, 3),
            }
            listed.append(summary | {"addresses": len(entry.addresses) + len(entry.backup)})
    stats = state.discovery.stats  # since start: queries sent, failed, answered stale, refused, queued out
    lookups = {name: getattr(stats, name) for name in ("queries", "failures", "stale_served", "forbidden", "busy")}
    lookups["queued"] = state.discovery.queued  # waiting for the query budget right now
    found = {"count": len(cache), "listed": len(listed), "deployments": listed, "lookups": lookups}
    waker = state.waker
    if waker is not None:
        catalogue = waker.catalogue
        age = None if catalogue.loaded_at is None else round(now - catalogue.loaded_at, 3)
        found["wake"] = {"catalogue": len(catalogue), "catalogue_age_s": age, "catalogue_failing": catalogue.failing,
                         "held": waker.held}  # fmt: skip
    return found


def _state_of(entry: Entry, now: float) -> str:
    if entry.kind is EntryKind.NEGATIVE:
        return "negative"
    if entry.kind is EntryKind.FORBIDDEN:
        return "forbidden"
    return "stale" if entry.stale or now >= entry.expires_at else "fresh"


# --- several workers: each has its own cache and connections; the supervisor merges what they report ------

_RANK = {"fresh": 4, "stale": 3, "forbidden": 2, "negative": 1, "missing": 0}


def merge_deployment(views: list[dict[str, Any]], deployment: str) -> dict[str, object]:
    """One deployment as the workers see it together: the best state any of them holds, the longest expiry,
    each address once with connections added up (ejected when any worker ejected it)."""
    present = [view for view in views if view["state"] != "missing"]
    if not present:
        missing: dict[str, object] = {"deployment": deployment, "state": "missing", "expires_in": None, "addresses": []}
        return missing | {"workers": len(views)} | _merge_wakes(views)
    best = max(present, key=lambda view: (_RANK[view["state"]], view["expires_in"]))
    merged: dict[str, dict[str, Any]] = {}
    for view in present:
        for address in view["addresses"]:
            into = merged.setdefault(address["address"], {**address, "idle_connections": 0, "active_connections": 0})
            into["ejected"] = into["ejected"] or address["ejected"]
            into["idle_connections"] += address["idle_connections"]
            into["active_connections"] += address["active_connections"]
    addresses = list(merged.values())
    found = {
        "deployment": deployment,
        "state": best["state"],
        "expires_in": best["expires_in"],
        "addresses": addresses,
        "workers": len(views),
    }
    return found | _merge_wakes(views)


_WAKE_RANK = {"waking": 2, "awake": 1}


def _merge_wakes(views: list[dict[str, Any]]) -> dict[str, object]:
    """The workers' wakes of one deployment: the most advanced one's state, with every worker's held requests."""
    wakes = [view["wake"] for view in views if "wake" in view]
    if not wakes:
        return {}
    best = max(wakes, key=lambda wake: _WAKE_RANK.get(wake["state"], 0))
    return {"wake": best | {"held": sum(wake["held"] for wake in wakes)}}


def merge_lists(views: list[dict[str, Any]], limit: int = MAX_LISTED) -> dict[str, object]:
    by_name: dict[str, dict[str, Any]] = {}
    for view in views:
        for summary in view["deployments"]:
            known = by_name.get(summary["deployment"])
            if known is None or (_RANK[summary["state"]], summary["expires_in"]) > (
                _RANK[known["state"]],
                known["expires_in"],
            ):
                by_name[summary["deployment"]] = summary
    listed = list(by_name.values())[:limit]
    count = max((view["count"] for view in views), default=0)
    lookups: Counter[str] = Counter()
    for view in views:
        lookups.update(view.get("lookups", {}))
    return {
        "count": count,
        "listed": len(listed),
        "deployments": listed,
        "lookups": dict(lookups),
        "workers": len(views),
    }


def worker_views(state: ServerState) -> dict[str, object]:
    """What a worker reports when the supervisor asks (SIGUSR1): its list, and each listed deployment."""
    names = state.discovery.cache.names(MAX_LISTED)
    return {"list": discovery_view(state), "deployments": {name: deployment_view(state, name) for name in names}}
