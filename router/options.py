"""Every option of the router, declared once in `OPTIONS`: its flag, its variable, how its value is read,
its default and its help. settings.py builds the parser, the environment lookup and the Settings from it.

Each value parser turns one string into a typed value or raises ValueError with a sentence that says what the
value must be: the message an operator reads, never Python's own (`invalid literal for int()`).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
ENV_PREFIX = "WHALERAY_"
RESOLV_CONF = "/etc/resolv.conf"

# RFC 1918 ranges: where Cloud Map records of ECS tasks live. Loopback, link-local (the instance metadata
# service at 169.254.169.254) and public addresses are refused unless an operator allows them explicitly.
DEFAULT_ALLOW_CIDRS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Resolver:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


# --- value parsers ------------------------------------------------------------------------------------------


def integer(low: int, high: int | None = None, *, what: str) -> Callable[[str], int]:
    """A whole number from `low` (to `high`); `what` completes "must be ..." when the value is not one."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"must be {what}") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be {what}")
        return value

    return parse


def number(*, zero: bool, unit: str = "", what: str) -> Callable[[str], float]:
    """A finite number, positive (or zero when `zero`); `unit` is an optional suffix such as `s`."""

    def parse(text: str) -> float:
        try:
            value = float(text.strip().removesuffix(unit) if unit else text)
        except ValueError:
            raise ValueError(f"must be {what}") from None
        if not ((value >= 0 if zero else value > 0) and value < math.inf):  # NaN fails both
            raise ValueError(f"must be {what}")
        return value

    return parse


def choice(meanings: Mapping[str, T]) -> Callable[[str], T]:
    """One of `meanings`' names, case-insensitive, read as what it means."""
    names = list(meanings)
    allowed = ", ".join(names[:-1]) + f" or {names[-1]}"

    def parse(text: str) -> T:
        value = text.strip().lower()
        if value not in meanings:
            raise ValueError(f"must be {allowed}")
        return meanings[value]

    return parse


PORT = integer(0, 65535, what="a port, 0-65535")
POSITIVE_INT = integer(1, what="a whole number, 1 or more")
INT_OR_ZERO = integer(0, what="a whole number, 0 (off) or more")
SECONDS = number(zero=False, unit="s", what="a positive number of seconds")
SECONDS_OR_ZERO = number(zero=True, unit="s", what="zero or a positive number of seconds")
POSITIVE_NUMBER = number(zero=False, what="a positive number")
NUMBER_OR_ZERO = number(zero=True, what="0 (off) or a positive number")
LOG_LEVEL = choice({name: name.upper() for name in ("debug", "info", "warning", "error")})
ON_OFF = choice({"on": True, "off": False})
ACCESS_LOG = choice({"on": True, "off": False, "json": True})


_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def _bytes(text: str) -> int:
    """`1048576`, `1m`, `1MiB` and `64k` are all accepted; units are binary."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError("must be a size such as 65536, 64k or 1m")
    unit = (match.group(2) or "")[:1].lower()
    return int(match.group(1)) * _SIZE_UNITS[unit]


def _resolvers(text: str) -> tuple[Resolver, ...]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("needs at least one IP[:PORT]")
    return tuple(_resolver(item) for item in items)


def _resolver(text: str) -> Resolver:
    host, port = text, 53
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        port = PORT(rest[1:]) if rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = PORT(port_text)
    try:
        ipaddress.ip_address(host)  # a resolver must be an address: resolving the resolver would be circular
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (a resolver is given as IP[:PORT])") from None
    return Resolver(host, port)


def _cidrs(text: str) -> tuple[Network, ...]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("needs at least one CIDR")
    try:
        return tuple(ipaddress.ip_network(item, strict=False) for item in items)
    except ValueError:
        raise ValueError("must be networks such as 10.0.0.0/8, comma-separated") from None


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _namespace(text: str) -> str:
    name = text.strip().rstrip(".").lower()
    if not name or len(name) > 200 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError("must be a DNS name such as whaleray.local")
    return name


def _srv_prefix(text: str) -> str:
    value = text.strip().lower()
    if value and not re.fullmatch(r"(_?[a-z0-9-]+\.)+", value):
        raise ValueError("must be empty or labels ending in a dot, such as _http._tcp.")
    return value


_WORKER_COUNT = integer(1, 64, what="auto or 1-64")


def _workers(text: str) -> int:
    return 0 if text.strip().lower() == "auto" else _WORKER_COUNT(text)


def default_resolvers(path: str = RESOLV_CONF) -> str:
    """The `nameserver` lines of resolv.conf, as the comma-separated form of `--resolver`."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return "127.0.0.1"
    servers = [line.split()[1] for line in lines if line.startswith("nameserver") and len(line.split()) > 1]
    return ",".join(servers) or "127.0.0.1"


# --- the table of options ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Option:
    field: str
    flag: str
    parse: Callable[[str], Any]
    default: str | Callable[[], str]
    help: str
    repeatable: bool = False

    @property
    def env(self) -> str:
        """The one naming rule: WHALERAY_ and the flag's name, upper-case, '-' as '_'."""
        return ENV_PREFIX + self.flag.removeprefix("--").replace("-", "_").upper()


# fmt: off  (a table reads best as a table: one option, its flag, parser, default and help together)
OPTIONS: tuple[Option, ...] = (
    Option("host", "--host", str, "0.0.0.0", "Address the proxy listener binds."),
    Option("port", "--port", PORT, "8080", "Port of the proxy listener (the ALB's target port)."),
    Option("admin_host", "--admin-host", str, "0.0.0.0", "Address of the admin listener (/health, /ready, /metrics)."),
    Option("admin_port", "--admin-port", PORT, "9901", "Port of the admin listener; 0 turns it off."),
    Option(
        "resolvers",
        "--resolver",
        _resolvers,
        default_resolvers,
        "DNS resolver IP[:PORT]; repeat the flag (or comma-separate the variable) for several, tried in order. "
        "In AWS: 169.254.169.253 (default: the nameservers of /etc/resolv.conf).",
        repeatable=True,
    ),
    Option(
        "namespace", "--namespace", _namespace, "whaleray.local", "Cloud Map namespace: <id>.<namespace> is resolved."
    ),
    Option("upstream_port", "--upstream-port", PORT, "3000", "Port of every deployment's backend."),
    Option(
        "upstream_allow_cidrs",
        "--upstream-allow-cidr",
        _cidrs,
        DEFAULT_ALLOW_CIDRS,
        "Networks a resolved address may be in (comma-separated or repeated); others answer 502 "
        "upstream_forbidden. Loopback is refused unless listed.",
        repeatable=True,
    ),
    Option("dns_timeout_s", "--dns-timeout", SECONDS, "1.0", "Seconds one DNS query may take before the next try."),
    Option("dns_tries", "--dns-tries", POSITIVE_INT, "2", "Tries per DNS lookup across the resolvers."),
    Option("dns_min_ttl_s", "--dns-min-ttl", SECONDS, "5", "Shortest time an answer is cached, whatever its TTL."),
    Option("dns_max_ttl_s", "--dns-max-ttl", SECONDS, "60", "Longest time an answer is cached, whatever its TTL."),
    Option(
        "dns_negative_ttl_s",
        "--dns-negative-ttl",
        SECONDS_OR_ZERO,
        "5",
        "Seconds an unknown deployment (NXDOMAIN or no records) is remembered as unknown.",
    ),
    Option(
        "dns_stale_ttl_s",
        "--dns-stale-ttl",
        SECONDS_OR_ZERO,
        "300",
        "Seconds past expiry an answer keeps serving while the resolver is failing.",
    ),
    Option(
        "dns_cache_size",
        "--dns-cache-size",
        POSITIVE_INT,
        "10000",
        "Known deployments the DNS cache holds (LRU); as many unknown ids again are remembered apart.",
    ),
    Option(
        "dns_max_qps",
        "--dns-max-qps",
        POSITIVE_NUMBER,
        "100",
        "Most DNS lookups per second; refreshes of known deployments keep up to half of it. The VPC resolver drops "
        "packets beyond 1024/s per network interface, shared by every task on it in bridge mode.",
    ),
    Option(
        "dns_queue_wait_s",
        "--dns-queue-wait",
        SECONDS_OR_ZERO,
        "2",
        "Longest a lookup of a new deployment waits, queued, for the query budget before 503 resolver_busy "
        "(0: answer at once). At most --dns-max-qps times this many lookups wait.",
    ),
    Option(
        "discovery",
        "--discovery",
        choice({"a": "a", "srv": "srv"}),
        "a",
        "a: A records of <id>.<namespace>, port --upstream-port; srv: SRV records (ECS bridge mode, dynamic "
        "host ports), honouring priority and weight.",
    ),
    Option(
        "srv_prefix",
        "--srv-prefix",
        _srv_prefix,
        "",
        "With --discovery srv: labels put before <id>.<namespace>, e.g. _http._tcp.",
    ),
    Option(
        "client_header_timeout_s",
        "--client-header-timeout",
        SECONDS,
        "30",
        "Seconds a client has to send a whole request head (slowloris guard); 408 after.",
    ),
    Option(
        "client_body_timeout_s",
        "--client-body-timeout",
        SECONDS,
        "60",
        "Seconds a client may pause while sending a request body.",
    ),
    Option(
        "client_keepalive_timeout_s",
        "--client-keepalive-timeout",
        SECONDS,
        "75",
        "Seconds an idle client connection is kept; above the ALB's 60 s so the router never closes first.",
    ),
    Option(
        "tunnel_idle_timeout_s",
        "--tunnel-idle-timeout",
        SECONDS,
        "75",
        "Seconds an upgraded (WebSocket) connection may carry no byte either way before both ends are closed; "
        "above the ALB's 60 s idle timeout, which closes idle WebSockets first.",
    ),
    Option(
        "upstream_connect_timeout_s",
        "--upstream-connect-timeout",
        SECONDS,
        "5",
        "Seconds to connect to a backend; 504 after.",
    ),
    Option(
        "upstream_header_timeout_s",
        "--upstream-header-timeout",
        SECONDS,
        "60",
        "Seconds from sending a request to the backend's response head; 504 after.",
    ),
    Option(
        "upstream_read_timeout_s",
        "--upstream-read-timeout",
        SECONDS,
        "60",
        "Seconds a backend may pause while sending a response body; the response is cut after.",
    ),
    Option(
        "upstream_idle_timeout_s",
        "--upstream-idle-timeout",
        SECONDS,
        "4",
        "Seconds a pooled backend connection stays idle; below Node.js's 5 s keep-alive, "
        "so the backend never closes a connection the router is about to reuse.",
    ),
    Option(
        "upstream_max_idle_per_address",
        "--upstream-max-idle",
        POSITIVE_INT,
        "128",
        "Idle pooled connections kept per backend address.",
    ),
    Option(
        "upstream_max_header_bytes",
        "--upstream-max-header-size",
        _bytes,
        "64k",
        "Largest response head a backend may send (1xx heads and trailers count toward it); 502 above.",
    ),
    Option(
        "upstream_max_header_count",
        "--upstream-max-header-count",
        POSITIVE_INT,
        "200",
        "Most header lines in a backend's response (trailers included); 502 above.",
    ),
    Option(
        "client_send_timeout_s",
        "--client-send-timeout",
        SECONDS,
        "60",
        "Seconds a client may take no byte of what the router writes before its connection is closed "
        "(Nginx's send_timeout): a client that stops reading frees its backend connection and in-flight slot.",
    ),
    Option(
        "upstream_send_timeout_s",
        "--upstream-send-timeout",
        SECONDS,
        "60",
        "Seconds a backend may take no byte of a request body before the request fails: 504 when no response "
        "byte was sent yet, else the client connection is closed (Nginx's proxy_send_timeout).",
    ),
    Option("max_header_bytes", "--max-header-size", _bytes, "32k", "Largest request line plus headers; 431 above."),
    Option("max_header_count", "--max-header-count", POSITIVE_INT, "100", "Most request header lines; 431 above."),
    Option(
        "max_body_bytes",
        "--max-body-size",
        _bytes,
        "0",
        "Largest request body; 413 above. 0 means no limit (bodies are streamed, so memory stays bounded).",
    ),
    Option(
        "drain_delay_s",
        "--drain-delay",
        SECONDS_OR_ZERO,
        "5",
        "On SIGTERM, seconds the listener keeps accepting while /health says 503 so the ALB stops routing.",
    ),
    Option(
        "drain_timeout_s",
        "--drain-timeout",
        SECONDS,
        "20",
        "On SIGTERM, seconds in-flight requests get to finish after the listener closes (keep below ECS stopTimeout).",
    ),
    Option(
        "workers",
        "--workers",
        _workers,
        "1",
        "Processes serving the port (SO_REUSEPORT) under one supervisor; auto: the task's vCPUs (ECS task "
        "metadata, else the cgroup quota), no more than its memory holds at 96 MiB a worker.",
    ),
    Option("log_level", "--log-level", LOG_LEVEL, "info", "debug, info, warning or error."),
    Option(
        "log_format",
        "--log-format",
        choice({"json": "json", "text": "text"}),
        "json",
        "json (one object per line, for CloudWatch) or text.",
    ),
    Option(
        "access_log",
        "--access-log",
        ACCESS_LOG,
        "on",
        "on (json is the same): one line per request on stdout, in --log-format; or off.",
    ),
    Option("metrics", "--metrics", ON_OFF, "on", "on, or off: record nothing and serve an empty /metrics."),
    Option(
        "metrics_max_deployments",
        "--metrics-max-deployments",
        POSITIVE_INT,
        "500",
        "Deployments that get their own metric label; the rest count under _other.",
    ),
    Option(
        "deployment_max_inflight",
        "--deployment-max-inflight",
        INT_OR_ZERO,
        "0",
        "Most requests in flight to one deployment; beyond it 503 deployment_overloaded at once. 0: no limit.",
    ),
    Option(
        "deployment_rate",
        "--deployment-rate",
        NUMBER_OR_ZERO,
        "0",
        "Requests per second one deployment may receive (token bucket); beyond it 429 rate_limited. 0: no limit.",
    ),
    Option(
        "deployment_burst",
        "--deployment-burst",
        INT_OR_ZERO,
        "0",
        "Bucket size of --deployment-rate; 0 means one second's worth.",
    ),
    Option(
        "wake_cluster",
        "--wake-cluster",
        str,
        "",
        "ECS cluster of the deployments' services: turns waking sleeping deployments on their first request on "
        "(with AWS credentials; see --check). Empty: off.",
    ),
    Option(
        "wake_service_prefix",
        "--wake-service-prefix",
        str,
        "whaleray-",
        "A deployment's ECS service is named this prefix and its id (infra/modules/deployment's naming).",
    ),
    Option(
        "wake_timeout_s",
        "--wake-timeout",
        SECONDS,
        "300",
        "Seconds a request waits for its sleeping deployment to wake; 504 wake_timeout after. Generous: on EC2, "
        "ECS may first have to start an instance for the task.",
    ),
    Option(
        "wake_queue",
        "--wake-queue",
        POSITIVE_INT,
        "1000",
        "Requests held for one waking deployment; beyond it 503 wake_queue_full with Retry-After.",
    ),
    Option(
        "wake_max_held",
        "--wake-max-held",
        POSITIVE_INT,
        "5000",
        "Requests held for all waking deployments together; beyond it 503 wake_queue_full.",
    ),
    Option(
        "wake_catalogue_refresh_s",
        "--wake-catalogue-refresh",
        SECONDS,
        "60",
        "Seconds between reads of the namespace's deployments (Cloud Map ListServices); only ids listed there "
        "may wake, and the last good list is kept while the API fails.",
    ),
    Option(
        "wake_poll_s",
        "--wake-poll",
        SECONDS,
        "0.25",
        "Seconds between asks of Cloud Map (DiscoverInstances) for a waking deployment's healthy instances.",
    ),
    Option(
        "idle_report_s",
        "--idle-report",
        SECONDS_OR_ZERO,
        "60",
        "Seconds between reports of opted-in deployments' request counts to CloudWatch, the signal that puts "
        "them back to sleep (infra/modules/deployment); 0: no reports.",
    ),
    Option("aws_region", "--aws-region", str, "", "AWS region of the APIs; empty: the SDK's (AWS_REGION, ...)."),
    Option(
        "aws_endpoint_url",
        "--aws-endpoint-url",
        str,
        "",
        "One endpoint for every AWS API the router calls, such as a local stand-in; empty: AWS's regional ones.",
    ),
)
# fmt: on
