"""Helpers of the container tests (`make image-test`): the engine, the images under test, waiting.

Under CI=true a missing engine or image is a failure with the command that provides it; elsewhere the test is
skipped, saying why.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import pytest

# Debian's client: the `docker` earlier on some machines' PATH has no BuildKit (buildx) to build with.
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")


def missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI never skips the container tests: run `make image-test`)", pytrace=False)
    pytest.skip(f"{reason}: run `make image-test`, which provides it")


def engine_or_fail() -> None:
    try:
        answered = subprocess.run([DOCKER, "info"], capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        answered = False
    if not answered:
        missing(f"no container engine answers {DOCKER} info")


def image_under_test(variable: str) -> str:
    image = os.environ.get(variable)
    if not image:
        missing(f"{variable} names no image")
    assert image is not None
    return image


def docker(*args: str, timeout_s: float = 120) -> str:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout_s, check=False)
    if result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout.strip()


def wait_until(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {seconds} s: {condition}")
        time.sleep(0.25)


def http_get(url: str) -> tuple[int, bytes]:
    """A plain GET from this machine to a published port: status and body, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
