# vae-service: serves the bundled Fashion-MNIST VAE over HTTP on port 8000 and over gRPC (the open inference
# protocol as Triton's GRPCInferenceService, which tritonclient.grpc speaks) on port 8001, Triton's two ports.
#   docker build -t vae-service . && docker run -p 8000:8000 -p 8001:8001 vae-service
# The base is swappable (see docker/test-image.sh for the local, registry-free build).
ARG BASE_IMAGE=python:3.11-slim

# ---- build: install the serving dependencies (no torch) into a virtualenv ----
FROM ${BASE_IMAGE} AS build
# A CA bundle for pip, for build machines whose TLS goes through their own CA; empty = pip's default.
ARG PIP_CERT=
ENV PIP_CERT=${PIP_CERT} PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY model/ model/
COPY export/ export/
COPY service/ service/
# The cache mount keeps downloaded wheels between builds; nothing of it lands in the image.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install --no-compile . \
    && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} + \
    && find /opt/venv/lib -type d -name tests -path '*site-packages/*' -prune -exec rm -rf {} + \
    && (/opt/venv/bin/pip uninstall -y pip setuptools >/dev/null 2>&1 || true)

# ---- runtime: the virtualenv, the bundled model, a non-root user ----
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10001 vae \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin vae
COPY --from=build /opt/venv /opt/venv
# The bundled repository: each model version's serving files, as artifacts/<name>/<version>/ holds them,
# and a model's config.json, its version policy (fashion-mnist-vae serves its three newest: 3.1.0 by default).
COPY artifacts/fashion-mnist-vae/config.json /app/models/fashion-mnist-vae/
COPY artifacts/fashion-mnist-vae/3.1.0/manifest.json artifacts/fashion-mnist-vae/3.1.0/encoder.onnx \
     artifacts/fashion-mnist-vae/3.1.0/decoder.onnx artifacts/fashion-mnist-vae/3.1.0/prior.onnx \
     artifacts/fashion-mnist-vae/3.1.0/anomaly.json \
     /app/models/fashion-mnist-vae/3.1.0/
COPY artifacts/fashion-mnist-vae/3.0.0/manifest.json artifacts/fashion-mnist-vae/3.0.0/encoder.onnx \
     artifacts/fashion-mnist-vae/3.0.0/decoder.onnx artifacts/fashion-mnist-vae/3.0.0/prior.onnx \
     artifacts/fashion-mnist-vae/3.0.0/anomaly.json \
     /app/models/fashion-mnist-vae/3.0.0/
COPY artifacts/fashion-mnist-vae/2.0.0/manifest.json artifacts/fashion-mnist-vae/2.0.0/encoder.onnx \
     artifacts/fashion-mnist-vae/2.0.0/decoder.onnx artifacts/fashion-mnist-vae/2.0.0/anomaly.json \
     /app/models/fashion-mnist-vae/2.0.0/
COPY artifacts/fashion-mnist-gaussian/1.0.0/manifest.json artifacts/fashion-mnist-gaussian/1.0.0/encoder.onnx \
     artifacts/fashion-mnist-gaussian/1.0.0/decoder.onnx artifacts/fashion-mnist-gaussian/1.0.0/anomaly.json \
     /app/models/fashion-mnist-gaussian/1.0.0/
COPY artifacts/fashion-mnist-autoencoderkl/1.0.0/manifest.json artifacts/fashion-mnist-autoencoderkl/1.0.0/encoder.onnx \
     artifacts/fashion-mnist-autoencoderkl/1.0.0/decoder.onnx \
     /app/models/fashion-mnist-autoencoderkl/1.0.0/
# Mount another repository and point VAE_MODEL_REPOSITORY at it, or one model directory with VAE_MODEL_DIR:
#   docker run -v ./models:/models:ro -e VAE_MODEL_REPOSITORY=/models -p 8000:8000 vae-service
#   docker run -v ./my-model:/models/custom:ro -e VAE_MODEL_DIR=/models/custom -p 8000:8000 vae-service
# VAE_WORKERS is left at its default, 0: one worker process per CPU the container may use (its --cpus
# quota, else the host's CPUs). The Kubernetes and KServe manifests set VAE_WORKERS=1, one per pod.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    VAE_MODEL_REPOSITORY=/app/models \
    VAE_HOST=0.0.0.0 VAE_PORT=8000 VAE_GRPC_PORT=8001
WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can tell the user is not root (docker/kubernetes/).
USER 10001:10001
# HTTP (VAE_PORT) and gRPC (VAE_GRPC_PORT; VAE_GRPC_PORT=0 turns gRPC off).
EXPOSE 8000 8001
# The check asks the port the server listens on: VAE_PORT, as `docker run -e VAE_PORT=...` sets it.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python3", "-c", "import os, sys, urllib.request; port = os.environ.get('VAE_PORT', '8000'); sys.exit(urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=2).status != 200)"]
# uvicorn handles SIGTERM: it stops accepting, finishes in-flight requests (up to 30 s), then exits.
STOPSIGNAL SIGTERM
ENTRYPOINT ["vae-serve"]
