"""The phases of one exchange and the transitions between them: sans-IO, no I/O, no clock.

An exchange is in one phase at a time, and `Exchange._enter` is the one place it changes (h11's
`ConnectionState` is the model). What a phase implies is not stored again as flags: "the response has
started" is RELAYING or TUNNEL, "finished" is DONE or ABANDONED.

    RECEIVING_HEAD --> WAITING --start--> ROUTING --attach--> SENDING --body complete--> AWAITING_HEAD
                          |                  ^  |                |  ^                        |  |
                          |                  |  |                |  '---- retry (stale) -----'  |
                          '--start--> REFUSED |  |                '--------> RELAYING <----------'
                                        |     |  |                             |        TUNNEL (101)
                                        v     |  v                             v          |
                                       DONE <-'--' (a local answer)           DONE        v
                                                                                       ABANDONED
    any phase before DONE --client gone--> ABANDONED
    ROUTING --deployment asleep--> HELD --woken--> ROUTING; HELD --queue full, wake timeout--> DONE

An exchange is *started* (it holds an in-flight slot of the worker) from ROUTING or REFUSED until DONE or
ABANDONED. The checks of `check_transition` run in the pure-Python build and wherever WHALERAY_CHECK_PHASES=1
(the tests set it); the compiled hot path skips them.
"""

from __future__ import annotations

import enum
import importlib.machinery
import os
from typing import Final


class Phase(enum.IntEnum):
    RECEIVING_HEAD = 0  # the parser is filling in the head
    WAITING = 1  # the head is whole; the exchange waits for its turn (pipelining) or to be started
    REFUSED = 2  # started with a refused head: its error is being answered
    ROUTING = 3  # started: route, DNS, limits, a backend connection being acquired
    HELD = 4  # its deployment is asleep: held, its body unread, while the deployment wakes (router/wake)
    SENDING = 5  # the request head went out; its body is still coming from the client
    AWAITING_HEAD = 6  # the whole request went out; no response byte has reached the client yet
    RELAYING = 7  # the response head was written to the client; its body is being relayed
    TUNNEL = 8  # the backend switched protocols (101): bytes go both ways unparsed
    DONE = 9  # the last response byte was written
    ABANDONED = 10  # the client went away, or the connection was cut, before DONE


# The hot path compares plain integers: mypyc inlines Final constants, where an enum member is a lookup.
RECEIVING_HEAD: Final = 0
WAITING: Final = 1
REFUSED: Final = 2
ROUTING: Final = 3
HELD: Final = 4
SENDING: Final = 5
AWAITING_HEAD: Final = 6
RELAYING: Final = 7
TUNNEL: Final = 8
DONE: Final = 9
ABANDONED: Final = 10

TRANSITIONS: Final[dict[Phase, frozenset[Phase]]] = {
    Phase.RECEIVING_HEAD: frozenset({Phase.WAITING, Phase.ABANDONED}),
    Phase.WAITING: frozenset({Phase.ROUTING, Phase.REFUSED, Phase.ABANDONED}),
    Phase.REFUSED: frozenset({Phase.DONE, Phase.ABANDONED}),
    Phase.ROUTING: frozenset({Phase.HELD, Phase.SENDING, Phase.AWAITING_HEAD, Phase.DONE, Phase.ABANDONED}),
    Phase.HELD: frozenset({Phase.ROUTING, Phase.DONE, Phase.ABANDONED}),
    Phase.SENDING: frozenset({Phase.AWAITING_HEAD, Phase.RELAYING, Phase.ROUTING, Phase.DONE, Phase.ABANDONED}),
    Phase.AWAITING_HEAD: frozenset({Phase.RELAYING, Phase.TUNNEL, Phase.ROUTING, Phase.DONE, Phase.ABANDONED}),
    Phase.RELAYING: frozenset({Phase.DONE, Phase.ABANDONED}),
    Phase.TUNNEL: frozenset({Phase.ABANDONED}),
    Phase.DONE: frozenset(),
    Phase.ABANDONED: frozenset(),
}


class IllegalTransition(Exception):
    """A bug: an exchange was moved to a phase its current phase does not lead to."""


def check_transition(old: int, new: int) -> None:
    if Phase(new) not in TRANSITIONS[Phase(old)]:
        raise IllegalTransition(f"{Phase(old).name} -> {Phase(new).name}")


def _compiled() -> bool:
    return (__file__ or "").endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


CHECK_PHASES: Final = os.environ.get("WHALERAY_CHECK_PHASES") == "1" or not _compiled()
