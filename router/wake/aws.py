"""The platform on AWS (platform.py's Protocol), through aiobotocore: botocore's own request signing,
credential chain (the ECS task role's container credentials included), regional endpoints and retries, on the
aiohttp the router already runs. It is the one module that talks to AWS.

Every call has a connect and a read timeout and botocore's `standard` retry mode (exponential backoff with
jitter, three attempts); what still fails is raised as PlatformError. The router keeps serving every other
deployment meanwhile: nothing here runs on a request's path except for a deployment that is asleep.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Final

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError

from router import __version__
from router.settings import Settings
from router.wake.platform import WAKE_TAG, Instance, PlatformError, Usage, wake_count_of

log = logging.getLogger("router.wake")

METRIC_NAMESPACE: Final = "WhaleRay/Router"  # infra/modules/deployment's idle alarm reads these
REQUESTS_METRIC: Final = "Requests"
INFLIGHT_METRIC: Final = "InFlight"
DIMENSION: Final = "DeploymentId"
METRICS_PER_CALL: Final = 500  # PutMetricData takes up to 1,000 values a call


async def credentials_found(settings: Settings) -> bool:
    """Whether the SDK's credential chain yields credentials (environment, profile, the ECS task role...)."""
    session = _session(settings)
    try:
        return await session.get_credentials() is not None
    except (BotoCoreError, OSError, ValueError) as error:  # a broken profile, an unreachable credentials endpoint
        log.warning("aws credentials could not be read", extra={"detail": str(error)})
        return False


def _session(settings: Settings) -> AioSession:
    """A session whose credential chain ends before the EC2 instance role: on ECS the router acts as its task
    role (container credentials), never with the broader role of the instance it happens to run on."""
    session = get_session()
    if settings.aws_region:
        session.set_config_variable("region", settings.aws_region)
    session.get_component("credential_provider").remove("iam-role")
    return session


class AwsPlatform:
    """ECS, Cloud Map and CloudWatch clients for one router process, opened by `open` and closed by `close`.
    The calls it makes are the ones infra/iam.tf grants the router's task role."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stack = contextlib.AsyncExitStack()
        self._ecs: Any = None
        self._registry: Any = None
        self._cloudwatch: Any = None
        self._namespace_id = ""

    async def open(self) -> None:
        settings = self._settings
        session = _session(settings)
        endpoint = settings.aws_endpoint_url or None
        config = AioConfig(
            connect_timeout=2,
            read_timeout=5,
            retries={"mode": "standard", "max_attempts": 3},
            user_agent_extra=f"whaleray-router/{__version__}",  # the router's calls, told apart in CloudTrail
            # DiscoverInstances goes to a `data-` host of Cloud Map's endpoint; a single given endpoint has none.
            inject_host_prefix=endpoint is None,
        )
        clients = {}
        for name in ("ecs", "servicediscovery", "cloudwatch"):
            creating = session.create_client(name, endpoint_url=endpoint, config=config)
            clients[name] = await self._stack.enter_async_context(creating)
        self._ecs, self._registry, self._cloudwatch = clients["ecs"], clients["servicediscovery"], clients["cloudwatch"]

    async def close(self) -> None:
        await self._stack.aclose()

    async def list_deployments(self) -> dict[str, str]:
        namespace_id = await self._namespace()
        found: dict[str, str] = {}
        with _failures("ListServices"):
            paginator = self._registry.get_paginator("list_services")
            filters = [{"Name": "NAMESPACE_ID", "Values": [namespace_id], "Condition": "EQ"}]
            async for page in paginator.paginate(Filters=filters):
                for service in page.get("Services", []):
                    found[service["Name"]] = service["Arn"]
        return found

    async def _namespace(self) -> str:
        if not self._namespace_id:
            with _failures("ListNamespaces"):
                paginator = self._registry.get_paginator("list_namespaces")
                async for page in paginator.paginate():
                    for namespace in page.get("Namespaces", []):
                        if namespace["Name"] == self._settings.namespace:
                            self._namespace_id = namespace["Id"]
            if not self._namespace_id:
                raise PlatformError(f"no Cloud Map namespace named {self._settings.namespace}")
        return self._namespace_id

    async def wake_count(self, service_arn: str) -> int:
        with _failures("ListTagsForResource"):
            answer = await self._registry.list_tags_for_resource(ResourceARN=service_arn)
        tags = {tag["Key"]: tag["Value"] for tag in answer.get("Tags", [])}
        return wake_count_of(tags.get(WAKE_TAG))

    async def desired_count(self, service: str) -> int:
        with _failures("DescribeServices"):
            answer = await self._ecs.describe_services(cluster=self._settings.wake_cluster, services=[service])
        services = answer.get("services", [])
        if not services:
            raise PlatformError(f"no ECS service {service} in {self._settings.wake_cluster}")
        return int(services[0]["desiredCount"])

    async def set_desired_count(self, service: str, count: int) -> None:
        with _failures("UpdateService"):
            await self._ecs.update_service(cluster=self._settings.wake_cluster, service=service, desiredCount=count)

    async def healthy_instances(self, deployment: str) -> tuple[Instance, ...]:
        with _failures("DiscoverInstances"):
            answer = await self._registry.discover_instances(
                NamespaceName=self._settings.namespace, ServiceName=deployment, HealthStatus="HEALTHY"
            )
        found = []
        for instance in answer.get("Instances", []):
            attributes = instance.get("Attributes", {})
            host = attributes.get("AWS_INSTANCE_IPV4")
            port = attributes.get("AWS_INSTANCE_PORT")
            if host:
                found.append(Instance(host, int(port) if port and port.isdigit() else None))
        return tuple(found)

    async def report_usage(self, usage: dict[str, Usage]) -> None:
        data = []
        for deployment, seen in usage.items():
            dimensions = [{"Name": DIMENSION, "Value": deployment}]
            data.append(
                {"MetricName": REQUESTS_METRIC, "Dimensions": dimensions, "Value": seen.requests, "Unit": "Count"}
            )
            data.append(
                {"MetricName": INFLIGHT_METRIC, "Dimensions": dimensions, "Value": seen.inflight, "Unit": "Count"}
            )
        for start in range(0, len(data), METRICS_PER_CALL):
            with _failures("PutMetricData"):
                await self._cloudwatch.put_metric_data(
                    Namespace=METRIC_NAMESPACE, MetricData=data[start : start + METRICS_PER_CALL]
                )


@contextlib.contextmanager
def _failures(action: str) -> Iterator[None]:
    """Whatever the SDK raises (client errors, timeouts, connection failures) becomes PlatformError."""
    try:
        yield
    except PlatformError:
        raise
    except Exception as error:
        raise PlatformError(f"{action}: {error}") from error
