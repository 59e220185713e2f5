"""The model registry over a temporary repository, with a loader that needs no graphs."""

from __future__ import annotations

import gc
import json
import logging
from pathlib import Path

import pytest

from service.registry import LoadFailed, ModelNotFound, Registry
from service.repository_scan import scan_repository, single_model

pytestmark = pytest.mark.anyio


class Loaded:
    """Stands in for a warmed-up engine: remembers which directory it came from."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory


def load(directory: Path) -> Loaded:
    if (directory / "BROKEN").exists():
        raise RuntimeError(f"{directory}/decoder.onnx: SHA-256 mismatch")
    return Loaded(directory)


def add_version(
    repo: Path,
    name: str,
    version: str,
    manifest_name: str | None = None,
    manifest_version: str | None = None,
    broken: bool = False,
) -> Path:
    directory = repo / name / version
    directory.mkdir(parents=True)
    (directory / "manifest.json").write_text(
        json.dumps({"name": manifest_name or name, "version": manifest_version or version})
    )
    if broken:
        (directory / "BROKEN").touch()
    return directory


def registry_for(repo: Path) -> Registry:
    return Registry(scan=lambda: scan_repository(repo), load_version=load)


async def states(registry: Registry) -> dict[tuple[str, str], tuple[str, str]]:
    return {(r["name"], r["version"]): (r["state"], r["reason"]) for r in await registry.index()}


@pytest.mark.parametrize(
    ("policy", "served"),
    [
        ({}, ["3.0.0"]),
        ({"latest": {"num_versions": 2}}, ["2.0.0", "3.0.0"]),
        ({"all": {}}, ["1.0.0", "2.0.0", "3.0.0"]),
        ({"specific": {"versions": ["1.0.0", "9.9.9"]}}, ["1.0.0"]),
    ],
)
async def test_the_version_policy_selects_what_is_served(tmp_path, policy, served):
    for version in ("1.0.0", "3.0.0", "2.0.0"):
        add_version(tmp_path, "m", version)
    (tmp_path / "m" / "config.json").write_text(json.dumps({"version_policy": policy}))
    registry = registry_for(tmp_path)
    await registry.load("m")
    assert registry.served() == {"m": served}
    assert registry.resolve("m")[0] == served[-1]  # the default version is the highest served


async def test_a_directory_that_differs_from_its_manifest_fails_the_load_naming_both(tmp_path):
    add_version(tmp_path, "m", "1.0.0")
    add_version(tmp_path, "m", "2.0.0", manifest_version="1.5.0")
    registry = registry_for(tmp_path)
    with pytest.raises(LoadFailed, match=r"failed to load m 2\.0\.0: directory m/2\.0\.0 .* \(serving: 1\.0\.0\)"):
        await registry.load("m")
    state, reason = (await states(registry))[("m", "2.0.0")]
    assert state == "UNAVAILABLE" and "m/2.0.0" in reason and "m 1.5.0" in reason
    assert registry.served() == {"m": ["1.0.0"]}


async def test_a_failed_new_version_never_replaces_the_working_one(tmp_path, caplog):
    add_version(tmp_path, "m", "1.0.0")
    registry = registry_for(tmp_path)
    await registry.load("m")
    add_version(tmp_path, "m", "2.0.0", broken=True)
    with caplog.at_level(logging.ERROR, logger="vae.service"), pytest.raises(LoadFailed, match="serving: 1.0.0"):
        await registry.load("m")
    assert registry.resolve("m")[0] == "1.0.0"
    assert (await states(registry))[("m", "2.0.0")] == (
        "UNAVAILABLE",
        f"{tmp_path}/m/2.0.0/decoder.onnx: SHA-256 mismatch",
    )
    assert (await states(registry))[("m", "1.0.0")][0] == "READY"
    assert [r.message for r in caplog.records] == [
        f"model m 2.0.0: UNAVAILABLE ({tmp_path}/m/2.0.0/decoder.onnx: SHA-256 mismatch)"
    ]


async def test_a_failed_reload_of_the_same_version_keeps_serving_the_earlier_copy(tmp_path):
    directory = add_version(tmp_path, "m", "1.0.0")
    registry = registry_for(tmp_path)
    await registry.load("m")
    _, before = registry.resolve("m")
    (directory / "BROKEN").touch()
    with pytest.raises(LoadFailed):
        await registry.load("m")
    assert registry.resolve("m")[1] is before
    state, reason = (await states(registry))[("m", "1.0.0")]
    assert state == "READY" and reason.startswith("reload failed, still serving")


async def test_a_new_version_replaces_the_old_and_the_old_is_released_when_its_last_request_ends(tmp_path, caplog):
    add_version(tmp_path, "m", "1.0.0")
    registry = registry_for(tmp_path)
    await registry.load("m")
    _, in_flight = registry.resolve("m")  # a request still running on 1.0.0
    add_version(tmp_path, "m", "2.0.0")
    with caplog.at_level(logging.INFO, logger="vae.service"):
        await registry.load("m")
        assert registry.resolve("m")[0] == "2.0.0" and in_flight.directory.name == "1.0.0"
        assert (await states(registry))[("m", "1.0.0")][0] == "UNAVAILABLE"
        assert "model m 1.0.0: released" not in caplog.messages
        del in_flight
        gc.collect()
    assert "model m 1.0.0: released" in caplog.messages


async def test_unload_then_requests_are_not_found_and_load_brings_it_back(tmp_path):
    add_version(tmp_path, "m", "1.0.0")
    registry = registry_for(tmp_path)
    await registry.load("m")
    await registry.unload("m")
    with pytest.raises(ModelNotFound, match="'m' was unloaded; the models served are: none"):
        registry.resolve("m")
    assert (await states(registry))[("m", "1.0.0")] == ("UNAVAILABLE", "unloaded")
    await registry.load("m")
    assert registry.resolve("m")[0] == "1.0.0"


async def test_unknown_models_and_versions(tmp_path):
    add_version(tmp_path, "m", "1.0.0")
    registry = registry_for(tmp_path)
    await registry.load_all()
    with pytest.raises(ModelNotFound, match="no loaded version '9'; loaded: 1.0.0"):
        registry.resolve("m", "9")
    with pytest.raises(ModelNotFound):
        await registry.load("nope")
    with pytest.raises(ModelNotFound):
        await registry.unload("nope")


async def test_the_index_lists_versions_on_disk_that_are_not_loaded(tmp_path):
    add_version(tmp_path, "m", "1.0.0")
    add_version(tmp_path, "other", "1.0.0")
    registry = registry_for(tmp_path)
    await registry.load("m")
    assert await registry.index() == [
        {"name": "m", "version": "1.0.0", "state": "READY", "reason": ""},
        {"name": "other", "version": "1.0.0", "state": "UNAVAILABLE", "reason": "not loaded"},
    ]
    assert await registry.index(ready_only=True) == (await registry.index())[:1]


async def test_poll_applies_what_changed_on_disk(tmp_path):
    add_version(tmp_path, "m", "1.0.0")
    registry = registry_for(tmp_path)
    await registry.poll()
    assert registry.served() == {"m": ["1.0.0"]}
    add_version(tmp_path, "m", "2.0.0")
    await registry.poll()
    assert registry.served() == {"m": ["2.0.0"]}
    await registry.poll()  # nothing changed: nothing reloaded
    assert registry.served() == {"m": ["2.0.0"]}
    import shutil

    shutil.rmtree(tmp_path / "m")
    await registry.poll()
    assert registry.served() == {}


async def test_an_invalid_config_makes_every_version_unavailable_with_the_expected_form(tmp_path):
    add_version(tmp_path, "m", "1.0.0")
    (tmp_path / "m" / "config.json").write_text('{"version_policy": {"newest": 1}}')
    registry = registry_for(tmp_path)
    with pytest.raises(LoadFailed):
        await registry.load("m")
    state, reason = (await states(registry))[("m", "1.0.0")]
    assert state == "UNAVAILABLE" and "config.json is invalid" in reason and '"latest"' in reason


async def test_a_model_dir_is_a_repository_of_one_named_by_its_manifest(tmp_path):
    directory = add_version(tmp_path, "anything", "v", manifest_name="m", manifest_version="1.2.3")
    registry = Registry(scan=lambda: single_model(directory), load_version=load)
    await registry.load_all()
    assert registry.served() == {"m": ["1.2.3"]}


async def test_failed_tells_a_failure_from_an_unload(tmp_path):
    add_version(tmp_path, "bad", "1.0.0", broken=True)
    add_version(tmp_path, "good", "1.0.0")
    registry = registry_for(tmp_path)
    await registry.load_all()
    assert registry.failed("bad") and not registry.failed("good") and not registry.failed("never-seen")
    await registry.unload("good")
    assert not registry.failed("good")


async def test_a_repository_that_cannot_be_read_fails_the_load_and_the_index_reports_what_is_known(tmp_path):
    add_version(tmp_path, "m", "1.0.0")
    registry = registry_for(tmp_path)
    await registry.load("m")

    def unreadable():
        raise PermissionError("repository not readable")

    registry.scan = unreadable
    with pytest.raises(LoadFailed, match="cannot read the model repository"):
        await registry.load("m")
    assert await registry.index() == [{"name": "m", "version": "1.0.0", "state": "READY", "reason": ""}]
    assert registry.resolve("m")[0] == "1.0.0"


async def test_every_engine_a_load_replaces_or_an_unload_drops_is_released_once(tmp_path):
    add_version(tmp_path, "m", "1.0.0")
    released: list[object] = []
    registry = Registry(scan=lambda: scan_repository(tmp_path), load_version=load, on_release=released.append)
    await registry.load("m")
    first = registry.resolve("m")[1]
    await registry.load("m")  # the same version again: a new engine replaces the first
    second = registry.resolve("m")[1]
    assert released == [first] and second is not first
    await registry.unload("m")
    assert released == [first, second]


async def test_every_change_of_what_is_served_calls_on_served_after_the_change(tmp_path):
    """The app settles the garbage collector there (service/memory.py): after the new engines serve and
    the replaced ones are released, never before."""
    add_version(tmp_path, "m", "1.0.0")
    seen: list[list[str]] = []
    registry: Registry[object] = Registry(scan=lambda: scan_repository(tmp_path), load_version=load)
    registry.on_served = lambda: seen.append(registry.served().get("m", []))
    await registry.load("m")
    add_version(tmp_path, "m", "2.0.0")
    await registry.load("m")
    await registry.unload("m")
    assert seen == [["1.0.0"], ["2.0.0"], []]


async def test_loading_the_whole_repository_calls_on_served_once_at_the_end(tmp_path):
    for name in ("a", "b", "c"):
        add_version(tmp_path, name, "1.0.0")
    seen: list[dict] = []
    registry: Registry[object] = Registry(scan=lambda: scan_repository(tmp_path), load_version=load)
    registry.on_served = lambda: seen.append(registry.served())
    await registry.load_all()
    assert seen == [{"a": ["1.0.0"], "b": ["1.0.0"], "c": ["1.0.0"]}]
    await registry.unload("b")  # and after every change from then on
    assert len(seen) == 2 and registry.on_served is not None
