"""`whaleray-router inspect <deploymentId>`: the admin port's /discovery/<id> as a table, for a terminal.

The first thing to run when one deployment returns 502: is it resolved, fresh or stale, which addresses does
the router hold for it, is one ejected, and where do its connections go. `inspect` with no id lists every
cached name. It asks the admin port over HTTP (default 127.0.0.1:9901, or --admin-port / WHALERAY_ADMIN_PORT).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="whaleray-router inspect", description=__doc__, allow_abbrev=False)
    parser.add_argument("deployment", nargs="?", help="a deployment id; without one, every cached name")
    parser.add_argument("--admin-host", default="127.0.0.1", help="where the admin port listens (default 127.0.0.1)")
    parser.add_argument(
        "--admin-port", type=int, default=int(os.environ.get("WHALERAY_ADMIN_PORT", "9901")), help="default 9901"
    )
    parser.add_argument("--json", action="store_true", help="print the admin port's JSON as it came")
    args = parser.parse_args(argv)
    path = "/discovery" + (f"/{args.deployment}" if args.deployment else "")
    url = f"http://{args.admin_host}:{args.admin_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            view: dict[str, Any] = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        print(f"whaleray-router inspect: cannot read {url}: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(view, indent=2))
    else:
        print("\n".join(deployment_table(view) if args.deployment else list_table(view)))
    return 0


def deployment_table(view: dict[str, Any]) -> list[str]:
    expires = "-" if view["expires_in"] is None else f"{view['expires_in']:.1f} s"
    lines = [f"deployment {view['deployment']}: {view['state']}, expires in {expires}"]
    wake = view.get("wake")
    if wake is not None:  # waking is on and the catalogue lists it
        age = "" if wake["age_s"] is None else f", wake started {wake['age_s']:.1f} s ago"
        lines.append(f"wake: {wake['state']}{age}, {wake['held']} request(s) held")
    if not view["addresses"]:
        return lines
    rows = [("ADDRESS", "EJECTED", "IDLE", "ACTIVE")]
    rows += [
        (
            address["address"] + (" (backup)" if address.get("backup") else ""),
            "yes" if address["ejected"] else "no",
            str(address["idle_connections"]),
            str(address["active_connections"]),
        )
        for address in view["addresses"]
    ]
    return lines + _aligned(rows)


def list_table(view: dict[str, Any]) -> list[str]:
    rows = [("DEPLOYMENT", "STATE", "EXPIRES IN", "ADDRESSES")]
    rows += [
        (item["deployment"], item["state"], f"{item['expires_in']:.1f} s", str(item["addresses"]))
        for item in view["deployments"]
    ]
    return [*_aligned(rows), f"{view['listed']} of {view['count']} cached names listed"]


def _aligned(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
