"""What ECS and Cloud Map do for a deployment that moto, playing AWS's APIs on loopback, does not: start tasks.

`PlatformStandIn` watches the ECS services of the deployments it is given. When a service's desired count rises
from zero, it starts the deployment's backend after `start_delay_s` (a task's start; none when the count fell
back to zero meanwhile), registers it in moto's Cloud Map (healthy), and, when `dns` is given, adds its A record
to the DNS server standing in for Cloud Map's DNS. When the desired count falls to zero, it deregisters and
stops the backend. Used by `make demo` (a deployment asleep until its first request) and by tests/test_wake.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from whaleray_demo.dns import DemoDnsServer

log = logging.getLogger("whaleray_demo.platform")

WAKE_TAG = "whaleray:wake"  # router/wake/platform.py's opt-in tag
StartBackend = Callable[[str], Awaitable[Callable[[], Awaitable[None]]]]  # host -> its stop


@dataclass
class SleepingDeployment:
    """A deployment the stand-in runs: its backend's host (its port is the router's --upstream-port)."""

    deployment: str
    host: str
    wake_to: int = 1
    opted_in: bool = True
    service_id: str = ""
    stop: Callable[[], Awaitable[None]] | None = None
    starts: int = 0  # how many times its backend was started
    raised_at: float = 0.0  # time.monotonic() when the stand-in saw the desired count rise (for measurements)
    registered_at: float = 0.0  # and when the started backend was registered, healthy, in Cloud Map
    started: asyncio.Event = field(default_factory=asyncio.Event)


class PlatformStandIn:
    def __init__(
        self,
        endpoint: str,
        *,
        cluster: str,
        namespace: str,
        start_backend: StartBackend,
        start_delay_s: float = 0.5,
        dns: DemoDnsServer | None = None,
        service_prefix: str = "whaleray-",
        region: str = "us-east-1",
    ) -> None:
        self.region = region
        self.endpoint = endpoint
        self.cluster = cluster
        self.namespace = namespace
        self.start_backend = start_backend
        self.start_delay_s = start_delay_s
        self.dns = dns
        self.service_prefix = service_prefix
        self.deployments: dict[str, SleepingDeployment] = {}
        self._stack = contextlib.AsyncExitStack()
        self._ecs: Any = None
        self._registry: Any = None
        self._namespace_id = ""
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Clients, and the cluster, namespace and a task definition in moto (created once per moto server)."""
        session = get_session()
        config = AioConfig(inject_host_prefix=False)
        for name in ("ecs", "servicediscovery"):
            client = await self._stack.enter_async_context(
                session.create_client(name, endpoint_url=self.endpoint, region_name=self.region, config=config)
            )
            setattr(self, "_ecs" if name == "ecs" else "_registry", client)
        await self._ecs.create_cluster(clusterName=self.cluster)
        await self._ecs.register_task_definition(
            family="whaleray-standin", containerDefinitions=[{"name": "backend", "image": "standin", "memory": 64}]
        )
        namespaces = (await self._registry.list_namespaces())["Namespaces"]
        found = [namespace["Id"] for namespace in namespaces if namespace["Name"] == self.namespace]
        if not found:
            await self._registry.create_private_dns_namespace(Name=self.namespace, Vpc="vpc-standin")
            namespaces = (await self._registry.list_namespaces())["Namespaces"]
            found = [namespace["Id"] for namespace in namespaces if namespace["Name"] == self.namespace]
        self._namespace_id = found[0]
        self._task = asyncio.create_task(self._watch())

    async def add(self, deployment: SleepingDeployment, desired_count: int = 0) -> SleepingDeployment:
        """Create the deployment's Cloud Map service and ECS service (tagged when it opted in), asleep."""
        tags = [{"Key": WAKE_TAG, "Value": str(deployment.wake_to)}] if deployment.opted_in else []
        service = await self._registry.create_service(
            Name=deployment.deployment,
            NamespaceId=self._namespace_id,
            DnsConfig={"DnsRecords": [{"Type": "A", "TTL": 10}], "RoutingPolicy": "MULTIVALUE"},
            HealthCheckCustomConfig={"FailureThreshold": 1},
            Tags=tags,
        )
        deployment.service_id = service["Service"]["Id"]
        await self._ecs.create_service(
            cluster=self.cluster,
            serviceName=self.service_prefix + deployment.deployment,
            taskDefinition="whaleray-standin",
            desiredCount=desired_count,
            tags=[{"key": tag["Key"], "value": tag["Value"]} for tag in tags],
        )
        self.deployments[deployment.deployment] = deployment
        return deployment

    async def desired_count(self, deployment: str) -> int:
        answer = await self._ecs.describe_services(cluster=self.cluster, services=[self.service_prefix + deployment])
        return int(answer["services"][0]["desiredCount"])

    async def set_desired_count(self, deployment: str, count: int) -> None:
        """What Application Auto Scaling does when the idle alarm fires (moto cannot fire it)."""
        service = self.service_prefix + deployment
        await self._ecs.update_service(cluster=self.cluster, service=service, desiredCount=count)

    async def _watch(self) -> None:
        while True:
            for deployment in list(self.deployments.values()):
                try:
                    await self._follow(deployment, await self.desired_count(deployment.deployment))
                except Exception:  # the stand-in outlives a hiccup of moto's, as ECS would
                    log.exception("platform stand-in: following %s failed", deployment.deployment)
            await asyncio.sleep(0.05)

    async def _follow(self, deployment: SleepingDeployment, desired: int) -> None:
        if desired > 0 and deployment.stop is None:
            deployment.raised_at = time.monotonic()
            await asyncio.sleep(self.start_delay_s)  # the task starting
            if await self.desired_count(deployment.deployment) == 0:  # lowered meanwhile: ECS stops the task
                log.info("platform stand-in: %s lowered to 0 before its task started", deployment.deployment)
                return
            deployment.stop = await self.start_backend(deployment.host)
            deployment.starts += 1
            await self._registry.register_instance(
                ServiceId=deployment.service_id, InstanceId="task-1", Attributes={"AWS_INSTANCE_IPV4": deployment.host}
            )
            deployment.registered_at = time.monotonic()
            if self.dns is not None:
                self.dns.set_a(deployment.deployment, [deployment.host])
            deployment.started.set()
            log.info("platform stand-in: %s started on %s", deployment.deployment, deployment.host)
        elif desired == 0 and deployment.stop is not None:
            await self._registry.deregister_instance(ServiceId=deployment.service_id, InstanceId="task-1")
            if self.dns is not None:
                self.dns.remove(deployment.deployment)
            stop, deployment.stop = deployment.stop, None
            deployment.started.clear()
            await stop()
            log.info("platform stand-in: %s stopped", deployment.deployment)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for deployment in self.deployments.values():
            if deployment.stop is not None:
                await deployment.stop()
                deployment.stop = None
        await self._stack.aclose()
