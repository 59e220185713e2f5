"""The gRPC-against-HTTP benchmark's pure parts: the requests it builds (parsed back), how it reads and
checks the answers, a window's figures, the summary and the docs block. No vae-serve runs here: the one
load test drives a few requests against a fake HTTP server in this process."""

from __future__ import annotations

import asyncio
import json
import os

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from bench import grpc_http as bench
from bench import report
from bench.rounds import WindowFailed

METADATA = {
    "name": "fashion-mnist-vae.encoder",
    "versions": ["3.1.0"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "image", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
    "outputs": [
        {"name": "mean", "datatype": "FP32", "shape": [-1, 32]},
        {"name": "logvar", "datatype": "FP32", "shape": [-1, 32]},
    ],
}
ENCODER = bench.Encoder.from_metadata(METADATA)


def answer_outputs(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(size).astype(np.float32) for name, size in ENCODER.outputs}


def http_answer_body(outputs: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """A binary-tensor answer as the server writes it: the JSON header, then each output's bytes."""
    header = json.dumps(
        {
            "model_name": ENCODER.model,
            "model_version": "3.1.0",
            "outputs": [
                {"name": n, "datatype": "FP32", "shape": [1, v.size], "parameters": {"binary_data_size": v.nbytes}}
                for n, v in outputs.items()
            ],
        }
    ).encode()
    return header + b"".join(v.tobytes() for v in outputs.values()), len(header)


def test_the_encoder_is_read_from_the_servers_metadata():
    assert ENCODER.model == "fashion-mnist-vae.encoder" and ENCODER.input_name == "image"
    assert ENCODER.input_shape == (1, 1, 28, 28)  # the batch dimension, -1, is one image
    assert ENCODER.outputs == (("mean", 32), ("logvar", 32))
    half = {**METADATA, "inputs": [{**METADATA["inputs"][0], "datatype": "FP16"}]}
    with pytest.raises(ValueError, match="FP32 tensors only"):
        bench.Encoder.from_metadata(half)


def test_the_image_is_the_same_for_a_seed_and_in_the_pixel_range():
    pixels = bench.image(ENCODER)
    assert pixels.shape == (1, 1, 28, 28) and pixels.dtype == np.float32
    assert np.array_equal(pixels, bench.image(ENCODER)) and not np.array_equal(pixels, bench.image(ENCODER, 1))
    assert pixels.min() >= 0 and pixels.max() < 1


def test_the_http_request_parses_back_to_a_binary_tensor_request_of_the_image():
    pixels = bench.image(ENCODER)
    request = bench.http_request(ENCODER, pixels, "127.0.0.1:8000")
    head, body = request.split(b"\r\n\r\n", 1)
    request_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value for name, value in (line.split(": ", 1) for line in lines)}
    assert request_line == "POST /v2/models/fashion-mnist-vae.encoder/infer HTTP/1.1"
    assert headers["host"] == "127.0.0.1:8000" and int(headers["content-length"]) == len(body)
    assert "content-type" not in headers  # as tritonclient.http sends binary tensors
    length = int(headers["inference-header-content-length"])
    header = json.loads(body[:length])
    assert header == {
        "inputs": [
            {"name": "image", "shape": [1, 1, 28, 28], "datatype": "FP32", "parameters": {"binary_data_size": 3136}}
        ],
        "parameters": {"binary_data_output": True},
    }
    assert np.array_equal(np.frombuffer(body[length:], "<f4").reshape(pixels.shape), pixels)


def test_the_grpc_request_parses_back_to_a_model_infer_request_with_raw_contents():
    pixels = bench.image(ENCODER)
    message = service_pb2.ModelInferRequest.FromString(bench.grpc_request(ENCODER, pixels))
    assert message.model_name == "fashion-mnist-vae.encoder" and message.model_version == ""
    (tensor,) = message.inputs
    assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("image", "FP32", [1, 1, 28, 28])
    assert not tensor.HasField("contents") and not message.outputs  # every output, as raw contents
    (raw,) = message.raw_input_contents
    assert np.array_equal(np.frombuffer(raw, "<f4").reshape(pixels.shape), pixels)


def test_a_response_head_gives_the_status_and_lowercased_headers():
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 510\r\nInference-Header-Content-Length: 254\r\n\r\n"
    assert bench.parse_head(head) == (200, {"content-length": "510", "inference-header-content-length": "254"})
    assert bench.parse_head(b"HTTP/1.1 503 Service Unavailable\r\n\r\n") == (503, {})
    with pytest.raises(ValueError, match="not an HTTP/1.x response"):
        bench.parse_head(b"PRI * HTTP/2.0\r\n\r\n")


def test_each_transports_answer_gives_back_its_outputs():
    outputs = answer_outputs()
    body, header_length = http_answer_body(outputs)
    read = bench.http_outputs(body, header_length)
    assert list(read) == ["mean", "logvar"] and all(np.array_equal(read[n], outputs[n]) for n in outputs)
    message = service_pb2.ModelInferResponse(model_name=ENCODER.model)
    for name, values in outputs.items():
        message.outputs.add(name=name, datatype="FP32", shape=[1, values.size])
        message.raw_output_contents.append(values.tobytes())
    read = bench.grpc_outputs(message.SerializeToString())
    assert list(read) == ["mean", "logvar"] and all(np.array_equal(read[n], outputs[n]) for n in outputs)
    with pytest.raises(ValueError, match="not a ModelInferResponse"):
        bench.grpc_outputs(b"\xff\xff\xff")


def test_an_http_answer_whose_sizes_do_not_add_up_is_refused():
    body, header_length = http_answer_body(answer_outputs())
    with pytest.raises(ValueError, match="add up to 256 of"):
        bench.http_outputs(body + b"\0" * 4, header_length)


def test_outputs_other_than_the_reference_fail_the_window():
    expected = answer_outputs()
    bench.check_outputs({n: v.copy() for n, v in expected.items()}, expected, "here")
    with pytest.raises(WindowFailed, match="here: output 'logvar' differs"):
        bench.check_outputs({**expected, "logvar": expected["logvar"] + 1e-3}, expected, "here")
    with pytest.raises(WindowFailed, match="here: outputs"):
        bench.check_outputs({"mean": expected["mean"]}, expected, "here")
    with pytest.raises(WindowFailed, match="the metadata says"):
        bench.expected_outputs(ENCODER, {"mean": expected["mean"]}, "preflight")


def test_a_window_counts_the_requests_answered_inside_it():
    # (answered at, latency) in seconds: two before the window, one after it.
    completions = [(0.5, 9.0), (0.9, 9.0), (1.0, 0.010), (1.5, 0.020), (2.0, 0.030), (2.5, 0.040), (3.1, 9.0)]
    stats = bench.window_stats(completions, start=1.0, end=3.0)
    assert stats["requests"] == 4 and stats["rps"] == 2.0 and stats["duration_us"] == 2e6
    assert stats["p50_us"] == pytest.approx(25000) and stats["mean_us"] == pytest.approx(25000)
    assert stats["p99_us"] == pytest.approx(39700)
    with pytest.raises(WindowFailed, match="no request was answered"):
        bench.window_stats(completions, start=5.0, end=6.0)


def window(rps: float, p50_ms: float = 20.0) -> dict:
    return {
        "rps": rps,
        "p50_us": p50_ms * 1000,
        "p90_us": 30000.0,
        "p99_us": 40000.0,
        "mean_us": 21000.0,
        "client_cpu": 0.3,
        "server_cpu": 0.99,
    }


def test_the_ratio_is_taken_within_each_round_and_judged_on_its_median():
    windows = {
        bench.HTTP.key: [window(1000.0), window(500.0), window(1000.0)],
        bench.GRPC.key: [window(1100.0), window(600.0), window(900.0)],
    }
    summary = bench.summarise(windows)
    ratio = summary["ratios"][bench.RATIO]
    assert ratio["rounds"] == pytest.approx([1.1, 1.2, 0.9])
    assert ratio["median"] == pytest.approx(1.1)  # not median(gRPC) / median(HTTP) = 0.9
    assert summary["cells"]["http"]["rps"]["median"] == 1000.0 and summary["cells"]["grpc"]["rps"]["min"] == 600.0
    assert summary["targets_met"] == {"grpc raw >= 1.0x http binary (c32)": True}
    windows[bench.GRPC.key] = [window(900.0)] * 3
    assert summary["cells"]["grpc"]["windows"] != windows[bench.GRPC.key]
    assert bench.summarise(windows)["targets_met"] == {"grpc raw >= 1.0x http binary (c32)": False}


def test_the_order_alternates_between_rounds():
    assert [bench.round_order(i) for i in range(3)] == [["http", "grpc"], ["grpc", "http"], ["http", "grpc"]]


def results() -> dict:
    windows = {
        bench.HTTP.key: [window(1000.0, 30.0), window(1200.0, 26.0)],
        bench.GRPC.key: [window(1150.0, 27.0), window(1260.0, 25.0)],
    }
    return {
        "machine": {
            "cores": 2,
            "cpu": "AMD EPYC",
            "time": "2026-12-07T03:00:00Z",
            "server_cores": [0],
            "client_cores": [1],
        },
        "git": {"commit": "0123456789abcdef0123", "dirty": False},
        "command": "python -m bench.grpc_http",
        "model": {
            "name": "fashion-mnist-vae",
            "version": "3.1.0",
            "encoder_sha256": "6792d8d418c8" + "0" * 52,
            "graph": "fashion-mnist-vae.encoder",
        },
        "plan": {"rounds": 2, "window_s": 8.0, "warmup_s": 1.0, "concurrency": 32},
        "request": {"image_shape": [1, 1, 28, 28]},
        **bench.summarise(windows),
    }


def test_the_docs_block_shows_each_transports_medians_the_ratio_and_what_was_measured():
    text = bench.grpc_http_section(results())
    assert "| HTTP/1.1, binary tensors (`POST /v2/models/.../infer`) | 1100 (1000-1200) | 28.0 (26.0-30.0) |" in text
    assert "| gRPC `ModelInfer`, raw contents | 1205 (1150-1260) | 26.0 (25.0-27.0) | 40.0 (40.0-40.0) |" in text
    assert "| gRPC / HTTP requests/s at c=32 (>= 1.0x) | 1.10x (1.05-1.15x) | yes |" in text
    assert "`python -m bench.grpc_http`" in text and "`fashion-mnist-vae` 3.1.0 (encoder `6792d8d418c8`)" in text
    assert "commit `0123456789ab`" in text and "server pinned to core 0 and the client to 1" in text
    assert "| 0.30 | 0.99 |" in text  # the client's and the server's CPU


def test_bench_report_writes_the_block_from_the_recorded_results(tmp_path, monkeypatch):
    (tmp_path / "grpc_http.json").write_text(json.dumps(results()))
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    assert report.PAGES["grpc-http"] == "benchmarks.md"
    assert report.blocks()["grpc-http"] == bench.grpc_http_section(results())


def test_the_options_make_a_quick_run_that_records_nothing_and_refuse_impossible_plans(capsys):
    plan, args = bench.parse_args([])
    assert (plan.rounds, plan.window_s, plan.warmup_s, plan.concurrency) == (7, 8.0, 1.0, 32)
    assert args.results == bench.RESULTS / "grpc_http.json" and not args.no_pin
    plan, args = bench.parse_args(["--quick", "--seconds", "0.5"])
    assert (plan.rounds, plan.window_s, args.results) == (1, 0.5, None)
    with pytest.raises(SystemExit):
        bench.parse_args(["--rounds", "0"])
    assert "must be >= 1" in capsys.readouterr().err


def test_a_window_keeps_every_connection_busy_and_checks_every_answer():
    """32 connections to a fake server answering a fixed binary-tensor body: every answer is counted,
    and one answer of another status fails the window."""
    outputs = answer_outputs()
    body, header_length = http_answer_body(outputs)
    answer = (
        f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\ninference-header-content-length: {header_length}\r\n\r\n"
    ).encode() + body
    request = bench.http_request(ENCODER, bench.image(ENCODER), "127.0.0.1")
    answered, fail_at = [], []  # fail_at: the answer, counted from 1, that is a 500

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readexactly(len(request))
                answered.append(1)
                broken = len(answered) in fail_at
                writer.write(answer.replace(b" 200 OK", b" 500 Internal Server Error") if broken else answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def run(seconds: float) -> dict:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport = await bench.Transport.http("127.0.0.1", port, request, 32, header_length)
        try:
            return await bench.load(transport, outputs, len(body), 0.0, seconds, os.getpid())
        finally:
            await transport.close()
            server.close()

    stats = asyncio.run(run(0.05))
    assert 0 < stats["requests"] <= len(answered)
    assert stats["client_cpu"] >= 0 and stats["client_cpu_us_per_request"] > 0
    fail_at.append(len(answered) + 100)
    with pytest.raises(WindowFailed, match="HTTP 500"):
        asyncio.run(run(5.0))
