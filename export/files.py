"""Writing a model directory all or nothing (vae-export, vae-import, export.calibrate): torch-free."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


class ExportError(RuntimeError):
    """The export cannot be completed; nothing was written to OUT_DIR."""


def target_dir(out_dir: Path) -> Path:
    """OUT_DIR, which the export replaces as a whole: it must be new, empty, or an earlier export."""
    out = Path(out_dir)
    if out.is_symlink():  # replace what the link points at and keep the link
        out = out.resolve()
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / "manifest.json").is_file())):
        raise ExportError(
            f"{out} exists and is not a model directory (no manifest.json, as vae-export and vae-import write). "
            "The export replaces OUT_DIR as a whole: choose a new directory or empty this one."
        )
    return out


def move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished export to OUT. An earlier export is renamed aside first and removed only
    once the new one is in place; if the second rename fails, it is renamed back. A directory
    cannot be renamed over a non-empty one, so for that instant OUT does not exist."""
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    os.replace(out, old)  # onto the empty directory just made: a fresh, unique name
    try:
        os.replace(staging, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


__all__ = ["ExportError", "move_into_place", "target_dir"]
