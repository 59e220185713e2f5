"""The manifest's checked-in JSON schema is the one `Manifest` generates, and names every likelihood."""

import json

from model.core.likelihoods import LIKELIHOODS
from model.core.manifest import SCHEMA_PATH, json_schema


def test_checked_in_schema_is_generated_from_the_model():
    # regenerate with `python -m model.core.manifest`
    assert json.loads(SCHEMA_PATH.read_text()) == json_schema()


def test_the_schema_accepts_exactly_the_registered_likelihoods_and_none():
    name = json_schema()["$defs"]["LikelihoodSpec"]["properties"]["name"]
    assert sorted(name["enum"]) == sorted([*LIKELIHOODS, "none"])
