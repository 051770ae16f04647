"""Build of the router: the data plane compiled with mypyc when a C compiler is at hand, pure Python otherwise.

Everything else lives in pyproject.toml; this file exists because setuptools takes extension modules only
from code. `WHALERAY_PURE_PYTHON=1` at install time forces the pure-Python build (the development install
uses it, so that edits to the source take effect without a rebuild).
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig

from setuptools import setup

# The modules mypyc compiles: the data plane, which runs for every request. The one list of them.
COMPILED_MODULES = [
    "router/errors.py",
    "router/limits.py",
    "router/metrics.py",
    "router/proxy/client.py",
    "router/proxy/client_side.py",
    "router/proxy/connector.py",
    "router/proxy/dispatch.py",
    "router/proxy/exchange.py",
    "router/proxy/phase.py",
    "router/proxy/record.py",
    "router/proxy/request_body.py",
    "router/proxy/headers.py",
    "router/proxy/pool.py",
    "router/proxy/route.py",
    "router/proxy/server.py",
    "router/proxy/telemetry.py",
    "router/proxy/upstream.py",
    "router/settings.py",  # the hot path reads a dozen settings a request: native attributes, not slots
    "router/discovery/balancer.py",
    "router/discovery/budget.py",
    "router/discovery/cache.py",
    "router/discovery/service.py",
]


def missing_for_compiling() -> str | None:
    """Why the data plane cannot be compiled here, or None when it can. `CC` is the compiler setuptools would
    run (the environment's, else Python's build configuration)."""
    compiler = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        return f"no C compiler ({compiler!r} not found)"
    headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if not os.path.exists(headers):
        return f"no Python headers ({headers} not found)"
    return None


def extension_modules() -> list[object]:
    if os.environ.get("WHALERAY_PURE_PYTHON") == "1":
        return []
    missing = missing_for_compiling()
    if missing is not None:
        # One line in the build's output: a pure wheel is slower, and whoever builds it should know why they got it.
        print(f"whaleray-router: building the pure-Python fallback: {missing}", file=sys.stderr)
        return []
    from mypyc.build import mypycify  # noqa: PLC0415 - only the compiled build needs the compiler

    return list(mypycify(COMPILED_MODULES, opt_level="3"))


setup(ext_modules=extension_modules())
