"""The container image and the compose demo, checked without a Docker engine.

No Docker engine runs on development or CI machines, so the compose file and the Dockerfile are checked
statically (the real settings parser, the zone file, `docker-compose config`, hadolint, checkov), and the
demo's routing is proven by serving the same zone file from the project's DNS server and routing through the
real router to local backends of the same names (addresses moved onto 127.0.0.0/8: tests never dial others).
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from dnslib import QTYPE, RR

from router.app import Router
from router.settings import build_parser, settings_from
from tests.support import free_port, router_settings
from whaleray_demo.backend import start_backend
from whaleray_demo.dns import DemoDnsServer

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
TOOLS = ROOT / ".ci-tools" / "bin"  # installed by `make tools` (make test runs it)
COMPOSE: dict[str, Any] = yaml.safe_load((DOCKER / "docker-compose.yml").read_text())
ZONE = (DOCKER / "whaleray.local.zone").read_text()
BACKENDS = ("hello", "api", "api-2")


PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT: dict[str, Any] = PYPROJECT["project"]
BUILD_REQUIRES: list[str] = PYPROJECT["build-system"]["requires"]


def requirement_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement)[0].lower()


def locked(lock_file: str) -> set[str]:
    """The names a lock file in docker/ pins, after checking that every pin carries a hash."""
    lock = (DOCKER / lock_file).read_text()
    assert all("--hash=sha256:" in block for block in lock.split("==")[1:]), f"{lock_file}: a pin without a hash"
    return {line.split("==")[0] for line in lock.splitlines() if "==" in line and not line.startswith("#")}


def service_address(name: str) -> str:
    return str(COMPOSE["services"][name]["networks"]["cloudmap"]["ipv4_address"])


def zone_records() -> list[tuple[str, str]]:
    return [
        (str(record.rname).removesuffix(".whaleray.local."), str(record.rdata))
        for record in RR.fromZone(ZONE)
        if record.rtype == QTYPE.A
    ]


def backend_name(service: str) -> str:
    entrypoint = COMPOSE["services"][service]["entrypoint"]
    return str(entrypoint[entrypoint.index("--name") + 1])


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: `make tools` installs it (make test does)")
    return str(path)


# --- the compose file --------------------------------------------------------------------------------------


def test_router_environment_is_settings_the_router_knows() -> None:
    environment = {key: str(value) for key, value in COMPOSE["services"]["router"]["environment"].items()}
    settings = settings_from(build_parser().parse_args([]), environment)  # raises on an unknown or bad value
    assert settings.resolvers[0].host == service_address("dns")
    dns_entrypoint = COMPOSE["services"]["dns"]["entrypoint"]
    assert settings.resolvers[0].port == int(dns_entrypoint[dns_entrypoint.index("--port") + 1])
    published = [mapping.split(":") for mapping in COMPOSE["services"]["router"]["ports"]]
    assert {host for host, _, _ in published} == {"127.0.0.1"}  # the demo is for this machine only
    assert {(int(outside), int(inside)) for _, outside, inside in published} == {
        (8080, settings.port),
        (9901, settings.admin_port),
    }
    subnet = ipaddress.ip_network(COMPOSE["networks"]["cloudmap"]["ipam"]["config"][0]["subnet"])
    assert settings.upstream_allow_cidrs == (subnet,)


def test_every_zone_address_is_a_backend_on_the_network() -> None:
    backends = {service_address(name): name for name in BACKENDS}
    subnet = ipaddress.ip_network(COMPOSE["networks"]["cloudmap"]["ipam"]["config"][0]["subnet"])
    for name, address in zone_records():
        assert address in backends, f"{name} -> {address} is no backend service"
        assert ipaddress.ip_address(address) in subnet
    for name in BACKENDS:  # and each backend listens on the router's upstream port
        entrypoint = COMPOSE["services"][name]["entrypoint"]
        upstream_port = COMPOSE["services"]["router"]["environment"]["WHALERAY_UPSTREAM_PORT"]
        assert entrypoint[entrypoint.index("--port") + 1] == upstream_port
    assert {name for name, _ in zone_records()} == {"hello", "api", "multi"}
    assert sum(1 for name, _ in zone_records() if name == "multi") >= 2  # one deployment, several addresses


def test_compose_file_is_valid_for_compose_v2() -> None:
    result = subprocess.run(
        [tool("docker-compose"), "-f", str(DOCKER / "docker-compose.yml"), "config", "-q"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


async def test_the_demo_zone_routes_as_the_readme_says() -> None:
    # The zone's 172.28.0.x addresses become 127.0.0.x: same records, same names, only loopback dialled.
    dns = DemoDnsServer("whaleray.local")
    dns.load_zone_file(ZONE.replace("172.28.0.", "127.0.0."))
    await dns.start("127.0.0.1", 0)
    upstream_port = free_port()
    runners = [
        await start_backend(backend_name(name), service_address(name).replace("172.28.0.", "127.0.0."), upstream_port)
        for name in BACKENDS
    ]
    router = Router(router_settings(dns, upstream_port))
    await router.start()
    try:
        base = f"http://127.0.0.1:{router.port}"
        async with aiohttp.ClientSession() as session:

            async def backend_of(path: str) -> str:
                async with session.get(base + path) as response:
                    assert response.status == 200
                    return str(json.loads(await response.read())["backend"])

            assert await backend_of("/services/hello/") == "hello-backend"
            assert await backend_of("/services/api/orders/42") == "api-backend"
            spread = Counter([await backend_of("/services/multi/") for _ in range(4)])
            assert spread == {"api-backend": 2, "api-backend-2": 2}
            async with session.get(f"{base}/services/ghost/") as response:
                assert response.status == 502
            async with session.get(f"{base}/nope") as response:
                assert response.status == 404
            async with session.get(f"{base}/services/bad_id/") as response:
                assert response.status == 400
    finally:
        await router.stop()
        for runner in runners:
            await runner.cleanup()
        dns.close()


# --- the Dockerfile ----------------------------------------------------------------------------------------

DOCKERFILE = (DOCKER / "Dockerfile").read_text()
INSTRUCTIONS = [
    line.strip()
    for line in re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
    if line.strip() and not line.strip().startswith("#")
]


def stage(name: str) -> list[str]:
    """The instructions of one stage of the Dockerfile, its FROM line first."""
    start = next(i for i, line in enumerate(INSTRUCTIONS) if line.startswith("FROM ") and line.endswith(f" AS {name}"))
    end = next((i for i in range(start + 1, len(INSTRUCTIONS)) if INSTRUCTIONS[i].startswith("FROM ")), None)
    return INSTRUCTIONS[start:end]


def test_dockerfile_rules() -> None:
    froms = [line.split() for line in INSTRUCTIONS if line.startswith("FROM ")]
    stages = [words[-1] for words in froms]
    assert stages == ["builder", "runtime", "demo-deps", "demo", "release"]
    assert stage("release") == ["FROM runtime AS release"]  # a plain build makes the last stage: the runtime
    # One base for the builder and the runtime (the same Python and Debian release): a build argument whose
    # default is pinned by tag and digest, so a stand-in can be given where the pinned base cannot be pulled.
    images = {words[1] for words in froms if words[1] not in stages}
    assert images == {"${BASE_IMAGE}"}
    [default] = [line.removeprefix("ARG BASE_IMAGE=") for line in INSTRUCTIONS if line.startswith("ARG BASE_IMAGE=")]
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", default)
    for name in ("runtime", "demo"):
        users = [line for line in [*stage("runtime"), *stage(name)] if line.startswith("USER ")]
        assert users
        assert users[-1].split()[1].split(":")[0] not in ("root", "0")
    entrypoint = [line for line in INSTRUCTIONS if line.startswith("ENTRYPOINT ")]
    assert len(entrypoint) == 1
    assert json.loads(entrypoint[0].removeprefix("ENTRYPOINT ")) == ["whaleray-router"]  # exec form
    assert not [line for line in INSTRUCTIONS if line.startswith("ADD ") and "://" in line]
    assert "EXPOSE 8080 9901" in INSTRUCTIONS
    assert any(line.startswith("HEALTHCHECK ") and "urllib" in line for line in INSTRUCTIONS)
    assert any("compileall" in line for line in stage("builder"))


def test_dockerfile_builds_without_buildkit_or_docker_hub() -> None:
    """No `# syntax=` line (BuildKit would fetch that frontend image from Docker Hub) and no `RUN --mount` (the
    classic builder, which Compose uses on an engine without buildx, refuses it)."""
    assert not DOCKERFILE.lstrip().startswith("# syntax")
    assert "--mount" not in DOCKERFILE


def test_image_compiles_the_data_plane_in_the_builder_only() -> None:
    """The compiler is installed in the builder stage, which builds the wheel in a locked environment and fails
    unless the router it installed is the compiled build; the runtime stage copies the installed tree only."""
    builder, runtime = stage("builder"), stage("runtime")
    assert any("apt-get install" in line and " gcc " in line for line in builder)
    assert not any("gcc" in line for line in runtime)
    assert "COPY pyproject.toml setup.py README.md ./" in builder
    compile_step = next(line for line in builder if line.startswith("RUN pip wheel"))
    assert "--no-build-isolation" in compile_step
    assert "--no-deps" in compile_step  # the router's own wheel adds nothing unlocked
    assert "BUILD != 'compiled'" in compile_step
    assert "python -P -c" in compile_step  # not the source tree in the working directory
    copies = [line for line in runtime if line.startswith("COPY")]
    assert copies == ["COPY --from=builder /install /usr/local"]
    labels = " ".join(line for line in INSTRUCTIONS if line.startswith("LABEL "))
    for label in ("source", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels


def test_image_installs_the_locked_dependencies_and_build_tools_by_hash() -> None:
    builder = stage("builder")
    install = next(line for line in builder if line.startswith("RUN pip install"))
    assert "--require-hashes --prefix=/install -r requirements.lock" in install
    assert "--require-hashes -r requirements-build.lock" in install
    assert builder.index(install) < builder.index(next(line for line in builder if line.startswith("RUN pip wheel")))
    assert {requirement_name(line) for line in PROJECT["dependencies"]} <= locked("requirements.lock")
    assert {requirement_name(line) for line in BUILD_REQUIRES} <= locked("requirements-build.lock")


def pins(lock_file: str) -> dict[str, str]:
    lock = (DOCKER / lock_file).read_text()
    return dict(line.split(" ")[0].split("==") for line in lock.splitlines() if "==" in line and line[0].isalpha())


def test_build_requirements_pin_the_locked_versions() -> None:
    """mypyc type-checks the data plane against the typed libraries of [build-system] requires: they are pinned
    to the versions the router runs with (docker/requirements.lock), and the build lock agrees with both."""
    runtime, build = pins("requirements.lock"), pins("requirements-build.lock")
    pinned = dict(requirement.split("==") for requirement in BUILD_REQUIRES if "==" in requirement)
    typed = {name: version for name, version in pinned.items() if name != "mypy"}
    assert typed
    assert {name: runtime[name] for name in typed} == typed
    assert {name: build[name] for name in pinned} == pinned
    assert {requirement_name(line) for line in PROJECT["dependencies"]} >= set(typed) - {"pycares"}  # aiodns' own
    dev_mypy = next(line for line in PROJECT["optional-dependencies"]["dev"] if line.startswith("mypy"))
    assert dev_mypy.split("==")[1].split()[0] == pinned["mypy"]  # the type check and the compiler agree


def test_runtime_image_and_wheel_carry_no_demo() -> None:
    runtime = stage("runtime")
    assert not [line for line in runtime if "demo" in line]
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"] == {
        "include": ["router*"]
    }
    assert "dnslib" not in {requirement_name(line) for line in PROJECT["dependencies"]}
    assert "dnslib" not in locked("requirements.lock")


def test_demo_stage_adds_the_demo_and_its_locked_library_to_the_runtime() -> None:
    install = next(line for line in stage("demo-deps") if line.startswith("RUN pip install"))
    assert "--require-hashes" in install
    assert "-r requirements-demo.lock" in install
    assert "COPY whaleray_demo /demo-install/opt/whaleray-demo/whaleray_demo" in stage("demo-deps")
    assert "COPY --from=demo-deps /demo-install /" in stage("demo")
    assert "ENV PYTHONPATH=/opt/whaleray-demo" in stage("demo")
    assert {requirement_name(line) for line in PROJECT["optional-dependencies"]["demo"]} <= locked(
        "requirements-demo.lock"
    )
    demo_services = [name for name, service in COMPOSE["services"].items() if "whaleray_demo" in str(service)]
    assert demo_services == ["dns", "hello", "api", "api-2"]
    assert COMPOSE["x-image"]["build"]["target"] == "demo"


def test_dockerignore_keeps_the_context_to_what_the_image_needs() -> None:
    ignore = (DOCKER / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*"  # everything out, then only what the build copies
    assert {"!pyproject.toml", "!setup.py", "!README.md", "!router/", "router/**/*.so", "!whaleray_demo/"} <= set(
        ignore
    )
    assert "!docker/requirements-build.lock" in ignore
    # BuildKit reads the file beside the Dockerfile; the classic builder the one at the context's root.
    assert (DOCKER / "Dockerfile.dockerignore").resolve() == (DOCKER / ".dockerignore").resolve()
    assert (ROOT / ".dockerignore").resolve() == (DOCKER / ".dockerignore").resolve()


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [tool("hadolint"), str(DOCKER / "Dockerfile")], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_checkov_dockerfile_checks_all_pass() -> None:
    result = subprocess.run(
        [
            tool("checkov"),
            "--framework",
            "dockerfile",
            "--skip-download",
            "--quiet",
            "--compact",
            "-o",
            "json",
            "-f",
            str(DOCKER / "Dockerfile"),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(result.stdout)
    assert report["summary"]["failed"] == 0, result.stdout
    assert report["summary"]["passed"] > 0
