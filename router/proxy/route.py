"""Parse a request target into a route, on the raw bytes the client sent. Pure: no I/O, no decoding.

`/services/<id>/<rest>` keeps `<rest>` (path and query) byte for byte: percent-escapes such as `%2F` are never
decoded, so the backend sees exactly what the client sent. `<id>` must be one DNS label; anything else is
refused before any lookup, so no crafted id can leave the namespace (`a.b`, `..`, `%2e`, `%00`, unicode).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

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


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    deployment: str | None = None
    # PROXY: the upstream request target (`/<rest>?<query>`); REDIRECT: the Location value.
    target: bytes = b""


NOT_FOUND = Route(RouteKind.NOT_FOUND)
HEALTH = Route(RouteKind.HEALTH)
INVALID_ID = Route(RouteKind.INVALID_ID)


def parse_target(target: bytes) -> Route:
    if not target.startswith(PREFIX):
        if target == HEALTH_PATH or target.startswith(b"/health?"):
            return HEALTH
        return NOT_FOUND
    start = len(PREFIX)
    end = _end_of_id(target, start)
    raw_id = target[start:end]
    if _DEPLOYMENT_ID.fullmatch(raw_id) is None:
        return INVALID_ID
    deployment = raw_id.decode("ascii").lower()
    if end == len(target) or target[end] == 0x3F:  # no '/' after the id: `/services/<id>` or `/services/<id>?q`
        return Route(RouteKind.REDIRECT, deployment, target[:end] + b"/" + target[end:])
    return Route(RouteKind.PROXY, deployment, target[end:])


def _end_of_id(target: bytes, start: int) -> int:
    """Index of the '/' or '?' that ends the id, or the end of the target."""
    slash = target.find(b"/", start)
    query = target.find(b"?", start)
    ends = [index for index in (slash, query) if index != -1]
    return min(ends) if ends else len(target)
