"""Attacks on the surfaces beside the image routes: the open inference protocol, the model repository
and the explorer's routes, over real HTTP (raw sockets where the framing is the attack). Every test
runs inside a HealthGuard: /healthz never waits 1 s, the server counts no 5xx, and it is ready after.

The server serves a repository of its own (copies of the bundled default version and the Gaussian
model), with an admin token and a response cap small enough to test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

from tests.conftest import REPO
from tests.integration.conftest import MODEL_DIR, HealthGuard, newest_version, poll
from tests.integration.repository_fixtures import ADMIN_TOKEN, add_version, bearer, relabel, repository_server

pytestmark = pytest.mark.skipif(bool(os.environ.get("VAE_BASE_URL")), reason="starts servers of its own")

MODEL = "fashion-mnist-vae"
GAUSSIAN = "fashion-mnist-gaussian"
MAX_RESPONSE_BYTES = 1_000_000  # a JSON answer of 64 decoded images (about 1.25 MB) is over it, binary (200 kB) not
LATENT_DIM = 32


@pytest.fixture(scope="module")
def repository(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repository") / "models"
    add_version(root, MODEL_DIR)
    add_version(root, newest_version(REPO / "artifacts" / GAUSSIAN))
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, repository):
    server = repository_server(
        tmp_path_factory.mktemp("protocol"),
        repository,
        VAE_ADMIN_TOKEN=ADMIN_TOKEN,
        VAE_DEFAULT_MODEL=MODEL,
        VAE_MAX_RESPONSE_BYTES=str(MAX_RESPONSE_BYTES),
        VAE_MAX_IN_FLIGHT="512",
    )
    with server:
        yield server


@pytest.fixture
def guarded(server):
    with HealthGuard(server.url):
        yield server


@pytest.fixture(scope="module")
def version(server) -> str:
    return httpx.get(f"{server.url}/v1/model", timeout=10).json()["model"]["version"]


def v2_error(response: httpx.Response, status: int) -> str:
    body = response.json()
    assert response.status_code == status and set(body) == {"error"} and isinstance(body["error"], str), (
        response.status_code,
        response.text[:500],
    )
    return body["error"]


def binary_request(
    inputs: list[tuple[str, str, list[int], bytes]], outputs: list[dict] | None = None, **parameters
) -> tuple[bytes, dict[str, str]]:
    """A request in Triton's binary tensor extension: the JSON header, then each input's bytes."""
    header: dict = {
        "inputs": [
            {"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(blob)}}
            for name, datatype, shape, blob in inputs
        ]
    }
    if outputs is not None:
        header["outputs"] = outputs
    if parameters:
        header["parameters"] = parameters
    text = json.dumps(header).encode()
    return text + b"".join(blob for *_, blob in inputs), {"inference-header-content-length": str(len(text))}


def latents(rows: int, value: float = 0.0) -> np.ndarray:
    return np.full((rows, LATENT_DIM), value, dtype=np.float32)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def raw_exchange(server, request: bytes, body_chunks: list[bytes] = ()) -> tuple[int, dict[str, str], bytes]:
    """Send a request over a socket (then its body in pieces, as far as the server reads them) and read
    the one answer until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.settimeout(10)
        sock.sendall(request)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):  # refused mid-body: the answer is already there
            pass
        data = b""
        try:
            for _ in range(10_000):
                part = sock.recv(65536)
                if not part:
                    break
                data += part
        except ConnectionResetError:
            pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body[: int(headers.get("content-length", len(body)))]


# -- responses bounded by their requests ---------------------------------------------------------------


def test_an_output_named_many_times_is_refused_not_copied(guarded):
    """200 mentions of `logits` made a 19.7 kB request answer 40 MB."""
    body, headers = binary_request(
        [("z", "FP32", [64, LATENT_DIM], latents(64).tobytes())],
        outputs=[{"name": "logits", "parameters": {"binary_data": True}}] * 200,
    )
    response = httpx.post(f"{guarded.url}/v2/models/{MODEL}.decoder/infer", content=body, headers=headers, timeout=30)
    message = v2_error(response, 400)
    assert message == "output 'logits' is requested more than once; name each output once"
    assert len(response.content) < 200


def test_a_response_over_the_cap_is_refused_before_it_is_built_and_binary_fits(guarded):
    body, headers = binary_request([("z", "FP32", [64, LATENT_DIM], latents(64).tobytes())])
    url = f"{guarded.url}/v2/models/{MODEL}.decoder/infer"
    message = v2_error(httpx.post(url, content=body, headers=headers, timeout=30), 400)
    assert f"over the limit of {MAX_RESPONSE_BYTES} (VAE_MAX_RESPONSE_BYTES)" in message and "binary" in message
    body, headers = binary_request([("z", "FP32", [64, LATENT_DIM], latents(64).tobytes())], binary_data_output=True)
    answer = httpx.post(url, content=body, headers=headers, timeout=30)
    assert answer.status_code == 200
    length = int(answer.headers["inference-header-content-length"])
    [output] = json.loads(answer.content[:length])["outputs"]
    assert output["shape"] == [64, 1, 28, 28] and output["parameters"]["binary_data_size"] == 64 * 784 * 4


# -- tensors checked before numpy sees them ------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [[1] * 65, [0, 2**63], [0, 2**62, 2**62], [2**40], [1] * 9],
    ids=["rank-65", "zero-by-2^63", "zero-by-2^62-squared", "2^40", "rank-9"],
)
@pytest.mark.parametrize("encoding", ["json", "binary", "bytes-json", "bytes-binary"])
def test_a_malformed_tensor_shape_is_a_400_that_says_what_is_accepted(guarded, shape, encoding):
    url = f"{guarded.url}/v2/models/{MODEL}.encode/infer"
    if encoding == "json":
        response = httpx.post(
            url, json={"inputs": [{"name": "image", "datatype": "FP32", "shape": shape, "data": []}]}, timeout=30
        )
    elif encoding == "bytes-json":
        response = httpx.post(
            url, json={"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": shape, "data": []}]}, timeout=30
        )
    else:
        datatype, name = ("FP32", "image") if encoding == "binary" else ("BYTES", "image_bytes")
        body, headers = binary_request([(name, datatype, shape, b"")])
        response = httpx.post(url, content=body, headers=headers, timeout=30)
    message = v2_error(response, 400)
    assert ("at most 8 are accepted" in message) if len(shape) > 8 else ("than the request's" in message), message


# -- JSON whose structure, not its size, is the cost ----------------------------------------------------


def test_ten_megabytes_of_nested_empty_lists_are_refused_without_holding_the_loop(guarded):
    """1,165,062 repetitions of [[[[]]]] held the event loop for 2 s."""
    nested = b",".join([b"[[[[]]]]"] * 1_165_062)
    body = b'{"inputs":[{"name":"z","datatype":"FP32","shape":[0,32],"data":[' + nested + b"]}]}"
    began = time.monotonic()
    response = httpx.post(
        f"{guarded.url}/v2/models/{MODEL}.decoder/infer",
        content=body,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    message = v2_error(response, 400)
    assert "JSON lists, objects and keys; at most 100000" in message and "binary data" in message
    assert time.monotonic() - began < 2.0


def test_a_parameter_object_of_800000_keys_is_refused(guarded):
    keys = b",".join(b'"k%d":0' % i for i in range(800_000))  # 9.3 MB
    body = b'{"parameters":{' + keys + b'},"inputs":[]}'
    response = httpx.post(f"{guarded.url}/v2/models/{MODEL}.sample/infer", content=body, timeout=30)
    assert "at most 100000" in v2_error(response, 400)


def test_a_flat_json_tensor_of_ten_megabytes_is_parsed_off_the_loop(guarded):
    """The legitimate large case: flat numbers are cheap to parse, and the shape check answers."""
    data = b",".join([b"0.5"] * 2_500_000)
    body = b'{"inputs":[{"name":"z","datatype":"FP32","shape":[64,32],"data":[' + data + b"]}]}"
    response = httpx.post(f"{guarded.url}/v2/models/{MODEL}.decoder/infer", content=body, timeout=30)
    assert v2_error(response, 400) == "input 'z': shape [64, 32] holds 2048 elements but 'data' has more"


# -- latents that the decoder overflows on ---------------------------------------------------------------


@pytest.mark.parametrize("model", [MODEL, GAUSSIAN])
def test_finite_latents_that_decode_to_nan_are_a_422_on_every_surface(guarded, model):
    z = [[1e38] * LATENT_DIM]
    as_json = httpx.post(f"{guarded.url}/v1/models/{model}/decode?format=json&pixels=true", json={"z": z}, timeout=30)
    error = as_json.json()["error"]
    assert as_json.status_code == 422 and error["code"] == "non_finite_output", as_json.text
    assert error["message"].startswith("z row 0 decodes to non-finite values")
    large = 3e37 if model == MODEL else 1e38  # 3e37 made the Bernoulli model's PNG all black
    as_png = httpx.post(
        f"{guarded.url}/v1/models/{model}/decode?format=png", json={"z": [[large] * LATENT_DIM]}, timeout=30
    )
    assert as_png.status_code == 422 and as_png.json()["error"]["code"] == "non_finite_output"
    body, headers = binary_request([("z", "FP32", [1, LATENT_DIM], latents(1, 1e38).tobytes())])
    for kind in ("decode", "decoder"):
        response = httpx.post(
            f"{guarded.url}/v2/models/{model}.{kind}/infer", content=body, headers=headers, timeout=30
        )
        assert "non-finite" in v2_error(response, 400)
    fine = httpx.post(
        f"{guarded.url}/v1/models/{model}/decode?format=json&pixels=true", json={"z": [[2.0] * 32]}, timeout=30
    )
    assert fine.status_code == 200 and None not in fine.json()["images"][0]["pixels"][0][0]


def test_an_encoder_graph_given_huge_pixels_answers_a_400_not_nulls(guarded):
    pixels = np.full((1, 1, 28, 28), 3e38, dtype=np.float32)
    body, headers = binary_request([("image", "FP32", [1, 1, 28, 28], pixels.tobytes())])
    response = httpx.post(f"{guarded.url}/v2/models/{MODEL}.encoder/infer", content=body, headers=headers, timeout=30)
    assert "non-finite values in output" in v2_error(response, 400)


# -- framing ---------------------------------------------------------------------------------------------


def test_chunk_extensions_count_against_the_body_and_are_refused(guarded):
    """A chunked /decode carrying 100 MiB of `;x=aaa...` before one valid chunk was read and answered 200."""
    head = b"POST /decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    extension = [b"5;x="] + [b"a" * 65536] * 64  # 4 MiB, sent as far as the server reads it
    status, headers, body = raw_exchange(guarded, head, extension)
    assert status == 400 and headers["connection"] == "close"
    assert "too many bytes on framing" in json.loads(body)["error"]["message"]


def test_a_chunked_body_with_ordinary_framing_is_still_served(guarded):
    payload = json.dumps({"z": [[0.0] * LATENT_DIM]}).encode()
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(payload[i : i + 7]), payload[i : i + 7]) for i in range(0, len(payload), 7)
    )
    request = (
        b"POST /decode?format=json HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    status, _, body = raw_exchange(guarded, request)
    assert status == 200 and len(json.loads(body)["images"]) == 1


@pytest.mark.parametrize("coding", [b"identity, chunked", b"gzip, chunked", b"chunked\r\nTransfer-Encoding: chunked"])
def test_transfer_codings_other_than_chunked_are_refused(guarded, coding):
    request = (
        b"POST /decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: "
        + coding
        + b"\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    status, headers, body = raw_exchange(guarded, request)
    error = json.loads(body)["error"]
    assert status == 400 and headers["connection"] == "close" and error["code"] == "invalid_http"
    if b"," in coding:  # two headers httptools refuses itself, with its own message
        assert error["message"].startswith("Transfer-Encoding must be exactly 'chunked'")


# -- redirects, challenges, readiness ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ui", "/docs-assets", "/encode/", "/v2/"])
def test_no_answer_takes_its_location_from_the_host_header(guarded, path):
    response = httpx.get(f"{guarded.url}{path}", headers={"host": "evil.example"}, timeout=10)
    location = response.headers.get("location", "")
    assert "evil.example" not in location and not location.startswith(("http:", "https:", "//"))
    if path == "/ui":  # the explorer's one redirect: relative, so it resolves to /ui/ on whatever host served it
        assert response.status_code == 307 and location == "ui/"
        assert httpx.get(f"{guarded.url}/ui", follow_redirects=True, timeout=10).url.path == "/ui/"
    else:
        assert response.status_code == 404


def test_a_401_names_its_authentication_scheme(guarded):
    response = httpx.post(f"{guarded.url}/v2/repository/index", timeout=10)
    assert v2_error(response, 401).startswith("repository control needs the header Authorization: Bearer")
    assert response.headers["www-authenticate"] == 'Bearer realm="vae-service model repository"'


def test_readiness_after_an_unload_says_unloaded_and_a_load_brings_it_back(server):
    with (
        HealthGuard(server.url, unready_allowed=True),
        httpx.Client(base_url=server.url, headers=bearer(), timeout=60) as admin,
    ):
        assert admin.post(f"/v2/repository/models/{MODEL}/unload").json() == {}
        ready = admin.get("/readyz")
        assert (
            ready.status_code == 503
            and ready.json()["error"]["message"]
            == f"the model {MODEL} was unloaded; POST /v2/repository/models/{MODEL}/load serves it again"
        )
        assert v2_error(admin.get(f"/v2/models/{MODEL}/ready"), 400) == f"model '{MODEL}' is not ready (unloaded)"
        assert admin.post(f"/v2/repository/models/{MODEL}/load").json() == {}
        assert admin.get("/readyz").status_code == 200


def test_readiness_of_a_model_that_does_not_exist_says_so(guarded):
    message = v2_error(httpx.get(f"{guarded.url}/v2/models/nope/ready", timeout=10), 404)
    assert message.startswith("model 'nope' does not exist")
    unknown = httpx.post(f"{guarded.url}/v1/models/nope/encode", timeout=10).json()["error"]["message"]
    assert unknown == f"model 'nope' is not loaded; the models served are: {GAUSSIAN}, {MODEL} (GET /v1/models)"


# -- the repository on disk ----------------------------------------------------------------------------------


def test_a_symlink_out_of_the_repository_is_never_followed(guarded, repository):
    """One pointing at /etc made the index list about 830 of its subdirectories as versions."""
    links = [repository / "etc", repository / MODEL / "9.9.9"]
    for link in links:
        link.symlink_to("/etc", target_is_directory=True)
    try:
        with httpx.Client(base_url=guarded.url, headers=bearer(), timeout=60) as admin:
            rows = admin.post("/v2/repository/index").json()
            etc_rows = [r for r in rows if r["name"] == "etc"]
            assert [(r["version"], r["state"]) for r in etc_rows] == [("-", "UNAVAILABLE")]
            assert "symbolic link out of the model repository" in etc_rows[0]["reason"]
            load = admin.post(f"/v2/repository/models/{MODEL}/load")
            assert "9.9.9: 9.9.9 is a symbolic link out of the model repository" in v2_error(load, 400)
            assert len(rows) < 40  # nothing of /etc listed
    finally:
        for link in links:
            link.unlink()
    assert httpx.post(f"{guarded.url}/v2/repository/models/{MODEL}/load", headers=bearer(), timeout=60).json() == {}


def test_a_failed_load_answers_400_with_its_reason(guarded, repository, version):
    """A copied version directory whose manifest names another version: the load answered 200 {}."""
    copy = repository / MODEL / "99.0.0"
    shutil.copytree(repository / MODEL / version, copy)
    try:
        response = httpx.post(f"{guarded.url}/v2/repository/models/{MODEL}/load", headers=bearer(), timeout=60)
        message = v2_error(response, 400)
        assert message.startswith(
            f"failed to load {MODEL} 99.0.0: directory {MODEL}/99.0.0 holds the manifest of {MODEL} {version}"
        ) and message.endswith(f"(serving: {version})")
        relabel(copy, MODEL, "99.0.0")  # made consistent, it loads and serves
        loaded = httpx.post(f"{guarded.url}/v2/repository/models/{MODEL}/load", headers=bearer(), timeout=60)
        assert loaded.json() == {}
        assert httpx.get(f"{guarded.url}/v1/model", timeout=10).json()["model"]["version"] == "99.0.0"
    finally:
        shutil.rmtree(copy)
        httpx.post(f"{guarded.url}/v2/repository/models/{MODEL}/load", headers=bearer(), timeout=60)
    assert httpx.get(f"{guarded.url}/v1/model", timeout=10).json()["model"]["version"] == version


def test_tritonclient_walks_the_index_and_every_ready_entry_answers_its_metadata(guarded):
    client = triton.InferenceServerClient(guarded.url.removeprefix("http://"))
    try:
        index = client.get_model_repository_index(headers=bearer())
        ready = [entry["name"] for entry in index if entry["state"] == "READY"]
        assert {MODEL, f"{MODEL}.encoder", f"{MODEL}.decode", GAUSSIAN} <= set(ready)
        for name in ready:
            metadata = client.get_model_metadata(name)
            assert metadata["name"] == name and metadata["versions"], metadata
        assert client.get_model_metadata(MODEL)["platform"] == "vae-service_repository_model"
    finally:
        client.close()


# -- v2 parameters are typed ------------------------------------------------------------------------------


@pytest.mark.parametrize("parameters", [{"k": True}, {"k": "5"}, {"k": 5.0}, {"seed": False}])
def test_v2_parameters_are_not_coerced(guarded, parameters):
    pixels = np.zeros((1, 1, 28, 28), np.float32)
    body, headers = binary_request([("image", "FP32", [1, 1, 28, 28], pixels.tobytes())], **parameters)
    response = httpx.post(f"{guarded.url}/v2/models/{MODEL}.elbo/infer", content=body, headers=headers, timeout=30)
    [name] = parameters
    assert v2_error(response, 400).startswith(
        f"model '{MODEL}.elbo': parameter {name}: Input should be a valid integer"
    )


# -- beyond the list: what a client's text can make the server say or do ---------------------------------------


def test_error_messages_never_echo_a_clients_text_at_length(guarded):
    huge = "x" * 1_000_000
    cases = [
        ("outputs", {"inputs": [], "outputs": [{"name": huge}]}),
        ("parameters", {"inputs": [], "parameters": {huge: 1}}),
        ("input name", {"inputs": [{"name": huge, "datatype": "FP32", "shape": [1], "data": [0]}]}),
        ("datatype", {"inputs": [{"name": "z", "datatype": huge, "shape": [1], "data": [0]}]}),
    ]
    for what, request in cases:
        response = httpx.post(f"{guarded.url}/v2/models/{MODEL}.sample/infer", json=request, timeout=30)
        assert len(v2_error(response, 400)) < 1000, what
    long_name = httpx.get(f"{guarded.url}/v2/models/{'m' * 8000}.encode", timeout=10)
    assert len(v2_error(long_name, 404)) < 1000


def test_a_large_control_body_is_refused(guarded):
    body = b'{"ready": true, "pad": "' + b"a" * 100_000 + b'"}'
    response = httpx.post(f"{guarded.url}/v2/repository/index", content=body, headers=bearer(), timeout=10)
    assert "exceeds the limit of 65536 bytes" in v2_error(response, 413)


def test_a_million_zero_length_bytes_elements_do_not_hold_the_loop(guarded):
    """BYTES elements are split in Python: a body of 4-byte zero lengths is split off the event loop."""
    blob = struct.pack("<I", 0) * 2_500_000
    body, headers = binary_request([("image_bytes", "BYTES", [2_500_000], blob)])
    response = httpx.post(f"{guarded.url}/v2/models/{MODEL}.encode/infer", content=body, headers=headers, timeout=30)
    assert "rows; 1 to 64 are accepted" in v2_error(response, 400)


# -- a replaced version is freed when its last request ends -----------------------------------------------------

RELOADS, CLIENTS = 50, 8


def test_fifty_reloads_under_traffic_free_every_replaced_version(guarded, version):
    """Ten loads took RSS from 230 MB to 1,056 MB: the batcher's closure referred back to its version,
    so each replaced version waited for Python's cyclic collector. Now 50 loads under 8 clients."""
    pid = guarded.process.pid
    released = re.compile(rf"model {re.escape(MODEL)} \S+: released")
    released_before = len(released.findall(guarded.log()))
    stop, failures, answered = threading.Event(), [], [0]
    pixels = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    body, headers = binary_request([("image", "FP32", [1, 1, 28, 28], pixels.tobytes())])

    def traffic(i: int) -> None:
        with httpx.Client(base_url=guarded.url, timeout=60) as client:
            for n in range(100_000):  # bounded; stopped when the reloads are done
                if stop.is_set():
                    return
                if (i + n) % 2:
                    response = client.post(f"/v2/models/{MODEL}.encoder/infer", content=body, headers=headers)
                else:
                    response = client.post(f"/v2/models/{MODEL}.encode/infer", content=body, headers=headers)
                if response.status_code != 200 or "outputs" not in response.json():
                    failures.append((response.status_code, response.text[:200]))
                answered[0] += 1

    with httpx.Client(base_url=guarded.url, headers=bearer(), timeout=120) as admin:
        threads = [threading.Thread(target=traffic, args=(i,), daemon=True) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        try:
            rss = []
            for _ in range(RELOADS):
                response = admin.post(f"/v2/repository/models/{MODEL}/load")
                assert response.status_code == 200 and response.json() == {}, response.text
                rss.append(rss_mb(pid))
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
    assert not failures, failures[:5]
    assert answered[0] > RELOADS, answered  # the reloads really ran under traffic
    poll(lambda: len(released.findall(guarded.log())) - released_before >= RELOADS, "a released line per reload")
    assert len(released.findall(guarded.log())) - released_before == RELOADS
    after = rss_mb(pid)
    print(f"RSS after the first load {rss[0]:.0f} MB, after {RELOADS} loads {after:.0f} MB; {answered[0]} answered")
    assert after - rss[0] < 50, f"RSS {rss[0]:.0f} MB after the first load, {after:.0f} MB after {RELOADS}: {rss}"
    assert httpx.get(f"{guarded.url}/v1/model", timeout=10).json()["model"]["version"] == version
