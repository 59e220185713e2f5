#!/usr/bin/env bash
# Build the image and run the httpx integration suite against a running container, with whichever
# engine is here (docker with a running daemon, else podman). With neither, say so and skip (exit 0).
# With podman and kubectl, then run the Kubernetes manifests (docker/kubernetes/base, rendered by
# kustomize) as a pod with `podman kube play`, run the suite against the pod, and take it down.
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
KUBE_YAML=
KUBE_NAME=
# Every engine call that tears down is bounded: podman 4.3 has been seen to hang for good stopping a
# pod's infra container after a long suite (its state stuck at "Stopping"), which would hold CI until
# its deadline. A teardown that times out is forced, then reported; it never fails a suite that passed.
bounded() {
  local seconds=$1; shift
  timeout --kill-after=10 "$seconds" "$@" >/dev/null 2>&1
}
take_down_pod() {
  local yaml=$1
  if ! bounded 120 podman kube down "$yaml"; then
    echo "docker/test-image.sh: podman kube down did not finish within 120 s; removing the pod by force" >&2
    bounded 60 podman pod rm -f -t 0 "$KUBE_NAME-pod-0" \
      || echo "docker/test-image.sh: the pod $KUBE_NAME-pod-0 could not be removed; remove it by hand" >&2
    bounded 30 podman volume rm -f tmp || true
  fi
  rm -f "$yaml"
}
cleanup() {
  bounded 60 "$ENGINE" rm -f -t 0 "$NAME" || true
  [ -n "$KUBE_YAML" ] && take_down_pod "$KUBE_YAML"
  [ "$KEEP_IMAGE" = 1 ] || bounded 60 "$ENGINE" rmi -f "$IMAGE" || true
  [ -n "${CONF_DIR:-}" ] && rm -rf "$CONF_DIR"
  return 0
}
trap cleanup EXIT

echo "building $IMAGE with $ENGINE ${BASE_IMAGE:+on $BASE_IMAGE}"
"$ENGINE" build -q "${BUILD_ARGS[@]}" -t "$IMAGE" . >/dev/null
SIZE=$("$ENGINE" image inspect "$IMAGE" --format '{{.Size}}')
echo "image size: $((SIZE / 1000000)) MB"

# N free ports on 127.0.0.1, distinct (their sockets are held together while they are chosen).
free_ports() {
  "$PYTHON" -c 'import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in sockets))' "$1"
}
# gRPC (the image's VAE_GRPC_PORT, 8001) answers at host:port: live, and ready once HTTP is.
grpc_ready() {
  "$PYTHON" -c 'import sys, tritonclient.grpc as g
client = g.InferenceServerClient(sys.argv[1])
sys.exit(not (client.is_server_live(client_timeout=5) and client.is_server_ready(client_timeout=5)))' "$1"
}

# The image as `docker run` starts it: one worker process per CPU the container may use (VAE_WORKERS=0).
read -r PORT < <(free_ports 1)
"$ENGINE" run -d --name "$NAME" -p "127.0.0.1:$PORT:8000" "$IMAGE" >/dev/null
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null || { "$ENGINE" logs "$NAME"; exit 1; }
CPUS=$("$ENGINE" exec "$NAME" python3 -c 'from service.settings import available_cpus; print(available_cpus())')
# The log read whole first: `logs | grep -q` fails under pipefail whenever grep, having matched, exits before
# the engine has written the rest (SIGPIPE).
LOGS=$("$ENGINE" logs "$NAME" 2>&1)
grep -q "vae-serve: $CPUS worker process.*one per CPU available" <<<"$LOGS" \
  || { echo "the image does not start one worker per CPU ($CPUS):"; echo "$LOGS"; exit 1; }
echo "the image's default: $CPUS worker process(es), one per CPU available"
bounded 60 "$ENGINE" rm -f -t 0 "$NAME" || { echo "docker/test-image.sh: could not remove $NAME" >&2; exit 1; }

read -r PORT GRPC_PORT < <(free_ports 2)
# One worker: the suite's tests of state (statistics, counts) need every request on one process. A higher
# in-flight limit than the default so the 200-request concurrency test sees no 429.
"$ENGINE" run -d --name "$NAME" -p "127.0.0.1:$PORT:8000" -p "127.0.0.1:$GRPC_PORT:8001" \
  -e VAE_WORKERS=1 -e VAE_MAX_IN_FLIGHT=512 -e VAE_MAX_UPLOADS=512 "$IMAGE" >/dev/null
for _ in $(seq 1 100); do
  curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$PORT/readyz" >/dev/null || { "$ENGINE" logs "$NAME"; exit 1; }
grpc_ready "127.0.0.1:$GRPC_PORT" || { echo "gRPC does not answer on :$GRPC_PORT"; "$ENGINE" logs "$NAME"; exit 1; }

USER_IN_IMAGE=$("$ENGINE" exec "$NAME" id -u)
[ "$USER_IN_IMAGE" != 0 ] || { echo "the container runs as root"; exit 1; }
echo "container $NAME ready on :$PORT (gRPC :$GRPC_PORT) as uid $USER_IN_IMAGE; running the integration suite against it"

VAE_BASE_URL="http://127.0.0.1:$PORT" VAE_GRPC_TARGET="127.0.0.1:$GRPC_PORT" \
  VAE_CONTAINER_ENGINE="$ENGINE" VAE_CONTAINER_IMAGE="$IMAGE" \
  "$PYTHON" -m pytest tests/integration -q -p no:cacheprovider

# ---- the Kubernetes manifests, played as a pod ----
if [ "$ENGINE" != podman ] || ! command -v kubectl >/dev/null 2>&1; then
  echo "docker/test-image.sh: podman kube play needs podman and kubectl (kustomize); skipping the pod run."
  exit 0
fi
bounded 60 "$ENGINE" rm -f -t 0 "$NAME" || { echo "docker/test-image.sh: could not remove $NAME" >&2; exit 1; }
read -r KUBE_PORT KUBE_GRPC_PORT < <(free_ports 2)
# The Deployment and its ConfigMap as rendered, on the image built above, published on 127.0.0.1 (podman
# plays no Service); the same raised limits as the container run above.
KUBE_NAME=vae-kube-$$
KUBE_YAML=$(mktemp --suffix=.yaml)
kubectl kustomize docker/kubernetes/base \
  | "$PYTHON" docker/kubernetes/podman_play.py --name "$KUBE_NAME" --image "localhost/${IMAGE#localhost/}" \
      --host-port "$KUBE_PORT" --grpc-host-port "$KUBE_GRPC_PORT" \
      --set VAE_MAX_IN_FLIGHT=512 --set VAE_MAX_UPLOADS=512 >"$KUBE_YAML"
podman kube play "$KUBE_YAML" >/dev/null 2>&1 || { podman kube play "$KUBE_YAML"; exit 1; }
POD_CONTAINER=$(podman ps --filter "name=^$KUBE_NAME-pod" --format '{{.Names}}' | grep -- '-vae-service$' | head -1)
READY_PATH=$("$PYTHON" -c 'import sys, yaml
d = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d["kind"] == "Deployment"][0]
print(d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"])' "$KUBE_YAML")
for _ in $(seq 1 150); do  # the readiness probe's route, polled, for up to 30 s
  curl -fs "http://127.0.0.1:$KUBE_PORT$READY_PATH" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fs "http://127.0.0.1:$KUBE_PORT$READY_PATH" >/dev/null || { podman logs "$POD_CONTAINER"; exit 1; }
grpc_ready "127.0.0.1:$KUBE_GRPC_PORT" || { echo "gRPC does not answer on :$KUBE_GRPC_PORT"; podman logs "$POD_CONTAINER"; exit 1; }
# What the manifests rely on: a non-root numeric user, a read-only root with /tmp writable, the preStop sleep.
[ "$(podman exec "$POD_CONTAINER" id -u)" = 10001 ] || { echo "the pod does not run as uid 10001"; exit 1; }
if podman exec "$POD_CONTAINER" sh -c ': >/app/write-check' 2>/dev/null; then
  echo "the pod's root filesystem is writable"; exit 1
fi
podman exec "$POD_CONTAINER" sh -c ': >/tmp/write-check' || { echo "/tmp (the emptyDir) is not writable"; exit 1; }
podman exec "$POD_CONTAINER" /bin/sleep 0 || { echo "the image has no /bin/sleep for the preStop hook"; exit 1; }
echo "pod $POD_CONTAINER (podman kube play of docker/kubernetes/base) ready on :$KUBE_PORT (gRPC :$KUBE_GRPC_PORT);" \
  "running the integration suite against it"
VAE_BASE_URL="http://127.0.0.1:$KUBE_PORT" VAE_GRPC_TARGET="127.0.0.1:$KUBE_GRPC_PORT" \
  "$PYTHON" -m pytest tests/integration -q -p no:cacheprovider
KUBE_YAML_DONE=$KUBE_YAML
KUBE_YAML=
KUBE_NAME=
take_down_pod "$KUBE_YAML_DONE"
