#!/usr/bin/env bash
# Build the image and run the httpx integration suite against a running container, with whichever
# engine is here (docker with a running daemon, else podman). With neither, say so and skip (exit 0).
#
# Where no registry is reachable (this project's machines), podman builds on a local Debian
# bookworm base made with debootstrap, as in shared/docs/containers.md; it is cached between runs.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${VAE_IMAGE:-vae-service:test}
BASE_IMAGE=${VAE_BASE_IMAGE:-}
PYTHON=${PYTHON:-.venv/bin/python}
KEEP_IMAGE=${KEEP_IMAGE:-0}

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ENGINE=docker
elif command -v podman >/dev/null 2>&1; then
  ENGINE=podman
else
  echo "docker/test-image.sh: no container engine (docker or podman) found; skipping the container tests."
  exit 0
fi

BUILD_ARGS=()
if [ "$ENGINE" = podman ]; then
  # crun fails here ("cgroups in hybrid mode"), and podman's default open-files limit is refused.
  CONF_DIR=$(mktemp -d)
  printf '[containers]\ndefault_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n' \
    >"$CONF_DIR/containers.conf"
  export CONTAINERS_CONF="$CONF_DIR/containers.conf"
  BUILD_ARGS+=(--format docker)  # the OCI format drops HEALTHCHECK
  if [ -z "$BASE_IMAGE" ] && ! timeout 20 podman pull -q docker.io/library/python:3.11-slim >/dev/null 2>&1; then
    BASE_IMAGE=localhost/vae-base:bookworm
    if ! podman image exists "$BASE_IMAGE"; then
      command -v debootstrap >/dev/null || { echo "debootstrap is needed for the local base image"; exit 1; }
      MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
      MIRROR=${MIRROR:-$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
      ROOTFS=$(mktemp -d)
      echo "building the local base image $BASE_IMAGE from $MIRROR (once; cached afterwards)"
      debootstrap --variant=minbase --include=python3,python3-venv,python3-pip bookworm "$ROOTFS" "$MIRROR" \
        >/dev/null
      rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
      tar -C "$ROOTFS" -c . | podman import - "$BASE_IMAGE" >/dev/null
      rm -rf "$ROOTFS"
    fi
  fi
  # This machine's TLS goes through a CA only the host trusts: lend pip the host's bundle, for the build only.
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    BUILD_ARGS+=(-v /etc/ssl/certs:/etc/ssl/certs:ro --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
  fi
fi
[ -n "$BASE_IMAGE" ] && BUILD_ARGS+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")

NAME=vae-test-$$
cleanup() {
  "$ENGINE" rm -f "$NAME" >/dev/null 2>&1 || true
  [ "$KEEP_IMAGE" = 1 ] || "$ENGINE" rmi -f "$IMAGE" >/dev/null 2>&1 || true
  [ -n "${CONF_DIR:-}" ] && rm -rf "$CONF_DIR"
}
trap cleanup EXIT

echo "building $IMAGE with $ENGINE ${BASE_IMAGE:+on $BASE_IMAGE}"
"$ENGINE" build -q "${BUILD_ARGS[@]}" -t "$IMAGE" . >/dev/null
SIZE=$("$ENGINE" image inspect "$IMAGE" --format '{{.Size}}')
echo "image size: $((SIZE / 1000000)) MB"

PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
# A higher in-flight limit than the default so the 200-request concurrency test sees no 429.
"$ENGINE" run -d --name "$NAME" -p "127.0.0.1:$PORT:8000" -e VAE_MAX_IN_FLIGHT=512 -e VAE_MAX_UPLOADS=512 "$IMAGE" >/dev/null
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null || { "$ENGINE" logs "$NAME"; exit 1; }

USER_IN_IMAGE=$("$ENGINE" exec "$NAME" id -u)
[ "$USER_IN_IMAGE" != 0 ] || { echo "the container runs as root"; exit 1; }
echo "container $NAME ready on :$PORT as uid $USER_IN_IMAGE; running the integration suite against it"

VAE_BASE_URL="http://127.0.0.1:$PORT" VAE_CONTAINER_ENGINE="$ENGINE" VAE_CONTAINER_IMAGE="$IMAGE" \
  "$PYTHON" -m pytest tests/integration -q -p no:cacheprovider
