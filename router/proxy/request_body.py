"""What an exchange holds of its request on the way to a backend: `RequestBody`. Sans-IO: it keeps bytes and
counts, and says when a bound is crossed; the exchange does the writing and the pausing.

Two bounds on what a client can make the router hold:
- MAX_PENDING_BODY: body bytes that arrived before a backend connection did. Past it, reading from the client
  pauses until the connection takes them.
- MAX_REPLAY: what is kept of a request sent on a reused connection (head and body so far), to send it again
  once on a fresh connection if the reused one turns out stale before any response byte. Past it, nothing is
  kept and the request is not replayed.
"""

from __future__ import annotations

from typing import Final

MAX_PENDING_BODY: Final = 64 * 1024
MAX_REPLAY: Final = 64 * 1024


class RequestBody:
    """A request's body as the exchange relays it (and, for replaying, its head as sent)."""

    __slots__ = ("complete", "continue_sent", "pending", "pending_bytes", "received", "replay", "replay_bytes")

    def __init__(self) -> None:
        self.complete = False  # the client has sent the whole body (`finish`; at once for a request without one)
        self.received = 0  # body bytes received from the client
        self.pending: list[bytes] = []  # what arrived before a backend connection did
        self.pending_bytes = 0
        self.replay: list[bytes] | None = None  # what went out on a reused connection, while it fits MAX_REPLAY
        self.replay_bytes = 0
        self.continue_sent = False  # `100 Continue` went to the client

    def arrived(self, size: int) -> int:
        """`size` more body bytes came from the client; how many have, in all."""
        self.received += size
        return self.received

    def finish(self) -> None:
        """The client sent the body's last byte."""
        self.complete = True

    def note_continue(self) -> bool:
        """Whether `100 Continue` is still to be sent; from now on it counts as sent."""
        if self.continue_sent:
            return False
        self.continue_sent = True
        return True

    def hold(self, parts: list[bytes], size: int) -> bool:
        """Keep `parts` until a backend connection takes them; True when the bound is crossed."""
        self.pending += parts
        self.pending_bytes += size
        return self.pending_bytes > MAX_PENDING_BODY

    def first_send(self, head: bytes | None, reused: bool) -> list[bytes]:
        """What to write on a newly attached connection: `head` and the body held so far, or on a retry (`head`
        None) what the stale connection swallowed and what arrived since. Kept for a replay when the
        connection was pooled and it fits MAX_REPLAY."""
        if head is None:
            parts = [*(self.replay or []), *self.pending]
        else:
            parts = [head, *self.pending] if self.pending else [head]
        sent = len(parts[0]) if len(parts) == 1 else sum(len(part) for part in parts)
        self.replay = parts if reused and sent <= MAX_REPLAY else None
        self.replay_bytes = sent
        if self.pending:
            self.pending = []
            self.pending_bytes = 0
        return parts

    def sent(self, parts: list[bytes], size: int) -> None:
        """`parts` went out on the connection: keep them for a replay while the whole request still fits."""
        if self.replay is not None:
            if self.replay_bytes + size <= MAX_REPLAY:
                self.replay += parts
            else:
                self.replay = None
        self.replay_bytes += size

    def __repr__(self) -> str:
        state = "complete" if self.complete else "streaming"
        replay = "none" if self.replay is None else f"{self.replay_bytes} bytes"
        return f"<RequestBody [{state} | Received: {self.received} | Pending: {self.pending_bytes} | Replay: {replay}]>"
