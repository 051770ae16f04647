"""The client connection as an exchange sees it: `ClientSide`, the reasons reading from a client pauses, and
`ReadGate`, which pauses and resumes reading by those reasons.

exchange.py uses this and never imports client.py, which implements it: the seam runs one way.
"""

from __future__ import annotations

import asyncio
from typing import Final

from mypy_extensions import trait

from router.proxy.upstream import UpstreamConnection

# Reasons reading from the client is paused; reading resumes when none is left.
PAUSE_PIPELINE: Final = 1  # a pipelined request waits for the active one
PAUSE_UPSTREAM_FULL: Final = 2  # the backend's write buffer is full
PAUSE_NO_UPSTREAM: Final = 4  # body bytes wait for a backend connection
PAUSE_TUNNEL: Final = 8  # bytes after an upgrade request wait for the backend's 101
PAUSE_CLIENT_FULL: Final = 16  # the client's write buffer is full: read no more of what it asks until it reads


class ReadGate:
    """Reading from one transport, paused while any reason holds and resumed when the last one is lifted. The
    connection unsets `transport` once it closes: reasons are still counted, the transport left alone."""

    __slots__ = ("reasons", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reasons = 0

    def pause(self, reason: int) -> None:
        if not self.reasons and self.transport is not None:
            self.transport.pause_reading()
        self.reasons |= reason

    def resume(self, reasons: int) -> bool:
        """Lift `reasons`; True when reading resumed."""
        if not self.reasons & reasons:
            return False
        self.reasons &= ~reasons
        if not self.reasons and self.transport is not None:
            self.transport.resume_reading()
            return True
        return False


@trait
class ClientSide:
    """What an exchange may do to its client connection. A mypyc trait: calls through it stay native in the
    compiled build (a `typing.Protocol` would make each one a Python method call)."""

    peer_ip: bytes
    write_paused: bool  # the client takes no more for now: the backend's reading pauses too
    gate: ReadGate  # reading from the client; read-only here: pause and resume go through the methods

    def write(self, data: bytes) -> None: ...

    def writelines(self, parts: list[bytes]) -> None: ...

    def cork(self) -> None: ...

    def uncork(self) -> None: ...

    def pause(self, reason: int) -> None: ...

    def resume(self, reasons: int) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def finish(self) -> None:
        """The active exchange wrote its last response byte: close, or go on with the next request."""

    def start_tunnel(self, upstream: UpstreamConnection) -> None: ...

    def tunnel_active(self) -> None: ...
