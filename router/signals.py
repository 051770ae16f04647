"""The signals a router process answers, the same for a single process, a worker and the supervisor.

SIGTERM or SIGINT asks for a drain; a second one means the operator wants out now: the process exits 1 at once,
after `at_once` (the supervisor kills its workers there). SIGHUP, an Nginx operator's reload reflex, only logs
that there is nothing to reload. The handlers go in before any listener opens, so a SIGTERM during start-up
drains instead of killing the process outright.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

log = logging.getLogger("router")


def handle_stop_signals(
    loop: asyncio.AbstractEventLoop, *, draining: str, at_once: str, before_exit: Callable[[], None] = lambda: None
) -> asyncio.Event:
    """Install the handlers; the event is set by the first SIGTERM or SIGINT. `draining` and `at_once` are the
    log lines of the first and the second signal."""
    stop_requested = asyncio.Event()
    seen = 0

    def on_signal(signum: int) -> None:
        nonlocal seen
        seen += 1
        name = signal.Signals(signum).name
        if seen == 1:
            log.info(draining, extra={"signal": name})
            stop_requested.set()
            return
        log.warning(at_once, extra={"signal": name})
        before_exit()
        logging.shutdown()
        os._exit(1)  # a raise would only reach the loop's exception handler

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    loop.add_signal_handler(signal.SIGHUP, log_reload_refused)
    return stop_requested


def log_reload_refused() -> None:
    log.warning("SIGHUP ignored: settings come from flags and WHALERAY_* variables; restart the task to apply changes")
