"""The benchmark runner's plans, its reading of wrk's report, its targets and its exit status.
No server or load generator runs here: `serving` is replaced where main is exercised."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import run
from bench.plan import FULL_RATIOS, PLANS
from bench.rounds import Cell, WindowFailed, summarise_ratios

WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:8000/encode
  1 threads and 32 connections
WRK_JSON {"requests":3000,"duration_us":2000000,"status_errors":0,"connect_errors":0,"read_errors":1,\
"write_errors":0,"timeout_errors":2,"p50_us":900,"p90_us":1500,"p99_us":4000,"mean_us":1000.5}
"""


def test_parse_report_sums_socket_errors_and_derives_the_rate():
    stats = run.parse_report(WRK_OUTPUT)
    assert stats["rps"] == 1500.0
    assert stats["socket_errors"] == 3
    assert (stats["status_errors"], stats["p99_us"]) == (0, 4000)


def test_parse_report_without_a_summary_line_says_so():
    with pytest.raises(RuntimeError, match="no WRK_JSON summary line"):
        run.parse_report("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_command_line_options_override_the_plan():
    plan, args = run.parse_plan(["--quick", "--rounds", "1", "--window", "1", "--warmup", "0", "--seed", "3"])
    assert (plan.name, plan.rounds, plan.window_s, plan.warmup_s, plan.seed) == ("quick", 1, 1, 0, 3)
    assert plan.cells == PLANS["quick"].cells and args.quick


@pytest.mark.parametrize("option", [["--rounds", "0"], ["--window", "0"], ["--warmup", "-1"]])
def test_impossible_plans_are_refused(option, capsys):
    with pytest.raises(SystemExit):
        run.parse_plan(option)
    assert "must be >= 1" in capsys.readouterr().err


def full_results(encode_vs_minimal: list[float]) -> dict:
    ratios = {name: [1.0] * len(encode_vs_minimal) for name in FULL_RATIOS}
    ratios.update(
        encode_vs_minimal_c32=encode_vs_minimal,
        encode_vs_naive_c32=[2.5] * len(encode_vs_minimal),
        p99_c1_product_vs_naive=[0.8] * len(encode_vs_minimal),
    )
    return {
        "ratios": summarise_ratios(ratios),
        "cold_start": {"start_to_ready_s": 0.7},
        "memory": {"product": [150.0], "product_2_workers": [140.0, 210.0]},
    }


def test_targets_are_judged_on_the_median_of_the_rounds():
    met = run.targets(full_results([0.85, 0.92, 0.95]))  # one slow round does not fail the target
    assert met["encode >= 0.9x minimal (c32)"] is True
    assert met["encode >= 2x naive (c32)"] is True and met["p99 at c1 <= naive"] is True
    assert met["RSS per worker <= 200 MB"] is False  # the largest worker, 210 MB
    assert run.targets(full_results([0.85, 0.88, 0.95]))["encode >= 0.9x minimal (c32)"] is False


def quick_results(rounds: list[float]) -> dict:
    return {"ratios": summarise_ratios({"encode_vs_minimal_c32": rounds})}


@pytest.fixture
def no_wrk_needed(monkeypatch):
    monkeypatch.setattr(run.shutil, "which", lambda name: "/usr/bin/" + name)


def test_quick_fails_below_the_guard_on_the_median(monkeypatch, tmp_path, capsys, no_wrk_needed):
    monkeypatch.setattr(run, "serving", lambda plan, command: quick_results([0.9, 0.65, 0.6]))
    assert run.main(["--quick", "--results", str(tmp_path)]) == 1
    assert "fell below 0.7x the minimal app (median 0.65x, rounds 0.60-0.90x)" in capsys.readouterr().err
    assert json.loads((tmp_path / "quick.json").read_text())["ratios"]["encode_vs_minimal_c32"]["median"] == 0.65


def test_quick_passes_at_the_guard(monkeypatch, tmp_path, no_wrk_needed):
    monkeypatch.setattr(run, "serving", lambda plan, command: quick_results([0.6, 0.75, 0.8]))
    assert run.main(["--quick", "--results", str(tmp_path)]) == 0


def test_a_failed_window_exits_1_naming_the_cell_and_writes_nothing(monkeypatch, tmp_path, capsys, no_wrk_needed):
    def failing(plan, command):
        cell = Cell("product", "encode_1_raw", 64)
        raise WindowFailed(f"{cell.key}, round 2, window: 5 responses with status >= 400")

    monkeypatch.setattr(run, "serving", failing)
    assert run.main(["--quick", "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no results written" in err and "product/encode_1_raw/c64, round 2, window: 5 responses" in err
    assert list(tmp_path.iterdir()) == []


def test_the_v2_bodies_carry_the_image_encode_gets():
    """Parsed as the server parses them: the binary body as tritonclient sends it, and the JSON one."""
    from service.v2.codec import header_length, parse_request

    pixels = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    bodies = run.v2_encoder_routes(pixels, "m")
    binary, as_json = bodies["v2_encoder_binary"], bodies["v2_encoder_json"]
    assert binary["path"] == as_json["path"] == "/v2/models/m.encoder/infer"
    length = header_length(binary["headers"]["Inference-Header-Content-Length"], len(binary["body"]))
    for body, json_length in ((binary["body"], length), (as_json["body"], len(as_json["body"]))):
        (tensor,) = parse_request(body, json_length).inputs
        assert (tensor.name, tensor.datatype) == ("image", "FP32")
        np.testing.assert_array_equal(tensor.data, pixels)
    assert binary["content_type"] == "" and as_json["content_type"] == "application/json"


def test_the_binary_v2_body_is_the_one_tritonclient_sends():
    """Byte for byte what tritonclient.http builds for this image with no outputs named: binary input, and
    every output asked for as binary."""
    import tritonclient.http as triton_http

    pixels = np.random.default_rng(1).random((1, 1, 28, 28), dtype=np.float32)
    tensor = triton_http.InferInput("image", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    body, json_length = triton_http.InferenceServerClient.generate_request_body([tensor])
    binary = run.v2_encoder_routes(pixels, "m")["v2_encoder_binary"]
    assert binary["body"] == body
    assert binary["headers"] == {"Inference-Header-Content-Length": str(json_length)}
