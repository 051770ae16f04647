"""The `whaleray-router` command: `serve` (the default) runs the router, `demo` runs the loopback demo,
`--version` prints the version and which build (compiled or pure Python) is installed.

With `--workers` other than 1, `serve` runs the supervisor, which starts the workers with the same command
line. Exit codes: 0 after a clean drain, 2 for bad settings, 1 when a second signal cuts the drain short.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from router.settings import SettingsError, load_settings

USAGE_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "demo":
        from router.demo.run import main as demo_main

        return demo_main(args[1:])
    if args and args[0] == "serve":
        args = args[1:]
    if "--version" in args:
        from router.build import version_line

        print(version_line())
        return 0
    try:
        settings = load_settings(args)
    except SettingsError as error:
        print(f"whaleray-router: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    from router.supervisor import supervise, worker_identity

    worker = worker_identity(os.environ)
    if worker is None and settings.workers != 1:
        return supervise(settings, args)
    from router.app import serve

    return serve(settings, worker)
