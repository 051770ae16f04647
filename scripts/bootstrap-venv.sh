#!/usr/bin/env bash
# Create .venv with the project: `bootstrap-venv.sh` installs what the router needs to run, `bootstrap-venv.sh
# demo` adds the demo's libraries (make demo), `bootstrap-venv.sh dev` the development tools (make test). On Debian, `python3 -m venv` needs the python3-venv
# package (ensurepip); install it when it is missing and we may (root, apt-get), else say what to do.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "whaleray-router needs Python 3.11 or newer; $PYTHON is $("$PYTHON" --version 2>&1)" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing python${version}-venv (Debian's venv support)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${version}-venv" >/dev/null
  else
    echo "Python's venv module is missing: run 'sudo apt-get install python${version}-venv' and retry" >&2
    exit 1
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# The development install is pure Python, so that edits take effect at once; `make compiled` builds the
# compiled data plane in place when wanted (`make test` does, and removes it again).
case "${1:-}" in
  demo) EXTRAS="[demo,sleeping-demo]" ;;  # the loopback demo, its sleeping deployment's AWS stand-in included
  "") EXTRAS="" ;;
  *) EXTRAS="[$1]" ;;
esac
WHALERAY_PURE_PYTHON=1 .venv/bin/python -m pip install --quiet -e ".${EXTRAS}"
