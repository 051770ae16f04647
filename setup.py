"""Build of the router: the data plane compiled with mypyc when a C compiler is at hand, pure Python otherwise.

Everything else lives in pyproject.toml; this file exists because setuptools takes extension modules only
from code. `WHALERAY_PURE_PYTHON=1` at install time forces the pure-Python build (the development install
uses it, so that edits to the source take effect without a rebuild).
"""

from __future__ import annotations

import os
import shutil
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


def compiler_available() -> bool:
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(compiler) is not None and os.path.exists(sysconfig.get_paths()["include"] + "/Python.h")


def extension_modules() -> list[object]:
    if os.environ.get("WHALERAY_PURE_PYTHON") == "1" or not compiler_available():
        return []
    from mypyc.build import mypycify  # noqa: PLC0415 - only the compiled build needs the compiler

    return list(mypycify(COMPILED_MODULES, opt_level="3"))


setup(ext_modules=extension_modules())
