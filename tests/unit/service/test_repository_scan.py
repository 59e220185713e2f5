"""The repository on disk: versions checked against their manifests, the version policy, links that
lead out of the repository; no registry, no loading."""

from __future__ import annotations

import json

import pytest

from service.repository_scan import (
    ModelPolicyFile,
    VersionPolicy,
    manifest_identity,
    scan_model,
    scan_repository,
    single_model,
    version_key,
)
from tests.unit.service.test_registry import add_version


def test_versions_order_by_their_numbers():
    assert sorted(["2.10.0", "2.9.1", "10.0", "2.9.1-rc1", "1"], key=version_key) == [
        "1",
        "2.9.1",
        "2.9.1-rc1",
        "2.10.0",
        "10.0",
    ]


def test_a_policy_names_exactly_one_kind():
    assert VersionPolicy.model_validate({"specific": {"versions": ["1"]}}).describe() == "specific ['1']"
    with pytest.raises(ValueError):
        VersionPolicy.model_validate({"newest": {}})


def test_a_policy_file_holds_only_the_version_policy():
    assert ModelPolicyFile.model_validate({}).version_policy.describe() == "latest 1"
    with pytest.raises(ValueError):
        ModelPolicyFile.model_validate({"latent_dim": 20})


def test_manifest_identity_reads_name_and_version_and_names_a_missing_manifest(tmp_path):
    directory = add_version(tmp_path, "m", "1.0.0")
    assert manifest_identity(directory) == ("m", "1.0.0")
    with pytest.raises(ValueError, match="not found: a version directory holds what vae-export writes"):
        manifest_identity(tmp_path / "m")
    (directory / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="is not a readable manifest"):
        manifest_identity(directory)


def test_scan_model_sorts_loadable_versions_from_problems(tmp_path):
    add_version(tmp_path, "m", "1.0.0")
    add_version(tmp_path, "m", "2.0.0", manifest_name="other")
    (tmp_path / "m" / ".hidden").mkdir()
    source = scan_model(tmp_path / "m")
    assert list(source.versions) == ["1.0.0"]
    assert list(source.problems) == ["2.0.0"] and "holds the manifest of other 2.0.0" in source.problems["2.0.0"]


def test_a_link_out_of_the_repository_is_a_problem_and_never_read(tmp_path):
    outside = add_version(tmp_path / "outside", "m", "1.0.0")
    repo = tmp_path / "repo"
    add_version(repo, "m", "1.0.0")
    (repo / "m" / "2.0.0").symlink_to(outside)
    (repo / "elsewhere").symlink_to(outside.parent)
    sources = scan_repository(repo)
    assert list(sources["m"].versions) == ["1.0.0"]
    assert "symbolic link out of the model repository" in sources["m"].problems["2.0.0"]
    assert sources["elsewhere"].versions == {} and "not followed" in sources["elsewhere"].problems["-"]


def test_a_symlink_loop_in_a_version_directory_is_a_problem_not_a_crash(tmp_path):
    repo = tmp_path / "repo"
    add_version(repo, "m", "1.0.0")
    add_version(repo, "m", "2.0.0")
    loop = repo / "m" / "2.0.0" / "loop"
    loop.symlink_to(loop)
    source = scan_repository(repo)["m"]
    assert (
        list(source.versions) == ["1.0.0"]
        and source.problems["2.0.0"] == "loop is a symbolic link that loops; not followed"
    )


def test_a_policy_file_that_leads_out_is_refused(tmp_path):
    repo = tmp_path / "repo"
    add_version(repo, "m", "1.0.0")
    (tmp_path / "policy.json").write_text(json.dumps({"version_policy": {"all": {}}}))
    (repo / "m" / "config.json").symlink_to(tmp_path / "policy.json")
    source = scan_repository(repo)["m"]
    assert source.versions == {} and "config.json is a symbolic link out" in source.problems["-"]


def test_a_missing_repository_holds_no_model(tmp_path):
    assert scan_repository(tmp_path / "absent") == {}


def test_single_model_serves_every_version_policy_of_one_directory(tmp_path):
    directory = add_version(tmp_path, "anything", "v", manifest_name="m", manifest_version="1.2.3")
    sources = single_model(directory)
    assert list(sources) == ["m"] and sources["m"].versions == {"1.2.3": directory}
    assert sources["m"].policy.describe() == "all"
