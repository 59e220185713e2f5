"""/docs and /redoc work offline, and the OpenAPI document fits the served model and documents every
parameter and error."""

import re

import pytest

from tests.unit.service.conftest import build, client_for
from tests.unit.service.fakes import LATENT

pytestmark = pytest.mark.anyio


CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_every_asset_from_the_server_itself(client, page):
    response = await client.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://", response.text), "the page references another host"
    assets = re.findall(r'(?:href|src)="([^"]+)"', response.text)
    assert {a.rsplit(".", 1)[-1] for a in assets} >= ({"js", "css", "png"} if page == "/docs" else {"js", "png"})
    for asset in assets:
        served = await client.get(asset)
        extension = "." + asset.rsplit(".", 1)[-1]
        assert served.status_code == 200 and served.headers["content-type"].startswith(CONTENT_TYPES[extension])
        assert len(served.content) > 1000, asset
    assert '"/openapi.json"' in response.text or "'/openapi.json'" in response.text


async def test_swagger_ui_is_told_not_to_call_the_online_validator(client):
    assert '"validatorUrl": null' in (await client.get("/docs")).text


async def test_the_decode_example_has_the_models_latent_size_and_decodes(client):
    spec = (await client.get("/openapi.json")).json()
    row = spec["components"]["schemas"]["DecodeRequest"]["properties"]["z"]["items"]
    assert row["minItems"] == row["maxItems"] == LATENT
    (example,) = spec["paths"]["/decode"]["post"]["requestBody"]["content"]["application/json"]["examples"].values()
    assert all(len(z) == LATENT for z in example["value"]["z"])
    decoded = await client.post("/decode", json=example["value"])
    assert decoded.status_code == 200 and len(decoded.json()["images"]) == len(example["value"]["z"])


async def test_before_the_model_loads_the_document_has_no_latent_size():
    app, _ = build(ready=False)
    async with client_for(app) as client:
        spec = (await client.get("/openapi.json")).json()
    assert "minItems" not in spec["components"]["schemas"]["DecodeRequest"]["properties"]["z"]["items"]
    assert "examples" not in spec["paths"]["/decode"]["post"]["requestBody"]["content"]["application/json"]


async def test_openapi_documents_every_parameter_and_error(client):
    spec = (await client.get("/openapi.json")).json()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            for parameter in operation.get("parameters", []):
                assert parameter.get("description"), f"{method} {path} {parameter['name']} has no description"
    assert {"400", "413", "415", "422", "429", "503"} <= set(spec["paths"]["/encode"]["post"]["responses"])
    assert "multipart/form-data" in spec["paths"]["/elbo"]["post"]["requestBody"]["content"]
    assert "ErrorBody" in spec["components"]["schemas"]
