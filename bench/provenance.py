"""What a result file was measured on: the code (git commit, and whether the tree had changes) and
the model (the ONNX graphs' SHA-256), so that a number can be traced to what produced it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_ROOT = REPO / "artifacts" / "fashion-mnist-vae"


def default_model_dir(model_root: Path = DEFAULT_MODEL_ROOT) -> Path:
    """The version the bundled repository serves when a request names none (its highest): what the
    benchmarks measure unless told otherwise, so that the docs' tables are of the served default."""
    from service.repository_scan import version_key

    return max((p.parent for p in model_root.glob("*/manifest.json")), key=lambda p: version_key(p.name))


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """The checked-out commit and the tracked files that differ from it (untracked files ignored)."""
    try:
        commit = _git(repo, "rev-parse", "HEAD").strip()
        changed = [line[3:] for line in _git(repo, "status", "--porcelain", "--untracked-files=no").splitlines()]
    except (OSError, subprocess.CalledProcessError) as error:
        return {"commit": None, "dirty": None, "error": f"git failed: {error}"}
    return {"commit": commit, "dirty": bool(changed), "changed": changed[:20], "changed_count": len(changed)}


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def served_model(url: str) -> dict[str, Any]:
    """The graph hashes a running product server reports (GET /v1/model): what it actually loaded."""
    card = httpx.get(url + "/v1/model", timeout=10).raise_for_status().json()
    return {**card["model"], **card["graphs"], "source": "GET /v1/model"}


def model_on_disk(model_dir: Path) -> dict[str, Any]:
    """The graph hashes recorded in a model directory's manifest, for results measured in-process."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    return {
        "name": manifest["name"],
        "version": manifest["version"],
        "encoder_sha256": manifest["encoder"]["sha256"],
        "decoder_sha256": manifest["decoder"]["sha256"],
        "source": str(model_dir / "manifest.json"),
    }
