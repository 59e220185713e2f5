"""The encoder graph over gRPC with raw contents against HTTP with binary tensors, at c=32:
`python -m bench.grpc_http` -> bench/results/grpc_http.json, and `python -m bench.report` writes its
block in docs/benchmarks.md.

One product server (`vae-serve`, one worker, the default model) answers both transports: the open
inference protocol's ModelInfer on its gRPC port, the image in raw_input_contents and the answer in
raw_output_contents; and POST /v2/models/<model>.encoder/infer on its HTTP port with Triton's binary
tensor extension (a JSON header whose length is in Inference-Header-Content-Length, then the image's
bytes; binary_data_output true, so the outputs come back as bytes too). Every request carries the same
image: 1 x C x H x W FP32 from a fixed seed, its shape from the graph's metadata.

The load generators. bench/run.py drives HTTP with wrk, a C program whose cost per request is small
beside the server's; no gRPC generator of that kind is installed here (ghz is not packaged), and wrk
against a Python gRPC client would compare the clients as much as the server. So both transports are
driven by one design in one language: an asyncio client keeping exactly `--concurrency` requests in
flight (that many coroutines, each sending its next request when its last one is answered), with each
request's bytes built once before the rounds:

- gRPC: one grpc.aio channel (one HTTP/2 connection with the calls multiplexed on it, as
  tritonclient.grpc uses one), the method called with the serialized ModelInferRequest and no
  (de)serializers, so that no message is built or parsed in the loop;
- HTTP: `--concurrency` keep-alive HTTP/1.1 connections (HTTP/1.1 carries one request at a time on a
  connection) over asyncio streams, each writing the pre-built request and reading the answer's head and
  its Content-Length bytes. httpx would cost the client several times more per request.

The server is pinned to one core and the client to the others (`--no-pin` leaves both free): on two
cores an unpinned Python client takes whatever the server leaves, and how much differs by transport.
Each window records the client's and the server's CPU as a fraction of a core; a client near 1.0 would
be the bottleneck, and the ratio would then measure the clients, which the run prints as a warning.

Every answer is checked: status 200 over HTTP and OK over gRPC (anything else stops the run with exit
status 1 and writes no results), and its size equal to the preflight answer's; every CHECK_EVERY-th
answer is parsed in full and its outputs compared with the preflight's, and the preflight's outputs of
the two transports are compared with each other before the rounds.

Rounds: in each, one window per transport after a warm-up on the same connections, the order
alternating (HTTP first in the first round, gRPC first in the second, ...); a window counts the
requests answered inside it. Requests/s and latency are the medians of the rounds, the gRPC / HTTP
ratio is taken within each round and then summarised (bench/rounds.py). Issue 31's target: >= 1.0x.

    python -m bench.grpc_http                 # 7 rounds x 2 transports x (1 s warm-up + 8 s): about 3 minutes
    python -m bench.grpc_http --quick         # 1 round of 2 s windows, for development: records nothing
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
import os
import platform
import resource
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.plan import MODEL_DIR, RESULTS
from bench.provenance import git_state, served_model
from bench.rounds import Cell, Ratio, WindowFailed, round_ratios, summarise_cell, summarise_ratios
from bench.servers import Server, free_port

CONCURRENCY = 32
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
HTTP = Cell("product", "v2_encoder_http_binary", CONCURRENCY)
GRPC = Cell("product", "v2_encoder_grpc_raw", CONCURRENCY)
TRANSPORTS = {"http": HTTP, "grpc": GRPC}
RATIO = "grpc_raw_vs_http_binary_c32"
TARGET = 1.0  # issue 31: gRPC at least as fast as HTTP's binary tensors
CHECK_EVERY = 64  # every n-th answer is parsed in full and compared with the preflight's
CLIENT_BOUND = 0.9  # a client above this fraction of its core may be what limits the rate
SEED = 0


@dataclass(frozen=True)
class Encoder:
    """The encoder graph as the server describes it (GET /v2/models/<model>.encoder), for one image."""

    model: str  # the protocol's model name, <model>.encoder
    input_name: str
    input_shape: tuple[int, ...]  # the metadata's shape with the batch dimension set to 1
    outputs: tuple[tuple[str, int], ...]  # (name, FP32 elements for one image), in the metadata's order

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> Encoder:
        (tensor,) = metadata["inputs"]
        if tensor["datatype"] != "FP32" or any(o["datatype"] != "FP32" for o in metadata["outputs"]):
            raise ValueError(f"{metadata['name']}: this benchmark sends and checks FP32 tensors only")
        one = lambda shape: tuple(1 if size == -1 else size for size in shape)  # noqa: E731
        return cls(
            metadata["name"],
            tensor["name"],
            one(tensor["shape"]),
            tuple((o["name"], math.prod(one(o["shape"]))) for o in metadata["outputs"]),
        )


def image(encoder: Encoder, seed: int = SEED) -> np.ndarray:
    """The one image every request carries: uniform in [0, 1), as the preprocessing makes pixels."""
    return np.random.default_rng(seed).random(encoder.input_shape, dtype=np.float32)  # (1, C, H, W)


def http_request(encoder: Encoder, pixels: np.ndarray, host: str) -> bytes:
    """The whole HTTP/1.1 request, as tritonclient.http sends binary tensors (no Content-Type)."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": encoder.input_name,
                    "shape": list(pixels.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": pixels.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        },
        separators=(",", ":"),
    ).encode()
    body = header + pixels.astype("<f4").tobytes()
    head = (
        f"POST /v2/models/{encoder.model}/infer HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
        f"Inference-Header-Content-Length: {len(header)}\r\n\r\n"
    )
    return head.encode() + body


def grpc_request(encoder: Encoder, pixels: np.ndarray) -> bytes:
    """The serialized ModelInferRequest, as tritonclient.grpc builds it (its own messages)."""
    from tritonclient.grpc import service_pb2

    message = service_pb2.ModelInferRequest(model_name=encoder.model)
    message.inputs.add(name=encoder.input_name, datatype="FP32", shape=list(pixels.shape))
    message.raw_input_contents.append(pixels.astype("<f4").tobytes())
    return message.SerializeToString()


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    """An HTTP/1.1 response head (through its blank line) -> the status and the headers, names lowercased."""
    status_line, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x response: {status_line[:80]!r}")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), headers


def http_outputs(body: bytes, header_length: int) -> dict[str, np.ndarray]:
    """A binary-tensor answer's outputs: the JSON header's outputs, their bytes in that order after it."""
    header, offset, outputs = json.loads(body[:header_length]), header_length, {}
    for output in header["outputs"]:
        size = output["parameters"]["binary_data_size"]
        outputs[output["name"]] = np.frombuffer(body, "<f4", size // 4, offset)
        offset += size
    if offset != len(body):
        raise ValueError(f"the outputs' binary_data_size add up to {offset - header_length} of {len(body)} bytes")
    return outputs


def grpc_outputs(answer: bytes) -> dict[str, np.ndarray]:
    """A ModelInferResponse's outputs, from raw_output_contents; ValueError for anything else."""
    from google.protobuf.message import DecodeError
    from tritonclient.grpc import service_pb2

    try:
        message = service_pb2.ModelInferResponse.FromString(answer)
    except DecodeError as error:
        raise ValueError(f"not a ModelInferResponse: {error}") from None
    if len(message.raw_output_contents) != len(message.outputs):
        raise ValueError(f"{len(message.outputs)} outputs but {len(message.raw_output_contents)} raw contents")
    return {
        output.name: np.frombuffer(raw, "<f4")
        for output, raw in zip(message.outputs, message.raw_output_contents, strict=True)
    }


def check_outputs(outputs: dict[str, np.ndarray], expected: dict[str, np.ndarray], where: str) -> None:
    """Raise WindowFailed unless the outputs are the expected ones, name, size and values."""
    if list(outputs) != list(expected) or any(outputs[n].shape != expected[n].shape for n in expected):
        got = {name: value.size for name, value in outputs.items()}
        raise WindowFailed(f"{where}: outputs {got}, expected { ({n: v.size for n, v in expected.items()}) }")
    for name, values in expected.items():
        if not np.allclose(outputs[name], values, rtol=1e-5, atol=1e-6):
            raise WindowFailed(f"{where}: output {name!r} differs from the preflight's")


def expected_outputs(encoder: Encoder, outputs: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    """The preflight's outputs, once checked against the graph's metadata: the reference for the rounds."""
    shapes = {name: (size,) for name, size in encoder.outputs}
    got = {name: value.shape for name, value in outputs.items()}
    if got != shapes or not all(np.isfinite(v).all() for v in outputs.values()):
        raise WindowFailed(f"{where}: the preflight answer has outputs {got}, the metadata says {shapes}")
    return outputs


def window_stats(completions: Sequence[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    """The (answered at, latency) pairs, in seconds, answered inside [start, end] -> the window's figures,
    named as wrk's (bench/rounds.py summarises them)."""
    latencies = np.array([latency for done, latency in completions if start <= done <= end]) * 1e6  # us
    if not latencies.size:
        raise WindowFailed("no request was answered in the window (a longer window, or a server that answers)")
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    return {
        "requests": int(latencies.size),
        "duration_us": (end - start) * 1e6,
        "rps": latencies.size / (end - start),
        "p50_us": float(p50),
        "p90_us": float(p90),
        "p99_us": float(p99),
        "mean_us": float(latencies.mean()),
    }


def summarise(windows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per transport the median and range of its rounds; the gRPC / HTTP ratio within each round, then
    summarised; the target judged on the ratio's median."""
    ratios = summarise_ratios(round_ratios(windows, {RATIO: Ratio(GRPC, HTTP)}))
    return {
        "cells": {
            name: {**summarise_cell(windows[cell.key]), "windows": windows[cell.key]}
            for name, cell in TRANSPORTS.items()
        },
        "ratios": ratios,
        "targets_met": {f"grpc raw >= {TARGET}x http binary (c{CONCURRENCY})": ratios[RATIO]["median"] >= TARGET},
    }


def round_order(round_index: int) -> list[str]:
    """The transports in round `round_index` (from 0): HTTP first in even rounds, gRPC first in odd ones."""
    return ["http", "grpc"] if round_index % 2 == 0 else ["grpc", "http"]


class HttpConnection:
    """One keep-alive HTTP/1.1 connection sending the same request; call() answers the body of a 200
    whose Inference-Header-Content-Length is `header_length` (any, the first time, when None)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, header_length: int | None
    ) -> None:
        self.reader, self.writer, self.request, self.header_length = reader, writer, request, header_length

    @classmethod
    async def open(cls, host: str, port: int, request: bytes, header_length: int | None) -> HttpConnection:
        return cls(*await asyncio.open_connection(host, port), request, header_length)

    async def call(self) -> bytes:
        self.writer.write(self.request)
        try:
            status, headers = parse_head(await self.reader.readuntil(b"\r\n\r\n"))
            body = await self.reader.readexactly(int(headers["content-length"]))
        except (KeyError, ValueError) as error:
            raise WindowFailed(f"an HTTP answer that cannot be read: {type(error).__name__} {error}") from None
        if status != 200 or headers.get("connection", "").lower() == "close":
            raise WindowFailed(f"HTTP {status} (connection {headers.get('connection', 'keep-alive')}): {body[:300]!r}")
        header_length = int(headers.get("inference-header-content-length", -1))
        if header_length < 0 or header_length != (self.header_length or header_length):
            raise WindowFailed(f"Inference-Header-Content-Length {header_length}, expected {self.header_length}")
        self.header_length = header_length
        return body

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


class Transport:
    """One transport's open connections: `calls` (one per coroutine that keeps a request in flight), how
    an answer's outputs are read, and close()."""

    def __init__(
        self,
        calls: list[Callable[[], Awaitable[bytes]]],
        outputs: Callable[[bytes], dict[str, np.ndarray]],
        close: Callable[[], Awaitable[None]],
    ) -> None:
        self.calls, self.outputs, self.close = calls, outputs, close

    @classmethod
    async def http(
        cls, host: str, port: int, request: bytes, concurrency: int, header_length: int | None = None
    ) -> Transport:
        connections = [await HttpConnection.open(host, port, request, header_length) for _ in range(concurrency)]

        async def close() -> None:
            for connection in connections:
                await connection.close()

        def outputs(body: bytes) -> dict[str, np.ndarray]:
            return http_outputs(body, connections[0].header_length or 0)

        return cls([c.call for c in connections], outputs, close)

    @classmethod
    async def grpc(cls, target: str, request: bytes, concurrency: int) -> Transport:
        import grpc

        channel = grpc.aio.insecure_channel(target)
        await asyncio.wait_for(channel.channel_ready(), 30)
        method = channel.unary_unary(MODEL_INFER)  # no (de)serializers: bytes in, bytes out

        async def call() -> bytes:
            try:
                return await method(request, timeout=30)
            except grpc.aio.AioRpcError as error:
                raise WindowFailed(f"gRPC {error.code().name}: {error.details()}") from None

        return cls([call] * concurrency, grpc_outputs, channel.close)


async def load(
    transport: Transport, expected: dict[str, np.ndarray], size: int, warmup_s: float, seconds: float, server_pid: int
) -> dict[str, Any]:
    """Every call kept busy from now until the window's end: `warmup_s`, then the measured `seconds`.
    Every answer's size is checked, and every CHECK_EVERY-th answer's outputs."""
    completions: list[tuple[float, float]] = []
    start = time.perf_counter() + warmup_s
    end = start + seconds

    async def keep_busy(call: Callable[[], Awaitable[bytes]]) -> None:
        while (began := time.perf_counter()) < end:
            answer = await call()
            done = time.perf_counter()
            completions.append((done, done - began))
            if len(answer) != size:
                raise WindowFailed(f"an answer of {len(answer)} bytes where the preflight's had {size}")
            if len(completions) % CHECK_EVERY == 0:
                try:
                    outputs = transport.outputs(answer)
                except ValueError as error:
                    raise WindowFailed(f"answer {len(completions)} cannot be read: {error}") from None
                check_outputs(outputs, expected, f"answer {len(completions)}")

    async def cpu_in_window() -> dict[str, float]:
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        before = _cpu_seconds(server_pid)
        await asyncio.sleep(max(0.0, end - time.perf_counter()))
        after = _cpu_seconds(server_pid)
        return {f"{side}_cpu": (after[side] - before[side]) / seconds for side in ("client", "server")}

    tasks = [asyncio.ensure_future(keep_busy(call)) for call in transport.calls]
    measured = asyncio.ensure_future(cpu_in_window())
    try:
        await asyncio.gather(*tasks, measured)
    finally:  # one failed call ends the window: the others stop with it
        for task in (*tasks, measured):
            task.cancel()
    cpu = measured.result()
    stats = window_stats(completions, start, end)
    return {**stats, **cpu, "client_cpu_us_per_request": cpu["client_cpu"] * seconds / stats["requests"] * 1e6}


def _cpu_seconds(server_pid: int) -> dict[str, float]:
    """CPU seconds (user + system, all threads) of this process, the client, and of the server."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    fields = Path(f"/proc/{server_pid}/stat").read_text().rsplit(") ", 1)[1].split()
    server = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return {"client": usage.ru_utime + usage.ru_stime, "server": server}


@dataclass(frozen=True)
class Plan:
    rounds: int = 7  # as the peer comparisons of docs/benchmarks.md: the ratio swings +-10% between rounds here
    window_s: float = 8.0
    warmup_s: float = 1.0
    concurrency: int = CONCURRENCY


class Bench:
    """The running server, what each transport sends, and the answers the preflight set as the reference."""

    def __init__(self, server: Server, grpc_port: int, encoder: Encoder) -> None:
        self.server, self.grpc_port, self.encoder = server, grpc_port, encoder
        pixels = image(encoder)
        self.requests = {
            "http": http_request(encoder, pixels, f"127.0.0.1:{server.port}"),
            "grpc": grpc_request(encoder, pixels),
        }
        self.expected: dict[str, dict[str, np.ndarray]] = {}
        self.sizes: dict[str, int] = {}
        self.header_length: int | None = None  # of the HTTP answers, from the preflight

    async def open(self, name: str, concurrency: int) -> Transport:
        if name == "http":
            return await Transport.http(
                "127.0.0.1", self.server.port, self.requests[name], concurrency, self.header_length
            )
        return await Transport.grpc(f"127.0.0.1:{self.grpc_port}", self.requests[name], concurrency)

    async def preflight(self) -> None:
        """One request per transport, parsed in full: the reference answers, equal across the transports."""
        for name in TRANSPORTS:
            transport = await self.open(name, 1)
            try:
                answer = await transport.calls[0]()
                outputs = expected_outputs(self.encoder, transport.outputs(answer), f"{name} preflight")
            finally:
                await transport.close()
            self.expected[name], self.sizes[name] = outputs, len(answer)
            if name == "http":
                self.header_length = len(answer) - sum(4 * size for _, size in self.encoder.outputs)
        check_outputs(self.expected["grpc"], self.expected["http"], "gRPC's preflight answer against HTTP's")

    async def window(self, name: str, plan: Plan) -> dict[str, Any]:
        """One measured window; WindowFailed for any failed request, a dropped connection among them."""
        try:
            transport = await self.open(name, plan.concurrency)
            try:
                return await load(
                    transport,
                    self.expected[name],
                    self.sizes[name],
                    plan.warmup_s,
                    plan.window_s,
                    self.server.process.pid,
                )
            finally:
                await transport.close()
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
            raise WindowFailed(f"{type(error).__name__}: {error}") from None

    async def rounds(self, plan: Plan) -> tuple[dict[str, list[dict[str, Any]]], list[list[str]]]:
        await self.preflight()
        windows: dict[str, list[dict[str, Any]]] = {cell.key: [] for cell in TRANSPORTS.values()}
        orders = []
        for index in range(plan.rounds):
            orders.append(round_order(index))
            for name in orders[-1]:
                try:
                    stats = await self.window(name, plan)
                except WindowFailed as failure:
                    raise WindowFailed(f"{TRANSPORTS[name].key}, round {index + 1}: {failure}") from None
                windows[TRANSPORTS[name].key].append(stats)
                print(
                    f"round {index + 1}/{plan.rounds} {name}: {stats['rps']:.0f} requests/s, p50 "
                    f"{stats['p50_us'] / 1000:.1f} ms, p99 {stats['p99_us'] / 1000:.1f} ms; CPU: client "
                    f"{stats['client_cpu']:.2f} ({stats['client_cpu_us_per_request']:.0f} us a request), server "
                    f"{stats['server_cpu']:.2f}",
                    flush=True,
                )
        return windows, orders


def cores(pin: bool) -> tuple[set[int], set[int]] | None:
    """(the server's cores, the client's): the first core, the rest; None when not pinned."""
    available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin or len(available) < 2:
        return None
    return {available[0]}, set(available[1:])


def start_server(pinned: tuple[set[int], set[int]] | None) -> tuple[Server, int]:
    """The product on free HTTP and gRPC ports, the default model, on the server's cores: it inherits the
    affinity of the thread that starts it, which then moves to the client's."""
    grpc_port = free_port()
    if pinned is not None:
        os.sched_setaffinity(0, pinned[0])
    try:
        server = Server("product", MODEL_DIR, env={"VAE_GRPC_PORT": str(grpc_port)})
    finally:
        if pinned is not None:
            os.sched_setaffinity(0, pinned[1])
    return server, grpc_port


def machine_record(pinned: tuple[set[int], set[int]] | None) -> dict[str, Any]:
    import google.protobuf
    import grpc

    from bench.run import machine

    record = machine() if shutil.which("wrk") else {"cores": os.cpu_count(), "python": platform.python_version()}
    record.pop("wrk", None)  # bench.run's load generator, not this one's
    return {
        **record,
        "grpcio": grpc.__version__,
        "protobuf": google.protobuf.__version__,
        "server_cores": sorted(pinned[0]) if pinned else "not pinned",
        "client_cores": sorted(pinned[1]) if pinned else "not pinned",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def measure(plan: Plan, pin: bool, command: str) -> dict[str, Any]:
    pinned = cores(pin)
    results: dict[str, Any] = {"machine": machine_record(pinned), "git": git_state(), "command": command}
    load_before = os.getloadavg()
    server, grpc_port = start_server(pinned)
    try:
        server.wait_ready()
        model = served_model(server.url)
        metadata = httpx.get(f"{server.url}/v2/models/{model['name']}.encoder", timeout=10).raise_for_status()
        bench = Bench(server, grpc_port, Encoder.from_metadata(metadata.json()))
        began = time.monotonic()
        windows, orders = asyncio.run(bench.rounds(plan))
        results["rounds_wall_s"] = time.monotonic() - began
    finally:
        server.stop()
    results["machine"]["load_average_1_5_15_min"] = {"before": load_before, "after": os.getloadavg()}
    encoder = bench.encoder
    return {
        **results,
        "model": {**model, "graph": encoder.model},
        "plan": {
            **dataclasses.asdict(plan),
            "order": "alternating, HTTP first in the first round",
            "check_every": CHECK_EVERY,
        },
        "request": {
            "image_shape": list(encoder.input_shape),
            "image_seed": SEED,
            "outputs": dict(encoder.outputs),
            "http_request_bytes": len(bench.requests["http"]),
            "grpc_request_bytes": len(bench.requests["grpc"]),
            "http_answer_body_bytes": bench.sizes["http"],
            "grpc_answer_bytes": bench.sizes["grpc"],
        },
        "order": orders,
        **summarise(windows),
    }


def grpc_http_section(results: dict[str, Any]) -> str:
    """The docs block (bench/report.py writes it into docs/benchmarks.md)."""
    from bench.report import _spread

    m, git, model, plan, cells = (results[k] for k in ("machine", "git", "model", "plan", "cells"))
    tree = "" if git.get("dirty") is False else " (with uncommitted changes)"
    pinning = (
        f"the server pinned to core {', '.join(map(str, m['server_cores']))} and the client to "
        f"{', '.join(map(str, m['client_cores']))}"
        if isinstance(m.get("server_cores"), list)
        else "server and client not pinned"
    )
    lines = [
        f"Measured by `{results['command'].strip()}` on {m['cores']} cores ({m.get('cpu', 'cpu not recorded')}), "
        f"{m['time']}, at commit `{(git.get('commit') or 'unknown')[:12]}`{tree}, on `{model['graph']}` of model "
        f"`{model['name']}` {model['version']} (encoder `{model['encoder_sha256'][:12]}`), one "
        f"{'x'.join(map(str, results['request']['image_shape']))} FP32 image a request, c={plan['concurrency']}, "
        f"{pinning}. {plan['rounds']} rounds, each a {plan['window_s']:g} s window per transport after a "
        f"{plan['warmup_s']:g} s warm-up, in alternating order. Requests/s and latency (ms): the median of "
        f"the rounds, (min-max) in brackets; CPU as a fraction of one core:",
        "",
        "| transport | requests/s | p50 | p99 | client CPU | server CPU |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "http": "HTTP/1.1, binary tensors (`POST /v2/models/.../infer`)",
        "grpc": "gRPC `ModelInfer`, raw contents",
    }
    for name, label in labels.items():
        cell = cells[name]
        client = np.median([w["client_cpu"] for w in cell["windows"]])
        server = np.median([w["server_cpu"] for w in cell["windows"]])
        lines.append(
            f"| {label} | {_spread(cell['rps'], '.0f')} | {_milliseconds(cell['p50_us'])} | "
            f"{_milliseconds(cell['p99_us'])} | {client:.2f} | {server:.2f} |"
        )
    ratio = results["ratios"][RATIO]
    met = next(iter(results["targets_met"].values()))
    lines += [
        "",
        "| target (the ratio taken within each round: median (min-max)) | measured | met |",
        "|---|---|---|",
        f"| gRPC / HTTP requests/s at c={plan['concurrency']} (>= {TARGET:.1f}x) | {_spread(ratio, '.2f', 'x')} | "
        f"{'yes' if met else '**no**'} |",
    ]
    return "\n".join(lines) + "\n"


def _milliseconds(summary: dict[str, Any]) -> str:
    from bench.report import _spread

    return _spread({key: summary[key] / 1000 for key in ("median", "min", "max")}, ".1f")


def parse_args(argv: list[str] | None) -> tuple[Plan, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="bench.grpc_http", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s windows; records nothing unless --results")
    parser.add_argument("--rounds", type=int, help="rounds (default 7)")
    parser.add_argument("--seconds", type=float, help="seconds per measured window (default 8)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before each window (default 1)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="requests in flight (default 32)")
    parser.add_argument("--no-pin", action="store_true", help="leave the server and the client on every core")
    parser.add_argument("--results", type=Path, help="the JSON to write (default bench/results/grpc_http.json)")
    args = parser.parse_args(argv)
    base = Plan(rounds=1, window_s=2.0) if args.quick else Plan()
    plan = Plan(
        rounds=args.rounds if args.rounds is not None else base.rounds,
        window_s=args.seconds if args.seconds is not None else base.window_s,
        warmup_s=args.warmup if args.warmup is not None else base.warmup_s,
        concurrency=args.concurrency,
    )
    if plan.rounds < 1 or plan.window_s <= 0 or plan.warmup_s < 0 or plan.concurrency < 1:
        parser.error("--rounds and --concurrency must be >= 1, --seconds > 0 and --warmup >= 0")
    if args.results is None and not args.quick:
        args.results = RESULTS / "grpc_http.json"
    return plan, args


def main(argv: list[str] | None = None) -> int:
    from bench.run import write_json

    plan, args = parse_args(argv)
    command = " ".join(["python -m bench.grpc_http", *(sys.argv[1:] if argv is None else argv)])
    try:
        results = measure(plan, not args.no_pin, command)
    except WindowFailed as failure:
        print(
            f"bench.grpc_http: a window failed, so no results are written.\nbench.grpc_http: {failure}", file=sys.stderr
        )
        return 1
    if args.results is not None:
        write_json(args.results, results)
        print(f"wrote {args.results}")
    ratio = results["ratios"][RATIO]
    print(f"{RATIO}: {ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f}x), target >= {TARGET}x")
    busy = [w["client_cpu"] for cell in results["cells"].values() for w in cell["windows"]]
    if max(busy) > CLIENT_BOUND:
        print(
            f"bench.grpc_http: the client used up to {max(busy):.2f} of its core: it may be what limits the rate",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
