"""moto's server (the pinned version of the `test` extra) with the two gaps filled that stop `terraform apply`.

`python -m tests.moto_gaps --port N` serves AWS's APIs on 127.0.0.1:N as `moto_server` does, except:

1. ECS `DescribeServices`, `CreateService`, `UpdateService` and `DeleteService`: moto answers
   `"networkConfiguration": {}` for a service created without one, where AWS leaves the field out. The AWS
   provider (5.100) dereferences the empty object's missing `awsvpcConfiguration` and crashes
   (`flattenNetworkConfiguration`). The empty object is removed.
2. Application Auto Scaling `ListTagsForResource`, `TagResource` and `UntagResource`: moto does not implement
   them and answers 500, which the provider retries for minutes on every scalable target. They are kept in a
   dict by resource ARN, as AWS keeps them.

Nothing else is changed: every other request reaches moto as it came. Beside them, for the wake tests, the
server counts the JSON-protocol calls (ECS, Cloud Map) the router made (its User-Agent names it) by action, and
answers `GET /_whaleray/actions` with the counts: how a test knows exactly how many UpdateService calls the
router made, apart from the calls of the platform stand-in.
"""

from __future__ import annotations

import argparse
import json
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]

ECS_SERVICE_ACTIONS = {
    f"AmazonEC2ContainerServiceV20141113.{name}"
    for name in ("DescribeServices", "CreateService", "UpdateService", "DeleteService")
}
SCALING_TAG_ACTION = "AnyScaleFrontendService."
ACTIONS_PATH = "/_whaleray/actions"
ROUTER_AGENT = "whaleray-router/"


class MotoGaps:
    """WSGI middleware around moto's dispatcher: the two gaps of the module docstring, and nothing else."""

    def __init__(self, moto: WsgiApp) -> None:
        self.moto = moto
        self.scaling_tags: dict[str, dict[str, str]] = {}
        self.actions: dict[str, int] = {}
        self._lock = threading.Lock()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if environ.get("PATH_INFO") == ACTIONS_PATH:
            body = json.dumps(self.actions).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if target and ROUTER_AGENT in environ.get("HTTP_USER_AGENT", ""):
            action = target.rpartition(".")[2]
            with self._lock:
                self.actions[action] = self.actions.get(action, 0) + 1
        if target in ECS_SERVICE_ACTIONS:
            return self._without_empty_network_configuration(environ, start_response)
        action = target.removeprefix(SCALING_TAG_ACTION)
        if target.startswith(SCALING_TAG_ACTION) and action in ("ListTagsForResource", "TagResource", "UntagResource"):
            return self._scaling_tags(action, environ, start_response)
        return self.moto(environ, start_response)

    def _without_empty_network_configuration(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        captured: list[Any] = []

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            captured[:] = [status, headers]
            return lambda data: None

        body = b"".join(self.moto(environ, capture))
        status, headers = captured
        if status.startswith("200"):
            answer = json.loads(body)
            services = answer.get("services", []) + [answer[key] for key in ("service",) if key in answer]
            for service in services:
                if service.get("networkConfiguration") == {}:
                    del service["networkConfiguration"]
            body = json.dumps(answer).encode()
            headers = [(name, value) for name, value in headers if name.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]

    def _scaling_tags(self, action: str, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        request = json.loads(environ["wsgi.input"].read(length) or b"{}")
        arn = request["ResourceARN"]
        with self._lock:
            tags = self.scaling_tags.setdefault(arn, {})
            if action == "TagResource":
                tags.update(request["Tags"])
            elif action == "UntagResource":
                for key in request["TagKeys"]:
                    tags.pop(key, None)
            answer = {"Tags": dict(tags)} if action == "ListTagsForResource" else {}
        body = json.dumps(answer).encode()
        start_response("200 OK", [("Content-Type", "application/x-amz-json-1.1"), ("Content-Length", str(len(body)))])
        return [body]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = MotoGaps(DomainDispatcherApplication(create_backend_app))
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
