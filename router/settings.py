"""The router's one settings object, built once from command-line flags over `WHALERAY_*` variables.

A flag wins over its environment variable, which wins over the default. Every option is declared once in
`options.OPTIONS`: that table builds the argparse parser, the `--help` text (with variable and default), and the
validation. Every problem is reported at once, each naming its flag or variable (what `--check` prints); a
near miss of a flag or variable name is answered with the right one. No I/O but reading /etc/resolv.conf.
"""

from __future__ import annotations

import argparse
import difflib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from router.options import ENV_PREFIX, OPTIONS, Network, Option, Resolver


class SettingsError(ValueError):
    """Flags or variables the router cannot run with: one line per problem, naming which and why."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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
    discovery: Literal["a", "srv"]
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
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
    log_format: Literal["json", "text"]
    access_log: bool
    metrics: bool
    metrics_max_deployments: int
    deployment_max_inflight: int
    deployment_rate: float
    deployment_burst: int
    wake_cluster: str
    wake_service_prefix: str
    wake_timeout_s: float
    wake_queue: int
    wake_max_held: int
    wake_catalogue_refresh_s: float
    wake_poll_s: float
    idle_report_s: float
    aws_region: str
    aws_endpoint_url: str

    def summary(self) -> dict[str, object]:
        """Every setting as plain JSON values, for the start-up log line (the router holds no secrets)."""
        out: dict[str, object] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, tuple):
                value = [str(item) for item in value]
            out[field.name] = value
        return out


def _default_text(option: Option) -> str:
    return option.default if isinstance(option.default, str) else "see help"


def build_parser(prog: str = "whaleray-router") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="WhaleRay Router: proxies /services/<deploymentId>/<path> to <deploymentId>.<namespace>.",
        epilog="Every flag can also be set by the environment variable shown; a flag wins over its variable.",
        allow_abbrev=False,  # `--po 8080` must not quietly mean --port
    )
    # Handled by router.cli before parsing (they exit at once); listed here so that --help shows them.
    parser.add_argument("--version", action="store_true", help="Print the version and the build (compiled or pure).")
    parser.add_argument(
        "--check",
        action="store_true",
        help="Validate the flags, WHALERAY_* variables and their constraints, print every problem (exit 2) or a "
        "one-line summary (exit 0), and stop: no port is bound, no query sent.",
    )
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
    problems: list[str] = []
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
            problems.append(f"{source}={raw!r}: {error}")
    problems += [_unknown_variable(name) for name in unknown_environment(environ)]
    if problems:
        raise SettingsError(problems)
    settings = Settings(**values)
    problems = _inconsistencies(settings)
    if problems:
        raise SettingsError(problems)
    return settings


def _inconsistencies(settings: Settings) -> list[str]:
    problems = []
    if settings.dns_min_ttl_s > settings.dns_max_ttl_s:
        problems.append("--dns-min-ttl must not exceed --dns-max-ttl")
    if settings.max_header_bytes < 1024:
        problems.append("--max-header-size must be at least 1k")
    if settings.upstream_max_header_bytes < 1024:
        problems.append("--upstream-max-header-size must be at least 1k")
    if settings.srv_prefix and settings.discovery != "srv":
        problems.append("--srv-prefix applies only with --discovery srv")
    return problems


def unknown_environment(environ: Mapping[str, str]) -> list[str]:
    """`WHALERAY_*` variables no option reads: almost always a typo an operator wants to hear about."""
    known = {option.env for option in OPTIONS}
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)


def _unknown_variable(name: str) -> str:
    return f"unknown variable {name}: no option reads it{_suggestion(name, [option.env for option in OPTIONS])}"


def _suggestion(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    return f" (did you mean {close[0]}?)" if close else " (a typo?)"


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `argv` (flags only: no positional argument) and `environ`. Raises SettingsError."""
    environ = os.environ if environ is None else environ
    namespace, extra = build_parser().parse_known_args(argv)
    flags = [option.flag for option in OPTIONS]
    names = [arg.split("=")[0] for arg in extra if arg.startswith("-")]
    strangers = [f"unknown flag {name}{_suggestion(name, flags)}" for name in names]
    strangers += [f"unexpected argument {arg!r}" for arg in extra if not arg.startswith("-")]
    try:
        settings = settings_from(namespace, environ)
    except SettingsError as error:
        raise SettingsError(strangers + error.problems) from None
    if strangers:
        raise SettingsError(strangers)
    return settings
