"""What an operator reaches for, through the real process: --check, start-up failures, SIGHUP, /config,
/discovery, `inspect`, the access log as written, build and process metrics, and the router's own responses."""

from __future__ import annotations

import json
import re
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from tests.support import BackendFactory, RouterProcess, free_port, raw_request, run_cli, wait_for
from whaleray_demo.dns import DemoDnsServer
from whaleray_demo.run import try_these

StartRouter = Callable[..., Awaitable[RouterProcess]]
README = Path(__file__).resolve().parent.parent / "README.md"
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


# --- --check -------------------------------------------------------------------------------------------------


def test_check_prints_one_summary_line_and_binds_nothing() -> None:
    with socket.socket() as taken:  # the port it would listen on is busy: --check must not care
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--check", "--host", "127.0.0.1", "--port", str(port), "--resolver", "127.0.0.1:9")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert result.stdout.startswith(f"whaleray-router: configuration ok: listen 127.0.0.1:{port}, admin 0.0.0.0:9901")
    assert "via 127.0.0.1:9 (A records)" in result.stdout


def test_check_says_whether_sleeping_deployments_wake_and_why_not() -> None:
    assert run_cli("--check").stdout.rstrip().endswith(", waking off (no --wake-cluster)")
    without = run_cli("--check", "--wake-cluster", "platform")
    assert without.returncode == 0, without.stderr
    assert without.stdout.rstrip().endswith(
        ", waking off: --wake-cluster is set but no AWS credentials were found (environment, profile or ECS task role)"
    )
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    on = run_cli("--check", "--wake-cluster", "platform", env=credentials)
    assert on.stdout.rstrip().endswith(", waking on (cluster platform)"), on.stdout


def test_check_reports_every_problem_in_sentences_naming_flag_or_variable() -> None:
    env = {"WHALERAY_DNS_TIMEOUT": "soon", "WHALERAY_RESOLVERS": "10.0.0.2"}
    result = run_cli("--check", "--port", "http", "--workers", "many", env=env)
    assert result.returncode == 2
    problems = result.stderr.splitlines()
    assert problems == [
        "whaleray-router: error: --port='http': must be a port, 0-65535",
        "whaleray-router: error: WHALERAY_DNS_TIMEOUT='soon': must be a positive number of seconds",
        "whaleray-router: error: --workers='many': must be auto or 1-64",
        "whaleray-router: error: unknown variable WHALERAY_RESOLVERS: no option reads it "
        "(did you mean WHALERAY_RESOLVER?)",
    ]
    assert "invalid literal" not in result.stderr
    assert "Traceback" not in result.stderr


def test_abbreviated_and_misspelt_flags_are_refused_with_the_right_name() -> None:
    result = run_cli("--check", "--po", "8080", "--resolvr=10.0.0.2")
    assert result.returncode == 2
    assert "unknown flag --po (did you mean --port?)" in result.stderr
    assert "unknown flag --resolvr (did you mean --resolver?)" in result.stderr


def test_constraints_between_settings_are_checked() -> None:
    result = run_cli("--check", "--resolver", "10.0.0.2", "--dns-min-ttl", "90", "--srv-prefix", "_http._tcp.")
    assert result.returncode == 2
    assert "--dns-min-ttl must not exceed --dns-max-ttl" in result.stderr
    assert "--srv-prefix applies only with --discovery srv" in result.stderr


# --- start-up failure and signals ----------------------------------------------------------------------------


def test_a_taken_port_is_one_json_log_line_and_exit_1() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ("--host", "127.0.0.1", "--port", str(port), "--admin-port", "0", "--resolver", "127.0.0.1:9")
        result = run_cli(*args)
    assert result.returncode == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    failures = [line for line in lines if line["level"] == "error"]
    assert [line["message"] for line in failures] == ["start-up failed"]
    assert "address already in use" in str(failures[0]["error"]).lower()
    assert "Traceback" not in result.stdout + result.stderr


async def test_sighup_logs_and_keeps_serving(router_process: StartRouter) -> None:
    process = await router_process("--drain-delay", "0")
    process.process.send_signal(signal.SIGHUP)
    await wait_for(lambda: _has_output(process, b"SIGHUP ignored"))
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{process.admin_port}/health") as r:
        assert r.status == 200
    assert process.process.returncode is None
    process.process.send_signal(signal.SIGTERM)
    lines = await process.json_lines()
    hup = [line for line in lines if str(line.get("message", "")).startswith("SIGHUP ignored")]
    assert hup[0]["level"] == "warning"
    assert "restart" in str(hup[0]["message"])
    assert process.process.returncode == 0


async def _has_output(process: RouterProcess, text: bytes) -> bool:
    return text in process.output


# --- the admin port: /config, /discovery, inspect --------------------------------------------------------------


async def test_config_shows_the_effective_settings(router_process: StartRouter) -> None:
    process = await router_process("--dns-max-qps", "42")
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{process.admin_port}/config") as r:
        config = await r.json()
        server = r.headers.get("Server", "")
    assert config["dns_max_qps"] == 42
    assert config["port"] == process.port
    assert "aiohttp" not in server.lower()
    assert "python" not in server.lower()


async def test_discovery_shows_state_addresses_and_connections(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    await backend("127.0.0.2")
    dns.set_a("hello", ["127.0.0.2"])
    process = await router_process()
    admin = f"http://127.0.0.1:{process.admin_port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{process.port}/services/hello/") as response:
            assert response.status == 200
        async with session.get(f"http://127.0.0.1:{process.port}/services/ghost/") as response:
            assert response.status == 502
        async with session.get(f"{admin}/discovery/hello") as response:
            hello = await response.json()
        async with session.get(f"{admin}/discovery/ghost") as response:
            ghost = await response.json()
        async with session.get(f"{admin}/discovery/never-asked") as response:
            missing = await response.json()
        async with session.get(f"{admin}/discovery") as response:
            listing = await response.json()
    upstream = f"127.0.0.2:{process.upstream_port}"
    assert hello["deployment"] == "hello"
    assert hello["state"] == "fresh"
    assert 0 < hello["expires_in"] <= 30
    assert hello["addresses"] == [
        {"address": upstream, "backup": False, "ejected": False, "idle_connections": 1, "active_connections": 0}
    ]
    assert (ghost["state"], ghost["addresses"]) == ("negative", [])
    assert (missing["state"], missing["expires_in"]) == ("missing", None)
    assert listing["count"] == 2
    assert listing["lookups"]["queries"] == 2  # hello and ghost, once each
    assert sorted((item["deployment"], item["state"], item["addresses"]) for item in listing["deployments"]) == [
        ("ghost", "negative", 0),
        ("hello", "fresh", 1),
    ]
    inspect = run_cli("inspect", "hello", "--admin-port", str(process.admin_port))
    assert inspect.returncode == 0, inspect.stderr
    table = inspect.stdout.splitlines()
    assert table[0].startswith("deployment hello: fresh, expires in ")
    assert table[1].split() == ["ADDRESS", "EJECTED", "IDLE", "ACTIVE"]
    assert table[2].split() == [upstream, "no", "1", "0"]
    every = run_cli("inspect", "--admin-port", str(process.admin_port))
    assert "2 of 2 cached names listed" in every.stdout


def test_inspect_says_when_the_admin_port_does_not_answer() -> None:
    result = run_cli("inspect", "hello", "--admin-port", str(free_port()))
    assert result.returncode == 1
    assert "cannot read http://127.0.0.1:" in result.stderr


async def test_discovery_with_workers_merges_what_each_worker_holds(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    await backend("127.0.0.2")
    dns.set_a("hello", ["127.0.0.2"])
    process = await router_process("--workers", "2")
    admin = f"http://127.0.0.1:{process.admin_port}"
    async with aiohttp.ClientSession() as session:
        await wait_for(lambda: _ready(session, admin))
        for _ in range(6):  # new connections: SO_REUSEPORT spreads them over the workers
            async with (
                aiohttp.ClientSession() as fresh,
                fresh.get(f"http://127.0.0.1:{process.port}/services/hello/") as r,
            ):
                assert r.status == 200
        async with session.get(f"{admin}/discovery/hello") as response:
            hello = await response.json()
        async with session.get(f"{admin}/discovery") as response:
            listing = await response.json()
    assert hello["workers"] == 2
    assert hello["state"] == "fresh"
    [address] = hello["addresses"]
    assert address["address"] == f"127.0.0.2:{process.upstream_port}"
    assert 1 <= address["idle_connections"] <= 2  # one pooled per worker that served
    assert [item["deployment"] for item in listing["deployments"]] == ["hello"]


async def _ready(session: aiohttp.ClientSession, admin: str) -> bool:
    async with session.get(f"{admin}/ready") as response:
        return response.status == 200


# --- access log, metrics, the router's own responses ---------------------------------------------------------


async def test_access_log_lines_carry_what_an_operator_greps_for(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    await backend("127.0.0.2")
    dns.set_a("hello", ["127.0.0.2"])
    process = await router_process("--drain-delay", "0")
    headers = {
        "User-Agent": "probe/1.0",
        "X-Forwarded-For": "203.0.113.7",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    async with aiohttp.ClientSession() as session:
        for _ in range(2):
            async with session.get(f"http://127.0.0.1:{process.port}/services/hello/x?token=1", headers=headers) as r:
                await r.read()
    process.process.send_signal(signal.SIGTERM)
    access = [line for line in await process.json_lines() if line.get("type") == "access"]
    first, second = access
    assert RFC3339_MS.match(str(first["time"]))
    assert (first["user_agent"], first["x_forwarded_for"]) == ("probe/1.0", "203.0.113.7")
    assert first["traceparent"] == headers["traceparent"]
    assert first["path"] == "/services/hello/x"
    assert first["upstream_addr"] == f"127.0.0.2:{process.upstream_port}"
    assert isinstance(first["upstream_connect_ms"], float)
    assert isinstance(first["upstream_header_ms"], float)
    assert isinstance(first["bytes_sent"], int)
    assert first["bytes_sent"] > 0
    assert (second["upstream_reused"], second["upstream_connect_ms"]) == (True, None)


async def test_text_log_format_applies_to_access_lines(
    router_process: StartRouter, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    await backend("127.0.0.2")
    dns.set_a("hello", ["127.0.0.2"])
    process = await router_process("--log-format", "text", "--drain-delay", "0")
    url = f"http://127.0.0.1:{process.port}/services/hello/"
    async with aiohttp.ClientSession() as session, session.get(url, headers={"User-Agent": "ua"}) as response:
        await response.read()
    process.process.send_signal(signal.SIGTERM)
    await process.process.wait()
    if process.reader is not None:
        await process.reader
    access = [line for line in process.output.decode().splitlines() if '"GET /services/hello/"' in line]
    assert len(access) == 1
    assert re.match(r'^127\.0\.0\.1 - - \[[0-9T:.-]+Z\] "GET /services/hello/" 200 \d+ "-" "ua" rt=', access[0])
    assert " deployment=hello upstream=127.0.0.2:" in access[0]


async def test_metrics_have_build_and_process_families_and_skip_health_probes(router_process: StartRouter) -> None:
    process = await router_process()
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(f"http://127.0.0.1:{process.port}/health") as response:
                assert response.status == 200
        async with session.get(f"http://127.0.0.1:{process.port}/nope") as response:
            assert response.status == 404
        async with session.get(f"http://127.0.0.1:{process.admin_port}/metrics") as response:
            text = await response.text()
    assert re.search(
        r'^whaleray_build_info\{build="(compiled|pure)",python="3\.\d+\.\d+",version="[^"]+"\} 1\.0$', text, re.M
    )
    assert re.search(r"^process_resident_memory_bytes \d", text, re.M)
    assert re.search(r"^process_open_fds \d", text, re.M)
    requests = re.findall(r'^whaleray_requests_total\{code="(\d+)",deployment="([^"]+)"\} (\S+)$', text, re.M)
    assert requests == [("404", "_unknown", "1.0")]  # the three probes are not requests of anyone


async def test_the_routers_own_responses_carry_date_and_an_empty_redirect_no_json_type(
    router_process: StartRouter,
) -> None:
    process = await router_process()
    not_found = await raw_request(process.port, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    redirect = await raw_request(process.port, b"GET /services/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head = not_found.split(b"\r\n\r\n")[0].decode()
    assert re.search(r"\r\nDate: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT\r\n", head + "\r\n")
    assert "Content-Type: application/json" in head
    redirect_head = redirect.split(b"\r\n\r\n")[0].decode()
    assert redirect_head.startswith("HTTP/1.1 308 ")
    assert "Content-Length: 0" in redirect_head
    assert "Content-Type" not in redirect_head
    assert "\r\nDate: " in redirect_head


# --- the demo --------------------------------------------------------------------------------------------------


def test_the_readme_lists_the_commands_the_demo_banner_prints() -> None:
    readme = README.read_text()
    for command in try_these(8080, 9901):
        assert command in readme


def test_demo_installs_the_runtime_only() -> None:
    makefile = (README.parent / "Makefile").read_text()
    demo_rule = re.search(r"^demo: (.+)$", makefile, re.M)
    assert demo_rule is not None
    assert demo_rule.group(1).strip() == "$(RUNTIME_STAMP)"
    runtime_rule = makefile.split("$(RUNTIME_STAMP): ", 1)[1].split("\n\n", 1)[0]
    assert "scripts/bootstrap-venv.sh demo\n" in runtime_rule + "\n"
    assert "bootstrap-venv.sh dev" not in runtime_rule


def test_the_router_command_points_a_demo_user_to_make_demo() -> None:
    result = run_cli("demo")
    assert result.returncode == 2
    assert "make demo" in result.stderr
