#!/usr/bin/env bash
# The image built and run for real (make image-test): a running engine (scripts/container-engine.sh), the base
# (scripts/base-image.sh: the pinned one, or a stand-in built from Debian's packages where it cannot be pulled),
# the runtime image and the demo stage built, then the container tests (pytest -m container):
# the runtime image run with infra/task-definition.json's settings, and the compose demo brought up and down.
set -euo pipefail
cd "$(dirname "$0")/.."
export DOCKER="${DOCKER:-/usr/bin/docker}"
PYTEST="${PYTEST:-.venv/bin/pytest}"
IMAGE="${WHALERAY_TEST_IMAGE:-whaleray-router:test}"
DEMO_IMAGE="${WHALERAY_TEST_DEMO_IMAGE:-whaleray-router:demo}"

scripts/container-engine.sh
base=$(scripts/base-image.sh)
started=$(date +%s)
# The classic builder, the one Compose uses on an engine without buildx: `make compose-up` in the compose test
# then finds every layer built. (The Dockerfile needs no BuildKit; `make image` builds with it.)
build() {  # TARGET TAG
  DOCKER_BUILDKIT=0 "$DOCKER" build --quiet -f docker/Dockerfile --build-arg "BASE_IMAGE=$base" \
    --target "$1" -t "$2" . >/dev/null
}
build release "$IMAGE"
build demo "$DEMO_IMAGE"
echo "image-test: built $IMAGE and $DEMO_IMAGE on $base in $(($(date +%s) - started)) s"
WHALERAY_TEST_IMAGE="$IMAGE" WHALERAY_TEST_DEMO_IMAGE="$DEMO_IMAGE" WHALERAY_TEST_BASE_IMAGE="$base" \
  "$PYTEST" -m container "$@"
