"""Terraform applied, not only planned: the root module and every example applied to AWS's APIs on loopback
(moto's server, with the gaps of tests/moto_gaps.py filled), read back through the API, then destroyed, and
the server listed back empty of the stack (`make infra-apply`, part of `make test`).

A plan cannot show values the API rejects, references known only after apply, ordering mistakes between
resources or a destroy that cannot run in order; this can. Every call goes to 127.0.0.1: the provider's
endpoints all name the local server and its credentials are static test values. `max_retries` is low, so an
operation moto lacks fails at once instead of being retried for minutes, and every terraform command has a
time bound. A second plan is not asserted empty: moto drops some fields the provider then wants to set again.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import moto as moto_package
import pytest

from tests.support import moto_server

COMMAND_BOUND_S = 420  # one apply or destroy; far above what they take (see infra/README.md)
# Bounded per command (COMMAND_BOUND_S) and per test: an apply, the read-back and a destroy.
pytestmark = [pytest.mark.terraform, pytest.mark.timeout(3 * COMMAND_BOUND_S)]

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
REGION = "us-east-1"
# Every service the modules touch; the provider sends each to the local server.
SERVICES = (
    "applicationautoscaling", "autoscaling", "cloudwatch", "ec2", "ecr", "ecs", "elbv2", "iam", "kms", "logs",
    "s3", "servicediscovery", "ssm", "sts",
)  # fmt: skip
DEMO_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/whaleray-router:0.1.0-demo"


def test_moto_is_the_version_whose_gaps_are_filled() -> None:
    """tests/moto_gaps.py fills the gaps of one moto release: pinned in the test extra, checked here."""
    [pin] = [line for line in PYPROJECT["project"]["optional-dependencies"]["test"] if line.startswith("moto")]
    assert moto_package.__version__ == pin.split("==")[1]


def missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI never skips the apply tests)", pytrace=False)
    pytest.skip(reason)


def plugin_dir() -> str | None:
    """The local provider mirror, found as scripts/check-terraform.sh finds it."""
    if os.environ.get("TF_PLUGIN_DIR"):
        return os.environ["TF_PLUGIN_DIR"]
    for base in ("/opt", "/usr/local/share", "/usr/share", str(Path.home() / ".terraform.d")):
        for binary in sorted(Path(base).glob("**/registry.terraform.io/hashicorp/aws/*/*/terraform-provider-aws_v*")):
            return str(binary.parents[5])
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Moto:
    url: str

    def client(self, service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


@pytest.fixture
def moto() -> Iterator[Moto]:
    """A fresh server per stack: what one stack leaves cannot hide in another's listing."""
    # AWS's managed policies (the ECS roles attach three) are loaded only when asked for.
    with moto_server({"MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}) as url:
        yield Moto(url)


class Stack:
    """One Terraform working directory in a temporary copy of infra/, its provider pointed at moto."""

    def __init__(self, tmp_path: Path, moto: Moto, directory: str) -> None:
        if shutil.which("terraform") is None:
            missing("terraform is not installed")
        copy = tmp_path / "infra"
        shutil.copytree(ROOT / "infra", copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
        self.dir = copy / directory
        endpoints = "\n".join(f'    {service} = "{moto.url}"' for service in SERVICES)
        (self.dir / "moto_provider.tf").write_text(
            f"""provider "aws" {{
  region                      = "{REGION}"
  access_key                  = "testing"
  secret_key                  = "testing"
  max_retries                 = 2
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
  endpoints {{
{endpoints}
  }}
}}
"""
        )
        mirror = plugin_dir()
        self.env = {
            **os.environ,
            "TF_CLI_CONFIG_FILE": "/dev/null",
            "TF_IN_AUTOMATION": "1",
            # The provider must never find real credentials or a real region on this machine.
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        }  # fmt: skip
        self.terraform("init", "-backend=false", "-input=false", *([f"-plugin-dir={mirror}"] if mirror else []))

    def terraform(self, *args: str) -> str:
        try:
            result = subprocess.run(
                ["terraform", *args, "-no-color"], cwd=self.dir, env=self.env, capture_output=True, text=True,
                timeout=COMMAND_BOUND_S, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired as hung:
            raise AssertionError(f"terraform {args[0]} hung for {COMMAND_BOUND_S} s: {hung.stdout!r}") from None
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"terraform {' '.join(args)} exited {result.returncode}:\n{output[-6000:]}"
        assert "panic:" not in output and "crash" not in output.lower(), output[-6000:]
        return output

    def apply(self, *variables: str) -> dict[str, Any]:
        flags = [f"-var={variable}" for variable in variables]
        self.variables = flags
        self.terraform("apply", "-auto-approve", "-input=false", *flags)
        outputs = json.loads(self.terraform("output", "-json"))
        return {name: value["value"] for name, value in outputs.items()}

    def destroy(self) -> None:
        self.terraform("destroy", "-auto-approve", "-input=false", *self.variables)


# --- reading the stack back ----------------------------------------------------------------------------------


def path_patterns(condition: dict[str, Any]) -> list[str]:
    """A rule condition's path patterns, in either of the API's two shapes (the provider sends the newer)."""
    if condition["Field"] != "path-pattern":
        return []
    return list(condition.get("PathPatternConfig", {}).get("Values") or condition.get("Values") or [])


def services_rule(moto: Moto, listener_arns: list[str]) -> dict[str, Any]:
    elbv2 = moto.client("elbv2")
    rules = [rule for arn in listener_arns for rule in elbv2.describe_rules(ListenerArn=arn)["Rules"]]
    matching = [rule for rule in rules if any(path_patterns(c) == ["/services/*"] for c in rule["Conditions"])]
    assert len(matching) == 1, json.dumps([rule["Conditions"] for rule in rules])
    return matching[0]


def check_router_platform(moto: Moto, name: str = "whaleray") -> str:
    """Read the platform back; the capacity provider's name, to check its removal after the destroy."""
    elbv2, ecs = moto.client("elbv2"), moto.client("ecs")
    [alb] = elbv2.describe_load_balancers(Names=[f"{name}-alb"])["LoadBalancers"]
    listeners = elbv2.describe_listeners(LoadBalancerArn=alb["LoadBalancerArn"])["Listeners"]
    [target_group] = elbv2.describe_target_groups(Names=[f"{name}-router"])["TargetGroups"]
    rule = services_rule(moto, [listener["ListenerArn"] for listener in listeners])
    [action] = rule["Actions"]
    assert (action["Type"], action["TargetGroupArn"]) == ("forward", target_group["TargetGroupArn"])
    assert (target_group["HealthCheckPath"], target_group["Matcher"]["HttpCode"]) == ("/health", "200")
    assert (target_group["HealthCheckIntervalSeconds"], target_group["HealthCheckTimeoutSeconds"]) == (5, 3)
    attributes = {
        attribute["Key"]: attribute["Value"]
        for attribute in elbv2.describe_target_group_attributes(TargetGroupArn=target_group["TargetGroupArn"])[
            "Attributes"
        ]
    }
    assert attributes["deregistration_delay.timeout_seconds"] == "20"
    assert attributes["slow_start.duration_seconds"] == "60"

    [service] = ecs.describe_services(cluster=f"{name}-cluster", services=[f"{name}-router"])["services"]
    assert service["desiredCount"] == 2
    assert [balancer["targetGroupArn"] for balancer in service["loadBalancers"]] == [target_group["TargetGroupArn"]]
    [cluster] = ecs.describe_clusters(clusters=[f"{name}-cluster"])["clusters"]
    [provider] = ecs.describe_capacity_providers(capacityProviders=cluster["capacityProviders"])["capacityProviders"]
    assert provider["autoScalingGroupProvider"]["managedScaling"]["targetCapacity"] == 90
    assert provider["autoScalingGroupProvider"]["managedTerminationProtection"] == "DISABLED"
    # moto keeps neither the service's capacity provider strategy nor its placement strategies (it drops
    # them from DescribeServices); what it does keep of them is checked where it is stored:
    definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    [container] = definition["containerDefinitions"]
    assert (container["user"], container["readonlyRootFilesystem"]) == ("10001:10001", True)
    assert container["image"].endswith("/whaleray-router:0.1.0") or container["image"] == DEMO_IMAGE

    [namespace] = moto.client("servicediscovery").list_namespaces()["Namespaces"]
    assert (namespace["Name"], namespace["Type"]) == ("whaleray.local", "DNS_PRIVATE")

    ecr = moto.client("ecr")
    [repository] = ecr.describe_repositories(repositoryNames=[f"{name}-router"])["repositories"]
    assert repository["imageTagMutability"] == "IMMUTABLE"
    assert repository["imageScanningConfiguration"] == {"scanOnPush": True}
    assert repository["encryptionConfiguration"]["encryptionType"] == "KMS"
    lifecycle = json.loads(ecr.get_lifecycle_policy(repositoryName=f"{name}-router")["lifecyclePolicyText"])
    assert [rule["selection"]["tagStatus"] for rule in lifecycle["rules"]] == ["untagged", "any"]

    check_router_roles(moto, name, service)
    return str(provider["name"])


def role_policies(iam: Any, role_name: str) -> tuple[list[str], list[str]]:
    attached = [
        policy["PolicyArn"] for policy in iam.list_attached_role_policies(RoleName=role_name)["AttachedPolicies"]
    ]
    return attached, iam.list_role_policies(RoleName=role_name)["PolicyNames"]


def check_wake_policy(iam: Any, task_role: str) -> None:
    """UpdateService only on the platform cluster's services that carry the opt-in tag; metrics only into the
    router's namespace; registry lookups only in the platform's namespace."""
    document = iam.get_role_policy(RoleName=task_role, PolicyName="wake-sleeping-deployments")["PolicyDocument"]
    statements = {statement["Sid"]: statement for statement in document["Statement"]}
    wake = statements["WakeOptedInServicesOfThisCluster"]
    assert sorted(as_list(wake["Action"])) == ["ecs:DescribeServices", "ecs:UpdateService"]
    assert as_list(wake["Resource"]) == [f"arn:aws:ecs:{REGION}:123456789012:service/whaleray-cluster/*"]
    assert wake["Condition"] == {"Null": {"aws:ResourceTag/whaleray:wake": "false"}}
    publish = statements["PublishTheIdleSignal"]
    assert publish["Condition"] == {"StringEquals": {"cloudwatch:namespace": "WhaleRay/Router"}}
    discover = statements["FindTheHealthyInstancesOfThisNamespace"]
    assert discover["Condition"] == {"StringEquals": {"servicediscovery:NamespaceName": "whaleray.local"}}
    actions = sorted(action for statement in statements.values() for action in as_list(statement["Action"]))
    assert actions == [
        "cloudwatch:PutMetricData", "ecs:DescribeServices", "ecs:UpdateService", "servicediscovery:DiscoverInstances",
        "servicediscovery:ListNamespaces", "servicediscovery:ListServices", "servicediscovery:ListTagsForResource",
    ]  # fmt: skip


def as_list(value: str | list[str]) -> list[str]:
    """IAM writes a lone action or resource as a string."""
    return [value] if isinstance(value, str) else value


def check_router_roles(moto: Moto, name: str, service: dict[str, Any]) -> None:
    """Least privilege: the router's task role may only wake opted-in deployments (routing calls no AWS API; DNS
    is not one); its execution role pulls the image and writes logs, through AWS's managed policy for exactly
    that."""
    iam, ecs = moto.client("iam"), moto.client("ecs")
    definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    task_role = definition["taskRoleArn"].rsplit("/", 1)[1]
    execution_role = definition["executionRoleArn"].rsplit("/", 1)[1]
    assert role_policies(iam, task_role) == ([], ["wake-sleeping-deployments"])
    check_wake_policy(iam, task_role)
    assert role_policies(iam, execution_role) == (
        ["arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"],
        [],
    )
    trust = iam.get_role(RoleName=task_role)["Role"]["AssumeRolePolicyDocument"]
    [statement] = trust["Statement"]
    assert statement["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    assert statement["Condition"]["ArnLike"]["aws:SourceArn"].startswith(f"arn:aws:ecs:{REGION}:")


def check_sleeping_deployment(moto: Moto) -> None:
    """The example's `sleepy`: asleep, opted in where the router (Cloud Map) and IAM (ECS) look, and put back to
    sleep by its idle alarm through Application Auto Scaling."""
    discovery, ecs = moto.client("servicediscovery"), moto.client("ecs")
    [summary] = [service for service in discovery.list_services()["Services"] if service["Name"] == "sleepy"]
    tags = discovery.list_tags_for_resource(ResourceARN=summary["Arn"])["Tags"]
    assert {"Key": "whaleray:wake", "Value": "1"} in tags
    [service] = ecs.describe_services(cluster="whaleray-cluster", services=["whaleray-sleepy"], include=["TAGS"])[
        "services"
    ]
    assert service["desiredCount"] == 0 and {"key": "whaleray:wake", "value": "1"} in service["tags"]
    scaling = moto.client("application-autoscaling")
    [target] = scaling.describe_scalable_targets(
        ServiceNamespace="ecs", ResourceIds=["service/whaleray-cluster/whaleray-sleepy"]
    )["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 2)  # max(wake_to, desired_count)
    [policy] = scaling.describe_scaling_policies(ServiceNamespace="ecs", ResourceId=target["ResourceId"])[
        "ScalingPolicies"
    ]
    [alarm] = moto.client("cloudwatch").describe_alarms(AlarmNames=["whaleray-sleepy-idle"])["MetricAlarms"]
    assert alarm["AlarmActions"] == [policy["PolicyARN"]]
    assert (alarm["EvaluationPeriods"], alarm["TreatMissingData"]) == (15, "breaching")
    metrics = {query["Id"]: query for query in alarm["Metrics"]}
    assert metrics["activity"]["Expression"] == "FILL(requests, 0) + FILL(inflight, 0)"
    assert metrics["requests"]["MetricStat"]["Metric"]["Namespace"] == "WhaleRay/Router"


def check_empty(moto: Moto, capacity_provider: str) -> None:
    """Nothing of the stack is left: every kind of resource it creates, listed back."""
    ecs, elbv2 = moto.client("ecs"), moto.client("elbv2")
    # A deleted cluster is INACTIVE, not gone at once (AWS documents this; moto keeps listing it).
    clusters = ecs.list_clusters()["clusterArns"]
    assert [cluster["status"] for cluster in ecs.describe_clusters(clusters=clusters)["clusters"]] in ([], ["INACTIVE"])
    assert ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"] == []
    assert ecs.describe_capacity_providers(capacityProviders=[capacity_provider])["capacityProviders"] == []
    assert elbv2.describe_load_balancers()["LoadBalancers"] == []
    assert elbv2.describe_target_groups()["TargetGroups"] == []
    discovery = moto.client("servicediscovery")
    assert discovery.list_namespaces()["Namespaces"] == []
    assert discovery.list_services()["Services"] == []
    assert moto.client("ecr").describe_repositories()["repositories"] == []
    assert moto.client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"] == []
    assert (
        moto.client("application-autoscaling").describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"]
        == []
    )
    assert moto.client("cloudwatch").describe_alarms()["MetricAlarms"] == []
    assert moto.client("cloudwatch").list_dashboards()["DashboardEntries"] == []
    assert moto.client("logs").describe_log_groups()["logGroups"] == []
    iam = moto.client("iam")
    roles = [
        role["RoleName"] for role in iam.list_roles()["Roles"] if not role["Path"].startswith("/aws-service-role/")
    ]
    assert roles == []
    assert iam.list_instance_profiles()["InstanceProfiles"] == []
    ec2 = moto.client("ec2")
    assert ec2.describe_launch_templates()["LaunchTemplates"] == []
    assert ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["false"]}])["Vpcs"] == []
    assert (
        ec2.describe_nat_gateways(Filters=[{"Name": "state", "Values": ["available", "pending"]}])["NatGateways"] == []
    )


# --- the stacks ------------------------------------------------------------------------------------------------


def test_root_module_applies_reads_back_and_destroys(tmp_path: Path, moto: Moto) -> None:
    stack = Stack(tmp_path, moto, ".")
    outputs = stack.apply("create_vpc=true")
    assert outputs["router_image"] == f"{outputs['ecr_repository_url']}:0.1.0"  # the image defaults to the repository
    assert outputs["cluster_name"] == "whaleray-cluster"
    capacity_provider = check_router_platform(moto)
    stack.destroy()
    check_empty(moto, capacity_provider)


def test_demo_backend_example_applies_reads_back_and_destroys(tmp_path: Path, moto: Moto) -> None:
    stack = Stack(tmp_path, moto, "examples/demo-backend")
    outputs = stack.apply(f"router_image={DEMO_IMAGE}")
    assert outputs["try"].startswith("curl -s http://") and outputs["try"].endswith("/services/hello/")
    capacity_provider = check_router_platform(moto)
    discovery = moto.client("servicediscovery")
    [hello] = [service for service in discovery.list_services()["Services"] if service["Name"] == "hello"]
    config = discovery.get_service(Id=hello["Id"])["Service"]
    assert config["DnsConfig"]["RoutingPolicy"] == "MULTIVALUE"
    # The example's deployment runs in awsvpc mode: an A record per task, its own address (TTL 10, as Cloud Map).
    assert config["DnsConfig"]["DnsRecords"] == [{"Type": "A", "TTL": 10}]
    [router] = moto.client("ecs").describe_services(cluster="whaleray-cluster", services=["whaleray-router"])[
        "services"
    ]
    definition = moto.client("ecs").describe_task_definition(taskDefinition=router["taskDefinition"])["taskDefinition"]
    environment = {pair["name"]: pair["value"] for pair in definition["containerDefinitions"][0]["environment"]}
    assert environment.get("WHALERAY_DISCOVERY", "a") == "a"  # the router asks for A records, as registered
    assert config["HealthCheckCustomConfig"] == {"FailureThreshold": 1}
    ecs = moto.client("ecs")
    [backend] = ecs.describe_services(cluster="whaleray-cluster", services=["whaleray-hello"])["services"]
    assert [registry["registryArn"] for registry in backend["serviceRegistries"]] == [config["Arn"]]
    check_sleeping_deployment(moto)
    stack.destroy()
    check_empty(moto, capacity_provider)
