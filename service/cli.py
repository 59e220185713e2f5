"""`vae-serve`: serve a model repository (or one model directory) with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys

from service.settings import BUNDLED_REPOSITORY, Settings, SettingsError, load_settings


def source_problem(settings: Settings) -> str | None:
    """Why the configured models cannot be served at all, checked before the server starts."""
    if settings.model_dir is not None:
        if not (settings.model_dir / "manifest.json").is_file():
            return (f"no model in {settings.model_dir} (manifest.json missing); set VAE_MODEL_DIR or --model-dir "
                    "to a directory written by vae-export")
        return None
    repository = settings.model_repository or BUNDLED_REPOSITORY
    if not repository.is_dir():
        return (f"no model repository at {repository}; set VAE_MODEL_REPOSITORY or --model-repository to a "
                "directory holding <name>/<version>/ directories written by vae-export")
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vae-serve", description="Serve a VAE exported by vae-export. Every option "
                                "can also be set as a VAE_* environment variable (flags win).")
    p.add_argument("--model-repository", help="serve every model in DIR/<name>/<version>/ (VAE_MODEL_REPOSITORY; "
                   "default: the bundled repository artifacts/)")
    p.add_argument("--model-dir", help="serve one directory written by vae-export (VAE_MODEL_DIR)")
    p.add_argument("--host", help="bind address (VAE_HOST; default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (VAE_PORT; default 8000)")
    p.add_argument("--workers", type=int, help="worker processes (VAE_WORKERS; default 1)")
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

    # the guarded protocol bounds header size, count and time: uvicorn alone bounds none (service/transport.py)
    uvicorn.run("service.app:app_factory", factory=True, http="service.transport:GuardedHttpToolsProtocol",
                host=settings.host, port=settings.port,
                workers=settings.workers, log_level=settings.log_level, access_log=False,
                timeout_graceful_shutdown=30, proxy_headers=False, server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
