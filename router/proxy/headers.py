"""Header rules of the proxy: what is checked, dropped, added, and how heads are written. Pure: no I/O.

Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection, not the message, so they never cross the
proxy: `Connection` and every header it names, `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`
(except on upgrades) and all `Proxy-*`. Framing is re-derived on each side: the router writes its own
`Content-Length` or `Transfer-Encoding: chunked`, so a client can never smuggle a second framing past it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Names the router removes from every forwarded message; lower-case.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length"}
)
# Request headers the router owns: whatever a client sends under these names is replaced, never trusted.
_ROUTER_OWNED_REQUEST = frozenset({b"expect", b"x-forwarded-prefix", b"x-real-ip", b"x-request-id"})
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


class HeaderError(ValueError):
    """A request head the router must refuse with 400; the message is for the log."""


@dataclass(slots=True)
class RequestHeaders:
    """What the router needs to know of a request head, and the headers it forwards as they came."""

    forwarded: list[tuple[bytes, bytes]] = field(default_factory=list)
    host: bytes | None = None
    content_length: int | None = None
    chunked: bool = False
    expect_continue: bool = False
    upgrade: bytes | None = None
    request_id: bytes | None = None
    trace_id: bytes | None = None
    forwarded_for: bytes | None = None
    forwarded_proto: bytes | None = None
    forwarded_port: bytes | None = None


def analyse_request(headers: list[tuple[bytes, bytes]], http_minor: int) -> RequestHeaders:
    """Classify a parsed request head. llhttp already refused CL with TE, duplicate CL and bad TE values."""
    result = RequestHeaders()
    connection_tokens: set[bytes] = set()
    forwarded = result.forwarded
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in _ROUTER_OWNED_REQUEST or lower.startswith(b"proxy-"):
            _note_special(result, lower, value, connection_tokens)
        elif lower == b"host":
            if result.host is not None:
                raise HeaderError("several Host headers")
            result.host = value
            forwarded.append((name, value))
        elif lower == b"x-forwarded-for":
            result.forwarded_for = value if result.forwarded_for is None else result.forwarded_for + b", " + value
        elif lower == b"x-forwarded-proto":
            result.forwarded_proto = value
        elif lower == b"x-forwarded-port":
            result.forwarded_port = value
        else:
            if lower == b"x-amzn-trace-id":
                result.trace_id = value
            forwarded.append((name, value))
    if http_minor == 0 and result.chunked:
        raise HeaderError("Transfer-Encoding on HTTP/1.0")
    if http_minor == 1 and result.host is None:
        raise HeaderError("HTTP/1.1 request without Host")
    if connection_tokens:
        # `Connection: host` must not strip Host: the router's routing and the backend's depend on it.
        connection_tokens.discard(b"host")
        result.forwarded[:] = [(n, v) for n, v in forwarded if n.lower() not in connection_tokens]
    if result.upgrade is not None and b"upgrade" not in connection_tokens:
        result.upgrade = None  # `Upgrade` without `Connection: upgrade` is only a hint: not an upgrade
    return result


def _note_special(result: RequestHeaders, lower: bytes, value: bytes, connection_tokens: set[bytes]) -> None:
    if lower == b"connection":
        connection_tokens.update(token.strip().lower() for token in value.split(b","))
    elif lower == b"transfer-encoding":
        result.chunked = True  # llhttp accepts only a final `chunked` on requests
    elif lower == b"content-length":
        result.content_length = int(value)
    elif lower == b"expect":
        if value.strip().lower() != b"100-continue":
            raise HeaderError("unsupported Expect")
        result.expect_continue = True
    elif lower == b"upgrade":
        result.upgrade = value
    elif lower == b"x-request-id" and _REQUEST_ID.fullmatch(value.strip()):
        result.request_id = value.strip()


@dataclass(frozen=True, slots=True)
class ForwardContext:
    """Per-request values the router adds to the upstream head."""

    peer_ip: bytes
    listen_port: bytes
    deployment: bytes
    request_id: bytes


def upstream_head(method: bytes, target: bytes, info: RequestHeaders, context: ForwardContext) -> bytes:
    """The request head sent to the backend: HTTP/1.1, persistent, with the router's forwarding headers."""
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in info.forwarded:
        parts += (name, b": ", value, b"\r\n")
    forwarded_for = context.peer_ip if info.forwarded_for is None else info.forwarded_for + b", " + context.peer_ip
    parts += (
        b"X-Forwarded-For: ",
        forwarded_for,
        b"\r\nX-Forwarded-Proto: ",
        info.forwarded_proto or b"http",
        b"\r\nX-Forwarded-Port: ",
        info.forwarded_port or context.listen_port,
        b"\r\nX-Forwarded-Prefix: /services/",
        context.deployment,
        b"\r\nX-Real-IP: ",
        context.peer_ip,
        b"\r\nX-Request-Id: ",
        context.request_id,
        b"\r\n",
    )
    if info.host is None:  # HTTP/1.0 without Host: HTTP/1.1 upstream requires one
        parts += (b"Host: ", context.deployment, b"\r\n")
    if info.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    elif info.content_length is not None:
        parts += (b"Content-Length: ", str(info.content_length).encode(), b"\r\n")
    if info.upgrade is not None:
        parts += (b"Connection: upgrade\r\nUpgrade: ", info.upgrade, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


@dataclass(slots=True)
class ResponseHeaders:
    forwarded: list[bytes] = field(default_factory=list)  # b"Name: value\r\n" pieces
    content_length: int | None = None
    chunked: bool = False
    upgrade: bytes | None = None


def analyse_response(headers: list[tuple[bytes, bytes]]) -> ResponseHeaders:
    result = ResponseHeaders()
    connection_tokens: set[bytes] = set()
    kept: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length":
            result.content_length = int(value)
        elif lower == b"transfer-encoding":
            result.chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif lower == b"connection":
            connection_tokens.update(token.strip().lower() for token in value.split(b","))
        elif lower == b"upgrade":
            result.upgrade = value
        elif lower in HOP_BY_HOP or lower.startswith(b"proxy-") or lower == b"x-request-id":
            continue
        else:
            kept.append((name, value))
    for name, value in kept:
        if not connection_tokens or name.lower() not in connection_tokens:
            result.forwarded += (name + b": " + value + b"\r\n",)
    return result


def response_head(status_line: bytes, info: ResponseHeaders, request_id: bytes, framing: bytes) -> bytes:
    """`framing` is the router's own `Content-Length`/`Transfer-Encoding`/`Connection` lines, already CRLF-ended."""
    return b"".join((status_line, *info.forwarded, b"X-Request-Id: ", request_id, b"\r\n", framing, b"\r\n"))
