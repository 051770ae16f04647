"""infra/: the router's task definition against botocore's ECS model and the router's real settings parser,
the timings that must agree across the ALB, ECS and the router, and checkov. Terraform's own checks (fmt,
validate, `terraform test` with a mocked provider) run from scripts/check-terraform.sh in `make test`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import botocore.session
import hcl2
import pytest
from botocore.model import ListShape, MapShape, Shape, StructureShape
from botocore.validate import ParamValidator

from router.settings import build_parser, settings_from

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
TASK_DEFINITION: dict[str, Any] = json.loads((INFRA / "task-definition.json").read_text())
CONTAINER = TASK_DEFINITION["containerDefinitions"][0]
ENVIRONMENT = {item["name"]: item["value"] for item in CONTAINER["environment"]}
ECS = botocore.session.get_session().get_service_model("ecs")
REGISTER = ECS.operation_model("RegisterTaskDefinition").input_shape


def enum_violations(value: Any, shape: Shape, path: str = "") -> list[str]:
    """botocore's ParamValidator checks types and required members, not enums: walk the shape for them."""
    if isinstance(shape, StructureShape):
        return [
            problem
            for name, member in value.items()
            if name in shape.members
            for problem in enum_violations(member, shape.members[name], f"{path}.{name}")
        ]
    if isinstance(shape, ListShape):
        return [
            problem for i, item in enumerate(value) for problem in enum_violations(item, shape.member, f"{path}[{i}]")
        ]
    if isinstance(shape, MapShape):
        return [
            problem for key, item in value.items() for problem in enum_violations(item, shape.value, f"{path}.{key}")
        ]
    enum = getattr(shape, "enum", None)
    if enum and value not in enum:
        return [f"{path}: {value!r} is not one of {enum}"]
    return []


def test_task_definition_is_a_valid_register_task_definition_request() -> None:
    report = ParamValidator().validate(TASK_DEFINITION, REGISTER)
    assert not report.has_errors(), report.generate_report()
    assert enum_violations(TASK_DEFINITION, REGISTER) == []


def test_the_enum_check_can_fail() -> None:
    broken = json.loads(json.dumps(TASK_DEFINITION))
    broken["networkMode"] = "overlay"
    broken["containerDefinitions"][0]["logConfiguration"]["logDriver"] = "stdout"
    assert len(enum_violations(broken, REGISTER)) == 2


def test_environment_is_settings_the_router_knows() -> None:
    settings = settings_from(build_parser().parse_args([]), ENVIRONMENT)  # unknown or bad values raise
    assert [str(resolver) for resolver in settings.resolvers] == ["169.254.169.253:53"]  # the VPC resolver
    assert settings.namespace == "whaleray.local"
    assert settings.upstream_port == 3000
    assert CONTAINER["portMappings"][0]["containerPort"] == settings.port
    assert str(settings.admin_port) in CONTAINER["healthCheck"]["command"][-1]  # the check calls the admin port
    assert settings.workers == 0  # auto: the task's CPU quota


def test_container_hardening() -> None:
    assert CONTAINER["readonlyRootFilesystem"] is True
    assert CONTAINER["user"].split(":")[0] not in ("0", "root")
    assert CONTAINER["healthCheck"]["command"][:2] == ["CMD", "python"]  # no curl in the slim image
    assert {"name": "nofile", "softLimit": 65536, "hardLimit": 65536} in CONTAINER["ulimits"]
    assert CONTAINER["logConfiguration"]["logDriver"] == "awslogs"
    assert CONTAINER["linuxParameters"]["capabilities"]["drop"] == ["ALL"]  # as the compose file does


def terraform_defaults(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        blocks = hcl2.load(handle)["variable"]
    defaults = {}
    for block in blocks:
        for name, body in block.items():
            value = body.get("default")
            defaults[name.strip('"')] = value.strip('"') if isinstance(value, str) else value
    return defaults


def test_drain_deregistration_stop_and_keep_alive_timings_agree() -> None:
    """ECS's order, not Kubernetes': ECS deregisters the target, waits until the ALB reports it unused (in-flight
    requests done, or deregistration_delay passed), and only then sends SIGTERM; SIGKILL follows stopTimeout
    later. By SIGTERM no new request is on its way, so the router's drain is for stragglers, not for the ALB."""
    tf = terraform_defaults(INFRA / "variables.tf")
    drain_delay = float(ENVIRONMENT["WHALERAY_DRAIN_DELAY"])
    drain_timeout = float(ENVIRONMENT["WHALERAY_DRAIN_TIMEOUT"])
    keepalive = float(ENVIRONMENT["WHALERAY_CLIENT_KEEPALIVE_TIMEOUT"])
    stop_timeout = CONTAINER["stopTimeout"]
    # The ALB must close idle connections before the router does, or it reuses one the router just closed.
    assert tf["alb_idle_timeout"] < keepalive
    # Waiting for traffic that has already stopped only delays the exit: a short margin, not health-check rounds.
    assert 0 < drain_delay <= 5
    assert drain_delay < tf["health_check_interval"] * tf["health_check_unhealthy_threshold"]
    # ECS kills the container stopTimeout after SIGTERM: the whole drain must fit, with room to exit.
    assert drain_delay + drain_timeout < stop_timeout <= 120
    # A request still running at SIGTERM has outlived deregistration_delay: it gets at least as long again.
    assert drain_timeout >= tf["deregistration_delay"]


def test_terraform_admits_the_mirrored_provider() -> None:
    for versions in [INFRA / "versions.tf", INFRA / "modules" / "deployment" / "versions.tf"]:
        text = versions.read_text()
        assert re.search(r'version\s*=\s*">= 5\.60, < 6\.0"', text), versions  # admits 5.100.0
        assert text.count("source") == 1  # the AWS provider only: nothing else to download


def test_checkov_finds_no_failure_and_every_skip_has_a_reason() -> None:
    checkov = ROOT / ".ci-tools" / "bin" / "checkov"
    if not checkov.exists():
        pytest.fail(f"{checkov} is missing: `make tools` installs it (make test does)")
    for directory, framework in [(INFRA, "terraform"), (ROOT / "docker", "dockerfile")]:
        result = subprocess.run(
            [str(checkov), "-d", str(directory), "--framework", framework, "--skip-download", "--quiet", "-o", "json"],
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
        )
        report = json.loads(result.stdout)
        summary = report["summary"] if isinstance(report, dict) else report[0]["summary"]
        assert summary["failed"] == 0, result.stdout[:4000]
    skips = [line for path in INFRA.rglob("*.tf") for line in path.read_text().splitlines() if "checkov:skip" in line]
    assert skips
    for line in skips:
        assert re.search(r"#checkov:skip=CKV2?_AWS_\d+:\S.{20,}", line), f"a skip without a real reason: {line}"


def test_readme_tables_match_the_modules() -> None:
    readme = (INFRA / "README.md").read_text()
    for module in [INFRA, INFRA / "modules" / "deployment"]:
        for kind in ("variables", "outputs"):
            with (module / f"{kind}.tf").open() as handle:
                for block in hcl2.load(handle)[kind.rstrip("s")]:
                    for name in block:
                        assert f"| `{name.strip(chr(34))}` |" in readme, f"{module.name}: {name}"


def tf_blocks(path: Path, kind: str) -> dict[str, Any]:
    """`kind` blocks ("resource", "output"...) of one .tf file by name; resources as "type.name"."""
    found: dict[str, Any] = {}
    with path.open() as handle:
        for block in hcl2.load(handle).get(kind, []):
            for key, body in block.items():
                if kind == "resource":
                    for name, resource in body.items():
                        found[f"{key.strip(chr(34))}.{name.strip(chr(34))}"] = resource
                else:
                    found[key.strip(chr(34))] = body
    return found


def test_services_wait_for_the_capacity_provider_association() -> None:
    """ECS refuses a service whose capacity provider is not yet associated with the cluster ("capacity
    provider not associated"), and destroying the association under a service fails the same way. Terraform
    orders them only through references: the router's service depends on the association, and the outputs
    deployments are built from (the cluster name, the capacity provider) are read from it, not from the
    cluster or the provider themselves."""
    association = "aws_ecs_cluster_capacity_providers.this"
    router = tf_blocks(INFRA / "router.tf", "resource")["aws_ecs_service.router"]
    assert f"${{{association}}}" in router["depends_on"]
    outputs = tf_blocks(INFRA / "outputs.tf", "output")
    for name in ("cluster_name", "capacity_provider_name"):
        assert f"{association}." in outputs[name]["value"], name
    deployment = tf_blocks(INFRA / "modules" / "deployment" / "main.tf", "resource")["aws_ecs_service.this"]
    assert deployment["cluster"] == "${var.cluster_name}"
    assert [strategy["capacity_provider"] for strategy in deployment["capacity_provider_strategy"]] == [
        "${var.capacity_provider_name}"
    ]
    example = (INFRA / "examples" / "demo-backend" / "main.tf").read_text()
    assert "cluster_name             = module.platform.cluster_name" in example
    assert "capacity_provider_name   = module.platform.capacity_provider_name" in example
