"""The image, built on a real engine and run as ECS runs it (`make image-test` builds it and runs these).

The router container gets infra/task-definition.json's command, environment, user, read-only root, dropped
capabilities, `nofile` limit and stop timeout, read from that file, with two exceptions:
- the resolver is this test's DNS server, in a container of its own (never the VPC's link-local resolver
  address, nor the machine's nameserver, which the image's default of /etc/resolv.conf would reach);
- `nofile` is capped at this machine's hard limit, above which the runtime refuses to start the container.
The DNS server and the backend run the image's demo stage on a network of their own; the router resolves the
backend's name through its own resolver, as on ECS. Only the published ports on 127.0.0.1 are reached from here.
"""

from __future__ import annotations

import json
import resource
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.containers import DOCKER, docker, engine_or_fail, http_get, image_under_test, wait_until

# Builds and containers take longer than the suite's 60 s a test; each command is bounded on its own.
pytestmark = [pytest.mark.container, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
TASK_DEFINITION: dict[str, Any] = json.loads((ROOT / "infra" / "task-definition.json").read_text())
ROUTER_CONTAINER: dict[str, Any] = TASK_DEFINITION["containerDefinitions"][0]
DNS_PORT = 5353  # the demo DNS server runs as the image's non-root user: no port below 1024


@dataclass
class RunningRouter:
    container: str
    proxy: str  # http://127.0.0.1:PORT
    admin: str


def task_definition_run_flags(resolver: str) -> list[str]:
    """`docker run` flags for what the task definition says about the router container."""
    container = ROUTER_CONTAINER
    flags = ["--user", container["user"], "--stop-timeout", str(container["stopTimeout"])]
    if container["readonlyRootFilesystem"]:
        flags.append("--read-only")
    for capability in container["linuxParameters"]["capabilities"]["drop"]:
        flags += ["--cap-drop", capability]
    if container["linuxParameters"].get("initProcessEnabled"):
        flags.append("--init")
    hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for limit in container["ulimits"]:
        soft, hard = (min(limit[key], hard_limit) for key in ("softLimit", "hardLimit"))
        flags += ["--ulimit", f"{limit['name']}={soft}:{hard}"]
    for variable in container["environment"]:
        value = resolver if variable["name"] == "WHALERAY_RESOLVER" else variable["value"]
        flags += ["--env", f"{variable['name']}={value}"]
    for mapping in container["portMappings"]:
        flags += ["--publish", f"127.0.0.1::{mapping['containerPort']}"]
    admin_port = next(v["value"] for v in container["environment"] if v["name"] == "WHALERAY_ADMIN_PORT")
    return [*flags, "--publish", f"127.0.0.1::{admin_port}"]


def published(container: str, port: int | str) -> str:
    host_port = docker("port", container, f"{port}/tcp").splitlines()[0].rsplit(":", 1)[1]
    return f"http://127.0.0.1:{host_port}"


def address_of(container: str, network: str) -> str:
    return docker(
        "inspect", "--format", f"{{{{(index .NetworkSettings.Networks {json.dumps(network)}).IPAddress}}}}", container
    )


def answers(url: str, status: int) -> bool:
    try:
        return http_get(url)[0] == status
    except OSError:
        return False


@pytest.fixture(scope="module")
def router_container(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRouter]:
    engine_or_fail()
    image, demo = image_under_test("WHALERAY_TEST_IMAGE"), image_under_test("WHALERAY_TEST_DEMO_IMAGE")
    name = f"whaleray-image-test-{int(time.time())}"
    docker("network", "create", name)
    started: list[str] = []

    def run(*args: str) -> str:
        container = docker("run", "--detach", "--network", name, *args)
        started.append(container)
        return container

    try:
        backend = run(
            "--read-only", "--cap-drop", "ALL", "--entrypoint", "python", demo,
            "-m", "whaleray_demo.backend", "--name", "hello-backend", "--port", "3000",
        )  # fmt: skip
        zone = tmp_path_factory.mktemp("zone") / "whaleray.local.zone"
        zone.write_text(
            f"$ORIGIN whaleray.local.\n$TTL 10\nhello IN A {address_of(backend, name)}\n"
        )  # fmt: skip
        zone.chmod(0o644)
        zone.parent.chmod(0o755)
        dns = run(
            "--read-only", "--cap-drop", "ALL", "--volume", f"{zone.parent}:/zone:ro", "--entrypoint", "python", demo,
            "-m", "whaleray_demo.dns", "--zone-file", "/zone/whaleray.local.zone", "--port", str(DNS_PORT),
        )  # fmt: skip
        command = ROUTER_CONTAINER.get("command", [])
        router = run(*task_definition_run_flags(f"{address_of(dns, name)}:{DNS_PORT}"), image, *command)
        running = RunningRouter(router, published(router, 8080), published(router, 9901))
        # Ready: with --workers, every worker listens and its resolver has answered.
        wait_until(lambda: answers(f"{running.admin}/ready", 200), seconds=30)
        yield running
    finally:
        for container in reversed(started):
            subprocess.run([DOCKER, "rm", "--force", container], capture_output=True, check=False)
        subprocess.run([DOCKER, "network", "rm", name], capture_output=True, check=False)


def test_version_says_compiled() -> None:
    engine_or_fail()
    version = docker("run", "--rm", image_under_test("WHALERAY_TEST_IMAGE"), "--version")
    assert "(compiled build, Python 3.11." in version


def test_runtime_image_has_no_compiler_no_demo_and_adds_no_wheel() -> None:
    engine_or_fail()
    image = image_under_test("WHALERAY_TEST_IMAGE")
    probe = "command -v gcc cc c99 || true; python -c 'import whaleray_demo' 2>/dev/null && echo demo-importable; true"
    assert docker("run", "--rm", "--entrypoint", "sh", image, "-c", probe) == ""
    wheels = "find / -xdev -name '*.whl' 2>/dev/null | sort"
    base = image_under_test("WHALERAY_TEST_BASE_IMAGE")
    in_base = set(docker("run", "--rm", "--entrypoint", "sh", base, "-c", wheels).split())
    in_image = set(docker("run", "--rm", "--entrypoint", "sh", image, "-c", wheels).split())
    assert in_image <= in_base  # the base's own (Debian's pip and setuptools for venvs), none of ours


def test_router_container_routes_through_its_own_resolver(router_container: RunningRouter) -> None:
    status, body = http_get(f"{router_container.proxy}/services/hello/api/users?page=2")
    assert status == 200
    echoed = json.loads(body)
    assert (echoed["backend"], echoed["path"], echoed["query"]) == ("hello-backend", "/api/users", "page=2")
    status, body = http_get(f"{router_container.proxy}/services/ghost/")
    assert (status, json.loads(body)["code"]) == (502, "deployment_not_found")


def test_router_container_admin_answers(router_container: RunningRouter) -> None:
    assert http_get(f"{router_container.admin}/health")[0] == 200
    assert http_get(f"{router_container.admin}/ready")[0] == 200
    status, metrics = http_get(f"{router_container.admin}/metrics")
    assert status == 200
    assert b"whaleray_requests_total" in metrics


def test_image_healthcheck_turns_healthy(router_container: RunningRouter) -> None:
    def health() -> str:
        return docker("inspect", "--format", "{{.State.Health.Status}}", router_container.container)

    wait_until(lambda: health() == "healthy", seconds=45)  # the first check runs after one 10 s interval


def test_docker_stop_drains_and_exits_zero_within_the_stop_timeout(router_container: RunningRouter) -> None:
    """Last in this file: it stops the module's router."""
    stop_timeout = ROUTER_CONTAINER["stopTimeout"]
    started = time.monotonic()
    docker("stop", "--time", str(stop_timeout), router_container.container)
    took = time.monotonic() - started
    state = json.loads(docker("inspect", "--format", "{{json .State}}", router_container.container))
    assert state["ExitCode"] == 0
    assert took < stop_timeout
    messages = [json.loads(line).get("message") for line in logs(router_container.container) if line.startswith("{")]
    assert "draining" in messages
    assert "drained" in messages


def logs(container: str) -> list[str]:
    result = subprocess.run([DOCKER, "logs", container], capture_output=True, text=True, check=True, timeout=30)
    return (result.stdout + result.stderr).splitlines()
