"""The hot routes' short ways (service/hot_routes.py): every answer equals the framework's, byte for
byte apart from the request id, for successes and refusals, whether it goes in front of the middleware
(ShortWay) or past the router (HotRoutes, with CORS or tracing on); the short way is really taken;
limits, metrics, request ids, client aborts and /openapi.json are what they were."""

import asyncio
import json

import numpy as np
import pytest
from starlette.responses import Response

from service import app as app_module
from service.hot_routes import HotRoutes
from service.limits import CLIENT_CLOSED
from tests.unit.service.conftest import PNG, build, client_for, png_bytes

pytestmark = pytest.mark.anyio

PIXELS = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
V2_JSON = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "data": PIXELS.ravel().tolist()}]}
V2_HEADER = json.dumps(
    {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 1, 8, 8], "parameters": {"binary_data_size": 256}}]}
).encode()
MULTIPART = [("file", ("a.png", png_bytes(1), "image/png")), ("file", ("b.png", png_bytes(2), "image/png"))]
REQUESTS = [  # (method, path, keyword arguments of httpx's request)
    ("POST", "/encode", {"content": png_bytes(0), "headers": PNG}),
    ("POST", "/encode?sample=true&seed=3", {"content": png_bytes(0), "headers": PNG}),
    ("POST", "/encode", {"files": MULTIPART}),
    ("POST", "/encode?seed=abc", {"content": png_bytes(0), "headers": PNG}),  # 422
    ("POST", "/encode?unknown=1", {"content": png_bytes(0), "headers": PNG}),
    ("POST", "/encode", {"content": b"not an image", "headers": PNG}),  # 400
    ("POST", "/encode", {"content": b"", "headers": PNG}),
    ("POST", "/encode", {"content": png_bytes(0), "headers": {"content-type": "text/plain"}}),  # 415
    ("POST", "/v1/models/fake-vae/encode", {"content": png_bytes(0), "headers": PNG}),
    ("POST", "/v1/models/nope/encode", {"content": png_bytes(0), "headers": PNG}),  # 404
    ("POST", "/v1/models/fake-vae/versions/1.0.0/encode", {"content": png_bytes(0), "headers": PNG}),
    ("POST", "/v1/models/fake-vae/versions/9.9.9/encode", {"content": png_bytes(0), "headers": PNG}),
    ("POST", "/v2/models/fake-vae.encode/infer", {"json": V2_JSON}),
    (
        "POST",
        "/v2/models/fake-vae.encode/infer",
        {"content": V2_HEADER + PIXELS.tobytes(), "headers": {"Inference-Header-Content-Length": str(len(V2_HEADER))}},
    ),
    ("POST", "/v2/models/fake-vae/infer", {"json": V2_JSON}),
    ("POST", "/v2/models/fake-vae.encode/versions/1.0.0/infer", {"json": V2_JSON}),
    ("POST", "/v2/models/fake-vae.encode/infer", {"content": b"{not json"}),  # 400
    ("POST", "/v2/models/nope/infer", {"json": V2_JSON}),  # 404
    ("GET", "/encode", {}),  # 405: not a hot method, the framework's answer
]


def comparable(response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = sorted((k, v) for k, v in response.headers.items() if k not in ("x-request-id", "date"))
    return response.status_code, headers, response.content


def hot_routes_of(app) -> HotRoutes:
    layer = app.middleware_stack
    while not isinstance(layer, HotRoutes):
        layer = layer.app
    return layer


@pytest.fixture
def reference(monkeypatch):
    """The same app with no endpoint taken the short way: every request through the framework."""
    with monkeypatch.context() as patched:
        patched.setattr(app_module, "HOT_ENDPOINTS", ())
        app, _ = build()
    return app


def counting(holder, attribute: str) -> list[str]:
    """Replace holder.attribute (an ASGI app) by one that records each path it is called with."""
    calls: list[str] = []
    inner = getattr(holder, attribute)

    async def counted(scope, receive, send):
        calls.append(scope["path"])
        await inner(scope, receive, send)

    setattr(holder, attribute, counted)
    return calls


@pytest.mark.parametrize(("method", "path", "kwargs"), REQUESTS, ids=[f"{m} {p}" for m, p, _ in REQUESTS])
@pytest.mark.parametrize("way", ["in front", "past the router"])
async def test_the_short_way_answers_exactly_as_the_framework_does(reference, method, path, kwargs, way):
    app, _ = build()
    if way == "past the router":  # as with CORS or tracing configured: no short way in front
        app.short_way = None
    async with client_for(app) as hot, client_for(reference) as framework:
        expected = comparable(await framework.request(method, path, **kwargs))
        first = comparable(await hot.request(method, path, **kwargs))  # through the framework: it learns the route
        taken = hot_routes_of(app)
        # in front: the middleware is not called at all; past the router: what is inside HotRoutes is not
        calls = counting(app, "middleware_stack") if way == "in front" else counting(taken, "app")
        second = comparable(await hot.request(method, path, **kwargs))
    assert first == expected and second == expected
    learned = (method, path.split("?")[0]) in taken.table.found
    assert learned is (method == "POST")  # every POST here reaches a hot endpoint, whatever it answers
    # in front, a request without a body (Content-Length: 0) goes through the limits middleware, which answers it
    through_the_middleware = way == "in front" and kwargs.get("content", True) == b""
    assert calls == ([] if learned and not through_the_middleware else [path.split("?")[0]])


async def test_the_hot_routes_are_learned_and_taken_the_short_way():
    app, _ = build()
    async with client_for(app) as client:
        for _ in range(2):
            assert (await client.post("/encode", content=png_bytes(0), headers=PNG)).status_code == 200
            assert (await client.post("/v2/models/fake-vae.encode/infer", json=V2_JSON)).status_code == 200
            assert (await client.post("/elbo", content=png_bytes(0), headers=PNG)).status_code == 200
    found = hot_routes_of(app).table.found
    assert set(found) == {("POST", "/encode"), ("POST", "/v2/models/fake-vae.encode/infer")}  # /elbo: not hot
    assert found[("POST", "/v2/models/fake-vae.encode/infer")][2] == {"name": "fake-vae.encode"}


async def test_metrics_and_request_ids_are_kept_on_the_short_way():
    app, _ = build()
    async with client_for(app) as client:
        answers = [
            await client.post(
                "/v1/models/fake-vae/encode", content=png_bytes(0), headers={**PNG, "X-Request-ID": f"r{i}"}
            )
            for i in range(3)
        ]
        metrics = (await client.get("/metrics")).text
    assert [a.headers["x-request-id"] for a in answers] == ["r0", "r1", "r2"]
    line = 'vae_requests_total{method="POST",route="/v1/models/{name}/encode",status="200"} 3.0'
    assert line in metrics


async def test_the_openapi_document_is_the_frameworks(reference):
    app, _ = build()
    async with client_for(app) as hot, client_for(reference) as framework:
        assert (await hot.get("/openapi.json")).json() == (await framework.get("/openapi.json")).json()


async def test_an_error_outside_the_handlers_is_the_generic_500_with_the_request_id(monkeypatch):
    app, _ = build()
    async with client_for(app) as client:
        assert (await client.post("/encode", content=png_bytes(0), headers=PNG)).status_code == 200

        async def broken(*args, **kwargs):
            raise RuntimeError("the model broke")

        served = app.state.vae.resolve()
        monkeypatch.setattr(served, "encode", broken)
        response = await client.post("/encode", content=png_bytes(0), headers=PNG)
    body = response.json()
    assert response.status_code == 500 and body["error"]["code"] == "internal_error"
    assert "X-Request-ID" in body["error"]["message"] and response.headers["x-request-id"]
    assert "broke" not in response.text


def raw_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
        "state": {},
    }


async def learned_app(**settings):
    """An app that has learned /encode, with its short way in front."""
    app, _ = build(**settings)
    async with client_for(app) as client:
        assert (await client.post("/encode", content=png_bytes(0), headers=PNG)).status_code == 200
    assert app.short_way is not None and ("POST", "/encode") in app.short_way.table.found
    return app


async def test_the_limits_still_answer_what_they_refuse(monkeypatch):
    """A body over the limit (413), uploads at their limit (429) and a chunked body over the limit go
    through the limits middleware, with its answers, counted in the metrics."""
    app = await learned_app(max_upload_bytes=1000)
    big = bytes(2000)

    async def chunks():
        yield big

    async with client_for(app) as client:
        too_large = await client.post("/encode", content=big, headers=PNG)
        chunked = await client.post("/encode", content=chunks(), headers=PNG)
        monkeypatch.setattr(app.short_way.slots, "full", lambda: True)
        busy = await client.post("/encode", content=png_bytes(0), headers={**PNG, "X-Request-ID": "busy"})
        metrics = (await client.get("/metrics")).text
    assert too_large.status_code == 413 and too_large.json()["error"]["code"] == "payload_too_large"
    assert chunked.status_code == 413 and too_large.headers["x-request-id"]
    assert busy.status_code == 429 and busy.headers["x-request-id"] == "busy" and busy.headers["retry-after"] == "1"
    assert 'vae_requests_total{method="POST",route="other",status="413"} 1.0' in metrics  # refused before routing
    assert 'vae_requests_total{method="POST",route="/encode",status="413"} 1.0' in metrics  # the chunked one
    assert 'vae_requests_total{method="POST",route="other",status="429"} 1.0' in metrics
    assert "vae_requests_rejected_overload_total 1.0" in metrics


async def test_a_body_that_stalls_gets_its_408_and_a_client_that_leaves_counts_499():
    app = await learned_app(body_timeout_s=0.2)
    length = str(len(png_bytes(0))).encode()
    headers = [(b"content-type", b"image/png"), (b"content-length", length), (b"x-request-id", b"slow")]
    sent: list[dict] = []

    async def record(message):
        sent.append(message)

    async def stalls():
        await asyncio.Event().wait()  # the body never comes: the sweeper cancels this wait at the deadline

    await asyncio.wait_for(app(raw_scope("/encode", headers), stalls, record), timeout=10)
    assert sent[0]["status"] == 408 and (b"x-request-id", b"slow") in sent[0]["headers"]
    assert b"did not arrive within 0.2 s" in sent[1]["body"]
    assert not app.short_way.slots.bodies  # the slot was given back

    sent.clear()

    async def leaves():
        return {"type": "http.disconnect"}

    await app(raw_scope("/encode", headers), leaves, record)
    assert sent == []  # nobody to answer
    async with client_for(app) as client:
        metrics = (await client.get("/metrics")).text
    assert f'vae_requests_total{{method="POST",route="/encode",status="{CLIENT_CLOSED}"}} 1.0' in metrics
    assert 'vae_requests_total{method="POST",route="/encode",status="408"} 1.0' in metrics


class _BreaksMidway(Response):
    """A response that fails after its start was sent."""

    def __init__(self) -> None:
        super().__init__(b"{}", media_type="application/json")

    async def __call__(self, scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        raise RuntimeError("broke after the start")


@pytest.mark.parametrize("way", ["in front", "past the router"])
async def test_an_exception_after_the_start_is_logged_with_its_traceback(monkeypatch, caplog, way):
    from service import responses

    app, _ = build()
    if way == "past the router":
        app.short_way = None
    async with client_for(app) as client:
        assert (await client.post("/encode", content=png_bytes(0), headers=PNG)).status_code == 200
        monkeypatch.setattr(responses, "json_response", lambda payload: _BreaksMidway())
        caplog.clear()
        body = png_bytes(0)
        headers = [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())]
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def record(message):
            sent.append(message)

        await app(raw_scope("/encode", headers), receive, record)  # returns: the exception is handled
        metrics = (await client.get("/metrics")).text
    assert [m["type"] for m in sent] == ["http.response.start"] and sent[0]["status"] == 200
    logged = [r for r in caplog.records if r.getMessage() == "unhandled error on POST /encode"]
    assert len(logged) == 1 and logged[0].exc_info and "broke after the start" in str(logged[0].exc_info[1])
    assert 'vae_requests_total{method="POST",route="/encode",status="200"} 2.0' in metrics  # its status was sent
