"""The `whaleray-router` command: `serve` (the default) runs the router, `--version` prints the version and
which build (compiled or pure Python) is installed, `--check` validates the settings without starting anything,
`inspect <id>` asks a running router's admin port about one deployment. (The loopback demo is not part of the
router: `make demo` runs `python -m whaleray_demo` from the repository.)

With `--workers` other than 1, `serve` runs the supervisor, which starts the workers with the same command
line. Exit codes: 0 after a clean drain, 2 for bad settings, 1 when start-up fails or a second signal cuts the
drain short.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from router.settings import Settings, SettingsError, load_settings

USAGE_ERROR = 2


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "demo":
        print(
            "whaleray-router: the loopback demo is not part of the router: run `make demo` in the repository",
            file=sys.stderr,
        )
        return USAGE_ERROR
    if args and args[0] == "inspect":
        from router.inspector import main as inspect_main

        return inspect_main(args[1:])
    if args and args[0] == "serve":
        args = args[1:]
    if "--version" in args:
        from router.build import version_line

        print(version_line())
        return 0
    check = "--check" in args
    try:
        settings = load_settings(args)
    except SettingsError as error:
        if check:  # a person reads it: a sentence a line, as `nginx -t` prints them
            for problem in error.problems:
                print(f"whaleray-router: error: {problem}", file=sys.stderr)
        else:  # a log reader does: one line in the log format, like any start-up failure
            log_invalid_settings(args, os.environ, error.problems)
        return USAGE_ERROR
    if check:
        print(f"whaleray-router: configuration ok: {check_summary(settings)}")
        return 0
    from router.supervisor import supervise, worker_identity

    worker = worker_identity(os.environ)
    if worker is None and settings.workers != 1:
        return supervise(settings, args)
    from router.app import serve

    return serve(settings, worker)


def log_invalid_settings(args: Sequence[str], environ: Mapping[str, str], problems: Sequence[str]) -> None:
    """One error line in the log format the settings ask for (JSON when they do not say, or say it wrongly)."""
    import logging

    from router.logs import setup_logging

    asked = environ.get("WHALERAY_LOG_FORMAT", "json")
    for index, arg in enumerate(args):
        if arg == "--log-format" and index + 1 < len(args):
            asked = args[index + 1]
        elif arg.startswith("--log-format="):
            asked = arg.partition("=")[2]
    setup_logging("INFO", "text" if asked == "text" else "json")
    logging.getLogger("router").error("invalid settings", extra={"problems": list(problems)})


def check_summary(settings: Settings) -> str:
    """One line of what would run: `nginx -t`'s "syntax is ok", with the facts an operator checks first."""
    workers = "auto" if settings.workers == 0 else str(settings.workers)
    resolvers = ",".join(str(resolver) for resolver in settings.resolvers)
    admin = f"admin {settings.admin_host}:{settings.admin_port}" if settings.admin_port else "admin off"
    return (
        f"listen {settings.host}:{settings.port}, {admin}, {workers} worker(s), "
        f"<id>.{settings.namespace} via {resolvers} ({settings.discovery.upper()} records), "
        f"backends on port {settings.upstream_port} in {','.join(map(str, settings.upstream_allow_cidrs))}, "
        f"{wake_summary(settings)}"
    )


def wake_summary(settings: Settings) -> str:
    """Whether sleeping deployments wake, and if not why: with --wake-cluster, the AWS SDK's credential chain is
    read (environment, profile, the ECS task role's endpoint); no AWS API is called."""
    if not settings.wake_cluster:
        return "waking off (no --wake-cluster)"
    import asyncio

    from router.wake.aws import credentials_found
    from router.wake.service import off_reason

    reason = off_reason(settings, asyncio.run(credentials_found(settings)))
    return f"waking on (cluster {settings.wake_cluster})" if reason is None else f"waking off: {reason}"
