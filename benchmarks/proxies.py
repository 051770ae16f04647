"""The proxies `benchmarks.run` measures, and how each is installed, built, configured and started:

- nginx: the reference configuration (benchmarks/reference/nginx-router.conf), adapted only in ports and resolver;
- haproxy: benchmarks/haproxy.cfg, the same routing with do-resolve, set-dst and http-reuse always;
- relay: benchmarks/relay.py, the bare uvloop + httptools relay, the floor of a Python proxy (not a product);
- router: this repository's router compiled with mypyc, built apart in benchmarks/.run/compiled;
- router-pure: the same source as pure Python, copied apart to benchmarks/.run/pure.

The two routers run from their own directories whatever the working tree holds (`make compiled` or not).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUN_DIR = HERE / ".run"
REFERENCE_CONF = HERE / "reference" / "nginx-router.conf"  # a copy of shared/reference/, origin noted inside
PROXIES = ("nginx", "haproxy", "relay", "router", "router-pure")
PACKAGES = {"nginx": "nginx-light", "wrk": "wrk", "haproxy": "haproxy"}


@dataclass(frozen=True)
class Proxy:
    name: str
    command: list[str]
    port: int
    cwd: Path = ROOT


@dataclass(frozen=True)
class Ports:
    dns: int
    upstream: int


def binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def ensure_tools(proxies: list[str]) -> None:
    """wrk and the packaged proxies among `proxies`, installed with apt-get (as root) when missing."""
    wanted = ["wrk", *(name for name in proxies if name in PACKAGES)]
    missing = [name for name in wanted if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()]
    if not missing:
        return
    packages = [PACKAGES[name] for name in missing]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit(f"benchmarks need {', '.join(missing)}: install them (Debian: apt-get install {' '.join(packages)})")
    print(f"installing {', '.join(packages)} with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *packages], check=True, env=env, stdout=subprocess.DEVNULL)


def adapt_reference(listen_port: int, dns_port: int, upstream_port: int) -> str:
    """The reference configuration with only its listen port, resolver address and upstream port changed."""
    text = REFERENCE_CONF.read_text()
    adapted = text.replace("listen 80;", f"listen 127.0.0.1:{listen_port};")
    adapted = adapted.replace("resolver 169.254.169.253 ", f"resolver 127.0.0.1:{dns_port} ")
    adapted = adapted.replace(".whaleray.local:3000/", f".whaleray.local:{upstream_port}/")
    if adapted.count(str(listen_port)) != 1 or f"127.0.0.1:{dns_port}" not in adapted:
        raise RuntimeError("the reference configuration changed shape: update adapt_reference()")
    return adapted


def nginx_command(conf: Path, name: str) -> list[str]:
    directives = f"daemon off; pid {RUN_DIR / (name + '.pid')}; error_log {RUN_DIR / (name + '.error.log')} warn;"
    return [binary("nginx"), "-p", str(RUN_DIR), "-c", str(conf), "-g", directives]


def haproxy_config(listen_port: int, ports: Ports) -> str:
    text = (HERE / "haproxy.cfg").read_text()
    values = {"__LISTEN_PORT__": listen_port, "__DNS_PORT__": ports.dns, "__UPSTREAM_PORT__": ports.upstream}
    for key, value in values.items():
        text = text.replace(key, str(value))
    return text


def compiled_router() -> Path:
    """The router compiled with mypyc into a directory of its own (setup.py's one list of modules); mypyc's
    build directory keeps a rebuild of unchanged source short."""
    target = RUN_DIR / "compiled"
    shutil.rmtree(target, ignore_errors=True)
    print("compiling the router with mypyc for the `router` rows", flush=True)
    build = [sys.executable, "setup.py", "-q", "build", "--build-lib", str(target)]
    subprocess.run([*build, "--build-temp", str(RUN_DIR / "build-temp")], check=True, cwd=ROOT)
    return target


def pure_router() -> Path:
    target = RUN_DIR / "pure"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(ROOT / "router", target / "router", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return target


def router_command(extra_args: str, port: int, ports: Ports) -> list[str]:
    return [
        sys.executable, "-m", "router", "--host", "127.0.0.1", "--port", str(port), "--admin-port", "0",
        "--resolver", f"127.0.0.1:{ports.dns}", "--upstream-allow-cidr", "127.0.0.0/8",
        "--upstream-port", str(ports.upstream), "--log-level", "warning",
        "--access-log", "off",  # the reference Nginx configuration has access_log off: the same work
        *extra_args.split(),
    ]  # fmt: skip


def prepare(names: list[str], listen_ports: dict[str, int], ports: Ports, router_args: str) -> dict[str, Proxy]:
    """Each proxy of `names` configured (and built) to listen on its port of `listen_ports`."""
    proxies = {}
    for name in names:
        port = listen_ports[name]
        if name == "nginx":
            conf = RUN_DIR / "nginx-router.conf"
            conf.write_text(adapt_reference(port, ports.dns, ports.upstream))
            proxies[name] = Proxy(name, nginx_command(conf, "nginx-router"), port)
        elif name == "haproxy":
            conf = RUN_DIR / "haproxy.cfg"
            conf.write_text(haproxy_config(port, ports))
            proxies[name] = Proxy(name, [binary("haproxy"), "-W", "-db", "-f", str(conf)], port)
        elif name == "relay":
            relay = ["-m", "benchmarks.relay", "--port", str(port), "--resolver", f"127.0.0.1:{ports.dns}"]
            proxies[name] = Proxy(name, [sys.executable, *relay, "--upstream-port", str(ports.upstream)], port)
        else:  # a router runs from its build's directory: `python -m` puts the working directory first
            directory = compiled_router() if name == "router" else pure_router()
            proxies[name] = Proxy(name, router_command(router_args, port, ports), port, cwd=directory)
    return proxies
