"""The open inference protocol over gRPC, spoken by the real `tritonclient.grpc`, against the same server
over REST with `tritonclient.http`: every answer equal. Health, server and model metadata (for every
entry of the repository index), inference on the graphs and the operations with raw and typed contents
and BYTES images, the repository RPCs behind the admin token, and the statistics both transports record.

The hostile and fuzzed messages are in test_grpc_hostile.py and test_fuzz_grpc.py."""

from __future__ import annotations

import json
import os
import re

import grpc
import httpx
import numpy as np
import pytest
from google.protobuf import json_format

from tests.integration.conftest import MODEL_DIR, MODEL_VERSION, Server, png

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

TOKEN = "grpc-test-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
REMOTE = os.environ.get("VAE_BASE_URL")


@pytest.fixture(scope="module")
def targets(tmp_path_factory, request):
    """(HTTP host:port, gRPC host:port) of one server: one started here with an admin token, or the
    remote one the suite runs against (VAE_BASE_URL and VAE_GRPC_TARGET)."""
    if REMOTE:
        yield REMOTE.split("://", 1)[1].rstrip("/"), request.getfixturevalue("grpc_target")
        return
    with Server(tmp_path_factory.mktemp("grpc"), VAE_ADMIN_TOKEN=TOKEN) as server:
        yield server.url.split("://", 1)[1], server.grpc_target


@pytest.fixture(scope="module")
def rest(targets):
    client = httpclient.InferenceServerClient(url=targets[0])
    yield client
    client.close()


@pytest.fixture(scope="module")
def rpc(targets):
    client = grpcclient.InferenceServerClient(url=targets[1])
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(targets):
    with grpc.insecure_channel(targets[1]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def model() -> str:
    return json.loads((MODEL_DIR / "manifest.json").read_text())["name"]


@pytest.fixture(scope="module")
def images(test_images) -> np.ndarray:
    return test_images[:3].astype(np.float32)


def as_json(message) -> dict:
    """A gRPC answer as the REST one reads: every field present, 64-bit integers as numbers."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def numbers(value):
    """JSON's 64-bit integers (which protobuf's JSON writes as strings) back to numbers, deeply."""
    if isinstance(value, dict):
        return {k: numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [numbers(v) for v in value]
    return int(value) if isinstance(value, str) and value.lstrip("-").isdigit() else value


def rest_metadata(rest, name: str) -> dict:
    """REST's model metadata less what the gRPC message has no field for (the description, the parameters)."""
    body = rest.get_model_metadata(name)
    return {k: v for k, v in body.items() if k not in ("description", "parameters")}


def inputs_of(module, tensors: dict[str, np.ndarray]) -> list:
    made = []
    for name, data in tensors.items():
        datatype = "BYTES" if data.dtype == object else "FP32"
        item = module.InferInput(name, list(data.shape), datatype)
        if module is httpclient:
            item.set_data_from_numpy(data, binary_data=True)
        else:
            item.set_data_from_numpy(data)
        made.append(item)
    return made


def both(rest, rpc, name: str, tensors: dict[str, np.ndarray], parameters: dict | None = None):
    """The same request over REST (binary tensors both ways) and gRPC (raw contents)."""
    over_rest = rest.infer(name, inputs_of(httpclient, tensors), parameters=parameters)
    over_grpc = rpc.infer(name, inputs_of(grpcclient, tensors), parameters=parameters)
    return over_rest, over_grpc


def assert_same(over_rest, over_grpc) -> None:
    http_body, grpc_body = over_rest.get_response(), over_grpc.get_response(as_json=True)
    assert grpc_body["model_name"] == http_body["model_name"]
    assert grpc_body["model_version"] == http_body["model_version"]
    names = [o["name"] for o in http_body["outputs"]]
    assert [o["name"] for o in grpc_body["outputs"]] == names
    for name in names:
        expected, got = over_rest.as_numpy(name), over_grpc.as_numpy(name)
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert got.tolist() == expected.tolist(), name  # exactly: bytes for BYTES, bits for floats
    parameters = {k: grpcclient_parameter(v) for k, v in over_grpc.get_response().parameters.items()}
    assert parameters == http_body.get("parameters", {})


def grpcclient_parameter(parameter):
    return getattr(parameter, parameter.WhichOneof("parameter_choice"))


def encoded(images: np.ndarray) -> np.ndarray:
    array = np.empty(len(images), dtype=object)
    array[:] = [png(x) for x in images]
    return array


# -- health and metadata -------------------------------------------------------------------------------


def test_health_and_server_metadata_are_the_rest_answers(rest, rpc):
    assert rpc.is_server_live() is rest.is_server_live() is True
    assert rpc.is_server_ready() is rest.is_server_ready() is True
    assert numbers(as_json(rpc.get_server_metadata())) == rest.get_server_metadata()
    assert "statistics" in rest.get_server_metadata()["extensions"]


def test_every_index_entry_answers_its_metadata_and_readiness_over_both(rest, rpc):
    if REMOTE:
        pytest.skip("the index needs the admin token of a server started here")
    index = rest.get_model_repository_index(headers=AUTH)
    over_grpc = as_json(rpc.get_model_repository_index(headers=AUTH))["models"]
    assert over_grpc == index and len(index) >= 8  # a repository model and its seven v2 models at least
    for name in sorted({row["name"] for row in index}):
        assert numbers(as_json(rpc.get_model_metadata(name))) == rest_metadata(rest, name), name
        assert rpc.is_model_ready(name) is rest.is_model_ready(name) is True, name
        assert rpc.is_model_ready(name, MODEL_VERSION) is rest.is_model_ready(name, MODEL_VERSION) is True
    assert rpc.is_model_ready("no-such-model") is rest.is_model_ready("no-such-model") is False


# -- inference ---------------------------------------------------------------------------------------------


def test_the_encoder_and_decoder_graphs_answer_alike(rest, rpc, model, images):
    assert_same(*both(rest, rpc, f"{model}.encoder", {"image": images}))
    z = np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)
    assert_same(*both(rest, rpc, f"{model}.decoder", {"z": z}))


@pytest.mark.parametrize(
    "suffix, parameters",
    [
        ("encode", {"sample": True, "seed": 11}),
        ("elbo", {"k": 8, "seed": 2}),
        ("reconstruct", None),
        ("anomaly", {"seed": 4}),
    ],
)
def test_the_operations_answer_alike_for_floats_and_for_encoded_images(rest, rpc, model, images, suffix, parameters):
    assert_same(*both(rest, rpc, f"{model}.{suffix}", {"image": images}, parameters))
    assert_same(*both(rest, rpc, f"{model}.{suffix}", {"image_bytes": encoded(images)}, parameters))


def test_decode_and_sample_answer_alike(rest, rpc, model):
    z = np.random.default_rng(8).standard_normal((2, 32)).astype(np.float32)
    assert_same(*both(rest, rpc, f"{model}.decode", {"z": z}))
    assert_same(*both(rest, rpc, f"{model}.sample", {}, {"n": 3, "seed": 5, "temperature": 0.8}))


def test_typed_contents_equal_raw_contents(stub, rpc, model, images):
    """tritonclient always sends raw contents; KServe's client and hand-written ones send typed ones."""
    request = service_pb2.ModelInferRequest(model_name=f"{model}.encoder", id="typed")
    tensor = request.inputs.add(name="image", datatype="FP32", shape=list(images.shape))
    tensor.contents.fp32_contents.extend(images.reshape(-1).tolist())
    typed = stub.ModelInfer(request, timeout=30)
    raw = rpc.infer(f"{model}.encoder", inputs_of(grpcclient, {"image": images}))
    assert typed.id == "typed" and [o.name for o in typed.outputs] == ["mean", "logvar"]
    for position, output in enumerate(typed.outputs):
        got = np.frombuffer(typed.raw_output_contents[position], np.float32).reshape(list(output.shape))
        assert got.tolist() == raw.as_numpy(output.name).tolist()


def test_requested_outputs_and_the_id_as_over_rest(rest, rpc, model, images):
    outputs = ["logvar"]
    over_rest = rest.infer(
        f"{model}.encoder",
        inputs_of(httpclient, {"image": images}),
        outputs=[httpclient.InferRequestedOutput(o, binary_data=True) for o in outputs],
        request_id="r-1",
    )
    over_grpc = rpc.infer(
        f"{model}.encoder",
        inputs_of(grpcclient, {"image": images}),
        outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
        request_id="r-1",
    )
    assert over_grpc.get_response().id == over_rest.get_response()["id"] == "r-1"
    assert_same(over_rest, over_grpc)


def test_errors_carry_the_rest_message_with_the_matching_code(rest, rpc, model, images):
    def message(call):
        with pytest.raises(InferenceServerException) as caught:
            call()
        return caught.value.status(), caught.value.message()

    doubles = {"image": images.astype(np.float64)}
    wrong_http = message(lambda: rest.infer(f"{model}.encoder", [rest_tensor("image", images.astype(np.float64))]))
    wrong_grpc = message(lambda: rpc.infer(f"{model}.encoder", [grpc_tensor("image", doubles["image"])]))
    assert wrong_http == ("400", "input 'image' must be FP32, not FP64")
    assert wrong_grpc == ("StatusCode.INVALID_ARGUMENT", wrong_http[1])
    missing_http = message(lambda: rest.infer(f"{model}.nothing", [rest_tensor("image", images)]))
    missing_grpc = message(lambda: rpc.infer(f"{model}.nothing", [grpc_tensor("image", images)]))
    assert missing_http[0] == "404" and missing_grpc == ("StatusCode.NOT_FOUND", missing_http[1])


def rest_tensor(name: str, data: np.ndarray):
    item = httpclient.InferInput(name, list(data.shape), "FP64" if data.dtype == np.float64 else "FP32")
    item.set_data_from_numpy(data, binary_data=True)
    return item


def grpc_tensor(name: str, data: np.ndarray):
    item = grpcclient.InferInput(name, list(data.shape), "FP64" if data.dtype == np.float64 else "FP32")
    item.set_data_from_numpy(data)
    return item


# -- statistics ---------------------------------------------------------------------------------------


def test_statistics_count_both_transports_and_read_alike(rest, rpc, model, images):
    name = f"{model}.decoder"
    before = rest.get_inference_statistics(name, MODEL_VERSION)["model_stats"][0]
    z = np.random.default_rng(1).standard_normal((2, 32)).astype(np.float32)
    both(rest, rpc, name, {"z": z})  # two successes of 2 rows each
    with pytest.raises(InferenceServerException):
        rpc.infer(name, [grpc_tensor("z", z[:, :5])])  # a failure: the wrong width
    over_rest = rest.get_inference_statistics(name, MODEL_VERSION)["model_stats"][0]
    over_grpc = numbers(as_json(rpc.get_inference_statistics(name, MODEL_VERSION)))["model_stats"][0]
    assert over_grpc == over_rest
    stats, old = over_rest["inference_stats"], before["inference_stats"]
    assert stats["success"]["count"] - old["success"]["count"] == 2
    assert stats["fail"]["count"] - old["fail"]["count"] == 1
    assert over_rest["inference_count"] - before["inference_count"] == 4
    assert over_rest["execution_count"] - before["execution_count"] == 2
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert stats[phase]["count"] - old[phase]["count"] == 2, phase
        assert stats[phase]["ns"] >= old[phase]["ns"], phase
    assert stats["compute_infer"]["ns"] > old["compute_infer"]["ns"]
    assert stats["success"]["ns"] - old["success"]["ns"] >= stats["compute_infer"]["ns"] - old["compute_infer"]["ns"]
    assert over_rest["last_inference"] >= before["last_inference"] and over_rest["last_inference"] > 0


def test_statistics_of_every_model_and_of_a_repository_model(rest, rpc, model):
    everything = rest.get_inference_statistics()["model_stats"]
    assert {(row["name"], row["version"]) for row in everything} >= {(f"{model}.encoder", MODEL_VERSION)}
    assert numbers(as_json(rpc.get_inference_statistics()))["model_stats"] == everything
    of_model = rest.get_inference_statistics(model)["model_stats"]
    assert {row["name"] for row in of_model} == {f"{model}.{suffix}" for suffix in v2_suffixes()}


def v2_suffixes() -> list[str]:
    from service.v2.models import MODELS

    return list(MODELS)


# -- the repository extension ----------------------------------------------------------------------------


def test_repository_control_needs_the_token_as_metadata(rpc, model):
    if REMOTE:
        pytest.skip("needs the admin token of a server started here")
    with pytest.raises(InferenceServerException) as caught:
        rpc.unload_model(model)
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED" and "Bearer" in caught.value.message()
    with pytest.raises(InferenceServerException) as caught:
        rpc.get_model_repository_index(headers={"authorization": "Bearer wrong"})
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"


def test_unload_and_load_over_grpc_as_over_rest(rest, rpc, model):
    """Last in the module: the model is unloaded (the server unready) and loaded again."""
    if REMOTE:
        pytest.skip("needs the admin token of a server started here")
    rpc.unload_model(model, headers=AUTH)
    assert rpc.is_model_ready(f"{model}.encoder") is rest.is_model_ready(f"{model}.encoder") is False
    assert rpc.is_server_ready() is rest.is_server_ready() is False
    index = rest.get_model_repository_index(headers=AUTH)
    assert as_json(rpc.get_model_repository_index(headers=AUTH))["models"] == index
    assert {row["state"] for row in index} == {"UNAVAILABLE"}
    with pytest.raises(InferenceServerException) as over_rest:
        rest.get_model_metadata(f"{model}.encoder")
    with pytest.raises(InferenceServerException) as over_grpc:
        rpc.get_model_metadata(f"{model}.encoder")
    assert over_rest.value.status() == "404" and "was unloaded" in over_rest.value.message()
    assert (over_grpc.value.status(), over_grpc.value.message()) == ("StatusCode.NOT_FOUND", over_rest.value.message())
    rpc.load_model(f"{model}.encoder", headers=AUTH)  # a v2 name loads its repository model
    assert rpc.is_server_ready() is rest.is_server_ready() is True
    assert numbers(as_json(rpc.get_model_metadata(f"{model}.encoder"))) == rest_metadata(rest, f"{model}.encoder")


def test_grpc_calls_are_counted_in_the_metrics_with_their_status_codes(targets, rpc):
    def count(method: str, code: str) -> float:
        text = httpx.get(f"http://{targets[0]}/metrics", timeout=10).text
        labels = f'method="GRPC",route="/inference.GRPCInferenceService/{method}",status="{code}"'
        pattern = rf"^vae_requests_total\{{{re.escape(labels)}\}} (\S+)$"
        found = re.search(pattern, text, re.M)
        return float(found.group(1)) if found else 0.0

    live, missing = count("ServerLive", "OK"), count("ModelMetadata", "NOT_FOUND")
    for _ in range(3):
        rpc.is_server_live()
    with pytest.raises(InferenceServerException):
        rpc.get_model_metadata("no-such-model.encoder")
    assert count("ServerLive", "OK") == live + 3
    assert count("ModelMetadata", "NOT_FOUND") == missing + 1
