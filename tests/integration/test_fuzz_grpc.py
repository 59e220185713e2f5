"""Fuzz the open inference protocol over gRPC with hypothesis, as test_fuzz_v2.py fuzzes its REST routes:
random bytes (and mangled real messages) as each RPC's message, and random well-formed ModelInferRequests
on every v2 model and on names that are none: datatypes, shapes (huge and negative ones too), raw contents
of any length, typed contents in any field, parameters of every InferParameter kind, requested outputs.

Every answer is OK or a refusal with a clean code; never INTERNAL, UNKNOWN, or a hang (each call has a
deadline of a few seconds). The server counts no gRPC call as its own failure, and is ready at the end.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterator

import grpc
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.v2.models import MODELS
from tests.conftest import REPO

SERVICE = "/inference.GRPCInferenceService"
CALL_TIMEOUT_S = 10
CLEAN = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "FAILED_PRECONDITION"}
# The repository RPCs answer these too: the suite's server may have no admin token, or one not sent here.
CONTROL = CLEAN | {"PERMISSION_DENIED", "UNAUTHENTICATED"}
SERVER_FAILURES = {"INTERNAL", "UNKNOWN", "DATA_LOSS"}
FUZZ = settings(
    max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)
PNG = (REPO / "samples" / "shirt.png").read_bytes()

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64"]
DATATYPES += ["FP16", "FP32", "FP64", "BYTES"]
ITEMSIZE = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4}
ITEMSIZE |= {"INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8}
# Each contents field with values it can hold, the edges of the datatypes that travel in it among them.
FIELD_VALUES = {
    "bool_contents": [True, False],
    "int_contents": [0, 1, -1, 127, 128, -129, 255, 256, 2**15, 2**31 - 1, -(2**31)],
    "int64_contents": [0, 1, -1, 2**31, 2**63 - 1, -(2**63)],
    "uint_contents": [0, 1, 255, 256, 65535, 65536, 2**32 - 1],
    "uint64_contents": [0, 1, 2**32, 2**63, 2**64 - 1],
    "fp32_contents": [0.0, 0.5, 1.0, -1.0, 2.0, 1e38, math.nan, math.inf, -math.inf],
    "fp64_contents": [0.0, 0.5, 1.0, -1.0, 1e300, math.nan, math.inf, -math.inf, 5e-324],
    "bytes_contents": [b"", b"x", PNG, b"\x89PNG\r\n\x1a\n"],
}
FIELD_OF = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents"}
FIELD_OF |= {"INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents"}
FIELD_OF |= {"UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents"}
FIELD_OF |= {"FP64": "fp64_contents", "BYTES": "bytes_contents"}
# Elements a tensor built here holds at most, so that a generated message stays small.
MOST_ELEMENTS = 20_000
PROTOCOL_PARAMETERS = ["binary_data_output", "priority", "timeout", "sequence_id"]
# Raw bytes repeated into a tensor: zeros, 0.5 (FP32), all bits set (NaN, -1), +inf (FP32).
RAW_PATTERNS = [b"\0", b"\x00\x00\x00\x3f", b"\xff", b"\x00\x00\x80\x7f"]


# -- the server and what it serves ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def channel(grpc_target) -> Iterator[grpc.Channel]:
    """Answers of any size come back: a large one is the server's to refuse, not the client's."""
    with grpc.insecure_channel(grpc_target, options=[("grpc.max_receive_message_length", -1)]) as channel:
        yield channel


@pytest.fixture(scope="module")
def stub(channel) -> service_pb2_grpc.GRPCInferenceServiceStub:
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


@pytest.fixture(scope="module")
def served(http) -> tuple[str, str]:
    model = http.get("/v1/model").json()["model"]
    return model["name"], model["version"]


@pytest.fixture(scope="module")
def catalogue(http, served) -> dict[str, dict]:
    """Each v2 model's metadata (over REST: it lists the parameters too), by suffix."""
    name, _ = served
    return {suffix: http.get(f"/v2/models/{name}.{suffix}").json() for suffix in MODELS}


def server_failures(http: httpx.Client) -> dict[str, float]:
    text = http.get("/metrics").text
    counts = {}
    for labels, value in re.findall(r"^vae_requests_total\{(.*)\} (\S+)$", text, re.M):
        label = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if label.get("method") == "GRPC" and label.get("status") in SERVER_FAILURES:
            counts[f"{label['route']} {label['status']}"] = float(value)
    return counts


@pytest.fixture
def checked(http, stub, served):
    """Around a fuzz run: no gRPC call counted as a server failure; ready, and serving, afterwards."""
    before = server_failures(http)
    yield
    assert server_failures(http) == before
    assert stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=CALL_TIMEOUT_S).ready
    answer = stub.ModelInfer(
        service_pb2.ModelInferRequest(model_name=f"{served[0]}.sample", parameters={"n": _int(1), "seed": _int(0)}),
        timeout=CALL_TIMEOUT_S,
    )
    assert [o.name for o in answer.outputs] == ["images", "png", "z"]


def _int(value: int) -> service_pb2.InferParameter:
    return service_pb2.InferParameter(int64_param=value)


def send(call, message, allowed: set[str]) -> str:
    """One call within its deadline; its code's name, which must be in `allowed`."""
    try:
        call(message, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        code, details = error.code().name, error.details() or ""
        assert code in allowed, (code, details[:500])
        assert "Traceback" not in details and "site-packages" not in details, details[:500]
        return code
    return "OK"


# -- bytes that may not be a message --------------------------------------------------------------------------------


def valid_messages(model: str, catalogue: dict[str, dict]) -> list[bytes]:
    """Real requests to mangle: mangled, most stay parseable and reach the checks behind the parser."""
    tensor = service_pb2.ModelInferRequest.InferInputTensor
    image = [1, *catalogue["encoder"]["inputs"][0]["shape"][1:]]
    z = [1, *catalogue["decoder"]["inputs"][0]["shape"][1:]]
    typed_z = service_pb2.InferTensorContents(fp32_contents=[0.0] * math.prod(z))
    messages = [
        service_pb2.ModelInferRequest(
            model_name=f"{model}.encoder",
            inputs=[tensor(name="image", datatype="FP32", shape=image)],
            raw_input_contents=[b"\0" * 4 * math.prod(image)],
        ),
        service_pb2.ModelInferRequest(
            model_name=f"{model}.encode",
            inputs=[tensor(name="image_bytes", datatype="BYTES", shape=[1])],
            raw_input_contents=[len(PNG).to_bytes(4, "little") + PNG],
        ),
        service_pb2.ModelInferRequest(
            model_name=f"{model}.decoder", inputs=[tensor(name="z", datatype="FP32", shape=z, contents=typed_z)]
        ),
        service_pb2.ModelInferRequest(model_name=f"{model}.sample", parameters={"n": _int(2), "seed": _int(1)}),
    ]
    return [message.SerializeToString() for message in messages]


@st.composite
def mangled(draw, messages: list[bytes]) -> bytes:
    """A real message with bytes overwritten, inserted or cut off."""
    data = bytearray(draw(st.sampled_from(messages)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["overwrite", "insert", "truncate"]))
        if action == "overwrite":
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=12))
        else:
            del data[position:]
        if not data:
            break
    return bytes(data)


METHODS = ["ModelInfer", "ModelMetadata", "ModelReady", "ModelStatistics", "ServerMetadata", "ServerReady"]
METHODS += ["RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload"]


@pytest.mark.parametrize("method", METHODS)
def test_random_bytes_as_a_message_are_answered_cleanly(checked, channel, served, catalogue, method):
    call = channel.unary_unary(f"{SERVICE}/{method}", request_serializer=None, response_deserializer=None)
    allowed = CONTROL if method.startswith("Repository") else CLEAN
    codes: Counter = Counter()

    @given(data=st.one_of(st.binary(max_size=512), mangled(valid_messages(served[0], catalogue))))
    @FUZZ
    def run(data):
        codes[send(call, data, allowed)] += 1

    run()
    assert codes["INVALID_ARGUMENT"], codes  # some bytes were not a message, and said so


# -- well-formed messages with anything in them -------------------------------------------------------------------

DIMENSIONS = st.one_of(
    st.integers(0, 4),
    st.sampled_from([28, 32, 64, 65, 784, 2**31, 2**62, 2**63 - 1, -1, -(2**63)]),
)


@st.composite
def shapes(draw, spec: dict | None) -> list[int]:
    """The spec's shape with its variable dimension filled, or any list of dimensions."""
    kind = draw(st.sampled_from(["spec", "spec", "any", "deep"] if spec else ["any", "deep"]))
    if kind == "spec":
        rows = draw(st.sampled_from([0, 1, 2, 3, 65]))
        return [rows if d == -1 else d for d in spec["shape"]]
    if kind == "deep":
        return [1] * draw(st.sampled_from([9, 64, 65, 100]))
    return draw(st.lists(DIMENSIONS, max_size=6))


def elements_of(shape: list[int]) -> int | None:
    """How many elements a shape holds, when that is few enough to build here."""
    if any(d < 0 for d in shape) or math.prod(shape) > MOST_ELEMENTS:
        return None
    return math.prod(shape)


@st.composite
def tensors(
    draw, specs: list[dict], exact: bool
) -> tuple[service_pb2.ModelInferRequest.InferInputTensor, bytes | None]:
    """An input tensor and its raw contents (None: typed contents, or none). `exact`: one the model takes
    (name, datatype, shape and amount of data), with any values in it."""
    spec = draw(st.sampled_from(specs if exact else [*specs, None]))
    if exact:
        name, datatype = spec["name"], spec["datatype"]
        shape = [draw(st.integers(1, 3)) if d == -1 else d for d in spec["shape"]]
    else:
        names = [spec["name"]] * 4 + ["", "x"] if spec else ["image", "z", "image_bytes", ""]
        name = draw(st.sampled_from(names))
        datatype = draw(st.sampled_from([spec["datatype"]] * 6 + DATATYPES if spec else [*DATATYPES, "x"]))
        shape = draw(shapes(spec))
    message = service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape)
    count = elements_of(shape)
    modes = ["raw", "typed"] if exact else ["raw", "raw", "typed", "typed", "random-raw", "random-field", "none"]
    mode = draw(st.sampled_from(modes))
    if mode == "raw" and count is not None:
        if datatype == "BYTES":
            count = min(count, 70)  # past VAE_MAX_BATCH already; more would only make the message large
            items = draw(st.lists(st.sampled_from(FIELD_VALUES["bytes_contents"]), min_size=1, max_size=3))
            return message, b"".join(len(x).to_bytes(4, "little") + x for x in (items * count)[:count])
        size = count * ITEMSIZE.get(datatype, 4)
        pattern = draw(st.sampled_from(RAW_PATTERNS) | st.binary(min_size=1, max_size=8))
        return message, (pattern * (size // len(pattern) + 1))[:size]
    if mode == "typed" and count is not None and datatype in FIELD_OF:
        field = FIELD_OF[datatype]
        values = draw(st.lists(st.sampled_from(FIELD_VALUES[field]), min_size=1, max_size=3))
        message.contents.CopyFrom(service_pb2.InferTensorContents(**{field: (values * count)[:count]}))
        return message, None
    if mode == "random-field" or mode == "typed":
        field = draw(st.sampled_from(sorted(FIELD_VALUES)))
        values = draw(st.lists(st.sampled_from(FIELD_VALUES[field]), max_size=8))
        message.contents.CopyFrom(service_pb2.InferTensorContents(**{field: values}))
        return message, None
    if mode == "none":
        return message, None
    return message, draw(st.binary(max_size=64))


def parameters() -> st.SearchStrategy[service_pb2.InferParameter]:
    """An InferParameter of every kind, the edges of each among its values, or none set."""
    return st.one_of(
        st.builds(service_pb2.InferParameter, bool_param=st.booleans()),
        st.builds(
            service_pb2.InferParameter,
            int64_param=st.integers(0, 70) | st.sampled_from([-1, 65, 5001, 2**31, 2**63 - 1, -(2**63)]),
        ),
        st.builds(service_pb2.InferParameter, uint64_param=st.sampled_from([0, 1, 5, 64, 2**63, 2**64 - 1])),
        st.builds(
            service_pb2.InferParameter,
            double_param=st.sampled_from([0.0, 0.001, 0.05, 0.5, 1.0, 1.5, -1.0, 1e300, math.nan, math.inf])
            | st.floats(),
        ),
        st.builds(
            service_pb2.InferParameter,
            string_param=st.sampled_from(["", "true", "5", "importance", "prior", "iwae"]) | st.text(max_size=8),
        ),
        st.just(service_pb2.InferParameter()),
    )


def typed_parameter(kind: str) -> st.SearchStrategy[service_pb2.InferParameter]:
    """A value of the type a model's metadata gives for its parameter ("integer", "number|null", ...)."""
    kinds = {
        "integer": st.builds(service_pb2.InferParameter, int64_param=st.integers(0, 4)),
        "number": st.builds(service_pb2.InferParameter, double_param=st.sampled_from([0.01, 0.05, 0.5, 1.0])),
        "boolean": st.builds(service_pb2.InferParameter, bool_param=st.booleans()),
        "string": st.builds(service_pb2.InferParameter, string_param=st.sampled_from(["importance", "prior"])),
    }
    return st.one_of([kinds[k] for k in kind.split("|") if k in kinds] or [parameters()])


@st.composite
def infer_requests(draw, names: st.SearchStrategy[str], versions: list[str], metadata: dict | None):
    """A ModelInferRequest: half of those on a real v2 model are `exact` (inputs, parameters and outputs of
    the kinds the model takes, any values), so that they reach the model; the rest hold anything."""
    specs = metadata["inputs"] if metadata else []
    known = {p["name"]: p["type"] for p in (metadata or {}).get("parameters", [])}
    outputs = [o["name"] for o in metadata["outputs"]] if metadata else ["images"]
    exact = metadata is not None and draw(st.booleans())
    request = service_pb2.ModelInferRequest(
        model_name=draw(names),
        model_version=draw(st.sampled_from(versions) if exact else st.sampled_from(versions) | st.text(max_size=6)),
        id=draw(st.text(max_size=8)),
    )
    raws = []
    most = (1 if specs else 0) if exact else 3  # an exact request: one of the model's inputs (they are alternatives)
    for message, raw in draw(st.lists(tensors(specs, exact), min_size=min(most, int(exact)), max_size=most)):
        request.inputs.append(message)
        raws.append(raw)
    if any(raw is not None for raw in raws):  # all inputs raw, or some raw (a count that does not match)
        request.raw_input_contents.extend(raw for raw in raws if raw is not None)
    if exact:
        chosen = draw(st.lists(st.sampled_from(sorted(known)), unique=True)) if known else []
        for key in chosen:
            request.parameters[key].CopyFrom(draw(typed_parameter(known[key])))
        request.outputs.extend(
            service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=name)
            for name in draw(st.lists(st.sampled_from(outputs), unique=True, max_size=2))
        )
        return request
    if draw(st.integers(0, 9)) == 0:
        request.raw_input_contents.append(draw(st.binary(max_size=16)))
    keys = st.sampled_from([*known, *PROTOCOL_PARAMETERS, "bogus"])
    for key, value in draw(st.dictionaries(keys | st.text(max_size=4), parameters(), max_size=4)).items():
        request.parameters[key].CopyFrom(value)
    for name in draw(st.lists(st.sampled_from(outputs) | st.text(max_size=6), max_size=3)):
        output = request.outputs.add(name=name)
        if draw(st.booleans()):
            output.parameters["binary_data"].CopyFrom(draw(parameters()))
    return request


@pytest.mark.parametrize("suffix", sorted(MODELS))
def test_infer_on_each_v2_model_is_answered_cleanly(checked, stub, served, catalogue, suffix):
    name, version = served
    codes: Counter = Counter()

    @given(request=infer_requests(st.just(f"{name}.{suffix}"), ["", version], catalogue[suffix]))
    @settings(parent=FUZZ, max_examples=25)
    def run(request):
        codes[send(stub.ModelInfer, request, CLEAN)] += 1

    run()
    assert codes["INVALID_ARGUMENT"], codes  # the messages reached the model's own checks


def test_infer_on_any_name_is_answered_cleanly(checked, stub, served, catalogue):
    name, version = served
    real = [name, *(f"{name}.{suffix}" for suffix in MODELS)]
    names = st.sampled_from([*real, "", "nope", f"{name}.", ".encoder", f"{name}.encoder.encoder"])
    codes: Counter = Counter()

    @given(request=infer_requests(names | st.text(max_size=12), ["", version, "0", "9.9.9"], None))
    @FUZZ
    def run(request):
        codes[send(stub.ModelInfer, request, CLEAN)] += 1

    run()
    assert codes["NOT_FOUND"] and codes["INVALID_ARGUMENT"], codes


def test_metadata_readiness_and_statistics_of_any_name_are_answered_cleanly(checked, stub, served):
    name, version = served
    names = st.sampled_from(["", name, *(f"{name}.{suffix}" for suffix in MODELS), "nope"]) | st.text(max_size=12)
    versions = st.sampled_from(["", version, "9.9.9"]) | st.text(max_size=6)
    codes: Counter = Counter()

    @given(name=names, version=versions)
    @FUZZ
    def run(name, version):
        codes[send(stub.ModelMetadata, service_pb2.ModelMetadataRequest(name=name, version=version), CLEAN)] += 1
        codes[send(stub.ModelReady, service_pb2.ModelReadyRequest(name=name, version=version), CLEAN)] += 1
        statistics = service_pb2.ModelStatisticsRequest(name=name, version=version)
        codes[send(stub.ModelStatistics, statistics, CLEAN)] += 1

    run()
    assert codes["OK"] and codes["NOT_FOUND"], codes
