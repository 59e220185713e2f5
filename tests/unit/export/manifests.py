"""Shared by the tests of the shipped models: their manifest, checked against the published schema. Torch-free."""

import json
from pathlib import Path

import jsonschema

from model.core.manifest import SCHEMA_PATH, Manifest


def schema_valid_manifest(directory: Path) -> Manifest:
    """The directory's manifest.json, checked against the published JSON schema and then read."""
    raw = json.loads((directory / "manifest.json").read_text())
    jsonschema.validate(raw, json.loads(SCHEMA_PATH.read_text()))
    return Manifest.model_validate(raw)
