"""What one exchange leaves behind for metrics and the access log: `RequestRecord`, written by its exchange
alone and read by telemetry.py when the exchange ends. Sans-IO."""

from __future__ import annotations


class RequestRecord:
    __slots__ = (
        "admitted", "bytes_out", "connect_s", "counted", "dns", "error_code", "header_s", "resolved", "sent_at",
        "started_at", "status",
    )  # fmt: skip

    def __init__(self) -> None:
        self.started_at = 0.0  # perf_counter when the head was whole (uvloop's loop.time() ticks in milliseconds)
        self.status = 0  # what the client was answered; 0 until a response head was written
        self.bytes_out = 0  # response bytes written to the client
        self.dns = ""  # the lookup's outcome: hit, miss, stale, negative, busy, error
        self.error_code = ""  # the errors.ERRORS code the router answered, if it answered one
        self.admitted = False  # holds a slot of --deployment-max-inflight, given back when the exchange ends
        self.resolved = False  # reached a positive DNS answer: the deployment earns its own metric label
        self.counted = True  # in whaleray_requests; not a /health probe
        self.connect_s = 0.0  # the backend connection's connect time, when opened for this request
        self.sent_at = 0.0  # with the access log on: when the request's head was sent (perf_counter)
        self.header_s = 0.0  # and how long the response's head took from there
