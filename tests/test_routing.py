"""Routing compatible with the Nginx router: paths, ids, byte-exact targets, redirects, JSON errors."""

from __future__ import annotations

import json

import pytest

from router.app import Router
from tests.support import PROBE, BackendFactory, RawBackendFactory, fetch, free_port, raw_request, status_of
from whaleray_demo.dns import DemoDnsServer, SrvTarget


async def test_routes_to_the_deployment_and_strips_the_prefix(
    router: Router, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2", name="hello-backend")
    status, _, body = await fetch(router, "/services/hello/api/users?page=2&sort=name")
    answer = json.loads(body)
    assert status == 200
    assert answer["backend"] == "hello-backend"
    assert answer["path"] == "/api/users"
    assert answer["query"] == "page=2&sort=name"


@pytest.mark.parametrize(
    ("client_target", "backend_target"),
    [
        (b"/services/hello/a%2Fb", b"/a%2Fb"),
        (b"/services/hello/%2e%2e/x", b"/%2e%2e/x"),
        (b"/services/hello//double//slash/", b"//double//slash/"),
        (b"/services/hello/sp%20ace?q=%20%2F&x=a+b", b"/sp%20ace?q=%20%2F&x=a+b"),
        (b"/services/hello/", b"/"),
        (b"/services/hello/?", b"/?"),
        # A fragment is stripped (clients must not send one): what follows `#`, a `?` too, is not the query.
        (b"/services/hello/caf%C3%A9?k=%E2%9C%93#frag", b"/caf%C3%A9?k=%E2%9C%93"),
        (b"/services/hello/p#a?b=1", b"/p"),
        (b"/services/hello/x?a=1&a=2&=&%00", b"/x?a=1&a=2&=&%00"),
    ],
)
async def test_path_and_query_reach_the_backend_byte_for_byte(
    router: Router, dns: DemoDnsServer, raw_backend: RawBackendFactory, client_target: bytes, backend_target: bytes
) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    recorder = await raw_backend("127.0.0.2")
    response = await raw_request(
        router.port, b"GET " + client_target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    assert status_of(response) == 200
    assert recorder.request_line() == b"GET " + backend_target + b" HTTP/1.1"


async def test_id_is_lower_cased_before_lookup(router: Router, dns: DemoDnsServer, backend: BackendFactory) -> None:
    dns.set_a("hello", ["127.0.0.2"])
    await backend("127.0.0.2", name="hello-backend")
    status, _, body = await fetch(router, "/services/HeLLo/x")
    assert status == 200
    assert json.loads(body)["backend"] == "hello-backend"
    assert dns.query_count("hello") == 1


@pytest.mark.parametrize("query", ["", "?a=1&b=%2F"])
async def test_missing_trailing_slash_redirects_with_the_query(router: Router, query: str) -> None:
    status, headers, _ = await fetch(router, f"/services/hello{query}")
    assert status == 308
    assert headers["Location"] == f"/services/hello/{query}"


@pytest.mark.parametrize(
    "bad_id",
    ["a.b", "..", "%2e%2e", "a%00b", "-abc", "abc-", "a_b", "x" * 64, "caf%C3%A9", "a%2Fb", "%20"],
)
async def test_invalid_ids_are_refused_and_never_resolved(router: Router, dns: DemoDnsServer, bad_id: str) -> None:
    status, headers, body = await fetch(router, f"/services/{bad_id}/x")
    answer = json.loads(body)
    assert status == 400
    assert answer["code"] == "invalid_deployment_id"
    assert answer["request_id"] == headers["X-Request-Id"]
    assert dns.query_count() == dns.query_count(PROBE)  # only the router's readiness probe asked anything


async def test_longest_valid_id_is_accepted(router: Router, dns: DemoDnsServer, backend: BackendFactory) -> None:
    name = "a" + "b" * 61 + "c"
    dns.set_a(name, ["127.0.0.2"])
    await backend("127.0.0.2")
    status, _, _ = await fetch(router, f"/services/{name}/")
    assert status == 200


async def test_empty_id_is_refused(router: Router, dns: DemoDnsServer) -> None:
    status, _, body = await fetch(router, "/services//x")
    assert status == 400
    assert json.loads(body)["code"] == "invalid_deployment_id"


@pytest.mark.parametrize("path", ["/", "/nope", "/services", "/service/x/", "/%73ervices/x/", "/healthz"])
async def test_other_paths_answer_404_json(router: Router, path: str) -> None:
    status, headers, body = await fetch(router, path)
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    answer = json.loads(body)
    assert answer["error"] == "Not found. Use /services/{deploymentId}/... format"
    assert answer["code"] == "not_found"
    assert answer["request_id"] == headers["X-Request-Id"]


async def test_health(router: Router) -> None:
    status, _, body = await fetch(router, "/health")
    assert (status, json.loads(body)) == (200, {"status": "healthy"})


async def test_health_is_503_while_draining(router: Router) -> None:
    assert router.state is not None
    router.state.draining = True
    status, headers, body = await fetch(router, "/health")
    assert (status, json.loads(body)) == (503, {"status": "draining"})
    assert headers["Connection"] == "close"


async def test_unknown_deployment_is_502_with_its_id(router: Router, dns: DemoDnsServer) -> None:
    status, headers, body = await fetch(router, "/services/ghost/x")
    assert status == 502
    assert json.loads(body) == {
        "error": "Service unavailable or deployment not found",
        "code": "deployment_not_found",
        "deployment": "ghost",
        "request_id": headers["X-Request-Id"],
    }


async def test_name_without_a_records_is_deployment_not_found(router: Router, dns: DemoDnsServer) -> None:
    dns.set_srv("srvonly", [SrvTarget("x.whaleray.local", 1)])
    status, _, body = await fetch(router, "/services/srvonly/x")
    assert status == 502
    assert json.loads(body)["code"] == "deployment_not_found"


async def test_refused_connect_is_upstream_unavailable(router: Router, dns: DemoDnsServer) -> None:
    dns.set_a("down", ["127.0.0.9"])  # nothing listens there
    status, _, body = await fetch(router, "/services/down/x")
    answer = json.loads(body)
    assert status == 502
    assert answer["code"] == "upstream_unavailable"
    assert answer["deployment"] == "down"
    assert "127.0.0.9" not in body.decode()  # never leak internals


async def test_dead_resolver_with_nothing_cached_is_503(make_router: object, upstream_port: int) -> None:
    dead = free_port(kind=2)  # SOCK_DGRAM: a UDP port where nothing answers
    router = await make_router(resolvers=[f"127.0.0.1:{dead}"])  # type: ignore[operator]
    status, headers, body = await fetch(router, "/services/hello/x")
    answer = json.loads(body)
    assert status == 503
    assert answer["code"] == "resolver_unavailable"
    assert answer["request_id"] == headers["X-Request-Id"]


async def test_address_outside_the_allowed_networks_is_forbidden(
    make_router: object, dns: DemoDnsServer, backend: BackendFactory
) -> None:
    # The backend listens on a loopback address outside the allowed range, so nothing could go astray.
    router = await make_router("--upstream-allow-cidr", "127.0.0.0/30")  # type: ignore[operator]
    dns.set_a("outside", ["127.0.0.5"])
    instance = await backend("127.0.0.5")
    status, _, body = await fetch(router, "/services/outside/x")
    assert status == 502
    assert json.loads(body)["code"] == "upstream_forbidden"
    assert instance.requests == 0


async def test_every_error_response_carries_the_client_request_id(router: Router) -> None:
    status, headers, body = await fetch(router, "/nope", headers={"X-Request-Id": "abc-123"})
    assert status == 404
    assert headers["X-Request-Id"] == "abc-123"
    assert json.loads(body)["request_id"] == "abc-123"


async def test_absolute_form_and_asterisk_targets_are_not_routed(router: Router) -> None:
    response = await raw_request(router.port, b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert status_of(response) == 404
