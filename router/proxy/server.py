"""What every connection of one worker shares: `ServerState`.

Settings, discovery, the backend connections (connector.py), the per-deployment limits, metrics and the access
log, the client connections (for the periodic tick and draining), the drain flag and request ids. The tick
checks every connection's deadlines, expires idle backend connections and prunes the limits' tables.

The path of one request, module by module: client.py (parse) -> dispatch.py (route, resolve, admit, borrow)
-> exchange.py (write the request, relay the response) -> upstream.py (the backend connection) -> back
through exchange.py to client.py; connector.py and pool.py lend and take back backend connections.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from mypy_extensions import trait

from router.access_log import AccessLog
from router.discovery.cache import Address
from router.discovery.service import Discovery
from router.limits import DeploymentLimits
from router.metrics import Metrics
from router.proxy.connector import Connector
from router.settings import Settings

if TYPE_CHECKING:  # at run time the data plane does not import the waker: see benchmarks/README.md
    from router.wake.waker import Waker

_HEX_PAIRS: Final[tuple[bytes, ...]] = tuple(b"%02x" % value for value in range(256))


@trait
class Connection:
    """A client connection as the shared state sees it (client.py's `ClientConnection`)."""

    def check_deadlines(self, now: float) -> None: ...

    def close_if_idle(self) -> None: ...

    def lent_address(self) -> Address | None:
        """The address of the backend connection lent to this connection's request, if any."""

    def abort(self) -> None: ...

    def active_deployment(self) -> str:
        """The deployment of the request being answered on this connection, "" when none (the idle report)."""
        return ""


class ServerState:
    """What every connection shares: settings, discovery, backend connections, limits, counters, the drain flag."""

    def __init__(
        self,
        settings: Settings,
        discovery: Discovery,
        loop: asyncio.AbstractEventLoop,
        metrics: Metrics,
        access_log: AccessLog | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.access_log = access_log
        self.discovery = discovery
        self.loop = loop
        # The loop's clock as a plain callable: the hot path reads it several times a request, and a method
        # looked up on the loop each time costs more than the call.
        self.clock: Callable[[], float] = loop.time
        self.connector = Connector(settings, loop, metrics)
        self.limits = DeploymentLimits(
            settings.deployment_rate, settings.deployment_burst, settings.deployment_max_inflight
        )
        self.connections: set[Connection] = set()
        self.draining = False
        self.listen_port = str(settings.port).encode()
        self.inflight = 0
        # With waking on (router/wake): the sleeping deployments' waker, and requests ended per deployment since
        # the last idle report.
        self.waker: Waker | None = None
        self.usage: dict[str, int] | None = None
        self._request_id_prefix = os.urandom(6).hex().encode()
        self._request_counter = 0
        # The prefix and all but the counter's last two hex digits.
        self._request_id_stem = b"%s%08x" % (self._request_id_prefix, 0)
        self._date_second = 0
        self._date = b""

    def next_request_id(self) -> bytes:
        """Unique per process without a syscall per request: a random prefix and a counter, 12 + 10 hex digits.
        The counter's last two digits come from a table and the rest is formatted once every 256 requests:
        `%010x` on every request cost about 1,600 instructions, 3 % of the hot path (callgrind)."""
        counter = self._request_counter = self._request_counter + 1
        low = counter & 0xFF
        if low == 0:
            self._request_id_stem = b"%s%08x" % (self._request_id_prefix, counter >> 8)
        return self._request_id_stem + _HEX_PAIRS[low]

    def http_date(self) -> bytes:
        """The `Date` value of the responses the router makes itself (RFC 9110 6.6.1), formatted once a second."""
        second = int(time.time())
        if second != self._date_second:
            self._date_second, self._date = second, email.utils.formatdate(second, usegmt=True).encode()
        return self._date

    def tick(self) -> None:
        now = self.clock()
        for connection in list(self.connections):
            connection.check_deadlines(now)
        self.connector.expire(now)
        self.limits.prune(now)

    def upstream_active(self) -> int:
        """Backend connections lent to a request right now."""
        return len(self.lent_addresses())

    def lent_addresses(self) -> list[Address]:
        """The address of every backend connection lent to a request right now (introspection)."""
        return [address for connection in self.connections if (address := connection.lent_address()) is not None]

    def inflight_by_deployment(self) -> dict[str, int]:
        """Requests being answered, by deployment (the idle report; not on a request's path)."""
        counts: dict[str, int] = {}
        for connection in self.connections:
            deployment = connection.active_deployment()
            if deployment:
                counts[deployment] = counts.get(deployment, 0) + 1
        return counts

    def close_idle_clients(self) -> None:
        for connection in list(self.connections):
            connection.close_if_idle()
