"""Settings: one frozen object from flags over `WHALERAY_*` over defaults, with clear errors."""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

import pytest

from router.errors import ERRORS
from router.options import OPTIONS, Resolver, default_resolvers
from router.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_defaults() -> None:
    settings = load_settings([], environ={"WHALERAY_RESOLVER": "169.254.169.253"})
    assert settings.port == 8080
    assert settings.host == "0.0.0.0"
    assert settings.namespace == "whaleray.local"
    assert settings.upstream_port == 3000
    assert settings.resolvers == (Resolver("169.254.169.253", 53),)
    assert settings.client_keepalive_timeout_s == 75  # above the ALB's 60 s idle timeout
    assert settings.upstream_idle_timeout_s < 5  # below Node.js's keep-alive timeout
    assert ipaddress.ip_network("127.0.0.0/8") not in settings.upstream_allow_cidrs


def test_flag_wins_over_environment_which_wins_over_default() -> None:
    environ = {"WHALERAY_PORT": "9000", "WHALERAY_NAMESPACE": "Prod.Internal."}
    assert load_settings([], environ=environ).port == 9000
    assert load_settings(["--port", "9100"], environ=environ).port == 9100
    assert load_settings([], environ=environ).namespace == "prod.internal"


def test_repeated_and_comma_separated_resolvers() -> None:
    settings = load_settings(["--resolver", "10.0.0.2", "--resolver", "127.0.0.1:5353,[::1]:53"], environ={})
    assert settings.resolvers == (Resolver("10.0.0.2", 53), Resolver("127.0.0.1", 5353), Resolver("::1", 53))


def test_sizes_and_durations() -> None:
    settings = load_settings(
        ["--max-body-size", "10m", "--max-header-size", "64KiB", "--dns-timeout", "1.5s"], environ={}
    )
    assert settings.max_body_bytes == 10 * 1024 * 1024
    assert settings.max_header_bytes == 64 * 1024
    assert settings.dns_timeout_s == 1.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "http"], "--port='http'"),
        (["--resolver", "dns.example.com"], "--resolver='dns.example.com'"),
        (["--upstream-allow-cidr", "10.0.0.0/33"], "--upstream-allow-cidr='10.0.0.0/33'"),
        (["--namespace", "bad_name.local"], "--namespace='bad_name.local'"),
        (["--dns-timeout", "0"], "--dns-timeout='0'"),
        (["--dns-timeout", "nan"], "--dns-timeout='nan'"),
        (["--max-body-size", "lots"], "--max-body-size='lots'"),
        (["--dns-min-ttl", "90"], "--dns-min-ttl must not exceed --dns-max-ttl"),
        (["--log-level", "loud"], "--log-level='loud'"),
    ],
)
def test_bad_values_are_refused_with_the_flag_named(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load_settings(argv, environ={"WHALERAY_RESOLVER": "10.0.0.2"})


def test_settings_are_frozen() -> None:
    settings = load_settings([], environ={"WHALERAY_RESOLVER": "10.0.0.2"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


def test_default_resolvers_come_from_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch ec2.internal\nnameserver 169.254.169.253\nnameserver 10.0.0.2\n")
    assert default_resolvers(str(conf)) == "169.254.169.253,10.0.0.2"


def test_summary_is_plain_json_values() -> None:
    summary = load_settings([], environ={"WHALERAY_RESOLVER": "10.0.0.2"}).summary()
    assert summary["resolvers"] == ["10.0.0.2:53"]
    assert summary["upstream_allow_cidrs"] == ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]


def test_readme_documents_every_option_and_error_code() -> None:
    readme = (ROOT / "README.md").read_text()
    for option in OPTIONS:
        assert f"`{option.flag}`" in readme, option.flag
        assert f"`{option.env}`" in readme, option.env
    for code, kind in ERRORS.items():
        assert f"`{code}`" in readme, code
        assert f"| {kind.status} |" in readme or f"| {kind.status} " in readme, code
