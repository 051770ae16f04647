#!/usr/bin/env bash
# A running container engine for the image tests (make image-test): when `docker info` fails, install Debian's
# docker.io (the engine and its 20.10 client, /usr/bin/docker, whose DOCKER_BUILDKIT=1 builds with BuildKit)
# and start dockerd as root with its defaults, its log in /var/log/whaleray-dockerd.log. Needs root and
# apt-get for the install; prints nothing but problems and one line of what it did.
set -euo pipefail
DOCKER="${DOCKER:-/usr/bin/docker}"
LOG=/var/log/whaleray-dockerd.log

say() { echo "container-engine: $*" >&2; }

if [ -x "$DOCKER" ] && "$DOCKER" info >/dev/null 2>&1; then
  say "running ($("$DOCKER" version --format '{{.Server.Version}}'))"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  say "FAILED: no engine answers and only root can install or start one (sudo $0)"
  exit 1
fi
if [ ! -x "$DOCKER" ] || ! command -v dockerd >/dev/null; then
  say "installing Debian's docker.io"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi
if ! pgrep -x dockerd >/dev/null; then
  say "starting dockerd (log: $LOG)"
  nohup dockerd >"$LOG" 2>&1 &
fi
for _ in $(seq 60); do
  if "$DOCKER" info >/dev/null 2>&1; then
    say "running ($("$DOCKER" version --format '{{.Server.Version}}'))"
    exit 0
  fi
  sleep 1
done
tail -n 20 "$LOG" >&2 || true
say "FAILED: dockerd did not answer within 60 s"
exit 1
