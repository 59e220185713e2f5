"""The app factory: which repository is served, which model is the default, the version it reports,
and middleware in an order where every answer, early refusals included, carries its request id."""

import tomllib
from pathlib import Path

import pytest

from service.app import create_app, default_model_name, package_version, repository_scanner
from service.repository_scan import ModelSource, VersionPolicy
from service.settings import BUNDLED_DEFAULT_MODEL, Settings
from tests.conftest import REPO
from tests.unit.service.conftest import build, client_for

pytestmark = pytest.mark.anyio


def sources(*names: str) -> dict[str, ModelSource]:
    return {name: ModelSource(name, {}, {}, VersionPolicy()) for name in names}


@pytest.mark.parametrize(
    ("setting", "found", "default"),
    [
        ("chosen", ("a", "b"), "chosen"),  # VAE_DEFAULT_MODEL wins
        (None, ("only",), "only"),
        (None, ("a", BUNDLED_DEFAULT_MODEL), BUNDLED_DEFAULT_MODEL),
        (None, ("a", "b"), None),  # no way to choose: unready, with a log line that says so
    ],
)
def test_the_default_model(setting, found, default):
    assert default_model_name(Settings(default_model=setting), sources(*found)) == default


def test_a_model_directory_wins_over_a_repository(tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "manifest.json").write_text('{"name": "m", "version": "1"}')
    scan = repository_scanner(Settings(model_dir=directory, model_repository=Path("/nowhere")))
    assert list(scan()) == ["m"] and scan()["m"].versions == {"1": directory}


async def test_the_reported_version_is_pyprojects():
    """What /v2 and /openapi.json say is the version in pyproject.toml (the installed package's)."""
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    app, _ = build()
    async with client_for(app) as client:
        assert (await client.get("/v2")).json()["version"] == version == package_version()
        assert (await client.get("/openapi.json")).json()["info"]["version"] == version


async def test_an_early_refusal_carries_the_request_id_and_the_routes_shape():
    app, _ = build(max_upload_bytes=10)
    async with client_for(app) as client:
        native = await client.post("/encode", content=b"x" * 11, headers={"x-request-id": "abc"})
        v2 = await client.post("/v2/models/fake-vae.encode/infer", content=b"x" * 11)
    assert native.status_code == 413 and native.headers["x-request-id"] == "abc"
    assert native.json()["error"]["code"] == "payload_too_large"
    assert v2.status_code == 413 and isinstance(v2.json()["error"], str) and v2.headers["x-request-id"]


@pytest.mark.parametrize("freeze", [True, False])
def test_vae_gc_freeze_settles_the_collector_after_every_change_of_what_is_served(freeze):
    from service.memory import settle_garbage_collector

    app = create_app(Settings(gc_freeze=freeze, grpc_port=0), scan=lambda: {})
    assert app.state.vae.registry.on_served is (settle_garbage_collector if freeze else None)


@pytest.mark.parametrize(("workers", "loaded_before_serving"), [(1, False), (2, True)])
async def test_with_several_workers_each_loads_its_models_before_it_takes_a_connection(workers, loaded_before_serving):
    """Several workers share the port: one still loading must not answer 503 after another said ready.
    One worker answers from the start (live, not yet ready) while it loads."""
    from service.engine import Engine
    from tests.unit.service.conftest import fake_repository
    from tests.unit.service.fakes import FakeVAE

    fake = FakeVAE()
    app = create_app(
        Settings(workers=workers, grpc_port=0),
        load=lambda directory, _: Engine.from_model(fake),
        scan=lambda: fake_repository(fake),
    )
    async with app.router.lifespan_context(app):
        state = app.state.vae
        assert state.started is loaded_before_serving and state.ready is loaded_before_serving
