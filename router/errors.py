"""The one table of the router's error codes, and the exceptions that carry them.

Every error a client can see has a stable machine-readable `code`, an HTTP status and a human message here;
nothing else in the router invents a status or a message. Bodies never carry internals (addresses, exception
text): those go to the logs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final


@dataclass(frozen=True, slots=True)
class ErrorKind:
    code: str
    status: int
    message: str
    # Whether each occurrence gets an application log line. Not for what clients cause at will (unknown ids,
    # over-budget lookups, limits): a scan would turn into a log flood. Those are in the access log and metrics.
    log_each: bool = False
    # Whether the body names the deployment: for errors about it (its lookup, its backend), not about the
    # request itself, where the path may not even hold a valid id.
    names_deployment: bool = False
    # Seconds a client is told to wait before trying again (Retry-After), for a refusal that passes; 0: none.
    retry_after_s: int = 0


_KINDS: Final[tuple[ErrorKind, ...]] = (
    ErrorKind("not_found", 404, "Not found. Use /services/{deploymentId}/... format"),
    ErrorKind("invalid_deployment_id", 400, "Invalid deployment id: use 1-63 letters, digits or '-'"),
    ErrorKind("bad_request", 400, "Malformed request"),
    ErrorKind("method_not_allowed", 405, "Method not allowed"),
    ErrorKind("request_timeout", 408, "Request not received in time"),
    ErrorKind("body_too_large", 413, "Request body too large"),
    ErrorKind("rate_limited", 429, "Too many requests for this deployment, retry later"),
    ErrorKind("headers_too_large", 431, "Request header fields too large"),
    ErrorKind("internal_error", 500, "Internal router error", log_each=True),
    ErrorKind("deployment_not_found", 502, "Service unavailable or deployment not found", names_deployment=True),
    ErrorKind("upstream_unavailable", 502, "Service unavailable", log_each=True, names_deployment=True),
    ErrorKind("upstream_bad_response", 502, "Service sent an invalid response", log_each=True, names_deployment=True),
    ErrorKind("upstream_forbidden", 502, "Service address not allowed", log_each=True, names_deployment=True),
    ErrorKind("resolver_unavailable", 503, "Service discovery unavailable", log_each=True, names_deployment=True),
    ErrorKind("resolver_busy", 503, "Service discovery busy, retry shortly", names_deployment=True),
    ErrorKind("deployment_overloaded", 503, "Too many requests in flight for this deployment"),
    ErrorKind(
        "wake_queue_full",
        503,
        "Deployment is waking up; too many requests wait for it, retry shortly",
        names_deployment=True,
        retry_after_s=5,
    ),
    ErrorKind(
        "wake_unavailable",
        503,
        "Deployment is asleep and could not be woken now, retry shortly",
        log_each=True,
        names_deployment=True,
        retry_after_s=5,
    ),
    ErrorKind("wake_timeout", 504, "Deployment did not wake up in time", log_each=True, names_deployment=True),
    ErrorKind("upstream_timeout", 504, "Service did not answer in time", log_each=True, names_deployment=True),
)

ERRORS: Final[dict[str, ErrorKind]] = {kind.code: kind for kind in _KINDS}


class RouterError(Exception):
    """An error a client sees: `code` is a key of ERRORS. What the log needs is logged where it happens."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.kind = ERRORS[code]

    @property
    def code(self) -> str:
        return self.kind.code


def reason_phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b"Unknown"


def error_body(kind: ErrorKind, request_id: str, deployment: str | None = None) -> bytes:
    body: dict[str, str] = {"error": kind.message, "code": kind.code}
    if deployment is not None:
        body["deployment"] = deployment
    body["request_id"] = request_id
    return json.dumps(body, separators=(",", ":")).encode()
