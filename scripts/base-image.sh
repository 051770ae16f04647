#!/usr/bin/env bash
# The base image for docker/Dockerfile: print the reference to build FROM.
#
# The Dockerfile's default base is python:3.11-slim-bookworm pinned by digest. Where that can be pulled, it is
# used as it is. Where it cannot (no Docker Hub, as on the development machines), a stand-in is built once
# from Debian's own packages and kept in the engine as $STANDIN: `debootstrap --variant=minbase bookworm`,
# then Debian's python3.11 laid out as the official image lays out its Python (a venv at /usr/local, so
# `python`, `pip` and site-packages sit where the Dockerfile expects them), and this machine's CA bundle, which
# the network's TLS needs, with pip pointed at it. Needs root, debootstrap (installed with apt-get when
# missing) and a running engine (scripts/container-engine.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER="${DOCKER:-/usr/bin/docker}"
PINNED=$(sed -n 's/^ARG BASE_IMAGE=//p' docker/Dockerfile)
STANDIN="${STANDIN:-whaleray-base:python3.11-bookworm-standin}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

say() { echo "base-image: $*" >&2; }

if "$DOCKER" image inspect "$PINNED" >/dev/null 2>&1 || timeout 60 "$DOCKER" pull -q "$PINNED" >/dev/null 2>&1; then
  say "the pinned base $PINNED"
  echo "$PINNED"
  exit 0
fi
if "$DOCKER" image inspect "$STANDIN" >/dev/null 2>&1; then
  say "the pinned base cannot be pulled: the stand-in $STANDIN, built earlier"
  echo "$STANDIN"
  exit 0
fi

say "the pinned base cannot be pulled: building the stand-in $STANDIN from Debian's packages (about 2 minutes)"
command -v debootstrap >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
}
root=$(mktemp -d /var/tmp/whaleray-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$root.log" 2>&1 \
  || { tail -n 20 "$root.log" >&2; say "FAILED: debootstrap (log: $root.log)"; exit 1; }
rm -f "$root.log"
echo "deb $MIRROR bookworm main" >"$root/etc/apt/sources.list"
cp "$CA_BUNDLE" "$root/tmp/host-ca.crt"
chroot "$root" /bin/sh -eu <<'EOF'
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv python3.11-dev ca-certificates >/dev/null
mkdir -p /etc/ssl/certs && cp /tmp/host-ca.crt /etc/ssl/certs/ca-certificates.crt && rm /tmp/host-ca.crt
python3.11 -m venv /usr/local
/usr/local/bin/python -m pip --version >/dev/null
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >/etc/pip.conf
apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
EOF
tar -C "$root" -c . | "$DOCKER" import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$STANDIN" >/dev/null
say "built $STANDIN"
echo "$STANDIN"
