"""Which build of the router runs: `compiled` (the data plane built by mypyc, see setup.py) or `pure` Python.

Never compiled itself, so it can look at the modules that may be.
"""

from __future__ import annotations

import importlib.machinery
import platform

from router import __version__
from router.proxy import server

# The data plane's core: setup.py compiles it together with the other hot modules, or none of them.
_PROBE_FILE = server.__file__ or ""
BUILD = "compiled" if _PROBE_FILE.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)) else "pure"


def version_line() -> str:
    """What `whaleray-router --version` prints."""
    return f"whaleray-router {__version__} ({BUILD} build, Python {platform.python_version()})"
