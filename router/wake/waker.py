"""Wake a sleeping deployment on its first request, and hold its requests until it can serve them: `Waker`.

A deployment asleep at zero tasks has no Cloud Map instances, so its name answers NXDOMAIN, like a deployment
that does not exist. When a request's name answered NXDOMAIN and the catalogue lists it (catalogue.py), the
request is held here and one wake per deployment starts (`Wake`, its state and its queue):

1. the registry first (DiscoverInstances, healthy only): a deployment already awake, whose NXDOMAIN is a
   resolver's negative cache, is served at once;
2. its opt-in tag gives the count to wake to (not opted in: answered as today, deployment_not_found);
3. DescribeServices: only a desired count of 0 is raised (UpdateService), never a running service lowered, and
   no more often than MIN_UPDATE_INTERVAL_S a deployment; the held requests are reported in flight first (the
   idle signal, idle.py), and the count is checked again every MIN_UPDATE_INTERVAL_S while no task is up, in
   case the idle alarm lowered it meanwhile;
4. DiscoverInstances every --wake-poll until a healthy instance's address, inside the allowed networks,
   accepts a connection: ECS counts say nothing of readiness;
5. the addresses replace the name's negative entry in the DNS cache (`Discovery.adopt`), and the held
   requests are released in arrival order through the normal path (limits, pool, isolation).

Bounds: --wake-queue requests a deployment and --wake-max-held in all (503 wake_queue_full beyond, with
Retry-After); each request waits at most --wake-timeout (504 wake_timeout); an AWS failure answers the held
requests 503 wake_unavailable. Other deployments never wait on any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from router.discovery.cache import Address, Entry
from router.discovery.service import Discovery, address_allowed
from router.errors import RouterError
from router.metrics import Metrics
from router.settings import Settings
from router.wake.catalogue import Catalogue
from router.wake.platform import Instance, Platform, PlatformError, Usage

log = logging.getLogger("router.wake")

ASLEEP: Final = "asleep"
WAKING: Final = "waking"
AWAKE: Final = "awake"
MIN_UPDATE_INTERVAL_S: Final = 10.0  # UpdateService at most this often a deployment, whatever its requests do
REGISTRY_TRUST_S: Final = 60.0  # how long the registry's addresses outvote a resolver's cached NXDOMAIN
PROBE_TIMEOUT_S: Final = 1.0  # a connect to a newly registered address; it is tried again at the next poll


@dataclass(slots=True, eq=False)
class Wake:
    """One deployment's wake: its state, its held requests (in arrival order) and the addresses it found."""

    deployment: str
    state: str = ASLEEP
    started_at: float = 0.0  # when the current (or last) wake started
    held: dict[asyncio.Future[Entry], None] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    addresses: tuple[Address, ...] = ()
    found_at: float = 0.0  # when the registry last showed them
    updated_at: float = -MIN_UPDATE_INTERVAL_S  # when this process last raised the desired count


class Waker:
    def __init__(
        self,
        settings: Settings,
        *,
        platform: Platform,
        catalogue: Catalogue,
        discovery: Discovery,
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._platform = platform
        self.catalogue = catalogue
        self._discovery = discovery
        self.metrics = metrics
        self._clock = clock
        self._wakes: dict[str, Wake] = {}
        self.held = 0  # requests held for all deployments

    def may_wake(self, deployment: str) -> bool:
        """Whether a request whose name answered NXDOMAIN should be held: only for listed deployments (no I/O)."""
        return self.catalogue.lists(deployment)

    async def hold(self, deployment: str) -> Entry:
        """Wait until `deployment` can be served; its addresses. Raises RouterError: wake_queue_full,
        wake_timeout, wake_unavailable, deployment_not_found (not opted in), upstream_forbidden."""
        wake = self._wakes.get(deployment)
        if wake is None:
            wake = self._wakes[deployment] = Wake(deployment)
        if self._registry_trusted(wake):
            return self._discovery.adopt(deployment, wake.addresses)
        settings = self._settings
        if len(wake.held) >= settings.wake_queue or self.held >= settings.wake_max_held:
            self.metrics.wake_overflows += 1
            raise RouterError("wake_queue_full")
        waiting: asyncio.Future[Entry] = asyncio.get_running_loop().create_future()
        wake.held[waiting] = None
        self.held += 1
        if wake.task is None:
            wake.task = asyncio.create_task(self._wake(wake))
        try:
            return await asyncio.wait_for(waiting, settings.wake_timeout_s)
        except TimeoutError:
            raise RouterError("wake_timeout") from None
        finally:  # answered, timed out, or the client left (cancelled): out of the queue either way
            if wake.held.pop(waiting, False) is None:
                self.held -= 1

    def vouch(self, deployment: str) -> tuple[Address, ...]:
        """The addresses the registry recently showed for `deployment`: the DNS cache keeps them over a resolver's
        NXDOMAIN (its negative cache may outlive the wake by the namespace's negative TTL)."""
        wake = self._wakes.get(deployment)
        return wake.addresses if wake is not None and self._registry_trusted(wake) else ()

    def _registry_trusted(self, wake: Wake) -> bool:
        """Awake, and the registry showed its addresses less than REGISTRY_TRUST_S ago."""
        return wake.state == AWAKE and self._clock() - wake.found_at < REGISTRY_TRUST_S

    async def _wake(self, wake: Wake) -> None:
        wake.state = WAKING
        wake.started_at = self._clock()
        started = time.perf_counter()
        result = "failed"
        try:
            result, outcome = await self._wake_steps(wake)
        except RouterError as error:  # every registered address is outside the allowed networks
            result, outcome = "forbidden", error
        except PlatformError as error:
            log.warning("deployment could not be woken", extra={"deployment": wake.deployment, "detail": str(error)})
            outcome = RouterError("wake_unavailable")
        except Exception:  # a bug: the held requests are answered, the router goes on
            log.exception("unexpected error while waking", extra={"deployment": wake.deployment})
            outcome = RouterError("internal_error")
        finally:
            wake.task = None
        if isinstance(outcome, RouterError):
            wake.state = ASLEEP
        else:
            wake.state = AWAKE
            log.info(
                "deployment awake",
                extra={"deployment": wake.deployment, "result": result, "held": len(wake.held),
                       "wake_ms": round((time.perf_counter() - started) * 1000, 1)},
            )  # fmt: skip
        self.metrics.woke(result, time.perf_counter() - started)
        self._release(wake, outcome)

    async def _wake_steps(self, wake: Wake) -> tuple[str, Entry | RouterError]:
        """The steps of the module docstring; the result for the metrics and what the held requests get."""
        deployment = wake.deployment
        addresses = await self._ready_addresses(deployment)
        if addresses:
            return "already_awake", self._adopt(wake, addresses)
        count = await self.catalogue.wake_count(deployment)
        if count == 0:
            return "not_opted_in", RouterError("deployment_not_found")
        # Another router, or ECS itself, may have raised the count already.
        result = "woken" if await self._raise_if_asleep(wake, count) else "woken_elsewhere"
        deadline = wake.started_at + self._settings.wake_timeout_s
        checked_at = self._clock()
        while not addresses:
            if self._clock() >= deadline:
                return "timeout", RouterError("wake_timeout")
            await asyncio.sleep(self._settings.wake_poll_s)
            addresses = await self._ready_addresses(deployment)
            if not addresses and self._clock() - checked_at >= MIN_UPDATE_INTERVAL_S:
                # Lowered to 0 again before a task came up: the idle alarm stays in ALARM until a report of this
                # wake reaches it, and Application Auto Scaling invokes its policy every minute meanwhile.
                checked_at = self._clock()
                await self._raise_if_asleep(wake, count)
        return result, self._adopt(wake, addresses)

    async def _raise_if_asleep(self, wake: Wake, count: int) -> bool:
        """Raise the desired count to `count` when it is 0, at most once per MIN_UPDATE_INTERVAL_S: whether it
        did. The held requests are reported in flight first, so the idle alarm leaves ALARM at its next look."""
        service = self._settings.wake_service_prefix + wake.deployment
        if await self._platform.desired_count(service) != 0:
            return False
        now = self._clock()
        if now - wake.updated_at < MIN_UPDATE_INTERVAL_S:
            return False
        wake.updated_at = now
        await self._report_held(wake)
        await self._platform.set_desired_count(service, count)
        self.metrics.wake_updates += 1
        log.info("waking deployment", extra={"deployment": wake.deployment, "desired_count": count})
        return True

    async def _report_held(self, wake: Wake) -> None:
        """The idle signal, now rather than at the next --idle-report: this deployment has requests in flight."""
        if not self._settings.idle_report_s:
            return
        try:
            await self._platform.report_usage({wake.deployment: Usage(requests=0, inflight=max(1, len(wake.held)))})
        except PlatformError as error:  # the periodic report follows; the wake goes on
            log.warning("wake not reported to the idle signal", extra={"deployment": wake.deployment,
                                                                        "detail": str(error)})  # fmt: skip

    async def _ready_addresses(self, deployment: str) -> tuple[Address, ...]:
        """The healthy registered addresses inside the allowed networks that accept a connection now. Raises
        RouterError upstream_forbidden when every registered address is outside them."""
        instances = await self._platform.healthy_instances(deployment)
        registered = tuple(self._address(instance) for instance in instances)
        networks = self._settings.upstream_allow_cidrs
        allowed = tuple(address for address in registered if address_allowed(address[0], networks))
        if instances and not allowed:
            log.warning("registered addresses outside allowed networks", extra={"deployment": deployment})
            raise RouterError("upstream_forbidden")
        answering = await asyncio.gather(*(_accepts(address) for address in allowed))
        return tuple(address for address, ok in zip(allowed, answering, strict=True) if ok)

    def _address(self, instance: Instance) -> Address:
        return instance.host, instance.port if instance.port is not None else self._settings.upstream_port

    def _adopt(self, wake: Wake, addresses: tuple[Address, ...]) -> Entry:
        wake.addresses = addresses
        wake.found_at = self._clock()
        return self._discovery.adopt(wake.deployment, addresses)

    def _release(self, wake: Wake, outcome: Entry | RouterError) -> None:
        """Answer every held request, in arrival order: each resumes in that order on the loop."""
        for waiting in wake.held:
            if waiting.done():
                continue
            if isinstance(outcome, RouterError):
                waiting.set_exception(RouterError(outcome.code))
            else:
                waiting.set_result(outcome)

    def view(self, deployment: str) -> dict[str, object] | None:
        """What /discovery/<id> shows of the deployment's wake, if it ever had one."""
        wake = self._wakes.get(deployment)
        if wake is None:
            return None
        now = self._clock()
        state = wake.state
        if state == AWAKE and not self._registry_trusted(wake):
            state = "awake (registry answer expired)"
        return {
            "state": state,
            "age_s": round(now - wake.started_at, 3),
            "held": len(wake.held),
            "addresses": [f"{host}:{port}" for host, port in wake.addresses],
        }

    async def close(self) -> None:
        """At stop: end every wake; the requests still held are answered wake_unavailable."""
        for wake in self._wakes.values():
            if wake.task is not None:
                wake.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await wake.task
            self._release(wake, RouterError("wake_unavailable"))


async def _accepts(address: Address) -> bool:
    """Whether `address` accepts a TCP connection within PROBE_TIMEOUT_S (registered is not yet listening)."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(*address), PROBE_TIMEOUT_S)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
