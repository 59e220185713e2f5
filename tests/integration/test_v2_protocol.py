"""The open inference protocol over real HTTP, spoken by the real `tritonclient.http` from PyPI.

The graph models must match onnxruntime run here on the same graphs; the operation models must
equal the service's own routes for the same images and seeds. KServe's Python client is not used:
the `kserve` package pulls kubernetes, grpcio, grpcio-tools, pandas and psutil<6 (434 MB) into the
test environment. What it needs beyond tritonclient (JSON health bodies, `model_name` in every response,
a body that carries `model_name` and `id`, Content-Type application/octet-stream) is checked on the
wire with httpx instead (`test_what_kserves_client_reads`)."""

from __future__ import annotations

import base64
import io
import os
import re

import httpx
import numpy as np
import pytest
from PIL import Image

from model.core.preprocess import PreprocessContract, bytes_to_array
from service.v2.models import MODELS
from tests.conftest import REPO
from tests.integration.conftest import MODEL_VERSION, png, serving

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "v2-test-token"
REMOTE = os.environ.get("VAE_BASE_URL")
EXACT = {"rtol": 0, "atol": 0}
GRAPH_TOLERANCE = {"rtol": 0, "atol": 1e-6}


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    """A server of its own (the repository index needs the admin token), or VAE_BASE_URL's."""
    with serving(tmp_path_factory.mktemp("v2"), VAE_ADMIN_TOKEN=TOKEN) as served:
        yield served


@pytest.fixture(scope="module")
def client(url):
    triton = httpclient.InferenceServerClient(url=url.split("://", 1)[1])
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def http(url):
    with httpx.Client(base_url=url, timeout=60) as session:
        yield session


@pytest.fixture(scope="module")
def model(http) -> str:
    return http.get("/v1/model").json()["model"]["name"]


@pytest.fixture(scope="module")
def images(test_images, local_model) -> np.ndarray:
    """Four test images as the service sees them after PNG encoding and the preprocessing contract."""
    contract = PreprocessContract.from_dict(local_model.manifest.preprocessing)
    return np.stack([bytes_to_array(png(x), contract) for x in test_images[:4]])  # (N, C, H, W)


def pngs_of(images: np.ndarray) -> list[bytes]:
    return [png(x) for x in images]


def tensor(name: str, data: np.ndarray, binary: bool = True):
    datatype = "BYTES" if data.dtype == object else {"float32": "FP32", "float64": "FP64"}[data.dtype.name]
    item = httpclient.InferInput(name, list(data.shape), datatype)
    item.set_data_from_numpy(data, binary_data=binary)
    return item


def bytes_tensor(blobs: list[bytes], binary: bool = True):
    array = np.empty(len(blobs), dtype=object)
    array[:] = blobs
    return tensor("image_bytes", array, binary)


def multipart(pngs: list[bytes]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("file", (f"{i}.png", blob, "image/png")) for i, blob in enumerate(pngs)]


def native(http: httpx.Client, model: str, path: str, **kwargs) -> dict:
    response = http.request(kwargs.pop("method", "POST"), f"/v1/models/{model}{path}", **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


# -- server -------------------------------------------------------------------------------------


def test_server_is_live_and_ready_and_names_its_extensions(client, http):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "vae-service" and metadata["version"]
    assert {"binary_tensor_data", "model_repository"} <= set(metadata["extensions"])


def test_what_kserves_client_reads(http, model, images):
    """KServe's InferenceRESTClient parses the health bodies and requires model_name in the response;
    it sends model_name and id in the body and Content-Type application/octet-stream with binary data."""
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    header = (
        f'{{"id": "kserve-1", "model_name": "{model}.encoder", "inputs": [{{"name": "image", '
        f'"shape": {list(images.shape)}, "datatype": "FP32", '
        f'"parameters": {{"binary_data_size": {images.nbytes}}}}}]}}'
    ).encode()
    response = http.post(
        f"/v2/models/{model}.encoder/infer",
        content=header + images.tobytes(),
        headers={"content-type": "application/octet-stream", "inference-header-content-length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    body = response.json()  # no binary output asked for: all JSON
    assert (body["model_name"], body["model_version"], body["id"]) == (f"{model}.encoder", MODEL_VERSION, "kserve-1")
    assert [o["name"] for o in body["outputs"]] == ["mean", "logvar"]
    assert all(len(o["data"]) == len(images) * o["shape"][1] for o in body["outputs"])


# -- the repository and the metadata --------------------------------------------------------------


def test_the_repository_index_lists_every_v2_model(client, model):
    if REMOTE:
        pytest.skip("the index needs the admin token of a server started here")
    index = client.get_model_repository_index(headers={"Authorization": f"Bearer {TOKEN}"})
    states = {(row["name"], row["version"]): row["state"] for row in index}
    assert states[(model, MODEL_VERSION)] == "READY"
    for suffix in MODELS:
        assert states[(f"{model}.{suffix}", MODEL_VERSION)] == "READY", index


@pytest.mark.parametrize("graph", ["encoder", "decoder"])
def test_graph_metadata_mirrors_the_onnx_graph(client, http, model, local_model, graph):
    session = getattr(local_model, graph)
    metadata = client.get_model_metadata(f"{model}.{graph}")
    served = next(m["versions"] for m in http.get("/v1/models").json()["models"] if m["name"] == model)
    assert (metadata["name"], metadata["versions"], metadata["platform"]) == (f"{model}.{graph}", served, "onnx_onnxv1")
    assert served[-1] == MODEL_VERSION  # the unversioned name is the default version, whose graphs these are
    for described, actual in ((metadata["inputs"], session.get_inputs()), (metadata["outputs"], session.get_outputs())):
        assert described == [
            {"name": a.name, "datatype": "FP32", "shape": [d if isinstance(d, int) else -1 for d in a.shape]}
            for a in actual
        ]
    assert client.get_model_metadata(f"{model}.{graph}", model_version=MODEL_VERSION) == metadata
    assert client.is_model_ready(f"{model}.{graph}") and client.is_model_ready(f"{model}.{graph}", MODEL_VERSION)


@pytest.mark.parametrize("suffix", [s for s in MODELS if s not in ("encoder", "decoder")])
def test_operation_metadata_describes_tensors_and_parameters(client, model, local_model, suffix):
    metadata = client.get_model_metadata(f"{model}.{suffix}")
    assert metadata["platform"] == "vae-service_operation" and metadata["description"]
    names = {t["name"]: t for t in metadata["inputs"] + metadata["outputs"]}
    if "image" in names:
        assert names["image"] == {"name": "image", "datatype": "FP32", "shape": [-1, *local_model.manifest.input.shape]}
        assert names["image_bytes"] == {"name": "image_bytes", "datatype": "BYTES", "shape": [-1]}
    if suffix in ("encode", "elbo", "sample"):
        assert {p["name"] for p in metadata["parameters"]} >= {"seed"}
    assert client.is_model_ready(f"{model}.{suffix}")


# -- the graphs, against onnxruntime here ----------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_encoder_and_decoder_match_onnxruntime(client, model, local_model, images, binary):
    outputs = [httpclient.InferRequestedOutput(name, binary_data=binary) for name in ("mean", "logvar")]
    result = client.infer(f"{model}.encoder", [tensor("image", images, binary)], outputs=outputs)
    mean, logvar = local_model.encoder.run(None, {"image": images})
    np.testing.assert_allclose(result.as_numpy("mean"), mean, **GRAPH_TOLERANCE)
    np.testing.assert_allclose(result.as_numpy("logvar"), logvar, **GRAPH_TOLERANCE)

    z = np.random.default_rng(3).standard_normal(mean.shape).astype(np.float32)
    result = client.infer(
        f"{model}.decoder",
        [tensor("z", z, binary)],
        outputs=[httpclient.InferRequestedOutput(local_model.decoder.get_outputs()[0].name, binary_data=binary)],
    )
    (expected,) = local_model.decoder.run(None, {"z": z})
    np.testing.assert_allclose(result.as_numpy(local_model.decoder.get_outputs()[0].name), expected, **GRAPH_TOLERANCE)


def test_requested_outputs_only_and_the_id_echoed(client, model, images):
    result = client.infer(
        f"{model}.encoder",
        [tensor("image", images)],
        request_id="req-7",
        outputs=[httpclient.InferRequestedOutput("logvar", binary_data=False)],
    )
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == f"{model}.encoder"
    assert [o["name"] for o in response["outputs"]] == ["logvar"] and "data" in response["outputs"][0]
    assert result.as_numpy("mean") is None and result.as_numpy("logvar").shape == (len(images), 32)


# -- the operations, against the service's own routes ----------------------------------------------


def test_encode_equals_the_encode_route_for_floats_and_for_encoded_images(client, http, model, images):
    expected = native(http, model, "/encode?sample=true&seed=7", files=multipart(pngs_of(images)))["results"]
    for given in (tensor("image", images), bytes_tensor(pngs_of(images))):
        result = client.infer(f"{model}.encode", [given], parameters={"sample": True, "seed": 7})
        for key in ("mean", "logvar", "z"):
            np.testing.assert_array_equal(result.as_numpy(key), np.array([r[key] for r in expected], np.float32))


def test_encoded_images_equal_the_float_path_after_preprocessing(client, model, images):
    as_floats = client.infer(f"{model}.encoder", [tensor("image", images)]).as_numpy("mean")
    as_bytes = client.infer(f"{model}.encode", [bytes_tensor(pngs_of(images))]).as_numpy("mean")
    np.testing.assert_array_equal(as_bytes, as_floats)


def test_elbo_equals_the_elbo_route(client, http, model, images):
    expected = native(http, model, "/elbo?k=5&seed=3&binarize_seed=2", files=multipart(pngs_of(images)))
    result = client.infer(
        f"{model}.elbo",
        [bytes_tensor(pngs_of(images), binary=True)],
        parameters={"k": 5, "seed": 3, "binarize_seed": 2},
    )
    for key in ("elbo", "reconstruction", "kl", "bits_per_dim", "log_likelihood", "log_likelihood_bits_per_dim"):
        np.testing.assert_allclose(result.as_numpy(key), [r[key] for r in expected["results"]], **EXACT)
    assert result.get_response()["parameters"]["data_space"] == expected["data_space"]


def test_anomaly_equals_the_anomaly_route(client, http, model, images):
    expected = native(http, model, "/anomaly?fpr=0.05&seed=4", files=multipart(pngs_of(images)))
    result = client.infer(
        f"{model}.anomaly", [bytes_tensor(pngs_of(images), binary=True)], parameters={"fpr": 0.05, "seed": 4}
    )
    for key in ("score", "percentile"):
        np.testing.assert_allclose(result.as_numpy(key), [r[key] for r in expected["results"]], **EXACT)
    assert list(result.as_numpy("is_anomaly")) == [r["is_anomaly"] for r in expected["results"]]
    for name in expected["results"][0]["statistics"]:
        np.testing.assert_allclose(
            result.as_numpy(f"statistic_{name}"), [r["statistics"][name] for r in expected["results"]], **EXACT
        )
    parameters = result.get_response()["parameters"]
    assert (parameters["threshold"], parameters["method"]) == (expected["threshold"], expected["method"])


def test_reconstruct_equals_the_reconstruct_route(client, http, model, images):
    expected = native(http, model, "/reconstruct?format=json", files=multipart(pngs_of(images)))["images"]
    result = client.infer(f"{model}.reconstruct", [tensor("image", images)])
    assert list(result.as_numpy("png")) == [base64.b64decode(r["png_base64"]) for r in expected]
    assert result.as_numpy("images").shape == images.shape


def test_decode_equals_the_decode_route(client, http, model):
    z = np.random.default_rng(5).standard_normal((3, 32)).astype(np.float32)
    expected = native(http, model, "/decode?pixels=true", json={"z": z.tolist()})["images"]
    result = client.infer(f"{model}.decode", [tensor("z", z, binary=False)])
    assert list(result.as_numpy("png")) == [base64.b64decode(r["png_base64"]) for r in expected]
    np.testing.assert_array_equal(result.as_numpy("images"), np.array([r["pixels"] for r in expected], np.float32))


def test_sample_equals_the_sample_route(client, http, model):
    expected = native(http, model, "/sample?n=3&seed=5&temperature=0.8&format=json", method="GET")
    result = client.infer(f"{model}.sample", [], parameters={"n": 3, "seed": 5, "temperature": 0.8})
    assert list(result.as_numpy("png")) == [base64.b64decode(s["png_base64"]) for s in expected["samples"]]
    np.testing.assert_array_equal(result.as_numpy("z"), np.array([s["z"] for s in expected["samples"]], np.float32))
    assert result.get_response()["parameters"] == {"seed": 5}


# -- errors and limits -------------------------------------------------------------------------------


def raised(call) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    return caught.value


def test_errors_reach_tritonclient_with_the_servers_message(client, model, images):
    wrong = raised(lambda: client.infer(f"{model}.encoder", [tensor("image", images.astype(np.float64))]))
    assert wrong.status() == "400" and wrong.message() == "input 'image' must be FP32, not FP64"
    missing = raised(lambda: client.infer(f"{model}.nothing", [tensor("image", images)]))
    assert missing.status() == "404" and f"no v2 model '{model}.nothing'" in missing.message()
    knob = raised(lambda: client.infer(f"{model}.elbo", [tensor("image", images)], parameters={"k": 0}))
    assert knob.status() == "400" and "parameter k" in knob.message()
    version = raised(lambda: client.get_model_metadata(f"{model}.encoder", model_version="9.9.9"))
    assert version.status() == "404" and "9.9.9" in version.message()


def test_a_shape_that_disagrees_with_the_data_is_a_400_naming_both(http, model, images):
    header = (
        f'{{"inputs": [{{"name": "image", "shape": [5, 1, 28, 28], "datatype": "FP32", '
        f'"parameters": {{"binary_data_size": {images.nbytes}}}}}]}}'
    ).encode()
    response = http.post(
        f"/v2/models/{model}.encoder/infer",
        content=header + images.tobytes(),
        headers={"inference-header-content-length": str(len(header))},
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": f"input 'image': shape [5, 1, 28, 28] of FP32 needs {5 * 784 * 4} bytes "
        f"but binary_data_size is {images.nbytes}"
    }


def test_the_row_limit_the_pixel_budget_and_the_upload_limit_apply(client, http, model):
    rows = raised(lambda: client.infer(f"{model}.encoder", [tensor("image", np.zeros((65, 1, 28, 28), np.float32))]))
    assert rows.status() == "400" and "VAE_MAX_BATCH" in rows.message()
    big = io.BytesIO()
    Image.new("L", (2100, 2100)).save(big, format="PNG")  # 4.4 million pixels, a few kB
    budget = raised(lambda: client.infer(f"{model}.encode", [bytes_tensor([big.getvalue()])]))
    assert budget.status() == "413" and "pixels" in budget.message()
    response = http.post(f"/v2/models/{model}.encoder/infer", content=b"x" * (10 * 1024 * 1024 + 1))
    assert response.status_code == 413 and isinstance(response.json()["error"], str)


# -- the docs' example -------------------------------------------------------------------------------


def test_the_docs_tritonclient_example_runs_and_prints_what_it_says(url, capsys):
    page = (REPO / "docs" / "v2-protocol.md").read_text()
    code = re.search(r"```python\n(.*?)```", page, re.S).group(1)
    assert '"localhost:8000"' in code
    exec(
        compile(code.replace('"localhost:8000"', repr(url.split("://", 1)[1])), "docs/v2-protocol.md", "exec"),
        {"__name__": "docs_example"},
    )
    printed = capsys.readouterr().out
    assert "mean (2, 32)" in printed and "elbo" in printed
