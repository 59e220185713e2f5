"""One URL scheme for every model operation: the default model, a named model, a named version."""

import pytest

from service.routes.addressing import model_paths
from tests.unit.service.conftest import build, client_for, png_bytes

pytestmark = pytest.mark.anyio


def test_each_operation_has_three_addresses_with_their_path_parameters():
    paths = model_paths("/encode")
    assert [path for path, _ in paths] == [
        "/encode",
        "/v1/models/{name}/encode",
        "/v1/models/{name}/versions/{version}/encode",
    ]
    assert [[p["name"] for p in params] for _, params in paths] == [[], ["name"], ["name", "version"]]


async def test_the_three_addresses_answer_alike_and_name_the_version_that_served():
    app, fake = build()
    name, version = fake.manifest.name, fake.manifest.version
    async with client_for(app) as client:
        answers = [
            (await client.post(path, content=png_bytes(3), headers={"content-type": "image/png"})).json()
            for path in ("/encode", f"/v1/models/{name}/encode", f"/v1/models/{name}/versions/{version}/encode")
        ]
    assert answers[0] == answers[1] == answers[2]
    assert answers[0]["model"] == {"name": name, "version": version}
