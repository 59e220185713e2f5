"""The model repository over real HTTP: live version swaps under load, two models at once, the
control routes' token, version policies, and a serving path that never imports torch.

A second model is trained (one epoch on synthetic 28x28 images) and exported here with the real
`vae-train` and `vae-export`; it takes the shipped model's input and latent size, so the same
request bodies fit both while their graphs, and so their answers, differ."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from model.core.artifact import ModelIntegrityError, load_model_dir
from model.core.preprocess import PreprocessContract, array_to_png, bytes_to_array
from tests.conftest import REPO, synthetic_images
from tests.integration.conftest import free_port
from tests.integration.repository_fixtures import (
    ADMIN_TOKEN,
    DEFAULT_MODEL,
    TINY_LATENT_DIM,
    add_version,
    bearer,
    export_version,
    flip_a_byte,
    index_states,
    manifest_of,
    repository_server,
    shipped_model_dir,
    sigmoid,
    train_tiny_checkpoint,
    write_version_policy,
)

TINY_MODEL = "tiny-vae"
PER_MODEL = f"/v1/models/{DEFAULT_MODEL}"
INDEX = "/v2/repository/index"
REQUESTS, CONCURRENCY = 2000, 16
PHASE_TIMEOUT_S = 120.0  # the most any control phase waits for the load to make progress
CLOSE = {"rtol": 1e-5, "atol": 1e-6}


def load_route(name: str) -> str:
    return f"/v2/repository/models/{name}/load"


def unload_route(name: str) -> str:
    return f"/v2/repository/models/{name}/unload"


# -- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_version(tmp_path_factory) -> Path:
    """A new version of the default model, 2.1.0: a small MLP VAE trained and exported here."""
    root = tmp_path_factory.mktemp("tiny-model")
    checkpoint = train_tiny_checkpoint(root)
    return export_version(checkpoint, root / "export", DEFAULT_MODEL, "2.1.0")


@pytest.fixture(scope="session")
def tiny_model_source(tiny_version, tmp_path_factory) -> Path:
    """The same graphs as a separately named model, tiny-vae 1.0.0. Relabelled rather than exported a
    second time: the ONNX export costs 10-15 s; the manifest's name and version are not hashed, its
    graph hashes stay valid (the graphs' own metadata still says fashion-mnist-vae 2.1.0)."""
    directory = add_version(tmp_path_factory.mktemp("tiny-named"), tiny_version, TINY_MODEL, "1.0.0")
    assert manifest_of(directory)["name"] == TINY_MODEL
    return directory


@dataclass(frozen=True)
class Bodies:
    """The request bodies every test sends, as bytes, and as the arrays the server should see."""

    single: bytes  # one PNG
    pair: tuple[bytes, bytes]  # a two-part multipart upload
    latents: np.ndarray  # (2, latent_dim) float32, exactly representable in JSON

    @classmethod
    def make(cls) -> Bodies:
        images = synthetic_images(3, 28, seed=7)
        pngs = [array_to_png(image[None] / 255.0) for image in images]
        latents = np.random.default_rng(5).standard_normal((2, TINY_LATENT_DIM)).round(3).astype(np.float32)
        return cls(single=pngs[0], pair=(pngs[1], pngs[2]), latents=latents)

    def multipart(self) -> list:
        return [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(self.pair)]


BODIES = Bodies.make()


@dataclass(frozen=True)
class Expected:
    """What one version's graphs give directly (onnxruntime, no server) for BODIES."""

    single_mean: np.ndarray  # (1, D)
    pair_means: np.ndarray  # (2, D)
    decoded: np.ndarray  # (2, C, H, W): E[x | z] for BODIES.latents
    reconstruction: np.ndarray  # (1, C, H, W): E[x | z = mean of q(z | single)]

    @classmethod
    def of(cls, directory: Path) -> Expected:
        model = load_model_dir(directory)
        assert model.manifest.likelihood.name == "bernoulli"  # E[x | z] = sigmoid(logits) below
        contract = PreprocessContract.from_dict(model.manifest.preprocessing)
        single = bytes_to_array(BODIES.single, contract)[None]
        pair = np.stack([bytes_to_array(data, contract) for data in BODIES.pair])
        single_mean = model.encode(single)[0]
        return cls(
            single_mean=single_mean,
            pair_means=model.encode(pair)[0],
            decoded=sigmoid(model.decode(BODIES.latents)[0]),
            reconstruction=sigmoid(model.decode(single_mean)[0]),
        )


def png_pixels(data: bytes) -> np.ndarray:
    """A greyscale PNG as (1, H, W) in [0, 1]."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)[None] / 255.0


def error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]["code"]


def control_error(response: httpx.Response) -> str:
    """The control routes answer errors as the v2 protocol does: {"error": "<message>"}."""
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def wait_model_ready(server, name: str, version: str | None = None, timeout: float = 30.0) -> None:
    """Poll the per-model readiness route until 200; /readyz speaks only for the default model."""
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"vae-serve exited: {server.log()}")
        try:
            if httpx.get(server.url + path, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{path} not 200 after {timeout}s: {server.log()[-2000:]}")


def encode_means(client: httpx.Client, path: str) -> tuple[dict, np.ndarray]:
    response = client.post(path, files=BODIES.multipart())
    assert response.status_code == 200, response.text
    body = response.json()
    return body["model"], np.array([r["mean"] for r in body["results"]])


# -- the fixtures themselves ----------------------------------------------------------------------


def test_fixtures_build_a_repository_of_distinct_verified_versions(tmp_path, tiny_version, tiny_model_source):
    repository = tmp_path / "repo"
    shipped = add_version(repository, shipped_model_dir())
    new = add_version(repository, tiny_version)
    named = add_version(repository, tiny_model_source)
    tampered = add_version(repository, tiny_version, version="2.2.0")
    flip_a_byte(tampered / "decoder.onnx")
    for directory, name, version in (
        (shipped, DEFAULT_MODEL, "2.0.0"),
        (new, DEFAULT_MODEL, "2.1.0"),
        (named, TINY_MODEL, "1.0.0"),
        (tampered, DEFAULT_MODEL, "2.2.0"),
    ):
        manifest = manifest_of(directory)
        assert directory.relative_to(repository).parts == (name, version)
        assert (manifest["name"], manifest["version"]) == (name, version)
        assert manifest["input"]["shape"] == [1, 28, 28] and manifest["latent_dim"] == TINY_LATENT_DIM
    assert manifest_of(new)["training"]["train_config"]["epochs"] == 1
    with pytest.raises(ModelIntegrityError, match="decoder.onnx: SHA-256"):
        load_model_dir(tampered)
    old, fresh, renamed = Expected.of(shipped), Expected.of(new), Expected.of(named)
    # The swap test tells versions apart by their numbers: they must differ far beyond tolerance.
    assert np.abs(old.single_mean - fresh.single_mean).max() > 0.05
    assert np.abs(old.decoded - fresh.decoded).max() > 0.05
    np.testing.assert_array_equal(fresh.pair_means, renamed.pair_means)


# -- live swaps under load ------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    name: str
    method: str
    path: str
    body: str  # "png", "multipart", "latents", "none"


CALLS = (
    Call("encode", "POST", "/encode", "png"),
    Call("encode_multipart", "POST", "/encode", "multipart"),
    Call("elbo_k5", "POST", "/elbo?k=5", "png"),
    Call("decode", "POST", "/decode?pixels=true", "latents"),
    Call("sample", "GET", "/sample?n=2&seed=1", "none"),
    Call("reconstruct", "POST", "/reconstruct?format=json", "png"),
)
REQUEST_BODIES = {
    "png": {"content": BODIES.single, "headers": {"content-type": "image/png"}},
    "multipart": {"files": BODIES.multipart()},
    "latents": {"json": {"z": BODIES.latents.tolist()}},
    "none": {},
}


@dataclass
class Record:
    index: int
    call: str
    path: str
    started: float
    finished: float
    status: int | None  # None: a transport error
    version: str | None = None
    problem: str | None = None  # why the answer is wrong, if it is


def judge(call: Call, response: httpx.Response, expected: dict[str, Expected]) -> tuple[str | None, str | None]:
    """(the version that answered, a problem or None) for one 200 or 404."""
    if response.status_code == 404:
        try:
            body = response.json()
            ok = body["error"]["code"] == "model_not_found" and DEFAULT_MODEL in body["error"]["message"]
        except (ValueError, KeyError, TypeError):
            ok = False
        return None, None if ok else f"404 that is not model_not_found naming the model: {response.text[:200]}"
    if response.status_code != 200:
        return None, f"status {response.status_code}: {response.text[:200]}"
    if response.headers.get("content-type", "").startswith("image/png"):
        name, version = response.headers.get("x-model-name"), response.headers.get("x-model-version")
        body = None
    else:
        body = response.json()
        model = body.get("model") or {}
        name, version = model.get("name"), model.get("version")
    if name != DEFAULT_MODEL or version not in expected:
        return version, f"answer names model {name!r} version {version!r}"
    want = expected[version]
    try:
        if call.name == "encode":
            np.testing.assert_allclose([r["mean"] for r in body["results"]], want.single_mean, **CLOSE)
        elif call.name == "encode_multipart":
            np.testing.assert_allclose([r["mean"] for r in body["results"]], want.pair_means, **CLOSE)
        elif call.name == "decode":
            np.testing.assert_allclose([i["pixels"] for i in body["images"]], want.decoded, rtol=1e-5, atol=1e-5)
        elif call.name == "reconstruct":
            got = png_pixels(base64.b64decode(body["images"][0]["png_base64"]))
            np.testing.assert_allclose(got, want.reconstruction[0], rtol=0, atol=0.6 / 255)  # 8-bit rounding
        elif call.name == "elbo_k5":
            result = body["results"][0]
            assert np.isfinite(result["elbo"]) and np.isfinite(result["log_likelihood"]), result
        elif call.name == "sample":
            assert png_pixels(response.content).shape[0] == 1
    except (AssertionError, KeyError, TypeError, IndexError) as exc:
        return version, f"{call.name} on {version}: {str(exc)[:300]}"
    return version, None


class HealthPoller(threading.Thread):
    """Polls /healthz throughout, recording its worst wait: the event loop must never stall."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.waits, self.failures = url, [], []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            for _ in range(100_000):
                if self.stop.is_set():
                    return
                began = time.perf_counter()
                try:
                    status = client.get("/healthz").status_code
                except httpx.TransportError as exc:
                    self.failures.append(type(exc).__name__)
                else:
                    if status != 200:
                        self.failures.append(str(status))
                self.waits.append(time.perf_counter() - began)
                self.stop.wait(0.02)  # pacing between polls, not synchronisation


async def swap_under_load(url: str, repository: Path, new_version: Path) -> tuple[list[Record], dict]:
    """REQUESTS mixed requests at CONCURRENCY; a controller, sequenced by the count of answered
    requests, (a) loads a new version, (b) loads a tampered one, (c) unloads and reloads the model.
    Returns every request's record, and the control answers with the monotonic times they happened."""
    records: list[Record] = []
    control: dict = {}
    progress = asyncio.Condition()
    done = next_index = 0
    expected = {"2.0.0": Expected.of(repository / DEFAULT_MODEL / "2.0.0"), "2.1.0": Expected.of(new_version)}

    async def reached(count: int) -> None:
        async with progress:
            await asyncio.wait_for(progress.wait_for(lambda: done >= count), PHASE_TIMEOUT_S)

    limits = httpx.Limits(max_connections=CONCURRENCY + 2, max_keepalive_connections=CONCURRENCY + 2)
    async with (
        httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client,
        httpx.AsyncClient(base_url=url, timeout=60, headers=bearer()) as admin,
    ):

        async def worker() -> None:
            nonlocal done, next_index
            while next_index < REQUESTS:
                index, next_index = next_index, next_index + 1
                call = CALLS[index % len(CALLS)]
                path = ("" if (index // len(CALLS)) % 2 == 0 else PER_MODEL) + call.path
                started = time.monotonic()
                try:
                    response = await client.request(call.method, path, **REQUEST_BODIES[call.body])
                except httpx.TransportError as exc:
                    records.append(
                        Record(
                            index,
                            call.name,
                            path,
                            started,
                            time.monotonic(),
                            None,
                            problem=f"{type(exc).__name__}: {exc}",
                        )
                    )
                else:
                    version, problem = judge(call, response, expected)
                    records.append(
                        Record(
                            index, call.name, path, started, time.monotonic(), response.status_code, version, problem
                        )
                    )
                async with progress:
                    done += 1
                    progress.notify_all()

        async def step(key: str, method: str, path: str) -> httpx.Response:
            control[f"{key}_sent"] = time.monotonic()
            response = await admin.request(method, path)
            control[f"{key}_done"] = time.monotonic()
            control[f"{key}_at_request"] = done
            control[key] = (response.status_code, response.text)
            return response

        async def controller() -> None:
            try:
                await reached(200)  # (a) a new version, copied in and loaded
                await asyncio.to_thread(add_version, repository, new_version)
                await step("load_new", "POST", load_route(DEFAULT_MODEL))
                control["index_new"] = (await admin.post(INDEX)).json()

                await reached(600)  # (b) a tampered version: refused, 2.1.0 keeps serving
                tampered = await asyncio.to_thread(add_version, repository, new_version, None, "2.2.0")
                flip_a_byte(tampered / "decoder.onnx")
                await step("load_tampered", "POST", load_route(DEFAULT_MODEL))
                control["index_tampered"] = (await admin.post(INDEX)).json()

                await reached(1000)  # (c) unloaded: 404s, never 5xx; then loaded again
                await step("unload", "POST", unload_route(DEFAULT_MODEL))
                control["readyz_unloaded"] = (await admin.get("/readyz")).status_code
                control["index_unloaded"] = (await admin.post(INDEX)).json()
                await reached(control["unload_at_request"] + 150)
                await asyncio.to_thread(shutil.rmtree, tampered)  # else "latest" picks 2.2.0 again
                await step("reload", "POST", load_route(DEFAULT_MODEL))
                control["readyz_reloaded"] = (await admin.get("/readyz")).status_code
                control["index_reloaded"] = (await admin.post(INDEX)).json()
            except Exception as exc:  # recorded and asserted on; the load runs to its end either way
                control["controller_error"] = f"{type(exc).__name__}: {exc}"

        await asyncio.gather(controller(), *(worker() for _ in range(CONCURRENCY)))
    return records, control


def test_live_swaps_under_load(tmp_path, tiny_version):
    repository = tmp_path / "repo"
    add_version(repository, shipped_model_dir())
    server = repository_server(tmp_path, repository, VAE_ADMIN_TOKEN=ADMIN_TOKEN)
    poller = HealthPoller(server.url)
    try:
        server.wait()
        poller.start()
        records, control = asyncio.run(swap_under_load(server.url, repository, tiny_version))
    finally:
        poller.stop.set()
        poller.join(timeout=15)
        server.stop()
    log = server.log()
    assert "controller_error" not in control, control
    assert len(records) == REQUESTS

    # Every answer: no 5xx, no transport error, every 200 right for the version it names.
    statuses = {}
    for r in records:
        statuses[(r.call, r.status)] = statuses.get((r.call, r.status), 0) + 1
    assert not [r for r in records if r.status is None], [r.problem for r in records if r.status is None][:5]
    assert not [r for r in records if r.status >= 500], statuses
    problems = [f"#{r.index} {r.path}: {r.problem}" for r in records if r.problem]
    assert not problems, f"{len(problems)} wrong answers, e.g. {problems[:5]}; statuses {statuses}"

    # (a) the new version loads, and once the load has answered only it serves ("latest" keeps one).
    assert control["load_new"][0] == 200 and json.loads(control["load_new"][1]) == {}, control["load_new"]
    states = index_states(control["index_new"])
    assert states[(DEFAULT_MODEL, "2.1.0")] == ("READY", ""), states
    assert states.get((DEFAULT_MODEL, "2.0.0"), ("absent",))[0] != "READY", states
    # (b) the tampered version is refused with the reason, and 2.1.0 keeps serving.
    status, text = control["load_tampered"]
    assert status == 400 and "SHA-256" in json.loads(text)["error"], control["load_tampered"]
    states = index_states(control["index_tampered"])
    assert states[(DEFAULT_MODEL, "2.2.0")][0] == "UNAVAILABLE" and "SHA-256" in states[(DEFAULT_MODEL, "2.2.0")][1]
    assert states[(DEFAULT_MODEL, "2.1.0")] == ("READY", ""), states
    assert [line for line in log.splitlines() if "2.2.0" in line and "SHA-256" in line], log[-3000:]
    # (c) unloaded: not ready, 404 model_not_found; reloaded: ready again, on 2.1.0.
    assert control["unload"][0] == 200 and json.loads(control["unload"][1]) == {}, control["unload"]
    assert control["readyz_unloaded"] == 503
    assert index_states(control["index_unloaded"]).get((DEFAULT_MODEL, "2.1.0"), ("absent",))[0] != "READY"
    assert control["reload"][0] == 200 and json.loads(control["reload"][1]) == {}, control["reload"]
    assert control["readyz_reloaded"] == 200
    assert index_states(control["index_reloaded"])[(DEFAULT_MODEL, "2.1.0")] == ("READY", "")

    # Which version answered, by when the request ran relative to the control steps.
    for r in records:
        if r.status == 404:  # only while the model was unloaded
            assert r.finished > control["unload_sent"] and r.started < control["reload_done"], r
        if r.status == 200 and r.finished < control["load_new_sent"]:
            assert r.version == "2.0.0", r
        if r.status == 200 and r.started > control["load_new_done"]:
            assert r.version == "2.1.0", r
    unloaded = [r for r in records if control["unload_done"] < r.started and r.finished < control["reload_sent"]]
    assert unloaded and all(r.status == 404 for r in unloaded), statuses
    served_new = [r for r in records if r.started > control["load_new_done"] and r.status == 200]
    assert {r.path.startswith(PER_MODEL) for r in served_new} == {True, False}
    assert len([r for r in records if r.started > control["reload_done"]]) >= 100, control  # load after reload
    assert len([r for r in records if r.finished < control["load_new_sent"]]) >= 100, control  # and before (a)
    assert poller.waits and max(poller.waits) < 1.0 and not poller.failures, (max(poller.waits), poller.failures)


# -- two models at once, and the control routes' token --------------------------------------------


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, tiny_model_source):
    """A server on a repository of the shipped model and tiny-vae, with an admin token."""
    tmp = tmp_path_factory.mktemp("two-models")
    repository = tmp / "repo"
    add_version(repository, shipped_model_dir())
    add_version(repository, tiny_model_source)
    server = repository_server(tmp, repository, VAE_ADMIN_TOKEN=ADMIN_TOKEN)
    try:
        server.wait()
        wait_model_ready(server, TINY_MODEL)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client, repository
    finally:
        server.stop()


def names_in(document) -> set[str]:
    """Every string value under a "name" key, anywhere in a JSON document."""
    if isinstance(document, dict):
        found = {document["name"]} if isinstance(document.get("name"), str) else set()
        return found.union(*(names_in(v) for v in document.values()))
    if isinstance(document, list):
        return set().union(*(names_in(v) for v in document))
    return set()


def test_two_models_at_once_each_answer_as_its_graphs_do(two_models):
    client, repository = two_models
    shipped = Expected.of(repository / DEFAULT_MODEL / "2.0.0")
    tiny = Expected.of(repository / TINY_MODEL / "1.0.0")
    for path, want, ref in (
        (f"{PER_MODEL}/encode", shipped, (DEFAULT_MODEL, "2.0.0")),
        ("/encode", shipped, (DEFAULT_MODEL, "2.0.0")),  # the plain route: the default model
        (f"/v1/models/{TINY_MODEL}/encode", tiny, (TINY_MODEL, "1.0.0")),
        (f"/v1/models/{TINY_MODEL}/versions/1.0.0/encode", tiny, (TINY_MODEL, "1.0.0")),
    ):
        model, means = encode_means(client, path)
        assert (model["name"], model["version"]) == ref, (path, model)
        np.testing.assert_allclose(means, want.pair_means, **CLOSE, err_msg=path)
    assert np.abs(shipped.pair_means - tiny.pair_means).max() > 0.05  # so the checks above tell them apart

    decoded = client.post(f"/v1/models/{TINY_MODEL}/decode?pixels=true", json={"z": BODIES.latents.tolist()})
    assert decoded.status_code == 200 and decoded.json()["model"]["name"] == TINY_MODEL, decoded.text
    np.testing.assert_allclose([i["pixels"] for i in decoded.json()["images"]], tiny.decoded, rtol=1e-5, atol=1e-5)
    sample = client.get(f"/v1/models/{TINY_MODEL}/sample?n=2&seed=1")
    assert sample.status_code == 200 and sample.headers["x-model-name"] == TINY_MODEL
    assert sample.headers["x-model-version"] == "1.0.0"

    listing = client.get("/v1/models")
    assert listing.status_code == 200 and {DEFAULT_MODEL, TINY_MODEL} <= names_in(listing.json()), listing.text
    assert "2.0.0" in listing.text and "1.0.0" in listing.text
    card = client.get(f"/v1/models/{TINY_MODEL}")
    assert card.status_code == 200 and card.json()["model"] == {"name": TINY_MODEL, "version": "1.0.0"}
    assert card.json()["latent_dim"] == TINY_LATENT_DIM
    assert client.get(f"/v2/models/{TINY_MODEL}/ready").status_code == 200
    assert client.get(f"/v2/models/{TINY_MODEL}/versions/1.0.0/ready").status_code == 200

    for path in ("/v1/models/no-such-model/encode", f"/v1/models/{TINY_MODEL}/versions/9.9.9/encode"):
        missing = client.post(path, files=BODIES.multipart())
        assert missing.status_code == 404 and error_code(missing) == "model_not_found", (path, missing.text)
    missing = client.post("/v1/models/no-such-model/encode", files=BODIES.multipart())
    assert "no-such-model" in missing.json()["error"]["message"]


def test_control_routes_need_the_admin_token(two_models):
    client, _ = two_models
    for headers in (
        {},
        bearer("wrong-token"),
        {"authorization": f"Basic {ADMIN_TOKEN}"},
        {"authorization": ADMIN_TOKEN},
    ):
        for path in (INDEX, load_route(TINY_MODEL), unload_route(TINY_MODEL)):
            response = client.post(path, headers=headers)
            assert response.status_code == 401 and control_error(response), (path, headers, response.text)
    # The refused unload unloaded nothing.
    assert client.post(f"/v1/models/{TINY_MODEL}/encode", files=BODIES.multipart()).status_code == 200
    index = client.post(INDEX, headers=bearer())
    assert index.status_code == 200, index.text
    states = index_states(index.json())
    assert states[(DEFAULT_MODEL, "2.0.0")] == ("READY", "") and states[(TINY_MODEL, "1.0.0")] == ("READY", "")
    ready_only = client.post(INDEX, headers=bearer(), json={"ready": True})
    assert ready_only.status_code == 200 and all(e["state"] == "READY" for e in ready_only.json())


def test_control_routes_are_off_without_a_token(tmp_path):
    repository = tmp_path / "repo"
    add_version(repository, shipped_model_dir())
    server = repository_server(tmp_path, repository)
    try:
        server.wait()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for headers in ({}, bearer()):
                for path in (INDEX, load_route(DEFAULT_MODEL), unload_route(DEFAULT_MODEL)):
                    response = client.post(path, headers=headers)
                    assert response.status_code == 403 and control_error(response), (path, response.text)
            assert client.post("/encode", files=BODIES.multipart()).status_code == 200
    finally:
        server.stop()


# -- version policies, mislabelled directories, open control --------------------------------------


@pytest.fixture(scope="module")
def policies(tmp_path_factory, tiny_version, tiny_model_source):
    """fashion-mnist-vae serves "all" of 2.0.0 and 2.1.0, beside a directory 9.9.9 holding 2.1.0's
    manifest; tiny-vae serves a "specific" 1.0.0 of 1.0.0 and 1.1.0; other-name/1.0.0 holds
    tiny-vae's manifest. Control is open, with no token."""
    tmp = tmp_path_factory.mktemp("policies")
    repository = tmp / "repo"
    add_version(repository, shipped_model_dir())
    add_version(repository, tiny_version)
    shutil.copytree(tiny_version, repository / DEFAULT_MODEL / "9.9.9")
    write_version_policy(repository, DEFAULT_MODEL, {"all": {}})
    add_version(repository, tiny_model_source)
    add_version(repository, tiny_model_source, version="1.1.0")
    write_version_policy(repository, TINY_MODEL, {"specific": {"versions": ["1.0.0"]}})
    shutil.copytree(tiny_model_source, repository / "other-name" / "1.0.0")
    server = repository_server(tmp, repository, VAE_REPOSITORY_CONTROL="open")
    try:
        server.wait()
        wait_model_ready(server, DEFAULT_MODEL, "2.1.0")
        wait_model_ready(server, TINY_MODEL, "1.0.0")
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client, repository
    finally:
        server.stop()


def test_policy_all_serves_every_version_and_defaults_to_the_highest(policies):
    client, repository = policies
    for version, source in (
        ("2.0.0", repository / DEFAULT_MODEL / "2.0.0"),
        ("2.1.0", repository / DEFAULT_MODEL / "2.1.0"),
    ):
        model, means = encode_means(client, f"{PER_MODEL}/versions/{version}/encode")
        assert model == {"name": DEFAULT_MODEL, "version": version}
        np.testing.assert_allclose(means, Expected.of(source).pair_means, **CLOSE)
    model, _ = encode_means(client, "/encode")
    assert model == {"name": DEFAULT_MODEL, "version": "2.1.0"}


def test_policy_specific_serves_only_the_listed_versions(policies):
    client, _ = policies
    model, _ = encode_means(client, f"/v1/models/{TINY_MODEL}/encode")
    assert model == {"name": TINY_MODEL, "version": "1.0.0"}  # though 1.1.0 is on disk
    unlisted = client.post(f"/v1/models/{TINY_MODEL}/versions/1.1.0/encode", files=BODIES.multipart())
    assert unlisted.status_code == 404 and error_code(unlisted) == "model_not_found"
    states = index_states(client.post(INDEX).json())
    assert states.get((TINY_MODEL, "1.1.0"), ("absent",))[0] != "READY", states


def test_a_directory_unlike_its_manifest_is_unavailable_naming_both(policies):
    client, _ = policies
    index = client.post(INDEX)  # no token: control is open
    assert index.status_code == 200, index.text
    states = index_states(index.json())
    state, reason = states[(DEFAULT_MODEL, "9.9.9")]
    assert state == "UNAVAILABLE" and "9.9.9" in reason and "2.1.0" in reason, reason
    state, reason = states[("other-name", "1.0.0")]
    assert state == "UNAVAILABLE" and "other-name" in reason and TINY_MODEL in reason, reason
    assert states[(DEFAULT_MODEL, "2.0.0")] == ("READY", "") and states[(DEFAULT_MODEL, "2.1.0")] == ("READY", "")
    mislabelled = client.post(f"{PER_MODEL}/versions/9.9.9/encode", files=BODIES.multipart())
    assert mislabelled.status_code == 404 and error_code(mislabelled) == "model_not_found"


def test_open_control_needs_no_token(policies):
    client, _ = policies
    reload = client.post(load_route(TINY_MODEL))
    assert reload.status_code == 200 and reload.json() == {}, reload.text
    model, _ = encode_means(client, f"/v1/models/{TINY_MODEL}/encode")
    assert model == {"name": TINY_MODEL, "version": "1.0.0"}  # the reload kept to the policy


# -- the serving path never imports torch ---------------------------------------------------------

CHILD = """
import asyncio, io, json, os, pkgutil, importlib, sys
import httpx
from PIL import Image
import service
for module in pkgutil.walk_packages(service.__path__, "service."):
    importlib.import_module(module.name)
from service.app import create_app

async def main():
    app = create_app()
    image = io.BytesIO()
    Image.new("L", (28, 28), 128).save(image, format="PNG")
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://child") as client:
            for _ in range(1200):  # up to 60 s for the model to load
                if (await client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.05)
            response = await client.post("/encode", content=image.getvalue(), headers={"content-type": "image/png"})
    print(json.dumps({"status": response.status_code, "body": response.json(), "torch": "torch" in sys.modules}))

asyncio.run(main())
"""


def test_serving_a_request_never_imports_torch(tmp_path):
    repository = tmp_path / "repo"
    # A version that exists only in this repository, so the answer proves where it was served from.
    add_version(repository, shipped_model_dir(), DEFAULT_MODEL, "2.0.1")
    env = {k: v for k, v in os.environ.items() if k != "VAE_MODEL_DIR"}
    # gRPC on too (its own free port): it must not import torch either
    env.update(VAE_MODEL_REPOSITORY=str(repository), PYTHONPATH=str(REPO), VAE_GRPC_PORT=str(free_port()))
    child = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])
    assert result["status"] == 200 and result["body"]["model"] == {"name": DEFAULT_MODEL, "version": "2.0.1"}, result
    assert result["torch"] is False
