"""The router's one settings object, built once from command-line flags over `WHALERAY_*` variables.

A flag wins over its environment variable, which wins over the default. Every option is declared once in
`OPTIONS`: that table builds the argparse parser, the `--help` text (with variable and default), and the
validation. This module does no I/O except reading `/etc/resolv.conf` for the default resolvers.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

ENV_PREFIX = "WHALERAY_"
RESOLV_CONF = "/etc/resolv.conf"

# RFC 1918 ranges: where Cloud Map records of ECS tasks live. Loopback, link-local (the instance metadata
# service at 169.254.169.254) and public addresses are refused unless an operator allows them explicitly.
DEFAULT_ALLOW_CIDRS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"


class SettingsError(ValueError):
    """A flag or variable has a value the router cannot run with; the message names which and why."""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Resolver:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    host: str
    port: int
    admin_host: str
    admin_port: int
    resolvers: tuple[Resolver, ...]
    namespace: str
    upstream_port: int
    upstream_allow_cidrs: tuple[Network, ...]
    dns_timeout_s: float
    dns_tries: int
    dns_min_ttl_s: float
    dns_max_ttl_s: float
    dns_negative_ttl_s: float
    dns_stale_ttl_s: float
    dns_cache_size: int
    dns_max_qps: float
    dns_queue_wait_s: float
    discovery: str
    srv_prefix: str
    client_header_timeout_s: float
    client_body_timeout_s: float
    client_keepalive_timeout_s: float
    tunnel_idle_timeout_s: float
    upstream_connect_timeout_s: float
    upstream_header_timeout_s: float
    upstream_read_timeout_s: float
    upstream_idle_timeout_s: float
    upstream_max_idle_per_address: int
    upstream_max_header_bytes: int
    upstream_max_header_count: int
    client_send_timeout_s: float
    upstream_send_timeout_s: float
    max_header_bytes: int
    max_header_count: int
    max_body_bytes: int
    drain_delay_s: float
    drain_timeout_s: float
    workers: int  # 0: auto (the CPUs the container may use)
    log_level: str
    log_format: str
    access_log: str
    metrics: bool
    metrics_max_deployments: int
    deployment_max_inflight: int
    deployment_rate: float
    deployment_burst: int

    def summary(self) -> dict[str, object]:
        """Every setting as plain JSON values, for the start-up log line (the router holds no secrets)."""
        out: dict[str, object] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                value = [str(item) for item in value]
            out[field.name] = value
        return out


# --- value parsers: each turns one string into a typed value or raises ValueError with a reason ---------


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be 0-65535")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text.removesuffix("s"))
    if not 0 < value < math.inf:  # also refuses NaN
        raise ValueError("must be a positive number of seconds")
    return value


def _seconds_or_zero(text: str) -> float:
    value = float(text.removesuffix("s"))
    if not 0 <= value < math.inf:  # also refuses NaN
        raise ValueError("must be zero or a positive number of seconds")
    return value


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
        port = _port(rest[1:]) if rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _port(port_text)
    ipaddress.ip_address(host)  # a resolver must be an address: resolving the resolver would be circular
    return Resolver(host, port)


def _cidrs(text: str) -> tuple[Network, ...]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("needs at least one CIDR")
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def _namespace(text: str) -> str:
    name = text.strip().rstrip(".").lower()
    if not name or len(name) > 200 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError("must be a DNS name such as whaleray.local")
    return name


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be debug, info, warning or error")
    return level


def _discovery(text: str) -> str:
    value = text.strip().lower()
    if value not in {"a", "srv"}:
        raise ValueError("must be a or srv")
    return value


def _srv_prefix(text: str) -> str:
    value = text.strip().lower()
    if value and not re.fullmatch(r"(_?[a-z0-9-]+\.)+", value):
        raise ValueError("must be empty or labels ending in a dot, such as _http._tcp.")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise ValueError("must be a positive number")
    return value


def _access_log(text: str) -> str:
    value = text.strip().lower()
    if value not in {"off", "json"}:
        raise ValueError("must be off or json")
    return value


def _workers(text: str) -> int:
    value = text.strip().lower()
    if value == "auto":
        return 0
    count = int(value)
    if not 1 <= count <= 64:
        raise ValueError("must be auto or 1-64")
    return count


def _on_off(text: str) -> bool:
    value = text.strip().lower()
    if value not in {"on", "off"}:
        raise ValueError("must be on or off")
    return value == "on"


def _zero_or_positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 (off) or more")
    return value


def _zero_or_positive_float(text: str) -> float:
    value = float(text)
    if not 0 <= value < math.inf:
        raise ValueError("must be 0 (off) or a positive number")
    return value


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in {"json", "text"}:
        raise ValueError("must be json or text")
    return value


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
    env_name: str = ""  # when the variable is not the flag's name (a repeatable flag's variable is plural)

    @property
    def env(self) -> str:
        return self.env_name or ENV_PREFIX + self.flag.removeprefix("--").replace("-", "_").upper()


# fmt: off  (a table reads best as a table: one option, its flag, parser, default and help together)
OPTIONS: tuple[Option, ...] = (
    Option("host", "--host", str, "0.0.0.0", "Address the proxy listener binds."),
    Option("port", "--port", _port, "8080", "Port of the proxy listener (the ALB's target port)."),
    Option("admin_host", "--admin-host", str, "0.0.0.0", "Address of the admin listener (/health, /ready, /metrics)."),
    Option("admin_port", "--admin-port", _port, "9901", "Port of the admin listener; 0 turns it off."),
    Option(
        "resolvers",
        "--resolver",
        _resolvers,
        default_resolvers,
        "DNS resolver IP[:PORT]; repeat the flag (or comma-separate the variable) for several, tried in order. "
        "In AWS: 169.254.169.253 (default: the nameservers of /etc/resolv.conf).",
        repeatable=True,
        env_name="WHALERAY_RESOLVERS",
    ),
    Option(
        "namespace", "--namespace", _namespace, "whaleray.local", "Cloud Map namespace: <id>.<namespace> is resolved."
    ),
    Option("upstream_port", "--upstream-port", _port, "3000", "Port of every deployment's backend."),
    Option(
        "upstream_allow_cidrs",
        "--upstream-allow-cidr",
        _cidrs,
        DEFAULT_ALLOW_CIDRS,
        "Networks a resolved address may be in (comma-separated or repeated); others answer 502 "
        "upstream_forbidden. Loopback is refused unless listed.",
        repeatable=True,
        env_name="WHALERAY_UPSTREAM_ALLOW_CIDRS",
    ),
    Option("dns_timeout_s", "--dns-timeout", _seconds, "1.0", "Seconds one DNS query may take before the next try."),
    Option("dns_tries", "--dns-tries", _positive_int, "2", "Tries per DNS lookup across the resolvers."),
    Option("dns_min_ttl_s", "--dns-min-ttl", _seconds, "5", "Shortest time an answer is cached, whatever its TTL."),
    Option("dns_max_ttl_s", "--dns-max-ttl", _seconds, "60", "Longest time an answer is cached, whatever its TTL."),
    Option(
        "dns_negative_ttl_s",
        "--dns-negative-ttl",
        _seconds_or_zero,
        "5",
        "Seconds an unknown deployment (NXDOMAIN or no records) is remembered as unknown.",
    ),
    Option(
        "dns_stale_ttl_s",
        "--dns-stale-ttl",
        _seconds_or_zero,
        "300",
        "Seconds past expiry an answer keeps serving while the resolver is failing.",
    ),
    Option(
        "dns_cache_size",
        "--dns-cache-size",
        _positive_int,
        "10000",
        "Known deployments the DNS cache holds (LRU); as many unknown ids again are remembered apart.",
    ),
    Option(
        "dns_max_qps",
        "--dns-max-qps",
        _positive_float,
        "100",
        "Most DNS lookups per second; refreshes of known deployments keep up to half of it. The VPC resolver drops "
        "packets beyond 1024/s per network interface, shared by every task on it in bridge mode.",
    ),
    Option(
        "dns_queue_wait_s",
        "--dns-queue-wait",
        _seconds_or_zero,
        "2",
        "Longest a lookup of a new deployment waits, queued, for the query budget before 503 resolver_busy "
        "(0: answer at once). At most --dns-max-qps times this many lookups wait.",
    ),
    Option(
        "discovery",
        "--discovery",
        _discovery,
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
        _seconds,
        "30",
        "Seconds a client has to send a whole request head (slowloris guard); 408 after.",
    ),
    Option(
        "client_body_timeout_s",
        "--client-body-timeout",
        _seconds,
        "60",
        "Seconds a client may pause while sending a request body.",
    ),
    Option(
        "client_keepalive_timeout_s",
        "--client-keepalive-timeout",
        _seconds,
        "75",
        "Seconds an idle client connection is kept; above the ALB's 60 s so the router never closes first.",
    ),
    Option(
        "tunnel_idle_timeout_s",
        "--tunnel-idle-timeout",
        _seconds,
        "75",
        "Seconds an upgraded (WebSocket) connection may carry no byte either way before both ends are closed; "
        "above the ALB's 60 s idle timeout, which closes idle WebSockets first.",
    ),
    Option(
        "upstream_connect_timeout_s",
        "--upstream-connect-timeout",
        _seconds,
        "5",
        "Seconds to connect to a backend; 504 after.",
    ),
    Option(
        "upstream_header_timeout_s",
        "--upstream-header-timeout",
        _seconds,
        "60",
        "Seconds from sending a request to the backend's response head; 504 after.",
    ),
    Option(
        "upstream_read_timeout_s",
        "--upstream-read-timeout",
        _seconds,
        "60",
        "Seconds a backend may pause while sending a response body; the response is cut after.",
    ),
    Option(
        "upstream_idle_timeout_s",
        "--upstream-idle-timeout",
        _seconds,
        "4",
        "Seconds a pooled backend connection stays idle; below Node.js's 5 s keep-alive, "
        "so the backend never closes a connection the router is about to reuse.",
    ),
    Option(
        "upstream_max_idle_per_address",
        "--upstream-max-idle",
        _positive_int,
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
        _positive_int,
        "200",
        "Most header lines in a backend's response (trailers included); 502 above.",
    ),
    Option(
        "client_send_timeout_s",
        "--client-send-timeout",
        _seconds,
        "60",
        "Seconds a client may take no byte of what the router writes before its connection is closed "
        "(Nginx's send_timeout): a client that stops reading frees its backend connection and in-flight slot.",
    ),
    Option(
        "upstream_send_timeout_s",
        "--upstream-send-timeout",
        _seconds,
        "60",
        "Seconds a backend may take no byte of a request body before the request fails: 504 when no response "
        "byte was sent yet, else the client connection is closed (Nginx's proxy_send_timeout).",
    ),
    Option("max_header_bytes", "--max-header-size", _bytes, "32k", "Largest request line plus headers; 431 above."),
    Option("max_header_count", "--max-header-count", _positive_int, "100", "Most request header lines; 431 above."),
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
        _seconds_or_zero,
        "5",
        "On SIGTERM, seconds the listener keeps accepting while /health says 503 so the ALB stops routing.",
    ),
    Option(
        "drain_timeout_s",
        "--drain-timeout",
        _seconds,
        "20",
        "On SIGTERM, seconds in-flight requests get to finish after the listener closes (keep below ECS stopTimeout).",
    ),
    Option(
        "workers",
        "--workers",
        _workers,
        "1",
        "Processes serving the port (SO_REUSEPORT) under one supervisor; auto: the CPUs the container may use "
        "(its cgroup CPU quota).",
    ),
    Option("log_level", "--log-level", _log_level, "info", "debug, info, warning or error."),
    Option("log_format", "--log-format", _log_format, "json", "json (one object per line, for CloudWatch) or text."),
    Option("access_log", "--access-log", _access_log, "json", "off, or json: one line per request on stdout."),
    Option("metrics", "--metrics", _on_off, "on", "on, or off: record nothing and serve an empty /metrics."),
    Option(
        "metrics_max_deployments",
        "--metrics-max-deployments",
        _positive_int,
        "500",
        "Deployments that get their own metric label; the rest count under _other.",
    ),
    Option(
        "deployment_max_inflight",
        "--deployment-max-inflight",
        _zero_or_positive_int,
        "0",
        "Most requests in flight to one deployment; beyond it 503 deployment_overloaded at once. 0: no limit.",
    ),
    Option(
        "deployment_rate",
        "--deployment-rate",
        _zero_or_positive_float,
        "0",
        "Requests per second one deployment may receive (token bucket); beyond it 429 rate_limited. 0: no limit.",
    ),
    Option(
        "deployment_burst",
        "--deployment-burst",
        _zero_or_positive_int,
        "0",
        "Bucket size of --deployment-rate; 0 means one second's worth.",
    ),
)
# fmt: on


def _default_text(option: Option) -> str:
    return option.default if isinstance(option.default, str) else "see help"


def build_parser(prog: str = "whaleray-router") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="WhaleRay Router: proxies /services/<deploymentId>/<path> to <deploymentId>.<namespace>.",
        epilog="Every flag can also be set by the environment variable shown; a flag wins over its variable.",
    )
    # Handled by router.cli before parsing (it exits at once); listed here so that --help shows it.
    parser.add_argument("--version", action="store_true", help="Print the version and the build (compiled or pure).")
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.field,
            action="append" if option.repeatable else "store",
            default=None,
            metavar="VALUE",
            help=f"{option.help} [env {option.env}; default {_default_text(option)}]",
        )
    return parser


def settings_from(namespace: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """Flags over environment over defaults, each value parsed and the whole checked for consistency."""
    values: dict[str, Any] = {}
    for option in OPTIONS:
        flag_value = getattr(namespace, option.field, None)
        if isinstance(flag_value, list):
            flag_value = ",".join(flag_value)
        if flag_value is not None:
            raw, source = flag_value, option.flag
        elif option.env in environ:
            raw, source = environ[option.env], option.env
        else:
            raw = option.default if isinstance(option.default, str) else option.default()
            source = f"default of {option.flag}"
        try:
            values[option.field] = option.parse(raw)
        except ValueError as error:
            raise SettingsError(f"{source}={raw!r}: {error}") from None
    unknown = unknown_environment(environ)
    if unknown:
        raise SettingsError(f"unknown variable {', '.join(unknown)}: no option reads it (a typo?)")
    settings = Settings(**values)
    _check_consistency(settings)
    return settings


def _check_consistency(settings: Settings) -> None:
    if settings.dns_min_ttl_s > settings.dns_max_ttl_s:
        raise SettingsError("--dns-min-ttl must not exceed --dns-max-ttl")
    if settings.max_header_bytes < 1024:
        raise SettingsError("--max-header-size must be at least 1k")
    if settings.upstream_max_header_bytes < 1024:
        raise SettingsError("--upstream-max-header-size must be at least 1k")


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """`WHALERAY_*` variables no option reads: almost always a typo an operator wants to hear about."""
    known = {option.env for option in OPTIONS}
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    return settings_from(build_parser().parse_args(argv), environ)
