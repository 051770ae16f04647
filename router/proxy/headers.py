"""Header rules of the proxy: what is checked, dropped, added, and how heads are written. Pure: no I/O.

Hop-by-hop headers (RFC 9110 section 7.6.1) describe one connection, not the message, so they never cross the
proxy: `Connection` and every header it names, `Keep-Alive`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`
(except on upgrades) and all `Proxy-*`. Framing is re-derived on each side: the router writes its own
`Content-Length` or `Transfer-Encoding: chunked`, so a client can never smuggle a second framing past it.

This runs for every request and response, so the forwarded headers are kept as they will be written: a flat
list of `name, b": ", value, b"\r\n"` pieces, joined once into the outgoing head.
"""

from __future__ import annotations

import re
from typing import Final

from router.errors import reason_phrase

# Names the router removes from every forwarded message; lower-case.
HOP_BY_HOP: Final = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length"}
)
# Request headers the router owns: whatever a client sends under these names is replaced or dropped, never
# trusted. `Forwarded` and `X-Forwarded-Host` are claims the ALB neither sets nor overwrites, so a client could
# forge them for frameworks that read them first; the backend learns the host from `Host`, forwarded as sent.
_ROUTER_OWNED_REQUEST: Final = frozenset(
    {b"expect", b"x-forwarded-prefix", b"x-real-ip", b"x-request-id", b"forwarded", b"x-forwarded-host"}
)
# Request headers that are not forwarded as they came: dropped, replaced or merged by the router.
_REQUEST_SPECIAL: Final = HOP_BY_HOP | _ROUTER_OWNED_REQUEST | {
    b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-port", b"x-amzn-trace-id"
}  # fmt: skip
# Response headers that are not forwarded: hop-by-hop, and the router's own X-Request-Id.
_RESPONSE_DROPPED: Final = HOP_BY_HOP | {b"x-request-id"}
# `Connection` values that name no header to drop, as backends send them: the common case, checked first.
_PLAIN_CONNECTION: Final = frozenset({b"keep-alive", b"Keep-Alive", b"close", b"Close"})
_REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:/+=-]{1,128}")


class HeaderError(ValueError):
    """A request head the router must refuse with 400; the message is for the log."""


class RequestHeaders:
    """What the router needs to know of a request head, and the headers it forwards as they came.
    A plain class with class-level defaults: one is made per request, and only what a head sets is stored."""

    host: bytes | None = None
    content_length: int | None = None
    chunked = False
    expect_continue = False
    upgrade: bytes | None = None
    request_id: bytes | None = None
    trace_id: bytes | None = None
    forwarded_for: bytes | None = None
    forwarded_proto: bytes | None = None
    forwarded_port: bytes | None = None

    def __init__(self) -> None:
        self.forwarded: list[bytes] = []  # name, b": ", value, b"\r\n" for each header forwarded as it came


def analyse_request(headers: list[tuple[bytes, bytes]], http_minor: int) -> RequestHeaders:
    """Classify a parsed request head. llhttp already refused CL with TE, duplicate CL and bad TE values."""
    result = RequestHeaders()
    connection_tokens: set[bytes] | None = None
    forwarded = result.forwarded
    for name, value in headers:
        lower = name.lower()
        if lower not in _REQUEST_SPECIAL and lower[:6] != b"proxy-":
            forwarded += (name, b": ", value, b"\r\n")
        elif lower == b"host":
            if result.host is not None:
                raise HeaderError("several Host headers")
            result.host = value
            forwarded += (name, b": ", value, b"\r\n")
        elif lower == b"connection":
            if connection_tokens is None:
                connection_tokens = set()
            connection_tokens.update(token.strip().lower() for token in value.split(b","))
        else:
            _note_special(result, lower, name, value)
    if http_minor == 0 and result.chunked:
        raise HeaderError("Transfer-Encoding on HTTP/1.0")
    if http_minor == 1 and result.host is None:
        raise HeaderError("HTTP/1.1 request without Host")
    if connection_tokens is not None:
        # `Connection: host` must not strip Host: the router's routing and the backend's depend on it.
        connection_tokens.discard(b"host")
        result.forwarded = _without_names(forwarded, connection_tokens - HOP_BY_HOP)
    if result.upgrade is not None and (connection_tokens is None or b"upgrade" not in connection_tokens):
        result.upgrade = None  # `Upgrade` without `Connection: upgrade` is only a hint: not an upgrade
    return result


def request_refusal(method: bytes, info: RequestHeaders, max_body_bytes: int) -> str | None:
    """The error code a well-formed request head is still refused with, or None. `max_body_bytes`: 0, no cap."""
    if method == b"CONNECT":
        return "method_not_allowed"
    if info.upgrade is not None and (info.chunked or info.content_length):
        return "bad_request"  # where would the body end and the tunnel begin? Handshakes (WebSocket, h2c) have none
    if max_body_bytes and info.content_length is not None and info.content_length > max_body_bytes:
        return "body_too_large"
    return None


def _note_special(result: RequestHeaders, lower: bytes, name: bytes, value: bytes) -> None:
    if lower == b"transfer-encoding":
        result.chunked = True  # llhttp accepts only a final `chunked` on requests
    elif lower == b"content-length":
        result.content_length = int(value)
    elif lower == b"expect":
        if value.strip().lower() != b"100-continue":
            raise HeaderError("unsupported Expect")
        result.expect_continue = True
    elif lower == b"upgrade":
        result.upgrade = value
    elif lower == b"x-request-id":
        if _REQUEST_ID.fullmatch(value.strip()):
            result.request_id = value.strip()
    elif lower == b"x-forwarded-for":
        result.forwarded_for = value if result.forwarded_for is None else result.forwarded_for + b", " + value
    elif lower == b"x-forwarded-proto":
        result.forwarded_proto = value
    elif lower == b"x-forwarded-port":
        result.forwarded_port = value
    elif lower == b"x-amzn-trace-id":
        result.trace_id = value
        result.forwarded += (name, b": ", value, b"\r\n")


def _without_names(pieces: list[bytes], names: set[bytes]) -> list[bytes]:
    """`pieces` (name, ": ", value, CRLF, ...) without the headers called one of `names` (lower-case)."""
    if not names:
        return pieces
    kept: list[bytes] = []
    for index in range(0, len(pieces), 4):
        if pieces[index].lower() not in names:
            kept += pieces[index : index + 4]
    return kept


def upstream_head(
    method: bytes,
    target: bytes,
    info: RequestHeaders,
    *,
    peer_ip: bytes,
    listen_port: bytes,
    deployment: bytes,
    request_id: bytes,
) -> bytes:
    """The request head sent to the backend: HTTP/1.1, persistent, with the router's forwarding headers.
    `peer_ip` is the client's address, `listen_port` the router's, both for the X-Forwarded headers."""
    forwarded_for = peer_ip if info.forwarded_for is None else info.forwarded_for + b", " + peer_ip
    framing = b""
    if info.host is None:  # HTTP/1.0 without Host: HTTP/1.1 upstream requires one
        framing += b"Host: " + deployment + b"\r\n"
    if info.chunked:
        framing += b"Transfer-Encoding: chunked\r\n"
    elif info.content_length is not None:
        framing += b"Content-Length: %d\r\n" % info.content_length
    if info.upgrade is not None:
        framing += b"Connection: upgrade\r\nUpgrade: " + info.upgrade + b"\r\n"
    return (
        b"%s %s HTTP/1.1\r\n%bX-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Port: %s\r\n"
        b"X-Forwarded-Prefix: /services/%s\r\nX-Real-IP: %s\r\nX-Request-Id: %s\r\n%s\r\n"
        % (
            method,
            target,
            b"".join(info.forwarded),
            forwarded_for,
            info.forwarded_proto or b"http",
            info.forwarded_port or listen_port,
            deployment,
            peer_ip,
            request_id,
            framing,
        )
    )


class ResponseHeaders:
    """What the router needs to know of a response head, and the headers it forwards."""

    content_length: int | None = None
    chunked = False
    upgrade: bytes | None = None

    def __init__(self) -> None:
        self.forwarded: list[bytes] = []  # name, b": ", value, b"\r\n" for each header forwarded


# What a response header is to the router, by name. Common names are listed as backends spell them, so the
# usual head needs no lower-casing; any other spelling is lower-cased and looked up again.
# (Final: the compiled build reads them as C constants, not from the module's dictionary at each call.)
_FORWARD: Final = 0
_DROP: Final = 1
_LENGTH: Final = 2
_CODING: Final = 3
_CONNECTION: Final = 4
_UPGRADE: Final = 5
_COMMON_FORWARDED: Final[tuple[bytes, ...]] = (
    b"Date", b"Server", b"Content-Type", b"ETag", b"Last-Modified", b"Cache-Control", b"Expires", b"Vary",
    b"Set-Cookie", b"Location", b"Content-Encoding", b"Accept-Ranges", b"X-Powered-By", b"Pragma",
    b"Access-Control-Allow-Origin", b"Strict-Transport-Security", b"X-Content-Type-Options", b"X-Frame-Options",
)  # fmt: skip


def _response_name_table() -> dict[bytes, int]:
    kinds = {name.lower(): _DROP for name in _RESPONSE_DROPPED}
    kinds |= {b"content-length": _LENGTH, b"transfer-encoding": _CODING, b"connection": _CONNECTION}
    kinds[b"upgrade"] = _UPGRADE
    kinds |= {name.title(): kind for name, kind in kinds.items()}
    kinds[b"X-Request-ID"] = _DROP
    return kinds | {spelling: _FORWARD for name in _COMMON_FORWARDED for spelling in (name, name.lower())}


_RESPONSE_NAME_KINDS: Final = _response_name_table()


def _response_name_kind(name: bytes) -> int:
    kind = _RESPONSE_NAME_KINDS.get(name)
    if kind is not None:
        return kind
    lower = name.lower()
    kind = _RESPONSE_NAME_KINDS.get(lower)
    if kind is not None:
        return kind
    return _DROP if lower[:6] == b"proxy-" else _FORWARD


def analyse_response(headers: list[tuple[bytes, bytes]]) -> ResponseHeaders:
    result = ResponseHeaders()
    forwarded = result.forwarded
    connection_tokens: set[bytes] | None = None
    for name, value in headers:
        kind = _response_name_kind(name)
        if kind == _FORWARD:
            forwarded.append(name)
            forwarded.append(b": ")
            forwarded.append(value)
            forwarded.append(b"\r\n")
        elif kind == _LENGTH:
            result.content_length = int(value)
        elif kind == _CODING:
            result.chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
        elif kind == _CONNECTION:
            if value not in _PLAIN_CONNECTION:  # names headers to drop (rare): collect them
                if connection_tokens is None:
                    connection_tokens = set()
                connection_tokens.update(token.strip().lower() for token in value.split(b","))
        elif kind == _UPGRADE:
            result.upgrade = value
    if connection_tokens is not None:
        result.forwarded = _without_names(forwarded, connection_tokens - HOP_BY_HOP)
    return result


def response_head(status: int, reason: bytes, info: ResponseHeaders, request_id: bytes, framing: bytes) -> bytes:
    """`framing` is the router's own `Content-Length`/`Transfer-Encoding`/`Connection` lines, already CRLF-ended."""
    forwarded = b"".join(info.forwarded)
    return b"HTTP/1.1 %d %s\r\n%bX-Request-Id: %s\r\n%s\r\n" % (status, reason, forwarded, request_id, framing)


def local_head(
    status: int, date: bytes, body: bytes, request_id: bytes, extra: bytes, *, close: bool, minor: int
) -> bytes:
    """The head of a response the router makes itself (an error, /health, a redirect): JSON when it has a body;
    `extra` is more header lines, CRLF-ended; `close`: the client connection closes after it."""
    if close:
        connection = b"Connection: close\r\n"
    elif minor:
        connection = b""  # HTTP/1.1 keeps the connection by default
    else:
        connection = b"Connection: keep-alive\r\n"
    content_type = b"Content-Type: application/json\r\n" if body else b""
    return b"HTTP/1.1 %d %s\r\nDate: %s\r\n%sContent-Length: %d\r\nX-Request-Id: %s\r\n%s%s\r\n" % (
        status, reason_phrase(status), date, content_type, len(body), request_id or b"-", extra, connection,
    )  # fmt: skip


class Framing:
    """How the router frames a response to the client, decided from the backend's head (`response_framing`)."""

    __slots__ = ("chunked", "keep_alive", "length", "lines", "until_close")

    def __init__(self, lines: bytes, length: int | None, chunked: bool, until_close: bool, keep_alive: bool) -> None:
        self.lines = lines  # the header lines the router writes: Content-Length, Transfer-Encoding, Connection
        self.length = length  # the body's length when Content-Length frames it (relayed without parsing)
        self.chunked = chunked  # the router chunks the body for the client
        self.until_close = until_close  # the backend ends the body by closing: its connection is not reused
        self.keep_alive = keep_alive  # the client connection stays open after this response


def response_framing(
    info: ResponseHeaders, status: int, *, head_request: bool, http_minor: int, keep_alive: bool
) -> Framing:
    """The one framing rule (RFC 9112 6.3): no body for HEAD, 204 and 304; the backend's Content-Length when
    it sent one without chunking; otherwise chunked to an HTTP/1.1 client, or closed after the body to 1.0.
    `keep_alive`: whether the client connection may stay open as far as the request goes."""
    length: int | None = None
    chunked = until_close = False
    if head_request or status in {204, 304}:
        lines = b"" if info.content_length is None or status == 204 else b"Content-Length: %d\r\n" % info.content_length
    elif info.content_length is not None and not info.chunked:
        lines = b"Content-Length: %d\r\n" % info.content_length
        length = info.content_length
    else:
        until_close = not info.chunked
        if http_minor:
            chunked = True
            lines = b"Transfer-Encoding: chunked\r\n"
        else:
            lines = b""
            keep_alive = False
    if not keep_alive:
        lines += b"Connection: close\r\n"
    elif not http_minor:
        lines += b"Connection: keep-alive\r\n"
    return Framing(lines, length, chunked, until_close, keep_alive)
