"""Print the variables and outputs tables of a Terraform module (for infra/README.md)."""

import sys
from pathlib import Path

import hcl2


def unquote(value: object) -> str:
    return str(value).strip('"') if value is not None else ""


def tables(module: Path) -> str:
    lines = ["| variable | type | default | description |", "|---|---|---|---|"]
    with (module / "variables.tf").open() as handle:
        for block in hcl2.load(handle)["variable"]:
            for name, body in block.items():
                default = body.get("default", "(required)")
                default = (
                    "null"
                    if default is None
                    else str(default).lower()
                    if isinstance(default, bool)
                    else unquote(default)
                )
                kind = unquote(body.get("type", "")).replace("${", "").replace("}", "")
                lines.append(f"| `{name.strip(chr(34))}` | `{kind}` | `{default}` | {unquote(body['description'])} |")
    lines += ["", "| output | description |", "|---|---|"]
    with (module / "outputs.tf").open() as handle:
        for block in hcl2.load(handle)["output"]:
            for name, body in block.items():
                lines.append(f"| `{name.strip(chr(34))}` | {unquote(body['description'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(tables(Path(sys.argv[1])))
