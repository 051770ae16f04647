"""The compose demo, brought up with the command docker/README.md gives, every URL it lists asked and its
answer checked against what the README says, then brought down (`make image-test` runs this).

The README's lines are the test's input: a `curl` line whose expectation this file cannot read fails the test,
so the README cannot list a URL that nobody checks.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.containers import engine_or_fail, http_get

# Builds and containers take longer than the suite's 60 s a test; each command is bounded on its own.
pytestmark = [pytest.mark.container, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "docker" / "README.md").read_text()
CURL = re.compile(r"curl -s\S*\s+(http://localhost:\d+\S*?)(?:;|\s|$)")
DOWN_WITHIN_S = 8  # the router's drain delay (1 s) and every other service stopping on SIGTERM


def readme_commands(section: str) -> list[str]:
    """The lines of the first ```sh block after the README heading `section`."""
    after = README.split(section, 1)[1]
    block = after.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def check(line: str) -> None:
    """Ask the URL of one README line and check the answer against the line's comment."""
    url = CURL.search(line)
    assert url is not None, line
    expected = line.split("#", 1)[1].strip() if "#" in line else ""
    if line.startswith("for i in"):  # the multi-address deployment: its backends in turn
        count = int(re.search(r"for i in ([\d ]+);", line).group(1).split()[-1])  # type: ignore[union-attr]
        answered = {json.loads(http_get(url.group(1))[1])["backend"] for _ in range(count)}
        assert answered == {name.strip() for name in expected.split(",") if name.strip() != "..."}, line
    elif backend := re.fullmatch(r'\{"backend": "([\w-]+)", \.\.\.\}', expected):
        status, body = http_get(url.group(1))
        assert (status, json.loads(body)["backend"]) == (200, backend.group(1)), line
    elif error := re.fullmatch(r"(\d{3}) (\w+)", expected):
        status, body = http_get(url.group(1))
        assert (status, json.loads(body)["code"]) == (int(error.group(1)), error.group(2)), line
    elif grep := re.search(r"\| grep (\w+)$", line):
        status, body = http_get(url.group(1))
        assert status == 200
        assert grep.group(1).encode() in body, line
    else:
        raise AssertionError(f"docker/README.md: no expectation this test can read in {line!r}")


def run(command: str, timeout_s: float) -> float:
    """Run a README command from the repository root; how long it took."""
    started = time.monotonic()
    result = subprocess.run(
        command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )
    assert result.returncode == 0, f"{command}: {result.stdout[-2000:]}{result.stderr[-2000:]}"
    return time.monotonic() - started


@pytest.fixture(scope="module")
def demo() -> Iterator[list[str]]:
    engine_or_fail()
    [up] = [line for line in readme_commands("## The routing demo") if "up" in line]
    [down] = [line for line in readme_commands("stops it") if "down" in line]
    try:
        run(up, timeout_s=600)
        yield [down]
    finally:
        subprocess.run(down, shell=True, cwd=ROOT, capture_output=True, timeout=120, check=False)


def test_every_url_the_readme_lists_answers_as_it_says(demo: list[str]) -> None:
    lines = [line for line in readme_commands("Then:") if "curl" in line]
    assert len(lines) >= 6
    for line in lines:
        check(line)


def test_down_finishes_in_a_few_seconds(demo: list[str]) -> None:
    """Last: it brings the demo down. Every service stops on SIGTERM; none waits out the grace period."""
    [down] = demo
    assert run(down, timeout_s=120) < DOWN_WITHIN_S
