"""Parse a request target into a route, on the raw bytes the client sent. Pure: no I/O, no decoding.

`/services/<id>/<rest>` keeps `<rest>` (path and query) byte for byte: percent-escapes such as `%2F` are never
decoded, so the backend sees exactly what the client sent. `<id>` must be one DNS label; anything else is
refused before any lookup, so no crafted id can leave the namespace (`a.b`, `..`, `%2e`, `%00`, unicode).
"""

from __future__ import annotations

import functools
import re
from enum import Enum
from typing import NamedTuple

PREFIX = b"/services/"
HEALTH_PATH = b"/health"
# One DNS label: letters, digits and '-', 1-63 long, not starting or ending with '-'.
_DEPLOYMENT_ID = re.compile(rb"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


class RouteKind(Enum):
    PROXY = "proxy"
    HEALTH = "health"
    REDIRECT = "redirect"
    NOT_FOUND = "not_found"
    INVALID_ID = "invalid_deployment_id"


class Route(NamedTuple):
    kind: RouteKind
    deployment: str | None = None
    # PROXY: the upstream request target (`/<rest>?<query>`); REDIRECT: the Location value.
    target: bytes = b""


NOT_FOUND = Route(RouteKind.NOT_FOUND)
HEALTH = Route(RouteKind.HEALTH)
INVALID_ID = Route(RouteKind.INVALID_ID)
_new_route = tuple.__new__  # skips NamedTuple's Python-level __new__: one route is made per request
_ID_START = len(PREFIX)


@functools.lru_cache(maxsize=4096)
def deployment_of(raw_id: bytes) -> str | None:
    """The deployment named by `raw_id` (lower-cased), or None when it is not one DNS label.
    Cached: a platform has far fewer deployments than requests, so the check runs once per id, and every
    request for a deployment shares one string, whose hash every later dict lookup reuses. The bound keeps a
    scan of random ids from growing it; such a scan only evicts."""
    if _DEPLOYMENT_ID.fullmatch(raw_id) is None:
        return None
    return raw_id.decode("ascii").lower()


def parse_target(target: bytes) -> Route:
    if not target.startswith(PREFIX):
        if target == HEALTH_PATH or target.startswith(b"/health?"):
            return HEALTH
        return NOT_FOUND
    end = target.find(b"/", _ID_START)  # the id ends at the first '/' or '?', or with the target
    if end == -1:
        end = len(target)
    query = target.find(b"?", _ID_START, end)
    if query != -1:
        end = query
    deployment = deployment_of(target[_ID_START:end])
    if deployment is None:
        return INVALID_ID
    if end == len(target) or target[end] == 0x3F:  # no '/' after the id: `/services/<id>` or `/services/<id>?q`
        return _new_route(Route, (RouteKind.REDIRECT, deployment, target[:end] + b"/" + target[end:]))
    return _new_route(Route, (RouteKind.PROXY, deployment, target[end:]))
