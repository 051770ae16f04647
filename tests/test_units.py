"""Unit tests of the pure and sans-IO parts: route, headers, pool, cache, balancer, budget, the access log. Plain
values, fake clocks. The hot-path harness and the benchmark's reports are tested in test_benchmarks.py, the
code's shape in test_architecture.py."""

from __future__ import annotations

import io
import json
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.access_log import ACCESS_FIELDS, AccessLog, AccessRecord, format_json, format_text
from router.discovery.balancer import Balancer
from router.discovery.budget import QueryBudget
from router.discovery.cache import DnsCache, EntryKind
from router.discovery.resolver import SrvTarget
from router.discovery.service import address_allowed, plan_srv
from router.options import _cidrs
from router.proxy.client import request_line_minor
from router.proxy.headers import HeaderError, analyse_request, analyse_response, request_refusal, upstream_head
from router.proxy.pool import ConnectionPool
from router.proxy.route import RouteKind, parse_target

# --- route ---------------------------------------------------------------------------------------------------

LABEL = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?", fullmatch=True)
TARGET_BYTES = st.binary(max_size=200).filter(lambda raw: b" " not in raw)


@given(LABEL, TARGET_BYTES)
def test_any_valid_id_routes_and_keeps_the_rest_byte_for_byte(deployment: str, rest: bytes) -> None:
    kind, routed_to, target = parse_target(b"/services/" + deployment.encode() + b"/" + rest)
    assert kind is RouteKind.PROXY
    assert routed_to == deployment.lower()
    assert target == b"/" + rest


@given(st.binary(max_size=80))
def test_parse_never_fails_and_only_routes_labels(raw_id: bytes) -> None:
    kind, deployment, _ = parse_target(b"/services/" + raw_id + b"/x")
    if kind is RouteKind.PROXY:
        assert deployment is not None
        assert 1 <= len(deployment) <= 63
        assert all(ch.isalnum() or ch == "-" for ch in deployment)
        assert deployment.isascii()
        assert "." not in deployment


def test_redirect_keeps_the_query() -> None:
    assert parse_target(b"/services/Abc?x=1") == (RouteKind.REDIRECT, "abc", b"/services/Abc/?x=1")


# --- headers -------------------------------------------------------------------------------------------------

CONTEXT = {"peer_ip": b"10.0.0.9", "listen_port": b"8080", "deployment": b"dep", "request_id": b"rid"}


def test_upstream_head_sets_forwarding_headers_once() -> None:
    info = analyse_request([(b"Host", b"h"), (b"X-Forwarded-Prefix", b"/evil"), (b"X-Real-IP", b"1.1.1.1")], 1)
    head = upstream_head(b"GET", b"/p?q", info, **CONTEXT)
    assert head.startswith(b"GET /p?q HTTP/1.1\r\nHost: h\r\n")
    assert head.count(b"X-Forwarded-Prefix") == 1
    assert b"X-Forwarded-Prefix: /services/dep\r\n" in head
    assert b"X-Real-IP: 10.0.0.9\r\n" in head
    assert head.endswith(b"\r\n\r\n")


@given(
    st.lists(
        st.tuples(
            # Every head generated here is one the router accepts; the headers that can refuse a head are tested
            # one by one below, so no example passes by being refused.
            st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,20}", fullmatch=True).filter(
                lambda name: name.lower() not in {"host", "expect", "content-length"}
            ),
            st.from_regex(r"[ -~]{0,30}", fullmatch=True).map(str.strip),
        ),
        max_size=12,
    )
)
def test_serialised_head_has_one_line_per_header_and_no_hop_by_hop(headers: list[tuple[str, str]]) -> None:
    raw = [(b"Host", b"h")] + [(name.encode(), value.encode()) for name, value in headers]
    info = analyse_request(raw, 1)
    head = upstream_head(b"GET", b"/", info, **CONTEXT)
    lines = head.split(b"\r\n")
    assert lines[-2:] == [b"", b""]
    names = [line.split(b":", 1)[0].lower() for line in lines[1:-2]]
    for hop in (b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"):
        assert hop not in names
    assert not any(name.startswith(b"proxy-") for name in names)
    assert names.count(b"x-request-id") == 1
    assert all(b"\n" not in line and b"\r" not in line for line in lines)


@pytest.mark.parametrize(
    "extra",
    [(b"host", b"other"), (b"Expect", b"something-else"), (b"Content-Length", b"12abc")],
    ids=["a second host", "an expectation other than 100-continue", "a content-length that is no number"],
)
def test_heads_the_router_refuses(extra: tuple[bytes, bytes]) -> None:
    with pytest.raises((HeaderError, ValueError)):
        analyse_request([(b"Host", b"h"), extra], 1)


def test_transfer_encoding_on_http_1_0_is_refused() -> None:
    with pytest.raises(HeaderError):
        analyse_request([(b"Transfer-Encoding", b"chunked")], 0)


UPGRADE_TO = [(b"Connection", b"upgrade"), (b"Upgrade", b"websocket")]


@pytest.mark.parametrize(
    ("method", "extra", "refusal"),
    [
        (b"GET", [], None),
        (b"CONNECT", [], "method_not_allowed"),
        (b"GET", UPGRADE_TO, None),
        (b"POST", [*UPGRADE_TO, (b"Content-Length", b"1")], "bad_request"),
        (b"POST", [*UPGRADE_TO, (b"Transfer-Encoding", b"chunked")], "bad_request"),
        (b"POST", [(b"Upgrade", b"websocket"), (b"Content-Length", b"1")], None),  # no Connection: upgrade, a hint
        (b"POST", [(b"Content-Length", b"100")], None),
        (b"POST", [(b"Content-Length", b"101")], "body_too_large"),
        (b"POST", [(b"Transfer-Encoding", b"chunked")], None),  # no length to refuse yet: counted as it comes
    ],
)
def test_well_formed_heads_the_router_still_refuses(
    method: bytes, extra: list[tuple[bytes, bytes]], refusal: str | None
) -> None:
    assert request_refusal(method, analyse_request([(b"Host", b"h"), *extra], 1), max_body_bytes=100) == refusal


def test_without_a_body_cap_no_length_is_too_large() -> None:
    info = analyse_request([(b"Host", b"h"), (b"Content-Length", b"%d" % 2**40)], 1)
    assert request_refusal(b"POST", info, max_body_bytes=0) is None


def test_connection_cannot_strip_host() -> None:
    info = analyse_request([(b"Host", b"h"), (b"Connection", b"host, x-a"), (b"X-A", b"1")], 1)
    assert b"".join(info.forwarded) == b"Host: h\r\n"


def test_response_headers_named_by_connection_are_dropped() -> None:
    info = analyse_response([(b"Connection", b"X-A"), (b"X-A", b"1"), (b"X-B", b"2"), (b"Content-Length", b"3")])
    assert b"".join(info.forwarded) == b"X-B: 2\r\n"
    assert info.content_length == 3


# --- pool ------------------------------------------------------------------------------------------------------


class FakeConnection:
    def __init__(self, name: str, usable: bool = True) -> None:
        self.name = name
        self.usable = usable

    def is_usable(self) -> bool:
        return self.usable


ADDRESS = ("10.0.0.1", 3000)


def test_pool_reuses_the_most_recent_and_expires_the_oldest() -> None:
    pool: ConnectionPool[FakeConnection] = ConnectionPool(idle_timeout_s=4, max_idle_per_address=8)
    first, second = FakeConnection("a"), FakeConnection("b")
    pool.release(ADDRESS, first, now=0)
    pool.release(ADDRESS, second, now=1)
    assert pool.acquire(ADDRESS, now=2) is second
    pool.release(ADDRESS, second, now=3)
    assert pool.expire(now=4.5) == [first]
    assert repr(pool) == "<ConnectionPool [Idle: 1 on 1 addresses]>"
    assert pool.acquire(ADDRESS, now=7.5) is None  # idle 4.5 s: too old to lend
    assert pool.idle_count() == 0


def test_pool_skips_dead_connections_and_caps_each_address() -> None:
    pool: ConnectionPool[FakeConnection] = ConnectionPool(idle_timeout_s=4, max_idle_per_address=2)
    dead, live = FakeConnection("dead", usable=False), FakeConnection("live")
    pool.release(ADDRESS, live, now=0)
    pool.release(ADDRESS, dead, now=0)
    assert pool.acquire(ADDRESS, now=1) is live
    for name in "xyz":
        surplus = pool.release(ADDRESS, FakeConnection(name), now=1)
    assert surplus is not None
    assert surplus.name == "x"
    assert pool.idle_count(ADDRESS) == 2


def test_pool_discard_and_drain() -> None:
    pool: ConnectionPool[FakeConnection] = ConnectionPool(idle_timeout_s=4, max_idle_per_address=8)
    one, other = FakeConnection("1"), FakeConnection("2")
    pool.release(ADDRESS, one, now=0)
    pool.release(("10.0.0.2", 3000), other, now=0)
    pool.discard(ADDRESS, one)
    assert pool.idle_count(ADDRESS) == 0
    assert pool.drain_addresses(keep={ADDRESS}) == [other]


# --- cache -------------------------------------------------------------------------------------------------------


def make_cache(**overrides: float) -> DnsCache:
    values: dict[str, float] = {
        "min_ttl_s": 5,
        "max_ttl_s": 60,
        "negative_ttl_s": 5,
        "stale_ttl_s": 300,
        "max_entries": 3,
        "stale_retry_s": 5,
    }
    values.update(overrides)
    return DnsCache(
        min_ttl_s=values["min_ttl_s"],
        max_ttl_s=values["max_ttl_s"],
        negative_ttl_s=values["negative_ttl_s"],
        stale_ttl_s=values["stale_ttl_s"],
        max_entries=int(values["max_entries"]),
        stale_retry_s=values["stale_retry_s"],
    )


def test_ttl_is_clamped() -> None:
    cache = make_cache()
    cache.store("short", (ADDRESS,), ttl_s=1, now=100)
    cache.store("long", (ADDRESS,), ttl_s=86400, now=100)
    assert cache.fresh("short", 104.9) is not None
    assert cache.fresh("short", 105) is None
    assert cache.fresh("long", 159.9) is not None
    assert cache.fresh("long", 160) is None


def test_refresh_is_due_at_80_percent_of_the_ttl() -> None:
    cache = make_cache()
    entry = cache.store("a", (ADDRESS,), ttl_s=10, now=0)
    assert not cache.needs_refresh(entry, 7.9)
    assert cache.needs_refresh(entry, 8.0)
    entry.refreshing = True
    assert not cache.needs_refresh(entry, 9)


def test_negative_entries_and_stale_serving() -> None:
    cache = make_cache()
    assert cache.store_negative("ghost", now=0).kind is EntryKind.NEGATIVE
    assert cache.fresh("ghost", 4.9) is not None
    assert cache.serve_stale("ghost", 10) is None  # a negative answer is never served stale
    cache.store("real", (ADDRESS,), ttl_s=10, now=0)
    stale = cache.serve_stale("real", 20)
    assert stale is not None
    assert stale.stale
    assert cache.fresh("real", 24.9) is stale  # reused for stale_retry_s without another query
    assert cache.serve_stale("real", 311) is None  # past expiry + stale_ttl


def test_cache_is_bounded_lru() -> None:
    cache = make_cache(max_entries=3)
    for name in "abc":
        cache.store(name, (ADDRESS,), ttl_s=10, now=0)
    assert cache.fresh("a", 1) is not None  # a is now the most recently used
    cache.store("d", (ADDRESS,), ttl_s=10, now=1)
    assert len(cache) == 3
    assert cache.fresh("b", 1) is None
    assert repr(cache) == "<DnsCache [Known: 3/3 | Unknown: 0/3]>"


def test_unknown_names_are_bounded_apart_and_never_evict_known_ones() -> None:
    cache = make_cache(max_entries=2)
    cache.store("real", (ADDRESS,), ttl_s=10, now=0)
    for index in range(10):
        cache.store_negative(f"scan-{index}", now=0)
    assert cache.fresh("real", 1) is not None
    assert len(cache) == 3
    assert cache.fresh("scan-0", 1) is None  # evicted by later unknown names
    cache.store_negative("real", now=2)  # NXDOMAIN for a known name: the deployment is gone
    assert not cache.known("real")


# --- balancer ----------------------------------------------------------------------------------------------


class Candidates:
    def __init__(self, *hosts: str, backup: tuple[str, ...] = ()) -> None:
        self.addresses = tuple((host, 3000) for host in hosts)
        self.backup = tuple((host, 3000) for host in backup)
        self.cursor = 0


def test_round_robin_and_growing_ejection() -> None:
    balancer = Balancer(base_ejection_s=1, max_ejection_s=4)
    entry = Candidates("a", "b", "c")
    assert [balancer.pick(entry, 0)[0] for _ in range(4)] == ["a", "b", "c", "a"]
    assert balancer.failed(("b", 3000), now=0) == 1
    assert balancer.failed(("b", 3000), now=0) == 2
    assert balancer.failed(("b", 3000), now=0) == 4
    assert balancer.failed(("b", 3000), now=0) == 4
    assert "b" not in {balancer.pick(entry, 1)[0] for _ in range(6)}
    assert "b" in {balancer.pick(entry, 4.5)[0] for _ in range(6)}  # back on its own
    balancer.succeeded(("b", 3000))
    assert repr(balancer) == "<Balancer [Ejected: 0]>"


def test_ejection_of_an_address_that_keeps_failing_stays_at_the_cap() -> None:
    balancer = Balancer(base_ejection_s=1, max_ejection_s=30)
    durations = [balancer.failed(("127.0.0.2", 3000), now=float(n)) for n in range(5000)]  # 2.0 ** 1024 overflowed
    assert durations[:6] == [1, 2, 4, 8, 16, 30]
    assert set(durations[5:]) == {30}


def test_all_ejected_still_gives_an_address() -> None:
    balancer = Balancer()
    entry = Candidates("a", "b")
    balancer.failed(("a", 3000), now=0)
    balancer.failed(("b", 3000), now=0)
    balancer.failed(("b", 3000), now=0)
    assert balancer.pick(entry, 0.5) == ("a", 3000)  # the one that comes back first


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("172.31.255.255", True),
        ("192.168.1.1", True),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("169.254.169.253", False),
        ("8.8.8.8", False),
        ("172.32.0.1", False),
        ("0.0.0.0", False),
        ("not-an-ip", False),
    ],
)
def test_default_allow_list(host: str, allowed: bool) -> None:
    assert address_allowed(host, _cidrs("10.0.0.0/8,172.16.0.0/12,192.168.0.0/16")) is allowed


def test_backup_addresses_serve_when_every_preferred_one_is_ejected() -> None:
    balancer = Balancer()
    entry = Candidates("a", backup=("z",))
    balancer.failed(("a", 3000), now=0)
    assert balancer.pick(entry, 0.1) == ("z", 3000)
    assert balancer.pick(entry, 5) == ("a", 3000)  # a is back


# --- budget --------------------------------------------------------------------------------------------------


def test_budget_keeps_a_reserve_for_known_names() -> None:
    budget = QueryBudget(rate_qps=10, reserve_fraction=0.5)
    new_names = sum(budget.try_spend(0, known=False) for _ in range(100))
    assert new_names == 5  # 10 tokens, 5 reserved: new names stop where the reserve begins
    known = sum(budget.try_spend(0, known=True) for _ in range(100))
    assert known == 5  # known names may spend the reserve
    assert not budget.try_spend(0.05, known=True)  # half a token refilled: not enough
    assert budget.try_spend(0.1, known=True)  # one token refilled
    assert budget.refused == 95 + 95 + 1
    assert repr(budget) == "<QueryBudget [0.0/10 tokens | Reserve: 5.0 | 10/s | Refused: 191]>"


def test_budget_refills_at_its_rate_up_to_one_second() -> None:
    budget = QueryBudget(rate_qps=10)
    for _ in range(10):
        budget.try_spend(0, known=True)
    assert sum(budget.try_spend(100, known=True) for _ in range(50)) == 10  # burst capped at capacity


def test_budget_reserve_follows_the_known_names() -> None:
    budget = QueryBudget(rate_qps=100, reserve_fraction=0.5)
    budget.hold_for(known_names=0, refresh_interval_s=5)  # a task just started: no reserve
    assert sum(budget.try_spend(0, known=False) for _ in range(200)) == 100
    budget = QueryBudget(rate_qps=100, reserve_fraction=0.5)
    budget.hold_for(known_names=100, refresh_interval_s=5)  # 20 refreshes a second at most
    assert sum(budget.try_spend(0, known=False) for _ in range(200)) == 80
    budget.hold_for(known_names=10_000, refresh_interval_s=5)
    assert budget.reserve == 50  # never more than the fraction


def test_budget_says_how_long_until_a_token() -> None:
    budget = QueryBudget(rate_qps=10, reserve_fraction=0.5)
    assert budget.wait_s(0, known=False) == 0
    while budget.try_spend(0, known=False):
        pass
    assert budget.wait_s(0, known=True) == 0  # the reserve is still there for known names
    assert budget.wait_s(0, known=False) == pytest.approx(0.1)  # one token at 10/s
    assert budget.try_spend(0.1, known=False)


# --- SRV plan -------------------------------------------------------------------------------------------------


def test_srv_plan_honours_priority_and_weight() -> None:
    targets = (
        SrvTarget("10.0.0.1", 31000, priority=10, weight=60),
        SrvTarget("10.0.0.2", 31001, priority=10, weight=20),
        SrvTarget("10.0.0.3", 31002, priority=20, weight=100),
    )
    slots, backup = plan_srv(targets)
    assert slots == (("10.0.0.1", 31000), ("10.0.0.1", 31000), ("10.0.0.2", 31001), ("10.0.0.1", 31000))
    assert backup == (("10.0.0.3", 31002),)


def test_srv_plan_with_zero_weights_spreads_evenly() -> None:
    slots, backup = plan_srv((SrvTarget("10.0.0.1", 1, 0, 0), SrvTarget("10.0.0.2", 2, 0, 0)))
    assert sorted(slots) == [("10.0.0.1", 1), ("10.0.0.2", 2)]
    assert backup == ()


# --- access log format ------------------------------------------------------------------------------------


def _access_record() -> AccessRecord:
    return AccessRecord(
        time=0.0, request_id="rid", trace_id='Root=1-"x"\\\n', traceparent="00-ab-cd-01", client_ip="10.0.0.1",
        x_forwarded_for="203.0.113.9", user_agent='curl/8 "q"\x1b', method="GET", deployment="dep",
        path='/a"b\\c\x00\xff', status=200, bytes_in=1, bytes_sent=2, duration_ms=0.5, upstream_addr="10.0.0.2:3000",
        upstream_reused=False, upstream_connect_ms=0.25, upstream_header_ms=0.125, dns="hit", error=None, held_ms=None,
    )  # fmt: skip


def test_access_lines_are_json_whatever_the_path_and_trace_id() -> None:
    line = json.loads(format_json("2026-01-01T00:00:00.000Z", _access_record()))
    assert list(line) == ["time", "type", *ACCESS_FIELDS[1:]]
    assert line["path"] == '/a"b\\c\x00\xff'
    assert line["trace_id"] == 'Root=1-"x"\\\n'
    assert line["user_agent"] == 'curl/8 "q"\x1b'
    assert (line["upstream_reused"], line["error"], line["deployment"]) == (False, None, "dep")
    assert (line["upstream_connect_ms"], line["upstream_header_ms"]) == (0.25, 0.125)


def test_text_access_lines_read_like_nginx_combined_and_escape_what_clients_send() -> None:
    line = format_text("2026-01-01T00:00:00.000Z", _access_record())
    assert line.startswith('10.0.0.1 - - [2026-01-01T00:00:00.000Z] "GET /a\\"b\\\\c\\u0000\\u00ff" 200 2 "-" ')
    assert '"curl/8 \\"q\\"\\u001b"' in line
    assert "\x1b" not in line
    assert "\n" not in line
    assert line.endswith(
        "rt=0.5 deployment=dep upstream=10.0.0.2:3000 uct=0.25 uht=0.125 dns=hit error=- held=- request_id=rid"
    )


async def test_access_log_drops_and_counts_batches_beyond_its_bound_while_stdout_stalls() -> None:
    class StalledStream(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.released = threading.Event()

        def write(self, text: str) -> int:
            self.released.wait(10)
            return super().write(text)

    stream = StalledStream()
    log = AccessLog(stream, flush_s=3600)
    try:
        for _ in range(AccessLog.MAX_QUEUED_BATCHES + 10):  # the writer thread holds the first batch
            log.write(_access_record())
            log.flush()
        assert 1 <= log.dropped <= 10
    finally:
        stream.released.set()
        log.close()
    assert stream.getvalue().count("\n") == AccessLog.MAX_QUEUED_BATCHES + 10 - log.dropped


# --- the request line's version, read off the client's bytes ---------------------------------------------------


@pytest.mark.parametrize(
    ("read", "minor"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 1),
        (b"GET /services/a/b?c=d HTTP/1.0\r\n\r\n", 0),
        (b"\r\nGET / HTTP/1.1\r\n\r\n", -1),  # an empty line first: the parser is asked
        (b"GET / HTTP/1.1\nHost: h HTTP/1.0\r\n\r\n", -1),  # a bare LF: never guess past it
        (b"GET / HTTP/2.0\r\n\r\n", -1),
        (b"GET / HTTP/1.1", -1),  # no line end in this read
    ],
)
def test_request_line_minor_reads_only_a_whole_http_1_line(read: bytes, minor: int) -> None:
    assert request_line_minor(read) == minor
