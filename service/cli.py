"""`vae-serve`: serve a model repository (or one model directory) with uvicorn."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from service.settings import BUNDLED_REPOSITORY, GRACEFUL_SHUTDOWN_S, Settings, SettingsError, load_settings

# prometheus_client's switch to multiprocess mode (and its deprecated spelling); read when it is first imported,
# so it is set here, before the workers start, and this process never imports prometheus_client first.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


def source_problem(settings: Settings) -> str | None:
    """Why the configured models cannot be served at all, checked before the server starts."""
    if settings.model_dir is not None:
        if not (settings.model_dir / "manifest.json").is_file():
            return (
                f"no model in {settings.model_dir} (manifest.json missing); set VAE_MODEL_DIR or --model-dir "
                "to a directory written by vae-export"
            )
        return None
    repository = settings.model_repository or BUNDLED_REPOSITORY
    if not repository.is_dir():
        return (
            f"no model repository at {repository}; set VAE_MODEL_REPOSITORY or --model-repository to a "
            "directory holding <name>/<version>/ directories written by vae-export"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="vae-serve",
        description="Serve a VAE exported by vae-export. Every option "
        "can also be set as a VAE_* environment variable (flags win).",
    )
    p.add_argument(
        "--model-repository",
        help="serve every model in DIR/<name>/<version>/ (VAE_MODEL_REPOSITORY; "
        "default: the bundled repository artifacts/)",
    )
    p.add_argument("--model-dir", help="serve one directory written by vae-export (VAE_MODEL_DIR)")
    p.add_argument("--host", help="bind address (VAE_HOST; default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (VAE_PORT; default 8000)")
    p.add_argument(
        "--workers", type=int, help="worker processes (VAE_WORKERS; default 0: one per CPU the server may use)"
    )
    args = p.parse_args(argv)
    for name in ("model_repository", "model_dir", "host", "port", "workers"):
        value = getattr(args, name)
        if value is not None:
            os.environ[f"VAE_{name.upper()}"] = str(value)  # the workers read their settings from here
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"vae-serve: {exc}", file=sys.stderr)
        return 2
    problem = source_problem(settings)
    if problem:
        print(f"vae-serve: {problem}", file=sys.stderr)
        return 2
    import uvicorn

    workers = settings.worker_processes
    print(f"vae-serve: {listening_banner(settings.host, settings.port)}", file=sys.stderr, flush=True)
    print(f"vae-serve: {workers_line(settings)}", file=sys.stderr, flush=True)
    metrics_dir = worker_metrics_dir(workers)
    try:
        # the guarded protocol bounds header size, count and time: uvicorn alone bounds none (service/transport.py)
        uvicorn.run(
            "service.app:app_factory",
            factory=True,
            http="service.transport:GuardedHttpToolsProtocol",
            host=settings.host,
            port=settings.port,
            workers=workers,
            log_level=settings.log_level,
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            proxy_headers=False,
            server_header=False,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def listening_banner(host: str, port: int) -> str:
    """Where the server listens, said as a person reads it: every interface, or one address."""
    if host in ("0.0.0.0", "::", ""):
        return (
            f"listening on every interface, port {port}: from this machine the explorer is "
            f"http://localhost:{port}/ and the API reference http://localhost:{port}/docs"
        )
    shown = f"[{host}]" if ":" in host else host
    return (
        f"listening on {host} only, port {port}: the explorer is http://{shown}:{port}/ and the API "
        f"reference http://{shown}:{port}/docs"
    )


def workers_line(settings: Settings) -> str:
    """How many worker processes serve, and why that many."""
    workers = settings.worker_processes
    plural = "es" if workers > 1 else ""
    if settings.workers:
        return f"{workers} worker process{plural} (VAE_WORKERS={settings.workers})"
    if settings.control_routes_on:
        return (
            "1 worker process: the repository control routes are on, and a load or unload must be the whole "
            "server's (VAE_WORKERS=0; set it to choose)"
        )
    return f"{workers} worker process{plural}, one per CPU available (VAE_WORKERS=0; set it to choose)"


def worker_metrics_dir(workers: int) -> str | None:
    """With several workers, a fresh directory for Prometheus' multiprocess mode, named in the
    environment the workers inherit (service/observability.py), so /metrics sums the whole group.
    Fresh on every start: files left by an earlier run would add its counts to this one's. In a
    container it lies under TMPDIR or /tmp, which must be writable (an emptyDir in Kubernetes)."""
    for name in (MULTIPROCESS_DIR, MULTIPROCESS_DIR.lower()):
        os.environ.pop(name, None)  # one worker keeps its metrics in memory
    if workers == 1:
        return None
    path = tempfile.mkdtemp(prefix="vae-metrics-")
    os.environ[MULTIPROCESS_DIR] = path
    return path


if __name__ == "__main__":
    sys.exit(main())
