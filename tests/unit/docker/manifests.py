"""Offline checks of the deployment manifests: kustomize renders them (kubectl's built-in kustomize),
Kubernetes' own schemas for a pinned version validate them strictly (kubernetes-validate bundles the
schemas), and KServe's CRD schemas for a pinned KServe release (vendored in docker/kserve/schema/)
validate the KServe resources, with unknown fields refused as `kubectl apply --validate=strict` does."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO

KUBERNETES_VERSION = "1.32.0"  # the kubectl here is 1.32; kubernetes-validate bundles 1.25 to 1.37
KSERVE_SCHEMAS = REPO / "docker" / "kserve" / "schema" / "kserve-v0.20.0.json"
KUBERNETES = REPO / "docker" / "kubernetes"
KSERVE = REPO / "docker" / "kserve"

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl is needed to render the kustomizations (`kubectl kustomize`)"
)


class Invalid(AssertionError):
    """A manifest that the API server would refuse: the message names the resource and the field."""


def load(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def render(directory: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize DIR`: what `kubectl apply -k DIR` would send."""
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    if result.returncode:
        raise Invalid(f"kubectl kustomize {directory}: {result.stderr.strip()}")
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def validate_kubernetes(document: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        raise Invalid(f"{name(document)}: {'.'.join(map(str, error.path))}: {error.message}") from None


def validate_kserve(document: dict[str, Any]) -> None:
    """Against the CRD's schema, made strict; the metadata (the CRD says only `object`) as any
    object's metadata, by Kubernetes' schema."""
    schema = kserve_schemas().get(f"{document.get('apiVersion')}/{document.get('kind')}")
    if schema is None:
        raise Invalid(f"{name(document)}: not a KServe kind of {KSERVE_SCHEMAS.name}")
    error = jsonschema.exceptions.best_match(jsonschema.Draft7Validator(schema).iter_errors(document))
    if error is not None:
        raise Invalid(f"{name(document)}: {'.'.join(map(str, error.absolute_path))}: {error.message}")
    validate_kubernetes({"apiVersion": "v1", "kind": "ConfigMap", "metadata": document["metadata"]})


def validate(document: dict[str, Any]) -> None:
    if document.get("apiVersion", "").startswith("serving.kserve.io/"):
        validate_kserve(document)
    else:
        validate_kubernetes(document)


@cache
def kserve_schemas() -> dict[str, dict[str, Any]]:
    return {key: strict(schema) for key, schema in json.loads(KSERVE_SCHEMAS.read_text())["schemas"].items()}


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields refused wherever it lists the fields of an object, as the API
    server's strict field validation does (a CRD's structural schema would otherwise prune them)."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(schema)
    return schema


def name(document: dict[str, Any]) -> str:
    return f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"


def by_kind(documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {document["kind"]: document for document in documents}


def broken_copy(source: Path, target: Path, file: str, old: str, new: str) -> Path:
    """A copy of the directory `source` with `old` replaced by `new` in `file` (which must hold it)."""
    shutil.copytree(source, target)
    path = target / file
    text = path.read_text()
    assert old in text, f"{old!r} is not in {file}"
    path.write_text(text.replace(old, new, 1))
    return target
