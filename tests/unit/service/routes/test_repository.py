"""The repository control routes and per-model readiness, in-process with a fake model."""

import pytest

from tests.unit.service.conftest import build, client_for, v2_error

pytestmark = pytest.mark.anyio
MODEL = "fake-vae"
TOKEN = "s3cret"
BEARER = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin():
    app, _ = build(admin_token=TOKEN)
    async with client_for(app) as client:
        yield client


async def test_without_a_token_setting_control_is_off():
    app, _ = build()
    async with client_for(app) as client:
        message = v2_error(await client.post("/v2/repository/index"), 403)
    assert message.startswith("repository control is off: set VAE_ADMIN_TOKEN")


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"}, {"authorization": f"Basic {TOKEN}"}])
async def test_a_missing_or_wrong_token_is_401_with_its_challenge(admin, headers):
    response = await admin.post("/v2/repository/index", headers=headers)
    assert "Authorization: Bearer <VAE_ADMIN_TOKEN>" in v2_error(response, 401)
    assert response.headers["www-authenticate"] == 'Bearer realm="vae-service model repository"'


async def test_the_index_lists_the_model_and_each_of_its_v2_models(admin):
    rows = (await admin.post("/v2/repository/index", headers=BEARER)).json()
    names = [row["name"] for row in rows]
    assert names[0] == MODEL and f"{MODEL}.encoder" in names and f"{MODEL}.sample" in names
    assert {(row["version"], row["state"]) for row in rows} == {("9.9.9", "READY")}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"not json", 400, "the body is not JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"ready": 1}', 400, "'ready' must be true or false"),
        (b'{"pad": "' + b"a" * 70_000 + b'"}', 413, "exceeds the limit of 65536 bytes"),
        (b"[" * 60_000, 400, "JSON lists, objects and keys"),
    ],
)
async def test_a_control_body_is_small_json_and_says_what_is_wrong(admin, body, status, words):
    assert words in v2_error(await admin.post("/v2/repository/index", content=body, headers=BEARER), status)


async def test_readiness_says_whether_a_model_exists_was_unloaded_or_serves(admin):
    assert (await admin.get(f"/v2/models/{MODEL}/ready")).json() == {"name": MODEL, "ready": True}
    assert (await admin.get(f"/v2/models/{MODEL}.encoder/ready")).json() == {"name": f"{MODEL}.encoder", "ready": True}
    assert v2_error(await admin.get("/v2/models/nope/ready"), 404).startswith("model 'nope' does not exist")
    assert "that version is not loaded (loaded: 9.9.9)" in v2_error(
        await admin.get(f"/v2/models/{MODEL}/versions/9/ready"), 400
    )
    assert (await admin.post(f"/v2/repository/models/{MODEL}/unload", headers=BEARER)).json() == {}
    assert v2_error(await admin.get(f"/v2/models/{MODEL}/ready"), 400) == f"model '{MODEL}' is not ready (unloaded)"
    assert (await admin.post(f"/v2/repository/models/{MODEL}.decoder/load", headers=BEARER)).json() == {}
    assert (await admin.get(f"/v2/models/{MODEL}/ready")).status_code == 200


async def test_loading_a_model_the_repository_does_not_hold_is_400_naming_it(admin):
    message = v2_error(await admin.post("/v2/repository/models/nope/load", headers=BEARER), 400)
    assert message == "failed to load 'nope': no model 'nope' in the repository"
