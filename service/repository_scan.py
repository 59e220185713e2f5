"""The model repository on disk: which models and versions `DIR` holds, checked against their
manifests, and each model's version policy. Read only; what is served is the registry's
(service/registry.py), which calls `scan_repository` (or `single_model`) on a worker thread.

`DIR/<name>/<version>/` holds what `vae-export` writes; `DIR/<name>/config.json` may set the
version policy. A symbolic link is followed only where it stays inside the repository.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONFIG_FILE = "config.json"


class _Latest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_versions: int = Field(1, ge=1)


class _Specific(BaseModel):
    model_config = ConfigDict(extra="forbid")
    versions: list[str] = Field(min_length=1)


class VersionPolicy(BaseModel):
    """Which versions of a model are served: Triton's `version_policy`, as JSON. Exactly one of
    latest (the highest `num_versions`), all, or specific (a pinned list)."""

    model_config = ConfigDict(extra="forbid")
    latest: _Latest | None = None
    all: dict[str, Any] | None = None
    specific: _Specific | None = None

    def select(self, versions: list[str]) -> list[str]:
        ordered = sorted(versions, key=version_key)
        if self.all is not None:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific.versions]
        return ordered[-(self.latest or _Latest()).num_versions :]

    def describe(self) -> str:
        if self.all is not None:
            return "all"
        if self.specific is not None:
            return f"specific {self.specific.versions}"
        return f"latest {(self.latest or _Latest()).num_versions}"


class ModelPolicyFile(BaseModel):
    """A model's `config.json`: its version policy, nothing else (the architecture is the manifest's)."""

    model_config = ConfigDict(extra="forbid")
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Numeric dotted parts compare as numbers ("2.10.0" > "2.9.1"); other parts as text, after numbers."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"[.\-+_]", version))


@dataclass(frozen=True)
class ModelSource:
    """What the disk holds for one model: its loadable version directories, the versions that
    cannot be loaded (with why), and the version policy."""

    name: str
    versions: dict[str, Path]
    problems: dict[str, str]
    policy: VersionPolicy
    fingerprint: tuple[Any, ...] = ()


def manifest_identity(directory: Path) -> tuple[str, str]:
    """(name, version) from a version directory's manifest, without loading its graphs."""
    path = directory / "manifest.json"
    try:
        raw = json.loads(path.read_text())
        return str(raw["name"]), str(raw["version"])
    except FileNotFoundError:
        raise ValueError(f"{path} not found: a version directory holds what vae-export writes") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not a readable manifest ({type(exc).__name__})") from None


def _fingerprint(directory: Path) -> tuple[Any, ...]:
    try:
        stat = (directory / "manifest.json").stat()
        return (directory.name, stat.st_mtime_ns, stat.st_size)
    except OSError:
        return (directory.name, None)


def scan_repository(repository: Path) -> dict[str, ModelSource]:
    """Every model directory under `repository`, with its versions checked against their manifests.
    A symbolic link is followed only where it stays inside the repository: one pointing out (at /etc,
    say) is listed as a problem and never read."""
    sources: dict[str, ModelSource] = {}
    if not repository.is_dir():
        return sources
    root = repository.resolve()
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        escape = _escapes(model_dir, root)
        if escape:
            sources[model_dir.name] = ModelSource(model_dir.name, {}, {"-": escape}, VersionPolicy(), (escape,))
            continue
        sources[model_dir.name] = scan_model(model_dir, root)
    return sources


def _escapes(path: Path, root: Path) -> str:
    """Why `path` may not be read (a link that leads out of `root`, or one that never ends), or "" when
    it may."""
    try:
        target = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: RuntimeError up to Python 3.12, OSError since
        return f"{path.name} is a symbolic link that loops; not followed"
    if target.is_relative_to(root):
        return ""
    return f"{path.name} is a symbolic link out of the model repository (to {target}); not followed"


def _escaping_entry(version_dir: Path, root: Path) -> str:
    """The first entry of a version directory (itself included) that leads out of the repository, or ""."""
    for path in (version_dir, *sorted(version_dir.iterdir())):
        reason = _escapes(path, root)
        if reason:
            return reason
    return ""


def scan_model(model_dir: Path, root: Path | None = None) -> ModelSource:
    """One model's directory; with `root`, every version directory and file must stay inside it."""
    name = model_dir.name
    config_path = model_dir / CONFIG_FILE
    policy = _read_policy(model_dir, root)
    if isinstance(policy, ModelSource):  # the policy file cannot be used: no version is loadable
        return policy
    versions: dict[str, Path] = {}
    problems: dict[str, str] = {}
    prints = []
    for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        prints.append(_fingerprint(version_dir))
        problem = _version_problem(version_dir, name, root)
        if problem:
            problems[version_dir.name] = problem
        else:
            versions[version_dir.name] = version_dir
    config_print = config_path.stat().st_mtime_ns if config_path.is_file() else None
    return ModelSource(name, versions, problems, policy, (config_print, *prints))


def _read_policy(model_dir: Path, root: Path | None) -> VersionPolicy | ModelSource:
    """The model's version policy (the default one without a config.json); or, where its config.json
    leads out of the repository or is invalid, the model's source with every version refused."""
    name, config_path = model_dir.name, model_dir / CONFIG_FILE
    if not config_path.is_file():
        return VersionPolicy()
    escape = _escapes(config_path, root) if root is not None else ""
    if escape:
        return ModelSource(name, {}, {"-": escape}, VersionPolicy(), (escape,))
    try:
        return ModelPolicyFile.model_validate_json(config_path.read_bytes()).version_policy
    except (ValidationError, OSError) as exc:
        reason = (
            f'{config_path} is invalid: {str(exc).splitlines()[0]}; expected {{"version_policy": '
            '{"latest": {"num_versions": 1}} | {"all": {}} | {"specific": {"versions": [...]}}}'
        )
        problems = {p.name: reason for p in model_dir.iterdir() if p.is_dir()}
        return ModelSource(name, {}, problems or {"-": reason}, VersionPolicy(), (config_path.stat().st_mtime_ns,))


def _version_problem(version_dir: Path, name: str, root: Path | None) -> str:
    """Why a version directory cannot be loaded, or "" when it can: a link out of the repository, no
    readable manifest, or a manifest of another model or version."""
    escape = _escaping_entry(version_dir, root) if root is not None else ""
    if escape:
        return escape
    try:
        found = manifest_identity(version_dir)
    except ValueError as exc:
        return str(exc)
    if found != (name, version_dir.name):
        return (
            f"directory {name}/{version_dir.name} holds the manifest of {found[0]} "
            f"{found[1]}: the directory names must equal the manifest's name and "
            "version"
        )
    return ""


def single_model(directory: Path) -> dict[str, ModelSource]:
    """`--model-dir D`: a repository of one model, named by D's manifest (D's own name is free)."""
    name, version = manifest_identity(directory)
    return {name: ModelSource(name, {version: directory}, {}, VersionPolicy(all={}), (_fingerprint(directory),))}
